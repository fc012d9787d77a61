//! Safe Rust wrappers of the C++ ops in `kernels/` (C ABI in `kernels/ffi.h`).
//!
//! Every wrapper checks its inputs in Rust first; the C++ side catches every exception and hands
//! back an error string, which becomes an `Err` here.

use std::ffi::{c_char, c_int, CStr};

use anyhow::{bail, Result};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::check;

extern "C" {
    fn fwp_free_error(msg: *mut c_char);
    fn fwp_built_with_cuda() -> c_int;
    fn fwp_set_flush_denormal(on: c_int) -> c_int;
    fn fwp_tensor_layout(t: *const C_tensor, out: *mut c_int) -> *mut c_char;
    fn fwp_sum_norm(x: *const C_tensor, eps: f64, out: *mut *mut C_tensor) -> *mut c_char;
    fn fwp_sum_norm_cuda_emulated(
        x: *const C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn fwp_fast_weight_fused(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        beta: *const C_tensor,
        s0: *const C_tensor,
        out: *mut *mut C_tensor,
        state: *mut *mut C_tensor,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn fwp_fast_weight_chunked_kernel(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        beta: *const C_tensor,
        s0: *const C_tensor,
        chunk: i64,
        operands: c_int,
        out: *mut *mut C_tensor,
        state: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn fwp_chunked_stage(
        stage: *const c_char,
        inputs: *const *const C_tensor,
        n_inputs: c_int,
        chunk: i64,
        operands: c_int,
        out: *mut *mut C_tensor,
        n_out: *mut c_int,
    ) -> *mut c_char;
    fn fwp_fast_weight_forward_op(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        beta: *const C_tensor,
        s0: *const C_tensor,
        chunk: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn fwp_fast_weight_backward_op(
        grad_out: *const C_tensor,
        grad_state: *const C_tensor,
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        beta: *const C_tensor,
        checkpoints: *const C_tensor,
        final_state: *const C_tensor,
        residuals: *const C_tensor,
        chunk: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn fwp_recurrent_cuda_emulated(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        beta: *const C_tensor,
        s0: *const C_tensor,
        grad_out: *const C_tensor,
        grad_state: *const C_tensor,
        chunk: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn fwp_chunked_cuda_runs_on(device: c_int) -> c_int;
    fn fwp_chunked_pass_shared_bytes(
        d_k: i64,
        backward: c_int,
        delta: c_int,
        bf16: c_int,
        stages: c_int,
    ) -> i64;
    fn fwp_chunked_pass_stages(
        d_k: i64,
        backward: c_int,
        delta: c_int,
        bf16: c_int,
        limit: i64,
    ) -> c_int;
    fn fwp_chunked_pass_stages_for_grid(
        most: c_int,
        blocks: i64,
        sms: i64,
        per_sm_one: i64,
        per_sm_two: i64,
    ) -> c_int;
    fn fwp_cpu_kernel_isa(name: *mut *const c_char) -> *mut c_char;
    fn fwp_cuda_event_create(device: c_int, event: *mut *mut std::ffi::c_void) -> *mut c_char;
    fn fwp_cuda_event_record(device: c_int, event: *mut std::ffi::c_void) -> *mut c_char;
    fn fwp_cuda_event_elapsed(
        start: *mut std::ffi::c_void,
        end: *mut std::ffi::c_void,
        ms: *mut f32,
    ) -> *mut c_char;
    fn fwp_cuda_event_destroy(event: *mut std::ffi::c_void);
    fn fwp_cuda_memory_reset_peak(device: c_int) -> *mut c_char;
    fn fwp_cuda_memory_allocated(device: c_int, current: *mut i64, peak: *mut i64) -> *mut c_char;
    fn fwp_fused_cuda_chunk_for(
        d_k: i64,
        t: i64,
        acc_bytes: c_int,
        smem_limit: i64,
        out: *mut i64,
    ) -> *mut c_char;
    fn fwp_fused_cuda_max_dk(
        device: c_int,
        d_v: i64,
        acc_bytes: c_int,
        out: *mut i64,
    ) -> *mut c_char;
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

/// The build of the recurrent CPU kernels this process runs: `avx512` where the CPU has AVX-512F,
/// else `avx2` where it has AVX2 + FMA, else `generic`, unless the environment variable
/// `FWP_CPU_ISA` (`generic`, `avx2` or `avx512`; or `FWP_CPU_GENERIC`) asked for one when the
/// process first used them; an `FWP_CPU_ISA` the CPU lacks, or does not name a build, is an error.
pub fn cpu_kernel_isa() -> Result<&'static str> {
    let mut name: *const c_char = std::ptr::null();
    // SAFETY: on success the C side points `name` at a static NUL-terminated string.
    status("fwp_cpu_kernel_isa", unsafe {
        fwp_cpu_kernel_isa(&mut name)
    })?;
    Ok(unsafe { CStr::from_ptr(name) }.to_str()?)
}

/// Whether this build's chunked CUDA kernels (kernels/chunked.cu) run on CUDA device `device`:
/// built with CUDA, and the GPU is sm_80 or newer (the kernels' images). Asked once per device.
pub fn chunked_cuda_runs_on(device: usize) -> bool {
    // SAFETY: no pointers; the C side catches CUDA errors and answers 0.
    built_with_cuda() && unsafe { fwp_chunked_cuda_runs_on(device as c_int) != 0 }
}

/// Bytes of dynamic shared memory the chunked CUDA kernels' fast sequential pass takes
/// (kernels/chunked_passes.cuh) for keys of width `d_k`, forward or backward, delta or sum rule, fp32
/// inputs or (`bf16`) bf16 inputs with `Operands::Bf16` (whose tiles take half the space), with
/// `stages` (1 or 2) chunks of inputs in flight; `None` for d_k > 256 or a build without CUDA. A pass
/// runs with the most stages that fit the device's opt-in limit (one where that lets its grid run
/// in fewer waves: [`chunked_pass_stages_for_grid`]), else the first-version kernel runs.
pub fn chunked_pass_shared_bytes(
    d_k: i64,
    backward: bool,
    delta: bool,
    bf16: bool,
    stages: i32,
) -> Option<i64> {
    // SAFETY: no pointers; arithmetic only.
    let bytes = unsafe {
        fwp_chunked_pass_shared_bytes(
            d_k,
            c_int::from(backward),
            c_int::from(delta),
            c_int::from(bf16),
            stages,
        )
    };
    (bytes >= 0).then_some(bytes)
}

/// How many chunks of inputs the fast sequential pass keeps in flight at most on a GPU with
/// `smem_limit` bytes of opt-in shared memory per block: 2 or 1, the most whose
/// [`chunked_pass_shared_bytes`] fit; 0 when not even one does (then the first-version kernel runs);
/// `None` for d_k > 256 or a build without CUDA. It asks the launcher's own rule
/// (kernels/chunked_passes.cu), so what `fwp info` prints is what runs, except that a pass takes one
/// stage where two fit but one lets its grid run in fewer waves ([`chunked_pass_stages_for_grid`]).
pub fn chunked_pass_stages(
    d_k: i64,
    backward: bool,
    delta: bool,
    bf16: bool,
    smem_limit: i64,
) -> Option<i32> {
    // SAFETY: no pointers; arithmetic only.
    let stages = unsafe {
        fwp_chunked_pass_stages(
            d_k,
            c_int::from(backward),
            c_int::from(delta),
            c_int::from(bf16),
            smem_limit,
        )
    };
    (stages >= 0).then_some(stages)
}

/// How many chunks of inputs the fast sequential pass keeps in flight when its grid has `blocks`
/// blocks on a GPU of `sms` multiprocessors: `most` (what [`chunked_pass_stages`] says fits), or 1
/// where one stage lets the grid run in fewer waves of blocks than two, an SM holding `per_sm_one`
/// blocks at once with one stage and `per_sm_two` with two. Blocks that share an SM hide each
/// other's waits, which is worth more than copying the next chunk ahead (docs/performance.md, GPU).
/// The launcher's own rule (kernels/chunked_passes.cuh), which it feeds with the device's
/// occupancy; `None` in a build without CUDA.
pub fn chunked_pass_stages_for_grid(
    most: i32,
    blocks: i64,
    sms: i64,
    per_sm_one: i64,
    per_sm_two: i64,
) -> Option<i32> {
    // SAFETY: no pointers; arithmetic only.
    let stages =
        unsafe { fwp_chunked_pass_stages_for_grid(most, blocks, sms, per_sm_one, per_sm_two) };
    (stages >= 0).then_some(stages)
}

/// Flushes denormal floats (magnitudes below 1.2e-38 in f32) to zero, as PyTorch's
/// `torch.set_flush_denormal`: on the calling thread and on the threads it starts later, which
/// inherit its floating-point state (libtorch's CPU worker threads among them, when this runs before
/// the first parallel op). Returns whether the CPU supports it.
///
/// Why it matters: x86 CPUs compute with denormal operands up to a hundred times slower. FAVOR+
/// features, `exp(w·x - |x|²/2)`, and their gradients reach that range as training grows the keys'
/// norms: a `translate` FAVOR+ run with denormals took 3-4 times longer per update than the same
/// run with sum:linear (docs/performance.md). Values that small contribute nothing a float32 sum
/// can hold, so the experiment binaries flush them.
pub fn set_flush_denormal(on: bool) -> bool {
    // SAFETY: sets the calling thread's MXCSR bits through libtorch; no pointers.
    unsafe { fwp_set_flush_denormal(c_int::from(on)) != 0 }
}

/// The name of `t`'s memory layout: `strided` (dense), or a sparse or MKL-DNN layout.
pub fn layout(t: &Tensor) -> Result<&'static str> {
    let mut code: c_int = -1;
    // SAFETY: t is a live tensor; one int out.
    status("layout", unsafe {
        fwp_tensor_layout(t.as_ptr(), &mut code)
    })?;
    Ok(match code {
        0 => "strided",
        1 => "sparse (COO)",
        2 => "sparse CSR",
        3 => "MKL-DNN",
        4 => "sparse CSC",
        5 => "sparse BSR",
        6 => "sparse BSC",
        7 => "jagged",
        _ => "unknown",
    })
}

/// Sum normalisation (docs/derivations.md, D5) by the C++ op `fwp::sum_norm`: `x / (sum_j x_j + eps)` over
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

/// `sum_norm`'s CUDA kernel (kernels/sum_norm_kernel.cuh) run on the CPU by an emulator
/// (kernels/cuda_on_host.h), for tests: `x` a non-empty f32 CPU tensor, no autograd.
pub fn sum_norm_cuda_emulated(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: x is a live tensor; on success `out` receives a new at::Tensor* that we own.
    status("sum_norm CUDA kernel (emulated)", unsafe {
        fwp_sum_norm_cuda_emulated(x.as_ptr(), eps, &mut out)
    })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The fused recurrence, `fwp::delta_rule` (when `beta` is given) or `fwp::sum_rule`
/// (kernels/fast_weight_op.cpp), through the dispatcher so that autograd and the TorchScript tracer
/// record it. Expects inputs already checked by [`crate::recurrence::fast_weight`]; returns
/// (out in the inputs' dtype, final state in the accumulation dtype: f64 for f64 inputs, else f32).
pub fn fast_weight_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut state: *mut C_tensor = std::ptr::null_mut();
    let op = if beta.is_some() {
        "fwp::delta_rule"
    } else {
        "fwp::sum_rule"
    };
    // SAFETY: all pointers are live tensors or NULL where the C side allows it; on success both
    // outputs are new at::Tensor* that we own.
    status(op, unsafe {
        fwp_fast_weight_fused(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            opt_ptr(beta),
            opt_ptr(initial),
            &mut out,
            &mut state,
        )
    })?;
    Ok(unsafe { (Tensor::from_ptr(out), Tensor::from_ptr(state)) })
}

/// How the chunked kernels round the operands of their matrix products (kernels/chunked.h). The
/// CUDA kernels take `Bf16`, `Bf16x2` or `Bf16x3`; the CPU twin takes all four, so that a CPU can check the
/// CUDA kernels' arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operands {
    /// In the accumulation dtype (f32, or f64 for f64 inputs).
    Exact,
    /// As the tensor cores see bf16 inputs: bf16 operands (the states S and dS split into bf16
    /// hi + lo), f32 accumulation.
    Bf16,
    /// As the tensor cores see fp16 inputs: every operand split into two bf16 parts (16
    /// significant bits, every fp16 value exactly) and multiplied in three part products.
    Bf16x2,
    /// As the tensor cores see fp32 inputs: every operand split into three bf16 parts (24
    /// significant bits) and multiplied in six part products, f32 accumulation: f32 accuracy.
    Bf16x3,
}

impl Operands {
    /// What the CUDA kernels use for inputs of dtype `kind`: `Bf16` for bf16, `Bf16x2` for fp16,
    /// `Bf16x3` for f32; `None` for f64 and other dtypes, which they do not take.
    pub fn for_cuda(kind: Kind) -> Option<Operands> {
        match kind {
            Kind::BFloat16 => Some(Operands::Bf16),
            Kind::Half => Some(Operands::Bf16x2),
            Kind::Float => Some(Operands::Bf16x3),
            _ => None,
        }
    }

    /// The C ABI's code (kernels/chunked_op.cpp).
    fn code(self) -> c_int {
        match self {
            Operands::Exact => 0,
            Operands::Bf16 => 1,
            Operands::Bf16x3 => 2,
            Operands::Bf16x2 => 3,
        }
    }
}

/// The chunked kernels, `fwp::chunked_rule` (kernels/chunked_op.cpp): the delta rule when `beta` is
/// given, else the sum rule, in chunks of `chunk` (16, 32 or 64) steps; through the dispatcher, so
/// that autograd and the tracer record it. Expects inputs already checked by
/// [`crate::recurrence::fast_weight`]; returns (out in the inputs' dtype, final state in the
/// accumulation dtype).
pub fn fast_weight_chunked_kernel(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
    chunk: i64,
    operands: Operands,
) -> Result<(Tensor, Tensor)> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut state: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in fast_weight_fused.
    status("fwp::chunked_rule", unsafe {
        fwp_fast_weight_chunked_kernel(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            opt_ptr(beta),
            opt_ptr(initial),
            chunk,
            operands.code(),
            &mut out,
            &mut state,
        )
    })?;
    Ok(unsafe { (Tensor::from_ptr(out), Tensor::from_ptr(state)) })
}

/// One stage of the chunked kernels (kernels/chunked.h) on its own: `stage` is `wy`,
/// `state_forward`, `values`, `output`, `local_grad`, `state_backward` or `input_grads`, `inputs` its
/// tensor arguments in that header's order (fp32, chunked layout; `None` where the sum rule has
/// none). Runs the CPU twin for CPU tensors and the CUDA kernels for CUDA tensors, so that a test can
/// compare the two stage by stage. Returns the stage's results (`None` where undefined).
pub fn chunked_stage(
    stage: &str,
    inputs: &[Option<&Tensor>],
    chunk: i64,
    operands: Operands,
) -> Result<Vec<Option<Tensor>>> {
    let name = std::ffi::CString::new(stage)?;
    let ptrs: Vec<*const C_tensor> = inputs.iter().map(|t| opt_ptr(*t)).collect();
    let mut out: [*mut C_tensor; 4] = [std::ptr::null_mut(); 4];
    let mut n_out: c_int = 0;
    // SAFETY: the inputs are live tensors or NULL; on success the C side sets n_out <= 4 entries
    // of `out`, each a new at::Tensor* we own or NULL.
    status(&format!("chunked stage {stage}"), unsafe {
        fwp_chunked_stage(
            name.as_ptr(),
            ptrs.as_ptr(),
            ptrs.len() as c_int,
            chunk,
            operands.code(),
            out.as_mut_ptr(),
            &mut n_out,
        )
    })?;
    Ok(out[..n_out as usize]
        .iter()
        .map(|&p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }))
        .collect())
}

fn opt_ptr(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}

/// What the raw fused forward returns ([`fast_weight_forward_op`]).
pub struct FusedForward {
    /// `[B, H, T, d_v]`
    pub out: Tensor,
    /// `[B, H, d_k, d_v]`, in the accumulation dtype (f64 for f64 inputs, else f32)
    pub final_state: Tensor,
    /// The state before each chunk: `[B, H, ceil(T / chunk), d_k, d_v]`, accumulation dtype.
    pub checkpoints: Tensor,
    /// The delta rule's residuals `e_t = v_t - S_{t-1}^T k_t`, `[B, H, T, d_v]` in the accumulation
    /// dtype, which the CPU backward needs; empty for the sum rule and on CUDA.
    pub residuals: Tensor,
}

/// The fused forward as the raw op `fwp::fast_weight_forward` (no autograd, no checks in Rust: the
/// op checks its inputs itself). For callers of the registered schema;
/// [`crate::recurrence::fast_weight`] is the public entry.
pub fn fast_weight_forward_op(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
    chunk: i64,
) -> Result<FusedForward> {
    let mut out = [std::ptr::null_mut::<C_tensor>(); 4];
    // SAFETY: live tensors or NULL; on success four new at::Tensor* that we own.
    status("fwp::fast_weight_forward", unsafe {
        fwp_fast_weight_forward_op(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            opt_ptr(beta),
            opt_ptr(initial),
            chunk,
            out.as_mut_ptr(),
        )
    })?;
    let [out, final_state, checkpoints, residuals] = out.map(|p| unsafe { Tensor::from_ptr(p) });
    Ok(FusedForward {
        out,
        final_state,
        checkpoints,
        residuals,
    })
}

/// The fused backward as the raw op `fwp::fast_weight_backward`: (dq, dk, dv, dbeta, dS0) from the
/// output's gradient, the final state's (optional), the inputs and what the forward returned
/// besides the output (its final state, checkpoints and residuals).
#[allow(clippy::too_many_arguments)]
pub fn fast_weight_backward_op(
    grad_out: &Tensor,
    grad_state: Option<&Tensor>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    saved: &FusedForward,
    chunk: i64,
) -> Result<[Tensor; 5]> {
    let mut out = [std::ptr::null_mut::<C_tensor>(); 5];
    // SAFETY: live tensors or NULL; on success five new at::Tensor* that we own.
    status("fwp::fast_weight_backward", unsafe {
        fwp_fast_weight_backward_op(
            grad_out.as_ptr(),
            opt_ptr(grad_state),
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            opt_ptr(beta),
            saved.checkpoints.as_ptr(),
            saved.final_state.as_ptr(),
            saved.residuals.as_ptr(),
            chunk,
            out.as_mut_ptr(),
        )
    })?;
    Ok(out.map(|p| unsafe { Tensor::from_ptr(p) }))
}

/// What [`recurrent_cuda_emulated`] returns.
pub struct RecurrentEmulated {
    /// `[B, H, T, d_v]`
    pub out: Tensor,
    /// `[B, H, d_k, d_v]`, accumulation dtype (f64 for f64 inputs, else f32)
    pub final_state: Tensor,
    /// `[B, H, ceil(T / chunk), d_k, d_v]`, accumulation dtype
    pub checkpoints: Tensor,
    /// dq, dk, dv in the inputs' dtype; dbeta (`None` for the sum rule); dS0 in the accumulation
    /// dtype.
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dbeta: Option<Tensor>,
    pub ds0: Tensor,
}

/// The recurrent CUDA kernels' own code (kernels/fast_weight_kernels.cuh) run on the CPU by an
/// emulator (kernels/cuda_on_host.h: one thread per CUDA thread, real barriers, warp shuffles):
/// the forward with checkpoints every `chunk` steps, then the backward for the gradients
/// `grad_out` of the output and `grad_state` of the final state (`None`: zero). Inputs on the CPU
/// in one dtype (f32, f64, f16 or bf16), shapes as [`crate::fast_weight`]'s; `beta` `None` for the
/// sum rule. For tests: it checks the kernels' indexing without a GPU, slowly (small shapes).
#[allow(clippy::too_many_arguments)]
pub fn recurrent_cuda_emulated(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
    grad_out: &Tensor,
    grad_state: Option<&Tensor>,
    chunk: i64,
) -> Result<RecurrentEmulated> {
    let mut out = [std::ptr::null_mut::<C_tensor>(); 8];
    // SAFETY: live tensors or NULL; on success eight entries, each a new at::Tensor* that we own
    // or NULL.
    status("recurrent CUDA kernels (emulated)", unsafe {
        fwp_recurrent_cuda_emulated(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            opt_ptr(beta),
            opt_ptr(initial),
            grad_out.as_ptr(),
            opt_ptr(grad_state),
            chunk,
            out.as_mut_ptr(),
        )
    })?;
    let [out, final_state, checkpoints, dq, dk, dv, dbeta, ds0] =
        out.map(|p| (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) }));
    let some = |t: Option<Tensor>| t.expect("the emulator returns this tensor");
    Ok(RecurrentEmulated {
        out: some(out),
        final_state: some(final_state),
        checkpoints: some(checkpoints),
        dq: some(dq),
        dk: some(dk),
        dv: some(dv),
        dbeta,
        ds0: some(ds0),
    })
}

/// The largest d_k the CUDA fused kernels take on CUDA device `device` for inputs of dtype `kind`
/// (limited by the device's shared memory); 0 without CUDA kernels or without that device.
pub fn fused_cuda_max_dk(device: usize, d_v: i64, kind: Kind) -> Result<i64> {
    let acc_bytes = if kind == Kind::Double { 8 } else { 4 };
    let mut out = 0i64;
    // SAFETY: plain values in, one i64 out.
    status("fused_cuda_max_dk", unsafe {
        fwp_fused_cuda_max_dk(device as c_int, d_v, acc_bytes, &mut out)
    })?;
    Ok(out)
}

/// The checkpoint interval the recurrent CUDA kernels use for keys of width `d_k`, `t` steps and
/// inputs of dtype `kind` on a GPU with `smem_limit` bytes of opt-in shared memory per block (227 KiB
/// on H100/H200, 163 KiB on A100): at most 64 steps, as many as a quarter of the limit holds while
/// that is at least 16, else as many as the whole limit holds (docs/derivations.md Sec. 6). 0 when
/// not even one step fits. Arithmetic only: no GPU needed.
pub fn fused_cuda_chunk_for(d_k: i64, t: i64, kind: Kind, smem_limit: i64) -> Result<i64> {
    let acc_bytes = if kind == Kind::Double { 8 } else { 4 };
    let mut out = 0i64;
    // SAFETY: plain values in, one i64 out.
    status("fused_cuda_chunk_for", unsafe {
        fwp_fused_cuda_chunk_for(d_k, t, acc_bytes, smem_limit, &mut out)
    })?;
    Ok(out)
}

/// Resets the peak statistics of PyTorch's CUDA caching allocator on `device`
/// (kernels/cuda_memory.cpp); errors in a build without CUDA.
pub fn cuda_memory_reset_peak(device: usize) -> Result<()> {
    // SAFETY: plain integer argument; errors come back as a string.
    status("fwp_cuda_memory_reset_peak", unsafe {
        fwp_cuda_memory_reset_peak(device as c_int)
    })
}

/// Bytes allocated through PyTorch's CUDA caching allocator on `device`: (now, peak since the last
/// [`cuda_memory_reset_peak`]).
pub fn cuda_memory_allocated(device: usize) -> Result<(i64, i64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: both pointers are valid i64s for the call to write.
    status("fwp_cuda_memory_allocated", unsafe {
        fwp_cuda_memory_allocated(device as c_int, &mut current, &mut peak)
    })?;
    Ok((current, peak))
}

/// A CUDA event with timing (kernels/cuda_memory.cpp), for timing GPU work as the GPU sees it.
/// Errors in a build without CUDA.
pub struct CudaEvent {
    device: usize,
    event: *mut std::ffi::c_void,
}

impl CudaEvent {
    /// A new event on CUDA device `device`.
    pub fn new(device: usize) -> Result<CudaEvent> {
        let mut event = std::ptr::null_mut();
        // SAFETY: on success the C side stores a cudaEvent_t we own (destroyed in Drop).
        status("fwp_cuda_event_create", unsafe {
            fwp_cuda_event_create(device as c_int, &mut event)
        })?;
        Ok(CudaEvent { device, event })
    }

    /// Records the event on PyTorch's current stream of its device.
    pub fn record(&self) -> Result<()> {
        // SAFETY: `event` is a live cudaEvent_t of `device`.
        status("fwp_cuda_event_record", unsafe {
            fwp_cuda_event_record(self.device as c_int, self.event)
        })
    }

    /// Waits for `end` and returns the milliseconds from this event to `end`, both recorded.
    pub fn elapsed_ms(&self, end: &CudaEvent) -> Result<f64> {
        let mut ms = 0f32;
        // SAFETY: both are live events; `ms` is a valid out pointer.
        status("fwp_cuda_event_elapsed", unsafe {
            fwp_cuda_event_elapsed(self.event, end.event, &mut ms)
        })?;
        Ok(f64::from(ms))
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        // SAFETY: the event was created by fwp_cuda_event_create and is destroyed once.
        unsafe { fwp_cuda_event_destroy(self.event) }
    }
}
