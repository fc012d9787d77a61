//! Training an LM run: Adam with the warm-up + cosine schedule, gradient clipping and accumulation,
//! JSON-lines logs (`train.jsonl`, `eval.jsonl`), atomic checkpoints every N updates, at the end and
//! on interruption, and exact resumption (the batch and the dropout masks of an update are functions
//! of its step; see [`super::batches`] and [`super::checkpoint::RNG_RULE`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::adam::{clip_grad_norm, learning_rate, Adam};
use super::batches::Segments;
use super::checkpoint::{self, Meta, RunConfig, RNG_RULE};
use super::data::{Corpus, Vocab};
use super::eval::{evaluate, EvalMode};
use crate::model::LanguageModel;
use crate::report::{append_record, read_records};

/// One logged update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub split: String,
    pub mode: String,
    pub perplexity: f64,
}

/// How a call to [`train`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All configured updates done.
    Finished { step: usize },
    /// Stopped by the flag (Ctrl-C) or `stop_after`; a checkpoint at `step` was written.
    Interrupted { step: usize },
}

/// The model of a configuration for `vocab` words, initialised from the run's seed.
pub fn build_model(
    cfg: &RunConfig,
    vocab: i64,
    device: Device,
) -> Result<(VarStore, LanguageModel)> {
    tch::manual_seed(cfg.train.seed);
    let vs = VarStore::new(device);
    let model = LanguageModel::new(vs.root(), cfg.model.model_config(vocab)?)?;
    Ok((vs, model))
}

/// Trainable parameters.
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Options of one call to [`train`] besides the configuration.
pub struct TrainOptions<'a> {
    pub device: Device,
    /// Continue from `<run>/checkpoint` instead of starting afresh.
    pub resume: bool,
    /// Set (by a Ctrl-C handler) to stop after the current update, with a checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop as if interrupted once this many updates are done (tests).
    pub stop_after: Option<usize>,
    pub progress: bool,
}

fn log_paths(run: &Path) -> (PathBuf, PathBuf) {
    (run.join("train.jsonl"), run.join("eval.jsonl"))
}

/// Drops log records past `step` (written after the checkpoint a resumed run starts from).
fn truncate_logs(run: &Path, step: usize) -> Result<()> {
    let (train_log, eval_log) = log_paths(run);
    if train_log.is_file() {
        let keep: Vec<StepLog> = read_records::<StepLog>(&train_log)?
            .into_iter()
            .filter(|r| r.step < step)
            .collect();
        rewrite(&train_log, &keep)?;
    }
    if eval_log.is_file() {
        let keep: Vec<EvalLog> = read_records::<EvalLog>(&eval_log)?
            .into_iter()
            .filter(|r| r.step <= step)
            .collect();
        rewrite(&eval_log, &keep)?;
    }
    Ok(())
}

fn rewrite<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r)?;
        text.push('\n');
    }
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Trains (or resumes) the run in `run`.
pub fn train(run: &Path, cfg: &RunConfig, opts: &TrainOptions) -> Result<Outcome> {
    cfg.train.check()?;
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let t = &cfg.train;
    // The corpus and vocabulary: from the checkpoint when resuming.
    let (corpus, start_meta) = if opts.resume {
        checkpoint::recover(run)?;
        let (dir, meta) = checkpoint::find(run)?;
        if meta.config != *cfg {
            bail!(
                "{}: the checkpoint was made with a different configuration; resume with the saved one \
                 (meta.json) or start a new run directory",
                run.display()
            );
        }
        let corpus = Corpus::load_with_vocab(&cfg.data, checkpoint::load_vocab(&dir)?)?;
        (corpus, Some((dir, meta)))
    } else {
        if checkpoint::find(run).is_ok() {
            bail!(
                "{} already holds a checkpoint: pass --resume, or choose another --run",
                run.display()
            );
        }
        (Corpus::load(&cfg.data, t.min_count)?, None)
    };
    let vocab: &Vocab = &corpus.vocab;
    let (mut vs, model) = build_model(cfg, vocab.len() as i64, opts.device)?;
    let mut adam = Adam::new(&vs)?;
    let mut step = 0usize;
    let mut last_loss = None;
    // Training time before this call (from the kept log), so that elapsed_s counts the whole run.
    let mut elapsed_before = 0.0;
    if let Some((dir, meta)) = &start_meta {
        checkpoint::load_weights(dir, &mut vs)?;
        adam.load(&dir.join("optimizer.safetensors"), meta.step as i64)?;
        step = meta.step;
        last_loss = meta.last_loss;
        truncate_logs(run, step)?;
        let train_log = log_paths(run).0;
        if train_log.is_file() {
            elapsed_before = read_records::<StepLog>(&train_log)?
                .last()
                .map_or(0.0, |r| r.elapsed_s);
        }
    } else {
        for p in [log_paths(run).0, log_paths(run).1] {
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
    }
    std::fs::write(
        run.join("config.json"),
        serde_json::to_string_pretty(cfg)? + "\n",
    )?;
    let params = parameter_count(&vs);
    let context = cfg.model.context;
    let segments = Segments::new(&corpus.train.to_device(opts.device), t.batch, context)?;
    let micro = t.batch / t.accumulate;
    let (train_log, eval_log) = log_paths(run);

    let meta_at = |step: usize, last_loss: Option<f64>| Meta {
        config: cfg.clone(),
        step,
        segments_seen: step as i64,
        rng: RNG_RULE.into(),
        last_loss,
        parameters: params,
        fwp_version: env!("CARGO_PKG_VERSION").into(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let bar = if opts.progress {
        ProgressBar::new(t.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} updates [{elapsed}<{eta}] {msg}",
    )?);
    bar.set_position(step as u64);
    let started = Instant::now();
    let mut window = (Instant::now(), step);
    while step < t.steps {
        if opts.stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| step >= n) {
            checkpoint::save(run, &vs, &adam, &meta_at(step, last_loss), vocab)?;
            bar.finish_and_clear();
            return Ok(Outcome::Interrupted { step });
        }
        tch::manual_seed(t.seed * 1_000_003 + step as i64);
        let lr = learning_rate(step, t.lr, t.warmup, t.steps);
        adam.zero_grad();
        let (x, y) = segments.get(step as i64)?;
        let mut loss_sum = 0.0f64;
        for m in 0..t.accumulate {
            let xm = Segments::rows(&x, m * micro, micro)?;
            let ym = Segments::rows(&y, m * micro, micro)?;
            let (logits, _) = model.forward_t(&xm, None, 0, true)?;
            let loss = cross_entropy(&logits, &ym)?;
            loss_sum += f64::try_from(&loss)? / t.accumulate as f64;
            (loss / t.accumulate as f64).backward();
        }
        if !loss_sum.is_finite() {
            bar.finish_and_clear();
            let kept = checkpoint::find(run).map(|(_, m)| format!("step {}", m.step));
            bail!(
                "training loss is {loss_sum} at update {step}: stopped without applying it; the last good \
                 checkpoint ({}) is kept in {}",
                kept.unwrap_or_else(|_| "none written yet".into()),
                run.join("checkpoint").display()
            );
        }
        let grad_norm = clip_grad_norm(adam.params(), t.clip)?;
        if !grad_norm.is_finite() {
            bar.finish_and_clear();
            bail!(
                "gradient norm is {grad_norm} at update {step} (loss {loss_sum}): stopped without \
                 applying it; the last good checkpoint is kept in {}",
                run.join("checkpoint").display()
            );
        }
        adam.step(lr)?;
        step += 1;
        last_loss = Some(loss_sum);
        bar.set_position(step as u64);
        if step.is_multiple_of(t.log_every) || step == t.steps {
            let done = step - window.1;
            let secs = window.0.elapsed().as_secs_f64().max(1e-9);
            let tokens_per_s = (done as i64 * t.batch * context) as f64 / secs;
            window = (Instant::now(), step);
            append_record(
                &train_log,
                &StepLog {
                    step: step - 1,
                    loss: loss_sum,
                    lr,
                    grad_norm,
                    tokens_per_s,
                    elapsed_s: elapsed_before + started.elapsed().as_secs_f64(),
                },
            )?;
            bar.set_message(format!(
                "loss {loss_sum:.3} lr {lr:.2e} {tokens_per_s:.0} tok/s"
            ));
        }
        if step.is_multiple_of(t.eval_every) || step == t.steps {
            let score = evaluate(&model, &corpus.valid, context, EvalMode::Segments, t.batch)?;
            append_record(
                &eval_log,
                &EvalLog {
                    step,
                    split: "valid".into(),
                    mode: EvalMode::Segments.to_string(),
                    perplexity: score.perplexity(),
                },
            )?;
            let line = format!(
                "update {step}: valid perplexity {:.2} (segments)",
                score.perplexity()
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        if step.is_multiple_of(t.checkpoint_every) || step == t.steps {
            checkpoint::save(run, &vs, &adam, &meta_at(step, last_loss), vocab)?;
        }
    }
    bar.finish_and_clear();
    Ok(Outcome::Finished { step })
}

/// Loads the model of a checkpointed run for evaluation, export or sampling; `backend` replaces the
/// fast-weight backend of the configuration if given.
pub fn load_run(
    run: &Path,
    device: Device,
    backend: Option<crate::Backend>,
) -> Result<(RunConfig, Vocab, VarStore, LanguageModel, Meta)> {
    let (dir, meta) = checkpoint::find(run)?;
    let mut cfg = meta.config.clone();
    if let Some(b) = backend {
        cfg.model.backend = b;
    }
    let vocab = checkpoint::load_vocab(&dir)?;
    let (mut vs, model) = build_model(&cfg, vocab.len() as i64, device)?;
    checkpoint::load_weights(&dir, &mut vs)?;
    Ok((cfg, vocab, vs, model, meta))
}

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]`, as a scalar tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.size()[2];
    Ok(logits
        .f_view([-1, v])?
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(&targets.f_reshape([-1])?, None, tch::Reduction::Mean, -100)?)
}
