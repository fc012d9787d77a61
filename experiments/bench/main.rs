//! Experiment `bench`: speed and memory of every fast-weight backend (Reference, Chunked, Fused;
//! sum and delta rules) against causal softmax attention (libtorch's scaled-dot-product attention),
//! against this machine's own measured ceilings (docs/derivations.md Sec. 7).
//!
//! For each case of a grid (B, H, T, d, dtype, device, op) it times the forward (no_grad) and the
//! forward + backward: warm-up runs, then the median, min and max of the timed runs (synchronised
//! wall clock); it measures peak memory above the inputs (CUDA allocator statistics on GPU, the RSS
//! high-water mark on CPU). Into the output folder it writes:
//! - `peak.json`: matmul GFLOP/s per dtype and copy GB/s, measured here (`--peak` measures only that);
//! - `results.jsonl`: one record per case, appended as each finishes; a re-run skips recorded cases,
//!   so an interrupted run loses at most the case in progress;
//! - `table.md`: where each backend overtakes softmax, backend ratios, then every record;
//! - `time-<device>-<dtype>-d<d>.{png,svg}` (log-log) and `memory-….{png,svg}`.
//!
//! Run:
//!   cargo run --release --bin bench                      # the CPU grid, ~3 minutes on 2 cores
//!   cargo run --release --bin bench -- --peak            # only the machine's ceilings
//!   cargo run --release --bin bench -- --preset gpu      # H100/H200 grid (scripts/gpu-check)
//!   cargo run --release --bin bench -- --t 1024 --d 64 --ops fused --rules delta --heads 4
//! Results on this machine class: docs/performance.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fwp::bench::{measure, peak, summary, DType, Grid, Op, Peak, Preset, Record};
use fwp::report::{append_record, atomic_write, read_records};
use fwp::UpdateRule;

#[path = "../common.rs"]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Speed and memory of the fast-weight backends against softmax attention")]
struct Args {
    /// The grid to run (cpu, gpu or quick); the flags below override its fields.
    #[arg(long, default_value = "cpu")]
    preset: Preset,
    /// cpu, cuda, cuda:N
    #[arg(long)]
    device: Option<String>,
    /// comma-separated: f32, bf16, f16, f64
    #[arg(long, value_delimiter = ',')]
    dtypes: Option<Vec<DType>>,
    /// sequence lengths, comma-separated
    #[arg(long, value_delimiter = ',')]
    t: Option<Vec<i64>>,
    /// head sizes (d_v, and d_k unless --d-k is given), comma-separated
    #[arg(long, value_delimiter = ',')]
    d: Option<Vec<i64>>,
    /// key size of every case, when keys are wider than values (DPFP, FAVOR+)
    #[arg(long)]
    d_k: Option<i64>,
    /// comma-separated: reference, chunked, fused (the recurrent kernels, fused:recurrent),
    /// fused-chunked (the chunked kernels, fused:chunked), softmax
    #[arg(long, value_delimiter = ',')]
    ops: Option<Vec<Op>>,
    /// comma-separated: sum, delta
    #[arg(long, value_delimiter = ',')]
    rules: Option<Vec<UpdateRule>>,
    #[arg(long)]
    batch: Option<i64>,
    /// Fix batch x T at this many tokens (batch = max(1, tokens / T)) instead of a fixed batch.
    #[arg(long)]
    tokens: Option<i64>,
    #[arg(long)]
    heads: Option<i64>,
    /// Chunk size of the Chunked backend.
    #[arg(long)]
    chunk: Option<i64>,
    /// Run the Reference backend only up to this T.
    #[arg(long)]
    reference_max_t: Option<i64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    repeats: Option<usize>,
    /// CPU threads for libtorch and the kernels (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Output folder (default runs/bench-<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only measure this machine's ceilings (written to <out>/peak.json).
    #[arg(long)]
    peak: bool,
    /// Re-measure the ceilings even if <out>/peak.json matches this device.
    #[arg(long)]
    remeasure_peak: bool,
    /// Only rewrite table.md and the plots from results.jsonl.
    #[arg(long)]
    report_only: bool,
}

fn grid(args: &Args) -> Result<Grid> {
    let mut g = Grid::preset(args.preset);
    if let Some(v) = &args.device {
        g.device = v.clone();
    }
    if let Some(v) = &args.dtypes {
        g.dtypes = v.clone();
    }
    if let Some(v) = &args.t {
        g.t = v.clone();
    }
    if let Some(v) = &args.d {
        g.d = v.clone();
    }
    if args.d_k.is_some() {
        g.d_k = args.d_k;
    }
    if let Some(v) = &args.ops {
        g.ops = v.clone();
    }
    if let Some(v) = &args.rules {
        g.rules = v.clone();
    }
    if let Some(v) = args.batch {
        g.batch = v;
        g.tokens = None;
    }
    if let Some(v) = args.tokens {
        g.tokens = Some(v);
    }
    if let Some(v) = args.heads {
        g.heads = v;
    }
    if let Some(v) = args.chunk {
        g.chunk = v;
    }
    if let Some(v) = args.reference_max_t {
        g.reference_max_t = v;
    }
    if let Some(v) = args.warmup {
        g.warmup = v;
    }
    if let Some(v) = args.repeats {
        g.repeats = v;
    }
    // "cuda" means the first GPU; records name the device index.
    if g.device == "cuda" {
        g.device = "cuda:0".into();
    }
    Ok(g)
}

/// The saved ceilings if they were measured for this device, thread count and dtypes; else
/// measures and saves them.
fn ceilings(out: &Path, g: &Grid, remeasure: bool) -> Result<Peak> {
    let path = out.join("peak.json");
    if !remeasure && path.is_file() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let saved: Peak =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let dtypes_ok = g
            .dtypes
            .iter()
            .all(|d| saved.matmul_gflops.contains_key(d.name()));
        if saved.device == g.device && saved.threads == tch::get_num_threads() && dtypes_ok {
            return Ok(saved);
        }
    }
    eprintln!(
        "measuring the ceilings of {} ({:?}) ...",
        g.device, g.dtypes
    );
    let p = peak::measure(&g.device, &g.dtypes)?;
    atomic_write(&path, (serde_json::to_string_pretty(&p)? + "\n").as_bytes())?;
    Ok(p)
}

fn peak_lines(p: &Peak) -> String {
    let rates: Vec<String> = p
        .matmul_gflops
        .iter()
        .map(|(d, r)| format!("{d} matmul {r:.1} GFLOP/s (n = {})", p.matmul_n[d]))
        .collect();
    format!(
        "{} ({}, {} threads): {}; copy {:.1} GB/s",
        p.device,
        p.hardware,
        p.threads,
        rates.join(", "),
        p.copy_gb_s
    )
}

/// How the C allocator treated freed memory in `records` (`fwp::host_memory`): it changes CPU times
/// at large T and, through the heap's fragmentation, some peaks.
fn host_memory_line(records: &[Record]) -> String {
    let kept = records
        .iter()
        .filter(|r| r.host_memory_kept == Some(true))
        .count();
    let default = records
        .iter()
        .filter(|r| r.host_memory_kept == Some(false))
        .count();
    let unknown = records.len() - kept - default;
    let mut parts = Vec::new();
    for (n, what) in [
        (kept, "kept freed memory for reuse"),
        (
            default,
            "ran with glibc's defaults (FWP_KEEP_FREED_MEMORY=0)",
        ),
        (unknown, "predate the setting (glibc's defaults)"),
    ] {
        if n > 0 {
            parts.push(format!("{n} of {} records {what}", records.len()));
        }
    }
    format!(
        "Host allocator (fwp::host_memory): {}.\n\n",
        parts.join("; ")
    )
}

fn report(out: &Path, records: &[Record], p: Option<&Peak>) -> Result<()> {
    let mut md = String::from("# bench results\n\n");
    if let Some(p) = p {
        md += &format!("Measured ceilings: {}\n\n", peak_lines(p));
    }
    if !records.is_empty() {
        md += &host_memory_line(records);
    }
    md += "## Where each fast-weight variant overtakes softmax attention\n\n";
    md += &summary::crossover_table(records);
    md += "\n## Time ratios, forward + backward (> 1: slower than Fused)\n\n";
    md += &summary::ratio_table(records);
    md += "\n## Every record (times: median (min–max) over the timed runs)\n\n";
    md += &summary::full_table(records);
    atomic_write(&out.join("table.md"), md.as_bytes())?;
    let plots = summary::plots(records, out)?;
    println!("wrote {}", out.join("table.md").display());
    for p in plots {
        println!("wrote {p}.png and .svg");
    }
    Ok(())
}

fn main() -> Result<()> {
    // Large tensors reuse the heap's pages instead of faulting fresh ones in every step
    // (fwp::host_memory; FWP_KEEP_FREED_MEMORY=0 turns it off).
    fwp::host_memory::keep_freed_memory_unless_disabled()?;
    let args = Args::parse();
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be >= 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    let g = grid(&args)?;
    let cases = g.cases()?;
    let preset = args.preset.to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/bench-{preset}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let results = out.join("results.jsonl");

    if args.peak {
        fwp::check::device(&g.device)?;
        let p = ceilings(&out, &g, true)?;
        println!("{}", peak_lines(&p));
        return Ok(());
    }
    let saved: Vec<Record> = if results.is_file() {
        read_records(&results)?
    } else {
        Vec::new()
    };
    if args.report_only {
        if saved.is_empty() {
            bail!("{} holds no records to report", results.display());
        }
        let p = std::fs::read_to_string(out.join("peak.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Peak>(&s).ok());
        return report(&out, &saved, p.as_ref());
    }
    fwp::check::device(&g.device)?;
    let p = ceilings(&out, &g, args.remeasure_peak)?;
    println!("{}", peak_lines(&p));
    atomic_write(
        &out.join("grid.json"),
        (serde_json::to_string_pretty(&g)? + "\n").as_bytes(),
    )?;

    let todo: Vec<_> = cases
        .into_iter()
        .filter(|c| !saved.iter().any(|r| &r.case == c))
        .collect();
    println!(
        "{} cases to run ({} already in {})",
        todo.len(),
        saved.len(),
        results.display()
    );
    let bar = common::bar(
        todo.len() as u64,
        "{bar:30} {pos}/{len} cases [{elapsed}<{eta}] {msg}",
    )?;
    let mut failures = Vec::new();
    for (i, case) in todo.iter().enumerate() {
        let name = format!(
            "{} {} B={} T={} d={}",
            case.label(),
            case.dtype,
            case.batch,
            case.t,
            case.d_k
        );
        bar.set_message(name.clone());
        match measure(case, g.warmup, g.repeats) {
            Ok(m) => {
                let record = Record::new(case.clone(), m, Some(&p));
                if bar.is_hidden() {
                    eprintln!(
                        "[{}/{}] {name}: forward {:.3} ms, forward + backward {:.3} ms",
                        i + 1,
                        todo.len(),
                        record.measurement.forward.median_ms,
                        record.measurement.train.median_ms
                    );
                }
                append_record(&results, &record)?;
            }
            Err(e) => {
                common::say(
                    &bar,
                    format!("[{}/{}] FAILED {name}: {e:#}", i + 1, todo.len()),
                );
                failures.push(format!("{name}: {e:#}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all: Vec<Record> = read_records(&results)?;
    report(&out, &all, Some(&p))?;
    if !failures.is_empty() {
        bail!(
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
