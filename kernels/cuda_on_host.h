// CUDA device code compiled by the host compiler, for tests: what a kernel source written for nvcc
// needs so that the same source runs on the CPU (chunked_first_emulator.cpp,
// fast_weight_emulator.cpp). A launch runs its blocks one after another, each as one std::thread
// per CUDA thread; __syncthreads and __syncwarp are real barriers, warp shuffles meet at a warp
// barrier, atomicAdd is a relaxed compare-and-swap, and the WMMA calls work on whole 16 x 16 tiles
// held by every lane (the fragments' register layout is opaque in CUDA, so no kernel can depend on
// it). Static
// __shared__ variables become function statics: launches are serialised, so each block has them to
// itself. Dynamic shared memory is a fresh buffer per block, filled with NaN bytes (a read of what
// nobody wrote shows up in the results) and followed by a guard zone that is checked when the block
// ends (a write past the launch's size is an error).
//
// Include it before the kernel source, outside any namespace. Slow (a condition variable per
// barrier), meant for small shapes.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "host_barrier.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;

namespace fwp::host_cuda {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Block {
  explicit Block(int threads) : all(threads), exchange(size_t(threads)) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
  }
  Barrier all;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> exchange;  // one shuffle slot per thread
  unsigned char* dynamic = nullptr;
};

inline thread_local Block* t_block = nullptr;

// Guard bytes after a block's dynamic shared memory, and the value they hold.
constexpr size_t kGuard = 1024;
constexpr unsigned char kGuardByte = 0xA5;

inline std::mutex& launch_lock() {
  static std::mutex m;
  return m;
}

}  // namespace fwp::host_cuda

inline thread_local fwp::host_cuda::Dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fwp::host_cuda {

// Runs kernel() for every block of `grid` with `threads` threads each (a multiple of 32) and
// `dynamic_bytes` of dynamic shared memory. Throws (c10::Error) when a block wrote past that memory.
template <typename Kernel>
void launch(Dim3 grid, int threads, size_t dynamic_bytes, const Kernel& kernel) {
  TORCH_CHECK(threads > 0 && threads % 32 == 0, "host_cuda::launch: ", threads, " threads per block");
  const std::lock_guard<std::mutex> serial(launch_lock());
  std::vector<unsigned char> dynamic(dynamic_bytes + kGuard);
  for (unsigned z = 0; z < std::max(grid.z, 1u); ++z)
    for (unsigned y = 0; y < std::max(grid.y, 1u); ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(dynamic.data(), 0xFF, dynamic_bytes);  // NaN in every float and double
        std::memset(dynamic.data() + dynamic_bytes, kGuardByte, kGuard);
        Block block(threads);
        block.dynamic = dynamic.data();
        std::vector<std::thread> pool;
        pool.reserve(size_t(threads));
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = Dim3{unsigned(t), 0, 0};
            blockIdx = Dim3{x, y, z};
            blockDim = Dim3{unsigned(threads), 1, 1};
            gridDim = grid;
            t_block = &block;
            kernel();
            block.warps[size_t(t / 32)]->leave();
            block.all.leave();
          });
        for (auto& th : pool) th.join();
        for (size_t i = 0; i < kGuard; ++i)
          TORCH_CHECK(dynamic[dynamic_bytes + i] == kGuardByte, "host_cuda::launch: block (", x, ", ", y, ", ", z,
                      ") wrote past its ", dynamic_bytes, " bytes of dynamic shared memory (byte ",
                      dynamic_bytes + i, ")");
      }
}

}  // namespace fwp::host_cuda

// The block's dynamic shared memory (`extern __shared__` in CUDA).
inline unsigned char* host_dynamic_shared() { return fwp::host_cuda::t_block->dynamic; }

inline void __syncthreads() { fwp::host_cuda::t_block->all.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { fwp::host_cuda::t_block->warps[threadIdx.x / 32]->wait(); }

namespace fwp::host_cuda {

// The value x of lane `source(this lane)` of the warp; every lane of the warp must call it.
template <typename T, typename Source>
T shuffle(T x, const Source& source) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  auto& block = *t_block;
  const unsigned lane = threadIdx.x % 32, base = threadIdx.x - lane;
  std::memcpy(&block.exchange[threadIdx.x], &x, sizeof(T));
  block.warps[threadIdx.x / 32]->wait();
  T y;
  std::memcpy(&y, &block.exchange[base + source(lane)], sizeof(T));
  block.warps[threadIdx.x / 32]->wait();  // everyone has read before the slots are reused
  return y;
}

}  // namespace fwp::host_cuda

template <typename T>
T __shfl_xor_sync(unsigned, T x, int mask) {
  return fwp::host_cuda::shuffle(x, [&](unsigned lane) { return lane ^ unsigned(mask); });
}

// Lanes whose source lies beyond the warp keep their own value, as in CUDA.
template <typename T>
T __shfl_down_sync(unsigned, T x, unsigned delta) {
  return fwp::host_cuda::shuffle(x, [&](unsigned lane) { return lane + delta < 32 ? lane + delta : lane; });
}

// A relaxed atomic read-modify-write, as CUDA's: atomic, but no ordering with the threads' other
// accesses (a lock here would order every pair of callers and hide their races from
// ThreadSanitizer).
template <typename T>
T atomicAdd(T* address, T value) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomicAdd of 4- or 8-byte values");
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits seen = __atomic_load_n(bits, __ATOMIC_RELAXED), next;
  T old;
  do {
    std::memcpy(&old, &seen, sizeof(T));
    const T sum = old + value;
    std::memcpy(&next, &sum, sizeof(T));
  } while (!__atomic_compare_exchange_n(bits, &seen, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

inline float __half2float(__half h) { return float(h); }
inline __half __float2half_rn(float x) { return __half(x); }  // round to nearest even
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16(x); }  // round to nearest even
// A product rounded on its own: -std=c++17 keeps GCC from contracting it into a later add.
inline float __fmul_rn(float a, float b) { return a * b; }
using std::max;
using std::min;

// WMMA on 16 x 16 x 16 tiles (bf16 A and B, fp32 accumulator): each lane holds the whole tile.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "host WMMA: 16 x 16 x 16 tiles only");
  float x[16 * 16];
};

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
  std::fill(f.x, f.x + 256, value);
}

template <typename Use>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, row_major>& f, const __nv_bfloat16* p,
                      unsigned ldm) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = float(p[size_t(r) * ldm + c]);
}

// d = a b + c, products exact (bf16 x bf16), sums in fp32 in the order of k.
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += a.x[i * 16 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  std::copy(out, out + 256, d.x);
}

// Each lane writes its share of the tile; the warp's __syncwarp after makes all of it visible.
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  for (int e = int(threadIdx.x % 32); e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    if (layout == mem_row_major)
      p[size_t(r) * ldm + c] = f.x[e];
    else
      p[size_t(c) * ldm + r] = f.x[e];
  }
}

}  // namespace nvcuda::wmma
