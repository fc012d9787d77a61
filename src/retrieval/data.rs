//! Data of the synthetic associative-retrieval tasks (docs/retrieval.md).
//!
//! S keys and S values, both numbered 0..S (the authors' strings "a".."z", "aa", ... and their
//! upper-case forms: a vocabulary of 2S symbols).
//! - Setting 1 (capacity): a sequence of length S holds every key exactly once, in random order, each
//!   paired with a distinct value (a random permutation). Query: a key of the sequence; target: its value.
//! - Setting 2 (updates): length 2S, keys and values drawn with replacement, so keys repeat with new
//!   values. Query: a key that occurs; target: the value at its LAST occurrence.
//!
//! Training batches ask one query per sequence, drawn as [`QueryDraw`] says; evaluation batches ask
//! every distinct key of each sequence (at most 200), in the order [`QueryOrder`] says, on
//! sequences as long as [`EvalLength`] says. The authors' code draws the training query at a
//! uniform position and evaluates Setting 2 on sequences of S writes (docs/retrieval.md).

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

/// How the one query of a training sequence is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryDraw {
    /// Uniformly over the distinct keys of the sequence (fwp's first protocol).
    #[default]
    Keys,
    /// Uniformly over the positions of the sequence, so a key written n times is asked n times as
    /// often (the authors'); the target is still the value at the key's last occurrence.
    Positions,
}

/// Which distinct keys an evaluation sequence asks, when it holds more than the query limit, and
/// in which order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryOrder {
    /// A random subset, in random order (fwp's first protocol).
    #[default]
    Random,
    /// The lowest key ids first (the authors').
    LowestIds,
}

/// How long the evaluation sequences are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalLength {
    /// As in training: S in Setting 1, 2S in Setting 2 (fwp's first protocol).
    #[default]
    Training,
    /// S writes in both settings (the authors': Setting 2 trains on 2S writes but evaluates on S).
    Keys,
}

impl EvalLength {
    /// The evaluation sequence length for `s` keys in `setting`.
    pub fn length(&self, setting: Setting, s: i64) -> i64 {
        match self {
            EvalLength::Training => setting.length(s),
            EvalLength::Keys => s,
        }
    }
}

/// Keys and values `[batch, len]` (row-major) of `batch` sequences over `s` keys: a permutation
/// of the keys and one of the values per row in Setting 1 (needs `len == s`), draws with
/// replacement in Setting 2.
fn sequences(setting: Setting, s: i64, batch: i64, len: i64) -> Result<(Vec<i64>, Vec<i64>)> {
    if s < 1 {
        bail!("S (number of keys) must be >= 1, got {s}");
    }
    crate::check::positive("batch", batch)?;
    crate::check::positive("sequence length", len)?;
    Ok(match setting {
        Setting::Capacity => {
            if len != s {
                bail!("setting 1 holds every key once: length must be S = {s}, got {len}");
            }
            let perm = || Tensor::rand([batch, s], (Kind::Float, Device::Cpu)).argsort(-1, false);
            (
                Vec::<i64>::try_from(perm().view([-1]))?,
                Vec::<i64>::try_from(perm().view([-1]))?,
            )
        }
        Setting::Updates => {
            let draw = || Tensor::randint(s, [batch, len], (Kind::Int64, Device::Cpu));
            (
                Vec::<i64>::try_from(draw().view([-1]))?,
                Vec::<i64>::try_from(draw().view([-1]))?,
            )
        }
    })
}

/// The value at the last occurrence of each key of one row, -1 for keys not in it.
fn last_values(s: i64, keys: &[i64], values: &[i64]) -> Vec<i64> {
    let mut last = vec![-1i64; s as usize];
    for (k, v) in keys.iter().zip(values) {
        last[*k as usize] = *v;
    }
    last
}

fn to_batch(
    keys: &[i64],
    values: &[i64],
    query: &[i64],
    target: &[i64],
    mask: &[bool],
    (batch, len, q): (i64, i64, i64),
    device: Device,
) -> Batch {
    let t = |v: &[i64], cols: i64| Tensor::from_slice(v).view([batch, cols]).to_device(device);
    Batch {
        keys: t(keys, len),
        values: t(values, len),
        query: t(query, q),
        target: t(target, q),
        mask: Tensor::from_slice(mask).view([batch, q]).to_device(device),
    }
}

/// A training batch: `batch` sequences of the setting's length, one query each, drawn by `draw`.
pub fn training_batch(
    setting: Setting,
    s: i64,
    batch: i64,
    draw: QueryDraw,
    device: Device,
) -> Result<Batch> {
    if draw == QueryDraw::Keys {
        // fwp's first protocol, with its random draws in their order
        return sample(setting, s, batch, 1, device);
    }
    let len = setting.length(s);
    let (keys, values) = sequences(setting, s, batch, len)?;
    let picks = Tensor::randint(len, [batch], (Kind::Int64, Device::Cpu));
    let (mut query, mut target) = (Vec::new(), Vec::new());
    for (b, at) in Vec::<i64>::try_from(picks)?.into_iter().enumerate() {
        let row = &keys[b * len as usize..(b + 1) * len as usize];
        let vals = &values[b * len as usize..(b + 1) * len as usize];
        let key = row[at as usize]; // a uniform position; its key's last value is the target
        query.push(key);
        target.push(last_values(s, row, vals)[key as usize]);
    }
    let mask = vec![true; batch as usize];
    Ok(to_batch(
        &keys,
        &values,
        &query,
        &target,
        &mask,
        (batch, len, 1),
        device,
    ))
}

/// An evaluation batch: `batch` sequences of length `len`, each asking its distinct keys (at most
/// `queries` of them, chosen and ordered by `order`). Rows with fewer distinct keys than the
/// query width are padded; `mask` tells the real queries.
pub fn eval_batch(
    setting: Setting,
    s: i64,
    batch: i64,
    len: i64,
    queries: i64,
    order: QueryOrder,
    device: Device,
) -> Result<Batch> {
    crate::check::positive("queries", queries)?;
    let (keys, values) = sequences(setting, s, batch, len)?;
    let q_max = queries.min(s);
    let mut query = vec![0i64; (batch * q_max) as usize];
    let mut target = vec![0i64; (batch * q_max) as usize];
    let mut mask = vec![false; (batch * q_max) as usize];
    for b in 0..batch as usize {
        let row = &keys[b * len as usize..(b + 1) * len as usize];
        let vals = &values[b * len as usize..(b + 1) * len as usize];
        let last = last_values(s, row, vals);
        let mut present: Vec<i64> = (0..s).filter(|&k| last[k as usize] >= 0).collect();
        if order == QueryOrder::Random {
            let perm = Vec::<i64>::try_from(Tensor::randperm(
                present.len() as i64,
                (Kind::Int64, Device::Cpu),
            ))?;
            present = perm.iter().map(|&i| present[i as usize]).collect();
        }
        for (i, &key) in present.iter().take(q_max as usize).enumerate() {
            let at = b * q_max as usize + i;
            query[at] = key;
            target[at] = last[key as usize];
            mask[at] = true;
        }
    }
    Ok(to_batch(
        &keys,
        &values,
        &query,
        &target,
        &mask,
        (batch, len, q_max),
        device,
    ))
}

/// Samples `batch` sequences of the setting's length over `s` keys, each asking `queries` of its
/// distinct keys at random (1 for a training batch of fwp's first protocol; every distinct key,
/// at most 200, for its evaluation).
pub fn sample(setting: Setting, s: i64, batch: i64, queries: i64, device: Device) -> Result<Batch> {
    eval_batch(
        setting,
        s,
        batch,
        setting.length(s),
        queries.max(1),
        QueryOrder::Random,
        device,
    )
}
