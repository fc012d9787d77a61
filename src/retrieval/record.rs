//! One record per finished run of a retrieval sweep, as appended to `results.jsonl`.

use serde::{Deserialize, Serialize};

use super::model::ModelConfig;
use super::protocol::Protocol;
use super::train::{RunResult, TrainConfig};

/// Everything that defines one run; a sweep skips the runs whose configuration is already recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// The protocol named on the command line (records from before the choice: `fwp-v1`); the
    /// model and training fields below say what it meant.
    #[serde(default = "fwp_v1")]
    pub protocol: Protocol,
    /// 1 (capacity) or 2 (updates).
    pub setting: u8,
    /// The model's variant as `softmax` or `RULE:MAP` (for tables).
    pub variant: String,
    pub s: i64,
    pub seed: i64,
    pub d_key: i64,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub config: RunConfig,
    pub result: RunResult,
}

fn fwp_v1() -> Protocol {
    Protocol::FwpV1
}
