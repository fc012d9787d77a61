//! Generation with an encoder–decoder model: greedy and beam search, batched over sentences, the
//! decoder run one token at a time with its carried state ([`Seq2Seq::step`]).
//!
//! Beam search keeps `beam` hypotheses per sentence ranked by their summed log-probability; a
//! hypothesis that has produced `</s>` stays in the beam with its score frozen, and the search
//! stops when every beam is finished or at the length limit, `max_len_a * source length +
//! max_len_b` target tokens (`</s>` forced at the limit). The result is the hypothesis with the
//! best score / length^`length_penalty` (length counting `</s>`; 0: raw scores, 1: per token).

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
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            beam: 4,
            length_penalty: 1.0,
            max_len_a: 1.5,
            max_len_b: 10,
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
        Ok(())
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
    opts.check()?;
    tch::no_grad(|| search(model, src, opts))
}

fn search(model: &Seq2Seq, src: &Tensor, opts: &DecodeOptions) -> Result<Vec<Hypothesis>> {
    let dev = model.device();
    let src = src.f_to_device(dev)?;
    let (b, k) = (src.size()[0], opts.beam);
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
    // each sentence's state repeated beam times: row b * k + j is beam j of sentence b
    let rows = Tensor::f_arange(b, (Kind::Int64, dev))?.f_repeat_interleave_self_int(k, 0, None)?;
    let mut state = model.start(&enc)?.select(&rows)?;
    let mut scores = Tensor::f_full([b, k], f64::NEG_INFINITY, (Kind::Double, dev))?;
    let _ = scores.f_narrow(1, 0, 1)?.f_fill_(0.0)?; // only beam 0 is live at the start
    let mut finished = Tensor::f_zeros([b, k], (Kind::Bool, dev))?;
    let mut history = Tensor::f_full([b * k, 0], PAD, (Kind::Int64, dev))?;
    let mut last = Tensor::f_full([b * k, 1], BOS, (Kind::Int64, dev))?;
    let limit_t = Tensor::from_slice(&limit).f_to_device(dev)?; // [B]
    for t in 0..steps {
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
        state = state.select(&global)?;
        history = Tensor::f_cat(
            &[history.f_index_select(0, &global)?, token.f_view([-1, 1])?],
            1,
        )?;
        finished = finished
            .f_gather(1, &origin, false)?
            .f_logical_or(&token.f_eq(EOS)?)?;
        scores = best;
        last = token.f_view([-1, 1])?;
        if bool::try_from(finished.f_all()?)? {
            break;
        }
    }
    // choose by length-normalised score
    let hist: Vec<Vec<i64>> = {
        let n = history.size()[1];
        let flat: Vec<i64> = Vec::try_from(history.f_view([-1])?)?;
        flat.chunks(n.max(1) as usize)
            .map(<[i64]>::to_vec)
            .collect::<Vec<_>>()
    };
    let scores: Vec<f64> = Vec::try_from(scores.f_view([-1])?)?;
    let mut out = Vec::with_capacity(b as usize);
    for s in 0..b as usize {
        let mut best: Option<(f64, Hypothesis)> = None;
        for j in 0..k as usize {
            let row = s * k as usize + j;
            let score = scores[row];
            if !score.is_finite() {
                continue;
            }
            let ids = if hist.is_empty() {
                &[][..]
            } else {
                &hist[row][..]
            };
            let len = ids
                .iter()
                .position(|&x| x == EOS)
                .map_or(ids.len(), |p| p + 1);
            let norm = score / (len.max(1) as f64).powf(opts.length_penalty);
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
        out.push(
            best.map(|(_, h)| h)
                .ok_or_else(|| anyhow::anyhow!("sentence {s}: no finite hypothesis"))?,
        );
    }
    Ok(out)
}
