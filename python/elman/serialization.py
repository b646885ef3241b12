"""save / load of a module: a NumPy .npz archive of the parameters (never pickle) plus the
module's configuration as JSON; loading is all or nothing, and every error names the file and
the entry."""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from .layers import Embedding, Linear, Module, RNN, RNNCell

__all__ = ["save", "load"]

FORMAT = "elman"
FORMAT_VERSION = 1
CONFIG_KEY = "__elman__"  # not a valid parameter name, so it cannot clash with one
CLASSES = {cls.__name__: cls for cls in (RNN, RNNCell, Linear, Embedding)}


def _path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save(module, path):
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
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path):
    """Every entry of the archive as dict name -> ndarray. Each member is read whole first, so
    that its CRC-32 is always verified, and must parse as exactly one .npy array (no pickle, no
    trailing bytes): a damaged file fails here, before anything is changed."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # what a damaged archive raises varies; all of it means "unreadable"
        raise ValueError(f"{path}: not a readable elman file ({type(exc).__name__}: {exc})") from None
    entries = {}
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                if not info.filename.endswith(".npy") or key in entries:
                    raise ValueError("not one .npy array per key")
                raw = zf.read(info)
                buf = io.BytesIO(raw)
                entries[key] = np.lib.format.read_array(buf, allow_pickle=False)
                if buf.tell() != len(raw):
                    raise ValueError(f"{len(raw) - buf.tell()} trailing bytes")
            except MemoryError:
                raise
            except Exception as exc:
                raise ValueError(f"{path}: key {key!r} is unreadable ({type(exc).__name__}: "
                                 f"{exc})") from None
    return entries


def _meta(path, entries):
    if CONFIG_KEY not in entries:
        raise ValueError(f"{path}: missing key {CONFIG_KEY!r} (the module's configuration); not "
                         "written by elman.save")
    raw = entries.pop(CONFIG_KEY)
    try:
        if raw.dtype.kind != "U" or raw.shape != ():
            raise ValueError(f"expected a JSON string, got an array of dtype {raw.dtype} and "
                             f"shape {raw.shape}")
        meta = json.loads(str(raw))
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
        raise ValueError(f"{path}: key {CONFIG_KEY!r} is invalid: {exc}") from None
    return meta


def load(path, into=None, backend=None):
    """Reads a file written by :func:`save`.

    With ``into=None``, builds a new module of the stored class and configuration
    (``backend`` as in its constructor). With ``into=module``, copies the stored parameters into
    that existing module, whose class and configuration must match the file's. Either way the
    file is read and checked in full before anything is changed: a missing, truncated or
    corrupt file, a missing or unexpected key, a wrong shape or dtype raises an error naming the
    file and the key (ValueError; TypeError for a dtype) and leaves ``into`` untouched. Returns
    the module. Parameters round-trip bit for bit.
    """
    path = _path(path)
    entries = _read(path)
    meta = _meta(path, entries)
    cls, config = CLASSES[meta["class"]], meta["config"]
    if into is None:
        try:
            kwargs = dict(config)
            if "dtype" in kwargs:
                kwargs["dtype"] = np.dtype(kwargs["dtype"])
            if cls is RNN or cls is RNNCell:
                kwargs["backend"] = backend
            module = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: key {CONFIG_KEY!r} holds an invalid {cls.__name__} "
                             f"configuration ({exc})") from None
    else:
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
        module = into
    params = dict(module.named_parameters())
    missing = [k for k in params if k not in entries]
    unexpected = sorted(k for k in entries if k not in params)
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    for name, p in params.items():
        a = entries[name]
        if a.dtype != p.dtype:
            raise TypeError(f"{path}: key {name!r} has dtype {a.dtype}, expected {p.dtype}")
        if a.shape != p.shape:
            raise ValueError(f"{path}: key {name!r} has shape {a.shape}, expected {p.shape}")
        if not p.data.flags.writeable:
            raise ValueError(f"{path}: cannot load into {name!r}: the parameter is read-only")
    for name, p in params.items():  # the commit: copies that cannot fail
        np.copyto(p.data, entries[name])
    return module
