//! `fwp selftest`: every kernel of this build once, on a small awkward shape, against its reference
//! twin: the fused recurrence and the chunked kernels (both rules, forward and backward) against the step-by-step Reference
//! backend in float64 on the CPU, the sum-normalisation op against its libtorch twin. A quick check
//! that a machine runs the kernels right, and small enough to run under compute-sanitizer.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::norm::sum_normalise_reference;
use crate::recurrence::{fast_weight, Backend, UpdateRule};

/// One comparison: the largest error relative to the largest magnitude of the reference.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub error: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// max |got - want| / max |want| (0 for an empty or all-zero reference).
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f64> {
    let got = got.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    let want = want.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    if want.numel() == 0 {
        return Ok(0.0);
    }
    let scale = f64::try_from(want.f_abs()?.f_max()?)?.max(1e-300);
    let err = f64::try_from((got - want).f_abs()?.f_max()?)?;
    Ok(if err.is_nan() {
        f64::INFINITY
    } else {
        err / scale
    })
}

/// The inputs of one fused check, in float64 on the CPU (T = 70 crosses checkpoint intervals and
/// leaves a partial one; d_v = 12 leaves a partial tile of value columns).
struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    s0: Tensor,
    w_out: Tensor,
    w_state: Tensor,
}

impl Inputs {
    fn new() -> Result<Inputs> {
        let f = (Kind::Double, Device::Cpu);
        let (b, h, t, d_k, d_v) = (1, 2, 70, 20, 12);
        let k = Tensor::f_randn([b, h, t, d_k], f)?;
        let norm = k.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
        Ok(Inputs {
            q: Tensor::f_randn([b, h, t, d_k], f)? / (d_k as f64).sqrt(),
            k: k.f_div(&norm)?,
            v: Tensor::f_randn([b, h, t, d_v], f)?,
            beta: Tensor::f_rand([b, h, t], f)?,
            s0: Tensor::f_randn([b, h, d_k, d_v], f)? * 0.3,
            w_out: Tensor::f_randn([b, h, t, d_v], f)?,
            w_state: Tensor::f_randn([b, h, d_k, d_v], f)?,
        })
    }

    /// (out, state, [dq, dk, dv, dS0, dbeta]) with `backend`, inputs as `kind` on `device`; the
    /// inputs are first rounded to `kind`, so that the reference sees the same numbers.
    fn run(
        &self,
        rule: UpdateRule,
        backend: Backend,
        kind: Kind,
        device: Device,
    ) -> Result<Vec<Tensor>> {
        let leaf = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_kind(kind)?
                .f_to_device(device)?
                .f_detach()?
                .set_requires_grad(true))
        };
        let (q, k, v, beta, s0) = (
            leaf(&self.q)?,
            leaf(&self.k)?,
            leaf(&self.v)?,
            leaf(&self.beta)?,
            leaf(&self.s0)?,
        );
        let beta_arg = (rule == UpdateRule::Delta).then_some(&beta);
        let r = fast_weight(&q, &k, &v, beta_arg, Some(&s0), rule, backend)?;
        let w = |t: &Tensor| t.f_to_kind(kind)?.f_to_device(device);
        let loss = (r.out.f_mul(&w(&self.w_out)?)?.f_sum(Kind::Double)?)
            .f_add(&r.state.f_mul(&w(&self.w_state)?)?.f_sum(Kind::Double)?)?;
        let mut inputs = vec![&q, &k, &v, &s0];
        if rule == UpdateRule::Delta {
            inputs.push(&beta);
        }
        let grads = Tensor::f_run_backward(&[&loss], &inputs, false, false)?;
        let mut out = vec![r.out.f_detach()?, r.state.f_detach()?];
        out.extend(grads);
        Ok(out)
    }
}

const NAMES: [&str; 7] = ["out", "state", "dq", "dk", "dv", "dS0", "dbeta"];

/// Runs every check on `device`.
pub fn run(device: Device) -> Result<Vec<Check>> {
    if let Device::Cuda(i) = device {
        if !crate::ops::built_with_cuda() {
            bail!("this build has no CUDA kernels to check (nvcc was not found when it was built)");
        }
        if (i as i64) >= tch::Cuda::device_count() {
            bail!("libtorch sees no CUDA device {i}");
        }
    }
    tch::manual_seed(0);
    let inputs = Inputs::new()?;
    // fp32 against float64: the rounding of a 70-step recurrence; bf16 and f16: of its outputs
    // (max error over the largest value: 2^-8 and 2^-11 of it, with room for the arithmetic)
    let kinds = [
        (Kind::Float, 1e-4),
        (Kind::BFloat16, 2e-2),
        (Kind::Half, 4e-3),
    ];
    let mut checks = Vec::new();
    // both kernels in every dtype (on CUDA the chunked kernels split f16 and f32 operands into two
    // and three bf16 parts, so each keeps its dtype's tolerance)
    let cases = kinds
        .iter()
        .map(|&(kind, tol)| (Backend::FusedRecurrent, "fused-recurrent", kind, tol))
        .chain(
            kinds
                .iter()
                .map(|&(kind, tol)| (Backend::FusedChunked, "fused-chunked", kind, tol)),
        )
        .collect::<Vec<_>>();
    for rule in UpdateRule::ALL {
        for &(backend, label, kind, tolerance) in &cases {
            let got = inputs.run(rule, backend, kind, device)?;
            // the reference sees the inputs rounded to `kind`, computed in float64
            let rounded = |t: &Tensor| t.f_to_kind(kind)?.f_to_kind(Kind::Double);
            let reference_inputs = Inputs {
                q: rounded(&inputs.q)?,
                k: rounded(&inputs.k)?,
                v: rounded(&inputs.v)?,
                beta: rounded(&inputs.beta)?,
                s0: rounded(&inputs.s0)?,
                w_out: rounded(&inputs.w_out)?,
                w_state: rounded(&inputs.w_state)?,
            };
            let want = reference_inputs.run(rule, Backend::Reference, Kind::Double, Device::Cpu)?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                checks.push(Check {
                    name: format!("{label} {rule} {kind:?} {}", NAMES[i]),
                    error: relative_error(g, w)?,
                    tolerance,
                });
            }
        }
    }
    let x = Tensor::f_rand([3, 5, 40], (Kind::Float, Device::Cpu))?;
    let got = crate::ops::sum_norm(&x.f_to_device(device)?, 1e-6)?;
    let want = sum_normalise_reference(&x.f_to_kind(Kind::Double)?, 1e-6)?;
    checks.push(Check {
        name: "sum_norm Float".into(),
        error: relative_error(&got, &want)?,
        tolerance: 1e-5,
    });
    Ok(checks)
}
