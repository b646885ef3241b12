"""Memory layouts and sizes. Any layout of an input (sliced, transposed, Fortran-order,
negative-stride, broadcast, unaligned, read-only, non-native byte order) gives results bitwise
equal to its C-contiguous copy and leaves the input byte-identical. Sizes are computed in 64
bits: products beyond 2^31 are exact, requests that cannot be allocated raise MemoryError before
anything is touched, and the BLAS's 32-bit sizes and leading dimensions are split around."""

import numpy as np
import pytest

import elman
from elman import functional as F, reference
from conftest import assert_close, max_abs

pytestmark = pytest.mark.reliability

T, B, I, H = 6, 7, 5, 17


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned or a.size == 0
    return u


def _negative(a):
    flip = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[flip])[flip]


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


VIEWS = {
    "sliced": lambda a: np.repeat(a, 2, axis=-1)[..., ::2],
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "fortran": np.asfortranarray,
    "negative-stride": _negative,
    "broadcast": lambda a: np.broadcast_to(a[:1], a.shape) if a.ndim else a,
    "unaligned": _unaligned,
    "read-only": _readonly,
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind == "f" else a,
}


def _same(a, b, what=""):
    if isinstance(a, (tuple, list)):
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{what}[{i}]")
    elif isinstance(a, dict):
        for k in a:
            _same(a[k], b[k], f"{what}[{k!r}]")
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.bad_input
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rnn_any_layout_gives_the_contiguous_result(backend_any, view, dtype):
    rng = np.random.default_rng(0)
    args = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                h0=rng.standard_normal((4, B, H)).astype(dtype),
                lengths=np.array([6, 1, 3, 6, 2, 5, 4]))
    g = dict(grad_out=rng.standard_normal((T, B, 2 * H)).astype(dtype),
             grad_h_n=rng.standard_normal((4, B, H)).astype(dtype))

    def run(a, gr):
        m = elman.RNN(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=0, backend=backend_any)
        out, h_n = m(**a)
        grads = m.backward(**gr)
        return [out, h_n, *grads, {n: p.grad for n, p in m.named_parameters()}, m.grad_norms]

    viewed = {k: VIEWS[view](v) for k, v in {**args, **g}.items()}
    copies = {k: np.ascontiguousarray(v).astype(v.dtype.newbyteorder("="), copy=True)
              for k, v in viewed.items()}
    got = run({k: viewed[k] for k in args}, {k: viewed[k] for k in g})
    expected = run({k: copies[k] for k in args}, {k: copies[k] for k in g})
    _same(got, expected)
    for k, v in viewed.items():  # byte-identical to what they were before the calls
        before = VIEWS[view]({**args, **g}[k])
        assert v.tobytes() == before.tobytes(), k


@pytest.mark.bad_input
@pytest.mark.parametrize("view", list(VIEWS))
def test_cell_linear_embedding_losses_any_layout(backend_any, view):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    h = rng.standard_normal((B, H)).astype(np.float32)
    g = rng.standard_normal((B, H)).astype(np.float32)
    vx, vh, vg = (VIEWS[view](a) for a in (x, h, g))
    before = [a.tobytes() for a in (vx, vh, vg)]

    def cell_run(x, h, g):
        c = elman.RNNCell(I, H, seed=0, backend=backend_any)
        h1 = c(x, h)
        return [h1, *c.backward(g), *(p.grad for p in c.parameters())]

    def c(a):  # the C-contiguous, native-order copy of a view
        return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("="), copy=True)
    x, h, g = c(vx), c(vh), c(vg)
    _same(cell_run(vx, vh, vg), cell_run(x, h, g), "RNNCell")
    _same(cell_run(vx[0], vh[0], vg[0]), cell_run(c(x[0]), c(h[0]), c(g[0])), "RNNCell unbatched")

    def linear_run(x, g):
        lin = elman.Linear(I, H, seed=0)
        y = lin(x)
        return [y, lin.backward(g), lin.weight.grad, lin.bias.grad]

    _same(linear_run(vx, vg), linear_run(c(x), c(g)), "Linear")
    idx = VIEWS[view](np.array([[1, 2], [3, 0]]))
    emb = elman.Embedding(5, 3, seed=0)
    np.testing.assert_array_equal(emb(idx), emb(c(idx)))
    for loss, target in ((elman.MSELoss(), h), (elman.BCEWithLogitsLoss(), (h > 0).astype(np.float32))):
        vt = VIEWS[view](target)
        assert loss(vh, vt) == loss(c(vh), c(vt))
        g1 = loss.backward()
        loss(c(vh), c(vt))
        g2 = loss.backward()
        assert g1.dtype == g2.dtype == np.float32
        np.testing.assert_array_equal(g1, g2)
    assert [a.tobytes() for a in (vx, vh, vg)] == before


# ------------------------------------------------------------------------------ sizes
def test_size_check_is_exact_in_64_bits_without_allocating():
    core = pytest.importorskip("elman._core")
    # exact products beyond 2^31 and 2^32 (each would be wrong in 32-bit arithmetic)
    assert core._testing.checked_nbytes([2**31 + 1], 4) == (2**31 + 1) * 4
    assert core._testing.checked_nbytes([100_000, 30_000, 1024], 4) == 100_000 * 30_000 * 1024 * 4
    assert core._testing.checked_nbytes([2**20, 2**20, 2**20], 4) == 2**62
    assert core._testing.checked_nbytes([0, 2**62], 8) == 0
    for shape, itemsize in (([2**40, 2**40], 1), ([2**31, 2**31], 4), ([2**21, 2**21, 2**21], 1),
                            ([2**62], 2), ([3, 2**62], 1)):
        with pytest.raises(MemoryError, match="needs more than 2\\^63 bytes"):
            core._testing.checked_nbytes(shape, itemsize)
    assert F.check_nbytes((2**31 + 1, 3), np.float32, "x") == (2**31 + 1) * 12
    with pytest.raises(MemoryError, match=r"out of shape \(1073741824, 1073741824, 16\) and dtype "
                                          r"float32 needs 73786976294838206464 bytes"):
        F.check_nbytes((2**30, 2**30, 16), np.float32, "out")


@pytest.mark.bad_input
def test_a_request_that_cannot_be_allocated_raises_memory_error_and_changes_nothing(backend_any):
    # T * B * H * 4 = 2^66 bytes: refused before NumPy is even asked
    x = np.broadcast_to(np.float32(0), (2**30, 2**30, 1))
    W_ih, W_hh = np.zeros((16, 1), np.float32), np.zeros((16, 16), np.float32)
    with pytest.raises(MemoryError, match=r"out of shape \(1073741824, 1073741824, 16\)"):
        F.rnn_forward(x, W_ih, W_hh, backend=backend_any)
    # 2^50 * 4 * 4 bytes fits in 64 bits but not in memory: NumPy's refusal, named
    x = np.broadcast_to(np.float32(0), (2**25, 2**25, 1))
    with pytest.raises(MemoryError, match=r"cannot allocate out of shape \(33554432, 33554432, 4\)"):
        F.rnn_forward(x, np.zeros((4, 1), np.float32), np.zeros((4, 4), np.float32), backend=backend_any)
    # the layer: its state (parameters, the previous forward) is untouched
    m = elman.RNN(1, 4, seed=0, backend=backend_any)
    small = np.ones((3, 2, 1), np.float32)
    m(small)
    params = {n: p.data.copy() for n, p in m.named_parameters()}
    with pytest.raises(MemoryError):
        m(np.broadcast_to(np.float32(0), (2**25, 2**25, 1)))
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.data, params[n])
    gx, _ = m.backward(np.ones((3, 2, 4), np.float32))  # the earlier forward is still there
    assert gx.shape == (3, 2, 1)
    with pytest.raises(MemoryError, match="needs .* bytes.*more than this process can"):
        elman.Linear(2**40, 2**40)


@pytest.mark.parametrize("limits", [(3, 2**31 - 1), (2**30, 7), (4, 5), (1, 1)],
                         ids=["dims of 3", "lds of 7", "dims 4 lds 5", "everything split"])
def test_blas_products_split_around_32_bit_sizes(limits):
    """Lowering the largest size / leading dimension handed to the BLAS runs, on small arrays,
    the paths that products beyond 2^31 take (pieces, rows, plain loops): same results."""
    core = pytest.importorskip("elman._core")
    rng = np.random.default_rng(2)
    lengths = np.array([6, 1, 3, 6, 2, 5, 4])
    cases = []
    for dtype in (np.float32, np.float64):
        s = 0.5
        c = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                 weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                 weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype), bias_ih=None, bias_hh=None,
                 h0=rng.uniform(-1, 1, (B, H)).astype(dtype))
        cases.append((c, rng.standard_normal((T, B, H)).astype(dtype), dtype))
    try:
        core._testing._set_blas_limits(*limits)
        for c, g, dtype in cases:
            for L in (None, lengths):
                out, h_n = F.rnn_forward(**c, lengths=L, backend="cpu")
                ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"],
                                                        None, None, c["h0"], L)
                assert_close(out, ref_out, dtype, what="out")
                r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g, None, L,
                                   bias=False, backend="cpu")
                ref = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g,
                                             None, L)
                assert_close(r.grad_x, ref["grad_x"], dtype, what="grad_x")
                assert_close(r.grad_h0, ref["grad_h0"], dtype, what="grad_h0")
                scale = max_abs(ref["dW_ih"], ref["dW_hh"])
                assert_close(r.grad_weight_ih, ref["dW_ih"], dtype, "weight", "dW_ih", scale)
            A = rng.standard_normal((9, 8)).astype(dtype)
            Bm = rng.standard_normal((8, 11)).astype(dtype)
            C = np.full((9, 11), np.nan, dtype)  # beta = 0: C's old contents are never read
            core._testing.blas_gemm(A, Bm, C)
            assert_close(C, A.astype(np.float64) @ Bm, dtype, "weight")
    finally:
        core._testing._set_blas_limits(2**30, 2**31 - 1)
