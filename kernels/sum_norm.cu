// CUDA kernel of fwp::sum_norm (kernels/sum_norm.cpp): one block per row, fp32 accumulation. The
// kernel is in sum_norm_kernel.cuh (also built for the CPU emulator); this file holds the launcher.

#include <cuda_runtime.h>
#include <cstdint>

#include "cuda_launch.cuh"

namespace {

#include "sum_norm_kernel.cuh"

}  // namespace

extern "C" int fwp_sum_norm_cuda_f32(const float* x, float* y, int64_t rows, int64_t n, float eps,
                                     void* stream) {
  if (rows <= 0 || n <= 0) return 0;
  if (rows > fwp_cuda::kMaxGridX) return static_cast<int>(cudaErrorInvalidConfiguration);
  return static_cast<int>(fwp_cuda::launch_checked([&] {
    sum_norm_f32<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, y, n, eps);
  }));
}

extern "C" const char* fwp_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
