//! The retrieval experiment (docs/retrieval.md): data invariants of both settings, model shapes, the
//! loss of the zero prediction, a tiny end-to-end run, and the results file's resume behaviour.

mod common;

use common::seeded;

use fwp::report::{append_record, read_records};
use fwp::retrieval::{
    retrieval_loss, sample, train, ModelConfig, RetrievalModel, Setting, TrainConfig, Variant,
};
use fwp::{Backend, FeatureMap, Normalisation, UpdateRule};
use tch::{nn, Device, Kind, Tensor};

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let cols = t.size()[1];
    Vec::<i64>::try_from(t.view([-1]))
        .unwrap()
        .chunks(cols as usize)
        .map(<[i64]>::to_vec)
        .collect()
}

#[test]
fn capacity_setting_holds_every_key_once_with_distinct_values() {
    let _rng = seeded(60);
    let s = 13;
    let b = sample(Setting::Capacity, s, 8, 200, Device::Cpu).unwrap();
    assert_eq!(b.keys.size(), vec![8, s]);
    assert_eq!(
        b.query.size(),
        vec![8, s],
        "every key is queried when S <= 200"
    );
    for ((keys, values), (query, target)) in rows(&b.keys)
        .iter()
        .zip(rows(&b.values))
        .zip(rows(&b.query).iter().zip(rows(&b.target)))
    {
        let mut k = keys.clone();
        k.sort();
        assert_eq!(k, (0..s).collect::<Vec<_>>(), "every key exactly once");
        let mut v = values.clone();
        v.sort();
        assert_eq!(v, (0..s).collect::<Vec<_>>(), "distinct values");
        for (q, t) in query.iter().zip(&target) {
            let at = keys.iter().position(|k| k == q).unwrap();
            assert_eq!(
                values[at], *t,
                "target is the value paired with the queried key"
            );
        }
    }
    assert!(bool::try_from(b.mask.all()).unwrap());
    // at most 200 queries
    assert_eq!(
        sample(Setting::Capacity, 300, 2, 200, Device::Cpu)
            .unwrap()
            .query
            .size(),
        vec![2, 200]
    );
}

#[test]
fn update_setting_targets_the_last_occurrence() {
    let _rng = seeded(61);
    let s = 7;
    let b = sample(Setting::Updates, s, 16, 200, Device::Cpu).unwrap();
    assert_eq!(b.keys.size(), vec![16, 2 * s], "length 2S");
    let mask = Vec::<bool>::try_from(b.mask.view([-1])).unwrap();
    let q_max = b.query.size()[1];
    let mut repeats = 0;
    for (i, ((keys, values), (query, target))) in rows(&b.keys)
        .iter()
        .zip(rows(&b.values))
        .zip(rows(&b.query).iter().zip(rows(&b.target)))
        .enumerate()
    {
        let distinct: std::collections::BTreeSet<i64> = keys.iter().copied().collect();
        let real = mask[i * q_max as usize..(i + 1) * q_max as usize]
            .iter()
            .filter(|m| **m)
            .count();
        assert_eq!(real, distinct.len(), "every distinct key is queried once");
        repeats += keys.len() - distinct.len();
        for (j, (q, t)) in query.iter().zip(&target).enumerate().take(real) {
            assert!(mask[i * q_max as usize + j]);
            let last = keys
                .iter()
                .rposition(|k| k == q)
                .expect("the queried key occurs");
            assert_eq!(
                values[last], *t,
                "target is the value at the last occurrence"
            );
        }
        assert!(
            keys.iter()
                .chain(values.iter())
                .all(|&x| (0..s).contains(&x)),
            "vocabulary: S keys, S values"
        );
    }
    assert!(repeats > 0, "keys repeat in setting 2");
}

fn config(variant: Variant, s: i64) -> ModelConfig {
    ModelConfig::new(s, 8, variant, Normalisation::Sum, Backend::Auto)
}

#[test]
fn model_shapes_and_zero_prediction_loss() {
    let _rng = seeded(62);
    let s = 11;
    for variant in [
        Variant::Softmax,
        Variant::FastWeight {
            rule: UpdateRule::Sum,
            map: FeatureMap::Linear,
        },
        Variant::FastWeight {
            rule: UpdateRule::Delta,
            map: FeatureMap::Dpfp { nu: 2 },
        },
        Variant::FastWeight {
            rule: UpdateRule::Sum,
            map: FeatureMap::Favor { m: 8 },
        },
    ] {
        for setting in [Setting::Capacity, Setting::Updates] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = RetrievalModel::new(vs.root(), config(variant, s)).unwrap();
            let batch = sample(setting, s, 4, 200, Device::Cpu).unwrap();
            let y = model.forward(&batch).unwrap();
            assert_eq!(
                y.size(),
                vec![4, batch.query.size()[1], s],
                "{variant:?} {setting:?}"
            );
            assert!(f64::try_from(model.loss(&batch).unwrap())
                .unwrap()
                .is_finite());
        }
    }
    let batch = sample(Setting::Capacity, s, 4, 200, Device::Cpu).unwrap();
    let zero = Tensor::zeros([4, s, s], (Kind::Float, Device::Cpu));
    let loss = f64::try_from(retrieval_loss(&zero, &batch).unwrap()).unwrap();
    assert!(
        (loss - 0.5).abs() < 1e-7,
        "predicting 0 gives 0.5, got {loss}"
    );
}

#[test]
fn variant_names_round_trip() {
    for name in ["softmax", "sum:linear", "delta:dpfp:2", "sum:favor:64"] {
        assert_eq!(name.parse::<Variant>().unwrap().to_string(), name);
    }
    for bad in ["sum", "add:linear", "delta:dpfp"] {
        assert!(bad.parse::<Variant>().is_err(), "{bad}");
    }
}

#[test]
fn softmax_solves_five_keys_within_budget() {
    let _rng = seeded(63);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = RetrievalModel::new(
        vs.root(),
        ModelConfig {
            d_key: 16,
            ..config(Variant::Softmax, 5)
        },
    )
    .unwrap();
    let cfg = TrainConfig {
        max_steps: 3000,
        ..TrainConfig::default()
    };
    let r = train(&model, &vs, Setting::Capacity, &cfg, &mut |_, _, _| {}).unwrap();
    println!(
        "softmax S=5: final eval loss {} after {} steps",
        r.final_eval_loss, r.steps
    );
    assert!(r.solved, "softmax did not solve S = 5 in 3000 steps: {r:?}");
}

#[test]
fn results_file_appends_and_survives_a_torn_last_line() {
    let dir = std::env::temp_dir().join(format!("fwp-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("results.jsonl");
    append_record(&path, &serde_json::json!({"s": 1})).unwrap();
    append_record(&path, &serde_json::json!({"s": 2})).unwrap();
    let recs: Vec<serde_json::Value> = read_records(&path).unwrap();
    assert_eq!(recs.len(), 2);
    // a crash mid-write leaves a partial last line: it is skipped, the rest kept
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"s\": 3")
        .unwrap();
    let recs: Vec<serde_json::Value> = read_records(&path).unwrap();
    assert_eq!(recs.len(), 2);
    // and the next append replaces it rather than gluing onto it
    append_record(&path, &serde_json::json!({"s": 4})).unwrap();
    let recs: Vec<serde_json::Value> = read_records(&path).unwrap();
    assert_eq!(
        recs.iter()
            .map(|r| r["s"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The results committed in docs/retrieval (written before the model configuration embedded the
/// fast-weight layer's) still read, and regenerate the committed tables byte for byte.
#[test]
fn committed_results_regenerate_the_committed_tables() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/retrieval");
    for (name, setting, d_key) in [
        ("quick", Setting::Capacity, 16),
        ("paper1", Setting::Capacity, 64),
        ("paper2", Setting::Updates, 64),
    ] {
        let records: Vec<fwp::retrieval::Record> =
            read_records(&docs.join(format!("{name}-results.jsonl"))).unwrap();
        assert!(!records.is_empty());
        let out = std::env::temp_dir().join(format!("fwp-report-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let table = fwp::retrieval::report(&out, &records, setting, d_key, 1e-3).unwrap();
        let committed = std::fs::read_to_string(docs.join(format!("{name}-table.md"))).unwrap();
        assert_eq!(table, committed, "{name}");
        assert!(out.join("plot.png").is_file() && out.join("plot.svg").is_file());
        std::fs::remove_dir_all(&out).ok();
    }
}
