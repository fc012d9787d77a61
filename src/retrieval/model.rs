//! The one-layer retrieval model of the paper's synthetic experiments (docs/retrieval.md; the
//! authors' synthetic-task code):
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

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::data::Batch;
use crate::attention::{AttentionKind, FastWeightConfig};
use crate::feature_map::Phi;
use crate::norm::{sum_normalise, Normalisation};
use crate::param::{Embedding, Linear};
use crate::recurrence::{fast_weight, Backend, UpdateRule};

pub use crate::variant::Variant;

/// How the key, query and beta projections start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectionInit {
    /// tch's defaults, W_k and W_q without bias (fwp's first protocol): weights Kaiming-uniform in
    /// ±sqrt(6 / fan_in), about 2.4 times PyTorch's bound; beta's bias in ±1/sqrt(fan_in).
    #[default]
    Framework,
    /// The authors': every projection has a bias, drawn as PyTorch's default in ±1/sqrt(fan_in).
    /// Fast weights: W_k and W_q uniform in ±1/sqrt(d_key) whatever the fan-in; w_beta PyTorch's
    /// default in ±1/sqrt(fan_in). Softmax: W_k and W_q Xavier-uniform.
    Authors,
}

/// The model of one run: S keys, keys projected to d_key, and the memory.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "ModelConfigRecord")]
pub struct ModelConfig {
    /// Number of keys (and of values).
    pub s: i64,
    pub d_key: i64,
    /// Softmax attention over the written pairs, or a fast-weight memory: feature map, update
    /// rule, normalisation, eps, backend, FAVOR+ redraw.
    pub memory: AttentionKind,
    pub init: ProjectionInit,
}

impl ModelConfig {
    /// The model of `variant`: softmax, or the fast-weight layer of its rule and map with the given
    /// normalisation and backend; FAVOR+ drawn once, tch's initialisation (fwp's first protocol;
    /// [`super::Protocol::model`] gives the authors').
    pub fn new(
        s: i64,
        d_key: i64,
        variant: Variant,
        normalisation: Normalisation,
        backend: Backend,
    ) -> Self {
        let memory = match variant.attention() {
            AttentionKind::FastWeight(fw) => AttentionKind::FastWeight(FastWeightConfig {
                normalisation,
                backend,
                ..fw
            }),
            softmax => softmax,
        };
        ModelConfig {
            s,
            d_key,
            memory,
            init: ProjectionInit::Framework,
        }
    }

    /// Softmax, or the memory's rule and feature map.
    pub fn variant(&self) -> Variant {
        match self.memory {
            AttentionKind::Softmax => Variant::Softmax,
            AttentionKind::FastWeight(fw) => Variant::FastWeight {
                rule: fw.rule,
                map: fw.feature_map,
            },
        }
    }

    /// Width of the key embedding: int(2S * 1.1), as the authors' code.
    pub fn embedding_width(&self) -> i64 {
        (2.0 * self.s as f64 * 1.1) as i64
    }
}

/// How [`ModelConfig`] reads from run records: as written now, or as records written before the
/// memory was a [`FastWeightConfig`] (variant, normalisation, eps and backend side by side).
#[derive(Deserialize)]
#[serde(untagged)]
enum ModelConfigRecord {
    Current {
        s: i64,
        d_key: i64,
        memory: AttentionKind,
        /// Records written before there was a choice: tch's initialisation.
        #[serde(default)]
        init: ProjectionInit,
    },
    Earlier {
        s: i64,
        d_key: i64,
        variant: Variant,
        normalisation: Normalisation,
        eps: f64,
        backend: Backend,
    },
}

impl From<ModelConfigRecord> for ModelConfig {
    fn from(r: ModelConfigRecord) -> Self {
        match r {
            ModelConfigRecord::Current {
                s,
                d_key,
                memory,
                init,
            } => ModelConfig {
                s,
                d_key,
                memory,
                init,
            },
            ModelConfigRecord::Earlier {
                s,
                d_key,
                variant,
                normalisation,
                eps,
                backend,
            } => {
                let mut cfg = ModelConfig::new(s, d_key, variant, normalisation, backend);
                if let AttentionKind::FastWeight(fw) = &mut cfg.memory {
                    fw.eps = eps;
                }
                cfg
            }
        }
    }
}

/// The memory of a built model.
#[derive(Debug)]
enum Memory {
    Softmax,
    FastWeight {
        cfg: FastWeightConfig,
        phi: Phi,
        /// beta_t = sigmoid(w_beta . x_t); delta rule only.
        w_beta: Option<Linear>,
    },
}

#[derive(Debug)]
pub struct RetrievalModel {
    pub cfg: ModelConfig,
    embedding: Embedding,
    w_k: Linear,
    w_q: Linear,
    memory: Memory,
}

impl RetrievalModel {
    pub fn new(p: nn::Path, cfg: ModelConfig) -> Result<Self> {
        crate::check::positive("S", cfg.s)?;
        crate::check::positive("d_key", cfg.d_key)?;
        let e = cfg.embedding_width();
        let authors = cfg.init == ProjectionInit::Authors;
        let memory = match cfg.memory {
            AttentionKind::Softmax => Memory::Softmax,
            AttentionKind::FastWeight(fw) => {
                fw.validate()?;
                let phi = Phi::new(&p / "phi", fw.feature_map, cfg.d_key, fw.favor_redraw)?;
                // PyTorch's and tch's default bias, and PyTorch's default weight, share one bound
                let w_beta = (fw.rule == UpdateRule::Delta)
                    .then(|| {
                        let p = &p / "w_beta";
                        let fan_in = cfg.s + e;
                        match cfg.init {
                            ProjectionInit::Framework => Linear::new(&p, fan_in, 1, true),
                            ProjectionInit::Authors => {
                                let u = uniform(1.0 / (fan_in as f64).sqrt());
                                Linear::with_init(&p, fan_in, 1, u, Some(u))
                            }
                        }
                    })
                    .transpose()?;
                Memory::FastWeight {
                    cfg: fw,
                    phi,
                    w_beta,
                }
            }
        };
        let standard_normal = nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let embedding = Embedding::new(&(&p / "key_embedding"), cfg.s, e, standard_normal)?;
        // W_k: [S + e] -> d_key, W_q: e -> d_key
        let projection = |name: &str, fan_in: i64| -> Result<Linear> {
            let p = &p / name;
            if !authors {
                return Linear::new(&p, fan_in, cfg.d_key, false);
            }
            let weight = match cfg.memory {
                AttentionKind::Softmax => {
                    uniform((6.0 / (fan_in + cfg.d_key) as f64).sqrt()) // Xavier
                }
                AttentionKind::FastWeight(_) => uniform(1.0 / (cfg.d_key as f64).sqrt()),
            };
            let bias = uniform(1.0 / (fan_in as f64).sqrt());
            Linear::with_init(&p, fan_in, cfg.d_key, weight, Some(bias))
        };
        Ok(RetrievalModel {
            embedding,
            w_k: projection("w_k", cfg.s + e)?,
            w_q: projection("w_q", e)?,
            memory,
            cfg,
        })
    }

    /// Whether every forward pass draws new random features (FAVOR+ redrawn at every pass), so
    /// that two passes over the same batch differ.
    pub fn redraws_every_forward(&self) -> bool {
        match &self.memory {
            Memory::FastWeight { phi, .. } => phi.redraws(false),
            Memory::Softmax => false,
        }
    }

    /// Retrieved vectors `[B, Q, S]` for the batch's queries. `train` matters only to a FAVOR+
    /// matrix redrawn at training steps.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let s = self.cfg.s;
        let v = batch.values.f_one_hot(s)?.f_to_kind(Kind::Float)?; // [B, L, S]
        let x = Tensor::f_cat(&[&v, &self.embedding.forward(&batch.keys)?], -1)?; // [B, L, S + e]
        let k = self.w_k.forward(&x)?; // [B, L, d_key]
        let q = self.w_q.forward(&self.embedding.forward(&batch.query)?)?; // [B, Q, d_key]
        let (fw, phi, w_beta) = match &self.memory {
            Memory::Softmax => {
                let scores = q.f_matmul(&k.f_transpose(1, 2)?)? / (self.cfg.d_key as f64).sqrt(); // [B, Q, L]
                return Ok(scores.f_softmax(-1, Kind::Float)?.f_matmul(&v)?);
            }
            Memory::FastWeight { cfg, phi, w_beta } => (cfg, phi, w_beta),
        };
        // one FAVOR+ matrix for keys and query: [B, L, d_dot] and [B, Q, d_dot]
        let [mut k, mut q]: [Tensor; 2] = phi
            .features(&[&k, &q], train)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("feature map: expected two outputs"))?;
        if fw.normalisation.sum_normalises() {
            k = sum_normalise(&k, fw.eps, fw.backend)?;
            q = sum_normalise(&q, fw.eps, fw.backend)?;
        }
        let beta = match w_beta {
            Some(w) => Some(w.forward(&x)?.f_sigmoid()?.f_view([x.size()[0], 1, -1])?), // [B, 1, L]
            None => None,
        };
        let w_final = if fw.rule == UpdateRule::Sum && fw.backend != Backend::Reference {
            // The sum rule's final fast weights are the sum of the written outer products,
            // W_L = sum_t phi(k_t) v_t^T: one matrix product, no recurrence. (Its twin, the
            // recurrence, runs with the Reference backend; a test compares the two.)
            k.f_transpose(1, 2)?.f_matmul(&v)? // [B, d_dot, S]
        } else {
            // one head: [B, 1, L, .]; the outputs are not used, only the final fast weights
            let k4 = k.f_unsqueeze(1)?;
            let r = fast_weight(
                &k4,
                &k4,
                &v.f_unsqueeze(1)?,
                beta.as_ref(),
                None,
                fw.rule,
                fw.backend,
            )?;
            r.state.f_squeeze_dim(1)? // [B, d_dot, S]
        };
        let mut y = q.f_matmul(&w_final)?; // [B, Q, S]
        if fw.normalisation.attention_normalises() {
            let z = k.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?; // [B, 1, d_dot]
            let denom = (&q * z).f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)? + fw.eps;
            y = y.f_div(&denom)?;
        }
        if fw.scale_output {
            y = y / (self.cfg.d_key as f64).sqrt();
        }
        Ok(y)
    }

    /// The paper's loss: 0.5 |onehot(target) - y|^2 summed over the S outputs, averaged over the
    /// real queries. Predicting 0 gives 0.5.
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let y = self.forward(batch, train)?;
        retrieval_loss(&y, batch)
    }
}

/// 0.5 |onehot(target) - y|^2 summed over the last dimension, mean over the unmasked queries.
pub fn retrieval_loss(y: &Tensor, batch: &Batch) -> Result<Tensor> {
    let per_query = query_losses(y, batch)?; // [B, Q]
    let mask = batch.mask.f_to_kind(y.kind())?;
    Ok((per_query * &mask).f_sum(y.kind())? / mask.f_sum(y.kind())?)
}

/// 0.5 |onehot(target) - y|^2 of every query `[B, Q]`, masked ones included.
pub fn query_losses(y: &Tensor, batch: &Batch) -> Result<Tensor> {
    let s = *y.size().last().unwrap_or(&0);
    let target = batch.target.f_one_hot(s)?.f_to_kind(y.kind())?; // [B, Q, S]
    Ok((target - y)
        .f_square()?
        .f_sum_dim_intlist([-1i64].as_slice(), false, y.kind())?
        * 0.5)
}

fn uniform(bound: f64) -> nn::Init {
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}
