//! The translation experiment (docs/translate.md) behind `experiments/translate`:
//!
//! - [`bible`]: the English–German Bible corpus, split by books; [`corpus`]: parallel corpora on
//!   disk; [`bpe`]: the joint byte-level BPE vocabulary;
//! - [`config`]: model presets (`tiny`, `base`, `big`) and the training protocol;
//! - [`batches`]: batches of sentences of similar length, a pure function of the step;
//! - [`train`]: the training loop, checkpoints and resumption;
//! - [`decode`]: greedy and beam search with the decoder's carried state; [`eval`]: translating
//!   and scoring a split;
//! - [`export`]: TorchScript of the encoder and of one decoder step;
//! - [`speed`]: decoding speed and memory against source length;
//! - [`report`]: the results table and plot of a folder of runs;
//! - [`bleu`]: corpus BLEU and chrF as sacreBLEU computes them.

pub mod batches;
pub mod bible;
pub mod bleu;
pub mod bpe;
pub mod config;
pub mod corpus;
pub mod decode;
pub mod eval;
pub mod export;
pub mod report;
pub mod speed;
pub mod train;
