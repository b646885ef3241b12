"""Threads and determinism. Kernels release the GIL; 8 Python threads running forward+backward
on their own models, or forward on one shared model, get results bitwise equal to a serial run
(a kernel that finds the worker pool busy runs its items alone, with the same split); repeated
runs, fresh processes and unbatched vs batch-of-1 calls are bitwise equal for a fixed thread
count."""

import hashlib
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import elman

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif("cpu" not in elman.backends(), reason="the compiled backend is missing"),
]
N_THREADS = 8


@pytest.fixture(params=[1, 2], ids=["1 kernel thread", "2 kernel threads"])
def kernel_threads(request):
    previous = elman.get_num_threads()
    elman.set_num_threads(request.param)
    yield request.param
    elman.set_num_threads(previous)


def _model(i):
    # sizes that take every plan: one part, parts by batch rows, parts by column panels
    I, H, B, layers, bidir, dtype = [(5, 17, 3, 1, False, np.float32), (16, 96, 40, 2, True, np.float32),
                                     (8, 160, 2, 1, False, np.float64), (3, 33, 7, 3, True, np.float64)][i % 4]
    m = elman.RNN(I, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=i)
    rng = np.random.default_rng(100 + i)
    T = 9 + i
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B) if i % 2 else None
    g = rng.standard_normal((T, B, (2 if bidir else 1) * H)).astype(dtype)
    return m, x, lengths, g


def _train_steps(m, x, lengths, g, steps=3):
    results = []
    for _ in range(steps):
        m.zero_grad()
        out, h_n = m(x, lengths=lengths)
        gx, gh = m.backward(g)
        results.append([out, h_n, gx, gh] + [p.grad.copy() for p in m.parameters()]
                       + [m.grad_norms[k] for k in sorted(m.grad_norms)])
    return results


def _run_threads(fn, n=N_THREADS, timeout=120):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def target(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]
    return results


def _assert_bitwise(a, b, what):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(x, list):
            _assert_bitwise(x, y, f"{what}[{i}]")
        else:
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{what}[{i}]"


def test_eight_threads_on_separate_models_equal_a_serial_run(kernel_threads):
    cases = [_model(i) for i in range(N_THREADS)]
    serial = [_train_steps(*c) for c in cases]
    cases = [_model(i) for i in range(N_THREADS)]  # fresh models: same seeds, zero gradients
    concurrent = _run_threads(lambda i: _train_steps(*cases[i]))
    for i in range(N_THREADS):
        _assert_bitwise(concurrent[i], serial[i], f"thread {i}")


@pytest.mark.parametrize("grad_mode", ["no_grad", "recording"])
def test_eight_threads_forward_on_one_shared_model_equal_a_serial_run(kernel_threads, grad_mode):
    m = elman.RNN(16, 96, num_layers=2, bidirectional=True, seed=0)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((12, 4 + 6 * i, 16)).astype(np.float32) for i in range(N_THREADS)]
    lengths = [rng.integers(1, 13, x.shape[1]) for x in xs]

    def forward(i):
        if grad_mode == "no_grad":
            with elman.no_grad():
                return list(m(xs[i], lengths=lengths[i]))
        return list(m(xs[i], lengths=lengths[i]))
    serial = [forward(i) for i in range(N_THREADS)]
    for _ in range(3):
        concurrent = _run_threads(forward)
        for i in range(N_THREADS):
            _assert_bitwise(concurrent[i], serial[i], f"thread {i}")


@pytest.mark.parametrize("B,H", [(1, 64), (64, 256)], ids=["fast path", "BLAS path without the GIL"])
def test_eight_threads_on_one_shared_cell_equal_a_serial_run(kernel_threads, B, H):
    c = elman.RNNCell(32, H, seed=0)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((B, 32)).astype(np.float32) for _ in range(N_THREADS)]
    hs = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(N_THREADS)]

    def steps(i):
        h, outs = hs[i], []
        with elman.no_grad():
            for _ in range(20):
                h = c(xs[i], h)
                outs.append(h)
        return outs
    serial = [steps(i) for i in range(N_THREADS)]
    concurrent = _run_threads(steps)
    for i in range(N_THREADS):
        _assert_bitwise(concurrent[i], serial[i], f"thread {i}")


def test_changing_the_thread_count_while_kernels_run_is_safe():
    """set_num_threads from one thread while seven others run kernels: no crash, no deadlock,
    results correct for whichever count each call saw."""
    previous = elman.get_num_threads()
    m = elman.RNN(16, 96, seed=0)
    x = np.random.default_rng(3).standard_normal((10, 40, 16)).astype(np.float32)
    ref, _ = elman.RNN(16, 96, seed=0, backend="numpy")(x)
    stop = threading.Event()

    def work(i):
        if i == 0:
            for k in range(40):
                elman.set_num_threads(1 + k % 2)
            stop.set()
            return None
        outs = []
        while not stop.is_set():
            with elman.no_grad():
                outs.append(m(x)[0])
        return outs
    try:
        results = _run_threads(work)
    finally:
        elman.set_num_threads(previous)
    for outs in results[1:]:
        for out in outs:
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_kernels_release_the_gil():
    """While one thread is inside a long kernel call, another thread runs Python code: with
    the GIL held it could not take a single step until the call returned."""
    previous = elman.get_num_threads()
    elman.set_num_threads(1)
    m = elman.RNN(64, 256, seed=0)
    x = np.random.default_rng(4).standard_normal((1000, 32, 64)).astype(np.float32)
    window, ticks, done = {}, [], threading.Event()

    def kernel():
        with elman.no_grad():
            window["start"] = time.perf_counter()
            m(x)
            window["end"] = time.perf_counter()
        done.set()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)
    try:
        threads = [threading.Thread(target=kernel), threading.Thread(target=ticker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        elman.set_num_threads(previous)
    start, end = window["start"], window["end"]
    margin = 0.1 * (end - start)
    inside = [t for t in ticks if start + margin < t < end - margin]
    assert inside, (f"no Python step ran during a {end - start:.3f} s kernel call: the GIL was "
                    "not released")


# ------------------------------------------------------------------------------ determinism
def test_repeated_runs_are_bitwise_equal(kernel_threads):
    for i in range(4):
        first = _train_steps(*_model(i), steps=1)
        for _ in range(3):
            _assert_bitwise(_train_steps(*_model(i), steps=1), first, f"model {i}")


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbatched_equals_batch_of_one_bitwise(backend_any, kernel_threads, layers, bidir, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((11, 7)).astype(dtype)
    D = 2 if bidir else 1
    h0 = rng.standard_normal((layers * D, 9)).astype(dtype)
    g = rng.standard_normal((11, D * 9)).astype(dtype)
    gh = rng.standard_normal((layers * D, 9)).astype(dtype)

    def run(unbatched, with_h0):
        m = elman.RNN(7, 9, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=0,
                      backend=backend_any)
        if unbatched:
            out, h_n = m(x, h0 if with_h0 else None)
            gx, gh0 = m.backward(g, gh)
        else:
            out, h_n = m(x[:, None], h0[:, None] if with_h0 else None)
            out, h_n = out[:, 0], h_n[:, 0]
            gx, gh0 = m.backward(g[:, None], gh[:, None])
            gx, gh0 = gx[:, 0], gh0[:, 0]
        return [out, h_n, gx, gh0] + [p.grad for p in m.parameters()]
    for with_h0 in (False, True):
        _assert_bitwise(run(True, with_h0), run(False, with_h0), f"h0={with_h0}")
    c = elman.RNNCell(7, 9, dtype=dtype, seed=0, backend=backend_any)
    h1 = c(x[0], h0[0])
    gx, gh1 = c.backward(g[0, :9])
    c2 = elman.RNNCell(7, 9, dtype=dtype, seed=0, backend=backend_any)
    h1b = c2(x[:1], h0[:1])
    gxb, ghb = c2.backward(g[:1, :9])
    _assert_bitwise([h1, gx, gh1] + [p.grad for p in c.parameters()],
                    [h1b[0], gxb[0], ghb[0]] + [p.grad for p in c2.parameters()], "RNNCell")


def test_a_fresh_process_computes_the_same_bits():
    script = textwrap.dedent("""
        import hashlib, sys
        import numpy as np
        import elman
        elman.set_num_threads(2)
        sys.path.insert(0, sys.argv[1])
        from test_threads import _model, _train_steps
        h = hashlib.sha256()
        for i in range(4):
            for step in _train_steps(*_model(i), steps=1):
                for a in step:
                    h.update(a.tobytes())
        print(h.hexdigest())
    """)
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    previous = elman.get_num_threads()
    elman.set_num_threads(2)
    try:
        h = hashlib.sha256()
        for i in range(4):
            for step in _train_steps(*_model(i), steps=1):
                for a in step:
                    h.update(a.tobytes())
    finally:
        elman.set_num_threads(previous)
    digests = {subprocess.run([sys.executable, "-c", script, here], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert digests == {h.hexdigest()}
