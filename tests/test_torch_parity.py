"""Parity with torch.nn.RNN / torch.nn.RNNCell (skipped when torch is not installed): the same
state_dict and input give the same outputs and gradients, packed sequences included."""

import itertools

import numpy as np
import pytest

import elman
from conftest import assert_close, max_abs, torch_or_skip

torch = torch_or_skip()

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _torch_run(tm, x, h0, lengths, g_out, g_hn, batch_first):
    tx = torch.tensor(x, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    if lengths is None:
        out, h_n = tm(tx, th0)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first,
                                                         enforce_sorted=False)
        pout, h_n = tm(packed, th0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(pout, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    (out * torch.tensor(g_out)).sum().add((h_n * torch.tensor(g_hn)).sum()).backward()
    return out.detach().numpy(), h_n.detach().numpy(), tx.grad.numpy(), th0.grad.numpy()


CONFIGS = list(itertools.product([1, 2, 3], [False, True], ["tanh", "relu"], [True, False],
                                 [False, True], [None, [5, 1, 7, 5]], [np.float32, np.float64]))


@pytest.mark.parametrize("layers,bidir,act,bias,batch_first,lengths,dtype", CONFIGS)
def test_rnn_matches_torch(backend, layers, bidir, act, bias, batch_first, lengths, dtype):
    rng = np.random.default_rng(layers + 10 * bidir)
    T, B, I, H = 7, 4, 5, 6
    D = 2 if bidir else 1
    tm = torch.nn.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                      bidirectional=bidir, dtype=TORCH_DTYPE[dtype])
    m = elman.RNN(I, H, num_layers=layers, nonlinearity=act, bias=bias, batch_first=batch_first,
                  bidirectional=bidir, dtype=dtype, backend=backend)
    m.load_state_dict(tm.state_dict())  # torch tensors go straight in
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    out, h_n = m(x, h0, lengths)
    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_hn = rng.standard_normal(h_n.shape).astype(dtype)
    gx, gh = m.backward(g_out, g_hn)
    t_out, t_hn, t_gx, t_gh = _torch_run(tm, x, h0, lengths, g_out, g_hn, batch_first)
    assert_close(out, t_out, dtype, what="out")
    assert_close(h_n, t_hn, dtype, what="h_n")
    assert_close(gx, t_gx, dtype, what="grad_x")
    assert_close(gh, t_gh, dtype, what="grad_h0")
    tgrads = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    scale = max_abs(*tgrads.values())
    for name, p in m.named_parameters():
        assert_close(p.grad, tgrads[name], dtype, "weight", name, scale)


@pytest.mark.parametrize("act,bias", [("tanh", True), ("relu", False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rnn_cell_matches_torch(backend, act, bias, dtype):
    rng = np.random.default_rng(3)
    tc = torch.nn.RNNCell(5, 7, bias=bias, nonlinearity=act, dtype=TORCH_DTYPE[dtype])
    c = elman.RNNCell(5, 7, bias=bias, nonlinearity=act, dtype=dtype, backend=backend)
    c.load_state_dict(tc.state_dict())
    x = rng.standard_normal((3, 5)).astype(dtype)
    h = rng.standard_normal((3, 7)).astype(dtype)
    g = rng.standard_normal((3, 7)).astype(dtype)
    h1 = c(x, h)
    gx, gh = c.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    th = torch.tensor(h, requires_grad=True)
    th1 = tc(tx, th)
    (th1 * torch.tensor(g)).sum().backward()
    assert_close(h1, th1.detach().numpy(), dtype)
    assert_close(gx, tx.grad.numpy(), dtype)
    assert_close(gh, th.grad.numpy(), dtype)
    scale = max_abs(*(p.grad.numpy() for p in tc.parameters()))
    for name, p in tc.named_parameters():
        assert_close(c.state_dict()[name], p.detach().numpy(), dtype)
        assert_close(getattr(c, name).grad, p.grad.numpy(), dtype, "weight", name, scale)


def test_default_init_distribution_matches_torch_bounds():
    m = elman.RNN(8, 32, seed=0)
    tm = torch.nn.RNN(8, 32)
    for (name, p), (tname, tp) in zip(m.named_parameters(), tm.named_parameters()):
        assert name == tname and p.shape == tuple(tp.shape)
        bound = 1 / np.sqrt(32)
        assert np.abs(p.data).max() <= bound and tp.abs().max().item() <= bound
