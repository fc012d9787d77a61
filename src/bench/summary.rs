//! Reading a set of records: the full table, the sequence length at which each fast-weight
//! backend overtakes softmax attention, the backend time ratios, the growth of memory with T, and
//! the plots (time against T, log-log; peak memory against T).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::case::{DType, Op};
use super::record::Record;
use crate::recurrence::UpdateRule;
use crate::report::{line_plot, markdown_table, Axis, Series};

/// Records that share everything but the op, the rule and T (batch may follow T on a token budget).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub device: String,
    pub dtype: DType,
    pub d_k: i64,
    pub d_v: i64,
    pub heads: i64,
}

impl GroupKey {
    pub fn title(&self) -> String {
        let d = if self.d_k == self.d_v {
            format!("d={}", self.d_k)
        } else {
            format!("d_k={} d_v={}", self.d_k, self.d_v)
        };
        format!("{} {} {d} H={}", self.device, self.dtype, self.heads)
    }

    /// A file-name stem: `cpu-f32-d64`.
    pub fn stem(&self) -> String {
        let d = if self.d_k == self.d_v {
            format!("d{}", self.d_k)
        } else {
            format!("dk{}-dv{}", self.d_k, self.d_v)
        };
        format!("{}-{}-{d}", self.device.replace(':', ""), self.dtype)
    }
}

/// Records by group, then by series label, sorted by T within a series (the last record of a
/// configuration wins, so a re-run replaces an older one).
pub fn groups(records: &[Record]) -> BTreeMap<GroupKey, BTreeMap<String, Vec<&Record>>> {
    type ByT<'a> = BTreeMap<(i64, i64), &'a Record>;
    let mut out: BTreeMap<GroupKey, BTreeMap<String, ByT>> = BTreeMap::new();
    for r in records {
        let c = &r.case;
        let key = GroupKey {
            device: c.device.clone(),
            dtype: c.dtype,
            d_k: c.d_k,
            d_v: c.d_v,
            heads: c.heads,
        };
        out.entry(key)
            .or_default()
            .entry(c.label())
            .or_default()
            .insert((c.t, c.batch), r);
    }
    out.into_iter()
        .map(|(k, series)| {
            let series = series
                .into_iter()
                .map(|(label, by_t)| (label, by_t.into_values().collect()))
                .collect();
            (k, series)
        })
        .collect()
}

fn ms(s: &super::measure::Stats) -> String {
    format!("{:.3} ({:.3}–{:.3})", s.median_ms, s.min_ms, s.max_ms)
}

fn mib(bytes: Option<i64>) -> String {
    bytes.map_or("–".into(), |b| {
        format!("{:.1}", b as f64 / (1 << 20) as f64)
    })
}

fn pct(f: Option<f64>) -> String {
    f.map_or("–".into(), |f| format!("{:.1}%", 100.0 * f))
}

/// Every record: one row each, grouped.
pub fn full_table(records: &[Record]) -> String {
    let header = [
        "device",
        "dtype",
        "d",
        "H",
        "B",
        "T",
        "variant",
        "fwd ms (min–max)",
        "fwd+bwd ms (min–max)",
        "head-tok/s fwd+bwd",
        "GFLOP/s fwd",
        "GFLOP/s fwd+bwd",
        "% peak fwd+bwd",
        "peak MiB fwd",
        "peak MiB fwd+bwd",
    ];
    let mut rows = Vec::new();
    for (key, series) in groups(records) {
        for (label, rs) in series {
            for r in rs {
                let c = &r.case;
                let m = &r.measurement;
                rows.push(vec![
                    key.device.clone(),
                    key.dtype.to_string(),
                    if c.d_k == c.d_v {
                        c.d_k.to_string()
                    } else {
                        format!("{}/{}", c.d_k, c.d_v)
                    },
                    c.heads.to_string(),
                    c.batch.to_string(),
                    c.t.to_string(),
                    label.clone(),
                    ms(&m.forward),
                    ms(&m.train),
                    format!("{:.3e}", r.head_tokens_per_s_train),
                    format!("{:.1}", r.gflops_forward),
                    format!("{:.1}", r.gflops_train),
                    pct(r.peak_fraction_train),
                    mib(m.forward_peak_bytes),
                    mib(m.train_peak_bytes),
                ]);
            }
        }
    }
    markdown_table(&header, &rows)
}

/// The smallest T from which `series` is faster than `softmax` at every larger T measured by
/// both, by the median time `of`; `None` if it is slower at the largest common T.
pub fn crossover(
    series: &[&Record],
    softmax: &[&Record],
    of: impl Fn(&Record) -> f64,
) -> Option<i64> {
    let soft: BTreeMap<i64, f64> = softmax.iter().map(|r| (r.case.t, of(r))).collect();
    let mut common: Vec<(i64, bool)> = series
        .iter()
        .filter_map(|r| soft.get(&r.case.t).map(|&s| (r.case.t, of(r) < s)))
        .collect();
    common.sort();
    let mut from = None;
    for &(t, faster) in common.iter().rev() {
        if !faster {
            break;
        }
        from = Some(t);
    }
    from
}

/// Least-squares slope of log(peak bytes, fwd+bwd) against log(T): 1 for memory linear in T.
pub fn memory_exponent(series: &[&Record]) -> Option<f64> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|r| {
            let b = r.measurement.train_peak_bytes?;
            (b > 0).then(|| ((r.case.t as f64).ln(), (b as f64).ln()))
        })
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = pts
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Per group: where each fast-weight variant overtakes softmax attention, and how its memory grows.
pub fn crossover_table(records: &[Record]) -> String {
    let header = [
        "group",
        "variant",
        "faster than softmax, fwd+bwd, from T =",
        "forward, from T =",
        "peak memory ∝ T^x (fwd+bwd)",
        "peak bytes / head-token at the largest T",
    ];
    let mut rows = Vec::new();
    for (key, series) in groups(records) {
        let softmax = series
            .iter()
            .find(|(_, rs)| rs[0].case.op == Op::Softmax)
            .map(|(_, rs)| rs);
        for (label, rs) in &series {
            let describe = |from: Option<i64>| match (softmax, from) {
                (None, _) => "no softmax run".to_string(),
                (Some(_), None) => format!("not up to T = {}", rs.last().map_or(0, |r| r.case.t)),
                (Some(_), Some(t)) if t == rs[0].case.t => format!("{t} (the smallest measured)"),
                (Some(_), Some(t)) => t.to_string(),
            };
            let is_softmax = rs[0].case.op == Op::Softmax;
            let (train, fwd) = match (softmax, is_softmax) {
                (Some(s), false) => (
                    describe(crossover(rs, s, |r| r.measurement.train.median_ms)),
                    describe(crossover(rs, s, |r| r.measurement.forward.median_ms)),
                ),
                _ => ("–".into(), "–".into()),
            };
            rows.push(vec![
                key.title(),
                label.clone(),
                train,
                fwd,
                memory_exponent(rs).map_or("–".into(), |x| format!("{x:.2}")),
                rs.last()
                    .and_then(|r| {
                        Some(r.measurement.train_peak_bytes? as f64 / r.case.head_tokens())
                    })
                    .map_or("–".into(), |b| {
                        format!("{b:.0} (T = {})", rs[rs.len() - 1].case.t)
                    }),
            ]);
        }
    }
    markdown_table(&header, &rows)
}

/// Per group and T: the fwd+bwd time of Chunked and Reference over Fused, per rule.
pub fn ratio_table(records: &[Record]) -> String {
    let header = [
        "group",
        "rule",
        "T",
        "chunked / fused",
        "reference / fused",
        "softmax / fused",
    ];
    let mut rows = Vec::new();
    for (key, series) in groups(records) {
        let time = |op: Op, rule: UpdateRule, t: i64| -> Option<f64> {
            series.values().flatten().find_map(|r| {
                let c = &r.case;
                let rule_ok = c.op == Op::Softmax || c.rule == Some(rule);
                (c.op == op && rule_ok && c.t == t).then_some(r.measurement.train.median_ms)
            })
        };
        for rule in UpdateRule::ALL {
            let fused: Vec<&Record> = series
                .values()
                .flatten()
                .copied()
                .filter(|r| r.case.op == Op::Fused && r.case.rule == Some(rule))
                .collect();
            for r in fused {
                let t = r.case.t;
                let f = r.measurement.train.median_ms;
                let ratio =
                    |op| time(op, rule, t).map_or("–".into(), |x| format!("{:.2}", x / f));
                rows.push(vec![
                    key.title(),
                    rule.to_string(),
                    t.to_string(),
                    ratio(Op::Chunked),
                    ratio(Op::Reference),
                    ratio(Op::Softmax),
                ]);
            }
        }
    }
    markdown_table(&header, &rows)
}

/// Per group: `time-<stem>.{png,svg}` (fwd+bwd median against T, log-log) and
/// `memory-<stem>.{png,svg}` (fwd+bwd peak MiB against T, log-log) in `dir`.
pub fn plots(records: &[Record], dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (key, series) in groups(records) {
        let hardware = series
            .values()
            .flatten()
            .next()
            .map_or(String::new(), |r| r.hardware.clone());
        let to_series = |f: &dyn Fn(&Record) -> Option<f64>| -> Vec<Series> {
            series
                .iter()
                .map(|(label, rs)| Series {
                    name: label.clone(),
                    points: rs
                        .iter()
                        .filter_map(|r| f(r).map(|y| (r.case.t as f64, y)))
                        .collect(),
                    ..Series::default()
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        };
        let t_axis = Axis {
            label: "sequence length T".into(),
            log: true,
        };
        let stem = dir.join(format!("time-{}", key.stem()));
        line_plot(
            &stem,
            &format!("fwd+bwd time, {} ({hardware})", key.title()),
            &t_axis,
            &Axis {
                label: "median ms".into(),
                log: true,
            },
            &to_series(&|r| Some(r.measurement.train.median_ms)),
        )?;
        written.push(stem.display().to_string());
        let mem = to_series(&|r| {
            r.measurement
                .train_peak_bytes
                .map(|b| b.max(1) as f64 / (1 << 20) as f64)
        });
        if !mem.is_empty() {
            let stem = dir.join(format!("memory-{}", key.stem()));
            line_plot(
                &stem,
                &format!(
                    "fwd+bwd peak memory above inputs, {} ({hardware})",
                    key.title()
                ),
                &t_axis,
                &Axis {
                    label: "MiB".into(),
                    log: true,
                },
                &mem,
            )?;
            written.push(stem.display().to_string());
        }
    }
    Ok(written)
}
