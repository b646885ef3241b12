"""The command line: `elman info` and `elman bench` run, report, and check results first."""

import json
import subprocess
import sys

import pytest

from elman import cli


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
