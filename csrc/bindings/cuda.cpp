// elman._cuda: the CUDA backend's entry points on raw device pointers, device queries, a small
// owning device buffer for staging NumPy arrays, and a DLPack reader. Python (elman._cuda_fn)
// validates shapes, dtypes and devices before calling; this file releases the GIL and calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "../cuda/runtime.h"
#include "../rnn.h"

namespace py = pybind11;
using namespace elman;

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

template <typename T>
T* P(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

Activation act_of(const std::string& s) {
  if (s == "tanh") return Activation::tanh;
  if (s == "relu") return Activation::relu;
  throw py::value_error("Unknown nonlinearity '" + s + "'. Select from 'tanh' or 'relu'.");
}

RnnShape shape_of(int64_t T, int64_t B, int64_t I, int64_t H, const std::string& act, bool reverse,
                  uintptr_t lengths) {
  RnnShape sh;
  sh.T = T, sh.B = B, sh.I = I, sh.H = H;
  sh.act = act_of(act);
  sh.reverse = reverse;
  sh.lengths = P<const int64_t>(lengths);
  return sh;
}

template <typename F>
void by_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32")
    f(float{});
  else if (dtype == "float64")
    f(double{});
  else
    throw py::type_error("dtype must be float32 or float64, got " + dtype);
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

  m.def(
      "rnn_forward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t I, int64_t H, const std::string& act,
         bool reverse, uintptr_t x, uintptr_t W_ih, uintptr_t W_hh, uintptr_t b_ih, uintptr_t b_hh,
         uintptr_t h0, uintptr_t lengths, uintptr_t out, int64_t ld_out, uintptr_t h_n, int device,
         uintptr_t stream, int tier) {
        by_dtype(dtype, [&](auto tag) {
          using T_ = decltype(tag);
          RnnForwardArgs<T_> a;
          a.shape = shape_of(T, B, I, H, act, reverse, lengths);
          a.w = RnnWeights<T_>{P<const T_>(W_ih), P<const T_>(W_hh), P<const T_>(b_ih), P<const T_>(b_hh)};
          a.x = P<const T_>(x);
          a.h0 = P<const T_>(h0);
          a.out = P<T_>(out);
          a.ld_out = ld_out;
          a.h_n = P<T_>(h_n);
          CudaLaunch l;
          l.stream = reinterpret_cast<void*>(stream);
          l.tier = tier;
          py::gil_scoped_release nogil;
          cuda::set_device(device);
          rnn_forward_cuda<T_>(a, l);
        });
      },
      "Fused forward of one layer and direction on device pointers (validated by the caller).");

  m.def(
      "rnn_backward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t I, int64_t H, const std::string& act,
         bool reverse, uintptr_t x, uintptr_t W_ih, uintptr_t W_hh, uintptr_t h0, uintptr_t out,
         int64_t ld_out, uintptr_t grad_out, int64_t ld_grad_out, uintptr_t grad_h_n, uintptr_t lengths,
         uintptr_t grad_x, bool accumulate_grad_x, uintptr_t grad_h0, uintptr_t dW_ih, uintptr_t dW_hh,
         uintptr_t db_ih, uintptr_t db_hh, uintptr_t grad_norms, int device, uintptr_t stream, int tier) {
        by_dtype(dtype, [&](auto tag) {
          using T_ = decltype(tag);
          RnnBackwardArgs<T_> a;
          a.shape = shape_of(T, B, I, H, act, reverse, lengths);
          a.w = RnnWeights<T_>{P<const T_>(W_ih), P<const T_>(W_hh), nullptr, nullptr};
          a.x = P<const T_>(x);
          a.h0 = P<const T_>(h0);
          a.out = P<const T_>(out);
          a.ld_out = ld_out;
          a.grad_out = P<const T_>(grad_out);
          a.ld_grad_out = ld_grad_out;
          a.grad_h_n = P<const T_>(grad_h_n);
          a.grad_x = P<T_>(grad_x);
          a.accumulate_grad_x = accumulate_grad_x;
          a.grad_h0 = P<T_>(grad_h0);
          a.dW_ih = P<T_>(dW_ih);
          a.dW_hh = P<T_>(dW_hh);
          a.db_ih = P<T_>(db_ih);
          a.db_hh = P<T_>(db_hh);
          a.grad_norms = P<double>(grad_norms);
          CudaLaunch l;
          l.stream = reinterpret_cast<void*>(stream);
          l.tier = tier;
          py::gil_scoped_release nogil;
          cuda::set_device(device);
          rnn_backward_cuda<T_>(a, l);
        });
      },
      "Fused BPTT of one layer and direction on device pointers (validated by the caller).");
}
