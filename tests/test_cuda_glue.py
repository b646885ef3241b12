"""The cuda backend's Python glue (elman._backends.cuda), checked without a GPU: a stand-in for
elman._cuda keeps "device" memory in host memory and runs each call through elman._core with
the very keyword arguments the glue passes (the two modules share one signature and one
boundary). Host mode (NumPy staged to the device and back) and device mode (arrays with
``__cuda_array_interface__`` used in place, results allocated by elman) must give the cpu
backend's results bitwise; bad arguments get the boundary's messages."""

import ctypes

import numpy as np
import pytest

from elman import functional as F
from elman._backends import cuda as glue
from elman._device import DeviceView

core = pytest.importorskip("elman._core")
try:  # where elman._cuda is built, its own boundary checks the glue's arguments too
    from elman import _cuda as built
except ImportError:
    built = None
T, B, I, H = 5, 3, 4, 6


def host_array(view):
    """The NumPy array a DeviceView describes (its memory is host memory here)."""
    if view is None or not isinstance(view, DeviceView):
        return view
    if 0 in view.shape:
        return np.empty(view.shape, view.dtype)
    span = sum((n - 1) * s for n, s in zip(view.shape, view.strides)) + 1
    raw = ctypes.cast(view.ptr, ctypes.POINTER(ctypes.c_uint8))
    flat = np.ctypeslib.as_array(raw, (span * view.dtype.itemsize,)).view(view.dtype)
    a = np.lib.stride_tricks.as_strided(flat, view.shape,
                                        [s * view.dtype.itemsize for s in view.strides])
    if view.readonly:
        a.flags.writeable = False
    return a


class HostBuffer:
    """elman._cuda.Buffer over host memory."""

    def __init__(self, nbytes):
        self._mem = np.zeros(nbytes, np.uint8)
        self.nbytes = nbytes

    @property
    def ptr(self):
        return self._mem.ctypes.data

    def upload(self, a, stream):
        self._mem[:a.nbytes] = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)

    def download(self, a, stream):
        a[...] = np.frombuffer(self._mem[:a.nbytes].tobytes(), a.dtype).reshape(a.shape)


class StandIn:
    """elman._cuda with host memory for device memory: each entry point checks and runs its
    keyword arguments through elman._core, recording them."""

    Buffer = HostBuffer

    def __init__(self):
        self.calls = []
        self.current = 0

    def set_device(self, device):
        self.calls.append(("set_device", device))
        self.current = device

    def get_device(self):
        return self.current

    def synchronize(self, stream):
        self.calls.append(("synchronize", stream))

    def stream_wait(self, waiter, other):
        self.calls.append(("stream_wait", waiter, other))

    def pointer_device(self, ptr):
        return 0

    def _run(self, name, kw):
        self.calls.append((name, dict(kw)))
        if built is not None:  # validation only: nothing is read at the pointers
            check = {"rnn_forward": "forward_args", "rnn_backward": "backward_args"}[name]
            getattr(built._testing, check)(**kw)
        stream, tier = kw.pop("stream"), kw.pop("tier")
        assert isinstance(stream, int) and tier in (0, 1, 2, 3)
        getattr(core, name)(**{k: host_array(v) for k, v in kw.items()})

    def rnn_forward(self, **kw):
        self._run("rnn_forward", kw)

    def rnn_backward(self, **kw):
        self._run("rnn_backward", kw)


class OnDevice:
    """A "device" array (``__cuda_array_interface__``) over a NumPy array's memory."""

    def __init__(self, a, readonly=False):
        self.a, self.readonly = a, readonly

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "version": 3,
                "data": (self.a.ctypes.data, self.readonly), "strides": self.a.strides}


def _last(cuda, name):
    """The keyword arguments of the stand-in's last call of ``name``."""
    return [kw for call, *kw in cuda.calls if call == name][-1][0]


@pytest.fixture
def cuda(monkeypatch):
    stand_in = StandIn()
    monkeypatch.setattr(glue, "_compiled", lambda: stand_in)
    return stand_in


def _case(dtype=np.float32, batch=B):
    rng = np.random.default_rng(1)
    s = 0.5
    return dict(x=rng.standard_normal((T, batch, I)).astype(dtype),
                weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                bias_ih=rng.uniform(-s, s, H).astype(dtype),
                bias_hh=rng.uniform(-s, s, H).astype(dtype),
                h0=rng.uniform(-1, 1, (batch, H)).astype(dtype))


def _grads(dtype, value=0.25):
    return [np.full(s, value, dtype) for s in ((H, I), (H, H), (H,), (H,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_mode_matches_the_cpu_backend(cuda, dtype):
    c = _case(dtype)
    lengths = [5, 2, 4]
    out, h_n = glue.rnn_forward(**c, lengths=lengths, nonlinearity="relu", reverse=True)
    ref_out, ref_hn = F.rnn_forward(**c, lengths=lengths, nonlinearity="relu", reverse=True,
                                    backend="cpu")
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(h_n, ref_hn)
    g_out = np.random.default_rng(2).standard_normal(out.shape).astype(dtype)
    gx = np.ones((T, B, I), dtype)
    args = (c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, None, lengths, "relu",
            True)
    got = glue.rnn_backward(*args, grads=_grads(dtype), grad_x=gx.copy(), accumulate_grad_x=True)
    ref = F.rnn_backward(*args, grads=_grads(dtype), grad_x=gx.copy(), accumulate_grad_x=True,
                         backend="cpu")
    for name, a, b in zip(ref._fields, got, ref):
        np.testing.assert_array_equal(a, b, err_msg=name)
    kw = _last(cuda, "rnn_backward")
    assert kw["lengths"].dtype == np.int64 and kw["accumulate_grad_x"] is True


def test_host_mode_writes_into_a_column_half_of_a_bidirectional_output(cuda):
    c = _case()
    both = np.full((T, B, 2 * H), 7.0, np.float32)
    out, _ = glue.rnn_forward(**c, out=both[:, :, H:])
    ref, _ = F.rnn_forward(**c, backend="cpu")
    assert out.base is both
    np.testing.assert_array_equal(both[:, :, H:], ref)
    assert (both[:, :, :H] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_mode_matches_the_cpu_backend(cuda, dtype):
    c = _case(dtype)
    dev = {k: OnDevice(v) for k, v in c.items()}
    out, h_n = glue.rnn_forward(**dev, lengths=np.array([5, 2, 4], np.int32), stream=9)
    ref_out, ref_hn = F.rnn_forward(**c, lengths=[5, 2, 4], backend="cpu")
    assert isinstance(out, glue.DeviceArray) and out.dtype == dtype
    np.testing.assert_array_equal(out.get(), ref_out)
    np.testing.assert_array_equal(h_n.get(), ref_hn)
    assert _last(cuda, "rnn_forward")["stream"] == 9
    grads = _grads(dtype)
    got = glue.rnn_backward(dev["x"], dev["weight_ih"], dev["weight_hh"], out, dev["h0"],
                            grads=[OnDevice(g) for g in grads])
    ref = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], ref_out, c["h0"],
                         grads=_grads(dtype), backend="cpu")
    for name in ("grad_x", "grad_h0", "grad_norms"):
        np.testing.assert_array_equal(got[ref._fields.index(name)].get(), getattr(ref, name))
    for g, r in zip(grads, ref[2:6]):  # accumulated in place
        np.testing.assert_array_equal(g, r)


def test_device_mode_waits_for_the_producers_stream(cuda):
    c = _case()
    dev = {k: OnDevice(v) for k, v in c.items()}

    class Produced(OnDevice):
        @property
        def __cuda_array_interface__(self):
            return {**super().__cuda_array_interface__, "stream": 1234}

    dev["x"] = Produced(c["x"])
    glue.rnn_forward(**dev, stream=5)
    assert ("stream_wait", 5, 1234) in cuda.calls


@pytest.mark.parametrize("device", [False, True])
def test_an_empty_batch_is_checked_and_gives_zero_norms(cuda, device):
    c = _case(batch=0)
    wrap = OnDevice if device else (lambda a: a)
    out, _ = glue.rnn_forward(**{k: wrap(v) for k, v in c.items()})
    r = glue.rnn_backward(wrap(c["x"]), wrap(c["weight_ih"]), wrap(c["weight_hh"]), out)
    norms = r[6].get() if device else r[6]
    np.testing.assert_array_equal(norms, np.zeros(T))
    with pytest.raises(ValueError, match=r"W_ih must have shape \(6, 4\), got \(6, 5\)"):
        glue.rnn_forward(**{**c, "weight_ih": np.zeros((H, 5), np.float32)})


@pytest.mark.parametrize("device", [False, True])
def test_bad_arguments_get_the_boundary_messages(cuda, device):
    wrap = OnDevice if device else (lambda a: a)
    c = {k: wrap(v) for k, v in _case().items()}
    cases = [
        (dict(weight_ih=wrap(np.zeros((H, 5), np.float32))), ValueError,
         r"W_ih must have shape \(6, 4\), got \(6, 5\)"),
        (dict(h0=wrap(np.zeros((B, H)))), TypeError, "h0 must have dtype float32, got float64"),
        (dict(x=wrap(np.zeros((T, B), np.float32))), ValueError, r"x must be 3-D \(T, B, I\)"),
        (dict(x=wrap(np.zeros((T, B, I), np.int64))), TypeError,
         "x must have dtype float32 or float64, got int64"),
        (dict(lengths=[5, 2, 6]), ValueError, r"lengths\[2\] = 6"),
        (dict(lengths=[5.0, 2.0, 1.0]), TypeError, "lengths must have dtype int64, got float64"),
        (dict(nonlinearity="sigmoid"), ValueError, "Unknown nonlinearity 'sigmoid'"),
        (dict(out=wrap(np.zeros((T, B, H), np.float64))), TypeError,
         "out must have dtype float32, got float64"),
    ]
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            glue.rnn_forward(**{**c, **change})
    read_only = np.zeros((T, B, H), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        glue.rnn_forward(**c, out=OnDevice(read_only, readonly=True) if device else read_only)


def test_host_mode_refuses_an_out_that_is_not_an_array(cuda):
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        glue.rnn_forward(**_case(), out=[[[0.0] * H] * B] * T)


# ----------------------------------------------------------------------------- streams, devices
class Library:
    """What the glue learns from an array library (torch, CuPy): its current stream (77 here)
    and the tensors it is told a side stream uses (torch's record_stream)."""

    def __init__(self, monkeypatch):
        self.recorded = []
        monkeypatch.setattr(glue, "_library", lambda a: "lib" if isinstance(a, OnDevice) else None)
        monkeypatch.setattr(glue, "_library_device", lambda lib, a: 0)
        monkeypatch.setattr(glue, "_library_stream", lambda lib, device: 77)
        monkeypatch.setattr(glue, "_record_stream",
                            lambda lib, arrays, stream: self.recorded.append((list(arrays), stream)))


def test_by_default_a_call_runs_on_the_array_librarys_current_stream(cuda, monkeypatch):
    lib = Library(monkeypatch)
    c = _case()
    out, h_n = glue.rnn_forward(**{k: OnDevice(v) for k, v in c.items()})
    assert _last(cuda, "rnn_forward")["stream"] == 77                # where the inputs were produced
    assert not [e for e in cuda.calls if e[0] == "stream_wait"]
    assert lib.recorded == []                      # nothing used on a side stream
    ref, _ = F.rnn_forward(**c, backend="cpu")
    np.testing.assert_array_equal(out.get(), ref)


def test_a_call_on_another_stream_waits_for_the_librarys_and_records_its_tensors(cuda, monkeypatch):
    lib = Library(monkeypatch)
    c = _case()
    dev = {k: OnDevice(v) for k, v in c.items()}
    out, _ = glue.rnn_forward(**dev, stream=5)
    names = [e[0] for e in cuda.calls]
    wait = names.index("stream_wait")
    assert cuda.calls[wait] == ("stream_wait", 5, 77) and wait < names.index("rnn_forward")
    r = glue.rnn_backward(dev["x"], dev["weight_ih"], dev["weight_hh"], out, dev["h0"], stream=5)
    # the caller's tensors and every result allocated for the call, on stream 5
    (fwd_arrays, s1), (bwd_arrays, s2) = lib.recorded
    assert s1 == s2 == 5
    assert all(any(a is b for b in fwd_arrays) for a in dev.values())
    assert all(any(a is b for b in bwd_arrays) for a in r if a is not None)
    ref = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"],
                         F.rnn_forward(**c, backend="cpu")[0], c["h0"], backend="cpu")
    np.testing.assert_array_equal(r[0].get(), ref.grad_x)


def test_elman_owned_results_are_written_and_read_on_the_calls_stream_on_their_device(cuda):
    cuda.current = 3   # the caller's current device
    a = glue.DeviceArray((2, 3), np.float32, device=1, zero=True, stream=9)
    assert cuda.current == 3 and ("set_device", 1) in cuda.calls
    assert a.__cuda_array_interface__["stream"] == 9
    cuda.calls.clear()
    np.testing.assert_array_equal(a.get(), np.zeros((2, 3), np.float32))
    assert ("synchronize", 9) in cuda.calls and cuda.current == 3
