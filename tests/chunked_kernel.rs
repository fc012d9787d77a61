//! `Backend::FusedChunked` (kernels/chunked*.{h,cpp}: the chunked kernels' CPU twin) against the
//! step-by-step `Reference`: outputs, final state and every gradient (initial state included), both
//! rules, f64, f32 and the tensor-core emulations (bf16; two bf16 parts for f16, three for f32), T and d around the chunk and tile sizes,
//! d_k != d_v; finite differences; chunk sizes; non-finite inputs; bad input.

mod common;

use common::{assert_close, compare, rel_rms, seeded, Case, Tol, OUTPUT_NAMES};
use fwp::ops::{fast_weight_chunked_kernel, Operands};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

const RULES: [UpdateRule; 2] = [UpdateRule::Sum, UpdateRule::Delta];

fn check(case: &Case, rule: UpdateRule, label: &str) {
    let want = case.run(rule, Backend::Reference, Kind::Double, Device::Cpu);
    let got = case.run(rule, Backend::FusedChunked, Kind::Double, Device::Cpu);
    compare(
        &format!("{rule:?} f64 {label}"),
        &got,
        &want,
        Tol::Scaled(1e-10),
    );
    let got = case.run(rule, Backend::FusedChunked, Kind::Float, Device::Cpu);
    compare(
        &format!("{rule:?} f32 {label}"),
        &got,
        &want,
        Tol::Scaled(2e-4),
    );
}

/// T in {1, 63, 64, 65, 1000} x d in {16, 60, 64, 128, 256} (d_k = d_v), both rules, f64 and f32.
#[test]
fn chunked_kernel_matches_reference_grid() {
    let _rng = seeded(60);
    for d in [16, 60, 64, 128, 256] {
        for t in [1, 63, 64, 65, 1000] {
            let case = Case::new(1, 2, t, d, d);
            for rule in RULES {
                check(&case, rule, &format!("T={t} d={d}"));
            }
        }
    }
}

#[test]
fn chunked_kernel_takes_d_k_unlike_d_v_and_batches() {
    let _rng = seeded(61);
    for (b, h, t, d_k, d_v) in [
        (2, 3, 130, 16, 60),
        (1, 1, 65, 256, 16),
        (3, 1, 200, 33, 128),
    ] {
        let case = Case::new(b, h, t, d_k, d_v);
        for rule in RULES {
            check(
                &case,
                rule,
                &format!("B={b} H={h} T={t} d_k={d_k} d_v={d_v}"),
            );
        }
    }
}

/// Chunks of 16 and 32 steps give what chunks of 64 give (float64), outputs and gradients.
#[test]
fn chunked_kernel_chunk_sizes_agree() {
    let _rng = seeded(62);
    let case = Case::new(1, 2, 100, 24, 20);
    for rule in RULES {
        let run = |chunk: i64| {
            let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
            let (q, k, v, beta, s0) = (
                leaf(&case.q),
                leaf(&case.k),
                leaf(&case.v),
                leaf(&case.beta),
                leaf(&case.s0),
            );
            let b = (rule == UpdateRule::Delta).then_some(&beta);
            let (out, state) =
                fast_weight_chunked_kernel(&q, &k, &v, b, Some(&s0), chunk, Operands::Exact)
                    .unwrap();
            let loss =
                (&out * &case.w_out).sum(Kind::Double) + (&state * &case.w_state).sum(Kind::Double);
            let mut inputs = vec![&q, &k, &v, &s0];
            if rule == UpdateRule::Delta {
                inputs.push(&beta);
            }
            let g = Tensor::run_backward(&[loss], &inputs, false, false);
            (out.detach(), state.detach(), g)
        };
        let (out64, state64, g64) = run(64);
        for chunk in [16, 32] {
            let (out, state, g) = run(chunk);
            let l = format!("{rule:?} chunk {chunk}");
            assert_close(&format!("{l} out"), &out, &out64, 1e-11, 1e-11);
            assert_close(&format!("{l} state"), &state, &state64, 1e-11, 1e-11);
            for (i, (a, b)) in g.iter().zip(&g64).enumerate() {
                assert_close(&format!("{l} grad {i}"), a, b, 1e-11, 1e-11);
            }
        }
    }
}

#[test]
fn chunked_kernel_gradients_match_finite_differences() {
    let _rng = seeded(63);
    // T = 20 with chunks of 16: two chunks, the second one padded.
    let case = Case::new(1, 1, 20, 3, 2);
    let eps = 1e-6;
    for rule in RULES {
        let (_, _, analytic) = case.run(rule, Backend::FusedChunked, Kind::Double, Device::Cpu);
        let loss_at = |inputs: &[Tensor]| -> f64 {
            let beta = (rule == UpdateRule::Delta).then_some(&inputs[4]);
            let (out, state) = fast_weight_chunked_kernel(
                &inputs[0],
                &inputs[1],
                &inputs[2],
                beta,
                Some(&inputs[3]),
                16,
                Operands::Exact,
            )
            .unwrap();
            f64::try_from(
                (&out * &case.w_out).sum(Kind::Double) + (&state * &case.w_state).sum(Kind::Double),
            )
            .unwrap()
        };
        let base = [&case.q, &case.k, &case.v, &case.s0, &case.beta];
        let n_inputs = if rule == UpdateRule::Delta { 5 } else { 4 };
        for i in 0..n_inputs {
            let flat = base[i].flatten(0, -1);
            let mut numeric = Vec::new();
            for e in 0..flat.numel() as i64 {
                let shifted = |delta: f64| -> Vec<Tensor> {
                    base.iter()
                        .enumerate()
                        .map(|(j, t)| {
                            if j != i {
                                return t.shallow_clone();
                            }
                            let f = t.flatten(0, -1).copy();
                            let _ = f.get(e).g_add_scalar_(delta);
                            f.view(t.size().as_slice())
                        })
                        .collect()
                };
                numeric.push((loss_at(&shifted(eps)) - loss_at(&shifted(-eps))) / (2.0 * eps));
            }
            let numeric = Tensor::from_slice(&numeric).view(base[i].size().as_slice());
            assert_close(
                &format!("{rule:?} input {i} finite differences"),
                &analytic[i],
                &numeric,
                1e-6,
                1e-6,
            );
        }
    }
}

/// Outputs, final state and every gradient in f64 of the op on `case`'s inputs as `kind`: the
/// chunked kernel with `operands` (its final state as it comes, in the accumulation dtype), or the
/// Reference when `None`.
fn run_emulated(
    case: &Case,
    rule: UpdateRule,
    kind: Kind,
    operands: Option<Operands>,
) -> Vec<Tensor> {
    case.outputs_and_grads(rule, kind, Device::Cpu, |q, k, v, b, s0| match operands {
        Some(ops) => fast_weight_chunked_kernel(q, k, v, b, Some(s0), 64, ops).unwrap(),
        None => {
            let r = fast_weight(q, k, v, b, Some(s0), rule, Backend::Reference).unwrap();
            (r.out, r.state)
        }
    })
}

/// The tensor-core emulation (bf16 operands, states split into hi + lo, f32 accumulation) on
/// bf16 inputs: within FLA's own fp16 test bound (RMS error below 0.006 of the RMS of the float64
/// answer) for outputs, state and every gradient, and measurably different from exact f32
/// products, so the rounding is really applied.
#[test]
fn chunked_kernel_bf16_emulation_stays_within_bounds() {
    let _rng = seeded(64);
    let case = Case::new(1, 2, 300, 64, 64);
    let case = case.rounded(Kind::BFloat16);
    for rule in RULES {
        let run = |operands| run_emulated(&case, rule, Kind::BFloat16, operands);
        let want = run_emulated(&case, rule, Kind::Double, None);
        let emulated = run(Some(Operands::Bf16));
        let exact = run(Some(Operands::Exact));
        for i in 0..want.len() {
            let err = rel_rms(&emulated[i], &want[i]);
            assert!(
                err < 6e-3,
                "{rule:?} {}: bf16-emulated relative RMS error {err:.2e}",
                OUTPUT_NAMES[i]
            );
            let exact_err = rel_rms(&exact[i], &want[i]);
            eprintln!(
                "{rule:?} {}: relative RMS error emulated {err:.2e}, exact products {exact_err:.2e}",
                OUTPUT_NAMES[i]
            );
        }
        let moved = rel_rms(&emulated[0], &exact[0]);
        assert!(
            moved > 1e-5,
            "{rule:?}: the bf16 emulation changed the output by only {moved:.1e}"
        );
    }
}

/// The split emulations keep their input dtype's accuracy: f32 inputs with every operand in three
/// bf16 parts (six part products) and f16 inputs with two (three part products), f32 accumulation.
/// Outputs, state and every gradient stay within a small factor of the exact-products twin's error
/// against float64 (for f16 most of it is the f16 rounding of the results), and far below what one
/// bf16 part per operand gives, so that the extra parts are really there.
#[test]
fn chunked_kernel_split_emulations_keep_their_dtype_accuracy() {
    let _rng = seeded(66);
    // (dtype, operands, allowed factor over exact products, an error small enough regardless (a
    // tenth of f16's unit roundoff 2^-11 for f16, whose f32 final state is far more accurate than
    // its f16 outputs), least factor below one bf16 part)
    let modes = [
        (Kind::Float, Operands::Bf16x3, 4.0, 1e-7, 100.0),
        (Kind::Half, Operands::Bf16x2, 1.5, 5e-5, 3.0),
    ];
    for (t, d) in [(300, 64), (130, 128)] {
        let case = Case::new(1, 2, t, d, d);
        for (kind, split, factor, negligible, below) in modes {
            let case = case.rounded(kind);
            for rule in RULES {
                let run = |operands| run_emulated(&case, rule, kind, operands);
                let want = run_emulated(&case, rule, Kind::Double, None);
                let (parts, exact, one) = (
                    run(Some(split)),
                    run(Some(Operands::Exact)),
                    run(Some(Operands::Bf16)),
                );
                for i in 0..want.len() {
                    let (e, e_exact, e_one) = (
                        rel_rms(&parts[i], &want[i]),
                        rel_rms(&exact[i], &want[i]),
                        rel_rms(&one[i], &want[i]),
                    );
                    let label = format!(
                        "{kind:?} {split:?} T={t} d={d} {rule:?} {}",
                        OUTPUT_NAMES[i]
                    );
                    eprintln!(
                        "{label}: relative RMS error {e:.2e}, exact products {e_exact:.2e}, one \
                         bf16 part {e_one:.2e}"
                    );
                    assert!(
                        e < (factor * e_exact).max(negligible),
                        "{label}: {e:.2e} against exact products' {e_exact:.2e}"
                    );
                    assert!(
                        e * below < e_one,
                        "{label}: {e:.2e} is not far below one bf16 part's {e_one:.2e}"
                    );
                }
            }
        }
    }
}

/// A NaN at step t reaches no earlier output (the Fused kernel runs such inputs).
#[test]
fn chunked_kernel_keeps_non_finite_inputs_causal() {
    let _rng = seeded(65);
    let case = Case::new(1, 1, 80, 8, 8);
    for rule in RULES {
        let v = case.v.copy();
        let _ = v.narrow(2, 50, 1).fill_(f64::NAN);
        let beta = (rule == UpdateRule::Delta).then_some(&case.beta);
        let clean = fast_weight(
            &case.q,
            &case.k,
            &case.v,
            beta,
            None,
            rule,
            Backend::Reference,
        )
        .unwrap();
        let got = fast_weight(
            &case.q,
            &case.k,
            &v,
            beta,
            None,
            rule,
            Backend::FusedChunked,
        )
        .unwrap();
        assert_close(
            &format!("{rule:?} outputs before the NaN"),
            &got.out.narrow(2, 0, 50),
            &clean.out.narrow(2, 0, 50),
            1e-10,
            1e-10,
        );
        assert!(bool::try_from(got.out.narrow(2, 50, 30).isnan().all()).unwrap());
    }
}

#[test]
fn chunked_kernel_refuses_bad_chunk_sizes() {
    let case = Case::new(1, 1, 10, 4, 4);
    for chunk in [0, 8, 48, 128] {
        let err = fast_weight_chunked_kernel(
            &case.q,
            &case.k,
            &case.v,
            None,
            None,
            chunk,
            Operands::Exact,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("chunk: must be 16, 32 or 64"),
            "chunk {chunk}: {err}"
        );
    }
}
