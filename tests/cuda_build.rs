//! Compile-time checks of the chunked CUDA kernels (kernels/chunked.cu), which CI can make without a
//! GPU: `nvcc -Xptxas -v` for sm_80 and sm_90 reports no register spills and static shared memory
//! within the 48 KiB a block gets without opting in, for every kernel. Skips with a notice when no
//! nvcc is found (the same places build.rs looks).

use std::path::{Path, PathBuf};
use std::process::Command;

/// nvcc as build.rs finds it: $NVCC, the pip cuda-toolkit wheel next to torch, then PATH.
fn nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let wheel = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if wheel.is_file() {
                return Some(wheel);
            }
        }
    }
    let on_path = Command::new("nvcc").arg("--version").output().ok()?;
    on_path.status.success().then(|| PathBuf::from("nvcc"))
}

/// Per (kernel, arch): (spill store bytes, spill load bytes, static shared memory bytes).
fn ptxas_report(text: &str) -> Vec<(String, String, u64, u64, u64)> {
    let number_before = |line: &str, unit: &str| -> Option<u64> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut spills = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            let arch = rest
                .split("for '")
                .nth(1)
                .unwrap_or_default()
                .trim_end_matches('\'')
                .to_string();
            current = Some((name, arch));
        } else if line.contains("spill stores") {
            spills = (
                number_before(line, "bytes spill stores").expect("spill stores"),
                number_before(line, "bytes spill loads").expect("spill loads"),
            );
        } else if line.contains("Used") && line.contains("registers") {
            if let Some((name, arch)) = current.take() {
                let smem = number_before(line, "bytes smem").unwrap_or(0);
                out.push((name, arch, spills.0, spills.1, smem));
            }
        }
    }
    out
}

#[test]
fn chunked_cuda_kernels_have_no_spills_and_fit_shared_memory() {
    let Some(nvcc) = nvcc() else {
        eprintln!(
            "SKIPPED chunked_cuda_kernels_have_no_spills_and_fit_shared_memory: no nvcc found"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // the stage kernels (7) and the fast ones: the passes (forward and backward for 3 key tiles x
    // (3 part counts + blocks of 16 and 8 value columns with one part): 30), the row stages (3 stages
    // x (3 part counts + Whole): 12), the WY stage (3 part counts) and the input gradients (2 rules x
    // 3 part counts + 2 Whole: 8)
    for (source, kernels) in [("kernels/chunked.cu", 7), ("kernels/chunked_passes.cu", 53)] {
        check_ptxas_report(&nvcc, root, source, kernels);
    }
}

/// build.rs's nvcc flags (it compiles the kernels with these, plus --device-c since there are several
/// .cu files, and without -G in every profile), or its defaults where built without CUDA.
fn build_flags() -> Vec<&'static str> {
    option_env!("FWP_NVCC_FLAGS")
        .unwrap_or("-std=c++17 -lineinfo")
        .split_whitespace()
        .collect()
}

/// Compiles `source` as build.rs does, for sm_80 and sm_90 and checks that ptxas reports at least `kernels` kernels
/// per arch, none spilling, each within 48 KiB of static shared memory.
fn check_ptxas_report(nvcc: &Path, root: &Path, source: &str, kernels: usize) {
    let obj = std::env::temp_dir().join(format!("fwp-chunked-{}.o", std::process::id()));
    let output = Command::new(nvcc)
        .current_dir(root)
        .args(["-c", "--device-c"])
        .args(build_flags())
        .args([
            "-Xptxas",
            "-v",
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            source,
            "-o",
        ])
        .arg(&obj)
        .output()
        .expect("run nvcc");
    std::fs::remove_file(&obj).ok();
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "nvcc failed:\n{text}");
    let report = ptxas_report(&text);
    for arch in ["sm_80", "sm_90"] {
        let n = report.iter().filter(|r| r.1 == arch).count();
        assert!(
            n >= kernels,
            "{arch}: expected the {kernels} kernels of {source} in ptxas's report, found {n}:\n{text}"
        );
    }
    for (name, arch, stores, loads, smem) in &report {
        assert_eq!(
            (*stores, *loads),
            (0, 0),
            "{name} ({arch}) spills registers:\n{text}"
        );
        assert!(
            *smem <= 48 * 1024,
            "{name} ({arch}): {smem} bytes of static shared memory > 48 KiB"
        );
    }
}

/// Opt-in shared memory per block of an A100 (sm_80) and an H100 / H200 (sm_90), in bytes.
const SM80: i64 = 163 * 1024;
const SM90: i64 = 227 * 1024;

/// Whether `test` must skip because this build has no CUDA kernels (it says so).
fn skipped_without_cuda(test: &str) -> bool {
    let without = fwp::ops::chunked_pass_shared_bytes(64, false, true, false, 1).is_none();
    if without {
        eprintln!("SKIPPED {test}: built without CUDA");
    }
    without
}

/// The fast passes' dynamic shared memory (kernels/chunked_passes.cuh) at the goal's key widths. With
/// fp32 inputs every pass fits one stage within an A100's opt-in limit (163 KiB) at d_k <= 128, and
/// d_k = 64 fits two within an H100 / H200's (227 KiB). With bf16 inputs (bf16 tiles take half the
/// space) every pass fits two stages within an A100's at d_k <= 128 and one at d_k = 256. Prints the
/// table for the docs.
#[test]
fn chunked_fast_passes_fit_shared_memory() {
    if skipped_without_cuda("chunked_fast_passes_fit_shared_memory") {
        return;
    }
    for bf16 in [false, true] {
        for d_k in [64, 128, 256] {
            for backward in [false, true] {
                for delta in [false, true] {
                    let bytes_in = |bf16, stages| {
                        fwp::ops::chunked_pass_shared_bytes(d_k, backward, delta, bf16, stages)
                            .unwrap()
                    };
                    let bytes = |stages| bytes_in(bf16, stages);
                    let case = format!(
                        "{} d_k={d_k} {} {}",
                        if bf16 { "bf16" } else { "fp32" },
                        if backward { "backward" } else { "forward" },
                        if delta { "delta" } else { "sum" }
                    );
                    eprintln!("{case}: 1 stage {} B, 2 stages {} B", bytes(1), bytes(2));
                    if !bf16 && d_k <= 128 {
                        assert!(bytes(1) <= SM80, "{case}: one stage does not fit sm_80");
                    }
                    if !bf16 && d_k == 64 {
                        assert!(bytes(2) <= SM90, "{case}: two stages do not fit sm_90");
                    }
                    if bf16 {
                        assert!(
                            bytes(1) < bytes_in(false, 1),
                            "{case}: bf16 tiles take no less space"
                        );
                        let stages = if d_k <= 128 { 2 } else { 1 };
                        assert!(
                            bytes(stages) <= SM80,
                            "{case}: {stages} stages do not fit sm_80"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        fwp::ops::chunked_pass_shared_bytes(257, false, true, false, 1),
        None
    );
}

/// The launcher's choice between one and two chunks in flight for a grid (`chunked_pass_stages_for_grid`):
/// one where it lets the grid run in fewer waves of blocks, else the most that fit. On an H200
/// (132 SMs, 228 KiB of shared memory per SM, 1 KiB of it reserved per block), counting blocks
/// per SM by shared memory alone, which decides in the cases below (the registers of these
/// kernels, 139 to 164 a thread with one part and 32 value columns, allow three blocks per SM),
/// with the goal's shapes (B·T = 16k tokens, 16 heads, bf16, delta rule, 32 value columns per
/// block): at d = 128 and T = 4k the backward pass's 256 blocks take one SM each with two stages
/// (two waves) and share the SMs two by two with one (one wave), so it runs one; the forward pass
/// fits two blocks per SM with two stages and keeps them; at T = 1k, 1024 blocks, both run one.
#[test]
fn chunked_pass_stages_follow_the_grid() {
    if skipped_without_cuda("chunked_pass_stages_follow_the_grid") {
        return;
    }
    let rule = fwp::ops::chunked_pass_stages_for_grid;
    const SMS: i64 = 132;
    let per_sm = |d_k, backward, stages| {
        let bytes = fwp::ops::chunked_pass_shared_bytes(d_k, backward, true, true, stages).unwrap();
        (228 * 1024) / (bytes + 1024)
    };
    let runs = |d_k: i64, backward, batch_heads: i64| {
        let blocks = batch_heads * ((d_k + 31) / 32);
        let (one, two) = (per_sm(d_k, backward, 1), per_sm(d_k, backward, 2));
        rule(2, blocks, SMS, one, two).unwrap()
    };
    assert_eq!((per_sm(128, true, 1), per_sm(128, true, 2)), (2, 1));
    assert_eq!(runs(128, true, 64), 1, "d = 128, T = 4k, backward");
    assert_eq!(
        runs(128, true, 256),
        1,
        "d = 128, T = 1k, backward: 4 waves, not 8"
    );
    assert_eq!(per_sm(128, false, 2), 2);
    assert_eq!(
        runs(128, false, 64),
        2,
        "d = 128, T = 4k, forward: one wave either way"
    );
    assert_eq!(per_sm(128, false, 1), 3);
    assert_eq!(
        runs(128, false, 256),
        1,
        "d = 128, T = 1k, forward: 3 waves, not 4"
    );
    assert_eq!(
        runs(64, true, 256),
        2,
        "d = 64, T = 1k, backward: two waves either way"
    );
    // A grid that one wave holds either way keeps two stages; fewer that fit stay as they are.
    assert_eq!(rule(2, SMS, SMS, 2, 1), Some(2));
    assert_eq!(rule(2, SMS + 1, SMS, 2, 1), Some(1));
    assert_eq!(rule(2, 3 * SMS, SMS, 3, 2), Some(1));
    assert_eq!(rule(2, 4 * SMS, SMS, 3, 2), Some(2));
    assert_eq!(rule(1, 1000, SMS, 4, 2), Some(1));
    assert_eq!(rule(0, 1000, SMS, 4, 2), Some(0));
    // Where the device's numbers are missing (0), the most that fit.
    assert_eq!(rule(2, 1000, 0, 2, 1), Some(2));
    assert_eq!(rule(2, 1000, SMS, 0, 1), Some(2));
}

/// The launcher's choice of chunks in flight (`chunked_pass_stages`), which `fwp info` prints per
/// GPU: the most stages whose shared memory fits the limit, 0 where none does, `None` above
/// d_k = 256; at the limits of A100 and H100 / H200 as `chunked_fast_passes_fit_shared_memory`
/// states them.
#[test]
fn chunked_pass_stages_follow_the_shared_memory_limit() {
    if skipped_without_cuda("chunked_pass_stages_follow_the_shared_memory_limit") {
        return;
    }
    let stages = fwp::ops::chunked_pass_stages;
    let bytes = |d_k, backward, bf16, s| {
        fwp::ops::chunked_pass_shared_bytes(d_k, backward, true, bf16, s).unwrap()
    };
    for d_k in [16, 64, 100, 128, 200, 256] {
        for backward in [false, true] {
            for bf16 in [false, true] {
                let (one, two) = (bytes(d_k, backward, bf16, 1), bytes(d_k, backward, bf16, 2));
                assert!(one < two, "d_k {d_k}: two stages take more than one");
                for (limit, want) in [(one - 1, 0), (one, 1), (two - 1, 1), (two, 2)] {
                    assert_eq!(
                        stages(d_k, backward, true, bf16, limit),
                        Some(want),
                        "d_k {d_k} backward {backward} bf16 {bf16}, limit {limit} B"
                    );
                }
            }
        }
    }
    assert_eq!(stages(64, false, true, false, SM90), Some(2));
    assert_eq!(stages(64, true, true, false, SM90), Some(2));
    assert_eq!(stages(128, true, true, false, SM80), Some(1));
    assert_eq!(stages(128, true, true, true, SM80), Some(2));
    assert_eq!(stages(256, true, true, true, SM80), Some(1));
    assert_eq!(stages(257, false, true, false, SM90), None);
    let plan = fwp::info::pass_plan(SM90).unwrap();
    println!("H100 / H200: {plan}");
    assert!(
        plan.starts_with("d_k <= 64: fp32 2/2, bf16 2/2; d_k <= 128: "),
        "{plan}"
    );
    assert!(plan.contains("d_k <= 256: "), "{plan}");
}
