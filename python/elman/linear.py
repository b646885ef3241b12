"""The layers around the recurrence in the NumPy API: Linear (the output layer y_t = W_y h_t +
b_y) and Embedding (a lookup table), as ``torch.nn.Linear`` / ``torch.nn.Embedding``."""

import math

import numpy as np
from numpy.typing import ArrayLike

from . import _checks, _keras, functional as F
from ._module import (Module, _backward_context, _check_bool, _check_dtype, _check_size,
                      _make_rng, is_grad_enabled)

__all__ = ["Linear", "Embedding"]


# ----------------------------------------------------------------------------- Linear
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
        n = self.out_features * self.in_features
        self._reserve(n + (self.out_features if has_bias else 0), n, self.dtype)
        self._add_param("weight", self._uniform(rng, (self.out_features, self.in_features), bound, self.dtype))
        if has_bias:  # as torch: .bias is the Parameter, or None
            self._add_param("bias", self._uniform(rng, (self.out_features,), bound, self.dtype))
        else:
            self.bias = None
        self._tape = []  # the inputs of the calls not yet back-propagated, in call order

    def _config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.dtype.name)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``y = x W^T + b`` over any leading shape.

        Parameters
        ----------
        x : ndarray
            (..., in_features) in the layer's dtype.

        Returns
        -------
        ndarray
            (..., out_features). In grad mode the call is taped for ``backward``.

        Raises
        ------
        TypeError, ValueError
            Another dtype, or a last dimension other than ``in_features``.
        """
        x = _checks.as_array(x, "input", self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input.shape[-1] must be in_features = {self.in_features}, "
                             f"got shape {x.shape}")
        x2 = x.reshape(-1, self.in_features)
        y = F.matmul(x2, self._params["weight"].data, trans_b=True)
        if self.bias is not None:
            y += self.bias.data
        if is_grad_enabled():
            self._tape.append((x, self._guard(x=x)))
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_y: ArrayLike) -> np.ndarray:
        """Back-propagates through the most recent call not yet back-propagated (calls are
        taped in grad mode, so a head applied at every step of a loop back-propagates once per
        step in reverse order, as with ``RNNCell``): returns dL/dx, adds dL/dW and dL/db into the
        parameters' ``.grad``. ``zero_grad()`` drops the calls not back-propagated."""
        x, guard = _backward_context(self._tape[-1] if self._tape else None, "Linear")
        self._check_guard(guard, x=x)
        g = _checks.as_array(grad_y, "grad_y", self.dtype)
        _checks.check_shape(g, "grad_y", x.shape[:-1] + (self.out_features,))
        for name, p in self._params.items():
            _checks.check_output(p.grad, f"{name}.grad", self.dtype, p.shape)
        g2 = g.reshape(-1, self.out_features)
        w = self._params["weight"]
        grad_x = F.matmul(g2, w.data).reshape(x.shape)
        self._tape.pop()  # everything allocated: only the in-place additions are left
        F.matmul(g2, x.reshape(-1, self.in_features), trans_a=True, out=w.grad, beta=1.0)
        if self.bias is not None:
            self.bias.grad += g2.sum(axis=0)
        return grad_x

    def zero_grad(self) -> None:
        """Zeros the parameters' gradients and drops the tape of recorded calls."""
        self._tape.clear()
        super().zero_grad()

    # -- Keras weight interchange (elman._keras)
    @classmethod
    def from_keras(cls, layer_or_weights, dtype=None):
        """A Linear with the weights of a Keras ``Dense`` layer.

        ``layer_or_weights``: a built ``keras.layers.Dense`` or its weight list ``[kernel (I, O),
        bias (O,)]`` (bias left out for ``use_bias=False``). Keras computes y = x @ kernel +
        bias, so weight = kernel.T. The Dense layer's activation is not part of a Linear: apply
        it to the output (e.g. ``elman.sigmoid``), or train on the logits (e.g. with
        ``BCEWithLogitsLoss``). ``dtype`` defaults to the kernel's float type.
        """
        return _keras.linear_from_keras(cls, layer_or_weights, dtype)

    def to_keras_weights(self):
        """``[kernel (I, O), bias (O,)]`` for a Keras ``Dense(O, use_bias=self.bias is not
        None)`` (``layer.set_weights(...)``): kernel = weight.T; copies, in the module's dtype.
        """
        return _keras.linear_to_keras_weights(self)


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
        n = self.num_embeddings * self.embedding_dim
        self._reserve(n, n, self.dtype)
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

    def forward(self, indices: ArrayLike) -> np.ndarray:
        """The rows ``weight[indices]``.

        Parameters
        ----------
        indices : array of int
            Any shape, values in [0, num_embeddings).

        Returns
        -------
        ndarray
            ``indices.shape + (embedding_dim,)``.
        """
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"Embedding: indices must be in [0, {self.num_embeddings}), got "
                             f"values from {idx.min()} to {idx.max()}")
        out = self._params["weight"].data[idx]
        self._ctx = idx.copy() if is_grad_enabled() else None  # after the lookup succeeded
        return out

    def backward(self, grad: ArrayLike) -> None:
        """Adds dL/dweight (rows of ``padding_idx`` excluded) into ``weight.grad``; returns None
        (integer indices have no gradient)."""
        idx = _backward_context(self._ctx, "Embedding")
        g = _checks.as_array(grad, "grad", self.dtype)
        _checks.check_shape(g, "grad", idx.shape + (self.embedding_dim,))
        weight = self._params["weight"]
        _checks.check_output(weight.grad, "weight.grad", self.dtype, weight.shape)
        self._ctx = None
        flat_idx = idx.reshape(-1)
        flat_g = g.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, flat_g = flat_idx[keep], flat_g[keep]
        np.add.at(self._params["weight"].grad, flat_idx, flat_g)
        return None
