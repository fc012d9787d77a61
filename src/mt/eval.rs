//! Translating a list of sentences in batches of similar length, and scoring them with BLEU and
//! chrF against references.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::batches::{Batch, Example};
use super::bleu::{corpus_bleu, corpus_chrf, Bleu};
use super::bpe::Bpe;
use super::config::Preset;
use super::corpus::Split;
use super::decode::{translate, DecodeOptions};
use crate::seq2seq::Seq2Seq;

/// Translates `sources`, `batch` sentences per search (sorted by length, so that batches hold
/// little padding; the output is in the input's order). `progress` hears the sentences done.
pub fn translate_all(
    model: &Seq2Seq,
    bpe: &Bpe,
    sources: &[String],
    opts: &DecodeOptions,
    batch: usize,
    progress: Option<&dyn Fn(usize)>,
) -> Result<Vec<String>> {
    let ids: Vec<Vec<i64>> = sources
        .iter()
        .map(|s| bpe.encode(s))
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let mut out = vec![String::new(); sources.len()];
    let device: Device = model.device();
    for (n, chunk) in order.chunks(batch.max(1)).enumerate() {
        let examples: Vec<Example> = chunk
            .iter()
            .map(|&i| Example {
                src: ids[i].clone(),
                tgt: Vec::new(),
            })
            .collect();
        let refs: Vec<&Example> = examples.iter().collect();
        let src = Batch::new(&refs, device)?.src;
        for (&i, h) in chunk.iter().zip(translate(model, &src, opts)?) {
            out[i] = bpe.decode(&h.tokens)?;
        }
        if let Some(f) = progress {
            f(((n + 1) * batch.max(1)).min(sources.len()));
        }
    }
    Ok(out)
}

/// BLEU and chrF of a set of translations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub bleu: Bleu,
    pub chrf: f64,
}

pub fn score(hyps: &[String], refs: &[String]) -> Result<Scores> {
    Ok(Scores {
        bleu: corpus_bleu(hyps, refs)?,
        chrf: corpus_chrf(hyps, refs)?,
    })
}

/// One evaluation of a checkpoint (`translate eval`), a line of `<run>/results.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub variant: String,
    pub preset: Preset,
    pub split: Split,
    pub sentences: usize,
    pub decode: DecodeOptions,
    pub bleu: f64,
    pub chrf: f64,
    /// sacreBLEU's result line and signature.
    pub bleu_line: String,
    pub signature: String,
    /// The checkpoint's update count and parameters.
    pub step: usize,
    pub parameters: i64,
    /// Wall time of the decoding, and sentences per second.
    pub seconds: f64,
    pub sentences_per_s: f64,
    /// libtorch's CPU threads during the decoding (0: not recorded).
    #[serde(default)]
    pub threads: i32,
}
