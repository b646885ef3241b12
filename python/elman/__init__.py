"""elman: fast vanilla (Elman) recurrent neural networks for NumPy.

h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f = tanh or relu, with fused C++ kernels for the
whole forward pass and the whole backpropagation through time of a layer.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import functional, losses, reference, training
from ._backend import available as backends
from .layers import (Embedding, Linear, Module, Parameter, RNN, RNNCell, is_grad_enabled,
                     no_grad)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, sigmoid, softmax
from .optim import SGD, clip_grad_norm_, clip_grad_value_
from .serialization import load, save
from ._threads import (get_flush_denormal, get_num_threads, max_num_threads, set_flush_denormal,
                       set_num_threads)
from .training import History, fit

try:
    __version__ = _version("elman")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "RNN", "RNNCell", "Linear", "Embedding", "Parameter", "Module", "no_grad", "is_grad_enabled",
    "MSELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "sigmoid", "softmax",
    "SGD", "clip_grad_norm_", "clip_grad_value_",
    "fit", "History", "save", "load", "backends", "set_num_threads", "get_num_threads",
    "max_num_threads", "set_flush_denormal", "get_flush_denormal",
    "functional", "losses", "reference", "training", "__version__",
]
