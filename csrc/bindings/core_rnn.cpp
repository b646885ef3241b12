// elman._core's RNN entry points (rnn_forward, rnn_backward, rnn_cell_step, matmul): arrays
// through the validation boundary (args.h), then the CPU kernels without the GIL. Inputs in any
// memory layout are copied to C order; outputs must be writable with evenly strided rows.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "../rnn.h"
#include "args.h"
#include "core.h"
#include "interrupt.h"

namespace py = pybind11;

namespace elman {
namespace bind {

namespace {

// Multiply-adds of one layer's forward: whether Ctrl-C may stop the call (interrupt.h).
double forward_macs(const RnnShape& sh) {
  return double(sh.T) * double(sh.B) * double(sh.H) * double(sh.I + sh.H);
}

// One call's arguments as the Python caller gave them.
struct ForwardCall {
  ForwardArrays arrays;
  std::string nonlinearity;
  bool reverse;
};
struct BackwardCall {
  BackwardArrays arrays;
  std::string nonlinearity;
  bool reverse, accumulate_grad_x;
};

// Forward calls, one after another or at once (rnn.h's rnn_forward_calls_cpu), or a stack of
// layers (rnn_forward_layers_cpu).
template <typename T>
void forward_cpu(std::vector<ForwardCall>& calls, bool layers = false) {
  std::vector<RnnForwardArgs<T>> a;
  double macs = 0.0;
  for (ForwardCall& c : calls) {
    a.push_back(forward_args<T>(c.arrays, c.nonlinearity, c.reverse));
    checked_nbytes({a.back().shape.H, a.back().shape.H + 64}, sizeof(T), "rnn_forward: packed W_hh");
    macs += forward_macs(a.back().shape);
  }
  Interruptible intr(macs);
  run_stoppable(intr,
                "rnn_forward: cannot allocate the kernel's scratch memory (packed W_hh, per-row "
                "buffers, the BLAS's work buffers); no output was written",
                [&] {
                  if (layers) rnn_forward_layers_cpu<T>(a.data(), int(a.size()));
                  else rnn_forward_calls_cpu<T>(a.data(), int(a.size()));
                },
                [] {});
}

// What a stoppable backward adds into the caller's arrays, copied before the call so that a
// stopped call can be undone.
template <typename T>
struct Accumulators {
  std::vector<std::pair<T*, std::vector<T>>> saved;
  void keep(T* p, int64_t n) {
    if (p) saved.emplace_back(p, std::vector<T>(p, p + n));
  }
  void restore() const {
    for (const auto& s : saved) std::copy(s.second.begin(), s.second.end(), s.first);
  }
};

template <typename T>
void backward_cpu(std::vector<BackwardCall>& calls, bool layers = false) {
  std::vector<RnnBackwardArgs<T>> a;
  std::vector<py::array> dz;
  double macs = 0.0;
  for (BackwardCall& c : calls) {
    a.push_back(backward_args<T>(c.arrays, c.nonlinearity, c.reverse, c.accumulate_grad_x));
    const RnnShape& sh = a.back().shape;
    checked_nbytes({sh.H, sh.H + 64}, sizeof(T), "rnn_backward: packed W_hh");
    macs += 2.0 * forward_macs(sh);
  }
  for (RnnBackwardArgs<T>& c : a) {  // scratch for dz [T, B, H], before anything is written
    const RnnShape& sh = c.shape;
    dz.push_back(scratch_array<T>({sh.T, sh.B, sh.H}, "rnn_backward: the scratch dz [T, B, H] ="));
    c.dz = static_cast<T*>(dz.back().mutable_data());
  }
  Interruptible intr(macs);
  Accumulators<T> acc;
  if (intr.on()) {
    for (const RnnBackwardArgs<T>& c : a) {
      const RnnShape& sh = c.shape;
      acc.keep(c.dW_ih, sh.H * sh.I);
      acc.keep(c.dW_hh, sh.H * sh.H);
      acc.keep(c.db_ih, sh.H);
      acc.keep(c.db_hh, sh.H);
      if (c.accumulate_grad_x) acc.keep(c.grad_x, sh.T * sh.B * sh.I);
    }
  }
  run_stoppable(intr,
                "rnn_backward: cannot allocate the kernel's scratch memory (packed W_hh, per-row "
                "buffers, the BLAS's work buffers); no output was written",
                [&] {
                  if (layers) rnn_backward_layers_cpu<T>(a.data(), int(a.size()));
                  else rnn_backward_calls_cpu<T>(a.data(), int(a.size()));
                },
                [&] { acc.restore(); });
}

ForwardCall forward_call(py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih,
                         py::handle b_hh, py::handle h0, py::handle lengths,
                         const std::string& nonlinearity, bool reverse, py::handle out,
                         py::handle h_n) {
  return {{Array::numpy(x, "x"), Array::numpy(W_ih, "W_ih"), Array::numpy(W_hh, "W_hh"),
           Array::numpy(b_ih, "b_ih"), Array::numpy(b_hh, "b_hh"), Array::numpy(h0, "h0"),
           Array::numpy(lengths, "lengths"), Array::numpy(out, "out"), Array::numpy(h_n, "h_n")},
          nonlinearity,
          reverse};
}

BackwardCall backward_call(py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0,
                           py::handle out, py::handle grad_out, py::handle grad_h_n,
                           py::handle lengths, const std::string& nonlinearity, bool reverse,
                           py::handle grad_x, bool accumulate_grad_x, py::handle grad_h0,
                           py::handle dW_ih, py::handle dW_hh, py::handle db_ih, py::handle db_hh,
                           py::handle grad_norms) {
  return {{Array::numpy(x, "x"), Array::numpy(W_ih, "W_ih"), Array::numpy(W_hh, "W_hh"),
           Array::numpy(h0, "h0"), Array::numpy(out, "out"), Array::numpy(grad_out, "grad_out"),
           Array::numpy(grad_h_n, "grad_h_n"), Array::numpy(lengths, "lengths"),
           Array::numpy(grad_x, "grad_x"), Array::numpy(grad_h0, "grad_h0"),
           Array::numpy(dW_ih, "dW_ih"), Array::numpy(dW_hh, "dW_hh"),
           Array::numpy(db_ih, "db_ih"), Array::numpy(db_hh, "db_hh"),
           Array::numpy(grad_norms, "grad_norms")},
          nonlinearity,
          reverse,
          accumulate_grad_x};
}

// The tuples of rnn_forward_calls / rnn_backward_calls: each one call's positional arguments.
py::tuple call_tuple(py::handle call, size_t n, const char* entry) {
  if (!py::isinstance<py::tuple>(call) || py::len(call) != n)
    type_error(std::string(entry) + ": each call must be a tuple of " + std::to_string(n) +
               " arguments, got " + std::string(py::str(py::type::of(call).attr("__name__"))));
  return py::reinterpret_borrow<py::tuple>(call);
}

std::string str_arg(py::handle v, const char* name) {
  if (!py::isinstance<py::str>(v))
    type_error(std::string(name) + " must be a str, got " +
               std::string(py::str(py::type::of(v).attr("__name__"))));
  return v.cast<std::string>();
}

bool bool_arg(py::handle v, const char* name) {
  if (!py::isinstance<py::bool_>(v))
    type_error(std::string(name) + " must be a bool, got " +
               std::string(py::str(py::type::of(v).attr("__name__"))));
  return v.cast<bool>();
}

template <typename Call, typename F>
void run_calls(std::vector<Call>& calls, F&& f) {
  if (calls.empty()) return;
  dispatch_dtype(calls[0].arrays.x, [&](auto tag) { f(tag); });
}

// An operand of a product: "A must be 2-D, got shape (3,)" otherwise.
void check_2d(const Array& a) {
  require(a);
  if (a.ndim() != 2) value_error(std::string(a.name) + " must be 2-D, got shape " + shape_str(a.shape));
}

// One RNNCell step when the arguments are exactly the fast case (cell_args), else None: the
// caller then takes the validated path, which converts or raises the documented errors.
template <typename T>
py::object cell_step(py::handle x, py::handle h, py::handle W_ih, py::handle W_hh, py::handle b_ih,
                     py::handle b_hh, bool relu) {
  RnnCellArgs<T> a;
  bool batched = false;
  if (!cell_args<T>(x, h, W_ih, W_hh, b_ih, b_hh, relu, &a, &batched)) return py::none();
  py::array h1 = batched ? py::array(py::dtype::of<T>(), Shape{a.B, a.H})
                         : py::array(py::dtype::of<T>(), Shape{a.H});
  a.h1 = static_cast<T*>(h1.mutable_data());
  if (a.B * a.H * (a.I + a.H) <= kSmallCellStep) {
    rnn_cell_step_cpu<T>(a);
  } else {
    py::gil_scoped_release nogil;
    rnn_cell_step_cpu<T>(a);
  }
  return std::move(h1);
}

}  // namespace

void register_rnn(py::module_& m) {
  init_interrupt();
  m.def(
      "rnn_forward",
      [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
         py::handle h0, py::handle lengths, const std::string& nonlinearity, bool reverse,
         py::handle out, py::handle h_n) {
        std::vector<ForwardCall> calls;
        calls.push_back(forward_call(x, W_ih, W_hh, b_ih, b_hh, h0, lengths, nonlinearity,
                                     reverse, out, h_n));
        run_calls(calls, [&](auto tag) { forward_cpu<decltype(tag)>(calls); });
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"),
      py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"), py::arg("out"), py::arg("h_n"),
      "Fused forward of one layer and direction; writes out [T, B, H] (any row stride) and h_n [B, H].");

  for (const bool layers : {false, true}) {
    m.def(
        layers ? "rnn_forward_layers" : "rnn_forward_calls",
        [layers](py::sequence seq) {
          std::vector<ForwardCall> calls;
          for (py::handle item : seq) {
            const py::tuple t = call_tuple(item, 11, layers ? "rnn_forward_layers" : "rnn_forward_calls");
            calls.push_back(forward_call(t[0], t[1], t[2], t[3], t[4], t[5], t[6],
                                         str_arg(t[7], "nonlinearity"), bool_arg(t[8], "reverse"),
                                         t[9], t[10]));
          }
          run_calls(calls, [&](auto tag) { forward_cpu<decltype(tag)>(calls, layers); });
        },
        py::arg("calls"),
        layers ? "A stack of layers (tuples of rnn_forward's arguments, the bottom layer first, "
                 "each layer's out the next one's x), meaning the calls one after another; at "
                 "small batch the layers run as a wavefront, one chunk of steps apart."
               : "Several rnn_forward calls (tuples of its arguments in order), meaning the calls "
                 "one after another; at small batch, independent calls run at the same time on "
                 "different threads.");
  }

  m.def(
      "rnn_backward",
      [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
         py::handle grad_out, py::handle grad_h_n, py::handle lengths, const std::string& nonlinearity,
         bool reverse, py::handle grad_x, bool accumulate_grad_x, py::handle grad_h0, py::handle dW_ih,
         py::handle dW_hh, py::handle db_ih, py::handle db_hh, py::handle grad_norms) {
        std::vector<BackwardCall> calls;
        calls.push_back(backward_call(x, W_ih, W_hh, h0, out, grad_out, grad_h_n, lengths,
                                      nonlinearity, reverse, grad_x, accumulate_grad_x, grad_h0,
                                      dW_ih, dW_hh, db_ih, db_hh, grad_norms));
        run_calls(calls, [&](auto tag) { backward_cpu<decltype(tag)>(calls); });
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("h0"), py::arg("out"), py::arg("grad_out"),
      py::arg("grad_h_n"), py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"),
      py::arg("grad_x"), py::arg("accumulate_grad_x"), py::arg("grad_h0"), py::arg("dW_ih"),
      py::arg("dW_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("grad_norms"),
      "Fused BPTT of one layer and direction; accumulates into dW_ih, dW_hh, db_ih, db_hh.");

  for (const bool layers : {false, true}) {
    m.def(
        layers ? "rnn_backward_layers" : "rnn_backward_calls",
        [layers](py::sequence seq) {
          std::vector<BackwardCall> calls;
          for (py::handle item : seq) {
            const py::tuple t = call_tuple(item, 18, layers ? "rnn_backward_layers" : "rnn_backward_calls");
            calls.push_back(backward_call(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7],
                                          str_arg(t[8], "nonlinearity"), bool_arg(t[9], "reverse"),
                                          t[10], bool_arg(t[11], "accumulate_grad_x"), t[12], t[13],
                                          t[14], t[15], t[16], t[17]));
          }
          run_calls(calls, [&](auto tag) { backward_cpu<decltype(tag)>(calls, layers); });
        },
        py::arg("calls"),
        layers ? "BPTT through a stack of layers (tuples of rnn_backward's arguments, the top "
                 "layer first, each layer's grad_x the grad_out of the layer below), meaning the "
                 "calls one after another; at small batch the layers run as a wavefront."
               : "Several rnn_backward calls (tuples of its arguments in order), meaning the calls "
                 "one after another; at small batch, independent calls run at the same time on "
                 "different threads.");
  }

  m.def(
      "matmul",
      [](py::handle A, py::handle B, py::handle C, bool trans_a, bool trans_b, double beta) {
        Array a = Array::numpy(A, "A"), b = Array::numpy(B, "B"), c = Array::numpy(C, "C");
        dispatch_dtype(a, [&](auto tag) {
          using T = decltype(tag);
          check_2d(a);
          check_2d(b);
          const int64_t M = trans_a ? a.shape[1] : a.shape[0], K = trans_a ? a.shape[0] : a.shape[1];
          const int64_t N = trans_b ? b.shape[0] : b.shape[1];
          const int64_t lda = a.shape[1];
          const T* pa = input<T>(a, a.shape);
          const T* pb = input<T>(b, trans_b ? Shape{N, K} : Shape{K, N});
          T* pc = output<T>(c, {M, N});
          check_disjoint({&c}, {&a, &b});
          Interruptible intr(double(M) * double(N) * double(K));
          Accumulators<T> acc;
          if (intr.on() && beta != 0.0) acc.keep(pc, M * N);
          run_stoppable(intr, "matmul: cannot allocate the BLAS's work buffers; C is unchanged",
                        [&] {
                          matmul_cpu<T>(trans_a, trans_b, M, N, K, pa, lda, pb, trans_b ? K : N,
                                        T(beta), pc, N);
                        },
                        [&] { acc.restore(); });
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("beta") = 0.0,
      "C = op(A) @ op(B) + beta * C on elman's threads (C: a C-contiguous output).");

  m.def(
      "rnn_cell_step",
      [](py::handle x, py::handle h, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
         bool relu) -> py::object {
        switch (cell_dtype(W_ih, W_hh)) {
          case DType::float32: return cell_step<float>(x, h, W_ih, W_hh, b_ih, b_hh, relu);
          case DType::float64: return cell_step<double>(x, h, W_ih, W_hh, b_ih, b_hh, relu);
          default: return py::none();
        }
      },
      py::arg("x"), py::arg("h"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"),
      py::arg("relu"),
      "One RNNCell step for exactly-fitting arguments, else None (RNNCell's fast path).");
}

}  // namespace bind
}  // namespace elman
