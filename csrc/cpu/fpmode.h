// Flush-to-zero and denormals-are-zero inside elman's kernels only. In the vanishing-gradient
// regime BPTT drives dL/dh_t into the float32 subnormal range, and x86 cores run subnormal
// operands through slow microcode assists (the backward was 13-16x slower). The guard sets
// MXCSR's FTZ (bit 15) and DAZ (bit 6) on a thread for the duration of its kernel work, the
// BLAS calls made there included, and restores the thread's previous mode on every exit, so
// the process's floating-point mode is never changed as seen from Python. On by default;
// set_flush_denormals(false) or ELMAN_FLUSH_DENORMAL=0 keeps exact subnormal arithmetic.
#pragma once
#include <xmmintrin.h>

#include <atomic>

namespace elman {
namespace cpu {

// The process-wide switch (read when a kernel call opens its parallel region).
bool flush_denormals();
void set_flush_denormals(bool on);

class FpModeGuard {
 public:
  explicit FpModeGuard(bool flush) : set_(flush) {
    if (set_) {
      saved_ = _mm_getcsr();
      _mm_setcsr(saved_ | kFtz | kDaz);
    }
  }
  ~FpModeGuard() {
    if (set_) _mm_setcsr(saved_);
  }
  FpModeGuard(const FpModeGuard&) = delete;
  FpModeGuard& operator=(const FpModeGuard&) = delete;

 private:
  static constexpr unsigned kFtz = 1u << 15, kDaz = 1u << 6;
  bool set_;
  unsigned saved_ = 0;
};

}  // namespace cpu
}  // namespace elman
