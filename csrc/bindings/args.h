// THE validation boundary of elman's compiled modules (_core and _cuda): array arguments (NumPy
// arrays on the host, or descriptions of CUDA device arrays) become the plain structs of rnn.h
// here, each rule checked once, with messages that name the argument, the expected and the actual.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "../rnn.h"

namespace elman {
namespace bind {

namespace py = pybind11;
using Shape = std::vector<int64_t>;

[[noreturn]] void value_error(const std::string& m);
[[noreturn]] void type_error(const std::string& m);
[[noreturn]] void memory_error(const std::string& m);
std::string shape_str(const Shape& s);

// Bytes of an array of `shape` and `itemsize`, computed in 64 bits; MemoryError naming `what`
// when the product does not fit (no allocation is attempted), ValueError for a negative size.
int64_t checked_nbytes(const Shape& shape, int64_t itemsize, const std::string& what);

// An uninitialised NumPy array the binding allocates itself: sizes checked first, then
// MemoryError naming it when NumPy cannot have the memory. Nothing has been written anywhere yet.
template <typename T>
py::array scratch_array(const Shape& shape, const std::string& what);

enum class DType : int32_t { float32, float64, int64, other };
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::float32; }
template <>
constexpr DType dtype_of<double>() { return DType::float64; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::int64; }

// One array argument as the kernels will see it. Two sources:
//  - Array::numpy(obj, name): a numpy.ndarray in host memory (TypeError naming it otherwise);
//  - Array::described(obj, name): device memory described by an object with the attributes
//    ptr, shape, strides (in elements), dtype, readonly and device (elman._device.DeviceView).
//    Nothing is ever read at ptr here.
// None gives an absent Array (`none`); the checks below say whether that is allowed.
struct Array {
  const char* name = "";
  bool none = true;
  bool host = true;   // host memory (NumPy); false: CUDA device memory
  char* data = nullptr;
  Shape shape;
  Shape strides;      // in bytes
  int64_t itemsize = 0;
  DType dtype = DType::other;
  bool readonly = false;
  int device = -1;    // the CUDA device of device memory; -1: unknown (a null pointer) or host
  py::object obj;     // keeps the memory alive: the ndarray (or its C-order copy), the description
  py::object dtype_obj;  // the numpy.dtype, for messages

  static Array numpy(py::handle obj, const char* name);
  static Array described(py::handle obj, const char* name);

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  bool c_contiguous() const;  // C order and aligned to the item size
  // [lowest, highest) byte addresses the caller's memory spans (before any copy made here);
  // {0, 0} for an array with no elements.
  std::pair<uintptr_t, uintptr_t> extent() const;
  // Replaces a host array by a C-contiguous copy (MemoryError naming it when that cannot be had).
  void copy_to_c_order();

  bool copied = false;                           // data is a copy made here
  std::pair<uintptr_t, uintptr_t> caller_extent{0, 0};  // the caller's memory, once copied
};

// The checks, in the order every entry point applies them. Each names the array.
void require(const Array& a);                              // not None
void check_dtype(const Array& a, DType expected);          // exactly `expected`
void check_shape(const Array& a, const Shape& expected);
[[noreturn]] void float_dtype_error(const Array& a);       // "x must have dtype float32 or float64"
template <typename T>
const T* input(Array& a, const Shape& shape);  // dtype, shape; C order (a host copy), or nullptr
template <typename T>
T* output(Array& a, const Shape& shape);       // dtype, shape, writable, C-contiguous, aligned
// A [T, B, n] sequence array as T*B rows of n elements at a constant row stride *ld (a column
// slice of a [T, B, m] array qualifies); an input that does not fit is copied to C order.
template <typename T>
const T* rows_input(Array& a, const Shape& shape, int64_t* ld);
template <typename T>
T* rows_output(Array& a, const Shape& shape, int64_t* ld);
// lengths: int64 [B] in host memory with 1 <= lengths[b] <= T, or nullptr for None.
const int64_t* lengths_input(Array& a, int64_t T, int64_t B);

// Outputs must not share memory with any input or with each other: the kernels read inputs
// while they write outputs, and write different outputs from different threads. Absent arrays
// are skipped; host and device memory are compared only among themselves.
void check_disjoint(std::initializer_list<const Array*> outputs,
                    std::initializer_list<const Array*> inputs);

// The CUDA device every present device array is on (0 when none says); ValueError naming two
// arrays on different devices.
int common_device(std::initializer_list<const Array*> arrays);

// The dtype of the first array picks the instantiation (float or double).
template <typename F>
void dispatch_dtype(const Array& a, F&& f) {
  require(a);
  if (a.dtype == DType::float32)
    f(float{});
  else if (a.dtype == DType::float64)
    f(double{});
  else
    float_dtype_error(a);
}

// Runs a kernel without the GIL. std::bad_alloc from it (the kernels allocate their scratch
// before they write anything) becomes MemoryError with `message`.
template <typename F>
void run_kernel(const std::string& message, F&& f) {
  bool out_of_memory = false;
  {
    py::gil_scoped_release nogil;
    try {
      f();
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
  }
  if (out_of_memory) memory_error(message);
}

// The array arguments of rnn_forward / rnn_backward, by their keyword names.
struct ForwardArrays {
  Array x, W_ih, W_hh, b_ih, b_hh, h0, lengths, out, h_n;
};
struct BackwardArrays {
  Array x, W_ih, W_hh, h0, out, grad_out, grad_h_n, lengths, grad_x, grad_h0, dW_ih, dW_hh, db_ih,
      db_hh, grad_norms;
};

// Every rule of rnn_forward / rnn_backward (rnn.h), checked in the order the arguments come;
// the result points into the arrays (and into copies they now hold). Scratch (`dz`) is the
// caller's: nullptr here.
template <typename T>
RnnForwardArgs<T> forward_args(ForwardArrays& a, const std::string& nonlinearity, bool reverse);
template <typename T>
RnnBackwardArgs<T> backward_args(BackwardArrays& a, const std::string& nonlinearity, bool reverse,
                                 bool accumulate_grad_x);

// The fast path of RNNCell, which declines rather than raises. cell_dtype: float32 or float64
// when W_ih [H, I] and W_hh [H, H] are C-contiguous, aligned NumPy arrays of that one dtype
// (H >= 1); DType::other otherwise. cell_args: true when x, h and the biases fit too (NumPy
// arrays of the weights' dtype, C-contiguous, aligned; x [B, I] with h [B, H], or x [I] with
// h [H]; h and the biases may be None), filling *a but for a->h1, and *batched (x is 2-D).
// False for anything else, with nothing raised: the caller then takes the validated path.
DType cell_dtype(py::handle W_ih, py::handle W_hh);
template <typename T>
bool cell_args(py::handle x, py::handle h, py::handle W_ih, py::handle W_hh, py::handle b_ih,
               py::handle b_hh, bool relu, RnnCellArgs<T>* a, bool* batched);

}  // namespace bind
}  // namespace elman
