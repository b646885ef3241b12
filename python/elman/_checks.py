"""The ground floor of the Python side: argument rules for host (NumPy) arrays, shared by the
functional floor and the backends. Messages name the argument and give expected vs actual.
Imports numpy only."""

import sys
from typing import Optional

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONLINEARITIES = ("tanh", "relu")

def as_array(a, name, dtype) -> np.ndarray:
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


def empty(shape, dtype, what) -> np.ndarray:
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


def as_lengths(lengths, T, B) -> Optional[np.ndarray]:
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


def check_layer(x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
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
        bias_ih = optional(bias_ih, "bias_ih", dtype, (H,))
    if bias_hh is not None:
        bias_hh = optional(bias_hh, "bias_hh", dtype, (H,))
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


def optional(a, name, dtype, shape) -> Optional[np.ndarray]:
    if a is None:
        return None
    a = as_array(a, name, dtype)
    if a.shape != shape:
        check_shape(a, name, shape)
    return a


def memory_limit():
    """Bytes this process can have at most: the smaller of the physical memory and the
    address-space limit (``RLIMIT_AS``), where the platform reports them."""
    limit = sys.maxsize
    try:
        import os
        limit = min(limit, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limit = min(limit, soft)
    except (ImportError, OSError, ValueError):
        pass
    return limit


def check_budget(nbytes, what):
    """Refuses, before anything is allocated, a total of ``nbytes`` (computed exactly, with
    Python integers) that this process could never hold: a MemoryError naming ``what`` and the
    byte count."""
    limit = memory_limit()
    if nbytes > limit:
        raise MemoryError(f"{what} needs {nbytes} bytes ({nbytes / 2**30:.3g} GiB), more than "
                          f"this process can have ({limit} bytes: physical memory or the "
                          "address-space limit); nothing was allocated")
    return nbytes
