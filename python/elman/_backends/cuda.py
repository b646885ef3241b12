"""The cuda backend (elman._cuda): takes every array on the host (NumPy: copied to the GPU and
back, the call waits) or every array on one CUDA device (torch, CuPy, anything with
``__cuda_array_interface__`` or ``__dlpack__``: used in place, queued on ``stream``), validates
with the ground floor's messages, and calls elman._cuda. Mixing host and device arrays is a
TypeError naming both. ``rnn_forward`` / ``rnn_backward`` here are the functional floor's full
contract for this backend (device results are allocated with the caller's array library);
:class:`CudaBackend` is the backend object the layers use."""

import sys

import numpy as np

from .. import _device
from . import empty_batch_backward, host_matmul
from .._checks import as_array, as_lengths, check_nonlinearity, check_shape

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _compiled():
    """elman._cuda (present: this backend is resolved only when it imported and found a GPU)."""
    from .. import _cuda
    return _cuda


class DeviceArray:
    """Device memory owned by elman, for results when the inputs came from a library elman
    cannot allocate with. Readable by any consumer of ``__cuda_array_interface__``;
    ``get()`` copies it to a NumPy array."""

    def __init__(self, shape, dtype, device, zero=False):
        cuda = _compiled()
        self.shape, self.dtype, self.device = tuple(shape), np.dtype(dtype), device
        cuda.set_device(device)
        self._buf = cuda.Buffer(max(1, int(np.prod(self.shape)) * self.dtype.itemsize))
        if zero:
            self._buf.upload(np.zeros(self.shape, self.dtype), 0)
            cuda.synchronize(0)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self._buf.ptr, False),
                "strides": None, "version": 3, "stream": None}

    def get(self):
        host = np.empty(self.shape, self.dtype)
        self._buf.download(host, 0)
        _compiled().synchronize(0)
        return host


def _empty_like(like, shape, dtype, device, zero=False):
    """A new device array on ``device`` of the same library as ``like`` (torch, CuPy) when
    that library is already imported, else a :class:`DeviceArray`."""
    lib = type(like).__module__.split(".")[0]
    if lib == "torch" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        make = torch.zeros if zero else torch.empty
        return make(shape, dtype=getattr(torch, np.dtype(dtype).name), device=f"cuda:{device}")
    if lib == "cupy" and "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device):
            return (cupy.zeros if zero else cupy.empty)(shape, dtype)
    return DeviceArray(shape, dtype, device, zero)


class _Operands:
    """The array arguments of one call: all host or all device, described uniformly."""

    def __init__(self, arrays, stream):
        self.stream = _device.stream_handle(stream)
        present = {k: v for k, v in arrays.items() if v is not None}
        on_device = {k: _device.is_device_array(v, k) for k, v in present.items()}
        dev = [k for k, d in on_device.items() if d]
        host = [k for k, d in on_device.items() if not d]
        if dev and host:
            raise TypeError(f"{host[0]} is a host array but {dev[0]} is a CUDA device array; the "
                            "cuda backend takes every array on the host (copied to the GPU and "
                            "back) or every array on one CUDA device")
        self.on_device = bool(dev)
        self.objects = present
        self.views = {}
        if self.on_device:
            cuda = _compiled()
            for k in dev:
                self.views[k] = _device.describe(present[k], k, cuda, self.stream)
            devices = {v.device for v in self.views.values() if v.device is not None}
            if len(devices) > 1:
                names = {v.device: k for k, v in self.views.items()}
                a, b = sorted(devices)[:2]
                raise ValueError(f"{names[b]} is on cuda:{b} but {names[a]} is on cuda:{a}; "
                                 "every array must be on one device")
            self.device = devices.pop() if devices else 0
        else:
            self.device = 0

    def get(self, name, dtype, shape=None):
        """The argument as a host ndarray or a DeviceView of exactly ``dtype`` and ``shape``."""
        if name not in self.objects:
            return None
        if not self.on_device:
            a = as_array(self.objects[name], name, dtype)
        else:
            a = self.views[name]
            if a.dtype != dtype:
                raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
        if shape is not None:
            check_shape(a, name, shape)
        return a


def _dtype_and_size(ops, nonlinearity):
    check_nonlinearity(nonlinearity)
    w = ops.objects.get("weight_hh")
    if w is None:
        raise TypeError("weight_hh must be an array, got None")
    dtype = (ops.views["weight_hh"] if ops.on_device else np.asarray(w)).dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight_hh must have dtype float32 or float64, got {dtype}")
    whh = ops.get("weight_hh", dtype)
    if whh.ndim != 2 or whh.shape[0] != whh.shape[1]:
        raise ValueError(f"weight_hh must have shape (H, H), got {whh.shape}")
    x = ops.get("x", dtype)
    if x is None:
        raise TypeError("x must be an array, got None")
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got {x.ndim}-D with shape {x.shape}")
    T, B, I = x.shape
    if T == 0:
        raise ValueError("Expected sequence length to be larger than 0 in RNN, got x with T = 0")
    return dtype, T, B, I, whh.shape[0]


def _rows_stride(view, name):
    """Row stride (elements) of a (T, B, n) device view whose rows are evenly strided."""
    T, B, n = view.shape
    st = view.strides
    if n > 1 and st[2] != 1:
        raise ValueError(f"{name} must have a contiguous last dimension on the device")
    row = st[1] if B > 1 else (st[0] if T > 1 else n)
    if row < n or (T > 1 and st[0] != B * row):
        raise ValueError(f"{name} must have evenly strided rows with a contiguous last dimension")
    return row


def _device_input(view, name):
    if view is None:
        return 0
    if not view.c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the device (e.g. torch's .contiguous() "
                         "or cupy.ascontiguousarray)")
    return view.ptr


def _device_output(view, name):
    if view.readonly:
        raise ValueError(f"{name} must be writable")
    return _device_input(view, name)


class _Staging:
    """Host mode: device copies of host arrays, and the copies back after the call."""

    def __init__(self, stream):
        self.cuda, self.stream, self.keep, self.back = _compiled(), stream, [], []

    def put(self, a):
        if a is None:
            return 0
        a = np.ascontiguousarray(a)
        buf = self.cuda.Buffer(max(1, a.nbytes))
        buf.upload(a, self.stream)
        self.keep.append((buf, a))
        return buf.ptr

    def out(self, target, initial=None):
        """Device memory for ``target`` (a host array written in place after the call)."""
        tmp = np.empty(target.shape, target.dtype)
        buf = self.cuda.Buffer(max(1, tmp.nbytes))
        if initial is not None:
            buf.upload(np.ascontiguousarray(initial), self.stream)
        self.keep.append((buf, tmp))
        self.back.append((buf, tmp, target))
        return buf.ptr

    def finish(self):
        for buf, tmp, _ in self.back:
            buf.download(tmp, self.stream)
        self.cuda.synchronize(self.stream)
        for _, tmp, target in self.back:
            target[...] = tmp


def _lengths_ptr(lengths, T, B, ops, keep):
    if lengths is not None and _device.is_device_array(lengths, "lengths"):
        raise TypeError("lengths must be on the host (a list or NumPy array of ints, as torch's "
                        "pack_padded_sequence requires), got a CUDA device array")
    lengths = as_lengths(lengths, T, B)
    if lengths is None:
        return 0, None
    cuda = _compiled()
    buf = cuda.Buffer(lengths.nbytes)
    buf.upload(lengths, ops.stream)
    keep.append((buf, lengths))
    return buf.ptr, lengths


def _sync_producers(ops):
    """Work queued on our stream waits for the streams the arrays' producers named."""
    cuda = _compiled()
    for v in ops.views.values():
        if isinstance(v.stream, int) and v.stream != ops.stream:
            cuda.stream_wait(ops.stream, v.stream)


def rnn_forward(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, lengths=None,
                nonlinearity="tanh", reverse=False, *, out=None, stream=None, tier=0):
    """functional.rnn_forward on the cuda backend (``tier``: tests force a recurrence tier)."""
    ops = _Operands({"x": x, "weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih,
                     "bias_hh": bias_hh, "h0": h0, "out": out}, stream)
    dtype, T, B, I, H = _dtype_and_size(ops, nonlinearity)
    xa = ops.get("x", dtype)
    w_ih = ops.get("weight_ih", dtype, (H, I))
    if w_ih is None:
        raise TypeError("weight_ih must be an array, got None")
    b_ih, b_hh = ops.get("bias_ih", dtype, (H,)), ops.get("bias_hh", dtype, (H,))
    h0a = ops.get("h0", dtype, (B, H))
    outa = ops.get("out", dtype, (T, B, H))
    cuda = _compiled()
    keep = []
    if not ops.on_device:
        if out is None:
            out = np.empty((T, B, H), dtype)
        h_n = np.empty((B, H), dtype)
        if B == 0:
            return out, h_n
        len_ptr, _ = _lengths_ptr(lengths, T, B, ops, keep)
        s = _Staging(ops.stream)
        ptrs = [s.put(a) for a in (xa, w_ih, ops.get("weight_hh", dtype), b_ih, b_hh, h0a)]
        cuda.rnn_forward(dtype.name, T, B, I, H, nonlinearity, bool(reverse), *ptrs, len_ptr,
                         s.out(out), H, s.out(h_n), 0, ops.stream, tier)
        s.finish()
        return out, h_n

    dev = ops.device
    if out is None:
        out = _empty_like(x, (T, B, H), dtype, dev)
        outa = _device.describe(out, "out", cuda, ops.stream)
    h_n = _empty_like(x, (B, H), dtype, dev)
    if B == 0:
        return out, h_n
    hna = _device.describe(h_n, "h_n", cuda, ops.stream)
    if outa.readonly:
        raise ValueError("out must be writable")
    len_ptr, host_lengths = _lengths_ptr(lengths, T, B, ops, keep)
    _sync_producers(ops)
    cuda.rnn_forward(dtype.name, T, B, I, H, nonlinearity, bool(reverse),
                     _device_input(xa, "x"), _device_input(w_ih, "weight_ih"),
                     _device_input(ops.get("weight_hh", dtype), "weight_hh"),
                     _device_input(b_ih, "bias_ih"), _device_input(b_hh, "bias_hh"),
                     _device_input(h0a, "h0"), len_ptr, outa.ptr, _rows_stride(outa, "out"),
                     _device_output(hna, "h_n"), dev, ops.stream, tier)
    if host_lengths is not None:  # the staged lengths must outlive the queued kernels
        cuda.synchronize(ops.stream)
    return out, h_n


def rnn_backward(x, weight_ih, weight_hh, out, h0=None, grad_out=None, grad_h_n=None,
                 lengths=None, nonlinearity="tanh", reverse=False, bias=True, *, grads=None,
                 grad_x=None, accumulate_grad_x=False, stream=None, tier=0):
    """functional.rnn_backward on the cuda backend; returns the seven fields of RNNGrads."""
    grads = (None,) * 4 if grads is None else tuple(grads)
    if len(grads) != 4:
        raise ValueError(f"grads must be (dW_ih, dW_hh, db_ih, db_hh), got {len(grads)} arrays")
    names = ("grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")
    ops = _Operands({"x": x, "weight_ih": weight_ih, "weight_hh": weight_hh, "out": out, "h0": h0,
                     "grad_out": grad_out, "grad_h_n": grad_h_n, "grad_x": grad_x,
                     **dict(zip(names, grads))}, stream)
    dtype, T, B, I, H = _dtype_and_size(ops, nonlinearity)
    xa = ops.get("x", dtype)
    w_ih = ops.get("weight_ih", dtype, (H, I))
    w_hh = ops.get("weight_hh", dtype)
    if ops.get("out", dtype) is None:
        raise TypeError("out must be an array, got None")
    outa = ops.get("out", dtype, (T, B, H))
    h0a = ops.get("h0", dtype, (B, H))
    goa = ops.get("grad_out", dtype, (T, B, H))
    ghna = ops.get("grad_h_n", dtype, (B, H))
    shapes = ((H, I), (H, H), (H,), (H,))
    ga = [ops.get(n, dtype, s) for n, s in zip(names, shapes)]
    gxa = ops.get("grad_x", dtype, (T, B, I))
    if grad_x is None:
        accumulate_grad_x = False
    cuda = _compiled()
    keep = []

    if not ops.on_device:
        dW = [g if g is not None else (np.zeros(s, dtype) if i < 2 or bias else None)
              for i, (g, s) in enumerate(zip(grads, shapes))]
        gx = grad_x if grad_x is not None else np.zeros((T, B, I), dtype)
        gh0 = np.zeros((B, H), dtype)
        norms = np.zeros(T)
        if B == 0:
            return (gx, gh0, *dW, norms)
        len_ptr, _ = _lengths_ptr(lengths, T, B, ops, keep)
        s = _Staging(ops.stream)
        ins = [s.put(a) for a in (xa, w_ih, w_hh, h0a, outa)]
        go_ptr, ghn_ptr = s.put(goa), s.put(ghna)
        gx_ptr = s.out(gx, initial=gx if accumulate_grad_x else None)
        dW_ptrs = [s.out(g, initial=g) if g is not None else 0 for g in dW]
        cuda.rnn_backward(dtype.name, T, B, I, H, nonlinearity, bool(reverse), *ins, H, go_ptr, H,
                          ghn_ptr, len_ptr, gx_ptr, bool(accumulate_grad_x), s.out(gh0),
                          *dW_ptrs, s.out(norms), 0, ops.stream, tier)
        s.finish()
        return (gx, gh0, *dW, norms)

    dev = ops.device

    def new(shape, zero=False):
        return _empty_like(x, shape, dtype, dev, zero)

    dW = [g if g is not None else (new(s, True) if i < 2 or bias else None)
          for i, (g, s) in enumerate(zip(grads, shapes))]
    gx = grad_x if grad_x is not None else new((T, B, I))
    gh0 = new((B, H))
    norms = _empty_like(x, (T,), np.float64, dev)
    if B == 0:
        return (gx, gh0, *dW, norms)

    def view(a, n):
        return None if a is None else _device.describe(a, n, cuda, ops.stream)

    dWv = [g if g is not None else view(d, n) for g, d, n in zip(ga, dW, names)]
    gxv = gxa if gxa is not None else view(gx, "grad_x")
    len_ptr, host_lengths = _lengths_ptr(lengths, T, B, ops, keep)
    _sync_producers(ops)
    cuda.rnn_backward(dtype.name, T, B, I, H, nonlinearity, bool(reverse),
                      _device_input(xa, "x"), _device_input(w_ih, "weight_ih"),
                      _device_input(w_hh, "weight_hh"), _device_input(h0a, "h0"),
                      outa.ptr, _rows_stride(outa, "out"),
                      goa.ptr if goa is not None else 0,
                      _rows_stride(goa, "grad_out") if goa is not None else H,
                      _device_input(ghna, "grad_h_n"), len_ptr,
                      _device_output(gxv, "grad_x"), bool(accumulate_grad_x),
                      _device_output(view(gh0, "grad_h0"), "grad_h0"),
                      *[_device_output(v, n) if v is not None else 0 for v, n in zip(dWv, names)],
                      _device_output(view(norms, "grad_norms"), "grad_norms"), dev, ops.stream,
                      tier)
    if host_lengths is not None:
        cuda.synchronize(ops.stream)
    return (gx, gh0, *dW, norms)


class CudaBackend:
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
