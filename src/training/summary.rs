//! What the results tables of the training experiments (`lm report`, `translate report`) show for
//! every run, and their plot of a validation metric during training.

use std::path::Path;

use anyhow::Result;

use super::StepLog;
use crate::report::{line_plot, median, Axis, Series};

/// A run's variant, size and training speed.
#[derive(Clone, Debug, PartialEq)]
pub struct RunBasics {
    pub variant: String,
    pub seed: i64,
    pub parameters: i64,
    pub updates: usize,
    /// The CPU threads it trained with (none recorded: a GPU run, or an older record); training
    /// speed and minutes mean little without it.
    pub threads: Option<i32>,
    /// Median over the logged updates.
    pub tokens_per_s: f64,
    pub train_minutes: f64,
    /// Mean training loss of the last five logged updates.
    pub final_loss: f64,
}

impl RunBasics {
    pub const HEADER: [&'static str; 8] = [
        "variant",
        "seed",
        "parameters",
        "updates",
        "train threads",
        "train tokens/s",
        "train minutes",
        "final train loss",
    ];

    pub fn new(
        variant: String,
        seed: i64,
        parameters: i64,
        updates: usize,
        threads: Option<i32>,
        steps: &[StepLog],
    ) -> Self {
        let last: Vec<f64> = steps.iter().rev().take(5).map(|s| s.loss).collect();
        RunBasics {
            variant,
            seed,
            parameters,
            updates,
            threads,
            tokens_per_s: median(&steps.iter().map(|s| s.tokens_per_s).collect::<Vec<_>>()),
            train_minutes: steps.last().map_or(0.0, |s| s.elapsed_s / 60.0),
            final_loss: last.iter().sum::<f64>() / last.len().max(1) as f64,
        }
    }

    /// The cells under [`RunBasics::HEADER`].
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.variant.clone(),
            self.seed.to_string(),
            format!("{:.2}M", self.parameters as f64 / 1e6),
            self.updates.to_string(),
            self.threads.map_or("–".into(), |t| t.to_string()),
            format!("{:.0}", self.tokens_per_s),
            format!("{:.1}", self.train_minutes),
            format!("{:.3}", self.final_loss),
        ]
    }

    /// "variant (seed s)", a plot's legend entry.
    pub fn label(&self) -> String {
        format!("{} (seed {})", self.variant, self.seed)
    }
}

/// `<stem>.png/.svg`: one line per run of (update, `metric`); runs without points are left out,
/// and nothing is drawn when none has any.
pub fn plot_curves(
    stem: &Path,
    title: &str,
    metric: &str,
    runs: &[(&RunBasics, &[(f64, f64)])],
) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(r, points)| Series {
            name: r.label(),
            points: points.to_vec(),
            ..Series::default()
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    line_plot(
        stem,
        title,
        &Axis {
            label: "update".into(),
            log: false,
        },
        &Axis {
            label: metric.into(),
            log: false,
        },
        &series,
    )
}
