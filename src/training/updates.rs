//! The training loop both experiments run: per update, the step's seed, the learning rate, the
//! experiment's gradients, a stop on a non-finite loss or gradient norm (the update is not
//! applied), clipping, Adam; then the log record, the validation score and the checkpoint on their
//! cadences; a checkpoint and [`Outcome::Interrupted`] when asked to stop. The experiment supplies
//! what differs through [`Trainee`]; the start of a call (fresh or resumed run, logs) through
//! [`start`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use tch::Device;

use super::adam::{clip_grad_norm, Adam};
use super::checkpoint;
use super::{Outcome, StepLog};
use crate::report::{append_record, read_records, retain_records};

/// What a training call reports as it goes, to a progress bar or a log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TrainEvent {
    /// Training starts, or resumes, with `step` of `total` updates done.
    Start { step: usize, total: usize },
    /// An update is done (`step` updates in all); `tokens_per_s` on the updates that are logged.
    Update {
        step: usize,
        loss: f64,
        lr: f64,
        tokens_per_s: Option<f64>,
    },
    /// The validation score after `step` updates ([`Trainee::evaluate`]: perplexity for the
    /// language model, greedy BLEU for translation).
    Eval { step: usize, score: f64 },
}

/// Options of one training call besides the run's configuration.
pub struct TrainOptions<'a> {
    pub device: Device,
    /// Continue from `<run>/checkpoint` instead of starting afresh.
    pub resume: bool,
    /// Set (by a Ctrl-C handler) to stop after the current update, with a checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop as if interrupted once this many updates are done (tests).
    pub stop_after: Option<usize>,
    /// Told about every update and evaluation.
    pub progress: Option<&'a dyn Fn(TrainEvent)>,
}

/// The cadence and fixed settings of the loop, from the experiment's training configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Updates in all.
    pub steps: usize,
    /// Update `step` runs under `tch::manual_seed(seed * 1_000_003 + step)`.
    pub seed: i64,
    /// Gradient norm clipping threshold.
    pub clip: f64,
    /// Log every N updates, evaluate every N, checkpoint every N (and all three after the last).
    pub log_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
}

/// What differs between the experiments' updates.
pub trait Trainee {
    /// The learning rate of update `step` (0-based).
    fn learning_rate(&self, step: usize) -> f64;
    /// Accumulates the gradients of update `step` into the zeroed gradients of the model's
    /// variables; returns the mean training loss and the tokens the update read.
    fn gradients(&self, step: usize) -> Result<(f64, i64)>;
    /// Evaluates the model after `step` updates, appends the record to the run's `eval.jsonl`, and
    /// returns the score for [`TrainEvent::Eval`].
    fn evaluate(&self, step: usize) -> Result<f64>;
    /// Writes a checkpoint after `step` updates.
    fn save(&self, step: usize, last_loss: Option<f64>, adam: &Adam) -> Result<()>;
}

/// The run's logs: `train.jsonl` (one [`StepLog`] per logged update) and `eval.jsonl`.
pub fn log_paths(run: &Path) -> (PathBuf, PathBuf) {
    (run.join("train.jsonl"), run.join("eval.jsonl"))
}

/// Where a training call starts from: `step` updates done, the last update's loss, and the training
/// time of the run before this call (so that `elapsed_s` counts the whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Start {
    pub step: usize,
    pub last_loss: Option<f64>,
    pub elapsed_before: f64,
}

/// Prepares the logs of a run starting at `resumed`: a fresh run's (`None`) are removed; a resumed
/// run's lose the records written after its checkpoint (the other lines are kept byte for byte).
pub fn start(run: &Path, resumed: Option<(usize, Option<f64>)>) -> Result<Start> {
    let (train_log, eval_log) = log_paths(run);
    let Some((step, last_loss)) = resumed else {
        for p in [&train_log, &eval_log] {
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
        return Ok(Start::default());
    };
    let step_of = |v: &serde_json::Value| v["step"].as_u64().map(|s| s as usize);
    retain_records(&train_log, |v| step_of(v).is_some_and(|s| s < step))?;
    retain_records(&eval_log, |v| step_of(v).is_some_and(|s| s <= step))?;
    let elapsed_before = if train_log.is_file() {
        read_records::<StepLog>(&train_log)?
            .last()
            .map_or(0.0, |r| r.elapsed_s)
    } else {
        0.0
    };
    Ok(Start {
        step,
        last_loss,
        elapsed_before,
    })
}

/// Errors unless a checkpoint made with `saved_config` and `saved_threads` CPU threads can be
/// resumed with `config` in this process.
pub fn check_resumable<C: PartialEq>(
    run: &Path,
    saved_config: &C,
    config: &C,
    saved_threads: Option<i32>,
    device: Device,
) -> Result<()> {
    if saved_config != config {
        bail!(
            "{}: the checkpoint was made with a different configuration; resume with the saved one \
             (meta.json) or start a new run directory",
            run.display()
        );
    }
    let now = tch::get_num_threads();
    match saved_threads {
        Some(saved) if device == Device::Cpu && saved != now => bail!(
            "the run was trained with {saved} CPU threads and this process has {now}: parallel sums \
             round differently with another count, so the resumed run would not reproduce the \
             uninterrupted one; resume with {saved} threads"
        ),
        _ => Ok(()),
    }
}

/// Errors if `run` already holds a checkpoint (even one whose meta.json does not read), so that a
/// fresh start never overwrites a run.
pub fn check_fresh(run: &Path) -> Result<()> {
    if checkpoint::exists(run) {
        bail!(
            "{} already holds a checkpoint: resume it, or choose another run directory",
            run.display()
        );
    }
    Ok(())
}

/// Runs the updates from `from` to `schedule.steps`.
pub fn run_updates(
    run: &Path,
    schedule: &Schedule,
    adam: &mut Adam,
    from: Start,
    opts: &TrainOptions,
    trainee: &dyn Trainee,
) -> Result<Outcome> {
    let s = schedule;
    let train_log = log_paths(run).0;
    let Start {
        mut step,
        mut last_loss,
        elapsed_before,
    } = from;
    let tell = |e: TrainEvent| {
        if let Some(f) = opts.progress {
            f(e)
        }
    };
    let due = |step: usize, every: usize| step.is_multiple_of(every) || step == s.steps;
    tell(TrainEvent::Start {
        step,
        total: s.steps,
    });
    // "(step N) is kept in <run>/checkpoint", for the errors below
    let kept = || {
        let at = checkpoint::find_with::<serde_json::Value>(run).map_or_else(
            |_| "none written yet".into(),
            |(_, m)| format!("step {}", m["step"]),
        );
        format!("({at}) is kept in {}", run.join("checkpoint").display())
    };
    let started = Instant::now();
    // (start of the window, tokens read in it) for the logged tokens/s
    let mut window = (Instant::now(), 0i64);
    while step < s.steps {
        if opts.stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| step >= n) {
            trainee.save(step, last_loss, adam)?;
            return Ok(Outcome::Interrupted { step });
        }
        tch::manual_seed(s.seed * 1_000_003 + step as i64);
        let lr = trainee.learning_rate(step);
        adam.zero_grad();
        let (loss, tokens) = trainee.gradients(step)?;
        if !loss.is_finite() {
            bail!(
                "training loss is {loss} at update {step}: stopped without applying it; the last good \
                 checkpoint {}",
                kept()
            );
        }
        let grad_norm = clip_grad_norm(adam.params(), s.clip)?;
        if !grad_norm.is_finite() {
            bail!(
                "gradient norm is {grad_norm} at update {step} (loss {loss}): stopped without \
                 applying it; the last good checkpoint {}",
                kept()
            );
        }
        adam.step(lr)?;
        window.1 += tokens;
        step += 1;
        last_loss = Some(loss);
        let mut rate = None;
        if due(step, s.log_every) {
            let tokens_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), 0);
            append_record(
                &train_log,
                &StepLog {
                    step: step - 1,
                    loss,
                    lr,
                    grad_norm,
                    tokens_per_s,
                    elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
                },
            )?;
            rate = Some(tokens_per_s);
        }
        tell(TrainEvent::Update {
            step,
            loss,
            lr,
            tokens_per_s: rate,
        });
        if due(step, s.eval_every) {
            let score = trainee.evaluate(step)?;
            tell(TrainEvent::Eval { step, score });
        }
        if due(step, s.checkpoint_every) {
            trainee.save(step, last_loss, adam)?;
        }
    }
    Ok(Outcome::Finished { step })
}
