"""Callbacks for ``fit``: the `Callback` base, `History` and `EarlyStopping`.

``fit`` calls, in order: ``set_model(model)``, ``on_train_begin({"metrics": [...]})``,
then for every epoch ``on_epoch_begin(epoch)``, ``on_batch_end(batch, {"loss", "size"})``
after each optimizer step, ``on_epoch_end(epoch, logs)`` with the epoch's metrics (the
entries of ``History.history``), and ``on_train_end()`` at the end. A callback stops the
training by setting ``model.stop_training = True``. Epochs and batches count from 0.

The learning-rate schedules (``nnscratch.schedules``) are callbacks too.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from . import _checks

if TYPE_CHECKING:
    from .model import Sequential

__all__ = ["Callback", "History", "EarlyStopping"]


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    model: Sequential | None = None     # the model fit trains (set_model)

    def set_model(self, model: Sequential) -> None:
        """Called first by ``fit``, with the model it trains."""
        self.model = model

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Before the first epoch; ``logs["metrics"]``: the names fit will record."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """After the last epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Before each epoch (counting from 0)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """After each epoch; `logs`: the epoch's figures, as ``History.history`` gets them."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """After each optimizer step; `logs`: ``{"loss": float, "size": int}``."""


class History:
    """What ``fit`` returns: ``history[name]`` is the list of a metric's per-epoch values
    ("loss", "accuracy", those of ``fit(metrics=[...])`` such as "macro_f1", and the
    "val_" twins of all of them), ``epoch`` the epoch indices."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record the figures of `epoch`."""
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)

    def __repr__(self) -> str:
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

    model: Sequential      # (set_model is called before any other hook)

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
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
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self._best_weights: dict[str, np.ndarray] | None = None
        self._last_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
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

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
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

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
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
