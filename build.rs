//! Build script: links libtorch so CUDA is found at run time, compiles the C++ ops in `kernels/`
//! against the libtorch headers, and compiles the CUDA sources with nvcc when nvcc is present.
//!
//! libtorch comes from torch-sys (`DEP_TCH_LIBTORCH_LIB`, set by its `links = "tch"` key).
//! nvcc is looked up as `$NVCC`, then the pip `cuda-toolkit` wheel next to torch
//! (`site-packages/nvidia/cu13/bin/nvcc`, installed by `make`), then `nvcc` on `PATH`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// CUDA targets: real code for Ampere and Hopper, plus PTX for later GPUs.
const CUDA_GENCODE: &[(&str, &str)] = &[
    ("compute_80", "sm_80"),
    ("compute_90", "sm_90"),
    ("compute_90", "compute_90"),
];

/// nvcc's flags for every .cu file besides the targets (cc adds -O, -Xcompiler -fPIC and, for more
/// than one file, --device-c).
const NVCC_FLAGS: &[&str] = &["-std=c++17", "-lineinfo"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fwp_cuda)");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=FWP_NO_CUDA");

    let lib_dir = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB; is libtorch found?"),
    );
    let torch_root = lib_dir
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    // As system headers: libtorch's own warnings stay out of our build output.
    let includes: Vec<String> = [
        torch_root.join("include"),
        torch_root.join("include/torch/csrc/api/include"),
    ]
    .iter()
    .map(|p| format!("-isystem{}", p.display()))
    .collect();

    // The same trick as tch: keep libtorch.so (and through it libtorch_cuda.so) in the link even
    // though Rust code references no symbol of it directly, or CUDA is reported unavailable; and an
    // rpath, so that binaries find libtorch without LD_LIBRARY_PATH.
    let mut link_args = vec![
        "-Wl,--no-as-needed".to_string(),
        format!("-Wl,-rpath,{}", lib_dir.display()),
        "-ltorch".to_string(),
    ];
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    // For tests that build C++ against the same libtorch (tests/sanitized_kernels.rs).
    println!("cargo:rustc-env=FWP_LIBTORCH_LIB={}", lib_dir.display());

    let cu_sources = sources("kernels", "cu");
    let cpp_sources = sources("kernels", "cpp");
    // The directory too: a kernel file added or removed is noticed.
    println!("cargo:rerun-if-changed=kernels");
    for f in sources("kernels", "h")
        .iter()
        .chain(&sources("kernels", "inc"))
        .chain(&cu_sources)
        .chain(&cpp_sources)
    {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let nvcc = if env::var_os("FWP_NO_CUDA").is_some() {
        None
    } else {
        find_nvcc(&torch_root)
    };
    let cuda_include = match &nvcc {
        Some(nvcc) => {
            let (include, runtime_dir) = build_cuda(nvcc, &cu_sources);
            if let Some(dir) = runtime_dir {
                link_args.push(format!("-Wl,-rpath,{}", dir.display()));
            }
            // kernels/cuda_memory.cpp reads PyTorch's CUDA allocator (libc10_cuda).
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            Some(include)
        }
        None => {
            println!(
                "cargo:warning=nvcc not found (looked at $NVCC, the pip cuda-toolkit next to torch, \
                 and PATH): building fwp WITHOUT CUDA kernels; CPU paths only"
            );
            None
        }
    };

    // Cargo hands link arguments to this package's own binaries only: a crate that depends on fwp
    // repeats them from DEP_FWP_LINK_ARGS (';'-separated) in its build.rs (README, "Using fwp from
    // another crate"; examples/dependent-crate).
    for arg in &link_args {
        println!("cargo:rustc-link-arg={arg}");
    }
    println!("cargo::metadata=link_args={}", link_args.join(";"));

    let mut cpp = cpp_build(&includes);
    cpp.files(&cpp_sources);
    if let Some(include) = &cuda_include {
        cpp.define("FWP_WITH_CUDA", None);
        if let Some(dir) = include {
            cpp.flag(format!("-isystem{}", dir.display()));
            cpp.define("FWP_WITH_CUDA_HEADERS", None);
        }
    }
    // The CPU fast-weight kernels once more with AVX2 + FMA and once with AVX-512F, picked at run
    // time on CPUs that have them (kernels/fast_weight_op.cpp); the baseline build above stays for
    // the others.
    let x86_64 = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    if x86_64 {
        cpp.define("FWP_HAVE_AVX2", None);
    }
    cpp.compile("fwp_ops");
    if x86_64 {
        for (isa, flags) in [
            ("avx2", &["-mavx2", "-mfma"][..]),
            ("avx512", &["-mavx2", "-mfma", "-mavx512f"][..]),
        ] {
            let mut b = cpp_build(&includes);
            for f in flags {
                b.flag(f);
            }
            b.define("FWP_CPU_ISA", isa)
                .file("kernels/fast_weight_cpu.cpp")
                .compile(&format!("fwp_ops_{isa}"));
        }
    }
}

/// A C++ build against the libtorch headers (given as `-isystem` flags), as torch-sys builds.
fn cpp_build(includes: &[String]) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true).pic(true);
    for inc in includes {
        b.flag(inc);
    }
    b.flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-fopenmp");
    b
}

/// The files with extension `ext` directly inside `dir`, sorted.
fn sources(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {dir}/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn find_nvcc(torch_root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    // torch_root = .../site-packages/torch
    let wheel = torch_root.parent()?.join("nvidia/cu13/bin/nvcc");
    if wheel.is_file() {
        return Some(wheel);
    }
    let on_path = Command::new("nvcc").arg("--version").output().ok()?;
    on_path.status.success().then(|| PathBuf::from("nvcc"))
}

/// Compiles the CUDA sources and links cudart; returns the toolkit's include directory and the
/// directory of the CUDA runtime library, where found.
fn build_cuda(nvcc: &Path, cu_sources: &[PathBuf]) -> (Option<PathBuf>, Option<PathBuf>) {
    // cudart comes from the same place as nvcc (bin/../lib), the pip wheel's layout.
    let cuda_root = nvcc
        .canonicalize()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf));
    // cc picks nvcc (and its flag translation) from the NVCC variable.
    env::set_var("NVCC", nvcc);
    let mut cu = cc::Build::new();
    // debug(false): in a debug profile (`cargo test` without --release) cc would pass nvcc -G, which
    // turns device optimisation off: no unrolling, the kernels' fragment arrays in local memory,
    // spills under their launch bounds, kernels many times slower than tests/cuda_build.rs checks.
    // -lineinfo keeps source lines for the sanitizers and profilers.
    cu.cuda(true).cudart("none").pic(true).debug(false);
    for flag in NVCC_FLAGS {
        cu.flag(flag);
    }
    for (arch, code) in CUDA_GENCODE {
        cu.flag(format!("-gencode=arch={arch},code={code}"));
    }
    // With more than one .cu file cc also compiles with --device-c (and device-links the library);
    // tests/cuda_build.rs compiles with these flags and that one.
    println!("cargo:rustc-env=FWP_NVCC_FLAGS={}", NVCC_FLAGS.join(" "));
    cu.files(cu_sources).compile("fwp_cuda");

    let runtime_dir = cuda_root
        .as_ref()
        .map(|root| root.join("lib"))
        .filter(|lib| lib.is_dir());
    if let Some(lib) = &runtime_dir {
        println!("cargo:rustc-link-search=native={}", lib.display());
    }
    println!("cargo:rustc-link-lib=dylib:+verbatim=libcudart.so.13");
    println!("cargo:rustc-cfg=fwp_cuda");
    let archs: Vec<&str> = CUDA_GENCODE.iter().map(|(_, code)| *code).collect();
    println!("cargo:rustc-env=FWP_CUDA_ARCHS={}", archs.join(","));
    let include = cuda_root
        .map(|root| root.join("include"))
        .filter(|dir| dir.join("cuda_runtime_api.h").is_file());
    (include, runtime_dir)
}
