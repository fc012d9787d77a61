// Host side of the chunked stages' CUDA kernels (chunked.cu): the twin's stage functions
// (chunked.h) for CUDA tensors. Allocates outputs and scratch, launches on PyTorch's current
// stream. The kernels take chunks of 64 and multiply on the tensor cores: Operands::Bf16, Bf16x2 or
// Bf16x3.

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <cstdlib>

#include "chunked.h"

#ifdef FWP_WITH_CUDA
#include "chunked_launch.h"
#include "fast_weight_launch.h"
// Exported by libtorch_cuda: PyTorch's current stream on a device.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
extern "C" const char* fwp_cuda_error_string(int code);
#endif

namespace fwp::chunked::cuda {

#ifdef FWP_WITH_CUDA
namespace {

void check_config(const Config& cfg) {
  TORCH_CHECK(cfg.chunk == fwp_chunked_cuda_chunk(), "fwp::chunked_rule (CUDA): the kernels take chunks of ",
              fwp_chunked_cuda_chunk(), " steps, got ", cfg.chunk);
  TORCH_CHECK(cfg.operands != Operands::Exact,
              "fwp::chunked_rule (CUDA): the kernels multiply bf16 parts on the tensor cores; pass "
              "operands='bf16' (bf16 / fp16 inputs) or 'bf16x3' (fp32 inputs)");
}

// The floor on bf16 parts per operand (chunked_launch.h).
int parts(const Config& cfg) { return operand_parts(cfg.operands); }

bool is_bf16(const Tensor& t) { return t.defined() && t.scalar_type() == at::kBFloat16; }

// The stages of shared memory the fast pass gets on the current device (chunked_launch.h), or 0 for
// the first-version kernel: asked for (Passes::First), d_k > 256, or too little shared memory.
// Forward: (a, b, c, d) = (k, w, u, -); backward: (k, w, q, dO); bf16 ones take half the space.
int pass_stages(const Config& cfg, int64_t dk, bool backward, const Tensor& a, const Tensor& w, const Tensor& c,
                const Tensor& d) {
  if (cfg.passes == Passes::First) return 0;
  const int bf16 = (is_bf16(a) ? FWP_PASS_K_BF16 : 0) | (is_bf16(w) ? FWP_PASS_W_BF16 : 0) |
                   (is_bf16(c) ? FWP_PASS_UQ_BF16 : 0) | (is_bf16(d) ? FWP_PASS_DO_BF16 : 0);
  return fwp_chunked_cuda_pass_stages(dk, backward ? 1 : 0, w.defined() ? 1 : 0, bf16);
}

void* stream(const Tensor& t) {
  void* s = nullptr;
  TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device(), &s) == 0,
              "fwp::chunked_rule: cannot get the current CUDA stream");
  return s;
}

// With FWP_CUDA_SYNC set, each stage waits for its kernel, so that a fault inside a kernel is blamed
// on its own stage rather than on a later call (for first runs and debugging; slower).
bool sync_each_stage() {
  static const bool yes = std::getenv("FWP_CUDA_SYNC") != nullptr;
  return yes;
}

void launched(int code, const char* stage, void* stream) {
  TORCH_CHECK(code == 0, "fwp::chunked_rule: CUDA stage ", stage, " failed to launch: ", fwp_cuda_error_string(code));
  if (sync_each_stage()) {
    const int run = fwp_chunked_cuda_sync(stream);
    TORCH_CHECK(run == 0, "fwp::chunked_rule: CUDA stage ", stage, " failed: ", fwp_cuda_error_string(run));
  }
}

// The kernels trust their inputs: check the chunk length and the sizes they share.
void check_chunks(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.size(2) == fwp_chunked_cuda_chunk(), "fwp::chunked_rule (CUDA): ", name,
              " must be [BH, N, ", fwp_chunked_cuda_chunk(), ", d], got ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1, "fwp::chunked_rule (CUDA): ", name, " has no chunk (N = 0)");
  TORCH_CHECK(x.size(1) <= fwp_chunked_cuda_max_chunks(), "fwp::chunked_rule (CUDA): ", name, " has ", x.size(1),
              " chunks; the kernels take at most ", fwp_chunked_cuda_max_chunks(), " (T <= ",
              fwp_chunked_cuda_max_chunks() * fwp_chunked_cuda_chunk(), " steps)");
}

// `x` has the sizes `want`: the kernels index every argument by the sizes of the first ones. An
// undefined `x` is an error unless `optional` (the sum rule's beta, T~ and W).
void check_sizes(const Tensor& x, at::IntArrayRef want, const char* name, bool optional = false) {
  if (!x.defined()) {
    TORCH_CHECK(optional, "fwp::chunked_rule (CUDA): ", name, " is missing");
    return;
  }
  TORCH_CHECK(x.sizes() == want, "fwp::chunked_rule (CUDA): ", name, " must be ", want, ", got ", x.sizes());
}

// fp32, contiguous, on the GPU (undefined stays undefined).
Tensor in(const Tensor& t) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kFloat, "fwp::chunked_rule (CUDA): stages take fp32 CUDA "
              "tensors, got ", t.scalar_type(), " on ", t.device());
  return t.contiguous();
}

const float* p(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* p(Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// An input that may be bf16: the caller's (q, k, v, beta, dO; the sum rule's U' = V) or an
// operand-only intermediate (W, U', T~, dU'; chunked.h, fast_operand_type). The fast kernels read
// fp32 or bf16 as it is (`fast`), the first-version kernels take fp32, converted here.
Tensor user(const Tensor& t, bool fast) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.is_cuda() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              "fwp::chunked_rule (CUDA): stages take fp32 or bf16 inputs (q, k, v, beta, dO) and operands "
              "(W, U', T~, dU'), fp32 for the rest, got ", t.scalar_type(), " on ", t.device());
  return (fast ? t : t.to(at::kFloat)).contiguous();
}

FwpIn arg(const Tensor& t) {
  return t.defined() ? FwpIn{t.data_ptr(), t.scalar_type() == at::kBFloat16 ? 1 : 0} : FwpIn{nullptr, 0};
}

FwpOut res(Tensor& t) {
  return t.defined() ? FwpOut{t.data_ptr(), t.scalar_type() == at::kBFloat16 ? 1 : 0} : FwpOut{nullptr, 0};
}

at::TensorOptions f32(const Tensor& t) { return t.options().dtype(at::kFloat); }

// Where the fast kernels write: an op result in the caller's dtype (fast_result_type of q) or an
// operand-only intermediate (fast_operand_type); the first-version kernels write fp32.
at::TensorOptions result_options(const Tensor& q, bool fast) {
  return q.options().dtype(fast ? fast_result_type(q) : at::kFloat);
}
at::TensorOptions operand_options(const Tensor& t, const Config& cfg, bool fast) {
  return t.options().dtype(fast ? fast_operand_type(cfg) : at::kFloat);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k_, const Tensor& v_, const Tensor& beta_,
                                              const Config& cfg, bool with_tinv) {
  check_config(cfg);
  const c10::DeviceGuard guard(k_.device());
  const bool fast = cfg.passes != Passes::First;
  const Tensor k = user(k_, fast), v = user(v_, fast), beta = user(beta_, fast);
  check_chunks(k, "k");
  check_chunks(v, "v");
  const int64_t BH = k.size(0), N = k.size(1), C = k.size(2), dk = k.size(3), dv = v.size(3);
  check_sizes(v, {BH, N, C, dv}, "v");
  check_sizes(beta, {BH, N, C}, "beta");
  Tensor u = at::empty({BH, N, C, dv}, f32(k));
  if (fast) {
    Tensor tinv = with_tinv ? at::empty({BH, N, C, C}, operand_options(k, cfg, true)) : Tensor();
    Tensor w = at::empty({BH, N, C, dk}, operand_options(k, cfg, true));
    launched(fwp_chunked_cuda_wy_rows(arg(k), arg(v), arg(beta), res(tinv), res(w), p(u), BH, N, dk, dv, parts(cfg),
                                      stream(k)),
             "wy (fast)", stream(k));
    return {tinv, w, u};
  }
  Tensor tinv = at::empty({BH, N, C, C}, f32(k)), w = at::empty({BH, N, C, dk}, f32(k));
  Tensor a = at::empty_like(tinv);
  launched(fwp_chunked_cuda_wy(p(k), p(v), p(beta), p(tinv), p(w), p(u), p(a), BH, N, dk, dv, parts(cfg), stream(k)), "wy",
           stream(k));
  return {tinv, w, u};
}

std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k_, const Tensor& w_, const Tensor& u_,
                                                 const Tensor& s0_, const Config& cfg) {
  check_config(cfg);
  const c10::DeviceGuard guard(k_.device());
  check_chunks(k_, "k");
  const int stages = pass_stages(cfg, k_.size(3), false, k_, w_, u_, Tensor());
  const Tensor k = user(k_, stages > 0), w = user(w_, stages > 0), u = user(u_, stages > 0), s0 = in(s0_);
  check_chunks(u, "u");
  const int64_t BH = k.size(0), N = k.size(1), C = k.size(2), dk = k.size(3), dv = u.size(3);
  check_sizes(w, {BH, N, C, dk}, "w", true);
  check_sizes(u, {BH, N, C, dv}, "u");
  check_sizes(s0, {BH, dk, dv}, "s0");
  Tensor ckpt = at::empty({BH, N, dk, dv}, f32(k)), state = at::empty({BH, dk, dv}, f32(k));
  Tensor v_new = w.defined() ? at::empty({BH, N, C, dv}, operand_options(u, cfg, stages > 0)) : u;
  if (stages > 0) {
    launched(fwp_chunked_cuda_state_forward_pass(arg(k), arg(w), arg(u), p(s0), p(ckpt),
                                                 w.defined() ? res(v_new) : FwpOut{nullptr, 0}, p(state), BH, N, dk,
                                                 dv, parts(cfg), stages, stream(k)),
             "state_forward (fast pass)", stream(k));
    return {ckpt, v_new, state};
  }
  launched(fwp_chunked_cuda_state_forward(p(k), p(w), p(u), p(s0), p(ckpt), w.defined() ? p(v_new) : nullptr,
                                          p(state), BH, N, dk, dv, parts(cfg), stream(k)),
           "state_forward", stream(k));
  return {ckpt, v_new, state};
}

Tensor values_from_checkpoints(const Tensor& w_, const Tensor& u_, const Tensor& ckpt_, const Config& cfg) {
  check_config(cfg);
  if (!w_.defined()) return u_;
  const c10::DeviceGuard guard(u_.device());
  const bool fast = cfg.passes != Passes::First;
  const Tensor w = user(w_, fast), u = in(u_), ckpt = in(ckpt_);
  check_chunks(w, "w");
  check_chunks(u, "u");
  check_sizes(u, {w.size(0), w.size(1), w.size(2), u.size(3)}, "u");
  check_sizes(ckpt, {w.size(0), w.size(1), w.size(3), u.size(3)}, "checkpoints");
  Tensor v_new = at::empty(u.sizes(), operand_options(u, cfg, fast));
  if (fast) {
    launched(fwp_chunked_cuda_values_rows(arg(w), p(u), p(ckpt), res(v_new), u.size(0), u.size(1), w.size(3),
                                          u.size(3), parts(cfg), stream(u)),
             "values (fast)", stream(u));
    return v_new;
  }
  launched(fwp_chunked_cuda_values(p(w), p(u), p(ckpt), p(v_new), u.size(0), u.size(1), w.size(3), u.size(3),
                                   parts(cfg), stream(u)),
           "values", stream(u));
  return v_new;
}

Tensor output_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_new_, const Tensor& ckpt_,
                      const Config& cfg) {
  check_config(cfg);
  const c10::DeviceGuard guard(q_.device());
  const bool fast = cfg.passes != Passes::First;
  const Tensor q = user(q_, fast), k = user(k_, fast), v_new = user(v_new_, fast), ckpt = in(ckpt_);
  check_chunks(q, "q");
  check_chunks(v_new, "v_new");
  const int64_t BH = q.size(0), N = q.size(1), C = q.size(2);
  check_sizes(k, q.sizes(), "k");
  check_sizes(v_new, {BH, N, C, v_new.size(3)}, "v_new");
  check_sizes(ckpt, {BH, N, q.size(3), v_new.size(3)}, "checkpoints");
  Tensor out = at::empty(v_new.sizes(), result_options(q, fast));
  if (fast) {
    launched(fwp_chunked_cuda_output_rows(arg(q), arg(k), arg(v_new), p(ckpt), res(out), BH, N, q.size(3),
                                          v_new.size(3), parts(cfg), stream(q)),
             "output (fast)", stream(q));
    return out;
  }
  Tensor qk = at::empty({BH, N, C, C}, f32(q));
  launched(fwp_chunked_cuda_output(p(q), p(k), p(v_new), p(ckpt), p(out), p(qk), BH, N, q.size(3), v_new.size(3),
                                   parts(cfg), stream(q)),
           "output", stream(q));
  return out;
}

Tensor local_value_grad(const Tensor& q_, const Tensor& k_, const Tensor& grad_out_, const Config& cfg) {
  check_config(cfg);
  const c10::DeviceGuard guard(q_.device());
  const bool fast = cfg.passes != Passes::First;
  const Tensor q = user(q_, fast), k = user(k_, fast), grad_out = user(grad_out_, fast);
  check_chunks(q, "q");
  check_chunks(grad_out, "grad_out");
  const int64_t BH = q.size(0), N = q.size(1), C = q.size(2);
  check_sizes(k, q.sizes(), "k");
  check_sizes(grad_out, {BH, N, C, grad_out.size(3)}, "grad_out");
  Tensor dv_local = at::empty(grad_out.sizes(), f32(grad_out));
  if (fast) {
    launched(fwp_chunked_cuda_local_grad_rows(arg(q), arg(k), arg(grad_out), p(dv_local), BH, N, q.size(3),
                                              grad_out.size(3), parts(cfg), stream(q)),
             "local_grad (fast)", stream(q));
    return dv_local;
  }
  Tensor qk = at::empty({BH, N, C, C}, f32(q));
  launched(fwp_chunked_cuda_local_grad(p(q), p(k), p(grad_out), p(dv_local), p(qk), BH, N, q.size(3),
                                       grad_out.size(3), parts(cfg), stream(q)),
           "local_grad", stream(q));
  return dv_local;
}

std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q_, const Tensor& k_, const Tensor& w_,
                                                  const Tensor& grad_out_, const Tensor& dv_local_,
                                                  const Tensor& ds_final_, const Config& cfg) {
  check_config(cfg);
  const c10::DeviceGuard guard(q_.device());
  check_chunks(q_, "q");
  const int stages = pass_stages(cfg, q_.size(3), true, k_, w_, q_, grad_out_);
  const Tensor q = user(q_, stages > 0), k = user(k_, stages > 0), w = user(w_, stages > 0),
               grad_out = user(grad_out_, stages > 0), dv_local = in(dv_local_), ds_final = in(ds_final_);
  check_chunks(grad_out, "grad_out");
  const int64_t BH = q.size(0), N = q.size(1), dk = q.size(3), dv = grad_out.size(3);
  check_sizes(k, q.sizes(), "k");
  check_sizes(w, q.sizes(), "w", true);
  check_sizes(grad_out, {BH, N, q.size(2), dv}, "grad_out");
  check_sizes(dv_local, grad_out.sizes(), "dv_local");
  check_sizes(ds_final, {BH, dk, dv}, "ds_final");
  // dU': for the delta rule an operand of B3's products; for the sum rule the op's dV
  Tensor dv_new = at::empty(dv_local.sizes(), w.defined() ? operand_options(q, cfg, stages > 0)
                                                          : result_options(q, stages > 0));
  Tensor ds_next = at::empty({BH, N, dk, dv}, f32(q)), ds0 = at::empty({BH, dk, dv}, f32(q));
  if (stages > 0) {
    launched(fwp_chunked_cuda_state_backward_pass(arg(q), arg(k), arg(w), arg(grad_out), p(dv_local), p(ds_final),
                                                  res(dv_new), p(ds_next), p(ds0), BH, N, dk, dv, parts(cfg), stages,
                                                  stream(q)),
             "state_backward (fast pass)", stream(q));
    return {dv_new, ds_next, ds0};
  }
  launched(fwp_chunked_cuda_state_backward(p(q), p(k), p(w), p(grad_out), p(dv_local), p(ds_final), p(dv_new),
                                           p(ds_next), p(ds0), BH, N, dk, dv, parts(cfg), stream(q)),
           "state_backward", stream(q));
  return {dv_new, ds_next, ds0};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                       const Tensor& beta_, const Tensor& tinv_, const Tensor& w_,
                                                       const Tensor& v_new_, const Tensor& ckpt_,
                                                       const Tensor& ds_next_, const Tensor& grad_out_,
                                                       const Tensor& dv_new_, const Config& cfg) {
  check_config(cfg);
  const c10::DeviceGuard guard(q_.device());
  const bool fast = cfg.passes != Passes::First;
  const Tensor q = user(q_, fast), k = user(k_, fast), v = user(v_, fast), beta = user(beta_, fast),
               tinv = user(tinv_, fast), w = user(w_, fast), v_new = user(v_new_, fast), ckpt = in(ckpt_),
               ds_next = in(ds_next_), grad_out = user(grad_out_, fast), dv_new = user(dv_new_, fast);
  check_chunks(q, "q");
  check_chunks(v, "v");
  const bool delta = tinv.defined();
  const int64_t BH = q.size(0), N = q.size(1), C = q.size(2), dk = q.size(3), dv = v.size(3);
  check_sizes(tinv, {BH, N, C, C}, "tinv", true);
  check_sizes(k, q.sizes(), "k");
  check_sizes(v, {BH, N, C, dv}, "v");
  check_sizes(beta, {BH, N, C}, "beta", !delta);
  check_sizes(w, q.sizes(), "w", !delta);
  check_sizes(v_new, v.sizes(), "v_new");
  check_sizes(grad_out, v.sizes(), "grad_out");
  check_sizes(dv_new, v.sizes(), "dv_new");
  check_sizes(ckpt, {BH, N, dk, dv}, "checkpoints");
  check_sizes(ds_next, {BH, N, dk, dv}, "ds_next");
  const auto ro = result_options(q, fast);
  Tensor dq = at::empty(q.sizes(), ro), dkt = at::empty(k.sizes(), ro);
  Tensor dvt = delta ? at::empty(v.sizes(), ro) : Tensor();
  Tensor dbeta = delta ? at::empty(beta.sizes(), ro) : Tensor();
  if (fast) {
    Tensor dw = delta ? at::empty(q.sizes(), operand_options(q, cfg, true)) : Tensor();  // dW, the kernel's scratch
    launched(fwp_chunked_cuda_input_grads_rows(arg(q), arg(k), arg(v), arg(beta), arg(tinv), arg(v_new), p(ckpt),
                                               p(ds_next), arg(grad_out), arg(dv_new), res(dq), res(dkt), res(dvt),
                                               res(dbeta), res(dw), BH, N, dk, dv, parts(cfg), stream(q)),
             "input_grads (fast)", stream(q));
    return {dq, dkt, delta ? dvt : dv_new, dbeta};
  }
  Tensor scratch = at::empty({BH, N, fwp_chunked_cuda_scratch_per_chunk(dk, dv)}, f32(q));
  launched(fwp_chunked_cuda_input_grads(p(q), p(k), p(v), p(beta), p(tinv), p(w), p(v_new), p(ckpt), p(ds_next),
                                        p(grad_out), p(dv_new), p(dq), p(dkt), p(dvt), p(dbeta), p(scratch), BH, N,
                                        dk, dv, parts(cfg), stream(q)),
           "input_grads", stream(q));
  return {dq, dkt, delta ? dvt : dv_new, dbeta};
}

#else  // no CUDA in this build

namespace {
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "fwp::chunked_rule: this build of fwp has no CUDA kernels (nvcc was not found at build time)");
  throw;  // unreachable
}
}  // namespace

std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor&, const Tensor&, const Tensor&, const Config&, bool) {
  no_cuda();
}
std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                 const Config&) {
  no_cuda();
}
Tensor values_from_checkpoints(const Tensor&, const Tensor&, const Tensor&, const Config&) { no_cuda(); }
Tensor output_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Config&) { no_cuda(); }
Tensor local_value_grad(const Tensor&, const Tensor&, const Tensor&, const Config&) { no_cuda(); }
std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, const Tensor&, const Config&) {
  no_cuda();
}
std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&, const Tensor&, const Config&) {
  no_cuda();
}

#endif

}  // namespace fwp::chunked::cuda

extern "C" int fwp_chunked_cuda_runs_on(int device) {
#ifdef FWP_WITH_CUDA
  // chunked.cu is compiled with the recurrent kernels' -gencode list, so both have an image for the
  // same GPUs (sm_80 and newer).
  return fwp_cuda_kernels_loadable(device);
#else
  (void)device;
  return 0;
#endif
}

#ifdef FWP_WITH_CUDA
// The pass's bf16 mask (chunked_launch.h) for fp32 inputs or (`bf16`) bf16 inputs with one bf16 part
// per operand: every chunk input bf16 but the delta rule's U in the forward (W bf16 too; U and
// dU'_loc stay fp32).
static int pass_bf16_mask(int backward, int delta, int bf16) {
  return bf16 == 0 ? 0
                   : FWP_PASS_K_BF16 | FWP_PASS_W_BF16 | FWP_PASS_DO_BF16 |
                         (backward != 0 || delta == 0 ? FWP_PASS_UQ_BF16 : 0);
}
#endif

// Bytes of dynamic shared memory the fast pass takes (chunked_launch.h), for fp32 or bf16 inputs
// (pass_bf16_mask); -1 for d_k > 256 or a build without CUDA.
extern "C" int64_t fwp_chunked_pass_shared_bytes(int64_t dk, int backward, int delta, int bf16, int stages) {
#ifdef FWP_WITH_CUDA
  return fwp_chunked_cuda_pass_bytes(dk, backward, delta, pass_bf16_mask(backward, delta, bf16), stages);
#else
  (void)dk, (void)backward, (void)delta, (void)bf16, (void)stages;
  return -1;
#endif
}

// The stages the fast pass gets within `limit` bytes of shared memory per block, by the launcher's
// own rule (fwp_chunked_cuda_pass_stages_within): 2, 1, or 0 (first-version kernel); -1 for
// d_k > 256 or a build without CUDA.
extern "C" int fwp_chunked_pass_stages(int64_t dk, int backward, int delta, int bf16, int64_t limit) {
#ifdef FWP_WITH_CUDA
  return fwp_chunked_cuda_pass_stages_within(dk, backward, delta, pass_bf16_mask(backward, delta, bf16), limit);
#else
  (void)dk, (void)backward, (void)delta, (void)bf16, (void)limit;
  return -1;
#endif
}

// The stages the fast pass runs with on a device of `sms` multiprocessors, by the launcher's own
// rule (fwp_chunked_cuda_pass_stages_for_grid): `most` (the stages that fit), or 1 where that lets
// the grid of `blocks` run in fewer waves, an SM holding `per_sm_one` blocks with one stage and
// `per_sm_two` with two; -1 in a build without CUDA.
extern "C" int fwp_chunked_pass_stages_for_grid(int most, int64_t blocks, int64_t sms, int64_t per_sm_one,
                                                int64_t per_sm_two) {
#ifdef FWP_WITH_CUDA
  return fwp_chunked_cuda_pass_stages_for_grid(most, blocks, sms, per_sm_one, per_sm_two);
#else
  (void)most, (void)blocks, (void)sms, (void)per_sm_one, (void)per_sm_two;
  return -1;
#endif
}
