// The fused fast-weight ops: schemas, CPU and CUDA kernels, one autograd Function per rule, and
// the C entry point for Rust.
//
// Public ops (what a traced TorchScript module records):
//   fwp::sum_rule(q, k, v, initial_state?)         -> (out, final_state)
//   fwp::delta_rule(q, k, v, beta, initial_state?) -> (out, final_state)
// Internal ops used by their autograd Functions:
//   fwp::fast_weight_forward(...)  -> (out, final_state, checkpoints, residuals)
//   fwp::fast_weight_backward(...) -> (dq, dk, dv, dbeta, d_initial_state)
// Shapes: q, k [B, H, T, d_k]; v [B, H, T, d_v]; beta [B, H, T]; states [B, H, d_k, d_v];
// checkpoints [B, H, N, d_k, d_v] with N = ceil(T / chunk); residuals [B, H, T, d_v], the delta
// rule's e_t = v_t - S_{t-1}^T k_t, which the CPU backward needs to undo the steps (empty for the
// sum rule and on CUDA, whose backward replays the chunks instead). The final state, the
// checkpoints and the residuals are in the accumulation dtype (fp64 for fp64 inputs, fp32
// otherwise); the rest in the inputs'.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>

#include "fast_weight_cpu.h"
#include "fast_weight_cuda.h"
#include "ffi.h"
#include "op_inputs.h"

namespace fwp {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

enum class CpuIsa { Generic, Avx2, Avx512 };
CpuIsa pick_cpu_isa();

CpuIsa cpu_isa() {
  static const CpuIsa isa = pick_cpu_isa();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Generic: return "generic";
  }
  return "?";
}

// Checks shapes, dtypes and devices (the Rust side checks first; this guards other callers).
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& beta,
                  const OptTensor& s0, int64_t chunk) {
  const InputSizes s = check_fast_weight_inputs(q, k, v, beta, s0);
  TORCH_CHECK(chunk >= 1 && chunk <= s.T, "chunk must be in 1..=T (T = ", s.T, "), got ", chunk);
  return Dims{s.B * s.H, s.T, s.d_k, s.d_v, chunk};
}

// Which build of the CPU kernels runs (fast_weight_cpu.h): the widest this binary has and the CPU
// supports (AVX-512F, else AVX2 + FMA, else the baseline). FWP_CPU_ISA (generic, avx2 or avx512)
// asks for one, and FWP_CPU_GENERIC for the baseline; tests use them to check each. Read once per
// process; asking for a build the CPU lacks is an error, never an illegal instruction.
CpuIsa pick_cpu_isa() {
  const char* want = std::getenv("FWP_CPU_ISA");
  if (std::getenv("FWP_CPU_GENERIC") != nullptr) return CpuIsa::Generic;
#ifdef FWP_HAVE_AVX2
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
#else
  const bool avx2 = false, avx512 = false;
#endif
  if (want == nullptr) return avx512 ? CpuIsa::Avx512 : avx2 ? CpuIsa::Avx2 : CpuIsa::Generic;
  const std::string name(want);
  if (name == "generic") return CpuIsa::Generic;
  TORCH_CHECK(name == "avx2" || name == "avx512", "FWP_CPU_ISA: expected generic, avx2 or avx512, got '", name,
              "'");
  if (name == "avx2") {
    TORCH_CHECK(avx2, "FWP_CPU_ISA=avx2: this CPU (or this build) has no AVX2 + FMA");
    return CpuIsa::Avx2;
  }
  TORCH_CHECK(avx512, "FWP_CPU_ISA=avx512: this CPU (or this build) has no AVX-512F");
  return CpuIsa::Avx512;
}

// Checkpoint interval. CPU: 64 steps (the backward walks each chunk back from the state after it,
// so the interval bounds how many undone steps' roundings add up; the checkpoints take T/64
// states). CUDA: what the device's shared memory allows (fast_weight.cu).
int64_t choose_chunk(const Tensor& q, int64_t dk, int64_t dv) {
  const bool fp64 = acc_type(q.scalar_type()) == at::kDouble;
  if (q.is_cuda()) return cuda_chunk(q, dk, dv, fp64 ? 8 : 4);
  return std::min<int64_t>(64, q.size(2));
}

// The forward; with `save`, also what the backward needs (the checkpoints, and on the CPU the delta
// rule's residuals). Without, the CPU kernel stores neither (inference); CUDA's always writes the
// checkpoints.
std::tuple<Tensor, Tensor, Tensor, Tensor> run_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const OptTensor& beta, const OptTensor& s0, int64_t chunk,
                                                       bool save) {
  const Dims d = check_inputs(q, k, v, beta, s0, chunk);
  const bool delta = has(beta);
  c10::DeviceGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1);
  const auto acc = q.options().dtype(acc_type(q.scalar_type()));
  auto flat = [&](const Tensor& t, int64_t w) { return t.contiguous().view({d.batch_heads, d.T, w}); };
  Tensor q3 = flat(q, d.d_k), k3 = flat(k, d.d_k), v3 = flat(v, d.d_v);
  Tensor b2 = delta ? beta->contiguous().view({d.batch_heads, d.T}) : Tensor();
  Tensor init = has(s0) ? s0->to(acc.dtype()).contiguous().view({d.batch_heads, d.d_k, d.d_v})
                        : at::zeros({d.batch_heads, d.d_k, d.d_v}, acc);
  Tensor out = at::empty({d.batch_heads, d.T, d.d_v}, q.options());
  Tensor state = at::empty({d.batch_heads, d.d_k, d.d_v}, acc);
  const bool checkpoints = save || q.is_cuda();
  Tensor ckpt = checkpoints ? at::empty({d.batch_heads, d.n_chunks(), d.d_k, d.d_v}, acc) : at::empty({0}, acc);
  const bool residuals = save && delta && !q.is_cuda();
  Tensor resid = residuals ? at::empty({d.batch_heads, d.T, d.d_v}, acc) : at::empty({0}, acc);
  if (q.is_cuda()) {
    forward_cuda(q3, k3, v3, b2, init, out, state, ckpt, d, delta);
  } else {
    TORCH_CHECK(q.is_cpu(), "fwp fused fast weights: unsupported device ", q.device());
    switch (cpu_isa()) {
      case CpuIsa::Avx512: avx512::forward_cpu(q3, k3, v3, b2, init, out, state, ckpt, resid, d, delta); break;
      case CpuIsa::Avx2: avx2::forward_cpu(q3, k3, v3, b2, init, out, state, ckpt, resid, d, delta); break;
      case CpuIsa::Generic: generic::forward_cpu(q3, k3, v3, b2, init, out, state, ckpt, resid, d, delta); break;
    }
  }
  return {out.view({B, H, d.T, d.d_v}), state.view({B, H, d.d_k, d.d_v}),
          checkpoints ? ckpt.view({B, H, d.n_chunks(), d.d_k, d.d_v}) : ckpt,
          residuals ? resid.view({B, H, d.T, d.d_v}) : resid};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> forward_kernel(const Tensor& q, const Tensor& k, const Tensor& v,
                                                          const OptTensor& beta, const OptTensor& s0,
                                                          int64_t chunk) {
  return run_forward(q, k, v, beta, s0, chunk, true);
}

// Checks the backward's own inputs against q, k, v (the public schema takes them from anyone).
void check_backward_inputs(const Tensor& grad_out, const OptTensor& grad_state, const Tensor& q,
                           const Tensor& checkpoints, const Tensor& final_state, const Tensor& residuals,
                           const Dims& d, bool delta) {
  const int64_t B = q.size(0), H = q.size(1);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == B && grad_out.size(1) == H &&
                  grad_out.size(2) == d.T && grad_out.size(3) == d.d_v,
              "grad_out: expected the shape of out [B, H, T, d_v] = [", B, ", ", H, ", ", d.T, ", ", d.d_v,
              "], got ", grad_out.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), "grad_out: expected a floating-point dtype, got ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == q.device(), "grad_out: on ", grad_out.device(), " but q is on ", q.device());
  if (has(grad_state)) {
    TORCH_CHECK(grad_state->dim() == 4 && grad_state->size(0) == B && grad_state->size(1) == H &&
                    grad_state->size(2) == d.d_k && grad_state->size(3) == d.d_v,
                "grad_state: expected [B, H, d_k, d_v] = [", B, ", ", H, ", ", d.d_k, ", ", d.d_v, "], got ",
                grad_state->sizes());
    TORCH_CHECK(at::isFloatingType(grad_state->scalar_type()), "grad_state: expected a floating-point dtype");
    TORCH_CHECK(grad_state->device() == q.device(), "grad_state: on ", grad_state->device(), " but q is on ",
                q.device());
  }
  const at::ScalarType acc = acc_type(q.scalar_type());
  TORCH_CHECK(checkpoints.dim() == 5 && checkpoints.size(0) == B && checkpoints.size(1) == H &&
                  checkpoints.size(2) == d.n_chunks() && checkpoints.size(3) == d.d_k &&
                  checkpoints.size(4) == d.d_v,
              "checkpoints: expected [B, H, N, d_k, d_v] = [", B, ", ", H, ", ", d.n_chunks(), ", ", d.d_k, ", ",
              d.d_v, "] (N = ceil(T / chunk) for chunk ", d.chunk, "), got ", checkpoints.sizes());
  TORCH_CHECK(checkpoints.scalar_type() == acc, "checkpoints: expected dtype ", acc, " (the state dtype for ",
              q.scalar_type(), " inputs), got ", checkpoints.scalar_type());
  TORCH_CHECK(checkpoints.device() == q.device(), "checkpoints: on ", checkpoints.device(), " but q is on ",
              q.device());
  TORCH_CHECK(final_state.dim() == 4 && final_state.size(0) == B && final_state.size(1) == H &&
                  final_state.size(2) == d.d_k && final_state.size(3) == d.d_v,
              "final_state: expected [B, H, d_k, d_v] = [", B, ", ", H, ", ", d.d_k, ", ", d.d_v, "], got ",
              final_state.sizes());
  TORCH_CHECK(final_state.scalar_type() == acc, "final_state: expected dtype ", acc, " (the state dtype for ",
              q.scalar_type(), " inputs), got ", final_state.scalar_type());
  TORCH_CHECK(final_state.device() == q.device(), "final_state: on ", final_state.device(), " but q is on ",
              q.device());
  if (delta && !q.is_cuda()) {
    TORCH_CHECK(residuals.dim() == 4 && residuals.size(0) == B && residuals.size(1) == H &&
                    residuals.size(2) == d.T && residuals.size(3) == d.d_v,
                "residuals: expected the forward's [B, H, T, d_v] = [", B, ", ", H, ", ", d.T, ", ", d.d_v,
                "] (the delta rule on the CPU), got ", residuals.sizes());
    TORCH_CHECK(residuals.scalar_type() == acc, "residuals: expected dtype ", acc, ", got ",
                residuals.scalar_type());
    TORCH_CHECK(residuals.device() == q.device(), "residuals: on ", residuals.device(), " but q is on ",
                q.device());
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_kernel(
    const Tensor& grad_out, const OptTensor& grad_state, const Tensor& q, const Tensor& k,
    const Tensor& v, const OptTensor& beta, const Tensor& checkpoints, const Tensor& final_state,
    const Tensor& residuals, int64_t chunk) {
  const Dims d = check_inputs(q, k, v, beta, std::nullopt, chunk);
  const bool delta = has(beta);
  check_backward_inputs(grad_out, grad_state, q, checkpoints, final_state, residuals, d, delta);
  c10::DeviceGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1);
  const auto acc = q.options().dtype(acc_type(q.scalar_type()));
  auto flat = [&](const Tensor& t, int64_t w) { return t.contiguous().view({d.batch_heads, d.T, w}); };
  Tensor go = flat(grad_out.to(q.scalar_type()), d.d_v);
  Tensor q3 = flat(q, d.d_k), k3 = flat(k, d.d_k), v3 = flat(v, d.d_v);
  Tensor b2 = delta ? beta->contiguous().view({d.batch_heads, d.T}) : Tensor();
  Tensor gs = has(grad_state) ? grad_state->to(acc.dtype()).contiguous().view({d.batch_heads, d.d_k, d.d_v})
                              : at::zeros({d.batch_heads, d.d_k, d.d_v}, acc);
  Tensor ckpt = checkpoints.contiguous();
  Tensor last = final_state.contiguous().view({d.batch_heads, d.d_k, d.d_v});
  Tensor resid = delta && !q.is_cuda() ? residuals.contiguous().view({d.batch_heads, d.T, d.d_v}) : residuals;
  Tensor dq = at::empty_like(q3), dk = at::empty_like(k3), dv = at::empty_like(v3);
  Tensor dbeta = delta ? at::empty_like(b2) : at::empty({0}, q.options());
  Tensor ds0 = at::empty({d.batch_heads, d.d_k, d.d_v}, acc);
  if (q.is_cuda()) {
    backward_cuda(go, gs, q3, k3, v3, b2, ckpt, dq, dk, dv, dbeta, ds0, d, delta);
  } else {
    TORCH_CHECK(q.is_cpu(), "fwp fused fast weights: unsupported device ", q.device());
    switch (cpu_isa()) {
      case CpuIsa::Avx512:
        avx512::backward_cpu(go, gs, q3, k3, v3, b2, ckpt, last, resid, dq, dk, dv, dbeta, ds0, d, delta);
        break;
      case CpuIsa::Avx2:
        avx2::backward_cpu(go, gs, q3, k3, v3, b2, ckpt, last, resid, dq, dk, dv, dbeta, ds0, d, delta);
        break;
      case CpuIsa::Generic:
        generic::backward_cpu(go, gs, q3, k3, v3, b2, ckpt, last, resid, dq, dk, dv, dbeta, ds0, d, delta);
        break;
    }
  }
  return {dq.view({B, H, d.T, d.d_k}), dk.view({B, H, d.T, d.d_k}), dv.view({B, H, d.T, d.d_v}),
          delta ? dbeta.view({B, H, d.T}) : dbeta, ds0.view({B, H, d.d_k, d.d_v})};
}

// Typed handles on the internal ops, so autograd Functions call them through the dispatcher.
std::tuple<Tensor, Tensor, Tensor, Tensor> call_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                        const OptTensor& beta, const OptTensor& s0,
                                                        int64_t chunk) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fwp::fast_weight_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t)>();
  return op.call(q, k, v, beta, s0, chunk);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> call_backward(const Tensor& grad_out,
                                                                 const OptTensor& grad_state,
                                                                 const Tensor& q, const Tensor& k,
                                                                 const Tensor& v, const OptTensor& beta,
                                                                 const Tensor& checkpoints,
                                                                 const Tensor& final_state,
                                                                 const Tensor& residuals, int64_t chunk) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fwp::fast_weight_backward", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
              const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
              const OptTensor&, const Tensor&, const Tensor&, const Tensor&, int64_t)>();
  return op.call(grad_out, grad_state, q, k, v, beta, checkpoints, final_state, residuals, chunk);
}

// Forward without autograd (inference, or below the Autograd key): nothing saved for a backward.
std::tuple<Tensor, Tensor> run_rule(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const OptTensor& beta, const OptTensor& s0) {
  auto [out, state, ckpt, resid] = run_forward(q, k, v, beta, s0, choose_chunk(q, q.size(-1), v.size(-1)), false);
  return {out, state};
}

// One autograd Function per rule: Delta = false for the sum rule, true for the delta rule.
template <bool Delta>
struct RuleFunction : public torch::autograd::Function<RuleFunction<Delta>> {
  using variable_list = torch::autograd::variable_list;

  static variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const OptTensor& beta, const OptTensor& s0) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const int64_t chunk = choose_chunk(q, q.size(-1), v.size(-1));
    auto [out, state, ckpt, resid] = call_forward(q, k, v, Delta ? beta : std::nullopt, s0, chunk);
    // the backward starts from the final state: a copy of its own (d_k x d_v per head), so that a
    // caller may update the returned state in place
    const Tensor last = state.clone();
    if (Delta) {
      ctx->save_for_backward({q, k, v, ckpt, last, resid, *beta});
    } else {
      ctx->save_for_backward({q, k, v, ckpt, last, resid});
    }
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["has_s0"] = has(s0);
    if (has(s0)) ctx->saved_data["s0_dtype"] = static_cast<int64_t>(s0->scalar_type());
    return {out, state};
  }

  static variable_list backward(torch::autograd::AutogradContext* ctx, variable_list grads) {
    // With create_graph the engine runs the backward with grad mode on and expects gradients that
    // are themselves differentiable; the kernels' are not, so say so rather than return gradients
    // whose own gradients would silently be missing.
    TORCH_CHECK(!c10::GradMode::is_enabled(), Delta ? "fwp::delta_rule" : "fwp::sum_rule",
                ": the fused kernels have no double backward (a backward with create_graph); use "
                "Backend::Chunked or Backend::Reference for higher-order gradients");
    auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &ckpt = saved[3], &state = saved[4],
                 &resid = saved[5];
    const OptTensor beta = Delta ? OptTensor(saved[6]) : std::nullopt;
    Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros({q.size(0), q.size(1), q.size(2), v.size(3)}, v.options());
    const OptTensor grad_state = grads[1].defined() ? OptTensor(grads[1]) : std::nullopt;
    auto [dq, dk, dv, dbeta, ds0] =
        call_backward(grad_out, grad_state, q, k, v, beta, ckpt, state, resid, ctx->saved_data["chunk"].toInt());
    Tensor ds0_out;
    if (ctx->saved_data["has_s0"].toBool()) {
      ds0_out = ds0.to(static_cast<at::ScalarType>(ctx->saved_data["s0_dtype"].toInt()));
    }
    return {dq, dk, dv, Delta ? dbeta : Tensor(), ds0_out};
  }
};

std::tuple<Tensor, Tensor> sum_rule_kernel(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const OptTensor& s0) {
  return run_rule(q, k, v, std::nullopt, s0);
}

std::tuple<Tensor, Tensor> delta_rule_kernel(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const Tensor& beta, const OptTensor& s0) {
  return run_rule(q, k, v, beta, s0);
}

// Whether a backward can follow: grad mode on and some input requiring a gradient. Otherwise
// (inference) the Autograd kernels run the forward alone, which saves nothing for a backward.
bool wants_grad(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& beta, const OptTensor& s0) {
  const auto req = [](const OptTensor& t) { return has(t) && t->requires_grad(); };
  return c10::GradMode::is_enabled() &&
         (q.requires_grad() || k.requires_grad() || v.requires_grad() || req(beta) || req(s0));
}

std::tuple<Tensor, Tensor> sum_rule_autograd(const Tensor& q, const Tensor& k, const Tensor& v,
                                             const OptTensor& s0) {
  if (!wants_grad(q, k, v, std::nullopt, s0)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return run_rule(q, k, v, std::nullopt, s0);
  }
  auto r = RuleFunction<false>::apply(q, k, v, OptTensor(), s0);
  return {r[0], r[1]};
}

std::tuple<Tensor, Tensor> delta_rule_autograd(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& beta, const OptTensor& s0) {
  if (!wants_grad(q, k, v, beta, s0)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return run_rule(q, k, v, beta, s0);
  }
  auto r = RuleFunction<true>::apply(q, k, v, OptTensor(beta), s0);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace fwp

TORCH_LIBRARY_FRAGMENT(fwp, m) {
  m.def("sum_rule(Tensor q, Tensor k, Tensor v, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def("delta_rule(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? initial_state=None) -> (Tensor, Tensor)");
  m.def("fast_weight_forward(Tensor q, Tensor k, Tensor v, Tensor? beta, Tensor? initial_state, int chunk)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fast_weight_backward(Tensor grad_out, Tensor? grad_state, Tensor q, Tensor k, Tensor v, Tensor? beta,"
        " Tensor checkpoints, Tensor final_state, Tensor residuals, int chunk)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fwp, CPU, m) {
  m.impl("sum_rule", &fwp::sum_rule_kernel);
  m.impl("delta_rule", &fwp::delta_rule_kernel);
  m.impl("fast_weight_forward", &fwp::forward_kernel);
  m.impl("fast_weight_backward", &fwp::backward_kernel);
}

TORCH_LIBRARY_IMPL(fwp, CUDA, m) {
  m.impl("sum_rule", &fwp::sum_rule_kernel);
  m.impl("delta_rule", &fwp::delta_rule_kernel);
  m.impl("fast_weight_forward", &fwp::forward_kernel);
  m.impl("fast_weight_backward", &fwp::backward_kernel);
}

TORCH_LIBRARY_IMPL(fwp, Autograd, m) {
  m.impl("sum_rule", &fwp::sum_rule_autograd);
  m.impl("delta_rule", &fwp::delta_rule_autograd);
}

extern "C" {

// (out, final_state) = fwp::delta_rule(q, k, v, beta, s0) when beta is non-NULL, else
// fwp::sum_rule(q, k, v, s0); s0 may be NULL. Through the dispatcher: autograd and the tracer see it.
char* fwp_fast_weight_fused(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                            const at::Tensor* beta, const at::Tensor* s0, at::Tensor** out,
                            at::Tensor** state) {
  return fwp::guarded([&] {
    static auto sum_op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fwp::sum_rule", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&)>();
    static auto delta_op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fwp::delta_rule", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const std::optional<at::Tensor>&)>();
    const std::optional<at::Tensor> init = s0 ? std::optional<at::Tensor>(*s0) : std::nullopt;
    auto [o, s] = beta ? delta_op.call(*q, *k, *v, *beta, init) : sum_op.call(*q, *k, *v, init);
    *out = new at::Tensor(std::move(o));
    *state = new at::Tensor(std::move(s));
  });
}

// The internal ops as registered, for callers of the raw schema (and the tests of its checks):
// (out, final_state, checkpoints, residuals) = fwp::fast_weight_forward(q, k, v, beta?, s0?, chunk)
// and (dq, dk, dv, dbeta, ds0) = fwp::fast_weight_backward(grad_out, grad_state?, q, k, v, beta?,
// checkpoints, final_state, residuals, chunk). NULL stands for an absent optional tensor.
char* fwp_fast_weight_forward_op(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                 const at::Tensor* beta, const at::Tensor* s0, int64_t chunk,
                                 at::Tensor** out) {
  return fwp::guarded([&] {
    auto opt = [](const at::Tensor* t) { return t ? std::optional<at::Tensor>(*t) : std::nullopt; };
    auto [o, s, c, r] = fwp::call_forward(*q, *k, *v, opt(beta), opt(s0), chunk);
    out[0] = new at::Tensor(std::move(o));
    out[1] = new at::Tensor(std::move(s));
    out[2] = new at::Tensor(std::move(c));
    out[3] = new at::Tensor(std::move(r));
  });
}

char* fwp_fast_weight_backward_op(const at::Tensor* grad_out, const at::Tensor* grad_state,
                                  const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                  const at::Tensor* beta, const at::Tensor* checkpoints,
                                  const at::Tensor* final_state, const at::Tensor* residuals, int64_t chunk,
                                  at::Tensor** out) {
  return fwp::guarded([&] {
    auto opt = [](const at::Tensor* t) { return t ? std::optional<at::Tensor>(*t) : std::nullopt; };
    auto r = fwp::call_backward(*grad_out, opt(grad_state), *q, *k, *v, opt(beta), *checkpoints, *final_state,
                                *residuals, chunk);
    out[0] = new at::Tensor(std::move(std::get<0>(r)));
    out[1] = new at::Tensor(std::move(std::get<1>(r)));
    out[2] = new at::Tensor(std::move(std::get<2>(r)));
    out[3] = new at::Tensor(std::move(std::get<3>(r)));
    out[4] = new at::Tensor(std::move(std::get<4>(r)));
  });
}

// The checkpoint interval the CUDA kernels take for (d_k, T) with `acc_bytes` state values on a
// device with `smem_limit` bytes of opt-in shared memory per block; 0 when not even one step
// fits. Arithmetic only (fast_weight.h): no GPU needed.
char* fwp_fused_cuda_chunk_for(int64_t d_k, int64_t T, int acc_bytes, int64_t smem_limit, int64_t* out) {
  return fwp::guarded([&] { *out = fwp::cuda_chunk_for(d_k, T, acc_bytes, smem_limit); });
}

// The largest d_k the CUDA kernels take for this d_v and dtype on `device` (0 when CUDA is not
// compiled in or no such device); used by Backend::Auto.
char* fwp_fused_cuda_max_dk(int device, int64_t d_v, int acc_bytes, int64_t* out) {
  return fwp::guarded([&] { *out = fwp::cuda_max_dk(device, d_v, acc_bytes); });
}

// The build of the CPU kernels this process runs: "generic", "avx2" or "avx512" (see pick_cpu_isa).
char* fwp_cpu_kernel_isa(const char** name) {
  return fwp::guarded([&] { *name = fwp::cpu_isa_name(fwp::cpu_isa()); });
}

}  // extern "C"
