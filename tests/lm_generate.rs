//! Generation with carried state (fwp::lm::generate) against its plain twins: the fast-weight
//! generator gives the stateful evaluation's logits (segments of `context` tokens, state carried),
//! the softmax generator with a bounded cache gives a fresh run over its current segment, and the
//! first segment is the same for both as a fresh run of the prefix.

mod common;

use common::{assert_close, rng_lock};
use fwp::attention::{AttentionConfig, AttentionKind, FastWeightConfig};
use fwp::block::{BlockConfig, LayerNormPlacement};
use fwp::feature_map::FeatureMap;
use fwp::lm::generate::{Generator, Window};
use fwp::model::{Conventions, LanguageModel, ModelConfig, PositionOrder};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 19;

fn model(kind: AttentionKind, positions: PositionOrder) -> (nn::VarStore, LanguageModel) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        vocab: VOCAB,
        n_layers: 2,
        block: BlockConfig {
            attention: AttentionConfig {
                d_model: 16,
                n_heads: 2,
                d_head: 8,
                kind,
                attn_dropout: 0.0,
            },
            d_ff: 32,
            dropout: 0.0,
            layer_norm: LayerNormPlacement::Post,
        },
        conventions: Conventions {
            positions,
            ..Conventions::default()
        },
    };
    let m = LanguageModel::new(vs.root(), cfg).unwrap();
    vs.double();
    (vs, m)
}

fn kinds() -> Vec<(&'static str, AttentionKind)> {
    let fw = |c: FastWeightConfig| AttentionKind::FastWeight(c);
    vec![
        ("softmax", AttentionKind::Softmax),
        ("sum:linear", fw(FastWeightConfig::sum(FeatureMap::Linear))),
        (
            "sum:dpfp:1",
            fw(FastWeightConfig::sum(FeatureMap::Dpfp { nu: 1 })),
        ),
        (
            "delta:dpfp:1",
            fw(FastWeightConfig::delta(FeatureMap::Dpfp { nu: 1 })),
        ),
    ]
}

/// Logits `[T, V]` of a fresh run over `ids` as one segment.
fn fresh(m: &LanguageModel, ids: &[i64]) -> Tensor {
    let x = Tensor::from_slice(ids).unsqueeze(0);
    m.forward_t(&x, None, 0, false).unwrap().0.squeeze_dim(0)
}

#[test]
fn generators_match_their_twins_token_by_token() {
    let _rng = rng_lock();
    let context = 6i64;
    let n = 3 * context as usize + 2;
    for positions in [PositionOrder::Ascending, PositionOrder::Descending] {
        for (name, kind) in kinds() {
            tch::manual_seed(7);
            let (_vs, m) = model(kind, positions);
            let text: Vec<i64> = Vec::try_from(Tensor::randint(
                VOCAB,
                [n as i64],
                (Kind::Int64, Device::Cpu),
            ))
            .unwrap();
            let label = format!("{name}, {positions:?}");
            tch::no_grad(|| {
                // the twin of every step, for text[..=i]
                let want: Vec<Tensor> = if m.has_fast_weights() {
                    // the stateful evaluation: full segments of `context`, the state carried
                    let mut states = None;
                    let mut out = Vec::new();
                    for seg in text.chunks(context as usize) {
                        // a segment's positions are those of a full one (generation cannot know
                        // where the text ends): pad the last with any tokens, causality keeps
                        // them out of the earlier logits
                        let mut ids = seg.to_vec();
                        ids.resize(context as usize, 0);
                        let x = Tensor::from_slice(&ids).unsqueeze(0);
                        let (logits, s) = m.forward_t(&x, states.as_deref(), 0, false).unwrap();
                        out.extend((0..seg.len() as i64).map(|j| logits.select(0, 0).select(0, j)));
                        states = Some(s);
                    }
                    out
                } else {
                    // a segment holds `context` tokens; the next starts from the last half
                    let (mut start, mut out) = (0usize, Vec::new());
                    for i in 0..n {
                        if i == start + context as usize {
                            start = i - context as usize / 2;
                        }
                        let mut ids = text[start..=i].to_vec();
                        let j = ids.len() - 1;
                        ids.resize(context as usize, 0); // a full segment's positions
                        out.push(fresh(&m, &ids).select(0, j as i64));
                    }
                    out
                };
                let mut g = Generator::new(&m, context, Window::Context).unwrap();
                let mut bytes = Vec::new();
                for (i, &id) in text.iter().enumerate() {
                    let got = g.feed(&[id]).unwrap();
                    assert_close(
                        &format!("{label}: token {i}"),
                        &got,
                        &want[i].to_kind(Kind::Float),
                        1e-5,
                        1e-5,
                    );
                    bytes.push(g.cache_bytes());
                }
                // fast weights: constant memory; softmax: at most a context of keys
                let first = bytes[0];
                if m.has_fast_weights() {
                    assert!(bytes.iter().all(|&b| b == first), "{label}: {bytes:?}");
                } else {
                    assert!(
                        bytes.iter().all(|&b| b <= first * context as usize),
                        "{label}: {bytes:?}"
                    );
                }
                // several tokens at once: the same as one by one
                let mut g = Generator::new(&m, context, Window::Context).unwrap();
                let _ = g.feed(&text[..5]).unwrap();
                let got = g.feed(&text[5..n - 1]).unwrap();
                assert_close(
                    &format!("{label}: in two reads"),
                    &got,
                    &want[n - 2].to_kind(Kind::Float),
                    1e-5,
                    1e-5,
                );
            });
        }
    }
}

#[test]
fn an_unbounded_softmax_cache_grows_and_matches_a_fresh_run() {
    let _rng = rng_lock();
    tch::manual_seed(8);
    let (_vs, m) = model(AttentionKind::Softmax, PositionOrder::Ascending);
    let text: Vec<i64> = (0..20).map(|i| (i * 7 + 3) % VOCAB).collect();
    tch::no_grad(|| {
        let want = fresh(&m, &text);
        let mut g = Generator::new(&m, 4, Window::Unbounded).unwrap();
        let mut last = 0;
        for (i, &id) in text.iter().enumerate() {
            let got = g.feed(&[id]).unwrap();
            assert_close(
                &format!("token {i}"),
                &got,
                &want.select(0, i as i64).to_kind(Kind::Float),
                1e-5,
                1e-5,
            );
            assert!(g.cache_bytes() > last, "the cache grows with every token");
            last = g.cache_bytes();
        }
    });
}
