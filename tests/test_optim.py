"""SGD and gradient clipping against values computed by hand (and torch where installed)."""

import math

import numpy as np
import pytest

import elman
from elman import Parameter
from conftest import torch_or_skip


def _param(values, grad):
    p = Parameter(np.array(values, np.float64), "p")
    p.grad = np.array(grad, np.float64)
    return p


def test_plain_sgd_step():
    p = _param([1.0, -2.0], [0.5, 0.25])
    norm = elman.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.95, -2.025])
    np.testing.assert_allclose(norm, math.sqrt(0.25 + 0.0625))


def test_momentum_nesterov_and_weight_decay_by_hand():
    # w = 1, grad = 1 each step, lr = 0.1, momentum 0.9, weight decay 0.5
    p = _param([1.0], [1.0])
    opt = elman.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()                          # g = 1 + 0.5*1 = 1.5, buf = 1.5, w = 1 - 0.15 = 0.85
    np.testing.assert_allclose(p.data, [0.85])
    opt.step()                          # g = 1 + 0.425 = 1.425, buf = 1.35 + 1.425 = 2.775
    np.testing.assert_allclose(p.data, [0.85 - 0.2775])
    q = _param([1.0], [1.0])
    opt = elman.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    opt.step()                          # buf = 1, g = 1 + 0.9 = 1.9
    np.testing.assert_allclose(q.data, [0.81])
    opt.step()                          # buf = 0.9 + 1 = 1.9, g = 1 + 1.71 = 2.71
    np.testing.assert_allclose(q.data, [0.81 - 0.271])


@pytest.mark.parametrize("grads,max_norm,expected", [
    ([[0.0, 0.0], [0.0]], 1.0, [[0.0, 0.0], [0.0]]),           # norm 0: no-op
    ([[0.3, 0.0], [0.4]], 1.0, [[0.3, 0.0], [0.4]]),           # norm 0.5 below max: unchanged
    ([[3.0, 0.0], [4.0]], 1.0, [[0.6, 0.0], [0.8]]),           # norm 5: scaled to 1 (-eps)
])
def test_clip_grad_norm(grads, max_norm, expected):
    ps = [_param(np.zeros(len(g)), g) for g in grads]
    norm = elman.clip_grad_norm_(ps, max_norm)
    np.testing.assert_allclose(norm, math.sqrt(sum(np.sum(np.square(g)) for g in grads)))
    for p, e in zip(ps, expected):
        np.testing.assert_allclose(p.grad, e, rtol=1e-6)


def test_clip_value_and_sgd_clip_options():
    p = _param([0.0, 0.0, 0.0], [-3.0, 0.5, 2.0])
    elman.clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(p.grad, [-1.0, 0.5, 1.0])
    q = _param([0.0, 0.0], [3.0, 4.0])
    norm = elman.SGD([q], lr=1.0, clip_norm=1.0, clip_value=0.7).step()
    assert norm == 5.0
    np.testing.assert_allclose(q.data, [-0.6, -0.7], rtol=1e-6)  # norm clip, then value clip


def test_nonfinite_gradient_raises_and_changes_nothing():
    p = _param([1.0, 2.0], [np.inf, 1.0])
    opt = elman.SGD([p], lr=0.1, momentum=0.9, clip_norm=1.0)
    with pytest.raises(FloatingPointError, match="nothing was changed"):
        opt.step()
    np.testing.assert_array_equal(p.data, [1.0, 2.0])
    np.testing.assert_array_equal(p.grad, [np.inf, 1.0])
    assert opt._buffers == [None]


def test_huge_float32_gradients_give_a_finite_norm():
    p = Parameter(np.zeros(4, np.float32), "p")
    p.grad = np.full(4, 3e38, np.float32)   # the float32 sum of squares would overflow
    np.testing.assert_allclose(elman.clip_grad_norm_([p], 1.0), 6e38, rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(lr=float("nan")), dict(lr=0.1, momentum=-0.1),
                                dict(lr=0.1, clip_norm=float("inf")), dict(lr=0.1, clip_value=0.0),
                                dict(lr=0.1, nesterov=True)])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        elman.SGD([_param([0.0], [0.0])], **kw)


def test_sgd_matches_torch_trajectory():
    torch = torch_or_skip()
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) * s for s in (0.5, 3.0, 0.1, 5.0)]
    p = _param(w0, np.zeros((3, 4)))
    opt = elman.SGD([p], lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, clip_norm=1.0)
    tp = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.SGD([tp], lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)
    for g in grads:
        p.grad = g.copy()
        norm = opt.step()
        tp.grad = torch.tensor(g)
        tnorm = torch.nn.utils.clip_grad_norm_([tp], 1.0)
        topt.step()
        np.testing.assert_allclose(norm, tnorm.item(), rtol=1e-12)
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12)
