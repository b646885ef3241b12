"""Flush-to-zero inside the kernels (elman.set_flush_denormal): on by default, results within the
reference's tolerance in the vanishing-gradient regime in both modes, and the floating-point
mode of the calling thread and the process never changed, whatever the calls did."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import elman
from conftest import assert_close, max_abs

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif("cpu" not in elman.backends(), reason="no compiled CPU backend"),
]


@pytest.fixture(params=[True, False], ids=["flush", "exact"])
def flush(request):
    previous = elman.set_flush_denormal(request.param)
    yield request.param
    elman.set_flush_denormal(previous)


def _caller_makes_subnormals():
    """True when this thread's arithmetic still produces subnormals (FTZ off here)."""
    tiny = np.finfo(np.float32).smallest_normal
    return bool(np.float32(tiny) * np.float32(0.5) > 0) and bool(
        (np.full(64, tiny, np.float32) * np.float32(0.25)).min() > 0)


def test_on_by_default_unless_the_environment_says_otherwise():
    code = "import elman; print(elman.get_flush_denormal())"
    for value, expected in ((None, "True"), ("0", "False"), ("off", "False"), ("1", "True")):
        env = {k: v for k, v in __import__("os").environ.items() if k != "ELMAN_FLUSH_DENORMAL"}
        if value is not None:
            env["ELMAN_FLUSH_DENORMAL"] = value
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True)
        assert r.stdout.strip() == expected, (value, r.stdout)


@pytest.mark.bad_input
def test_mode_must_be_a_bool():
    with pytest.raises(TypeError, match="mode must be a bool"):
        elman.set_flush_denormal(1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vanishing_regime_matches_the_reference_in_both_modes(flush, threads, dtype):
    """A contractive recurrence (W_hh gain 0.1) over 150 steps with the loss on the last state:
    dL/dh_t falls through the subnormal range. Flushed or not, every result is within the
    reference's tolerance (the flushed values are below 1.2e-38)."""
    rng = np.random.default_rng(0)
    T, B, I, H = 150, 16, 8, 32
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(dtype)
    w_hh = (rng.standard_normal((H, H)) * 0.1 / np.sqrt(H)).astype(dtype)
    g_hn = rng.standard_normal((B, H)).astype(dtype)
    previous = elman.get_num_threads()
    elman.set_num_threads(threads)
    try:
        out, h_n = elman.functional.rnn_forward(x, w_ih, w_hh, backend="cpu")
        g = elman.functional.rnn_backward(x, w_ih, w_hh, out, grad_h_n=g_hn, bias=False,
                                          backend="cpu")
    finally:
        elman.set_num_threads(previous)
    ref_out, _ = elman.reference.rnn_forward(x, w_ih, w_hh)
    ref = elman.reference.rnn_backward(x, w_ih, w_hh, ref_out, grad_h_n=g_hn)
    assert_close(out, ref_out, dtype)
    assert_close(g.grad_x, ref["grad_x"], dtype)
    assert_close(g.grad_norms, ref["grad_norms"], dtype)
    scale = max_abs(ref["dW_ih"], ref["dW_hh"])
    assert_close(g.grad_weight_hh, ref["dW_hh"], dtype, "weight", scale=scale)
    assert_close(g.grad_weight_ih, ref["dW_ih"], dtype, "weight", scale=scale)
    if dtype == np.float32:  # the regime is real: the early gradients are below normal range
        assert ref["grad_norms"][0] < np.finfo(np.float32).smallest_normal


def test_the_callers_mode_is_never_changed(flush):
    rnn = elman.RNN(8, 32, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(1).standard_normal((20, 16, 8)).astype(np.float32)
    results = []

    def calls():
        for _ in range(3):
            out, _ = rnn(x)
            rnn.backward(np.ones_like(out))
            with pytest.raises(ValueError):  # a rejected call
                rnn(x[:, :, :5])
            lin = elman.Linear(8, 4, seed=0)
            lin(x.reshape(-1, 8))
            results.append(_caller_makes_subnormals())

    calls()
    t = threading.Thread(target=calls)  # another Python thread, the same promise
    t.start()
    t.join()
    assert results == [True] * 6
