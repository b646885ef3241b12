"""The thin layer API, gathered under its historical import path (``elman.layers``): each name
lives in the room that holds it (_module.py, rnn.py, linear.py)."""

from ._module import Module, Parameter, is_grad_enabled, no_grad
from .linear import Embedding, Linear
from .rnn import RNN, RNNCell

__all__ = ["Parameter", "Module", "RNN", "RNNCell", "Linear", "Embedding", "no_grad",
           "is_grad_enabled"]
