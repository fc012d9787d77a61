//! The C++ op `fwp::sum_norm` (kernels/sum_norm.cpp) against its reference twin: values and
//! gradients, on CPU here and on CUDA where a GPU is visible.

mod common;

use common::{assert_close, cuda_or_skip, grads, seeded};
use fwp::norm::sum_normalise_reference;
use fwp::ops;
use tch::{Device, Kind, Tensor};

fn check_against_reference(device: Device, kind: Kind, tol: f64) {
    let _rng = seeded(21);
    let x = (Tensor::rand([4, 3, 17], (kind, device)) + 0.1).set_requires_grad(true);
    let g = Tensor::randn([4, 3, 17], (kind, device));
    let eps = 1e-3;
    let fast = ops::sum_norm(&x, eps).unwrap();
    let reference = sum_normalise_reference(&x, eps).unwrap();
    assert_close(
        &format!("{device:?} {kind:?} y"),
        &fast,
        &reference,
        tol,
        tol,
    );
    let dx_fast = grads(&(&fast * &g).sum(kind), &[&x]);
    let dx_ref = grads(&(&reference * &g).sum(kind), &[&x]);
    assert_close(
        &format!("{device:?} {kind:?} dx"),
        &dx_fast[0],
        &dx_ref[0],
        tol,
        tol,
    );
}

#[test]
fn sum_norm_matches_reference_cpu() {
    check_against_reference(Device::Cpu, Kind::Double, 1e-14);
    check_against_reference(Device::Cpu, Kind::Float, 1e-6);
}

#[test]
fn sum_norm_matches_reference_cuda() {
    if cuda_or_skip("sum_norm_matches_reference_cuda") {
        check_against_reference(Device::Cuda(0), Kind::Float, 1e-6);
        check_against_reference(Device::Cuda(0), Kind::Double, 1e-14);
    }
}

/// The CUDA kernel's own code, run on the CPU by the emulator (one thread per CUDA thread, warp
/// shuffles through a barrier), against the libtorch expression: rows shorter than a warp, longer
/// than the block's 256 threads, and all-zero rows (the eps guard).
#[test]
fn sum_norm_cuda_kernel_emulated_matches_reference() {
    let _rng = seeded(31);
    for n in [1, 31, 300, 1000] {
        let x = Tensor::rand([3, n], (Kind::Float, Device::Cpu)) + 0.1;
        let x = x.index_fill(0, &Tensor::from_slice(&[1i64]), 0.0);
        let want = &x / (x.sum_dim_intlist(-1, true, Kind::Float) + 1e-6);
        let got = ops::sum_norm_cuda_emulated(&x, 1e-6).unwrap();
        assert_close(&format!("n = {n}"), &got, &want, 1e-7, 1e-5);
    }
    let err = ops::sum_norm_cuda_emulated(&Tensor::zeros([2, 3], (Kind::Double, Device::Cpu)), 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected a non-empty fp32 CPU tensor"),
        "{err}"
    );
}

#[test]
fn sum_norm_is_finite_on_all_zero_features() {
    // All-zero DPFP features must not produce NaN: the eps guard.
    let x = Tensor::zeros([2, 8], (Kind::Float, Device::Cpu));
    let y = ops::sum_norm(&x, 1e-6).unwrap();
    assert_close("zeros", &y, &x, 0.0, 0.0);
}

#[test]
fn sum_norm_rows_sum_to_one() {
    let x = Tensor::rand([5, 9], (Kind::Double, Device::Cpu)) + 0.5;
    let s = ops::sum_norm(&x, 0.0)
        .unwrap()
        .sum_dim_intlist(-1, false, Kind::Double);
    assert_close(
        "row sums",
        &s,
        &Tensor::ones([5], (Kind::Double, Device::Cpu)),
        1e-15,
        1e-15,
    );
}

#[test]
fn built_with_cuda_matches_build_info() {
    assert_eq!(ops::built_with_cuda(), !fwp::info::cuda_archs().is_empty());
}
