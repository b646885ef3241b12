// The CPU kernels that are compiled once per instruction set: vectorized tanh, weight packing,
// one fused step of the recurrence, forward and backward, over a register-blocked tile, and the
// products beside it (A^T B for the weight gradients, A B on packed weights for the input
// projection and dx).
// Included only by kernels_<isa>.cpp, inside that ISA's namespace (see simd.h). No standard
// library templates here: an inline function instantiated in one ISA's file must never be the
// copy the linker hands to another.
//
// Layout and performance choices:
// - W_hh is packed once per call into column panels of nv SIMD vectors (nv = 4, 2 or 1 by what
//   is left of H), k-major, so a tile streams one contiguous row of the panel per k.
// - A tile is M rows x nv vectors of accumulators (M = 6, 8, 8 for nv = 4, 2, 1): each k
//   broadcasts one element of M state rows and does M * nv FMAs. When M * nv is too small to
//   cover the FMA latency (a single sequence), the k loop runs KS independent chains that are
//   summed in a fixed order at the end.
// - The epilogue is fused: bias, input projection and activation (forward), or grad_out, carry,
//   the norm of dh and f' (backward), then one store per vector. Partial vectors use masked
//   loads and stores; nothing is written outside the H columns of a row.
#pragma once

#include <cstdlib>
#include <new>

#include "../rnn_math.h"
#include "kernels.h"
#include "simd.h"

namespace elman {
namespace cpu {
namespace ELMAN_ISA_NS {

template <typename I>
ELMAN_VINLINE I imin(I a, I b) { return a < b ? a : b; }

// ------------------------------------------------------------------------------------ exp, tanh
// e^y for 0 <= y <= 18.5 (float) / 40.5 (double): y = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite),
// e^r by the Cephes polynomial (float) or Pade form (double), times 2^n built in the exponent.
ELMAN_VINLINE Vec<float> exp_pos(Vec<float> y) {
  using V = Vec<float>;
  const V magic = V::set1(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V t = fmadd(y, V::set1(1.44269504088896341f), magic);
  const V n = t - magic;
  V r = fnmadd(n, V::set1(0.693359375f), y);
  r = fnmadd(n, V::set1(-2.12194440e-4f), r);
  // The Cephes polynomial in Estrin's form (three dependent steps instead of five: the
  // recurrence waits for this tanh at every step of a single sequence).
  const V r2 = r * r;
  const V p01 = fmadd(V::set1(1.6666665459E-1f), r, V::set1(5.0000001201E-1f));
  const V p23 = fmadd(V::set1(8.3334519073E-3f), r, V::set1(4.1665795894E-2f));
  const V p45 = fmadd(V::set1(1.9875691500E-4f), r, V::set1(1.3981999507E-3f));
  const V p = fmadd(fmadd(p45, r2, p23), r2, p01);
  const V e = fmadd(p, r2, r) + V::set1(1.0f);
  return e * pow2_from_magic(t);
}

ELMAN_VINLINE Vec<double> exp_pos(Vec<double> y) {
  using V = Vec<double>;
  const V magic = V::set1(6755399441055744.0);  // 1.5 * 2^52
  const V t = fmadd(y, V::set1(1.4426950408889634073599), magic);
  const V n = t - magic;
  V r = fnmadd(n, V::set1(6.93145751953125E-1), y);
  r = fnmadd(n, V::set1(1.42860682030941723212E-6), r);
  const V xx = r * r;
  V p = V::set1(1.26177193074810590878E-4);
  p = fmadd(p, xx, V::set1(3.02994407707441961300E-2));
  p = fmadd(p, xx, V::set1(9.99999999999999999910E-1));
  const V px = r * p;
  V q = V::set1(3.00198505138664455042E-6);
  q = fmadd(q, xx, V::set1(2.52448340349684104192E-3));
  q = fmadd(q, xx, V::set1(2.27265548208155028766E-1));
  q = fmadd(q, xx, V::set1(2.00000000000000000009E0));
  const V e = fmadd(V::set1(2.0), px / (q - px), V::set1(1.0));
  return e * pow2_from_magic(t);
}

// tanh: x + x^3 P(x^2) for |x| < 0.625 (Cephes tanhf; a rational form for double), else
// 1 - 2 / (e^{2|x|} + 1) with the sign of x. |x| is clamped where tanh rounds to exactly 1
// (9.1 float, 20 double), tanh(+-0) = +-0 and subnormals pass through the polynomial exactly,
// NaN returns NaN.
ELMAN_VINLINE Vec<float> vtanh(Vec<float> x) {
  using V = Vec<float>;
  // Both branches on |x|, the sign put back last (so that tanh(-0) = -0).
  const V ax = vabs(x);
  const V z = ax * ax;
  V p = V::set1(-5.70498872745E-3f);
  p = fmadd(p, z, V::set1(2.06390887954E-2f));
  p = fmadd(p, z, V::set1(-5.37397155531E-2f));
  p = fmadd(p, z, V::set1(1.33314422036E-1f));
  p = fmadd(p, z, V::set1(-3.33332819422E-1f));
  const V small = fmadd(p * z, ax, ax);
  V y = vmin(ax, V::set1(9.1f));  // NaN -> 9.1 here; fixed by the last select
  y = y + y;
  const V one = V::set1(1.0f);
  const V large = one - V::set1(2.0f) / (exp_pos(y) + one);
  const V r = vor(select(lt(ax, V::set1(0.625f)), small, large), signbit(x));
  return select(isnan(x), x, r);
}

ELMAN_VINLINE Vec<double> vtanh(Vec<double> x) {
  using V = Vec<double>;
  const V ax = vabs(x);
  const V s = ax * ax;
  V num = V::set1(-9.64399179425052238628E-1);
  num = fmadd(num, s, V::set1(-9.92877231001918586564E1));
  num = fmadd(num, s, V::set1(-1.61468768441708447952E3));
  V den = s + V::set1(1.12811678491632931402E2);
  den = fmadd(den, s, V::set1(2.23548839060100448583E3));
  den = fmadd(den, s, V::set1(4.84406305325125486048E3));
  const V small = ax + (ax * s) * num / den;
  V y = vmin(ax, V::set1(20.0));
  y = y + y;
  const V one = V::set1(1.0);
  const V large = one - V::set1(2.0) / (exp_pos(y) + one);
  const V r = vor(select(lt(ax, V::set1(0.625)), small, large), signbit(x));
  return select(isnan(x), x, r);
}

template <typename T>
void tanh_array(const T* x, T* y, int64_t n) {
  using V = Vec<T>;
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) vtanh(V::load(x + i)).store(y + i);
  if (i < n) vtanh(V::load_first(x + i, int(n - i))).store_first(y + i, int(n - i));
}

// ------------------------------------------------------------------------------------ activations
// relu and both derivatives are rnn_math.h's, on vectors; tanh is the vector tanh above.
template <typename T, Activation A>
ELMAN_VINLINE Vec<T> activate(Vec<T> z) {
  if constexpr (A == Activation::tanh) return vtanh(z);
  else return math::relu(z);
}

template <typename T, Activation A>
ELMAN_VINLINE Vec<T> activation_dz(Vec<T> h, Vec<T> dh) {
  if constexpr (A == Activation::tanh) return math::tanh_dz(h, dh);
  else return math::relu_dz(h, dh);
}

// ------------------------------------------------------------------------------------ packing
template <typename T>
int64_t plan_panels(int64_t N, Panel* out) {
  constexpr int W = Vec<T>::W;
  int64_t count = 0, col = 0, offset_cols = 0;
  while (col < N) {
    const int64_t rem = N - col;
    const int32_t nv = rem > 3 * W ? 4 : (rem > W ? 2 : 1);
    if (out) out[count] = Panel{col, offset_cols, nv};
    ++count;
    col += int64_t(nv) * W;
    offset_cols += int64_t(nv) * W;
  }
  return count;
}

// Panel.offset counts padded columns; the element offset of a panel is offset * K.
template <typename T>
void pack(const T* src, int64_t ld, bool trans, int64_t K, int64_t N, const Panel* panels,
          int64_t first, int64_t last, T* dst) {
  constexpr int W = Vec<T>::W;
  if (!trans) {  // each packed row is a slice of a source row: vector copies, zeros past N
    for (int64_t p = first; p < last; ++p) {
      const Panel& pn = panels[p];
      const int64_t NR = int64_t(pn.nv) * W;
      T* d = dst + pn.offset * K;
      for (int64_t k = 0; k < K; ++k) {
        const T* s = src + k * ld + pn.col;
        for (int64_t c = 0; c < NR; c += W) {
          const int64_t left = N - pn.col - c;
          const Vec<T> v = left >= W ? Vec<T>::load(s + c)
                                     : (left > 0 ? Vec<T>::load_first(s + c, int(left)) : Vec<T>::zero());
          v.store(d + k * NR + c);
        }
      }
    }
    return;
  }
  // The transpose in 8 x 8 tiles: each source row read 8 contiguous elements at a time, each
  // packed row written 8 at a time (element by element, the strided stores made packing W_hh
  // most of a short call's time: ~34 us of a 37 us one-step forward at H = 128).
  constexpr int64_t TB = 8;
  for (int64_t p = first; p < last; ++p) {
    const Panel& pn = panels[p];
    const int64_t NR = int64_t(pn.nv) * W;
    T* d = dst + pn.offset * K;
    for (int64_t k0 = 0; k0 < K; k0 += TB) {
      const int64_t kn = imin(TB, K - k0);
      for (int64_t c0 = 0; c0 < NR; c0 += TB) {
        const int64_t cn = imin(TB, NR - c0);
        T tile[TB][TB];
        if (cn == TB && kn == TB && pn.col + c0 + TB <= N) {  // a whole tile: fixed bounds
          for (int64_t c = 0; c < TB; ++c)
            for (int64_t k = 0; k < TB; ++k) tile[k][c] = src[(pn.col + c0 + c) * ld + k0 + k];
          for (int64_t k = 0; k < TB; ++k)
            for (int64_t c = 0; c < TB; ++c) d[(k0 + k) * NR + c0 + c] = tile[k][c];
          continue;
        }
        for (int64_t c = 0; c < cn; ++c) {
          const int64_t col = pn.col + c0 + c;
          const T* s = src + col * ld + k0;
          for (int64_t k = 0; k < TB; ++k) tile[k][c] = col < N && k < kn ? s[k] : T(0);
        }
        for (int64_t k = 0; k < kn; ++k) {
          T* row = d + (k0 + k) * NR + c0;
          for (int64_t c = 0; c < cn; ++c) row[c] = tile[k][c];
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------ tiles
template <int NV>
constexpr int rows_per_tile() { return NV == 4 ? 6 : 8; }

// acc[r][v] = sum_k a[r][k] * B[k, v-th vector] over one panel (bp: its first element).
template <typename T, int M, int NV>
ELMAN_VINLINE void accumulate(int64_t K, const T* const* a, const T* bp, Vec<T> (&acc)[M][NV]) {
  using V = Vec<T>;
  constexpr int W = V::W, NR = NV * W;
  // Independent k chains so that at least 16 accumulators are in flight (FMA latency x
  // throughput), which matters when a step has a single sequence.
  constexpr int KS = M * NV >= 16 ? 1 : (M * NV >= 8 ? 2 : (M * NV >= 4 ? 4 : 8));
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  if constexpr (KS == 1) {
    for (int64_t k = 0; k < K; ++k) {
      const T* bk = bp + k * NR;
      V b[NV];
      for (int v = 0; v < NV; ++v) b[v] = V::load(bk + v * W);
      for (int r = 0; r < M; ++r) {
        const V av = V::set1(a[r][k]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(av, b[v], acc[r][v]);
      }
    }
  } else {
    V part[KS][M][NV];
    for (int q = 0; q < KS; ++q)
      for (int r = 0; r < M; ++r)
        for (int v = 0; v < NV; ++v) part[q][r][v] = V::zero();
    int64_t k = 0;
    for (; k + KS <= K; k += KS) {
      for (int q = 0; q < KS; ++q) {
        const T* bk = bp + (k + q) * NR;
        for (int r = 0; r < M; ++r) {
          const V av = V::set1(a[r][k + q]);
          for (int v = 0; v < NV; ++v) part[q][r][v] = fmadd(av, V::load(bk + v * W), part[q][r][v]);
        }
      }
    }
    for (; k < K; ++k) {
      const T* bk = bp + k * NR;
      for (int r = 0; r < M; ++r) {
        const V av = V::set1(a[r][k]);
        for (int v = 0; v < NV; ++v) part[0][r][v] = fmadd(av, V::load(bk + v * W), part[0][r][v]);
      }
    }
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) {  // pairwise, in a fixed order
        for (int w = KS / 2; w >= 1; w /= 2)
          for (int q = 0; q < w; ++q) part[q][r][v] = part[q][r][v] + part[q + w][r][v];
        acc[r][v] = part[0][r][v];
      }
  }
}

template <typename T>
ELMAN_VINLINE Vec<T> load_n(const T* p, int n) {
  return n == Vec<T>::W ? Vec<T>::load(p) : Vec<T>::load_first(p, n);
}
template <typename T>
ELMAN_VINLINE void store_n(Vec<T> x, T* p, int n) {
  if (n == Vec<T>::W) x.store(p);
  else x.store_first(p, n);
}
template <typename T>
ELMAN_VINLINE void store_zeros(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = T(0);
}

// The recurrent product of one tile: rows rb..rb+M-1 of A (per-row pointers, else uniform rows
// at stride ld) times one packed panel of W. A missing row (no state yet, or no next step) gets
// exactly 0, never 0 * W: a NaN or Inf in W reaches a sequence only through a state it has,
// whatever rows share its tile (the reference defines the same).
template <typename T, int M, int NV, typename Step>
ELMAN_VINLINE void tile_product(const T* const* rows, const T* uniform, int64_t ld, int64_t rb,
                                const Step& s, const Panel& pn, Vec<T> (&acc)[M][NV]) {
  const T* a[M];
  bool any = false, absent[M];
  for (int r = 0; r < M; ++r) {
    a[r] = rows ? rows[rb + r] : (uniform ? uniform + (rb + r) * ld : nullptr);
    absent[r] = !a[r];
    any = any || a[r];
  }
  if (!any) {
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>::zero();
    return;
  }
  for (int r = 0; r < M; ++r)
    if (absent[r]) a[r] = s.zeros;
  accumulate<T, M, NV>(s.H, a, s.Wp + pn.offset * s.H, acc);
  for (int r = 0; r < M; ++r)
    if (absent[r])
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec<T>::zero();
}

// Asks for the columns of this tile in rows rb..rb+M-1 of the next step's epilogue operand
// (out in forward; grad_out and h in backward) while this step computes: those rows stream from
// memory at a stride of B * H. Only where it pays (prefetch_pays): interleaved runs with 2
// threads measured 3-4% on the backward at (T, B, I, H) = (1000, 16, 64, 128) (8 rows of 128
// per thread) and 1% at (100, 32, 64, 128), but a loss of 1-3% from 32 rows of 256 up, where a
// step's prefetched rows crowd W_hh out of L2; and nothing below H = 64, where a step is too
// short to hide anything and its data is mostly cached.
template <typename T>
ELMAN_VINLINE bool prefetch_pays(int64_t H, int64_t rows) {
  return H >= 64 && rows * H * int64_t(sizeof(T)) <= 16384;
}

template <typename T, int M>
ELMAN_VINLINE void prefetch_rows(const T* p, int64_t ld, int64_t ncol) {
  const int64_t bytes = ncol * int64_t(sizeof(T));
  for (int r = 0; r < M; ++r) {
    const char* row = reinterpret_cast<const char*>(p + r * ld);
    for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch(row + c, 0, 2);
  }
}

template <typename T, Activation A, int NV, int M>
void fwd_tile(const FwdStep<T>& s, const Panel& pn, int64_t rb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  V acc[M][NV];
  const int64_t ncol = imin<int64_t>(int64_t(NV) * W, s.H - pn.col);
  if (s.prefetch_stride) prefetch_rows<T, M>(s.out + s.prefetch_stride + rb * s.ld_out + pn.col, s.ld_out, ncol);
  tile_product<T, M, NV>(s.prev_rows, s.prev, s.ld_prev, rb, s, pn, acc);
  for (int r = 0; r < M; ++r) {
    const int64_t b = rb + r;
    T* o = s.out + b * s.ld_out + pn.col;
    if (s.valid && !s.valid[b]) {
      store_zeros(o, ncol);
      continue;
    }
    for (int v = 0; v < NV && v * W < ncol; ++v) {
      const int n = int(imin<int64_t>(W, ncol - v * W));
      const V xb = load_n(o + v * W, n) + load_n(s.bias + pn.col + v * W, n);
      store_n(activate<T, A>(xb + acc[r][v]), o + v * W, n);
    }
  }
}

template <typename T, Activation A, int NV, int M>
void bwd_tile(const BwdStep<T>& s, const Panel& pn, int64_t rb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  V acc[M][NV];
  const int64_t ncol = imin<int64_t>(int64_t(NV) * W, s.H - pn.col);
  if (s.prefetch_h) {
    prefetch_rows<T, M>(s.h + s.prefetch_h + rb * s.ld_h + pn.col, s.ld_h, ncol);
    if (s.grad_out)
      prefetch_rows<T, M>(s.grad_out + s.prefetch_go + rb * s.ld_grad_out + pn.col, s.ld_grad_out, ncol);
  }
  tile_product<T, M, NV>(s.dzn_rows, s.dzn, s.ld_dzn, rb, s, pn, acc);
  DoubleAcc sq[2] = {dacc_zero(), dacc_zero()};
  for (int r = 0; r < M; ++r) {
    const int64_t b = rb + r;
    T* dz = s.dz + b * s.ld_dz + pn.col;
    if (s.valid && !s.valid[b]) {
      store_zeros(dz, ncol);
      continue;
    }
    const T* go = s.grad_out ? s.grad_out + b * s.ld_grad_out + pn.col : nullptr;
    const T* cr = s.carry_rows ? s.carry_rows[b] : (s.carry ? s.carry + b * s.ld_carry : nullptr);
    if (cr) cr += pn.col;
    const T* h = s.h + b * s.ld_h + pn.col;
    for (int v = 0; v < NV && v * W < ncol; ++v) {
      const int n = int(imin<int64_t>(W, ncol - v * W));
      V dh = acc[r][v];
      if (go) dh = load_n(go + v * W, n) + dh;
      if (cr) dh = dh + load_n(cr + v * W, n);
      if (s.sumsq) add_squares(dh.keep_first(n), sq);
      const V dzv = activation_dz<T, A>(load_n(h + v * W, n), dh);
      store_n(dzv, dz + v * W, n);
      if (s.dbsum) add_to_doubles(s.dbsum + pn.col + v * W, dzv, n);
    }
  }
  if (s.sumsq) *s.sumsq += dacc_sum(sq[0]) + dacc_sum(sq[1]);
}

// Rows [r0, r1) of one panel: full tiles, then one tile of the remaining rows.
#define ELMAN_TILE_SWITCH(TILE, NV, MR, s, pn, r0, r1)                         \
  do {                                                                         \
    int64_t r = r0;                                                            \
    for (; r + MR <= r1; r += MR) TILE<T, A, NV, MR>(s, pn, r);                 \
    switch (r1 - r) {                                                          \
      case 1: TILE<T, A, NV, 1>(s, pn, r); break;                               \
      case 2: TILE<T, A, NV, (MR > 2 ? 2 : 1)>(s, pn, r); break;                \
      case 3: TILE<T, A, NV, (MR > 3 ? 3 : 1)>(s, pn, r); break;                \
      case 4: TILE<T, A, NV, (MR > 4 ? 4 : 1)>(s, pn, r); break;                \
      case 5: TILE<T, A, NV, (MR > 5 ? 5 : 1)>(s, pn, r); break;                \
      case 6: TILE<T, A, NV, (MR > 6 ? 6 : 1)>(s, pn, r); break;                \
      case 7: TILE<T, A, NV, (MR > 7 ? 7 : 1)>(s, pn, r); break;                \
      default: break;                                                          \
    }                                                                          \
  } while (0)

template <typename T, Activation A>
void fwd_step_act(const FwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const Panel& pn = s.panels[p];
    if (pn.nv == 4) ELMAN_TILE_SWITCH(fwd_tile, 4, rows_per_tile<4>(), s, pn, r0, r1);
    else if (pn.nv == 2) ELMAN_TILE_SWITCH(fwd_tile, 2, rows_per_tile<2>(), s, pn, r0, r1);
    else ELMAN_TILE_SWITCH(fwd_tile, 1, rows_per_tile<1>(), s, pn, r0, r1);
  }
}

template <typename T, Activation A>
void bwd_step_act(const BwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const Panel& pn = s.panels[p];
    if (pn.nv == 4) ELMAN_TILE_SWITCH(bwd_tile, 4, rows_per_tile<4>(), s, pn, r0, r1);
    else if (pn.nv == 2) ELMAN_TILE_SWITCH(bwd_tile, 2, rows_per_tile<2>(), s, pn, r0, r1);
    else ELMAN_TILE_SWITCH(bwd_tile, 1, rows_per_tile<1>(), s, pn, r0, r1);
  }
}
#undef ELMAN_TILE_SWITCH

// Every step of a direction for rows [r0, r1) when every sequence has all T steps: the loop
// over time runs here, so a step costs no dispatch. s describes the first processed step;
// each next step's out rows are out_stride elements further and read the previous ones.
// The latency-bound case of a state that fits one vector (H <= W): the state stays in a
// register from step to step and each step is one short chain (broadcast, FMAs summed in a
// fixed pairwise order, activation), with no per-step call or tile setup.
template <typename T, Activation A>
void fwd_steps_one_vector(const FwdStep<T>& s, int64_t n, int64_t out_stride, int64_t b) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int H = int(s.H);
  const T* Wp = s.Wp;  // one panel: row k at Wp + k * W (zeros past H)
  const V bias = V::load_first(s.bias, H);
  V h = s.prev ? V::load_first(s.prev + b * s.ld_prev, H) : V::zero();
  bool has_state = s.prev != nullptr;  // without h0 the first step has no product (tile_product)
  alignas(64) T hb[W < 4 ? 4 : W] = {};  // at least 4, the unroll of the loop below
  T* o = s.out + b * s.ld_out;
  for (int64_t i = 0; i < n; ++i, o += out_stride) {
    V sum = V::zero();
    if (has_state) {
      h.store(hb);
      V c[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
      int k = 0;
      for (; k + 4 <= H; k += 4)
        for (int q = 0; q < 4; ++q) c[q] = fmadd(V::set1(hb[k + q]), V::load(Wp + (k + q) * W), c[q]);
      for (; k < H; ++k) c[0] = fmadd(V::set1(hb[k]), V::load(Wp + k * W), c[0]);
      sum = (c[0] + c[1]) + (c[2] + c[3]);
    }
    const V xb = V::load_first(o, H) + bias;
    h = activate<T, A>(xb + sum);
    h.store_first(o, H);
    has_state = true;
  }
}

template <typename T, Activation A>
void fwd_steps_act(FwdStep<T> s, int64_t n, int64_t out_stride, int64_t r0, int64_t r1) {
  if (s.H <= Vec<T>::W && r1 - r0 == 1) {  // several rows: the tiles interleave them instead
    fwd_steps_one_vector<T, A>(s, n, out_stride, r0);
    return;
  }
  const bool pf = prefetch_pays<T>(s.H, r1 - r0);
  for (int64_t i = 0; i < n; ++i) {
    s.prefetch_stride = pf && i + 1 < n ? out_stride : 0;
    fwd_step_act<T, A>(s, r0, r1, 0, s.npanels);
    s.prev = s.out;
    s.ld_prev = s.ld_out;
    s.out += out_stride;
  }
}

// The same for backward: s describes the last step (processed first); each next one moves
// grad_out, h and dz by their strides and takes the previous dz as dz_next (no carry).
template <typename T, Activation A>
void bwd_steps_act(BwdStep<T> s, int64_t n, int64_t go_stride, int64_t h_stride, int64_t dz_stride,
                   int64_t sumsq_stride, int64_t r0, int64_t r1) {
  const bool pf = prefetch_pays<T>(s.H, r1 - r0);
  for (int64_t i = 0; i < n; ++i) {
    s.prefetch_go = pf && i + 1 < n ? go_stride : 0;
    s.prefetch_h = pf && i + 1 < n ? h_stride : 0;
    bwd_step_act<T, A>(s, r0, r1, 0, s.npanels);
    s.dzn = s.dz;
    s.ld_dzn = s.ld_dz;
    s.carry = nullptr;
    if (s.grad_out) s.grad_out += go_stride;
    s.h += h_stride;
    s.dz += dz_stride;
    if (s.sumsq) s.sumsq += sumsq_stride;
  }
}

template <typename T>
void fwd_steps(const FwdStep<T>& s, int64_t n, int64_t out_stride, int64_t r0, int64_t r1) {
  if (s.act == Activation::tanh) fwd_steps_act<T, Activation::tanh>(s, n, out_stride, r0, r1);
  else fwd_steps_act<T, Activation::relu>(s, n, out_stride, r0, r1);
}

template <typename T>
void bwd_steps(const BwdStep<T>& s, int64_t n, int64_t go_stride, int64_t h_stride, int64_t dz_stride,
               int64_t sumsq_stride, int64_t r0, int64_t r1) {
  if (s.act == Activation::tanh)
    bwd_steps_act<T, Activation::tanh>(s, n, go_stride, h_stride, dz_stride, sumsq_stride, r0, r1);
  else
    bwd_steps_act<T, Activation::relu>(s, n, go_stride, h_stride, dz_stride, sumsq_stride, r0, r1);
}

template <typename T>
void fwd_step(const FwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  if (s.act == Activation::tanh) fwd_step_act<T, Activation::tanh>(s, r0, r1, p0, p1);
  else fwd_step_act<T, Activation::relu>(s, r0, r1, p0, p1);
}

template <typename T>
void bwd_step(const BwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  if (s.act == Activation::tanh) bwd_step_act<T, Activation::tanh>(s, r0, r1, p0, p1);
  else bwd_step_act<T, Activation::relu>(s, r0, r1, p0, p1);
}

// ------------------------------------------------------------------------------------ A^T B
// The weight gradients: long sums over K = T*B rows of two operands that are both row-major
// with K as the row index. Per block of KC rows of K: A's block is packed tile-major (MR
// consecutive columns of A per k, contiguous), then for every column panel of each B its
// block is packed k-major (NR contiguous per k) and every row tile of C runs its k loop with
// the tile in registers. The B panel block (KC x NR) stays in L1 across the row tiles; A's
// block stays in L2 across the panels.
template <typename T, int NV>
void tn_tile(int64_t kn, const T* ap, const T* bp, T* c, int64_t ldc, int rows, int64_t ncols) {
  using V = Vec<T>;
  constexpr int W = V::W, MR = rows_per_tile<4>(), NR = NV * W;
  V acc[MR][NV];
  const int nlast = int(ncols - (NV - 1) * W);  // lanes used in the last vector (1..W)
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  for (int64_t k = 0; k < kn; ++k) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = V::load(bp + k * NR + v * W);
    for (int r = 0; r < MR; ++r) {
      const V av = V::set1(ap[k * MR + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    T* cr = c + r * ldc;
    for (int v = 0; v < NV - 1; ++v) (V::load(cr + v * W) + acc[r][v]).store(cr + v * W);
    store_n(load_n(cr + (NV - 1) * W, nlast) + acc[r][NV - 1], cr + (NV - 1) * W, nlast);
  }
}

template <typename T>
void tn_product_direct(const T* A, int64_t lda, int64_t m0, int64_t m1, const TnTarget<T>* targets,
                int32_t ntargets);
template <typename T>
void tn_product(const T* A, int64_t lda, int64_t m0, int64_t m1, const TnTarget<T>* targets,
                int32_t ntargets) {
  // Packing A and B pays once each thread owns at least 128 rows of the result (measured:
  // direct 189-201 GFLOP/s vs packed 155-165 at 64 rows; packed 181-213 vs direct 159-175 at
  // 128-512 rows, one AVX-512 core).
  if (m1 - m0 < 128) return tn_product_direct(A, lda, m0, m1, targets, ntargets);
  constexpr int W = Vec<T>::W, MR = rows_per_tile<4>();
  constexpr int64_t KC = 192;
  const int64_t M = m1 - m0;
  if (M <= 0) return;
  const int64_t tiles = (M + MR - 1) / MR;
  int64_t kmax = 0;
  for (int32_t i = 0; i < ntargets; ++i) kmax = targets[i].k1 > kmax ? targets[i].k1 : kmax;
  // This runs inside a parallel region, where an exception cannot be let out (a worker would
  // terminate the process, and the region would lose its items): when even these small packing
  // buffers cannot be had, the direct product (no scratch at all) computes the same sums, in
  // another rounding order.
  auto alloc64 = [](int64_t n) {  // aligned_alloc wants a multiple of the alignment
    return static_cast<T*>(std::aligned_alloc(64, (size_t(n) * sizeof(T) + 63) / 64 * 64));
  };
  T* apack = alloc64(KC * tiles * MR);
  T* bpack = alloc64(KC * 4 * W);
  if (!apack || !bpack) {
    std::free(apack);
    std::free(bpack);
    return tn_product_direct(A, lda, m0, m1, targets, ntargets);
  }
  for (int64_t kb = 0; kb < kmax; kb += KC) {
    const int64_t kc = imin(KC, kmax - kb);
    int64_t klo = kmax, khi = 0;  // rows of this block that some target uses
    for (int32_t i = 0; i < ntargets; ++i) {
      const int64_t a0 = kb > targets[i].k0 ? kb : targets[i].k0, a1 = imin(kb + kc, targets[i].k1);
      if (a0 < a1) {
        klo = a0 < klo ? a0 : klo;
        khi = a1 > khi ? a1 : khi;
      }
    }
    if (klo >= khi) continue;
    for (int64_t tI = 0; tI < tiles; ++tI) {  // pack A rows [klo, khi), tile-major
      T* d = apack + tI * KC * MR;
      const int64_t mb = m0 + tI * MR;
      const int valid = int(imin<int64_t>(MR, m1 - mb));
      if (MR <= Vec<T>::W) {  // one masked vector per k (zeros past the last row)
        for (int64_t k = klo; k < khi; ++k)
          Vec<T>::load_first(A + k * lda + mb, valid).store_first(d + (k - kb) * MR, MR);
      } else {
        for (int64_t k = klo; k < khi; ++k) {
          const T* src = A + k * lda + mb;
          T* dk = d + (k - kb) * MR;
          for (int r = 0; r < MR; ++r) dk[r] = r < valid ? src[r] : T(0);
        }
      }
    }
    for (int32_t i = 0; i < ntargets; ++i) {
      const TnTarget<T>& t = targets[i];
      const int64_t k0 = kb > t.k0 ? kb : t.k0, k1 = imin(kb + kc, t.k1);
      if (k0 >= k1) continue;
      for (int64_t n = 0; n < t.N;) {
        const int64_t rem = t.N - n;
        const int nv = rem > 3 * W ? 4 : (rem > W ? 2 : 1);
        const int64_t nc = imin<int64_t>(int64_t(nv) * W, rem), NR = int64_t(nv) * W;
        for (int64_t k = k0; k < k1; ++k) {  // pack this panel's block of B, k-major
          const T* src = t.B + (k - t.k0) * t.ldb + n;
          T* dk = bpack + (k - k0) * NR;
          for (int64_t c = 0; c < NR; c += W) {
            const int64_t left = nc - c;
            (left >= W ? Vec<T>::load(src + c)
                       : Vec<T>::load_first(src + c, int(left > 0 ? left : 0))).store(dk + c);
          }
        }
        for (int64_t tI = 0; tI < tiles; ++tI) {
          const int64_t mb = m0 + tI * MR;
          const int rows = int(imin<int64_t>(MR, m1 - mb));
          const T* ap = apack + tI * KC * MR + (k0 - kb) * MR;
          T* c = t.C + mb * t.ldc + n;
          if (nv == 4) tn_tile<T, 4>(k1 - k0, ap, bpack, c, t.ldc, rows, nc);
          else if (nv == 2) tn_tile<T, 2>(k1 - k0, ap, bpack, c, t.ldc, rows, nc);
          else tn_tile<T, 1>(k1 - k0, ap, bpack, c, t.ldc, rows, nc);
        }
        n += nc;
      }
    }
  }
  std::free(apack);
  std::free(bpack);
}

// The same product without packing (for narrow results, where packing does not pay).
template <typename T, int M, int NV>
void tn_tile_direct(int64_t kn, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
             int64_t ncols) {
  using V = Vec<T>;
  constexpr int W = V::W;
  V acc[M][NV];
  const int nlast = int(ncols - (NV - 1) * W);  // lanes used in the last vector (1..W)
  for (int r = 0; r < M; ++r) {
    for (int v = 0; v < NV - 1; ++v) acc[r][v] = V::load(c + r * ldc + v * W);
    acc[r][NV - 1] = load_n(c + r * ldc + (NV - 1) * W, nlast);
  }
  if (nlast == W) {
    for (int64_t k = 0; k < kn; ++k) {
      const T* bk = b + k * ldb;
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = V::load(bk + v * W);
      const T* ak = a + k * lda;
      for (int r = 0; r < M; ++r) {
        const V av = V::set1(ak[r]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(av, bv[v], acc[r][v]);
      }
    }
  } else {
    for (int64_t k = 0; k < kn; ++k) {
      const T* bk = b + k * ldb;
      V bv[NV];
      for (int v = 0; v < NV - 1; ++v) bv[v] = V::load(bk + v * W);
      bv[NV - 1] = V::load_first(bk + (NV - 1) * W, nlast);
      const T* ak = a + k * lda;
      for (int r = 0; r < M; ++r) {
        const V av = V::set1(ak[r]);
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(av, bv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < M; ++r) {
    for (int v = 0; v < NV - 1; ++v) acc[r][v].store(c + r * ldc + v * W);
    store_n(acc[r][NV - 1], c + r * ldc + (NV - 1) * W, nlast);
  }
}

template <typename T, int NV>
void tn_rows_direct(int64_t kn, const T* a, int64_t lda, int64_t m0, int64_t m1, const T* b, int64_t ldb,
             T* c, int64_t ldc, int64_t ncols) {
  constexpr int MR = rows_per_tile<NV>();
  int64_t m = m0;
  for (; m + MR <= m1; m += MR) tn_tile_direct<T, MR, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols);
  switch (m1 - m) {
    case 1: tn_tile_direct<T, 1, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 2: tn_tile_direct<T, 2, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 3: tn_tile_direct<T, 3, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 4: tn_tile_direct<T, 4, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 5: tn_tile_direct<T, 5, NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 6: tn_tile_direct<T, (MR > 6 ? 6 : 1), NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    case 7: tn_tile_direct<T, (MR > 7 ? 7 : 1), NV>(kn, a + m, lda, b, ldb, c + m * ldc, ldc, ncols); break;
    default: break;
  }
}

template <typename T>
void tn_product_direct(const T* A, int64_t lda, int64_t m0, int64_t m1, const TnTarget<T>* targets,
                int32_t ntargets) {
  constexpr int W = Vec<T>::W;
  constexpr int64_t KC = 128, MC = 96;
  int64_t kmax = 0;
  for (int32_t i = 0; i < ntargets; ++i) kmax = targets[i].k1 > kmax ? targets[i].k1 : kmax;
  for (int64_t mb = m0; mb < m1; mb += MC) {
    const int64_t me = imin(m1, mb + MC);
    for (int64_t kb = 0; kb < kmax; kb += KC) {
      for (int32_t i = 0; i < ntargets; ++i) {
        const TnTarget<T>& t = targets[i];
        const int64_t k0 = kb > t.k0 ? kb : t.k0, k1 = imin(kb + KC, t.k1);
        if (k0 >= k1) continue;
        const T* a = A + k0 * lda;
        const T* b = t.B + (k0 - t.k0) * t.ldb;
        for (int64_t n = 0; n < t.N;) {
          const int64_t rem = t.N - n;
          if (rem > 3 * W) {
            const int64_t nc = imin<int64_t>(4 * W, rem);
            tn_rows_direct<T, 4>(k1 - k0, a, lda, mb, me, b + n, t.ldb, t.C + n, t.ldc, nc);
            n += nc;
          } else if (rem > W) {
            const int64_t nc = imin<int64_t>(2 * W, rem);
            tn_rows_direct<T, 2>(k1 - k0, a, lda, mb, me, b + n, t.ldb, t.C + n, t.ldc, nc);
            n += nc;
          } else {
            tn_rows_direct<T, 1>(k1 - k0, a, lda, mb, me, b + n, t.ldb, t.C + n, t.ldc, rem);
            n += rem;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------ A B
// One register tile of rows rb..rb+M-1 of C = A B over one packed panel of B.
template <typename T, int M, int NV>
void nn_tile(const T* A, int64_t lda, int64_t rb, int64_t K, const Panel& pn, const T* Bp, int64_t N,
             T* C, int64_t ldc, bool accumulate_c) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const T* a[M];
  for (int r = 0; r < M; ++r) a[r] = A + (rb + r) * lda;
  V acc[M][NV];
  accumulate<T, M, NV>(K, a, Bp + pn.offset * K, acc);
  const int64_t ncol = imin<int64_t>(int64_t(NV) * W, N - pn.col);
  for (int r = 0; r < M; ++r) {
    T* c = C + (rb + r) * ldc + pn.col;
    for (int v = 0; v < NV && v * W < ncol; ++v) {
      const int n = int(imin<int64_t>(W, ncol - v * W));
      store_n(accumulate_c ? load_n(c + v * W, n) + acc[r][v] : acc[r][v], c + v * W, n);
    }
  }
}

template <typename T, int NV>
void nn_panel(const T* A, int64_t lda, int64_t r0, int64_t r1, int64_t K, const Panel& pn, const T* Bp,
              int64_t N, T* C, int64_t ldc, bool acc) {
  constexpr int MR = rows_per_tile<NV>();
  int64_t r = r0;
  for (; r + MR <= r1; r += MR) nn_tile<T, MR, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc);
  switch (r1 - r) {
    case 1: nn_tile<T, 1, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 2: nn_tile<T, 2, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 3: nn_tile<T, 3, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 4: nn_tile<T, 4, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 5: nn_tile<T, 5, NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 6: nn_tile<T, (MR > 6 ? 6 : 1), NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    case 7: nn_tile<T, (MR > 7 ? 7 : 1), NV>(A, lda, r, K, pn, Bp, N, C, ldc, acc); break;
    default: break;
  }
}

// Panel by panel (the panel, K x up to 4 vectors, stays in L1 across the row tiles).
template <typename T>
void nn_rows(const T* A, int64_t lda, int64_t r0, int64_t r1, int64_t K, const Panel* panels,
             int64_t npanels, const T* Bp, int64_t N, T* C, int64_t ldc, bool accumulate_c) {
  for (int64_t p = 0; p < npanels; ++p) {
    const Panel& pn = panels[p];
    if (pn.nv == 4) nn_panel<T, 4>(A, lda, r0, r1, K, pn, Bp, N, C, ldc, accumulate_c);
    else if (pn.nv == 2) nn_panel<T, 2>(A, lda, r0, r1, K, pn, Bp, N, C, ldc, accumulate_c);
    else nn_panel<T, 1>(A, lda, r0, r1, K, pn, Bp, N, C, ldc, accumulate_c);
  }
}

// ------------------------------------------------------------------------------------ cell
// y[j] += dot(W[j, :], v) for j in [0, rows): four rows at a time share the loads of v.
template <typename T>
void matvec_add(const T* W, int64_t rows, int64_t cols, const T* v, T* y) {
  using V = Vec<T>;
  constexpr int W_ = V::W;
  int64_t j = 0;
  for (; j + 4 <= rows; j += 4) {
    V a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
    const T *w0 = W + j * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
    int64_t k = 0;
    for (; k + W_ <= cols; k += W_) {
      const V vk = V::load(v + k);
      a0 = fmadd(V::load(w0 + k), vk, a0);
      a1 = fmadd(V::load(w1 + k), vk, a1);
      a2 = fmadd(V::load(w2 + k), vk, a2);
      a3 = fmadd(V::load(w3 + k), vk, a3);
    }
    if (k < cols) {
      const int n = int(cols - k);
      const V vk = V::load_first(v + k, n);
      a0 = fmadd(V::load_first(w0 + k, n), vk, a0);
      a1 = fmadd(V::load_first(w1 + k, n), vk, a1);
      a2 = fmadd(V::load_first(w2 + k, n), vk, a2);
      a3 = fmadd(V::load_first(w3 + k, n), vk, a3);
    }
    y[j] += hsum(a0);
    y[j + 1] += hsum(a1);
    y[j + 2] += hsum(a2);
    y[j + 3] += hsum(a3);
  }
  for (; j < rows; ++j) {
    V a0 = V::zero();
    const T* w0 = W + j * cols;
    int64_t k = 0;
    for (; k + W_ <= cols; k += W_) a0 = fmadd(V::load(w0 + k), V::load(v + k), a0);
    if (k < cols) a0 = fmadd(V::load_first(w0 + k, int(cols - k)), V::load_first(v + k, int(cols - k)), a0);
    y[j] += hsum(a0);
  }
}

template <typename T>
void cell_step(int64_t B, int64_t I, int64_t H, Activation act, const T* x, const T* h,
               const T* W_ih, const T* W_hh, const T* b_ih, const T* b_hh, T* h1) {
  for (int64_t b = 0; b < B; ++b) {
    T* o = h1 + b * H;
    for (int64_t j = 0; j < H; ++j) o[j] = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
    matvec_add(W_ih, H, I, x + b * I, o);
    if (h) matvec_add(W_hh, H, H, h + b * H, o);
    int64_t j = 0;
    for (; j + Vec<T>::W <= H; j += Vec<T>::W) {
      const Vec<T> z = Vec<T>::load(o + j);
      (act == Activation::tanh ? vtanh(z) : activate<T, Activation::relu>(z)).store(o + j);
    }
    if (j < H) {
      const int n = int(H - j);
      const Vec<T> z = Vec<T>::load_first(o + j, n);
      (act == Activation::tanh ? vtanh(z) : activate<T, Activation::relu>(z)).store_first(o + j, n);
    }
  }
}

template <typename T>
const Kernels<T>& make_table(Isa isa) {
  static const Kernels<T> table = {isa,           rows_per_tile<4>(), Vec<T>::W,    &plan_panels<T>,
                                   &pack<T>,      &fwd_step<T>,       &bwd_step<T>, &fwd_steps<T>,
                                   &bwd_steps<T>, &tanh_array<T>,     &cell_step<T>, &tn_product<T>,
                                   &nn_rows<T>};
  return table;
}

}  // namespace ELMAN_ISA_NS
}  // namespace cpu
}  // namespace elman
