//! The translation experiment's configuration (docs/translate.md): model presets (`tiny` for a
//! CPU, `base` and the paper's `big`) and the training protocol, saved with every run.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::attention::{AttentionKind, FastWeightConfig};
use crate::block::LayerNormPlacement;
use crate::param::ParamInit;
use crate::recurrence::{Backend, UpdateRule};
use crate::seq2seq::Seq2SeqConfig;
use crate::variant::Variant;

/// Model sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 3 + 3 layers, d_model 256, 4 heads x 64, d_ff 1024: for a CPU.
    Tiny,
    /// Transformer-base: 6 + 6 layers, d_model 512, 8 x 64, d_ff 2048.
    Base,
    /// Transformer-big, the paper's: 6 + 6 layers, d_model 1024, 16 x 64, d_ff 4096.
    Big,
}

crate::names::named_enum!(Preset, "preset", { Tiny => "tiny", Base => "base", Big => "big" });

/// The network, apart from the vocabulary size (which comes from the BPE).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MtModel {
    pub preset: Preset,
    pub encoder_layers: i64,
    pub decoder_layers: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_ff: i64,
    pub dropout: f64,
    /// The decoder's self-attention; the encoder's is the same with the sum rule (the delta rule
    /// is causal), as [`MtModel::attention`] says.
    pub variant: Variant,
    /// Encoder–decoder attention with the variant's fast weights (sum rule) instead of softmax.
    pub fast_cross: bool,
    pub layer_norm: LayerNormPlacement,
    pub share_embeddings: bool,
    pub backend: Backend,
}

impl MtModel {
    pub fn preset(preset: Preset, variant: Variant) -> MtModel {
        let (layers, d_model, n_heads, d_ff) = match preset {
            Preset::Tiny => (3, 256, 4, 1024),
            Preset::Base => (6, 512, 8, 2048),
            Preset::Big => (6, 1024, 16, 4096),
        };
        MtModel {
            preset,
            encoder_layers: layers,
            decoder_layers: layers,
            d_model,
            n_heads,
            d_head: d_model / n_heads,
            d_ff,
            dropout: 0.1,
            variant,
            fast_cross: false,
            layer_norm: LayerNormPlacement::Post,
            share_embeddings: true,
            backend: Backend::Auto,
        }
    }

    /// (encoder self-attention, decoder self-attention, cross-attention). Fast-weight layers use
    /// the variant's map with the library's default normalisation of their rule (the sum rule:
    /// attention normalisation, as Katharopoulos et al.; the delta rule: sum normalisation, as the
    /// paper) and FAVOR+ matrices drawn once.
    pub fn attention(&self) -> (AttentionKind, AttentionKind, AttentionKind) {
        match self.variant {
            Variant::Softmax => (
                AttentionKind::Softmax,
                AttentionKind::Softmax,
                AttentionKind::Softmax,
            ),
            Variant::FastWeight { rule, map } => {
                let with = |rule| {
                    AttentionKind::FastWeight(FastWeightConfig {
                        backend: self.backend,
                        ..FastWeightConfig::new(rule, map)
                    })
                };
                let sum = with(UpdateRule::Sum);
                let cross = if self.fast_cross {
                    sum
                } else {
                    AttentionKind::Softmax
                };
                (sum, with(rule), cross)
            }
        }
    }

    /// The library model for a vocabulary of `vocab` entries with padding id `pad`.
    pub fn model_config(&self, vocab: i64, pad: i64) -> Result<Seq2SeqConfig> {
        if self.fast_cross && self.variant == Variant::Softmax {
            bail!("fast_cross: the softmax variant has no fast weights for the cross-attention");
        }
        let (encoder, decoder, cross) = self.attention();
        Ok(Seq2SeqConfig {
            vocab,
            pad,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_head: self.d_head,
            d_ff: self.d_ff,
            dropout: self.dropout,
            layer_norm: self.layer_norm,
            encoder,
            decoder,
            cross,
            share_embeddings: self.share_embeddings,
            init: ParamInit::Framework,
        })
    }
}

/// The training protocol: Adam (0.9, 0.98, 1e-9) with the inverse-square-root schedule, label
/// smoothing 0.1, gradient clipping, batches of about `max_tokens` tokens of sentences of similar
/// length (Vaswani et al. 2017).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    /// Padded tokens per batch, source or target side, whichever is longer.
    pub max_tokens: i64,
    pub lr: f64,
    pub warmup: usize,
    pub clip: f64,
    pub label_smoothing: f64,
    pub seed: i64,
    /// Size of the joint BPE vocabulary.
    pub bpe_vocab: usize,
    /// Training pairs with more BPE tokens than this on either side are left out.
    pub max_len: usize,
    pub log_every: usize,
    /// Valid BLEU (greedy, the first `eval_sentences` pairs) every N updates.
    pub eval_every: usize,
    pub eval_sentences: usize,
    pub checkpoint_every: usize,
}

impl TrainConfig {
    pub fn preset(preset: Preset) -> TrainConfig {
        let (steps, max_tokens, lr, warmup) = match preset {
            Preset::Tiny => (4000, 2048, 1e-3, 800),
            Preset::Base => (100_000, 8192, 7e-4, 4000),
            Preset::Big => (100_000, 8192, 5e-4, 4000),
        };
        TrainConfig {
            steps,
            max_tokens,
            lr,
            warmup,
            clip: 1.0,
            label_smoothing: 0.1,
            seed: 0,
            bpe_vocab: 8000,
            max_len: 128,
            log_every: 10,
            eval_every: 500,
            eval_sentences: 200,
            checkpoint_every: 100,
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("steps must be >= 1");
        }
        crate::check::positive("max_tokens", self.max_tokens)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr must be finite and > 0, got {}", self.lr);
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            bail!("clip must be finite and > 0, got {}", self.clip);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if self.max_len < 1 || (self.max_len as i64 + 1) > self.max_tokens {
            bail!(
                "max_len ({}) must be >= 1 and leave room for </s> in a batch of max_tokens ({})",
                self.max_len,
                self.max_tokens
            );
        }
        for (name, v) in [
            ("warmup", self.warmup),
            ("log_every", self.log_every),
            ("eval_every", self.eval_every),
            ("eval_sentences", self.eval_sentences),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                bail!("{name} must be >= 1");
            }
        }
        Ok(())
    }
}
