"""Checks that only make sense in CI's installed-wheel run (ELMAN_EXPECT_INSTALLED=1): the tests
there import the installed package, not a source tree."""

import os
import pathlib

import pytest

import elman

pytestmark = pytest.mark.skipif(not os.environ.get("ELMAN_EXPECT_INSTALLED"),
                                reason="set by CI's installed-wheel run only")


def test_elman_is_imported_from_site_packages():
    path = pathlib.Path(elman.__file__).resolve()
    assert "site-packages" in path.parts, path
    from elman import _core
    assert pathlib.Path(_core.__file__).resolve().parent == path.parent
    assert (path.parent / "libscipy_openblas.so").exists()


def test_the_wheel_holds_every_isa_level():
    from elman import _core
    for level in ("baseline", "avx2", "avx512"):
        previous = _core.get_isa()
        try:
            if _core.set_isa(level):
                assert _core.get_isa() == level
        finally:
            _core.set_isa(previous)


# The x86-64 levels as /proc/cpuinfo names their features (pni is SSE3, abm brings LZCNT);
# the kernel compiles each level's flags, so the CPUID check must find exactly these.
_LEVEL_FLAGS = {
    "avx2": {"pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm", "avx", "avx2", "fma",
             "bmi1", "bmi2", "f16c", "abm", "movbe", "xsave"},
    "avx512": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


def test_the_wheel_detects_the_isa_level_this_cpu_has():
    """The wheel's compiler (zig's clang) ships no working __builtin_cpu_supports runtime, so
    the level comes from CPUID: it must agree with what the kernel reports for this CPU."""
    from elman import _core
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = "baseline"
    if _LEVEL_FLAGS["avx2"] <= flags:
        expected = "avx512" if _LEVEL_FLAGS["avx512"] <= flags else "avx2"
    assert _core.info()["isa_supported"] == expected, sorted(flags)
