"""SGD with momentum / Nesterov / weight decay and gradient clipping (global L2 norm as
``torch.nn.utils.clip_grad_norm_``, or elementwise value as ``clip_grad_value_``)."""

import math
from numbers import Real
from typing import Iterable

import numpy as np

from ._module import Module, Parameter

__all__ = ["SGD", "clip_grad_norm_", "clip_grad_value_", "grad_norm"]


def _param_list(params):
    if isinstance(params, Module):
        params = params.parameters()
    if isinstance(params, Parameter):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of elman.Parameter, got "
                        f"{type(params).__name__}") from None
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"params must hold elman.Parameter objects, got {type(p).__name__}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params must not contain the same Parameter twice")
    return params


def _hyper(value, name, positive=False, optional=False):
    """A finite real number >= 0 (> 0 when ``positive``), or None when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value}")
    return value


def grad_norm(params):
    """Global L2 norm of all gradients, as a Python float. One BLAS dot product per gradient
    in its own precision; only when that overflows (or underflows to 0 from nonzero values)
    is the norm recomputed in float64 with scaling, so finite gradients never give inf.
    NaN if any gradient holds a NaN, else inf if any holds an inf."""
    grads = [p.grad.reshape(-1) for p in _param_list(params) if p.grad.size]
    if not grads:
        return 0.0
    sq = 0.0
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # handled below
        for g in grads:
            sq += float(np.dot(g, g))
    if math.isfinite(sq) and (sq > 1e-30 or sq == 0.0 and not any(g.any() for g in grads)):
        return math.sqrt(sq)
    maxima = [float(np.max(np.abs(g))) for g in grads]
    if any(math.isnan(m) for m in maxima):
        return float("nan")
    m = max(maxima)
    if m == 0.0 or math.isinf(m):
        return m
    sq = sum(float(np.sum(np.square(g.astype(np.float64) / m))) for g in grads)
    return m * math.sqrt(sq)


def _check_writable(params, what):
    """Every array about to be changed in place is writable: checked before the first change,
    so that a read-only array cannot leave a step half done."""
    for p in params:
        for name, a in what(p):
            if not a.flags.writeable:
                label = f"{p.name}.{name}" if p.name else name
                raise ValueError(f"{label} is read-only; it must be writable to be updated")


def _nonfinite_error(norm):
    return FloatingPointError(
        f"the total norm of the gradients is {norm}; clipping would turn every gradient into "
        "NaN, so nothing was changed. Pass error_if_nonfinite=False to proceed anyway.")


def _scale_to_norm(params, norm, max_norm):
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN is the documented outcome here
            for p in params:
                p.grad *= coef


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float,
                    error_if_nonfinite: bool = True) -> float:
    """Scales all gradients in place so that their global L2 norm is at most ``max_norm``
    (coefficient max_norm / (norm + 1e-6), applied only when below 1, as torch). Returns the
    norm before clipping. A non-finite norm raises FloatingPointError and changes nothing,
    unless ``error_if_nonfinite`` is False."""
    params = _param_list(params)
    max_norm = _hyper(max_norm, "max_norm")
    error_if_nonfinite = _flag(error_if_nonfinite, "error_if_nonfinite")
    _check_writable(params, lambda p: [("grad", p.grad)])
    norm = grad_norm(params)
    if not math.isfinite(norm) and error_if_nonfinite:
        raise _nonfinite_error(norm)
    _scale_to_norm(params, norm, max_norm)
    return norm


def clip_grad_value_(params: Iterable[Parameter], clip_value: float) -> None:
    """Clamps every gradient element to [-clip_value, clip_value] in place (NaN stays NaN)."""
    params = _param_list(params)
    clip_value = _hyper(clip_value, "clip_value")
    _check_writable(params, lambda p: [("grad", p.grad)])
    for p in params:
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


class SGD:
    """Stochastic gradient descent with the update rule of ``torch.optim.SGD`` (dampening 0):

        g = grad + weight_decay * w;  buf = momentum * buf + g  (buf = g at the first step)
        g = g + momentum * buf if nesterov else buf;  w -= lr * g

    ``step()`` first clips the gradients in place (``clip_norm``: global L2 norm, then
    ``clip_value``: elementwise), then updates, and returns the global gradient norm measured
    before clipping. A step is all or nothing: a non-finite gradient norm raises
    FloatingPointError, a read-only array ValueError, a failed allocation MemoryError, and each
    leaves every parameter, gradient and momentum buffer unchanged (``error_if_nonfinite=False``
    lets a non-finite norm through, as torch would).

    The hyper-parameters are attributes that may be changed between steps (a learning-rate
    schedule); an assignment is checked as the constructor checks its argument, and a refused
    one (``opt.lr = float("nan")``) raises and leaves the value as it was.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                 clip_norm=None, clip_value=None, error_if_nonfinite=True):
        self.params = _param_list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        self._nesterov = False  # so that the momentum check below sees no Nesterov yet
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.nesterov = nesterov
        self.error_if_nonfinite = error_if_nonfinite
        self._buffers = [None] * len(self.params)

    @property
    def lr(self):
        """The learning rate: a finite number > 0, checked on assignment."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _hyper(value, "lr")

    @property
    def momentum(self):
        """Momentum factor in [0, 1) (0: plain SGD), checked on assignment."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        value = _hyper(value, "momentum")
        if self._nesterov and value == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self._momentum = value

    @property
    def nesterov(self):
        """Whether the momentum step is Nesterov's (needs momentum > 0)."""
        return self._nesterov

    @nesterov.setter
    def nesterov(self, value):
        value = _flag(value, "nesterov")
        if value and self._momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self._nesterov = value

    @property
    def weight_decay(self):
        """L2 penalty factor >= 0 added to each gradient (torch's weight_decay)."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay = _hyper(value, "weight_decay")

    @property
    def clip_norm(self):
        """Global gradient norm to clip to before each step, or None."""
        return self._clip_norm

    @clip_norm.setter
    def clip_norm(self, value):
        self._clip_norm = _hyper(value, "clip_norm", optional=True)

    @property
    def clip_value(self):
        """Bound to clamp each gradient element to before each step, or None."""
        return self._clip_value

    @clip_value.setter
    def clip_value(self, value):
        self._clip_value = _hyper(value, "clip_value", positive=True, optional=True)

    @property
    def error_if_nonfinite(self):
        """Whether a non-finite gradient norm raises FloatingPointError (and changes nothing)."""
        return self._error_if_nonfinite

    @error_if_nonfinite.setter
    def error_if_nonfinite(self, value):
        self._error_if_nonfinite = _flag(value, "error_if_nonfinite")

    def zero_grad(self) -> None:
        """Sets every parameter's ``.grad`` to zeros."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> float:
        """Clips (when ``clip_norm`` / ``clip_value`` are set) and updates every parameter in place.

        Returns
        -------
        float
            The global L2 norm of the gradients before clipping.

        Raises
        ------
        FloatingPointError
            A non-finite gradient norm (unless ``error_if_nonfinite`` is False).
        ValueError
            A read-only parameter or gradient.

        The whole step is computed before it is committed: when anything fails, every
        parameter, gradient and momentum buffer is left as it was. Each updated parameter's
        version is bumped, so a ``backward`` through a forward call made before the step
        raises instead of mixing old activations with new weights.
        """
        clips = self.clip_norm is not None or self.clip_value is not None
        _check_writable(self.params, lambda p: [("data", p.data)] + ([("grad", p.grad)] if clips else []))
        norm = grad_norm(self.params)
        if not math.isfinite(norm) and self.error_if_nonfinite:
            raise _nonfinite_error(norm)
        coef = None
        if self.clip_norm is not None:
            coef = self.clip_norm / (norm + 1e-6)
            if not (coef < 1.0 or math.isnan(coef)):
                coef = None  # below the limit: no scaling
        # Everything new is computed first (the only step that allocates), then committed by
        # copies that cannot fail: an exception before the commit changes nothing.
        staged = []
        for i, p in enumerate(self.params):
            g = p.grad
            if coef is not None:
                with np.errstate(invalid="ignore"):  # only with error_if_nonfinite=False
                    g = g * p.dtype.type(coef)
            if self.clip_value is not None:
                g = np.clip(g, -self.clip_value, self.clip_value)
            clipped = g if clips else None
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            buf = None
            if self.momentum:
                old = self._buffers[i]
                buf = np.array(g, copy=True) if old is None else self.momentum * old + g
                g = g + self.momentum * buf if self.nesterov else buf
            staged.append((clipped, buf, p.data - self.lr * g))
        for i, (p, (clipped, buf, data)) in enumerate(zip(self.params, staged)):
            if clipped is not None:
                np.copyto(p.grad, clipped)
            if buf is not None:
                self._buffers[i] = buf
            np.copyto(p.data, data)
            p.bump_version()  # a backward through an earlier forward would now be wrong
        return norm

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}, clip_norm={self.clip_norm}, "
                f"clip_value={self.clip_value})")
