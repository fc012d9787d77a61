// Vector registers for the recurrent CPU kernels (fast_weight_cpu.cpp): a type V with V::R one
// register of V::N lanes of V::T, and the few operations the kernels use. Which V a build uses is
// chosen by CpuVec<acc_t> from the instruction set it is compiled for:
//   AVX-512: fp32 in 16-lane zmm registers (Avx512Float)
//   AVX2:    fp32 in 8-lane ymm registers (Avx2Float)
//   else, and fp64 everywhere: PortableVec (compiler vector types as wide as the registers).
// Every type keeps the same order of operations (one fma per lane per call), so the backward's
// undoing of a forward step (fnma against fma) mirrors it in every build.
//
// Included once per instruction-set build, after FWP_CPU_ISA names it: everything here lives in
// fwp::FWP_CPU_ISA, so that no inline function compiled for one instruction set can stand in for
// another build's at link time.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifndef FWP_CPU_ISA
#error "define FWP_CPU_ISA (the build's namespace) before including cpu_vec.h"
#endif

#define FWP_ALWAYS __attribute__((always_inline))
#define FWP_INLINE inline FWP_ALWAYS

namespace fwp {
namespace FWP_CPU_ISA {

// GCC/Clang vector extensions: N lanes of T, as wide as the build's registers.
template <typename T_, int N_>
struct PortableVec {
  using T = T_;
  static constexpr int N = N_;
  typedef T R __attribute__((vector_size(sizeof(T) * N)));
  static FWP_INLINE R load(const T* p) {
    R r;
    std::memcpy(&r, p, sizeof(R));
    return r;
  }
  static FWP_INLINE void store(T* p, R v) { std::memcpy(p, &v, sizeof(R)); }
  static FWP_INLINE R set1(T s) { return R{} + s; }
  static FWP_INLINE R zero() { return R{}; }
  // a * b + c, one fma per lane where the build has them
  static FWP_INLINE R fma(R a, R b, R c) { return a * b + c; }
  // c - a * b, likewise
  static FWP_INLINE R fnma(R a, R b, R c) { return c - a * b; }
  static FWP_INLINE R add(R a, R b) { return a + b; }
  static FWP_INLINE R mul(R a, R b) { return a * b; }
  // the sum of the lanes of v
  static FWP_INLINE T sum(R v) {
    T s = 0;
    for (int l = 0; l < N; ++l) s += v[l];
    return s;
  }
  // Lane i of the result: the sum of the N lanes of v[i], for N registers v[0..N).
  static FWP_INLINE R lane_sums(const R* v) {
    R r;
    for (int i = 0; i < N; ++i) {
      T s = 0;
      for (int l = 0; l < N; ++l) s += v[i][l];
      r[i] = s;
    }
    return r;
  }
};

#if defined(__AVX2__) && defined(__FMA__)
struct Avx2Float {
  using T = float;
  using R = __m256;
  static constexpr int N = 8;
  static FWP_INLINE R load(const T* p) { return _mm256_loadu_ps(p); }
  static FWP_INLINE void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static FWP_INLINE R set1(T s) { return _mm256_set1_ps(s); }
  static FWP_INLINE R zero() { return _mm256_setzero_ps(); }
  static FWP_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static FWP_INLINE R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static FWP_INLINE R add(R a, R b) { return _mm256_add_ps(a, b); }
  static FWP_INLINE R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static FWP_INLINE T sum(R v) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
  }
  // a horizontal-add tree: three levels of hadd, then the two 128-bit halves added
  static FWP_INLINE R lane_sums(const R* v) {
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    // a = [v0..v3 over lanes 0-3 | v0..v3 over lanes 4-7], b likewise for v4..v7
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
};
#endif

#if defined(__AVX512F__)
struct Avx512Float {
  using T = float;
  using R = __m512;
  static constexpr int N = 16;
  static FWP_INLINE R load(const T* p) { return _mm512_loadu_ps(p); }
  static FWP_INLINE void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static FWP_INLINE R set1(T s) { return _mm512_set1_ps(s); }
  static FWP_INLINE R zero() { return _mm512_setzero_ps(); }
  static FWP_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static FWP_INLINE R fnma(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static FWP_INLINE R add(R a, R b) { return _mm512_add_ps(a, b); }
  static FWP_INLINE R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  // the halves added, then as in Avx2Float (_mm512_reduce_add_ps and _mm512_castps512_ps256 draw
  // GCC 12's warning above)
  static FWP_INLINE T sum(R v) {
    const __m512d w = _mm512_castps_pd(v);
    const __m256 a = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, w, 0)),
                                   _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, w, 1)));
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
  }
  // Four levels of pairwise folds, each adding two shuffles of a pair of registers: 128-bit blocks
  // (twice), then lanes within blocks (twice). Afterwards lane 4i + s holds the sum of input 4s + i,
  // so the inputs are taken in that transposed order to come out in order.
  // (The zero-masking form with a full mask is the same instruction; GCC 12 warns about the
  // unmasked one's undefined pass-through operand.)
  static FWP_INLINE R lane_sums(const R* v) {
    auto in = [&](int p) FWP_ALWAYS { return v[4 * (p % 4) + p / 4]; };
    R c[8], e[4], f[2];
    for (int p = 0; p < 8; ++p) {
      const R a = in(2 * p), b = in(2 * p + 1);
      c[p] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, a, b, 0x44),
                           _mm512_maskz_shuffle_f32x4(0xFFFF, a, b, 0xEE));
    }
    for (int p = 0; p < 4; ++p)
      e[p] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, c[2 * p], c[2 * p + 1], 0x88),
                           _mm512_maskz_shuffle_f32x4(0xFFFF, c[2 * p], c[2 * p + 1], 0xDD));
    for (int p = 0; p < 2; ++p)
      f[p] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * p], e[2 * p + 1], 0x44),
                           _mm512_shuffle_ps(e[2 * p], e[2 * p + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xDD));
  }
};
#endif

// The register type of this build for accumulation type acc_t.
#if defined(__AVX512F__)
template <typename acc_t>
using CpuVec = std::conditional_t<std::is_same_v<acc_t, float>, Avx512Float, PortableVec<acc_t, 64 / sizeof(acc_t)>>;
#elif defined(__AVX2__) && defined(__FMA__)
template <typename acc_t>
using CpuVec = std::conditional_t<std::is_same_v<acc_t, float>, Avx2Float, PortableVec<acc_t, 32 / sizeof(acc_t)>>;
#else
template <typename acc_t>
using CpuVec = PortableVec<acc_t, 16 / sizeof(acc_t)>;
#endif

}  // namespace FWP_CPU_ISA
}  // namespace fwp
