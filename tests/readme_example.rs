//! The README's code examples, kept compiling and running.

use fwp::*;
use tch::{Device, Kind, Tensor};

#[test]
fn readme_model_example() -> anyhow::Result<()> {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let conventions = Conventions::default();
    let fw = FastWeightConfig::delta(FeatureMap::Dpfp { nu: 2 }); // delta rule, sum-normalised
    let sum = FastWeightConfig::sum(FeatureMap::Linear); // Katharopoulos linear attention
    let custom = FastWeightConfig {
        backend: Backend::Reference,
        scale_output: true,
        ..fw
    };
    let attn = AttentionConfig {
        d_model: 128,
        n_heads: 8,
        d_head: 16,
        kind: AttentionKind::FastWeight(fw),
        attn_dropout: 0.0,
    };
    let block = BlockConfig {
        attention: attn,
        d_ff: 2048,
        dropout: 0.1,
        layer_norm: LayerNormPlacement::Post,
    };
    let model = LanguageModel::new(
        vs.root(),
        ModelConfig {
            vocab: 1000,
            n_layers: 16,
            block,
            conventions,
        },
    )?;
    let (logits, _) = model.forward_t(
        &Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu)),
        None,
        0,
        false,
    )?;
    assert_eq!(logits.size(), vec![1, 5, 1000]);
    assert_eq!(sum.rule, UpdateRule::Sum);
    assert_eq!(custom.backend, Backend::Reference);
    Ok(())
}

#[test]
fn readme_recurrence_example() -> anyhow::Result<()> {
    let opts = (Kind::Float, Device::Cpu);
    let (q, k, v) = (
        Tensor::randn([2, 4, 10, 8], opts),
        Tensor::randn([2, 4, 10, 8], opts),
        Tensor::randn([2, 4, 10, 6], opts),
    );
    let (beta, s0) = (
        Tensor::rand([2, 4, 10], opts),
        Tensor::zeros([2, 4, 8, 6], opts),
    );
    let r = fwp::fast_weight(
        &q,
        &k,
        &v,
        Some(&beta),
        Some(&s0),
        UpdateRule::Delta,
        Backend::default(),
    )?;
    assert_eq!(r.out.size(), vec![2, 4, 10, 6]);
    assert_eq!(r.state.size(), vec![2, 4, 8, 6]);
    // and the error message the README quotes
    let e = fwp::fast_weight(
        &q,
        &Tensor::randn([2, 4, 10, 6], opts),
        &v,
        None,
        None,
        UpdateRule::Sum,
        Backend::default(),
    );
    assert!(e
        .unwrap_err()
        .to_string()
        .starts_with("k: expected shape [B, H, T, d_k] = [2, 4, 10, 8], got [2, 4, 10, 6]"));
    Ok(())
}
