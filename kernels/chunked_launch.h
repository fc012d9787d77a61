// C ABI of the CUDA launchers of the chunked stages (chunked.cu, compiled by nvcc, no ATen there).
// All buffers fp32, contiguous, in the chunked layout of chunked.h: [BH, N, C, d] per-step matrices,
// [BH, N, C] beta, [BH, N, C, C] per-chunk C x C matrices, [BH, N, d_k, d_v] per-chunk states,
// [BH, d_k, d_v] single states. Pointers that the sum rule has no use for (beta, tinv, w) are NULL
// there. `parts` is the least number of bf16 parts of every product operand: 1 for Operands::Bf16
// (states still take two), 2 for Bf16x2, 3 for Bf16x3 (chunked.h); others are refused. Every launcher returns a cudaError_t
// code (0 = success) and runs on `stream`.
#pragma once

#include <cstdint>

extern "C" {

// The chunk length C of the kernels.
int64_t fwp_chunked_cuda_chunk();

// The most chunks per sequence a launch takes (chunks are the grid's second dimension).
int64_t fwp_chunked_cuda_max_chunks();

// Waits for `stream` and returns the first error of the work on it (cudaError_t; 0 = success).
int fwp_chunked_cuda_sync(void* stream);

// fp32 values of scratch per chunk that fwp_chunked_cuda_input_grads needs.
int64_t fwp_chunked_cuda_scratch_per_chunk(int64_t dk, int64_t dv);

// F1: tinv [BH,N,C,C], w [BH,N,C,d_k], u [BH,N,C,d_v]; a_scratch [BH,N,C,C].
int fwp_chunked_cuda_wy(const float* k, const float* v, const float* beta, float* tinv, float* w, float* u,
                        float* a_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream);

// F2: ckpt [BH,N,d_k,d_v], v_new (unused for the sum rule: U' = U), state [BH,d_k,d_v].
int fwp_chunked_cuda_state_forward(const float* k, const float* w, const float* u, const float* s0, float* ckpt,
                                   float* v_new, float* state, int64_t BH, int64_t N, int64_t dk, int64_t dv,
                                   int parts, void* stream);

// U' = U - W S_c for all chunks.
int fwp_chunked_cuda_values(const float* w, const float* u, const float* ckpt, float* v_new, int64_t BH, int64_t N,
                            int64_t dk, int64_t dv, int parts, void* stream);

// F3: out [BH,N,C,d_v]; qk_scratch [BH,N,C,C].
int fwp_chunked_cuda_output(const float* q, const float* k, const float* v_new, const float* ckpt, float* out,
                            float* qk_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream);

// B1: dv_local [BH,N,C,d_v]; qk_scratch [BH,N,C,C].
int fwp_chunked_cuda_local_grad(const float* q, const float* k, const float* grad_out, float* dv_local,
                                float* qk_scratch, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream);

// B2: dv_new [BH,N,C,d_v], ds_next [BH,N,d_k,d_v], ds0 [BH,d_k,d_v].
int fwp_chunked_cuda_state_backward(const float* q, const float* k, const float* w, const float* grad_out,
                                    const float* dv_local, const float* ds_final, float* dv_new, float* ds_next,
                                    float* ds0, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream);

// B3: dq, dk_out [BH,N,C,d_k]; delta rule only: dv_out [BH,N,C,d_v], dbeta [BH,N,C];
// scratch [BH, N, fwp_chunked_cuda_scratch_per_chunk(d_k, d_v)].
int fwp_chunked_cuda_input_grads(const float* q, const float* k, const float* v, const float* beta,
                                 const float* tinv, const float* w, const float* v_new, const float* ckpt,
                                 const float* ds_next, const float* grad_out, const float* dv_new, float* dq,
                                 float* dk_out, float* dv_out, float* dbeta, float* scratch, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream);
}

// The fast kernels (chunked_passes.cuh). Their inputs in the caller's dtype (q, k, v, beta, dO, and
// the sum rule's U' = V) are FwpIn: fp32, or bf16 when `bf16` is nonzero, read as they are. Their
// results that are also the op's (O, dQ, dK, dV, dbeta; the sum rule's dV = dU') are FwpOut, written
// as fp32 or bf16. So are the intermediates that are only ever product operands (W, U', T~, dU', the
// scratch dW), which may be bf16 where every operand is one bf16 part (parts = 1): the value each
// consumer rounds them to anyway. Every other buffer is fp32 as above.
extern "C" {
struct FwpIn {
  const void* p;
  int bf16;
};

struct FwpOut {
  void* p;
  int bf16;
};

// The fast sequential passes: the state tile in registers, each chunk's inputs copied into shared
// memory (cp.async for fp32), `stages` (1 or 2) chunks deep at most (one where the grid then runs in
// fewer waves: fwp_chunked_cuda_pass_stages_for_grid). Same buffers and results as
// fwp_chunked_cuda_state_forward / _state_backward; d_k <= 256. Forward: u is W's partner U (fp32)
// for the delta rule, V for the sum rule.

// `bf16`: which of the pass's chunk inputs are bf16 (their tiles stay bf16 in shared memory, half the
// size), a mask of these bits:
enum FwpPassBf16 { FWP_PASS_K_BF16 = 1, FWP_PASS_W_BF16 = 2, FWP_PASS_UQ_BF16 = 4 /* u (forward), q (backward) */,
                   FWP_PASS_DO_BF16 = 8 };

// Bytes of dynamic shared memory a pass takes (-1 for d_k > 256).
int64_t fwp_chunked_cuda_pass_bytes(int64_t dk, int backward, int delta, int bf16, int stages);

// The stages (2 or 1) a pass gets within `limit` bytes of shared memory per block: the most whose
// fwp_chunked_cuda_pass_bytes fit; 0 when even one does not (then the first-version kernel runs); -1
// for d_k > 256. The one rule both the launcher and `fwp info` (ops::chunked_pass_stages) follow.
int fwp_chunked_cuda_pass_stages_within(int64_t dk, int backward, int delta, int bf16, int64_t limit);

// The stages a pass runs with on a device of `sms` multiprocessors, given the most that fit (`most`),
// its grid's `blocks`, and how many of them an SM holds at once with one stage and with two: one
// where that takes fewer waves of blocks, else `most`. The launcher's rule, with the numbers it asks
// the device for (cudaOccupancyMaxActiveBlocksPerMultiprocessor; once per device, kernel and size).
int fwp_chunked_cuda_pass_stages_for_grid(int most, int64_t blocks, int64_t sms, int64_t per_sm_one,
                                          int64_t per_sm_two);

// The stages a pass gets within the current device's limit; 0 when even one does not fit, the limit
// cannot be read, or d_k > 256 (then the first-version kernels run).
int fwp_chunked_cuda_pass_stages(int64_t dk, int backward, int delta, int bf16);

int fwp_chunked_cuda_state_forward_pass(FwpIn k, FwpIn w, FwpIn u, const float* s0, float* ckpt, FwpOut v_new,
                                        float* state, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts,
                                        int stages, void* stream);

int fwp_chunked_cuda_state_backward_pass(FwpIn q, FwpIn k, FwpIn w, FwpIn grad_out, const float* dv_local,
                                         const float* ds_final, FwpOut dv_new, float* ds_next, float* ds0, int64_t BH,
                                         int64_t N, int64_t dk, int64_t dv, int parts, int stages, void* stream);

// The per-chunk stages, fast version (warp-local mma.sync): same buffers and results as
// fwp_chunked_cuda_values / _output / _local_grad / _wy / _input_grads, without their scratch (B3
// takes dw_scratch [BH, N, C, d_k] for the delta rule, null for the sum rule; WY writes no T~ when
// tinv is null); any d_k and d_v. v_new is U' for the delta rule, V for the sum rule.
int fwp_chunked_cuda_values_rows(FwpIn w, const float* u, const float* ckpt, FwpOut v_new, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream);
int fwp_chunked_cuda_output_rows(FwpIn q, FwpIn k, FwpIn v_new, const float* ckpt, FwpOut out, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream);
int fwp_chunked_cuda_local_grad_rows(FwpIn q, FwpIn k, FwpIn grad_out, float* dv_local, int64_t BH, int64_t N,
                                     int64_t dk, int64_t dv, int parts, void* stream);
int fwp_chunked_cuda_wy_rows(FwpIn k, FwpIn v, FwpIn beta, FwpOut tinv, FwpOut w, float* u, int64_t BH, int64_t N,
                             int64_t dk, int64_t dv, int parts, void* stream);
int fwp_chunked_cuda_input_grads_rows(FwpIn q, FwpIn k, FwpIn v, FwpIn beta, FwpIn tinv, FwpIn v_new,
                                      const float* ckpt, const float* ds_next, FwpIn grad_out, FwpIn dv_new,
                                      FwpOut dq, FwpOut dk_out, FwpOut dv_out, FwpOut dbeta, FwpOut dw_scratch,
                                      int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream);
}
