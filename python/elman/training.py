"""A small minibatch training loop, ``fit``, for models written with elman's explicit
forward/backward, and the ``History`` it returns. Optional conveniences only: the layers'
own ``forward`` / ``backward`` stay the primary API. tqdm is imported lazily, if present."""

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["fit", "History", "batch_indices"]


@dataclass
class History:
    """What ``fit`` records.

    ``loss`` and ``grad_norm``: one value per step (the training loss of the batch and the
    global gradient norm before clipping, as ``optimizer.step()`` returns it);
    ``evals``: ``(step, {name: value})`` pairs from the ``evaluate`` callback; ``seconds``: wall
    time of the training steps (evaluation excluded); ``diverged_at``: the step whose loss or
    gradient norm was not finite (training stopped there), else None.
    """

    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    seconds: float = 0.0
    diverged_at: Optional[int] = None

    @property
    def steps(self):
        """Optimizer steps taken (one per minibatch)."""
        return len(self.loss)

    @property
    def steps_per_second(self):
        """Training throughput: steps / seconds (0 before any step)."""
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    def metric(self, name):
        """``(steps, values)`` arrays of one evaluated metric."""
        pairs = [(s, m[name]) for s, m in self.evals if name in m]
        return (np.array([s for s, _ in pairs], dtype=np.int64),
                np.array([v for _, v in pairs], dtype=np.float64))

    def last(self, name):
        """The last evaluated value of ``name`` (NaN if it was never evaluated)."""
        _, values = self.metric(name)
        return float(values[-1]) if values.size else float("nan")


def _positive_int(value, name, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")
    return int(value)


def batch_indices(n, batch_size, epochs=1, shuffle=True, seed=None, drop_last=False):
    """Yields ``(epoch, indices)`` for ``epochs`` passes over ``n`` samples in batches of
    ``batch_size`` (a new permutation per epoch from ``seed`` when ``shuffle``; the last,
    smaller batch is kept unless ``drop_last``). Two loops given the same arguments see the
    same batches, which is how the examples train elman and PyTorch on identical data."""
    n = _positive_int(n, "n")
    batch_size = _positive_int(batch_size, "batch_size")
    epochs = _positive_int(epochs, "epochs")
    rng = np.random.default_rng(seed)
    stop = n - n % batch_size if drop_last else n
    if stop == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} samples and "
                         "drop_last=True leaves no batch")
    for epoch in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        for start in range(0, stop, batch_size):
            yield epoch, order[start:start + batch_size]


def _progress_bar(total, desc, enabled):
    """A tqdm bar on stderr that stays quiet when stderr is not a terminal, or None when
    disabled or when tqdm is not installed (training then runs without a bar)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, disable=None, leave=False, dynamic_ncols=True)


def fit(model, loss_fn, optimizer, data, *, batch_size, epochs=1, max_steps=None,
        shuffle=True, seed=None, drop_last=False, evaluate=None, eval_every=None,
        on_step=None, progress=True, desc="train"):
    """Minibatch training: for every batch, ``zero_grad``, forward, loss, backward, ``step``.

    Parameters
    ----------
    model : object with ``forward(*inputs) -> pred`` and ``backward(grad_pred)``
        Typically a small class that chains elman layers and their explicit backward calls
        (an ``elman.Linear`` works as it is).
    loss_fn : callable ``loss_fn(pred, target) -> float`` with ``backward() -> dL/dpred``
        An elman loss, e.g. ``elman.CrossEntropyLoss()``.
    optimizer : object with ``zero_grad()`` and ``step()`` (``elman.SGD``)
        ``step()``'s return value is recorded as the gradient norm.
    data : sequence of arrays ``(*inputs, target)``
        All indexed along axis 0 by sample; a batch passes ``inputs[i][idx]`` to
        ``model.forward`` and ``target[idx]`` to ``loss_fn``.
    batch_size, epochs, shuffle, seed, drop_last
        The batches, as :func:`batch_indices` yields them.
    max_steps : int, optional
        Stop after this many steps even in the middle of an epoch.
    evaluate : callable ``() -> dict`` of name -> float, optional
        Called every ``eval_every`` steps (default: at the end of each epoch) and after the
        last step; its time is not counted in ``History.seconds``.
    on_step : callable ``(step, loss, grad_norm)``, optional
        Called after every step (e.g. to read ``rnn.grad_norms``).
    progress : bool
        Show a tqdm progress bar on stderr when tqdm is installed and stderr is a terminal.

    Returns a :class:`History`. A non-finite loss, or a non-finite gradient norm that makes
    ``optimizer.step()`` raise ``FloatingPointError``, stops training with a RuntimeWarning and
    sets ``History.diverged_at`` instead of raising.
    """
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise TypeError("data must be a tuple or list of arrays (*inputs, target), got "
                        f"{type(data).__name__}" + (f" of length {len(data)}"
                                                    if isinstance(data, (tuple, list)) else ""))
    data = [np.asarray(a) if not hasattr(a, "shape") else a for a in data]
    n = len(data[0])
    for i, a in enumerate(data):
        if a.ndim == 0 or len(a) != n:
            raise ValueError(f"data[{i}] must have {n} samples along axis 0 (as data[0]), got "
                             f"shape {a.shape}")
    max_steps = _positive_int(max_steps, "max_steps", optional=True)
    eval_every = _positive_int(eval_every, "eval_every", optional=True)
    batch_size = _positive_int(batch_size, "batch_size")
    epochs = _positive_int(epochs, "epochs")
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)

    history = History()
    bar = _progress_bar(total, desc, progress)
    *inputs, target = data

    def run_eval(step):
        if evaluate is not None and (not history.evals or history.evals[-1][0] != step):
            history.evals.append((step, {k: float(v) for k, v in evaluate().items()}))
            if bar is not None:
                shown = {k: f"{v:.4g}" for k, v in history.evals[-1][1].items()}
                if history.loss:
                    shown = {"loss": f"{history.loss[-1]:.4g}", **shown}
                bar.set_postfix(shown)

    step, last_epoch = 0, 0
    try:
        for epoch, idx in batch_indices(n, batch_size, epochs, shuffle, seed, drop_last):
            if step == total:
                break
            if epoch != last_epoch and eval_every is None:
                run_eval(step)
            last_epoch = epoch
            t0 = time.perf_counter()
            optimizer.zero_grad()
            pred = model.forward(*(a[idx] for a in inputs))
            loss = float(loss_fn(pred, target[idx]))
            if not math.isfinite(loss):
                history.diverged_at = step
                break
            model.backward(loss_fn.backward())
            try:
                norm = float(optimizer.step())
            except FloatingPointError:
                history.diverged_at = step
                break
            history.seconds += time.perf_counter() - t0
            history.loss.append(loss)
            history.grad_norm.append(norm)
            step += 1
            if on_step is not None:
                on_step(step, loss, norm)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == total:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if eval_every is not None and step % eval_every == 0:
                run_eval(step)
        if history.diverged_at is not None:
            warnings.warn(f"fit: the loss or gradient norm at step {history.diverged_at} is "
                          "not finite; training stopped there", RuntimeWarning, stacklevel=2)
        run_eval(step)
    finally:
        if bar is not None:
            bar.close()
    return history
