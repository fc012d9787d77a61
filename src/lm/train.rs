//! Training an LM run: Adam with the warm-up + cosine schedule, gradient clipping and accumulation,
//! JSON-lines logs (`train.jsonl`, `eval.jsonl`), atomic checkpoints every N updates, at the end and
//! on interruption, and exact resumption (the batch and the dropout masks of an update are functions
//! of its step; see [`super::batches`] and [`super::checkpoint::RNG_RULE`]). One process trains a
//! run directory at a time ([`checkpoint::RunLock`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::adam::{clip_grad_norm, learning_rate, Adam};
use super::batches::Segments;
use super::checkpoint::{self, Meta, RunConfig, RunLock, RNG_RULE};
use super::data::{Corpus, Vocab};
use super::eval::{evaluate, EvalMode};
use crate::model::LanguageModel;
use crate::report::{append_record, atomic_write, read_records, retain_records};
pub use crate::training::{Outcome, StepLog};

/// One evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub split: String,
    pub mode: String,
    /// NaN or infinite for a model that diverged (written as a string, see [`crate::report::real`]).
    #[serde(with = "crate::report::real")]
    pub perplexity: f64,
}

/// What [`train`] reports as it goes, to a progress bar or a log.
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
    /// Validation perplexity (non-overlapping segments) after `step` updates.
    Eval { step: usize, perplexity: f64 },
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
    /// Told about every update and evaluation ([`TrainEvent`]).
    pub progress: Option<&'a dyn Fn(TrainEvent)>,
}

fn log_paths(run: &Path) -> (PathBuf, PathBuf) {
    (run.join("train.jsonl"), run.join("eval.jsonl"))
}

/// Drops log records past `step` (written after the checkpoint a resumed run starts from), keeping
/// the other lines byte for byte.
fn truncate_logs(run: &Path, step: usize) -> Result<()> {
    let (train_log, eval_log) = log_paths(run);
    let step_of = |v: &serde_json::Value| v["step"].as_u64().map(|s| s as usize);
    retain_records(&train_log, |v| step_of(v).is_some_and(|s| s < step))?;
    retain_records(&eval_log, |v| step_of(v).is_some_and(|s| s <= step))
}

/// Errors when a resumed CPU run would use another thread count than it was trained with.
fn check_threads(meta: &Meta, device: Device) -> Result<()> {
    let now = tch::get_num_threads();
    match meta.threads {
        Some(saved) if device == Device::Cpu && saved != now => bail!(
            "the run was trained with {saved} CPU threads and this process has {now}: parallel sums \
             round differently with another count, so the resumed run would not reproduce the \
             uninterrupted one; resume with {saved} threads"
        ),
        _ => Ok(()),
    }
}

/// Trains (or resumes) the run in `run`.
pub fn train(run: &Path, cfg: &RunConfig, opts: &TrainOptions) -> Result<Outcome> {
    cfg.train.check()?;
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let _lock = RunLock::acquire(run)?;
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
        check_threads(&meta, opts.device)?;
        checkpoint::check_corpus(&cfg.data, &meta)?;
        let corpus = Corpus::load_with_vocab(&cfg.data, checkpoint::load_vocab(&dir, &meta)?)?;
        (corpus, Some((dir, meta)))
    } else {
        // a checkpoint directory at all, even one whose meta.json does not read
        if checkpoint::exists(run) {
            bail!(
                "{} already holds a checkpoint: resume it, or choose another run directory",
                run.display()
            );
        }
        (Corpus::load(&cfg.data, t.min_count)?, None)
    };
    let corpus_sha256 = Some(checkpoint::corpus_checksums(&cfg.data)?);
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
    atomic_write(
        &run.join("config.json"),
        (serde_json::to_string_pretty(cfg)? + "\n").as_bytes(),
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
        threads: Some(tch::get_num_threads()),
        vocab_sha256: None, // filled in by checkpoint::save
        corpus_sha256: corpus_sha256.clone(),
    };
    let tell = |e: TrainEvent| {
        if let Some(f) = opts.progress {
            f(e)
        }
    };
    tell(TrainEvent::Start {
        step,
        total: t.steps,
    });
    let started = Instant::now();
    let mut window = (Instant::now(), step);
    while step < t.steps {
        if opts.stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| step >= n) {
            checkpoint::save(run, &vs, &adam, &meta_at(step, last_loss), vocab)?;
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
            let (hidden, _) = model.hidden_t(&xm, None, 0, true)?;
            let loss = model.nll_sum(&hidden, &ym)? / ym.numel() as f64; // mean cross-entropy
            loss_sum += f64::try_from(&loss)? / t.accumulate as f64;
            (loss / t.accumulate as f64).backward();
        }
        if !loss_sum.is_finite() {
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
            bail!(
                "gradient norm is {grad_norm} at update {step} (loss {loss_sum}): stopped without \
                 applying it; the last good checkpoint is kept in {}",
                run.join("checkpoint").display()
            );
        }
        adam.step(lr)?;
        step += 1;
        last_loss = Some(loss_sum);
        let mut logged_rate = None;
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
            logged_rate = Some(tokens_per_s);
        }
        tell(TrainEvent::Update {
            step,
            loss: loss_sum,
            lr,
            tokens_per_s: logged_rate,
        });
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
            tell(TrainEvent::Eval {
                step,
                perplexity: score.perplexity(),
            });
        }
        if step.is_multiple_of(t.checkpoint_every) || step == t.steps {
            checkpoint::save(run, &vs, &adam, &meta_at(step, last_loss), vocab)?;
        }
    }
    Ok(Outcome::Finished { step })
}

/// A checkpointed run, loaded for evaluation, export or sampling.
pub struct LoadedRun {
    /// The saved configuration, with the backend replaced where [`load_run`] was given one.
    pub config: RunConfig,
    pub vocab: Vocab,
    pub vs: VarStore,
    pub model: LanguageModel,
    pub meta: Meta,
}

/// Loads the model of a checkpointed run; `backend` replaces the fast-weight backend of the
/// configuration if given.
pub fn load_run(run: &Path, device: Device, backend: Option<crate::Backend>) -> Result<LoadedRun> {
    let (dir, meta) = checkpoint::find(run)?;
    let mut config = meta.config.clone();
    if let Some(b) = backend {
        config.model.backend = b;
    }
    let vocab = checkpoint::load_vocab(&dir, &meta)?;
    let (mut vs, model) = build_model(&config, vocab.len() as i64, device)?;
    checkpoint::load_weights(&dir, &mut vs)?;
    Ok(LoadedRun {
        config,
        vocab,
        vs,
        model,
        meta,
    })
}

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]`, as a scalar tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.size()[2];
    Ok(logits
        .f_view([-1, v])?
        .f_log_softmax(-1, Kind::Float)?
        .f_nll_loss::<Tensor>(&targets.f_reshape([-1])?, None, tch::Reduction::Mean, -100)?)
}
