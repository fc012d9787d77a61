//! Normalisations of the fast-weight layer (docs/derivations.md Sec. 2). Two different things:
//! attention normalisation divides the output by z_t . phi(q_t), z_t = sum_{i<=t} phi(k_i);
//! sum normalisation divides each feature vector by the sum of its entries.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::recurrence::Backend;

/// Which normalisation the fast-weight layer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalisation {
    /// Raw y_t = W_t phi(q_t).
    None,
    /// Katharopoulos et al.: y_t = W_t phi(q_t) / (z_t . phi(q_t) + eps). Sum rule only.
    Attention,
    /// The paper's: keys and queries become phi(x) / (sum_j phi(x)_j + eps) before the update and
    /// the retrieval (the paper's choice for the delta rule).
    Sum,
    /// Sum normalisation of keys and queries, then attention normalisation of the output.
    /// Sum rule only.
    SumAndAttention,
}

impl std::str::FromStr for Normalisation {
    type Err = anyhow::Error;
    /// `none`, `attention`, `sum` or `sum-and-attention`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Normalisation::None,
            "attention" => Normalisation::Attention,
            "sum" => Normalisation::Sum,
            "sum-and-attention" => Normalisation::SumAndAttention,
            _ => anyhow::bail!(
                "normalisation '{s}': expected none, attention, sum or sum-and-attention"
            ),
        })
    }
}

impl Normalisation {
    pub fn sum_normalises(&self) -> bool {
        matches!(self, Normalisation::Sum | Normalisation::SumAndAttention)
    }
    pub fn attention_normalises(&self) -> bool {
        matches!(
            self,
            Normalisation::Attention | Normalisation::SumAndAttention
        )
    }
}

/// Reference twin of [`crate::ops::sum_norm`]: `x / (sum_j x_j + eps)` over the last dimension,
/// in plain libtorch ops (autograd by libtorch).
pub fn sum_normalise_reference(x: &Tensor, eps: f64) -> Result<Tensor> {
    let s = x.f_sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>)?;
    Ok(x.f_div(&(s + eps))?)
}

/// Sum normalisation as a layer with `backend` uses it: the reference twin for `Reference` and
/// `Chunked`, which stay free of custom ops end to end (so a model traced with them loads in plain
/// PyTorch), the C++ op with `Fused`, `FusedRecurrent`, `FusedChunked` and `Auto`.
pub fn sum_normalise(x: &Tensor, eps: f64, backend: Backend) -> Result<Tensor> {
    match backend {
        Backend::Reference | Backend::Chunked { .. } => sum_normalise_reference(x, eps),
        Backend::Fused | Backend::FusedRecurrent | Backend::FusedChunked | Backend::Auto => {
            crate::ops::sum_norm(x, eps)
        }
    }
}

/// Attention normalisation: `out / (z_t . q_t + eps)` with `z_t = sum_{i<=t} k_i`.
/// q, k `[B, H, T, d_k]`, out `[B, H, T, d_v]`; `z_0` is the optional carried-over key sum
/// `[B, H, d_k]`. Returns the normalised output and `z_T`.
pub fn attention_normalise(
    out: &Tensor,
    q: &Tensor,
    k: &Tensor,
    z0: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let mut z = k.f_cumsum(2, None::<Kind>)?; // z_t: [B, H, T, d_k]
    if let Some(z0) = z0 {
        z = z + z0.f_unsqueeze(2)?;
    }
    let denom = (&z * q).f_sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>)? + eps; // [B, H, T, 1]
    let z_last = z.f_select(2, -1)?;
    Ok((out.f_div(&denom)?, z_last))
}
