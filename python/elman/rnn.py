"""The recurrent layers of the NumPy API: RNN (a stack of layers and directions over whole
sequences, through functional.rnn_layers_forward / rnn_layers_backward) and RNNCell (one step).
Names, shapes and defaults follow ``torch.nn``."""

import math
import warnings
from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _keras, functional as F
from .linear import Linear
from ._module import (Module, _backward_context, _check_bool, _check_dtype, _check_size,
                      _make_rng, is_grad_enabled)

__all__ = ["RNN", "RNNCell"]


# ----------------------------------------------------------------------------- RNN
class RNN(Module):
    """Multi-layer Elman RNN with the constructor, parameters and shapes of ``torch.nn.RNN``.

    Each layer computes ``h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` over the whole
    sequence in one fused kernel call per direction; ``backward`` runs BPTT the same way.

    Parameters
    ----------
    input_size : int
        I, the features of each input step.
    hidden_size : int
        H, the units of the state.
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads the outputs (D * H features) of layer k - 1.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    bias : bool, default True
        With ``bias_ih_l{k}`` / ``bias_hh_l{k}`` (H,) parameters.
    batch_first : bool, default False
        Inputs and outputs (B, T, features) instead of (T, B, features); h0 / h_n are
        (num_layers * D, B, H) either way.
    dropout : float, default 0.0
        Probability of zeroing each output of every layer but the last, in training mode.
    bidirectional : bool, default False
        D = 2 directions per layer (``*_reverse`` parameters); outputs concatenate both.
    dtype : float32 or float64, default float32
        Of the parameters; inputs must have it too (``TypeError`` otherwise).
    seed : int or None
        Seeds the initialization U(-1/sqrt(H), 1/sqrt(H)) (as torch) and the dropout masks.
    backend : {None, "auto", "cpu", "numpy", "cuda"}
        Where the kernels run; "auto" (None) picks the compiled CPU kernels. "numpy" runs the
        float64 reference (slow; for comparisons).

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} : Parameter
        (H, I or D * H), (H, H), (H,), (H,); ``*_reverse`` for the second direction.
    grad_norms : dict of str to ndarray
        After ``backward``: ``"l{k}"`` / ``"l{k}_reverse"`` -> (T,) float64 ||dL/dh_t||_2.

    Raises
    ------
    TypeError, ValueError
        Bad sizes, nonlinearity, dtype or flags, with torch's messages.

    Examples
    --------
    >>> import numpy as np, elman
    >>> rnn = elman.RNN(3, 8, num_layers=2, bidirectional=True, seed=0)
    >>> out, h_n = rnn(np.ones((5, 2, 3), np.float32))
    >>> out.shape, h_n.shape
    ((5, 2, 16), (4, 2, 8))
    >>> grad_x, grad_h0 = rnn.backward(grad_out=np.ones_like(out))
    >>> grad_x.shape, rnn.grad_norms["l0_reverse"].shape
    ((5, 2, 3), (5,))
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
        per_bias = 2 * H if self.bias else 0
        first, later = H * self.input_size + H * H + per_bias, H * D * H + H * H + per_bias
        self._reserve(D * (first + (self.num_layers - 1) * later),
                      H * max(self.input_size, D * H if self.num_layers > 1 else 0, H), self.dtype)
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
        """D: 2 when bidirectional, else 1."""
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
    def forward(self, x: ArrayLike, h0: Optional[ArrayLike] = None,
                lengths: Optional[ArrayLike] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Runs every layer and direction over the sequence (also ``rnn(x, h0, lengths)``).

        Parameters
        ----------
        x : ndarray
            (T, B, I); (B, T, I) with ``batch_first``; unbatched (T, I). The module's dtype.
        h0 : ndarray, optional
            (num_layers * D, B, H) (unbatched: (num_layers * D, H)) initial states; zeros
            when None.
        lengths : array of int, optional
            (B,) lengths in [1, T] of variable-length sequences (the semantics of torch's
            ``pack_padded_sequence(..., enforce_sorted=False)``): ``out`` is 0 past each
            length, ``h_n`` holds each sequence's state at its last valid step, and the
            reverse direction starts at each sequence's own last step.

        Returns
        -------
        out : ndarray
            (T, B, D * H) (``batch_first``: (B, T, D * H); unbatched: (T, D * H)), the last
            layer's states at every step.
        h_n : ndarray
            (num_layers * D, B, H) (unbatched: (num_layers * D, H)), every layer's final state.

        Raises
        ------
        TypeError
            An input of another dtype than the module's.
        ValueError
            Wrong shapes or lengths, with torch's messages.
        """
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
        if record:
            self._ctx = (tape, h0, lengths, batched, x.shape, self._guard(x=x, h0=h0))
            for _, layer_out, _ in tape:  # backward reads them: protected from in-place changes
                layer_out.flags.writeable = False
        else:
            self._ctx = None
        if not batched:
            return out[:, 0, :], h_n[:, 0, :]
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n

    # -- backward
    def backward(self, grad_out: Optional[ArrayLike] = None,
                 grad_h_n: Optional[ArrayLike] = None) -> Tuple[np.ndarray, np.ndarray]:
        """BPTT through the last forward call (each forward can be back-propagated once).

        Parameters
        ----------
        grad_out : ndarray, optional
            dL/d out, in the shape and layout of ``out``; zeros when None.
        grad_h_n : ndarray, optional
            dL/d h_n, in the shape of ``h_n``; zeros when None.

        Returns
        -------
        grad_x : ndarray
            dL/dx in the layout of x.
        grad_h0 : ndarray
            dL/dh0 in the shape of ``h_n`` (also when h0 was None: the gradient with respect
            to the zero state).

        Adds every parameter's gradient into its ``.grad`` and sets ``grad_norms``.

        Raises
        ------
        RuntimeError
            No forward call with gradients enabled to back-propagate.
        TypeError, ValueError
            Gradients of another dtype or shape; nothing is changed then.
        """
        tape, h0, lengths, batched, (T, B, I), guard = _backward_context(self._ctx, "RNN")
        self._check_guard(guard, x=tape[0][0], h0=h0)
        D, H, nL = self.num_directions, self.hidden_size, self.num_layers
        if grad_out is not None:
            grad_out = F.as_array(grad_out, "grad_out", self.dtype)
            expected: tuple = (T, B, D * H) if not self.batch_first else (B, T, D * H)
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
        grads = [tuple(None if p is None else p._grad for p in cell[1:]) for cell in self._cells]
        # All or nothing: with several kernel calls, a failure in a lower layer (e.g. no memory
        # for its scratch) must not leave the upper layers' gradients added; they are restored
        # from a copy (the size of the parameters, small beside the activations).
        saved = [p._grad.copy() for p in self._params.values()] if len(self._cells) > 1 else None
        try:
            grad_x, grad_h0, norms = F.rnn_layers_backward(
                tape, self._weights(), grads, h0, lengths, self.nonlinearity, grad_out,
                grad_h_n, bidirectional=self.bidirectional, backend=self._be)
        except BaseException:
            for p, g in zip(self._params.values(), saved or ()):
                p._grad[...] = g
            raise
        self._ctx = None  # consumed only once it has succeeded: a failed call can be retried
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
    """One Elman step with the constructor and parameters of ``torch.nn.RNNCell``.

    ``h1 = cell(x, h=None)`` computes ``f(x W_ih^T + b_ih + h W_hh^T + b_hh)``; in grad mode
    every call goes on the cell's tape, and ``cell.backward(grad_h1)`` once per call in
    reverse order back-propagates through a whole loop (see :meth:`backward`).

    Parameters
    ----------
    input_size, hidden_size : int
        I and H.
    bias : bool, default True
    nonlinearity : {"tanh", "relu"}, default "tanh"
    dtype : float32 or float64, default float32
    seed : int or None
        Seeds the initialization U(-1/sqrt(H), 1/sqrt(H)).
    backend : {None, "auto", "cpu", "numpy", "cuda"}

    Examples
    --------
    >>> import numpy as np, elman
    >>> cell = elman.RNNCell(3, 4, seed=0)
    >>> h = None
    >>> for t in range(5):
    ...     h = cell(np.ones((2, 3), np.float32), h)
    >>> carry = np.zeros((2, 4), np.float32)
    >>> for t in range(5):                   # the loop backwards, last step first
    ...     grad_x, carry = cell.backward(np.ones((2, 4), np.float32) + carry)
    >>> cell.weight_hh.grad.shape
    (4, 4)
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
        self._reserve(H * self.input_size + H * H + (2 * H if self.bias else 0),
                      H * max(self.input_size, H), self.dtype)
        self._add_param("weight_ih", self._uniform(rng, (H, self.input_size), bound, self.dtype))
        self._add_param("weight_hh", self._uniform(rng, (H, H), bound, self.dtype))
        if self.bias:
            self._add_param("bias_ih", self._uniform(rng, (H,), bound, self.dtype))
            self._add_param("bias_hh", self._uniform(rng, (H,), bound, self.dtype))
        # The tape: (x, h, h1) of every call since the loop began, for backward in reverse order
        self._tape = []
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
                if is_grad_enabled():
                    h1.flags.writeable = False  # backward reads it
                    self._record(h, (x, h, h1, self._guard(x=x, h=h)))
                return h1
        return self.forward(x, h)

    def _record(self, h_arg, step):
        """Puts a step on the tape. A call whose state argument is not the array the previous
        call returned begins a new loop: the steps of the old one that were not back-propagated
        are dropped (they could only be reached out of order)."""
        tape = self._tape
        if tape and h_arg is not tape[-1][2]:
            tape.clear()
        tape.append(step)

    def zero_grad(self):
        """Zeros the parameters' gradients and drops the tape of recorded steps."""
        self._tape.clear()
        super().zero_grad()

    def forward(self, x: ArrayLike, h: Optional[ArrayLike] = None) -> np.ndarray:
        """One step: ``h1 = f(x W_ih^T + b_ih + h W_hh^T + b_hh)`` with x (B, I) or (I,) and
        h (B, H) or (H,) (None: zeros). In grad mode the call goes on the cell's tape, so that
        ``backward`` can be called once per step in reverse order (see :meth:`backward`)."""
        h_arg = h
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
        record = is_grad_enabled()
        if record:
            h1.flags.writeable = False  # backward reads it (and views of it stay read-only)
        if not batched:
            h1 = h1[0]
        if record:
            h = None if h is None else (h if batched else h[0])
            self._record(h_arg, (x, h, h1, self._guard(x=x, h=h)))
        return h1

    def backward(self, grad_h1: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Back-propagates through the most recent step on the tape not yet back-propagated:
        ``grad_h1`` is dL/dh1 of that step; returns ``(grad_x, grad_h)`` (dL/dx and dL/dh of
        that step) and adds into the parameters' ``.grad``.

        A loop ``h = cell(x[t], h)`` for t = 0..T-1 trains by calling ``backward`` once per
        step in reverse order, each time with the step's own gradient plus the ``grad_h``
        returned by the step after it (the semantics of autograd through a Python loop). The
        tape holds one step's arrays per call; it is emptied as the steps are back-propagated,
        by ``zero_grad()``, and when a call does not continue the previous one (its ``h`` is not
        the array the previous call returned). ``elman.no_grad()`` records nothing.
        """
        x, h, h1, guard = _backward_context(self._tape[-1] if self._tape else None, "RNNCell")
        self._check_guard(guard, x=x, h=h)
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
        self._tape.pop()  # consumed only once it has succeeded (a rejected call changes nothing)
        if batched:
            return r.grad_x[0], r.grad_h0
        return r.grad_x[0, 0], r.grad_h0[0]
