//! The AVX2 + FMA build of the recurrent CPU kernels, forced with FWP_CPU_ISA=avx2 (read once per
//! process, hence a test binary of its own; on AVX-512 CPUs the default build is avx512), against
//! the float64 Reference, in float64 and float32. Skipped with a notice on CPUs without AVX2.

mod common;

#[test]
fn avx2_cpu_kernels_match_reference() {
    common::cpu_kernels_match_reference("avx2", 51);
}
