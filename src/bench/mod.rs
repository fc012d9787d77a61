//! The benchmark behind `experiments/bench`: time and peak memory of the fast-weight op per backend
//! (Reference, Chunked, Fused; sum and delta rules) and of causal softmax attention, over a grid of
//! shapes, dtypes and devices, with the machine's own measured ceilings (`peak`) to compare against.
//!
//! - [`case`]: one configuration and its FLOP model (docs/derivations.md Sec. 7);
//! - [`grid`]: the presets (a CPU grid for 2 cores, a GPU grid for H100/H200, a quick one for tests);
//! - [`measure`]: warm-up, then median / min / max of repeated runs, and peak memory;
//! - [`memory`]: peak memory per device (CUDA allocator statistics; RSS high-water mark on CPU);
//! - [`peak`]: the measured matmul FLOP/s per dtype and copy bandwidth;
//! - [`record`]: one JSON record per configuration, with the derived rates;
//! - [`summary`]: tables, crossovers against softmax, backend ratios, plots.

pub mod case;
pub mod grid;
pub mod measure;
pub mod memory;
pub mod peak;
pub mod record;
pub mod summary;

pub use case::{Case, DType, Op};
pub use grid::{Grid, Preset};
pub use measure::{measure, Measurement, Stats};
pub use peak::Peak;
pub use record::Record;
