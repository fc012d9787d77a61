//! Grids of benchmark cases, with presets for a 2-core CPU, an H100/H200 and the tests.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::case::{Case, DType, Op};
use crate::recurrence::UpdateRule;

/// Named grids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// fp32 on this machine class (2 cores): B=2, H=4, d in {64, 128}, T = 256 .. 8192; the
    /// Reference backend up to T = 1024. About 3 minutes.
    Cpu,
    /// H100/H200: B*T = 16k tokens (B = 1 from T = 16k), H = 16, d in {64, 128}, T = 1k .. 32k,
    /// bf16 and fp32; the Reference backend up to T = 1024. Sized to run in a few minutes.
    Gpu,
    /// Tiny shapes for the tests: seconds.
    Quick,
}

crate::names::named_enum!(Preset, "preset", { Cpu => "cpu", Gpu => "gpu", Quick => "quick" });

/// The cross product that [`Grid::cases`] expands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub ops: Vec<Op>,
    pub rules: Vec<UpdateRule>,
    /// Chunk size of the Chunked backend.
    pub chunk: i64,
    /// Batch size, or with `tokens` set, the batch is `max(1, tokens / T)`.
    pub batch: i64,
    pub tokens: Option<i64>,
    pub heads: i64,
    pub t: Vec<i64>,
    /// Head sizes: d_v = d, and d_k = d unless `d_k` is set.
    pub d: Vec<i64>,
    /// Key size of every case when it differs from the value size (feature maps such as DPFP and
    /// FAVOR+ widen keys and queries); `None`: d_k = d.
    #[serde(default)]
    pub d_k: Option<i64>,
    pub dtypes: Vec<DType>,
    pub device: String,
    /// The Reference backend (one small op per step) only up to this T.
    pub reference_max_t: i64,
    /// Untimed runs before timing, and timed runs.
    pub warmup: usize,
    pub repeats: usize,
}

impl Grid {
    pub fn preset(p: Preset) -> Grid {
        let all_ops = Op::ALL.to_vec();
        let rules = vec![UpdateRule::Sum, UpdateRule::Delta];
        match p {
            Preset::Cpu => Grid {
                ops: all_ops,
                rules,
                chunk: 64,
                batch: 2,
                tokens: None,
                heads: 4,
                t: vec![256, 512, 1024, 2048, 4096, 8192],
                d: vec![64, 128],
                d_k: None,
                dtypes: vec![DType::F32],
                device: "cpu".into(),
                reference_max_t: 1024,
                warmup: 1,
                repeats: 5,
            },
            Preset::Gpu => Grid {
                ops: all_ops,
                rules,
                chunk: 64,
                batch: 1,
                tokens: Some(16384),
                heads: 16,
                t: vec![1024, 2048, 4096, 8192, 16384, 32768],
                d: vec![64, 128],
                d_k: None,
                dtypes: vec![DType::Bf16, DType::F32],
                device: "cuda".into(),
                reference_max_t: 1024,
                warmup: 2,
                repeats: 5,
            },
            Preset::Quick => Grid {
                ops: all_ops,
                rules,
                chunk: 8,
                batch: 1,
                tokens: None,
                heads: 2,
                t: vec![16, 32],
                d: vec![8],
                d_k: None,
                dtypes: vec![DType::F32],
                device: "cpu".into(),
                reference_max_t: 32,
                warmup: 1,
                repeats: 2,
            },
        }
    }

    /// Every case of the grid, in a stable order (device, dtype, d, op, rule, T).
    pub fn cases(&self) -> Result<Vec<Case>> {
        if self.repeats == 0 {
            bail!("repeats must be >= 1");
        }
        for (name, list) in [("t", &self.t), ("d", &self.d)] {
            if list.is_empty() {
                bail!("the grid has no {name} values");
            }
        }
        if self.ops.is_empty() || self.dtypes.is_empty() {
            bail!("the grid needs at least one op and one dtype");
        }
        if self.rules.is_empty() && self.ops.iter().any(|&op| op != Op::Softmax) {
            bail!("fast-weight ops need at least one update rule");
        }
        let mut out = Vec::new();
        for &dtype in &self.dtypes {
            for &d in &self.d {
                for &op in &self.ops {
                    let rules: Vec<Option<UpdateRule>> = match op {
                        Op::Softmax => vec![None],
                        _ => self.rules.iter().copied().map(Some).collect(),
                    };
                    // the chunked CUDA kernels take bf16, f16 and f32 inputs
                    if op == Op::FusedChunked
                        && self.device.starts_with("cuda")
                        && dtype == DType::F64
                    {
                        continue;
                    }
                    for rule in rules {
                        for &t in &self.t {
                            if op == Op::Reference && t > self.reference_max_t {
                                continue;
                            }
                            let batch = match self.tokens {
                                Some(tokens) => (tokens / t).max(1),
                                None => self.batch,
                            };
                            let case = Case {
                                op,
                                rule,
                                chunk: (op == Op::Chunked).then_some(self.chunk),
                                batch,
                                heads: self.heads,
                                t,
                                d_k: self.d_k.unwrap_or(d),
                                d_v: d,
                                dtype,
                                device: self.device.clone(),
                            };
                            case.check()?;
                            out.push(case);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
