//! The results table of a set of LM runs (`lm report`): per run its variant, size, speed, and the
//! last recorded perplexity of each split and evaluation mode; plus a plot of validation
//! perplexity during training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::checkpoint;
use super::train::{EvalLog, StepLog};
use crate::report::{line_plot, markdown_table, read_records, Axis, Series};

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
    pub variant: String,
    pub seed: i64,
    pub parameters: i64,
    pub updates: usize,
    pub tokens_per_s: f64,
    pub train_minutes: f64,
    pub final_loss: f64,
    /// (split, mode) -> perplexity (the last evaluation of each).
    pub perplexity: BTreeMap<(String, String), f64>,
    pub curve: Vec<(f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn summarise(run: &Path) -> Result<RunSummary> {
    let (_, meta) = checkpoint::find(run)?;
    let steps: Vec<StepLog> = read_records(&run.join("train.jsonl"))?;
    let evals: Vec<Evaluation> = if run.join("results.jsonl").is_file() {
        read_records(&run.join("results.jsonl"))?
    } else {
        Vec::new()
    };
    let curve: Vec<EvalLog> = if run.join("eval.jsonl").is_file() {
        read_records(&run.join("eval.jsonl"))?
    } else {
        Vec::new()
    };
    let last: Vec<f64> = steps.iter().rev().take(5).map(|s| s.loss).collect();
    Ok(RunSummary {
        dir: run.to_path_buf(),
        variant: meta.config.model.variant.to_string(),
        seed: meta.config.train.seed,
        parameters: meta.parameters,
        updates: meta.step,
        tokens_per_s: median(steps.iter().map(|s| s.tokens_per_s).collect()),
        train_minutes: steps.last().map_or(0.0, |s| s.elapsed_s / 60.0),
        final_loss: last.iter().sum::<f64>() / last.len().max(1) as f64,
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
    let mut header = vec![
        "variant".to_string(),
        "seed".into(),
        "parameters".into(),
        "updates".into(),
        "train tokens/s".into(),
        "train minutes".into(),
        "final train loss".into(),
    ];
    header.extend(modes.iter().map(|(s, m)| format!("{s} ppl ({m})")));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.variant.clone(),
                r.seed.to_string(),
                format!("{:.2}M", r.parameters as f64 / 1e6),
                r.updates.to_string(),
                format!("{:.0}", r.tokens_per_s),
                format!("{:.1}", r.train_minutes),
                format!("{:.3}", r.final_loss),
            ];
            row.extend(modes.iter().map(|(s, m)| {
                r.perplexity
                    .get(&(s.to_string(), m.to_string()))
                    .map_or("–".into(), |p| format!("{p:.1}"))
            }));
            row
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    if let Some(stem) = plot_stem {
        let series: Vec<Series> = rows
            .iter()
            .filter(|r| !r.curve.is_empty())
            .map(|r| Series {
                name: format!("{} (seed {})", r.variant, r.seed),
                points: r.curve.clone(),
                ..Series::default()
            })
            .collect();
        if !series.is_empty() {
            line_plot(
                stem,
                "validation perplexity during training (non-overlapping segments)",
                &Axis {
                    label: "update".into(),
                    log: false,
                },
                &Axis {
                    label: "perplexity".into(),
                    log: false,
                },
                &series,
            )?;
        }
    }
    Ok(markdown_table(&header_refs, &cells))
}
