"""The cuda backend (elman._cuda): takes every array on the host (NumPy: copied to the GPU and
back, the call waits) or every array on one CUDA device (torch, CuPy, anything with
``__cuda_array_interface__`` or ``__dlpack__``: used in place, queued on ``stream``), allocates
the results, and calls elman._cuda, whose boundary (the one elman._core uses) checks every
argument. Mixing host and device arrays is a TypeError naming both. ``rnn_forward`` /
``rnn_backward`` here are the functional floor's full contract for this backend (device results
are allocated with the caller's array library); :class:`CudaBackend` is the backend object the
layers use."""

import sys

import numpy as np

from .. import _device
from . import OneAfterAnother, empty_batch_backward, host_matmul

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _compiled():
    """elman._cuda (present: this backend is resolved only when it imported and found a GPU)."""
    from .. import _cuda
    return _cuda


class _OnDevice:
    """``with _OnDevice(cuda, device):`` makes ``device`` current and restores the previous
    current device on exit (elman never leaves the process's current device changed)."""

    def __init__(self, cuda, device):
        self.cuda, self.device = cuda, device

    def __enter__(self):
        self.saved = self.cuda.get_device()
        if self.device != self.saved:
            self.cuda.set_device(self.device)

    def __exit__(self, *exc):
        if self.device != self.saved:
            self.cuda.set_device(self.saved)


class DeviceArray:
    """Device memory owned by elman, for results when the inputs came from a library elman
    cannot allocate with. Readable by any consumer of ``__cuda_array_interface__`` (whose
    "stream" names the stream that writes it); ``get()`` copies it to a NumPy array after that
    stream's work."""

    def __init__(self, shape, dtype, device, zero=False, stream=0):
        cuda = _compiled()
        self.shape, self.dtype, self.device = tuple(shape), np.dtype(dtype), device
        self.stream = stream
        with _OnDevice(cuda, device):
            self._buf = cuda.Buffer(max(1, int(np.prod(self.shape)) * self.dtype.itemsize))
            if zero:  # on the stream that will write it, before that work
                self._buf.upload(np.zeros(self.shape, self.dtype), stream)
                cuda.synchronize(stream)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self._buf.ptr, False),
                "strides": None, "version": 3, "stream": self.stream or None}

    def get(self):
        cuda = _compiled()
        host = np.empty(self.shape, self.dtype)
        with _OnDevice(cuda, self.device):
            self._buf.download(host, self.stream)
            cuda.synchronize(self.stream)
        return host


def _library(a):
    """"torch" or "cupy" for an array of that library (already imported), else None."""
    lib = type(a).__module__.split(".")[0]
    return lib if lib in ("torch", "cupy") and lib in sys.modules else None


def _library_device(lib, a):
    """The device index of a torch / CuPy array."""
    return a.device.index if lib == "torch" else a.device.id


def _library_stream(lib, device):
    """The array library's current stream on ``device`` (a cudaStream_t as an int): where it
    queued the work that produced its arrays, and where it queues its own allocations' fills."""
    if lib == "torch":
        return int(sys.modules["torch"].cuda.current_stream(device).cuda_stream)
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(device):
        return int(cupy.cuda.get_current_stream().ptr)


def _record_stream(lib, arrays, stream):
    """Tells torch's caching allocator that ``stream`` uses these tensors, so that their memory
    is not given to another tensor before the work queued there is done (CuPy's pool orders
    frees on the current stream, which the call waited for; nothing to do)."""
    if lib != "torch":
        return
    torch = sys.modules["torch"]
    ext = torch.cuda.ExternalStream(stream)
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a.record_stream(ext)


def _empty_like(like, shape, dtype, device, zero=False, stream=0):
    """A new device array on ``device`` of the same library as ``like`` (torch, CuPy) when
    that library is already imported, else a :class:`DeviceArray` written on ``stream``. The
    library fills its zeros on its current stream, which the call waits for (_Operands)."""
    lib = _library(like)
    if lib == "torch":
        torch = sys.modules["torch"]
        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=getattr(torch, np.dtype(dtype).name), device=f"cuda:{device}")
    if lib == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device):
            return (cupy.zeros if zero else cupy.empty)(shape, dtype)
    return DeviceArray(shape, dtype, device, zero, stream)


class _Operands:
    """The array arguments of one call, all on the host or all on one CUDA device, and the
    results it writes: handed to elman._cuda as device descriptions (DeviceView), host arrays
    through device copies (copied back by :meth:`finish`)."""

    def __init__(self, arrays, stream):
        present = {k: v for k, v in arrays.items() if v is not None}
        on_device = {k: _device.is_device_array(v, k) for k, v in present.items()}
        dev = [k for k, d in on_device.items() if d]
        host = [k for k, d in on_device.items() if not d]
        if dev and host:
            raise TypeError(f"{host[0]} is a host array but {dev[0]} is a CUDA device array; the "
                            "cuda backend takes every array on the host (copied to the GPU and "
                            "back) or every array on one CUDA device")
        self.on_device = bool(dev)
        self.given = present
        # The stream: the caller's; by default, for torch tensors and CuPy arrays, their
        # library's current stream (where their producers ran), else the legacy default stream.
        self.lib, self.lib_stream, self.made = None, None, []
        if self.on_device:
            self.like = present[dev[0]]  # results come from the same library
            self.lib = _library(self.like)
            if self.lib is not None:
                self.lib_stream = _library_stream(self.lib, _library_device(self.lib, self.like))
        if stream is None and self.lib_stream is not None:
            self.stream = self.lib_stream
        else:
            self.stream = _device.stream_handle(stream)
        if self.on_device:
            cuda = _compiled()
            self.arrays = {k: _device.describe(v, k, cuda, self.stream) for k, v in present.items()}
            self.device = next((v.device for v in self.arrays.values() if v.device is not None), 0)
        else:
            self.arrays = {k: _host(v) for k, v in present.items()}
            self.staging = _Staging(self.stream)

    def sizes(self):
        """(dtype, T, B, I, H) of the results, from x and weight_hh; None when these cannot be
        those of a valid call (the results are then not allocated, and elman._cuda refuses the
        call with its message)."""
        x, w = self.arrays.get("x"), self.arrays.get("weight_hh")
        if x is None or w is None or x.ndim != 3 or w.ndim != 2 or x.dtype not in FLOAT_DTYPES:
            return None
        return (x.dtype, *x.shape, w.shape[0])

    def new(self, shape, dtype, zero=False):
        """A result array: NumPy on the host, else of the inputs' library on their device."""
        if not self.on_device:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        a = _empty_like(self.like, shape, dtype, self.device, zero, self.stream)
        self.made.append(a)
        return a

    def input(self, name):
        """The argument as elman._cuda takes it (a DeviceView), or None."""
        a = self.arrays.get(name)
        return a if a is None or self.on_device else self.staging.put(a)

    def output(self, name, a, initial=False):
        """The result array ``a`` as elman._cuda writes it; ``initial``: its contents are read
        too (accumulated into)."""
        if a is None:
            return None
        if self.on_device:
            if self.given.get(name) is a:  # the caller's array, described above
                return self.arrays[name]
            return _device.describe(a, name, _compiled(), self.stream)
        return self.staging.out(a, name, initial)

    def launch(self, fn, **kwargs):
        """Calls elman._cuda's ``fn`` on this call's stream (it makes the arrays' device current
        and restores the previous one), after the work of the streams the arrays' producers
        named and of their library's current stream (the producers, and the zero fills of the
        results allocated here), and waits for the copies back (host arrays). torch tensors
        used on a stream other than torch's current one are recorded on it."""
        if self.on_device:
            cuda = _compiled()
            waits = {v.stream for v in self.arrays.values() if isinstance(v.stream, int)}
            waits.add(self.lib_stream)
            for other in sorted(w for w in waits if w is not None and w != self.stream):
                cuda.stream_wait(self.stream, other)
        fn(**kwargs, stream=self.stream)
        if not self.on_device:
            self.staging.finish()
        elif self.lib_stream is not None and self.stream != self.lib_stream:
            _record_stream(self.lib, [*self.given.values(), *self.made], self.stream)


def _host(a):
    """A host argument as an ndarray in native byte order (values unchanged)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _c_strides(shape):
    """Strides in elements of a C-contiguous array of ``shape``."""
    strides, n = [], 1
    for d in reversed(shape):
        strides.insert(0, n)
        n *= d
    return strides


class _Staging:
    """Host mode: device copies of host arrays as DeviceViews, and the copies back."""

    def __init__(self, stream):
        self.cuda, self.stream, self.back = _compiled(), stream, []

    def _view(self, buf, a, readonly, keep):
        return _device.DeviceView(buf.ptr, a.shape, _c_strides(a.shape), a.dtype, None, None,
                                  readonly, (buf, keep))

    def put(self, a):
        a = np.ascontiguousarray(a)
        buf = self.cuda.Buffer(max(1, a.nbytes))
        buf.upload(a, self.stream)
        return self._view(buf, a, True, a)

    def out(self, target, name, initial):
        """Device memory for ``target``, a host array written in place after the call."""
        if not isinstance(target, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(target).__name__}")
        tmp = np.empty(target.shape, target.dtype)
        buf = self.cuda.Buffer(max(1, tmp.nbytes))
        if initial:
            buf.upload(np.ascontiguousarray(target), self.stream)
        self.back.append((buf, tmp, target))
        return self._view(buf, tmp, not target.flags.writeable, tmp)

    def finish(self):
        for buf, tmp, _ in self.back:
            buf.download(tmp, self.stream)
        self.cuda.synchronize(self.stream)
        for _, tmp, target in self.back:
            target[...] = tmp


def _host_lengths(lengths):
    """lengths as the int64 host array elman._cuda takes (it checks the shape and the range and
    copies them to the device itself), or None."""
    if lengths is None:
        return None
    if _device.is_device_array(lengths, "lengths"):
        raise TypeError("lengths must be on the host (a list or NumPy array of ints, as torch's "
                        "pack_padded_sequence requires), got a CUDA device array")
    arr = np.asarray(lengths)
    if arr.dtype.kind in "iu" or arr.size == 0:  # [] for an empty batch: NumPy calls it float
        arr = arr.astype(np.int64)
    return arr


def rnn_forward(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, lengths=None,
                nonlinearity="tanh", reverse=False, *, out=None, stream=None, tier=0):
    """functional.rnn_forward on the cuda backend (``tier``: tests force a recurrence tier)."""
    ops = _Operands({"x": x, "weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih,
                     "bias_hh": bias_hh, "h0": h0, "out": out}, stream)
    sizes = ops.sizes()
    h_n = None
    if sizes is not None:
        dtype, T, B, I, H = sizes
        out = out if out is not None else ops.new((T, B, H), dtype)
        h_n = ops.new((B, H), dtype)
    ops.launch(_compiled().rnn_forward, x=ops.input("x"), W_ih=ops.input("weight_ih"),
               W_hh=ops.input("weight_hh"), b_ih=ops.input("bias_ih"),
               b_hh=ops.input("bias_hh"), h0=ops.input("h0"), lengths=_host_lengths(lengths),
               nonlinearity=nonlinearity, reverse=bool(reverse), out=ops.output("out", out),
               h_n=ops.output("h_n", h_n), tier=tier)
    return out, h_n


_GRAD_NAMES = ("grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")


def rnn_backward(x, weight_ih, weight_hh, out, h0=None, grad_out=None, grad_h_n=None,
                 lengths=None, nonlinearity="tanh", reverse=False, bias=True, *, grads=None,
                 grad_x=None, accumulate_grad_x=False, stream=None, tier=0):
    """functional.rnn_backward on the cuda backend; returns the seven fields of RNNGrads."""
    grads = (None,) * 4 if grads is None else tuple(grads)
    if len(grads) != 4:
        raise ValueError(f"grads must be (dW_ih, dW_hh, db_ih, db_hh), got {len(grads)} arrays")
    ops = _Operands({"x": x, "weight_ih": weight_ih, "weight_hh": weight_hh, "out": out, "h0": h0,
                     "grad_out": grad_out, "grad_h_n": grad_h_n, "grad_x": grad_x,
                     **dict(zip(_GRAD_NAMES, grads))}, stream)
    accumulate_grad_x = bool(accumulate_grad_x) and grad_x is not None
    dW, gx, gh0, norms, empty = list(grads), grad_x, None, None, False
    sizes = ops.sizes()
    if sizes is not None:
        dtype, T, B, I, H = sizes
        shapes = ((H, I), (H, H), (H,), (H,))
        dW = [g if g is not None else (ops.new(s, dtype, zero=True) if i < 2 or bias else None)
              for i, (g, s) in enumerate(zip(grads, shapes))]
        gx = grad_x if grad_x is not None else ops.new((T, B, I), dtype)
        gh0 = ops.new((B, H), dtype)
        empty = B == 0  # no step runs: the norms stay the zeros they start as
        norms = ops.new((T,), np.float64, zero=empty)
    dWv = [ops.output(n, g, initial=True) for n, g in zip(_GRAD_NAMES, dW)]
    ops.launch(_compiled().rnn_backward, x=ops.input("x"), W_ih=ops.input("weight_ih"),
               W_hh=ops.input("weight_hh"), h0=ops.input("h0"), out=ops.input("out"),
               grad_out=ops.input("grad_out"), grad_h_n=ops.input("grad_h_n"),
               lengths=_host_lengths(lengths), nonlinearity=nonlinearity, reverse=bool(reverse),
               grad_x=ops.output("grad_x", gx, initial=accumulate_grad_x),
               accumulate_grad_x=accumulate_grad_x, grad_h0=ops.output("grad_h0", gh0),
               dW_ih=dWv[0], dW_hh=dWv[1], db_ih=dWv[2], db_hh=dWv[3],
               grad_norms=ops.output("grad_norms", norms, initial=empty), tier=tier)
    return (gx, gh0, *dW, norms)


class CudaBackend(OneAfterAnother):
    """The backend object for host (NumPy) arrays on the GPU: each call copies its arrays to the
    device and the results back (see ``elman._backends`` for the interface)."""

    name = "cuda"
    cell_step_fast = False  # cell_step can return a result (else always None)
    device = True

    rnn_forward = staticmethod(rnn_forward)    # the functional floor's full contract
    rnn_backward = staticmethod(rnn_backward)

    def forward(self, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                reverse, out, h_n):
        if out.shape[1] == 0:
            return
        h_n[...] = rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                               nonlinearity, reverse, out=out)[1]

    def backward(self, x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                 nonlinearity, reverse, grad_x, accumulate_grad_x, grad_h0, grads, grad_norms):
        if out.shape[1] == 0:
            empty_batch_backward(grad_x, accumulate_grad_x, grad_norms)
            return
        r = rnn_backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                         nonlinearity, reverse, grads[2] is not None, grads=grads,
                         grad_x=grad_x, accumulate_grad_x=accumulate_grad_x)
        if grad_h0 is not None:
            grad_h0[...] = r[1]
        if grad_norms is not None:
            grad_norms[...] = r[6]

    def cell_step(self, x, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        return None

    def matmul(self, a, b, out, trans_a, trans_b, beta):
        host_matmul(a, b, out, trans_a, trans_b, beta)
