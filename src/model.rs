//! A decoder-only language model: token embedding + sinusoidal positions, a stack of
//! [`Block`]s, and an output layer tied to the embedding (docs/lm.md).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{FastWeightState, StepCache};
use crate::block::{Block, BlockConfig, LayerNormPlacement};
use crate::param::{Embedding, LayerNorm, ParamInit};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: i64,
    pub n_layers: i64,
    pub block: BlockConfig,
    /// Initialisation, output bias and position order (configurations saved before there was a
    /// choice read as the defaults).
    #[serde(default)]
    pub conventions: Conventions,
}

/// The conventions in which language models differ beyond their layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conventions {
    /// How the blocks' linear layers and LayerNorms start (the embedding: N(0, 0.02) always).
    pub init: ParamInit,
    /// A bias on the output layer (whose weight is the embedding's), started at 0.
    pub output_bias: bool,
    pub positions: PositionOrder,
    /// Configurations saved before there was a choice: the full softmax.
    #[serde(default)]
    pub output: OutputLayer,
}

/// How the output layer turns hidden states into a distribution over the vocabulary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputLayer {
    /// One softmax over every word.
    #[default]
    Full,
    /// An adaptive softmax (Grave et al. 2017) with the output weights kept full width and tied
    /// (as the authors' LMs, whose `div_val` is 1): words `0..c0` and one entry per tail cluster
    /// share a head softmax, words `c0..c1` and `c1..vocab` form two tail clusters, each a softmax
    /// of its own: log p(w) = log p_head(cluster of w) + log p_cluster(w). It needs a vocabulary
    /// sorted by frequency (ids in the head the most frequent) to save work; the probabilities
    /// are exact and normalised over the whole vocabulary in any case. Training and scoring
    /// compute a tail only for the positions whose target lies in it.
    Adaptive { cutoffs: [i64; 2] },
}

/// Which sinusoidal position each token of a segment gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PositionOrder {
    /// offset, offset + 1, ..., offset + T - 1 (Vaswani et al.).
    #[default]
    Ascending,
    /// T - 1, ..., 1, 0: counted back from the segment's last token, whatever the offset (the
    /// authors' language models, a Transformer-XL without memory).
    Descending,
}

#[derive(Debug)]
pub struct LanguageModel {
    pub cfg: ModelConfig,
    embedding: Embedding,
    blocks: Vec<Block>,
    /// Final LayerNorm, pre-LN models only (post-LN blocks already end in one).
    ln_final: Option<LayerNorm>,
    /// The output layer's bias `[vocab]`, where there is one.
    output_bias: Option<Tensor>,
    /// Adaptive softmax: the cutoffs and the head's cluster entries, weight `[2, d]` and bias `[2]`.
    clusters: Option<([i64; 2], Tensor, Tensor)>,
}

impl LanguageModel {
    pub fn new(p: nn::Path, cfg: ModelConfig) -> Result<Self> {
        crate::check::positive("vocab", cfg.vocab)?;
        crate::check::positive("n_layers", cfg.n_layers)?;
        let d = cfg.block.attention.d_model;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embedding = Embedding::new(&(&p / "embedding"), cfg.vocab, d, init)?;
        let param_init = cfg.conventions.init;
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::with_init(&p / "blocks" / i, cfg.block, param_init))
            .collect::<Result<Vec<_>>>()?;
        let ln_final = (cfg.block.layer_norm == LayerNormPlacement::Pre)
            .then(|| param_init.layer_norm(&(&p / "ln_final"), d))
            .transpose()?;
        let output_bias = cfg
            .conventions
            .output_bias
            .then(|| crate::param::var(&p, "output_bias", &[cfg.vocab], nn::Init::Const(0.0)))
            .transpose()?;
        let clusters = match cfg.conventions.output {
            OutputLayer::Full => None,
            OutputLayer::Adaptive { cutoffs: [c0, c1] } => {
                if !(0 < c0 && c0 < c1 && c1 < cfg.vocab) {
                    bail!(
                        "adaptive softmax cutoffs [{c0}, {c1}]: need 0 < c0 < c1 < vocab ({})",
                        cfg.vocab
                    );
                }
                let std = match param_init {
                    ParamInit::Normal { std } => std,
                    ParamInit::Framework => 0.02,
                };
                let w = crate::param::var(
                    &p,
                    "cluster_weight",
                    &[2, d],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: std,
                    },
                )?;
                let b = crate::param::var(&p, "cluster_bias", &[2], nn::Init::Const(0.0))?;
                Some(([c0, c1], w, b))
            }
        };
        Ok(LanguageModel {
            cfg,
            embedding,
            blocks,
            ln_final,
            output_bias,
            clusters,
        })
    }

    /// The device of the parameters.
    pub fn device(&self) -> tch::Device {
        self.embedding.weight.device()
    }

    /// Whether the layers use fast weights (and so carry state across segments).
    pub fn has_fast_weights(&self) -> bool {
        matches!(
            self.cfg.block.attention.kind,
            crate::attention::AttentionKind::FastWeight(_)
        )
    }

    /// tokens `[B, T]` (int64) -> logits `[B, T, vocab]`, and each layer's carried state.
    /// `offset` is the absolute position of the first token (for segment-wise evaluation).
    pub fn forward_t(
        &self,
        tokens: &Tensor,
        states: Option<&[Option<FastWeightState>]>,
        offset: i64,
        train: bool,
    ) -> Result<(Tensor, Vec<Option<FastWeightState>>)> {
        let (hidden, states) = self.hidden_t(tokens, states, offset, train)?;
        Ok((self.logits(&hidden)?, states))
    }

    /// The output layer, tied to the embedding: hidden `[..., d_model]` -> logits `[..., vocab]`
    /// (with an adaptive softmax: the normalised log-probabilities, which are logits too).
    /// Apply it to the positions that are scored only, where that is not all of them.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(([c0, c1], _, _)) = &self.clusters else {
            return self.word_logits(hidden, 0, self.cfg.vocab);
        };
        let head = self.head_log_probs(hidden)?; // [..., c0 + 2]
        let mut parts = vec![head.f_narrow(-1, 0, *c0)?];
        for (i, (from, to)) in [(*c0, *c1), (*c1, self.cfg.vocab)].into_iter().enumerate() {
            let tail = self
                .word_logits(hidden, from, to - from)?
                .f_log_softmax(-1, None::<Kind>)?;
            parts.push(tail + head.f_narrow(-1, c0 + i as i64, 1)?);
        }
        Ok(Tensor::f_cat(&parts, -1)?)
    }

    /// Logits of words `from..from + n`: hidden `[..., d]` -> `[..., n]`.
    fn word_logits(&self, hidden: &Tensor, from: i64, n: i64) -> Result<Tensor> {
        let w = self.embedding.weight.f_narrow(0, from, n)?;
        let logits = hidden.f_matmul(&w.f_transpose(0, 1)?)?;
        Ok(match &self.output_bias {
            Some(b) => logits.f_add(&b.f_narrow(0, from, n)?)?,
            None => logits,
        })
    }

    /// Adaptive softmax: log-probabilities of the head's words and of its two cluster entries.
    fn head_log_probs(&self, hidden: &Tensor) -> Result<Tensor> {
        let Some(([c0, _], w, b)) = &self.clusters else {
            bail!("head_log_probs: not an adaptive softmax");
        };
        let clusters = hidden.f_matmul(&w.f_transpose(0, 1)?)?.f_add(b)?; // [..., 2]
        let words = self.word_logits(hidden, 0, *c0)?;
        Ok(Tensor::f_cat(&[words, clusters], -1)?.f_log_softmax(-1, None::<Kind>)?)
    }

    /// Sum of -log p(target) over all positions: hidden `[..., d]`, targets `[...]` (ids). An
    /// adaptive softmax computes a tail cluster only for the positions whose target is in it.
    pub fn nll_sum(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let d = *hidden.size().last().unwrap_or(&0);
        let h = hidden.f_reshape([-1, d])?; // [N, d]
        let y = targets.f_reshape([-1])?; // [N]
        let Some(([c0, c1], _, _)) = &self.clusters else {
            let lp = self
                .word_logits(&h, 0, self.cfg.vocab)?
                .f_log_softmax(-1, None::<Kind>)?;
            return Ok(lp
                .f_gather(-1, &y.f_unsqueeze(-1)?, false)?
                .f_sum(None::<Kind>)?
                .f_neg()?);
        };
        let head = self.head_log_probs(&h)?; // [N, c0 + 2]
                                             // the head entry of each target: the word itself, or its cluster's entry
        let in_head = y.f_lt(*c0)?;
        let tail_id = y.f_ge(*c1)?.f_to_kind(Kind::Int64)? + *c0; // c0 or c0 + 1
        let head_id = y.f_where_self(&in_head, &tail_id)?;
        let mut total = head
            .f_gather(-1, &head_id.f_unsqueeze(-1)?, false)?
            .f_sum(None::<Kind>)?;
        for (from, to) in [(*c0, *c1), (*c1, self.cfg.vocab)] {
            let rows = y
                .f_ge(from)?
                .f_logical_and(&y.f_lt(to)?)?
                .f_nonzero()?
                .f_squeeze_dim(-1)?;
            if rows.numel() == 0 {
                continue;
            }
            let lp = self
                .word_logits(&h.f_index_select(0, &rows)?, from, to - from)?
                .f_log_softmax(-1, None::<Kind>)?; // [n, to - from]
            let within = (y.f_index_select(0, &rows)? - from).f_unsqueeze(-1)?;
            total = total + lp.f_gather(-1, &within, false)?.f_sum(None::<Kind>)?;
        }
        Ok(total.f_neg()?)
    }

    /// [`LanguageModel::forward_t`] without the output layer: hidden states `[B, T, d_model]`.
    pub fn hidden_t(
        &self,
        tokens: &Tensor,
        states: Option<&[Option<FastWeightState>]>,
        offset: i64,
        train: bool,
    ) -> Result<(Tensor, Vec<Option<FastWeightState>>)> {
        let size = crate::check::token_ids("tokens", tokens)?;
        if let Some(states) = states {
            if states.len() != self.blocks.len() {
                bail!(
                    "states: expected one per layer ({}), got {}",
                    self.blocks.len(),
                    states.len()
                );
            }
        }
        let d = self.cfg.block.attention.d_model;
        let pos = match self.cfg.conventions.positions {
            PositionOrder::Ascending => sinusoidal_positions(offset, size[1], d, tokens.device())?,
            PositionOrder::Descending => {
                sinusoidal_positions(0, size[1], d, tokens.device())?.f_flip([0i64].as_slice())?
            }
        }; // [T, d]
        let mut x = self.embed(tokens, &pos, train)?;
        let mut new_states = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let state = states.and_then(|s| s[i].as_ref());
            let (y, s) = block.forward_t(&x, state, train)?;
            x = y;
            new_states.push(s);
        }
        if let Some(ln) = &self.ln_final {
            x = ln.forward(&x)?;
        }
        Ok((x, new_states))
    }
}

impl LanguageModel {
    /// Token embeddings `[B, T]` -> `[B, T, d]`, scaled by sqrt(d), plus the position encodings
    /// `pos` `[T, d]`; dropout in training.
    fn embed(&self, tokens: &Tensor, pos: &Tensor, train: bool) -> Result<Tensor> {
        let d = self.cfg.block.attention.d_model;
        let embedded = self.embedding.forward(tokens).map_err(|e| {
            anyhow::anyhow!(
                "tokens: {e} (the model's vocabulary has {} words)",
                self.cfg.vocab
            )
        })?;
        Ok((embedded * (d as f64).sqrt() + pos).f_dropout(self.cfg.block.dropout, train)?)
    }

    /// The next tokens `[B, T]` of a sequence whose earlier tokens `caches` (one per layer, None
    /// at the start) sum up, at `positions` `[T]` (the position encodings' indices, which the
    /// caller chooses: see [`crate::lm::generate`]) -> hidden states `[B, T, d_model]`, advancing
    /// the caches. Fast-weight layers carry their state (constant size), softmax layers their keys
    /// and values. For generation: no dropout.
    pub fn hidden_step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        caches: &mut [Option<StepCache>],
    ) -> Result<Tensor> {
        let size = crate::check::token_ids("tokens", tokens)?;
        if caches.len() != self.blocks.len() {
            bail!(
                "caches: expected one per layer ({}), got {}",
                self.blocks.len(),
                caches.len()
            );
        }
        if positions.size() != [size[1]] {
            bail!(
                "positions: expected [{}] (one per token), got {:?}",
                size[1],
                positions.size()
            );
        }
        let d = self.cfg.block.attention.d_model;
        let mut x = self.embed(tokens, &sinusoidal_positions_at(positions, d)?, false)?;
        for (block, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            let (y, c) = block.forward_step(&x, cache.as_ref())?;
            x = y;
            *cache = Some(c);
        }
        if let Some(ln) = &self.ln_final {
            x = ln.forward(&x)?;
        }
        Ok(x)
    }
}

/// Sinusoidal absolute positions (Vaswani et al.) for positions offset..offset+T: `[T, d]`.
pub fn sinusoidal_positions(offset: i64, t: i64, d: i64, device: tch::Device) -> Result<Tensor> {
    sinusoidal_positions_at(
        &Tensor::f_arange_start(offset, offset + t, (Kind::Float, device))?,
        d,
    )
}

/// The encodings of the positions `pos` `[T]` (any numeric dtype) -> `[T, d]`: what
/// [`sinusoidal_positions`] gives, with the positions a tensor (a traced module takes them as input).
pub fn sinusoidal_positions_at(pos: &Tensor, d: i64) -> Result<Tensor> {
    let t = pos.size1()?;
    let device = pos.device();
    let pos = pos.f_to_kind(Kind::Float)?.f_unsqueeze(1)?; // [T, 1]
    let half = (d + 1) / 2;
    let freq = (Tensor::f_arange(half, (Kind::Float, device))?
        * (-2.0 * (10000f64).ln() / d as f64))
        .f_exp()?; // [d/2]
    let angle = pos * freq.f_unsqueeze(0)?; // [T, d/2]
    let pe = Tensor::f_stack(&[angle.f_sin()?, angle.f_cos()?], -1)?.f_reshape([t, 2 * half])?;
    Ok(pe.f_narrow(1, 0, d)?)
}
