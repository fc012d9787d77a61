// The recurrent CUDA kernels of the fused fast-weight recurrence (algorithm in fast_weight.h; mapping
// in fast_weight.cu), written once for two compilers: nvcc builds them in fast_weight.cu, and the
// host compiler builds them for fast_weight_emulator.cpp, which runs the same code on the CPU
// (cuda_on_host.h) so that CI checks its indexing and synchronisation without a GPU.
//
// The includer defines, before including this file inside its own namespace:
//   FWP_UNROLL                  `#pragma unroll` for nvcc, nothing elsewhere
//   FWP_DYNAMIC_SHARED(name)    declares `name`, the block's dynamic shared memory (unsigned char*)
// and includes fast_weight.h and the CUDA types (__half, __nv_bfloat16) first.

constexpr int kWarps = fwp::kCudaWarps;  // value columns per block
constexpr int kThreads = kWarps * 32;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ __forceinline__ void store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store(double* p, int64_t i, double x) { p[i] = x; }
__device__ __forceinline__ void store(__half* p, int64_t i, float x) { p[i] = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float x) { p[i] = __float2bfloat16_rn(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  FWP_UNROLL
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                   const scalar_t* __restrict__ v, const scalar_t* __restrict__ beta,
                   const acc_t* __restrict__ s0, scalar_t* __restrict__ out, acc_t* __restrict__ state,
                   acc_t* __restrict__ ckpt, int64_t T, int64_t dk, int64_t dv, int64_t chunk) {
  FWP_DYNAMIC_SHARED(smem_raw);
  acc_t* S = reinterpret_cast<acc_t*>(smem_raw);  // [kWarps][dk]: this block's state columns
  acc_t* kb = S + kWarps * dk;                     // [dk]: k_t
  acc_t* qb = kb + dk;                             // [dk]: q_t
  const bool delta = beta != nullptr;
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col = int64_t(blockIdx.y) * kWarps + warp;
  const bool active = col < dv;  // uniform over the warp
  const int64_t ss = dk * dv, N = (T + chunk - 1) / chunk;
  acc_t* Sc = S + warp * dk;
  if (active)
    for (int64_t j = lane; j < dk; j += 32) Sc[j] = s0[bh * ss + j * dv + col];
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = bh * T + t;
    __syncthreads();  // the previous step is done with kb, qb
    for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
      kb[j] = load(k, row * dk + j);
      qb[j] = load(q, row * dk + j);
    }
    __syncthreads();
    if (!active) continue;
    if (t % chunk == 0)
      for (int64_t j = lane; j < dk; j += 32) ckpt[((bh * N + t / chunk) * dk + j) * dv + col] = Sc[j];
    const acc_t vm = load(v, row * dv + col);
    acc_t u;
    if (delta) {
      acc_t part = 0;
      for (int64_t j = lane; j < dk; j += 32) part += Sc[j] * kb[j];
      const acc_t r = fwp::delta_residual(vm, warp_sum(part));
      u = fwp::written_value(true, static_cast<acc_t>(load(beta, row)), acc_t(0), r);
    } else {
      u = fwp::written_value(false, acc_t(0), vm, acc_t(0));
    }
    acc_t part = 0;
    for (int64_t j = lane; j < dk; j += 32) {
      const acc_t s = Sc[j] + kb[j] * u;
      Sc[j] = s;
      part += s * qb[j];
    }
    const acc_t o = warp_sum(part);
    if (lane == 0) store(out, row * dv + col, o);
  }
  if (active)
    for (int64_t j = lane; j < dk; j += 32) state[bh * ss + j * dv + col] = Sc[j];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const acc_t* __restrict__ grad_state,
                    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                    const scalar_t* __restrict__ v, const scalar_t* __restrict__ beta,
                    const acc_t* __restrict__ ckpt, acc_t* __restrict__ dq_acc,
                    acc_t* __restrict__ dk_acc, scalar_t* __restrict__ dv_out,
                    acc_t* __restrict__ dbeta_acc, acc_t* __restrict__ ds0, int64_t T, int64_t dk,
                    int64_t dv, int64_t chunk) {
  FWP_DYNAMIC_SHARED(smem_raw);
  acc_t* states = reinterpret_cast<acc_t*>(smem_raw);  // [chunk + 1][kWarps][dk]
  acc_t* dS = states + (chunk + 1) * kWarps * dk;      // [kWarps][dk]
  acc_t* red_q = dS + kWarps * dk;                     // [kWarps][dk]: per-column terms of dq_t
  acc_t* red_k = red_q + kWarps * dk;                  // [kWarps][dk]: per-column terms of dk_t
  acc_t* kb = red_k + kWarps * dk;                     // [dk]
  acc_t* qb = kb + dk;                                 // [dk]
  acc_t* rs = qb + dk;                                 // [chunk][kWarps]: r_t per column
  acc_t* us = rs + chunk * kWarps;                     // [chunk][kWarps]: u_t per column
  acc_t* red_b = us + chunk * kWarps;                  // [kWarps]: per-column terms of dbeta_t
  const bool delta = beta != nullptr;
  const int64_t bh = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col = int64_t(blockIdx.y) * kWarps + warp;
  const bool active = col < dv;
  const int64_t ss = dk * dv, N = (T + chunk - 1) / chunk;
  acc_t* dSc = dS + warp * dk;
  if (active)
    for (int64_t j = lane; j < dk; j += 32) dSc[j] = grad_state[bh * ss + j * dv + col];

  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t c0 = n * chunk;
    const int64_t len = (T - c0) < chunk ? (T - c0) : chunk;
    // replay the chunk forward from its checkpoint: states[i] = S before step c0 + i
    if (active)
      for (int64_t j = lane; j < dk; j += 32)
        states[warp * dk + j] = ckpt[((bh * N + n) * dk + j) * dv + col];
    for (int64_t i = 0; i < len; ++i) {
      const int64_t row = bh * T + c0 + i;
      __syncthreads();
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) kb[j] = load(k, row * dk + j);
      __syncthreads();
      if (!active) continue;
      const acc_t* Sp = states + (i * kWarps + warp) * dk;
      acc_t* Sn = states + ((i + 1) * kWarps + warp) * dk;
      const acc_t vm = load(v, row * dv + col);
      acc_t u, r = 0;
      if (delta) {
        acc_t part = 0;
        for (int64_t j = lane; j < dk; j += 32) part += Sp[j] * kb[j];
        r = fwp::delta_residual(vm, warp_sum(part));
        u = fwp::written_value(true, static_cast<acc_t>(load(beta, row)), acc_t(0), r);
      } else {
        u = fwp::written_value(false, acc_t(0), vm, acc_t(0));
      }
      for (int64_t j = lane; j < dk; j += 32) Sn[j] = Sp[j] + kb[j] * u;
      if (lane == 0) {
        rs[i * kWarps + warp] = r;
        us[i * kWarps + warp] = u;
      }
    }
    // then walk the chunk backwards
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t row = bh * T + c0 + i;
      __syncthreads();  // red_* of the previous step are consumed; rs, us are visible
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
        kb[j] = load(k, row * dk + j);
        qb[j] = load(q, row * dk + j);
      }
      __syncthreads();
      acc_t* rq = red_q + warp * dk;
      acc_t* rk = red_k + warp * dk;
      if (active) {
        const acc_t* St = states + ((i + 1) * kWarps + warp) * dk;
        const acc_t* Sp = states + (i * kWarps + warp) * dk;
        const acc_t u = us[i * kWarps + warp], r = rs[i * kWarps + warp];
        const acc_t go = load(grad_out, row * dv + col);
        // dS += q dO^T; dq = S_t dO; du = dS^T k
        acc_t part = 0;
        for (int64_t j = lane; j < dk; j += 32) {
          const acc_t d = dSc[j] + qb[j] * go;
          dSc[j] = d;
          rq[j] = St[j] * go;
          part += d * kb[j];
        }
        const acc_t du = warp_sum(part);
        const acc_t b = delta ? static_cast<acc_t>(load(beta, row)) : acc_t(0);
        if (lane == 0) store(dv_out, row * dv + col, fwp::value_grad(delta, b, du));
        // dk = dS u (+ S_{t-1} g, then dS += k g^T, for the delta rule)
        if (delta) {
          const acc_t g = fwp::retrieval_grad(b, du);
          for (int64_t j = lane; j < dk; j += 32) {
            const acc_t d = dSc[j];
            rk[j] = d * u + Sp[j] * g;
            dSc[j] = d + kb[j] * g;
          }
        } else {
          for (int64_t j = lane; j < dk; j += 32) rk[j] = dSc[j] * u;
        }
        if (lane == 0) red_b[warp] = delta ? du * r : acc_t(0);
      } else {
        for (int64_t j = lane; j < dk; j += 32) rq[j] = rk[j] = 0;
        if (lane == 0) red_b[warp] = 0;
      }
      __syncthreads();
      for (int64_t j = threadIdx.x; j < dk; j += kThreads) {
        acc_t sq = 0, sk = 0;
        FWP_UNROLL
        for (int w = 0; w < kWarps; ++w) {
          sq += red_q[w * dk + j];
          sk += red_k[w * dk + j];
        }
        atomicAdd(dq_acc + row * dk + j, sq);
        atomicAdd(dk_acc + row * dk + j, sk);
      }
      if (delta && threadIdx.x == 0) {
        acc_t sb = 0;
        for (int w = 0; w < kWarps; ++w) sb += red_b[w];
        atomicAdd(dbeta_acc + row, sb);
      }
    }
  }
  if (active)
    for (int64_t j = lane; j < dk; j += 32) ds0[bh * ss + j * dv + col] = dSc[j];
}

int64_t forward_smem_bytes(int64_t dk, int64_t acc_bytes) { return (kWarps + 2) * dk * acc_bytes; }
