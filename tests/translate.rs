//! The translation experiment end to end on the fixture corpus (tests/fixtures/mt): batches by
//! length, a tiny model that learns its training pairs to BLEU > 90, and a resumed run that
//! reproduces the uninterrupted one.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fwp::mt::batches::{Batches, Example};
use fwp::mt::bpe::{BOS, EOS, PAD};
use fwp::mt::config::{MtModel, Preset, TrainConfig};
use fwp::mt::corpus::{read_split, Split};
use fwp::mt::decode::DecodeOptions;
use fwp::mt::eval::{score, translate_all};
use fwp::mt::train::{load_run, train, Outcome, RunConfig, StepLog, TrainOptions};
use fwp::report::read_records;
use fwp::Variant;
use tch::{Device, Kind};

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
