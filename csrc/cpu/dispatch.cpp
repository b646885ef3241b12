// Runtime dispatch: which instruction set level this CPU (and OS) supports, and the kernel
// table in use. The level can be lowered at run time (ELMAN_ISA, read by the Python package at
// import) so that every path can be tested on one machine.
#include <atomic>

#include "kernels.h"

namespace elman {
namespace cpu {
namespace {

// x86-64-v3 / v4 as the compilers define them: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE (v3) and
// AVX-512 F, BW, CD, DQ, VL (v4), each with the OS saving the vector state (libgcc checks XCR0).
Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::avx2;
  return Isa::baseline;
}

const Isa kBest = detect();
std::atomic<int32_t> g_active{static_cast<int32_t>(kBest)};

}  // namespace

Isa best_supported_isa() { return kBest; }
Isa active_isa() { return static_cast<Isa>(g_active.load(std::memory_order_relaxed)); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

bool set_active_isa(Isa isa) {
  if (static_cast<int32_t>(isa) > static_cast<int32_t>(kBest)) return false;
  g_active.store(static_cast<int32_t>(isa), std::memory_order_relaxed);
  return true;
}

const Kernels<float>& kernels_f32() {
  switch (active_isa()) {
    case Isa::avx512: return avx512::table_f32();
    case Isa::avx2: return avx2::table_f32();
    default: return baseline::table_f32();
  }
}

const Kernels<double>& kernels_f64() {
  switch (active_isa()) {
    case Isa::avx512: return avx512::table_f64();
    case Isa::avx2: return avx2::table_f64();
    default: return baseline::table_f64();
  }
}

template <>
const Kernels<float>& kernels<float>() { return kernels_f32(); }
template <>
const Kernels<double>& kernels<double>() { return kernels_f64(); }

}  // namespace cpu
}  // namespace elman
