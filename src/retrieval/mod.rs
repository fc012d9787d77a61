//! The synthetic associative-retrieval experiments of the paper (docs/retrieval.md; the `retrieval` binary):
//! data for both settings, the one-layer model, the training protocol, the run records and the
//! sweep's table and plot.

pub mod data;
pub mod model;
pub mod record;
pub mod report;
pub mod train;

pub use data::{sample, Batch, Setting};
pub use model::{retrieval_loss, ModelConfig, RetrievalModel, Variant};
pub use record::{Record, RunConfig};
pub use report::report;
pub use train::{evaluate, train, RunResult, TrainConfig};
