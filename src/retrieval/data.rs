//! Data of the synthetic associative-retrieval tasks (docs/retrieval.md).
//!
//! S keys and S values, both numbered 0..S (the authors' strings "a".."z", "aa", ... and their
//! upper-case forms: a vocabulary of 2S symbols).
//! - Setting 1 (capacity): a sequence of length S holds every key exactly once, in random order, each
//!   paired with a distinct value (a random permutation). Query: a key of the sequence; target: its value.
//! - Setting 2 (updates): length 2S, keys and values drawn with replacement, so keys repeat with new
//!   values. Query: a key that occurs; target: the value at its LAST occurrence.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setting {
    /// Setting 1: every key once; tests how many associations the memory holds.
    Capacity,
    /// Setting 2: keys repeat with new values; tests whether the memory can update.
    Updates,
}

impl Setting {
    pub fn from_number(n: u8) -> Result<Self> {
        match n {
            1 => Ok(Setting::Capacity),
            2 => Ok(Setting::Updates),
            _ => bail!("setting must be 1 (capacity) or 2 (updates), got {n}"),
        }
    }

    pub fn number(&self) -> u8 {
        match self {
            Setting::Capacity => 1,
            Setting::Updates => 2,
        }
    }

    /// Sequence length for S keys.
    pub fn length(&self, s: i64) -> i64 {
        match self {
            Setting::Capacity => s,
            Setting::Updates => 2 * s,
        }
    }
}

/// A batch of B sequences with Q queries each.
#[derive(Debug)]
pub struct Batch {
    /// Key ids `[B, L]` (int64, in 0..S).
    pub keys: Tensor,
    /// Value ids `[B, L]` (int64, in 0..S).
    pub values: Tensor,
    /// Queried key ids `[B, Q]`.
    pub query: Tensor,
    /// Value id expected for each query `[B, Q]`.
    pub target: Tensor,
    /// Which queries are real `[B, Q]` (bool); Setting 2 rows can hold fewer distinct keys than Q.
    pub mask: Tensor,
}

/// Samples `batch` sequences over `s` keys. `queries`: how many distinct keys of each sequence to
/// ask (training: 1; evaluation: every distinct key, at most 200), drawn at random without repetition.
pub fn sample(setting: Setting, s: i64, batch: i64, queries: i64, device: Device) -> Result<Batch> {
    if s < 1 {
        bail!("S (number of keys) must be >= 1, got {s}");
    }
    let len = setting.length(s);
    let (keys, values): (Vec<i64>, Vec<i64>) = match setting {
        Setting::Capacity => {
            // each row: a permutation of the keys and one of the values
            let perm = |_| Tensor::rand([batch, s], (Kind::Float, Device::Cpu)).argsort(-1, false);
            (
                Vec::<i64>::try_from(perm(0).view([-1]))?,
                Vec::<i64>::try_from(perm(1).view([-1]))?,
            )
        }
        Setting::Updates => {
            let draw = || Tensor::randint(s, [batch, len], (Kind::Int64, Device::Cpu));
            (
                Vec::<i64>::try_from(draw().view([-1]))?,
                Vec::<i64>::try_from(draw().view([-1]))?,
            )
        }
    };
    let q_max = queries.min(s).max(1);
    let mut query = vec![0i64; (batch * q_max) as usize];
    let mut target = vec![0i64; (batch * q_max) as usize];
    let mut mask = vec![false; (batch * q_max) as usize];
    for b in 0..batch as usize {
        let row = &keys[b * len as usize..(b + 1) * len as usize];
        let vals = &values[b * len as usize..(b + 1) * len as usize];
        // value at the last occurrence of each key present in the row
        let mut last = vec![-1i64; s as usize];
        for (k, v) in row.iter().zip(vals) {
            last[*k as usize] = *v;
        }
        let present: Vec<i64> = (0..s).filter(|&k| last[k as usize] >= 0).collect();
        // a random subset of the present keys, in random order
        let order = Vec::<i64>::try_from(Tensor::randperm(
            present.len() as i64,
            (Kind::Int64, Device::Cpu),
        ))?;
        for (i, &o) in order.iter().take(q_max as usize).enumerate() {
            let key = present[o as usize];
            let at = b * q_max as usize + i;
            query[at] = key;
            target[at] = last[key as usize];
            mask[at] = true;
        }
    }
    let t = |v: &[i64], cols: i64| Tensor::from_slice(v).view([batch, cols]).to_device(device);
    Ok(Batch {
        keys: t(&keys, len),
        values: t(&values, len),
        query: t(&query, q_max),
        target: t(&target, q_max),
        mask: Tensor::from_slice(&mask)
            .view([batch, q_max])
            .to_device(device),
    })
}
