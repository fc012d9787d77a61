//! Input checks done in Rust before any tensor work, so bad input is an `Err` that names the
//! tensor and the expected shape, never a panic deep inside libtorch.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// One expected dimension: its symbol (for the message) and its size, if already fixed.
#[derive(Clone, Copy, Debug)]
pub struct Dim(pub &'static str, pub Option<i64>);

/// Checks that `t` has rank `dims.len()` and the fixed sizes in `dims`; returns its sizes.
pub fn shape(name: &str, t: &Tensor, dims: &[Dim]) -> Result<Vec<i64>> {
    let size = t.size();
    let ok = size.len() == dims.len()
        && dims
            .iter()
            .zip(&size)
            .all(|(d, &s)| d.1.is_none_or(|want| want == s));
    if !ok {
        bail!("{name}: expected shape {}, got {size:?}", describe(dims));
    }
    Ok(size)
}

/// `[B, H, T, d_k] = [2, 3, ?, 16]`-style rendering of an expected shape.
pub fn describe(dims: &[Dim]) -> String {
    let names: Vec<&str> = dims.iter().map(|d| d.0).collect();
    if dims.iter().all(|d| d.1.is_none()) {
        return format!("[{}]", names.join(", "));
    }
    let sizes: Vec<String> = dims
        .iter()
        .map(|d| d.1.map_or("?".to_string(), |s| s.to_string()))
        .collect();
    format!("[{}] = [{}]", names.join(", "), sizes.join(", "))
}

/// Floating-point kinds the fast-weight math accepts.
pub fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

/// Checks that `t` is a dense (strided) tensor: the kernels and most libtorch ops need one.
pub fn dense(name: &str, t: &Tensor) -> Result<()> {
    let layout = crate::ops::layout(t)?;
    if layout != "strided" {
        bail!("{name}: expected a dense (strided) tensor, got layout {layout}; convert it with to_dense()");
    }
    Ok(())
}

/// Checks that `t` is a dense floating-point tensor and, if `like` is given, has its dtype and
/// device.
pub fn float_like(name: &str, t: &Tensor, like: Option<(&str, &Tensor)>) -> Result<()> {
    dense(name, t)?;
    let kind = t.f_kind()?;
    if !is_float(kind) {
        bail!("{name}: expected a floating-point tensor (f32, f64, f16 or bf16), got {kind:?}");
    }
    if let Some((other_name, other)) = like {
        let other_kind = other.f_kind()?;
        if kind != other_kind {
            bail!("{name}: dtype {kind:?} does not match {other_name}'s dtype {other_kind:?}");
        }
        same_device(name, t, other_name, other)?;
    }
    Ok(())
}

pub fn same_device(name: &str, t: &Tensor, other_name: &str, other: &Tensor) -> Result<()> {
    let (a, b): (Device, Device) = (t.device(), other.device());
    if a != b {
        bail!("{name}: on device {a:?} but {other_name} is on {b:?}; move them to one device");
    }
    Ok(())
}

/// A strictly positive size parameter.
pub fn positive(name: &str, value: i64) -> Result<()> {
    if value <= 0 {
        bail!("{name} must be positive, got {value}");
    }
    Ok(())
}

/// Parses a device name from the command line: `cpu`, `cuda` (GPU 0) or `cuda:N`, checking that
/// libtorch sees that GPU.
pub fn device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device '{s}': expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = device {
        let n = tch::Cuda::device_count();
        if i as i64 >= n {
            bail!("device '{s}': libtorch sees {n} CUDA device(s)");
        }
    }
    Ok(device)
}

/// Checks that `t` holds token ids `[B, T]` (int64); returns [B, T].
pub fn token_ids(name: &str, t: &Tensor) -> Result<[i64; 2]> {
    let size = shape(name, t, &[Dim("B", None), Dim("T", None)])?;
    if t.kind() != tch::Kind::Int64 {
        anyhow::bail!("{name}: expected int64 token ids, got {:?}", t.kind());
    }
    Ok([size[0], size[1]])
}
