//! The two protocols a retrieval run can follow (docs/retrieval.md, "Protocols"): the authors'
//! (their public synthetic-task code, read line by line), the default, and fwp's first
//! reproduction, kept by name so that its committed results can be rerun and compared.

use serde::{Deserialize, Serialize};

use super::model::{ModelConfig, ProjectionInit, Variant};
use super::train::TrainConfig;
use crate::attention::AttentionKind;
use crate::feature_map::FavorRedraw;
use crate::norm::Normalisation;
use crate::recurrence::{Backend, UpdateRule};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// The authors': sum-rule memories attention-normalised (keys and queries not normalised),
    /// delta-rule memories sum-normalised; projections with biases and the authors' init; FAVOR+
    /// drawn anew at every forward pass; training queries uniform over positions; Setting 2
    /// evaluated on S writes, the lowest key ids asked in chunks of 32; stop after 11
    /// evaluations without a new best.
    #[default]
    Authors,
    /// fwp's first reproduction: keys and queries sum-normalised for both rules, tch's init and no
    /// bias on W_k and W_q, FAVOR+ drawn once, training queries uniform over distinct keys,
    /// evaluation on sequences as long as in training, stop after 10 evaluations without a new best.
    FwpV1,
}

crate::names::named_enum!(Protocol, "protocol", { Authors => "authors", FwpV1 => "fwp-v1" });

impl Protocol {
    /// The normalisation the protocol gives a memory with `rule`.
    pub fn normalisation(self, rule: UpdateRule) -> Normalisation {
        match (self, rule) {
            (Protocol::Authors, UpdateRule::Sum) => Normalisation::Attention,
            (Protocol::Authors, UpdateRule::Delta) | (Protocol::FwpV1, _) => Normalisation::Sum,
        }
    }

    /// The model of `variant` for `s` keys; `normalisation` overrides the protocol's.
    pub fn model(
        self,
        s: i64,
        d_key: i64,
        variant: Variant,
        normalisation: Option<Normalisation>,
        backend: Backend,
    ) -> ModelConfig {
        let rule = match variant {
            Variant::FastWeight { rule, .. } => rule,
            Variant::Softmax => UpdateRule::Sum, // unused
        };
        let norm = normalisation.unwrap_or(self.normalisation(rule));
        let mut cfg = ModelConfig::new(s, d_key, variant, norm, backend);
        if self == Protocol::Authors {
            cfg.init = ProjectionInit::Authors;
            if let AttentionKind::FastWeight(fw) = &mut cfg.memory {
                fw.favor_redraw = FavorRedraw::EveryForward;
            }
        }
        cfg
    }

    /// The training protocol, with at most `max_steps` steps.
    pub fn train(self, max_steps: usize) -> TrainConfig {
        let base = match self {
            Protocol::Authors => TrainConfig::authors(),
            Protocol::FwpV1 => TrainConfig::fwp_v1(),
        };
        TrainConfig { max_steps, ..base }
    }
}
