"""Special values through the kernels: NaN and Inf propagate to exactly the elements where the
float64 reference has them (forward and backward, at the start, middle and tail of a sequence,
in weights, states and gradients, at SIMD tails and tile edges, on every instruction set);
tanh saturates to exactly +-1 with derivative exactly 0; subnormals and signed zeros survive;
and importing or calling elman leaves the floating-point mode (FTZ/DAZ) of the process alone."""

import ctypes
import ctypes.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import elman
from elman import functional as F, reference
from conftest import HOST_BACKENDS, assert_close, max_abs

pytestmark = pytest.mark.reliability

core = pytest.importorskip("elman._core")  # the isa fixture (conftest) runs every level


def _classes(a):
    a = np.asarray(a, np.float64)
    return np.isnan(a), np.isposinf(a), np.isneginf(a)


def assert_same_specials(actual, expected, dtype, what, kind="output", scale=None):
    """NaN, +inf and -inf at exactly the same elements; the finite rest within tolerance."""
    for name, a, e in zip(("NaN", "+inf", "-inf"), _classes(actual), _classes(expected)):
        if not np.array_equal(a, e):
            where = np.argwhere(a != e)[:5].tolist()
            raise AssertionError(f"{what}: {name} differs from the reference at {where} "
                                 f"(kernel {a.sum()} elements, reference {e.sum()})")
    finite = np.isfinite(np.asarray(expected, np.float64))
    assert_close(np.asarray(actual, np.float64)[finite], np.asarray(expected, np.float64)[finite],
                 dtype, kind, what, scale)


def _case(rng, T, B, I, H, dtype, h0=True):
    s = 0.5
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                bias_ih=rng.uniform(-s, s, H).astype(dtype), bias_hh=rng.uniform(-s, s, H).astype(dtype),
                h0=rng.uniform(-1, 1, (B, H)).astype(dtype) if h0 else None)


def check_against_reference(c, g_out, g_hn, lengths, act, reverse, dtype, backend="cpu"):
    out, h_n = F.rnn_forward(**c, lengths=lengths, nonlinearity=act, reverse=reverse, backend=backend)
    with np.errstate(all="ignore"):
        ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                                c["bias_hh"], c["h0"], lengths, act, reverse)
    assert_same_specials(out, ref_out, dtype, "out")
    assert_same_specials(h_n, ref_hn, dtype, "h_n")
    r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, g_hn, lengths,
                       act, reverse, backend=backend)
    with np.errstate(all="ignore"):
        ref = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out,
                                     g_hn, lengths, act, reverse)
    assert_same_specials(r.grad_x, ref["grad_x"], dtype, "grad_x")
    assert_same_specials(r.grad_h0, ref["grad_h0"], dtype, "grad_h0")
    assert_same_specials(r.grad_norms, ref["grad_norms"], dtype, "grad_norms")
    scale = max_abs(ref["dW_ih"], ref["dW_hh"], ref["db"])
    for name, a, e in (("dW_ih", r.grad_weight_ih, ref["dW_ih"]), ("dW_hh", r.grad_weight_hh, ref["dW_hh"]),
                       ("db_ih", r.grad_bias_ih, ref["db"]), ("db_hh", r.grad_bias_hh, ref["db"])):
        assert_same_specials(a, e, dtype, name, "weight", scale)
    return out, r


# Where the special value goes: (array, index from T, B, H). Indices hit the first and the last
# element of an axis: the last hidden unit sits in a SIMD tail (H = 17, 33: widths 4/8/16 floats,
# 2/4/8 doubles), the last batch row in a partial register tile (B = 7: tiles of 6 or 8 rows).
PLACES = {
    "x at the start": ("x", lambda T, B, H: (0, B - 1, 0)),
    "x in the middle": ("x", lambda T, B, H: (T // 2, 0, -1)),
    "x at the tail": ("x", lambda T, B, H: (T - 1, B - 1, -1)),
    "h0": ("h0", lambda T, B, H: (B - 1, H - 1)),
    "weight_ih": ("weight_ih", lambda T, B, H: (H - 1, 0)),
    "weight_hh first unit": ("weight_hh", lambda T, B, H: (0, H - 1)),
    "weight_hh tail unit": ("weight_hh", lambda T, B, H: (H - 1, 0)),
    "bias_ih": ("bias_ih", lambda T, B, H: (H - 1,)),
    "bias_hh": ("bias_hh", lambda T, B, H: (0,)),
    "grad_out at the start": ("grad_out", lambda T, B, H: (0, 0, H - 1)),
    "grad_out at the tail": ("grad_out", lambda T, B, H: (T - 1, B - 1, 0)),
    "grad_h_n": ("grad_h_n", lambda T, B, H: (B - 1, H - 1)),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_nonfinite_values_propagate_exactly_as_in_the_reference(isa, place, value, act):
    for i, (dtype, T, B, I, H, h0, lengths, reverse) in enumerate([
            (np.float32, 6, 7, 5, 17, True, None, False),
            (np.float32, 6, 7, 3, 33, False, [6, 1, 3, 6, 2, 5, 4], True),
            (np.float64, 5, 7, 4, 17, True, [5, 5, 1, 2, 3, 4, 5], False),
            (np.float64, 4, 1, 1, 3, False, None, True)]):
        rng = np.random.default_rng(i)
        c = _case(rng, T, B, I, H, dtype, h0)
        arrays = dict(c, grad_out=rng.standard_normal((T, B, H)).astype(dtype),
                      grad_h_n=rng.standard_normal((B, H)).astype(dtype))
        key, index = PLACES[place]
        if arrays[key] is None:  # h0=None in this configuration: give it one
            arrays[key] = c[key] = rng.uniform(-1, 1, (B, H)).astype(dtype)
        arrays[key][index(T, B, H)] = value
        check_against_reference(c, arrays["grad_out"], arrays["grad_h_n"],
                                None if lengths is None else np.array(lengths), act, reverse, dtype)


@pytest.mark.bad_input
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_nan_in_padding_never_reaches_a_result(isa, act):
    """Inputs and output gradients past a sequence's length are never read into a sum."""
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 7, 5, 17
    lengths = np.array([6, 1, 3, 6, 2, 5, 4])
    for dtype in (np.float32, np.float64):
        c = _case(rng, T, B, I, H, dtype)
        g_out = rng.standard_normal((T, B, H)).astype(dtype)
        clean_out, clean = check_against_reference(c, g_out, None, lengths, act, False, dtype)
        for b, L in enumerate(lengths):
            c["x"][L:, b] = np.nan
            g_out[L:, b] = np.inf
        out, r = check_against_reference(c, g_out, None, lengths, act, False, dtype)
        np.testing.assert_array_equal(out, clean_out)
        for a, e in zip(r, clean):
            if a is not None:
                np.testing.assert_array_equal(a, e)


@pytest.mark.bad_input
def test_nan_weight_does_not_leak_into_neighbouring_sequences(isa):
    """Sequences without a state (h0=None, first step) or without a next step get exactly no
    contribution from W_hh, whichever rows share their register tile: in one batch, each
    sequence has NaN exactly where it has it computed alone (values agree to rounding: a
    different batch size sums in another order)."""
    rng = np.random.default_rng(6)
    T, B, I, H = 5, 13, 3, 17
    lengths = np.array([5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 1])
    for dtype in (np.float32, np.float64):
        c = _case(rng, T, B, I, H, dtype, h0=False)
        c["weight_hh"][3, 4] = np.nan
        for reverse in (False, True):
            out, _ = F.rnn_forward(**c, lengths=lengths, reverse=reverse, backend="cpu")
            for b in range(B):
                one = dict(c, x=c["x"][:, b:b + 1])
                alone, _ = F.rnn_forward(**one, lengths=lengths[b:b + 1], reverse=reverse, backend="cpu")
                assert_same_specials(out[:, b], alone[:, 0], dtype, f"sequence {b}")
            assert np.isfinite(out[lengths - 1 if not reverse else 0, np.arange(B)][lengths == 1]).all()


def test_relu_keeps_nan_and_inf():
    for backend in HOST_BACKENDS:
        c = elman.RNNCell(1, 1, nonlinearity="relu", seed=0, backend=backend)
        c.weight_ih.data[...] = 1
        c.weight_hh.data[...] = 0
        c.bias_ih.data[...] = 0
        c.bias_hh.data[...] = 0
        h = c(np.array([[np.nan], [np.inf], [-np.inf], [-1.0], [2.0]], np.float32))
        np.testing.assert_array_equal(h[:, 0], [np.nan, np.inf, 0, 0, 2])
        m = elman.RNN(1, 1, nonlinearity="relu", bias=False, seed=0, backend=backend)
        m.weight_ih_l0.data[...] = 1
        m.weight_hh_l0.data[...] = 0
        out, _ = m(np.array([[[np.nan], [np.inf], [-np.inf]]], np.float32))  # T = 1, B = 3
        np.testing.assert_array_equal(out[0, :, 0], [np.nan, np.inf, 0])


# ------------------------------------------------------------------------------ saturation
# Where the correctly rounded tanh is exactly 1: |x| > 9.0109 (float32), |x| > 19.0615 (float64).
SATURATED = {np.float32: 9.0110, np.float64: 19.0616}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_saturates_to_exactly_one(isa, dtype):
    start = SATURATED[dtype]
    x = np.concatenate([np.linspace(start, start + 2, 20001), np.geomspace(start + 2, 1e300 if dtype == np.float64
                                                                               else 3e38, 2000),
                        [np.finfo(dtype).max, np.inf]]).astype(dtype)
    y = core._testing.tanh(np.concatenate([x, -x]))
    np.testing.assert_array_equal(y, np.concatenate([np.ones_like(x), -np.ones_like(x)]))
    assert (1 - y * y == 0).all()  # so the derivative the kernels compute is exactly 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_layer_has_exactly_zero_gradients(isa, dtype):
    """z = +-50: out is exactly +-1, and every gradient through it is exactly 0, as in the
    reference."""
    T, B, H = 4, 7, 17
    rng = np.random.default_rng(7)
    x = np.sign(rng.standard_normal((T, B, H))).astype(dtype)
    W_ih = (50 * np.eye(H)).astype(dtype)
    W_hh = np.zeros((H, H), dtype)
    out, h_n = F.rnn_forward(x, W_ih, W_hh, backend="cpu")
    np.testing.assert_array_equal(out, x)
    r = F.rnn_backward(x, W_ih, W_hh, out, None, rng.standard_normal((T, B, H)).astype(dtype),
                       rng.standard_normal((B, H)).astype(dtype), backend="cpu")
    for name in ("grad_x", "grad_h0", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh"):
        a = getattr(r, name)
        assert not a.any(), name


# ------------------------------------------------------------------------------ subnormals, zeros
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("flush", [False, True])
def test_subnormals_pass_through_or_flush_as_the_mode_says(isa, dtype, act, flush):
    """x W_ih^T with W_ih = I and nothing else: z = x exactly, and tanh(z) = relu(z) = z for a
    positive subnormal, so with exact arithmetic out must equal x bit for bit, and with
    flush-to-zero (the default) every subnormal result is 0. B = 64, H = 32 is split across the
    worker threads, so their mode is checked too; the caller's own mode is never changed."""
    tiny = np.finfo(dtype).smallest_subnormal
    T, B, H = 3, 64, 32
    x = (tiny * np.arange(1, T * B * H + 1).reshape(T, B, H) % 1000 + 1) * tiny
    x = x.astype(dtype)
    assert (x > 0).all() and (x < np.finfo(dtype).smallest_normal).all()
    W_ih = np.eye(H, dtype=dtype)
    W_hh = np.zeros((H, H), dtype)
    previous = elman.get_num_threads()
    previous_mode = elman.set_flush_denormal(flush)
    try:
        for threads in (1, 2):
            elman.set_num_threads(threads)
            out, h_n = F.rnn_forward(x, W_ih, W_hh, nonlinearity=act, backend="cpu")
            expected = np.zeros_like(x) if flush else x
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(h_n, expected[-1])
            # the calling thread's mode is untouched: NumPy still makes subnormals here
            assert (x * dtype(1)).min() > 0 and np.finfo(dtype).smallest_normal * dtype(0.5) > 0
            np.testing.assert_array_equal(core._testing.tanh(x), x)
    finally:
        elman.set_num_threads(previous)
        elman.set_flush_denormal(previous_mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zeros(isa, dtype):
    """tanh(+-0) = +-0; all-zero inputs of either sign give the reference's zeros (same sign
    bits) and the gradients of tanh'(0) = 1."""
    z = np.array([0.0, -0.0] * 20, dtype)
    np.testing.assert_array_equal(np.signbit(core._testing.tanh(z)), np.signbit(z))
    T, B, I, H = 3, 7, 5, 17
    for sign in (1.0, -1.0):
        zero = dtype(sign * 0.0)
        c = dict(x=np.full((T, B, I), zero), weight_ih=np.full((H, I), zero), weight_hh=np.full((H, H), zero),
                 bias_ih=np.full(H, zero), bias_hh=np.full(H, zero), h0=np.full((B, H), zero))
        for act in ("tanh", "relu"):
            out, h_n = F.rnn_forward(**c, nonlinearity=act, backend="cpu")
            ref, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                                c["bias_hh"], c["h0"], nonlinearity=act)
            assert not out.any() and not h_n.any()
            np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))
    rng = np.random.default_rng(8)
    x = np.zeros((T, B, I), dtype)
    W_ih = rng.standard_normal((H, I)).astype(dtype)
    W_hh = np.zeros((H, H), dtype)
    out, _ = F.rnn_forward(x, W_ih, W_hh, backend="cpu")
    g = rng.standard_normal((T, B, H)).astype(dtype)
    r = F.rnn_backward(x, W_ih, W_hh, out, None, g, None, backend="cpu")
    assert_close(r.grad_x, g.astype(np.float64) @ W_ih, dtype)  # tanh'(0) = 1 exactly


# ------------------------------------------------------------------------------ FP mode
def _mxcsr_probe():
    """Reads the SSE control/status register of the calling thread through libm's fegetenv
    (glibc x86-64: fenv_t is 32 bytes with __mxcsr at offset 28)."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    buf = ctypes.create_string_buffer(32)

    def read():
        assert libm.fegetenv(buf) == 0
        return int.from_bytes(buf.raw[28:32], "little")

    def write(value):
        raw = bytearray(buf.raw)
        raw[28:32] = value.to_bytes(4, "little")
        env = ctypes.create_string_buffer(bytes(raw), 32)
        assert libm.fesetenv(env) == 0
    return read, write


FTZ, DAZ = 1 << 15, 1 << 6
CONTROL = 0xFFC0  # the mode bits; bits 0-5 are sticky exception flags


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="reads MXCSR through glibc's x86-64 fenv_t")
def test_the_mxcsr_probe_sees_flush_to_zero():
    """The probe below could fail: setting FTZ and DAZ shows in it and in NumPy's arithmetic."""
    read, write = _mxcsr_probe()
    before = read()
    tiny = np.array([1e-39], np.float32)
    assert tiny[0] != 0 and (tiny * np.float32(1))[0] != 0
    try:
        write(before | FTZ | DAZ)
        assert read() & (FTZ | DAZ) == FTZ | DAZ
        assert (tiny * np.float32(1))[0] == 0  # denormals are zero now
    finally:
        write(before)
    assert read() & CONTROL == before & CONTROL


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="reads MXCSR through glibc's x86-64 fenv_t")
def test_importing_and_calling_elman_leaves_the_fp_mode_alone():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_kernels_values import _mxcsr_probe
        read, _ = _mxcsr_probe()
        start = read() & {CONTROL}
        assert start & ({FTZ} | {DAZ}) == 0, hex(start)
        import numpy as np
        import elman
        seen = [("import", read() & {CONTROL})]
        rng = np.random.default_rng(0)
        elman.set_num_threads(2)
        m = elman.RNN(32, 64, num_layers=2, bidirectional=True, seed=0)
        out, h_n = m(rng.standard_normal((20, 64, 32)).astype(np.float32))
        m.backward(np.ones_like(out))
        seen.append(("RNN forward/backward", read() & {CONTROL}))
        c = elman.RNNCell(8, 16, seed=0)
        c(rng.standard_normal((1, 8)).astype(np.float32))
        seen.append(("RNNCell", read() & {CONTROL}))
        elman.SGD(m.parameters(), lr=0.1, clip_norm=1.0).step()
        elman.BCEWithLogitsLoss()(np.zeros(3), np.ones(3))
        seen.append(("SGD, losses", read() & {CONTROL}))
        bad = [(what, hex(v)) for what, v in seen if v != start]
        assert not bad, (hex(start), bad)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
