"""Pure-NumPy reference of elman's math: the oracle every kernel is tested against.

Written to be read, not to be fast: an explicit loop over time that mirrors the C++ kernel
(csrc/cpu/drivers.h) step by step, in float64 by default. Imports numpy only.

Shape legend: T time steps, B batch, I input features, H hidden units. One call covers one
layer in one direction; ``reverse=True`` processes t = T-1 .. 0. With ``lengths``, step t is
valid for sequence b iff t < lengths[b]: invalid steps keep the state, write 0 to ``out`` and
never enter a sum (the semantics of a packed sequence). A state that is not there (h0=None
before a sequence's first step; no next step in BPTT) contributes exactly 0, never 0 * W_hh:
NaN or Inf in the weights reach a sequence only through a state it has (so a sequence's result
never depends on which other sequences share its batch).
"""

import numpy as np

__all__ = ["activate", "activation_dz", "rnn_forward", "rnn_backward"]


def activate(z, nonlinearity):
    """f(z): tanh, or relu that keeps NaN as NaN and -0 as -0 (``z < 0 ? 0 : z``)."""
    if nonlinearity == "tanh":
        return np.tanh(z)
    return np.where(z < 0, 0.0, z).astype(z.dtype, copy=False)


def activation_dz(h, dh, nonlinearity):
    """dL/dz from dL/dh and h = f(z): tanh' = 1 - h^2; relu is a select (h <= 0 -> 0)."""
    if nonlinearity == "tanh":
        return dh * (1.0 - h * h)
    return np.where(h <= 0, 0.0, dh).astype(dh.dtype, copy=False)


def _time_order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _lengths(lengths, T, B):
    return np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)


def rnn_forward(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, lengths=None,
                nonlinearity="tanh", reverse=False, dtype=np.float64):
    """Forward of one layer and direction. Returns ``out`` (T, B, H) and ``h_n`` (B, H).

    ``dtype`` is the dtype every computation runs in (float64: the oracle; float32: a plain
    vectorized NumPy RNN, as ``elman bench`` times it).
    """
    x = np.asarray(x, dtype)                                    # (T, B, I)
    W_ih = np.asarray(W_ih, dtype)                              # (H, I)
    W_hh = np.asarray(W_hh, dtype)                              # (H, H)
    T, B, _ = x.shape
    H = W_hh.shape[0]
    L = _lengths(lengths, T, B)                                 # (B,)
    bias = np.zeros(H, dtype)                                   # (H,)  b_ih + b_hh
    if b_ih is not None:
        bias = bias + np.asarray(b_ih, dtype)
    if b_hh is not None:
        bias = bias + np.asarray(b_hh, dtype)
    h = np.zeros((B, H), dtype) if h0 is None else np.array(h0, dtype)  # (B, H) carried state
    has_state = np.full((B, 1), h0 is not None)                 # (B, 1) False: no state yet
    out = np.zeros((T, B, H), dtype)                            # (T, B, H)
    xp = x @ W_ih.T                                             # (T, B, H) input projection
    for t in _time_order(T, reverse):
        valid = (t < L)[:, None]                                # (B, 1)
        rec = np.where(has_state, h @ W_hh.T, 0.0)              # (B, H) 0 without a state
        z = (xp[t] + bias) + rec                                # (B, H)
        h_new = activate(z, nonlinearity)                       # (B, H)
        out[t] = np.where(valid, h_new, 0.0)                    # (B, H) 0 past the length
        h = np.where(valid, h_new, h)                           # (B, H) frozen past the length
        has_state = has_state | valid                           # (B, 1)
    return out, h


def rnn_backward(x, W_ih, W_hh, out, h0=None, grad_out=None, grad_h_n=None, lengths=None,
                 nonlinearity="tanh", reverse=False, dtype=np.float64):
    """BPTT through one forward call (``out`` is that call's output).

    Returns a dict: ``grad_x`` (T, B, I), ``grad_h0`` (B, H), ``dW_ih`` (H, I), ``dW_hh`` (H, H),
    ``db`` (H,) (the gradient of both b_ih and b_hh) and ``grad_norms`` (T,): the L2 norm of
    dL/dh_t over the valid (b, j) at each time t.
    """
    x = np.asarray(x, dtype)                                    # (T, B, I)
    W_ih = np.asarray(W_ih, dtype)                              # (H, I)
    W_hh = np.asarray(W_hh, dtype)                              # (H, H)
    out = np.asarray(out, dtype)                                # (T, B, H)
    T, B, I = x.shape
    H = W_hh.shape[0]
    L = _lengths(lengths, T, B)                                 # (B,)
    g_out = np.zeros((T, B, H), dtype) if grad_out is None else np.asarray(grad_out, dtype)
    g = np.zeros((B, H), dtype) if grad_h_n is None else np.array(grad_h_n, dtype)  # (B, H)
    dz = np.zeros((T, B, H), dtype)                             # (T, B, H)
    norms = np.zeros(T)                                         # (T,)
    for t in reversed(list(_time_order(T, reverse))):
        valid = t < L                                           # (B,)
        dh = g_out[t] + g                                       # (B, H) dL/dh_t
        norms[t] = np.sqrt(np.sum(dh[valid].astype(np.float64) ** 2))
        dz[t] = np.where(valid[:, None], activation_dz(out[t], dh, nonlinearity), 0.0)
        g = np.where(valid[:, None], dz[t] @ W_hh, g)           # (B, H) into the previous state

    # Weight gradients over valid steps only; prev[t] is the state each step started from.
    # Without h0, a sequence's first step has no previous state and adds nothing to dW_hh.
    h = np.zeros((B, H), dtype) if h0 is None else np.array(h0, dtype)   # (B, H)
    has_state = np.full(B, h0 is not None)                      # (B,)
    dW_ih = np.zeros((H, I), dtype)
    dW_hh = np.zeros((H, H), dtype)
    db = np.zeros(H, dtype)
    grad_x = np.zeros((T, B, I), dtype)
    for t in _time_order(T, reverse):
        v = t < L                                               # (B,)
        vs = v & has_state                                      # (B,)
        dW_ih += dz[t][v].T @ x[t][v]                           # (H, I)
        dW_hh += dz[t][vs].T @ h[vs]                            # (H, H)
        db += dz[t][v].sum(axis=0)                              # (H,)
        grad_x[t][v] = dz[t][v] @ W_ih                          # (B_valid, I)
        h = np.where(v[:, None], out[t], h)                     # (B, H)
        has_state = has_state | v                               # (B,)
    return {"grad_x": grad_x, "grad_h0": g, "dW_ih": dW_ih, "dW_hh": dW_hh, "db": db,
            "grad_norms": norms}
