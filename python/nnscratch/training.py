"""The training loop and inference in batches: `fit`, `evaluate`, `predict`, `predict_proba`.

These are the methods of ``Sequential`` (``model.fit(...)``); they take the model as
their first argument here. One step of `fit` is the textbook training loop (`_Step`)::

    out = model(xb)                       # forward
    value = loss(out, yb)                 # loss
    model.zero_grad()
    model.backward(loss.backward())       # backward
    optimizer.step()                      # update

On the compiled kernels the same step runs as ``nnscratch._fast.TrainStep``: the same
numbers, bit for bit, with the batch gathered into kept arrays and no pass to zero the
gradients. Arguments are checked once, before the first epoch, with a ``ValueError`` /
``TypeError`` naming the argument.

The input rule, the same in `fit`, `evaluate`, `predict` and `predict_proba`: uint8 X holds
pixels, and a pixel k is the float k / 255 (`nnscratch.data.to_float`: the floats the
loaders of `nnscratch.datasets` return); then the model's ``input_normalization``, if it
has one (``fit(normalize=...)``), is applied. Both are done a batch at a time, so a uint8
data set stays uint8 in memory (a quarter of float32's size) and no float copy of it is
ever made; the same images as uint8 or as the floats k / 255 give the same outputs, bit for
bit. Float X is used as it is (cast once to the model's dtype); other integer and bool X
are cast as they are (3 stays 3.0).
"""
from __future__ import annotations

import copy
import functools
import math
import numbers
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import numpy as np
import numpy.typing as npt

from . import _checks, _fast, _random
from . import data as _data
from . import metrics as _metrics
from .backend import fast_path, kernels
from .callbacks import Callback, History
from .layers import Sigmoid, Softmax
from .losses import LOSSES, BCEWithLogitsLoss, CrossEntropyLoss, Loss
from .metrics import MetricSpec
from .module import repeated_modules

if TYPE_CHECKING:
    from .model import Sequential
    from .optim import Optimizer

__all__ = ["fit", "evaluate", "predict", "predict_proba", "validation_split_indices"]


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------

# (the helpers take a Sequential, or anything with its output_shape and dtype)

def _model_dtype(model: Any) -> np.dtype:
    return model.dtype if model.dtype is not None else np.dtype(np.float32)


def _as_features(model: Any, X: npt.ArrayLike, name: str, check_finite: bool = True,
                 keep_pixels: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """X as a C-contiguous array of the model's dtype -- uint8 pixels k as k / 255, or,
    with `keep_pixels`, left as they are for the caller to scale a batch at a time
    (`_input_steps`); returns (X, per-sample output shape)."""
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real-valued array, got dtype {X.dtype}")
    if X.ndim < 2:
        raise ValueError(f"{name} must have shape (N, features...), got {X.shape}")
    try:
        output_shape = model.output_shape(X.shape[1:])
    except ValueError as err:
        raise ValueError(f"{name} has samples of shape {X.shape[1:]}, which the model does "
                         f"not accept: {err}") from None
    if hasattr(model, "_sample_shape"):
        model._sample_shape = X.shape[1:]                # (summary()'s default)
    if X.dtype == np.uint8:        # pixels: always finite
        if not keep_pixels:
            X = np.require(_data.to_float(X, _model_dtype(model)), None, ["C", "A"])
        return X, output_shape
    X = np.require(X, _model_dtype(model), ["C", "A"])   # contiguous and aligned
    # the bit-test kernel: no boolean temporary the size of X (47 MB for Fashion-MNIST)
    if check_finite and not kernels().all_finite(X):
        raise ValueError(f"{name} contains NaN or infinity")
    return X, output_shape


def _as_data(model: Any, loss: Loss, X: npt.ArrayLike, y: npt.ArrayLike,
             x_name: str = "X", y_name: str = "y", keep_pixels: bool = False
             ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Check and convert (X, y) for `loss`; returns (X, y, accuracy kind or None)."""
    X, output_shape = _as_features(model, X, x_name, keep_pixels=keep_pixels)
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(X):
        raise ValueError(f"{x_name} and {y_name} have different lengths: {len(X)} samples, "
                         f"{len(y) if y.ndim else 'a scalar'} targets")
    if len(X) == 0:
        raise ValueError(f"{x_name} is empty")
    integer_labels = y.dtype.kind in "iub"
    y = loss.prepare_targets(y, len(X), output_shape, _model_dtype(model), name=y_name)
    if isinstance(loss, CrossEntropyLoss):
        kind = "multiclass"
    elif isinstance(loss, BCEWithLogitsLoss) and integer_labels:
        kind = "binary"
    else:
        kind = None
    return X, y, kind


def _as_loss(loss: Loss | str) -> Loss:
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a "
                             f"Loss instance")
        return LOSSES[loss]()
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a Loss instance such as CrossEntropyLoss(), got "
                        f"{type(loss).__name__}")
    return loss


# --------------------------------------------------------------------------------------
# The input rule: uint8 pixels scaled, then the model's normalisation, a batch at a time
# --------------------------------------------------------------------------------------

def _input_steps(model: Any, X: np.ndarray, normalization: _data.Normalize | None
                 ) -> tuple[Callable[[np.ndarray], np.ndarray] | None, _data.Normalize | None]:
    """(scale, normalize) for batches of X as `_as_features(keep_pixels=True)` returned it:
    scale turns uint8 pixels k into k / 255 in the model's dtype (None for float X, which
    is in that dtype already); normalize is `normalization` in the model's dtype (None for
    none). Each makes a new array: a batch of X itself is never changed."""
    dtype = _model_dtype(model)
    scale = functools.partial(_data.to_float, dtype=dtype) if X.dtype == np.uint8 else None
    normalize = None if normalization is None else \
        _data.Normalize(normalization.mean, normalization.std, dtype=dtype)
    return scale, normalize


def _prepare_of(model: Any, X: np.ndarray, name: str,
                normalization: _data.Normalize | None = None, *,
                own: bool = True) -> Callable[[np.ndarray], np.ndarray] | None:
    """The function that turns a batch of X (as `_as_features(keep_pixels=True)` returned
    it) into the model's input -- uint8 scaled, then normalised -- or None when a batch of
    X is the input already (float X, no normalisation: the path that changes nothing).
    `normalization` is the model's own unless `own` is False. A normalisation that does
    not fit X's channels is a ValueError naming `name`."""
    if own:
        normalization = getattr(model, "input_normalization", None)
    scale, normalize = _input_steps(model, X, normalization)
    if normalize is None:
        return scale
    try:
        normalize(X[:1])
    except ValueError as err:
        raise ValueError(f"{name} does not fit the input normalization {normalization!r}: "
                         f"{err}") from None
    # Normalize divides uint8 pixels by 255 itself, as to_float does: the same bits as
    # scale-then-normalize, with one new array per batch instead of two
    return normalize


def _model_input(model: Any, X: np.ndarray) -> np.ndarray:
    """X -- checked floats, from `_as_data` -- with the model's input_normalization applied:
    what the model's first layer sees in fit (for tools that run the model on a batch of
    their own, such as ``nnscratch.inspect.layer_stats``)."""
    prepare = _prepare_of(model, X, "X")
    return X if prepare is None else prepare(X)


class _Samples:
    """Samples of X, held without a copy of X: sample i is ``X[rows[i]]`` (``X[i]`` when
    `rows` is None), turned into the model's input a batch at a time by `prepare` (None:
    the rows are the input)."""

    def __init__(self, X, rows=None, prepare=None):
        self.X, self.rows, self.prepare = X, rows, prepare

    def __len__(self):
        return len(self.X) if self.rows is None else len(self.rows)

    @property
    def shape(self):
        return (len(self),) + self.X.shape[1:]

    def batch(self, start, stop):
        """Samples [start, stop) as the model's input."""
        xb = self.X[start:stop] if self.rows is None else \
            self.X.take(self.rows[start:stop], axis=0)
        return xb if self.prepare is None else self.prepare(xb)


# --------------------------------------------------------------------------------------
# validation_split: which rows are held out
# --------------------------------------------------------------------------------------

# the held-out rows of a stratified split are drawn with PCG64(_SPLIT_SEED), never with fit's
# seed: a function of the labels and the fraction alone, so that every fit on the same data
# -- a run continued, or one fit per epoch as `nnscratch train` calls it -- holds out the
# same rows, and none of them is ever trained on
_SPLIT_SEED = 0


def validation_split_indices(y: npt.ArrayLike, validation_split: float,
                             stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``fit(X, y, validation_split=...)`` trains on and holds out for validation.

    Stratified (fit's choice for class labels: CrossEntropyLoss, or BCEWithLogitsLoss with
    0/1 integer labels), every class gives its share: the rows of
    ``nnscratch.data.split_indices(y, validation_split, seed=0)`` -- ``round(N *
    validation_split)`` rows in all, each class within one row of its exact share, which
    of its rows drawn at random, but always the same ones for the same labels and fraction
    (fit's `seed` plays no part). Not stratified (regression targets), the last
    ``N - int(N * (1 - validation_split))`` rows, as Keras takes them.

    Parameters
    ----------
    y : array (N, ...)
        The targets; stratified, one class label per sample (N,).
    validation_split : float in (0, 1)
    stratify : bool, default True

    Returns
    -------
    train_index, validation_index : int64 ndarrays
        Sorted: both parts keep the rows' order.

    Raises
    ------
    ValueError
        validation_split outside (0, 1), or a split that leaves a part empty.
    """
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError("y must have one row per sample, got a scalar")
    f = _checks.real("validation_split", validation_split, 0.0, 1.0, low_open=True,
                     high_open=True)
    stratify = _checks.boolean("stratify", stratify)
    n = len(y)
    if stratify:
        # (split_indices's count, round half up, checked here for fit's own message)
        n_val = int((2 * n * Fraction(f) + 1) // 2)
    else:
        n_val = n - int(n * (1.0 - f))
    if n_val == 0 or n_val == n:
        raise ValueError(f"validation_split={validation_split} leaves an empty "
                         f"{'validation' if n_val == 0 else 'training'} set from {n} samples")
    if not stratify:
        rows = np.arange(n, dtype=np.int64)
        return rows[:n - n_val], rows[n - n_val:]
    return _data.split_indices(y, f, seed=_SPLIT_SEED)


class _Accuracy:
    """Counts correct predictions: "multiclass", the largest output is the label's;
    "binary", the logit's sign agrees with the 0/1 target."""

    def __init__(self, kind):
        self.kind = kind

    def correct(self, out, target):
        """(number correct, number of predictions) for one batch."""
        if self.kind == "multiclass":
            return int(np.count_nonzero(out.argmax(axis=1) == target)), out.shape[0]
        return int(np.count_nonzero((out > 0) == (target > 0.5))), out.size


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------

def fit(model: Sequential, X: npt.ArrayLike, y: npt.ArrayLike, *, loss: Loss | str,
        optimizer: Optimizer, epochs: int, batch_size: int,
        validation_data: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
        validation_split: float = 0.0, shuffle: bool = True, seed: int | None = None,
        progress: bool | str = True, callbacks: Sequence[Callback] | None = None,
        initial_epoch: int = 0, check_finite: bool = True,
        transform: Callable[[np.ndarray, np.random.Generator], npt.ArrayLike] | None = None,
        metrics: Sequence[MetricSpec] | None = None,
        normalize: bool | _data.Normalize | None = None) -> History:
    """Train `model` with mini-batch gradient descent.

    Parameters
    ----------
    model : Sequential
    X : array_like (N, features...)
        Float X is cast once to the model's dtype; NaN or infinity is an error. uint8 X
        holds pixels: it stays uint8 in memory, and each batch becomes the floats k / 255
        as it is used (`nnscratch.data.to_float`; no float copy of X is ever made) -- the
        rule evaluate and predict apply too, so uint8 images and the floats k / 255 give
        the same training, bit for bit. Other integer and bool X are cast as they are.
    y : array_like
        Integer labels (N,) for CrossEntropyLoss (or 0/1 labels for BCEWithLogitsLoss),
        else targets of the output's shape.
    loss : Loss or str ("cross_entropy", "mse", "bce_with_logits")
    optimizer : Optimizer over the model's parameters
    epochs : int >= 0
    batch_size : int >= 1
        The last, smaller batch of an epoch is used, not dropped.
    validation_data : (X_val, y_val), optional
        Scaled and normalised as X is.
    validation_split : float in [0, 1), default 0
        Hold out this fraction of the samples for validation (not together with
        validation_data); the rows `validation_split_indices` gives. For class labels
        (CrossEntropyLoss, or BCEWithLogitsLoss with 0/1 integer labels and one output)
        the split is stratified: ``round(N * validation_split)`` rows, every class within
        one row of its share, drawn per class with a fixed generator, so that the same
        data always holds out the same rows (fit's `seed` does not change them: calling
        fit again, or once per epoch, never trains on a validation row). For other
        targets (regression) the last rows, before any shuffling, as Keras takes them.
        The held-out rows are read from X where they are: nothing is copied.
    shuffle : bool, default True
        Shuffle the training samples every epoch.
    seed : int, optional
        Seeds the shuffling (and the transform); by default it draws from the library
        generator (``nnscratch.seed``).
    progress : bool or str, default True
        One tqdm progress bar per epoch, showing the running loss and accuracy. A string is
        the bar's label, formatted with ``epoch`` (counting from 1) and ``epochs``: the
        default is ``"Epoch {epoch}/{epochs}"`` (a caller that runs one epoch per call, as
        ``nnscratch train`` does, gives its own total).
    callbacks : list of Callback, optional
        E.g. ``EarlyStopping``, ``StepLR``.
    initial_epoch : int >= 0, default 0
        Epoch at which to start (as Keras): runs epochs ``initial_epoch .. epochs - 1``,
        numbered so in the progress bar and callbacks (for resuming a run).
    check_finite : bool, default True
        Stop with FloatingPointError as soon as the loss or any parameter's gradient is NaN
        or infinite, naming the epoch, the batch and the layer (for the loss: the first
        layer whose output is not finite). False opts out: training goes on regardless.
    transform : callable ``transform(xb, rng) -> array``, optional
        Data augmentation (``nnscratch.transforms``, e.g. ``Compose([RandomCrop(28,
        padding=2), RandomHorizontalFlip()])``), applied to each training batch only, never
        to the validation data. ``xb`` is a fresh copy of the batch's rows in the model's
        dtype (the transform may keep or change it); the result, as many samples, is cast
        to the model's dtype. It runs in a background thread, preparing the next batch
        while the current one trains, so it must not touch the model; its exceptions are
        raised by fit. ``rng`` is a generator of its own for each epoch, made from `seed`
        and the epoch number (``_transform_generator``): the shuffling is the same with or
        without a transform, the same seed gives the same augmented batches, and a run
        resumed at ``initial_epoch=k`` with the seed of the interrupted run gets the
        transform draws that run had in epoch k. Without `seed`, the generators come from
        a jumped copy of the library generator (which is left as it was).
    metrics : list, optional
        More figures to record each epoch, beside "loss" and "accuracy" (see
        `nnscratch.metrics`): names -- "accuracy", "top_5_accuracy" (any k),
        "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
        "weighted_recall", "weighted_f1" -- for integer labels; a function
        ``fn(y_true, outputs) -> float``, recorded under its ``__name__``; or a pair
        ``(name, fn)``. Like "accuracy", each is computed from the outputs of the epoch's
        training steps (training mode; no extra forward pass) and, with validation data,
        again as "val_<name>" in eval mode at the end of the epoch; each goes into the
        History, the epoch's logs given to the callbacks and the progress bar. ``fn`` gets
        all the pass's targets (integer labels for CrossEntropyLoss, else the targets as
        fit holds them, in the model's dtype) and outputs (N, ...) in the same order.
        Metrics only read the outputs: the weights are the same, bit for bit, with or
        without them.
    normalize : None, bool or nnscratch.data.Normalize, default None
        Standardise the inputs channel by channel, ``(x - mean) / std`` on the scaled
        pixels (torchvision's ``Normalize``), a batch at a time. True: the mean and
        standard deviation of each channel of the training rows (after the validation
        split), computed once before the first epoch (`nnscratch.data.channel_stats`:
        exact for uint8, without a float copy); channels are axis 1 of (N, C, H, W) X, and
        flat rows count as one channel (give a Normalize for flat rows of several). A
        `Normalize`: those statistics. Either becomes ``model.input_normalization``, part
        of the model from then on: evaluate, predict, predict_proba, the validation data,
        ``model.save`` and ``nnscratch.load`` all keep to it (``model(x)`` does not: it is
        the layers alone). False: none (``input_normalization`` set to None). None (the
        default): the model's ``input_normalization`` as it is -- none for a new model.
        With a `transform`, the transform sees the scaled batch and the normalisation
        comes after it (a crop's zero padding stays black, as in torchvision).

    Returns
    -------
    History
        ``history["loss"]``: per epoch, the mean over the epoch's samples of the batch
        losses (each batch weighted by its size, as Keras); ``"accuracy"`` for integer
        labels (training mode outputs, during the epoch); ``"val_loss"`` and
        ``"val_accuracy"`` computed in eval mode at the end of the epoch; then the
        `metrics` (and their "val_" twins), in the order given.

    Raises
    ------
    FloatingPointError
        When the loss or a gradient becomes NaN or infinite (unless check_finite=False),
        naming the epoch, the batch and the layer.

    Notes
    -----
    The model trains in training mode: a model in eval mode is put in training mode (every
    module of it); in a model already in training mode, a module put in eval mode (say, a
    frozen batch norm) stays in eval mode. Every module's mode is put back afterwards.
    """
    loss = _as_loss(loss)
    epochs = _checks.integer("epochs", epochs, 0)
    initial_epoch = _checks.integer("initial_epoch", initial_epoch, 0)
    batch_size = _checks.integer("batch_size", batch_size, 1)
    if isinstance(progress, str):
        try:
            progress.format(epoch=1, epochs=epochs)
        except Exception as exc:       # KeyError, IndexError, ValueError, AttributeError...
            raise ValueError(f"progress must be True, False or a label such as "
                             f"'Epoch {{epoch}}/{{epochs}}', got {progress!r} ({exc!r})") from None
    elif not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True, False or a str label, got "
                        f"{type(progress).__name__}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
            or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must be an Optimizer such as SGD(...), got "
                        f"{type(optimizer).__name__}")
    model_params = {id(p) for p in model.parameters()}
    if model_params and not any(id(p) in model_params for p in getattr(optimizer, "params", [])):
        raise ValueError("optimizer does not hold any of the model's parameters (build it "
                         "with optimizer = SGD(model.parameters(), lr=...))")
    if normalize is not None and not isinstance(normalize, (bool, np.bool_, _data.Normalize)):
        raise TypeError(f"normalize must be None, True, False or an nnscratch.data.Normalize, "
                        f"got {type(normalize).__name__}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable as transform(xb, rng), such as "
                        f"nnscratch.transforms.RandomCrop(28, padding=2), got "
                        f"{type(transform).__name__}")
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")

    X, y, accuracy_kind = _as_data(model, loss, X, y, keep_pixels=True)
    # a model holding one layer object twice cannot train: refused before fit changes anything
    problem = repeated_modules(model)
    if problem:
        raise ValueError(problem)
    # the training samples are X[train_rows] (X itself when None): a stratified split picks
    # rows from all over X, which are read where they are, never copied out of it
    train_rows = val_rows = None
    X_val: np.ndarray | None
    if validation_data is not None:
        if validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        X_val, y_val, _ = _as_data(model, loss, validation_data[0], validation_data[1],
                                   x_name="validation_data[0]", y_name="validation_data[1]",
                                   keep_pixels=True)
    elif validation_split:
        labels = y.reshape(len(y)) if accuracy_kind and y.size == len(y) else None
        train_rows, val_rows = validation_split_indices(
            y if labels is None else labels, validation_split, stratify=labels is not None)
        if labels is None:          # the last rows: views of X and y, as before
            split_at = len(train_rows)
            X, X_val, y, y_val = X[:split_at], X[split_at:], y[:split_at], y[split_at:]
            train_rows = val_rows = None
        else:
            X_val, y_val = X, y[val_rows]
    else:
        X_val = y_val = None
    if normalize is None:
        normalization = getattr(model, "input_normalization", None)
    elif isinstance(normalize, _data.Normalize):
        normalization = normalize
    elif normalize:                 # the training samples' statistics, once
        normalization = _data.Normalize.from_data(X, rows=train_rows)
    else:
        normalization = None
    scale, norm = _input_steps(model, X, normalization)
    _prepare_of(model, X, "X", normalization, own=False)            # (its channels checked)
    val_samples = None
    if X_val is not None:
        val_samples = _Samples(X_val, val_rows,
                               _prepare_of(model, X_val, "validation_data[0]", normalization,
                                           own=False))
    train = _Samples(X, train_rows)             # (its len and shape: the training samples')

    extra = _metric_list(metrics, model, train, accuracy_kind)
    names = ["loss"] + (["accuracy"] if accuracy_kind else []) + [m.name for m in extra]
    if val_samples is not None:
        names += [f"val_{m}" for m in names]
    if seed is not None:
        seed = _checks.integer("seed", seed, 0)
    rng = np.random.Generator(np.random.PCG64(seed)) if seed is not None else \
        _random.generator()
    if transform is None:
        transform_entropy = None
    elif seed is not None:
        transform_entropy = seed
    else:   # a draw from a far-away copy of the stream: the shuffles stay as they were
        bits = cast(np.random.PCG64, rng.bit_generator)     # (the library's, or PCG64(seed))
        transform_entropy = int(np.random.Generator(bits.jumped())
                                .integers(2 ** 63))
    history = History()
    if normalize is not None:     # (every check passed: a rejected fit changes nothing)
        model.input_normalization = normalization
    # training mode: a model in eval mode is put in training mode, every module of it; in a
    # model already training, a module the user put in eval mode (a frozen batch norm)
    # stays so. Each module's mode is put back at the end.
    modes = [(module, module.training) for module in model.modules()]
    if not model.training:
        model.train()
    model.stop_training = False
    model._last_loss = loss
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin({"metrics": list(names)})
    step_kind = _fast.TrainStep if fast_path() and _fast.plannable(model) else _Step
    loop = _EpochLoop(model, step_kind(model, loss, optimizer, bool(check_finite)), X, y,
                      batch_size, accuracy_kind, callbacks, transform, train_rows, scale, norm)
    if extra:
        loop.tracker = _running_metrics(extra, model, train, accuracy_kind)
        if val_samples is not None:
            loop.val_tracker = _running_metrics(extra, model, val_samples, accuracy_kind)
    try:
        # positions of the training samples (rows of X unless a stratified split chose them)
        order = np.arange(len(train), dtype=np.int64)   # take_rows takes int64 indices
        for epoch in range(initial_epoch, epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            if shuffle:
                rng.shuffle(order)
            transform_rng = None if transform is None else \
                _transform_generator(transform_entropy, epoch)
            logs = loop.run(epoch, epochs, order if shuffle else None, progress, val_samples,
                            y_val, transform_rng)
            history.append(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        for cb in callbacks:
            cb.on_train_end()
    finally:
        for module, training in modes:      # each module's own mode, as it was
            module.training = training
    return history


class _Step:
    """fit's training step, as the seed writes it: forward, loss, zero_grad, backward,
    update. ``step(xb, yb)`` returns ``(out, value, bad)``: the output, the loss, and None
    -- or, when checking, "loss" if the loss is NaN/inf, or the name of the first parameter
    whose gradient is (in both cases before anything is updated)."""

    def __init__(self, model, loss, optimizer, check_finite):
        self.model, self.loss, self.optimizer, self.check = model, loss, optimizer, check_finite
        self.named = list(model.named_parameters())
        known = {id(p) for _, p in self.named}
        self.named += [(f"{i} of the optimizer", p)
                       for i, p in enumerate(getattr(optimizer, "params", []))
                       if id(p) not in known]

    def gather(self, X, y, rows):
        return kernels().take_rows(X, rows), y[rows]

    def __call__(self, xb, yb):
        out = self.model(xb)                                        # forward
        value = self.loss(out, yb)                                  # loss
        if self.check and not math.isfinite(value):
            return out, value, "loss"
        self.model.zero_grad()
        self.model.backward(self.loss.backward(), compute_grad_input=False)   # backward
        if self.check:
            for name, p in self.named:
                if not kernels().all_finite(p.grad):
                    return out, value, name
        self.optimizer.step()                                       # update
        return out, value, None


# fit(transform=): the transform's generator of each epoch is
#     Generator(PCG64(SeedSequence(entropy, spawn_key=(_TRANSFORM_STREAM, epoch))))
# with entropy = fit's seed: a function of (seed, epoch) alone, apart from the shuffling's
# PCG64(seed) stream (spawn keys are hashed with the seed, so none of these equals it)
_TRANSFORM_STREAM = 0x7472616E     # "tran"


def _transform_generator(entropy, epoch):
    """The generator that fit passes to the transform in `epoch` (see `fit`)."""
    sequence = np.random.SeedSequence(entropy, spawn_key=(_TRANSFORM_STREAM, epoch))
    return np.random.Generator(np.random.PCG64(sequence))


class _EpochLoop:
    """One epoch of mini-batch steps.

    The training samples are ``X[rows]`` (X itself when `rows` is None), their targets
    ``y[rows]``; an epoch's `order` lists positions among them (0 .. n - 1). `scale` and
    `normalize` (`_input_steps`) turn a batch of X into the model's input; with neither
    (float X, no normalisation) a batch is gathered as it always was, by the step's own
    gather into kept arrays."""

    def __init__(self, model, step, X, y, batch_size, accuracy_kind, callbacks,
                 transform=None, rows=None, scale=None, normalize=None):
        self.model, self.step, self.loss = model, step, step.loss
        self.X, self.batch_size = X, batch_size
        self.rows, self.y_of_rows = rows, y       # (y of X's rows, for the step's gather)
        self.y = y if rows is None else y[rows]   # the training samples' targets
        self.scale, self.normalize = scale, normalize
        # the whole per-batch rule, without a transform between its two steps
        self.prepare = normalize if normalize is not None else scale
        self.accuracy = _Accuracy(accuracy_kind) if accuracy_kind else None
        self.callbacks = callbacks
        self.transform = transform
        # fit(metrics=): RunningMetrics of the training batches and of the validation pass
        self.tracker = self.val_tracker = None

    def _gather(self, order, start, stop):
        """Batch [start, stop) of the epoch: samples order[start:stop] (or a slice), as
        (the model's input, the targets)."""
        positions = slice(start, stop) if order is None else order[start:stop]
        rows = positions if self.rows is None else self.rows[positions]     # X's rows
        if self.prepare is None:       # float X as it is
            if isinstance(rows, slice):
                return self.X[rows], self.y[rows]
            return self.step.gather(self.X, self.y_of_rows, rows)
        return self.prepare(self.X[rows]), self.y[positions]

    def run(self, epoch, epochs, order, progress, val_samples, y_val, transform_rng=None):
        model, loss = self.model, self.loss
        n = len(self.y)
        n_batches = -(-n // self.batch_size)
        bar = _progress_bar(progress, epoch, epochs, n_batches) if progress else None
        loss_sum = 0.0
        correct = counted = seen = 0
        # the bar is told of the batches done (and shown the running loss) at most every
        # REFRESH seconds, as often as tqdm redraws it anyway: formatting the figures on
        # every batch cost a tenth of a batch-16 epoch
        pending, next_refresh = 0, 0.0
        prefetch = None
        tracker = self.tracker
        if tracker is not None:
            tracker.reset()
        try:
            if self.transform is not None:      # (its thread ends in the finally below)
                prefetch = _Prefetch(self, order, transform_rng, _model_dtype(model))
            for batch, start in enumerate(range(0, n, self.batch_size)):
                stop = min(start + self.batch_size, n)
                if prefetch is None:
                    xb, yb = self._gather(order, start, stop)
                else:
                    xb, yb = prefetch.next(model, (epoch, epochs, batch, n_batches))
                out, value, bad = self.step(xb, yb)
                if bad is not None:
                    _refuse(model, xb, bad, value, (epoch, epochs, batch, n_batches))
                if self.accuracy is not None:
                    hits, total = self.accuracy.correct(out, yb)
                    correct += hits
                    counted += total
                if tracker is not None:     # (reads `out` only: the step is unchanged)
                    tracker.update(out, yb, slice(start, stop) if order is None
                                   else order[start:stop])
                loss_sum += value * (stop - start)
                seen += stop - start
                for cb in self.callbacks:
                    cb.on_batch_end(batch, {"loss": value, "size": stop - start})
                if bar is not None:
                    pending += 1
                    now = time.monotonic()
                    if now >= next_refresh or stop == n:
                        postfix = {"loss": f"{loss_sum / seen:.4f}"}
                        if counted:
                            postfix["accuracy"] = f"{correct / counted:.4f}"
                        if tracker is not None:
                            postfix.update({k: f"{v:.4f}" for k, v in tracker.running().items()})
                        bar.set_postfix(postfix, refresh=False)
                        bar.update(pending)
                        pending, next_refresh = 0, now + REFRESH
            if self.step.check:
                _refuse_non_finite_weights(model, (epoch, epochs, n_batches - 1, n_batches))
            logs = {"loss": loss_sum / seen}
            if self.accuracy is not None:
                logs["accuracy"] = correct / counted
            if tracker is not None:
                logs.update(tracker.results(self.y))
            if val_samples is not None:
                val = _evaluate_arrays(model, loss, val_samples, y_val, self.accuracy,
                                       self.batch_size, self.val_tracker)
                logs.update({f"val_{k}": v for k, v in val.items()})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=True)
        finally:
            if prefetch is not None:
                prefetch.close()
            if bar is not None:
                bar.close()
        return logs


class _Prefetch:
    """An epoch's transformed training batches, each prepared one step ahead in a
    background thread: ``next()`` returns batch b and sets batch b + 1 going, which is
    gathered and transformed while batch b trains.

    A batch is gathered, scaled (uint8 pixels to k / 255), transformed, cast to the
    model's dtype and then normalised (the loop's `scale` and `normalize`): the transform
    sees the pixels in [0, 1], as torchvision's transforms before its ``Normalize``.

    The thread reads X, y and `order` (which nothing changes during an epoch: the next
    shuffle comes after `close`) and writes only the fresh arrays it hands over, so it
    shares nothing with the step; the epoch's generator is its alone, drawn from in batch
    order. `close` (fit's ``finally``: the epoch's end, an exception, KeyboardInterrupt)
    cancels a batch not yet begun and waits for the one in progress: no thread outlives it.
    """

    def __init__(self, loop, order, rng, dtype):
        self.X, self.y, self.rows, self.order = loop.X, loop.y, loop.rows, order
        self.transform, self.rng, self.dtype = loop.transform, rng, dtype
        self.scale, self.normalize = loop.scale, loop.normalize
        n, batch_size = len(loop.y), loop.batch_size
        self.bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        self.accepted = {self.X.shape[1:]}     # sample shapes the model is known to take
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="nnscratch-fit-transform")
        self.pending: Any = None      # (batch, its Future), None after the last batch
        self._submit(0)

    def _submit(self, batch):
        self.pending = None if batch == len(self.bounds) else \
            (batch, self.executor.submit(self._prepare, *self.bounds[batch]))

    def _prepare(self, start, stop):
        """Batch [start, stop) of the epoch, transformed (runs in the thread)."""
        positions = slice(start, stop) if self.order is None else self.order[start:stop]
        rows = positions if self.rows is None else self.rows[positions]     # X's rows
        # (a fresh array either way: the transform may change it in place)
        xb = self.X[rows] if isinstance(rows, slice) else self.X.take(rows, axis=0)
        if self.scale is not None:
            xb = self.scale(xb)
        elif isinstance(rows, slice):
            xb = xb.copy()
        yb = self.y[positions] if self.order is None else self.y.take(positions, axis=0)
        out = np.asarray(self.transform(xb, self.rng))
        if out.dtype.kind not in "fiub" or out.ndim < 1 or len(out) != stop - start:
            raise ValueError(f"the transform must return an array of the batch's "
                             f"{stop - start} samples, got {out.dtype} array of shape "
                             f"{out.shape}")
        out = np.require(out, self.dtype, ["C", "A"])
        return (out if self.normalize is None else self.normalize(out)), yb

    def next(self, model, where):
        """The next batch (xb, yb); raises what the transform raised."""
        batch, future = self.pending
        try:
            xb, yb = future.result()
        except Exception as exc:
            if hasattr(exc, "add_note"):              # Python 3.11+
                exc.add_note(f"(raised by fit's transform at {_where(*where)})")
            raise
        self._submit(batch + 1)          # the next batch goes while this one trains
        if xb.shape[1:] not in self.accepted:
            try:
                model.output_shape(xb.shape[1:])
            except ValueError as err:
                raise ValueError(f"the transform returned samples of shape {xb.shape[1:]}, "
                                 f"which the model does not accept: {err}") from None
            self.accepted.add(xb.shape[1:])
        return xb, yb

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)


def _where(epoch, epochs, batch, n_batches):
    """'epoch 2/10, batch 7/469' (from 0-based epoch and batch)."""
    return f"epoch {epoch + 1}/{epochs}, batch {batch + 1}/{n_batches}"


def _refuse(model, xb, bad, value, where):
    """The FloatingPointError for a NaN/inf loss (`bad` == "loss") or gradient."""
    hint = ("lower the learning rate or check the data (fit(check_finite=False) trains on "
            "regardless)")
    if bad == "loss":
        raise FloatingPointError(f"the loss became {value} at {_where(*where)}; "
                                 f"{_locate_non_finite(model, xb)}: {hint}")
    raise FloatingPointError(f"the gradient of {_layer_of(model, bad)} became NaN or infinite "
                             f"at {_where(*where)}: {hint}")


def _refuse_non_finite_weights(model, where):
    """FloatingPointError when an update left a weight NaN or infinite (the last step of an
    epoch is checked here: the steps before it by the next step's loss and gradients)."""
    K = kernels()
    for name, p in model.named_parameters():
        if not K.all_finite(p.data):
            raise FloatingPointError(
                f"the weights of {_layer_of(model, name)} became NaN or infinite at "
                f"{_where(*where)} (the update overflowed): lower the learning rate or check "
                f"the data (fit(check_finite=False) trains on regardless)")


def _layer_of(model, name):
    """'2.weight' -> 'layer 2 (Linear), parameter 2.weight'; nested names likewise."""
    owner = name.rpartition(".")[0]
    modules = dict(model.named_modules())
    if "." not in name or owner not in modules:
        return f"parameter {name}"
    return f"layer {owner} ({type(modules[owner]).__name__}), parameter {name}"


def _locate_non_finite(model, xb):
    """Where a non-finite loss comes from: the first layer whose parameters or output are
    NaN/inf, found by running the batch through the layers again (an error path only)."""
    K = kernels()
    for name, p in model.named_parameters():
        if not K.all_finite(p.data):
            return f"the weights of {_layer_of(model, name)} are not finite"
    out = xb
    layers = list(model.children()) or [model]
    for i, layer in enumerate(layers):
        out = layer(out)
        if out.dtype.kind == "f" and not K.all_finite(out):
            return (f"the first non-finite output is that of layer {i} "
                    f"({type(layer).__name__})")
    return "every layer's output is finite: the loss itself overflowed"


REFRESH = 0.1     # seconds between updates of the progress bar (tqdm's own mininterval)


def _progress_bar(label, epoch, epochs, n_batches):
    from tqdm.auto import tqdm   # imported on first use: `import nnscratch` stays light
    label = label if isinstance(label, str) else "Epoch {epoch}/{epochs}"
    return tqdm(total=n_batches, desc=label.format(epoch=epoch + 1, epochs=epochs),
                unit="batch", leave=True, dynamic_ncols=True)


# --------------------------------------------------------------------------------------
# evaluate, predict, predict_proba
# --------------------------------------------------------------------------------------

def _evaluate_arrays(model, loss, samples, y, accuracy, batch_size, tracker=None):
    """Mean loss (and accuracy, and the metrics of `tracker`, a RunningMetrics) over
    checked `_Samples` and targets, in eval mode."""
    n = len(samples)
    loss_sum = 0.0
    correct = counted = 0
    if tracker is not None:
        tracker.reset()
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out = model.infer(samples.batch(start, stop))
        loss_sum += loss(out, y[start:stop]) * (stop - start)
        if accuracy is not None:
            hits, total = accuracy.correct(out, y[start:stop])
            correct += hits
            counted += total
        if tracker is not None:
            tracker.update(out, y[start:stop], slice(start, stop))
    result = {"loss": loss_sum / n}
    if accuracy is not None:
        result["accuracy"] = correct / counted
    if tracker is not None:
        result.update(tracker.results(y))
    return result


def _metric_list(metrics, model, X, accuracy_kind):
    """fit's / evaluate's `metrics=`, checked, as `nnscratch.metrics._Metric`s (less
    "accuracy", which integer labels get anyway)."""
    if metrics is None:
        return []
    recorded = ("loss", "accuracy") if accuracy_kind else ("loss",)
    return _metrics.parse_metrics(metrics, accuracy_kind, model.output_shape(X.shape[1:]),
                                  recorded)


def _running_metrics(parsed, model, X, accuracy_kind):
    return _metrics.RunningMetrics(parsed, accuracy_kind, model.output_shape(X.shape[1:]),
                                   len(X), _model_dtype(model))


def evaluate(model: Sequential, X: npt.ArrayLike, y: npt.ArrayLike,
             loss: Loss | str | None = None, batch_size: int = 256,
             metrics: Sequence[MetricSpec] | None = None) -> dict[str, float]:
    """Mean loss and accuracy of `model` on (X, y), in eval mode.

    X is taken as `fit` takes it: uint8 pixels k as k / 255, then the model's
    ``input_normalization``, a batch at a time (no float copy of a uint8 X is made).

    Parameters
    ----------
    loss : Loss or str, optional
        By default the loss of the model's last `fit`.
    batch_size : int, default 256
    metrics : list, optional
        More figures, as `fit`'s ``metrics=``: names such as "macro_f1" or
        "top_5_accuracy", functions ``fn(y_true, outputs) -> float``, pairs ``(name, fn)``.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}``; "accuracy" only for integer labels
        (CrossEntropyLoss, or BCEWithLogitsLoss with 0/1 labels); then the `metrics`.
    """
    if loss is None:
        loss = model._last_loss
        if loss is None:
            raise ValueError("evaluate() needs loss= (the model has not been fit yet)")
    loss = copy.copy(_as_loss(loss))   # (its own: fit may be using the loss in another thread)
    batch_size = _checks.integer("batch_size", batch_size, 1)
    X, y, kind = _as_data(model, loss, X, y, keep_pixels=True)
    samples = _Samples(X, None, _prepare_of(model, X, "X"))
    extra = _metric_list(metrics, model, X, kind)
    return _evaluate_arrays(model, loss, samples, y, _Accuracy(kind) if kind else None,
                            batch_size,
                            _running_metrics(extra, model, X, kind) if extra else None)


def predict(model: Sequential, X: npt.ArrayLike, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for X, computed in batches in eval mode.

    X is taken as `fit` takes it: uint8 pixels k as k / 255 (the same outputs, bit for
    bit, as for the floats k / 255), then the model's ``input_normalization``, a batch at
    a time. Does not change the model's mode and keeps no state, so several threads may
    call it at once; returns a fresh array of the model's dtype, shape (N,) + output shape.
    """
    batch_size = _checks.integer("batch_size", batch_size, 1)
    X, output_shape = _as_features(model, X, "X", check_finite=False, keep_pixels=True)
    prepare = _prepare_of(model, X, "X")
    result = np.empty((len(X),) + tuple(output_shape), _model_dtype(model))
    for start in range(0, len(X), batch_size):
        xb = X[start:start + batch_size]
        result[start:start + batch_size] = model.infer(xb if prepare is None else prepare(xb))
    return result


def predict_proba(model: Sequential, X: npt.ArrayLike, batch_size: int = 256) -> np.ndarray:
    """Class probabilities: the softmax of `predict`'s rows (N, C), or the sigmoid of a
    single output column. A model that already ends with Softmax or Sigmoid is returned
    as is."""
    out = predict(model, X, batch_size)
    if model.layers and isinstance(model.layers[-1], (Softmax, Sigmoid)):
        return out
    if out.ndim == 2 and out.shape[1] > 1:
        return kernels().softmax_forward(out)
    if out.ndim <= 2:
        return kernels().sigmoid_forward(out)
    raise ValueError(f"predict_proba needs outputs of shape (N, C), got {out.shape}")
