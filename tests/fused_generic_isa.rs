//! The baseline (non-AVX2) build of the recurrent CPU kernels, forced with FWP_CPU_ISA=generic
//! (read once per process, hence a test binary of its own), against the float64 Reference, in
//! float64 and float32.

mod common;

#[test]
fn generic_cpu_kernels_match_reference() {
    assert!(common::cpu_kernels_match_reference("generic", 50));
}
