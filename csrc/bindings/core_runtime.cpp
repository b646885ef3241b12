// elman._core's runtime settings: the kernels' threads, instruction set and denormal mode, and
// what the build and the bundled BLAS are (for `elman info`).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "../cpu/blas.h"
#include "../cpu/fpmode.h"
#include "../cpu/kernels.h"
#include "../cpu/threads.h"
#include "args.h"
#include "core.h"

namespace py = pybind11;

namespace elman {
namespace bind {

void register_runtime(py::module_& m) {
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

}  // namespace bind
}  // namespace elman
