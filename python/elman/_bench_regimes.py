"""The "regimes" section of ``elman bench``: where training scripts spend their time outside the
default shape table. Each row is timed against torch in the same run (torch at 1 and at 2
threads, the faster as the baseline; elman.torch, whose autograd and other torch ops run on
torch's threads, likewise), in alternating blocks (``_bench.time_alternating``):

  vanishing   backward of one layer, loss on the last state, W_hh gain 0.1 (dL/dh_t falls into
              the subnormal range) against gain 1.0: the ratio shows what flush-to-zero buys
  short       forward + backward of a short sequence (a character-level classifier's shape)
              through the NumPy API, elman.torch and torch.nn.RNN
  cell        one RNNCell step: no-grad, and a training loop of 8 steps with backward
  stack       2 layers and bidirectional at B = 1 (a single long sequence): elman at 1 and at
              2 threads, and torch
"""

import statistics

import numpy as np

from . import functional as F
from ._bench import time_alternating


def _torch_best(torch, fns_by_threads, rounds, target_s, gap_s):
    """Median per-call time of a torch callable at 1 and at 2 threads; the faster wins."""
    best = None
    previous = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            t = statistics.median(time_alternating({"t": fns_by_threads}, rounds, target_s,
                                                   gap_s)["t"])
            best = t if best is None else min(best, t)
    finally:
        torch.set_num_threads(previous)
    return best


def _medians(fns, rounds, target_s, gap_s):
    return {k: statistics.median(v) for k, v in time_alternating(fns, rounds, target_s,
                                                                  gap_s).items()}


def vanishing(shape, torch, rounds, target_s, gap_s):
    T, B, I, H = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(np.float32)
    g = rng.standard_normal((B, H)).astype(np.float32)
    fns, w = {}, {}
    for gain in (1.0, 0.1):
        w[gain] = (rng.standard_normal((H, H)) * gain / np.sqrt(H)).astype(np.float32)
        out, _ = F.rnn_forward(x, w_ih, w[gain])
        fns[f"elman gain {gain}"] = (lambda out=out, w_hh=w[gain]: F.rnn_backward(
            x, w_ih, w_hh, out, grad_h_n=g, bias=False))
    row = {"regime": "vanishing", "shape": list(shape), **_medians(fns, rounds, target_s, gap_s)}
    if torch is not None:
        m = torch.nn.RNN(I, H, bias=False)
        with torch.no_grad():
            m.weight_ih_l0.copy_(torch.from_numpy(w_ih))
            m.weight_hh_l0.copy_(torch.from_numpy(w[0.1]))
        tx = torch.from_numpy(x).requires_grad_()
        out, h = m(tx)
        tg = torch.from_numpy(g)[None]
        row["torch gain 0.1"] = _torch_best(
            torch, lambda: torch.autograd.grad(h, [tx, *m.parameters()], tg, retain_graph=True),
            rounds, target_s, gap_s)
    return row


def short_sequence(shape, torch, et, rounds, target_s, gap_s):
    from .rnn import RNN
    T, B, I, H = shape
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    rnn = RNN(I, H, seed=0)
    g = np.ones((1, B, H), np.float32)

    def numpy_api():
        rnn(x)
        rnn.backward(grad_h_n=g)
        rnn.zero_grad()
    fns = {"elman.RNN": numpy_api}
    row = {"regime": "short", "shape": list(shape)}
    if torch is not None:
        tx = torch.from_numpy(x)

        def step(m):
            def f():
                _, h = m(tx)
                h.sum().backward()
                m.zero_grad()
            return f
        tm = torch.nn.RNN(I, H)
        row["torch"] = _torch_best(torch, step(tm), rounds, target_s, gap_s)
        row["elman.torch"] = _torch_best(torch, step(et.RNN.from_torch(tm)), rounds, target_s,
                                         gap_s)
    row.update(_medians(fns, rounds, target_s, gap_s))
    return row


def cell(shape, torch, et, rounds, target_s, gap_s):
    B, H = shape
    row = {"regime": "cell", "shape": [B, H, H]}
    if torch is None:
        return row
    tc = torch.nn.RNNCell(H, H)
    ec = et.RNNCell.from_torch(tc)
    x = torch.randn(8, B, H)

    def infer(m):
        def f():
            with torch.no_grad():
                m(x[0])
        return f

    def train(m):
        def f():
            h = None
            for t in range(8):
                h = m(x[t], h)
            h.sum().backward()
            m.zero_grad()
        return f
    row["elman.torch no_grad"] = _torch_best(torch, infer(ec), rounds, target_s, gap_s)
    row["elman.torch train 8 steps"] = _torch_best(torch, train(ec), rounds, target_s, gap_s)
    row["torch no_grad"] = _torch_best(torch, infer(tc), rounds, target_s, gap_s)
    row["torch train 8 steps"] = _torch_best(torch, train(tc), rounds, target_s, gap_s)
    return row


def stack(shape, torch, rounds, target_s, gap_s):
    from . import _threads
    from .rnn import RNN
    T, B, I, H, layers, bidir = shape
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    rnn = RNN(I, H, num_layers=layers, bidirectional=bidir, seed=0)

    def run():
        out, _ = rnn(x)
        rnn.backward(np.ones_like(out))
    row = {"regime": "stack", "shape": list(shape)}
    previous = _threads.get_num_threads()
    try:
        for n in (1, 2):
            _threads.set_num_threads(n)
            row[f"elman {n} thread{'s' if n > 1 else ''}"] = _medians(
                {"e": run}, rounds, target_s, gap_s)["e"]
    finally:
        _threads.set_num_threads(previous)
    if torch is not None:
        m = torch.nn.RNN(I, H, num_layers=layers, bidirectional=bidir)
        tx = torch.from_numpy(x)

        def trun():
            out, _ = m(tx)
            out.sum().backward()
        row["torch"] = _torch_best(torch, trun, rounds, target_s, gap_s)
    return row


def run_regimes(quick, rounds, target_s, gap_s):
    """All regimes; ``quick`` keeps one shape of each."""
    try:
        import torch

        from . import torch as et
    except ImportError:
        torch = et = None
    vanish = [(100, 32, 64, 128)] + ([] if quick else [(200, 64, 128, 256)])
    cells = [(1, 64)] if quick else [(b, h) for b in (1, 32) for h in (32, 64, 256)]
    stacks = [(1000, 1, 64, 64, 2, False), (1000, 1, 64, 64, 1, True)]
    if not quick:
        stacks += [(1000, 1, 256, 256, 2, False), (1000, 1, 256, 256, 1, True)]
    rows = [vanishing(s, torch, rounds, target_s, gap_s) for s in vanish]
    rows.append(short_sequence((8, 1, 57, 128), torch, et, rounds, target_s, gap_s))
    rows += [cell(s, torch, et, rounds, target_s, gap_s) for s in cells]
    rows += [stack(s, torch, rounds, target_s, gap_s) for s in stacks]
    return rows


def format_row(row):
    """One line: the regime, its shape, every time in microseconds and the ratios that matter."""
    times = {k: v for k, v in row.items() if k not in ("regime", "shape")}
    text = f"  {row['regime']:<9} {tuple(row['shape'])}: " + ", ".join(
        f"{k} {v * 1e6:.1f} us" for k, v in times.items())
    ratios = []
    if row["regime"] == "vanishing":
        ratios.append(f"gain 0.1 / 1.0 = {times['elman gain 0.1'] / times['elman gain 1.0']:.2f}x")
        if "torch gain 0.1" in times:
            ratios.append(f"{times['torch gain 0.1'] / times['elman gain 0.1']:.1f}x torch")
    elif row["regime"] == "short" and "torch" in times:
        ratios.append(f"elman.torch {times['torch'] / times['elman.torch']:.1f}x torch")
        ratios.append(f"elman.torch - elman.RNN = "
                      f"{(times['elman.torch'] - times['elman.RNN']) * 1e6:.1f} us")
    elif row["regime"] == "cell" and "torch no_grad" in times:
        for k in ("no_grad", "train 8 steps"):
            ratios.append(f"{k}: {times['torch ' + k] / times['elman.torch ' + k]:.2f}x torch")
    elif row["regime"] == "stack":
        ratios.append(f"2 threads {times['elman 1 thread'] / times['elman 2 threads']:.2f}x "
                      "faster than 1")
        if "torch" in times:
            ratios.append(f"{times['torch'] / min(times['elman 1 thread'], times['elman 2 threads']):.1f}x torch")
    return text + ("  (" + "; ".join(ratios) + ")" if ratios else "")
