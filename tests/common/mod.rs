//! Shared test helpers.
#![allow(dead_code)]

use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

pub const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// Asserts |got - want| <= atol + rtol |want| elementwise; prints the worst absolute and relative
/// errors; fails on NaN or infinity in either tensor and on a shape mismatch.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.size(), want.size(), "{name}: shape differs");
    let g = got.to_kind(Kind::Double).to_device(Device::Cpu);
    let w = want.to_kind(Kind::Double).to_device(Device::Cpu);
    assert!(
        bool::try_from(g.isfinite().all()).unwrap(),
        "{name}: result has NaN or inf"
    );
    assert!(
        bool::try_from(w.isfinite().all()).unwrap(),
        "{name}: expected value has NaN or inf"
    );
    let diff = (&g - &w).abs();
    let max_abs = if diff.numel() > 0 {
        f64::try_from(diff.max()).unwrap()
    } else {
        0.0
    };
    let rel = &diff / (w.abs() + 1e-300);
    let max_rel = if diff.numel() > 0 {
        f64::try_from(rel.max()).unwrap()
    } else {
        0.0
    };
    let bad = i64::try_from(diff.gt_tensor(&(w.abs() * rtol + atol)).sum(Kind::Int64)).unwrap();
    println!("  {name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e}");
    assert!(
        bad == 0,
        "{name}: {bad} of {} elements beyond atol {atol:e} + rtol {rtol:e}; max abs err {max_abs:.3e}",
        diff.numel()
    );
}

/// Random tensor that requires grad.
pub fn leaf(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::randn(shape, (kind, Device::Cpu)).set_requires_grad(true)
}

/// Unit-norm rows along the last dimension (keys that keep the delta rule contractive).
pub fn unit_rows(shape: &[i64], kind: Kind) -> Tensor {
    let x = Tensor::randn(shape, (kind, Device::Cpu));
    let n = x.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    (x / n).detach().set_requires_grad(true)
}

/// Gradients of `loss` with respect to `inputs` (None where an input got no gradient).
pub fn grads(loss: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], inputs, false, false)
}

/// Whether libtorch sees a GPU; prints a notice for the skipping test otherwise.
pub fn cuda_or_skip(test: &str) -> bool {
    let ok = tch::Cuda::is_available();
    if !ok {
        skip_notice(test);
    }
    ok
}

/// Prints "SKIPPED <test> on CUDA" straight to stderr, past libtest's output capture, so the notice
/// shows in a normal `cargo test` run.
pub fn skip_notice(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} on CUDA: no CUDA GPU visible"
    );
}

/// The devices to run a test body on: the CPU, and the first GPU where one is visible.
pub fn devices(test: &str) -> Vec<tch::Device> {
    if tch::Cuda::is_available() {
        vec![Device::Cpu, Device::Cuda(0)]
    } else {
        skip_notice(test);
        vec![Device::Cpu]
    }
}

/// Names of the gradients `Case::run` returns, in order.
pub const GRAD_NAMES: [&str; 5] = ["dq", "dk", "dv", "dS0", "dbeta"];

/// One set of inputs, created in float64 on the CPU and moved/cast per run.
pub struct Case {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub beta: Tensor,
    pub s0: Tensor,
    pub w_out: Tensor,
    pub w_state: Tensor,
}

impl Case {
    pub fn new(b: i64, h: i64, t: i64, d_k: i64, d_v: i64) -> Case {
        let f = (Kind::Double, Device::Cpu);
        let k = Tensor::randn([b, h, t, d_k], f);
        Case {
            q: Tensor::randn([b, h, t, d_k], f) / (d_k as f64).sqrt(),
            k: &k / k.norm_scalaropt_dim(2, [-1i64].as_slice(), true), // unit keys: a stable delta rule
            v: Tensor::randn([b, h, t, d_v], f),
            beta: Tensor::rand([b, h, t], f),
            s0: Tensor::randn([b, h, d_k, d_v], f) * 0.3,
            w_out: Tensor::randn([b, h, t, d_v], f),
            w_state: Tensor::randn([b, h, d_k, d_v], f),
        }
    }

    /// (out, state, [dq, dk, dv, dS0, dbeta]) for `rule` with `backend`, inputs as `kind` on `device`.
    pub fn run(
        &self,
        rule: UpdateRule,
        backend: Backend,
        kind: Kind,
        device: Device,
    ) -> (Tensor, Tensor, Vec<Tensor>) {
        let leaf = |t: &Tensor| {
            t.to_device(device)
                .to_kind(kind)
                .detach()
                .set_requires_grad(true)
        };
        let (q, k, v, beta, s0) = (
            leaf(&self.q),
            leaf(&self.k),
            leaf(&self.v),
            leaf(&self.beta),
            leaf(&self.s0),
        );
        let beta_arg = (rule == UpdateRule::Delta).then_some(&beta);
        let r = fast_weight(&q, &k, &v, beta_arg, Some(&s0), rule, backend).unwrap();
        assert_eq!(r.out.kind(), kind);
        assert_eq!(r.state.kind(), kind);
        let w = |t: &Tensor| t.to_device(device).to_kind(kind);
        let loss = (&r.out * w(&self.w_out)).sum(kind) + (&r.state * w(&self.w_state)).sum(kind);
        let mut inputs = vec![&q, &k, &v, &s0];
        if rule == UpdateRule::Delta {
            inputs.push(&beta);
        }
        let g = grads(&loss, &inputs);
        (r.out.detach(), r.state.detach(), g)
    }
}

const NAMES: [&str; 5] = ["dq", "dk", "dv", "dS0", "dbeta"];
