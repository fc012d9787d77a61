// What every .cu file's launchers share: a launch that reports only its own error, and the opt-in
// to more than 48 KiB of dynamic shared memory. Host code, included after <cuda_runtime.h>.

#pragma once

#include <atomic>
#include <cstdint>

#include "fast_weight_launch.h"  // fwp_cuda_smem_limit (fast_weight.cu)

namespace fwp_cuda {

// Per-device caches are this long; a device past it is asked every time.
constexpr int kMaxDevices = 64;

// The most blocks a grid's x dimension takes (y and z take 65535).
constexpr int64_t kMaxGridX = 0x7fffffffLL;

// Runs `launch` (one kernel launch) and returns that launch's error. An error another library left
// pending is cleared first (cudaGetLastError resets it), so that it is not blamed on this kernel;
// a sticky error (an earlier kernel's fault) cannot be cleared and is reported, as it must be.
template <typename Launch>
cudaError_t launch_checked(Launch launch) {
  (void)cudaGetLastError();
  launch();
  return cudaGetLastError();
}

// Lets `kernel` use the current device's whole opt-in shared memory, once per device (the attribute
// is per kernel and device; `done` is one set of flags per kernel instantiation). One value for
// every launch, so that callers needing different sizes cannot lower it under each other. Errors
// are returned, not left pending.
template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, std::atomic<bool>* done) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return e;
  }
  if (device < kMaxDevices && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  const int64_t limit = fwp_cuda_smem_limit(device);  // -error where the device could not be asked
  if (limit <= 0) return limit < 0 ? static_cast<cudaError_t>(-limit) : cudaErrorInvalidValue;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return e;
  }
  if (device < kMaxDevices) done[device].store(true, std::memory_order_release);
  return cudaSuccess;
}

}  // namespace fwp_cuda
