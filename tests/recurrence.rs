//! The fast-weight recurrence: the chunked backend and the quadratic form of linear attention
//! against the step-by-step reference, in float64, outputs, final state and every gradient.

mod common;

use common::{assert_close, compare, devices, leaf, seeded, Case, Tol, F64, GRAD_NAMES};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

#[test]
fn chunked_matches_reference_float64() {
    let _rng = seeded(0);
    // Odd head count, d_k != d_v, T around and not multiples of the chunk sizes.
    for rule in [UpdateRule::Sum, UpdateRule::Delta] {
        for t in [1, 7, 63, 64, 65, 200] {
            let case = Case::new(2, 3, t, 12, 5);
            let want = case.run(rule, Backend::Reference, F64.0, F64.1);
            for chunk_size in [16, 64] {
                let got = case.run(rule, Backend::Chunked { chunk_size }, F64.0, F64.1);
                compare(
                    &format!("{rule:?} T={t} chunk={chunk_size}"),
                    &got,
                    &want,
                    Tol::Abs(1e-10),
                );
            }
        }
    }
}

#[test]
fn chunked_matches_reference_float32_and_wide_values() {
    let _rng = seeded(1);
    for rule in [UpdateRule::Sum, UpdateRule::Delta] {
        let case = Case::new(1, 1, 130, 7, 33);
        let want = case.run(rule, Backend::Reference, F64.0, F64.1);
        let got = case.run(
            rule,
            Backend::Chunked { chunk_size: 32 },
            Kind::Float,
            Device::Cpu,
        );
        compare(&format!("{rule:?} f32"), &got, &want, Tol::Abs(1e-4));
    }
}

#[test]
fn quadratic_form_equals_sum_rule() {
    // y = tril(Q K^T) V (docs/derivations.md Sec. 1), with S_0 = 0.
    let _rng = seeded(2);
    let (q, k, v) = (
        leaf(&[2, 3, 37, 6], Kind::Double),
        leaf(&[2, 3, 37, 6], Kind::Double),
        leaf(&[2, 3, 37, 4], Kind::Double),
    );
    let quadratic = q.matmul(&k.transpose(-1, -2)).tril(0).matmul(&v);
    for backend in [Backend::Reference, Backend::Chunked { chunk_size: 16 }] {
        let r = fast_weight(&q, &k, &v, None, None, UpdateRule::Sum, backend).unwrap();
        println!("{backend:?}");
        assert_close("out", &r.out, &quadratic, 1e-10, 1e-10);
        // The final state is sum_t k_t v_t^T = K^T V.
        assert_close(
            "state",
            &r.state,
            &k.transpose(-1, -2).matmul(&v),
            1e-10,
            1e-10,
        );
    }
}

#[test]
fn half_precision_inputs_keep_their_dtype_and_stay_close() {
    // Compared with the f64 reference run on the same rounded inputs, so only the f32 compute and
    // the final rounding of the outputs remain (bf16: 2^-9 relative, f16: 2^-12).
    let _rng = seeded(3);
    let case = Case::new(1, 2, 50, 16, 16);
    for (kind, rtol) in [(Kind::BFloat16, 8e-3), (Kind::Half, 1e-3)] {
        let h = |t: &Tensor| t.detach().to_kind(kind);
        let f = |t: &Tensor| h(t).to_kind(Kind::Double);
        let want = fast_weight(
            &f(&case.q),
            &f(&case.k),
            &f(&case.v),
            Some(&f(&case.beta)),
            None,
            UpdateRule::Delta,
            Backend::Reference,
        )
        .unwrap();
        let r = fast_weight(
            &h(&case.q),
            &h(&case.k),
            &h(&case.v),
            Some(&h(&case.beta)),
            None,
            UpdateRule::Delta,
            Backend::default(),
        )
        .unwrap();
        assert_eq!(r.out.kind(), kind);
        assert_eq!(r.state.kind(), kind);
        assert_close(&format!("{kind:?} out"), &r.out, &want.out, 1e-3, rtol);
        assert_close(
            &format!("{kind:?} state"),
            &r.state,
            &want.state,
            1e-3,
            rtol,
        );
    }
}

#[test]
fn gradient_reaches_initial_state_and_beta() {
    let _rng = seeded(4);
    let case = Case::new(1, 1, 5, 3, 2);
    for backend in [Backend::Reference, Backend::Chunked { chunk_size: 2 }] {
        let (_, _, g) = case.run(UpdateRule::Delta, backend, F64.0, F64.1);
        for (name, grad) in GRAD_NAMES.iter().zip(&g) {
            assert!(grad.defined(), "{backend:?}: {name} is undefined");
            assert!(
                f64::try_from(grad.abs().sum(Kind::Double)).unwrap() > 0.0,
                "{backend:?}: {name} is zero"
            );
        }
    }
}

/// A single non-finite input at step t0 leaves every output before t0 as it was, on every backend
/// (a chunked product must not spread 0 * inf = NaN to the earlier steps of its chunk).
#[test]
fn non_finite_inputs_stay_causal_on_every_backend() {
    let _rng = seeded(7);
    let (b, h, t, d) = (1, 2, 12, 4);
    let case = Case::new(b, h, t, d, d);
    let t0 = 6; // inside a chunk of 4 (steps 4..8) and of 64
    let backends = [
        Backend::Reference,
        Backend::Chunked { chunk_size: 4 },
        Backend::Chunked { chunk_size: 64 },
        Backend::Fused,
    ];
    type Poison = fn(&mut Tensor, &mut Tensor, &mut Tensor, i64);
    let poisons: [(&str, Poison); 4] = [
        ("+inf in v", |_, v, _, t0| {
            let _ = v.narrow(2, t0, 1).narrow(3, 1, 1).fill_(f64::INFINITY);
        }),
        ("nan in v", |_, v, _, t0| {
            let _ = v.narrow(2, t0, 1).fill_(f64::NAN);
        }),
        ("-inf in k", |k, _, _, t0| {
            let _ = k.narrow(2, t0, 1).narrow(3, 0, 1).fill_(f64::NEG_INFINITY);
        }),
        ("nan in beta", |_, _, beta, t0| {
            let _ = beta.narrow(2, t0, 1).fill_(f64::NAN);
        }),
    ];
    for (device, rule, backend) in devices("non_finite_inputs_stay_causal_on_every_backend")
        .into_iter()
        .flat_map(|d| [UpdateRule::Sum, UpdateRule::Delta].map(|r| (d, r)))
        .flat_map(|(d, r)| backends.map(|b| (d, r, b)))
    {
        let on = |t: &Tensor| t.to_device(device);
        let run = |k: &Tensor, v: &Tensor, beta: &Tensor| {
            let beta = (rule == UpdateRule::Delta).then_some(beta);
            let beta = beta.map(on);
            fast_weight(
                &on(&case.q),
                &on(k),
                &on(v),
                beta.as_ref(),
                Some(&on(&case.s0)),
                rule,
                backend,
            )
            .unwrap()
            .out
        };
        let clean = run(&case.k, &case.v, &case.beta);
        for (what, poison) in poisons {
            if rule == UpdateRule::Sum && what.contains("beta") {
                continue;
            }
            let (mut k, mut v, mut beta) = (case.k.copy(), case.v.copy(), case.beta.copy());
            poison(&mut k, &mut v, &mut beta, t0);
            let out = run(&k, &v, &beta);
            println!("{device:?} {rule:?} {backend:?} {what}");
            assert_close(
                "outputs before the non-finite step",
                &out.narrow(2, 0, t0).to_device(Device::Cpu),
                &clean.narrow(2, 0, t0).to_device(Device::Cpu),
                1e-12,
                1e-12,
            );
            let later = out.narrow(2, t0, t - t0);
            assert!(
                !bool::try_from(later.isfinite().all()).unwrap(),
                "{device:?} {rule:?} {backend:?} {what}: the non-finite input reached no output"
            );
        }
    }
}
