"""Bad input gives a clear ValueError / TypeError naming the argument with expected vs actual,
through the layers, the functional entry points and the compiled binding itself."""

import numpy as np
import pytest

import elman
from elman import functional as F

pytestmark = pytest.mark.bad_input  # every case here is one (tools/count_bad_inputs.py)


def _rnn(**kw):
    return elman.RNN(4, 3, **kw)


X = np.zeros((5, 2, 4), np.float32)


@pytest.mark.parametrize("x,err,match", [
    (np.zeros(4, np.float32), ValueError, "Expected input to be 2-D or 3-D, got 1-D"),
    (np.zeros((1, 5, 2, 4), np.float32), ValueError, "Expected input to be 2-D or 3-D, got 4-D"),
    (np.zeros((5, 2, 7), np.float32), ValueError, "must be equal to input_size. Expected 4, got 7"),
    (np.zeros((0, 2, 4), np.float32), ValueError, "sequence length to be larger than 0"),
    (np.zeros((5, 2, 4)), TypeError, "input must have dtype float32, got float64"),
    (np.zeros((5, 2, 4), np.int32), TypeError, "input must have dtype float32, got int32"),
    (np.zeros((5, 2, 4), np.float16), TypeError, "got float16"),
    (np.zeros((5, 2, 4), np.complex64), TypeError, "got complex64"),
    (np.zeros((5, 2, 4), bool), TypeError, "got bool"),
])
def test_bad_input(backend, x, err, match):
    with pytest.raises(err, match=match):
        _rnn(backend=backend)(x)


@pytest.mark.parametrize("h0,err,match", [
    (np.zeros((1, 3, 3), np.float32), ValueError, r"Expected hidden size \(1, 2, 3\), got \(1, 3, 3\)"),
    (np.zeros((2, 3), np.float32), ValueError, "For batched 3-D input, h0 should also be 3-D but got 2-D"),
    (np.zeros((1, 2, 3)), TypeError, "h0 must have dtype float32, got float64"),
])
def test_bad_h0(backend, h0, err, match):
    with pytest.raises(err, match=match):
        _rnn(backend=backend)(X, h0)


@pytest.mark.parametrize("lengths,err,match", [
    ([5, 6], ValueError, r"lengths must be in \[1, T\] = \[1, 5\]"),
    ([0, 3], ValueError, r"lengths must be in \[1, T\]"),
    ([-1, 3], ValueError, r"lengths must be in \[1, T\]"),
    ([5, 3, 2], ValueError, r"lengths must have shape \(2,\)"),
    ([5.0, 3.0], TypeError, "lengths must be integers, got dtype float64"),
    ([True, True], TypeError, "lengths must be integers, got dtype bool"),
])
def test_bad_lengths(backend, lengths, err, match):
    with pytest.raises(err, match=match):
        _rnn(backend=backend)(X, lengths=lengths)


@pytest.mark.parametrize("kw,err,match", [
    (dict(input_size=0, hidden_size=3), ValueError, "input_size must be greater than zero"),
    (dict(input_size=4, hidden_size=-1), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=4, hidden_size=3.0), TypeError, "hidden_size should be of type int, got: float"),
    (dict(input_size=True, hidden_size=3), TypeError, "input_size should be of type int, got: bool"),
    (dict(input_size=4, hidden_size=3, num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(input_size=4, hidden_size=3, nonlinearity="sigmoid"), ValueError, "Unknown nonlinearity 'sigmoid'"),
    (dict(input_size=4, hidden_size=3, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    (dict(input_size=4, hidden_size=3, dropout=1.5), ValueError, "dropout should be a number in range"),
    (dict(input_size=4, hidden_size=3, dropout=True), TypeError, "dropout should be a number in range"),
    (dict(input_size=4, hidden_size=3, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(input_size=4, hidden_size=3, dtype=np.float16), TypeError, "dtype must be float32 or float64"),
])
def test_bad_constructor(kw, err, match):
    with pytest.raises(err, match=match):
        elman.RNN(**kw)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        elman.RNN(4, 3, dropout=0.5)


def test_bad_backward_arguments(backend):
    m = _rnn(backend=backend)
    m(X)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(5, 2, 3\), got \(5, 2, 4\)"):
        m.backward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="grad_h_n must have dtype float32"):
        m.backward(None, np.zeros((1, 2, 3)))
    m.backward()  # a failed backward consumed nothing


def test_rnn_cell_errors(backend):
    c = elman.RNNCell(4, 3, backend=backend)
    with pytest.raises(ValueError, match="Expected input to be 1-D or 2-D, got 3-D"):
        c(np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="input has inconsistent input_size: got 5, expected 4"):
        c(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="hidden has inconsistent hidden_size: got 4, expected 3"):
        c(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Input batch size 2 doesn't match hidden batch size 3"):
        c(np.zeros((2, 4), np.float32), np.zeros((3, 3), np.float32))


def test_functional_errors(backend):
    W_ih = np.zeros((3, 4), np.float32)
    W_hh = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight_ih must have shape \(3, 4\), got \(3, 5\)"):
        F.rnn_forward(X, np.zeros((3, 5), np.float32), W_hh, backend=backend)
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(H, H\)"):
        F.rnn_forward(X, W_ih, np.zeros((3, 2), np.float32), backend=backend)
    with pytest.raises(ValueError, match=r"bias_hh must have shape \(3,\)"):
        F.rnn_forward(X, W_ih, W_hh, None, np.zeros(4, np.float32), backend=backend)
    with pytest.raises(TypeError, match="weight_ih must have dtype float32, got float64"):
        F.rnn_forward(X, W_ih.astype(np.float64), W_hh, backend=backend)
    with pytest.raises(ValueError, match="x must be 3-D"):
        F.rnn_forward(X[0], W_ih, W_hh, backend=backend)
    with pytest.raises(ValueError, match=r"out must have shape \(5, 2, 3\)"):
        F.rnn_forward(X, W_ih, W_hh, out=np.zeros((5, 2, 4), np.float32), backend=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        F.rnn_forward(X, W_ih, W_hh, backend="tpu")


def test_binding_validates_on_its_own():
    """The compiled module checks everything again (it is a boundary too) and never crashes."""
    core = pytest.importorskip("elman._core")
    W_ih = np.zeros((3, 4), np.float32)
    W_hh = np.zeros((3, 3), np.float32)
    out = np.zeros((5, 2, 3), np.float32)
    h_n = np.zeros((2, 3), np.float32)
    args = [X, W_ih, W_hh, None, None, None, None, "tanh", False, out, h_n]
    core.rnn_forward(*args)
    cases = [
        (0, X.astype(np.float64), TypeError, "W_ih must have dtype float64"),
        (0, X.astype(np.int64), TypeError, "x must have dtype float32 or float64, got int64"),
        (1, np.zeros((3, 5), np.float32), ValueError, r"W_ih must have shape \(3, 4\), got \(3, 5\)"),
        (5, np.zeros((2, 4), np.float32), ValueError, r"h0 must have shape \(2, 3\), got \(2, 4\)"),
        (6, np.array([6, 1]), ValueError, r"lengths must be in \[1, T\] = \[1, 5\], got lengths\[0\] = 6"),
        (6, np.array([1, 1], np.int32), TypeError, "lengths must have dtype int64"),
        (7, "sigmoid", ValueError, "Unknown nonlinearity 'sigmoid'"),
        (9, np.zeros((5, 2, 3), np.float32)[:, :, ::-1], ValueError, "out must have evenly strided rows"),
        (9, np.zeros((5, 2, 3), np.float32).copy(order="F"), ValueError, "out must have evenly strided rows"),
        (10, np.zeros((2, 3), np.float32)[::-1].copy()[:, :2], ValueError, r"h_n must have shape \(2, 3\)"),
        (0, [[[0.0]]], TypeError, "x must be a numpy.ndarray, got list"),
    ]
    for i, value, err, match in cases:
        bad = list(args)
        bad[i] = value
        with pytest.raises(err, match=match):
            core.rnn_forward(*bad)
    ro = np.zeros((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="h_n must be writable"):
        core.rnn_forward(*args[:10], ro)
