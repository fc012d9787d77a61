//! Peak memory of one run, per device.
//!
//! Both report the bytes a run added on top of what was allocated when it started (its inputs).
//! CUDA: the peak of PyTorch's caching allocator (bytes handed to tensors), reset before the run.
//! CPU: the process's resident-set high-water mark (`VmHWM`), reset through `/proc/self/clear_refs`,
//! minus the resident size at the reset: the memory the run added on top of its inputs. Before the
//! reset, `malloc_trim(0)` hands every free heap page back to the kernel, so that memory the run
//! takes from the allocator's free lists counts too (it faults those pages in again).

use anyhow::{bail, Context, Result};
use tch::Device;

/// A started peak-memory measurement.
pub struct Meter {
    device: Device,
    /// Bytes in use when the measurement started (CPU: resident; CUDA: allocated).
    base: i64,
}

fn status_kib(field: &str) -> Result<i64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("/proc/self/status has no {field}"))?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<i64>().ok())
        .with_context(|| format!("cannot parse {line:?}"))?;
    Ok(kib)
}

impl Meter {
    /// Resets the peak; fails where the platform gives no way to measure it.
    pub fn start(device: Device) -> Result<Meter> {
        match device {
            Device::Cuda(i) => {
                tch::Cuda::synchronize(i as i64);
                crate::ops::cuda_memory_reset_peak(i)?;
                let (current, _) = crate::ops::cuda_memory_allocated(i)?;
                Ok(Meter {
                    device,
                    base: current,
                })
            }
            Device::Cpu => {
                crate::host_memory::release_free_memory();
                std::fs::write("/proc/self/clear_refs", "5")
                    .context("resetting the RSS high-water mark (/proc/self/clear_refs)")?;
                Ok(Meter {
                    device,
                    base: status_kib("VmRSS:")? * 1024,
                })
            }
            other => bail!("no memory measurement for device {other:?}"),
        }
    }

    /// Peak bytes in use since [`Meter::start`], above what was in use at the start.
    pub fn peak(&self) -> Result<i64> {
        let peak = match self.device {
            Device::Cuda(i) => {
                tch::Cuda::synchronize(i as i64);
                crate::ops::cuda_memory_allocated(i)?.1
            }
            _ => status_kib("VmHWM:")? * 1024,
        };
        Ok((peak - self.base).max(0))
    }
}
