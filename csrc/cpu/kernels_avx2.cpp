// The kernel table built for the avx2 instruction set level (see step_kernels.h; the
// compile flags for this file are set in CMakeLists.txt).
#define ELMAN_ISA_NS avx2
#define ELMAN_ISA_AVX2
#include "step_kernels.h"

namespace elman {
namespace cpu {
namespace avx2 {

const Kernels<float>& table_f32() { return make_table<float>(Isa::avx2); }
const Kernels<double>& table_f64() { return make_table<double>(Isa::avx2); }

}  // namespace avx2
}  // namespace cpu
}  // namespace elman
