// The CUDA backend's algorithm, written once over an executor `Exec` that either launches the
// kernels on a GPU (rnn_cuda.cu) or runs them thread by thread on the CPU (sim.h): which
// products and passes run, in what order, with which split-K and which recurrence tier.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace elman {
namespace cuda {

// What the plan needs to know about the device.
struct DeviceProps {
  int sm_count = 1;
  int64_t smem_per_block = 48 * 1024;  // opt-in maximum of dynamic shared memory per block
  bool cooperative = false;            // cooperative launches (grid-wide barriers) supported
};

// Split-K for a product of M x N outputs over K terms: a function of the shape alone, never of
// the device, so that a given shape always sums its terms in the same order. Few output tiles
// and a long K get up to 64 slices of at least 512 terms each.
inline int64_t choose_splits(int64_t M, int64_t N, int64_t K, int64_t* kchunk) {
  const int64_t tiles = ((M + kBM - 1) / kBM) * ((N + kBN - 1) / kBN);
  int64_t s = 1;
  if (K > 1024 && tiles < 128) {
    s = (K + 511) / 512;
    const int64_t cap = 256 / tiles > 1 ? 256 / tiles : 1;
    if (s > cap) s = cap;
    if (s > 64) s = 64;
  }
  int64_t chunk = (K + s - 1) / s;
  chunk = (chunk + kBK - 1) / kBK * kBK;
  if (chunk < kBK) chunk = kBK;
  *kchunk = chunk;
  return (K + chunk - 1) / chunk > 0 ? (K + chunk - 1) / chunk : 1;
}

// The recurrence tier and its launch shape.
//   1: one block holds all of W_hh in shared memory (blocks split the batch), block barriers.
//   2: W_hh split by rows over a cooperative grid with every batch row in each block, one
//      grid-wide barrier per step (needs every block resident: at most one block per SM).
//   3: one tiled product with the fused step epilogue per step, the steps chained in a graph.
struct RecurrencePlan {
  int tier = 3;
  PersistentPlan p;
  int64_t grid_x = 1, grid_y = 1;
  size_t smem_bytes = 0;
};

inline int64_t odd_stride(int64_t H) { return H | 1; }

template <typename T>
RecurrencePlan plan_recurrence(int64_t H, int64_t B, const DeviceProps& d, int forced_tier) {
  const int64_t cap = d.smem_per_block / int64_t(sizeof(T));  // shared memory, in elements
  const int64_t ldw = odd_stride(H);
  RecurrencePlan r;
  // Tier 1: the whole matrix plus at least one state row.
  if ((forced_tier == 0 || forced_tier == 1) && H * ldw + H <= cap) {
    const int64_t fit = (cap - H * ldw) / H;
    int64_t nb = (B + d.sm_count - 1) / d.sm_count;  // spread the batch over the SMs
    if (nb > fit) nb = fit;
    if (nb < 1) nb = 1;
    r.tier = 1;
    r.p = PersistentPlan{H, nb, ldw, false};
    r.grid_x = 1;
    r.grid_y = (B + nb - 1) / nb;
  } else if ((forced_tier == 0 || forced_tier == 2) && d.cooperative && B * H + ldw <= cap) {
    // Tier 2: enough rows per block that the grid fits on the SMs, and no more than fit.
    const int64_t max_rows = (cap - B * H) / ldw;
    int64_t rows = (H + d.sm_count - 1) / d.sm_count;
    if (rows < 1) rows = 1;
    if (rows <= max_rows) {
      r.tier = 2;
      r.p = PersistentPlan{rows, B, ldw, true};
      r.grid_x = (H + rows - 1) / rows;
      r.grid_y = 1;
    }
  }
  if (r.tier == 3 && forced_tier != 0 && forced_tier != 3)
    throw std::invalid_argument("recurrence tier " + std::to_string(forced_tier) +
                                " does not fit this device for H = " + std::to_string(H) +
                                ", B = " + std::to_string(B));
  if (r.tier != 3) r.smem_bytes = size_t(persistent_smem_elems(r.p, H)) * sizeof(T);
  return r;
}

template <typename T>
GemmArgs<T> product(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, bool trans_a,
                    const T* Bm, int64_t ldb, bool trans_b, T* C, int64_t ldc, T beta) {
  GemmArgs<T> g;
  g.M = M, g.N = N, g.K = K;
  g.A = A, g.lda = lda, g.trans_a = trans_a;
  g.Bm = Bm, g.ldb = ldb, g.trans_b = trans_b;
  g.C = C, g.ldc = ldc, g.beta = beta;
  g.splits = choose_splits(M, N, K, &g.kchunk);
  return g;
}

// The per-step products of tier 3, in processing order (forward) or reverse processing order
// (backward). Step s reads the state (or dz) that step s - 1 (s + 1) wrote.
template <typename T>
std::vector<GemmArgs<T>> tier3_steps(const StepArgs<T>& st, bool backward) {
  const RnnShape& sh = st.shape;
  std::vector<GemmArgs<T>> steps;
  for (int64_t i = 0; i < sh.T; ++i) {
    const int64_t s = backward ? sh.T - 1 - i : i, t = sh.time_of(s);
    GemmArgs<T> g;
    g.M = sh.B, g.N = sh.H, g.K = sh.H;
    g.kchunk = sh.H;  // never split: a step's sums keep the lane order of tiers 1 and 2
    g.step = st;
    g.step_t = t;
    g.epilogue = backward ? Epilogue::bwd_step : Epilogue::fwd_step;
    g.Bm = st.W_hh;
    g.ldb = sh.H;
    if (!backward) {
      g.trans_b = true;  // B(k, j) = W_hh[j, k]
      g.alt_a = st.h0, g.alt_ld = sh.H;
      if (s > 0) {
        const int64_t tp = sh.time_of(s - 1);
        g.A = st.out + tp * sh.B * st.ld_out, g.lda = st.ld_out;
        g.mask_m = RowMask{sh.lengths, sh.B, tp};
      }
    } else if (s + 1 < sh.T) {
      const int64_t tn = sh.time_of(s + 1);
      g.A = st.dz + tn * sh.B * sh.H, g.lda = sh.H;
      g.mask_m = RowMask{sh.lengths, sh.B, tn};
    }
    steps.push_back(g);
  }
  return steps;
}

template <typename T, typename Exec>
void run_recurrence(Exec& ex, const StepArgs<T>& st, bool backward, const DeviceProps& d, int tier) {
  const RecurrencePlan plan = plan_recurrence<T>(st.shape.H, st.shape.B, d, tier);
  if (plan.tier == 3)
    ex.gemm_chain(tier3_steps(st, backward));
  else
    ex.persistent(st, plan, backward);
}

// Forward of one layer and direction; every pointer is on the device (the simulator: host).
template <typename T, typename Exec>
void forward(Exec& ex, const RnnForwardArgs<T>& a, const DeviceProps& d, int tier) {
  const RnnShape& sh = a.shape;
  if (sh.T == 0 || sh.B == 0) return;
  // out = x W_ih^T for every (t, b) row at once; the steps add the rest in place.
  ex.gemm(product<T>(sh.T * sh.B, sh.H, sh.I, a.x, sh.I, false, a.w.W_ih, sh.I, true, a.out,
                     a.ld_out, T(0)));
  StepArgs<T> st;
  st.shape = sh;
  st.W_hh = a.w.W_hh;
  st.h0 = a.h0;
  st.out = a.out;
  st.ld_out = a.ld_out;
  if (a.w.b_ih || a.w.b_hh) {
    T* bias = ex.template alloc<T>(sh.H);
    ex.bias_sum(a.w.b_ih, a.w.b_hh, bias, sh.H);
    st.bias = bias;
  }
  run_recurrence(ex, st, false, d, tier);
  ex.h_n(st, a.h_n);
}

// BPTT through one forward call.
template <typename T, typename Exec>
void backward(Exec& ex, const RnnBackwardArgs<T>& a, const DeviceProps& d, int tier) {
  const RnnShape& sh = a.shape;
  if (sh.T == 0 || sh.B == 0) return;
  const int64_t rows = sh.T * sh.B, H = sh.H, I = sh.I;
  StepArgs<T> st;
  st.shape = sh;
  st.W_hh = a.w.W_hh;
  st.h0 = a.h0;
  st.out = const_cast<T*>(a.out);  // the backward steps only read out
  st.ld_out = a.ld_out;
  st.grad_out = a.grad_out;
  st.ld_grad_out = a.ld_grad_out;
  st.grad_h_n = a.grad_h_n;
  st.dz = a.dz ? a.dz : ex.template alloc<T>(rows * H);
  if (a.grad_norms) st.dh = ex.template alloc<T>(rows * H);
  run_recurrence(ex, st, true, d, tier);

  if (a.grad_norms) ex.grad_norms(st, a.grad_norms);
  if (a.db_ih || a.db_hh) ex.bias_grad(st, a.db_ih, a.db_hh);
  if (a.grad_h0) {  // grad_h0 = dz at each sequence's first processed step, times W_hh
    T* first = ex.template alloc<T>(sh.B * H);
    ex.gather_first_dz(st, first);
    ex.gemm(product<T>(sh.B, H, H, first, H, false, a.w.W_hh, H, false, a.grad_h0, H, T(0)));
  }
  const RowMask all_rows{sh.lengths, sh.B, -1};
  // dW_ih += dz^T x and dW_hh += dz^T prev over the valid rows only.
  GemmArgs<T> g = product<T>(H, I, rows, st.dz, H, true, a.x, I, false, a.dW_ih, I, T(1));
  g.mask_k = all_rows;
  ex.gemm(g);
  T* prev = ex.template alloc<T>(rows * H);
  ex.gather_prev(st, prev);
  g = product<T>(H, H, rows, st.dz, H, true, prev, H, false, a.dW_hh, H, T(1));
  g.mask_k = all_rows;
  ex.gemm(g);
  if (a.grad_x) {  // grad_x = dz W_ih; rows past a length get 0 (or nothing added)
    g = product<T>(rows, I, H, st.dz, H, false, a.w.W_ih, I, false, a.grad_x, I,
                   a.accumulate_grad_x ? T(1) : T(0));
    g.mask_m = all_rows;
    ex.gemm(g);
  }
}

}  // namespace cuda
}  // namespace elman
