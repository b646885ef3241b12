"""The functional floor: kernel entry points with the ``backend`` argument, and the one loop over
layers and directions that the NumPy layers and elman.torch share.

``rnn_forward`` / ``rnn_backward`` run one layer in one direction: defaults, allocation of the
results, and one call of the backend object that ``elman._backend.resolve`` picks. Arguments are
checked by the ground floor (``elman._checks``) with messages that name the argument and give
expected vs actual, so every backend reports bad input the same way.
``rnn_layers_forward`` / ``rnn_layers_backward`` run a stack (layers x directions) on arguments
a layer has already checked. Shape legend: T time steps, B batch, I input features, H hidden
units, L layers, D directions (2 when bidirectional).
"""

from collections import namedtuple

import numpy as np

from . import _backend
from ._checks import (FLOAT_DTYPES, NONLINEARITIES, as_array, as_lengths,  # noqa: F401
                      check_disjoint, check_layer, check_nbytes, check_nonlinearity,
                      check_output, check_shape, empty, optional)

__all__ = ["rnn_forward", "rnn_backward", "RNNGrads", "rnn_layers_forward",
           "rnn_layers_backward", "rnn_cell_step", "matmul"]

RNNGrads = namedtuple("RNNGrads", ["grad_x", "grad_h0", "grad_weight_ih", "grad_weight_hh",
                                   "grad_bias_ih", "grad_bias_hh", "grad_norms"])
RNNGrads.__doc__ = """Gradients of one layer and direction. ``grad_norms`` (T,) float64 holds
||dL/dh_t||_2 over the valid (b, j) at each step t (0 where no sequence is valid)."""

_GRAD_NAMES = ("grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")


def get_backend(backend=None):
    """The backend object for ``backend`` ("auto" / None, "cpu", "cuda", "numpy"), resolved
    once by a layer at construction and passed back in as ``backend=``."""
    return _backend.resolve(backend)


# ----------------------------------------------------------------------------- one layer
def rnn_forward(x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, lengths=None,
                nonlinearity="tanh", reverse=False, *, out=None, backend=None, stream=None):
    """Fused forward of one layer in one direction.

    x (T, B, I), weight_ih (H, I), weight_hh (H, H), bias_ih / bias_hh (H,) or None,
    h0 (B, H) or None (zeros), lengths (B,) ints in [1, T] or None. ``out``: an optional
    preallocated (T, B, H) array to write into (a column slice of a (T, B, 2H) array is fine).
    Returns ``(out, h_n)``: out (T, B, H) with 0 past each sequence's length, h_n (B, H).
    backend="cuda" (or "auto" given CUDA device arrays): NumPy arrays are copied to the GPU and
    back; device arrays (torch, CuPy: ``__cuda_array_interface__`` or ``__dlpack__``) are used in
    place and results come back on the same device. ``stream`` (cuda only): a cudaStream_t int or
    a torch / CuPy stream (default: the array library's current stream for torch / CuPy arrays,
    else the legacy default stream).
    """
    be = _backend.resolve(backend, x, weight_hh, h0, out, stream=stream)
    if be.device:  # all arrays on the host or all on one device: see elman.backends.cuda
        return be.rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                              nonlinearity, reverse, out=out, stream=stream)
    x, weight_ih, weight_hh, bias_ih, bias_hh, T, B, I, H, dtype = check_layer(
        x, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)
    h0 = optional(h0, "h0", dtype, (B, H))
    lengths = as_lengths(lengths, T, B)
    if out is None:
        out = empty((T, B, H), dtype, "out")
    else:  # written in place: exactly the dtype, never a converted copy
        if not isinstance(out, np.ndarray) or out.dtype != dtype:
            raise TypeError(f"out must be a numpy.ndarray of dtype {np.dtype(dtype).name}, got "
                            f"{getattr(out, 'dtype', type(out).__name__)}")
        check_shape(out, "out", (T, B, H))
        if not out.flags.writeable:
            raise ValueError("out must be writable")
        check_disjoint([("out", out)], [("x", x), ("weight_ih", weight_ih),
                                        ("weight_hh", weight_hh), ("bias_ih", bias_ih),
                                        ("bias_hh", bias_hh), ("h0", h0)])
    h_n = empty((B, H), dtype, "h_n")
    be.forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity, reverse,
               out, h_n)
    return out, h_n


def rnn_backward(x, weight_ih, weight_hh, out, h0=None, grad_out=None, grad_h_n=None,
                 lengths=None, nonlinearity="tanh", reverse=False, bias=True, *, grads=None,
                 grad_x=None, accumulate_grad_x=False, backend=None, stream=None):
    """Fused BPTT through one ``rnn_forward`` call (same x, weights, h0, lengths; its ``out``).

    grad_out (T, B, H) and grad_h_n (B, H) are dL/d out and dL/d h_n (None: zeros).
    ``grads``: optional (dW_ih, dW_hh, db_ih, db_hh) arrays to accumulate (+=) into, e.g. the
    parameters' ``.grad``; db_* are None when ``bias`` is False. ``grad_x``: optional (T, B, I)
    array to write (or, with ``accumulate_grad_x``, add) the input gradient into.
    Returns :class:`RNNGrads`. ``backend`` and ``stream``: as :func:`rnn_forward`.
    """
    be = _backend.resolve(backend, x, weight_hh, out, grad_out, stream=stream)
    if be.device:
        return RNNGrads(*be.rnn_backward(
            x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths, nonlinearity, reverse,
            bias, grads=grads, grad_x=grad_x, accumulate_grad_x=accumulate_grad_x, stream=stream))
    x, weight_ih, weight_hh, _, _, T, B, I, H, dtype = check_layer(
        x, weight_ih, weight_hh, None, None, nonlinearity)
    out = as_array(out, "out", dtype)
    check_shape(out, "out", (T, B, H))
    h0 = optional(h0, "h0", dtype, (B, H))
    grad_out = optional(grad_out, "grad_out", dtype, (T, B, H))
    grad_h_n = optional(grad_h_n, "grad_h_n", dtype, (B, H))
    lengths = as_lengths(lengths, T, B)
    grads = _grad_arrays(grads, bias, dtype, H, I)
    if grad_x is None:
        grad_x = empty((T, B, I), dtype, "grad_x")
        accumulate_grad_x = False
    else:
        check_output(grad_x, "grad_x", dtype, (T, B, I))
    check_disjoint(list(zip(_GRAD_NAMES, grads)) + [("grad_x", grad_x)],
                   [("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh), ("out", out),
                    ("h0", h0), ("grad_out", grad_out), ("grad_h_n", grad_h_n)])
    grad_h0 = empty((B, H), dtype, "grad_h0")
    norms = empty((T,), np.float64, "grad_norms")
    be.backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths, nonlinearity,
                reverse, grad_x, accumulate_grad_x, grad_h0, grads, norms)
    return RNNGrads(grad_x, grad_h0, *grads, norms)


def _grad_arrays(grads, bias, dtype, H, I):
    """The (dW_ih, dW_hh, db_ih, db_hh) arrays to accumulate into: given and checked, or zeros."""
    if grads is None:
        return (np.zeros((H, I), dtype), np.zeros((H, H), dtype),
                np.zeros(H, dtype) if bias else None, np.zeros(H, dtype) if bias else None)
    if not isinstance(grads, (tuple, list)) or len(grads) != 4:
        raise TypeError("grads must be a tuple (grad_weight_ih, grad_weight_hh, grad_bias_ih, "
                        "grad_bias_hh) of arrays (biases: None without bias)")
    for name, g, shape in zip(_GRAD_NAMES, grads, ((H, I), (H, H), (H,), (H,))):
        if g is not None:
            check_output(g, name, dtype, shape)
    return tuple(grads)


# ----------------------------------------------------------------------------- a stack
def rnn_layers_forward(x, weights, h0=None, lengths=None, nonlinearity="tanh", *,
                       bidirectional=False, dropout=None, record=True, backend=None):
    """Every layer and direction of a stack, each direction one fused kernel call.

    Arguments are already checked by the caller (a layer): x (T, B, I) C-contiguous in the
    weights' dtype; ``weights``: one tuple (weight_ih, weight_hh, bias_ih, bias_hh) per layer and
    direction in torch's order (l0, l0_reverse, l1, ...), biases None without bias; h0
    (L * D, B, H) or None; lengths (B,) int64 in [1, T] or None. ``dropout``: None, or a function
    ``(k, out) -> (next_input, mask)`` applied between layer k and k + 1 (mask: the array that
    ``rnn_layers_backward`` multiplies the input gradient by, or None).
    Returns ``(out, h_n, tape)``: out (T, B, D * H) of the last layer, h_n (L * D, B, H), and
    the tape ``rnn_layers_backward`` needs (a list of (input, output, mask) per layer; None
    unless ``record``).
    """
    be = _backend.resolve(backend)
    D = 2 if bidirectional else 1
    L = len(weights) // D
    T, B, _ = x.shape
    H = weights[0][1].shape[0]
    dtype = x.dtype
    h_n = empty((L * D, B, H), dtype, "h_n")
    if D == 1 and L > 1 and dropout is None:
        # One direction, nothing between the layers: the stack in one call, which at small
        # batch runs the layers as a wavefront (layer k + 1 one chunk of steps behind layer k).
        outs = [empty((T, B, H), dtype, f"the output of layer {k}") for k in range(L)]
        ins = [x] + outs[:-1]
        be.forward_layers([(ins[k], *weights[k], None if h0 is None else h0[k], lengths,
                            nonlinearity, False, outs[k], h_n[k]) for k in range(L)])
        return outs[-1], h_n, [(ins[k], outs[k], None) for k in range(L)] if record else None
    tape = [] if record else None
    inp, mask = x, None  # mask: the dropout mask that produced inp (None: none)
    for k in range(L):
        out = empty((T, B, D * H), dtype, f"the output of layer {k}")
        calls = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh = weights[k * D + d]
            calls.append((inp, w_ih, w_hh, b_ih, b_hh, None if h0 is None else h0[k * D + d],
                          lengths, nonlinearity, d == 1,
                          out[:, :, d * H:(d + 1) * H] if D > 1 else out, h_n[k * D + d]))
        if D > 1:  # the directions are independent: at small batch they run at the same time
            be.forward_calls(calls)
        else:
            be.forward(*calls[0])
        if record:
            tape.append((inp, out, mask))
        inp, mask = out, None
        if dropout is not None and k < L - 1:
            inp, mask = dropout(k, out)
    return out, h_n, tape


def rnn_layers_backward(tape, weights, grads, h0=None, lengths=None, nonlinearity="tanh",
                        grad_out=None, grad_h_n=None, *, bidirectional=False, want_grad_x=True,
                        want_grad_h0=True, backend=None):
    """BPTT through a :func:`rnn_layers_forward` call, from its ``tape``.

    ``grads``: one tuple (dW_ih, dW_hh, db_ih, db_hh) per layer and direction (same order as
    ``weights``), accumulated into (+=); db_* None without bias. grad_out (T, B, D * H) and
    grad_h_n (L * D, B, H), or None (zeros), checked by the caller.
    Returns ``(grad_x, grad_h0, norms)``: grad_x (T, B, I) (None unless ``want_grad_x``), grad_h0
    (L * D, B, H) (None unless ``want_grad_h0``) and the (T,) float64 per-step norms
    ||dL/dh_t|| of every layer and direction, in order.
    """
    be = _backend.resolve(backend)
    D = 2 if bidirectional else 1
    L = len(tape)
    T, B, _ = tape[0][0].shape
    H = weights[0][1].shape[0]
    dtype = tape[0][0].dtype
    grad_h0 = empty((L * D, B, H), dtype, "grad_h0") if want_grad_h0 else None
    norms = [None] * (L * D)
    if D == 1 and L > 1 and all(mask is None for _, _, mask in tape):
        # The stack in one call, from the top layer down (a wavefront at small batch).
        gxs = [empty(tape[k][0].shape, dtype, f"the input gradient of layer {k}")
               if k > 0 or want_grad_x else None for k in range(L)]
        calls = []
        for k in reversed(range(L)):
            inp, out, _ = tape[k]
            norms[k] = np.empty(T)
            calls.append((inp, weights[k][0], weights[k][1], out, None if h0 is None else h0[k],
                          grad_out if k == L - 1 else gxs[k + 1],
                          None if grad_h_n is None else grad_h_n[k], lengths, nonlinearity,
                          False, gxs[k], False, None if grad_h0 is None else grad_h0[k],
                          grads[k], norms[k]))
        be.backward_layers(calls)
        return gxs[0], grad_h0, norms
    g_layer = grad_out
    for k in reversed(range(L)):
        inp, out, mask = tape[k]
        gx = None
        if k > 0 or want_grad_x:
            gx = empty(inp.shape, dtype, f"the input gradient of layer {k}")
        calls = []
        for d in range(D):
            w_ih, w_hh, _, _ = weights[k * D + d]
            cols = slice(d * H, (d + 1) * H) if D > 1 else slice(None)
            norms[k * D + d] = np.empty(T)
            calls.append((inp, w_ih, w_hh, out[:, :, cols], None if h0 is None else h0[k * D + d],
                          None if g_layer is None else g_layer[:, :, cols],
                          None if grad_h_n is None else grad_h_n[k * D + d], lengths,
                          nonlinearity, d == 1, gx, d > 0,
                          None if grad_h0 is None else grad_h0[k * D + d], grads[k * D + d],
                          norms[k * D + d]))
        if D > 1:
            be.backward_calls(calls)
        else:
            be.backward(*calls[0])
        if mask is not None:
            gx *= mask
        g_layer = gx
    return g_layer, grad_h0, norms


# ----------------------------------------------------------------------------- one step, products
def rnn_cell_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, *, backend):
    """One RNNCell step on the backend's fast path: x (B, I) or (I,), h like it or None; the
    new state, or None when the arguments do not fit the fast path exactly (C-contiguous,
    aligned, one dtype) or the backend has none (the layer then runs a checked one-step
    :func:`rnn_forward`)."""
    return _backend.resolve(backend).cell_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh,
                                               nonlinearity)


def matmul(a, b, trans_a=False, trans_b=False, out=None, beta=0.0):
    """op(a) @ op(b) (+ beta * out) on elman's own threads when the compiled kernels are
    present, so a model's every large product shares one thread pool (NumPy's BLAS keeps its
    own threads, which would compete with elman's for the cores); NumPy otherwise."""
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.empty((M, N), a.dtype)
        beta = 0.0
    on_kernels = _backend._core is not None and out.flags.c_contiguous and out.flags.writeable
    _backend.resolve("cpu" if on_kernels else "numpy").matmul(a, b, out, trans_a, trans_b, beta)
    return out
