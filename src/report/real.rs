//! Serde helpers for numbers that may legitimately be NaN or infinite (a diverged run's loss, an
//! overflowing perplexity): `#[serde(with = "fwp::report::real")]` writes them as the strings
//! `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no such numbers; serde_json would write `null`)
//! and reads them back, along with plain numbers and the `null` of files written before (as NaN).
//! [`option`] does the same for `Option<f64>` (`null` is `None`), [`pairs`] for `Vec<(usize, f64)>`.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// `x` as a JSON number, or the string naming a non-finite value.
pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    Real(*x).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Real::deserialize(d).map(|r| r.0)
}

/// An f64 that serialises as [`serialize`] does (for use inside other containers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Real(pub f64);

impl Serialize for Real {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f64(x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if x > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
}

impl<'de> Deserialize<'de> for Real {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RealVisitor).map(Real)
    }
}

struct RealVisitor;

impl Visitor<'_> for RealVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, or \"NaN\", \"Infinity\" or \"-Infinity\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
    /// Files written before non-finite numbers were named hold `null` where one stood.
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
}

/// `Option<f64>`: `None` as `null`, `Some` as [`serialize`] writes it.
pub mod option {
    use super::Real;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        x.map(Real).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Real>::deserialize(d)?.map(|r| r.0))
    }
}

/// `Vec<(usize, f64)>`, each number as [`serialize`] writes it.
pub mod pairs {
    use super::Real;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[(usize, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(i, x)| (i, Real(x))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(usize, f64)>, D::Error> {
        let v = Vec::<(usize, Real)>::deserialize(d)?;
        Ok(v.into_iter().map(|(i, r)| (i, r.0)).collect())
    }
}
