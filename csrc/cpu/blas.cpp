// OpenBLAS glue: the one file that includes cblas.h. Splits products whose sizes or leading
// dimensions exceed the 32-bit BLAS integers, so callers can pass any 64-bit size.
#include "blas.h"

#include <algorithm>
#include <atomic>
#include <cblas.h>
#include <thread>

namespace elman {
namespace cpu {
namespace {

// The BLAS takes 32-bit sizes and leading dimensions. Sizes above g_max_dim are split into
// pieces; a piece whose leading dimension still exceeds g_max_ld is done row by row when the
// oversized stride is A's (not transposed) or C's (a single row needs no stride), else by plain
// loops. Both limits can be lowered for tests (blas_set_limits_for_testing).
std::atomic<int64_t> g_max_dim{int64_t(1) << 30};  // comfortably inside blasint (int32)
std::atomic<int64_t> g_max_ld{int64_t(2147483647)};

// The gate: threads inside the BLAS now, and buffers it has been made to take. With no buffer
// recorded (a product before any reservation) the gate is open, as the BLAS itself would be.
std::atomic<int> g_inside{0};
std::atomic<int> g_buffers{0};

class Permit {
 public:
  Permit() {
    for (int spins = 0;; ++spins) {
      int in = g_inside.load(std::memory_order_relaxed);
      const int cap = g_buffers.load(std::memory_order_acquire);
      if ((cap == 0 || in < cap) &&
          g_inside.compare_exchange_weak(in, in + 1, std::memory_order_acquire))
        return;
      if (spins > 64) std::this_thread::yield();  // another thread's product ends soon
    }
  }
  ~Permit() { g_inside.fetch_sub(1, std::memory_order_release); }
  Permit(const Permit&) = delete;
  Permit& operator=(const Permit&) = delete;
};

void sgemm_call(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    blasint(M), blasint(N), blasint(K), alpha, A, blasint(lda), B, blasint(ldb),
                    beta, C, blasint(ldc));
}

void gemm_raw(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  Permit permit;
  sgemm_call(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm_raw(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  Permit permit;
  scipy_cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    blasint(M), blasint(N), blasint(K), alpha, A, blasint(lda), B, blasint(ldb),
                    beta, C, blasint(ldc));
}

// One piece (M, N, K within the BLAS's range), whatever its leading dimensions.
template <typename scalar_t>
void gemm_piece(bool ta, bool tb, int64_t M, int64_t N, int64_t K, scalar_t alpha,
                const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
                scalar_t* C, int64_t ldc) {
  const int64_t max_ld = g_max_ld.load(std::memory_order_relaxed);
  if (lda <= max_ld && ldb <= max_ld && ldc <= max_ld) {
    gemm_raw(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else if (ldb <= max_ld && !ta && K <= max_ld && N <= max_ld) {
    for (int64_t i = 0; i < M; ++i)  // one row of A and C at a time: their strides vanish
      gemm_raw(false, tb, 1, N, K, alpha, A + i * lda, std::max<int64_t>(K, 1), B, ldb, beta,
               C + i * ldc, std::max<int64_t>(N, 1));
  } else {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        scalar_t sum = scalar_t(0);
        for (int64_t k = 0; k < K; ++k)
          sum += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
        scalar_t& c = C[i * ldc + j];
        c = alpha * sum + (beta == scalar_t(0) ? scalar_t(0) : beta * c);
      }
  }
}

}  // namespace

template <typename scalar_t>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, scalar_t alpha, const scalar_t* A,
          int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C (BLAS does the same; done here so K = 0 never reaches it)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == scalar_t(0) ? scalar_t(0) : beta * C[i * ldc + j];
    return;
  }
  const int64_t max_dim = g_max_dim.load(std::memory_order_relaxed);
  // Element (i, k) of op(A) lives at A[i*lda + k] (no trans) or A[k*lda + i] (trans).
  auto a_at = [&](int64_t i, int64_t k) { return ta ? A + k * lda + i : A + i * lda + k; };
  auto b_at = [&](int64_t k, int64_t j) { return tb ? B + j * ldb + k : B + k * ldb + j; };
  for (int64_t i0 = 0; i0 < M; i0 += max_dim) {
    const int64_t m = std::min(max_dim, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += max_dim) {
      const int64_t n = std::min(max_dim, N - j0);
      for (int64_t k0 = 0; k0 < K; k0 += max_dim) {
        const int64_t k = std::min(max_dim, K - k0);
        gemm_piece(ta, tb, m, n, k, alpha, a_at(i0, k0), lda, b_at(k0, j0), ldb,
                   k0 == 0 ? beta : scalar_t(1), C + i0 * ldc + j0, ldc);
      }
    }
  }
}

void blas_set_limits_for_testing(int64_t max_dim, int64_t max_ld) {
  g_max_dim.store(max_dim < 1 ? 1 : max_dim);
  g_max_ld.store(max_ld < 1 ? 1 : max_ld);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

// elman splits large products across its own threads (threads.h) and calls OpenBLAS from each
// of them single-threaded, so that only one thread pool ever spins on the cores.
const bool g_single_threaded_blas = [] {
  scipy_openblas_set_num_threads(1);
  return true;
}();

int blas_buffers() { return g_buffers.load(std::memory_order_acquire); }
void blas_add_buffers(int n) { g_buffers.fetch_add(n, std::memory_order_release); }

void blas_after_fork_in_child() { g_inside.store(0); }

void blas_warm(float* c) {
  static const float a[kBlasWarm * kBlasWarm] = {};
  sgemm_call(false, false, kBlasWarm, kBlasWarm, kBlasWarm, 1.0f, a, kBlasWarm, a, kBlasWarm,
             0.0f, c, kBlasWarm);
}

void blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
int blas_get_num_threads() { return scipy_openblas_get_num_threads(); }
const char* blas_config() { return scipy_openblas_get_config(); }
const char* blas_corename() { return scipy_openblas_get_corename(); }

}  // namespace cpu
}  // namespace elman
