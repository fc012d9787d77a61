//! Parallel corpora on disk: a directory with `<split>.<lang>` files for the splits train, valid
//! and test, one segment a line, the source and target files of a split aligned line by line
//! (as `make data-mt` writes the Bible corpus, [`super::bible`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub use crate::lm::data::Split;

/// A source segment and its translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub src: String,
    pub tgt: String,
}

/// The source and target language codes of a corpus, e.g. ("en", "de"): the files' extensions.
pub type Langs<'a> = (&'a str, &'a str);

/// The two files of `split`: `<dir>/<split>.<src>` and `<dir>/<split>.<tgt>`.
pub fn split_paths(dir: &Path, split: Split, (src, tgt): Langs) -> (PathBuf, PathBuf) {
    let file = |lang: &str| dir.join(format!("{}.{lang}", split.name()));
    (file(src), file(tgt))
}

/// Writes the pairs of `split` (atomically, file by file). Segments must be single, non-empty lines.
pub fn write_split(dir: &Path, split: Split, langs: Langs, pairs: &[Pair]) -> Result<()> {
    let (src_path, tgt_path) = split_paths(dir, split, langs);
    for (path, side) in [(src_path, 0), (tgt_path, 1)] {
        let mut text = String::new();
        for (i, p) in pairs.iter().enumerate() {
            let s = if side == 0 { &p.src } else { &p.tgt };
            if s.trim().is_empty() || s.contains('\n') {
                bail!(
                    "{}: pair {} is empty or spans lines: {s:?}",
                    path.display(),
                    i + 1
                );
            }
            text += s;
            text.push('\n');
        }
        crate::report::atomic_write(&path, text.as_bytes())?;
    }
    Ok(())
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    if !path.is_file() {
        bail!(
            "{}: no such file (prepare the corpus first, e.g. `make data-mt`)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (expected UTF-8 text)", path.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        bail!("{}: empty file", path.display());
    }
    if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
        bail!(
            "{}:{}: empty line (every line must hold a segment)",
            path.display(),
            i + 1
        );
    }
    Ok(lines)
}

/// Reads the pairs of `split`. Missing or empty files, empty lines and files of different lengths
/// (misaligned) are errors naming the file.
pub fn read_split(dir: &Path, split: Split, langs: Langs) -> Result<Vec<Pair>> {
    if !dir.is_dir() {
        bail!(
            "corpus directory {} does not exist (prepare it first, e.g. `make data-mt`)",
            dir.display()
        );
    }
    let (src_path, tgt_path) = split_paths(dir, split, langs);
    let (src, tgt) = (read_lines(&src_path)?, read_lines(&tgt_path)?);
    if src.len() != tgt.len() {
        bail!(
            "{} has {} lines and {} has {}: the two sides of a split must align line by line",
            src_path.display(),
            src.len(),
            tgt_path.display(),
            tgt.len()
        );
    }
    Ok(src
        .into_iter()
        .zip(tgt)
        .map(|(src, tgt)| Pair { src, tgt })
        .collect())
}

/// A parallel corpus: the three splits.
#[derive(Clone, Debug)]
pub struct ParallelCorpus {
    pub train: Vec<Pair>,
    pub valid: Vec<Pair>,
    pub test: Vec<Pair>,
}

impl ParallelCorpus {
    pub fn load(dir: &Path, langs: Langs) -> Result<Self> {
        Ok(ParallelCorpus {
            train: read_split(dir, Split::Train, langs)?,
            valid: read_split(dir, Split::Valid, langs)?,
            test: read_split(dir, Split::Test, langs)?,
        })
    }

    pub fn split(&self, split: Split) -> &[Pair] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }
}
