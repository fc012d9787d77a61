//! Bad input gives an `Err` naming the tensor and the expected shape: never a panic.

use fwp::{
    fast_weight, ops, AttentionConfig, AttentionKind, Backend, FastWeightConfig, FeatureMap,
    MultiHeadAttention, Normalisation, UpdateRule,
};
use tch::{nn, Device, Kind, Tensor};

fn t(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// Runs fast_weight and returns its error message, failing the test if it succeeded.
fn err(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    beta: Option<&Tensor>,
    s0: Option<&Tensor>,
    rule: UpdateRule,
    backend: Backend,
) -> String {
    match fast_weight(q, k, v, beta, s0, rule, backend) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, words: &[&str]) {
    for w in words {
        assert!(
            msg.contains(w),
            "error message {msg:?} should mention {w:?}"
        );
    }
    println!("ok: {msg}");
}

#[test]
fn wrong_rank_and_sizes() {
    let (q, k, v, beta) = (
        t(&[2, 3, 7, 4]),
        t(&[2, 3, 7, 4]),
        t(&[2, 3, 7, 5]),
        t(&[2, 3, 7]),
    );
    let d = Backend::default();
    assert_mentions(
        &err(&t(&[2, 7, 4]), &k, &v, None, None, UpdateRule::Sum, d),
        &["q", "[B, H, T, d_k]", "[2, 7, 4]"],
    );
    assert_mentions(
        &err(&q, &t(&[2, 3, 7, 6]), &v, None, None, UpdateRule::Sum, d),
        &["k", "[2, 3, 7, 4]", "[2, 3, 7, 6]"],
    );
    assert_mentions(
        &err(&q, &k, &t(&[2, 3, 8, 5]), None, None, UpdateRule::Sum, d),
        &["v", "[B, H, T, d_v]", "[2, 3, 7, ?]"],
    );
    assert_mentions(
        &err(&q, &k, &v, Some(&t(&[2, 3, 6])), None, UpdateRule::Delta, d),
        &["beta", "[2, 3, 7]"],
    );
    assert_mentions(
        &err(
            &q,
            &k,
            &v,
            Some(&beta),
            Some(&t(&[2, 3, 5, 4])),
            UpdateRule::Delta,
            d,
        ),
        &["initial state", "[2, 3, 4, 5]"],
    );
    assert_mentions(
        &err(&q, &k, &v, None, None, UpdateRule::Delta, d),
        &["beta", "delta rule"],
    );
    assert_mentions(
        &err(&q, &k, &v, Some(&beta), None, UpdateRule::Sum, d),
        &["beta", "sum rule"],
    );
    assert_mentions(
        &err(
            &q,
            &k,
            &v,
            None,
            None,
            UpdateRule::Sum,
            Backend::Chunked { chunk_size: 0 },
        ),
        &["chunk_size", "0"],
    );
    let empty = |w| t(&[2, 3, 0, w]);
    assert_mentions(
        &err(
            &empty(4),
            &empty(4),
            &empty(5),
            None,
            None,
            UpdateRule::Sum,
            d,
        ),
        &["T = 0"],
    );
}

#[test]
fn wrong_dtypes() {
    let (q, v) = (t(&[1, 1, 3, 4]), t(&[1, 1, 3, 4]));
    let ints = Tensor::ones([1, 1, 3, 4], (Kind::Int64, Device::Cpu));
    let d = Backend::default();
    assert_mentions(
        &err(&ints, &ints, &ints, None, None, UpdateRule::Sum, d),
        &["q", "floating-point", "Int64"],
    );
    assert_mentions(
        &err(
            &q,
            &q.to_kind(Kind::Double),
            &v,
            None,
            None,
            UpdateRule::Sum,
            d,
        ),
        &["k", "Double", "Float"],
    );
    assert_mentions(
        &err(
            &q,
            &q,
            &v.to_kind(Kind::Half),
            None,
            None,
            UpdateRule::Sum,
            d,
        ),
        &["v", "Half"],
    );
    let beta = Tensor::ones([1, 1, 3], (Kind::Double, Device::Cpu));
    assert_mentions(
        &err(&q, &q, &v, Some(&beta), None, UpdateRule::Delta, d),
        &["beta", "Double"],
    );
}

#[test]
fn mismatched_devices() {
    if !tch::Cuda::is_available() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED mismatched_devices on CUDA: no CUDA GPU visible"
        );
        return;
    }
    let q = t(&[1, 1, 3, 4]);
    let k = q.to_device(Device::Cuda(0));
    assert_mentions(
        &err(&q, &k, &q, None, None, UpdateRule::Sum, Backend::default()),
        &["k", "device"],
    );
}

#[test]
fn sum_norm_op_rejects_bad_input() {
    let ints = Tensor::ones([2, 3], (Kind::Int64, Device::Cpu));
    assert_mentions(
        &ops::sum_norm(&ints, 1e-6).unwrap_err().to_string(),
        &["x", "Int64"],
    );
    assert_mentions(
        &ops::sum_norm(&t(&[2, 3]), f64::NAN)
            .unwrap_err()
            .to_string(),
        &["eps"],
    );
    assert_mentions(
        &ops::sum_norm(&t(&[2, 3]), -1.0).unwrap_err().to_string(),
        &["eps"],
    );
    assert_mentions(
        &ops::sum_norm(&Tensor::from(1.0f32), 1e-6)
            .unwrap_err()
            .to_string(),
        &["x", "scalar"],
    );
}

#[test]
fn bad_layer_configs() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = |kind| AttentionConfig {
        d_model: 16,
        n_heads: 2,
        d_head: 8,
        kind,
        attn_dropout: 0.0,
    };
    let delta_attn = FastWeightConfig {
        normalisation: Normalisation::Attention,
        ..FastWeightConfig::delta(FeatureMap::Linear)
    };
    let e = MultiHeadAttention::new(vs.root() / "a", cfg(AttentionKind::FastWeight(delta_attn)))
        .unwrap_err();
    assert_mentions(&e.to_string(), &["Attention", "delta rule"]);
    let dpfp = FastWeightConfig::delta(FeatureMap::Dpfp { nu: 16 });
    let e =
        MultiHeadAttention::new(vs.root() / "b", cfg(AttentionKind::FastWeight(dpfp))).unwrap_err();
    assert_mentions(&e.to_string(), &["DPFP nu", "16"]);
    let mut zero_heads = cfg(AttentionKind::Softmax);
    zero_heads.n_heads = 0;
    assert_mentions(
        &MultiHeadAttention::new(vs.root() / "c", zero_heads)
            .unwrap_err()
            .to_string(),
        &["n_heads"],
    );
    let layer = MultiHeadAttention::new(vs.root() / "d", cfg(AttentionKind::Softmax)).unwrap();
    assert_mentions(
        &layer
            .forward_t(&t(&[2, 5, 12]), None, false)
            .unwrap_err()
            .to_string(),
        &["x", "d_model", "[2, 5, 12]"],
    );
}
