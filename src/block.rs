//! The Transformer block: attention and a feed-forward net, each in a residual branch with
//! LayerNorm after the sum (post-LN, paper.md Sec. 6) or before the branch (pre-LN).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use crate::attention::{AttentionConfig, FastWeightState, MultiHeadAttention};

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
    ln_attn: nn::LayerNorm,
    ln_ff: nn::LayerNorm,
    ff_in: nn::Linear,
    ff_out: nn::Linear,
}

impl Block {
    pub fn new(p: nn::Path, cfg: BlockConfig) -> Result<Self> {
        crate::check::positive("d_ff", cfg.d_ff)?;
        let d = cfg.attention.d_model;
        Ok(Block {
            cfg,
            attn: MultiHeadAttention::new(&p / "attn", cfg.attention)?,
            ln_attn: nn::layer_norm(&p / "ln_attn", vec![d], Default::default()),
            ln_ff: nn::layer_norm(&p / "ln_ff", vec![d], Default::default()),
            ff_in: nn::linear(&p / "ff_in", d, cfg.d_ff, Default::default()),
            ff_out: nn::linear(&p / "ff_out", cfg.d_ff, d, Default::default()),
        })
    }

    fn feed_forward(&self, x: &Tensor, train: bool) -> Tensor {
        let p = self.cfg.dropout;
        self.ff_out
            .forward(&self.ff_in.forward(x).relu().dropout(p, train))
            .dropout(p, train)
    }

    /// x `[B, T, d_model]` -> `[B, T, d_model]`, and the attention's carried state.
    pub fn forward_t(
        &self,
        x: &Tensor,
        state: Option<&FastWeightState>,
        train: bool,
    ) -> Result<(Tensor, Option<FastWeightState>)> {
        let p = self.cfg.dropout;
        Ok(match self.cfg.layer_norm {
            LayerNormPlacement::Post => {
                let (a, s) = self.attn.forward_t(x, state, train)?;
                let x = self.ln_attn.forward(&(x + a.dropout(p, train)));
                let x = self.ln_ff.forward(&(&x + self.feed_forward(&x, train)));
                (x, s)
            }
            LayerNormPlacement::Pre => {
                let (a, s) = self
                    .attn
                    .forward_t(&self.ln_attn.forward(x), state, train)?;
                let x = x + a.dropout(p, train);
                let x = &x + self.feed_forward(&self.ln_ff.forward(&x), train);
                (x, s)
            }
        })
    }
}
