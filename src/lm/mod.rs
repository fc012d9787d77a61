//! The word-level language-modelling experiment (docs/lm.md) behind `experiments/lm`:
//!
//! - [`data`]: WikiText-layout corpora and the vocabulary; [`brown`]: the Brown corpus in that layout;
//! - [`config`]: model presets (`tiny`, `small`, `medium`) and the training protocol;
//! - [`batches`]: training segments as a pure function of the step;
//! - [`adam`] (shared, [`crate::training::adam`]): Adam with savable state, the warm-up + cosine
//!   schedule, gradient clipping;
//! - [`checkpoint`]: atomic checkpoints; [`train`]: the training loop and resumption;
//! - [`eval`]: sliding-window, segment and stateful perplexity; [`export`]: TorchScript;
//! - [`generate`]: text generation with the layers' carried state;
//! - [`report`]: the results table of a set of runs.

pub use crate::training::adam;
pub mod batches;
pub mod brown;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod report;
pub mod train;
