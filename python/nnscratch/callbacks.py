"""Callbacks for ``fit``: the `Callback` base, `History` and `EarlyStopping`.

``fit`` calls, in order: ``set_model(model)``, ``on_train_begin({"metrics": [...]})``,
then for every epoch ``on_epoch_begin(epoch)``, ``on_batch_end(batch, {"loss", "size"})``
after each optimizer step, ``on_epoch_end(epoch, logs)`` with the epoch's metrics (the
entries of ``History.history``), and ``on_train_end()`` at the end. A callback stops the
training by setting ``model.stop_training = True``. Epochs and batches count from 0.

The learning-rate schedules (``nnscratch.schedules``) are callbacks too.
"""
import math

import numpy as np

from . import _checks

__all__ = ["Callback", "History", "EarlyStopping"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


class History:
    """What ``fit`` returns: ``history[name]`` is the list of a metric's per-epoch values
    ("loss", "accuracy", those of ``fit(metrics=[...])`` such as "macro_f1", and the
    "val_" twins of all of them), ``epoch`` the epoch indices."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items())
        return f"History(epochs={len(self.epoch)}{', ' + last if last else ''})"


def _grows(name):
    """True for the metrics that are better higher: accuracies, precision, recall, F1."""
    return "acc" in name or name.endswith(("precision", "recall", "f1"))


class EarlyStopping(Callback):
    """Stop training when a monitored metric has stopped improving.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A key of ``History.history``.
    patience : int >= 0, default 0
        Epochs without improvement after which training stops.
    min_delta : float >= 0, default 0
        The smallest change that counts as an improvement.
    mode : {"auto", "min", "max"}, default "auto"
        "auto" maximises metrics whose name contains "acc" or ends with "precision",
        "recall" or "f1" (``fit(metrics=[...])``'s "macro_f1", say) and minimises the
        others: give "max" for a metric of your own that grows.
    restore_best_weights : bool, default False
        At the end of training, put back the parameters and buffers (``state_dict``) of
        the best epoch.

    Attributes
    ----------
    best, best_epoch, stopped_epoch (None when training ran to the end)
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False):
        patience = _checks.integer("patience", patience, 0)
        min_delta = _checks.real("min_delta", min_delta, 0.0)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.maximize = mode == "max" or (mode == "auto" and _grows(monitor))
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self):
        self.best = None
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self._best_weights = None
        self._last_epoch = None

    def on_train_begin(self, logs=None):
        self._reset()
        metrics = (logs or {}).get("metrics")
        if metrics is not None and self.monitor not in metrics:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, but fit records only "
                             f"{metrics} (give validation_data or validation_split for "
                             f"'val_' metrics)")

    def _improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, not among the "
                             f"epoch's metrics {sorted(logs)}")
        self._last_epoch = epoch
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._save_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:   # (Keras) patience=0 stops at the first miss
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if (self.restore_best_weights and self._best_weights is not None
                and self.best_epoch != self._last_epoch):
            self.model.load_state_dict(self._best_weights)

    def _save_weights(self):
        # the state_dict: parameters and buffers (a batch norm's running statistics)
        state = self.model.state_dict()
        if self._best_weights is None:
            self._best_weights = {name: array.copy() for name, array in state.items()}
        else:
            for name, array in state.items():
                np.copyto(self._best_weights[name], array)
