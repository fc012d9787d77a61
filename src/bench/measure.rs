//! Timing and peak memory of one [`Case`].
//!
//! Timing: `warmup` untimed runs, then `repeats` timed runs. On the CPU each is a wall-clock
//! interval; on CUDA the time between two CUDA events recorded on PyTorch's current stream before
//! and after the run (the GPU's own clock, which counts queued work and not the host's wait).
//! "forward" runs under `no_grad`; "train" is forward, the sum of the output, and the backward to
//! every input (the gradients are returned, not accumulated). Memory: one more run of each, with
//! the peak measured by [`super::memory::Meter`].

use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::case::Case;
use super::memory::Meter;
use crate::ops::CudaEvent;
use crate::recurrence::{fast_weight, UpdateRule};

/// Median, fastest and slowest of the timed runs, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// From at least one sample.
    pub fn of(mut samples_ms: Vec<f64>) -> Stats {
        samples_ms.sort_by(f64::total_cmp);
        let n = samples_ms.len();
        let median = if n % 2 == 1 {
            samples_ms[n / 2]
        } else {
            0.5 * (samples_ms[n / 2 - 1] + samples_ms[n / 2])
        };
        Stats {
            median_ms: median,
            min_ms: samples_ms[0],
            max_ms: samples_ms[n - 1],
        }
    }
}

/// What [`measure`] found for one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub forward: Stats,
    pub train: Stats,
    /// Peak bytes a forward (no_grad) run added on top of its inputs; `None` if not measurable here.
    pub forward_peak_bytes: Option<i64>,
    /// The same for forward + backward.
    pub train_peak_bytes: Option<i64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `f`: `warmup` untimed runs, then `repeats` (>= 1) timed ones.
pub fn time(
    device: Device,
    warmup: usize,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Stats> {
    for _ in 0..warmup {
        f()?;
    }
    sync(device);
    let mut samples = Vec::with_capacity(repeats.max(1));
    if let Device::Cuda(i) = device {
        // CUDA: the GPU's own time between two events on the current stream
        let (start, end) = (CudaEvent::new(i)?, CudaEvent::new(i)?);
        for _ in 0..repeats.max(1) {
            start.record()?;
            f()?;
            end.record()?;
            samples.push(start.elapsed_ms(&end)?);
        }
        return Ok(Stats::of(samples));
    }
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Stats::of(samples))
}

/// The inputs of one case: q, k (rows unit-norm), v and beta in (0, 1), all requiring grad.
struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
}

impl Inputs {
    fn new(case: &Case, device: Device) -> Result<Inputs> {
        tch::manual_seed(0);
        let opts = (case.dtype.kind(), device);
        let (b, h, t) = (case.batch, case.heads, case.t);
        let leaf = |x: Tensor| -> Result<Tensor> { Ok(x.f_detach()?.set_requires_grad(true)) };
        let k = Tensor::f_randn([b, h, t, case.d_k], opts)?;
        let k_norm = k.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
        Ok(Inputs {
            q: leaf(Tensor::f_randn([b, h, t, case.d_k], opts)?)?,
            k: leaf(k.f_div(&k_norm)?)?,
            v: leaf(Tensor::f_randn([b, h, t, case.d_v], opts)?)?,
            beta: leaf(Tensor::f_rand([b, h, t], opts)?)?,
        })
    }

    /// The timed op: `[B, H, T, d_v]`.
    fn run(&self, case: &Case) -> Result<Tensor> {
        match case.backend() {
            Some(backend) => {
                let rule = case.rule.unwrap_or(UpdateRule::Sum);
                let beta = (rule == UpdateRule::Delta).then_some(&self.beta);
                Ok(fast_weight(&self.q, &self.k, &self.v, beta, None, rule, backend)?.out)
            }
            None => Ok(Tensor::f_scaled_dot_product_attention(
                &self.q,
                &self.k,
                &self.v,
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            )?),
        }
    }

    /// Forward and backward; returns the gradients (dropped by the caller).
    fn train(&self, case: &Case) -> Result<Vec<Tensor>> {
        let loss = self.run(case)?.f_sum(Kind::Float)?;
        let mut inputs = vec![&self.q, &self.k, &self.v];
        if case.rule == Some(UpdateRule::Delta) {
            inputs.push(&self.beta);
        }
        Ok(Tensor::f_run_backward(&[loss], &inputs, false, false)?)
    }
}

/// Peak bytes of one run of `f`, or `None` where this platform cannot measure it.
fn peak_bytes<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<Option<i64>> {
    let meter = match Meter::start(device) {
        Ok(m) => m,
        Err(_) => return f().map(|_| None),
    };
    let out = f()?;
    sync(device);
    let peak = meter.peak().ok();
    drop(out);
    Ok(peak)
}

/// Times one case and measures its peak memory.
pub fn measure(case: &Case, warmup: usize, repeats: usize) -> Result<Measurement> {
    case.check()?;
    let device = crate::check::device(&case.device)?;
    let inputs = Inputs::new(case, device)?;
    let forward = time(device, warmup, repeats, || {
        tch::no_grad(|| inputs.run(case)).map(drop)
    })?;
    let train = time(device, warmup, repeats, || inputs.train(case).map(drop))?;
    let forward_peak_bytes = peak_bytes(device, || tch::no_grad(|| inputs.run(case)))?;
    let train_peak_bytes = peak_bytes(device, || inputs.train(case))?;
    Ok(Measurement {
        forward,
        train,
        forward_peak_bytes,
        train_peak_bytes,
    })
}
