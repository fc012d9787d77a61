// C ABI of the CUDA launchers in fast_weight.cu (compiled by nvcc, no ATen there).
// dtype codes: 0 = fp32, 1 = fp64, 2 = fp16, 3 = bf16. Accumulation (states, checkpoints,
// gradient buffers) is fp64 for fp64 inputs and fp32 otherwise. Every launcher returns a
// cudaError_t code (0 = success).
#pragma once

#include <cstdint>

extern "C" {

// The device's opt-in shared-memory limit per block, in bytes (or a negative cudaError_t); read
// once per device.
int64_t fwp_cuda_smem_limit(int device);

// 1 when the kernels can run on `device` (SASS or PTX for its architecture is in the build); asked
// of the driver once per device.
int fwp_cuda_kernels_loadable(int device);

// q, k [BH, T, d_k], v [BH, T, d_v], beta [BH, T] or NULL (sum rule), s0 [BH, d_k, d_v] (acc):
// writes out [BH, T, d_v], state [BH, d_k, d_v] (acc) and checkpoints [BH, N, d_k, d_v] (acc).
int fwp_cuda_forward(int dtype, const void* q, const void* k, const void* v, const void* beta,
                     const void* s0, void* out, void* state, void* checkpoints, int64_t BH, int64_t T,
                     int64_t d_k, int64_t d_v, int64_t chunk, void* stream);

// grad_out [BH, T, d_v], grad_state [BH, d_k, d_v] (acc), checkpoints from the forward:
// accumulates dq, dk [BH, T, d_k] and dbeta [BH, T] into zeroed acc buffers, writes dv
// [BH, T, d_v] (input dtype) and ds0 [BH, d_k, d_v] (acc).
int fwp_cuda_backward(int dtype, const void* grad_out, const void* grad_state, const void* q,
                      const void* k, const void* v, const void* beta, const void* checkpoints,
                      void* dq_acc, void* dk_acc, void* dv, void* dbeta_acc, void* ds0, int64_t BH,
                      int64_t T, int64_t d_k, int64_t d_v, int64_t chunk, void* stream);

const char* fwp_cuda_error_string(int code);
}
