"""Variable-length speech frames, many-to-one: which of 9 speakers said a Japanese vowel,
from 7 to 29 frames of 12 LPC cepstrum coefficients (the JapaneseVowels data bundled with
sktime). The RNN reads each utterance only up to its own length (``lengths=``), optionally in
both directions, and a Linear layer classifies its final states (CrossEntropyLoss).

    python examples/vowels.py [--bidirectional] [--quick] [--compare-torch] [--out DIR]
"""

import time

import numpy as np

import elman
from _common import (fit_classifier, package_file, parse_args, plot_learning_curves,
                     pyplot, report, save_figure, torch_setup)


def load_ts(split):
    """Reads sktime's JapaneseVowels_{TRAIN,TEST}.ts directly (the .ts text format: after
    ``@data``, one utterance per line, ``dim1:dim2:...:dim12:label`` with comma-separated
    frames). Returns a list of (L, 12) float32 arrays and int64 labels 0..8."""
    path = package_file("sktime", "datasets", "data", "JapaneseVowels",
                        f"JapaneseVowels_{split}.ts")
    seqs, labels, in_data = [], [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        seqs.append(np.array([[float(v) for v in d.split(",")] for d in dims],
                             dtype=np.float32).T)
        labels.append(int(label) - 1)
    return seqs, np.array(labels, dtype=np.int64)


def pad(seqs, mean, std):
    """(N, T_max, 12) standardized frames, zero past each length, and (N,) lengths."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.zeros((len(seqs), lengths.max(), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = (s - mean) / std
    return x, lengths


class SpeakerRNN:
    """RNN over each utterance's own frames -> final state(s) -> Linear: 9 logits."""

    def __init__(self, hidden_size, bidirectional, seed):
        self.rnn = elman.RNN(12, hidden_size, bidirectional=bidirectional, seed=seed)
        self.head = elman.Linear(self.rnn.num_directions * hidden_size, 9, seed=seed + 1)

    def parameters(self):
        return self.rnn.parameters() + self.head.parameters()

    def forward(self, x, lengths):                     # x (B, T, 12), lengths (B,)
        x = x[:, :lengths.max()].transpose(1, 0, 2)    # (T, B, 12)
        _, h_n = self.rnn(x, lengths=lengths)          # (D, B, H): forward ends at each own
        B = h_n.shape[1]                               # last frame, reverse at its first
        return self.head(h_n.transpose(1, 0, 2).reshape(B, -1))     # (B, 9)

    def backward(self, grad_logits):
        D, H = self.rnn.num_directions, self.rnn.hidden_size
        g = self.head.backward(grad_logits)            # (B, D * H)
        self.rnn.backward(grad_h_n=g.reshape(-1, D, H).transpose(1, 0, 2))

    def predict(self, x, lengths):
        with elman.no_grad():
            return self.forward(x, lengths)


def torch_model(model):
    torch = torch_setup()
    nn = torch.nn

    class TorchSpeakerRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(12, model.rnn.hidden_size, bidirectional=model.rnn.bidirectional,
                              batch_first=True)
            self.head = nn.Linear(model.head.in_features, 9)
            for mine, theirs in ((model.rnn, self.rnn), (model.head, self.head)):
                theirs.load_state_dict({k: torch.from_numpy(v)
                                        for k, v in mine.state_dict().items()})

        def forward(self, x, lengths):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                       enforce_sorted=False)
            _, h_n = self.rnn(packed)
            return self.head(h_n.permute(1, 0, 2).reshape(len(lengths), -1))

    return TorchSpeakerRNN()


def main():
    args = parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--bidirectional", action="store_true"),
        p.add_argument("--epochs", type=int, default=None),
        p.add_argument("--hidden", type=int, default=64)))
    train_seqs, y_train = load_ts("TRAIN")
    test_seqs, y_test = load_ts("TEST")
    frames = np.concatenate(train_seqs)
    mean, std = frames.mean(axis=0), frames.std(axis=0)    # training statistics only
    train, test = pad(train_seqs, mean, std), pad(test_seqs, mean, std)
    epochs = args.epochs or (10 if args.quick else 60)
    batch_size, lr, momentum, clip = 16, 0.02, 0.9, 5.0
    direction = "bidirectional" if args.bidirectional else "unidirectional"
    name = "vowels_bidirectional" if args.bidirectional else "vowels"
    print(f"vowels: {len(y_train)} training / {len(y_test)} test utterances, "
          f"{train[1].min()}-{max(train[1].max(), test[1].max())} frames of 12 coefficients, "
          f"9 speakers, {direction} RNN")

    model = SpeakerRNN(args.hidden, args.bidirectional, args.seed)

    def accuracy(logits):
        return {"test accuracy": float(np.mean(np.argmax(logits, axis=-1) == y_test))}

    histories = fit_classifier(model, torch_model, "CrossEntropyLoss", train, y_train, test,
                               accuracy, args, lr=lr, momentum=momentum, clip=clip,
                               batch_size=batch_size, epochs=epochs)
    runs = {k: (h, h.last("test accuracy")) for k, h in histories.items()}

    # Baselines: the most frequent training speaker (all have 30, so the first), and the
    # nearest class centroid of each utterance's mean frame (ignores the order of frames).
    majority = float(np.mean(y_test == np.bincount(y_train).argmax()))
    mean_frame = [np.array([s.mean(axis=0) for s in seqs]) for seqs in (train_seqs, test_seqs)]
    centroids = np.stack([mean_frame[0][y_train == c].mean(axis=0) for c in range(9)])
    dist = ((mean_frame[1][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    centroid = float(np.mean(dist.argmin(axis=1) == y_test))
    report(f"JapaneseVowels speaker (many-to-one, variable length, {direction})", runs,
           {"majority class": majority, "nearest centroid of mean frame": centroid},
           "test accuracy", True, args.out, name)

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    plot_learning_curves(a, histories, ylabel="training loss (cross-entropy)", smooth=17,
                         logy=True)
    for label, h in histories.items():
        steps, acc = h.metric("test accuracy")
        b.plot(steps, acc, label=label)
    b.axhline(centroid, color="gray", ls="--", label="nearest centroid of mean frame")
    b.axhline(majority, color="gray", ls=":", label="majority class")
    b.set_xlabel("step")
    b.set_ylabel("test accuracy")
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(f"JapaneseVowels: 9 speakers from 7-29 frames ({direction} RNN with lengths)")
    save_figure(fig, args.out, name)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  total {time.perf_counter() - t0:.1f} s")
