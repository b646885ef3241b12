// The kernel table built for the baseline instruction set level (see step_kernels.h; the
// compile flags for this file are set in CMakeLists.txt).
#define ELMAN_ISA_NS baseline
#define ELMAN_ISA_BASELINE
#include "step_kernels.h"

namespace elman {
namespace cpu {
namespace baseline {

const Kernels<float>& table_f32() { return make_table<float>(Isa::baseline); }
const Kernels<double>& table_f64() { return make_table<double>(Isa::baseline); }

}  // namespace baseline
}  // namespace cpu
}  // namespace elman
