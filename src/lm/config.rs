//! The LM experiment's configuration: model presets (the paper's small and medium, plus `tiny`
//! for a CPU; docs/lm.md) and
//! the training protocol, saved with every run.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::attention::{AttentionConfig, AttentionKind, FastWeightConfig};
use crate::block::{BlockConfig, LayerNormPlacement};
use crate::feature_map::FavorRedraw;
use crate::model::{Conventions, ModelConfig, OutputLayer, PositionOrder};
use crate::norm::Normalisation;
use crate::param::ParamInit;
use crate::recurrence::Backend;
use crate::variant::Variant;

/// Model sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 4 layers, d_model 128, 4 heads x 32, d_ff 512, context 128; 2000 updates of 32 x 128 tokens
    /// (lr 1e-3, 200 warm-up steps): about 50 minutes on 2 CPU cores with Brown's 20.9k words.
    Tiny,
    /// The paper's small: 16 layers, d_model 128, 8 x 16, d_ff 2048, context 256, batch 96.
    Small,
    /// The paper's medium: 16 layers, d_model 256, 8 x 32, d_ff 2048, context 384, batch 56.
    Medium,
}

crate::names::named_enum!(Preset, "preset", { Tiny => "tiny", Small => "small", Medium => "medium" });

/// The conventions a language model follows (docs/lm.md, "Protocols"), apart from its size and
/// training budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The authors' language models (their LM toolkit, the paper's small script): linear layers
    /// N(0, 0.02) with zero biases, LayerNorm scales N(1, 0.02); fast-weight keys and queries
    /// sum-normalised and the output divided by z . q + 1e-5 for both rules, then by
    /// sqrt(d_head); FAVOR+ with 1e-4 added to its features, redrawn at every training step; an
    /// output bias; positions counted back from the segment's end.
    #[default]
    Authors,
    /// fwp's first: tch's initialisation, sum rule attention-normalised and delta rule
    /// sum-normalised (eps 1e-6), no output scale, FAVOR+ drawn once, no output bias, ascending
    /// positions.
    FwpV1,
}

crate::names::named_enum!(Protocol, "protocol", { Authors => "authors", FwpV1 => "fwp-v1" });

fn fwp_v1() -> Protocol {
    Protocol::FwpV1
}

/// The network, apart from the vocabulary size (which comes from the corpus).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmModel {
    pub preset: Preset,
    pub n_layers: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_ff: i64,
    /// Training context (tokens per segment) and evaluation window.
    pub context: i64,
    pub dropout: f64,
    pub variant: Variant,
    /// `None`: the protocol's (authors: sum-and-attention for both rules; fwp-v1: attention for
    /// the sum rule, as Katharopoulos et al., sum for the delta rule, as the paper).
    pub normalisation: Option<Normalisation>,
    pub backend: Backend,
    /// Runs saved before there was a choice: fwp-v1.
    #[serde(default = "fwp_v1")]
    pub protocol: Protocol,
    /// The full softmax, or an adaptive one (cheaper to train with a large vocabulary; exact
    /// probabilities either way). Runs saved before there was a choice: full.
    #[serde(default)]
    pub output: OutputLayer,
}

impl LmModel {
    /// The preset's size with the authors' conventions.
    pub fn preset(preset: Preset, variant: Variant) -> LmModel {
        let (n_layers, d_model, n_heads, d_head, d_ff, context) = match preset {
            Preset::Tiny => (4, 128, 4, 32, 512, 128),
            Preset::Small => (16, 128, 8, 16, 2048, 256),
            Preset::Medium => (16, 256, 8, 32, 2048, 384),
        };
        LmModel {
            preset,
            n_layers,
            d_model,
            n_heads,
            d_head,
            d_ff,
            context,
            dropout: 0.1,
            variant,
            normalisation: None,
            backend: Backend::Auto,
            protocol: Protocol::Authors,
            output: OutputLayer::Full,
        }
    }

    /// The attention every layer uses.
    pub fn attention(&self) -> Result<AttentionKind> {
        Ok(match self.variant {
            Variant::Softmax => {
                if let Some(n) = self.normalisation {
                    bail!("normalisation {n:?} applies to fast-weight variants, not to softmax");
                }
                AttentionKind::Softmax
            }
            Variant::FastWeight { rule, map } => {
                let base = FastWeightConfig::new(rule, map);
                let base = match self.protocol {
                    Protocol::FwpV1 => base,
                    Protocol::Authors => FastWeightConfig {
                        normalisation: Normalisation::SumAndAttention,
                        eps: 1e-5,
                        scale_output: true,
                        favor_redraw: FavorRedraw::EveryTrainingStep,
                        favor_eps: 1e-4,
                        ..base
                    },
                };
                let cfg = FastWeightConfig {
                    normalisation: self.normalisation.unwrap_or(base.normalisation),
                    backend: self.backend,
                    ..base
                };
                cfg.validate()?;
                AttentionKind::FastWeight(cfg)
            }
        })
    }

    /// The library model for a vocabulary of `vocab` words: post-LN blocks, attention dropout 0.
    pub fn model_config(&self, vocab: i64) -> Result<ModelConfig> {
        for (name, v) in [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_head", self.d_head),
            ("d_ff", self.d_ff),
            ("context", self.context),
        ] {
            crate::check::positive(name, v)?;
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(ModelConfig {
            vocab,
            n_layers: self.n_layers,
            block: BlockConfig {
                attention: AttentionConfig {
                    d_model: self.d_model,
                    n_heads: self.n_heads,
                    d_head: self.d_head,
                    kind: self.attention()?,
                    attn_dropout: 0.0,
                },
                d_ff: self.d_ff,
                dropout: self.dropout,
                layer_norm: LayerNormPlacement::Post,
            },
            conventions: match self.protocol {
                Protocol::FwpV1 => Conventions {
                    output: self.output,
                    ..Conventions::default()
                },
                Protocol::Authors => Conventions {
                    init: ParamInit::Normal { std: 0.02 },
                    output_bias: true,
                    positions: PositionOrder::Descending,
                    output: self.output,
                },
            },
        })
    }
}

/// The training protocol (the authors', docs/lm.md: Adam 2.5e-4, 2000 warm-up steps, cosine to 0,
/// clipping 0.25), with the budget of the chosen preset (`tiny`: a CPU budget, see [`Preset`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser updates.
    pub steps: usize,
    /// Sequences per update, split into `accumulate` micro-batches.
    pub batch: i64,
    pub accumulate: i64,
    pub lr: f64,
    pub warmup: usize,
    pub clip: f64,
    pub seed: i64,
    /// Log every N updates; evaluate on valid (non-overlapping) every N; checkpoint every N.
    pub log_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Words seen fewer times in train become `<unk>` (1: keep all, as for WikiText).
    pub min_count: usize,
}

impl TrainConfig {
    pub fn preset(preset: Preset) -> TrainConfig {
        let (steps, batch, warmup, lr) = match preset {
            Preset::Tiny => (2000, 32, 200, 1e-3),
            Preset::Small => (500_000, 96, 2000, 2.5e-4),
            Preset::Medium => (400_000, 56, 2000, 2.5e-4),
        };
        TrainConfig {
            steps,
            batch,
            accumulate: 1,
            lr,
            warmup,
            clip: 0.25,
            seed: 0,
            log_every: 10,
            eval_every: match preset {
                Preset::Tiny => 100,
                _ => 2000,
            },
            checkpoint_every: match preset {
                Preset::Tiny => 100,
                _ => 1000,
            },
            min_count: 1,
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("steps must be >= 1");
        }
        crate::check::positive("batch", self.batch)?;
        crate::check::positive("accumulate", self.accumulate)?;
        if self.batch % self.accumulate != 0 {
            bail!(
                "batch ({}) must be a multiple of accumulate ({})",
                self.batch,
                self.accumulate
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr must be finite and > 0, got {}", self.lr);
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            bail!("clip must be finite and > 0, got {}", self.clip);
        }
        for (name, v) in [
            ("log_every", self.log_every),
            ("eval_every", self.eval_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                bail!("{name} must be >= 1");
            }
        }
        Ok(())
    }
}
