//! Experiment `retrieval`: the paper's synthetic associative-retrieval experiments (Schlag et al.
//! 2021; docs/retrieval.md). Setting 1 (capacity): a sum-rule fast-weight memory fails once
//! it holds more than about d_dot associations, at a point that grows with the feature map's d_dot.
//! Setting 2 (updates): the delta rule updates associations, the sum rule cannot.
//!
//! Runs a sweep over variants x S x seeds with the authors' protocol (`--protocol authors`, the
//! default: Adam 1e-3, batch 32, eval every 100 steps on 20 fresh sequences, stop at eval loss
//! <= 0.001 or after 11 evaluations without improvement; their normalisation, initialisation,
//! FAVOR+ redraw, query draw and Setting 2 evaluation on S writes) or fwp's first protocol
//! (`--protocol fwp-v1`); both are described in docs/retrieval.md. Writes, into the output folder:
//! `results.jsonl` (one record per finished run, appended atomically; a restarted sweep skips
//! finished runs), `table.md`, `plot.png`, `plot.svg`.
//!
//! Run:
//!   make run                                         # the `quick` preset: capacity at d_key = 16, ~10 min
//!   cargo run --release --bin retrieval -- --preset paper1 --variants sum:linear --s 20:200:20
//!   cargo run --release --bin retrieval -- --help
//! Expected (quick preset, docs/retrieval.md): softmax solves every S; sum:linear (d_dot 16) solves
//! S = 8 and fails from S = 16 on, sum:dpfp:1 (d_dot 32) solves S = 16 and fails from S = 24 on.
//! Results at d_key = 64: docs/retrieval.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use fwp::report::{append_record, atomic_write, read_records};
use fwp::retrieval::{
    report, train, Protocol, Record, RetrievalModel, RunConfig, Setting, TrainConfig, Variant,
};
use fwp::{Backend, Normalisation};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::nn;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
enum Preset {
    /// Setting 1 at d_key = 16 (d_dot 16 for linear, 32 for DPFP-1): softmax, sum:linear,
    /// sum:dpfp:1 over S = 8..56 step 8, seeds 0 and 1; about 10 minutes on 2 CPU cores.
    Quick,
    /// The paper's Setting 1: d_key = 64, S = 20..600 step 20, every sum-rule variant and softmax.
    Paper1,
    /// The paper's Setting 2: d_key = 64, S = 20..200 step 20, DPFP-1 sum vs the delta rule.
    Paper2,
}

#[derive(Parser, Debug, Serialize, Deserialize)]
#[command(
    about = "Synthetic associative retrieval (paper Sec. 4.1): capacity and update experiments"
)]
struct Args {
    /// Named defaults; the flags below override them.
    #[arg(long, value_enum, default_value = "quick")]
    preset: Preset,
    /// authors (their synthetic-task code) or fwp-v1 (fwp's first reproduction); see docs/retrieval.md
    #[arg(long, default_value = "authors")]
    protocol: Protocol,
    /// 1 (capacity) or 2 (updates)
    #[arg(long)]
    setting: Option<u8>,
    /// Number of keys S: one value, a list `8,16,32`, or a range `START:END:STEP` (END included)
    #[arg(long)]
    s: Option<String>,
    /// Comma-separated: softmax, sum:linear, sum:dpfp:NU, sum:favor:M, delta:..., e.g. `softmax,sum:linear`
    #[arg(long)]
    variants: Option<String>,
    #[arg(long)]
    d_key: Option<i64>,
    /// Comma-separated seeds
    #[arg(long)]
    seeds: Option<String>,
    /// Training steps at most (>= 1)
    #[arg(long)]
    max_steps: Option<usize>,
    /// none, attention, sum or sum-and-attention (default: the protocol's; authors: attention for
    /// the sum rule, sum for the delta rule; fwp-v1: sum for both)
    #[arg(long)]
    normalisation: Option<Normalisation>,
    /// auto, fused, reference, chunked (64 steps) or chunked:N
    #[arg(long, default_value = "auto")]
    backend: Backend,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output folder (default: runs/retrieval-<preset>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only rewrite table.md and the plots from the results already in the output folder
    #[arg(long)]
    report_only: bool,
    /// libtorch CPU threads (default: libtorch's choice); 1 lets two sweeps share 2 cores well
    #[arg(long)]
    threads: Option<i32>,
}

/// The sweep after presets and flags are combined.
struct Sweep {
    setting: Setting,
    s: Vec<i64>,
    variants: Vec<Variant>,
    d_key: i64,
    seeds: Vec<i64>,
    train: TrainConfig,
}

/// Sizes a sweep may hold at most (a range like 1:9000000000:1 is a typo, not a plan).
const MAX_SIZES: i64 = 100_000;

fn parse_s(spec: &str) -> Result<Vec<i64>> {
    let bad = || format!("--s '{spec}': expected N, N,M,... or START:END:STEP");
    let nums = |parts: &[&str]| -> Result<Vec<i64>> {
        parts
            .iter()
            .map(|p| p.trim().parse::<i64>().with_context(bad))
            .collect()
    };
    let out = if spec.contains(':') {
        let p = nums(&spec.split(':').collect::<Vec<_>>())?;
        if p.len() != 3 || p[2] <= 0 || p[0] > p[1] {
            bail!("{}", bad());
        }
        let count = (p[1] as i128 - p[0] as i128) / p[2] as i128 + 1;
        if count > MAX_SIZES as i128 {
            bail!("--s '{spec}': {count} sizes; a sweep takes at most {MAX_SIZES}");
        }
        (p[0]..=p[1]).step_by(p[2] as usize).collect()
    } else {
        nums(&spec.split(',').collect::<Vec<_>>())?
    };
    if let Some(bad_s) = out.iter().find(|&&s| s < 1) {
        bail!("--s '{spec}': S must be >= 1, got {bad_s}");
    }
    Ok(out)
}

fn sweep(args: &Args) -> Result<Sweep> {
    let (setting, s, variants, d_key, seeds) = match args.preset {
        Preset::Quick => (1, "8:56:8", "softmax,sum:linear,sum:dpfp:1", 16, "0,1"),
        Preset::Paper1 => (
            1,
            "20:600:20",
            "sum:linear,sum:dpfp:1,sum:dpfp:2,sum:dpfp:3,sum:favor:64,sum:favor:128,sum:favor:512,softmax",
            64,
            "0",
        ),
        Preset::Paper2 => (2, "20:200:20", "sum:dpfp:1,delta:linear,delta:dpfp:1,delta:dpfp:2,delta:favor:64", 64, "0"),
    };
    let seeds = args.seeds.as_deref().unwrap_or(seeds);
    let setting = Setting::from_number(args.setting.unwrap_or(setting))?;
    let variants = args
        .variants
        .as_deref()
        .unwrap_or(variants)
        .split(',')
        .map(|v| v.trim().parse::<Variant>())
        .collect::<Result<Vec<_>>>()?;
    let seeds = seeds
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<i64>()
                .with_context(|| format!("--seeds '{seeds}': not an integer list"))
        })
        .collect::<Result<Vec<_>>>()?;
    let d_key = args.d_key.unwrap_or(d_key);
    if d_key < 1 {
        bail!("--d-key must be >= 1, got {d_key}");
    }
    for v in &variants {
        if let Variant::FastWeight { map, .. } = v {
            map.validate(d_key)?;
        }
    }
    let train: TrainConfig = args.protocol.train(args.max_steps.unwrap_or(100_000));
    train.check().context("--max-steps")?;
    Ok(Sweep {
        setting,
        s: parse_s(args.s.as_deref().unwrap_or(s))?,
        variants,
        d_key,
        seeds,
        train,
    })
}

fn main() -> Result<()> {
    // Large tensors reuse the heap's pages instead of faulting fresh ones in every step
    // (fwp::host_memory; FWP_KEEP_FREED_MEMORY=0 turns it off).
    fwp::host_memory::keep_freed_memory_unless_disabled()?;
    // Denormals (FAVOR+ features and their gradients can reach them) cost x86 CPUs up to 100x per
    // operation; flushed before libtorch starts its threads, which inherit the setting.
    fwp::ops::set_flush_denormal(true);
    let args = Args::parse();
    if let Some(n) = args.threads {
        if n < 1 {
            bail!("--threads must be >= 1, got {n}");
        }
        tch::set_num_threads(n);
    }
    let plan = sweep(&args)?;
    let device = fwp::check::device(&args.device)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let preset = format!("{:?}", args.preset).to_lowercase();
        PathBuf::from(match args.protocol {
            Protocol::Authors => format!("runs/retrieval-{preset}"),
            other => format!("runs/retrieval-{preset}-{other}"),
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let results = out.join("results.jsonl");

    // Every run of the sweep, minus those already in results.jsonl.
    let done: Vec<Record> = read_records(&results)?;
    let mut todo = Vec::new();
    for &s in &plan.s {
        for v in &plan.variants {
            for &seed in &plan.seeds {
                let cfg = RunConfig {
                    protocol: args.protocol,
                    setting: plan.setting.number(),
                    variant: v.to_string(),
                    s,
                    seed,
                    d_key: plan.d_key,
                    model: args
                        .protocol
                        .model(s, plan.d_key, *v, args.normalisation, args.backend),
                    train: plan.train,
                    device: args.device.clone(),
                };
                if !done.iter().any(|r| r.config == cfg) {
                    todo.push(cfg);
                }
            }
        }
    }
    let total = plan.s.len() * plan.variants.len() * plan.seeds.len();
    println!(
        "retrieval: protocol {}, setting {}, d_key {}, {} runs ({} already in {}), output in {}",
        args.protocol,
        plan.setting.number(),
        plan.d_key,
        total,
        total - todo.len(),
        results.display(),
        out.display()
    );
    atomic_write(
        &out.join("sweep.json"),
        serde_json::to_string_pretty(&args)?.as_bytes(),
    )?;

    if args.report_only {
        todo.clear();
    }
    let multi = MultiProgress::new();
    let sweep_bar = multi.add(ProgressBar::new(todo.len() as u64));
    sweep_bar.set_style(ProgressStyle::with_template(
        "sweep {bar:30} {pos}/{len} runs [{elapsed}<{eta}]",
    )?);
    for cfg in &todo {
        tch::manual_seed(cfg.seed * 1_000_003 + cfg.s);
        let vs = nn::VarStore::new(device);
        let model = RetrievalModel::new(vs.root(), cfg.model)?;
        let bar = multi.add(ProgressBar::new(cfg.train.max_steps as u64));
        bar.set_style(ProgressStyle::with_template(
            "{prefix:>22} {bar:20} {pos} steps {msg}",
        )?);
        bar.set_prefix(format!("{} S={} seed={}", cfg.variant, cfg.s, cfg.seed));
        let mut last_eval = f64::NAN;
        let result = train(
            &model,
            &vs,
            plan.setting,
            &cfg.train,
            &mut |step, eval, rate| {
                if let Some(e) = eval {
                    last_eval = e;
                }
                if step % 20 == 0 || eval.is_some() {
                    bar.set_position(step as u64);
                    bar.set_message(format!("eval loss {last_eval:.4}, {rate:.0} steps/s"));
                }
            },
        )?;
        bar.finish_and_clear();
        multi.remove(&bar);
        multi.suspend(|| {
            println!(
                "{:<16} S={:<4} seed={} final eval loss {:.5} (best {:.5}) after {} steps, {:.0} s{}",
                cfg.variant,
                cfg.s,
                cfg.seed,
                result.final_eval_loss,
                result.best_eval_loss,
                result.steps,
                result.seconds,
                if result.solved { ", solved" } else { "" }
            )
        });
        append_record(
            &results,
            &Record {
                config: cfg.clone(),
                result,
            },
        )?;
        sweep_bar.inc(1);
    }
    sweep_bar.finish_and_clear();

    let records: Vec<Record> = read_records(&results)?;
    let table = report(
        &out,
        &records,
        args.protocol,
        plan.setting,
        plan.d_key,
        plan.train.solved_loss,
    )?;
    println!("\n{table}");
    println!(
        "wrote {}, {}, {}",
        out.join("table.md").display(),
        out.join("plot.png").display(),
        out.join("plot.svg").display()
    );
    Ok(())
}
