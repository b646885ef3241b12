"""Character language model, many-to-many, and text generation, one-to-many: Embedding -> RNN
-> Linear predicts the next character at every step (CrossEntropyLoss) of the Python
documentation that ships with CPython (``pydoc_data.topics``); then an ``elman.RNNCell``
loaded with the trained weights generates text from a prompt, one sampled character at a time.

    python examples/char_lm.py [--quick] [--compare-torch] [--out DIR] [--prompt TEXT]
"""

import time

import numpy as np

import elman
from _common import (TorchSide, fit_both, parse_args, plot_learning_curves, pyplot, report,
                     save_figure, torch_setup)

SEQ = 64                # characters per training sequence (BPTT length)
LOG2E = 1.0 / np.log(2.0)


def load_text():
    """All of pydoc's topic texts, in a fixed (sorted) order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def chunks(ids, length):
    """Non-overlapping (N, length + 1) windows: inputs [:, :-1], next characters [:, 1:]."""
    n = (len(ids) - 1) // length
    return np.stack([ids[i * length:i * length + length + 1] for i in range(n)])


class CharRNN:
    """Embedding -> RNN -> Linear at every step: (B, T) character ids -> (B, T, V) logits."""

    def __init__(self, vocab_size, embed_dim, hidden_size, seed):
        self.embedding = elman.Embedding(vocab_size, embed_dim, seed=seed)
        self.rnn = elman.RNN(embed_dim, hidden_size, seed=seed + 1)
        self.head = elman.Linear(hidden_size, vocab_size, seed=seed + 2)
        self.layers = (self.embedding, self.rnn, self.head)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, ids):                             # ids (B, T)
        out, _ = self.rnn(self.embedding(ids.T))        # out (T, B, H)
        return self.head(out).transpose(1, 0, 2)        # (B, T, V)

    def backward(self, grad_logits):                    # (B, T, V)
        grad_out = self.head.backward(grad_logits.transpose(1, 0, 2))
        grad_x, _ = self.rnn.backward(grad_out=grad_out)
        self.embedding.backward(grad_x)

    def predict(self, ids):
        with elman.no_grad():
            return self.forward(ids)


def generate(model, prompt_ids, n, temperature, rng):
    """One-to-many: an RNNCell with the trained RNN's weights reads the prompt, then feeds
    each sampled character back in; softmax(logits / temperature) is the sampling law."""
    cell = elman.RNNCell(model.rnn.input_size, model.rnn.hidden_size)
    state = model.rnn.state_dict()
    cell.load_state_dict({k: state[f"{k}_l0"] for k, _ in cell.named_parameters()})
    out, h = [], None
    with elman.no_grad():
        for i in prompt_ids:                             # warm the state up on the prompt
            h = cell(model.embedding(np.array([i]))[0], h)
        for _ in range(n):
            p = elman.softmax(model.head(h).astype(np.float64) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
            out.append(nxt)
            h = cell(model.embedding(np.array([nxt]))[0], h)
    return out


def ngram_bits(train_ids, val_ids, V, order):
    """Bits per character of an add-one-smoothed unigram (order 1) or bigram (order 2)
    model on the validation text."""
    if order == 1:
        p = (np.bincount(train_ids, minlength=V) + 1.0) / (len(train_ids) + V)
        return float(-np.mean(np.log2(p[val_ids])))
    counts = np.ones((V, V))
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    p = counts / counts.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log2(p[val_ids[:-1], val_ids[1:]])))


def torch_model(model):
    torch = torch_setup()
    nn = torch.nn

    class TorchCharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            E, H, V = model.embedding.embedding_dim, model.rnn.hidden_size, model.head.out_features
            self.embedding = nn.Embedding(V, E)
            self.rnn = nn.RNN(E, H, batch_first=True)
            self.head = nn.Linear(H, V)
            for mine, theirs in zip(model.layers, (self.embedding, self.rnn, self.head)):
                theirs.load_state_dict({k: torch.from_numpy(v)
                                        for k, v in mine.state_dict().items()})

        def forward(self, ids):
            return self.head(self.rnn(self.embedding(ids))[0])

    return TorchCharRNN()


def main():
    args = parse_args(__doc__.split("\n\n")[0], lambda p: (
        p.add_argument("--epochs", type=int, default=None),
        p.add_argument("--hidden", type=int, default=256),
        p.add_argument("--lr", type=float, default=0.2),
        p.add_argument("--prompt", default="The for statement is used to"),
        p.add_argument("--temperature", type=float, default=0.6)))
    text = load_text()
    if args.quick:
        text = text[:60_000]
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    V = len(chars)
    ids = np.array([index[c] for c in text], dtype=np.int64)
    split = int(len(ids) * 0.9)                          # the last 10% is validation text
    train, val = chunks(ids[:split], SEQ), chunks(ids[split:], SEQ)
    epochs = args.epochs or (3 if args.quick else 10)
    batch_size, lr, momentum, clip = 32, args.lr, 0.9, 1.0
    print(f"char_lm: {len(text)} characters of CPython's pydoc topics, {V} distinct, "
          f"{len(train)} training / {len(val)} validation sequences of {SEQ}")

    model = CharRNN(V, 32, args.hidden, args.seed)
    ce = elman.CrossEntropyLoss()

    def bits(logits):                                    # validation bits per character
        return {"validation bits/char": ce(logits, val[:, 1:]) * LOG2E}

    twin = None
    if args.compare_torch:                      # the same network, from the same weights
        torch = torch_setup()
        tm = torch_model(model)
        torch_ce = torch.nn.CrossEntropyLoss()
        val_t = torch.from_numpy(val[:, :-1])
        twin = TorchSide(tm, lambda logits, target: torch_ce(logits.reshape(-1, V),
                                                             target.reshape(-1)),
                         torch.optim.SGD(tm.parameters(), lr=lr, momentum=momentum),
                         clip_norm=clip, evaluate=lambda: bits(tm(val_t).numpy()))

    opt = elman.SGD(model.parameters(), lr=lr, momentum=momentum, clip_norm=clip)
    hist, th = fit_both(model, elman.CrossEntropyLoss(), opt, (train[:, :-1], train[:, 1:]),
                        twin, batch_size=batch_size, epochs=epochs, seed=args.seed,
                        evaluate=lambda: bits(model.predict(val[:, :-1])))
    histories = {"elman": hist} if th is None else {"elman": hist, "torch.nn.RNN": th}
    runs = {k: (h, h.last("validation bits/char")) for k, h in histories.items()}

    unigram = ngram_bits(ids[:split], ids[split:], V, 1)
    bigram = ngram_bits(ids[:split], ids[split:], V, 2)
    report("character language model (many-to-many) on pydoc_data.topics", runs,
           {"unigram (char frequencies)": unigram, "bigram": bigram},
           "validation bits/char", False, args.out, "char_lm")

    rng = np.random.default_rng(args.seed)
    prompt = [index[c] for c in args.prompt if c in index]
    sample = "".join(chars[i] for i in generate(model, prompt, 200 if not args.quick else 60,
                                                args.temperature, rng))
    print(f"\n  generated (one-to-many, RNNCell, temperature {args.temperature}):\n"
          f"  {args.prompt}{sample}\n")

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    plot_learning_curves(a, histories, ylabel="training loss (cross-entropy, nats)", smooth=50)
    for label, h in histories.items():
        steps, v = h.metric("validation bits/char")
        b.plot(steps, v, "o-", label=label)
    b.axhline(unigram, color="gray", ls=":", label="unigram")
    b.axhline(bigram, color="gray", ls="--", label="bigram")
    b.set_xlabel("step")
    b.set_ylabel("validation bits per character")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle("Character language model on CPython's pydoc topics")
    save_figure(fig, args.out, "char_lm")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"  total {time.perf_counter() - t0:.1f} s")
