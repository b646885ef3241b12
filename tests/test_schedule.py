"""The CPU schedule (csrc/cpu/schedule.h): every way it runs the recurrence, for both directions
of the computation (forward and BPTT) and both processing orders, against the reference; and the
sequence-length helpers (RnnShape in csrc/rnn.h): lengths that are all T take the same path as
no lengths, bitwise."""

import numpy as np
import pytest

from elman import functional as F, reference
from conftest import assert_close, max_abs

pytest.importorskip("elman._core")

# (T, B, I, H) and the plan each takes with 2 and 3 threads (with 1 thread the recurrence runs
# in one part, chunked or not as named). The recurrence is split by batch rows when
# B >= 4 * threads, else by column panels once a step has >= 65536 multiply-adds, else it stays
# in one part (below 24576).
PLANS = {
    "one part": (6, 3, 5, 17),            # 3 * 17^2 multiply-adds per step
    "by rows, one chunk": (15, 13, 9, 72),  # a chunk is 20 steps of 13 rows: one, no side work
    "by rows, chunked": (45, 13, 9, 72),    # three chunks, the last one partial
    "by panels": (11, 4, 7, 130),           # 4 * 130^2 >= 65536, B < 8: a barrier per step
}


def _case(rng, T, B, I, H, dtype):
    s = 1.5 / np.sqrt(H)
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                bias_ih=rng.uniform(-s, s, H).astype(dtype),
                bias_hh=rng.uniform(-s, s, H).astype(dtype),
                h0=rng.uniform(-1, 1, (B, H)).astype(dtype))


def _forward_backward(c, g, g_hn, lengths, act, reverse):
    out, h_n = F.rnn_forward(**c, lengths=lengths, nonlinearity=act, reverse=reverse,
                             backend="cpu")
    r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g, g_hn, lengths,
                       act, reverse, backend="cpu")
    return out, h_n, r


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_matches_reference(isa, threads, plan, dtype):
    T, B, I, H = PLANS[plan]
    rng = np.random.default_rng(T * B)
    c = _case(rng, T, B, I, H, dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    g_hn = rng.standard_normal((B, H)).astype(dtype)
    variable = rng.integers(1, T + 1, B)
    variable[0] = T  # one full sequence beside shorter ones
    for lengths in (None, variable):
        for reverse, act in [(False, "tanh"), (True, "relu")]:
            out, h_n, r = _forward_backward(c, g, g_hn, lengths, act, reverse)
            e_out, e_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"],
                                                c["bias_ih"], c["bias_hh"], c["h0"], lengths,
                                                act, reverse)
            what = f"{plan}, lengths={lengths is not None}, reverse={reverse}"
            assert_close(out, e_out, dtype, what=f"out ({what})")
            assert_close(h_n, e_hn, dtype, what=f"h_n ({what})")
            e = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g,
                                       g_hn, lengths, act, reverse)
            assert_close(r.grad_x, e["grad_x"], dtype, what=f"grad_x ({what})")
            assert_close(r.grad_h0, e["grad_h0"], dtype, what=f"grad_h0 ({what})")
            assert_close(r.grad_norms, e["grad_norms"], dtype, what=f"grad_norms ({what})")
            scale = max_abs(e["dW_ih"], e["dW_hh"], e["db"])
            for name, got, expected in [("dW_ih", r.grad_weight_ih, e["dW_ih"]),
                                        ("dW_hh", r.grad_weight_hh, e["dW_hh"]),
                                        ("db_ih", r.grad_bias_ih, e["db"]),
                                        ("db_hh", r.grad_bias_hh, e["db"])]:
                assert_close(got, expected, dtype, "weight", f"{name} ({what})", scale)


@pytest.mark.parametrize("plan", list(PLANS))
def test_lengths_all_T_take_the_path_of_no_lengths(threads, plan):
    """Lengths that are all T describe sequences that all have T steps: the schedule takes the
    uniform path (RnnShape::all_full), and every output and gradient is bitwise the same."""
    T, B, I, H = PLANS[plan]
    rng = np.random.default_rng(T + B)
    c = _case(rng, T, B, I, H, np.float32)
    g = rng.standard_normal((T, B, H)).astype(np.float32)
    g_hn = rng.standard_normal((B, H)).astype(np.float32)
    for reverse in (False, True):
        a_out, a_hn, a = _forward_backward(c, g, g_hn, None, "tanh", reverse)
        b_out, b_hn, b = _forward_backward(c, g, g_hn, np.full(B, T), "tanh", reverse)
        np.testing.assert_array_equal(a_out, b_out)
        np.testing.assert_array_equal(a_hn, b_hn)
        for name in ("grad_x", "grad_h0", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih",
                     "grad_norms"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
