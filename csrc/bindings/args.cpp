// The validation boundary (args.h): arrays from NumPy or from device descriptions, the checks
// every entry point applies, and the assembly of rnn.h's argument structs. Compiled into each
// module that takes arrays (_core, _cuda).
#include "args.h"

#include <sstream>

namespace elman {
namespace bind {

void value_error(const std::string& m) { throw py::value_error(m); }
void type_error(const std::string& m) { throw py::type_error(m); }
void memory_error(const std::string& m) {
  PyErr_SetString(PyExc_MemoryError, m.c_str());
  throw py::error_already_set();
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

int64_t checked_nbytes(const Shape& shape, int64_t itemsize, const std::string& what) {
  int64_t n = itemsize;
  for (int64_t d : shape) {
    if (d < 0) value_error(what + " " + shape_str(shape) + " has a negative size");
    if (__builtin_mul_overflow(n, d, &n))
      memory_error(what + " " + shape_str(shape) + " needs more than 2^63 bytes");
  }
  return n;
}

template <typename T>
py::array scratch_array(const Shape& shape, const std::string& what) {
  const int64_t bytes = checked_nbytes(shape, sizeof(T), what);
  try {
    return py::array(py::dtype::of<T>(), shape);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    memory_error("cannot allocate " + what + " " + shape_str(shape) + ": " + std::to_string(bytes) +
                 " bytes");
  }
}

namespace {

std::string type_name(py::handle obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

DType dtype_kind(const py::dtype& d) {
  if (d.equal(py::dtype::of<float>())) return DType::float32;
  if (d.equal(py::dtype::of<double>())) return DType::float64;
  if (d.equal(py::dtype::of<int64_t>())) return DType::int64;
  return DType::other;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int64: return "int64";
    default: return "float32 or float64";
  }
}

const char* kind_of(const Array& a) {
  return a.host ? "a numpy.ndarray" : "a device array (elman._device.DeviceView)";
}

[[noreturn]] void not_an_array(const Array& a, py::handle obj) {
  type_error(std::string(a.name) + " must be " + kind_of(a) + ", got " + type_name(obj));
}

Shape int_tuple(py::handle seq) {
  Shape s;
  for (py::handle v : seq) s.push_back(v.cast<int64_t>());
  return s;
}

}  // namespace

Array Array::numpy(py::handle obj, const char* name) {
  Array a;
  a.name = name;
  if (obj.is_none()) return a;
  if (!py::isinstance<py::array>(obj)) not_an_array(a, obj);
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  a.none = false;
  a.data = static_cast<char*>(const_cast<void*>(arr.data()));
  a.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  a.strides.assign(arr.strides(), arr.strides() + arr.ndim());
  a.itemsize = arr.itemsize();
  a.dtype_obj = arr.dtype();
  a.dtype = dtype_kind(py::reinterpret_borrow<py::dtype>(a.dtype_obj));
  a.readonly = !arr.writeable();
  a.obj = std::move(arr);
  return a;
}

Array Array::described(py::handle obj, const char* name) {
  Array a;
  a.name = name;
  a.host = false;
  if (obj.is_none()) return a;
  for (const char* attr : {"ptr", "shape", "strides", "dtype", "readonly", "device"})
    if (!py::hasattr(obj, attr)) not_an_array(a, obj);
  a.none = false;
  a.data = reinterpret_cast<char*>(obj.attr("ptr").cast<uintptr_t>());
  a.shape = int_tuple(obj.attr("shape"));
  const Shape elements = int_tuple(obj.attr("strides"));
  if (elements.size() != a.shape.size())
    value_error(std::string(name) + " has " + std::to_string(elements.size()) + " strides for " +
                std::to_string(a.shape.size()) + " dimensions");
  py::dtype dt = py::dtype::from_args(obj.attr("dtype"));
  a.itemsize = dt.itemsize();
  for (int64_t s : elements) a.strides.push_back(s * a.itemsize);
  a.dtype = dtype_kind(dt);
  a.dtype_obj = std::move(dt);
  a.readonly = obj.attr("readonly").cast<bool>();
  py::object dev = obj.attr("device");
  a.device = dev.is_none() ? -1 : dev.cast<int>();
  a.obj = py::reinterpret_borrow<py::object>(obj);
  return a;
}

bool Array::c_contiguous() const {  // NumPy's rule: dimensions of size 1 have any stride
  if (itemsize <= 0 || reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(itemsize) != 0)
    return false;
  for (int64_t n : shape)
    if (n == 0) return true;
  int64_t expect = itemsize;
  for (int64_t d = ndim() - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

std::pair<uintptr_t, uintptr_t> Array::extent() const {
  if (copied) return caller_extent;
  uintptr_t lo = reinterpret_cast<uintptr_t>(data), hi = lo;
  for (int64_t d = 0; d < ndim(); ++d) {
    if (shape[d] == 0) return {0, 0};
    const int64_t span = strides[d] * (shape[d] - 1);
    if (span < 0) lo += span;
    else hi += span;
  }
  return {lo, hi + itemsize};
}

void Array::copy_to_c_order() {
  checked_nbytes(shape, itemsize, std::string("a C-contiguous copy of ") + name);
  py::array copy;
  try {
    copy = py::module_::import("numpy").attr("array")(obj, py::arg("order") = "C",
                                                        py::arg("copy") = true);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
    memory_error(std::string("cannot allocate a C-contiguous copy of ") + name + " " +
                 shape_str(shape));
  }
  caller_extent = extent();
  copied = true;
  data = static_cast<char*>(copy.mutable_data());
  strides.assign(copy.strides(), copy.strides() + copy.ndim());
  obj = std::move(copy);
}

void require(const Array& a) {
  if (a.none) type_error(std::string(a.name) + " must be " + kind_of(a) + ", got NoneType");
}

void check_dtype(const Array& a, DType expected) {
  if (a.dtype != expected)
    type_error(std::string(a.name) + " must have dtype " + dtype_name(expected) + ", got " +
               py::str(a.dtype_obj).cast<std::string>());
}

void float_dtype_error(const Array& a) {
  type_error(std::string(a.name) + " must have dtype float32 or float64, got " +
             py::str(a.dtype_obj).cast<std::string>());
}

void check_shape(const Array& a, const Shape& expected) {
  if (a.shape != expected)
    value_error(std::string(a.name) + " must have shape " + shape_str(expected) + ", got " +
                shape_str(a.shape));
}

template <typename T>
const T* input(Array& a, const Shape& shape) {
  if (a.none) return nullptr;
  check_dtype(a, dtype_of<T>());
  check_shape(a, shape);
  if (!a.c_contiguous()) {
    if (!a.host)
      value_error(std::string(a.name) + " must be C-contiguous on the device (e.g. torch's "
                  ".contiguous() or cupy.ascontiguousarray)");
    a.copy_to_c_order();
  }
  return reinterpret_cast<const T*>(a.data);
}

template <typename T>
T* output(Array& a, const Shape& shape) {
  require(a);
  check_dtype(a, dtype_of<T>());
  check_shape(a, shape);
  if (a.readonly) value_error(std::string(a.name) + " must be writable");
  if (!a.c_contiguous()) value_error(std::string(a.name) + " must be C-contiguous and aligned");
  return reinterpret_cast<T*>(a.data);
}

namespace {

// The row stride (elements) of a [T, B, n] array seen as T*B rows of n elements; false when its
// layout is not that.
bool row_layout(const Array& a, int64_t n, int64_t* ld) {
  const int64_t item = a.itemsize;
  const int64_t T = a.shape[0], B = a.shape[1];
  if (T == 0 || B == 0) {  // no rows: any layout will do (NumPy gives such arrays odd strides)
    *ld = n;
    return true;
  }
  if (n > 1 && a.strides[2] != item) return false;
  if (reinterpret_cast<uintptr_t>(a.data) % static_cast<uintptr_t>(item) != 0) return false;
  int64_t row;  // stride between consecutive rows (t, b) -> (t, b + 1), in elements
  if (B > 1) {
    if (a.strides[1] % item != 0) return false;
    row = a.strides[1] / item;
  } else if (T > 1) {
    if (a.strides[0] % item != 0) return false;
    row = a.strides[0] / item;
  } else {
    row = n;
  }
  if (row < n) return false;
  if (T > 1 && a.strides[0] != B * row * item) return false;
  *ld = row;
  return true;
}

const char* const kRowsMessage = " must have evenly strided rows with a contiguous last dimension";

}  // namespace

template <typename T>
const T* rows_input(Array& a, const Shape& shape, int64_t* ld) {
  if (a.none) return nullptr;
  check_dtype(a, dtype_of<T>());
  check_shape(a, shape);
  if (!row_layout(a, shape[2], ld)) {
    if (!a.host) value_error(std::string(a.name) + kRowsMessage);
    a.copy_to_c_order();
    *ld = shape[2];
  }
  return reinterpret_cast<const T*>(a.data);
}

template <typename T>
T* rows_output(Array& a, const Shape& shape, int64_t* ld) {
  require(a);
  check_dtype(a, dtype_of<T>());
  check_shape(a, shape);
  if (a.readonly) value_error(std::string(a.name) + " must be writable");
  if (!row_layout(a, shape[2], ld)) value_error(std::string(a.name) + kRowsMessage);
  return reinterpret_cast<T*>(a.data);
}

const int64_t* lengths_input(Array& a, int64_t T, int64_t B) {
  const int64_t* p = input<int64_t>(a, {B});
  if (!p) return nullptr;
  for (int64_t b = 0; b < B; ++b)
    if (p[b] < 1 || p[b] > T)
      value_error("lengths must be in [1, T] = [1, " + std::to_string(T) + "], got lengths[" +
                  std::to_string(b) + "] = " + std::to_string(p[b]));
  return p;
}

void check_disjoint(std::initializer_list<const Array*> outputs,
                    std::initializer_list<const Array*> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    if ((*o)->none) continue;
    const auto eo = (*o)->extent();
    auto clash = [&](const Array* other) {
      if (other->none || other->host != (*o)->host) return;
      const auto e = other->extent();
      if (eo.first < e.second && e.first < eo.second)
        value_error(std::string((*o)->name) + " must not share memory with " + other->name);
    };
    for (const Array* i : inputs) clash(i);
    for (auto p = outputs.begin(); p != o; ++p) clash(*p);
  }
}

int common_device(std::initializer_list<const Array*> arrays) {
  const Array* first = nullptr;
  for (const Array* a : arrays) {
    if (a->none || a->host || a->device < 0) continue;
    if (!first) first = a;
    else if (a->device != first->device)
      value_error(std::string(a->name) + " is on cuda:" + std::to_string(a->device) + " but " +
                  first->name + " is on cuda:" + std::to_string(first->device) +
                  "; every array must be on one device");
  }
  return first ? first->device : 0;
}

namespace {

Activation activation_of(const std::string& s) {
  if (s == "tanh") return Activation::tanh;
  if (s == "relu") return Activation::relu;
  value_error("Unknown nonlinearity '" + s + "'. Select from 'tanh' or 'relu'.");
}

// The sizes from x [T, B, I] and W_hh [H, H]; then the weights, in argument order.
template <typename T>
RnnShape shape_and_weights(Array& x, Array& W_ih, Array& W_hh, Array& b_ih, Array& b_hh,
                           const std::string& nonlinearity, bool reverse, RnnWeights<T>* w) {
  if (x.ndim() != 3) value_error("x must be 3-D (T, B, I), got " + std::to_string(x.ndim()) + "-D");
  require(W_hh);
  if (W_hh.ndim() != 2) value_error("W_hh must be 2-D (H, H), got shape " + shape_str(W_hh.shape));
  RnnShape sh;
  sh.T = x.shape[0];
  sh.B = x.shape[1];
  sh.I = x.shape[2];
  sh.H = W_hh.shape[0];
  if (sh.H < 1)
    value_error("W_hh must have shape (H, H) with H >= 1, got " + shape_str(W_hh.shape));
  sh.act = activation_of(nonlinearity);
  sh.reverse = reverse;
  if (sh.T < 1) value_error("x must have at least one time step, got T = 0");
  require(W_ih);
  w->W_ih = input<T>(W_ih, {sh.H, sh.I});
  w->W_hh = input<T>(W_hh, {sh.H, sh.H});
  w->b_ih = input<T>(b_ih, {sh.H});
  w->b_hh = input<T>(b_hh, {sh.H});
  return sh;
}

}  // namespace

template <typename T>
RnnForwardArgs<T> forward_args(ForwardArrays& a, const std::string& nonlinearity, bool reverse) {
  RnnForwardArgs<T> r;
  require(a.x);
  r.shape = shape_and_weights<T>(a.x, a.W_ih, a.W_hh, a.b_ih, a.b_hh, nonlinearity, reverse, &r.w);
  const RnnShape& sh = r.shape;
  r.x = input<T>(a.x, {sh.T, sh.B, sh.I});
  r.h0 = input<T>(a.h0, {sh.B, sh.H});
  r.shape.lengths = lengths_input(a.lengths, sh.T, sh.B);
  r.out = rows_output<T>(a.out, {sh.T, sh.B, sh.H}, &r.ld_out);
  r.h_n = output<T>(a.h_n, {sh.B, sh.H});
  check_disjoint({&a.out, &a.h_n},
                 {&a.x, &a.W_ih, &a.W_hh, &a.b_ih, &a.b_hh, &a.h0, &a.lengths});
  return r;
}

template <typename T>
RnnBackwardArgs<T> backward_args(BackwardArrays& a, const std::string& nonlinearity, bool reverse,
                                 bool accumulate_grad_x) {
  RnnBackwardArgs<T> r;
  Array no_bias;
  require(a.x);
  r.shape =
      shape_and_weights<T>(a.x, a.W_ih, a.W_hh, no_bias, no_bias, nonlinearity, reverse, &r.w);
  const RnnShape& sh = r.shape;
  const Shape seq = {sh.T, sh.B, sh.H}, state = {sh.B, sh.H};
  r.x = input<T>(a.x, {sh.T, sh.B, sh.I});
  r.h0 = input<T>(a.h0, state);
  r.shape.lengths = lengths_input(a.lengths, sh.T, sh.B);
  require(a.out);
  r.out = rows_input<T>(a.out, seq, &r.ld_out);
  r.grad_out = rows_input<T>(a.grad_out, seq, &r.ld_grad_out);
  if (!r.grad_out) r.ld_grad_out = sh.H;
  r.grad_h_n = input<T>(a.grad_h_n, state);
  r.grad_x = a.grad_x.none ? nullptr : output<T>(a.grad_x, {sh.T, sh.B, sh.I});
  r.accumulate_grad_x = accumulate_grad_x;
  r.grad_h0 = a.grad_h0.none ? nullptr : output<T>(a.grad_h0, state);
  r.dW_ih = output<T>(a.dW_ih, {sh.H, sh.I});
  r.dW_hh = output<T>(a.dW_hh, {sh.H, sh.H});
  r.db_ih = a.db_ih.none ? nullptr : output<T>(a.db_ih, {sh.H});
  r.db_hh = a.db_hh.none ? nullptr : output<T>(a.db_hh, {sh.H});
  r.grad_norms = a.grad_norms.none ? nullptr : output<double>(a.grad_norms, {sh.T});
  check_disjoint({&a.grad_x, &a.grad_h0, &a.dW_ih, &a.dW_hh, &a.db_ih, &a.db_hh, &a.grad_norms},
                 {&a.x, &a.W_ih, &a.W_hh, &a.h0, &a.out, &a.grad_out, &a.grad_h_n, &a.lengths});
  return r;
}

namespace {

bool aligned_c_contiguous(const py::array& a) {
  return (a.flags() & py::array::c_style) &&
         reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(a.itemsize()) == 0;
}

// The data of a C-contiguous, aligned ndarray of `dtype` with `ndim` dimensions, the last of
// size `last` and the first of size `first` (when first >= 0); nullptr for anything else.
const void* fitting(py::handle obj, const py::dtype& dtype, int ndim, int64_t last, int64_t first) {
  if (!py::isinstance<py::array>(obj)) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != ndim || a.shape(ndim - 1) != last || (first >= 0 && a.shape(0) != first) ||
      !aligned_c_contiguous(a) || !a.dtype().equal(dtype))
    return nullptr;
  return a.data();
}

}  // namespace

DType cell_dtype(py::handle W_ih, py::handle W_hh) {
  if (!py::isinstance<py::array>(W_ih) || !py::isinstance<py::array>(W_hh)) return DType::other;
  py::array wi = py::reinterpret_borrow<py::array>(W_ih);
  py::array wh = py::reinterpret_borrow<py::array>(W_hh);
  if (wi.ndim() != 2 || wh.ndim() != 2 || wi.shape(0) != wh.shape(0) ||
      wh.shape(1) != wh.shape(0) || wh.shape(0) < 1 || !aligned_c_contiguous(wi) ||
      !aligned_c_contiguous(wh) || !wi.dtype().equal(wh.dtype()))
    return DType::other;
  const DType d = dtype_kind(wh.dtype());
  return d == DType::float32 || d == DType::float64 ? d : DType::other;
}

template <typename T>
bool cell_args(py::handle x, py::handle h, py::handle W_ih, py::handle W_hh, py::handle b_ih,
               py::handle b_hh, bool relu, RnnCellArgs<T>* a, bool* batched) {
  if (!py::isinstance<py::array>(x)) return false;
  const py::dtype dt = py::dtype::of<T>();
  py::array wi = py::reinterpret_borrow<py::array>(W_ih);  // cell_dtype has checked the weights
  const int64_t H = wi.shape(0), I = wi.shape(1);
  py::array xa = py::reinterpret_borrow<py::array>(x);
  *batched = xa.ndim() == 2;
  const int ndim = *batched ? 2 : 1;
  const int64_t B = *batched ? xa.shape(0) : 1;
  const void* px = fitting(xa, dt, ndim, I, -1);
  const void* ph = h.is_none() ? nullptr : fitting(h, dt, ndim, H, *batched ? B : -1);
  const void* pbi = b_ih.is_none() ? nullptr : fitting(b_ih, dt, 1, H, -1);
  const void* pbh = b_hh.is_none() ? nullptr : fitting(b_hh, dt, 1, H, -1);
  if (!px || (!ph && !h.is_none()) || (!pbi && !b_ih.is_none()) || (!pbh && !b_hh.is_none()))
    return false;
  a->B = B, a->I = I, a->H = H;
  a->act = relu ? Activation::relu : Activation::tanh;
  a->w.W_ih = static_cast<const T*>(wi.data());
  a->w.W_hh = static_cast<const T*>(py::reinterpret_borrow<py::array>(W_hh).data());
  a->w.b_ih = static_cast<const T*>(pbi);
  a->w.b_hh = static_cast<const T*>(pbh);
  a->x = static_cast<const T*>(px);
  a->h = static_cast<const T*>(ph);
  return true;
}

template py::array scratch_array<float>(const Shape&, const std::string&);
template py::array scratch_array<double>(const Shape&, const std::string&);
template const float* input<float>(Array&, const Shape&);
template const double* input<double>(Array&, const Shape&);
template float* output<float>(Array&, const Shape&);
template double* output<double>(Array&, const Shape&);
template const float* rows_input<float>(Array&, const Shape&, int64_t*);
template const double* rows_input<double>(Array&, const Shape&, int64_t*);
template float* rows_output<float>(Array&, const Shape&, int64_t*);
template double* rows_output<double>(Array&, const Shape&, int64_t*);
template RnnForwardArgs<float> forward_args<float>(ForwardArrays&, const std::string&, bool);
template RnnForwardArgs<double> forward_args<double>(ForwardArrays&, const std::string&, bool);
template RnnBackwardArgs<float> backward_args<float>(BackwardArrays&, const std::string&, bool,
                                                      bool);
template RnnBackwardArgs<double> backward_args<double>(BackwardArrays&, const std::string&, bool,
                                                        bool);
template bool cell_args<float>(py::handle, py::handle, py::handle, py::handle, py::handle,
                               py::handle, bool, RnnCellArgs<float>*, bool*);
template bool cell_args<double>(py::handle, py::handle, py::handle, py::handle, py::handle,
                                py::handle, bool, RnnCellArgs<double>*, bool*);

}  // namespace bind
}  // namespace elman
