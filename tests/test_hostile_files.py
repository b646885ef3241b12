"""Files are data, never a program: a corpus of hostile files (zip bombs, lying .npy headers,
deeply nested or oversized JSON, configurations far larger than the arrays stored, unexpected
or duplicate members), each small on disk, each refused by ``elman.load`` with a ValueError that
names the file. Every load runs in a child interpreter under an address-space limit, so that a
regression that decompresses or allocates what the file claims fails its case instead of
exhausting the machine."""

import functools
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import elman

pytestmark = pytest.mark.reliability

# The child may hold at most this much address space beyond what the interpreter with numpy
# and elman already maps (about 250 MB here): a little over 1.5 GB in all, less than any bomb
# below claims, far more than loading the small models of these files needs.
BUDGET = 1 << 30
CHILD_TIMEOUT_S = 120
MB = 1 << 20
CHILD = textwrap.dedent("""
    import json, resource, sys
    import elman
    with open("/proc/self/status") as f:
        size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    limit = max(size + BUDGET, 3 << 29)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        elman.load(sys.argv[1])
    except BaseException as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)[:4000]}))
    else:
        print(json.dumps({"type": None}))
""").replace("BUDGET", str(BUDGET))


def _load_in_child(path):
    """(exception type name or None, message) of elman.load(path) in a memory-limited child."""
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                             text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"elman.load({path}) ran for more than {CHILD_TIMEOUT_S} s")
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0 and lines, (f"the child died (exit status {res.returncode}):\n"
                                           f"{res.stderr[-4000:]}")
    result = json.loads(lines[-1])
    return result["type"], result.get("message", "")


# ----------------------------------------------------------------------------- building files
def _npy_header(shape, dtype=np.float32):
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": tuple(shape)})
    return f.getvalue()


def _npy(array):
    f = io.BytesIO()
    np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return f.getvalue()


class Member:
    """One zip member as it will be written: its name, its bytes as stored, the compression
    method, and the CRC-32 and uncompressed size the archive declares."""

    def __init__(self, name, raw, method=0, crc=None, size=None):
        self.name, self.data, self.method = name, raw, method
        self.crc = zlib.crc32(raw) if crc is None else crc
        self.size = len(raw) if size is None else size


def _write_zip(path, members, padding=0):
    """A zip archive written byte by byte (zipfile cannot write what a hostile file declares),
    with ``padding`` unreferenced bytes after the members (a zip may hold bytes nothing points
    at), so that a file can be large enough for the compression ratio the reader allows."""
    out, central = io.BytesIO(), io.BytesIO()
    for m in members:
        name = m.name.encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, m.method, 0, 0x21, m.crc,
                              len(m.data), m.size, len(name), 0) + name + m.data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, m.method, 0,
                                  0x21, m.crc, len(m.data), m.size, len(name), 0, 0, 0, 0, 0,
                                  offset) + name)
    with open(path, "wb") as f:
        f.write(out.getvalue())
        for _ in range(padding // MB):
            f.write(bytes(MB))
        cd_offset = f.tell()
        f.write(central.getvalue())
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                            len(central.getvalue()), cd_offset, 0))
    return path


ZERO_CHUNK = 16 * MB


@functools.lru_cache(maxsize=None)
def _deflated_zero_chunk():
    # Ends with a full flush: byte-aligned, and it refers to nothing before it, so that copies
    # of it in a row form one valid deflate stream of that many chunks of zeros.
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(ZERO_CHUNK)) + c.flush(zlib.Z_FULL_FLUSH)


@functools.lru_cache(maxsize=None)
def _zeros_crc(prefix, chunks):
    crc, zeros = zlib.crc32(prefix), bytes(ZERO_CHUNK)
    for _ in range(chunks):
        crc = zlib.crc32(zeros, crc)
    return crc


def _bomb(name, prefix, chunks):
    """A deflated member holding ``prefix`` and then chunks x 16 MB of zeros, about 1000 times
    smaller than what it declares, with the true CRC-32 and size: a reader that decompresses
    it whole gets exactly those bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    raw = head + _deflated_zero_chunk() * chunks + b"\x03\x00"  # b"\x03\x00": the final block
    return Member(name, raw, method=8, crc=_zeros_crc(prefix, chunks),
                  size=len(prefix) + chunks * ZERO_CHUNK)


def _config(cls="RNN", **config):
    base = {"RNN": elman.RNN(3, 4, seed=0)._config(), "Linear": elman.Linear(3, 4)._config()}
    meta = {"format": "elman", "version": 1, "class": cls, "config": dict(base[cls], **config)}
    return json.dumps(meta)


def _rnn_members(config=None, skip=(), H=4, I=3):
    """The members of an RNN(I, H) file with valid arrays, the configuration JSON given."""
    shapes = {"weight_ih_l0": (H, I), "weight_hh_l0": (H, H), "bias_ih_l0": (H,), "bias_hh_l0": (H,)}
    members = [Member("__elman__.npy", _npy(np.array(config or _config())))]
    members += [Member(f"{n}.npy", _npy(np.zeros(s, np.float32))) for n, s in shapes.items()
                if n not in skip]
    return members


# ----------------------------------------------------------------------------- the corpus
# name -> (function of a path that writes the file there, what the refusal must say)
CHUNKS_1_6_GB = 100  # 1.68 GB of zeros: more than the child may map
CHUNKS_1_3_GB = 80   # 1.34 GB: with the copy a whole-member read makes, more than it may map


def _bomb_member(path):
    members = _rnn_members(skip=("weight_hh_l0",))
    return _write_zip(path, members + [_bomb("weight_hh_l0.npy", _npy_header((4, 4)), CHUNKS_1_6_GB)])


def _lying_header(path):
    # The header says (4, 4); the member declares 1.3 GB. The file is padded to 22 MB so that
    # the overall compression ratio is allowed: the header check must be what refuses it.
    members = _rnn_members(skip=("weight_hh_l0",))
    bomb = _bomb("weight_hh_l0.npy", _npy_header((4, 4)), CHUNKS_1_3_GB)
    return _write_zip(path, members + [bomb], padding=22 * MB)


def _bomb_matching_config(path):
    H = 20480  # W_hh (20480, 20480) float32: 1.68 GB, as the configuration implies
    members = _rnn_members(_config(hidden_size=H), skip=("weight_hh_l0",), H=H)
    chunks = H * H * 4 // ZERO_CHUNK
    return _write_zip(path, members + [_bomb("weight_hh_l0.npy", _npy_header((H, H)), chunks)])


def _header_of_10_12(path):
    members = _rnn_members(skip=("weight_hh_l0",))
    return _write_zip(path, members + [Member("weight_hh_l0.npy", _npy_header((10**6, 10**6)))])


def _header_and_config_of_10_12(path):
    H = 10**6
    members = [Member("__elman__.npy", _npy(np.array(_config(hidden_size=H))))]
    members += [Member(f"{n}.npy", _npy_header(s)) for n, s in
                (("weight_hh_l0", (H, H)), ("weight_ih_l0", (H, 3)), ("bias_ih_l0", (H,)),
                 ("bias_hh_l0", (H,)))]
    return _write_zip(path, members)


def _nested_json(path):
    depth = 30000  # 60,000 characters: within the length allowed, far deeper than allowed
    config = np.array("[" * depth + "]" * depth)
    return _write_zip(path, [Member("__elman__.npy", _npy(config))] + _rnn_members()[1:])


def _oversized_json(path):
    # A valid configuration padded with 10**6 spaces (4 MB as a .npy unicode string).
    config = np.array(_config() + " " * 10**6)
    return _write_zip(path, [Member("__elman__.npy", _npy(config))] + _rnn_members()[1:])


def _many_layers(path):
    return _write_zip(path, _rnn_members(_config(num_layers=10**9)))


def _huge_hidden_size(path):
    return _write_zip(path, _rnn_members(_config(hidden_size=2**31)))


def _unexpected_bomb(path):
    extra = _bomb("extra.npy", _npy_header((CHUNKS_1_3_GB * ZERO_CHUNK,), np.uint8), CHUNKS_1_3_GB)
    return _write_zip(path, _rnn_members() + [extra], padding=22 * MB)


def _duplicate_member(path):
    members = _rnn_members()
    first = _bomb("weight_hh_l0.npy", _npy_header((4, 4)), CHUNKS_1_6_GB)
    return _write_zip(path, [first] + members)


HOSTILE = {
    "zip bomb in a member": (_bomb_member, r"declare \d+ bytes uncompressed, more than 64 times"),
    "header smaller than the member": (_lying_header,
                                       r"key 'weight_hh_l0' declares 1342177408 bytes, its "
                                       r"\.npy header \(shape \(4, 4\), dtype float32\) implies 192"),
    "zip bomb that matches its configuration": (_bomb_matching_config,
                                                r"more than 64 times the file's \d+ bytes"),
    ".npy header of 10**12 elements": (_header_of_10_12,
                                       r"key 'weight_hh_l0' declares \d+ bytes, its \.npy header "
                                       r"\(shape \(1000000, 1000000\), dtype float32\) implies"),
    ".npy headers and configuration of 10**12 elements": (
        _header_and_config_of_10_12, r"key '\w+' declares \d+ bytes, its \.npy header"),
    "JSON nested 30000 deep": (_nested_json, r"key '__elman__' is invalid: the JSON nests 30000 "
                                             r"levels deep, at most 8 are allowed"),
    "JSON of 10**6 characters": (_oversized_json, r"key '__elman__' is invalid: a JSON string of "
                                                  r"\d+ characters, at most 65536"),
    "num_layers=10**9": (_many_layers, r"key '__elman__' holds an invalid RNN configuration "
                                       r"\(num_layers=1000000000 implies 4000000000 parameter "
                                       r"arrays, the file holds 4\)"),
    "hidden_size=2**31": (_huge_hidden_size, r"key 'weight_ih_l0' has shape \(4, 3\), expected "
                                             r"\(2147483648, 3\)"),
    "unexpected member holding a zip bomb": (_unexpected_bomb,
                                             r"missing keys \[\], unexpected keys \['extra'\]"),
    "duplicate member, the first a zip bomb": (_duplicate_member, r"key 'weight_hh_l0' is "
                                                                  r"unreadable .*not one \.npy array per key"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_file_is_refused_within_a_memory_budget(tmp_path, kind):
    make, match = HOSTILE[kind]
    path = make(tmp_path / "hostile.elman")
    assert os.path.getsize(path) < 32 * MB  # every one claims far more than it holds
    exc_type, message = _load_in_child(path)
    assert exc_type == "ValueError", f"{exc_type}: {message}"
    assert message.startswith(f"{path}: ")
    assert re.search(match, message), message


def test_a_valid_file_loads_within_the_same_budget(tmp_path):
    """The control for the corpus: the child and its limit load a real file."""
    path = tmp_path / "model.elman"
    elman.save(elman.RNN(3, 4, num_layers=2, seed=0), path)
    assert _load_in_child(path) == (None, "")


def test_compressed_archives_load_bit_for_bit(tmp_path):
    """np.savez_compressed of a saved file's arrays (deflated members) loads like the file."""
    m = elman.RNN(5, 7, num_layers=2, bidirectional=True, seed=0)
    elman.save(m, tmp_path / "plain.elman")
    with np.load(tmp_path / "plain.elman") as z:
        arrays = {k: z[k] for k in z.files}
    with open(tmp_path / "packed.elman", "wb") as f:
        np.savez_compressed(f, **arrays)
    loaded = elman.load(tmp_path / "packed.elman")
    for (n, p), (_, q) in zip(m.named_parameters(), loaded.named_parameters()):
        assert p.data.tobytes() == q.data.tobytes(), n
