"""The project's GPU check (tools/gpu_check.sh with tools/gpu_check.py, for a machine with an
sm_90 GPU) stays wired to elman's internals: its CPU dry run (torch on the CPU, elman's cpu
backend standing in for the GPU, the same cases and comparisons) completes and finds every
parity case OK. Skipped where tools/ is not beside the tests (the installed-wheel run) or torch
is missing; nothing here needs a GPU."""

import os
import re
import subprocess
import sys

import pytest

TARGET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                      "gpu_check.py")


@pytest.mark.skipif(not os.path.exists(TARGET), reason="tools/ is not part of this install")
def test_gpu_check_dry_run_passes(tmp_path):
    pytest.importorskip("torch")
    res = subprocess.run([sys.executable, TARGET, "--cpu-dry-run", "--quick"], cwd=tmp_path,
                         env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = re.search(r"parity: (\d+) ok, (\d+) bad", res.stdout)
    assert found and int(found.group(1)) > 0 and found.group(2) == "0", res.stdout[-3000:]
    assert (tmp_path / "check.json").exists()
