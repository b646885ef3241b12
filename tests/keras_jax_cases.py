"""elman.keras.SimpleRNN on Keras's JAX backend, against keras.layers.SimpleRNN: values, gradients
under jax.jit, stateful carry, input dropout, the mask fallback and a model.fit trajectory.
Keras fixes its backend at import, so tests/test_keras_layer.py runs this file in a pytest
subprocess with KERAS_BACKEND=jax (it is not collected on its own: no test_ prefix)."""

import os
import warnings

import numpy as np
import pytest

from conftest import assert_close, max_abs

assert os.environ.get("KERAS_BACKEND") == "jax", "run with KERAS_BACKEND=jax"
jax = pytest.importorskip("jax")
keras = pytest.importorskip("keras")
import elman.keras as ek  # noqa: E402  (after keras, on its jax backend)

jnp = jax.numpy
ek.jax_kernels = True  # opt-in on JAX (see elman.keras); test_default_falls_back sets it back
B, T, I, H = 3, 6, 4, 5
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def pair(batch=None, **kwargs):
    """(keras.layers.SimpleRNN, elman.keras.SimpleRNN), built, with the same random weights."""
    theirs, ours = keras.layers.SimpleRNN(H, **kwargs), ek.SimpleRNN(H, **kwargs)
    for layer in (theirs, ours):
        layer.build((batch, None, I))
    rng = np.random.default_rng(H)
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype(np.float32) for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    return theirs, ours


def outputs(result):
    return [np.asarray(t) for t in (result if isinstance(result, (list, tuple)) else [result])]


def assert_same(ours, theirs, what=""):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, what
        assert_close(a, b, np.float32, what=f"{what} result {i}")


@pytest.mark.parametrize("kw", [
    dict(), dict(return_sequences=True, return_state=True),
    dict(return_sequences=True, go_backwards=True, activation="relu"),
    dict(return_state=True, go_backwards=True, use_bias=False),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_values_and_gradients_under_jit(kw):
    theirs, ours = pair(**kw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    got = outputs(ours(x, initial_state=[jnp.asarray(h0)]))
    assert ours.kernel_path is True
    assert_same(got, outputs(theirs(x, initial_state=[jnp.asarray(h0)])), str(kw))

    def loss(trainable, x, h0, layer):
        res, _ = layer.stateless_call(trainable, [v.value for v in layer.non_trainable_variables],
                                      x, initial_state=[h0])
        res = res if isinstance(res, (list, tuple)) else [res]
        return sum((r * jnp.cos(jnp.arange(r.size, dtype=r.dtype)).reshape(r.shape)).sum()
                   for r in res)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    expected = jax.grad(loss, argnums=(0, 1, 2))(
        [v.value for v in theirs.trainable_variables], x, h0, theirs)
    got = grad([v.value for v in ours.trainable_variables], x, h0, ours)
    assert ours.kernel_path is True
    weights_got, weights_exp = [np.asarray(g) for g in got[0]], [np.asarray(g) for g in expected[0]]
    scale = max_abs(*weights_exp)
    for i, (a, b) in enumerate(zip(weights_got, weights_exp)):
        assert_close(a, b, np.float32, "weight", what=f"weight gradient {i}", scale=scale)
    for name, a, b in zip(("x", "h0"), got[1:], expected[1:]):
        assert_close(np.asarray(a), np.asarray(b), np.float32, what=f"gradient of {name}")


def test_stateful_carries_the_state():
    theirs, ours = pair(batch=B, stateful=True, return_sequences=True)
    rng = np.random.default_rng(2)
    for k in range(2):
        x = rng.standard_normal((B, T, I)).astype(np.float32)
        assert_same(outputs(ours(x)), outputs(theirs(x)), f"batch {k}")
        assert ours.kernel_path
        assert_same(outputs(ours.states[0].value), outputs(theirs.states[0].value), "state")


def test_input_dropout_draws_keras_masks():
    theirs, ours = pair(dropout=0.4, seed=3, return_sequences=True)
    x = np.random.default_rng(4).standard_normal((B, T, I)).astype(np.float32)
    for training in (True, True, False):
        got = outputs(ours(x, training=training))
        assert ours.kernel_path
        assert_same(got, outputs(theirs(x, training=training)), f"training={training}")


def test_a_mask_falls_back_with_a_warning():
    theirs, ours = pair(return_sequences=True)
    x = np.random.default_rng(5).standard_normal((B, T, I)).astype(np.float32)
    mask = jnp.asarray(np.arange(T)[None] < np.array([[T], [2], [4]]))
    with pytest.warns(ek.KernelFallbackWarning, match="a mask under the jax backend"):
        got = outputs(ours(x, mask=mask))
    assert ours.kernel_path is False
    assert_same(got, outputs(theirs(x, mask=mask)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ek.KernelFallbackWarning)
        ours(x, mask=mask)


def test_default_falls_back(monkeypatch):
    monkeypatch.setattr(ek, "jax_kernels", False)
    theirs, ours = pair(return_sequences=True)
    x = np.random.default_rng(8).standard_normal((B, T, I)).astype(np.float32)
    with pytest.warns(ek.KernelFallbackWarning, match="jax_kernels = True"):
        got = outputs(ours(x))
    assert ours.kernel_path is False
    np.testing.assert_array_equal(got[0], outputs(theirs(x))[0])  # the same computation


def test_fit_gives_kerass_losses():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, T, I)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)[:, None]
    losses, weights = [], None
    for cls in (keras.layers.SimpleRNN, ek.SimpleRNN):
        keras.utils.set_random_seed(7)
        model = keras.Sequential([keras.Input((T, I)), cls(H),
                                  keras.layers.Dense(1, activation="sigmoid")])
        weights = weights or model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
        losses.append(model.fit(x, y, batch_size=16, epochs=3, shuffle=False,
                                verbose=0).history["loss"])
    assert model.layers[0].kernel_path
    assert_close(losses[1], losses[0], np.float32, what="losses per epoch")
