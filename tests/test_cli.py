"""The command line: `elman info` and `elman bench` run, report, and check results first."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import elman
from elman import cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the version test reads pyproject.toml


def test_info_reports_version_backends_isa_and_threads(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("elman", "installed:", "backends:", "instruction set:", "threads:", "BLAS:"):
        assert word in out


def test_python_dash_m_elman_works():
    res = subprocess.run([sys.executable, "-m", "elman", "info"], capture_output=True, text=True)
    assert res.returncode == 0 and "backends:" in res.stdout


def test_bench_small_run_checks_then_times_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = cli.main(["bench", "--shapes", "5,2,3,4", "7,1,2,3", "--backends", "cpu", "numpy",
                   "--dtype", "float32", "float64", "--rounds", "1", "--block", "0.001",
                   "--gap", "0", "--json", str(path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "all backends agree with the float64 reference" in out
    assert "vs numpy" in out and "forward + backward" in out and "peak:" in out
    data = json.loads(path.read_text())
    assert len(data["rows"]) == 4
    row = data["rows"][0]
    assert row["shape"] == [5, 2, 3, 4]
    assert set(row["forward"]) == {"cpu", "numpy"}
    assert all(ok for ok, _ in row["check"].values())
    assert data["peak_gflops"] > 0


@pytest.mark.parametrize("argv,message", [
    (["bench", "--shapes", "5,2,3"], "four positive integers"),
    (["bench", "--shapes", "5,2,x,4"], "four integers"),
])
def test_bench_rejects_bad_shapes(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert message in capsys.readouterr().err


def test_bench_rejects_unknown_backend(capsys):
    assert cli.main(["bench", "--backends", "fortran", "--shapes", "2,1,1,1"]) == 2
    assert "not available" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad arguments
# A tiny, quick benchmark: each case below changes one argument of it, so that a regression
# that lets the bad argument through runs this (and shows output) instead of the default set.
QUICK = ["bench", "--shapes", "2,1,1,1", "--backends", "cpu", "--dtype", "float32", "--rounds",
         "1", "--block", "0.001", "--gap", "0", "--no-cell", "--no-progress"]
CAP = elman.max_num_threads()


def _elman(*argv):
    return subprocess.run([sys.executable, "-m", "elman", *argv], capture_output=True, text=True,
                          timeout=300)


BAD_ARGS = [
    (["--threads", "0"], f"--threads must be from 1 to {CAP} (4 x the CPUs, at least 4), got 0"),
    (["--threads", "-1"], "--threads must be from 1 to"),
    (["--threads", str(CAP + 1)], f"got {CAP + 1}"),
    (["--threads", str(2**31)], "got 2147483648"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--rounds", "-3"], "--rounds must be at least 1, got -3"),
    (["--block", "nan"], "--block must be a finite number of seconds > 0, got nan"),
    (["--block", "inf"], "--block must be a finite number of seconds > 0, got inf"),
    (["--block", "0"], "--block must be a finite number of seconds > 0, got 0.0"),
    (["--block", "-1"], "got -1.0"),
    (["--gap", "inf"], "--gap must be a finite number of seconds >= 0, got inf"),
    (["--gap", "nan"], "--gap must be a finite number of seconds >= 0, got nan"),
    (["--gap", "-0.5"], "got -0.5"),
    (["--shapes", "100000000,100000,1000,1000"], "--shapes 100000000,100000,1000,1000 needs about"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("extra,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_argument_is_one_line_and_exit_status_2_before_any_work(extra, message):
    res = _elman(*QUICK, *extra)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""  # the benchmark prints its header before it measures anything
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(("elman bench: error: ",
                                                                    "elman: error: ")), res.stderr
    assert message in res.stderr


def _json_targets(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir").mkdir()
    return {"missing folder": (tmp_path / "nope" / "out.json", "cannot be written (No such file"),
            "a folder": (tmp_path / "a_dir", "is a directory"),
            "under a file": (tmp_path / "a_file" / "out.json", "cannot be written (Not a directory")}


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", ["missing folder", "a folder", "under a file"])
def test_unwritable_json_path_is_refused_before_any_work(tmp_path, kind):
    target, message = _json_targets(tmp_path)[kind]
    res = _elman(*QUICK, "--json", str(target))
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and f"--json {str(target)!r} {message}" in res.stderr


@pytest.mark.bad_input
def test_plot_is_refused_before_any_work_without_matplotlib_or_with_an_unknown_format(tmp_path):
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    res = _elman(*QUICK, "--plot", str(tmp_path / "speed.xyz"))
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.count("\n") == 1
    assert ("matplotlib cannot write .xyz files" if has_matplotlib
            else "--plot needs matplotlib (pip install matplotlib)") in res.stderr
    res = _elman(*QUICK, "--plot", str(tmp_path / "nope" / "speed.png"))
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1
    assert "cannot be written" in res.stderr or not has_matplotlib


def test_a_valid_json_path_is_checked_without_leaving_anything_behind(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert cli.main([*QUICK, "--threads", "1", "--json", str(path)]) == 0
    assert os.listdir(tmp_path) == ["bench.json"]
    assert json.loads(path.read_text())["rows"][0]["shape"] == [2, 1, 1, 1]


def _pyproject_version():
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_version_prints_the_package_version_which_is_pyprojects():
    res = _elman("--version")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == f"elman {elman.__version__}\n"
    assert elman.__version__ == _pyproject_version()
