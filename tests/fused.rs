//! `Backend::FusedRecurrent` (kernels/fast_weight*.{cpp,cu}) against the step-by-step `Reference`: outputs,
//! final state and every gradient, both rules, float64 and float32, awkward sizes; finite
//! differences; a long sequence; bad input; a traced TorchScript module. Every test body runs on
//! the CPU and, where one is visible, on the GPU (the CUDA variants print SKIPPED otherwise).

mod common;

use common::{
    assert_close, compare, cpu_tests, devices, grads, seeded, skip_notice, Case, Tol,
    GRAD_NAMES as NAMES,
};
use fwp::{fast_weight, ops, Backend, UpdateRule};
use tch::{CModule, Device, Kind, Tensor};

const RULES: [UpdateRule; 2] = [UpdateRule::Sum, UpdateRule::Delta];

/// Fused (f64, then f32) on `device` against the f64 Reference on the CPU for one case and rule.
fn check_fused(case: &Case, rule: UpdateRule, device: Device, label: &str) {
    let want = case.run(rule, Backend::Reference, Kind::Double, Device::Cpu);
    let got = case.run(rule, Backend::FusedRecurrent, Kind::Double, device);
    compare(
        &format!("{device:?} {rule:?} f64 {label}"),
        &got,
        &want,
        Tol::Scaled(1e-10),
    );
    // f32 against the f64 reference of the same inputs
    let got = case.run(rule, Backend::FusedRecurrent, Kind::Float, device);
    compare(
        &format!("{device:?} {rule:?} f32 {label}"),
        &got,
        &want,
        Tol::Scaled(2e-4),
    );
}

/// Fused vs Reference over a grid: T in {1, 2, 63, 64, 65, 1000} x d in {1, 16, 60, 64,
/// 128, 256} (d_k = d_v = d), both rules, f64 and f32, batch 1 with 3 heads.
fn grid_on(device: Device) {
    let _rng = seeded(40);
    for d in [1, 16, 60, 64, 128, 256] {
        for t in [1, 2, 63, 64, 65, 1000] {
            let case = Case::new(1, 3, t, d, d);
            for rule in RULES {
                check_fused(&case, rule, device, &format!("T={t} d={d}"));
            }
        }
    }
}

#[test]
fn fused_matches_reference_grid_cpu() {
    if cpu_tests("fused_matches_reference_grid_cpu") {
        grid_on(Device::Cpu);
    }
}

#[test]
fn fused_matches_reference_grid_cuda() {
    for device in devices("fused_matches_reference_grid") {
        if device.is_cuda() {
            grid_on(device);
        }
    }
}

#[test]
fn fused_rectangular_states() {
    // DPFP nu=3 at d_head 64 (384 x 64) and one-hot values of the retrieval task (64 x 600), batch 2;
    // then row counts that leave tails after the CPU kernel's blocks of 4 and 8 rows, with full
    // 16-column tiles (7 x 16, 13 x 48) and a full tile plus a narrow one (6 x 33).
    let _rng = seeded(41);
    for device in devices("fused_rectangular_states") {
        for (d_k, d_v, t) in [
            (384, 64, 70),
            (64, 600, 33),
            (7, 16, 40),
            (13, 48, 70),
            (6, 33, 20),
        ] {
            let case = Case::new(2, 1, t, d_k, d_v);
            for rule in RULES {
                check_fused(&case, rule, device, &format!("{d_k}x{d_v}"));
            }
        }
    }
}

#[test]
fn fused_half_precision_inputs() {
    // bf16/fp16 inputs, fp32 state: against the f64 reference of the same rounded inputs, so only
    // f32 arithmetic and the rounding of outputs and gradients to the input dtype remain.
    let _rng = seeded(42);
    for device in devices("fused_half_precision_inputs") {
        for (kind, tol) in [(Kind::BFloat16, 1e-2), (Kind::Half, 2e-3)] {
            let base = Case::new(1, 2, 80, 32, 24);
            let round = |t: &Tensor| t.to_kind(kind).to_kind(Kind::Double);
            let case = Case {
                q: round(&base.q),
                k: round(&base.k),
                v: round(&base.v),
                beta: round(&base.beta),
                s0: round(&base.s0),
                w_out: round(&base.w_out),
                w_state: round(&base.w_state),
            };
            for rule in RULES {
                let want = case.run(rule, Backend::Reference, Kind::Double, Device::Cpu);
                let got = case.run(rule, Backend::FusedRecurrent, kind, device);
                compare(
                    &format!("{device:?} {rule:?} {kind:?}"),
                    &got,
                    &want,
                    Tol::Scaled(tol),
                );
            }
        }
    }
}

#[test]
fn fused_non_contiguous_inputs() {
    let _rng = seeded(43);
    for device in devices("fused_non_contiguous_inputs") {
        let f = (Kind::Double, device);
        // [B, T, H, d] storage viewed as [B, H, T, d]; beta from a [B, T, H] tensor; S_0 transposed.
        let q = Tensor::randn([2, 20, 3, 8], f).transpose(1, 2);
        let k = Tensor::randn([2, 20, 3, 8], f).transpose(1, 2);
        let k = &k / k.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        let v = Tensor::randn([2, 20, 3, 5], f).transpose(1, 2);
        let beta = Tensor::rand([2, 20, 3], f).transpose(1, 2);
        let s0 = Tensor::randn([2, 3, 5, 8], f).transpose(2, 3);
        assert!(!q.is_contiguous() && !beta.is_contiguous() && !s0.is_contiguous());
        for rule in RULES {
            let b = (rule == UpdateRule::Delta).then_some(&beta);
            let want = fast_weight(
                &q.contiguous(),
                &k.contiguous(),
                &v.contiguous(),
                b.map(|b| b.contiguous()).as_ref(),
                Some(&s0.contiguous()),
                rule,
                Backend::Reference,
            )
            .unwrap();
            let got = fast_weight(&q, &k, &v, b, Some(&s0), rule, Backend::FusedRecurrent).unwrap();
            println!("{device:?} {rule:?} non-contiguous");
            assert_close(
                "out",
                &got.out.to_device(Device::Cpu),
                &want.out.to_device(Device::Cpu),
                1e-12,
                1e-12,
            );
            assert_close(
                "state",
                &got.state.to_device(Device::Cpu),
                &want.state.to_device(Device::Cpu),
                1e-12,
                1e-12,
            );
        }
    }
}

#[test]
fn fused_gradients_match_finite_differences() {
    // Central differences of L = sum(out * W) + sum(state * W2) on a tiny float64 problem.
    let _rng = seeded(44);
    let case = Case::new(1, 2, 5, 3, 2);
    let eps = 1e-6;
    for rule in RULES {
        let (_, _, analytic) = case.run(rule, Backend::FusedRecurrent, Kind::Double, Device::Cpu);
        let loss_at = |inputs: &[Tensor]| -> f64 {
            let beta = (rule == UpdateRule::Delta).then_some(&inputs[4]);
            let r = fast_weight(
                &inputs[0],
                &inputs[1],
                &inputs[2],
                beta,
                Some(&inputs[3]),
                rule,
                Backend::FusedRecurrent,
            )
            .unwrap();
            f64::try_from(
                (&r.out * &case.w_out).sum(Kind::Double)
                    + (&r.state * &case.w_state).sum(Kind::Double),
            )
            .unwrap()
        };
        let base = [&case.q, &case.k, &case.v, &case.s0, &case.beta];
        let n_inputs = if rule == UpdateRule::Delta { 5 } else { 4 };
        for i in 0..n_inputs {
            let numel = base[i].numel() as i64;
            let mut numeric = Vec::with_capacity(numel as usize);
            for e in 0..numel {
                let shifted = |delta: f64| -> Vec<Tensor> {
                    base.iter()
                        .enumerate()
                        .map(|(j, t)| {
                            let t = t.copy();
                            if j == i {
                                let _ = t.view([-1]).get(e).g_add_scalar_(delta);
                            }
                            t
                        })
                        .collect()
                };
                numeric.push((loss_at(&shifted(eps)) - loss_at(&shifted(-eps))) / (2.0 * eps));
            }
            let numeric = Tensor::from_slice(&numeric).view(base[i].size().as_slice());
            println!("{rule:?} finite differences");
            assert_close(NAMES[i], &analytic[i], &numeric, 1e-7, 1e-6);
        }
    }
}

#[test]
fn fused_long_sequence_stays_close_to_float64() {
    // T = 65536 in f32 against f64: outputs and final state against the step-by-step Reference,
    // gradients against Chunked in f64 (itself checked against Reference in tests/recurrence.rs).
    // Stated tolerance: every entry within 1e-4 of the tensor's largest magnitude. Measured: the
    // delta rule (bounded state) ~1e-6 of it; the sum rule (a state summing 65536 outer products)
    // ~1e-5 of it, both from f32 rounding that grows like sqrt(T), not drift.
    let _rng = seeded(45);
    let t = 65536;
    let case = Case::new(1, 1, t, 16, 16);
    let devices = devices("fused_long_sequence_stays_close_to_float64");
    if devices.is_empty() {
        return;
    }
    for rule in RULES {
        // the float64 twins, once for every device
        let clock = std::time::Instant::now();
        let beta = (rule == UpdateRule::Delta).then_some(&case.beta);
        let reference = tch::no_grad(|| {
            fast_weight(
                &case.q,
                &case.k,
                &case.v,
                beta,
                Some(&case.s0),
                rule,
                Backend::Reference,
            )
            .unwrap()
        });
        let reference_s = clock.elapsed().as_secs_f64();
        let chunked = case.run(
            rule,
            Backend::Chunked { chunk_size: 64 },
            Kind::Double,
            Device::Cpu,
        );
        let chunked_s = clock.elapsed().as_secs_f64() - reference_s;
        for &device in &devices {
            let clock = std::time::Instant::now();
            let got = case.run(rule, Backend::FusedRecurrent, Kind::Float, device);
            let fused_s = clock.elapsed().as_secs_f64();
            println!("{device:?} {rule:?} T={t} (fused {fused_s:.1} s, reference {reference_s:.1} s, chunked {chunked_s:.1} s)");
            let scaled = |name: &str, g: &Tensor, w: &Tensor| {
                let scale = f64::try_from(w.abs().max()).unwrap();
                let err = f64::try_from(
                    (g.to_device(Device::Cpu).to_kind(Kind::Double) - w)
                        .abs()
                        .max(),
                )
                .unwrap();
                println!(
                    "  {name}: max error / max |reference| = {:.2e}",
                    err / scale
                );
                assert_close(name, &g.to_device(Device::Cpu), w, 1e-4 * scale, 0.0);
            };
            scaled("out", &got.0, &reference.out);
            scaled("state", &got.1, &reference.state);
            for (i, (g, w)) in got.2.iter().zip(&chunked.2).enumerate() {
                scaled(NAMES[i], g, w);
            }
        }
    }
}

#[test]
fn fused_cpu_backward_stays_accurate_before_a_large_step() {
    // The CPU backward walks each chunk back by undoing the steps (S_{t-1} = S_t - k_t u_t^T,
    // docs/derivations.md Sec. 6), so a step whose update dwarfs the state before it hands its
    // rounding to every earlier state of its chunk. Stated tolerance: with the values of each
    // chunk's last step scaled by 1000, dq and dk of the steps before it within 1e-4 of their own
    // largest magnitude. Measured: dq 5.7e-6 (sum rule) and 9.9e-6 (delta rule) of it, dk 3.0e-7
    // and 3.0e-6.
    let _rng = seeded(47);
    let mut case = Case::new(1, 2, 128, 64, 64);
    let mut scale = vec![1.0f64; 128];
    scale[63] = 1000.0;
    scale[127] = 1000.0;
    case.v = &case.v * Tensor::from_slice(&scale).view([1, 1, 128, 1]);
    for rule in RULES {
        let want = case.run(rule, Backend::Reference, Kind::Double, Device::Cpu);
        let got = case.run(rule, Backend::FusedRecurrent, Kind::Float, Device::Cpu);
        for (i, name) in [(0, "dq"), (1, "dk")] {
            let before = |g: &Tensor| g.narrow(2, 0, 63).to_kind(Kind::Double);
            let w = before(&want.2[i]);
            let scale = f64::try_from(w.abs().max()).unwrap();
            let err = f64::try_from((before(&got.2[i]) - &w).abs().max()).unwrap();
            println!(
                "{rule:?} {name}, steps 0..63: max error / their max |reference| = {:.2e}",
                err / scale
            );
            assert_close(
                &format!("{rule:?} {name}"),
                &before(&got.2[i]),
                &w,
                1e-4 * scale,
                0.0,
            );
        }
    }
}

#[test]
fn fused_final_state_may_be_updated_in_place_before_the_backward() {
    // The backward starts from the final state, and keeps a copy of its own: a caller that carries
    // the returned state on and updates it in place (before calling backward) changes nothing.
    let _rng = seeded(48);
    let case = Case::new(1, 2, 70, 8, 6);
    for device in devices("fused_final_state_may_be_updated_in_place_before_the_backward") {
        for rule in RULES {
            let run = |touch: bool| {
                let [q, k, v, beta, s0] = case.leaves(Kind::Double, device);
                let b = (rule == UpdateRule::Delta).then_some(&beta);
                let r =
                    fast_weight(&q, &k, &v, b, Some(&s0), rule, Backend::FusedRecurrent).unwrap();
                let loss = (&r.out * case.w_out.to_device(device)).sum(Kind::Double);
                if touch {
                    let mut carried = r.state.detach();
                    let _ = carried.f_mul_scalar_(0.5).unwrap();
                }
                let inputs = common::differentiated(rule, [&q, &k, &v, &s0, &beta]);
                grads(&loss, &inputs)
            };
            let (want, got) = (run(false), run(true));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{device:?} {rule:?} {}", NAMES[i]), g, w, 0.0, 0.0);
            }
        }
    }
}

#[test]
fn fused_inference_gives_the_training_forward() {
    // Without autograd the kernels save nothing for a backward (no checkpoints, no residuals on
    // the CPU); the output and final state are the same bits as with autograd.
    let _rng = seeded(49);
    let case = Case::new(2, 2, 130, 16, 24);
    for device in devices("fused_inference_gives_the_training_forward") {
        for rule in RULES {
            for kind in [Kind::Float, Kind::Double] {
                let [q, k, v, beta, s0] = case.leaves(kind, device);
                let b = (rule == UpdateRule::Delta).then_some(&beta);
                let run = || {
                    fast_weight(&q, &k, &v, b, Some(&s0), rule, Backend::FusedRecurrent).unwrap()
                };
                let train = run();
                let infer = tch::no_grad(run);
                assert!(train.out.requires_grad() && !infer.out.requires_grad());
                assert!(
                    train.out.equal(&infer.out),
                    "{device:?} {rule:?} {kind:?}: out"
                );
                assert!(
                    train.state.equal(&infer.state),
                    "{device:?} {rule:?} {kind:?}: state"
                );
            }
        }
    }
}

#[test]
fn fused_bad_input_is_an_error() {
    let f = (Kind::Float, Device::Cpu);
    let (q, v) = (
        Tensor::randn([1, 2, 4, 3], f),
        Tensor::randn([1, 2, 4, 5], f),
    );
    // The C++ checks (for callers that bypass fast_weight's) come back as Err, not as a crash.
    let e = ops::fast_weight_fused(&q, &Tensor::randn([1, 2, 4, 4], f), &v, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fwp::sum_rule") && e.contains("k: expected shape"),
        "{e}"
    );
    let e = ops::fast_weight_fused(&q, &q, &v, Some(&Tensor::rand([1, 2, 3], f)), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("beta: expected shape [B, H, T]"), "{e}");
    let e = ops::fast_weight_fused(&q, &q.to_kind(Kind::Double), &v, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k: dtype"), "{e}");
    let e = ops::fast_weight_fused(&q, &q, &v, None, Some(&Tensor::zeros([1, 2, 5, 3], f)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("initial state: expected shape"), "{e}");
    // and through the public function, as for every backend
    let e = fast_weight(
        &q,
        &q,
        &v.to_kind(Kind::Int),
        None,
        None,
        UpdateRule::Sum,
        Backend::FusedRecurrent,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("v:"), "{e}");
    println!("errors come back as Err");
}

#[test]
fn fused_cuda_device_mismatch_and_size_limit() {
    if !tch::Cuda::is_available() {
        skip_notice("fused_cuda_device_mismatch_and_size_limit");
        return;
    }
    let f = (Kind::Float, Device::Cuda(0));
    let q = Tensor::randn([1, 1, 4, 8], f);
    let e = ops::fast_weight_fused(&q, &q.to_device(Device::Cpu), &q, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k: on"), "{e}");
    let max = ops::fused_cuda_max_dk(0, 8, Kind::Float).unwrap();
    assert!(
        max >= 512,
        "the CUDA kernels must take d_k = 512, max here {max}"
    );
    let big = Tensor::randn([1, 1, 2, max + 1], f);
    let e = fast_weight(
        &big,
        &big,
        &Tensor::randn([1, 1, 2, 8], f),
        None,
        None,
        UpdateRule::Sum,
        Backend::FusedRecurrent,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("too large"), "{e}");
    assert_eq!(
        Backend::Auto.resolve(
            Device::Cuda(0),
            Kind::Float,
            UpdateRule::Sum,
            1024,
            max + 1,
            8
        ),
        Backend::Chunked { chunk_size: 64 }
    );
    // above 256 the recurrent kernel; up to 256 the chunked kernels for bf16, f16, f32 on sm_80+,
    // the recurrent kernel for f64
    let sm80 = fwp::ops::chunked_cuda_runs_on(0);
    let cuda = Device::Cuda(0);
    for backend in [Backend::Auto, Backend::Fused] {
        assert_eq!(
            backend.resolve(cuda, Kind::Float, UpdateRule::Delta, 1024, 512, 8),
            Backend::FusedRecurrent
        );
        assert_eq!(
            backend.resolve(cuda, Kind::Float, UpdateRule::Sum, 1024, 64, 300),
            Backend::FusedRecurrent
        );
        assert_eq!(
            backend.resolve(cuda, Kind::Double, UpdateRule::Delta, 1024, 64, 64),
            Backend::FusedRecurrent
        );
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let want = if sm80 {
                Backend::FusedChunked
            } else {
                Backend::FusedRecurrent
            };
            // longer than the chunked kernels' grid takes: the recurrent kernel
            assert_eq!(
                backend.resolve(
                    cuda,
                    kind,
                    UpdateRule::Sum,
                    fwp::recurrence::CHUNKED_KERNEL_MAX_T + 1,
                    64,
                    64
                ),
                Backend::FusedRecurrent
            );
            for rule in UpdateRule::ALL {
                for t in [1, 1024, fwp::recurrence::CHUNKED_KERNEL_MAX_T] {
                    assert_eq!(
                        backend.resolve(cuda, kind, rule, t, 256, 256),
                        want,
                        "{kind:?} {rule:?} T={t}"
                    );
                }
            }
        }
    }
}

/// On the CPU `Auto` and `Fused` pick the chunked twin only for f32 inputs of at least 256 steps
/// whose d_k d_v reaches the measured crossover of the rule and the kind of CPU, and never for the
/// delta rule, whose crossover no measured size reached.
#[test]
fn auto_and_fused_pick_the_cpu_kernel_by_the_measured_crossover() {
    use fwp::recurrence::{cpu_chunked_min_size, CpuClass, CPU_CHUNKED_MIN_T};
    let cpu = Device::Cpu;
    let class = CpuClass::this_cpu();
    for backend in [Backend::Auto, Backend::Fused] {
        for rule in UpdateRule::ALL {
            let pick = |kind, t, d_k, d_v| backend.resolve(cpu, kind, rule, t, d_k, d_v);
            let Some(min) = cpu_chunked_min_size(rule, class) else {
                for (t, d_k, d_v) in [(4096, 384, 600), (256, 256, 256), (1024, 64, 64)] {
                    assert_eq!(pick(Kind::Float, t, d_k, d_v), Backend::FusedRecurrent);
                }
                continue;
            };
            let (small, large) = ((min as f64).sqrt() as i64 - 8, (min as f64).sqrt() as i64);
            let long = CPU_CHUNKED_MIN_T;
            assert_eq!(pick(Kind::Float, long, large, large), Backend::FusedChunked);
            assert_eq!(pick(Kind::Float, 4096, 384, 600), Backend::FusedChunked);
            assert_eq!(
                pick(Kind::Float, long, small, small),
                Backend::FusedRecurrent
            );
            // short sequences (decoding steps) and other dtypes stay with the recurrent kernel
            assert_eq!(
                pick(Kind::Float, long - 1, large, large),
                Backend::FusedRecurrent
            );
            assert_eq!(pick(Kind::Float, 1, 384, 600), Backend::FusedRecurrent);
            for kind in [Kind::Double, Kind::BFloat16, Kind::Half] {
                assert_eq!(pick(kind, 4096, 384, 600), Backend::FusedRecurrent);
            }
            assert_eq!(pick(Kind::Float, 4096, 64, 64), Backend::FusedRecurrent);
        }
    }
    // the measured table
    let sum = |class| cpu_chunked_min_size(UpdateRule::Sum, class);
    assert_eq!(sum(CpuClass::IntelAvx512), Some(192 * 192));
    assert_eq!(sum(CpuClass::OtherAvx512), None);
    assert_eq!(sum(CpuClass::IntelNoAvx512), Some(256 * 256));
    assert_eq!(sum(CpuClass::OtherNoAvx512), None);
    assert_eq!(sum(CpuClass::NotX86), Some(256 * 256));
    for class in CpuClass::ALL {
        assert_eq!(cpu_chunked_min_size(UpdateRule::Delta, class), None);
    }
    for explicit in [
        Backend::Chunked { chunk_size: 8 },
        Backend::FusedChunked,
        Backend::FusedRecurrent,
        Backend::Reference,
    ] {
        assert_eq!(
            explicit.resolve(cpu, Kind::Float, UpdateRule::Sum, 4096, 384, 600),
            explicit
        );
    }
}

/// What `fast_weight` runs is what `resolve` names: with `Fused` at a size the twin is picked for,
/// the answer equals `FusedChunked`'s bit for bit, and below it (or, on a CPU where the twin is
/// never picked, at 256 x 256) `FusedRecurrent`'s.
#[test]
fn fused_runs_the_kernel_resolve_names() {
    use fwp::recurrence::{cpu_chunked_min_size, CpuClass};
    let _rng = seeded(47);
    let rule = UpdateRule::Sum;
    let large = match cpu_chunked_min_size(rule, CpuClass::this_cpu()) {
        Some(min) => ((min as f64).sqrt() as i64, Backend::FusedChunked),
        None => (256, Backend::FusedRecurrent),
    };
    for (d, t, want) in [(large.0, 256, large.1), (16, 256, Backend::FusedRecurrent)] {
        let f = (Kind::Float, Device::Cpu);
        let (q, k, v) = (
            Tensor::randn([1, 2, t, d], f),
            Tensor::randn([1, 2, t, d], f) * 0.1,
            Tensor::randn([1, 2, t, d], f),
        );
        assert_eq!(
            Backend::Fused.resolve(Device::Cpu, Kind::Float, rule, t, d, d),
            want
        );
        let run = |b| fast_weight(&q, &k, &v, None, None, rule, b).unwrap().out;
        let other = if want == Backend::FusedChunked {
            Backend::FusedRecurrent
        } else {
            Backend::FusedChunked
        };
        let (fused, named) = (run(Backend::Fused), run(want));
        assert!(fused.equal(&named), "d={d}: Fused differs from {want}");
        // the two kernels round differently, so the comparison tells them apart
        assert!(
            !fused.equal(&run(other)),
            "d={d}: {want} and {other} agree bit for bit"
        );
    }
}

/// Every backend's name, as logs print it, parses back to the backend.
#[test]
fn backend_names_parse_back() {
    for backend in [
        Backend::Auto,
        Backend::Fused,
        Backend::FusedRecurrent,
        Backend::FusedChunked,
        Backend::Reference,
        Backend::Chunked { chunk_size: 64 },
        Backend::Chunked { chunk_size: 7 },
    ] {
        let name = backend.to_string();
        assert_eq!(name.parse::<Backend>().unwrap(), backend, "{name}");
    }
    assert_eq!(Backend::FusedChunked.to_string(), "fused:chunked");
    assert_eq!(Backend::FusedRecurrent.to_string(), "fused:recurrent");
    let e = "fused:fast".parse::<Backend>().unwrap_err().to_string();
    assert!(
        e.contains("fused:recurrent") && e.contains("'fused:fast'"),
        "{e}"
    );
}

#[test]
fn traced_torchscript_module_records_the_fused_op() {
    let _rng = seeded(46);
    let dir = std::env::temp_dir().join(format!("fwp-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for device in devices("traced_torchscript_module_records_the_fused_op") {
        for rule in RULES {
            let f = (Kind::Float, device);
            let inputs = |seed: i64| {
                tch::manual_seed(seed);
                vec![
                    Tensor::randn([2, 3, 9, 4], f),
                    Tensor::randn([2, 3, 9, 4], f).softmax(-1, Kind::Float),
                    Tensor::randn([2, 3, 9, 5], f),
                    Tensor::rand([2, 3, 9], f),
                ]
            };
            let run = move |x: &[Tensor]| -> Vec<Tensor> {
                let beta = (rule == UpdateRule::Delta).then_some(&x[3]);
                let r = fast_weight(
                    &x[0],
                    &x[1],
                    &x[2],
                    beta,
                    None,
                    rule,
                    Backend::FusedRecurrent,
                )
                .unwrap();
                // one output (what a saved TorchScript method may return): out and state, flattened
                vec![Tensor::cat(
                    &[r.out.flatten(0, -1), r.state.flatten(0, -1)],
                    0,
                )]
            };
            let module =
                CModule::create_by_tracing("FastWeight", "forward", &inputs(1), &mut |x| run(x))
                    .unwrap();
            let file = dir.join(format!("fw-{rule:?}-{}.pt", device.is_cuda()));
            module.save(&file).unwrap();
            let loaded = CModule::load_on_device(&file, device).unwrap();
            // fresh inputs: a trace that had not recorded the op would replay constants
            let x = inputs(2);
            let got = loaded.forward_ts(&x).unwrap();
            let want = run(&x);
            assert_close(
                &format!("{device:?} {rule:?} reloaded"),
                &got.to_device(Device::Cpu),
                &want[0].to_device(Device::Cpu),
                0.0,
                0.0,
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fused_empty_batch_gives_empty_outputs() {
    for device in devices("fused_empty_batch_gives_empty_outputs") {
        let backends = [
            Backend::FusedRecurrent,
            Backend::FusedChunked,
            Backend::Fused,
            Backend::Auto,
        ];
        for (rule, backend) in RULES
            .into_iter()
            .flat_map(|r| backends.into_iter().map(move |b| (r, b)))
        {
            let f = (Kind::Float, device);
            let q = Tensor::randn([0, 2, 5, 4], f).set_requires_grad(true);
            let v = Tensor::randn([0, 2, 5, 3], f);
            let beta = Tensor::rand([0, 2, 5], f);
            let b = (rule == UpdateRule::Delta).then_some(&beta);
            let r = fast_weight(&q, &q, &v, b, None, rule, backend).unwrap();
            assert_eq!(r.out.size(), vec![0, 2, 5, 3], "{backend}");
            assert_eq!(r.state.size(), vec![0, 2, 4, 3], "{backend}");
            let g = grads(&r.out.sum(Kind::Float), &[&q]);
            assert_eq!(g[0].size(), vec![0, 2, 5, 4], "{backend}");
        }
    }
}

/// The recurrent CUDA kernels' checkpoint interval, from the shared-memory arithmetic alone (no GPU
/// needed): a quarter of the opt-in limit while that gives 16 steps, else the whole limit, so on
/// H100/H200 (227 KiB) every d up to 256 gets at least 16 steps per checkpoint (the quarter alone
/// gave 9 at d = 128 and 2 at d = 256).
#[test]
fn cuda_checkpoint_interval_keeps_at_least_16_steps() {
    let hopper = 227 * 1024;
    let chunk = |d: i64, t: i64, kind: Kind, limit: i64| {
        ops::fused_cuda_chunk_for(d, t, kind, limit).unwrap()
    };
    for d in [64, 128, 256] {
        let c = chunk(d, 4096, Kind::Float, hopper);
        println!(
            "d = {d}: {c} steps per checkpoint, {} bytes of state per head-token",
            d * d * 4 / c
        );
        assert!((16..=64).contains(&c), "d = {d}: chunk {c}");
    }
    // the numbers docs/derivations.md gives: d = 64 keeps room for four blocks per multiprocessor,
    // d = 128 and 256 use the whole limit
    assert_eq!(
        [64, 128, 256].map(|d| chunk(d, 4096, Kind::Float, hopper)),
        [23, 51, 23]
    );
    assert!(chunk(256, 4096, Kind::Double, hopper) < chunk(256, 4096, Kind::Float, hopper));
    assert_eq!(
        chunk(64, 10, Kind::Float, hopper),
        10,
        "never longer than T"
    );
    assert_eq!(
        chunk(100_000, 64, Kind::Float, hopper),
        0,
        "not even one step fits"
    );
}

/// `fwp selftest` (every kernel once against its twin) passes on every device here.
#[test]
fn selftest_passes_on_every_device() {
    for device in devices("selftest_passes_on_every_device") {
        let checks = fwp::selftest::run(device).unwrap();
        assert!(checks.len() >= 27, "{} checks", checks.len());
        for c in &checks {
            println!(
                "{device:?} {}: {:.2e} (tolerance {:.0e})",
                c.name, c.error, c.tolerance
            );
            assert!(c.passed(), "{device:?} {}: error {:e}", c.name, c.error);
        }
    }
}
