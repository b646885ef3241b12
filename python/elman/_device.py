"""Recognizes CUDA device arrays without importing any array library: objects exposing
``__cuda_array_interface__`` (torch, CuPy, Numba) or a CUDA ``__dlpack__`` (JAX, ...).
Imports numpy only; the compiled module is passed in where a pointer must be read."""

import numpy as np

DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged
_DLPACK_FLOAT, _DLPACK_INT, _DLPACK_UINT = 2, 0, 1


def _cai(a, name):
    """The ``__cuda_array_interface__`` dict of ``a``, or None when it has none."""
    if a is None or isinstance(a, np.ndarray):
        return None
    try:
        return a.__cuda_array_interface__
    except AttributeError:  # also what torch raises for a CPU tensor
        return None
    except Exception as exc:  # e.g. a torch tensor that requires grad
        raise TypeError(f"{name} cannot be read as a CUDA array: {exc} "
                        "(for a torch tensor that requires grad, pass .detach())") from None


def _dlpack_device(a):
    if a is None or isinstance(a, np.ndarray) or not hasattr(a, "__dlpack_device__"):
        return None
    try:
        return tuple(int(v) for v in a.__dlpack_device__())
    except Exception:
        return None


def is_device_array(a, name="array"):
    """True for a CUDA device array (by either protocol); False for NumPy and host objects."""
    if _cai(a, name) is not None:
        return True
    dev = _dlpack_device(a)
    return dev is not None and dev[0] in DLPACK_CUDA


class DeviceView:
    """A device array as the kernels see it: pointer, shape, strides in elements, dtype, device.

    ``owner`` keeps the array (or its DLPack capsule) alive while the view is in use."""

    def __init__(self, ptr, shape, strides, dtype, device, stream, readonly, owner):
        self.ptr, self.shape, self.strides = int(ptr), tuple(shape), tuple(strides)
        self.dtype, self.device, self.stream = np.dtype(dtype), device, stream
        self.readonly, self.owner = readonly, owner

    @property
    def ndim(self):
        return len(self.shape)

    def c_contiguous(self):
        expect = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n > 1 and s != expect:
                return False
            expect *= n
        return True


def _dlpack_dtype(code, bits, lanes, name):
    if lanes == 1:
        kind = {_DLPACK_FLOAT: "f", _DLPACK_INT: "i", _DLPACK_UINT: "u"}.get(code)
        if kind is not None and bits % 8 == 0:
            return np.dtype(f"{kind}{bits // 8}")
    raise TypeError(f"{name} has a DLPack dtype elman does not read (code {code}, bits {bits}, "
                    f"lanes {lanes})")


def describe(a, name, cuda, stream):
    """A :class:`DeviceView` of the device array ``a`` (``cuda``: the compiled module)."""
    d = _cai(a, name)
    if d is not None:
        shape = tuple(int(n) for n in d["shape"])
        dtype = np.dtype(d["typestr"])
        ptr, readonly = d["data"]
        if d.get("strides") is None:
            strides, expect = [], 1
            for n in reversed(shape):
                strides.insert(0, expect)
                expect *= n
        else:
            if any(s % dtype.itemsize for s in d["strides"]):
                raise ValueError(f"{name} has strides that are not a multiple of its item size")
            strides = [s // dtype.itemsize for s in d["strides"]]
        device = cuda.pointer_device(ptr) if ptr else None
        if ptr and device < 0:
            raise ValueError(f"{name}: its __cuda_array_interface__ pointer is not CUDA device "
                             "memory")
        return DeviceView(ptr, shape, strides, dtype, device, d.get("stream"), bool(readonly), a)
    dev = _dlpack_device(a)
    if dev is None or dev[0] not in DLPACK_CUDA:
        raise TypeError(f"{name} is not a CUDA device array")
    # The DLPack stream protocol: 1 is the legacy default stream, which elman's stream 0 is.
    cap = a.__dlpack__(stream=stream or 1)
    info = cuda.dlpack_info(cap)
    dtype = _dlpack_dtype(*info["dtype"], name)
    return DeviceView(info["ptr"], info["shape"], info["strides"], dtype, info["device"][1], None,
                      False, (a, cap))


def stream_handle(stream):
    """A ``cudaStream_t`` as an int from None (the legacy default stream), an int, or a stream
    object of torch (``.cuda_stream``) or CuPy (``.ptr``)."""
    if stream is None:
        return 0
    if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
        return int(stream)
    for attr in ("cuda_stream", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"stream must be None, an int (a cudaStream_t) or a torch / CuPy stream, "
                    f"got {type(stream).__name__}")
