#!/usr/bin/env bash
# The sanitizer run: builds elman with AddressSanitizer + UndefinedBehaviorSanitizer
# (ELMAN_SANITIZE=ON) into its own virtual environment and build folder, then runs the tests
# that reach the kernels and the binding with the ASan runtime preloaded into Python. Any
# memory error or undefined behaviour aborts the test run; at exit LeakSanitizer reports leaks,
# except those allocated by Python, NumPy or OpenBLAS themselves (tools/lsan.supp).
#   tools/sanitize.sh            every test file that reaches the kernels (what CI runs)
#   tools/sanitize.sh --quick    the reliability tests only
#   ELMAN_SANITIZE_VENV=DIR      reuse (or keep) the virtual environment in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

venv=${ELMAN_SANITIZE_VENV:-$(mktemp -d)/venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet numpy pytest hypothesis scikit-build-core pybind11 scipy-openblas32 ninja cmake
ELMAN_SANITIZE=ON python -m pip install --quiet --no-build-isolation \
  --config-settings=build-dir=build/sanitize-{wheel_tag} .

asan=$(g++ -print-file-name=libasan.so)
stdcxx=$(g++ -print-file-name=libstdc++.so)
[ -f "$asan" ] || { echo "sanitize.sh: libasan.so not found (g++ -print-file-name)" >&2; exit 1; }
# The ASan runtime must come first; libstdc++ with it, so that ASan finds __cxa_throw at start-up
# (Python itself does not link libstdc++, and C++ exceptions from the extension would abort).
export LD_PRELOAD="$asan $stdcxx"
# allocator_may_return_null: a huge request must come back as NULL (MemoryError), not abort.
# malloc_context_size: the innermost frames that leak suppressions are matched against.
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0:strict_init_order=1:detect_odr_violation=0:malloc_context_size=6
export LSAN_OPTIONS=suppressions=$root/tools/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ELMAN_SANITIZED=1  # tests that measure memory skip themselves (ASan's shadow memory)

# Self-checks: the sanitizers are live in this Python and the suppressions are not blanket, i.e.
# a heap overflow aborts and a leak allocated outside Python/NumPy/OpenBLAS is reported.
if python -c "import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; ctypes.memset(libc.malloc(16) + 16, 0, 1)" 2>/dev/null; then
  echo "sanitize.sh: AddressSanitizer did not catch a heap overflow; is it preloaded?" >&2; exit 1
fi
if python -c "import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.malloc(4096)" 2>/dev/null; then
  echo "sanitize.sh: LeakSanitizer did not report a leak" >&2; exit 1
fi
python -c "import elman, numpy" || { echo "sanitize.sh: import elman fails under the sanitizers" >&2; exit 1; }

# The reliability tests that exercise the kernels and the binding (the hostile-file and thread
# limit tests run children under address-space limits, which the sanitizers' shadow memory
# cannot live with), the property tests and the fuzz smoke test; unless --quick, more.
tests=(test_core_binding.py test_layers_inputs.py test_kernels_values.py test_functional_layouts.py
       test_state_faults.py test_threads.py test_properties.py test_fuzz.py)
if [ "${1:-}" != "--quick" ]; then
  tests+=(test_kernels.py test_errors.py test_layers.py test_threads_isa.py test_tanh.py
          test_training.py test_reference.py test_losses.py test_optim.py test_concurrent_calls.py)
fi
cd "$root/tests"  # the installed (sanitized) elman, not the source tree
python -m pytest -q -p no:cacheprovider "${tests[@]}"
