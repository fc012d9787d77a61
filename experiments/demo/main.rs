//! Demo: trains a tiny fast-weight Transformer on associative recall and prints its loss.
//!
//! Each sequence lists `pairs` (key, value) tokens with distinct keys, then asks `queries` of the
//! stored keys again; the model must emit the value that followed each key. The loss is the
//! cross-entropy of those values only (chance: ln(values)). This exercises the whole stack (feature
//! map, update rule, normalisation, chunked backend, blocks, training) in well under a minute on
//! two CPU cores; the paper's own synthetic experiments come with the `retrieval` binary.
//!
//! Run: `cargo run --release --bin demo`, or with `-- --help` for the options, e.g.
//! `--variant softmax` for the softmax baseline or `--variant sum:dpfp:2`.
//! Writes `runs/demo-<variant>/config.json` and `metrics.json`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fwp::{
    AttentionConfig, AttentionKind, BlockConfig, LanguageModel, LayerNormPlacement, ModelConfig,
    Variant,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

#[derive(Parser, Debug, Serialize)]
#[command(about = "Train a tiny fast-weight Transformer on associative recall")]
struct Args {
    /// softmax, or RULE:MAP with RULE sum or delta and MAP linear, identity, dpfp:NU or favor:M
    #[arg(long, default_value = "delta:linear")]
    variant: Variant,
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    batch: i64,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// (key, value) pairs written per sequence
    #[arg(long, default_value_t = 4)]
    pairs: i64,
    /// stored keys asked again at the end
    #[arg(long, default_value_t = 4)]
    queries: i64,
    /// distinct key tokens (and as many value tokens)
    #[arg(long, default_value_t = 8)]
    symbols: i64,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    #[arg(long, default_value = "runs")]
    out_dir: PathBuf,
}

/// A batch of recall sequences `[B, 2 (pairs + queries)]` and the value targets at query keys.
struct Batch {
    tokens: Tensor,
    /// positions of the query keys, `[queries]`
    query_pos: Tensor,
    /// value expected after each query key, `[B, queries]`
    targets: Tensor,
}

fn make_batch(a: &Args, b: i64) -> Batch {
    let opts = (Kind::Int64, Device::Cpu);
    // distinct keys: the first `pairs` of a random permutation per row
    let keys = Tensor::rand([b, a.symbols], (Kind::Float, Device::Cpu))
        .argsort(-1, false)
        .narrow(1, 0, a.pairs);
    let values = Tensor::randint(a.symbols, [b, a.pairs], opts) + a.symbols;
    let which = Tensor::rand([b, a.pairs], (Kind::Float, Device::Cpu))
        .argsort(-1, false)
        .narrow(1, 0, a.queries);
    let (q_keys, q_values) = (
        keys.gather(1, &which, false),
        values.gather(1, &which, false),
    );
    let all_keys = Tensor::cat(&[keys, q_keys], 1);
    let all_values = Tensor::cat(&[values, q_values.shallow_clone()], 1);
    let tokens = Tensor::stack(&[all_keys, all_values], 2).view([b, -1]); // k v k v ...
    let query_pos = Tensor::arange_start(a.pairs, a.pairs + a.queries, opts) * 2;
    Batch {
        tokens,
        query_pos,
        targets: q_values,
    }
}

/// Cross-entropy and accuracy of the values predicted at the query keys.
fn recall_loss(
    model: &LanguageModel,
    batch: &Batch,
    vocab: i64,
    train: bool,
) -> Result<(Tensor, f64)> {
    let (logits, _) = model.forward_t(&batch.tokens, None, 0, train)?; // [B, T, vocab]
    let at_queries = logits.index_select(1, &batch.query_pos).view([-1, vocab]);
    let targets = batch.targets.view([-1]);
    let accuracy = f64::try_from(
        at_queries
            .argmax(-1, false)
            .eq_tensor(&targets)
            .to_kind(Kind::Float)
            .mean(Kind::Float),
    )?;
    Ok((at_queries.cross_entropy_for_logits(&targets), accuracy))
}

/// Sizes that make a batch: distinct keys need `pairs <= symbols`, queries ask stored keys.
fn check(a: &Args) -> Result<()> {
    for (name, v) in [
        ("--batch", a.batch),
        ("--pairs", a.pairs),
        ("--queries", a.queries),
        ("--symbols", a.symbols),
    ] {
        if v < 1 {
            bail!("{name} must be >= 1, got {v}");
        }
    }
    if a.steps == 0 {
        bail!("--steps must be >= 1");
    }
    if a.pairs > a.symbols {
        bail!(
            "--pairs {} needs as many distinct keys, but there are only --symbols {}",
            a.pairs,
            a.symbols
        );
    }
    if a.queries > a.pairs {
        bail!(
            "--queries {} asks more stored keys than the --pairs {} written",
            a.queries,
            a.pairs
        );
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be finite and > 0, got {}", a.lr);
    }
    Ok(())
}

fn main() -> Result<()> {
    // Large tensors reuse the heap's pages instead of faulting fresh ones in every step
    // (fwp::host_memory; FWP_KEEP_FREED_MEMORY=0 turns it off).
    fwp::host_memory::keep_freed_memory_unless_disabled()?;
    let args = Args::parse();
    check(&args)?;
    tch::manual_seed(args.seed);
    let kind = args.variant.attention();
    let variant = args.variant.to_string().replace(':', "-");
    let vocab = 2 * args.symbols;
    let cfg = ModelConfig {
        vocab,
        n_layers: 2,
        block: BlockConfig {
            attention: AttentionConfig {
                d_model: 64,
                n_heads: 4,
                d_head: 16,
                kind,
                attn_dropout: 0.0,
            },
            d_ff: 128,
            dropout: 0.0,
            layer_norm: LayerNormPlacement::Pre,
        },
        conventions: Default::default(),
    };
    let run_dir = args.out_dir.join(format!("demo-{variant}"));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let config = serde_json::json!({ "args": &args, "model": &cfg });
    std::fs::write(
        run_dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;

    let vs = nn::VarStore::new(Device::Cpu);
    let model = LanguageModel::new(vs.root(), cfg)?;
    let mut opt = nn::Adam::default().build(&vs, args.lr)?;
    let held_out = make_batch(&args, 512);
    let chance = (args.symbols as f64).ln();
    if let AttentionKind::FastWeight(c) = kind {
        let d_head = cfg.block.attention.d_head;
        let picked = c.backend.resolve(
            Device::Cpu,
            Kind::Float,
            c.rule,
            2 * (args.pairs + args.queries), // tokens per sequence: k v k v ...
            c.feature_map.width(d_head),
            d_head,
        );
        println!("fast-weight backend: {} -> {picked}", c.backend);
    }
    println!(
        "demo: {variant}, {} pairs + {} queries over {} symbols; chance loss {chance:.3}",
        args.pairs, args.queries, args.symbols
    );
    let evaluate = || -> Result<(f64, f64)> {
        let (loss, acc) = tch::no_grad(|| recall_loss(&model, &held_out, vocab, false))?;
        Ok((f64::try_from(loss)?, acc))
    };
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
    )?);
    let mut history = Vec::new();
    for step in 1..=args.steps {
        let (loss, _) = recall_loss(&model, &make_batch(&args, args.batch), vocab, true)?;
        opt.backward_step(&loss);
        bar.set_message(format!("train loss {:.3}", f64::try_from(&loss)?));
        bar.inc(1);
        if step % 100 == 0 || step == args.steps {
            let (eval_loss, eval_acc) = evaluate()?;
            bar.suspend(|| {
                println!(
                    "step {step:5}  eval loss {eval_loss:.4}  recall accuracy {:.1}%",
                    100.0 * eval_acc
                )
            });
            history.push(
                serde_json::json!({ "step": step, "eval_loss": eval_loss, "accuracy": eval_acc }),
            );
        }
    }
    bar.finish_and_clear();
    let (final_loss, final_acc) = evaluate()?;
    println!(
        "final eval loss {final_loss:.4} (chance {chance:.3}), recall accuracy {:.1}%",
        100.0 * final_acc
    );
    let metrics = serde_json::json!({ "final_eval_loss": final_loss, "final_accuracy": final_acc, "history": history });
    std::fs::write(
        run_dir.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?,
    )?;
    println!("wrote {}", run_dir.display());
    Ok(())
}
