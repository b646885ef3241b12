"""The thin layer API: Parameter, Module, RNN, RNNCell, Linear, Embedding and no_grad.

Names, shapes and defaults follow ``torch.nn``; every layer has an explicit ``backward``
that returns the input gradient and adds parameter gradients into each ``Parameter.grad``.
"""

import contextlib
import math
import threading
import warnings

import numpy as np

from . import _backend, functional as F

__all__ = ["Parameter", "Module", "RNN", "RNNCell", "Linear", "Embedding", "no_grad",
           "is_grad_enabled"]

# ----------------------------------------------------------------------------- grad mode
_grad_mode = threading.local()


def is_grad_enabled():
    """False inside :func:`no_grad`: layers then keep nothing for a backward pass."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager for inference: forward calls record nothing for ``backward``."""
    previous = is_grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


# ----------------------------------------------------------------------------- argument checks
def _check_size(value, name, allow_zero=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return int(value)


def _check_dtype(dtype):
    if dtype is None:  # as torch: None means the default (np.dtype(None) would be float64)
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in F.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _make_rng(seed):
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be None or a non-negative int, got bool")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None or a non-negative int, got {seed!r} ({exc})") from None


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


# ----------------------------------------------------------------------------- Parameter
class Parameter:
    """A trainable array: ``.data``, ``.grad`` (same shape and dtype, zeros from the start,
    never None) and ``.name``.

    ``.data`` may be changed in place, or replaced by an array of the same shape and dtype;
    either takes effect at the next call (nothing keeps a stale copy of the weights). Both
    arrays are updated in place (optimizers, backward), so a replacement must be writable, and
    ``.grad`` also C-contiguous.
    """

    __slots__ = ("_data", "_grad", "name")

    def __init__(self, data, name=""):
        data = np.asarray(data)
        if data.dtype not in F.FLOAT_DTYPES:
            raise TypeError(f"Parameter data must be float32 or float64, got {data.dtype}")
        if not data.flags.writeable:
            raise ValueError("Parameter data must be writable (optimizers update it in place)")
        self._data = data
        self._grad = np.zeros(data.shape, data.dtype)
        self.name = name

    def _label(self, what):
        return f"{self.name}.{what}" if self.name else what

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        label = self._label("data")
        value = F.as_array(value, label, self._data.dtype)
        F.check_shape(value, label, self._data.shape)
        if not value.flags.writeable:
            raise ValueError(f"{label} must be writable (optimizers update it in place)")
        self._data = value

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        # kept as given (gradients accumulate into it), so never a converted copy
        F.check_output(value, self._label("grad"), self._data.dtype, self._data.shape)
        self._grad = value

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def zero_grad(self):
        self._grad[...] = 0

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"


# ----------------------------------------------------------------------------- Module
class Module:
    """Base class: parameter registry, state_dict, zero_grad, train/eval."""

    def __init__(self):
        self._params = {}
        self.training = True

    def _add_param(self, name, array):
        self._params[name] = Parameter(array, name)

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            raise AttributeError(f"cannot replace parameter {name!r}; assign to "
                                 f"{name}.data instead")
        object.__setattr__(self, name, value)

    def named_parameters(self):
        """Iterator of (name, Parameter) in registration order (torch's order)."""
        return iter(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def state_dict(self):
        """dict name -> a copy of the parameter's array."""
        return {name: p.data.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict):
        """Copies values into the parameters (cast to the module's dtype, like torch's copy).

        Accepts anything ``np.asarray`` takes (torch tensors included). Names, shapes and
        value types are all checked first: when anything is wrong nothing is changed.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        staged = {}
        for name, p in self._params.items():
            try:
                v = np.asarray(state_dict[name])
            except Exception as exc:
                raise TypeError(f"load_state_dict: {name!r} is not convertible to an array "
                                f"({exc})") from None
            if v.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {name!r} must hold real numbers, got dtype "
                                f"{v.dtype}")
            if v.shape != p.shape:
                raise ValueError(f"load_state_dict: {name!r} must have shape {p.shape}, got "
                                 f"{v.shape}")
            if not p.data.flags.writeable:
                raise ValueError(f"load_state_dict: parameter {name!r} is read-only")
            staged[name] = v.astype(p.dtype)
        for name, v in staged.items():
            self._params[name].data[...] = v

    def zero_grad(self):
        for p in self._params.values():
            p.zero_grad()

    def train(self, mode=True):
        self.training = _check_bool(mode, "mode")
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _uniform(self, rng, shape, bound, dtype):
        F.check_nbytes(shape, np.float64, f"{type(self).__name__}: a parameter")
        return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _backward_context(ctx, what):
    if ctx is None:
        raise RuntimeError(f"{what}.backward() needs a preceding forward call with gradients "
                           "enabled, and each forward can be back-propagated only once")
    return ctx


# ----------------------------------------------------------------------------- RNN
class RNN(Module):
    """Multi-layer Elman RNN with the constructor, parameters and shapes of ``torch.nn.RNN``.

    ``out, h_n = rnn(x, h0=None, lengths=None)`` with x (T, B, I), (B, T, I) when
    ``batch_first``, or unbatched (T, I); h0 / h_n (num_layers * D, B, H) (unbatched:
    (num_layers * D, H)); out (T, B, D * H) with D = 2 if ``bidirectional`` else 1.
    ``lengths`` (B,) ints: variable-length sequences, as ``pack_padded_sequence(...,
    enforce_sorted=False)``: out is 0 past each length, h_n is each sequence's state at its
    last valid step, the reverse direction starts at each sequence's own last step.

    ``grad_x, grad_h0 = rnn.backward(grad_out=None, grad_h_n=None)`` back-propagates through
    the last forward call, adds into each parameter's ``.grad`` and leaves per-step gradient
    norms ||dL/dh_t|| in ``rnn.grad_norms`` (dict "l{k}" / "l{k}_reverse" -> (T,) array).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 seed=None, backend=None):
        super().__init__()
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        self.num_layers = _check_size(num_layers, "num_layers")
        F.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.bidirectional = _check_bool(bidirectional, "bidirectional")
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.floating, np.integer)):
            raise TypeError(f"dropout should be a number in range [0, 1], got "
                            f"{type(dropout).__name__}")
        if not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers=1", UserWarning, stacklevel=2)
        self.dropout = float(dropout)
        self.dtype = _check_dtype(dtype)
        self.backend = _backend.resolve(backend)
        self._rng = _make_rng(seed)
        D = 2 if self.bidirectional else 1
        H = self.hidden_size
        bound = 1.0 / math.sqrt(H)
        for k in range(self.num_layers):
            I_k = self.input_size if k == 0 else D * H
            for sfx in ("", "_reverse")[:D]:
                self._add_param(f"weight_ih_l{k}{sfx}", self._uniform(self._rng, (H, I_k), bound, self.dtype))
                self._add_param(f"weight_hh_l{k}{sfx}", self._uniform(self._rng, (H, H), bound, self.dtype))
                if self.bias:
                    self._add_param(f"bias_ih_l{k}{sfx}", self._uniform(self._rng, (H,), bound, self.dtype))
                    self._add_param(f"bias_hh_l{k}{sfx}", self._uniform(self._rng, (H,), bound, self.dtype))
        self._ctx = None
        self.grad_norms = {}
        # (suffix, weight_ih, weight_hh, bias_ih, bias_hh) per layer and direction, in order
        p = self._params
        self._cells = [
            (sfx, p[f"weight_ih_{sfx}"], p[f"weight_hh_{sfx}"], p.get(f"bias_ih_{sfx}"),
             p.get(f"bias_hh_{sfx}"))
            for k in range(self.num_layers) for sfx in (f"l{k}", f"l{k}_reverse")[:D]]

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _config(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, nonlinearity=self.nonlinearity, bias=self.bias,
                    batch_first=self.batch_first, dropout=self.dropout,
                    bidirectional=self.bidirectional, dtype=self.dtype.name)

    def __repr__(self):
        s = f"RNN({self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("nonlinearity", "tanh"), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s + ")"

    # -- forward
    def forward(self, x, h0=None, lengths=None):
        x = F.as_array(x, "input", self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"RNN: Expected input to be 2-D or 3-D, got {x.ndim}-D array instead")
        batched = x.ndim == 3
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"input.shape[-1] must be equal to input_size. Expected "
                             f"{self.input_size}, got {I}")
        if T == 0:
            raise ValueError("Expected sequence length to be larger than 0 in RNN, got an input "
                             "with 0 time steps")
        D, H, nL = self.num_directions, self.hidden_size, self.num_layers
        if h0 is not None:
            h0 = F.as_array(h0, "h0", self.dtype)
            if h0.ndim != (3 if batched else 2):
                raise ValueError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, h0 "
                                 f"should also be {3 if batched else 2}-D but got {h0.ndim}-D array")
            expected = (nL * D, B, H) if batched else (nL * D, H)
            if h0.shape != expected:
                raise ValueError(f"h0: Expected hidden size {expected}, got {h0.shape}")
            if not batched:
                h0 = h0[:, None, :]
        lengths = F.as_lengths(lengths, T, B)
        x = np.ascontiguousarray(x)
        record = is_grad_enabled()
        h_n = F.empty((nL * D, B, H), self.dtype, "h_n")
        layers = []
        inp, in_mask = x, None  # in_mask: the dropout mask that produced inp (None: no dropout)
        for k in range(nL):
            out = F.empty((T, B, D * H), self.dtype, f"the output of layer {k}")
            for d in range(D):
                _, W_ih, W_hh, b_ih, b_hh = self._cells[k * D + d]
                F.forward_into(self.backend, inp, W_ih._data, W_hh._data,
                               None if b_ih is None else b_ih._data,
                               None if b_hh is None else b_hh._data,
                               None if h0 is None else h0[k * D + d], lengths, self.nonlinearity,
                               d == 1, out[:, :, d * H:(d + 1) * H] if D > 1 else out,
                               h_n[k * D + d])
            if record:
                layers.append((inp, out, in_mask))
            in_mask = None
            if self.training and self.dropout > 0 and k < nL - 1:
                keep = 1.0 - self.dropout
                in_mask = (self._rng.random(out.shape) < keep).astype(self.dtype)
                if keep > 0:
                    in_mask /= self.dtype.type(keep)
            inp = out if in_mask is None else out * in_mask
        self._ctx = (layers, h0, lengths, batched, x.shape) if record else None
        if not batched:
            return out[:, 0, :], h_n[:, 0, :]
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n

    # -- backward
    def backward(self, grad_out=None, grad_h_n=None):
        """BPTT through the last forward call. Returns ``(grad_x, grad_h0)`` in the layouts
        of x and h0; adds into every parameter's ``.grad``; sets ``self.grad_norms``."""
        layers, h0, lengths, batched, (T, B, I) = _backward_context(self._ctx, "RNN")
        D, H, nL = self.num_directions, self.hidden_size, self.num_layers
        if grad_out is not None:
            grad_out = F.as_array(grad_out, "grad_out", self.dtype)
            expected = (T, B, D * H) if not self.batch_first else (B, T, D * H)
            if not batched:
                expected = (T, D * H)
            F.check_shape(grad_out, "grad_out", expected)
            if not batched:
                grad_out = grad_out[:, None, :]
            elif self.batch_first:
                grad_out = grad_out.transpose(1, 0, 2)
        if grad_h_n is not None:
            grad_h_n = F.as_array(grad_h_n, "grad_h_n", self.dtype)
            F.check_shape(grad_h_n, "grad_h_n", (nL * D, B, H) if batched else (nL * D, H))
            if not batched:
                grad_h_n = grad_h_n[:, None, :]
        for name, p in self._params.items():  # all checked before any gradient is touched
            F.check_output(p._grad, f"{name}.grad", self.dtype, p.shape)
        self._ctx = None
        grad_h0 = F.empty((nL * D, B, H), self.dtype, "grad_h0")
        norms = {}
        g_layer = grad_out
        for k in reversed(range(nL)):
            inp, out, in_mask = layers[k]
            gx = F.empty(inp.shape, self.dtype, f"the input gradient of layer {k}")
            for d in range(D):
                sfx, W_ih, W_hh, b_ih, b_hh = self._cells[k * D + d]
                cols = slice(d * H, (d + 1) * H) if D > 1 else slice(None)
                norms[sfx] = np.empty(T)
                F.backward_into(self.backend, inp, W_ih._data, W_hh._data, out[:, :, cols],
                                None if h0 is None else h0[k * D + d],
                                None if g_layer is None else g_layer[:, :, cols],
                                None if grad_h_n is None else grad_h_n[k * D + d],
                                lengths, self.nonlinearity, d == 1,
                                (W_ih._grad, W_hh._grad, None if b_ih is None else b_ih._grad,
                                 None if b_hh is None else b_hh._grad),
                                gx, d > 0, grad_h0[k * D + d], norms[sfx])
            if in_mask is not None:
                gx *= in_mask
            g_layer = gx
        self.grad_norms = norms
        grad_x = g_layer
        if not batched:
            return grad_x[:, 0, :], grad_h0[:, 0, :]
        if self.batch_first:
            grad_x = grad_x.transpose(1, 0, 2)
        return grad_x, grad_h0

    # -- Keras weight interchange
    @classmethod
    def from_keras(cls, layer_or_weights, nonlinearity=None, batch_first=True, **kwargs):
        """A one-layer RNN with the weights of a Keras ``SimpleRNN``.

        ``layer_or_weights``: a built ``keras.layers.SimpleRNN`` (its ``get_weights()`` and its
        activation / ``use_bias`` are read) or its weight list ``[kernel (I, H),
        recurrent_kernel (H, H), bias (H,)]`` (bias left out for ``use_bias=False``).
        Keras computes h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias) with
        activation "tanh" by default, so weight_ih = kernel.T, weight_hh = recurrent_kernel.T,
        bias_ih = bias, bias_hh = 0. ``nonlinearity`` defaults to the layer's activation ("tanh"
        for a weight list); only "tanh" and "relu" exist here. ``batch_first`` defaults to True
        because Keras inputs are (B, T, I); other keyword arguments go to the constructor
        (``dtype`` defaults to the kernel's float type). Keras's ``dropout`` and
        ``recurrent_dropout`` act only in Keras training and are not carried over.
        A layer with ``go_backwards=True`` is refused, because this module would not reverse
        time: pass its ``get_weights()`` and feed the input reversed in time (``x[:, ::-1]``),
        which gives Keras's outputs in Keras's (reversed) order and its final state.
        """
        weights, activation = layer_or_weights, "tanh"
        if hasattr(layer_or_weights, "get_weights"):
            if not any(c.__name__ == "SimpleRNN" for c in type(layer_or_weights).__mro__):
                raise TypeError(f"from_keras expects a keras.layers.SimpleRNN or its weight list, "
                                f"got {type(layer_or_weights).__name__}")
            config = layer_or_weights.get_config()
            if config.get("go_backwards"):
                raise ValueError("from_keras: the layer has go_backwards=True, which RNN does not "
                                 "model; pass layer.get_weights() and reverse the input in time")
            activation = config.get("activation")
            weights = layer_or_weights.get_weights()
            if not weights:
                raise ValueError("from_keras: the layer has no weights yet; build it first (call "
                                 "it on an input)")
            expected = 3 if config.get("use_bias", True) else 2
            if len(weights) != expected:
                raise ValueError(f"from_keras: expected {expected} weights from the layer, got "
                                 f"{len(weights)}")
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") \
                or len(weights) not in (2, 3):
            raise TypeError("from_keras expects a keras.layers.SimpleRNN or a list [kernel, "
                            "recurrent_kernel] / [kernel, recurrent_kernel, bias]")
        arrays = [np.asarray(w) for w in weights]
        for name, a, ndim in zip(("kernel", "recurrent_kernel", "bias"), arrays, (2, 2, 1)):
            if a.dtype.kind not in "fiu":
                raise TypeError(f"from_keras: {name} must hold real numbers, got dtype {a.dtype}")
            if a.ndim != ndim:
                raise ValueError(f"from_keras: {name} must be {ndim}-D, got shape {a.shape}")
        kernel, recurrent = arrays[:2]
        I, H = kernel.shape
        if recurrent.shape != (H, H):
            raise ValueError(f"from_keras: recurrent_kernel must have shape ({H}, {H}) for a "
                             f"kernel of shape {kernel.shape}, got {recurrent.shape}")
        if len(arrays) == 3 and arrays[2].shape != (H,):
            raise ValueError(f"from_keras: bias must have shape ({H},), got {arrays[2].shape}")
        if nonlinearity is None:
            if activation not in F.NONLINEARITIES:
                raise ValueError(f"from_keras: Keras activation {activation!r} has no equivalent "
                                 "here; RNN supports 'tanh' and 'relu'")
            nonlinearity = activation
        if "dtype" not in kwargs:
            kwargs["dtype"] = kernel.dtype if kernel.dtype in F.FLOAT_DTYPES else np.float32
        rnn = cls(I, H, nonlinearity=nonlinearity, bias=len(arrays) == 3,
                  batch_first=batch_first, **kwargs)
        state = {"weight_ih_l0": kernel.T, "weight_hh_l0": recurrent.T}
        if rnn.bias:
            state.update(bias_ih_l0=arrays[2], bias_hh_l0=np.zeros(H))
        rnn.load_state_dict(state)
        return rnn

    def to_keras_weights(self):
        """``[kernel (I, H), recurrent_kernel (H, H), bias (H,)]`` for a Keras ``SimpleRNN(H,
        activation=self.nonlinearity, use_bias=self.bias)`` (``layer.set_weights(...)``):
        the transposed weights and bias = bias_ih + bias_hh (Keras has one bias); no bias
        when ``bias`` is False. Copies, in the module's dtype. One layer, one direction only.
        """
        if self.num_layers != 1 or self.bidirectional:
            raise ValueError(f"to_keras_weights maps one SimpleRNN: needs num_layers=1 and "
                             f"bidirectional=False, got num_layers={self.num_layers}, "
                             f"bidirectional={self.bidirectional}")
        p = self._params
        out = [np.ascontiguousarray(p["weight_ih_l0"].data.T),
               np.ascontiguousarray(p["weight_hh_l0"].data.T)]
        if self.bias:
            out.append(p["bias_ih_l0"].data + p["bias_hh_l0"].data)
        return out


# ----------------------------------------------------------------------------- RNNCell
class RNNCell(Module):
    """One Elman step with the parameters of ``torch.nn.RNNCell``.

    ``h1 = cell(x, h=None)`` with x (B, I) or (I,), h (B, H) or (H,) (None: zeros);
    ``grad_x, grad_h = cell.backward(grad_h1)`` for the last call.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32, seed=None, backend=None):
        super().__init__()
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        F.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self.bias = _check_bool(bias, "bias")
        self.dtype = _check_dtype(dtype)
        self.backend = _backend.resolve(backend)
        rng = _make_rng(seed)
        H, bound = self.hidden_size, 1.0 / math.sqrt(self.hidden_size)
        self._add_param("weight_ih", self._uniform(rng, (H, self.input_size), bound, self.dtype))
        self._add_param("weight_hh", self._uniform(rng, (H, H), bound, self.dtype))
        if self.bias:
            self._add_param("bias_ih", self._uniform(rng, (H,), bound, self.dtype))
            self._add_param("bias_hh", self._uniform(rng, (H,), bound, self.dtype))
        self._ctx = None
        p = self._params
        self._cell = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
        self._relu = nonlinearity == "relu"
        self._step = _backend.core().rnn_cell_step if self.backend == "cpu" else None

    def _config(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    nonlinearity=self.nonlinearity, dtype=self.dtype.name)

    def __repr__(self):
        s = f"RNNCell({self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + ")"

    def _biases(self):
        if not self.bias:
            return None, None
        return self._params["bias_ih"].data, self._params["bias_hh"].data

    def __call__(self, x, h=None):
        # Fast path (cpu backend): one compiled call when the arguments fit exactly; it returns
        # None for anything else, which then takes the validated path below.
        if self._step is not None:
            p_ih, p_hh, b_ih, b_hh = self._cell
            h1 = self._step(x, h, p_ih._data, p_hh._data, None if b_ih is None else b_ih._data,
                            None if b_hh is None else b_hh._data, self._relu)
            if h1 is not None:
                # straight into __dict__: Module.__setattr__ costs more than this whole step
                self.__dict__["_ctx"] = (x, h, h1) if getattr(_grad_mode, "enabled", True) else None
                return h1
        return self.forward(x, h)

    def forward(self, x, h=None):
        x = F.as_array(x, "input", self.dtype)
        if x.ndim not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1-D or 2-D, got {x.ndim}-D instead")
        batched = x.ndim == 2
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has inconsistent input_size: got {x.shape[-1]}, expected "
                             f"{self.input_size}")
        xb = x if batched else x[None, :]
        B, H = xb.shape[0], self.hidden_size
        if h is not None:
            h = F.as_array(h, "hidden", self.dtype)
            if h.ndim not in (1, 2):
                raise ValueError(f"RNNCell: Expected hidden to be 1-D or 2-D, got {h.ndim}-D instead")
            if h.ndim != x.ndim:
                raise ValueError(f"RNNCell: hidden must be {x.ndim}-D like the input, got {h.ndim}-D")
            hb = h if batched else h[None, :]
            if hb.shape[1] != H:
                raise ValueError(f"hidden has inconsistent hidden_size: got {hb.shape[1]}, "
                                 f"expected {H}")
            if hb.shape[0] != B:
                raise ValueError(f"Input batch size {B} doesn't match hidden batch size {hb.shape[0]}")
            h = np.ascontiguousarray(hb)
        b_ih, b_hh = self._biases()
        W_ih, W_hh = self._params["weight_ih"].data, self._params["weight_hh"].data
        h1 = None
        if self._step is not None:
            # The fast path's own kernel on C-contiguous aligned arrays, so that the result never
            # depends on the layout or byte order the arguments came in.
            def c(a):
                return None if a is None else np.require(a, requirements=["C", "A"])
            h1 = self._step(c(xb), c(h), c(W_ih), c(W_hh), c(b_ih), c(b_hh), self._relu)
        if h1 is None:
            out, _ = F.rnn_forward(np.ascontiguousarray(xb)[None], W_ih, W_hh, b_ih, b_hh, h, None,
                                   self.nonlinearity, backend=self.backend)
            h1 = out[0]
        if not batched:
            h1 = h1[0]
        self._ctx = (x, None if h is None else (h if batched else h[0]), h1) if is_grad_enabled() else None
        return h1

    def backward(self, grad_h1):
        """Returns ``(grad_x, grad_h)`` for the last call; adds into the parameters' ``.grad``."""
        x, h, h1 = _backward_context(self._ctx, "RNNCell")
        batched = x.ndim == 2
        g = F.as_array(grad_h1, "grad_h1", self.dtype)
        F.check_shape(g, "grad_h1", h1.shape)
        xb = np.ascontiguousarray(x if batched else x[None])[None]        # (1, B, I)
        out = h1[None] if batched else h1[None, None]                     # (1, B, H)
        if h is not None:
            h = h if batched else h[None]
        p = self._params
        grads = (p["weight_ih"].grad, p["weight_hh"].grad,
                 p["bias_ih"].grad if self.bias else None, p["bias_hh"].grad if self.bias else None)
        r = F.rnn_backward(xb, p["weight_ih"].data, p["weight_hh"].data, out, h0=h,
                           grad_out=g.reshape(out.shape), nonlinearity=self.nonlinearity,
                           bias=self.bias, grads=grads, backend=self.backend)
        self._ctx = None  # consumed only once it has succeeded (a rejected call changes nothing)
        if batched:
            return r.grad_x[0], r.grad_h0
        return r.grad_x[0, 0], r.grad_h0[0]


# ----------------------------------------------------------------------------- Linear
def _matmul(a, b, trans_a=False, trans_b=False, out=None, beta=0.0):
    """op(a) @ op(b) (+ beta * out) on elman's own threads when the compiled kernels are
    present, so a model's every large product shares one thread pool (NumPy's BLAS keeps its
    own threads, which would compete with elman's for the cores); NumPy otherwise."""
    core = _backend._core
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.empty((M, N), a.dtype)
        beta = 0.0
    if core is not None and out.flags.c_contiguous and out.flags.writeable:
        core.matmul(a, b, out, trans_a, trans_b, beta)
        return out
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if beta:
        out += prod
    else:
        out[...] = prod
    return out



class Linear(Module):
    """y = x W^T + b over any leading shape (the output layer y_t = W_y h_t + b_y).

    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,), initialised
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as ``torch.nn.Linear``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        self.in_features = _check_size(in_features, "in_features")
        self.out_features = _check_size(out_features, "out_features")
        has_bias = _check_bool(bias, "bias")
        self.dtype = _check_dtype(dtype)
        rng = _make_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self._add_param("weight", self._uniform(rng, (self.out_features, self.in_features), bound, self.dtype))
        if has_bias:  # as torch: .bias is the Parameter, or None
            self._add_param("bias", self._uniform(rng, (self.out_features,), bound, self.dtype))
        else:
            self.bias = None
        self._ctx = None

    def _config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.dtype.name)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")

    def forward(self, x):
        x = F.as_array(x, "input", self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input.shape[-1] must be in_features = {self.in_features}, "
                             f"got shape {x.shape}")
        x2 = x.reshape(-1, self.in_features)
        y = _matmul(x2, self._params["weight"].data, trans_b=True)
        if self.bias is not None:
            y += self.bias.data
        self._ctx = x if is_grad_enabled() else None
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_y):
        """Returns dL/dx; adds dL/dW and dL/db into the parameters' ``.grad``."""
        x = _backward_context(self._ctx, "Linear")
        g = F.as_array(grad_y, "grad_y", self.dtype)
        F.check_shape(g, "grad_y", x.shape[:-1] + (self.out_features,))
        for name, p in self._params.items():
            F.check_output(p.grad, f"{name}.grad", self.dtype, p.shape)
        g2 = g.reshape(-1, self.out_features)
        w = self._params["weight"]
        grad_x = _matmul(g2, w.data).reshape(x.shape)
        self._ctx = None  # everything allocated: only the in-place additions are left
        _matmul(g2, x.reshape(-1, self.in_features), trans_a=True, out=w.grad, beta=1.0)
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        return grad_x


# ----------------------------------------------------------------------------- Embedding
class Embedding(Module):
    """A lookup table: ``weight[indices]``; ``weight`` (num_embeddings, embedding_dim) ~ N(0, 1)
    as ``torch.nn.Embedding``, with the ``padding_idx`` row zero and never updated."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32, seed=None):
        super().__init__()
        self.num_embeddings = _check_size(num_embeddings, "num_embeddings")
        self.embedding_dim = _check_size(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if isinstance(padding_idx, (bool, np.bool_)) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx should be of type int, got: {type(padding_idx).__name__}")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings = "
                                 f"{self.num_embeddings}, got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = _check_dtype(dtype)
        rng = _make_rng(seed)
        F.check_nbytes((self.num_embeddings, self.embedding_dim), np.float64, "Embedding: weight")
        w = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if padding_idx is not None:
            w[padding_idx] = 0
        self._add_param("weight", w)
        self._ctx = None

    def _config(self):
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    padding_idx=self.padding_idx, dtype=self.dtype.name)

    def __repr__(self):
        s = f"Embedding({self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx})" if self.padding_idx is not None else ")")

    def forward(self, indices):
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"Embedding: indices must be in [0, {self.num_embeddings}), got "
                             f"values from {idx.min()} to {idx.max()}")
        self._ctx = idx.copy() if is_grad_enabled() else None
        return self._params["weight"].data[idx]

    def backward(self, grad):
        """Adds dL/dweight (rows of ``padding_idx`` excluded) into ``weight.grad``; returns None
        (integer indices have no gradient)."""
        idx = _backward_context(self._ctx, "Embedding")
        g = F.as_array(grad, "grad", self.dtype)
        F.check_shape(g, "grad", idx.shape + (self.embedding_dim,))
        weight = self._params["weight"]
        F.check_output(weight.grad, "weight.grad", self.dtype, weight.shape)
        self._ctx = None
        flat_idx = idx.reshape(-1)
        flat_g = g.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_g = flat_idx[keep], flat_g[keep]
        np.add.at(self._params["weight"].grad, flat_idx, flat_g)
        return None
