//! The Transformer block: attention and a feed-forward net, each in a residual branch with
//! LayerNorm after the sum (post-LN, as the authors' language models; docs/lm.md) or before the branch
//! (pre-LN).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{AttentionConfig, FastWeightState, MultiHeadAttention, StepCache};
use crate::param::{LayerNorm, Linear, ParamInit};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerNormPlacement {
    /// x = LN(x + f(x)), as in the paper's LM toolkit.
    #[default]
    Post,
    /// x = x + f(LN(x)).
    Pre,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockConfig {
    pub attention: AttentionConfig,
    pub d_ff: i64,
    /// Dropout on each residual branch's output and inside the feed-forward net.
    pub dropout: f64,
    pub layer_norm: LayerNormPlacement,
}

#[derive(Debug)]
pub struct Block {
    pub cfg: BlockConfig,
    attn: MultiHeadAttention,
    ln_attn: LayerNorm,
    ln_ff: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl Block {
    pub fn new(p: nn::Path, cfg: BlockConfig) -> Result<Self> {
        Self::with_init(p, cfg, ParamInit::Framework)
    }

    /// [`Block::new`] with every linear layer and LayerNorm started by `init`.
    pub fn with_init(p: nn::Path, cfg: BlockConfig, init: ParamInit) -> Result<Self> {
        crate::check::positive("d_ff", cfg.d_ff)?;
        let d = cfg.attention.d_model;
        Ok(Block {
            cfg,
            attn: MultiHeadAttention::with_init(&p / "attn", cfg.attention, init)?,
            ln_attn: init.layer_norm(&(&p / "ln_attn"), d)?,
            ln_ff: init.layer_norm(&(&p / "ln_ff"), d)?,
            ff_in: init.linear(&(&p / "ff_in"), d, cfg.d_ff, true)?,
            ff_out: init.linear(&(&p / "ff_out"), cfg.d_ff, d, true)?,
        })
    }

    fn feed_forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        feed_forward(&self.ff_in, &self.ff_out, self.cfg.dropout, x, train)
    }

    /// x `[B, T, d_model]` -> `[B, T, d_model]`, and the attention's carried state.
    pub fn forward_t(
        &self,
        x: &Tensor,
        state: Option<&FastWeightState>,
        train: bool,
    ) -> Result<(Tensor, Option<FastWeightState>)> {
        let (p, placement) = (self.cfg.dropout, self.cfg.layer_norm);
        let mut carried = None;
        let x = residual(placement, &self.ln_attn, x, p, train, |h| {
            let (a, s) = self.attn.forward_t(h, state, train)?;
            carried = s;
            Ok(a)
        })?;
        let x = residual(placement, &self.ln_ff, &x, p, train, |h| {
            self.feed_forward(h, train)
        })?;
        Ok((x, carried))
    }
}

impl Block {
    /// The next tokens x `[B, T, d_model]` of a sequence whose earlier tokens `cache` sums up
    /// (None at the start) -> `[B, T, d_model]` and the cache including them
    /// ([`MultiHeadAttention::forward_step`]); for generation, without dropout.
    pub fn forward_step(
        &self,
        x: &Tensor,
        cache: Option<&StepCache>,
    ) -> Result<(Tensor, StepCache)> {
        let placement = self.cfg.layer_norm;
        let mut carried = None;
        let x = residual(placement, &self.ln_attn, x, 0.0, false, |h| {
            let (a, c) = self.attn.forward_step(h, cache)?;
            carried = Some(c);
            Ok(a)
        })?;
        let x = residual(placement, &self.ln_ff, &x, 0.0, false, |h| {
            self.feed_forward(h, false)
        })?;
        let cache = carried.ok_or_else(|| anyhow::anyhow!("attention returned no cache"))?;
        Ok((x, cache))
    }
}

/// The feed-forward net of a block: ReLU(x W_in + b_in) W_out + b_out, dropout `p` on the hidden
/// layer (the output's is the residual branch's, [`residual`]).
pub(crate) fn feed_forward(
    ff_in: &Linear,
    ff_out: &Linear,
    p: f64,
    x: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let hidden = ff_in.forward(x)?.f_relu()?.f_dropout(p, train)?;
    ff_out.forward(&hidden)
}

/// One residual branch f with its LayerNorm `ln`: post-LN gives LN(x + dropout(f(x))), pre-LN
/// x + dropout(f(LN(x))).
pub(crate) fn residual(
    placement: LayerNormPlacement,
    ln: &LayerNorm,
    x: &Tensor,
    p: f64,
    train: bool,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    Ok(match placement {
        LayerNormPlacement::Post => ln.forward(&x.f_add(&f(x)?.f_dropout(p, train)?)?)?,
        LayerNormPlacement::Pre => x.f_add(&f(&ln.forward(x)?)?.f_dropout(p, train)?)?,
    })
}
