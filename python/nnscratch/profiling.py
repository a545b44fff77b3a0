"""Where the time of a training step goes, phase by phase and layer by layer.

    python benchmarks/profile_step.py [--model mlp|cnn|lenet] [--batch N] [--steps S]

Runs S steps of the training loop `fit` runs -- gather a shuffled batch, forward, loss,
zero the gradients, backward, update (SGD with momentum) -- on random data shaped like
Fashion-MNIST, and times each phase with `time.perf_counter` around the library's own
calls: every step of `Sequential`'s forward and backward (a run of Linear layers is one
step, one kernel call each way: see `linear_chain_forward` and `linear_chain_backward`),
every other layer's backward, the loss, the update.
Prints microseconds per training step and each phase's share; "between phases" is what
the loop itself costs. (fit also checks every gradient for NaN/inf inside the update's
kernel call; here the plain `optimizer.step()` runs.)
"""
import time

import numpy as np


def _timed(record, label, fn):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record[label] = record.get(label, 0.0) + time.perf_counter() - start
    return timed


def _model(kind):
    import nnscratch as nn

    from .bench import _lenet, _mlp
    from .cli import build_model

    nn.seed(0)
    if kind == "mlp":
        return _mlp([784, 256, 128, 10]), (784,)
    if kind == "cnn":
        return build_model("cnn"), (1, 28, 28)
    if kind == "lenet":
        return _lenet(), (1, 28, 28)
    raise ValueError(f"model must be 'mlp', 'cnn' or 'lenet', got {kind!r}")


def profile_step(kind="mlp", batch_size=128, steps=200, samples=None, seed=0):
    """[(phase, seconds per step)] for `steps` training steps of model `kind`, the last
    row ("total") the whole step. The first pass over the steps warms up and is not
    counted."""
    import nnscratch as nn
    from .backend import kernels
    from .model import _LinearChain

    if batch_size < 1 or steps < 1:
        raise ValueError(f"batch_size and steps must be >= 1, got {batch_size}, {steps}")
    model, sample_shape = _model(kind)
    n = samples if samples is not None else max(batch_size * steps, batch_size)
    rng = np.random.default_rng(seed)
    X = rng.random((n,) + sample_shape, dtype=np.float32)
    y = rng.integers(0, 10, n)
    loss = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    params = model.parameters()
    K = kernels()
    xb = np.empty((batch_size,) + sample_shape, np.float32)
    yb = np.empty(batch_size, y.dtype)

    record = {}
    names = {id(layer): f"{i}: {type(layer).__name__}" for i, layer in enumerate(model.layers)}
    # every forward step of the plan, timed under its label: a layer's own forward on the
    # layer; a chain's by one wrapper of _LinearChain.forward (its instances have no
    # attributes of their own) that looks the chain's label up
    forward_labels, chain_labels = [], {}
    for layer, relu in model._plan()[1]:
        pairs = zip(layer.linears, layer.relus) if type(layer) is _LinearChain else [(layer, relu)]
        label = "forward " + " + ".join(names[id(lin)] + ("+ReLU" if r is not None else "")
                                        for lin, r in pairs)
        forward_labels.append(label)
        if type(layer) is _LinearChain:
            chain_labels[id(layer)] = label
        else:
            layer.forward = _timed(record, label, layer.forward)
    chain_forward, chain_backward = _LinearChain.forward, _LinearChain.backward

    def timed_chain_forward(chain, x, training):
        return _timed(record, chain_labels[id(chain)], chain_forward)(chain, x, training)

    # backward runs the steps in reverse, the last layer first: a chain in one call (timed
    # as one row, by one wrapper of _LinearChain.backward), other layers one by one
    backward_labels, chain_back_labels = [], {}
    for layer, relu in reversed(model._plan()[1]):
        if type(layer) is _LinearChain:
            label = "backward " + " + ".join(
                (names[id(r)] + " + " if r is not None else "") + names[id(lin)]
                for lin, r in reversed(list(zip(layer.linears, layer.relus))))
            chain_back_labels[id(layer)] = label
            backward_labels.append(label)
            continue
        for module in ([relu] if relu is not None else []) + [layer]:
            label = "backward " + names[id(module)]
            backward_labels.append(label)
            module.backward = _timed(record, label, module.backward)

    def timed_chain_backward(chain, *args):
        return _timed(record, chain_back_labels[id(chain)], chain_backward)(chain, *args)

    if chain_labels:
        _LinearChain.forward = timed_chain_forward
        _LinearChain.backward = timed_chain_backward

    def step(rows):
        t0 = time.perf_counter()
        K.take_rows(X, rows, xb)
        np.take(y, rows, axis=0, out=yb, mode="clip")
        t1 = time.perf_counter()
        out = model(xb)
        t2 = time.perf_counter()
        loss(out, yb)
        t3 = time.perf_counter()
        for p in params:
            p.zero_grad()
        t4 = time.perf_counter()
        model.backward(loss.backward(), compute_grad_input=False)
        t5 = time.perf_counter()
        optimizer.step()
        t6 = time.perf_counter()
        for label, a, b in (("gather the batch", t0, t1), ("loss", t2, t3),
                            ("zero_grad", t3, t4), ("optimizer step", t5, t6)):
            record[label] = record.get(label, 0.0) + b - a
        record["total"] = record.get("total", 0.0) + t6 - t0

    try:
        for _ in range(2):      # a pass to warm up, then the pass that is counted
            record.clear()
            order = rng.permutation(n)
            for s in range(steps):
                start = (s * batch_size) % (n - batch_size + 1)
                step(order[start:start + batch_size])
    finally:
        _LinearChain.forward, _LinearChain.backward = chain_forward, chain_backward
        for layer in model.layers:
            vars(layer).pop("forward", None)
            vars(layer).pop("backward", None)

    labels = (["gather the batch"] + forward_labels + ["loss", "zero_grad"] + backward_labels
              + ["optimizer step"])
    rows = [(label, record[label]) for label in labels]
    rows.append(("between phases (the loop itself)", record["total"] - sum(s for _, s in rows)))
    rows.append(("total", record["total"]))
    return [(label, seconds / steps) for label, seconds in rows]


def format_profile(rows, kind, batch_size, threads):
    total = rows[-1][1]
    lines = [f"# one training step of the {kind} model, batch {batch_size}, {threads} threads"
             f" (microseconds per step; share of the step)"]
    width = max(len(label) for label, _ in rows)
    for label, seconds in rows:
        lines.append(f"{label:<{width}}  {seconds * 1e6:9.1f} us  {seconds / total:6.1%}")
    return "\n".join(lines)


def main(argv=None):
    import argparse

    import nnscratch as nn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["mlp", "cnn", "lenet"], default="mlp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps timed (default: 400 for the MLP, 20 for the CNNs)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        nn.set_num_threads(args.threads)
    steps = args.steps if args.steps is not None else (400 if args.model == "mlp" else 20)
    rows = profile_step(args.model, args.batch, steps)
    print(format_profile(rows, args.model, args.batch, nn.get_num_threads()))
    return 0
