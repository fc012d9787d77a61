// Peak-memory statistics of PyTorch's CUDA caching allocator, read by the benchmark (src/bench).
// Without CUDA (or the CUDA headers) in the build both entry points return an error.

#include "ffi.h"

#ifdef FWP_WITH_CUDA_HEADERS
#include <c10/cuda/CUDACachingAllocator.h>
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

}  // extern "C"
