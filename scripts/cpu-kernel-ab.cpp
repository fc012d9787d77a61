// The recurrent CPU kernels of two revisions, timed against each other in one process
// (scripts/cpu-kernel-ab builds this with both revisions of kernels/fast_weight_cpu.cpp).
//
// On shared 2-core VMs a bench run's medians move by 1.5x between runs minutes apart, which hides
// changes of 5-10%. Here the two builds run alternately, forward then backward, on the same inputs
// and output buffers, and the report gives each one's minimum and median: drift hits both alike.
// It also prints the largest difference between the two builds' results, relative to the largest
// value, so a change that should not alter the arithmetic can be seen not to.
//
// Arguments: d T BH repeats rule threads (rule: delta or sum), all given by the script.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fast_weight_cpu.h"

namespace fwp {
FWP_DECLARE_CPU_KERNELS(ab_base)
FWP_DECLARE_CPU_KERNELS(ab_head)
}  // namespace fwp

namespace {

struct Outputs {
  at::Tensor out, state, ckpt, resid, dq, dk, dv, dbeta, ds0;
};

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

std::string min_median(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  char buf[64];
  std::snprintf(buf, sizeof buf, "%7.3f / %7.3f", ms.front(), ms[ms.size() / 2]);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s d T BH repeats delta|sum threads\n", argv[0]);
    return 2;
  }
  const int64_t d = std::atol(argv[1]), T = std::atol(argv[2]), BH = std::atol(argv[3]);
  const int repeats = std::atoi(argv[4]);
  const bool delta = std::string(argv[5]) == "delta";
  at::set_num_threads(std::atoi(argv[6]));
  at::manual_seed(0);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // q, k: sum-normalised as the paper's feature maps give them; v, dO, dS_T: unit normal
  const at::Tensor q0 = at::rand({BH, T, d}, f32), k0 = at::rand({BH, T, d}, f32);
  const at::Tensor q = q0 / q0.sum(-1, true), k = k0 / k0.sum(-1, true);
  const at::Tensor v = at::randn({BH, T, d}, f32), beta = at::rand({BH, T}, f32);
  const at::Tensor go = at::randn({BH, T, d}, f32), gs = at::randn({BH, d, d}, f32);
  const at::Tensor s0 = at::zeros({BH, d, d}, f32);
  const fwp::Dims dims{BH, T, d, d, std::min<int64_t>(64, T)};
  auto buffers = [&] {
    return Outputs{at::empty({BH, T, d}, f32), at::empty({BH, d, d}, f32),
                   at::empty({BH, dims.n_chunks(), d, d}, f32), at::empty({BH, T, d}, f32), at::empty({BH, T, d}, f32),
                   at::empty({BH, T, d}, f32), at::empty({BH, T, d}, f32),
                   at::empty({BH, T}, f32), at::empty({BH, d, d}, f32)};
  };
  Outputs base = buffers(), head = buffers();
  using Fwd = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, const fwp::Dims&,
                       bool);
  using Bwd = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                       const fwp::Dims&, bool);
  auto forward = [&](Fwd fn, Outputs& o) { fn(q, k, v, beta, s0, o.out, o.state, o.ckpt, o.resid, dims, delta); };
  auto backward = [&](Bwd fn, Outputs& o) {
    fn(go, gs, q, k, v, beta, o.ckpt, o.state, o.resid, o.dq, o.dk, o.dv, o.dbeta, o.ds0, dims, delta);
  };
  auto timed = [](auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<double> fb, fh, bb, bh;
  for (int i = 0; i < repeats + 1; ++i) {  // the first round warms up
    const double t1 = timed([&] { forward(fwp::ab_base::forward_cpu, base); });
    const double t2 = timed([&] { forward(fwp::ab_head::forward_cpu, head); });
    const double t3 = timed([&] { backward(fwp::ab_base::backward_cpu, base); });
    const double t4 = timed([&] { backward(fwp::ab_head::backward_cpu, head); });
    if (i > 0) fb.push_back(t1), fh.push_back(t2), bb.push_back(t3), bh.push_back(t4);
  }
  std::printf("%s rule, d = %ld, T = %ld, %ld batch-heads, %d threads, %d runs each\n", delta ? "delta" : "sum",
              static_cast<long>(d), static_cast<long>(T), static_cast<long>(BH), at::get_num_threads(), repeats);
  std::printf("  ms, min / median   forward             backward\n");
  std::printf("  base            %s   %s\n", min_median(fb).c_str(), min_median(bb).c_str());
  std::printf("  head            %s   %s\n", min_median(fh).c_str(), min_median(bh).c_str());
  const double fwd_min = *std::min_element(fb.begin(), fb.end()) / *std::min_element(fh.begin(), fh.end());
  const double bwd_min = *std::min_element(bb.begin(), bb.end()) / *std::min_element(bh.begin(), bh.end());
  std::printf("  base / head at the minimum: forward %.3f, backward %.3f\n", fwd_min, bwd_min);
  // model FLOPs (docs/derivations.md Sec. 7): 6 and 12 d^2 per head-token (delta), 4 and 8 (sum)
  const double tokens = static_cast<double>(BH * T), dd = static_cast<double>(d * d);
  const double fwd_flop = (delta ? 6 : 4) * dd * tokens, bwd_flop = 2 * fwd_flop;
  std::printf("  head, model GFLOP/s at the minimum: forward %.1f, forward + backward %.1f\n",
              fwd_flop / *std::min_element(fh.begin(), fh.end()) / 1e6,
              (fwd_flop + bwd_flop) /
                  (*std::min_element(fh.begin(), fh.end()) + *std::min_element(bh.begin(), bh.end())) / 1e6);
  std::printf("  largest difference between the builds, relative to the largest value: out %.1e, state %.1e, "
              "dq %.1e, dk %.1e, dv %.1e, dbeta %.1e, dS0 %.1e\n",
              rel_diff(head.out, base.out), rel_diff(head.state, base.state), rel_diff(head.dq, base.dq),
              rel_diff(head.dk, base.dk), rel_diff(head.dv, base.dv),
              delta ? rel_diff(head.dbeta, base.dbeta) : 0.0, rel_diff(head.ds0, base.ds0));
  return 0;
}
