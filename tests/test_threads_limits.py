"""The thread count's limits: ``elman.set_num_threads`` and ELMAN_NUM_THREADS accept 1 to
``elman.max_num_threads()`` (4 x the CPUs, at least 4), anything else is refused (the variable:
with a RuntimeWarning, and the default is used); and the pools that changes of the count leave
behind are freed once no call can hold them, under concurrent use too, with results bitwise
those of the count each call saw."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import elman

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif("cpu" not in elman.backends(), reason="the compiled backend is missing"),
]
CAP = elman.max_num_threads()


def test_the_cap_is_four_times_the_cpus_and_at_least_four():
    assert CAP == max(4, 4 * os.cpu_count())


@pytest.mark.bad_input
@pytest.mark.parametrize("n,exc,match", [
    (CAP + 1, ValueError, rf"num_threads must be at most {CAP} \(4 x the {os.cpu_count()} CPUs, "
                          rf"at least 4\), got {CAP + 1}"),
    (2000, ValueError, "num_threads must be at most"),
    (2**31, ValueError, f"num_threads must be at most {CAP} .*got 2147483648"),
    (10**30, ValueError, "num_threads must be at most"),
    (np.int64(2**40), ValueError, "got 1099511627776"),
    (-2**63, ValueError, "num_threads must be at least 1"),
    (np.bool_(True), TypeError, "num_threads should be of type int, got: bool"),
    ("4", TypeError, "got: str"),
    (None, TypeError, "got: NoneType"),
], ids=["cap+1", "2000", "2**31", "10**30", "int64 2**40", "-2**63", "np.bool_", "str", "None"])
def test_set_num_threads_refuses_counts_outside_1_to_the_cap(n, exc, match):
    before = elman.get_num_threads()
    with pytest.raises(exc, match=match):
        elman.set_num_threads(n)
    assert elman.get_num_threads() == before


def test_set_num_threads_accepts_the_cap():
    before = elman.get_num_threads()
    try:
        elman.set_num_threads(np.int32(CAP))
        assert elman.get_num_threads() == CAP
        m = elman.RNN(5, 33, seed=0)
        x = np.random.default_rng(0).standard_normal((4, 9, 5)).astype(np.float32)
        ref, _ = elman.RNN(5, 33, seed=0, backend="numpy")(x)
        np.testing.assert_allclose(m(x)[0], ref, rtol=1e-5, atol=1e-6)
    finally:
        elman.set_num_threads(before)


ENV_CHILD = textwrap.dedent("""
    import json, os, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import elman
    print(json.dumps({"warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
                      "threads": elman.get_num_threads(),
                      "default": len(os.sched_getaffinity(0))}))
""")


def _with_environment(value):
    env = dict(os.environ, ELMAN_NUM_THREADS=value)
    res = subprocess.run([sys.executable, "-c", ENV_CHILD], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("value,threads", [("3", 3), (" 2\n", 2), ("+1", 1), (str(CAP), CAP),
                                           ("", None)],
                         ids=["3", "spaces", "+1", "cap", "empty: unset"])
def test_valid_environment_values_are_used_without_a_warning(value, threads):
    got = _with_environment(value)
    assert got["warnings"] == []
    assert got["threads"] == (threads or got["default"])


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["0", "-2", str(CAP + 1), "2000", "2x", "1.5", "four", " ",
                                   "9" * 30, "9" * 5000],
                         ids=["0", "-2", "cap+1", "2000", "2x", "1.5", "four", "space", "30 digits",
                              "5000 digits"])
def test_invalid_environment_value_warns_and_the_default_is_used(value):
    got = _with_environment(value)
    assert len(got["warnings"]) == 1, got
    assert got["warnings"][0].startswith(f"ELMAN_NUM_THREADS={value!r} is not a whole number from "
                                         f"1 to {CAP} (4 x the CPUs, at least 4); it is ignored")
    assert got["threads"] == got["default"]


POOL_CHILD = textwrap.dedent("""
    import json, os, threading
    import numpy as np
    import elman

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    m = elman.RNN(16, 96, seed=0)  # B = 40 rows: two threads split the batch
    x = np.random.default_rng(3).standard_normal((10, 40, 16)).astype(np.float32)
    refs = {}
    for n in (1, 2):
        elman.set_num_threads(n)
        with elman.no_grad():
            refs[n] = m(x)[0].tobytes()
    before = rss()
    for k in range(CHANGES):
        elman.set_num_threads(1 + k % 2)
    idle = rss() - before

    stop, seen = threading.Event(), []
    def work():
        while not stop.is_set():
            with elman.no_grad():
                out = m(x)[0].tobytes()
            seen.append(1 if out == refs[1] else 2 if out == refs[2] else 0)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    while len(seen) < 20:  # every worker under way
        pass
    before = rss()
    for k in range(BUSY_CHANGES):
        elman.set_num_threads(1 + k % 2)
    busy = rss() - before
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"idle": idle, "busy": busy, "seen": seen}))
""")


@pytest.mark.bad_input
def test_retired_pools_are_freed_under_many_changes_and_concurrent_use():
    """500,000 changes of the count, then 40,000 more while four Python threads run forward
    calls: memory stays flat (each retired pool used to be kept: ~560 bytes a change), and every
    concurrent result is bitwise the result of 1 or of 2 threads."""
    script = POOL_CHILD.replace("BUSY_CHANGES", "40000").replace("CHANGES", "500000")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    MB = 1 << 20
    assert got["idle"] < 10 * MB, f"{got['idle'] / MB:.1f} MB more after 500,000 changes"
    assert got["busy"] < 10 * MB, f"{got['busy'] / MB:.1f} MB more after 40,000 changes in use"
    assert len(got["seen"]) > 20 and 0 not in got["seen"], "a concurrent result differs"
