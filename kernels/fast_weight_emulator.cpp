// The recurrent CUDA kernels (fast_weight_kernels.cuh) run on the CPU, for tests: the same source
// compiled by the host compiler (cuda_on_host.h: one thread per CUDA thread, real barriers, warp
// shuffles and atomics), launched with fast_weight.cu's grid and shared-memory sizes and
// fast_weight_cuda.cpp's buffers (acc-dtype gradient sums, converted at the end). So the kernels'
// indexing, their inactive warps, the checkpoint replay and their use of shared memory (sized to
// the byte, a write past it is an error) are checked without a GPU; the GPU's memory model is not.
// Slow; meant for small shapes.

#include <ATen/ATen.h>

#include "cuda_on_host.h"
// after the host CUDA definitions
#include "fast_weight.h"
#include "ffi.h"

namespace fwp::emulated_recurrent {
namespace {

#define FWP_UNROLL
#define FWP_DYNAMIC_SHARED(name) unsigned char* const name = host_dynamic_shared()
#include "fast_weight_kernels.cuh"
#undef FWP_DYNAMIC_SHARED
#undef FWP_UNROLL

using at::Tensor;

int64_t tiles(int64_t dv) { return (dv + kWarps - 1) / kWarps; }

// Forward then backward of the kernels for scalar_t inputs and acc_t states, on flattened
// [BH, T, d] tensors; returns out, state, checkpoints, dq, dk, dv, dbeta (undefined for the sum
// rule), ds0.
template <typename scalar_t, typename acc_t>
std::vector<Tensor> run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& s0,
                        const Tensor& grad_out, const Tensor& grad_state, int64_t chunk) {
  const int64_t BH = q.size(0), T = q.size(1), dk = q.size(2), dv = v.size(2), N = (T + chunk - 1) / chunk;
  const bool delta = beta.defined();
  const auto acc = s0.options();
  Tensor out = at::empty({BH, T, dv}, q.options()), state = at::empty({BH, dk, dv}, acc);
  Tensor ckpt = at::empty({BH, N, dk, dv}, acc);
  auto in = [](const Tensor& t) { return t.defined() ? static_cast<const scalar_t*>(t.data_ptr()) : nullptr; };
  auto acc_in = [](const Tensor& t) { return static_cast<const acc_t*>(t.data_ptr()); };
  auto acc_out = [](Tensor& t) { return t.defined() ? static_cast<acc_t*>(t.data_ptr()) : nullptr; };
  const host_cuda::Dim3 grid{unsigned(BH), unsigned(tiles(dv)), 1};
  host_cuda::launch(grid, kThreads, size_t(forward_smem_bytes(dk, sizeof(acc_t))), [&] {
    forward_kernel<scalar_t, acc_t>(in(q), in(k), in(v), in(beta), acc_in(s0), static_cast<scalar_t*>(out.data_ptr()),
                                    acc_out(state), acc_out(ckpt), T, dk, dv, chunk);
  });
  Tensor dq = at::zeros({BH, T, dk}, acc), dkk = at::zeros({BH, T, dk}, acc);
  Tensor db = delta ? at::zeros({BH, T}, acc) : Tensor();
  Tensor dvv = at::empty({BH, T, dv}, q.options()), ds0 = at::empty({BH, dk, dv}, acc);
  host_cuda::launch(grid, kThreads, size_t(cuda_backward_smem_bytes(dk, chunk, sizeof(acc_t))), [&] {
    backward_kernel<scalar_t, acc_t>(in(grad_out), acc_in(grad_state), in(q), in(k), in(v), in(beta), acc_in(ckpt),
                                     acc_out(dq), acc_out(dkk), static_cast<scalar_t*>(dvv.data_ptr()), acc_out(db),
                                     acc_out(ds0), T, dk, dv, chunk);
  });
  const auto kind = q.scalar_type();
  return {out, state, ckpt, dq.to(kind), dkk.to(kind), dvv, delta ? db.to(kind) : Tensor(), ds0};
}

}  // namespace

// q, k [B, H, T, d_k], v and grad_out [B, H, T, d_v], beta [B, H, T] (undefined: the sum rule),
// s0 and grad_state [B, H, d_k, d_v] (undefined: zeros), all on the CPU in one dtype (fp32, fp64,
// fp16 or bf16): the forward with checkpoints every `chunk` steps, then the backward for the output
// gradient grad_out and the final state's grad_state. Returns out [B, H, T, d_v], the final state,
// the checkpoints [B, H, N, d_k, d_v] (states in the accumulation dtype, fp64 for fp64 inputs,
// else fp32), dq, dk, dv, dbeta (undefined for the sum rule) in the inputs' dtype, and ds0.
std::vector<Tensor> forward_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                     const Tensor& s0, const Tensor& grad_out, const Tensor& grad_state,
                                     int64_t chunk) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.sizes().slice(0, 3) == q.sizes().slice(0, 3),
              "emulated recurrent CUDA kernels: q, k [B, H, T, d_k] and v [B, H, T, d_v], got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3), dv = v.size(3), BH = B * H;
  TORCH_CHECK(BH >= 1 && T >= 1 && dk >= 1 && dv >= 1, "emulated recurrent CUDA kernels: empty input ", q.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(chunk >= 1 && chunk <= T, "emulated recurrent CUDA kernels: chunk must be in 1..=T (T = ", T,
              "), got ", chunk);
  TORCH_CHECK(grad_out.sizes() == v.sizes(), "emulated recurrent CUDA kernels: grad_out must be ", v.sizes(),
              ", got ", grad_out.sizes());
  const auto kind = q.scalar_type();
  const auto acc = q.options().dtype(kind == at::kDouble ? at::kDouble : at::kFloat);
  for (const Tensor* t : {&q, &k, &v, &beta, &grad_out})
    TORCH_CHECK(!t->defined() || (t->is_cpu() && t->scalar_type() == kind),
                "emulated recurrent CUDA kernels: q, k, v, beta and grad_out must be CPU tensors of one dtype (",
                kind, ")");
  const auto state_of = [&](const Tensor& t, const char* name) {
    if (!t.defined()) return at::zeros({BH, dk, dv}, acc);
    TORCH_CHECK(t.is_cpu() && t.numel() == BH * dk * dv, "emulated recurrent CUDA kernels: ", name,
                " must be [B, H, d_k, d_v] on the CPU, got ", t.sizes());
    return t.to(acc.dtype()).contiguous().view({BH, dk, dv});
  };
  const auto flat = [&](const Tensor& t, int64_t w) { return t.contiguous().view({BH, T, w}); };
  const Tensor b = beta.defined() ? beta.contiguous().view({BH, T}) : Tensor();
  const Tensor q3 = flat(q, dk), k3 = flat(k, dk), v3 = flat(v, dv), go = flat(grad_out, dv);
  const Tensor s = state_of(s0, "s0"), gs = state_of(grad_state, "grad_state");
  std::vector<Tensor> r;
  switch (kind) {
    case at::kFloat: r = run<float, float>(q3, k3, v3, b, s, go, gs, chunk); break;
    case at::kDouble: r = run<double, double>(q3, k3, v3, b, s, go, gs, chunk); break;
    case at::kHalf: r = run<c10::Half, float>(q3, k3, v3, b, s, go, gs, chunk); break;
    case at::kBFloat16: r = run<c10::BFloat16, float>(q3, k3, v3, b, s, go, gs, chunk); break;
    default: TORCH_CHECK(false, "emulated recurrent CUDA kernels: unsupported dtype ", kind);
  }
  const int64_t N = r[2].size(1);
  return {r[0].view({B, H, T, dv}), r[1].view({B, H, dk, dv}), r[2].view({B, H, N, dk, dv}),
          r[3].view({B, H, T, dk}), r[4].view({B, H, T, dk}), r[5].view({B, H, T, dv}),
          r[6].defined() ? r[6].view({B, H, T}) : r[6], r[7].view({B, H, dk, dv})};
}

}  // namespace fwp::emulated_recurrent

extern "C" {

// fwp::emulated_recurrent::forward_backward for Rust's tests: beta, s0 and grad_state may be NULL;
// `out` receives 8 tensors (NULL for an undefined one).
char* fwp_recurrent_cuda_emulated(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                  const at::Tensor* beta, const at::Tensor* s0, const at::Tensor* grad_out,
                                  const at::Tensor* grad_state, int64_t chunk, at::Tensor** out) {
  return fwp::guarded([&] {
    const auto opt = [](const at::Tensor* t) { return t != nullptr ? *t : at::Tensor(); };
    auto r = fwp::emulated_recurrent::forward_backward(*q, *k, *v, opt(beta), opt(s0), *grad_out, opt(grad_state),
                                                       chunk);
    for (size_t i = 0; i < r.size(); ++i) out[i] = r[i].defined() ? new at::Tensor(std::move(r[i])) : nullptr;
  });
}

}  // extern "C"
