//! The language-modelling experiment (src/lm, experiments/lm): data and vocabulary, the Brown
//! split, model shapes, overfitting a fixture, exact resumption, divergence handling, the
//! evaluation protocols against naive twins, Adam against libtorch's, and TorchScript export
//! loaded by plain Python.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fwp::lm::adam::{clip_grad_norm, learning_rate, Adam};
use fwp::lm::checkpoint::{self, RunConfig};
use fwp::lm::config::{LmModel, Preset, TrainConfig};
use fwp::lm::data::{Corpus, EOS, UNK};
use fwp::lm::eval::{evaluate, sliding_windows, EvalMode};
use fwp::lm::train::{build_model, load_run, train, LoadedRun, Outcome, StepLog, TrainOptions};
use fwp::report::read_records;
use fwp::Variant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// Every test here that draws from libtorch's (process-wide) random generator, or seeds it and
/// expects the same numbers twice, holds its lock, so that no other test draws in between.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    common::rng_lock()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwp-lm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small model on the fixture: 2 layers, d_model 32, 2 heads of 16, context 16.
fn config(variant: &str, steps: usize) -> RunConfig {
    let mut model = LmModel::preset(Preset::Tiny, variant.parse::<Variant>().unwrap());
    (
        model.n_layers,
        model.d_model,
        model.n_heads,
        model.d_head,
        model.d_ff,
        model.context,
    ) = (2, 32, 2, 16, 64, 16);
    let mut train = TrainConfig::preset(Preset::Tiny);
    train.steps = steps;
    train.batch = 8;
    train.warmup = 5;
    train.lr = 3e-3;
    train.log_every = 1;
    train.eval_every = 1000;
    train.checkpoint_every = 4;
    RunConfig {
        model,
        train,
        data: fixture(),
    }
}

fn opts(stop: &AtomicBool, resume: bool, stop_after: Option<usize>) -> TrainOptions<'_> {
    TrainOptions {
        device: Device::Cpu,
        resume,
        stop,
        stop_after,
        progress: None,
    }
}

#[test]
fn corpus_reads_wikitext_layout_and_builds_vocab_from_train() {
    let c = Corpus::load(&fixture(), 1).unwrap();
    assert_eq!(&c.vocab.words[..2], &[UNK.to_string(), EOS.to_string()]);
    // every line ends in <eos>, the empty line of valid.txt included
    let lines = |f: &str| {
        std::fs::read_to_string(fixture().join(f))
            .unwrap()
            .lines()
            .count() as i64
    };
    let eos = c.vocab.id(EOS);
    let count = |t: &Tensor, id: i64| i64::try_from(t.eq(id).sum(Kind::Int64)).unwrap();
    assert_eq!(count(&c.train, eos), lines("train.txt"));
    assert_eq!(count(&c.valid, eos), lines("valid.txt"));
    // "zebra" is not in train: <unk>; words are ordered by count, so "the" comes first
    assert_eq!(c.vocab.id("zebra"), c.vocab.unk());
    assert!(count(&c.valid, c.vocab.unk()) >= 1);
    assert_eq!(c.vocab.words[2], "the");
    assert_eq!(c.vocab.word(c.vocab.id("river")), "river");
    // a threshold drops rare words
    let c2 = Corpus::load(&fixture(), 1000).unwrap();
    assert_eq!(c2.vocab.len(), 2);
}

#[test]
fn wiki_names_missing_and_empty_files() {
    let dir = scratch("names");
    std::fs::create_dir_all(&dir).unwrap();
    for s in ["train", "valid", "test"] {
        std::fs::copy(
            fixture().join(format!("{s}.txt")),
            dir.join(format!("wiki.{s}.tokens")),
        )
        .unwrap();
    }
    let c = Corpus::load(&dir, 1).unwrap();
    assert_eq!(c.vocab, Corpus::load(&fixture(), 1).unwrap().vocab);
    std::fs::remove_file(dir.join("wiki.test.tokens")).unwrap();
    let e = Corpus::load(&dir, 1).unwrap_err().to_string();
    assert!(
        e.contains("no test split") && e.contains("wiki.test.tokens"),
        "{e}"
    );
    std::fs::write(dir.join("test.txt"), "\n\n").unwrap();
    let e = Corpus::load(&dir, 1).unwrap_err().to_string();
    assert!(e.contains("holds no words"), "{e}");
    let e = Corpus::load(&dir.join("nowhere"), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn brown_split_is_by_file_and_stratified() {
    // The real package's genre sizes (a..r without i, o, q).
    let sizes = [
        ('a', 44),
        ('b', 27),
        ('c', 17),
        ('d', 17),
        ('e', 36),
        ('f', 48),
        ('g', 75),
        ('h', 30),
        ('j', 80),
        ('k', 29),
        ('l', 24),
        ('m', 6),
        ('n', 29),
        ('p', 29),
        ('r', 9),
    ];
    let names: Vec<String> = sizes
        .iter()
        .flat_map(|&(g, n)| (1..=n).map(move |i| format!("c{g}{i:02}")))
        .collect();
    assert_eq!(names.len(), 500);
    let split = fwp::lm::brown::assign_splits(names);
    let n = |s: &str| split.values().filter(|&&v| v == s).count();
    assert_eq!((n("train"), n("valid"), n("test")), (450, 25, 25));
    for (g, _) in sizes {
        for s in ["valid", "test"] {
            assert!(
                split
                    .iter()
                    .any(|(f, &v)| f.as_bytes()[1] == g as u8 && v == s),
                "genre {g} has no {s} file"
            );
        }
    }
    assert_eq!(split["cr09"], "test");
    assert_eq!(split["cr08"], "valid");
    let dir = scratch("brown");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca01"), "\tThe/at jury/nn ./.\n").unwrap();
    let e = fwp::lm::brown::prepare(&dir, &dir.join("out"), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected the 500 Brown files") && e.contains("found 1"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_shapes_and_presets() {
    let _rng = serial();
    for v in [
        "softmax",
        "sum:linear",
        "sum:dpfp:2",
        "sum:favor:16",
        "delta:linear",
        "delta:dpfp:2",
    ] {
        let cfg = config(v, 1);
        let (_vs, model) = build_model(&cfg, 50, Device::Cpu).unwrap();
        let x = Tensor::randint(50, [3, 16], (Kind::Int64, Device::Cpu));
        let (logits, states) = model.forward_t(&x, None, 0, false).unwrap();
        assert_eq!(logits.size(), [3, 16, 50], "{v}");
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].is_some(), v != "softmax", "{v}");
    }
    let small = LmModel::preset(Preset::Small, Variant::Softmax);
    assert_eq!(
        (
            small.n_layers,
            small.d_model,
            small.n_heads,
            small.d_head,
            small.d_ff,
            small.context
        ),
        (16, 128, 8, 16, 2048, 256)
    );
    let medium = LmModel::preset(Preset::Medium, Variant::Softmax);
    assert_eq!(
        (medium.d_model, medium.d_head, medium.context),
        (256, 32, 384)
    );
    let small_train = TrainConfig::preset(Preset::Small);
    assert_eq!(
        (small_train.lr, small_train.warmup, small_train.clip),
        (2.5e-4, 2000, 0.25),
        "the authors' schedule"
    );
    let mut bad = config("delta:linear", 1).model;
    bad.normalisation = Some(fwp::Normalisation::Attention);
    assert!(bad
        .model_config(10)
        .unwrap_err()
        .to_string()
        .contains("delta rule"));
}

#[test]
fn tiny_model_overfits_the_fixture() {
    let _rng = serial();
    for v in ["softmax", "delta:linear"] {
        let run = scratch(&format!("overfit-{}", v.replace(':', "-")));
        let mut cfg = config(v, 300);
        cfg.model.dropout = 0.0;
        cfg.train.lr = 1e-2;
        cfg.train.checkpoint_every = 1000;
        let stop = AtomicBool::new(false);
        assert_eq!(
            train(&run, &cfg, &opts(&stop, false, None)).unwrap(),
            Outcome::Finished { step: 300 }
        );
        let log: Vec<StepLog> = read_records(&run.join("train.jsonl")).unwrap();
        let first = log[0].loss;
        let last = log.iter().rev().take(10).map(|r| r.loss).sum::<f64>() / 10.0;
        // From about ln(vocab) to at least 1 nat under the unigram entropy of the training text,
        // which no model that only learned word frequencies can beat.
        let c = Corpus::load(&fixture(), 1).unwrap();
        let counts = c
            .train
            .bincount::<Tensor>(None, c.vocab.len() as i64)
            .to_kind(Kind::Double);
        let p = &counts / counts.sum(Kind::Double);
        let unigram = -f64::try_from((&p * p.clamp_min(1e-300).log()).sum(Kind::Double)).unwrap();
        assert!(first > 3.5, "{v}: initial loss {first:.2}");
        assert!(
            last < unigram - 1.0,
            "{v}: loss {first:.2} -> {last:.2}, unigram entropy {unigram:.2}"
        );
        std::fs::remove_dir_all(&run).unwrap();
    }
}

#[test]
fn resumed_training_reproduces_the_uninterrupted_losses() {
    let _rng = serial();
    let cfg = config("delta:dpfp:2", 12);
    let stop = AtomicBool::new(false);
    let a = scratch("resume-a");
    train(&a, &cfg, &opts(&stop, false, None)).unwrap();
    let b = scratch("resume-b");
    assert_eq!(
        train(&b, &cfg, &opts(&stop, false, Some(5))).unwrap(),
        Outcome::Interrupted { step: 5 }
    );
    // the periodic checkpoint at 4 was replaced by the interruption's at 5; nothing half-written
    assert_eq!(checkpoint::find(&b).unwrap().1.step, 5);
    assert!(!b.join("checkpoint.tmp").exists() && !b.join("checkpoint.old").exists());
    assert!(train(&b, &cfg, &opts(&stop, false, None))
        .unwrap_err()
        .to_string()
        .contains("already holds a checkpoint: resume it"));
    assert_eq!(
        train(&b, &cfg, &opts(&stop, true, None)).unwrap(),
        Outcome::Finished { step: 12 }
    );
    let la: Vec<StepLog> = read_records(&a.join("train.jsonl")).unwrap();
    let lb: Vec<StepLog> = read_records(&b.join("train.jsonl")).unwrap();
    assert_eq!(la.len(), 12);
    let steps: Vec<usize> = lb.iter().map(|r| r.step).collect();
    assert_eq!(steps, (0..12).collect::<Vec<_>>());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x.loss, y.loss, "step {}", x.step);
        assert_eq!(x.grad_norm, y.grad_norm, "step {}", x.step);
    }
    // A crash after the checkpoint at 8 (logs went on to 11): resuming drops the later records
    // and gives the same losses again.
    let c = scratch("resume-c");
    std::fs::create_dir_all(&c).unwrap();
    let mut cfg8 = cfg.clone();
    cfg8.train.checkpoint_every = 4;
    train(&c, &cfg8, &opts(&stop, false, Some(8))).unwrap();
    std::fs::copy(a.join("train.jsonl"), c.join("train.jsonl")).unwrap();
    train(&c, &cfg8, &opts(&stop, true, None)).unwrap();
    let lc: Vec<StepLog> = read_records(&c.join("train.jsonl")).unwrap();
    assert_eq!(
        lc.iter().map(|r| r.loss).collect::<Vec<_>>(),
        la.iter().map(|r| r.loss).collect::<Vec<_>>()
    );
    // A crash between the checkpoint swap's renames leaves only checkpoint.old: it is found, a
    // fresh run refuses to overwrite it, and resuming makes it current again.
    std::fs::rename(c.join("checkpoint"), c.join("checkpoint.old")).unwrap();
    assert_eq!(checkpoint::find(&c).unwrap().1.step, 12);
    let mut longer = cfg8.clone();
    longer.train.steps = 14;
    assert!(train(&c, &longer, &opts(&stop, false, None))
        .unwrap_err()
        .to_string()
        .contains("already holds a checkpoint: resume it"));
    assert_eq!(
        train(&c, &cfg8, &opts(&stop, true, Some(12))).unwrap(),
        Outcome::Finished { step: 12 }
    );
    assert!(c.join("checkpoint/meta.json").is_file());
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn diverging_loss_stops_and_keeps_the_last_checkpoint() {
    let _rng = serial();
    let run = scratch("nan");
    let mut cfg = config("sum:linear", 20);
    cfg.train.lr = 1e30;
    cfg.train.warmup = 1;
    cfg.train.clip = 1e30;
    cfg.train.checkpoint_every = 1;
    let stop = AtomicBool::new(false);
    let e = train(&run, &cfg, &opts(&stop, false, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("training loss is") && e.contains("last good checkpoint (step"),
        "{e}"
    );
    let (_, meta) = checkpoint::find(&run).unwrap();
    assert!(meta.last_loss.unwrap().is_finite());
    std::fs::remove_dir_all(&run).unwrap();
}

/// Perplexity by scoring every target alone with up to `context` tokens before it.
fn naive_sliding(model: &fwp::LanguageModel, tokens: &Tensor, context: i64) -> f64 {
    let n = tokens.size1().unwrap();
    let mut nll = 0.0;
    tch::no_grad(|| {
        for t in 1..n {
            let from = (t - context).max(0);
            let x = tokens.narrow(0, from, t - from).unsqueeze(0);
            let (logits, _) = model.forward_t(&x, None, 0, false).unwrap();
            let lp = logits.select(1, -1).log_softmax(-1, Kind::Double);
            nll -= f64::try_from(lp.get(0).get(i64::try_from(tokens.get(t)).unwrap())).unwrap();
        }
    });
    (nll / (n - 1) as f64).exp()
}

#[test]
fn sliding_window_perplexity_equals_the_naive_one() {
    let _rng = serial();
    let c = Corpus::load(&fixture(), 1).unwrap();
    let tokens = c.valid.narrow(0, 0, 70);
    let aligned = c.valid.narrow(0, 0, 65); // 64 predictions: four whole segments
    for v in ["softmax", "delta:linear"] {
        // Ascending positions: with the authors' descending ones a token's position depends on the
        // length of the window it is in, so the first window (shorter in the naive scoring) differs
        // by design.
        let mut cfg = config(v, 1);
        cfg.model.protocol = fwp::lm::config::Protocol::FwpV1;
        let (_vs, model) = build_model(&cfg, c.vocab.len() as i64, Device::Cpu).unwrap();
        let want = naive_sliding(&model, &tokens, 16);
        for batch in [1, 7] {
            let got =
                evaluate(&model, &tokens, 16, EvalMode::Sliding { stride: 1 }, batch).unwrap();
            assert_eq!(got.count, 69);
            assert!(
                (got.perplexity() - want).abs() < 1e-3 * want,
                "{v}: {} vs {want}",
                got.perplexity()
            );
        }
        // segments score every prediction once; stride = context is the same where the stream is
        // whole segments (else sliding gives the last predictions a full window)
        let seg = evaluate(&model, &aligned, 16, EvalMode::Segments, 4).unwrap();
        let s16 = evaluate(&model, &aligned, 16, EvalMode::Sliding { stride: 16 }, 4).unwrap();
        assert_eq!((seg.count, s16.count), (64, 64));
        assert!((seg.nll - s16.nll).abs() < 1e-3 * seg.nll.abs());
    }
    // windows cover every prediction exactly once, whatever the stride
    for (n, ctx, stride) in [(70, 16, 1), (70, 16, 5), (10, 16, 3), (17, 16, 16)] {
        let mut covered = vec![0; (n - 1) as usize];
        for (start, len, from) in sliding_windows(n, ctx, stride) {
            assert!(len <= ctx);
            for p in start + from..start + len {
                covered[p as usize] += 1;
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{n} {ctx} {stride}");
    }
}

#[test]
fn stateful_evaluation_carries_fast_weights() {
    let _rng = serial();
    let c = Corpus::load(&fixture(), 1).unwrap();
    let tokens = c.valid.narrow(0, 0, 49); // 48 predictions: three segments of 16
    let cfg = config("delta:linear", 1);
    let (_vs, model) = build_model(&cfg, c.vocab.len() as i64, Device::Cpu).unwrap();
    let stateful = evaluate(&model, &tokens, 16, EvalMode::Stateful, 1).unwrap();
    // the twin: the three segments by hand, state passed along
    let mut nll = 0.0;
    let mut states = None;
    tch::no_grad(|| {
        for s in 0..3 {
            let x = tokens.narrow(0, 16 * s, 16).unsqueeze(0);
            let y = tokens.narrow(0, 16 * s + 1, 16);
            let (logits, st) = model.forward_t(&x, states.as_deref(), 0, false).unwrap();
            let lp = logits
                .get(0)
                .log_softmax(-1, Kind::Double)
                .gather(1, &y.unsqueeze(1), false);
            nll -= f64::try_from(lp.sum(Kind::Double)).unwrap();
            states = Some(st);
        }
    });
    assert_eq!(stateful.count, 48);
    assert!(
        (stateful.nll - nll).abs() < 1e-6 * nll,
        "{} vs {nll}",
        stateful.nll
    );
    let seg = evaluate(&model, &tokens, 16, EvalMode::Segments, 4).unwrap();
    assert!(
        (seg.nll - stateful.nll).abs() > 1e-6,
        "carrying the state changed nothing"
    );
    let (_vs, soft) =
        build_model(&config("softmax", 1), c.vocab.len() as i64, Device::Cpu).unwrap();
    let e = evaluate(&soft, &tokens, 16, EvalMode::Stateful, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("softmax"), "{e}");
    let e = evaluate(&model, &tokens, 16, EvalMode::Sliding { stride: 17 }, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("stride 17") && e.contains("context (16)"), "{e}");
    assert!("sliding:0".parse::<EvalMode>().is_err());
    assert_eq!(
        "sliding:4".parse::<EvalMode>().unwrap(),
        EvalMode::Sliding { stride: 4 }
    );
}

#[test]
fn schedule_clipping_and_adam_match_their_references() {
    let _rng = serial();
    assert!((learning_rate(0, 1.0, 10, 100) - 0.1).abs() < 1e-12);
    assert!((learning_rate(9, 1.0, 10, 100) - 1.0).abs() < 1e-12);
    assert!((learning_rate(55, 1.0, 10, 100) - 0.5).abs() < 1e-12);
    assert!(learning_rate(100, 1.0, 10, 100).abs() < 1e-12);
    // our Adam against libtorch's on the same problem, five steps
    let run = |ours: bool| -> Tensor {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().randn("w", &[4, 3], 0.0, 1.0);
        let target = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let mut adam = Adam::new(&vs).unwrap();
        let mut theirs = nn::Adam::default().build(&vs, 0.05).unwrap();
        for _ in 0..5 {
            let loss = (&w - &target).pow_tensor_scalar(4).sum(Kind::Float);
            if ours {
                adam.zero_grad();
                loss.backward();
                adam.step(0.05).unwrap();
            } else {
                theirs.backward_step(&loss);
            }
        }
        w.detach().copy()
    };
    let (a, b) = (run(true), run(false));
    let diff = f64::try_from((&a - &b).abs().max()).unwrap();
    assert!(diff < 1e-5, "ours vs libtorch Adam: {diff:e}");
    // clipping to norm 1
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().ones("w", &[2, 2]);
    (&w * 3.0).sum(Kind::Float).backward(); // grad 3 everywhere: norm 6
    let adam = Adam::new(&vs).unwrap();
    let norm = clip_grad_norm(adam.params(), 1.0).unwrap();
    assert!((norm - 6.0).abs() < 1e-6);
    let after = f64::try_from(w.grad().square().sum(Kind::Double).sqrt()).unwrap();
    assert!((after - 1.0).abs() < 1e-5, "{after}");
}

#[test]
fn exported_module_gives_the_same_logits_in_python() {
    let _rng = serial();
    let c = Corpus::load(&fixture(), 1).unwrap();
    let dir = scratch("export");
    std::fs::create_dir_all(&dir).unwrap();
    for v in ["softmax", "delta:dpfp:2", "sum:favor:16"] {
        let run = dir.join(v.replace(':', "-"));
        let mut cfg = config(v, 3);
        cfg.train.checkpoint_every = 3;
        let stop = AtomicBool::new(false);
        train(&run, &cfg, &opts(&stop, false, None)).unwrap();
        // the Rust model with its training backend (Auto: the fused kernels) ...
        let model = load_run(&run, Device::Cpu, None).unwrap().model;
        let x = c.valid.narrow(0, 0, 16).unsqueeze(0);
        let (want, _) = tch::no_grad(|| model.forward_t(&x, None, 0, false)).unwrap();
        // ... against the export with standard ops, run by plain Python
        let LoadedRun {
            mut vs,
            model: chunked,
            ..
        } = load_run(
            &run,
            Device::Cpu,
            Some(fwp::Backend::Chunked { chunk_size: 64 }),
        )
        .unwrap();
        let file = run.join("model.pt");
        fwp::lm::export::export(&chunked, &mut vs, 1, 16, &file).unwrap();
        let ids: Vec<i64> = Vec::try_from(x.flatten(0, -1)).unwrap();
        let script = "import json, sys, torch\n\
                      m = torch.jit.load(sys.argv[1])\n\
                      x = torch.tensor(json.loads(sys.argv[2])).view(1, -1)\n\
                      print(json.dumps(m(x).flatten().tolist()))";
        let out = std::process::Command::new(common::python())
            .args(["-W", "ignore", "-c", script])
            .arg(&file)
            .arg(serde_json::to_string(&ids).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{v}: python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
        let want: Vec<f64> = Vec::try_from(want.flatten(0, -1).to_kind(Kind::Double)).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{v}: python logits differ by {worst:e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_continues_a_prompt_with_vocabulary_words() {
    let _rng = serial();
    let run = scratch("sample");
    let cfg = config("delta:linear", 2);
    let stop = AtomicBool::new(false);
    train(&run, &cfg, &opts(&stop, false, None)).unwrap();
    let LoadedRun {
        config: cfg,
        vocab,
        model,
        ..
    } = load_run(&run, Device::Cpu, None).unwrap();
    let prompt: Vec<String> = ["the", "cat"].iter().map(|s| s.to_string()).collect();
    let o = fwp::lm::generate::SampleOptions {
        tokens: 20,
        temperature: 1.0,
        top_k: 5,
        seed: 1,
        generation: fwp::lm::generate::Generation::Cached(fwp::lm::generate::Window::Context),
    };
    let a = fwp::lm::generate::sample(&model, &vocab, cfg.model.context, &prompt, o).unwrap();
    let b = fwp::lm::generate::sample(&model, &vocab, cfg.model.context, &prompt, o).unwrap();
    assert_eq!(a.len(), 20);
    assert_eq!(a, b, "same seed, same text");
    assert!(a.iter().all(|w| vocab.words.contains(w)));
    let bad = fwp::lm::generate::SampleOptions {
        temperature: -1.0,
        ..o
    };
    assert!(fwp::lm::generate::sample(&model, &vocab, 16, &prompt, bad).is_err());
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn report_tables_a_folder_of_runs() {
    let _rng = serial();
    let dir = scratch("report");
    let stop = AtomicBool::new(false);
    for v in ["softmax", "delta:linear"] {
        let run = dir.join(v.replace(':', "-"));
        let mut cfg = config(v, 2);
        cfg.train.eval_every = 1;
        train(&run, &cfg, &opts(&stop, false, None)).unwrap();
        let LoadedRun {
            config: cfg,
            vocab,
            model,
            ..
        } = load_run(&run, Device::Cpu, None).unwrap();
        let corpus = Corpus::load_with_vocab(&fixture(), vocab).unwrap();
        let score = evaluate(
            &model,
            &corpus.test,
            cfg.model.context,
            EvalMode::Segments,
            4,
        )
        .unwrap();
        let record = serde_json::json!({"split": "test", "mode": "segments", "perplexity": score.perplexity()});
        fwp::report::append_record(&run.join("results.jsonl"), &record).unwrap();
    }
    let runs = fwp::lm::report::runs_in(&dir).unwrap();
    assert_eq!(runs.len(), 2);
    let stem = dir.join("table-valid");
    let table = fwp::lm::report::report(&runs, Some(&stem)).unwrap();
    assert!(
        table.contains("| softmax |") && table.contains("| delta:linear |"),
        "{table}"
    );
    assert!(table.contains("test ppl (segments)"));
    assert!(stem.with_extension("png").is_file());
    assert!(fwp::lm::report::runs_in(&dir.join("softmax")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_with_status_130() {
    let run = scratch("sigint");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lm"))
        .args([
            "train",
            "--variant",
            "delta:linear",
            "--batch",
            "4",
            "--context",
            "32",
            "--steps",
            "100000",
        ])
        .arg("--data")
        .arg(fixture())
        .arg("--run")
        .arg(&run)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait for the first logged update, then interrupt
    let log = run.join("train.jsonl");
    let start = std::time::Instant::now();
    while !log.is_file() {
        assert!(
            start.elapsed().as_secs() < 120,
            "no training log after 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 130 as for any command ended by SIGINT, so that a script stops rather than evaluate a
    // half-trained run; the checkpoint is saved all the same
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted after"), "{stdout}");
    let (_, meta) = checkpoint::find(&run).unwrap();
    assert!(
        meta.step >= 10 && meta.step < 100000,
        "checkpoint at step {}",
        meta.step
    );
    std::fs::remove_dir_all(&run).unwrap();
}

/// A second trainer on a run in use, another thread count, a changed corpus, a changed vocabulary
/// file, or a configuration that does not fit the saved weights: each is a clear error, and the
/// run stays resumable.
#[test]
fn resuming_refuses_what_would_not_reproduce_the_run() {
    let _rng = serial();
    let stop = AtomicBool::new(false);
    let dir = scratch("refuse");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["train.txt", "valid.txt", "test.txt"] {
        std::fs::copy(fixture().join(f), data.join(f)).unwrap();
    }
    let run = dir.join("run");
    let mut cfg = config("delta:linear", 8);
    cfg.data = data.clone();
    assert_eq!(
        train(&run, &cfg, &opts(&stop, false, Some(4))).unwrap(),
        Outcome::Interrupted { step: 4 }
    );
    let (_, meta) = checkpoint::find(&run).unwrap();
    assert_eq!(meta.threads, Some(tch::get_num_threads()));
    assert!(meta.vocab_sha256.is_some() && meta.corpus_sha256.as_ref().unwrap().len() == 3);
    let resume_err = || {
        train(&run, &cfg, &opts(&stop, true, None))
            .unwrap_err()
            .to_string()
    };

    // one writer per run directory: a lock held elsewhere (as by a trainer still running)
    {
        let _held = checkpoint::RunLock::acquire(&run).unwrap();
        let e = resume_err();
        assert!(
            e.contains("in use") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
    }

    // another thread count
    let threads = tch::get_num_threads();
    tch::set_num_threads(threads + 1);
    let e = resume_err();
    tch::set_num_threads(threads);
    assert!(
        e.contains(&format!("trained with {threads} CPU threads")),
        "{e}"
    );

    // a corpus that changed since the checkpoint
    let valid = std::fs::read_to_string(data.join("valid.txt")).unwrap();
    std::fs::write(data.join("valid.txt"), valid.clone() + "one more line\n").unwrap();
    let e = resume_err();
    assert!(e.contains("valid.txt") && e.contains("changed"), "{e}");
    std::fs::write(data.join("valid.txt"), &valid).unwrap();

    // a vocabulary file that is not the one saved
    let vocab = run.join("checkpoint/vocab.txt");
    let words = std::fs::read_to_string(&vocab).unwrap();
    let swapped: Vec<&str> = {
        let mut w: Vec<&str> = words.lines().collect();
        w.swap(2, 3);
        w
    };
    std::fs::write(&vocab, swapped.join("\n") + "\n").unwrap();
    let e = resume_err();
    assert!(
        e.contains("vocab.txt") && e.contains("does not match"),
        "{e}"
    );
    assert!(load_run(&run, Device::Cpu, None).is_err());
    std::fs::write(&vocab, &words).unwrap();

    // a configuration that does not use every saved tensor (2 layers saved, 1 configured)
    let meta_path = run.join("checkpoint/meta.json");
    let text = std::fs::read_to_string(&meta_path).unwrap();
    let mut meta_json: serde_json::Value = serde_json::from_str(&text).unwrap();
    meta_json["config"]["model"]["n_layers"] = 1.into();
    std::fs::write(&meta_path, meta_json.to_string()).unwrap();
    let e = load_run(&run, Device::Cpu, None).err().unwrap().to_string();
    assert!(
        e.contains("does not have") && e.contains("blocks.1."),
        "{e}"
    );
    // and one with other shapes (d_ff 64 saved, 48 configured)
    meta_json["config"]["model"]["n_layers"] = 2.into();
    meta_json["config"]["model"]["d_ff"] = 48.into();
    std::fs::write(&meta_path, meta_json.to_string()).unwrap();
    let e = load_run(&run, Device::Cpu, None).err().unwrap().to_string();
    assert!(
        e.contains("ff_in.weight is [64, 32] Float in the file, [48, 32] Float"),
        "{e}"
    );
    std::fs::write(&meta_path, &text).unwrap();

    // a fresh run in this directory is refused even when the checkpoint does not read
    std::fs::write(&meta_path, "{ not json").unwrap();
    let e = train(&run, &cfg, &opts(&stop, false, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a checkpoint"), "{e}");
    assert!(run.join("train.jsonl").is_file(), "the logs are kept");
    std::fs::write(&meta_path, &text).unwrap();

    // with all of it back as it was, the run resumes and finishes
    assert_eq!(
        train(&run, &cfg, &opts(&stop, true, None)).unwrap(),
        Outcome::Finished { step: 8 }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resuming from an earlier checkpoint drops the log lines written after it and keeps the others
/// byte for byte (no parse-and-print of their numbers).
#[test]
fn resuming_keeps_the_bytes_of_the_kept_log_lines() {
    let _rng = serial();
    let stop = AtomicBool::new(false);
    let run = scratch("log-bytes");
    let cfg = config("sum:linear", 8);
    train(&run, &cfg, &opts(&stop, false, Some(4))).unwrap();
    let log = run.join("train.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    // what a later crash could leave: lines past the checkpoint, with digits a float parser
    // would not print back the same
    let odd = lines[3].replace(
        "\"lr\":",
        "\"lr\":0.1000000000000000055511151231257827,\"lr_as_written\":",
    );
    std::fs::write(
        &log,
        [lines[0], lines[1], lines[2], &odd].join("\n") + "\n{\"step\":4,\"loss\":1.0}\n",
    )
    .unwrap();
    train(&run, &cfg, &opts(&stop, true, Some(6))).unwrap();
    let after = std::fs::read_to_string(&log).unwrap();
    let after: Vec<&str> = after.lines().collect();
    assert_eq!(after[..3], lines[..3]);
    assert_eq!(after[3], odd, "a kept line changed");
    assert_eq!(after.len(), 6);
    std::fs::remove_dir_all(&run).unwrap();
}

/// A diverged model's NaN perplexity is recorded and reported, not a poisoned results file.
#[test]
fn a_nan_perplexity_is_recorded_and_reported() {
    let _rng = serial();
    let dir = scratch("nan-ppl");
    let run = dir.join("run");
    let stop = AtomicBool::new(false);
    train(&run, &config("delta:linear", 2), &opts(&stop, false, None)).unwrap();
    let record = serde_json::json!({"split": "test", "mode": "segments", "perplexity": "NaN"});
    fwp::report::append_record(&run.join("results.jsonl"), &record).unwrap();
    // a line an older version wrote for a NaN
    let results = run.join("results.jsonl");
    let text = std::fs::read_to_string(&results).unwrap()
        + "{\"split\":\"valid\",\"mode\":\"segments\",\"perplexity\":null}\n";
    std::fs::write(&results, text).unwrap();
    let runs = fwp::lm::report::runs_in(&dir).unwrap();
    let table = fwp::lm::report::report(&runs, None).unwrap();
    assert!(table.contains("NaN"), "{table}");
    let e = fwp::lm::report::runs_in(Path::new("/nonexistent/runs"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/runs"), "{e}");
    // a temperature so small that the scaled logits overflow: one line, no C++ frames
    let loaded = load_run(&run, Device::Cpu, None).unwrap();
    let o = fwp::lm::generate::SampleOptions {
        tokens: 3,
        temperature: 1e-300,
        top_k: 0,
        seed: 1,
        generation: fwp::lm::generate::Generation::Rerun,
    };
    let e = fwp::lm::generate::sample(&loaded.model, &loaded.vocab, 16, &[], o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("temperature") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--protocol authors` (the default) gives the authors' LM conventions, fwp-v1 the first ones;
/// configurations saved before the choice existed read as fwp-v1.
#[test]
fn protocols_give_their_conventions_and_old_runs_read_as_fwp_v1() {
    use fwp::lm::config::Protocol;
    use fwp::{AttentionKind, FavorRedraw, Normalisation, ParamInit, PositionOrder};
    let fast = |m: &LmModel| match m.attention().unwrap() {
        AttentionKind::FastWeight(fw) => fw,
        AttentionKind::Softmax => unreachable!(),
    };
    for v in ["sum:favor:16", "delta:linear"] {
        let authors = LmModel::preset(Preset::Tiny, v.parse::<Variant>().unwrap());
        assert_eq!(authors.protocol, Protocol::Authors);
        let fw = fast(&authors);
        assert_eq!(fw.normalisation, Normalisation::SumAndAttention, "{v}");
        assert_eq!(
            (fw.eps, fw.scale_output, fw.favor_eps),
            (1e-5, true, 1e-4),
            "{v}"
        );
        assert_eq!(fw.favor_redraw, FavorRedraw::EveryTrainingStep);
        let c = authors.model_config(100).unwrap().conventions;
        assert_eq!(c.init, ParamInit::Normal { std: 0.02 });
        assert!(c.output_bias);
        assert_eq!(c.positions, PositionOrder::Descending);

        let first = LmModel {
            protocol: Protocol::FwpV1,
            ..authors
        };
        let fw = fast(&first);
        let want = if v.starts_with("sum") {
            Normalisation::Attention
        } else {
            Normalisation::Sum
        };
        assert_eq!(fw.normalisation, want, "{v}");
        assert_eq!((fw.eps, fw.scale_output, fw.favor_eps), (1e-6, false, 0.0));
        assert_eq!(fw.favor_redraw, FavorRedraw::Never);
        assert_eq!(
            first.model_config(100).unwrap().conventions,
            fwp::Conventions::default()
        );

        // a configuration saved before the protocol field: fwp-v1
        let mut json = serde_json::to_value(first).unwrap();
        json.as_object_mut().unwrap().remove("protocol");
        let read: LmModel = serde_json::from_value(json).unwrap();
        assert_eq!(read, first);
    }
}
