// The CUDA kernel of fwp::sum_norm (kernels/sum_norm.cpp), written once for two compilers: nvcc
// builds it in sum_norm.cu, and the host compiler builds it for sum_norm_emulator.cpp, which runs
// the same code on the CPU (cuda_on_host.h) so that CI checks it without a GPU. Included inside
// the includer's namespace, after the CUDA headers or cuda_on_host.h.

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
