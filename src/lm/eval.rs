//! Perplexity of a split, three ways:
//! - [`EvalMode::Sliding`] (the paper's protocol, stride 1): windows of the training context moved
//!   by `stride` tokens; the first window scores all its predictions, every later one only its last
//!   `stride`, so with stride 1 every scored token (after the first window) sees a full window;
//! - [`EvalMode::Segments`]: non-overlapping windows, every prediction scored (fast; a token sees
//!   between 1 and `context` tokens);
//! - [`EvalMode::Stateful`] (fast-weight models): non-overlapping segments in one stream, each
//!   layer's fast weights carried from one segment into the next (positions restart at 0 in every
//!   segment, as in training), so every token sees the whole split before it through the state.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::model::LanguageModel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    Sliding { stride: i64 },
    Segments,
    Stateful,
}

impl std::fmt::Display for EvalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalMode::Sliding { stride } => write!(f, "sliding:{stride}"),
            EvalMode::Segments => f.write_str("segments"),
            EvalMode::Stateful => f.write_str("stateful"),
        }
    }
}

impl std::str::FromStr for EvalMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "segments" => Ok(EvalMode::Segments),
            "stateful" => Ok(EvalMode::Stateful),
            "sliding" => Ok(EvalMode::Sliding { stride: 1 }),
            _ => match s.strip_prefix("sliding:").and_then(|n| n.parse::<i64>().ok()) {
                Some(stride) if stride >= 1 => Ok(EvalMode::Sliding { stride }),
                _ => bail!("eval mode '{s}': expected sliding, sliding:STRIDE (>= 1), segments or stateful"),
            },
        }
    }
}

/// Summed negative log-likelihood (nats) and the number of scored predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub nll: f64,
    pub count: i64,
}

impl Score {
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }
    fn add(&mut self, other: Score) {
        self.nll += other.nll;
        self.count += other.count;
    }
}

/// Sum of -log p(target) over positions `[from, T)` of every row, from hidden states `[B, T, d]`
/// (the output layer runs on the scored positions only).
fn nll(model: &LanguageModel, hidden: &Tensor, targets: &Tensor, from: i64) -> Result<Score> {
    let t = hidden.size()[1];
    let y = targets.f_narrow(1, from, t - from)?;
    let total = model.nll_sum(&hidden.f_narrow(1, from, t - from)?, &y)?;
    Ok(Score {
        nll: f64::try_from(total)?,
        count: y.numel() as i64,
    })
}

/// The windows of the sliding protocol over a stream of `n` tokens: (start, first scored
/// position within the window). Each window is `[start, start + len)` of the inputs, predicting
/// the next token at each position.
pub fn sliding_windows(n: i64, context: i64, stride: i64) -> Vec<(i64, i64, i64)> {
    // predictions: inputs x[0..n-1) -> targets x[1..n)
    let preds = n - 1;
    if preds <= 0 {
        return Vec::new();
    }
    let first = context.min(preds);
    let mut out = vec![(0, first, 0)]; // (start, len, first scored)
    let mut scored = first; // predictions [0, scored) done
    while scored < preds {
        let end = (scored + stride).min(preds); // score predictions [scored, end)
        let start = (end - context).max(0);
        out.push((start, end - start, scored - start));
        scored = end;
    }
    out
}

/// Perplexity of `tokens` (a 1-D id stream) under `model` (evaluation mode, no dropout).
pub fn evaluate(
    model: &LanguageModel,
    tokens: &Tensor,
    context: i64,
    mode: EvalMode,
    batch: i64,
) -> Result<Score> {
    crate::check::positive("context", context)?;
    crate::check::positive("batch", batch)?;
    if let EvalMode::Sliding { stride } = mode {
        if !(1..=context).contains(&stride) {
            bail!("sliding stride {stride} must be between 1 and the context ({context})");
        }
    }
    let device = model.device();
    let tokens = tokens.f_to_kind(Kind::Int64)?.f_to_device(device)?;
    let n = tokens.size1()?;
    if n < 2 {
        bail!("cannot evaluate on {n} token(s): need at least 2");
    }
    let mut total = Score::default();
    tch::no_grad(|| -> Result<()> {
        match mode {
            EvalMode::Sliding { stride } => {
                // Windows of equal length run in batches; the few shorter ones (the start) alone.
                let windows = sliding_windows(n, context, stride);
                let mut pending: Vec<(i64, i64, i64)> = Vec::new();
                let mut flush = |pending: &mut Vec<(i64, i64, i64)>| -> Result<()> {
                    if pending.is_empty() {
                        return Ok(());
                    }
                    let len = pending[0].1;
                    let from = pending[0].2;
                    let xs: Vec<Tensor> =
                        pending.iter().map(|w| tokens.narrow(0, w.0, len)).collect();
                    let ys: Vec<Tensor> = pending
                        .iter()
                        .map(|w| tokens.narrow(0, w.0 + 1, len))
                        .collect();
                    let (hidden, _) = model.hidden_t(&Tensor::f_stack(&xs, 0)?, None, 0, false)?;
                    total.add(nll(model, &hidden, &Tensor::f_stack(&ys, 0)?, from)?);
                    pending.clear();
                    Ok(())
                };
                for w in windows {
                    if let Some(p) = pending.first() {
                        if (p.1, p.2) != (w.1, w.2) || pending.len() as i64 == batch {
                            flush(&mut pending)?;
                        }
                    }
                    pending.push(w);
                }
                flush(&mut pending)?;
            }
            EvalMode::Segments => {
                let preds = n - 1;
                let mut start = 0;
                while start < preds {
                    // up to `batch` full segments side by side, or one short last segment
                    let len = context.min(preds - start);
                    let rows = if len == context {
                        (((preds - start) / context).min(batch)).max(1)
                    } else {
                        1
                    };
                    let xs: Vec<Tensor> = (0..rows)
                        .map(|r| tokens.narrow(0, start + r * len, len))
                        .collect();
                    let ys: Vec<Tensor> = (0..rows)
                        .map(|r| tokens.narrow(0, start + r * len + 1, len))
                        .collect();
                    let (hidden, _) = model.hidden_t(&Tensor::f_stack(&xs, 0)?, None, 0, false)?;
                    total.add(nll(model, &hidden, &Tensor::f_stack(&ys, 0)?, 0)?);
                    start += rows * len;
                }
            }
            EvalMode::Stateful => {
                if !model.has_fast_weights() {
                    bail!("stateful evaluation carries fast weights; this model uses softmax attention");
                }
                let preds = n - 1;
                let mut states = None;
                let mut start = 0;
                while start < preds {
                    let len = context.min(preds - start);
                    let x = tokens.narrow(0, start, len).f_unsqueeze(0)?;
                    let y = tokens.narrow(0, start + 1, len).f_unsqueeze(0)?;
                    let (hidden, s) = model.hidden_t(&x, states.as_deref(), 0, false)?;
                    total.add(nll(model, &hidden, &y, 0)?);
                    states = Some(s);
                    start += len;
                }
            }
        }
        Ok(())
    })?;
    Ok(total)
}
