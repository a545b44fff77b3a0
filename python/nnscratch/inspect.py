"""See inside a model: per-layer statistics of one batch, as a list and as a table.

``layer_stats(model, X, y, loss, lr=None)`` runs one forward and one backward pass of the
batch (X, y) in training mode -- the pass a training step makes, without the update -- and
returns, for every layer that has parameters (`Linear`, `Conv2d`, batch norm, ...), in the
model's order, what that pass shows about it::

    from nnscratch.inspect import layer_stats
    stats = layer_stats(model, X[:256], y[:256], nn.CrossEntropyLoss(), lr=0.1)
    print(stats)                       # the table (format_stats)
    stats[0]["grad_norm"]              # ||dL/dW|| of the first layer

Each entry is a dict:

``name``, ``type``
    The layer's dotted name in the model (``"3"``, ``"4.body.0"`` inside a `Residual`'s
    body) and its class name.
``act_mean``, ``act_std``, ``act_zero_fraction``
    The mean, the standard deviation and the fraction of exact zeros of the layer's
    output over the whole batch (None for a layer the forward pass did not run).
``activation``, ``dead_fraction``, ``saturated_fraction``
    The activation the layer's output goes into next (its class name, when the layer is
    directly followed by a ReLU, LeakyReLU, Sigmoid or Tanh in a `Sequential`), else None.
    After a ReLU or LeakyReLU, ``dead_fraction`` is the fraction of its units that are not
    positive for any sample of the batch (a feature of an (N, F) output, a channel of an
    (N, C, H, W) one): dead units, which pass no gradient and do not learn. After a sigmoid
    or tanh, ``saturated_fraction`` is the fraction of its outputs in the flat tails
    (sigmoid below 0.01 or above 0.99, ``|tanh|`` above 0.99: `SATURATION`), where the
    derivative is nearly zero. Otherwise None.
``weight_norm``, ``grad_norm``
    ``||W||`` and ``||dL/dW||`` (Frobenius norms, in float64) of the layer's weight -- its
    ``weight`` parameter, or its first one -- for this batch.
``update_ratio``
    With `lr`: ``lr * grad_norm / weight_norm``, the relative size of plain SGD's step
    ``W -= lr * dL/dW``. About 1e-3 is the usual rule of thumb; much less and the layer
    hardly learns, much more and training may be unstable. Momentum, Adam and weight
    decay take other steps (Adam's is about ``lr`` per element, whatever the gradient's
    size): for them it is the ratio plain SGD would have. None without `lr`.

Nothing of the model changes: the parameters, their ``.grad`` (the batch's gradients are
computed from zero and the old values put back), every module's training mode, the batch
norms' running statistics and the library generator (dropout masks) are as they were, so
a training run that looks inside its model now and then (`StatsRecorder`) gives the same
weights, bit for bit, as one that does not. What each layer keeps from its last forward
for its backward is replaced: call it between training steps, not between a forward and
its backward.

How: a forward hook (``register_forward_hook``) on each layer with parameters, and on the
activation after it, computes the statistics of its output as the pass goes; the hooks are
removed afterwards, and the fast path's fused steps come back with them. The gradients are
read from the parameters' ``.grad`` after the backward pass.

`StatsRecorder` is a ``fit`` callback recording them on a fixed batch every few steps
(or every epoch); ``nnscratch train --stats`` prints the table after every epoch.
docs/11-inside-a-model.md shows what the tables say about a deep sigmoid network, a ReLU
network and a ResNet.
"""
import copy
import math
import numbers
import types

import numpy as np

from . import _checks, _random
from .callbacks import Callback
from .layers import LeakyReLU, ReLU, Sigmoid, Tanh
from .model import Sequential
from .module import Module
from .training import _as_data, _as_loss, _model_input

__all__ = ["layer_stats", "format_stats", "LayerStats", "StatsRecorder", "SATURATION"]

# how close to its limits an activation's output counts as saturated (derivative ~0):
# sigmoid y < 0.01 or y > 0.99 (derivative y(1 - y) < 0.0099), |tanh| > 0.99 (1 - y^2 < 0.02)
SATURATION = 0.01

KEYS = ("name", "type", "act_mean", "act_std", "act_zero_fraction", "activation",
        "dead_fraction", "saturated_fraction", "weight_norm", "grad_norm", "update_ratio")


class LayerStats(list):
    """What `layer_stats` returns: a list of one dict per layer with parameters, printed as
    a table (``str(stats)`` is ``format_stats(stats)``).

    Attributes
    ----------
    loss : float
        The loss of the batch.
    samples : int
        The batch's size.
    lr : float or None
        The learning rate of the update ratios.
    """

    def __init__(self, rows=(), loss=None, samples=None, lr=None):
        super().__init__(rows)
        self.loss, self.samples, self.lr = loss, samples, lr

    def __str__(self):
        return format_stats(self)


def layer_stats(model, X, y, loss, lr=None):
    """Per-layer statistics of one forward and backward pass of (X, y), in training mode.

    See the module docstring for every entry. The model is left as it was: parameters,
    gradients, modes, running statistics, the library generator.

    Parameters
    ----------
    model : Module
        A `Sequential` (residual blocks and convolutions included) or any module with
        parameters.
    X : array_like (N, features...)
        One batch (a few hundred samples are plenty), taken as ``fit`` takes it: cast to
        the model's dtype (uint8 pixels k as k / 255), then the model's
        ``input_normalization`` if it has one.
    y : array_like
        Its targets, as ``fit`` takes them for `loss`.
    loss : Loss or str
        E.g. ``CrossEntropyLoss()`` (not changed: a copy computes).
    lr : float >= 0, optional
        The learning rate for ``update_ratio = lr * grad_norm / weight_norm``.

    Returns
    -------
    LayerStats
        A list of dicts, one per layer with parameters, in the model's order
        (``named_modules``); ``str()`` of it is the table.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module such as a Sequential, got "
                        f"{type(model).__name__}")
    loss = copy.copy(_as_loss(loss))       # (its own: the loss keeps what backward needs)
    if lr is not None:
        lr = _checks.real("lr", lr, 0.0)
    layers = [(name, module) for name, module in model.named_modules()
              if any(p is not None for p in module._parameters.values())]
    if not layers:
        raise ValueError("model has no layer with parameters: nothing to report")
    X, y = _batch(model, loss, X, y)
    following = _following(model)

    outputs: dict = {}     # id(module) -> the statistics of its last output
    handles: list = []
    with _Preserved(model):
        try:
            for _, module in layers:
                handles.append(module.register_forward_hook(_recorder(outputs, _output_stats)))
                after = _activation_after(following.get(id(module)))
                if after is not None:
                    handles.append(after.register_forward_hook(_recorder(outputs, _tail_stats)))
            if not model.training:   # as fit: a frozen module in a training model stays so
                model.train()
            model.zero_grad()
            value = loss(model(X), y)                                   # forward
            model.backward(loss.backward(), compute_grad_input=False)   # backward
            rows = [_row(name, module, following.get(id(module)), outputs, lr)
                    for name, module in layers]
        finally:
            for handle in handles:
                handle.remove()
    return LayerStats(rows, loss=float(value), samples=len(X), lr=lr)


def _batch(model, loss, X, y):
    """(X, y) checked and converted as fit does (errors name X and y), the model's input
    normalisation applied, without touching the model: the checks see only its
    ``output_shape``, dtype and ``input_normalization``."""
    first = next(model.parameters(), None)
    view = types.SimpleNamespace(output_shape=model.output_shape,
                                 dtype=None if first is None else first.dtype,
                                 input_normalization=getattr(model, "input_normalization",
                                                             None))
    X, y, _ = _as_data(view, loss, X, y)
    return _model_input(view, X), y


class _Preserved:
    """Inside the block the model may run a training pass; afterwards every module's mode,
    every parameter's gradient, every buffer (running statistics) and the library generator
    are as before (parameters are never changed: no optimizer runs)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        model = self.model
        self.modes = [(m, m.training) for m in model.modules()]
        self.grads = [(p, p.grad.copy()) for p in model.parameters()]
        self.buffers = [(m, name, array.copy()) for m in model.modules()
                        for name, array in m._buffers.items() if array is not None]
        self.rng = _random.get_state()
        return self

    def __exit__(self, *exc_info):
        for module, training in self.modes:
            module.training = training
        for p, grad in self.grads:
            np.copyto(p.grad, grad)
        for module, name, array in self.buffers:
            np.copyto(module._buffers[name], array)
        _random.set_state(self.rng)


def _following(model):
    """``{id(module): the module that runs right after it}`` in the model's Sequentials
    (nested plain Sequentials read as one list: they run their modules in order)."""
    def flat(seq):
        items: list = []
        for child in seq:
            items += flat(child) if isinstance(child, Sequential) else [child]
        return items

    following: dict = {}
    for module in model.modules():          # outer containers first: they see across
        if isinstance(module, Sequential):  # the ends of the inner ones
            items = flat(module)
            for a, b in zip(items, items[1:]):
                following.setdefault(id(a), b)
    return following


def _activation_after(module):
    return module if isinstance(module, (ReLU, LeakyReLU, Sigmoid, Tanh)) else None


def _recorder(outputs, summarize):
    def hook(module, inputs, output):
        # (computed now: on the fast path the output is a buffer the next step overwrites)
        outputs[id(module)] = summarize(module, np.asarray(output))
    return hook


def _output_stats(module, out):
    """(mean, std, fraction of exact zeros) of a layer's output, in float64."""
    if out.size == 0:
        return None, None, None
    return (float(np.mean(out, dtype=np.float64)), float(np.std(out, dtype=np.float64)),
            np.count_nonzero(out == 0) / out.size)


def _tail_stats(activation, out):
    """("dead_fraction", value) after a ReLU, ("saturated_fraction", value) after a sigmoid
    or tanh (see the module docstring)."""
    if out.size == 0:
        return None, None
    if isinstance(activation, (ReLU, LeakyReLU)):
        # a unit: a feature of (N, F), a channel of (N, C, H, W), else a value of a sample
        axes = (0,) + tuple(range(2, out.ndim)) if out.ndim in (2, 4) else 0
        alive = np.any(out.reshape(out.shape[0], -1) > 0, axis=0) if axes == 0 else \
            np.any(out > 0, axis=axes)
        return "dead_fraction", np.count_nonzero(~alive) / alive.size
    if isinstance(activation, Sigmoid):
        saturated = np.count_nonzero(out < SATURATION) + np.count_nonzero(out > 1 - SATURATION)
    else:
        saturated = np.count_nonzero(np.abs(out) > 1 - SATURATION)
    return "saturated_fraction", saturated / out.size


def _norm(array):
    return float(np.linalg.norm(np.ravel(array).astype(np.float64, copy=False)))


def _row(name, module, after, outputs, lr):
    mean, std, zeros = outputs.get(id(module), (None, None, None))
    activation = _activation_after(after)
    row = {"name": name, "type": type(module).__name__, "act_mean": mean, "act_std": std,
           "act_zero_fraction": zeros,
           "activation": None if activation is None else type(activation).__name__,
           "dead_fraction": None, "saturated_fraction": None}
    if activation is not None and id(activation) in outputs:
        key, value = outputs[id(activation)]
        if key is not None:
            row[key] = value
    weight = module._parameters.get("weight")
    if weight is None:
        weight = next(p for p in module._parameters.values() if p is not None)
    row["weight_norm"] = w = _norm(weight.data)
    row["grad_norm"] = g = _norm(weight.grad)
    row["update_ratio"] = None if lr is None else (
        lr * g / w if w > 0 else (math.inf if lr * g > 0 else 0.0))
    return row


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------

def _fixed(value, spec):
    if value is None:
        return "-"
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text   # no "-0.000"


def _after(row):
    if row.get("dead_fraction") is not None:
        return f"{row['activation']} {row['dead_fraction']:.0%} dead"
    if row.get("saturated_fraction") is not None:
        return f"{row['activation']} {row['saturated_fraction']:.0%} saturated"
    return row.get("activation") or "-"


def format_stats(stats):
    """`layer_stats`'s list as a text table, one line per layer.

    Columns: the layer's name and type, the mean and standard deviation of its output and
    its share of zeros, the activation after it (with its dead or saturated share), the
    weight's norm, its gradient's norm and (with a learning rate) the update ratio; then
    the batch's loss when `stats` is a `LayerStats`.
    """
    header = ("layer", "type", "act_mean", "act_std", "zeros", "next", "weight_norm",
              "grad_norm", "update_ratio")
    rows = [header]
    for row in stats:
        rows.append((str(row["name"]) or "(model)", str(row["type"]),
                     _fixed(row.get("act_mean"), ".3f"), _fixed(row.get("act_std"), ".3f"),
                     _fixed(row.get("act_zero_fraction"), ".0%"), _after(row),
                     _fixed(row.get("weight_norm"), ".2f"), _fixed(row.get("grad_norm"), ".2e"),
                     _fixed(row.get("update_ratio"), ".1e")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    left = (0, 1, 5)      # the names are left-aligned, the numbers right-aligned

    def line(r):
        return "  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(r, widths))).rstrip()

    lines = [line(rows[0]), "-" * len(line(rows[0]))] + [line(r) for r in rows[1:]]
    loss = getattr(stats, "loss", None)
    if loss is not None:
        text = f"loss {loss:.4f} on {stats.samples} samples"
        if stats.lr is not None:
            text += (f"; update_ratio = lr * grad_norm / weight_norm with lr {stats.lr:g} "
                     f"(plain SGD's step)")
        lines.append(text)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The fit callback
# --------------------------------------------------------------------------------------

class StatsRecorder(Callback):
    """A ``fit`` callback: `layer_stats` on a fixed probe batch, every few steps or every
    epoch, kept in ``history``. Training is unchanged, bit for bit.

    Parameters
    ----------
    X, y : array_like
        The probe batch (e.g. the first 256 training samples), checked when fit begins.
    loss : Loss or str, optional
        By default the loss that ``fit`` trains with.
    every : int >= 1 or "epoch", default "epoch"
        Record after every `every`-th optimizer step (counted over every fit this recorder
        is given to), or at the end of each epoch.
    lr : float >= 0 or Optimizer, optional
        For the update ratios: a number, or the optimizer, whose ``lr`` is read at each
        record (schedules change it).

    Attributes
    ----------
    history : list of dict
        One per record: ``{"epoch", "batch", "step", "stats"}``, with ``stats`` the
        `LayerStats`; ``step`` counts the optimizer steps done, ``batch`` is None for an
        end-of-epoch record.
    """

    def __init__(self, X, y, loss=None, every="epoch", lr=None):
        if every != "epoch":
            if isinstance(every, str):
                raise ValueError(f"every must be an int >= 1 or 'epoch', got {every!r}")
            every = _checks.integer("every", every, 1)
        if lr is not None and not isinstance(lr, numbers.Real):
            if not hasattr(lr, "lr"):
                raise TypeError(f"lr must be a number or an optimizer (with .lr), got "
                                f"{type(lr).__name__}")
        elif lr is not None:
            lr = _checks.real("lr", lr, 0.0)
        self.X, self.y, self.loss, self.every, self.lr = X, y, loss, every, lr
        self.history = []
        self.steps = 0
        self._epoch = 0
        self._loss = None

    def on_train_begin(self, logs=None):
        loss = self.loss if self.loss is not None else getattr(self.model, "_last_loss", None)
        if loss is None:
            raise ValueError("StatsRecorder needs loss= (the model has no fit loss)")
        self._loss = _as_loss(loss)
        self.X, self.y = _batch(self.model, self._loss, self.X, self.y)   # checked once

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.every != "epoch" and self.steps % self.every == 0:
            self._record(batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.every == "epoch":
            self._record(None)

    def _record(self, batch):
        lr = self.lr
        if lr is not None and not isinstance(lr, numbers.Real):
            lr = lr.lr
        stats = layer_stats(self.model, self.X, self.y, self._loss, lr=lr)
        self.history.append({"epoch": self._epoch, "batch": batch, "step": self.steps,
                             "stats": stats})

    def series(self, layer, key):
        """One statistic of one layer (its dotted name) over the records, as an array:
        e.g. ``recorder.series("0", "grad_norm")`` (None entries become NaN)."""
        values = []
        for record in self.history:
            row = next((r for r in record["stats"] if r["name"] == str(layer)), None)
            if row is None:
                raise KeyError(f"no layer with parameters named {layer!r}")
            values.append(np.nan if row[key] is None else row[key])
        return np.asarray(values, dtype=np.float64)
