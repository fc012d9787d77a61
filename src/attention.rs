//! Multi-head causal attention: softmax (libtorch's scaled-dot-product attention) or a fast-weight
//! layer {feature map, update rule, normalisation, backend} (docs/derivations.md Sec. 1-3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::feature_map::{FavorRedraw, FeatureMap, Phi};
use crate::norm::{attention_normalise, sum_normalise, Normalisation};
use crate::param::Linear;
use crate::param::ParamInit;
use crate::recurrence::{fast_weight, Backend, UpdateRule};

/// Everything that defines a fast-weight layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastWeightConfig {
    pub feature_map: FeatureMap,
    pub rule: UpdateRule,
    pub normalisation: Normalisation,
    /// Guards both normalisations' denominators (the authors' code has none: NaN on all-zero
    /// features).
    pub eps: f64,
    pub backend: Backend,
    /// Multiply the output by 1/sqrt(d_head), as the authors' CUDA layers do.
    pub scale_output: bool,
    pub favor_redraw: FavorRedraw,
    /// Added to each FAVOR+ exponential before the 1/sqrt(2m) factor, so that no feature is 0
    /// (the authors' language models: 1e-4; 0 leaves FAVOR+ unbiased). Other maps ignore it.
    #[serde(default)]
    pub favor_eps: f64,
}

impl FastWeightConfig {
    /// The paper's preferred layer: delta rule, sum normalisation, given feature map.
    pub fn delta(feature_map: FeatureMap) -> Self {
        FastWeightConfig {
            feature_map,
            rule: UpdateRule::Delta,
            normalisation: Normalisation::Sum,
            eps: 1e-6,
            backend: Backend::default(),
            scale_output: false,
            favor_redraw: FavorRedraw::Never,
            favor_eps: 0.0,
        }
    }

    /// Linear attention (Katharopoulos et al.): sum rule with attention normalisation.
    pub fn sum(feature_map: FeatureMap) -> Self {
        FastWeightConfig {
            rule: UpdateRule::Sum,
            normalisation: Normalisation::Attention,
            ..Self::delta(feature_map)
        }
    }

    /// The default layer of `rule`: [`FastWeightConfig::sum`] or [`FastWeightConfig::delta`].
    pub fn new(rule: UpdateRule, feature_map: FeatureMap) -> Self {
        match rule {
            UpdateRule::Sum => Self::sum(feature_map),
            UpdateRule::Delta => Self::delta(feature_map),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rule == UpdateRule::Delta && self.normalisation == Normalisation::Attention {
            bail!(
                "normalisation {:?} is not supported with the delta rule: its keys must be \
                 sum-normalised for the update to stay bounded; use Sum (the paper's), \
                 SumAndAttention (the authors' language models: the output also divided by \
                 z . q) or None",
                self.normalisation
            );
        }
        for (name, v) in [("eps", self.eps), ("favor_eps", self.favor_eps)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be finite and >= 0, got {v}");
            }
        }
        Ok(())
    }
}

/// Which attention a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttentionKind {
    Softmax,
    FastWeight(FastWeightConfig),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub kind: AttentionKind,
    /// Dropout on the softmax attention weights (training only).
    pub attn_dropout: f64,
}

/// State a fast-weight layer carries across segments: S `[B, H, d_dot, d_head]` and, with
/// attention normalisation, the key sum z `[B, H, d_dot]`.
#[derive(Debug)]
pub struct FastWeightState {
    pub s: Tensor,
    pub z: Option<Tensor>,
}

/// What mixes the time steps of a layer: softmax attention, or a fast-weight memory with its
/// feature map (which holds the FAVOR+ matrix, where there is one).
#[derive(Debug)]
enum Mixer {
    Softmax,
    FastWeight { cfg: FastWeightConfig, phi: Phi },
}

#[derive(Debug)]
pub struct MultiHeadAttention {
    pub cfg: AttentionConfig,
    /// Fused projection x -> [q; k; v; beta] (beta only for the delta rule), no bias.
    qkvb: Linear,
    out: Linear,
    mixer: Mixer,
}

impl MultiHeadAttention {
    pub fn new(p: nn::Path, cfg: AttentionConfig) -> Result<Self> {
        Self::with_init(p, cfg, ParamInit::Framework)
    }

    /// [`MultiHeadAttention::new`] with the projections started by `init`.
    pub fn with_init(p: nn::Path, cfg: AttentionConfig, init: ParamInit) -> Result<Self> {
        init.check()?;
        for (name, v) in [
            ("d_model", cfg.d_model),
            ("n_heads", cfg.n_heads),
            ("d_head", cfg.d_head),
        ] {
            crate::check::positive(name, v)?;
        }
        let (h, d) = (cfg.n_heads, cfg.d_head);
        let (mixer, n_beta) = match cfg.kind {
            AttentionKind::Softmax => (Mixer::Softmax, 0),
            AttentionKind::FastWeight(fw) => {
                fw.validate()?;
                let phi = Phi::new(&p / "phi", fw.feature_map, d, fw.favor_redraw)?;
                let n_beta = if fw.rule == UpdateRule::Delta { h } else { 0 };
                (Mixer::FastWeight { cfg: fw, phi }, n_beta)
            }
        };
        let qkvb = init.linear(&(&p / "qkv_beta"), cfg.d_model, 3 * h * d + n_beta, false)?;
        let out = init.linear(&(&p / "out"), h * d, cfg.d_model, false)?;
        Ok(MultiHeadAttention {
            cfg,
            qkvb,
            out,
            mixer,
        })
    }

    /// x `[B, T, d_model]` -> `[B, T, d_model]`. `state` continues a fast-weight layer from a
    /// previous segment; the returned state is `Some` for fast-weight layers.
    pub fn forward_t(
        &self,
        x: &Tensor,
        state: Option<&FastWeightState>,
        train: bool,
    ) -> Result<(Tensor, Option<FastWeightState>)> {
        let size = crate::check::shape(
            "x",
            x,
            &[
                crate::check::Dim("B", None),
                crate::check::Dim("T", None),
                crate::check::Dim("d_model", Some(self.cfg.d_model)),
            ],
        )?;
        let (kind, want) = (x.f_kind()?, self.qkvb.weight.f_kind()?);
        if kind != want {
            bail!("x: dtype {kind:?} does not match the layer's parameters ({want:?})");
        }
        let (b, t) = (size[0], size[1]);
        let (h, d) = (self.cfg.n_heads, self.cfg.d_head);
        let proj = self.qkvb.forward(x)?; // [B, T, 3 H d (+ H)]
        let heads = |i: i64| -> Result<Tensor> {
            // [B, T, H, d] -> [B, H, T, d]
            Ok(proj
                .f_narrow(-1, i * h * d, h * d)?
                .f_view([b, t, h, d])?
                .f_transpose(1, 2)?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let (y, new_state) = match &self.mixer {
            Mixer::Softmax => {
                if state.is_some() {
                    bail!("state: softmax attention carries no state across segments");
                }
                let p = if train { self.cfg.attn_dropout } else { 0.0 };
                let y = Tensor::f_scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    None::<Tensor>,
                    p,
                    true,
                    None,
                    false,
                )?;
                (y, None)
            }
            Mixer::FastWeight { cfg: fw, phi } => {
                let beta = (fw.rule == UpdateRule::Delta)
                    .then(|| -> Result<Tensor> {
                        // beta_t = sigmoid(w_beta . x_t): [B, T, H] -> [B, H, T]
                        Ok(proj
                            .f_narrow(-1, 3 * h * d, h)?
                            .f_sigmoid()?
                            .f_transpose(1, 2)?)
                    })
                    .transpose()?;
                let (y, s) = self.fast_weight(fw, phi, &q, &k, &v, beta.as_ref(), state, train)?;
                (y, Some(s))
            }
        };
        let y = y.f_transpose(1, 2)?.f_reshape([b, t, h * d])?; // [B, T, H d]
        Ok((self.out.forward(&y)?, new_state))
    }
    #[allow(clippy::too_many_arguments)]
    fn fast_weight(
        &self,
        fw: &FastWeightConfig,
        phi: &Phi,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        beta: Option<&Tensor>,
        state: Option<&FastWeightState>,
        train: bool,
    ) -> Result<(Tensor, FastWeightState)> {
        // one FAVOR+ matrix for both, where it is redrawn: [B, H, T, d_dot] each
        let [mut q, mut k]: [Tensor; 2] = phi
            .features(&[q, k], train)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("feature map: expected two outputs"))?;
        if let (FeatureMap::Favor { m }, true) = (fw.feature_map, fw.favor_eps > 0.0) {
            let shift = fw.favor_eps / (2.0 * m as f64).sqrt();
            q = q + shift;
            k = k + shift;
        }
        if fw.normalisation.sum_normalises() {
            q = sum_normalise(&q, fw.eps, fw.backend)?;
            k = sum_normalise(&k, fw.eps, fw.backend)?;
        }
        let r = fast_weight(&q, &k, v, beta, state.map(|s| &s.s), fw.rule, fw.backend)?;
        let (mut y, z) = if fw.normalisation.attention_normalises() {
            let (y, z) =
                attention_normalise(&r.out, &q, &k, state.and_then(|s| s.z.as_ref()), fw.eps)?;
            (y, Some(z))
        } else {
            (r.out, None)
        };
        if fw.scale_output {
            y = y / (self.cfg.d_head as f64).sqrt();
        }
        Ok((y, FastWeightState { s: r.state, z }))
    }
}
