"""The one place that resolves ``backend=`` ("auto" | "cpu" | "numpy") to a backend name and
holds the compiled module. Nothing here imports anything above it."""

import warnings

try:
    from . import _core
    _core_error = None
except ImportError as exc:  # a broken install; the numpy backend still works
    _core = None
    _core_error = exc

KNOWN = ("cpu", "numpy")
ISA_LEVELS = ("baseline", "avx2", "avx512")
_warned_fallback = False


def _apply_isa_request():
    """ELMAN_ISA=baseline|avx2|avx512 lowers the instruction set the CPU kernels use (the best
    one this CPU supports is the default); a level the CPU lacks is refused with a warning."""
    import os
    request = os.environ.get("ELMAN_ISA", "").strip().lower()
    if not request or _core is None:
        return
    if request not in ISA_LEVELS:
        warnings.warn(f"ELMAN_ISA={request!r} is not one of {ISA_LEVELS}; using "
                      f"{_core.get_isa()!r}", RuntimeWarning, stacklevel=2)
    elif not _core.set_isa(request):
        warnings.warn(f"ELMAN_ISA={request!r}: this CPU does not support it; using "
                      f"{_core.get_isa()!r}", RuntimeWarning, stacklevel=2)


_apply_isa_request()


def available():
    """The backends usable in this process, fastest first."""
    return [b for b in KNOWN if b != "cpu" or _core is not None]


def resolve(backend):
    """Map ``None`` / ``"auto"`` / a backend name to an available backend name."""
    global _warned_fallback
    if backend is None or backend == "auto":
        if _core is not None:
            return "cpu"
        if not _warned_fallback:
            warnings.warn(f"elman's compiled kernels failed to import ({_core_error}); "
                          "falling back to the slow NumPy reference backend", RuntimeWarning,
                          stacklevel=3)
            _warned_fallback = True
        return "numpy"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    if backend not in KNOWN:
        raise ValueError(f"unknown backend {backend!r}; expected one of 'auto', "
                         + ", ".join(repr(b) for b in KNOWN))
    if backend == "cpu" and _core is None:
        raise RuntimeError(f"backend 'cpu' is not available: elman._core failed to import "
                           f"({_core_error})")
    return backend


def core():
    """The compiled module, or a RuntimeError saying why it is missing."""
    if _core is None:
        raise RuntimeError(f"elman._core failed to import ({_core_error})")
    return _core
