// CPU backend: fused forward and BPTT of one layer in one direction (the contract in rnn.h).
// One call runs every time step: the input projection and the post-loop weight gradients are
// single large products (BLAS), the recurrence is a loop over steps with the recurrent product,
// bias and activation (or f' multiply) fused per row, and no allocation inside the loop.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../rnn.h"
#include "../rnn_math.h"
#include "blas.h"

namespace elman {
namespace {

// Time index of processing step s.
inline int64_t time_of(const RnnShape& sh, int64_t s) { return sh.reverse ? sh.T - 1 - s : s; }
inline int64_t length_of(const RnnShape& sh, int64_t b) { return sh.lengths ? sh.lengths[b] : sh.T; }
inline bool is_valid(const RnnShape& sh, int64_t t, int64_t b) { return t < length_of(sh, b); }
inline bool all_full(const RnnShape& sh) {
  if (!sh.lengths) return true;
  for (int64_t b = 0; b < sh.B; ++b)
    if (sh.lengths[b] != sh.T) return false;
  return true;
}
// Time index of a sequence's first and last valid step in processing order.
inline int64_t first_step_time(const RnnShape& sh, int64_t b) { return sh.reverse ? length_of(sh, b) - 1 : 0; }
inline int64_t last_step_time(const RnnShape& sh, int64_t b) { return sh.reverse ? 0 : length_of(sh, b) - 1; }

template <typename T>
inline T activate(Activation act, T z) {
  return act == Activation::tanh ? std::tanh(z) : math::relu(z);
}
template <typename T>
inline T activation_dz(Activation act, T h, T dh) {
  return act == Activation::tanh ? math::tanh_dz(h, dh) : math::relu_dz(h, dh);
}

// acc[0:n] += v * w[0:n]
template <typename T>
inline void axpy(int64_t n, T v, const T* w, T* acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] += v * w[j];
}

}  // namespace

template <typename T>
void rnn_forward_cpu(const RnnForwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  const int64_t nT = sh.T, B = sh.B, I = sh.I, H = sh.H, ld = a.ld_out;
  if (nT == 0 || B == 0) return;

  // Input projection for every (t, b) at once, written straight into out: out = x W_ih^T.
  cpu::gemm<T>(false, true, nT * B, H, I, T(1), a.x, I, a.w.W_ih, I, T(0), a.out, ld);

  std::vector<T> bias(H, T(0));  // b_ih + b_hh, added once per row in the step
  for (int64_t j = 0; j < H; ++j)
    bias[j] = (a.w.b_ih ? a.w.b_ih[j] : T(0)) + (a.w.b_hh ? a.w.b_hh[j] : T(0));
  // W_hh^T, so that the step streams contiguous rows: z[j] += h[k] * W_hh^T[k, j].
  std::vector<T> Wt(H * H);
  for (int64_t j = 0; j < H; ++j)
    for (int64_t k = 0; k < H; ++k) Wt[k * H + j] = a.w.W_hh[j * H + k];
  std::vector<T> z(H);

  for (int64_t s = 0; s < nT; ++s) {
    const int64_t t = time_of(sh, s);
    for (int64_t b = 0; b < B; ++b) {
      T* o = a.out + (t * B + b) * ld;
      if (!is_valid(sh, t, b)) {
        std::fill(o, o + H, T(0));
        continue;
      }
      const T* prev = nullptr;  // h_{t-1}: the previous valid step's output, else h0
      if (s > 0 && is_valid(sh, time_of(sh, s - 1), b))
        prev = a.out + (time_of(sh, s - 1) * B + b) * ld;
      else if (a.h0)
        prev = a.h0 + b * H;
      for (int64_t j = 0; j < H; ++j) z[j] = o[j] + bias[j];
      if (prev)
        for (int64_t k = 0; k < H; ++k) axpy(H, prev[k], Wt.data() + k * H, z.data());
      for (int64_t j = 0; j < H; ++j) o[j] = activate(sh.act, z[j]);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const T* last = a.out + (last_step_time(sh, b) * B + b) * ld;
    std::copy(last, last + H, a.h_n + b * H);
  }
}

template <typename T>
void rnn_backward_cpu(const RnnBackwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  const int64_t nT = sh.T, B = sh.B, I = sh.I, H = sh.H, ld = a.ld_out;
  if (nT == 0 || B == 0) return;
  T* dz = a.dz;  // [T, B, H], indexed by time
  std::vector<T> g(H);

  // BPTT: walk the steps in reverse processing order.
  //   dh_t = grad_out_t + (dz of the next processed step) W_hh   (grad_h_n at the last step)
  //   dz_t = dh_t * f'(h_t)
  for (int64_t s = nT - 1; s >= 0; --s) {
    const int64_t t = time_of(sh, s);
    double sq = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      T* dzr = dz + (t * B + b) * H;
      if (!is_valid(sh, t, b)) {
        std::fill(dzr, dzr + H, T(0));
        continue;
      }
      if (s + 1 < nT && is_valid(sh, time_of(sh, s + 1), b)) {
        const T* dzn = dz + (time_of(sh, s + 1) * B + b) * H;
        std::fill(g.begin(), g.end(), T(0));
        for (int64_t j = 0; j < H; ++j) axpy(H, dzn[j], a.w.W_hh + j * H, g.data());
      } else if (a.grad_h_n) {
        std::copy(a.grad_h_n + b * H, a.grad_h_n + (b + 1) * H, g.begin());
      } else {
        std::fill(g.begin(), g.end(), T(0));
      }
      const T* go = a.grad_out ? a.grad_out + (t * B + b) * a.ld_grad_out : nullptr;
      const T* h = a.out + (t * B + b) * ld;
      for (int64_t j = 0; j < H; ++j) {
        const T dh = go ? go[j] + g[j] : g[j];
        sq += double(dh) * double(dh);
        dzr[j] = activation_dz(sh.act, h[j], dh);
      }
    }
    if (a.grad_norms) a.grad_norms[t] = std::sqrt(sq);
  }

  // grad_h0 = dz at each sequence's first processed step, times W_hh.
  if (a.grad_h0) {
    for (int64_t b = 0; b < B; ++b) {
      T* gh = a.grad_h0 + b * H;
      std::fill(gh, gh + H, T(0));
      const T* dzr = dz + (first_step_time(sh, b) * B + b) * H;
      for (int64_t j = 0; j < H; ++j) axpy(H, dzr[j], a.w.W_hh + j * H, gh);
    }
  }

  // Bias gradients: column sums of dz over valid rows (invalid rows hold exact zeros, but
  // they are skipped anyway so that a sum never reads a padded position). Summed in double.
  if (a.db_ih || a.db_hh) {
    std::vector<double> acc(H, 0.0);
    for (int64_t t = 0; t < nT; ++t)
      for (int64_t b = 0; b < B; ++b) {
        if (!is_valid(sh, t, b)) continue;
        const T* dzr = dz + (t * B + b) * H;
        for (int64_t j = 0; j < H; ++j) acc[j] += double(dzr[j]);
      }
    for (int64_t j = 0; j < H; ++j) {
      if (a.db_ih) a.db_ih[j] += T(acc[j]);
      if (a.db_hh) a.db_hh[j] += T(acc[j]);
    }
  }

  // Weight gradients and grad_x as large products after the loop. The previous state of the
  // step at time t is out at t-1 (forward) or t+1 (reverse), or h0 at the first step.
  const T beta_x = a.accumulate_grad_x ? T(1) : T(0);
  const int64_t prev_shift = sh.reverse ? B * ld : -B * ld;  // from a row of out to its predecessor
  if (all_full(sh)) {
    cpu::gemm<T>(true, false, H, I, nT * B, T(1), dz, H, a.x, I, T(1), a.dW_ih, I);
    if (nT > 1) {
      const T* dz_rec = sh.reverse ? dz : dz + B * H;  // steps whose predecessor is in out
      const T* prev = sh.reverse ? a.out + B * ld : a.out;
      cpu::gemm<T>(true, false, H, H, (nT - 1) * B, T(1), dz_rec, H, prev, ld, T(1), a.dW_hh, H);
    }
    if (a.h0) {
      const T* dz_first = dz + (sh.reverse ? (nT - 1) * B * H : 0);
      cpu::gemm<T>(true, false, H, H, B, T(1), dz_first, H, a.h0, H, T(1), a.dW_hh, H);
    }
    if (a.grad_x)
      cpu::gemm<T>(false, false, nT * B, I, H, T(1), dz, H, a.w.W_ih, I, beta_x, a.grad_x, I);
    return;
  }

  // Variable lengths: one product per sequence over its valid steps only (stride B rows), so
  // padded inputs and states are never multiplied, not even by zero (0 * inf would be NaN).
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = length_of(sh, b);
    cpu::gemm<T>(true, false, H, I, L, T(1), dz + b * H, B * H, a.x + b * I, B * I, T(1), a.dW_ih, I);
    if (L > 1) {
      // Steps t with a predecessor at valid time t -/+ 1: t in [1, L) forward, [0, L-1) reverse.
      const int64_t t0 = sh.reverse ? 0 : 1;
      const T* prev = a.out + (t0 * B + b) * ld + prev_shift;
      cpu::gemm<T>(true, false, H, H, L - 1, T(1), dz + (t0 * B + b) * H, B * H, prev, B * ld, T(1),
                   a.dW_hh, H);
    }
    if (a.grad_x) {
      T* gx = a.grad_x + b * I;
      cpu::gemm<T>(false, false, L, I, H, T(1), dz + b * H, B * H, a.w.W_ih, I, beta_x, gx, B * I);
      if (!a.accumulate_grad_x)
        for (int64_t t = L; t < nT; ++t) std::fill(gx + t * B * I, gx + t * B * I + I, T(0));
    }
  }
  if (a.h0) {  // the first step of every sequence: dz rows at first_step_time, gathered
    std::vector<T> first(B * H);
    for (int64_t b = 0; b < B; ++b) {
      const T* dzr = dz + (first_step_time(sh, b) * B + b) * H;
      std::copy(dzr, dzr + H, first.begin() + b * H);
    }
    cpu::gemm<T>(true, false, H, H, B, T(1), first.data(), H, a.h0, H, T(1), a.dW_hh, H);
  }
}

template void rnn_forward_cpu<float>(const RnnForwardArgs<float>&);
template void rnn_forward_cpu<double>(const RnnForwardArgs<double>&);
template void rnn_backward_cpu<float>(const RnnBackwardArgs<float>&);
template void rnn_backward_cpu<double>(const RnnBackwardArgs<double>&);

}  // namespace elman
