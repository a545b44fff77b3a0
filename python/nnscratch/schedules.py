"""Learning-rate schedules, as in ``torch.optim.lr_scheduler``: `StepLR`,
`CosineAnnealingLR`, `OneCycleLR` and `WarmupCosineLR`.

A schedule sets ``optimizer.lr`` (and, for `OneCycleLR`, the momentum) from a step count.
Its ``interval`` says what one step is: an epoch (`StepLR`, `CosineAnnealingLR`) or a batch
(`OneCycleLR`, `WarmupCosineLR`); every schedule takes ``interval=`` to choose otherwise.

Two ways to drive one, the same numbers either way:

* pass it to ``fit(callbacks=[...])``: a schedule is a callback that calls its own
  ``step()`` at the end of every epoch (``on_epoch_end``) or after every optimizer step
  (``on_batch_end``), as its ``interval`` says::

      schedule = OneCycleLR(optimizer, max_lr=0.1, epochs=10,
                            steps_per_epoch=math.ceil(len(X) / 64))
      model.fit(X, y, loss=..., optimizer=optimizer, epochs=10, batch_size=64,
                callbacks=[schedule])

* or call ``schedule.step()`` by hand after ``optimizer.step()``, as in PyTorch::

      for xb, yb in batches:
          ...; optimizer.step(); schedule.step()

``last_epoch`` counts the ``step()`` calls (epochs or batches); ``get_lr(t)`` is the
learning rate after t of them, a pure function of t.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, cast

from . import _checks
from .callbacks import Callback

if TYPE_CHECKING:
    from .optim import SGD, Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "WarmupCosineLR"]

INTERVALS = ("epoch", "batch")


class LRScheduler(Callback):
    """Base class: ``lr = get_lr(t)`` after t steps, with ``base_lr`` the optimizer's lr at
    creation.

    A subclass defines ``get_lr(t)``; ``step()`` advances t by one and sets
    ``optimizer.lr``. As a ``fit`` callback it steps at the end of every epoch when
    ``interval == "epoch"`` and after every batch's optimizer step when it is ``"batch"``.

    Attributes
    ----------
    optimizer, base_lr, interval,
    last_epoch : int
        The number of ``step()`` calls so far (epochs or batches, per ``interval``).
    """

    interval = "epoch"

    def __init__(self, optimizer: Optimizer, interval: str | None = None) -> None:
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__} needs an optimizer with an lr attribute, "
                            f"got {type(optimizer).__name__}")
        if interval is not None:
            if interval not in INTERVALS:
                raise ValueError(f"interval must be 'epoch' or 'batch', got {interval!r}")
            self.interval = interval
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def get_lr(self, epoch: int) -> float:
        """The learning rate after `epoch` steps (0 = before the first step)."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step (an epoch or a batch) and set ``optimizer.lr``."""
        self.last_epoch += 1
        self._apply(self.last_epoch)

    def _apply(self, t):
        """Set the optimizer's hyper-parameters to the schedule's values after t steps."""
        self.optimizer.lr = self.get_lr(t)

    def get_last_lr(self) -> float:
        """The learning rate this schedule set last (the base lr before any step)."""
        return self.get_lr(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        """``{"last_epoch": int, "base_lr": float}``: where the schedule stands (its other
        settings are the constructor's)."""
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a `state_dict`: sets ``last_epoch`` and ``base_lr`` and puts the
        schedule's values for that step into the optimizer."""
        last_epoch = _checks.integer("state_dict['last_epoch']", state_dict["last_epoch"], 0)
        self.base_lr = _checks.real("state_dict['base_lr']", state_dict["base_lr"], 0.0)
        self.last_epoch = last_epoch
        self._apply(last_epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.interval == "epoch":
            self.step()

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.interval == "batch":
            self.step()


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs:
    ``lr = base_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int >= 1
    gamma : float > 0, default 0.1
    interval : {"epoch", "batch"}, default "epoch"
        When ``fit`` steps it.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, *,
                 interval: str = "epoch") -> None:
        self.step_size = _checks.integer("step_size", step_size, 1)
        self.gamma = _checks.real("gamma", gamma, 0.0, low_open=True)
        super().__init__(optimizer, interval)

    def get_lr(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs:
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int >= 1
    eta_min : float >= 0, default 0
    interval : {"epoch", "batch"}, default "epoch"
        When ``fit`` steps it (with "batch", T_max counts batches).
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, *,
                 interval: str = "epoch") -> None:
        self.T_max = _checks.integer("T_max", T_max, 1)
        self.eta_min = _checks.real("eta_min", eta_min, 0.0)
        super().__init__(optimizer, interval)

    def get_lr(self, epoch: int) -> float:
        cosine = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


def _anneal_cos(start, end, pct):
    """From `start` (pct = 0) to `end` (pct = 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _anneal_linear(start, end, pct):
    """From `start` (pct = 0) to `end` (pct = 1) along a straight line."""
    return (end - start) * pct + start


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, "Super-Convergence"), as
    ``torch.optim.lr_scheduler.OneCycleLR``: steps once per batch.

    The learning rate rises from ``initial_lr = max_lr / div_factor`` to ``max_lr`` over
    the first ``pct_start`` of the steps, then falls to ``min_lr = initial_lr /
    final_div_factor`` at step ``total_steps``; the momentum (SGD's ``momentum`` or Adam's
    beta1) moves the opposite way, ``max_momentum -> base_momentum -> max_momentum``. Each
    phase anneals with ``anneal(start, end, pct)``, pct the fraction of the phase done::

        cos:     end + (start - end) / 2 * (cos(pi * pct) + 1)
        linear:  start + (end - start) * pct

    Phase ends (in steps): ``pct_start * total_steps - 1`` and ``total_steps - 1``; with
    ``three_phase`` the rise, a fall back to ``initial_lr`` ending at ``2 * pct_start *
    total_steps - 2``, then the fall to ``min_lr`` (momentum staying at max). Creating the
    schedule sets ``optimizer.lr`` to ``initial_lr`` (and the momentum to its start).

    Parameters
    ----------
    optimizer : Optimizer
    max_lr : float > 0
    total_steps : int >= 1, optional
        The number of ``step()`` calls of the whole cycle: in ``fit``, ``epochs`` times the
        batches per epoch, ``ceil(n_train / batch_size)``. Or give:
    epochs, steps_per_epoch : int >= 1, optional
        ``total_steps = epochs * steps_per_epoch``.
    pct_start : float in [0, 1], default 0.3
    anneal_strategy : {"cos", "linear"}, default "cos"
    cycle_momentum : bool, default True
        Cycle the optimizer's ``momentum`` (SGD) or ``betas[0]`` (Adam, AdamW) too; an
        optimizer with neither needs ``cycle_momentum=False``.
    base_momentum, max_momentum : float in [0, 1), default 0.85 and 0.95
    div_factor, final_div_factor : float > 0, default 25 and 1e4
    three_phase : bool, default False
    interval : {"batch", "epoch"}, default "batch"
        When ``fit`` steps it.

    Raises
    ------
    ValueError
        From ``step()`` when called more than ``total_steps`` times (as PyTorch).

    Notes
    -----
    Where PyTorch divides by zero (a phase of zero steps: ``pct_start * total_steps == 1``,
    or ``pct_start == 1``), the phase counts as done (pct = 1).
    """

    interval = "batch"

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, *,
                 interval: str = "batch") -> None:
        super().__init__(optimizer, interval)
        self.total_steps = _total_steps(total_steps, epochs, steps_per_epoch)
        self.max_lr = _checks.real("max_lr", max_lr, 0.0, low_open=True)
        self.pct_start = _checks.real("pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self._anneal = _anneal_cos if anneal_strategy == "cos" else _anneal_linear
        div_factor = _checks.real("div_factor", div_factor, 0.0, low_open=True)
        final_div_factor = _checks.real("final_div_factor", final_div_factor, 0.0,
                                        low_open=True)
        self.three_phase = _checks.boolean("three_phase", three_phase)
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.base_lr = self.initial_lr           # (torch's base_lrs: the cycle's start)

        self.cycle_momentum = _checks.boolean("cycle_momentum", cycle_momentum)
        self.base_momentum = _checks.real("base_momentum", base_momentum, 0.0, 1.0,
                                          high_open=True)
        self.max_momentum = _checks.real("max_momentum", max_momentum, 0.0, 1.0,
                                         high_open=True)
        if self.cycle_momentum and not hasattr(optimizer, "betas") \
                and not hasattr(optimizer, "momentum"):
            raise ValueError(f"OneCycleLR cycles the momentum, and {type(optimizer).__name__} "
                             f"has neither momentum nor betas: give cycle_momentum=False")

        # (end step, lr from, lr to, momentum from, momentum to), as torch's _schedule_phases
        T, lo, hi = self.total_steps, self.base_momentum, self.max_momentum
        rise_end = float(self.pct_start * T) - 1
        self._phases: tuple[tuple[float, float, float, float, float], ...]
        if self.three_phase:
            self._phases = ((rise_end, self.initial_lr, self.max_lr, hi, lo),
                            (float(2 * self.pct_start * T) - 2, self.max_lr, self.initial_lr,
                             lo, hi),
                            (T - 1, self.initial_lr, self.min_lr, hi, hi))
        else:
            self._phases = ((rise_end, self.initial_lr, self.max_lr, hi, lo),
                            (T - 1, self.max_lr, self.min_lr, lo, hi))
        self._apply(0)

    def _phase(self, t):
        """(phase, pct): the phase that step t falls in and the fraction of it done."""
        start = 0.0
        for i, phase in enumerate(self._phases):
            end = phase[0]
            if t <= end or i == len(self._phases) - 1:
                return phase, ((t - start) / (end - start) if end != start else 1.0)
            start = end

    def get_lr(self, t: int) -> float:
        (_, lr_from, lr_to, _, _), pct = self._phase(t)
        return self._anneal(lr_from, lr_to, pct)

    def get_momentum(self, t: int) -> float | None:
        """The momentum (or beta1) after t steps; None without ``cycle_momentum``."""
        if not self.cycle_momentum:
            return None
        (_, _, _, m_from, m_to), pct = self._phase(t)
        return self._anneal(m_from, m_to, pct)

    def step(self) -> None:
        if self.last_epoch >= self.total_steps:
            raise ValueError(
                f"OneCycleLR was stepped {self.last_epoch + 1} times, beyond total_steps="
                f"{self.total_steps}: in fit, total_steps = epochs * ceil(n_train / "
                f"batch_size) (the samples left after validation_split)")
        super().step()

    def _apply(self, t):
        super()._apply(t)
        if self.cycle_momentum:
            momentum = cast(float, self.get_momentum(t))      # (a float: cycle_momentum)
            if hasattr(self.optimizer, "betas"):
                self.optimizer.betas = (momentum,) + tuple(self.optimizer.betas[1:])
            else:
                cast("SGD", self.optimizer).momentum = momentum     # (SGD, or one like it)


def _total_steps(total_steps, epochs, steps_per_epoch):
    """OneCycleLR's total_steps: given, or epochs * steps_per_epoch (both given: equal)."""
    if epochs is not None:
        epochs = _checks.integer("epochs", epochs, 1)
    if steps_per_epoch is not None:
        steps_per_epoch = _checks.integer("steps_per_epoch", steps_per_epoch, 1)
    both = epochs is not None and steps_per_epoch is not None
    if total_steps is None:
        if not both:
            raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        return epochs * steps_per_epoch
    total_steps = _checks.integer("total_steps", total_steps, 1)
    if both and epochs * steps_per_epoch != total_steps:
        raise ValueError(f"total_steps={total_steps} disagrees with epochs * steps_per_epoch "
                         f"= {epochs} * {steps_per_epoch}: give one or the other")
    return total_steps


class WarmupCosineLR(LRScheduler):
    """Linear warm-up, then cosine annealing: steps once per batch.

    For step t (``base_lr`` the optimizer's lr at creation)::

        t <  warmup_steps:  lr = base_lr * (start_factor + (1 - start_factor) * t / warmup_steps)
        t >= warmup_steps:  lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * k / T)) / 2,
                            k = min(t - warmup_steps, T),  T = total_steps - warmup_steps

    so the lr climbs from ``start_factor * base_lr`` to ``base_lr`` at step
    ``warmup_steps``, falls to ``eta_min`` at ``total_steps`` and stays there. The same
    values as PyTorch's ``SequentialLR([LinearLR(opt, start_factor, 1.0, warmup_steps),
    CosineAnnealingLR(opt, T, eta_min)], milestones=[warmup_steps])`` (which needs
    ``start_factor > 0``). Creating the schedule sets ``optimizer.lr`` to its first value.

    Parameters
    ----------
    optimizer : Optimizer
    warmup_steps : int >= 0
    total_steps : int > warmup_steps
        The number of ``step()`` calls of the whole schedule: in ``fit``, ``epochs`` times
        the batches per epoch, ``ceil(n_train / batch_size)``.
    start_factor : float in [0, 1], default 0
        The first lr as a fraction of ``base_lr`` (0: the first step does not move).
    eta_min : float >= 0, default 0
    interval : {"batch", "epoch"}, default "batch"
        When ``fit`` steps it (with "epoch", the steps count epochs).
    """

    interval = "batch"

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 start_factor: float = 0.0, eta_min: float = 0.0, *,
                 interval: str = "batch") -> None:
        super().__init__(optimizer, interval)
        self.warmup_steps = _checks.integer("warmup_steps", warmup_steps, 0)
        self.total_steps = _checks.integer("total_steps", total_steps, 1)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(f"total_steps must be greater than warmup_steps, got "
                             f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps}")
        self.start_factor = _checks.real("start_factor", start_factor, 0.0, 1.0)
        self.eta_min = _checks.real("eta_min", eta_min, 0.0)
        self._apply(0)

    def get_lr(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.base_lr * (self.start_factor
                                   + (1.0 - self.start_factor) * t / self.warmup_steps)
        T = self.total_steps - self.warmup_steps
        k = min(t - self.warmup_steps, T)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * k / T)) / 2
