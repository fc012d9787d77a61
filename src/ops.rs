//! Safe Rust wrappers of the C++ ops in `kernels/` (C ABI in `kernels/ffi.h`).
//!
//! Every wrapper checks its inputs in Rust first; the C++ side catches every exception and hands
//! back an error string, which becomes an `Err` here.

use std::ffi::{c_char, c_int, CStr};

use anyhow::{bail, Result};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::check;

extern "C" {
    fn fwp_free_error(msg: *mut c_char);
    fn fwp_built_with_cuda() -> c_int;
    fn fwp_sum_norm(x: *const C_tensor, eps: f64, out: *mut *mut C_tensor) -> *mut c_char;
}

/// Turns a C error string (NULL = success) into a `Result`, freeing it.
fn status(op: &str, err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL return is a NUL-terminated string malloc'ed by kernels/ffi.h.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { fwp_free_error(err) };
    bail!("{op}: {msg}")
}

/// Whether the CUDA kernels were compiled into this build (nvcc was found by build.rs).
pub fn built_with_cuda() -> bool {
    // SAFETY: a pure function without arguments.
    unsafe { fwp_built_with_cuda() != 0 }
}

/// Sum normalisation (paper.md Sec. 2) by the C++ op `fwp::sum_norm`: `x / (sum_j x_j + eps)` over
/// the last dimension, with an explicit backward. Reference twin:
/// [`crate::norm::sum_normalise_reference`].
pub fn sum_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    check::float_like("x", x, None)?;
    if x.dim() == 0 {
        bail!("x: sum_norm needs at least one dimension, got a scalar");
    }
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("eps must be finite and >= 0, got {eps}");
    }
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: x is a live tensor; on success `out` receives a new at::Tensor* that we own.
    status("fwp::sum_norm", unsafe {
        fwp_sum_norm(x.as_ptr(), eps, &mut out)
    })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}
