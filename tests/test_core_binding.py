"""Bad and odd arguments into the compiled module itself, each case in a child interpreter
(crash isolation): a segfault would fail that one case with its signal and traceback, and the
run goes on. The cases are in _binding_cases.py; the harness is isolation.py."""

import pytest

pytest.importorskip("elman._core")

import _binding_cases  # noqa: E402
from isolation import run_cases  # noqa: E402

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def results():
    return run_cases("_binding_cases", list(_binding_cases.CASES))


@pytest.mark.bad_input
@pytest.mark.parametrize("name", list(_binding_cases.CASES))
def test_binding_case(results, name):
    r = results[name]
    if r.status != "ok":
        pytest.fail(r.detail, pytrace=False)


def test_a_crash_fails_only_its_own_case():
    """The harness itself: a segfault and an abort are reported as crashes of exactly those
    cases, with the signal; the cases after them still run."""
    names = ["passes", "segfault", "after_segfault", "fails", "abort", "last"]
    r = run_cases("_crash_cases", names)
    assert [r[n].status for n in names] == ["ok", "crashed", "ok", "failed", "crashed", "ok"]
    # the signal, or under AddressSanitizer (tools/sanitize.sh) its report and exit status
    assert "Segmentation fault" in r["segfault"].detail
    assert "SIGSEGV" in r["segfault"].detail or "AddressSanitizer" in r["segfault"].detail
    assert "SIGABRT" in r["abort"].detail and "Aborted" in r["abort"].detail
    assert "an ordinary failure" in r["fails"].detail
