"""Losses: callable objects, ``loss = fn(pred, target, mask=None)`` returns a Python float and
``fn.backward()`` returns dL/dpred for that call.

``mask`` (optional) selects the elements that count: a boolean array of the shape of
``target`` or a prefix of it (e.g. (T, B) for (T, B, O) predictions), so a loss can be taken at
every time step or only at chosen ones. ``reduction="mean"`` divides by the number of selected
elements (MSE, BCE) or selected samples (cross-entropy); a mean over zero elements is NaN with a
zero gradient, as torch. Losses compute in float64 and return gradients in pred's dtype.
"""

import numpy as np
from numpy.typing import ArrayLike

from . import functional as F

__all__ = ["MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "sigmoid", "softmax", "log_softmax"]

_REDUCTIONS = ("mean", "sum")


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Logistic function, stable for any input (no overflow warnings)."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def log_softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``log(softmax(x))`` along ``axis``, computed stably (no overflow for large logits)."""
    x = np.asarray(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, stable for large logits."""
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _float_pred(pred):
    pred = np.asarray(pred)
    if pred.dtype.kind == "f" and pred.dtype.newbyteorder("=") in F.FLOAT_DTYPES:
        pred = pred.astype(pred.dtype.newbyteorder("="), copy=False)  # byte order: values kept
    if pred.dtype not in F.FLOAT_DTYPES:
        raise TypeError(f"pred must have dtype float32 or float64, got {pred.dtype}")
    return pred


def _mask(mask, shape):
    """The selection as a boolean array of ``shape``, or None for all."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iu" or not np.isin(m, (0, 1)).all():
            raise TypeError(f"mask must be boolean (or 0/1 integers), got dtype {m.dtype}")
        m = m.astype(bool)
    if m.shape != shape[:m.ndim]:
        raise ValueError(f"mask must have the shape of the target or a prefix of it, "
                         f"{shape}, got {m.shape}")
    return np.broadcast_to(m.reshape(m.shape + (1,) * (len(shape) - m.ndim)), shape)


class _Loss:
    def __init__(self, reduction="mean"):
        if not isinstance(reduction, str):
            raise TypeError(f"reduction must be a str, 'mean' or 'sum', got "
                            f"{type(reduction).__name__}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._grad = None

    def _finish(self, per_elem, grad, sel, dtype):
        """per_elem / grad: float64 losses and unscaled gradients; sel: boolean selection of
        per_elem's shape (None: all). Unselected elements are excluded by a select, not a
        product, so a NaN there cannot leak in. Stores the gradient; returns the loss."""
        if sel is not None:
            per_elem = np.where(sel, per_elem, 0.0)
        count = per_elem.size if sel is None else int(np.count_nonzero(sel))
        total = float(np.sum(per_elem))
        scale = 1.0
        if self.reduction == "mean":
            scale = 1.0 / count if count else 0.0
            total = total * scale if count else float("nan")
        shape = grad.shape
        if sel is not None:
            grad = np.where(sel.reshape(sel.shape + (1,) * (grad.ndim - sel.ndim)), grad, 0.0)
        self._grad = (grad * scale).astype(dtype).reshape(shape)
        return total

    def backward(self) -> np.ndarray:
        """dL/dpred for the last call (pred's shape and dtype)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding call")
        g, self._grad = self._grad, None
        return g

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def _real_target(target):
    """``target`` as float64, from booleans, integers or floats only (never a silent cast of
    complex, string or object values)."""
    target = np.asarray(target)
    if target.dtype.kind not in "biuf":
        raise TypeError(f"target must hold real numbers (bool, int or float), got dtype "
                        f"{target.dtype}")
    return target.astype(np.float64, copy=False)


def _same_shape(pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")


class MSELoss(_Loss):
    """Mean squared error: (pred - target)^2."""

    def __call__(self, pred, target, mask=None):
        pred = _float_pred(pred)
        target = _real_target(target)
        _same_shape(pred, target)
        diff = pred.astype(np.float64) - target
        return self._finish(diff * diff, 2.0 * diff, _mask(mask, pred.shape), pred.dtype)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits with the sigmoid fused: stable for any logit.

    ``loss = max(z, 0) - z * y + log(1 + exp(-abs(z)))``; ``dL/dz = sigmoid(z) - y``.
    """

    def __call__(self, pred, target, mask=None):
        pred = _float_pred(pred)
        target = _real_target(target)
        _same_shape(pred, target)
        z = pred.astype(np.float64)
        per = np.maximum(z, 0.0) - z * target + np.log1p(np.exp(-np.abs(z)))
        return self._finish(per, sigmoid(z) - target, _mask(mask, pred.shape), pred.dtype)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy with the softmax fused.

    pred: logits (..., C) with the classes on the LAST axis (e.g. (T, B, C) for per-step
    outputs); target: integer classes (...). Targets equal to ``ignore_index`` do not count.
    """

    def __init__(self, reduction="mean", ignore_index=-100):
        super().__init__(reduction)
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = int(ignore_index)

    def __call__(self, pred, target, mask=None):
        pred = _float_pred(pred)
        if pred.ndim < 1:
            raise ValueError("pred must have a class axis (..., C), got a 0-D array")
        target = np.asarray(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if target.shape != pred.shape[:-1]:
            raise ValueError(f"target must have shape {pred.shape[:-1]} (pred without its class "
                             f"axis), got {target.shape}")
        C = pred.shape[-1]
        if C == 0:
            raise ValueError(f"pred must have at least one class, got shape {pred.shape}")
        keep = target != self.ignore_index
        m = _mask(mask, target.shape)
        if m is not None:
            keep = keep & m
        bad = keep & ((target < 0) | (target >= C))
        if bad.any():
            raise ValueError(f"target class indices must be in [0, {C}) (or ignore_index = "
                             f"{self.ignore_index}), got {target[bad].flat[0]}")
        z = pred.astype(np.float64)
        logp = log_softmax(z)
        safe_t = np.where(keep, target, 0)
        picked = np.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]
        g = np.exp(logp)
        np.put_along_axis(g, safe_t[..., None], np.take_along_axis(g, safe_t[..., None], -1) - 1.0, -1)
        return self._finish(-picked, g, keep, pred.dtype)

    def __repr__(self):
        return f"CrossEntropyLoss(reduction={self.reduction!r}, ignore_index={self.ignore_index})"
