"""The engine behind ``elman bench``: times one RNN layer (forward, and forward + BPTT) on each
backend present, in alternating blocks so all backends see the same machine state, after
checking every backend's result against the float64 reference.

Backends timed:
  cpu    elman's compiled kernels (elman.functional, backend="cpu")
  numpy  the same math as a plain vectorized NumPy program in the benchmark's dtype: a loop
         over time, batch-vectorized, one matrix product for each large product (the
         reference itself is float64 and written for reading, so it is not what is timed)
  torch  torch.nn.RNN with the same weights (when torch is importable; forward timed under
         torch.no_grad(), forward + backward with autograd)
  elman.torch  the drop-in elman.torch.RNN, timed exactly as torch.nn.RNN
"""

import json
import os
import platform
import statistics
import sys
import time
from importlib import resources

import numpy as np

from . import _backend, functional as F, reference

FLOAT = {"float32": np.float32, "float64": np.float64}


def load_shapes(name):
    data = json.loads(resources.files("elman").joinpath("bench_shapes.json").read_text())
    return [tuple(s) for s in data[name]]


# ----------------------------------------------------------------------------- numpy baseline
def numpy_forward(x, W_ih, W_hh, b, h0):
    T, B, _ = x.shape
    H = W_hh.shape[0]
    out = np.empty((T, B, H), x.dtype)
    np.matmul(x.reshape(T * B, -1), W_ih.T, out=out.reshape(T * B, H))
    out += b
    h = h0
    for t in range(T):
        z = out[t]
        z += h @ W_hh.T
        np.tanh(z, out=z)
        h = z
    return out


def numpy_backward(x, W_ih, W_hh, h0, out, g_out):
    T, B, I = x.shape
    H = W_hh.shape[0]
    dz = np.empty_like(out)
    g = np.zeros((B, H), x.dtype)
    for t in range(T - 1, -1, -1):
        dh = g_out[t] + g
        h = out[t]
        np.multiply(dh, 1 - h * h, out=dz[t])
        g = dz[t] @ W_hh
    dZ = dz.reshape(T * B, H)
    dW_ih = dZ.T @ x.reshape(T * B, I)
    dW_hh = dz[0].T @ h0 + dz[1:].reshape(-1, H).T @ out[:-1].reshape(-1, H)
    db = dZ.sum(axis=0)
    dx = (dZ @ W_ih).reshape(T, B, I)
    return dx, g, dW_ih, dW_hh, db


# ----------------------------------------------------------------------------- cases
class Case:
    """One shape and dtype: data, the float64 expectation, and a runner per backend."""

    def __init__(self, T, B, I, H, dtype, seed=0):
        rng = np.random.default_rng(seed)
        s = 1 / np.sqrt(H)
        self.shape = (T, B, I, H)
        self.dtype = dtype
        self.x = rng.standard_normal((T, B, I)).astype(dtype)
        self.W_ih = rng.uniform(-s, s, (H, I)).astype(dtype)
        self.W_hh = rng.uniform(-s, s, (H, H)).astype(dtype)
        self.b_ih = rng.uniform(-s, s, H).astype(dtype)
        self.b_hh = rng.uniform(-s, s, H).astype(dtype)
        self.h0 = rng.uniform(-1, 1, (B, H)).astype(dtype)
        self.g_out = rng.standard_normal((T, B, H)).astype(dtype)

    def flops(self, backward):
        T, B, I, H = self.shape
        return (6 if backward else 2) * T * B * H * (I + H)

    def expected(self):
        out, _ = reference.rnn_forward(self.x, self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.h0)
        r = reference.rnn_backward(self.x, self.W_ih, self.W_hh, out, self.h0, self.g_out)
        return out, r["dW_hh"]

    # Each runner returns (forward, forward+backward) callables; the latter returns
    # (out, dW_hh) for the correctness check.
    def cpu(self):
        def fwd():
            return F.rnn_forward(self.x, self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.h0,
                                 backend="cpu")[0]

        def fwdbwd():
            out = fwd()
            r = F.rnn_backward(self.x, self.W_ih, self.W_hh, out, self.h0, self.g_out, backend="cpu")
            return out, r.grad_weight_hh
        return fwd, fwdbwd

    def numpy(self):
        b = self.b_ih + self.b_hh

        def fwd():
            return numpy_forward(self.x, self.W_ih, self.W_hh, b, self.h0)

        def fwdbwd():
            out = fwd()
            return out, numpy_backward(self.x, self.W_ih, self.W_hh, self.h0, out, self.g_out)[3]
        return fwd, fwdbwd

    def torch(self, module=None):
        import torch
        T, B, I, H = self.shape
        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        m = (module or torch.nn.RNN)(I, H, dtype=tdtype)
        with torch.no_grad():
            for name, v in (("weight_ih_l0", self.W_ih), ("weight_hh_l0", self.W_hh),
                            ("bias_ih_l0", self.b_ih), ("bias_hh_l0", self.b_hh)):
                getattr(m, name).copy_(torch.from_numpy(v))
        # x and h0 require gradients, so that torch computes what every other backend does:
        # dL/dx, dL/dh0 and the parameter gradients.
        x = torch.from_numpy(self.x).requires_grad_(True)
        h0 = torch.from_numpy(self.h0)[None].requires_grad_(True)
        g = torch.from_numpy(self.g_out)

        def fwd():
            with torch.no_grad():
                return m(x, h0)[0]

        def fwdbwd():
            m.zero_grad(set_to_none=True)
            x.grad = h0.grad = None
            out, _ = m(x, h0)
            out.backward(g)
            return out.detach().numpy(), m.weight_hh_l0.grad.numpy()
        return fwd, fwdbwd

    def elman_torch(self):
        from . import torch as elman_torch
        return self.torch(elman_torch.RNN)


setattr(Case, "elman.torch", Case.elman_torch)  # the backend's name as `elman bench` shows it


def available_backends():
    names = [b for b in ("cpu",) if b in _backend.available()] + ["numpy"]
    try:
        import torch  # noqa: F401  (optional: only to time it)
        names.append("torch")
        if "cpu" in names:
            names.append("elman.torch")
    except ImportError:
        pass
    return names


# ----------------------------------------------------------------------------- timing
def _calibrate(fn, target_s):
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, int(target_s / max(dt, 1e-7)))


def _time_block(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


# Thread pools spin for a while after their last task (OpenBLAS's for up to 2^28 cycles by
# default, OpenMP's and elman's for about a millisecond) and would steal the cores from the next
# library's block: every block starts after this quiet gap.
QUIET_GAP_S = 0.15


def time_alternating(fns, rounds, target_s, gap_s=QUIET_GAP_S):
    """fns: dict name -> callable. Per round, one timed block per backend in turn, each after a
    quiet gap, so all backends see the same machine state and none runs while another's
    thread pool is still spinning, and after one untimed call (the gap lets every library's
    threads fall asleep and the cores idle; waking them is not what a block measures).
    Returns dict name -> list of per-call block means."""
    reps = {}
    for k, f in fns.items():
        time.sleep(gap_s)
        reps[k] = _calibrate(f, target_s)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            time.sleep(gap_s)
            f()
            times[k].append(_time_block(f, reps[k]))
    return times


def blas_peak(rounds=9):
    """2 x the single-thread float32 matrix-product rate of the BLAS elman uses (GFLOP/s): the
    best of ``rounds`` blocks, since a capability is what the fastest block shows (a median
    moved by up to 10% between runs on a shared machine, and with it every "% of peak")."""
    core = _backend.core()
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    previous = core.get_num_threads()
    core.set_num_threads(1)
    try:
        core._testing.blas_gemm(a, b, c)
        per_call = [_time_block(lambda: core._testing.blas_gemm(a, b, c), 5) for _ in range(rounds)]
    finally:
        core.set_num_threads(previous)
    single = 2 * n ** 3 / min(per_call) / 1e9
    return single, 2 * single


def machine_info():
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "processor": _cpu_name(), "cpus": os.cpu_count(), "numpy": np.__version__}
    try:
        from . import __version__
        info["elman"] = __version__
    except ImportError:
        pass
    if _backend._core is not None:
        info.update({f"elman_{k}": v for k, v in _backend.core().info().items()})
        info["elman_threads"] = _backend.core().get_num_threads()
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if var in os.environ:
            info[f"env_{var}"] = os.environ[var]
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total, enabled=None):
        self.total, self.done = total, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def step(self, label):
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                             f"{label:<40} {time.perf_counter() - self.t0:6.1f}s")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def check(case, runners):
    """Each backend's forward output and dW_hh against the float64 reference: (ok, max rel err)."""
    exp_out, exp_dW = case.expected()
    rtol = 1e-4 if case.dtype == np.float32 else 1e-10
    result = {}
    for name, (_, fwdbwd) in runners.items():
        out, dW = fwdbwd()
        err_o = np.max(np.abs(np.asarray(out, np.float64) - exp_out)) / max(np.max(np.abs(exp_out)), 1e-30)
        err_w = np.max(np.abs(np.asarray(dW, np.float64) - exp_dW)) / max(np.max(np.abs(exp_dW)), 1e-30)
        err = float(max(err_o, err_w))
        result[name] = (err <= 10 * rtol, err)
    return result


def run(shapes, dtypes, backends, rounds=5, target_s=0.05, progress=None, gap_s=QUIET_GAP_S):
    """Benchmarks every (shape, dtype); returns a list of result rows (dicts)."""
    rows = []
    prog = Progress(len(shapes) * len(dtypes), progress)
    for dtype_name in dtypes:
        for shape in shapes:
            case = Case(*shape, FLOAT[dtype_name])
            runners = {b: getattr(case, b)() for b in backends}
            checks = check(case, runners)
            row = {"shape": list(shape), "dtype": dtype_name, "check": checks}
            for mode, idx in (("forward", 0), ("forward_backward", 1)):
                times = time_alternating({b: r[idx] for b, r in runners.items()}, rounds, target_s, gap_s)
                row[mode] = {b: {"median_s": statistics.median(t), "blocks_s": t} for b, t in times.items()}
                row[mode + "_gflops"] = case.flops(idx == 1) / 1e9
            rows.append(row)
            prog.step(f"{dtype_name} T,B,I,H={shape}")
    prog.close()
    return rows


def run_cell(shapes, backends, rounds=5, target_s=0.05):
    """Streaming inference: one RNNCell step per call from Python (B, I, H), every library in
    its no-gradient mode (entered once, around the timing, as a streaming loop would)."""
    from contextlib import ExitStack
    from .layers import no_grad
    with ExitStack() as stack:
        stack.enter_context(no_grad())
        if "torch" in backends or "elman.torch" in backends:
            import torch
            stack.enter_context(torch.no_grad())
        return _run_cell(shapes, backends, rounds, target_s)


def _run_cell(shapes, backends, rounds, target_s):
    from .layers import RNNCell
    rows = []
    for B, I, H in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, I)).astype(np.float32)
        h = rng.standard_normal((B, H)).astype(np.float32)
        fns = {}
        if "cpu" in backends:
            cell = RNNCell(I, H, seed=0, backend="cpu")
            fns["cpu"] = lambda: cell(x, h)
        if "torch" in backends:
            import torch
            tc = torch.nn.RNNCell(I, H)
            tx, th = torch.from_numpy(x), torch.from_numpy(h)

            fns["torch"] = lambda: tc(tx, th)
        if "elman.torch" in backends:
            import torch
            from . import torch as elman_torch
            ec = elman_torch.RNNCell(I, H)
            ex, eh = torch.from_numpy(x), torch.from_numpy(h)

            fns["elman.torch"] = lambda: ec(ex, eh)
        times = time_alternating(fns, rounds, target_s)
        rows.append({"shape": [B, I, H], "times": {k: statistics.median(v) for k, v in times.items()}})
    return rows
