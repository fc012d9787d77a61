//! Training batches: the token stream cut into `batch` equal parallel streams (Transformer-XL's
//! ordered iterator), read in consecutive segments of `context` tokens. Segment i of an epoch is
//! inputs `[batch, context]` = columns `[i L, i L + L)` and targets shifted by one. The batch at a
//! given micro-step is a pure function of the step, so the data position of a checkpoint is its
//! step and a resumed run sees exactly the batches the uninterrupted one would have.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

pub struct Segments {
    /// `[batch, n]` token ids.
    streams: Tensor,
    context: i64,
    per_epoch: i64,
}

impl Segments {
    pub fn new(tokens: &Tensor, batch: i64, context: i64) -> Result<Segments> {
        crate::check::positive("batch", batch)?;
        crate::check::positive("context", context)?;
        let n = tokens.size1()? / batch;
        let per_epoch = (n - 1) / context;
        if per_epoch < 1 {
            bail!(
                "the training split ({} tokens) is too short for {batch} streams of context {context} \
                 (needs at least {} tokens)",
                tokens.size1()?,
                batch * (context + 1)
            );
        }
        let streams = tokens
            .f_narrow(0, 0, n * batch)?
            .f_view([batch, n])?
            .f_to_kind(Kind::Int64)?;
        Ok(Segments {
            streams,
            context,
            per_epoch,
        })
    }

    /// Segments per pass over the data.
    pub fn per_epoch(&self) -> i64 {
        self.per_epoch
    }

    /// (inputs, targets), each `[batch, context]`, of the `i`-th segment overall (epochs wrap).
    pub fn get(&self, i: i64) -> Result<(Tensor, Tensor)> {
        let start = (i % self.per_epoch) * self.context;
        let x = self.streams.f_narrow(1, start, self.context)?;
        let y = self.streams.f_narrow(1, start + 1, self.context)?;
        Ok((x, y))
    }

    /// Rows `[from, from + rows)` of a segment (a micro-batch).
    pub fn rows(x: &Tensor, from: i64, rows: i64) -> Result<Tensor> {
        Ok(x.f_narrow(0, from, rows)?)
    }
}
