//! The encoder–decoder model: the non-causal fast-weight memory against its quadratic reference
//! twin (outputs and every gradient), padding that changes nothing, and incremental decoding that
//! gives the logits of the full prefix, for every attention variant (post-LN and pre-LN, shared and
//! separate source embeddings); the fast-weight
//! cross-attention memory of a fixed size against its twin that keeps the source's keys.

mod common;

use common::{assert_close, assert_close_scaled, F64};
use fwp::attention::{AttentionKind, FastWeightConfig};
use fwp::mt::bpe::{BOS, EOS, PAD};
use fwp::mt::decode::{translate, DecodeOptions};
use fwp::recurrence::noncausal::fast_weight_noncausal;
use fwp::seq2seq::{Seq2Seq, Seq2SeqConfig};
use fwp::{Backend, FeatureMap, LayerNormPlacement, ParamInit, UpdateRule};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[test]
fn noncausal_memory_matches_its_quadratic_twin_with_gradients() {
    let _rng = common::seeded(0);
    let (b, h, tq, tk, dk, dv) = (2, 3, 5, 7, 4, 6);
    let q = Tensor::rand([b, h, tq, dk], F64).set_requires_grad(true);
    let k = Tensor::rand([b, h, tk, dk], F64).set_requires_grad(true);
    let v = Tensor::randn([b, h, tk, dv], F64).set_requires_grad(true);
    // the second sequence has 4 real keys
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
        .view([2, 7])
        .to_kind(Kind::Bool);
    let w = Tensor::randn([b, h, tq, dv], F64);
    let run = |backend| {
        let y = fast_weight_noncausal(&q, &k, &v, Some(&mask), backend).unwrap();
        let g = Tensor::run_backward(&[(&y * &w).sum(Kind::Double)], &[&q, &k, &v], false, false);
        (y, g)
    };
    let (want, gw) = run(Backend::Reference);
    // every backend but Reference builds the fast weight matrix (two matmuls: there is no kernel
    // to fuse)
    let (got, gg) = run(Backend::Auto);
    assert_close("y", &got, &want, 1e-12, 1e-12);
    for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(gg.iter().zip(&gw)) {
        assert_close(name, a, b, 1e-12, 1e-12);
    }
    // padded keys and values change nothing and get no gradient
    let dk = &gw[1];
    assert_eq!(
        f64::try_from(dk.narrow(0, 1, 1).narrow(2, 4, 3).abs().sum(Kind::Double)).unwrap(),
        0.0
    );
    let k2 = k.detach().copy();
    let _ = k2.narrow(0, 1, 1).narrow(2, 4, 3).fill_(5.0);
    let y2 = fast_weight_noncausal(&q, &k2, &v, Some(&mask), Backend::Auto).unwrap();
    assert_close("y with other padding", &y2, &want, 1e-12, 1e-12);
    // shapes that do not fit are errors
    assert!(fast_weight_noncausal(&q, &k.narrow(3, 0, 3), &v, None, Backend::Auto).is_err());
    assert!(fast_weight_noncausal(&q, &k, &v, Some(&mask.narrow(1, 0, 6)), Backend::Auto).is_err());
}

/// In float32 at the experiment's sizes (d = 64, a source of 100 tokens with padding), against
/// the float64 reference: outputs and gradients.
#[test]
fn noncausal_memory_in_float32_is_close_to_the_float64_reference() {
    let _rng = common::seeded(2);
    let (b, h, t, d) = (2, 4, 100, 64);
    let q = Tensor::rand([b, h, t, d], F64);
    let k = Tensor::rand([b, h, t, d], F64);
    let v = Tensor::randn([b, h, t, d], F64);
    let w = Tensor::randn([b, h, t, d], F64);
    let lengths = [100i64, 37];
    let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&Tensor::from_slice(&lengths).unsqueeze(1)); // [B, T]
    let run = |kind: Kind, backend| {
        let leaf = |x: &Tensor| x.to_kind(kind).set_requires_grad(true);
        let (q, k, v) = (leaf(&q), leaf(&k), leaf(&v));
        let y = fast_weight_noncausal(&q, &k, &v, Some(&mask), backend).unwrap();
        let g = Tensor::run_backward(
            &[(&y * w.to_kind(kind)).sum(Kind::Double)],
            &[&q, &k, &v],
            false,
            false,
        );
        let f64s = |x: &Tensor| x.to_kind(Kind::Double);
        (f64s(&y), g.iter().map(f64s).collect::<Vec<_>>())
    };
    let (want, gw) = run(Kind::Double, Backend::Reference);
    let (got, gg) = run(Kind::Float, Backend::Auto);
    // sums of 100 products in float32: errors of 1e-5 of the largest magnitude
    assert_close_scaled("y f32", &got, &want, 1e-5);
    for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(gg.iter().zip(&gw)) {
        assert_close_scaled(&format!("{name} f32"), a, b, 1e-5);
    }
}

fn fast(rule: UpdateRule, map: FeatureMap) -> AttentionKind {
    AttentionKind::FastWeight(FastWeightConfig::new(rule, map))
}

fn config(encoder: AttentionKind, decoder: AttentionKind, cross: AttentionKind) -> Seq2SeqConfig {
    Seq2SeqConfig {
        vocab: 23,
        pad: 0,
        encoder_layers: 2,
        decoder_layers: 2,
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        d_ff: 32,
        dropout: 0.1,
        layer_norm: LayerNormPlacement::Post,
        encoder,
        decoder,
        cross,
        share_embeddings: true,
        init: ParamInit::Framework,
    }
}

fn model(cfg: Seq2SeqConfig) -> (VarStore, Seq2Seq) {
    // the same weights whatever runs beside: no other test draws while this one builds
    let _rng = common::seeded(1);
    let mut vs = VarStore::new(Device::Cpu);
    let m = Seq2Seq::new(vs.root(), cfg).unwrap();
    vs.double();
    (vs, m)
}

/// Every variant the experiment trains, and fast-weight cross-attention, as post-LN models with
/// one shared embedding; then two pre-LN models with a source embedding of their own.
fn variants() -> Vec<(&'static str, Seq2SeqConfig)> {
    use FeatureMap::*;
    use UpdateRule::*;
    let s = AttentionKind::Softmax;
    let mut cases = vec![
        ("softmax", config(s, s, s)),
        (
            "sum:linear",
            config(fast(Sum, Linear), fast(Sum, Linear), s),
        ),
        (
            "sum:favor:8",
            config(fast(Sum, Favor { m: 8 }), fast(Sum, Favor { m: 8 }), s),
        ),
        (
            "sum:dpfp:2",
            config(fast(Sum, Dpfp { nu: 2 }), fast(Sum, Dpfp { nu: 2 }), s),
        ),
        (
            "delta:dpfp:1",
            config(fast(Sum, Dpfp { nu: 1 }), fast(Delta, Dpfp { nu: 1 }), s),
        ),
        (
            "delta:linear, fast cross",
            config(fast(Sum, Linear), fast(Delta, Linear), fast(Sum, Linear)),
        ),
    ];
    for (name, e, d) in [
        ("softmax, pre-LN, own source embedding", s, s),
        (
            "delta:linear, pre-LN, own source embedding",
            fast(Sum, Linear),
            fast(Delta, Linear),
        ),
    ] {
        let mut cfg = config(e, d, s);
        cfg.layer_norm = LayerNormPlacement::Pre;
        cfg.share_embeddings = false;
        cases.push((name, cfg));
    }
    cases
}

fn tokens(rows: &[&[i64]]) -> Tensor {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(0)).take(t))
        .collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, t as i64])
}

#[test]
fn padding_changes_nothing_at_real_positions() {
    for (name, cfg) in variants() {
        let (_vs, m) = model(cfg);
        let (a, b): (&[i64], &[i64]) = (&[5, 6, 7], &[8, 9, 10, 11, 12, 13]);
        let tgt = tokens(&[&[1, 3, 4, 5]]);
        let alone_enc = m.encode(&tokens(&[a]), false).unwrap();
        let alone = m.decode_t(&tgt, &alone_enc, false).unwrap();
        let batch_enc = m.encode(&tokens(&[a, b]), false).unwrap();
        assert_close(
            &format!("{name}: encoder"),
            &batch_enc.out.narrow(0, 0, 1).narrow(1, 0, 3),
            &alone_enc.out,
            1e-10,
            1e-10,
        );
        let tgt2 = tokens(&[&[1, 3, 4, 5], &[1, 2, 2, 2]]);
        let batch = m.decode_t(&tgt2, &batch_enc, false).unwrap();
        assert_close(
            &format!("{name}: decoder"),
            &batch.narrow(0, 0, 1),
            &alone,
            1e-10,
            1e-10,
        );
    }
}

#[test]
fn incremental_decoding_gives_the_logits_of_the_full_prefix() {
    for (name, cfg) in variants() {
        let d = cfg.decoder;
        let (_vs, m) = model(cfg);
        let enc = m
            .encode(&tokens(&[&[5, 6, 7, 9], &[8, 9, 10, 11, 12, 13]]), false)
            .unwrap();
        let tgt = tokens(&[&[1, 3, 4, 5, 6, 7, 8], &[1, 9, 8, 7, 6, 5, 4]]);
        let full = m.decode_t(&tgt, &enc, false).unwrap(); // [2, 7, V]
                                                           // one token at a time
        let mut state = m.start(&enc).unwrap();
        for t in 0..7 {
            let logits = m.step(&tgt.narrow(1, t, 1), &mut state).unwrap();
            assert_close(
                &format!("{name}: step {t}"),
                &logits,
                &full.narrow(1, t, 1),
                1e-10,
                1e-10,
            );
        }
        assert_eq!(state.position, 7);
        // three tokens, then one at a time, with the batch reordered in between (beam search)
        let mut state = m.start(&enc).unwrap();
        let first = m.step(&tgt.narrow(1, 0, 3), &mut state).unwrap();
        assert_close(
            &format!("{name}: first 3"),
            &first,
            &full.narrow(1, 0, 3),
            1e-10,
            1e-10,
        );
        let swap = Tensor::from_slice(&[1i64, 0]);
        let mut state = state.select(&swap).unwrap();
        for t in 3..7 {
            let logits = m
                .step(&tgt.index_select(0, &swap).narrow(1, t, 1), &mut state)
                .unwrap();
            let want = full.index_select(0, &swap).narrow(1, t, 1);
            assert_close(
                &format!("{name}: reordered step {t}"),
                &logits,
                &want,
                1e-10,
                1e-10,
            );
        }
        // the cache: constant for fast weights, growing for softmax
        let bytes = state.cache_bytes();
        let _ = m.step(&tgt.narrow(1, 0, 1), &mut state).unwrap();
        let grows = state.cache_bytes() > bytes;
        assert_eq!(
            grows,
            matches!(d, AttentionKind::Softmax),
            "{name}: cache {bytes} -> {}",
            state.cache_bytes()
        );
    }
}

#[test]
fn fixed_size_caches_step_as_the_growing_ones() {
    // the state a traced decoder step carries (crate::mt::export): softmax keys and values in
    // buffers written in place, positions given as a tensor
    for (name, cfg) in variants() {
        let d = cfg.decoder;
        let (_vs, m) = model(cfg);
        let enc = m
            .encode(&tokens(&[&[5, 6, 7, 9], &[8, 9, 10, 11, 12, 13]]), false)
            .unwrap();
        let tgt = tokens(&[&[1, 3, 4, 5, 6, 7, 8], &[1, 9, 8, 7, 6, 5, 4]]);
        let full = m.decode_t(&tgt, &enc, false).unwrap();
        let mut first = m.start(&enc).unwrap();
        let _ = m.step(&tgt.narrow(1, 0, 1), &mut first).unwrap();
        let fixed = first.buffered(9).unwrap();
        let (memories, caches) = fixed.tensors().unwrap();
        let bytes = fixed.cache_bytes();
        for t in 0..7 {
            let pos = Tensor::from_slice(&[t]);
            let mut state = fixed
                .with_tensors(&memories, &caches, 0)
                .unwrap()
                .at_position(&pos)
                .unwrap();
            let logits = m.step_at(&tgt.narrow(1, t, 1), &pos, &mut state).unwrap();
            assert_close(
                &format!("{name}: buffered step {t}"),
                &logits,
                &full.narrow(1, t, 1),
                1e-10,
                1e-10,
            );
            // fast weights come back as new tensors; softmax buffers were written in place
            for (buf, new) in caches.iter().zip(state.tensors().unwrap().1) {
                buf.shallow_clone().copy_(&new);
            }
            assert_eq!(state.cache_bytes(), bytes, "{name}: fixed size");
        }
        // a softmax layer's buffers take one token a step
        if matches!(d, AttentionKind::Softmax) {
            let mut state = fixed.at_position(&Tensor::from_slice(&[0i64])).unwrap();
            let two = m.step_at(
                &tgt.narrow(1, 0, 2),
                &Tensor::from_slice(&[0i64, 1]),
                &mut state,
            );
            assert!(two.unwrap_err().to_string().contains("one token a step"));
        }
    }
}

#[test]
fn a_delta_rule_encoder_or_cross_attention_is_refused() {
    let delta = fast(UpdateRule::Delta, FeatureMap::Linear);
    let s = AttentionKind::Softmax;
    let vs = VarStore::new(Device::Cpu);
    let err = Seq2Seq::new(vs.root(), config(delta, s, s))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no non-causal form"), "{err}");
    let err = Seq2Seq::new(vs.root(), config(s, s, delta))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no non-causal form"), "{err}");
    let mut bad = config(s, s, s);
    bad.pad = 23;
    assert!(Seq2Seq::new(vs.root(), bad).is_err());
}

/// Fast-weight cross-attention writes the source into W and z, whose size does not depend on the
/// source length; its `Reference` twin keeps phi(keys) and values. Same logits (full and step by
/// step) and the same gradient for every parameter.
#[test]
fn fixed_size_fast_cross_memory_matches_its_reference_twin() {
    use FeatureMap::*;
    use UpdateRule::*;
    for map in [Linear, Favor { m: 4 }, Dpfp { nu: 1 }] {
        let cross = |backend| {
            let mut fw = FastWeightConfig::new(Sum, map);
            fw.backend = backend;
            AttentionKind::FastWeight(fw)
        };
        // the twin gets the same weights (the global RNG is shared with tests running beside)
        let build = |backend| model(config(fast(Sum, map), fast(Delta, Linear), cross(backend)));
        let (want_vs, want_m) = build(Backend::Reference);
        let (mut got_vs, got_m) = build(Backend::Auto);
        got_vs.copy(&want_vs).unwrap();
        let run = |vs: &VarStore, m: &Seq2Seq| {
            let src = tokens(&[&[5, 6, 7, 9], &[8, 9, 10, 11, 12, 13]]);
            let tgt = tokens(&[&[1, 3, 4, 5], &[1, 9, 8, 7]]);
            let enc = m.encode(&src, false).unwrap();
            let full = m.decode_t(&tgt, &enc, false).unwrap();
            let mut state = m.start(&enc).unwrap();
            let steps: Vec<Tensor> = (0..4)
                .map(|t| m.step(&tgt.narrow(1, t, 1), &mut state).unwrap())
                .collect();
            let memory_bytes = |len: usize| {
                let long: Vec<i64> = (0..len as i64).map(|i| 5 + i % 10).collect();
                let enc = m.encode(&tokens(&[&long]), false).unwrap();
                let state = m.start(&enc).unwrap();
                state
                    .memory_tensors()
                    .iter()
                    .map(|t| t.numel() * t.kind().elt_size_in_bytes())
                    .sum::<usize>()
            };
            let sizes = (memory_bytes(4), memory_bytes(40));
            full.square().sum(Kind::Double).backward();
            let mut grads: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, p)| p.requires_grad())
                .map(|(n, p)| (n, p.grad().copy()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (full, Tensor::cat(&steps, 1), sizes, grads)
        };
        let (want, want_steps, (ref_short, ref_long), want_grads) = run(&want_vs, &want_m);
        let (got, got_steps, (short, long), got_grads) = run(&got_vs, &got_m);
        assert_close(&format!("{map}: logits"), &got, &want, 1e-10, 1e-10);
        assert_close(&format!("{map}: steps"), &got_steps, &want, 1e-10, 1e-10);
        assert_close(
            &format!("{map}: reference steps"),
            &want_steps,
            &want,
            1e-10,
            1e-10,
        );
        assert_eq!(
            short, long,
            "{map}: fast-weight memory grew with the source"
        );
        assert!(ref_long > ref_short, "{map}: the twin keeps every key");
        assert_eq!(got_grads.len(), want_grads.len());
        for ((name, g), (_, w)) in got_grads.iter().zip(&want_grads) {
            assert!(w.defined() && g.defined(), "{map}: {name} has no gradient");
            assert_close(&format!("{map}: d {name}"), g, w, 1e-10, 1e-10);
        }
    }
}

#[test]
fn every_parameter_gets_a_gradient_in_training() {
    for (name, cfg) in variants() {
        let (vs, m) = model(cfg);
        let _rng = common::rng_lock(); // dropout draws
        let enc = m
            .encode(&tokens(&[&[5, 6, 7], &[8, 9, 10, 11]]), true)
            .unwrap();
        let logits = m
            .decode_t(&tokens(&[&[1, 3, 4], &[1, 9, 8]]), &enc, true)
            .unwrap();
        logits.square().sum(Kind::Double).backward();
        for (pname, p) in vs.variables() {
            if !p.requires_grad() {
                continue;
            }
            let g = p.grad();
            assert!(g.defined(), "{name}: {pname} has no gradient");
            assert!(
                f64::try_from(g.abs().sum(Kind::Double)).unwrap() > 0.0,
                "{name}: {pname} gradient is 0"
            );
        }
    }
}

/// Log-probability of `ids` followed by `</s>` given `src`, by teacher forcing over the full prefix.
fn sequence_log_prob(m: &Seq2Seq, src: &[i64], ids: &[i64]) -> f64 {
    let enc = m.encode(&tokens(&[src]), false).unwrap();
    let input: Vec<i64> = [BOS].iter().chain(ids).copied().collect();
    let target: Vec<i64> = ids.iter().copied().chain([EOS]).collect();
    let logp = m
        .decode_t(&tokens(&[&input]), &enc, false)
        .unwrap()
        .log_softmax(-1, Kind::Double)
        .squeeze_dim(0); // [T, V]
    let t = Tensor::from_slice(&target).unsqueeze(1);
    f64::try_from(logp.gather(1, &t, false).sum(Kind::Double)).unwrap()
}

#[test]
fn greedy_and_beam_search_agree_with_full_prefix_scoring() {
    let sources: [&[i64]; 3] = [&[5, 6, 7], &[8, 9, 10, 11, 12, 13], &[14]];
    for (name, cfg) in variants() {
        let (_vs, m) = model(cfg);
        let src = tokens(&sources);
        // greedy: at every step the argmax of the full prefix's logits
        let greedy = DecodeOptions {
            beam: 1,
            length_penalty: 0.0,
            max_len_a: 1.0,
            max_len_b: 4,
            no_repeat_ngram: 0,
        };
        let hyps = translate(&m, &src, &greedy).unwrap();
        for (s, h) in sources.iter().zip(&hyps) {
            let enc = m.encode(&tokens(&[s]), false).unwrap();
            let mut prefix = vec![BOS];
            let limit = s.len() + 4;
            loop {
                let logits = m.decode_t(&tokens(&[&prefix]), &enc, false).unwrap();
                let next = if prefix.len() == limit {
                    EOS
                } else {
                    i64::try_from(logits.select(1, -1).argmax(-1, false)).unwrap()
                };
                if next == EOS {
                    break;
                }
                prefix.push(next);
            }
            assert_eq!(h.tokens, prefix[1..], "{name}: greedy");
            let lp = sequence_log_prob(&m, s, &h.tokens);
            assert!(
                (h.log_prob - lp).abs() < 1e-9,
                "{name}: greedy score {} vs {lp}",
                h.log_prob
            );
        }
        // beam 4: the score is the hypothesis' log-probability; batched = one sentence at a time
        let beam = DecodeOptions { beam: 4, ..greedy };
        let batched = translate(&m, &src, &beam).unwrap();
        for (i, s) in sources.iter().enumerate() {
            let alone = translate(&m, &tokens(&[s]), &beam).unwrap();
            assert_eq!(
                alone[0].tokens, batched[i].tokens,
                "{name}: sentence {i} batched"
            );
            let lp = sequence_log_prob(&m, s, &batched[i].tokens);
            assert!(
                (batched[i].log_prob - lp).abs() < 1e-9,
                "{name}: beam score"
            );
            assert!(
                batched[i].tokens.len() <= s.len() + 3,
                "{name}: over the length limit"
            );
            assert!(batched[i]
                .tokens
                .iter()
                .all(|&t| t != EOS && t != PAD && t != BOS));
        }
    }
    let (_vs, m) = model(config(
        AttentionKind::Softmax,
        AttentionKind::Softmax,
        AttentionKind::Softmax,
    ));
    let bad = DecodeOptions {
        beam: 0,
        ..DecodeOptions::default()
    };
    assert!(translate(&m, &tokens(&[&[5]]), &bad).is_err());
}

/// Whether `ids` holds some n consecutive tokens twice.
fn repeats_ngram(ids: &[i64], n: usize) -> bool {
    let grams: Vec<&[i64]> = ids.windows(n).collect();
    (0..grams.len()).any(|i| grams[i + 1..].contains(&grams[i]))
}

#[test]
fn no_repeat_ngram_keeps_hypotheses_free_of_repeats() {
    // random models with 20 ordinary tokens and a length limit of 40: without the rule they repeat
    // themselves
    let sources: [&[i64]; 3] = [&[5, 6, 7, 8, 9], &[10, 11, 12, 13, 14, 15], &[16, 17]];
    let src = tokens(&sources);
    let s = AttentionKind::Softmax;
    let kinds = [
        ("softmax", s, s),
        (
            "delta:dpfp",
            fast(UpdateRule::Sum, FeatureMap::Dpfp { nu: 1 }),
            fast(UpdateRule::Delta, FeatureMap::Dpfp { nu: 1 }),
        ),
    ];
    for (name, e, d) in kinds {
        let (vs, m) = model(config(e, d, s));
        // a random model says </s> at once; with a zero </s> embedding (its logit 0) it goes on
        tch::no_grad(|| {
            let _ = vs.variables()["embedding.weight"].get(EOS).fill_(0.0);
        });
        for beam in [1, 3] {
            let plain = DecodeOptions {
                beam,
                length_penalty: 1.0,
                max_len_a: 0.0,
                max_len_b: 40,
                no_repeat_ngram: 0,
            };
            let free = translate(&m, &src, &plain).unwrap();
            assert!(
                free.iter().any(|h| repeats_ngram(&h.tokens, 1)),
                "{name}, beam {beam}: the test needs a model that repeats itself: {:?}",
                free.iter().map(|h| h.tokens.clone()).collect::<Vec<_>>()
            );
            for n in [1, 2, 3] {
                let opts = DecodeOptions {
                    no_repeat_ngram: n as i64,
                    ..plain
                };
                let hyps = translate(&m, &src, &opts).unwrap();
                for (i, (h, s)) in hyps.iter().zip(&sources).enumerate() {
                    assert!(
                        !repeats_ngram(&h.tokens, n),
                        "{name}, beam {beam}, n = {n}: {:?} repeats",
                        h.tokens
                    );
                    // the score is still the model's log-probability of the hypothesis, and the
                    // rule is per hypothesis: batched = alone
                    let lp = sequence_log_prob(&m, s, &h.tokens);
                    assert!((h.log_prob - lp).abs() < 1e-9, "{name}: score");
                    let alone = translate(&m, &tokens(&[s]), &opts).unwrap();
                    assert_eq!(alone[0].tokens, h.tokens, "{name}: sentence {i} batched");
                }
            }
        }
    }
    let (_vs, m) = model(config(s, s, s));
    let bad = DecodeOptions {
        no_repeat_ngram: -1,
        ..DecodeOptions::default()
    };
    let e = translate(&m, &tokens(&[&[5]]), &bad).unwrap_err();
    assert!(e.to_string().contains("no_repeat_ngram"), "{e}");
    assert_eq!(DecodeOptions::default().file_tag(), "beam4");
    let tagged = DecodeOptions {
        length_penalty: 0.6,
        no_repeat_ngram: 3,
        ..DecodeOptions::default()
    };
    assert_eq!(tagged.file_tag(), "beam4.lp0.6.nr3");
    let longer = DecodeOptions {
        max_len_a: 2.0,
        max_len_b: 5,
        ..tagged
    };
    assert_eq!(longer.file_tag(), "beam4.lp0.6.nr3.max2x+5");
    // eval's files: one per split, search and limit, none overwriting another
    use fwp::mt::corpus::Split;
    use fwp::mt::eval::hypothesis_file;
    let run = std::path::Path::new("run");
    let plain = DecodeOptions::default();
    assert_eq!(
        hypothesis_file(run, Split::Valid, None, &plain, "de"),
        run.join("hyp.valid.beam4.de")
    );
    assert_eq!(
        hypothesis_file(run, Split::Test, Some(100), &longer, "de"),
        run.join("hyp.test.first100.beam4.lp0.6.nr3.max2x+5.de")
    );
}

#[test]
fn hypotheses_share_their_sentence_memory() {
    // beam search: n hypotheses per sentence read the sentence's one memory, as if each had its
    // own copy (CrossAttention::forward_t)
    use fwp::attention::AttentionConfig;
    use fwp::cross_attention::CrossAttention;
    let kinds = {
        let mut keys = FastWeightConfig::new(UpdateRule::Sum, FeatureMap::Dpfp { nu: 1 });
        keys.backend = Backend::Reference; // the memory that keeps the keys
        [
            AttentionKind::Softmax,
            fast(UpdateRule::Sum, FeatureMap::Favor { m: 4 }),
            AttentionKind::FastWeight(keys),
        ]
    };
    for kind in kinds {
        let _rng = common::rng_lock(); // random weights and inputs
        let mut vs = VarStore::new(Device::Cpu);
        let cfg = AttentionConfig {
            d_model: 16,
            n_heads: 2,
            d_head: 8,
            kind,
            attn_dropout: 0.0,
        };
        let cross =
            CrossAttention::with_init(vs.root() / "cross", cfg, ParamInit::Framework).unwrap();
        vs.double();
        let enc = Tensor::randn([2, 5, 16], F64);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0])
            .view([2, 5])
            .to_kind(Kind::Bool);
        let memory = cross.memory(&enc, &mask, false).unwrap();
        let x = Tensor::randn([6, 2, 16], F64); // 3 hypotheses of each sentence, 2 steps
        let rows = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1]);
        let shared = cross.forward_t(&x, &memory, false).unwrap();
        let copied = cross
            .forward_t(&x, &memory.select(&rows).unwrap(), false)
            .unwrap();
        assert_eq!(memory.rows(), 2);
        assert_close(&format!("{kind:?}"), &shared, &copied, 1e-12, 1e-12);
        // rows that are no multiple of the sentences
        assert!(cross.forward_t(&x.narrow(0, 0, 5), &memory, false).is_err());
    }
}
