// The CPU backend's RNNCell step (rnn.h's rnn_cell_step_cpu): a few rows through the kernels'
// dot-product step, larger steps as two BLAS products into the summed biases.
#include "../rnn.h"
#include "blas.h"
#include "kernels.h"
#include "threads.h"

namespace elman {

template <typename T>
void rnn_cell_step_cpu(const RnnCellArgs<T>& a) {
  const int64_t B = a.B, I = a.I, H = a.H;
  if (B * H * (I + H) <= kSmallCellStep) {
    cpu::kernels<T>().cell_step(B, I, H, a.act, a.x, a.h, a.w.W_ih, a.w.W_hh, a.w.b_ih, a.w.b_hh,
                                a.h1);
    return;
  }
  cpu::reserve_blas(1);  // the BLAS's buffer for this thread (threads.h), before anything
  T* o = a.h1;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j)
      o[b * H + j] = (a.w.b_ih ? a.w.b_ih[j] : T(0)) + (a.w.b_hh ? a.w.b_hh[j] : T(0));
  cpu::gemm<T>(false, true, B, H, I, T(1), a.x, I, a.w.W_ih, I, T(1), o, H);
  if (a.h) cpu::gemm<T>(false, true, B, H, H, T(1), a.h, H, a.w.W_hh, H, T(1), o, H);
  if (a.act == Activation::tanh) {
    cpu::kernels<T>().tanh(o, o, B * H);
  } else {
    for (int64_t i = 0; i < B * H; ++i) o[i] = o[i] < T(0) ? T(0) : o[i];
  }
}

template void rnn_cell_step_cpu<float>(const RnnCellArgs<float>&);
template void rnn_cell_step_cpu<double>(const RnnCellArgs<double>&);

}  // namespace elman
