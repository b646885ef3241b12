// elman._cuda_sim (tests only, built with ELMAN_CUDA_SIM=ON): the CUDA backend's algorithm and
// kernel bodies run on the CPU by the thread-by-thread simulator (csrc/cuda/sim.h), on NumPy
// arrays. The device is described by its properties, so every tier can be chosen on any machine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../cuda/algo.h"
#include "../cuda/sim.h"

namespace py = pybind11;
using namespace elman;
using namespace elman::cuda;

namespace {

// Tests pass arrays of the right dtype and shape; the checks here only guard the simulator.
template <typename T>
T* ptr(py::handle obj, const char* name) {
  if (obj.is_none()) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": wrong dtype " + py::str(a.dtype()).cast<std::string>());
  if (a.ndim() < 3 && !(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// Row stride of a [T, B, n] array whose last dimension is contiguous.
int64_t row_stride(py::handle obj) {
  if (obj.is_none()) return 0;
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const int64_t item = a.itemsize();
  if (a.strides(2) != item) throw py::value_error("rows must be contiguous");
  if (a.shape(1) > 1) return a.strides(1) / item;
  if (a.shape(0) > 1) return a.strides(0) / (item * a.shape(1));
  return a.shape(2);
}

Activation act_of(const std::string& s) { return s == "relu" ? Activation::relu : Activation::tanh; }

DeviceProps props(int sm_count, int64_t smem, bool coop) { return DeviceProps{sm_count, smem, coop}; }

template <typename T>
int forward(py::array x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
            py::handle h0, py::handle lengths, const std::string& act, bool reverse, py::handle out,
            py::handle h_n, const DeviceProps& d, int tier) {
  RnnForwardArgs<T> a;
  a.shape.T = x.shape(0), a.shape.B = x.shape(1), a.shape.I = x.shape(2);
  a.shape.H = py::reinterpret_borrow<py::array>(W_hh).shape(0);
  a.shape.act = act_of(act);
  a.shape.reverse = reverse;
  a.shape.lengths = ptr<int64_t>(lengths, "lengths");
  a.w = RnnWeights<T>{ptr<T>(W_ih, "W_ih"), ptr<T>(W_hh, "W_hh"), ptr<T>(b_ih, "b_ih"), ptr<T>(b_hh, "b_hh")};
  a.x = ptr<T>(x, "x");
  a.h0 = ptr<T>(h0, "h0");
  a.out = ptr<T>(out, "out");
  a.ld_out = row_stride(out);
  a.h_n = ptr<T>(h_n, "h_n");
  sim::Exec ex;
  {
    py::gil_scoped_release nogil;
    cuda::forward(ex, a, d, tier);
  }
  return ex.last_tier;
}

template <typename T>
int backward(py::array x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
             py::handle grad_out, py::handle grad_h_n, py::handle lengths, const std::string& act,
             bool reverse, py::handle grad_x, bool accumulate_grad_x, py::handle grad_h0,
             py::handle dW_ih, py::handle dW_hh, py::handle db_ih, py::handle db_hh,
             py::handle grad_norms, const DeviceProps& d, int tier) {
  RnnBackwardArgs<T> a;
  a.shape.T = x.shape(0), a.shape.B = x.shape(1), a.shape.I = x.shape(2);
  a.shape.H = py::reinterpret_borrow<py::array>(W_hh).shape(0);
  a.shape.act = act_of(act);
  a.shape.reverse = reverse;
  a.shape.lengths = ptr<int64_t>(lengths, "lengths");
  a.w = RnnWeights<T>{ptr<T>(W_ih, "W_ih"), ptr<T>(W_hh, "W_hh"), nullptr, nullptr};
  a.x = ptr<T>(x, "x");
  a.h0 = ptr<T>(h0, "h0");
  a.out = ptr<T>(out, "out");
  a.ld_out = row_stride(out);
  a.grad_out = ptr<T>(grad_out, "grad_out");
  a.ld_grad_out = row_stride(grad_out);
  a.grad_h_n = ptr<T>(grad_h_n, "grad_h_n");
  a.grad_x = ptr<T>(grad_x, "grad_x");
  a.accumulate_grad_x = accumulate_grad_x;
  a.grad_h0 = ptr<T>(grad_h0, "grad_h0");
  a.dW_ih = ptr<T>(dW_ih, "dW_ih");
  a.dW_hh = ptr<T>(dW_hh, "dW_hh");
  a.db_ih = ptr<T>(db_ih, "db_ih");
  a.db_hh = ptr<T>(db_hh, "db_hh");
  a.grad_norms = ptr<double>(grad_norms, "grad_norms");
  sim::Exec ex;
  {
    py::gil_scoped_release nogil;
    cuda::backward(ex, a, d, tier);
  }
  return ex.last_tier;
}

template <typename T>
void gemm(py::array A, py::array Bm, py::array C, bool trans_a, bool trans_b, double beta,
          py::handle lengths, int64_t B, const std::string& mask) {
  const int64_t M = C.shape(0), N = C.shape(1), K = trans_a ? A.shape(0) : A.shape(1);
  GemmArgs<T> g = product<T>(M, N, K, ptr<T>(A, "A"), A.shape(1), trans_a, ptr<T>(Bm, "B"),
                             Bm.shape(1), trans_b, ptr<T>(C, "C"), N, T(beta));
  const RowMask m{ptr<int64_t>(lengths, "lengths"), B, -1};
  if (mask == "k") g.mask_k = m;
  if (mask == "m") g.mask_m = m;
  sim::Exec ex;
  py::gil_scoped_release nogil;
  ex.gemm(g);
}

template <typename F>
auto by_dtype(const py::array& x, F&& f) {
  if (x.dtype().equal(py::dtype::of<float>())) return f(float{});
  if (x.dtype().equal(py::dtype::of<double>())) return f(double{});
  throw py::type_error("float32 or float64 only");
}

}  // namespace

PYBIND11_MODULE(_cuda_sim, m) {
  m.doc() = "elman's CUDA kernels run thread by thread on the CPU (tests only; no GPU involved)";
  m.attr("THREADS") = kThreads;
  m.def("rnn_forward", [](py::array x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
                          py::handle h0, py::handle lengths, const std::string& act, bool reverse,
                          py::handle out, py::handle h_n, int sm_count, int64_t smem, bool coop, int tier) {
    return by_dtype(x, [&](auto tag) {
      return forward<decltype(tag)>(x, W_ih, W_hh, b_ih, b_hh, h0, lengths, act, reverse, out, h_n,
                                    props(sm_count, smem, coop), tier);
    });
  });
  m.def("rnn_backward", [](py::array x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
                           py::handle grad_out, py::handle grad_h_n, py::handle lengths,
                           const std::string& act, bool reverse, py::handle grad_x, bool acc_x,
                           py::handle grad_h0, py::handle dW_ih, py::handle dW_hh, py::handle db_ih,
                           py::handle db_hh, py::handle grad_norms, int sm_count, int64_t smem,
                           bool coop, int tier) {
    return by_dtype(x, [&](auto tag) {
      return backward<decltype(tag)>(x, W_ih, W_hh, h0, out, grad_out, grad_h_n, lengths, act, reverse,
                                     grad_x, acc_x, grad_h0, dW_ih, dW_hh, db_ih, db_hh, grad_norms,
                                     props(sm_count, smem, coop), tier);
    });
  });
  m.def("gemm", [](py::array A, py::array Bm, py::array C, bool trans_a, bool trans_b, double beta,
                   py::handle lengths, int64_t B, const std::string& mask) {
    by_dtype(C, [&](auto tag) { gemm<decltype(tag)>(A, Bm, C, trans_a, trans_b, beta, lengths, B, mask); });
  }, py::arg("A"), py::arg("B"), py::arg("C"), py::arg("trans_a") = false, py::arg("trans_b") = false,
     py::arg("beta") = 0.0, py::arg("lengths") = py::none(), py::arg("batch") = 1, py::arg("mask") = "none");
  m.def("choose_splits", [](int64_t M, int64_t N, int64_t K) {
    int64_t chunk = 0;
    const int64_t s = choose_splits(M, N, K, &chunk);
    return py::make_tuple(s, chunk);
  });
  m.def("plan_tier", [](int64_t H, int64_t B, const std::string& dtype, int sm_count, int64_t smem,
                        bool coop, int tier) {
    const DeviceProps d = props(sm_count, smem, coop);
    const RecurrencePlan p = dtype == "float64" ? plan_recurrence<double>(H, B, d, tier)
                                                : plan_recurrence<float>(H, B, d, tier);
    return py::make_tuple(p.tier, p.grid_x, p.grid_y, p.p.rows, p.p.nb, p.smem_bytes);
  });
}
