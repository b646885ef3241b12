"""Cases for the self-test of the crash isolation (tests/isolation.py): one passes, one fails,
two kill the interpreter the way a native bug would."""

import ctypes
import os


def _passes():
    pass


def _fails():
    assert 1 == 2, "an ordinary failure"


def _segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _abort():
    os.abort()


CASES = {"passes": _passes, "segfault": _segfault, "after_segfault": _passes, "fails": _fails,
         "abort": _abort, "last": _passes}
