//! Training a translation run: the joint BPE learnt from the training split (saved as
//! `tokenizer.json`), Adam with the inverse-square-root schedule, label-smoothed cross-entropy,
//! gradient clipping, JSON-lines logs (`train.jsonl`, `eval.jsonl` with valid BLEU), atomic
//! checkpoints every N updates, at the end and on interruption, and exact resumption (the batch of
//! an update is a function of its step, the dropout masks of (seed, step)). Shares its machinery
//! with the LM experiment: the loop, its logs and checkpoints are [`crate::training`]'s; this file
//! supplies the vocabulary, the batches, the label-smoothed update and the greedy-BLEU evaluation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind};

use super::batches::{Batches, Example};
use super::bpe::{Bpe, PAD};
use super::config::{MtModel, TrainConfig};
use super::corpus::{split_paths, ParallelCorpus, Split};
use super::decode::DecodeOptions;
use super::eval::{score, translate_all};
use crate::report::{append_record, atomic_write};
use crate::seq2seq::Seq2Seq;
use crate::training::adam::{inverse_sqrt_learning_rate, Adam};
use crate::training::checkpoint::{self, file_sha256, sha256_hex, RunLock};
use crate::training::unix_time;
use crate::training::updates::{
    check_fresh, check_resumable, log_paths, run_updates, start, Schedule, Trainee,
};
pub use crate::training::{parameter_count, Outcome, StepLog, TrainEvent, TrainOptions};

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

/// One update of a translation run, for [`run_updates`].
struct MtUpdates<'a> {
    run: &'a Path,
    cfg: &'a RunConfig,
    model: &'a Seq2Seq,
    vs: &'a VarStore,
    bpe: &'a Bpe,
    bpe_json: &'a str,
    corpus: &'a ParallelCorpus,
    batches: Batches,
    device: Device,
    meta_at: &'a dyn Fn(usize, Option<f64>) -> Meta,
}

impl Trainee for MtUpdates<'_> {
    fn learning_rate(&self, step: usize) -> f64 {
        let t = &self.cfg.train;
        inverse_sqrt_learning_rate(step, t.lr, t.warmup)
    }

    fn gradients(&self, step: usize) -> Result<(f64, i64)> {
        let batch = self.batches.get(step, self.device)?;
        let enc = self.model.encode(&batch.src, true)?;
        let logits = self.model.decode_t(&batch.tgt_in, &enc, true)?; // [B, T, V]
        let v = logits.size()[2];
        let loss = logits
            .f_view([-1, v])?
            .f_cross_entropy_loss::<tch::Tensor>(
                &batch.tgt_out.f_view([-1])?,
                None,
                tch::Reduction::Mean,
                PAD,
                self.cfg.train.label_smoothing,
            )?;
        let loss_value = f64::try_from(&loss)?;
        loss.backward();
        let tokens =
            batch.src.f_ne(PAD)?.f_sum(Kind::Int64)?.int64_value(&[]) + batch.target_tokens()?;
        Ok((loss_value, tokens))
    }

    fn evaluate(&self, step: usize) -> Result<f64> {
        let n = self.cfg.train.eval_sentences.min(self.corpus.valid.len());
        let pairs = &self.corpus.valid[..n];
        let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
        let refs: Vec<String> = pairs.iter().map(|p| p.tgt.clone()).collect();
        let greedy = DecodeOptions {
            beam: 1,
            ..DecodeOptions::default()
        };
        let hyps = translate_all(self.model, self.bpe, &sources, &greedy, 64, None)?;
        let s = score(&hyps, &refs)?;
        append_record(
            &log_paths(self.run).1,
            &EvalLog {
                step,
                split: "valid".into(),
                sentences: n,
                bleu: s.bleu.score,
                chrf: s.chrf,
            },
        )?;
        Ok(s.bleu.score)
    }

    fn save(&self, step: usize, last_loss: Option<f64>, adam: &Adam) -> Result<()> {
        checkpoint::save_with(
            self.run,
            self.vs,
            adam,
            &(self.meta_at)(step, last_loss),
            &[("tokenizer.json", self.bpe_json.as_bytes().to_vec())],
        )
    }
}

/// Trains (or resumes) the run in `run`.
pub fn train(run: &Path, cfg: &RunConfig, opts: &TrainOptions) -> Result<Outcome> {
    let t = &cfg.train;
    t.check()?;
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let _lock = RunLock::acquire(run)?;
    let corpus = ParallelCorpus::load(&cfg.data, cfg.langs())?;
    let corpus_sha256 = corpus_checksums(cfg)?;
    let start_meta = if opts.resume {
        checkpoint::recover(run)?;
        let (dir, meta) = checkpoint::find_with::<Meta>(run)?;
        check_resumable(run, &meta.config, cfg, Some(meta.threads), opts.device)?;
        if meta.corpus_sha256 != corpus_sha256 {
            bail!("{}: the corpus has changed since the checkpoint; the run must continue on the corpus it was trained on", cfg.data.display());
        }
        let bpe = load_bpe(&dir, &meta)?;
        Some((dir, meta, bpe))
    } else {
        check_fresh(run)?;
        None
    };
    let bpe = match &start_meta {
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
    if let Some((dir, meta, _)) = &start_meta {
        checkpoint::load_weights(dir, &mut vs)?;
        adam.load(&dir.join("optimizer.safetensors"), meta.step as i64)?;
    }
    let from = start(
        run,
        start_meta.as_ref().map(|(_, m, _)| (m.step, m.last_loss)),
    )?;
    let parameters = parameter_count(&vs);
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
        unix_time: unix_time(),
        bpe_sha256: bpe_sha256.clone(),
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
    let updates = MtUpdates {
        run,
        cfg,
        model: &model,
        vs: &vs,
        bpe: &bpe,
        bpe_json: &bpe_json,
        corpus: &corpus,
        batches,
        device: opts.device,
        meta_at: &meta_at,
    };
    run_updates(run, &schedule, &mut adam, from, opts, &updates)
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
