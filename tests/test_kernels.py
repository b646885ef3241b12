"""Every compiled kernel against the float64 reference, one layer and direction at a time,
over the full matrix: activation, bias, dtype, T, B, odd sizes, lengths, h0, direction."""

import itertools
import zlib

import numpy as np
import pytest

from elman import functional as F, reference
from conftest import assert_close, max_abs

SIZES = [(1, 1), (3, 7), (17, 5)]  # (I, H): odd sizes, I != H


def _lengths(mode, T, B):
    if mode is None:
        return None
    if B == 1:
        return np.array([max(1, T // 2)])
    half = max(1, T // 2)
    return np.array([T, 1, half, half, T][:B])  # ties, a length of T and a length of 1


def make_case(rng, T, B, I, H, dtype, bias=True, h0=True):
    s = 1.5 / np.sqrt(H)
    c = {
        "x": rng.standard_normal((T, B, I)).astype(dtype),
        "weight_ih": rng.uniform(-s, s, (H, I)).astype(dtype),
        "weight_hh": rng.uniform(-s, s, (H, H)).astype(dtype),
        "bias_ih": rng.uniform(-s, s, H).astype(dtype) if bias else None,
        "bias_hh": rng.uniform(-s, s, H).astype(dtype) if bias else None,
        "h0": rng.uniform(-1, 1, (B, H)).astype(dtype) if h0 else None,
    }
    g_out = rng.standard_normal((T, B, H)).astype(dtype)
    g_hn = rng.standard_normal((B, H)).astype(dtype)
    return c, g_out, g_hn


def check_layer_against_reference(backend, c, g_out, g_hn, lengths, act, reverse, dtype):
    out, h_n = F.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"], c["bias_hh"],
                             c["h0"], lengths, act, reverse, backend=backend)
    ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                            c["bias_hh"], c["h0"], lengths, act, reverse)
    assert out.dtype == dtype and h_n.dtype == dtype
    assert_close(out, ref_out, dtype, what="out")
    assert_close(h_n, ref_hn, dtype, what="h_n")
    bias = c["bias_ih"] is not None
    r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, g_hn, lengths,
                       act, reverse, bias=bias, backend=backend)
    # The reference runs on the kernel's own (float32) forward output, so only BPTT is compared.
    ref = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, g_hn,
                                 lengths, act, reverse)
    assert_close(r.grad_x, ref["grad_x"], dtype, what="grad_x")
    assert_close(r.grad_h0, ref["grad_h0"], dtype, what="grad_h0")
    assert_close(r.grad_norms, ref["grad_norms"], dtype, what="grad_norms")
    scale = max_abs(ref["dW_ih"], ref["dW_hh"], ref["db"])
    assert_close(r.grad_weight_ih, ref["dW_ih"], dtype, "weight", "dW_ih", scale)
    assert_close(r.grad_weight_hh, ref["dW_hh"], dtype, "weight", "dW_hh", scale)
    if bias:
        assert_close(r.grad_bias_ih, ref["db"], dtype, "weight", "db_ih", scale)
        assert_close(r.grad_bias_hh, ref["db"], dtype, "weight", "db_hh", scale)
    else:
        assert r.grad_bias_ih is None and r.grad_bias_hh is None
    if lengths is not None:  # nothing past a sequence's length
        for b, L in enumerate(lengths):
            assert not out[L:, b].any() and not r.grad_x[L:, b].any()


MATRIX = list(itertools.product(
    ["tanh", "relu"], [True, False], [np.float32, np.float64], [1, 2, 37], [1, 5], SIZES,
    [None, "mixed"], [True, False], [False, True]))


@pytest.mark.parametrize("act,bias,dtype,T,B,size,lengths,h0,reverse", MATRIX)
def test_kernel_matches_reference(backend, act, bias, dtype, T, B, size, lengths, h0, reverse):
    # a seed of the case itself, the same in every process (hash() of a tuple with strings
    # changes with PYTHONHASHSEED, so each run drew different data)
    case = repr((act, bias, T, B, size, h0, reverse)).encode()
    rng = np.random.default_rng(zlib.crc32(case))
    I, H = size
    c, g_out, g_hn = make_case(rng, T, B, I, H, dtype, bias, h0)
    check_layer_against_reference(backend, c, g_out, g_hn, _lengths(lengths, T, B), act, reverse, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_accumulates_and_writes_strided_halves(backend, dtype):
    """Gradients add into the given arrays; out / grad_out may be column halves of (T, B, 2H)
    (a bidirectional layer's buffer); grad_x accumulates across directions on request."""
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 4, 5
    c, g_out, g_hn = make_case(rng, T, B, I, H, dtype)
    both = np.full((T, B, 2 * H), 7.0, dtype)
    F.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"], c["bias_hh"], c["h0"],
                  out=both[:, :, H:], backend=backend)
    plain, _ = F.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"], c["bias_hh"],
                             c["h0"], backend=backend)
    np.testing.assert_array_equal(both[:, :, H:], plain)
    assert (both[:, :, :H] == 7.0).all()
    g_both = np.zeros((T, B, 2 * H), dtype)
    g_both[:, :, H:] = g_out
    start = [rng.standard_normal(s).astype(dtype) for s in [(H, I), (H, H), (H,), (H,)]]
    grads = tuple(a.copy() for a in start)
    gx = rng.standard_normal((T, B, I)).astype(dtype)
    gx_start = gx.copy()
    r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], both[:, :, H:], c["h0"],
                       g_both[:, :, H:], g_hn, grads=grads, grad_x=gx, accumulate_grad_x=True,
                       backend=backend)
    fresh = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], plain, c["h0"], g_out, g_hn,
                           backend=backend)
    assert r.grad_x is gx
    assert_close(gx, gx_start + fresh.grad_x, dtype)
    for acc, s0, new in zip(grads, start, fresh[2:6]):
        assert_close(acc, s0.astype(np.float64) + new, dtype, "weight")


def test_results_are_bitwise_reproducible(backend):
    rng = np.random.default_rng(1)
    c, g_out, g_hn = make_case(rng, 20, 4, 9, 13, np.float32)
    runs = []
    for _ in range(3):
        out, h_n = F.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                 c["bias_hh"], c["h0"], backend=backend)
        r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, g_hn,
                           backend=backend)
        runs.append([out, h_n] + [a for a in r if a is not None])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["sliced", "transposed", "fortran", "negative", "broadcast"])
def test_non_contiguous_inputs_give_the_contiguous_result(backend, layout):
    """Any memory layout is read correctly (copied when needed) and left untouched."""
    rng = np.random.default_rng(2)
    c, g_out, g_hn = make_case(rng, 6, 3, 4, 5, np.float32)
    views = {
        "sliced": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
        "transposed": lambda a: a if a.ndim < 2 else np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2),
        "fortran": lambda a: np.asfortranarray(a),
        "negative": lambda a: np.ascontiguousarray(a[..., ::-1])[..., ::-1],
        "broadcast": lambda a: np.broadcast_to(a, a.shape),
    }
    view = views[layout]
    ref_out, ref_hn = F.rnn_forward(**c, backend=backend)
    ref_r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], ref_out, c["h0"], g_out, g_hn,
                           backend=backend)
    vc = {k: (None if v is None else view(v)) for k, v in c.items()}
    before = {k: (None if v is None else v.copy()) for k, v in vc.items()}
    out, h_n = F.rnn_forward(**vc, backend=backend)
    r = F.rnn_backward(vc["x"], vc["weight_ih"], vc["weight_hh"], view(out), vc["h0"], view(g_out),
                       view(g_hn), backend=backend)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(h_n, ref_hn)
    for a, b in zip(r, ref_r):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    for k, v in vc.items():
        if v is not None:
            np.testing.assert_array_equal(v, before[k])
