//! `Backend::Reference`: the recurrence one step at a time, exactly as written in paper.md
//! Sec. 1 and 3, differentiated by libtorch autograd. The ground truth for every fast path.

use anyhow::Result;
use tch::Tensor;

use super::{FastWeightOutput, Inputs, UpdateRule};

pub fn fast_weight_reference(x: &Inputs) -> Result<FastWeightOutput> {
    let mut s = x.initial_state()?; // S_0: [B, H, d_k, d_v]
    let mut outs = Vec::with_capacity(x.dims.t as usize);
    for t in 0..x.dims.t {
        let k_t = x.k.f_select(2, t)?; // [B, H, d_k]
        let v_t = x.v.f_select(2, t)?; // [B, H, d_v]
        let q_t = x.q.f_select(2, t)?; // [B, H, d_k]
        let u_t = match x.rule {
            UpdateRule::Sum => v_t,
            UpdateRule::Delta => {
                let beta_t = x.beta()?.f_select(2, t)?.f_unsqueeze(-1)?; // [B, H, 1]
                let v_bar = Tensor::f_einsum("bhkv,bhk->bhv", &[&s, &k_t], None::<i64>)?; // S^T k: [B, H, d_v]
                beta_t * (v_t - v_bar)
            }
        };
        // S_t = S_{t-1} + k_t u_t^T
        s = s + k_t.f_unsqueeze(-1)?.f_matmul(&u_t.f_unsqueeze(-2)?)?;
        // o_t = S_t^T q_t, retrieval with the updated state
        outs.push(Tensor::f_einsum("bhkv,bhk->bhv", &[&s, &q_t], None::<i64>)?);
    }
    Ok(FastWeightOutput {
        out: Tensor::f_stack(&outs, 2)?,
        state: s,
    })
}
