"""The catalogue of bad input through the public API: every case asserts the exception type of
elman's conventions (TypeError: wrong Python type or dtype; ValueError: wrong shape, size or
value; RuntimeError: a call out of order) and a message that names the argument with expected vs
actual. Cases run on every backend; after a rejected call the module is unchanged and still
works. The compiled module's own checks are in test_core_binding.py."""

import numpy as np
import pytest

import elman
from elman import functional as F
from conftest import HOST_BACKENDS

pytestmark = pytest.mark.reliability

T, B, I, H = 5, 3, 4, 6
f32, f64 = np.float32, np.float64


def x3(dtype=f32, shape=(T, B, I)):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def rnn(backend, **kw):
    return elman.RNN(I, H, seed=0, backend=backend, **kw)


def cell(backend, **kw):
    return elman.RNNCell(I, H, seed=0, backend=backend, **kw)


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def _set(obj, attr, value):
    setattr(obj, attr, value)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# (id, call(backend), exception, regex of the message)
CASES = [
    # -- RNN: input rank, size, length
    ("rnn x 0-D", lambda b: rnn(b)(np.ones((), f32)), ValueError, "Expected input to be 2-D or 3-D, got 0-D"),
    ("rnn x 1-D", lambda b: rnn(b)(np.ones(I, f32)), ValueError, "Expected input to be 2-D or 3-D, got 1-D"),
    ("rnn x 4-D", lambda b: rnn(b)(np.ones((1, T, B, I), f32)), ValueError, "got 4-D"),
    ("rnn x last dim", lambda b: rnn(b)(x3(shape=(T, B, 7))), ValueError,
     "input.shape\\[-1\\] must be equal to input_size. Expected 4, got 7"),
    ("rnn x unbatched last dim", lambda b: rnn(b)(np.ones((T, 5), f32)), ValueError, "Expected 4, got 5"),
    ("rnn x batch_first last dim", lambda b: rnn(b, batch_first=True)(x3(shape=(B, T, 2))), ValueError,
     "Expected 4, got 2"),
    ("rnn T=0", lambda b: rnn(b)(x3(shape=(0, B, I))), ValueError, "sequence length to be larger than 0"),
    ("rnn T=0 unbatched", lambda b: rnn(b)(np.ones((0, I), f32)), ValueError, "larger than 0"),
    ("rnn T=0 batch_first", lambda b: rnn(b, batch_first=True)(x3(shape=(B, 0, I))), ValueError,
     "larger than 0"),
    # -- RNN: h0 (no broadcasting)
    ("rnn h0 batch", lambda b: rnn(b)(x3(), np.zeros((1, B + 1, H), f32)), ValueError,
     r"h0: Expected hidden size \(1, 3, 6\), got \(1, 4, 6\)"),
    ("rnn h0 hidden", lambda b: rnn(b)(x3(), np.zeros((1, B, H - 1), f32)), ValueError,
     r"Expected hidden size \(1, 3, 6\), got \(1, 3, 5\)"),
    ("rnn h0 layers", lambda b: rnn(b, num_layers=2)(x3(), np.zeros((1, B, H), f32)), ValueError,
     r"Expected hidden size \(2, 3, 6\), got \(1, 3, 6\)"),
    ("rnn h0 directions", lambda b: rnn(b, bidirectional=True)(x3(), np.zeros((1, B, H), f32)), ValueError,
     r"Expected hidden size \(2, 3, 6\), got \(1, 3, 6\)"),
    ("rnn h0 broadcastable (1, 1, H)", lambda b: rnn(b)(x3(), np.zeros((1, 1, H), f32)), ValueError,
     r"Expected hidden size \(1, 3, 6\), got \(1, 1, 6\)"),
    ("rnn h0 2-D for batched", lambda b: rnn(b)(x3(), np.zeros((B, H), f32)), ValueError,
     "For batched 3-D input, h0 should also be 3-D but got 2-D"),
    ("rnn h0 3-D for unbatched", lambda b: rnn(b)(np.ones((T, I), f32), np.zeros((1, 1, H), f32)),
     ValueError, "For unbatched 2-D input, h0 should also be 2-D but got 3-D"),
    ("rnn h0 1-D", lambda b: rnn(b)(x3(), np.zeros(H, f32)), ValueError, "should also be 3-D but got 1-D"),
    # -- RNN: dtypes (no silent cast)
    ("rnn x float64", lambda b: rnn(b)(x3(f64)), TypeError, "input must have dtype float32, got float64"),
    ("rnn x float32 into float64", lambda b: rnn(b, dtype=f64)(x3(f32)), TypeError,
     "input must have dtype float64, got float32"),
    ("rnn x int32", lambda b: rnn(b)(x3(np.int32)), TypeError, "input must have dtype float32, got int32"),
    ("rnn x int64", lambda b: rnn(b)(np.ones((T, B, I), np.int64)), TypeError, "got int64"),
    ("rnn x bool", lambda b: rnn(b)(np.ones((T, B, I), bool)), TypeError, "got bool"),
    ("rnn x float16", lambda b: rnn(b)(x3(np.float16)), TypeError, "got float16"),
    ("rnn x complex64", lambda b: rnn(b)(x3(np.complex64)), TypeError, "got complex64"),
    ("rnn x object", lambda b: rnn(b)(x3().astype(object)), TypeError, "got object"),
    ("rnn x str", lambda b: rnn(b)(np.full((T, B, I), "a")), TypeError, "got <U1"),
    ("rnn x list of floats", lambda b: rnn(b)(x3().tolist()), TypeError, "input must have dtype float32, got float64"),
    ("rnn x ragged list", lambda b: rnn(b)([[1.0], [1.0, 2.0]]), TypeError, "input must be an array of float32"),
    ("rnn x None", lambda b: rnn(b)(None), TypeError, "input must be an array of float32, got None"),
    ("rnn h0 float64", lambda b: rnn(b)(x3(), np.zeros((1, B, H))), TypeError, "h0 must have dtype float32, got float64"),
    ("rnn h0 int", lambda b: rnn(b)(x3(), np.zeros((1, B, H), int)), TypeError, "h0 must have dtype float32, got int64"),
    ("rnn h0 big-endian float64", lambda b: rnn(b)(x3(), big_endian(np.zeros((1, B, H)))), TypeError,
     "h0 must have dtype float32, got >f8"),
    # -- RNN: lengths
    ("rnn lengths > T", lambda b: rnn(b)(x3(), lengths=[5, 6, 1]), ValueError,
     r"lengths must be in \[1, T\] = \[1, 5\], got values from 1 to 6"),
    ("rnn lengths 0", lambda b: rnn(b)(x3(), lengths=[5, 0, 1]), ValueError, r"got values from 0 to 5"),
    ("rnn lengths negative", lambda b: rnn(b)(x3(), lengths=[5, -2, 1]), ValueError, r"from -2 to 5"),
    ("rnn lengths count +1", lambda b: rnn(b)(x3(), lengths=[5, 4, 3, 2]), ValueError,
     r"lengths must have shape \(3,\) \(one length per sequence\), got \(4,\)"),
    ("rnn lengths count -1", lambda b: rnn(b)(x3(), lengths=[5, 4]), ValueError, r"got \(2,\)"),
    ("rnn lengths 2-D", lambda b: rnn(b)(x3(), lengths=[[5, 4, 3]]), ValueError, r"got \(1, 3\)"),
    ("rnn lengths scalar", lambda b: rnn(b)(x3(), lengths=5), ValueError, r"got \(\)"),
    ("rnn lengths float", lambda b: rnn(b)(x3(), lengths=[5.0, 4.0, 3.0]), TypeError,
     "lengths must be integers, got dtype float64"),
    ("rnn lengths bool", lambda b: rnn(b)(x3(), lengths=[True, True, True]), TypeError, "got dtype bool"),
    ("rnn lengths object", lambda b: rnn(b)(x3(), lengths=np.array([5, 4, 3], object)), TypeError,
     "got dtype object"),
    ("rnn lengths str", lambda b: rnn(b)(x3(), lengths=["5", "4", "3"]), TypeError, "got dtype <U1"),
    ("rnn lengths uint64 huge", lambda b: rnn(b)(x3(), lengths=np.array([5, 2**63, 1], np.uint64)),
     ValueError, r"lengths must be in \[1, T\]"),
    # -- RNN: backward arguments and order
    ("rnn backward without forward", lambda b: rnn(b).backward(), RuntimeError,
     r"RNN.backward\(\) needs a preceding forward call"),
    ("rnn backward twice", lambda b: _twice(rnn(b)), RuntimeError, "can be back-propagated only once"),
    ("rnn backward after no_grad forward", lambda b: _after_no_grad(rnn(b)), RuntimeError,
     "needs a preceding forward call with gradients enabled"),
    ("rnn grad_out shape", lambda b: _fwd(rnn(b)).backward(np.zeros((T, B, H + 1), f32)), ValueError,
     r"grad_out must have shape \(5, 3, 6\), got \(5, 3, 7\)"),
    ("rnn grad_out batch_first shape", lambda b: _fwd(rnn(b, batch_first=True), (B, T, I)).backward(
        np.zeros((T, B, H), f32)), ValueError, r"grad_out must have shape \(3, 5, 6\), got \(5, 3, 6\)"),
    ("rnn grad_out dtype", lambda b: _fwd(rnn(b)).backward(np.zeros((T, B, H))), TypeError,
     "grad_out must have dtype float32, got float64"),
    ("rnn grad_h_n shape", lambda b: _fwd(rnn(b)).backward(None, np.zeros((B, H), f32)), ValueError,
     r"grad_h_n must have shape \(1, 3, 6\), got \(3, 6\)"),
    ("rnn grad_h_n int", lambda b: _fwd(rnn(b)).backward(None, np.zeros((1, B, H), int)), TypeError,
     "grad_h_n must have dtype float32, got int64"),
    # -- RNN: constructor
    ("rnn input_size 0", lambda b: elman.RNN(0, H), ValueError, "input_size must be greater than zero, got 0"),
    ("rnn hidden_size -1", lambda b: elman.RNN(I, -1), ValueError, "hidden_size must be greater than zero, got -1"),
    ("rnn num_layers 0", lambda b: elman.RNN(I, H, num_layers=0), ValueError, "num_layers must be greater than zero"),
    ("rnn hidden_size float", lambda b: elman.RNN(I, 6.0), TypeError, "hidden_size should be of type int, got: float"),
    ("rnn input_size bool", lambda b: elman.RNN(True, H), TypeError, "input_size should be of type int, got: bool"),
    ("rnn num_layers str", lambda b: elman.RNN(I, H, num_layers="2"), TypeError, "num_layers should be of type int, got: str"),
    ("rnn hidden_size None", lambda b: elman.RNN(I, None), TypeError, "hidden_size should be of type int, got: NoneType"),
    ("rnn hidden_size numpy float", lambda b: elman.RNN(I, np.float64(6)), TypeError, "got: float64"),
    ("rnn nonlinearity unknown", lambda b: elman.RNN(I, H, nonlinearity="sigmoid"), ValueError,
     "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'"),
    ("rnn nonlinearity case", lambda b: elman.RNN(I, H, nonlinearity="TANH"), ValueError, "Unknown nonlinearity 'TANH'"),
    ("rnn nonlinearity None", lambda b: elman.RNN(I, H, nonlinearity=None), TypeError,
     "nonlinearity must be a str, 'tanh' or 'relu', got NoneType"),
    ("rnn backend unknown", lambda b: elman.RNN(I, H, backend="gpu"), ValueError,
     "unknown backend 'gpu'; expected one of 'auto', 'cpu', 'cuda', 'numpy'"),
    ("rnn backend int", lambda b: elman.RNN(I, H, backend=1), TypeError, "backend must be a str or None, got int"),
    ("rnn bias int", lambda b: elman.RNN(I, H, bias=1), TypeError, "bias must be a bool, got int"),
    ("rnn batch_first str", lambda b: elman.RNN(I, H, batch_first="yes"), TypeError, "batch_first must be a bool, got str"),
    ("rnn bidirectional None", lambda b: elman.RNN(I, H, bidirectional=None), TypeError,
     "bidirectional must be a bool, got NoneType"),
    ("rnn dropout > 1", lambda b: elman.RNN(I, H, num_layers=2, dropout=1.5), ValueError,
     "dropout should be a number in range \\[0, 1\\].*got 1.5"),
    ("rnn dropout < 0", lambda b: elman.RNN(I, H, num_layers=2, dropout=-0.1), ValueError, "got -0.1"),
    ("rnn dropout nan", lambda b: elman.RNN(I, H, num_layers=2, dropout=float("nan")), ValueError, "got nan"),
    ("rnn dropout str", lambda b: elman.RNN(I, H, num_layers=2, dropout="0.5"), TypeError,
     "dropout should be a number in range \\[0, 1\\], got str"),
    ("rnn dtype int32", lambda b: elman.RNN(I, H, dtype=np.int32), TypeError, "dtype must be float32 or float64, got int32"),
    ("rnn dtype float16", lambda b: elman.RNN(I, H, dtype=np.float16), TypeError, "got float16"),
    ("rnn dtype complex", lambda b: elman.RNN(I, H, dtype=complex), TypeError, "got complex128"),
    ("rnn dtype nonsense", lambda b: elman.RNN(I, H, dtype="floaty"), TypeError, "got 'floaty'"),
    ("rnn seed negative", lambda b: elman.RNN(I, H, seed=-1), ValueError, "seed must be None or a non-negative int, got -1"),
    ("rnn seed str", lambda b: elman.RNN(I, H, seed="abc"), TypeError, "seed must be None or a non-negative int, got 'abc'"),
    ("rnn seed bool", lambda b: elman.RNN(I, H, seed=True), TypeError, "seed must be None or a non-negative int, got bool"),
    ("rnn 2^80 parameters", lambda b: elman.RNN(2**40, 2**40), MemoryError,
     r"RNN: 2417851639231457372667904 parameters with their gradients needs \d+ bytes"),
    ("rnn train mode str", lambda b: rnn(b).train("no"), TypeError, "mode must be a bool, got str"),
    # -- parameters replaced by the user (validated before any kernel runs)
    ("param data shape", lambda b: _set(rnn(b).weight_hh_l0, "data", np.zeros((H, H + 1), f32)), ValueError,
     r"weight_hh_l0.data must have shape \(6, 6\), got \(6, 7\)"),
    ("param data dtype", lambda b: _set(rnn(b).weight_hh_l0, "data", np.zeros((H, H))), TypeError,
     "weight_hh_l0.data must have dtype float32, got float64"),
    ("param data int", lambda b: _set(rnn(b).bias_ih_l0, "data", np.zeros(H, int)), TypeError,
     "bias_ih_l0.data must have dtype float32, got int64"),
    ("param data read-only", lambda b: _set(rnn(b).weight_ih_l0, "data", _readonly(np.zeros((H, I), f32))),
     ValueError, "weight_ih_l0.data must be writable"),
    ("param data list", lambda b: _set(rnn(b).bias_hh_l0, "data", [0.0] * H), TypeError,
     "bias_hh_l0.data must have dtype float32, got float64"),
    ("param grad shape", lambda b: _set(rnn(b).weight_hh_l0, "grad", np.zeros((H,), f32)), ValueError,
     r"weight_hh_l0.grad must have shape \(6, 6\), got \(6,\)"),
    ("param grad dtype", lambda b: _set(rnn(b).weight_hh_l0, "grad", np.zeros((H, H))), TypeError,
     "weight_hh_l0.grad must have dtype float32, got float64"),
    ("param grad fortran", lambda b: _set(rnn(b).weight_ih_l0, "grad", np.zeros((H, I), f32, order="F")),
     ValueError, "weight_ih_l0.grad must be C-contiguous and aligned"),
    ("param grad read-only", lambda b: _set(rnn(b).weight_ih_l0, "grad", _readonly(np.zeros((H, I), f32))),
     ValueError, "weight_ih_l0.grad must be writable"),
    ("param grad list", lambda b: _set(rnn(b).bias_ih_l0, "grad", [0.0] * H), TypeError,
     "bias_ih_l0.grad must be a numpy.ndarray, got list"),
    ("param replaced whole", lambda b: _set(rnn(b), "weight_hh_l0", np.zeros((H, H), f32)), AttributeError,
     "cannot replace parameter 'weight_hh_l0'; assign to weight_hh_l0.data instead"),
    ("param grad made read-only after", lambda b: _grad_flag_then_backward(rnn(b, num_layers=2)), ValueError,
     "weight_ih_l0.grad must be writable"),
    ("Parameter of ints", lambda b: elman.Parameter(np.zeros(3, int)), TypeError,
     "Parameter data must be float32 or float64, got int64"),
    ("Parameter read-only", lambda b: elman.Parameter(np.broadcast_to(np.zeros(1), (3,))), ValueError,
     "Parameter data must be writable"),
    # -- load_state_dict
    ("state_dict not a mapping", lambda b: rnn(b).load_state_dict([1, 2]), TypeError,
     "state_dict must be a mapping, got list"),
    ("state_dict missing key", lambda b: _load_without(rnn(b), "bias_hh_l0"), ValueError,
     r"missing keys \['bias_hh_l0'\], unexpected keys \[\]"),
    ("state_dict unexpected key", lambda b: _load_with(rnn(b), "extra", np.zeros(1)), ValueError,
     r"missing keys \[\], unexpected keys \['extra'\]"),
    ("state_dict wrong shape", lambda b: _load_with(rnn(b), "weight_hh_l0", np.zeros((H, 2))), ValueError,
     r"'weight_hh_l0' must have shape \(6, 6\), got \(6, 2\)"),
    ("state_dict complex", lambda b: _load_with(rnn(b), "bias_ih_l0", np.zeros(H, complex)), TypeError,
     "'bias_ih_l0' must hold real numbers, got dtype complex128"),
    ("state_dict strings", lambda b: _load_with(rnn(b), "bias_ih_l0", ["a"] * H), TypeError,
     "'bias_ih_l0' must hold real numbers, got dtype <U1"),
    # -- RNNCell
    ("cell x 0-D", lambda b: cell(b)(np.ones((), f32)), ValueError, "Expected input to be 1-D or 2-D, got 0-D"),
    ("cell x 3-D", lambda b: cell(b)(np.ones((1, B, I), f32)), ValueError, "Expected input to be 1-D or 2-D, got 3-D"),
    ("cell x size", lambda b: cell(b)(np.ones((B, I + 1), f32)), ValueError,
     "input has inconsistent input_size: got 5, expected 4"),
    ("cell x dtype", lambda b: cell(b)(np.ones((B, I))), TypeError, "input must have dtype float32, got float64"),
    ("cell x int", lambda b: cell(b)(np.ones((B, I), int)), TypeError, "got int64"),
    ("cell h size", lambda b: cell(b)(np.ones((B, I), f32), np.ones((B, H + 1), f32)), ValueError,
     "hidden has inconsistent hidden_size: got 7, expected 6"),
    ("cell h batch", lambda b: cell(b)(np.ones((B, I), f32), np.ones((B + 1, H), f32)), ValueError,
     "Input batch size 3 doesn't match hidden batch size 4"),
    ("cell h rank", lambda b: cell(b)(np.ones((B, I), f32), np.ones(H, f32)), ValueError,
     "hidden must be 2-D like the input, got 1-D"),
    ("cell h 3-D", lambda b: cell(b)(np.ones((B, I), f32), np.ones((1, B, H), f32)), ValueError,
     "Expected hidden to be 1-D or 2-D, got 3-D"),
    ("cell h dtype", lambda b: cell(b)(np.ones((B, I), f32), np.ones((B, H))), TypeError,
     "hidden must have dtype float32, got float64"),
    ("cell backward without call", lambda b: cell(b).backward(np.ones((B, H), f32)), RuntimeError,
     r"RNNCell.backward\(\) needs a preceding forward call"),
    ("cell grad shape", lambda b: _cell_call(cell(b)).backward(np.ones((B, H + 1), f32)), ValueError,
     r"grad_h1 must have shape \(3, 6\), got \(3, 7\)"),
    ("cell grad dtype", lambda b: _cell_call(cell(b)).backward(np.ones((B, H))), TypeError,
     "grad_h1 must have dtype float32, got float64"),
    ("cell hidden_size 0", lambda b: elman.RNNCell(I, 0), ValueError, "hidden_size must be greater than zero"),
    ("cell nonlinearity", lambda b: elman.RNNCell(I, H, nonlinearity="gelu"), ValueError, "Unknown nonlinearity 'gelu'"),
    # -- Linear, Embedding
    ("linear x last dim", lambda b: elman.Linear(I, 2)(np.ones((B, I + 1), f32)), ValueError,
     r"Linear: input.shape\[-1\] must be in_features = 4, got shape \(3, 5\)"),
    ("linear x 0-D", lambda b: elman.Linear(I, 2)(np.ones((), f32)), ValueError, r"got shape \(\)"),
    ("linear x dtype", lambda b: elman.Linear(I, 2)(np.ones((B, I))), TypeError, "input must have dtype float32, got float64"),
    ("linear grad shape", lambda b: _lin_call(elman.Linear(I, 2)).backward(np.ones((B, 3), f32)), ValueError,
     r"grad_y must have shape \(3, 2\), got \(3, 3\)"),
    ("linear backward twice", lambda b: _twice_linear(elman.Linear(I, 2)), RuntimeError,
     "can be back-propagated only once"),
    ("linear in_features 0", lambda b: elman.Linear(0, 2), ValueError, "in_features must be greater than zero"),
    ("linear out_features bool", lambda b: elman.Linear(I, True), TypeError, "out_features should be of type int, got: bool"),
    ("embedding float indices", lambda b: elman.Embedding(10, 3)(np.array([1.0])), TypeError,
     "Embedding: indices must be integers, got dtype float64"),
    ("embedding bool indices", lambda b: elman.Embedding(10, 3)(np.array([True])), TypeError, "got dtype bool"),
    ("embedding index 10", lambda b: elman.Embedding(10, 3)(np.array([1, 10])), ValueError,
     r"Embedding: indices must be in \[0, 10\), got values from 1 to 10"),
    ("embedding index -1", lambda b: elman.Embedding(10, 3)(np.array([-1, 2])), ValueError, "got values from -1 to 2"),
    ("embedding grad shape", lambda b: _emb_call(elman.Embedding(10, 3)).backward(np.ones((2, 4), f32)),
     ValueError, r"grad must have shape \(2, 3\), got \(2, 4\)"),
    ("embedding padding_idx range", lambda b: elman.Embedding(10, 3, padding_idx=10), ValueError,
     "padding_idx must be within num_embeddings = 10, got 10"),
    ("embedding padding_idx float", lambda b: elman.Embedding(10, 3, padding_idx=1.0), TypeError,
     "padding_idx should be of type int, got: float"),
    ("embedding dim 0", lambda b: elman.Embedding(10, 0), ValueError, "embedding_dim must be greater than zero"),
    ("embedding 2^80 weights", lambda b: elman.Embedding(2**40, 2**40), MemoryError,
     r"Embedding: 1208925819614629174706176 parameters with their gradients needs \d+ bytes"),
    # -- functional entry points
    ("functional H = 0", lambda b: F.rnn_forward(x3(), np.zeros((0, I), f32), np.zeros((0, 0), f32), backend=b),
     ValueError, r"weight_hh must have shape \(H, H\) with H >= 1, got \(0, 0\)"),
    ("functional weight_hh not square", lambda b: F.rnn_forward(x3(), np.zeros((H, I), f32), np.zeros((H, 2), f32),
                                                                 backend=b), ValueError, r"got \(6, 2\)"),
    ("functional weight_hh int", lambda b: F.rnn_forward(x3(), np.zeros((H, I), f32), np.zeros((H, H), int),
                                                          backend=b), TypeError, "weight_hh must have dtype float32 or float64, got int64"),
    ("functional mixed weight dtypes", lambda b: F.rnn_forward(x3(), np.zeros((H, I)), np.zeros((H, H), f32),
                                                                backend=b), TypeError, "weight_ih must have dtype float32, got float64"),
    ("functional x float64 with float32 weights", lambda b: F.rnn_forward(x3(f64), *_w(), backend=b), TypeError,
     "x must have dtype float32, got float64"),
    ("functional bias shape", lambda b: F.rnn_forward(x3(), *_w(), np.zeros(H + 1, f32), backend=b), ValueError,
     r"bias_ih must have shape \(6,\), got \(7,\)"),
    ("functional h0 shape", lambda b: F.rnn_forward(x3(), *_w(), h0=np.zeros((1, B, H), f32), backend=b),
     ValueError, r"h0 must have shape \(3, 6\), got \(1, 3, 6\)"),
    ("functional nonlinearity", lambda b: F.rnn_forward(x3(), *_w(), nonlinearity="elu", backend=b), ValueError,
     "Unknown nonlinearity 'elu'"),
    ("functional backend", lambda b: F.rnn_forward(x3(), *_w(), backend="tpu"), ValueError, "unknown backend 'tpu'"),
    ("functional out dtype", lambda b: F.rnn_forward(x3(), *_w(), out=np.zeros((T, B, H)), backend=b), TypeError,
     "out must be a numpy.ndarray of dtype float32, got float64"),
    ("functional out big-endian", lambda b: F.rnn_forward(x3(), *_w(), out=big_endian(np.zeros((T, B, H), f32)),
                                                           backend=b), TypeError, "got >f4"),
    ("functional out read-only", lambda b: F.rnn_forward(x3(), *_w(), out=_readonly(np.zeros((T, B, H), f32)),
                                                          backend=b), ValueError, "out must be writable"),
    ("functional out aliases x", lambda b: _out_aliases_x(b), ValueError, "out must not share memory with x"),
    ("functional grads tuple", lambda b: _bwd(b, grads=(np.zeros((H, I), f32),)), TypeError,
     r"grads must be a tuple \(grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh\)"),
    ("functional grads fortran", lambda b: _bwd(b, grads=(np.zeros((H, I), f32, order="F"), np.zeros((H, H), f32),
                                                          None, None)), ValueError,
     "grad_weight_ih must be C-contiguous and aligned"),
    ("functional grads alias weights", lambda b: _bwd_grads_alias_weights(b), ValueError,
     "grad_weight_hh must not share memory with weight_hh"),
    ("functional grad_x shape", lambda b: _bwd(b, grad_x=np.zeros((T, B, I + 1), f32)), ValueError,
     r"grad_x must have shape \(5, 3, 4\), got \(5, 3, 5\)"),
    ("functional out missing in backward", lambda b: F.rnn_backward(x3(), *_w(), None, backend=b), TypeError,
     "out must be an array of float32, got None"),
    # -- losses
    ("mse shape", lambda b: elman.MSELoss()(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
     r"target must have the shape of pred \(2, 3\), got \(3, 2\)"),
    ("mse broadcastable target", lambda b: elman.MSELoss()(np.zeros((2, 3)), np.zeros(3)), ValueError,
     r"target must have the shape of pred \(2, 3\), got \(3,\)"),
    ("mse pred int", lambda b: elman.MSELoss()(np.zeros(3, int), np.zeros(3)), TypeError,
     "pred must have dtype float32 or float64, got int64"),
    ("mse pred float16", lambda b: elman.MSELoss()(np.zeros(3, np.float16), np.zeros(3)), TypeError, "got float16"),
    ("mse target complex", lambda b: elman.MSELoss()(np.zeros(3), np.zeros(3, complex)), TypeError,
     r"target must hold real numbers \(bool, int or float\), got dtype complex128"),
    ("mse target str", lambda b: elman.MSELoss()(np.zeros(3), np.array(["a", "b", "c"])), TypeError, "got dtype <U1"),
    ("mse target object", lambda b: elman.MSELoss()(np.zeros(3), np.array([1, 2, 3], object)), TypeError,
     "got dtype object"),
    ("bce shape", lambda b: elman.BCEWithLogitsLoss()(np.zeros((4, 1)), np.zeros(4)), ValueError,
     r"target must have the shape of pred \(4, 1\), got \(4,\)"),
    ("bce target complex", lambda b: elman.BCEWithLogitsLoss()(np.zeros(3), np.zeros(3, complex)), TypeError,
     "got dtype complex128"),
    ("ce target shape", lambda b: elman.CrossEntropyLoss()(np.zeros((2, 3)), np.zeros(3, int)), ValueError,
     r"target must have shape \(2,\) \(pred without its class axis\), got \(3,\)"),
    ("ce class index C", lambda b: elman.CrossEntropyLoss()(np.zeros((3, 4)), np.array([1, 4, 0])), ValueError,
     r"target class indices must be in \[0, 4\) \(or ignore_index = -100\), got 4"),
    ("ce class index -1", lambda b: elman.CrossEntropyLoss()(np.zeros((3, 4)), np.array([1, -1, 0])), ValueError,
     "got -1"),
    ("ce float target", lambda b: elman.CrossEntropyLoss()(np.zeros((3, 4)), np.array([1.0, 2.0, 0.0])), TypeError,
     "target must hold integer class indices, got dtype float64"),
    ("ce no classes", lambda b: elman.CrossEntropyLoss()(np.zeros((0, 0)), np.zeros(0, int)), ValueError,
     r"pred must have at least one class, got shape \(0, 0\)"),
    ("ce 0-D pred", lambda b: elman.CrossEntropyLoss()(np.zeros(()), np.zeros((), int)), ValueError,
     r"pred must have a class axis \(..., C\), got a 0-D array"),
    ("ce ignore_index float", lambda b: elman.CrossEntropyLoss(ignore_index=-1.0), TypeError,
     "ignore_index must be an int, got float"),
    ("loss reduction unknown", lambda b: elman.MSELoss(reduction="none"), ValueError,
     "reduction must be 'mean' or 'sum', got 'none'"),
    ("loss reduction None", lambda b: elman.BCEWithLogitsLoss(reduction=None), TypeError,
     "reduction must be a str, 'mean' or 'sum', got NoneType"),
    ("loss mask shape", lambda b: elman.MSELoss()(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones(3, bool)),
     ValueError, r"mask must have the shape of the target or a prefix of it, \(2, 3\), got \(3,\)"),
    ("loss mask float", lambda b: elman.MSELoss()(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones(2)),
     TypeError, "mask must be boolean \\(or 0/1 integers\\), got dtype float64"),
    ("loss mask 2s", lambda b: elman.MSELoss()(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.array([2, 0])),
     TypeError, "got dtype int64"),
    ("loss backward first", lambda b: elman.CrossEntropyLoss().backward(), RuntimeError,
     r"CrossEntropyLoss.backward\(\) needs a preceding call"),
    # -- optimizer and clipping
    ("sgd lr negative", lambda b: elman.SGD(_p(), lr=-0.1), ValueError, "lr must be a finite number >= 0, got -0.1"),
    ("sgd lr nan", lambda b: elman.SGD(_p(), lr=float("nan")), ValueError, "lr must be a finite number >= 0, got nan"),
    ("sgd lr inf", lambda b: elman.SGD(_p(), lr=float("inf")), ValueError, "got inf"),
    ("sgd lr numpy nan", lambda b: elman.SGD(_p(), lr=np.float32("nan")), ValueError, "got nan"),
    ("sgd lr str", lambda b: elman.SGD(_p(), lr="0.1"), TypeError, "lr must be a real number, got str"),
    ("sgd lr bool", lambda b: elman.SGD(_p(), lr=True), TypeError, "lr must be a real number, got bool"),
    ("sgd lr None", lambda b: elman.SGD(_p(), lr=None), TypeError, "got NoneType"),
    ("sgd momentum negative", lambda b: elman.SGD(_p(), lr=0.1, momentum=-0.9), ValueError,
     "momentum must be a finite number >= 0, got -0.9"),
    ("sgd momentum nan", lambda b: elman.SGD(_p(), lr=0.1, momentum=float("nan")), ValueError, "momentum"),
    ("sgd momentum inf", lambda b: elman.SGD(_p(), lr=0.1, momentum=float("inf")), ValueError, "momentum"),
    ("sgd weight_decay negative", lambda b: elman.SGD(_p(), lr=0.1, weight_decay=-1e-4), ValueError,
     "weight_decay must be a finite number >= 0"),
    ("sgd clip_norm negative", lambda b: elman.SGD(_p(), lr=0.1, clip_norm=-1.0), ValueError,
     "clip_norm must be a finite number >= 0, got -1.0"),
    ("sgd clip_norm nan", lambda b: elman.SGD(_p(), lr=0.1, clip_norm=float("nan")), ValueError, "clip_norm"),
    ("sgd clip_norm inf", lambda b: elman.SGD(_p(), lr=0.1, clip_norm=float("inf")), ValueError, "clip_norm"),
    ("sgd clip_value 0", lambda b: elman.SGD(_p(), lr=0.1, clip_value=0.0), ValueError,
     "clip_value must be a finite number > 0, got 0.0"),
    ("sgd clip_value negative", lambda b: elman.SGD(_p(), lr=0.1, clip_value=-1.0), ValueError, "clip_value"),
    ("sgd clip_value nan", lambda b: elman.SGD(_p(), lr=0.1, clip_value=float("nan")), ValueError, "clip_value"),
    ("sgd nesterov without momentum", lambda b: elman.SGD(_p(), lr=0.1, nesterov=True), ValueError,
     "Nesterov momentum requires a momentum > 0"),
    ("sgd nesterov int", lambda b: elman.SGD(_p(), lr=0.1, momentum=0.9, nesterov=1), TypeError,
     "nesterov must be a bool, got int"),
    ("sgd error_if_nonfinite str", lambda b: elman.SGD(_p(), lr=0.1, error_if_nonfinite="no"), TypeError,
     "error_if_nonfinite must be a bool, got str"),
    ("sgd empty params", lambda b: elman.SGD([], lr=0.1), ValueError, "SGD got an empty parameter list"),
    ("sgd params of arrays", lambda b: elman.SGD([np.zeros(3)], lr=0.1), TypeError,
     "params must hold elman.Parameter objects, got ndarray"),
    ("sgd params not iterable", lambda b: elman.SGD(3, lr=0.1), TypeError,
     "params must be an iterable of elman.Parameter, got int"),
    ("sgd same parameter twice", lambda b: elman.SGD(_p() * 2, lr=0.1), ValueError,
     "params must not contain the same Parameter twice"),
    ("sgd step with read-only data", lambda b: _step_read_only(), ValueError,
     "w.data is read-only; it must be writable to be updated"),
    ("clip_grad_norm_ max_norm negative", lambda b: elman.clip_grad_norm_(_p(), -1.0), ValueError,
     "max_norm must be a finite number >= 0, got -1.0"),
    ("clip_grad_norm_ max_norm nan", lambda b: elman.clip_grad_norm_(_p(), float("nan")), ValueError, "max_norm"),
    ("clip_grad_norm_ max_norm inf", lambda b: elman.clip_grad_norm_(_p(), float("inf")), ValueError, "max_norm"),
    ("clip_grad_norm_ max_norm str", lambda b: elman.clip_grad_norm_(_p(), "1"), TypeError,
     "max_norm must be a real number, got str"),
    ("clip_grad_value_ negative", lambda b: elman.clip_grad_value_(_p(), -0.5), ValueError,
     "clip_value must be a finite number >= 0, got -0.5"),
    ("clip_grad_value_ nan", lambda b: elman.clip_grad_value_(_p(), float("nan")), ValueError, "clip_value"),
    ("clip_grad_value_ inf", lambda b: elman.clip_grad_value_(_p(), float("inf")), ValueError, "clip_value"),
    # -- threads
    ("set_num_threads 0", lambda b: elman.set_num_threads(0), ValueError, "num_threads must be at least 1, got 0"),
    ("set_num_threads float", lambda b: elman.set_num_threads(2.0), TypeError,
     "num_threads should be of type int, got: float"),
    ("set_num_threads bool", lambda b: elman.set_num_threads(True), TypeError, "got: bool"),
]


def _w():
    rng = np.random.default_rng(1)
    return rng.uniform(-.5, .5, (H, I)).astype(f32), rng.uniform(-.5, .5, (H, H)).astype(f32)


def _fwd(m, shape=(T, B, I)):
    m(x3(shape=shape))
    return m


def _twice(m):
    _fwd(m).backward()
    m.backward()


def _after_no_grad(m):
    with elman.no_grad():
        m(x3())
    m.backward()


def _grad_flag_then_backward(m):
    _fwd(m)
    m.weight_ih_l0.grad.flags.writeable = False
    m.backward(np.ones((T, B, H), f32))


def _load_without(m, key):
    sd = m.state_dict()
    del sd[key]
    m.load_state_dict(sd)


def _load_with(m, key, value):
    sd = m.state_dict()
    sd[key] = value
    m.load_state_dict(sd)


def _cell_call(c):
    c(np.ones((B, I), f32))
    return c


def _lin_call(lin):
    lin(np.ones((B, I), f32))
    return lin


def _twice_linear(lin):
    _lin_call(lin).backward(np.ones((B, 2), f32))
    lin.backward(np.ones((B, 2), f32))


def _emb_call(e):
    e(np.array([1, 2]))
    return e


def _out_aliases_x(backend):
    buf = np.zeros(T * B * H, f32)
    x = buf.reshape(T, B, H)[:, :, :I]
    W_ih = np.zeros((H, I), f32)
    F.rnn_forward(x, W_ih, np.zeros((H, H), f32), out=buf.reshape(T, B, H), backend=backend)


def _bwd(backend, **kw):
    W_ih, W_hh = _w()
    x = x3()
    out, _ = F.rnn_forward(x, W_ih, W_hh, backend=backend)
    F.rnn_backward(x, W_ih, W_hh, out, backend=backend, **kw)


def _bwd_grads_alias_weights(backend):
    W_ih, W_hh = _w()
    _bwd_with = F.rnn_backward
    x = x3()
    out, _ = F.rnn_forward(x, W_ih, W_hh, backend=backend)
    _bwd_with(x, W_ih, W_hh, out, grads=(np.zeros((H, I), f32), W_hh, None, None), backend=backend)


def _p():
    return [elman.Parameter(np.zeros(3, f32), "w")]


def _step_read_only():
    p = _p()
    p[0].grad[...] = 1
    opt = elman.SGD(p, lr=0.1)
    p[0].data.flags.writeable = False
    opt.step()


@pytest.mark.bad_input
@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, match):
    previous_threads = elman.get_num_threads() if "cpu" in elman.backends() else None
    try:
        for backend in HOST_BACKENDS:  # every backend reports bad input the same way
            with pytest.raises(exc, match=match):
                call(backend)
    finally:
        if previous_threads is not None:
            elman.set_num_threads(previous_threads)


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------ no state lost
@pytest.mark.bad_input
@pytest.mark.parametrize("bad", ["grad_out shape", "grad_h_n dtype", "read-only grad of layer 0"])
def test_rejected_backward_changes_nothing_and_can_be_retried(bad):
    """A rejected backward touches no gradient and does not consume the forward."""
    for backend in HOST_BACKENDS:
        _rejected_backward(backend, bad)


def _rejected_backward(backend, bad):
    m = elman.RNN(I, H, num_layers=2, bidirectional=True, seed=0, backend=backend)
    x = x3()
    m(x)
    for p in m.parameters():
        p.grad[...] = 0.5
    if bad == "grad_out shape":
        call, exc = (lambda: m.backward(np.ones((T, B, H), f32))), ValueError
    elif bad == "grad_h_n dtype":
        call, exc = (lambda: m.backward(None, np.ones((4, B, H)))), TypeError
    else:
        m.weight_hh_l0_reverse.grad.flags.writeable = False
        call, exc = (lambda: m.backward(np.ones((T, B, 2 * H), f32))), ValueError
    with pytest.raises(exc):
        call()
    for name, p in m.named_parameters():
        assert (p.grad == 0.5).all(), name
    m.weight_hh_l0_reverse.grad.flags.writeable = True
    gx, gh = m.backward(np.ones((T, B, 2 * H), f32))  # the forward is still there
    assert gx.shape == (T, B, I) and np.isfinite(gx).all()


@pytest.mark.bad_input
@pytest.mark.parametrize("bad", ["x dtype", "h0 shape", "lengths range"])
def test_rejected_forward_keeps_the_previous_forward(bad):
    for backend in HOST_BACKENDS:
        _rejected_forward(backend, bad)


def _rejected_forward(backend, bad):
    m = elman.RNN(I, H, seed=0, backend=backend)
    x = x3()
    out, _ = m(x)
    expected = elman.RNN(I, H, seed=0, backend=backend)
    expected(x)
    g_ref = expected.backward(np.ones((T, B, H), f32))
    with pytest.raises((TypeError, ValueError)):
        if bad == "x dtype":
            m(x.astype(f64))
        elif bad == "h0 shape":
            m(x, np.zeros((2, B, H), f32))
        else:
            m(x, lengths=[T + 1] * B)
    g = m.backward(np.ones((T, B, H), f32))
    for a, b in zip(g, g_ref):
        np.testing.assert_array_equal(a, b)


def test_big_endian_inputs_are_converted_exactly(backend_any):
    """The one conversion that happens: a non-native byte order of the right float type keeps
    every value, so the result is bitwise the native one."""
    m = rnn(backend_any)
    x, h0 = x3(), np.random.default_rng(3).standard_normal((1, B, H)).astype(f32)
    out, h_n = m(x, h0)
    out_be, h_n_be = m(big_endian(x), big_endian(h0))
    np.testing.assert_array_equal(out_be, out)
    np.testing.assert_array_equal(h_n_be, h_n)
    c = cell(backend_any)
    np.testing.assert_array_equal(c(big_endian(x[0])), c(x[0]))


@pytest.mark.parametrize("bidir", [False, True])
def test_empty_batch_is_defined_and_never_calls_a_kernel(backend_any, bidir, monkeypatch):
    """B = 0: empty outputs of the right shapes, zero gradients, no kernel call."""
    import elman._backend as backend_module
    calls = []
    if backend_any == "cpu":
        real = backend_module.core()

        class Spy:
            def __getattr__(self, name):
                calls.append(name)
                return getattr(real, name)
        monkeypatch.setattr(backend_module, "core", lambda: Spy())
    m = elman.RNN(I, H, num_layers=2, bidirectional=bidir, seed=0, backend=backend_any)
    D = 2 if bidir else 1
    out, h_n = m(np.zeros((T, 0, I), f32), lengths=[])
    assert out.shape == (T, 0, D * H) and h_n.shape == (2 * D, 0, H)
    gx, gh = m.backward(np.zeros((T, 0, D * H), f32), np.zeros((2 * D, 0, H), f32))
    assert gx.shape == (T, 0, I) and gh.shape == (2 * D, 0, H)
    assert all(not p.grad.any() for p in m.parameters())
    assert all(not n.any() for n in m.grad_norms.values())
    assert [c for c in calls if c.startswith("rnn_")] == []
    c = cell(backend_any)
    h1 = c(np.zeros((0, I), f32))
    assert h1.shape == (0, H)
    gx, gh = c.backward(np.zeros((0, H), f32))
    assert gx.shape == (0, I) and gh.shape == (0, H) and not any(p.grad.any() for p in c.parameters())
