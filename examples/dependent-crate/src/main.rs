//! A program of another crate that uses fwp: one fused fast-weight step, forward and backward, on
//! the CPU, checked against the Reference backend. `make test` builds it and runs the binary
//! directly (no cargo, no LD_LIBRARY_PATH), which only starts when the link arguments fwp exports
//! (see build.rs) reached it.

use anyhow::{bail, Result};
use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    // Freed large tensors' pages are reused rather than faulted in afresh (README).
    fwp::host_memory::keep_freed_memory();
    tch::manual_seed(0);
    let f = (Kind::Double, Device::Cpu);
    let q = Tensor::randn([1, 2, 9, 4], f);
    let k = Tensor::randn([1, 2, 9, 4], f) / 2.0;
    let v = Tensor::randn([1, 2, 9, 3], f).set_requires_grad(true);
    let beta = Tensor::rand([1, 2, 9], f);
    let run = |backend| -> Result<(Tensor, Tensor)> {
        let r = fast_weight(&q, &k, &v, Some(&beta), None, UpdateRule::Delta, backend)?;
        let g = Tensor::f_run_backward(&[r.out.square().sum(Kind::Double)], &[&v], false, false)?;
        Ok((r.out.detach(), g[0].shallow_clone()))
    };
    let (out, dv) = run(Backend::Fused)?;
    let (want, want_dv) = run(Backend::Reference)?;
    let err =
        f64::try_from((out - want).abs().max())?.max(f64::try_from((dv - want_dv).abs().max())?);
    if err > 1e-10 {
        bail!("fused and reference differ by {err:e}");
    }
    println!(
        "fwp from another crate: fused = reference (max error {err:.1e}); CUDA kernels built: {}, \
         GPUs visible to libtorch: {}",
        fwp::ops::built_with_cuda(),
        tch::Cuda::device_count()
    );
    Ok(())
}
