// elman._cuda: the CUDA backend's entry points, with the keyword signature of elman._core's and
// device array descriptions (elman._device.DeviceView) in place of NumPy arrays, validated by the
// same boundary (args.h) before any CUDA call; device queries, a small owning device buffer for
// staging NumPy arrays, and a DLPack reader.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>

#include "../cuda/runtime.h"
#include "../rnn.h"
#include "args.h"

namespace py = pybind11;
using namespace elman;
using namespace elman::bind;

namespace {

// Device memory owned by Python (freed with the object).
class Buffer {
 public:
  explicit Buffer(size_t bytes) : bytes_(bytes), p_(cuda::malloc_device(bytes)) {}
  ~Buffer() { cuda::free_device(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(p_); }
  size_t nbytes() const { return bytes_; }
  void upload(py::array a, uintptr_t stream) {
    check_size(a);
    if (!(a.flags() & py::array::c_style)) throw py::value_error("upload needs a C-contiguous array");
    cuda::copy_to_device(p_, a.data(), a.nbytes(), reinterpret_cast<void*>(stream));
  }
  void download(py::array a, uintptr_t stream) {
    check_size(a);
    if (!(a.flags() & py::array::c_style) || !a.writeable())
      throw py::value_error("download needs a writable C-contiguous array");
    cuda::copy_to_host(a.mutable_data(), p_, a.nbytes(), reinterpret_cast<void*>(stream));
  }

 private:
  void check_size(const py::array& a) const {
    if (size_t(a.nbytes()) > bytes_)
      throw py::value_error("array of " + std::to_string(a.nbytes()) + " bytes does not fit a buffer of " +
                            std::to_string(bytes_));
  }
  size_t bytes_;
  void* p_;
};

ForwardArrays forward_arrays(py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih,
                             py::handle b_hh, py::handle h0, py::handle lengths, py::handle out,
                             py::handle h_n) {
  return ForwardArrays{Array::described(x, "x"),       Array::described(W_ih, "W_ih"),
                       Array::described(W_hh, "W_hh"), Array::described(b_ih, "b_ih"),
                       Array::described(b_hh, "b_hh"), Array::described(h0, "h0"),
                       Array::numpy(lengths, "lengths"), Array::described(out, "out"),
                       Array::described(h_n, "h_n")};
}

BackwardArrays backward_arrays(py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0,
                               py::handle out, py::handle grad_out, py::handle grad_h_n,
                               py::handle lengths, py::handle grad_x, py::handle grad_h0,
                               py::handle dW_ih, py::handle dW_hh, py::handle db_ih,
                               py::handle db_hh, py::handle grad_norms) {
  return BackwardArrays{
      Array::described(x, "x"),           Array::described(W_ih, "W_ih"),
      Array::described(W_hh, "W_hh"),     Array::described(h0, "h0"),
      Array::described(out, "out"),       Array::described(grad_out, "grad_out"),
      Array::described(grad_h_n, "grad_h_n"), Array::numpy(lengths, "lengths"),
      Array::described(grad_x, "grad_x"), Array::described(grad_h0, "grad_h0"),
      Array::described(dW_ih, "dW_ih"),   Array::described(dW_hh, "dW_hh"),
      Array::described(db_ih, "db_ih"),   Array::described(db_hh, "db_hh"),
      Array::described(grad_norms, "grad_norms")};
}

// The validated arguments and the one device every array is on.
template <typename T>
RnnForwardArgs<T> forward_on_device(ForwardArrays& a, const std::string& nonlinearity, bool reverse,
                                    int* device) {
  RnnForwardArgs<T> r = forward_args<T>(a, nonlinearity, reverse);
  *device = common_device({&a.x, &a.W_ih, &a.W_hh, &a.b_ih, &a.b_hh, &a.h0, &a.out, &a.h_n});
  return r;
}
template <typename T>
RnnBackwardArgs<T> backward_on_device(BackwardArrays& a, const std::string& nonlinearity,
                                      bool reverse, bool accumulate_grad_x, int* device) {
  RnnBackwardArgs<T> r = backward_args<T>(a, nonlinearity, reverse, accumulate_grad_x);
  *device = common_device({&a.x, &a.W_ih, &a.W_hh, &a.h0, &a.out, &a.grad_out, &a.grad_h_n,
                           &a.grad_x, &a.grad_h0, &a.dW_ih, &a.dW_hh, &a.db_ih, &a.db_hh,
                           &a.grad_norms});
  return r;
}

// The checked host lengths (or none) in device memory for one call: copied on the call's stream,
// freed in stream order after the work queued before this object ends (nothing waits).
class DeviceLengths {
 public:
  DeviceLengths(const RnnShape& sh, void* stream) {
    if (sh.lengths) copy_.emplace(sh.lengths, size_t(sh.B) * sizeof(int64_t), stream);
  }
  const int64_t* get() const {
    return copy_ ? static_cast<const int64_t*>(copy_->get()) : nullptr;
  }

 private:
  std::optional<cuda::StreamCopy> copy_;
};

template <typename T>
void forward_cuda(ForwardArrays& arrays, const std::string& nonlinearity, bool reverse,
                  uintptr_t stream, int tier) {
  int device = 0;
  RnnForwardArgs<T> a = forward_on_device<T>(arrays, nonlinearity, reverse, &device);
  if (a.shape.B == 0) return;  // valid, and nothing to compute
  CudaLaunch l;
  l.stream = reinterpret_cast<void*>(stream);
  l.tier = tier;
  py::gil_scoped_release nogil;
  const cuda::CurrentDevice current(device);  // restored when the call returns
  const DeviceLengths lengths(a.shape, l.stream);
  a.shape.lengths = lengths.get();
  rnn_forward_cuda<T>(a, l);
}

template <typename T>
void backward_cuda(BackwardArrays& arrays, const std::string& nonlinearity, bool reverse,
                   bool accumulate_grad_x, uintptr_t stream, int tier) {
  int device = 0;
  RnnBackwardArgs<T> a =
      backward_on_device<T>(arrays, nonlinearity, reverse, accumulate_grad_x, &device);
  if (a.shape.B == 0) return;  // valid, and nothing to compute
  CudaLaunch l;
  l.stream = reinterpret_cast<void*>(stream);
  l.tier = tier;
  py::gil_scoped_release nogil;
  const cuda::CurrentDevice current(device);  // restored when the call returns
  const DeviceLengths lengths(a.shape, l.stream);
  a.shape.lengths = lengths.get();
  rnn_backward_cuda<T>(a, l);
}

// What the boundary made of the arguments, for its tests (no CUDA call, no memory read).
py::dict shape_dict(const RnnShape& sh, int device) {
  py::dict d;
  d["T"] = sh.T, d["B"] = sh.B, d["I"] = sh.I, d["H"] = sh.H;
  d["nonlinearity"] = sh.act == Activation::relu ? "relu" : "tanh";
  d["reverse"] = sh.reverse;
  d["lengths"] = reinterpret_cast<uintptr_t>(sh.lengths);
  d["device"] = device;
  return d;
}
uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

template <typename T>
py::dict forward_checked(ForwardArrays& arrays, const std::string& nonlinearity, bool reverse) {
  int device = 0;
  const RnnForwardArgs<T> a = forward_on_device<T>(arrays, nonlinearity, reverse, &device);
  py::dict d = shape_dict(a.shape, device);
  d["x"] = addr(a.x), d["W_ih"] = addr(a.w.W_ih), d["W_hh"] = addr(a.w.W_hh);
  d["b_ih"] = addr(a.w.b_ih), d["b_hh"] = addr(a.w.b_hh), d["h0"] = addr(a.h0);
  d["out"] = addr(a.out), d["ld_out"] = a.ld_out, d["h_n"] = addr(a.h_n);
  return d;
}

template <typename T>
py::dict backward_checked(BackwardArrays& arrays, const std::string& nonlinearity, bool reverse,
                          bool accumulate_grad_x) {
  int device = 0;
  const RnnBackwardArgs<T> a =
      backward_on_device<T>(arrays, nonlinearity, reverse, accumulate_grad_x, &device);
  py::dict d = shape_dict(a.shape, device);
  d["x"] = addr(a.x), d["W_ih"] = addr(a.w.W_ih), d["W_hh"] = addr(a.w.W_hh);
  d["h0"] = addr(a.h0), d["out"] = addr(a.out), d["ld_out"] = a.ld_out;
  d["grad_out"] = addr(a.grad_out), d["ld_grad_out"] = a.ld_grad_out;
  d["grad_h_n"] = addr(a.grad_h_n), d["grad_x"] = addr(a.grad_x);
  d["accumulate_grad_x"] = a.accumulate_grad_x, d["grad_h0"] = addr(a.grad_h0);
  d["dW_ih"] = addr(a.dW_ih), d["dW_hh"] = addr(a.dW_hh), d["db_ih"] = addr(a.db_ih);
  d["db_hh"] = addr(a.db_hh), d["grad_norms"] = addr(a.grad_norms);
  return d;
}

// DLPack (v0.x ABI), read without taking ownership: the capsule stays alive while the caller
// holds it and its own destructor releases the tensor.
struct DLDevice { int32_t device_type, device_id; };
struct DLDataType { uint8_t code, bits; uint16_t lanes; };
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor { DLTensor dl_tensor; void* manager_ctx; void (*deleter)(DLManagedTensor*); };

py::dict dlpack_info(py::capsule cap) {
  if (std::string(cap.name() ? cap.name() : "") != "dltensor")
    throw py::value_error("expected an unused DLPack capsule named 'dltensor'");
  const DLTensor& t = static_cast<DLManagedTensor*>(cap.get_pointer())->dl_tensor;
  py::list shape, strides;
  int64_t expect = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {  // strides may be NULL: compact row-major
    strides.insert(0, t.strides ? t.strides[i] : expect);
    expect *= t.shape[i];
  }
  for (int i = 0; i < t.ndim; ++i) shape.append(t.shape[i]);
  py::dict d;
  d["ptr"] = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
  d["shape"] = py::tuple(shape);
  d["strides"] = py::tuple(strides);  // in elements
  d["dtype"] = py::make_tuple(int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes));
  d["device"] = py::make_tuple(t.device.device_type, t.device.device_id);
  return d;
}

// Defines `name` with _core.rnn_forward's keyword signature plus stream and tier; `run(tag, arrays,
// nonlinearity, reverse, stream, tier)` does the work for the dtype of x (tag: float or double).
template <typename Run>
void def_forward(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
            py::handle h0, py::handle lengths, const std::string& nonlinearity, bool reverse,
            py::handle out, py::handle h_n, uintptr_t stream, int tier) {
        ForwardArrays a = forward_arrays(x, W_ih, W_hh, b_ih, b_hh, h0, lengths, out, h_n);
        py::object result;
        dispatch_dtype(a.x, [&](auto tag) {
          result = run(tag, a, nonlinearity, reverse, stream, tier);
        });
        return result;
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h0"),
      py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"), py::arg("out"), py::arg("h_n"),
      py::arg("stream") = 0, py::arg("tier") = 0, doc);
}

// The same for _core.rnn_backward's signature.
template <typename Run>
void def_backward(py::module_& m, const char* name, Run run, const char* doc) {
  m.def(
      name,
      [run](py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
            py::handle grad_out, py::handle grad_h_n, py::handle lengths,
            const std::string& nonlinearity, bool reverse, py::handle grad_x,
            bool accumulate_grad_x, py::handle grad_h0, py::handle dW_ih, py::handle dW_hh,
            py::handle db_ih, py::handle db_hh, py::handle grad_norms, uintptr_t stream, int tier) {
        BackwardArrays a = backward_arrays(x, W_ih, W_hh, h0, out, grad_out, grad_h_n, lengths,
                                           grad_x, grad_h0, dW_ih, dW_hh, db_ih, db_hh, grad_norms);
        py::object result;
        dispatch_dtype(a.x, [&](auto tag) {
          result = run(tag, a, nonlinearity, reverse, accumulate_grad_x, stream, tier);
        });
        return result;
      },
      py::arg("x"), py::arg("W_ih"), py::arg("W_hh"), py::arg("h0"), py::arg("out"), py::arg("grad_out"),
      py::arg("grad_h_n"), py::arg("lengths"), py::arg("nonlinearity"), py::arg("reverse"),
      py::arg("grad_x"), py::arg("accumulate_grad_x"), py::arg("grad_h0"), py::arg("dW_ih"),
      py::arg("dW_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("grad_norms"),
      py::arg("stream") = 0, py::arg("tier") = 0, doc);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "elman's CUDA kernels (internal; use the elman package with backend='cuda')";

  m.def("status", []() {
    std::string why;
    const int n = cuda::device_count(&why);
    return py::make_tuple(n, why);
  }, "(number of devices, reason when there is none)");
  m.def("device_name", &cuda::device_name);
  m.def("runtime_version", &cuda::runtime_version);
  m.def("driver_version", &cuda::driver_version);
  m.def("set_device", &cuda::set_device);
  m.def("get_device", &cuda::get_device);
  m.def("pointer_device", [](uintptr_t p) { return cuda::pointer_device(reinterpret_cast<const void*>(p)); });
  m.def("synchronize", [](uintptr_t s) {
    py::gil_scoped_release nogil;
    cuda::synchronize(reinterpret_cast<void*>(s));
  });
  m.def("stream_wait", [](uintptr_t waiter, uintptr_t other) {
    cuda::stream_wait(reinterpret_cast<void*>(waiter), reinterpret_cast<void*>(other));
  });
  m.def("dlpack_info", &dlpack_info, "Pointer, shape, strides (elements), dtype and device of a DLPack capsule");

  py::class_<Buffer>(m, "Buffer")
      .def(py::init<size_t>())
      .def_property_readonly("ptr", &Buffer::ptr)
      .def_property_readonly("nbytes", &Buffer::nbytes)
      .def("upload", &Buffer::upload)
      .def("download", &Buffer::download);

  def_forward(
      m, "rnn_forward",
      [](auto tag, ForwardArrays& a, const std::string& nl, bool reverse, uintptr_t stream,
         int tier) {
        forward_cuda<decltype(tag)>(a, nl, reverse, stream, tier);
        return py::object(py::none());
      },
      "Fused forward of one layer and direction on device arrays (elman._device.DeviceView; "
      "lengths: host int64), queued on `stream`; the arguments of elman._core.rnn_forward.");
  def_backward(
      m, "rnn_backward",
      [](auto tag, BackwardArrays& a, const std::string& nl, bool reverse, bool acc,
         uintptr_t stream, int tier) {
        backward_cuda<decltype(tag)>(a, nl, reverse, acc, stream, tier);
        return py::object(py::none());
      },
      "Fused BPTT of one layer and direction on device arrays, queued on `stream`; the arguments "
      "of elman._core.rnn_backward.");

  py::module_ testing = m.def_submodule("_testing", "Hooks for elman's tests (not an API)");
  def_forward(
      testing, "forward_args",
      [](auto tag, ForwardArrays& a, const std::string& nl, bool reverse, uintptr_t, int) {
        return py::object(forward_checked<decltype(tag)>(a, nl, reverse));
      },
      "rnn_forward's validation alone: what it passes to the kernels (sizes, pointers, strides).");
  def_backward(
      testing, "backward_args",
      [](auto tag, BackwardArrays& a, const std::string& nl, bool reverse, bool acc, uintptr_t,
         int) {
        return py::object(backward_checked<decltype(tag)>(a, nl, reverse, acc));
      },
      "rnn_backward's validation alone: what it passes to the kernels (sizes, pointers, strides).");
}
