//! A quick speed comparison of the attention kernels: `Fused` and `Chunked` fast weights (both
//! rules) against causal softmax attention (libtorch's scaled-dot-product attention), forward and
//! forward + backward, on one device. `fwp speed` prints it; the `bench` experiment is the full
//! benchmark. Inputs are random q, k, v `[B, H, T, d]` (keys unit-norm) and beta `[B, H, T]`;
//! feature maps and projections are left out, so this times the sequence mixing alone.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::recurrence::{fast_weight, Backend, UpdateRule};

/// One timed variant.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub variant: String,
    pub t: i64,
    /// Median forward time, milliseconds.
    pub forward_ms: f64,
    /// Median forward + backward time, milliseconds.
    pub train_ms: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct SpeedConfig {
    pub batch: i64,
    pub heads: i64,
    pub d_head: i64,
    pub kind: Kind,
    pub device: Device,
    pub repeats: usize,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median of `repeats` timed runs of `f` after two warm-ups, in milliseconds.
fn time_ms(device: Device, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    sync(device);
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        sync(device);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Times every variant at sequence length `t`.
pub fn measure(cfg: &SpeedConfig, t: i64) -> Result<Vec<Timing>> {
    let opts = (cfg.kind, cfg.device);
    let shape = [cfg.batch, cfg.heads, t, cfg.d_head];
    let leaf = |x: Tensor| x.set_requires_grad(true);
    let q = leaf(Tensor::f_randn(shape, opts)?);
    let k0 = Tensor::f_randn(shape, opts)?;
    let k = leaf(&k0 / k0.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?);
    let v = leaf(Tensor::f_randn(shape, opts)?);
    let beta = leaf(Tensor::f_rand([cfg.batch, cfg.heads, t], opts)?);
    let mut out = Vec::new();
    let mut record = |variant: String, run: &dyn Fn() -> Result<Tensor>| -> Result<()> {
        let forward_ms = time_ms(cfg.device, cfg.repeats, || {
            tch::no_grad(|| run().map(|_| ()))
        })?;
        let train_ms = time_ms(cfg.device, cfg.repeats, || {
            run()?.f_sum(cfg.kind)?.backward();
            Ok(())
        })?;
        out.push(Timing {
            variant,
            t,
            forward_ms,
            train_ms,
        });
        Ok(())
    };
    for backend in [Backend::Fused, Backend::Chunked { chunk_size: 64 }] {
        for rule in [UpdateRule::Sum, UpdateRule::Delta] {
            let name = match backend {
                Backend::Fused => "fused",
                _ => "chunked",
            };
            let b = (rule == UpdateRule::Delta).then_some(&beta);
            record(format!("{name} {rule:?}").to_lowercase(), &|| {
                Ok(fast_weight(&q, &k, &v, b, None, rule, backend)?.out)
            })?;
        }
    }
    record("softmax (sdpa)".into(), &|| {
        Ok(Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        )?)
    })?;
    Ok(out)
}

/// A plain-text table of timings.
pub fn table(rows: &[Timing]) -> String {
    let mut s = format!(
        "{:>7}  {:<16} {:>12} {:>16}\n",
        "T", "variant", "forward ms", "fwd+bwd ms"
    );
    for r in rows {
        s += &format!(
            "{:>7}  {:<16} {:>12.3} {:>16.3}\n",
            r.t, r.variant, r.forward_ms, r.train_ms
        );
    }
    s
}
