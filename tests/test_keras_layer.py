"""elman.keras.SimpleRNN as a drop-in for keras.layers.SimpleRNN (Keras 3, torch backend): forward
values and gradients equal to Keras's own over the constructor options and masks, stateful carry,
the fallback to Keras's computation (with its warning), weight files and saved models across the
two classes, a model.fit trajectory; Linear.from_keras / RNN.from_keras(model); import hygiene."""

import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

import elman
from conftest import assert_close, max_abs

HERE = pathlib.Path(__file__).resolve().parent
NP_DTYPE = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
B, T, I, H = 3, 6, 4, 5

# Keras's own NumPy 2 deprecation notices are not about elman.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")


@pytest.fixture(scope="module")
def keras():
    # Keras 3 picks its backend at import; the torch backend runs on the CPU build of torch.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    if keras.config.backend() != "torch":
        pytest.skip(f"keras runs on its {keras.config.backend()} backend here; these tests need "
                    "KERAS_BACKEND=torch")
    return keras


@pytest.fixture(scope="module")
def ek(keras):
    import elman.keras
    return elman.keras


@pytest.fixture(scope="module")
def torch(keras):
    import torch
    return torch


def np_of(t):
    return np.asarray(t.detach().numpy() if hasattr(t, "detach") else t)


def outputs(result):
    """A layer's result as a list of NumPy arrays."""
    return [np_of(t) for t in (result if isinstance(result, (list, tuple)) else [result])]


def pair(keras, ek, units=H, dtype="float32", batch=None, **kwargs):
    """(keras.layers.SimpleRNN, elman.keras.SimpleRNN), built for (batch, T, I), with the same
    random weights (a non-zero bias, so that it counts)."""
    ours = ek.SimpleRNN(units, dtype=dtype, **kwargs)
    theirs = keras.layers.SimpleRNN(units, dtype=dtype, **kwargs)
    for layer in (ours, theirs):
        layer.build((batch, None, I))
    rng = np.random.default_rng(units)
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype(NP_DTYPE[dtype])
               for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return theirs, ours


def assert_same(ours, theirs, dtype=np.float32, what=""):
    assert len(ours) == len(theirs), what
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"{what} result {i}: shape {a.shape} != {b.shape}"
        assert_close(a, b, dtype, what=f"{what} result {i}")


def padded(rng, lengths, dtype=np.float32, steps=T):
    """(B, T, I) random data, zero past each sequence's length (Masking's mask_value)."""
    x = rng.standard_normal((len(lengths), steps, I)).astype(dtype)
    for b, n in enumerate(lengths):
        x[b, n:] = 0
    return x


def masked_model(keras, layer, steps=T):
    """Input -> Masking -> layer: the layer receives the prefix mask of ``padded`` data."""
    inp = keras.Input((steps, I))
    return keras.Model(inp, layer(keras.layers.Masking()(inp)))


# ----------------------------------------------------------------------------- forward parity
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences,return_state", [(False, False), (True, False),
                                                           (False, True), (True, True)])
def test_forward_parity_over_constructor_options(keras, ek, activation, use_bias, go_backwards,
                                                 return_sequences, return_state):
    kw = dict(activation=activation, use_bias=use_bias, go_backwards=go_backwards,
              return_sequences=return_sequences, return_state=return_state)
    theirs, ours = pair(keras, ek, **kw)
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)
    got = outputs(ours(x))
    assert ours.kernel_path is True and ours.fallback_reason is None
    assert_same(got, outputs(theirs(x)), what=str(kw))


def keras_loop(torch, x, kernel, recurrent_kernel, bias, h0, mask, go_backwards):
    """Keras's SimpleRNN semantics (tanh) written as a plain torch loop in the inputs' dtype:
    steps read in reverse with go_backwards; a masked step keeps the state and repeats the
    previous output (zeros before the first valid step). Returns (outputs in Keras's order
    (B, T, H), final state (B, H))."""
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    h, prev, outs = h0, torch.zeros_like(h0), []
    for t in steps:
        new = torch.tanh(x[:, t] @ kernel + bias + h @ recurrent_kernel)          # (B, H)
        keep = mask[:, t:t + 1]                                                  # (B, 1)
        h = torch.where(keep, new, h)
        prev = torch.where(keep, new, prev)
        outs.append(prev)
    return torch.stack(outs, 1), h


@pytest.mark.parametrize("go_backwards", [False, True])
def test_float64_values_and_gradients(keras, ek, torch, go_backwards):
    """float64 against the same recurrence in torch float64 ops (Keras 3.15's own float64
    SimpleRNN on torch is only float32-accurate: its ops.matmul computes in float32), and
    against Keras within float32 tolerance. unroll=True changes nothing on the kernel path
    (Keras's own unrolled loop fails on go_backwards with a mask in 3.15, so Keras runs its
    symbolic loop here)."""
    theirs, ours = pair(keras, ek, dtype="float64", return_sequences=True, return_state=True,
                        go_backwards=go_backwards)
    ours.unroll = True
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal((B, H))
    mask = np.arange(T)[None] < np.array([[3], [T], [1]])
    got = grads(torch, ours, x, h0, mask)
    assert ours.kernel_path
    xt, ht = (torch.tensor(a, requires_grad=True) for a in (x, h0))
    w = [torch.tensor(a, requires_grad=True) for a in ours.get_weights()]
    out, h_n = keras_loop(torch, xt, *w, ht, torch.tensor(mask), go_backwards)
    g = torch.Generator().manual_seed(0)  # the same output weights as grads()
    loss = sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() for r in (out, h_n))
    expected = [np_of(t) for t in torch.autograd.grad(loss, w + [xt, ht])]
    for i, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, np.float64, what=f"gradient {i}")
    values = outputs(ours(x, initial_state=[torch.tensor(h0)], mask=torch.tensor(mask)))
    assert values[0].dtype == np.float64
    assert_same(values, [np_of(out), np_of(h_n)], np.float64)
    assert_same(values, outputs(theirs(x, initial_state=[torch.tensor(h0)],
                                       mask=torch.tensor(mask))), np.float32)


def test_initial_state(keras, ek):
    theirs, ours = pair(keras, ek, return_sequences=True, return_state=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    h0 = keras.ops.convert_to_tensor(h0)
    for state in ([h0], h0):
        got = outputs(ours(x, initial_state=state))
        assert ours.kernel_path
        assert_same(got, outputs(theirs(x, initial_state=state)))


@pytest.mark.parametrize("go_backwards", [False, True])
def test_stateful_carries_the_state_across_batches(keras, ek, go_backwards):
    theirs, ours = pair(keras, ek, batch=B, stateful=True, return_sequences=True,
                        go_backwards=go_backwards)
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((B, T, I)).astype(np.float32) for _ in range(3)]
    for k, x in enumerate(batches):
        assert_same(outputs(ours(x)), outputs(theirs(x)), what=f"batch {k}")
        assert ours.kernel_path
        assert_same([np_of(ours.states[0].value)], [np_of(theirs.states[0].value)],
                    what=f"state after batch {k}")
        if k == 1:
            ours.reset_state()
            theirs.reset_state()
    first = outputs(ours(batches[0]))[0]
    ours.reset_state()
    assert not np.allclose(first, outputs(ours(batches[0]))[0]), "the state was not carried"


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_masking_prefix_mask_becomes_lengths(keras, ek, go_backwards, return_sequences,
                                             zero_output_for_mask):
    kw = dict(go_backwards=go_backwards, return_sequences=return_sequences, return_state=True,
              zero_output_for_mask=zero_output_for_mask)
    theirs, ours = pair(keras, ek, **kw)
    x = padded(np.random.default_rng(5), [T, 2, 4])
    got = outputs(masked_model(keras, ours)(x))
    assert ours.kernel_path, ours.fallback_reason
    assert_same(got, outputs(masked_model(keras, theirs)(x)), what=str(kw))


@pytest.mark.parametrize("go_backwards", [False, True])
def test_embedding_mask_zero(keras, ek, go_backwards):
    rng = np.random.default_rng(6)
    ids = rng.integers(1, 20, (4, T))
    for b, n in enumerate([T, 1, 3, 5]):
        ids[b, n:] = 0

    def model(layer_cls):
        keras.utils.set_random_seed(7)
        return keras.Sequential([keras.Input((T,), dtype="int32"),
                                 keras.layers.Embedding(20, I, mask_zero=True),
                                 layer_cls(H, return_sequences=True, go_backwards=go_backwards),
                                 keras.layers.Dense(2)])

    theirs, ours = model(keras.layers.SimpleRNN), model(ek.SimpleRNN)
    ours.set_weights(theirs.get_weights())
    got = outputs(ours(ids))
    assert ours.layers[1].kernel_path
    assert_same(got, outputs(theirs(ids)))


def test_bidirectional_wrapper_runs_both_directions_on_the_kernels(keras, ek):
    x = padded(np.random.default_rng(8), [T, 3, 5])
    layers = [keras.layers.Bidirectional(cls(H, return_sequences=True))
              for cls in (keras.layers.SimpleRNN, ek.SimpleRNN)]
    models = [masked_model(keras, layer) for layer in layers]
    models[1].set_weights([w + 0.1 for w in models[0].get_weights()])
    models[0].set_weights(models[1].get_weights())
    got = outputs(models[1](x))
    assert layers[1].forward_layer.kernel_path and layers[1].backward_layer.kernel_path
    assert_same(got, outputs(models[0](x)))


@pytest.mark.parametrize("mask,reason", [
    ([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], "not a prefix mask"),
    ([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], "fully masked"),
])
def test_other_masks_fall_back_with_one_warning_and_equal_values(keras, ek, mask, reason):
    theirs, ours = pair(keras, ek, return_sequences=True, return_state=True)
    x = np.random.default_rng(9).standard_normal((B, T, I)).astype(np.float32)
    m = keras.ops.convert_to_tensor(np.array(mask, bool))
    with pytest.warns(ek.KernelFallbackWarning, match=reason):
        got = outputs(ours(x, mask=m))
    assert ours.kernel_path is False and reason in ours.fallback_reason
    assert_same(got, outputs(theirs(x, mask=m)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ek.KernelFallbackWarning)  # said once, not again
        ours(x, mask=m)
    ours(x)
    assert ours.kernel_path is True and ours.fallback_reason is None


def test_other_activation_falls_back(keras, ek):
    theirs, ours = pair(keras, ek, activation="sigmoid", return_sequences=True)
    x = np.random.default_rng(10).standard_normal((B, T, I)).astype(np.float32)
    with pytest.warns(ek.KernelFallbackWarning, match="activation sigmoid"):
        got = outputs(ours(x))
    assert ours.kernel_path is False
    assert_same(got, outputs(theirs(x)))


def test_other_dtypes_and_torch_contexts_fall_back(keras, ek, torch):
    theirs, ours = pair(keras, ek, dtype="float16", return_sequences=True,
                        recurrent_initializer="glorot_uniform")  # torch has no float16 QR
    x = np.random.default_rng(29).standard_normal((B, T, I)).astype(np.float16)
    with pytest.warns(ek.KernelFallbackWarning, match="dtype float16"):
        got = outputs(ours(x))
    np.testing.assert_array_equal(got[0], outputs(theirs(x))[0])  # the same computation
    theirs, ours = pair(keras, ek, return_sequences=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(ek.KernelFallbackWarning, match="torch's own operations"):
            got = outputs(ours(x.astype(np.float32)))
        expected = outputs(theirs(x.astype(np.float32)))
    assert ours.kernel_path is False
    np.testing.assert_array_equal(got[0], expected[0])


def test_building_a_model_does_not_warn(keras, ek):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ek.KernelFallbackWarning)
        model = keras.Sequential([keras.Input((T, I)), keras.layers.Masking(),
                                  ek.SimpleRNN(H, return_sequences=True), ek.SimpleRNN(H),
                                  keras.layers.Dense(1)])
    assert model.layers[1].kernel_path is None  # shape inference is not a call


# ----------------------------------------------------------------------------- dropout
def test_input_dropout_draws_keras_masks(keras, ek):
    kw = dict(dropout=0.4, seed=11, return_sequences=True)
    theirs, ours = pair(keras, ek, **kw)
    x = np.random.default_rng(12).standard_normal((B, T, I)).astype(np.float32)
    for training in (True, True, False):  # two training calls: the seed generators advance alike
        got = outputs(ours(x, training=training))
        assert ours.kernel_path
        assert_same(got, outputs(theirs(x, training=training)), what=f"training={training}")
    dropped = outputs(ours(x, training=True))[0]
    assert not np.allclose(dropped, outputs(ours(x, training=False))[0])


def test_recurrent_dropout_falls_back_in_training_only(keras, ek):
    theirs, ours = pair(keras, ek, recurrent_dropout=0.3, seed=13, return_sequences=True)
    x = np.random.default_rng(14).standard_normal((B, T, I)).astype(np.float32)
    got = outputs(ours(x, training=False))  # inference ignores recurrent dropout
    assert ours.kernel_path
    assert_same(got, outputs(theirs(x, training=False)))
    with pytest.warns(ek.KernelFallbackWarning, match="recurrent_dropout"):
        got = outputs(ours(x, training=True))
    assert ours.kernel_path is False
    assert_same(got, outputs(theirs(x, training=True)))


# ----------------------------------------------------------------------------- gradients
def grads(torch, layer, x, h0=None, mask=None, seed=0):
    """d(sum of every output times fixed random weights) / d(kernel, recurrent_kernel, bias, x,
    h0): the layer's outputs through torch's autograd."""
    xt = torch.tensor(x, requires_grad=True)
    kwargs = {}
    if h0 is not None:
        kwargs["initial_state"] = [torch.tensor(h0, requires_grad=True)]
    if mask is not None:
        kwargs["mask"] = torch.tensor(mask)
    res = layer(xt, **kwargs)
    res = list(res) if isinstance(res, (list, tuple)) else [res]
    g = torch.Generator().manual_seed(seed)
    loss = sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() for r in res)
    wrt = [layer.cell.kernel.value, layer.cell.recurrent_kernel.value]
    if layer.cell.use_bias:
        wrt.append(layer.cell.bias.value)
    wrt += [xt] + kwargs.get("initial_state", [])
    return [np_of(t) for t in torch.autograd.grad(loss, wrt)]


@pytest.mark.parametrize("kw", [
    dict(),
    dict(return_sequences=True, return_state=True),
    dict(return_sequences=True, activation="relu", use_bias=False),
    dict(return_sequences=True, go_backwards=True),
    dict(return_state=True, go_backwards=True),
], ids=lambda kw: ",".join(kw) or "default")
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_equal_kerass_own(keras, ek, torch, kw, masked):
    theirs, ours = pair(keras, ek, **kw)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    mask = (np.arange(T)[None] < np.array([[T], [2], [4]])) if masked else None
    got = grads(torch, ours, x, h0, mask)
    assert ours.kernel_path
    expected = grads(torch, theirs, x, h0, mask)
    nw = 3 if ours.cell.use_bias else 2
    scale = max_abs(*expected[:nw])
    for i, (a, b) in enumerate(zip(got, expected)):
        kind = "weight" if i < nw else "output"
        assert_close(a, b, np.float32, kind, what=f"gradient {i}", scale=scale)


def test_stateful_gradients_over_two_batches(keras, ek, torch):
    """The carried state enters the second batch as a constant (as in Keras): gradients of
    the second batch equal Keras's, and overwriting the state does not break autograd."""
    theirs, ours = pair(keras, ek, batch=B, stateful=True, return_sequences=True)
    rng = np.random.default_rng(27)
    first, second = (rng.standard_normal((B, T, I)).astype(np.float32) for _ in range(2))
    results = []
    for layer in (ours, theirs):
        layer(first)
        results.append(grads(torch, layer, second))
    assert ours.kernel_path
    scale = max_abs(*results[1][:3])
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(a, b, np.float32, "weight" if i < 3 else "output", what=f"gradient {i}",
                     scale=scale)


def test_sentiment_example_keras_path_on_synthetic_data(keras, ek):
    """examples/sentiment.py --keras without its data package: the two Keras models start from
    the same weights, train on the same batches to the same losses, the elman one on the
    kernels."""
    examples = HERE.parent / "examples"
    if not examples.is_dir():
        pytest.skip("examples/ is not next to the tests (installed-package run)")
    sys.path.insert(0, str(examples))
    try:
        import sentiment
    finally:
        sys.path.remove(str(examples))
    rng = np.random.default_rng(28)
    n, V = 96, 30
    lengths = rng.integers(1, sentiment.MAX_WORDS + 1, n)
    ids = rng.integers(2, V, (n, sentiment.MAX_WORDS))
    ids[np.arange(sentiment.MAX_WORDS)[None] >= lengths[:, None]] = sentiment.PAD
    y = (ids[:, 0] % 2).astype(np.float32)
    models = sentiment.keras_models(V, 8, 6, seed=0)
    histories = sentiment.fit_keras(models, (ids[:64], lengths[:64]), y[:64],
                                    (ids[64:], lengths[64:]), y[64:], 2, 16, seed=0)
    ours, theirs = (histories[k] for k in sentiment.KERAS_RUNS)
    assert ours.steps == theirs.steps == 8
    assert_close(ours.loss, theirs.loss, np.float32, what="per-step losses")
    assert ours.last("test accuracy") == theirs.last("test accuracy")
    assert models["elman.keras.SimpleRNN"].layers[1].kernel_path


def test_jax_backend_cases_in_a_subprocess():
    """tests/keras_jax_cases.py on Keras's JAX backend (Keras fixes its backend at import, so in
    its own pytest process), where jax and keras are installed."""
    import importlib.util
    for name in ("jax", "keras"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the JAX backend cases need it)")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(HERE / "keras_jax_cases.py")], cwd=HERE, capture_output=True,
                       text=True, timeout=1800, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
