// CUDA kernels of the chunked fast-weight stages (chunked.h; docs/derivations.md Sec. 9), one kernel
// per stage with the CPU twin's inputs and outputs (chunked_cpu.cpp), so that each stage can be run
// and compared on its own.
//
// First version, written for correctness on first contact with a GPU: every stage is a sequence of
// block-level matrix products on fp32 tiles in global memory (the chunk's L2-resident working set),
// each product on the tensor cores (WMMA bf16 16x16x16, fp32 accumulation) with the twin's operand
// rounding (chunked.h, Operands): for bf16 inputs operands rounded to bf16 and the states S and dS
// split into bf16 hi + lo; for fp16 inputs every operand split into two bf16 parts, for fp32 three.
// The triangular solve runs in fp32 on CUDA cores in shared memory. Bounds are checked per element,
// so any d_k and d_v work. Grids: (batch·head, chunk) for the parallel stages; (batch·head, tile of
// 64 value columns) for the two sequential passes over chunks. The kernels are in chunked_first.cuh,
// which chunked_first_emulator.cpp also compiles for the CPU (tests); this file holds the launchers.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "chunked_launch.h"
#include "cuda_launch.cuh"

namespace {

using namespace nvcuda;

#include "chunked_first.cuh"

Sizes sizes(int64_t N, int64_t dk, int64_t dv, int parts) { return Sizes{N, int(dk), int(dv), parts}; }

dim3 chunk_grid(int64_t BH, int64_t N) { return dim3(unsigned(BH), unsigned(N)); }

dim3 column_grid(int64_t BH, int64_t dv) { return dim3(unsigned(BH), unsigned((dv + kColumns - 1) / kColumns)); }

// Launches nothing for an empty range (an empty grid is an invalid launch; the host side returns
// before launching) and refuses a part count the staging cannot hold and a grid CUDA cannot launch.
bool empty(int64_t BH, int64_t N) { return BH == 0 || N == 0; }
bool bad_parts(int parts) { return parts < 1 || parts > kMaxParts; }
bool bad_grid(int64_t BH, int64_t N) { return BH > fwp_cuda::kMaxGridX || N > 65535; }

// Checks, then launches: 0 (nothing to do, or launched) or the CUDA error.
template <typename Launch>
int checked(int64_t BH, int64_t N, int parts, Launch launch) {
  if (bad_parts(parts)) return int(cudaErrorInvalidValue);
  if (empty(BH, N)) return 0;
  if (bad_grid(BH, N)) return int(cudaErrorInvalidConfiguration);
  return int(fwp_cuda::launch_checked(launch));
}

}  // namespace

extern "C" {

int64_t fwp_chunked_cuda_chunk() { return kC; }

int64_t fwp_chunked_cuda_max_chunks() { return 65535; }  // gridDim.y

int fwp_chunked_cuda_sync(void* stream) { return int(cudaStreamSynchronize(cudaStream_t(stream))); }

int64_t fwp_chunked_cuda_scratch_per_chunk(int64_t dk, int64_t dv) { return grads_scratch_floats(dk, dv); }

int fwp_chunked_cuda_wy(const float* k, const float* v, const float* beta, float* tinv, float* w, float* u,
                        float* a_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    wy_kernel<<<chunk_grid(BH, N), kThreads, 0, cudaStream_t(stream)>>>(k, v, beta, tinv, w, u, a_scratch,
                                                                        sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_state_forward(const float* k, const float* w, const float* u, const float* s0, float* ckpt,
                                   float* v_new, float* state, int64_t BH, int64_t N, int64_t dk, int64_t dv,
                                   int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    state_forward_kernel<<<column_grid(BH, dv), kThreads, 0, cudaStream_t(stream)>>>(k, w, u, s0, ckpt, v_new, state,
                                                                                     sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_values(const float* w, const float* u, const float* ckpt, float* v_new, int64_t BH, int64_t N,
                            int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    values_kernel<<<chunk_grid(BH, N), kThreads, 0, cudaStream_t(stream)>>>(w, u, ckpt, v_new, sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_output(const float* q, const float* k, const float* v_new, const float* ckpt, float* out,
                            float* qk_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    output_kernel<<<chunk_grid(BH, N), kThreads, 0, cudaStream_t(stream)>>>(q, k, v_new, ckpt, out, qk_scratch,
                                                                            sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_local_grad(const float* q, const float* k, const float* grad_out, float* dv_local,
                                float* qk_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    local_grad_kernel<<<chunk_grid(BH, N), kThreads, 0, cudaStream_t(stream)>>>(q, k, grad_out, dv_local, qk_scratch,
                                                                                sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_state_backward(const float* q, const float* k, const float* w, const float* grad_out,
                                    const float* dv_local, const float* ds_final, float* dv_new, float* ds_next,
                                    float* ds0, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    state_backward_kernel<<<column_grid(BH, dv), kThreads, 0, cudaStream_t(stream)>>>(
        q, k, w, grad_out, dv_local, ds_final, dv_new, ds_next, ds0, sizes(N, dk, dv, parts));
  });
}

int fwp_chunked_cuda_input_grads(const float* q, const float* k, const float* v, const float* beta,
                                 const float* tinv, const float* w, const float* v_new, const float* ckpt,
                                 const float* ds_next, const float* grad_out, const float* dv_new, float* dq,
                                 float* dk_out, float* dv_out, float* dbeta, float* scratch, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream) {
  return checked(BH, N, parts, [&] {
    input_grads_kernel<<<chunk_grid(BH, N), kThreads, 0, cudaStream_t(stream)>>>(
        q, k, v, beta, tinv, w, v_new, ckpt, ds_next, grad_out, dv_new, dq, dk_out, dv_out, dbeta, scratch,
        fwp_chunked_cuda_scratch_per_chunk(dk, dv), sizes(N, dk, dv, parts));
  });
}

}  // extern "C"
