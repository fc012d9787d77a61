//! Multi-head causal attention: softmax (libtorch's scaled-dot-product attention) or a fast-weight
//! layer {feature map, update rule, normalisation, backend} (docs/derivations.md Sec. 1-3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::feature_map::{FavorRedraw, FeatureMap, Phi};
use crate::norm::{attention_normalise, sum_normalise, Normalisation};
use crate::param::Linear;
use crate::param::ParamInit;
use crate::recurrence::noncausal::{fast_weight_noncausal, key_sum};
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

impl AttentionConfig {
    /// d_model, n_heads and d_head must be positive.
    pub fn check_sizes(&self) -> Result<()> {
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_head", self.d_head),
        ] {
            crate::check::positive(name, v)?;
        }
        Ok(())
    }
}

/// State a fast-weight layer carries across segments: S `[B, H, d_dot, d_head]` and, with
/// attention normalisation, the key sum z `[B, H, d_dot]`.
#[derive(Debug)]
pub struct FastWeightState {
    pub s: Tensor,
    pub z: Option<Tensor>,
}

/// What a causal self-attention layer carries from the tokens it has seen to the next ones
/// ([`MultiHeadAttention::forward_step`]).
#[derive(Debug)]
pub enum StepCache {
    /// Keys and values of every token so far: `[B, H, T, d_head]` each.
    Softmax { k: Tensor, v: Tensor },
    /// The fast weights: constant size whatever the length.
    FastWeight(FastWeightState),
    /// Keys and values in buffers of a fixed length `[B, H, L_max, d_head]`, valid before
    /// `position` `[1]` (int64, the next token's). A softmax cache whose shapes never change, for a
    /// traced decoder step ([`crate::mt::export`]); one token a step, written into the buffers in
    /// place.
    SoftmaxBuffer {
        k: Tensor,
        v: Tensor,
        position: Tensor,
    },
}

impl StepCache {
    /// Rows `index` `[N]` of the batch (beam search keeps the caches of its surviving hypotheses).
    pub fn select(&self, index: &Tensor) -> Result<StepCache> {
        Ok(match self {
            StepCache::Softmax { k, v } => StepCache::Softmax {
                k: k.f_index_select(0, index)?,
                v: v.f_index_select(0, index)?,
            },
            StepCache::FastWeight(s) => StepCache::FastWeight(s.select(index)?),
            StepCache::SoftmaxBuffer { k, v, position } => StepCache::SoftmaxBuffer {
                k: k.f_index_select(0, index)?,
                v: v.f_index_select(0, index)?,
                position: position.shallow_clone(),
            },
        })
    }

    /// The tensors held, in a fixed order (softmax: k, v; fast weights: S, then z if any).
    pub fn tensors(&self) -> Vec<Tensor> {
        match self {
            StepCache::Softmax { k, v } | StepCache::SoftmaxBuffer { k, v, .. } => {
                vec![k.shallow_clone(), v.shallow_clone()]
            }
            StepCache::FastWeight(s) => std::iter::once(&s.s)
                .chain(s.z.as_ref())
                .map(Tensor::shallow_clone)
                .collect(),
        }
    }

    /// The same kind of cache holding `ts` (ordered as [`StepCache::tensors`]).
    pub fn with_tensors(&self, ts: &[Tensor]) -> Result<StepCache> {
        let want = self.tensors().len();
        if ts.len() != want {
            bail!("cache: expected {want} tensors, got {}", ts.len());
        }
        let c = |i: usize| ts[i].shallow_clone();
        Ok(match self {
            StepCache::Softmax { .. } => StepCache::Softmax { k: c(0), v: c(1) },
            StepCache::SoftmaxBuffer { position, .. } => StepCache::SoftmaxBuffer {
                k: c(0),
                v: c(1),
                position: position.shallow_clone(),
            },
            StepCache::FastWeight(_) => StepCache::FastWeight(FastWeightState {
                s: c(0),
                z: (want == 2).then(|| c(1)),
            }),
        })
    }

    /// The cache of no tokens: softmax keys and values of length 0 (buffers zeroed, position 0),
    /// fast weights all zero.
    pub fn emptied(&self) -> Result<StepCache> {
        Ok(match self {
            StepCache::SoftmaxBuffer { k, v, position } => StepCache::SoftmaxBuffer {
                k: k.f_zeros_like()?,
                v: v.f_zeros_like()?,
                position: position.f_zeros_like()?,
            },
            StepCache::Softmax { k, v } => StepCache::Softmax {
                k: k.f_narrow(2, 0, 0)?,
                v: v.f_narrow(2, 0, 0)?,
            },
            StepCache::FastWeight(s) => StepCache::FastWeight(FastWeightState {
                s: s.s.f_zeros_like()?,
                z: s.z.as_ref().map(Tensor::f_zeros_like).transpose()?,
            }),
        })
    }

    /// The cache of no tokens with fixed shapes: softmax keys and values in zeroed buffers of
    /// `max_len` tokens at position 0, fast weights all zero. For a traced decoder step.
    pub fn buffered(&self, max_len: i64) -> Result<StepCache> {
        crate::check::positive("max_len", max_len)?;
        Ok(match self {
            StepCache::Softmax { k, .. } | StepCache::SoftmaxBuffer { k, .. } => {
                let mut size = k.size();
                size[2] = max_len;
                let zeros = || Tensor::f_zeros(size.as_slice(), (k.kind(), k.device()));
                StepCache::SoftmaxBuffer {
                    k: zeros()?,
                    v: zeros()?,
                    position: Tensor::f_zeros([1], (tch::Kind::Int64, k.device()))?,
                }
            }
            StepCache::FastWeight(_) => self.emptied()?,
        })
    }

    /// Softmax buffers set to take the next token at `position` `[1]`; other caches as they are.
    pub fn at_position(&self, position: &Tensor) -> Result<StepCache> {
        Ok(match self {
            StepCache::SoftmaxBuffer { k, v, .. } => StepCache::SoftmaxBuffer {
                k: k.shallow_clone(),
                v: v.shallow_clone(),
                position: position.shallow_clone(),
            },
            _ => self.with_tensors(&self.tensors())?,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        match self {
            StepCache::Softmax { k, v } | StepCache::SoftmaxBuffer { k, v, .. } => b(k) + b(v),
            StepCache::FastWeight(s) => b(&s.s) + s.z.as_ref().map_or(0, b),
        }
    }
}

impl FastWeightState {
    /// Rows `index` `[N]` of the batch.
    pub fn select(&self, index: &Tensor) -> Result<FastWeightState> {
        Ok(FastWeightState {
            s: self.s.f_index_select(0, index)?,
            z: self
                .z
                .as_ref()
                .map(|z| z.f_index_select(0, index))
                .transpose()?,
        })
    }
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
        cfg.check_sizes()?;
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
        let (b, t) = self.check_input(x)?;
        let (h, d) = (self.cfg.n_heads, self.cfg.d_head);
        let proj = self.qkvb.forward(x)?; // [B, T, 3 H d (+ H)]
        let (q, k, v) = (
            self.heads(&proj, 0, b, t)?,
            self.heads(&proj, 1, b, t)?,
            self.heads(&proj, 2, b, t)?,
        );
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
        Ok((self.merge_heads(&y, b, t)?, new_state))
    }
    /// Non-causal self-attention (an encoder's): every position sees every position whose
    /// `mask` `[B, T]` entry is true (all without a mask). x `[B, T, d_model]` -> `[B, T, d_model]`.
    /// Fast-weight layers write all keys into one memory and read it with every query
    /// ([`crate::recurrence::noncausal`]); only the sum rule has a non-causal form.
    pub fn forward_noncausal(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = self.check_input(x)?;
        let proj = self.qkvb.forward(x)?;
        let (q, k, v) = (
            self.heads(&proj, 0, b, t)?,
            self.heads(&proj, 1, b, t)?,
            self.heads(&proj, 2, b, t)?,
        );
        let y = match &self.mixer {
            Mixer::Softmax => {
                let allowed = mask
                    .map(|m| -> Result<Tensor> {
                        Ok(m.f_to_kind(tch::Kind::Bool)?.f_view([b, 1, 1, t])?)
                    })
                    .transpose()?;
                let p = if train { self.cfg.attn_dropout } else { 0.0 };
                softmax_attention(&q, &k, &v, allowed.as_ref(), p)?
            }
            Mixer::FastWeight { cfg: fw, phi } => {
                if fw.rule != UpdateRule::Sum {
                    bail!(
                        "the {} rule has no non-causal form: a fast-weight encoder uses the sum rule",
                        fw.rule
                    );
                }
                let [q, k] = features(fw, phi, &[&q, &k], train)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("feature map: expected two outputs"))?;
                read_noncausal(fw, &q, &k, &v, mask)?
            }
        };
        self.merge_heads(&y, b, t)
    }

    /// Causal self-attention over the next tokens of a sequence whose earlier tokens are summed up
    /// in `cache` (None at the start): x `[B, T, d_model]` -> `[B, T, d_model]` and the cache that
    /// includes them. Gives what [`MultiHeadAttention::forward_t`] gives on the whole sequence, at
    /// the cost of the new tokens only: a fast-weight layer carries its state (constant size), a
    /// softmax layer its keys and values (growing with the sequence). For generation; no dropout.
    pub fn forward_step(
        &self,
        x: &Tensor,
        cache: Option<&StepCache>,
    ) -> Result<(Tensor, StepCache)> {
        match &self.mixer {
            Mixer::FastWeight { .. } => {
                let state = match cache {
                    None => None,
                    Some(StepCache::FastWeight(s)) => Some(s),
                    Some(StepCache::Softmax { .. } | StepCache::SoftmaxBuffer { .. }) => {
                        bail!("cache: a softmax cache for a fast-weight layer")
                    }
                };
                let (y, s) = self.forward_t(x, state, false)?;
                let s = s.ok_or_else(|| anyhow::anyhow!("fast-weight layer returned no state"))?;
                Ok((y, StepCache::FastWeight(s)))
            }
            Mixer::Softmax => {
                let (b, t) = self.check_input(x)?;
                let proj = self.qkvb.forward(x)?;
                let (q, mut k, mut v) = (
                    self.heads(&proj, 0, b, t)?,
                    self.heads(&proj, 1, b, t)?,
                    self.heads(&proj, 2, b, t)?,
                );
                if let Some(StepCache::SoftmaxBuffer {
                    k: kb,
                    v: vb,
                    position,
                }) = cache
                {
                    return self.step_into_buffers(&q, &k, &v, kb, vb, position, b, t);
                }
                let past = match cache {
                    None => 0,
                    Some(StepCache::SoftmaxBuffer { .. }) => bail!("cache: buffers handled above"),
                    Some(StepCache::Softmax { k: pk, v: pv }) => {
                        k = Tensor::f_cat(&[pk, &k], 2)?;
                        v = Tensor::f_cat(&[pv, &v], 2)?;
                        pk.size()[2]
                    }
                    Some(StepCache::FastWeight(_)) => {
                        bail!("cache: a fast-weight state for a softmax layer")
                    }
                };
                // query i (absolute position past + i) sees keys 0..=past + i
                let allowed = (t > 1)
                    .then(|| -> Result<Tensor> {
                        let dev = x.device();
                        let qi =
                            Tensor::f_arange(t, (tch::Kind::Int64, dev))?.f_unsqueeze(1)? + past;
                        let kj =
                            Tensor::f_arange(past + t, (tch::Kind::Int64, dev))?.f_unsqueeze(0)?;
                        Ok(kj.f_le_tensor(&qi)?.f_view([1, 1, t, past + t])?)
                    })
                    .transpose()?;
                let y = softmax_attention(&q, &k, &v, allowed.as_ref(), 0.0)?;
                Ok((self.merge_heads(&y, b, t)?, StepCache::Softmax { k, v }))
            }
        }
    }

    /// [`MultiHeadAttention::forward_step`] of a softmax layer with fixed-length buffers: writes the
    /// one new token's k, v `[B, H, 1, d]` at `position` in place and lets q attend to the buffers'
    /// keys up to it.
    #[allow(clippy::too_many_arguments)]
    fn step_into_buffers(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        k_buf: &Tensor,
        v_buf: &Tensor,
        position: &Tensor,
        b: i64,
        t: i64,
    ) -> Result<(Tensor, StepCache)> {
        if t != 1 {
            bail!("x: a softmax layer with fixed-length buffers takes one token a step, got {t}");
        }
        if k_buf.dim() != 4 || k_buf.size()[..2] != k.size()[..2] || k_buf.size() != v_buf.size() {
            bail!(
                "cache buffers: expected k and v [{b}, {}, L, {}], got {:?} and {:?}",
                self.cfg.n_heads,
                self.cfg.d_head,
                k_buf.size(),
                v_buf.size()
            );
        }
        let len = k_buf.size()[2];
        let _ = k_buf.shallow_clone().f_index_copy_(2, position, k)?;
        let _ = v_buf.shallow_clone().f_index_copy_(2, position, v)?;
        let allowed = Tensor::f_arange(len, (tch::Kind::Int64, q.device()))?
            .f_le_tensor(position)?
            .f_view([1, 1, 1, len])?;
        let y = softmax_attention(q, k_buf, v_buf, Some(&allowed), 0.0)?;
        let cache = StepCache::SoftmaxBuffer {
            k: k_buf.shallow_clone(),
            v: v_buf.shallow_clone(),
            position: position.f_add_scalar(1)?,
        };
        Ok((self.merge_heads(&y, b, t)?, cache))
    }

    /// Checks x `[B, T, d_model]` and its dtype; returns (B, T).
    fn check_input(&self, x: &Tensor) -> Result<(i64, i64)> {
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
        Ok((size[0], size[1]))
    }

    /// Head `i` (0: q, 1: k, 2: v) of the projection `[B, T, 3 H d (+ H)]` -> `[B, H, T, d]`.
    fn heads(&self, proj: &Tensor, i: i64, b: i64, t: i64) -> Result<Tensor> {
        let (h, d) = (self.cfg.n_heads, self.cfg.d_head);
        Ok(proj
            .f_narrow(-1, i * h * d, h * d)?
            .f_view([b, t, h, d])?
            .f_transpose(1, 2)?)
    }

    /// `[B, H, T, d]` -> the output projection of `[B, T, H d]`.
    fn merge_heads(&self, y: &Tensor, b: i64, t: i64) -> Result<Tensor> {
        let y = y
            .f_transpose(1, 2)?
            .f_reshape([b, t, self.cfg.n_heads * self.cfg.d_head])?;
        self.out.forward(&y)
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
        let [q, k] = features(fw, phi, &[q, k], train)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("feature map: expected two outputs"))?;
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

/// phi of each of `xs` (keys, queries: `[B, H, T, d_head]` -> `[B, H, T, d_dot]`) as the layer `fw`
/// computes them before its memory: the feature map (one FAVOR+ matrix for all, where it is
/// redrawn), FAVOR+'s shift, and sum normalisation where `fw` has it.
pub(crate) fn features(
    fw: &FastWeightConfig,
    phi: &Phi,
    xs: &[&Tensor],
    train: bool,
) -> Result<Vec<Tensor>> {
    phi.features(xs, train)?
        .into_iter()
        .map(|mut x| {
            if let (FeatureMap::Favor { m }, true) = (fw.feature_map, fw.favor_eps > 0.0) {
                x = x + fw.favor_eps / (2.0 * m as f64).sqrt();
            }
            if fw.normalisation.sum_normalises() {
                x = sum_normalise(&x, fw.eps, fw.backend)?;
            }
            Ok(x)
        })
        .collect()
}

/// The non-causal fast-weight read of a whole memory (encoders, cross-attention): phi(q) `[B, H,
/// T_q, d_dot]` against phi(k) `[B, H, T_k, d_dot]` and v `[B, H, T_k, d_head]`, keys outside
/// `mask` `[B, T_k]` left out; attention normalisation where `fw` has it (y_i / (z . phi(q_i) +
/// eps), z the sum of the keys), then the output scale.
pub(crate) fn read_noncausal(
    fw: &FastWeightConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let y = fast_weight_noncausal(q, k, v, mask, fw.backend)?;
    normalise_and_scale(fw, q, y, || key_sum(k, mask))
}

/// [`read_noncausal`] from a memory already written: phi(q) `[B, H, T_q, d_dot]` reads
/// W^T `[B, H, d_dot, d_v]` with key sum z `[B, H, d_dot]` (`noncausal::write_all`, `key_sum`)
/// -> `[B, H, T_q, d_v]`, normalised and scaled as `read_noncausal`.
pub(crate) fn read_written(
    fw: &FastWeightConfig,
    q: &Tensor,
    w: &Tensor,
    z: &Tensor,
) -> Result<Tensor> {
    normalise_and_scale(fw, q, q.f_matmul(w)?, || Ok(z.shallow_clone()))
}

/// The end of a non-causal read y `[B, H, T_q, d_v]`: divided by z . phi(q_i) + eps where `fw` uses
/// attention normalisation (`z` `[B, H, d_dot]`, computed only then), then by sqrt(d_v) where it
/// scales its output.
fn normalise_and_scale(
    fw: &FastWeightConfig,
    q: &Tensor,
    mut y: Tensor,
    z: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    if fw.normalisation.attention_normalises() {
        let z = z()?.f_unsqueeze(-1)?; // [B, H, d_dot, 1]
        y = y.f_div(&(q.f_matmul(&z)? + fw.eps))?;
    }
    if fw.scale_output {
        let d_v = y.size()[3] as f64;
        y = y / d_v.sqrt();
    }
    Ok(y)
}

/// Softmax attention of q `[B, H, T_q, d]` over k, v `[B, H, T_k, d]`, where `allowed` `[B or 1,
/// 1 or H, T_q or 1, T_k]` (bool) says which keys each query may see.
pub(crate) fn softmax_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: Option<&Tensor>,
    dropout: f64,
) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q, k, v, allowed, dropout, false, None, false,
    )?)
}
