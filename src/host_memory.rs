//! How the host's C allocator treats large blocks, which every CPU tensor comes from.
//!
//! glibc's `malloc` serves a block above its mmap threshold (128 KiB, growing to at most 32 MiB as
//! such blocks are freed) with a fresh `mmap` and returns it to the kernel with `munmap` when it is
//! freed. Training allocates the same large tensors every step (activations, logits, the fused
//! ops' outputs and checkpoints), so each step faults every page of them in again: one fault and
//! one zeroed 4 KiB page per page touched. On this project's 2-core VMs that made `bench`'s fused
//! delta rule at T = 8192, d = 128 1.3-1.4 times slower and an `lm train --preset small` run 1.6
//! times slower (docs/performance.md, "Large blocks and page faults").
//!
//! [`keep_freed_memory`] raises the mmap threshold and the trim threshold, so that large blocks come
//! from the heap and stay with the process when freed, and later steps reuse their pages (a block
//! of exactly a freed one's size may first take new heap space: libtorch's 64-byte alignment asks
//! glibc for a little more than the block; docs/performance.md has the details). The
//! experiment binaries call it first thing ([`keep_freed_memory_unless_disabled`]); a program that
//! uses fwp as a library can call it too.
//!
//! Limits: the heap fragments, so the peak resident memory can grow (a third, in that `lm` run);
//! it helps blocks allocated on the main thread, glibc's main arena, where the binaries allocate
//! (another thread's arena still unmaps a heap once all of it is free); and it does nothing where
//! the C library is not glibc.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

/// The environment variable that turns [`keep_freed_memory_unless_disabled`] off: `0` (off) or
/// `1` (on, the default).
pub const ENV: &str = "FWP_KEEP_FREED_MEMORY";

/// Both thresholds, in bytes: blocks up to 2 GiB come from the heap, and up to 2 GiB of free memory
/// at its top stays with the process (`mallopt` takes an `int`, so this is also the most it takes).
pub const THRESHOLD_BYTES: i32 = i32::MAX;

/// Set once [`keep_freed_memory`] succeeded.
static KEPT: AtomicBool = AtomicBool::new(false);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// `<malloc.h>`'s parameter numbers.
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_MMAP_THRESHOLD: c_int = -3;

    extern "C" {
        /// Sets an allocator parameter; returns 1 on success, 0 on error.
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        /// Returns free heap memory of every arena to the kernel; returns 1 if it released any.
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Makes the C allocator serve blocks of up to [`THRESHOLD_BYTES`] from its heap and keep up to that
/// much freed memory, instead of mapping and unmapping every large block. Returns whether it did:
/// `false` where the C library is not glibc (nothing to do there) or where glibc refused a value.
///
/// The cost: a process keeps up to 2 GiB of freed memory resident for the next allocations, and
/// the heap fragments, so that a later large block may need fresh space although enough is free in
/// pieces: the peak can grow (by a third in the `lm` run of docs/performance.md). Safe to call at
/// any time, from any thread.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two allocator parameters under the allocator's own lock.
    let kept = unsafe {
        glibc::mallopt(glibc::M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
            && glibc::mallopt(glibc::M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let kept = false;
    if kept {
        KEPT.store(true, Ordering::Relaxed);
    }
    kept
}

/// Whether [`keep_freed_memory`] succeeded in this process (bench records say so with each result).
pub fn keeps_freed_memory() -> bool {
    KEPT.load(Ordering::Relaxed)
}

/// [`keep_freed_memory`], unless [`ENV`] is `0`. Fails on any other value than `0` or `1`, naming
/// it. Returns whether the allocator now keeps freed memory.
pub fn keep_freed_memory_unless_disabled() -> Result<bool> {
    match std::env::var(ENV) {
        Err(std::env::VarError::NotPresent) => Ok(keep_freed_memory()),
        Ok(v) if v == "1" => Ok(keep_freed_memory()),
        Ok(v) if v == "0" => Ok(false),
        Ok(v) => bail!("{ENV} must be 0 (off) or 1 (on), got {v:?}"),
        Err(e) => bail!("{ENV}: {e}"),
    }
}

/// Hands every free page of the C allocator's heaps back to the kernel (glibc's `malloc_trim(0)`), so
/// that the next allocations fault their pages in again; nothing elsewhere. The CPU memory meter
/// calls it before a measurement, so that memory a run reuses from the free lists counts too.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; safe at any time.
    unsafe {
        glibc::malloc_trim(0);
    }
}
