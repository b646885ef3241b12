"""Thread control for the compiled kernels (their BLAS included): the accepted range, checked
here, and the ELMAN_NUM_THREADS variable, which the kernels read and this module warns about."""

import os
import re
import warnings

import numpy as np

from . import _backend

# The rule csrc/cpu/threads.cpp applies to ELMAN_NUM_THREADS: a whole number, spaces around it
# allowed (strtol's syntax), an empty value meaning "not set".
_ENV_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*", re.ASCII)


_CPUS = os.cpu_count() or 1  # counted once: os.cpu_count() reads /sys (30 us a call)


def max_num_threads():
    """The most threads elman accepts: 4 x ``os.cpu_count()``, at least 4 (more threads than
    cores only take turns; thousands of them slow every call and can exhaust the process)."""
    return max(4, 4 * _CPUS)


def set_num_threads(n):
    """Number of threads the cpu backend uses, 1 to :func:`max_num_threads` (default: the
    CPUs this process may use, or ELMAN_NUM_THREADS)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads should be of type int, got: {type(n).__name__}")
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {n}")
    if n > max_num_threads():
        raise ValueError(f"num_threads must be at most {max_num_threads()} (4 x the {_CPUS} "
                         f"CPUs, at least 4), got {n}")
    _backend.core().set_num_threads(int(n))


def get_num_threads():
    """Number of threads the cpu backend uses."""
    return _backend.core().get_num_threads()


def _check_environment():
    """Warns when ELMAN_NUM_THREADS is set to a value the kernels ignore (they use the default)."""
    text = os.environ.get("ELMAN_NUM_THREADS", "")
    if not text:
        return
    cap = max_num_threads()
    try:
        valid = bool(_ENV_NUMBER.fullmatch(text)) and 1 <= int(text) <= cap
    except ValueError:  # more digits than Python converts: far out of range anyway
        valid = False
    if not valid:
        warnings.warn(f"ELMAN_NUM_THREADS={text!r} is not a whole number from 1 to {cap} (4 x "
                      "the CPUs, at least 4); it is ignored and elman uses the default (the "
                      "CPUs this process may use)", RuntimeWarning, stacklevel=2)


_check_environment()
