//! The non-causal fast-weight memory, for encoders and cross-attention (docs/derivations.md
//! Sec. 10): every key/value pair of a sequence is written into one fast weight matrix with the
//! sum rule, W = sum_j v_j phi(k_j)^T (paper Eq. 4 summed over the whole sequence), and every
//! query reads it, y_i = W phi(q_i). Keys at padded positions are left out (`mask`).
//!
//! Two forms give the same numbers up to rounding: the fast-weight form builds W once
//! (O(T d_k d_v)), the reference form weighs each value by phi(q_i) . phi(k_j) (O(T^2), the
//! attention matrix of linear attention).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::Backend;

fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<()> {
    let (qs, ks, vs) = (q.size(), k.size(), v.size());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        bail!("non-causal fast weights: q, k, v must be [B, H, T, d], got {qs:?}, {ks:?}, {vs:?}");
    }
    if qs[..2] != ks[..2] || ks[..3] != vs[..3] || qs[3] != ks[3] {
        bail!(
            "non-causal fast weights: q {qs:?}, k {ks:?}, v {vs:?} do not fit: q [B, H, T_q, d_k], \
             k [B, H, T_k, d_k], v [B, H, T_k, d_v]"
        );
    }
    if let Some(m) = mask {
        if m.size() != [ks[0], ks[2]] {
            bail!(
                "non-causal fast weights: mask {:?} must be [B, T_k] = [{}, {}]",
                m.size(),
                ks[0],
                ks[2]
            );
        }
    }
    Ok(())
}

/// The keys with padded positions zeroed: `mask` `[B, T_k]` (true or 1 where a key takes part).
pub fn masked_keys(k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(match mask {
        None => k.shallow_clone(),
        Some(m) => k.f_mul(&m.f_to_kind(k.kind())?.f_unsqueeze(1)?.f_unsqueeze(-1)?)?,
    })
}

/// The fast weight matrix (transposed) of a whole sequence, W^T = sum_j phi(k_j) v_j^T:
/// k `[B, H, T_k, d_k]`, v `[B, H, T_k, d_v]` -> `[B, H, d_k, d_v]`.
pub fn write_all(k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(masked_keys(k, mask)?.f_transpose(-2, -1)?.f_matmul(v)?)
}

/// y_i = W phi(q_i) for every query: q `[B, H, T_q, d_k]`, k `[B, H, T_k, d_k]`,
/// v `[B, H, T_k, d_v]`, mask `[B, T_k]` -> `[B, H, T_q, d_v]`. `Reference` computes the T_q x
/// T_k weights; every other backend the fast weight matrix.
pub fn fast_weight_noncausal(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    backend: Backend,
) -> Result<Tensor> {
    check(q, k, v, mask)?;
    match backend {
        Backend::Reference => {
            let a = q.f_matmul(&masked_keys(k, mask)?.f_transpose(-2, -1)?)?; // [B, H, T_q, T_k]
            Ok(a.f_matmul(v)?)
        }
        _ => Ok(q.f_matmul(&write_all(k, v, mask)?)?),
    }
}

/// The key sum of a whole sequence for attention normalisation, z = sum_j phi(k_j):
/// `[B, H, T_k, d_k]` -> `[B, H, d_k]`.
pub fn key_sum(k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(masked_keys(k, mask)?.f_sum_dim_intlist([2i64].as_slice(), false, None::<Kind>)?)
}
