//! `Backend::Chunked`: the chunkwise-parallel form of the recurrence (docs/derivations.md Sec. 5; Yang et
//! al. 2024, the WY/UT representation of products of Householder-like transitions).
//!
//! For a chunk of C steps with keys K, queries Q (C x d_k), values V (C x d_v), write strengths
//! beta (C) and entering state S:
//!
//! ```text
//! A  = tril(diag(beta) K K^T, -1)          strictly lower, C x C
//! T  = (I + A)^{-1} diag(beta)             lower triangular (triangular solve)
//! W  = T K,  U = T V
//! U' = U - W S                             row r = u_r of the recurrence
//! O  = Q S + tril(Q K^T) U'                tril including the diagonal
//! S' = S + K^T U'
//! ```
//!
//! The sum rule is the special case U' = V. Everything but the S pass is batched over all chunks.
//! T is padded with zero steps to a multiple of C: a zero key writes nothing, so the state and
//! the real outputs are unchanged; the padded outputs are dropped.
//!
//! Non-finite inputs stay causal, as in the step-by-step recurrence: the masked product
//! tril(Q K^T) U' would multiply the zeros above the diagonal by a later infinite row of U' and
//! spread 0 · ∞ = NaN to earlier steps of the chunk. When an input is NaN or infinite (one sum of
//! each input tells), the product runs on U' with its non-finite entries zeroed and the outputs
//! from the first non-finite entry of each column on are set to NaN; finite inputs take the plain
//! product.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::{FastWeightOutput, Inputs, UpdateRule};

pub fn fast_weight_chunked(x: &Inputs, chunk_size: i64) -> Result<FastWeightOutput> {
    let d = x.dims;
    let c = chunk_size.min(d.t);
    let n = (d.t + c - 1) / c; // number of chunks
    let pad = n * c - d.t;
    // [B, H, T, d] -> [B, H, N, C, d]
    let chunks = |t: &Tensor, width: i64| -> Result<Tensor> {
        Ok(t.f_constant_pad_nd([0, 0, 0, pad])?
            .f_reshape([d.b, d.h, n, c, width])?)
    };
    let finite = inputs_finite(x)?;
    let q = chunks(x.q, d.d_k)?;
    let k = chunks(x.k, d.d_k)?;
    let v = chunks(x.v, d.d_v)?;

    // Within-chunk causal scores, tril(Q K^T): [B, H, N, C, C]
    let qk = q.f_matmul(&k.f_transpose(-1, -2)?)?.f_tril(0)?;
    // Delta rule: W = T K and U = T V with T = (I + A)^{-1} diag(beta); sum rule: U = V, no W.
    let (w, u) = match x.rule {
        UpdateRule::Sum => (None, v),
        UpdateRule::Delta => {
            let beta = x
                .beta()?
                .f_constant_pad_nd([0, pad])?
                .f_reshape([d.b, d.h, n, c, 1])?;
            let a = (&beta * k.f_matmul(&k.f_transpose(-1, -2)?)?).f_tril(-1)?; // [B, H, N, C, C]
            let eye = Tensor::f_eye(c, (a.kind(), a.device()))?;
            let i_plus_a = a + eye;
            // (I + A) [W | U] = diag(beta) [K | V], solved by forward substitution
            let rhs = Tensor::f_cat(&[&beta * &k, &beta * &v], -1)?;
            let wu = i_plus_a.f_linalg_solve_triangular(&rhs, false, true, true)?;
            let w = wu.f_narrow(-1, 0, d.d_k)?; // [B, H, N, C, d_k]
            let u = wu.f_narrow(-1, d.d_k, d.d_v)?; // [B, H, N, C, d_v]
            (Some(w), u)
        }
    };

    // Split once: one backward node for all chunks (a select per chunk would make the backward
    // allocate a full-size gradient per chunk, quadratic in T).
    let (q, k, u, qk) = (
        q.f_unbind(2)?,
        k.f_unbind(2)?,
        u.f_unbind(2)?,
        qk.f_unbind(2)?,
    ); // N x [B, H, C, .]
    let w = w.map(|w| w.f_unbind(2)).transpose()?;
    let mut s = x.initial_state()?; // [B, H, d_k, d_v]
    let mut outs = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // U' = U - W S (delta rule); U' = V (sum rule): [B, H, C, d_v]
        let u_i = match &w {
            None => u[i].shallow_clone(),
            Some(w) => &u[i] - w[i].f_matmul(&s)?,
        };
        // O = Q S + tril(Q K^T) U'
        let intra = if finite {
            qk[i].f_matmul(&u_i)?
        } else {
            causal_product(&qk[i], &u_i)?
        };
        outs.push(q[i].f_matmul(&s)? + intra);
        // S' = S + K^T U'
        s = s + k[i].f_transpose(-1, -2)?.f_matmul(&u_i)?;
    }
    let out = Tensor::f_stack(&outs, 2)?
        .f_reshape([d.b, d.h, n * c, d.d_v])?
        .f_narrow(2, 0, d.t)?;
    Ok(FastWeightOutput { out, state: s })
}

fn inputs_finite(x: &Inputs) -> Result<bool> {
    super::inputs_finite(&[Some(x.q), Some(x.k), Some(x.v), x.beta, x.initial])
}

/// `a u` for a lower-triangular `a` `[.., C, C]` (zeros above the diagonal) and `u` `[.., C, d_v]`,
/// such that a non-finite entry of `u` reaches only the rows at and after its own: the product of
/// `u` with its non-finite entries zeroed, NaN from each column's first non-finite entry on.
fn causal_product(a: &Tensor, u: &Tensor) -> Result<Tensor> {
    let finite = u.f_isfinite()?;
    let out = a.f_matmul(&u.f_where_scalarother(&finite, 0.0)?)?;
    // reached[r, m]: some row <= r of column m is non-finite
    let reached = finite.f_logical_not()?.f_cumsum(-2, Kind::Int64)?.f_gt(0)?;
    Ok(out.f_masked_fill(&reached, f64::NAN)?)
}
