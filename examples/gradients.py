"""Vanishing and exploding gradients made visible, and what clipping does about them.

1. The per-step gradient norms ||dL/dh_t|| that ``RNN.backward`` leaves in ``rnn.grad_norms``,
   for a loss on the last state only: they decay towards early steps for tanh with small
   recurrent weights and grow for large ones and for relu.
2. A task with a long dependency (the class is the first symbol of a sequence of length 10,
   30 or 100; the rest is noise), trained with and without ``clip_norm``.

    python examples/gradients.py [--quick] [--compare-torch] [--out DIR]
"""

import time

import numpy as np

import elman
from _common import TorchSide, fit_both, parse_args, pyplot, report, save_figure, torch_setup

CLASSES, DISTRACTORS = 4, 4     # first symbol: one of 4 classes; then 4 kinds of noise symbol
LENGTHS = (10, 30, 100)


# ----------------------------------------------------------------------------- part 1
def norms_at_init(nonlinearity, gain, T=100, B=32, H=64, seed=0):
    """||dL/dh_t|| for t = 0..T-1 when dL/dh_{T-1} is a random unit vector per sequence and
    W_hh ~ N(0, gain^2 / H) (spectral radius about ``gain``); inputs are N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    rnn = elman.RNN(8, H, nonlinearity=nonlinearity, dtype=np.float64, seed=seed)
    rnn.weight_hh_l0.data[...] = rng.standard_normal((H, H)) * gain / np.sqrt(H)
    x = rng.standard_normal((T, B, 8))
    _, h_n = rnn(x)
    g = rng.standard_normal(h_n.shape)
    rnn.backward(grad_h_n=g / np.linalg.norm(g, axis=-1, keepdims=True))
    return rnn.grad_norms["l0"]


# ----------------------------------------------------------------------------- part 2
def first_symbol_task(T, n, rng):
    """One-hot (n, T, 8) sequences: symbol 0..3 (the class) at t = 0, noise 4..7 after."""
    sym = rng.integers(CLASSES, CLASSES + DISTRACTORS, size=(n, T))
    y = rng.integers(0, CLASSES, size=n)
    sym[:, 0] = y
    return np.eye(CLASSES + DISTRACTORS, dtype=np.float32)[sym], y.astype(np.int64)


class Remember:
    """RNN -> last state -> Linear (4 logits)."""

    def __init__(self, hidden_size, seed):
        self.rnn = elman.RNN(CLASSES + DISTRACTORS, hidden_size, seed=seed)
        self.head = elman.Linear(hidden_size, CLASSES, seed=seed + 1)

    def parameters(self):
        return self.rnn.parameters() + self.head.parameters()

    def forward(self, x):                               # (B, T, 8)
        _, h_n = self.rnn(x.transpose(1, 0, 2))
        return self.head(h_n[-1])

    def backward(self, grad_logits):
        self.rnn.backward(grad_h_n=self.head.backward(grad_logits)[None])

    def predict(self, x):
        with elman.no_grad():
            return self.forward(x)


def torch_model(model):
    torch = torch_setup()

    class TorchRemember(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(CLASSES + DISTRACTORS, model.rnn.hidden_size,
                                    batch_first=True)
            self.head = torch.nn.Linear(model.rnn.hidden_size, CLASSES)
            for mine, theirs in ((model.rnn, self.rnn), (model.head, self.head)):
                theirs.load_state_dict({k: torch.from_numpy(v)
                                        for k, v in mine.state_dict().items()})

        def forward(self, x):
            return self.head(self.rnn(x)[1][-1])

    return TorchRemember()


def train_one(T, clip, args, steps, lr):
    """Trains one model on the length-T task; returns histories (elman, and torch when
    asked) with the test accuracy and, per step, ||dL/dh_0|| / ||dL/dh_{T-1}||."""
    rng = np.random.default_rng(args.seed + T)
    x, y = first_symbol_task(T, 2048, rng)
    x_test, y_test = first_symbol_task(T, 1024, rng)
    model = Remember(32, args.seed)
    ratios = []

    def record(step, loss, norm):        # how much of the gradient reaches the first step
        n = model.rnn.grad_norms["l0"]
        ratios.append(n[0] / n[-1] if n[-1] > 0 else np.nan)

    def accuracy(logits):
        return {"test accuracy": float(np.mean(logits.argmax(-1) == y_test))}

    twin = None
    if args.compare_torch:                      # the same network, from the same weights
        torch = torch_setup()
        tm = torch_model(model)
        xt = torch.from_numpy(x_test)
        twin = TorchSide(tm, torch.nn.CrossEntropyLoss(),
                         torch.optim.SGD(tm.parameters(), lr=lr, momentum=0.9),
                         clip_norm=clip, evaluate=lambda: accuracy(tm(xt).numpy()))

    batch_size = 32
    epochs = -(-steps * batch_size // len(x))
    opt = elman.SGD(model.parameters(), lr=lr, momentum=0.9, clip_norm=clip,
                    error_if_nonfinite=False)
    hist, th = fit_both(model, elman.CrossEntropyLoss(), opt, (x, y), twin,
                        batch_size=batch_size, epochs=epochs, max_steps=steps, seed=args.seed,
                        on_step=record, evaluate=lambda: accuracy(model.predict(x_test)),
                        eval_every=steps // 10, desc=f"T={T} clip={clip}")
    hist.first_step_ratio = np.array(ratios)
    return {"elman": hist} if th is None else {"elman": hist, "torch.nn.RNN": th}


def main():
    args = parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--steps", type=int, default=None),
        p.add_argument("--lr", type=float, default=None,
                       help="learning rate (default 0.1; 0.3 with --quick, so that gradients "
                            "explode within its 300 steps and clipping shows what it does in "
                            "the full run)"),
        p.add_argument("--clip", type=float, default=1.0)))
    steps = args.steps or (300 if args.quick else 3000)
    if args.lr is None:
        args.lr = 0.3 if args.quick else 0.1

    # Part 1: gradient norms at initialization.
    configs = [("tanh", 0.5), ("tanh", 1.0), ("tanh", 3.0), ("relu", 1.5)]
    norms = {f"{act}, gain {g}": norms_at_init(act, g, seed=args.seed) for act, g in configs}
    print("gradients: ||dL/dh_t|| for a loss on the last of 100 steps, at initialization")
    for label, n in norms.items():
        print(f"  {label:<16} ||dL/dh_0|| / ||dL/dh_99|| = {n[0] / n[-1]:.3g}")

    # Part 2: the long dependency, with and without clipping.
    trained = {}
    for T in LENGTHS:
        for clip in (None, args.clip):
            trained[T, clip] = train_one(T, clip, args, steps, args.lr)
    runs = {}
    print(f"\n  first-symbol task, {steps} steps of SGD (lr {args.lr}, momentum 0.9), "
          f"test accuracy (chance {1 / CLASSES:.2f}):")
    for (T, clip), hs in trained.items():
        for lib, h in hs.items():
            acc = h.last("test accuracy")
            tag = f"{lib} T={T} " + (f"clip_norm={clip}" if clip else "no clipping")
            runs[tag] = (h, acc)

    report("vanishing / exploding gradients; first-symbol task test accuracy", runs,
                     {"chance": 1 / CLASSES}, "test accuracy", True, args.out, "gradients",
                     extra={"first_over_last_norm_at_init":
                            {k: float(n[0] / n[-1]) for k, n in norms.items()}})

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    ax = axes[0, 0]
    for label, n in norms.items():
        ax.semilogy(np.arange(len(n)), n, label=label)
    ax.set_xlabel("time step t (the loss is at t = 99)")
    ax.set_ylabel("||dL/dh_t||")
    ax.set_title("gradient reaching each step, at init")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    for color, T in zip(("C0", "C1", "C2"), LENGTHS):
        for clip, ls in ((None, "--"), (args.clip, "-")):
            r = trained[T, clip]["elman"].first_step_ratio
            if r.size:
                ax.semilogy(np.arange(1, r.size + 1), r, ls, color=color, lw=0.8,
                            label=f"T={T} " + ("clip" if clip else "no clip"))
    ax.set_xlabel("training step")
    ax.set_ylabel("||dL/dh_0|| / ||dL/dh_{T-1}||")
    ax.set_title("how much gradient reaches the first symbol")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[0, 2]
    for color, T in zip(("C0", "C1", "C2"), LENGTHS):
        for clip, ls in ((None, "--"), (args.clip, "-")):
            g = np.asarray(trained[T, clip]["elman"].grad_norm)
            if g.size:
                ax.semilogy(np.arange(1, g.size + 1), g, ls, color=color, lw=0.6,
                            label=f"T={T} " + ("clip" if clip else "no clip"))
    ax.set_xlabel("training step")
    ax.set_ylabel("global gradient norm (before clipping)")
    ax.set_title("gradient norm per step")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for ax, T in zip(axes[1], LENGTHS):
        for clip, ls in ((None, "--"), (args.clip, "-")):
            for lib, h in trained[T, clip].items():
                y = np.asarray(h.loss)
                if y.size:
                    k = max(1, min(25, y.size // 5))
                    ax.plot(np.arange(k, y.size + 1), np.convolve(y, np.ones(k) / k, "valid"),
                            ls, lw=1, label=f"{lib}, " + (f"clip_norm={clip}" if clip else
                                                         "no clipping")
                            + f": acc {h.last('test accuracy'):.2f}")
        ax.axhline(np.log(CLASSES), color="gray", ls=":", lw=0.8, label="chance (ln 4)")
        ax.set_title(f"remember the first symbol, T = {T}")
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Vanishing and exploding gradients, and clipping")
    save_figure(fig, args.out, "gradients")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  total {time.perf_counter() - t0:.1f} s")
