//! Adam (Kingma & Ba) with PyTorch's update, whose state can be saved and restored (tch's optimiser
//! keeps its moments inside libtorch, out of reach). Also the learning-rate schedule and gradient
//! clipping of the paper's LM protocol (docs/lm.md), and the inverse-square-root schedule of the
//! translation experiment (docs/translate.md).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn::VarStore, Kind, Tensor};

/// Linear warm-up over `warmup` steps to `peak`, then cosine decay to 0 at `total`.
pub fn learning_rate(step: usize, peak: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    0.5 * peak * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Linear warm-up over `warmup` steps to `peak`, then decay with the inverse square root of the step
/// (Vaswani et al. 2017): `peak * min((step + 1) / warmup, sqrt(warmup / (step + 1)))`.
pub fn inverse_sqrt_learning_rate(step: usize, peak: f64, warmup: usize) -> f64 {
    let (s, w) = ((step + 1) as f64, warmup.max(1) as f64);
    peak * (s / w).min((w / s).sqrt())
}

/// Scales the gradients of `params` so that their joint L2 norm is at most `max` (as PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(params: &BTreeMap<String, Tensor>, max: f64) -> Result<f64> {
    let grads: Vec<Tensor> = params
        .values()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sq: Vec<Tensor> = grads
        .iter()
        .map(|g| g.f_square()?.f_sum(Kind::Double))
        .collect::<Result<_, _>>()?;
    let norm = f64::try_from(Tensor::f_stack(&sq, 0)?.f_sum(Kind::Double)?.f_sqrt()?)?;
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        tch::no_grad(|| -> Result<()> {
            for g in &grads {
                let _ = g.shallow_clone().f_mul_scalar_(coef)?;
            }
            Ok(())
        })?;
    }
    Ok(norm)
}

pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates applied so far.
    pub step: i64,
    /// The trainable variables by name (sorted, so that saved state lines up).
    params: BTreeMap<String, Tensor>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl Adam {
    /// Over every trainable variable of `vs`, with PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn new(vs: &VarStore) -> Result<Adam> {
        let params: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let zeros = |p: &Tensor| p.f_zeros_like().map_err(anyhow::Error::from);
        let m = params
            .iter()
            .map(|(n, p)| Ok((n.clone(), zeros(p)?)))
            .collect::<Result<_>>()?;
        let v = params
            .iter()
            .map(|(n, p)| Ok((n.clone(), zeros(p)?)))
            .collect::<Result<_>>()?;
        Ok(Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            params,
            m,
            v,
        })
    }

    pub fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the current gradients (parameters without a
    /// gradient are left alone).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        tch::no_grad(|| -> Result<()> {
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let (m, v) = (&self.m[name], &self.v[name]);
                let _ = m
                    .shallow_clone()
                    .f_mul_scalar_(self.beta1)?
                    .f_add_(&(&g * (1.0 - self.beta1)))?;
                let _ = v
                    .shallow_clone()
                    .f_mul_scalar_(self.beta2)?
                    .f_add_(&(g.f_square()? * (1.0 - self.beta2)))?;
                // p -= lr * (m / c1) / (sqrt(v / c2) + eps)
                let denom = (v / c2).f_sqrt()? + self.eps;
                let update = (m / c1).f_div(&denom)? * lr;
                let _ = p.shallow_clone().f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// Writes the moments to `path` (safetensors: `m.<name>`, `v.<name>`); the step count goes in
    /// the checkpoint's metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, &Tensor)> = self
            .m
            .iter()
            .map(|(n, t)| (format!("m.{n}"), t))
            .chain(self.v.iter().map(|(n, t)| (format!("v.{n}"), t)))
            .collect();
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Restores moments saved by [`Adam::save`] for exactly these parameters, and the step count.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<()> {
        let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        for (prefix, moments) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (name, t) in moments.iter_mut() {
                let key = format!("{prefix}.{name}");
                let Some(s) = saved.get(&key) else {
                    bail!("{}: no optimiser state {key}", path.display());
                };
                if s.size() != t.size() {
                    bail!(
                        "{}: {key} has shape {:?}, the model needs {:?}",
                        path.display(),
                        s.size(),
                        t.size()
                    );
                }
                tch::no_grad(|| t.f_copy_(s))?;
            }
        }
        if saved.len() != self.m.len() + self.v.len() {
            bail!(
                "{}: {} optimiser tensors for a model with {} parameters",
                path.display(),
                saved.len(),
                self.m.len()
            );
        }
        self.step = step;
        Ok(())
    }
}
