"""Counts the bad-input and fault cases in the test suite: every collected test item marked
``bad_input`` (one parametrized case = one item; a case that loops over the backends counts
once, and so does a case run once per instruction-set level). Prints the total and the count per file.

    python tools/count_bad_inputs.py            # the numbers
    python tools/count_bad_inputs.py --check    # exit 1 unless docs/guarantees.md claims at most the total
"""

import contextlib
import os
import re
import sys
from collections import Counter

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLAIM = re.compile(r"\*\*(\d[\d,]*) bad-input and fault cases\*\*")


class _Collector:
    def __init__(self):
        self.items = []

    def pytest_collection_modifyitems(self, items):
        self.items = [i for i in items if i.get_closest_marker("bad_input")]


def count():
    collector = _Collector()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # pytest's listing
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                            os.path.join(ROOT, "tests")], plugins=[collector])
    if code not in (0, 5):
        raise SystemExit(f"collection failed (pytest exit {code})")
    # A case run once per instruction-set level (conftest's ``isa`` fixture) counts once, so
    # the count is the same on every CPU (it has 2 or 3 levels).
    cases = {}
    for i in collector.items:
        params = dict(getattr(getattr(i, "callspec", None), "params", {}))
        params.pop("isa", None)
        key = (i.nodeid.split("[")[0], tuple(sorted((k, repr(v)) for k, v in params.items())))
        cases[key] = os.path.basename(i.nodeid.split("::")[0])
    return Counter(cases.values())


def main(argv):
    per_file = count()
    total = sum(per_file.values())
    for name, n in sorted(per_file.items()):
        print(f"{n:6d}  {name}")
    print(f"{total:6d}  bad-input and fault cases in total")
    if "--check" in argv:
        with open(os.path.join(ROOT, "docs", "guarantees.md"), encoding="utf-8") as f:
            claims = [int(m.replace(",", "")) for m in CLAIM.findall(f.read())]
        if not claims:
            raise SystemExit("docs/guarantees.md states no '**N bad-input and fault cases**'")
        if max(claims) > total:
            raise SystemExit(f"docs/guarantees.md claims {max(claims)} cases, the tests have {total}")
        print(f"docs/guarantees.md claims {max(claims)}: true")


if __name__ == "__main__":
    main(sys.argv)
