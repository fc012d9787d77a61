// Input checks shared by the fast-weight ops (fast_weight_op.cpp, chunked_op.cpp): shapes, dtypes
// and devices of q, k, v, beta and the initial state. The Rust side checks first; these guard other
// callers of the registered ops.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>

namespace fwp {

struct InputSizes {
  int64_t B, H, T, d_k, d_v;
};

inline bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline InputSizes check_fast_weight_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& beta,
                                           const std::optional<at::Tensor>& s0) {
  using at::Tensor;
  TORCH_CHECK(q.dim() == 4, "q: expected shape [B, H, T, d_k], got ", q.sizes());
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), dk = q.size(3);
  TORCH_CHECK(k.sizes() == q.sizes(), "k: expected shape ", q.sizes(), " (as q), got ", k.sizes());
  TORCH_CHECK(v.dim() == 4 && v.size(0) == B && v.size(1) == H && v.size(2) == T,
              "v: expected shape [B, H, T, d_v] = [", B, ", ", H, ", ", T, ", ?], got ", v.sizes());
  const int64_t dv = v.size(3);
  TORCH_CHECK(T >= 1 && dk >= 1 && dv >= 1, "q, v: T, d_k and d_v must be >= 1, got T = ", T,
              ", d_k = ", dk, ", d_v = ", dv);
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q: expected a floating-point dtype, got ",
              q.scalar_type());
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), name, ": dtype ", t->scalar_type(),
                " does not match q's ", q.scalar_type());
    TORCH_CHECK(t->device() == q.device(), name, ": on ", t->device(), " but q is on ", q.device());
  }
  if (has(beta)) {
    TORCH_CHECK(beta->dim() == 3 && beta->size(0) == B && beta->size(1) == H && beta->size(2) == T,
                "beta: expected shape [B, H, T] = [", B, ", ", H, ", ", T, "], got ", beta->sizes());
    TORCH_CHECK(beta->scalar_type() == q.scalar_type(), "beta: dtype ", beta->scalar_type(),
                " does not match q's ", q.scalar_type());
    TORCH_CHECK(beta->device() == q.device(), "beta: on ", beta->device(), " but q is on ", q.device());
  }
  if (has(s0)) {
    TORCH_CHECK(s0->dim() == 4 && s0->size(0) == B && s0->size(1) == H && s0->size(2) == dk &&
                    s0->size(3) == dv,
                "initial state: expected shape [B, H, d_k, d_v] = [", B, ", ", H, ", ", dk, ", ", dv,
                "], got ", s0->sizes());
    TORCH_CHECK(at::isFloatingType(s0->scalar_type()), "initial state: expected a floating-point dtype");
    TORCH_CHECK(s0->device() == q.device(), "initial state: on ", s0->device(), " but q is on ",
                q.device());
  }
  return InputSizes{B, H, T, dk, dv};
}

}  // namespace fwp
