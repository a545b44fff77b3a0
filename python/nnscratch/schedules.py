"""Learning-rate schedules: `StepLR` and `CosineAnnealingLR`, as in ``torch.optim``.

A schedule sets ``optimizer.lr`` from the epoch count. Call ``step()`` once per epoch,
or pass the schedule to ``fit(callbacks=[...])``, which calls it at the end of every
epoch::

    schedule = StepLR(optimizer, step_size=10, gamma=0.5)
    model.fit(X, y, loss=..., optimizer=optimizer, epochs=30, batch_size=64,
              callbacks=[schedule])
"""
import math

from . import _checks
from .callbacks import Callback

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


class LRScheduler(Callback):
    """Base class: ``lr = get_lr(epoch)`` with ``base_lr`` the optimizer's lr at creation.

    Attributes
    ----------
    optimizer, base_lr, last_epoch (the number of ``step()`` calls so far)
    """

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__} needs an optimizer with an lr attribute, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def get_lr(self, epoch):
        """The learning rate for `epoch` (0 = before the first step)."""
        raise NotImplementedError

    def step(self):
        """Advance one epoch and set ``optimizer.lr``."""
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr(self.last_epoch)

    def get_last_lr(self):
        """The learning rate this schedule set last (the base lr before any step)."""
        return self.get_lr(self.last_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.step()


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs:
    ``lr = base_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int >= 1
    gamma : float > 0, default 0.1
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _checks.integer("step_size", step_size, 1)
        self.gamma = _checks.real("gamma", gamma, 0.0, low_open=True)
        super().__init__(optimizer)

    def get_lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs:
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int >= 1
    eta_min : float >= 0, default 0
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _checks.integer("T_max", T_max, 1)
        self.eta_min = _checks.real("eta_min", eta_min, 0.0)
        super().__init__(optimizer)

    def get_lr(self, epoch):
        cosine = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine
