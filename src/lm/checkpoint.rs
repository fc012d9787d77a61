//! Checkpoints of an LM run, in `<run>/checkpoint/`: `model.safetensors` (every variable of the
//! VarStore, the fixed FAVOR+ projections included), `optimizer.safetensors` (Adam's moments),
//! `vocab.txt` (one word per line, line number = id) and `meta.json` (configuration, step, data
//! position, RNG rule). A checkpoint is written into `checkpoint.tmp/` and swapped in by renames, so
//! an interruption at any moment leaves a complete one: `checkpoint/`, or during the swap
//! `checkpoint.old/`, which [`find`] falls back to.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::adam::Adam;
use super::config::{LmModel, TrainConfig};
use super::data::Vocab;

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
    pub last_loss: Option<f64>,
    pub parameters: i64,
    pub fwp_version: String,
    pub unix_time: u64,
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
    std::fs::write(tmp.join("vocab.txt"), vocab.words.join("\n") + "\n")?;
    std::fs::write(
        tmp.join("meta.json"),
        serde_json::to_string_pretty(meta)? + "\n",
    )?;
    if cur.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&cur, &old)?;
    }
    std::fs::rename(&tmp, &cur)?;
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

/// The vocabulary saved with a checkpoint.
pub fn load_vocab(dir: &Path) -> Result<Vocab> {
    let path = dir.join("vocab.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let words: Vec<String> = text.lines().map(str::to_string).collect();
    if words.is_empty() {
        bail!("{}: empty vocabulary", path.display());
    }
    Ok(Vocab::from_words(words))
}

/// Loads the weights of a checkpoint into `vs` (which must hold the same variables).
pub fn load_weights(dir: &Path, vs: &mut VarStore) -> Result<()> {
    let path = dir.join("model.safetensors");
    tch::no_grad(|| vs.read_safetensors(&path)).with_context(|| {
        format!(
            "loading {} (does the configuration match the checkpoint?)",
            path.display()
        )
    })
}
