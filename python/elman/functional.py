"""Kernel entry points: one layer in one direction, forward and BPTT, on a chosen backend.

These are what the layers call. Arguments are validated here, with messages that name the
argument and give expected vs actual, so every backend reports bad input the same way.
Shape legend: T time steps, B batch, I input features, H hidden units.
"""

import sys
from collections import namedtuple

import numpy as np

from . import _backend, reference

__all__ = ["rnn_forward", "rnn_backward", "RNNGrads", "forward_into", "backward_into"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONLINEARITIES = ("tanh", "relu")

RNNGrads = namedtuple("RNNGrads", ["grad_x", "grad_h0", "grad_weight_ih", "grad_weight_hh",
                                   "grad_bias_ih", "grad_bias_hh", "grad_norms"])
RNNGrads.__doc__ = """Gradients of one layer and direction. ``grad_norms`` (T,) float64 holds
||dL/dh_t||_2 over the valid (b, j) at each step t (0 where no sequence is valid)."""


# ----------------------------------------------------------------------------- validation
def as_array(a, name, dtype):
    """``a`` as an ndarray of exactly ``dtype``; TypeError otherwise (never a silent cast).

    The only conversion is a byte-order swap of the same float type, which keeps every value.
    """
    if type(a) is np.ndarray and a.dtype is dtype:  # the common case, checked cheaply
        return a
    if a is None:
        raise TypeError(f"{name} must be an array of {np.dtype(dtype).name}, got None")
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as exc:
            raise TypeError(f"{name} must be an array of {np.dtype(dtype).name}, got "
                            f"{type(a).__name__} ({exc})") from None
    if a.dtype != dtype:
        if a.dtype.kind == "f" and a.dtype.newbyteorder("=") == dtype:
            return a.astype(dtype)
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    return a


def check_shape(a, name, expected):
    if a.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {a.shape}")


def check_nonlinearity(nonlinearity):
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity must be a str, 'tanh' or 'relu', got "
                        f"{type(nonlinearity).__name__}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")


def check_nbytes(shape, dtype, what):
    """Bytes of an array of ``shape`` and ``dtype``, computed exactly (Python integers); a
    MemoryError naming ``what`` when no process could address them."""
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= int(d)
    if n > sys.maxsize:
        raise MemoryError(f"{what} of shape {tuple(int(d) for d in shape)} and dtype "
                          f"{np.dtype(dtype).name} needs {n} bytes, more than this process can "
                          f"address")
    return n


def empty(shape, dtype, what):
    """``np.empty`` with a MemoryError that names ``what`` (nothing is touched when it fails)."""
    try:
        return np.empty(shape, dtype)
    except (MemoryError, ValueError):  # ValueError: NumPy's "array is too big"
        n = check_nbytes(shape, dtype, what)
        raise MemoryError(f"cannot allocate {what} of shape {tuple(shape)} and dtype "
                          f"{np.dtype(dtype).name} ({n} bytes)") from None


def check_disjoint(outputs, inputs):
    """Every output (name, array or None) must share no memory with an input or another output:
    the kernels read inputs while they write outputs."""
    outputs = [(n, a) for n, a in outputs if isinstance(a, np.ndarray)]
    inputs = [(n, a) for n, a in inputs if isinstance(a, np.ndarray)]
    for i, (name, a) in enumerate(outputs):
        for other, b in inputs + outputs[:i]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name} must not share memory with {other}")


def as_lengths(lengths, T, B):
    """``lengths`` as a contiguous int64 (B,) array with 1 <= lengths[b] <= T, or None."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.size == 0 and arr.dtype.kind == "f":  # [] for an empty batch: NumPy calls it float
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per sequence), "
                         f"got {arr.shape}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must be in [1, T] = [1, {T}], got values from "
                         f"{arr.min()} to {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_layer(x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
    """Validates one layer's input and weights; returns them (as arrays of the weights' dtype)
    with the sizes: (x, weight_ih, weight_hh, bias_ih, bias_hh, T, B, I, H, dtype)."""
    if nonlinearity not in NONLINEARITIES:
        check_nonlinearity(nonlinearity)
    if type(weight_hh) is not np.ndarray:
        weight_hh = np.asarray(weight_hh)
    dtype = weight_hh.dtype
    if dtype is not FLOAT_DTYPES[0] and dtype is not FLOAT_DTYPES[1]:  # else already canonical
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"weight_hh must have dtype float32 or float64, got {dtype}")
        dtype = FLOAT_DTYPES[0] if dtype == FLOAT_DTYPES[0] else FLOAT_DTYPES[1]  # the canonical object
    weight_hh = as_array(weight_hh, "weight_hh", dtype)
    if weight_hh.ndim != 2 or weight_hh.shape[0] != weight_hh.shape[1] or not weight_hh.shape[0]:
        raise ValueError(f"weight_hh must have shape (H, H) with H >= 1, got {weight_hh.shape}")
    H = weight_hh.shape[0]
    x = as_array(x, "x", dtype)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got {x.ndim}-D with shape {x.shape}")
    T, B, I = x.shape
    if T == 0:
        raise ValueError("Expected sequence length to be larger than 0 in RNN, got x with T = 0")
    weight_ih = as_array(weight_ih, "weight_ih", dtype)
    if weight_ih.shape != (H, I):
        check_shape(weight_ih, "weight_ih", (H, I))
    if bias_ih is not None:
        bias_ih = _optional(bias_ih, "bias_ih", dtype, (H,))
    if bias_hh is not None:
        bias_hh = _optional(bias_hh, "bias_hh", dtype, (H,))
    return x, weight_ih, weight_hh, bias_ih, bias_hh, T, B, I, H, dtype


def check_output(a, name, dtype, shape):
    """An array the call writes into: an ndarray of exactly ``dtype`` and ``shape``, writable,
    C-contiguous and aligned (it is written in place, so it is never copied)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    check_shape(a, name, shape)
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous and aligned (it is written in place)")


def _optional(a, name, dtype, shape):
    if a is None:
        return None
    a = as_array(a, name, dtype)
    if a.shape != shape:
        check_shape(a, name, shape)
    return a


# ----------------------------------------------------------------------------- forward
def rnn_forward(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, lengths=None,
                nonlinearity="tanh", reverse=False, *, out=None, backend=None, stream=None):
    """Fused forward of one layer in one direction.

    x (T, B, I), weight_ih (H, I), weight_hh (H, H), bias_ih / bias_hh (H,) or None,
    h0 (B, H) or None (zeros), lengths (B,) ints in [1, T] or None. ``out``: an optional
    preallocated (T, B, H) array to write into (a column slice of a (T, B, 2H) array is fine).
    Returns ``(out, h_n)``: out (T, B, H) with 0 past each sequence's length, h_n (B, H).
    backend="cuda" (or "auto" given CUDA device arrays): NumPy arrays are copied to the GPU and
    back; device arrays (torch, CuPy: ``__cuda_array_interface__`` or ``__dlpack__``) are used in
    place and results come back on the same device. ``stream`` (cuda only): a cudaStream_t int or
    a torch / CuPy stream (default: the legacy default stream).
    """
    backend = _backend.resolve(backend, x, weight_hh, h0, out, stream=stream)
    if backend == "cuda":  # all arrays on the host or all on one device: see _cuda_fn
        from . import _cuda_fn
        return _cuda_fn.rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                                    nonlinearity, reverse, out=out, stream=stream)
    x, weight_ih, weight_hh, bias_ih, bias_hh, T, B, I, H, dtype = _check_layer(
        x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)
    h0 = _optional(h0, "h0", dtype, (B, H))
    lengths = as_lengths(lengths, T, B)
    if out is None:
        out = empty((T, B, H), dtype, "out")
    else:  # written in place: exactly the dtype, never a converted copy
        if not isinstance(out, np.ndarray) or out.dtype != dtype:
            raise TypeError(f"out must be a numpy.ndarray of dtype {np.dtype(dtype).name}, got "
                            f"{getattr(out, 'dtype', type(out).__name__)}")
        check_shape(out, "out", (T, B, H))
        if not out.flags.writeable:
            raise ValueError("out must be writable")
        check_disjoint([("out", out)], [("x", x), ("weight_ih", weight_ih),
                                        ("weight_hh", weight_hh), ("bias_ih", bias_ih),
                                        ("bias_hh", bias_hh), ("h0", h0)])
    h_n = empty((B, H), dtype, "h_n")
    forward_into(backend, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                 reverse, out, h_n)
    return out, h_n


def forward_into(backend, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                 reverse, out, h_n):
    """The kernel call of :func:`rnn_forward` on arguments that are already validated (the
    layers' path; the compiled backend checks them again at its boundary). Writes out, h_n."""
    if out.shape[1] == 0:
        return
    if backend == "cpu":
        _backend.core().rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                                    nonlinearity, bool(reverse), out, h_n)
    elif backend == "cuda":  # NumPy arrays, copied to the GPU and back (see _cuda_fn)
        from . import _cuda_fn
        h_n[...] = _cuda_fn.rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                                        nonlinearity, reverse, out=out)[1]
    else:
        o, hn = reference.rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                                      nonlinearity, bool(reverse))
        out[...] = o
        h_n[...] = hn


# ----------------------------------------------------------------------------- backward
def rnn_backward(x, weight_ih, weight_hh, out, h0=None, grad_out=None, grad_h_n=None,
                 lengths=None, nonlinearity="tanh", reverse=False, bias=True, *, grads=None,
                 grad_x=None, accumulate_grad_x=False, backend=None, stream=None):
    """Fused BPTT through one ``rnn_forward`` call (same x, weights, h0, lengths; its ``out``).

    grad_out (T, B, H) and grad_h_n (B, H) are dL/d out and dL/d h_n (None: zeros).
    ``grads``: optional (dW_ih, dW_hh, db_ih, db_hh) arrays to accumulate (+=) into, e.g. the
    parameters' ``.grad``; db_* are None when ``bias`` is False. ``grad_x``: optional (T, B, I)
    array to write (or, with ``accumulate_grad_x``, add) the input gradient into.
    Returns :class:`RNNGrads`. ``backend`` and ``stream``: as :func:`rnn_forward`.
    """
    backend = _backend.resolve(backend, x, weight_hh, out, grad_out, stream=stream)
    if backend == "cuda":
        from . import _cuda_fn
        return RNNGrads(*_cuda_fn.rnn_backward(
            x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths, nonlinearity, reverse,
            bias, grads=grads, grad_x=grad_x, accumulate_grad_x=accumulate_grad_x, stream=stream))
    x, weight_ih, weight_hh, _, _, T, B, I, H, dtype = _check_layer(
        x, weight_ih, weight_hh, None, None, nonlinearity)
    out = as_array(out, "out", dtype)
    check_shape(out, "out", (T, B, H))
    h0 = _optional(h0, "h0", dtype, (B, H))
    grad_out = _optional(grad_out, "grad_out", dtype, (T, B, H))
    grad_h_n = _optional(grad_h_n, "grad_h_n", dtype, (B, H))
    lengths = as_lengths(lengths, T, B)
    if grads is None:
        grads = (np.zeros((H, I), dtype), np.zeros((H, H), dtype),
                 np.zeros(H, dtype) if bias else None, np.zeros(H, dtype) if bias else None)
    if not isinstance(grads, (tuple, list)) or len(grads) != 4:
        raise TypeError("grads must be a tuple (grad_weight_ih, grad_weight_hh, grad_bias_ih, "
                        "grad_bias_hh) of arrays (biases: None without bias)")
    dW_ih, dW_hh, db_ih, db_hh = grads
    names = ("grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")
    for name, g, shape in zip(names, grads, ((H, I), (H, H), (H,), (H,))):
        if g is not None:
            check_output(g, name, dtype, shape)
    if grad_x is None:
        grad_x = empty((T, B, I), dtype, "grad_x")
        accumulate_grad_x = False
    else:
        check_output(grad_x, "grad_x", dtype, (T, B, I))
    check_disjoint(list(zip(names, grads)) + [("grad_x", grad_x)],
                   [("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh), ("out", out),
                    ("h0", h0), ("grad_out", grad_out), ("grad_h_n", grad_h_n)])
    grad_h0 = empty((B, H), dtype, "grad_h0")
    norms = empty((T,), np.float64, "grad_norms")
    backward_into(backend, x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                  nonlinearity, reverse, grads, grad_x, accumulate_grad_x, grad_h0, norms)
    return RNNGrads(grad_x, grad_h0, dW_ih, dW_hh, db_ih, db_hh, norms)


def backward_into(backend, x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                  nonlinearity, reverse, grads, grad_x, accumulate_grad_x, grad_h0, grad_norms):
    """The kernel call of :func:`rnn_backward` on validated arguments (the layers' path).
    Accumulates into ``grads`` (dW_ih, dW_hh, db_ih, db_hh); writes or adds grad_x (None: the
    input gradient is not wanted and not computed); writes grad_h0 (or None) and grad_norms."""
    dW_ih, dW_hh, db_ih, db_hh = grads
    if out.shape[1] == 0:
        if grad_x is not None and not accumulate_grad_x:
            grad_x[...] = 0
        grad_norms[...] = 0
        return
    if backend == "cpu":
        _backend.core().rnn_backward(x, weight_ih, weight_hh, h0, out, grad_out, grad_h_n, lengths,
                                     nonlinearity, bool(reverse), grad_x, bool(accumulate_grad_x),
                                     grad_h0, dW_ih, dW_hh, db_ih, db_hh, grad_norms)
        return
    if backend == "cuda":
        from . import _cuda_fn
        r = _cuda_fn.rnn_backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                                  nonlinearity, reverse, db_ih is not None, grads=grads,
                                  grad_x=grad_x, accumulate_grad_x=accumulate_grad_x)
        grad_h0[...] = r[1]
        grad_norms[...] = r[6]
        return
    r = reference.rnn_backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                               nonlinearity, bool(reverse))
    dtype = dW_ih.dtype
    dW_ih += r["dW_ih"].astype(dtype)
    dW_hh += r["dW_hh"].astype(dtype)
    for db in (db_ih, db_hh):
        if db is not None:
            db += r["db"].astype(dtype)
    if grad_x is not None:
        if accumulate_grad_x:
            grad_x += r["grad_x"].astype(dtype)
        else:
            grad_x[...] = r["grad_x"]
    if grad_h0 is not None:
        grad_h0[...] = r["grad_h0"]
    grad_norms[...] = r["grad_norms"]
