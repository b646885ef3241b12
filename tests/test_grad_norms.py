"""rnn.grad_norms of a multi-layer, bidirectional RNN equal the per-step ||dL/dh_t|| of the
float64 reference, composed here layer by layer and direction by direction from
elman.reference.rnn_forward / rnn_backward (independently of the layer code)."""

import numpy as np
import pytest

import elman
from elman import reference as ref
from conftest import assert_close


def _reference_norms(rnn, x, h0, lengths, grad_out, grad_h_n):
    """{"l{k}" / "l{k}_reverse": (T,) norms} from the float64 reference."""
    D, H, nL = rnn.num_directions, rnn.hidden_size, rnn.num_layers
    p = {k: v.astype(np.float64) for k, v in rnn.state_dict().items()}
    inputs, outs = [], []
    inp = x.astype(np.float64)
    for k in range(nL):                                           # forward, keeping each layer
        out = []
        for d in range(D):
            s = f"l{k}" + ("_reverse" if d else "")
            o, _ = ref.rnn_forward(inp, p[f"weight_ih_{s}"], p[f"weight_hh_{s}"],
                                   p.get(f"bias_ih_{s}"), p.get(f"bias_hh_{s}"),
                                   h0[k * D + d], lengths, rnn.nonlinearity, reverse=d == 1)
            out.append(o)                                         # (T, B, H)
        inputs.append(inp)
        outs.append(out)
        inp = np.concatenate(out, axis=-1)                        # (T, B, D * H)
    norms = {}
    g_layer = grad_out.astype(np.float64)                         # (T, B, D * H)
    for k in reversed(range(nL)):
        g_x = np.zeros_like(inputs[k])
        for d in range(D):
            s = f"l{k}" + ("_reverse" if d else "")
            r = ref.rnn_backward(inputs[k], p[f"weight_ih_{s}"], p[f"weight_hh_{s}"], outs[k][d],
                                 h0[k * D + d], g_layer[:, :, d * H:(d + 1) * H],
                                 grad_h_n[k * D + d], lengths, rnn.nonlinearity,
                                 reverse=d == 1)
            norms[s] = r["grad_norms"]
            g_x += r["grad_x"]
        g_layer = g_x
    return norms


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_grad_norms_equal_reference(backend, dtype, act):
    rng = np.random.default_rng(7)
    T, B, I, H, nL, D = 9, 4, 5, 6, 3, 2
    rnn = elman.RNN(I, H, num_layers=nL, bidirectional=True, nonlinearity=act, dtype=dtype,
                    seed=3, backend=backend)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((nL * D, B, H)).astype(dtype)
    lengths = np.array([9, 1, 5, 9])
    out, h_n = rnn(x, h0, lengths)
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_h_n = rng.standard_normal(h_n.shape).astype(dtype)
    rnn.backward(grad_out, grad_h_n)
    expected = _reference_norms(rnn, x, h0, lengths, grad_out, grad_h_n)
    assert sorted(rnn.grad_norms) == sorted(expected)
    for name, norms in expected.items():
        assert rnn.grad_norms[name].shape == (T,)
        assert_close(rnn.grad_norms[name], norms, dtype, what=f"grad_norms[{name!r}]")


def test_grad_norms_show_decay_and_growth(backend):
    """The story the gradients example tells, with a loss on the last state only, in cases
    where the answer is known in closed form: ||dL/dh_{t-1}|| = ||W_hh^T (f'(z_t) * dL/dh_t)||.

    W_hh = gain * P with P a permutation (orthogonal): ||W_hh^T v|| = gain * ||v||.
    - tanh, gain 0.5: |f'| <= 1, so n[0] / n[T-1] <= 0.5^(T-1) (vanishing).
    - relu, gain 2, positive inputs and weights: every unit stays active (f' = 1), so
      n[0] / n[T-1] = 2^(T-1) exactly (exploding)."""
    rng = np.random.default_rng(0)
    T, B, H = 40, 8, 16
    perm = np.eye(H)[rng.permutation(H)]
    x = rng.uniform(0.1, 1.0, (T, B, 3))
    ratios = {}
    for act, gain in (("tanh", 0.5), ("relu", 2.0)):
        rnn = elman.RNN(3, H, nonlinearity=act, dtype=np.float64, seed=1, backend=backend)
        rnn.weight_hh_l0.data[...] = gain * perm
        rnn.weight_ih_l0.data[...] = np.abs(rnn.weight_ih_l0.data)
        rnn.bias_ih_l0.data[...] = 0.5
        rnn.bias_hh_l0.data[...] = 0.0
        _, h_n = rnn(x)
        rnn.backward(grad_h_n=rng.standard_normal(h_n.shape))
        n = rnn.grad_norms["l0"]
        ratios[act] = n[0] / n[-1]
    assert ratios["tanh"] <= 0.5 ** (T - 1) * (1 + 1e-9)
    assert_close(ratios["relu"], 2.0 ** (T - 1), np.float64, what="relu growth 2^(T-1)")
