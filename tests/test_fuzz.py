"""The binding's fuzz target (tools/fuzz_binding.py) on a fixed set of random inputs, in a child
process so that a crash fails this test with its signal instead of ending the run. CI also runs
the target under atheris for a bounded time (.ci/run)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("elman._core")
TARGET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                      "fuzz_binding.py")


@pytest.mark.skipif(not os.path.exists(TARGET), reason="tools/ is not part of this install")
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_target_on_random_inputs(seed):
    res = subprocess.run([sys.executable, "-X", "faulthandler", TARGET, "--random", "1500", "--seed",
                          str(seed)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (f"the fuzz target failed (exit {res.returncode}):\n"
                                 f"{res.stdout[-2000:]}\n{res.stderr[-6000:]}")
    assert "1500 random inputs, no finding" in res.stdout
