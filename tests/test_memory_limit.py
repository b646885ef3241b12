"""Memory failure is an exception, never an exit: with the address space squeezed to a little
above what the process already has (RLIMIT_AS), forward, backward and an optimizer step either
succeed or raise MemoryError, and the process carries on. Before elman reserved the BLAS's work
buffers (csrc/cpu/threads.h, reserve_blas), the bundled OpenBLAS printed "Memory allocation
still failed" and exited the process from inside a product when it could not map one.

Each case runs in its own child interpreter (the limit cannot be lifted once it is lowered);
"cold" children squeeze the memory before elman's first kernel call, "warm" ones after one
forward and backward. The margins run from smaller than one BLAS buffer (32 MiB) to enough for
everything, so that the failure hits the BLAS's buffers, elman's scratch and NumPy's arrays.
"""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import elman
    margin, mode, threads = int(sys.argv[1]) << 20, sys.argv[2], int(sys.argv[3])
    elman.set_num_threads(threads)
    rnn = elman.RNN(48, 96, num_layers=2, bidirectional=True, seed=0)
    head = elman.Linear(192, 3, seed=1)
    opt = elman.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((40, 24, 48)).astype(np.float32)

    def train_step():
        out, _ = rnn(x)
        y = head(out)
        rnn.backward(head.backward(np.ones_like(y)))
        opt.step()
        opt.zero_grad()

    if mode == "warm":
        train_step()
    with open("/proc/self/status") as f:
        size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + margin, size + margin))
    outcomes = []
    for _ in range(3):
        try:
            train_step()
            outcomes.append("ok")
        except MemoryError as exc:
            outcomes.append("MemoryError: " + str(exc)[:200])
    print(json.dumps(outcomes))
""")


@pytest.mark.reliability
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["cold", "warm"])
@pytest.mark.parametrize("margin_mib", [2, 12, 40, 90, 200])
def test_a_squeezed_address_space_gives_memory_error_never_an_exit(margin_mib, mode, threads):
    res = subprocess.run([sys.executable, "-c", CHILD, str(margin_mib), mode, str(threads)],
                         capture_output=True, text=True, timeout=300)
    assert "Memory allocation" not in res.stdout + res.stderr, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("[")]
    assert res.returncode == 0 and lines, (
        f"the child died (exit status {res.returncode}):\n{res.stdout[-2000:]}\n"
        f"{res.stderr[-4000:]}")
    outcomes = json.loads(lines[-1])
    assert len(outcomes) == 3
    assert all(o == "ok" or o.startswith("MemoryError") for o in outcomes), outcomes


def test_the_blas_gets_a_buffer_per_thread_before_the_threads_meet_in_it():
    """After a call on two threads the BLAS has been made to take two buffers (or more)."""
    code = textwrap.dedent("""
        import numpy as np, elman
        from elman import _core
        elman.set_num_threads(2)
        assert _core._testing.blas_buffers() == 0
        a = np.ones((512, 512), np.float32)
        elman.functional.matmul(a, a)
        print(_core._testing.blas_buffers())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    # The warm-up waits at most 50 ms for the second thread; on a machine so loaded that the
    # worker did not run in that time, only one buffer is recorded (and the gate then lets one
    # thread at a time into the BLAS), so both counts are correct outcomes.
    assert int(res.stdout.split()[-1]) in (1, 2)
