// Runs the recurrent CPU kernels (kernels/fast_weight_cpu.cpp) of every instruction-set build this
// CPU can run, for tests/sanitized_kernels.rs, which builds this file and the kernels with
// AddressSanitizer and UBSan: a vector load or store past a row, a tensor or a buffer (the kernels
// pad d_k and d_v to whole registers and T to whole chunks inside their own buffers, never in the
// caller's tensors), an index that overflows or a conversion out of range is reported. The values
// are not checked here (fused.rs and the fused_*_isa tests do that).
//
// Each run allocates its tensors as kernels/fast_weight_op.cpp does, at exactly their sizes, so the
// sanitizer's red zones start where the tensors end. Prints one line per instruction set and "all
// kernels ran" at the end.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "fast_weight_cpu.h"

namespace {

using at::Tensor;
using fwp::Dims;

// The accumulation dtype of the kernels: fp64 for fp64 inputs, else fp32.
at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct Kernels {
  const char* name;
  decltype(&fwp::generic::forward_cpu) forward;
  decltype(&fwp::generic::backward_cpu) backward;
};

// Forward (training: checkpoints and residuals saved; and inference: neither) and backward of one
// rule at one shape, through one build of the kernels.
void run(const Kernels& kernels, bool delta, at::ScalarType dtype, int64_t bh, int64_t t, int64_t dk, int64_t dv,
         int64_t chunk) {
  const Dims d{bh, t, dk, dv, chunk};
  const auto in = at::TensorOptions().dtype(dtype);
  const auto acc = at::TensorOptions().dtype(acc_type(dtype));
  const Tensor q = at::randn({bh, t, dk}, in), k = at::randn({bh, t, dk}, in), v = at::randn({bh, t, dv}, in);
  const Tensor beta = delta ? at::rand({bh, t}, in) : Tensor();
  const Tensor s0 = at::randn({bh, dk, dv}, acc);
  Tensor out = at::empty({bh, t, dv}, in), state = at::empty({bh, dk, dv}, acc);
  Tensor none = at::empty({0}, acc), none2 = at::empty({0}, acc);
  kernels.forward(q, k, v, beta, s0, out, state, none, none2, d, delta);  // inference
  Tensor ckpt = at::empty({bh, d.n_chunks(), dk, dv}, acc);
  Tensor resid = delta ? at::empty({bh, t, dv}, acc) : at::empty({0}, acc);
  kernels.forward(q, k, v, beta, s0, out, state, ckpt, resid, d, delta);
  const Tensor grad_out = at::randn({bh, t, dv}, in), grad_state = at::randn({bh, dk, dv}, acc);
  Tensor dq = at::empty_like(q), dk_ = at::empty_like(k), dv_ = at::empty_like(v);
  Tensor dbeta = delta ? at::empty_like(beta) : at::empty({0}, in);
  Tensor ds0 = at::empty({bh, dk, dv}, acc);
  kernels.backward(grad_out, grad_state, q, k, v, beta, ckpt, state, resid, dq, dk_, dv_, dbeta, ds0, d, delta);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  at::manual_seed(0);
  at::set_num_threads(1);
  std::vector<Kernels> builds{{"generic", fwp::generic::forward_cpu, fwp::generic::backward_cpu}};
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    builds.push_back({"avx2", fwp::avx2::forward_cpu, fwp::avx2::backward_cpu});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx512f"))
    builds.push_back({"avx512", fwp::avx512::forward_cpu, fwp::avx512::backward_cpu});
#endif
  try {
    for (const Kernels& kernels : builds) {
      int runs = 0;
      for (bool delta : {true, false})
        for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf})
          // T: one step, a partial chunk, a chunk and one; d: one column, odd widths below and above
          // a register, whole registers, and more than one tile of columns
          for (int64_t t : {1, 37, 65})
            for (auto [dk, dv] : {std::pair<int64_t, int64_t>{1, 1}, {7, 5}, {16, 16}, {33, 65}, {20, 130}})
              for (int64_t chunk : {16, 64}) {
                // as the op takes it: 1 <= chunk <= T (T = 37: 16 and 37)
                run(kernels, delta, dtype, 3, t, dk, dv, std::min(chunk, t));
                ++runs;
              }
      std::printf("%s: %d shapes ran, forward and backward, both rules\n", kernels.name, runs);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::printf("all kernels ran\n");
  return 0;
}
