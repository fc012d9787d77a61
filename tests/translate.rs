//! The translation experiment end to end on the fixture corpus (tests/fixtures/mt): batches by
//! length, a tiny model that learns its training pairs to BLEU > 90, and a resumed run that
//! reproduces the uninterrupted one, and the TorchScript export run by plain Python.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fwp::mt::batches::{Batches, Example};
use fwp::mt::bpe::{BOS, EOS, PAD};
use fwp::mt::config::{MtModel, Preset, TrainConfig};
use fwp::mt::corpus::{read_split, Split};
use fwp::mt::decode::DecodeOptions;
use fwp::mt::eval::{reference_nll, score, translate_all};
use fwp::mt::train::{load_run, train, Outcome, RunConfig, StepLog, TrainOptions};
use fwp::report::read_records;
use fwp::Variant;
use tch::{Device, Kind, Tensor};

/// Every test here that trains holds this lock: training seeds libtorch's (process-wide) random
/// generator and draws from it, so two at once would change each other's numbers.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    common::rng_lock()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mt")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fwp-translate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(variant: &str, steps: usize) -> RunConfig {
    let mut model = MtModel::preset(Preset::Tiny, variant.parse::<Variant>().unwrap());
    (model.encoder_layers, model.decoder_layers) = (2, 2);
    (model.d_model, model.n_heads, model.d_head, model.d_ff) = (64, 2, 32, 128);
    model.dropout = 0.0;
    let mut train = TrainConfig::preset(Preset::Tiny);
    train.steps = steps;
    train.max_tokens = 256;
    train.lr = 3e-3;
    train.warmup = 30;
    train.label_smoothing = 0.0;
    train.bpe_vocab = 400;
    (train.log_every, train.eval_every, train.checkpoint_every) = (1, 1000, 1000);
    RunConfig {
        model,
        train,
        data: fixture(),
        src_lang: "en".into(),
        tgt_lang: "de".into(),
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
fn batches_cover_each_epoch_once_within_the_token_limit() {
    let examples: Vec<Example> = (0..50)
        .map(|i| Example {
            src: vec![7; 1 + i % 13],
            tgt: vec![8; 1 + (i * 7) % 11],
        })
        .collect();
    let batches = Batches::new(examples.clone(), 40, 3).unwrap();
    let n = batches.len();
    for epoch in 0..2 {
        let mut rows = 0;
        let mut orders = Vec::new();
        for s in 0..n {
            let b = batches.get(epoch * n + s, Device::Cpu).unwrap();
            let (r, w) = (b.src.size()[0], b.src.size()[1].max(b.tgt_in.size()[1]));
            assert!(r * w <= 40, "batch of {r} x {w} tokens");
            // decoder input = <s> + target, decoder output = target + </s>
            let first: Vec<i64> = Vec::try_from(b.tgt_in.select(1, 0)).unwrap();
            assert!(first.iter().all(|&t| t == BOS));
            let ends = b.tgt_out.eq(EOS).sum(Kind::Int64);
            assert_eq!(i64::try_from(ends).unwrap(), r);
            rows += r;
            orders.push(b.src.size());
        }
        assert_eq!(rows, 50, "epoch {epoch}: every pair once");
    }
    // the order of an epoch is a function of (seed, epoch): again the same, another epoch another
    let again = Batches::new(examples.clone(), 40, 3).unwrap();
    let sizes = |b: &Batches, e: usize| -> Vec<Vec<i64>> {
        (0..n)
            .map(|s| b.get(e * n + s, Device::Cpu).unwrap().src.size())
            .collect()
    };
    assert_eq!(sizes(&batches, 0), sizes(&again, 0));
    assert_ne!(sizes(&batches, 0), sizes(&batches, 1));
    let long = vec![Example {
        src: vec![1; 50],
        tgt: vec![1],
    }];
    assert!(Batches::new(long, 40, 0).is_err());
    assert!(Batches::new(Vec::new(), 40, 0).is_err());
    let _ = PAD;
}

#[test]
fn a_tiny_model_learns_its_training_pairs_to_bleu_over_90() {
    let _rng = serial();
    for variant in ["softmax", "delta:dpfp:1"] {
        let run = scratch(&format!("overfit-{}", variant.replace(':', "-")));
        let cfg = config(variant, 400);
        let stop = AtomicBool::new(false);
        assert_eq!(
            train(&run, &cfg, &opts(&stop, false, None)).unwrap(),
            Outcome::Finished { step: 400 }
        );
        let loaded = load_run(&run, Device::Cpu, None).unwrap();
        let pairs = read_split(&fixture(), Split::Train, ("en", "de")).unwrap();
        let sources: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
        let refs: Vec<String> = pairs.iter().map(|p| p.tgt.clone()).collect();
        // the references' teacher-forced loss: the same in batches of 1 and 4 (padding left out),
        // equal to the step-by-step decoder's log-probabilities, and small for learnt pairs
        let (m, bpe) = (&loaded.model, &loaded.bpe);
        let nll = reference_nll(m, bpe, &sources, &refs, 4).unwrap();
        let single = reference_nll(m, bpe, &sources, &refs, 1).unwrap();
        assert!(
            (nll - single).abs() < 1e-5 * single.max(1e-3),
            "{nll} vs {single}"
        );
        let (mut stepped, mut tokens) = (0.0, 0usize);
        for (src, tgt) in sources.iter().zip(&refs) {
            let src = Tensor::from_slice(&bpe.encode(src).unwrap()).unsqueeze(0);
            let tgt = bpe.encode(tgt).unwrap();
            let mut state = m.start(&m.encode(&src, false).unwrap()).unwrap();
            let inputs = std::iter::once(BOS).chain(tgt.iter().copied());
            for (input, want) in inputs.zip(tgt.iter().copied().chain([EOS])) {
                let logits = m.step(&Tensor::from_slice(&[input]).view([1, 1]), &mut state);
                let lp = logits.unwrap().log_softmax(-1, Kind::Double);
                stepped -= lp.double_value(&[0, 0, want]);
                tokens += 1;
            }
        }
        let stepped = stepped / tokens as f64;
        assert!(
            (nll - stepped).abs() < 1e-5 * stepped.max(1e-3),
            "{nll} vs {stepped}"
        );
        assert!(nll < 0.5, "{variant}: {nll} nats per token on learnt pairs");
        let e = reference_nll(m, bpe, &sources[1..], &refs, 4).unwrap_err();
        assert!(e.to_string().contains("must pair up"), "{e}");
        for beam in [1, 3] {
            let o = DecodeOptions {
                beam,
                ..DecodeOptions::default()
            };
            let hyps = translate_all(&loaded.model, &loaded.bpe, &sources, &o, 5, None).unwrap();
            let s = score(&hyps, &refs).unwrap();
            println!("{variant}, beam {beam}: {}", s.bleu);
            assert!(
                s.bleu.score > 90.0,
                "{variant}, beam {beam}: {}\n{hyps:#?}",
                s.bleu
            );
        }
        std::fs::remove_dir_all(&run).unwrap();
    }
}

#[test]
fn a_resumed_run_reproduces_the_uninterrupted_one() {
    let _rng = serial();
    let (a, b) = (scratch("resume-a"), scratch("resume-b"));
    let cfg = config("sum:dpfp:1", 12);
    let stop = AtomicBool::new(false);
    train(&a, &cfg, &opts(&stop, false, None)).unwrap();
    assert_eq!(
        train(&b, &cfg, &opts(&stop, false, Some(5))).unwrap(),
        Outcome::Interrupted { step: 5 }
    );
    let err = train(&b, &cfg, &opts(&stop, false, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds a checkpoint"), "{err}");
    train(&b, &cfg, &opts(&stop, true, None)).unwrap();
    let losses = |run: &Path| -> Vec<f64> {
        read_records::<StepLog>(&run.join("train.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.loss)
            .collect()
    };
    assert_eq!(losses(&a).len(), 12);
    assert_eq!(losses(&a), losses(&b), "losses of the resumed run");
    let (ma, mb) = (
        load_run(&a, Device::Cpu, None).unwrap(),
        load_run(&b, Device::Cpu, None).unwrap(),
    );
    for (name, t) in ma.vs.variables() {
        assert!(
            t.equal(&mb.vs.variables()[&name]),
            "{name} differs after the resume"
        );
    }
    // a changed configuration is refused on resume
    let mut other = cfg.clone();
    other.train.steps = 20;
    assert!(train(&b, &other, &opts(&stop, true, None)).is_err());
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

/// Greedy search in plain Python with the exported modules (docs/translate.md shows the same loop).
const PYTHON_GREEDY: &str = r#"
import json, sys, torch
d, ids = sys.argv[1], json.loads(sys.argv[2])
info = json.load(open(f"{d}/export.json"))
encoder, step = torch.jit.load(f"{d}/encoder.pt"), torch.jit.load(f"{d}/step.pt")
alloc = lambda bufs: [torch.zeros(b["shape"], dtype=getattr(torch, b["dtype"])) for b in bufs]
memories, caches = alloc(info["memories"]), alloc(info["caches"])
src = torch.full((1, info["source_len"]), info["pad"])
src[0, : len(ids)] = torch.tensor(ids)
encoder(src, *memories)
limit = int(1.5 * len(ids)) + 10
token, out = torch.tensor([[info["bos"]]]), []
for t in range(limit):
    logits = step(token, torch.tensor([t]), *memories, *caches)
    best = info["eos"] if t + 1 >= limit else int(logits[0].argmax())
    if best == info["eos"]:
        break
    out.append(best)
    token = torch.tensor([[best]])
print(json.dumps(out))
"#;

#[test]
fn the_exported_encoder_and_step_translate_in_python_as_the_rust_model_does() {
    let _rng = serial();
    // (variant, pre-LN with a source embedding of its own, fast-weight cross-attention)
    for (variant, pre_ln, fast_cross) in [
        ("softmax", false, false),
        ("delta:dpfp:1", false, false),
        ("sum:favor:16", true, false),
        ("delta:linear", false, true),
    ] {
        let run = scratch(&format!("export-{}", variant.replace(':', "-")));
        let stop = AtomicBool::new(false);
        let mut cfg = config(variant, 40);
        if pre_ln {
            cfg.model.layer_norm = fwp::LayerNormPlacement::Pre;
            cfg.model.share_embeddings = false;
        }
        cfg.model.fast_cross = fast_cross;
        train(&run, &cfg, &opts(&stop, false, None)).unwrap();
        // export with standard ops; the Rust reference is the model with its training backend
        let mut loaded = load_run(
            &run,
            Device::Cpu,
            Some(fwp::Backend::Chunked { chunk_size: 64 }),
        )
        .unwrap();
        let rust = load_run(&run, Device::Cpu, None).unwrap();
        let pairs = read_split(&fixture(), Split::Valid, ("en", "de")).unwrap();
        let ids = rust.bpe.encode(&pairs[0].src).unwrap();
        let src = tch::Tensor::from_slice(&ids).unsqueeze(0);
        let greedy = DecodeOptions {
            beam: 1,
            ..DecodeOptions::default()
        };
        let want = fwp::mt::decode::translate(&rust.model, &src, &greedy).unwrap()[0]
            .tokens
            .clone();
        assert!(
            want.len() > 1,
            "{variant}: a degenerate translation {want:?}"
        );
        // traced for a longer source: the sentence is padded in Python
        let dir = run.join("export");
        let n = ids.len() as i64;
        let info = fwp::mt::export::export(
            &loaded.model,
            &mut loaded.vs,
            variant,
            [1, n + 3, n * 3 / 2 + 10],
            &dir,
        )
        .unwrap();
        // softmax cross-attention: keys, values and the source mask; fast weights: W and z
        assert_eq!(
            info.memories.len(),
            if fast_cross { 2 } else { 3 } * 2,
            "{variant}: memory tensors of 2 layers"
        );
        let out = std::process::Command::new(common::python())
            .args(["-W", "ignore", "-c", PYTHON_GREEDY])
            .arg(&dir)
            .arg(serde_json::to_string(&ids).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{variant}: python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            got, want,
            "{variant}: Python's greedy tokens against Rust's"
        );
        std::fs::remove_dir_all(&run).unwrap();
    }
}

#[test]
fn the_report_tabulates_the_last_evaluation_of_each_run() {
    let _rng = serial();
    let dir = scratch("report");
    let stop = AtomicBool::new(false);
    for v in ["softmax", "sum:dpfp:1"] {
        let mut cfg = config(v, 4);
        cfg.train.eval_every = 2;
        cfg.train.eval_sentences = 3;
        train(
            &dir.join(v.replace(':', "-")),
            &cfg,
            &opts(&stop, false, None),
        )
        .unwrap();
    }
    let record = |step: usize, bleu: f64| fwp::mt::eval::EvalRecord {
        variant: "softmax".into(),
        preset: Preset::Tiny,
        split: Split::Test,
        sentences: 5,
        limit: None,
        decode: DecodeOptions::default(),
        bleu,
        chrf: 50.0,
        bleu_line: String::new(),
        signature: String::new(),
        step,
        parameters: 1,
        seconds: 1.0,
        sentences_per_s: 5.0,
        threads: 1,
        reference_nll: None,
    };
    let results = dir.join("softmax/results.jsonl");
    // an evaluation of an older checkpoint, then two of the last: the later one counts
    for (step, bleu) in [(2, 11.0), (4, 12.5), (4, 13.25)] {
        fwp::report::append_record(&results, &record(step, bleu)).unwrap();
    }
    // another search is a column of its own, whenever it was run
    let mut shorter = record(4, 7.75);
    shorter.decode.length_penalty = 0.6;
    shorter.reference_nll = Some(2.5);
    fwp::report::append_record(&results, &shorter).unwrap();
    // so is an evaluation of the first sentences only (`eval --limit`): it does not replace the
    // whole split's
    // (of valid, which no whole-split evaluation has: its loss must not make a column)
    let first = fwp::mt::eval::EvalRecord {
        split: Split::Valid,
        limit: Some(2),
        sentences: 2,
        reference_nll: Some(9.0),
        ..record(4, 99.5)
    };
    fwp::report::append_record(&results, &first).unwrap();
    let runs = fwp::training::checkpoint::runs_in(&dir).unwrap();
    assert_eq!(runs.len(), 2);
    let stem = dir.join("table-valid");
    let table = fwp::mt::report::report(&runs, Some(&stem)).unwrap();
    println!("{table}");
    let header = table.lines().next().unwrap();
    assert!(header.contains("test BLEU (beam 4)"), "{header}");
    let row = |v: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {v} |")))
            .unwrap()
    };
    assert!(row("softmax").contains("| 13.25 |"), "{table}");
    assert!(
        header.contains("test BLEU (beam 4, length penalty 0.6)"),
        "{header}"
    );
    assert!(row("softmax").contains("| 7.75 |"), "{table}");
    assert!(
        header.contains("valid BLEU (beam 4, first 2 sentences)"),
        "{header}"
    );
    assert!(row("softmax").contains("| 99.50 |"), "{table}");
    // the references' loss, a column per split, from whichever evaluation recorded it
    assert!(header.contains("| test reference nats/token |"), "{header}");
    assert!(row("softmax").contains("| 2.500 |"), "{table}");
    assert!(
        !header.contains("valid reference") && !table.contains("| 9.000 |"),
        "a limited evaluation's loss: {table}"
    );
    assert!(
        !table.contains("12.50") && !table.contains("11.00"),
        "{table}"
    );
    assert!(row("sum:dpfp:1").contains("| – |"), "{table}");
    // the thread count the run trained with, which its speed and minutes depend on
    let col = header.split('|').position(|c| c.trim() == "train threads");
    let cell = row("softmax")
        .split('|')
        .nth(col.expect("a train threads column"));
    assert_eq!(
        cell.map(str::trim),
        Some(tch::get_num_threads().to_string().as_str())
    );
    // greedy validation BLEU recorded during training, and its plot
    let summary = fwp::mt::report::summarise(&runs[0]).unwrap();
    assert_eq!(summary.curve.len(), 2, "evaluations at updates 2 and 4");
    assert!(stem.with_extension("png").is_file() && stem.with_extension("svg").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn speed_sources_have_the_asked_length_and_memory_grows_with_it() {
    let _rng = serial();
    let run = scratch("speed");
    let stop = AtomicBool::new(false);
    train(&run, &config("sum:dpfp:1", 2), &opts(&stop, false, None)).unwrap();
    let loaded = load_run(&run, Device::Cpu, None).unwrap();
    let texts: Vec<String> = read_split(&fixture(), Split::Train, ("en", "de"))
        .unwrap()
        .into_iter()
        .map(|p| p.src)
        .collect();
    let s = fwp::mt::speed::sources_of_length(&loaded.bpe, &texts, 7, 3).unwrap();
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|x| x.len() == 7));
    let e = fwp::mt::speed::sources_of_length(&loaded.bpe, &texts, 1_000_000, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fewer than one source of 1000000"), "{e}");
    let greedy = DecodeOptions {
        beam: 1,
        ..DecodeOptions::default()
    };
    let m = |len| {
        let src = fwp::mt::speed::sources_of_length(&loaded.bpe, &texts, len, 2).unwrap();
        fwp::mt::speed::measure(&loaded.model, "sum:dpfp:1", &src, 2, &greedy).unwrap()
    };
    let (short, long) = (m(4), m(12));
    assert_eq!((short.source_len, short.sentences), (4, 2));
    // softmax cross-attention keeps the source's keys and values: three times the length, three
    // times the memory; the fast-weight decoder's cache does not depend on it
    assert_eq!(long.memory_bytes * 4, short.memory_bytes * 12);
    assert_eq!(long.cache_bytes, short.cache_bytes);
    assert!(short.sentences_per_s > 0.0 && short.mean_target_len > 0.0);
    std::fs::remove_dir_all(&run).unwrap();
}

/// The presets of docs/translate.md: sizes, the paper's Transformer defaults (post-LN, one
/// embedding for source, target and output, dropout and label smoothing 0.1), and the parameter
/// count of docs/translate.md's table, against a count from the sizes.
#[test]
fn presets_have_the_documented_sizes_and_defaults() {
    // building models draws from libtorch's generator
    let _rng = serial();
    // (preset, layers, d_model, heads, d_ff, parameters with an 8,000-entry vocabulary)
    let table = [
        (Preset::Tiny, 3, 256, 4, 1024, 7_568_384),
        (Preset::Base, 6, 512, 8, 2048, 48_197_632),
        (Preset::Big, 6, 1024, 16, 4096, 184_475_648),
    ];
    let vocab = 8000;
    for (preset, layers, d, heads, d_ff, documented) in table {
        let m = MtModel::preset(preset, Variant::Softmax);
        assert_eq!(
            (
                m.encoder_layers,
                m.decoder_layers,
                m.d_model,
                m.n_heads,
                m.d_ff
            ),
            (layers, layers, d, heads, d_ff),
            "{preset:?}"
        );
        assert_eq!(m.d_head, 64, "{preset:?}");
        assert_eq!(m.layer_norm, fwp::LayerNormPlacement::Post);
        assert!(m.share_embeddings && !m.fast_cross);
        assert_eq!(m.dropout, 0.1);
        let t = TrainConfig::preset(preset);
        assert_eq!((t.label_smoothing, t.clip, t.bpe_vocab), (0.1, 1.0, 8000));
        // attention: 4 d x d projections without bias (the decoder's cross-attention 4 more);
        // feed-forward: two layers with biases; LayerNorm: 2 d a sublayer; one embedding
        let (attn, ff) = (4 * d * d, 2 * d * d_ff + d_ff + d);
        let count =
            vocab * d + layers * (attn + ff + 2 * 2 * d) + layers * (2 * attn + ff + 3 * 2 * d);
        assert_eq!(count, documented, "{preset:?}: the table's count");
        if preset == Preset::Big {
            continue; // 0.7 GB of weights to count what the formula already gives
        }
        let built = |m: MtModel| {
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let cfg = m.model_config(vocab, PAD).unwrap();
            let _model = fwp::seq2seq::Seq2Seq::new(vs.root(), cfg).unwrap();
            fwp::training::parameter_count(&vs)
        };
        assert_eq!(built(m), documented, "{preset:?}: built model");
        // feature maps add no parameters; a source embedding of its own adds one vocabulary's
        let favor = MtModel::preset(preset, "sum:favor:32".parse().unwrap());
        assert_eq!(built(favor), documented, "{preset:?}: sum:favor:32");
        // the delta rule: a learnt beta a head in each decoder layer's self-attention
        let delta = MtModel::preset(preset, "delta:dpfp:2".parse().unwrap());
        assert_eq!(
            built(delta),
            documented + layers * d * heads,
            "{preset:?}: delta:dpfp:2"
        );
        let separate = MtModel {
            share_embeddings: false,
            ..m
        };
        assert_eq!(
            built(separate),
            documented + vocab * d,
            "{preset:?}: separate"
        );
        // pre-LN: a final LayerNorm after the encoder and after the decoder
        let pre = MtModel {
            layer_norm: fwp::LayerNormPlacement::Pre,
            ..m
        };
        assert_eq!(built(pre), documented + 2 * 2 * d, "{preset:?}: pre-LN");
    }
}

#[test]
fn the_learning_rate_warms_up_linearly_then_decays_as_one_over_sqrt_step() {
    use fwp::training::adam::inverse_sqrt_learning_rate as lr;
    assert!((lr(0, 1.0, 10) - 0.1).abs() < 1e-12);
    assert!((lr(9, 1.0, 10) - 1.0).abs() < 1e-12);
    assert!((lr(39, 1.0, 10) - 0.5).abs() < 1e-12); // sqrt(10 / 40)
    assert!((lr(999, 2.0, 10) - 0.2).abs() < 1e-12); // 2 sqrt(10 / 1000)
    for step in 1..100 {
        assert!(lr(step, 1.0, 10) > 0.0);
    }
}

/// The run records committed in docs/translate/runs (some written before later record fields
/// existed) still read, and regenerate the committed table.
#[test]
fn committed_run_records_regenerate_the_committed_table() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/translate");
    let runs = fwp::training::checkpoint::runs_in(&docs.join("runs")).unwrap();
    assert!(runs.len() >= 5, "{runs:?}");
    fn every_line<T: serde::de::DeserializeOwned>(path: &Path) -> usize {
        let (records, bad) = fwp::report::read_records_checked::<T>(path).unwrap();
        assert!(bad.is_empty(), "{}: {bad:?}", path.display());
        records.len()
    }
    for run in &runs {
        assert!(every_line::<StepLog>(&run.join("train.jsonl")) > 0);
        every_line::<fwp::mt::train::EvalLog>(&run.join("eval.jsonl"));
        every_line::<fwp::mt::eval::EvalRecord>(&run.join("results.jsonl"));
        every_line::<fwp::mt::speed::DecodeSpeed>(&run.join("speed.jsonl"));
    }
    let table = fwp::mt::report::report(&runs, None).unwrap();
    let committed = std::fs::read_to_string(docs.join("table.md")).unwrap();
    assert_eq!(table, committed);
}
