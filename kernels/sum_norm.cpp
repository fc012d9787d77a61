// fwp::sum_norm, the sum normalisation of docs/derivations.md (D5): y = x / (sum_j x_j + eps) over the last
// dimension. A small op that exercises the whole custom-op path: a TORCH_LIBRARY schema, CPU and
// CUDA kernels, an Autograd kernel backed by a torch::autograd::Function with an explicit
// backward, and a C entry point for Rust. Its reference twin is `norm::sum_normalise_reference`.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ffi.h"

#ifdef FWP_WITH_CUDA
extern "C" int fwp_sum_norm_cuda_f32(const float* x, float* y, int64_t rows, int64_t n, float eps,
                                     void* stream);
extern "C" const char* fwp_cuda_error_string(int code);
// Exported by libtorch_cuda: PyTorch's current stream on a device.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
#endif

namespace {

at::Tensor sum_norm_math(const at::Tensor& x, double eps) {
  return x / (x.sum(-1, /*keepdim=*/true) + eps);
}

at::Tensor sum_norm_cpu(const at::Tensor& x, double eps) { return sum_norm_math(x, eps); }

at::Tensor sum_norm_cuda(const at::Tensor& x, double eps) {
#ifdef FWP_WITH_CUDA
  if (x.scalar_type() == at::kFloat && x.numel() > 0) {
    c10::DeviceGuard guard(x.device());
    auto xc = x.contiguous();
    auto y = at::empty_like(xc);
    const int64_t n = xc.size(-1);
    void* stream = nullptr;
    TORCH_CHECK(aoti_torch_get_current_cuda_stream(x.get_device(), &stream) == 0,
                "fwp::sum_norm: cannot get the current CUDA stream");
    int code = fwp_sum_norm_cuda_f32(xc.data_ptr<float>(), y.data_ptr<float>(), xc.numel() / n, n,
                                     static_cast<float>(eps), stream);
    TORCH_CHECK(code == 0, "fwp::sum_norm: CUDA launch failed: ", fwp_cuda_error_string(code));
    return y;
  }
#endif
  return sum_norm_math(x, eps);
}

at::Tensor sum_norm_dispatch(const at::Tensor& x, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fwp::sum_norm", "")
                       .typed<at::Tensor(const at::Tensor&, double)>();
  return op.call(x, eps);
}

struct SumNorm : public torch::autograd::Function<SumNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = sum_norm_dispatch(x, eps);
    ctx->save_for_backward({x, y});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  // dL/dx_j = (g_j - sum_i g_i y_i) / (sum_i x_i + eps)
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& y = saved[1];
    const double eps = ctx->saved_data["eps"].toDouble();
    const at::Tensor& g = grads[0];
    at::Tensor gx = (g - (g * y).sum(-1, true)) / (x.sum(-1, true) + eps);
    return {gx, at::Tensor()};
  }
};

at::Tensor sum_norm_autograd(const at::Tensor& x, double eps) { return SumNorm::apply(x, eps); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fwp, m) { m.def("sum_norm(Tensor x, float eps) -> Tensor"); }
TORCH_LIBRARY_IMPL(fwp, CPU, m) { m.impl("sum_norm", &sum_norm_cpu); }
TORCH_LIBRARY_IMPL(fwp, CUDA, m) { m.impl("sum_norm", &sum_norm_cuda); }
TORCH_LIBRARY_IMPL(fwp, Autograd, m) { m.impl("sum_norm", &sum_norm_autograd); }

extern "C" {

// y = fwp::sum_norm(x, eps), through the dispatcher (so autograd records it).
char* fwp_sum_norm(const at::Tensor* x, double eps, at::Tensor** out) {
  return fwp::guarded([&] { *out = new at::Tensor(sum_norm_dispatch(*x, eps)); });
}

}  // extern "C"
