// The fast versions of the chunked kernels (chunked.h): first the sequential passes (F2, the state
// forward, and B2, the state backward), then the per-chunk stages (values, F3, B1; F1; B3), further
// down. Written once for two compilers: nvcc builds them as CUDA kernels
// (chunked_passes.cu) and the host compiler builds them for chunked_emulator.cpp, which runs the
// same code on the CPU with one thread per CUDA thread, so that CI checks its indexing without a GPU.
//
// Design (docs/derivations.md Sec. 9): one block of 4 warps per (batch·head, tile of BV value
// columns; BV = 32, or 16 or 8 where that leaves SMs idle: pass_value_cols) walks the chunks in order
// (backward: in reverse). The state tile (d_k x BV, fp32) lives
// in the warps' registers as mma.sync accumulators; each chunk's inputs are copied into shared memory
// with cp.async, the next chunk's while this one is computed when two stages fit (the launcher picks
// the stages from the device's shared-memory limit and the grid: pass_stages_for_grid). Products are
// mma.sync.m16n8k16 on bf16 parts, built in registers from the fp32 tiles by the same splitting as
// the twin (chunked.h, Operands), with fp32 accumulation; a bf16 tile taken as one part goes into
// the registers as it is, and the state and U' (dU') are kept as bf16 parts (Planes) where two parts
// or fewer are wanted. Per chunk (sum rule: W = 0, U' = U):
//   forward:  S_c -> checkpoint c;  U' = U - W S_c;  S_{c+1} = S_c + K^T U'
//   backward: dS_{c+1} -> ds_next[c];  dU' = dU'_loc + K dS_{c+1};  dS_c = dS_{c+1} + Q^T dO - W^T dU'
// with each product accumulated from zero and then added, as the first-version kernels and the twin do.
// Where operands take one bf16 part and every chunk copy is whole 16-byte pieces (whole_pass), a
// Whole kernel runs: the same code with the dtypes and copy sizes fixed when compiling, so that its
// chunk loop tests none of them.
//
// The includer defines, before including this file:
//   FWP_DEV                         the qualifier of device functions
//   FWP_HD                          the qualifier of functions for both sides (the sizes)
//   thread_id(), lane_id(), warp_id()
//   block_sync()                    __syncthreads()
//   mma_16816(d, a, b)              d += A B for one m16n8k16 bf16 tile (warp-collective)
//   ldmatrix<N, trans>(r, row)      ldmatrix.sync.aligned.m8n8.xN(.trans).shared.b16 (warp-collective):
//                                   N = 2 or 4 matrices of 8 x 8 bf16 values, row j of matrix i at the
//                                   16-byte aligned shared address `row` of lane 8 i + j
//   copy_async(dst, src, bytes, valid)   cp.async of 4 or 16 bytes (zero-fill when !valid)
//   copy_commit(), copy_wait_all()
//   expect(ok, what)                a check of the kernels' own bookkeeping: the emulator reports
//                                   `what` where ok is false; the GPU skips it
//   bf16_bits(float) -> uint16_t (round to nearest even), bf16_value(uint16_t) -> float
//   mul_rn(float, float)            a product rounded on its own (never fused into a later add)
// and includes it inside its own namespace, after chunked_launch.h (its constants).

#ifdef __CUDACC__
#define FWP_UNROLL _Pragma("unroll")
#define FWP_NO_UNROLL _Pragma("unroll 1")
#define FWP_UNROLL_4 _Pragma("unroll 4")
#define FWP_UNROLL_2 _Pragma("unroll 2")
#else
#define FWP_UNROLL
#define FWP_NO_UNROLL
#define FWP_UNROLL_4
#define FWP_UNROLL_2
#endif

constexpr int kPassC = 64;          // chunk
constexpr int kPassWarps = 4;
constexpr int kPassThreads = 32 * kPassWarps;
constexpr int kBV = 32;             // value columns per block (BV), or, where that leaves SMs idle,
constexpr int kNarrowBV = 16;       // these, or
constexpr int kNarrowestBV = 8;     // these (pass_value_cols)
constexpr int kPassMaxKT = 16;      // d_k <= 16 * 16 = 256

// Row length of value tiles of bv columns in shared memory (floats; the padding keeps the fragment
// loads off each other's banks).
FWP_HD constexpr int value_ld(int bv) { return bv + 4; }

// The blocks of a pass over d_v value columns in blocks of bv, for bh batch·heads.
FWP_HD constexpr int64_t pass_blocks(int64_t bh, int64_t dv, int bv) { return bh * ((dv + bv - 1) / bv); }

// The value columns of a pass's blocks on a device of `sms` multiprocessors, where the operands
// take one bf16 part (else kBV): kBV; kNarrowBV where blocks of kBV would be fewer than the SMs;
// kNarrowestBV where blocks of kNarrowBV would be fewer too and those of kNarrowestBV are not more.
// A pass walks its chunks one after another, so with fewer blocks than SMs some SMs idle; narrower
// blocks multiply the blocks, and the key-side work per value column (each block copies and
// multiplies all of K, W and Q), which is why they lose where the SMs are busy (docs/performance.md,
// GPU) and why the narrowest are taken only where each block has an SM to itself.
FWP_HD constexpr int pass_value_cols(int64_t bh, int64_t dv, int parts, int64_t sms) {
  if (parts != 1 || pass_blocks(bh, dv, kBV) >= sms) return kBV;
  return pass_blocks(bh, dv, kNarrowBV) < sms && pass_blocks(bh, dv, kNarrowestBV) <= sms ? kNarrowestBV : kNarrowBV;
}

// The stages of shared memory a pass runs with, given the most that fit (`most`), its grid's
// `blocks` and how many of them one of the `sms` multiprocessors holds at once with one stage and
// with two (`per_sm_one`, `per_sm_two`: what shared memory and registers allow). Two stages copy the
// next chunk while this one computes, but take more shared memory, so that fewer blocks share an SM.
// A pass's block is a chain of dependent instructions with one warp per scheduler
// (docs/performance.md, GPU), so blocks that share an SM hide each other's waits: where one stage
// lets the grid run in fewer waves of blocks than two do, one stage; otherwise the most.
FWP_HD constexpr int pass_stages_for_grid(int most, int64_t blocks, int64_t sms, int64_t per_sm_one,
                                          int64_t per_sm_two) {
  if (most != 2 || blocks <= 0 || sms <= 0 || per_sm_one <= 0 || per_sm_two <= 0) return most;
  const int64_t one = sms * per_sm_one, two = sms * per_sm_two;
  return (blocks + one - 1) / one < (blocks + two - 1) / two ? 1 : 2;
}
// An H200 (132 SMs) at B*T = 16k tokens, 16 heads, d = 128 (docs/performance.md, GPU): the backward
// pass's 256 blocks, one per SM with two stages and two with one, run one stage; a grid that one
// wave holds either way, or two waves either way, keeps two.
static_assert(pass_stages_for_grid(2, 256, 132, 2, 1) == 1 && pass_stages_for_grid(2, 132, 132, 2, 1) == 2 &&
                  pass_stages_for_grid(2, 512, 132, 3, 2) == 2 && pass_stages_for_grid(1, 256, 132, 2, 1) == 1,
              "pass_stages_for_grid");
// On 132 SMs with one bf16 part: 64 batch·heads of d_v = 64 (T = 4k) take 16 columns, 16 of them
// (T = 16k) 8, and 16 of d_v = 128 16 (256 blocks of 8 would be more than the SMs); more parts, 32.
static_assert(pass_value_cols(64, 64, 1, 132) == kNarrowBV && pass_value_cols(16, 64, 1, 132) == kNarrowestBV &&
                  pass_value_cols(16, 128, 1, 132) == kNarrowBV && pass_value_cols(256, 64, 1, 132) == kBV &&
                  pass_value_cols(16, 64, 3, 132) == kBV,
              "pass_value_cols");

// Row stride (elements) of a tile of a chunk's input in shared memory, `width` elements wide (a
// multiple of 8): width + 4 floats in fp32; width + 8 halves in bf16, but 24 for width 8 (rows 48
// bytes apart: at 32, two of an ldmatrix's eight rows would share banks). Rows stay 16-byte aligned
// for cp.async, and ldmatrix's rows of a bf16 tile fall on distinct banks.
FWP_HD constexpr int tile_ld(int width, bool bf16) { return bf16 ? (width == 8 ? 24 : width + 8) : width + 4; }

// Floats of shared memory such a tile of C rows takes.
FWP_HD constexpr int64_t slot_floats(int width, bool bf16) {
  return bf16 ? int64_t(kPassC) * tile_ld(width, true) / 2 : int64_t(kPassC) * tile_ld(width, false);
}

// Where a pass's chunk inputs sit in one stage buffer (floats from its start), each tile in its
// input's dtype (`bf16`, a mask of chunked_launch.h's FwpPassBf16), and the buffer's size: forward K, W (delta rule), U (or V);
// backward K, Q, W (delta rule), dU'_loc (fp32), dO. Keys are padded to kt * 16 columns; value
// tiles are bv columns wide.
struct PassLayout {
  int64_t k, c, w, d, e, floats;
};

FWP_HD constexpr PassLayout pass_layout(int kt, bool backward, bool delta, int bf16, int bv) {
  const int wide = kt * 16;
  const int64_t k_slot = slot_floats(wide, bf16 & FWP_PASS_K_BF16), w_slot = delta ? slot_floats(wide, bf16 & FWP_PASS_W_BF16) : 0;
  PassLayout l{};
  if (!backward) {
    l.w = k_slot;
    l.c = l.w + w_slot;
    l.floats = l.d = l.e = l.c + slot_floats(bv, bf16 & FWP_PASS_UQ_BF16);
  } else {
    l.c = k_slot;
    l.w = l.c + slot_floats(wide, bf16 & FWP_PASS_UQ_BF16);
    l.d = l.w + w_slot;
    l.e = l.d + slot_floats(bv, false);
    l.floats = l.e + slot_floats(bv, bf16 & FWP_PASS_DO_BF16);
  }
  return l;
}

// Floats of shared memory a pass needs: the state tile (kt*16 x bv), one C x bv tile of U' (dU'),
// then `stages` buffers of the layout above.
FWP_HD constexpr int64_t pass_floats(int kt, bool backward, bool delta, int bf16, int stages, int bv) {
  return (int64_t(kt) * 16 + kPassC) * value_ld(bv) + stages * pass_layout(kt, backward, delta, bf16, bv).floats;
}

FWP_DEV uint32_t pack(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// Stores w's halves at p (4-byte aligned) and p + 1 (the lower half at p), as bf16_pair loads them.
FWP_DEV void store_pair(uint16_t* p, uint32_t w) {
#ifdef __CUDACC__
  *reinterpret_cast<uint32_t*>(p) = w;
#else
  if ((reinterpret_cast<uintptr_t>(p) & 3) != 0) __builtin_trap();
  p[0] = uint16_t(w & 0xFFFFu);
  p[1] = uint16_t(w >> 16);
#endif
}

// Two neighbours in one store: x0 at p and x1 at p + 1, p 4-byte (bf16) or 8-byte (fp32) aligned; a
// misaligned p stops the emulator, as it would the kernel.
FWP_DEV void store_two(uint16_t* p, uint16_t x0, uint16_t x1) { store_pair(p, pack(x0, x1)); }
FWP_DEV void store_two(float* p, float x0, float x1) {
#ifdef __CUDACC__
  *reinterpret_cast<float2*>(p) = make_float2(x0, x1);
#else
  if ((reinterpret_cast<uintptr_t>(p) & 7) != 0) __builtin_trap();
  p[0] = x0;
  p[1] = x1;
#endif
}

// Whether element pairs (2i, 2i + 1) at p may go out through store_two.
template <class T>
FWP_DEV bool pair_aligned(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & (2 * sizeof(T) - 1)) == 0;
}

// A matrix read as fp32 from fp32 or bf16 (bits). The chunked inputs q, k, v, beta and dO may be
// bf16: the fast kernels read them as they are, half the bytes of fp32 (the sum rule's U' is v
// itself); so may the operand-only intermediates (see Out). Every other intermediate is fp32.
struct In {
  const void* p;
  bool bf16;

  FWP_DEV float operator[](int64_t i) const {
    return bf16 ? bf16_value(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
  }
  FWP_DEV In operator+(int64_t n) const {
    return In{bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(p) + n)
                   : static_cast<const void*>(static_cast<const float*>(p) + n),
              bf16};
  }
};

// f(read) with read(i) = m[i] as fp32, instantiated once per dtype: a loop inside f reads without
// a branch on the dtype.
template <class F>
FWP_DEV void by_dtype(In m, const F& f) {
  if (m.bf16) {
    const uint16_t* h = static_cast<const uint16_t*>(m.p);
    f([h](int64_t i) { return bf16_value(h[i]); });
  } else {
    const float* v = static_cast<const float*>(m.p);
    f([v](int64_t i) { return v[i]; });
  }
}

// A matrix written as fp32 or bf16 (round to nearest even). The op's results (O, dQ, dK, dV, dbeta)
// come in the caller's dtype, and with one bf16 part per operand (Operands::Bf16) the intermediates
// that are only ever product operands (W, U', T~, dU', dW) are stored as the bf16 value each
// consumer would round them to anyway: half the bytes, the same results bit for bit.
struct Out {
  void* p;
  bool bf16;

  FWP_DEV void set(int64_t i, float x) const {
    if (bf16)
      static_cast<uint16_t*>(p)[i] = bf16_bits(x);
    else
      static_cast<float*>(p)[i] = x;
  }
  // Elements i and i + 1 (i even) in one store; `pairs` (pairs()) says whether the address allows it.
  FWP_DEV void set_two(int64_t i, float x0, float x1, bool pairs) const {
    if (!pairs) {
      set(i, x0);
      set(i + 1, x1);
    } else if (bf16) {
      store_two(static_cast<uint16_t*>(p) + i, bf16_bits(x0), bf16_bits(x1));
    } else {
      store_two(static_cast<float*>(p) + i, x0, x1);
    }
  }
  FWP_DEV bool pairs() const {
    return bf16 ? pair_aligned(static_cast<const uint16_t*>(p)) : pair_aligned(static_cast<const float*>(p));
  }
  FWP_DEV Out operator+(int64_t n) const {
    return Out{bf16 ? static_cast<void*>(static_cast<uint16_t*>(p) + n) : static_cast<void*>(static_cast<float*>(p) + n),
               bf16};
  }
  FWP_DEV In in() const { return In{p, bf16}; }
};

// Everything a pass reads and writes; the chunked layout of chunked_launch.h. Forward: a = k,
// b = w (null: sum rule), c = u, init = s0, per_chunk = ckpt, values = v_new (delta rule),
// last = final state. Backward: a = k, b = w (null: sum rule), c = q, d = dU'_loc, e = dO,
// init = dS_N, per_chunk = ds_next, values = dU', last = dS_0.
struct PassArgs {
  In a, b, c, e;  // caller's dtype, or bf16 for W (see Out)
  const float *d, *init;
  float *per_chunk, *last;
  Out values;
  int64_t N;
  int dk, dv, stages;
};

// The pass's bf16 mask (pass_layout) from its arguments' dtypes.
FWP_HD int pass_bf16(const PassArgs& x) {
  return (x.a.bf16 ? FWP_PASS_K_BF16 : 0) | (x.b.bf16 ? FWP_PASS_W_BF16 : 0) | (x.c.bf16 ? FWP_PASS_UQ_BF16 : 0) | (x.e.bf16 ? FWP_PASS_DO_BF16 : 0);
}

FWP_DEV int imin(int x, int y) { return x < y ? x : y; }

// The bf16 values at p and p + 1 (p 4-byte aligned) as one register, p's in the lower half: one
// 32-bit load on the GPU, where a misaligned one stops the kernel; so it stops the emulator too.
FWP_DEV uint32_t bf16_pair(const uint16_t* p) {
#ifdef __CUDACC__
  return *reinterpret_cast<const uint32_t*>(p);
#else
  if ((reinterpret_cast<uintptr_t>(p) & 3) != 0) __builtin_trap();
  return pack(p[0], p[1]);
#endif
}

// The fp32 values at p and p + 1 (p 8-byte aligned): one 64-bit load on the GPU; a misaligned one
// stops the emulator, as it would the kernel.
FWP_DEV void float_pair(const float* p, float& x0, float& x1) {
#ifdef __CUDACC__
  const float2 v = *reinterpret_cast<const float2*>(p);
  x0 = v.x;
  x1 = v.y;
#else
  if ((reinterpret_cast<uintptr_t>(p) & 7) != 0) __builtin_trap();
  x0 = p[0];
  x1 = p[1];
#endif
}

// Fragments of bf16 matrices taken as one part: the bits go into the registers as they are (split<1>
// of a bf16 value is that value), with no conversion. Element (i, j) of m is m[i * ld + j]; the
// fragments' layouts are load_a's and load_b's (below).
//   bf16_a_rows: A(r, c) = m(r0 + r, c0 + c), a register's pair in one 32-bit load (ld and c0 even,
//                m 4-byte aligned);
//   bf16_a_cols: A(r, c) = m(c0 + c, r0 + r), the transpose, two loads per register;
//   bf16_b_rows: B(k, n) = m(k0 + k, n0 + n), zero where n0 + n >= cols, two loads per register
//                (such a column reads column 0 instead, so cols >= 1);
//   bf16_b_cols: B(k, n) = m(n0 + n, k0 + k), one 32-bit load per register (as bf16_a_rows).
FWP_DEV void bf16_a_rows(uint32_t (&a)[4], const uint16_t* m, int64_t ld, int r0, int c0) {
  const int g = lane_id() >> 2, t = lane_id() & 3;
FWP_UNROLL
  for (int i = 0; i < 4; ++i) a[i] = bf16_pair(m + (r0 + g + 8 * (i & 1)) * ld + c0 + 2 * t + 8 * (i >> 1));
}
FWP_DEV void bf16_a_cols(uint32_t (&a)[4], const uint16_t* m, int64_t ld, int r0, int c0) {
  const int g = lane_id() >> 2, t = lane_id() & 3;
FWP_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + g + 8 * (i & 1), c = c0 + 2 * t + 8 * (i >> 1);
    a[i] = pack(m[c * ld + r], m[(c + 1) * ld + r]);
  }
}
FWP_DEV void bf16_b_rows(uint32_t (&b)[2], const uint16_t* m, int64_t ld, int k0, int n0, int cols) {
  // a column past the end reads column 0 and keeps zero: loads under no condition, which the compiler
  // may issue ahead of the products before them (a load under a branch waits for the branch)
  const int g = lane_id() >> 2, t = lane_id() & 3, n = n0 + g, nr = n < cols ? n : 0;
FWP_UNROLL
  for (int i = 0; i < 2; ++i) {
    const int k = k0 + 2 * t + 8 * i;
    const uint32_t w = pack(m[k * ld + nr], m[(k + 1) * ld + nr]);
    b[i] = n < cols ? w : 0u;
  }
}
FWP_DEV void bf16_b_cols(uint32_t (&b)[2], const uint16_t* m, int64_t ld, int k0, int n0) {
  const int g = lane_id() >> 2, t = lane_id() & 3;
FWP_UNROLL
  for (int i = 0; i < 2; ++i) b[i] = bf16_pair(m + (n0 + g) * ld + k0 + 2 * t + 8 * i);
}

// The same fragments of bf16 tiles in shared memory, by ldmatrix: one instruction per fragment
// where bf16_a_cols takes 8 loads. Every row read must start 16-byte aligned: ld and the column
// offsets multiples of 8, m 16-byte aligned (the passes' tiles and planes are).
FWP_DEV void smem_a_rows(uint32_t (&a)[4], const uint16_t* m, int ld, int r0, int c0) {
  const int i = lane_id() >> 3, j = lane_id() & 7;  // matrix i: rows 8 (i & 1).., columns 8 (i >> 1)..
  ldmatrix<4, false>(a, m + (r0 + 8 * (i & 1) + j) * ld + c0 + 8 * (i >> 1));
}
FWP_DEV void smem_a_cols(uint32_t (&a)[4], const uint16_t* m, int ld, int r0, int c0) {
  const int i = lane_id() >> 3, j = lane_id() & 7;  // matrix i: the transpose of m's rows c0 + 8 (i >> 1)..
  ldmatrix<4, true>(a, m + (c0 + 8 * (i >> 1) + j) * ld + r0 + 8 * (i & 1));
}
FWP_DEV void smem_b_rows(uint32_t (&b)[2], const uint16_t* m, int ld, int k0, int n0) {
  const int i = (lane_id() >> 3) & 1, j = lane_id() & 7;  // (lanes 16.. give addresses x2 does not read)
  ldmatrix<2, true>(b, m + (k0 + 8 * i + j) * ld + n0);
}
FWP_DEV void smem_b_cols(uint32_t (&b)[2], const uint16_t* m, int ld, int k0, int n0) {
  const int i = (lane_id() >> 3) & 1, j = lane_id() & 7;
  ldmatrix<2, false>(b, m + (n0 + j) * ld + k0 + 8 * i);
}

// The bf16 elements of a matrix read as it is (In), and whether its pairs may be read as 32-bit words.
FWP_DEV const uint16_t* bf16_of(const In& m) { return static_cast<const uint16_t*>(m.p); }
FWP_HD bool word_aligned(const In& m) { return (reinterpret_cast<uintptr_t>(m.p) & 3) == 0; }

// The first P bf16 parts of x (hi first; each next part is bf16 of what the earlier ones leave).
template <int P>
FWP_DEV void split(float x, uint16_t (&h)[P]) {
FWP_UNROLL
  for (int p = 0; p < P; ++p) {
    h[p] = bf16_bits(x);
    x -= bf16_value(h[p]);
  }
}

// Register i of a fragment in P parts: x0 in the lower half and x1 in the upper, each split into
// its bf16 parts (part p into f[p]).
template <int P, int N>
FWP_DEV void put_parts(uint32_t (&f)[P][N], int i, float x0, float x1) {
  uint16_t lo[P], hi[P];
  split<P>(x0, lo);
  split<P>(x1, hi);
FWP_UNROLL
  for (int p = 0; p < P; ++p) f[p][i] = pack(lo[p], hi[p]);
}

// The A fragment (16 x 16, row-major) of m16n8k16 in P parts, element (r, c) = get(r, c): register i
// holds rows g + 8 (i & 1), columns 2t + 8 (i >> 1) and the next one (g = lane / 4, t = lane % 4;
// the lower column in the lower half).
template <int P, class Get>
FWP_DEV void load_a(uint32_t (&a)[P][4], const Get& get) {
  const int g = lane_id() >> 2, t = lane_id() & 3;
FWP_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i & 1), c = 2 * t + 8 * (i >> 1);
    put_parts<P>(a, i, get(r, c), get(r, c + 1));
  }
}

// The B fragment (16 x 8) in P parts, element (k, n) = get(k, n): register i holds rows 2t + 8 i and
// the next one, column g.
template <int P, class Get>
FWP_DEV void load_b(uint32_t (&b)[P][2], const Get& get) {
  const int g = lane_id() >> 2, t = lane_id() & 3;
FWP_UNROLL
  for (int i = 0; i < 2; ++i) {
    const int k = 2 * t + 8 * i;
    put_parts<P>(b, i, get(k, g), get(k + 1, g));
  }
}

// d += A B from PA parts of A and PB of B: the part products A_i B_j of order i + j < max(PA, PB).
template <int PA, int PB>
FWP_DEV void mma_parts(float (&d)[4], const uint32_t (&a)[PA][4], const uint32_t (&b)[PB][2]) {
  constexpr int orders = PA > PB ? PA : PB;
FWP_UNROLL
  for (int i = 0; i < PA; ++i)
FWP_UNROLL
    for (int j = 0; j < PB; ++j)
      if (i + j < orders) mma_16816(d, a[i], b[j]);
}

// Accumulator element e of a 16 x 8 tile: row g + 8 (e >> 1), column 2t + (e & 1).
FWP_DEV int acc_row(int e) { return (lane_id() >> 2) + 8 * (e >> 1); }
FWP_DEV int acc_col(int e) { return 2 * (lane_id() & 3) + (e & 1); }

// A tile of a chunk's input in shared memory, in the dtype it came in (fp32 or bf16): element
// (r, c) at m[r * ld + c], ld = tile_ld(width, bf16).
struct Tile {
  In m;
  int ld;

  FWP_DEV float operator()(int r, int c) const { return m[r * ld + c]; }
};

FWP_DEV Tile smem_tile(const float* slot, bool bf16, int width) { return Tile{In{slot, bf16}, tile_ld(width, bf16)}; }

// The A fragment, in P parts, of rows r0.. and columns c0.. of a tile, or (transposed) of its
// transpose: A(r, c) = t(c0 + c, r0 + r). A bf16 tile taken as one part goes in as it is (smem_a_rows,
// smem_a_cols); any other is split element by element.
template <int P, bool transposed>
FWP_DEV void tile_a(uint32_t (&a)[P][4], const Tile& t, int r0, int c0) {
  if (P == 1 && t.m.bf16) {
    if (transposed)
      smem_a_cols(a[0], bf16_of(t.m), t.ld, r0, c0);
    else
      smem_a_rows(a[0], bf16_of(t.m), t.ld, r0, c0);
  } else if (transposed) {
    load_a<P>(a, [&](int r, int c) { return t(c0 + c, r0 + r); });
  } else {
    load_a<P>(a, [&](int r, int c) { return t(r0 + r, c0 + c); });
  }
}

// The B fragment, in P parts, of rows k0.. and columns n0.. of a tile (as tile_a: a bf16 tile as it
// is when P = 1; its columns past the input's are zeros already, so no column is cut off).
template <int P>
FWP_DEV void tile_b(uint32_t (&b)[P][2], const Tile& t, int k0, int n0) {
  if (P == 1 && t.m.bf16) {
    smem_b_rows(b[0], bf16_of(t.m), t.ld, k0, n0);
  } else {
    load_b<P>(b, [&](int k, int n) { return t(k0 + k, n0 + n); });
  }
}

// A matrix in shared memory as its bf16 parts (split), each part transposed: element (k, n) of part
// p at h[p * plane + n * ld + k], ld = rows + 8 (even, so pairs are 4-byte aligned; a warp's
// fragment loads fall on distinct banks when rows is a multiple of 64). Each element is split once,
// by the thread that writes it, rather than by every warp that multiplies with it, and a B
// fragment's register (rows k, k + 1 of column n) is one 32-bit load. The passes keep their state
// and U' (dU') this way when operands take at most two parts: then the planes fit in the space of
// the fp32 tiles they replace (pass_floats counts those).
struct Planes {
  uint16_t* h;
  int ld, plane;

  template <int P>
  FWP_DEV void put(int k, int n, float x) const {
    uint16_t parts[P];
    split<P>(x, parts);
FWP_UNROLL
    for (int p = 0; p < P; ++p) h[p * plane + n * ld + k] = parts[p];
  }

  // Elements (k, n) and (k + 1, n), k even, one 32-bit store per part.
  template <int P>
  FWP_DEV void put_pair(int k, int n, float x0, float x1) const {
    uint32_t w[P][1];
    put_parts<P>(w, 0, x0, x1);
FWP_UNROLL
    for (int p = 0; p < P; ++p) store_pair(h + p * plane + n * ld + k, w[p][0]);
  }

  // The B fragment (rows k0.., columns n0..) in P parts; by ldmatrix where the planes allow it
  // (smem_b_cols: the passes' planes).
  template <int P, bool Ldsm = false>
  FWP_DEV void fragment(uint32_t (&b)[P][2], int k0, int n0) const {
FWP_UNROLL
    for (int p = 0; p < P; ++p) {
      if (Ldsm)
        smem_b_cols(b[p], h + p * plane, ld, k0, n0);
      else
        bf16_b_cols(b[p], h + p * plane, ld, k0, n0);
    }
  }
};

// Rows r0 .. r0 + R - 1 and columns c0 .. c0 + W - 1 of an fp32 matrix s (row stride ld), zero at rows
// >= `rows` or columns >= `cols`, split into PS bf16 parts by the whole block, each element once:
// element (r, c) of part p goes to h[p * R * (W + 8) + r * (W + 8) + c] (rows 16-byte aligned for
// ldmatrix, 8 of them on distinct banks). Thread t takes the element pairs e = t + i kPassThreads,
// row e / (W / 2), columns 2 (e % (W / 2)) and the next, so that a warp reads runs of a row; with
// Pairs (ld and cols even, s 8-byte aligned) a pair is one 64-bit load, under no condition (an element
// outside reads s's first pair and keeps zero), `Round` pairs in flight at a time (4 by default: few
// registers).
template <int PS, int R, int W, bool Pairs, int Round = 4>
FWP_DEV void split_into_planes(uint16_t* h, const float* s, int64_t ld, int r0, int c0, int rows, int cols) {
  constexpr int half = W / 2, ldh = W + 8, step = kPassThreads / half;  // step: rows between a thread's pairs
  static_assert(kPassThreads % half == 0 && R % (Round * step) == 0 && W % 8 == 0, "whole rounds of pairs per thread");
  // (a thread's pairs share their columns: c stays, the row moves on by step)
  const int r = thread_id() / half, c = 2 * (thread_id() % half);
  const bool col_in = c0 + c < cols;
  const int64_t stride = int64_t(step) * ld;
  int64_t at = int64_t(r0 + r) * ld + c0 + c;  // (an offset: a pointer is formed only in range)
  uint16_t* to = h + r * ldh + c;
  FWP_NO_UNROLL
  for (int i0 = 0; i0 < R / step; i0 += Round, at += Round * stride, to += Round * step * ldh)
  FWP_UNROLL
  for (int i = 0; i < Round; ++i) {
    const bool in = col_in && r0 + r + (i0 + i) * step < rows;
    const float* from = s + (in ? at + i * stride : 0);
    float x0 = 0.f, x1 = 0.f;
    if (Pairs) {
      float_pair(from, x0, x1);  // (cols even: c0 + c + 1 < cols too)
      x0 = in ? x0 : 0.f;
      x1 = in ? x1 : 0.f;
    } else if (in) {
      x0 = from[0];
      x1 = c0 + c + 1 < cols ? from[1] : 0.f;
    }
    uint32_t w[PS][1];
    put_parts<PS>(w, 0, x0, x1);
    FWP_UNROLL
    for (int p = 0; p < PS; ++p) store_pair(to + p * R * ldh + i * step * ldh, w[p][0]);
  }
}
template <int PS, int R, int W>
FWP_DEV void split_into_planes(uint16_t* h, const float* s, int64_t ld, int r0, int c0, int rows, int cols) {
  if (ld % 2 == 0 && cols % 2 == 0 && (reinterpret_cast<uintptr_t>(s) & 7) == 0)
    split_into_planes<PS, R, W, true>(h, s, ld, r0, c0, rows, cols);
  else
    split_into_planes<PS, R, W, false>(h, s, ld, r0, c0, rows, cols);
}

// Planes of `rows` x BV at sm (rows: a multiple of 64).
template <int BV>
FWP_DEV Planes planes_at(float* sm, int rows) { return Planes{reinterpret_cast<uint16_t*>(sm), rows + 8, BV * (rows + 8)}; }

// Whether a pass with P parts per operand keeps its state (two parts) and U' (dU', P parts) as
// Planes. Their space, in halves, is within the fp32 tiles' (KT*16 x value_ld(BV) and C x value_ld(BV)
// floats): 2 BV (16 KT + 8) <= 32 KT value_ld(BV) for every KT >= 4, and 2 BV (C + 8) <= 2 C value_ld(BV).
template <int P>
constexpr bool kPassPlanes = P <= 2;
constexpr bool planes_fit(int bv) {
  return 2 * bv * (4 * 16 + 8) <= 2 * 4 * 16 * value_ld(bv) && 2 * bv * (kPassC + 8) <= 2 * kPassC * value_ld(bv);
}
static_assert(planes_fit(kBV) && planes_fit(kNarrowBV) && planes_fit(kNarrowestBV),
              "the passes' planes fit in the space of the fp32 tiles (smallest key tile: KT = 4)");

// The B operand of a pass's product, fragment by fragment: a tile of the chunk's inputs (TileB) or
// planes (PlanesB).
template <int P>
struct TileB {
  Tile t;
  FWP_DEV void operator()(uint32_t (&b)[P][2], int k0, int n0) const { tile_b<P>(b, t, k0, n0); }
};
template <int P>
struct PlanesB {
  Planes s;
  FWP_DEV void operator()(uint32_t (&b)[P][2], int k0, int n0) const { s.template fragment<P, true>(b, k0, n0); }
};

// Issues the copies of Rows x Pieces pieces of Chunk bytes (Chunk / Bytes elements of Bytes bytes)
// from s (row stride lds elements) into d (row stride ldd), zeros for the pieces at columns cols and
// past: thread t takes pieces t, t + kPassThreads, ... Where Pieces divides kPassThreads, those are
// one column of every (kPassThreads / Pieces)-th row, so that the thread finds its column once and
// then steps two addresses; otherwise a piece's row and column are a shift and a mask (or a
// multiply), Rows and Pieces being known when compiling.
template <int Rows, int Pieces, int Chunk, int Bytes>
FWP_DEV void copy_pieces(char* d, int ldd, const char* s, int64_t lds, int cols) {
  constexpr int per = Chunk / Bytes;
  if constexpr (kPassThreads % Pieces == 0) {
    constexpr int step = kPassThreads / Pieces, n = (Rows + step - 1) / step;
    const int r0 = thread_id() / Pieces, c = per * (thread_id() % Pieces);
    const bool valid = c < cols;
    const int d_off = (r0 * ldd + c) * Bytes, d_step = step * ldd * Bytes;
    const int64_t s_off = valid ? (r0 * lds + c) * Bytes : 0, s_step = valid ? step * lds * Bytes : 0;
FWP_UNROLL_4
    for (int k = 0; k < n; ++k)
      if (Rows % step == 0 || r0 + k * step < Rows) copy_async(d + d_off + k * d_step, s + s_off + k * s_step, Chunk, valid);
  } else {
FWP_NO_UNROLL  // (unrolled, the fp32 4-byte path alone grew each pass by a thousand instructions)
    for (int e = thread_id(); e < Rows * Pieces; e += kPassThreads) {
      const int r = e / Pieces, c = per * (e % Pieces);
      const bool valid = c < cols;
      copy_async(d + (int64_t(r) * ldd + c) * Bytes, valid ? s + (r * lds + c) * Bytes : s, Chunk, valid);
    }
  }
}

// Copies Rows x `cols` elements of src (row stride lds, elements of `bytes` bytes) into dst (row
// stride ldd), zero-filling columns cols .. Width - 1, asynchronously: 16-byte copies where the rows
// allow, else 4-byte ones, else (bf16 with odd sizes or addresses) plain loads and stores, which the
// pass's barrier before its step makes visible as it does the copies. Whole: the caller knows the
// 16-byte copies fit (whole_pass), and nothing is tested.
template <int Rows, int Width, bool Whole = false>
FWP_DEV void copy_tile(void* dst, int ldd, const void* src, int64_t lds, int cols, int bytes) {
  static_assert(Width % 8 == 0, "a tile's width is a whole number of 16-byte bf16 pieces");
  // (b, 16 or 4, is a power of two and a multiple of bytes: masks, no division, since the block
  // asks this for every chunk)
  const auto aligned = [&](int b) {
    return ((reinterpret_cast<uintptr_t>(src) | uintptr_t(lds * bytes) | uintptr_t(cols * bytes)) & (b - 1)) == 0;
  };
  const int chunk = Whole || aligned(16) ? 16 : aligned(4) ? 4 : 0;
  if (chunk == 0) {  // bf16 only: 4-byte copies need pairs
    const uint16_t* s = static_cast<const uint16_t*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int e = thread_id(); e < Rows * Width; e += kPassThreads) {
      const int r = e / Width, c = e % Width;
      d[r * ldd + c] = c < cols ? s[r * lds + c] : uint16_t(0);
    }
    return;
  }
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (bytes == 2) {
    if (chunk == 16)
      copy_pieces<Rows, Width / 8, 16, 2>(d, ldd, s, lds, cols);
    else
      copy_pieces<Rows, Width / 2, 4, 2>(d, ldd, s, lds, cols);
  } else {
    if (chunk == 16)
      copy_pieces<Rows, Width / 4, 16, 4>(d, ldd, s, lds, cols);
    else
      copy_pieces<Rows, Width, 4, 4>(d, ldd, s, lds, cols);
  }
}

// Starts copying one chunk's kPassC rows x cols of src (row stride lds, fp32 or bf16) into the tile
// at `slot` (smem_tile(slot, src.bf16, Width) reads it). Whole (whole_pass holds): in 16-byte
// pieces, with no test of the addresses.
template <int Width, bool Whole = false>
FWP_DEV void load_tile(float* slot, In src, int64_t lds, int cols) {
  copy_tile<kPassC, Width, Whole>(slot, tile_ld(Width, src.bf16), src.p, lds, cols, src.bf16 ? 2 : 4);
}

// Walks the N chunks, in order or in reverse, through `stages` (1 or 2) buffers of shared memory:
// load(c, s) starts copying chunk c's inputs into buffer s (and commits them); store(c) stores the
// state of chunk c, reading no buffer; then a barrier, after which every thread's copies of chunk c
// and its stored state are visible to all; then step(c, s) computes with them. With two buffers the
// next chunk's copy starts right after that barrier, into the buffer the previous step read (each
// of its reads came before the barrier), and runs during this step: two barriers per chunk, the
// step's own and this one. With one buffer each step ends at a barrier, after which its buffer may
// be refilled.
template <class Load, class Store, class Step>
FWP_DEV void walk_chunks(int64_t N, bool reverse, int stages, const Load& load, const Store& store, const Step& step) {
  const auto chunk = [&](int64_t n) { return reverse ? N - 1 - n : n; };
  load(chunk(0), 0);
  for (int64_t n = 0; n < N; ++n) {
    const int s = stages == 2 ? int(n & 1) : 0;
    copy_wait_all();  // this chunk's copies: the only ones in flight
    store(chunk(n));
    block_sync();
    if (stages == 2 && n + 1 < N) load(chunk(n + 1), s ^ 1);
    step(chunk(n), s);
    if (stages == 1) {
      block_sync();
      if (n + 1 < N) load(chunk(n + 1), 0);
    }
  }
}

// The state tile of this warp: m-tiles warp + 4 i (i < KT / 4) of 16 key rows, NT n-tiles of 8 value
// columns, as accumulators.
template <int KT, int BV>
struct StateTile {
  static constexpr int NT = BV / 8;
  float x[KT / 4][NT][4];

  FWP_DEV int row(int i, int e) const { return 16 * (warp_id() + 4 * i) + acc_row(e); }

  // From src[r * ld + c] (r < dk, c < nv; zero elsewhere), or zeros when src is null.
  FWP_DEV void load(const float* src, int64_t ld, int dk, int nv) {
FWP_UNROLL
    for (int i = 0; i < KT / 4; ++i)
FWP_UNROLL
      for (int j = 0; j < NT; ++j)
FWP_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = row(i, e), c = 8 * j + acc_col(e);
          x[i][j][e] = (src != nullptr && r < dk && c < nv) ? src[r * ld + c] : 0.f;
        }
  }

  // To shared memory (every row and column: as fp32, sm[r * value_ld(BV) + c], or with planes, as
  // their two parts) and to dst[r * ld + c] (r < dk, c < nv; a row's two neighbouring columns in
  // one store where the address allows, as rows_times_state stores U').
  // Whole: dst and ld allow pairs (whole_pass).
  template <bool planes, bool Whole = false>
  FWP_DEV void store(float* sm, float* dst, int64_t ld, int dk, int nv) const {
    const Planes pl = planes_at<BV>(sm, KT * 16);
    const Out out{dst, false};
    const bool pairs = Whole || (out.pairs() && ld % 2 == 0);
FWP_UNROLL
    for (int i = 0; i < KT / 4; ++i)
FWP_UNROLL
      for (int j = 0; j < NT; ++j)
FWP_UNROLL
        for (int e = 0; e < 4; e += 2) {
          const int r = row(i, e), c = 8 * j + acc_col(e);  // c even; element e + 1 is (r, c + 1)
          const float x0 = x[i][j][e], x1 = x[i][j][e + 1];
          if (sm != nullptr) {
            if (planes) {
              pl.template put<2>(r, c, x0);
              pl.template put<2>(r, c + 1, x1);
            } else {
              sm[r * value_ld(BV) + c] = x0;
              sm[r * value_ld(BV) + c + 1] = x1;
            }
          }
          if (r >= dk) continue;
          if (c + 1 < nv)
            out.set_two(r * ld + c, x0, x1, pairs);
          else if (c < nv)
            out.set(r * ld + c, x0);
        }
  }

  // x += sign * A^T B for this warp's rows, with A (C x KT*16: A^T's row r is column r of A) a tile
  // in shared memory and B (C x BV) given fragment by fragment by b_frag (TileB, PlanesB); P parts each.
  template <int P, class BFrag>
  FWP_DEV void add_transposed_product(float sign, const Tile& a_sm, const BFrag& b_frag) {
FWP_UNROLL
    for (int i = 0; i < KT / 4; ++i) {
      const int m0 = 16 * (warp_id() + 4 * i);
      float acc[NT][4] = {};
FWP_NO_UNROLL
      for (int kk = 0; kk < kPassC / 16; ++kk) {
        uint32_t a[P][4];
        tile_a<P, true>(a, a_sm, m0, 16 * kk);
FWP_UNROLL
        for (int j = 0; j < NT; ++j) {
          uint32_t b[P][2];
          b_frag(b, 16 * kk, 8 * j);
          mma_parts<P, P>(acc[j], a, b);
        }
      }
FWP_UNROLL
      for (int j = 0; j < NT; ++j)
FWP_UNROLL
        for (int e = 0; e < 4; ++e) x[i][j][e] += sign * acc[j][e];
    }
  }
};

// This warp's 16 rows (chunk steps 16 warp ..) of base + sign * A S, A = a_sm (C x KT*16, P parts),
// S = the state at s_sm (KT*16 x BV, PS parts: fp32 with row stride value_ld(BV), or planes),
// base = base_sm (C x BV); into out_sm (C x BV: fp32 with row stride value_ld(BV), or P planes) and
// out[r * ld + c] for c < nv (Whole: out and ld allow pairs).
template <int KT, int P, int PS, int BV, bool Whole = false>
FWP_DEV void rows_times_state(const Tile& a_sm, float* s_sm, float sign, const Tile& base_sm, float* out_sm,
                              Out out, int64_t ld, int nv) {
  constexpr bool planes = kPassPlanes<P>;
  constexpr int NT = BV / 8;
  const Planes s_pl = planes_at<BV>(s_sm, KT * 16), out_pl = planes_at<BV>(out_sm, kPassC);
  const int m0 = 16 * warp_id();
  float acc[NT][4] = {};
FWP_NO_UNROLL
  for (int kk = 0; kk < KT; ++kk) {
    uint32_t a[P][4];
    tile_a<P, false>(a, a_sm, m0, 16 * kk);
FWP_UNROLL
    for (int j = 0; j < NT; ++j) {
      uint32_t b[PS][2];
      if (planes)
        s_pl.template fragment<PS, true>(b, 16 * kk, 8 * j);
      else
        load_b<PS>(b, [&](int r, int c) { return s_sm[(16 * kk + r) * value_ld(BV) + 8 * j + c]; });
      mma_parts<P, PS>(acc[j], a, b);
    }
  }
  const bool pairs = Whole || (out.pairs() && ld % 2 == 0);
FWP_UNROLL
  for (int j = 0; j < NT; ++j)
FWP_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int r = m0 + acc_row(e), c = 8 * j + acc_col(e);  // c even; element e + 1 is (r, c + 1)
      const float x0 = base_sm(r, c) + sign * acc[j][e], x1 = base_sm(r, c + 1) + sign * acc[j][e + 1];
      if (planes) {
        out_pl.template put<P>(r, c, x0);
        out_pl.template put<P>(r, c + 1, x1);
      } else {
        out_sm[r * value_ld(BV) + c] = x0;
        out_sm[r * value_ld(BV) + c + 1] = x1;
      }
      if (c + 1 < nv)
        out.set_two(r * ld + c, x0, x1, pairs);
      else if (c < nv)
        out.set(r * ld + c, x0);
    }
}

// The B operand of a pass's product that rows_times_state wrote to values_sm (U', dU'): planes or
// an fp32 tile.
template <int P, int BV, class Use>
FWP_DEV void with_values(float* values_sm, const Use& use) {
  if constexpr (kPassPlanes<P>)
    use(PlanesB<P>{planes_at<BV>(values_sm, kPassC)});
  else
    use(TileB<P>{smem_tile(values_sm, false, BV)});
}

// What a pass block (bh, tile) works on: its value columns col0 .. col0 + nv - 1, the size of one
// state, and its shared memory: the state tile (KT*16 x BV), one C x BV tile (U' or dU'), then
// `stages` buffers laid out as `layout` says (the sizes pass_floats counts).
template <int KT, int BV>
struct PassBlock {
  int col0, nv;
  int64_t state;
  float *state_sm, *values_sm, *stages;
  PassLayout layout;

  FWP_DEV PassBlock(const PassArgs& x, float* smem, int tile, bool backward)
      : col0(tile * BV),
        nv(imin(BV, x.dv - tile * BV)),
        state(int64_t(x.dk) * x.dv),
        state_sm(smem),
        values_sm(smem + KT * 16 * value_ld(BV)),
        stages(smem + (KT * 16 + kPassC) * value_ld(BV)),
        layout(pass_layout(KT, backward, x.b.p != nullptr, pass_bf16(x), BV)) {}

  FWP_DEV float* stage(int s) const { return stages + s * layout.floats; }
};

// Whether a pass may run its Whole kernel (Whole = true below): one bf16 part per operand; K, W,
// U (Q) and dO bf16 and every chunk copy in 16-byte pieces (those inputs and dU'_loc 16-byte
// aligned, d_k and d_v multiples of 8); the checkpoints (fp32) and U' (dU', bf16) stored in
// pairs. A Whole kernel knows every dtype and copy size when it is compiled, so that its chunk loop
// tests none of them (no address tests, no branch between a product's loads).
FWP_HD bool whole_pass(const PassArgs& x, int parts, bool backward) {
  const auto at = [](const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; };
  const auto copied = [&](const In& m) { return m.bf16 && at(m.p, 16); };
  return parts == 1 && x.dk % 8 == 0 && x.dv % 8 == 0 && copied(x.a) && (x.b.p == nullptr || copied(x.b)) &&
         copied(x.c) && (!backward || (copied(x.e) && at(x.d, 16))) && at(x.per_chunk, 8) &&
         (x.values.p == nullptr || (x.values.bf16 && at(x.values.p, 4)));
}

// An input or result as a Whole pass kernel reads it: bf16, as whole_pass requires, written in as
// a constant (the compiler then leaves out every branch on the dtype); otherwise the argument
// itself (a copy would hold registers that the three-part kernels do not have to spare).
template <bool Whole>
struct Dtypes {
  template <class M>
  FWP_DEV static M of(M m) {
    m.bf16 = true;
    return m;
  }
};
template <>
struct Dtypes<false> {
  template <class M>
  FWP_DEV static const M& of(const M& m) {
    return m;
  }
};

// F2 for block (bh, tile): see the header. P parts per plain operand, the state max(2, P); Whole
// where whole_pass holds.
template <int KT, int P, int BV, bool Whole = false>
FWP_DEV void state_forward_pass(const PassArgs& x, float* smem, int bh, int tile) {
  constexpr int PS = P > 2 ? P : 2;
  const In &k_in = Dtypes<Whole>::of(x.a), &w_in = Dtypes<Whole>::of(x.b), &u_in = Dtypes<Whole>::of(x.c);
  const Out& vn_out = Dtypes<Whole>::of(x.values);
  const bool delta = w_in.p != nullptr;
  const PassBlock<KT, BV> blk(x, smem, tile, false);
  const int col0 = blk.col0, nv = blk.nv;
  const int64_t state = blk.state;
  float* s_sm = blk.state_sm;
  float* vn_sm = blk.values_sm;
  const auto k_sm = [&](int s) { return blk.stage(s) + blk.layout.k; };
  const auto w_sm = [&](int s) { return blk.stage(s) + blk.layout.w; };
  const auto u_sm = [&](int s) { return blk.stage(s) + blk.layout.c; };
  const auto load = [&](int64_t c, int s) {
    const int64_t row0 = (int64_t(bh) * x.N + c) * kPassC;
    load_tile<KT * 16, Whole>(k_sm(s), k_in + row0 * x.dk, x.dk, x.dk);
    if (delta) load_tile<KT * 16, Whole>(w_sm(s), w_in + row0 * x.dk, x.dk, x.dk);
    load_tile<BV, Whole>(u_sm(s), u_in + row0 * x.dv + col0, x.dv, nv);
    copy_commit();
  };

  StateTile<KT, BV> st;
  st.load(x.init + bh * state + col0, x.dv, x.dk, nv);
  // checkpoint c = S_c (and, for the delta rule's W S_c, to shared memory)
  const auto store = [&](int64_t c) {
    st.template store<kPassPlanes<P>, Whole>(delta ? s_sm : nullptr,
                                             x.per_chunk + (int64_t(bh) * x.N + c) * state + col0, x.dv, x.dk, nv);
  };
  walk_chunks(x.N, false, x.stages, load, store, [&](int64_t c, int s) {
    const Tile u = smem_tile(u_sm(s), u_in.bf16, BV), k = smem_tile(k_sm(s), k_in.bf16, KT * 16);
    if (delta) {  // U' = U - W S_c
      rows_times_state<KT, P, PS, BV, Whole>(smem_tile(w_sm(s), w_in.bf16, KT * 16), s_sm, -1.f, u, vn_sm,
                                             vn_out + (int64_t(bh) * x.N + c) * kPassC * x.dv + col0, x.dv, nv);
      block_sync();
      with_values<P, BV>(vn_sm, [&](const auto& vn) { st.template add_transposed_product<P>(1.f, k, vn); });
    } else {
      st.template add_transposed_product<P>(1.f, k, TileB<P>{u});  // S_{c+1} = S_c + K^T U'
    }
  });
  st.template store<false>(nullptr, x.last + bh * state + col0, x.dv, x.dk, nv);
}

// B2 for block (bh, tile), in reverse over chunks: see the header.
template <int KT, int P, int BV, bool Whole = false>
FWP_DEV void state_backward_pass(const PassArgs& x, float* smem, int bh, int tile) {
  constexpr int PS = P > 2 ? P : 2;
  const In &k_in = Dtypes<Whole>::of(x.a), &w_in = Dtypes<Whole>::of(x.b), &q_in = Dtypes<Whole>::of(x.c),
           &do_in = Dtypes<Whole>::of(x.e);
  const Out& dvn_out = Dtypes<Whole>::of(x.values);
  const bool delta = w_in.p != nullptr;
  const PassBlock<KT, BV> blk(x, smem, tile, true);
  const int col0 = blk.col0, nv = blk.nv;
  const int64_t state = blk.state;
  float* ds_sm = blk.state_sm;
  float* dvn_sm = blk.values_sm;
  const auto k_sm = [&](int s) { return blk.stage(s) + blk.layout.k; };
  const auto q_sm = [&](int s) { return blk.stage(s) + blk.layout.c; };
  const auto w_sm = [&](int s) { return blk.stage(s) + blk.layout.w; };
  const auto dl_sm = [&](int s) { return blk.stage(s) + blk.layout.d; };
  const auto do_sm = [&](int s) { return blk.stage(s) + blk.layout.e; };
  const auto load = [&](int64_t c, int s) {
    const int64_t row0 = (int64_t(bh) * x.N + c) * kPassC;
    load_tile<KT * 16, Whole>(k_sm(s), k_in + row0 * x.dk, x.dk, x.dk);
    load_tile<KT * 16, Whole>(q_sm(s), q_in + row0 * x.dk, x.dk, x.dk);
    if (delta) load_tile<KT * 16, Whole>(w_sm(s), w_in + row0 * x.dk, x.dk, x.dk);
    load_tile<BV, Whole>(dl_sm(s), In{x.d + row0 * x.dv + col0, false}, x.dv, nv);
    load_tile<BV, Whole>(do_sm(s), do_in + row0 * x.dv + col0, x.dv, nv);
    copy_commit();
  };

  StateTile<KT, BV> ds;
  ds.load(x.init + bh * state + col0, x.dv, x.dk, nv);
  // dS_{c+1}
  const auto store = [&](int64_t c) {
    ds.template store<kPassPlanes<P>, Whole>(ds_sm, x.per_chunk + (int64_t(bh) * x.N + c) * state + col0, x.dv, x.dk,
                                             nv);
  };
  walk_chunks(x.N, true, x.stages, load, store, [&](int64_t c, int s) {
    // dU' = dU'_loc + K dS_{c+1}
    rows_times_state<KT, P, PS, BV, Whole>(smem_tile(k_sm(s), k_in.bf16, KT * 16), ds_sm, 1.f,
                                           smem_tile(dl_sm(s), false, BV), dvn_sm,
                                           dvn_out + (int64_t(bh) * x.N + c) * kPassC * x.dv + col0, x.dv, nv);
    block_sync();
    // dS_c = dS_{c+1} + Q^T dO - W^T dU'
    ds.template add_transposed_product<P>(1.f, smem_tile(q_sm(s), q_in.bf16, KT * 16),
                                          TileB<P>{smem_tile(do_sm(s), do_in.bf16, BV)});
    if (delta)
      with_values<P, BV>(dvn_sm, [&](const auto& dvn) {
        ds.template add_transposed_product<P>(-1.f, smem_tile(w_sm(s), w_in.bf16, KT * 16), dvn);
      });
  });
  ds.template store<false>(nullptr, x.last + bh * state + col0, x.dv, x.dk, nv);
}

// ---- The per-chunk row stages (chunked.h: values, F3 output, B1 local_grad), fast version ----
//
// One block of 4 warps per (batch·head, chunk, tile of kRowCols value columns); warp w computes the
// chunk's rows 16 w .. 16 w + 15 on its own: fragments are read straight from global memory (L1 /
// L2), or, in the Staged kernels (one bf16 part, d_k <= 128), from the chunk's operands that the
// block first copies into shared memory; the fp32 checkpoint S_c is split into bf16 parts in shared
// memory by the block, a slab at a time (times_state_rows); the C x C intermediate tril(Q K^T) never leaves the
// registers: an m16n8k16 accumulator pair (n-tiles 2 kk, 2 kk + 1) holds exactly the A fragment of
// k-block kk, split into bf16 parts in place.

constexpr int kRowCols = 64;          // value columns per block
constexpr int kRowNT = kRowCols / 8;  // n-tiles per warp
constexpr int kQKNT = kPassC / 8;     // n-tiles of a C x C row block

// The parts a checkpoint takes where plain operands take P: at least two, so that an fp32 state keeps
// fp32-level accuracy.
template <int P>
constexpr int kStateParts = P > 2 ? P : 2;

// A row stage's shared memory: a slab of kRowSlab rows of the checkpoint's kRowCols value columns
// in PS bf16 planes, row-major: element (k, n) of part p at slab[p * kRowSlabPlane + k * kRowSlabLd + n]
// (rows of kRowCols + 8 halves: 16-byte aligned for ldmatrix, and its 8 rows on distinct banks).
constexpr int kRowSlab = 32, kRowSlabLd = kRowCols + 8, kRowSlabPlane = kRowSlab * kRowSlabLd;
template <int PS>
struct RowSmem {
  alignas(16) uint16_t slab[PS * kRowSlabPlane];
};

// The Staged row kernels (staged_rows: Whole, d_k <= kStagedDk) first copy the chunk's operands into
// shared memory, all at once (cp.async), and their warps take every fragment there by ldmatrix;
// the other kernels read each fragment from global memory just before its product, so that every
// k-block waited for its loads (L2) in turn. C x (kStagedDk + 8) halves per C x d_k matrix (rows
// 16-byte aligned, 8 of them on distinct banks): 43 KB in all, the checkpoint's slab over the second
// matrix once the local product has read it.
constexpr int kStagedDk = 128, kStagedLd = kStagedDk + 8;
struct StagedRowSmem {
  alignas(16) uint16_t a[kPassC * kStagedLd];  // rows of W (values), Q (output) or K (local gradient)
  union {
    alignas(16) uint16_t b[kPassC * kStagedLd];                 // K (output) or Q (local gradient)
    alignas(16) uint16_t slab[kStateParts<1> * kRowSlabPlane];  // then the checkpoint's slab (two parts)
  };
  alignas(16) uint16_t v[kPassC * kRowSlabLd];  // the value tile's columns of U' (output) or dO (local gradient)
};
static_assert(sizeof(StagedRowSmem) <= 48 * 1024, "the row stages' shared memory is static: at most 48 KB");
template <int P, bool Staged>
using RowSmemOf = typename std::conditional<Staged, StagedRowSmem, RowSmem<kStateParts<P>>>::type;

enum class RowStage { Values, Output, LocalGrad };

// Everything a row stage reads and writes (chunked layout). Values: a = w, s = checkpoints, base = u
// -> out = U'. Output: a = q, b = k, s = checkpoints, v = U' -> out = O. LocalGrad: a = q, b = k,
// v = dO -> out = dU'_loc.
struct RowArgs {
  In a, b, v;  // caller's dtype, or bf16 for W and U' (see Out)
  const float *s, *base;
  Out out;
  int64_t N;
  int dk, dv;
};

// acc[j] += A B over k in [k_begin, K) by 16, for this warp's 16 rows and n-tiles j_begin <= j < nj,
// from fragments: fa(a, k0) loads A's columns k0.. (PA parts), fb(b, k0, n0) B's rows k0.. and
// columns n0.. (PB parts). A triangular operand's zero blocks are left out by K, k_begin (a multiple
// of 16), nj or j_begin: their products would add exact zeros. Eager (where fb may read every n-tile
// j < NJ, left out or not): all of a k-block's B fragments are loaded first, under no branch, so
// that their loads are in flight together; otherwise each left-out n-tile's test comes before its
// loads, and a left-out n-tile's fragment is not read.
template <int NJ, int PA, int PB, bool Eager = false, class FA, class FB>
FWP_DEV void warp_product_fragments(float (&acc)[NJ][4], int K, const FA& fa, const FB& fb, int nj = NJ,
                                    int k_begin = 0, int j_begin = 0) {
  FWP_NO_UNROLL
  for (int k0 = k_begin; k0 < K; k0 += 16) {
    uint32_t a[PA][4];
    fa(a, k0);
    if constexpr (Eager) {
      uint32_t b[NJ][PB][2];
      FWP_UNROLL
      for (int j = 0; j < NJ; ++j) fb(b[j], k0, 8 * j);
      FWP_UNROLL
      for (int j = 0; j < NJ; ++j)
        if (j >= j_begin && j < nj) mma_parts<PA, PB>(acc[j], a, b[j]);
      continue;
    }
    const auto tile = [&](int j) {
      uint32_t b[PB][2];
      fb(b, k0, 8 * j);
      mma_parts<PA, PB>(acc[j], a, b);
    };
    // Each n-tile is a product of its own, so their order is free: with n-tiles left out on the left
    // they are taken right to left, and the first left-out one ends the loop (a test per n-tile
    // costs more than the n-tiles it saves)
    if (j_begin == 0) {
      FWP_UNROLL
      for (int j = 0; j < NJ; ++j) {
        if (j >= nj) break;
        tile(j);
      }
    } else {
      FWP_UNROLL
      for (int j = NJ - 1; j >= 0; --j) {
        if (j < j_begin) break;
        if (j < nj) tile(j);
      }
    }
  }
}

// Whether matrix m may be read in whole bf16 fragments (or is not given): bf16, 4-byte aligned.
FWP_HD bool whole_words(const In& m) {
  return m.p == nullptr || (m.bf16 && word_aligned(m));
}

// Whether m is null or bf16 and 16-byte aligned: with a width a multiple of 8, each of a chunk's
// tiles of it copies in whole 16-byte pieces (copy_tile<..., true>: no address test, no fallback).
FWP_HD bool whole_pieces(const In& m) {
  return m.p == nullptr || (m.bf16 && (reinterpret_cast<uintptr_t>(m.p) & 15) == 0);
}

// Element getters of a matrix m read as it is (In), [rows, d] with row stride d, that warp_product
// takes whole fragments from when they are bf16 and taken as one part (bf16_a_rows and the rest):
//   RowsOf:      A(r, j) = m(r0 + r, j), zero for j >= d;
//   ColsOf:      B(j, n) = m(j, c0 + n), zero for c0 + n >= d;
//   TransposeOf: B(j, n) = m(n, j), zero for j >= d;
//   TRowsOf:     A(r, j) = m(j, r0 + r) (no bounds);
//   ScaledRowsOf: A(r, j) = beta(r0 + r) m(r0 + r, j) rounded to fp32 (beta X's rows), zero for j >= d;
// Any other getter (a lambda) is read element by element. With Whole = true (RowsOf<true> and the
// rest) the caller has checked what whole fragments need (whole_fragments, whole_rows: P = 1, m bf16,
// 4-byte aligned, d_k and d_v multiples of 16), and the
// element-by-element fallback is not compiled: a kernel that carries it needs more registers even
// where it never runs it, and its test between loads keeps them from being issued together.
template <bool Whole = false>
struct RowsOf {
  In m;
  int d, r0;
  FWP_DEV float operator()(int r, int j) const { return j < d ? m[(r0 + r) * d + j] : 0.f; }
  FWP_DEV bool words() const { return Whole || (m.bf16 && d % 16 == 0 && word_aligned(m)); }
};
template <bool Whole = false>
struct ColsOf {
  In m;
  int d, c0;
  FWP_DEV float operator()(int j, int n) const { return c0 + n < d ? m[j * d + c0 + n] : 0.f; }
  FWP_DEV bool words() const { return Whole || m.bf16; }
};
// Getters of a bf16 matrix t in shared memory (ld a multiple of 8, t 16-byte aligned), whose
// fragments come by ldmatrix, one part (the operands B3, the Staged row kernels and the WY stage
// copy into shared memory):
//   ColsTile:      B(j, n) = t[j * ld + n] (a TileQueue's tiles);
//   TransposeTile: B(j, n) = t[n * ld + j];
//   RowsTile:      A(r, j) = t[(r0 + r) * ld + j];
//   TRowsTile:     A(r, j) = t[j * ld + r0 + r].
struct ColsTile {
  const uint16_t* t;
  int ld;
};
struct TransposeTile {
  const uint16_t* t;
  int ld;
};
struct RowsTile {
  const uint16_t* t;
  int ld, r0;
};
struct TRowsTile {
  const uint16_t* t;
  int ld, r0;
};

// Tiles of bf16 matrices, kPassC rows by Width columns each, in the order Tiles gives them
// (tiles.count() of them; tiles.at(i, d, c0) is tile i's matrix, d wide, from its column c0 on),
// through two buffers of kPassC x Ld halves (ld: ldmatrix's 8 rows on distinct banks): next() waits
// for tile i, then, after a barrier (tile i is visible to all, and nobody reads tile i - 1 any more),
// starts copying tile i + 1 into the buffer tile i - 1 had (cp.async, 16 bytes a piece) and
// returns tile i's buffer, which the block uses while that copy is in flight. issue(0) starts the
// first copy. B3's column tiles (GradColsQueue) and the WY stage's tiles of K and V (tinv_times_tiles)
// take this path: read from global memory, each of their B fragment registers was two 16-bit loads,
// made by every warp for every k-block; copied when needed, each tile's copy was a wait of its own.
// Their Whole kernels ask whole_pieces of every matrix the queue copies, and widths that are
// multiples of 8, so that the copies are whole 16-byte pieces, with no test of the addresses.
template <class Tiles, int Width, int Ld>
struct TileQueue {
  Tiles tiles;
  uint16_t* buf;  // 2 * kPassC * Ld halves
  int taken;
  FWP_DEV uint16_t* slot(int i) const { return buf + (i & 1) * (kPassC * Ld); }
  FWP_DEV void issue(int i) const {
    if (i >= tiles.count()) return;
    int d, c0;
    const In a = tiles.at(i, d, c0);
    copy_tile<kPassC, Width, true>(slot(i), Ld, (a + c0).p, d, imin(Width, d - c0), 2);
    copy_commit();
  }
  FWP_DEV uint16_t* next() {
    copy_wait_all();
    block_sync();
    issue(taken + 1);
    return slot(taken++);
  }
  // use(tile i) with B(j, n) = a[j, c0 + n]: tile i must be a's columns c0..
  template <class Use>
  FWP_DEV void take(const In& a, int c0, const Use& use) {
    int d, c;
    expect(tiles.at(taken, d, c).p == a.p && c == c0, "column tiles are taken in their queue's order");
    use(ColsTile{next(), Ld});
  }
};

template <bool Whole = false>
struct TransposeOf {
  In m;
  int d;
  FWP_DEV float operator()(int j, int n) const { return j < d ? m[n * d + j] : 0.f; }
  FWP_DEV bool words() const { return Whole || (m.bf16 && d % 16 == 0 && word_aligned(m)); }
};
template <bool Whole = false>
struct TRowsOf {
  In m;
  int d, r0;
  FWP_DEV float operator()(int r, int j) const { return m[j * d + r0 + r]; }
  FWP_DEV bool words() const { return Whole || m.bf16; }
};

template <bool Whole = false>
struct ScaledRowsOf {
  In m, beta;
  int d, r0;
  FWP_DEV float operator()(int r, int j) const { return j < d ? mul_rn(m[(r0 + r) * d + j], beta[r0 + r]) : 0.f; }
  FWP_DEV bool words() const { return Whole || (m.bf16 && d % 16 == 0 && word_aligned(m)); }
};

// ScaledRowsOf's A from a bf16 tile in shared memory: A(r, j) = beta[r0 + r] t[(r0 + r) * ld + j]
// rounded to fp32, the pairs by ldmatrix (the WY stage's staged K), beta in shared memory too.
struct ScaledRowsTile {
  const uint16_t* t;
  int ld;
  const float* beta;
  int r0;
};

// A's columns k0.. (P parts) from getter g, and B's rows k0.., columns n0..: whole bf16 fragments
// where the getter allows (the overloads), else element by element.
template <int P, class G>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const G& g, int k0) {
  load_a<P>(a, [&](int r, int c) { return g(r, k0 + c); });
}
template <int P, class G>
FWP_DEV void fragment_b(uint32_t (&b)[P][2], const G& g, int k0, int n0) {
  load_b<P>(b, [&](int k, int n) { return g(k0 + k, n0 + n); });
}
template <int P, bool W>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const RowsOf<W>& g, int k0) {
  if (P == 1 && g.words())
    bf16_a_rows(a[0], bf16_of(g.m), g.d, g.r0, k0);
  else
    load_a<P>(a, [&](int r, int c) { return g(r, k0 + c); });
}
template <int P, bool W>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const TRowsOf<W>& g, int k0) {
  if (P == 1 && g.words())
    bf16_a_cols(a[0], bf16_of(g.m), g.d, g.r0, k0);
  else
    load_a<P>(a, [&](int r, int c) { return g(r, k0 + c); });
}
template <int P, bool W>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const ScaledRowsOf<W>& g, int k0) {
  if (!g.words()) {
    load_a<P>(a, [&](int r, int c) { return g(r, k0 + c); });
    return;
  }
  // load_a's elements, each register's pair of X in one 32-bit load, times its row's beta
  const int r = g.r0 + (lane_id() >> 2), c = k0 + 2 * (lane_id() & 3);
  const float beta[2] = {g.beta[r], g.beta[r + 8]};
  FWP_UNROLL
  for (int i = 0; i < 4; ++i) {
    const uint32_t w = bf16_pair(bf16_of(g.m) + (r + 8 * (i & 1)) * g.d + c + 8 * (i >> 1));
    put_parts<P>(a, i, mul_rn(bf16_value(uint16_t(w & 0xFFFFu)), beta[i & 1]),
                 mul_rn(bf16_value(uint16_t(w >> 16)), beta[i & 1]));
  }
}
template <int P>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const ScaledRowsTile& g, int k0) {
  uint32_t w[4];  // load_a's pairs of the tile, each times its row's beta
  smem_a_rows(w, g.t, g.ld, g.r0, k0);
  const int r = g.r0 + (lane_id() >> 2);
  const float beta[2] = {g.beta[r], g.beta[r + 8]};
  FWP_UNROLL
  for (int i = 0; i < 4; ++i)
    put_parts<P>(a, i, mul_rn(bf16_value(uint16_t(w[i] & 0xFFFFu)), beta[i & 1]),
                 mul_rn(bf16_value(uint16_t(w[i] >> 16)), beta[i & 1]));
}
template <int P, bool W>
FWP_DEV void fragment_b(uint32_t (&b)[P][2], const ColsOf<W>& g, int k0, int n0) {
  if (P == 1 && g.words())
    bf16_b_rows(b[0], bf16_of(g.m) + g.c0, g.d, k0, n0, g.d - g.c0);
  else
    load_b<P>(b, [&](int k, int n) { return g(k0 + k, n0 + n); });
}
template <int P>
FWP_DEV void fragment_b(uint32_t (&b)[P][2], const ColsTile& g, int k0, int n0) {
  static_assert(P == 1, "a bf16 tile is one part");
  smem_b_rows(b[0], g.t, g.ld, k0, n0);
}
template <int P>
FWP_DEV void fragment_b(uint32_t (&b)[P][2], const TransposeTile& g, int k0, int n0) {
  static_assert(P == 1, "a bf16 tile is one part");
  smem_b_cols(b[0], g.t, g.ld, k0, n0);
}
template <int P>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const RowsTile& g, int k0) {
  static_assert(P == 1, "a bf16 tile is one part");
  smem_a_rows(a[0], g.t, g.ld, g.r0, k0);
}
template <int P>
FWP_DEV void fragment_a(uint32_t (&a)[P][4], const TRowsTile& g, int k0) {
  static_assert(P == 1, "a bf16 tile is one part");
  smem_a_cols(a[0], g.t, g.ld, g.r0, k0);
}
template <int P, bool W>
FWP_DEV void fragment_b(uint32_t (&b)[P][2], const TransposeOf<W>& g, int k0, int n0) {
  if (P == 1 && g.words())
    bf16_b_cols(b[0], bf16_of(g.m), g.d, k0, n0);
  else
    load_b<P>(b, [&](int k, int n) { return g(k0 + k, n0 + n); });
}

// acc[j] += A B as warp_product_fragments, from getters: A(r, k) = ga(r, k) in PA parts,
// B(k, n) = gb(k, n) for n-tile j's columns 8 j .. in PB parts (the getters give 0 outside).
template <int NJ, int PA, int PB, bool Eager = false, class GA, class GB>
FWP_DEV void warp_product(float (&acc)[NJ][4], int K, const GA& ga, const GB& gb, int nj = NJ, int k_begin = 0,
                          int j_begin = 0) {
  warp_product_fragments<NJ, PA, PB, Eager>(
      acc, K, [&](uint32_t(&a)[PA][4], int k0) { fragment_a<PA>(a, ga, k0); },
      [&](uint32_t(&b)[PB][2], int k0, int n0) { fragment_b<PB>(b, gb, k0, n0); }, nj, k_begin, j_begin);
}

// The A fragment, in P parts, of k-block kk of a 16 x C row block held as accumulators (n-tiles 2 kk
// and 2 kk + 1; load_a's register order).
template <int P>
FWP_DEV void a_from_acc(uint32_t (&a)[P][4], const float (&acc)[kQKNT][4], int kk) {
  FWP_UNROLL
  for (int i = 0; i < 4; ++i) {
    put_parts<P>(a, i, acc[2 * kk + (i >> 1)][2 * (i & 1)], acc[2 * kk + (i >> 1)][2 * (i & 1) + 1]);
  }
}

// Whether a row stage may take every fragment whole (Whole = true below): one bf16 part per operand,
// A, B and V bf16 and 4-byte aligned, d_k and d_v multiples of 16. Whole kernels carry no fallback
// and no branch between a product's loads, which can then all be in flight at once.
FWP_HD bool whole_rows(const RowArgs& x, int parts) {
  return parts == 1 && x.dk % 16 == 0 && x.dv % 16 == 0 && whole_words(x.a) && whole_words(x.b) &&
         whole_words(x.v);
}

// Whether a row stage runs its Staged kernel (Staged = true below; StagedRowSmem): whole_rows, and
// d_k within the staged tiles. (copy_tile tests the addresses for its 16-byte copies; whole_rows'
// 4-byte alignment allows 4-byte ones.)
FWP_HD bool staged_rows(const RowArgs& x, int parts) { return whole_rows(x, parts) && x.dk <= kStagedDk; }

// Starts copying a chunk's rows of a bf16 matrix m [C, d] (d <= kStagedDk) into a staged tile.
FWP_DEV void stage_rows(uint16_t* tile, const In& m, int d) {
  if (d <= kStagedDk / 2)
    copy_tile<kPassC, kStagedDk / 2>(tile, kStagedLd, m.p, d, d, 2);
  else
    copy_tile<kPassC, kStagedDk>(tile, kStagedLd, m.p, d, d, 2);
}

// acc += A S for this warp's rows of A (getter ga, d_k columns) and a checkpoint's tile s (row stride
// ld, d_k rows, nv <= kRowCols columns; zero past them), through shared memory: for each kRowSlab
// rows of s in turn the block splits their elements into PS planes over `slab`, each element once
// (from global memory every warp split each one it read: 4 times), and the warps take B fragments
// there by ldmatrix. The splits and the order of the products are what they would be from global
// memory. Each slab starts with a barrier, after which nobody reads the previous one.
template <int P, int PS, class GA>
FWP_DEV void times_state_rows(float (&acc)[kRowNT][4], const GA& ga, uint16_t* slab, const float* s, int64_t ld,
                              int dk, int nv) {
  for (int k0 = 0; k0 < dk; k0 += kRowSlab) {
    block_sync();
    split_into_planes<PS, kRowSlab, kRowCols>(slab, s, ld, k0, 0, dk, nv);
    block_sync();
    warp_product_fragments<kRowNT, P, PS>(
        acc, imin(kRowSlab, dk - k0), [&](uint32_t(&a)[P][4], int kk) { fragment_a<P>(a, ga, k0 + kk); },
        [&](uint32_t(&b)[PS][2], int kk, int n0) {
          FWP_UNROLL
          for (int p = 0; p < PS; ++p) smem_b_rows(b[p], slab + p * kRowSlabPlane, kRowSlabLd, kk, n0);
        });
  }
}

// The row stage `stage` for block (bh, chunk c, value tile): see RowArgs. P parts per plain operand,
// max(2, P) for the checkpoints; Whole where whole_rows(x, P) holds, Staged (and Whole) where
// staged_rows does.
template <RowStage stage, int P, bool Whole, bool Staged = false>
FWP_DEV void row_stage(const RowArgs& x, RowSmemOf<P, Staged>& sh, int bh, int64_t c, int tile) {
  static_assert(!Staged || Whole, "the Staged kernels are Whole ones");
  constexpr int PS = kStateParts<P>;
  const int m0 = 16 * warp_id(), col0 = tile * kRowCols;
  const int nv = imin(kRowCols, x.dv - col0), dk = x.dk;
  const int64_t chunk = int64_t(bh) * x.N + c;
  const In a = x.a + chunk * kPassC * dk;                     // [C, d_k] rows of W or Q
  const In b = x.b + chunk * kPassC * dk;                     // [C, d_k] rows of K
  const In vt = x.v + chunk * kPassC * x.dv;                  // [C, d_v] U' or dO
  // the products' A rows: W or Q (W S_c, Q S_c, Q K^T), K for LocalGrad (K Q^T); and B^T: K, or Q
  const In rows_in = stage == RowStage::LocalGrad ? b : a, t_in = stage == RowStage::LocalGrad ? a : b;
  if constexpr (Staged) {  // sh.a: rows_in, sh.b: t_in, sh.v: the value tile
    stage_rows(sh.a, rows_in, dk);
    if (stage != RowStage::Values) {
      stage_rows(sh.b, t_in, dk);
      copy_tile<kPassC, kRowCols>(sh.v, kRowSlabLd, (vt + col0).p, x.dv, nv, 2);
    }
    copy_commit();
    copy_wait_all();
    block_sync();
  }
  // this warp's rows of rows_in
  const auto a_rows = [&] {
    if constexpr (Staged) return RowsTile{sh.a, kStagedLd, m0};
    else return RowsOf<Whole>{rows_in, dk, m0};
  }();
  float local[kRowNT][4] = {};
  if (stage != RowStage::Values) {
    // rows m0.. of tril(Q K^T) (Output) or of triu(K Q^T) = tril(Q K^T)^T (LocalGrad)
    float qk[kQKNT][4] = {};
    // the n-tiles right (Output) or left (LocalGrad) of the diagonal block are masked out: left out
    const auto b_t = [&] {  // B(j, n) = t_in(n, j)
      if constexpr (Staged) return TransposeTile{sh.b, kStagedLd};
      else return TransposeOf<Whole>{t_in, dk};
    }();
    if (stage == RowStage::Output)
      warp_product<kQKNT, P, P, Whole>(qk, dk, a_rows, b_t, (m0 + 16) / 8);
    else
      warp_product<kQKNT, P, P, Whole>(qk, dk, a_rows, b_t, kQKNT, 0, m0 / 8);
    FWP_UNROLL
    for (int j = 0; j < kQKNT; ++j)
      FWP_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);
        if (stage == RowStage::Output ? n > r : n < r) qk[j][e] = 0.f;
      }
    // columns col0.. of U' or dO [C, d_v]
    const auto v = [&] {
      if constexpr (Staged) return ColsTile{sh.v, kRowSlabLd};
      else return ColsOf<Whole>{vt, x.dv, col0};
    }();
    // qk's A fragments first (qk is then no longer held), then per n-tile the k-blocks in order
    uint32_t af[kPassC / 16][P][4];
    FWP_UNROLL
    for (int kk = 0; kk < kPassC / 16; ++kk) a_from_acc<P>(af[kk], qk, kk);
    FWP_UNROLL
    for (int j = 0; j < kRowNT; ++j)
      FWP_UNROLL
      for (int kk = 0; kk < kPassC / 16; ++kk) {
        // the blocks of qk right (Output) or left (LocalGrad) of the diagonal block are zeros
        if (stage == RowStage::Output ? 16 * kk > m0 : 16 * kk < m0) continue;
        uint32_t bf[P][2];
        fragment_b<P>(bf, v, 16 * kk, 8 * j);
        mma_parts<P, P>(local[j], af[kk], bf);
      }
  }
  // (after the local product, whose C x C intermediate is then no longer held: fewer registers at once)
  float acc[kRowNT][4] = {};
  if (stage != RowStage::LocalGrad) {  // W S_c or Q S_c
    const float* sc = x.s + chunk * dk * x.dv + col0;         // [d_k, d_v] checkpoint
    times_state_rows<P, PS>(acc, a_rows, sh.slab, sc, x.dv, dk, nv);
  }
  const Out out = x.out + (chunk * kPassC * x.dv + col0);
  const float* base = stage == RowStage::Values ? x.base + chunk * kPassC * x.dv + col0 : nullptr;
  // one store loop per dtype; dU'_loc is always fp32 (with a bf16 branch there ptxas spilled)
  // (a row's two neighbouring columns in one store where the address allows)
  const auto store = [&](auto* dst, const auto& convert) {
    const bool pairs = pair_aligned(dst) && x.dv % 2 == 0;
    FWP_UNROLL
    for (int j = 0; j < kRowNT; ++j)
      FWP_UNROLL
      for (int e = 0; e < 4; e += 2) {
        const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);
        if (n >= nv) continue;
        const auto y = [&](int i) {
          if (stage == RowStage::Values)
            return base[r * x.dv + n + (i & 1)] - acc[j][i];  // U' = U - W S_c
          else if (stage == RowStage::Output)
            return acc[j][i] + local[j][i];                  // O = Q S_c + tril(Q K^T) U'
          else
            return local[j][i];                              // dU'_loc = tril(Q K^T)^T dO
        };
        auto* at = dst + r * x.dv + n;
        if (n + 1 >= nv) {
          at[0] = convert(y(e));
        } else if (pairs) {
          store_two(at, convert(y(e)), convert(y(e + 1)));
        } else {
          at[0] = convert(y(e));
          at[1] = convert(y(e + 1));
        }
      }
  };
  if (stage != RowStage::LocalGrad && out.bf16)
    store(static_cast<uint16_t*>(out.p), [](float y) { return bf16_bits(y); });
  else
    store(static_cast<float*>(out.p), [](float y) { return y; });
}

// ---- F1, the WY stage, fast version ----
//
// One block of 4 warps per (batch·head, chunk): warp w computes rows 16 w .. of
// A = tril((beta K) K^T, -1) into shared memory, the block inverts I + A there in fp32 (forward
// substitution on the four 16 x 16 diagonal blocks, one warp each, then merges 16 -> 32 -> 64, the
// first version's order), and the warps compute W = T~ (beta K) and U = T~ (beta V), 64 columns at a
// time, each its share of equal work (TinvRows) with its rows of T~ held as fragments and beta X
// rounded into shared memory once per element (where two parts or fewer are wanted; the Whole
// kernel copies K's and V's tiles there and scales them in place, tinv_times_tiles). Products with
// blocks that are zero by the triangular shapes (A's n-tiles and T~'s column blocks right of the
// diagonal block) are skipped.

struct WyArgs {
  In k, v, beta;  // caller's dtype
  Out tinv, w;    // T~ (null: not wanted) and W, fp32 or bf16 (see Out)
  float* u;
  int64_t N;
  int dk, dv;
};

// The solve's shared memory: A, then scratch for the merges. Rows of kInvLd = C + 4 floats (and the
// scratch's of kMergeLd = 32 + 4): 16-byte aligned, so that a row's 4 neighbours come in one load
// (load_quad), and a lane's quad of the scratch at (lane, 4 q) lies on banks of its own within each
// quarter warp.
constexpr int kInvLd = kPassC + 4, kMergeLd = 32 + 4;
static_assert(kPassC * kStagedLd * sizeof(uint16_t) <= kPassC * kInvLd * sizeof(float), "a staged K fits in T~'s space");
struct WySolve {
  alignas(16) float a[kPassC][kInvLd];
  alignas(16) float t[32][kMergeLd];
};

// W's and U's operand beta X, 64 columns at a time, as Planes of at most two parts (P <= 2).
constexpr int kWyLd = kPassC + 8, kWyPlane = kRowCols * kWyLd;

struct WySmem {
  alignas(16) float x[kPassC][kInvLd];  // K staged as bf16 for A's product (d_k <= kStagedDk), then T~
  union {
    WySolve solve;                       // until T~ is known
    alignas(16) uint16_t scaled[2 * kWyPlane];  // then beta X (kPassPlanes), or two tiles of it (Whole)
  };
  float beta[kPassC];  // the chunk's beta (Whole)
};
static_assert(sizeof(uint16_t) * 2 * kWyPlane <= sizeof(WySolve), "beta X's planes fit in the solve's space");

// The 4-byte values (fp32 or bf16 pairs) at p .. p + 3 (p 16-byte aligned): one 128-bit
// shared-memory access on the GPU; a misaligned p stops the emulator, as it would the kernel.
#ifdef __CUDACC__
template <class T>
struct Quad;
template <>
struct Quad<float> {
  using type = float4;
};
template <>
struct Quad<uint32_t> {
  using type = uint4;
};
#endif
template <class T>
FWP_DEV void load_quad(const T* p, T (&v)[4]) {
#ifdef __CUDACC__
  const typename Quad<T>::type f = *reinterpret_cast<const typename Quad<T>::type*>(p);
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
#else
  if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) __builtin_trap();
  for (int q = 0; q < 4; ++q) v[q] = p[q];
#endif
}
template <class T>
FWP_DEV void store_quad(T* p, const T (&v)[4]) {
#ifdef __CUDACC__
  *reinterpret_cast<typename Quad<T>::type*>(p) = typename Quad<T>::type{v[0], v[1], v[2], v[3]};
#else
  if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) __builtin_trap();
  for (int q = 0; q < 4; ++q) p[q] = v[q];
#endif
}

// T~'s diagonal block b (rows and columns 16 b ..) by forward substitution, one lane per column,
// its column in registers: x_ij = [i = j] - sum_{m < i} a_im x_mj, the terms in order of m.
FWP_DEV void diagonal_inverse(WySmem& sh, int b) {
  const int base = 16 * b, lane = lane_id();
  float col[16];
FWP_UNROLL
  for (int i = 0; i < 16; ++i) {
    float v = i == lane ? 1.f : 0.f;
FWP_UNROLL
    for (int m4 = 0; m4 < i; m4 += 4) {
      float ar[4];
      load_quad(&sh.solve.a[base + i][base + m4], ar);
FWP_UNROLL
      for (int q = 0; q < 4; ++q)
        if (m4 + q < i) v -= ar[q] * col[m4 + q];
    }
    col[i] = v;
  }
FWP_UNROLL
  for (int i = 0; i < 16; ++i) sh.x[base + i][base + lane] = col[i];
}

// A merge of two inverted diagonal blocks of size s into one of 2 s, rows r0 .. and columns c0 ..
// of T~ (r0 = c0 + s): x[r0.., c0..] = -Y^-1 B X^-1, with Y^-1 = x[r0.., r0..] and X^-1 = x[c0.., c0..]
// (both zero above their diagonals) and B = a[r0.., c0..]. Its sums leave out the terms that those
// zeros make zero: for a finite T~ they would add exact zeros (+0 or -0, to a sum that starts at
// +0), so the sums are the full sums bit for bit. A thread computes 4 neighbouring results of one
// column (step 1) or one row (step 2), group g (rows or columns 4 g ..): each operand it loads
// serves all 4, and every sum takes its terms in order of m.
// Step 1: t[tr + i][j] = sum_{m <= i} Y^-1_im B_mj for i = 4 g .., column j. One group of terms:
// m = m4 .. m4 + 3, where in the diagonal group (m4 = 4 g) row i takes those with m <= i.
template <bool Diagonal>
FWP_DEV void merge_row_terms(float (&acc)[4], const WySmem& sh, int r0, int c0, int g, int j, int m4) {
  float b[4];
FWP_UNROLL
  for (int q = 0; q < 4; ++q) b[q] = sh.solve.a[r0 + m4 + q][c0 + j];
FWP_UNROLL
  for (int r = 0; r < 4; ++r) {
    float y[4];
    load_quad(&sh.x[r0 + 4 * g + r][r0 + m4], y);
FWP_UNROLL
    for (int q = 0; q < 4; ++q)
      if (!Diagonal || q <= r) acc[r] += y[q] * b[q];
  }
}
FWP_DEV void merge_rows(WySmem& sh, int r0, int c0, int tr, int g, int j) {
  float acc[4] = {};
  for (int m4 = 0; m4 < 4 * g; m4 += 4) merge_row_terms<false>(acc, sh, r0, c0, g, j, m4);
  merge_row_terms<true>(acc, sh, r0, c0, g, j, 4 * g);
FWP_UNROLL
  for (int r = 0; r < 4; ++r) sh.solve.t[tr + 4 * g + r][j] = acc[r];
}

// Step 2: x[r0 + i][c0 + j] = -sum_{m >= j} t[tr + i][m] X^-1_mj for j = 4 g .., row i (s: the
// blocks' size). One group of terms: m = m4 .. m4 + 3, where in the diagonal group (m4 = 4 g)
// column j takes those with m >= j.
template <bool Diagonal>
FWP_DEV void merge_col_terms(float (&acc)[4], const WySmem& sh, int c0, int tr, int g, int i, int m4) {
  float tv[4];
  load_quad(&sh.solve.t[tr + i][m4], tv);
FWP_UNROLL
  for (int q = 0; q < 4; ++q) {
    float xr[4];
    load_quad(&sh.x[c0 + m4 + q][c0 + 4 * g], xr);
FWP_UNROLL
    for (int c = 0; c < 4; ++c)
      if (!Diagonal || c <= q) acc[c] += tv[q] * xr[c];
  }
}
FWP_DEV void merge_cols(WySmem& sh, int s, int r0, int c0, int tr, int g, int i) {
  float acc[4] = {};
  merge_col_terms<true>(acc, sh, c0, tr, g, i, 4 * g);
  for (int m4 = 4 * g + 4; m4 < s; m4 += 4) merge_col_terms<false>(acc, sh, c0, tr, g, i, m4);
  const float out[4] = {-acc[0], -acc[1], -acc[2], -acc[3]};
  store_quad(&sh.x[r0 + i][c0 + 4 * g], out);
}

// sh.x = (I + A)^-1 for strictly lower A = sh.solve.a, by the whole block: the four diagonal blocks
// (a warp each), then merges 16 -> 32 (both pairs at once: a pair takes two warps, a half warp a
// group of 4 rows or columns) -> 64 (a warp takes groups w and 7 - w, the same number of terms for
// every warp). Ends with a barrier. The blocks above the diagonal blocks are left unwritten: they are
// zeros, which no product reads (the store of T~ writes them).
FWP_DEV void unit_lower_inverse(WySmem& sh) {
  const int w = warp_id(), lane = lane_id();
  if (lane < 16) diagonal_inverse(sh, w);
  block_sync();
  {  // 16 -> 32: pair p = w / 2 (rows 32 p + 16 .., columns 32 p ..), group 2 (w % 2) + lane / 16
    const int p = w >> 1, g = 2 * (w & 1) + (lane >> 4), r0 = 32 * p + 16, c0 = 32 * p;
    merge_rows(sh, r0, c0, 16 * p, g, lane & 15);
    block_sync();
    merge_cols(sh, 16, r0, c0, 16 * p, g, lane & 15);
    block_sync();
  }
  // 32 -> 64
  merge_rows(sh, 32, 0, 0, w, lane);
  merge_rows(sh, 32, 0, 0, 7 - w, lane);
  block_sync();
  merge_cols(sh, 32, 32, 0, 0, w, lane);
  merge_cols(sh, 32, 32, 0, 0, 7 - w, lane);
  block_sync();
}

// The warps' shares of T~'s products, balanced: T~ is lower triangular, so row block i (rows 16 i ..)
// has i + 1 column blocks that are not zero. Warps w and 3 - w share row blocks lo = min(w, 3 - w)
// and hi = 3 - lo (1 + 4 or 2 + 3 blocks: the same work for every warp), each taking half the output
// columns of both: warps 0 and 1 the first half, warps 2 and 3 the second. A warp holds its two row
// blocks of T~ as A fragments, one per 16-column block that is not zero, in P parts.
static_assert(kPassWarps == 4 && kPassC == 64, "TinvRows pairs the four row blocks of a chunk");
template <int P>
struct TinvRows {
  int lo, hi;           // the row blocks
  uint32_t a_lo[2][P][4];  // column blocks 0 .. lo of row block lo (lo <= 1)
  uint32_t a_hi[4][P][4];  // column blocks 0 .. hi of row block hi

  FWP_DEV explicit TinvRows(const float (&t)[kPassC][kInvLd]) : lo(imin(warp_id(), 3 - warp_id())), hi(3 - lo) {
    FWP_UNROLL
    for (int kk = 0; kk < 4; ++kk) {
      if (kk < 2 && kk <= lo) load_a<P>(a_lo[kk], [&](int r, int j) { return t[16 * lo + r][16 * kk + j]; });
      if (kk <= hi) load_a<P>(a_hi[kk], [&](int r, int j) { return t[16 * hi + r][16 * kk + j]; });
    }
  }
};

// bx = beta X for the C x 64 matrix X = x (row stride ld; columns from `cols` on are zeros), by the
// whole block, each element rounded once: thread t = a + 8 b + 32 c (a < 8, b < 4) writes rows
// 8 d + 2 b and the next (d < 8) of columns 8 c + a and 8 c + a + 32. A store of a warp (one c)
// writes rows 8 d + 2 b, 8 d + 2 b + 1 of 8 columns: 32 distinct banks (ld = C + 8).
static_assert(kPassThreads == 128 && kPassC == 64 && kRowCols == 64, "scaled_planes's thread map");
template <int P>
FWP_DEV void scaled_planes(const Planes& bx, In x, In beta, int cols, int ld) {
  const int t = thread_id(), a = t & 7, b = (t >> 3) & 3, c = t >> 5;
  by_dtype(x, [&](const auto& xr) {
    by_dtype(beta, [&](const auto& br) {
      FWP_UNROLL_2  // two row pairs' loads in flight at once (all 8 pairs' would take registers the products need)
      for (int d = 0; d < 8; ++d) {
        const int k = 8 * d + 2 * b;
        const float b0 = br(k), b1 = br(k + 1);
        FWP_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int n = 8 * c + a + 32 * h;
          const bool in = n < cols;
          bx.template put_pair<P>(k, n, in ? mul_rn(xr(k * ld + n), b0) : 0.f,
                                  in ? mul_rn(xr((k + 1) * ld + n), b1) : 0.f);
        }
      }
    });
  });
}

// Whether a row's two neighbouring columns of out (C x cols, row stride cols) may go out in one store.
FWP_DEV bool wy_pairs(const Out& out, int cols) { return out.pairs() && cols % 2 == 0; }

// out's columns c0 .. c0 + 63 (out: C x cols, row stride cols) = T~ B, this warp's share (TinvRows),
// with fb(b, k0, n0) giving B's fragment (rows k0.., columns n0..), B = beta X's columns c0... The
// blocks of T~ right of the diagonal block are zeros, and their products are left out. A B fragment
// serves both row blocks where both use it. `pairs`: out and cols allow a row's two neighbouring
// columns in one store (wy_pairs).
template <int P, class FB>
FWP_DEV void tinv_times_cols(const TinvRows<P>& ta, const FB& fb, int c0, int cols, Out out, bool pairs) {
  constexpr int kHalfNT = kRowNT / 2;  // n-tiles per warp
  const int n_half = warp_id() >= 2 ? 8 * kHalfNT : 0;
  float acc_lo[kHalfNT][4] = {}, acc_hi[kHalfNT][4] = {};
  FWP_UNROLL
  for (int kk = 0; kk < 4; ++kk) {
    if (kk > ta.hi) break;
    FWP_UNROLL
    for (int j = 0; j < kHalfNT; ++j) {
      uint32_t b[P][2];
      fb(b, 16 * kk, n_half + 8 * j);
      mma_parts<P, P>(acc_hi[j], ta.a_hi[kk], b);
      if (kk < 2 && kk <= ta.lo) mma_parts<P, P>(acc_lo[j], ta.a_lo[kk], b);
    }
  }
  FWP_UNROLL
  for (int j = 0; j < kHalfNT; ++j)
    FWP_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int n = c0 + n_half + 8 * j + acc_col(e);
      if (n >= cols) continue;
      const int64_t lo = (16 * ta.lo + acc_row(e)) * cols + n, hi = (16 * ta.hi + acc_row(e)) * cols + n;
      if (n + 1 < cols) {  // a row's two neighbouring columns in one store where `pairs` allows
        out.set_two(lo, acc_lo[j][e], acc_lo[j][e + 1], pairs);
        out.set_two(hi, acc_hi[j][e], acc_hi[j][e + 1], pairs);
      } else {
        out.set(lo, acc_lo[j][e]);
        out.set(hi, acc_hi[j][e]);
      }
    }
}

// out (C x cols, row stride cols) = T~ (beta X) for X = x (C x cols), 64 columns at a time. With
// P <= 2 the block first rounds beta X's columns into shared memory (Planes), each element once,
// where every warp takes its B fragments; with P = 3 each warp computes the elements it needs.
template <int P>
FWP_DEV void tinv_times_scaled(WySmem& sh, const TinvRows<P>& ta, In x, In beta, int cols, Out out) {
  const Planes bx{sh.scaled, kWyLd, kWyPlane};
  const bool pairs = wy_pairs(out, cols);
  for (int c0 = 0; c0 < cols; c0 += kRowCols) {
    if constexpr (kPassPlanes<P>) {
      block_sync();  // every warp is done with the solve, or with the last columns' planes
      scaled_planes<P>(bx, x + c0, beta, cols - c0, cols);
      block_sync();
      tinv_times_cols<P>(ta, [&](uint32_t(&b)[P][2], int k0, int n0) { bx.template fragment<P>(b, k0, n0); }, c0, cols,
                         out, pairs);
    } else {
      tinv_times_cols<P>(ta,
                         [&](uint32_t(&b)[P][2], int k0, int n0) {
                           load_b<P>(b, [&](int k, int n) {  // beta X's element (k0 + k, c0 + n0 + n)
                             k += k0;
                             n += c0 + n0;
                             return n < cols ? mul_rn(x[k * cols + n], beta[k]) : 0.f;
                           });
                         },
                         c0, cols, out, pairs);
    }
  }
}

// The Whole kernel's W = T~ (beta K) and U = T~ (beta V) (P = 1, K and V bf16), 64 columns of K, then
// of V, at a time, each such tile copied whole through a TileQueue over the solve's space (tile i +
// 1's copy is in flight while the block works on tile i; tile 0's from the end of the solve on).
// The block scales a tile in place, beta_k X(k, n) rounded to bf16
// as scaled_planes rounds it, and the warps take B fragments there by ldmatrix, where scaled_planes
// read each element with a 16-bit global load (and beta through a test of its dtype).
static_assert(kPassThreads == 128 && kRowCols == 64 && kWyLd == kRowCols + 8 && kWyPlane == kPassC * kWyLd,
              "tinv_times_tiles's thread map and tiles");
// (tinv_times_tiles's tiles: K's columns 64 i.. for i < nk, then V's 64 (i - nk)..)
struct WyTiles {
  In k, v;
  int dk, dv;
  FWP_DEV int key_tiles() const { return (dk + kRowCols - 1) / kRowCols; }
  FWP_DEV int value_tiles() const { return (dv + kRowCols - 1) / kRowCols; }
  FWP_DEV int count() const { return key_tiles() + value_tiles(); }
  FWP_DEV In at(int i, int& d, int& c0) const {
    const int nk = key_tiles();
    d = i < nk ? dk : dv;
    c0 = kRowCols * (i < nk ? i : i - nk);
    return i < nk ? k : v;
  }
};
FWP_DEV void tinv_times_tiles(WySmem& sh, const TinvRows<1>& ta, const WyArgs& x, int64_t chunk) {
  const int dk = x.dk, dv = x.dv;
  const In k = x.k + chunk * kPassC * dk, v = x.v + chunk * kPassC * dv;  // [C, d_k], [C, d_v]
  TileQueue<WyTiles, kRowCols, kWyLd> queue{{k, v, dk, dv}, sh.scaled, 0};
  // the next tile, X's columns c0.. (X is d wide), into out's columns c0.. (pairs: as tinv_times_cols)
  const auto step = [&](int d, int c0, Out out, bool pairs) {
    uint16_t* t = queue.next();
    // thread t scales 8 elements e = t + 128 j (j < 4) of 16 bytes each: row e / 8, columns
    // 8 (e % 8).. (a quarter warp's 16-byte accesses: one row's 128 bytes)
    const int col = 8 * (thread_id() & 7), left = d - c0 - col;  // (left: this thread's columns in X)
    FWP_UNROLL
    for (int j = 0; j < kPassC * kRowCols / 8 / kPassThreads; ++j) {
      const int r = thread_id() / 8 + j * (kPassThreads / 8);
      uint32_t* at = reinterpret_cast<uint32_t*>(t + r * kWyLd + col);
      const float b = sh.beta[r];
      uint32_t w[4];
      load_quad(at, w);
      FWP_UNROLL
      for (int q = 0; q < 4; ++q) {
        const float x0 = 2 * q < left ? mul_rn(bf16_value(uint16_t(w[q] & 0xffffu)), b) : 0.f;
        const float x1 = 2 * q + 1 < left ? mul_rn(bf16_value(uint16_t(w[q] >> 16)), b) : 0.f;
        w[q] = pack(bf16_bits(x0), bf16_bits(x1));
      }
      store_quad(at, w);
    }
    block_sync();
    tinv_times_cols<1>(ta, [&](uint32_t(&b)[1][2], int k0, int n0) { smem_b_rows(b[0], t, kWyLd, k0, n0); }, c0, d,
                       out, pairs);
  };
  queue.issue(0);
  // W: bf16 and aligned for pairs (whole_wy; its dtype stays a test at run time: written in as a
  // constant, as T~'s is, it made ptxas spill 8 bytes at the kernel's 96 registers); U: fp32
  const Out w = x.w + chunk * kPassC * dk, u{x.u + chunk * kPassC * dv, false};
  for (int c0 = 0; c0 < dk; c0 += kRowCols) step(dk, c0, w, true);
  const bool u_pairs = wy_pairs(u, dv);
  for (int c0 = 0; c0 < dv; c0 += kRowCols) step(dv, c0, u, u_pairs);
}

// Whether the WY stage runs its Whole kernel (Whole = true below): one bf16 part, K and V bf16 and
// 16-byte aligned with d_k a multiple of 16 and d_v of 8 (whole_pieces: their tiles copy in whole
// 16-byte pieces), and T~ (where wanted) and W bf16 and 4-byte aligned, as the op stores them for
// one part: their stores are bf16 pairs, with no test of dtype or address.
FWP_HD bool whole_wy(const WyArgs& x, int parts) {
  return parts == 1 && x.dk % 16 == 0 && x.dv % 8 == 0 && whole_pieces(x.k) && whole_pieces(x.v) &&
         whole_words(In{x.tinv.p, x.tinv.bf16}) &&
         whole_words(In{x.w.p, x.w.bf16});
}

// The WY stage for block (bh, chunk c); Whole where whole_wy(x, P) holds.
template <int P, bool Whole = false>
FWP_DEV void wy_stage(const WyArgs& x, WySmem& sh, int bh, int64_t c) {
  static_assert(!Whole || P == 1, "the Whole kernel takes one bf16 part");
  const int m0 = 16 * warp_id(), dk = x.dk;
  const int64_t chunk = int64_t(bh) * x.N + c;
  const In k = x.k + chunk * kPassC * dk;
  const In beta = x.beta + chunk * kPassC;
  if constexpr (Whole)  // (visible after K's copy for A, or after A's barrier)
    if (thread_id() < kPassC) sh.beta[thread_id()] = beta[thread_id()];
  {  // A = tril((beta K) K^T, -1), this warp's rows; the n-tiles right of its diagonal block are zeros
    float acc[kQKNT][4] = {};
    const int nj = (m0 + 16) / 8;
    if constexpr (Whole) {  // whole fragments, a k-block's loads all in flight at once (no branch between)
      if (dk <= kStagedDk) {  // from K copied into T~'s space at once (stage_rows), by ldmatrix
        uint16_t* kt = reinterpret_cast<uint16_t*>(&sh.x[0][0]);
        stage_rows(kt, k, dk);
        copy_commit();
        copy_wait_all();
        block_sync();
        warp_product<kQKNT, P, P, true>(acc, dk, ScaledRowsTile{kt, kStagedLd, sh.beta, m0}, TransposeTile{kt, kStagedLd},
                                        nj);
      } else {
        warp_product<kQKNT, P, P, true>(acc, dk, ScaledRowsOf<true>{k, beta, dk, m0}, TransposeOf<true>{k, dk}, nj);
      }
    } else {
      warp_product<kQKNT, P, P>(acc, dk, ScaledRowsOf<>{k, beta, dk, m0}, TransposeOf<>{k, dk}, nj);
    }
    FWP_UNROLL
    for (int j = 0; j < kQKNT; ++j)
      FWP_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);
        sh.solve.a[r][n] = n < r ? acc[j][e] : 0.f;
      }
  }
  block_sync();  // (and every warp is done with the staged K)
  unit_lower_inverse(sh);
  if (x.tinv.p != nullptr) {  // the backward's B3 reads T~; the forward has no use for it
    const Out tinv = Dtypes<Whole>::of(x.tinv + chunk * kPassC * kPassC);
    const bool pairs = Whole || tinv.pairs();  // a row's two neighbouring columns in one store where the address allows
    static_assert(2 * 32 == kPassC, "a warp's lanes take a row's column pairs");
    const int c = 2 * lane_id();  // this thread's columns c, c + 1 (one block of 16) of every fourth row
    for (int r = warp_id(); r < kPassC; r += kPassWarps) {
      const bool zero = c / 16 > r / 16;  // above the diagonal blocks (unit_lower_inverse)
      float x0, x1;
      float_pair(&sh.x[r][c], x0, x1);
      tinv.set_two(r * kPassC + c, zero ? 0.f : x0, zero ? 0.f : x1, pairs);
    }
  }
  const TinvRows<P> ta(sh.x);
  if constexpr (Whole) {
    tinv_times_tiles(sh, ta, x, chunk);
  } else {
    tinv_times_scaled<P>(sh, ta, k, beta, dk, x.w + chunk * kPassC * dk);
    tinv_times_scaled<P>(sh, ta, x.v + chunk * kPassC * x.dv, beta, x.dv, Out{x.u + chunk * kPassC * x.dv, false});
  }
}

// ---- B3, the input gradients, fast version ----
//
// One block of 4 warps per (batch·head, chunk); warp w owns the chunk's rows 16 w .. 16 w + 15 of
// every C-row result, d_k and d_v wide ones kGradCols = 32 columns at a time (half the row stages'
// 64: fewer accumulators, so that the delta rule's Whole kernel fits 128 registers, 4 blocks per
// multiprocessor; docs/performance.md). The chunk's operands are read straight from global memory,
// as in the row stages, but the fp32 states (S_c, dS_{c+1}) go through shared memory in slabs, split
// into bf16 parts once per block rather than once per warp (state_t_slabs), and so, in the Whole
// kernels, do the bf16 column blocks of K, Q, dW and dU' that are right operands, and of K and V
// where dbeta's terms and dT~'s scaled planes read them (GradColsQueue: each block's copy in flight
// while the block works on the one before); shared memory also holds
// the C x C intermediates, which other warps
// need whole or which would hold too many registers: P (for P K and P^T Q), and in turn dT~, T~^T dT~
// and dA (for T~^T dT~, its product with T~^T, and G K, G^T K). dW = -dU' S_c^T, which every warp needs whole
// (T~^T dW), goes through a C x d_k scratch per chunk in global memory. The products and the
// roundings of their operands are the twin's (chunked.h, B3); where the twin adds separately
// computed products, one accumulator takes them all here (fp32 sums in another order). The rows'
// dbeta terms are summed per lane, then per row in a fixed order: no atomics.

struct GradArgs {
  In q, k, v, beta, v_new, grad_out;  // caller's dtype (U' is an intermediate for the delta rule, v for the sum rule)
  In tinv, dv_new;                    // intermediates, fp32 or bf16 (see Out)
  const float *ckpt, *ds_next;
  Out grad_q, grad_k, grad_v, grad_beta;
  Out dw;  // scratch [BH, N, C, d_k] (delta rule)
  int64_t N;
  int dk, dv;
};

constexpr int kGradCols = 32, kGradNT = kGradCols / 8;  // B3's column tile and its n-tiles

// State columns per slab of B3's state products (state_t_slabs) with PS bf16 parts, and the halves
// of shared memory its planes take: kGradCols state rows of kSlabCols + 8 (ldmatrix's 16-byte rows,
// 8 of them on distinct banks), PS planes; three parts take slabs half as wide, so that the block's
// static shared memory stays within 48 KB.
template <int PS>
constexpr int kSlabCols = PS <= 2 ? 64 : 32;
constexpr int slab_halves(int ps, int cols) { return ps * kGradCols * (cols + 8); }
constexpr int kSlabHalves = slab_halves(2, kSlabCols<2>);
constexpr int kColsLd = kGradCols + 8;  // a column tile's rows (halves): 80 bytes, ldmatrix's 8 rows on distinct banks
static_assert(slab_halves(3, kSlabCols<3>) <= kSlabHalves, "three parts' slabs fit GradSmem::slab");

// Rows of kGradLd = C + 4 floats: a warp's 32-bit accesses at (g, 2t + e) (fragments and
// accumulators) put at most 2 lanes on one bank, those at (2t + e, g) (transposed fragments) 1,
// where rows of C + 1 put up to 4 (g = lane / 4, t = lane % 4).
constexpr int kGradLd = kPassC + 4;
struct GradSmem {
  float p[kPassC][kGradLd];  // P = tril(dO U'^T); at the end the dbeta partial sums
  float m[kPassC][kGradLd];  // first beta K and beta V (times_scaled_t), then dT~, T~^T dT~, dA, G
  alignas(16) uint16_t slab[kSlabHalves];  // a state's slab (state_t_slabs)
};
static_assert(sizeof(GradSmem) <= 48 * 1024, "B3's shared memory is static: at most 48 KB");

// The Whole kernels' B3 (one bf16 part) keeps the C x C operands it multiplies in bf16, the only
// form its products take them in: P and G = diag(beta) dA, rounded once where they are formed, and
// T~, copied once per block, each C x (C + 8) halves, rows 16-byte aligned and 8 of them on
// distinct banks for ldmatrix. Each of P's and G's A fragments was 8 loads of fp32 and their
// rounding, in every column tile; each of T~^T's, 8 16-bit loads from global memory. G goes where dA
// was once dA is read, and the slabs, not used while `m` is, share its space with G. The column
// tiles have two buffers of their own (GradColsQueue: the next tile's copy is in flight while the
// block works on one, across the dT~ .. dA steps too), and beta, read where dbeta's terms and the
// scaled rows need it, once per block rather than once per element: 46 KB in all.
constexpr int kGradHalfLd = kPassC + 8;
constexpr int kColsHalves = kPassC * kColsLd;  // one column tile
struct WholeGradLater {
  alignas(16) uint16_t g[kPassC * kGradHalfLd];   // G, from dA's rowsum on
  alignas(16) uint16_t slab[kSlabHalves];         // as GradSmem's
};
struct WholeGradSmem {
  alignas(16) uint16_t p[kPassC * kGradHalfLd];     // P; at the end the dbeta partial sums
  alignas(16) uint16_t tinv[kPassC * kGradHalfLd];  // T~ (the delta rule)
  alignas(16) uint16_t cols[2 * kColsHalves];       // two column tiles (GradColsQueue)
  float beta[kPassC];                                // the chunk's beta (the delta rule)
  union {
    float m[kPassC][kGradLd];  // as GradSmem's (beta K and beta V by times_scaled_tile), up to dA
    WholeGradLater later;
  };
};
static_assert(sizeof(WholeGradSmem) <= 48 * 1024, "B3's shared memory is static: at most 48 KB");
static_assert(kPassC * kGradHalfLd * sizeof(uint16_t) >= kPassC * 4 * sizeof(float), "dbeta's partials fit in P's space");
template <bool Whole>
using GradSmemOf = typename std::conditional<Whole, WholeGradSmem, GradSmem>::type;
FWP_DEV uint16_t* slab_space(GradSmem& sh) { return sh.slab; }
FWP_DEV uint16_t* slab_space(WholeGradSmem& sh) { return sh.later.slab; }

// o[r * ld + col] = f(r, col, e, y) for each accumulator element y (index e) of an NT * 8-column
// tile starting at column c0: row r (of this warp's rows), column col < cols; f is called in the
// accumulators' order. With Pairs (o aligned to two elements, ld and cols even) a row's two
// neighbouring columns go out in one store.
template <bool Pairs, int NT, class F>
FWP_DEV void store_tile(const float (&acc)[NT][4], int m0, int c0, int cols, Out o, int ld, const F& f) {
  FWP_UNROLL
  for (int j = 0; j < NT; ++j)
    FWP_UNROLL
    for (int e = 0; e < 4; e += 2) {
      const int r = m0 + acc_row(e), col = c0 + 8 * j + acc_col(e);
      if (col >= cols) continue;
      const float y0 = f(r, col, e, acc[j][e]);
      if (Pairs) {
        o.set_two(int64_t(r) * ld + col, y0, f(r, col + 1, e + 1, acc[j][e + 1]), true);
      } else {
        o.set(int64_t(r) * ld + col, y0);
        if (col + 1 < cols) o.set(int64_t(r) * ld + col + 1, f(r, col + 1, e + 1, acc[j][e + 1]));
      }
    }
}

// acc += A (beta X)^T for this warp's rows of A (getter ga, C x d) and X (C x d), P <= 2: for each
// kScaledCols columns of X in turn, the block rounds beta X's into Planes over `space`, each element
// once, and every warp takes its B fragments there, B(j, n) = beta_n X(n, j). fill_scaled and
// times_scaled are one such step's two halves; times_scaled_t takes X from global memory, and
// times_scaled_tile (the Whole kernels) from its column tile.
constexpr int kScaledCols = 32, kScaledLd = kScaledCols + 8;
static_assert(2 * kPassC * kScaledLd * sizeof(uint16_t) <= sizeof(GradSmem::m), "two planes fit in GradSmem::m");
FWP_DEV Planes scaled_at(float* space) { return Planes{reinterpret_cast<uint16_t*>(space), kScaledLd, kPassC * kScaledLd}; }

// The planes of beta X's columns j0.. (zero from column d on), x(n, j) = X(n, j0 + j) and
// beta(n) = beta_n: thread t writes X(n, j0 + j) and X(n, j0 + j + 1) for n = t / 16 + 8 i (i < 8),
// j = 2 (t % 16).
template <int P, class X, class B>
FWP_DEV void fill_scaled(const Planes& bx, const X& x, const B& beta, int j0, int d) {
  const int j = 2 * (thread_id() % (kScaledCols / 2));
  FWP_UNROLL
  for (int i = 0; i < kPassC * kScaledCols / 2 / kPassThreads; ++i) {
    const int n = thread_id() / (kScaledCols / 2) + i * (2 * kPassThreads / kScaledCols);
    const float bn = beta(n);
    const auto scaled = [&](int jj) { return j0 + jj < d ? mul_rn(x(n, jj), bn) : 0.f; };
    bx.template put_pair<P>(j, n, scaled(j), scaled(j + 1));
  }
}

// acc += A's columns j0.. times the planes' rows (only the k-blocks that hold columns of X: whole
// fragments of A are read without a bound).
template <int P, class GA>
FWP_DEV void times_scaled(float (&acc)[kQKNT][4], const Planes& bx, const GA& ga, int j0, int d) {
  warp_product_fragments<kQKNT, P, P>(
      acc, imin(kScaledCols, d - j0), [&](uint32_t(&a)[P][4], int k0) { fragment_a<P>(a, ga, j0 + k0); },
      [&](uint32_t(&b)[P][2], int k0, int n0) { bx.template fragment<P>(b, k0, n0); });
}

// Starts and ends with a barrier: `space` may hold what the warps read before, and is free again after.
template <int P, class GA>
FWP_DEV void times_scaled_t(float (&acc)[kQKNT][4], float* space, const GA& ga, In x, In beta, int d) {
  const Planes bx = scaled_at(space);
  for (int j0 = 0; j0 < d; j0 += kScaledCols) {
    block_sync();
    by_dtype(x, [&](const auto& xr) {
      by_dtype(beta, [&](const auto& br) {
        fill_scaled<P>(bx, [&](int n, int j) { return xr(n * d + j0 + j); }, br, j0, d);
      });
    });
    block_sync();
    times_scaled<P>(acc, bx, ga, j0, d);
  }
  block_sync();
}

// One kScaledCols-column step (P = 1, the Whole kernels) with X's columns j0.. from their column tile
// xt (GradColsQueue: the take that gave it passed the barrier after which `space` is free) and beta
// from shared memory: the same roundings and products, where each element was a 16-bit global load.
// One barrier, between its fill and its product, and none after: the caller's next take, or a
// barrier of its own, frees `space`.
static_assert(kScaledCols == kGradCols, "a step of times_scaled_t is one column tile");
template <int P, class GA>
FWP_DEV void times_scaled_tile(float (&acc)[kQKNT][4], float* space, const GA& ga, const ColsTile& xt,
                               const float* beta, int j0, int d) {
  const Planes bx = scaled_at(space);
  fill_scaled<P>(bx, [&](int n, int j) { return bf16_value(xt.t[n * xt.ld + j]); }, [&](int n) { return beta[n]; },
                 j0, d);
  block_sync();
  times_scaled<P>(acc, bx, ga, j0, d);
}

// B3's products with a state's transpose, B(j, n) = s(c0 + n, j) for j < d_v and the kGradCols state
// rows c0.. (zero past d_k), through shared memory: for each kSlabCols<PS> state columns j0.. in
// turn, the block splits those rows' elements into PS planes over `space`, each element once (read
// from global memory, every warp split each one it took: 4 times), and use(planes, j0, cols)
// multiplies with the slab's first cols columns, its warps taking B fragments by ldmatrix (times_slab).
// Each slab starts with a barrier, after which nobody reads the previous one. Whole: each thread's
// loads of a slab (8 pairs) are in flight together, one wait per slab where 4 at a time made two.
template <int PS, bool Whole, class Use>
FWP_DEV void state_t_slabs(uint16_t* space, const float* s, int dk, int dv, int c0, const Use& use) {
  constexpr int K = kSlabCols<PS>;
  const Planes planes{space, K + 8, kGradCols * (K + 8)};  // B(j, n) = s(c0 + n, j0 + j): slab row n, column j
  for (int j0 = 0; j0 < dv; j0 += K) {
    block_sync();
    if (Whole)  // (whole_fragments: the states 8-byte aligned, d_v a multiple of 16)
      split_into_planes<PS, kGradCols, K, true, kGradCols * K / (2 * kPassThreads)>(space, s, dv, c0, j0, dk, dv);
    else
      split_into_planes<PS, kGradCols, K>(space, s, dv, c0, j0, dk, dv);
    block_sync();
    use(planes, j0, imin(K, dv - j0));
  }
}

// The Whole kernels' column tiles, B(j, n) = a[j, c0 + n] for the chunk's rows j and kGradCols
// columns c0.. of a [C, d] matrix (zero past d), in the order input_grads_stage takes them: K's
// (for P K); the delta rule's K's and V's again (for dT~'s beta K and beta V); then for each
// kGradCols columns of d_k those of dW, K and Q (the sum rule: Q's alone); then for each kGradCols
// columns of d_v those of dU' and V (the delta rule). at(i, d, c0): tile i's matrix, its width d
// and first column c0.
template <bool Delta>
struct GradCols {
  In k, q, dw, dvn, v;
  int dk, dv;
  FWP_DEV int key_tiles() const { return (dk + kGradCols - 1) / kGradCols; }
  FWP_DEV int value_tiles() const { return (dv + kGradCols - 1) / kGradCols; }
  FWP_DEV int count() const {
    return Delta ? 5 * key_tiles() + 3 * value_tiles() : 2 * key_tiles();
  }
  FWP_DEV In at(int i, int& d, int& c0) const {
    const int nk = key_tiles();
    d = dk;
    if (i < nk) {
      c0 = kGradCols * i;
      return k;
    }
    i -= nk;
    if (!Delta) {
      c0 = kGradCols * i;
      return q;
    }
    if (i < nk) {  // dT~'s beta K
      c0 = kGradCols * i;
      return k;
    }
    i -= nk;
    if (i < value_tiles()) {  // dT~'s beta V
      d = dv;
      c0 = kGradCols * i;
      return v;
    }
    i -= value_tiles();
    if (i < 3 * nk) {
      c0 = kGradCols * (i / 3);
      return i % 3 == 0 ? dw : i % 3 == 1 ? k : q;
    }
    i -= 3 * nk;
    d = dv;
    c0 = kGradCols * (i / 2);
    return i % 2 == 0 ? dvn : v;
  }
};

// B3's column tiles, in GradCols's order, 32 columns wide, rows of kColsLd halves.
template <bool Delta>
using GradColsQueue = TileQueue<GradCols<Delta>, kGradCols, kColsLd>;

// acc += A B for this warp's rows of A (getter ga, its columns j0.. in turn) and the first `cols`
// rows of a slab's planes (state_t_slabs: B(j, n) = s(c0 + n, j0 + j)).
template <int P, int PS, class GA>
FWP_DEV void times_slab(float (&acc)[kGradNT][4], const GA& ga, const Planes& s, int j0, int cols) {
  warp_product_fragments<kGradNT, P, PS>(
      acc, cols, [&](uint32_t(&a)[P][4], int k0) { fragment_a<P>(a, ga, j0 + k0); },
      [&](uint32_t(&b)[PS][2], int k0, int n0) { s.template fragment<PS, true>(b, k0, n0); });
}

// Whether B3 may take every fragment whole and store its results in pairs (Whole = true below): one
// bf16 part per operand, every matrix it multiplies (and, for the delta rule, V, whose tiles it copies
// for dbeta) bf16 and 4-byte aligned, those it copies (Q, K, T~, dW, dU' and V) 16-byte aligned
// (whole_pieces), the states and the results aligned to two elements, d_k and d_v multiples of 16.
FWP_HD bool whole_fragments(const GradArgs& x, int parts) {
  const auto aligned = [](const void* p, bool bf16) { return (reinterpret_cast<uintptr_t>(p) & (bf16 ? 3 : 7)) == 0; };
  const auto pairs = [&](const Out& m) { return m.p == nullptr || aligned(m.p, m.bf16); };
  return parts == 1 && x.dk % 16 == 0 && x.dv % 16 == 0 && whole_pieces(x.q) && whole_pieces(x.k) &&
         (x.tinv.p == nullptr || whole_pieces(x.v)) && whole_words(x.v_new) && whole_words(x.grad_out) &&
         whole_pieces(x.tinv) && whole_pieces(x.dv_new) && whole_pieces(In{x.dw.p, x.dw.bf16}) && aligned(x.ckpt, false) && aligned(x.ds_next, false) &&
         pairs(x.grad_q) && pairs(x.grad_k) && pairs(x.grad_v) && pairs(x.dw);
}

// B3 for the delta rule (Delta: x.tinv given) or the sum rule: one kernel per rule, so that the sum
// rule's has none of the delta rule's branches and registers, and neither keeps the rule in a
// register; Whole where whole_fragments(x, P) holds, which leaves the element-by-element fallbacks
// out (sm_90: the delta rule's kernel then needs 118 registers, 4 blocks per multiprocessor, against
// 136 and 3 with them).
template <int P, bool Delta, bool Whole>
FWP_DEV void input_grads_stage(const GradArgs& x, GradSmemOf<Whole>& sh, int bh, int64_t c) {
  constexpr int PS = P > 2 ? P : 2;
  constexpr bool delta = Delta;
  const int m0 = 16 * warp_id(), dk = x.dk, dv = x.dv;
  const int64_t chunk = int64_t(bh) * x.N + c;
  const In q = x.q + chunk * kPassC * dk;             // [C, d_k]
  const In k = x.k + chunk * kPassC * dk;             // [C, d_k]
  const In vn = x.v_new + chunk * kPassC * dv;        // U' [C, d_v]
  const In go = x.grad_out + chunk * kPassC * dv;     // dO [C, d_v]
  const In dvn = x.dv_new + chunk * kPassC * dv;      // dU' [C, d_v]
  const In v = delta ? x.v + chunk * kPassC * dv : In{nullptr, false};  // V [C, d_v] (the delta rule)
  const float* sc = x.ckpt + chunk * dk * dv;          // S_c [d_k, d_v]
  const float* dsc = x.ds_next + chunk * dk * dv;      // dS_{c+1} [d_k, d_v]
  const Out dw = delta ? x.dw + chunk * kPassC * dk : Out{nullptr, false};  // dW [C, d_k]
  // this warp's rows of a [C, d] matrix
  const auto rows = [&](const In& a, int d) { return RowsOf<Whole>{a, d, m0}; };
  const In tinv = delta ? x.tinv + chunk * kPassC * kPassC : In{nullptr, false};  // T~ [C, C]
  // (Whole) the column tiles, the first one's copy in flight from here on, with T~'s, which lands
  // when the first column tile is taken
  GradColsQueue<Delta> queue{{k, q, dw.in(), dvn, v, dk, dv}, nullptr, 0};
  if constexpr (Whole) {
    if constexpr (Delta) {
      copy_tile<kPassC, kPassC, true>(sh.tinv, kGradHalfLd, tinv.p, kPassC, kPassC, 2);
      copy_commit();
      if (thread_id() < kPassC) sh.beta[thread_id()] = x.beta[chunk * kPassC + thread_id()];  // (visible after P's barrier)
    }
    queue.buf = sh.cols;
    queue.issue(0);
  }
  // use(B) with B(j, n) = a[j, c0 + n] for the chunk's rows j (Whole: from the queue's tile)
  const auto cols = [&](const In& a, int d, int c0, const auto& use) {
    if constexpr (Whole)
      queue.take(a, c0, use);
    else
      use(ColsOf<false>{a, d, c0});
  };
  // A = P (A(r, j) = P(m0 + r, j)) and A = P^T (P(j, m0 + r)), this warp's rows, and the same of G
  // (Whole: from their bf16 tiles)
  const auto p_rows = [&] {
    if constexpr (Whole) return RowsTile{sh.p, kGradHalfLd, m0};
    else return [&](int r, int j) { return sh.p[m0 + r][j]; };
  }();
  const auto p_t_rows = [&] {
    if constexpr (Whole) return TRowsTile{sh.p, kGradHalfLd, m0};
    else return [&](int r, int j) { return sh.p[j][m0 + r]; };
  }();

  {  // P = tril(dO U'^T), this warp's rows, into shared memory
    float p[kQKNT][4] = {};
    warp_product<kQKNT, P, P>(p, dv, rows(go, dv), TransposeOf<Whole>{vn, dv});
    FWP_UNROLL
    for (int j = 0; j < kQKNT; ++j)
      FWP_UNROLL
      for (int e = 0; e < 4; e += 2) {
        const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);  // n even; element e + 1 is (r, n + 1)
        const float p0 = n > r ? 0.f : p[j][e], p1 = n + 1 > r ? 0.f : p[j][e + 1];
        if constexpr (Whole) {
          store_two(sh.p + r * kGradHalfLd + n, bf16_bits(p0), bf16_bits(p1));
        } else {
          sh.p[r][n] = p0;
          sh.p[r][n + 1] = p1;
        }
      }
  }
  block_sync();
  for (int c0 = 0; c0 < dk; c0 += kGradCols) {  // dQ = dO S_c^T + P K and dW = -dU' S_c^T, one slab of S_c for both
    float acc[kGradNT][4] = {}, d[kGradNT][4] = {};
    state_t_slabs<PS, Whole>(slab_space(sh), sc, dk, dv, c0, [&](const Planes& s, int j0, int width) {
      times_slab<P, PS>(acc, rows(go, dv), s, j0, width);
      if (delta) times_slab<P, PS>(d, rows(dvn, dv), s, j0, width);
    });
    if (delta) store_tile<Whole>(d, m0, c0, dk, dw, dk, [](int, int, int, float y) { return -y; });
    cols(k, dk, c0, [&](const auto& kc) { warp_product<kGradNT, P, P>(acc, m0 + 16, p_rows, kc); });
    const Out dq = x.grad_q + chunk * kPassC * dk;
    store_tile<Whole>(acc, m0, c0, dk, dq, dk, [](int, int, int, float y) { return y; });
  }
  block_sync();  // (Whole: T~ landed at the first column tile; K's first tile for dT~ is in flight)

  float dbeta[2] = {0.f, 0.f};  // this lane's share of rows m0 + g and m0 + g + 8
  const In beta = delta ? x.beta + chunk * kPassC : In{nullptr, false};
  // beta_r (Whole: from shared memory, filled at the start)
  const auto beta_at = [&](int r) {
    if constexpr (Whole) return sh.beta[r];
    else return beta[r];
  };
  // A = T~^T, this warp's rows, and B = T~^T
  const auto tinv_t = [&] {
    if constexpr (Whole) return TRowsTile{sh.tinv, kGradHalfLd, m0};
    else return TRowsOf<false>{tinv, kPassC, m0};
  }();
  const auto tinv_cols = [&] {
    if constexpr (Whole) return TransposeTile{sh.tinv, kGradHalfLd};
    else return TransposeOf<false>{tinv, kPassC};
  }();
  if (delta) {
    {  // dT~ = dW (beta K)^T + dU' (beta V)^T, this warp's rows, into shared memory
      float dt[kQKNT][4] = {};
      if constexpr (Whole) {  // the same from K's and V's column tiles, and beta in shared memory
        for (int j0 = 0; j0 < dk; j0 += kScaledCols)
          cols(k, dk, j0, [&](const ColsTile& kt) {
            times_scaled_tile<P>(dt, &sh.m[0][0], rows(dw.in(), dk), kt, sh.beta, j0, dk);
          });
        for (int j0 = 0; j0 < dv; j0 += kScaledCols)
          cols(v, dv, j0, [&](const ColsTile& vt) {
            times_scaled_tile<P>(dt, &sh.m[0][0], rows(dvn, dv), vt, sh.beta, j0, dv);
          });
        block_sync();  // every warp is done with the planes, where dT~ goes next
      } else if constexpr (kPassPlanes<P>) {  // beta K and beta V through shared memory, where dT~ goes next
        times_scaled_t<P>(dt, &sh.m[0][0], rows(dw.in(), dk), k, beta, dk);
        times_scaled_t<P>(dt, &sh.m[0][0], rows(dvn, dv), v, beta, dv);
      } else {
        warp_product<kQKNT, P, P>(dt, dk, rows(dw.in(), dk),
                                  [&](int j, int n) { return j < dk ? mul_rn(k[n * dk + j], beta[n]) : 0.f; });
        warp_product<kQKNT, P, P>(dt, dv, rows(dvn, dv),
                                  [&](int j, int n) { return j < dv ? mul_rn(v[n * dv + j], beta[n]) : 0.f; });
      }
      FWP_UNROLL
      for (int j = 0; j < kQKNT; ++j)
        FWP_UNROLL
        for (int e = 0; e < 4; ++e) sh.m[m0 + acc_row(e)][8 * j + acc_col(e)] = dt[j][e];
    }
    block_sync();
    {  // T~^T dT~, this warp's rows, into shared memory over dT~ once every warp has read it
      float tmp[kQKNT][4] = {};
      warp_product<kQKNT, P, P>(tmp, kPassC, tinv_t, [&](int j, int n) { return sh.m[j][n]; }, kQKNT, m0);
      block_sync();
      FWP_UNROLL
      for (int j = 0; j < kQKNT; ++j)
        FWP_UNROLL
        for (int e = 0; e < 4; ++e) sh.m[m0 + acc_row(e)][8 * j + acc_col(e)] = tmp[j][e];
    }
    block_sync();
    {  // dA = -tril(T~^T dT~ T~^T, -1), over T~^T dT~ once read
      float da[kQKNT][4] = {};
      warp_product<kQKNT, P, P, Whole>(da, m0 + 16, [&](int r, int j) { return sh.m[m0 + r][j]; }, tinv_cols,
                                       (m0 + 16) / 8);
      block_sync();
      FWP_UNROLL
      for (int j = 0; j < kQKNT; ++j)
        FWP_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);
          sh.m[r][n] = n < r ? -da[j][e] : 0.f;
        }
    }
    {  // rowsum(dA . K K^T): each lane its own elements of dA, which it wrote itself, and then puts
       // G = diag(beta) dA in their place (Whole: in bf16, over dA once every warp has read its
       // own), for G K and G^T K below
      float kk_t[kQKNT][4] = {};
      warp_product<kQKNT, P, P, Whole>(kk_t, dk, rows(k, dk), TransposeOf<Whole>{k, dk}, (m0 + 16) / 8);
      const float beta_row[2] = {beta_at(m0 + acc_row(0)), beta_at(m0 + acc_row(2))};
      uint32_t g[kQKNT][2];  // (Whole) G's bf16 pairs: elements e = 2 i and 2 i + 1 of n-tile j
      FWP_UNROLL
      for (int j = 0; j < kQKNT; ++j)
        FWP_UNROLL
        for (int e = 0; e < 4; e += 2) {
          float* m = &sh.m[m0 + acc_row(e)][8 * j + acc_col(e)];  // elements e and e + 1
          dbeta[e >> 1] += m[0] * kk_t[j][e];
          dbeta[e >> 1] += m[1] * kk_t[j][e + 1];
          const float g0 = mul_rn(m[0], beta_row[e >> 1]), g1 = mul_rn(m[1], beta_row[e >> 1]);
          if constexpr (Whole) {
            g[j][e >> 1] = pack(bf16_bits(g0), bf16_bits(g1));
          } else {
            m[0] = g0;
            m[1] = g1;
          }
        }
      if constexpr (Whole) {
        block_sync();
        FWP_UNROLL
        for (int j = 0; j < kQKNT; ++j)
          FWP_UNROLL
          for (int e = 0; e < 4; e += 2)
            store_pair(sh.later.g + (m0 + acc_row(e)) * kGradHalfLd + 8 * j + acc_col(e), g[j][e >> 1]);
      }
    }
    block_sync();
  }

  for (int c0 = 0; c0 < dk; c0 += kGradCols) {
    float acc[kGradNT][4] = {};
    if (delta) {
      // d(beta K) = T~^T dW, first: its terms rowsum(d(beta K) . K) and beta d(beta K) are taken at
      // once, K's elements from its column tile (Whole: in shared memory, where they were 16-bit
      // loads from global memory, one per element)
      cols(dw.in(), dk, c0, [&](const auto& dwc) { warp_product<kGradNT, P, P>(acc, kPassC, tinv_t, dwc, kGradNT, m0); });
      // + G K + G^T K with G = diag(beta) dA (in shared memory)
      const auto g_rows = [&] {
        if constexpr (Whole) return RowsTile{sh.later.g, kGradHalfLd, m0};
        else return [&](int r, int j) { return sh.m[m0 + r][j]; };
      }();
      const auto g_t_rows = [&] {
        if constexpr (Whole) return TRowsTile{sh.later.g, kGradHalfLd, m0};
        else return [&](int r, int j) { return sh.m[j][m0 + r]; };
      }();
      cols(k, dk, c0, [&](const auto& kc) {
        FWP_UNROLL
        for (int j = 0; j < kGradNT; ++j)
          FWP_UNROLL
          for (int e = 0; e < 4; ++e) {
            const int r = m0 + acc_row(e), n = 8 * j + acc_col(e);  // K(r, c0 + n)
            if (c0 + n < dk) {
              if constexpr (Whole)
                dbeta[e >> 1] += acc[j][e] * bf16_value(kc.t[r * kc.ld + n]);
              else
                dbeta[e >> 1] += acc[j][e] * kc(r, n);
            }
            acc[j][e] = mul_rn(acc[j][e], beta_at(r));
          }
        warp_product<kGradNT, P, P>(acc, m0 + 16, g_rows, kc);
        warp_product<kGradNT, P, P>(acc, kPassC, g_t_rows, kc, kGradNT, m0);
      });
    }
    cols(q, dk, c0, [&](const auto& qc) { warp_product<kGradNT, P, P>(acc, kPassC, p_t_rows, qc, kGradNT, m0); });  // + P^T Q
    state_t_slabs<PS, Whole>(slab_space(sh), dsc, dk, dv, c0, [&](const Planes& s, int j0, int width) {
      times_slab<P, PS>(acc, rows(vn, dv), s, j0, width);  // + U' dS_{c+1}^T
    });
    const Out dko = x.grad_k + chunk * kPassC * dk;
    store_tile<Whole>(acc, m0, c0, dk, dko, dk, [](int, int, int, float y) { return y; });
  }
  if (!delta) return;
  for (int c0 = 0; c0 < dv; c0 += kGradCols) {
    float dvb[kGradNT][4] = {};  // d(beta V) = T~^T dU'; dV = beta d(beta V)
    cols(dvn, dv, c0, [&](const auto& dvc) { warp_product<kGradNT, P, P>(dvb, kPassC, tinv_t, dvc, kGradNT, m0); });
    const Out dvo = x.grad_v + chunk * kPassC * dv;
    // rowsum(d(beta V) . V), V's elements from its column tile (Whole: in shared memory, where they
    // were global loads, one per element)
    cols(v, dv, c0, [&](const auto& vc) {
      store_tile<Whole>(dvb, m0, c0, dv, dvo, dv, [&](int r, int col, int e, float y) {
        if constexpr (Whole)
          dbeta[e >> 1] += y * bf16_value(vc.t[r * vc.ld + col - c0]);
        else
          dbeta[e >> 1] += y * vc(r, col - c0);
        return mul_rn(y, beta_at(r));
      });
    });
  }
  // dbeta: each row's four lanes (t = lane % 4) through shared memory, summed in order of t
  block_sync();  // every warp is done with P
  float* part = reinterpret_cast<float*>(&sh.p[0]);  // [C][4]
  const int t = lane_id() & 3;
  part[(m0 + (lane_id() >> 2)) * 4 + t] = dbeta[0];
  part[(m0 + (lane_id() >> 2) + 8) * 4 + t] = dbeta[1];
  block_sync();
  if (thread_id() < kPassC) {
    const float* r = part + thread_id() * 4;
    x.grad_beta.set(chunk * kPassC + thread_id(), ((r[0] + r[1]) + r[2]) + r[3]);
  }
}
