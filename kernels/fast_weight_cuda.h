// Host side of the CUDA fused fast-weight kernels (fast_weight_cuda.cpp; the kernels are in
// fast_weight.cu). Same tensor layout as fast_weight_cpu.h. Without CUDA compiled in, these raise
// a clear error (cuda_max_dk returns 0).
#pragma once

#include <ATen/ATen.h>

#include "fast_weight.h"

namespace fwp {

// Checkpoint interval for inputs on q's device: as long as the backward's shared-memory replay
// buffer allows, at most 64. Errors if even one step does not fit.
int64_t cuda_chunk(const at::Tensor& q, int64_t d_k, int64_t d_v, int64_t acc_bytes);

// The largest d_k the kernels take on `device` (0 without CUDA or without that device).
int64_t cuda_max_dk(int device, int64_t d_v, int acc_bytes);

void forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                  const Dims& d, bool delta);

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                   const at::Tensor& checkpoints, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                   at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta);

}  // namespace fwp
