//! Which attention a model uses: softmax, or a fast-weight memory with an update rule and a
//! feature map, written `softmax` or `RULE:MAP` on command lines and in run records.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::feature_map::FeatureMap;
use crate::recurrence::UpdateRule;

/// Which memory a model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    Softmax,
    FastWeight { rule: UpdateRule, map: FeatureMap },
}

impl Variant {
    /// `softmax`, or `RULE:MAP` with RULE `sum` or `delta` and MAP as [`FeatureMap`] parses it,
    /// e.g. `sum:linear`, `delta:dpfp:2`, `sum:favor:64`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "softmax" {
            return Ok(Variant::Softmax);
        }
        let Some((rule, map)) = s.split_once(':') else {
            bail!("variant '{s}': expected softmax or RULE:MAP, e.g. sum:linear or delta:dpfp:2");
        };
        let rule = match rule {
            "sum" => UpdateRule::Sum,
            "delta" => UpdateRule::Delta,
            other => bail!("variant '{s}': unknown rule '{other}' (sum or delta)"),
        };
        Ok(Variant::FastWeight {
            rule,
            map: map.parse()?,
        })
    }

    /// The name [`Variant::parse`] reads back.
    pub fn name(&self) -> String {
        match self {
            Variant::Softmax => "softmax".into(),
            Variant::FastWeight {
                rule: UpdateRule::Sum,
                map,
            } => format!("sum:{map}"),
            Variant::FastWeight {
                rule: UpdateRule::Delta,
                map,
            } => format!("delta:{map}"),
        }
    }
}
