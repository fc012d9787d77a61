//! Word-level corpora in the WikiText layout: a directory with a train, a valid and a test file,
//! one paragraph (or sentence) per line, words separated by whitespace, rare words already replaced
//! by `<unk>`. Each line becomes its words followed by `<eos>` (empty lines too, as the
//! Transformer-XL readers do), so WikiText-103 (`wiki.{train,valid,test}.tokens`) reads as it is.
//!
//! The vocabulary is built from the training split alone: `<unk>` and `<eos>` first, then words by
//! descending count (ties by byte order), those seen fewer than `min_count` times left out; words of
//! valid/test outside it map to `<unk>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub const UNK: &str = "<unk>";
pub const EOS: &str = "<eos>";

/// The three splits, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

crate::names::named_enum!(Split, "split", { Train => "train", Valid => "valid", Test => "test" });

/// The file of `split` in `dir`: `<split>.txt`, else WikiText's `wiki.<split>.tokens`.
pub fn split_file(dir: &Path, split: Split) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("corpus directory {} does not exist", dir.display());
    }
    let candidates = [
        dir.join(format!("{}.txt", split.name())),
        dir.join(format!("wiki.{}.tokens", split.name())),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "{}: no {} split (looked for {} and {})",
                dir.display(),
                split.name(),
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Reads a split as words, `<eos>` after every line.
pub fn read_words(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut words = Vec::new();
    for line in text.lines() {
        words.extend(line.split_whitespace().map(str::to_string));
        words.push(EOS.to_string());
    }
    if words.iter().all(|w| w == EOS) {
        bail!("{}: the file holds no words", path.display());
    }
    Ok(words)
}

/// Word <-> id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vocab {
    pub words: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, i64>,
}

impl Vocab {
    /// From the training words (see the module docs for the order and the threshold).
    pub fn build(train: &[String], min_count: usize) -> Vocab {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in train {
            *counts.entry(w.as_str()).or_default() += 1;
        }
        let mut kept: Vec<(&str, usize)> = counts
            .into_iter()
            .filter(|&(w, c)| c >= min_count.max(1) && w != UNK && w != EOS)
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let words = [UNK, EOS]
            .into_iter()
            .chain(kept.into_iter().map(|(w, _)| w))
            .map(str::to_string)
            .collect();
        Vocab::from_words(words)
    }

    /// From a saved word list (index = id).
    pub fn from_words(words: Vec<String>) -> Vocab {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as i64))
            .collect();
        Vocab { words, index }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn unk(&self) -> i64 {
        self.index.get(UNK).copied().unwrap_or(0)
    }

    pub fn id(&self, word: &str) -> i64 {
        self.index.get(word).copied().unwrap_or_else(|| self.unk())
    }

    pub fn word(&self, id: i64) -> &str {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.words.get(i))
            .map_or(UNK, String::as_str)
    }

    pub fn encode(&self, words: &[String]) -> Vec<i64> {
        words.iter().map(|w| self.id(w)).collect()
    }
}

/// A corpus: vocabulary and the three splits as id streams.
#[derive(Debug)]
pub struct Corpus {
    pub dir: PathBuf,
    pub vocab: Vocab,
    pub train: Tensor,
    pub valid: Tensor,
    pub test: Tensor,
}

impl Corpus {
    /// Reads `dir` (train, valid, test) and builds the vocabulary from train.
    pub fn load(dir: &Path, min_count: usize) -> Result<Corpus> {
        let train = read_words(&split_file(dir, Split::Train)?)?;
        let vocab = Vocab::build(&train, min_count);
        Self::with_vocab(dir, vocab, &train)
    }

    /// Reads `dir` with a given vocabulary (from a checkpoint).
    pub fn load_with_vocab(dir: &Path, vocab: Vocab) -> Result<Corpus> {
        let train = read_words(&split_file(dir, Split::Train)?)?;
        Self::with_vocab(dir, vocab, &train)
    }

    fn with_vocab(dir: &Path, vocab: Vocab, train: &[String]) -> Result<Corpus> {
        let ids = |words: &[String]| Tensor::from_slice(&vocab.encode(words));
        let valid = read_words(&split_file(dir, Split::Valid)?)?;
        let test = read_words(&split_file(dir, Split::Test)?)?;
        Ok(Corpus {
            dir: dir.to_path_buf(),
            train: ids(train),
            valid: ids(&valid),
            test: ids(&test),
            vocab,
        })
    }

    pub fn split(&self, split: Split) -> &Tensor {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }
}
