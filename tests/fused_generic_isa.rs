//! The baseline (non-AVX2) build of the CPU fused kernels, forced with FWP_CPU_GENERIC (read once
//! per process, hence a test binary of its own), against the float64 Reference, in float64 and float32.

mod common;

use common::{assert_close, seeded, GRAD_NAMES};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

#[test]
fn generic_cpu_kernels_match_reference() {
    std::env::set_var("FWP_CPU_GENERIC", "1");
    let _rng = seeded(50);
    let f = (Kind::Double, Device::Cpu);
    for (t, d_k, d_v) in [(1, 16, 16), (65, 60, 33), (130, 64, 64)] {
        let q = Tensor::randn([2, 3, t, d_k], f).set_requires_grad(true);
        let k0 = Tensor::randn([2, 3, t, d_k], f);
        let k = (&k0 / k0.norm_scalaropt_dim(2, [-1i64].as_slice(), true)).set_requires_grad(true);
        let v = Tensor::randn([2, 3, t, d_v], f).set_requires_grad(true);
        let beta = Tensor::rand([2, 3, t], f).set_requires_grad(true);
        let s0 = Tensor::randn([2, 3, d_k, d_v], f).set_requires_grad(true);
        for rule in [UpdateRule::Sum, UpdateRule::Delta] {
            for kind in [Kind::Double, Kind::Float] {
                let run_in = |backend, kind: Kind| {
                    let c = |x: &Tensor| x.to_kind(kind);
                    let b = c(&beta);
                    let b = (rule == UpdateRule::Delta).then_some(&b);
                    let r = fast_weight(&c(&q), &c(&k), &c(&v), b, Some(&c(&s0)), rule, backend)
                        .unwrap();
                    let loss = r.out.square().sum(Kind::Double) + r.state.sum(Kind::Double);
                    let mut inputs = vec![&q, &k, &v, &s0];
                    if rule == UpdateRule::Delta {
                        inputs.push(&beta);
                    }
                    let g = Tensor::run_backward(&[loss], &inputs, false, false);
                    (r.out.to_kind(Kind::Double), g)
                };
                let run = |backend| run_in(backend, kind);
                // the float64 Reference is the ground truth for both precisions: a float32 Reference
                // would add its own rounding (which differs with libtorch's CPU code paths) to
                // the kernel's
                let (want, want_g) = run_in(Backend::Reference, Kind::Double);
                let (got, got_g) = run(Backend::Fused);
                let tol = if kind == Kind::Double { 1e-10 } else { 1e-3 };
                println!("generic {rule:?} {kind:?} T={t} {d_k}x{d_v}");
                assert_close("out", &got, &want, tol, tol);
                assert_eq!(got_g.len(), want_g.len());
                for (name, (g, w)) in GRAD_NAMES.iter().zip(got_g.iter().zip(&want_g)) {
                    assert_close(name, g, w, tol, tol);
                }
            }
        }
    }
}
