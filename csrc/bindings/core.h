// The parts of elman._core, each adding its functions to the module (core.cpp assembles them):
// the RNN entry points, the runtime settings, and the private hooks of tests and benchmarks.
#pragma once
#include <pybind11/pybind11.h>

namespace elman {
namespace bind {

void register_rnn(pybind11::module_& m);      // core_rnn.cpp
void register_runtime(pybind11::module_& m);  // core_runtime.cpp
void register_testing(pybind11::module_& m);  // core_testing.cpp

}  // namespace bind
}  // namespace elman
