//! Training batches by length: the pairs sorted by length and cut into batches of at most
//! `max_tokens` padded tokens (rows x the longer side), so that little of a batch is padding; the
//! batches of each epoch are visited in an order drawn from (seed, epoch). Batch `step` is a pure
//! function of the step, so a resumed run sees the batches the uninterrupted one would.

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use super::bpe::{BOS, EOS, PAD};

/// A pair as ids, without `<s>` and `</s>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub src: Vec<i64>,
    pub tgt: Vec<i64>,
}

/// One batch: the source `[B, S]`, the decoder input `[B, T]` (`<s>` + target) and the decoder's
/// targets `[B, T]` (target + `</s>`), padded with [`PAD`].
#[derive(Debug)]
pub struct Batch {
    pub src: Tensor,
    pub tgt_in: Tensor,
    pub tgt_out: Tensor,
}

impl Batch {
    /// Pads `examples` into tensors on `device`.
    pub fn new(examples: &[&Example], device: Device) -> Result<Batch> {
        if examples.is_empty() {
            bail!("an empty batch");
        }
        let rows = examples.len() as i64;
        let s = examples
            .iter()
            .map(|e| e.src.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let t = examples.iter().map(|e| e.tgt.len()).max().unwrap_or(0) + 1;
        let pad = |seq: &mut dyn Iterator<Item = i64>, n: usize| -> Vec<i64> {
            seq.chain(std::iter::repeat(PAD)).take(n).collect()
        };
        let mut src = Vec::new();
        let (mut tgt_in, mut tgt_out) = (Vec::new(), Vec::new());
        for e in examples {
            src.extend(pad(&mut e.src.iter().copied(), s));
            tgt_in.extend(pad(
                &mut std::iter::once(BOS).chain(e.tgt.iter().copied()),
                t,
            ));
            tgt_out.extend(pad(
                &mut e.tgt.iter().copied().chain(std::iter::once(EOS)),
                t,
            ));
        }
        let tensor = |v: &[i64], n: usize| -> Result<Tensor> {
            Ok(Tensor::from_slice(v)
                .f_view([rows, n as i64])?
                .f_to_device(device)?)
        };
        Ok(Batch {
            src: tensor(&src, s)?,
            tgt_in: tensor(&tgt_in, t)?,
            tgt_out: tensor(&tgt_out, t)?,
        })
    }

    /// Target tokens that count in the loss (`</s>` included, padding not).
    pub fn target_tokens(&self) -> Result<i64> {
        Ok(i64::try_from(
            self.tgt_out.f_ne(PAD)?.f_sum(tch::Kind::Int64)?,
        )?)
    }
}

/// The training pairs cut into batches.
pub struct Batches {
    examples: Vec<Example>,
    /// Example indices of each batch.
    batches: Vec<Vec<usize>>,
    seed: i64,
}

/// SplitMix64: a small, fixed generator for the batch order (independent of libtorch's, which
/// draws the dropout masks).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Batches {
    /// Sorts `examples` by (source length, target length) and cuts batches of at most
    /// `max_tokens` padded tokens; an example longer than `max_tokens` is an error.
    pub fn new(examples: Vec<Example>, max_tokens: i64, seed: i64) -> Result<Batches> {
        if examples.is_empty() {
            bail!("no training pairs");
        }
        let width = |e: &Example| e.src.len().max(e.tgt.len() + 1) as i64;
        if let Some((i, e)) = examples
            .iter()
            .enumerate()
            .find(|(_, e)| width(e) > max_tokens)
        {
            bail!(
                "training pair {i} has {} tokens, more than a batch of max_tokens = {max_tokens}",
                width(e)
            );
        }
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| (examples[i].src.len(), examples[i].tgt.len(), i));
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut longest = 0i64;
        for i in order {
            let w = width(&examples[i]).max(longest);
            if !current.is_empty() && w * (current.len() as i64 + 1) > max_tokens {
                batches.push(std::mem::take(&mut current));
                longest = 0;
            }
            longest = longest.max(width(&examples[i]));
            current.push(i);
        }
        batches.push(current);
        Ok(Batches {
            examples,
            batches,
            seed,
        })
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batch of update `step`: position `step % len` of epoch `step / len`'s order, a
    /// Fisher–Yates shuffle seeded by (seed, epoch).
    pub fn get(&self, step: usize, device: Device) -> Result<Batch> {
        let n = self.batches.len();
        let (epoch, pos) = (step / n, step % n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = (self.seed as u64).wrapping_mul(0x100_0000_01B3) ^ (epoch as u64);
        for i in (1..n).rev() {
            let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let rows: Vec<&Example> = self.batches[order[pos]]
            .iter()
            .map(|&i| &self.examples[i])
            .collect();
        Batch::new(&rows, device)
    }
}
