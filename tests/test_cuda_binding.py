"""elman._cuda's entry points validate through the boundary they share with elman._core
(csrc/bindings/args.h), checked without a GPU: fake device descriptions (elman._device.DeviceView)
whose pointers are never read. Every bad argument is refused with the message _core gives, before
any CUDA call; good ones come out as the kernels' pointers and row strides."""

import re

import numpy as np
import pytest

from cuda_helpers import require_module
from elman._device import DeviceView

cuda = require_module("elman._cuda", "build with ELMAN_CUDA=ON")
core = pytest.importorskip("elman._core")

T, B, I, H = 5, 3, 4, 6


class FakeMemory:
    """Device addresses 4 GiB apart (nothing ever reads them), never handed out twice."""

    def __init__(self):
        self.next = 1 << 40

    def view(self, shape, dtype=np.float32, device=0, readonly=False, strides=None):
        ptr = self.next
        self.next += 1 << 32
        if strides is None:
            strides = [int(np.prod(shape[d + 1:])) for d in range(len(shape))]
        return DeviceView(ptr, shape, strides, dtype, device, None, readonly, None)


MEMORY = FakeMemory()


def fwd_args(dtype=np.float32):
    m = MEMORY
    return dict(x=m.view((T, B, I), dtype), W_ih=m.view((H, I), dtype), W_hh=m.view((H, H), dtype),
                b_ih=m.view((H,), dtype), b_hh=m.view((H,), dtype), h0=m.view((B, H), dtype),
                lengths=np.array([5, 2, 1]), nonlinearity="tanh", reverse=False,
                out=m.view((T, B, H), dtype), h_n=m.view((B, H), dtype))


def bwd_args(dtype=np.float32):
    m = MEMORY
    return dict(x=m.view((T, B, I), dtype), W_ih=m.view((H, I), dtype), W_hh=m.view((H, H), dtype),
                h0=m.view((B, H), dtype), out=m.view((T, B, H), dtype),
                grad_out=m.view((T, B, H), dtype), grad_h_n=m.view((B, H), dtype),
                lengths=np.array([5, 2, 1]), nonlinearity="relu", reverse=True,
                grad_x=m.view((T, B, I), dtype), accumulate_grad_x=True,
                grad_h0=m.view((B, H), dtype), dW_ih=m.view((H, I), dtype),
                dW_hh=m.view((H, H), dtype), db_ih=m.view((H,), dtype), db_hh=m.view((H,), dtype),
                grad_norms=m.view((T,), np.float64))


def _params(fn):
    """The keyword names in a pybind11 function's signature line."""
    first = fn.__doc__.splitlines()[0]
    return re.findall(r"(\w+): ", first[first.index("(") + 1:])


def test_cuda_takes_the_keywords_of_core_plus_stream_and_tier():
    for name in ("rnn_forward", "rnn_backward"):
        assert _params(getattr(cuda, name)) == _params(getattr(core, name)) + ["stream", "tier"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_arguments_become_the_kernels_pointers(dtype):
    a = fwd_args(dtype)
    got = cuda._testing.forward_args(**a)
    for k in ("x", "W_ih", "W_hh", "b_ih", "b_hh", "h0", "out", "h_n"):
        assert got[k] == a[k].ptr, k
    assert (got["T"], got["B"], got["I"], got["H"], got["ld_out"]) == (T, B, I, H, H)
    assert (got["nonlinearity"], got["reverse"], got["device"]) == ("tanh", False, 0)
    assert got["lengths"] == a["lengths"].ctypes.data  # checked on the host, copied at launch


def test_backward_arguments_become_the_kernels_pointers():
    a = bwd_args()
    got = cuda._testing.backward_args(**a)
    for k in ("x", "W_ih", "W_hh", "h0", "out", "grad_out", "grad_h_n", "grad_x", "grad_h0",
              "dW_ih", "dW_hh", "db_ih", "db_hh", "grad_norms"):
        assert got[k] == a[k].ptr, k
    assert (got["ld_out"], got["ld_grad_out"], got["accumulate_grad_x"]) == (H, H, True)
    assert (got["nonlinearity"], got["reverse"]) == ("relu", True)


def test_optional_arrays_may_be_none():
    a = fwd_args()
    a.update(b_ih=None, b_hh=None, h0=None, lengths=None)
    got = cuda._testing.forward_args(**a)
    assert got["b_ih"] == got["b_hh"] == got["h0"] == got["lengths"] == 0
    b = bwd_args()
    b.update(h0=None, grad_out=None, grad_h_n=None, grad_x=None, grad_h0=None, db_ih=None,
             db_hh=None, grad_norms=None)
    got = cuda._testing.backward_args(**b)
    assert all(got[k] == 0 for k in ("h0", "grad_out", "grad_h_n", "grad_x", "grad_h0", "db_ih",
                                     "db_hh", "grad_norms"))


def test_a_column_slice_of_a_bidirectional_output_keeps_its_row_stride():
    """out / grad_out as one half of a (T, B, 2H) array: the row stride is 2H, nothing copied."""
    a = fwd_args()
    full = MEMORY.view((T, B, 2 * H))
    a["out"] = DeviceView(full.ptr + H * 4, (T, B, H), (B * 2 * H, 2 * H, 1), np.float32, 0, None,
                          False, None)
    got = cuda._testing.forward_args(**a)
    assert (got["out"], got["ld_out"]) == (full.ptr + H * 4, 2 * H)
    b = bwd_args()
    b["grad_out"] = DeviceView(full.ptr, (T, B, H), (B * 2 * H, 2 * H, 1), np.float32, 0, None,
                               True, None)
    got = cuda._testing.backward_args(**b)
    assert (got["grad_out"], got["ld_grad_out"]) == (full.ptr, 2 * H)


def _replace(name, make):
    def edit(a):
        a[name] = make(a)
    return edit


def _view_like(name, **changes):
    """A new fake view with the argument's shape and dtype, but for the properties changed."""
    def make(a):
        kw = {"shape": a[name].shape, "dtype": a[name].dtype, **changes}
        return MEMORY.view(kw.pop("shape"), kw.pop("dtype"), **kw)
    return make


def _fortran(name):
    """The argument's memory in column-major order (same shape): not C-contiguous."""
    def make(a):
        v = a[name]
        strides = [int(np.prod(v.shape[:d])) for d in range(v.ndim)]
        return DeviceView(v.ptr, v.shape, strides, v.dtype, 0, None, False, None)
    return make


def _offset(name, nbytes):
    def make(a):
        v = a[name]
        return DeviceView(v.ptr + nbytes, v.shape, v.strides, v.dtype, 0, None, v.readonly, None)
    return make


FORWARD_BAD = [
    ("x", _view_like("x", dtype=np.int64), TypeError,
     "x must have dtype float32 or float64, got int64"),
    ("x", lambda a: np.zeros((T, B, I), np.float32), TypeError,
     r"x must be a device array \(elman._device.DeviceView\), got ndarray"),
    ("x", lambda a: None, TypeError, "x must be a device array .*, got NoneType"),
    ("x", _view_like("x", shape=(T, B)), ValueError, r"x must be 3-D \(T, B, I\), got 2-D"),
    ("x", _view_like("x", shape=(0, B, I)), ValueError, "at least one time step, got T = 0"),
    ("x", _view_like("x", shape=(T, B, 5)), ValueError,
     r"W_ih must have shape \(6, 5\), got \(6, 4\)"),
    ("W_ih", _view_like("W_ih", dtype=np.float64), TypeError,
     "W_ih must have dtype float32, got float64"),
    ("W_ih", lambda a: None, TypeError, "W_ih must be a device array"),
    ("W_hh", _view_like("W_hh", shape=(0, 0)), ValueError, r"with H >= 1, got \(0, 0\)"),
    ("W_hh", _fortran("W_hh"), ValueError, "W_hh must be C-contiguous on the device"),
    ("W_hh", _offset("W_hh", 2), ValueError, "W_hh must be C-contiguous on the device"),
    ("b_ih", _view_like("b_ih", shape=(7,)), ValueError,
     r"b_ih must have shape \(6,\), got \(7,\)"),
    ("h0", _view_like("h0", shape=(B, H), strides=(1, B)), ValueError,
     "h0 must be C-contiguous on the device"),
    ("h0", _view_like("h0", device=1), ValueError,
     "h0 is on cuda:1 but x is on cuda:0; every array must be on one device"),
    ("lengths", lambda a: np.array([5, 2, 0]), ValueError,
     r"lengths must be in \[1, T\] = \[1, 5\], got lengths\[2\] = 0"),
    ("lengths", lambda a: np.array([5, 2, 1], np.int32), TypeError,
     "lengths must have dtype int64, got int32"),
    ("lengths", lambda a: MEMORY.view((B,), np.int64), TypeError,
     "lengths must be a numpy.ndarray, got DeviceView"),
    ("nonlinearity", lambda a: "sigmoid", ValueError, "Unknown nonlinearity 'sigmoid'"),
    ("out", _view_like("out", readonly=True), ValueError, "out must be writable"),
    ("out", _view_like("out", strides=(H, T * H, 1)), ValueError,
     "out must have evenly strided rows with a contiguous last dimension"),
    ("out", lambda a: a["x"], ValueError, r"out must have shape \(5, 3, 6\), got \(5, 3, 4\)"),
    ("out", lambda a: DeviceView(a["x"].ptr, (T, B, H), (B * H, H, 1), np.float32, 0, None, False,
                                 None), ValueError, "out must not share memory with x"),
    ("h_n", _fortran("h_n"), ValueError, "h_n must be C-contiguous and aligned"),
    ("h_n", lambda a: DeviceView(a["out"].ptr + 4, (B, H), (H, 1), np.float32, 0, None, False,
                                 None), ValueError, "h_n must not share memory with out"),
]

BACKWARD_BAD = [
    ("out", lambda a: None, TypeError, "out must be a device array .*, got NoneType"),
    ("out", _view_like("out", strides=(H, T * H, 1)), ValueError,
     "out must have evenly strided rows with a contiguous last dimension"),
    ("grad_out", _view_like("grad_out", shape=(T, B, 5)), ValueError,
     r"grad_out must have shape \(5, 3, 6\), got \(5, 3, 5\)"),
    ("grad_h_n", _fortran("grad_h_n"), ValueError, "grad_h_n must be C-contiguous on the device"),
    ("grad_x", _view_like("grad_x", readonly=True), ValueError, "grad_x must be writable"),
    ("dW_ih", lambda a: None, TypeError, "dW_ih must be a device array"),
    ("dW_hh", lambda a: a["W_hh"], ValueError, "dW_hh must not share memory with W_hh"),
    ("db_hh", _view_like("db_hh", device=2), ValueError, "db_hh is on cuda:2 but x is on cuda:0"),
    ("grad_norms", _view_like("grad_norms", dtype=np.float32), TypeError,
     "grad_norms must have dtype float64, got float32"),
    ("lengths", lambda a: np.array([6, 1, 1]), ValueError, r"got lengths\[0\] = 6"),
]


@pytest.mark.parametrize("entry", ["rnn_forward", "_testing.forward_args"])
@pytest.mark.parametrize("name,make,exc,match", FORWARD_BAD, ids=[c[3][:40] for c in FORWARD_BAD])
def test_forward_refuses_bad_arguments_before_any_cuda_call(entry, name, make, exc, match):
    """The entry point itself raises (had it gone on, the fake pointers would reach CUDA)."""
    fn = cuda.rnn_forward if entry == "rnn_forward" else cuda._testing.forward_args
    a = fwd_args()
    a[name] = make(a)
    with pytest.raises(exc, match=match):
        fn(**a)


@pytest.mark.parametrize("entry", ["rnn_backward", "_testing.backward_args"])
@pytest.mark.parametrize("name,make,exc,match", BACKWARD_BAD, ids=[c[3][:40] for c in BACKWARD_BAD])
def test_backward_refuses_bad_arguments_before_any_cuda_call(entry, name, make, exc, match):
    fn = cuda.rnn_backward if entry == "rnn_backward" else cuda._testing.backward_args
    a = bwd_args()
    a[name] = make(a)
    with pytest.raises(exc, match=match):
        fn(**a)


def test_the_same_bad_argument_gets_the_same_message_from_core():
    """One boundary: a NumPy call to _core and a device call to _cuda say the same thing."""
    rng = np.random.default_rng(0)
    host = {k: (rng.standard_normal(v.shape).astype(v.dtype) if isinstance(v, DeviceView) else v)
            for k, v in fwd_args().items()}
    dev = fwd_args()
    host["W_ih"] = host["W_ih"].astype(np.float64)
    dev["W_ih"] = _view_like("W_ih", dtype=np.float64)(dev)
    messages = []
    for fn, args in ((core.rnn_forward, host), (cuda._testing.forward_args, dev)):
        with pytest.raises(TypeError) as info:
            fn(**args)
        messages.append(str(info.value))
    assert messages[0] == messages[1] == "W_ih must have dtype float32, got float64"


@pytest.mark.skipif(cuda.status()[0] > 0, reason="fake pointers must never reach a real device")
def test_valid_arguments_reach_the_cuda_runtime():
    """Without a device, a valid call gets past the boundary and fails at the first CUDA call."""
    with pytest.raises(RuntimeError, match="elman CUDA: "):
        cuda.rnn_forward(**fwd_args(), stream=0, tier=0)
    with pytest.raises(RuntimeError, match="elman CUDA: "):
        cuda.rnn_backward(**bwd_args())
