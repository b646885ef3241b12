// elman._core: the CPU kernels behind the validation boundary (args.h). One module, three parts:
// the RNN entry points, the runtime settings, and a private submodule of test and bench hooks.
#include <pybind11/pybind11.h>

#include "core.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "elman's compiled CPU kernels (internal; use the elman package)";
  elman::bind::register_rnn(m);
  elman::bind::register_runtime(m);
  pybind11::module_ testing =
      m.def_submodule("_testing", "Hooks for elman's tests and benchmarks (not an API)");
  elman::bind::register_testing(testing);
}
