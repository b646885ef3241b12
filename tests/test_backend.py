"""elman._backend and elman._backends: backend=... resolves to one object per backend, a missing
compiled module is a clear error at use (never a silent switch to the NumPy reference), and the
package's modules import one another in one direction only."""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import elman
from elman import _backend, functional as F

PACKAGE = pathlib.Path(elman.__file__).resolve().parent


def test_resolve_returns_one_object_per_backend():
    for name in elman.backends():
        be = _backend.resolve(name)
        assert be.name == name and _backend.resolve(name) is be
        assert _backend.resolve(be) is be  # a layer's resolved object passes through
    assert _backend.resolve(None).name == _backend.resolve("auto").name == "cpu"


@pytest.mark.parametrize("bad, exc", [("gpu", ValueError), (3, TypeError)])
def test_unknown_backend_is_refused(bad, exc):
    with pytest.raises(exc, match="backend"):
        _backend.resolve(bad)


def test_layers_hold_the_resolved_backend():
    rnn = elman.RNN(3, 4, backend="numpy")
    assert rnn.backend == "numpy" and rnn._be is _backend.resolve("numpy")
    cell = elman.RNNCell(3, 4, backend="numpy")
    assert cell.backend == "numpy" and cell._step is None  # the reference has no fast path


def test_missing_compiled_module_is_an_error_not_the_reference(monkeypatch):
    """With elman._core gone (a broken install), "auto" raises and names the import error;
    the reference runs only when asked for by name."""
    monkeypatch.setattr(_backend, "_core", None)
    monkeypatch.setattr(_backend, "_core_error", ImportError("stand-in: no _core"))
    x = np.ones((2, 1, 3), np.float32)
    w_ih, w_hh = np.ones((4, 3), np.float32), np.eye(4, dtype=np.float32)
    for call in (lambda: elman.RNN(3, 4), lambda: F.rnn_forward(x, w_ih, w_hh),
                 lambda: F.rnn_forward(x, w_ih, w_hh, backend="cpu")):
        with pytest.raises(RuntimeError, match="stand-in: no _core"):
            call()
    out, h_n = F.rnn_forward(x, w_ih, w_hh, backend="numpy")
    np.testing.assert_allclose(out, elman.reference.rnn_forward(x, w_ih, w_hh)[0], rtol=1e-6)
    assert "cpu" not in elman.backends()


def _imports(path):
    """The elman modules a source file imports (relative imports resolved)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("elman"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("elman"):
            found.add(node.module)
    return ".".join(parts), found


def test_no_import_cycle_among_the_package_modules():
    graph = dict(_imports(p) for p in PACKAGE.rglob("*.py"))
    modules = set(graph)
    # a name imported from a package's __init__ (``from . import x``) may be a module or an
    # attribute; keep the edges to real modules only, and drop the package roots themselves
    # (importing a submodule runs its package's __init__, which is not a dependency cycle)
    edges = {m: {d for d in deps if d in modules and d not in ("elman", "elman._backends")}
             for m, deps in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in edges[m]:
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_floors_import_downwards_only():
    """The ground floor (_checks, _device, reference) imports no other elman module; the
    backends import only the ground floor and the compiled modules; no layer imports the
    binding or _backend directly (they go through elman.functional)."""
    graph = dict(_imports(p) for p in PACKAGE.rglob("*.py"))
    for ground in ("elman._checks", "elman._device", "elman.reference"):
        assert not {d for d in graph[ground] if d.startswith("elman")}, ground
    allowed = {"elman._checks", "elman._device", "elman.reference", "elman._core", "elman._cuda",
               "elman._backends"}
    for m, deps in graph.items():
        if m.startswith("elman._backends."):
            assert {d for d in deps if not d.startswith("elman._backends.")} <= allowed, m
    for layer in ("elman.rnn", "elman.linear", "elman._module", "elman.torch", "elman.losses"):
        assert not graph[layer] & {"elman._backend", "elman._core", "elman._cuda"}, layer


def test_import_elman_loads_no_backend_module_it_does_not_use():
    code = ("import sys, elman; print(sorted(m for m in sys.modules if m.startswith("
            "'elman._backends.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"  # backend objects are built on first use
