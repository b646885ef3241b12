"""The one place that resolves ``backend=`` ("auto" | "cpu" | "cuda" | "numpy") to a backend
object (elman._backends) and holds the compiled modules. Nothing here imports anything above it.

A compiled module that failed to import is reported when it is used (a RuntimeError naming the
import error); ``"auto"`` never switches to the NumPy reference, which is the oracle the kernels
are tested against, not a fallback."""

import warnings

import numpy as np

from . import _device

try:
    from . import _core  # type: ignore[attr-defined]  # compiled; no stub
    _core_error = None
except ImportError as exc:  # a broken install: reported at use
    _core = None
    _core_error = exc

try:  # built only with ELMAN_CUDA=ON (or AUTO where nvcc exists); never required
    from . import _cuda  # type: ignore[attr-defined]  # compiled; no stub
    _cuda_error = None
except ImportError as exc:
    import importlib.util
    _cuda = None
    if importlib.util.find_spec(f"{__package__}._cuda") is None:
        _cuda_error = "elman was built without CUDA support (build it with ELMAN_CUDA=ON)"
    else:
        _cuda_error = f"elman._cuda failed to import ({exc})"

KNOWN = ("cpu", "cuda", "numpy")
ISA_LEVELS = ("baseline", "avx2", "avx512")
_cuda_state = None


def cuda_status():
    """``(usable, reason)``: whether the cuda backend can run here, and why (not)."""
    global _cuda_state
    if _cuda_state is None:
        if _cuda is None:
            _cuda_state = (False, _cuda_error)
        else:
            n, why = _cuda.status()  # the first CUDA call: loads the driver, if there is one
            if n == 0 and _cuda.driver_version() == 0:
                why = f"no NVIDIA GPU driver found; {why}"
            _cuda_state = (n > 0, f"{n} CUDA device(s)" if n else f"no usable CUDA device ({why})")
    return _cuda_state


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
    """The backends usable in this process, in the order ``"auto"`` prefers for host arrays
    (``"auto"`` picks cuda for CUDA device arrays)."""
    return [b for b in KNOWN
            if (b != "cpu" or _core is not None) and (b != "cuda" or cuda_status()[0])]


def resolve(backend, *arrays, stream=None):
    """The backend object for ``None`` / ``"auto"`` / a backend name / a backend object.
    ``arrays``: the call's inputs, so that "auto" runs CUDA device arrays on the cuda backend."""
    if not isinstance(backend, str) and backend is not None and hasattr(backend, "forward"):
        name = backend.name  # already resolved (a layer's own backend object)
    else:
        name = resolve_name(backend, *arrays, stream=stream)
    obj = _objects.get(name)
    if obj is None:
        obj = _objects[name] = _make(name)
    return obj


_objects: dict = {}  # backend name -> its object, built on first use


def _make(name):
    if name == "cpu":
        from ._backends.cpu import CpuBackend
        return CpuBackend(core())
    if name == "cuda":
        from ._backends.cuda import CudaBackend
        return CudaBackend()
    from ._backends.numpy import NumpyBackend
    return NumpyBackend()


def resolve_name(backend, *arrays, stream=None):
    """Map ``None`` / ``"auto"`` / a backend name to an available backend name."""
    on_device = False
    for a in arrays:  # NumPy arrays and None, the common case, without asking the protocols
        if a is not None and type(a) is not np.ndarray and _device.is_device_array(a):
            on_device = True
            break
    if backend is None or backend == "auto":
        if on_device:
            if not cuda_status()[0]:
                raise RuntimeError("the inputs are CUDA device arrays but the cuda backend is not "
                                   f"available: {cuda_status()[1]}")
            backend = "cuda"
        elif _core is not None:
            backend = "cpu"
        else:
            raise RuntimeError(f"elman's compiled kernels failed to import ({_core_error}); "
                               "reinstall elman, or pass backend='numpy' to run the (slow) "
                               "NumPy reference on purpose")
    elif not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    elif backend not in KNOWN:
        raise ValueError(f"unknown backend {backend!r}; expected one of 'auto', "
                         + ", ".join(repr(b) for b in KNOWN))
    elif backend == "cpu" and _core is None:
        raise RuntimeError(f"backend 'cpu' is not available: elman._core failed to import "
                           f"({_core_error})")
    elif backend == "cuda" and not cuda_status()[0]:
        raise RuntimeError(f"backend 'cuda' is not available: {cuda_status()[1]}")
    if on_device and backend != "cuda":
        raise TypeError(f"a CUDA device array was given to backend {backend!r}, which takes host "
                        "(NumPy) arrays; use backend='cuda' or 'auto'")
    if stream is not None and backend != "cuda":
        raise ValueError(f"stream applies to backend 'cuda' only, got backend {backend!r}")
    return backend


def core():
    """The compiled module, or a RuntimeError saying why it is missing."""
    if _core is None:
        raise RuntimeError(f"elman._core failed to import ({_core_error})")
    return _core


def cuda():
    """The compiled CUDA module, or a RuntimeError saying why it is missing."""
    if _cuda is None:
        raise RuntimeError(_cuda_error)
    return _cuda
