"""elman.torch: drop-in ``torch.nn.RNN`` / ``torch.nn.RNNCell`` whose forward and backward run
elman's fused kernels. Imported only on request (``import elman.torch``); torch stays optional.

The classes subclass torch's own, so constructor, parameters (names, shapes, init), state_dict,
repr, hooks, pickling and DDP behave exactly as torch's. Only ``forward`` differs: CPU float32 /
float64 tensors go through one autograd node for the stack of layers (one per layer when
dropout runs between them; each layer and direction one fused kernel call forward and one
backward, the whole sequence at once) on zero-copy NumPy views, and an RNNCell step without gradients through elman's fused step (a cell
step that autograd records runs torch's own cell: see ``RNNCell``); everything else (other devices and dtypes, autocast, tracing, scripting,
torch.compile, functorch transforms, forward-mode AD, and any invalid input, so that errors are
torch's own) runs ``torch.nn.RNN.forward`` / ``torch.nn.RNNCell.forward`` with the same
parameters.
"""

import warnings
import weakref

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.overrides import has_torch_function

from . import functional as F

__all__ = ["RNN", "RNNCell"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_STRIDED = torch.strided


def _kernels_take(tensors):
    """True when elman's kernels can run on ``tensors`` (None entries allowed): plain strided CPU
    tensors of one float32 / float64 dtype, in a context that does not need torch's own ops."""
    # torch.compile, tracing, scripting, functorch transforms, forward-mode AD, autocast and
    # tensor subclasses with __torch_function__ all need to see torch ops, not a NumPy call.
    # (is_compiling first: under torch.compile the rest is never traced.)
    if (torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()
            or torch.autograd.forward_ad._current_level >= 0
            or torch.is_autocast_enabled("cpu")):
        return False
    dtype = tensors[0].dtype
    if dtype not in _KERNEL_DTYPES:
        return False
    for t in tensors:
        if t is not None and not (t.dtype is dtype and t.is_cpu and t.layout is _STRIDED
                                  and not t.is_neg()):  # a lazily negated view has no NumPy form
            return False
    return not has_torch_function([t for t in tensors if t is not None])


def _np(t):
    """A zero-copy NumPy view of a CPU tensor (None stays None)."""
    return None if t is None else t.detach().numpy()


# Zero-copy NumPy views of weight tensors, kept while the tensor lives on the same memory:
# id(tensor) -> (weakref to it, data_ptr, view). A view costs ~1.5 us to make, a lookup ~0.3 us;
# a short sequence or a cell step makes four of them per call. The entry goes with its tensor.
_VIEWS: dict = {}


def _view(t):
    """A cached zero-copy NumPy view of the weight tensor ``t`` (None stays None)."""
    if t is None:
        return None
    hit = _VIEWS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t.data_ptr() and hit[2].shape == t.shape:
        return hit[2]
    view = t.detach().numpy()
    key = id(t)
    _VIEWS[key] = (weakref.ref(t, lambda _, key=key: _VIEWS.pop(key, None)), t.data_ptr(), view)
    return view


# ----------------------------------------------------------------------------- layers
# cfg = (nonlinearity, D directions, nw tensors per direction (4 with biases, else 2),
#        lengths (B,) int64 ndarray or None, cell, L layers). The arrays are NumPy views of the
# tensors; a cell (cell=True, L = 1) takes x (B, I) or (I,) and h0 (B, H) or (H,) as one step.
def _layer_forward(cfg, x, h0, weights, record=False):
    """Runs every layer and direction of a stack: x (T, B, I), h0 (L*D, B, H) or None, weights
    in torch's flat order per layer and direction. Returns out (T, B, D*H) and h_n (L*D, B, H)
    (and, with ``record``, the functional floor's tape); a cell returns its new state only.
    One call of the functional floor's layer loop (the NumPy RNN's too)."""
    nonlinearity, D, nw, lengths, cell, L = cfg
    xn, h0n = _np(x), _np(h0)
    H = weights[1].shape[0]
    if cell:
        w = _by_direction(weights, 1, nw)[0]
        h1 = F.rnn_cell_step(xn, h0n, *w, nonlinearity, backend=None)  # the fused step
        if h1 is not None:
            return torch.from_numpy(h1)
        xn = xn.reshape(1, -1, xn.shape[-1])
        h0n = None if h0n is None else h0n.reshape(1, -1, H)
    # torch validated the shapes; the kernels check them again at their boundary
    out, h_n, tape = F.rnn_layers_forward(xn, _by_direction(weights, L * D, nw), h0n, lengths,
                                          nonlinearity, bidirectional=D == 2, record=record)
    if cell:
        return torch.from_numpy(out.reshape(x.shape[:-1] + (H,)))
    result = torch.from_numpy(out), torch.from_numpy(h_n)
    return (result, tape) if record else result


def _by_direction(arrays, D, nw):
    """Per direction (weight_ih, weight_hh, bias_ih, bias_hh) NumPy views (biases None without
    bias) from torch's flat order."""
    arrays = [_view(a) for a in arrays]
    return [tuple(arrays[d * nw:(d + 1) * nw]) + (None,) * (4 - nw) for d in range(D)]


class _Layer(torch.autograd.Function):
    """One autograd node for a stack of layers (every layer when nothing runs between them,
    else one layer) over the whole sequence, every direction inside it (RNN only: a cell that
    needs gradients runs torch's own cell, see RNNCell)."""

    @staticmethod
    def forward(ctx, cfg, x, h0, *weights):
        result, tape = _layer_forward(cfg, x, h0, weights, record=True)
        ctx.cfg = cfg
        # the inner layers' outputs, private to the node (the last one is saved as a tensor)
        ctx.inner = [layer_out for _, layer_out, _ in tape[:-1]]
        ctx.save_for_backward(x, h0, result[0], *weights)
        ctx.set_materialize_grads(False)  # a None gradient goes to the kernel as "zeros"
        return result

    @staticmethod
    def backward(ctx, g_out, g_hn=None):
        x, h0, out, *weights = ctx.saved_tensors
        if g_out is None and g_hn is None:
            return (None,) * (3 + len(weights))
        if torch.is_grad_enabled():  # create_graph=True: the backward itself must be differentiable
            return _differentiable_backward(ctx, x, h0, weights, g_out, g_hn)
        nonlinearity, D, nw, lengths, _, L = ctx.cfg
        need = ctx.needs_input_grad
        xn, h0n, on, gon, ghn = _np(x), _np(h0), _np(out), _np(g_out), _np(g_hn)
        outs = ctx.inner + [on]
        tape = [(xn if k == 0 else outs[k - 1], outs[k], None) for k in range(L)]
        wn = _by_direction(weights, L * D, nw)
        gw = [tuple(None if a is None else np.zeros(a.shape, a.dtype) for a in w) for w in wn]
        # the input gradient is computed only when asked for (it is one large product)
        grad_x, grad_h0, _ = F.rnn_layers_backward(
            tape, wn, gw, h0n, lengths, nonlinearity, gon, ghn,
            bidirectional=D == 2, want_grad_x=need[1], want_grad_h0=h0n is not None and need[2])
        grad_w = [torch.from_numpy(g) if need[3 + d * nw + i] else None
                  for d in range(L * D) for i, g in enumerate(gw[d][:nw])]
        return (None,
                torch.from_numpy(grad_x.reshape(x.shape)) if need[1] else None,
                None if grad_h0 is None else torch.from_numpy(grad_h0.reshape(h0.shape)),
                *grad_w)


def _torch_layer(cfg, x, h0, weights):
    """The same layers through torch's own differentiable ops (for double backward)."""
    nonlinearity, D, nw, lengths, _, L = cfg
    H = weights[1].shape[0]
    rnn = torch._VF.rnn_tanh if nonlinearity == "tanh" else torch._VF.rnn_relu
    if h0 is None:
        h0 = x.new_zeros((L * D, x.shape[1], H))
    if lengths is None:
        return rnn(x, h0, weights, nw == 4, L, 0.0, False, D == 2, False)
    p = pack_padded_sequence(x, torch.from_numpy(lengths))
    out, h_n = rnn(p.data, p.batch_sizes, h0, weights, nw == 4, L, 0.0, False, D == 2)
    return pad_packed_sequence(PackedSequence(out, p.batch_sizes), total_length=x.shape[0])[0], h_n


def _differentiable_backward(ctx, x, h0, weights, g_out, g_hn):
    """Backward with create_graph=True: the layer is recomputed with torch's ops and
    differentiated by autograd, so gradients of gradients (e.g. penalties) are exact."""
    inputs = [x, h0, *weights]
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[1 + i]]
    outs = _torch_layer(ctx.cfg, x, h0, weights)
    pairs = [(o, g) for o, g in zip(outs, (g_out, g_hn)) if g is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    result = [None] * (1 + len(inputs))
    for i, g in zip(wanted, grads):
        result[1 + i] = g
    return tuple(result)


def _needs_grad(x, h0, weights):
    """Whether autograd records this call (grad mode on and some input requires a gradient)."""
    return torch.is_grad_enabled() and (x.requires_grad or (h0 is not None and h0.requires_grad)
                                        or any(w.requires_grad for w in weights))


def _run_layer(cfg, x, h0, weights):
    """A layer through the autograd node when a gradient is wanted, straight through otherwise."""
    if _needs_grad(x, h0, weights):
        return _Layer.apply(cfg, x, h0, *weights)
    return _layer_forward(cfg, x, h0, weights)


def _current(module, names):
    """The module's weights as they are now: registered parameters, or whatever
    ``functional_call`` or a parametrization puts in their place (what torch's
    ``_update_flat_weights`` keeps ``_flat_weights`` in sync with, read directly)."""
    params = module._parameters
    return [params[n] if n in params else getattr(module, n) for n in names]


_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# ----------------------------------------------------------------------------- conversions
def _convert(src, cls, names, kwargs, copy):
    """A ``cls`` module built like ``src`` holding src's Parameter objects (copy=False) or
    deep copies of them (copy=True)."""
    first = getattr(src, names[0])
    with warnings.catch_warnings():  # the dropout / num_layers warning was shown for src already
        warnings.simplefilter("ignore", UserWarning)
        new = cls(**kwargs, device="meta", dtype=first.dtype)
    for name in names:
        p = getattr(src, name)
        if copy:
            p = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        setattr(new, name, p)
    if hasattr(new, "_init_flat_weights"):
        new._init_flat_weights()
    return new.train(src.training)


# ----------------------------------------------------------------------------- RNN
class RNN(torch.nn.RNN):
    r"""``torch.nn.RNN`` running on elman's fused CPU kernels; a drop-in replacement.

    Same constructor (``input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None``), same
    parameters, init, state_dict and ``isinstance(m, torch.nn.RNN)``; ``out, h_n = rnn(input,
    hx=None)`` with every input convention of torch (batched, ``batch_first``, unbatched,
    ``PackedSequence`` in and out). Dropout between layers uses ``torch.dropout`` on the same
    tensors in the same order as torch, so a seeded run draws the same masks.

    CPU float32 / float64 runs elman's kernels: one autograd node for all layers over the whole
    sequence (one per layer when dropout runs between them). Anything else falls back to ``torch.nn.RNN.forward`` with the same parameters
    (so other devices and dtypes work, and invalid input raises torch's own exceptions).
    Double backward (``create_graph=True``) recomputes the layer with torch's ops in the
    backward pass, so gradients of gradients are exact (and as slow as torch's).
    """

    @classmethod
    def from_torch(cls, module, copy=False):
        """An ``elman.torch.RNN`` configured like ``module`` (a ``torch.nn.RNN``).

        ``copy=False`` shares the parameters: both modules hold the very same
        ``torch.nn.Parameter`` objects, so an optimizer built on ``module.parameters()`` trains
        the new module too and in-place changes show in both. ``copy=True`` gives independent
        copies. The training / eval mode is taken over; hooks are not.
        """
        if not isinstance(module, torch.nn.RNN):
            raise TypeError(f"from_torch expects a torch.nn.RNN, got {type(module).__name__}")
        return _convert(module, cls, module._flat_weights_names, _rnn_kwargs(module), copy)

    def to_torch(self, copy=False):
        """A plain ``torch.nn.RNN`` with this module's configuration; parameters shared
        (``copy=False``, the same Parameter objects) or copied (``copy=True``)."""
        return _convert(self, torch.nn.RNN, self._flat_weights_names, _rnn_kwargs(self), copy)

    def forward(self, input, hx=None):
        """As ``torch.nn.RNN.forward`` / ``torch.nn.RNNCell.forward``: CPU float32 / float64 tensors run elman's fused kernels, anything else torch's own forward (see the class docstring).
        """
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        weights = _current(self, self._flat_weights_names)
        if not (isinstance(data, torch.Tensor) and (hx is None or isinstance(hx, torch.Tensor))
                and _kernels_take([data, hx, *weights]) and self._shapes_fit(input, data, hx)):
            return super().forward(input, hx)
        if packed:
            # The padded batch in the PackedSequence's (length-sorted) order, as torch works.
            x, lengths = pad_packed_sequence(PackedSequence(data, input.batch_sizes))
            if hx is not None:
                hx = self.permute_hidden(hx, input.sorted_indices)
        else:
            lengths = None
            batched = data.dim() == 3
            if not batched:
                x = data.unsqueeze(1)
                hx = None if hx is None else hx.unsqueeze(1)
            else:
                x = data.transpose(0, 1) if self.batch_first else data
        out, h_n = self._layers(x.contiguous(), hx, lengths, weights)
        if packed:
            out = pack_padded_sequence(out, lengths).data
            return (PackedSequence(out, input.batch_sizes, input.sorted_indices,
                                   input.unsorted_indices),
                    self.permute_hidden(h_n, input.unsorted_indices))
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def _shapes_fit(self, input, data, hx):
        """True when the input is valid for the kernel path; anything else goes to torch's
        forward, which raises its own errors (or handles it, e.g. an empty batch)."""
        D = 2 if self.bidirectional else 1
        if data.size(-1) != self.input_size:
            return False
        if isinstance(input, PackedSequence):
            if data.dim() != 2:
                return False
            expected = (self.num_layers * D, int(input.batch_sizes[0]), self.hidden_size)
        elif data.dim() == 3:
            T, B = (data.size(1), data.size(0)) if self.batch_first else data.shape[:2]
            if T == 0 or B == 0:
                return False
            expected = (self.num_layers * D, B, self.hidden_size)
        elif data.dim() == 2:
            if data.size(0) == 0:
                return False
            expected = (self.num_layers * D, self.hidden_size)
        else:
            return False
        return hx is None or tuple(hx.shape) == expected

    def _layers(self, x, hx, lengths, weights):
        """x (T, B, I) contiguous, hx (L*D, B, H) or None, lengths (B,) or None (padded
        input in PackedSequence order). Returns out (T, B, D*H) and h_n (L*D, B, H)."""
        D = 2 if self.bidirectional else 1
        nw = 4 if self.bias else 2
        per_layer = D * nw
        cfg = (self.nonlinearity, D, nw, None if lengths is None else lengths.numpy(), False, 1)
        dropout = self.dropout if self.training else 0.0
        if dropout == 0:  # nothing between the layers: the stack is one node, one kernel call
            return _run_layer(cfg[:5] + (self.num_layers,), x, hx, weights)
        inp, h_n = x, []
        for k in range(self.num_layers):
            h0 = hx if hx is None or self.num_layers == 1 else hx[k * D:(k + 1) * D]
            out, hn = _run_layer(cfg, inp, h0, weights[k * per_layer:(k + 1) * per_layer])
            h_n.append(hn)
            if dropout > 0 and k < self.num_layers - 1:
                inp = self._dropout(out, lengths, dropout)
            else:
                inp = out
        return out, h_n[0] if len(h_n) == 1 else torch.cat(h_n)

    @staticmethod
    def _dropout(out, lengths, p):
        """torch.dropout on the tensor torch drops out: the (T, B, D*H) layer output, or, for
        packed input, its packed data (so a seeded run draws the same mask as torch)."""
        if lengths is None:
            return torch.dropout(out, p, True)
        packed = pack_padded_sequence(out, lengths)
        dropped = PackedSequence(torch.dropout(packed.data, p, True), packed.batch_sizes)
        return pad_packed_sequence(dropped, total_length=out.shape[0])[0]


def _rnn_kwargs(m):
    return dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                nonlinearity=m.nonlinearity, bias=m.bias, batch_first=m.batch_first,
                dropout=m.dropout, bidirectional=m.bidirectional)


# ----------------------------------------------------------------------------- RNNCell
class RNNCell(torch.nn.RNNCell):
    r"""``torch.nn.RNNCell`` running on elman's fused CPU kernels; a drop-in replacement.

    Same constructor (``input_size, hidden_size, bias=True, nonlinearity='tanh', device=None,
    dtype=None``), parameters and init; ``h1 = cell(input, hx=None)`` with input (B, I) or (I,).
    Without gradients (``torch.no_grad()``, ``torch.inference_mode()``, or nothing that requires
    one), CPU float32 / float64 runs elman's fused step. A step that autograd records runs
    ``torch.nn.RNNCell.forward``, as does anything else (invalid input included): one step has
    no recurrence to fuse, and a Python autograd node per step costs more than the step
    (measured in training loops of 8 steps, B in {1, 32}, H in {32, 64, 256}: elman's step in
    an autograd node with torch's products for its gradients ran at 0.67-0.97x the speed of
    torch's own cell).
    """

    @classmethod
    def from_torch(cls, module, copy=False):
        """An ``elman.torch.RNNCell`` configured like ``module`` (a ``torch.nn.RNNCell``);
        parameters shared (``copy=False``: the same Parameter objects) or copied."""
        if not isinstance(module, torch.nn.RNNCell):
            raise TypeError(f"from_torch expects a torch.nn.RNNCell, got {type(module).__name__}")
        return _convert(module, cls, _cell_names(module), _cell_kwargs(module), copy)

    def to_torch(self, copy=False):
        """A plain ``torch.nn.RNNCell`` with this cell's configuration; parameters shared
        (``copy=False``) or copied (``copy=True``)."""
        return _convert(self, torch.nn.RNNCell, _cell_names(self), _cell_kwargs(self), copy)

    def forward(self, input, hx=None):
        """As ``torch.nn.RNN.forward`` / ``torch.nn.RNNCell.forward``: CPU float32 / float64 tensors run elman's fused kernels, anything else torch's own forward (see the class docstring).
        """
        weights = _current(self, _CELL_NAMES if self.bias else _CELL_NAMES[:2])
        shape = input.shape if isinstance(input, torch.Tensor) else None
        # The kernel path takes valid input only: (B, I) with B > 0 or (I,), hx of the
        # matching (B, H) / (H,) shape or None; torch's forward handles (or rejects) the rest.
        if not (shape is not None and 1 <= len(shape) <= 2 and shape[-1] == self.input_size
                and shape[0] > 0 and self.nonlinearity in F.NONLINEARITIES
                and (hx is None or (isinstance(hx, torch.Tensor)
                                    and hx.shape == shape[:-1] + (self.hidden_size,)))
                and _kernels_take([input, hx, *weights])
                and not _needs_grad(input, hx, weights)):
            return super().forward(input, hx)
        return _layer_forward((self.nonlinearity, 1, len(weights), None, True, 1), input, hx,
                              weights)


def _cell_names(m):
    return list(_CELL_NAMES if m.bias else _CELL_NAMES[:2])


def _cell_kwargs(m):
    return dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias,
                nonlinearity=m.nonlinearity)
