//! `fwp`: Fast Weight Programmers (Schlag, Irie & Schmidhuber, ICML 2021) on libtorch.
//!
//! Layout, from the bottom up:
//! - [`recurrence`]: the causal fast-weight recurrence (sum and delta rules) behind one function,
//!   [`recurrence::fast_weight`], with a [`recurrence::Backend`] per implementation;
//! - [`feature_map`]: phi (ELU+1, FAVOR+, DPFP, identity);
//! - [`norm`]: attention and sum normalisation;
//! - [`attention`], [`block`], [`model`]: layers built from these, softmax attention beside them;
//! - [`ops`]: the C++/CUDA ops in `kernels/`, behind checked wrappers;
//! - [`param`]: parameters and the linear, embedding and LayerNorm layers, created fallibly;
//! - [`host_memory`]: the C allocator's handling of large blocks (keeps freed pages for reuse);
//! - [`info`]: what this build was compiled with and which GPUs it sees; [`selftest`]: each kernel
//!   once against its reference twin;
//! - [`bench`]: timing and peak memory of the backends against softmax attention (`bench`);
//! - [`retrieval`], [`lm`], [`report`]: the retrieval and language-modelling experiments, and the
//!   results writing they share; [`variant`]: softmax or `RULE:MAP`, as experiments name a model.

// Tensor code writes `s = s + x` on purpose: clippy's `s += x` is libtorch's in-place add, which
// would modify a tensor that autograd saved for the backward.
#![allow(clippy::assign_op_pattern)]

pub mod attention;
pub mod bench;
pub mod block;
pub mod check;
pub mod cross_attention;
pub mod feature_map;
pub mod host_memory;
pub mod info;
pub mod lm;
pub mod model;
pub mod mt;
mod names;
pub mod norm;
pub mod ops;
pub mod param;
pub mod recurrence;
pub mod report;
pub mod retrieval;
pub mod selftest;
pub mod seq2seq;
pub mod training;
pub mod variant;

pub use attention::{AttentionConfig, AttentionKind, FastWeightConfig, MultiHeadAttention};
pub use block::{Block, BlockConfig, LayerNormPlacement};
pub use feature_map::{FavorRedraw, FeatureMap, Phi};
pub use model::{Conventions, LanguageModel, ModelConfig, OutputLayer, PositionOrder};
pub use norm::Normalisation;
pub use param::ParamInit;
pub use recurrence::{fast_weight, Backend, FastWeightOutput, UpdateRule};
pub use variant::Variant;
