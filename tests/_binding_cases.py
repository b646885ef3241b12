"""Bad and odd arguments straight into the compiled module (elman._core), the layer that would
crash the process if it read memory wrongly. Run in a child interpreter by
test_core_binding.py (crash isolation, see isolation.py). Each case asserts the exact
exception type and message, or the exact defined result, and that no output was touched by a
rejected call."""

import numpy as np
import pytest

import elman._core as core
from elman import reference

CASES = {}
T, B, I, H = 5, 3, 4, 6
SENTINEL = 7.0


def case(name):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def _rng():
    return np.random.default_rng(0)


def fwd_args(dtype=np.float32):
    rng = _rng()
    s = 0.5
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                W_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                W_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                b_ih=rng.uniform(-s, s, H).astype(dtype), b_hh=rng.uniform(-s, s, H).astype(dtype),
                h0=rng.uniform(-1, 1, (B, H)).astype(dtype), lengths=np.array([5, 2, 1]),
                nonlinearity="tanh", reverse=False,
                out=np.full((T, B, H), SENTINEL, dtype), h_n=np.full((B, H), SENTINEL, dtype))


def bwd_args(dtype=np.float32):
    f = fwd_args(dtype)
    core.rnn_forward(**f)
    rng = _rng()
    return dict(x=f["x"], W_ih=f["W_ih"], W_hh=f["W_hh"], h0=f["h0"], out=f["out"],
                grad_out=rng.standard_normal((T, B, H)).astype(dtype),
                grad_h_n=rng.standard_normal((B, H)).astype(dtype), lengths=f["lengths"],
                nonlinearity="tanh", reverse=False,
                grad_x=np.full((T, B, I), SENTINEL, dtype), accumulate_grad_x=False,
                grad_h0=np.full((B, H), SENTINEL, dtype), dW_ih=np.full((H, I), SENTINEL, dtype),
                dW_hh=np.full((H, H), SENTINEL, dtype), db_ih=np.full(H, SENTINEL, dtype),
                db_hh=np.full(H, SENTINEL, dtype), grad_norms=np.full(T, SENTINEL))


FWD_OUTPUTS = ("out", "h_n")
BWD_OUTPUTS = ("grad_x", "grad_h0", "dW_ih", "dW_hh", "db_ih", "db_hh", "grad_norms")


def _snapshot(args, outputs):
    return {k: args[k].copy() for k in outputs if isinstance(args[k], np.ndarray)}


def _untouched(args, snapshot):
    for k, before in snapshot.items():
        assert args[k].tobytes() == before.tobytes(), f"{k} was written by a rejected call"


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _fortran(a):
    return np.asfortranarray(a)


def _negative(a):
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1]


def _zero_stride(a):  # writable, every element the same memory
    return np.lib.stride_tricks.as_strided(np.zeros(1, a.dtype), a.shape, (0,) * a.ndim)


def _bad(kind, fn, args_fn, outputs, name, value_fn, exc, match):
    @case(f"{kind}:{name}")
    def run():
        args = args_fn()
        args[name.split(":")[0]] = value_fn(args)
        snapshot = _snapshot(args, outputs)
        with pytest.raises(exc, match=match):
            fn(**args)
        _untouched(args, snapshot)


def bad_forward(name, value_fn, exc, match):
    _bad("forward", core.rnn_forward, fwd_args, FWD_OUTPUTS, name, value_fn, exc, match)


def bad_backward(name, value_fn, exc, match):
    _bad("backward", core.rnn_backward, bwd_args, BWD_OUTPUTS, name, value_fn, exc, match)


ODD_DTYPES = [np.int64, np.int32, np.bool_, np.float16, np.complex64, object, ">f4"]


def _dtype_name(dt):
    return np.dtype(dt).str if dt == ">f4" else np.dtype(dt).name


# ------------------------------------------------------------------------------ rnn_forward
bad_forward("x:list", lambda a: a["x"].tolist(), TypeError, "x must be a numpy.ndarray, got list")
bad_forward("x:None", lambda a: None, TypeError, "x must be a numpy.ndarray, got NoneType")
for dt in ODD_DTYPES:
    bad_forward(f"x:{_dtype_name(dt)}", lambda a, dt=dt: a["x"].astype(dt), TypeError,
                r"x must have dtype float32 or float64, got ")
bad_forward("x:float64", lambda a: a["x"].astype(np.float64), TypeError,
            "W_ih must have dtype float64, got float32")
bad_forward("x:0-d", lambda a: np.ones((), np.float32), ValueError, "x must be 3-D")
bad_forward("x:2-D", lambda a: a["x"][0], ValueError, r"x must be 3-D \(T, B, I\), got 2-D")
bad_forward("x:4-D", lambda a: a["x"][None], ValueError, r"x must be 3-D \(T, B, I\), got 4-D")
bad_forward("x:T=0", lambda a: a["x"][:0], ValueError, "at least one time step, got T = 0")
bad_forward("x:I=5", lambda a: np.zeros((T, B, 5), np.float32), ValueError,
            r"W_ih must have shape \(6, 5\), got \(6, 4\)")
bad_forward("x:B=4", lambda a: np.zeros((T, 4, I), np.float32), ValueError,
            r"h0 must have shape \(4, 6\), got \(3, 6\)")
for arg in ("W_ih", "W_hh"):
    bad_forward(f"{arg}:None", lambda a: None, TypeError, f"{arg} must be a numpy.ndarray, got None")
    bad_forward(f"{arg}:list", lambda a, arg=arg: a[arg].tolist(), TypeError,
                f"{arg} must be a numpy.ndarray, got list")
    bad_forward(f"{arg}:float64", lambda a, arg=arg: a[arg].astype(np.float64), TypeError,
                f"{arg} must have dtype float32, got float64")
    bad_forward(f"{arg}:int32", lambda a, arg=arg: a[arg].astype(np.int32), TypeError,
                f"{arg} must have dtype float32, got int32")
    bad_forward(f"{arg}:>f4", lambda a, arg=arg: a[arg].astype(">f4"), TypeError,
                f"{arg} must have dtype float32, got >f4")
bad_forward("W_ih:(6, 5)", lambda a: np.zeros((H, 5), np.float32), ValueError,
            r"W_ih must have shape \(6, 4\), got \(6, 5\)")
bad_forward("W_ih:1-D", lambda a: np.zeros(H, np.float32), ValueError,
            r"W_ih must have shape \(6, 4\), got \(6,\)")
bad_forward("W_hh:1-D", lambda a: np.zeros(H, np.float32), ValueError, r"W_hh must be 2-D \(H, H\)")
bad_forward("W_hh:3-D", lambda a: np.zeros((H, H, 1), np.float32), ValueError, r"W_hh must be 2-D")
bad_forward("W_hh:(6, 5)", lambda a: np.zeros((H, 5), np.float32), ValueError,
            r"W_hh must have shape \(6, 6\), got \(6, 5\)")
bad_forward("W_hh:(0, 0)", lambda a: np.zeros((0, 0), np.float32), ValueError,
            r"W_hh must have shape \(H, H\) with H >= 1, got \(0, 0\)")
bad_forward("W_hh:(5, 6)", lambda a: np.zeros((5, H), np.float32), ValueError,
            r"W_ih must have shape \(5, 4\), got \(6, 4\)")
for arg in ("b_ih", "b_hh"):
    bad_forward(f"{arg}:(7,)", lambda a: np.zeros(7, np.float32), ValueError,
                rf"{arg} must have shape \(6,\), got \(7,\)")
    bad_forward(f"{arg}:(1, 6)", lambda a: np.zeros((1, H), np.float32), ValueError,
                rf"{arg} must have shape \(6,\), got \(1, 6\)")
    bad_forward(f"{arg}:float64", lambda a: np.zeros(H), TypeError,
                f"{arg} must have dtype float32, got float64")
    bad_forward(f"{arg}:list", lambda a: [0.0] * H, TypeError, f"{arg} must be a numpy.ndarray, got list")
bad_forward("h0:(3, 5)", lambda a: np.zeros((B, 5), np.float32), ValueError,
            r"h0 must have shape \(3, 6\), got \(3, 5\)")
bad_forward("h0:(1, 3, 6)", lambda a: np.zeros((1, B, H), np.float32), ValueError,
            r"h0 must have shape \(3, 6\), got \(1, 3, 6\)")
bad_forward("h0:(6,)", lambda a: np.zeros(H, np.float32), ValueError,
            r"h0 must have shape \(3, 6\), got \(6,\)")
bad_forward("h0:float64", lambda a: a["h0"].astype(np.float64), TypeError,
            "h0 must have dtype float32, got float64")
bad_forward("h0:list", lambda a: a["h0"].tolist(), TypeError, "h0 must be a numpy.ndarray, got list")
bad_forward("lengths:int32", lambda a: a["lengths"].astype(np.int32), TypeError,
            "lengths must have dtype int64, got int32")
bad_forward("lengths:float64", lambda a: a["lengths"].astype(np.float64), TypeError,
            "lengths must have dtype int64, got float64")
bad_forward("lengths:list", lambda a: [5, 2, 1], TypeError, "lengths must be a numpy.ndarray, got list")
for bad_values, first in (([5, 2, 0], r"lengths\[2\] = 0"), ([6, 2, 1], r"lengths\[0\] = 6"),
                          ([5, -1, 1], r"lengths\[1\] = -1"),
                          ([5, 2, 2**62], r"lengths\[2\] = 4611686018427387904")):
    bad_forward(f"lengths:{bad_values}", lambda a, v=bad_values: np.array(v, np.int64), ValueError,
                r"lengths must be in \[1, T\] = \[1, 5\], got " + first)
bad_forward("lengths:(4,)", lambda a: np.array([5, 2, 1, 1]), ValueError,
            r"lengths must have shape \(3,\), got \(4,\)")
bad_forward("lengths:(3, 1)", lambda a: np.array([[5], [2], [1]]), ValueError,
            r"lengths must have shape \(3,\), got \(3, 1\)")
bad_forward("nonlinearity:'sigmoid'", lambda a: "sigmoid", ValueError,
            "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'")
bad_forward("nonlinearity:None", lambda a: None, TypeError, "incompatible function arguments")
bad_forward("reverse:'yes'", lambda a: "yes", TypeError, "incompatible function arguments")
bad_forward("out:None", lambda a: None, TypeError, "out must be a numpy.ndarray, got NoneType")
bad_forward("out:list", lambda a: a["out"].tolist(), TypeError, "out must be a numpy.ndarray, got list")
bad_forward("out:float64", lambda a: a["out"].astype(np.float64), TypeError,
            "out must have dtype float32, got float64")
bad_forward("out:(5, 3, 7)", lambda a: np.zeros((T, B, 7), np.float32), ValueError,
            r"out must have shape \(5, 3, 6\), got \(5, 3, 7\)")
bad_forward("out:read-only", lambda a: _readonly(a["out"]), ValueError, "out must be writable")
for layout, view in (("fortran", _fortran), ("negative-stride", _negative),
                     ("zero-stride", _zero_stride), ("unaligned", _unaligned)):
    bad_forward(f"out:{layout}", lambda a, view=view: view(a["out"]), ValueError,
                "out must have evenly strided rows with a contiguous last dimension")
    bad_forward(f"h_n:{layout}", lambda a, view=view: view(a["h_n"]), ValueError,
                "h_n must be C-contiguous and aligned")
bad_forward("h_n:read-only", lambda a: _readonly(a["h_n"]), ValueError, "h_n must be writable")
bad_forward("h_n:(3, 5)", lambda a: np.zeros((B, 5), np.float32), ValueError,
            r"h_n must have shape \(3, 6\), got \(3, 5\)")
bad_forward("h_n:None", lambda a: None, TypeError, "h_n must be a numpy.ndarray, got NoneType")


def _overlapping(args, first, second, shift):
    """Puts ``first`` and ``second`` into one buffer so that their memory overlaps."""
    a, b = args[first], args[second]
    buf = np.full(a.size + b.size, SENTINEL, a.dtype)
    args[first] = buf[:a.size].reshape(a.shape)
    args[first][...] = a
    args[second] = buf[shift:shift + b.size].reshape(b.shape)
    args[second][...] = b


for first, second, message in (("x", "out", "out must not share memory with x"),
                               ("W_hh", "out", "out must not share memory with W_hh"),
                               ("h0", "h_n", "h_n must not share memory with h0"),
                               ("out", "h_n", "h_n must not share memory with out")):
    @case(f"forward:overlap:{first}/{second}")
    def _(first=first, second=second, message=message):
        args = fwd_args()
        _overlapping(args, first, second, args[first].size - 1)
        keep = {k: args[k].copy() for k in (first, second)}
        with pytest.raises(ValueError, match=message):
            core.rnn_forward(**args)
        for k, v in keep.items():
            np.testing.assert_array_equal(args[k], v)


# ------------------------------------------------------------------------------ rnn_backward
bad_backward("x:int64", lambda a: a["x"].astype(np.int64), TypeError,
             "x must have dtype float32 or float64, got int64")
bad_backward("x:(5, 3, 5)", lambda a: np.zeros((T, B, 5), np.float32), ValueError,
             r"W_ih must have shape \(6, 5\), got \(6, 4\)")
bad_backward("out:None", lambda a: None, TypeError, "out must be a numpy.ndarray, got None")
bad_backward("out:(5, 3, 7)", lambda a: np.zeros((T, B, 7), np.float32), ValueError,
             r"out must have shape \(5, 3, 6\), got \(5, 3, 7\)")
bad_backward("out:float64", lambda a: a["out"].astype(np.float64), TypeError,
             "out must have dtype float32, got float64")
bad_backward("grad_out:(5, 3, 5)", lambda a: np.zeros((T, B, 5), np.float32), ValueError,
             r"grad_out must have shape \(5, 3, 6\), got \(5, 3, 5\)")
bad_backward("grad_out:int32", lambda a: a["grad_out"].astype(np.int32), TypeError,
             "grad_out must have dtype float32, got int32")
bad_backward("grad_h_n:(6,)", lambda a: np.zeros(H, np.float32), ValueError,
             r"grad_h_n must have shape \(3, 6\), got \(6,\)")
bad_backward("lengths:[0, 1, 1]", lambda a: np.array([0, 1, 1]), ValueError,
             r"lengths must be in \[1, T\] = \[1, 5\], got lengths\[0\] = 0")
bad_backward("accumulate_grad_x:'no'", lambda a: "no", TypeError, "incompatible function arguments")
for arg, shape in (("grad_x", (T, B, I)), ("grad_h0", (B, H)), ("dW_ih", (H, I)), ("dW_hh", (H, H)),
                   ("db_ih", (H,)), ("db_hh", (H,))):
    bad_backward(f"{arg}:read-only", lambda a, arg=arg: _readonly(a[arg]), ValueError,
                 f"{arg} must be writable")
    bad_backward(f"{arg}:float64", lambda a, arg=arg: a[arg].astype(np.float64), TypeError,
                 f"{arg} must have dtype float32, got float64")
    bad_backward(f"{arg}:wrong shape", lambda a, s=shape: np.zeros(s + (1,), np.float32), ValueError,
                 f"{arg} must have shape")
    bad_backward(f"{arg}:unaligned", lambda a, arg=arg: _unaligned(a[arg]), ValueError,
                 f"{arg} must be C-contiguous and aligned")
    if len(shape) > 1:
        bad_backward(f"{arg}:fortran", lambda a, arg=arg: _fortran(a[arg]), ValueError,
                     f"{arg} must be C-contiguous and aligned")
for arg in ("dW_ih", "dW_hh"):
    bad_backward(f"{arg}:None", lambda a: None, TypeError, f"{arg} must be a numpy.ndarray, got NoneType")
bad_backward("grad_norms:float32", lambda a: np.zeros(T, np.float32), TypeError,
             "grad_norms must have dtype float64, got float32")
bad_backward("grad_norms:(6,)", lambda a: np.zeros(T + 1), ValueError,
             r"grad_norms must have shape \(5,\), got \(6,\)")
for first, second, message in (("x", "grad_x", "grad_x must not share memory with x"),
                               ("dW_ih", "db_ih", "db_ih must not share memory with dW_ih"),
                               ("grad_out", "grad_h0", "grad_h0 must not share memory with grad_out"),
                               ("W_hh", "dW_hh", "dW_hh must not share memory with W_hh")):
    @case(f"backward:overlap:{first}/{second}")
    def _(first=first, second=second, message=message):
        args = bwd_args()
        _overlapping(args, first, second, args[first].size - 1)
        keep = {k: args[k].copy() for k in (first, second)}
        with pytest.raises(ValueError, match=message):
            core.rnn_backward(**args)
        for k, v in keep.items():
            np.testing.assert_array_equal(args[k], v)


# ------------------------------------------------------------------------------ defined results
@case("forward:B=0 writes nothing and returns")
def _():
    args = fwd_args()
    args.update(x=np.zeros((T, 0, I), np.float32), h0=None, lengths=np.zeros(0, np.int64),
                out=np.zeros((T, 0, H), np.float32), h_n=np.zeros((0, H), np.float32))
    core.rnn_forward(**args)


@case("backward:B=0 leaves the accumulators as they were")
def _():
    args = bwd_args()
    args.update(x=np.zeros((T, 0, I), np.float32), h0=None, lengths=None,
                out=np.zeros((T, 0, H), np.float32), grad_out=None, grad_h_n=None,
                grad_x=np.zeros((T, 0, I), np.float32), grad_h0=np.zeros((0, H), np.float32))
    core.rnn_backward(**args)
    for k in ("dW_ih", "dW_hh", "db_ih", "db_hh"):
        assert (args[k] == SENTINEL).all()


@case("forward:I=0 is the recurrence on the biases alone")
def _():
    args = fwd_args(np.float64)
    args.update(x=np.zeros((T, B, 0)), W_ih=np.zeros((H, 0)))
    core.rnn_forward(**args)
    ref, ref_hn = reference.rnn_forward(args["x"], args["W_ih"], args["W_hh"], args["b_ih"],
                                        args["b_hh"], args["h0"], args["lengths"])
    np.testing.assert_allclose(args["out"], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(args["h_n"], ref_hn, rtol=1e-12, atol=1e-14)


LAYOUTS = {"fortran": _fortran, "negative-stride": _negative, "unaligned": _unaligned,
           "read-only": _readonly, "broadcast": lambda a: np.broadcast_to(a, a.shape),
           "sliced": lambda a: np.repeat(a, 2, axis=-1)[..., ::2]}
for layout, view in LAYOUTS.items():
    @case(f"forward:inputs {layout}: bitwise the contiguous result, inputs unchanged")
    def _(view=view):
        ref = fwd_args()
        core.rnn_forward(**ref)
        args = fwd_args()
        for k in ("x", "W_ih", "W_hh", "b_ih", "b_hh", "h0", "lengths"):
            args[k] = view(args[k])
        before = {k: args[k].copy() for k in ("x", "W_ih", "W_hh", "b_ih", "b_hh", "h0", "lengths")}
        core.rnn_forward(**args)
        np.testing.assert_array_equal(args["out"], ref["out"])
        np.testing.assert_array_equal(args["h_n"], ref["h_n"])
        for k, v in before.items():
            assert args[k].tobytes() == v.tobytes(), k

    @case(f"backward:inputs {layout}: bitwise the contiguous result, inputs unchanged")
    def _(view=view):
        ref = bwd_args()
        core.rnn_backward(**ref)
        args = bwd_args()
        names = ("x", "W_ih", "W_hh", "h0", "out", "grad_out", "grad_h_n", "lengths")
        for k in names:
            args[k] = view(args[k])
        before = {k: args[k].copy() for k in names}
        core.rnn_backward(**args)
        for k in BWD_OUTPUTS:
            np.testing.assert_array_equal(args[k], ref[k], err_msg=k)
        for k, v in before.items():
            assert args[k].tobytes() == v.tobytes(), k


@case("forward:a broadcast input of 2^40 elements: MemoryError naming it, nothing written")
def _():
    args = fwd_args()
    big = np.broadcast_to(np.float32(1), (2**20, 2**20, 1))
    # out for the huge shape cannot exist either; the copy of x is what fails first
    args.update(x=big, W_ih=np.zeros((H, 1), np.float32), h0=None, lengths=None)
    snapshot = _snapshot(args, FWD_OUTPUTS)
    with pytest.raises(MemoryError, match=r"x \(1048576, 1048576, 1\)"):
        core.rnn_forward(**args)
    _untouched(args, snapshot)


@case("backward:a broadcast input of 2^58 elements: MemoryError, accumulators untouched")
def _():
    args = bwd_args()
    big = np.broadcast_to(np.float32(1), (2**29, 2**29, 1))
    args.update(x=big, W_ih=np.zeros((H, 1), np.float32),
                out=np.broadcast_to(np.float32(0), (2**29, 2**29, H)), h0=None, grad_out=None,
                grad_h_n=None, lengths=None, grad_x=None, grad_h0=None,
                dW_ih=np.full((H, 1), SENTINEL, np.float32), grad_norms=None)
    snapshot = _snapshot(args, BWD_OUTPUTS)
    with pytest.raises(MemoryError, match="C-contiguous copy of x"):
        core.rnn_backward(**args)
    _untouched(args, snapshot)


# ------------------------------------------------------------------------------ rnn_cell_step
def _cell(dtype=np.float32):
    rng = _rng()
    return dict(x=rng.standard_normal((B, I)).astype(dtype), h=rng.standard_normal((B, H)).astype(dtype),
                W_ih=rng.uniform(-.5, .5, (H, I)).astype(dtype),
                W_hh=rng.uniform(-.5, .5, (H, H)).astype(dtype),
                b_ih=rng.uniform(-.5, .5, H).astype(dtype), b_hh=rng.uniform(-.5, .5, H).astype(dtype),
                relu=False)


def _cell_reference(a):
    x, h = np.atleast_2d(a["x"]), None if a["h"] is None else np.atleast_2d(a["h"])
    out, _ = reference.rnn_forward(x[None], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], h,
                                   nonlinearity="relu" if a["relu"] else "tanh")
    return out[0] if a["x"].ndim == 2 else out[0, 0]


CELL_DECLINES = {  # the fast path declines (None): the validated Python path then handles it
    "x:list": lambda a: a["x"].tolist(), "x:0-d": lambda a: np.ones((), np.float32),
    "x:3-D": lambda a: a["x"][None], "x:float64": lambda a: a["x"].astype(np.float64),
    "x:int32": lambda a: a["x"].astype(np.int32), "x:fortran": lambda a: _fortran(a["x"]),
    "x:unaligned": lambda a: _unaligned(a["x"]), "x:I=5": lambda a: np.zeros((B, 5), np.float32),
    "h:list": lambda a: a["h"].tolist(), "h:1-D with 2-D x": lambda a: a["h"][0],
    "h:(3, 5)": lambda a: np.zeros((B, 5), np.float32), "h:(4, 6)": lambda a: np.zeros((4, H), np.float32),
    "h:float64": lambda a: a["h"].astype(np.float64), "h:fortran": lambda a: _fortran(a["h"]),
    "W_ih:1-D": lambda a: a["W_ih"][0], "W_ih:list": lambda a: a["W_ih"].tolist(),
    "W_hh:(6, 5)": lambda a: np.zeros((H, 5), np.float32),
    "W_hh:(0, 0)": lambda a: np.zeros((0, 0), np.float32),
    "W_hh:float64": lambda a: a["W_hh"].astype(np.float64),
    "W_hh:fortran": lambda a: _fortran(a["W_hh"]),
    "b_ih:list": lambda a: [0.0] * H, "b_ih:float64": lambda a: a["b_ih"].astype(np.float64),
    "b_ih:(7,)": lambda a: np.zeros(7, np.float32), "b_ih:(1, 6)": lambda a: np.zeros((1, H), np.float32),
    "b_hh:int64": lambda a: np.zeros(H, np.int64), "b_hh:unaligned": lambda a: _unaligned(a["b_hh"]),
}
for name, value_fn in CELL_DECLINES.items():
    @case(f"cell_step:{name} -> None")
    def _(name=name, value_fn=value_fn):
        a = _cell()
        a[name.split(":")[0]] = value_fn(a)
        assert core.rnn_cell_step(**a) is None


@case("cell_step:B=0 -> an empty (0, H) array")
def _():
    a = _cell()
    a.update(x=np.zeros((0, I), np.float32), h=np.zeros((0, H), np.float32))
    r = core.rnn_cell_step(**a)
    assert r.shape == (0, H) and r.dtype == np.float32


for relu in (False, True):
    for unbatched in (False, True):
        for with_h in (False, True):
            @case(f"cell_step:relu={relu} unbatched={unbatched} h={with_h}: the reference")
            def _(relu=relu, unbatched=unbatched, with_h=with_h):
                a = _cell(np.float64)
                a["relu"] = relu
                if unbatched:
                    a["x"], a["h"] = a["x"][0].copy(), a["h"][0].copy()
                if not with_h:
                    a["h"] = None
                np.testing.assert_allclose(core.rnn_cell_step(**a), _cell_reference(a), rtol=1e-12,
                                           atol=1e-14)


# ------------------------------------------------------------------------------ helpers of _core
for fn_name in ("tn_product", "blas_gemm"):
    fn = getattr(core._testing, fn_name)
    A = np.ones((3, 4), np.float32)
    Bm = np.ones((3 if fn_name == "tn_product" else 4, 5), np.float32)
    C = np.zeros((4 if fn_name == "tn_product" else 3, 5), np.float32)
    for label, args, exc, match in (
            ("A:1-D", (A[0], Bm, C), ValueError, "A must be 2-D"),
            ("A:int", (A.astype(int), Bm, C), TypeError, "A must have dtype float32 or float64"),
            ("B:1-D", (A, Bm[0], C), ValueError, "B must be 2-D"),
            ("B:rows", (A, Bm[:2], C), ValueError, "B must have shape"),
            ("B:float64", (A, Bm.astype(np.float64), C), TypeError, "B must have dtype float32"),
            ("C:shape", (A, Bm, C[:, :4]), ValueError, "C must have shape"),
            ("C:read-only", (A, Bm, _readonly(C)), ValueError, "C must be writable"),
            ("C:list", (A, Bm, C.tolist()), TypeError, "C must be a numpy.ndarray")):
        @case(f"{fn_name}:{label}")
        def _(fn=fn, args=args, exc=exc, match=match):
            with pytest.raises(exc, match=match):
                fn(*args)

for label, args, exc, match in (
        ("A:1-D", (np.ones(3, np.float32), np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32)),
         ValueError, r"A must be 2-D, got shape \(3,\)"),
        ("B:rows", (np.ones((3, 4), np.float32), np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32)),
         ValueError, r"B must have shape \(4, 2\), got \(3, 2\)"),
        ("B:float64", (np.ones((3, 4), np.float32), np.ones((4, 2)), np.zeros((3, 2), np.float32)),
         TypeError, "B must have dtype float32, got float64"),
        ("C:shape", (np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), np.zeros((2, 3), np.float32)),
         ValueError, r"C must have shape \(3, 2\), got \(2, 3\)"),
        ("C:fortran", (np.ones((3, 4), np.float32), np.ones((4, 2), np.float32),
                       np.zeros((3, 2), np.float32, order="F")), ValueError, "C must be C-contiguous"),
        ("C:list", (np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), [[0.0] * 2] * 3),
         TypeError, "C must be a numpy.ndarray, got list")):
    @case(f"matmul:{label}")
    def _(args=args, exc=exc, match=match):
        before = args[2].copy() if isinstance(args[2], np.ndarray) else None
        with pytest.raises(exc, match=match):
            core.matmul(*args)
        if before is not None:
            np.testing.assert_array_equal(args[2], before)


@case("matmul:C overlapping A is refused, nothing written")
def _():
    buf = np.arange(24, dtype=np.float64)
    A, C = buf[:12].reshape(3, 4), buf[10:16].reshape(3, 2)
    keep = buf.copy()
    with pytest.raises(ValueError, match="C must not share memory with A"):
        core.matmul(A, np.ones((4, 2)), C)
    np.testing.assert_array_equal(buf, keep)


@case("matmul:every transpose and layout gives the NumPy product")
def _():
    rng = np.random.default_rng(3)
    for ta in (False, True):
        for tb in (False, True):
            A = rng.standard_normal((4, 3) if ta else (3, 4))
            Bm = rng.standard_normal((2, 4) if tb else (4, 2))
            for view in (lambda a: a, np.asfortranarray, _unaligned, lambda a: np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]):
                C = rng.standard_normal((3, 2))
                expected = (A.T if ta else A) @ (Bm.T if tb else Bm) + 0.5 * C
                core.matmul(view(A), view(Bm), C, ta, tb, 0.5)
                np.testing.assert_allclose(C, expected, rtol=1e-12, atol=1e-12)


for label, call, exc, match in (
        ("tanh:list", lambda: core._testing.tanh([1.0]), TypeError, "x must be a numpy.ndarray, got list"),
        ("tanh:int64", lambda: core._testing.tanh(np.arange(3)), TypeError,
         "x must have dtype float32 or float64, got int64"),
        ("set_num_threads:0", lambda: core.set_num_threads(0), ValueError, "num_threads must be >= 1, got 0"),
        ("set_num_threads:-3", lambda: core.set_num_threads(-3), ValueError, "num_threads must be >= 1"),
        ("set_num_threads:'2'", lambda: core.set_num_threads("2"), TypeError, "incompatible function arguments"),
        ("set_num_threads:2**40", lambda: core.set_num_threads(2**40), TypeError, "incompatible function arguments"),
        ("set_isa:'sse9'", lambda: core.set_isa("sse9"), ValueError, "unknown instruction set 'sse9'"),
        ("set_isa:None", lambda: core.set_isa(None), TypeError, "incompatible function arguments"),
        ("checked_nbytes:negative", lambda: core._testing.checked_nbytes([3, -1], 4), ValueError, "negative size"),
        ("checked_nbytes:2^80", lambda: core._testing.checked_nbytes([2**40, 2**40], 1), MemoryError,
         r"\(1099511627776, 1099511627776\) needs more than 2\^63 bytes")):
    @case(label)
    def _(call=call, exc=exc, match=match):
        threads, isa = core.get_num_threads(), core.get_isa()
        try:
            with pytest.raises(exc, match=match):
                call()
        finally:
            core.set_num_threads(threads)
            core.set_isa(isa)


@case("tanh:0-d, strided and unaligned inputs give the contiguous result")
def _():
    x = np.linspace(-12, 12, 101, dtype=np.float32)
    ref = core._testing.tanh(x)
    assert core._testing.tanh(np.full((), 0.5, np.float32)).shape == ()
    np.testing.assert_array_equal(core._testing.tanh(np.repeat(x, 2)[::2]), ref)
    np.testing.assert_array_equal(core._testing.tanh(x[::-1])[::-1], ref)
    np.testing.assert_array_equal(core._testing.tanh(_unaligned(x)), ref)
