//! Shared test helpers. Every test binary compiles this module and uses a part of it, hence the
//! allow; each item is used by at least one test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fwp::{fast_weight, Backend, UpdateRule};
use tch::{Device, Kind, Tensor};

pub const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// Asserts |got - want| <= atol + rtol |want| elementwise; prints the worst absolute and relative
/// errors; fails on NaN or infinity in either tensor and on a shape mismatch.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.size(), want.size(), "{name}: shape differs");
    let g = got.to_kind(Kind::Double).to_device(Device::Cpu);
    let w = want.to_kind(Kind::Double).to_device(Device::Cpu);
    assert!(
        bool::try_from(g.isfinite().all()).unwrap(),
        "{name}: result has NaN or inf"
    );
    assert!(
        bool::try_from(w.isfinite().all()).unwrap(),
        "{name}: expected value has NaN or inf"
    );
    let diff = (&g - &w).abs();
    let max_abs = if diff.numel() > 0 {
        f64::try_from(diff.max()).unwrap()
    } else {
        0.0
    };
    let rel = &diff / (w.abs() + 1e-300);
    let max_rel = if diff.numel() > 0 {
        f64::try_from(rel.max()).unwrap()
    } else {
        0.0
    };
    let allowed = w.abs() * rtol + atol;
    let bad = i64::try_from(diff.gt_tensor(&allowed).sum(Kind::Int64)).unwrap();
    // the largest share of its allowance an element used: how close this comparison came to failing
    let used = if diff.numel() > 0 {
        f64::try_from((&diff / (allowed + 1e-300)).max()).unwrap()
    } else {
        0.0
    };
    println!(
        "  {name}: max abs err {max_abs:.3e}, max rel err {max_rel:.3e}, {:.0}% of the tolerance",
        100.0 * used
    );
    assert!(
        bad == 0,
        "{name}: {bad} of {} elements beyond atol {atol:e} + rtol {rtol:e}; max abs err {max_abs:.3e}",
        diff.numel()
    );
}

/// [`assert_close`] with the absolute tolerance scaled to the largest |want|: `tol` of it, plus `tol`
/// relative. For comparisons whose rounding error grows with the magnitudes involved (a state
/// that sums many outer products, an unnormalised delta rule that grows to 1e7).
pub fn assert_close_scaled(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let scale = f64::try_from(want.abs().max().to_kind(Kind::Double))
        .unwrap()
        .max(1e-30);
    assert_close(
        name,
        &got.to_device(Device::Cpu),
        &want.to_device(Device::Cpu),
        tol * scale,
        tol,
    );
}

/// How [`compare`] reads its tolerance.
#[derive(Clone, Copy, Debug)]
pub enum Tol {
    /// `atol = rtol = tol`.
    Abs(f64),
    /// As [`assert_close_scaled`]: `atol = tol * max |want|`, `rtol = tol`.
    Scaled(f64),
}

/// (out, state, gradients) of one run, as [`Case::run`] returns them.
pub type Outputs = (Tensor, Tensor, Vec<Tensor>);

/// Compares outputs, final state and every gradient (named by [`GRAD_NAMES`]).
pub fn compare(label: &str, got: &Outputs, want: &Outputs, tol: Tol) {
    println!("{label}");
    let check = |name: &str, g: &Tensor, w: &Tensor| match tol {
        Tol::Abs(t) => assert_close(name, g, w, t, t),
        Tol::Scaled(t) => assert_close_scaled(name, g, w, t),
    };
    check("out", &got.0, &want.0);
    check("state", &got.1, &want.1);
    assert_eq!(got.2.len(), want.2.len());
    for (i, (g, w)) in got.2.iter().zip(&want.2).enumerate() {
        check(GRAD_NAMES[i], g, w);
    }
}

/// libtorch's random generator is global to the process, and tests run side by side: a test that
/// seeds it holds this lock for its whole run, so that no other seeded test draws in between and its
/// inputs are the same whatever the number of test threads.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the lock on libtorch's random generator (see [`seeded`]) without seeding.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the lock on libtorch's random generator and seeds it; hold the guard for the whole test.
pub fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = rng_lock();
    tch::manual_seed(seed);
    guard
}

/// Random tensor that requires grad.
pub fn leaf(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::randn(shape, (kind, Device::Cpu)).set_requires_grad(true)
}

/// Gradients of `loss` with respect to `inputs` (None where an input got no gradient).
pub fn grads(loss: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], inputs, false, false)
}

/// Whether libtorch sees a GPU; prints a notice for the skipping test otherwise.
pub fn cuda_or_skip(test: &str) -> bool {
    let ok = wanted("cuda") && tch::Cuda::is_available();
    if !ok {
        skip_notice(test);
    }
    ok
}

/// Prints "SKIPPED <test> on CUDA" straight to stderr, past libtest's output capture, so the notice
/// shows in a normal `cargo test` run.
pub fn skip_notice(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} on CUDA: no CUDA GPU visible"
    );
}

/// `FWP_TEST_DEVICES`: `cuda` keeps only the GPU legs of the tests (for a GPU check, where the CPU
/// legs are slow and CI runs them anyway), `cpu` only the CPU legs; unset, both where a GPU is
/// visible.
fn wanted(device: &str) -> bool {
    std::env::var("FWP_TEST_DEVICES").map_or(true, |v| v.split(',').any(|d| d.trim() == device))
}

/// The devices to run a test body on: the CPU, and the first GPU where one is visible (as
/// `FWP_TEST_DEVICES` allows).
pub fn devices(test: &str) -> Vec<tch::Device> {
    let mut out = Vec::new();
    if wanted("cpu") {
        out.push(Device::Cpu);
    } else {
        cpu_skip_notice(test);
    }
    if !wanted("cuda") {
        return out;
    }
    if tch::Cuda::is_available() {
        out.push(Device::Cuda(0));
    } else {
        skip_notice(test);
    }
    out
}

/// Whether a test that runs on the CPU only should run (not under `FWP_TEST_DEVICES=cuda`).
pub fn cpu_tests(test: &str) -> bool {
    let run = wanted("cpu");
    if !run {
        cpu_skip_notice(test);
    }
    run
}

fn cpu_skip_notice(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} on the CPU: FWP_TEST_DEVICES leaves it out"
    );
}

/// Names of the gradients `Case::run` returns, in order.
pub const GRAD_NAMES: [&str; 5] = ["dq", "dk", "dv", "dS0", "dbeta"];

/// One set of inputs, created in float64 on the CPU and moved/cast per run.
pub struct Case {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub beta: Tensor,
    pub s0: Tensor,
    pub w_out: Tensor,
    pub w_state: Tensor,
}

impl Case {
    pub fn new(b: i64, h: i64, t: i64, d_k: i64, d_v: i64) -> Case {
        let f = (Kind::Double, Device::Cpu);
        let k = Tensor::randn([b, h, t, d_k], f);
        Case {
            q: Tensor::randn([b, h, t, d_k], f) / (d_k as f64).sqrt(),
            k: &k / k.norm_scalaropt_dim(2, [-1i64].as_slice(), true), // unit keys: a stable delta rule
            v: Tensor::randn([b, h, t, d_v], f),
            beta: Tensor::rand([b, h, t], f),
            s0: Tensor::randn([b, h, d_k, d_v], f) * 0.3,
            w_out: Tensor::randn([b, h, t, d_v], f),
            w_state: Tensor::randn([b, h, d_k, d_v], f),
        }
    }

    /// (out, state, [dq, dk, dv, dS0, dbeta]) for `rule` with `backend`, inputs as `kind` on `device`.
    pub fn run(
        &self,
        rule: UpdateRule,
        backend: Backend,
        kind: Kind,
        device: Device,
    ) -> (Tensor, Tensor, Vec<Tensor>) {
        let [q, k, v, beta, s0] = self.leaves(kind, device);
        let beta_arg = (rule == UpdateRule::Delta).then_some(&beta);
        let r = fast_weight(&q, &k, &v, beta_arg, Some(&s0), rule, backend).unwrap();
        assert_eq!(r.out.kind(), kind);
        assert_eq!(r.state.kind(), kind);
        let w = |t: &Tensor| t.to_device(device).to_kind(kind);
        let loss = (&r.out * w(&self.w_out)).sum(kind) + (&r.state * w(&self.w_state)).sum(kind);
        let g = grads(&loss, &differentiated(rule, [&q, &k, &v, &s0, &beta]));
        (r.out.detach(), r.state.detach(), g)
    }

    /// The inputs as `kind` on `device`, detached leaves that require grad: [q, k, v, beta, s0].
    pub fn leaves(&self, kind: Kind, device: Device) -> [Tensor; 5] {
        [&self.q, &self.k, &self.v, &self.beta, &self.s0].map(|t| {
            t.to_device(device)
                .to_kind(kind)
                .detach()
                .set_requires_grad(true)
        })
    }
}

/// The inputs a gradient is taken for, in GRAD_NAMES' order: [q, k, v, s0], and beta for the delta
/// rule (`all` is [q, k, v, s0, beta]).
pub fn differentiated(rule: UpdateRule, all: [&Tensor; 5]) -> Vec<&Tensor> {
    let n = if rule == UpdateRule::Delta { 5 } else { 4 };
    all[..n].to_vec()
}

impl Case {
    /// This case with its inputs rounded to `kind` and held in f64, so that a float64 answer is
    /// for the numbers a kernel run in `kind` sees.
    pub fn rounded(&self, kind: Kind) -> Case {
        let r = |t: &Tensor| t.to_kind(kind).to_kind(Kind::Double);
        Case {
            q: r(&self.q),
            k: r(&self.k),
            v: r(&self.v),
            beta: r(&self.beta),
            s0: r(&self.s0),
            w_out: self.w_out.shallow_clone(),
            w_state: self.w_state.shallow_clone(),
        }
    }

    /// [out, state, dq, dk, dv, dS0, (dbeta for the delta rule)] in f64 on the CPU of `op` on this
    /// case's inputs as `kind` on `device` (q, k, v, beta or `None`, s0 -> (out, state)), for the
    /// loss sum(out w_out) + sum(state w_state) taken in f64.
    pub fn outputs_and_grads(
        &self,
        rule: UpdateRule,
        kind: Kind,
        device: Device,
        op: impl FnOnce(&Tensor, &Tensor, &Tensor, Option<&Tensor>, &Tensor) -> (Tensor, Tensor),
    ) -> Vec<Tensor> {
        let [q, k, v, beta, s0] = self.leaves(kind, device);
        let b = (rule == UpdateRule::Delta).then_some(&beta);
        let (out, state) = op(&q, &k, &v, b, &s0);
        let d = |t: &Tensor| t.to_kind(Kind::Double).to_device(Device::Cpu);
        let loss = (d(&out) * &self.w_out).sum(Kind::Double)
            + (d(&state) * &self.w_state).sum(Kind::Double);
        let inputs = differentiated(rule, [&q, &k, &v, &s0, &beta]);
        let mut all = vec![d(&out), d(&state)];
        all.extend(grads(&loss, &inputs).iter().map(d));
        all
    }
}

/// The project's Python with torch: $VIRTUAL_ENV (set by make), else .venv.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let p = venv.join("bin/python");
    assert!(
        p.is_file(),
        "no Python at {} (run through make, which creates .venv)",
        p.display()
    );
    p
}

/// The recurrent CPU kernels of one instruction-set build (`generic`, `avx2` or `avx512`), forced
/// through `FWP_CPU_ISA` (read once per process, hence one test binary per build), against the
/// float64 Reference in float64 and float32: outputs and every gradient, at shapes that take one
/// or two column tiles (16 to 64 columns wide, by build), narrow last tiles, key widths that are
/// not whole registers, and (with T = 130 and a wide tile before a narrow one) every tile's
/// padding reused after a wider tile's.
/// Returns false (with a notice) where the CPU lacks the build's instructions.
pub fn cpu_kernels_match_reference(isa: &str, seed: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    let supported = match isa {
        "avx2" => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        "avx512" => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("avx512f")
        }
        _ => true,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let supported = isa == "generic";
    if !supported {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the {isa} CPU kernels: this CPU lacks them"
        );
        return false;
    }
    std::env::set_var("FWP_CPU_ISA", isa);
    let _rng = seeded(seed);
    let f = (Kind::Double, Device::Cpu);
    for (t, d_k, d_v) in [
        (1, 16, 16),
        (65, 60, 33),
        (130, 64, 64),
        (40, 37, 48),
        (70, 20, 100),
    ] {
        let q = Tensor::randn([2, 3, t, d_k], f).set_requires_grad(true);
        let k0 = Tensor::randn([2, 3, t, d_k], f);
        let k = (&k0 / k0.norm_scalaropt_dim(2, [-1i64].as_slice(), true)).set_requires_grad(true);
        let v = Tensor::randn([2, 3, t, d_v], f).set_requires_grad(true);
        let beta = Tensor::rand([2, 3, t], f).set_requires_grad(true);
        let s0 = Tensor::randn([2, 3, d_k, d_v], f).set_requires_grad(true);
        for rule in [UpdateRule::Sum, UpdateRule::Delta] {
            for kind in [Kind::Double, Kind::Float] {
                let run_in = |backend, kind: Kind| {
                    let c = |x: &Tensor| x.to_kind(kind);
                    let b = c(&beta);
                    let b = (rule == UpdateRule::Delta).then_some(&b);
                    let r = fast_weight(&c(&q), &c(&k), &c(&v), b, Some(&c(&s0)), rule, backend)
                        .unwrap();
                    let loss = r.out.square().sum(Kind::Double) + r.state.sum(Kind::Double);
                    let mut inputs = vec![&q, &k, &v, &s0];
                    if rule == UpdateRule::Delta {
                        inputs.push(&beta);
                    }
                    let g = Tensor::run_backward(&[loss], &inputs, false, false);
                    (r.out.to_kind(Kind::Double), g)
                };
                // the float64 Reference is the ground truth for both precisions: a float32
                // Reference would add its own rounding (which differs with libtorch's CPU code
                // paths) to the kernel's
                let (want, want_g) = run_in(Backend::Reference, Kind::Double);
                let (got, got_g) = run_in(Backend::FusedRecurrent, kind);
                let tol = if kind == Kind::Double { 1e-10 } else { 1e-3 };
                // In float32 a sum rounds relative to its largest terms, not to its result: at
                // T = 130 the sum rule's dk reaches 2e4, and even the plain step-by-step float32
                // computation misses 1e-3 + 1e-3 |x| on an element or two of small |x| for 3 of 5
                // seeds. So float32's absolute tolerance also grows with the tensor's largest value
                // (1e-6 of it, about 16 ulp; assert_close_scaled would allow 1e-3 of it), which any
                // real error of the kernels far exceeds.
                let atol = |w: &Tensor| match kind {
                    Kind::Double => tol,
                    _ => tol + 1e-6 * f64::try_from(w.abs().max()).unwrap_or(0.0),
                };
                println!("{isa} {rule:?} {kind:?} T={t} {d_k}x{d_v}");
                assert_close("out", &got, &want, atol(&want), tol);
                assert_eq!(got_g.len(), want_g.len());
                for (name, (g, w)) in GRAD_NAMES.iter().zip(got_g.iter().zip(&want_g)) {
                    assert_close(name, g, w, atol(w), tol);
                }
            }
        }
    }
    assert_eq!(
        fwp::ops::cpu_kernel_isa().unwrap(),
        isa,
        "the build that ran"
    );
    true
}

/// The names of what `Case::outputs_and_grads` returns, in its order.
pub const OUTPUT_NAMES: [&str; 7] = ["out", "state", "dq", "dk", "dv", "dS0", "dbeta"];

/// Relative RMS error of `got` (any device and float dtype) against `want` (f64 on the CPU).
pub fn rel_rms(got: &Tensor, want: &Tensor) -> f64 {
    let rms = |t: &Tensor| {
        f64::try_from(t.to_kind(Kind::Double).square().mean(Kind::Double).sqrt()).unwrap()
    };
    rms(&(got.to_device(Device::Cpu).to_kind(Kind::Double) - want)) / rms(want).max(1e-30)
}
