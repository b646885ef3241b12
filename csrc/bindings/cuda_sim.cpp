// elman._cuda_sim (tests only, built with ELMAN_CUDA_SIM=ON): the CUDA backend's algorithm and
// kernel bodies run on the CPU by the thread-by-thread simulator (csrc/cuda/sim.h), on NumPy
// arrays. The device is described by its properties, so every tier can be chosen on any machine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../cuda/algo.h"
#include "../cuda/sim.h"
#include "args.h"

namespace py = pybind11;
using namespace elman;
using namespace elman::cuda;
using namespace elman::bind;

namespace {

// The gemm hook's arrays: tests pass the right dtype and shape; these checks only guard the
// simulator.
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

DeviceProps props(int sm_count, int64_t smem, bool coop) { return DeviceProps{sm_count, smem, coop}; }

// The entry points' arrays go through the validation boundary of the real modules (args.h).
template <typename T>
int forward(ForwardArrays& arrays, const std::string& act, bool reverse, const DeviceProps& d,
            int tier) {
  const RnnForwardArgs<T> a = forward_args<T>(arrays, act, reverse);
  sim::Exec ex;
  {
    py::gil_scoped_release nogil;
    cuda::forward(ex, a, d, tier);
  }
  return ex.last_tier;
}

template <typename T>
int backward(BackwardArrays& arrays, const std::string& act, bool reverse, bool accumulate_grad_x,
             const DeviceProps& d, int tier) {
  const RnnBackwardArgs<T> a = backward_args<T>(arrays, act, reverse, accumulate_grad_x);
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
  m.def("rnn_forward", [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle b_ih, py::handle b_hh,
                          py::handle h0, py::handle lengths, const std::string& act, bool reverse,
                          py::handle out, py::handle h_n, int sm_count, int64_t smem, bool coop, int tier) {
    ForwardArrays a{Array::numpy(x, "x"),       Array::numpy(W_ih, "W_ih"), Array::numpy(W_hh, "W_hh"),
                    Array::numpy(b_ih, "b_ih"), Array::numpy(b_hh, "b_hh"), Array::numpy(h0, "h0"),
                    Array::numpy(lengths, "lengths"), Array::numpy(out, "out"), Array::numpy(h_n, "h_n")};
    int used = 0;
    dispatch_dtype(a.x, [&](auto tag) {
      used = forward<decltype(tag)>(a, act, reverse, props(sm_count, smem, coop), tier);
    });
    return used;
  });
  m.def("rnn_backward", [](py::handle x, py::handle W_ih, py::handle W_hh, py::handle h0, py::handle out,
                           py::handle grad_out, py::handle grad_h_n, py::handle lengths,
                           const std::string& act, bool reverse, py::handle grad_x, bool acc_x,
                           py::handle grad_h0, py::handle dW_ih, py::handle dW_hh, py::handle db_ih,
                           py::handle db_hh, py::handle grad_norms, int sm_count, int64_t smem,
                           bool coop, int tier) {
    BackwardArrays a{Array::numpy(x, "x"), Array::numpy(W_ih, "W_ih"), Array::numpy(W_hh, "W_hh"),
                     Array::numpy(h0, "h0"), Array::numpy(out, "out"), Array::numpy(grad_out, "grad_out"),
                     Array::numpy(grad_h_n, "grad_h_n"), Array::numpy(lengths, "lengths"),
                     Array::numpy(grad_x, "grad_x"), Array::numpy(grad_h0, "grad_h0"),
                     Array::numpy(dW_ih, "dW_ih"), Array::numpy(dW_hh, "dW_hh"),
                     Array::numpy(db_ih, "db_ih"), Array::numpy(db_hh, "db_hh"),
                     Array::numpy(grad_norms, "grad_norms")};
    int used = 0;
    dispatch_dtype(a.x, [&](auto tag) {
      used = backward<decltype(tag)>(a, act, reverse, acc_x, props(sm_count, smem, coop), tier);
    });
    return used;
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
