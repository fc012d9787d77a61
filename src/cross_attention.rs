//! Encoder–decoder attention: the decoder's queries read the encoder's output. Softmax (as the
//! paper's translation models, which swap attention functions into the self-attention only), or a
//! non-causal fast-weight memory written once from the whole source
//! ([`crate::recurrence::noncausal`]; sum rule), whose size does not depend on the source length.

use anyhow::{bail, Result};
use tch::{nn, Tensor};

use crate::attention::{
    features, read_noncausal, read_written, softmax_attention, AttentionConfig, AttentionKind,
};
use crate::feature_map::{FavorRedraw, Phi};
use crate::param::{Linear, ParamInit};
use crate::recurrence::noncausal::{key_sum, write_all};
use crate::recurrence::{Backend, UpdateRule};

/// The source as one layer's cross-attention reads it, computed once per sentence
/// ([`CrossAttention::memory`]) and kept while the decoder generates.
#[derive(Debug)]
pub enum CrossMemory {
    /// Keys and values `[B, H, S, d_head]` and which source positions are real, `[B, 1, 1, S]`:
    /// grows with the source length S.
    Softmax {
        k: Tensor,
        v: Tensor,
        allowed: Tensor,
    },
    /// The source written into fast weights once: W^T = sum_j phi(k_j) v_j^T `[B, H, d_dot, d_head]`
    /// and the key sum z = sum_j phi(k_j) `[B, H, d_dot]` over the real source positions (paper
    /// Eq. 4 summed over the whole source; docs/derivations.md Sec. 10). Its size does not depend
    /// on S.
    FastWeight { w: Tensor, z: Tensor },
    /// The reference twin of `FastWeight` (backend `Reference`): phi of the keys
    /// `[B, H, S, d_dot]` (padding zeroed), the values `[B, H, S, d_head]` and the source mask
    /// `[B, S]`, read through the query-key weights.
    FastWeightKeys { k: Tensor, v: Tensor, mask: Tensor },
}

impl CrossMemory {
    /// The tensors held, in the order of the variant's fields.
    pub fn tensors(&self) -> Vec<Tensor> {
        let all: Vec<&Tensor> = match self {
            CrossMemory::Softmax { k, v, allowed } => vec![k, v, allowed],
            CrossMemory::FastWeight { w, z } => vec![w, z],
            CrossMemory::FastWeightKeys { k, v, mask } => vec![k, v, mask],
        };
        all.into_iter().map(Tensor::shallow_clone).collect()
    }

    /// The same kind of memory holding `ts` (ordered as [`CrossMemory::tensors`]).
    pub fn with_tensors(&self, ts: &[Tensor]) -> Result<CrossMemory> {
        let want = self.tensors().len();
        if ts.len() != want {
            bail!("cross memory: expected {want} tensors, got {}", ts.len());
        }
        let t = |i: usize| ts[i].shallow_clone();
        Ok(match self {
            CrossMemory::Softmax { .. } => CrossMemory::Softmax {
                k: t(0),
                v: t(1),
                allowed: t(2),
            },
            CrossMemory::FastWeight { .. } => CrossMemory::FastWeight { w: t(0), z: t(1) },
            CrossMemory::FastWeightKeys { .. } => CrossMemory::FastWeightKeys {
                k: t(0),
                v: t(1),
                mask: t(2),
            },
        })
    }

    /// Sentences held (the batch size of the tensors).
    pub fn rows(&self) -> i64 {
        match self {
            CrossMemory::Softmax { k, .. }
            | CrossMemory::FastWeight { w: k, .. }
            | CrossMemory::FastWeightKeys { k, .. } => k.size()[0],
        }
    }

    /// Rows `index` `[N]` of the batch.
    pub fn select(&self, index: &Tensor) -> Result<CrossMemory> {
        let rows = self
            .tensors()
            .iter()
            .map(|t| t.f_index_select(0, index))
            .collect::<Result<Vec<_>, _>>()?;
        self.with_tensors(&rows)
    }
}

#[derive(Debug)]
enum Mixer {
    Softmax,
    FastWeight {
        cfg: crate::attention::FastWeightConfig,
        phi: Phi,
    },
}

#[derive(Debug)]
pub struct CrossAttention {
    pub cfg: AttentionConfig,
    q: Linear,
    /// memory -> [k; v], no bias.
    kv: Linear,
    out: Linear,
    mixer: Mixer,
}

impl CrossAttention {
    /// A fast-weight `cfg.kind` must use the sum rule (the memory is written non-causally); its
    /// FAVOR+ matrix is never redrawn, so that keys and queries, computed at different times, share it.
    pub fn with_init(p: nn::Path, cfg: AttentionConfig, init: ParamInit) -> Result<Self> {
        init.check()?;
        cfg.check_sizes()?;
        let mixer = match cfg.kind {
            AttentionKind::Softmax => Mixer::Softmax,
            AttentionKind::FastWeight(fw) => {
                fw.validate()?;
                if fw.rule != UpdateRule::Sum {
                    bail!(
                        "cross-attention: the {} rule has no non-causal form; use the sum rule",
                        fw.rule
                    );
                }
                let phi = Phi::new(&p / "phi", fw.feature_map, cfg.d_head, FavorRedraw::Never)?;
                Mixer::FastWeight { cfg: fw, phi }
            }
        };
        let hd = cfg.n_heads * cfg.d_head;
        Ok(CrossAttention {
            cfg,
            q: init.linear(&(&p / "q"), cfg.d_model, hd, false)?,
            kv: init.linear(&(&p / "kv"), cfg.d_model, 2 * hd, false)?,
            out: init.linear(&(&p / "out"), hd, cfg.d_model, false)?,
            mixer,
        })
    }

    /// `[B, T, H d]` -> `[B, H, T, d]`.
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        Ok(x.f_view([s[0], s[1], self.cfg.n_heads, self.cfg.d_head])?
            .f_transpose(1, 2)?)
    }

    /// The memory of the encoder output `enc` `[B, S, d_model]`, `mask` `[B, S]` (true at real
    /// source tokens).
    pub fn memory(&self, enc: &Tensor, mask: &Tensor, train: bool) -> Result<CrossMemory> {
        let hd = self.cfg.n_heads * self.cfg.d_head;
        let kv = self.kv.forward(enc)?;
        let k = self.split(&kv.f_narrow(-1, 0, hd)?)?;
        let v = self.split(&kv.f_narrow(-1, hd, hd)?)?;
        let mask = mask.f_to_kind(tch::Kind::Bool)?;
        Ok(match &self.mixer {
            Mixer::Softmax => {
                let s = mask.size();
                CrossMemory::Softmax {
                    k,
                    v,
                    allowed: mask.f_view([s[0], 1, 1, s[1]])?,
                }
            }
            Mixer::FastWeight { cfg, phi } => {
                let [k]: [Tensor; 1] = features(cfg, phi, &[&k], train)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("feature map: expected one output"))?;
                if cfg.backend == Backend::Reference {
                    CrossMemory::FastWeightKeys { k, v, mask }
                } else {
                    CrossMemory::FastWeight {
                        w: write_all(&k, &v, Some(&mask))?, // [B, H, d_dot, d_head]
                        z: key_sum(&k, Some(&mask))?,       // [B, H, d_dot]
                    }
                }
            }
        })
    }

    /// The decoder states x `[N, T, d_model]` read `memory` of M sentences -> `[N, T, d_model]`.
    /// N is M or a multiple n M: rows `b n .. (b + 1) n` are n hypotheses of sentence b (a beam
    /// search's), which all read sentence b's one memory, as n T queries of it.
    pub fn forward_t(&self, x: &Tensor, memory: &CrossMemory, train: bool) -> Result<Tensor> {
        let s = x.size();
        let (n, m) = (s[0], memory.rows());
        if m == 0 || n % m != 0 {
            bail!(
                "cross-attention: {n} decoder rows for a memory of {m} sentences; expected a \
                 multiple of it"
            );
        }
        let per = n / m; // hypotheses per sentence
        let x = x.f_reshape([m, per * s[1], s[2]])?; // [M, n T, d_model]
        let q = self.split(&self.q.forward(&x)?)?;
        let y = match (&self.mixer, memory) {
            (Mixer::Softmax, CrossMemory::Softmax { k, v, allowed }) => {
                let p = if train { self.cfg.attn_dropout } else { 0.0 };
                softmax_attention(&q, k, v, Some(allowed), p)?
            }
            (Mixer::FastWeight { cfg, phi }, memory) => {
                let [q]: [Tensor; 1] = features(cfg, phi, &[&q], train)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("feature map: expected one output"))?;
                match memory {
                    CrossMemory::FastWeight { w, z } => read_written(cfg, &q, w, z)?,
                    CrossMemory::FastWeightKeys { k, v, mask } => {
                        read_noncausal(cfg, &q, k, v, Some(mask))?
                    }
                    CrossMemory::Softmax { .. } => {
                        bail!("cross-attention: fast weights cannot read a softmax memory")
                    }
                }
            }
            _ => bail!("cross-attention: the memory is of another kind of attention"),
        };
        self.out
            .forward(&y.f_transpose(1, 2)?.f_reshape([n, s[1], -1])?)
    }
}
