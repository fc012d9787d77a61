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
// The kernels are in fast_weight_kernels.cuh, which fast_weight_emulator.cpp also compiles for the
// CPU (tests); this file holds the launchers and the per-device caches.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "fast_weight.h"
#include "fast_weight_launch.h"
#include "cuda_launch.cuh"

// What fast_weight_kernels.cuh asks of its includer.
#define FWP_UNROLL _Pragma("unroll")
#define FWP_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]

namespace {

using fwp_cuda::kMaxDevices;

#include "fast_weight_kernels.cuh"

int64_t tiles(int64_t dv) { return (dv + kWarps - 1) / kWarps; }

using fwp_cuda::allow_shared_memory;
using fwp_cuda::launch_checked;

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

bool launchable(int64_t BH, int64_t dv) { return BH <= fwp_cuda::kMaxGridX && tiles(dv) <= 65535; }

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
