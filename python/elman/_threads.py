"""Thread control for the compiled kernels (their BLAS included)."""

import numpy as np

from . import _backend


def set_num_threads(n):
    """Number of threads the cpu backend uses (default: the CPUs this process may use)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads should be of type int, got: {type(n).__name__}")
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {n}")
    _backend.core().set_num_threads(int(n))


def get_num_threads():
    """Number of threads the cpu backend uses."""
    return _backend.core().get_num_threads()
