//! Checkpoints of an LM run, in `<run>/checkpoint/`: `model.safetensors` (every variable of the
//! VarStore, the fixed FAVOR+ projections included), `optimizer.safetensors` (Adam's moments),
//! `vocab.txt` (one word per line, line number = id) and `meta.json` (configuration, step, data
//! position, RNG rule, thread count, checksums of the vocabulary and the corpus). A checkpoint is
//! written into `checkpoint.tmp/` and swapped in by renames, so an interruption at any moment leaves
//! a complete one: `checkpoint/`, or during the swap `checkpoint.old/`, which [`find`] falls back to.
//! Loading is strict: every tensor of the file must be a variable of the model, with its shape, and
//! the vocabulary must be the one saved. [`RunLock`] keeps a second trainer out of a run directory.
//! The machinery is shared with the other experiments ([`crate::training::checkpoint`]); this
//! module adds the LM's metadata and vocabulary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::config::{LmModel, TrainConfig};
use super::data::{split_file, Split, Vocab};
use crate::training::adam::Adam;
pub use crate::training::checkpoint::{
    exists, file_sha256, find_with, load_weights, recover, save_with, sha256_hex, RunLock,
};

/// Everything a run is made of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: LmModel,
    pub train: TrainConfig,
    /// The corpus directory.
    pub data: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub config: RunConfig,
    /// Updates done; the next update is number `step`.
    pub step: usize,
    /// Data position: training segments consumed (micro-batches draw rows of the same segment).
    pub segments_seen: i64,
    /// How the random state is reproduced: libtorch's generator is reseeded from (seed, step)
    /// before every update, so no generator state needs saving.
    pub rng: String,
    #[serde(default, with = "crate::report::real::option")]
    pub last_loss: Option<f64>,
    pub parameters: i64,
    pub fwp_version: String,
    pub unix_time: u64,
    /// libtorch's CPU threads during training: parallel reductions sum in an order that depends
    /// on it, so an exact resume on the CPU needs the same count. `None` in older checkpoints.
    #[serde(default)]
    pub threads: Option<i32>,
    /// SHA-256 of `vocab.txt` (hex); `None` in older checkpoints.
    #[serde(default)]
    pub vocab_sha256: Option<String>,
    /// SHA-256 of each corpus file the run reads (file name -> hex); `None` in older checkpoints.
    #[serde(default)]
    pub corpus_sha256: Option<BTreeMap<String, String>>,
}

pub const RNG_RULE: &str = "tch::manual_seed(seed * 1_000_003 + step) before every update";

/// Writes a checkpoint of `vs`, `adam`, `meta` and the vocabulary (see the module docs).
pub fn save(run: &Path, vs: &VarStore, adam: &Adam, meta: &Meta, vocab: &Vocab) -> Result<()> {
    let meta = Meta {
        vocab_sha256: Some(sha256_hex(&vocab_bytes(vocab))),
        ..meta.clone()
    };
    save_with(run, vs, adam, &meta, &[("vocab.txt", vocab_bytes(vocab))])
}

/// The newest complete checkpoint of `run` and its metadata.
pub fn find(run: &Path) -> Result<(PathBuf, Meta)> {
    find_with(run)
}

fn vocab_bytes(vocab: &Vocab) -> Vec<u8> {
    (vocab.words.join("\n") + "\n").into_bytes()
}

/// SHA-256 of each split file of the corpus in `dir` (file name -> hex).
pub fn corpus_checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
    Split::ALL
        .into_iter()
        .map(|split| {
            let path = split_file(dir, split)?;
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            Ok((name, file_sha256(&path)?))
        })
        .collect()
}

/// Errors when the corpus in `dir` differs from the one the checkpoint `meta` was trained on.
pub fn check_corpus(dir: &Path, meta: &Meta) -> Result<()> {
    let Some(saved) = &meta.corpus_sha256 else {
        return Ok(());
    };
    let now = corpus_checksums(dir)?;
    for (name, sum) in saved {
        match now.get(name) {
            Some(s) if s == sum => {}
            Some(s) => bail!(
                "{}: {name} has changed since the checkpoint (SHA-256 {s}, saved {sum}); the run \
                 must continue on the corpus it was trained on",
                dir.display()
            ),
            None => bail!(
                "{}: {name}, which the run was trained on, is not there any more",
                dir.display()
            ),
        }
    }
    Ok(())
}

/// The vocabulary saved with a checkpoint, checked against the checksum in `meta` where it has one.
pub fn load_vocab(dir: &Path, meta: &Meta) -> Result<Vocab> {
    let path = dir.join("vocab.txt");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(want) = &meta.vocab_sha256 {
        let got = sha256_hex(&bytes);
        if &got != want {
            bail!(
                "{}: the vocabulary does not match its checkpoint (SHA-256 {got}, meta.json says \
                 {want}); the ids of the saved model would mean other words",
                path.display()
            );
        }
    }
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{}: the vocabulary is not UTF-8", path.display()))?;
    let words: Vec<String> = text.lines().map(str::to_string).collect();
    if words.is_empty() {
        bail!("{}: empty vocabulary", path.display());
    }
    Ok(Vocab::from_words(words))
}
