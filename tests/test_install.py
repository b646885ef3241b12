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
