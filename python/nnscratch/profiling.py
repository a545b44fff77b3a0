"""Where the time of a training step goes, phase by phase and layer by layer.

    python benchmarks/profile_step.py [--model mlp|cnn|lenet|resnet20] [--batch N] [--steps S]

Runs S steps of the training loop `fit` runs on the compiled kernels -- gather a shuffled
batch, forward, loss, zero the gradients, backward, update (SGD with momentum) -- on random
data shaped like Fashion-MNIST, and times each phase with `time.perf_counter`. The forward
and the backward are timed step by step of the model's fast-path plan
(``nnscratch._fast.plan``): a Linear with its ReLU is one step, a run of Linear layers one
step (one kernel call each way: `linear_chain_forward`, `linear_chain_backward`), a
residual block one step (both branches and the sum), every other layer a step of its own. Prints microseconds per training step and each phase's
share; "between phases" is what the loop itself costs. (fit also checks every gradient for
NaN/inf inside the update's kernel call; here the plain `optimizer.step()` runs.)
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np


def _model(kind):
    import nnscratch as nn

    from . import models

    nn.seed(0)
    if kind == "mlp":
        return models.mlp(hidden=(256, 128)), (784,)
    if kind == "cnn":
        return models.cnn(), (1, 28, 28)
    if kind == "lenet":
        return models.lenet(), (1, 28, 28)
    if kind == "resnet20":
        return models.resnet(20), (1, 28, 28)
    raise ValueError(f"model must be 'mlp', 'cnn', 'lenet' or 'resnet20', got {kind!r}")


def profile_step(kind="mlp", batch_size=128, steps=200, samples=None, seed=0):
    """[(phase, seconds per step)] for `steps` training steps of model `kind`, the last
    row ("total") the whole step. The first pass over the steps warms up and is not
    counted."""
    import nnscratch as nn
    from ._fast.plan import Run, plan_of, step_modules
    from .backend import kernels

    if batch_size < 1 or steps < 1:
        raise ValueError(f"batch_size and steps must be >= 1, got {batch_size}, {steps}")
    if nn.get_backend() != "cython":
        raise ValueError("profile_step times the compiled kernels: set_backend('cython')")
    model, sample_shape = _model(kind)
    n = samples if samples is not None else max(batch_size * steps, batch_size)
    rng = np.random.default_rng(seed)
    X = rng.random((n,) + sample_shape, dtype=np.float32)
    y = rng.integers(0, 10, n)
    loss = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    params = list(model.parameters())
    K = kernels()
    xb = np.empty((batch_size,) + sample_shape, np.float32)
    yb = np.empty(batch_size, y.dtype)
    plan = plan_of(model)
    run = Run(plan.pool, True)
    names = {id(module): f"{name}: {type(module).__name__}"
             for name, module in model.named_modules() if name}

    def label(step, backward):
        modules = step_modules(step)
        parts = [names.get(id(m), type(m).__name__) for m in modules]
        return ("backward " + " + ".join(reversed(parts))) if backward else \
            ("forward " + " + ".join(parts))

    forward_labels = [label(step, False) for step in plan.steps]
    backward_labels = [label(step, True) for step in reversed(plan.steps)]
    record: dict[str, Any] = {}

    def add(key, seconds):
        record[key] = record.get(key, 0.0) + seconds

    def step(rows):
        t0 = time.perf_counter()
        K.take_rows(X, rows, xb)
        np.take(y, rows, axis=0, out=yb, mode="clip")
        t1 = time.perf_counter()
        out = xb
        for s, text in zip(plan.steps, forward_labels):
            start = time.perf_counter()
            out = s.forward(out, run)
            add(text, time.perf_counter() - start)
        t2 = time.perf_counter()
        loss(out, yb)
        t3 = time.perf_counter()
        for p in params:
            p.zero_grad()
        t4 = time.perf_counter()
        g = loss.backward()
        last = len(plan.steps) - 1
        for i, (s, text) in enumerate(zip(reversed(plan.steps), backward_labels)):
            start = time.perf_counter()
            g = s.backward(g, i < last, run)
            add(text, time.perf_counter() - start)
        t5 = time.perf_counter()
        optimizer.step()
        t6 = time.perf_counter()
        for key, a, b in (("gather the batch", t0, t1), ("loss", t2, t3),
                          ("zero_grad", t3, t4), ("optimizer step", t5, t6)):
            add(key, b - a)
        add("total", t6 - t0)

    for _ in range(2):      # a pass to warm up, then the pass that is counted
        record.clear()
        order = rng.permutation(n)
        for s in range(steps):
            start = (s * batch_size) % (n - batch_size + 1)
            step(order[start:start + batch_size])

    labels = (["gather the batch"] + forward_labels + ["loss", "zero_grad"] + backward_labels
              + ["optimizer step"])
    rows = [(text, record.get(text, 0.0)) for text in labels]
    rows.append(("between phases (the loop itself)", record["total"] - sum(s for _, s in rows)))
    rows.append(("total", record["total"]))
    return [(text, seconds / steps) for text, seconds in rows]


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
    parser.add_argument("--model", choices=["mlp", "cnn", "lenet", "resnet20"], default="mlp")
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
