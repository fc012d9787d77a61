//! Checkpoints of a training run, shared by the experiments: `<run>/checkpoint/` holds
//! `model.safetensors` (every variable of the VarStore, fixed random matrices included),
//! `optimizer.safetensors` (Adam's moments), `meta.json` (the experiment's metadata) and the
//! experiment's own files (a vocabulary). A checkpoint is written into `checkpoint.tmp/` and swapped in
//! by renames, so an interruption at any moment leaves a complete one: `checkpoint/`, or during the
//! swap `checkpoint.old/`, which [`find_with`] falls back to. Loading is strict: every tensor of the
//! file must be a variable of the model, with its shape. [`RunLock`] keeps a second trainer out of a
//! run directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::Tensor;

use super::adam::Adam;
use crate::report::atomic_write;

/// Writes a checkpoint of `vs`, `adam`, `meta` (as `meta.json`) and `files` (name, bytes).
pub fn save_with<M: Serialize>(
    run: &Path,
    vs: &VarStore,
    adam: &Adam,
    meta: &M,
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
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
    for (name, bytes) in files {
        atomic_write(&tmp.join(name), bytes)?;
    }
    atomic_write(
        &tmp.join("meta.json"),
        (serde_json::to_string_pretty(meta)? + "\n").as_bytes(),
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

/// The newest complete checkpoint of `run` and its metadata.
pub fn find_with<M: DeserializeOwned>(run: &Path) -> Result<(PathBuf, M)> {
    let (cur, _, old) = dirs(run);
    for dir in [cur, old] {
        let meta = dir.join("meta.json");
        if meta.is_file() {
            let text = std::fs::read_to_string(&meta)
                .with_context(|| format!("reading {}", meta.display()))?;
            let m: M = serde_json::from_str(&text)
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

fn dirs(run: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        run.join("checkpoint"),
        run.join("checkpoint.tmp"),
        run.join("checkpoint.old"),
    )
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

/// Every run below `dir` (folders holding a checkpoint), in a stable order.
pub fn runs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!(
            "{}: no such directory (expected a folder of runs)",
            dir.display()
        );
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join("checkpoint/meta.json").is_file() || p.join("checkpoint.old/meta.json").is_file()
        })
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("{}: no runs (folders with a checkpoint)", dir.display());
    }
    Ok(out)
}
