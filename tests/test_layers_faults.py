"""The layers under faults: sizes refused before any memory is touched, backward all or nothing
across layers, contexts recorded only after success, and in-place changes between forward and
backward detected (as torch's version counters do) instead of silently wrong gradients."""

import subprocess
import sys

import numpy as np
import pytest

import elman
from conftest import HOST_BACKENDS

pytestmark = [pytest.mark.bad_input, pytest.mark.reliability]

T, B, I, H = 5, 3, 4, 6


def _peak_rss_mb(code):
    """Runs ``code`` in a fresh interpreter; returns its peak resident memory in MiB."""
    script = code + "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]) / 1024


@pytest.mark.parametrize("ctor", ["elman.RNN(1, 2**27)", "elman.RNN(4, 8, num_layers=10**9)",
                                  "elman.RNN(1, 2**31)", "elman.RNNCell(2**28, 2**10)",
                                  "elman.Linear(2**20, 2**20)", "elman.Embedding(2**34, 64)"])
def test_a_module_that_cannot_fit_is_refused_before_touching_memory(ctor):
    code = (f"import elman\ntry:\n    {ctor}\nexcept MemoryError as e:\n"
            "    assert 'parameters with their gradients needs' in str(e), e\n"
            "else:\n    raise SystemExit('not refused')")
    baseline = _peak_rss_mb("import elman")
    assert _peak_rss_mb(code) < baseline + 64  # nothing large was allocated first


def _stack(backend, **kw):
    rnn = elman.RNN(I, H, num_layers=2, bidirectional=True, seed=0, backend=backend, **kw)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    return rnn, x


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_multi_layer_backward_is_all_or_nothing_and_can_be_retried(backend, monkeypatch):
    rnn, x = _stack(backend)
    out, h_n = rnn(x)
    before = [p.grad.copy() for p in rnn.parameters()]
    be = rnn._be
    real, calls = be.backward_calls, []

    def failing(many):  # the lower layer's kernel calls (both directions) run out of memory
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("stand-in: no scratch for layer 0")
        return real(many)

    monkeypatch.setattr(be, "backward_calls", failing)
    with pytest.raises(MemoryError, match="stand-in"):
        rnn.backward(np.ones_like(out))
    for p, b in zip(rnn.parameters(), before):  # the upper layer's additions were undone
        np.testing.assert_array_equal(p.grad, b)
    monkeypatch.setattr(be, "backward_calls", real)
    grad_x, _ = rnn.backward(np.ones_like(out))  # the context survived: the retry works
    fresh, _ = _stack(backend)
    fresh(x)
    fx, _ = fresh.backward(np.ones_like(out))
    np.testing.assert_array_equal(grad_x, fx)
    for p, q in zip(rnn.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_failed_embedding_lookup_keeps_the_previous_context():
    emb = elman.Embedding(10, 3, seed=0)
    emb(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="indices must be in"):
        emb(np.array([[1, 12]]))
    emb.backward(np.ones((1, 2, 3), np.float32))  # the first call's context
    assert emb.weight.grad[1].tolist() == [1, 1, 1] and emb.weight.grad[2].tolist() == [1, 1, 1]


def test_outputs_needed_by_backward_are_read_only():
    rnn, x = _stack("cpu" if "cpu" in elman.backends() else "numpy")
    out, h_n = rnn(x)
    with pytest.raises(ValueError, match="read-only"):
        out *= 0.5
    with elman.no_grad():  # nothing is kept, nothing is protected
        out, _ = rnn(x)
        out *= 0.5
    cell = elman.RNNCell(I, H, seed=0)
    h = cell(x[0])
    with pytest.raises(ValueError, match="read-only"):
        h[0] = 0


@pytest.mark.parametrize("change, match", [
    (lambda rnn, x, h0: x.__setitem__(Ellipsis, 0), "x was modified in place"),
    (lambda rnn, x, h0: h0.__setitem__(Ellipsis, 1), "h0 was modified in place"),
    (lambda rnn, x, h0: setattr(rnn.weight_hh_l1, "data", np.zeros((H, H), np.float32)),
     "parameter weight_hh_l1 was changed"),
    (lambda rnn, x, h0: rnn.load_state_dict(rnn.state_dict()), "parameter weight_ih_l0 was changed"),
    (lambda rnn, x, h0: elman.SGD(rnn.parameters(), lr=0.1).step(), "parameter weight_ih_l0 was changed"),
])
def test_rnn_backward_refuses_inputs_changed_after_forward(change, match):
    rnn, x = _stack("cpu" if "cpu" in elman.backends() else "numpy")
    h0 = np.zeros((4, B, H), np.float32)
    out, _ = rnn(x, h0)
    change(rnn, x, h0)
    with pytest.raises(RuntimeError, match=match):
        rnn.backward(np.ones_like(out))
    assert all(not p.grad.any() for p in rnn.parameters())  # refused before any gradient


def test_cell_and_linear_refuse_an_input_changed_after_forward():
    cell, lin = elman.RNNCell(I, H, seed=0), elman.Linear(I, 2, seed=0)
    x = np.ones((B, I), np.float32)
    cell(x)
    lin(x)
    x[...] = 2
    with pytest.raises(RuntimeError, match="x was modified in place"):
        cell.backward(np.ones((B, H), np.float32))
    with pytest.raises(RuntimeError, match="x was modified in place"):
        lin.backward(np.ones((B, 2), np.float32))
