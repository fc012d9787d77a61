//! TorchScript export of a translation model as two traced modules that plain Python
//! (`torch.jit.load`) can run a search with:
//!
//! - `encoder.pt`: `(src [B, S] int64 padded with 0, *memories)` -> the encoder's output
//!   `[B, S, d_model]`; it fills `memories` (each decoder layer's keys, values and source mask)
//!   in place;
//! - `step.pt`: `(tokens [B, 1] int64, position [1] int64, *memories, *caches)` -> the next token's
//!   logits `[B, vocab]`; it updates `caches` in place: a fast-weight layer's state, or a softmax
//!   layer's key and value buffers of `max_target_len` tokens (written at `position`, read up to it).
//!
//! A traced module returns one tensor, so the state lives in tensors the caller allocates:
//! `export.json` lists their shapes and dtypes (zeros to start), with the special ids. A trace fixes
//! the batch B and the source length S it saw (pad shorter sources); softmax decoders also fix the
//! longest translation. Export with a backend made of standard ops (Chunked or Reference) so that
//! the modules need no library of ours. docs/translate.md has a Python example.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, CModule, Kind, Tensor};

use super::bpe::{BOS, EOS, PAD};
use crate::seq2seq::Seq2Seq;

/// A tensor the caller allocates (zeros).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    pub shape: Vec<i64>,
    /// As PyTorch names it: float32, float64, bool, int64, ...
    pub dtype: String,
}

impl Buffer {
    fn of(t: &Tensor) -> Result<Buffer> {
        let dtype = match t.kind() {
            Kind::Float => "float32",
            Kind::Double => "float64",
            Kind::Half => "float16",
            Kind::BFloat16 => "bfloat16",
            Kind::Bool => "bool",
            Kind::Int64 => "int64",
            k => anyhow::bail!("export: no PyTorch name for the dtype {k:?}"),
        };
        Ok(Buffer {
            shape: t.size(),
            dtype: dtype.into(),
        })
    }
}

/// What a user of the exported modules needs to know (`export.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub variant: String,
    pub batch: i64,
    pub source_len: i64,
    /// The most target tokens a softmax decoder's buffers hold (positions 0..max_target_len).
    pub max_target_len: i64,
    pub vocab: i64,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    pub memories: Vec<Buffer>,
    pub caches: Vec<Buffer>,
}

/// Traces `f` on `inputs` and saves the module to `out`.
fn trace(
    name: &str,
    inputs: &[Tensor],
    out: &Path,
    mut f: impl FnMut(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<()> {
    let mut failed = None;
    let module = tch::no_grad(|| {
        CModule::create_by_tracing(name, "forward", inputs, &mut |x| match f(x) {
            Ok(y) => y,
            Err(e) => {
                failed = Some(e);
                vec![Tensor::zeros([1], (Kind::Float, tch::Device::Cpu))]
            }
        })
    })?;
    if let Some(e) = failed {
        return Err(e.context(format!("running the model while tracing {name}")));
    }
    module
        .save(out)
        .with_context(|| format!("writing {}", out.display()))
}

/// Writes `encoder.pt`, `step.pt` and `export.json` for sources `[batch, source_len]` and at most
/// `max_target_len` target tokens into `dir`. The variables of `vs` (the model's) stop requiring
/// gradients: the traces store them as constants.
pub fn export(
    model: &Seq2Seq,
    vs: &mut VarStore,
    variant: &str,
    shape: [i64; 3],
    dir: &Path,
) -> Result<ExportInfo> {
    let [batch, source_len, max_target_len] = shape;
    crate::check::positive("batch", batch)?;
    crate::check::positive("source length", source_len)?;
    crate::check::positive("max target length", max_target_len)?;
    vs.freeze();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dev = model.device();
    // an example source (every position a real token) and the state's structure after one step
    let src = Tensor::f_full([batch, source_len], EOS, (Kind::Int64, dev))?;
    let bos = Tensor::f_full([batch, 1], BOS, (Kind::Int64, dev))?;
    let template = tch::no_grad(|| -> Result<_> {
        let mut state = model.start(&model.encode(&src, false)?)?;
        let _ = model.step(&bos, &mut state)?;
        state.buffered(max_target_len)
    })?;
    let (memories, caches) = template.tensors()?;
    let zeros = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
        ts.iter().map(|t| Ok(t.f_zeros_like()?)).collect()
    };

    let mut inputs = vec![src];
    inputs.extend(zeros(&memories)?);
    trace(
        "FwpTranslationEncoder",
        &inputs,
        &dir.join("encoder.pt"),
        |x| {
            let enc = model.encode(&x[0], false)?;
            for (buf, m) in x[1..].iter().zip(model.start(&enc)?.memory_tensors()) {
                buf.shallow_clone().f_copy_(&m)?;
            }
            Ok(vec![enc.out])
        },
    )?;

    let n_mem = memories.len();
    let position = Tensor::f_zeros([1], (Kind::Int64, dev))?;
    let mut inputs = vec![bos, position];
    inputs.extend(memories.iter().map(Tensor::shallow_clone));
    inputs.extend(zeros(&caches)?);
    trace("FwpTranslationStep", &inputs, &dir.join("step.pt"), |x| {
        let (mem, cache) = x[2..].split_at(n_mem);
        let mut state = template.with_tensors(mem, cache, 0)?.at_position(&x[1])?;
        let logits = model.step_at(&x[0], &x[1], &mut state)?.f_select(1, 0)?; // [B, V]
                                                                               // fast weights come back as new tensors: write them into the caller's (softmax buffers
                                                                               // were written in place already; copying a tensor onto itself does nothing)
        for (buf, new) in cache.iter().zip(state.tensors()?.1) {
            buf.shallow_clone().f_copy_(&new)?;
        }
        Ok(vec![logits])
    })?;

    let info = ExportInfo {
        variant: variant.to_string(),
        batch,
        source_len,
        max_target_len,
        vocab: model.cfg.vocab,
        bos: BOS,
        eos: EOS,
        pad: PAD,
        memories: memories.iter().map(Buffer::of).collect::<Result<_>>()?,
        caches: caches.iter().map(Buffer::of).collect::<Result<_>>()?,
    };
    crate::report::atomic_write(
        &dir.join("export.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    Ok(info)
}
