// What the benchmark (src/bench) measures on CUDA: peak-memory statistics of PyTorch's caching
// allocator, and time between CUDA events recorded on PyTorch's current stream. Without CUDA (or
// the CUDA headers) in the build every entry point returns an error.

#include "ffi.h"

#ifdef FWP_WITH_CUDA_HEADERS
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

namespace {
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    TORCH_CHECK(false, what, ": ", cudaGetErrorString(e));
  }
}
}  // namespace
#endif

extern "C" {

// Resets the allocator's peak statistics of `device`.
char* fwp_cuda_memory_reset_peak(int device) {
  return fwp::guarded([&] {
#ifdef FWP_WITH_CUDA_HEADERS
    c10::cuda::CUDACachingAllocator::resetPeakStats(device);
#else
    TORCH_CHECK(false, "fwp was built without CUDA allocator statistics (device ", device, ")");
#endif
  });
}

// Bytes allocated through the caching allocator on `device`: now, and at the peak since the last reset.
char* fwp_cuda_memory_allocated(int device, int64_t* current, int64_t* peak) {
  return fwp::guarded([&] {
#ifdef FWP_WITH_CUDA_HEADERS
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    const auto& all = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    *current = all.current;
    *peak = all.peak;
#else
    *current = *peak = 0;
    TORCH_CHECK(false, "fwp was built without CUDA allocator statistics (device ", device, ")");
#endif
  });
}

// A CUDA event with timing on `device`, into *event.
char* fwp_cuda_event_create(int device, void** event) {
  return fwp::guarded([&] {
#ifdef FWP_WITH_CUDA_HEADERS
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreate(&e), "cudaEventCreate");
    *event = e;
#else
    *event = nullptr;
    TORCH_CHECK(false, "fwp was built without CUDA (device ", device, ")");
#endif
  });
}

// Records `event` on PyTorch's current stream of `device`.
char* fwp_cuda_event_record(int device, void* event) {
  return fwp::guarded([&] {
#ifdef FWP_WITH_CUDA_HEADERS
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
    check_cuda(cudaEventRecord(static_cast<cudaEvent_t>(event), stream), "cudaEventRecord");
#else
    (void)event;
    TORCH_CHECK(false, "fwp was built without CUDA (device ", device, ")");
#endif
  });
}

// Waits for `end` and gives the milliseconds from `start` to `end`.
char* fwp_cuda_event_elapsed(void* start, void* end, float* ms) {
  return fwp::guarded([&] {
#ifdef FWP_WITH_CUDA_HEADERS
    check_cuda(cudaEventSynchronize(static_cast<cudaEvent_t>(end)), "cudaEventSynchronize");
    check_cuda(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
               "cudaEventElapsedTime");
#else
    (void)start;
    (void)end;
    *ms = 0.f;
    TORCH_CHECK(false, "fwp was built without CUDA");
#endif
  });
}

void fwp_cuda_event_destroy(void* event) {
#ifdef FWP_WITH_CUDA_HEADERS
  if (event != nullptr) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
#else
  (void)event;
#endif
}

}  // extern "C"
