"""Losses: finite differences, torch parity where torch is installed, masks, edge cases."""

import numpy as np
import pytest

import elman
from elman.losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from conftest import torch_or_skip

EPS = 1e-6


def _fd(fn, pred, *args, **kw):
    num = np.zeros_like(pred)
    for i in np.ndindex(pred.shape):
        old = pred[i]
        pred[i] = old + EPS
        up = fn(pred, *args, **kw)
        pred[i] = old - EPS
        down = fn(pred, *args, **kw)
        pred[i] = old
        num[i] = (up - down) / (2 * EPS)
    return num


def _cases(rng):
    pred = rng.standard_normal((4, 3, 5))
    return [
        (MSELoss, pred, rng.standard_normal((4, 3, 5))),
        (BCEWithLogitsLoss, pred * 3, rng.integers(0, 2, (4, 3, 5)).astype(float)),
        (CrossEntropyLoss, pred, rng.integers(0, 5, (4, 3))),
    ]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_losses_finite_differences(reduction, use_mask):
    rng = np.random.default_rng(0)
    mask = np.array([[True, False, True], [True, True, False], [False, False, True], [True, True, True]])
    for cls, pred, target in _cases(rng):
        fn = cls(reduction=reduction)
        kw = {"mask": mask} if use_mask else {}
        loss = fn(pred, target, **kw)
        assert isinstance(loss, float)
        grad = fn.backward()
        num = _fd(lambda p, t, **k: cls(reduction=reduction)(p, t, **k), pred, target, **kw)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9, err_msg=cls.__name__)
        if use_mask:  # masked-out steps get exactly zero gradient
            assert not grad[~mask].any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses_match_torch(reduction):
    torch = torch_or_skip()
    rng = np.random.default_rng(1)
    for cls, pred, target in _cases(rng):
        pred32 = pred.astype(np.float32)
        fn = cls(reduction=reduction)
        loss = fn(pred32, target)
        grad = fn.backward()
        assert grad.dtype == np.float32
        tp = torch.tensor(pred32, requires_grad=True)
        if cls is CrossEntropyLoss:
            tl = torch.nn.CrossEntropyLoss(reduction=reduction)(tp.reshape(-1, 5), torch.tensor(target.reshape(-1)))
        else:
            tcls = getattr(torch.nn, cls.__name__)
            tl = tcls(reduction=reduction)(tp, torch.tensor(target, dtype=torch.float32))
        tl.backward()
        np.testing.assert_allclose(loss, tl.item(), rtol=1e-5, err_msg=cls.__name__)
        np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-4, atol=1e-7, err_msg=cls.__name__)


def test_cross_entropy_ignore_index_and_range():
    pred = np.zeros((3, 4))
    fn = CrossEntropyLoss(ignore_index=-1)
    loss = fn(pred, np.array([1, -1, 3]))
    np.testing.assert_allclose(loss, np.log(4))
    g = fn.backward()
    assert not g[1].any()
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 4\)"):
        fn(pred, np.array([1, 4, 0]))
    with pytest.raises(TypeError, match="integer class indices"):
        fn(pred, np.array([1.0, 2.0, 0.0]))


def test_stability_at_extreme_logits():
    fn = BCEWithLogitsLoss(reduction="sum")
    z = np.array([1e4, -1e4, 1e4, -1e4])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    loss = fn(z, y)
    np.testing.assert_allclose(loss, 2e4)
    np.testing.assert_allclose(fn.backward(), [0, 0, 1, -1])
    ce = CrossEntropyLoss(reduction="sum")
    logits = np.array([[1e4, 0.0, -1e4]], np.float32)
    np.testing.assert_allclose(ce(logits, np.array([1])), 1e4)
    np.testing.assert_allclose(ce.backward(), [[1, -1, 0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        assert np.isfinite(elman.sigmoid(np.array([-1e4, 1e4]))).all()
        assert np.isfinite(elman.softmax(np.array([1e4, -1e4]))).all()


def test_mean_over_zero_elements_is_nan_with_zero_gradient():
    fn = MSELoss()
    loss = fn(np.ones((2, 3)), np.zeros((2, 3)), mask=np.zeros(2, bool))
    assert np.isnan(loss)
    assert not fn.backward().any()


def test_shape_mismatch_and_bad_arguments():
    with pytest.raises(ValueError, match="target must have the shape of pred"):
        MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="target must have shape"):
        CrossEntropyLoss()(np.zeros((2, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match="reduction must be"):
        MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="mask must have the shape"):
        MSELoss()(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones(3, bool))
    with pytest.raises(RuntimeError, match="preceding call"):
        MSELoss().backward()
