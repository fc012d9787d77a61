// CPU kernels of the fused fast-weight recurrence (algorithm and backward: fast_weight.h).
//
// The columns of the state are independent (docs/derivations.md Sec. 6), so d_v is cut into tiles of
// W = 4 registers of columns (64 fp32 columns with AVX-512, 32 with AVX2; cpu_vec.h). A tile's
// state is d_k rows of W values, padded with zero columns past d_v and zero rows up to a whole
// number of registers, which keeps every loop free of tails: zero keys, queries and values leave the
// padding zero through every step, forward and backward, so it never reaches a result.
//
// Every step is one sweep over the tile's rows, the row held in registers while it is used:
// - forward, step t: S_t[j] = S_{t-1}[j] + k_t[j] u_t; o_t += q_t[j] S_t[j], and for the delta rule
//   the next step's retrieval S_t^T k_{t+1} += k_{t+1}[j] S_t[j]. All sums run over rows, so they
//   are vertical in the registers; the state is read and written once per step. The delta rule's
//   residual e_t = v_t - S_{t-1}^T k_t (u_t = beta_t e_t) is saved for the backward.
// - backward: for each chunk (last first) the tile starts from the state after the chunk (the next
//   checkpoint, or the final state) and walks back, undoing each step: S_{t-1}[j] = S_t[j] -
//   k_t[j] u_t, with u_t from the saved residual, rounded as the forward's fma rounded the update
//   (docs/derivations.md Sec. 6). Reverse step t is fused with the first half of step t - 1: per
//   row, dq[j] += S_t[j] . dO_t and dk[j] += dS[j] . u_t + S_{t-1}[j] . g_t (sums over columns:
//   per row one register, summed across registers for N rows at a time by lane_sums),
//   dS[j] += k_t[j] g_t + q_{t-1}[j] dO_{t-1}, and du_{t-1} += k_{t-1}[j] dS[j].
// Buffers are 64-byte aligned. Tasks of at::parallel_for: (batch-head, tile) in the forward,
// batch-head in the backward (whose tiles add into one chunk's dq, dk and dbeta).
// build.rs compiles this file once per instruction set (the baseline as fwp::generic; on x86-64
// also fwp::avx2 with AVX2 + FMA and fwp::avx512 with AVX-512F); fast_weight_op.cpp picks the
// build at run time.

#include "fast_weight_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/alignment.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#ifndef FWP_CPU_ISA
#define FWP_CPU_ISA generic
#endif

#include "cpu_vec.h"

namespace fwp {
namespace FWP_CPU_ISA {
namespace {

constexpr int kRegisters = 4;  // registers of columns per tile

// Storage from c10::alloc_cpu, 64-byte aligned: with rows of whole registers no load or store
// straddles two cache lines (a split access costs about two; it made the kernels 10-20% slower).
template <typename T>
struct CpuAllocator {
  static_assert(c10::gAlignment >= 64, "c10::alloc_cpu aligns to less than a zmm register");
  using value_type = T;
  CpuAllocator() = default;
  template <typename U>
  CpuAllocator(const CpuAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(c10::alloc_cpu(n * sizeof(T))); }
  void deallocate(T* p, size_t) { c10::free_cpu(p); }
  template <typename U>
  bool operator==(const CpuAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CpuAllocator<U>&) const { return false; }
};
template <typename T>
using Buffer = std::vector<T, CpuAllocator<T>>;

// rows of a tile state: d_k rounded up to whole registers (lane_sums takes N rows at a time)
template <typename acc_t>
int64_t padded_rows(int64_t d_k) {
  constexpr int64_t n = CpuVec<acc_t>::N;
  return (d_k + n - 1) / n * n;
}

// The arithmetic of one column tile: DK rows of W = NV * N values each.
template <typename acc_t>
struct Tile {
  using V = CpuVec<acc_t>;
  using R = typename V::R;
  static constexpr int N = V::N;
  static constexpr int NV = kRegisters;
  static constexpr int64_t W = NV * N;
  int64_t DK;

  FWP_INLINE const R at(const acc_t* rows, int64_t j, int v) const { return V::load(rows + j * W + v * N); }

  // One forward step, in place: S[j] += k[j] u for every row; o = sum_j q[j] S[j], and with KN also
  // r = sum_j kn[j] S[j], the next step's retrieval (formed as retrieve forms it).
  template <bool KN>
  FWP_INLINE void sweep(acc_t* S, const acc_t* k, const acc_t* u, const acc_t* q, acc_t* o, const acc_t* kn,
                        acc_t* r) const {
    R uu[NV], ao[NV], ar[NV];
    for (int v = 0; v < NV; ++v) uu[v] = V::load(u + v * N), ao[v] = V::zero(), ar[v] = V::zero();
    for (int64_t j = 0; j < DK; ++j) {
      const R kj = V::set1(k[j]);
      for (int v = 0; v < NV; ++v) {
        const R s = V::fma(kj, uu[v], at(S, j, v));
        V::store(S + j * W + v * N, s);
        ao[v] = V::fma(V::set1(q[j]), s, ao[v]);
        if (KN) ar[v] = V::fma(V::set1(kn[j]), s, ar[v]);
      }
    }
    for (int v = 0; v < NV; ++v) {
      V::store(o + v * N, ao[v]);
      if (KN) V::store(r + v * N, ar[v]);
    }
  }

  // r = S^T k
  FWP_INLINE void retrieve(const acc_t* S, const acc_t* k, acc_t* r) const {
    R ar[NV];
    for (int v = 0; v < NV; ++v) ar[v] = V::zero();
    for (int64_t j = 0; j < DK; ++j)
      for (int v = 0; v < NV; ++v) ar[v] = V::fma(V::set1(k[j]), at(S, j, v), ar[v]);
    for (int v = 0; v < NV; ++v) V::store(r + v * N, ar[v]);
  }

  // The first half of a reverse step on its own: dS += q dO^T; du = dS^T k.
  FWP_INLINE void output_grad(acc_t* dS, const acc_t* q, const acc_t* go, const acc_t* k, acc_t* du) const {
    R g[NV], a[NV];
    for (int v = 0; v < NV; ++v) g[v] = V::load(go + v * N), a[v] = V::zero();
    for (int64_t j = 0; j < DK; ++j) {
      for (int v = 0; v < NV; ++v) {
        const R s = V::fma(V::set1(q[j]), g[v], at(dS, j, v));
        V::store(dS + j * W + v * N, s);
        a[v] = V::fma(V::set1(k[j]), s, a[v]);
      }
    }
    for (int v = 0; v < NV; ++v) V::store(du + v * N, a[v]);
  }

  // The second half of reverse step t. On entry S holds S_t and dS the gradient of S_t (its output
  // term included); S leaves holding S_{t-1} = S_t - k_t u_t^T, the step undone (fnma against the
  // forward's fma):
  //   dq_t += S_t dO_t;  dk_t += dS u_t;  delta rule: dk_t += S_{t-1} g_t, dS += k_t g_t^T,
  // with g_t = -beta_t du_t. With PREV, fused with the first half of step t - 1:
  // dS += q_{t-1} dO_{t-1}^T, du_{t-1} = dS^T k_{t-1}. The delta rule's dbeta_t = du_t . e_t
  // (e_t = v_t - S_{t-1}^T k_t, saved by the forward) is added to *db. The per-row sums over
  // columns come out of lane_sums, N rows at a time.
  template <bool DELTA, bool PREV>
  FWP_INLINE void state_grad(acc_t* dS, acc_t* S, const acc_t* k, const acc_t* u, acc_t beta, const acc_t* go,
                             acc_t* dq, acc_t* dkey, const acc_t* q_p, const acc_t* go_p, const acc_t* k_p,
                             acc_t* du_p, const acc_t* du, const acc_t* e, acc_t* db) const {
    R uu[NV], gg[NV], oo[NV], op[NV], ap[NV];
    const R nb = V::set1(retrieval_grad(beta, acc_t(1)));  // g_t = -beta_t du_t, from du in registers
    R hb = V::zero();
    for (int v = 0; v < NV; ++v) {
      uu[v] = V::load(u + v * N), oo[v] = V::load(go + v * N), ap[v] = V::zero();
      if (DELTA) {
        const R dd = V::load(du + v * N);
        gg[v] = V::mul(nb, dd);
        hb = V::fma(dd, V::load(e + v * N), hb);
      }
      if (PREV) op[v] = V::load(go_p + v * N);
    }
    if (DELTA) *db += V::sum(hb);
    R hk[N], hq[N];
    for (int64_t j0 = 0; j0 < DK; j0 += N) {
      for (int i = 0; i < N; ++i) {
        const int64_t j = j0 + i;
        R s[NV], st[NV];
        for (int v = 0; v < NV; ++v) s[v] = at(dS, j, v), st[v] = at(S, j, v);
        R pk = V::mul(s[0], uu[0]), pq = V::mul(st[0], oo[0]);
        for (int v = 1; v < NV; ++v) {
          pk = V::fma(s[v], uu[v], pk);
          pq = V::fma(st[v], oo[v], pq);
        }
        const R kj = V::set1(k[j]);
        for (int v = 0; v < NV; ++v) {
          st[v] = V::fnma(kj, uu[v], st[v]);
          V::store(S + j * W + v * N, st[v]);
        }
        if (DELTA) {
          for (int v = 0; v < NV; ++v) pk = V::fma(st[v], gg[v], pk);
          for (int v = 0; v < NV; ++v) s[v] = V::fma(kj, gg[v], s[v]);
        }
        if (PREV) {
          const R qj = V::set1(q_p[j]), kpj = V::set1(k_p[j]);
          for (int v = 0; v < NV; ++v) {
            s[v] = V::fma(qj, op[v], s[v]);
            ap[v] = V::fma(kpj, s[v], ap[v]);
          }
        }
        if (DELTA || PREV)
          for (int v = 0; v < NV; ++v) V::store(dS + j * W + v * N, s[v]);
        hk[i] = pk;
        hq[i] = pq;
      }
      V::store(dq + j0, V::add(V::load(dq + j0), V::lane_sums(hq)));
      V::store(dkey + j0, V::add(V::load(dkey + j0), V::lane_sums(hk)));
    }
    if (PREV)
      for (int v = 0; v < NV; ++v) V::store(du_p + v * N, ap[v]);
  }
};

// f(std::true_type) or f(std::false_type): a run-time flag as a template argument.
template <typename F>
FWP_INLINE void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// n values of an input row into an accumulation-type buffer (whose padding stays as it was).
template <typename scalar_t, typename acc_t>
FWP_INLINE void load_row(const scalar_t* src, int64_t n, acc_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// Asks for the n values at p ahead of use. The recurrence reads one row of each input per step, a
// few hundred bytes: left to the hardware prefetcher, rows of inputs larger than L2 arrived late
// (the forward at d = 64 ran 15-20% slower on 8 batch-heads than on one).
constexpr int64_t kPrefetchSteps = 4;
template <typename scalar_t>
FWP_INLINE void prefetch_row(const scalar_t* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(scalar_t)); b += 64) __builtin_prefetch(c + b);
}

// The same for a row about to be written (the delta rule's residuals, a row of new lines per step).
template <typename T>
FWP_INLINE void prefetch_row_for_write(T* p, int64_t n) {
  char* c = reinterpret_cast<char*>(p);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(c + b, 1);
}

// Columns [m0, m0 + w) of a row-major d_k x d_v matrix <-> a tile state (rows of stride W).
template <typename acc_t>
void gather(const acc_t* full, int64_t d_k, int64_t d_v, int64_t m0, int64_t w, acc_t* tile) {
  for (int64_t j = 0; j < d_k; ++j) std::copy_n(full + j * d_v + m0, w, tile + j * Tile<acc_t>::W);
}
template <typename acc_t>
void scatter(const acc_t* tile, int64_t d_k, int64_t d_v, int64_t m0, int64_t w, acc_t* full) {
  for (int64_t j = 0; j < d_k; ++j) std::copy_n(tile + j * Tile<acc_t>::W, w, full + j * d_v + m0);
}

template <typename scalar_t, typename acc_t>
struct Forward {
  const scalar_t *q, *k, *v, *beta;
  const acc_t* s0;
  scalar_t* out;
  acc_t *state, *ckpt, *resid;  // resid: the delta rule's e_t, [BH, T, d_v]; both null in inference
  const Dims& d;
  bool delta;

  // Per-thread buffers: the tile state, two key rows (this step's and the next), the query row,
  // u_t, the retrieval and the output, each padded with zeros; e_t when it is not saved.
  struct Scratch {
    Buffer<acc_t> S, k2, q, u, r, o, e;
    explicit Scratch(const Dims& d) {
      const int64_t DK = padded_rows<acc_t>(d.d_k), W = Tile<acc_t>::W;
      S.resize(DK * W), k2.assign(2 * DK, 0), q.assign(DK, 0), u.assign(W, 0), r.assign(W, 0), o.resize(W);
      e.resize(W);
    }
  };

  // All T steps of columns [m0, m0 + w) of one batch-head.
  void tile(int64_t bh, int64_t m0, int64_t w, Scratch& s) const {
    const int64_t dk = d.d_k, dv = d.d_v, ss = dk * dv, DK = padded_rows<acc_t>(dk);
    const Tile<acc_t> tl{DK};
    acc_t* S = s.S.data();
    std::fill(s.S.begin(), s.S.end(), acc_t(0));
    std::fill(s.u.begin() + w, s.u.end(), acc_t(0));  // a wider tile may have used them
    gather(s0 + bh * ss, dk, dv, m0, w, S);
    auto key = [&](int64_t t) {  // k_t, in the buffer slot of t's parity
      acc_t* row = s.k2.data() + (t % 2) * DK;
      load_row(k + (bh * d.T + t) * dk, dk, row);
      return row;
    };
    const acc_t* kt = key(0);
    if (delta) tl.retrieve(S, kt, s.r.data());
    for (int64_t t = 0; t < d.T; ++t) {
      if (ckpt != nullptr && t % d.chunk == 0)
        scatter(S, dk, dv, m0, w, ckpt + (bh * d.n_chunks() + t / d.chunk) * ss);
      const int64_t row = bh * d.T + t;
      if (t + kPrefetchSteps + 1 < d.T) {
        const int64_t ahead = row + kPrefetchSteps;
        prefetch_row(q + ahead * dk, dk), prefetch_row(k + (ahead + 1) * dk, dk), prefetch_row(v + ahead * dv + m0, w);
        if (delta) {
          prefetch_row(beta + ahead, 1);
          if (resid != nullptr) prefetch_row_for_write(resid + ahead * dv + m0, w);
        }
      }
      load_row(q + row * dk, dk, s.q.data());
      const scalar_t* vt = v + row * dv + m0;
      acc_t* __restrict u = s.u.data();
      if (delta) {
        const acc_t b = static_cast<acc_t>(beta[row]);
        const acc_t* __restrict r = s.r.data();
        acc_t* __restrict e = resid != nullptr ? resid + row * dv + m0 : s.e.data();
        for (int64_t m = 0; m < w; ++m) {
          e[m] = delta_residual(acc_t(vt[m]), r[m]);
          u[m] = written_value(true, b, acc_t(vt[m]), e[m]);
        }
      } else {
        for (int64_t m = 0; m < w; ++m) u[m] = written_value(false, acc_t(0), acc_t(vt[m]), acc_t(0));
      }
      const acc_t* kn = t + 1 < d.T ? key(t + 1) : nullptr;
      if (delta && kn != nullptr) {
        tl.template sweep<true>(S, kt, s.u.data(), s.q.data(), s.o.data(), kn, s.r.data());
      } else {
        tl.template sweep<false>(S, kt, s.u.data(), s.q.data(), s.o.data(), nullptr, nullptr);
      }
      kt = kn;
      for (int64_t m = 0; m < w; ++m) out[row * dv + m0 + m] = static_cast<scalar_t>(s.o[m]);
    }
    scatter(S, dk, dv, m0, w, state + bh * ss);
  }
};

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                  at::Tensor& residuals, const Dims& d, bool delta) {
  using F = Forward<scalar_t, acc_t>;
  constexpr int64_t W = Tile<acc_t>::W;
  const F f{q.data_ptr<scalar_t>(),
            k.data_ptr<scalar_t>(),
            v.data_ptr<scalar_t>(),
            delta ? beta.data_ptr<scalar_t>() : nullptr,
            s0.data_ptr<acc_t>(),
            out.data_ptr<scalar_t>(),
            state.data_ptr<acc_t>(),
            checkpoints.numel() > 0 ? checkpoints.data_ptr<acc_t>() : nullptr,
            delta && residuals.numel() > 0 ? residuals.data_ptr<acc_t>() : nullptr,
            d,
            delta};
  const int64_t tiles = (d.d_v + W - 1) / W;
  at::parallel_for(0, d.batch_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    typename F::Scratch s(d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / tiles, m0 = (task % tiles) * W;
      f.tile(bh, m0, std::min(W, d.d_v - m0), s);
    }
  });
}

template <typename scalar_t, typename acc_t>
struct Backward {
  const scalar_t *grad_out, *q, *k, *v, *beta;
  const acc_t *ckpt, *final_state, *resid;
  scalar_t* dv;
  const Dims& d;
  bool delta;

  // Per-thread buffers, padded with zeros: the state of one tile, walked back through a chunk; per
  // step of the chunk its keys and queries, and the tile's dO, residual e and u; the chunk's dq, dk
  // and dbeta sums over tiles; du for this step and the previous one.
  struct Scratch {
    Buffer<acc_t> S, k, q, go, e, u, dq, dk, db, du, du_p;
    explicit Scratch(const Dims& d) {
      const int64_t DK = padded_rows<acc_t>(d.d_k), W = Tile<acc_t>::W, C = d.chunk;
      S.resize(DK * W);
      k.assign(C * DK, 0), q.assign(C * DK, 0), go.assign(C * W, 0), e.assign(C * W, 0), u.assign(C * W, 0);
      dq.resize(C * DK), dk.resize(C * DK), db.resize(C);
      du.assign(W, 0), du_p.assign(W, 0);
    }
  };

  // Chunk n of columns [m0, m0 + w), in reverse; dS is the tile's state gradient.
  void tile(int64_t bh, int64_t n, int64_t m0, int64_t w, acc_t* dS, Scratch& s) const {
    const int64_t dk = d.d_k, DV = d.d_v, ss = dk * DV, DK = padded_rows<acc_t>(dk);
    constexpr int64_t W = Tile<acc_t>::W;
    const int64_t c0 = n * d.chunk, len = std::min(d.chunk, d.T - c0);
    const Tile<acc_t> tl{DK};
    // the state after the chunk's last step: the next chunk's checkpoint, or the final state
    acc_t* S = s.S.data();
    std::fill(s.S.begin(), s.S.end(), acc_t(0));
    const acc_t* after = n + 1 < d.n_chunks() ? ckpt + (bh * d.n_chunks() + n + 1) * ss : final_state + bh * ss;
    gather(after, dk, DV, m0, w, S);
    // per step: dO, and the residual and u = beta e (delta rule) or u = v (sum rule), padded with
    // zeros (a wider tile may have used the padding)
    for (int64_t i = 0; i < len; ++i) {
      const int64_t row = bh * d.T + c0 + i;
      if (i + kPrefetchSteps < len) {
        const int64_t ahead = row + kPrefetchSteps;
        prefetch_row(grad_out + ahead * DV + m0, w);
        if (delta) {
          prefetch_row(resid + ahead * DV + m0, w);
        } else {
          prefetch_row(v + ahead * DV + m0, w);
        }
      }
      acc_t *e = s.e.data() + i * W, *u = s.u.data() + i * W, *go = s.go.data() + i * W;
      load_row(grad_out + row * DV + m0, w, go);
      if (delta) {
        const acc_t b = static_cast<acc_t>(beta[row]);
        const acc_t* er = resid + row * DV + m0;
        for (int64_t m = 0; m < w; ++m) e[m] = er[m], u[m] = written_value(true, b, acc_t(0), er[m]);
      } else {
        const scalar_t* vt = v + row * DV + m0;
        for (int64_t m = 0; m < w; ++m) u[m] = written_value(false, acc_t(0), acc_t(vt[m]), acc_t(0));
      }
      std::fill(e + w, e + W, acc_t(0)), std::fill(u + w, u + W, acc_t(0)), std::fill(go + w, go + W, acc_t(0));
    }
    // reverse
    const int64_t last = len - 1;
    tl.output_grad(dS, s.q.data() + last * DK, s.go.data() + last * W, s.k.data() + last * DK, s.du.data());
    for (int64_t i = last; i >= 0; --i) {
      const int64_t row = bh * d.T + c0 + i;
      const acc_t b = delta ? static_cast<acc_t>(beta[row]) : acc_t(0);
      const acc_t *e = s.e.data() + i * W, *u = s.u.data() + i * W, *du = s.du.data();
      for (int64_t m = 0; m < w; ++m) dv[row * DV + m0 + m] = static_cast<scalar_t>(value_grad(delta, b, du[m]));
      const acc_t *kt = s.k.data() + i * DK, *go = s.go.data() + i * W;
      acc_t *dqi = s.dq.data() + i * DK, *dki = s.dk.data() + i * DK;
      // step i - 1's key, query and dO (none before the chunk's first step)
      const bool prev = i > 0;
      const acc_t* k_p = prev ? kt - DK : nullptr;
      const acc_t* q_p = prev ? s.q.data() + (i - 1) * DK : nullptr;
      const acc_t* go_p = prev ? go - W : nullptr;
      with_flag(delta, [&](auto dl) {
        with_flag(prev, [&](auto pv) {
          tl.template state_grad<decltype(dl)::value, decltype(pv)::value>(
              dS, S, kt, u, b, go, dqi, dki, q_p, go_p, k_p, s.du_p.data(), du, e, s.db.data() + i);
        });
      });
      if (!prev) break;
      std::swap(s.du, s.du_p);
    }
  }
};

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                   const at::Tensor& checkpoints, const at::Tensor& final_state, const at::Tensor& residuals,
                   at::Tensor& dq, at::Tensor& dk_t, at::Tensor& dv_t, at::Tensor& dbeta, at::Tensor& ds0,
                   const Dims& d, bool delta) {
  using B = Backward<scalar_t, acc_t>;
  constexpr int64_t W = Tile<acc_t>::W;
  const B bw{grad_out.data_ptr<scalar_t>(),
             q.data_ptr<scalar_t>(),
             k.data_ptr<scalar_t>(),
             v.data_ptr<scalar_t>(),
             delta ? beta.data_ptr<scalar_t>() : nullptr,
             checkpoints.data_ptr<acc_t>(),
             final_state.data_ptr<acc_t>(),
             delta ? residuals.data_ptr<acc_t>() : nullptr,
             dv_t.data_ptr<scalar_t>(),
             d,
             delta};
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const acc_t* gsp = grad_state.data_ptr<acc_t>();
  scalar_t* dqp = dq.data_ptr<scalar_t>();
  scalar_t* dkp = dk_t.data_ptr<scalar_t>();
  scalar_t* dbp = delta ? dbeta.data_ptr<scalar_t>() : nullptr;
  acc_t* ds0p = ds0.data_ptr<acc_t>();
  const int64_t dk = d.d_k, dv = d.d_v, ss = dk * dv, DK = padded_rows<acc_t>(dk);
  const int64_t tiles = (dv + W - 1) / W, ts = DK * W;
  at::parallel_for(0, d.batch_heads, 1, [&](int64_t begin, int64_t end) {
    typename B::Scratch s(d);
    Buffer<acc_t> dS(tiles * ts);  // the state gradient, tile by tile
    for (int64_t bh = begin; bh < end; ++bh) {
      std::fill(dS.begin(), dS.end(), acc_t(0));
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t m0 = tile * W;
        gather(gsp + bh * ss, dk, dv, m0, std::min(W, dv - m0), dS.data() + tile * ts);
      }
      for (int64_t n = d.n_chunks() - 1; n >= 0; --n) {
        const int64_t c0 = n * d.chunk, len = std::min(d.chunk, d.T - c0), row0 = bh * d.T + c0;
        for (int64_t i = 0; i < len; ++i) {
          load_row(kp + (row0 + i) * dk, dk, s.k.data() + i * DK);
          load_row(qp + (row0 + i) * dk, dk, s.q.data() + i * DK);
        }
        std::fill_n(s.dq.begin(), len * DK, acc_t(0));
        std::fill_n(s.dk.begin(), len * DK, acc_t(0));
        std::fill_n(s.db.begin(), len, acc_t(0));
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const int64_t m0 = tile * W;
          bw.tile(bh, n, m0, std::min(W, dv - m0), dS.data() + tile * ts, s);
        }
        for (int64_t i = 0; i < len; ++i) {
          for (int64_t j = 0; j < dk; ++j) {
            dqp[(row0 + i) * dk + j] = static_cast<scalar_t>(s.dq[i * DK + j]);
            dkp[(row0 + i) * dk + j] = static_cast<scalar_t>(s.dk[i * DK + j]);
          }
          if (delta) dbp[row0 + i] = static_cast<scalar_t>(s.db[i]);
        }
      }
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t m0 = tile * W;
        scatter(dS.data() + tile * ts, dk, dv, m0, std::min(W, dv - m0), ds0p + bh * ss);
      }
    }
  });
}

}  // namespace

void forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                 const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                 at::Tensor& residuals, const Dims& d, bool delta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "fwp_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t, acc_t>(q, k, v, beta, s0, out, state, checkpoints, residuals, d, delta);
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& checkpoints, const at::Tensor& final_state, const at::Tensor& residuals,
                  at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dbeta, at::Tensor& ds0,
                  const Dims& d, bool delta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "fwp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_impl<scalar_t, acc_t>(grad_out, grad_state, q, k, v, beta, checkpoints, final_state, residuals, dq,
                                   dk, dv, dbeta, ds0, d, delta);
  });
}

}  // namespace FWP_CPU_ISA
}  // namespace fwp
