"""Compile gates of the CUDA module, checked without a GPU: SASS for every listed architecture
plus PTX, no float atomics anywhere in the SASS, no spills (ptxas -v) and no local memory in the
hot kernels, the module imports and says why CUDA is unusable, and the build switch's errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_helpers import find_tool, require_module

cuda = require_module("elman._cuda", "build with ELMAN_CUDA=ON")

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]
HOT = ("gemm_kernel", "persistent_kernel")  # the products and the recurrence
MODULE = cuda.__file__


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd[0]} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _sass(path):
    cuobjdump, nvdisasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ["PATH"])
    return _run([cuobjdump, "-sass", str(path)], env=env)


# An atomic or reduction instruction (ATOM, ATOMS, ATOMG, RED, REDG, ...) with a float type.
_INSTR = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.\w+)*)")
_FLOAT_TYPES = {"F16", "F16x2", "BF16", "BF16x2", "F32", "F64", "FTZ"}


def float_atomics(sass):
    bad = []
    for line in sass.splitlines():
        m = _INSTR.search(line)
        if m and re.fullmatch(r"(ATOM|RED)[A-Z]*", m.group(1)):
            if _FLOAT_TYPES & set(m.group(2).split(".")):
                bad.append(line.strip())
    return bad


@pytest.fixture(scope="module")
def sass():
    return _sass(MODULE)


def test_module_has_sass_for_every_architecture_and_ptx():
    cuobjdump = find_tool("cuobjdump")
    elf = _run([cuobjdump, "-lelf", MODULE])
    assert sorted(set(re.findall(r"\.(sm_\d+)\.cubin", elf))) == ARCHS
    ptx = _run([cuobjdump, "-lptx", MODULE])
    assert re.findall(r"\.(sm_\d+)\.ptx", ptx) == ["sm_90"]  # compute_90 PTX for newer GPUs


def test_sass_has_no_float_atomics(sass):
    assert "Function :" in sass and "FFMA" in sass  # really the kernels' code
    assert float_atomics(sass) == []


def test_the_float_atomic_gate_catches_float_atomics(tmp_path):
    """The gate above can fail: a probe kernel with float and double atomicAdd trips it."""
    nvcc = find_tool("nvcc")
    src = tmp_path / "probe.cu"
    src.write_text("__global__ void probe(float* f, double* d, int* i) {\n"
                   "  atomicAdd(f, 1.0f); atomicAdd(d, 1.0); atomicAdd(i, 1);\n}\n")
    out = tmp_path / "probe.cubin"
    _run([nvcc, "-cubin", "-arch=sm_75", str(src), "-o", str(out)])
    bad = float_atomics(_sass(out))
    assert len(bad) >= 2 and all("ADD" in b for b in bad)


def test_hot_kernels_use_no_stack_or_local_memory():
    cuobjdump = find_tool("cuobjdump")
    usage = _run([cuobjdump, "-res-usage", MODULE])
    found = re.findall(r"Function (\S*(?:" + "|".join(HOT) + r")\S*):\s*\n\s*REG:(\d+) STACK:(\d+) "
                       r"SHARED:\d+ LOCAL:(\d+)", usage)
    assert len(found) == len(HOT) * 2 * len(ARCHS)  # float and double, every architecture
    for name, reg, stack, local in found:
        assert (stack, local) == ("0", "0"), f"{name} uses {stack} B stack, {local} B local memory"


def test_ptxas_reports_no_spills(tmp_path):
    """ptxas -v over every architecture: no kernel spills registers."""
    src = ROOT / "csrc" / "cuda" / "rnn_cuda.cu"
    if not src.exists():
        pytest.skip("the CUDA sources are not here (an installed copy of the tests)")
    nvcc = find_tool("nvcc")
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    log = _run([nvcc, "-std=c++17", "-O3", "--fmad=false", "-Xptxas", "-v", *gencode, "-c",
                str(src), "-o", str(tmp_path / "k.o")])
    entries = re.findall(r"Compiling entry function '(\S+)' for '(sm_\d+)'\s*\n.*?"
                         r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads",
                         log, re.S)
    assert len(entries) >= 18 * len(ARCHS)
    for name, arch, stack, stores, loads in entries:
        assert (stores, loads) == ("0", "0"), f"{name} spills on {arch}"
        if any(h in name for h in HOT):
            assert stack == "0", f"{name} has a {stack}-byte stack frame on {arch}"


def test_module_imports_and_says_whether_cuda_is_usable():
    import elman
    from elman import _backend
    n, why = cuda.status()
    info = subprocess.run([sys.executable, "-m", "elman", "info"], capture_output=True, text=True)
    assert info.returncode == 0
    if n == 0:  # this machine: no driver or no device
        assert why and "cuda" not in elman.backends()
        assert _backend.cuda_status() == (False, _backend.cuda_status()[1])
        assert "cuda: not available: no usable CUDA device" in info.stdout
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            z = np.zeros((1, 1), np.float32)
            elman.functional.rnn_forward(np.zeros((1, 1, 1), np.float32), z, z, backend="cuda")
    else:
        assert "cuda" in elman.backends() and "cuda: available" in info.stdout


@pytest.mark.parametrize("dtype,code", [(np.float32, (2, 32, 1)), (np.float64, (2, 64, 1)),
                                        (np.int64, (0, 64, 1))])
def test_dlpack_reader(dtype, code):
    """The DLPack reader on host capsules (NumPy's), including a strided view."""
    base = np.arange(60, dtype=dtype).reshape(3, 4, 5)
    for a in (base, base[:, 1:3, ::2]):
        info = cuda.dlpack_info(a.__dlpack__())
        assert info["ptr"] == a.__array_interface__["data"][0]
        assert info["shape"] == a.shape
        assert info["strides"] == tuple(s // a.itemsize for s in a.strides)
        assert info["dtype"] == code and info["device"] == (1, 0)


def _configure(tmp_path, value, env_extra):
    """CMake's configure step alone. The switch is decided before pybind11 and OpenBLAS are
    looked for, so its messages come out even where those build requirements are absent."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
               **env_extra)
    cmd = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DELMAN_CUDA={value}",
           f"-DPython_EXECUTABLE={sys.executable}"]
    try:
        import pybind11
        cmd.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
    except ImportError:
        pass
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("value", ["ON", "AUTO"])
def test_build_switch_without_a_cuda_compiler(tmp_path, value):
    """ELMAN_CUDA=ON without nvcc stops the build with a clear message; AUTO goes on without."""
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("no source tree here")
    r = _configure(tmp_path, value, {"CUDACXX": str(tmp_path / "no-nvcc-here")})
    if value == "ON":
        assert r.returncode != 0
        assert "ELMAN_CUDA=ON but CMake found no CUDA compiler" in r.stderr
    else:
        assert "no CUDA compiler found; elman._cuda is not built" in r.stdout
        assert "ELMAN_CUDA=ON but" not in r.stderr
