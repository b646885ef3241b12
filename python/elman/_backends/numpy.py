"""The numpy backend: elman.reference (pure NumPy, float64 inside) behind the backend interface,
for comparisons and for machines where it is asked for by name. It is the oracle, never a
fallback: backend="auto" does not choose it."""

from .. import reference
from . import OneAfterAnother, empty_batch_backward, host_matmul


class NumpyBackend(OneAfterAnother):
    """The backend object over ``elman.reference`` (see ``elman._backends`` for the interface)."""

    name = "numpy"
    cell_step_fast = False  # cell_step can return a result (else always None)
    device = False  # host arrays only: the functional floor checks and allocates for it

    def forward(self, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                reverse, out, h_n):
        if out.shape[1] == 0:
            return
        o, hn = reference.rnn_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                                      nonlinearity, bool(reverse))
        out[...] = o
        h_n[...] = hn

    def backward(self, x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                 nonlinearity, reverse, grad_x, accumulate_grad_x, grad_h0, grads, grad_norms):
        if out.shape[1] == 0:
            empty_batch_backward(grad_x, accumulate_grad_x, grad_norms)
            return
        r = reference.rnn_backward(x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n,
                                   lengths, nonlinearity, bool(reverse))
        dW_ih, dW_hh, db_ih, db_hh = grads
        dtype = dW_ih.dtype
        dW_ih += r["dW_ih"].astype(dtype)
        dW_hh += r["dW_hh"].astype(dtype)
        for db in (db_ih, db_hh):
            if db is not None:
                db += r["db"].astype(dtype)
        if grad_x is not None:
            if accumulate_grad_x:
                grad_x += r["grad_x"].astype(dtype)
            else:
                grad_x[...] = r["grad_x"]
        if grad_h0 is not None:
            grad_h0[...] = r["grad_h0"]
        if grad_norms is not None:
            grad_norms[...] = r["grad_norms"]

    def cell_step(self, x, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        return None  # no fast path: the layer takes the validated one-step forward

    def matmul(self, a, b, out, trans_a, trans_b, beta):
        host_matmul(a, b, out, trans_a, trans_b, beta)
