"""The module floor of the NumPy API: grad mode (no_grad), Parameter, Module (parameter
registry, state_dict, zero_grad, train/eval) and the argument checks every layer shares."""

import contextlib
import threading
import zlib
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import numpy as np

from . import _checks

__all__ = ["Parameter", "Module", "no_grad", "is_grad_enabled"]

# ----------------------------------------------------------------------------- grad mode
_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether forward calls record what ``backward`` needs (per thread).

    Returns
    -------
    bool
        False inside :func:`no_grad`, True otherwise.
    """
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager for inference: forward calls inside record nothing for ``backward``
    (no memory is kept for a backward pass; a later ``backward`` raises ``RuntimeError``).

    The mode is per thread and restored on exit, also after an exception.

    Examples
    --------
    >>> import numpy as np, elman
    >>> rnn = elman.RNN(3, 4, seed=0)
    >>> with elman.no_grad():
    ...     out, h_n = rnn(np.ones((5, 2, 3), np.float32))
    >>> out.shape
    (5, 2, 4)
    """
    previous = is_grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


# ----------------------------------------------------------------------------- argument checks
def _check_size(value, name, allow_zero=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return int(value)


def _check_dtype(dtype):
    if dtype is None:  # as torch: None means the default (np.dtype(None) would be float64)
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _make_rng(seed):
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be None or a non-negative int, got bool")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None or a non-negative int, got {seed!r} ({exc})") from None


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


# ----------------------------------------------------------------------------- Parameter
class Parameter:
    """A trainable array: ``.data``, ``.grad`` (same shape and dtype, zeros from the start,
    never None) and ``.name``.

    ``.data`` may be changed in place, or replaced by an array of the same shape and dtype;
    either takes effect at the next call (nothing keeps a stale copy of the weights). Both
    arrays are updated in place (optimizers, backward), so a replacement must be writable, and
    ``.grad`` also C-contiguous.
    """

    __slots__ = ("_data", "_grad", "name", "_version")

    def __init__(self, data, name=""):
        data = np.asarray(data)
        if data.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"Parameter data must be float32 or float64, got {data.dtype}")
        if not data.flags.writeable:
            raise ValueError("Parameter data must be writable (optimizers update it in place)")
        self._data = data
        self._version = 0  # bumped by every write through the API (see bump_version)
        self._grad = np.zeros(data.shape, data.dtype)
        self.name = name

    def _label(self, what):
        return f"{self.name}.{what}" if self.name else what

    @property
    def data(self) -> np.ndarray:
        """The parameter's values; assign an array of the same shape and dtype to replace them."""
        return self._data

    @data.setter
    def data(self, value):
        label = self._label("data")
        value = _checks.as_array(value, label, self._data.dtype)
        _checks.check_shape(value, label, self._data.shape)
        if not value.flags.writeable:
            raise ValueError(f"{label} must be writable (optimizers update it in place)")
        self._data = value
        self._version += 1

    @property
    def grad(self) -> np.ndarray:
        """The accumulated gradient (``backward`` adds into it); a writable C-contiguous array
        of the same shape and dtype may replace it."""
        return self._grad

    @grad.setter
    def grad(self, value):
        # kept as given (gradients accumulate into it), so never a converted copy
        _checks.check_output(value, self._label("grad"), self._data.dtype, self._data.shape)
        self._grad = value

    @property
    def shape(self) -> tuple:
        """The shape of ``.data`` (and ``.grad``)."""
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``.data`` (and ``.grad``): float32 or float64."""
        return self._data.dtype

    def bump_version(self) -> None:
        """Marks ``.data`` as changed (optimizers and ``load_state_dict`` call it after writing
        in place), so that a backward through a forward call made before the change raises
        instead of mixing old activations with new weights."""
        self._version += 1

    def zero_grad(self) -> None:
        """Sets ``.grad`` to zeros in place."""
        self._grad[...] = 0

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"


# ----------------------------------------------------------------------------- Module
class Module:
    """Base class of elman's layers: a registry of named :class:`Parameter` objects
    (reachable as attributes, e.g. ``rnn.weight_hh_l0``), ``state_dict`` / ``load_state_dict``,
    ``zero_grad`` and ``train`` / ``eval``. Calling a module calls its ``forward``."""

    def __init__(self):
        self._params = {}
        self.training = True

    def _add_param(self, name, array):
        self._params[name] = Parameter(array, name)

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            raise AttributeError(f"cannot replace parameter {name!r}; assign to "
                                 f"{name}.data instead")
        object.__setattr__(self, name, value)

    def named_parameters(self) -> Iterator[Tuple[str, "Parameter"]]:
        """The ``(name, Parameter)`` pairs in registration order (torch's order), e.g.
        ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``."""
        return iter(self._params.items())

    def parameters(self) -> List["Parameter"]:
        """The parameters in registration order (a new list; the Parameter objects themselves).

        Examples
        --------
        >>> import elman
        >>> [p.shape for p in elman.RNN(3, 4).parameters()]
        [(4, 3), (4, 4), (4,), (4,)]
        """
        return list(self._params.values())

    def state_dict(self) -> Dict[str, np.ndarray]:
        """A dict from parameter name to a copy of its array (torch's names and shapes)."""
        return {name: p.data.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copies values into the parameters (cast to the module's dtype, like torch's copy).

        Parameters
        ----------
        state_dict : mapping
            Parameter name to array; anything ``np.asarray`` takes (torch tensors included).

        Raises
        ------
        TypeError
            Not a mapping, or a value that is not an array of real numbers.
        ValueError
            Missing or unexpected keys, a wrong shape, or a read-only parameter. Names, shapes
            and value types are all checked first: when anything is wrong nothing is changed.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        staged = {}
        for name, p in self._params.items():
            try:
                v = np.asarray(state_dict[name])
            except Exception as exc:
                raise TypeError(f"load_state_dict: {name!r} is not convertible to an array "
                                f"({exc})") from None
            if v.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {name!r} must hold real numbers, got dtype "
                                f"{v.dtype}")
            if v.shape != p.shape:
                raise ValueError(f"load_state_dict: {name!r} must have shape {p.shape}, got "
                                 f"{v.shape}")
            if not p.data.flags.writeable:
                raise ValueError(f"load_state_dict: parameter {name!r} is read-only")
            staged[name] = v.astype(p.dtype)
        for name, v in staged.items():
            self._params[name].data[...] = v
            self._params[name].bump_version()

    def zero_grad(self) -> None:
        """Sets every parameter's ``.grad`` to zeros."""
        for p in self._params.values():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Module":
        """Sets training mode (dropout between layers is active only in training); returns
        the module."""
        self.training = _check_bool(mode, "mode")
        return self

    def eval(self) -> "Module":
        """Sets evaluation mode (``train(False)``); returns the module."""
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _guard(self, **inputs):
        """What backward checks to refuse in-place changes made after the forward call: the
        fingerprints of the caller's arrays it keeps (None entries and elman's own copies are
        skipped) and the parameters' versions."""
        arrays = {k: a for k, a in inputs.items() if a is not None and a.flags.writeable}
        return (list(arrays), [fingerprint(a) for a in arrays.values()],
                [p._version for p in self._params.values()])

    def _check_guard(self, guard, **inputs):
        names, fps, versions = guard
        _check_unchanged(fps, {k: inputs[k] for k in names}, versions, self._params,
                        type(self).__name__)

    def _uniform(self, rng, shape, bound, dtype):
        _checks.check_nbytes(shape, np.float64, f"{type(self).__name__}: a parameter")
        return rng.uniform(-bound, bound, size=shape).astype(dtype)

    def _reserve(self, n_elements, largest, dtype):
        """Checks, before any parameter exists, that the module fits: ``n_elements``
        parameter elements in all (each with its gradient) plus the float64 draw of the
        ``largest`` one. A MemoryError naming the module and the byte count otherwise."""
        itemsize = np.dtype(dtype).itemsize
        _checks.check_budget(2 * n_elements * itemsize + 8 * largest,
                             f"{type(self).__name__}: {n_elements} parameters with their "
                             "gradients")


def _backward_context(ctx, what):
    if ctx is None:
        raise RuntimeError(f"{what}.backward() needs a preceding forward call with gradients "
                           "enabled, and each forward can be back-propagated only once")
    return ctx


def fingerprint(a):
    """A cheap fingerprint of an array's values: a CRC-32 of all its bytes when small, else of
    4096 elements spread over it. Detects a caller's in-place change between forward and
    backward that touches the sampled elements (e.g. ``x[...] = 0``), not every change."""
    flat = a.reshape(-1)
    if flat.size > 4096:
        flat = flat[:: flat.size // 4096]
    return zlib.crc32(np.ascontiguousarray(flat).view(np.uint8))


def _check_unchanged(recorded, arrays, versions, params, what):
    """Raises RuntimeError when an input's fingerprint or a parameter's version differs from
    what the forward call recorded (``arrays``: name -> array, ``params``: name -> Parameter)."""
    for (name, a), fp in zip(arrays.items(), recorded):
        if fingerprint(a) != fp:
            raise RuntimeError(f"{what}.backward(): {name} was modified in place after the "
                               "forward call; the gradients would be wrong (pass a copy, or "
                               "run forward again)")
    for (name, p), v in zip(params.items(), versions):
        if p._version != v:
            raise RuntimeError(f"{what}.backward(): parameter {name} was changed after the "
                               "forward call (e.g. by an optimizer step or load_state_dict); "
                               "run forward again before backward")
