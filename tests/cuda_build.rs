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
    let obj = std::env::temp_dir().join(format!("fwp-chunked-{}.o", std::process::id()));
    let output = Command::new(&nvcc)
        .current_dir(root)
        .args([
            "-c",
            "-std=c++17",
            "-Xptxas",
            "-v",
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            "kernels/chunked.cu",
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
            n >= 7,
            "{arch}: expected the 7 stage kernels in ptxas's report, found {n}:\n{text}"
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
