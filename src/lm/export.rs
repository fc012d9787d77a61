//! TorchScript export of a trained LM and text generation from one.
//!
//! Export traces `tokens [batch, T] (int64) -> logits [batch, T, vocab]` in evaluation mode. With a
//! backend made of standard libtorch ops (Chunked, the default here, or Reference) the saved module
//! runs in plain Python (`torch.jit.load`) with no extra library; with `Fused` it records the
//! `fwp::sum_rule` / `fwp::delta_rule` ops and needs this library's op registration to load. A trace
//! fixes the shapes it saw: feed the module `[batch, T]` as given at export.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn::VarStore, CModule, Device, Kind, Tensor};

use super::data::Vocab;
use crate::model::LanguageModel;

/// Traces `model` on `[batch, t]` tokens and saves it to `out`. The variables of `vs` (the model's)
/// stop requiring gradients: the trace stores them as constants.
pub fn export(
    model: &LanguageModel,
    vs: &mut VarStore,
    batch: i64,
    t: i64,
    out: &Path,
) -> Result<()> {
    vs.freeze();
    crate::check::positive("batch", batch)?;
    crate::check::positive("T", t)?;
    let example = Tensor::f_zeros([batch, t], (Kind::Int64, model.device()))?;
    let mut failed = None;
    let module =
        tch::no_grad(|| {
            CModule::create_by_tracing("FwpLanguageModel", "forward", &[example], &mut |x| {
                match model.forward_t(&x[0], None, 0, false) {
                    Ok((logits, _)) => vec![logits],
                    Err(e) => {
                        failed = Some(e);
                        vec![Tensor::zeros([1], (Kind::Float, Device::Cpu))]
                    }
                }
            })
        })?;
    if let Some(e) = failed {
        return Err(e.context("running the model while tracing"));
    }
    module
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Sampling options.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub tokens: usize,
    /// Softmax temperature; 0 picks the most likely word.
    pub temperature: f64,
    /// Keep only the k most likely words (0: all).
    pub top_k: i64,
    pub seed: i64,
}

/// Continues `prompt` (words) by `opts.tokens` words, each predicted from the last `context` words.
pub fn sample(
    model: &LanguageModel,
    vocab: &Vocab,
    context: i64,
    prompt: &[String],
    opts: SampleOptions,
) -> Result<Vec<String>> {
    if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
        bail!(
            "temperature must be finite and >= 0, got {}",
            opts.temperature
        );
    }
    if opts.top_k < 0 {
        bail!("top-k must be >= 0, got {}", opts.top_k);
    }
    tch::manual_seed(opts.seed);
    let mut ids: Vec<i64> = if prompt.is_empty() {
        vec![vocab.id(super::data::EOS)]
    } else {
        vocab.encode(prompt)
    };
    let start = ids.len();
    tch::no_grad(|| -> Result<()> {
        for _ in 0..opts.tokens {
            let from = ids.len().saturating_sub(context as usize);
            let x = Tensor::from_slice(&ids[from..])
                .f_unsqueeze(0)?
                .f_to_device(model.device())?;
            let (logits, _) = model.forward_t(&x, None, 0, false)?;
            let last = logits
                .f_select(1, -1)?
                .f_squeeze_dim(0)?
                .f_to_kind(Kind::Float)?; // [V]
            let next = if opts.temperature == 0.0 {
                i64::try_from(last.f_argmax(0, false)?)?
            } else {
                let mut scaled = last / opts.temperature;
                if !bool::try_from(scaled.f_isfinite()?.f_all()?)? {
                    bail!(
                        "temperature {:e}: too small for these logits (dividing by it overflows); \
                         use 0 to pick the most likely word, or a larger temperature",
                        opts.temperature
                    );
                }
                if opts.top_k > 0 && opts.top_k < scaled.size()[0] {
                    let (kth, _) = scaled.f_topk(opts.top_k, 0, true, true)?;
                    let cut = kth.f_select(0, opts.top_k - 1)?;
                    scaled = scaled.f_where_self(
                        &scaled.f_ge_tensor(&cut)?,
                        &Tensor::from(f64::NEG_INFINITY),
                    )?;
                }
                let probs = scaled.f_softmax(0, Kind::Float)?;
                i64::try_from(probs.f_multinomial(1, false)?.f_select(0, 0)?)?
            };
            ids.push(next);
        }
        Ok(())
    })?;
    Ok(ids[start..]
        .iter()
        .map(|&i| vocab.word(i).to_string())
        .collect())
}
