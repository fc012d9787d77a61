//! Shared test helpers.
#![allow(dead_code)]

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
