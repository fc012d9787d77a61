// The chunkwise-parallel (WY / UT) form of the fast-weight recurrence as separate stages
// (docs/derivations.md Sec. 5 and 9): the algorithm the tensor-core CUDA kernels follow, and its CPU
// twin (chunked_cpu.cpp), which CI tests against the float64 Reference.
//
// Here T~ = (I + A)^-1, so that Sec. 5's T~ diag(beta) K is T~ (beta K) below.
// Per (batch·head) and chunk of C steps (rows), with keys K, queries Q (C x d_k), values V
// (C x d_v), write strengths beta (C) and the state S_c entering the chunk (d_k x d_v, key-major):
//   F1 wy:     A = tril(diag(beta) K K^T, -1),  T~ = (I + A)^-1,  W = T~ (beta K),  U = T~ (beta V)
//   F2 state:  U' = U - W S_c,  S_{c+1} = S_c + K^T U'        (sequential over chunks)
//   F3 out:    O = Q S_c + tril(Q K^T) U'                       (tril including the diagonal)
// Sum rule: no A, W = 0, U = V. Backward, with dO and dS_N the gradient of the final state:
//   B1 local:  dU'_loc = tril(Q K^T)^T dO                       (parallel over chunks)
//   B2 state:  dU' = dU'_loc + K dS_{c+1},  dS_c = dS_{c+1} + Q^T dO - W^T dU'   (reverse sequential)
//   B3 inputs: P = tril(dO U'^T);  dQ = dO S_c^T + P K;  dK = P^T Q + U' dS_{c+1}^T;
//              delta rule: dW = -dU' S_c^T, dU = dU', then the WY backward:
//              d(beta K) = T~^T dW, d(beta V) = T~^T dU, dA = -tril(T~^T (dW (beta K)^T + dU (beta V)^T) T~^T, -1),
//              dK += beta d(beta K) + G K + G^T K with G = diag(beta) dA,  dV = beta d(beta V),
//              dbeta = rowsum(d(beta K) . K) + rowsum(d(beta V) . V) + rowsum(dA . K K^T).
// The forward keeps only the inputs and S_c per chunk ("checkpoints"); the backward recomputes
// T~, W, U and U' from them.
//
// T~ is found by forward substitution on the 16 x 16 diagonal blocks of I + A, then merged
// 16 -> 32 -> 64 with [X 0; B Y]^-1 = [X^-1 0; -Y^-1 B X^-1  Y^-1] (the GPU kernels' solve order).
//
// Layout: chunked tensors are [BH, N, C, d] (T zero-padded to N·C: a zero step writes nothing
// and its output is dropped), states [BH, N, d_k, d_v], all in the accumulation dtype (fp32, or
// fp64 for fp64 inputs); except that the fast CUDA kernels (and their emulation) also take the
// caller's inputs q, k, v, beta, dO (and the sum rule's U' = V) in bf16, as they are, and write some
// results and intermediates in bf16 (fast_result_type, fast_operand_type below).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace fwp::chunked {

using at::Tensor;

// How matrix-product operands are rounded. `Exact`: in the accumulation dtype. The other two are the
// tensor-core kernels' arithmetic (bf16 x bf16 products, fp32 accumulation everywhere, the
// triangular solve in fp32), where an operand may be split into bf16 parts, hi = bf16(x) and each
// next part bf16(x - the parts before), and the product of two split operands is the sum of the
// part products A_i B_j of order i + j < max(parts of A, parts of B):
//   `Bf16` (bf16 / fp16 inputs): every operand one part, except the states S and dS, which take
//          two (hi + lo), so that the fp32 state keeps its accuracy;
//   `Bf16x2` (fp16 inputs): every operand two parts (16 significant bits, which hold every fp16
//          value exactly), three part products;
//   `Bf16x3` (fp32 inputs): every operand three parts (24 significant bits, fp32's), six part
//          products; each dropped one is at most about 2^-24 of the product (typically far less),
//          so fp32 inputs keep fp32 accuracy.
// (Enumerator order = the C ABI's operand code.)
enum class Operands { Exact, Bf16, Bf16x3, Bf16x2 };

// The least number of bf16 parts of every product operand (the states S and dS take at least two):
// 1 for Bf16, 2 for Bf16x2, 3 for Bf16x3 (the kernels' `parts`; Exact has none, 1 here).
inline int operand_parts(Operands operands) {
  return operands == Operands::Bf16x3 ? 3 : operands == Operands::Bf16x2 ? 2 : 1;
}

// `exact`, `bf16`, `bf16x2` or `bf16x3` (the op's `operands` argument).
Operands parse_operands(const std::string& name);
const char* operands_name(Operands operands);

// Which kernels run the CUDA stages (chunked_passes.cuh has a fast version of every one): the two
// sequential passes (F2, B2: state in registers, inputs through shared memory, where it fits the
// device: d_k <= 256 and its shared memory), the row stages (values, F3 output, B1 local_grad:
// warp-local, but for the checkpoint, split into bf16 parts once per block in shared memory), F1
// (wy: rows warp-local, the solve in shared memory) and B3 (input_grads: rows warp-local; P, dT~
// and dA, slabs of the states and, where the operands allow, column blocks in shared memory). `Fast`: those; `First`: chunked.cu's
// first version of every stage (every product through global memory). `Emulated1` / `Emulated2`:
// chunked_passes.cuh's code run on the CPU by chunked_emulator.cpp, the passes with one or two
// stages, for tests (fp32 CPU tensors, or bf16 for the caller's inputs; chunks of 64).
// `EmulatedFirst`: the first version's code (chunked_first.cuh) run on the CPU by
// chunked_first_emulator.cpp, for tests (CPU tensors, computed in fp32; chunks of 64).
enum class Passes { Fast, First, Emulated1, Emulated2, EmulatedFirst };

struct Config {
  int64_t chunk;  // C: 16, 32 or 64
  Operands operands;
  Passes passes = Passes::Fast;
};

// The stages, declared once per implementation: `cpu` (the twin, chunked_cpu.cpp: ATen products, any
// device ATen runs on) and `cuda` (the kernels, chunked.cu via chunked_cuda.cpp: CUDA tensors,
// Operands::Bf16, Bf16x2 or Bf16x3, chunks of 64). The functions of the same names directly in fwp::chunked pick by
// the device of their first argument.
namespace cpu {
#include "chunked_stages.inc"
// (I + a)^-1 for strictly lower-triangular a [..., C, C], C in {16, 32, 64}: the F1 solve.
Tensor unit_lower_inverse(const Tensor& a);
}  // namespace cpu

namespace cuda {
#include "chunked_stages.inc"
}  // namespace cuda

// The CUDA kernels' fast versions emulated on the CPU (Passes::Emulated1 / Emulated2; the row stages
// ignore the stage count).
namespace emulated {
std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k, const Tensor& v, const Tensor& beta,
                                              const Config& cfg, bool with_tinv = true);
Tensor values_from_checkpoints(const Tensor& w, const Tensor& u, const Tensor& checkpoints, const Config& cfg);
Tensor output_forward(const Tensor& q, const Tensor& k, const Tensor& v_new, const Tensor& checkpoints,
                      const Config& cfg);
Tensor local_value_grad(const Tensor& q, const Tensor& k, const Tensor& grad_out, const Config& cfg);
std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k, const Tensor& w, const Tensor& u,
                                                 const Tensor& s0, const Config& cfg);
std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                                                  const Tensor& grad_out, const Tensor& dv_local,
                                                  const Tensor& ds_final, const Config& cfg);
std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q, const Tensor& k, const Tensor& v,
                                                       const Tensor& beta, const Tensor& tinv,
                                                       const Tensor& w, const Tensor& v_new,
                                                       const Tensor& checkpoints, const Tensor& ds_next,
                                                       const Tensor& grad_out, const Tensor& dv_new,
                                                       const Config& cfg);
}  // namespace emulated

// The CUDA kernels' first versions emulated on the CPU (Passes::EmulatedFirst).
namespace emulated_first {
#include "chunked_stages.inc"
}  // namespace emulated_first

inline bool emulated_passes(const Config& cfg) {
  return cfg.passes == Passes::Emulated1 || cfg.passes == Passes::Emulated2;
}

// The dtypes the fast kernels (and their emulation) write, chunked_passes.cuh's Out: the op's results
// (O, dQ, dK, dV, dbeta) in the caller's dtype when it is bf16, else fp32; and the intermediates that
// are only ever product operands (W, U', T~, dU', dW) as bf16 where every operand is one bf16 part
// (Operands::Bf16), the very value each consumer rounds them to, else fp32.
inline at::ScalarType fast_result_type(const Tensor& q) {
  return q.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}
inline at::ScalarType fast_operand_type(const Config& cfg) {
  return cfg.operands == Operands::Bf16 ? at::kBFloat16 : at::kFloat;
}

inline std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k, const Tensor& v, const Tensor& beta,
                                                     const Config& cfg, bool with_tinv = true) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::wy_forward(k, v, beta, cfg, with_tinv);
  if (emulated_passes(cfg)) return emulated::wy_forward(k, v, beta, cfg, with_tinv);
  return k.is_cuda() ? cuda::wy_forward(k, v, beta, cfg, with_tinv) : cpu::wy_forward(k, v, beta, cfg, with_tinv);
}

inline std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k, const Tensor& w, const Tensor& u,
                                                        const Tensor& s0, const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::state_forward(k, w, u, s0, cfg);
  if (emulated_passes(cfg)) return emulated::state_forward(k, w, u, s0, cfg);
  return k.is_cuda() ? cuda::state_forward(k, w, u, s0, cfg) : cpu::state_forward(k, w, u, s0, cfg);
}

inline Tensor values_from_checkpoints(const Tensor& w, const Tensor& u, const Tensor& checkpoints,
                                      const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::values_from_checkpoints(w, u, checkpoints, cfg);
  if (emulated_passes(cfg)) return emulated::values_from_checkpoints(w, u, checkpoints, cfg);
  return u.is_cuda() ? cuda::values_from_checkpoints(w, u, checkpoints, cfg)
                     : cpu::values_from_checkpoints(w, u, checkpoints, cfg);
}

inline Tensor output_forward(const Tensor& q, const Tensor& k, const Tensor& v_new, const Tensor& checkpoints,
                             const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::output_forward(q, k, v_new, checkpoints, cfg);
  if (emulated_passes(cfg)) return emulated::output_forward(q, k, v_new, checkpoints, cfg);
  return q.is_cuda() ? cuda::output_forward(q, k, v_new, checkpoints, cfg)
                     : cpu::output_forward(q, k, v_new, checkpoints, cfg);
}

inline Tensor local_value_grad(const Tensor& q, const Tensor& k, const Tensor& grad_out, const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::local_value_grad(q, k, grad_out, cfg);
  if (emulated_passes(cfg)) return emulated::local_value_grad(q, k, grad_out, cfg);
  return q.is_cuda() ? cuda::local_value_grad(q, k, grad_out, cfg) : cpu::local_value_grad(q, k, grad_out, cfg);
}

inline std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q, const Tensor& k, const Tensor& w,
                                                         const Tensor& grad_out, const Tensor& dv_local,
                                                         const Tensor& ds_final, const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst) return emulated_first::state_backward(q, k, w, grad_out, dv_local, ds_final, cfg);
  if (emulated_passes(cfg)) return emulated::state_backward(q, k, w, grad_out, dv_local, ds_final, cfg);
  return q.is_cuda() ? cuda::state_backward(q, k, w, grad_out, dv_local, ds_final, cfg)
                     : cpu::state_backward(q, k, w, grad_out, dv_local, ds_final, cfg);
}

inline std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q, const Tensor& k, const Tensor& v,
                                                              const Tensor& beta, const Tensor& tinv,
                                                              const Tensor& w, const Tensor& v_new,
                                                              const Tensor& checkpoints, const Tensor& ds_next,
                                                              const Tensor& grad_out, const Tensor& dv_new,
                                                              const Config& cfg) {
  if (cfg.passes == Passes::EmulatedFirst)
    return emulated_first::input_grads(q, k, v, beta, tinv, w, v_new, checkpoints, ds_next, grad_out, dv_new, cfg);
  if (emulated_passes(cfg))
    return emulated::input_grads(q, k, v, beta, tinv, w, v_new, checkpoints, ds_next, grad_out, dv_new, cfg);
  return q.is_cuda() ? cuda::input_grads(q, k, v, beta, tinv, w, v_new, checkpoints, ds_next, grad_out, dv_new, cfg)
                     : cpu::input_grads(q, k, v, beta, tinv, w, v_new, checkpoints, ds_next, grad_out, dv_new, cfg);
}

}  // namespace fwp::chunked
