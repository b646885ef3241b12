"""Several kernel calls at once (rnn.h's rnn_forward_calls_cpu / rnn_backward_calls_cpu and the
stack's rnn_forward_layers_cpu / rnn_backward_layers_cpu, the binding's rnn_*_calls and
rnn_*_layers): at small batch the two directions of a bidirectional layer run at the same time,
and the layers of a one-direction stack run as a wavefront (one chunk of steps apart). Results
against the reference; the concurrent schedules bitwise equal to the same work run one after
another for a fixed thread count; calls that share memory, or layers that are not a chain, fall
back to one after another; bad calls are refused before anything is written."""

import numpy as np
import pytest

import elman
from elman import _backend
from conftest import assert_close, max_abs, num_threads

pytest.importorskip("elman._core")
core = _backend.core()


@pytest.fixture
def one_after_another():
    """Runs a test body with the concurrent calls forced one after another, then restores."""
    core._testing.set_concurrent_calls(False)
    yield
    core._testing.set_concurrent_calls(True)


def _run(rnn, x, lengths, seed):
    """Forward and backward of a module; every output, input gradient and parameter gradient."""
    rng = np.random.default_rng(seed)
    out, h_n = rnn(x, lengths=lengths)
    g = rng.standard_normal(out.shape).astype(out.dtype)
    g_hn = rng.standard_normal(h_n.shape).astype(out.dtype)
    gx, gh0 = rnn.backward(g, g_hn)
    grads = [p.grad.copy() for p in rnn.parameters()]
    rnn.zero_grad()
    return [out, h_n, gx, gh0], grads


# (T, B, I, H): B = 1 and 3 (rows never split with 2-3 threads: the calls run at the same
# time), H = 300 (a step of 90000 multiply-adds, which one call alone would split by column
# panels), B = 16 (rows split with 2-3 threads: the calls run one after another); T = 40 and 33
# give a wavefront of 3 chunks (the last one short), T = 100 of 7, T < 32 none.
SHAPES = [(40, 1, 5, 33), (100, 3, 7, 17), (9, 3, 7, 17), (33, 1, 4, 300), (6, 1, 4, 300),
          (40, 16, 5, 70)]


# A stack: (layers, bidirectional). One direction with 2-3 layers takes the wavefront (with
# sequences of T >= 32 steps: chunks of max(16, T / 16) steps), bidirectional the concurrent
# directions.
STACKS = {"bidirectional": (1, True), "2 layers bidirectional": (2, True),
          "2 layers": (2, False), "3 layers": (3, False)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_stacks_match_reference(isa, threads, shape, stack, with_lengths, dtype):
    T, B, I, H = shape
    lengths = np.minimum(np.arange(B) + T - 2, T) if with_lengths else None
    x = np.random.default_rng(T * B).standard_normal((T, B, I)).astype(dtype)
    layers, bidirectional = STACKS[stack]
    kw = dict(num_layers=layers, bidirectional=bidirectional, seed=3, dtype=dtype)
    got, got_w = _run(elman.RNN(I, H, **kw), x, lengths, 1)
    ref, ref_w = _run(elman.RNN(I, H, backend="numpy", **kw), x, lengths, 1)
    for name, a, b in zip(["out", "h_n", "grad_x", "grad_h0"], got, ref):
        assert_close(a, b, dtype, what=name)
    scale = max_abs(*ref_w)
    for k, (a, b) in enumerate(zip(got_w, ref_w)):
        assert_close(a, b, dtype, kind="weight", what=f"parameter {k}", scale=scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("stack", ["2 layers bidirectional", "3 layers"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_is_bitwise_one_after_another(n, shape, stack, with_lengths, dtype):
    """For a fixed thread count, the calls at the same time give exactly what the same work one
    after another gives (each call's plan does not depend on which thread runs it)."""
    T, B, I, H = shape
    lengths = np.minimum(np.arange(B) + T - 2, T) if with_lengths else None
    x = np.random.default_rng(B).standard_normal((T, B, I)).astype(dtype)
    runs = []
    with num_threads(n):
        try:
            for concurrent in (True, False):
                core._testing.set_concurrent_calls(concurrent)
                layers, bidirectional = STACKS[stack]
                rnn = elman.RNN(I, H, num_layers=layers, bidirectional=bidirectional, seed=5,
                                dtype=dtype)
                outs, grads = _run(rnn, x, lengths, 2)
                runs.append(outs + grads)
        finally:
            core._testing.set_concurrent_calls(True)
    for k, (a, b) in enumerate(zip(*runs)):
        assert np.array_equal(a, b), f"result {k} differs"


def _forward_call(rng, T, B, I, H, dtype, reverse, out=None, h_n=None):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = (rng.standard_normal((H, I)) * 0.3).astype(dtype)
    w_hh = (rng.standard_normal((H, H)) * 0.3).astype(dtype)
    out = np.zeros((T, B, H), dtype) if out is None else out
    h_n = np.zeros((B, H), dtype) if h_n is None else h_n
    return (x, w_ih, w_hh, None, None, None, None, "tanh", reverse, out, h_n)


def test_calls_sharing_outputs_run_one_after_another():
    """Two calls writing the same arrays: the later call's values win, as with two calls."""
    with num_threads(2):
        rng = np.random.default_rng(0)
        first = _forward_call(rng, 30, 1, 4, 40, np.float32, False)
        second = _forward_call(rng, 30, 1, 4, 40, np.float32, True, out=first[9], h_n=first[10])
        core.rnn_forward_calls([first, second])
        out, h_n = np.zeros_like(first[9]), np.zeros_like(first[10])
        core.rnn_forward(*second[:9], out, h_n)
        assert np.array_equal(first[9], out) and np.array_equal(first[10], h_n)


def test_calls_are_the_calls_one_after_another():
    """Independent calls through rnn_forward_calls give bitwise what each call gives alone with
    one thread (at small batch each call runs alone on one thread)."""
    rng = np.random.default_rng(1)
    calls = [_forward_call(rng, 25, 2, 6, 50, np.float64, r) for r in (False, True, False)]
    with num_threads(2):
        core.rnn_forward_calls(calls)
    with num_threads(1):
        for c in calls:
            out, h_n = np.empty_like(c[9]), np.empty_like(c[10])
            core.rnn_forward(*c[:9], out, h_n)
            assert np.array_equal(out, c[9]) and np.array_equal(h_n, c[10])


def test_bad_call_refused_before_anything_is_written():
    rng = np.random.default_rng(2)
    good = _forward_call(rng, 5, 1, 3, 8, np.float32, False)
    good[9][...] = 7.0
    bad = list(_forward_call(rng, 5, 1, 3, 8, np.float32, True))
    bad[10] = np.zeros((2, 8), np.float32)  # h_n of the wrong shape
    with pytest.raises(ValueError, match="h_n"):
        core.rnn_forward_calls([good, tuple(bad)])
    assert np.all(good[9] == 7.0)
    with pytest.raises(TypeError, match="tuple of 11"):
        core.rnn_forward_calls([good[:10]])
    with pytest.raises(TypeError, match="tuple of 18"):
        core.rnn_backward_calls([good])
    with pytest.raises(TypeError, match="nonlinearity must be a str"):
        core.rnn_forward_calls([good[:7] + (1,) + good[8:]])
    with pytest.raises(TypeError, match="reverse must be a bool"):
        core.rnn_forward_calls([good[:8] + (None,) + good[9:]])
    with pytest.raises(TypeError, match="x must be"):
        core.rnn_forward_calls([(None,) + good[1:]])
    core.rnn_forward_calls([])  # no calls: nothing to do


def test_one_after_another_fixture_restores(one_after_another):
    """The testing switch itself: with it off the bidirectional layer still matches the
    reference (the calls run on the calling thread)."""
    x = np.random.default_rng(3).standard_normal((20, 1, 4)).astype(np.float64)
    got, _ = _run(elman.RNN(4, 30, bidirectional=True, seed=1, dtype=np.float64), x, None, 0)
    ref, _ = _run(elman.RNN(4, 30, bidirectional=True, seed=1, dtype=np.float64,
                            backend="numpy"), x, None, 0)
    for a, b in zip(got, ref):
        assert_close(a, b, np.float64)


def test_layers_that_are_not_a_chain_run_one_after_another():
    """rnn_forward_layers with a second call whose x is not the first call's out: the calls one
    after another (bitwise each call alone with the same threads)."""
    with num_threads(2):
        rng = np.random.default_rng(4)
        first = _forward_call(rng, 64, 1, 6, 6, np.float32, False)
        second = _forward_call(rng, 64, 1, 6, 20, np.float32, False)  # its own x
        core.rnn_forward_layers([first, second])
        for c in (first, second):
            out, h_n = np.empty_like(c[9]), np.empty_like(c[10])
            core.rnn_forward(*c[:9], out, h_n)
            assert np.array_equal(out, c[9]) and np.array_equal(h_n, c[10])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wavefront_with_states_and_final_gradients(dtype):
    """A 3-layer stack of 70 steps (5 chunks) at B = 2 with h0 and grad_h_n through elman.RNN
    against the reference backend, with two threads."""
    T, B, I, H = 70, 2, 3, 24
    rng = np.random.default_rng(6)
    kw = dict(num_layers=3, seed=7, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((3, B, H)).astype(dtype)
    results = []
    with num_threads(2):
        for backend in ("cpu", "numpy"):
            rnn = elman.RNN(I, H, backend=backend, **kw)
            out, h_n = rnn(x, h0)
            gx, gh0 = rnn.backward(np.tanh(out), np.cos(h_n))
            results.append(([out, h_n, gx, gh0], [p.grad.copy() for p in rnn.parameters()]))
    (got, got_w), (ref, ref_w) = results
    for name, a, b in zip(["out", "h_n", "grad_x", "grad_h0"], got, ref):
        assert_close(a, b, dtype, what=name)
    scale = max_abs(*ref_w)
    for k, (a, b) in enumerate(zip(got_w, ref_w)):
        assert_close(a, b, dtype, kind="weight", what=f"parameter {k}", scale=scale)
