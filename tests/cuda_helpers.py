"""Helpers of the CUDA test files: importing the optional compiled modules, and the CUDA tools."""

import importlib
import os
import shutil
import sysconfig
from pathlib import Path

import pytest

# CI's CUDA step sets this so that a module that failed to build fails the tests, never skips.
REQUIRED = os.environ.get("ELMAN_REQUIRE_CUDA_BUILD") == "1"


def require_module(name, how):
    """Import ``name`` or skip the calling test module (fail when REQUIRED)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if REQUIRED:
            pytest.fail(f"{name} must be built here (ELMAN_REQUIRE_CUDA_BUILD=1): {exc}",
                        pytrace=False)
        pytest.skip(f"{name} is not built ({how})", allow_module_level=True)


def find_tool(name):
    """A CUDA binary tool from PATH, the CUDA toolkit, or the nvidia-cuda-* wheels."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name]
    purelib = Path(sysconfig.get_paths()["purelib"])
    candidates += sorted(purelib.glob(f"nvidia/*/bin/{name}"))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    if REQUIRED:
        pytest.fail(f"{name} not found (pip install nvidia-cuda-{name}, or put it on PATH)",
                    pytrace=False)
    pytest.skip(f"{name} not found")
