"""Property-based tests (hypothesis): random shapes, dtypes, lengths, layers, directions, layouts
and values against the float64 reference. Bounded (max_examples, no deadline) so the suite stays
fast; each property names the claim it checks."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import elman
from elman import functional as F, reference
from conftest import assert_close, max_abs
from test_kernels_values import assert_same_specials

pytestmark = [
    pytest.mark.property,
    pytest.mark.skipif("cpu" not in elman.backends(), reason="no compiled CPU backend"),
]
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rnn_configs(draw):
    return dict(
        I=draw(st.integers(1, 24)), H=draw(st.integers(1, 40)), T=draw(st.integers(1, 10)),
        B=draw(st.integers(0, 9)), layers=draw(st.integers(1, 3)), bidir=draw(st.booleans()),
        act=draw(st.sampled_from(["tanh", "relu"])), bias=draw(st.booleans()),
        batch_first=draw(st.booleans()), dtype=draw(st.sampled_from([np.float32, np.float64])),
        h0=draw(st.booleans()), lengths=draw(st.booleans()), unbatched=draw(st.booleans()),
        scale=draw(st.sampled_from([0.01, 1.0, 3.0])), seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=200, **SETTINGS)
@given(rnn_configs())
def test_rnn_layer_matches_the_reference_backend(c):
    """Any configuration: the compiled backend's outputs and every gradient agree with the NumPy
    reference backend within the documented tolerances."""
    rng = np.random.default_rng(c["seed"])
    dtype, D = c["dtype"], 2 if c["bidir"] else 1
    T, B, I, H, L = c["T"], c["B"], c["I"], c["H"], c["layers"]
    unbatched = c["unbatched"] and B == 1
    models = [elman.RNN(I, H, num_layers=L, nonlinearity=c["act"], bias=c["bias"],
                        batch_first=c["batch_first"], bidirectional=c["bidir"], dtype=dtype,
                        seed=c["seed"] % 1000, backend=b) for b in ("cpu", "numpy")]
    shape = (T, I) if unbatched else ((B, T, I) if c["batch_first"] else (T, B, I))
    x = (c["scale"] * rng.standard_normal(shape)).astype(dtype)
    h0 = rng.standard_normal((L * D, H) if unbatched else (L * D, B, H)).astype(dtype) if c["h0"] else None
    lengths = rng.integers(1, T + 1, B) if c["lengths"] and not unbatched else None
    results = []
    for m in models:
        out, h_n = m(x, h0, lengths)
        g_out = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        g_hn = np.random.default_rng(2).standard_normal(h_n.shape).astype(dtype)
        gx, gh = m.backward(g_out, g_hn)
        results.append((out, h_n, gx, gh, m))
    (out, h_n, gx, gh, m), (r_out, r_hn, r_gx, r_gh, ref) = results
    assert out.shape == r_out.shape and gx.shape == x.shape
    for a, e, what in ((out, r_out, "out"), (h_n, r_hn, "h_n"), (gx, r_gx, "grad_x"), (gh, r_gh, "grad_h0")):
        assert a.dtype == dtype
        assert_close(a, e, dtype, what=what)
    scale = max_abs(*(p.grad for p in ref.parameters()))
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, dtype, "weight", name, scale)


SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 1e30])


@settings(max_examples=300, **SETTINGS)
@given(st.integers(1, 8), st.integers(1, 9), st.integers(1, 6), st.integers(1, 35),
       st.sampled_from([np.float32, np.float64]), st.sampled_from(["tanh", "relu"]), st.booleans(),
       st.booleans(), st.booleans(),
       st.lists(st.tuples(st.sampled_from(["x", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                           "grad_out", "grad_h_n"]),
                          st.floats(0, 1, exclude_max=True), SPECIALS), max_size=3),
       st.integers(0, 2**32 - 1))
def test_kernel_special_values_match_the_reference(T, B, I, H, dtype, act, reverse, use_h0, use_lengths,
                                                   specials, seed):
    """NaN, Inf, signed zeros, subnormals and huge values anywhere: the kernel has NaN and Inf at
    exactly the reference's elements, and its finite values agree."""
    rng = np.random.default_rng(seed)
    s = 0.5
    arrays = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
                  weight_ih=rng.uniform(-s, s, (H, I)).astype(dtype),
                  weight_hh=rng.uniform(-s, s, (H, H)).astype(dtype),
                  bias_ih=rng.uniform(-s, s, H).astype(dtype), bias_hh=rng.uniform(-s, s, H).astype(dtype),
                  h0=rng.uniform(-1, 1, (B, H)).astype(dtype),
                  grad_out=rng.standard_normal((T, B, H)).astype(dtype),
                  grad_h_n=rng.standard_normal((B, H)).astype(dtype))
    for name, where, value in specials:
        a = arrays[name]
        a.flat[int(where * a.size)] = value
    if dtype == np.float32 and any(abs(v) == 1e30 for _, _, v in specials):
        # 1e30 * 1e30-sized sums overflow float32 but not the float64 reference: not a property
        return
    h0 = arrays["h0"] if use_h0 else None
    lengths = rng.integers(1, T + 1, B) if use_lengths else None
    w = {k: arrays[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    out, h_n = F.rnn_forward(arrays["x"], **w, h0=h0, lengths=lengths, nonlinearity=act,
                             reverse=reverse, backend="cpu")
    with np.errstate(all="ignore"):
        r_out, r_hn = reference.rnn_forward(arrays["x"], w["weight_ih"], w["weight_hh"], w["bias_ih"],
                                            w["bias_hh"], h0, lengths, act, reverse)
    assert_same_specials(out, r_out, dtype, "out")
    assert_same_specials(h_n, r_hn, dtype, "h_n")
    r = F.rnn_backward(arrays["x"], w["weight_ih"], w["weight_hh"], out, h0, arrays["grad_out"],
                       arrays["grad_h_n"], lengths, act, reverse, backend="cpu")
    with np.errstate(all="ignore"):
        ref = reference.rnn_backward(arrays["x"], w["weight_ih"], w["weight_hh"], out, h0,
                                     arrays["grad_out"], arrays["grad_h_n"], lengths, act, reverse)
    for a, e, what in ((r.grad_x, ref["grad_x"], "grad_x"), (r.grad_h0, ref["grad_h0"], "grad_h0"),
                       (r.grad_norms, ref["grad_norms"], "grad_norms")):
        assert_same_specials(a, e, dtype, what)
    scale = max_abs(ref["dW_ih"], ref["dW_hh"], ref["db"])
    for a, e, what in ((r.grad_weight_ih, ref["dW_ih"], "dW_ih"), (r.grad_weight_hh, ref["dW_hh"], "dW_hh"),
                       (r.grad_bias_ih, ref["db"], "db")):
        assert_same_specials(a, e, dtype, what, "weight", scale)


@st.composite
def views(draw, shape, dtype):
    """An array of ``shape`` in a random memory layout: random axis order in memory, random
    steps, random axis flips, optionally unaligned, read-only or byte-swapped."""
    ndim = len(shape)
    order = draw(st.permutations(range(ndim)))
    steps = [draw(st.integers(1, 3)) for _ in range(ndim)]
    flips = [draw(st.booleans()) for _ in range(ndim)]
    base_shape = [shape[i] * steps[i] for i in order]
    base = np.zeros(base_shape, dtype)
    v = base.transpose(np.argsort(order))
    v = v[tuple(slice(None, None, st_) for st_ in steps)]
    v = v[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    assert v.shape == tuple(shape)
    kind = draw(st.sampled_from(["plain", "unaligned", "read-only", "byte-swapped"]))
    return v, kind


def _fill(v, kind, values):
    v[...] = values
    if kind == "unaligned":
        buf = np.zeros(v.nbytes + 1, np.uint8)
        u = np.frombuffer(buf.data, v.dtype, v.size, offset=1).reshape(v.shape)
        u[...] = values
        return u
    if kind == "read-only":
        v.flags.writeable = False
    if kind == "byte-swapped":
        return values.astype(values.dtype.newbyteorder(">"))
    return v


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_any_layout_is_bitwise_the_contiguous_result(data):
    """Any strides, order, flips, alignment, writability or byte order of x, h0 and the output
    gradient: the layer's results are bitwise those of C-contiguous copies, inputs unchanged."""
    T, B, I, H = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)), 9
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    bidir = data.draw(st.booleans())
    D = 2 if bidir else 1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = {"x": rng.standard_normal((T, B, I)).astype(dtype),
              "h0": rng.standard_normal((D, B, H)).astype(dtype),
              "g": rng.standard_normal((T, B, D * H)).astype(dtype)}
    viewed = {}
    for k, v in values.items():
        view, kind = data.draw(views(v.shape, dtype))
        viewed[k] = _fill(view, kind, v)
    before = {k: v.tobytes() for k, v in viewed.items()}

    def run(x, h0, g):
        m = elman.RNN(I, H, bidirectional=bidir, dtype=dtype, seed=0)
        out, h_n = m(x, h0)
        gx, gh = m.backward(g)
        return [out, h_n, gx, gh] + [p.grad for p in m.parameters()]
    got = run(viewed["x"], viewed["h0"], viewed["g"])
    expected = run(values["x"].copy(), values["h0"].copy(), values["g"].copy())
    for a, e in zip(got, expected):
        assert a.tobytes() == e.tobytes()
    assert {k: v.tobytes() for k, v in viewed.items()} == before


@settings(max_examples=50, **SETTINGS)
@given(rnn_configs())
def test_save_load_round_trip_is_bit_identical(tmp_path_factory, c):
    m = elman.RNN(c["I"], c["H"], num_layers=c["layers"], nonlinearity=c["act"], bias=c["bias"],
                  batch_first=c["batch_first"], bidirectional=c["bidir"], dtype=c["dtype"],
                  seed=c["seed"] % 1000)
    path = tmp_path_factory.mktemp("roundtrip") / "m.elman"
    elman.save(m, path)
    loaded = elman.load(path)
    assert repr(loaded) == repr(m)
    for p, q in zip(m.parameters(), loaded.parameters()):
        assert p.data.tobytes() == q.data.tobytes() and p.dtype == q.dtype
