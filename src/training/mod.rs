//! What the experiments' training runs share: [`adam`] (Adam with savable state, learning-rate
//! schedules, gradient clipping), [`checkpoint`] (atomic checkpoints, strict loading, the run
//! lock), and the records and outcomes of a training loop.

pub mod adam;
pub mod checkpoint;
pub mod summary;

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
