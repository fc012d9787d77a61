//! The results table of a set of translation runs (`translate report`): per run its variant, size,
//! training speed, the greedy validation BLEU recorded during training, and the last evaluation of
//! each split and search (beam size, length penalty, repeated n-grams, length limit, limited
//! sentences; `translate eval`); plus a plot of validation BLEU during training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::eval::EvalRecord;
use super::train::{EvalLog, Meta, StepLog};
use crate::report::{markdown_table, read_records_if_any};
use crate::training::checkpoint;
use crate::training::summary::{plot_curves, RunBasics};

/// One run's row.
pub struct RunSummary {
    pub dir: PathBuf,
    pub basics: RunBasics,
    /// (update, greedy BLEU on the first validation sentences) during training.
    pub curve: Vec<(f64, f64)>,
    /// The last evaluation of the last checkpoint for each search.
    pub evals: BTreeMap<EvalKey, EvalRecord>,
}

/// What a results column is about: the split (or its first sentences) and the whole search.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EvalKey {
    /// Valid before test, then by name.
    not_valid: bool,
    pub split: String,
    /// `eval --limit`: only the first sentences (None: the whole split).
    pub limit: Option<usize>,
    pub beam: i64,
    /// As printed (`1`, `0.6`), so that keys compare exactly.
    pub length_penalty: String,
    /// 0: off.
    pub no_repeat_ngram: i64,
    /// The length limit `a * source length + b` as printed, None for the default.
    pub max_len: Option<String>,
}

impl EvalKey {
    pub fn of(e: &EvalRecord) -> EvalKey {
        let split = e.split.name().to_string();
        let d = &e.decode;
        EvalKey {
            not_valid: split != "valid",
            split,
            limit: e.limit,
            beam: d.beam,
            length_penalty: d.length_penalty.to_string(),
            no_repeat_ngram: d.no_repeat_ngram,
            max_len: (!d.is_default_length_limit())
                .then(|| format!("{} L + {}", d.max_len_a, d.max_len_b)),
        }
    }

    /// "beam 4", with what differs from the default search: the length penalty where it is not
    /// 1, the n of `no_repeat_ngram` where it is on, a length limit other than 1.5 L + 10, and a
    /// limited number of sentences.
    fn search(&self) -> String {
        let mut s = format!("beam {}", self.beam);
        if self.length_penalty != "1" {
            s += &format!(", length penalty {}", self.length_penalty);
        }
        if self.no_repeat_ngram > 0 {
            s += &format!(", no repeated {}-grams", self.no_repeat_ngram);
        }
        if let Some(m) = &self.max_len {
            s += &format!(", at most {m} tokens");
        }
        if let Some(n) = self.limit {
            s += &format!(", first {n} sentences");
        }
        s
    }
}

pub fn summarise(run: &Path) -> Result<RunSummary> {
    let (_, meta) = checkpoint::find_with::<Meta>(run)?;
    let steps: Vec<StepLog> = read_records_if_any(&run.join("train.jsonl"))?;
    let curve: Vec<EvalLog> = read_records_if_any(&run.join("eval.jsonl"))?;
    let results: Vec<EvalRecord> = read_records_if_any(&run.join("results.jsonl"))?;
    Ok(RunSummary {
        dir: run.to_path_buf(),
        basics: RunBasics::new(
            meta.config.model.variant.to_string(),
            meta.config.train.seed,
            meta.parameters,
            meta.step,
            Some(meta.threads),
            &steps,
        ),
        curve: curve.iter().map(|e| (e.step as f64, e.bleu)).collect(),
        // later lines replace earlier ones; evaluations of older checkpoints are left out
        evals: results
            .into_iter()
            .filter(|e| e.step == meta.step)
            .map(|e| (EvalKey::of(&e), e))
            .collect(),
    })
}

/// The markdown table, and `<stem>.png/.svg` with greedy validation BLEU during training.
pub fn report(runs: &[PathBuf], plot_stem: Option<&Path>) -> Result<String> {
    let rows: Vec<RunSummary> = runs.iter().map(|r| summarise(r)).collect::<Result<_>>()?;
    // the searches any run was evaluated with, valid before test
    let mut columns: Vec<EvalKey> = rows.iter().flat_map(|r| r.evals.keys().cloned()).collect();
    columns.sort();
    columns.dedup();
    // the splits whose references' teacher-forced loss was recorded on the whole split (it does
    // not depend on the search), valid first
    let mut nll_splits: Vec<(bool, String)> = rows
        .iter()
        .flat_map(|r| r.evals.iter())
        .filter(|(k, e)| k.limit.is_none() && e.reference_nll.is_some())
        .map(|(k, _)| (k.not_valid, k.split.clone()))
        .collect();
    nll_splits.sort();
    nll_splits.dedup();
    let mut header: Vec<String> = RunBasics::HEADER.iter().map(|h| h.to_string()).collect();
    header.push("valid BLEU (greedy, in training)".into());
    for (_, split) in &nll_splits {
        header.push(format!("{split} reference nats/token"));
    }
    for key in &columns {
        let (split, search) = (&key.split, key.search());
        header.push(format!("{split} BLEU ({search})"));
        header.push(format!("{split} chrF ({search})"));
        header.push(format!("{split} sentences/s ({search})"));
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = r.basics.cells();
            row.push(
                r.curve
                    .last()
                    .map_or("–".into(), |(_, b)| format!("{b:.2}")),
            );
            for (_, split) in &nll_splits {
                let nll = r
                    .evals
                    .iter()
                    .filter(|(k, _)| &k.split == split && k.limit.is_none())
                    .find_map(|(_, e)| e.reference_nll);
                row.push(nll.map_or("–".into(), |x| format!("{x:.3}")));
            }
            for key in &columns {
                match r.evals.get(key) {
                    Some(e) => row.extend([
                        format!("{:.2}", e.bleu),
                        format!("{:.2}", e.chrf),
                        format!("{:.1}", e.sentences_per_s),
                    ]),
                    None => row.extend(["–".to_string(), "–".into(), "–".into()]),
                }
            }
            row
        })
        .collect();
    if let Some(stem) = plot_stem {
        let curves: Vec<_> = rows
            .iter()
            .map(|r| (&r.basics, r.curve.as_slice()))
            .collect();
        plot_curves(
            stem,
            "validation BLEU during training (greedy, first sentences of valid)",
            "BLEU",
            &curves,
        )?;
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    Ok(markdown_table(&header_refs, &cells))
}
