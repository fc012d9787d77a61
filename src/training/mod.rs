//! What the experiments' training runs share: [`adam`] (Adam with savable state, learning-rate
//! schedules, gradient clipping), [`checkpoint`] (atomic checkpoints, strict loading, the run
//! lock), [`updates`] (the training loop, its start and its options), and the records and outcomes
//! of a training loop.

pub mod adam;
pub mod checkpoint;
pub mod summary;
pub mod updates;

pub use updates::{TrainEvent, TrainOptions};

/// Seconds since the Unix epoch (0 if the clock is before it), for the records.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Trainable parameters of a model.
pub fn parameter_count(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

use serde::{Deserialize, Serialize};

/// One logged update (a line of `train.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    #[serde(with = "crate::report::real")]
    pub loss: f64,
    pub lr: f64,
    #[serde(with = "crate::report::real")]
    pub grad_norm: f64,
    /// Tokens read per second since the last logged update (the translation experiment counts
    /// source and target tokens).
    pub tokens_per_s: f64,
    /// Training time of the whole run so far, across resumptions.
    pub elapsed_s: f64,
}

/// How a call to a training loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All configured updates done.
    Finished { step: usize },
    /// Stopped by the flag (Ctrl-C) or `stop_after`; a checkpoint at `step` was written.
    Interrupted { step: usize },
}
