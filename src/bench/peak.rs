//! This machine's own ceilings (`bench --peak`): dense matmul FLOP/s per dtype and copy bandwidth,
//! so that reports give a fraction of what was measured here, not of a datasheet.
//!
//! Matmul: square n x n products, n doubled from 512 until one product takes 50 ms (or n = 8192),
//! then the fastest of 5 runs at that n: 2 n^3 / time. Copy: `copy_` of a 256 MiB (CPU) or 2 GiB
//! (CUDA) fp32 tensor, fastest of 5 runs, counting the bytes read plus the bytes written.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::case::DType;
use super::measure::time;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The CPU model or GPU name.
    pub hardware: String,
    /// libtorch's intra-op threads (CPU).
    pub threads: i32,
    /// GFLOP/s of a dense matmul, by dtype name.
    pub matmul_gflops: BTreeMap<String, f64>,
    /// The matmul size each rate was measured at.
    pub matmul_n: BTreeMap<String, i64>,
    /// GB/s of a large copy (read + write).
    pub copy_gb_s: f64,
}

/// The CPU model (from /proc/cpuinfo) or the GPU's name.
pub fn hardware(device: Device) -> String {
    match device {
        Device::Cuda(i) => crate::info::gpus()
            .ok()
            .and_then(|g| g.into_iter().find(|g| g.index == i).map(|g| g.name))
            .unwrap_or_else(|| format!("CUDA device {i}")),
        _ => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .map(|m| {
                format!(
                    "{m}, {} cores",
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                )
            })
            .unwrap_or_else(|| "unknown CPU".into()),
    }
}

fn matmul_rate(device: Device, kind: Kind) -> Result<(f64, i64)> {
    let mut n = 512i64;
    loop {
        let a = Tensor::f_randn([n, n], (kind, device))?;
        let b = Tensor::f_randn([n, n], (kind, device))?;
        let once = time(device, 1, 1, || {
            a.f_matmul(&b).map(drop).map_err(Into::into)
        })?;
        if once.min_ms >= 50.0 || n >= 8192 {
            let s = time(device, 1, 5, || {
                a.f_matmul(&b).map(drop).map_err(Into::into)
            })?;
            return Ok((2.0 * (n as f64).powi(3) / (s.min_ms * 1e-3) / 1e9, n));
        }
        n *= 2;
    }
}

fn copy_gb_s(device: Device) -> Result<f64> {
    let elems: i64 = if device.is_cuda() {
        512 << 20
    } else {
        64 << 20
    };
    let src = Tensor::f_randn([elems], (Kind::Float, device))?;
    let mut dst = Tensor::f_empty([elems], (Kind::Float, device))?;
    let s = time(device, 1, 5, || dst.f_copy_(&src).map_err(Into::into))?;
    Ok(2.0 * 4.0 * elems as f64 / (s.min_ms * 1e-3) / 1e9)
}

/// Measures the ceilings of `device` for each of `dtypes`.
pub fn measure(device: &str, dtypes: &[DType]) -> Result<Peak> {
    let dev = crate::check::device(device)?;
    let mut matmul_gflops = BTreeMap::new();
    let mut matmul_n = BTreeMap::new();
    for &dtype in dtypes {
        let (rate, n) = matmul_rate(dev, dtype.kind())
            .with_context(|| format!("measuring the {dtype} matmul peak on {device}"))?;
        matmul_gflops.insert(dtype.to_string(), rate);
        matmul_n.insert(dtype.to_string(), n);
    }
    Ok(Peak {
        device: device.to_string(),
        hardware: hardware(dev),
        threads: tch::get_num_threads(),
        matmul_gflops,
        matmul_n,
        copy_gb_s: copy_gb_s(dev)
            .with_context(|| format!("measuring copy bandwidth on {device}"))?,
    })
}
