//! TorchScript export of a trained LM.
//!
//! Export traces `tokens [batch, T] (int64) -> logits [batch, T, vocab]` in evaluation mode. With a
//! backend made of standard libtorch ops (Chunked, the default here, or Reference) the saved module
//! runs in plain Python (`torch.jit.load`) with no extra library; with `Fused` it records the
//! `fwp::sum_rule` / `fwp::delta_rule` ops and needs this library's op registration to load. A trace
//! fixes the shapes it saw: feed the module `[batch, T]` as given at export.

use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn::VarStore, CModule, Device, Kind, Tensor};

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
