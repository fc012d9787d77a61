// The first-version chunked kernels (chunked.cu has the design), written once for two compilers:
// nvcc builds them in chunked.cu, and the host compiler builds them for chunked_first_emulator.cpp,
// which runs the same code on the CPU (cuda_on_host.h) so that CI checks it without a GPU.
//
// The includer includes the CUDA headers (cuda_bf16.h, mma.h) or cuda_on_host.h first, then this
// file inside its own namespace, with `using namespace nvcuda;` there.

constexpr int kC = 64;  // chunk
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 16;
constexpr int kColumns = 64;  // value columns per block of the sequential passes

constexpr int kMaxParts = 3;  // bf16 parts of one operand (chunked.h)

// How many bf16 parts an operand takes at least: plain operands one, states (S, dS) two; the
// kernel-wide floor (Sizes::parts: 2 for fp16 inputs, 3 for fp32) can raise both.
enum Mode { kRound = 1, kSplit = 2 };

// A logical M x K (or K x N) operand over an fp32 matrix in global memory: element (r, c) is
// p[r * ld + c], or p[c * ld + r] when `trans`; zero outside rows x cols. `scale` (may be null)
// multiplies by scale[stored row], the step index of a [C, d] matrix (beta K, beta V, diag(beta) dA).
struct Operand {
  const float* p;
  int64_t ld;
  int rows, cols;
  bool trans;
  const float* scale;
  Mode mode;
};

__device__ __forceinline__ Operand op(const float* p, int64_t ld, int rows, int cols, bool trans = false,
                                      Mode mode = kRound, const float* scale = nullptr) {
  return Operand{p, ld, rows, cols, trans, scale, mode};
}

__device__ __forceinline__ float fetch(const Operand& o, int r, int c) {
  if (r >= o.rows || c >= o.cols) return 0.f;
  const int sr = o.trans ? c : r, sc = o.trans ? r : c;
  float x = o.p[int64_t(sr) * o.ld + sc];
  if (o.scale != nullptr) x = __fmul_rn(x, o.scale[sr]);  // rounded, as the twin's k * beta (no FMA contraction)
  return x;
}

// Per-warp staging in shared memory: the bf16 parts of A's and B's tiles and the fp32 result
// tile; WMMA loads and stores need 32-byte alignment.
struct __align__(32) Staging {
  __nv_bfloat16 ab[kWarps][2][kMaxParts][kTile * kTile];
  float c[kWarps][kTile * kTile];
};

// A block's product machinery: its staging and the floor on operand parts.
struct Gemm {
  Staging& st;
  int parts;
};

// Writes x's first `n` bf16 parts (hi = bf16(x), then bf16 of the rest) to dst[p][e].
__device__ __forceinline__ void split(float x, int n, __nv_bfloat16 (*dst)[kTile * kTile], int e) {
  for (int p = 0; p < n; ++p) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    dst[p][e] = h;
    x -= __bfloat162float(h);
  }
}

// out[M x N] = (cin ? cin : 0) + sign * A B, by the whole block; out and cin row-major fp32 with
// leading dimensions ldo and ldc (cin may be out). A B is the sum of the part products A_i B_j of
// order i + j < max(parts of A, parts of B), as the twin's split_product. Ends with __syncthreads().
__device__ void block_gemm(int M, int N, int K, const Operand& A, const Operand& B, float sign, const float* cin,
                           int64_t ldc, float* out, int64_t ldo, const Gemm& g) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int tm = (M + kTile - 1) / kTile, tn = (N + kTile - 1) / kTile;
  const int pa = max(int(A.mode), g.parts), pb = max(int(B.mode), g.parts), orders = max(pa, pb);
  __nv_bfloat16 (*a_parts)[kTile * kTile] = g.st.ab[warp][0];
  __nv_bfloat16 (*b_parts)[kTile * kTile] = g.st.ab[warp][1];
  float* cs = g.st.c[warp];
  for (int t = warp; t < tm * tn; t += kWarps) {
    const int r0 = (t / tn) * kTile, c0 = (t % tn) * kTile;
    wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
    wmma::fill_fragment(acc, 0.f);
    for (int k0 = 0; k0 < K; k0 += kTile) {
      for (int e = lane; e < kTile * kTile; e += 32) {
        const int r = e / kTile, c = e % kTile;
        split(fetch(A, r0 + r, k0 + c), pa, a_parts, e);
        split(fetch(B, k0 + r, c0 + c), pb, b_parts, e);
      }
      __syncwarp();
      wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, __nv_bfloat16, wmma::row_major> fb;
      for (int i = 0; i < pa; ++i) {
        wmma::load_matrix_sync(fa, a_parts[i], kTile);
        for (int j = 0; j < pb && i + j < orders; ++j) {
          wmma::load_matrix_sync(fb, b_parts[j], kTile);
          wmma::mma_sync(acc, fa, fb, acc);
        }
      }
      __syncwarp();
    }
    wmma::store_matrix_sync(cs, acc, kTile, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < kTile * kTile; e += 32) {
      const int r = r0 + e / kTile, c = c0 + e % kTile;
      if (r < M && c < N) {
        float x = sign * cs[e];
        if (cin != nullptr) x += cin[int64_t(r) * ldc + c];
        out[int64_t(r) * ldo + c] = x;
      }
    }
    __syncwarp();
  }
  __syncthreads();
}

// Zeroes the entries of a C x C row-major matrix above diagonal `diag` (tril(x, diag)).
__device__ void block_tril(float* x, int diag) {
  for (int e = threadIdx.x; e < kC * kC; e += kThreads)
    if (e % kC > e / kC + diag) x[e] = 0.f;
  __syncthreads();
}

// dst[rows x cols] = src, both row-major with their own leading dimensions.
__device__ void block_copy(float* dst, int64_t ldd, const float* src, int64_t lds, int rows, int cols) {
  for (int e = threadIdx.x; e < rows * cols; e += kThreads) {
    const int r = e / cols, c = e % cols;
    dst[int64_t(r) * ldd + c] = src[int64_t(r) * lds + c];
  }
  __syncthreads();
}

// x = (I + a)^-1 for strictly lower a (C x C, row-major, global), in fp32: forward substitution on
// the four 16 x 16 diagonal blocks (one warp each, one lane per column), then merges
// 16 -> 32 -> 64 with the lower-left block -Y^-1 B X^-1.
struct SolveShared {
  float a[kC][kC + 1];
  float x[kC][kC + 1];
  float t[32][33];
};

__device__ void block_unit_lower_inverse(const float* a, float* x, SolveShared& sh) {
  for (int e = threadIdx.x; e < kC * kC; e += kThreads) {
    sh.a[e / kC][e % kC] = a[e];
    sh.x[e / kC][e % kC] = 0.f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane < kTile) {
    const int base = warp * kTile, col = base + lane;
    for (int i = 0; i < kTile; ++i) {
      float v = (i == lane) ? 1.f : 0.f;
      for (int j = 0; j < i; ++j) v -= sh.a[base + i][base + j] * sh.x[base + j][col];
      sh.x[base + i][col] = v;
    }
  }
  __syncthreads();
  for (int s = kTile; s < kC; s *= 2) {
    for (int blk = 0; blk < kC / (2 * s); ++blk) {
      const int r0 = blk * 2 * s + s, c0 = blk * 2 * s;
      // t = Y^-1 B, Y^-1 = x[r0.., r0..], B = a[r0.., c0..]
      for (int e = threadIdx.x; e < s * s; e += kThreads) {
        const int i = e / s, j = e % s;
        float v = 0.f;
        for (int m = 0; m < s; ++m) v += sh.x[r0 + i][r0 + m] * sh.a[r0 + m][c0 + j];
        sh.t[i][j] = v;
      }
      __syncthreads();
      // x[r0.., c0..] = -t X^-1, X^-1 = x[c0.., c0..]
      for (int e = threadIdx.x; e < s * s; e += kThreads) {
        const int i = e / s, j = e % s;
        float v = 0.f;
        for (int m = 0; m < s; ++m) v += sh.t[i][m] * sh.x[c0 + m][c0 + j];
        sh.x[r0 + i][c0 + j] = -v;
      }
      __syncthreads();
    }
  }
  for (int e = threadIdx.x; e < kC * kC; e += kThreads) x[e] = sh.x[e / kC][e % kC];
  __syncthreads();
}

// fp32 values of input_grads_kernel's scratch per chunk: 5 C x C matrices, 2 of C x d_k, 1 of C x d_v.
inline int64_t grads_scratch_floats(int64_t dk, int64_t dv) { return 5 * kC * kC + kC * (2 * dk + dv); }

struct Sizes {
  int64_t N;  // chunks
  int dk, dv;
  int parts;  // the floor on operand parts: 1 (Operands::Bf16), 2 (Bf16x2) or 3 (Bf16x3)
  __device__ int64_t tile(int bh, int c, int rows, int cols) const { return ((int64_t(bh) * N + c) * rows) * cols; }
};

// F1. A = tril((beta K) K^T, -1) into `a`, T~ = (I + A)^-1, W = T~ (beta K), U = T~ (beta V).
__global__ void __launch_bounds__(kThreads)
    wy_kernel(const float* k, const float* v, const float* beta, float* tinv, float* w, float* u, float* a,
              Sizes s) {
  // The products and the solve take turns with one buffer (both would pass the 48 KiB of static
  // shared memory).
  constexpr size_t kBytes = sizeof(Staging) > sizeof(SolveShared) ? sizeof(Staging) : sizeof(SolveShared);
  __shared__ __align__(32) unsigned char smem[kBytes];
  Staging& st = *reinterpret_cast<Staging*>(smem);
  SolveShared& sh = *reinterpret_cast<SolveShared*>(smem);
  const int bh = blockIdx.x, c = blockIdx.y;
  const Gemm g{st, s.parts};
  const float* kc = k + s.tile(bh, c, kC, s.dk);
  const float* vc = v + s.tile(bh, c, kC, s.dv);
  const float* bc = beta + s.tile(bh, c, kC, 1);
  float* ac = a + s.tile(bh, c, kC, kC);
  float* tc = tinv + s.tile(bh, c, kC, kC);
  block_gemm(kC, kC, s.dk, op(kc, s.dk, kC, s.dk, false, kRound, bc), op(kc, s.dk, s.dk, kC, true), 1.f, nullptr, 0,
             ac, kC, g);
  block_tril(ac, -1);
  block_unit_lower_inverse(ac, tc, sh);
  block_gemm(kC, s.dk, kC, op(tc, kC, kC, kC), op(kc, s.dk, kC, s.dk, false, kRound, bc), 1.f, nullptr, 0,
             w + s.tile(bh, c, kC, s.dk), s.dk, g);
  block_gemm(kC, s.dv, kC, op(tc, kC, kC, kC), op(vc, s.dv, kC, s.dv, false, kRound, bc), 1.f, nullptr, 0,
             u + s.tile(bh, c, kC, s.dv), s.dv, g);
}

// F2. One block per (tile of kColumns value columns, batch·head), sequential over chunks. The state
// lives in the checkpoints: S_{c+1} = S_c + K^T U' is written straight into checkpoint c + 1 (the
// final state after the last chunk). w null for the sum rule (U' = U).
__global__ void __launch_bounds__(kThreads)
    state_forward_kernel(const float* k, const float* w, const float* u, const float* s0, float* ckpt,
                         float* v_new, float* state, Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, col0 = blockIdx.y * kColumns;
  const Gemm g{st, s.parts};
  const int nv = min(kColumns, s.dv - col0);
  const int64_t state_size = int64_t(s.dk) * s.dv;
  block_copy(ckpt + s.tile(bh, 0, s.dk, s.dv) + col0, s.dv, s0 + bh * state_size + col0, s.dv, s.dk, nv);
  for (int c = 0; c < s.N; ++c) {
    const float* sc = ckpt + s.tile(bh, c, s.dk, s.dv) + col0;
    const float* uc = u + s.tile(bh, c, kC, s.dv) + col0;
    const float* vn = uc;
    if (w != nullptr) {
      float* vnc = v_new + s.tile(bh, c, kC, s.dv) + col0;
      block_gemm(kC, nv, s.dk, op(w + s.tile(bh, c, kC, s.dk), s.dk, kC, s.dk),
                 op(sc, s.dv, s.dk, nv, false, kSplit), -1.f, uc, s.dv, vnc, s.dv, g);  // U' = U - W S_c
      vn = vnc;
    }
    float* next = c + 1 < s.N ? ckpt + s.tile(bh, c + 1, s.dk, s.dv) + col0 : state + bh * state_size + col0;
    block_gemm(s.dk, nv, kC, op(k + s.tile(bh, c, kC, s.dk), s.dk, s.dk, kC, true), op(vn, s.dv, kC, nv), 1.f, sc,
               s.dv, next, s.dv, g);  // S_{c+1} = S_c + K^T U'
  }
}

// U' = U - W S_c for every chunk (the backward's recompute).
__global__ void __launch_bounds__(kThreads)
    values_kernel(const float* w, const float* u, const float* ckpt, float* v_new, Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, c = blockIdx.y;
  const Gemm g{st, s.parts};
  block_gemm(kC, s.dv, s.dk, op(w + s.tile(bh, c, kC, s.dk), s.dk, kC, s.dk),
             op(ckpt + s.tile(bh, c, s.dk, s.dv), s.dv, s.dk, s.dv, false, kSplit), -1.f,
             u + s.tile(bh, c, kC, s.dv), s.dv, v_new + s.tile(bh, c, kC, s.dv), s.dv, g);
}

// F3. O = Q S_c + tril(Q K^T) U'; `qk` is a C x C scratch per chunk.
__global__ void __launch_bounds__(kThreads)
    output_kernel(const float* q, const float* k, const float* v_new, const float* ckpt, float* out, float* qk,
                  Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, c = blockIdx.y;
  const Gemm g{st, s.parts};
  const float* qc = q + s.tile(bh, c, kC, s.dk);
  float* qkc = qk + s.tile(bh, c, kC, kC);
  float* oc = out + s.tile(bh, c, kC, s.dv);
  block_gemm(kC, kC, s.dk, op(qc, s.dk, kC, s.dk), op(k + s.tile(bh, c, kC, s.dk), s.dk, s.dk, kC, true), 1.f,
             nullptr, 0, qkc, kC, g);
  block_tril(qkc, 0);
  block_gemm(kC, s.dv, s.dk, op(qc, s.dk, kC, s.dk),
             op(ckpt + s.tile(bh, c, s.dk, s.dv), s.dv, s.dk, s.dv, false, kSplit), 1.f, nullptr, 0, oc, s.dv, g);
  block_gemm(kC, s.dv, kC, op(qkc, kC, kC, kC), op(v_new + s.tile(bh, c, kC, s.dv), s.dv, kC, s.dv), 1.f, oc,
             s.dv, oc, s.dv, g);
}

// B1. dU'_loc = tril(Q K^T)^T dO.
__global__ void __launch_bounds__(kThreads)
    local_grad_kernel(const float* q, const float* k, const float* grad_out, float* dv_local, float* qk, Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, c = blockIdx.y;
  const Gemm g{st, s.parts};
  float* qkc = qk + s.tile(bh, c, kC, kC);
  block_gemm(kC, kC, s.dk, op(q + s.tile(bh, c, kC, s.dk), s.dk, kC, s.dk),
             op(k + s.tile(bh, c, kC, s.dk), s.dk, s.dk, kC, true), 1.f, nullptr, 0, qkc, kC, g);
  block_tril(qkc, 0);
  block_gemm(kC, s.dv, kC, op(qkc, kC, kC, kC, true), op(grad_out + s.tile(bh, c, kC, s.dv), s.dv, kC, s.dv), 1.f,
             nullptr, 0, dv_local + s.tile(bh, c, kC, s.dv), s.dv, g);
}

// B2. Reverse over chunks per (tile of value columns, batch·head): dS_{c+1} is kept in ds_next[c],
// dU' = dU'_loc + K dS_{c+1}, dS_c = dS_{c+1} + Q^T dO - W^T dU' (into ds_next[c - 1], or ds0).
__global__ void __launch_bounds__(kThreads)
    state_backward_kernel(const float* q, const float* k, const float* w, const float* grad_out,
                          const float* dv_local, const float* ds_final, float* dv_new, float* ds_next, float* ds0,
                          Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, col0 = blockIdx.y * kColumns;
  const Gemm g{st, s.parts};
  const int nv = min(kColumns, s.dv - col0);
  const int64_t state_size = int64_t(s.dk) * s.dv;
  block_copy(ds_next + s.tile(bh, s.N - 1, s.dk, s.dv) + col0, s.dv, ds_final + bh * state_size + col0, s.dv, s.dk,
             nv);
  for (int c = int(s.N) - 1; c >= 0; --c) {
    const float* dsc = ds_next + s.tile(bh, c, s.dk, s.dv) + col0;
    float* dvn = dv_new + s.tile(bh, c, kC, s.dv) + col0;
    const float* kc = k + s.tile(bh, c, kC, s.dk);
    block_gemm(kC, nv, s.dk, op(kc, s.dk, kC, s.dk), op(dsc, s.dv, s.dk, nv, false, kSplit), 1.f,
               dv_local + s.tile(bh, c, kC, s.dv) + col0, s.dv, dvn, s.dv, g);
    float* next = c > 0 ? ds_next + s.tile(bh, c - 1, s.dk, s.dv) + col0 : ds0 + bh * state_size + col0;
    block_gemm(s.dk, nv, kC, op(q + s.tile(bh, c, kC, s.dk), s.dk, s.dk, kC, true),
               op(grad_out + s.tile(bh, c, kC, s.dv) + col0, s.dv, kC, nv), 1.f, dsc, s.dv, next, s.dv, g);
    if (w != nullptr)
      block_gemm(s.dk, nv, kC, op(w + s.tile(bh, c, kC, s.dk), s.dk, s.dk, kC, true), op(dvn, s.dv, kC, nv), -1.f,
                 next, s.dv, next, s.dv, g);
  }
}

// B3. Per chunk: dQ, dK and, for the delta rule (tinv, w non-null), the WY backward giving dK's rest,
// dV and dbeta. `scratch` per chunk: 5 C x C matrices, then 2 of C x d_k and 1 of C x d_v.
__global__ void __launch_bounds__(kThreads)
    input_grads_kernel(const float* q, const float* k, const float* v, const float* beta, const float* tinv,
                       const float* w, const float* v_new, const float* ckpt, const float* ds_next,
                       const float* grad_out, const float* dv_new, float* dq, float* dk, float* dv, float* dbeta,
                       float* scratch, int64_t scratch_per_chunk, Sizes s) {
  __shared__ Staging st;
  const int bh = blockIdx.x, c = blockIdx.y;
  const Gemm g{st, s.parts};
  const int dkn = s.dk, dvn = s.dv;
  const float* qc = q + s.tile(bh, c, kC, dkn);
  const float* kc = k + s.tile(bh, c, kC, dkn);
  const float* vnc = v_new + s.tile(bh, c, kC, dvn);
  const float* goc = grad_out + s.tile(bh, c, kC, dvn);
  const float* dvnc = dv_new + s.tile(bh, c, kC, dvn);
  const float* sc = ckpt + s.tile(bh, c, dkn, dvn);
  const float* dsc = ds_next + s.tile(bh, c, dkn, dvn);
  float* dqc = dq + s.tile(bh, c, kC, dkn);
  float* dkc = dk + s.tile(bh, c, kC, dkn);
  float* sp = scratch + (int64_t(bh) * s.N + c) * scratch_per_chunk;
  float *p = sp, *dt = sp + kC * kC, *tmp = sp + 2 * kC * kC, *da = sp + 3 * kC * kC, *kk = sp + 4 * kC * kC;
  float *dw = sp + 5 * kC * kC, *dkb = dw + kC * dkn, *dvb = dkb + kC * dkn;

  // P = tril(dO U'^T); dQ = dO S_c^T + P K; dK = P^T Q + U' dS_{c+1}^T
  block_gemm(kC, kC, dvn, op(goc, dvn, kC, dvn), op(vnc, dvn, dvn, kC, true), 1.f, nullptr, 0, p, kC, g);
  block_tril(p, 0);
  block_gemm(kC, dkn, dvn, op(goc, dvn, kC, dvn), op(sc, dvn, dvn, dkn, true, kSplit), 1.f, nullptr, 0, dqc, dkn, g);
  block_gemm(kC, dkn, kC, op(p, kC, kC, kC), op(kc, dkn, kC, dkn), 1.f, dqc, dkn, dqc, dkn, g);
  block_gemm(kC, dkn, kC, op(p, kC, kC, kC, true), op(qc, dkn, kC, dkn), 1.f, nullptr, 0, dkc, dkn, g);
  block_gemm(kC, dkn, dvn, op(vnc, dvn, kC, dvn), op(dsc, dvn, dvn, dkn, true, kSplit), 1.f, dkc, dkn, dkc, dkn, g);
  if (tinv == nullptr) return;

  const float* bc = beta + s.tile(bh, c, kC, 1);
  const float* tc = tinv + s.tile(bh, c, kC, kC);
  const float* vc = v + s.tile(bh, c, kC, dvn);
  // dW = -dU' S_c^T; d(beta K) = T~^T dW; d(beta V) = T~^T dU'
  block_gemm(kC, dkn, dvn, op(dvnc, dvn, kC, dvn), op(sc, dvn, dvn, dkn, true, kSplit), -1.f, nullptr, 0, dw, dkn,
             g);
  block_gemm(kC, dkn, kC, op(tc, kC, kC, kC, true), op(dw, dkn, kC, dkn), 1.f, nullptr, 0, dkb, dkn, g);
  block_gemm(kC, dvn, kC, op(tc, kC, kC, kC, true), op(dvnc, dvn, kC, dvn), 1.f, nullptr, 0, dvb, dvn, g);
  // dT~ = dW (beta K)^T + dU' (beta V)^T; dA = -tril(T~^T dT~ T~^T, -1)
  block_gemm(kC, kC, dkn, op(dw, dkn, kC, dkn), op(kc, dkn, dkn, kC, true, kRound, bc), 1.f, nullptr, 0, dt, kC, g);
  block_gemm(kC, kC, dvn, op(dvnc, dvn, kC, dvn), op(vc, dvn, dvn, kC, true, kRound, bc), 1.f, dt, kC, dt, kC, g);
  block_gemm(kC, kC, kC, op(tc, kC, kC, kC, true), op(dt, kC, kC, kC), 1.f, nullptr, 0, tmp, kC, g);
  block_gemm(kC, kC, kC, op(tmp, kC, kC, kC), op(tc, kC, kC, kC, true), -1.f, nullptr, 0, da, kC, g);
  block_tril(da, -1);
  // dK += beta d(beta K) + G K + G^T K, G = diag(beta) dA; dV = beta d(beta V)
  for (int e = threadIdx.x; e < kC * dkn; e += kThreads) dkc[e] += dkb[e] * bc[e / dkn];
  __syncthreads();
  block_gemm(kC, dkn, kC, op(da, kC, kC, kC, false, kRound, bc), op(kc, dkn, kC, dkn), 1.f, dkc, dkn, dkc, dkn, g);
  block_gemm(kC, dkn, kC, op(da, kC, kC, kC, true, kRound, bc), op(kc, dkn, kC, dkn), 1.f, dkc, dkn, dkc, dkn, g);
  float* dvc = dv + s.tile(bh, c, kC, dvn);
  for (int e = threadIdx.x; e < kC * dvn; e += kThreads) dvc[e] = dvb[e] * bc[e / dvn];
  // dbeta = rowsum(d(beta K) . K) + rowsum(d(beta V) . V) + rowsum(dA . K K^T)
  block_gemm(kC, kC, dkn, op(kc, dkn, kC, dkn), op(kc, dkn, dkn, kC, true), 1.f, nullptr, 0, kk, kC, g);
  if (threadIdx.x < kC) {
    const int r = threadIdx.x;
    float x = 0.f;
    for (int j = 0; j < dkn; ++j) x += dkb[r * dkn + j] * kc[r * dkn + j];
    for (int j = 0; j < dvn; ++j) x += dvb[r * dvn + j] * vc[r * dvn + j];
    for (int j = 0; j < kC; ++j) x += da[r * kC + j] * kk[r * kC + j];
    dbeta[s.tile(bh, c, kC, 1) + r] = x;
  }
}
