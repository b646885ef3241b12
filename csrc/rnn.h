// THE kernel contract of elman: plain structs of sizes and pointers and the entry points every
// backend implements (cpu today, cuda behind the same structs). No Python, no pybind11 here.
#pragma once
#include <cstdint>

// Host and device: the helpers below (and rnn_math.h) run in C++ and in CUDA kernels alike.
#if defined(__CUDACC__)
#define ELMAN_HD __host__ __device__
#else
#define ELMAN_HD
#endif

namespace elman {

// ---------------------------------------------------------------------------------------------
// Shape legend (written once, used everywhere):
//   T  time steps     B  batch     I  input features     H  hidden units
// All arrays are row-major with the rightmost dimension contiguous. A sequence array
// [T, B, X] is addressed p[(t * B + b) * ld + j] where `ld` >= X is its row stride; only the
// `out` / `grad_out` arrays take a stride other than X, so that the two directions of a
// bidirectional layer write to and read from the halves of one [T, B, 2H] array.
//
// One call runs one layer in one direction over the whole sequence:
//   z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   h_t = f(z_t),   f = tanh | relu
// "Processing order" is t = 0 .. T-1, or t = T-1 .. 0 when `reverse` is set.
//
// Variable lengths (`lengths`, the semantics of a packed sequence): step t is valid for
// sequence b iff t < lengths[b]. Invalid steps leave the state unchanged and write 0 to `out`;
// h_n holds each sequence's state after its last valid step in processing order, and the
// reverse direction starts from h0 at t = lengths[b] - 1. Nothing at an invalid step, neither
// x nor out, contributes to any result (padding content is never read into a sum).
// ---------------------------------------------------------------------------------------------

enum class Activation : int32_t { tanh = 0, relu = 1 };

// Sizes and flags shared by forward and backward.
struct RnnShape {
  int64_t T = 0, B = 0, I = 0, H = 0;
  Activation act = Activation::tanh;
  bool reverse = false;              // process t = T-1 .. 0
  const int64_t* lengths = nullptr;  // [B], 1 <= lengths[b] <= T; nullptr: every sequence has T

  // The sequence-length rules above, written once for every backend (they read `lengths`, so
  // they run where it lives: host memory on the CPU, device memory in a CUDA kernel).
  // Time of processing step s (s = 0 is processed first), and the processing step of time t.
  ELMAN_HD int64_t time_of(int64_t s) const { return reverse ? T - 1 - s : s; }
  ELMAN_HD int64_t step_of(int64_t t) const { return reverse ? T - 1 - t : t; }
  ELMAN_HD int64_t length_of(int64_t b) const { return lengths ? lengths[b] : T; }
  // Whether time t (0 <= t < T) is a valid step of sequence b.
  ELMAN_HD bool is_valid(int64_t t, int64_t b) const { return !lengths || t < lengths[b]; }
  // Time of sequence b's first and last valid step in processing order.
  ELMAN_HD int64_t first_step_time(int64_t b) const { return reverse ? length_of(b) - 1 : 0; }
  ELMAN_HD int64_t last_step_time(int64_t b) const { return reverse ? 0 : length_of(b) - 1; }
  // Whether every sequence has all T steps (no lengths, or all equal to T).
  ELMAN_HD bool all_full() const {
    if (!lengths) return true;
    for (int64_t b = 0; b < B; ++b)
      if (lengths[b] != T) return false;
    return true;
  }
};

// The parameters of one layer in one direction (read-only for every entry point).
template <typename scalar_t>
struct RnnWeights {
  const scalar_t* W_ih = nullptr;  // [H, I]
  const scalar_t* W_hh = nullptr;  // [H, H]
  const scalar_t* b_ih = nullptr;  // [H], or nullptr for a layer without bias
  const scalar_t* b_hh = nullptr;  // [H], or nullptr
};

template <typename scalar_t>
struct RnnForwardArgs {
  RnnShape shape;
  RnnWeights<scalar_t> w;
  const scalar_t* x = nullptr;   // [T, B, I], contiguous
  const scalar_t* h0 = nullptr;  // [B, H], or nullptr for zeros
  scalar_t* out = nullptr;       // [T, B, H], row stride ld_out: h_t at valid steps, 0 elsewhere
  int64_t ld_out = 0;            // >= H
  scalar_t* h_n = nullptr;       // [B, H]: state after each sequence's last valid step
};

// BPTT through one forward call. The forward's `out` is the only state it needs: the training
// forward stores nothing else (f' is computed from h: tanh' = 1 - h^2, relu' = [h > 0]).
template <typename scalar_t>
struct RnnBackwardArgs {
  RnnShape shape;
  RnnWeights<scalar_t> w;          // biases are not read; their gradients are dz sums
  const scalar_t* x = nullptr;     // [T, B, I], the forward's input
  const scalar_t* h0 = nullptr;    // [B, H], or nullptr for zeros
  const scalar_t* out = nullptr;   // [T, B, H], row stride ld_out: the forward's out
  int64_t ld_out = 0;
  const scalar_t* grad_out = nullptr;  // [T, B, H], row stride ld_grad_out, or nullptr (zeros)
  int64_t ld_grad_out = 0;
  const scalar_t* grad_h_n = nullptr;  // [B, H], or nullptr (zeros)

  scalar_t* grad_x = nullptr;      // [T, B, I], or nullptr (not wanted); rows past a
  bool accumulate_grad_x = false;  //   sequence's length get 0 (or nothing added)
  scalar_t* grad_h0 = nullptr;     // [B, H] written, or nullptr (not wanted)
  scalar_t* dW_ih = nullptr;       // [H, I] accumulated (+=)
  scalar_t* dW_hh = nullptr;       // [H, H] accumulated (+=)
  scalar_t* db_ih = nullptr;       // [H] accumulated, or nullptr
  scalar_t* db_hh = nullptr;       // [H] accumulated, or nullptr
  double* grad_norms = nullptr;    // [T] written, or nullptr: ||dL/dh_t||_2 over all valid
                                   //   (b, j) at time t; 0 where no sequence is valid
  scalar_t* dz = nullptr;          // [T, B, H] scratch (contents on entry are ignored)
};

// Entry points of the CPU backend (csrc/cpu). Arguments are assumed valid: the bindings
// validate every size, pointer and dtype before calling.
template <typename scalar_t>
void rnn_forward_cpu(const RnnForwardArgs<scalar_t>& a);
template <typename scalar_t>
void rnn_backward_cpu(const RnnBackwardArgs<scalar_t>& a);

// Several calls at once (the two directions of a bidirectional layer), meaning what the same
// calls made one after another in order mean. When no call's batch rows are split between the
// threads (small B: each call is one chain of dependent steps) and no call writes memory that
// another reads or writes, the calls run at the same time on different threads (in chunks of
// steps that any thread takes once ready; with variable lengths each call whole, alone). A
// backward call that adds into (accumulate_grad_x) the grad_x an earlier call writes then
// writes its share to scratch, added after all the calls, in call order. Results depend only on
// the calls and the configured thread count.
template <typename scalar_t>
void rnn_forward_calls_cpu(const RnnForwardArgs<scalar_t>* calls, int n);
template <typename scalar_t>
void rnn_backward_calls_cpu(const RnnBackwardArgs<scalar_t>* calls, int n);
// A stack of layers in one direction: calls[l + 1].x is calls[l].out (forward), and in the
// backward (calls from the top layer down) calls[k + 1].grad_out is calls[k].grad_x; meaning
// the calls one after another. At small batch, with sequences of T steps, the layers run as a
// wavefront (layer l + 1 one chunk of steps behind layer l, each on its own thread).
template <typename scalar_t>
void rnn_forward_layers_cpu(const RnnForwardArgs<scalar_t>* calls, int n);
template <typename scalar_t>
void rnn_backward_layers_cpu(const RnnBackwardArgs<scalar_t>* calls, int n);
// For tests: the calls that would run at the same time run one after another on the calling
// thread instead (the same work, so bitwise the same results).
void set_concurrent_calls(bool on);

// One step of an RNNCell (streaming inference, one time step per call), for B rows:
//   h1[b] = f(W_ih x[b] + b_ih + W_hh h[b] + b_hh),   f = tanh | relu
// Every array contiguous. Small steps (see kSmallCellStep) take a few microseconds, so a binding
// calls them without releasing the GIL; larger ones go through the BLAS.
template <typename scalar_t>
struct RnnCellArgs {
  int64_t B = 0, I = 0, H = 0;
  Activation act = Activation::tanh;
  RnnWeights<scalar_t> w;        // W_ih [H, I], W_hh [H, H], b_ih / b_hh [H] or nullptr
  const scalar_t* x = nullptr;   // [B, I]
  const scalar_t* h = nullptr;   // [B, H], or nullptr for zeros
  scalar_t* h1 = nullptr;        // [B, H] written
};
// Up to this many multiply-adds, B * H * (I + H), a step is one pass of dot products on the
// calling thread (no packing, no BLAS call): B = 1 at H = 64 costs well under a microsecond.
constexpr int64_t kSmallCellStep = 262144;
template <typename scalar_t>
void rnn_cell_step_cpu(const RnnCellArgs<scalar_t>& a);

// A dense product on elman's threads, for the layers around the recurrence (elman.Linear), so
// that a model's every large product shares one thread pool:
//   C [M, N] = op(A) op(B) + beta * C,  op(X) = X^T when trans_X; row-major with strides ld*.
template <typename scalar_t>
void matmul_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const scalar_t* A,
                int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta, scalar_t* C,
                int64_t ldc);

// The CUDA backend (csrc/cuda, built only when CMake finds nvcc). The same structs, with every
// pointer (lengths included) in the memory of the current CUDA device; `dz` may be nullptr (the
// backend then allocates its scratch). Work is queued on `stream` in order and may still run
// when the call returns; errors are thrown as std::runtime_error.
struct CudaLaunch {
  void* stream = nullptr;  // a cudaStream_t; nullptr: the legacy default stream
  int tier = 0;            // recurrence tier: 0 chooses from the device, 1 | 2 | 3 force one
};
template <typename scalar_t>
void rnn_forward_cuda(const RnnForwardArgs<scalar_t>& a, const CudaLaunch& launch);
template <typename scalar_t>
void rnn_backward_cuda(const RnnBackwardArgs<scalar_t>& a, const CudaLaunch& launch);

}  // namespace elman
