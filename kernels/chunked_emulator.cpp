// The fast CUDA kernels (chunked_passes.cuh: the sequential passes and the per-chunk stages) run
// on the CPU, for tests: the
// same source, compiled by the host compiler, with one std::thread per CUDA thread of a block, real
// barriers for __syncthreads, and mma.sync emulated from the documented m16n8k16 fragment layout
// (each lane publishes its fragments, the warp meets, each lane sums its own accumulator elements
// from everyone's), ldmatrix likewise from its documented layout. cp.async leaves NaN in its destination until the issuing thread waits for it.
// So the fragment indexing, the part splitting, the tile loads with their zero padding and the
// stage pipeline, its waits included, are checked against the twin without a GPU; the rest of the
// GPU's memory model is not.
//
// Slow (a barrier per mma), meant for small shapes.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "chunked.h"
#include "chunked_launch.h"
#include "host_barrier.h"

namespace fwp::chunked::emulated {
namespace {

using host_cuda::Barrier;

struct BlockState;
thread_local int t_tid = 0;
thread_local BlockState* t_block = nullptr;

#define FWP_DEV inline
#define FWP_HD inline

int thread_id() { return t_tid; }
int lane_id() { return t_tid & 31; }
int warp_id() { return t_tid >> 5; }
void block_sync();
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <int N, bool trans>
void ldmatrix(uint32_t (&r)[N], const uint16_t* row);

// cp.async with the destination undefined from the issue to the wait, as on the GPU, where the copy
// may land at any moment in between: the issue fills it with NaN, and the data lands only when the
// issuing thread waits for its group (wait_group 0). So a thread that reads its own copy before
// its wait sees NaN (chunked_stages.rs then fails). A read of another thread's copy before the
// barrier after the wait, and a buffer refilled while other threads still read it, are writes
// unordered with reads: data races, which ThreadSanitizer reports (tests/sanitized_kernels.rs) and the
// results show only when the timing happens to expose them.
struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};
thread_local std::vector<PendingCopy> t_uncommitted;
thread_local std::vector<std::vector<PendingCopy>> t_groups;  // committed, oldest first

// The GPU's rules for the copy itself: 4 or 16 bytes (cp.async.cg takes only 16), both addresses
// aligned to the size, the source's even where it is not read (src-size 0): a copy that breaks them
// is a misaligned-address fault there, and here an error at the block's end.
void note_bad_copy(const void* dst, const void* src, int bytes);
void copy_async(void* dst, const void* src, int bytes, bool valid) {
  if ((bytes != 4 && bytes != 16) || reinterpret_cast<uintptr_t>(dst) % unsigned(bytes) != 0 ||
      reinterpret_cast<uintptr_t>(src) % unsigned(bytes) != 0)
    note_bad_copy(dst, src, bytes);
  std::memset(dst, 0xFF, size_t(bytes));  // NaN in fp32 and in bf16
  t_uncommitted.push_back(PendingCopy{dst, src, bytes, valid});
}
void copy_commit() {
  t_groups.push_back(std::move(t_uncommitted));
  t_uncommitted.clear();
}
// Lands every committed group (cp.async.wait_group 0).
void copy_wait_all() {
  while (!t_groups.empty()) {
    for (const PendingCopy& c : t_groups.front()) {
      if (c.valid)
        std::memcpy(c.dst, c.src, size_t(c.bytes));
      else
        std::memset(c.dst, 0, size_t(c.bytes));
    }
    t_groups.erase(t_groups.begin());
  }
}

// The kernels' checks of their own bookkeeping (the GPU skips them): the first failure's `what`
// is reported at the block's end.
void expect(bool ok, const char* what);

// Round to nearest even, as __float2bfloat16_rn (NaN stays NaN).
uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float bf16_value(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// -std=c++17 keeps the host compiler from contracting it with a later add (-ffp-contract=off).
float mul_rn(float a, float b) { return a * b; }

#include "chunked_passes.cuh"

static_assert(kPassWarps == 4, "BlockState lists one barrier per warp");

struct BlockState {
  Barrier all{kPassThreads};
  Barrier warps[kPassWarps] = {Barrier(32), Barrier(32), Barrier(32), Barrier(32)};
  uint32_t a[kPassWarps][32][4];
  uint32_t b[kPassWarps][32][2];
  const uint16_t* rows[kPassWarps][32];  // ldmatrix's row addresses
  std::atomic<bool> copies_left{false};  // a thread ended with cp.async copies it never waited for
  std::once_flag bad_copy_once;
  std::string bad_copy;  // the first cp.async that broke the GPU's size or alignment rules
  std::once_flag failed_once;
  std::string failed;  // the first expect() that failed
};

void expect(bool ok, const char* what) {
  if (ok) return;
  BlockState& bs = *t_block;
  std::call_once(bs.failed_once, [&] { bs.failed = "thread " + std::to_string(t_tid) + ": " + what; });
}

void note_bad_copy(const void* dst, const void* src, int bytes) {
  BlockState& bs = *t_block;
  std::call_once(bs.bad_copy_once, [&] {
    bs.bad_copy = "thread " + std::to_string(t_tid) + " issued a " + std::to_string(bytes) +
                  "-byte cp.async from an address " + std::to_string(reinterpret_cast<uintptr_t>(src) % 16) +
                  " bytes past a 16-byte boundary to one " + std::to_string(reinterpret_cast<uintptr_t>(dst) % 16) +
                  " bytes past";
  });
}

void block_sync() { t_block->all.wait(); }

float half_of(uint32_t reg, int half) { return bf16_value(uint16_t(half ? reg >> 16 : reg & 0xffffu)); }

void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  BlockState& bs = *t_block;
  const int w = warp_id(), lane = lane_id();
  std::memcpy(bs.a[w][lane], a, sizeof(a));
  std::memcpy(bs.b[w][lane], b, sizeof(b));
  bs.warps[w].wait();
  // A (16 x 16): element (r, k) is in lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8),
  // half k % 2. B (16 x 8): element (k, n) in lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
  for (int e = 0; e < 4; ++e) {
    const int r = acc_row(e), n = acc_col(e);
    float sum = d[e];
    for (int k = 0; k < 16; ++k) {
      const float x = half_of(bs.a[w][(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2);
      const float y = half_of(bs.b[w][n * 4 + (k % 8) / 2][k / 8], k % 2);
      sum += x * y;  // a product of two bf16 values is exact in fp32
    }
    d[e] = sum;
  }
  bs.warps[w].wait();  // everyone has read the fragments before they are replaced
}

// ldmatrix: each lane publishes its row address, the warp meets, each lane takes its elements of
// the N matrices from everyone's rows (row j of matrix i from lane 8 i + j; lane l gets row l / 4,
// columns 2 (l % 4) and the next, of each, or of each one's transpose). A row address that is not
// 16-byte aligned faults on the GPU, and stops the emulator.
template <int N, bool trans>
void ldmatrix(uint32_t (&r)[N], const uint16_t* row) {
  BlockState& bs = *t_block;
  const int w = warp_id(), lane = lane_id();
  if (lane < 8 * N && (reinterpret_cast<uintptr_t>(row) & 15) != 0) __builtin_trap();
  bs.rows[w][lane] = row;
  bs.warps[w].wait();
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < N; ++i) {
    const uint16_t* const* m = bs.rows[w] + 8 * i;
    r[i] = trans ? pack(m[2 * t][g], m[2 * t + 1][g]) : pack(m[g][2 * t], m[g][2 * t + 1]);
  }
  bs.warps[w].wait();  // everyone has read the rows before the addresses are replaced
}

// Runs body() as one block of kPassThreads threads.
template <typename Body>
void run_block(const Body& body) {
  BlockState bs;
  std::vector<std::thread> threads;
  threads.reserve(kPassThreads);
  for (int t = 0; t < kPassThreads; ++t)
    threads.emplace_back([&, t] {
      t_tid = t;
      t_block = &bs;
      body();
      if (!t_uncommitted.empty() || !t_groups.empty()) bs.copies_left = true;
    });
  for (auto& th : threads) th.join();
  TORCH_CHECK(!bs.copies_left, "fwp::chunked emulated passes: a thread ended with cp.async copies it did not "
              "wait for");
  TORCH_CHECK(bs.bad_copy.empty(), "fwp::chunked emulated passes: ", bs.bad_copy,
              " (a GPU needs 4 or 16 bytes, both addresses aligned to the size)");
  TORCH_CHECK(bs.failed.empty(), "fwp::chunked emulated passes: ", bs.failed);
}

int stages_of(const Config& cfg) {
  TORCH_CHECK(emulated_passes(cfg), "fwp::chunked emulated passes: expected Passes::Emulated1 or Emulated2");
  return cfg.passes == Passes::Emulated2 ? 2 : 1;
}

int parts_of(const Config& cfg) {
  TORCH_CHECK(cfg.operands != Operands::Exact, "fwp::chunked emulated passes: the tensor-core arithmetic needs "
              "operands 'bf16', 'bf16x2' or 'bf16x3'");
  return operand_parts(cfg.operands);
}

Tensor in(const Tensor& t) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.is_cpu() && t.scalar_type() == at::kFloat, "fwp::chunked emulated passes: expected fp32 CPU "
              "tensors, got ", t.scalar_type(), " on ", t.device());
  return t.contiguous();
}

const float* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// An input that may be bf16: the caller's (q, k, v, beta, dO; the sum rule's U') or an operand-only
// intermediate (W, U', T~, dU'; chunked.h, fast_operand_type): fp32 or bf16 CPU tensors.
Tensor user(const Tensor& t) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              "fwp::chunked emulated kernels: expected fp32 or bf16 CPU tensors for the inputs, got ",
              t.scalar_type(), " on ", t.device());
  return t.contiguous();
}

In arg(const Tensor& t) {
  return t.defined() ? In{t.data_ptr(), t.scalar_type() == at::kBFloat16} : In{nullptr, false};
}

Out res(Tensor& t) {
  return t.defined() ? Out{t.data_ptr(), t.scalar_type() == at::kBFloat16} : Out{nullptr, false};
}

at::TensorOptions f32(const Tensor& t) { return t.options().dtype(at::kFloat); }

// Where the kernels write (chunked.h): an op result in the caller's dtype, or an operand-only
// intermediate.
at::TensorOptions result_options(const Tensor& q) { return q.options().dtype(fast_result_type(q)); }
at::TensorOptions operand_options(const Tensor& t, const Config& cfg) {
  return t.options().dtype(fast_operand_type(cfg));
}

// Each block's shared memory starts as NaN (a GPU's holds whatever was there before: a read of an
// element nobody wrote shows up in the results), and a guard zone after the pass's dynamic shared
// memory must be intact when the block ends.
constexpr size_t kGuardFloats = 256;
constexpr float kGuardValue = 1234.5f;

template <int KT, int P, int BV, bool Whole = false>
void run_grid(bool backward, const PassArgs& x, int64_t BH) {
  const size_t n = size_t(pass_floats(KT, backward, x.b.p != nullptr, pass_bf16(x), x.stages, BV));
  std::vector<float> smem(n + kGuardFloats);
  // CUDA's dynamic shared memory (extern __shared__ float4) starts 16-byte aligned; so must this,
  // for the alignment check of cp.async to mean the same.
  static_assert(__STDCPP_DEFAULT_NEW_ALIGNMENT__ >= 16, "std::vector<float> may start below 16-byte alignment");
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int tile = 0; tile * BV < x.dv; ++tile) {
      std::fill(smem.begin(), smem.begin() + n, std::numeric_limits<float>::quiet_NaN());
      std::fill(smem.begin() + n, smem.end(), kGuardValue);
      run_block([&] {
        if (backward)
          state_backward_pass<KT, P, BV, Whole>(x, smem.data(), int(bh), tile);
        else
          state_forward_pass<KT, P, BV, Whole>(x, smem.data(), int(bh), tile);
      });
      TORCH_CHECK(std::all_of(smem.begin() + n, smem.end(), [](float g) { return g == kGuardValue; }),
                  "fwp::chunked emulated passes: a block wrote past its ", n * sizeof(float),
                  " bytes of dynamic shared memory");
    }
}

// The emulator picks the blocks' value columns as the launcher does (pass_value_cols) for a GPU of
// kEmulatedSMs multiprocessors: so the tests' small shapes take all three widths (with one
// batch·head: 16 for d_v of 17 to 32, 8 for d_v up to 16).
constexpr int kEmulatedSMs = 2;

// One part, as the launcher picks (chunked_passes.cu): the blocks' width, then Whole where
// whole_pass holds.
template <int KT, bool Whole>
void run_one_part(bool backward, const PassArgs& x, int64_t BH) {
  const int bv = pass_value_cols(BH, x.dv, 1, kEmulatedSMs);
  if (bv == kNarrowestBV) run_grid<KT, 1, kNarrowestBV, Whole>(backward, x, BH);
  if (bv == kNarrowBV) run_grid<KT, 1, kNarrowBV, Whole>(backward, x, BH);
  if (bv == kBV) run_grid<KT, 1, kBV, Whole>(backward, x, BH);
}

template <int KT>
void run_parts(bool backward, const PassArgs& x, int64_t BH, int parts) {
  if (parts == 1) {
    if (whole_pass(x, parts, backward))
      run_one_part<KT, true>(backward, x, BH);
    else
      run_one_part<KT, false>(backward, x, BH);
  }
  if (parts == 2) run_grid<KT, 2, kBV>(backward, x, BH);
  if (parts == 3) run_grid<KT, 3, kBV>(backward, x, BH);
}

void run(bool backward, const PassArgs& x, int64_t BH, int parts) {
  TORCH_CHECK(x.dk >= 1 && x.dk <= 16 * kPassMaxKT, "fwp::chunked emulated passes: d_k must be in 1..256, got ",
              x.dk);
  TORCH_CHECK(x.N >= 1, "fwp::chunked emulated passes: no chunk (N = 0)");
  if (x.dk <= 64)
    run_parts<4>(backward, x, BH, parts);
  else if (x.dk <= 128)
    run_parts<8>(backward, x, BH, parts);
  else
    run_parts<16>(backward, x, BH, parts);
}

// Runs block(sh, bh, c) for every (batch·head, chunk) as one block, with fresh shared memory `Smem`.
template <class Smem, class Block>
void run_chunks(int64_t BH, int64_t N, const Block& block) {
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t c = 0; c < N; ++c) {
      static_assert(std::is_trivially_copyable<Smem>::value, "shared memory is plain data");
      Smem sh;
      std::memset(&sh, 0xFF, sizeof(Smem));  // NaN: what nobody wrote must not be read
      run_block([&] { block(sh, int(bh), c); });
    }
}

// A row stage's blocks, each value tile's in turn (the blocks are independent).
template <RowStage stage, int P, bool Whole, bool Staged = false>
void run_rows_as(const RowArgs& x, int64_t BH) {
  for (int tile = 0; tile * kRowCols < x.dv; ++tile)
    run_chunks<RowSmemOf<P, Staged>>(BH, x.N, [&](RowSmemOf<P, Staged>& sh, int bh, int64_t c) {
      row_stage<stage, P, Whole, Staged>(x, sh, bh, c, tile);
    });
}
// The kernel the launcher picks (chunked_passes.cu): Staged where staged_rows holds, else Whole
// where whole_rows does.
template <RowStage stage>
void run_rows(const RowArgs& x, int64_t BH, int parts) {
  if (parts == 1 && staged_rows(x, parts))
    run_rows_as<stage, 1, true, true>(x, BH);
  else if (parts == 1 && whole_rows(x, parts))
    run_rows_as<stage, 1, true>(x, BH);
  else if (parts == 1)
    run_rows_as<stage, 1, false>(x, BH);
  else if (parts == 2)
    run_rows_as<stage, 2, false>(x, BH);
  else
    run_rows_as<stage, 3, false>(x, BH);
}

// The kernel the launcher picks (chunked_passes.cu): Whole where whole_wy holds.
template <int P>
void run_wy(const WyArgs& x, int64_t BH) {
  if (P == 1 && whole_wy(x, P))
    run_chunks<WySmem>(BH, x.N, [&](WySmem& sh, int bh, int64_t c) { wy_stage<1, true>(x, sh, bh, c); });
  else
    run_chunks<WySmem>(BH, x.N, [&](WySmem& sh, int bh, int64_t c) { wy_stage<P>(x, sh, bh, c); });
}

// The kernel the launcher picks (chunked_passes.cu): Whole where whole_fragments holds.
template <int P, bool Whole>
void run_input_grads_as(const GradArgs& x, int64_t BH) {
  if (x.tinv.p != nullptr)  // the delta rule
    run_chunks<GradSmemOf<Whole>>(
        BH, x.N, [&](GradSmemOf<Whole>& sh, int bh, int64_t c) { input_grads_stage<P, true, Whole>(x, sh, bh, c); });
  else
    run_chunks<GradSmemOf<Whole>>(
        BH, x.N, [&](GradSmemOf<Whole>& sh, int bh, int64_t c) { input_grads_stage<P, false, Whole>(x, sh, bh, c); });
}
template <int P>
void run_input_grads(const GradArgs& x, int64_t BH) {
  if (P == 1 && whole_fragments(x, P))
    run_input_grads_as<1, true>(x, BH);
  else
    run_input_grads_as<P, false>(x, BH);
}

void check_chunks(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.size(2) == kPassC && x.size(1) >= 1, "fwp::chunked emulated kernels: ", name,
              " must be [BH, N >= 1, ", kPassC, ", d], got ", x.sizes());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> wy_forward(const Tensor& k_, const Tensor& v_, const Tensor& beta_,
                                              const Config& cfg, bool with_tinv) {
  const Tensor k = user(k_), v = user(v_), beta = user(beta_);
  check_chunks(k, "k");
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = v.size(3);
  Tensor tinv = with_tinv ? at::empty({BH, N, kPassC, kPassC}, operand_options(k, cfg)) : Tensor();
  Tensor w = at::empty(k.sizes(), operand_options(k, cfg)), u = at::empty(v.sizes(), f32(v));
  const WyArgs x{arg(k), arg(v), arg(beta), res(tinv), res(w), u.data_ptr<float>(), N, int(dk), int(dv)};
  const int parts = parts_of(cfg);
  if (parts == 1) run_wy<1>(x, BH);
  if (parts == 2) run_wy<2>(x, BH);
  if (parts == 3) run_wy<3>(x, BH);
  return {tinv, w, u};
}

Tensor values_from_checkpoints(const Tensor& w_, const Tensor& u_, const Tensor& ckpt_, const Config& cfg) {
  if (!w_.defined()) return u_;
  const Tensor w = user(w_), u = in(u_), ckpt = in(ckpt_);
  check_chunks(w, "w");
  Tensor v_new = at::empty(u.sizes(), operand_options(u, cfg));
  const RowArgs x{arg(w), In{nullptr, false}, In{nullptr, false}, ptr(ckpt), ptr(u), res(v_new), u.size(1),
                  int(w.size(3)), int(u.size(3))};
  run_rows<RowStage::Values>(x, u.size(0), parts_of(cfg));
  return v_new;
}

Tensor output_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_new_, const Tensor& ckpt_,
                      const Config& cfg) {
  const Tensor q = user(q_), k = user(k_), v_new = user(v_new_), ckpt = in(ckpt_);
  check_chunks(q, "q");
  Tensor out = at::empty(v_new.sizes(), result_options(q));
  const RowArgs x{arg(q), arg(k), arg(v_new), ptr(ckpt), nullptr, res(out), q.size(1), int(q.size(3)),
                  int(v_new.size(3))};
  run_rows<RowStage::Output>(x, q.size(0), parts_of(cfg));
  return out;
}

Tensor local_value_grad(const Tensor& q_, const Tensor& k_, const Tensor& grad_out_, const Config& cfg) {
  const Tensor q = user(q_), k = user(k_), grad_out = user(grad_out_);
  check_chunks(q, "q");
  Tensor dv_local = at::empty(grad_out.sizes(), f32(grad_out));
  const RowArgs x{arg(q), arg(k), arg(grad_out), nullptr, nullptr, res(dv_local), q.size(1), int(q.size(3)),
                  int(grad_out.size(3))};
  run_rows<RowStage::LocalGrad>(x, q.size(0), parts_of(cfg));
  return dv_local;
}

std::tuple<Tensor, Tensor, Tensor> state_forward(const Tensor& k_, const Tensor& w_, const Tensor& u_,
                                                 const Tensor& s0_, const Config& cfg) {
  const Tensor k = user(k_), w = user(w_), u = user(u_), s0 = in(s0_);
  const int64_t BH = k.size(0), N = k.size(1), dk = k.size(3), dv = u.size(3);
  TORCH_CHECK(k.size(2) == kPassC, "fwp::chunked emulated passes: chunks of ", kPassC, " steps, got ", k.size(2));
  Tensor ckpt = at::empty({BH, N, dk, dv}, f32(k)), state = at::empty({BH, dk, dv}, f32(k));
  Tensor v_new = w.defined() ? at::empty(u.sizes(), operand_options(u, cfg)) : u;
  const PassArgs x{arg(k),  arg(w),  arg(u),        In{nullptr, false},
                   nullptr, ptr(s0), ckpt.data_ptr<float>(), state.data_ptr<float>(),
                   w.defined() ? res(v_new) : Out{nullptr, false}, N, int(dk), int(dv), stages_of(cfg)};
  run(false, x, BH, parts_of(cfg));
  return {ckpt, v_new, state};
}

std::tuple<Tensor, Tensor, Tensor> state_backward(const Tensor& q_, const Tensor& k_, const Tensor& w_,
                                                  const Tensor& grad_out_, const Tensor& dv_local_,
                                                  const Tensor& ds_final_, const Config& cfg) {
  const Tensor q = user(q_), k = user(k_), w = user(w_), grad_out = user(grad_out_), dv_local = in(dv_local_),
               ds_final = in(ds_final_);
  const int64_t BH = q.size(0), N = q.size(1), dk = q.size(3), dv = grad_out.size(3);
  TORCH_CHECK(q.size(2) == kPassC, "fwp::chunked emulated passes: chunks of ", kPassC, " steps, got ", q.size(2));
  // dU': for the delta rule an operand of B3's products; for the sum rule the op's dV
  Tensor dv_new = at::empty(dv_local.sizes(), w.defined() ? operand_options(q, cfg) : result_options(q));
  Tensor ds_next = at::empty({BH, N, dk, dv}, f32(q)), ds0 = at::empty({BH, dk, dv}, f32(q));
  const PassArgs x{arg(k),        arg(w),        arg(q),        arg(grad_out), ptr(dv_local), ptr(ds_final),
                   ds_next.data_ptr<float>(), ds0.data_ptr<float>(), res(dv_new), N, int(dk), int(dv),
                   stages_of(cfg)};
  run(true, x, BH, parts_of(cfg));
  return {dv_new, ds_next, ds0};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> input_grads(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                                       const Tensor& beta_, const Tensor& tinv_, const Tensor& w_,
                                                       const Tensor& v_new_, const Tensor& ckpt_,
                                                       const Tensor& ds_next_, const Tensor& grad_out_,
                                                       const Tensor& dv_new_, const Config& cfg) {
  (void)w_;  // B3 does not read W
  const Tensor q = user(q_), k = user(k_), v = user(v_), beta = user(beta_), tinv = user(tinv_),
               v_new = user(v_new_), ckpt = in(ckpt_), ds_next = in(ds_next_), grad_out = user(grad_out_),
               dv_new = user(dv_new_);
  check_chunks(q, "q");
  check_chunks(v, "v");
  const bool delta = tinv.defined();
  const int64_t BH = q.size(0), N = q.size(1), dk = q.size(3), dv = v.size(3);
  const auto check = [](const Tensor& x, at::IntArrayRef want, const char* name) {
    TORCH_CHECK(x.defined() && x.sizes() == want, "fwp::chunked emulated kernels: ", name, " must be ", want,
                ", got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  };
  check(k, q.sizes(), "k");
  check(ckpt, {BH, N, dk, dv}, "checkpoints");
  check(ds_next, {BH, N, dk, dv}, "ds_next");
  check(v, {BH, N, kPassC, dv}, "v");
  check(v_new, v.sizes(), "v_new");
  check(grad_out, v.sizes(), "grad_out");
  check(dv_new, v.sizes(), "dv_new");
  if (delta) {
    check(tinv, {BH, N, kPassC, kPassC}, "tinv");
    check(beta, {BH, N, kPassC}, "beta");
  }
  const auto ro = result_options(q);
  Tensor dq = at::empty(q.sizes(), ro), dkt = at::empty(k.sizes(), ro);
  Tensor dvt = delta ? at::empty(v.sizes(), ro) : Tensor();
  Tensor dbeta = delta ? at::empty(beta.sizes(), ro) : Tensor();
  Tensor dw = delta ? at::empty(q.sizes(), operand_options(q, cfg)) : Tensor();
  const GradArgs x{arg(q),    arg(k),   arg(v),        arg(beta),    arg(v_new), arg(grad_out), arg(tinv),
                   arg(dv_new), ptr(ckpt), ptr(ds_next), res(dq),     res(dkt),   res(dvt),      res(dbeta),
                   res(dw),   N,        int(dk),       int(dv)};
  const int parts = parts_of(cfg);
  if (parts == 1) run_input_grads<1>(x, BH);
  if (parts == 2) run_input_grads<2>(x, BH);
  if (parts == 3) run_input_grads<3>(x, BH);
  return {dq, dkt, delta ? dvt : dv_new, dbeta};
}

}  // namespace fwp::chunked::emulated
