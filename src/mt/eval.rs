//! Translating a list of sentences in batches of similar length, and scoring them with BLEU and
//! chrF against references.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use super::batches::{Batch, Example};
use super::bleu::{corpus_bleu, corpus_chrf, Bleu};
use super::bpe::{Bpe, PAD};
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

/// The teacher-forced negative log-likelihood of the references given the sources, in nats per
/// target token (`</s>` counted, padding not, no label smoothing, dropout off); its exp is the
/// references' perplexity. It measures the model as the training loss does, without the search:
/// two models with the same value but different BLEU differ in decoding, not in fit. Pairs go
/// `batch` at a time, sorted by length.
pub fn reference_nll(
    model: &Seq2Seq,
    bpe: &Bpe,
    sources: &[String],
    refs: &[String],
    batch: usize,
) -> Result<f64> {
    if sources.len() != refs.len() {
        bail!(
            "{} sources but {} references: they must pair up",
            sources.len(),
            refs.len()
        );
    }
    let examples: Vec<Example> = sources
        .iter()
        .zip(refs)
        .map(|(s, r)| {
            Ok(Example {
                src: bpe.encode(s)?,
                tgt: bpe.encode(r)?,
            })
        })
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].src.len().max(examples[i].tgt.len()), i));
    let device = model.device();
    let (mut nll, mut tokens) = (0.0, 0i64);
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(batch.max(1)) {
            let rows: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            let b = Batch::new(&rows, device)?;
            let logits = model.decode_t(&b.tgt_in, &model.encode(&b.src, false)?, false)?;
            let v = logits.size()[2];
            let sum = logits
                .f_view([-1, v])?
                .f_to_kind(Kind::Double)?
                .f_cross_entropy_loss::<Tensor>(
                    &b.tgt_out.f_view([-1])?,
                    None,
                    Reduction::Sum,
                    PAD,
                    0.0,
                )?;
            nll += f64::try_from(&sum)?;
            tokens += b.target_tokens()?;
        }
        Ok(())
    })?;
    if tokens == 0 {
        bail!("no reference tokens to score");
    }
    Ok(nll / tokens as f64)
}

/// Where `eval` writes a split's hypotheses: `<run>/hyp.<split>.<search>.<lang>`, the search as
/// [`DecodeOptions::file_tag`] names it (`beam4`, `beam4.lp0.6`, ...), with `.first<N>` after the
/// split for an evaluation of its first N sentences only, so that no search or limit overwrites
/// another's file.
pub fn hypothesis_file(
    run: &std::path::Path,
    split: Split,
    limit: Option<usize>,
    opts: &DecodeOptions,
    lang: &str,
) -> std::path::PathBuf {
    let first = limit.map(|n| format!(".first{n}")).unwrap_or_default();
    run.join(format!("hyp.{split}{first}.{}.{lang}", opts.file_tag()))
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
    /// Only the split's first `limit` sentences were translated (`eval --limit`); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
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
    /// [`reference_nll`] of the split (absent from older records).
    #[serde(default)]
    pub reference_nll: Option<f64>,
}
