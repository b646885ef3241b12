"""SGD's hyper-parameters are checked on assignment as the constructor checks them: a refused
assignment raises the constructor's exception and message and leaves the optimizer as it was
(its next step is bitwise that of an untouched optimizer); an accepted one takes effect."""

import numpy as np
import pytest

import elman

pytestmark = pytest.mark.reliability

GOOD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=1.0, clip_value=0.5)

# (attribute, value, exception): each value is refused by the constructor too
BAD = [
    ("lr", float("nan"), ValueError), ("lr", float("inf"), ValueError), ("lr", -0.1, ValueError),
    ("lr", "0.1", TypeError), ("lr", True, TypeError), ("lr", None, TypeError),
    ("momentum", -0.5, ValueError), ("momentum", float("nan"), ValueError),
    ("momentum", 0.0, ValueError),  # with nesterov=True
    ("nesterov", 1, TypeError), ("nesterov", None, TypeError),
    ("weight_decay", float("-inf"), ValueError), ("weight_decay", [0.1], TypeError),
    ("clip_norm", float("nan"), ValueError), ("clip_norm", -1.0, ValueError),
    ("clip_value", 0.0, ValueError), ("clip_value", float("inf"), ValueError),
    ("error_if_nonfinite", "yes", TypeError),
]


def _model_and_grads():
    m = elman.RNN(3, 5, seed=0)
    rng = np.random.default_rng(0)
    for p in m.parameters():
        p.grad[...] = rng.standard_normal(p.shape).astype(p.dtype)
    return m


def _two_steps(opt, params):
    opt.step()
    opt.step()
    return [p.data.tobytes() for p in params]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,value,exc", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_refused_assignment_raises_as_the_constructor_and_changes_nothing(name, value, exc):
    with pytest.raises(exc) as by_constructor:
        elman.SGD(_model_and_grads().parameters(), **dict(GOOD, **{name: value}))
    m = _model_and_grads()
    opt = elman.SGD(m.parameters(), **GOOD)
    opt.step()  # momentum buffers exist: the refused assignment must keep them too
    before = {k: getattr(opt, k) for k in list(GOOD) + ["error_if_nonfinite"]}
    with pytest.raises(exc) as by_assignment:
        setattr(opt, name, value)
    assert str(by_assignment.value) == str(by_constructor.value)
    assert {k: getattr(opt, k) for k in before} == before
    twin = _model_and_grads()
    twin_opt = elman.SGD(twin.parameters(), **GOOD)
    twin_opt.step()
    assert _two_steps(opt, m.parameters()) == _two_steps(twin_opt, twin.parameters())
    assert all(np.isfinite(p.data).all() for p in m.parameters())


@pytest.mark.parametrize("name,value", [("lr", 0.5), ("lr", np.float32(0.25)), ("momentum", 0.5),
                                        ("weight_decay", 0.0), ("clip_norm", None),
                                        ("clip_norm", 0.01), ("clip_value", 0.001),
                                        ("nesterov", False)])
def test_accepted_assignment_takes_effect_as_in_the_constructor(name, value):
    m, twin = _model_and_grads(), _model_and_grads()
    opt = elman.SGD(m.parameters(), **GOOD)
    setattr(opt, name, value)
    twin_opt = elman.SGD(twin.parameters(), **dict(GOOD, **{name: value}))
    mine, theirs = getattr(opt, name), getattr(twin_opt, name)
    assert mine == theirs == value and type(mine) is type(theirs)  # np.float32 -> float
    assert _two_steps(opt, m.parameters()) == _two_steps(twin_opt, twin.parameters())


def test_nesterov_and_momentum_may_change_in_a_valid_order():
    opt = elman.SGD(_model_and_grads().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum > 0"):
        opt.nesterov = True
    opt.momentum = 0.9
    opt.nesterov = True
    assert (opt.momentum, opt.nesterov) == (0.9, True)
    opt.nesterov = False
    opt.momentum = 0.0
    assert (opt.momentum, opt.nesterov) == (0.0, False)
