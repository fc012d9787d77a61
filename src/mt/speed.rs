//! Decoding speed and memory against source length (`translate speed`, docs/translate.md): real
//! text cut into sources of exactly L tokens, translated in batches, timed; and the state one
//! sentence's decoder holds: the cross-attention memories (growing with L for every variant) and
//! the self-attention caches after the generated length (growing with it for softmax, constant
//! for fast weights).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::bpe::{Bpe, BOS};
use super::decode::{translate_counting_steps, DecodeOptions};
use crate::seq2seq::Seq2Seq;

/// One source length's measurement (a line of `<run>/speed.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeSpeed {
    pub variant: String,
    /// The update count of the checkpoint measured (set by the caller; absent in records made
    /// before it was recorded). Not to be confused with `steps`, the decoder's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<usize>,
    pub source_len: i64,
    pub sentences: usize,
    pub batch: usize,
    pub decode: DecodeOptions,
    pub seconds: f64,
    pub sentences_per_s: f64,
    /// Generated target tokens (without `</s>`) per second, and per sentence on average.
    pub target_tokens_per_s: f64,
    pub mean_target_len: f64,
    /// Decoder steps the searches ran, summed over batches, and per second: a batch steps until
    /// its last hypothesis ends (or the length limit), so steps, not the kept translations'
    /// tokens, are what a search pays for. Absent in records made before they were measured.
    #[serde(default)]
    pub steps: Option<i64>,
    #[serde(default)]
    pub steps_per_s: Option<f64>,
    /// Bytes of one sentence's cross-attention memories, and of its self-attention caches after
    /// `mean_target_len` tokens (one hypothesis; a beam holds one memory, which its hypotheses
    /// share, and `beam` caches).
    pub memory_bytes: usize,
    pub cache_bytes: usize,
    pub threads: i32,
}

/// Sources of exactly `len` tokens cut from `texts` read as one stream (the texts' BPE ids
/// concatenated), at most `n` of them.
pub fn sources_of_length(
    bpe: &Bpe,
    texts: &[String],
    len: usize,
    n: usize,
) -> Result<Vec<Vec<i64>>> {
    crate::check::positive("source length", len as i64)?;
    let mut stream = Vec::new();
    for t in texts {
        stream.extend(bpe.encode(t)?);
        if stream.len() >= len * n {
            break;
        }
    }
    let out: Vec<Vec<i64>> = stream
        .chunks_exact(len)
        .take(n)
        .map(<[i64]>::to_vec)
        .collect();
    if out.is_empty() {
        bail!(
            "the texts hold {} tokens, fewer than one source of {len}",
            stream.len()
        );
    }
    Ok(out)
}

/// Translates `sources` (all of one length) in batches of `batch`, timed, and measures one
/// sentence's decoder state.
pub fn measure(
    model: &Seq2Seq,
    variant: &str,
    sources: &[Vec<i64>],
    batch: usize,
    opts: &DecodeOptions,
) -> Result<DecodeSpeed> {
    crate::check::positive("batch", batch as i64)?;
    let len = sources.first().map_or(0, Vec::len);
    if len == 0 || sources.iter().any(|s| s.len() != len) {
        bail!("sources: expected one or more of a single non-zero length");
    }
    let dev = model.device();
    let started = std::time::Instant::now();
    let (mut generated, mut steps) = (0usize, 0i64);
    for chunk in sources.chunks(batch) {
        let flat: Vec<i64> = chunk.concat();
        let src = Tensor::from_slice(&flat)
            .f_view([chunk.len() as i64, len as i64])?
            .f_to_device(dev)?;
        let (hyps, ran) = translate_counting_steps(model, &src, opts)?;
        generated += hyps.iter().map(|h| h.tokens.len()).sum::<usize>();
        steps += ran;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let mean_target_len = generated as f64 / sources.len() as f64;
    // one sentence's state after the mean generated length (plus <s>)
    let (memory_bytes, cache_bytes) = tch::no_grad(|| -> Result<(usize, usize)> {
        let src = Tensor::from_slice(&sources[0])
            .f_unsqueeze(0)?
            .f_to_device(dev)?;
        let mut state = model.start(&model.encode(&src, false)?)?;
        let memory = state
            .memory_tensors()
            .iter()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        let token = Tensor::f_full([1, 1], BOS, (Kind::Int64, dev))?;
        for _ in 0..=(mean_target_len.round() as usize) {
            let _ = model.step(&token, &mut state)?;
        }
        Ok((memory, state.cache_bytes()))
    })?;
    Ok(DecodeSpeed {
        variant: variant.to_string(),
        checkpoint_step: None,
        source_len: len as i64,
        sentences: sources.len(),
        batch,
        decode: *opts,
        seconds,
        sentences_per_s: sources.len() as f64 / seconds,
        target_tokens_per_s: generated as f64 / seconds,
        mean_target_len,
        steps: Some(steps),
        steps_per_s: Some(steps as f64 / seconds),
        memory_bytes,
        cache_bytes,
        threads: tch::get_num_threads(),
    })
}
