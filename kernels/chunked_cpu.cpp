// The CPU twin of the chunked kernels (chunked.h): each stage as batched ATen products over
// [BH, N] chunk tiles (BLAS-3, parallel inside ATen), in the order and with the masks, solve and
// operand rounding the CUDA kernels use. It runs on any device ATen does, so it also serves as
// the reference each CUDA stage is compared with.

#include "chunked.h"

#include <algorithm>
#include <vector>

namespace fwp::chunked::cpu {
namespace {

Tensor tr(const Tensor& x) { return x.transpose(-1, -2); }

Tensor round_bf16(const Tensor& x) { return x.to(at::kBFloat16).to(x.scalar_type()); }

// x as `n` bf16 parts (chunked.h): hi = bf16(x), each next part bf16 of what the earlier ones leave.
std::vector<Tensor> bf16_parts(const Tensor& x, int n) {
  std::vector<Tensor> parts;
  Tensor rest = x;
  for (int i = 0; i < n; ++i) {
    parts.push_back(round_bf16(rest));
    if (i + 1 < n) rest = rest - parts.back();
  }
  return parts;
}

// a b from `na` parts of a and `nb` parts of b: the part products of order i + j < max(na, nb),
// each accumulated in the accumulation dtype, in the CUDA kernels' order (i, then j).
Tensor split_product(const Tensor& a, int na, const Tensor& b, int nb) {
  const std::vector<Tensor> pa = bf16_parts(a, na), pb = bf16_parts(b, nb);
  const int orders = std::max(na, nb);
  Tensor sum;
  for (int i = 0; i < na; ++i)
    for (int j = 0; j < nb && i + j < orders; ++j) {
      const Tensor term = at::matmul(pa[i], pb[j]);
      sum = sum.defined() ? sum + term : term;
    }
  return sum;
}

// Parts of a plain operand and of a state (S or dS) under cfg.operands (not Exact).
int operand_parts(const Config& cfg) {
  return cfg.operands == Operands::Bf16x3 ? 3 : cfg.operands == Operands::Bf16x2 ? 2 : 1;
}
int state_parts(const Config& cfg) { return std::max(2, operand_parts(cfg)); }

// a b with both operands rounded as the tensor cores see them.
Tensor mm(const Tensor& a, const Tensor& b, const Config& cfg) {
  if (cfg.operands == Operands::Exact) return at::matmul(a, b);
  return split_product(a, operand_parts(cfg), b, operand_parts(cfg));
}

// a s where s is a state (S or dS, fp32), which keeps more parts than a plain operand.
Tensor mm_state(const Tensor& a, const Tensor& s, const Config& cfg) {
  if (cfg.operands == Operands::Exact) return at::matmul(a, s);
  return split_product(a, operand_parts(cfg), s, state_parts(cfg));
}

// s a, s a state (B2's K dS is written k dS: the state on the right; dO S^T has it on the right
// too, transposed by the caller).
Tensor state_mm(const Tensor& s, const Tensor& a, const Config& cfg) {
  if (cfg.operands == Operands::Exact) return at::matmul(s, a);
  return split_product(s, state_parts(cfg), a, operand_parts(cfg));
}

Tensor at_chunk(const Tensor& x, int64_t c) { return x.select(1, c); }

}  // namespace

Tensor unit_lower_inverse(const Tensor& a) {
  const int64_t C = a.size(-1);
  TORCH_CHECK(C == 16 || C == 32 || C == 64, "chunked: chunk must be 16, 32 or 64, got ", C);
  constexpr int64_t kBlock = 16;
  const int64_t nb = C / kBlock;
  Tensor x = at::zeros_like(a);
  // Forward substitution on each 16 x 16 diagonal block of I + a: row i of its inverse is
  // e_i - sum_{j<i} a_ij (row j), the rows j < i being final.
  std::vector<Tensor> blocks;
  for (int64_t b = 0; b < nb; ++b) blocks.push_back(a.narrow(-2, b * kBlock, kBlock).narrow(-1, b * kBlock, kBlock));
  const Tensor d = at::stack(blocks, -3);  // [..., nb, 16, 16]
  Tensor xi = at::eye(kBlock, d.options()).expand(d.sizes()).clone();
  for (int64_t i = 1; i < kBlock; ++i) {
    const Tensor row = at::matmul(d.narrow(-2, i, 1).narrow(-1, 0, i), xi.narrow(-2, 0, i));  // [..., 1, 16]
    xi.narrow(-2, i, 1).sub_(row);
  }
  for (int64_t b = 0; b < nb; ++b)
    x.narrow(-2, b * kBlock, kBlock).narrow(-1, b * kBlock, kBlock).copy_(xi.select(-3, b));
  // Merges: the lower-left block of [X 0; B Y]^-1 is -Y^-1 B X^-1.
  for (int64_t s = kBlock; s < C; s *= 2) {
    for (int64_t j = 0; j < C / (2 * s); ++j) {
      const int64_t r0 = j * 2 * s + s, c0 = j * 2 * s;
      const Tensor y_inv = x.narrow(-2, r0, s).narrow(-1, r0, s);
      const Tensor x_inv = x.narrow(-2, c0, s).narrow(-1, c0, s);
      const Tensor b = a.narrow(-2, r0, s).narrow(-1, c0, s);
      x.narrow(-2, r0, s).narrow(-1, c0, s).copy_(-at::matmul(at::matmul(y_inv, b), x_inv));
    }
  }
  return x;
}

std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k, const Tensor& v, const Tensor& beta,
                                              const Config& cfg, bool /*with_tinv: always made*/) {
  const Tensor b = beta.unsqueeze(-1);           // [BH, N, C, 1]
  const Tensor kb = k * b, vb = v * b;           // beta K, beta V
  const Tensor a = mm(kb, tr(k), cfg).tril(-1);   // A = tril(diag(beta) K K^T, -1)
  const Tensor tinv = unit_lower_inverse(a);     // T~ = (I + A)^-1, in the accumulation dtype
  return {tinv, mm(tinv, kb, cfg), mm(tinv, vb, cfg)};
}

std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k, const Tensor& w, const Tensor& u,
                                                 const Tensor& s0, const Config& cfg) {
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = u.size(3);
  Tensor checkpoints = at::empty({BH, N, dk, dv}, s0.options());
  Tensor v_new = w.defined() ? at::empty_like(u) : u;
  Tensor s = s0.clone();
  for (int64_t c = 0; c < N; ++c) {
    at_chunk(checkpoints, c).copy_(s);
    if (w.defined()) at_chunk(v_new, c).copy_(at_chunk(u, c) - mm_state(at_chunk(w, c), s, cfg));  // U' = U - W S_c
    s.add_(mm(tr(at_chunk(k, c)), at_chunk(v_new, c), cfg));                                      // S += K^T U'
  }
  return {checkpoints, v_new, s};
}

Tensor values_from_checkpoints(const Tensor& w, const Tensor& u, const Tensor& checkpoints, const Config& cfg) {
  return w.defined() ? u - mm_state(w, checkpoints, cfg) : u;
}

Tensor output_forward(const Tensor& q, const Tensor& k, const Tensor& v_new, const Tensor& checkpoints,
                      const Config& cfg) {
  return mm_state(q, checkpoints, cfg) + mm(mm(q, tr(k), cfg).tril(0), v_new, cfg);
}

Tensor local_value_grad(const Tensor& q, const Tensor& k, const Tensor& grad_out, const Config& cfg) {
  return mm(tr(mm(q, tr(k), cfg).tril(0)), grad_out, cfg);
}

std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                                                  const Tensor& grad_out, const Tensor& dv_local,
                                                  const Tensor& ds_final, const Config& cfg) {
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = grad_out.size(3);
  Tensor dv_new = at::empty_like(dv_local);
  Tensor ds_next = at::empty({BH, N, dk, dv}, ds_final.options());
  Tensor ds = ds_final.clone();
  for (int64_t c = N - 1; c >= 0; --c) {
    at_chunk(ds_next, c).copy_(ds);
    const Tensor dvn = at_chunk(dv_local, c) + mm_state(at_chunk(k, c), ds, cfg);  // dU' = dU'_loc + K dS_{c+1}
    at_chunk(dv_new, c).copy_(dvn);
    ds.add_(mm(tr(at_chunk(q, c)), at_chunk(grad_out, c), cfg));                   // + Q^T dO
    if (w.defined()) ds.sub_(mm(tr(at_chunk(w, c)), dvn, cfg));                // - W^T dU'
  }
  return {dv_new, ds_next, ds};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& beta, const Tensor& tinv,
                                                       const Tensor& w, const Tensor& v_new,
                                                       const Tensor& checkpoints, const Tensor& ds_next,
                                                       const Tensor& grad_out, const Tensor& dv_new,
                                                       const Config& cfg) {
  const Tensor p = mm(grad_out, tr(v_new), cfg).tril(0);                       // P = tril(dO U'^T)
  const Tensor dq = tr(state_mm(checkpoints, tr(grad_out), cfg)) + mm(p, k, cfg);  // dO S_c^T + P K
  Tensor dk = mm(tr(p), q, cfg) + tr(state_mm(ds_next, tr(v_new), cfg));          // P^T Q + U' dS_{c+1}^T
  if (!w.defined()) return {dq, dk, dv_new, Tensor()};
  // The WY backward.
  const Tensor b = beta.unsqueeze(-1);
  const Tensor kb = k * b, vb = v * b;
  const Tensor dw = -tr(state_mm(checkpoints, tr(dv_new), cfg));  // dW = -dU' S_c^T
  const Tensor dkb = mm(tr(tinv), dw, cfg);                       // d(beta K) = T~^T dW
  const Tensor dvb = mm(tr(tinv), dv_new, cfg);                   // d(beta V) = T~^T dU
  const Tensor dtinv = mm(dw, tr(kb), cfg) + mm(dv_new, tr(vb), cfg);
  const Tensor da = -mm(mm(tr(tinv), dtinv, cfg), tr(tinv), cfg).tril(-1);
  const Tensor g = da * b;                                       // G = diag(beta) dA
  dk = dk + dkb * b + mm(g, k, cfg) + mm(tr(g), k, cfg);
  const Tensor dbeta = (dkb * k).sum(-1) + (dvb * v).sum(-1) + (da * mm(k, tr(k), cfg)).sum(-1);
  return {dq, dk, dvb * b, dbeta};
}

}  // namespace fwp::chunked::cpu

namespace fwp::chunked {

Operands parse_operands(const std::string& name) {
  if (name == "exact") return Operands::Exact;
  if (name == "bf16") return Operands::Bf16;
  if (name == "bf16x2") return Operands::Bf16x2;
  if (name == "bf16x3") return Operands::Bf16x3;
  TORCH_CHECK(false, "operands: expected 'exact', 'bf16', 'bf16x2' or 'bf16x3', got '", name, "'");
}

const char* operands_name(Operands operands) {
  switch (operands) {
    case Operands::Exact: return "exact";
    case Operands::Bf16: return "bf16";
    case Operands::Bf16x2: return "bf16x2";
    case Operands::Bf16x3: return "bf16x3";
  }
  return "?";
}

}  // namespace fwp::chunked
