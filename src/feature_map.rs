//! Feature maps phi: R^{d_key} -> R^{d_dot} (docs/derivations.md Sec. 3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::check;

/// The feature map applied to keys and queries before the fast-weight recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureMap {
    /// ELU(x) + 1 (Katharopoulos et al. 2020); width d_key.
    Linear,
    /// FAVOR+ positive orthogonal random features (Performer) with `m` random projections;
    /// width 2m. phi(q) . phi(k) estimates exp(q . k) without bias.
    Favor { m: i64 },
    /// Deterministic parameter-free projection (the paper's Sec. 4.2) of order `nu`;
    /// width 2 d_key nu.
    Dpfp { nu: i64 },
    /// phi(x) = x; width d_key.
    Identity,
}

impl FeatureMap {
    /// d_dot, the width of phi(x) for inputs of width `d_key`.
    pub fn width(&self, d_key: i64) -> i64 {
        match *self {
            FeatureMap::Linear | FeatureMap::Identity => d_key,
            FeatureMap::Favor { m } => 2 * m,
            FeatureMap::Dpfp { nu } => 2 * d_key * nu,
        }
    }

    /// Checks the map's own parameters against the input width `d_key`.
    pub fn validate(&self, d_key: i64) -> Result<()> {
        check::positive("d_key", d_key)?;
        match *self {
            FeatureMap::Favor { m } => check::positive("FAVOR+ m", m),
            FeatureMap::Dpfp { nu } if nu < 1 || nu > 2 * d_key - 1 => {
                bail!(
                    "DPFP nu must be in 1..={} (2 d_key - 1) for d_key = {d_key}, got {nu}",
                    2 * d_key - 1
                )
            }
            _ => Ok(()),
        }
    }
}

/// When the FAVOR+ random matrix is drawn again. Within one forward pass keys and queries always
/// share one matrix (their features estimate exp(q . k) only then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FavorRedraw {
    /// Drawn once at construction and saved with the model: evaluation is reproducible.
    #[default]
    Never,
    /// Drawn again at every training-mode forward pass; evaluation uses the last matrix drawn,
    /// which is saved with the model.
    EveryTrainingStep,
    /// Drawn again at every forward pass, training and evaluation alike (the authors' synthetic
    /// experiments): evaluation is a Monte-Carlo estimate over matrices. The last matrix drawn is
    /// saved with the model.
    EveryForward,
}

crate::names::named_enum!(FavorRedraw, "FAVOR+ redraw", {
    Never => "never",
    EveryTrainingStep => "every-training-step",
    EveryForward => "every-forward",
});

/// A feature map with its state: the FAVOR+ random matrix lives in the `VarStore` (not
/// trainable) so that it is saved and loaded with the model.
#[derive(Debug)]
pub struct Phi {
    pub map: FeatureMap,
    pub d_key: i64,
    pub redraw: FavorRedraw,
    /// FAVOR+ projection R: `[m, d_key]`.
    projection: Option<Tensor>,
}

impl Phi {
    pub fn new(p: nn::Path, map: FeatureMap, d_key: i64, redraw: FavorRedraw) -> Result<Self> {
        map.validate(d_key)?;
        let projection = match map {
            FeatureMap::Favor { m } => {
                let r = crate::param::buffer(&p, "favor_projection", &[m, d_key])?;
                let phi_r = tch::no_grad(|| orthogonal_gaussian(m, d_key, r.kind(), r.device()))?;
                tch::no_grad(|| r.shallow_clone().f_copy_(&phi_r))?;
                Some(r)
            }
            _ => None,
        };
        Ok(Phi {
            map,
            d_key,
            redraw,
            projection,
        })
    }

    /// Output width d_dot.
    pub fn width(&self) -> i64 {
        self.map.width(self.d_key)
    }

    /// Draws a fresh FAVOR+ matrix in place (no-op for the other maps).
    pub fn redraw(&self) -> Result<()> {
        self.fresh_projection().map(|_| ())
    }

    /// A new matrix, also copied into the saved buffer. The caller computes with the returned
    /// tensor, not with the buffer, so that a later redraw cannot change a tensor that an
    /// autograd graph still holds.
    fn fresh_projection(&self) -> Result<Option<Tensor>> {
        let Some(r) = &self.projection else {
            return Ok(None);
        };
        let (m, d) = (r.size()[0], r.size()[1]);
        let fresh = orthogonal_gaussian(m, d, r.kind(), r.device())?;
        tch::no_grad(|| r.shallow_clone().f_copy_(&fresh))?;
        Ok(Some(fresh))
    }

    /// Whether a forward pass in this mode draws a new FAVOR+ matrix.
    pub fn redraws(&self, train: bool) -> bool {
        self.projection.is_some()
            && match self.redraw {
                FavorRedraw::Never => false,
                FavorRedraw::EveryTrainingStep => train,
                FavorRedraw::EveryForward => true,
            }
    }

    /// phi(x) for one input alone, as a pass of its own (a redrawing map draws for it). Keys and
    /// queries of one pass go through [`Phi::features`] together instead.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut out = self.features(&[x], train)?;
        Ok(out.remove(0))
    }

    /// phi(x) for each x `[..., d_key]` -> `[..., d_dot]`, all with one FAVOR+ matrix: the pass's
    /// keys and queries go through one call. Draws that matrix first if so configured.
    pub fn features(&self, xs: &[&Tensor], train: bool) -> Result<Vec<Tensor>> {
        let r = if self.redraws(train) {
            self.fresh_projection()?
        } else {
            self.projection.as_ref().map(Tensor::shallow_clone)
        };
        xs.iter()
            .map(|x| match (&self.map, &r) {
                (FeatureMap::Favor { .. }, Some(r)) => favor(x, &r.f_to_kind(x.kind())?),
                (map, _) => apply(*map, x),
            })
            .collect()
    }
}

/// phi(x) for the parameter-free maps; FAVOR+ needs its matrix, see [`favor`].
pub fn apply(map: FeatureMap, x: &Tensor) -> Result<Tensor> {
    match map {
        FeatureMap::Linear => Ok(x.f_elu()? + 1.0),
        FeatureMap::Identity => Ok(x.shallow_clone()),
        FeatureMap::Dpfp { nu } => dpfp(x, nu),
        FeatureMap::Favor { .. } => {
            bail!("FAVOR+ needs its random matrix: use Phi or feature_map::favor")
        }
    }
}

/// DPFP (paper Sec. 4.2, Eq. 37): r = ReLU([x, -x]); phi(x) = [r * roll(r, 1), ..., r * roll(r, nu)].
pub fn dpfp(x: &Tensor, nu: i64) -> Result<Tensor> {
    let d_key = *x.size().last().unwrap_or(&0);
    FeatureMap::Dpfp { nu }.validate(d_key)?;
    let r = Tensor::f_cat(&[x.f_relu()?, x.f_neg()?.f_relu()?], -1)?; // [..., 2 d_key]
    let parts: Vec<Tensor> = (1..=nu)
        .map(|i| Ok(&r * r.f_roll([i], [-1])?))
        .collect::<Result<_>>()?;
    Ok(Tensor::f_cat(&parts, -1)?) // [..., 2 d_key nu]
}

/// FAVOR+ positive random features: phi(x) = exp(-|x|^2 / 2) / sqrt(2m) [exp(R x), exp(-R x)]
/// with R `[m, d_key]`. Then E[phi(q) . phi(k)] = exp(q . k).
pub fn favor(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let m = r.size()[0];
    let rx = x.f_matmul(&r.f_transpose(0, 1)?)?; // [..., m]
    let half_norm = x
        .f_square()?
        .f_sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>)?
        * 0.5;
    // Subtract |x|^2/2 inside the exponent (no overflow from a separate exp of each factor).
    let pos = (&rx - &half_norm).f_exp()?;
    let neg = (rx.f_neg()? - &half_norm).f_exp()?;
    Ok(Tensor::f_cat(&[pos, neg], -1)? / (2.0 * m as f64).sqrt())
}

/// `m` rows of dimension `d`: blocks of orthonormal rows (QR of Gaussian matrices), each row then
/// scaled to the norm of an independent Gaussian vector, so rows are marginally N(0, I).
pub fn orthogonal_gaussian(m: i64, d: i64, kind: Kind, device: tch::Device) -> Result<Tensor> {
    let mut blocks = Vec::new();
    let mut left = m;
    while left > 0 {
        let g = Tensor::f_randn([d, d], (Kind::Double, device))?;
        let (q, _) = Tensor::f_linalg_qr(&g, "reduced")?;
        let rows = left.min(d);
        blocks.push(q.f_transpose(0, 1)?.f_narrow(0, 0, rows)?); // orthonormal rows
        left -= rows;
    }
    let ortho = Tensor::f_cat(&blocks, 0)?; // [m, d]
    let norms = Tensor::f_randn([m, d], (Kind::Double, device))?.f_norm_scalaropt_dim(
        2,
        [1i64].as_slice(),
        true,
    )?;
    Ok((ortho * norms).f_to_kind(kind)?)
}

/// Parses `linear`, `identity`, `dpfp:NU` or `favor:M` (command-line form).
impl std::str::FromStr for FeatureMap {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let number = |what: &str| -> Result<i64> {
            let a = arg.ok_or_else(|| {
                anyhow::anyhow!("feature map '{s}': give {what}, e.g. '{name}:2'")
            })?;
            a.parse().map_err(|_| {
                anyhow::anyhow!("feature map '{s}': {what} must be an integer, got '{a}'")
            })
        };
        let map = match (name.to_ascii_lowercase().as_str(), arg) {
            ("linear", None) => FeatureMap::Linear,
            ("identity", None) => FeatureMap::Identity,
            ("dpfp", _) => FeatureMap::Dpfp { nu: number("nu")? },
            ("favor", _) => FeatureMap::Favor { m: number("m")? },
            _ => bail!("unknown feature map '{s}': expected linear, identity, dpfp:NU or favor:M"),
        };
        Ok(map)
    }
}

impl std::fmt::Display for FeatureMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureMap::Linear => write!(f, "linear"),
            FeatureMap::Identity => write!(f, "identity"),
            FeatureMap::Dpfp { nu } => write!(f, "dpfp:{nu}"),
            FeatureMap::Favor { m } => write!(f, "favor:{m}"),
        }
    }
}
