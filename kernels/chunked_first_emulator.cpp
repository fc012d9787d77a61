// The first-version chunked CUDA kernels (chunked_first.cuh) run on the CPU, for tests
// (Passes::EmulatedFirst): the same source compiled by the host compiler (cuda_on_host.h: one
// thread per CUDA thread, real barriers, WMMA on whole tiles), launched with the grids and scratch
// buffers chunked.cu and chunked_cuda.cpp give it. Like them it takes fp32 (bf16 inputs are
// converted) and writes fp32. Slow; meant for small shapes.

#include <ATen/ATen.h>

#include "cuda_on_host.h"
// after the host CUDA definitions
#include "chunked.h"

namespace fwp::chunked::emulated_first {
namespace {

using namespace nvcuda;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"  // input_grads_kernel's w (its interface names it)
#include "chunked_first.cuh"
#pragma GCC diagnostic pop

using host_cuda::Dim3;
using host_cuda::launch;

int parts(const Config& cfg) {
  TORCH_CHECK(cfg.operands != Operands::Exact, "fwp::chunked emulated first-version kernels: the tensor-core "
              "arithmetic needs operands 'bf16', 'bf16x2' or 'bf16x3'");
  return operand_parts(cfg.operands);
}

// fp32, contiguous, on the CPU (undefined stays undefined), as the first-version kernels read.
Tensor in(const Tensor& t) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              "fwp::chunked emulated first-version kernels: expected fp32 or bf16 CPU tensors, got ",
              t.scalar_type(), " on ", t.device());
  return t.to(at::kFloat).contiguous();
}

void check_chunks(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.size(2) == kC && x.size(1) >= 1, "fwp::chunked emulated first-version kernels: ",
              name, " must be [BH, N >= 1, ", kC, ", d], got ", x.sizes());
}

const float* p(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* p(Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

at::TensorOptions f32(const Tensor& t) { return t.options().dtype(at::kFloat); }

Sizes sizes(int64_t N, int64_t dk, int64_t dv, const Config& cfg) {
  return Sizes{N, int(dk), int(dv), parts(cfg)};
}

// chunked.cu's grids: (batch·head, chunk) and (batch·head, tile of kColumns value columns).
Dim3 chunk_grid(int64_t BH, int64_t N) { return Dim3{unsigned(BH), unsigned(N), 1}; }
Dim3 column_grid(int64_t BH, int64_t dv) { return Dim3{unsigned(BH), unsigned((dv + kColumns - 1) / kColumns), 1}; }

}  // namespace

std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k_, const Tensor& v_, const Tensor& beta_,
                                              const Config& cfg, bool) {
  const Tensor k = in(k_), v = in(v_), beta = in(beta_);
  check_chunks(k, "k");
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = v.size(3);
  Tensor tinv = at::empty({BH, N, kC, kC}, f32(k)), w = at::empty(k.sizes(), f32(k)), u = at::empty(v.sizes(), f32(v));
  Tensor a = at::empty_like(tinv);
  const Sizes s = sizes(N, dk, dv, cfg);
  launch(chunk_grid(BH, N), kThreads, 0, [&] { wy_kernel(p(k), p(v), p(beta), p(tinv), p(w), p(u), p(a), s); });
  return {tinv, w, u};
}

std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k_, const Tensor& w_, const Tensor& u_,
                                                 const Tensor& s0_, const Config& cfg) {
  const Tensor k = in(k_), w = in(w_), u = in(u_), s0 = in(s0_);
  check_chunks(k, "k");
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = u.size(3);
  Tensor ckpt = at::empty({BH, N, dk, dv}, f32(k)), state = at::empty({BH, dk, dv}, f32(k));
  Tensor v_new = w.defined() ? at::empty(u.sizes(), f32(u)) : u;
  const Sizes s = sizes(N, dk, dv, cfg);
  launch(column_grid(BH, dv), kThreads, 0, [&] {
    state_forward_kernel(p(k), p(w), p(u), p(s0), p(ckpt), w.defined() ? p(v_new) : nullptr, p(state), s);
  });
  return {ckpt, v_new, state};
}

Tensor values_from_checkpoints(const Tensor& w_, const Tensor& u_, const Tensor& ckpt_, const Config& cfg) {
  if (!w_.defined()) return u_;
  const Tensor w = in(w_), u = in(u_), ckpt = in(ckpt_);
  check_chunks(w, "w");
  Tensor v_new = at::empty(u.sizes(), f32(u));
  const Sizes s = sizes(u.size(1), w.size(3), u.size(3), cfg);
  launch(chunk_grid(u.size(0), u.size(1)), kThreads, 0, [&] { values_kernel(p(w), p(u), p(ckpt), p(v_new), s); });
  return v_new;
}

Tensor output_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_new_, const Tensor& ckpt_,
                      const Config& cfg) {
  const Tensor q = in(q_), k = in(k_), v_new = in(v_new_), ckpt = in(ckpt_);
  check_chunks(q, "q");
  const int64_t BH = q.size(0), N = q.size(1);
  Tensor out = at::empty(v_new.sizes(), f32(q)), qk = at::empty({BH, N, kC, kC}, f32(q));
  const Sizes s = sizes(N, q.size(3), v_new.size(3), cfg);
  launch(chunk_grid(BH, N), kThreads, 0, [&] { output_kernel(p(q), p(k), p(v_new), p(ckpt), p(out), p(qk), s); });
  return out;
}

Tensor local_value_grad(const Tensor& q_, const Tensor& k_, const Tensor& grad_out_, const Config& cfg) {
  const Tensor q = in(q_), k = in(k_), grad_out = in(grad_out_);
  check_chunks(q, "q");
  const int64_t BH = q.size(0), N = q.size(1);
  Tensor dv_local = at::empty(grad_out.sizes(), f32(q)), qk = at::empty({BH, N, kC, kC}, f32(q));
  const Sizes s = sizes(N, q.size(3), grad_out.size(3), cfg);
  launch(chunk_grid(BH, N), kThreads, 0, [&] { local_grad_kernel(p(q), p(k), p(grad_out), p(dv_local), p(qk), s); });
  return dv_local;
}

std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q_, const Tensor& k_, const Tensor& w_,
                                                  const Tensor& grad_out_, const Tensor& dv_local_,
                                                  const Tensor& ds_final_, const Config& cfg) {
  const Tensor q = in(q_), k = in(k_), w = in(w_), grad_out = in(grad_out_), dv_local = in(dv_local_),
               ds_final = in(ds_final_);
  check_chunks(q, "q");
  const int64_t BH = q.size(0), N = q.size(1), dk = q.size(3), dv = grad_out.size(3);
  Tensor dv_new = at::empty(dv_local.sizes(), f32(q));
  Tensor ds_next = at::empty({BH, N, dk, dv}, f32(q)), ds0 = at::empty({BH, dk, dv}, f32(q));
  const Sizes s = sizes(N, dk, dv, cfg);
  launch(column_grid(BH, dv), kThreads, 0, [&] {
    state_backward_kernel(p(q), p(k), p(w), p(grad_out), p(dv_local), p(ds_final), p(dv_new), p(ds_next), p(ds0),
                          s);
  });
  return {dv_new, ds_next, ds0};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                       const Tensor& beta_, const Tensor& tinv_, const Tensor& w_,
                                                       const Tensor& v_new_, const Tensor& ckpt_,
                                                       const Tensor& ds_next_, const Tensor& grad_out_,
                                                       const Tensor& dv_new_, const Config& cfg) {
  const Tensor q = in(q_), k = in(k_), v = in(v_), beta = in(beta_), tinv = in(tinv_), w = in(w_),
               v_new = in(v_new_), ckpt = in(ckpt_), ds_next = in(ds_next_), grad_out = in(grad_out_),
               dv_new = in(dv_new_);
  check_chunks(q, "q");
  const bool delta = tinv.defined();
  const int64_t BH = q.size(0), N = q.size(1), dk = q.size(3), dv = v.size(3);
  Tensor dq = at::empty(q.sizes(), f32(q)), dkt = at::empty(k.sizes(), f32(q));
  Tensor dvt = delta ? at::empty(v.sizes(), f32(q)) : Tensor();
  Tensor dbeta = delta ? at::empty(beta.sizes(), f32(q)) : Tensor();
  const int64_t per_chunk = grads_scratch_floats(dk, dv);
  Tensor scratch = at::empty({BH, N, per_chunk}, f32(q));
  const Sizes s = sizes(N, dk, dv, cfg);
  launch(chunk_grid(BH, N), kThreads, 0, [&] {
    input_grads_kernel(p(q), p(k), p(v), p(beta), p(tinv), p(w), p(v_new), p(ckpt), p(ds_next), p(grad_out),
                       p(dv_new), p(dq), p(dkt), p(dvt), p(dbeta), p(scratch), per_chunk, s);
  });
  return {dq, dkt, delta ? dvt : dv_new, dbeta};
}

}  // namespace fwp::chunked::emulated_first
