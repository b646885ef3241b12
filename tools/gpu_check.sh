#!/usr/bin/env bash
# One-shot GPU check of elman's CUDA backend on an sm_90 GPU (H100/H200), in under ~7.5 minutes:
#   1. build elman with ELMAN_CUDA=ON (the project's arch list, or ELMAN_CUDA_ARCHS=90 for speed),
#      nvcc --threads=0, into a private --target folder;
#   2. the CUDA tests: tests/test_cuda_gpu.py, test_device_arrays.py, test_cuda_build.py and the
#      kernel matrix of tests/test_kernels.py on the cuda backend (-k cuda);
#   3. gpu_check.py: parity (fp32/fp64) of elman-cuda against a float64 reference, elman-cpu and
#      torch.nn.RNN on cuda (cuDNN, TF32 off), fwd + bwd, edge shapes; forced tiers bitwise;
#      run-to-run bitwise; streams; then timing elman-cuda vs torch-cuDNN (ratios, one process);
#   4. compute-sanitizer memcheck / racecheck / synccheck / initcheck on a small all-tier run.
# Assumes a GPU machine without network whose python3 holds torch, CuPy, numpy, scikit-build-core,
# pybind11, cmake, ninja and pytest. The one build requirement such a machine may lack,
# scipy-openblas32, comes as a wheel: put scipy_openblas32-*.whl (pip download it where there
# is network) in <repo>/.whl/ or point $ELMAN_WHEELS at its folder. Where a registry is
# reachable it is pip-installed. Usage, from the repository root:  bash tools/gpu_check.sh [SRC]
# (docs/cuda.md, "Checking on a GPU"; tests/test_gpu_check.py runs gpu_check.py's CPU dry run).
# Logs and check.json go to $OUT when set, else ./gpu_check_out; the compact summary is
# printed last. Exit status: 0 when the build, the tests and the parity all passed.
# It calls elman internals (elman._backends.cuda with tier=): adapt it when those move.
set -uo pipefail
T0=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${1:-${ELMAN_SRC:-$PWD}}
[ -f "$SRC/pyproject.toml" ] || SRC=$(cd "$HERE/.." && pwd)
SRC=$(cd "$SRC" && pwd)
OUTD=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUTD"
W=$(mktemp -d)
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_TOTAL_S:-450}   # the whole script's budget, seconds
SUM=$OUTD/summary.txt
: >"$SUM"
el() { echo $(($(date +%s) - T0)); }
left() { echo $((TOTAL - $(el))); }
say() { echo "== [$(el)s] $*"; }
note() { echo "$*" | tee -a "$SUM" >/dev/null; }
status=0

say "environment (source: $SRC)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader 2>&1 | head -2 | tee -a "$SUM"
note "nvcc: $(nvcc --version 2>&1 | tail -1)"
note "python: $($PY -c 'import sys, numpy; print(sys.version.split()[0], "numpy", numpy.__version__)' 2>&1)"
note "torch: $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version())' 2>&1 | tail -1)"

# ------------------------------------------------------------------------------------ 1. build
SITE=$W/site
mkdir -p "$SITE"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -c "import scipy_openblas32" 2>/dev/null; then
  whl=$(ls "${ELMAN_WHEELS:-$SRC/.whl}"/scipy_openblas32-*.whl "$SRC"/.whl/scipy_openblas32-*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl"
  else
    $PY -m pip install -q --timeout 15 --retries 0 --no-deps --target "$SITE" "scipy-openblas32>=0.3.27"
  fi
fi
archs=()
[ -n "${ELMAN_CUDA_ARCHS:-}" ] && archs=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$ELMAN_CUDA_ARCHS")
say "build: ELMAN_CUDA=ON, archs ${ELMAN_CUDA_ARCHS:-project default}, $(nproc) jobs"
b0=$(date +%s)
ELMAN_CUDA=ON ELMAN_CUDA_SIM=OFF CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout -k 5 240 \
  $PY -m pip install --no-index --no-build-isolation --no-deps --no-compile --target "$SITE" \
  -C build-dir="$W/build" -C cmake.define.CMAKE_CUDA_FLAGS=--threads=0 "${archs[@]}" "$SRC" \
  >"$OUTD/build.log" 2>&1
brc=$?
note "build: rc=$brc in $(($(date +%s) - b0)) s ($(grep -o 'building elman._cuda for CUDA architectures.*' "$OUTD/build.log" | head -1))"
if [ $brc -ne 0 ] || ! $PY -c "import elman._cuda" 2>>"$OUTD/build.log"; then
  tail -40 "$OUTD/build.log"
  note "BUILD FAILED: see build.log"
  cat "$SUM"
  exit 2
fi
MOD=$($PY -c "import elman._cuda as m; print(m.__file__)")
if command -v cuobjdump >/dev/null; then
  note "module: $(cuobjdump -lelf "$MOD" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')+ ptx $(cuobjdump -lptx "$MOD" | grep -o 'sm_[0-9]*' | tr '\n' ' ')"
  cuobjdump -res-usage "$MOD" >>"$OUTD/build.log" 2>&1
fi
$PY -m elman info 2>&1 | grep -iE "backends|cuda" | tee -a "$SUM"

# ------------------------------------------------------------------------------------ 2. tests
say "CUDA tests"
mkdir -p "$W/t"
cp -r "$SRC/tests" "$SRC/README.md" "$W/t/"
ptimeout=()
$PY -c "import pytest_timeout" 2>/dev/null && ptimeout=(--timeout=150)
tbudget=$(($(left) - 200)); [ $tbudget -gt 200 ] && tbudget=200; [ $tbudget -lt 60 ] && tbudget=60
(
  cd "$W/t" || exit 1
  export ELMAN_REQUIRE_CUDA_BUILD=1
  timeout -k 5 $((tbudget * 2 / 3)) $PY -m pytest -q -p no:cacheprovider -o faulthandler_timeout=140 \
    -rfEs "${ptimeout[@]}" tests/test_cuda_gpu.py tests/test_device_arrays.py tests/test_cuda_build.py
  echo "pytest(cuda files) rc=$?"
  timeout -k 5 $((tbudget / 3)) $PY -m pytest -q -p no:cacheprovider -rfE "${ptimeout[@]}" \
    tests/test_kernels.py -k cuda
  echo "pytest(kernel matrix on cuda) rc=$?"
) >"$OUTD/tests.log" 2>&1
grep -E "passed|failed|error|rc=|^FAILED|^ERROR|SKIPPED" "$OUTD/tests.log" | grep -v "^\.\+" | tail -25 | tee -a "$SUM"
grep -q "rc=0" <(grep "pytest(cuda files)" "$OUTD/tests.log") || status=1
grep -q "rc=0" <(grep "pytest(kernel matrix" "$OUTD/tests.log") || status=1

# ------------------------------------------------------------------------------------ 3. parity + timing
cbudget=$(($(left) - 75)); [ $cbudget -gt 280 ] && cbudget=280
if [ $cbudget -lt 60 ]; then
  note "parity/timing SKIPPED: only $(left) s left"
  status=1
else
  say "parity + timing (budget ${cbudget} s)"
  (cd "$W" && OUT=$OUTD PYTHONUNBUFFERED=1 timeout -k 5 $((cbudget + 30)) $PY "$HERE/gpu_check.py" --budget "$cbudget") \
    >"$OUTD/check.log" 2>&1
  crc=$?
  note "gpu_check.py rc=$crc"
  [ $crc -eq 0 ] || status=1
fi

# ------------------------------------------------------------------------------------ 4. sanitizer
cat >"$W/san.py" <<'EOF'
import numpy as np
from elman._backends import cuda as _cuda_fn
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for T, B, I, H, L, rev in ((5, 3, 4, 33, [5, 1, 3], True), (3, 2, 5, 70, None, False),
                               (40, 32, 3, 16, None, False)):  # the last: split-K (K = T*B > 1024)
        f = lambda *s: rng.standard_normal(s).astype(dtype) * 0.3
        x, Wih, Whh, b1, b2, h0 = f(T, B, I), f(H, I), f(H, H), f(H), f(H), f(B, H)
        go, gh = f(T, B, H), f(B, H)
        Ls = None if L is None else np.array(L)
        for tier in (1, 2, 3):
            o, hn = _cuda_fn.rnn_forward(x, Wih, Whh, b1, b2, h0, Ls, "tanh", rev, tier=tier)
            _cuda_fn.rnn_backward(x, Wih, Whh, o, h0, go, gh, Ls, "tanh", rev, True, tier=tier)
print("sanitizer workload done")
EOF
: >"$OUTD/sanitizer.log"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck initcheck; do
    if [ "$(left)" -lt 25 ]; then note "compute-sanitizer $tool: SKIPPED (time)"; continue; fi
    t=$(($(left) - 10)); [ $t -gt 60 ] && t=60
    (cd "$W" && timeout -k 5 $t compute-sanitizer --tool $tool --error-exitcode 9 $PY "$W/san.py") \
      >"$W/san_$tool.log" 2>&1
    src=$?
    { echo "### $tool rc=$src"; cat "$W/san_$tool.log"; } >>"$OUTD/sanitizer.log"
    note "compute-sanitizer $tool: rc=$src $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|not supported|workload done' "$W/san_$tool.log" | tr '\n' ' ' | cut -c1-150)"
  done
else
  note "compute-sanitizer: not on PATH"
fi

# ------------------------------------------------------------------------------------ summary
echo
echo "=================================== SUMMARY ($(el) s) ==================================="
cat "$SUM"
[ -f "$OUTD/check.log" ] && sed -n '/^== PARITY/,$p' "$OUTD/check.log"
[ -f "$OUTD/check.log" ] && grep -m3 -E "Traceback|Error" "$OUTD/check.log" | head -3
echo "logs: $OUTD/{build.log,tests.log,check.log,check.json,sanitizer.log,summary.txt}"
echo "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
rm -rf "$W"
exit $status
