//! Training a translation run: the joint BPE learnt from the training split (saved as
//! `tokenizer.json`), Adam with the inverse-square-root schedule, label-smoothed cross-entropy,
//! gradient clipping, JSON-lines logs (`train.jsonl`, `eval.jsonl` with valid BLEU), atomic
//! checkpoints every N updates, at the end and on interruption, and exact resumption (the batch of
//! an update is a function of its step, the dropout masks of (seed, step)). Shares its machinery
//! with the LM experiment ([`crate::training`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind};

use super::batches::{Batches, Example};
use super::bpe::{Bpe, PAD};
use super::config::{MtModel, TrainConfig};
use super::corpus::{split_paths, ParallelCorpus, Split};
use super::decode::DecodeOptions;
use super::eval::{score, translate_all};
use crate::report::{append_record, atomic_write, read_records, retain_records};
use crate::seq2seq::Seq2Seq;
use crate::training::adam::{clip_grad_norm, inverse_sqrt_learning_rate, Adam};
use crate::training::checkpoint::{self, file_sha256, sha256_hex, RunLock};
pub use crate::training::{Outcome, StepLog};

/// Everything a run is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: MtModel,
    pub train: TrainConfig,
    /// The corpus directory and the languages (file extensions), source first.
    pub data: PathBuf,
    pub src_lang: String,
    pub tgt_lang: String,
}

impl RunConfig {
    pub fn langs(&self) -> (&str, &str) {
        (&self.src_lang, &self.tgt_lang)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub config: RunConfig,
    /// Updates done.
    pub step: usize,
    #[serde(default, with = "crate::report::real::option")]
    pub last_loss: Option<f64>,
    pub parameters: i64,
    pub vocab: i64,
    /// Training pairs used, and left out for exceeding `max_len`.
    pub train_pairs: usize,
    pub skipped_pairs: usize,
    pub rng: String,
    pub threads: i32,
    pub fwp_version: String,
    pub unix_time: u64,
    /// SHA-256 of `tokenizer.json` and of each corpus file.
    pub bpe_sha256: String,
    pub corpus_sha256: BTreeMap<String, String>,
}

pub const RNG_RULE: &str =
    "tch::manual_seed(seed * 1_000_003 + step) before every update; batch order: SplitMix64 of (seed, epoch)";

/// One evaluation during training: greedy BLEU on the first sentences of valid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub split: String,
    pub sentences: usize,
    pub bleu: f64,
    pub chrf: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TrainEvent {
    Start {
        step: usize,
        total: usize,
    },
    Update {
        step: usize,
        loss: f64,
        lr: f64,
        tokens_per_s: Option<f64>,
    },
    Eval {
        step: usize,
        bleu: f64,
    },
}

pub struct TrainOptions<'a> {
    pub device: Device,
    pub resume: bool,
    pub stop: &'a AtomicBool,
    pub stop_after: Option<usize>,
    pub progress: Option<&'a dyn Fn(TrainEvent)>,
}

/// The model of `cfg` for the vocabulary `bpe`, initialised from the run's seed.
pub fn build_model(cfg: &RunConfig, vocab: i64, device: Device) -> Result<(VarStore, Seq2Seq)> {
    tch::manual_seed(cfg.train.seed);
    let vs = VarStore::new(device);
    let model = Seq2Seq::new(vs.root(), cfg.model.model_config(vocab, PAD)?)?;
    Ok((vs, model))
}

/// The training pairs as ids; pairs longer than `max_len` on either side are left out (counted).
pub fn examples(
    corpus: &ParallelCorpus,
    bpe: &Bpe,
    max_len: usize,
) -> Result<(Vec<Example>, usize)> {
    let mut kept = Vec::new();
    let mut skipped = 0;
    for p in &corpus.train {
        let e = Example {
            src: bpe.encode(&p.src)?,
            tgt: bpe.encode(&p.tgt)?,
        };
        if e.src.len() > max_len || e.tgt.len() > max_len {
            skipped += 1;
        } else {
            kept.push(e);
        }
    }
    Ok((kept, skipped))
}

fn corpus_checksums(cfg: &RunConfig) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    for split in Split::ALL {
        let (a, b) = split_paths(&cfg.data, split, cfg.langs());
        for p in [a, b] {
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            sums.insert(name, file_sha256(&p)?);
        }
    }
    Ok(sums)
}

fn log_paths(run: &Path) -> (PathBuf, PathBuf) {
    (run.join("train.jsonl"), run.join("eval.jsonl"))
}

/// Trains (or resumes) the run in `run`.
pub fn train(run: &Path, cfg: &RunConfig, opts: &TrainOptions) -> Result<Outcome> {
    let t = &cfg.train;
    t.check()?;
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let _lock = RunLock::acquire(run)?;
    let corpus = ParallelCorpus::load(&cfg.data, cfg.langs())?;
    let corpus_sha256 = corpus_checksums(cfg)?;
    let start = if opts.resume {
        checkpoint::recover(run)?;
        let (dir, meta) = checkpoint::find_with::<Meta>(run)?;
        if meta.config != *cfg {
            bail!(
                "{}: the checkpoint was made with a different configuration; resume with the saved one \
                 (meta.json) or start a new run directory",
                run.display()
            );
        }
        if opts.device == Device::Cpu && meta.threads != tch::get_num_threads() {
            bail!(
                "the run was trained with {} CPU threads and this process has {}: parallel sums round \
                 differently with another count; resume with {} threads",
                meta.threads,
                tch::get_num_threads(),
                meta.threads
            );
        }
        if meta.corpus_sha256 != corpus_sha256 {
            bail!("{}: the corpus has changed since the checkpoint; the run must continue on the corpus it was trained on", cfg.data.display());
        }
        let bpe = load_bpe(&dir, &meta)?;
        Some((dir, meta, bpe))
    } else {
        if checkpoint::exists(run) {
            bail!(
                "{} already holds a checkpoint: resume it, or choose another run directory",
                run.display()
            );
        }
        None
    };
    let bpe = match &start {
        Some((_, _, bpe)) => Bpe::from_json(&bpe.to_json()?)?,
        None => {
            let text = corpus
                .train
                .iter()
                .flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
            Bpe::train(text, t.bpe_vocab)?
        }
    };
    let bpe_json = bpe.to_json()?;
    atomic_write(&run.join("tokenizer.json"), bpe_json.as_bytes())?;
    atomic_write(
        &run.join("config.json"),
        (serde_json::to_string_pretty(cfg)? + "\n").as_bytes(),
    )?;
    let (examples, skipped) = examples(&corpus, &bpe, t.max_len)?;
    let train_pairs = examples.len();
    let batches = Batches::new(examples, t.max_tokens, t.seed)?;
    let (mut vs, model) = build_model(cfg, bpe.len(), opts.device)?;
    let mut adam = Adam::new(&vs)?;
    (adam.beta2, adam.eps) = (0.98, 1e-9);
    let (train_log, eval_log) = log_paths(run);
    let mut step = 0;
    let mut last_loss = None;
    let mut elapsed_before = 0.0;
    if let Some((dir, meta, _)) = &start {
        checkpoint::load_weights(dir, &mut vs)?;
        adam.load(&dir.join("optimizer.safetensors"), meta.step as i64)?;
        step = meta.step;
        last_loss = meta.last_loss;
        let step_of = |v: &serde_json::Value| v["step"].as_u64().map(|s| s as usize);
        retain_records(&train_log, |v| step_of(v).is_some_and(|s| s < step))?;
        retain_records(&eval_log, |v| step_of(v).is_some_and(|s| s <= step))?;
        if train_log.is_file() {
            elapsed_before = read_records::<StepLog>(&train_log)?
                .last()
                .map_or(0.0, |r| r.elapsed_s);
        }
    } else {
        for p in [&train_log, &eval_log] {
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
    }
    let parameters: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let bpe_sha256 = sha256_hex(bpe_json.as_bytes());
    let meta_at = |step: usize, last_loss: Option<f64>| Meta {
        config: cfg.clone(),
        step,
        last_loss,
        parameters,
        vocab: bpe.len(),
        train_pairs,
        skipped_pairs: skipped,
        rng: RNG_RULE.into(),
        threads: tch::get_num_threads(),
        fwp_version: env!("CARGO_PKG_VERSION").into(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        bpe_sha256: bpe_sha256.clone(),
        corpus_sha256: corpus_sha256.clone(),
    };
    let save = |step, last_loss, adam: &Adam| {
        checkpoint::save_with(
            run,
            &vs,
            adam,
            &meta_at(step, last_loss),
            &[("tokenizer.json", bpe_json.clone().into_bytes())],
        )
    };
    let tell = |e| {
        if let Some(f) = opts.progress {
            f(e)
        }
    };
    tell(TrainEvent::Start {
        step,
        total: t.steps,
    });
    let started = Instant::now();
    let mut window = (Instant::now(), 0i64);
    while step < t.steps {
        if opts.stop.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| step >= n) {
            save(step, last_loss, &adam)?;
            return Ok(Outcome::Interrupted { step });
        }
        tch::manual_seed(t.seed * 1_000_003 + step as i64);
        let lr = inverse_sqrt_learning_rate(step, t.lr, t.warmup);
        adam.zero_grad();
        let batch = batches.get(step, opts.device)?;
        let enc = model.encode(&batch.src, true)?;
        let logits = model.decode_t(&batch.tgt_in, &enc, true)?; // [B, T, V]
        let v = logits.size()[2];
        let loss = logits
            .f_view([-1, v])?
            .f_cross_entropy_loss::<tch::Tensor>(
                &batch.tgt_out.f_view([-1])?,
                None,
                tch::Reduction::Mean,
                PAD,
                t.label_smoothing,
            )?;
        let loss_value = f64::try_from(&loss)?;
        if !loss_value.is_finite() {
            bail!(
                "training loss is {loss_value} at update {step}: stopped without applying it; the last good \
                 checkpoint is kept in {}",
                run.join("checkpoint").display()
            );
        }
        loss.backward();
        let grad_norm = clip_grad_norm(adam.params(), t.clip)?;
        if !grad_norm.is_finite() {
            bail!(
                "gradient norm is {grad_norm} at update {step}: stopped without applying it; the last good \
                 checkpoint is kept in {}",
                run.join("checkpoint").display()
            );
        }
        adam.step(lr)?;
        window.1 +=
            batch.src.f_ne(PAD)?.f_sum(Kind::Int64)?.int64_value(&[]) + batch.target_tokens()?;
        step += 1;
        last_loss = Some(loss_value);
        let mut rate = None;
        if step.is_multiple_of(t.log_every) || step == t.steps {
            let tokens_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), 0);
            append_record(
                &train_log,
                &StepLog {
                    step: step - 1,
                    loss: loss_value,
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
            loss: loss_value,
            lr,
            tokens_per_s: rate,
        });
        if step.is_multiple_of(t.eval_every) || step == t.steps {
            let n = t.eval_sentences.min(corpus.valid.len());
            let pairs = &corpus.valid[..n];
            let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
            let refs: Vec<String> = pairs.iter().map(|p| p.tgt.clone()).collect();
            let greedy = DecodeOptions {
                beam: 1,
                ..DecodeOptions::default()
            };
            let hyps = translate_all(&model, &bpe, &sources, &greedy, 64, None)?;
            let s = score(&hyps, &refs)?;
            append_record(
                &eval_log,
                &EvalLog {
                    step,
                    split: "valid".into(),
                    sentences: n,
                    bleu: s.bleu.score,
                    chrf: s.chrf,
                },
            )?;
            tell(TrainEvent::Eval {
                step,
                bleu: s.bleu.score,
            });
        }
        if step.is_multiple_of(t.checkpoint_every) || step == t.steps {
            save(step, last_loss, &adam)?;
        }
    }
    Ok(Outcome::Finished { step })
}

/// The BPE saved with a checkpoint, checked against its checksum.
fn load_bpe(dir: &Path, meta: &Meta) -> Result<Bpe> {
    let path = dir.join("tokenizer.json");
    let json =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if sha256_hex(json.as_bytes()) != meta.bpe_sha256 {
        bail!("{}: the vocabulary does not match its checkpoint's checksum; the saved model's ids would mean other tokens", path.display());
    }
    Bpe::from_json(&json)
}

/// A checkpointed run loaded for evaluation, decoding or export.
pub struct LoadedRun {
    pub config: RunConfig,
    pub bpe: Bpe,
    pub vs: VarStore,
    pub model: Seq2Seq,
    pub meta: Meta,
}

/// Loads the model of a checkpointed run; `backend` replaces the fast-weight backend if given.
pub fn load_run(run: &Path, device: Device, backend: Option<crate::Backend>) -> Result<LoadedRun> {
    let (dir, meta) = checkpoint::find_with::<Meta>(run)?;
    let mut config = meta.config.clone();
    if let Some(b) = backend {
        config.model.backend = b;
    }
    let bpe = load_bpe(&dir, &meta)?;
    let (mut vs, model) = build_model(&config, bpe.len(), device)?;
    checkpoint::load_weights(&dir, &mut vs)?;
    Ok(LoadedRun {
        config,
        bpe,
        vs,
        model,
        meta,
    })
}
