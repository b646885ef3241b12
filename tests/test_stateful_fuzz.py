"""A stateful fuzzer over the public API: hypothesis drives random sequences of forward,
backward, SGD steps, zero_grad, save / load, load_state_dict, set_num_threads and optimizer
assignments on one elman.RNN, with random bad inputs and injected faults (read-only arrays, NaN
gradients, damaged files), and checks after every step: a failed call changes nothing
(parameters, gradients, momentum buffers, hyper-parameters and the thread count bitwise as
before, and the previous forward can still be back-propagated); a successful forward and
backward equal a twin module on the numpy backend (elman.reference) within conftest's tol();
files round-trip bit for bit."""

import os
import shutil
import struct
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

import elman
from conftest import assert_close, max_abs

CAP = elman.max_num_threads()
BAD_INPUT = (TypeError, ValueError)


@pytest.mark.bad_input
def test_load_into_a_module_refuses_a_backward_through_an_earlier_forward(tmp_path):
    """elman.load(path, into=m) writes m's parameters through the API, as load_state_dict
    does: a backward through a forward made before it would mix old activations with the new
    weights, so it raises (found by the fuzzer below)."""
    m = elman.RNN(3, 4, seed=0)
    elman.save(elman.RNN(3, 4, seed=1), tmp_path / "other.elman")
    out, _ = m(np.ones((2, 1, 3), np.float32))
    elman.load(tmp_path / "other.elman", into=m)
    with pytest.raises(RuntimeError, match="parameter weight_ih_l0 was changed"):
        m.backward(np.ones_like(out))
    assert all(not p.grad.any() for p in m.parameters())


class ElmanMachine(RuleBasedStateMachine):
    """One RNN under test, its twin on the numpy backend kept bitwise in step with it (same
    parameters and gradients after every rule), an SGD on it, and the forward (if any) that
    ``backward`` may still use."""

    @initialize(I=st.integers(1, 5), H=st.integers(1, 7), layers=st.integers(1, 2),
                bidir=st.booleans(), bias=st.booleans(), relu=st.booleans(),
                dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 1000),
                momentum=st.sampled_from([0.0, 0.5]))
    def build(self, I, H, layers, bidir, bias, relu, dtype, seed, momentum):
        self.config = dict(input_size=I, hidden_size=H, num_layers=layers, bidirectional=bidir,
                           bias=bias, nonlinearity="relu" if relu else "tanh", dtype=dtype)
        self.dtype, self.I, self.out_width = np.dtype(dtype), I, (2 if bidir else 1) * H
        self.rnn = elman.RNN(**self.config, seed=seed)
        self.twin = elman.RNN(**self.config, seed=seed, backend="numpy")
        self.opt = elman.SGD(self.rnn.parameters(), lr=0.05, momentum=momentum, clip_norm=5.0)
        self.twin_opt = elman.SGD(self.twin.parameters(), lr=0.05, momentum=momentum, clip_norm=5.0)
        self.pending = None  # (T, B) of the forward that backward would use
        self.folder = tempfile.mkdtemp(prefix="elman-fuzz-")
        self.threads = elman.get_num_threads()

    def teardown(self):
        if hasattr(self, "folder"):
            shutil.rmtree(self.folder, ignore_errors=True)
            elman.set_num_threads(self.threads)

    # ------------------------------------------------------------------------- helpers
    def _snapshot(self):
        params = [(p.data.tobytes(), p.grad.tobytes()) for p in self.rnn.parameters()]
        buffers = [None if b is None else b.tobytes() for b in self.opt._buffers]
        hyper = (self.opt.lr, self.opt.momentum, self.opt.nesterov, self.opt.weight_decay,
                 self.opt.clip_norm, self.opt.clip_value)
        return params, buffers, hyper, elman.get_num_threads()

    def _refused(self, call, expected=BAD_INPUT):
        """call() must raise ``expected`` and change nothing."""
        before = self._snapshot()
        with pytest.raises(expected):
            call()
        assert self._snapshot() == before, "a refused call changed the state"

    def _data(self, seed, shape, scale=1.0):
        return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(self.dtype)

    def _sync_twin(self):
        for p, q in zip(self.rnn.parameters(), self.twin.parameters()):
            q.data[...] = p.data
            q.grad[...] = p.grad

    # ------------------------------------------------------------------------- rules
    @rule(T=st.integers(1, 4), B=st.integers(1, 3), seed=st.integers(0, 2**16),
          with_h0=st.booleans())
    def forward(self, T, B, seed, with_h0):
        x = self._data(seed, (T, B, self.I))
        D = 2 if self.config["bidirectional"] else 1
        h0_shape = (self.config["num_layers"] * D, B, self.config["hidden_size"])
        h0 = self._data(seed + 1, h0_shape) if with_h0 else None
        out, h_n = self.rnn(x, h0)
        ref_out, ref_h_n = self.twin(x, h0)
        assert_close(out, ref_out, self.dtype, what="out")
        assert_close(h_n, ref_h_n, self.dtype, what="h_n")
        self.pending = (T, B)

    @rule(kind=st.sampled_from(["input size", "rank", "empty", "dtype", "int", "h0 shape",
                                "lengths"]))
    def forward_with_bad_input(self, kind):
        T, B, I, H = 3, 2, self.I, self.config["hidden_size"]
        x = self._data(0, (T, B, I))
        other = np.float64 if self.dtype == np.float32 else np.float32
        calls = {"input size": lambda: self.rnn(self._data(0, (T, B, I + 1))),
                 "rank": lambda: self.rnn(x[None, None]),
                 "empty": lambda: self.rnn(x[:0]),
                 "dtype": lambda: self.rnn(x.astype(other)),
                 "int": lambda: self.rnn(np.ones((T, B, I), np.int64)),
                 "h0 shape": lambda: self.rnn(x, self._data(1, (1, B + 1, H))),
                 "lengths": lambda: self.rnn(x, lengths=np.array([T + 1] * B))}
        self._refused(calls[kind])

    @precondition(lambda self: self.pending is not None)
    @rule(seed=st.integers(0, 2**16))
    def backward(self, seed):
        T, B = self.pending
        g = self._data(seed, (T, B, self.out_width))
        grad_x, grad_h0 = self.rnn.backward(g)
        ref_x, ref_h0 = self.twin.backward(g)
        assert_close(grad_x, ref_x, self.dtype, what="grad_x")
        assert_close(grad_h0, ref_h0, self.dtype, what="grad_h0")
        scale = max_abs(*[q.grad for q in self.twin.parameters()])
        for (name, p), q in zip(self.rnn.named_parameters(), self.twin.parameters()):
            assert_close(p.grad, q.grad, self.dtype, kind="weight", what=name, scale=scale)
        self._sync_twin()  # only this call's rounding is compared, never an accumulation
        self.pending = None

    @rule(T=st.integers(1, 4), B=st.integers(1, 3), seed=st.integers(0, 2**16),
          with_h0=st.booleans(), then_step=st.booleans())
    def forward_and_backward(self, T, B, seed, with_h0, then_step):
        """The training path in one rule, so that it is drawn as often as any fault."""
        self.forward(T, B, seed, with_h0)
        self.backward(seed + 2)
        if then_step:
            self.step()

    @precondition(lambda self: self.pending is None)
    @rule()
    def backward_without_a_forward(self):
        self._refused(lambda: self.rnn.backward(np.zeros((1, 1, self.out_width), self.dtype)),
                      RuntimeError)

    @precondition(lambda self: self.pending is not None)
    @rule(kind=st.sampled_from(["shape", "dtype", "read-only grad"]))
    def backward_with_bad_input(self, kind):
        T, B = self.pending
        g = self._data(0, (T, B, self.out_width))
        if kind == "read-only grad":
            p = self.rnn.parameters()[-1]
            p.grad.flags.writeable = False
            try:
                self._refused(lambda: self.rnn.backward(g))
            finally:
                p.grad.flags.writeable = True
        else:
            bad = g[:, :, :-1] if kind == "shape" else g.astype(np.float16)
            self._refused(lambda: self.rnn.backward(bad))

    @rule()
    def step(self):
        assert self.opt.step() == self.twin_opt.step()  # the norm of the same gradients
        for p, q in zip(self.rnn.parameters(), self.twin.parameters()):
            assert p.data.tobytes() == q.data.tobytes()  # the same update rule on the same data
        self.pending = None  # the parameters changed: a backward now would raise

    @rule(kind=st.sampled_from(["nan gradient", "inf gradient", "read-only parameter",
                                "bad hyper-parameter", "bad thread count", "bad state_dict",
                                "truncated file", "corrupt file"]),
          where=st.integers(0, 10**6))
    def inject_a_fault(self, kind, where):
        """One bad call or injected fault, drawn from many: each must raise and change nothing."""
        params = self.rnn.parameters()
        p = params[where % len(params)]
        if kind in ("nan gradient", "inf gradient"):
            i, old = where % p.grad.size, p.grad.flat[where % p.grad.size]
            p.grad.flat[i] = np.nan if kind == "nan gradient" else np.inf
            try:
                self._refused(self.opt.step, FloatingPointError)
            finally:
                p.grad.flat[i] = old
        elif kind == "read-only parameter":
            p.data.flags.writeable = False
            try:
                self._refused(self.opt.step)
            finally:
                p.data.flags.writeable = True
        elif kind == "bad hyper-parameter":
            name = ["lr", "momentum", "weight_decay", "clip_norm", "clip_value"][where % 5]
            value = [float("nan"), float("inf"), -1.0, "0.1", True][where // 5 % 5]
            self._refused(lambda: setattr(self.opt, name, value))
        elif kind == "bad thread count":
            self._refused(lambda: elman.set_num_threads([0, -1, CAP + 1, 2**31][where % 4]))
        elif kind == "bad state_dict":
            self._refused(lambda: self.rnn.load_state_dict(self._bad_state(where % 4)))
        else:
            self._refused(lambda: elman.load(self._damaged_file(kind, where), into=self.rnn))

    def _bad_state(self, kind):
        state = self.rnn.state_dict()
        first = next(iter(state))
        if kind == 0:
            del state[first]
        elif kind == 1:
            state["extra"] = np.zeros(1, self.dtype)
        elif kind == 2:
            state[first] = np.zeros(state[first].shape + (1,), self.dtype)
        else:
            state[first] = "weights"
        return state

    def _damaged_file(self, kind, where):
        path = os.path.join(self.folder, "bad.elman")
        elman.save(self.rnn, path)
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        if kind == "corrupt file":  # the last byte of one parameter's data: the CRC-32 catches it
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n != "__elman__.npy"]
                info = z.getinfo(names[where % len(names)])
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                           info.header_offset + 30])
            raw[info.header_offset + 30 + name_len + extra_len + info.compress_size - 1] ^= 0xFF
        else:
            raw = raw[:where % len(raw)]
        with open(path, "wb") as f:
            f.write(raw)
        return path

    @rule()
    def zero_grad(self):
        self.opt.zero_grad()
        self.twin_opt.zero_grad()
        assert all(not p.grad.any() for p in self.rnn.parameters())

    @rule(lr=st.sampled_from([0.0, 0.01, 0.05]))
    def assign_lr(self, lr):
        self.opt.lr = self.twin_opt.lr = lr
        assert self.opt.lr == lr

    @rule(n=st.integers(1, min(CAP, 4)))
    def set_num_threads(self, n):
        elman.set_num_threads(n)
        assert elman.get_num_threads() == n

    @rule(seed=st.integers(0, 1000))
    def save_and_load(self, seed):
        path = os.path.join(self.folder, "m.elman")
        elman.save(self.rnn, path)
        loaded = elman.load(path)
        assert loaded._config() == self.rnn._config()
        for (n, p), (_, q) in zip(self.rnn.named_parameters(), loaded.named_parameters()):
            assert p.data.tobytes() == q.data.tobytes(), n
        other = elman.RNN(**self.config, seed=seed)
        before = self._snapshot()
        assert elman.load(path, into=other) is other
        assert [p.data.tobytes() for p in other.parameters()] == [d for d, _ in before[0]]
        assert self._snapshot() == before  # saving changed nothing

    @rule(seed=st.integers(0, 1000))
    def load_state_dict(self, seed):
        state = elman.RNN(**self.config, seed=seed).state_dict()
        self.rnn.load_state_dict(state)
        self.twin.load_state_dict(state)
        self.pending = None  # the parameters changed: a backward now would raise

    @precondition(lambda self: self.pending is not None)
    @rule()
    def backward_after_a_load_into_is_refused(self):
        path = os.path.join(self.folder, "same.elman")
        elman.save(self.rnn, path)
        elman.load(path, into=self.rnn)  # the same values, written through the API
        self._refused(lambda: self.rnn.backward(
            np.zeros(self.pending + (self.out_width,), self.dtype)), RuntimeError)
        self.pending = None

    # ------------------------------------------------------------------------- invariants
    @invariant()
    def twin_in_step_and_everything_finite(self):
        if not hasattr(self, "rnn"):
            return
        for p, q in zip(self.rnn.parameters(), self.twin.parameters()):
            assert p.data.tobytes() == q.data.tobytes() and p.grad.tobytes() == q.grad.tobytes()
            assert np.isfinite(p.data).all() and np.isfinite(p.grad).all()
            assert p.data.flags.writeable and p.grad.flags.writeable
        assert 1 <= elman.get_num_threads() <= CAP


ElmanMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_stateful_fuzz = ElmanMachine.TestCase
