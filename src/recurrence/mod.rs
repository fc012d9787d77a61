//! The causal fast-weight recurrence (the paper's Sec. 3 and 4.2; docs/derivations.md Sec. 1), behind one
//! public function, [`fast_weight`].
//!
//! Per (batch, head) the state S is `d_k x d_v`, key-major (S = W^T of the paper):
//!
//! ```text
//! sum rule:    u_t = v_t
//! delta rule:  u_t = beta_t (v_t - S_{t-1}^T k_t)
//! both:        S_t = S_{t-1} + k_t u_t^T,   o_t = S_t^T q_t
//! ```
//!
//! `k` and `q` are the already feature-mapped (and, if used, sum-normalised) keys and queries.

mod chunked;
pub mod noncausal;
mod reference;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::check::{self, Dim};

pub use chunked::fast_weight_chunked;
pub use reference::fast_weight_reference;

/// How the fast weights are written (docs/derivations.md, D1-D3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateRule {
    /// `W_t = W_{t-1} + v_t k_t^T`: purely additive (linear attention).
    Sum,
    /// `W_t = W_{t-1} + beta_t (v_t - W_{t-1} k_t) k_t^T`: replaces the value stored under `k_t`.
    Delta,
}

crate::names::named_enum!(UpdateRule, "update rule", { Sum => "sum", Delta => "delta" });

/// Which implementation of the recurrence runs. All give the same numbers up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// The step-by-step recurrence as the paper writes it; gradients by libtorch autograd.
    /// Slow, O(T) small ops, but the ground truth every other backend is tested against.
    Reference,
    /// The chunkwise-parallel form (docs/derivations.md Sec. 5): matrix-matrix work inside chunks of
    /// `chunk_size` steps, a sequential pass over chunks only. Any T, also not a multiple of it.
    Chunked { chunk_size: i64 },
    /// Our kernels, whichever suits the inputs: [`Backend::FusedChunked`] on CUDA GPUs of sm_80 or
    /// newer for bf16, f16 and f32 inputs with d_k, d_v <= 256, and on the CPU for f32 inputs of
    /// the sizes where it measured faster ([`chunked_kernel_preferred`]); else
    /// [`Backend::FusedRecurrent`]. [`Backend::resolve`] names the one that runs.
    Fused,
    /// Our recurrent kernels (kernels/fast_weight*.{cpp,cu}): the recurrence in one pass with an
    /// explicit backward that walks chunks back from saved checkpoints (the CPU undoing each step,
    /// CUDA replaying the chunk; docs/derivations.md Sec. 6); CPU and CUDA, any float dtype.
    /// Registered as the libtorch ops `fwp::sum_rule` / `fwp::delta_rule`, so traced TorchScript
    /// records them. Reproducibility: the CPU kernels give the same bits on every run; on CUDA with
    /// d_v > 8 the blocks of a head's value columns add their shares of dq, dk and dβ atomically, in
    /// the order they finish, so those gradients can differ between runs in the last bits of the
    /// accumulation type (the chunked kernels have no atomics and give the same bits every run).
    FusedRecurrent,
    /// Our chunked kernels (kernels/chunked*.{h,cpp,cu}; docs/derivations.md Sec. 9): the chunkwise
    /// form in stages, chunks of 64 steps, an explicit backward that recomputes from one saved state
    /// per chunk. CPU: any float dtype, exact products, the CUDA kernels' twin (faster than the
    /// recurrent kernels only for large heads, docs/performance.md). CUDA: bf16 inputs with bf16
    /// tensor-core products, f16 and f32 inputs with each operand split into two and three bf16
    /// parts (f16 and f32 accuracy); checked on an H200, about 1.1-1.6x slower than
    /// flash-linear-attention there at d = 64 and 3x at d = 128 (docs/performance.md). Registered as the libtorch op `fwp::chunked_rule`. Non-finite inputs
    /// run the recurrent kernel instead, which keeps a NaN or infinity from reaching earlier steps.
    FusedChunked,
    /// `Fused` wherever one of our kernels takes the device, dtype and sizes, else
    /// `Chunked { chunk_size: 64 }`; [`Backend::resolve`] says which.
    #[default]
    Auto,
}

impl std::str::FromStr for Backend {
    type Err = anyhow::Error;
    /// `auto`, `fused`, `fused:recurrent`, `fused:chunked`, `reference`, `chunked` (64 steps per
    /// chunk) or `chunked:N`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Backend::Auto,
            "fused" => Backend::Fused,
            "fused:recurrent" => Backend::FusedRecurrent,
            "fused:chunked" => Backend::FusedChunked,
            "reference" => Backend::Reference,
            "chunked" => Backend::Chunked { chunk_size: 64 },
            _ => match s
                .strip_prefix("chunked:")
                .and_then(|n| n.parse::<i64>().ok())
            {
                Some(chunk_size) if chunk_size >= 1 => Backend::Chunked { chunk_size },
                _ => bail!(
                    "backend '{s}': expected auto, fused, fused:recurrent, fused:chunked, reference, \
                     chunked or chunked:N (N >= 1)"
                ),
            },
        })
    }
}

/// The name [`Backend::from_str`](std::str::FromStr) reads back: `fused:chunked`, `chunked:64`, ...
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Reference => write!(f, "reference"),
            Backend::Chunked { chunk_size } => write!(f, "chunked:{chunk_size}"),
            Backend::Fused => write!(f, "fused"),
            Backend::FusedRecurrent => write!(f, "fused:recurrent"),
            Backend::FusedChunked => write!(f, "fused:chunked"),
            Backend::Auto => write!(f, "auto"),
        }
    }
}

impl Backend {
    /// The backend that runs for inputs on `device` of dtype `kind`, with update rule `rule`, `t`
    /// steps and sizes `d_k`, `d_v`: `Auto` and `Fused` resolved to the kernel (`FusedRecurrent`,
    /// `FusedChunked`) or `Chunked`, the others as they are. For logs and the benchmark.
    pub fn resolve(
        self,
        device: Device,
        kind: Kind,
        rule: UpdateRule,
        t: i64,
        d_k: i64,
        d_v: i64,
    ) -> Backend {
        let chunked = chunked_kernel_preferred(device, kind, rule, t, d_k, d_v);
        match self {
            Backend::Auto | Backend::Fused if chunked => Backend::FusedChunked,
            Backend::Fused => Backend::FusedRecurrent,
            Backend::Auto if fused_supported(device, kind, d_k, d_v) => Backend::FusedRecurrent,
            Backend::Auto => Backend::Chunked { chunk_size: 64 },
            other => other,
        }
    }
}

/// Whether the recurrent kernels ([`Backend::FusedRecurrent`]) take these inputs: any size on CPU;
/// on CUDA when the kernels were compiled in and d_k fits the device's shared memory.
pub fn fused_supported(device: Device, kind: Kind, d_k: i64, d_v: i64) -> bool {
    match device {
        Device::Cpu => check::is_float(kind),
        Device::Cuda(i) => {
            check::is_float(kind)
                && crate::ops::built_with_cuda()
                && crate::ops::fused_cuda_max_dk(i, d_v, kind).is_ok_and(|max| d_k <= max)
        }
        _ => false,
    }
}

/// The largest d_k and d_v for which [`Backend::Fused`] picks the chunked kernels on CUDA.
pub const CHUNKED_KERNEL_MAX_D: i64 = 256;

/// The longest sequence the chunked CUDA kernels take: 65535 chunks (a grid dimension) of 64 steps.
pub const CHUNKED_KERNEL_MAX_T: i64 = 65535 * CHUNKED_KERNEL_CHUNK;

/// Whether [`Backend::Fused`] runs the chunked kernels rather than the recurrent ones.
///
/// CUDA: on a GPU they run on (sm_80 or newer), for bf16, f16 and f32 inputs with d_k, d_v <=
/// [`CHUNKED_KERNEL_MAX_D`] and T <= [`CHUNKED_KERNEL_MAX_T`]: tensor cores against CUDA cores.
///
/// CPU: the chunked twin does the recurrence's work plus its chunk-level products as BLAS-3, the
/// recurrent kernel only the recurrence's work as vector FMAs; which is faster depends on d_k d_v,
/// the rule and how fast the CPU multiplies matrices. From measured timings (docs/performance.md)
/// the twin is picked for f32 inputs with at least [`CPU_CHUNKED_MIN_T`] steps and d_k d_v at
/// least [`cpu_chunked_min_size`] for this [`CpuClass`] (the sum rule on some CPUs only); below
/// that, for the delta rule, and for other dtypes, the recurrent kernel.
pub fn chunked_kernel_preferred(
    device: Device,
    kind: Kind,
    rule: UpdateRule,
    t: i64,
    d_k: i64,
    d_v: i64,
) -> bool {
    match device {
        Device::Cuda(i) => {
            crate::ops::Operands::for_cuda(kind).is_some()
                && d_k <= CHUNKED_KERNEL_MAX_D
                && d_v <= CHUNKED_KERNEL_MAX_D
                && t <= CHUNKED_KERNEL_MAX_T
                && crate::ops::chunked_cuda_runs_on(i)
        }
        Device::Cpu => {
            kind == Kind::Float
                && t >= CPU_CHUNKED_MIN_T
                && cpu_chunked_min_size(rule, CpuClass::this_cpu())
                    .is_some_and(|min| d_k * d_v >= min)
        }
        _ => false,
    }
}

/// On the CPU the chunked twin pads T to whole chunks of 64 steps; from 256 steps on that costs at
/// most a quarter more (the crossovers were measured at T = 256 and 1024), while a short sequence,
/// such as a T = 1 decoding step, would pay for a whole chunk.
pub const CPU_CHUNKED_MIN_T: i64 = 256;

/// The smallest d_k d_v from which the chunked twin was faster than the recurrent kernel on the CPU,
/// counting forward alone and forward + backward at T = 256 and 1024 (f32, B = 2, H = 4, 2 threads),
/// in at least three of those four timings; `None` where it was faster at no measured size (up to
/// 256 x 256). docs/performance.md, "Which CPU kernel `Fused` runs", has the twin / recurrent time
/// ratios (forward; forward + backward):
///
/// | rule | [`CpuClass::IntelAvx512`] | [`CpuClass::OtherAvx512`] | [`CpuClass::IntelNoAvx512`] | [`CpuClass::OtherNoAvx512`] |
/// |---|---|---|---|---|
/// | sum | 192 x 192 (0.87-1.04; 0.70-0.79) | none (at 256 x 256: 1.34-1.63; 1.25-1.31) | 256 x 256 (0.68-1.37; 0.58-0.74) | none (at 256 x 256: 1.61-1.89; 0.97-1.08) |
/// | delta | none (at 256 x 256: 0.76-1.23; 1.12-1.16) | none (1.04-1.79; 1.80-2.11) | none (1.38-1.82; 1.40-1.50) | none (1.88-2.14; 1.85-2.03) |
///
/// [`CpuClass::NotX86`] was not measured and takes the Intel no-AVX-512 row.
pub fn cpu_chunked_min_size(rule: UpdateRule, cpu: CpuClass) -> Option<i64> {
    match (rule, cpu) {
        (UpdateRule::Sum, CpuClass::IntelAvx512) => Some(192 * 192),
        (UpdateRule::Sum, CpuClass::IntelNoAvx512 | CpuClass::NotX86) => Some(256 * 256),
        (UpdateRule::Sum, CpuClass::OtherAvx512 | CpuClass::OtherNoAvx512)
        | (UpdateRule::Delta, _) => None,
    }
}

/// The kinds of CPU whose kernel crossovers were measured ([`cpu_chunked_min_size`]). What
/// decides is how fast MKL's matrix products run against the recurrent kernel's vector loops, and
/// AVX-512 alone does not settle it: the Intel cores measured have two 512-bit FMA units, while
/// AMD's Zen 4 runs 512-bit FMAs on 256-bit units, where the recurrent kernel kept the lead at
/// every size, with AVX-512 and held to AVX2 alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuClass {
    /// AVX-512 on an Intel CPU (measured: a Xeon of the Sapphire/Emerald Rapids class).
    IntelAvx512,
    /// AVX-512 on any other CPU (measured: an AMD EPYC of the Zen 4 generation).
    OtherAvx512,
    /// An Intel CPU without AVX-512 (measured: the Intel Xeon with MKL, ATen and the recurrent
    /// kernel held to AVX2).
    IntelNoAvx512,
    /// An x86-64 CPU of another vendor without AVX-512 (measured: the AMD Zen 4 with MKL, ATen and
    /// the recurrent kernel held to AVX2, standing in for AMD's AVX2 generations).
    OtherNoAvx512,
    /// Not x86-64 (not measured).
    NotX86,
}

impl CpuClass {
    pub const ALL: [CpuClass; 5] = [
        CpuClass::IntelAvx512,
        CpuClass::OtherAvx512,
        CpuClass::IntelNoAvx512,
        CpuClass::OtherNoAvx512,
        CpuClass::NotX86,
    ];

    /// The class of the CPU this process runs on (CPUID's vendor and AVX-512F), read once: under
    /// a hypervisor CPUID traps, and `Backend::resolve` asks on every call.
    pub fn this_cpu() -> CpuClass {
        static CLASS: std::sync::OnceLock<CpuClass> = std::sync::OnceLock::new();
        *CLASS.get_or_init(Self::detect)
    }

    fn detect() -> CpuClass {
        #[cfg(target_arch = "x86_64")]
        {
            // leaf 0: the vendor string in ebx, edx, ecx
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            let intel = vendor == b"GenuineIntel";
            match (intel, std::arch::is_x86_feature_detected!("avx512f")) {
                (true, true) => CpuClass::IntelAvx512,
                (false, true) => CpuClass::OtherAvx512,
                (true, false) => CpuClass::IntelNoAvx512,
                (false, false) => CpuClass::OtherNoAvx512,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuClass::NotX86
        }
    }
}

/// The chunk length of [`Backend::FusedChunked`] (the CUDA design's tile).
pub const CHUNKED_KERNEL_CHUNK: i64 = 64;

/// Whether every given tensor is finite, from one sum of each (a sum is NaN or infinite whenever
/// one of its terms is; a finite input whose sum overflows only takes the careful path).
pub(crate) fn inputs_finite(tensors: &[Option<&Tensor>]) -> Result<bool> {
    tch::no_grad(|| {
        for t in tensors.iter().flatten() {
            if !f64::try_from(t.f_sum(Kind::Double)?)?.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Result of [`fast_weight`].
#[derive(Debug)]
pub struct FastWeightOutput {
    /// `o_t = S_t^T q_t`, shape `[B, H, T, d_v]`, dtype of the inputs.
    pub out: Tensor,
    /// The state after the last step, `S_T`, shape `[B, H, d_k, d_v]`, dtype of the inputs.
    pub state: Tensor,
}

/// Runs the causal fast-weight recurrence.
///
/// * `q`, `k`: `[B, H, T, d_k]` mapped queries and keys;
/// * `v`: `[B, H, T, d_v]` values;
/// * `beta`: `[B, H, T]` write strengths in (0, 1); required by [`UpdateRule::Delta`], and must be
///   `None` for [`UpdateRule::Sum`], which has none;
/// * `initial`: optional `[B, H, d_k, d_v]` state `S_0` (zeros when `None`).
///
/// All tensors share one floating dtype and one device. Half-precision inputs are computed with
/// an f32 state (and f32 arithmetic) and cast back. Gradients reach every input, the initial state included.
pub fn fast_weight(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
    rule: UpdateRule,
    backend: Backend,
) -> Result<FastWeightOutput> {
    let dims = validate(q, k, v, beta, initial, rule)?;
    if let Backend::Chunked { chunk_size } = backend {
        check::positive("chunk_size", chunk_size)?;
    }
    if dims.t == 0 {
        bail!("q: the sequence is empty (T = 0); need at least one step");
    }
    let kind = q.f_kind()?;
    let backend = backend.resolve(q.device(), kind, rule, dims.t, dims.d_k, dims.d_v);
    if backend == Backend::FusedChunked
        && inputs_finite(&[Some(q), Some(k), Some(v), beta, initial])?
    {
        // The CPU twin multiplies exactly; the CUDA kernels multiply bf16 parts on tensor cores.
        let operands = match q.device() {
            Device::Cpu => crate::ops::Operands::Exact,
            device => match crate::ops::Operands::for_cuda(kind) {
                Some(operands) => operands,
                None => bail!(
                    "backend fused:chunked: on {device:?} the chunked kernels take bf16, f16 or f32 \
                     inputs, got {kind:?}; use fused or auto (the recurrent kernel takes it)"
                ),
            },
        };
        let (out, state) = crate::ops::fast_weight_chunked_kernel(
            q,
            k,
            v,
            beta,
            initial,
            CHUNKED_KERNEL_CHUNK,
            operands,
        )?;
        return Ok(FastWeightOutput {
            out,
            state: state.f_to_kind(kind)?,
        });
    }
    if matches!(backend, Backend::FusedRecurrent | Backend::FusedChunked) {
        let (out, state) = crate::ops::fast_weight_fused(q, k, v, beta, initial)?;
        return Ok(FastWeightOutput {
            out,
            state: state.f_to_kind(kind)?,
        });
    }
    let compute = match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        other => other,
    };
    let up = |t: &Tensor| t.f_to_kind(compute);
    let (q32, k32, v32) = (up(q)?, up(k)?, up(v)?);
    let beta32 = beta.map(up).transpose()?;
    let init32 = initial.map(up).transpose()?;
    let inputs = Inputs {
        q: &q32,
        k: &k32,
        v: &v32,
        beta: beta32.as_ref(),
        initial: init32.as_ref(),
        dims,
        rule,
    };
    let result = match backend {
        Backend::Reference => fast_weight_reference(&inputs)?,
        Backend::Chunked { chunk_size } => fast_weight_chunked(&inputs, chunk_size)?,
        Backend::Fused | Backend::FusedRecurrent | Backend::FusedChunked | Backend::Auto => {
            unreachable!("resolved above")
        }
    };
    Ok(FastWeightOutput {
        out: result.out.f_to_kind(kind)?,
        state: result.state.f_to_kind(kind)?,
    })
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: i64,
    pub h: i64,
    pub t: i64,
    pub d_k: i64,
    pub d_v: i64,
}

/// Checked inputs, already in the compute dtype, handed to a backend.
pub struct Inputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub beta: Option<&'a Tensor>,
    pub initial: Option<&'a Tensor>,
    pub dims: Dims,
    pub rule: UpdateRule,
}

impl Inputs<'_> {
    /// `S_0`: the initial state or zeros, `[B, H, d_k, d_v]`.
    fn initial_state(&self) -> Result<Tensor> {
        let Dims { b, h, d_k, d_v, .. } = self.dims;
        Ok(match self.initial {
            Some(s) => s.shallow_clone(),
            None => Tensor::f_zeros([b, h, d_k, d_v], (self.q.kind(), self.q.device()))?,
        })
    }

    fn beta(&self) -> Result<&Tensor> {
        self.beta
            .ok_or_else(|| anyhow::anyhow!("beta: required by the delta rule"))
    }
}

fn validate(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    initial: Option<&Tensor>,
    rule: UpdateRule,
) -> Result<Dims> {
    let qs = check::shape(
        "q",
        q,
        &[
            Dim("B", None),
            Dim("H", None),
            Dim("T", None),
            Dim("d_k", None),
        ],
    )?;
    let (b, h, t, d_k) = (qs[0], qs[1], qs[2], qs[3]);
    check::float_like("q", q, None)?;
    check::shape(
        "k",
        k,
        &[
            Dim("B", Some(b)),
            Dim("H", Some(h)),
            Dim("T", Some(t)),
            Dim("d_k", Some(d_k)),
        ],
    )?;
    check::float_like("k", k, Some(("q", q)))?;
    let vs = check::shape(
        "v",
        v,
        &[
            Dim("B", Some(b)),
            Dim("H", Some(h)),
            Dim("T", Some(t)),
            Dim("d_v", None),
        ],
    )?;
    check::float_like("v", v, Some(("q", q)))?;
    let d_v = vs[3];
    if d_k == 0 || d_v == 0 {
        bail!("q, v: feature sizes must be positive, got d_k = {d_k}, d_v = {d_v}");
    }
    match (rule, beta) {
        (UpdateRule::Delta, None) => {
            bail!("beta: the delta rule needs beta of shape [B, H, T] = [{b}, {h}, {t}]")
        }
        (UpdateRule::Sum, Some(_)) => {
            bail!("beta: the sum rule takes no beta; pass None (or use UpdateRule::Delta)")
        }
        (UpdateRule::Delta, Some(beta)) => {
            check::shape(
                "beta",
                beta,
                &[Dim("B", Some(b)), Dim("H", Some(h)), Dim("T", Some(t))],
            )?;
            check::float_like("beta", beta, Some(("q", q)))?;
        }
        (UpdateRule::Sum, None) => {}
    }
    if let Some(s) = initial {
        check::shape(
            "initial state",
            s,
            &[
                Dim("B", Some(b)),
                Dim("H", Some(h)),
                Dim("d_k", Some(d_k)),
                Dim("d_v", Some(d_v)),
            ],
        )?;
        check::float_like("initial state", s, Some(("q", q)))?;
    }
    Ok(Dims { b, h, t, d_k, d_v })
}
