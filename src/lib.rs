//! `fwp`: Fast Weight Programmers (Schlag, Irie & Schmidhuber, ICML 2021) on libtorch.
//!
//! Layout, from the bottom up:
//! - [`recurrence`]: the causal fast-weight recurrence (sum and delta rules) behind one function,
//!   [`recurrence::fast_weight`], with a [`recurrence::Backend`] per implementation;
//! - [`feature_map`]: phi (ELU+1, FAVOR+, DPFP, identity);
//! - [`norm`]: attention and sum normalisation;
//! - [`attention`], [`block`], [`model`]: layers built from these, softmax attention beside them;
//! - [`ops`]: the C++/CUDA ops in `kernels/`, behind checked wrappers;
//! - [`info`]: what this build was compiled with and which GPUs it sees;
//! - [`speed`]: a quick timing of the backends against softmax attention (`fwp speed`).

pub mod attention;
pub mod bench;
pub mod block;
pub mod check;
pub mod feature_map;
pub mod info;
pub mod model;
pub mod norm;
pub mod ops;
pub mod recurrence;
pub mod report;
pub mod retrieval;
pub mod speed;

pub use attention::{AttentionConfig, AttentionKind, FastWeightConfig, MultiHeadAttention};
pub use block::{Block, BlockConfig, LayerNormPlacement};
pub use feature_map::{FavorRedraw, FeatureMap, Phi};
pub use model::{LanguageModel, ModelConfig};
pub use norm::Normalisation;
pub use recurrence::{fast_weight, Backend, FastWeightOutput, UpdateRule};
