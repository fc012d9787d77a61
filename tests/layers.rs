//! Layers: every attention variant is causal; fast-weight layers give the same outputs and
//! parameter gradients with the Reference and Chunked backends, and processing a sequence in
//! segments with carried state equals processing it whole; a small LM trains. Tolerances are
//! relative to the largest magnitude compared: tests running side by side share libtorch's random
//! generator, so their inputs differ from run to run, and the unnormalised delta rule can grow to
//! ~1e7, where a fixed absolute tolerance of 1e-12 is below the rounding.

mod common;

use common::{assert_close_scaled, rng_lock, seeded};
use fwp::{
    AttentionConfig, AttentionKind, Backend, BlockConfig, Conventions, FastWeightConfig,
    FeatureMap, LanguageModel, LayerNormPlacement, ModelConfig, MultiHeadAttention, Normalisation,
    ParamInit, PositionOrder,
};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

fn variants() -> Vec<(&'static str, AttentionKind)> {
    let fw = |c: FastWeightConfig| AttentionKind::FastWeight(c);
    vec![
        ("softmax", AttentionKind::Softmax),
        (
            "linear sum attn-norm",
            fw(FastWeightConfig::sum(FeatureMap::Linear)),
        ),
        (
            "dpfp1 sum sum+attn-norm",
            fw(FastWeightConfig {
                normalisation: Normalisation::SumAndAttention,
                ..FastWeightConfig::sum(FeatureMap::Dpfp { nu: 1 })
            }),
        ),
        (
            "favor16 sum attn-norm scaled",
            fw(FastWeightConfig {
                scale_output: true,
                ..FastWeightConfig::sum(FeatureMap::Favor { m: 16 })
            }),
        ),
        (
            "linear delta sum-norm",
            fw(FastWeightConfig::delta(FeatureMap::Linear)),
        ),
        (
            "dpfp2 delta sum-norm",
            fw(FastWeightConfig::delta(FeatureMap::Dpfp { nu: 2 })),
        ),
        (
            "linear delta sum+attn-norm scaled (the authors' LM layer)",
            fw(FastWeightConfig {
                normalisation: Normalisation::SumAndAttention,
                eps: 1e-5,
                scale_output: true,
                ..FastWeightConfig::delta(FeatureMap::Linear)
            }),
        ),
        (
            "favor8 delta sum+attn-norm favor-eps",
            fw(FastWeightConfig {
                normalisation: Normalisation::SumAndAttention,
                favor_eps: 1e-4,
                ..FastWeightConfig::delta(FeatureMap::Favor { m: 8 })
            }),
        ),
        (
            "identity delta none",
            fw(FastWeightConfig {
                normalisation: Normalisation::None,
                ..FastWeightConfig::delta(FeatureMap::Identity)
            }),
        ),
    ]
}

fn layer(vs: &nn::VarStore, kind: AttentionKind) -> MultiHeadAttention {
    let cfg = AttentionConfig {
        d_model: 12,
        n_heads: 3,
        d_head: 4,
        kind,
        attn_dropout: 0.0,
    };
    MultiHeadAttention::new(vs.root() / "attn", cfg).unwrap()
}

fn with_backend(kind: AttentionKind, backend: Backend) -> AttentionKind {
    match kind {
        AttentionKind::FastWeight(c) => {
            AttentionKind::FastWeight(FastWeightConfig { backend, ..c })
        }
        softmax => softmax,
    }
}

#[test]
fn every_variant_is_causal() {
    let _rng = seeded(31);
    for (name, kind) in variants() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let l = layer(&vs, kind);
        vs.double();
        let x = Tensor::randn([2, 20, 12], (Kind::Double, Device::Cpu));
        let (y, _) = l.forward_t(&x, None, false).unwrap();
        let x2 = x.copy();
        let _ = x2.narrow(1, 13, 7).fill_(5.0); // change the future from t = 13
        let (y2, _) = l.forward_t(&x2, None, false).unwrap();
        println!("{name}");
        assert_close_scaled(
            "past outputs",
            &y2.narrow(1, 0, 13),
            &y.narrow(1, 0, 13),
            1e-12,
        );
        assert!(
            f64::try_from((y2.narrow(1, 13, 7) - y.narrow(1, 13, 7)).abs().max()).unwrap() > 1e-6
        );
    }
}

#[test]
fn fast_layers_match_reference_layer_with_parameter_gradients() {
    let _rng = seeded(32);
    for (name, kind) in variants().into_iter().skip(1) {
        for backend in [Backend::Chunked { chunk_size: 8 }, Backend::Fused] {
            let mut vs_ref = nn::VarStore::new(Device::Cpu);
            let l_ref = layer(&vs_ref, with_backend(kind, Backend::Reference));
            vs_ref.double();
            let mut vs_fast = nn::VarStore::new(Device::Cpu);
            let l_fast = layer(&vs_fast, with_backend(kind, backend));
            vs_fast.double();
            vs_fast.copy(&vs_ref).unwrap();
            let x = Tensor::randn([2, 21, 12], (Kind::Double, Device::Cpu));
            let w = Tensor::randn([2, 21, 12], (Kind::Double, Device::Cpu));
            println!("{name} {backend:?}");
            let (y_ref, _) = l_ref.forward_t(&x, None, false).unwrap();
            let (y_fast, _) = l_fast.forward_t(&x, None, false).unwrap();
            assert_close_scaled("y", &y_fast, &y_ref, 1e-10);
            (&y_ref * &w).sum(Kind::Double).backward();
            (&y_fast * &w).sum(Kind::Double).backward();
            let (p_ref, p_fast) = (vs_ref.variables(), vs_fast.variables());
            for (pname, p) in &p_ref {
                if p.requires_grad() {
                    assert_close_scaled(
                        &format!("d{pname}"),
                        &p_fast[pname].grad(),
                        &p.grad(),
                        1e-10,
                    );
                }
            }
        }
    }
}

#[test]
fn segments_with_carried_state_equal_the_whole_sequence() {
    let _rng = seeded(33);
    for (name, kind) in variants().into_iter().skip(1) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let l = layer(&vs, kind);
        vs.double();
        let x = Tensor::randn([2, 30, 12], (Kind::Double, Device::Cpu));
        let (whole, _) = l.forward_t(&x, None, false).unwrap();
        let (first, state) = l.forward_t(&x.narrow(1, 0, 11), None, false).unwrap();
        let (second, _) = l
            .forward_t(&x.narrow(1, 11, 19), state.as_ref(), false)
            .unwrap();
        println!("{name}");
        assert_close_scaled(
            "segmented",
            &Tensor::cat(&[first, second], 1),
            &whole,
            1e-12,
        );
    }
}

#[test]
fn language_model_trains_post_and_pre_ln() {
    let _rng = rng_lock(); // seeded below, once per configuration
    for layer_norm in [LayerNormPlacement::Post, LayerNormPlacement::Pre] {
        for (name, kind) in [variants()[0], variants()[4]] {
            tch::manual_seed(34);
            let vs = nn::VarStore::new(Device::Cpu);
            let attention = AttentionConfig {
                d_model: 32,
                n_heads: 2,
                d_head: 16,
                kind,
                attn_dropout: 0.0,
            };
            let cfg = ModelConfig {
                vocab: 20,
                n_layers: 2,
                block: BlockConfig {
                    attention,
                    d_ff: 64,
                    dropout: 0.0,
                    layer_norm,
                },
                conventions: Default::default(),
            };
            let model = LanguageModel::new(vs.root(), cfg).unwrap();
            let tokens = Tensor::randint(20, [4, 16], (Kind::Int64, Device::Cpu));
            let loss = |train| {
                let (logits, _) = model
                    .forward_t(&tokens.narrow(1, 0, 15), None, 0, train)
                    .unwrap();
                assert_eq!(logits.size(), vec![4, 15, 20]);
                logits
                    .view([-1, 20])
                    .cross_entropy_for_logits(&tokens.narrow(1, 1, 15).reshape([-1]))
            };
            let before = f64::try_from(loss(false)).unwrap();
            let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
            for _ in 0..40 {
                opt.backward_step(&loss(true));
            }
            let after = f64::try_from(loss(false)).unwrap();
            println!("{name} {layer_norm:?}: loss {before:.3} -> {after:.3}");
            assert!(
                after < 0.7 * before,
                "{name} {layer_norm:?}: loss {before} -> {after}"
            );
        }
    }
}

/// Initialisation: `ParamInit::Normal { std: 0.02 }` (the authors' LMs) gives every linear weight
/// N(0, 0.02²), zero biases and LayerNorm scales N(1, 0.02²), and the output bias starts at 0;
/// the framework's init keeps tch's Kaiming-uniform bound sqrt(6 / fan_in) and LayerNorm scale 1.
#[test]
fn language_model_initialisation_follows_its_conventions() {
    let _rng = seeded(35);
    for authors in [true, false] {
        let vs = nn::VarStore::new(Device::Cpu);
        let attention = AttentionConfig {
            d_model: 64,
            n_heads: 4,
            d_head: 16,
            kind: AttentionKind::FastWeight(FastWeightConfig::delta(FeatureMap::Linear)),
            attn_dropout: 0.0,
        };
        let conventions = if authors {
            Conventions {
                init: ParamInit::Normal { std: 0.02 },
                output_bias: true,
                positions: PositionOrder::Descending,
                output: fwp::OutputLayer::Full,
            }
        } else {
            Conventions::default()
        };
        let cfg = ModelConfig {
            vocab: 50,
            n_layers: 2,
            block: BlockConfig {
                attention,
                d_ff: 256,
                dropout: 0.0,
                layer_norm: LayerNormPlacement::Post,
            },
            conventions,
        };
        LanguageModel::new(vs.root(), cfg).unwrap();
        let vars = vs.variables();
        assert_eq!(vars.contains_key("output_bias"), authors);
        let mut linear_weights = 0;
        for (name, t) in &vars {
            let std = f64::try_from(t.std(true)).unwrap();
            let mean = f64::try_from(t.mean(Kind::Double)).unwrap();
            let largest = f64::try_from(t.abs().max()).unwrap();
            let layer_norm = name.contains("ln_");
            if name.ends_with("bias") {
                if authors {
                    assert_eq!(largest, 0.0, "{name}: zero bias");
                }
            } else if layer_norm {
                if authors {
                    assert!(
                        (mean - 1.0).abs() < 0.01 && (std - 0.02).abs() < 0.008,
                        "{name}: {mean} {std}"
                    );
                } else {
                    assert_eq!((mean, std), (1.0, 0.0), "{name}");
                }
            } else if name.starts_with("blocks") {
                linear_weights += 1;
                let fan_in = t.size()[1] as f64;
                if authors {
                    assert!(
                        mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
                        "{name}: N(0, 0.02): {mean} {std}"
                    );
                } else {
                    let bound = (6.0 / fan_in).sqrt();
                    assert!(
                        largest <= bound && largest > 0.9 * bound,
                        "{name}: {largest} vs {bound}"
                    );
                }
            }
        }
        assert_eq!(
            linear_weights,
            2 * 4,
            "qkv_beta, out, ff_in, ff_out per block"
        );
    }
}

/// Descending positions (the authors' LMs) count back from the segment's end, so the offset a
/// segment starts at does not change its outputs; ascending positions do depend on it.
#[test]
fn descending_positions_ignore_the_offset() {
    let _rng = seeded(36);
    for (positions, same) in [
        (PositionOrder::Descending, true),
        (PositionOrder::Ascending, false),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            vocab: 20,
            n_layers: 1,
            block: BlockConfig {
                attention: AttentionConfig {
                    d_model: 16,
                    n_heads: 2,
                    d_head: 8,
                    kind: AttentionKind::Softmax,
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
        let model = LanguageModel::new(vs.root(), cfg).unwrap();
        let tokens = Tensor::randint(20, [2, 9], (Kind::Int64, Device::Cpu));
        let (a, _) = model.forward_t(&tokens, None, 0, false).unwrap();
        let (b, _) = model.forward_t(&tokens, None, 37, false).unwrap();
        let gap = f64::try_from((a - b).abs().max()).unwrap();
        assert_eq!(gap == 0.0, same, "{positions:?}: {gap}");
    }
}

fn small_lm(vs: &nn::VarStore, output: fwp::OutputLayer) -> anyhow::Result<LanguageModel> {
    let cfg = ModelConfig {
        vocab: 40,
        n_layers: 1,
        block: BlockConfig {
            attention: AttentionConfig {
                d_model: 16,
                n_heads: 2,
                d_head: 8,
                kind: AttentionKind::FastWeight(FastWeightConfig::delta(FeatureMap::Linear)),
                attn_dropout: 0.0,
            },
            d_ff: 32,
            dropout: 0.0,
            layer_norm: LayerNormPlacement::Post,
        },
        conventions: Conventions {
            output_bias: true,
            output,
            ..Conventions::default()
        },
    };
    LanguageModel::new(vs.root(), cfg)
}

/// The adaptive softmax's distribution is normalised over the whole vocabulary, and its fast
/// scoring (`nll_sum`: tails only where a target lies) gives the loss and every parameter gradient
/// of scoring with the full log-probabilities (its plain twin). For the full softmax, `nll_sum`
/// is the summed cross-entropy of the logits.
#[test]
fn adaptive_softmax_is_normalised_and_its_scoring_matches_the_full_distribution() {
    let _rng = seeded(37);
    for output in [
        fwp::OutputLayer::Adaptive { cutoffs: [5, 17] },
        fwp::OutputLayer::Full,
    ] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = small_lm(&vs, output).unwrap();
        vs.double();
        // nonzero output and cluster biases, so that they are exercised
        for (name, t) in vs.variables() {
            if name.contains("bias") {
                tch::no_grad(|| t.shallow_clone().copy_(&(Tensor::randn_like(&t) * 0.3)));
            }
        }
        let tokens = Tensor::randint(40, [3, 12], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(40, [3, 12], (Kind::Int64, Device::Cpu));
        let (hidden, _) = model.hidden_t(&tokens, None, 0, false).unwrap();
        let lp = model.logits(&hidden).unwrap().log_softmax(-1, Kind::Double);
        if matches!(output, fwp::OutputLayer::Adaptive { .. }) {
            let raw = model.logits(&hidden).unwrap();
            let total = raw
                .exp()
                .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
            assert_close_scaled("sum of p", &total, &total.ones_like(), 1e-12);
        }
        let full = -lp
            .gather(-1, &targets.unsqueeze(-1), false)
            .sum(Kind::Double);
        let fast = model.nll_sum(&hidden, &targets).unwrap();
        assert_close_scaled(&format!("{output:?} nll"), &fast, &full, 1e-12);
        let grads = |loss: &Tensor| {
            let vars = vs.trainable_variables();
            Tensor::run_backward(&[loss], &vars, true, false)
        };
        for (g_fast, g_full) in grads(&fast).iter().zip(grads(&full)) {
            assert_close_scaled(&format!("{output:?} gradient"), g_fast, &g_full, 1e-10);
        }
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let e = small_lm(&vs, fwp::OutputLayer::Adaptive { cutoffs: [30, 40] }).unwrap_err();
    assert!(e.to_string().contains("cutoffs"), "{e}");
}
