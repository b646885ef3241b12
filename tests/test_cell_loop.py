"""Training through a Python loop of RNNCell (and Linear) calls: the tape of calls, back-propagated
once per step in reverse order, gives the gradients of the unrolled RNN and of the reference."""

import numpy as np
import pytest

import elman
from conftest import HOST_BACKENDS, assert_close, max_abs

T, B, I, H = 6, 3, 4, 5


def _cell_and_rnn(dtype, backend, bias=True, nonlinearity="tanh"):
    cell = elman.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity, dtype=dtype, seed=3,
                         backend=backend)
    rnn = elman.RNN(I, H, bias=bias, nonlinearity=nonlinearity, dtype=dtype, backend=backend)
    rnn.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    return cell, rnn


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias, nonlinearity", [(True, "tanh"), (False, "relu")])
def test_cell_loop_backward_equals_the_unrolled_rnn(backend, dtype, bias, nonlinearity):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)  # dL/dh_t of every step
    cell, rnn = _cell_and_rnn(dtype, backend, bias, nonlinearity)
    hs, h = [], h0
    for t in range(T):
        h = cell(x[t], h)
        hs.append(h)
    grad_x = np.zeros_like(x)
    carry = np.zeros((B, H), dtype)
    for t in reversed(range(T)):
        grad_x[t], carry = cell.backward(g[t] + carry)
    out, _ = rnn(x, h0[None])
    rx, rh0 = rnn.backward(g)
    assert_close(np.stack(hs), out, dtype)
    assert_close(grad_x, rx, dtype)
    assert_close(carry, rh0[0], dtype)
    scale = max_abs(*(p.grad for p in rnn.parameters()))
    for (name, p), q in zip(cell.named_parameters(), rnn.parameters()):
        assert_close(p.grad, q.grad, dtype, "weight", name, scale)
    # and the unrolled RNN agrees with the reference (float64 inside)
    w = {n: q.data for n, q in rnn.named_parameters()}
    ref_out, _ = elman.reference.rnn_forward(x, w["weight_ih_l0"], w["weight_hh_l0"],
                                             w.get("bias_ih_l0"), w.get("bias_hh_l0"), h0,
                                             nonlinearity=nonlinearity)
    assert_close(np.stack(hs), ref_out, dtype)


def test_feedback_decoder_trains_with_cell_and_head():
    """A one-to-many generator: the head's output is the next step's input. Its loss falls
    under SGD, and its gradients equal finite differences in float64."""
    rng = np.random.default_rng(1)
    target = np.sin(np.linspace(0, 3, T))[:, None, None] * np.ones((T, 2, 1))
    cell = elman.RNNCell(1, 8, dtype=np.float64, seed=0)
    head = elman.Linear(8, 1, dtype=np.float64, seed=1)
    h0 = rng.standard_normal((2, 8)) * 0.1

    def loss_and_grads():
        y, h, ys = np.zeros((2, 1)), h0, []
        for _ in range(T):
            h = cell(y, h)
            y = head(h)
            ys.append(y)
        diff = np.stack(ys) - target
        loss = float(np.sum(diff ** 2))
        gy_next = np.zeros((2, 1))   # dL/dy_t through the next step's input
        gh_next = np.zeros((2, 8))
        for t in reversed(range(T)):
            gh = head.backward(2 * diff[t] + gy_next) + gh_next
            gy_next, gh_next = cell.backward(gh)
        return loss

    params = cell.parameters() + head.parameters()
    for p in params:
        p.zero_grad()
    loss = loss_and_grads()
    analytic = [p.grad.copy() for p in params]
    eps = 1e-6
    for p, a in zip(params, analytic):
        idx = tuple(np.unravel_index(np.argmax(np.abs(a)), a.shape))
        old = p.data[idx]
        p.data[idx] = old + eps
        lp = loss_and_grads()
        p.data[idx] = old - eps
        lm = loss_and_grads()
        p.data[idx] = old
        np.testing.assert_allclose(a[idx], (lp - lm) / (2 * eps), rtol=1e-5, atol=1e-8)
    opt = elman.SGD(params, lr=0.02)
    first = None
    for _ in range(60):
        opt.zero_grad()
        cell.zero_grad()
        head.zero_grad()
        loss = loss_and_grads()
        first = loss if first is None else first
        opt.step()
    assert loss < 0.5 * first


def test_tape_out_of_order_and_no_grad():
    cell = elman.RNNCell(I, H, seed=0)
    x = np.ones((B, I), np.float32)
    h = cell(x)
    h = cell(x, h)
    cell.backward(np.ones((B, H), np.float32))
    cell.backward(np.ones((B, H), np.float32))
    with pytest.raises(RuntimeError, match="needs a preceding forward call"):
        cell.backward(np.ones((B, H), np.float32))  # two calls, two backward calls: tape empty
    with elman.no_grad():
        cell(x)
    with pytest.raises(RuntimeError, match="needs a preceding forward call"):
        cell.backward(np.ones((B, H), np.float32))
    h = cell(x)
    cell(x, h)
    cell(x)  # not a continuation: a new loop begins and the old steps are dropped
    assert len(cell._tape) == 1
    cell.zero_grad()
    with pytest.raises(RuntimeError, match="needs a preceding forward call"):
        cell.backward(np.ones((B, H), np.float32))
    lin = elman.Linear(I, 2, seed=0)
    lin(x)
    lin(2 * x)
    g1 = lin.backward(np.ones((B, 2), np.float32))  # the second call first
    g2 = lin.backward(np.ones((B, 2), np.float32))
    np.testing.assert_array_equal(g1, g2)  # dL/dx does not depend on x
    np.testing.assert_allclose(lin.weight.grad, np.full((2, I), 3.0 * B), rtol=1e-6)
    with pytest.raises(RuntimeError, match="needs a preceding forward call"):
        lin.backward(np.ones((B, 2), np.float32))
