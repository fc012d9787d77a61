//! A data-race check of every CUDA kernel's source, which CI can make without a GPU: the CPU
//! emulators (kernels/*_emulator.cpp, kernels/cuda_on_host.h) run one std::thread per CUDA thread
//! with real barriers, so a missing `__syncthreads` or `__syncwarp`, a buffer that cp.async refills
//! while other threads still read it (the emulator writes it at the issue), or two threads writing
//! one shared word between barriers is a data race between std::threads. This test builds the
//! emulators and `tests/emulator_races/driver.cpp` (which runs each kernel family once, on small
//! shapes) with the host compiler's ThreadSanitizer, runs it, and fails on any report.
//!
//! What it cannot see: races between blocks (the emulators run blocks one after another) and the
//! GPU's own ordering of global memory; `scripts/gpu-check`'s compute-sanitizer covers those on a
//! GPU. Skips with a notice when the compiler cannot build a ThreadSanitizer program.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The emulators and what they need, relative to the repository root.
const SOURCES: [&str; 6] = [
    "kernels/chunked_emulator.cpp",
    "kernels/chunked_first_emulator.cpp",
    "kernels/fast_weight_emulator.cpp",
    "kernels/sum_norm_emulator.cpp",
    "kernels/ffi.cpp",
    "tests/emulator_races/driver.cpp",
];

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".to_string())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Whether the compiler builds and runs a ThreadSanitizer program here.
fn tsan_works(dir: &Path) -> bool {
    let src = dir.join("probe.cpp");
    std::fs::write(&src, "int main() { return 0; }\n").unwrap();
    let exe = dir.join("probe");
    let built = Command::new(compiler())
        .args(["-fsanitize=thread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    matches!(built, Ok(o) if o.status.success())
        && Command::new(&exe)
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn emulated_cuda_kernels_have_no_data_races() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emulator-races");
    std::fs::create_dir_all(&dir).unwrap();
    if !tsan_works(&dir) {
        eprintln!(
            "SKIPPED emulated_cuda_kernels_have_no_data_races: {} cannot build and run a \
             -fsanitize=thread program",
            compiler()
        );
        return;
    }
    let lib = PathBuf::from(env!("FWP_LIBTORCH_LIB"));
    let torch = lib.parent().expect("libtorch's lib/ has a parent");
    let include = |p: &str| format!("-isystem{}", torch.join(p).display());

    // every translation unit at once: the compiles are independent
    let compiles: Vec<_> = SOURCES
        .iter()
        .map(|src| {
            let object = dir.join(format!("{}.o", src.replace('/', "_")));
            let child = Command::new(compiler())
                .args(["-std=c++17", "-O1", "-g", "-fsanitize=thread"])
                .args(["-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT"])
                .arg(include("include"))
                .arg(include("include/torch/csrc/api/include"))
                .arg(format!("-I{}", root.join("kernels").display()))
                .arg("-c")
                .arg(root.join(src))
                .arg("-o")
                .arg(&object)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", compiler()));
            (src, object, child)
        })
        .collect();
    let mut objects = Vec::new();
    for (src, object, child) in compiles {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "compiling {src} with ThreadSanitizer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        objects.push(object);
    }
    let exe = dir.join("driver");
    let link = run(Command::new(compiler())
        .arg("-fsanitize=thread")
        .args(&objects)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ltorch_cpu", "-lc10"]));
    assert!(
        link.status.success(),
        "linking the race check failed:\n{}",
        String::from_utf8_lossy(&link.stderr)
    );

    let out = run(Command::new(&exe)
        .env("TSAN_OPTIONS", "halt_on_error=0 exitcode=66")
        .env("OMP_NUM_THREADS", "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stdout}");
    let races = stderr.matches("WARNING: ThreadSanitizer").count();
    // the first report in full (each names the two accesses, with their kernel source lines)
    let first: String = stderr.lines().take(60).collect::<Vec<_>>().join("\n");
    assert!(
        races == 0 && out.status.success() && stdout.contains("all kernels ran"),
        "the emulated CUDA kernels: {races} ThreadSanitizer reports, exit status {}; the start of \
         its output:\n{first}",
        out.status
    );
}
