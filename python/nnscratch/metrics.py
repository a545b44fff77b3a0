"""Classification metrics: accuracy, top-k accuracy, the confusion matrix, precision,
recall and F1 -- and how ``fit`` and ``evaluate`` compute them batch by batch.

Every function takes the true labels ``y_true`` (N,), integers 0 .. C-1, and the
predictions ``y_pred``: labels (N,), or the model's scores (N, C) -- logits or
probabilities -- whose largest entry in each row is the predicted class (``argmax``: a tie
goes to the lower class index)::

    import nnscratch as nn
    scores = model.predict(X_test)                                # (N, 10) logits
    nn.metrics.accuracy(y_test, scores)                           # 0.8841
    nn.metrics.confusion_matrix(y_test, scores)                   # (10, 10) counts
    p, r, f1 = nn.metrics.precision_recall_f1(y_test, scores)     # (10,) each
    p, r, f1 = nn.metrics.precision_recall_f1(y_test, scores, average="macro")

They equal scikit-learn's ``accuracy_score``, ``top_k_accuracy_score``,
``confusion_matrix`` and ``precision_recall_fscore_support`` called with
``labels=range(C)`` (tested to 1e-12, float64). Where a rate would divide by zero -- the
precision of a class never predicted, the recall of a class absent from ``y_true`` -- it
is 0.0, as scikit-learn's default ``zero_division="warn"`` gives (without the warning).

``fit(..., metrics=[...])`` and ``evaluate(..., metrics=[...])`` report these by name (see
`METRIC_NAMES`) or run a function of your own, ``fn(y_true, outputs) -> float``. They do
not keep the epoch's outputs for the named metrics: a confusion matrix summed over the
batches (`RunningMetrics`) gives accuracy, precision, recall and F1 exactly, and top-k
hits are counted per batch.
"""
from __future__ import annotations

import numbers
import re
from typing import Any, Callable, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "precision_recall_f1",
           "METRIC_NAMES", "MetricSpec"]

MetricSpec = Union[str, Callable[..., float], Tuple[str, Callable[..., float]]]
"""An entry of ``fit`` / ``evaluate``'s ``metrics=`` list: a name such as "macro_f1", a
function ``fn(y_true, outputs) -> float`` (recorded under its ``__name__``), or a pair
``(name, fn)``."""

AVERAGES = (None, "macro", "weighted")
_MAX_INFERRED_CLASSES = 100_000


# --------------------------------------------------------------------------------------
# Input checks: labels (N,) or scores (N, C)
# --------------------------------------------------------------------------------------

def _labels(y, name):
    """`y` as int64 class labels (N,); TypeError / ValueError naming the argument.
    Floats are accepted when they are whole numbers (1.0), bools as 0 and 1."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be class labels of shape (N,), got shape {y.shape}")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.floor(y))
        if not whole.all():
            raise ValueError(f"{name} must hold integer class labels, got "
                             f"{y[~whole][0].item()!r} at index {int(np.argmin(whole))}")
    elif y.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} holds label {y.min().item()}: class labels count from 0")
    return y.astype(np.int64)


def _predicted(y_pred, name="y_pred"):
    """(labels (N,), C or None): labels as given, or the argmax of each row of scores
    (N, C), C the number of columns."""
    y_pred = np.asarray(y_pred)
    if y_pred.ndim != 2:
        if y_pred.ndim != 1:
            raise ValueError(f"{name} must be labels (N,) or scores (N, C), got shape "
                             f"{y_pred.shape}")
        return _labels(y_pred, name), None
    if y_pred.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real-valued scores, got dtype {y_pred.dtype}")
    if y_pred.shape[1] < 2:
        raise ValueError(f"{name} has scores of shape {y_pred.shape}: one column per class "
                         f"(C >= 2) is needed; for one logit per sample pass the labels "
                         f"(y_pred > 0).astype(int)")
    if y_pred.dtype.kind == "f" and np.isnan(y_pred).any():
        raise ValueError(f"{name} contains NaN")
    return y_pred.argmax(axis=1), y_pred.shape[1]


def _true_and_predicted(y_true, y_pred, num_classes=None, pred_name="y_pred"):
    """(true labels, predicted labels, C), checked against each other and `num_classes`.

    C is `num_classes`, else the number of score columns, else the largest label + 1."""
    true = _labels(y_true, "y_true")
    pred, columns = _predicted(y_pred, pred_name)
    if len(true) != len(pred):
        raise ValueError(f"y_true and {pred_name} have different lengths: {len(true)} and "
                         f"{len(pred)} samples")
    if num_classes is not None:
        if isinstance(num_classes, (bool, np.bool_)) or \
                not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        num_classes = int(num_classes)
        if columns is not None and columns != num_classes:
            raise ValueError(f"{pred_name} has scores for {columns} classes, num_classes is "
                             f"{num_classes}")
    where = (f"num_classes={num_classes}" if num_classes is not None else
             f"{pred_name} has scores for {columns} classes" if columns is not None else None)
    C = num_classes if num_classes is not None else columns
    if C is None:
        C = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
        if C > _MAX_INFERRED_CLASSES:     # (a C x C matrix follows)
            raise ValueError(f"the largest label is {C - 1}: class labels count from 0, one "
                             f"per class; pass num_classes= for {C} classes")
    for labels, name in ((true, "y_true"), (pred, pred_name)):
        if labels.size and labels.max() >= C:
            raise ValueError(f"{name} holds label {labels.max()}, outside [0, {C}) "
                             f"({where})")
    return true, pred, C


def _not_empty(true):
    if len(true) == 0:
        raise ValueError("y_true is empty: the metric of no samples is undefined")


# --------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------

def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """The fraction of samples whose predicted class is the true one.

    ``accuracy = (1/N) * sum_i [y_pred_i == y_true_i]``

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
    y_pred : array_like, shape (N,) of labels or (N, C) of scores (argmax taken)

    Returns
    -------
    float in [0, 1]
    """
    true, pred, _ = _true_and_predicted(y_true, y_pred)
    _not_empty(true)
    return np.count_nonzero(true == pred) / len(true)


def top_k_accuracy(y_true: npt.ArrayLike, scores: npt.ArrayLike, k: int = 5) -> float:
    """The fraction of samples whose true class is among the `k` highest scores.

    ``top_k = (1/N) * sum_i [rank_i < k]``, where ``rank_i`` counts the classes ranked
    above the true one: those with a higher score, and those with an equal score and a
    lower index (ties go to the lower index, as ``argmax``: ``top_k_accuracy(y, s, k=1) ==
    accuracy(y, s)`` always; scikit-learn breaks ties the other way, so the two differ
    only when scores tie).

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
    scores : array_like, shape (N, C)
    k : int in [1, C], default 5

    Returns
    -------
    float in [0, 1]
    """
    scores_arr = np.asarray(scores)
    if scores_arr.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {scores_arr.shape}")
    true, _, C = _true_and_predicted(y_true, scores_arr, pred_name="scores")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) \
            or not 1 <= k <= C:
        raise ValueError(f"k must be an int in [1, {C}] (scores has {C} classes), got {k!r}")
    _not_empty(true)
    return np.count_nonzero(_ranks(scores_arr, true) < k) / len(true)


def _ranks(scores, true):
    """rank_i (N,): how many classes come before the true class in row i of scores (N, C)."""
    C = scores.shape[1]
    s_true = scores[np.arange(len(true)), true][:, None]                  # (N, 1)
    before = (scores > s_true) | ((scores == s_true) & (np.arange(C) < true[:, None]))
    return np.count_nonzero(before, axis=1)


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
                     num_classes: int | None = None) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    ``M[i, j] = #{samples of true class i predicted as class j}``: row sums are the
    classes' sizes in y_true (their support), column sums how often each was predicted,
    the diagonal the correct predictions.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
    y_pred : array_like, shape (N,) of labels or (N, C) of scores (argmax taken)
    num_classes : int, optional
        C; by default the number of score columns, or the largest label + 1.

    Returns
    -------
    ndarray of int64, shape (C, C)
        Zeros when there are no samples.
    """
    true, pred, C = _true_and_predicted(y_true, y_pred, num_classes)
    return _confusion(true, pred, C)


def _confusion(true, pred, C):
    # one bincount over the pairs: sample i adds 1 to cell (t_i, p_i), at t_i * C + p_i of
    # the flattened matrix
    return np.bincount(true * C + pred, minlength=C * C).astype(np.int64).reshape(C, C)


def precision_recall_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, average: str | None = None, *,
                        num_classes: int | None = None) -> tuple[Any, Any, Any]:
    """Precision, recall and F1 of each class, or their macro / weighted average.

    For class c, with ``tp`` its correct predictions, ``fp`` the samples wrongly predicted
    as c and ``fn`` the samples of c predicted as something else (from the confusion
    matrix M: ``tp = M[c, c]``, ``tp + fp`` = column c's sum, ``tp + fn`` = row c's sum)::

        precision = tp / (tp + fp)         of the samples predicted c, the share that are c
        recall    = tp / (tp + fn)         of the samples of class c, the share found
        f1        = 2 * tp / (2 * tp + fp + fn)
                  = 2 * precision * recall / (precision + recall)   (harmonic mean)

    A zero denominator gives 0.0 (scikit-learn's default, ``zero_division="warn"``, without
    the warning). ``average="macro"`` is the plain mean over the C classes; "weighted"
    weighs each class by its support ``tp + fn``. The classes are 0 .. C-1 (C as in
    `confusion_matrix`): a class in that range found in neither y_true nor y_pred counts as
    0 in the macro average, as scikit-learn's with ``labels=range(C)`` (its default, the
    labels present, would leave it out).

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
    y_pred : array_like, shape (N,) of labels or (N, C) of scores (argmax taken)
    average : None, "macro" or "weighted"
    num_classes : int, optional

    Returns
    -------
    (precision, recall, f1)
        float64 arrays of shape (C,) for ``average=None``; floats otherwise.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be None, 'macro' or 'weighted', got {average!r}")
    true, pred, C = _true_and_predicted(y_true, y_pred, num_classes)
    _not_empty(true)
    return _precision_recall_f1_of(_confusion(true, pred, C), average)


def _precision_recall_f1_of(matrix, average):
    """`precision_recall_f1` from a confusion matrix (C, C)."""
    tp = np.diag(matrix)
    predicted = matrix.sum(axis=0)          # tp + fp
    support = matrix.sum(axis=1)            # tp + fn
    scores = (_divide(tp, predicted), _divide(tp, support), _divide(2 * tp, predicted + support))
    if average is None:
        return scores
    if average == "macro":
        return tuple(float(np.mean(s)) for s in scores)
    if not support.any():
        return 0.0, 0.0, 0.0
    return tuple(float(np.average(s, weights=support)) for s in scores)


def _divide(numerator, denominator):
    """numerator / denominator, elementwise, in float64; 0.0 where the denominator is 0."""
    out = np.zeros(len(numerator), np.float64)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


# --------------------------------------------------------------------------------------
# fit(metrics=...) and evaluate(metrics=...)
# --------------------------------------------------------------------------------------

METRIC_NAMES = ("accuracy", "top_<k>_accuracy (e.g. top_5_accuracy)",
                "macro_precision", "macro_recall", "macro_f1",
                "weighted_precision", "weighted_recall", "weighted_f1")
_TOP_K = re.compile(r"top_([1-9][0-9]*)_accuracy")
_AVERAGED = re.compile(r"(macro|weighted)_(precision|recall|f1)")
_WHICH = {"precision": 0, "recall": 1, "f1": 2}


class _Metric:
    """One entry of ``metrics=``: its name, and how it is computed: "accuracy", "top_k"
    (with k), "prf" (with the average and which of the three) or "function" (with fn)."""

    def __init__(self, name, how, k=None, average=None, which=None, fn=None):
        self.name, self.how, self.k, self.average, self.which, self.fn = \
            name, how, k, average, which, fn

    @property
    def from_counts(self):
        return self.how != "function"


def parse_metrics(metrics, kind, output_shape, recorded=("loss",)):
    """Check fit's / evaluate's ``metrics=`` argument and turn it into a list of `_Metric`.

    Parameters
    ----------
    metrics : list of str, callable or (name, callable)
        The names of `METRIC_NAMES`; ``fn(y_true, outputs) -> float``, named by its
        ``__name__``; or a pair ``(name, fn)`` (for a lambda, say).
    kind : "multiclass", "binary" or None
        What the targets are (see ``training._as_data``): the named metrics need class
        labels -- CrossEntropyLoss, or BCEWithLogitsLoss with 0/1 labels and one output.
    output_shape : tuple, the model's per-sample output shape
    recorded : names that fit / evaluate record anyway ("loss", "accuracy" for integer
        labels): a name among them is left out of the list; a function may not take one.
    """
    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be a list such as ['accuracy', 'macro_f1'], got "
                        f"{type(metrics).__name__}")
    parsed, names = [], set(recorded)
    for entry in metrics:
        if isinstance(entry, str) and entry in recorded:
            continue
        metric = _parse_one(entry)
        if metric.name in names or metric.name.startswith("val_"):
            raise ValueError(f"metrics: the name {metric.name!r} is taken (by "
                             f"{sorted(recorded)}, the validation metrics 'val_...', or "
                             f"another entry)")
        if metric.from_counts:
            _check_fits_the_model(metric, kind, output_shape)
        parsed.append(metric)
        names.add(metric.name)
    return parsed


def _parse_one(entry):
    if isinstance(entry, str):
        if entry == "accuracy":
            return _Metric(entry, "accuracy")
        match = _TOP_K.fullmatch(entry)
        if match:
            return _Metric(entry, "top_k", k=int(match[1]))
        match = _AVERAGED.fullmatch(entry)
        if match:
            return _Metric(entry, "prf", average=match[1], which=_WHICH[match[2]])
        hint = ""
        if entry in _WHICH:
            hint = f" (say which average: 'macro_{entry}' or 'weighted_{entry}')"
        elif "top" in entry:
            hint = " (write k in the name: 'top_5_accuracy')"
        raise ValueError(f"metrics: unknown metric {entry!r}{hint}; the names are "
                         f"{', '.join(METRIC_NAMES)}, or pass a function "
                         f"fn(y_true, outputs) -> float")
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) \
            and callable(entry[1]):
        name, fn = entry
    elif callable(entry):
        name, fn = getattr(entry, "__name__", None), entry
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"metrics: the function {entry!r} has no usable name; pass it "
                             f"as a pair ('name', fn)")
    else:
        raise TypeError(f"metrics: each entry must be a metric name, a function "
                        f"fn(y_true, outputs) -> float or a pair (name, fn), got {entry!r}")
    if not name:
        raise ValueError("metrics: a metric's name must not be empty")
    return _Metric(name, "function", fn=fn)


def _check_fits_the_model(metric, kind, output_shape):
    if kind == "multiclass":
        if metric.how == "top_k" and metric.k > output_shape[0]:
            raise ValueError(f"metrics: {metric.name!r} needs k <= the number of classes, "
                             f"and the model has {output_shape[0]} outputs")
        return
    if kind == "binary" and tuple(output_shape) in ((), (1,)) and metric.how != "top_k":
        return
    what = "one output per class (CrossEntropyLoss)" if metric.how == "top_k" else \
        "class labels: CrossEntropyLoss, or BCEWithLogitsLoss with 0/1 labels and one output"
    raise ValueError(f"metrics: {metric.name!r} needs {what}")


class RunningMetrics:
    """The metrics of one pass over the data -- an epoch of fit, a validation pass,
    evaluate -- accumulated batch by batch from the outputs the pass computes anyway.

    Named metrics keep counts only: the confusion matrix (C, C) summed over the batches
    (accuracy, precision, recall and F1 are exact functions of it) and each k's top-k hits.
    Functions get every output of the pass: each batch's is copied into a fresh array,
    at its samples' rows, so that ``fn(y, outputs)`` sees them in the order of y.

    ``reset()``, then ``update(out, target, rows)`` for each batch, then ``results(y)``.
    """

    def __init__(self, metrics, kind, output_shape, n, dtype):
        self.metrics, self.kind, self.n, self.dtype = metrics, kind, n, dtype
        self.output_shape = tuple(output_shape)
        self.C = output_shape[0] if kind == "multiclass" else 2
        self.counts = any(m.from_counts for m in metrics)
        self.ks = sorted({m.k for m in metrics if m.how == "top_k"})
        self.functions = any(not m.from_counts for m in metrics)
        self.reset()

    def reset(self):
        self.matrix = np.zeros((self.C, self.C), np.int64)
        self.hits = dict.fromkeys(self.ks, 0)
        self.outputs = None

    def update(self, out, target, rows):
        """Add one batch: its outputs (B, ...), targets, and rows (indices or a slice) of
        the samples in the pass's data."""
        if self.counts:
            if self.kind == "multiclass":
                true, pred = target.astype(np.intp), out.argmax(axis=1)
            else:               # one logit per sample: class 1 when it is > 0
                true = (target.reshape(len(out)) > 0.5).astype(np.intp)
                pred = out.reshape(len(out)) > 0
            C = self.C
            self.matrix += np.bincount(true * C + pred, minlength=C * C).reshape(C, C)
            if self.ks:
                ranks = _ranks(out, true)
                for k in self.ks:
                    self.hits[k] += int(np.count_nonzero(ranks < k))
        if self.functions:
            if self.outputs is None:        # fresh each pass: a function may keep it
                self.outputs = np.empty((self.n,) + self.output_shape, self.dtype)
            self.outputs[rows] = out

    def running(self):
        """The named metrics so far (the progress bar's figures)."""
        return {m.name: self._from_counts(m) for m in self.metrics if m.from_counts}

    def results(self, y):
        """Every metric of the pass: y is the pass's targets, all of them, in order."""
        results = {}
        for m in self.metrics:
            if m.from_counts:
                results[m.name] = self._from_counts(m)
                continue
            value = m.fn(y, self.outputs)
            try:
                if isinstance(value, (str, bytes)) or np.ndim(value) != 0:
                    raise TypeError
                results[m.name] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {m.name!r} must return a number, got "
                                f"{type(value).__name__} {value!r:.60}") from None
        return results

    def _from_counts(self, m):
        total = int(self.matrix.sum())
        if total == 0:
            return float("nan")
        if m.how == "accuracy":
            return int(np.trace(self.matrix)) / total
        if m.how == "top_k":
            return self.hits[m.k] / total
        return _precision_recall_f1_of(self.matrix, m.average)[m.which]
