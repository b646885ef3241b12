// Runtime dispatch: which instruction set level this CPU (and OS) supports, and the kernel
// table in use. The level can be lowered at run time (ELMAN_ISA, read by the Python package at
// import) so that every path can be tested on one machine.
#include <atomic>
#include <cstdint>

#include <cpuid.h>

#include "kernels.h"

namespace elman {
namespace cpu {
namespace {

// x86-64-v3 / v4 as GCC and clang define them: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE over v2
// (v3) and AVX-512 F, BW, CD, DQ, VL (v4), each with the OS saving the vector state (XCR0).
// Read from CPUID here rather than through __builtin_cpu_supports, whose runtime part
// (__cpu_indicator_init) is a stub in some toolchains' compiler runtimes (zig's, which builds
// the manylinux wheels): there every CPU would look like baseline x86-64.
bool has_bits(uint32_t reg, uint32_t bits) { return (reg & bits) == bits; }

Isa detect() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7 || !__get_cpuid(1, &a, &b, &c, &d)) return Isa::baseline;
  const uint32_t c1 = c;
  __cpuid_count(7, 0, a, b, c, d);
  const uint32_t b7 = b;
  uint32_t c81 = 0;
  if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000001u &&
      __get_cpuid(0x80000001u, &a, &b, &c, &d))
    c81 = c;
  // leaf 1 ECX: SSE3 0, SSSE3 9, FMA 12, CX16 13, SSE4.1 19, SSE4.2 20, MOVBE 22, POPCNT 23,
  // OSXSAVE 27, AVX 28, F16C 29; leaf 0x80000001 ECX: LAHF/SAHF 0, LZCNT 5
  const uint32_t v3_c1 = (1u << 0) | (1u << 9) | (1u << 12) | (1u << 13) | (1u << 19) | (1u << 20) |
                         (1u << 22) | (1u << 23) | (1u << 27) | (1u << 28) | (1u << 29);
  // leaf 7 EBX: BMI1 3, AVX2 5, BMI2 8; AVX-512 F 16, DQ 17, CD 28, BW 30, VL 31
  const uint32_t v3_b7 = (1u << 3) | (1u << 5) | (1u << 8);
  const uint32_t v4_b7 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
  if (!has_bits(c1, v3_c1) || !has_bits(b7, v3_b7) || !has_bits(c81, (1u << 0) | (1u << 5)))
    return Isa::baseline;
  uint32_t xcr0_lo, xcr0_hi;  // XGETBV(0); OSXSAVE (checked above) makes it valid
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if (!has_bits(xcr0_lo, 0x6)) return Isa::baseline;  // SSE and AVX (YMM) state
  // opmask, ZMM0-15 upper halves and ZMM16-31 state
  if (has_bits(b7, v4_b7) && has_bits(xcr0_lo, 0xe0)) return Isa::avx512;
  return Isa::avx2;
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
