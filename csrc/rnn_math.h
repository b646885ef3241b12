// Scalar math shared by every backend (C++ and CUDA): the activations and their derivatives
// computed from the activation's output h, so that no backend can drift from another.
#pragma once
#include "rnn.h"

#if defined(__CUDACC__)
#define ELMAN_HD __host__ __device__
#else
#define ELMAN_HD
#endif
// Internal linkage on purpose: each translation unit (one per instruction set on the CPU)
// gets its own copy, so the linker can never hand an AVX-512 copy to the baseline code.
#define ELMAN_MATH static inline ELMAN_HD

namespace elman {
namespace math {

// relu(z) = z unless z < 0: NaN stays NaN (as torch), -0 stays -0.
template <typename T>
ELMAN_MATH T relu(T z) {
  return z < T(0) ? T(0) : z;
}

// dL/dz from dL/dh and h = f(z).
//   tanh: dh * (1 - h^2)       (exactly 0 at saturation h = +-1)
//   relu: h <= 0 ? 0 : dh      (a select, not a product, as torch's threshold_backward:
//                               an infinite dh at an inactive unit gives 0, not NaN; h = NaN
//                               passes dh through)
template <typename T>
ELMAN_MATH T tanh_dz(T h, T dh) {
  return dh * (T(1) - h * h);
}
template <typename T>
ELMAN_MATH T relu_dz(T h, T dh) {
  return h <= T(0) ? T(0) : dh;
}

}  // namespace math
}  // namespace elman
