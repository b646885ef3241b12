"""elman.torch.RNN / RNNCell as drop-ins for torch.nn.RNN / RNNCell: parity of outputs and every
gradient on random configurations, gradcheck, a training trajectory, errors, module behaviour
(state_dict, init, save/load, conversions) and the fallback to torch's own implementation."""

import io
import itertools
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import assert_close, max_abs

torch = pytest.importorskip("torch")
import elman.torch as et  # noqa: E402  (needs torch)
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

NP = {torch.float32: np.float32, torch.float64: np.float64}


def kernel_nodes(t):
    """How many elman autograd nodes (one per layer) the graph behind ``t`` holds."""
    seen, stack, n = set(), [t.grad_fn], 0
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        n += type(f).__name__ == "_LayerBackward"
        stack.extend(g for g, _ in f.next_functions)
    return n


def pair(cls_kwargs, dtype, cell=False, seed=0):
    """(torch module, elman.torch module) with the same parameters."""
    torch.manual_seed(seed)
    tm = (torch.nn.RNNCell if cell else torch.nn.RNN)(**cls_kwargs, dtype=dtype)
    em = (et.RNNCell if cell else et.RNN)(**cls_kwargs, dtype=dtype)
    em.load_state_dict(tm.state_dict())
    return tm, em


# ----------------------------------------------------------------------------- RNN parity
AXES = dict(layers=[1, 2, 3], bidirectional=[False, True], mode=["batched", "unbatched", "packed"],
            nonlinearity=["tanh", "relu"], bias=[True, False], batch_first=[False, True],
            h0=[False, True], dropout=[0.0, 0.4])


def _sample_configs(n, seed):
    """n distinct random points of the full product of AXES (every value of every axis appears,
    checked by test_parity_matrix_covers_every_feature), each with random sizes and lengths."""
    full = list(itertools.product(*AXES.values()))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(full), n, replace=False)
    configs = []
    for i in picks:
        c = dict(zip(AXES, full[i]))
        c.update(T=int(rng.choice([1, 2, 7])), B=int(rng.choice([1, 3, 5])),
                 I=int(rng.choice([1, 4, 7])), H=int(rng.choice([1, 3, 8])), seed=int(i))
        configs.append(c)
    return configs


CONFIGS = _sample_configs(60, seed=2024)


def test_parity_matrix_covers_every_feature():
    for axis, values in AXES.items():
        assert {c[axis] for c in CONFIGS} == set(values), axis


def _run_rnn(m, c, x, h0, lengths, g_out, g_hn):
    xx = x.clone().requires_grad_()
    hh = None if h0 is None else h0.clone().requires_grad_()
    inp = xx
    if lengths is not None:
        inp = pack_padded_sequence(xx, lengths, batch_first=c["batch_first"], enforce_sorted=False)
    torch.manual_seed(99)  # dropout masks: both modules call torch.dropout in the same order
    out, h_n = m(inp) if hh is None else m(inp, hh)
    packed_out = out
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=c["batch_first"], total_length=c["T"])
    ((out * g_out).sum() + (h_n * g_hn).sum()).backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    return packed_out, out, h_n, xx.grad, None if hh is None else hh.grad, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_rnn_matches_torch(c, dtype):
    L, D = c["layers"], 2 if c["bidirectional"] else 1
    kwargs = dict(input_size=c["I"], hidden_size=c["H"], num_layers=L,
                  nonlinearity=c["nonlinearity"], bias=c["bias"], batch_first=c["batch_first"],
                  dropout=c["dropout"], bidirectional=c["bidirectional"])
    with warnings.catch_warnings():  # dropout with num_layers=1 warns, in both modules alike
        warnings.simplefilter("ignore", UserWarning)
        tm, em = pair(kwargs, dtype, seed=c["seed"])
    g = torch.Generator().manual_seed(c["seed"])
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    if c["mode"] == "unbatched":
        x_shape, h_shape, B = (T, I), (L * D, H), None
    else:
        x_shape = (B, T, I) if c["batch_first"] else (T, B, I)
        h_shape = (L * D, B, H)
    x = torch.randn(x_shape, generator=g, dtype=dtype)
    h0 = torch.randn(h_shape, generator=g, dtype=dtype) if c["h0"] else None
    lengths = None
    if c["mode"] == "packed":
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T  # pad_packed's length is T
    out_shape = x_shape[:-1] + (D * H,)
    g_out = torch.randn(out_shape, generator=g, dtype=dtype)
    if lengths is not None:  # positions past a length are not outputs
        steps = torch.arange(T)[None, :] if c["batch_first"] else torch.arange(T)[:, None]
        lens = lengths[:, None] if c["batch_first"] else lengths[None, :]
        g_out = g_out * (steps < lens)[..., None]
    g_hn = torch.randn(h_shape, generator=g, dtype=dtype)

    t_res = _run_rnn(tm, c, x, h0, lengths, g_out, g_hn)
    e_res = _run_rnn(em, c, x, h0, lengths, g_out, g_hn)
    dt = NP[dtype]
    # the kernels ran: one autograd node for the stack, one per layer when dropout runs between
    assert kernel_nodes(e_res[2]) == (L if c["dropout"] > 0 else 1)
    if lengths is not None:
        for a, b in zip(t_res[0][1:], e_res[0][1:]):  # batch_sizes, sorted / unsorted indices
            assert torch.equal(a, b)
    for what, i in (("out", 1), ("h_n", 2), ("grad_x", 3), ("grad_h0", 4)):
        if t_res[i] is None:
            assert e_res[i] is None
            continue
        assert e_res[i].shape == t_res[i].shape and e_res[i].dtype == t_res[i].dtype, what
        assert_close(e_res[i].detach().numpy(), t_res[i].detach().numpy(), dt, what=what)
    scale = max_abs(*(v.numpy() for v in t_res[5].values()))
    for name, tg in t_res[5].items():
        assert_close(e_res[5][name].numpy(), tg.numpy(), dt, "weight", name, scale)


# ----------------------------------------------------------------------------- RNNCell parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False), ("relu", True)])
@pytest.mark.parametrize("batched,with_h", [(True, True), (True, False), (False, True), (False, False)])
def test_rnn_cell_matches_torch(dtype, nonlinearity, bias, batched, with_h, monkeypatch):
    tm, em = pair(dict(input_size=5, hidden_size=7, bias=bias, nonlinearity=nonlinearity), dtype,
                  cell=True, seed=3)
    g = torch.Generator().manual_seed(4)
    lead = (3,) if batched else ()
    x = torch.randn(lead + (5,), generator=g, dtype=dtype)
    h = torch.randn(lead + (7,), generator=g, dtype=dtype) if with_h else None
    g1 = torch.randn(lead + (7,), generator=g, dtype=dtype)
    res = []
    for m in (tm, em):
        xx = x.clone().requires_grad_()
        hh = None if h is None else h.clone().requires_grad_()
        h1 = m(xx, hh)
        (h1 * g1).sum().backward()
        res.append((h1, xx.grad, None if hh is None else hh.grad,
                    {n: p.grad for n, p in m.named_parameters()}))
    (t1, tgx, tgh, tgw), (e1, egx, egh, egw) = res
    dt = NP[dtype]
    # a step autograd records is torch's own cell (RNNCell's docstring: faster than a node)
    assert kernel_nodes(e1) == 0 and e1.shape == t1.shape
    steps = []
    real_step = et.F.rnn_cell_step
    monkeypatch.setattr(et.F, "rnn_cell_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    with torch.no_grad():  # without gradients: elman's fused step
        e0, t0 = em(x, h), tm(x, h)
    assert steps == [1] and e0.grad_fn is None
    assert_close(e0.numpy(), t0.numpy(), dt, what="h1 without gradients")
    assert_close(e1.detach().numpy(), t1.detach().numpy(), dt, what="h1")
    assert_close(egx.numpy(), tgx.numpy(), dt, what="grad_x")
    if with_h:
        assert_close(egh.numpy(), tgh.numpy(), dt, what="grad_h")
    scale = max_abs(*(v.numpy() for v in tgw.values()))
    for name, tg in tgw.items():
        assert_close(egw[name].numpy(), tg.numpy(), dt, "weight", name, scale)


# ----------------------------------------------------------------------------- gradcheck
def _functional(m):
    names = [n for n, _ in m.named_parameters()]

    def f(*args):
        n_in = len(args) - len(names)
        return torch.func.functional_call(m, dict(zip(names, args[n_in:])), args[:n_in])
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    return f, params


@pytest.mark.parametrize("mode", ["batched", "batch_first_packed"])
def test_rnn_gradcheck_float64(mode):
    torch.manual_seed(0)
    bf = mode != "batched"
    m = et.RNN(3, 4, num_layers=2, bidirectional=True, batch_first=bf, dtype=torch.float64)
    f, params = _functional(m)
    x = torch.randn((3, 5, 3) if bf else (5, 3, 3), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    if mode == "batched":
        fn = f
    else:
        lengths = torch.tensor([2, 5, 3])

        def fn(x, h0, *ps):
            out, h_n = f(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False),
                         h0, *ps)
            return pad_packed_sequence(out, batch_first=True)[0], h_n
    assert kernel_nodes(fn(x, h0, *params)[0]) == 1  # the stack in one node
    assert torch.autograd.gradcheck(fn, (x, h0, *params))


def test_rnn_cell_gradcheck_float64():
    torch.manual_seed(0)
    m = et.RNNCell(3, 4, dtype=torch.float64)
    f, params = _functional(m)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert kernel_nodes(f(x, h, *params)) == 0  # recorded steps run torch's own cell
    assert torch.autograd.gradcheck(f, (x, h, *params))


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_trajectory_matches_torch(dtype, optimizer):
    """K steps of forward, loss, backward, clip_grad_norm_ and an optimizer step from the same
    weights and data: the same loss at every step and the same final parameters."""
    K, T, B, I, H = 15, 12, 8, 3, 10
    kwargs = dict(input_size=I, hidden_size=H, num_layers=2, batch_first=True, dropout=0.2)
    tm, em = pair(kwargs, dtype, seed=5)
    torch.manual_seed(6)
    head = torch.nn.Linear(H, 1, dtype=dtype)
    heads = [head, torch.nn.Linear(H, 1, dtype=dtype)]
    heads[1].load_state_dict(head.state_dict())
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, I, generator=g, dtype=dtype)
    y = x[:, :, 0].mean(dim=1, keepdim=True)  # one fixed batch: the loss must go down
    losses = {}
    for name, rnn, hd in (("torch", tm, heads[0]), ("elman", em, heads[1])):
        params = list(rnn.parameters()) + list(hd.parameters())
        opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(params, lr=0.01))
        torch.manual_seed(8)
        traj = []
        for k in range(K):
            opt.zero_grad()
            _, h_n = rnn(x)
            loss = torch.nn.functional.mse_loss(hd(h_n[-1]), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
            traj.append(loss.item())
        losses[name] = traj
    dt = NP[dtype]
    # float32: K steps of updates compound the per-step rounding; still within the output tol.
    assert_close(losses["elman"], losses["torch"], dt, what="loss trajectory")
    for (n, tp), (_, ep) in zip(tm.named_parameters(), em.named_parameters()):
        assert_close(ep.detach().numpy(), tp.detach().numpy(), dt, what=n)
    assert losses["torch"][-1] < 0.5 * losses["torch"][0]  # it did train


# ----------------------------------------------------------------------------- errors
def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever was raised
        return type(exc), str(exc)
    return None


def _same_error(torch_fn, elman_fn):
    expected = _error(torch_fn)
    assert expected is not None
    assert _error(elman_fn) == expected


RNN_BAD_INPUTS = {
    "4-D input": (torch.randn(2, 5, 3, 4), None),
    "1-D input": (torch.randn(4), None),
    "batched input, 2-D hx": (torch.randn(5, 3, 4), torch.randn(3, 6)),
    "unbatched input, 3-D hx": (torch.randn(5, 4), torch.randn(1, 3, 6)),
    "wrong input_size": (torch.randn(5, 3, 7), None),
    "wrong hx batch": (torch.randn(5, 3, 4), torch.randn(1, 2, 6)),
    "wrong hx layers": (torch.randn(5, 3, 4), torch.randn(2, 3, 6)),
    "wrong unbatched hx": (torch.randn(5, 4), torch.randn(1, 5)),
    "dtype mismatch": (torch.randn(5, 3, 4, dtype=torch.float64), None),
    "hx dtype mismatch": (torch.randn(5, 3, 4), torch.randn(1, 3, 6, dtype=torch.float64)),
    "zero time steps": (torch.randn(0, 3, 4), None),
    "packed, wrong hx": (pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 2, 3]),
                                              enforce_sorted=False), torch.randn(1, 2, 6)),
    "packed, wrong input_size": (pack_padded_sequence(torch.randn(5, 3, 2), torch.tensor([5, 2, 3]),
                                                      enforce_sorted=False), None),
}


@pytest.mark.parametrize("case", list(RNN_BAD_INPUTS))
def test_rnn_bad_input_raises_torchs_error(case):
    tm, em = pair(dict(input_size=4, hidden_size=6), torch.float32)
    x, hx = RNN_BAD_INPUTS[case]
    _same_error(lambda: tm(x, hx), lambda: em(x, hx))


CELL_BAD_INPUTS = {
    "3-D input": (torch.randn(2, 3, 4), None),
    "3-D hidden": (torch.randn(3, 4), torch.randn(1, 3, 6)),
    "wrong input_size": (torch.randn(3, 5), None),
    "wrong hidden_size": (torch.randn(3, 4), torch.randn(3, 7)),
    "batch mismatch": (torch.randn(3, 4), torch.randn(5, 6)),
    "unbatched input, batched hidden": (torch.randn(4), torch.randn(2, 6)),
    "dtype mismatch": (torch.randn(3, 4, dtype=torch.float64), None),
}


@pytest.mark.parametrize("case", list(CELL_BAD_INPUTS))
def test_rnn_cell_bad_input_raises_torchs_error(case):
    tm, em = pair(dict(input_size=4, hidden_size=6), torch.float32, cell=True)
    x, hx = CELL_BAD_INPUTS[case]
    _same_error(lambda: tm(x, hx), lambda: em(x, hx))


@pytest.mark.parametrize("args,kwargs", [
    ((4, 6), dict(nonlinearity="sigmoid")),
    ((4, 6), dict(proj_size=2)),
    ((4, 6), dict(dropout=1.5)),
    ((4, 6), dict(dropout=True)),
    ((4, 6.0), {}),
    ((4, 0), {}),
    ((4, 6), dict(num_layers=0)),
])
def test_rnn_bad_constructor_raises_torchs_error(args, kwargs):
    _same_error(lambda: torch.nn.RNN(*args, **kwargs), lambda: et.RNN(*args, **kwargs))


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="dropout option adds dropout after all but last"):
        et.RNN(4, 6, dropout=0.5)


# ----------------------------------------------------------------------------- module behaviour
def test_same_parameters_init_state_dict_and_repr_as_torch():
    for kwargs in (dict(num_layers=3, bidirectional=True, bias=False),
                   dict(num_layers=2, nonlinearity="relu", batch_first=True, dropout=0.25)):
        torch.manual_seed(11)
        tm = torch.nn.RNN(5, 7, **kwargs)
        torch.manual_seed(11)
        em = et.RNN(5, 7, **kwargs)
        assert repr(em) == repr(tm) and isinstance(em, torch.nn.RNN)
        ts, es = tm.state_dict(), em.state_dict()
        assert list(es) == list(ts)
        for k in ts:  # the same init code consumes the same random numbers
            assert torch.equal(es[k], ts[k]), k
    torch.manual_seed(12)
    tc = torch.nn.RNNCell(5, 7, nonlinearity="relu")
    torch.manual_seed(12)
    ec = et.RNNCell(5, 7, nonlinearity="relu")
    assert repr(ec) == repr(tc)
    assert all(torch.equal(a, b) for a, b in zip(ec.state_dict().values(), tc.state_dict().values()))


def test_torch_save_load_module_and_state_dict():
    torch.manual_seed(0)
    em = et.RNN(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    buf = io.BytesIO()
    torch.save(em, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is et.RNN
    out, h_n = loaded(x)
    assert kernel_nodes(out) == 1
    assert torch.equal(out, em(x)[0]) and torch.equal(h_n, em(x)[1])
    buf = io.BytesIO()
    torch.save(em.state_dict(), buf)
    buf.seek(0)
    tm = torch.nn.RNN(3, 5, num_layers=2, bidirectional=True)
    tm.load_state_dict(torch.load(buf))
    assert_close(tm(x)[0].detach().numpy(), out.detach().numpy(), np.float32)


def test_from_torch_shares_or_copies_and_to_torch():
    torch.manual_seed(0)
    tm = torch.nn.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True).eval()
    shared = et.RNN.from_torch(tm)
    assert type(shared) is et.RNN and not shared.training and shared.nonlinearity == "relu"
    assert all(a is b for a, b in zip(shared.parameters(), tm.parameters()))
    with torch.no_grad():
        tm.weight_hh_l1.mul_(0.5)  # seen by both: the same tensor
    x = torch.randn(2, 5, 3)
    assert_close(shared(x)[0].detach().numpy(), tm(x)[0].detach().numpy(), np.float32)
    copied = et.RNN.from_torch(tm, copy=True)
    assert all(a is not b and a.data_ptr() != b.data_ptr() and torch.equal(a, b)
               for a, b in zip(copied.parameters(), tm.parameters()))
    with torch.no_grad():
        tm.weight_hh_l1.zero_()
    assert not torch.equal(copied.weight_hh_l1, tm.weight_hh_l1)
    back = copied.to_torch()
    assert type(back) is torch.nn.RNN and back.weight_ih_l0 is copied.weight_ih_l0
    assert_close(back(x)[0].detach().numpy(), copied(x)[0].detach().numpy(), np.float32)
    assert et.RNN.from_torch(tm).to_torch(copy=True).weight_ih_l0 is not tm.weight_ih_l0
    tc = torch.nn.RNNCell(3, 4, bias=False)
    ec = et.RNNCell.from_torch(tc)
    assert type(ec) is et.RNNCell and ec.weight_ih is tc.weight_ih and not ec.bias
    assert type(ec.to_torch(copy=True)) is torch.nn.RNNCell
    with pytest.raises(TypeError, match="expects a torch.nn.RNN, got RNNCell"):
        et.RNN.from_torch(tc)
    with pytest.raises(TypeError, match="expects a torch.nn.RNNCell, got RNN"):
        et.RNNCell.from_torch(tm)


def test_shared_module_trains_with_an_existing_optimizer():
    """Swapping a model's torch.nn.RNN for from_torch(it) keeps its optimizer working."""
    torch.manual_seed(0)
    tm = torch.nn.RNN(3, 4)
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    em = et.RNN.from_torch(tm)
    before = tm.weight_hh_l0.detach().clone()
    em(torch.randn(5, 2, 3))[1].sum().backward()
    opt.step()
    assert not torch.equal(before, tm.weight_hh_l0)


def test_kernels_get_zero_copy_views_one_call_per_layer_and_direction(monkeypatch):
    torch.manual_seed(0)
    em = et.RNN(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3, requires_grad=True)
    calls = {"forward": 0, "backward": 0}
    params = [p.detach().numpy() for p in em.parameters()]
    cpu = et.F._backend.resolve("cpu")  # the backend object every layer loop calls
    real_fwd, real_bwd = cpu.forward_calls, cpu.backward_calls

    def fwd(many):  # the two directions of a layer come in one forward_calls
        for x_, w_ih, w_hh, b_ih, b_hh, *_ in many:
            calls["forward"] += 1
            for w in (w_ih, w_hh, b_ih, b_hh):  # the parameters' own memory, not a copy
                assert any(w is not None and np.shares_memory(w, p) for p in params)
        return real_fwd(many)

    def bwd(many):
        calls["backward"] += len(many)
        return real_bwd(many)
    monkeypatch.setattr(cpu, "forward_calls", fwd)
    monkeypatch.setattr(cpu, "backward_calls", bwd)
    out, h_n = em(x)
    (out.sum() + h_n.sum()).backward()
    assert calls == {"forward": 4, "backward": 4}  # 2 layers x 2 directions, whole sequence each


def test_no_grad_and_inference_mode_give_the_same_numbers():
    torch.manual_seed(0)
    em = et.RNN(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    out, h_n = em(x)
    with torch.no_grad():
        o2, h2 = em(x)
    with torch.inference_mode():
        o3, h3 = em(x)
    assert o2.grad_fn is None and torch.equal(out, o2) and torch.equal(h_n, h2)
    assert torch.equal(out, o3) and torch.equal(h_n, h3)


def test_eval_mode_turns_dropout_off_and_train_mode_on():
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=3, dropout=0.5), torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    tm.eval()
    em.eval()
    assert_close(em(x)[0].detach().numpy(), tm(x)[0].detach().numpy(), np.float64)
    em.train()
    torch.manual_seed(1)
    a = em(x)[0]
    torch.manual_seed(2)
    assert not torch.equal(a, em(x)[0])


def test_gradient_paths_one_at_a_time():
    """Only h_n used, only out used, grads wanted for the weights only: all as torch."""
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for use in ("h_n", "out"):
        for m in (tm, em):
            m.zero_grad()
            out, h_n = m(x)
            (h_n if use == "h_n" else out).square().sum().backward()
        for (n, tp), (_, ep) in zip(tm.named_parameters(), em.named_parameters()):
            assert_close(ep.grad.numpy(), tp.grad.numpy(), np.float64, "weight", n)


def test_non_contiguous_input_and_hidden():
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=2), torch.float64)
    x = torch.randn(3, 5, 6, dtype=torch.float64)[:, :, ::2].transpose(0, 1)  # (5, 3, 3) strided
    h0 = torch.randn(3, 2, 4, dtype=torch.float64).transpose(0, 1)
    for a, b in zip(tm(x, h0), em(x, h0)):
        assert_close(b.detach().numpy(), a.detach().numpy(), np.float64)


@pytest.mark.parametrize("cell", [False, True])
def test_parametrized_weights_are_used(cell):
    """A parametrization (weight_norm here) replaces a parameter by a computed tensor."""
    name = "weight_hh" if cell else "weight_hh_l0"
    tm, em = pair(dict(input_size=3, hidden_size=4), torch.float64, cell=cell)
    for m in (tm, em):
        torch.nn.utils.parametrizations.weight_norm(m, name)
    x = torch.randn(2, 3, dtype=torch.float64) if cell else torch.randn(5, 2, 3, dtype=torch.float64)
    outs = []
    for m in (tm, em):
        out = m(x)
        out = out if cell else out[0]
        outs.append(out)
        out.square().sum().backward()
    assert kernel_nodes(outs[1]) == (0 if cell else 1)  # a recorded cell step: torch's cell
    assert_close(outs[1].detach().numpy(), outs[0].detach().numpy(), np.float64)
    if cell:
        with torch.no_grad():  # elman's fused step reads the parametrized weight too
            assert_close(em(x).numpy(), tm(x).numpy(), np.float64)
    for (n, tp), (_, ep) in zip(tm.named_parameters(), em.named_parameters()):
        assert_close(ep.grad.numpy(), tp.grad.numpy(), np.float64, "weight", n)


def test_module_dtype_conversion_uses_the_kernels():
    torch.manual_seed(0)
    em = et.RNN(3, 4).double()
    out, _ = em(torch.randn(5, 2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and kernel_nodes(out) == 1


@pytest.mark.parametrize("mode", ["batched", "packed"])
def test_rnn_gradgradcheck_float64(mode):
    """create_graph=True (gradient penalties, Hessian-vector products) is exact too."""
    torch.manual_seed(0)
    m = et.RNN(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    f, params = _functional(m)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    if mode == "batched":
        fn = f
    else:
        def fn(x, h0, *ps):
            out, h_n = f(pack_padded_sequence(x, torch.tensor([2, 4, 1]), enforce_sorted=False),
                         h0, *ps)
            return pad_packed_sequence(out)[0], h_n
    assert torch.autograd.gradgradcheck(fn, (x, h0, *params))


def test_rnn_cell_gradgradcheck_float64():
    torch.manual_seed(0)
    f, params = _functional(et.RNNCell(2, 3, nonlinearity="tanh", dtype=torch.float64))
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, h, *params))


def test_gradient_penalty_matches_torch():
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=2), torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for m in (tm, em):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xx)[0].sin().sum(), xx, create_graph=True)
        gx.square().sum().backward()
    for (n, tp), (_, ep) in zip(tm.named_parameters(), em.named_parameters()):
        assert_close(ep.grad.numpy(), tp.grad.numpy(), np.float64, "weight", n)


# ----------------------------------------------------------------------------- fallback
def test_bfloat16_falls_back_to_torch_exactly():
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    for a, b in zip(tm(x), em(x)):
        assert torch.equal(a, b) and kernel_nodes(b) == 0
    tc, ec = pair(dict(input_size=3, hidden_size=4), torch.bfloat16, cell=True)
    assert torch.equal(tc(x[0]), ec(x[0]))


def test_other_device_falls_back_to_torch():
    """A device the kernels do not run on (meta here; CUDA alike) goes through torch."""
    em = et.RNN(3, 4, num_layers=2, bidirectional=True, device="meta")
    out, h_n = em(torch.empty(5, 2, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (5, 2, 8) and h_n.shape == (4, 2, 4)
    ec = et.RNNCell(3, 4, device="meta")
    assert ec(torch.empty(2, 3, device="meta")).shape == (2, 4)


def test_torch_transforms_and_tracing_fall_back_to_torch():
    tm, em = pair(dict(input_size=3, hidden_size=4), torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    jt = torch.func.jacrev(lambda v: tm(v)[1].sum())(x)
    je = torch.func.jacrev(lambda v: em(v)[1].sum())(x)
    assert torch.equal(jt, je)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warnings
        traced = torch.jit.trace(em, (x,))
    assert torch.equal(traced(x)[0], tm(x)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(em(x)[0], tm(x)[0])


def test_torch_compile_runs_torchs_implementation():
    tm, em = pair(dict(input_size=3, hidden_size=4, num_layers=2, batch_first=True), torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    compiled = torch.compile(em, backend="aot_eager")
    out, h_n = compiled(x)
    assert torch.equal(out, tm(x)[0]) and torch.equal(h_n, tm(x)[1])
    h_n.sum().backward()
    tc, ec = pair(dict(input_size=3, hidden_size=4), torch.float64, cell=True)
    assert torch.equal(torch.compile(ec, backend="aot_eager", fullgraph=True)(x[0]), tc(x[0]))


def test_empty_batch_behaves_as_torch():
    tm, em = pair(dict(input_size=3, hidden_size=4), torch.float32)
    x = torch.randn(5, 0, 3)
    assert em(x)[0].shape == tm(x)[0].shape == (5, 0, 4)


def test_docs_drop_in_example_runs(tmp_path, monkeypatch):
    readme = pathlib.Path(__file__).resolve().parents[1] / "docs" / "torch.md"
    if not readme.exists():
        pytest.skip("docs/ is not next to the tests")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
              if "import elman.torch" in b]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        ns = {}
        exec(compile(block, "docs/torch.md elman.torch example", "exec"), ns)
    assert kernel_nodes(ns["out"]) == 1 and ns["out"].shape == (16, 50, 32)
    plain = torch.nn.RNN(8, 32, num_layers=2, batch_first=True)
    plain.load_state_dict(torch.load(tmp_path / "rnn.pt"))  # as the comment there says
    assert torch.equal(plain.weight_hh_l1, ns["rnn"].weight_hh_l1)


def test_import_elman_does_not_import_torch():
    code = "import sys, elman; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
