//! Parameters and the three small layers built on them (linear, embedding, LayerNorm), created and
//! applied fallibly: a size that overflows or does not fit in memory, or an input of the wrong
//! dtype, is an `Err` that names the variable and its size, never a panic inside the `VarStore`.
//!
//! Variables keep tch's names (`weight`, `bias`) and initialisations, drawn in tch's order, so a
//! model built here holds the same numbers as one built with `tch::nn::{linear, embedding,
//! layer_norm}` from the same seed.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Bytes of a `dims` tensor of `kind`, or an error when the element count overflows.
pub fn bytes(name: &str, dims: &[i64], kind: Kind) -> Result<u128> {
    let mut elements: u128 = 1;
    for &d in dims {
        if d < 0 {
            bail!("{name}: negative size in shape {dims:?}");
        }
        elements = elements.saturating_mul(d as u128);
    }
    let bytes = elements.saturating_mul(kind.elt_size_in_bytes() as u128);
    if elements > i64::MAX as u128 {
        bail!(
            "{name}: shape {dims:?} has {elements} elements, more than a tensor can hold ({})",
            i64::MAX
        );
    }
    Ok(bytes)
}

/// `bytes` in binary units: `512 B`, `1.5 MiB`, `20.0 TiB`.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The first line of a libtorch error (its C++ backtrace left out).
pub fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// A trainable variable `p / name` of shape `dims`, initialised by `init`.
pub fn var(p: &nn::Path, name: &str, dims: &[i64], init: Init) -> Result<Tensor> {
    allocate(p, name, dims, || p.f_var(name, dims, init))
}

/// A variable `p / name` of zeros that is saved with the model but not trained.
pub fn buffer(p: &nn::Path, name: &str, dims: &[i64]) -> Result<Tensor> {
    allocate(p, name, dims, || p.f_zeros_no_train(name, dims))
}

fn allocate(
    p: &nn::Path,
    name: &str,
    dims: &[i64],
    make: impl FnOnce() -> Result<Tensor, tch::TchError>,
) -> Result<Tensor> {
    let full = p.path(name);
    let size = bytes(&full, dims, p.kind())?;
    make().map_err(|e| {
        anyhow!(
            "cannot allocate the parameter {full} of shape {dims:?} ({}, {:?}): {}",
            human_bytes(size),
            p.kind(),
            first_line(e)
        )
    })
}

/// Checks that `x` has the dtype and device of the layer's parameter `w`.
fn check_input(layer: &str, x: &Tensor, w: &Tensor) -> Result<()> {
    let (kind, want) = (x.f_kind()?, w.f_kind()?);
    if kind != want {
        bail!("{layer}: input dtype {kind:?} does not match the parameters' dtype {want:?}");
    }
    crate::check::same_device(layer, x, "its parameters", w)
}

/// y = x W^T + b.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// tch's defaults: W Kaiming-uniform, b uniform in ±1/sqrt(in_dim) (if `bias`).
    pub fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
        let bias_init = bias.then_some(Init::Uniform {
            lo: -bound,
            up: bound,
        });
        Self::with_init(
            p,
            in_dim,
            out_dim,
            nn::init::DEFAULT_KAIMING_UNIFORM,
            bias_init,
        )
    }

    /// `weight` `[out_dim, in_dim]` from `weight_init`; a bias from `bias_init` where given
    /// (drawn first, as tch does).
    pub fn with_init(
        p: &nn::Path,
        in_dim: i64,
        out_dim: i64,
        weight_init: Init,
        bias_init: Option<Init>,
    ) -> Result<Self> {
        crate::check::positive(&p.path("in_dim"), in_dim)?;
        crate::check::positive(&p.path("out_dim"), out_dim)?;
        let bias = bias_init
            .map(|init| var(p, "bias", &[out_dim], init))
            .transpose()?;
        let weight = var(p, "weight", &[out_dim, in_dim], weight_init)?;
        Ok(Linear { weight, bias })
    }

    /// x `[..., in_dim]` -> `[..., out_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input("linear layer", x, &self.weight)?;
        let in_dim = self.weight.size()[1];
        if x.size().last() != Some(&in_dim) {
            bail!(
                "linear layer: input shape {:?} does not end in its input size {in_dim}",
                x.size()
            );
        }
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// A lookup table of `n` vectors.
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    /// `weight` `[n, dim]` from `init`.
    pub fn new(p: &nn::Path, n: i64, dim: i64, init: Init) -> Result<Self> {
        crate::check::positive(&p.path("n"), n)?;
        crate::check::positive(&p.path("dim"), dim)?;
        Ok(Embedding {
            weight: var(p, "weight", &[n, dim], init)?,
        })
    }

    /// ids (int64, any shape, each in `0..n`) -> `[..., dim]`. An id outside the table is an error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let kind = ids.f_kind()?;
        if kind != Kind::Int64 {
            bail!("embedding: expected int64 ids, got {kind:?}");
        }
        let n = self.weight.size()[0];
        if ids.numel() > 0 {
            let (lo, hi) = ids.f_aminmax(None::<i64>, false)?; // one pass over the ids
            let (lo, hi) = (i64::try_from(lo)?, i64::try_from(hi)?);
            if lo < 0 || hi >= n {
                let bad = if lo < 0 { lo } else { hi };
                bail!("embedding: id {bad} is outside the table of {n} entries (0..{n})");
            }
        }
        Ok(Tensor::f_embedding(&self.weight, ids, -1, false, false)?)
    }
}

/// LayerNorm over the last dimension with a learned scale and shift.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Scale 1, shift 0, eps 1e-5 (tch's and PyTorch's defaults).
    pub fn new(p: &nn::Path, dim: i64) -> Result<Self> {
        Self::with_init(p, dim, Init::Const(1.0))
    }

    /// Scale from `weight_init`, shift 0, eps 1e-5.
    pub fn with_init(p: &nn::Path, dim: i64, weight_init: Init) -> Result<Self> {
        crate::check::positive(&p.path("dim"), dim)?;
        Ok(LayerNorm {
            weight: var(p, "weight", &[dim], weight_init)?,
            bias: var(p, "bias", &[dim], Init::Const(0.0))?,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        check_input("layer norm", x, &self.weight)?;
        let d = self.weight.size()[0];
        Ok(x.f_layer_norm(
            [d].as_slice(),
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )?)
    }
}

/// How the linear layers and LayerNorms of a network start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum ParamInit {
    /// tch's defaults: weights Kaiming-uniform in ±sqrt(6 / fan_in), biases uniform in
    /// ±1/sqrt(fan_in); LayerNorm scale 1.
    #[default]
    Framework,
    /// Weights N(0, std²), biases 0, LayerNorm scale N(1, std²) (the authors' language models:
    /// std = 0.02).
    Normal { std: f64 },
}

impl ParamInit {
    /// A linear layer `in_dim -> out_dim` started this way.
    pub fn linear(self, p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear> {
        match self {
            ParamInit::Framework => Linear::new(p, in_dim, out_dim, bias),
            ParamInit::Normal { std } => Linear::with_init(
                p,
                in_dim,
                out_dim,
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
                bias.then_some(Init::Const(0.0)),
            ),
        }
    }

    /// A LayerNorm over `dim` started this way.
    pub fn layer_norm(self, p: &nn::Path, dim: i64) -> Result<LayerNorm> {
        match self {
            ParamInit::Framework => LayerNorm::new(p, dim),
            ParamInit::Normal { std } => LayerNorm::with_init(
                p,
                dim,
                Init::Randn {
                    mean: 1.0,
                    stdev: std,
                },
            ),
        }
    }

    /// Checks the standard deviation.
    pub fn check(self) -> Result<()> {
        if let ParamInit::Normal { std } = self {
            if !(std.is_finite() && std > 0.0) {
                bail!("init: the standard deviation must be finite and > 0, got {std}");
            }
        }
        Ok(())
    }
}
