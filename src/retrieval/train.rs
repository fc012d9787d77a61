//! The training protocol of the paper's synthetic experiments (docs/retrieval.md): Adam (lr 1e-3), batch 32, up to 100k steps; every 100 steps
//! evaluate on 20 fresh sequences querying every distinct key (at most 200); stop when the eval
//! loss reaches 0.001 (solved) or after 10 evaluations without improvement.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device};

use super::data::{sample, Setting};
use super::model::RetrievalModel;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub batch: i64,
    pub max_steps: usize,
    pub eval_every: usize,
    pub eval_sequences: i64,
    pub max_eval_queries: i64,
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// Eval loss at or below which a run counts as solved (and stops).
    pub solved_loss: f64,
}

impl Default for TrainConfig {
    /// The paper's protocol.
    fn default() -> Self {
        TrainConfig {
            lr: 1e-3,
            batch: 32,
            max_steps: 100_000,
            eval_every: 100,
            eval_sequences: 20,
            max_eval_queries: 200,
            patience: 10,
            solved_loss: 1e-3,
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

/// Mean eval loss over `eval_sequences` fresh sequences, every distinct key queried (at most 200).
pub fn evaluate(
    model: &RetrievalModel,
    setting: Setting,
    cfg: &TrainConfig,
    device: Device,
) -> Result<f64> {
    let batch = sample(
        setting,
        model.cfg.s,
        cfg.eval_sequences,
        cfg.max_eval_queries,
        device,
    )?;
    let loss = tch::no_grad(|| model.loss(&batch))?;
    Ok(f64::try_from(loss)?)
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
    let (mut best, mut since_best, mut last) = (f64::INFINITY, 0, f64::NAN);
    let mut history = Vec::new();
    let mut step = 0;
    while step < cfg.max_steps {
        step += 1;
        let batch = sample(setting, model.cfg.s, cfg.batch, 1, device)?;
        let loss = model.loss(&batch)?;
        opt.backward_step(&loss);
        let mut evaluated = None;
        if step % cfg.eval_every == 0 || step == cfg.max_steps {
            last = evaluate(model, setting, cfg, device)?;
            if !last.is_finite() {
                bail!("eval loss is {last} at step {step}: the run diverged");
            }
            history.push((step, last));
            evaluated = Some(last);
            if last < best {
                best = last;
                since_best = 0;
            } else {
                since_best += 1;
            }
        }
        progress(step, evaluated, step as f64 / start.elapsed().as_secs_f64());
        if last <= cfg.solved_loss || since_best >= cfg.patience {
            break;
        }
    }
    Ok(RunResult {
        final_eval_loss: last,
        best_eval_loss: best,
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
        solved: last <= cfg.solved_loss,
        history,
    })
}
