// Runs every CUDA kernel of fwp through its CPU emulator, for tests/sanitized_kernels.rs, which
// builds this file and the emulators twice: with ThreadSanitizer (the emulators run one std::thread per
// CUDA thread with real barriers, so a missing __syncthreads or __syncwarp, a buffer refilled by
// cp.async while other threads still read it, or two threads writing one shared-memory word between
// barriers is a data race between std::threads, and ThreadSanitizer reports it), and with
// AddressSanitizer and UBSan (an access past a tensor, an index overflow). The values are not
// checked here (chunked_stages.rs, recurrent_cuda_emulated.rs and cpp_op.rs do that).
//
// Prints one line per run and "all kernels ran" at the end; exits 1 on an error of the kernels'
// own checks.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "chunked.h"

extern "C" {
char* fwp_recurrent_cuda_emulated(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                  const at::Tensor* beta, const at::Tensor* s0, const at::Tensor* grad_out,
                                  const at::Tensor* grad_state, int64_t chunk, at::Tensor** out);
char* fwp_sum_norm_cuda_emulated(const at::Tensor* x, double eps, at::Tensor** out);
}

namespace {

using at::Tensor;
using fwp::chunked::Config;
using fwp::chunked::Operands;
using fwp::chunked::Passes;

constexpr int64_t kC = 64;

// Seconds since the previous call (since the start, the first time).
double lap() {
  using Clock = std::chrono::steady_clock;
  static Clock::time_point last = Clock::now();
  const Clock::time_point now = Clock::now();
  const double s = std::chrono::duration<double>(now - last).count();
  last = now;
  return s;
}

void check(char* err, const std::string& what) {
  if (err != nullptr) {
    std::fprintf(stderr, "%s: %s\n", what.c_str(), err);
    std::exit(1);
  }
}

Tensor chunked(int64_t bh, int64_t n, int64_t d) { return at::randn({bh, n, kC, d}); }

// Forward and backward of one rule through the stages of `passes` (the fast kernels with one or two
// pipeline stages, or the first versions), with [BH, N, 64, d] inputs.
template <class Stages>
void chunked_run(const char* name, Config cfg, bool delta, int64_t bh, int64_t n, int64_t dk, int64_t dv,
                 at::ScalarType inputs) {
  using namespace fwp::chunked;
  const Tensor q = chunked(bh, n, dk).to(inputs), k = chunked(bh, n, dk).to(inputs),
               v = chunked(bh, n, dv).to(inputs), grad_out = chunked(bh, n, dv).to(inputs);
  const Tensor beta = delta ? at::rand({bh, n, kC}).to(inputs) : Tensor();
  const Tensor s0 = at::randn({bh, dk, dv}), ds_final = at::randn({bh, dk, dv});
  Tensor tinv, w, u = v;
  if (delta) std::tie(tinv, w, u) = Stages::wy_forward(k, v, beta, cfg, true);
  // the sum rule's U' is V as the caller gave it (bf16 stays bf16), as chunked_op.cpp passes it
  const auto [ckpt, v_new, state] = Stages::state_forward(k, w, u, s0, cfg);
  if (delta) Stages::values_from_checkpoints(w, u, ckpt, cfg);
  Stages::output_forward(q, k, v_new, ckpt, cfg);
  const Tensor dv_local = Stages::local_value_grad(q, k, grad_out, cfg);
  const auto [dv_new, ds_next, ds0] = Stages::state_backward(q, k, w, grad_out, dv_local, ds_final, cfg);
  Stages::input_grads(q, k, v, beta, tinv, w, v_new, ckpt, ds_next, grad_out, dv_new, cfg);
  std::printf("%s, %s rule, BH=%lld N=%lld d_k=%lld d_v=%lld %s: ran (%.1f s)\n", name, delta ? "delta" : "sum",
              (long long)bh, (long long)n, (long long)dk, (long long)dv, c10::toString(inputs), lap());
}

// The stages of one implementation, as static functions of a struct (a namespace cannot be a
// template argument).
#define FWP_STAGE(ns, fn)                \
  template <class... A>                  \
  static auto fn(const A&... a) {        \
    return fwp::chunked::ns::fn(a...);   \
  }
#define FWP_STAGES(Name, ns)                  \
  struct Name {                               \
    FWP_STAGE(ns, wy_forward)                 \
    FWP_STAGE(ns, state_forward)              \
    FWP_STAGE(ns, values_from_checkpoints)    \
    FWP_STAGE(ns, output_forward)             \
    FWP_STAGE(ns, local_value_grad)           \
    FWP_STAGE(ns, state_backward)             \
    FWP_STAGE(ns, input_grads)                \
  };
FWP_STAGES(Fast, emulated)
FWP_STAGES(First, emulated_first)

void recurrent_run(bool delta, at::ScalarType kind, int64_t t, int64_t dk, int64_t dv, int64_t chunk) {
  const auto o = at::TensorOptions().dtype(kind);
  const Tensor q = at::randn({1, 1, t, dk}, o), k = at::randn({1, 1, t, dk}, o), v = at::randn({1, 1, t, dv}, o),
               g = at::randn({1, 1, t, dv}, o), beta = at::rand({1, 1, t}, o), s0 = at::randn({1, 1, dk, dv}),
               gs = at::randn({1, 1, dk, dv});
  at::Tensor* out[8] = {};
  check(fwp_recurrent_cuda_emulated(&q, &k, &v, delta ? &beta : nullptr, &s0, &g, &gs, chunk, out),
        "recurrent kernels");
  for (at::Tensor* p : out) delete p;
  std::printf("recurrent, %s rule, T=%lld d_k=%lld d_v=%lld chunk=%lld %s: ran (%.1f s)\n", delta ? "delta" : "sum",
              (long long)t, (long long)dk, (long long)dv, (long long)chunk, c10::toString(kind), lap());
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  lap();
  at::manual_seed(0);
  at::set_num_threads(1);
  try {
    for (bool delta : {true, false}) {
      // two value tiles of the passes (the second partial) and one partial tile of the row stages;
      // three chunks, so that the two-stage pipeline refills both of its buffers. The bf16 run has
      // odd widths, whose rows are not 4-byte aligned (copied by plain stores, not cp.async), and
      // d_k = 129, the passes' largest key tiles. (One, two or three operand parts change how many
      // products run between the barriers, not where the barriers are.)
      chunked_run<Fast>("fast, 1 stage", Config{kC, Operands::Bf16x2, Passes::Emulated1}, delta, 1, 3, 30, 40,
                        at::kFloat);
      chunked_run<Fast>("fast, 2 stages", Config{kC, Operands::Bf16, Passes::Emulated2}, delta, 1, 3, 30, 40,
                        at::kFloat);
      chunked_run<Fast>("fast, 2 stages", Config{kC, Operands::Bf16, Passes::Emulated2}, delta, 1, 3, 129, 41,
                        at::kBFloat16);
      // bf16 inputs with d_k and d_v multiples of 16 but not of 32: B3's Whole kernel (whole bf16
      // fragments read without a bound), where B3's 32-column blocks of dW and dU' once read past
      // the rows' ends, and the passes' Whole kernels (16-byte copies with no address test)
      chunked_run<Fast>("fast, whole fragments", Config{kC, Operands::Bf16, Passes::Emulated2}, delta, 1, 3, 48, 16,
                        at::kBFloat16);
      chunked_run<First>("first version", Config{kC, Operands::Bf16x3, Passes::EmulatedFirst}, delta, 1, 2, 30, 72,
                         at::kFloat);
      recurrent_run(delta, at::kFloat, 37, 40, 11, 16);
    }
    recurrent_run(true, at::kBFloat16, 20, 16, 8, 7);
    const Tensor x = at::rand({3, 300});
    at::Tensor* y = nullptr;
    check(fwp_sum_norm_cuda_emulated(&x, 1e-6, &y), "sum_norm kernel");
    delete y;
    std::printf("sum_norm, rows=3 n=300: ran (%.1f s)\n", lap());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::printf("all kernels ran\n");
  return 0;
}
