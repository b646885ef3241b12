"""End to end: a trajectory through every backend agrees with the reference, and a real
sequence task is learned."""

import numpy as np
import pytest

import elman
from conftest import assert_close


def _model(backend, dtype, seed=0):
    rnn = elman.RNN(3, 8, num_layers=2, bidirectional=True, dtype=dtype, seed=seed, backend=backend)
    head = elman.Linear(16, 2, dtype=dtype, seed=seed + 1)
    return rnn, head


def _train(backend, dtype, steps=8):
    """K steps of forward, per-step loss, BPTT, clipping and SGD; returns losses and params."""
    rnn, head = _model(backend, dtype)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 4, 3)).astype(dtype)
    y = rng.standard_normal((12, 4, 2)).astype(dtype)
    lengths = np.array([12, 7, 9, 3])
    mask = np.arange(12)[:, None] < lengths[None, :]
    loss = elman.MSELoss()
    opt = elman.SGD(rnn.parameters() + head.parameters(), lr=0.1, momentum=0.9, clip_norm=0.5)
    losses, norms = [], []
    for _ in range(steps):
        out, _ = rnn(x, lengths=lengths)
        losses.append(loss(head(out), y, mask=mask))
        rnn.backward(head.backward(loss.backward()))
        norms.append(opt.step())
        opt.zero_grad()
    return losses, norms, rnn.parameters() + head.parameters()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_trajectory_matches_reference(backend, dtype):
    l_k, n_k, p_k = _train(backend, dtype)
    l_r, n_r, p_r = _train("numpy", dtype)
    assert_close(l_k, l_r, dtype, what="losses")
    assert_close(n_k, n_r, dtype, what="gradient norms")
    for a, b in zip(p_k, p_r):
        assert_close(a.data, b.data, dtype, what=a.name)


def test_learns_whether_a_bit_sequence_sums_above_half(backend):
    """Many-to-one: is the sum of 20 random bits above 10? The majority class is right 58.8%
    of the time (P(Bin(20, 1/2) > 10) = 0.412) and a model that only roughly counts stays near
    80%; 95% on held-out sequences needs a learned counter. Measured on this task: 98-99.8% after
    30 epochs (~1.5 s)."""
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.integers(0, 2, (20, n, 1)).astype(np.float32)
        return x, (x.sum(axis=(0, 2)) > 10).astype(np.float32)[:, None]

    xtr, ytr = data(4000)
    xte, yte = data(2000)
    rnn = elman.RNN(1, 16, seed=0, backend=backend)
    head = elman.Linear(16, 1, seed=1)
    loss = elman.BCEWithLogitsLoss()
    opt = elman.SGD(rnn.parameters() + head.parameters(), lr=0.05, momentum=0.9, clip_norm=1.0)
    for epoch in range(30):
        if epoch == 20:
            opt.lr = 0.01
        perm = rng.permutation(len(ytr))
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            _, h_n = rnn(xtr[:, idx])
            loss(head(h_n[-1]), ytr[idx])
            g_hn = np.zeros_like(h_n)
            g_hn[-1] = head.backward(loss.backward())
            rnn.backward(None, g_hn)
            opt.step()
            opt.zero_grad()
    with elman.no_grad():
        _, h_n = rnn(xte)
        accuracy = np.mean((head(h_n[-1]) > 0) == (yte > 0.5))
    assert accuracy >= 0.95, accuracy
