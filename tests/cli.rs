//! The binaries answer bad arguments with an error and exit status 1 (2 for what clap itself
//! refuses), never a panic (101), a hang or a C++ backtrace.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `bin` with `args`; asserts exit status 1 or 2 and that stderr mentions every word of `words`.
fn fails(bin: &str, args: &[&str], words: &[&str]) {
    let out = Command::new(bin).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{bin} {args:?}: {stderr}");
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: exit status {:?}: {stderr}",
        out.status.code()
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("frame #"),
        "{stderr}"
    );
    for w in words {
        assert!(
            stderr.contains(w),
            "{args:?}: stderr should mention {w:?}: {stderr}"
        );
    }
}

#[test]
fn retrieval_refuses_impossible_sweeps() {
    let out = scratch("retrieval");
    let o = out.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_retrieval");
    fails(
        bin,
        &["--s", "1:9000000000000000000:1", "--out", o],
        &["--s", "9000000000000000000 sizes"],
    );
    fails(
        bin,
        &["--max-steps", "0", "--out", o],
        &["max_steps", ">= 1"],
    );
    fails(
        bin,
        &[
            "--variants",
            "sum:favor:4000000000",
            "--d-key",
            "64",
            "--s",
            "5",
            "--out",
            o,
        ],
        &["favor_projection", "[4000000000, 64]", "953.7 GiB"],
    );
    fails(
        bin,
        &["--variants", "softmax", "--s", "50000000", "--out", o],
        &["key_embedding", "[50000000, 110000000]", "PiB"],
    );
    fails(bin, &["--backend", "chunked:0", "--out", o], &["chunked:N"]);
    // a results file that is a directory is named
    std::fs::create_dir_all(out.join("dir/results.jsonl")).unwrap();
    fails(
        bin,
        &["--report-only", "--out", out.join("dir").to_str().unwrap()],
        &["results.jsonl", "directory"],
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn demo_refuses_batches_it_cannot_build() {
    let bin = env!("CARGO_BIN_EXE_demo");
    fails(bin, &["--batch", "0"], &["--batch", ">= 1"]);
    fails(
        bin,
        &["--pairs", "20", "--symbols", "4"],
        &["--pairs 20", "--symbols 4"],
    );
    fails(
        bin,
        &["--queries", "9", "--pairs", "2"],
        &["--queries 9", "--pairs 2"],
    );
    fails(bin, &["--variant", "add:linear"], &["add"]);
}

#[test]
fn lm_names_missing_paths() {
    let bin = env!("CARGO_BIN_EXE_lm");
    fails(
        bin,
        &["report", "--runs", "/nonexistent"],
        &["/nonexistent"],
    );
    fails(
        bin,
        &["eval", "--run", "/nonexistent/run"],
        &["/nonexistent/run", "checkpoint"],
    );
}

#[test]
fn translate_names_bad_paths_and_arguments() {
    let bin = env!("CARGO_BIN_EXE_translate");
    let dir = scratch("translate");
    let run = dir.join("run");
    let r = run.to_str().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mt");
    for cmd in ["eval", "decode", "speed", "export"] {
        fails(
            bin,
            &[cmd, "--run", "/nonexistent/run"],
            &["/nonexistent/run", "no checkpoint"],
        );
    }
    fails(
        bin,
        &["train", "--run", r, "--resume"],
        &[r, "no checkpoint"],
    );
    fails(
        bin,
        &["train", "--run", r, "--variant", "softmax"],
        &["--data is required"],
    );
    fails(
        bin,
        &["train", "--data", "/nonexistent", "--run", r],
        &["/nonexistent", "make data-mt"],
    );
    fails(
        bin,
        &["train", "--data", fixture, "--run", r, "--steps", "0"],
        &["steps", ">= 1"],
    );
    fails(
        bin,
        &[
            "train",
            "--data",
            fixture,
            "--run",
            r,
            "--variant",
            "add:linear",
        ],
        &["add"],
    );
    fails(
        bin,
        &["train", "--data", fixture, "--run", r, "--preset", "huge"],
        &["huge", "tiny, base, big"],
    );
    // a resumed run keeps its saved configuration
    fails(
        bin,
        &["train", "--run", r, "--resume", "--separate-embeddings"],
        &["--separate-embeddings", "--resume"],
    );
    fails(
        bin,
        &["prepare", "--db", "/nonexistent.db", "--out", r],
        &["/nonexistent.db"],
    );
    fails(
        bin,
        &["report", "--runs", "/nonexistent"],
        &["/nonexistent"],
    );
    // files of different lengths are not scored
    let (train_en, valid_de) = (format!("{fixture}/train.en"), format!("{fixture}/valid.de"));
    fails(
        bin,
        &["bleu", "--hyp", &train_en, "--reference", &valid_de],
        &["12 hypotheses for 3 references"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An FWP_CPU_ISA the kernels do not know is an error that names the variable and the choices,
/// reported by `fwp info` and by a run that needs the CPU kernels, never a crash.
#[test]
fn an_unknown_cpu_kernel_build_is_refused() {
    let bin = env!("CARGO_BIN_EXE_fwp");
    let info = Command::new(bin)
        .arg("info")
        .env("FWP_CPU_ISA", "sse9")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success()
            && text.contains("CPU kernels: ")
            && text.contains("expected generic, avx2 or avx512"),
        "{text}"
    );
    let out = Command::new(bin)
        .args(["selftest", "--device", "cpu"])
        .env("FWP_CPU_ISA", "sse9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("FWP_CPU_ISA") && stderr.contains("'sse9'") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // without the variable, info names the build that runs
    let info = Command::new(bin)
        .arg("info")
        .env_remove("FWP_CPU_ISA")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        ["generic", "avx2", "avx512"]
            .iter()
            .any(|isa| text.contains(&format!("CPU kernels: {isa}\n"))),
        "{text}"
    );
}

/// scripts/cpu-kernel-ab builds the CPU kernels of two revisions and times them against each
/// other: with the working tree on both sides its two builds agree bit for bit on every result,
/// and bad arguments (a base with another kernel interface among them) are refused by name
/// before anything is built.
#[test]
fn the_cpu_kernel_ab_script_runs_and_refuses_bad_arguments() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cpu-kernel-ab");
    fails(
        "bash",
        &[script, "--rule", "gated"],
        &["--rule must be delta or sum"],
    );
    fails("bash", &[script, "--d", "0"], &["positive integers", "0"]);
    fails(
        "bash",
        &[script, "--isa", "sse9"],
        &["--isa must be", "sse9"],
    );
    fails(
        "bash",
        &[script, "--base", "no-such-rev"],
        &["--base no-such-rev"],
    );
    fails("bash", &[script, "--repeats"], &["--repeats needs a value"]);
    // a base whose backward replayed chunks (before the residuals): another interface
    fails(
        "bash",
        &[script, "--base", "902b2eb"],
        &["902b2eb", "predates"],
    );
    let args = "--base . --isa generic --d 20 --t 70 --bh 2 --repeats 2";
    let run = Command::new("bash")
        .arg(script)
        .args(args.split(' '))
        .output();
    let out = run.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diffs = stdout
        .lines()
        .find_map(|l| l.split_once("relative to the largest value: "))
        .unwrap_or_else(|| panic!("no differences reported: {stdout}"))
        .1;
    let values: Vec<&str> = diffs
        .split(", ")
        .map(|pair| pair.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(values.len(), 7, "{stdout}");
    assert!(values.iter().all(|v| *v == "0.0e+00"), "{stdout}");
    assert!(stdout.contains("base / head at the minimum"), "{stdout}");
}

/// scripts/gpu-kernel-ab builds a variant of the fast chunked kernels as a library PyTorch loads,
/// for timing on a GPU: without a patch it builds the working tree's kernels, none of whose
/// 1-part instantiations spills; bad arguments are refused by name before anything is built.
#[test]
fn the_gpu_kernel_ab_script_builds_and_refuses_bad_arguments() {
    // it takes the CUDA objects of the release build
    if cfg!(debug_assertions) || fwp::info::cuda_archs().is_empty() {
        println!("SKIPPED: gpu-kernel-ab takes a release build with CUDA");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-kernel-ab");
    fails("bash", &[script], &["usage"]);
    fails("bash", &[script, "a/b"], &["NAME must be", "a/b"]);
    fails(
        "bash",
        &[script, "x", "no-such.patch"],
        &["no patch file no-such.patch"],
    );
    let name = format!("cli-test-{}", std::process::id());
    let out = Command::new("bash").args([script, &name]).output().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("gpu-kernel-ab")
        .join(&name);
    let built = dir.join("libfwp_torch.so").is_file();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && built,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kernels: Vec<&str> = stdout.lines().filter(|l| l.contains("registers")).collect();
    for kernel in [
        "wy_stage",
        "row_stage",
        "input_grads_stage",
        "state_forward_pass",
        "state_backward_pass",
    ] {
        assert!(
            kernels.iter().any(|l| l.starts_with(kernel)),
            "{kernel}: {stdout}"
        );
    }
    assert!(
        kernels.iter().all(|l| l.contains(" 0 bytes spill stores")),
        "{stdout}"
    );
}

#[test]
fn every_binary_names_a_bad_keep_freed_memory_setting() {
    for bin in [
        env!("CARGO_BIN_EXE_retrieval"),
        env!("CARGO_BIN_EXE_lm"),
        env!("CARGO_BIN_EXE_translate"),
        env!("CARGO_BIN_EXE_bench"),
        env!("CARGO_BIN_EXE_demo"),
    ] {
        let out = Command::new(bin)
            .arg("--help")
            .env("FWP_KEEP_FREED_MEMORY", "yes")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {stderr}");
        assert!(
            stderr.contains("FWP_KEEP_FREED_MEMORY must be 0 (off) or 1 (on), got \"yes\""),
            "{bin}: {stderr}"
        );
        for on_or_off in ["0", "1"] {
            let out = Command::new(bin)
                .arg("--help")
                .env("FWP_KEEP_FREED_MEMORY", on_or_off)
                .output()
                .unwrap();
            assert!(out.status.success(), "{bin} with {on_or_off}: {out:?}");
        }
    }
}
