//! The results table of a set of LM runs (`lm report`): per run its variant, size, speed, and the
//! last recorded perplexity of each split and evaluation mode; plus a plot of validation
//! perplexity during training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use super::checkpoint;
use super::train::{EvalLog, StepLog};
use crate::report::{markdown_table, read_records, read_records_if_any};
use crate::training::summary::{plot_curves, RunBasics};

/// The fields of an evaluation record (`<run>/results.jsonl`) that the table uses.
#[derive(Deserialize)]
struct Evaluation {
    split: String,
    mode: String,
    #[serde(with = "crate::report::real")]
    perplexity: f64,
}

/// One run's row.
pub struct RunSummary {
    pub dir: PathBuf,
    pub basics: RunBasics,
    /// (split, mode) -> perplexity (the last evaluation of each).
    pub perplexity: BTreeMap<(String, String), f64>,
    pub curve: Vec<(f64, f64)>,
}

pub fn summarise(run: &Path) -> Result<RunSummary> {
    let (_, meta) = checkpoint::find(run)?;
    let steps: Vec<StepLog> = read_records(&run.join("train.jsonl"))?;
    let evals: Vec<Evaluation> = read_records_if_any(&run.join("results.jsonl"))?;
    let curve: Vec<EvalLog> = read_records_if_any(&run.join("eval.jsonl"))?;
    Ok(RunSummary {
        dir: run.to_path_buf(),
        basics: RunBasics::new(
            meta.config.model.variant.to_string(),
            meta.config.train.seed,
            meta.parameters,
            meta.step,
            meta.threads,
            &steps,
        ),
        perplexity: evals
            .into_iter()
            .map(|e| ((e.split, e.mode), e.perplexity))
            .collect(),
        curve: curve
            .iter()
            .map(|e| (e.step as f64, e.perplexity))
            .collect(),
    })
}

pub use crate::training::checkpoint::runs_in;

/// The markdown table, and `<stem>.png/.svg` with validation perplexity during training.
pub fn report(runs: &[PathBuf], plot_stem: Option<&Path>) -> Result<String> {
    let rows: Vec<RunSummary> = runs.iter().map(|r| summarise(r)).collect::<Result<_>>()?;
    let modes = [
        ("valid", "segments"),
        ("valid", "sliding:8"),
        ("valid", "stateful"),
        ("test", "segments"),
        ("test", "sliding:8"),
        ("test", "sliding:1"),
        ("test", "stateful"),
    ];
    let mut header: Vec<String> = RunBasics::HEADER.iter().map(|h| h.to_string()).collect();
    header.extend(modes.iter().map(|(s, m)| format!("{s} ppl ({m})")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = r.basics.cells();
            row.extend(modes.iter().map(|(s, m)| {
                r.perplexity
                    .get(&(s.to_string(), m.to_string()))
                    .map_or("–".into(), |p| format!("{p:.1}"))
            }));
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
            "validation perplexity during training (non-overlapping segments)",
            "perplexity",
            &curves,
        )?;
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    Ok(markdown_table(&header_refs, &cells))
}
