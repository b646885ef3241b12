// CPU backend: fused forward and BPTT of one layer in one direction (the contract in rnn.h),
// each a driver of the shared schedule (schedule.h), which splits the work into parts and runs
// it in one parallel region:
//   forward:  W_hh packed once, then per step the register-blocked recurrent product with bias
//             and activation fused (step_kernels.h); the input projection x W_ih^T either one
//             chunk of steps ahead of the recurrence (nn_rows on a packed W_ih^T) or as one BLAS
//             product over all T*B rows first, written straight into out;
//   backward: per step (reverse order) the product with W_hh fused with grad_out, f' and the
//             norm of dL/dh_t; dW_ih and dW_hh (tn_product) and dX (nn_rows) either one chunk
//             behind the recurrence or after the loop (dX then through the BLAS); grad_h0 and db.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <memory>
#include <vector>

#include "../rnn.h"
#include "kernels.h"
#include "schedule.h"
#include "threads.h"

namespace elman {
namespace {

using cpu::BwdStep;
using cpu::FwdStep;
using cpu::Gemm;
using cpu::Packed;
using cpu::Schedule;
using cpu::Scratch;
using cpu::TnTarget;
using cpu::gemm_parts;
using cpu::part_range;

// ==================================================================================== forward
// One forward call, as the schedule's driver:
//   before  W_hh^T packed (and W_ih^T when chunked); not chunked, the input projection
//           x W_ih^T over all T*B rows through the BLAS, straight into out (the steps add the
//           rest in place)
//   step    fwd_step at processing step s, each row's previous state being its last valid
//           step's output, h0 or nothing
//   steps   fwd_steps: the loop over time inside the kernel (every sequence has T steps)
//   beside  chunk c's input projection (nn_rows on the packed W_ih^T), one chunk ahead of the
//           recurrence, which then reads it from cache
template <typename T>
struct Forward {
  const RnnForwardArgs<T>& a;
  const RnnShape& sh;
  const cpu::Kernels<T>& K;
  const int64_t B, I, H, ld;
  Packed<T> Whh;  // W_hh^T
  Schedule sc;
  Packed<T> Wih;  // W_ih^T, for the projection chunk by chunk
  Scratch<T> bias, zeros;
  Scratch<const T*> prev_rows;  // [parts, B]: a step's previous state per row (variable lengths)
  Scratch<uint8_t> valid_rows;  // [parts, B]: a step's valid rows
  Gemm<T> proj;                 // x W_ih^T over all T*B rows
  int proj_parts = 0, chunk_parts = 0, pack_parts = 0, wih_parts = 0;
  FwdStep<T> base;              // what every step shares

  Forward(const RnnForwardArgs<T>& args, int threads, int64_t chunk_steps = 0)
      : a(args), sh(args.shape), K(cpu::kernels<T>()), B(sh.B), I(sh.I), H(sh.H), ld(args.ld_out),
        Whh(K, a.w.W_hh, H, true, H, H),
        sc(cpu::plan_schedule(sh, false, Whh.count(), threads, double(I + H) * sizeof(T),
                              chunk_steps)),
        Wih(K, a.w.W_ih, I, true, I, H, sc.chunks.on),
        bias(H), zeros(H),
        prev_rows(sc.uniform ? 1 : sc.rec.parts * B), valid_rows(sc.uniform ? 1 : sc.rec.parts * B),
        proj{false, true, sh.T * B, H, I, a.x, I, a.w.W_ih, I, T(0), a.out, ld} {
    for (int64_t j = 0; j < H; ++j) {
      bias.p[j] = (a.w.b_ih ? a.w.b_ih[j] : T(0)) + (a.w.b_hh ? a.w.b_hh[j] : T(0));
      zeros.p[j] = T(0);
    }
    const bool chunked = sc.chunks.on;
    proj_parts = chunked ? 0 : gemm_parts(sh.T * B, H, I, threads);
    chunk_parts = chunked ? gemm_parts(sc.chunks.steps * B, H, I, threads) : 0;
    pack_parts = Whh.parts(threads);
    wih_parts = Wih.parts(threads);  // 0 unless chunked
    sc.before = proj_parts + pack_parts + wih_parts;
    sc.side = chunk_parts;
    sc.threads = std::max({sc.rec.parts, proj_parts, chunk_parts, pack_parts, wih_parts});
    proj.stop = sc.stop;
    base.H = H;
    base.act = sh.act;
    base.panels = Whh.panels.data();
    base.npanels = Whh.count();
    base.Wp = Whh.data.p;
    base.bias = bias.p;
    base.zeros = zeros.p;
    base.ld_out = ld;
  }

  void before(int64_t i) const {
    if (i < proj_parts) proj.run_part(int(i), proj_parts);
    else if (i < proj_parts + pack_parts) Whh.pack_part(int(i - proj_parts), pack_parts);
    else Wih.pack_part(int(i - proj_parts - pack_parts), wih_parts);
  }

  void step(int64_t s, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int part) const {
    const int64_t t = sh.time_of(s);
    FwdStep<T> st = base;
    st.out = a.out + t * B * ld;
    if (sc.uniform) {
      st.prev = s > 0 ? a.out + sh.time_of(s - 1) * B * ld : a.h0;
      st.ld_prev = s > 0 ? ld : H;
    } else {
      const T** rows = prev_rows.p + part * B;
      uint8_t* valid = valid_rows.p + part * B;
      const int64_t tp = s > 0 ? sh.time_of(s - 1) : -1;
      for (int64_t b = r0; b < r1; ++b) {
        valid[b] = sh.is_valid(t, b);
        if (tp >= 0 && sh.is_valid(tp, b)) rows[b] = a.out + (tp * B + b) * ld;
        else rows[b] = a.h0 ? a.h0 + b * H : nullptr;
      }
      st.prev_rows = rows;
      st.valid = valid;
    }
    K.fwd_step(st, r0, r1, p0, p1);
  }

  void steps(int64_t i0, int64_t i1, int64_t r0, int64_t r1, int) const {
    FwdStep<T> st = base;
    st.out = a.out + sh.time_of(i0) * B * ld;
    st.prev = i0 > 0 ? a.out + sh.time_of(i0 - 1) * B * ld : a.h0;
    st.ld_prev = i0 > 0 ? ld : H;
    K.fwd_steps(st, i1 - i0, (sh.reverse ? -1 : 1) * B * ld, r0, r1);
  }

  void beside(int64_t c, int q) const {
    int64_t k_lo, k_hi, lo, hi;
    sc.chunk_rows(c, &k_lo, &k_hi);
    part_range(k_hi - k_lo, chunk_parts, q, &lo, &hi);
    K.nn_rows(a.x, I, k_lo + lo, k_lo + hi, I, Wih.panels.data(), Wih.count(), Wih.data.p, H, a.out,
              ld, false);
  }

  void after(int, int64_t) const {}
};

// ==================================================================================== backward
// One backward call (BPTT), as the schedule's driver; dz [T, B, H] is indexed by time:
//   before  W_hh packed (and W_ih when dX runs chunk by chunk)
//   step    bwd_step at processing step s: dh = grad_out + dz_next W_hh (+ grad_h_n after a
//           sequence's last step), dz = f'(h) dh, and per part the squares of dh (the norms)
//           and the column sums of dz (db)
//   steps   bwd_steps: the loop over time inside the kernel (every sequence has T steps)
//   beside  chunk c's weight gradients (tn_product) and dX = dZ W_ih (nn_rows on the packed
//           W_ih), one chunk behind the recurrence
//   after   pass 0 (variable lengths): dz at each sequence's first step gathered; pass 1: what
//           did not run beside the chunks (the weight gradients, dX through the BLAS) and
//           grad_h0 = dZ_first W_hh
template <typename T>
struct Backward {
  const RnnBackwardArgs<T>& a;
  const RnnShape& sh;
  const cpu::Kernels<T>& K;
  const int64_t nT, B, I, H, ld;
  T* const dz;
  const bool want_db;
  Packed<T> Whh;  // W_hh
  Schedule sc;
  Packed<T> Wih;  // W_ih, for dX chunk by chunk
  Scratch<T> zeros;
  Scratch<T> first;             // [B, H] dz at each sequence's first step (variable lengths)
  Scratch<double> sumsq;        // [parts, T] squares of dh per part and step
  Scratch<double> dbsum;        // [parts, H] column sums of dz per part
  Scratch<const T*> row_ptrs;   // [parts, 2, B]: a step's dz_next and carry rows (variable lengths)
  Scratch<uint8_t> row_valid;   // [parts, B]
  std::vector<TnTarget<T>> wt;  // right-hand sides of dW_ih = dZ^T X, dW_hh = dZ^T H_prev
  Gemm<T> gx, gh0;              // dX = dZ W_ih and grad_h0 = dZ_first W_hh through the BLAS
  int wpc = 0, xpc = 0;         // parts beside a chunk: weight gradients, dX
  int wpa = 0, xpa = 0, hp = 0; // parts after the loop: weight gradients, dX, grad_h0
  int pp = 0, ipp = 0;          // packing parts of W_hh and W_ih
  BwdStep<T> base;              // what every step shares

  Backward(const RnnBackwardArgs<T>& args, int threads, int64_t chunk_steps = 0);

  void before(int64_t i) const {
    if (i < pp) Whh.pack_part(int(i), pp);
    else Wih.pack_part(int(i - pp), ipp);
  }

  // The step at processing step s for part q: its rows of grad_out, h and dz, and its sums.
  BwdStep<T> step_base(int64_t s, int q) const {
    const int64_t t = sh.time_of(s);
    BwdStep<T> st = base;
    st.grad_out = a.grad_out ? a.grad_out + t * B * a.ld_grad_out : nullptr;
    st.h = a.out + t * B * ld;
    st.dz = dz + t * B * H;
    st.sumsq = a.grad_norms ? sumsq.p + q * nT + s : nullptr;
    st.dbsum = want_db ? dbsum.p + q * H : nullptr;
    return st;
  }

  void step(int64_t s, int64_t r0, int64_t r1, int64_t p0, int64_t p1, int part) const {
    const int64_t t = sh.time_of(s);
    const int64_t tn = s + 1 < nT ? sh.time_of(s + 1) : -1;  // the next processed step
    BwdStep<T> st = step_base(s, part);
    if (sc.uniform) {
      if (tn >= 0) st.dzn = dz + tn * B * H;
      else st.carry = a.grad_h_n;
    } else {
      const T** dzn_rows = row_ptrs.p + 2 * part * B;
      const T** carry_rows = dzn_rows + B;
      uint8_t* valid = row_valid.p + part * B;
      for (int64_t b = r0; b < r1; ++b) {
        valid[b] = sh.is_valid(t, b);
        const bool has_next = tn >= 0 && sh.is_valid(tn, b);
        dzn_rows[b] = has_next ? dz + (tn * B + b) * H : nullptr;
        carry_rows[b] = has_next || !a.grad_h_n ? nullptr : a.grad_h_n + b * H;
      }
      st.dzn_rows = dzn_rows;
      st.carry_rows = carry_rows;
      st.valid = valid;
    }
    K.bwd_step(st, r0, r1, p0, p1);
  }

  void steps(int64_t i0, int64_t i1, int64_t r0, int64_t r1, int q) const {
    const int64_t s = sc.step_at(i0), dir = sh.reverse ? 1 : -1;  // time moves by dir
    BwdStep<T> st = step_base(s, q);
    if (i0 == 0) st.carry = a.grad_h_n;
    else st.dzn = dz + sh.time_of(s + 1) * B * H;
    K.bwd_steps(st, i1 - i0, dir * B * a.ld_grad_out, dir * B * ld, dir * B * H, -1, r0, r1);
  }

  void beside(int64_t c, int item) const {
    if (item < wpc) weight_chunk(c, item);
    else x_chunk(c, item - wpc);
  }

  void after(int pass, int64_t i) const {
    if (pass == 0) gather_first(int(i));
    else if (i < wpa) weight_part(int(i));
    else if (i < wpa + xpa) x_part(int(i - wpa));
    else gh0.run_part(int(i - wpa - xpa), hp);
  }

  void weight_chunk(int64_t c, int q) const;
  void weight_rows(int64_t k_lo, int64_t k_hi, int64_t lo, int64_t hi) const;
  void x_chunk(int64_t c, int q) const;
  void plan_parts(int threads);
  void gather_first(int q) const;
  void weight_part(int q) const;
  void x_part(int q) const;
  void finish() const;
};

template <typename T>
Backward<T>::Backward(const RnnBackwardArgs<T>& args, int threads, int64_t chunk_steps)
    : a(args), sh(args.shape), K(cpu::kernels<T>()), nT(sh.T), B(sh.B), I(sh.I), H(sh.H),
      ld(args.ld_out), dz(args.dz), want_db(args.db_ih || args.db_hh),
      Whh(K, a.w.W_hh, H, false, H, H),
      sc(cpu::plan_schedule(sh, true, Whh.count(), threads, double(2 * H + I) * sizeof(T),
                            chunk_steps)),
      Wih(K, a.w.W_ih, I, false, H, I, sc.chunks.on && a.grad_x && I > 0),
      zeros(H), first(sc.uniform ? 1 : B * H),
      sumsq(a.grad_norms ? sc.rec.parts * nT : 1), dbsum(want_db ? sc.rec.parts * H : 1),
      row_ptrs(sc.uniform ? 1 : 2 * sc.rec.parts * B),
      row_valid(sc.uniform ? 1 : sc.rec.parts * B) {
  std::fill(zeros.p, zeros.p + H, T(0));
  if (a.grad_norms) std::fill(sumsq.p, sumsq.p + sc.rec.parts * nT, 0.0);
  if (want_db) std::fill(dbsum.p, dbsum.p + sc.rec.parts * H, 0.0);
  // The previous state of the step at time t is out at t -/+ 1 (forward / reverse), or h0 at
  // a sequence's first step; dz rows k_first.. are the first step's (uniform lengths).
  const int64_t k_first = sh.reverse ? (nT - 1) * B : 0;
  if (sc.uniform) {
    wt.push_back({a.x, I, I, 0, nT * B, a.dW_ih, I});
    if (nT > 1) {
      if (sh.reverse) wt.push_back({a.out + B * ld, ld, H, 0, (nT - 1) * B, a.dW_hh, H});
      else wt.push_back({a.out, ld, H, B, nT * B, a.dW_hh, H});
    }
    if (a.h0) wt.push_back({a.h0, H, H, k_first, k_first + B, a.dW_hh, H});
  }
  const T beta_x = a.accumulate_grad_x ? T(1) : T(0);
  gx = Gemm<T>{false, false, nT * B, I, H, dz, H, a.w.W_ih, I, beta_x, a.grad_x, I};
  const T* dz_first = sc.uniform ? dz + k_first * H : first.p;
  gh0 = Gemm<T>{false, false, B, H, H, dz_first, H, a.w.W_hh, H, T(0), a.grad_h0, H};
  gx.stop = gh0.stop = sc.stop;
  plan_parts(threads);
  base.H = H;
  base.act = sh.act;
  base.panels = Whh.panels.data();
  base.npanels = Whh.count();
  base.Wp = Whh.data.p;
  base.zeros = zeros.p;
  base.ld_dzn = H;
  base.ld_carry = H;
  base.ld_grad_out = a.ld_grad_out;
  base.ld_h = ld;
  base.ld_dz = H;
}

// How many parts each product is split into, and so the items of each phase of the schedule.
// Weight gradients chunk by chunk while the chunk's dz, states and inputs are still in cache.
// Measured on one core: the product over all T*B = 16000 rows at H = 128 streams its operands
// from memory at ~200 GFLOP/s, from cache (K = 256) at ~250. The whole backward gains ~3% at
// (1000, 16, 64, 128) and (200, 64, 128, 256) with 2 threads (interleaved runs), at the price
// of one barrier per chunk. dX = dZ W_ih chunk by chunk too, with W_ih packed like W_hh.
template <typename T>
void Backward<T>::plan_parts(int threads) {
  const bool fused = sc.chunks.on, fused_x = Wih.count() > 0;
  const int wp = gemm_parts(H, I + H, nT * B, threads);
  const int xp = a.grad_x ? gemm_parts(nT * B, I, H, threads) : 0;
  hp = a.grad_h0 ? gemm_parts(B, H, H, threads) : 0;
  wpc = fused ? gemm_parts(H, I + H, sc.chunks.steps * B, threads) : 0;
  xpc = fused_x ? gemm_parts(sc.chunks.steps * B, I, H, threads) : 0;
  wpa = fused ? 0 : wp;
  xpa = fused_x ? 0 : xp;
  ipp = Wih.parts(threads);
  sc.threads = std::max({sc.rec.parts, wp, xp, hp, wpc, xpc, ipp});
  pp = Whh.parts(sc.threads);
  sc.before = pp + ipp;
  sc.side = wpc + xpc;
  sc.after[0] = sc.uniform ? 0 : sc.threads;
  sc.after[1] = wpa + xpa + hp;
}

// Rows [lo, hi) of dW_ih and dW_hh (part q of wpc) over the dz rows of chunk c.
template <typename T>
void Backward<T>::weight_chunk(int64_t c, int q) const {
  int64_t lo, hi;
  part_range(H, wpc, q, &lo, &hi);
  if (hi <= lo) return;
  int64_t k_lo, k_hi;  // dz rows of the chunk's steps
  sc.chunk_rows(c, &k_lo, &k_hi);
  weight_rows(k_lo, k_hi, lo, hi);
}

// Rows [lo, hi) of dW_ih and dW_hh over dz rows [k_lo, k_hi) (uniform lengths).
template <typename T>
void Backward<T>::weight_rows(int64_t k_lo, int64_t k_hi, int64_t lo, int64_t hi) const {
  TnTarget<T> part[3];
  int32_t n = 0;
  for (const TnTarget<T>& w : wt) {
    const int64_t k0 = std::max(w.k0, k_lo), k1 = std::min(w.k1, k_hi);
    if (k0 >= k1) continue;
    part[n++] = {w.B + (k0 - w.k0) * w.ldb, w.ldb, w.N, k0 - k_lo, k1 - k_lo, w.C, w.ldc};
  }
  K.tn_product(dz + k_lo * H, H, lo, hi, part, n);
}

// Part q of xpc of dX over the dz rows of chunk c.
template <typename T>
void Backward<T>::x_chunk(int64_t c, int q) const {
  int64_t k_lo, k_hi, lo, hi;
  sc.chunk_rows(c, &k_lo, &k_hi);
  part_range(k_hi - k_lo, xpc, q, &lo, &hi);
  K.nn_rows(dz, H, k_lo + lo, k_lo + hi, H, Wih.panels.data(), Wih.count(), Wih.data.p, I,
            a.grad_x, I, a.accumulate_grad_x);
}

// dz at the first step of the sequences of part q (of the region's threads), for grad_h0 and
// dW_hh's h0 term.
template <typename T>
void Backward<T>::gather_first(int q) const {
  int64_t b0, b1;
  part_range(B, sc.threads, q, &b0, &b1);
  for (int64_t b = b0; b < b1; ++b) {
    const T* src = dz + (sh.first_step_time(b) * B + b) * H;
    std::copy(src, src + H, first.p + b * H);
  }
}

// Rows [lo, hi) of dW_ih and dW_hh (part q of wpa) in one pass over dz (tn_product).
template <typename T>
void Backward<T>::weight_part(int q) const {
  int64_t lo, hi;
  part_range(H, wpa, q, &lo, &hi);
  if (hi <= lo) return;
  if (sc.uniform) {
    // In pieces of dz rows (at least 256, ~kStopPiece multiply-adds), the stop flag checked
    // between them. Always in pieces, stoppable or not, so that the sums are added in the
    // same order either way (the pieces depend only on the shapes and the split).
    const int64_t rows = nT * B;
    const int64_t piece = std::max<int64_t>(256, cpu::kStopPiece / ((hi - lo) * (I + H)));
    for (int64_t k = 0; k < rows && !sc.stop_requested(); k += piece)
      weight_rows(k, std::min(rows, k + piece), lo, hi);
    return;
  }
  // Variable lengths: each sequence over its valid steps only (stride B rows), so that
  // padded inputs and states are never multiplied, not even by zero.
  for (int64_t b = 0; b < B && !sc.stop_requested(); ++b) {
    const int64_t L = sh.length_of(b);
    TnTarget<T> t[2] = {{a.x + b * I, B * I, I, 0, L, a.dW_ih, I}, {}};
    if (sh.reverse) t[1] = {a.out + (B + b) * ld, B * ld, H, 0, L - 1, a.dW_hh, H};
    else t[1] = {a.out + b * ld, B * ld, H, 1, L, a.dW_hh, H};
    K.tn_product(dz + b * H, B * H, lo, hi, t, L > 1 ? 2 : 1);
  }
  if (a.h0) {
    const TnTarget<T> t0{a.h0, H, H, 0, B, a.dW_hh, H};
    K.tn_product(first.p, H, lo, hi, &t0, 1);
  }
}

// Part q of xpa of dX: rows of dZ W_ih, or (variable lengths) some sequences.
template <typename T>
void Backward<T>::x_part(int q) const {
  if (sc.uniform) {
    gx.run_part(q, xpa);
    return;
  }
  int64_t b0, b1;
  part_range(B, xpa, q, &b0, &b1);
  for (int64_t b = b0; b < b1 && !sc.stop_requested(); ++b) {
    const int64_t L = sh.length_of(b);
    T* g = a.grad_x + b * I;
    cpu::gemm<T>(false, false, L, I, H, T(1), dz + b * H, B * H, a.w.W_ih, I, gx.beta, g, B * I);
    if (!a.accumulate_grad_x)
      for (int64_t t = L; t < nT; ++t) std::fill(g + t * B * I, g + t * B * I + I, T(0));
  }
}

// After the region: the per-part sums of db and of the norms, added in part order.
template <typename T>
void Backward<T>::finish() const {
  const int parts = sc.rec.parts;
  if (want_db) {
    for (int64_t j = 0; j < H; ++j) {
      double total = 0.0;
      for (int q = 0; q < parts; ++q) total += dbsum.p[q * H + j];
      if (a.db_ih) a.db_ih[j] += T(total);
      if (a.db_hh) a.db_hh[j] += T(total);
    }
  }
  if (a.grad_norms) {
    for (int64_t s = 0; s < nT; ++s) {
      double total = 0.0;
      for (int q = 0; q < parts; ++q) total += sumsq.p[q * nT + s];
      a.grad_norms[sh.time_of(s)] = std::sqrt(total);
    }
  }
}

template <typename T>
void copy_h_n(const RnnForwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  for (int64_t b = 0; b < sh.B; ++b) {  // h_n: the state after each sequence's last valid step
    const T* last = a.out + (sh.last_step_time(b) * sh.B + b) * a.ld_out;
    std::copy(last, last + sh.H, a.h_n + b * sh.H);
  }
}

}  // namespace

template <typename T>
void rnn_forward_cpu(const RnnForwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  if (sh.T == 0 || sh.B == 0) return;
  Forward<T> f(a, cpu::get_num_threads());
  if (!cpu::run_schedule(f.sc, f)) throw cpu::Stopped();
  copy_h_n(a);
}

template <typename T>
void rnn_backward_cpu(const RnnBackwardArgs<T>& a) {
  if (a.shape.T == 0 || a.shape.B == 0) return;
  Backward<T> bw(a, cpu::get_num_threads());
  if (!cpu::run_schedule(bw.sc, bw)) throw cpu::Stopped();
  bw.finish();
}

// ==================================================================================== calls
// Several calls at once (rnn.h): each alone on one thread when every call's recurrence is a
// single chain anyway (its rows are not split between the threads), so that the threads work
// on different calls instead of waiting on each other at every step.
namespace {

std::atomic<bool> g_concurrent{true};

// Memory a call reads or writes: `rows` rows of `width` bytes, `ld` bytes apart.
struct Span {
  uintptr_t p = 0;
  int64_t rows = 0, width = 0, ld = 0;
};

template <typename T>
Span flat(const T* p, int64_t n) {
  const int64_t bytes = n * int64_t(sizeof(T));
  return {reinterpret_cast<uintptr_t>(p), p && n > 0 ? 1 : 0, bytes, bytes};
}

template <typename T>
Span rows(const T* p, int64_t n, int64_t width, int64_t ld) {
  const int64_t s = int64_t(sizeof(T));
  return {reinterpret_cast<uintptr_t>(p), p && n > 0 && width > 0 ? n : 0, width * s, ld * s};
}

// Whether two spans may share a byte. Two row sets at the same row stride are told apart by
// their columns (the two directions' halves of one output); otherwise by their extents only.
bool overlap(const Span& a, const Span& b) {
  if (a.rows == 0 || b.rows == 0) return false;
  const uintptr_t a_end = a.p + uintptr_t((a.rows - 1) * a.ld + a.width);
  const uintptr_t b_end = b.p + uintptr_t((b.rows - 1) * b.ld + b.width);
  if (a_end <= b.p || b_end <= a.p) return false;
  if (a.rows == 1 || b.rows == 1 || a.ld != b.ld || a.width > a.ld || b.width > b.ld) return true;
  const int64_t ld = a.ld;
  const int64_t d = ((int64_t(b.p) - int64_t(a.p)) % ld + ld) % ld;  // b's column offset in a's row
  return !(d >= a.width && d + b.width <= ld);
}

struct Access {
  std::vector<Span> reads, writes;
};

// No call writes what another call reads or writes.
bool independent(const std::vector<Access>& calls) {
  for (size_t i = 0; i < calls.size(); ++i)
    for (size_t j = 0; j < calls.size(); ++j) {
      if (i == j) continue;
      for (const Span& w : calls[i].writes) {
        for (const Span& r : calls[j].reads)
          if (overlap(w, r)) return false;
        for (const Span& o : calls[j].writes)
          if (overlap(w, o)) return false;
      }
    }
  return true;
}

template <typename T>
Access access(const RnnForwardArgs<T>& a) {
  const RnnShape& s = a.shape;
  return {{flat(a.x, s.T * s.B * s.I), flat(a.w.W_ih, s.H * s.I), flat(a.w.W_hh, s.H * s.H),
           flat(a.w.b_ih, s.H), flat(a.w.b_hh, s.H), flat(a.h0, s.B * s.H),
           flat(s.lengths, s.B)},
          {rows(a.out, s.T * s.B, s.H, a.ld_out), flat(a.h_n, s.B * s.H)}};
}

template <typename T>
Access access(const RnnBackwardArgs<T>& a) {
  const RnnShape& s = a.shape;
  const int64_t n = s.T * s.B;
  return {{flat(a.x, n * s.I), flat(a.w.W_ih, s.H * s.I), flat(a.w.W_hh, s.H * s.H),
           flat(a.h0, s.B * s.H), rows(a.out, n, s.H, a.ld_out),
           rows(a.grad_out, n, s.H, a.ld_grad_out), flat(a.grad_h_n, s.B * s.H),
           flat(s.lengths, s.B)},
          {flat(a.grad_x, n * s.I), flat(a.grad_h0, s.B * s.H), flat(a.dW_ih, s.H * s.I),
           flat(a.dW_hh, s.H * s.H), flat(a.db_ih, s.H), flat(a.db_hh, s.H),
           flat(a.grad_norms, s.T), flat(a.dz, n * s.H)}};
}

// Whether the calls run at the same time, each alone (from the shapes and threads only): two
// or more calls, two or more threads, and no call whose rows the threads would split.
template <typename Args>
bool concurrent_plan(const Args* calls, int n, int threads) {
  if (n < 2 || threads < 2) return false;
  for (int i = 0; i < n; ++i) {
    const RnnShape& s = calls[i].shape;
    if (s.T == 0 || s.B == 0) return false;
    const cpu::RecurrencePlan rp = cpu::plan_recurrence(s.B, s.H, 1, threads);
    if (rp.by_rows && rp.parts > 1) return false;
  }
  return true;
}

// run(i) for every call, each alone on one thread of a region (or, for tests, one after another
// here); run returns false when the call was stopped. Exceptions are carried out of the region.
template <typename F>
void run_each_alone(int n, F&& run) {
  const std::atomic<int>* flag = cpu::stop_flag();
  std::vector<char> ok(size_t(n), 1);
  std::vector<std::exception_ptr> error(static_cast<size_t>(n));
  auto item = [&](int64_t i) {
    cpu::StopScope scope(flag);  // the caller's flag on whichever thread runs the call
    try {
      ok[size_t(i)] = run(int(i));
    } catch (...) {
      error[size_t(i)] = std::current_exception();
    }
  };
  bool done = true;
  if (g_concurrent.load(std::memory_order_relaxed))
    done = cpu::parallel(n, [&](cpu::Team& team) { team.for_each(n, item); });
  else
    for (int i = 0; i < n; ++i) item(i);
  for (const std::exception_ptr& e : error)
    if (e) std::rethrow_exception(e);
  if (!done || std::find(ok.begin(), ok.end(), 0) != ok.end()) throw cpu::Stopped();
}

}  // namespace

void set_concurrent_calls(bool on) { g_concurrent.store(on); }

template <typename T>
void rnn_forward_calls_cpu(const RnnForwardArgs<T>* calls, int n) {
  bool together = concurrent_plan(calls, n, cpu::get_num_threads());
  if (together) {
    std::vector<Access> acc;
    for (int i = 0; i < n; ++i) acc.push_back(access(calls[i]));
    together = independent(acc);
  }
  if (!together) {
    for (int i = 0; i < n; ++i) rnn_forward_cpu(calls[i]);
    return;
  }
  std::vector<std::unique_ptr<Forward<T>>> d;  // scratch taken here, before any work
  for (int i = 0; i < n; ++i) d.emplace_back(new Forward<T>(calls[i], 1));
  run_each_alone(n, [&](int i) {
    if (!cpu::run_schedule(d[size_t(i)]->sc, *d[size_t(i)])) return false;
    copy_h_n(calls[i]);
    return true;
  });
}

template <typename T>
void rnn_backward_calls_cpu(const RnnBackwardArgs<T>* given, int n) {
  if (!concurrent_plan(given, n, cpu::get_num_threads())) {
    for (int i = 0; i < n; ++i) rnn_backward_cpu(given[i]);
    return;
  }
  // A call adding into the grad_x of an earlier call writes its share to scratch instead.
  std::vector<RnnBackwardArgs<T>> calls(given, given + n);
  std::vector<std::unique_ptr<Scratch<T>>> share(static_cast<size_t>(n));
  std::vector<Access> acc;
  for (int j = 0; j < n; ++j) {
    RnnBackwardArgs<T>& c = calls[size_t(j)];
    const RnnShape& s = c.shape;
    for (int i = 0; i < j && c.accumulate_grad_x && c.grad_x; ++i) {
      const RnnShape& o = calls[size_t(i)].shape;
      if (given[i].grad_x != given[j].grad_x || o.T != s.T || o.B != s.B || o.I != s.I) continue;
      share[size_t(j)].reset(new Scratch<T>(s.T * s.B * s.I));
      c.grad_x = share[size_t(j)]->p;
      c.accumulate_grad_x = false;
    }
    acc.push_back(access(c));
  }
  if (!independent(acc)) {
    for (int i = 0; i < n; ++i) rnn_backward_cpu(given[i]);
    return;
  }
  std::vector<std::unique_ptr<Backward<T>>> d;
  for (int i = 0; i < n; ++i) d.emplace_back(new Backward<T>(calls[size_t(i)], 1));
  run_each_alone(n, [&](int i) {
    if (!cpu::run_schedule(d[size_t(i)]->sc, *d[size_t(i)])) return false;
    d[size_t(i)]->finish();
    return true;
  });
  for (int j = 0; j < n; ++j) {
    if (!share[size_t(j)]) continue;
    const int64_t m = given[j].shape.T * given[j].shape.B * given[j].shape.I;
    const T* src = share[size_t(j)]->p;
    T* dst = given[j].grad_x;
    for (int64_t k = 0; k < m; ++k) dst[k] += src[k];
  }
}

// ==================================================================================== layers
// A stack of layers in one direction, each layer's out the next one's x (forward), each
// layer's grad_out the grad_x of the layer above (backward, calls from the top), as a
// wavefront: the steps are cut into chunks, and in round r the k-th call works on chunk r - k
// (forward: the chunk's input projection, then its recurrence; backward: the recurrence, then
// the chunk's weight and input gradients), all on its own plan for one thread. With two
// threads two layers run at the same time, one chunk apart, where each alone is one chain of
// dependent steps (small batch).
namespace {

// Steps per chunk of the wavefront: ~16 chunks (the pipeline's fill and drain cost one chunk
// per layer), at least 16 steps (each round ends in a wait for the other threads).
constexpr int64_t kWaveChunks = 16, kWaveMinSteps = 16;

// The wavefront's chunk steps for these calls, or 0 when they run one after another: two or
// more calls and threads, every call's rows in one part (concurrent_plan), sequences of T
// steps, the same T, B and direction everywhere, and at least two chunks.
template <typename Args>
int64_t wavefront_steps(const Args* calls, int n, int threads) {
  if (!concurrent_plan(calls, n, threads)) return 0;
  const RnnShape& s0 = calls[0].shape;
  for (int i = 0; i < n; ++i) {
    const RnnShape& s = calls[i].shape;
    if (!s.all_full() || s.T != s0.T || s.B != s0.B || s.reverse != s0.reverse) return 0;
  }
  const int64_t steps = std::max(kWaveMinSteps, (s0.T + kWaveChunks - 1) / kWaveChunks);
  return s0.T >= 2 * steps ? steps : 0;
}

// The region of a wavefront over drivers d (made for one thread with chunks of equal steps):
// every driver's work before the loop, the rounds, then every driver's passes after it.
template <typename D, typename F>
void run_wavefront(std::vector<std::unique_ptr<D>>& d, F&& chunk) {
  const int n = int(d.size());
  const int64_t C = d[0]->sc.chunks.count;
  auto each = [&](cpu::Team& team, auto count, auto work) {
    int64_t total = 0;
    for (const auto& x : d) total += count(*x);
    team.for_each(total, [&](int64_t i) {
      int l = 0;
      while (i >= count(*d[size_t(l)])) i -= count(*d[size_t(l++)]);
      work(*d[size_t(l)], i);
    });
  };
  auto body = [&](cpu::Team& team) {
    each(team, [](const D& x) { return x.sc.before; }, [](D& x, int64_t i) { x.before(i); });
    team.for_each_step(C + n - 1, n, [&](int64_t r, int64_t k) {
      if (r - k >= 0 && r - k < C) chunk(*d[size_t(k)], r - k);
    });
    for (int pass = 0; pass < 2; ++pass)
      each(team, [&](const D& x) { return x.sc.after[pass]; },
           [&](D& x, int64_t i) { x.after(pass, i); });
  };
  const bool concurrent = g_concurrent.load(std::memory_order_relaxed);
  if (!cpu::parallel(concurrent ? std::min(n, cpu::get_num_threads()) : 1,
                     [&](cpu::Team& team) { body(team); }))
    throw cpu::Stopped();
}

}  // namespace

template <typename T>
void rnn_forward_layers_cpu(const RnnForwardArgs<T>* calls, int n) {
  const int64_t steps = wavefront_steps(calls, n, cpu::get_num_threads());
  bool wave = steps > 0;
  std::vector<Access> acc;
  for (int l = 0; l < n && wave; ++l) {
    acc.push_back(access(calls[l]));
    if (l == 0) continue;
    const RnnForwardArgs<T>& below = calls[l - 1];
    wave = calls[l].x == below.out && below.ld_out == below.shape.H;
    acc.back().reads[0] = Span();  // x: the layer below's out, written a round earlier
  }
  if (!wave || !independent(acc)) {
    for (int l = 0; l < n; ++l) rnn_forward_cpu(calls[l]);
    return;
  }
  std::vector<std::unique_ptr<Forward<T>>> d;
  for (int l = 0; l < n; ++l) d.emplace_back(new Forward<T>(calls[l], 1, steps));
  run_wavefront(d, [](Forward<T>& f, int64_t c) {
    int64_t i0, i1;
    f.sc.chunks.steps_of(f.sc.T, c, &i0, &i1);
    f.beside(c, 0);
    f.steps(i0, i1, 0, f.B, 0);
  });
  for (int l = 0; l < n; ++l) copy_h_n(calls[l]);
}

template <typename T>
void rnn_backward_layers_cpu(const RnnBackwardArgs<T>* calls, int n) {
  const int64_t steps = wavefront_steps(calls, n, cpu::get_num_threads());
  bool wave = steps > 0;
  std::vector<Access> acc;
  for (int k = 0; k < n && wave; ++k) {
    acc.push_back(access(calls[k]));
    wave = !calls[k].accumulate_grad_x && (k + 1 == n || calls[k].grad_x);
    if (k == 0) continue;
    const RnnBackwardArgs<T>& above = calls[k - 1];
    wave = wave && calls[k].grad_out == above.grad_x && calls[k].ld_grad_out == above.shape.I;
    acc.back().reads[5] = Span();  // grad_out: the layer above's grad_x, written a round earlier
  }
  if (!wave || !independent(acc)) {
    for (int k = 0; k < n; ++k) rnn_backward_cpu(calls[k]);
    return;
  }
  std::vector<std::unique_ptr<Backward<T>>> d;
  for (int k = 0; k < n; ++k) d.emplace_back(new Backward<T>(calls[k], 1, steps));
  run_wavefront(d, [](Backward<T>& b, int64_t c) {
    int64_t i0, i1;
    b.sc.chunks.steps_of(b.sc.T, c, &i0, &i1);
    b.steps(i0, i1, 0, b.B, 0);
    for (int item = 0; item < b.sc.side; ++item) b.beside(c, item);
  });
  for (const auto& b : d) b->finish();
}

// ==================================================================================== matmul
template <typename T>
void matmul_cpu(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const Gemm<T> g{ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, cpu::stop_flag()};
  const int parts = gemm_parts(M, N, K, cpu::get_num_threads());
  const bool done = cpu::parallel(parts, [&](cpu::Team& team) {
    team.for_each(parts, [&](int64_t q) { g.run_part(int(q), parts); });
  });
  if (!done) throw cpu::Stopped();
}

template void matmul_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t);
template void matmul_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                 const double*, int64_t, double, double*, int64_t);
template void rnn_forward_cpu<float>(const RnnForwardArgs<float>&);
template void rnn_forward_cpu<double>(const RnnForwardArgs<double>&);
template void rnn_backward_cpu<float>(const RnnBackwardArgs<float>&);
template void rnn_backward_cpu<double>(const RnnBackwardArgs<double>&);
template void rnn_forward_calls_cpu<float>(const RnnForwardArgs<float>*, int);
template void rnn_forward_calls_cpu<double>(const RnnForwardArgs<double>*, int);
template void rnn_backward_calls_cpu<float>(const RnnBackwardArgs<float>*, int);
template void rnn_backward_calls_cpu<double>(const RnnBackwardArgs<double>*, int);
template void rnn_forward_layers_cpu<float>(const RnnForwardArgs<float>*, int);
template void rnn_forward_layers_cpu<double>(const RnnForwardArgs<double>*, int);
template void rnn_backward_layers_cpu<float>(const RnnBackwardArgs<float>*, int);
template void rnn_backward_layers_cpu<double>(const RnnBackwardArgs<double>*, int);

}  // namespace elman
