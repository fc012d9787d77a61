//! One result record per benchmark case, as written to `results.jsonl`.

use serde::{Deserialize, Serialize};

use super::case::Case;
use super::measure::Measurement;
use super::peak::Peak;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub case: Case,
    #[serde(flatten)]
    pub measurement: Measurement,
    /// (batch, head, step) triples per second, from the median times.
    pub head_tokens_per_s_forward: f64,
    pub head_tokens_per_s_train: f64,
    /// Model GFLOP of the forward and of forward + backward ([`Case::model_flops`]).
    pub model_gflop_forward: f64,
    pub model_gflop_train: f64,
    /// Model GFLOP/s at the median times.
    pub gflops_forward: f64,
    pub gflops_train: f64,
    /// Those rates as a fraction of the measured matmul peak for the dtype (`None` without one).
    pub peak_fraction_forward: Option<f64>,
    pub peak_fraction_train: Option<f64>,
    /// What it ran on and with.
    pub hardware: String,
    pub threads: i32,
    /// Whether the C allocator kept freed memory for reuse (`fwp::host_memory`; `None` in records
    /// made before this field existed, which all ran with glibc's defaults).
    #[serde(default)]
    pub host_memory_kept: Option<bool>,
    pub fwp_version: String,
    /// Seconds since the Unix epoch when the record was made.
    pub unix_time: u64,
}

impl Record {
    pub fn new(case: Case, measurement: Measurement, peak: Option<&Peak>) -> Record {
        let (fwd_flops, bwd_flops) = case.model_flops();
        let n = case.head_tokens();
        let fwd_s = measurement.forward.median_ms * 1e-3;
        let train_s = measurement.train.median_ms * 1e-3;
        let gflops_forward = fwd_flops / fwd_s / 1e9;
        let gflops_train = (fwd_flops + bwd_flops) / train_s / 1e9;
        let peak_rate = peak.and_then(|p| p.matmul_gflops.get(case.dtype.name()).copied());
        let device = crate::check::device(&case.device).unwrap_or(tch::Device::Cpu);
        Record {
            head_tokens_per_s_forward: n / fwd_s,
            head_tokens_per_s_train: n / train_s,
            model_gflop_forward: fwd_flops / 1e9,
            model_gflop_train: (fwd_flops + bwd_flops) / 1e9,
            gflops_forward,
            gflops_train,
            peak_fraction_forward: peak_rate.map(|p| gflops_forward / p),
            peak_fraction_train: peak_rate.map(|p| gflops_train / p),
            // the ceilings already name the hardware; ask the system only without them
            hardware: peak.map_or_else(|| super::peak::hardware(device), |p| p.hardware.clone()),
            threads: tch::get_num_threads(),
            host_memory_kept: Some(crate::host_memory::keeps_freed_memory()),
            fwp_version: env!("CARGO_PKG_VERSION").into(),
            unix_time: crate::training::unix_time(),
            case,
            measurement,
        }
    }
}
