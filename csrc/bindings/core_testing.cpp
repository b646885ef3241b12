// elman._core._testing: hooks for tests and benchmarks, not an API: the kernels' own product and
// tanh, the binding's size check, the BLAS's splitting limits, a plain BLAS product and the
// calls that run at the same time run one after another.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../cpu/blas.h"
#include "../rnn.h"
#include "../cpu/kernels.h"
#include "../cpu/threads.h"
#include "args.h"
#include "core.h"

namespace py = pybind11;

namespace elman {
namespace bind {

namespace {

// An operand of a product: "A must be 2-D, got shape (3,)" otherwise.
void check_2d(const Array& a) {
  require(a);
  if (a.ndim() != 2) value_error(std::string(a.name) + " must be 2-D, got shape " + shape_str(a.shape));
}

}  // namespace

void register_testing(py::module_& m) {
  m.def(
      "tn_product",
      [](py::handle A, py::handle B, py::handle C) {
        Array a = Array::numpy(A, "A"), b = Array::numpy(B, "B"), c = Array::numpy(C, "C");
        dispatch_dtype(a, [&](auto tag) {
          using T = decltype(tag);
          check_2d(a);
          check_2d(b);
          const int64_t K = a.shape[0], M = a.shape[1], N = b.shape[1];
          const T* pa = input<T>(a, {K, M});
          const T* pb = input<T>(b, {K, N});
          T* pc = output<T>(c, {M, N});
          const cpu::TnTarget<T> t{pb, N, N, 0, K, pc, N};
          py::gil_scoped_release nogil;
          cpu::kernels<T>().tn_product(pa, M, 0, M, &t, 1);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"),
      "C += A^T @ B with the kernels' own product (single thread), for tests.");

  m.def(
      "tanh",
      [](py::handle x_in) {
        Array x = Array::numpy(x_in, "x");
        py::object result;
        dispatch_dtype(x, [&](auto tag) {
          using T = decltype(tag);
          const T* px = input<T>(x, x.shape);
          py::array y = py::array(py::dtype::of<T>(), x.shape);
          T* py_ = static_cast<T*>(y.mutable_data());
          const int64_t n = y.size();
          {
            py::gil_scoped_release nogil;
            cpu::kernels<T>().tanh(px, py_, n);
          }
          result = y;
        });
        return result;
      },
      py::arg("x"), "The kernels' vectorized tanh (active instruction set), for tests.");

  m.def(
      "checked_nbytes",
      [](const std::vector<int64_t>& shape, int64_t itemsize) {
        return checked_nbytes(shape, itemsize, "an array of shape");
      },
      py::arg("shape"), py::arg("itemsize"),
      "Bytes of an array of this shape, computed in 64 bits; MemoryError when it overflows "
      "(the binding's size check, for tests: nothing is allocated).");

  m.def(
      "_set_blas_limits",
      [](int64_t max_dim, int64_t max_ld) { cpu::blas_set_limits_for_testing(max_dim, max_ld); },
      py::arg("max_dim"), py::arg("max_ld"),
      "Tests only: the largest size and leading dimension handed to the BLAS in one piece "
      "(defaults 2**30 and 2**31 - 1), lowered to run the splitting paths on small arrays.");

  m.def(
      "set_concurrent_calls", [](bool on) { set_concurrent_calls(on); }, py::arg("on"),
      "Tests only: False runs the calls that rnn_forward_calls / rnn_backward_calls would run at "
      "the same time one after another on the calling thread (the same work, bit for bit).");

  m.def("blas_buffers", [] { return cpu::blas_buffers(); },
        "The BLAS work buffers elman has made the BLAS take (threads.h's reserve_blas).");

  m.def(
      "blas_gemm",
      [](py::handle A, py::handle B, py::handle C) {
        Array a = Array::numpy(A, "A"), b = Array::numpy(B, "B"), c = Array::numpy(C, "C");
        dispatch_dtype(a, [&](auto tag) {
          using T = decltype(tag);
          check_2d(a);
          check_2d(b);
          const int64_t M = a.shape[0], K = a.shape[1], N = b.shape[1];
          const T* pa = input<T>(a, {M, K});
          const T* pb = input<T>(b, {K, N});
          T* pc = output<T>(c, {M, N});
          py::gil_scoped_release nogil;
          cpu::reserve_blas(1);
          cpu::gemm<T>(false, false, M, N, K, T(1), pa, K, pb, N, T(0), pc, N);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"),
      "C = A @ B through the bundled BLAS (used by `elman bench` to measure the peak).");
}

}  // namespace bind
}  // namespace elman
