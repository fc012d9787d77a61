// Host side of the CUDA fused fast-weight kernels: sizes the checkpoint interval from the device's
// shared memory, allocates the accumulation buffers, and launches on PyTorch's current stream.

#include "fast_weight_cuda.h"

#include <algorithm>

#ifdef FWP_WITH_CUDA
#include "fast_weight_launch.h"
// Exported by libtorch_cuda: PyTorch's current stream on a device.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
#endif

namespace fwp {

#ifdef FWP_WITH_CUDA
namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    case at::kBFloat16: return 3;
    default: TORCH_CHECK(false, "fwp fused fast weights (CUDA): unsupported dtype ", t);
  }
  return -1;
}

int64_t smem_limit(int device) {
  const int64_t limit = fwp_cuda_smem_limit(device);
  TORCH_CHECK(limit > 0, "fwp fused fast weights: cannot query shared memory of CUDA device ", device,
              ": ", fwp_cuda_error_string(int(-limit)));
  return limit;
}

void* current_stream(const at::Tensor& t) {
  void* stream = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device(), &stream) == 0,
              "fwp fused fast weights: cannot get the current CUDA stream");
  return stream;
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "fwp fused fast weights: CUDA ", what, " failed: ", fwp_cuda_error_string(code));
}

}  // namespace

int64_t cuda_chunk(const at::Tensor& q, int64_t d_k, int64_t d_v, int64_t acc_bytes) {
  TORCH_CHECK(fwp_cuda_kernels_loadable(q.get_device()) == 1, "fwp fused fast weights: this build's CUDA ",
              "kernels (sm_80, sm_90, PTX compute_90) cannot run on CUDA device ", q.get_device(),
              "; use Backend::Chunked there");
  const int64_t limit = smem_limit(q.get_device());
  TORCH_CHECK(cuda_backward_smem_bytes(d_k, 1, acc_bytes) <= limit, "fwp fused fast weights: d_k = ", d_k,
              " is too large for the CUDA kernels on this device (needs ",
              cuda_backward_smem_bytes(d_k, 1, acc_bytes), " bytes of shared memory per block, the device has ",
              limit, "); the largest d_k here is ", cuda_max_dk(q.get_device(), d_v, int(acc_bytes)),
              ". Use Backend::Chunked for larger keys.");
  return cuda_chunk_for(d_k, q.size(2), acc_bytes, limit);
}

int64_t cuda_max_dk(int device, int64_t d_v, int acc_bytes) {
  (void)d_v;  // any d_v: value columns are tiled over blocks
  const int64_t limit = device < 0 ? 0 : fwp_cuda_smem_limit(device);
  if (limit <= 0 || fwp_cuda_kernels_loadable(device) != 1) return 0;
  int64_t lo = 0, hi = 1 << 20;  // largest d_k with a one-step chunk that fits
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cuda_backward_smem_bytes(mid, 1, acc_bytes) <= limit) lo = mid; else hi = mid - 1;
  }
  return lo;
}

void forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                  const at::Tensor& s0, at::Tensor& out, at::Tensor& state, at::Tensor& checkpoints,
                  const Dims& d, bool delta) {
  check_launch(fwp_cuda_forward(dtype_code(q.scalar_type()), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                delta ? beta.data_ptr() : nullptr, s0.data_ptr(), out.data_ptr(),
                                state.data_ptr(), checkpoints.data_ptr(), d.batch_heads, d.T, d.d_k, d.d_v,
                                d.chunk, current_stream(q)),
               "forward launch");
}

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_state, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                   const at::Tensor& checkpoints, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                   at::Tensor& dbeta, at::Tensor& ds0, const Dims& d, bool delta) {
  // The raw op takes any chunk from its caller: its replay buffer must fit (cuda_chunk's always does).
  const int64_t acc_bytes = ds0.element_size();
  const int64_t limit = smem_limit(q.get_device());
  TORCH_CHECK(cuda_backward_smem_bytes(d.d_k, d.chunk, acc_bytes) <= limit, "fwp fused fast weights: chunk ",
              d.chunk, " at d_k = ", d.d_k, " needs ", cuda_backward_smem_bytes(d.d_k, d.chunk, acc_bytes),
              " bytes of shared memory per block; the device has ", limit);
  // dq, dk, dbeta sum over value tiles: accumulate atomically in the accumulation dtype.
  const auto acc = ds0.options();
  at::Tensor dq_acc = at::zeros(dq.sizes(), acc), dk_acc = at::zeros(dk.sizes(), acc);
  at::Tensor db_acc = delta ? at::zeros(dbeta.sizes(), acc) : at::Tensor();
  check_launch(fwp_cuda_backward(dtype_code(q.scalar_type()), grad_out.data_ptr(), grad_state.data_ptr(),
                                 q.data_ptr(), k.data_ptr(), v.data_ptr(), delta ? beta.data_ptr() : nullptr,
                                 checkpoints.data_ptr(), dq_acc.data_ptr(), dk_acc.data_ptr(), dv.data_ptr(),
                                 delta ? db_acc.data_ptr() : nullptr, ds0.data_ptr(), d.batch_heads, d.T,
                                 d.d_k, d.d_v, d.chunk, current_stream(q)),
               "backward launch");
  dq.copy_(dq_acc);
  dk.copy_(dk_acc);
  if (delta) dbeta.copy_(db_acc);
}

#else  // built without CUDA

int64_t cuda_chunk(const at::Tensor&, int64_t, int64_t, int64_t) {
  TORCH_CHECK(false, "fwp was built without CUDA kernels (nvcc was not found at build time)");
  return 0;
}

int64_t cuda_max_dk(int, int64_t, int) { return 0; }

void forward_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  at::Tensor&, at::Tensor&, at::Tensor&, const Dims&, bool) {
  TORCH_CHECK(false, "fwp was built without CUDA kernels (nvcc was not found at build time)");
}

void backward_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                   at::Tensor&, const Dims&, bool) {
  TORCH_CHECK(false, "fwp was built without CUDA kernels (nvcc was not found at build time)");
}

#endif

}  // namespace fwp
