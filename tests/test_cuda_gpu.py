"""The cuda backend on a real GPU (marker ``gpu``; skipped cleanly where no device is usable).
The full kernel matrix of test_kernels.py also runs on cuda there, through the backend fixture.
Here: forced tiers agree bitwise, 20 runs are bitwise identical, device arrays (torch, CuPy,
elman's own) are used in place on a given stream, and host/device mixing is refused."""

import numpy as np
import pytest

import elman
from elman import _backend, reference
from elman._backends import cuda as _cuda_fn
from elman import functional as F
from conftest import assert_close, max_abs
from test_kernels import make_case

pytestmark = pytest.mark.gpu
if "cuda" not in elman.backends():
    pytest.skip(_backend.cuda_status()[1], allow_module_level=True)


def _run(c, g_out, g_hn, lengths=None, reverse=False, tier=0):
    out, h_n = _cuda_fn.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                    c["bias_hh"], c["h0"], lengths, "tanh", reverse, tier=tier)
    g = _cuda_fn.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out, g_hn,
                              lengths, "tanh", reverse, True, tier=tier)
    return [out, h_n] + [a for a in g if a is not None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,I,H", [(7, 3, 5, 33), (5, 4, 9, 300), (3, 2, 4, 1030)])
def test_forced_tiers_agree_bitwise_and_with_the_reference(dtype, T, B, I, H):
    rng = np.random.default_rng(H)
    c, g_out, g_hn = make_case(rng, T, B, I, H, dtype)
    lengths = np.array([T, 1, T // 2, T][:B])
    runs = {}
    for tier in (1, 2, 3):
        try:
            runs[tier] = _run(c, g_out, g_hn, lengths, True, tier)
        except ValueError as exc:  # this device has no room for the tier at this size
            assert "does not fit" in str(exc)
    assert 3 in runs
    first = next(iter(runs.values()))
    for other in runs.values():
        for a, b in zip(first, other):
            np.testing.assert_array_equal(a, b)
    ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                            c["bias_hh"], c["h0"], lengths, "tanh", True)
    assert_close(first[0], ref_out, dtype)
    assert_close(first[1], ref_hn, dtype)


def test_twenty_runs_are_bitwise_identical():
    """Split-K products (T * B = 2048 rows), every tier's recurrence: no run-to-run change."""
    rng = np.random.default_rng(20)
    c, g_out, g_hn = make_case(rng, 64, 32, 48, 256, np.float32)
    first = _run(c, g_out, g_hn)
    for _ in range(19):
        for a, b in zip(first, _run(c, g_out, g_hn)):
            np.testing.assert_array_equal(a, b)


def test_elman_device_arrays_in_place():
    rng = np.random.default_rng(3)
    c, g_out, g_hn = make_case(rng, 6, 3, 4, 5, np.float32)

    def dev(a):
        if a is None:
            return None
        d = _cuda_fn.DeviceArray(a.shape, a.dtype, 0)
        d._buf.upload(np.ascontiguousarray(a), 0)
        return d

    host_out, host_hn = F.rnn_forward(**c, backend="cuda")
    out, h_n = F.rnn_forward(**{k: dev(v) for k, v in c.items()})  # auto: device arrays
    assert isinstance(out, _cuda_fn.DeviceArray)
    np.testing.assert_array_equal(out.get(), host_out)
    np.testing.assert_array_equal(h_n.get(), host_hn)
    with pytest.raises(TypeError, match="host array but .* is a CUDA device array"):
        F.rnn_forward(c["x"], dev(c["weight_ih"]), c["weight_hh"], backend="cuda")


def test_torch_cuda_tensors_on_a_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    rng = np.random.default_rng(4)
    c, g_out, g_hn = make_case(rng, 9, 4, 6, 40, np.float32)
    tc = {k: (None if v is None else torch.from_numpy(v).cuda()) for k, v in c.items()}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out, h_n = F.rnn_forward(**tc, stream=stream)
        g = F.rnn_backward(tc["x"], tc["weight_ih"], tc["weight_hh"], out, tc["h0"],
                           torch.from_numpy(g_out).cuda(), torch.from_numpy(g_hn).cuda(),
                           stream=stream)
    stream.synchronize()
    assert out.is_cuda and out.dtype == torch.float32
    ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                            c["bias_hh"], c["h0"])
    assert_close(out.cpu().numpy(), ref_out, np.float32)
    assert_close(h_n.cpu().numpy(), ref_hn, np.float32)
    ref = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out.cpu().numpy(), c["h0"],
                                 g_out, g_hn)
    scale = max_abs(ref["dW_ih"], ref["dW_hh"], ref["db"])
    assert_close(g.grad_x.cpu().numpy(), ref["grad_x"], np.float32)
    assert_close(g.grad_weight_hh.cpu().numpy(), ref["dW_hh"], np.float32, "weight", scale=scale)


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    c, _, _ = make_case(rng, 5, 2, 3, 7, np.float64)
    out, h_n = F.rnn_forward(**{k: (None if v is None else cupy.asarray(v)) for k, v in c.items()})
    assert isinstance(out, cupy.ndarray)
    ref_out, _ = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                       c["bias_hh"], c["h0"])
    assert_close(cupy.asnumpy(out), ref_out, np.float64)
