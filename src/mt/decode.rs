//! Generation with an encoder–decoder model: greedy and beam search, batched over sentences, the
//! decoder run one token at a time with its carried state ([`Seq2Seq::step`]).
//!
//! Beam search keeps `beam` hypotheses per sentence ranked by their summed log-probability; a
//! hypothesis that has produced `</s>` stays in the beam with its score frozen, and a sentence's
//! search ends when all its beams are finished or at the length limit, `max_len_a * source
//! length + max_len_b` target tokens (`</s>` forced at the limit). The result is the hypothesis
//! with the best score / length^`length_penalty` (length counting `</s>`; 0: raw scores, 1: per
//! token).
//!
//! `no_repeat_ngram` n > 0 forbids a hypothesis to repeat any n tokens it has already produced
//! (fairseq's `--no-repeat-ngram-size`): after its last n - 1 tokens, the tokens that would complete
//! one of its earlier n-grams get probability 0. Off by default.
//!
//! The beams of a sentence share its source memory (not copied per hypothesis), and a sentence
//! that has ended leaves the batch, so that the rest step on without it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::bpe::{BOS, EOS, PAD};
use crate::seq2seq::Seq2Seq;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeOptions {
    /// 1: greedy.
    pub beam: i64,
    pub length_penalty: f64,
    pub max_len_a: f64,
    pub max_len_b: i64,
    /// n > 0: no hypothesis repeats an n-gram of its own tokens; 0: no such rule (absent from
    /// older records).
    #[serde(default)]
    pub no_repeat_ngram: i64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            beam: 4,
            length_penalty: 1.0,
            max_len_a: 1.5,
            max_len_b: 10,
            no_repeat_ngram: 0,
        }
    }
}

impl DecodeOptions {
    pub fn check(&self) -> Result<()> {
        crate::check::positive("beam", self.beam)?;
        if !(self.length_penalty.is_finite() && self.max_len_a.is_finite() && self.max_len_a >= 0.0)
        {
            bail!(
                "length penalty {} and max_len_a {} must be finite, max_len_a >= 0",
                self.length_penalty,
                self.max_len_a
            );
        }
        if self.max_len_b < 1 {
            bail!("max_len_b must be >= 1, got {}", self.max_len_b);
        }
        if self.no_repeat_ngram < 0 {
            bail!(
                "no_repeat_ngram must be >= 0 (0: off), got {}",
                self.no_repeat_ngram
            );
        }
        Ok(())
    }

    /// The search in a file name: `beam4`, with `.lp0.6` for a length penalty other than 1,
    /// `.nr3` for `no_repeat_ngram` 3 and `.max2x+5` for a length limit other than the default
    /// 1.5 x + 10.
    pub fn file_tag(&self) -> String {
        let mut tag = format!("beam{}", self.beam);
        if self.length_penalty != 1.0 {
            tag += &format!(".lp{}", self.length_penalty);
        }
        if self.no_repeat_ngram > 0 {
            tag += &format!(".nr{}", self.no_repeat_ngram);
        }
        if !self.is_default_length_limit() {
            tag += &format!(".max{}x+{}", self.max_len_a, self.max_len_b);
        }
        tag
    }

    /// Whether the length limit is the default `1.5 * source length + 10`.
    pub fn is_default_length_limit(&self) -> bool {
        let d = DecodeOptions::default();
        (self.max_len_a, self.max_len_b) == (d.max_len_a, d.max_len_b)
    }
}

/// A generated translation: its ids (without `<s>` and `</s>`) and summed log-probability
/// (including `</s>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<i64>,
    pub log_prob: f64,
}

/// Translates a batch of sources `src` `[B, S]` (padded with [`PAD`]): one hypothesis each.
pub fn translate(model: &Seq2Seq, src: &Tensor, opts: &DecodeOptions) -> Result<Vec<Hypothesis>> {
    Ok(translate_counting_steps(model, src, opts)?.0)
}

/// [`translate`], and the number of decoder steps the search ran: up to the length limit, or
/// until every hypothesis of the batch has produced `</s>` (the cost of a batch, which its
/// slowest hypothesis sets).
pub fn translate_counting_steps(
    model: &Seq2Seq,
    src: &Tensor,
    opts: &DecodeOptions,
) -> Result<(Vec<Hypothesis>, i64)> {
    opts.check()?;
    tch::no_grad(|| search(model, src, opts))
}

fn search(model: &Seq2Seq, src: &Tensor, opts: &DecodeOptions) -> Result<(Vec<Hypothesis>, i64)> {
    let dev = model.device();
    let src = src.f_to_device(dev)?;
    let (mut b, k) = (src.size()[0], opts.beam);
    // per sentence: the last step at which a token is chosen (</s> forced there)
    let src_len: Vec<i64> = Vec::try_from(src.f_ne(PAD)?.f_sum_dim_intlist(
        [1i64].as_slice(),
        false,
        Kind::Int64,
    )?)?;
    let limit: Vec<i64> = src_len
        .iter()
        .map(|&s| (opts.max_len_a * s as f64).floor() as i64 + opts.max_len_b)
        .collect();
    let steps = *limit.iter().max().unwrap_or(&1);
    let enc = model.encode(&src, false)?;
    // The searched sentences (their indices in `src`): row r * k + j of the tensors below is
    // beam j of searched sentence r; the k beams share the sentence's source memory. A sentence
    // whose beams have all ended leaves the search (its result is taken, its rows dropped).
    let mut searched: Vec<usize> = (0..b as usize).collect();
    let mut results: Vec<Option<Hypothesis>> = vec![None; b as usize];
    let mut state = model.start(&enc)?;
    let mut scores = Tensor::f_full([b, k], f64::NEG_INFINITY, (Kind::Double, dev))?;
    let _ = scores.f_narrow(1, 0, 1)?.f_fill_(0.0)?; // only beam 0 is live at the start
    let mut finished = Tensor::f_zeros([b, k], (Kind::Bool, dev))?;
    let mut history = Tensor::f_full([b * k, 0], PAD, (Kind::Int64, dev))?;
    let mut last = Tensor::f_full([b * k, 1], BOS, (Kind::Int64, dev))?;
    let mut limit_t = Tensor::from_slice(&limit).f_to_device(dev)?; // [B]
    let mut ran = 0;
    for t in 0..steps {
        ran += 1;
        let logits = model.step(&last, &mut state)?; // [B K, 1, V]
        let v = logits.size()[2];
        let mut logp = logits
            .f_squeeze_dim(1)?
            .f_log_softmax(-1, Kind::Double)?
            .f_view([b, k, v])?;
        // a finished hypothesis continues with <pad> at no cost
        let fin = finished.f_unsqueeze(-1)?;
        let pad_only = Tensor::f_full([v], f64::NEG_INFINITY, (Kind::Double, dev))?;
        let _ = pad_only.f_narrow(0, PAD, 1)?.f_fill_(0.0)?;
        logp = logp.f_where_self(&fin.f_logical_not()?, &pad_only)?;
        if opts.no_repeat_ngram > 0 {
            ban_repeated_ngrams(&logp, &history, &finished, opts.no_repeat_ngram as usize)?;
        }
        // at a sentence's length limit every live hypothesis ends with </s>
        let at_limit = limit_t
            .f_le(t + 1)?
            .f_view([b, 1, 1])?
            .f_logical_and(&fin.f_logical_not()?)?;
        let eos_only = Tensor::f_full([v], f64::NEG_INFINITY, (Kind::Double, dev))?;
        let _ = eos_only.f_narrow(0, EOS, 1)?.f_fill_(0.0)?;
        let eos_forced = eos_only.f_add(&logp.f_narrow(-1, EOS, 1)?)?; // keep </s>'s log-probability
        logp = eos_forced.f_where_self(&at_limit, &logp)?;
        // the best k continuations of all beams of each sentence
        let cand = (scores.f_unsqueeze(-1)? + logp).f_view([b, k * v])?;
        let (best, idx) = cand.f_topk(k, -1, true, true)?; // [B, K]
        let origin = idx.f_div_scalar_mode(v, "floor")?; // beam each continues
        let token = idx.f_remainder(v)?;
        let global = (origin.shallow_clone()
            + Tensor::f_arange(b, (Kind::Int64, dev))?.f_unsqueeze(1)? * k)
            .f_view([-1])?;
        state = state.reorder_hypotheses(&global)?;
        history = Tensor::f_cat(
            &[history.f_index_select(0, &global)?, token.f_view([-1, 1])?],
            1,
        )?;
        finished = finished
            .f_gather(1, &origin, false)?
            .f_logical_or(&token.f_eq(EOS)?)?;
        scores = best;
        last = token.f_view([-1, 1])?;
        // sentences whose beams have all ended leave the search
        let ended: Vec<bool> = Vec::try_from(finished.f_all_dim(1, false)?)?;
        if !ended.iter().any(|&e| e) {
            continue;
        }
        let hist = rows_of(&history)?;
        let score: Vec<f64> = Vec::try_from(scores.f_view([-1])?)?;
        let kk = k as usize;
        for (r, _) in ended.iter().enumerate().filter(|(_, &e)| e) {
            let s = searched[r];
            results[s] = Some(
                best_hypothesis(
                    &score[r * kk..(r + 1) * kk],
                    &hist[r * kk..(r + 1) * kk],
                    opts.length_penalty,
                )
                .ok_or_else(|| anyhow::anyhow!("sentence {s}: no finite hypothesis"))?,
            );
        }
        let keep: Vec<i64> = (0..b).filter(|&r| !ended[r as usize]).collect();
        if keep.is_empty() {
            break;
        }
        searched = keep.iter().map(|&r| searched[r as usize]).collect();
        b = keep.len() as i64;
        let keep = Tensor::from_slice(&keep).f_to_device(dev)?; // [B']
        let rows = (keep.f_unsqueeze(1)? * k
            + Tensor::f_arange(k, (Kind::Int64, dev))?.f_unsqueeze(0)?)
        .f_view([-1])?; // [B' K]
        state = state.select_sentences(&keep, &rows)?;
        scores = scores.f_index_select(0, &keep)?;
        finished = finished.f_index_select(0, &keep)?;
        limit_t = limit_t.f_index_select(0, &keep)?;
        history = history.f_index_select(0, &rows)?;
        last = last.f_index_select(0, &rows)?;
    }
    // the loop ends every sentence by its limit at the latest
    results
        .into_iter()
        .enumerate()
        .map(|(s, h)| h.ok_or_else(|| anyhow::anyhow!("sentence {s}: the search did not end it")))
        .collect::<Result<Vec<_>>>()
        .map(|out| (out, ran))
}

/// Sets to -inf, in `logp` `[B, K, V]`, the log-probability of every token that would make a live
/// hypothesis (row of `history` `[B K, t]`, not `finished` `[B, K]`) repeat one of its n-grams:
/// the tokens that followed its last n - 1 tokens before. `</s>` is never banned (a live hypothesis
/// has not produced it), so every hypothesis keeps a finite continuation.
fn ban_repeated_ngrams(logp: &Tensor, history: &Tensor, finished: &Tensor, n: usize) -> Result<()> {
    let hist = rows_of(history)?;
    let done: Vec<bool> = Vec::try_from(finished.f_view([-1])?)?;
    let (mut rows, mut banned) = (Vec::new(), Vec::new());
    for (r, h) in hist.iter().enumerate() {
        if done[r] || h.len() + 1 < n {
            continue;
        }
        let tail = &h[h.len() + 1 - n..]; // the last n - 1 tokens
        for gram in h.windows(n) {
            if gram[..n - 1] == *tail {
                rows.push(r as i64);
                banned.push(gram[n - 1]);
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let v = logp.size()[2];
    let dev = logp.device();
    let rows = Tensor::from_slice(&rows).f_to_device(dev)?;
    let banned = Tensor::from_slice(&banned).f_to_device(dev)?;
    let minus_inf = Tensor::f_full([1], f64::NEG_INFINITY, (Kind::Double, dev))?;
    let _ = logp
        .f_view([-1, v])?
        .f_index_put_(&[Some(rows), Some(banned)], &minus_inf, false)?;
    Ok(())
}

/// The rows of a 2-d id tensor `[N, L]` (N empty rows when L = 0).
fn rows_of(history: &Tensor) -> Result<Vec<Vec<i64>>> {
    let (n, len) = (history.size()[0] as usize, history.size()[1] as usize);
    if len == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let flat: Vec<i64> = Vec::try_from(history.f_contiguous()?.f_view([-1])?)?;
    Ok(flat.chunks(len).map(<[i64]>::to_vec).collect())
}

/// The best of one sentence's beams (summed log-probabilities `scores`, generated ids `ids`,
/// padded after `</s>`) by score / length^`length_penalty`, the length counting `</s>`; None if
/// no score is finite.
fn best_hypothesis(scores: &[f64], ids: &[Vec<i64>], length_penalty: f64) -> Option<Hypothesis> {
    let mut best: Option<(f64, Hypothesis)> = None;
    for (&score, ids) in scores.iter().zip(ids) {
        if !score.is_finite() {
            continue;
        }
        let len = ids
            .iter()
            .position(|&x| x == EOS)
            .map_or(ids.len(), |p| p + 1);
        let norm = score / (len.max(1) as f64).powf(length_penalty);
        if best.as_ref().is_none_or(|(n, _)| norm > *n) {
            let tokens = ids[..len].iter().copied().filter(|&x| x != EOS).collect();
            best = Some((
                norm,
                Hypothesis {
                    tokens,
                    log_prob: score,
                },
            ));
        }
    }
    best.map(|(_, h)| h)
}
