// CPU backend: fused forward and BPTT of one layer in one direction (the contract in rnn.h),
// each a driver of the shared schedule (drivers.h over schedule.h), which splits the work into
// parts and runs it in one parallel region; and the products of elman.Linear (matmul_cpu).
#include <algorithm>
#include <vector>

#include "../rnn.h"
#include "drivers.h"
#include "schedule.h"
#include "threads.h"

namespace elman {

using cpu::Backward;
using cpu::Forward;
using cpu::Gemm;
using cpu::copy_h_n;
using cpu::gemm_parts;

template <typename T>
void rnn_forward_cpu(const RnnForwardArgs<T>& a) {
  const RnnShape& sh = a.shape;
  if (sh.T == 0 || sh.B == 0) return;
  Forward<T> f(a, cpu::get_num_threads());
  if (!cpu::run_schedule(f.sc, f)) throw cpu::Stopped();
  copy_h_n(a);
}

template <typename T>
void rnn_backward_cpu(const RnnBackwardArgs<T>& a) {
  if (a.shape.T == 0 || a.shape.B == 0) return;
  Backward<T> bw(a, cpu::get_num_threads());
  if (!cpu::run_schedule(bw.sc, bw)) throw cpu::Stopped();
  bw.finish();
}

// ==================================================================================== matmul
template <typename T>
void matmul_cpu(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const Gemm<T> g{ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, cpu::stop_flag()};
  const int parts = gemm_parts(M, N, K, cpu::get_num_threads());
  const bool done = cpu::parallel(parts, [&](cpu::Team& team) {
    team.for_each(parts, [&](int64_t q) { g.run_part(int(q), parts); });
  });
  if (!done) throw cpu::Stopped();
}

template void matmul_cpu<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                                const float*, int64_t, float, float*, int64_t);
template void matmul_cpu<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                                 const double*, int64_t, double, double*, int64_t);
template void rnn_forward_cpu<float>(const RnnForwardArgs<float>&);
template void rnn_forward_cpu<double>(const RnnForwardArgs<double>&);
template void rnn_backward_cpu<float>(const RnnBackwardArgs<float>&);
template void rnn_backward_cpu<double>(const RnnBackwardArgs<double>&);

}  // namespace elman
