// The bodies of every CUDA kernel of elman, written once as block programs over a `Ctx` (thread
// and block indices, shared memory, barriers). nvcc compiles them as device code (rnn_cuda.cu);
// g++ compiles the same source for the CPU simulator (sim.h), which runs them thread by thread.
#pragma once
#include <cstdint>

#include "../rnn.h"
#include "../rnn_math.h"

#if defined(__CUDACC__)
#define ELMAN_BODY __device__ __forceinline__
#define ELMAN_UNROLL _Pragma("unroll")
#define ELMAN_INDEX __host__ __device__ inline  // index helpers the host-side plan uses too
#else
#define ELMAN_INDEX inline
#define ELMAN_UNROLL
#include <cmath>
#define ELMAN_BODY inline
#endif

namespace elman {
namespace cuda {

// ------------------------------------------------------------------------------------ sizes
// Every kernel runs blocks of kThreads threads. The tiled product computes a kBM x kBN tile of
// C per block, kTM x kTN outputs per thread, walking K in steps of kBK.
constexpr int kThreads = 256;
constexpr int kBM = 64, kBN = 64, kBK = 16, kTM = 4, kTN = 4;
static_assert(kBM / kTM * (kBN / kTN) == kThreads, "one thread per kTM x kTN micro-tile");
// Every dot product keeps kLanes partial sums, lane k % kLanes, combined as (p0+p1)+(p2+p3).
// The order depends on k alone, so tiling K (in steps of kBK, a multiple of kLanes) and the
// choice of recurrence tier never change a result's bits.
constexpr int kLanes = 4;
static_assert(kBK % kLanes == 0, "K tiles must keep each lane's k in order");

// --------------------------------------------------------------------------------- scalar math
// Explicit fused multiply-add: the build passes --fmad=false, so every rounding in a kernel is
// spelled out here and the CPU simulator (std::fma) rounds exactly as the GPU does.
ELMAN_BODY float fma_(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
ELMAN_BODY double fma_(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
ELMAN_BODY float tanh_(float z) {
#if defined(__CUDA_ARCH__)
  return tanhf(z);  // the accurate libdevice tanhf: the build never uses -use_fast_math
#else
  return std::tanh(z);
#endif
}
ELMAN_BODY double tanh_(double z) {
#if defined(__CUDA_ARCH__)
  return ::tanh(z);
#else
  return std::tanh(z);
#endif
}
template <typename T>
ELMAN_BODY T activate(Activation act, T z) {
  return act == Activation::tanh ? tanh_(z) : math::relu(z);
}
template <typename T>
ELMAN_BODY T activation_dz(Activation act, T h, T dh) {
  return act == Activation::tanh ? math::tanh_dz(h, dh) : math::relu_dz(h, dh);
}
template <typename T>
ELMAN_BODY T combine_lanes(const T* p) {
  return (p[0] + p[1]) + (p[2] + p[3]);
}

// ------------------------------------------------------------------------------ sequence rows
// Which rows of a product are valid steps. Rows are (t, b) pairs: row r = t * B + b when
// t < 0 ("all steps"), or row r = b at the fixed step t. nullptr lengths: every row is valid.
struct RowMask {
  const int64_t* lengths = nullptr;  // [B] on the device
  int64_t B = 1;
  int64_t t = -1;
};
ELMAN_BODY bool row_valid(const RowMask& m, int64_t r) {
  if (!m.lengths) return true;
  const int64_t t = m.t >= 0 ? m.t : r / m.B, b = m.t >= 0 ? r : r % m.B;
  return t < m.lengths[b];
}

// ---------------------------------------------------------------------------- tiled product
// C[M, N] (op) = alpha * op(A) op(B) + beta * C, with op(X)[r, c] = trans ? X[c * ld + r]
// : X[r * ld + c]. Rows of the K dimension outside `mask_k` are read as 0 in both A and B (so
// padded steps never enter a sum, not even as 0 * inf); rows of A outside `mask_m` are read
// from `alt_a` (row-major [M, K], ld alt_ld) or as 0; A == nullptr: every row reads alt_a or 0.
//
// Split-K: `splits` slices of K, each `kchunk` long (a multiple of kBK), fixed by the shape
// alone (choose_splits in plan.h). A slice writes its partial sums to `partial` [splits, M, N];
// the finish kernel adds the slices in order 0, 1, ... and applies alpha, beta and the store
// rule. With one slice the block applies the epilogue itself.
enum class Epilogue : int32_t {
  store = 0,     // C = alpha * acc + beta * C; rows outside mask_m: 0 when beta == 0, kept otherwise
  fwd_step = 1,  // one forward step of the recurrence (StepArgs), acc = W_hh h_{t-1}
  bwd_step = 2,  // one backward step (StepArgs), acc = dz_{next} W_hh
};

// ------------------------------------------------------------------------------ recurrence
// Everything one step of the recurrence needs, shared by the three tiers. The forward writes
// h_t into out (which holds x_t W_ih^T on entry); the backward writes dz (and dh for the norms).
template <typename T>
struct StepArgs {
  RnnShape shape;        // lengths: a device pointer
  const T* W_hh = nullptr;  // [H, H]
  const T* bias = nullptr;  // [H]: b_ih + b_hh, or nullptr
  const T* h0 = nullptr;    // [B, H] or nullptr
  T* out = nullptr;         // [T, B, H] row stride ld_out
  int64_t ld_out = 0;
  const T* grad_out = nullptr;  // [T, B, H] row stride ld_grad_out, or nullptr
  int64_t ld_grad_out = 0;
  const T* grad_h_n = nullptr;  // [B, H] or nullptr
  T* dz = nullptr;              // [T, B, H]
  T* dh = nullptr;              // [T, B, H] dL/dh_t for the norms, or nullptr
};

template <typename T>
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0;
  bool trans_a = false;
  const T* Bm = nullptr;
  int64_t ldb = 0;
  bool trans_b = false;
  RowMask mask_k, mask_m;
  const T* alt_a = nullptr;
  int64_t alt_ld = 0;
  int64_t splits = 1, kchunk = 0;
  T* partial = nullptr;  // [splits, M, N] when splits > 1
  Epilogue epilogue = Epilogue::store;
  T* C = nullptr;
  int64_t ldc = 0;
  T alpha = T(1), beta = T(0);
  StepArgs<T> step;                   // epilogues fwd_step / bwd_step
  int64_t step_t = 0;                 // the step's time index
};

template <typename T>
struct GemmSmem {
  T As[kBK][kBM];  // As[kk][m] = op(A)[tile_m + m, k0 + kk]
  T Bs[kBK][kBN];  // Bs[kk][n] = op(B)[k0 + kk, tile_n + n]
};

template <typename T>
ELMAN_BODY T load_a(const GemmArgs<T>& a, int64_t m, int64_t k) {
  if (m >= a.M || k >= a.K || !row_valid(a.mask_k, k)) return T(0);
  if (!a.A || !row_valid(a.mask_m, m)) return a.alt_a ? a.alt_a[m * a.alt_ld + k] : T(0);
  return a.trans_a ? a.A[k * a.lda + m] : a.A[m * a.lda + k];
}
template <typename T>
ELMAN_BODY T load_b(const GemmArgs<T>& a, int64_t k, int64_t n) {
  if (n >= a.N || k >= a.K || !row_valid(a.mask_k, k)) return T(0);
  return a.trans_b ? a.Bm[n * a.ldb + k] : a.Bm[k * a.ldb + n];
}

// Phase 1 of a K step: the block stages one kBK slice of its A and B tiles in shared memory.
// Consecutive threads read consecutive addresses of whichever operand layout is given.
template <typename T>
ELMAN_BODY void gemm_load_phase(const GemmArgs<T>& a, int64_t m0, int64_t n0, int64_t k0, int tid,
                                GemmSmem<T>& s) {
  for (int e = tid; e < kBK * kBM; e += kThreads) {
    const int kk = a.trans_a ? e / kBM : e % kBK, m = a.trans_a ? e % kBM : e / kBK;
    s.As[kk][m] = load_a(a, m0 + m, k0 + kk);
  }
  for (int e = tid; e < kBK * kBN; e += kThreads) {
    const int kk = a.trans_b ? e % kBK : e / kBN, n = a.trans_b ? e / kBK : e % kBN;
    s.Bs[kk][n] = load_b(a, k0 + kk, n0 + n);
  }
}

// Phase 2 of a K step: each thread updates its kTM x kTN outputs (rows ty + 16 i, columns
// tx + 16 j: a warp reads two broadcast rows of As and 16 consecutive words of Bs).
template <typename T>
ELMAN_BODY void gemm_mma_phase(const GemmSmem<T>& s, int tid, T (&acc)[kTM][kTN][kLanes]) {
  const int ty = tid / (kBN / kTN), tx = tid % (kBN / kTN);
ELMAN_UNROLL
  for (int kk = 0; kk < kBK; ++kk) {
    T av[kTM], bv[kTN];
ELMAN_UNROLL
    for (int i = 0; i < kTM; ++i) av[i] = s.As[kk][ty + i * (kBM / kTM)];
ELMAN_UNROLL
    for (int j = 0; j < kTN; ++j) bv[j] = s.Bs[kk][tx + j * (kBN / kTN)];
ELMAN_UNROLL
    for (int i = 0; i < kTM; ++i)
ELMAN_UNROLL
      for (int j = 0; j < kTN; ++j) acc[i][j][kk % kLanes] = fma_(av[i], bv[j], acc[i][j][kk % kLanes]);
  }
}

template <typename T>
ELMAN_BODY void step_epilogue(const GemmArgs<T>& a, int64_t row, int64_t col, T dot);

// The store rule for one element of C given the finished sum of products.
template <typename T>
ELMAN_BODY void store_element(const GemmArgs<T>& a, int64_t m, int64_t n, T sum) {
  T* c = a.C + m * a.ldc + n;
  if (!row_valid(a.mask_m, m)) {
    if (a.beta == T(0)) *c = T(0);
    return;
  }
  // beta == 0 never reads C (it may hold garbage, even NaN).
  *c = a.beta == T(0) ? a.alpha * sum : fma_(a.alpha, sum, a.beta * *c);
}

// Phase 3: the block's results leave, through the epilogue or as split-K partial sums.
template <typename T>
ELMAN_BODY void gemm_epilogue_phase(const GemmArgs<T>& a, int64_t m0, int64_t n0, int64_t split,
                                    int tid, const T (&acc)[kTM][kTN][kLanes]) {
  const int ty = tid / (kBN / kTN), tx = tid % (kBN / kTN);
  // Fully unrolled, here and wherever acc is indexed, so that acc lives in registers.
ELMAN_UNROLL
  for (int i = 0; i < kTM; ++i)
ELMAN_UNROLL
    for (int j = 0; j < kTN; ++j) {
      const int64_t m = m0 + ty + i * (kBM / kTM), n = n0 + tx + j * (kBN / kTN);
      if (m >= a.M || n >= a.N) continue;
      const T sum = combine_lanes(acc[i][j]);
      if (a.splits > 1)
        a.partial[(split * a.M + m) * a.N + n] = sum;
      else if (a.epilogue == Epilogue::store)
        store_element(a, m, n, sum);
      else
        step_epilogue(a, m, n, sum);
    }
}

// The whole product block: grid (ceil(M / kBM), ceil(N / kBN), splits).
template <typename T, typename Ctx>
ELMAN_BODY void gemm_block(const GemmArgs<T>& a, Ctx& c) {
  GemmSmem<T>& s = *reinterpret_cast<GemmSmem<T>*>(c.smem());
  const int64_t m0 = int64_t(c.block_x()) * kBM, n0 = int64_t(c.block_y()) * kBN, split = c.block_z();
  const int64_t k_begin = split * a.kchunk;
  const int64_t k_end = k_begin + a.kchunk < a.K ? k_begin + a.kchunk : a.K;
  T acc[kTM][kTN][kLanes];
ELMAN_UNROLL
  for (int i = 0; i < kTM; ++i)
ELMAN_UNROLL
    for (int j = 0; j < kTN; ++j)
ELMAN_UNROLL
      for (int l = 0; l < kLanes; ++l) acc[i][j][l] = T(0);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    gemm_load_phase(a, m0, n0, k0, c.tid(), s);
    c.sync();
    gemm_mma_phase(s, c.tid(), acc);
    c.sync();
  }
  gemm_epilogue_phase(a, m0, n0, split, c.tid(), acc);
}

// Split-K finish, one thread per element of C: the slices added in order 0, 1, ...
template <typename T>
ELMAN_BODY void splitk_finish_element(const GemmArgs<T>& a, int64_t idx) {
  const int64_t mn = a.M * a.N;
  if (idx >= mn) return;
  T sum = a.partial[idx];
  for (int64_t s = 1; s < a.splits; ++s) sum += a.partial[s * mn + idx];
  store_element(a, idx / a.N, idx % a.N, sum);
}

// Steps and sequence lengths: RnnShape's helpers (rnn.h). The step before time t in processing
// order is step_of(t) - 1.

// Element k of the state the forward step at time t starts from: the previous processed step's
// output when that step is valid for b, else h0 (or 0).
template <typename T>
ELMAN_BODY T prev_state(const StepArgs<T>& a, int64_t t, int64_t b, int64_t k) {
  const RnnShape& sh = a.shape;
  const int64_t s = sh.step_of(t);
  if (s > 0) {
    const int64_t tp = sh.time_of(s - 1);
    if (sh.is_valid(tp, b)) return a.out[(tp * sh.B + b) * a.ld_out + k];
  }
  return a.h0 ? a.h0[b * sh.H + k] : T(0);
}
// Whether the step processed after time t is valid for b (its dz feeds this step's dh).
ELMAN_BODY bool next_valid(const RnnShape& sh, int64_t t, int64_t b) {
  const int64_t s = sh.step_of(t);
  return s + 1 < sh.T && sh.is_valid(sh.time_of(s + 1), b);
}
// Element j of dz at the step processed after time t, or 0 when that step is not valid for b.
template <typename T>
ELMAN_BODY T next_dz(const StepArgs<T>& a, int64_t t, int64_t b, int64_t j) {
  const RnnShape& sh = a.shape;
  if (!next_valid(sh, t, b)) return T(0);
  return a.dz[(sh.time_of(sh.step_of(t) + 1) * sh.B + b) * sh.H + j];
}

// Whether sequence b has a state before the step at time t (h0, or an earlier valid step). A
// missing state contributes exactly 0, never 0 * W_hh (the CPU kernels and the reference agree).
template <typename T>
ELMAN_BODY bool has_state(const StepArgs<T>& a, int64_t t, int64_t b) {
  const RnnShape& sh = a.shape;
  const int64_t s = sh.step_of(t);
  return a.h0 != nullptr || (s > 0 && sh.is_valid(sh.time_of(s - 1), b));
}

// Forward epilogue: h_t[b, j] = f(x W_ih^T + bias + W_hh h_{t-1}), or 0 at an invalid step.
template <typename T>
ELMAN_BODY void fwd_epilogue(const StepArgs<T>& a, int64_t t, int64_t b, int64_t j, T dot) {
  T* o = a.out + (t * a.shape.B + b) * a.ld_out + j;
  if (!a.shape.is_valid(t, b)) {
    *o = T(0);
    return;
  }
  const T pre = a.bias ? *o + a.bias[j] : *o;
  *o = activate(a.shape.act, pre + (has_state(a, t, b) ? dot : T(0)));
}
// Backward epilogue: dh = grad_out + (dz_next W_hh, or grad_h_n after the last valid step),
// dz = f'(h) dh; both 0 at an invalid step.
template <typename T>
ELMAN_BODY void bwd_epilogue(const StepArgs<T>& a, int64_t t, int64_t b, int64_t k, T dot) {
  const RnnShape& sh = a.shape;
  const int64_t r = (t * sh.B + b) * sh.H + k;
  if (!sh.is_valid(t, b)) {
    a.dz[r] = T(0);
    if (a.dh) a.dh[r] = T(0);
    return;
  }
  const T g = next_valid(sh, t, b) ? dot : (a.grad_h_n ? a.grad_h_n[b * sh.H + k] : T(0));
  const T dh = a.grad_out ? a.grad_out[(t * sh.B + b) * a.ld_grad_out + k] + g : g;
  if (a.dh) a.dh[r] = dh;
  a.dz[r] = activation_dz(sh.act, a.out[(t * sh.B + b) * a.ld_out + k], dh);
}

template <typename T>
ELMAN_BODY void step_epilogue(const GemmArgs<T>& a, int64_t row, int64_t col, T dot) {
  if (a.epilogue == Epilogue::fwd_step)
    fwd_epilogue(a.step, a.step_t, row, col, dot);
  else
    bwd_epilogue(a.step, a.step_t, row, col, dot);
}

// Tiers 1 and 2: a persistent block keeps `rows` rows of the recurrent matrix in shared memory
// for the whole sequence (forward: rows j of W_hh; backward: rows k of W_hh^T) and computes
// those outputs for the batch rows [b0, b0 + nb). The grid is (row blocks, batch blocks);
// with one row block (tier 1) a block-level barrier separates the steps, otherwise (tier 2)
// the grid-wide barrier of a cooperative launch does.
struct PersistentPlan {
  int64_t rows = 0;   // rows of the matrix per block (the last block may have fewer)
  int64_t nb = 0;     // batch rows per block
  int64_t ldw = 0;    // shared-memory row stride of the matrix slice (odd: no bank conflicts)
  bool grid_sync = false;
};
ELMAN_INDEX int64_t persistent_smem_elems(const PersistentPlan& p, int64_t H) {
  return p.rows * p.ldw + p.nb * H;
}

// dot(w[0:H], v[0:H]) in the lane order of the tiled product.
template <typename T>
ELMAN_BODY T dot_lanes(const T* w, const T* v, int64_t H) {
  T p[kLanes] = {T(0), T(0), T(0), T(0)};
  int64_t k = 0;
  for (; k + kLanes <= H; k += kLanes)
ELMAN_UNROLL
    for (int l = 0; l < kLanes; ++l) p[l] = fma_(w[k + l], v[k + l], p[l]);
ELMAN_UNROLL
  for (int l = 0; l < kLanes; ++l)
    if (k + l < H) p[l] = fma_(w[k + l], v[k + l], p[l]);
  return combine_lanes(p);
}

template <typename T, typename Ctx>
ELMAN_BODY void persistent_block(const StepArgs<T>& a, const PersistentPlan& p, bool backward,
                                 Ctx& c) {
  const RnnShape& sh = a.shape;
  const int64_t H = sh.H, B = sh.B;
  T* Wsh = reinterpret_cast<T*>(c.smem());  // [rows, ldw]
  T* Vsh = Wsh + p.rows * p.ldw;            // [nb, H]: h_{t-1} (forward) or dz_next (backward)
  const int64_t j0 = int64_t(c.block_x()) * p.rows, b0 = int64_t(c.block_y()) * p.nb;
  const int64_t jn = H - j0 < p.rows ? H - j0 : p.rows, bn = B - b0 < p.nb ? B - b0 : p.nb;
  const int tid = c.tid();
  // Load the matrix slice once: forward row j of W_hh, backward row k of W_hh^T (column k).
  for (int64_t e = tid; e < jn * H; e += kThreads) {
    const int64_t r = e / H, k = e % H;
    Wsh[r * p.ldw + k] = backward ? a.W_hh[k * H + j0 + r] : a.W_hh[(j0 + r) * H + k];
  }
  for (int64_t s = 0; s < sh.T; ++s) {
    const int64_t t = sh.time_of(backward ? sh.T - 1 - s : s);
    for (int64_t e = tid; e < bn * H; e += kThreads) {
      const int64_t bb = e / H, k = e % H;
      Vsh[bb * H + k] = backward ? next_dz(a, t, b0 + bb, k) : prev_state(a, t, b0 + bb, k);
    }
    c.sync();
    for (int64_t o = tid; o < bn * jn; o += kThreads) {
      const int64_t bb = o / jn, r = o % jn;
      const T dot = dot_lanes(Wsh + r * p.ldw, Vsh + bb * H, H);
      if (backward)
        bwd_epilogue(a, t, b0 + bb, j0 + r, dot);
      else
        fwd_epilogue(a, t, b0 + bb, j0 + r, dot);
    }
    if (p.grid_sync)
      c.grid_sync();
    else
      c.sync();
  }
}

// ------------------------------------------------------------------- small elementwise passes
// One thread per element (index idx); each pass is a pure function of its inputs.

// bias = b_ih + b_hh (either may be absent), added once per element in the forward epilogue.
template <typename T>
ELMAN_BODY void bias_sum_element(const T* b_ih, const T* b_hh, T* bias, int64_t H, int64_t j) {
  if (j >= H) return;
  bias[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
}

// h_n[b] = out at each sequence's last processed valid step.
template <typename T>
ELMAN_BODY void h_n_element(const StepArgs<T>& a, T* h_n, int64_t idx) {
  const RnnShape& sh = a.shape;
  if (idx >= sh.B * sh.H) return;
  const int64_t b = idx / sh.H, k = idx % sh.H;
  h_n[idx] = a.out[(sh.last_step_time(b) * sh.B + b) * a.ld_out + k];
}

// prev[t, b, :] = the state the step at (t, b) started from (0 at invalid steps).
template <typename T>
ELMAN_BODY void gather_prev_element(const StepArgs<T>& a, T* prev, int64_t idx) {
  const RnnShape& sh = a.shape;
  if (idx >= sh.T * sh.B * sh.H) return;
  const int64_t k = idx % sh.H, tb = idx / sh.H, b = tb % sh.B, t = tb / sh.B;
  prev[idx] = sh.is_valid(t, b) ? prev_state(a, t, b, k) : T(0);
}

// first[b, :] = dz at each sequence's first processed step (its gradient flows into h0).
template <typename T>
ELMAN_BODY void gather_first_dz_element(const StepArgs<T>& a, T* first, int64_t idx) {
  const RnnShape& sh = a.shape;
  if (idx >= sh.B * sh.H) return;
  const int64_t b = idx / sh.H, k = idx % sh.H;
  first[idx] = a.dz[(sh.first_step_time(b) * sh.B + b) * sh.H + k];
}

// Bias gradients, one thread per column j: the valid rows summed in order, in double.
template <typename T>
ELMAN_BODY void bias_grad_element(const StepArgs<T>& a, T* db_ih, T* db_hh, int64_t j) {
  const RnnShape& sh = a.shape;
  if (j >= sh.H) return;
  double acc = 0.0;
  for (int64_t t = 0; t < sh.T; ++t)
    for (int64_t b = 0; b < sh.B; ++b)
      if (sh.is_valid(t, b)) acc += double(a.dz[(t * sh.B + b) * sh.H + j]);
  if (db_ih) db_ih[j] += T(acc);
  if (db_hh) db_hh[j] += T(acc);
}

// ||dh_t||_2 over the valid (b, j), one block per t: each thread sums a fixed strided subset in
// order, then a fixed tree in shared memory (double throughout).
template <typename T, typename Ctx>
ELMAN_BODY void grad_norm_block(const StepArgs<T>& a, double* norms, Ctx& c) {
  const RnnShape& sh = a.shape;
  const int64_t t = c.block_x();
  double* red = reinterpret_cast<double*>(c.smem());
  const int tid = c.tid();
  double acc = 0.0;
  for (int64_t e = tid; e < sh.B * sh.H; e += kThreads) {
    const int64_t b = e / sh.H;
    if (!sh.is_valid(t, b)) continue;
    const double v = double(a.dh[t * sh.B * sh.H + e]);
    acc += v * v;
  }
  red[tid] = acc;
  c.sync();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) red[tid] += red[tid + stride];
    c.sync();
  }
  if (tid == 0) norms[t] = sqrt(red[0]);
}

}  // namespace cuda
}  // namespace elman
