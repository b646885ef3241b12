"""The kernels' vectorized tanh, on every instruction-set level this CPU supports: within 4 ulp
of the true value on a dense float32 grid (bench/tanh_accuracy.py checks all 2^32 inputs), and
exact at the special values."""

import numpy as np
import pytest

core = pytest.importorskip("elman._core")


def _ulps(y, x):
    t = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(t).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - t) / ulp


def test_float32_tanh_within_4_ulp_on_a_dense_grid(isa):
    # every 509th bit pattern of the finite floats (8.4 million inputs, all exponents)
    bits = np.arange(0, 0x7F800000, 509, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), -bits.view(np.float32)])
    err = _ulps(core._testing.tanh(x), x)
    assert err.max() <= 4.0, (err.max(), x[np.argmax(err)])


def test_float32_tanh_dense_near_the_branch_and_the_clamp(isa):
    for lo, hi in [(0.55, 0.7), (8.5, 9.5), (1e-4, 1e-3)]:
        x = np.arange(np.float32(lo), np.float32(hi), dtype=np.float32)  # placeholder for shape
        x = np.nextafter(np.float32(lo), np.float32(hi)) if x.size == 0 else x
        a = np.arange(np.float32(lo).view(np.uint32), np.float32(hi).view(np.uint32), 7, dtype=np.uint32).view(np.float32)
        err = _ulps(core._testing.tanh(a), a)
        assert err.max() <= 4.0, (lo, hi, err.max())


def test_float32_tanh_special_values(isa):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 9.1, 9.5, 20.0, 1e30, -1e30,
                  np.float32(3e-45), -np.float32(3e-45), 1e-30, np.finfo(np.float32).tiny], np.float32)
    y = core._testing.tanh(x)
    assert y[0] == 0 and not np.signbit(y[0])
    assert y[1] == 0 and np.signbit(y[1])
    np.testing.assert_array_equal(y[2:4], [1.0, -1.0])
    assert np.isnan(y[4])
    np.testing.assert_array_equal(y[5:10], [1.0, 1.0, 1.0, 1.0, -1.0])  # exactly +-1 past the clamp
    np.testing.assert_array_equal(y[10:], x[10:])                    # tanh(x) = x below float resolution
    big = np.linspace(9.02, 100, 1000, dtype=np.float32)
    assert (core._testing.tanh(big) == 1.0).all() and (core._testing.tanh(-big) == -1.0).all()


def test_float32_tanh_is_odd_bitwise(isa):
    x = np.random.default_rng(0).standard_normal(100003).astype(np.float32) * 4
    np.testing.assert_array_equal(core._testing.tanh(-x), -core._testing.tanh(x))


def test_float64_tanh_accuracy_and_specials(isa):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(200000) * s for s in (0.01, 0.5, 2, 10)])
    y = core._testing.tanh(x)
    ulp = np.spacing(np.abs(np.tanh(x)))
    assert (np.abs(y - np.tanh(x)) / ulp).max() <= 4.0
    s = core._testing.tanh(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 20.0, 50.0, -50.0, 1e-300]))
    assert not np.signbit(s[0]) and np.signbit(s[1])
    np.testing.assert_array_equal(s[2:4], [1.0, -1.0])
    assert np.isnan(s[4])
    np.testing.assert_array_equal(s[5:8], [1.0, 1.0, -1.0])
    assert s[8] == 1e-300


def test_tanh_handles_every_length_and_layout(isa):
    x = np.random.default_rng(2).standard_normal(200).astype(np.float32)
    for n in range(0, 40):
        np.testing.assert_array_equal(core._testing.tanh(x[:n]), core._testing.tanh(x)[:n])
    np.testing.assert_array_equal(core._testing.tanh(x[::3]), core._testing.tanh(np.ascontiguousarray(x[::3])))
