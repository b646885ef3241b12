// Math shared by every backend (C++, SIMD and CUDA): the activations and their derivatives
// computed from the activation's output h, so that no backend can drift from another.
// Each function is written once, as a template over its number type V: a float or double
// (scalar code, CUDA kernels), or a SIMD vector of the CPU kernels (cpu/simd.h's Vec<T>, which
// provides the same primitives lt, le, select, fnmadd and splat, found by argument-dependent
// lookup). Both forms round exactly as written: no fused operation appears that the text does
// not ask for.
#pragma once
#include "rnn.h"

// Internal linkage on purpose: each translation unit (one per instruction set on the CPU)
// gets its own copy, so the linker can never hand an AVX-512 copy to the baseline code. Always
// inlined in C++: the SIMD kernels call these on vectors in their innermost loops, and a call
// left to the inliner's judgment changed the kernels' register allocation.
#if defined(__CUDACC__)
#define ELMAN_MATH static inline ELMAN_HD
#else
#define ELMAN_MATH static inline __attribute__((always_inline))
#endif

namespace elman {
namespace math {

// ------------------------------------------------------------------------------ scalar primitives
// The scalar forms of the primitives the templates below are written in (a vector type brings
// its own: cpu/simd.h).
ELMAN_MATH bool lt(float a, float b) { return a < b; }
ELMAN_MATH bool lt(double a, double b) { return a < b; }
ELMAN_MATH bool le(float a, float b) { return a <= b; }
ELMAN_MATH bool le(double a, double b) { return a <= b; }
// select(m, a, b) = m ? a : b
ELMAN_MATH float select(bool m, float a, float b) { return m ? a : b; }
ELMAN_MATH double select(bool m, double a, double b) { return m ? a : b; }
// c - a * b: two roundings here (CUDA builds with --fmad=false); a vector form may fuse them
// where its instruction set has a fused multiply-add.
ELMAN_MATH float fnmadd(float a, float b, float c) { return c - a * b; }
ELMAN_MATH double fnmadd(double a, double b, double c) { return c - a * b; }
// The constant c in the type of x (a vector form broadcasts it to every lane).
ELMAN_MATH float splat(float, float c) { return c; }
ELMAN_MATH double splat(double, double c) { return c; }

// ------------------------------------------------------------------------------ activations
// relu(z) = z unless z < 0: NaN stays NaN (as torch), -0 stays -0.
template <typename V>
ELMAN_MATH V relu(V z) {
  return select(lt(z, splat(z, 0)), splat(z, 0), z);
}

// dL/dz from dL/dh and h = f(z).
//   tanh: dh * (1 - h^2)       (exactly 0 at saturation h = +-1)
//   relu: h <= 0 ? 0 : dh      (a select, not a product, as torch's threshold_backward:
//                               an infinite dh at an inactive unit gives 0, not NaN; h = NaN
//                               passes dh through)
template <typename V>
ELMAN_MATH V tanh_dz(V h, V dh) {
  return dh * fnmadd(h, h, splat(h, 1));
}
template <typename V>
ELMAN_MATH V relu_dz(V h, V dh) {
  return select(le(h, splat(h, 0)), splat(h, 0), dh);
}

}  // namespace math
}  // namespace elman
