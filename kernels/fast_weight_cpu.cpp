// CPU kernels of the fused fast-weight recurrence: one (batch, head) per task of
// at::parallel_for; the state is a row-major d_k x d_v array in the accumulation type, walked with
// j (key index) outside and m (value column) inside, so the inner loops are contiguous and the
// compiler vectorises them (reductions over m through `omp simd`, enabled by -fopenmp-simd).
// The algorithm and its backward are described in fast_weight.h. build.rs compiles this file twice:
// for the baseline ISA (namespace fwp::generic) and, on x86-64, with AVX2 + FMA (fwp::avx2);
// fast_weight_op.cpp picks the variant at run time.

#include "fast_weight_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#ifndef FWP_CPU_ISA
#define FWP_CPU_ISA generic
#endif

namespace fwp {
namespace FWP_CPU_ISA {
namespace {

template <typename scalar_t, typename acc_t>
struct Step {
  const Dims& d;
  bool delta;

  // r (delta) and u for one step from the state S (d_k x d_v) and k, v.
  void written(const acc_t* S, const acc_t* k, const scalar_t* v, acc_t beta, acc_t* r, acc_t* u) const {
    const int64_t dv = d.d_v;
    if (delta) {
      std::fill(r, r + dv, acc_t(0));
      for (int64_t j = 0; j < d.d_k; ++j) {
        const acc_t kj = k[j];
        const acc_t* Sj = S + j * dv;
#pragma omp simd
        for (int64_t m = 0; m < dv; ++m) r[m] += Sj[m] * kj;
      }
      for (int64_t m = 0; m < dv; ++m) {
        r[m] = delta_residual(static_cast<acc_t>(v[m]), r[m]);
        u[m] = written_value(true, beta, acc_t(0), r[m]);
      }
    } else {
      for (int64_t m = 0; m < dv; ++m) u[m] = written_value(false, beta, static_cast<acc_t>(v[m]), acc_t(0));
    }
  }

  // S_next = S + k u^T (S_next may alias S).
  void update(const acc_t* S, const acc_t* k, const acc_t* u, acc_t* S_next) const {
    const int64_t dv = d.d_v;
    for (int64_t j = 0; j < d.d_k; ++j) {
      const acc_t kj = k[j];
      const acc_t* Sj = S + j * dv;
      acc_t* Nj = S_next + j * dv;
#pragma omp simd
      for (int64_t m = 0; m < dv; ++m) Nj[m] = Sj[m] + kj * u[m];
    }
  }
};

template <typename scalar_t, typename acc_t>
void load(const scalar_t* src, int64_t n, acc_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                  const Dims& d, bool delta) {
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const scalar_t* bp = delta ? beta.data_ptr<scalar_t>() : nullptr;
  const acc_t* s0p = s0.data_ptr<acc_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  acc_t* sp = state.data_ptr<acc_t>();
  acc_t* cp = checkpoints.data_ptr<acc_t>();
  const int64_t dk = d.d_k, dv = d.d_v, T = d.T, ss = dk * dv, N = d.n_chunks();
  at::parallel_for(0, d.batch_heads, 1, [&](int64_t begin, int64_t end) {
    Step<scalar_t, acc_t> step{d, delta};
    std::vector<acc_t> kb(dk), qb(dk), r(dv), u(dv), o(dv);
    for (int64_t bh = begin; bh < end; ++bh) {
      acc_t* S = sp + bh * ss;
      std::copy(s0p + bh * ss, s0p + (bh + 1) * ss, S);
      for (int64_t t = 0; t < T; ++t) {
        if (t % d.chunk == 0) std::copy(S, S + ss, cp + (bh * N + t / d.chunk) * ss);
        const int64_t row = bh * T + t;
        load(kp + row * dk, dk, kb.data());
        load(qp + row * dk, dk, qb.data());
        const acc_t b = delta ? static_cast<acc_t>(bp[row]) : acc_t(0);
        step.written(S, kb.data(), vp + row * dv, b, r.data(), u.data());
        // S += k u^T and o = S^T q in one pass over S
        std::fill(o.begin(), o.end(), acc_t(0));
        for (int64_t j = 0; j < dk; ++j) {
          const acc_t kj = kb[j], qj = qb[j];
          acc_t* Sj = S + j * dv;
#pragma omp simd
          for (int64_t m = 0; m < dv; ++m) {
            Sj[m] += kj * u[m];
            o[m] += Sj[m] * qj;
          }
        }
        for (int64_t m = 0; m < dv; ++m) op[row * dv + m] = static_cast<scalar_t>(o[m]);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                   const at::Tensor& checkpoints, at::Tensor& dq, at::Tensor& dk_t, at::Tensor& dv_t,
                   at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta) {
  const scalar_t* gop = grad_out.data_ptr<scalar_t>();
  const acc_t* gsp = grad_state.data_ptr<acc_t>();
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const scalar_t* bp = delta ? beta.data_ptr<scalar_t>() : nullptr;
  const acc_t* cp = checkpoints.data_ptr<acc_t>();
  scalar_t* dqp = dq.data_ptr<scalar_t>();
  scalar_t* dkp = dk_t.data_ptr<scalar_t>();
  scalar_t* dvp = dv_t.data_ptr<scalar_t>();
  scalar_t* dbp = delta ? dbeta.data_ptr<scalar_t>() : nullptr;
  acc_t* ds0p = ds0.data_ptr<acc_t>();
  const int64_t dk = d.d_k, dv = d.d_v, T = d.T, ss = dk * dv, N = d.n_chunks(), C = d.chunk;
  at::parallel_for(0, d.batch_heads, 1, [&](int64_t begin, int64_t end) {
    Step<scalar_t, acc_t> step{d, delta};
    // states[i] = S before step c0 + i of the current chunk (C + 1 states), and that step's r, u.
    std::vector<acc_t> states((C + 1) * ss), rs(C * dv), us(C * dv);
    std::vector<acc_t> kb(dk), qb(dk), gq(dk), gk(dk), go(dv), du(dv), g(dv);
    for (int64_t bh = begin; bh < end; ++bh) {
      acc_t* dS = ds0p + bh * ss;  // dS accumulates in place, ending as the gradient of S_0
      std::copy(gsp + bh * ss, gsp + (bh + 1) * ss, dS);
      for (int64_t n = N - 1; n >= 0; --n) {
        const int64_t c0 = n * C, len = std::min(C, T - c0);
        // replay the chunk forward from its checkpoint
        std::copy(cp + (bh * N + n) * ss, cp + (bh * N + n + 1) * ss, states.data());
        for (int64_t i = 0; i < len; ++i) {
          const int64_t row = bh * T + c0 + i;
          load(kp + row * dk, dk, kb.data());
          const acc_t b = delta ? static_cast<acc_t>(bp[row]) : acc_t(0);
          step.written(states.data() + i * ss, kb.data(), vp + row * dv, b, rs.data() + i * dv,
                       us.data() + i * dv);
          step.update(states.data() + i * ss, kb.data(), us.data() + i * dv, states.data() + (i + 1) * ss);
        }
        for (int64_t i = len - 1; i >= 0; --i) {
          const int64_t row = bh * T + c0 + i;
          const acc_t* S_t = states.data() + (i + 1) * ss;
          const acc_t* S_prev = states.data() + i * ss;
          const acc_t* u = us.data() + i * dv;
          const acc_t* r = rs.data() + i * dv;
          load(kp + row * dk, dk, kb.data());
          load(qp + row * dk, dk, qb.data());
          load(gop + row * dv, dv, go.data());
          const acc_t b = delta ? static_cast<acc_t>(bp[row]) : acc_t(0);
          // pass 1: dS += q dO^T; dq = S_t dO; du = dS^T k
          std::fill(du.begin(), du.end(), acc_t(0));
          for (int64_t j = 0; j < dk; ++j) {
            const acc_t qj = qb[j], kj = kb[j];
            acc_t* dSj = dS + j * dv;
            const acc_t* Sj = S_t + j * dv;
            acc_t acc_q = 0;
#pragma omp simd reduction(+ : acc_q)
            for (int64_t m = 0; m < dv; ++m) {
              dSj[m] += qj * go[m];
              acc_q += Sj[m] * go[m];
              du[m] += dSj[m] * kj;
            }
            gq[j] = acc_q;
          }
          acc_t db = 0;
          for (int64_t m = 0; m < dv; ++m) {
            dvp[row * dv + m] = static_cast<scalar_t>(value_grad(delta, b, du[m]));
            if (delta) {
              db += du[m] * r[m];
              g[m] = retrieval_grad(b, du[m]);
            }
          }
          // pass 2: dk = dS u (+ S_{t-1} g; then dS += k g^T for the delta rule)
          for (int64_t j = 0; j < dk; ++j) {
            acc_t* dSj = dS + j * dv;
            acc_t acc_k = 0;
            if (delta) {
              const acc_t kj = kb[j];
              const acc_t* Pj = S_prev + j * dv;
#pragma omp simd reduction(+ : acc_k)
              for (int64_t m = 0; m < dv; ++m) {
                acc_k += dSj[m] * u[m] + Pj[m] * g[m];
                dSj[m] += kj * g[m];
              }
            } else {
#pragma omp simd reduction(+ : acc_k)
              for (int64_t m = 0; m < dv; ++m) acc_k += dSj[m] * u[m];
            }
            gk[j] = acc_k;
          }
          for (int64_t j = 0; j < dk; ++j) {
            dqp[row * dk + j] = static_cast<scalar_t>(gq[j]);
            dkp[row * dk + j] = static_cast<scalar_t>(gk[j]);
          }
          if (delta) dbp[row] = static_cast<scalar_t>(db);
        }
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
