//! The AVX-512 build of the recurrent CPU kernels, forced with FWP_CPU_ISA=avx512 (read once per
//! process, hence a test binary of its own), against the float64 Reference, in float64 and
//! float32. Skipped with a notice on CPUs without AVX-512F.

mod common;

#[test]
fn avx512_cpu_kernels_match_reference() {
    common::cpu_kernels_match_reference("avx512", 52);
}
