"""Learn from it: one training step laid bare, and a learning-rate sweep.

`explain_step` runs ONE step of the training loop -- forward, loss, backward, update --
layer by layer, and prints every intermediate with its shape and the formula that
produced it, in the notation of docs/README.md (the seed's: the text this project began
from)::

    z1 = X @ W1 + b1          a1 = ReLU(z1)          z2 = a1 @ W2 + b2
    p = softmax(z2)           loss = mean(-log p[i, y_i])
    dL/dz2 = (p - onehot(y)) / N
    dL/dW2 = a1.T @ dL/dz2    dL/db2 = sum over the batch of dL/dz2    dL/da1 = dL/dz2 @ W2.T
    dL/dz1 = dL/da1 * (z1 > 0)    ...
    W2 = W2 - lr * dL/dW2     ...

so that a learner can do the same step with pencil and paper and compare number by number.
`explain_demo` does it for a tiny 2-2-2 network with round weights (``nnscratch explain``).

`lr_find` trains a fresh copy of a model once per learning rate and prints a table of the
loss each one reaches: "too low = slow, too high = unstable", measured.

Every number here comes from the layers, losses and optimizers themselves (on the active
backend); this module only calls them one at a time and copies what they return.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from . import _checks, _random
from .backend import get_backend, kernels
from .conv import Conv2d, MaxPool2d
from .layers import Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from .norm import BatchNorm1d, BatchNorm2d
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .model import Sequential
from .module import Module, repeated_modules
from .optim import SGD, Adam, AdamW, Optimizer

__all__ = ["explain_step", "explain_demo", "lr_find", "DEFAULT_LRS"]


# --------------------------------------------------------------------------------------
# Names and formulas, in the notation of docs/README.md
# --------------------------------------------------------------------------------------

_ACTIVATIONS = (ReLU, LeakyReLU, Sigmoid, Tanh, Softmax)
_WEIGHTED = (Linear, Conv2d)
# the output name of other layers: the tag and the layer's index, e.g. "pool2"
_TAGS = {MaxPool2d: "pool", Flatten: "flat", Dropout: "drop", BatchNorm1d: "bn",
         BatchNorm2d: "bn"}


def _forward_formula(layer, name, prev, params):
    """The formula of `layer`'s forward pass: ``name = f(prev)``."""
    w, b = params.get("weight"), params.get("bias")
    if isinstance(layer, Linear):
        return f"{name} = {prev} @ {w}" + (f" + {b}" if b else "")
    if isinstance(layer, Conv2d):
        return (f"{name} = conv2d({prev}, {w}, stride={layer.stride}, padding={layer.padding})"
                + (f" + {b}" if b else ""))
    if isinstance(layer, ReLU):
        return f"{name} = ReLU({prev}) = max({prev}, 0)"
    if isinstance(layer, LeakyReLU):
        return f"{name} = {prev} if {prev} > 0 else {layer.negative_slope:g} * {prev}"
    if isinstance(layer, Sigmoid):
        return f"{name} = sigmoid({prev}) = 1 / (1 + exp(-{prev}))"
    if isinstance(layer, Tanh):
        return f"{name} = tanh({prev})"
    if isinstance(layer, Softmax):
        return f"{name} = softmax({prev}) = exp({prev}) / sum(exp({prev})), row by row"
    if isinstance(layer, Flatten):
        return f"{name} = {prev} flattened, one row per sample"
    if isinstance(layer, MaxPool2d):
        kh, kw = (layer.kernel_size,) * 2 if isinstance(layer.kernel_size, int) \
            else layer.kernel_size
        return f"{name} = the maximum of each {kh}x{kw} window of {prev}"
    if isinstance(layer, Dropout):
        return (f"{name} = {prev} * mask / (1 - p): each value dropped with probability "
                f"p = {layer.p:g}")
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        return (f"{name} = {w} * ({prev} - mean) / sqrt(var + eps) + {b}, per channel "
                f"(batch statistics)")
    return f"{name} = {layer!r}({prev})"


def _backward_formulas(layer, name, prev, params):
    """{what: formula} of `layer`'s backward pass, for its parameters and its input."""
    g = f"dL/d{name}"
    w, b = params.get("weight"), params.get("bias")
    formulas = {}
    if isinstance(layer, Linear):
        formulas[f"dL/d{w}"] = f"dL/d{w} = {prev}.T @ {g}"
        if b:
            formulas[f"dL/d{b}"] = f"dL/d{b} = {g} summed over the batch (axis 0)"
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} @ {w}.T"
        return formulas
    if isinstance(layer, Conv2d):
        formulas[f"dL/d{w}"] = (f"dL/d{w}[o, c, p, q] = sum over n, i, j of {g}[n, o, i, j] * "
                                f"{prev}[n, c, i*stride + p, j*stride + q] (padded)")
        if b:
            formulas[f"dL/d{b}"] = f"dL/d{b} = {g} summed over the batch and the positions"
        formulas[f"dL/d{prev}"] = (f"dL/d{prev} = every {g}[n, o, i, j] * {w}[o] added back "
                                   f"onto the window it came from")
        return formulas
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        formulas[f"dL/d{w}"] = (f"dL/d{w} = sum of {g} * xhat per channel, "
                                f"xhat = ({prev} - mean) / std")
        formulas[f"dL/d{b}"] = f"dL/d{b} = sum of {g} per channel"
    for pname, display in params.items():
        formulas.setdefault(f"dL/d{display}", f"dL/d{display}: {type(layer).__name__} backward")
    if isinstance(layer, ReLU):
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} * ({prev} > 0)"
    elif isinstance(layer, LeakyReLU):
        formulas[f"dL/d{prev}"] = (f"dL/d{prev} = {g} * (1 if {prev} > 0 else "
                                   f"{layer.negative_slope:g})")
    elif isinstance(layer, Sigmoid):
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} * {name} * (1 - {name})"
    elif isinstance(layer, Tanh):
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} * (1 - {name}**2)"
    elif isinstance(layer, Softmax):
        formulas[f"dL/d{prev}"] = (f"dL/d{prev} = {name} * ({g} - sum({g} * {name}), "
                                   f"row by row)")
    elif isinstance(layer, Flatten):
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} reshaped to {prev}'s shape"
    elif isinstance(layer, MaxPool2d):
        formulas[f"dL/d{prev}"] = (f"dL/d{prev} = {g} sent to the position of each window's "
                                   f"maximum, 0 elsewhere")
    elif isinstance(layer, Dropout):
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {g} * mask / (1 - p)  (the forward's mask)"
    elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        formulas[f"dL/d{prev}"] = (f"dL/d{prev} = {w} / std * ({g} - mean({g}) - xhat * "
                                   f"mean({g} * xhat)), per channel")
    else:
        formulas[f"dL/d{prev}"] = f"dL/d{prev} = {layer!r}.backward({g})"
    return formulas


def _loss_formulas(loss, out):
    """(loss formula, gradient formula) for the model output named `out`."""
    if isinstance(loss, CrossEntropyLoss):
        return ("loss = mean over the batch of -log p[i, y_i]",
                f"dL/d{out} = (p - onehot(y)) / N")
    if isinstance(loss, MSELoss):
        return (f"loss = mean(({out} - y)**2)", f"dL/d{out} = 2 * ({out} - y) / {out}.size")
    if isinstance(loss, BCEWithLogitsLoss):
        return (f"loss = mean(max({out}, 0) - {out} * y + log(1 + exp(-|{out}|)))",
                f"dL/d{out} = (sigmoid({out}) - y) / {out}.size")
    return f"loss = {loss!r}({out}, y)", f"dL/d{out} = {loss!r}.backward()"


def _update_formula(optimizer, name):
    """The update of parameter `name` by `optimizer`."""
    g = f"dL/d{name}"
    if isinstance(optimizer, SGD):
        d = f"({g} + {optimizer.weight_decay:g} * {name})" if optimizer.weight_decay else g
        if optimizer.momentum == 0:
            return f"{name} = {name} - lr * {d}"
        step = f"({d} + {optimizer.momentum:g} * velocity)" if optimizer.nesterov \
            else "velocity"
        return (f"velocity = {optimizer.momentum:g} * velocity + {d}; "
                f"{name} = {name} - lr * {step}")
    if isinstance(optimizer, Adam):
        text = (f"{name} = {name} - lr * m_hat / (sqrt(v_hat) + eps), m and v running "
                f"averages of {g} and {g}**2 ({type(optimizer).__name__}")
        if optimizer.weight_decay and isinstance(optimizer, AdamW):
            text += f"; first {name} = {name} * (1 - lr * {optimizer.weight_decay:g})"
        elif optimizer.weight_decay:
            text += f"; with {g} + {optimizer.weight_decay:g} * {name} as the gradient"
        return text + ")"
    return f"{name} updated by {optimizer!r}.step()"


def _names(layers):
    """For each layer: (output name, {parameter attribute: display name}), seed-style.

    A Linear or Conv2d layer k outputs z<k> with parameters W<k>, b<k>; the activation
    after it outputs a<k>; any other layer i outputs <tag><i> (pool2, flat3, drop4, bn5,
    with parameters gamma5, beta5).
    """
    plan, used, k = [], {"X"}, 0
    for i, layer in enumerate(layers):
        attrs = [pname for pname, _ in layer.named_parameters()]
        if isinstance(layer, _WEIGHTED):
            k += 1
            name = f"z{k}"
            params = {p: {"weight": f"W{k}", "bias": f"b{k}"}.get(p, f"{p}{k}") for p in attrs}
        elif isinstance(layer, _ACTIVATIONS):
            name = f"a{k}"
            params = {}
        else:
            name = f"{_TAGS.get(type(layer), type(layer).__name__.lower())}{i}"
            params = {p: {"weight": f"gamma{i}", "bias": f"beta{i}"}.get(p, f"{p}{i}")
                      if isinstance(layer, (BatchNorm1d, BatchNorm2d)) else f"{name}.{p}"
                      for p in attrs}
        if name in used:                    # e.g. two activations in a row
            name = f"{name}_{i}"
        used.add(name)
        plan.append((name, params))
    return plan


# --------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------

def _shape_text(shape):
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _array_text(value):
    value = np.asarray(value)
    if value.dtype.kind == "f":
        value = value + 0.0     # for display only: shows -0.0 (a signed zero) as 0
    text = np.array2string(value, precision=6, suppress_small=True, floatmode="maxprec",
                           threshold=200, edgeitems=3, max_line_width=100)
    return "\n".join("    " + line for line in text.splitlines())


class _Printer:
    """Prints formulas and arrays, and records them in the result dict."""

    def __init__(self, print_fn, result):
        self.print_fn = print_fn
        self.result = result

    def line(self, text=""):
        if self.print_fn is not None:
            self.print_fn(text)

    def heading(self, text):
        self.line()
        self.line(f"== {text} " + "=" * max(0, 70 - len(text)))

    def show(self, key, formula, value):
        value = np.array(value, copy=True)
        self.result[key] = value
        self.result["formulas"][key] = formula
        self.result["order"].append(key)
        self.line(f"{formula}    shape {_shape_text(value.shape)}")
        self.line(_array_text(value))


# --------------------------------------------------------------------------------------
# explain_step, explain_demo
# --------------------------------------------------------------------------------------

def _layers_of(model):
    if isinstance(model, Sequential):
        return list(model.layers)
    if isinstance(model, Module):
        return [model]
    raise TypeError(f"model must be a Sequential or a layer, got {type(model).__name__}")


def explain_step(model: Module, X: npt.ArrayLike, y: npt.ArrayLike, loss: Loss,
                 optimizer: Optimizer,
                 print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run one training step and print every intermediate, layer by layer, with shapes.

    The step is the one ``fit`` takes for each batch -- forward, loss, backward, update --
    done one layer at a time so that each value can be shown: the output of every layer
    (z1, a1, z2, ...), the loss (and, for cross-entropy, the softmax probabilities p), the
    gradient flowing back into every layer's input (dL/dz2, dL/da1, ...), the parameter
    gradients (dL/dW1, dL/db1, ...) and every parameter before and after the update.

    The model is put in training mode for the step and back in its mode afterwards; its
    parameters are updated (it is a real step) and their ``.grad`` hold this batch's
    gradients.

    Parameters
    ----------
    model : Sequential (or a single layer)
    X : array_like (N, ...)
        One small batch.
    y : array_like
        Its targets, as `loss` takes them (integer labels for CrossEntropyLoss).
    loss : Loss
    optimizer : Optimizer over the model's parameters
    print_fn : callable or None, default print
        Called with one line of text at a time; None prints nothing.

    Returns
    -------
    dict
        Copies of every value, by name: ``"X"``, ``"y"``, the layer outputs (``"z1"``,
        ``"a1"``, ...), ``"p"`` (cross-entropy only), ``"loss"`` (float), the gradients
        (``"dL/dz2"``, ``"dL/dW1"``, ...), ``"W1_before"``, ``"W1_after"``, ...,
        ``"lr"``; plus ``"formulas"`` ({name: the formula printed}), ``"order"`` (the
        names in the order printed) and ``"layers"`` (the output name of each layer).
    """
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a Loss such as CrossEntropyLoss(), got "
                        f"{type(loss).__name__}")
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must be an Optimizer such as SGD(...), got "
                        f"{type(optimizer).__name__}")
    layers = _layers_of(model)
    problem = repeated_modules(model)
    if problem:
        raise ValueError(problem)
    params = list(model.parameters())
    dtype = params[0].dtype if params else np.dtype(np.float32)
    X = np.asarray(X)
    if X.dtype.kind in "iub":
        X = X.astype(dtype)
    y = np.asarray(y)
    plan = _names(layers)
    names = ["X"] + [name for name, _ in plan]
    result: dict[str, Any] = {"formulas": {}, "order": [], "layers": [name for name, _ in plan],
                              "lr": getattr(optimizer, "lr", None)}
    out = _Printer(print_fn, result)

    out.line(f"One training step, on the {get_backend()} backend: {len(X)} samples, "
             f"{len(layers)} layers, {type(loss).__name__}, {optimizer!r}")
    out.heading("the batch")
    out.show("X", "X (inputs, one row per sample)", X)
    out.show("y", "y (targets)", y)
    out.heading("parameters before the step")
    before = {}
    for layer, (_, display) in zip(layers, plan):
        for pname, p in layer.named_parameters():
            before[display[pname]] = p
            out.show(f"{display[pname]}_before", f"{display[pname]}", p.data)

    was_training = model.training
    model.train()
    try:
        # forward: each layer's output is the next one's input
        out.heading("forward propagation")
        value = X
        for i, (layer, (name, display)) in enumerate(zip(layers, plan)):
            value = layer(value)
            out.show(name, _forward_formula(layer, name, names[i], display), value)

        # the loss and its gradient with respect to the model's output
        out.heading("loss")
        last = names[-1]
        loss_text, grad_text = _loss_formulas(loss, last)
        loss_value = loss(value, y)
        if isinstance(loss, CrossEntropyLoss):
            p = kernels().softmax_forward(np.ascontiguousarray(value))
            out.show("p", f"p = softmax({last}), row by row", p)
            out.show("p[i, y_i]", "p[i, y_i] (the probability of the true class)",
                     p[np.arange(len(y)), y.astype(np.intp)])
        result["loss"] = float(loss_value)
        result["formulas"]["loss"] = loss_text
        result["order"].append("loss")
        out.line(f"{loss_text} = {loss_value:.6g}")
        grad = loss.backward()

        # backward: the chain rule, from the last layer to the first
        out.heading("backpropagation (the chain rule, last layer first)")
        model.zero_grad()
        out.show(f"dL/d{last}", grad_text, grad)
        for i in reversed(range(len(layers))):
            layer, (name, display) = layers[i], plan[i]
            formulas = _backward_formulas(layer, name, names[i], display)
            grad = layer.backward(grad, compute_grad_input=i > 0)
            for pname, p in layer.named_parameters():
                key = f"dL/d{display[pname]}"
                out.show(key, formulas[key], p.grad)
            if i > 0:
                key = f"dL/d{names[i]}"
                out.show(key, formulas[key], grad)

        # the update
        out.heading(f"update ({optimizer!r})")
        optimizer.step()
        for display, p in before.items():
            out.show(f"{display}_after", _update_formula(optimizer, display), p.data)
    finally:
        model.train(was_training)
    return result


def _demo_network(activation):
    """The 2-2-2 demo network in float64 with round weights, and its batch (X, y)."""
    acts = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
    model = Sequential(Linear(2, 2, dtype=np.float64), acts[activation](),
                       Linear(2, 2, dtype=np.float64))
    model[0].weight.data = [[0.5, -0.5], [0.25, 0.5]]
    model[0].bias.data = [0.25, -0.25]
    model[2].weight.data = [[1.0, -1.0], [0.5, 0.5]]
    model[2].bias.data = [0.0, 0.5]
    X = np.array([[1.0, 2.0], [0.5, -1.0]])
    y = np.array([0, 1])
    return model, X, y


def explain_demo(print_fn: Callable[[str], Any] | None = print, *, activation: str = "relu",
                 lr: float = 0.1) -> dict[str, Any]:
    """`explain_step` on a tiny network you can follow by hand.

    The network is ``Linear(2, 2) -> activation -> Linear(2, 2)`` in float64 with
    ``CrossEntropyLoss`` and plain ``SGD(lr)``, the weights round numbers::

        W1 = [[0.5, -0.5], [0.25, 0.5]]   b1 = [0.25, -0.25]
        W2 = [[1, -1], [0.5, 0.5]]        b2 = [0, 0.5]
        X  = [[1, 2], [0.5, -1]]          y  = [0, 1]

    (with ReLU, z1 = [[1.25, 0.25], [0.25, -1]]: one unit is switched off).

    Parameters
    ----------
    print_fn : callable or None, default print
    activation : {"relu", "sigmoid", "tanh"}, default "relu"
    lr : float > 0, default 0.1

    Returns
    -------
    dict, as `explain_step`
    """
    model, X, y = _demo_network(activation)
    optimizer = SGD(model.parameters(), lr=lr)
    return explain_step(model, X, y, CrossEntropyLoss(), optimizer, print_fn=print_fn)


# --------------------------------------------------------------------------------------
# lr_find
# --------------------------------------------------------------------------------------

DEFAULT_LRS = {
    "sgd": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    "adam": (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
}
DEFAULT_LRS["adamw"] = DEFAULT_LRS["adam"]

_OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


GOOD = 0.8   # a learning rate is "good" when its run made this much of the best run's progress


def _verdicts(rows):
    """One word of advice per row of (lr, start, final), from the rows' own numbers: the
    lowest final loss is "best"; a run that made at least GOOD of the best run's progress
    (the drop of the loss) is "good"; one that made less is "too low = slow" below the best
    learning rate and "too high = unstable" above it."""
    finite = [(final, lr, start) for lr, start, final in rows if math.isfinite(final)]
    if not finite:
        return ["too high = unstable (diverged)"] * len(rows)
    best_final, best_lr, best_start = min(finite)
    best_drop = best_start - best_final
    verdicts = []
    for lr, start, final in rows:
        if not math.isfinite(final):
            verdicts.append("too high = unstable (diverged)")
        elif lr == best_lr:
            verdicts.append("best")
        elif final >= start:
            verdicts.append("too high = unstable (the loss went up)" if lr > best_lr
                            else "too low = slow (no progress)")
        elif start - final < GOOD * best_drop:
            verdicts.append("too low = slow" if lr < best_lr else "too high = unstable")
        else:
            verdicts.append("good")
    return verdicts


def _loss_text(value):
    if not math.isfinite(value):
        return f"{'diverged':>12}"
    return f"{value:12.4f}" if abs(value) < 1e6 else f"{value:12.3e}"


def _plot_sweep(rows, path):
    from .plotting import _figure, _save

    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    ok = [(lr, final) for lr, _, final in rows if math.isfinite(final)]
    bad = [lr for lr, _, final in rows if not math.isfinite(final)]
    if ok:
        ax.plot([r[0] for r in ok], [r[1] for r in ok], "-o", label="loss after training")
    ax.axhline(rows[0][1], linestyle="--", color="gray", label="loss before")
    if bad:
        top = max([r[1] for r in ok] + [rows[0][1]])
        ax.plot(bad, [top] * len(bad), "rx", markersize=10, label="diverged")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("too low = slow, too high = unstable")
    return _save(fig, path)


def lr_find(model_factory: Callable[[], Sequential], X: npt.ArrayLike, y: npt.ArrayLike,
            lrs: Sequence[float] | None = None, *, epochs: int = 1, batch_size: int = 64,
            loss: Loss | str | None = None,
            optimizer: str | Callable[[Any, float], Optimizer] = "sgd", seed: int = 0,
            print_fn: Callable[[str], Any] | None = print,
            plot: str | os.PathLike[str] | None = None) -> list[tuple[float, float]]:
    """Train a fresh model once per learning rate and report the loss each one reaches.

    For every learning rate: ``nnscratch.seed(seed)``, ``model = model_factory()`` (so
    every run starts from the same weights when the factory draws them from the library
    generator), ``epochs`` epochs of ``fit`` with ``fit(seed=seed)`` shuffling, then the
    loss on ``(X, y)`` in eval mode. A run whose loss becomes NaN or infinite (``fit``
    raises FloatingPointError) is reported as diverged, with loss ``math.inf``.

    Prints a table -- learning rate, loss before, loss after, and a verdict ("too low =
    slow", "best", "too high = unstable") -- and the learning rate with the lowest loss.

    Parameters
    ----------
    model_factory : callable () -> Sequential
    X, y : the training data (or a slice of it)
    lrs : sequence of float > 0, optional
        Swept in increasing order; by default ``DEFAULT_LRS[optimizer]`` (six powers of
        ten: 1e-4 .. 10 for SGD, 1e-5 .. 1 for Adam / AdamW).
    epochs : int >= 1, default 1
    batch_size : int >= 1, default 64
    loss : Loss or str, default CrossEntropyLoss()
    optimizer : "sgd", "adam", "adamw" or callable (params, lr) -> Optimizer, default "sgd"
        The strings mean plain ``SGD(params, lr)``, ``Adam(params, lr)``,
        ``AdamW(params, lr)``.
    seed : int >= 0, default 0
    print_fn : callable or None, default print
    plot : path, optional
        Also save a plot of loss against learning rate (PNG; needs matplotlib, checked
        before the sweep starts: ImportError otherwise).

    Returns
    -------
    list of (lr, final loss)
        In increasing order of lr; the final loss is ``math.inf`` for a diverged run.
    """
    if not callable(model_factory) or isinstance(model_factory, Module):
        raise TypeError(f"model_factory must be a function returning a fresh model (e.g. "
                        f"lambda: Sequential(...)), got {type(model_factory).__name__}")
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of "
                             f"{sorted(_OPTIMIZERS)} or pass a callable (params, lr)")
        make_optimizer = _OPTIMIZERS[optimizer]
        default_lrs = DEFAULT_LRS[optimizer]
    elif callable(optimizer):
        make_optimizer, default_lrs = optimizer, DEFAULT_LRS["sgd"]
    else:
        raise TypeError(f"optimizer must be 'sgd', 'adam', 'adamw' or a callable "
                        f"(params, lr), got {type(optimizer).__name__}")
    lrs = default_lrs if lrs is None else lrs
    checked = []
    for lr in lrs:
        checked.append(_checks.real("learning rate", lr, 0.0, low_open=True))
    if not checked:
        raise ValueError("lrs is empty: give at least one learning rate")
    lrs = sorted(set(checked))
    epochs = _checks.integer("epochs", epochs, 1)
    if loss is None:
        loss = CrossEntropyLoss()
    if plot is not None:
        from .plotting import require_matplotlib

        require_matplotlib()

    def say(text):
        if print_fn is not None:
            print_fn(text)

    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__",
                                                                 "optimizer")
    # (len: X is array_like, which to a type checker includes scalars)
    say(f"learning-rate sweep: {epochs} epoch{'s' if epochs > 1 else ''} of {name} "
        f"(batch {batch_size}) from the same initial weights, "
        f"{len(X)} samples")  # type: ignore[arg-type]
    rows, notes = [], []
    for lr in lrs:
        _random.seed(seed)
        model = model_factory()
        start = model.evaluate(X, y, loss=loss)["loss"]
        opt = make_optimizer(model.parameters(), lr)
        note = ""
        try:
            # the NumPy backend warns on overflow; a diverging run is expected here
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs,
                          batch_size=batch_size, seed=seed, progress=False)
                final = model.evaluate(X, y, loss=loss)["loss"]
        except FloatingPointError as exc:
            final, note = math.inf, str(exc).split(":")[0]
        if not math.isfinite(final):
            final = math.inf
            note = note or "the weights are no longer finite"
        rows.append((lr, start, final))
        notes.append(note)

    verdicts = _verdicts(rows)
    say(f"{'lr':>10}  {'loss before':>12}  {'loss after':>12}  verdict")
    for (lr, start, final), verdict, note in zip(rows, verdicts, notes):
        say(f"{lr:>10.0e}  {_loss_text(start)}  {_loss_text(final)}  {verdict}"
            + (f": {note}" if note else ""))
    finite = [(final, lr) for lr, _, final in rows if math.isfinite(final)]
    if finite:
        best_final, best_lr = min(finite)
        say(f"lowest loss {best_final:.4f} at lr = {best_lr:g}: too low = slow (the loss "
            f"barely moves), too high = unstable (it jumps around or diverges)")
    else:
        say("every run diverged: try smaller learning rates")
    if plot is not None:
        say(f"plot: {_plot_sweep(rows, plot)}")
    return [(lr, final) for lr, _, final in rows]
