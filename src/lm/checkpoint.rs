//! Checkpoints of an LM run, in `<run>/checkpoint/`: `model.safetensors` (every variable of the
//! VarStore, the fixed FAVOR+ projections included), `optimizer.safetensors` (Adam's moments),
//! `vocab.txt` (one word per line, line number = id) and `meta.json` (configuration, step, data
//! position, RNG rule, thread count, checksums of the vocabulary and the corpus). A checkpoint is
//! written into `checkpoint.tmp/` and swapped in by renames, so an interruption at any moment leaves
//! a complete one: `checkpoint/`, or during the swap `checkpoint.old/`, which [`find`] falls back to.
//! Loading is strict: every tensor of the file must be a variable of the model, with its shape, and
//! the vocabulary must be the one saved. [`RunLock`] keeps a second trainer out of a run directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::Tensor;

use super::adam::Adam;
use super::config::{LmModel, TrainConfig};
use super::data::{split_file, Split, Vocab};
use crate::report::atomic_write;

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

fn dirs(run: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        run.join("checkpoint"),
        run.join("checkpoint.tmp"),
        run.join("checkpoint.old"),
    )
}

/// Writes a checkpoint of `vs`, `adam` and `meta` (see the module docs).
pub fn save(run: &Path, vs: &VarStore, adam: &Adam, meta: &Meta, vocab: &Vocab) -> Result<()> {
    let (cur, tmp, old) = dirs(run);
    // so that a complete checkpoint exists at every moment of this save
    recover(run)?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    vs.save(tmp.join("model.safetensors"))
        .with_context(|| format!("writing {}", tmp.join("model.safetensors").display()))?;
    adam.save(&tmp.join("optimizer.safetensors"))?;
    for name in ["model.safetensors", "optimizer.safetensors"] {
        File::open(tmp.join(name))
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.join(name).display()))?;
    }
    atomic_write(&tmp.join("vocab.txt"), &vocab_bytes(vocab))?;
    let meta = Meta {
        vocab_sha256: Some(sha256_hex(&vocab_bytes(vocab))),
        ..meta.clone()
    };
    atomic_write(
        &tmp.join("meta.json"),
        (serde_json::to_string_pretty(&meta)? + "\n").as_bytes(),
    )?;
    if cur.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&cur, &old)?;
    }
    std::fs::rename(&tmp, &cur)?;
    crate::report::sync_dir(run)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// A crash between the two renames of [`save`] leaves only `checkpoint.old`: makes it
/// `checkpoint` again (nothing to do otherwise).
pub fn recover(run: &Path) -> Result<()> {
    let (cur, _, old) = dirs(run);
    if !cur.exists() && old.join("meta.json").is_file() {
        std::fs::rename(&old, &cur)
            .with_context(|| format!("restoring {} as {}", old.display(), cur.display()))?;
    }
    Ok(())
}

/// Whether `run` holds a checkpoint directory (complete or not): a fresh run must not replace it.
pub fn exists(run: &Path) -> bool {
    let (cur, _, old) = dirs(run);
    cur.exists() || old.exists()
}

/// The newest complete checkpoint of `run` and its metadata.
pub fn find(run: &Path) -> Result<(PathBuf, Meta)> {
    let (cur, _, old) = dirs(run);
    for dir in [cur, old] {
        let meta = dir.join("meta.json");
        if meta.is_file() {
            let text = std::fs::read_to_string(&meta)
                .with_context(|| format!("reading {}", meta.display()))?;
            let m: Meta = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", meta.display()))?;
            return Ok((dir, m));
        }
    }
    bail!(
        "{}: no checkpoint (expected {}/checkpoint/meta.json)",
        run.display(),
        run.display()
    )
}

fn vocab_bytes(vocab: &Vocab) -> Vec<u8> {
    (vocab.words.join("\n") + "\n").into_bytes()
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file (hex), read in blocks.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
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

/// Loads the weights of a checkpoint into `vs`. Strict: each tensor of the file must be a variable
/// of `vs` of the same shape, and each variable must be in the file; otherwise an error lists the
/// differences (a configuration that does not match the checkpoint, e.g. another number of layers).
pub fn load_weights(dir: &Path, vs: &mut VarStore) -> Result<()> {
    let path = dir.join("model.safetensors");
    let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    let vars = vs.variables();
    let mut problems = Vec::new();
    let unused: Vec<&str> = saved
        .keys()
        .filter(|n| !vars.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        problems.push(format!(
            "tensors the model does not have: {}",
            list(&unused)
        ));
    }
    let mut missing: Vec<&str> = vars
        .keys()
        .filter(|n| !saved.contains_key(*n))
        .map(String::as_str)
        .collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!("variables not in the file: {}", list(&missing)));
    }
    let mut shapes: Vec<String> = saved
        .iter()
        .filter_map(|(n, t)| {
            let v = vars.get(n)?;
            (v.size() != t.size() || v.kind() != t.kind()).then(|| {
                format!(
                    "{n} is {:?} {:?} in the file, {:?} {:?} in the model",
                    t.size(),
                    t.kind(),
                    v.size(),
                    v.kind()
                )
            })
        })
        .collect();
    shapes.sort();
    problems.extend(shapes);
    if !problems.is_empty() {
        bail!(
            "{} does not fit the model of this configuration: {}",
            path.display(),
            problems.join("; ")
        );
    }
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &saved {
            vars[name].shallow_clone().f_copy_(t)?;
        }
        Ok(())
    })
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        s += &format!(" and {} more", names.len() - SHOWN);
    }
    s
}

/// The lock of a run directory, held by the one process that trains it: `<run>/lock`, locked with
/// the operating system's advisory file lock (released when the process ends, even by kill -9)
/// and holding the pid of its holder for the message a second trainer gets.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `run`, or errors naming the process that holds it.
    pub fn acquire(run: &Path) -> Result<RunLock> {
        let path = run.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                bail!(
                    "{} is in use: {who} is training it (lock {}); wait for it to finish or stop it",
                    run.display(),
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        file.sync_data()?;
        Ok(RunLock { _file: file })
    }
}
