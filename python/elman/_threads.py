"""Thread and floating-point-mode control for the compiled kernels (their BLAS included): the
accepted thread range, checked here, the ELMAN_NUM_THREADS variable, which the kernels read and
this module warns about, and flush-to-zero inside the kernels (ELMAN_FLUSH_DENORMAL)."""

import os
import re
import warnings

import numpy as np

from . import _backend

# The rule csrc/cpu/threads.cpp applies to ELMAN_NUM_THREADS: a whole number, spaces around it
# allowed (strtol's syntax), an empty value meaning "not set".
_ENV_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*", re.ASCII)


_CPUS = os.cpu_count() or 1  # counted once: os.cpu_count() reads /sys (30 us a call)


def max_num_threads() -> int:
    """The most threads elman accepts: 4 x ``os.cpu_count()``, at least 4 (more threads than
    cores only take turns; thousands of them slow every call and can exhaust the process)."""
    return max(4, 4 * _CPUS)


def set_num_threads(n: int) -> None:
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


def get_num_threads() -> int:
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


def set_flush_denormal(mode: bool) -> bool:
    """Whether the CPU kernels flush subnormal floats to zero (flush-to-zero and
    denormals-are-zero, on by default; the environment variable ``ELMAN_FLUSH_DENORMAL=0``
    starts with it off).

    The mode applies inside elman's kernel threads only, for the duration of each call (the
    BLAS products they make included); the floating-point mode of the calling thread and of the
    process is never changed. With it on, results whose magnitude falls below the smallest
    normal float (1.2e-38 in float32, 2.2e-308 in float64) become 0 and subnormal inputs count
    as 0; everything else is unchanged. This keeps backpropagation through a contractive
    recurrence (vanishing gradients) as fast as the normal case, where x86 cores would otherwise
    take microcode assists on every subnormal operand. Off: exact IEEE subnormal arithmetic.

    Parameters
    ----------
    mode : bool

    Returns
    -------
    bool
        The previous mode.
    """
    if not isinstance(mode, (bool, np.bool_)):
        raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
    core = _backend.core()
    previous = bool(core.get_flush_denormal())
    core.set_flush_denormal(bool(mode))
    return previous


def get_flush_denormal() -> bool:
    """Whether the CPU kernels flush subnormal floats to zero (see :func:`set_flush_denormal`)."""
    return bool(_backend.core().get_flush_denormal())
