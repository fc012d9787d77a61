//! Checks of fwp's hand-written kernels that CI can make without a GPU, by building them with the
//! host compiler's sanitizers and running them on small shapes; each fails on any report.
//!
//! The CUDA kernels run through their CPU emulators (kernels/*_emulator.cpp,
//! kernels/cuda_on_host.h), driven by `tests/sanitized_kernels/emulated_cuda.cpp`:
//! - **races** (ThreadSanitizer): the emulators run one std::thread per CUDA thread with real
//!   barriers, so a missing `__syncthreads` or `__syncwarp`, a buffer that cp.async refills while
//!   other threads still read it (the emulator writes it at the issue), or two threads writing one
//!   shared word between barriers is a data race between std::threads;
//! - **bounds** (AddressSanitizer and UndefinedBehaviorSanitizer), the CPU's stand-in for
//!   compute-sanitizer's memcheck: a kernel that reads or writes global memory past a tensor (the T
//!   tail, a partial value tile, the padded key columns), overflows an index, or shifts or converts
//!   out of range. Shared memory past a block's dynamic allocation is caught by the emulator's own
//!   guard bytes (kernels/cuda_on_host.h) and its cp.async alignment check.
//!
//! The recurrent CPU kernels (kernels/fast_weight_cpu.cpp), every instruction-set build the CPU can
//! run, are checked for bounds the same way, driven by `tests/sanitized_kernels/cpu.cpp`: their
//! vector loads and stores against the ends of rows, tensors and their own padded buffers.
//!
//! What none of this can see: races between CUDA blocks (the emulators run blocks one after
//! another), the GPU's own ordering of global memory, and timing; nothing here checks those (on a
//! GPU, `scripts/gpu-check`'s compute-sanitizer racecheck looks for shared-memory hazards within a
//! block with the real timing). Each check skips with a notice when the compiler cannot
//! build and run a program with its sanitizer, unless FWP_REQUIRE_SANITIZERS=1 (set by `make test`),
//! which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A translation unit of a checked program: its source, relative to the repository root, and the
/// flags it needs beyond the common ones.
struct Unit {
    src: &'static str,
    flags: &'static [&'static str],
}

const fn unit(src: &'static str) -> Unit {
    Unit { src, flags: &[] }
}

/// The CUDA kernels' emulators and their driver.
const EMULATED_CUDA: &[Unit] = &[
    unit("kernels/chunked_emulator.cpp"),
    unit("kernels/chunked_first_emulator.cpp"),
    unit("kernels/fast_weight_emulator.cpp"),
    unit("kernels/sum_norm_emulator.cpp"),
    unit("kernels/ffi.cpp"),
    unit("tests/sanitized_kernels/emulated_cuda.cpp"),
];

/// The recurrent CPU kernels, built per instruction set as build.rs builds them, and their driver.
const CPU_KERNELS: &[Unit] = &[
    unit("kernels/fast_weight_cpu.cpp"),
    Unit {
        src: "kernels/fast_weight_cpu.cpp",
        flags: &["-DFWP_CPU_ISA=avx2", "-mavx2", "-mfma"],
    },
    Unit {
        src: "kernels/fast_weight_cpu.cpp",
        flags: &["-DFWP_CPU_ISA=avx512", "-mavx2", "-mfma", "-mavx512f"],
    },
    unit("tests/sanitized_kernels/cpu.cpp"),
];

/// `$CXX` (split on whitespace, so that a launcher such as `ccache g++` works), else `g++`.
fn compiler() -> Command {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let mut words = cxx.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap_or("g++"));
    cmd.args(words);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// A sanitizer the kernels are built with: its compiler flags, its runtime options, and the line
/// that starts each of its reports.
struct Sanitizer {
    name: &'static str,
    flags: &'static [&'static str],
    options: (&'static str, &'static str),
    report: &'static str,
}

const THREAD: Sanitizer = Sanitizer {
    name: "thread",
    flags: &["-fsanitize=thread"],
    options: ("TSAN_OPTIONS", "halt_on_error=0 exitcode=66"),
    report: "WARNING: ThreadSanitizer",
};

// libtorch is not instrumented: its own leaks at exit and its operator new / free pairs are not the
// kernels' faults, so leak checks and the mismatch check are off. GCC's `undefined` leaves out
// float-to-integer conversions out of range, so they are asked for. The `undefined` group aborts at
// its first report; float-cast-overflow reports and goes on, and `check` counts its reports.
const ADDRESS: Sanitizer = Sanitizer {
    name: "address-undefined",
    flags: &[
        "-fsanitize=address,undefined,float-cast-overflow",
        "-fno-sanitize-recover=undefined",
        "-fno-omit-frame-pointer",
    ],
    options: (
        "ASAN_OPTIONS",
        "detect_leaks=0 alloc_dealloc_mismatch=0 exitcode=66",
    ),
    report: "ERROR: AddressSanitizer",
};

/// Whether the compiler builds and runs a program with `san` here.
fn sanitizer_works(dir: &Path, san: &Sanitizer) -> bool {
    let src = dir.join("probe.cpp");
    std::fs::write(&src, "int main() { return 0; }\n").unwrap();
    let exe = dir.join("probe");
    let built = compiler()
        .args(san.flags)
        .arg("-o")
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
    check(
        "emulated_cuda_kernels_have_no_data_races",
        &THREAD,
        "emulated-cuda",
        EMULATED_CUDA,
    );
}

#[test]
fn emulated_cuda_kernels_stay_in_bounds() {
    check(
        "emulated_cuda_kernels_stay_in_bounds",
        &ADDRESS,
        "emulated-cuda",
        EMULATED_CUDA,
    );
}

#[test]
fn cpu_kernels_stay_in_bounds() {
    if !cfg!(target_arch = "x86_64") {
        // the instruction-set builds are x86-64's; elsewhere build.rs builds only the baseline
        eprintln!("SKIPPED cpu_kernels_stay_in_bounds: not an x86-64 machine");
        return;
    }
    check("cpu_kernels_stay_in_bounds", &ADDRESS, "cpu", CPU_KERNELS);
}

/// Builds `units` into the program `name` with `san`, runs it and fails on any report.
fn check(test: &str, san: &Sanitizer, name: &str, units: &[Unit]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // one directory per profile and sanitizer: target/tmp is shared by debug and release test builds
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sanitized-{name}-{}-{profile}", san.name));
    std::fs::create_dir_all(&dir).unwrap();
    if !sanitizer_works(&dir, san) {
        let why = format!(
            "the C++ compiler ($CXX or g++) cannot build and run a {} program",
            san.flags[0]
        );
        assert!(
            std::env::var("FWP_REQUIRE_SANITIZERS").as_deref() != Ok("1"),
            "FWP_REQUIRE_SANITIZERS=1, but {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let lib = PathBuf::from(env!("FWP_LIBTORCH_LIB"));
    let torch = lib.parent().expect("libtorch's lib/ has a parent");
    let include = |p: &str| format!("-isystem{}", torch.join(p).display());

    // the translation units, as many at a time as there are cores (each takes about 1 GB)
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut objects = Vec::new();
    let mut failures = Vec::new();
    for batch in units.chunks(cores) {
        let compiles: Vec<_> = batch
            .iter()
            .map(|unit| {
                let object = dir.join(format!(
                    "{}{}.o",
                    unit.src.replace('/', "_"),
                    unit.flags
                        .first()
                        .map_or(String::new(), |f| f.replace('=', "_"))
                ));
                let child = compiler()
                    .args(["-std=c++17", "-O1", "-g"])
                    .args(san.flags)
                    .args(unit.flags)
                    .args(["-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT"])
                    .arg(include("include"))
                    .arg(include("include/torch/csrc/api/include"))
                    .arg(format!("-I{}", root.join("kernels").display()))
                    .arg("-c")
                    .arg(root.join(unit.src))
                    .arg("-o")
                    .arg(&object)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start the C++ compiler: {e}"));
                (unit.src, object, child)
            })
            .collect();
        for (src, object, child) in compiles {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(format!("{src}:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
            objects.push(object);
        }
    }
    assert!(
        failures.is_empty(),
        "compiling with {} failed: {}",
        san.flags[0],
        failures.join("\n")
    );
    let exe = dir.join(name);
    let link = run(compiler()
        .args(san.flags)
        .args(&objects)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-ltorch_cpu", "-lc10"]));
    assert!(
        link.status.success(),
        "linking the {} check failed:\n{}",
        san.name,
        String::from_utf8_lossy(&link.stderr)
    );

    let out = run(Command::new(&exe)
        .env(san.options.0, san.options.1)
        .env("UBSAN_OPTIONS", "print_stacktrace=1")
        .env("OMP_NUM_THREADS", "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stdout}");
    let reports = stderr.matches(san.report).count() + stderr.matches("runtime error:").count();
    // the first report in full (each names the accesses, with their kernel source lines)
    let first: String = stderr.lines().take(60).collect::<Vec<_>>().join("\n");
    assert!(
        reports == 0 && out.status.success() && stdout.contains("all kernels ran"),
        "{name} under {}: {reports} reports, exit status {}; the start of its output:\n{first}",
        san.flags[0],
        out.status
    );
}
