"""The CUDA backend's kernels and algorithm, run thread by thread on the CPU by the simulator
(elman._cuda_sim, built with ELMAN_CUDA_SIM=ON): the same kernel source nvcc compiles, every
tier of the recurrence, against the float64 reference over the kernel test matrix. No GPU."""

import zlib

import numpy as np
import pytest

from conftest import assert_close, max_abs
from cuda_helpers import require_module
from elman import reference
from test_kernels import MATRIX, _lengths, make_case

sim = require_module("elman._cuda_sim", "build with ELMAN_CUDA_SIM=ON")

# A device with room for every tier (4 SMs, so tier 2 splits W_hh over up to 4 blocks).
DEVICE = dict(sm_count=4, smem=1 << 20, coop=True)


def sim_forward(c, lengths, act, reverse, tier=0, device=DEVICE):
    T, B, _ = c["x"].shape
    H = c["weight_hh"].shape[0]
    dtype = c["x"].dtype
    out, h_n = np.empty((T, B, H), dtype), np.empty((B, H), dtype)
    L = None if lengths is None else np.asarray(lengths, np.int64)
    used = sim.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"], c["bias_hh"],
                           c["h0"], L, act, reverse, out, h_n, device["sm_count"], device["smem"],
                           device["coop"], tier)
    return out, h_n, used


def sim_backward(c, out, g_out, g_hn, lengths, act, reverse, tier=0, device=DEVICE, bias=True):
    T, B, I = c["x"].shape
    H = c["weight_hh"].shape[0]
    dtype = c["x"].dtype
    r = dict(grad_x=np.empty((T, B, I), dtype), grad_h0=np.empty((B, H), dtype),
             dW_ih=np.zeros((H, I), dtype), dW_hh=np.zeros((H, H), dtype),
             db_ih=np.zeros(H, dtype) if bias else None, db_hh=np.zeros(H, dtype) if bias else None,
             grad_norms=np.empty(T))
    L = None if lengths is None else np.asarray(lengths, np.int64)
    used = sim.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], c["h0"], out, g_out, g_hn, L,
                            act, reverse, r["grad_x"], False, r["grad_h0"], r["dW_ih"], r["dW_hh"],
                            r["db_ih"], r["db_hh"], r["grad_norms"], device["sm_count"],
                            device["smem"], device["coop"], tier)
    return r, used


@pytest.mark.parametrize("act,bias,dtype,T,B,size,lengths,h0,reverse", MATRIX)
def test_simulated_kernels_match_reference(act, bias, dtype, T, B, size, lengths, h0, reverse):
    """The whole kernel matrix; each case runs on one of the three tiers (all tiers covered)."""
    key = repr((act, bias, np.dtype(dtype).name, T, B, size, lengths, h0, reverse)).encode()
    rng = np.random.default_rng(zlib.crc32(key))  # stable across runs (str hashes are not)
    I, H = size
    tier = 1 + zlib.crc32(key[::-1]) % 3
    c, g_out, g_hn = make_case(rng, T, B, I, H, dtype, bias, h0)
    L = _lengths(lengths, T, B)
    out, h_n, used = sim_forward(c, L, act, reverse, tier)
    assert used == tier
    ref_out, ref_hn = reference.rnn_forward(c["x"], c["weight_ih"], c["weight_hh"], c["bias_ih"],
                                            c["bias_hh"], c["h0"], L, act, reverse)
    assert_close(out, ref_out, dtype, what="out")
    assert_close(h_n, ref_hn, dtype, what="h_n")
    r, used = sim_backward(c, out, g_out, g_hn, L, act, reverse, tier, bias=bias)
    assert used == tier
    ref = reference.rnn_backward(c["x"], c["weight_ih"], c["weight_hh"], out, c["h0"], g_out,
                                 g_hn, L, act, reverse)
    assert_close(r["grad_x"], ref["grad_x"], dtype, what="grad_x")
    assert_close(r["grad_h0"], ref["grad_h0"], dtype, what="grad_h0")
    assert_close(r["grad_norms"], ref["grad_norms"], dtype, what="grad_norms")
    scale = max_abs(ref["dW_ih"], ref["dW_hh"], ref["db"])
    assert_close(r["dW_ih"], ref["dW_ih"], dtype, "weight", "dW_ih", scale)
    assert_close(r["dW_hh"], ref["dW_hh"], dtype, "weight", "dW_hh", scale)
    if bias:
        assert_close(r["db_ih"], ref["db"], dtype, "weight", "db_ih", scale)
        assert_close(r["db_hh"], ref["db"], dtype, "weight", "db_hh", scale)
    if L is not None:
        for b, n in enumerate(L):
            assert not out[n:, b].any() and not r["grad_x"][n:, b].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,I,H,lengths,reverse", [
    (9, 3, 5, 17, None, False), (9, 3, 5, 17, [9, 1, 4], True), (4, 2, 3, 70, [2, 4], False),
    (3, 5, 2, 33, [3, 1, 2, 2, 3], True), (6, 1, 4, 1, None, True)])
def test_every_tier_gives_the_same_bits(dtype, T, B, I, H, lengths, reverse):
    """Each output sums its products in an order fixed by k alone, so the tier (one block,
    a cooperative grid over row blocks, or per-step tiled products) never changes a bit."""
    rng = np.random.default_rng(T * 1000 + H)
    c, g_out, g_hn = make_case(rng, T, B, I, H, dtype)
    runs = []
    for tier in (1, 2, 3):
        out, h_n, used = sim_forward(c, lengths, "tanh", reverse, tier)
        r, used_b = sim_backward(c, out, g_out, g_hn, lengths, "tanh", reverse, tier)
        assert used == used_b == tier
        runs.append([out, h_n] + [r[k] for k in sorted(r)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_tier_two_uses_several_blocks():
    """Tier 2 really splits W_hh: with 4 SMs and H = 17, 4 row blocks share each step."""
    tier, gx, gy, rows, nb, smem = sim.plan_tier(17, 3, "float32", 4, 1 << 20, True, 2)
    assert (tier, gx, gy, rows, nb) == (2, 4, 1, 5, 3)
    assert smem == (rows * 17 + nb * 17) * 4


@pytest.mark.parametrize("H,B,dtype,sm,smem,coop,expected", [
    (128, 8, "float32", 132, 227 * 1024, True, 1),     # H100-like: W_hh fits one block
    (224, 4, "float32", 132, 227 * 1024, True, 1),
    (512, 8, "float32", 132, 227 * 1024, True, 2),     # split over a cooperative grid
    (2048, 8, "float32", 132, 227 * 1024, True, 2),
    (1024, 8, "float64", 132, 227 * 1024, True, 2),
    (2048, 8, "float64", 132, 227 * 1024, True, 3),    # 16 rows of 2049 doubles per SM do not fit
    (512, 8, "float32", 132, 227 * 1024, False, 3),    # no cooperative launch: per-step products
    (4096, 8, "float32", 132, 227 * 1024, True, 3),    # too big for the SMs' shared memory
    (1024, 256, "float32", 132, 227 * 1024, True, 3),  # the batch's states do not fit
    (96, 8, "float32", 40, 64 * 1024, True, 1),        # T4-like (sm_75, 64 KiB per block)
    (128, 8, "float32", 40, 64 * 1024, True, 2),
    (256, 8, "float32", 40, 64 * 1024, True, 2),
])
def test_tier_choice_follows_the_device(H, B, dtype, sm, smem, coop, expected):
    tier, gx, gy, rows, nb, smem_bytes = sim.plan_tier(H, B, dtype, sm, smem, coop, 0)
    assert tier == expected
    if tier != 3:
        assert smem_bytes <= smem and gx * gy >= 1
    if tier == 2:
        assert gx <= sm and rows * gx >= H


def test_forcing_a_tier_that_does_not_fit_is_an_error():
    with pytest.raises(ValueError, match="tier 1 does not fit"):
        sim.plan_tier(4096, 8, "float32", 132, 227 * 1024, True, 1)


@pytest.mark.parametrize("M,N,K", [(7, 5, 3), (64, 64, 16), (65, 3, 2000), (3, 70, 5000),
                                   (1, 1, 1), (130, 129, 700), (17, 33, 100000)])
def test_split_k_is_fixed_by_the_shape_and_covers_k(M, N, K):
    splits, chunk = sim.choose_splits(M, N, K)
    assert 1 <= splits <= 64 and chunk % 16 == 0
    assert (splits - 1) * chunk < K <= splits * chunk
    if K <= 1024:
        assert splits == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b",
                         [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,N,K", [(7, 5, 3), (65, 3, 2000), (3, 70, 5000), (130, 67, 33)])
def test_tiled_product_matches_numpy(dtype, trans_a, trans_b, M, N, K):
    """C = op(A) op(B) + beta C over odd sizes, with and without split-K (K > 1024)."""
    rng = np.random.default_rng(M * N + K)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    C = rng.standard_normal((M, N)).astype(dtype)
    expected = a.astype(np.float64) @ b + 0.5 * C
    A = np.ascontiguousarray(a.T) if trans_a else a
    Bm = np.ascontiguousarray(b.T) if trans_b else b
    sim.gemm(A, Bm, C, trans_a=trans_a, trans_b=trans_b, beta=0.5)
    # Sums of K products: the error scales with the terms (sqrt(K) * |a||b|), as for weights.
    assert_close(C, expected, dtype, "weight", scale=np.sqrt(K) * 3.0)


@pytest.mark.parametrize("mask", ["k", "m"])
def test_masked_rows_never_enter_a_sum(mask):
    """Rows (t, b) past a sequence's length hold inf here: the mask keeps them out of the sums
    (mask_k) and leaves output rows at 0 (mask_m), never 0 * inf = NaN."""
    rng = np.random.default_rng(5)
    T, B, H, I = 6, 3, 5, 4
    lengths = np.array([6, 2, 4], np.int64)
    valid = (np.arange(T)[:, None] < lengths[None, :]).reshape(-1)  # (T*B,)
    if mask == "k":  # C[H, I] = dz^T x over rows
        dz = rng.standard_normal((T * B, H))
        x = rng.standard_normal((T * B, I))
        dz[~valid], x[~valid] = np.inf, np.inf
        C = np.empty((H, I))
        sim.gemm(dz, x, C, trans_a=True, lengths=lengths, batch=B, mask="k")
        expected = dz[valid].T @ x[valid]
    else:  # C[T*B, I] = dz W, rows past the length written as 0
        dz = rng.standard_normal((T * B, H))
        dz[~valid] = np.inf
        W = rng.standard_normal((H, I))
        C = np.full((T * B, I), np.nan)
        sim.gemm(dz, W, C, lengths=lengths, batch=B, mask="m")
        expected = np.where(valid[:, None], np.where(valid[:, None], dz, 0) @ W, 0.0)
    assert np.isfinite(C).all()
    assert_close(C, expected, np.float64)
