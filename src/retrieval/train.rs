//! The training protocol of the paper's synthetic experiments (docs/retrieval.md): Adam (lr 1e-3),
//! batch 32, up to 100k steps; every 100 steps evaluate on 20 fresh sequences querying every
//! distinct key (at most 200); stop when the eval loss reaches 0.001 (solved) or after `patience`
//! evaluations without improvement (the authors: 11). How queries are drawn, how long evaluation
//! sequences are and how the eval loss is averaged are fields of [`TrainConfig`]; the two named
//! protocols are in [`super::Protocol`].

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind};

use super::data::{eval_batch, training_batch, Batch, EvalLength, QueryDraw, QueryOrder, Setting};
use super::model::{query_losses, RetrievalModel};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub batch: i64,
    pub max_steps: usize,
    pub eval_every: usize,
    pub eval_sequences: i64,
    pub max_eval_queries: i64,
    /// Evaluations in a row without a new best that stop the run.
    pub patience: usize,
    /// Eval loss at or below which a run counts as solved (and stops).
    pub solved_loss: f64,
    /// How a training sequence's query is drawn. Records from before the choice: `Keys`.
    #[serde(default)]
    pub query: QueryDraw,
    /// How long evaluation sequences are. Records from before the choice: `Training`.
    #[serde(default)]
    pub eval_length: EvalLength,
    /// Which keys evaluation asks first. Records from before the choice: `Random`.
    #[serde(default)]
    pub eval_order: QueryOrder,
    /// `Some(c)`: each evaluation sequence's queries go in chunks of c through separate forward
    /// passes, and the eval loss is the mean of the chunks' mean losses (the authors' c = 32, their
    /// batch size). `None`: one pass, the mean over all queries.
    #[serde(default)]
    pub eval_chunk: Option<i64>,
}

impl Default for TrainConfig {
    /// The authors' protocol ([`TrainConfig::authors`]).
    fn default() -> Self {
        Self::authors()
    }
}

impl TrainConfig {
    /// The authors' synthetic-task protocol.
    pub fn authors() -> Self {
        TrainConfig {
            lr: 1e-3,
            batch: 32,
            max_steps: 100_000,
            eval_every: 100,
            eval_sequences: 20,
            max_eval_queries: 200,
            patience: 11,
            solved_loss: 1e-3,
            query: QueryDraw::Positions,
            eval_length: EvalLength::Keys,
            eval_order: QueryOrder::LowestIds,
            eval_chunk: Some(32),
        }
    }

    /// fwp's first reproduction protocol (docs/retrieval.md, "fwp-v1").
    pub fn fwp_v1() -> Self {
        TrainConfig {
            patience: 10,
            query: QueryDraw::Keys,
            eval_length: EvalLength::Training,
            eval_order: QueryOrder::Random,
            eval_chunk: None,
            ..Self::authors()
        }
    }
}

impl TrainConfig {
    /// Checks that every count is at least 1 and the rates are finite.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("max_steps", self.max_steps),
            ("eval_every", self.eval_every),
            ("patience", self.patience),
        ] {
            if v == 0 {
                bail!("{name} must be >= 1, got 0");
            }
        }
        for (name, v) in [
            ("batch", self.batch),
            ("eval_sequences", self.eval_sequences),
            ("max_eval_queries", self.max_eval_queries),
        ] {
            crate::check::positive(name, v)?;
        }
        if let Some(c) = self.eval_chunk {
            crate::check::positive("eval_chunk", c)?;
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr must be finite and > 0, got {}", self.lr);
        }
        if !self.solved_loss.is_finite() {
            bail!("solved_loss must be finite, got {}", self.solved_loss);
        }
        Ok(())
    }
}

/// Outcome of one training run. The losses can be NaN or infinite (written as strings, see
/// [`crate::report::real`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(with = "crate::report::real")]
    pub final_eval_loss: f64,
    #[serde(with = "crate::report::real")]
    pub best_eval_loss: f64,
    pub steps: usize,
    pub seconds: f64,
    pub solved: bool,
    /// (step, eval loss) at every evaluation.
    #[serde(with = "crate::report::real::pairs")]
    pub history: Vec<(usize, f64)>,
}

/// Called after every step with (step, last eval loss if any, steps per second).
pub type Progress<'a> = &'a mut dyn FnMut(usize, Option<f64>, f64);

/// Stops a run after `patience` evaluations in a row without a new best loss.
#[derive(Clone, Debug)]
pub struct EarlyStop {
    pub best: f64,
    /// Evaluations since the best (the authors' `strike`).
    pub strikes: usize,
    pub patience: usize,
}

impl EarlyStop {
    pub fn new(patience: usize) -> Self {
        EarlyStop {
            best: f64::INFINITY,
            strikes: 0,
            patience,
        }
    }

    /// Takes one eval loss; true when the run should stop for lack of progress.
    pub fn update(&mut self, loss: f64) -> bool {
        if loss < self.best {
            self.best = loss;
            self.strikes = 0;
        } else {
            self.strikes += 1;
        }
        self.strikes >= self.patience
    }
}

/// The evaluation batch of `cfg` for `s` keys: `eval_sequences` fresh sequences of the
/// evaluation length, each asking its distinct keys (at most `max_eval_queries`).
pub fn evaluation_batch(
    setting: Setting,
    s: i64,
    cfg: &TrainConfig,
    device: Device,
) -> Result<Batch> {
    eval_batch(
        setting,
        s,
        cfg.eval_sequences,
        cfg.eval_length.length(setting, s),
        cfg.max_eval_queries,
        cfg.eval_order,
        device,
    )
}

/// The eval loss on a fresh [`evaluation_batch`]: the mean over all queries, or with
/// `eval_chunk` the mean of the chunks' means, each chunk its own forward pass (so a FAVOR+
/// matrix redrawn at every pass is drawn again for every chunk, as in the authors' code).
pub fn evaluate(
    model: &RetrievalModel,
    setting: Setting,
    cfg: &TrainConfig,
    device: Device,
) -> Result<f64> {
    let batch = evaluation_batch(setting, model.cfg.s, cfg, device)?;
    tch::no_grad(|| eval_loss(model, &batch, cfg.eval_chunk))
}

/// The eval loss of `batch`: with `chunk` = None the mean over its real queries; with Some(c)
/// each row's queries go in chunks of c (their order in the batch), and the loss is the mean over
/// (row, chunk) of the chunk's mean loss.
pub fn eval_loss(model: &RetrievalModel, batch: &Batch, chunk: Option<i64>) -> Result<f64> {
    let Some(c) = chunk else {
        return Ok(f64::try_from(model.loss(batch, false)?)?);
    };
    let q = batch.query.size()[1];
    // One pass for all chunks where passes do not differ; one pass per chunk where they do.
    let whole = (!model.redraws_every_forward())
        .then(|| query_losses(&model.forward(batch, false)?, batch))
        .transpose()?; // [B, Q]
    let mut means = Vec::new();
    for start in (0..q).step_by(c as usize) {
        let width = c.min(q - start);
        let losses = match &whole {
            Some(l) => l.f_narrow(1, start, width)?,
            None => {
                let part = Batch {
                    keys: batch.keys.shallow_clone(),
                    values: batch.values.shallow_clone(),
                    query: batch.query.f_narrow(1, start, width)?,
                    target: batch.target.f_narrow(1, start, width)?,
                    mask: batch.mask.f_narrow(1, start, width)?,
                };
                query_losses(&model.forward(&part, false)?, &part)?
            }
        }; // [B, width]
        let mask = batch
            .mask
            .f_narrow(1, start, width)?
            .f_to_kind(Kind::Double)?;
        let count = Vec::<f64>::try_from(mask.f_sum_dim_intlist(
            [1i64].as_slice(),
            false,
            None::<Kind>,
        )?)?;
        let total =
            Vec::<f64>::try_from((losses.f_to_kind(Kind::Double)? * &mask).f_sum_dim_intlist(
                [1i64].as_slice(),
                false,
                None::<Kind>,
            )?)?;
        means.extend(
            count
                .iter()
                .zip(&total)
                .filter(|(n, _)| **n > 0.0)
                .map(|(n, t)| t / n),
        );
    }
    if means.is_empty() {
        bail!("evaluation batch holds no queries");
    }
    Ok(means.iter().sum::<f64>() / means.len() as f64)
}

/// Trains `model` (whose variables live in `vs`) on `setting` until solved, stalled or out of steps.
pub fn train(
    model: &RetrievalModel,
    vs: &nn::VarStore,
    setting: Setting,
    cfg: &TrainConfig,
    progress: Progress,
) -> Result<RunResult> {
    cfg.check()?;
    let device = vs.device();
    let mut opt = nn::Adam::default().build(vs, cfg.lr)?;
    let start = Instant::now();
    let (mut stop, mut stalled, mut last) = (EarlyStop::new(cfg.patience), false, f64::NAN);
    let mut history = Vec::new();
    let mut step = 0;
    while step < cfg.max_steps {
        step += 1;
        let batch = training_batch(setting, model.cfg.s, cfg.batch, cfg.query, device)?;
        let loss = model.loss(&batch, true)?;
        opt.backward_step(&loss);
        let mut evaluated = None;
        if step % cfg.eval_every == 0 || step == cfg.max_steps {
            last = evaluate(model, setting, cfg, device)?;
            if !last.is_finite() {
                bail!("eval loss is {last} at step {step}: the run diverged");
            }
            history.push((step, last));
            evaluated = Some(last);
            stalled = stop.update(last);
        }
        progress(step, evaluated, step as f64 / start.elapsed().as_secs_f64());
        if last <= cfg.solved_loss || stalled {
            break;
        }
    }
    Ok(RunResult {
        final_eval_loss: last,
        best_eval_loss: stop.best,
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
        solved: last <= cfg.solved_loss,
        history,
    })
}
