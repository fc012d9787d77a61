//! The chunked kernels stage by stage (kernels/chunked.h, `ops::chunked_stage`).
//!
//! On the CPU: the stages chained by hand give what the op `fwp::chunked_rule` gives, forward and
//! backward, so the stage interface the GPU comparison uses means what it says. On a GPU: each CUDA
//! stage, fed the CPU twin's inputs of that stage, against the twin's outputs (both rounding
//! operands alike: bf16, then three bf16 parts), printing every stage's error and naming the first
//! that differs; then the whole op on bf16, f16 and f32 inputs against the float64 Reference.

mod common;

use common::{assert_close, cuda_or_skip, rel_rms, seeded, Case, OUTPUT_NAMES};
use fwp::ops::{chunked_stage, fast_weight_chunked_kernel, Operands};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

const C: i64 = 64;

/// Relative RMS difference allowed between a CUDA stage and the twin under `Operands::Bf16x2` and
/// `Bf16x3`, where both multiply the same bf16 parts and only the order of f32 sums differs.
const STAGE_TOL_SPLIT: f64 = 1e-5;

/// Relative RMS error of the CUDA op against float64 of the same rounded inputs, per input dtype:
/// bf16 within FLA's own fp16 test bound (0.006); f16 (two bf16 parts per operand, results rounded
/// to f16) and f32 (three parts) well below one bf16 part's error. The CPU twin, doing the same
/// arithmetic, stays within each at these shapes (`chunked_twin_meets_the_gpu_op_tolerances`).
const OP_TOLERANCES: [(Kind, f64); 3] = [
    (Kind::BFloat16, 6e-3),
    (Kind::Half, 1e-3),
    (Kind::Float, 1e-5),
];

/// (H, T, d = d_k = d_v) of the GPU op test, at B = 1. At T = 1, dbeta has one value per head, and
/// the relative RMS error of a few values is itself noisy: over 30 seeds, the CPU twin's bf16 dbeta
/// errors reached 2.1e-2 with H = 2 (median 2.8e-3) but only 3.7e-3 with H = 64, so T = 1 runs 64
/// heads.
const OP_SHAPES: [(i64, i64, i64); 6] = [
    (64, 1, 64),
    (2, 63, 64),
    (2, 65, 64),
    (2, 1000, 64),
    (2, 1000, 128),
    (2, 300, 256),
];

/// Outputs, final state and every gradient (f64, on the CPU) of `fast_weight` with `backend` on
/// `case`'s inputs as `kind` on `device`.
fn run_op(
    case: &Case,
    rule: UpdateRule,
    kind: Kind,
    device: Device,
    backend: Backend,
) -> Vec<Tensor> {
    case.outputs_and_grads(rule, kind, device, |q, k, v, b, s0| {
        let o = fast_weight(q, k, v, b, Some(s0), rule, backend).unwrap();
        (o.out, o.state)
    })
}

/// The inputs of the stages in the chunked layout: q, k [BH, N, C, d_k], v [BH, N, C, d_v], beta
/// [BH, N, C], s0 [BH, d_k, d_v], dO [BH, N, C, d_v], dS_N [BH, d_k, d_v]; fp32 on the CPU, T padded
/// with zero steps to N C.
struct StageInputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    s0: Tensor,
    grad_out: Tensor,
    ds_final: Tensor,
}

impl StageInputs {
    fn new(bh: i64, t: i64, d_k: i64, d_v: i64) -> StageInputs {
        let n = (t + C - 1) / C;
        let f = (Kind::Float, Device::Cpu);
        let chunked = |x: Tensor| {
            let d = x.size()[2];
            x.constant_pad_nd([0, 0, 0, n * C - t])
                .reshape([bh, n, C, d])
        };
        let k = Tensor::randn([bh, t, d_k], f);
        let k = &k / k.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        StageInputs {
            q: chunked(Tensor::randn([bh, t, d_k], f) / (d_k as f64).sqrt()),
            k: chunked(k),
            v: chunked(Tensor::randn([bh, t, d_v], f)),
            beta: Tensor::rand([bh, t], f)
                .constant_pad_nd([0, n * C - t])
                .reshape([bh, n, C]),
            s0: Tensor::randn([bh, d_k, d_v], f) * 0.3,
            grad_out: chunked(Tensor::randn([bh, t, d_v], f)),
            ds_final: Tensor::randn([bh, d_k, d_v], f),
        }
    }
}

/// One stage's name, its inputs and its outputs.
struct Stage {
    name: &'static str,
    inputs: Vec<Option<Tensor>>,
    outputs: Vec<Option<Tensor>>,
}

fn run(name: &'static str, inputs: Vec<Option<Tensor>>, operands: Operands) -> Stage {
    let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
    let outputs = chunked_stage(name, &refs, C, operands).unwrap();
    Stage {
        name,
        inputs,
        outputs,
    }
}

fn out(stage: &Stage, i: usize) -> Option<Tensor> {
    stage.outputs[i].as_ref().map(Tensor::shallow_clone)
}

/// Every stage of a forward and backward on the CPU twin, in the op's order.
fn chain(x: &StageInputs, delta: bool, operands: Operands) -> Vec<Stage> {
    let s = |t: &Tensor| Some(t.shallow_clone());
    let mut stages = Vec::new();
    let (tinv, w, u) = if delta {
        let wy = run("wy", vec![s(&x.k), s(&x.v), s(&x.beta)], operands);
        let r = (out(&wy, 0), out(&wy, 1), out(&wy, 2).unwrap());
        stages.push(wy);
        r
    } else {
        (None, None, x.v.shallow_clone())
    };
    let fwd = run(
        "state_forward",
        vec![
            s(&x.k),
            w.as_ref().map(Tensor::shallow_clone),
            s(&u),
            s(&x.s0),
        ],
        operands,
    );
    let (ckpt, v_new) = (out(&fwd, 0).unwrap(), out(&fwd, 1).unwrap());
    stages.push(fwd);
    stages.push(run(
        "output",
        vec![s(&x.q), s(&x.k), s(&v_new), s(&ckpt)],
        operands,
    ));
    if delta {
        stages.push(run(
            "values",
            vec![w.as_ref().map(Tensor::shallow_clone), s(&u), s(&ckpt)],
            operands,
        ));
    }
    let local = run(
        "local_grad",
        vec![s(&x.q), s(&x.k), s(&x.grad_out)],
        operands,
    );
    let dv_local = out(&local, 0).unwrap();
    stages.push(local);
    let bwd = run(
        "state_backward",
        vec![
            s(&x.q),
            s(&x.k),
            w.as_ref().map(Tensor::shallow_clone),
            s(&x.grad_out),
            s(&dv_local),
            s(&x.ds_final),
        ],
        operands,
    );
    let (dv_new, ds_next) = (out(&bwd, 0).unwrap(), out(&bwd, 1).unwrap());
    stages.push(bwd);
    stages.push(run(
        "input_grads",
        vec![
            s(&x.q),
            s(&x.k),
            s(&x.v),
            delta.then(|| x.beta.shallow_clone()),
            tinv,
            w,
            s(&v_new),
            s(&ckpt),
            s(&ds_next),
            s(&x.grad_out),
            s(&dv_new),
        ],
        operands,
    ));
    stages
}

/// The stages chained by hand equal the op: outputs, final state and every gradient.
#[test]
fn chunked_stages_compose_to_the_op() {
    let _rng = seeded(70);
    let (bh, t, d_k, d_v) = (3, 150, 20, 24);
    let x = StageInputs::new(bh, t, d_k, d_v);
    let n = (t + C - 1) / C;
    for delta in [false, true] {
        let stages = chain(&x, delta, Operands::Exact);
        let get = |name: &str, i: usize| {
            stages.iter().find(|s| s.name == name).unwrap().outputs[i]
                .as_ref()
                .unwrap()
                .shallow_clone()
        };
        // The op on the same inputs in [B = 1, H = BH, T, d] layout.
        let unchunk = |c: &Tensor| {
            let d = c.size()[3];
            c.reshape([1, bh, n * C, d])
                .narrow(2, 0, t)
                .detach()
                .set_requires_grad(true)
        };
        let (q, k, v) = (unchunk(&x.q), unchunk(&x.k), unchunk(&x.v));
        let beta = x
            .beta
            .reshape([1, bh, n * C])
            .narrow(2, 0, t)
            .detach()
            .set_requires_grad(true);
        let s0 = x.s0.unsqueeze(0).detach().set_requires_grad(true);
        let b = delta.then_some(&beta);
        let (o, state) =
            fast_weight_chunked_kernel(&q, &k, &v, b, Some(&s0), C, Operands::Exact).unwrap();
        let l = format!("delta={delta}");
        assert_close(
            &format!("{l} out"),
            &o,
            &unchunk(&get("output", 0)),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{l} state"),
            &state,
            &get("state_forward", 2).unsqueeze(0),
            1e-5,
            1e-5,
        );
        let go = unchunk(&x.grad_out);
        let loss =
            (&o * &go).sum(Kind::Float) + (&state * x.ds_final.unsqueeze(0)).sum(Kind::Float);
        let mut inputs = vec![&q, &k, &v, &s0];
        if delta {
            inputs.push(&beta);
        }
        let g = Tensor::run_backward(&[loss], &inputs, false, false);
        assert_close(
            &format!("{l} dq"),
            &g[0],
            &unchunk(&get("input_grads", 0)),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{l} dk"),
            &g[1],
            &unchunk(&get("input_grads", 1)),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{l} dv"),
            &g[2],
            &unchunk(&get("input_grads", 2)),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{l} dS0"),
            &g[3],
            &get("state_backward", 2).unsqueeze(0),
            1e-5,
            1e-5,
        );
        if delta {
            let db = get("input_grads", 3)
                .reshape([1, bh, n * C])
                .narrow(2, 0, t);
            assert_close(&format!("{l} dbeta"), &g[4], &db, 1e-5, 1e-5);
        }
    }
}

#[test]
fn chunked_stage_names_and_arity_are_checked() {
    let x = StageInputs::new(1, 10, 4, 4);
    let err = chunked_stage("nope", &[Some(&x.q)], C, Operands::Exact)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown stage 'nope'"), "{err}");
    let err = chunked_stage("wy", &[Some(&x.k)], C, Operands::Exact)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 3 inputs, got 1"), "{err}");
}

/// Relative RMS difference allowed between a stage and the twin's, per operand mode: bf16 operands
/// for bf16 inputs, two bf16 parts for f16 inputs, three for f32; with two or three parts on both
/// sides only the order of f32 sums differs.
const STAGE_TOLERANCES: [(Operands, f64); 3] = [
    (Operands::Bf16, 1e-3),
    (Operands::Bf16x2, STAGE_TOL_SPLIT),
    (Operands::Bf16x3, STAGE_TOL_SPLIT),
];

/// The outputs of stage `name` that are the op's results, by position: the fast kernels write them
/// in the caller's dtype (bf16 or fp32; kernels/chunked.h, `fast_result_type`). Outputs that pass
/// an input through (the sum rule's dV) are left out.
fn result_outputs(name: &str, delta: bool) -> &'static [usize] {
    match (name, delta) {
        ("output", _) => &[0],
        ("input_grads", true) => &[0, 1, 2, 3],
        ("input_grads", false) => &[0, 1],
        ("state_backward", false) => &[0],
        _ => &[],
    }
}

/// The outputs of stage `name` that are only ever operands of later products (W, U', T~, dU'), by
/// position: the fast kernels store them as bf16 under `Operands::Bf16` (`fast_operand_type`).
fn operand_outputs(name: &str, delta: bool) -> &'static [usize] {
    match (name, delta) {
        ("wy", _) => &[0, 1],
        ("state_forward", true) => &[1],
        ("values", _) => &[0],
        ("state_backward", true) => &[0],
        _ => &[],
    }
}

/// The dtype the fast kernels (or, with `:first`, the first-version ones) write output `i` of
/// stage `name` in, given fp32 inputs; `fast`: whether the fast kernel runs at all (`runs_fast`).
fn stored_kind(name: &str, i: usize, operands: Operands, delta: bool, fast: bool) -> Kind {
    let stage = name.split_once(':').map_or(name, |(stage, _)| stage);
    if fast && operands == Operands::Bf16 && operand_outputs(stage, delta).contains(&i) {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Whether stage `name` runs a fast kernel on `inputs` (fp32 here): not with `:first`; the emulated
/// versions always; on CUDA (no suffix) the per-chunk stages always, and the sequential passes
/// where their shared memory fits the device's limit, else the launcher runs the first-version
/// kernel (kernels/chunked_cuda.cpp, `pass_stages`; `fwp info` prints the plan), as the backward
/// pass at d_k = 256 with fp32 inputs on an H200.
fn runs_fast(name: &str, inputs: &[Option<&Tensor>], delta: bool) -> bool {
    let backward = match name.split_once(':') {
        Some((_, version)) => return !version.ends_with("first"),
        None if name == "state_forward" => false,
        None if name == "state_backward" => true,
        None => return true,
    };
    assert!(
        inputs.iter().flatten().all(|t| t.kind() == Kind::Float),
        "{name}: this test gives the passes fp32 inputs"
    );
    let d_k = inputs[0].expect("the passes' first input (k or q)").size()[3];
    let gpu = &fwp::info::gpus().expect("the GPUs")[0];
    let limit = gpu.shared_memory_per_block as i64;
    fwp::ops::chunked_pass_stages(d_k, backward, delta, false, limit).expect("d_k <= 256") > 0
}

/// Runs stage `name` (the twin's stage, perhaps with a pass suffix) on `inputs` and returns each
/// output's label and relative RMS difference from the twin's output (rounded to bf16 where the
/// kernel stores bf16: what every consumer of that output rounds it to).
fn stage_errors(
    twin: &Stage,
    name: &str,
    inputs: &[Option<&Tensor>],
    operands: Operands,
    delta: bool,
    case: &str,
) -> Vec<(String, f64)> {
    let got = chunked_stage(name, inputs, C, operands).unwrap();
    let fast = runs_fast(name, inputs, delta);
    let mut errors = Vec::new();
    for (i, (want, got)) in twin.outputs.iter().zip(&got).enumerate() {
        let label = format!("{operands:?} {case} {name} output {i}");
        match (want, got) {
            (Some(w), Some(g)) => {
                let kind = stored_kind(name, i, operands, delta, fast);
                assert_eq!(g.kind(), kind, "{label}: stored as {:?}", g.kind());
                errors.push((label, rel_rms(g, &w.to_kind(kind))));
            }
            (None, None) => {}
            _ => panic!("{label}: defined on one side only"),
        }
    }
    errors
}

/// The fast CUDA kernels (kernels/chunked_passes.cuh) run on the CPU by the emulator (one thread per
/// CUDA thread, mma.sync from its fragment layout): on the twin's inputs of each stage, they give
/// the twin's outputs. The shapes cover each key-tile size of the passes (d_k up to 64,
/// 128, 256), partial value tiles, two 64-column tiles of values (the per-chunk stages), a T tail,
/// d_k and d_v not multiples of 4 (the passes' 4-byte copies) or 8,
/// both rules, the three operand modes and one and two stages of shared memory (one stage with one
/// bf16 part, where the launcher sends d = 128 on an H200, and with three); with one bf16
/// part, each width of the passes' blocks (32 value columns; 16 for d_v = 24 and 8 for d_v = 12,
/// where the emulator's GPU of two SMs would leave one idle: kernels/chunked_emulator.cpp).
#[test]
fn emulated_fast_passes_match_the_twin() {
    let _rng = seeded(72);
    let shapes = [
        (1, 130, 30, 72),
        (2, 64, 96, 33),
        (1, 65, 200, 24),
        (1, 70, 48, 12),
    ];
    emulated_stages_match_the_twin("emulated fast passes", &shapes, |operands, stage| {
        if operands != Operands::Bf16x2 && stage.starts_with("state_") {
            &["emulated1", "emulated2"]
        } else {
            &["emulated2"]
        }
    });
}

/// The first-version CUDA kernels (kernels/chunked_first.cuh), the fallback where a fast pass does
/// not fit, run on the CPU by the emulator (one thread per CUDA thread, WMMA on whole tiles): on the
/// twin's inputs of each stage, they give the twin's outputs. The shapes cover two 64-column value
/// tiles of the sequential passes (the second partial), key and value widths that are not
/// multiples of the 16-wide product tiles, a T tail, both rules and the three operand modes.
#[test]
fn emulated_first_version_kernels_match_the_twin() {
    let _rng = seeded(74);
    let shapes = [(1, 130, 30, 72), (2, 64, 20, 17)];
    emulated_stages_match_the_twin("emulated first-version kernels", &shapes, |_, _| {
        &["emulated_first"]
    });
}

/// Every stage of `chain` at each (BH, T, d_k, d_v) of `shapes`, both rules and every operand mode,
/// run by each kernel version `versions(operands, stage)` names (a stage-name suffix), within
/// `STAGE_TOLERANCES` of the twin.
fn emulated_stages_match_the_twin(
    what: &str,
    shapes: &[(i64, i64, i64, i64)],
    versions: impl Fn(Operands, &str) -> &'static [&'static str],
) {
    let mut worst = Vec::new();
    for (operands, tolerance) in STAGE_TOLERANCES {
        let mut mode_worst = 0f64;
        for &(bh, t, d_k, d_v) in shapes {
            let x = StageInputs::new(bh, t, d_k, d_v);
            for delta in [false, true] {
                let case = format!("BH={bh} T={t} d_k={d_k} d_v={d_v} delta={delta}");
                for twin in chain(&x, delta, operands) {
                    let refs: Vec<Option<&Tensor>> =
                        twin.inputs.iter().map(Option::as_ref).collect();
                    for version in versions(operands, twin.name) {
                        let name = format!("{}:{version}", twin.name);
                        for (label, err) in
                            stage_errors(&twin, &name, &refs, operands, delta, &case)
                        {
                            mode_worst = mode_worst.max(err);
                            assert!(
                                err < tolerance,
                                "{label}: relative RMS difference {err:.2e}"
                            );
                        }
                    }
                }
            }
        }
        worst.push(format!(
            "{operands:?} {mode_worst:.2e} (tolerance {tolerance:.0e})"
        ));
    }
    eprintln!(
        "{what}: largest relative RMS difference {}",
        worst.join(", ")
    );
}

/// A developer's check for kernel changes that should change no result: every output of every
/// emulated fast stage (both pass versions; five shapes with d_k = 7, 30, 64, 96, 200, so every key
/// tile; both rules; the three operand modes; fp32 inputs and, with one part, bf16 ones), saved to
/// the file `FWP_SAVE_STAGE_OUTPUTS` names, or compared with such a file from before the change,
/// `FWP_COMPARE_STAGE_OUTPUTS`: same dtype, shape, NaN positions and values (a zero's sign is not
/// compared). About 6 minutes on 2 cores:
/// `FWP_SAVE_STAGE_OUTPUTS=/tmp/before.ot cargo test --release --test chunked_stages -- --ignored
/// emulated_stage_outputs`, change the kernels, then the same with `FWP_COMPARE_STAGE_OUTPUTS`.
#[test]
#[ignore = "a developer's tool: needs FWP_SAVE_STAGE_OUTPUTS or FWP_COMPARE_STAGE_OUTPUTS"]
fn emulated_stage_outputs_bit_for_bit() {
    let save = std::env::var("FWP_SAVE_STAGE_OUTPUTS").ok();
    let compare = std::env::var("FWP_COMPARE_STAGE_OUTPUTS").ok();
    assert!(
        save.is_some() != compare.is_some(),
        "set one of FWP_SAVE_STAGE_OUTPUTS and FWP_COMPARE_STAGE_OUTPUTS to a file path"
    );
    let outputs = emulated_stage_outputs();
    if let Some(path) = save {
        Tensor::save_multi(&outputs, &path).unwrap();
        eprintln!("{} stage outputs saved to {path}", outputs.len());
        return;
    }
    let path = compare.unwrap();
    let saved = Tensor::load_multi(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        saved.len(),
        outputs.len(),
        "{path}: another number of outputs"
    );
    let mut differ = Vec::new();
    for ((name, got), (saved_name, want)) in outputs.iter().zip(&saved) {
        assert_eq!(name, saved_name, "{path}: outputs in another order");
        let (g, w) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
        let same = got.kind() == want.kind()
            && g.size() == w.size()
            && g.isnan().equal(&w.isnan())
            && g.masked_fill(&g.isnan(), 0.0)
                .equal(&w.masked_fill(&w.isnan(), 0.0));
        if !same {
            differ.push(name.clone());
        }
    }
    eprintln!("{} stage outputs compared with {path}", outputs.len());
    assert!(differ.is_empty(), "{} differ: {differ:?}", differ.len());
}

/// The outputs of `emulated_stage_outputs_bit_for_bit`, each named by its case, stage, kernel
/// version, input dtype and position.
fn emulated_stage_outputs() -> Vec<(String, Tensor)> {
    let _rng = seeded(91);
    let mut all = Vec::new();
    for (bh, t, d_k, d_v) in [
        (1, 130, 7, 20),
        (1, 130, 30, 72),
        (2, 64, 64, 64),
        (1, 65, 96, 33),
        (1, 65, 200, 24),
    ] {
        let mut x = StageInputs::new(bh, t, d_k, d_v);
        for t in [&mut x.q, &mut x.k, &mut x.v, &mut x.beta, &mut x.grad_out] {
            *t = t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        }
        for delta in [false, true] {
            for operands in [Operands::Bf16, Operands::Bf16x2, Operands::Bf16x3] {
                for twin in chain(&x, delta, operands) {
                    let versions: &[&str] = if twin.name.starts_with("state_") {
                        &["emulated1", "emulated2"]
                    } else {
                        &["emulated2"]
                    };
                    let mut runs = vec![("f32", shallow(&twin.inputs))];
                    if operands == Operands::Bf16 {
                        let (mixed, _) = bf16_where_exact(&twin.inputs, twin.name, delta, true);
                        runs.push(("bf16", mixed));
                    }
                    for version in versions {
                        let name = format!("{}:{version}", twin.name);
                        for (dtype, inputs) in &runs {
                            let got = chunked_stage(&name, &refs(inputs), C, operands).unwrap();
                            for (i, g) in got.into_iter().enumerate() {
                                let key = format!(
                                    "{bh}_{t}_{d_k}_{d_v}_{delta}_{operands:?}_{name}_{dtype}_{i}"
                                );
                                if let Some(g) = g {
                                    all.push((key.replace(':', "-"), g));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    all
}

/// The inputs of stage `name` that the caller gives in its own dtype (q, k, v, beta, dO, and the
/// sum rule's U' = V), by position in the stage's inputs.
fn caller_inputs(name: &str) -> &'static [usize] {
    match name {
        "wy" => &[0, 1, 2],
        "state_forward" => &[0, 2],
        "output" | "local_grad" => &[0, 1, 2],
        "state_backward" => &[0, 1, 3],
        "input_grads" => &[0, 1, 2, 3, 6, 9],
        _ => &[],
    }
}

/// The inputs of stage `name` that are only ever operands of its products (W, U', T~, dU': what
/// `operand_outputs` makes), by position.
fn operand_inputs(name: &str, delta: bool) -> &'static [usize] {
    match (name, delta) {
        ("state_forward", true) => &[1],
        ("values", _) => &[0],
        ("output", true) => &[2],
        ("state_backward", true) => &[2],
        ("input_grads", true) => &[4, 5, 6, 10],
        _ => &[],
    }
}

fn shallow(v: &[Option<Tensor>]) -> Vec<Option<Tensor>> {
    v.iter()
        .map(|t| t.as_ref().map(Tensor::shallow_clone))
        .collect()
}

fn refs(v: &[Option<Tensor>]) -> Vec<Option<&Tensor>> {
    v.iter().map(Option::as_ref).collect()
}

/// The fast kernels read bf16 inputs as they are and write bf16 where it changes nothing, under
/// `Operands::Bf16`. Each stage (`suffix` picks the kernels) runs on inputs that bf16 holds exactly,
/// once in fp32 and once with every such caller input as bf16 and every operand-only intermediate
/// rounded to bf16 (the one bf16 part each product takes of it anyway). Every output must be bit
/// for bit the same, or, where the second run writes bf16 (results in the caller's dtype), the
/// first run's value rounded to bf16. Operand-only outputs are bf16 in both runs. The shapes take
/// each way the passes copy a bf16 tile: 16-byte and 4-byte `cp.async` (d_v = 72, d_k = 30), and
/// plain loads (odd d_k and d_v).
fn bf16_inputs_read_as_they_are(device: Device, suffix: &str) {
    // (32, 16) and (144, 16): d_k and d_v multiples of 16, so B3 and (with bf16 callers' inputs) the
    // row stages run their `Whole` kernels (no element-by-element fallbacks; d_v = 16 is a partial
    // tile of the row stages' 64 columns), the row stages' `Staged` ones where d_k <= 128 (32); the
    // others run the fallbacks. The passes' blocks (one bf16 part, the
    // emulator's GPU of two SMs) are 32 value columns wide for d_v = 72, 33 and 40, 8 for d_v = 16
    // and 16 for d_v = 24. With bf16 callers' inputs and d_k, d_v multiples of 8 (the last three
    // shapes) the passes run their `Whole` kernels (whole_pass), here against the others: every
    // block width, a partial block of 8 columns (d_v = 24, 40) and keys padded past d_k (40).
    for (bh, t, d_k, d_v) in [
        (1, 130, 30, 72),
        (1, 70, 7, 33),
        (1, 70, 32, 16),
        (1, 70, 32, 24),
        (1, 70, 40, 40),
        (1, 70, 144, 16),
    ] {
        let mut x = StageInputs::new(bh, t, d_k, d_v);
        for t in [&mut x.q, &mut x.k, &mut x.v, &mut x.beta, &mut x.grad_out] {
            *t = t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        }
        bf16_case(&x, device, suffix);
    }
}

/// One shape of `bf16_inputs_read_as_they_are`, twice: with the caller's inputs and the
/// operand-only ones in bf16, and with only the operand-only ones (fp32 inputs under
/// `Operands::Bf16`, whose W, U', T~ and dU' are bf16 all the same).
fn bf16_case(x: &StageInputs, device: Device, suffix: &str) {
    for delta in [false, true] {
        for twin in chain(x, delta, Operands::Bf16) {
            for callers_too in [true, false] {
                bf16_stage(x, &twin, delta, callers_too, device, suffix);
            }
        }
    }
}

/// Stage `name`'s inputs with its operand-only ones in bf16, and (callers_too) its caller inputs
/// where bf16 holds them exactly; and how many are bf16.
fn bf16_where_exact(
    inputs: &[Option<Tensor>],
    name: &str,
    delta: bool,
    callers_too: bool,
) -> (Vec<Option<Tensor>>, usize) {
    let (caller, operand) = (caller_inputs(name), operand_inputs(name, delta));
    let mut converted = 0;
    let mixed = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_ref().map(|t| {
                let b = t.to_kind(Kind::BFloat16);
                let exact = b.to_kind(Kind::Float).equal(t);
                if operand.contains(&i) || (callers_too && caller.contains(&i) && exact) {
                    converted += 1;
                    b
                } else {
                    t.shallow_clone()
                }
            })
        })
        .collect();
    (mixed, converted)
}

fn bf16_stage(
    x: &StageInputs,
    twin: &Stage,
    delta: bool,
    callers_too: bool,
    device: Device,
    suffix: &str,
) {
    let caller = caller_inputs(twin.name);
    let operand = operand_inputs(twin.name, delta);
    let f32_inputs: Vec<Option<Tensor>> = twin
        .inputs
        .iter()
        .map(|t| t.as_ref().map(|t| t.to_device(device)))
        .collect();
    let (mixed, converted) = bf16_where_exact(&f32_inputs, twin.name, delta, callers_too);
    assert_eq!(
        converted > 0,
        (callers_too && !caller.is_empty()) || !operand.is_empty(),
        "{}: {converted} inputs in bf16",
        twin.name
    );
    if converted == 0 {
        return;
    }
    let name = format!("{}{suffix}", twin.name);
    let want = chunked_stage(&name, &refs(&f32_inputs), C, Operands::Bf16).unwrap();
    let got = chunked_stage(&name, &refs(&mixed), C, Operands::Bf16).unwrap();
    let result_kind = if callers_too {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let label = format!(
            "d_k={} d_v={} delta={delta} callers_too={callers_too} {name} output {i}",
            x.k.size()[3],
            x.v.size()[3]
        );
        let (Some(w), Some(g)) = (w, g) else {
            assert!(
                w.is_none() && g.is_none(),
                "{label}: defined on one side only"
            );
            continue;
        };
        if operand_outputs(twin.name, delta).contains(&i) {
            assert_eq!(
                w.kind(),
                Kind::BFloat16,
                "{label}: operand stored as {:?}",
                w.kind()
            );
        }
        if result_outputs(twin.name, delta).contains(&i) {
            assert_eq!(
                g.kind(),
                result_kind,
                "{label}: result written as {:?}",
                g.kind()
            );
        }
        // a bf16 output against the fp32 one rounded; a passed-through input unchanged
        assert!(
            g.equal(&w.to_kind(g.kind())),
            "{label}: differs with bf16 inputs ({:?} against {:?})",
            g.kind(),
            w.kind()
        );
    }
}

#[test]
fn emulated_fast_kernels_read_bf16_inputs() {
    let _rng = seeded(73);
    bf16_inputs_read_as_they_are(Device::Cpu, ":emulated2");
}

#[test]
fn cuda_fast_kernels_read_bf16_inputs() {
    if !cuda_or_skip("cuda_fast_kernels_read_bf16_inputs") {
        return;
    }
    let _rng = seeded(73);
    bf16_inputs_read_as_they_are(Device::Cuda(0), "");
}

/// A kernel suffix names a known stage and a known version.
#[test]
fn chunked_stage_pass_suffixes_are_checked() {
    let x = StageInputs::new(1, 10, 8, 8);
    let err = chunked_stage(
        "nope:first",
        &[Some(&x.k), Some(&x.v), Some(&x.beta)],
        C,
        Operands::Bf16,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unknown stage 'nope' in 'nope:first'"),
        "{err}"
    );
    let inputs = [Some(&x.k), None, Some(&x.v), Some(&x.s0)];
    let err = chunked_stage("state_forward:quick", &inputs, C, Operands::Bf16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown passes 'quick'"), "{err}");
    let err = chunked_stage("state_forward:emulated2", &inputs, C, Operands::Exact)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("operands 'bf16', 'bf16x2' or 'bf16x3'"),
        "{err}"
    );
}

/// Each CUDA stage on the twin's inputs of that stage, against the twin's outputs; each twice, the
/// fast kernel (where it fits) and the first version.
#[test]
fn chunked_cuda_stages_match_the_cpu_twin() {
    if !cuda_or_skip("chunked_cuda_stages_match_the_cpu_twin") {
        return;
    }
    let _rng = seeded(71);
    let cuda = Device::Cuda(0);
    let mut first_bad: Option<String> = None;
    // FWP_CHUNKED_SHAPES=small: two small shapes, the second's rows not a multiple of 4 floats (for
    // the sanitizers of scripts/gpu-check)
    let small = std::env::var("FWP_CHUNKED_SHAPES").as_deref() == Ok("small");
    let shapes: &[(i64, i64, i64, i64)] = if small {
        &[(1, 65, 32, 24), (1, 70, 30, 37)]
    } else {
        // (30, 37): rows not a multiple of 4 floats, the fast passes' 4-byte copies
        &[
            (2, 200, 64, 64),
            (1, 65, 128, 40),
            (1, 100, 30, 37),
            (2, 130, 256, 256),
            // 9 batch·heads of d_v = 128: the passes' blocks of 16 value columns (72 of them on a
            // GPU of 132 SMs; the shapes above take blocks of 8 there)
            (9, 64, 64, 128),
        ]
    };
    for (operands, tolerance) in STAGE_TOLERANCES {
        for &(bh, t, d_k, d_v) in shapes {
            let x = StageInputs::new(bh, t, d_k, d_v);
            for delta in [false, true] {
                let case = format!("BH={bh} T={t} d_k={d_k} d_v={d_v} delta={delta}");
                for twin in chain(&x, delta, operands) {
                    let inputs: Vec<Option<Tensor>> = twin
                        .inputs
                        .iter()
                        .map(|t| t.as_ref().map(|t| t.to_device(cuda)))
                        .collect();
                    let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
                    for name in [twin.name.to_string(), format!("{}:first", twin.name)] {
                        for (label, err) in
                            stage_errors(&twin, &name, &refs, operands, delta, &case)
                        {
                            eprintln!("{label}: relative RMS difference {err:.2e}");
                            let close = err < tolerance; // false for NaN too
                            if !close && first_bad.is_none() {
                                first_bad = Some(format!("{label}: {err:.2e}"));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        first_bad.is_none(),
        "first stage that differs: {}",
        first_bad.unwrap()
    );
}

/// The CUDA op against the float64 Reference of the same rounded inputs, for bf16, f16 and f32
/// inputs (the tolerances of `OP_TOLERANCES`); and run twice, bit for bit the same (no atomics, no
/// order that depends on timing).
#[test]
fn chunked_cuda_op_matches_reference() {
    if !cuda_or_skip("chunked_cuda_op_matches_reference") {
        return;
    }
    let _rng = seeded(72);
    for (h, t, d) in OP_SHAPES {
        let case = Case::new(1, h, t, d, d);
        for (kind, tolerance) in OP_TOLERANCES {
            let case = case.rounded(kind);
            for rule in [UpdateRule::Sum, UpdateRule::Delta] {
                let want = run_op(&case, rule, Kind::Double, Device::Cpu, Backend::Reference);
                let got = run_op(&case, rule, kind, Device::Cuda(0), Backend::FusedChunked);
                let again = run_op(&case, rule, kind, Device::Cuda(0), Backend::FusedChunked);
                let twin = twin_op(&case, rule, kind, Operands::for_cuda(kind).unwrap());
                for (i, name) in OUTPUT_NAMES.iter().enumerate().take(got.len()) {
                    assert!(
                        got[i].equal(&again[i]),
                        "{kind:?} H={h} T={t} d={d} {rule:?} {name}: a second run differs"
                    );
                }
                for (i, name) in OUTPUT_NAMES.iter().enumerate().take(want.len()) {
                    let (err, twin_err) = (rel_rms(&got[i], &want[i]), rel_rms(&twin[i], &want[i]));
                    eprintln!(
                        "{kind:?} H={h} T={t} d={d} {rule:?} {name}: relative RMS error {err:.2e} (CPU \
                         twin, same operand parts: {twin_err:.2e})"
                    );
                    assert!(
                        err < tolerance,
                        "{kind:?} H={h} T={t} d={d} {rule:?} {name}: relative RMS error {err:.2e} >= \
                         {tolerance:.1e}"
                    );
                }
            }
        }
    }
}

/// The CPU twin, emulating the CUDA kernels' operand parts for each dtype (`Operands::for_cuda`),
/// stays within `OP_TOLERANCES` at the GPU test's shapes: the GPU test's bounds are reachable by
/// the arithmetic. (Largest errors seen: bf16 4.9e-3, dk at T = 1000; f16 3.0e-4; f32 2.6e-7.)
#[test]
fn chunked_twin_meets_the_gpu_op_tolerances() {
    let _rng = seeded(72);
    for (h, t, d) in OP_SHAPES {
        let case = Case::new(1, h, t, d, d);
        for (kind, tolerance) in OP_TOLERANCES {
            let operands = Operands::for_cuda(kind).unwrap();
            let case = case.rounded(kind);
            for rule in [UpdateRule::Sum, UpdateRule::Delta] {
                let want = run_op(&case, rule, Kind::Double, Device::Cpu, Backend::Reference);
                let got = twin_op(&case, rule, kind, operands);
                for (i, name) in OUTPUT_NAMES.iter().enumerate().take(want.len()) {
                    let err = rel_rms(&got[i], &want[i]);
                    eprintln!("{kind:?} {operands:?} H={h} T={t} d={d} {rule:?} {name}: {err:.2e}");
                    assert!(
                        err < tolerance,
                        "{kind:?} {operands:?} H={h} T={t} d={d} {rule:?} {name}: relative RMS error \
                         {err:.2e}, bound {tolerance:.1e}"
                    );
                }
            }
        }
    }
}

/// What the op gives through the CPU twin with `operands` (the final state cast to `kind`, as
/// `fast_weight` hands it back), in the order of `run_op`.
fn twin_op(case: &Case, rule: UpdateRule, kind: Kind, operands: Operands) -> Vec<Tensor> {
    case.outputs_and_grads(rule, kind, Device::Cpu, |q, k, v, b, s0| {
        let (out, state) = fast_weight_chunked_kernel(q, k, v, b, Some(s0), C, operands).unwrap();
        (out, state.to_kind(kind))
    })
}
