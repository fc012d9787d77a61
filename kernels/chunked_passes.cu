// The fast chunked kernels (chunked_passes.cuh) as CUDA kernels: the device primitives the shared
// code asks for (mma.sync, ldmatrix, cp.async, bf16 rounding), one kernel per instantiation (passes:
// key tiles KT x parts P x value columns BV, 16 or 8 only with P = 1, and with P = 1 a Whole kernel
// beside each, see whole_pass; per-chunk stages: P, and with P = 1 Whole and Staged kernels, see
// whole_fragments, whole_rows, staged_rows), and the launchers. The passes size their
// shared memory from the device's opt-in limit (cached per device); where a pass does not fit, the
// host side runs the first-version kernel of chunked.cu instead (chunked_launch.h).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "chunked_launch.h"
#include "cuda_launch.cuh"

namespace {

#define FWP_DEV __device__ __forceinline__
#define FWP_HD __host__ __device__ __forceinline__

FWP_DEV int thread_id() { return int(threadIdx.x); }
FWP_DEV int lane_id() { return int(threadIdx.x) & 31; }
FWP_DEV int warp_id() { return int(threadIdx.x) >> 5; }
FWP_DEV void block_sync() { __syncthreads(); }

FWP_DEV void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int N, bool trans>
FWP_DEV void ldmatrix(uint32_t (&r)[N], const uint16_t* row) {
  static_assert(N == 2 || N == 4, "ldmatrix: 2 or 4 matrices");
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 4 && trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (N == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

FWP_DEV void copy_async(void* dst, const void* src, int bytes, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if (bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}
FWP_DEV void copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
FWP_DEV void copy_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
FWP_DEV void expect(bool, const char*) {}  // (the emulator checks these)

FWP_DEV uint16_t bf16_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
FWP_DEV float bf16_value(uint16_t h) { return __bfloat162float(__ushort_as_bfloat16(h)); }
FWP_DEV float mul_rn(float a, float b) { return __fmul_rn(a, b); }

#include "chunked_passes.cuh"

In in(FwpIn x) { return In{x.p, x.bf16 != 0}; }
Out out(FwpOut x) { return Out{x.p, x.bf16 != 0}; }

template <int KT, int P, int BV, bool Whole>
__global__ void __launch_bounds__(kPassThreads, 1) state_forward_pass_kernel(PassArgs x) {
  extern __shared__ float4 smem[];
  state_forward_pass<KT, P, BV, Whole>(x, reinterpret_cast<float*>(smem), int(blockIdx.x), int(blockIdx.y));
}

template <int KT, int P, int BV, bool Whole>
__global__ void __launch_bounds__(kPassThreads, 1) state_backward_pass_kernel(PassArgs x) {
  extern __shared__ float4 smem[];
  state_backward_pass<KT, P, BV, Whole>(x, reinterpret_cast<float*>(smem), int(blockIdx.x), int(blockIdx.y));
}

// At most 128 registers, so four blocks fit an SM (without the bound ptxas chose 64-80 for some
// instantiations and spilled 4 bytes in one).
template <RowStage stage, int P, bool Whole = false, bool Staged = false>
__global__ void __launch_bounds__(kPassThreads, 4) row_stage_kernel(RowArgs x, int tiles) {
  __shared__ RowSmemOf<P, Staged> sh;
  row_stage<stage, P, Whole, Staged>(x, sh, int(blockIdx.x / tiles), int64_t(blockIdx.y), int(blockIdx.x % tiles));
}

// Blocks (batch·head, value tile) along x, value tiles fastest: the blocks of one chunk's tiles,
// which all read the chunk's Q and K, run side by side and share those reads through L2.
template <RowStage stage>
int launch_rows(const RowArgs& x, int64_t BH, int parts, void* stream) {
  if (BH == 0 || x.N == 0) return 0;
  const int tiles = (x.dv + kRowCols - 1) / kRowCols;
  if (BH * tiles > fwp_cuda::kMaxGridX || x.N > 65535) return int(cudaErrorInvalidConfiguration);
  if (parts < 1 || parts > 3) return int(cudaErrorInvalidValue);
  const dim3 grid(unsigned(BH * tiles), unsigned(x.N));
  const cudaStream_t s = cudaStream_t(stream);
  return int(fwp_cuda::launch_checked([&] {
    switch (parts) {
      case 1:
        if (staged_rows(x, parts))
          row_stage_kernel<stage, 1, true, true><<<grid, kPassThreads, 0, s>>>(x, tiles);
        else if (whole_rows(x, parts))
          row_stage_kernel<stage, 1, true><<<grid, kPassThreads, 0, s>>>(x, tiles);
        else
          row_stage_kernel<stage, 1><<<grid, kPassThreads, 0, s>>>(x, tiles);
        break;
      case 2: row_stage_kernel<stage, 2><<<grid, kPassThreads, 0, s>>>(x, tiles); break;
      default: row_stage_kernel<stage, 3><<<grid, kPassThreads, 0, s>>>(x, tiles); break;
    }
  }));
}

// The Whole kernel is bounded to 5 blocks per multiprocessor (96 registers on sm_90, no spill; 39 KB
// of static shared memory each: 5 on an H100 or H200, 4 on an A100), where it would take 117
// registers and 4 blocks: its barriers and shared-memory loads leave warps waiting.
template <int P, bool Whole = false>
__global__ void __launch_bounds__(kPassThreads, Whole ? 5 : 1) wy_stage_kernel(WyArgs x) {
  __shared__ WySmem sh;
  wy_stage<P, Whole>(x, sh, int(blockIdx.x), int64_t(blockIdx.y));
}

// One kernel per rule and, for one part, per Whole (input_grads_stage). B3 waits on its loads, so
// blocks per multiprocessor count: the Whole kernels fit 128 registers without spilling (4 blocks);
// on an H200 the delta rule's B3 with 4 blocks took about 20% less time than with 2 or 3
// (docs/performance.md). The others keep their fallbacks and need more.
template <int P, bool Delta, bool Whole>
__global__ void __launch_bounds__(kPassThreads, Whole ? 4 : 1) input_grads_stage_kernel(GradArgs x) {
  __shared__ GradSmemOf<Whole> sh;
  input_grads_stage<P, Delta, Whole>(x, sh, int(blockIdx.x), int64_t(blockIdx.y));
}

// Launches kernels[parts - 1] (the instantiations for 1, 2 and 3 bf16 parts) on a (BH, N) grid of
// blocks, one per (batch·head, chunk), with static shared memory only.
template <class Args>
int launch_chunks(std::initializer_list<void (*)(Args)> kernels, const Args& x, int64_t BH, int parts,
                  void* stream) {
  if (parts < 1 || parts > int(kernels.size())) return int(cudaErrorInvalidValue);
  if (BH == 0 || x.N == 0) return 0;
  if (BH > fwp_cuda::kMaxGridX || x.N > 65535) return int(cudaErrorInvalidConfiguration);
  const dim3 grid(static_cast<unsigned>(BH), static_cast<unsigned>(x.N));
  return int(fwp_cuda::launch_checked(
      [&] { kernels.begin()[parts - 1]<<<grid, kPassThreads, 0, cudaStream_t(stream)>>>(x); }));
}

using fwp_cuda::kMaxDevices;

// The device's opt-in limit of shared memory per block (cached per device), or 0 where it cannot
// be read.
int smem_limit(int device) {
  const int64_t limit = fwp_cuda_smem_limit(device);
  return limit > 0 ? int(limit) : 0;
}

// Keys padded to KT * 16 columns: 4 (d_k <= 64), 8 (<= 128) or 16 (<= 256); 0 above.
int key_tiles(int64_t dk) { return dk <= 64 ? 4 : dk <= 128 ? 8 : dk <= 256 ? 16 : 0; }

// The multiprocessors of the current device (cached per device), or 0 where they cannot be read.
int sm_count() {
  static std::atomic<int> cache[kMaxDevices] = {};  // 0: not read yet
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // not left pending for the next launch to report
    return 0;
  }
  if (device < kMaxDevices && (sms = cache[device].load(std::memory_order_acquire)) > 0) return sms;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (device < kMaxDevices) cache[device].store(sms, std::memory_order_release);
  return sms;
}

// Shared memory of a pass with blocks of bv value columns (by default the widest, kBV: the most a
// pass takes, which decides its stages).
size_t pass_bytes(int64_t dk, bool backward, bool delta, int bf16, int stages, int bv = kBV) {
  return size_t(pass_floats(key_tiles(dk), backward, delta, bf16, stages, bv)) * sizeof(float);
}

// Launches one (KT, P, BV) instantiation with `bytes` of dynamic shared memory. Above the default
// 48 KiB the kernel's limit on this device is first raised to the device's whole opt-in limit, once
// per kernel and device (fwp_cuda::allow_shared_memory; the sum and delta rules share a kernel).
template <int BV, typename Kernel>
int launch(Kernel kernel, std::atomic<bool>* raised, const PassArgs& x, int64_t BH, size_t bytes, void* stream) {
  if (BH > fwp_cuda::kMaxGridX) return int(cudaErrorInvalidConfiguration);
  if (bytes > 48 * 1024) {
    const cudaError_t err = fwp_cuda::allow_shared_memory(kernel, raised);
    if (err != cudaSuccess) return int(err);
  }
  const dim3 grid(unsigned(BH), unsigned(pass_blocks(1, x.dv, BV)));
  return int(fwp_cuda::launch_checked([&] { kernel<<<grid, kPassThreads, bytes, cudaStream_t(stream)>>>(x); }));
}

// A pass kernel's blocks per SM with one stage and with two, per device and shared-memory size:
// the size follows from the kernel (KT, BV, direction), the rule and the inputs' dtypes (the bf16
// mask of pass_bf16, below 16), so each (rule, mask) has its entry. An entry holds
// (one + 1) | (two + 1) << 16, or 0 where the device was not asked yet.
constexpr int kFitKeys = 2 * 16;
struct PassFit {
  std::atomic<int> packed[kMaxDevices][kFitKeys] = {};
};

// The stages `kernel` runs with: x.stages (the most that fit the device's limit), or one where that
// lets its grid of `blocks` run in fewer waves (pass_stages_for_grid), as the device's occupancy
// calculator counts blocks per SM. The kernel's shared-memory limit is raised first, since the
// calculator counts against it. The counts are asked once per device and size (`fit`, one per
// kernel instantiation). Where the device cannot be asked, x.stages.
template <typename Kernel>
int stages_for_grid(Kernel kernel, std::atomic<bool>* raised, PassFit& fit, bool backward, const PassArgs& x,
                    int64_t blocks, int bv) {
  if (x.stages != 2) return x.stages;
  const bool delta = x.b.p != nullptr;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // not left pending for the launch to report
    return x.stages;
  }
  std::atomic<int>* known = device < kMaxDevices ? &fit.packed[device][(delta ? 16 : 0) + pass_bf16(x)] : nullptr;
  int packed = known != nullptr ? known->load(std::memory_order_acquire) : 0;
  if (packed == 0) {
    const size_t one = pass_bytes(x.dk, backward, delta, pass_bf16(x), 1, bv),
                 two = pass_bytes(x.dk, backward, delta, pass_bf16(x), 2, bv);
    int per_sm_one = 0, per_sm_two = 0;
    if ((two > 48 * 1024 && fwp_cuda::allow_shared_memory(kernel, raised) != cudaSuccess) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_one, kernel, kPassThreads, one) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_two, kernel, kPassThreads, two) != cudaSuccess) {
      (void)cudaGetLastError();
      return x.stages;
    }
    packed = (per_sm_one + 1) | ((per_sm_two + 1) << 16);
    if (known != nullptr) known->store(packed, std::memory_order_release);
  }
  return pass_stages_for_grid(x.stages, blocks, sm_count(), (packed & 0xffff) - 1, (packed >> 16) - 1);
}

template <int KT, int P, int BV = kBV, bool Whole = false>
int launch_pass(bool backward, const PassArgs& x, int64_t BH, void* stream) {
  static std::atomic<bool> raised_forward[kMaxDevices] = {}, raised_backward[kMaxDevices] = {};
  static PassFit fit_forward, fit_backward;
  const auto kernel =
      backward ? state_backward_pass_kernel<KT, P, BV, Whole> : state_forward_pass_kernel<KT, P, BV, Whole>;
  std::atomic<bool>* raised = backward ? raised_backward : raised_forward;
  PassArgs y = x;
  y.stages = stages_for_grid(kernel, raised, backward ? fit_backward : fit_forward, backward, x,
                             pass_blocks(BH, x.dv, BV), BV);
  const size_t bytes = pass_bytes(y.dk, backward, y.b.p != nullptr, pass_bf16(y), y.stages, BV);
  return launch<BV>(kernel, raised, y, BH, bytes, stream);
}

// One part: the block's value columns (narrow blocks only where operands take one part, the fast
// bf16 case: pass_value_cols), then Whole where whole_pass holds.
template <int KT, bool Whole>
int launch_one_part(bool backward, const PassArgs& x, int64_t BH, void* stream) {
  switch (pass_value_cols(BH, x.dv, 1, sm_count())) {
    case kNarrowestBV: return launch_pass<KT, 1, kNarrowestBV, Whole>(backward, x, BH, stream);
    case kNarrowBV: return launch_pass<KT, 1, kNarrowBV, Whole>(backward, x, BH, stream);
    default: return launch_pass<KT, 1, kBV, Whole>(backward, x, BH, stream);
  }
}

template <int KT>
int launch_parts(bool backward, const PassArgs& x, int64_t BH, int parts, void* stream) {
  switch (parts) {
    case 1:
      return whole_pass(x, parts, backward) ? launch_one_part<KT, true>(backward, x, BH, stream)
                                            : launch_one_part<KT, false>(backward, x, BH, stream);
    case 2: return launch_pass<KT, 2>(backward, x, BH, stream);
    case 3: return launch_pass<KT, 3>(backward, x, BH, stream);
    default: return int(cudaErrorInvalidValue);
  }
}

int run_pass(bool backward, const PassArgs& x, int64_t BH, int parts, void* stream) {
  if (x.stages != 1 && x.stages != 2) return int(cudaErrorInvalidValue);
  if (BH == 0 || x.N == 0) return 0;
  switch (key_tiles(x.dk)) {
    case 4: return launch_parts<4>(backward, x, BH, parts, stream);
    case 8: return launch_parts<8>(backward, x, BH, parts, stream);
    case 16: return launch_parts<16>(backward, x, BH, parts, stream);
    default: return int(cudaErrorInvalidValue);
  }
}

}  // namespace

extern "C" {

int64_t fwp_chunked_cuda_pass_bytes(int64_t dk, int backward, int delta, int bf16, int stages) {
  return key_tiles(dk) == 0 ? -1 : int64_t(pass_bytes(dk, backward != 0, delta != 0, bf16, stages));
}

int fwp_chunked_cuda_pass_stages_within(int64_t dk, int backward, int delta, int bf16, int64_t limit) {
  if (key_tiles(dk) == 0) return -1;
  for (int stages = 2; stages >= 1; --stages)
    if (limit >= 0 && pass_bytes(dk, backward != 0, delta != 0, bf16, stages) <= size_t(limit)) return stages;
  return 0;
}

int fwp_chunked_cuda_pass_stages_for_grid(int most, int64_t blocks, int64_t sms, int64_t per_sm_one,
                                          int64_t per_sm_two) {
  return pass_stages_for_grid(most, blocks, sms, per_sm_one, per_sm_two);
}

int fwp_chunked_cuda_pass_stages(int64_t dk, int backward, int delta, int bf16) {
  if (key_tiles(dk) == 0) return 0;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // not left pending for the next launch to report
    return 0;
  }
  return fwp_chunked_cuda_pass_stages_within(dk, backward, delta, bf16, smem_limit(device));
}

int fwp_chunked_cuda_state_forward_pass(FwpIn k, FwpIn w, FwpIn u, const float* s0, float* ckpt, FwpOut v_new,
                                        float* state, int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts,
                                        int stages, void* stream) {
  const PassArgs x{in(k), in(w), in(u), in({}), nullptr, s0, ckpt, state, out(v_new), N, int(dk), int(dv), stages};
  return run_pass(false, x, BH, parts, stream);
}

int fwp_chunked_cuda_state_backward_pass(FwpIn q, FwpIn k, FwpIn w, FwpIn grad_out, const float* dv_local,
                                         const float* ds_final, FwpOut dv_new, float* ds_next, float* ds0, int64_t BH,
                                         int64_t N, int64_t dk, int64_t dv, int parts, int stages, void* stream) {
  const PassArgs x{in(k),   in(w), in(q),        in(grad_out), dv_local, ds_final, ds_next, ds0, out(dv_new),
                   N,       int(dk), int(dv),    stages};
  return run_pass(true, x, BH, parts, stream);
}

int fwp_chunked_cuda_values_rows(FwpIn w, const float* u, const float* ckpt, FwpOut v_new, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream) {
  const RowArgs x{in(w), in({}), in({}), ckpt, u, out(v_new), N, int(dk), int(dv)};
  return launch_rows<RowStage::Values>(x, BH, parts, stream);
}

int fwp_chunked_cuda_output_rows(FwpIn q, FwpIn k, FwpIn v_new, const float* ckpt, FwpOut o, int64_t BH, int64_t N,
                                 int64_t dk, int64_t dv, int parts, void* stream) {
  const RowArgs x{in(q), in(k), in(v_new), ckpt, nullptr, out(o), N, int(dk), int(dv)};
  return launch_rows<RowStage::Output>(x, BH, parts, stream);
}

int fwp_chunked_cuda_local_grad_rows(FwpIn q, FwpIn k, FwpIn grad_out, float* dv_local, int64_t BH, int64_t N,
                                     int64_t dk, int64_t dv, int parts, void* stream) {
  const RowArgs x{in(q), in(k), in(grad_out), nullptr, nullptr, Out{dv_local, false}, N, int(dk), int(dv)};
  return launch_rows<RowStage::LocalGrad>(x, BH, parts, stream);
}

int fwp_chunked_cuda_wy_rows(FwpIn k, FwpIn v, FwpIn beta, FwpOut tinv, FwpOut w, float* u, int64_t BH, int64_t N,
                             int64_t dk, int64_t dv, int parts, void* stream) {
  const WyArgs x{in(k), in(v), in(beta), out(tinv), out(w), u, N, int(dk), int(dv)};
  if (whole_wy(x, parts)) return launch_chunks<WyArgs>({wy_stage_kernel<1, true>}, x, BH, parts, stream);
  return launch_chunks<WyArgs>({wy_stage_kernel<1>, wy_stage_kernel<2>, wy_stage_kernel<3>}, x, BH, parts, stream);
}

int fwp_chunked_cuda_input_grads_rows(FwpIn q, FwpIn k, FwpIn v, FwpIn beta, FwpIn tinv, FwpIn v_new,
                                      const float* ckpt, const float* ds_next, FwpIn grad_out, FwpIn dv_new,
                                      FwpOut dq, FwpOut dk_out, FwpOut dv_out, FwpOut dbeta, FwpOut dw_scratch,
                                      int64_t BH, int64_t N, int64_t dk, int64_t dv, int parts, void* stream) {
  const GradArgs x{in(q),       in(k),       in(v),       in(beta),       in(v_new),   in(grad_out),
                   in(tinv),    in(dv_new),  ckpt,        ds_next,        out(dq),     out(dk_out),
                   out(dv_out), out(dbeta),  out(dw_scratch), N,          int(dk),     int(dv)};
  const bool delta = x.tinv.p != nullptr;
  if (whole_fragments(x, parts))
    return launch_chunks<GradArgs>({delta ? input_grads_stage_kernel<1, true, true> : input_grads_stage_kernel<1, false, true>},
                                   x, BH, parts, stream);
  if (delta)
    return launch_chunks<GradArgs>({input_grads_stage_kernel<1, true, false>, input_grads_stage_kernel<2, true, false>,
                                    input_grads_stage_kernel<3, true, false>},
                                   x, BH, parts, stream);
  return launch_chunks<GradArgs>({input_grads_stage_kernel<1, false, false>, input_grads_stage_kernel<2, false, false>,
                                  input_grads_stage_kernel<3, false, false>},
                                 x, BH, parts, stream);
}

}  // extern "C"
