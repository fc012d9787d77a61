// CUDA kernels of the fused fast-weight recurrence (algorithm in fast_weight.h).
//
// Mapping (docs/derivations.md Sec. 6: the columns of S are independent): one block per (batch*head,
// tile of kWarps value columns), one warp per column; lane l owns rows j = l, l + 32, ... of its
// column, so the reductions over d_k are warp shuffles and need no block-wide synchronisation.
// Keys and queries of the current step are staged in shared memory for the block's warps.
// The state column lives in shared memory (any d_k); the backward replays each chunk of `chunk`
// steps from its checkpoint into a shared-memory buffer of chunk + 1 states, so it has S_{t-1} and
// S_t exactly (nothing is un-done by subtraction). dq, dk and dbeta sum over all columns: per-block
// partial sums go through shared memory, then atomically into fp32/fp64 buffers.
// The chunk length is sized on the host from the device's shared-memory limit (fast_weight_cuda.cpp).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "fast_weight.h"
#include "fast_weight_launch.h"

namespace {

constexpr int kWarps = fwp::kCudaWarps;  // value columns per block
constexpr int kThreads = kWarps * 32;
constexpr int kMaxDevices = 64;  // per-device caches below; more devices are asked every time

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ __forceinline__ void store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store(double* p, int64_t i, double x) { p[i] = x; }
__device__ __forceinline__ void store(__half* p, int64_t i, float x) { p[i] = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float x) { p[i] = __float2bfloat16_rn(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                   const scalar_t* __restrict__ v, const scalar_t* __restrict__ beta,
                   const acc_t* __restrict__ s0, scalar_t* __restrict__ out, acc_t* __restrict__ state,
                   acc_t* __restrict__ ckpt, int64_t T, int64_t dk, int64_t dv, int64_t chunk) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* S = reinterpret_cast<acc_t*>(smem_raw);  // [kWarps][dk]: this block's state columns
  acc_t* kb = S + kWarps * dk;                     // [dk]: k_t
  acc_t* qb = kb + dk;                             // [dk]: q_t
  const bool delta = beta != nullptr;
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col = int64_t(blockIdx.y) * kWarps + warp;
  const bool active = col < dv;  // uniform over the warp
  const int64_t ss = dk * dv, N = (T + chunk - 1) / chunk;
  acc_t* Sc = S + warp * dk;
  if (active)
    for (int64_t j = lane; j < dk; j += 32) Sc[j] = s0[bh * ss + j * dv + col];
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = bh * T + t;
    __syncthreads();  // the previous step is done with kb, qb
    for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
      kb[j] = load(k, row * dk + j);
      qb[j] = load(q, row * dk + j);
    }
    __syncthreads();
    if (!active) continue;
    if (t % chunk == 0)
      for (int64_t j = lane; j < dk; j += 32) ckpt[((bh * N + t / chunk) * dk + j) * dv + col] = Sc[j];
    const acc_t vm = load(v, row * dv + col);
    acc_t u;
    if (delta) {
      acc_t part = 0;
      for (int64_t j = lane; j < dk; j += 32) part += Sc[j] * kb[j];
      const acc_t r = fwp::delta_residual(vm, warp_sum(part));
      u = fwp::written_value(true, static_cast<acc_t>(load(beta, row)), acc_t(0), r);
    } else {
      u = fwp::written_value(false, acc_t(0), vm, acc_t(0));
    }
    acc_t part = 0;
    for (int64_t j = lane; j < dk; j += 32) {
      const acc_t s = Sc[j] + kb[j] * u;
      Sc[j] = s;
      part += s * qb[j];
    }
    const acc_t o = warp_sum(part);
    if (lane == 0) store(out, row * dv + col, o);
  }
  if (active)
    for (int64_t j = lane; j < dk; j += 32) state[bh * ss + j * dv + col] = Sc[j];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const acc_t* __restrict__ grad_state,
                    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                    const scalar_t* __restrict__ v, const scalar_t* __restrict__ beta,
                    const acc_t* __restrict__ ckpt, acc_t* __restrict__ dq_acc,
                    acc_t* __restrict__ dk_acc, scalar_t* __restrict__ dv_out,
                    acc_t* __restrict__ dbeta_acc, acc_t* __restrict__ ds0, int64_t T, int64_t dk,
                    int64_t dv, int64_t chunk) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* states = reinterpret_cast<acc_t*>(smem_raw);  // [chunk + 1][kWarps][dk]
  acc_t* dS = states + (chunk + 1) * kWarps * dk;      // [kWarps][dk]
  acc_t* red_q = dS + kWarps * dk;                     // [kWarps][dk]: per-column terms of dq_t
  acc_t* red_k = red_q + kWarps * dk;                  // [kWarps][dk]: per-column terms of dk_t
  acc_t* kb = red_k + kWarps * dk;                     // [dk]
  acc_t* qb = kb + dk;                                 // [dk]
  acc_t* rs = qb + dk;                                 // [chunk][kWarps]: r_t per column
  acc_t* us = rs + chunk * kWarps;                     // [chunk][kWarps]: u_t per column
  acc_t* red_b = us + chunk * kWarps;                  // [kWarps]: per-column terms of dbeta_t
  const bool delta = beta != nullptr;
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col = int64_t(blockIdx.y) * kWarps + warp;
  const bool active = col < dv;
  const int64_t ss = dk * dv, N = (T + chunk - 1) / chunk;
  acc_t* dSc = dS + warp * dk;
  if (active)
    for (int64_t j = lane; j < dk; j += 32) dSc[j] = grad_state[bh * ss + j * dv + col];

  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t c0 = n * chunk;
    const int64_t len = (T - c0) < chunk ? (T - c0) : chunk;
    // replay the chunk forward from its checkpoint: states[i] = S before step c0 + i
    if (active)
      for (int64_t j = lane; j < dk; j += 32)
        states[warp * dk + j] = ckpt[((bh * N + n) * dk + j) * dv + col];
    for (int64_t i = 0; i < len; ++i) {
      const int64_t row = bh * T + c0 + i;
      __syncthreads();
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) kb[j] = load(k, row * dk + j);
      __syncthreads();
      if (!active) continue;
      const acc_t* Sp = states + (i * kWarps + warp) * dk;
      acc_t* Sn = states + ((i + 1) * kWarps + warp) * dk;
      const acc_t vm = load(v, row * dv + col);
      acc_t u, r = 0;
      if (delta) {
        acc_t part = 0;
        for (int64_t j = lane; j < dk; j += 32) part += Sp[j] * kb[j];
        r = fwp::delta_residual(vm, warp_sum(part));
        u = fwp::written_value(true, static_cast<acc_t>(load(beta, row)), acc_t(0), r);
      } else {
        u = fwp::written_value(false, acc_t(0), vm, acc_t(0));
      }
      for (int64_t j = lane; j < dk; j += 32) Sn[j] = Sp[j] + kb[j] * u;
      if (lane == 0) {
        rs[i * kWarps + warp] = r;
        us[i * kWarps + warp] = u;
      }
    }
    // then walk the chunk backwards
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t row = bh * T + c0 + i;
      __syncthreads();  // red_* of the previous step are consumed; rs, us are visible
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
        kb[j] = load(k, row * dk + j);
        qb[j] = load(q, row * dk + j);
      }
      __syncthreads();
      acc_t* rq = red_q + warp * dk;
      acc_t* rk = red_k + warp * dk;
      if (active) {
        const acc_t* St = states + ((i + 1) * kWarps + warp) * dk;
        const acc_t* Sp = states + (i * kWarps + warp) * dk;
        const acc_t u = us[i * kWarps + warp], r = rs[i * kWarps + warp];
        const acc_t go = load(grad_out, row * dv + col);
        // dS += q dO^T; dq = S_t dO; du = dS^T k
        acc_t part = 0;
        for (int64_t j = lane; j < dk; j += 32) {
          const acc_t d = dSc[j] + qb[j] * go;
          dSc[j] = d;
          rq[j] = St[j] * go;
          part += d * kb[j];
        }
        const acc_t du = warp_sum(part);
        const acc_t b = delta ? static_cast<acc_t>(load(beta, row)) : acc_t(0);
        if (lane == 0) store(dv_out, row * dv + col, fwp::value_grad(delta, b, du));
        // dk = dS u (+ S_{t-1} g, then dS += k g^T, for the delta rule)
        if (delta) {
          const acc_t g = fwp::retrieval_grad(b, du);
          for (int64_t j = lane; j < dk; j += 32) {
            const acc_t d = dSc[j];
            rk[j] = d * u + Sp[j] * g;
            dSc[j] = d + kb[j] * g;
          }
        } else {
          for (int64_t j = lane; j < dk; j += 32) rk[j] = dSc[j] * u;
        }
        if (lane == 0) red_b[warp] = delta ? du * r : acc_t(0);
      } else {
        for (int64_t j = lane; j < dk; j += 32) rq[j] = rk[j] = 0;
        if (lane == 0) red_b[warp] = 0;
      }
      __syncthreads();
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
        acc_t sq = 0, sk = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          sq += red_q[w * dk + j];
          sk += red_k[w * dk + j];
        }
        atomicAdd(dq_acc + row * dk + j, sq);
        atomicAdd(dk_acc + row * dk + j, sk);
      }
      if (delta && threadIdx.x == 0) {
        acc_t sb = 0;
        for (int w = 0; w < kWarps; ++w) sb += red_b[w];
        atomicAdd(dbeta_acc + row, sb);
      }
    }
  }
  if (active)
    for (int64_t j = lane; j < dk; j += 32) ds0[bh * ss + j * dv + col] = dSc[j];
}

int64_t forward_smem_bytes(int64_t dk, int64_t acc_bytes) { return (kWarps + 2) * dk * acc_bytes; }

int64_t tiles(int64_t dv) { return (dv + kWarps - 1) / kWarps; }

// Lets `kernel` use the current device's whole opt-in shared memory, once per device (the
// attribute is per device; `done` is one set of flags per kernel instantiation).
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, std::atomic<bool>* done) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // returned to the caller, not left pending for another library
    return e;
  }
  if (device < kMaxDevices && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  const int64_t limit = fwp_cuda_smem_limit(device);
  if (limit <= 0) return static_cast<cudaError_t>(-limit);
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return e;
  }
  if (device < kMaxDevices) done[device].store(true, std::memory_order_release);
  return e;
}

// Launches, reporting only this launch's error: an error left pending by another library's earlier
// call is cleared first (cudaGetLastError resets it), so that it is not blamed on this kernel.
template <typename Launch>
cudaError_t launch_checked(Launch launch) {
  (void)cudaGetLastError();
  launch();
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
int launch_forward(const void* q, const void* k, const void* v, const void* beta, const void* s0,
                   void* out, void* state, void* ckpt, int64_t BH, int64_t T, int64_t dk, int64_t dv,
                   int64_t chunk, cudaStream_t stream) {
  static std::atomic<bool> allowed[kMaxDevices];
  const int64_t smem = forward_smem_bytes(dk, sizeof(acc_t));
  auto kernel = forward_kernel<scalar_t, acc_t>;
  cudaError_t e = allow_shared_memory(kernel, allowed);
  if (e != cudaSuccess) return e;
  return launch_checked([&] {
    kernel<<<dim3(unsigned(BH), unsigned(tiles(dv))), kThreads, size_t(smem), stream>>>(
        static_cast<const scalar_t*>(q), static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v),
        static_cast<const scalar_t*>(beta), static_cast<const acc_t*>(s0), static_cast<scalar_t*>(out),
        static_cast<acc_t*>(state), static_cast<acc_t*>(ckpt), T, dk, dv, chunk);
  });
}

template <typename scalar_t, typename acc_t>
int launch_backward(const void* go, const void* gs, const void* q, const void* k, const void* v,
                    const void* beta, const void* ckpt, void* dq, void* dkk, void* dvv, void* db,
                    void* ds0, int64_t BH, int64_t T, int64_t dk, int64_t dv, int64_t chunk,
                    cudaStream_t stream) {
  static std::atomic<bool> allowed[kMaxDevices];
  const int64_t smem = fwp::cuda_backward_smem_bytes(dk, chunk, sizeof(acc_t));
  auto kernel = backward_kernel<scalar_t, acc_t>;
  cudaError_t e = allow_shared_memory(kernel, allowed);
  if (e != cudaSuccess) return e;
  return launch_checked([&] {
    kernel<<<dim3(unsigned(BH), unsigned(tiles(dv))), kThreads, size_t(smem), stream>>>(
        static_cast<const scalar_t*>(go), static_cast<const acc_t*>(gs), static_cast<const scalar_t*>(q),
        static_cast<const scalar_t*>(k), static_cast<const scalar_t*>(v), static_cast<const scalar_t*>(beta),
        static_cast<const acc_t*>(ckpt), static_cast<acc_t*>(dq), static_cast<acc_t*>(dkk),
        static_cast<scalar_t*>(dvv), static_cast<acc_t*>(db), static_cast<acc_t*>(ds0), T, dk, dv, chunk);
  });
}

bool launchable(int64_t BH, int64_t dv) { return BH <= 0x7fffffffLL && tiles(dv) <= 65535; }

}  // namespace

extern "C" {

int64_t fwp_cuda_smem_limit(int device) {
  static std::atomic<int64_t> cache[kMaxDevices];  // 0: not read yet
  if (device >= 0 && device < kMaxDevices) {
    const int64_t known = cache[device].load(std::memory_order_acquire);
    if (known > 0) return known;
  }
  int bytes = 0;
  cudaError_t e = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave it pending for the next launch to report
    return -int64_t(e);
  }
  if (device >= 0 && device < kMaxDevices) cache[device].store(bytes, std::memory_order_release);
  return int64_t(bytes);
}

int fwp_cuda_kernels_loadable(int device) {
  // The kernels exist for this GPU when the build holds SASS for it or PTX it can compile
  // (sm_80, sm_90, compute_90); older GPUs have no image. Asked once per device.
  static std::atomic<int> cache[kMaxDevices];  // 0: not asked, 1: no, 2: yes
  if (device >= 0 && device < kMaxDevices) {
    const int known = cache[device].load(std::memory_order_acquire);
    if (known != 0) return known == 2 ? 1 : 0;
  }
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, forward_kernel<float, float>);
  cudaSetDevice(current);
  if (e != cudaSuccess) (void)cudaGetLastError();  // reset, so that later calls do not report it
  if (device >= 0 && device < kMaxDevices) cache[device].store(e == cudaSuccess ? 2 : 1, std::memory_order_release);
  return e == cudaSuccess ? 1 : 0;
}

int fwp_cuda_forward(int dtype, const void* q, const void* k, const void* v, const void* beta,
                     const void* s0, void* out, void* state, void* ckpt, int64_t BH, int64_t T,
                     int64_t dk, int64_t dv, int64_t chunk, void* stream) {
  if (BH == 0) return cudaSuccess;  // nothing to do (an empty grid is an invalid launch)
  if (!launchable(BH, dv)) return cudaErrorInvalidConfiguration;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return launch_forward<float, float>(q, k, v, beta, s0, out, state, ckpt, BH, T, dk, dv, chunk, s);
    case 1: return launch_forward<double, double>(q, k, v, beta, s0, out, state, ckpt, BH, T, dk, dv, chunk, s);
    case 2: return launch_forward<__half, float>(q, k, v, beta, s0, out, state, ckpt, BH, T, dk, dv, chunk, s);
    case 3: return launch_forward<__nv_bfloat16, float>(q, k, v, beta, s0, out, state, ckpt, BH, T, dk, dv, chunk, s);
    default: return cudaErrorInvalidValue;
  }
}

int fwp_cuda_backward(int dtype, const void* go, const void* gs, const void* q, const void* k,
                      const void* v, const void* beta, const void* ckpt, void* dq, void* dk_acc,
                      void* dv_out, void* db, void* ds0, int64_t BH, int64_t T, int64_t dk, int64_t dv,
                      int64_t chunk, void* stream) {
  if (BH == 0) return cudaSuccess;
  if (!launchable(BH, dv)) return cudaErrorInvalidConfiguration;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return launch_backward<float, float>(go, gs, q, k, v, beta, ckpt, dq, dk_acc, dv_out, db, ds0, BH, T, dk, dv, chunk, s);
    case 1: return launch_backward<double, double>(go, gs, q, k, v, beta, ckpt, dq, dk_acc, dv_out, db, ds0, BH, T, dk, dv, chunk, s);
    case 2: return launch_backward<__half, float>(go, gs, q, k, v, beta, ckpt, dq, dk_acc, dv_out, db, ds0, BH, T, dk, dv, chunk, s);
    case 3: return launch_backward<__nv_bfloat16, float>(go, gs, q, k, v, beta, ckpt, dq, dk_acc, dv_out, db, ds0, BH, T, dk, dv, chunk, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // extern "C"
