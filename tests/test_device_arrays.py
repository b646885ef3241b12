"""How elman recognizes CUDA device arrays and routes them, checked without a GPU: fake objects
with ``__cuda_array_interface__`` / ``__dlpack_device__`` stand in for torch or CuPy arrays
(nothing here reads their memory)."""

import numpy as np
import pytest

import elman
from elman import _backend, _device
from elman._backends import cuda as _cuda_fn
from elman import functional as F


class FakeCAI:
    def __init__(self, shape=(2, 1, 3), typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False),
                                         "version": 3}


class FakeDLPack:
    def __init__(self, device_type):
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)


def test_device_arrays_are_recognized():
    assert _device.is_device_array(FakeCAI())
    assert _device.is_device_array(FakeDLPack(2))        # kDLCUDA
    assert not _device.is_device_array(FakeDLPack(1))    # kDLCPU
    assert not _device.is_device_array(np.zeros(3))
    assert not _device.is_device_array([1.0, 2.0])
    assert not _device.is_device_array(None)


def test_a_torch_cpu_tensor_is_a_host_array():
    torch = pytest.importorskip("torch")
    assert not _device.is_device_array(torch.zeros(3))


def test_an_unreadable_interface_is_a_clear_type_error():
    class RequiresGrad:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    with pytest.raises(TypeError, match=r"x cannot be read as a CUDA array.*\.detach\(\)"):
        _device.is_device_array(RequiresGrad(), "x")


def _weights():
    return np.zeros((4, 3), np.float32), np.zeros((4, 4), np.float32)


@pytest.mark.skipif("cuda" in elman.backends(), reason="checks the machine without a usable GPU")
def test_auto_with_device_arrays_and_no_cuda_says_why():
    with pytest.raises(RuntimeError, match="inputs are CUDA device arrays but the cuda backend "
                                           "is not available"):
        F.rnn_forward(FakeCAI(), *_weights())


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_device_arrays_on_a_host_backend_are_a_type_error(backend):
    with pytest.raises(TypeError, match=f"CUDA device array was given to backend '{backend}'"):
        F.rnn_forward(FakeCAI(), *_weights(), backend=backend)
    with pytest.raises(TypeError, match=f"CUDA device array was given to backend '{backend}'"):
        F.rnn_backward(np.zeros((2, 1, 3), np.float32), *_weights(), FakeCAI((2, 1, 4)),
                       backend=backend)


def test_stream_is_for_the_cuda_backend_only():
    with pytest.raises(ValueError, match="stream applies to backend 'cuda' only"):
        F.rnn_forward(np.zeros((2, 1, 3), np.float32), *_weights(), backend="cpu", stream=0)


def test_mixing_host_and_device_arrays_names_both():
    with pytest.raises(TypeError, match="x is a host array but weight_hh is a CUDA device array"):
        _cuda_fn._Operands({"x": np.zeros((2, 1, 3), np.float32), "weight_hh": FakeCAI((4, 4))},
                           None)


def test_lengths_must_stay_on_the_host():
    with pytest.raises(TypeError, match="lengths must be on the host"):
        _cuda_fn._host_lengths(FakeCAI((1,), "<i8"))


def test_stream_handles():
    class TorchStream:
        cuda_stream = 1234

    class CupyStream:
        ptr = 5678

    assert _device.stream_handle(None) == 0
    assert _device.stream_handle(7) == 7
    assert _device.stream_handle(np.int64(9)) == 9
    assert _device.stream_handle(TorchStream()) == 1234
    assert _device.stream_handle(CupyStream()) == 5678
    for bad in (True, "0", 1.5, object()):
        with pytest.raises(TypeError, match="stream must be None, an int"):
            _device.stream_handle(bad)


def test_cuda_status_is_consistent_with_backends():
    usable, why = _backend.cuda_status()
    assert isinstance(why, str) and why
    assert ("cuda" in elman.backends()) == usable


@pytest.mark.skipif(_backend._cuda is not None, reason="elman._cuda is built here "
                                                       "(test_cuda_build.py covers that case)")
def test_a_cpu_only_build_says_how_to_get_cuda():
    assert _backend.cuda_status() == (False, "elman was built without CUDA support "
                                             "(build it with ELMAN_CUDA=ON)")
    assert "cuda" not in elman.backends()


def test_layers_with_backend_cuda_reach_the_cuda_path(monkeypatch):
    """elman.RNN(backend="cuda") calls the cuda entry points (never the reference silently).
    No GPU here: the entry points are stood in for by recorders that run the cpu backend."""
    if "cpu" not in elman.backends():
        pytest.skip("needs the cpu backend to stand in")
    calls = []

    def forward(*args, **kw):
        calls.append("forward")
        return F.rnn_forward(*args, **kw, backend="cpu")

    def backward(*args, **kw):
        calls.append("backward")
        return tuple(F.rnn_backward(*args, **kw, backend="cpu"))

    monkeypatch.setattr(_backend, "_cuda_state", (True, "stand-in"))
    monkeypatch.setattr(_cuda_fn, "rnn_forward", forward)
    monkeypatch.setattr(_cuda_fn, "rnn_backward", backward)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    lengths = [5, 2, 4]
    results = {}
    for backend in ("cuda", "cpu"):
        rnn = elman.RNN(4, 6, num_layers=2, bidirectional=True, seed=1, backend=backend)
        out, h_n = rnn(x, lengths=lengths)
        grads = rnn.backward(np.ones_like(out), np.ones_like(h_n))
        results[backend] = [out, h_n, *grads] + [p.grad for p in rnn.parameters()]
    assert calls.count("forward") == 4 and calls.count("backward") == 4  # 2 layers x 2 directions
    for a, b in zip(results["cuda"], results["cpu"]):
        np.testing.assert_array_equal(a, b)
