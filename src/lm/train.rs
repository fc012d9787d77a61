//! Training an LM run: Adam with the warm-up + cosine schedule, gradient clipping and accumulation,
//! JSON-lines logs (`train.jsonl`, `eval.jsonl`), atomic checkpoints every N updates, at the end and
//! on interruption, and exact resumption (the batch and the dropout masks of an update are functions
//! of its step; see [`super::batches`] and [`super::checkpoint::RNG_RULE`]). One process trains a
//! run directory at a time ([`checkpoint::RunLock`]). The loop itself is the one both experiments
//! share ([`crate::training::updates`]); this file supplies the LM's update and evaluation.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::adam::{learning_rate, Adam};
use super::batches::Segments;
use super::checkpoint::{self, Meta, RunConfig, RunLock, RNG_RULE};
use super::data::{Corpus, Vocab};
use super::eval::{evaluate, EvalMode};
use crate::model::LanguageModel;
use crate::report::{append_record, atomic_write};
use crate::training::unix_time;
use crate::training::updates::{
    check_fresh, check_resumable, log_paths, run_updates, start, Schedule, Trainee,
};
pub use crate::training::{parameter_count, Outcome, StepLog, TrainEvent, TrainOptions};

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

/// One update of an LM run, for [`run_updates`].
struct LmUpdates<'a> {
    run: &'a Path,
    cfg: &'a RunConfig,
    model: &'a LanguageModel,
    vs: &'a VarStore,
    corpus: &'a Corpus,
    segments: Segments,
    meta_at: &'a dyn Fn(usize, Option<f64>) -> Meta,
}

impl Trainee for LmUpdates<'_> {
    fn learning_rate(&self, step: usize) -> f64 {
        let t = &self.cfg.train;
        learning_rate(step, t.lr, t.warmup, t.steps)
    }

    fn gradients(&self, step: usize) -> Result<(f64, i64)> {
        let t = &self.cfg.train;
        let micro = t.batch / t.accumulate;
        let (x, y) = self.segments.get(step as i64)?;
        let mut loss_sum = 0.0f64;
        for m in 0..t.accumulate {
            let xm = Segments::rows(&x, m * micro, micro)?;
            let ym = Segments::rows(&y, m * micro, micro)?;
            let (hidden, _) = self.model.hidden_t(&xm, None, 0, true)?;
            let loss = self.model.nll_sum(&hidden, &ym)? / ym.numel() as f64; // mean cross-entropy
            loss_sum += f64::try_from(&loss)? / t.accumulate as f64;
            (loss / t.accumulate as f64).backward();
        }
        Ok((loss_sum, t.batch * self.cfg.model.context))
    }

    fn evaluate(&self, step: usize) -> Result<f64> {
        let (context, batch) = (self.cfg.model.context, self.cfg.train.batch);
        let score = evaluate(
            self.model,
            &self.corpus.valid,
            context,
            EvalMode::Segments,
            batch,
        )?;
        append_record(
            &log_paths(self.run).1,
            &EvalLog {
                step,
                split: "valid".into(),
                mode: EvalMode::Segments.to_string(),
                perplexity: score.perplexity(),
            },
        )?;
        Ok(score.perplexity())
    }

    fn save(&self, step: usize, last_loss: Option<f64>, adam: &Adam) -> Result<()> {
        let meta = (self.meta_at)(step, last_loss);
        checkpoint::save(self.run, self.vs, adam, &meta, &self.corpus.vocab)
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
        check_resumable(run, &meta.config, cfg, meta.threads, opts.device)?;
        checkpoint::check_corpus(&cfg.data, &meta)?;
        let corpus = Corpus::load_with_vocab(&cfg.data, checkpoint::load_vocab(&dir, &meta)?)?;
        (corpus, Some((dir, meta)))
    } else {
        check_fresh(run)?;
        (Corpus::load(&cfg.data, t.min_count)?, None)
    };
    let corpus_sha256 = Some(checkpoint::corpus_checksums(&cfg.data)?);
    let (mut vs, model) = build_model(cfg, corpus.vocab.len() as i64, opts.device)?;
    let mut adam = Adam::new(&vs)?;
    if let Some((dir, meta)) = &start_meta {
        checkpoint::load_weights(dir, &mut vs)?;
        adam.load(&dir.join("optimizer.safetensors"), meta.step as i64)?;
    }
    let from = start(run, start_meta.as_ref().map(|(_, m)| (m.step, m.last_loss)))?;
    atomic_write(
        &run.join("config.json"),
        (serde_json::to_string_pretty(cfg)? + "\n").as_bytes(),
    )?;
    let params = parameter_count(&vs);
    let segments = Segments::new(
        &corpus.train.to_device(opts.device),
        t.batch,
        cfg.model.context,
    )?;
    let meta_at = |step: usize, last_loss: Option<f64>| Meta {
        config: cfg.clone(),
        step,
        segments_seen: step as i64,
        rng: RNG_RULE.into(),
        last_loss,
        parameters: params,
        fwp_version: env!("CARGO_PKG_VERSION").into(),
        unix_time: unix_time(),
        threads: Some(tch::get_num_threads()),
        vocab_sha256: None, // filled in by checkpoint::save
        corpus_sha256: corpus_sha256.clone(),
    };
    let schedule = Schedule {
        steps: t.steps,
        seed: t.seed,
        clip: t.clip,
        log_every: t.log_every,
        eval_every: t.eval_every,
        checkpoint_every: t.checkpoint_every,
    };
    let updates = LmUpdates {
        run,
        cfg,
        model: &model,
        vs: &vs,
        corpus: &corpus,
        segments,
        meta_at: &meta_at,
    };
    run_updates(run, &schedule, &mut adam, from, opts, &updates)
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
