//! Text generation with a trained LM (`lm sample`), one token at a time with the layers' carried
//! state ([`Generator`]), or by re-running the last context window for every token (the plain
//! twin, [`Generation::Rerun`]).
//!
//! The model was trained on segments of `context` tokens whose positions restart at every segment
//! (the `stateful` evaluation carries fast weights across such segments, docs/lm.md). Generation
//! keeps that frame: the text is cut into segments of `context` tokens, token j of a segment gets
//! position j (or context - 1 - j with the authors' descending positions), and
//!
//! - fast-weight layers carry their state across segments: O(1) time and memory per token, as the
//!   `stateful` evaluation reads text;
//! - softmax layers keep the keys and values of the current segment: when it is full, a new one
//!   starts from the last context / 2 tokens, re-run at once. Every token sees between context / 2
//!   and context - 1 earlier tokens, at most `context` keys are held, and the re-runs cost
//!   one window every context / 2 tokens. [`Window::Unbounded`] keeps every key instead: the usual
//!   cache, whose memory and time per token grow with the text; positions then run past the
//!   trained ones, so it is a measurement of speed and memory, not a way to get good text.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::data::Vocab;
use crate::attention::StepCache;
use crate::model::{LanguageModel, PositionOrder};

/// How tokens are predicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// With carried state ([`Generator`]).
    Cached(Window),
    /// Each token from a fresh run over the last `context` tokens (positions as one segment):
    /// O(context) work per token for every layer, the reference the cached form is tested against.
    Rerun,
}

/// What a softmax layer's cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The current segment of at most `context` tokens (see the module's documentation).
    Context,
    /// Every token so far.
    Unbounded,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Cached(Window::Context) => "cached",
            Generation::Cached(Window::Unbounded) => "cached-unbounded",
            Generation::Rerun => "rerun",
        })
    }
}

impl FromStr for Generation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cached" => Generation::Cached(Window::Context),
            "cached-unbounded" => Generation::Cached(Window::Unbounded),
            "rerun" => Generation::Rerun,
            _ => bail!("generation '{s}': expected cached, cached-unbounded or rerun"),
        })
    }
}

/// An LM reading a text one token (or a few) at a time with its layers' caches.
pub struct Generator<'a> {
    model: &'a LanguageModel,
    context: i64,
    window: Window,
    caches: Vec<Option<StepCache>>,
    /// Tokens of the current segment read so far.
    in_segment: i64,
    /// The tokens read (softmax layers re-run the last half window when a segment fills).
    history: Vec<i64>,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a LanguageModel, context: i64, window: Window) -> Result<Self> {
        crate::check::positive("context", context)?;
        if context < 2 && !model.has_fast_weights() && window == Window::Context {
            bail!("context {context}: a softmax cache needs a context of at least 2 tokens");
        }
        Ok(Generator {
            model,
            context,
            window,
            caches: (0..model.cfg.n_layers).map(|_| None).collect(),
            in_segment: 0,
            history: Vec::new(),
        })
    }

    /// Bytes the caches hold.
    pub fn cache_bytes(&self) -> usize {
        self.caches.iter().flatten().map(StepCache::bytes).sum()
    }

    /// Reads `ids` (at least one) -> the logits `[vocab]` of the token after the last.
    pub fn feed(&mut self, ids: &[i64]) -> Result<Tensor> {
        if ids.is_empty() {
            bail!("feed: no tokens");
        }
        let unbounded = self.window == Window::Unbounded || self.model.has_fast_weights();
        let mut hidden = None;
        let mut rest = ids;
        while !rest.is_empty() {
            if self.in_segment == self.context {
                if unbounded {
                    // fast weights carry their state into the next segment; an unbounded softmax
                    // cache never starts one
                    if self.model.has_fast_weights() {
                        self.in_segment = 0;
                    }
                } else {
                    // softmax: a new segment from the last half window
                    let keep = (self.context / 2) as usize;
                    let last = self.history[self.history.len() - keep..].to_vec();
                    self.caches.iter_mut().for_each(|c| *c = None);
                    self.in_segment = 0;
                    let _ = self.run(&last)?;
                }
            }
            let room = if unbounded && !self.model.has_fast_weights() {
                rest.len()
            } else {
                ((self.context - self.in_segment) as usize).min(rest.len())
            };
            let (now, later) = rest.split_at(room);
            hidden = Some(self.run(now)?);
            self.history.extend_from_slice(now);
            rest = later;
        }
        let hidden = hidden.expect("at least one token was read");
        Ok(self
            .model
            .logits(&hidden.f_select(1, -1)?)?
            .f_squeeze_dim(0)?
            .f_to_kind(Kind::Float)?)
    }

    /// Runs `ids` as the next tokens of the current segment -> hidden states `[1, n, d]`.
    fn run(&mut self, ids: &[i64]) -> Result<Tensor> {
        let n = ids.len() as i64;
        let dev = self.model.device();
        let j = Tensor::f_arange_start(self.in_segment, self.in_segment + n, (Kind::Int64, dev))?;
        let positions = match self.model.cfg.conventions.positions {
            PositionOrder::Ascending => j,
            PositionOrder::Descending => j.f_neg()?.f_add_scalar(self.context - 1)?,
        };
        let x = Tensor::from_slice(ids).f_unsqueeze(0)?.f_to_device(dev)?;
        let h = self.model.hidden_step(&x, &positions, &mut self.caches)?;
        self.in_segment += n;
        Ok(h)
    }
}

/// Sampling options.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub tokens: usize,
    /// Softmax temperature; 0 picks the most likely word.
    pub temperature: f64,
    /// Keep only the k most likely words (0: all).
    pub top_k: i64,
    pub seed: i64,
    pub generation: Generation,
}

impl SampleOptions {
    fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "temperature must be finite and >= 0, got {}",
                self.temperature
            );
        }
        if self.top_k < 0 {
            bail!("top-k must be >= 0, got {}", self.top_k);
        }
        Ok(())
    }

    /// The next token from the logits `[V]` of the last one.
    pub fn pick(&self, last: &Tensor) -> Result<i64> {
        if self.temperature == 0.0 {
            return Ok(i64::try_from(last.f_argmax(0, false)?)?);
        }
        let mut scaled = last / self.temperature;
        if !bool::try_from(scaled.f_isfinite()?.f_all()?)? {
            bail!(
                "temperature {:e}: too small for these logits (dividing by it overflows); \
                 use 0 to pick the most likely word, or a larger temperature",
                self.temperature
            );
        }
        if self.top_k > 0 && self.top_k < scaled.size()[0] {
            let (kth, _) = scaled.f_topk(self.top_k, 0, true, true)?;
            let cut = kth.f_select(0, self.top_k - 1)?;
            scaled = scaled
                .f_where_self(&scaled.f_ge_tensor(&cut)?, &Tensor::from(f64::NEG_INFINITY))?;
        }
        let probs = scaled.f_softmax(0, Kind::Float)?;
        Ok(i64::try_from(
            probs.f_multinomial(1, false)?.f_select(0, 0)?,
        )?)
    }
}

/// The logits `[V]` of the token after `ids`, from a fresh run over the last `context` of them
/// (one segment).
fn rerun_logits(model: &LanguageModel, context: i64, ids: &[i64]) -> Result<Tensor> {
    let from = ids.len().saturating_sub(context as usize);
    let x = Tensor::from_slice(&ids[from..])
        .f_unsqueeze(0)?
        .f_to_device(model.device())?;
    let (logits, _) = model.forward_t(&x, None, 0, false)?;
    Ok(logits
        .f_select(1, -1)?
        .f_squeeze_dim(0)?
        .f_to_kind(Kind::Float)?)
}

/// Continues `prompt` (words) by `opts.tokens` words.
pub fn sample(
    model: &LanguageModel,
    vocab: &Vocab,
    context: i64,
    prompt: &[String],
    opts: SampleOptions,
) -> Result<Vec<String>> {
    opts.check()?;
    tch::manual_seed(opts.seed);
    let mut ids: Vec<i64> = if prompt.is_empty() {
        vec![vocab.id(super::data::EOS)]
    } else {
        vocab.encode(prompt)
    };
    let start = ids.len();
    tch::no_grad(|| -> Result<()> {
        match opts.generation {
            Generation::Rerun => {
                for _ in 0..opts.tokens {
                    let next = opts.pick(&rerun_logits(model, context, &ids)?)?;
                    ids.push(next);
                }
            }
            Generation::Cached(window) => {
                let mut g = Generator::new(model, context, window)?;
                let mut logits = g.feed(&ids)?;
                for i in 0..opts.tokens {
                    let next = opts.pick(&logits)?;
                    ids.push(next);
                    if i + 1 < opts.tokens {
                        logits = g.feed(&[next])?;
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(ids[start..]
        .iter()
        .map(|&i| vocab.word(i).to_string())
        .collect())
}

/// Generation speed and memory after `tokens` generated tokens ([`measure`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpeedPoint {
    pub generation: String,
    /// Tokens generated so far.
    pub tokens: usize,
    /// Tokens per second over the interval since the previous point.
    pub tokens_per_s: f64,
    /// Bytes of the layers' caches (0 for a re-run, which keeps none).
    pub cache_bytes: usize,
    /// The process's peak resident memory so far (Linux VmHWM), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// The peak resident memory of this process (VmHWM in /proc/self/status), where there is one.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Generates `tokens` tokens greedily after one end-of-sentence token, recording speed and memory
/// at every multiple of `every` tokens (and at the end). Greedy picks keep the work independent of
/// chance.
pub fn measure(
    model: &LanguageModel,
    context: i64,
    generation: Generation,
    tokens: usize,
    every: usize,
) -> Result<Vec<SpeedPoint>> {
    crate::check::positive("tokens", tokens as i64)?;
    crate::check::positive("every", every as i64)?;
    let greedy = SampleOptions {
        tokens,
        temperature: 0.0,
        top_k: 0,
        seed: 0,
        generation,
    };
    let mut points = Vec::new();
    tch::no_grad(|| -> Result<()> {
        let mut ids = vec![0i64];
        let mut g = match generation {
            Generation::Cached(w) => Some(Generator::new(model, context, w)?),
            Generation::Rerun => None,
        };
        let mut logits = match g.as_mut() {
            Some(g) => g.feed(&ids)?,
            None => rerun_logits(model, context, &ids)?,
        };
        let mut since = std::time::Instant::now();
        let mut last_mark = 0;
        for i in 1..=tokens {
            let next = greedy.pick(&logits)?;
            ids.push(next);
            logits = match g.as_mut() {
                Some(g) => g.feed(&[next])?,
                None => rerun_logits(model, context, &ids)?,
            };
            if i % every == 0 || i == tokens {
                let seconds = since.elapsed().as_secs_f64();
                points.push(SpeedPoint {
                    generation: generation.to_string(),
                    tokens: i,
                    tokens_per_s: (i - last_mark) as f64 / seconds.max(1e-9),
                    cache_bytes: g.as_ref().map_or(0, Generator::cache_bytes),
                    peak_rss_bytes: peak_rss_bytes(),
                });
                since = std::time::Instant::now();
                last_mark = i;
            }
        }
        Ok(())
    })?;
    Ok(points)
}
