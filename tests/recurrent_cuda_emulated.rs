//! The recurrent CUDA kernels (kernels/fast_weight_kernels.cuh: what `Fused` runs on a GPU for
//! f64 inputs, d_k or d_v above 256, and GPUs below sm_80) run on the CPU by an emulator
//! (kernels/cuda_on_host.h: one thread per CUDA thread, real barriers, warp shuffles, atomics,
//! shared memory sized to the byte), against the float64 Reference: outputs, final state and every
//! gradient, the initial state's included. So their indexing, inactive warps, checkpoint replay
//! and shared-memory use are checked without a GPU.

mod common;

use common::{rel_rms, seeded, Case, OUTPUT_NAMES};
use fwp::ops::recurrent_cuda_emulated;
use fwp::{Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

/// [out, state, dq, dk, dv, dS0, (dbeta)] in f64 of the emulated kernels on `case`'s inputs as
/// `kind`, with checkpoints every `chunk` steps, for the loss of `Case::outputs_and_grads`.
fn emulated(case: &Case, rule: UpdateRule, kind: Kind, chunk: i64) -> Vec<Tensor> {
    let [q, k, v, beta, s0] = case.leaves(kind, Device::Cpu).map(|t| t.detach());
    let beta = (rule == UpdateRule::Delta).then_some(&beta);
    let grad_out = case.w_out.to_kind(kind);
    let r = recurrent_cuda_emulated(
        &q,
        &k,
        &v,
        beta,
        Some(&s0),
        &grad_out,
        Some(&case.w_state),
        chunk,
    )
    .unwrap();
    let acc = if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    assert_eq!(r.out.kind(), kind);
    assert_eq!((r.final_state.kind(), r.ds0.kind()), (acc, acc));
    let t = q.size()[2];
    assert_eq!(r.checkpoints.size()[2], (t + chunk - 1) / chunk);
    assert_eq!(r.dbeta.is_some(), rule == UpdateRule::Delta);
    let d = |t: &Tensor| t.to_kind(Kind::Double);
    let mut all = vec![
        d(&r.out),
        d(&r.final_state),
        d(&r.dq),
        d(&r.dk),
        d(&r.dv),
        d(&r.ds0),
    ];
    all.extend(r.dbeta.as_ref().map(d));
    all
}

/// `case` with its inputs and the output's loss weights (the emulated kernels' grad_out) rounded to
/// `kind`, held in f64: the float64 answer is then for the numbers the kernels see.
fn rounded(case: &Case, kind: Kind) -> Case {
    let r = case.rounded(kind);
    Case {
        w_out: case.w_out.to_kind(kind).to_kind(Kind::Double),
        ..r
    }
}

/// Relative RMS error allowed per input dtype: results stored in f16 / bf16 carry one rounding
/// of that dtype (2^-11, 2^-8 relative at most); f32 and f64 are limited by their own sums.
const TOLERANCES: [(Kind, f64); 4] = [
    (Kind::Double, 1e-12),
    (Kind::Float, 1e-5),
    (Kind::Half, 1e-3),
    (Kind::BFloat16, 8e-3),
];

/// d_k = 40 takes two rows per lane, the second with lanes idle; d_v = 11 takes two blocks of 8
/// value columns, the second with 5 inactive warps; chunks of 16 over T = 37 leave a tail, of 1 are
/// every step, of 37 one chunk.
#[test]
fn emulated_recurrent_cuda_kernels_match_reference() {
    let _rng = seeded(75);
    let case = Case::new(1, 2, 37, 40, 11);
    for (kind, tolerance) in TOLERANCES {
        let case = rounded(&case, kind);
        for rule in [UpdateRule::Sum, UpdateRule::Delta] {
            let want = case.outputs_and_grads(rule, Kind::Double, Device::Cpu, |q, k, v, b, s0| {
                let o = fwp::fast_weight(q, k, v, b, Some(s0), rule, Backend::Reference).unwrap();
                (o.out, o.state)
            });
            let chunks: &[i64] = if kind == Kind::Float {
                &[16, 1, 37]
            } else {
                &[16]
            };
            for &chunk in chunks {
                let got = emulated(&case, rule, kind, chunk);
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let err = rel_rms(g, w);
                    let name = OUTPUT_NAMES[i];
                    let label = format!("{kind:?} {rule:?} chunk={chunk} {name}");
                    eprintln!("{label}: relative RMS error {err:.2e}");
                    // the state and dS0 stay in the accumulation dtype: f32's bound for half inputs
                    let bound = if matches!(name, "state" | "dS0") {
                        tolerance.min(1e-5)
                    } else {
                        tolerance
                    };
                    assert!(
                        err < bound,
                        "{label}: relative RMS error {err:.2e} >= {bound:.0e}"
                    );
                }
            }
        }
    }
}

/// Bad arguments are errors that name them, never a crash of the emulated kernels.
#[test]
fn emulated_recurrent_cuda_kernels_check_their_inputs() {
    let f = (Kind::Float, Device::Cpu);
    let q = Tensor::randn([1, 1, 5, 4], f);
    let v = Tensor::randn([1, 1, 5, 3], f);
    let err = |chunk: i64, go: &Tensor| {
        recurrent_cuda_emulated(&q, &q, &v, None, None, go, None, chunk)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err(0, &v).contains("chunk must be in 1..=T (T = 5), got 0"),
        "{}",
        err(0, &v)
    );
    assert!(err(6, &v).contains("got 6"), "{}", err(6, &v));
    let e = err(2, &q);
    assert!(e.contains("grad_out must be [1, 1, 5, 3]"), "{e}");
    let e = err(2, &v.to_kind(Kind::Double));
    assert!(e.contains("one dtype"), "{e}");
}
