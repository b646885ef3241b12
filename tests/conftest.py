"""Shared test helpers: the ONE tolerance policy, the backend list, seeded data."""

import contextlib

import numpy as np
import pytest

import elman

# Backends under test against the reference: every compiled backend present.
KERNEL_BACKENDS = [b for b in elman.backends() if b != "numpy"]


def tol(dtype, kind="output"):
    """(rtol, atol-factor) for comparing a result of ``dtype`` with the float64 reference.

    The reference always computes in float64 from the same (float32-rounded) inputs, so the
    difference measures only the kernel's own rounding:
    - float64: same algorithm in the same precision; only summation order and the tanh
      implementation differ (~1e-16 per operation, amplified by at most a few hundred
      operations per value): rtol 1e-10 proves the algorithm, atol 1e-12 covers values near 0.
    - float32 "output" (outputs, h_n, input and h0 gradients, grad norms): ~6e-8 per
      operation, amplified along T recurrent steps: rtol 1e-4, atol 1e-5.
    - float32 "weight" (weight and bias gradients): sums over T*B terms of mixed sign, so
      the error scales with the size of the terms, not with the (possibly cancelled) sum:
      atol is 2e-4 times the largest magnitude among the weight gradients of the same call
      (pass it as ``scale``; by default the largest magnitude of the expected array), rtol 1e-4.
    Returns (rtol, atol_abs, atol_scaled): atol = atol_abs + atol_scaled * max|expected|.
    """
    if np.dtype(dtype) == np.float64:
        return 1e-10, 1e-12, 1e-12
    if kind == "weight":
        return 1e-4, 0.0, 2e-4
    return 1e-4, 1e-5, 0.0


def max_abs(*arrays):
    """Largest finite magnitude over the given arrays (0 for none)."""
    vals = [np.abs(np.asarray(a, np.float64)) for a in arrays if a is not None]
    vals = [v[np.isfinite(v)] for v in vals]
    return max((float(v.max()) for v in vals if v.size), default=0.0)


def assert_close(actual, expected, dtype, kind="output", what="", scale=None):
    rtol, atol_abs, atol_scaled = tol(dtype, kind)
    expected = np.asarray(expected, dtype=np.float64)
    if scale is None:
        scale = max_abs(expected)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol_abs + atol_scaled * scale, err_msg=what)


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    return request.param


# Instruction-set levels of the CPU kernels that this CPU can run (baseline x86-64 always).
ISA_LEVELS = ["baseline", "avx2", "avx512"]
SUPPORTED_ISAS = (ISA_LEVELS[: ISA_LEVELS.index(elman._backend.core().info()["isa_supported"]) + 1]
                  if elman._backend._core is not None else [])


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Runs the test once per supported level, switching the kernels to it."""
    core = elman._backend.core()
    previous = core.get_isa()
    assert core.set_isa(request.param)
    yield request.param
    core.set_isa(previous)


@contextlib.contextmanager
def num_threads(n):
    """elman's kernel thread count set to ``n`` for the block, the previous one restored after."""
    previous = elman.get_num_threads()
    elman.set_num_threads(n)
    try:
        yield n
    finally:
        elman.set_num_threads(previous)


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n} threads")
def threads(request):
    """Runs the test with 1, 2 and 3 kernel threads."""
    with num_threads(request.param):
        yield request.param


# The host backends (the compiled CPU kernels and the NumPy reference): the ones the reliability
# tests hold to the README's guarantees (the CUDA backend is experimental and has its own tests).
HOST_BACKENDS = [b for b in elman.backends() if b in ("cpu", "numpy")]


@pytest.fixture(params=HOST_BACKENDS)
def backend_any(request):
    """Every host backend, the NumPy reference included (behaviour that must not differ)."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed (parity tests need it)")


def pytest_configure(config):
    # Registered here rather than in pyproject.toml: CI also runs these tests outside the tree.
    config.addinivalue_line("markers", "gpu: needs a CUDA device and elman._cuda (skipped "
                                       "cleanly without them)")
    config.addinivalue_line("markers", "bad_input: a case of bad input or an injected fault "
                                       "(tools/count_bad_inputs.py counts them)")
    config.addinivalue_line("markers", "reliability: faults, bad input, hostile files, threads "
                                       "and special values (tools/sanitize.sh runs them)")
    config.addinivalue_line("markers", "property: property-based tests (hypothesis)")
    config.addinivalue_line("markers", "slow: runs other processes or whole examples (seconds "
                                       "to minutes each)")
