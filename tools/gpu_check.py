#!/usr/bin/env python3
"""elman's CUDA backend on a real GPU: parity and timing in one short run (called by gpu_check.sh).

Parity, for every case: elman-cuda (torch device tensors through the public elman.functional,
auto backend) against (a) a float64 reference (elman's CPU backend on the float64-upcast
inputs), (b) elman's CPU backend in the same dtype, and (c) torch.nn.RNN on cuda (cuDNN, TF32
off), forward and backward (out, h_n, grad_x, grad_h0, dW_ih, dW_hh, db_ih, db_hh). Plus: forced
tiers 1/2/3 bitwise equal, run-to-run bitwise, a poisoned `out` fully written, a non-default
stream, and a probe of the stream= race in the zero-filled gradient buffers.
Timing: elman-cuda vs torch cuDNN (fwd, fwd+bwd) with CUDA events, medians, in one process.

`--cpu-dry-run` exercises the harness without a GPU (torch on the CPU, elman's cpu backend as the
backend under test): it checks the harness's wiring, not CUDA.
Writes a JSON of everything to $OUT/check.json (or ./check.json) and prints a compact summary.
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--cpu-dry-run", action="store_true")
ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 240)))
ap.add_argument("--quick", action="store_true", help="fewer cases (for the dry run)")
args = ap.parse_args()
T_START = time.time()
DEADLINE = T_START + args.budget
DRY = args.cpu_dry_run
OUTDIR = os.environ.get("OUT") or "."

import elman  # noqa: E402
from elman._backends import cuda as _cuda_fn  # noqa: E402
from elman import functional as F  # noqa: E402

try:
    import torch
except Exception as exc:  # noqa: BLE001
    torch = None
    print(f"torch not importable ({exc}): the torch comparisons are skipped")

DEV = "cpu" if DRY else "cuda"
HAVE_TORCH = torch is not None and (DRY or torch.cuda.is_available())
if torch is not None:
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's RNN would use TF32 tensor cores otherwise
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
if not DRY:
    assert "cuda" in elman._backend.available(), (
        f"elman sees no usable CUDA: {elman._backend.cuda_status()}"
    )
    assert HAVE_TORCH, "the GPU run needs torch with CUDA (device tensors, cuDNN, events)"

R = {"device": {}, "parity": [], "extra": [], "timing": [], "errors": []}


def left():
    return DEADLINE - time.time()


# ------------------------------------------------------------------------------ device + tiers
def device_props():
    if DRY:
        return 132, 232448
    p = torch.cuda.get_device_properties(0)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or 0
    if not smem:
        try:
            import cupy

            smem = cupy.cuda.runtime.deviceGetAttribute(97, 0)  # MaxSharedMemoryPerBlockOptin
        except Exception:  # noqa: BLE001
            smem = 232448
    return p.multi_processor_count, int(smem)


SMS, SMEM = device_props()


def predict_tier(H, B, itemsize):
    """plan_recurrence of csrc/cuda/algo.h, replicated (cooperative launch assumed)."""
    cap, ldw = SMEM // itemsize, H | 1
    if H * ldw + H <= cap:
        fit = (cap - H * ldw) // H
        nb = max(1, min(-(-B // SMS), fit))
        return 1, f"1x{-(-B // nb)} blk nb={nb}", (H * ldw + nb * H) * itemsize
    if B * H + ldw <= cap:
        rows = max(1, -(-H // SMS))
        if rows <= (cap - B * H) // ldw:
            return 2, f"{-(-H // rows)} blk rows={rows}", (rows * ldw + B * H) * itemsize
    return 3, "T-node graph", 0


if not DRY:
    p = torch.cuda.get_device_properties(0)
    R["device"] = {
        "name": p.name,
        "sms": SMS,
        "smem_optin": SMEM,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "elman_cuda": elman._backend.cuda_status()[1],
        "cuda_runtime_elman": elman._backend.cuda().runtime_version(),
        "driver": elman._backend.cuda().driver_version(),
    }


# ------------------------------------------------------------------------------ data, helpers
def make_case(T, B, I, H, dtype, seed):
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)  # uniform(-s, s): spectral radius ~0.58, a contracting recurrence
    c = dict(
        x=rng.standard_normal((T, B, I)),
        W_ih=rng.uniform(-s, s, (H, I)),
        W_hh=rng.uniform(-s, s, (H, H)),
        b_ih=rng.uniform(-s, s, H),
        b_hh=rng.uniform(-s, s, H),
        h0=rng.uniform(-1, 1, (B, H)),
        g_out=rng.standard_normal((T, B, H)),
        g_hn=rng.standard_normal((B, H)),
    )
    return {k: v.astype(dtype) for k, v in c.items()}


def lengths_for(T, B, seed):
    rng = np.random.default_rng(seed + 1)
    L = rng.integers(1, T + 1, B)
    L[0] = T
    return L.astype(np.int64)


def relerr(a, ref):
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return float("nan")
    if not np.isfinite(a).all():
        return float("inf")
    n = np.linalg.norm(ref.ravel())
    d = np.linalg.norm((a - ref).ravel())
    return float(d / n) if n > 0 else float(d)


def host(a):
    if a is None:
        return None
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


NAMES = ["out", "h_n", "grad_x", "grad_h0", "dW_ih", "dW_hh", "db_ih", "db_hh"]


def run_elman(c, lengths=None, reverse=False, backend=None, device=True, out=None):
    """elman forward + backward; returns the 8 results (host arrays). device: torch tensors."""
    if device:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(DEV) for k, v in c.items()}
    else:
        t = c
    be = backend or ("cpu" if DRY else None)
    o, hn = F.rnn_forward(t["x"], t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"], t["h0"], lengths,
                          "tanh", reverse, out=out, backend=be)
    g = F.rnn_backward(t["x"], t["W_ih"], t["W_hh"], o, t["h0"], t["g_out"], t["g_hn"], lengths,
                       "tanh", reverse, True, backend=be)
    if device and not DRY:
        torch.cuda.synchronize()
    return results(o, hn, g)


def results(o, hn, g):
    """out, h_n and the six gradients of one forward + backward, on the host."""
    grads = (g.grad_x, g.grad_h0, g.grad_weight_ih, g.grad_weight_hh, g.grad_bias_ih,
             g.grad_bias_hh)
    return [host(v) for v in (o, hn, *grads)]


def run_cpu(c, lengths=None, reverse=False, dtype=None):
    cc = {k: v.astype(dtype) for k, v in c.items()} if dtype else c
    return run_elman(cc, lengths, reverse, backend="cpu", device=False)


def make_torch_rnn(c, dtype):
    H, I = c["W_ih"].shape
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rnn = torch.nn.RNN(I, H, nonlinearity="tanh", bias=True).to(DEV, tdt)
    with torch.no_grad():
        for name, key in (
            ("weight_ih_l0", "W_ih"),
            ("weight_hh_l0", "W_hh"),
            ("bias_ih_l0", "b_ih"),
            ("bias_hh_l0", "b_hh"),
        ):
            getattr(rnn, name).copy_(torch.from_numpy(c[key]))
    rnn.flatten_parameters()
    return rnn


def run_torch(c, dtype, lengths=None):
    """torch.nn.RNN (cuDNN on cuda) forward + backward with the same upstream gradients."""
    rnn = make_torch_rnn(c, dtype)
    x = torch.from_numpy(c["x"]).to(DEV).requires_grad_(True)
    h0 = torch.from_numpy(c["h0"]).to(DEV)[None].contiguous().requires_grad_(True)
    g_out = torch.from_numpy(c["g_out"]).to(DEV)
    g_hn = torch.from_numpy(c["g_hn"]).to(DEV)
    if lengths is None:
        out, hn = rnn(x, h0)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.from_numpy(lengths), enforce_sorted=False
        )
        po, hn = rnn(packed, h0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(po, total_length=x.shape[0])
        mask = (torch.arange(x.shape[0])[:, None] < torch.from_numpy(lengths)[None]).to(DEV)
        g_out = g_out * mask[..., None].to(g_out.dtype)
    torch.autograd.backward([out, hn[0]], [g_out, g_hn])
    return [
        host(v)
        for v in (
            out,
            hn[0],
            x.grad,
            h0.grad[0],
            rnn.weight_ih_l0.grad,
            rnn.weight_hh_l0.grad,
            rnn.bias_ih_l0.grad,
            rnn.bias_hh_l0.grad,
        )
    ]


def worst(res, ref):
    errs = {n: relerr(a, b) for n, a, b in zip(NAMES, res, ref)}
    name = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
    return errs[name], name, errs


# ------------------------------------------------------------------------------ parity cases
# (T, B, I, H, lengths?, reverse?, torch?) -- edges: H = 1, 2, 240 (last tier 1 in fp32), 241,
# 2048; B = 1, 4096; T = 1; long T; the four timing shapes.
CASES = [
    (1, 1, 1, 1, False, False, True),
    (5, 3, 2, 2, True, True, False),
    (1, 7, 5, 33, False, False, True),
    (9, 4, 6, 33, True, True, False),
    (100, 1, 32, 64, False, False, True),
    (1000, 16, 64, 128, False, False, True),
    (40, 16, 64, 128, True, False, True),
    (12, 5, 16, 240, False, True, False),
    (12, 5, 16, 241, True, False, True),
    (100, 32, 512, 512, False, False, True),
    (30, 32, 512, 512, True, True, False),
    (50, 32, 1024, 1024, False, False, True),
    (6, 1, 8, 2048, False, False, True),
    (4, 16, 8, 2048, True, False, True),
    (3, 4096, 16, 64, True, False, True),
    (3, 4096, 16, 512, False, False, True),
]
if args.quick:
    CASES = [c for c in CASES if c[0] * c[1] * c[3] <= 200_000 and c[3] <= 512]

# A case passes when its relative-norm error vs the float64 reference is under TOL, or no more
# than 4x the CPU backend's own error in the same dtype, or 10x cuDNN's (long sums in fp32).
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def parity_case(T, B, I, H, use_len, reverse, use_torch, dtype):
    seed = (T * 131 + B * 17 + I * 7 + H) % 2**31
    c = make_case(T, B, I, H, dtype, seed)
    L = lengths_for(T, B, seed) if use_len else None
    rec = {
        "shape": [T, B, I, H],
        "dtype": np.dtype(dtype).name,
        "lengths": use_len,
        "reverse": reverse,
        "tier": predict_tier(H, B, np.dtype(dtype).itemsize)[0],
    }
    t0 = time.time()
    got = run_elman(c, L, reverse)
    ref64 = run_cpu(c, L, reverse, np.float64)
    same = run_cpu(c, L, reverse)
    rec["err_ref64"], rec["worst_ref64"], rec["errs_ref64"] = worst(got, ref64)
    rec["err_cpu"], rec["worst_cpu"], _ = worst(got, same)
    rec["err_cpu_vs_ref64"] = worst(same, ref64)[0]
    if L is not None:
        pad = np.arange(T)[:, None] >= L[None, :]
        rec["zeros_past_len"] = bool((got[0][pad] == 0).all() and (got[2][pad] == 0).all())
    if use_torch and HAVE_TORCH and not reverse:
        tr = run_torch(c, dtype, L)
        rec["err_torch_vs_ref64"], rec["worst_torch"], _ = worst(tr, ref64)
        rec["err_elman_vs_torch"] = worst(got, tr)[0]
    bound = max(TOL[dtype], 4 * rec["err_cpu_vs_ref64"], 10 * rec.get("err_torch_vs_ref64", 0))
    ok = rec["err_ref64"] <= bound and rec.get("zeros_past_len", True)
    rec["ok"] = bool(ok)
    rec["s"] = round(time.time() - t0, 2)
    return rec


for dtype in (np.float32, np.float64):
    for case in CASES:
        if left() < 0.55 * args.budget:  # keep the rest for the extra checks and the timing
            R["errors"].append(
                f"parity stopped early (budget) before {case} {np.dtype(dtype).name}"
            )
            break
        try:
            R["parity"].append(parity_case(*case, dtype))
        except Exception as exc:  # noqa: BLE001
            R["parity"].append(
                {
                    "shape": list(case[:4]),
                    "dtype": np.dtype(dtype).name,
                    "ok": False,
                    "exception": f"{type(exc).__name__}: {exc}",
                }
            )
            traceback.print_exc()


# ------------------------------------------------------------------------------ extra checks
def extra(name, fn):
    if left() < 0.35 * args.budget:
        R["extra"].append({"check": name, "ok": None, "note": "skipped (budget)"})
        return
    t0 = time.time()
    try:
        ok, note = fn()
    except Exception as exc:  # noqa: BLE001
        ok, note = False, f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    R["extra"].append({"check": name, "ok": ok, "note": note, "s": round(time.time() - t0, 2)})


def forced_tiers(T, B, I, H, dtype, tiers, use_len, reverse):
    def fn():
        c = make_case(T, B, I, H, dtype, H)
        L = lengths_for(T, B, H) if use_len else None
        runs = {}
        for tier in tiers:
            o, hn = _cuda_fn.rnn_forward(c["x"], c["W_ih"], c["W_hh"], c["b_ih"], c["b_hh"],
                                         c["h0"], L, "tanh", reverse, tier=tier)
            g = _cuda_fn.rnn_backward(c["x"], c["W_ih"], c["W_hh"], o, c["h0"], c["g_out"],
                                      c["g_hn"], L, "tanh", reverse, True, tier=tier)
            runs[tier] = [o, hn] + [a for a in g if a is not None]
        base = runs[tiers[0]]
        diff = [
            f"tier{t}:{NAMES[i] if i < 8 else 'norms'}"
            for t in tiers[1:]
            for i, (a, b) in enumerate(zip(base, runs[t]))
            if not np.array_equal(a, b)
        ]
        return not diff, "bitwise equal" if not diff else "differ: " + ",".join(diff[:6])

    return fn


def repeat_bitwise():
    c = make_case(64, 32, 48, 256, np.float32, 5)
    first = run_elman(c)
    for _ in range(4):
        again = run_elman(c)
        if not all(np.array_equal(a, b) for a, b in zip(first, again)):
            return False, "a rerun changed bits"
    return True, "5 runs bitwise identical (64,32,48,256)"


def poisoned_out():
    T, B, I, H = 20, 6, 8, 100
    c = make_case(T, B, I, H, np.float32, 9)
    L = lengths_for(T, B, 9)
    out = torch.full((T, B, H), float("nan"), device=DEV)
    t = {k: torch.from_numpy(v).to(DEV) for k, v in c.items()}
    o, _ = F.rnn_forward(t["x"], t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"], t["h0"], L, out=out)
    o = host(o)
    pad = np.arange(T)[:, None] >= L[None, :]
    return bool(
        np.isfinite(o).all() and (o[pad] == 0).all()
    ), "NaN-filled out: every element written"


def side_stream():
    c = make_case(50, 8, 16, 300, np.float32, 11)
    base = run_elman(c)
    t = {k: torch.from_numpy(v).to(DEV) for k, v in c.items()}
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        o, hn = F.rnn_forward(t["x"], t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"], t["h0"], stream=s)
        g = F.rnn_backward(
            t["x"], t["W_ih"], t["W_hh"], o, t["h0"], t["g_out"], t["g_hn"], stream=s
        )
    s.synchronize()
    got = results(o, hn, g)
    same = all(np.array_equal(a, b) for a, b in zip(base, got))
    return same, "stream=s as torch's current stream: bitwise equal to the default stream"


def stream_race_probe():
    """Review finding: with stream= a stream that is NOT torch's current one, the gradients that
    elman zero-fills (torch.zeros, queued on torch's current stream) can be written by elman's
    kernels first and zeroed after. A sleep on the current stream makes that deterministic."""
    c = make_case(20, 8, 16, 64, np.float32, 13)
    ref = run_elman(c)
    t = {k: torch.from_numpy(v).to(DEV) for k, v in c.items()}
    o, _ = F.rnn_forward(t["x"], t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"], t["h0"])
    torch.cuda.synchronize()
    s = torch.cuda.Stream()  # non-blocking w.r.t. the legacy default stream
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time on the current (default) stream
    g = F.rnn_backward(t["x"], t["W_ih"], t["W_hh"], o, t["h0"], t["g_out"], t["g_hn"], stream=s)
    torch.cuda.synchronize()
    dW = host(g.grad_weight_hh)
    ok = np.allclose(dW, ref[5], rtol=1e-5, atol=1e-6)
    return ok, (
        "dW_hh right"
        if ok
        else f"dW_hh wrong (max|dW|={np.abs(dW).max():.3g}, expected {np.abs(ref[5]).max():.3g}):"
        " zero-fill on torch's current stream raced elman's stream"
    )


if not DRY:
    extra(
        "tiers 1/2/3 bitwise (7,8,40,200) fp32 len+rev",
        forced_tiers(7, 8, 40, 200, np.float32, (1, 2, 3), True, True),
    )
    extra(
        "tiers 1/2/3 bitwise (5,3,7,120) fp64",
        forced_tiers(5, 3, 7, 120, np.float64, (1, 2, 3), True, False),
    )
    extra(
        "tiers 2/3 bitwise (5,16,64,1024) fp32 len+rev",
        forced_tiers(5, 16, 64, 1024, np.float32, (2, 3), True, True),
    )
    extra("run-to-run bitwise", repeat_bitwise)
    extra("poisoned out", poisoned_out)
    extra("side stream (current)", side_stream)
    extra("stream= race probe (expected to FAIL per review)", stream_race_probe)


# ------------------------------------------------------------------------------ timing
def bench(fn, min_s=0.4, max_iter=40):
    fn()
    if not DRY:
        torch.cuda.synchronize()
    times = []
    stop = time.perf_counter() + min_s
    while len(times) < 5 or (time.perf_counter() < stop and len(times) < max_iter):
        if DRY:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    return statistics.median(times)


TIMING = [
    (100, 32, 512, 512, np.float32),
    (50, 32, 1024, 1024, np.float32),
    (1000, 16, 64, 128, np.float32),
    (100, 1, 32, 64, np.float32),
    (100, 32, 512, 512, np.float64),
    (1000, 16, 64, 128, np.float64),
    (200, 256, 256, 256, np.float32),
    (20, 4096, 64, 512, np.float32),
]
if args.quick:
    TIMING = TIMING[2:4]


def time_case(T, B, I, H, dtype):
    c = make_case(T, B, I, H, dtype, 21)
    t = {k: torch.from_numpy(v).to(DEV) for k, v in c.items()}
    be = "cpu" if DRY else None
    rec = {
        "shape": [T, B, I, H],
        "dtype": np.dtype(dtype).name,
        "tier": "%d (%s)" % predict_tier(H, B, np.dtype(dtype).itemsize)[:2],
    }
    if DRY:
        t = c

    def e_fwd():
        return F.rnn_forward(
            t["x"], t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"], t["h0"], backend=be
        )

    def e_fb():
        o, _ = e_fwd()
        return F.rnn_backward(
            t["x"], t["W_ih"], t["W_hh"], o, t["h0"], t["g_out"], t["g_hn"], backend=be
        )

    rec["elman_fwd_ms"] = bench(e_fwd)
    rec["elman_fb_ms"] = bench(e_fb)
    if not DRY and left() > 40:  # the tier-3 path (graph of T products), forced, for comparison
        try:
            rec["elman_fwd_tier3_ms"] = bench(
                lambda: _cuda_fn.rnn_forward(
                    t["x"],
                    t["W_ih"],
                    t["W_hh"],
                    t["b_ih"],
                    t["b_hh"],
                    t["h0"],
                    None,
                    "tanh",
                    False,
                    tier=3,
                ),
                min_s=0.2,
                max_iter=10,
            )
        except Exception as exc:  # noqa: BLE001
            rec["elman_fwd_tier3_ms"] = f"{type(exc).__name__}"
    if HAVE_TORCH:
        rnn = make_torch_rnn(c, dtype)
        x = torch.from_numpy(c["x"]).to(DEV)
        h0 = torch.from_numpy(c["h0"]).to(DEV)[None].contiguous()
        g_out = torch.from_numpy(c["g_out"]).to(DEV)
        g_hn = torch.from_numpy(c["g_hn"]).to(DEV)[None]

        def t_fwd():
            with torch.no_grad():
                return rnn(x, h0)

        xg = x.clone().requires_grad_(True)
        hg = h0.clone().requires_grad_(True)

        def t_fb():
            out, hn = rnn(xg, hg)
            torch.autograd.backward([out, hn], [g_out, g_hn])

        rec["torch_fwd_ms"] = bench(t_fwd)
        rec["torch_fb_ms"] = bench(t_fb)
        rec["fwd_ratio"] = rec["elman_fwd_ms"] / rec["torch_fwd_ms"]
        rec["fb_ratio"] = rec["elman_fb_ms"] / rec["torch_fb_ms"]
    rec["elman_fwd_us_step"] = rec["elman_fwd_ms"] * 1e3 / T
    return rec


for case in TIMING:
    if left() < 12:
        R["errors"].append(f"timing stopped early (budget) before {case[:4]}")
        break
    try:
        R["timing"].append(time_case(*case))
    except Exception as exc:  # noqa: BLE001
        R["timing"].append(
            {
                "shape": list(case[:4]),
                "dtype": np.dtype(case[4]).name,
                "exception": f"{type(exc).__name__}: {exc}",
            }
        )
        traceback.print_exc()

# host-mode (NumPy in, NumPy out) overhead, one shape
if not DRY and left() > 15:
    c = make_case(100, 32, 512, 512, np.float32, 3)
    R["host_mode_fwd_ms"] = bench(
        lambda: F.rnn_forward(
            c["x"], c["W_ih"], c["W_hh"], c["b_ih"], c["b_hh"], c["h0"], backend="cuda"
        ),
        0.3,
        10,
    )

# ------------------------------------------------------------------------------ summary
R["elapsed_s"] = round(time.time() - T_START, 1)
with open(os.path.join(OUTDIR, "check.json"), "w") as f:
    json.dump(R, f, indent=1, default=str)


def fmt(v, spec=".1e"):
    return format(v, spec) if isinstance(v, float) else str(v)


print("\n== PARITY (relative-norm error of the worst of out,h_n,grad_x,grad_h0,dW_ih,dW_hh,db)")
print(
    f"{'T,B,I,H':>18} {'dtype':7} {'L':1}{'R':1} {'tier':4} {'vs fp64':>8} {'worst':7} "
    f"{'vs cpu':>8} {'cpu/fp64':>8} {'cudnn/64':>8} {'vs cudnn':>8} ok"
)
for r in R["parity"]:
    if "exception" in r:
        print(f"{str(tuple(r['shape'])):>18} {r['dtype']:7} EXCEPTION {r['exception'][:90]}")
        continue
    print(
        f"{','.join(map(str, r['shape'])):>18} {r['dtype']:7} {'L' if r['lengths'] else '-'}"
        f"{'R' if r['reverse'] else '-'} {r['tier']:<4} {fmt(r['err_ref64']):>8} "
        f"{r['worst_ref64']:7} "
        f"{fmt(r['err_cpu']):>8} {fmt(r['err_cpu_vs_ref64']):>8} "
        f"{fmt(r.get('err_torch_vs_ref64', '-')):>8} {fmt(r.get('err_elman_vs_torch', '-')):>8} "
        f"{'OK' if r['ok'] else 'FAIL'}"
    )
if R["extra"]:
    print("\n== EXTRA")
    for e in R["extra"]:
        state = "OK  " if e["ok"] else ("SKIP" if e["ok"] is None else "FAIL")
        print(f"  {state} {e['check']}: {e['note']}")
print(
    "\n== TIMING (median ms per call, CUDA events; ratio = elman / torch cuDNN; <1: elman faster)"
)
print(
    f"{'T,B,I,H':>16} {'dtype':7} {'tier':22} {'el fwd':>8} {'cudnn':>8} {'ratio':>6} "
    f"{'el f+b':>8} {'cudnn':>8} {'ratio':>6} {'us/step':>7} {'t3 fwd':>8}"
)
for r in R["timing"]:
    if "exception" in r:
        print(
            f"{','.join(map(str, r['shape'])):>16} {r['dtype']:7} EXCEPTION {r['exception'][:80]}"
        )
        continue
    print(
        f"{','.join(map(str, r['shape'])):>16} {r['dtype']:7} {r['tier']:22} "
        f"{r['elman_fwd_ms']:8.3f} {fmt(r.get('torch_fwd_ms', '-'), '8.3f'):>8} "
        f"{fmt(r.get('fwd_ratio', '-'), '6.2f'):>6} {r['elman_fb_ms']:8.3f} "
        f"{fmt(r.get('torch_fb_ms', '-'), '8.3f'):>8} {fmt(r.get('fb_ratio', '-'), '6.2f'):>6} "
        f"{r['elman_fwd_us_step']:7.2f} {fmt(r.get('elman_fwd_tier3_ms', '-'), '8.3f'):>8}"
    )
if "host_mode_fwd_ms" in R:
    print(f"host-mode (NumPy in/out) fwd (100,32,512,512) fp32: {R['host_mode_fwd_ms']:.3f} ms")
for e in R["errors"]:
    print("NOTE:", e)
n_bad = sum(1 for r in R["parity"] if not r.get("ok")) + sum(
    1 for e in R["extra"] if e["ok"] is False and "expected to FAIL" not in e["check"]
)
n_ok = sum(1 for r in R["parity"] if r.get("ok"))
print(f"\nparity: {n_ok} ok, {n_bad} bad; device {R['device']}; {R['elapsed_s']} s")
sys.exit(1 if n_bad else 0)
