//! An encoder–decoder Transformer (Vaswani et al. 2017) for translation (docs/translate.md):
//! token embeddings scaled by sqrt(d_model) plus sinusoidal positions; an encoder of non-causal
//! self-attention layers; a decoder of causal self-attention, encoder–decoder attention and
//! feed-forward layers; the output layer tied to the decoder's embedding (and, by default, the
//! encoder's too: one joint vocabulary). Each attention comes from the library: softmax or a
//! fast-weight memory (paper Sec. 6.3 swaps its attention functions into the self-attention).
//!
//! Generation runs the decoder a token at a time ([`Seq2Seq::step`]): fast-weight layers carry
//! their state (constant memory and time per token), softmax layers their keys and values.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{AttentionConfig, AttentionKind, MultiHeadAttention, StepCache};
use crate::block::{feed_forward, residual, LayerNormPlacement};
use crate::cross_attention::{CrossAttention, CrossMemory};
use crate::model::sinusoidal_positions_at;
use crate::param::{Embedding, LayerNorm, Linear, ParamInit};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seq2SeqConfig {
    pub vocab: i64,
    /// The padding id: source positions holding it are masked out of every attention.
    pub pad: i64,
    pub encoder_layers: i64,
    pub decoder_layers: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_ff: i64,
    /// Dropout on embeddings, residual branches and inside the feed-forward nets.
    pub dropout: f64,
    pub layer_norm: LayerNormPlacement,
    /// The encoder's self-attention (non-causal: fast weights with the sum rule only).
    pub encoder: AttentionKind,
    /// The decoder's causal self-attention (any rule).
    pub decoder: AttentionKind,
    /// Encoder–decoder attention (softmax, or fast weights with the sum rule).
    pub cross: AttentionKind,
    /// One embedding for source and target (a joint vocabulary); else the encoder has its own.
    pub share_embeddings: bool,
    pub init: ParamInit,
}

impl Seq2SeqConfig {
    fn attention(&self, kind: AttentionKind) -> AttentionConfig {
        AttentionConfig {
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_head: self.d_head,
            kind,
            attn_dropout: 0.0,
        }
    }
}

/// The feed-forward sublayer's weights.
#[derive(Debug)]
struct FeedForward {
    ff_in: Linear,
    ff_out: Linear,
}

impl FeedForward {
    fn new(p: &nn::Path, cfg: &Seq2SeqConfig) -> Result<Self> {
        Ok(FeedForward {
            ff_in: cfg
                .init
                .linear(&(p / "ff_in"), cfg.d_model, cfg.d_ff, true)?,
            ff_out: cfg
                .init
                .linear(&(p / "ff_out"), cfg.d_ff, cfg.d_model, true)?,
        })
    }
    fn forward_t(&self, x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
        feed_forward(&self.ff_in, &self.ff_out, p, x, train)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    attn: MultiHeadAttention,
    ff: FeedForward,
    ln_attn: LayerNorm,
    ln_ff: LayerNorm,
}

#[derive(Debug)]
struct DecoderLayer {
    attn: MultiHeadAttention,
    cross: CrossAttention,
    ff: FeedForward,
    ln_attn: LayerNorm,
    ln_cross: LayerNorm,
    ln_ff: LayerNorm,
}

/// The encoder's output and which source positions are real tokens.
#[derive(Debug)]
pub struct Encoded {
    /// `[B, S, d_model]`.
    pub out: Tensor,
    /// `[B, S]`, bool.
    pub mask: Tensor,
}

/// What the decoder carries between generated tokens: each layer's source memory and
/// self-attention cache, and the position of the next token.
#[derive(Debug)]
pub struct DecoderState {
    memories: Vec<CrossMemory>,
    caches: Vec<Option<StepCache>>,
    /// Tokens consumed so far.
    pub position: i64,
}

impl DecoderState {
    /// Rows `index` `[N]` of the batch: its sentences' memories and their caches.
    pub fn select(&self, index: &Tensor) -> Result<DecoderState> {
        self.pick(Some(index), index)
    }

    /// The hypotheses `index` `[N]` (rows of the self-attention caches), each a row of the same
    /// sentence (a beam search's reordering): the caches are reordered, the sentences' memories,
    /// which the hypotheses of one sentence share ([`CrossAttention::forward_t`]), are kept as
    /// they are, uncopied.
    pub fn reorder_hypotheses(&self, index: &Tensor) -> Result<DecoderState> {
        self.pick(None, index)
    }

    /// The sentences `sentences` `[M']` (rows of the memories) with their hypotheses `rows`
    /// `[N']` (rows of the caches): a search dropping the sentences it has finished.
    pub fn select_sentences(&self, sentences: &Tensor, rows: &Tensor) -> Result<DecoderState> {
        self.pick(Some(sentences), rows)
    }

    /// Rows `sentences` of the memories (all, shared, when None) and `rows` of the caches.
    fn pick(&self, sentences: Option<&Tensor>, rows: &Tensor) -> Result<DecoderState> {
        Ok(DecoderState {
            memories: self
                .memories
                .iter()
                .map(|m| match sentences {
                    Some(s) => m.select(s),
                    None => m.with_tensors(&m.tensors()),
                })
                .collect::<Result<_>>()?,
            caches: self
                .caches
                .iter()
                .map(|c| c.as_ref().map(|c| c.select(rows)).transpose())
                .collect::<Result<_>>()?,
            position: self.position,
        })
    }

    /// Every tensor of the state, in a fixed order: each layer's source memory, then each layer's
    /// self-attention cache (which must exist: take the state after a first step, or
    /// [`DecoderState::buffered`]). What an exported decoder step takes and updates.
    pub fn tensors(&self) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let memories = self.memory_tensors();
        let mut caches = Vec::new();
        for c in &self.caches {
            match c {
                Some(c) => caches.extend(c.tensors()),
                None => bail!("decoder state: a layer has no cache yet (take one step first)"),
            }
        }
        Ok((memories, caches))
    }

    /// Each layer's source memory, in the order of [`DecoderState::tensors`].
    pub fn memory_tensors(&self) -> Vec<Tensor> {
        self.memories
            .iter()
            .flat_map(CrossMemory::tensors)
            .collect()
    }

    /// This state's structure filled with `memories` and `caches` (as [`DecoderState::tensors`]
    /// orders them), at `position`.
    pub fn with_tensors(
        &self,
        memories: &[Tensor],
        caches: &[Tensor],
        position: i64,
    ) -> Result<DecoderState> {
        let (mut m, mut c) = (memories, caches);
        let take = |from: &mut &[Tensor], n: usize, what: &str| -> Result<Vec<Tensor>> {
            if from.len() < n {
                bail!("decoder state: too few {what} tensors");
            }
            let (head, tail) = from.split_at(n);
            *from = tail;
            Ok(head.iter().map(Tensor::shallow_clone).collect())
        };
        let memories = self
            .memories
            .iter()
            .map(|x| x.with_tensors(&take(&mut m, x.tensors().len(), "memory")?))
            .collect::<Result<_>>()?;
        let caches = self
            .caches
            .iter()
            .map(|x| match x {
                Some(x) => Ok(Some(x.with_tensors(&take(
                    &mut c,
                    x.tensors().len(),
                    "cache",
                )?)?)),
                None => bail!("decoder state: a layer has no cache yet (take one step first)"),
            })
            .collect::<Result<_>>()?;
        if !m.is_empty() || !c.is_empty() {
            bail!(
                "decoder state: {} memory and {} cache tensors left over",
                m.len(),
                c.len()
            );
        }
        Ok(DecoderState {
            memories,
            caches,
            position,
        })
    }

    /// The same memories with caches of fixed shapes and no tokens ([`StepCache::buffered`]:
    /// softmax buffers of `max_len` tokens), at position 0. Every layer must have a cache (take a
    /// first step).
    pub fn buffered(&self, max_len: i64) -> Result<DecoderState> {
        self.map_caches(|c| c.buffered(max_len), 0)
    }

    /// Softmax buffers set to take the next token at `position` `[1]` (a traced step's input).
    pub fn at_position(&self, position: &Tensor) -> Result<DecoderState> {
        self.map_caches(|c| c.at_position(position), self.position)
    }

    fn map_caches(
        &self,
        f: impl Fn(&StepCache) -> Result<StepCache>,
        position: i64,
    ) -> Result<DecoderState> {
        Ok(DecoderState {
            memories: self
                .memories
                .iter()
                .map(|m| m.with_tensors(&m.tensors()))
                .collect::<Result<_>>()?,
            caches: self
                .caches
                .iter()
                .map(|c| match c {
                    Some(c) => Ok(Some(f(c)?)),
                    None => bail!("decoder state: a layer has no cache yet (take one step first)"),
                })
                .collect::<Result<_>>()?,
            position,
        })
    }

    /// Bytes of the self-attention caches (what grows with the generated length for softmax).
    pub fn cache_bytes(&self) -> usize {
        self.caches.iter().flatten().map(StepCache::bytes).sum()
    }
}

#[derive(Debug)]
pub struct Seq2Seq {
    pub cfg: Seq2SeqConfig,
    /// The target embedding, also the output layer's weight.
    embedding: Embedding,
    /// The source embedding where it is not shared.
    src_embedding: Option<Embedding>,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// Final LayerNorms, pre-LN only.
    ln_encoder: Option<LayerNorm>,
    ln_decoder: Option<LayerNorm>,
}

impl Seq2Seq {
    pub fn new(p: nn::Path, cfg: Seq2SeqConfig) -> Result<Self> {
        for (name, v) in [
            ("vocab", cfg.vocab),
            ("encoder_layers", cfg.encoder_layers),
            ("decoder_layers", cfg.decoder_layers),
            ("d_ff", cfg.d_ff),
        ] {
            crate::check::positive(name, v)?;
        }
        if !(0..cfg.vocab).contains(&cfg.pad) {
            bail!(
                "pad id {} is outside the vocabulary (0..{})",
                cfg.pad,
                cfg.vocab
            );
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!("dropout must be in [0, 1), got {}", cfg.dropout);
        }
        let d = cfg.d_model;
        let init = cfg.init;
        let emb_init = nn::Init::Randn {
            mean: 0.0,
            stdev: (d as f64).powf(-0.5),
        };
        let embedding = Embedding::new(&(&p / "embedding"), cfg.vocab, d, emb_init)?;
        let src_embedding = (!cfg.share_embeddings)
            .then(|| Embedding::new(&(&p / "src_embedding"), cfg.vocab, d, emb_init))
            .transpose()?;
        let encoder = (0..cfg.encoder_layers)
            .map(|i| {
                let p = &p / "encoder" / i;
                Ok(EncoderLayer {
                    attn: MultiHeadAttention::with_init(
                        &p / "attn",
                        cfg.attention(cfg.encoder),
                        init,
                    )?,
                    ff: FeedForward::new(&p, &cfg)?,
                    ln_attn: init.layer_norm(&(&p / "ln_attn"), d)?,
                    ln_ff: init.layer_norm(&(&p / "ln_ff"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..cfg.decoder_layers)
            .map(|i| {
                let p = &p / "decoder" / i;
                Ok(DecoderLayer {
                    attn: MultiHeadAttention::with_init(
                        &p / "attn",
                        cfg.attention(cfg.decoder),
                        init,
                    )?,
                    cross: CrossAttention::with_init(&p / "cross", cfg.attention(cfg.cross), init)?,
                    ff: FeedForward::new(&p, &cfg)?,
                    ln_attn: init.layer_norm(&(&p / "ln_attn"), d)?,
                    ln_cross: init.layer_norm(&(&p / "ln_cross"), d)?,
                    ln_ff: init.layer_norm(&(&p / "ln_ff"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // the non-causal encoder needs the sum rule: say so now rather than at the first batch
        if let AttentionKind::FastWeight(fw) = cfg.encoder {
            if fw.rule != crate::recurrence::UpdateRule::Sum {
                bail!("encoder: the {} rule has no non-causal form; a fast-weight encoder uses the sum rule", fw.rule);
            }
        }
        let pre = cfg.layer_norm == LayerNormPlacement::Pre;
        let final_ln = |name: &str| pre.then(|| init.layer_norm(&(&p / name), d)).transpose();
        Ok(Seq2Seq {
            cfg,
            embedding,
            src_embedding,
            encoder,
            decoder,
            ln_encoder: final_ln("ln_encoder")?,
            ln_decoder: final_ln("ln_decoder")?,
        })
    }

    pub fn device(&self) -> tch::Device {
        self.embedding.weight.device()
    }

    /// Embedded tokens `[B, T]` at positions 0.. -> `[B, T, d_model]` (dropout in training).
    fn embed(&self, emb: &Embedding, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let t = tokens.size().get(1).copied().unwrap_or(0);
        let positions = Tensor::f_arange(t, (Kind::Int64, tokens.device()))?;
        self.embed_at(emb, tokens, &positions, train)
    }

    /// Embedded tokens `[B, T]` at `positions` `[T]` -> `[B, T, d_model]`.
    fn embed_at(
        &self,
        emb: &Embedding,
        tokens: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let size = crate::check::token_ids("tokens", tokens)?;
        let d = self.cfg.d_model;
        let x = emb.forward(tokens).map_err(|e| {
            anyhow::anyhow!(
                "tokens: {e} (the model's vocabulary has {} entries)",
                self.cfg.vocab
            )
        })?;
        if positions.size() != [size[1]] {
            bail!(
                "positions: expected [{}] (one per token), got {:?}",
                size[1],
                positions.size()
            );
        }
        let pos = sinusoidal_positions_at(positions, d)?;
        Ok((x * (d as f64).sqrt() + pos).f_dropout(self.cfg.dropout, train)?)
    }

    /// Encodes `src` `[B, S]` (padded with the pad id).
    pub fn encode(&self, src: &Tensor, train: bool) -> Result<Encoded> {
        let (p, placement) = (self.cfg.dropout, self.cfg.layer_norm);
        let mask = src.f_ne(self.cfg.pad)?;
        let emb = self.src_embedding.as_ref().unwrap_or(&self.embedding);
        let mut x = self.embed(emb, src, train)?;
        for l in &self.encoder {
            x = residual(placement, &l.ln_attn, &x, p, train, |h| {
                l.attn.forward_noncausal(h, Some(&mask), train)
            })?;
            x = residual(placement, &l.ln_ff, &x, p, train, |h| {
                l.ff.forward_t(h, p, train)
            })?;
        }
        if let Some(ln) = &self.ln_encoder {
            x = ln.forward(&x)?;
        }
        Ok(Encoded { out: x, mask })
    }

    /// Each decoder layer's memory of the source.
    fn memories(&self, enc: &Encoded, train: bool) -> Result<Vec<CrossMemory>> {
        self.decoder
            .iter()
            .map(|l| l.cross.memory(&enc.out, &enc.mask, train))
            .collect()
    }

    /// Teacher forcing: the decoder input `tgt` `[B, T]` (starting with `<s>`) -> logits
    /// `[B, T, vocab]` of each next token.
    pub fn decode_t(&self, tgt: &Tensor, enc: &Encoded, train: bool) -> Result<Tensor> {
        let (p, placement) = (self.cfg.dropout, self.cfg.layer_norm);
        let memories = self.memories(enc, train)?;
        let mut x = self.embed(&self.embedding, tgt, train)?;
        for (l, mem) in self.decoder.iter().zip(&memories) {
            x = residual(placement, &l.ln_attn, &x, p, train, |h| {
                Ok(l.attn.forward_t(h, None, train)?.0)
            })?;
            x = residual(placement, &l.ln_cross, &x, p, train, |h| {
                l.cross.forward_t(h, mem, train)
            })?;
            x = residual(placement, &l.ln_ff, &x, p, train, |h| {
                l.ff.forward_t(h, p, train)
            })?;
        }
        self.logits(&x)
    }

    /// The tied output layer: `[..., d_model]` -> `[..., vocab]`.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.ln_decoder {
            Some(ln) => ln.forward(x)?,
            None => x.shallow_clone(),
        };
        Ok(x.f_matmul(&self.embedding.weight.f_transpose(0, 1)?)?)
    }

    /// The decoder's state before its first token, for `enc`.
    pub fn start(&self, enc: &Encoded) -> Result<DecoderState> {
        Ok(DecoderState {
            memories: self.memories(enc, false)?,
            caches: (0..self.decoder.len()).map(|_| None).collect(),
            position: 0,
        })
    }

    /// The next tokens `[B, T]` of the decoder input (T = 1 when generating) -> their logits
    /// `[B, T, vocab]`, advancing `state`. The same numbers as [`Seq2Seq::decode_t`] on the whole
    /// prefix (without dropout), at the cost of the new tokens only.
    pub fn step(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let t = tokens.size().get(1).copied().unwrap_or(0);
        let positions = Tensor::f_arange_start(
            state.position,
            state.position + t,
            (Kind::Int64, tokens.device()),
        )?;
        let logits = self.step_at(tokens, &positions, state)?;
        state.position += t;
        Ok(logits)
    }

    /// [`Seq2Seq::step`] with the tokens' positions `[T]` given as a tensor (as a traced module
    /// takes them); `state.position` is left alone.
    pub fn step_at(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        let placement = self.cfg.layer_norm;
        let mut x = self.embed_at(&self.embedding, tokens, positions, false)?;
        for ((l, mem), cache) in self
            .decoder
            .iter()
            .zip(&state.memories)
            .zip(state.caches.iter_mut())
        {
            x = residual(placement, &l.ln_attn, &x, 0.0, false, |h| {
                let (y, c) = l.attn.forward_step(h, cache.as_ref())?;
                *cache = Some(c);
                Ok(y)
            })?;
            x = residual(placement, &l.ln_cross, &x, 0.0, false, |h| {
                l.cross.forward_t(h, mem, false)
            })?;
            x = residual(placement, &l.ln_ff, &x, 0.0, false, |h| {
                l.ff.forward_t(h, 0.0, false)
            })?;
        }
        self.logits(&x)
    }
}
