// CPU kernels of the fused fast-weight recurrence (algorithm and backward: fast_weight.h).
//
// The columns of the state are independent (docs/derivations.md Sec. 6), so d_v is cut into tiles of kTile
// columns (64 bytes of accumulators: 16 fp32 or 8 fp64). Within a tile, the per-step vectors over the
// columns (retrieved values, outputs, du) are fixed-size arrays that the compiler keeps in vector
// registers, and the tile's state (d_k x kTile) stays in L1. The sums over d_k run in kLanes
// independent accumulators so that FMA latency does not serialise them.
// - forward: one task of at::parallel_for per (batch, head, tile), each walking all T steps;
// - backward: one task per (batch, head); for each chunk (last first) every tile replays the chunk
//   forward from its checkpoint into a buffer of chunk + 1 tile states (sized in fast_weight_op.cpp
//   to stay in L2), then walks it in reverse; dq, dk and dbeta sum over columns, so the tiles add into
//   per-chunk accumulators that are written out once the chunk is done.
// A last tile narrower than kTile runs the same code with a run-time width. In the AVX2 build, fp32
// tiles of full width use a hand-vectorised TileMath (below the portable one).
// build.rs compiles this file twice: for the baseline ISA (namespace fwp::generic) and, on x86-64,
// with AVX2 + FMA (fwp::avx2); fast_weight_op.cpp picks the variant at run time.

#include "fast_weight_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifndef FWP_CPU_ISA
#define FWP_CPU_ISA generic
#endif

namespace fwp {
namespace FWP_CPU_ISA {
namespace {

template <typename acc_t>
constexpr int64_t kTile = 64 / int64_t(sizeof(acc_t));
constexpr int kLanes = 4;
#define FWP_ALWAYS __attribute__((always_inline))
#define FWP_INLINE inline FWP_ALWAYS

// One column tile: a tile state is d_k rows of stride L; W is the tile width at compile time, or 0
// for a run-time width w < L (the last tile).
template <typename acc_t, int64_t W>
struct TileShape {
  static constexpr int64_t L = kTile<acc_t>;
  int64_t dk;
  int64_t w;
  TileShape(int64_t dk, int64_t w) : dk(dk), w(w) {}
  int64_t width() const { return W > 0 ? W : w; }

  // tile <-> columns [m0, m0 + width) of a row-major d_k x d_v matrix
  void gather(const acc_t* full, int64_t dv, int64_t m0, acc_t* tile) const {
    for (int64_t j = 0; j < dk; ++j) std::copy_n(full + j * dv + m0, width(), tile + j * L);
  }
  void scatter(const acc_t* tile, int64_t dv, int64_t m0, acc_t* full) const {
    for (int64_t j = 0; j < dk; ++j) std::copy_n(tile + j * L, width(), full + j * dv + m0);
  }
};

// The arithmetic of one column tile, in portable loops that the compiler vectorises.
template <typename acc_t, int64_t W>
struct TileMath : TileShape<acc_t, W> {
  using Shape = TileShape<acc_t, W>;
  using Shape::dk;
  using Shape::L;
  using Shape::Shape;
  using Shape::width;

  // Calls f(j, a) for every row j, four rows per iteration with the lane a = j % kLanes a
  // compile-time constant, so that per-lane accumulators indexed by a stay in registers.
  template <typename F>
  FWP_INLINE void rows(F&& f) const {
    using std::integral_constant;
    int64_t j = 0;
    for (; j + kLanes <= dk; j += kLanes) {
      f(j, integral_constant<int, 0>{});
      f(j + 1, integral_constant<int, 1>{});
      f(j + 2, integral_constant<int, 2>{});
      f(j + 3, integral_constant<int, 3>{});
    }
    for (; j < dk; ++j) f(j, integral_constant<int, 0>{});
  }

  // sum of the lanes' accumulators
  void reduce(const acc_t (&acc)[kLanes][L], acc_t* out) const {
    const int64_t n = width();
#pragma omp simd
    for (int64_t m = 0; m < n; ++m) out[m] = (acc[0][m] + acc[1][m]) + (acc[2][m] + acc[3][m]);
  }

  // out = S^T k
  void retrieve(const acc_t* S, const acc_t* k, acc_t* out) const {
    const int64_t n = width();
    acc_t acc[kLanes][L] = {};
    rows([&](int64_t j, auto a) FWP_ALWAYS {
      const acc_t kj = k[j];
      const acc_t* Sj = S + j * L;
#pragma omp simd
      for (int64_t m = 0; m < n; ++m) acc[a][m] += Sj[m] * kj;
    });
    reduce(acc, out);
  }

  // S_out = S_in + k u^T (S_out may be S_in); with q, also o = S_out^T q.
  void write(const acc_t* S_in, acc_t* S_out, const acc_t* k, const acc_t* u, const acc_t* q,
             acc_t* o) const {
    const int64_t n = width();
    if (q == nullptr) {
      for (int64_t j = 0; j < dk; ++j) {
        const acc_t kj = k[j];
        const acc_t* Sj = S_in + j * L;
        acc_t* Nj = S_out + j * L;
#pragma omp simd
        for (int64_t m = 0; m < n; ++m) Nj[m] = Sj[m] + kj * u[m];
      }
      return;
    }
    acc_t acc[kLanes][L] = {};
    rows([&](int64_t j, auto a) FWP_ALWAYS {
      const acc_t kj = k[j], qj = q[j];
      const acc_t* Sj = S_in + j * L;
      acc_t* Nj = S_out + j * L;
#pragma omp simd
      for (int64_t m = 0; m < n; ++m) {
        Nj[m] = Sj[m] + kj * u[m];
        acc[a][m] += Nj[m] * qj;
      }
    });
    reduce(acc, o);
  }

  // Reverse step, first pass over the rows: dS += q dO^T; dq += S_t dO; du = dS^T k; dk += dS u.
  void backward_read(acc_t* dS, const acc_t* S_t, const acc_t* q, const acc_t* k, const acc_t* go,
                     const acc_t* u, acc_t* dq, acc_t* dkey, acc_t* du) const {
    const int64_t n = width();
    acc_t acc[kLanes][L] = {};
    rows([&](int64_t j, auto a) FWP_ALWAYS {
      const acc_t qj = q[j], kj = k[j];
      acc_t* dSj = dS + j * L;
      const acc_t* Sj = S_t + j * L;
      acc_t pq = 0, pk = 0;
#pragma omp simd reduction(+ : pq, pk)
      for (int64_t m = 0; m < n; ++m) {
        dSj[m] += qj * go[m];
        pq += Sj[m] * go[m];
        acc[a][m] += dSj[m] * kj;
        pk += dSj[m] * u[m];
      }
      dq[j] += pq;
      dkey[j] += pk;
    });
    reduce(acc, du);
  }

  // Reverse step, delta rule's second pass: dk += S_{t-1} g; dS += k g^T.
  void backward_delta(acc_t* dS, const acc_t* S_prev, const acc_t* k, const acc_t* g, acc_t* dkey) const {
    const int64_t n = width();
    for (int64_t j = 0; j < dk; ++j) {
      const acc_t kj = k[j];
      acc_t* dSj = dS + j * L;
      const acc_t* Pj = S_prev + j * L;
      acc_t pk = 0;
#pragma omp simd reduction(+ : pk)
      for (int64_t m = 0; m < n; ++m) {
        pk += Pj[m] * g[m];
        dSj[m] += kj * g[m];
      }
      dkey[j] += pk;
    }
  }

};

#if defined(__AVX2__) && defined(__FMA__)
// fp32 tiles of 16 columns (two 8-lane vectors) with AVX2 + FMA intrinsics: the same arithmetic as
// TileMath, but the sums over columns that dq and dk need (one per row) are formed for blocks of
// rows at once with a horizontal-add tree, instead of one serial reduction per row.

// out[r] = the sum of the lanes of v[r], for eight vectors.
FWP_INLINE __m256 lane_sums(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4, __m256 v5, __m256 v6,
                            __m256 v7) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v4, v5), _mm256_hadd_ps(v6, v7));
  // a = [r0..r3 over lanes 0-3 | r0..r3 over lanes 4-7], b likewise for r4..r7
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

FWP_INLINE float lane_sum(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

template <>
struct TileMath<float, 16> : TileShape<float, 16> {
  using TileShape::TileShape;

  static FWP_INLINE __m256 lo(const float* p) { return _mm256_loadu_ps(p); }
  static FWP_INLINE __m256 hi(const float* p) { return _mm256_loadu_ps(p + 8); }
  static FWP_INLINE __m256 bc(const float* p) { return _mm256_broadcast_ss(p); }

  // out = S^T k: four rows per iteration into eight independent accumulators
  void retrieve(const float* S, const float* k, float* out) const {
    __m256 a[8];
    for (auto& x : a) x = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 4 <= dk; j += 4) {
      for (int r = 0; r < 4; ++r) {
        const __m256 kj = bc(k + j + r);
        const float* Sj = S + (j + r) * L;
        a[2 * r] = _mm256_fmadd_ps(lo(Sj), kj, a[2 * r]);
        a[2 * r + 1] = _mm256_fmadd_ps(hi(Sj), kj, a[2 * r + 1]);
      }
    }
    for (; j < dk; ++j) {
      const __m256 kj = bc(k + j);
      a[0] = _mm256_fmadd_ps(lo(S + j * L), kj, a[0]);
      a[1] = _mm256_fmadd_ps(hi(S + j * L), kj, a[1]);
    }
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[4], a[6])));
    _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_add_ps(a[1], a[3]), _mm256_add_ps(a[5], a[7])));
  }

  // S_out = S_in + k u^T; with q, also o = S_out^T q.
  void write(const float* S_in, float* S_out, const float* k, const float* u, const float* q, float* o) const {
    const __m256 u0 = lo(u), u1 = hi(u);
    if (q == nullptr) {
      for (int64_t j = 0; j < dk; ++j) {
        const __m256 kj = bc(k + j);
        _mm256_storeu_ps(S_out + j * L, _mm256_fmadd_ps(kj, u0, lo(S_in + j * L)));
        _mm256_storeu_ps(S_out + j * L + 8, _mm256_fmadd_ps(kj, u1, hi(S_in + j * L)));
      }
      return;
    }
    __m256 a[8];
    for (auto& x : a) x = _mm256_setzero_ps();
    int64_t j = 0;
    auto row = [&](int64_t j, int r) FWP_ALWAYS {
      const __m256 kj = bc(k + j), qj = bc(q + j);
      const __m256 n0 = _mm256_fmadd_ps(kj, u0, lo(S_in + j * L));
      const __m256 n1 = _mm256_fmadd_ps(kj, u1, hi(S_in + j * L));
      _mm256_storeu_ps(S_out + j * L, n0);
      _mm256_storeu_ps(S_out + j * L + 8, n1);
      a[2 * r] = _mm256_fmadd_ps(n0, qj, a[2 * r]);
      a[2 * r + 1] = _mm256_fmadd_ps(n1, qj, a[2 * r + 1]);
    };
    for (; j + 4 <= dk; j += 4) {
      for (int r = 0; r < 4; ++r) row(j + r, r);
    }
    for (; j < dk; ++j) row(j, 0);
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[4], a[6])));
    _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_add_ps(a[1], a[3]), _mm256_add_ps(a[5], a[7])));
  }

  // dS += q dO^T; dq += S_t dO; du = dS^T k; dk += dS u. Blocks of four rows: their eight column
  // sums (four for dq, four for dk) come out of one lane_sums.
  void backward_read(float* dS, const float* S_t, const float* q, const float* k, const float* go,
                     const float* u, float* dq, float* dkey, float* du) const {
    const __m256 g0 = lo(go), g1 = hi(go), u0 = lo(u), u1 = hi(u);
    __m256 d[4];
    for (auto& x : d) x = _mm256_setzero_ps();
    // row j: updates dS, accumulates du into d[2r], d[2r+1] (r in {0, 1}); returns the products
    // whose lane sums are dq_j and dk_j
    auto row = [&](int64_t j, int r, __m256& pq, __m256& pk) FWP_ALWAYS {
      const __m256 qj = bc(q + j), kj = bc(k + j);
      float* dSj = dS + j * L;
      const float* Sj = S_t + j * L;
      const __m256 s0 = _mm256_fmadd_ps(qj, g0, lo(dSj));
      const __m256 s1 = _mm256_fmadd_ps(qj, g1, hi(dSj));
      _mm256_storeu_ps(dSj, s0);
      _mm256_storeu_ps(dSj + 8, s1);
      pq = _mm256_fmadd_ps(hi(Sj), g1, _mm256_mul_ps(lo(Sj), g0));
      pk = _mm256_fmadd_ps(s1, u1, _mm256_mul_ps(s0, u0));
      d[2 * r] = _mm256_fmadd_ps(s0, kj, d[2 * r]);
      d[2 * r + 1] = _mm256_fmadd_ps(s1, kj, d[2 * r + 1]);
    };
    int64_t j = 0;
    for (; j + 4 <= dk; j += 4) {
      __m256 pq[4], pk[4];
      for (int r = 0; r < 4; ++r) row(j + r, r % 2, pq[r], pk[r]);
      const __m256 sums = lane_sums(pq[0], pq[1], pq[2], pq[3], pk[0], pk[1], pk[2], pk[3]);
      _mm_storeu_ps(dq + j, _mm_add_ps(_mm_loadu_ps(dq + j), _mm256_castps256_ps128(sums)));
      _mm_storeu_ps(dkey + j, _mm_add_ps(_mm_loadu_ps(dkey + j), _mm256_extractf128_ps(sums, 1)));
    }
    for (; j < dk; ++j) {
      __m256 pq, pk;
      row(j, 0, pq, pk);
      dq[j] += lane_sum(pq);
      dkey[j] += lane_sum(pk);
    }
    _mm256_storeu_ps(du, _mm256_add_ps(d[0], d[2]));
    _mm256_storeu_ps(du + 8, _mm256_add_ps(d[1], d[3]));
  }

  // dk += S_{t-1} g; dS += k g^T. Blocks of eight rows share one lane_sums.
  void backward_delta(float* dS, const float* S_prev, const float* k, const float* g, float* dkey) const {
    const __m256 g0 = lo(g), g1 = hi(g);
    auto row = [&](int64_t j) FWP_ALWAYS {
      const __m256 kj = bc(k + j);
      float* dSj = dS + j * L;
      const float* Pj = S_prev + j * L;
      _mm256_storeu_ps(dSj, _mm256_fmadd_ps(kj, g0, lo(dSj)));
      _mm256_storeu_ps(dSj + 8, _mm256_fmadd_ps(kj, g1, hi(dSj)));
      return _mm256_fmadd_ps(hi(Pj), g1, _mm256_mul_ps(lo(Pj), g0));
    };
    int64_t j = 0;
    for (; j + 8 <= dk; j += 8) {
      __m256 p[8];
      for (int r = 0; r < 8; ++r) p[r] = row(j + r);
      const __m256 sums = lane_sums(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
      _mm256_storeu_ps(dkey + j, _mm256_add_ps(_mm256_loadu_ps(dkey + j), sums));
    }
    for (; j < dk; ++j) dkey[j] += lane_sum(row(j));
  }
};
#endif

// A row of n inputs as acc_t: the row itself when the types agree, else converted into buf.
template <typename scalar_t, typename acc_t>
const acc_t* as_acc(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf;
  }
}

template <typename scalar_t, typename acc_t>
struct Forward {
  const scalar_t *q, *k, *v, *beta;
  const acc_t* s0;
  scalar_t* out;
  acc_t *state, *ckpt;
  const Dims& d;
  bool delta;

  // All T steps of one (batch-head, tile); S is the tile's state buffer, kb/qb conversion buffers.
  template <int64_t W>
  void tile(int64_t bh, int64_t m0, int64_t w, acc_t* S, acc_t* kb, acc_t* qb) const {
    constexpr int64_t L = kTile<acc_t>;
    const TileMath<acc_t, W> tm(d.d_k, w);
    const int64_t n = tm.width(), dk = d.d_k, dv = d.d_v, ss = dk * dv, N = d.n_chunks();
    acc_t r[L], u[L], o[L];
    tm.gather(s0 + bh * ss, dv, m0, S);
    for (int64_t t = 0; t < d.T; ++t) {
      if (t % d.chunk == 0) tm.scatter(S, dv, m0, ckpt + (bh * N + t / d.chunk) * ss);
      const int64_t row = bh * d.T + t;
      const acc_t* kt = as_acc(k + row * dk, dk, kb);
      const acc_t* qt = as_acc(q + row * dk, dk, qb);
      const scalar_t* vt = v + row * dv + m0;
      if (delta) {
        const acc_t b = static_cast<acc_t>(beta[row]);
        tm.retrieve(S, kt, r);
        for (int64_t m = 0; m < n; ++m) u[m] = written_value(true, b, acc_t(0), delta_residual(acc_t(vt[m]), r[m]));
      } else {
        for (int64_t m = 0; m < n; ++m) u[m] = written_value(false, acc_t(0), acc_t(vt[m]), acc_t(0));
      }
      tm.write(S, S, kt, u, qt, o);
      for (int64_t m = 0; m < n; ++m) out[row * dv + m0 + m] = static_cast<scalar_t>(o[m]);
    }
    tm.scatter(S, dv, m0, state + bh * ss);
  }
};

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                  const Dims& d, bool delta) {
  constexpr int64_t L = kTile<acc_t>;
  const Forward<scalar_t, acc_t> f{q.data_ptr<scalar_t>(),
                                   k.data_ptr<scalar_t>(),
                                   v.data_ptr<scalar_t>(),
                                   delta ? beta.data_ptr<scalar_t>() : nullptr,
                                   s0.data_ptr<acc_t>(),
                                   out.data_ptr<scalar_t>(),
                                   state.data_ptr<acc_t>(),
                                   checkpoints.data_ptr<acc_t>(),
                                   d,
                                   delta};
  const int64_t tiles = (d.d_v + L - 1) / L;
  at::parallel_for(0, d.batch_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> S(d.d_k * L), kb(d.d_k), qb(d.d_k);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / tiles, m0 = (task % tiles) * L, w = std::min(L, d.d_v - m0);
      if (w == L) {
        f.template tile<L>(bh, m0, w, S.data(), kb.data(), qb.data());
      } else {
        f.template tile<0>(bh, m0, w, S.data(), kb.data(), qb.data());
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
struct Backward {
  const scalar_t *grad_out, *q, *k, *v, *beta;
  const acc_t* ckpt;
  scalar_t* dv;
  const Dims& d;
  bool delta;

  // Per-thread buffers: the replay states of one tile, its r and u, the current chunk's dq, dk,
  // dbeta sums over tiles, and conversion buffers.
  struct Scratch {
    std::vector<acc_t> states, rs, us, dq, dk, db, kb, qb, gb;
    Scratch(const Dims& d)
        : states((d.chunk + 1) * d.d_k * kTile<acc_t>),
          rs(d.chunk * kTile<acc_t>),
          us(d.chunk * kTile<acc_t>),
          dq(d.chunk * d.d_k),
          dk(d.chunk * d.d_k),
          db(d.chunk),
          kb(d.d_k),
          qb(d.d_k),
          gb(kTile<acc_t>) {}
  };

  // Chunk n of one (batch-head, tile): replay, then the reverse steps; dS is the tile's state gradient.
  template <int64_t W>
  void tile(int64_t bh, int64_t n, int64_t m0, int64_t w, acc_t* dS, Scratch& s) const {
    constexpr int64_t L = kTile<acc_t>;
    const TileMath<acc_t, W> tm(d.d_k, w);
    const int64_t width = tm.width(), dk = d.d_k, DV = d.d_v, ss = dk * DV, ts = dk * L;
    const int64_t c0 = n * d.chunk, len = std::min(d.chunk, d.T - c0);
    acc_t* states = s.states.data();
    tm.gather(ckpt + (bh * d.n_chunks() + n) * ss, DV, m0, states);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t row = bh * d.T + c0 + i;
      const acc_t* kt = as_acc(k + row * dk, dk, s.kb.data());
      const scalar_t* vt = v + row * DV + m0;
      acc_t *r = s.rs.data() + i * L, *u = s.us.data() + i * L;
      if (delta) {
        const acc_t b = static_cast<acc_t>(beta[row]);
        tm.retrieve(states + i * ts, kt, r);
        for (int64_t m = 0; m < width; ++m) {
          r[m] = delta_residual(acc_t(vt[m]), r[m]);
          u[m] = written_value(true, b, acc_t(0), r[m]);
        }
      } else {
        for (int64_t m = 0; m < width; ++m) u[m] = written_value(false, acc_t(0), acc_t(vt[m]), acc_t(0));
      }
      tm.write(states + i * ts, states + (i + 1) * ts, kt, u, nullptr, nullptr);
    }
    acc_t du[L], g[L];
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t row = bh * d.T + c0 + i;
      const acc_t* kt = as_acc(k + row * dk, dk, s.kb.data());
      const acc_t* qt = as_acc(q + row * dk, dk, s.qb.data());
      const acc_t* got = as_acc(grad_out + row * DV + m0, width, s.gb.data());
      const acc_t *r = s.rs.data() + i * L, *u = s.us.data() + i * L;
      tm.backward_read(dS, states + (i + 1) * ts, qt, kt, got, u, s.dq.data() + i * dk, s.dk.data() + i * dk, du);
      const acc_t b = delta ? static_cast<acc_t>(beta[row]) : acc_t(0);
      for (int64_t m = 0; m < width; ++m) dv[row * DV + m0 + m] = static_cast<scalar_t>(value_grad(delta, b, du[m]));
      if (delta) {
        acc_t db = 0;
        for (int64_t m = 0; m < width; ++m) {
          db += du[m] * r[m];
          g[m] = retrieval_grad(b, du[m]);
        }
        s.db[i] += db;
        tm.backward_delta(dS, states + i * ts, kt, g, s.dk.data() + i * dk);
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                   const at::Tensor& checkpoints, at::Tensor& dq, at::Tensor& dk_t, at::Tensor& dv_t,
                   at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta) {
  using B = Backward<scalar_t, acc_t>;
  constexpr int64_t L = kTile<acc_t>;
  const B bw{grad_out.data_ptr<scalar_t>(),
             q.data_ptr<scalar_t>(),
             k.data_ptr<scalar_t>(),
             v.data_ptr<scalar_t>(),
             delta ? beta.data_ptr<scalar_t>() : nullptr,
             checkpoints.data_ptr<acc_t>(),
             dv_t.data_ptr<scalar_t>(),
             d,
             delta};
  const acc_t* gsp = grad_state.data_ptr<acc_t>();
  scalar_t* dqp = dq.data_ptr<scalar_t>();
  scalar_t* dkp = dk_t.data_ptr<scalar_t>();
  scalar_t* dbp = delta ? dbeta.data_ptr<scalar_t>() : nullptr;
  acc_t* ds0p = ds0.data_ptr<acc_t>();
  const int64_t dk = d.d_k, dv = d.d_v, ss = dk * dv, tiles = (dv + L - 1) / L;
  at::parallel_for(0, d.batch_heads, 1, [&](int64_t begin, int64_t end) {
    typename B::Scratch s(d);
    std::vector<acc_t> dS(tiles * dk * L);  // the state gradient, tile by tile
    for (int64_t bh = begin; bh < end; ++bh) {
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t m0 = tile * L;
        const TileShape<acc_t, 0> tm(dk, std::min(L, dv - m0));
        tm.gather(gsp + bh * ss, dv, m0, dS.data() + tile * dk * L);
      }
      for (int64_t n = d.n_chunks() - 1; n >= 0; --n) {
        const int64_t c0 = n * d.chunk, len = std::min(d.chunk, d.T - c0);
        std::fill_n(s.dq.begin(), len * dk, acc_t(0));
        std::fill_n(s.dk.begin(), len * dk, acc_t(0));
        std::fill_n(s.db.begin(), len, acc_t(0));
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const int64_t m0 = tile * L, w = std::min(L, dv - m0);
          acc_t* dSt = dS.data() + tile * dk * L;
          if (w == L) {
            bw.template tile<L>(bh, n, m0, w, dSt, s);
          } else {
            bw.template tile<0>(bh, n, m0, w, dSt, s);
          }
        }
        const int64_t row0 = bh * d.T + c0;
        for (int64_t i = 0; i < len * dk; ++i) {
          dqp[row0 * dk + i] = static_cast<scalar_t>(s.dq[i]);
          dkp[row0 * dk + i] = static_cast<scalar_t>(s.dk[i]);
        }
        if (delta) {
          for (int64_t i = 0; i < len; ++i) dbp[row0 + i] = static_cast<scalar_t>(s.db[i]);
        }
      }
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t m0 = tile * L;
        const TileShape<acc_t, 0> tm(dk, std::min(L, dv - m0));
        tm.scatter(dS.data() + tile * dk * L, dv, m0, ds0p + bh * ss);
      }
    }
  });
}

}  // namespace

void forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                 const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                 const Dims& d, bool delta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "fwp_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t, acc_t>(q, k, v, beta, s0, out, state, checkpoints, d, delta);
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& checkpoints, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                  at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "fwp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_impl<scalar_t, acc_t>(grad_out, grad_state, q, k, v, beta, checkpoints, dq, dk, dv, dbeta,
                                   ds0, d, delta);
  });
}

}  // namespace FWP_CPU_ISA
}  // namespace fwp
