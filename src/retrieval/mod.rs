//! The synthetic associative-retrieval experiments of paper.md Sec. 5 (the `retrieval` binary):
//! data for both settings, the one-layer model, and the training protocol.

pub mod data;
pub mod model;
pub mod train;

pub use data::{sample, Batch, Setting};
pub use model::{retrieval_loss, ModelConfig, RetrievalModel, Variant};
pub use train::{evaluate, train, RunResult, TrainConfig};
