"""State that must survive faults: optimizer steps and clipping (all or nothing), losses at
their edges, and save / load (bit-identical round trip; a damaged file, a missing or unexpected
key, a wrong shape or dtype raises an error naming the file and the key and changes nothing)."""

import json
import os
import zipfile

import numpy as np
import pytest

import elman
from elman import Parameter
from elman.losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

pytestmark = pytest.mark.reliability


def _params(grads, dtype=np.float32):
    out = []
    for i, g in enumerate(grads):
        p = Parameter(np.arange(len(g), dtype=dtype) + 1, f"p{i}")
        p.grad[...] = g
        out.append(p)
    return out


def _snapshot(params, opt=None):
    snap = [(p.data.copy(), p.grad.copy()) for p in params]
    bufs = None if opt is None else [None if b is None else b.copy() for b in opt._buffers]
    return snap, bufs


def _assert_unchanged(params, snap, opt=None):
    values, bufs = snap
    for p, (d, g) in zip(params, values):
        assert p.data.tobytes() == d.tobytes() and p.grad.tobytes() == g.tobytes(), p.name
    if opt is not None:
        for b, b0 in zip(opt._buffers, bufs):
            assert (b is None and b0 is None) or b.tobytes() == b0.tobytes()


# ------------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_zero_gradients_clip_to_a_no_op_with_norm_zero(dtype):
    params = _params([[0.0, 0.0], [0.0]], dtype)
    snap = _snapshot(params)
    assert elman.clip_grad_norm_(params, 1.0) == 0.0
    assert elman.clip_grad_norm_(params, 0.0) == 0.0
    elman.clip_grad_value_(params, 0.5)
    _assert_unchanged(params, snap)
    opt = elman.SGD(params, lr=0.1, momentum=0.9, clip_norm=1.0, clip_value=0.5)
    assert opt.step() == 0.0
    _assert_unchanged(params, snap)


@pytest.mark.bad_input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01),
                                     dict(clip_norm=1.0), dict(clip_value=0.5), dict(momentum=0.5, clip_norm=0.1)],
                         ids=["plain", "momentum", "nesterov+decay", "clip_norm", "clip_value", "momentum+clip"])
def test_nonfinite_gradient_raises_and_leaves_everything_unchanged(bad, where, options):
    params = _params([[1.0, -2.0, 3.0], [0.5, 0.25]])
    opt = elman.SGD(params, lr=0.1, **options)
    opt.step()  # momentum buffers exist now: they must survive the failed step too
    target = params[0] if where == "first" else params[-1]
    target.grad[-1] = bad
    snap = _snapshot(params, opt)
    with pytest.raises(FloatingPointError, match="the total norm of the gradients is (nan|inf); "
                                                 "clipping would turn every gradient into NaN, so "
                                                 "nothing was changed"):
        opt.step()
    _assert_unchanged(params, snap, opt)
    with pytest.raises(FloatingPointError, match="nothing was changed"):
        elman.clip_grad_norm_(params, 1.0)
    _assert_unchanged(params, snap, opt)


def test_nan_beats_inf_in_the_reported_norm():
    for order in ([[np.inf], [np.nan]], [[np.nan], [np.inf]]):
        params = _params(order)
        with pytest.raises(FloatingPointError, match="norm of the gradients is nan"):
            elman.clip_grad_norm_(params, 1.0)


def test_error_if_nonfinite_false_proceeds_as_torch():
    params = _params([[np.inf, 1.0]])
    assert elman.clip_grad_norm_(params, 1.0, error_if_nonfinite=False) == np.inf
    np.testing.assert_array_equal(params[0].grad, [np.nan, 0.0])  # scaled by 1 / inf = 0
    torch = pytest.importorskip("torch")
    t = torch.nn.Parameter(torch.ones(2))
    t.grad = torch.tensor([float("inf"), 1.0])
    torch.nn.utils.clip_grad_norm_([t], 1.0, error_if_nonfinite=False)
    np.testing.assert_array_equal(params[0].grad, t.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_finite_gradients_give_the_right_finite_norm(dtype):
    big = np.finfo(dtype).max / 4
    params = _params([[big, big], [big, big]], dtype)  # sum of squares overflows the dtype
    norm = elman.clip_grad_norm_(params, 1.0)
    assert np.isfinite(norm)
    np.testing.assert_allclose(norm, 2 * float(big), rtol=1e-12)
    total = np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in params))
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)  # clipped to max_norm, not to 0 or NaN
    tiny = np.finfo(dtype).smallest_subnormal
    params = _params([[tiny, tiny, tiny, tiny]], dtype)  # squares underflow to 0
    np.testing.assert_allclose(elman.optim.grad_norm(params), 2 * float(tiny), rtol=1e-12)


def test_step_is_all_or_nothing_when_a_late_parameter_is_read_only():
    params = _params([[1.0, 2.0], [3.0]])
    opt = elman.SGD(params, lr=0.1, momentum=0.9, clip_norm=0.5)
    opt.step()
    snap = _snapshot(params, opt)
    params[1].data.flags.writeable = False
    with pytest.raises(ValueError, match="p1.data is read-only"):
        opt.step()
    params[1].data.flags.writeable = True
    _assert_unchanged(params, snap, opt)
    params[0].grad.flags.writeable = False
    with pytest.raises(ValueError, match="p0.grad is read-only"):
        opt.step()  # clipping writes the gradients
    _assert_unchanged(params, snap, opt)


def test_step_is_all_or_nothing_when_memory_runs_out(monkeypatch):
    params = _params([[1.0, 2.0], [3.0], [4.0, 5.0]])
    opt = elman.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, clip_value=2.5)
    opt.step()
    snap = _snapshot(params, opt)
    real_clip, calls = np.clip, []

    def clip_then_fail(*a, **k):  # the third parameter's staging fails
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("injected")
        return real_clip(*a, **k)
    monkeypatch.setattr(np, "clip", clip_then_fail)
    with pytest.raises(MemoryError, match="injected"):
        opt.step()
    _assert_unchanged(params, snap, opt)


def test_staged_step_equals_the_update_rule_bitwise():
    """Staging changed how the step is written, not a single bit of its result."""
    rng = np.random.default_rng(0)
    for options in (dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
                    dict(clip_norm=0.3, clip_value=0.05, momentum=0.5)):
        data = [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,))]
        params = [Parameter(d.copy(), f"p{i}") for i, d in enumerate(data)]
        opt = elman.SGD(params, lr=0.1, **options)
        w, bufs = [d.copy() for d in data], [None, None]
        for _ in range(3):
            grads = [rng.standard_normal(d.shape).astype(np.float32) for d in data]
            for p, g in zip(params, grads):
                p.grad[...] = g
            norm = elman.optim.grad_norm(params)
            opt.step()
            for i, g in enumerate(grads):  # the rule, written out as torch writes it
                if options.get("clip_norm") is not None and options["clip_norm"] / (norm + 1e-6) < 1:
                    g = g * np.float32(options["clip_norm"] / (norm + 1e-6))
                if options.get("clip_value") is not None:
                    g = np.clip(g, -options["clip_value"], options["clip_value"])
                if options.get("weight_decay"):
                    g = g + options["weight_decay"] * w[i]
                m = options.get("momentum", 0.0)
                if m:
                    bufs[i] = g.copy() if bufs[i] is None else m * bufs[i] + g
                    g = g + m * bufs[i] if options.get("nesterov") else bufs[i]
                w[i] = w[i] - 0.1 * g
            for p, wi in zip(params, w):
                np.testing.assert_array_equal(p.data, wi)


# ------------------------------------------------------------------------------ losses
def test_bce_is_stable_at_large_logits_in_both_dtypes():
    for dtype in (np.float32, np.float64):
        z = np.array([1e4, -1e4, 1e4, -1e4, 88.0, -104.0], dtype)
        y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
            fn = BCEWithLogitsLoss(reduction="sum")
            loss = fn(z, y)
            g = fn.backward()
        expected = np.logaddexp(0, z.astype(np.float64)) - z.astype(np.float64) * y
        np.testing.assert_allclose(loss, expected.sum(), rtol=1e-12)
        np.testing.assert_allclose(g, [0, 0, 1, -1, 0, 0], atol=1e-30)
        assert g.dtype == dtype


def test_cross_entropy_is_stable_at_large_logits():
    for dtype in (np.float32, np.float64):
        logits = np.array([[3e4, 0.0, -3e4], [-1e30, 1e30, 0.0]], dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            fn = CrossEntropyLoss(reduction="sum")
            loss = fn(logits, np.array([1, 1]))
            g = fn.backward()
        np.testing.assert_allclose(loss, 3e4, rtol=1e-12)
        np.testing.assert_allclose(g, [[1, -1, 0], [0, 0, 0]], atol=1e-30)


@pytest.mark.parametrize("fn,pred,target,mask", [
    (MSELoss(), np.zeros((0, 3)), np.zeros((0, 3)), None),
    (MSELoss(), np.ones((2, 3)), np.zeros((2, 3)), np.zeros(2, bool)),
    (BCEWithLogitsLoss(), np.zeros(0, np.float32), np.zeros(0), None),
    (BCEWithLogitsLoss(), np.ones((4, 2)), np.ones((4, 2)), np.zeros((4, 2), bool)),
    (CrossEntropyLoss(), np.zeros((0, 5)), np.zeros(0, int), None),
    (CrossEntropyLoss(), np.ones((3, 5)), np.full(3, -100), None),
    (CrossEntropyLoss(), np.ones((3, 5)), np.array([1, 2, 3]), np.zeros(3, bool)),
], ids=["mse empty", "mse all masked", "bce empty", "bce all masked", "ce empty", "ce all ignored",
        "ce all masked"])
def test_mean_over_zero_elements_is_nan_with_a_zero_gradient(fn, pred, target, mask):
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no warning either
        loss = fn(pred, target, mask=mask)
    assert np.isnan(loss)
    g = fn.backward()
    assert g.shape == pred.shape and g.dtype == pred.dtype and not g.any()
    fn_sum = type(fn)(reduction="sum")
    assert fn_sum(pred, target, mask=mask) == 0.0


def test_losses_propagate_nan_only_where_it_is():
    fn = MSELoss(reduction="sum")
    pred = np.array([1.0, np.nan, 3.0])
    assert np.isnan(fn(pred, np.zeros(3)))
    g = fn.backward()
    assert np.isnan(g[1]) and np.isfinite(g[[0, 2]]).all()
    # a masked-out NaN never reaches the loss or the gradient
    assert fn(pred, np.zeros(3), mask=np.array([True, False, True])) == 10.0
    assert np.isfinite(fn.backward()).all()


# ------------------------------------------------------------------------------ save / load
def _models():
    return [elman.RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu", batch_first=True,
                      dropout=0.25, seed=0),
            elman.RNN(4, 2, bias=False, dtype=np.float64, seed=1),
            elman.RNNCell(3, 7, nonlinearity="relu", seed=2),
            elman.Linear(6, 2, bias=False, dtype=np.float64, seed=3),
            elman.Embedding(9, 4, padding_idx=2, seed=4)]


@pytest.mark.parametrize("model", _models(), ids=lambda m: repr(m))
def test_save_load_round_trips_bit_identically(tmp_path, model):
    for p in model.parameters():  # special values must survive too
        p.data.flat[0] = np.nan
        p.data.flat[-1] = -0.0
    path = tmp_path / "model.elman"
    elman.save(model, path)
    assert os.listdir(tmp_path) == ["model.elman"]  # no ".npz" appended, no temporary left
    loaded = elman.load(path)
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    assert loaded._config() == model._config()
    for (n, p), (n2, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert n == n2 and p.dtype == q.dtype and p.data.tobytes() == q.data.tobytes()
    into = type(model)(**{k: v for k, v in model._config().items()})
    assert elman.load(str(path), into=into) is into
    for p, q in zip(model.parameters(), into.parameters()):
        assert p.data.tobytes() == q.data.tobytes()
    with zipfile.ZipFile(path) as z:  # plain .npy members, no pickle anywhere
        assert sorted(z.namelist()) == sorted([f"{n}.npy" for n, _ in model.named_parameters()]
                                              + ["__elman__.npy"])


def test_loaded_model_computes_the_same(tmp_path):
    m = elman.RNN(3, 5, num_layers=2, seed=0)
    elman.save(m, tmp_path / "m")
    m2 = elman.load(tmp_path / "m")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    out, h_n = m(x)
    out2, h_n2 = m2(x)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _entries(model, **changes):
    meta = {"format": "elman", "version": 1, "class": type(model).__name__, "config": model._config()}
    arrays = {n: p.data.copy() for n, p in model.named_parameters()}
    arrays["__elman__"] = np.array(json.dumps(meta))
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    return arrays


def _meta(model, **changes):
    meta = {"format": "elman", "version": 1, "class": type(model).__name__, "config": model._config()}
    meta.update(changes)
    return np.array(json.dumps(meta))


BAD_FILES = {
    "missing key": (lambda m: _entries(m, weight_hh_l0=None), ValueError,
                    r"missing keys \['weight_hh_l0'\], unexpected keys \[\]"),
    "unexpected key": (lambda m: _entries(m, extra=np.zeros(3, np.float32)), ValueError,
                       r"missing keys \[\], unexpected keys \['extra'\]"),
    "wrong shape": (lambda m: _entries(m, bias_ih_l0=np.zeros(5, np.float32)), ValueError,
                    r"key 'bias_ih_l0' has shape \(5,\), expected \(4,\)"),
    "wrong dtype": (lambda m: _entries(m, weight_ih_l0=np.zeros((4, 3))), TypeError,
                    "key 'weight_ih_l0' has dtype float64, expected float32"),
    "object array": (lambda m: _entries(m, weight_ih_l0=np.array([None] * 12, object).reshape(4, 3)),
                     ValueError, "key 'weight_ih_l0' is unreadable .*allow_pickle=False"),
    "no config": (lambda m: _entries(m, __elman__=None), ValueError,
                  "missing key '__elman__' .*not written by elman.save"),
    "config not JSON": (lambda m: _entries(m, __elman__=np.array("{not json")), ValueError,
                        "key '__elman__' is invalid: Expecting property name"),
    "config a number array": (lambda m: _entries(m, __elman__=np.zeros(3)), ValueError,
                              "key '__elman__' is invalid: expected a JSON string"),
    "config of another format": (lambda m: _entries(m, __elman__=_meta(m, format="keras")), ValueError,
                                 "not an elman configuration"),
    "config of a future version": (lambda m: _entries(m, __elman__=_meta(m, version=2)), ValueError,
                                   "format version 2, this elman reads version 1"),
    "config of an unknown class": (lambda m: _entries(m, __elman__=_meta(m, **{"class": "LSTM"})),
                                   ValueError, "unknown class 'LSTM'"),
    "config with bad values": (lambda m: _entries(m, __elman__=_meta(m, config=dict(m._config(), hidden_size=-4))),
                               ValueError, "differs from the module .*hidden_size: file -4, module 4"),
    "config of another size": (lambda m: _entries(m, __elman__=_meta(m, config=dict(m._config(), hidden_size=5))),
                               ValueError, "the stored RNN differs from the module .*hidden_size: file 5, module 4"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_raises_naming_file_and_key_and_changes_nothing(tmp_path, kind):
    make, exc, match = BAD_FILES[kind]
    m = elman.RNN(3, 4, seed=0)
    path = tmp_path / f"{kind.replace(' ', '_')}.elman"
    _write(path, make(m))
    target = elman.RNN(3, 4, seed=1)
    before = {n: p.data.copy() for n, p in target.named_parameters()}
    with pytest.raises(exc, match=match) as info:
        elman.load(path, into=target)
    assert str(path) in str(info.value)
    for n, p in target.named_parameters():
        assert p.data.tobytes() == before[n].tobytes(), n
    if kind != "config of another size":  # that one is a fine file for a new module
        with pytest.raises((ValueError, TypeError), match=str(path).replace("\\", "\\\\")):
            elman.load(path)


@pytest.mark.bad_input
def test_every_truncation_and_every_flipped_byte_is_refused_or_harmless(tmp_path):
    """Every prefix of a saved file, and the file with any one byte changed: either an error that
    names the file (ValueError) and a model left as it was, or (a byte of zip bookkeeping that
    nothing reads) exactly the saved parameters. Never a wrong model."""
    m = elman.RNN(1, 2, seed=0)
    good = tmp_path / "good.elman"
    elman.save(m, good)
    raw = good.read_bytes()
    saved = [p.data.tobytes() for p in m.parameters()]
    target = elman.RNN(1, 2, seed=1)
    before = [p.data.tobytes() for p in target.parameters()]
    bad = tmp_path / "bad.elman"
    refused = harmless = 0
    variants = [raw[:n] for n in range(len(raw))]
    for i in range(len(raw)):  # one bit per byte, a different bit from byte to byte
        variants.append(raw[:i] + bytes([raw[i] ^ (1 << (i % 8))]) + raw[i + 1:])
    for data in variants:
        bad.write_bytes(data)
        try:
            elman.load(bad, into=target)
        except ValueError as exc:
            assert str(bad) in str(exc)
            assert [p.data.tobytes() for p in target.parameters()] == before
            refused += 1
        else:
            assert [p.data.tobytes() for p in target.parameters()] == saved
            harmless += 1
            for p, b in zip(target.parameters(), before):  # back to the sentinel state
                p.data[...] = np.frombuffer(b, p.dtype).reshape(p.shape)
    assert refused > len(raw)  # every truncation at least


def test_invalid_configuration_for_a_new_module(tmp_path):
    m = elman.RNN(3, 4, seed=0)
    path = tmp_path / "m.elman"
    _write(path, _entries(m, __elman__=_meta(m, config=dict(m._config(), hidden_size=-4))))
    with pytest.raises(ValueError, match=r"m.elman: key '__elman__' holds an invalid RNN configuration "
                                         r"\(hidden_size must be greater than zero, got -4\)"):
        elman.load(path)
    _write(path, _entries(m, __elman__=_meta(m, config=dict(m._config(), colour="red"))))
    with pytest.raises(ValueError, match="unexpected keyword argument 'colour'"):
        elman.load(path)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        elman.load(tmp_path / "nope.elman")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        elman.load(3)
    with pytest.raises(TypeError, match="module must be one of elman's RNN, RNNCell, Linear, Embedding, got dict"):
        elman.save({}, tmp_path / "x")
    elman.save(elman.Linear(2, 2), tmp_path / "lin")
    with pytest.raises(TypeError, match="into must be an elman module, got str"):
        elman.load(tmp_path / "lin", into="model")
    with pytest.raises(ValueError, match="holds a Linear, cannot load it into a RNN"):
        elman.load(tmp_path / "lin", into=elman.RNN(2, 2))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not a readable elman file"):
        elman.load(tmp_path / "plain.npy")


def test_save_replaces_an_existing_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "m.elman"
    first = elman.RNN(2, 3, seed=0)
    elman.save(first, path)
    original = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full (injected)")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        elman.save(elman.RNN(2, 3, seed=1), path)
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["m.elman"]  # the temporary file was removed


def test_load_into_read_only_parameter_changes_nothing(tmp_path):
    src = elman.RNN(2, 3, seed=0)
    elman.save(src, tmp_path / "m")
    target = elman.RNN(2, 3, seed=1)
    before = [p.data.copy() for p in target.parameters()]
    target.bias_hh_l0.data.flags.writeable = False
    with pytest.raises(ValueError, match="cannot load into 'bias_hh_l0': the parameter is read-only"):
        elman.load(tmp_path / "m", into=target)
    for p, b in zip(target.parameters(), before):
        np.testing.assert_array_equal(p.data, b)
