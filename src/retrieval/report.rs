//! The report of a retrieval sweep: `table.md` (final eval loss per S and variant: the median over
//! seeds with the smallest and largest, and the largest S each variant solves) and
//! `plot.{png,svg}` (the median against S, each seed's result as a dot).

use std::path::Path;

use anyhow::Result;

use super::data::Setting;
use super::model::Variant;
use super::protocol::Protocol;
use super::record::Record;
use crate::report::{atomic_write, line_plot, markdown_table, median, Axis, Series};

/// Writes `table.md` and `plot.{png,svg}` into `out` from the records of `protocol`, `setting`
/// and `d_key` (others are left out); a run counts as solved at eval loss <= `solved_loss`.
/// Returns the table.
pub fn report(
    out: &Path,
    records: &[Record],
    protocol: Protocol,
    setting: Setting,
    d_key: i64,
    solved_loss: f64,
) -> Result<String> {
    let records: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.config.protocol == protocol
                && r.config.setting == setting.number()
                && r.config.d_key == d_key
        })
        .collect();
    let mut variants: Vec<String> = Vec::new();
    let mut sizes: Vec<i64> = Vec::new();
    for r in &records {
        if !variants.contains(&r.config.variant) {
            variants.push(r.config.variant.clone());
        }
        if !sizes.contains(&r.config.s) {
            sizes.push(r.config.s);
        }
    }
    sizes.sort();
    // each seed's final eval loss, and how many seeds solved it
    let losses = |v: &str, s: i64| -> Vec<f64> {
        records
            .iter()
            .filter(|r| r.config.variant == v && r.config.s == s)
            .map(|r| r.result.final_eval_loss)
            .collect()
    };
    // (median final eval loss over seeds, seeds that solved it, seeds run)
    let cell = |v: &str, s: i64| -> Option<(f64, usize, usize)> {
        let rs: Vec<&&Record> = records
            .iter()
            .filter(|r| r.config.variant == v && r.config.s == s)
            .collect();
        (!rs.is_empty()).then(|| {
            (
                median(&losses(v, s)),
                rs.iter().filter(|r| r.result.solved).count(),
                rs.len(),
            )
        })
    };
    let spread = |v: &str, s: i64| -> String {
        let l = losses(v, s);
        if l.len() < 2 {
            return String::new();
        }
        let lo = l.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!(" [{}, {}]", loss_text(lo), loss_text(hi))
    };
    let mut header = vec!["S".to_string()];
    header.extend(variants.iter().cloned());
    let rows: Vec<Vec<String>> = sizes
        .iter()
        .map(|&s| {
            let mut row = vec![s.to_string()];
            for v in &variants {
                let range = spread(v, s);
                row.push(match cell(v, s) {
                    Some((loss, solved, n)) if solved == n => {
                        format!("{}{range} ✓", loss_text(loss))
                    }
                    Some((loss, 0, _)) => format!("{}{range}", loss_text(loss)),
                    Some((loss, solved, n)) => {
                        format!("{}{range} ({solved}/{n} solved)", loss_text(loss))
                    }
                    None => "".into(),
                });
            }
            row
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = format!(
        "Final eval loss (median over seeds, [min, max] where more than one; ✓ = every seed solved, \
         i.e. reached loss <= {}), protocol {}, setting {}, d_key {}\n\n",
        solved_loss,
        protocol,
        setting.number(),
        d_key
    );
    table += &markdown_table(&header_refs, &rows);
    table += "\nLargest S solved, by every seed / by at least one seed:\n\n";
    for v in &variants {
        let largest = |need_all: bool| {
            sizes
                .iter()
                .filter(|&&s| {
                    cell(v, s).is_some_and(
                        |(_, solved, n)| if need_all { solved == n } else { solved > 0 },
                    )
                })
                .max()
                .map_or("none".to_string(), |s| s.to_string())
        };
        let d_dot = match v.parse::<Variant>() {
            Ok(Variant::FastWeight { map, .. }) => format!(" (d_dot {})", map.width(d_key)),
            _ => String::new(),
        };
        table += &format!("- {v}{d_dot}: {} / {}\n", largest(true), largest(false));
    }
    atomic_write(&out.join("table.md"), table.as_bytes())?;
    let mut series: Vec<Series> = variants
        .iter()
        .map(|v| Series {
            name: v.clone(),
            points: sizes
                .iter()
                .filter_map(|&s| cell(v, s).map(|(loss, _, _)| (s as f64, loss)))
                .collect(),
            dots: sizes
                .iter()
                .flat_map(|&s| losses(v, s).into_iter().map(move |l| (s as f64, l)))
                .collect(),
        })
        .collect();
    if let (Some(&lo), Some(&hi)) = (sizes.first(), sizes.last()) {
        let t = solved_loss;
        series.push(Series {
            name: format!("solved (<= {t})"),
            points: vec![(lo as f64, t), (hi as f64, t)],
            ..Series::default()
        });
    }
    line_plot(
        &out.join("plot"),
        &format!(
            "Setting {} (protocol {}, d_key = {}): final eval loss against S (line: median; dots: seeds)",
            setting.number(),
            protocol,
            d_key
        ),
        &Axis {
            label: "number of keys S".into(),
            log: false,
        },
        &Axis {
            label: "final eval loss".into(),
            log: true,
        },
        &series,
    )?;
    Ok(table)
}

/// A loss for the tables: four decimals, or two significant digits below 0.001 (where four decimals
/// would print a solved run's 3e-5 as 0.0000).
fn loss_text(loss: f64) -> String {
    if loss != 0.0 && loss.abs() < 1e-3 {
        format!("{loss:.1e}")
    } else {
        format!("{loss:.4}")
    }
}
