"""Keras SimpleRNN weight interchange (elman.RNN.from_keras / to_keras_weights): checked against
an independent float64 loop of SimpleRNN's semantics, and against a real keras.layers.SimpleRNN
(Keras 3 on the torch backend) where keras is importable."""

import os

import numpy as np
import pytest

import elman
from conftest import assert_close

ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def keras_simple_rnn(x, kernel, recurrent_kernel, bias=None, activation="tanh"):
    """Keras SimpleRNN, written from its definition in float64: x (B, T, I) batch-major,
    h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel), h_0 = 0.
    Returns the output sequence (B, T, H) and the final state (B, H)."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    h = np.zeros((B, kernel.shape[1]))                                    # (B, H)
    outs = []
    for t in range(T):
        z = x[:, t] @ np.asarray(kernel, np.float64)                      # (B, H)
        if bias is not None:
            z = z + np.asarray(bias, np.float64)
        h = ACT[activation](z + h @ np.asarray(recurrent_kernel, np.float64))
        outs.append(h)
    return np.stack(outs, axis=1), h                                      # (B, T, H), (B, H)


def random_keras_weights(rng, I, H, bias, dtype):
    w = [rng.uniform(-0.6, 0.6, (I, H)), rng.uniform(-0.6, 0.6, (H, H))]
    if bias:
        w.append(rng.uniform(-0.3, 0.3, H))
    return [a.astype(dtype) for a in w]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation,bias", [("tanh", True), ("relu", True), ("tanh", False)])
def test_from_keras_weights_matches_simple_rnn_semantics(dtype, activation, bias):
    rng = np.random.default_rng(0)
    B, T, I, H = 3, 9, 4, 5
    w = random_keras_weights(rng, I, H, bias, dtype)
    x = rng.standard_normal((B, T, I)).astype(dtype)
    rnn = elman.RNN.from_keras(w, nonlinearity=None if activation == "tanh" else activation)
    assert rnn.batch_first and rnn.dtype == dtype and rnn.bias == bias
    assert rnn.nonlinearity == activation
    out, h_n = rnn(x)
    exp_out, exp_h = keras_simple_rnn(x, *w, activation=activation) if bias else \
        keras_simple_rnn(x, *w, None, activation)
    assert_close(out, exp_out, dtype, what="outputs")
    assert_close(h_n[0], exp_h, dtype, what="final state")


@pytest.mark.parametrize("bias", [True, False])
def test_to_keras_weights_round_trip(bias):
    rng = np.random.default_rng(1)
    rnn = elman.RNN(4, 6, bias=bias, batch_first=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((2, 7, 4))
    w = rnn.to_keras_weights()
    assert [a.shape for a in w] == [(4, 6), (6, 6), (6,)][:3 if bias else 2]
    out, h_n = rnn(x)
    exp_out, exp_h = keras_simple_rnn(x, *w) if bias else keras_simple_rnn(x, *w, None)
    assert_close(out, exp_out, np.float64, what="outputs")
    assert_close(h_n[0], exp_h, np.float64, what="final state")
    again = elman.RNN.from_keras(w)  # one bias: bias_ih carries bias_ih + bias_hh
    assert_close(again(x)[0], out, np.float64, what="round trip")
    w[0][0, 0] = 123.0  # copies, not views of the parameters
    assert rnn.weight_ih_l0.data[0, 0] != 123.0


def test_go_backwards_recipe():
    """Keras go_backwards=True reads x_T .. x_1 and returns that order: feed x[:, ::-1]."""
    rng = np.random.default_rng(3)
    w = random_keras_weights(rng, 3, 4, True, np.float64)
    x = rng.standard_normal((2, 6, 3))
    out, h_n = elman.RNN.from_keras(w)(x[:, ::-1])
    exp_out, exp_h = keras_simple_rnn(x[:, ::-1], *w)
    assert_close(out, exp_out, np.float64)
    assert_close(h_n[0], exp_h, np.float64)


class SimpleRNN:
    """A stand-in with a Keras SimpleRNN's interface (named as Keras names it), for the
    argument checks; the real layer is tested below when keras is installed."""

    def __init__(self, weights, **config):
        self.weights = weights
        self.config = {"activation": "tanh", "use_bias": True, "go_backwards": False, **config}

    def get_weights(self):
        return self.weights

    def get_config(self):
        return self.config


def test_from_keras_bad_arguments():
    rng = np.random.default_rng(4)
    w = random_keras_weights(rng, 3, 4, True, np.float32)
    with pytest.raises(ValueError, match="recurrent_kernel must have shape \\(4, 4\\)"):
        elman.RNN.from_keras([w[0], w[1][:3]])
    with pytest.raises(ValueError, match="bias must have shape \\(4,\\), got \\(5,\\)"):
        elman.RNN.from_keras([w[0], w[1], np.zeros(5)])
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        elman.RNN.from_keras([w[2], w[1]])
    with pytest.raises(TypeError, match="from_keras expects"):
        elman.RNN.from_keras(w[:1])
    with pytest.raises(TypeError, match="from_keras expects a keras.layers.SimpleRNN"):
        elman.RNN.from_keras(elman.RNN(3, 4))
    with pytest.raises(ValueError, match="activation 'sigmoid' has no equivalent"):
        elman.RNN.from_keras(SimpleRNN(w, activation="sigmoid"))
    with pytest.raises(ValueError, match="go_backwards=True"):
        elman.RNN.from_keras(SimpleRNN(w, go_backwards=True))
    with pytest.raises(ValueError, match="no weights yet"):
        elman.RNN.from_keras(SimpleRNN([]))
    with pytest.raises(ValueError, match="expected 2 weights"):
        elman.RNN.from_keras(SimpleRNN(w, use_bias=False))
    rnn = elman.RNN.from_keras(SimpleRNN(w[:2], activation="relu", use_bias=False))
    assert rnn.nonlinearity == "relu" and not rnn.bias
    with pytest.raises(ValueError, match="num_layers=1 and bidirectional=False"):
        elman.RNN(3, 4, num_layers=2).to_keras_weights()
    with pytest.raises(ValueError, match="num_layers=1 and bidirectional=False"):
        elman.RNN(3, 4, bidirectional=True).to_keras_weights()


# ----------------------------------------------------------------------------- real Keras
@pytest.fixture(scope="module")
def keras():
    # Keras 3 picks its backend at import; the torch backend runs on the CPU build of torch.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    return pytest.importorskip("keras")


# Keras's own NumPy 2 deprecation notices are not about elman.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")
@pytest.mark.parametrize("activation,use_bias", [("tanh", True), ("relu", False)])
def test_against_real_keras_simple_rnn(keras, activation, use_bias):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 4)).astype(np.float32)
    layer = keras.layers.SimpleRNN(6, activation=activation, use_bias=use_bias,
                                   return_sequences=True, return_state=True)
    layer(x)  # builds it with Keras's own initializers
    if use_bias:  # Keras initialises the bias to zeros; make it count
        layer.set_weights(layer.get_weights()[:2] + [rng.uniform(-0.3, 0.3, 6).astype(np.float32)])
    k_out, k_h = (keras.ops.convert_to_numpy(t) for t in layer(x))
    rnn = elman.RNN.from_keras(layer)
    out, h_n = rnn(x)
    assert_close(out, k_out, np.float32, what="outputs")
    assert_close(h_n[0], k_h, np.float32, what="final state")
    # and back: elman's weights into the Keras layer
    other = elman.RNN(4, 6, nonlinearity=activation, bias=use_bias, batch_first=True, seed=6)
    layer.set_weights(other.to_keras_weights())
    k_out, k_h = (keras.ops.convert_to_numpy(t) for t in layer(x))
    out, h_n = other(x)
    assert_close(out, k_out, np.float32, what="outputs after set_weights")
    assert_close(h_n[0], k_h, np.float32, what="final state after set_weights")


@pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")
def test_against_real_keras_go_backwards(keras):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    layer = keras.layers.SimpleRNN(4, go_backwards=True, return_sequences=True, return_state=True)
    layer(x)
    k_out, k_h = (keras.ops.convert_to_numpy(t) for t in layer(x))
    with pytest.raises(ValueError, match="go_backwards=True"):
        elman.RNN.from_keras(layer)
    out, h_n = elman.RNN.from_keras(layer.get_weights())(np.ascontiguousarray(x[:, ::-1]))
    assert_close(out, k_out, np.float32, what="outputs")
    assert_close(h_n[0], k_h, np.float32, what="final state")
