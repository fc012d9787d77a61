//! The translation experiment (docs/translate.md) behind `experiments/translate`:
//!
//! - [`bible`]: the English–German Bible corpus, split by books; [`corpus`]: parallel corpora on
//!   disk; [`bpe`]: the joint byte-level BPE vocabulary;
//! - [`decode`]: greedy and beam search with the decoder's carried state;
//! - [`bleu`]: corpus BLEU and chrF as sacreBLEU computes them.

pub mod bible;
pub mod bleu;
pub mod bpe;
pub mod corpus;
pub mod decode;
