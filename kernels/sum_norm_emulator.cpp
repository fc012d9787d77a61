// The CUDA kernel of fwp::sum_norm (sum_norm_kernel.cuh) run on the CPU, for tests: the same source
// compiled by the host compiler (cuda_on_host.h), launched as sum_norm.cu launches it (one block of
// kThreads threads per row).

#include <ATen/ATen.h>

#include "cuda_on_host.h"
// after the host CUDA definitions
#include "ffi.h"

namespace {

#include "sum_norm_kernel.cuh"

}  // namespace

extern "C" {

// y = x / (sum(x, -1) + eps) by the CUDA kernel's code, for an fp32 CPU tensor x with at least one
// element.
char* fwp_sum_norm_cuda_emulated(const at::Tensor* x, double eps, at::Tensor** out) {
  return fwp::guarded([&] {
    TORCH_CHECK(x->is_cpu() && x->scalar_type() == at::kFloat && x->dim() >= 1 && x->numel() > 0,
                "emulated sum_norm CUDA kernel: expected a non-empty fp32 CPU tensor, got ", x->scalar_type(),
                " ", x->sizes(), " on ", x->device());
    const at::Tensor xc = x->contiguous();
    at::Tensor y = at::empty_like(xc);
    const int64_t n = xc.size(-1), rows = xc.numel() / n;
    fwp::host_cuda::launch(fwp::host_cuda::Dim3{unsigned(rows), 1, 1}, kThreads, 0, [&] {
      sum_norm_f32(xc.data_ptr<float>(), y.data_ptr<float>(), n, static_cast<float>(eps));
    });
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
