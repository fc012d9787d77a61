// The chunked fast-weight op (chunked.h): schema, forward and backward from the stages, one autograd
// Function, and the C entry point for Rust.
//
// Public op (what a traced TorchScript module records):
//   fwp::chunked_rule(q, k, v, beta?, initial_state?, chunk=64, operands='exact') -> (out, final_state)
//   (the delta rule when beta is given, else the sum rule; operands 'exact', 'bf16', 'bf16x2' or
//   'bf16x3', chunked.h's Operands)
// Internal ops used by its autograd Function:
//   fwp::chunked_forward(...)  -> (out, final_state, checkpoints)
//   fwp::chunked_backward(...) -> (dq, dk, dv, dbeta, d_initial_state)
// Shapes as fwp::delta_rule's (fast_weight_op.cpp); checkpoints [B, H, N, d_k, d_v] with
// N = ceil(T / chunk), the state entering each chunk, in the accumulation dtype.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "chunked.h"
#include "ffi.h"
#include "op_inputs.h"

namespace fwp::chunked {
namespace {

using OptTensor = std::optional<Tensor>;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct Sizes {
  int64_t B, H, T, dk, dv, C, N;
};

Sizes check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& beta,
                   const OptTensor& s0, int64_t chunk) {
  const InputSizes s = check_fast_weight_inputs(q, k, v, beta, s0);
  TORCH_CHECK(chunk == 16 || chunk == 32 || chunk == 64, "chunk: must be 16, 32 or 64, got ", chunk);
  TORCH_CHECK(q.is_cpu() || q.is_cuda(), "fwp::chunked_rule: unsupported device ", q.device());
  return Sizes{s.B, s.H, s.T, s.d_k, s.d_v, chunk, (s.T + chunk - 1) / chunk};
}

// FWP_CHUNKED_PASSES=first runs the first version of every CUDA stage instead of the fast kernels
// (chunked.h, Passes): a way around the fast kernels should they fail on some GPU. Unset or `fast`:
// the default.
Passes passes_from_environment() {
  const char* v = std::getenv("FWP_CHUNKED_PASSES");
  if (v == nullptr || std::string(v).empty() || std::string(v) == "fast") return Passes::Fast;
  TORCH_CHECK(std::string(v) == "first", "FWP_CHUNKED_PASSES: expected 'fast' or 'first', got '", v, "'");
  return Passes::First;
}

// The operand rounding asked for (chunked.h). The CUDA kernels multiply on the tensor cores, so
// there it must be `bf16` (meant for bf16 inputs), `bf16x2` (fp16) or `bf16x3` (fp32 keeps fp32
// accuracy); fp64 stays with the recurrent fwp::delta_rule / fwp::sum_rule.
Config config(const Tensor& q, int64_t chunk, c10::string_view operands) {
  const Operands ops = parse_operands(std::string(operands));
  if (q.is_cuda()) {
    TORCH_CHECK(q.scalar_type() != at::kDouble, "fwp::chunked_rule: the CUDA kernels take bf16, fp16 or fp32 "
                "inputs, got double (use fwp::delta_rule / fwp::sum_rule, Backend::FusedRecurrent)");
    TORCH_CHECK(ops != Operands::Exact, "fwp::chunked_rule: the CUDA kernels multiply bf16 parts on the tensor "
                "cores; pass operands='bf16' (bf16 inputs), 'bf16x2' (fp16) or 'bf16x3' (fp32)");
  }
  return Config{chunk, ops, passes_from_environment()};
}

// Whether the stages take bf16 inputs as they are: the fast CUDA kernels read them so (chunked_cuda.cpp
// converts for a first-version kernel); the CPU twin computes in the accumulation dtype.
bool keeps_bf16(const Tensor& q, const Config& cfg) { return q.is_cuda() && cfg.passes != Passes::First; }

// The dtype x goes to the stages in: bf16 as it is where `keep_bf16`, else the accumulation dtype.
at::ScalarType stage_type(const Tensor& x, bool keep_bf16) {
  return keep_bf16 && x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : acc_type(x.scalar_type());
}

// [B, H, T, d] -> [BH, N, C, d] in stage_type, T zero-padded to N C: a view of x when it needs no
// conversion, no padding and no reordering (no copy; the stages never write their inputs).
Tensor to_chunks(const Tensor& x, const Sizes& s, bool keep_bf16) {
  const Tensor a = x.to(stage_type(x, keep_bf16));
  const Tensor padded = s.N * s.C == s.T ? a : at::constant_pad_nd(a, {0, 0, 0, s.N * s.C - s.T});
  return padded.reshape({s.B * s.H, s.N, s.C, x.size(3)});
}

Tensor beta_chunks(const Tensor& beta, const Sizes& s, bool keep_bf16) {
  const Tensor a = beta.to(stage_type(beta, keep_bf16));
  const Tensor padded = s.N * s.C == s.T ? a : at::constant_pad_nd(a, {0, s.N * s.C - s.T});
  return padded.reshape({s.B * s.H, s.N, s.C});
}

// [BH, N, C, d] -> [B, H, T, d] in `dtype`, the padding dropped.
Tensor from_chunks(const Tensor& x, const Sizes& s, at::ScalarType dtype) {
  return x.reshape({s.B, s.H, s.N * s.C, x.size(3)}).narrow(2, 0, s.T).to(dtype).contiguous();
}

// A result over all batch·heads, [BH, ...]: on the CPU allocated here, for over_batch_heads' threads
// to fill part by part; on CUDA left undefined, to become the one call's own stage output (no copy).
Tensor result(const Tensor& q, at::IntArrayRef sizes, const at::TensorOptions& options) {
  return q.is_cuda() ? Tensor() : at::empty(sizes, options);
}

// Puts a stage's output for batch·heads [b0, b1) into `dst` (see result()).
void put(Tensor& dst, const Tensor& src, int64_t b0, int64_t b1) {
  if (dst.defined())
    dst.narrow(0, b0, b1 - b0).copy_(src);
  else
    dst = src;
}

// Runs body(b0, b1) over the batch·head range. CPU: split across ATen's threads, each part through
// every stage, so that the many small products inside run without parallel regions of their own
// (ATen runs nested work sequentially): one parallel region per call instead of one per product.
// CUDA: the whole range at once (each stage is one launch).
template <typename F>
void over_batch_heads(const Tensor& q, int64_t BH, const F& body) {
  if (q.is_cuda()) {
    body(0, BH);
  } else {
    at::parallel_for(0, BH, 1, body);
  }
}

std::tuple<Tensor, Tensor, Tensor> forward_kernel(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const OptTensor& beta, const OptTensor& s0, int64_t chunk,
                                                  c10::string_view operands) {
  const Sizes s = check_inputs(q, k, v, beta, s0, chunk);
  const Config cfg = config(q, chunk, operands);
  c10::DeviceGuard guard(q.device());
  const auto acc = q.options().dtype(acc_type(q.scalar_type()));
  const bool bf16 = keeps_bf16(q, cfg);
  const Tensor qc = to_chunks(q, s, bf16), kc = to_chunks(k, s, bf16), vc = to_chunks(v, s, bf16);
  const Tensor init = has(s0) ? s0->to(acc.dtype()).reshape({s.B * s.H, s.dk, s.dv}).clone()
                              : at::zeros({s.B * s.H, s.dk, s.dv}, acc);
  const Tensor bc = has(beta) ? beta_chunks(*beta, s, bf16) : Tensor();
  const int64_t BH = s.B * s.H;
  Tensor out = result(q, {BH, s.N, s.C, s.dv}, acc), state = result(q, {BH, s.dk, s.dv}, acc);
  Tensor checkpoints = result(q, {BH, s.N, s.dk, s.dv}, acc);
  over_batch_heads(q, BH, [&](int64_t b0, int64_t b1) {
    const auto part = [&](const Tensor& t) { return t.defined() ? t.narrow(0, b0, b1 - b0) : t; };
    Tensor w, u = part(vc);
    if (has(beta)) std::tie(std::ignore, w, u) = wy_forward(part(kc), part(vc), part(bc), cfg, /*with_tinv=*/false);
    auto [ckpt, v_new, st] = state_forward(part(kc), w, u, part(init), cfg);
    put(out, output_forward(part(qc), part(kc), v_new, ckpt, cfg), b0, b1);
    put(state, st, b0, b1);
    put(checkpoints, ckpt, b0, b1);
  });
  return {from_chunks(out, s, q.scalar_type()), state.view({s.B, s.H, s.dk, s.dv}),
          checkpoints.view({s.B, s.H, s.N, s.dk, s.dv})};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_kernel(const Tensor& grad_out,
                                                                   const OptTensor& grad_state, const Tensor& q,
                                                                   const Tensor& k, const Tensor& v,
                                                                   const OptTensor& beta, const Tensor& checkpoints,
                                                                   int64_t chunk, c10::string_view operands) {
  const Sizes s = check_inputs(q, k, v, beta, std::nullopt, chunk);
  const Config cfg = config(q, chunk, operands);
  c10::DeviceGuard guard(q.device());
  const at::ScalarType acc = acc_type(q.scalar_type());
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == s.B && grad_out.size(1) == s.H && grad_out.size(2) == s.T &&
                  grad_out.size(3) == s.dv,
              "grad_out: expected the shape of out [B, H, T, d_v] = [", s.B, ", ", s.H, ", ", s.T, ", ", s.dv,
              "], got ", grad_out.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()), "grad_out: expected a floating-point dtype");
  if (has(grad_state))
    TORCH_CHECK(grad_state->dim() == 4 && grad_state->size(0) == s.B && grad_state->size(1) == s.H &&
                    grad_state->size(2) == s.dk && grad_state->size(3) == s.dv,
                "grad_state: expected [B, H, d_k, d_v] = [", s.B, ", ", s.H, ", ", s.dk, ", ", s.dv, "], got ",
                grad_state->sizes());
  TORCH_CHECK(checkpoints.dim() == 5 && checkpoints.size(0) == s.B && checkpoints.size(1) == s.H &&
                  checkpoints.size(2) == s.N && checkpoints.size(3) == s.dk && checkpoints.size(4) == s.dv &&
                  checkpoints.scalar_type() == acc,
              "checkpoints: expected ", acc, " [B, H, N, d_k, d_v] = [", s.B, ", ", s.H, ", ", s.N, ", ", s.dk, ", ",
              s.dv, "] (N = ceil(T / chunk) for chunk ", chunk, "), got ", checkpoints.scalar_type(), " ",
              checkpoints.sizes());
  const bool bf16 = keeps_bf16(q, cfg);
  const Tensor qc = to_chunks(q, s, bf16), kc = to_chunks(k, s, bf16), vc = to_chunks(v, s, bf16);
  const Tensor go = to_chunks(grad_out, s, bf16);
  const Tensor ckpt = checkpoints.reshape({s.B * s.H, s.N, s.dk, s.dv});
  const Tensor gs = has(grad_state) ? grad_state->to(acc).reshape({s.B * s.H, s.dk, s.dv})
                                    : at::zeros({s.B * s.H, s.dk, s.dv}, q.options().dtype(acc));
  const bool delta = has(beta);
  const Tensor bc = delta ? beta_chunks(*beta, s, bf16) : Tensor();
  const int64_t BH = s.B * s.H;
  Tensor dq = result(q, qc.sizes(), qc.options()), dk = result(q, kc.sizes(), kc.options());
  Tensor dv = result(q, vc.sizes(), vc.options()), ds0 = result(q, {BH, s.dk, s.dv}, qc.options());
  Tensor dbeta = delta ? result(q, bc.sizes(), bc.options()) : Tensor();
  over_batch_heads(q, BH, [&](int64_t b0, int64_t b1) {
    const auto part = [&](const Tensor& t) { return t.defined() ? t.narrow(0, b0, b1 - b0) : t; };
    Tensor tinv, w, u = part(vc);
    if (delta) std::tie(tinv, w, u) = wy_forward(part(kc), part(vc), part(bc), cfg);  // B1: recompute
    const Tensor v_new = values_from_checkpoints(w, u, part(ckpt), cfg);
    const Tensor dv_local = local_value_grad(part(qc), part(kc), part(go), cfg);
    auto [dv_new, ds_next, d0] = state_backward(part(qc), part(kc), w, part(go), dv_local, part(gs), cfg);
    auto [gq, gk, gv, gb] = input_grads(part(qc), part(kc), part(vc), part(bc), tinv, w, v_new, part(ckpt), ds_next,
                                        part(go), dv_new, cfg);
    put(dq, gq, b0, b1);
    put(dk, gk, b0, b1);
    put(dv, gv, b0, b1);
    if (delta) put(dbeta, gb, b0, b1);
    put(ds0, d0, b0, b1);
  });
  const at::ScalarType dt = q.scalar_type();
  Tensor dbeta_out = has(beta) ? dbeta.reshape({s.B, s.H, s.N * s.C}).narrow(2, 0, s.T).to(dt).contiguous()
                               : at::empty({0}, q.options());
  return {from_chunks(dq, s, dt), from_chunks(dk, s, dt), from_chunks(dv, s, dt), dbeta_out,
          ds0.view({s.B, s.H, s.dk, s.dv})};
}

std::tuple<Tensor, Tensor, Tensor> call_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const OptTensor& beta, const OptTensor& s0, int64_t chunk,
                                                c10::string_view operands) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fwp::chunked_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                 const OptTensor&, const OptTensor&, int64_t, c10::string_view)>();
  return op.call(q, k, v, beta, s0, chunk, operands);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> call_backward(const Tensor& grad_out,
                                                                 const OptTensor& grad_state, const Tensor& q,
                                                                 const Tensor& k, const Tensor& v,
                                                                 const OptTensor& beta, const Tensor& checkpoints,
                                                                 int64_t chunk, c10::string_view operands) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fwp::chunked_backward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
                           const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
                           const OptTensor&, const Tensor&, int64_t, c10::string_view)>();
  return op.call(grad_out, grad_state, q, k, v, beta, checkpoints, chunk, operands);
}

std::tuple<Tensor, Tensor> rule_kernel(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& beta,
                                       const OptTensor& s0, int64_t chunk, c10::string_view operands) {
  auto [out, state, checkpoints] = call_forward(q, k, v, beta, s0, chunk, operands);
  return {out, state};
}

struct ChunkedFunction : public torch::autograd::Function<ChunkedFunction> {
  using variable_list = torch::autograd::variable_list;

  static variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const OptTensor& beta, const OptTensor& s0, int64_t chunk,
                               c10::string_view operands) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, state, checkpoints] = call_forward(q, k, v, beta, s0, chunk, operands);
    const bool delta = has(beta);
    if (delta) {
      ctx->save_for_backward({q, k, v, checkpoints, *beta});
    } else {
      ctx->save_for_backward({q, k, v, checkpoints});
    }
    ctx->saved_data["delta"] = delta;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["operands"] = std::string(operands);
    ctx->saved_data["has_s0"] = has(s0);
    if (has(s0)) ctx->saved_data["s0_dtype"] = static_cast<int64_t>(s0->scalar_type());
    return {out, state};
  }

  static variable_list backward(torch::autograd::AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "fwp::chunked_rule: the chunked kernels have no double backward (a backward with create_graph); "
                "use Backend::Chunked or Backend::Reference for higher-order gradients");
    auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &checkpoints = saved[3];
    const bool delta = ctx->saved_data["delta"].toBool();
    const OptTensor beta = delta ? OptTensor(saved[4]) : std::nullopt;
    const Tensor grad_out =
        grads[0].defined() ? grads[0] : at::zeros({q.size(0), q.size(1), q.size(2), v.size(3)}, v.options());
    const OptTensor grad_state = grads[1].defined() ? OptTensor(grads[1]) : std::nullopt;
    auto [dq, dk, dv, dbeta, ds0] = call_backward(grad_out, grad_state, q, k, v, beta, checkpoints,
                                                  ctx->saved_data["chunk"].toInt(),
                                                  ctx->saved_data["operands"].toStringRef());
    Tensor ds0_out;
    if (ctx->saved_data["has_s0"].toBool())
      ds0_out = ds0.to(static_cast<at::ScalarType>(ctx->saved_data["s0_dtype"].toInt()));
    return {dq, dk, dv, delta ? dbeta : Tensor(), ds0_out, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> rule_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& beta,
                                         const OptTensor& s0, int64_t chunk, c10::string_view operands) {
  auto r = ChunkedFunction::apply(q, k, v, beta, s0, chunk, operands);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace fwp::chunked

TORCH_LIBRARY_FRAGMENT(fwp, m) {
  m.def("chunked_rule(Tensor q, Tensor k, Tensor v, Tensor? beta, Tensor? initial_state=None, int chunk=64,"
        " str operands='exact') -> (Tensor, Tensor)");
  m.def("chunked_forward(Tensor q, Tensor k, Tensor v, Tensor? beta, Tensor? initial_state, int chunk,"
        " str operands) -> (Tensor, Tensor, Tensor)");
  m.def("chunked_backward(Tensor grad_out, Tensor? grad_state, Tensor q, Tensor k, Tensor v, Tensor? beta,"
        " Tensor checkpoints, int chunk, str operands) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fwp, CPU, m) {
  m.impl("chunked_rule", &fwp::chunked::rule_kernel);
  m.impl("chunked_forward", &fwp::chunked::forward_kernel);
  m.impl("chunked_backward", &fwp::chunked::backward_kernel);
}

TORCH_LIBRARY_IMPL(fwp, CUDA, m) {
  m.impl("chunked_rule", &fwp::chunked::rule_kernel);
  m.impl("chunked_forward", &fwp::chunked::forward_kernel);
  m.impl("chunked_backward", &fwp::chunked::backward_kernel);
}

TORCH_LIBRARY_IMPL(fwp, Autograd, m) { m.impl("chunked_rule", &fwp::chunked::rule_autograd); }

namespace {
// The C ABI's operand code: 0 exact, 1 bf16, 2 bf16x3, 3 bf16x2 (the enum's order).
fwp::chunked::Operands operands_of(int code) {
  TORCH_CHECK(code >= 0 && code <= 3, "operands: expected 0 (exact), 1 (bf16), 2 (bf16x3) or 3 (bf16x2), got ",
              code);
  return static_cast<fwp::chunked::Operands>(code);
}
}  // namespace

extern "C" {

// (out, final_state) = fwp::chunked_rule(q, k, v, beta, s0, chunk, operands); beta NULL for
// the sum rule, s0 may be NULL; operands 0 exact, 1 bf16, 2 bf16x3, 3 bf16x2. Through the dispatcher: autograd and the tracer see it.
char* fwp_fast_weight_chunked_kernel(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                     const at::Tensor* beta, const at::Tensor* s0, int64_t chunk,
                                     int operands, at::Tensor** out, at::Tensor** state) {
  return fwp::guarded([&] {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fwp::chunked_rule", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t,
                             c10::string_view)>();
    auto opt = [](const at::Tensor* t) { return t ? std::optional<at::Tensor>(*t) : std::nullopt; };
    auto [o, s] = op.call(*q, *k, *v, opt(beta), opt(s0), chunk, fwp::chunked::operands_name(operands_of(operands)));
    *out = new at::Tensor(std::move(o));
    *state = new at::Tensor(std::move(s));
  });
}

// One stage of chunked.h on its own, for tests that compare the CUDA kernels with the CPU twin stage by
// stage: the implementation follows the device of the inputs. `stage` names it (wy, state_forward,
// values, output, local_grad, state_backward, input_grads); `in` holds its tensor arguments in the
// order of chunked.h (NULL for an undefined one), `out` receives its results (NULL for undefined).
char* fwp_chunked_stage(const char* stage, const at::Tensor* const* in, int n_in, int64_t chunk, int operands,
                        at::Tensor** out, int* n_out) {
  return fwp::guarded([&] {
    using fwp::chunked::Passes;
    using fwp::chunked::Tensor;
    // `<stage>:fast`, `:first`, `:emulated1`, `:emulated2`, `:emulated_first` pick the stage's kernel
    // (chunked.h, Passes)
    std::string name(stage);
    Passes passes = Passes::Fast;
    if (const size_t colon = name.find(':'); colon != std::string::npos) {
      const std::string which = name.substr(colon + 1);
      name = name.substr(0, colon);
      TORCH_CHECK(name == "wy" || name == "state_forward" || name == "state_backward" || name == "values" ||
                      name == "output" || name == "local_grad" || name == "input_grads",
                  "fwp_chunked_stage: unknown stage '", name, "' in '", stage, "'");
      TORCH_CHECK(which == "fast" || which == "first" || which == "emulated1" || which == "emulated2" ||
                      which == "emulated_first",
                  "fwp_chunked_stage: unknown passes '", which,
                  "' (fast, first, emulated1, emulated2 or emulated_first)");
      passes = which == "first"            ? Passes::First
               : which == "emulated1"      ? Passes::Emulated1
               : which == "emulated2"      ? Passes::Emulated2
               : which == "emulated_first" ? Passes::EmulatedFirst
                                           : Passes::Fast;
    }
    const fwp::chunked::Config cfg{chunk, operands_of(operands), passes};
    std::vector<Tensor> a;
    for (int i = 0; i < n_in; ++i) a.push_back(in[i] ? *in[i] : Tensor());
    auto need = [&](int n) {
      TORCH_CHECK(n_in == n, "fwp_chunked_stage ", stage, ": expected ", n, " inputs, got ", n_in);
    };
    std::vector<Tensor> r;
    if (name == "wy") {
      need(3);
      auto [t, w, u] = fwp::chunked::wy_forward(a[0], a[1], a[2], cfg);
      r = {t, w, u};
    } else if (name == "state_forward") {
      need(4);
      auto [c, v, s] = fwp::chunked::state_forward(a[0], a[1], a[2], a[3], cfg);
      r = {c, v, s};
    } else if (name == "values") {
      need(3);
      r = {fwp::chunked::values_from_checkpoints(a[0], a[1], a[2], cfg)};
    } else if (name == "output") {
      need(4);
      r = {fwp::chunked::output_forward(a[0], a[1], a[2], a[3], cfg)};
    } else if (name == "local_grad") {
      need(3);
      r = {fwp::chunked::local_value_grad(a[0], a[1], a[2], cfg)};
    } else if (name == "state_backward") {
      need(6);
      auto [dv, dsn, ds0] = fwp::chunked::state_backward(a[0], a[1], a[2], a[3], a[4], a[5], cfg);
      r = {dv, dsn, ds0};
    } else if (name == "input_grads") {
      need(11);
      auto [dq, dk, dv, db] =
          fwp::chunked::input_grads(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], cfg);
      r = {dq, dk, dv, db};
    } else {
      TORCH_CHECK(false, "fwp_chunked_stage: unknown stage '", name, "'");
    }
    for (size_t i = 0; i < r.size(); ++i) out[i] = r[i].defined() ? new at::Tensor(std::move(r[i])) : nullptr;
    *n_out = int(r.size());
  });
}

}  // extern "C"
