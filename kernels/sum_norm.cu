// CUDA kernel of fwp::sum_norm (kernels/sum_norm.cpp): one block per row, fp32 accumulation. The
// kernel is in sum_norm_kernel.cuh (also built for the CPU emulator); this file holds the launcher.

#include <cuda_runtime.h>
#include <cstdint>

namespace {

#include "sum_norm_kernel.cuh"

}  // namespace

extern "C" int fwp_sum_norm_cuda_f32(const float* x, float* y, int64_t rows, int64_t n, float eps,
                                     void* stream) {
  if (rows <= 0 || n <= 0) return 0;
  if (rows > 0x7fffffffLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  sum_norm_f32<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, y, n, eps);
  return static_cast<int>(cudaGetLastError());
}

extern "C" const char* fwp_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
