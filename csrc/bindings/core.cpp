// elman._core: validate every argument, take pointers, release the GIL, call the CPU kernels.
// Messages name the argument and give expected vs actual. Inputs in any memory layout are
// accepted by copying them to C order (never read with the wrong strides); outputs must be
// writable arrays whose rows are evenly strided.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "../cpu/blas.h"
#include "../cpu/fpmode.h"
#include "../cpu/kernels.h"
#include "../cpu/threads.h"
#include "../rnn.h"

namespace py = pybind11;
using namespace elman;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}
std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}
std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] void value_error(const std::string& m) { throw py::value_error(m); }
[[noreturn]] void type_error(const std::string& m) { throw py::type_error(m); }
[[noreturn]] void memory_error(const std::string& m) {
  PyErr_SetString(PyExc_MemoryError, m.c_str());
  throw py::error_already_set();
}

// Bytes of an array of `shape` and `itemsize`, computed in 64 bits; MemoryError naming `what`
// when the product does not fit (no allocation is attempted). A pure function, exposed to the
// tests as _core.checked_nbytes so that huge sizes can be checked without allocating them.
int64_t checked_nbytes(const std::vector<int64_t>& shape, int64_t itemsize, const std::string& what) {
  int64_t n = itemsize;
  for (int64_t d : shape) {
    if (d < 0) value_error(what + " " + shape_str(shape) + " has a negative size");
    if (__builtin_mul_overflow(n, d, &n))
      memory_error(what + " " + shape_str(shape) + " needs more than 2^63 bytes");
  }
  return n;
}

// An uninitialised array the binding allocates itself: sizes checked first, then MemoryError
// naming it when NumPy cannot have the memory. Nothing has been written anywhere yet.
template <typename T>
py::array scratch_array(const std::vector<int64_t>& shape, const std::string& what) {
  const int64_t bytes = checked_nbytes(shape, sizeof(T), what);
  try {
    return py::array(py::dtype::of<T>(), shape);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    memory_error("cannot allocate " + what + " " + shape_str(shape) + ": " + std::to_string(bytes) +
                 " bytes");
  }
}

// [lowest, highest) byte addresses an array may touch; empty for an array of size 0.
std::pair<uintptr_t, uintptr_t> extent(const py::array& a) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(a.data()), hi = lo;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) == 0) return {0, 0};
    const py::ssize_t span = a.strides(d) * (a.shape(d) - 1);
    if (span < 0) lo += span;
    else hi += span;
  }
  return {lo, hi + a.itemsize()};
}

// Outputs must not share memory with any input or with each other: the kernels read inputs
// while they write outputs, and write different outputs from different threads. A named array
// (nullptr handles and None are skipped).
struct Named {
  const char* name;
  py::handle obj;
};
void check_disjoint(std::initializer_list<Named> outputs, std::initializer_list<Named> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    if (!o->obj || !py::isinstance<py::array>(o->obj)) continue;
    const auto eo = extent(py::reinterpret_borrow<py::array>(o->obj));
    auto clash = [&](const Named& other) {
      if (!other.obj || !py::isinstance<py::array>(other.obj)) return;
      const auto e = extent(py::reinterpret_borrow<py::array>(other.obj));
      if (eo.first < e.second && e.first < eo.second)
        value_error(std::string(o->name) + " must not share memory with " + other.name);
    };
    for (const Named& i : inputs) clash(i);
    for (auto p = outputs.begin(); p != o; ++p) clash(*p);
  }
}

py::array to_array(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be a numpy.ndarray, got " +
               py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

void check_shape(const py::array& a, const char* name, const std::vector<int64_t>& expected) {
  if (shape_of(a) != expected)
    value_error(std::string(name) + " must have shape " + shape_str(expected) + ", got " +
                shape_str(shape_of(a)));
}

template <typename T>
void check_dtype(const py::array& a, const char* name) {
  if (!a.dtype().equal(py::dtype::of<T>()))
    type_error(std::string(name) + " must have dtype " + py::str(py::dtype::of<T>()).cast<std::string>() +
               ", got " + dtype_str(a));
}

bool aligned_c_contiguous(const py::array& a) {
  return (a.flags() & py::array::c_style) &&
         reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(a.itemsize()) == 0;
}

// An input: exact dtype and shape, returned C-contiguous and aligned (a copy when it is not).
template <typename T>
py::array input(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
  py::array a = to_array(obj, name);
  check_dtype<T>(a, name);
  check_shape(a, name, shape);
  if (aligned_c_contiguous(a)) return a;
  checked_nbytes(shape, sizeof(T), std::string("a C-contiguous copy of ") + name);
  try {
    return py::module_::import("numpy").attr("array")(a, py::arg("order") = "C", py::arg("copy") = true);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    memory_error(std::string("cannot allocate a C-contiguous copy of ") + name + " " + shape_str(shape));
  }
}
template <typename T>
const T* optional_input(py::handle obj, const char* name, const std::vector<int64_t>& shape,
                        std::vector<py::array>& keep) {
  if (obj.is_none()) return nullptr;
  keep.push_back(input<T>(obj, name, shape));
  return static_cast<const T*>(keep.back().data());
}

// An output: exact dtype and shape, writable, aligned, rightmost dimension contiguous.
template <typename T>
T* output(py::handle obj, const char* name, const std::vector<int64_t>& shape) {
  py::array a = to_array(obj, name);
  check_dtype<T>(a, name);
  check_shape(a, name, shape);
  if (!a.writeable()) value_error(std::string(name) + " must be writable");
  if (!aligned_c_contiguous(a)) value_error(std::string(name) + " must be C-contiguous and aligned");
  return static_cast<T*>(a.mutable_data());
}

// A [T, B, n] sequence array seen as T*B rows of n elements at a constant row stride `ld`
// (a column slice of a [T, B, m] array qualifies). Returns false when the layout does not fit.
bool row_layout(const py::array& a, int64_t n, int64_t* ld) {
  const int64_t item = a.itemsize();
  const int64_t T = a.shape(0), B = a.shape(1);
  if (T == 0 || B == 0) {  // no rows: any layout will do (NumPy gives such arrays odd strides)
    *ld = n;
    return true;
  }
  if (n > 1 && a.strides(2) != item) return false;
  if (reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(item) != 0) return false;
  int64_t row;  // stride between consecutive rows (t, b) -> (t, b + 1), in elements
  if (B > 1) {
    if (a.strides(1) % item != 0) return false;
    row = a.strides(1) / item;
  } else if (T > 1) {
    if (a.strides(0) % item != 0) return false;
    row = a.strides(0) / item;
  } else {
    row = n;
  }
  if (row < n) return false;
  if (T > 1 && a.strides(0) != B * row * item) return false;
  *ld = row;
  return true;
}

template <typename T>
const T* rows_input(py::handle obj, const char* name, const std::vector<int64_t>& shape,
                    std::vector<py::array>& keep, int64_t* ld) {
  if (obj.is_none()) return nullptr;
  py::array a = to_array(obj, name);
  check_dtype<T>(a, name);
  check_shape(a, name, shape);
  if (!row_layout(a, shape[2], ld)) {
    a = input<T>(a, name, shape);
    *ld = shape[2];
  }
  keep.push_back(a);
  return static_cast<const T*>(a.data());
}

template <typename T>
T* rows_output(py::handle obj, const char* name, const std::vector<int64_t>& shape, int64_t* ld) {
  py::array a = to_array(obj, name);
  check_dtype<T>(a, name);
  check_shape(a, name, shape);
  if (!a.writeable()) value_error(std::string(name) + " must be writable");
  if (!row_layout(a, shape[2], ld))
    value_error(std::string(name) + " must have evenly strided rows with a contiguous last dimension");
  return static_cast<T*>(a.mutable_data());
}

// lengths: int64 [B] with 1 <= lengths[b] <= T, or None.
const int64_t* lengths_input(py::handle obj, int64_t T, int64_t B, std::vector<py::array>& keep) {
  if (obj.is_none()) return nullptr;
  const int64_t* p = optional_input<int64_t>(obj, "lengths", {B}, keep);
  for (int64_t b = 0; b < B; ++b)
    if (p[b] < 1 || p[b] > T)
      value_error("lengths must be in [1, T] = [1, " + std::to_string(T) + "], got lengths[" +
                  std::to_string(b) + "] = " + std::to_string(p[b]));
  return p;
}

Activation activation_of(const std::string& s) {
  if (s == "tanh") return Activation::tanh;
  if (s == "relu") return Activation::relu;
  value_error("Unknown nonlinearity '" + s + "'. Select from 'tanh' or 'relu'.");
}

// Reads the shape from x [T, B, I] and W_hh [H, H]; validates the weights.
template <typename T>
RnnShape shape_and_weights(const py::array& x, py::handle W_ih, py::handle W_hh, py::handle b_ih,
                           py::handle b_hh, const std::string& nonlinearity, bool reverse,
                           RnnWeights<T>* w, std::vector<py::array>& keep) {
  if (x.ndim() != 3) value_error("x must be 3-D (T, B, I), got " + std::to_string(x.ndim()) + "-D");
  py::array whh = to_array(W_hh, "W_hh");
  if (whh.ndim() != 2)
    value_error("W_hh must be 2-D (H, H), got shape " + shape_str(shape_of(whh)));
  RnnShape sh;
  sh.T = x.shape(0);
  sh.B = x.shape(1);
  sh.I = x.shape(2);
  sh.H = whh.shape(0);
  if (sh.H < 1) value_error("W_hh must have shape (H, H) with H >= 1, got " + shape_str(shape_of(whh)));
  sh.act = activation_of(nonlinearity);
  sh.reverse = reverse;
  if (sh.T < 1) value_error("x must have at least one time step, got T = 0");
  w->W_ih = optional_input<T>(W_ih, "W_ih", {sh.H, sh.I}, keep);
  w->W_hh = optional_input<T>(W_hh, "W_hh", {sh.H, sh.H}, keep);
  if (!w->W_ih) type_error("W_ih must be a numpy.ndarray, got None");
  w->b_ih = optional_input<T>(b_ih, "b_ih", {sh.H}, keep);
  w->b_hh = optional_input<T>(b_hh, "b_hh", {sh.H}, keep);
  return sh;
}

// Runs a kernel without the GIL. The kernels allocate their scratch (packed W_hh, per-row
// buffers) before they write anything, so running out of memory leaves every output untouched.
template <typename F>
void run_kernel(const char* what, F&& f) {
  bool out_of_memory = false;
  {
    py::gil_scoped_release nogil;
    try {
      f();
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
  }
  if (out_of_memory)
    memory_error(std::string(what) + ": cannot allocate the kernel's scratch memory (packed W_hh, "
                 "per-row buffers); no output was written");
}

template <typename T>
void forward_impl(py::array x_in, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
                  py::handle h0, py::handle lengths, const std::string& nonlinearity, bool reverse,
                  py::handle out, py::handle h_n) {
  std::vector<py::array> keep;
  RnnForwardArgs<T> a;
  a.shape = shape_and_weights<T>(x_in, W_ih, W_hh, b_ih, b_hh, nonlinearity, reverse, &a.w, keep);
  const RnnShape& sh = a.shape;
  a.x = optional_input<T>(x_in, "x", {sh.T, sh.B, sh.I}, keep);
  a.h0 = optional_input<T>(h0, "h0", {sh.B, sh.H}, keep);
  a.shape.lengths = lengths_input(lengths, sh.T, sh.B, keep);
  a.out = rows_output<T>(out, "out", {sh.T, sh.B, sh.H}, &a.ld_out);
  a.h_n = output<T>(h_n, "h_n", {sh.B, sh.H});
  check_disjoint({{"out", out}, {"h_n", h_n}},
                 {{"x", x_in}, {"W_ih", W_ih}, {"W_hh", W_hh}, {"b_ih", b_ih}, {"b_hh", b_hh},
                  {"h0", h0}, {"lengths", lengths}});
  checked_nbytes({sh.H, sh.H + 64}, sizeof(T), "rnn_forward: packed W_hh");
  run_kernel("rnn_forward", [&] { rnn_forward_cpu<T>(a); });
}

template <typename T>
void backward_impl(py::array x_in, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
                   py::handle grad_out, py::handle grad_h_n, py::handle lengths,
                   const std::string& nonlinearity, bool reverse, py::handle grad_x,
                   bool accumulate_grad_x, py::handle grad_h0, py::handle dW_ih, py::handle dW_hh,
                   py::handle db_ih, py::handle db_hh, py::handle grad_norms) {
  std::vector<py::array> keep;
  RnnBackwardArgs<T> a;
  a.shape = shape_and_weights<T>(x_in, W_ih, W_hh, py::none(), py::none(), nonlinearity, reverse,
                                 &a.w, keep);
  const RnnShape& sh = a.shape;
  const std::vector<int64_t> seq = {sh.T, sh.B, sh.H}, state = {sh.B, sh.H};
  a.x = optional_input<T>(x_in, "x", {sh.T, sh.B, sh.I}, keep);
  a.h0 = optional_input<T>(h0, "h0", state, keep);
  a.shape.lengths = lengths_input(lengths, sh.T, sh.B, keep);
  a.out = rows_input<T>(out, "out", seq, keep, &a.ld_out);
  if (!a.out) type_error("out must be a numpy.ndarray, got None");
  a.grad_out = rows_input<T>(grad_out, "grad_out", seq, keep, &a.ld_grad_out);
  a.grad_h_n = optional_input<T>(grad_h_n, "grad_h_n", state, keep);
  a.grad_x = grad_x.is_none() ? nullptr : output<T>(grad_x, "grad_x", {sh.T, sh.B, sh.I});
  a.accumulate_grad_x = accumulate_grad_x;
  a.grad_h0 = grad_h0.is_none() ? nullptr : output<T>(grad_h0, "grad_h0", state);
  a.dW_ih = output<T>(dW_ih, "dW_ih", {sh.H, sh.I});
  a.dW_hh = output<T>(dW_hh, "dW_hh", {sh.H, sh.H});
  a.db_ih = db_ih.is_none() ? nullptr : output<T>(db_ih, "db_ih", {sh.H});
  a.db_hh = db_hh.is_none() ? nullptr : output<T>(db_hh, "db_hh", {sh.H});
  a.grad_norms = grad_norms.is_none() ? nullptr : output<double>(grad_norms, "grad_norms", {sh.T});
  check_disjoint({{"grad_x", grad_x}, {"grad_h0", grad_h0}, {"dW_ih", dW_ih}, {"dW_hh", dW_hh},
                  {"db_ih", db_ih}, {"db_hh", db_hh}, {"grad_norms", grad_norms}},
                 {{"x", x_in}, {"W_ih", W_ih}, {"W_hh", W_hh}, {"h0", h0}, {"out", out},
                  {"grad_out", grad_out}, {"grad_h_n", grad_h_n}, {"lengths", lengths}});
  checked_nbytes({sh.H, sh.H + 64}, sizeof(T), "rnn_backward: packed W_hh");
  // Scratch for dz [T, B, H], allocated before anything is written.
  py::array dz = scratch_array<T>(seq, "rnn_backward: the scratch dz [T, B, H] =");
  a.dz = static_cast<T*>(dz.mutable_data());
  run_kernel("rnn_backward", [&] { rnn_backward_cpu<T>(a); });
}

// The dtype of the first array picks the instantiation; every other array must match it.
template <typename F>
void dispatch_dtype(const py::array& x, const char* name, F&& f) {
  if (x.dtype().equal(py::dtype::of<float>()))
    f(float{});
  else if (x.dtype().equal(py::dtype::of<double>()))
    f(double{});
  else
    type_error(std::string(name) + " must have dtype float32 or float64, got " + dtype_str(x));
}

// One RNNCell step for the common case, with no Python-side checks: returns None whenever the
// arguments are not exactly that case (then the caller takes the fully validated path, which
// converts or raises the documented errors).
template <typename T>
py::object cell_step(const py::array& x, py::handle h, const py::array& W_ih, const py::array& W_hh,
                     py::handle b_ih, py::handle b_hh, Activation act) {
  const int64_t H = W_hh.shape(0), I = W_ih.shape(1);
  const bool batched = x.ndim() == 2;
  const int64_t B = batched ? x.shape(0) : 1;
  if ((!batched && x.ndim() != 1) || x.shape(x.ndim() - 1) != I || !aligned_c_contiguous(x) ||
      !x.dtype().equal(W_hh.dtype()))
    return py::none();
  const T* hp = nullptr;
  if (!h.is_none()) {
    if (!py::isinstance<py::array>(h)) return py::none();
    py::array ha = py::reinterpret_borrow<py::array>(h);
    if (ha.ndim() != x.ndim() || ha.shape(ha.ndim() - 1) != H || (batched && ha.shape(0) != B) ||
        !aligned_c_contiguous(ha) || !ha.dtype().equal(W_hh.dtype()))
      return py::none();
    hp = static_cast<const T*>(ha.data());
  }
  const T *bi = nullptr, *bh = nullptr;
  for (auto [obj, ptr] : {std::pair<py::handle, const T**>{b_ih, &bi}, {b_hh, &bh}}) {
    if (obj.is_none()) continue;
    if (!py::isinstance<py::array>(obj)) return py::none();
    py::array b = py::reinterpret_borrow<py::array>(obj);
    if (b.ndim() != 1 || b.shape(0) != H || !aligned_c_contiguous(b) || !b.dtype().equal(W_hh.dtype()))
      return py::none();
    *ptr = static_cast<const T*>(b.data());
  }
  py::array out = batched ? py::array(py::dtype::of<T>(), std::vector<int64_t>{B, H})
                          : py::array(py::dtype::of<T>(), std::vector<int64_t>{H});
  T* o = static_cast<T*>(out.mutable_data());
  const T* xp = static_cast<const T*>(x.data());
  const T* wi = static_cast<const T*>(W_ih.data());
  const T* wh = static_cast<const T*>(W_hh.data());
  if (B * H * (I + H) <= 262144) {  // small: the dot-product kernel, no GIL release needed
    cpu::kernels<T>().cell_step(B, I, H, act, xp, hp, wi, wh, bi, bh, o);
    return out;
  }
  {
    py::gil_scoped_release nogil;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) o[b * H + j] = (bi ? bi[j] : T(0)) + (bh ? bh[j] : T(0));
    cpu::gemm<T>(false, true, B, H, I, T(1), xp, I, wi, I, T(1), o, H);
    if (hp) cpu::gemm<T>(false, true, B, H, H, T(1), hp, H, wh, H, T(1), o, H);
    if (act == Activation::tanh) {
      cpu::kernels<T>().tanh(o, o, B * H);
    } else {
      for (int64_t i = 0; i < B * H; ++i) o[i] = o[i] < T(0) ? T(0) : o[i];
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "elman's compiled CPU kernels (internal; use the elman package)";

  m.def(
      "rnn_forward",
      [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
         py::handle h0, py::handle lengths, const std::string& nonlinearity, bool reverse,
         py::handle out, py::handle h_n) {
        py::array xa = to_array(x, "x");
        dispatch_dtype(xa, "x", [&](auto tag) {
          forward_impl<decltype(tag)>(xa, W_ih, W_hh, b_ih, b_hh, h0, lengths, nonlinearity, reverse, out, h_n);
        });
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"),
      py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"), py::arg("out"), py::arg("h_n"),
      "Fused forward of one layer and direction; writes out [T, B, H] (any row stride) and h_n [B, H].");

  m.def(
      "rnn_backward",
      [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
         py::handle grad_out, py::handle grad_h_n, py::handle lengths, const std::string& nonlinearity,
         bool reverse, py::handle grad_x, bool accumulate_grad_x, py::handle grad_h0, py::handle dW_ih,
         py::handle dW_hh, py::handle db_ih, py::handle db_hh, py::handle grad_norms) {
        py::array xa = to_array(x, "x");
        dispatch_dtype(xa, "x", [&](auto tag) {
          backward_impl<decltype(tag)>(xa, W_ih, W_hh, h0, out, grad_out, grad_h_n, lengths, nonlinearity,
                                       reverse, grad_x, accumulate_grad_x, grad_h0, dW_ih, dW_hh, db_ih,
                                       db_hh, grad_norms);
        });
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("h0"), py::arg("out"), py::arg("grad_out"),
      py::arg("grad_h_n"), py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"),
      py::arg("grad_x"), py::arg("accumulate_grad_x"), py::arg("grad_h0"), py::arg("dW_ih"),
      py::arg("dW_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("grad_norms"),
      "Fused BPTT of one layer and direction; accumulates into dW_ih, dW_hh, db_ih, db_hh.");

  m.def(
      "blas_gemm",
      [](py::handle A, py::handle B, py::handle C) {
        py::array a = to_array(A, "A");
        dispatch_dtype(a, "A", [&](auto tag) {
          using T = decltype(tag);
          if (a.ndim() != 2) value_error("A must be 2-D, got " + shape_str(shape_of(a)));
          const int64_t M = a.shape(0), K = a.shape(1);
          py::array b = to_array(B, "B");
          if (b.ndim() != 2) value_error("B must be 2-D, got " + shape_str(shape_of(b)));
          const int64_t N = b.shape(1);
          std::vector<py::array> keep;
          const T* pa = optional_input<T>(A, "A", {M, K}, keep);
          const T* pb = optional_input<T>(B, "B", {K, N}, keep);
          T* pc = output<T>(C, "C", {M, N});
          py::gil_scoped_release nogil;
          cpu::gemm<T>(false, false, M, N, K, T(1), pa, K, pb, N, T(0), pc, N);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"),
      "C = A @ B through the bundled BLAS (used by `elman bench` to measure the peak).");

  m.def(
      "matmul",
      [](py::handle A, py::handle B, py::handle C, bool trans_a, bool trans_b, double beta) {
        py::array a = to_array(A, "A");
        dispatch_dtype(a, "A", [&](auto tag) {
          using T = decltype(tag);
          py::array b = to_array(B, "B");
          if (a.ndim() != 2) value_error("A must be 2-D, got shape " + shape_str(shape_of(a)));
          if (b.ndim() != 2) value_error("B must be 2-D, got shape " + shape_str(shape_of(b)));
          const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
          const int64_t N = trans_b ? b.shape(0) : b.shape(1);
          std::vector<py::array> keep;
          const T* pa = optional_input<T>(A, "A", shape_of(a), keep);
          const T* pb = optional_input<T>(B, "B", trans_b ? std::vector<int64_t>{N, K} : std::vector<int64_t>{K, N}, keep);
          T* pc = output<T>(C, "C", {M, N});
          check_disjoint({{"C", C}}, {{"A", A}, {"B", B}});
          py::gil_scoped_release nogil;
          matmul_cpu<T>(trans_a, trans_b, M, N, K, pa, a.shape(1), pb, trans_b ? K : N, T(beta), pc, N);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("beta") = 0.0,
      "C = op(A) @ op(B) + beta * C on elman's threads (C: a C-contiguous output).");

  m.def(
      "rnn_cell_step",
      [](py::handle x, py::handle h, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
         bool relu) -> py::object {
        if (!py::isinstance<py::array>(x) || !py::isinstance<py::array>(W_ih) || !py::isinstance<py::array>(W_hh))
          return py::none();
        py::array xa = py::reinterpret_borrow<py::array>(x);
        py::array wi = py::reinterpret_borrow<py::array>(W_ih);
        py::array wh = py::reinterpret_borrow<py::array>(W_hh);
        if (wi.ndim() != 2 || wh.ndim() != 2 || wi.shape(0) != wh.shape(0) || wh.shape(1) != wh.shape(0) ||
            wh.shape(0) < 1 || !aligned_c_contiguous(wi) ||
            !aligned_c_contiguous(wh) || !wi.dtype().equal(wh.dtype()))
          return py::none();
        const Activation act = relu ? Activation::relu : Activation::tanh;
        if (wh.dtype().equal(py::dtype::of<float>())) return cell_step<float>(xa, h, wi, wh, b_ih, b_hh, act);
        if (wh.dtype().equal(py::dtype::of<double>())) return cell_step<double>(xa, h, wi, wh, b_ih, b_hh, act);
        return py::none();
      },
      py::arg("x"), py::arg("h"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"),
      py::arg("relu"),
      "One RNNCell step for exactly-fitting arguments, else None (RNNCell's fast path).");

  m.def(
      "tn_product",
      [](py::handle A, py::handle B, py::handle C) {
        py::array a = to_array(A, "A");
        dispatch_dtype(a, "A", [&](auto tag) {
          using T = decltype(tag);
          if (a.ndim() != 2) value_error("A must be 2-D, got " + shape_str(shape_of(a)));
          const int64_t K = a.shape(0), M = a.shape(1);
          py::array b = to_array(B, "B");
          if (b.ndim() != 2) value_error("B must be 2-D, got " + shape_str(shape_of(b)));
          const int64_t N = b.shape(1);
          std::vector<py::array> keep;
          const T* pa = optional_input<T>(A, "A", {K, M}, keep);
          const T* pb = optional_input<T>(B, "B", {K, N}, keep);
          T* pc = output<T>(C, "C", {M, N});
          const cpu::TnTarget<T> t{pb, N, N, 0, K, pc, N};
          py::gil_scoped_release nogil;
          cpu::kernels<T>().tn_product(pa, M, 0, M, &t, 1);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("C"),
      "C += A^T @ B with the kernels' own product (single thread), for tests.");

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
      "set_num_threads",
      [](int n) {
        if (n < 1) value_error("num_threads must be >= 1, got " + std::to_string(n));
        py::gil_scoped_release nogil;
        cpu::set_num_threads(n);
        cpu::blas_set_num_threads(1);
      },
      "Threads of the CPU kernels (the bundled BLAS runs single-threaded inside each).");
  m.def("get_num_threads", []() { return cpu::get_num_threads(); });
  m.def(
      "set_flush_denormal", [](bool on) { cpu::set_flush_denormals(on); }, py::arg("on"),
      "Flush-to-zero and denormals-are-zero inside the kernels (on by default).");
  m.def("get_flush_denormal", []() { return cpu::flush_denormals(); });
  m.def("default_num_threads", []() { return cpu::default_num_threads(); });
  m.def(
      "set_isa",
      [](const std::string& name) {
        for (cpu::Isa isa : {cpu::Isa::baseline, cpu::Isa::avx2, cpu::Isa::avx512})
          if (name == cpu::isa_name(isa)) return cpu::set_active_isa(isa);
        value_error("unknown instruction set '" + name + "'; expected 'baseline', 'avx2' or 'avx512'");
      },
      py::arg("name"),
      "Selects the kernels' instruction set level; returns False if this CPU lacks it.");
  m.def("get_isa", []() { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def(
      "tanh",
      [](py::handle x_in) {
        py::array xa = to_array(x_in, "x");
        py::object result;
        dispatch_dtype(xa, "x", [&](auto tag) {
          using T = decltype(tag);
          std::vector<py::array> keep;
          const T* x = optional_input<T>(xa, "x", shape_of(xa), keep);
          py::array y = py::array(py::dtype::of<T>(), shape_of(xa));
          T* py_ = static_cast<T*>(y.mutable_data());
          const int64_t n = xa.size();
          {
            py::gil_scoped_release nogil;
            cpu::kernels<T>().tanh(x, py_, n);
          }
          result = y;
        });
        return result;
      },
      py::arg("x"), "The kernels' vectorized tanh (active instruction set), for tests.");
  m.def("info", []() {
    py::dict d;
    d["isa"] = std::string(cpu::isa_name(cpu::active_isa()));
    d["isa_supported"] = std::string(cpu::isa_name(cpu::best_supported_isa()));
    d["threads"] = cpu::get_num_threads();
    d["blas"] = "OpenBLAS (scipy-openblas32), single-threaded inside each elman thread";
    d["blas_config"] = std::string(cpu::blas_config());
    d["blas_corename"] = std::string(cpu::blas_corename());
    d["build"] = std::string(ELMAN_BUILD_TYPE) + ", " + ELMAN_COMPILER;
    return d;
  });
}
