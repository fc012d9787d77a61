//! The one-layer retrieval model of paper.md Sec. 5 (the authors' synthetic-task code):
//!
//! ```text
//! x_t   = [onehot(v_t); emb(k_t)]                 input, size S + e, e = int(2S * 1.1), emb ~ N(0, 1)
//! k_t   = phi(W_k x_t)                            key, d_key -> d_dot
//! beta_t = sigmoid(w_beta . x_t)                  write strength (delta rule)
//! v_t   = onehot(v_t)                             the value written is the one-hot itself (d_v = S)
//! q     = phi(W_q emb(query key))                 the query
//! y     = W_T q                                   retrieval from the final fast weights
//! ```
//!
//! Softmax attention, for comparison: y = softmax(q' K'^T / sqrt(d_key)) V with the raw projections
//! q' = W_q emb(query), K' = W_k X and V the one-hot values.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use super::data::Batch;
use crate::feature_map::{FavorRedraw, Phi};
use crate::norm::{sum_normalise, Normalisation};
use crate::recurrence::{fast_weight, Backend, UpdateRule};

pub use crate::variant::Variant;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Number of keys (and of values).
    pub s: i64,
    pub d_key: i64,
    pub variant: Variant,
    /// Normalisation of the fast-weight memory (the paper's synthetic runs: sum normalisation).
    pub normalisation: Normalisation,
    pub eps: f64,
    pub backend: Backend,
}

impl ModelConfig {
    /// Width of the key embedding: int(2S * 1.1), as the authors' code.
    pub fn embedding_width(&self) -> i64 {
        (2.0 * self.s as f64 * 1.1) as i64
    }
}

#[derive(Debug)]
pub struct RetrievalModel {
    pub cfg: ModelConfig,
    embedding: nn::Embedding,
    w_k: nn::Linear,
    w_q: nn::Linear,
    w_beta: Option<nn::Linear>,
    phi: Option<Phi>,
}

impl RetrievalModel {
    pub fn new(p: nn::Path, cfg: ModelConfig) -> Result<Self> {
        crate::check::positive("S", cfg.s)?;
        crate::check::positive("d_key", cfg.d_key)?;
        let e = cfg.embedding_width();
        let emb_cfg = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            ..Default::default()
        };
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let (phi, w_beta) = match cfg.variant {
            Variant::Softmax => (None, None),
            Variant::FastWeight { rule, map } => {
                if rule == UpdateRule::Delta && cfg.normalisation.attention_normalises() {
                    bail!(
                        "normalisation {:?} is not supported with the delta rule",
                        cfg.normalisation
                    );
                }
                let phi = Phi::new(&p / "phi", map, cfg.d_key, FavorRedraw::Never)?;
                let beta = (rule == UpdateRule::Delta)
                    .then(|| nn::linear(&p / "w_beta", cfg.s + e, 1, Default::default()));
                (Some(phi), beta)
            }
        };
        Ok(RetrievalModel {
            embedding: nn::embedding(&p / "key_embedding", cfg.s, e, emb_cfg),
            w_k: nn::linear(&p / "w_k", cfg.s + e, cfg.d_key, no_bias),
            w_q: nn::linear(&p / "w_q", e, cfg.d_key, no_bias),
            w_beta,
            phi,
            cfg,
        })
    }

    /// Retrieved vectors `[B, Q, S]` for the batch's queries.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let s = self.cfg.s;
        let v = batch.values.f_one_hot(s)?.f_to_kind(Kind::Float)?; // [B, L, S]
        let x = Tensor::f_cat(&[&v, &batch.keys.apply(&self.embedding)], -1)?; // [B, L, S + e]
        let k = self.w_k.forward(&x); // [B, L, d_key]
        let q = batch.query.apply(&self.embedding).apply(&self.w_q); // [B, Q, d_key]
        match (self.cfg.variant, &self.phi) {
            (Variant::Softmax, _) => {
                let scores = q.f_matmul(&k.f_transpose(1, 2)?)? / (self.cfg.d_key as f64).sqrt(); // [B, Q, L]
                Ok(scores.f_softmax(-1, Kind::Float)?.f_matmul(&v)?)
            }
            (Variant::FastWeight { rule, .. }, Some(phi)) => {
                let mut k = phi.forward_t(&k, false)?; // [B, L, d_dot]
                let mut q = phi.forward_t(&q, false)?; // [B, Q, d_dot]
                if self.cfg.normalisation.sum_normalises() {
                    k = sum_normalise(&k, self.cfg.eps, self.cfg.backend)?;
                    q = sum_normalise(&q, self.cfg.eps, self.cfg.backend)?;
                }
                let beta = match &self.w_beta {
                    Some(w) => Some(w.forward(&x).f_sigmoid()?.f_view([x.size()[0], 1, -1])?), // [B, 1, L]
                    None => None,
                };
                // one head: [B, 1, L, .]; the outputs are not used, only the final fast weights
                let k4 = k.f_unsqueeze(1)?;
                let r = fast_weight(
                    &k4,
                    &k4,
                    &v.f_unsqueeze(1)?,
                    beta.as_ref(),
                    None,
                    rule,
                    self.cfg.backend,
                )?;
                let w_final = r.state.f_squeeze_dim(1)?; // [B, d_dot, S]
                let mut y = q.f_matmul(&w_final)?; // [B, Q, S]
                if self.cfg.normalisation.attention_normalises() {
                    let z = k.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?; // [B, 1, d_dot]
                    let denom =
                        (&q * z).f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)?
                            + self.cfg.eps;
                    y = y.f_div(&denom)?;
                }
                Ok(y)
            }
            (Variant::FastWeight { .. }, None) => {
                unreachable!("fast-weight models are built with a feature map")
            }
        }
    }

    /// The paper's loss: 0.5 |onehot(target) - y|^2 summed over the S outputs, averaged over the
    /// real queries. Predicting 0 gives 0.5.
    pub fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let y = self.forward(batch)?;
        retrieval_loss(&y, batch)
    }
}

/// 0.5 |onehot(target) - y|^2 summed over the last dimension, mean over the unmasked queries.
pub fn retrieval_loss(y: &Tensor, batch: &Batch) -> Result<Tensor> {
    let s = *y.size().last().unwrap_or(&0);
    let target = batch.target.f_one_hot(s)?.f_to_kind(y.kind())?; // [B, Q, S]
    let per_query =
        (target - y)
            .f_square()?
            .f_sum_dim_intlist([-1i64].as_slice(), false, y.kind())?
            * 0.5; // [B, Q]
    let mask = batch.mask.f_to_kind(y.kind())?;
    Ok((per_query * &mask).f_sum(y.kind())? / mask.f_sum(y.kind())?)
}
