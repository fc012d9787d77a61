//! The synthetic associative-retrieval experiments of the paper (docs/retrieval.md; the `retrieval` binary):
//! data for both settings, the one-layer model, the training protocol, the run records and the
//! sweep's table and plot.

pub mod data;
pub mod model;
pub mod protocol;
pub mod record;
pub mod report;
pub mod train;

pub use data::{
    eval_batch, sample, training_batch, Batch, EvalLength, QueryDraw, QueryOrder, Setting,
};
pub use model::{
    query_losses, retrieval_loss, ModelConfig, ProjectionInit, RetrievalModel, Variant,
};
pub use protocol::Protocol;
pub use record::{Record, RunConfig};
pub use report::report;
pub use train::{eval_loss, evaluate, evaluation_batch, train, EarlyStop, RunResult, TrainConfig};
