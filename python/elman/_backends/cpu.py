"""The cpu backend: elman's compiled CPU kernels (elman._core), which validate every argument at
their boundary, take pointers, release the GIL and run the fused kernels."""

from . import empty_batch_backward


class CpuBackend:
    """The backend object over ``elman._core`` (see ``elman._backends`` for the interface)."""

    name = "cpu"
    cell_step_fast = True  # cell_step can return a result (else always None)
    device = False  # host arrays only: the functional floor checks and allocates for it

    def __init__(self, core):
        self.core = core
        self._forward = core.rnn_forward
        self._backward = core.rnn_backward
        self._cell_step = core.rnn_cell_step
        self._matmul = core.matmul

    def forward(self, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                reverse, out, h_n):
        if out.shape[1] == 0:  # an empty batch: nothing to compute
            return
        self._forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths, nonlinearity,
                      bool(reverse), out, h_n)

    def backward(self, x, weight_ih, weight_hh, out, h0, grad_out, grad_h_n, lengths,
                 nonlinearity, reverse, grad_x, accumulate_grad_x, grad_h0, grads, grad_norms):
        if out.shape[1] == 0:
            empty_batch_backward(grad_x, accumulate_grad_x, grad_norms)
            return
        dW_ih, dW_hh, db_ih, db_hh = grads
        self._backward(x, weight_ih, weight_hh, h0, out, grad_out, grad_h_n, lengths,
                       nonlinearity, bool(reverse), grad_x, bool(accumulate_grad_x), grad_h0,
                       dW_ih, dW_hh, db_ih, db_hh, grad_norms)

    def forward_calls(self, calls, layers=False):
        if calls and calls[0][9].shape[1] == 0:  # an empty batch (every call has the same B)
            return
        run = self.core.rnn_forward_layers if layers else self.core.rnn_forward_calls
        run([c[:8] + (bool(c[8]),) + c[9:] for c in calls])

    def backward_calls(self, calls, layers=False):
        if calls and calls[0][3].shape[1] == 0:
            for c in calls:
                self.backward(*c)
            return
        run = self.core.rnn_backward_layers if layers else self.core.rnn_backward_calls
        # the binding's order: h0 before out, the four gradients spread
        run([(*c[:3], c[4], c[3], *c[5:9], bool(c[9]), c[10], bool(c[11]), c[12], *c[13], c[14])
             for c in calls])

    def forward_layers(self, calls):
        self.forward_calls(calls, layers=True)

    def backward_layers(self, calls):
        self.backward_calls(calls, layers=True)

    def cell_step(self, x, h, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
        return self._cell_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh,
                               nonlinearity == "relu")

    def matmul(self, a, b, out, trans_a, trans_b, beta):
        self._matmul(a, b, out, trans_a, trans_b, beta)

