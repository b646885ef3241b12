"""The backends of elman's kernels, one object each (cpu, numpy, cuda), all with one interface.

A backend object has ``name`` and ``device`` (True when it takes CUDA device arrays), and:

- ``forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity, reverse,
  out, h_n)``: one layer in one direction; writes out (T, B, H) (any evenly strided rows, e.g. a
  column half of a (T, B, 2H) array) and h_n (B, H).
- ``backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths, nonlinearity,
  reverse, grad_x, accumulate_grad_x, grad_h0, grads, grad_norms)``: BPTT through that call;
  adds into ``grads`` = (dW_ih, dW_hh, db_ih or None, db_hh or None); writes (or adds into)
  grad_x, writes grad_h0 and grad_norms; grad_x / grad_h0 None: not wanted.
- ``forward_calls(calls)`` / ``backward_calls(calls)``: several such calls (tuples of their
  arguments in order, e.g. the two directions of a bidirectional layer), meaning the calls
  one after another; the cpu backend runs independent calls at the same time at small batch.
- ``forward_layers(calls)`` / ``backward_layers(calls)``: the calls of a stack of layers in one
  direction (forward: bottom first, each out the next x; backward: top first, each grad_x the
  next grad_out), meaning the calls one after another; the cpu backend runs them as a
  wavefront at small batch.
- ``cell_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)``: one RNNCell step
  for arguments that fit exactly (x (B, I) or (I,), h like it or None), else None.
- ``matmul(a, b, out, trans_a, trans_b, beta)``: out = op(a) op(b) + beta * out.

Host backends receive arrays the functional floor (or a layer) already converted and sized;
the compiled ones check them again at their boundary. ``elman._backend.resolve`` is the one
place that picks a backend object; this package imports only the ground floor below it
(``elman._checks``, ``elman._device``, ``elman.reference``) and the compiled modules.
"""


def empty_batch_backward(grad_x, accumulate_grad_x, grad_norms):
    """Backward at B == 0: no gradient to add; a written grad_x and the norms are zeros."""
    if grad_x is not None and not accumulate_grad_x:
        grad_x[...] = 0
    if grad_norms is not None:
        grad_norms[...] = 0


def host_matmul(a, b, out, trans_a, trans_b, beta):
    """out = op(a) op(b) + beta * out with NumPy (backends without a product of their own)."""
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if beta:
        out *= beta
        out += prod
    else:
        out[...] = prod


class OneAfterAnother:
    """``forward_calls`` / ``backward_calls`` / ``forward_layers`` / ``backward_layers`` as the
    calls one after another (the backends without a way to run calls at the same time)."""

    def forward_calls(self, calls):
        for call in calls:
            self.forward(*call)

    def backward_calls(self, calls):
        for call in calls:
            self.backward(*call)

    forward_layers = forward_calls
    backward_layers = backward_calls
