//! The retrieval experiment (docs/retrieval.md): data invariants of both settings, model shapes, the
//! loss of the zero prediction, a tiny end-to-end run, and the results file's resume behaviour.

mod common;

use common::seeded;

use fwp::report::{append_record, read_records};
use fwp::retrieval::{
    eval_loss, evaluation_batch, query_losses, retrieval_loss, sample, train, training_batch,
    EarlyStop, ModelConfig, Protocol, QueryDraw, RetrievalModel, Setting, TrainConfig, Variant,
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
            let y = model.forward(&batch, false).unwrap();
            assert_eq!(
                y.size(),
                vec![4, batch.query.size()[1], s],
                "{variant:?} {setting:?}"
            );
            assert!(f64::try_from(model.loss(&batch, true).unwrap())
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

/// The results committed in docs/retrieval (fwp-v1's written before the model configuration
/// embedded the fast-weight layer's, or named a protocol) still read, and regenerate the committed
/// tables byte for byte.
#[test]
fn committed_results_regenerate_the_committed_tables() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/retrieval");
    for (name, protocol, setting, d_key) in [
        ("fwp-v1/quick", Protocol::FwpV1, Setting::Capacity, 16),
        ("fwp-v1/paper1", Protocol::FwpV1, Setting::Capacity, 64),
        ("fwp-v1/paper2", Protocol::FwpV1, Setting::Updates, 64),
        ("quick", Protocol::Authors, Setting::Capacity, 16),
        ("paper1", Protocol::Authors, Setting::Capacity, 64),
        ("paper2", Protocol::Authors, Setting::Updates, 64),
    ] {
        let results = docs.join(format!("{name}-results.jsonl"));
        if protocol == Protocol::Authors && !results.exists() {
            continue; // results not run yet
        }
        let records: Vec<fwp::retrieval::Record> = read_records(&results).unwrap();
        assert!(!records.is_empty());
        assert!(
            records.iter().all(|r| r.config.protocol == protocol),
            "{name}"
        );
        let out = std::env::temp_dir().join(format!(
            "fwp-report-{}-{}",
            name.replace('/', "-"),
            std::process::id()
        ));
        std::fs::create_dir_all(&out).unwrap();
        let table = fwp::retrieval::report(&out, &records, protocol, setting, d_key, 1e-3).unwrap();
        let committed = std::fs::read_to_string(docs.join(format!("{name}-table.md"))).unwrap();
        assert_eq!(table, committed, "{name}");
        assert!(out.join("plot.png").is_file() && out.join("plot.svg").is_file());
        std::fs::remove_dir_all(&out).ok();
    }
}

fn sum_linear() -> Variant {
    Variant::FastWeight {
        rule: UpdateRule::Sum,
        map: FeatureMap::Linear,
    }
}

/// Setting 2 trains on 2S writes; the authors evaluate on S, fwp-v1 on 2S. Setting 1: S for both.
#[test]
fn evaluation_length_follows_the_protocol() {
    let _rng = seeded(64);
    let s = 20;
    for (protocol, setting, want) in [
        (Protocol::Authors, Setting::Updates, s),
        (Protocol::FwpV1, Setting::Updates, 2 * s),
        (Protocol::Authors, Setting::Capacity, s),
        (Protocol::FwpV1, Setting::Capacity, s),
    ] {
        let cfg = protocol.train(1000);
        let b = evaluation_batch(setting, s, &cfg, Device::Cpu).unwrap();
        assert_eq!(b.keys.size(), vec![20, want], "{protocol} {setting:?}");
        let t = training_batch(setting, s, 32, cfg.query, Device::Cpu).unwrap();
        assert_eq!(
            t.keys.size(),
            vec![32, setting.length(s)],
            "{protocol} training"
        );
    }
    // the authors ask the lowest key ids, in order, at most 200
    let cfg = Protocol::Authors.train(1000);
    let b = evaluation_batch(Setting::Capacity, 230, &cfg, Device::Cpu).unwrap();
    let want: Vec<i64> = (0..200).collect();
    for row in rows(&b.query) {
        assert_eq!(row, want);
    }
}

/// The authors draw the training query at a uniform position, so a key written n times is asked n
/// times as often; fwp-v1 draws uniformly over distinct keys. Measured: the share of queries whose
/// key was overwritten, against each draw's expectation computed from the same rows.
#[test]
fn training_queries_follow_the_protocols_draw() {
    let _rng = seeded(65);
    let s = 10;
    for draw in [QueryDraw::Positions, QueryDraw::Keys] {
        let (mut hits, mut expect, mut other, mut n) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..100 {
            let b = training_batch(Setting::Updates, s, 32, draw, Device::Cpu).unwrap();
            let (keys, values) = (rows(&b.keys), rows(&b.values));
            for (i, (q, t)) in rows(&b.query).iter().zip(rows(&b.target)).enumerate() {
                let row = &keys[i];
                let count = |k: i64| row.iter().filter(|&&x| x == k).count();
                let last = row
                    .iter()
                    .rposition(|&x| x == q[0])
                    .expect("query key in its row");
                assert_eq!(
                    t[0], values[i][last],
                    "target: the value at the last occurrence"
                );
                let present: Vec<i64> = (0..s).filter(|&k| count(k) > 0).collect();
                let repeated = |k: &i64| count(*k) > 1;
                let by_position = present
                    .iter()
                    .filter(|k| repeated(k))
                    .map(|&k| count(k))
                    .sum::<usize>() as f64
                    / row.len() as f64;
                let by_key =
                    present.iter().filter(|k| repeated(k)).count() as f64 / present.len() as f64;
                let (mine, theirs) = match draw {
                    QueryDraw::Positions => (by_position, by_key),
                    QueryDraw::Keys => (by_key, by_position),
                };
                hits += if count(q[0]) > 1 { 1.0 } else { 0.0 };
                expect += mine;
                other += theirs;
                n += 1.0;
            }
        }
        let (share, expect, other) = (hits / n, expect / n, other / n);
        let sigma = (expect * (1.0 - expect) / n).sqrt();
        println!(
            "{draw:?}: overwritten share {share:.3}, expected {expect:.3} (other draw {other:.3})"
        );
        assert!(
            (share - expect).abs() < 4.0 * sigma,
            "{draw:?}: {share} vs {expect}"
        );
        assert!(
            (share - other).abs() > 8.0 * sigma,
            "{draw:?}: indistinguishable from the other draw"
        );
    }
}

/// The authors attention-normalise sum-rule memories (keys and queries raw; each retrieval is a
/// convex combination of the one-hot values, so its entries sum to 1) and sum-normalise delta-rule
/// ones; fwp-v1 sum-normalises both (sums not 1).
#[test]
fn each_rule_gets_its_protocols_normalisation() {
    let _rng = seeded(66);
    let delta = Variant::FastWeight {
        rule: UpdateRule::Delta,
        map: FeatureMap::Linear,
    };
    let norm = |p: Protocol, v: Variant| match p.model(20, 16, v, None, Backend::Auto).memory {
        fwp::AttentionKind::FastWeight(fw) => fw.normalisation,
        fwp::AttentionKind::Softmax => unreachable!(),
    };
    assert_eq!(
        norm(Protocol::Authors, sum_linear()),
        Normalisation::Attention
    );
    assert_eq!(norm(Protocol::Authors, delta), Normalisation::Sum);
    assert_eq!(norm(Protocol::FwpV1, sum_linear()), Normalisation::Sum);
    assert_eq!(norm(Protocol::FwpV1, delta), Normalisation::Sum);
    for (protocol, sums_to_one) in [(Protocol::Authors, true), (Protocol::FwpV1, false)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = protocol.model(12, 16, sum_linear(), None, Backend::Auto);
        let model = RetrievalModel::new(vs.root(), cfg).unwrap();
        let batch = sample(Setting::Capacity, 12, 4, 200, Device::Cpu).unwrap();
        let y = model.forward(&batch, false).unwrap();
        let gap = f64::try_from(
            (y.sum_dim_intlist([-1i64].as_slice(), false, Kind::Double) - 1.0)
                .abs()
                .max(),
        )
        .unwrap();
        assert_eq!(
            gap < 1e-4,
            sums_to_one,
            "{protocol}: largest |sum - 1| = {gap}"
        );
    }
}

/// Initial projections: the authors' W_k, W_q uniform in ±1/sqrt(d_key) with a bias in
/// ±1/sqrt(fan_in), w_beta in ±1/sqrt(fan_in) with a bias; Xavier for softmax. fwp-v1: tch's
/// Kaiming-uniform in ±sqrt(6/fan_in), no bias on W_k and W_q.
#[test]
fn initial_projections_follow_the_protocol() {
    let _rng = seeded(67);
    let (s, d_key) = (40, 64);
    let e = (2.0 * s as f64 * 1.1) as i64;
    let delta = Variant::FastWeight {
        rule: UpdateRule::Delta,
        map: FeatureMap::Linear,
    };
    let bound = |t: &Tensor| f64::try_from(t.abs().max()).unwrap();
    let check = |name: &str, t: &Tensor, b: f64| {
        let got = bound(t);
        assert!(
            got <= b && got > 0.9 * b,
            "{name}: largest |entry| {got}, bound {b}"
        );
    };
    for protocol in [Protocol::Authors, Protocol::FwpV1] {
        for variant in [delta, Variant::Softmax] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = protocol.model(s, d_key, variant, None, Backend::Auto);
            RetrievalModel::new(vs.root(), cfg).unwrap();
            let vars = vs.variables();
            let fan = |name: &str| if name == "w_q" { e } else { s + e };
            for name in ["w_k", "w_q"] {
                let w = &vars[&format!("{name}.weight")];
                let bias = vars.get(&format!("{name}.bias"));
                match protocol {
                    Protocol::Authors => {
                        let b = match variant {
                            Variant::Softmax => (6.0 / (fan(name) + d_key) as f64).sqrt(),
                            _ => 1.0 / (d_key as f64).sqrt(),
                        };
                        check(name, w, b);
                        check(
                            &format!("{name}.bias"),
                            bias.expect("a bias"),
                            1.0 / (fan(name) as f64).sqrt(),
                        );
                    }
                    Protocol::FwpV1 => {
                        check(name, w, (6.0 / fan(name) as f64).sqrt());
                        assert!(bias.is_none(), "{name}: no bias in fwp-v1");
                    }
                }
            }
            if variant == delta {
                let beta_bound = match protocol {
                    Protocol::Authors => 1.0 / ((s + e) as f64).sqrt(),
                    Protocol::FwpV1 => (6.0 / (s + e) as f64).sqrt(),
                };
                check("w_beta", &vars["w_beta.weight"], beta_bound);
                assert!(vars.contains_key("w_beta.bias"));
            }
        }
    }
}

/// Stopping: the authors stop once `strike > 10` (11 evaluations in a row without a new best);
/// fwp-v1 after 10. [`EarlyStop`] with the protocol's patience stops at the same evaluation as the
/// authors' rule on random loss sequences.
#[test]
fn stopping_count_follows_the_protocol() {
    let _rng = seeded(68);
    assert_eq!(Protocol::Authors.train(5).patience, 11);
    assert_eq!(Protocol::FwpV1.train(5).patience, 10);
    assert_eq!(Protocol::Authors.train(100_000), TrainConfig::authors());
    for _ in 0..200 {
        let losses =
            Vec::<f64>::try_from(Tensor::rand([300], (Kind::Double, Device::Cpu))).unwrap();
        // the authors' loop
        let (mut best, mut strike, mut theirs) = (f64::INFINITY, 0, None);
        for (i, &l) in losses.iter().enumerate() {
            if l < best {
                best = l;
                strike = 0;
            } else {
                strike += 1;
            }
            if strike > 10 {
                theirs = Some(i);
                break;
            }
        }
        let mut stop = EarlyStop::new(Protocol::Authors.train(5).patience);
        let ours = losses.iter().position(|&l| stop.update(l));
        assert_eq!(ours, theirs);
    }
    // a constant loss: first evaluation sets the best, the next 11 are strikes
    let mut stop = EarlyStop::new(11);
    let stopped_at = (1..100).find(|_| stop.update(0.3));
    assert_eq!(stopped_at, Some(12));
}

/// The authors' eval loss: each sequence's queries in chunks of 32, mean of the chunk means (a
/// short last chunk weighs as much as a full one). With FAVOR+ redrawn at every pass, each chunk
/// is a pass of its own and evaluations of one batch differ; drawn once, they do not.
#[test]
fn eval_loss_is_the_mean_of_chunk_means() {
    let _rng = seeded(69);
    let s = 40; // 40 queries per sequence: chunks of 32 and 8
    let vs = nn::VarStore::new(Device::Cpu);
    let model = RetrievalModel::new(
        vs.root(),
        Protocol::Authors.model(s, 16, sum_linear(), None, Backend::Auto),
    )
    .unwrap();
    let cfg = Protocol::Authors.train(10);
    let batch = evaluation_batch(Setting::Capacity, s, &cfg, Device::Cpu).unwrap();
    let per = query_losses(&model.forward(&batch, false).unwrap(), &batch).unwrap();
    let rows_mean = |from: i64, n: i64| {
        per.narrow(1, from, n)
            .mean_dim([1i64].as_slice(), false, Kind::Double)
    };
    let want =
        f64::try_from((rows_mean(0, 32) + rows_mean(32, 8)).mean(Kind::Double) / 2.0).unwrap();
    let got = eval_loss(&model, &batch, Some(32)).unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    let plain = f64::try_from(per.mean(Kind::Double)).unwrap();
    assert!((eval_loss(&model, &batch, None).unwrap() - plain).abs() < 1e-6);

    let favor = Variant::FastWeight {
        rule: UpdateRule::Sum,
        map: FeatureMap::Favor { m: 8 },
    };
    for (protocol, differ) in [(Protocol::Authors, true), (Protocol::FwpV1, false)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model =
            RetrievalModel::new(vs.root(), protocol.model(s, 16, favor, None, Backend::Auto))
                .unwrap();
        let a = eval_loss(&model, &batch, Some(32)).unwrap();
        let b = eval_loss(&model, &batch, Some(32)).unwrap();
        assert_eq!(a != b, differ, "{protocol}: {a} {b}");
    }
}

/// The sum rule's final fast weights come from one matrix product on the fast backends; the
/// Reference backend runs the recurrence. Both give the same retrievals and gradients.
#[test]
fn sum_rule_memory_as_one_product_matches_the_recurrence() {
    let _rng = seeded(70);
    let s = 24;
    for map in [FeatureMap::Linear, FeatureMap::Dpfp { nu: 1 }] {
        let variant = Variant::FastWeight {
            rule: UpdateRule::Sum,
            map,
        };
        let batch = sample(Setting::Updates, s, 4, 200, Device::Cpu).unwrap();
        let run = |backend: Backend| {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(Device::Cpu);
            let model = RetrievalModel::new(
                vs.root(),
                Protocol::Authors.model(s, 16, variant, None, backend),
            )
            .unwrap();
            let y = model.forward(&batch, true).unwrap();
            let loss = retrieval_loss(&y, &batch).unwrap();
            loss.backward();
            let grads: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.grad()))
                .collect();
            (y, grads)
        };
        let (y_ref, g_ref) = run(Backend::Reference);
        let (y_fast, g_fast) = run(Backend::Auto);
        common::assert_close_scaled(&format!("{map} y"), &y_fast, &y_ref, 1e-5);
        let mut g_ref = g_ref;
        let mut g_fast = g_fast;
        g_ref.sort_by(|a, b| a.0.cmp(&b.0));
        g_fast.sort_by(|a, b| a.0.cmp(&b.0));
        for ((name, a), (_, b)) in g_fast.iter().zip(&g_ref) {
            common::assert_close_scaled(&format!("{map} d{name}"), a, b, 1e-4);
        }
    }
}
