// The kernel table built for the avx512 instruction set level (see step_kernels.h; the
// compile flags for this file are set in CMakeLists.txt).
#define ELMAN_ISA_NS avx512
#define ELMAN_ISA_AVX512
#include "step_kernels.h"

namespace elman {
namespace cpu {
namespace avx512 {

const Kernels<float>& table_f32() { return make_table<float>(Isa::avx512); }
const Kernels<double>& table_f64() { return make_table<double>(Isa::avx512); }

}  // namespace avx512
}  // namespace cpu
}  // namespace elman
