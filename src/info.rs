//! What this build was compiled with, and which GPUs it can see.

use serde::Serialize;

/// One visible CUDA device.
#[derive(Clone, Debug, Serialize)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
    /// Shared memory a block may opt in to, in bytes: what the CUDA kernels size their passes from.
    pub shared_memory_per_block: usize,
    /// Whether [`Backend::Fused`](crate::recurrence::Backend::Fused) can run the chunked kernels here
    /// ([`crate::ops::chunked_cuda_runs_on`]).
    pub chunked_kernels: bool,
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
                shared_memory_per_block: ctx
                    .attribute(
                        cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                    )
                    .map_err(|e| format!("device {i}: {e:?}"))?
                    .max(0) as usize,
                chunked_kernels: crate::ops::chunked_cuda_runs_on(i),
            })
        })
        .collect()
}

/// The chunked kernels' fast sequential passes on a GPU with `smem_limit` bytes of opt-in shared
/// memory per block: for d_k up to 64, 128 and 256, how many chunks of inputs each pass keeps in
/// flight at most (forward / backward, delta rule; [`crate::ops::chunked_pass_stages`]) with fp32
/// and with bf16 inputs, 0 where the first-version kernel runs instead; `None` in a build without
/// CUDA. A pass runs one stage where two fit but one lets its grid run in fewer waves
/// ([`crate::ops::chunked_pass_stages_for_grid`]).
pub fn pass_plan(smem_limit: i64) -> Option<String> {
    let mut parts = Vec::new();
    for d_k in [64, 128, 256] {
        let mut dtypes = Vec::new();
        for (name, bf16) in [("fp32", false), ("bf16", true)] {
            let stages =
                |backward| crate::ops::chunked_pass_stages(d_k, backward, true, bf16, smem_limit);
            dtypes.push(format!("{name} {}/{}", stages(false)?, stages(true)?));
        }
        parts.push(format!("d_k <= {d_k}: {}", dtypes.join(", ")));
    }
    Some(parts.join("; "))
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
                        "GPU {}: {} (sm_{}{}, {:.1} GiB, {} KiB of shared memory per block)",
                        gpu.index,
                        gpu.name,
                        gpu.compute_capability.0,
                        gpu.compute_capability.1,
                        gpu.memory_bytes as f64 / (1u64 << 30) as f64,
                        gpu.shared_memory_per_block / 1024
                    )?;
                    if !gpu.chunked_kernels {
                        writeln!(
                            f,
                            "  chunked kernels: do not run here (they need sm_80 or newer); \
                             Backend::Fused runs the recurrent ones"
                        )?;
                    } else if let Some(plan) = pass_plan(gpu.shared_memory_per_block as i64) {
                        writeln!(
                            f,
                            "  chunked kernels run here; chunks in flight per pass at most (forward/backward, \
                             delta rule, 0: first-version kernel; 1 where that runs a grid in fewer waves): {plan}"
                        )?;
                    }
                }
                Ok(())
            }
            Err(why) => writeln!(f, "GPUs: none listed ({why})"),
        }
    }
}
