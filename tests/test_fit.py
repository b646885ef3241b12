"""elman.fit / elman.training: the same numbers as the explicit loop it replaces, its batches,
evaluation schedule, divergence handling and argument errors; and `import elman` stays free
of tqdm and matplotlib."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import elman
from elman.training import batch_indices


class _LastState:
    """RNN -> last state -> Linear, the many-to-one pattern of the examples."""

    def __init__(self, seed=0):
        self.rnn = elman.RNN(3, 8, seed=seed)
        self.head = elman.Linear(8, 2, seed=seed + 1)

    def parameters(self):
        return self.rnn.parameters() + self.head.parameters()

    def forward(self, x):                       # (B, T, 3)
        _, h_n = self.rnn(x.transpose(1, 0, 2))
        return self.head(h_n[-1])

    def backward(self, g):
        self.rnn.backward(grad_h_n=self.head.backward(g)[None])


def _data(n=50, T=6):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, T, 3)).astype(np.float32)
    return x, (x[:, 0, 0] > 0).astype(np.int64)


def test_fit_equals_the_explicit_loop():
    """Bitwise the same parameters and losses as the hand-written loop over the same
    batches (fit adds nothing to the arithmetic)."""
    x, y = _data()
    a, b = _LastState(), _LastState()
    loss_a, loss_b = elman.CrossEntropyLoss(), elman.CrossEntropyLoss()
    opt_a = elman.SGD(a.parameters(), lr=0.1, momentum=0.9, clip_norm=0.5)
    opt_b = elman.SGD(b.parameters(), lr=0.1, momentum=0.9, clip_norm=0.5)
    hist = elman.fit(a, loss_a, opt_a, (x, y), batch_size=16, epochs=3, seed=5,
                     progress=False)
    losses, norms = [], []
    for _, idx in batch_indices(len(x), 16, epochs=3, seed=5):
        opt_b.zero_grad()
        losses.append(loss_b(b.forward(x[idx]), y[idx]))
        b.backward(loss_b.backward())
        norms.append(opt_b.step())
    assert hist.loss == losses and hist.grad_norm == norms
    assert hist.steps == 3 * 4                              # ceil(50 / 16) = 4 per epoch
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert hist.seconds > 0 and hist.steps_per_second > 0
    assert hist.loss[-1] < hist.loss[0]


def test_batch_indices_cover_each_epoch_once():
    batches = list(batch_indices(10, 4, epochs=2, seed=1))
    assert [e for e, _ in batches] == [0, 0, 0, 1, 1, 1]
    assert [len(i) for _, i in batches] == [4, 4, 2] * 2
    for epoch in (0, 1):
        seen = np.concatenate([i for e, i in batches if e == epoch])
        np.testing.assert_array_equal(np.sort(seen), np.arange(10))
    assert [len(i) for _, i in batch_indices(10, 4, drop_last=True)] == [4, 4]
    np.testing.assert_array_equal(next(batch_indices(5, 5, shuffle=False))[1], np.arange(5))


def test_evaluation_schedule_and_max_steps():
    x, y = _data()
    m = _LastState()
    calls = []

    def evaluate():
        calls.append(1)
        return {"n": len(calls)}

    h = elman.fit(m, elman.CrossEntropyLoss(), elman.SGD(m.parameters(), lr=0.01), (x, y),
                  batch_size=10, epochs=3, evaluate=evaluate, progress=False)
    assert [s for s, _ in h.evals] == [5, 10, 15]           # end of each epoch, once
    steps, values = h.metric("n")
    np.testing.assert_array_equal(values, [1, 2, 3])
    np.testing.assert_array_equal(steps, [5, 10, 15])
    assert h.last("n") == 3 and np.isnan(h.last("missing"))
    seen = []
    h = elman.fit(m, elman.CrossEntropyLoss(), elman.SGD(m.parameters(), lr=0.01), (x, y),
                  batch_size=10, epochs=3, max_steps=7, evaluate=evaluate, eval_every=3,
                  on_step=lambda step, loss, norm: seen.append(step), progress=False)
    assert h.steps == 7 and seen == list(range(1, 8))
    assert [s for s, _ in h.evals] == [3, 6, 7]


def test_divergence_stops_with_a_warning():
    """A NaN loss (step 2), or an infinite gradient that makes SGD.step raise (step 1): fit
    stops, warns, records where, and the step that failed changed nothing."""
    x, y = _data()

    class NanAtThirdCall(elman.CrossEntropyLoss):
        calls = 0

        def __call__(self, pred, target, mask=None):
            self.calls += 1
            value = super().__call__(pred, target, mask)
            return float("nan") if self.calls == 3 else value

    m = _LastState()
    with pytest.warns(RuntimeWarning, match="step 2"):
        h = elman.fit(m, NanAtThirdCall(), elman.SGD(m.parameters(), lr=0.1), (x, y),
                      batch_size=10, progress=False)
    assert h.diverged_at == 2 and h.steps == 2

    class InfGradAtSecondStep(_LastState):
        calls = 0

        def backward(self, g):
            super().backward(g)
            self.calls += 1
            if self.calls == 2:
                self.head.weight.grad[0, 0] = np.inf

    m = InfGradAtSecondStep()
    with pytest.warns(RuntimeWarning, match="step 1"):
        h = elman.fit(m, elman.CrossEntropyLoss(), elman.SGD(m.parameters(), lr=0.1), (x, y),
                      batch_size=10, progress=False)
    assert h.diverged_at == 1 and h.steps == 1
    assert all(np.isfinite(p.data).all() for p in m.parameters())


@pytest.mark.parametrize("data,err,match", [
    ((np.zeros((4, 2)),), TypeError, "tuple or list of arrays"),
    (np.zeros((4, 2)), TypeError, "tuple or list of arrays"),
    ((np.zeros((4, 2)), np.zeros(3)), ValueError, r"data\[1\] must have 4 samples"),
])
def test_bad_data_is_named(data, err, match):
    m = _LastState()
    with pytest.raises(err, match=match):
        elman.fit(m, elman.MSELoss(), elman.SGD(m.parameters(), lr=0.1), data, batch_size=2)


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=0), "batch_size must be greater than zero"),
    (dict(batch_size=2.5), "batch_size must be an int"),
    (dict(batch_size=2, epochs=0), "epochs must be greater than zero"),
    (dict(batch_size=2, max_steps=-1), "max_steps must be greater than zero"),
])
def test_bad_sizes_are_named(kw, match):
    x, y = _data()
    m = _LastState()
    with pytest.raises((TypeError, ValueError), match=match):
        elman.fit(m, elman.CrossEntropyLoss(), elman.SGD(m.parameters(), lr=0.1), (x, y), **kw)


def test_import_elman_does_not_import_optional_packages():
    code = ("import sys, elman; bad = [m for m in ('tqdm', 'matplotlib', 'torch') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fit_runs_without_tqdm(monkeypatch):
    """A missing tqdm means no progress bar, not an error."""
    monkeypatch.setitem(sys.modules, "tqdm", None)          # makes `import tqdm` fail
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    x, y = _data()
    m = _LastState()
    h = elman.fit(m, elman.CrossEntropyLoss(), elman.SGD(m.parameters(), lr=0.1), (x, y),
                  batch_size=25, progress=True)
    assert h.steps == 2


def test_docs_fit_example_runs_and_learns():
    readme = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples.md"
    if not readme.exists():
        pytest.skip("docs/ is not next to the tests")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
              if "elman.fit(" in b]
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], "docs/examples.md fit example", "exec"), namespace)
    h = namespace["history"]
    assert h.steps == 30 * 32 and len(h.evals) == 30
    # The task of the first README example, held to the same bar (accuracy >= 0.9).
    assert h.last("accuracy") >= 0.9
