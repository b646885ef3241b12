// CPU backend: fused forward and BPTT of one layer in one direction (the contract in rnn.h).
// One call runs every time step inside one parallel region:
//   forward:  W_hh packed once, then per step the register-blocked recurrent product with bias
//             and activation fused (step_kernels.h); the input projection x W_ih^T either one
//             chunk of steps ahead of the recurrence (nn_rows on a packed W_ih^T) or as one BLAS
//             product over all T*B rows first, written straight into out;
//   backward: per step (reverse order) the product with W_hh fused with grad_out, f' and the
//             norm of dL/dh_t; dW_ih and dW_hh (tn_product) and dX (nn_rows) either one chunk
//             behind the recurrence or after the loop (dX then through the BLAS); grad_h0 and db.
// Work is split into parts: by batch rows when there are enough (no synchronisation between
// steps at all; one barrier per chunk when chunked), else by column panels with one spin
// barrier per step. Large products are split by rows of the result, each part single-threaded.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "../rnn.h"
#include "blas.h"
#include "kernels.h"
#include "threads.h"

namespace elman {
namespace {

using cpu::Panel;
using cpu::Team;

// ------------------------------------------------------------------------------------ helpers
inline int64_t time_of(const RnnShape& sh, int64_t s) { return sh.reverse ? sh.T - 1 - s : s; }
inline int64_t length_of(const RnnShape& sh, int64_t b) { return sh.lengths ? sh.lengths[b] : sh.T; }
inline bool is_valid(const RnnShape& sh, int64_t t, int64_t b) { return t < length_of(sh, b); }
inline int64_t first_step_time(const RnnShape& sh, int64_t b) { return sh.reverse ? length_of(sh, b) - 1 : 0; }
inline int64_t last_step_time(const RnnShape& sh, int64_t b) { return sh.reverse ? 0 : length_of(sh, b) - 1; }
bool all_full(const RnnShape& sh) {
  if (!sh.lengths) return true;
  for (int64_t b = 0; b < sh.B; ++b)
    if (sh.lengths[b] != sh.T) return false;
  return true;
}

// 64-byte aligned scratch, freed on scope exit; std::bad_alloc when it cannot be had.
template <typename T>
struct Scratch {
  T* p = nullptr;
  explicit Scratch(int64_t n) {
    const size_t bytes = (size_t(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// W_hh's column panels for this ISA, room for the packed copy (filled inside the parallel
// region), and a row of zeros (the state of a sequence without a predecessor).
template <typename T>
struct PanelLayout {
  std::vector<Panel> panels;
  int64_t npanels;
  Scratch<T> Wp, zeros;
  PanelLayout(const cpu::Kernels<T>& K, int64_t H)
      : panels(plan(K, H)), npanels(int64_t(panels.size())),
        Wp((panels.back().offset + int64_t(panels.back().nv) * K.width) * H), zeros(H) {
    std::fill(zeros.p, zeros.p + H, T(0));
  }
  static std::vector<Panel> plan(const cpu::Kernels<T>& K, int64_t H) {
    std::vector<Panel> p(K.plan_panels(H, nullptr));
    K.plan_panels(H, p.data());
    return p;
  }
};

// [lo, hi) of part q when n items are split into P near-equal contiguous parts.
inline void part_range(int64_t n, int P, int q, int64_t* lo, int64_t* hi) {
  *lo = n * q / P;
  *hi = n * (q + 1) / P;
}

// How a product is split: by rows of C, P parts, each at least ~1 MFLOP of work.
int gemm_parts(int64_t M, int64_t N, int64_t K, int threads) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  int P = int(std::min<double>(threads, std::max(1.0, flops / 2e6)));
  return std::max(1, std::min<int>(P, int(std::min<int64_t>(M, 1 << 20))));
}

template <typename T>
struct Gemm {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0;
  const T* B = nullptr;
  int64_t ldb = 0;
  T beta = T(0);
  T* C = nullptr;
  int64_t ldc = 0;
  // Part q of P: rows [lo, hi) of C.
  void run_part(int q, int P) const {
    int64_t lo, hi;
    part_range(M, P, q, &lo, &hi);
    if (hi <= lo) return;
    const T* a = ta ? A + lo : A + lo * lda;
    cpu::gemm<T>(ta, tb, hi - lo, N, K, T(1), a, lda, B, ldb, beta, C + lo * ldc, ldc);
  }
};

// ------------------------------------------------------------------------------------ plan
// The recurrence: by batch rows when every part gets a few rows (no per-step barrier), else by
// column panels (one barrier per step), else one part when a step is too small to share.
struct RecurrencePlan {
  int parts = 1;
  bool by_rows = true;
};

RecurrencePlan plan_recurrence(int64_t B, int64_t H, int64_t npanels, int threads) {
  RecurrencePlan p;
  const double macs_per_step = double(B) * double(H) * double(H);
  if (threads <= 1 || macs_per_step < 24576.0) return p;  // below ~1 us of work: stay alone
  if (B >= 4 * threads) {
    p.parts = threads;
    return p;
  }
  if (npanels >= 2 && macs_per_step >= 65536.0) {
    p.parts = int(std::min<int64_t>(threads, npanels));
    p.by_rows = false;
  }
  return p;
}

// The chunked schedule of a call whose sequences all have T steps, split by rows: chunks of
// ~256 rows of [T*B] (whole steps), with the products that do not sit on the recurrence's chain
// (forward: the input projection of the next chunk; backward: the weight and input gradients of
// the previous one) done beside it while their operands are in cache. Only when a chunk's
// operands (bytes_per_row each) fit comfortably in L2, and there are at least two chunks.
struct Chunks {
  bool on = false;
  int64_t steps = 1, count = 1;
  // Processed steps [i0, i1) of chunk c.
  void steps_of(int64_t T, int64_t c, int64_t* i0, int64_t* i1) const {
    *i0 = c * steps;
    *i1 = std::min(T, (c + 1) * steps);
  }
  // Rows [lo, hi) of [T*B] that chunk c covers, where processed step i is time i, or time
  // T - 1 - i when from_end (a reverse direction's forward, a forward direction's backward).
  void rows(int64_t T, int64_t B, bool from_end, int64_t c, int64_t* lo, int64_t* hi) const {
    int64_t i0, i1;
    steps_of(T, c, &i0, &i1);
    *lo = (from_end ? T - i1 : i0) * B;
    *hi = (from_end ? T - i0 : i1) * B;
  }
};

Chunks plan_chunks(const RnnShape& sh, const RecurrencePlan& rp, bool uniform, double bytes_per_row) {
  Chunks c;
  c.steps = std::max<int64_t>(1, (256 + sh.B - 1) / sh.B);
  c.count = (sh.T + c.steps - 1) / c.steps;
  c.on = rp.by_rows && uniform && c.count > 1 &&
         double(c.steps * sh.B) * bytes_per_row <= 768.0 * 1024.0;
  return c;
}

// Per-part row scratch for variable lengths: per-row pointers and validity of one step.
template <typename T>
struct RowScratch {
  const T** ptr_a;
  const T** ptr_b;
  uint8_t* valid;
};

}  // namespace

// ==================================================================================== forward
template <typename T>
void rnn_forward_cpu(const RnnForwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  const int64_t nT = sh.T, B = sh.B, I = sh.I, H = sh.H, ld = a.ld_out;
  if (nT == 0 || B == 0) return;
  const cpu::Kernels<T>& K = cpu::kernels<T>();
  const int threads = cpu::get_num_threads();
  const bool uniform = all_full(sh);

  const PanelLayout<T> pl(K, H);
  const auto& panels = pl.panels;
  const int64_t npanels = pl.npanels;
  const Scratch<T>& Wp = pl.Wp;
  const Scratch<T>& zeros = pl.zeros;
  Scratch<T> bias(H);
  for (int64_t j = 0; j < H; ++j)
    bias.p[j] = (a.w.b_ih ? a.w.b_ih[j] : T(0)) + (a.w.b_hh ? a.w.b_hh[j] : T(0));
  const RecurrencePlan rp = plan_recurrence(B, H, npanels, threads);
  const Gemm<T> proj{false, true, nT * B, H, I, a.x, I, a.w.W_ih, I, T(0), a.out, ld};
  // The input projection chunk by chunk, one chunk ahead of the recurrence, with an own
  // row-panel kernel on a packed W_ih^T (nn_rows): the recurrence then reads each chunk's
  // projection from cache. Else one BLAS product over all T*B rows first.
  const Chunks ch = plan_chunks(sh, rp, uniform, double(I + H) * sizeof(T));
  const int gp = ch.on ? 0 : gemm_parts(nT * B, H, I, threads);
  const int gpc = ch.on ? gemm_parts(ch.steps * B, H, I, threads) : 0;
  const int pp = int(std::min<int64_t>(threads, npanels));  // packing parts (each matrix)
  Scratch<T> Wip(ch.on ? (panels.back().offset + int64_t(panels.back().nv) * K.width) * I : 1);
  const int P = std::max({rp.parts, gp, gpc, pp});
  Scratch<const T*> row_ptrs(uniform ? 1 : rp.parts * B);
  Scratch<uint8_t> row_valid(uniform ? 1 : rp.parts * B);

  cpu::FwdStep<T> base;
  base.H = H;
  base.act = sh.act;
  base.panels = panels.data();
  base.npanels = npanels;
  base.Wp = Wp.p;
  base.bias = bias.p;
  base.zeros = zeros.p;
  base.out = nullptr;
  base.ld_out = ld;

  // The step at processing index s for rows [r0, r1) and panels [p0, p1).
  auto step = [&](int64_t s, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int part) {
    const int64_t t = time_of(sh, s);
    cpu::FwdStep<T> st = base;
    st.out = a.out + t * B * ld;
    if (uniform) {
      if (s > 0) {
        st.prev = a.out + time_of(sh, s - 1) * B * ld;
        st.ld_prev = ld;
      } else {
        st.prev = a.h0;
        st.ld_prev = H;
      }
    } else {
      const T** rows = row_ptrs.p + part * B;
      uint8_t* valid = row_valid.p + part * B;
      const int64_t tp = s > 0 ? time_of(sh, s - 1) : -1;
      for (int64_t b = r0; b < r1; ++b) {
        valid[b] = is_valid(sh, t, b);
        if (tp >= 0 && is_valid(sh, tp, b)) rows[b] = a.out + (tp * B + b) * ld;
        else rows[b] = a.h0 ? a.h0 + b * H : nullptr;
      }
      st.prev_rows = rows;
      st.valid = valid;
    }
    K.fwd_step(st, r0, r1, p0, p1);
  };

  // Processed steps [i0, i1) of rows [r0, r1) of part q, the loop over time inside the kernel.
  auto steps_of_rows = [&](int64_t i0, int64_t i1, int q) {
    int64_t r0, r1;
    part_range(B, rp.parts, q, &r0, &r1);
    cpu::FwdStep<T> st = base;
    st.out = a.out + time_of(sh, i0) * B * ld;
    if (i0 == 0) {
      st.prev = a.h0;
      st.ld_prev = H;
    } else {
      st.prev = a.out + time_of(sh, i0 - 1) * B * ld;
      st.ld_prev = ld;
    }
    K.fwd_steps(st, i1 - i0, (sh.reverse ? -1 : 1) * B * ld, r0, r1);
  };
  auto proj_chunk = [&](int64_t c, int q) {
    int64_t k_lo, k_hi, lo, hi;
    ch.rows(nT, B, sh.reverse, c, &k_lo, &k_hi);
    part_range(k_hi - k_lo, gpc, q, &lo, &hi);
    K.nn_rows(a.x, I, k_lo + lo, k_lo + hi, I, panels.data(), npanels, Wip.p, H, a.out, ld, false);
  };

  const int wpk = ch.on ? pp : 0;  // packing parts of W_ih^T
  cpu::parallel(P, [&](Team& team) {
    team.for_each(gp + pp + wpk, [&](int64_t i) {
      int64_t lo, hi;
      if (i < gp) {
        proj.run_part(int(i), gp);
      } else if (i < gp + pp) {
        part_range(npanels, pp, int(i - gp), &lo, &hi);
        K.pack(a.w.W_hh, H, true, H, H, panels.data(), lo, hi, Wp.p);
      } else {
        part_range(npanels, wpk, int(i - gp - pp), &lo, &hi);
        K.pack(a.w.W_ih, I, true, I, H, panels.data(), lo, hi, Wip.p);
      }
    });
    if (ch.on) {  // chunk c's projection beside chunk c - 1's recurrence
      team.for_each_step(ch.count + 1, rp.parts + gpc, [&](int64_t c, int64_t item) {
        if (item < rp.parts) {
          if (c == 0) return;
          int64_t i0, i1;
          ch.steps_of(nT, c - 1, &i0, &i1);
          steps_of_rows(i0, i1, int(item));
        } else if (c < ch.count) {
          proj_chunk(c, int(item - rp.parts));
        }
      });
    } else if (rp.by_rows && uniform) {  // the whole loop over time inside the kernel
      team.for_each(rp.parts, [&](int64_t q) { steps_of_rows(0, nT, int(q)); });
    } else if (rp.by_rows) {
      team.for_each(rp.parts, [&](int64_t q) {
        int64_t r0, r1;
        part_range(B, rp.parts, int(q), &r0, &r1);
        for (int64_t s = 0; s < nT; ++s) step(s, r0, r1, 0, npanels, int(q));
      });
    } else {
      team.for_each_step(nT, rp.parts, [&](int64_t s, int64_t q) {
        int64_t p0, p1;
        part_range(npanels, rp.parts, int(q), &p0, &p1);
        step(s, 0, B, p0, p1, int(q));
      });
    }
  });

  for (int64_t b = 0; b < B; ++b) {
    const T* last = a.out + (last_step_time(sh, b) * B + b) * ld;
    std::copy(last, last + H, a.h_n + b * H);
  }
}

// ==================================================================================== backward
template <typename T>
void rnn_backward_cpu(const RnnBackwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  const int64_t nT = sh.T, B = sh.B, I = sh.I, H = sh.H, ld = a.ld_out;
  if (nT == 0 || B == 0) return;
  const cpu::Kernels<T>& K = cpu::kernels<T>();
  const int threads = cpu::get_num_threads();
  const bool uniform = all_full(sh);
  T* dz = a.dz;  // [T, B, H], indexed by time

  const PanelLayout<T> pl(K, H);
  const auto& panels = pl.panels;
  const int64_t npanels = pl.npanels;
  const Scratch<T>& Wp = pl.Wp;
  const Scratch<T>& zeros = pl.zeros;
  Scratch<T> first(uniform ? 1 : B * H);
  const RecurrencePlan rp = plan_recurrence(B, H, npanels, threads);
  Scratch<double> sumsq(a.grad_norms ? rp.parts * nT : 1);
  if (a.grad_norms) std::fill(sumsq.p, sumsq.p + rp.parts * nT, 0.0);
  Scratch<const T*> row_ptrs(uniform ? 1 : 2 * rp.parts * B);
  Scratch<uint8_t> row_valid(uniform ? 1 : rp.parts * B);
  const bool want_db = a.db_ih || a.db_hh;
  Scratch<double> dbsum(want_db ? rp.parts * H : 1);
  if (want_db) std::fill(dbsum.p, dbsum.p + rp.parts * H, 0.0);

  cpu::BwdStep<T> base;
  base.H = H;
  base.act = sh.act;
  base.panels = panels.data();
  base.npanels = npanels;
  base.Wp = Wp.p;
  base.zeros = zeros.p;
  base.ld_dzn = H;
  base.ld_carry = H;
  base.ld_grad_out = a.ld_grad_out;
  base.ld_h = ld;
  base.ld_dz = H;

  auto step = [&](int64_t s, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int part) {
    const int64_t t = time_of(sh, s);
    const int64_t tn = s + 1 < nT ? time_of(sh, s + 1) : -1;  // the next processed step
    cpu::BwdStep<T> st = base;
    st.grad_out = a.grad_out ? a.grad_out + t * B * a.ld_grad_out : nullptr;
    st.h = a.out + t * B * ld;
    st.dz = dz + t * B * H;
    st.sumsq = a.grad_norms ? sumsq.p + part * nT + s : nullptr;
    st.dbsum = want_db ? dbsum.p + part * H : nullptr;
    if (uniform) {
      if (tn >= 0) st.dzn = dz + tn * B * H;
      else st.carry = a.grad_h_n;
    } else {
      const T** dzn_rows = row_ptrs.p + 2 * part * B;
      const T** carry_rows = dzn_rows + B;
      uint8_t* valid = row_valid.p + part * B;
      for (int64_t b = r0; b < r1; ++b) {
        valid[b] = is_valid(sh, t, b);
        const bool has_next = tn >= 0 && is_valid(sh, tn, b);
        dzn_rows[b] = has_next ? dz + (tn * B + b) * H : nullptr;
        carry_rows[b] = has_next || !a.grad_h_n ? nullptr : a.grad_h_n + b * H;
      }
      st.dzn_rows = dzn_rows;
      st.carry_rows = carry_rows;
      st.valid = valid;
    }
    K.bwd_step(st, r0, r1, p0, p1);
  };

  // After the loop. Weight gradients in one pass over dz (tn_product, rows of dW split into
  // parts): dW_ih = dZ^T X and dW_hh = dZ^T H_prev, where the previous state of the step at
  // time t is out at t -/+ 1 (forward / reverse), or h0 at a sequence's first step.
  // grad_x = dZ W_ih and grad_h0 = dZ_first W_hh through the BLAS, split by rows.
  const T beta_x = a.accumulate_grad_x ? T(1) : T(0);
  const int64_t k_first = sh.reverse ? (nT - 1) * B : 0;  // dz rows of the first step (uniform)
  std::vector<cpu::TnTarget<T>> wt;
  if (uniform) {
    wt.push_back({a.x, I, I, 0, nT * B, a.dW_ih, I});
    if (nT > 1) {
      if (sh.reverse) wt.push_back({a.out + B * ld, ld, H, 0, (nT - 1) * B, a.dW_hh, H});
      else wt.push_back({a.out, ld, H, B, nT * B, a.dW_hh, H});
    }
    if (a.h0) wt.push_back({a.h0, H, H, k_first, k_first + B, a.dW_hh, H});
  }
  const int wp = gemm_parts(H, I + H, nT * B, threads);
  const Gemm<T> gx{false, false, nT * B, I, H, dz, H, a.w.W_ih, I, beta_x, a.grad_x, I};
  const int xp = a.grad_x ? gemm_parts(nT * B, I, H, threads) : 0;
  const T* dz_first = uniform ? dz + k_first * H : first.p;
  const Gemm<T> gh0{false, false, B, H, H, dz_first, H, a.w.W_hh, H, T(0), a.grad_h0, H};
  const int hp = a.grad_h0 ? gemm_parts(B, H, H, threads) : 0;
  int P = std::max({rp.parts, wp, xp, hp});

  // Rows [lo, hi) of dW_ih and dW_hh (part q of wp).
  auto weight_part = [&](int q) {
    int64_t lo, hi;
    part_range(H, wp, q, &lo, &hi);
    if (hi <= lo) return;
    if (uniform) {
      K.tn_product(dz, H, lo, hi, wt.data(), int32_t(wt.size()));
      return;
    }
    // Variable lengths: each sequence over its valid steps only (stride B rows), so that
    // padded inputs and states are never multiplied, not even by zero.
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = length_of(sh, b);
      cpu::TnTarget<T> t[2] = {{a.x + b * I, B * I, I, 0, L, a.dW_ih, I}, {}};
      if (sh.reverse) t[1] = {a.out + (B + b) * ld, B * ld, H, 0, L - 1, a.dW_hh, H};
      else t[1] = {a.out + b * ld, B * ld, H, 1, L, a.dW_hh, H};
      K.tn_product(dz + b * H, B * H, lo, hi, t, L > 1 ? 2 : 1);
    }
    if (a.h0) {
      const cpu::TnTarget<T> t0{a.h0, H, H, 0, B, a.dW_hh, H};
      K.tn_product(first.p, H, lo, hi, &t0, 1);
    }
  };
  // Part q of xp of grad_x: rows of dZ W_ih, or (variable lengths) some sequences.
  auto x_part = [&](int q) {
    if (uniform) {
      gx.run_part(q, xp);
      return;
    }
    int64_t b0, b1;
    part_range(B, xp, q, &b0, &b1);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t L = length_of(sh, b);
      T* g = a.grad_x + b * I;
      cpu::gemm<T>(false, false, L, I, H, T(1), dz + b * H, B * H, a.w.W_ih, I, beta_x, g, B * I);
      if (!a.accumulate_grad_x)
        for (int64_t t = L; t < nT; ++t) std::fill(g + t * B * I, g + t * B * I + I, T(0));
    }
  };

  // Processed steps [i0, i1) (i = 0 is the last time step) of rows [r0, r1) of part q, the
  // loop over time inside the kernel (uniform lengths, split by rows).
  auto steps_of_rows = [&](int64_t i0, int64_t i1, int q) {
    int64_t r0, r1;
    part_range(B, rp.parts, q, &r0, &r1);
    const int64_t s = nT - 1 - i0, t = time_of(sh, s), dir = sh.reverse ? 1 : -1;  // t moves by dir
    cpu::BwdStep<T> st = base;
    st.grad_out = a.grad_out ? a.grad_out + t * B * a.ld_grad_out : nullptr;
    st.h = a.out + t * B * ld;
    st.dz = dz + t * B * H;
    if (i0 == 0) st.carry = a.grad_h_n;
    else st.dzn = dz + time_of(sh, s + 1) * B * H;
    st.sumsq = a.grad_norms ? sumsq.p + q * nT + s : nullptr;
    st.dbsum = want_db ? dbsum.p + q * H : nullptr;
    K.bwd_steps(st, i1 - i0, dir * B * a.ld_grad_out, dir * B * ld, dir * B * H, -1, r0, r1);
  };
  // Weight gradients chunk by chunk while the chunk's dz, states and inputs are still in cache.
  // Measured on one core: the product over all T*B = 16000 rows at H = 128 streams its operands
  // from memory at ~200 GFLOP/s, from cache (K = 256) at ~250. The whole backward gains ~3% at
  // (1000, 16, 64, 128) and (200, 64, 128, 256) with 2 threads (interleaved runs), at the price
  // of one barrier per chunk. Rows of dW split into wpc parts.
  const Chunks ch = plan_chunks(sh, rp, uniform, double(2 * H + I) * sizeof(T));
  const bool fused = ch.on;
  const int wpc = fused ? gemm_parts(H, I + H, ch.steps * B, threads) : 0;
  // grad_x = dZ W_ih chunk by chunk too, with W_ih packed like W_hh (kernel nn_rows).
  const bool fused_x = fused && a.grad_x && I > 0;
  const std::vector<Panel> ipanels = fused_x ? PanelLayout<T>::plan(K, I) : std::vector<Panel>();
  const int64_t nipanels = int64_t(ipanels.size());
  Scratch<T> Wip(fused_x ? (ipanels.back().offset + int64_t(ipanels.back().nv) * K.width) * H : 1);
  const int xpc = fused_x ? gemm_parts(ch.steps * B, I, H, threads) : 0;
  const int ipp = int(std::min<int64_t>(threads, nipanels));  // packing parts of W_ih
  P = std::max({P, wpc, xpc, ipp});
  auto weight_chunk = [&](int64_t c, int q) {
    int64_t lo, hi;
    part_range(H, wpc, q, &lo, &hi);
    if (hi <= lo) return;
    int64_t k_lo, k_hi;  // dz rows of the chunk's steps
    ch.rows(nT, B, !sh.reverse, c, &k_lo, &k_hi);
    cpu::TnTarget<T> part[3];
    int32_t n = 0;
    for (const cpu::TnTarget<T>& w : wt) {
      const int64_t k0 = std::max(w.k0, k_lo), k1 = std::min(w.k1, k_hi);
      if (k0 >= k1) continue;
      part[n++] = {w.B + (k0 - w.k0) * w.ldb, w.ldb, w.N, k0 - k_lo, k1 - k_lo, w.C, w.ldc};
    }
    K.tn_product(dz + k_lo * H, H, lo, hi, part, n);
  };
  auto x_chunk = [&](int64_t c, int q) {
    int64_t k_lo, k_hi, lo, hi;
    ch.rows(nT, B, !sh.reverse, c, &k_lo, &k_hi);
    part_range(k_hi - k_lo, xpc, q, &lo, &hi);
    K.nn_rows(dz, H, k_lo + lo, k_lo + hi, H, ipanels.data(), nipanels, Wip.p, I, a.grad_x, I,
              a.accumulate_grad_x);
  };

  const int pp = int(std::min<int64_t>(P, npanels));  // packing parts
  cpu::parallel(P, [&](Team& team) {
    team.for_each(pp + (fused_x ? ipp : 0), [&](int64_t q) {
      int64_t lo, hi;
      if (q < pp) {
        part_range(npanels, pp, int(q), &lo, &hi);
        K.pack(a.w.W_hh, H, false, H, H, panels.data(), lo, hi, Wp.p);
      } else {
        part_range(nipanels, ipp, int(q - pp), &lo, &hi);
        K.pack(a.w.W_ih, I, false, H, I, ipanels.data(), lo, hi, Wip.p);
      }
    });
    if (fused) {  // chunk c's recurrence beside chunk c - 1's gradients of weights and x
      team.for_each_step(ch.count + 1, rp.parts + wpc + xpc, [&](int64_t c, int64_t item) {
        if (item < rp.parts) {
          if (c == ch.count) return;
          int64_t i0, i1;
          ch.steps_of(nT, c, &i0, &i1);
          steps_of_rows(i0, i1, int(item));
        } else if (c == 0) {
          return;  // no chunk behind the first
        } else if (item < rp.parts + wpc) {
          weight_chunk(c - 1, int(item - rp.parts));
        } else {
          x_chunk(c - 1, int(item - rp.parts - wpc));
        }
      });
    } else if (rp.by_rows && uniform) {  // the whole loop over time inside the kernel
      team.for_each(rp.parts, [&](int64_t q) { steps_of_rows(0, nT, int(q)); });
    } else if (rp.by_rows) {
      team.for_each(rp.parts, [&](int64_t q) {
        int64_t r0, r1;
        part_range(B, rp.parts, int(q), &r0, &r1);
        for (int64_t s = nT - 1; s >= 0; --s) step(s, r0, r1, 0, npanels, int(q));
      });
    } else {
      team.for_each_step(nT, rp.parts, [&](int64_t i, int64_t q) {
        int64_t p0, p1;
        part_range(npanels, rp.parts, int(q), &p0, &p1);
        step(nT - 1 - i, 0, B, p0, p1, int(q));
      });
    }
    if (!uniform) {  // dz at each sequence's first step, for grad_h0 and dW_hh's h0 term
      team.for_each(P, [&](int64_t q) {
        int64_t b0, b1;
        part_range(B, P, int(q), &b0, &b1);
        for (int64_t b = b0; b < b1; ++b) {
          const T* src = dz + (first_step_time(sh, b) * B + b) * H;
          std::copy(src, src + H, first.p + b * H);
        }
      });
    }
    const int wpa = fused ? 0 : wp, xpa = fused_x ? 0 : xp;  // parts still to run
    team.for_each(wpa + xpa + hp, [&](int64_t i) {
      if (i < wpa) {
        weight_part(int(i));
      } else if (i < wpa + xpa) {
        x_part(int(i - wpa));
      } else if (a.grad_h0) {
        gh0.run_part(int(i - wpa - xpa), hp);
      }
    });
  });

  if (want_db) {
    for (int64_t j = 0; j < H; ++j) {
      double total = 0.0;
      for (int q = 0; q < rp.parts; ++q) total += dbsum.p[q * H + j];
      if (a.db_ih) a.db_ih[j] += T(total);
      if (a.db_hh) a.db_hh[j] += T(total);
    }
  }
  if (a.grad_norms) {
    for (int64_t s = 0; s < nT; ++s) {
      double total = 0.0;
      for (int q = 0; q < rp.parts; ++q) total += sumsq.p[q * nT + s];
      a.grad_norms[time_of(sh, s)] = std::sqrt(total);
    }
  }
}

// ==================================================================================== matmul
template <typename T>
void matmul_cpu(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const Gemm<T> g{ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc};
  const int parts = gemm_parts(M, N, K, cpu::get_num_threads());
  cpu::parallel(parts, [&](Team& team) { team.for_each(parts, [&](int64_t q) { g.run_part(int(q), parts); }); });
}

template void matmul_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t);
template void matmul_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                 const double*, int64_t, double, double*, int64_t);
template void rnn_forward_cpu<float>(const RnnForwardArgs<float>&);
template void rnn_forward_cpu<double>(const RnnForwardArgs<double>&);
template void rnn_backward_cpu<float>(const RnnBackwardArgs<float>&);
template void rnn_backward_cpu<double>(const RnnBackwardArgs<double>&);

}  // namespace elman
