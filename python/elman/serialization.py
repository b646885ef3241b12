"""save / load of a module: a NumPy .npz archive of the parameters (never pickle) plus the
module's configuration as JSON; loading is all or nothing, and every error names the file and
the entry."""

import functools
import inspect
import json
import math
import os
import tempfile
import zipfile
from typing import Optional, Union

import numpy as np

from ._module import Module, _check_bool, _check_dtype, _check_size
from .linear import Embedding, Linear
from .rnn import RNN, RNNCell

__all__ = ["save", "load"]

FORMAT = "elman"
FORMAT_VERSION = 1
CONFIG_KEY = "__elman__"  # not a valid parameter name, so it cannot clash with one
CLASSES = {cls.__name__: cls for cls in (RNN, RNNCell, Linear, Embedding)}


def _path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save(module: Module, path: Union[str, os.PathLike]) -> None:
    """Writes ``module`` (an elman RNN, RNNCell, Linear or Embedding) to ``path``: an
    uncompressed .npz archive with one array per parameter (its exact dtype and bytes) and the
    constructor's arguments as JSON under ``"__elman__"``. The file is written under a
    temporary name and renamed into place, so an existing file is replaced whole or not at all.
    ``path`` is used as given (no ".npz" is appended)."""
    path = _path(path)
    if type(module).__name__ not in CLASSES or not isinstance(module, CLASSES[type(module).__name__]):
        raise TypeError(f"module must be one of elman's {', '.join(CLASSES)}, got "
                        f"{type(module).__name__}")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "class": type(module).__name__,
            "config": module._config()}
    arrays = {name: p.data for name, p in module.named_parameters()}
    arrays[CONFIG_KEY] = np.array(json.dumps(meta, sort_keys=True))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".elman-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub: keyword arrays
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# What a file can make load() allocate is bounded by the file itself: every size in the
# configuration must match the .npy header of a stored array, every header the size the archive
# declares for its member, and the declared sizes together at most MAX_RATIO times the file
# (elman.save stores uncompressed: a ratio of 1). All of it is checked before any array data is
# decompressed and before any module is built.
MAX_CONFIG_CHARS = 1 << 16  # a configuration's JSON has about 300 characters
MAX_JSON_DEPTH = 8          # and nests 2 levels deep
MAX_RATIO = 64              # declared uncompressed bytes / file bytes, over the whole archive
RATIO_SLACK = 1 << 20       # declared bytes allowed beyond that, so that tiny files have room
COUNT_SLACK = 64            # more arrays than the file holds are listed by name up to this many


def _unreadable(path, key, exc):
    return ValueError(f"{path}: key {key!r} is unreadable ({type(exc).__name__}: {exc})")


def _open_archive(path):
    """The zip directory, checked before any member is decompressed: one .npy member per key,
    stored or deflated (the methods zipfile decompresses in bounded steps), compressed sizes
    that fit in the file (no member overlaps another) and declared sizes at most MAX_RATIO
    times the file. Returns (ZipFile, dict key -> ZipInfo)."""
    try:
        size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # what a damaged archive raises varies; all of it means "unreadable"
        raise ValueError(f"{path}: not a readable elman file ({type(exc).__name__}: {exc})") from None
    try:
        members = {}
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if not info.filename.endswith(".npy") or key in members:
                raise _unreadable(path, key, ValueError("not one .npy array per key"))
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"{path}: key {key!r} uses zip compression method "
                                 f"{info.compress_type}; elman reads stored or deflated members")
            members[key] = info
        packed = sum(info.compress_size for info in members.values())
        if packed > size:
            raise ValueError(f"{path}: the members' compressed sizes add up to {packed} bytes, "
                             f"more than the file's {size}: members overlap or sizes are false")
        declared = sum(info.file_size for info in members.values())
        if declared > MAX_RATIO * size + RATIO_SLACK:
            raise ValueError(f"{path}: the members declare {declared} bytes uncompressed, more "
                             f"than {MAX_RATIO} times the file's {size} bytes (a zip bomb?)")
    except BaseException:
        zf.close()
        raise
    return zf, members


class _Counted:
    """A stream that counts the bytes read from it: where a .npy header ends."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.n += len(data)
        return data


def _header(path, zf, key, info):
    """(shape, dtype) from a member's .npy header, reading (and so decompressing) only the
    header, then checked against the size the archive declares for the member."""
    try:
        with zf.open(info) as raw:
            f = _Counted(raw)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, key, exc) from None
    if dtype.hasobject:
        raise _unreadable(path, key, ValueError(
            f"dtype {dtype} holds Python objects, which load only with pickle, never used here "
            "(allow_pickle=False)"))
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if f.n + nbytes != info.file_size:
        raise ValueError(f"{path}: key {key!r} declares {info.file_size} bytes, its .npy header "
                         f"(shape {shape}, dtype {dtype}) implies {f.n + nbytes}")
    return shape, dtype


def _data(path, zf, key, info):
    """The member's array, once its header has been checked: read in chunks into an array of
    the checked size, then to the member's end, where zipfile checks the CRC-32."""
    try:
        with zf.open(info) as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
            rest = f.read()
            if rest:
                raise ValueError(f"{len(rest)} trailing bytes")
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(path, key, exc) from None
    return a


def _json_depth(text):
    """How deeply the JSON text nests arrays and objects, counted without parsing it (the
    parser recurses, and a deep enough text would exhaust the interpreter's stack)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _meta(path, zf, members):
    """The configuration stored under CONFIG_KEY: a JSON string of bounded length and depth
    holding an elman format, version, class and config dict."""
    if CONFIG_KEY not in members:
        raise ValueError(f"{path}: missing key {CONFIG_KEY!r} (the module's configuration); not "
                         "written by elman.save")
    info = members.pop(CONFIG_KEY)
    try:
        shape, dtype = _header(path, zf, CONFIG_KEY, info)
        if dtype.kind != "U" or shape != ():
            raise ValueError(f"expected a JSON string, got an array of dtype {dtype} and "
                             f"shape {shape}")
        if dtype.itemsize > 4 * MAX_CONFIG_CHARS:
            raise ValueError(f"a JSON string of {dtype.itemsize // 4} characters, at most "
                             f"{MAX_CONFIG_CHARS} are allowed")
        text = str(_data(path, zf, CONFIG_KEY, info))
        depth = _json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"the JSON nests {depth} levels deep, at most {MAX_JSON_DEPTH} are "
                             "allowed")
        meta = json.loads(text)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not an elman configuration")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('version')!r}, this elman reads "
                             f"version {FORMAT_VERSION}")
        if meta.get("class") not in CLASSES:
            raise ValueError(f"unknown class {meta.get('class')!r}; expected one of "
                             f"{', '.join(CLASSES)}")
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no configuration dict")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        msg = str(exc)
        if msg.startswith(f"{path}: "):  # already names the file and the key
            raise
        raise ValueError(f"{path}: key {CONFIG_KEY!r} is invalid: {msg}") from None
    return meta


def _config_value(cls, config, key):
    """config[key], or the constructor's default for a key the file leaves out."""
    if key in config:
        return config[key]
    default = inspect.signature(cls).parameters[key].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"missing required argument {key!r}")
    return default


def _shapes(cls, config, n_arrays):
    """dict name -> shape of the parameters that ``cls(**config)`` would have, from the sizes
    alone (nothing is built), and their dtype. A configuration that implies many more arrays
    than the file holds is refused before they are listed."""
    accepted = set(inspect.signature(cls).parameters) - {"seed", "backend"}
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    value = functools.partial(_config_value, cls, config)
    dtype = value("dtype")
    if "dtype" in config and dtype not in ("float32", "float64"):  # never parse other text
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    dtype = _check_dtype(dtype)
    if cls is Embedding:
        return {"weight": (_check_size(value("num_embeddings"), "num_embeddings"),
                           _check_size(value("embedding_dim"), "embedding_dim"))}, dtype
    if cls is Linear:
        n_in = _check_size(value("in_features"), "in_features")
        n_out = _check_size(value("out_features"), "out_features")
        shapes = {"weight": (n_out, n_in)}
        if _check_bool(value("bias"), "bias"):
            shapes["bias"] = (n_out,)
        return shapes, dtype
    I = _check_size(value("input_size"), "input_size")
    H = _check_size(value("hidden_size"), "hidden_size")
    bias = _check_bool(value("bias"), "bias")
    if cls is RNNCell:
        cells = [("", I)]
    else:
        L = _check_size(value("num_layers"), "num_layers")
        D = 2 if _check_bool(value("bidirectional"), "bidirectional") else 1
        count = L * D * (4 if bias else 2)
        if count > n_arrays + COUNT_SLACK:
            raise ValueError(f"num_layers={L} implies {count} parameter arrays, the file "
                             f"holds {n_arrays}")
        cells = [(f"_l{k}{sfx}", I if k == 0 else D * H)
                 for k in range(L) for sfx in ("", "_reverse")[:D]]
    shapes = {}
    for sfx, I_k in cells:
        shapes[f"weight_ih{sfx}"] = (H, I_k)
        shapes[f"weight_hh{sfx}"] = (H, H)
        if bias:
            shapes[f"bias_ih{sfx}"] = shapes[f"bias_hh{sfx}"] = (H,)
    return shapes, dtype


def _expected(path, cls, config, into, n_arrays):
    """dict name -> (shape, dtype) that the file's arrays must have: those of ``into``, whose
    class and configuration must be the file's, or those the configuration implies."""
    if into is None:
        try:
            shapes, dtype = _shapes(cls, config, n_arrays)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: key {CONFIG_KEY!r} holds an invalid {cls.__name__} "
                             f"configuration ({exc})") from None
        return {name: (shape, dtype) for name, shape in shapes.items()}
    if not isinstance(into, Module):
        raise TypeError(f"into must be an elman module, got {type(into).__name__}")
    if type(into) is not cls:
        raise ValueError(f"{path} holds a {cls.__name__}, cannot load it into a "
                         f"{type(into).__name__}")
    mine = into._config()
    diff = [f"{k}: file {config.get(k)!r}, module {mine[k]!r}"
            for k in mine if config.get(k) != mine[k]]
    diff += [f"{k}: file {config[k]!r}, module has none" for k in config if k not in mine]
    if diff:
        raise ValueError(f"{path}: the stored {cls.__name__} differs from the module ("
                         + "; ".join(diff) + ")")
    return {name: (p.shape, p.dtype) for name, p in into.named_parameters()}


def _read_arrays(path, zf, members, expected):
    """Every parameter array, each header checked against ``expected`` before any data is read."""
    missing = [k for k in expected if k not in members]
    unexpected = sorted(k for k in members if k not in expected)
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = _header(path, zf, name, members[name])
        if got_dtype != dtype:
            raise TypeError(f"{path}: key {name!r} has dtype {got_dtype}, expected {dtype}")
        if got_shape != shape:
            raise ValueError(f"{path}: key {name!r} has shape {got_shape}, expected {shape}")
    return {name: _data(path, zf, name, members[name]) for name in expected}


def _build(path, cls, config, backend):
    try:
        kwargs = dict(config)
        if "dtype" in kwargs:
            kwargs["dtype"] = np.dtype(kwargs["dtype"])
        if cls is RNN or cls is RNNCell:
            kwargs["backend"] = backend
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: key {CONFIG_KEY!r} holds an invalid {cls.__name__} "
                         f"configuration ({exc})") from None


def load(path: Union[str, os.PathLike], into: Optional[Module] = None,
         backend: Optional[str] = None) -> Module:
    """Reads a file written by :func:`save`.

    With ``into=None``, builds a new module of the stored class and configuration
    (``backend`` as in its constructor). With ``into=module``, copies the stored parameters into
    that existing module, whose class and configuration must match the file's. Either way the
    file is read and checked in full before anything is built or changed: a missing, truncated
    or corrupt file, a missing or unexpected key, a wrong shape or dtype raises an error naming
    the file and the key (ValueError; TypeError for a dtype) and leaves ``into`` untouched.
    A file is data, never a program: no pickle, and what it makes load allocate is bounded by
    the file (sizes in the configuration must match the stored arrays, every .npy header is
    checked before its data is decompressed, compressed members may expand at most
    ``MAX_RATIO`` times over the archive). Returns the module. Parameters round-trip bit for
    bit.
    """
    path = _path(path)
    zf, members = _open_archive(path)
    with zf:
        meta = _meta(path, zf, members)
        cls, config = CLASSES[meta["class"]], meta["config"]
        expected = _expected(path, cls, config, into, len(members))
        arrays = _read_arrays(path, zf, members, expected)
    module = into if into is not None else _build(path, cls, config, backend)
    params = dict(module.named_parameters())
    if params.keys() != arrays.keys():  # the constructor and _shapes disagree: a bug in elman
        raise RuntimeError(f"{path}: elman built {sorted(params)}, the file holds {sorted(arrays)}")
    for name, p in params.items():
        a = arrays[name]
        if a.dtype != p.dtype or a.shape != p.shape:
            raise RuntimeError(f"{path}: elman built {name!r} as {p.dtype} {p.shape}, the file "
                               f"holds {a.dtype} {a.shape}")
        if not p.data.flags.writeable:
            raise ValueError(f"{path}: cannot load into {name!r}: the parameter is read-only")
    for name, p in params.items():  # the commit: copies that cannot fail
        np.copyto(p.data, arrays[name])
        p.bump_version()  # a backward through a forward made before the load would be wrong
    return module
