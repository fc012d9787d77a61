//! The benchmark's machinery (src/bench, experiments/bench): FLOP model, grids, measurement
//! records, peak memory, the crossover analysis, and the binary's resume. Nothing here is timed
//! against a threshold: timings are the benchmark's to report.

use fwp::bench::memory::Meter;
use fwp::bench::summary::{crossover, memory_exponent};
use fwp::bench::{measure, Case, DType, Grid, Measurement, Op, Preset, Record, Stats};
use fwp::UpdateRule;
use tch::{Device, Kind, Tensor};

/// The CPU memory meter reads the process's resident set: tests that measure hold this lock, so
/// that no test running beside them allocates during a measurement.
static MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

fn case(op: Op, rule: Option<UpdateRule>, t: i64) -> Case {
    Case {
        op,
        rule,
        chunk: (op == Op::Chunked).then_some(16),
        batch: 1,
        heads: 2,
        t,
        d_k: 64,
        d_v: 64,
        dtype: DType::F32,
        device: "cpu".into(),
    }
}

fn stats(ms: f64) -> Stats {
    Stats {
        median_ms: ms,
        min_ms: ms,
        max_ms: ms,
    }
}

/// A record with the given fwd+bwd median time and peak bytes, without running anything.
fn record(op: Op, rule: Option<UpdateRule>, t: i64, train_ms: f64, bytes: i64) -> Record {
    let m = Measurement {
        forward: stats(train_ms / 3.0),
        train: stats(train_ms),
        forward_peak_bytes: Some(bytes / 2),
        train_peak_bytes: Some(bytes),
    };
    Record::new(case(op, rule, t), m, None)
}

#[test]
fn model_flops_follow_the_documented_model() {
    let mut c = case(Op::Fused, Some(UpdateRule::Delta), 1024);
    c.batch = 2;
    c.heads = 4;
    let n = 2.0 * 4.0 * 1024.0;
    assert_eq!(c.model_flops(), (6.0 * 4096.0 * n, 12.0 * 4096.0 * n));
    c.rule = Some(UpdateRule::Sum);
    c.op = Op::Chunked;
    assert_eq!(c.model_flops(), (4.0 * 4096.0 * n, 8.0 * 4096.0 * n));
    let s = Case {
        op: Op::Softmax,
        rule: None,
        chunk: None,
        ..c
    };
    let fwd = n * 1024.0 * 128.0;
    assert_eq!(s.model_flops(), (fwd, 2.5 * fwd));
}

#[test]
fn presets_expand_to_valid_cases() {
    let cpu = Grid::preset(Preset::Cpu).cases().unwrap();
    assert!(cpu.iter().all(|c| c.check().is_ok()));
    assert!(cpu
        .iter()
        .filter(|c| c.op == Op::Reference)
        .all(|c| c.t <= 1024));
    // The configuration docs/performance.md leads with is in the default grid.
    assert!(cpu.iter().any(|c| c.op == Op::Fused
        && c.rule == Some(UpdateRule::Delta)
        && (c.batch, c.heads, c.t, c.d_k) == (2, 4, 1024, 64)));
    let gpu = Grid::preset(Preset::Gpu).cases().unwrap();
    for c in &gpu {
        assert_eq!(
            c.batch,
            (16384 / c.t).max(1),
            "tokens per batch at T = {}",
            c.t
        );
        assert_eq!(c.heads, 16);
        assert_eq!(c.device, "cuda");
    }
    assert!(gpu.iter().any(|c| c.t == 32768 && c.dtype == DType::Bf16));
    // the chunked CUDA kernels are timed on bf16 and on f32 inputs, as the recurrent ones
    for dtype in [DType::Bf16, DType::F32] {
        for op in [Op::FusedChunked, Op::Fused] {
            assert!(
                gpu.iter()
                    .any(|c| c.op == op && c.dtype == dtype && c.t == 16384),
                "{op} {dtype} at T = 16k"
            );
        }
    }
}

#[test]
fn bad_grids_and_cases_are_errors() {
    let mut g = Grid::preset(Preset::Quick);
    g.repeats = 0;
    assert!(g.cases().unwrap_err().to_string().contains("repeats"));
    let mut g = Grid::preset(Preset::Quick);
    g.t.clear();
    assert!(g.cases().unwrap_err().to_string().contains("no t values"));
    let mut g = Grid::preset(Preset::Quick);
    g.t = vec![0];
    assert!(g.cases().unwrap_err().to_string().contains("t must be"));
    let mut c = case(Op::Softmax, Some(UpdateRule::Sum), 8);
    assert!(c
        .check()
        .unwrap_err()
        .to_string()
        .contains("no update rule"));
    c = case(Op::Fused, None, 8);
    assert!(c
        .check()
        .unwrap_err()
        .to_string()
        .contains("needs an update rule"));
    c = case(Op::Fused, Some(UpdateRule::Sum), 8);
    c.chunk = Some(4);
    assert!(c.check().unwrap_err().to_string().contains("chunk size"));
    c = case(Op::Fused, Some(UpdateRule::Sum), 8);
    c.device = "tpu".into();
    assert!(measure(&c, 0, 1).unwrap_err().to_string().contains("tpu"));
    assert!("fast"
        .parse::<Op>()
        .unwrap_err()
        .to_string()
        .contains("fast"));
    assert!("f8"
        .parse::<DType>()
        .unwrap_err()
        .to_string()
        .contains("f8"));
}

#[test]
fn quick_grid_measures_every_case() {
    let _alone = measuring();
    let g = Grid::preset(Preset::Quick);
    let cases = g.cases().unwrap();
    // 2 T x (reference, chunked, fused, fused-chunked) x 2 rules + 2 softmax
    assert_eq!(cases.len(), 18);
    for c in cases {
        let m = measure(&c, 0, 3).unwrap();
        for s in [m.forward, m.train] {
            assert!(
                s.min_ms > 0.0 && s.min_ms <= s.median_ms && s.median_ms <= s.max_ms,
                "{s:?}"
            );
        }
        assert!(
            m.train_peak_bytes.is_some(),
            "{}: no CPU peak memory",
            c.label()
        );
        let r = Record::new(c.clone(), m.clone(), None);
        let (f, b) = c.model_flops();
        assert!((r.gflops_train - (f + b) / (m.train.median_ms * 1e-3) / 1e9).abs() < 1e-9);
        assert!(
            (r.head_tokens_per_s_forward - c.head_tokens() / (m.forward.median_ms * 1e-3)).abs()
                < 1e-6
        );
        assert_eq!(r.peak_fraction_train, None);
    }
}

#[test]
fn cpu_meter_sees_an_allocation() {
    let _alone = measuring();
    let meter = Meter::start(Device::Cpu).unwrap();
    let x = Tensor::ones([16 << 20], (Kind::Float, Device::Cpu)); // 64 MiB, written
    let peak = meter.peak().unwrap();
    drop(x);
    let mib = peak as f64 / (1 << 20) as f64;
    assert!(
        (63.0..96.0).contains(&mib),
        "peak {mib:.1} MiB for a 64 MiB tensor"
    );
    // After the tensor is gone, a new meter starts from the lower resident size.
    let meter = Meter::start(Device::Cpu).unwrap();
    let small = Tensor::ones([1 << 18], (Kind::Float, Device::Cpu)); // 1 MiB
    let peak = meter.peak().unwrap() as f64 / (1 << 20) as f64;
    drop(small);
    assert!(peak < 8.0, "peak {peak:.1} MiB for a 1 MiB tensor");
}

#[test]
fn fused_keeps_no_state_per_step_but_reference_does() {
    let _alone = measuring();
    // Per head-token, a stored state costs d_k d_v 4 bytes (16 KiB at d = 64).
    let state = 64.0 * 64.0 * 4.0;
    for rule in [UpdateRule::Sum, UpdateRule::Delta] {
        let per_token = |op| {
            let c = case(op, Some(rule), 512);
            let m = measure(&c, 0, 1).unwrap();
            m.train_peak_bytes.unwrap() as f64 / c.head_tokens()
        };
        let fused = per_token(Op::Fused);
        let reference = per_token(Op::Reference);
        assert!(
            fused < 0.25 * state,
            "{rule:?}: fused keeps {fused:.0} bytes per head-token"
        );
        assert!(
            reference > state,
            "{rule:?}: reference keeps only {reference:.0} bytes per head-token"
        );
    }
}

#[test]
fn crossover_is_where_a_lasting_lead_starts() {
    let soft = [10.0, 20.0, 40.0, 80.0];
    let ts = [256, 512, 1024, 2048];
    let series = |times: [f64; 4]| -> Vec<Record> {
        ts.iter()
            .zip(times)
            .map(|(&t, ms)| record(Op::Fused, Some(UpdateRule::Sum), t, ms, 1000 * t))
            .collect()
    };
    let softmax: Vec<Record> = ts
        .iter()
        .zip(soft)
        .map(|(&t, ms)| record(Op::Softmax, None, t, ms, 10 * t * t))
        .collect();
    let s_refs: Vec<&Record> = softmax.iter().collect();
    let of = |r: &Record| r.measurement.train.median_ms;
    let check = |times: [f64; 4], want: Option<i64>| {
        let rs = series(times);
        let refs: Vec<&Record> = rs.iter().collect();
        assert_eq!(crossover(&refs, &s_refs, of), want, "{times:?}");
    };
    check([20.0, 25.0, 30.0, 35.0], Some(1024));
    check([5.0, 10.0, 20.0, 40.0], Some(256));
    check([5.0, 30.0, 20.0, 40.0], Some(1024)); // faster at 256, but the lead does not last
    check([20.0, 40.0, 80.0, 160.0], None);
    // Linear memory has exponent 1, quadratic 2.
    let lin = series([1.0; 4]);
    let refs: Vec<&Record> = lin.iter().collect();
    assert!((memory_exponent(&refs).unwrap() - 1.0).abs() < 1e-9);
    assert!((memory_exponent(&s_refs).unwrap() - 2.0).abs() < 1e-9);
}

#[test]
fn bench_binary_writes_reports_and_resumes() {
    let dir = std::env::temp_dir().join(format!("fwp-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["--preset", "quick", "--ops", "fused,softmax", "--out"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("6 cases to run (0 already"), "{stdout}");
    let lines = std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 6);
    for f in [
        "peak.json",
        "grid.json",
        "table.md",
        "time-cpu-f32-d8.png",
        "memory-cpu-f32-d8.svg",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(
        table.contains("fused delta") && table.contains("softmax"),
        "{table}"
    );
    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(stdout.contains("0 cases to run (6 already"), "{stdout}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--preset", "quick", "--rules", "hebbian", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hebbian"));
    std::fs::remove_dir_all(&dir).unwrap();
}
