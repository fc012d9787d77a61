//! Which attention a model uses: softmax, or a fast-weight memory with an update rule and a
//! feature map, written `softmax` or `RULE:MAP` on command lines and in run records.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use crate::attention::{AttentionKind, FastWeightConfig};
use crate::feature_map::FeatureMap;
use crate::recurrence::UpdateRule;

/// Which memory a model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    Softmax,
    FastWeight { rule: UpdateRule, map: FeatureMap },
}

impl Variant {
    /// The attention of a layer of this variant: softmax, or the default fast-weight layer of its
    /// rule and map ([`FastWeightConfig::new`]).
    pub fn attention(self) -> AttentionKind {
        match self {
            Variant::Softmax => AttentionKind::Softmax,
            Variant::FastWeight { rule, map } => {
                AttentionKind::FastWeight(FastWeightConfig::new(rule, map))
            }
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;
    /// `softmax`, or `RULE:MAP` with RULE as [`UpdateRule`] parses it and MAP as [`FeatureMap`]
    /// does, e.g. `sum:linear`, `delta:dpfp:2`, `sum:favor:64`.
    fn from_str(s: &str) -> Result<Self> {
        if s == "softmax" {
            return Ok(Variant::Softmax);
        }
        let Some((rule, map)) = s.split_once(':') else {
            bail!("variant '{s}': expected softmax or RULE:MAP, e.g. sum:linear or delta:dpfp:2");
        };
        let rule: UpdateRule = rule.parse().map_err(|e| anyhow!("variant '{s}': {e}"))?;
        Ok(Variant::FastWeight {
            rule,
            map: map.parse()?,
        })
    }
}

/// The name [`Variant::from_str`](std::str::FromStr) reads back: `softmax` or `RULE:MAP`.
impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variant::Softmax => f.write_str("softmax"),
            Variant::FastWeight { rule, map } => write!(f, "{rule}:{map}"),
        }
    }
}
