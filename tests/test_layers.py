"""The layer API: RNN (multi-layer, bidirectional, batch_first, unbatched, lengths, dropout),
RNNCell, Linear, Embedding against the reference backend and finite differences."""

import itertools

import numpy as np
import pytest

import elman
from conftest import assert_close, max_abs

EPS = 1e-6


def _pair(backend, dtype, **kw):
    """The same model (same seed) on the kernel backend and on the numpy reference backend."""
    return (elman.RNN(backend=backend, dtype=dtype, seed=11, **kw),
            elman.RNN(backend="numpy", dtype=dtype, seed=11, **kw))


def _compare_models(m, ref, dtype):
    scale = max_abs(*(p.grad for p in ref.parameters()))
    for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, dtype, "weight", name, scale)
    for k in ref.grad_norms:
        assert_close(m.grad_norms[k], ref.grad_norms[k], dtype, what=f"grad_norms {k}")


CONFIGS = list(itertools.product(
    [1, 2, 3], [False, True], [False, True], ["tanh", "relu"], [True, False],
    [np.float32, np.float64]))


@pytest.mark.parametrize("layers,bidir,batch_first,act,bias,dtype", CONFIGS)
def test_rnn_matches_reference_backend(backend, layers, bidir, batch_first, act, bias, dtype):
    rng = np.random.default_rng(layers * 8 + bidir * 4 + batch_first * 2 + bias)
    T, B, I, H = 7, 3, 5, 6
    m, ref = _pair(backend, dtype, input_size=I, hidden_size=H, num_layers=layers,
                   nonlinearity=act, bias=bias, batch_first=batch_first, bidirectional=bidir)
    D = 2 if bidir else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    lengths = np.array([7, 2, 5])
    for use_h0, use_len in [(False, False), (True, True)]:
        m.zero_grad()
        ref.zero_grad()
        args = dict(h0=h0 if use_h0 else None, lengths=lengths if use_len else None)
        out, h_n = m(x, **args)
        ro, rh = ref(x, **args)
        assert out.shape == ((B, T, D * H) if batch_first else (T, B, D * H))
        assert h_n.shape == (layers * D, B, H)
        assert_close(out, ro, dtype, what="out")
        assert_close(h_n, rh, dtype, what="h_n")
        g_out = rng.standard_normal(out.shape).astype(dtype)
        g_hn = rng.standard_normal(h_n.shape).astype(dtype)
        gx, gh = m.backward(g_out, g_hn)
        rgx, rgh = ref.backward(g_out, g_hn)
        assert gx.shape == x.shape and gh.shape == h0.shape
        assert_close(gx, rgx, dtype, what="grad_x")
        assert_close(gh, rgh, dtype, what="grad_h0")
        _compare_models(m, ref, dtype)


@pytest.mark.parametrize("bidir", [False, True])
def test_unbatched_equals_batch_of_one(backend, bidir):
    rng = np.random.default_rng(2)
    m = elman.RNN(4, 5, num_layers=2, bidirectional=bidir, seed=3, backend=backend)
    D = 2 if bidir else 1
    x = rng.standard_normal((6, 4)).astype(np.float32)
    h0 = rng.standard_normal((2 * D, 5)).astype(np.float32)
    out, h_n = m(x, h0)
    assert out.shape == (6, D * 5) and h_n.shape == (2 * D, 5)
    g = rng.standard_normal(out.shape).astype(np.float32)
    gx, gh = m.backward(g)
    grads1 = [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    out_b, h_n_b = m(x[:, None], h0[:, None])
    gx_b, gh_b = m.backward(g[:, None])
    np.testing.assert_array_equal(out, out_b[:, 0])
    np.testing.assert_array_equal(h_n, h_n_b[:, 0])
    np.testing.assert_array_equal(gx, gx_b[:, 0])
    np.testing.assert_array_equal(gh, gh_b[:, 0])
    for a, p in zip(grads1, m.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_gradients_accumulate_until_zero_grad(backend):
    rng = np.random.default_rng(4)
    m = elman.RNN(3, 4, seed=0, backend=backend, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    for _ in range(2):
        out, _ = m(x)
        m.backward(np.ones_like(out))
    twice = [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())
    out, _ = m(x)
    m.backward(np.ones_like(out))
    for a, p in zip(twice, m.parameters()):
        np.testing.assert_allclose(a, 2 * p.grad, rtol=1e-12)


def test_backward_without_forward_or_twice_raises(backend):
    m = elman.RNN(2, 3, backend=backend)
    with pytest.raises(RuntimeError, match="preceding forward"):
        m.backward()
    m(np.zeros((2, 1, 2), np.float32))
    m.backward()
    with pytest.raises(RuntimeError, match="only once"):
        m.backward()
    with elman.no_grad():
        m(np.zeros((2, 1, 2), np.float32))
    with pytest.raises(RuntimeError):
        m.backward()


def test_parameter_changes_take_effect_at_next_call(backend):
    rng = np.random.default_rng(5)
    m = elman.RNN(3, 4, seed=1, backend=backend)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    out1, _ = m(x)
    m.weight_hh_l0.data *= 0.5                      # in place
    out2, _ = m(x)
    m.weight_ih_l0.data = np.zeros((4, 3), np.float32)  # replaced
    out3, _ = m(x)
    ref = elman.RNN(3, 4, seed=1, backend="numpy")
    ref.load_state_dict(m.state_dict())
    assert not np.array_equal(out1, out2)
    assert_close(out3, ref(x)[0], np.float32)
    with pytest.raises(ValueError, match=r"weight_ih_l0.data must have shape \(4, 3\)"):
        m.weight_ih_l0.data = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="weight_ih_l0.data must have dtype float32"):
        m.weight_ih_l0.data = np.zeros((4, 3))


def test_dropout_between_layers_only_in_training(backend):
    rng = np.random.default_rng(6)
    kw = dict(input_size=3, hidden_size=8, num_layers=3, dropout=0.5, dtype=np.float64)
    m, ref = _pair(backend, np.float64, **{k: v for k, v in kw.items() if k != "dtype"})
    x = rng.standard_normal((5, 4, 3))
    out, _ = m(x)
    ro, _ = ref(x)
    assert_close(out, ro, np.float64)          # same seed: same masks
    g = rng.standard_normal(out.shape)
    assert_close(m.backward(g)[0], ref.backward(g)[0], np.float64)
    _compare_models(m, ref, np.float64)
    m.eval()
    e1, _ = m(x)
    e2, _ = m(x)
    np.testing.assert_array_equal(e1, e2)      # no dropout in eval mode
    m.train()
    t1, _ = m(x)
    assert not np.allclose(t1, e1)


def test_zero_batch_gives_empty_outputs_and_zero_gradients(backend):
    m = elman.RNN(3, 4, num_layers=2, bidirectional=True, backend=backend)
    out, h_n = m(np.zeros((5, 0, 3), np.float32))
    assert out.shape == (5, 0, 8) and h_n.shape == (4, 0, 4)
    gx, gh = m.backward(np.zeros((5, 0, 8), np.float32))
    assert gx.shape == (5, 0, 3) and gh.shape == (4, 0, 4)
    assert all(not p.grad.any() for p in m.parameters())


def test_state_dict_round_trip_and_validation():
    m = elman.RNN(3, 4, num_layers=2, bidirectional=True, seed=0)
    names = [n for n, _ in m.named_parameters()]
    assert names == [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
                     for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    sd = m.state_dict()
    other = elman.RNN(3, 4, num_layers=2, bidirectional=True, seed=1)
    other.load_state_dict({k: v.astype(np.float64) for k, v in sd.items()})  # cast on load
    for k, v in other.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, sd[k])
    before = other.state_dict()
    bad = dict(sd)
    bad["weight_hh_l1"] = np.zeros((5, 5))
    bad["weight_ih_l0"] = np.ones((4, 3))  # valid, must not be applied either
    with pytest.raises(ValueError, match=r"'weight_hh_l1' must have shape \(4, 4\)"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "bias_ih_l0"})
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load_state_dict({**sd, "extra": np.zeros(1)})
    with pytest.raises(TypeError, match="real numbers"):
        other.load_state_dict({**sd, "bias_ih_l0": np.zeros(4, complex)})
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_init_is_uniform_within_bound_and_seeded():
    m = elman.RNN(10, 16, num_layers=2, seed=42)
    for p in m.parameters():
        assert np.abs(p.data).max() <= 1 / 4 and p.data.std() > 0.1
    m2 = elman.RNN(10, 16, num_layers=2, seed=42)
    for a, b in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
        assert a.grad.shape == a.shape and not a.grad.any()


# ----------------------------------------------------------------------------- finite differences
def _numeric_grad(loss_fn, a):
    """Central differences of the scalar loss_fn() w.r.t. the array a (perturbed in place)."""
    num = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + EPS
        up = loss_fn()
        a[i] = old - EPS
        down = loss_fn()
        a[i] = old
        num[i] = (up - down) / (2 * EPS)
    return num


def _fd_check(loss_fn, arrays, analytic, rtol=1e-6, atol=1e-8):
    for a, g in zip(arrays, analytic):
        np.testing.assert_allclose(g, _numeric_grad(loss_fn, a), rtol=rtol, atol=atol)


@pytest.mark.parametrize("bidir,act", [(False, "tanh"), (True, "relu"), (True, "tanh")])
def test_rnn_finite_differences(backend, bidir, act):
    rng = np.random.default_rng(8)
    m = elman.RNN(3, 4, num_layers=2, bidirectional=bidir, nonlinearity=act, dtype=np.float64,
                  seed=2, backend=backend)
    D = 2 if bidir else 1
    x = rng.standard_normal((5, 2, 3))
    h0 = rng.standard_normal((2 * D, 2, 4))
    lengths = np.array([5, 3])
    g_out = rng.standard_normal((5, 2, D * 4))
    g_hn = rng.standard_normal((2 * D, 2, 4))

    def loss():
        with elman.no_grad():
            out, h_n = m(x, h0, lengths)
        return np.sum(out * g_out) + np.sum(h_n * g_hn)

    m(x, h0, lengths)
    gx, gh = m.backward(g_out, g_hn)
    _fd_check(loss, [x, h0] + [p.data for p in m.parameters()], [gx, gh] + [p.grad for p in m.parameters()])


def test_rnn_cell_matches_rnn_and_finite_differences(backend):
    rng = np.random.default_rng(9)
    cell = elman.RNNCell(3, 4, dtype=np.float64, seed=5, backend=backend)
    x = rng.standard_normal((2, 3))
    h = rng.standard_normal((2, 4))
    g = rng.standard_normal((2, 4))

    def loss():
        with elman.no_grad():
            return np.sum(cell(x, h) * g)

    h1 = cell(x, h)
    expected = np.tanh(x @ cell.weight_ih.data.T + cell.bias_ih.data + h @ cell.weight_hh.data.T
                       + cell.bias_hh.data)
    np.testing.assert_allclose(h1, expected, rtol=1e-12)
    gx, gh = cell.backward(g)
    _fd_check(loss, [x, h] + [p.data for p in cell.parameters()], [gx, gh] + [p.grad for p in cell.parameters()])
    # unbatched
    h1u = cell(x[0], h[0])
    np.testing.assert_array_equal(h1u, h1[0])
    gxu, ghu = cell.backward(g[0])
    assert gxu.shape == (3,) and ghu.shape == (4,)
    np.testing.assert_allclose(gxu, gx[0], rtol=1e-12)


def test_linear_finite_differences():
    rng = np.random.default_rng(10)
    lin = elman.Linear(4, 3, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 2, 4))
    g = rng.standard_normal((5, 2, 3))

    def loss():
        with elman.no_grad():
            return np.sum(lin(x) * g)

    y = lin(x)
    assert y.shape == (5, 2, 3)
    gx = lin.backward(g)
    _fd_check(loss, [x, lin.weight.data, lin.bias.data], [gx, lin.weight.grad, lin.bias.grad])


def test_embedding_gradient_and_padding():
    rng = np.random.default_rng(11)
    emb = elman.Embedding(6, 3, padding_idx=0, dtype=np.float64, seed=1)
    assert not emb.weight.data[0].any()
    idx = np.array([[1, 0, 2], [2, 5, 0]])
    g = rng.standard_normal((2, 3, 3))

    def loss():
        with elman.no_grad():
            return np.sum(emb(idx) * g)

    out = emb(idx)
    np.testing.assert_array_equal(out, emb.weight.data[idx])
    assert emb.backward(g) is None
    expected = np.zeros((6, 3))
    for (i, j), k in np.ndenumerate(idx):
        if k != 0:
            expected[k] += g[i, j]
    np.testing.assert_allclose(emb.weight.grad, expected, rtol=1e-14)
    num = _numeric_grad(loss, emb.weight.data)
    num[0] = 0  # the padding row is never updated
    np.testing.assert_allclose(emb.weight.grad, num, rtol=1e-6, atol=1e-8)
