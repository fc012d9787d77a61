//! What the experiments' training runs share: [`adam`] (Adam with savable state, learning-rate
//! schedules, gradient clipping) and [`checkpoint`] (atomic checkpoints, strict loading, the run
//! lock).

pub mod adam;
pub mod checkpoint;
