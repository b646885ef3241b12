// The per-instruction-set kernel table of the CPU backend: one step of the recurrence (forward
// and backward), weight packing and the vectorized tanh, compiled once per ISA level
// (kernels_{baseline,avx2,avx512}.cpp) and chosen at import time (dispatch.cpp).
// Plain structs and function pointers only: this header is shared by code built for different
// instruction sets.
#pragma once
#include <cstdint>

#include "../rnn.h"

namespace elman {
namespace cpu {

enum class Isa : int32_t { baseline = 0, avx2 = 1, avx512 = 2 };

// A column panel of a packed B matrix [K, N]: columns [col, col + nv * W) stored k-major as
// dst[offset + k * nv * W + c] (columns past N are zero).
struct Panel {
  int64_t col;
  int64_t offset;  // padded columns before this panel (its data starts at offset * K)
  int32_t nv;      // vectors per row of the panel
};

// One forward step over rows [r0, r1) and panels [p0, p1):
//   out[b, j] = f(out[b, j] + bias[j] + sum_k prev_b[k] * W_hh[j, k])   (out holds x W_ih^T)
// for valid rows; invalid rows get 0.
template <typename T>
struct FwdStep {
  int64_t H = 0;
  Activation act = Activation::tanh;
  const Panel* panels = nullptr;
  int64_t npanels = 0;
  const T* Wp = nullptr;                // packed W_hh^T: element (k, j) = W_hh[j, k]
  const T* bias = nullptr;              // [H] b_ih + b_hh
  const T* zeros = nullptr;             // [H] zeros (the state of rows without a predecessor)
  const T* prev = nullptr;              // row b at prev + b * ld_prev; nullptr: zero state
  int64_t ld_prev = 0;
  const T* const* prev_rows = nullptr;  // [B] per-row prev (overrides prev); nullptr entries: zero state
  T* out = nullptr;                     // row b at out + b * ld_out
  int64_t ld_out = 0;
  const uint8_t* valid = nullptr;       // [B] or nullptr: all rows valid
  int64_t prefetch_stride = 0;          // elements from out to the next step's out (0: none)
};

// One backward step over rows [r0, r1) and panels [p0, p1):
//   dh[b, k] = grad_out[b, k] + carry[b, k] + sum_j dz_next_b[j] * W_hh[j, k]
//   dz[b, k] = f'(h[b, k]) * dh[b, k]      (0 for invalid rows)
// and sum of dh^2 over valid rows and these panels' columns is added to *sumsq, and the column
// sums of dz over valid rows (the bias gradient) to dbsum.
template <typename T>
struct BwdStep {
  int64_t H = 0;
  Activation act = Activation::tanh;
  const Panel* panels = nullptr;
  int64_t npanels = 0;
  const T* Wp = nullptr;                // packed W_hh: element (j, k) = W_hh[j, k]
  const T* zeros = nullptr;             // [H] zeros
  const T* dzn = nullptr;               // rows of the next step's dz, or nullptr (none)
  int64_t ld_dzn = 0;
  const T* const* dzn_rows = nullptr;   // per-row override; nullptr entries: none
  const T* carry = nullptr;             // rows added to dh (grad_h_n at a sequence's last step)
  int64_t ld_carry = 0;
  const T* const* carry_rows = nullptr; // per-row override; nullptr entries: none
  const T* grad_out = nullptr;          // or nullptr
  int64_t ld_grad_out = 0;
  const T* h = nullptr;                 // the step's outputs f(z)
  int64_t ld_h = 0;
  T* dz = nullptr;
  int64_t ld_dz = 0;
  const uint8_t* valid = nullptr;
  double* sumsq = nullptr;              // nullptr: norms not wanted
  double* dbsum = nullptr;              // [H] column sums of dz over valid rows are added, or nullptr
  int64_t prefetch_go = 0, prefetch_h = 0;  // elements to the next step's grad_out, h (0: none)
};

// One right-hand side of a transposed product that shares its left operand A [K, M]:
//   C[m, n] += sum_{k in [k0, k1)} A[k, m] * B[k - k0, n]     (C [M, N], B rows from k0 on)
// Used for the weight gradients dW_ih = dZ^T X and dW_hh = dZ^T H_prev in one pass over dZ.
template <typename T>
struct TnTarget {
  const T* B = nullptr;
  int64_t ldb = 0;
  int64_t N = 0;
  int64_t k0 = 0, k1 = 0;
  T* C = nullptr;
  int64_t ldc = 0;
};

template <typename T>
struct Kernels {
  Isa isa;
  int32_t mr;                 // rows per register tile
  int32_t width;              // SIMD lanes
  // Panels covering N columns; writes them to out (if not nullptr), returns how many.
  int64_t (*plan_panels)(int64_t N, Panel* out);
  // Packs panels [first, last) of B [K, N]: element (k, n) = trans ? src[n * ld + k] :
  // src[k * ld + n]; panel p starts at dst + panels[p].offset * K.
  void (*pack)(const T* src, int64_t ld, bool trans, int64_t K, int64_t N, const Panel* panels,
               int64_t first, int64_t last, T* dst);
  void (*fwd_step)(const FwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
  void (*bwd_step)(const BwdStep<T>& s, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
  // n consecutive steps over rows [r0, r1) and every panel, for sequences that all have T
  // steps: s is the first processed step; the strides (in elements) move its pointers on.
  void (*fwd_steps)(const FwdStep<T>& s, int64_t n, int64_t out_stride, int64_t r0, int64_t r1);
  void (*bwd_steps)(const BwdStep<T>& s, int64_t n, int64_t go_stride, int64_t h_stride,
                    int64_t dz_stride, int64_t sumsq_stride, int64_t r0, int64_t r1);
  void (*tanh)(const T* x, T* y, int64_t n);
  // One step of an RNNCell for a few rows (streaming inference): for each of B rows,
  //   h1[b] = f(b_ih + b_hh + W_ih x[b] + W_hh h[b])   (h may be nullptr: zero state)
  // with W_ih [H, I], W_hh [H, H] read row by row (dot products), no packing.
  void (*cell_step)(int64_t B, int64_t I, int64_t H, Activation act, const T* x, const T* h,
                    const T* W_ih, const T* W_hh, const T* b_ih, const T* b_hh, T* h1);
  // Rows [m0, m1) of every target's C (see TnTarget), A [K, M] with row stride lda.
  void (*tn_product)(const T* A, int64_t lda, int64_t m0, int64_t m1, const TnTarget<T>* targets,
                     int32_t ntargets);
  // Rows [r0, r1) of C [., N] = (or +=, with accumulate) A [., K] times B [K, N], B packed in
  // the panels of N columns (pack with trans = false): the input gradient dZ W_ih.
  void (*nn_rows)(const T* A, int64_t lda, int64_t r0, int64_t r1, int64_t K, const Panel* panels,
                  int64_t npanels, const T* Bp, int64_t N, T* C, int64_t ldc, bool accumulate);
};

// The table for the active ISA level (the best this CPU supports, or lower when the
// ELMAN_ISA environment variable asks for it).
const Kernels<float>& kernels_f32();
const Kernels<double>& kernels_f64();
template <typename T>
const Kernels<T>& kernels();

Isa active_isa();
Isa best_supported_isa();
const char* isa_name(Isa isa);
// Switches the active level (tests and benchmarks); returns false if the CPU lacks it.
bool set_active_isa(Isa isa);

// Defined by each per-ISA file.
namespace baseline { const Kernels<float>& table_f32(); const Kernels<double>& table_f64(); }
namespace avx2 { const Kernels<float>& table_f32(); const Kernels<double>& table_f64(); }
namespace avx512 { const Kernels<float>& table_f32(); const Kernels<double>& table_f64(); }

}  // namespace cpu
}  // namespace elman
