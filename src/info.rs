//! What this build was compiled with, and which GPUs it can see.

use serde::Serialize;

/// One visible CUDA device.
#[derive(Clone, Debug, Serialize)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildInfo {
    pub fwp_version: &'static str,
    /// CUDA targets the kernels were compiled for (empty for a CPU-only build).
    pub cuda_archs: Vec<&'static str>,
    /// Whether libtorch can use CUDA in this process.
    pub torch_cuda: bool,
    /// The build of the CPU kernels this process runs (`generic`, `avx2`, `avx512`), or why none.
    pub cpu_kernels: Result<&'static str, String>,
    /// GPUs seen through the CUDA driver (cudarc), or why none could be listed.
    pub gpus: Result<Vec<Gpu>, String>,
}

/// CUDA targets the kernels were compiled for.
pub fn cuda_archs() -> Vec<&'static str> {
    option_env!("FWP_CUDA_ARCHS")
        .map(|s| s.split(',').collect())
        .unwrap_or_default()
}

/// Lists the GPUs through the CUDA driver, loaded at run time; `Err` says why none are listed.
pub fn gpus() -> Result<Vec<Gpu>, String> {
    use cudarc::driver::CudaContext;
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    let n = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e:?}"))?;
    (0..n as usize)
        .map(|i| {
            let ctx = CudaContext::new(i).map_err(|e| format!("device {i}: {e:?}"))?;
            Ok(Gpu {
                index: i,
                name: ctx.name().map_err(|e| format!("device {i}: {e:?}"))?,
                compute_capability: ctx
                    .compute_capability()
                    .map_err(|e| format!("device {i}: {e:?}"))?,
                memory_bytes: ctx.total_mem().map_err(|e| format!("device {i}: {e:?}"))?,
            })
        })
        .collect()
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        fwp_version: env!("CARGO_PKG_VERSION"),
        cuda_archs: cuda_archs(),
        torch_cuda: tch::Cuda::is_available(),
        cpu_kernels: crate::ops::cpu_kernel_isa().map_err(|e| e.to_string()),
        gpus: gpus(),
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fwp {}", self.fwp_version)?;
        if self.cuda_archs.is_empty() {
            writeln!(f, "CUDA kernels: not compiled (CPU-only build)")?;
        } else {
            writeln!(
                f,
                "CUDA kernels compiled for: {}",
                self.cuda_archs.join(", ")
            )?;
        }
        writeln!(
            f,
            "libtorch sees CUDA: {}",
            if self.torch_cuda { "yes" } else { "no" }
        )?;
        match &self.cpu_kernels {
            Ok(isa) => writeln!(f, "CPU kernels: {isa}")?,
            Err(e) => writeln!(f, "CPU kernels: {e}")?,
        }
        match &self.gpus {
            Ok(g) if g.is_empty() => writeln!(f, "GPUs: none visible"),
            Ok(g) => {
                for gpu in g {
                    writeln!(
                        f,
                        "GPU {}: {} (sm_{}{}, {:.1} GiB)",
                        gpu.index,
                        gpu.name,
                        gpu.compute_capability.0,
                        gpu.compute_capability.1,
                        gpu.memory_bytes as f64 / (1u64 << 30) as f64
                    )?;
                }
                Ok(())
            }
            Err(why) => writeln!(f, "GPUs: none listed ({why})"),
        }
    }
}
