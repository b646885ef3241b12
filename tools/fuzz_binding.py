"""Fuzz target for elman's binding layer (elman._core): the fuzzer's bytes choose the entry point,
the sizes, and for every argument its kind (None, a list, an array of some dtype, shape and
memory layout: sliced, Fortran, negative or zero strides, unaligned, read-only, byte-swapped)
and its values (NaN, Inf, subnormals, huge). Each call must return or raise TypeError,
ValueError or MemoryError: anything else, a crash or a hang is a finding. A call that succeeds
must leave its inputs byte-identical and give bitwise what C-contiguous copies give.

    python tools/fuzz_binding.py -max_total_time=60      # atheris (coverage-guided), bounded
    python tools/fuzz_binding.py --random 2000 --seed 1  # plain random bytes, no atheris needed
"""

import os
import random
import sys

import numpy as np

EXPECTED = (TypeError, ValueError, MemoryError)
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.bool_, np.complex64, object]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 1e-310, 3e38, -1.5, 1e300]


class Source:
    """Choices from bytes (atheris's FuzzedDataProvider, or a plain byte string)."""

    def __init__(self, data):
        self.data, self.pos, self.valid = data, 0, False

    def byte(self):
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, seq):
        return seq[self.byte() % len(seq)]

    def int(self, lo, hi):
        return lo + self.byte() % (hi - lo + 1)

    def chance(self, k=8):  # true about once in k
        return self.byte() % k == 0


def _values(src, shape, dtype):
    n = int(np.prod(shape))
    rng = np.random.default_rng(src.byte())
    a = rng.standard_normal(n)
    for _ in range(src.int(0, 3)):
        if n:
            a[src.int(0, 255) % n] = src.pick(SPECIAL)
    with np.errstate(all="ignore"):
        if dtype is object:
            return a.astype(object).reshape(shape)
        return a.astype(dtype).reshape(shape)


def _layout(src, a):
    kind = src.pick(["c", "c", "c", "fortran", "negative", "sliced", "unaligned", "readonly",
                     "swapped", "zero-stride", "broadcast"])
    if a.dtype == object or a.ndim == 0 or a.size == 0:
        return a
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative":
        flip = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "sliced":
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if kind == "unaligned" and a.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
        u[...] = a
        return u
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == "swapped" and a.dtype.kind in "fiuc":
        return a.astype(a.dtype.newbyteorder(">"))
    if kind == "zero-stride":  # writable, every element at one address
        return np.lib.stride_tricks.as_strided(a.reshape(-1)[:1].copy(), a.shape, (0,) * a.ndim)
    if kind == "broadcast":
        return np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), a.shape)
    return a


def _array(src, shape, dtype, output=False):
    """Mostly the requested array; sometimes None, a list, another dtype, another shape. In a
    well-formed call (src.valid) only the memory layout of inputs varies."""
    if src.valid:
        a = _values(src, shape, dtype)
        return a if output else _layout(src, a)
    roll = src.byte() % 32
    if roll == 0:
        return None
    if roll == 1:
        return _values(src, shape, np.float64).tolist()
    if roll == 2:
        dtype = src.pick(DTYPES)
    if roll == 3:
        shape = tuple(max(0, d + src.int(-1, 1)) for d in shape)
    if roll == 4:
        shape = shape + (1,)
    if roll == 5 and shape:
        shape = shape[1:]
    if roll == 6:  # huge and never allocated by the fuzzer: the binding must refuse it
        return np.broadcast_to(np.zeros((), dtype if dtype is not object else np.float32),
                               tuple(2**(40 // len(shape)) for _ in shape) if shape else ())
    return _layout(src, _values(src, shape, dtype))


def _lengths(src, T, B):
    roll = src.byte() % 8
    if src.valid and roll in (3, 4):
        roll = 0
    if roll < 3:
        return None
    if roll == 3:
        return np.array([src.int(-2, T + 2) for _ in range(B)], np.int64)
    if roll == 4:
        return np.ones(B, src.pick([np.int32, np.float64, np.uint8]))
    return _layout(src, np.array([src.int(1, max(T, 1)) for _ in range(B)], np.int64))


def _copy(a):
    if isinstance(a, np.ndarray):
        return np.array(a, order="C", dtype=a.dtype.newbyteorder("="), copy=True)
    return a


def _snapshot(args):  # the huge broadcast arrays are read-only views of one element
    return [a.tobytes() if isinstance(a, np.ndarray) and a.dtype != object and a.size < 2**20 else None
            for a in args]


def _check(name, fn, args, outputs):
    """Calls fn(*args); on success compares against C-contiguous copies, bitwise."""
    before = _snapshot(args)
    try:
        result = fn(*args)
    except EXPECTED:
        return
    after = _snapshot(args)
    for i, (b, a) in enumerate(zip(before, after)):
        if i not in outputs and b != a:
            raise AssertionError(f"{name}: input {i} was modified")
    if result is None and not outputs:  # the cell's fast path declined: nothing to compare
        return
    clean = [_copy(a) for a in args]
    for i in outputs:  # outputs must have been writable, C-contiguous (or row-strided) arrays
        if isinstance(args[i], np.ndarray):
            clean[i] = np.array(np.frombuffer(before[i], args[i].dtype).reshape(args[i].shape))
    again = fn(*clean)
    if result is not None:
        if not (isinstance(again, np.ndarray) and result.tobytes() == again.tobytes()):
            raise AssertionError(f"{name}: the result depends on the memory layout")
    for i in outputs:
        if isinstance(args[i], np.ndarray) and np.ascontiguousarray(args[i]).tobytes() != clean[i].tobytes():
            raise AssertionError(f"{name}: output {i} depends on the memory layout")


def one_input(data):
    import elman._core as core
    src = Source(data)
    src.valid = src.chance(2)  # half the calls well-formed, so that the kernels run often
    dtype = src.pick([np.float32, np.float64])
    T, B, I, H = src.int(0, 5), src.int(0, 9), src.int(0, 7), src.int(0, 18)
    if src.valid:
        T, H = max(T, 1), max(H, 1)
    what = src.pick(["forward", "backward", "cell", "tanh", "tn_product", "blas_gemm", "matmul",
                     "forward_calls", "backward_calls"])
    act = src.pick(["tanh", "relu", "tanh", "relu", "sigmoid"] if not src.valid else ["tanh", "relu"])

    def forward_args():
        return [_array(src, (T, B, I), dtype), _array(src, (H, I), dtype), _array(src, (H, H), dtype),
                None if src.chance(3) else _array(src, (H,), dtype),
                None if src.chance(3) else _array(src, (H,), dtype),
                None if src.chance(3) else _array(src, (B, H), dtype), _lengths(src, T, B), act,
                src.chance(2), _array(src, (T, B, H), dtype, True), _array(src, (B, H), dtype, True)]

    def backward_args():
        return [_array(src, (T, B, I), dtype), _array(src, (H, I), dtype), _array(src, (H, H), dtype),
                None if src.chance(3) else _array(src, (B, H), dtype), _array(src, (T, B, H), dtype),
                None if src.chance(3) else _array(src, (T, B, H), dtype),
                None if src.chance(3) else _array(src, (B, H), dtype), _lengths(src, T, B), act,
                src.chance(2), None if src.chance(4) else _array(src, (T, B, I), dtype, True), src.chance(2),
                None if src.chance(4) else _array(src, (B, H), dtype, True), _array(src, (H, I), dtype, True),
                _array(src, (H, H), dtype, True), None if src.chance(3) else _array(src, (H,), dtype, True),
                None if src.chance(3) else _array(src, (H,), dtype, True),
                None if src.chance(3) else _array(src, (T,), np.float64, True)]
    backward_outputs = {10, 12, 13, 14, 15, 16, 17}

    if what == "forward":
        _check(what, core.rnn_forward, forward_args(), outputs={9, 10})
    elif what == "backward":
        _check(what, core.rnn_backward, backward_args(), outputs=backward_outputs)
    elif what == "forward_calls":  # two calls on separate arrays (at small B: at the same time)
        args = forward_args() + forward_args()
        _check(what, lambda *a: core.rnn_forward_calls([tuple(a[:11]), tuple(a[11:])]), args,
               outputs={9, 10, 20, 21})
    elif what == "backward_calls":
        args = backward_args() + backward_args()
        _check(what, lambda *a: core.rnn_backward_calls([tuple(a[:18]), tuple(a[18:])]), args,
               outputs=backward_outputs | {18 + i for i in backward_outputs})
    elif what == "cell":
        shape = (B, I) if src.chance(2) else (I,)
        args = [_array(src, shape, dtype), None if src.chance(3) else _array(src, shape[:-1] + (H,), dtype),
                _array(src, (H, I), dtype), _array(src, (H, H), dtype),
                None if src.chance(3) else _array(src, (H,), dtype),
                None if src.chance(3) else _array(src, (H,), dtype), src.chance(2)]
        _check(what, core.rnn_cell_step, args, outputs=set())
    elif what == "tanh":
        _check(what, core._testing.tanh, [_array(src, (T, B), dtype)], outputs=set())
    elif what == "matmul":
        M, N, K = src.int(0, 9), src.int(0, 9), src.int(0, 9)
        ta, tb = src.chance(2), src.chance(2)
        args = [_array(src, (K, M) if ta else (M, K), dtype), _array(src, (N, K) if tb else (K, N), dtype),
                _array(src, (M, N), dtype, True), ta, tb, src.pick([0.0, 1.0, 0.5, -2.0])]
        _check(what, core.matmul, args, outputs={2})
    else:
        M, N, K = src.int(0, 9), src.int(0, 9), src.int(0, 9)
        a_shape = (K, M) if what == "tn_product" else (M, K)
        args = [_array(src, a_shape, dtype), _array(src, (K, N), dtype), _array(src, (M, N), dtype, True)]
        _check(what, getattr(core._testing, what), args, outputs={2})


def main(argv):
    if "--random" in argv:
        n = int(argv[argv.index("--random") + 1])
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
        rnd = random.Random(seed)
        for i in range(n):
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 160)))
            try:
                one_input(data)
            except BaseException:
                print(f"finding at input {i}: {data.hex()}", file=sys.stderr, flush=True)
                raise
        print(f"{n} random inputs, no finding")
        return
    import atheris
    with atheris.instrument_imports():
        import elman  # noqa: F401 (instrumented: its Python code guides the search too)
    # Coverage of this target's own branches (which argument kinds and outcomes were reached)
    # guides the search; the C++ is not instrumented (that needs a libFuzzer-built extension).
    module = sys.modules[__name__]
    for name, value in list(vars(module).items()):
        if callable(value) and getattr(value, "__module__", None) == __name__ and not isinstance(value, type):
            setattr(module, name, atheris.instrument_func(value))
    atheris.Setup(argv, lambda data: one_input(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv)
