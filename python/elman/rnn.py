"""The recurrent layers of the NumPy API: RNN (a stack of layers and directions over whole
sequences, through functional.rnn_layers_forward / rnn_layers_backward) and RNNCell (one step).
Names, shapes and defaults follow ``torch.nn``."""

import math
import warnings

import numpy as np

from . import _keras, functional as F
from .linear import Linear
from ._module import (Module, _backward_context, _check_bool, _check_dtype, _check_size,
                      _make_rng, is_grad_enabled)

__all__ = ["RNN", "RNNCell"]


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
        self._be = F.get_backend(backend)
        self.backend = self._be.name
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

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh) arrays per layer and direction, as they are
        now (a replaced ``.data`` takes effect at the next call)."""
        return [tuple(None if p is None else p._data for p in cell[1:]) for cell in self._cells]

    def _dropout(self, k, out):
        """Dropout between layer k and k + 1 (training only): the next layer's input and the
        mask its gradient is multiplied by, drawn from the module's generator."""
        keep = 1.0 - self.dropout
        mask = (self._rng.random(out.shape) < keep).astype(self.dtype)
        if keep > 0:
            mask /= self.dtype.type(keep)
        return out * mask, mask

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
        dropout = self._dropout if self.training and self.dropout > 0 else None
        out, h_n, tape = F.rnn_layers_forward(x, self._weights(), h0, lengths, self.nonlinearity,
                                              bidirectional=self.bidirectional, dropout=dropout,
                                              record=record, backend=self._be)
        self._ctx = (tape, h0, lengths, batched, x.shape) if record else None
        if not batched:
            return out[:, 0, :], h_n[:, 0, :]
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n

    # -- backward
    def backward(self, grad_out=None, grad_h_n=None):
        """BPTT through the last forward call. Returns ``(grad_x, grad_h0)`` in the layouts
        of x and h0; adds into every parameter's ``.grad``; sets ``self.grad_norms``."""
        tape, h0, lengths, batched, (T, B, I) = _backward_context(self._ctx, "RNN")
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
        grads = [tuple(None if p is None else p._grad for p in cell[1:]) for cell in self._cells]
        grad_x, grad_h0, norms = F.rnn_layers_backward(
            tape, self._weights(), grads, h0, lengths, self.nonlinearity, grad_out, grad_h_n,
            bidirectional=self.bidirectional, backend=self._be)
        self.grad_norms = {cell[0]: n for cell, n in zip(self._cells, norms)}
        if not batched:
            return grad_x[:, 0, :], grad_h0[:, 0, :]
        if self.batch_first:
            grad_x = grad_x.transpose(1, 0, 2)
        return grad_x, grad_h0

    # -- Keras weight interchange (elman._keras)
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

        A Keras model (``Sequential`` or functional) whose layers are ``[SimpleRNN, Dense]``
        (input layers aside) gives the pair ``(rnn, linear)``: the RNN as above and
        ``Linear.from_keras(dense)`` in the RNN's dtype. Apply ``linear`` to ``h_n[-1]`` when
        the SimpleRNN returns its last output (the default), to ``out`` with
        ``return_sequences=True``; the Dense activation is not applied (see
        ``Linear.from_keras``).
        """
        return _keras.rnn_from_keras(cls, layer_or_weights, nonlinearity, batch_first,
                                     linear_cls=Linear, **kwargs)

    def to_keras_weights(self):
        """``[kernel (I, H), recurrent_kernel (H, H), bias (H,)]`` for a Keras ``SimpleRNN(H,
        activation=self.nonlinearity, use_bias=self.bias)`` (``layer.set_weights(...)``):
        the transposed weights and bias = bias_ih + bias_hh (Keras has one bias); no bias
        when ``bias`` is False. Copies, in the module's dtype. One layer, one direction only.
        """
        return _keras.rnn_to_keras_weights(self)


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
        self._be = F.get_backend(backend)
        self.backend = self._be.name
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
        # the backend's one-step fast path (None: it has none), bound once: a cell step is a
        # few microseconds, so every attribute lookup on the way counts
        self._step = self._be.cell_step if self._be.cell_step_fast else None

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
                            None if b_hh is None else b_hh._data, self.nonlinearity)
            if h1 is not None:
                # straight into __dict__: Module.__setattr__ costs more than this whole step
                self.__dict__["_ctx"] = (x, h, h1) if is_grad_enabled() else None
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
            h1 = self._step(c(xb), c(h), c(W_ih), c(W_hh), c(b_ih), c(b_hh), self.nonlinearity)
        if h1 is None:
            out, _ = F.rnn_forward(np.ascontiguousarray(xb)[None], W_ih, W_hh, b_ih, b_hh, h, None,
                                   self.nonlinearity, backend=self._be)
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
                           bias=self.bias, grads=grads, backend=self._be)
        self._ctx = None  # consumed only once it has succeeded (a rejected call changes nothing)
        if batched:
            return r.grad_x[0], r.grad_h0
        return r.grad_x[0, 0], r.grad_h0[0]
