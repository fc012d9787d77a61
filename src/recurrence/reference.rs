//! `Backend::Reference`: the recurrence one step at a time, exactly as written in
//! docs/derivations.md (D1)-(D3), differentiated by libtorch autograd. The ground truth for every fast path.

use anyhow::Result;
use tch::Tensor;

use super::{FastWeightOutput, Inputs, UpdateRule};

pub fn fast_weight_reference(x: &Inputs) -> Result<FastWeightOutput> {
    let mut s = x.initial_state()?; // S_0: [B, H, d_k, d_v]
    let mut outs = Vec::with_capacity(x.dims.t as usize);
    // T slices each (unbind: one backward node, not one full-size gradient per step)
    let (ks, vs, qs) = (x.k.f_unbind(2)?, x.v.f_unbind(2)?, x.q.f_unbind(2)?);
    let betas = match x.rule {
        UpdateRule::Delta => x.beta()?.f_unbind(2)?,
        UpdateRule::Sum => Vec::new(),
    };
    for t in 0..x.dims.t as usize {
        let (k_t, v_t, q_t) = (&ks[t], &vs[t], &qs[t]); // [B, H, d_k], [B, H, d_v], [B, H, d_k]
        let u_t = match x.rule {
            UpdateRule::Sum => v_t.shallow_clone(),
            UpdateRule::Delta => {
                let beta_t = betas[t].f_unsqueeze(-1)?; // [B, H, 1]
                let v_bar = Tensor::f_einsum("bhkv,bhk->bhv", &[&s, k_t], None::<i64>)?; // S^T k: [B, H, d_v]
                beta_t * (v_t - v_bar)
            }
        };
        // S_t = S_{t-1} + k_t u_t^T
        s = s + k_t.f_unsqueeze(-1)?.f_matmul(&u_t.f_unsqueeze(-2)?)?;
        // o_t = S_t^T q_t, retrieval with the updated state
        outs.push(Tensor::f_einsum("bhkv,bhk->bhv", &[&s, q_t], None::<i64>)?);
    }
    Ok(FastWeightOutput {
        out: Tensor::f_stack(&outs, 2)?,
        state: s,
    })
}
