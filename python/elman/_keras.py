"""Keras interchange of the NumPy API (beside elman.torch, the torch interop): a Keras
``SimpleRNN``'s weights into an ``elman.RNN`` and back, a ``Dense`` layer's into an
``elman.Linear`` and back, a [SimpleRNN, Dense] model into both. Keras itself is never imported
here: a layer is recognised by its class name and read through ``get_config`` / ``get_weights``."""

import numpy as np

from ._checks import FLOAT_DTYPES, NONLINEARITIES


def _is(obj, class_name):
    """True when ``obj``'s class is, or derives from, a class named ``class_name``."""
    return any(c.__name__ == class_name for c in type(obj).__mro__)


def rnn_from_keras(cls, layer_or_weights, nonlinearity=None, batch_first=True, linear_cls=None,
                   **kwargs):
    """The body of ``RNN.from_keras`` (see its docstring); ``cls``: the RNN class to build,
    ``linear_cls``: the Linear class a [SimpleRNN, Dense] model's head becomes."""
    if _is(layer_or_weights, "Model"):
        rnn_layer, dense = _rnn_and_dense(layer_or_weights)
        rnn = rnn_from_keras(cls, rnn_layer, nonlinearity, batch_first, **kwargs)
        return rnn, linear_from_keras(linear_cls, dense, dtype=rnn.dtype)
    weights, activation = layer_or_weights, "tanh"
    if hasattr(layer_or_weights, "get_weights"):
        if not _is(layer_or_weights, "SimpleRNN"):
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
        if activation not in NONLINEARITIES:
            raise ValueError(f"from_keras: Keras activation {activation!r} has no equivalent "
                             "here; RNN supports 'tanh' and 'relu'")
        nonlinearity = activation
    if "dtype" not in kwargs:
        kwargs["dtype"] = kernel.dtype if kernel.dtype in FLOAT_DTYPES else np.float32
    rnn = cls(I, H, nonlinearity=nonlinearity, bias=len(arrays) == 3,
              batch_first=batch_first, **kwargs)
    state = {"weight_ih_l0": kernel.T, "weight_hh_l0": recurrent.T}
    if rnn.bias:
        state.update(bias_ih_l0=arrays[2], bias_hh_l0=np.zeros(H))
    rnn.load_state_dict(state)
    return rnn


def rnn_to_keras_weights(rnn):
    """The body of ``RNN.to_keras_weights`` (see its docstring)."""
    if rnn.num_layers != 1 or rnn.bidirectional:
        raise ValueError(f"to_keras_weights maps one SimpleRNN: needs num_layers=1 and "
                         f"bidirectional=False, got num_layers={rnn.num_layers}, "
                         f"bidirectional={rnn.bidirectional}")
    p = rnn._params
    out = [np.ascontiguousarray(p["weight_ih_l0"].data.T),
           np.ascontiguousarray(p["weight_hh_l0"].data.T)]
    if rnn.bias:
        out.append(p["bias_ih_l0"].data + p["bias_hh_l0"].data)
    return out


def _rnn_and_dense(model):
    """The SimpleRNN and Dense layers of a model made of exactly these two (input layers aside)."""
    layers = [layer for layer in model.layers if not _is(layer, "InputLayer")]
    names = [type(layer).__name__ for layer in layers]
    if len(layers) != 2 or not (_is(layers[0], "SimpleRNN") and _is(layers[1], "Dense")):
        raise ValueError(f"from_keras: a model must hold the layers [SimpleRNN, Dense], got "
                         f"[{', '.join(names)}]")
    return layers


def linear_from_keras(cls, layer_or_weights, dtype=None):
    """The body of ``Linear.from_keras`` (see its docstring); ``cls``: the Linear class."""
    weights, use_bias = layer_or_weights, None
    if hasattr(layer_or_weights, "get_weights"):
        if not _is(layer_or_weights, "Dense"):
            raise TypeError(f"from_keras expects a keras.layers.Dense or its weight list, got "
                            f"{type(layer_or_weights).__name__}")
        use_bias = layer_or_weights.get_config().get("use_bias", True)
        weights = layer_or_weights.get_weights()
        if not weights:
            raise ValueError("from_keras: the layer has no weights yet; build it first (call "
                             "it on an input)")
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") \
            or len(weights) not in (1, 2):
        raise TypeError("from_keras expects a keras.layers.Dense or a list [kernel, bias] / "
                        "[kernel]")
    if use_bias is not None and len(weights) != 1 + use_bias:
        raise ValueError(f"from_keras: expected {1 + use_bias} weights from the layer, got "
                         f"{len(weights)}")
    arrays = [np.asarray(w) for w in weights]
    for name, a, ndim in zip(("kernel", "bias"), arrays, (2, 1)):
        if a.dtype.kind not in "fiu":
            raise TypeError(f"from_keras: {name} must hold real numbers, got dtype {a.dtype}")
        if a.ndim != ndim:
            raise ValueError(f"from_keras: {name} must be {ndim}-D, got shape {a.shape}")
    kernel = arrays[0]
    I, O = kernel.shape
    if len(arrays) == 2 and arrays[1].shape != (O,):
        raise ValueError(f"from_keras: bias must have shape ({O},) for a kernel of shape "
                         f"{kernel.shape}, got {arrays[1].shape}")
    if dtype is None:
        dtype = kernel.dtype if kernel.dtype in FLOAT_DTYPES else np.float32
    linear = cls(I, O, bias=len(arrays) == 2, dtype=dtype)
    state = {"weight": kernel.T}
    if len(arrays) == 2:
        state["bias"] = arrays[1]
    linear.load_state_dict(state)
    return linear


def linear_to_keras_weights(linear):
    """The body of ``Linear.to_keras_weights`` (see its docstring)."""
    p = linear._params
    out = [np.ascontiguousarray(p["weight"].data.T)]
    if linear.bias is not None:
        out.append(p["bias"].data.copy())
    return out
