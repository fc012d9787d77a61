// The causal fast-weight recurrence (docs/derivations.md Sec. 1, 4 and 6), shared by the CPU (fast_weight_cpu.cpp)
// and CUDA (fast_weight.cu) kernels.
//
// Per (batch, head) the state S is d_k x d_v, key-major, in the accumulation type acc_t (fp32, or
// fp64 for fp64 inputs):
//   sum rule:    u_t = v_t
//   delta rule:  r_t = v_t - S_{t-1}^T k_t,  u_t = beta_t r_t
//   both:        S_t = S_{t-1} + k_t u_t^T,  o_t = S_t^T q_t
// Backward, reverse in time, dS starting at the gradient of the final state:
//   dS += q_t dO_t^T;  dq_t = S_t dO_t;  du_t = dS^T k_t;  dk_t = dS u_t
//   sum rule:   dv_t = du_t
//   delta rule: dv_t = beta_t du_t;  dbeta_t = du_t . r_t;  g_t = -beta_t du_t
//               dk_t += S_{t-1} g_t;  dS += k_t g_t^T
// The forward saves S at every `chunk`-th step (checkpoints [B, H, N, d_k, d_v], N = ceil(T/chunk)),
// and no T x d_k x d_v tensor is ever stored. For S_{t-1} and S_t the CUDA backward replays each
// chunk forward from its checkpoint, in acc_t; the CPU backward starts from the state after the
// chunk and undoes its steps, S_{t-1} = S_t - k_t u_t^T, with the delta rule's r_t saved by the
// forward (docs/derivations.md Sec. 6). A CUDA block takes kCudaWarps value columns, so with d_v
// above that several blocks add their shares of dq, dk and dbeta with atomicAdd, in the order they
// finish: those gradients can differ between runs in the last bits of acc_t (the CPU backward and
// the chunked kernels sum in a fixed order).
//
// The per-element arithmetic lives in the FWP_HD helpers below so that the CPU tests exercise
// the same expressions the GPU runs.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FWP_HD __host__ __device__ __forceinline__
#else
#define FWP_HD inline
#endif

namespace fwp {

// u_t[m]: the value written into column m (sum rule: v; delta rule: beta * r).
template <typename acc_t>
FWP_HD acc_t written_value(bool delta, acc_t beta, acc_t v, acc_t r) {
  return delta ? beta * r : v;
}

// The delta rule's residual r_t[m] = v_t[m] - (S_{t-1}^T k_t)[m], given the retrieved value.
template <typename acc_t>
FWP_HD acc_t delta_residual(acc_t v, acc_t retrieved) {
  return v - retrieved;
}

// dv_t[m] from du_t[m].
template <typename acc_t>
FWP_HD acc_t value_grad(bool delta, acc_t beta, acc_t du) {
  return delta ? beta * du : du;
}

// g_t[m] = -beta_t du_t[m], the gradient through S_{t-1}^T k_t (delta rule only).
template <typename acc_t>
FWP_HD acc_t retrieval_grad(acc_t beta, acc_t du) {
  return -beta * du;
}

// Geometry of the recurrent CUDA kernels (fast_weight.cu), here so that the host code sizing their
// launches, and the CPU tests, use the same numbers.
constexpr int kCudaWarps = 8;  // value columns per block, one warp each

// Shared-memory bytes of the CUDA backward kernel for (d_k, chunk, acc_bytes): per warp column the
// chunk's chunk + 1 replayed states, dS and the two per-column reduction rows; k_t and q_t; r_t and
// u_t per step and column; the per-column dbeta terms. The forward needs less.
inline int64_t cuda_backward_smem_bytes(int64_t d_k, int64_t chunk, int64_t acc_bytes) {
  return (d_k * (kCudaWarps * (chunk + 4) + 2) + kCudaWarps * (2 * chunk + 1)) * acc_bytes;
}

// The longest checkpoint interval in [1, longest] whose backward buffer fits `limit` bytes, or 0
// when not even one step fits.
inline int64_t cuda_longest_chunk(int64_t d_k, int64_t longest, int64_t acc_bytes, int64_t limit) {
  for (int64_t c = longest; c >= 1; --c)
    if (cuda_backward_smem_bytes(d_k, c, acc_bytes) <= limit) return c;
  return 0;
}

// The CUDA kernels' checkpoint interval for sequences of T steps, at most 64 (and at most T):
// the longest chunk whose replay buffer takes at most a quarter of the device's shared-memory
// `limit`, so that four blocks can share a multiprocessor and hide each other's latency, as long as
// that still gives 16 steps; else the longest chunk that fits the whole limit. Checkpoints cost
// d_k d_v / chunk state values per step: the quarter alone gave 9 steps at d = 128 and 2 at d = 256
// on H100/H200 (128 KiB per head-token), the whole limit gives 51 and 23 there.
inline int64_t cuda_chunk_for(int64_t d_k, int64_t T, int64_t acc_bytes, int64_t limit) {
  const int64_t longest = T < 64 ? T : 64;
  const int64_t shared = cuda_longest_chunk(d_k, longest, acc_bytes, limit / 4);
  if (shared >= 16 || shared == longest) return shared;
  return cuda_longest_chunk(d_k, longest, acc_bytes, limit);
}

// Sizes of one call.
struct Dims {
  int64_t batch_heads;  // B * H
  int64_t T;
  int64_t d_k;
  int64_t d_v;
  int64_t chunk;  // checkpoint interval
  int64_t n_chunks() const { return (T + chunk - 1) / chunk; }
};

}  // namespace fwp
