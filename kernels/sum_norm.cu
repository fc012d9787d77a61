// CUDA kernel of fwp::sum_norm (kernels/sum_norm.cpp): one block per row, fp32 accumulation.

#include <cuda_runtime.h>
#include <cstdint>

namespace {

constexpr int kThreads = 256;

__global__ void sum_norm_f32(const float* __restrict__ x, float* __restrict__ y, int64_t n,
                             float eps) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * n;
  float* yr = y + row * n;
  float part = 0.f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) part += xr[j];
  // warp reduction, then across warps through shared memory
  for (int off = 16; off > 0; off >>= 1) part += __shfl_down_sync(0xffffffffu, part, off);
  __shared__ float warp_sums[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = part;
  __syncthreads();
  __shared__ float total;
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
    total = s + eps;
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] / total;
}

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
