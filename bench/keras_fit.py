"""model.fit per-epoch time of the classic Keras model (SimpleRNN(64) + Dense(1, sigmoid), Adam,
binary cross-entropy, T=100, 20 features, batch 32) with elman.keras.SimpleRNN against
keras.layers.SimpleRNN on Keras's torch backend (or the one KERAS_BACKEND names, e.g. jax), in
one process, from the same initial weights on the same batches. Checks that both give the same
first-epoch loss, with elman's kernels running, before it times anything.

    python bench/keras_fit.py [--samples 2048] [--epochs 3] [--repeats 2] [--threads N]
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402


def data(n, T, I, seed):
    """A learnable task: is the sum of the first feature over the sequence positive?"""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, I)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)[:, None]
    return x, y


def model(keras, layer_cls, T, I, H, weights=None):
    m = keras.Sequential([keras.Input((T, I)), layer_cls(H),
                          keras.layers.Dense(1, activation="sigmoid")])
    if weights is not None:
        m.set_weights(weights)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
              metrics=["accuracy"])
    return m


def timed_epochs(models, x, y, batch, epochs):
    """One warm-up epoch of each model, then ``epochs`` epochs, each model in turn per epoch
    (so both see the same machine load), in the same batch order (no shuffling). Returns
    {name: (seconds of each timed epoch, loss of each, accuracy of each)}."""
    out = {name: ([], [], []) for name in models}
    for epoch in range(epochs + 1):
        for name, m in models.items():
            t0 = time.perf_counter()
            h = m.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0).history
            seconds = time.perf_counter() - t0
            if epoch > 0:
                for values, v in zip(out[name], (seconds, h["loss"][0], h["accuracy"][0])):
                    values.append(v)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs (after a warm-up one)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, each from fresh models")
    p.add_argument("--threads", type=int, default=None,
                   help="elman's threads and, on the torch backend, torch's")
    args = p.parse_args()
    import keras

    import elman
    import elman.keras
    if keras.config.backend() == "torch":
        import torch
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        library = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    else:
        library = keras.config.backend()
        elman.keras.jax_kernels = True  # opt-in there (see elman.keras): measured here
    if args.threads is not None:
        elman.set_num_threads(args.threads)
    T, I, H, batch = 100, 20, 64, 32
    x, y = data(args.samples, T, I, seed=0)
    keras.utils.set_random_seed(0)
    init = model(keras, keras.layers.SimpleRNN, T, I, H).get_weights()
    print(f"keras {keras.__version__} ({keras.config.backend()} backend), {library}, "
          f"elman {elman.__version__} "
          f"({elman.get_num_threads()} threads), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"T={T} I={I} H={H} batch={batch} samples={args.samples}: "
          f"{args.samples // batch} steps per epoch")

    # the check: one epoch of each from the same weights gives the same loss
    losses = {}
    for name, cls in (("keras", keras.layers.SimpleRNN), ("elman", elman.keras.SimpleRNN)):
        m = model(keras, cls, T, I, H, init)
        losses[name] = m.fit(x[:256], y[:256], batch_size=batch, epochs=1, shuffle=False,
                             verbose=0).history["loss"][0]
        if name == "elman":
            assert m.layers[0].kernel_path, m.layers[0].fallback_reason
    print(f"check: first-epoch loss keras {losses['keras']:.6f}, elman {losses['elman']:.6f}")
    assert abs(losses["keras"] - losses["elman"]) <= 1e-4 * max(1.0, abs(losses["keras"]))

    classes = {"keras": keras.layers.SimpleRNN, "elman": elman.keras.SimpleRNN}
    medians = {name: [] for name in classes}
    for r in range(args.repeats):
        models = {name: model(keras, cls, T, I, H, init) for name, cls in classes.items()}
        for name, (times, loss, acc) in timed_epochs(models, x, y, batch, args.epochs).items():
            medians[name].append(statistics.median(times))
            print(f"round {r + 1} {name:5s}: epochs {', '.join(f'{t:.3f}' for t in times)} s "
                  f"(median {medians[name][-1]:.3f} s); loss {loss[-1]:.4f}, "
                  f"accuracy {acc[-1]:.3f} after {args.epochs + 1} epochs")
    k, e = medians["keras"], medians["elman"]
    print(f"per-epoch median over rounds: keras.layers.SimpleRNN {statistics.median(k):.3f} s "
          f"(rounds {min(k):.3f}-{max(k):.3f}), elman.keras.SimpleRNN "
          f"{statistics.median(e):.3f} s (rounds {min(e):.3f}-{max(e):.3f}); ratio "
          f"{statistics.median(k) / statistics.median(e):.1f}x (per round "
          f"{', '.join(f'{a / b:.1f}' for a, b in zip(k, e))})")

if __name__ == "__main__":
    main()
