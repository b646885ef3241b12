"""Instruction-set dispatch, thread counts and memory: every ISA path against the reference,
results reproducible for a fixed thread count and within tolerance across counts, and the
memory each call adds within the documented budget."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import elman
from elman import functional as F, reference
from conftest import SUPPORTED_ISAS, assert_close, max_abs

core = pytest.importorskip("elman._core")


def _case(rng, T, B, I, H, dtype):
    s = 1.5 / np.sqrt(H)
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                bias_ih=rng.uniform(-s, s, H).astype(dtype),
                bias_hh=rng.uniform(-s, s, H).astype(dtype),
                h0=rng.uniform(-1, 1, (B, H)).astype(dtype))


def _run(c, g, lengths=None, reverse=False, act="tanh"):
    out, h_n = F.rnn_forward(**c, lengths=lengths, reverse=reverse, nonlinearity=act, backend="cpu")
    r = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g, None, lengths, act,
                       reverse, backend="cpu")
    return [out, h_n] + [a for a in r if a is not None]


# Sizes that hit every SIMD tail (vector widths 4, 8, 16 floats / 2, 4, 8 doubles) and the
# register tiles (6 or 8 rows), with and without variable lengths.
TAIL_SIZES = [1, 3, 7, 15, 16, 17, 33, 65]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H", TAIL_SIZES)
def test_every_isa_matches_reference_on_simd_tails(isa, dtype, H):
    rng = np.random.default_rng(H)
    for (B, I) in [(1, 3), (7, 17), (17, 1)]:
        c = _case(rng, 5, B, I, H, dtype)
        g = rng.standard_normal((5, B, H)).astype(dtype)
        lengths = np.arange(B) % 5 + 1 if B > 1 else None
        for reverse, act in [(False, "tanh"), (True, "relu")]:
            got = _run(c, g, lengths, reverse, act)
            out, h_n = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                             c["bias_hh"], c["h0"], lengths, act, reverse)
            assert_close(got[0], out, dtype, what="out")
            assert_close(got[1], h_n, dtype, what="h_n")
            r = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], got[0], c["h0"], g,
                                       None, lengths, act, reverse)
            assert_close(got[2], r["grad_x"], dtype, what="grad_x")
            assert_close(got[3], r["grad_h0"], dtype, what="grad_h0")
            scale = max_abs(r["dW_ih"], r["dW_hh"], r["db"])
            for name, a, e in zip(["dW_ih", "dW_hh", "db_ih", "db_hh"], got[4:8],
                                  [r["dW_ih"], r["dW_hh"], r["db"], r["db"]]):
                assert_close(a, e, dtype, "weight", name, scale)
            assert_close(got[8], r["grad_norms"], dtype, what="grad_norms")


# Shapes whose forward and backward take the chunked path with 2 threads (rows split between the
# threads; the input projection, or the weight and input gradients, computed chunk by chunk
# beside the recurrence): several chunks with a partial last one, dW rows split below and above
# the packed product's 128-row threshold.
CHUNKED = [(37, 8, 19, 72), (70, 17, 33, 130), (61, 9, 5, 260)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,I,H", CHUNKED)
def test_chunked_forward_and_backward_match_reference(isa, T, B, I, H, dtype):
    rng = np.random.default_rng(T)
    previous = elman.get_num_threads()
    c = _case(rng, T, B, I, H, dtype)
    g = rng.standard_normal((T, B, H)).astype(dtype)
    g_hn = rng.standard_normal((B, H)).astype(dtype)
    try:
        elman.set_num_threads(2)
        for reverse, act in [(False, "tanh"), (True, "relu")]:
            out, h_n = F.rnn_forward(**c, reverse=reverse, nonlinearity=act, backend="cpu")
            e_out, e_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"],
                                                c["bias_ih"], c["bias_hh"], c["h0"], None, act,
                                                reverse)
            assert_close(out, e_out, dtype, what="out")
            assert_close(h_n, e_hn, dtype, what="h_n")
            got = F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g, g_hn,
                                 None, act, reverse, backend="cpu")
            r = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g,
                                       g_hn, None, act, reverse)
            assert_close(got.grad_x, r["grad_x"], dtype, what="grad_x")
            assert_close(got.grad_h0, r["grad_h0"], dtype, what="grad_h0")
            scale = max_abs(r["dW_ih"], r["dW_hh"], r["db"])
            for name, a, e in [("dW_ih", got.grad_weight_ih, r["dW_ih"]),
                               ("dW_hh", got.grad_weight_hh, r["dW_hh"]),
                               ("db_ih", got.grad_bias_ih, r["db"])]:
                assert_close(a, e, dtype, "weight", name, scale)
            assert_close(got.grad_norms, r["grad_norms"], dtype, what="grad_norms")
            # the input gradient added into an existing array
            base = rng.standard_normal((T, B, I)).astype(dtype)
            gx = base.copy()
            F.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g, g_hn, None,
                           act, reverse, grad_x=gx, accumulate_grad_x=True, backend="cpu")
            assert_close(gx, base + r["grad_x"], dtype, what="grad_x accumulated")
    finally:
        elman.set_num_threads(previous)


def test_tn_product_against_numpy(isa):
    """The weight-gradient product on its own, both of its code paths (fewer / more than 128
    rows), odd sizes."""
    rng = np.random.default_rng(0)
    for K, M, N in [(1, 1, 1), (37, 5, 17), (300, 130, 33), (129, 200, 65), (64, 127, 3)]:
        for dtype in (np.float32, np.float64):
            A = rng.standard_normal((K, M)).astype(dtype)
            Bm = rng.standard_normal((K, N)).astype(dtype)
            C = rng.standard_normal((M, N)).astype(dtype)
            expected = C.astype(np.float64) + A.astype(np.float64).T @ Bm
            core._testing.tn_product(A, Bm, C)
            assert_close(C, expected, dtype, "weight")


def test_reproducible_for_a_thread_count_and_close_across_counts():
    rng = np.random.default_rng(3)
    previous = elman.get_num_threads()
    c = _case(rng, 30, 24, 40, 96, np.float32)
    g = rng.standard_normal((30, 24, 96)).astype(np.float32)
    results = {}
    try:
        for n in (1, 2):
            elman.set_num_threads(n)
            runs = [_run(c, g) for _ in range(3)]
            for other in runs[1:]:
                for a, b in zip(runs[0], other):
                    np.testing.assert_array_equal(a, b)
            results[n] = runs[0]
    finally:
        elman.set_num_threads(previous)
    for a, b in zip(results[1], results[2]):
        assert_close(a, b.astype(np.float64), np.float32, "weight")


def test_elman_isa_environment_variable():
    code = "import elman._backend as b; print(b.core().get_isa())"
    env = dict(os.environ, ELMAN_ISA="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "baseline", out.stderr
    env["ELMAN_ISA"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == SUPPORTED_ISAS[-1]
    assert "ELMAN_ISA='sse9' is not one of" in out.stderr


@pytest.mark.skipif(bool(os.environ.get("ELMAN_SANITIZED")),
                    reason="AddressSanitizer's shadow memory and quarantine change the RSS")
def test_memory_added_by_a_large_call_stays_within_budget():
    """Training forward keeps only its output (the hidden states); backward's scratch is one
    [T, B, H] array (dz) plus O(B*H + H*H). Measured as the growth of the peak resident set of
    a fresh process, beyond the arrays the caller allocates."""
    script = textwrap.dedent("""
        import resource, numpy as np
        from elman import functional as F
        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        T, B, I, H = 50, 512, 16, 512
        rng = np.random.default_rng(0)
        f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.05
        x, W_ih, W_hh, h0, g = f(T, B, I), f(H, I), f(H, H), f(B, H), f(T, B, H)
        out = np.empty((T, B, H), np.float32); grads = [np.zeros_like(W_ih), np.zeros_like(W_hh), None, None]
        gx = np.empty_like(x)
        # warm up threads and BLAS buffers on a small problem
        F.rnn_backward(x[:2], W_ih, W_hh, F.rnn_forward(x[:2], W_ih, W_hh, h0=h0)[0], h0, g[:2], grads=tuple(grads))
        out.fill(0); gx.fill(0); m0 = peak_mb()
        F.rnn_forward(x, W_ih, W_hh, h0=h0, out=out)
        m1 = peak_mb()
        F.rnn_backward(x, W_ih, W_hh, out, h0, g, grads=tuple(grads), grad_x=gx)
        m2 = peak_mb()
        print(m1 - m0, m2 - m1)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    fwd_mb, bwd_mb = map(float, res.stdout.split())
    TBH_mb = 50 * 512 * 512 * 4 / 2**20          # 50 MB: one [T, B, H] float32 array
    small_mb = 512 * 512 * 4 * 4 / 2**20         # packed W_hh, h_n, grad_h0, [B, H] scratch
    slack_mb = 12                                 # allocator and BLAS working buffers
    assert fwd_mb <= small_mb + slack_mb, fwd_mb
    assert bwd_mb <= TBH_mb + small_mb + slack_mb, bwd_mb
