// The drivers of the CPU schedule (schedule.h) for one call of one layer in one direction:
// Forward and Backward say what each piece of a call's work is; rnn_cpu.cpp runs one call,
// calls_cpu.cpp several at once (directions side by side, layers as a wavefront).
//   forward:  W_hh packed once, then per step the register-blocked recurrent product with bias
//             and activation fused (step_kernels.h); the input projection x W_ih^T either one
//             chunk of steps ahead of the recurrence (nn_rows on a packed W_ih^T) or as one BLAS
//             product over all T*B rows first, written straight into out;
//   backward: per step (reverse order) the product with W_hh fused with grad_out, f' and the
//             norm of dL/dh_t; dW_ih and dW_hh (tn_product) and dX (nn_rows) either one chunk
//             behind the recurrence or after the loop (dX then through the BLAS); grad_h0 and db.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "../rnn.h"
#include "kernels.h"
#include "schedule.h"
#include "threads.h"

namespace elman {
namespace cpu {

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

}  // namespace cpu
}  // namespace elman
