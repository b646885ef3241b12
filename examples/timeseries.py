"""Time series, many-to-many: an RNN reads a series and predicts its next value at every step
(MSELoss at every step), on the yearly sunspot numbers 1700-2008 or the weekly Mauna Loa CO2
record that ship with statsmodels; compared with the naive last-value forecast.

    python examples/timeseries.py [--dataset sunspots|co2] [--quick] [--compare-torch] [--out DIR]
"""

import time

import numpy as np

import elman
from _common import (TorchSide, fit_both, import_or_exit, parse_args, plot_learning_curves,
                     pyplot, report, save_figure, torch_setup)

TEST_FRACTION = 0.2     # the last 20% of the series is never trained on


def load_series(name):
    """(time axis, values) as float64 arrays; co2's 59 missing weeks are linearly
    interpolated from their neighbours."""
    import_or_exit("statsmodels")
    from statsmodels import datasets
    if name == "sunspots":
        df = datasets.sunspots.load_pandas().data
        return df["YEAR"].to_numpy(np.float64), df["SUNACTIVITY"].to_numpy(np.float64)
    df = datasets.co2.load_pandas().data
    values = df["co2"].to_numpy(np.float64, copy=True)
    t = df.index.year.to_numpy() + (df.index.dayofyear.to_numpy() - 1) / 365.25
    missing = np.isnan(values)
    values[missing] = np.interp(t[missing], t[~missing], values[~missing])
    return t, values


class Forecaster:
    """RNN -> Linear at every step: out_t predicts the next value of the input feature."""

    def __init__(self, hidden_size, seed):
        self.rnn = elman.RNN(1, hidden_size, seed=seed)
        self.head = elman.Linear(hidden_size, 1, seed=seed + 1)

    def parameters(self):
        return self.rnn.parameters() + self.head.parameters()

    def forward(self, x):                          # x (B, T, 1) batch-major, as fit slices it
        out, _ = self.rnn(x.transpose(1, 0, 2))    # out (T, B, H)
        return self.head(out).transpose(1, 0, 2)   # (B, T, 1)

    def backward(self, grad_pred):                 # (B, T, 1)
        grad_out = self.head.backward(grad_pred.transpose(1, 0, 2))
        self.rnn.backward(grad_out=grad_out)

    def predict(self, x):
        with elman.no_grad():
            return self.forward(x)


def torch_model(model):
    torch = torch_setup()

    class TorchForecaster(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(1, model.rnn.hidden_size, batch_first=True)
            self.head = torch.nn.Linear(model.rnn.hidden_size, 1)
            for mine, theirs in ((model.rnn, self.rnn), (model.head, self.head)):
                theirs.load_state_dict({k: torch.from_numpy(v)
                                        for k, v in mine.state_dict().items()})

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    return TorchForecaster()


def main():
    args = parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--dataset", choices=("sunspots", "co2"), default="sunspots"),
        p.add_argument("--epochs", type=int, default=None),
        p.add_argument("--hidden", type=int, default=32)))
    t, y = load_series(args.dataset)
    if args.quick and args.dataset == "co2":
        t, y = t[-600:], y[-600:]
    # sunspots: the level is the feature (the cycle's phase lives in it). co2: the weekly
    # change is (the level trends out of the training range; its change is seasonal).
    # Step i of the RNN sees feat[..i] and predicts feat[i+1].
    use_diff = args.dataset == "co2"
    feat = np.diff(y) if use_diff else y
    n_train = int(len(feat) * (1 - TEST_FRACTION))
    mean, std = feat[:n_train].mean(), feat[:n_train].std()
    z = ((feat - mean) / std).astype(np.float32)   # standardized with training statistics only

    window = 40 if args.dataset == "sunspots" else 104
    starts = np.arange(0, n_train - window)        # every window inside the training part
    x_train = np.stack([z[s:s + window] for s in starts])[..., None]       # (N, T, 1)
    y_train = np.stack([z[s + 1:s + window + 1] for s in starts])[..., None]
    epochs = args.epochs or {("sunspots", True): 30, ("sunspots", False): 400,
                            ("co2", True): 8, ("co2", False): 60}[args.dataset, args.quick]
    batch_size, lr, momentum, clip = 16, 0.01, 0.9, 1.0

    model = Forecaster(args.hidden, args.seed)

    # Evaluation: one pass over the whole series. Forecast i (i = 0 .. len(feat) - 2) is the
    # level at time i + 1 (+1 for co2), made from the level known at time i (+1 for co2).
    known = y[use_diff:len(feat) - 1 + use_diff]          # the last known level
    truth = y[1 + use_diff:len(feat) + use_diff]          # the level to forecast
    times = t[1 + use_diff:len(feat) + use_diff]
    test = slice(n_train - 1, len(feat) - 1)              # forecasts of unseen values only

    def forecast(predict):
        step = predict(z[None, :, None])[0, :-1, 0] * std + mean
        return known + step if use_diff else step

    def rmse(f):
        return float(np.sqrt(np.mean((f[test] - truth[test]) ** 2)))

    def evaluate(predict):
        return {"test RMSE": rmse(forecast(predict))}

    twin = None
    if args.compare_torch:                      # the same network, from the same weights
        torch = torch_setup()
        tm = torch_model(model)
        twin = TorchSide(tm, torch.nn.MSELoss(),
                         torch.optim.SGD(tm.parameters(), lr=lr, momentum=momentum),
                         clip_norm=clip,
                         evaluate=lambda: evaluate(lambda x: tm(torch.from_numpy(x)).numpy()))

    opt = elman.SGD(model.parameters(), lr=lr, momentum=momentum, clip_norm=clip)
    hist, th = fit_both(model, elman.MSELoss(), opt, (x_train, y_train), twin,
                        batch_size=batch_size, epochs=epochs, seed=args.seed,
                        evaluate=lambda: evaluate(model.predict), eval_every=100)
    histories = {"elman": hist} if th is None else {"elman": hist, "torch.nn.RNN": th}
    runs = {k: (h, h.last("test RMSE")) for k, h in histories.items()}

    naive = rmse(known)                                    # next value = this value
    units = "sunspot number" if args.dataset == "sunspots" else "ppm CO2"
    print(f"timeseries: {args.dataset}, {len(y)} values, {n_train} for training "
          f"({len(starts)} windows of {window}), test RMSE in {units}")
    report(f"time series (many-to-many), next-value forecast of {args.dataset}", runs,
           {"naive last value": naive}, "test RMSE", False, args.out,
           f"timeseries_{args.dataset}")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    plot_learning_curves(a, histories, ylabel="training loss (MSE, standardized)", smooth=20,
                         logy=True)
    pred = forecast(model.predict)
    shown = slice(max(0, n_train - (60 if args.dataset == "sunspots" else 260)), len(pred))
    b.plot(times[shown], truth[shown], color="black", lw=1.2, label="truth")
    b.plot(times[shown], pred[shown], color="C0", lw=1,
           label=f"elman RNN (test RMSE {runs['elman'][1]:.2f})")
    b.plot(times[shown], known[shown], color="gray", lw=0.8, ls=":",
           label=f"naive last value ({naive:.2f})")
    b.axvline(times[n_train - 1], color="red", ls="--", lw=0.8, label="train | test")
    b.set_xlabel("year")
    b.set_ylabel(units)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(f"Next-value forecast of {args.dataset} (many-to-many RNN, MSE at every step)")
    save_figure(fig, args.out, f"timeseries_{args.dataset}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  total {time.perf_counter() - t0:.1f} s")
