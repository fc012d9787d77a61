//! Bad input gives an `Err` naming the tensor and the expected shape: never a panic.

mod common;

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
    if !common::cuda_or_skip("mismatched_devices") {
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
    assert_mentions(
        &e.to_string(),
        &["Attention", "delta rule", "SumAndAttention"],
    );
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

#[test]
fn sparse_inputs_are_named_with_their_layout() {
    let q = t(&[1, 1, 3, 4]);
    let coo = q.to_sparse_sparse_dim(2);
    assert_mentions(
        &err(
            &coo,
            &q,
            &q,
            None,
            None,
            UpdateRule::Sum,
            Backend::default(),
        ),
        &["q", "dense", "sparse (COO)"],
    );
    let csr = t(&[1, 1, 3, 4]).view([3, 4]).to_sparse_csr(None::<i64>);
    let e = fwp::check::float_like("k", &csr, None).unwrap_err();
    assert_mentions(&e.to_string(), &["k", "sparse CSR"]);
}

fn layer(kind: AttentionKind) -> MultiHeadAttention {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = AttentionConfig {
        d_model: 8,
        n_heads: 2,
        d_head: 4,
        kind,
        attn_dropout: 0.0,
    };
    MultiHeadAttention::new(vs.root() / "attn", cfg).unwrap()
}

#[test]
fn layers_refuse_inputs_of_another_dtype() {
    for kind in [
        AttentionKind::Softmax,
        AttentionKind::FastWeight(FastWeightConfig::delta(FeatureMap::Linear)),
    ] {
        let l = layer(kind);
        for bad in [Kind::Double, Kind::Int64] {
            let x = Tensor::ones([2, 5, 8], (bad, Device::Cpu));
            let e = l.forward_t(&x, None, false).unwrap_err().to_string();
            assert_mentions(&e, &["x", &format!("{bad:?}"), "Float"]);
        }
    }
}

#[test]
fn language_model_refuses_token_ids_outside_the_vocabulary() {
    use fwp::{BlockConfig, LanguageModel, LayerNormPlacement, ModelConfig};
    let vs = nn::VarStore::new(Device::Cpu);
    let attention = AttentionConfig {
        d_model: 8,
        n_heads: 2,
        d_head: 4,
        kind: AttentionKind::FastWeight(FastWeightConfig::delta(FeatureMap::Linear)),
        attn_dropout: 0.0,
    };
    let cfg = ModelConfig {
        vocab: 10,
        n_layers: 1,
        block: BlockConfig {
            attention,
            d_ff: 16,
            dropout: 0.0,
            layer_norm: LayerNormPlacement::Post,
        },
        conventions: Default::default(),
    };
    let model = LanguageModel::new(vs.root(), cfg).unwrap();
    let ok = Tensor::from_slice(&[1i64, 2, 9]).view([1, 3]);
    assert!(model.forward_t(&ok, None, 0, false).is_ok());
    for (ids, bad) in [([1i64, 10, 2], "10"), ([-1i64, 3, 2], "-1")] {
        let x = Tensor::from_slice(&ids).view([1, 3]);
        let e = model.forward_t(&x, None, 0, false).unwrap_err().to_string();
        assert_mentions(&e, &["tokens", bad, "10"]);
    }
}

#[test]
fn allocations_too_large_name_the_parameter_and_its_size() {
    // FAVOR+ with 1e14 random features: a [1e14, 4] projection, 1.4 PiB of f32. Each size here is
    // beyond the 128 TiB a Linux x86-64 process can map by default, so the allocation fails on any
    // machine: 14.6 TiB ([1e12, 4]) was granted on a GPU machine that overcommits memory
    // (vm.overcommit_memory = 1), whose initialisation then wrote it page by page until the test
    // timed out.
    let favor = FastWeightConfig::sum(FeatureMap::Favor {
        m: 100_000_000_000_000,
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = AttentionConfig {
        d_model: 8,
        n_heads: 2,
        d_head: 4,
        kind: AttentionKind::FastWeight(favor),
        attn_dropout: 0.0,
    };
    let e = MultiHeadAttention::new(vs.root() / "attn", cfg).unwrap_err();
    assert_mentions(
        &e.to_string(),
        &["favor_projection", "[100000000000000, 4]", "PiB"],
    );
    // a retrieval model over 5e7 keys: an embedding of 5e7 x 1.1e8 floats
    use fwp::retrieval::{ModelConfig, RetrievalModel, Variant};
    let cfg = ModelConfig::new(
        50_000_000,
        64,
        Variant::Softmax,
        Normalisation::Sum,
        Backend::Auto,
    );
    let e = RetrievalModel::new(vs.root() / "retrieval", cfg).unwrap_err();
    assert_mentions(
        &e.to_string(),
        &["key_embedding.weight", "[50000000, 110000000]", "PiB"],
    );
    // a shape whose element count does not fit in an i64
    let e = fwp::param::var(
        &(vs.root() / "huge"),
        "w",
        &[1 << 40, 1 << 40],
        nn::Init::Const(0.0),
    )
    .unwrap_err();
    assert_mentions(&e.to_string(), &["huge.w", "elements"]);
}

#[test]
fn fused_has_no_double_backward_and_says_so() {
    let leaf = |s: &[i64]| t(s).set_requires_grad(true);
    let (q, k, v) = (
        leaf(&[1, 2, 5, 4]),
        leaf(&[1, 2, 5, 4]),
        leaf(&[1, 2, 5, 3]),
    );
    let beta = Tensor::rand([1, 2, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    for (rule, b) in [(UpdateRule::Sum, None), (UpdateRule::Delta, Some(&beta))] {
        for backend in [Backend::Fused, Backend::Auto] {
            let r = fast_weight(&q, &k, &v, b, None, rule, backend).unwrap();
            let loss = r.out.square().sum(Kind::Float);
            let e = Tensor::f_run_backward(&[&loss], &[&q], true, true).unwrap_err();
            assert_mentions(
                &e.to_string(),
                &["double backward", "Backend::Chunked", "Backend::Reference"],
            );
            // first order still works
            assert!(Tensor::f_run_backward(&[&loss], &[&q], false, false).is_ok());
        }
        // the reference twins do have second-order gradients
        let r = fast_weight(
            &q,
            &k,
            &v,
            b,
            None,
            rule,
            Backend::Chunked { chunk_size: 2 },
        )
        .unwrap();
        let g = Tensor::run_backward(&[r.out.square().sum(Kind::Float)], &[&q], true, true);
        let gg = Tensor::run_backward(&[g[0].square().sum(Kind::Float)], &[&k], false, false);
        assert!(gg[0].defined() && f64::try_from(gg[0].abs().sum(Kind::Float)).unwrap() > 0.0);
    }
}

#[test]
fn raw_backward_op_checks_its_checkpoints_and_gradients() {
    let (q, k, v) = (t(&[1, 2, 9, 4]), t(&[1, 2, 9, 4]), t(&[1, 2, 9, 3]));
    let saved = ops::fast_weight_forward_op(&q, &k, &v, None, None, 4).unwrap();
    assert_eq!(saved.checkpoints.size(), [1, 2, 3, 4, 3]);
    assert_eq!(
        saved.residuals.numel(),
        0,
        "the sum rule saves no residuals"
    );
    let go = saved.out.ones_like();
    // the forward's saved tensors with the checkpoints, final state or residuals replaced
    let with =
        |ckpt: Option<&Tensor>, last: Option<&Tensor>, resid: Option<&Tensor>| ops::FusedForward {
            out: saved.out.shallow_clone(),
            final_state: last.unwrap_or(&saved.final_state).shallow_clone(),
            checkpoints: ckpt.unwrap_or(&saved.checkpoints).shallow_clone(),
            residuals: resid.unwrap_or(&saved.residuals).shallow_clone(),
        };
    let ckpt = &saved.checkpoints;
    let run = |go: &Tensor, ckpt: &Tensor, gs: Option<&Tensor>| {
        ops::fast_weight_backward_op(go, gs, &q, &k, &v, None, &with(Some(ckpt), None, None), 4)
    };
    assert!(run(&go, ckpt, None).is_ok());
    // a chunk longer than T (N = 1 checkpoint): refused, not a read beyond the buffers
    let first = ckpt.narrow(2, 0, 1);
    let e0 = ops::fast_weight_backward_op(
        &go,
        None,
        &q,
        &k,
        &v,
        None,
        &with(Some(&first), None, None),
        1 << 40,
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert_mentions(&e0, &["chunk", "T = 9"]);
    let e = |r: anyhow::Result<[Tensor; 5]>| r.map(|_| ()).unwrap_err().to_string();
    assert_mentions(
        &e(run(&go, &ckpt.to_kind(Kind::Double), None)),
        &["checkpoints", "Float", "Double"],
    );
    assert_mentions(
        &e(run(&go, &ckpt.narrow(4, 0, 2), None)),
        &["checkpoints", "[1, 2, 3, 4, 3]", "[1, 2, 3, 4, 2]"],
    );
    assert_mentions(
        &e(run(&go, &ckpt.select(0, 0), None)),
        &["checkpoints", "[2, 3, 4, 3]"],
    );
    assert_mentions(
        &e(run(
            &go,
            &Tensor::zeros([1, 2, 3, 5, 3], (Kind::Float, Device::Cpu)),
            None,
        )),
        &["checkpoints", "d_k"],
    );
    assert_mentions(
        &e(run(&go.narrow(1, 0, 1), ckpt, None)),
        &["grad_out", "[1, 2, 9, 3]"],
    );
    assert_mentions(
        &e(run(&go, ckpt, Some(&t(&[1, 2, 3, 3])))),
        &["grad_state", "[1, 2, 4, 3]"],
    );
    // the final state the backward starts the last chunk from, and the delta rule's residuals
    let last = |s: &Tensor| {
        ops::fast_weight_backward_op(&go, None, &q, &k, &v, None, &with(None, Some(s), None), 4)
    };
    assert_mentions(
        &e(last(&saved.final_state.narrow(2, 0, 3))),
        &["final_state", "[1, 2, 4, 3]", "[1, 2, 3, 3]"],
    );
    assert_mentions(
        &e(last(&saved.final_state.to_kind(Kind::Double))),
        &["final_state", "Float", "Double"],
    );
    let beta = t(&[1, 2, 9]).sigmoid();
    let delta = ops::fast_weight_forward_op(&q, &k, &v, Some(&beta), None, 4).unwrap();
    assert_eq!(delta.residuals.size(), [1, 2, 9, 3]);
    let resid = |r: &Tensor| {
        let saved = ops::FusedForward {
            out: delta.out.shallow_clone(),
            final_state: delta.final_state.shallow_clone(),
            checkpoints: delta.checkpoints.shallow_clone(),
            residuals: r.shallow_clone(),
        };
        ops::fast_weight_backward_op(&go, None, &q, &k, &v, Some(&beta), &saved, 4)
    };
    assert!(resid(&delta.residuals).is_ok());
    assert_mentions(
        &e(resid(&saved.residuals)),
        &["residuals", "[1, 2, 9, 3]", "[0]"],
    );
    assert_mentions(
        &e(resid(&delta.residuals.to_kind(Kind::Double))),
        &["residuals", "Float", "Double"],
    );
    if common::cuda_or_skip("raw_backward_op_checks_its_checkpoints_and_gradients") {
        let gpu = ckpt.to_device(Device::Cuda(0));
        assert_mentions(&e(run(&go, &gpu, None)), &["checkpoints", "cuda"]);
        let go_gpu = go.to_device(Device::Cuda(0));
        assert_mentions(&e(run(&go_gpu, ckpt, None)), &["grad_out", "cuda"]);
    }
}
