// CPU kernels of the fused fast-weight recurrence (fast_weight_cpu.cpp). All tensors contiguous:
// q, k [BH, T, d_k], v [BH, T, d_v], beta [BH, T] (undefined for the sum rule) in the input dtype;
// states and checkpoints in the accumulation dtype (fp32, or fp64 for fp64 inputs).
#pragma once

#include <ATen/ATen.h>

#include "fast_weight.h"

// Declared once per instruction-set variant: `generic` (baseline x86-64 or the host's default)
// and, on x86-64, `avx2` (the same source compiled with -mavx2 -mfma) and `avx512` (with
// -mavx512f as well); fast_weight_op.cpp chooses one at run time.
#define FWP_DECLARE_CPU_KERNELS(ns)                                                                         \
  namespace ns {                                                                                            \
  void forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,  \
                   const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,      \
                   at::Tensor& residuals, const Dims& d, bool delta);                                       \
  void backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,          \
                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,                       \
                    const at::Tensor& checkpoints, const at::Tensor& final_state,                           \
                    const at::Tensor& residuals, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,            \
                    at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta);                         \
  }

namespace fwp {
// forward_cpu fills out [BH, T, d_v], state [BH, d_k, d_v], checkpoints [BH, N, d_k, d_v] (the
// state before each chunk) and, for the delta rule, residuals [BH, T, d_v] (e_t = v_t - S_{t-1}^T
// k_t; untouched for the sum rule) from s0 [BH, d_k, d_v]; empty checkpoints and residuals
// (inference) are not written. backward_cpu fills dq, dk [BH, T, d_k],
// dv [BH, T, d_v], dbeta [BH, T] (delta rule) and ds0 [BH, d_k, d_v] from grad_out [BH, T, d_v],
// grad_state [BH, d_k, d_v] (acc dtype) and what the forward saved: the checkpoints, the final
// state and the residuals.
FWP_DECLARE_CPU_KERNELS(generic)
#if defined(__x86_64__)
FWP_DECLARE_CPU_KERNELS(avx2)
FWP_DECLARE_CPU_KERNELS(avx512)
#else
// build.rs compiles only the baseline elsewhere, and pick_cpu_isa never picks the others there
namespace avx2 = generic;
namespace avx512 = generic;
#endif
}  // namespace fwp
