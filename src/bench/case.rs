//! One benchmark configuration and its FLOP model.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::recurrence::{Backend, UpdateRule};

/// What is timed: the fast-weight op through one backend, or causal softmax attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `Backend::Reference`: the step loop with autograd.
    Reference,
    /// `Backend::Chunked` with [`Case::chunk`] steps per chunk.
    Chunked,
    /// `Backend::FusedRecurrent`: the C++/CUDA kernels of the recurrent form.
    Fused,
    /// `Backend::FusedChunked`: the chunked kernels (tensor cores on CUDA, the twin on CPU).
    FusedChunked,
    /// libtorch's `scaled_dot_product_attention`, causal.
    Softmax,
}

crate::names::named_enum!(Op, "op", {
    Reference => "reference",
    Chunked => "chunked",
    Fused => "fused",
    FusedChunked => "fused-chunked",
    Softmax => "softmax",
});

/// Input dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
    F64,
}

crate::names::named_enum!(DType, "dtype", { F32 => "f32", Bf16 => "bf16", F16 => "f16", F64 => "f64" });

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
            DType::F64 => Kind::Double,
        }
    }
}

/// One configuration: q, k `[B, H, T, d_k]`, v `[B, H, T, d_v]`, beta `[B, H, T]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub op: Op,
    /// The update rule; `None` for softmax attention.
    pub rule: Option<UpdateRule>,
    /// Steps per chunk of the Chunked backend; `None` for the others.
    pub chunk: Option<i64>,
    pub batch: i64,
    pub heads: i64,
    pub t: i64,
    pub d_k: i64,
    pub d_v: i64,
    pub dtype: DType,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

impl Case {
    /// The series this case belongs to in tables and plots, e.g. `fused delta`, `chunked(64) sum`.
    pub fn label(&self) -> String {
        let op = match (self.op, self.chunk) {
            (Op::Chunked, Some(c)) => format!("chunked({c})"),
            (op, _) => op.to_string(),
        };
        match self.rule {
            Some(rule) => format!("{op} {rule}"),
            None => op,
        }
    }

    /// The fast-weight backend, or `None` for softmax attention.
    pub fn backend(&self) -> Option<Backend> {
        match self.op {
            Op::Reference => Some(Backend::Reference),
            Op::Chunked => Some(Backend::Chunked {
                chunk_size: self.chunk.unwrap_or(64),
            }),
            Op::Fused => Some(Backend::FusedRecurrent),
            Op::FusedChunked => Some(Backend::FusedChunked),
            Op::Softmax => None,
        }
    }

    /// Heads times tokens: the number of (batch, head, step) the op processes.
    pub fn head_tokens(&self) -> f64 {
        (self.batch * self.heads * self.t) as f64
    }

    /// Model FLOPs of (forward, backward).
    ///
    /// Fast weights, whatever the backend (docs/derivations.md Sec. 7, recurrent form, with d^2 = d_k d_v):
    /// sum rule 4 and 8, delta rule 6 and 12 d_k d_v per head-token. This is the work the
    /// recurrence needs, so rates are comparable across backends; the chunked form executes more
    /// (10 C d + 6 d^2 + C^2/3 forward for the delta rule) and the fused backward also replays
    /// the forward on CUDA (4 d_k d_v more) or undoes each step on the CPU (2 d_k d_v more).
    /// Softmax, causal: QK^T and PV over the lower triangle, T (d_k + d_v) per head-token forward,
    /// and 2.5 times that backward (five matmuls against two, the usual convention).
    pub fn model_flops(&self) -> (f64, f64) {
        let n = self.head_tokens();
        let dd = (self.d_k * self.d_v) as f64;
        match (self.op, self.rule) {
            (Op::Softmax, _) => {
                let fwd = n * self.t as f64 * (self.d_k + self.d_v) as f64;
                (fwd, 2.5 * fwd)
            }
            (_, Some(UpdateRule::Delta)) => (6.0 * dd * n, 12.0 * dd * n),
            _ => (4.0 * dd * n, 8.0 * dd * n),
        }
    }

    /// Validates sizes and the op / rule / chunk combination (not the device, which need not be
    /// present where a grid is only expanded or reported).
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("t", self.t),
            ("d_k", self.d_k),
            ("d_v", self.d_v),
        ] {
            crate::check::positive(name, v)?;
        }
        match (self.op, self.rule) {
            (Op::Softmax, Some(_)) => bail!("softmax attention takes no update rule"),
            (Op::Softmax, None) => {}
            (op, None) => bail!("{op} needs an update rule (sum or delta)"),
            _ => {}
        }
        if let Some(c) = self.chunk {
            if self.op != Op::Chunked {
                bail!(
                    "a chunk size is only meaningful for the chunked backend, not {}",
                    self.op
                );
            }
            crate::check::positive("chunk", c)?;
        }
        Ok(())
    }
}
