// The large matrix products of the CPU backend, through the bundled OpenBLAS
// (scipy-openblas32: 32-bit BLAS integers, symbols prefixed scipy_).
#pragma once
#include <cstdint>

namespace elman {
namespace cpu {

// C[M, N] = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when trans_X.
// 64-bit sizes and leading dimensions: whatever exceeds the BLAS's 32-bit integers is split
// into pieces (or rows) it can take.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, scalar_t alpha,
          const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
          scalar_t* C, int64_t ldc);

// Lowers the largest size / leading dimension handed to the BLAS in one piece (tests use tiny
// limits to run the splitting paths on small arrays); the defaults are 2^30 and 2^31 - 1.
void blas_set_limits_for_testing(int64_t max_dim, int64_t max_ld);

// The gate in front of the BLAS (threads.h's reserve_blas says why): every product waits until
// fewer threads are inside the BLAS than it has buffers. blas_buffers(): how many it has been
// made to take; blas_add_buffers(n) records more. blas_warm(c) is one product that passes the
// gate (c: kBlasWarm^2 floats of the caller's), large enough to need a buffer.
int blas_buffers();
void blas_add_buffers(int n);
constexpr int64_t kBlasWarm = 128;
void blas_warm(float* c);
// After fork() only the forking thread exists: no thread is inside the BLAS any more.
void blas_after_fork_in_child();

void blas_set_num_threads(int n);
int blas_get_num_threads();
const char* blas_config();    // OpenBLAS's build configuration string
const char* blas_corename();  // the kernel family OpenBLAS chose for this CPU

}  // namespace cpu
}  // namespace elman
