"""Optimizers: `SGD`, `Adam`, `AdamW` -- gradient descent, ``W = W - lr * dL/dW`` and its
refinements, as in ``torch.optim`` (one step equals PyTorch's on the same gradients).

Each ``step()`` updates every parameter in place from its ``.grad`` with one kernel call
per parameter (``sgd_update`` / ``adam_update``). The optimizer's state (momentum buffers,
moment estimates, step counts) is in ``state``, one dict per parameter. ``optimizer.lr`` is a
plain attribute that schedules and users may change between steps::

    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.zero_grad(); model.backward(loss_fn.backward()); optimizer.step()
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from . import _checks, _memory
from .backend import kernels
from .module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class: holds the parameters, ``lr`` and the per-parameter state.

    Parameters
    ----------
    params : iterable of Parameter
        E.g. ``model.parameters()``.
    lr : float >= 0
    """

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.lr = _checks.real("learning rate", lr, 0.0)
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be Parameter objects, got "
                                f"{type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got a parameter more than once")
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Set the gradients of the optimized parameters to zero."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Update every parameter from its ``.grad``, in place."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def _state(self, i, name):
        """The state array `name` of parameter i ("velocity", "m", "v"): zeros at first."""
        array = self.state[i].get(name)
        if array is None:
            p = self.params[i]
            array = self.state[i][name] = _memory.zeros(p.shape, p.dtype)
        return array

    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer's state: ``{"lr": float, "state": [one dict per parameter
        of its arrays ("velocity", "m", "v") and step count ("step")]}``."""
        return {"lr": self.lr,
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v)
                           for k, v in entry.items()} for entry in self.state]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a `state_dict` of an optimizer of the same kind over the same parameters."""
        entries = state_dict["state"]
        if len(entries) != len(self.params):
            raise ValueError(f"state_dict holds state for {len(entries)} parameters, this "
                             f"optimizer has {len(self.params)}")
        new_state = []
        for i, (entry, p) in enumerate(zip(entries, self.params)):
            restored: dict[str, Any] = {}
            for key, value in entry.items():
                if key == "step":
                    restored[key] = _checks.integer(f"state_dict entry {i} step", value, 0)
                    continue
                value = np.asarray(value)
                if value.shape != p.shape:
                    raise ValueError(f"state_dict entry {i} {key!r} has shape {value.shape}, "
                                     f"the parameter {p.shape}")
                restored[key] = _memory.copy(value.astype(p.dtype, copy=False))
            new_state.append(restored)
        self.lr = _checks.real("learning rate", state_dict["lr"], 0.0)
        self.state = new_state

    def _hyper_repr(self):
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g}{self._hyper_repr()})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    As ``torch.optim.SGD`` (dampening 0)::

        d = grad + weight_decay * param
        v = momentum * v + d                       (when momentum > 0; v starts at 0)
        d = d + momentum * v if nesterov else v
        param -= lr * d

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0
    momentum : float >= 0, default 0
    nesterov : bool, default False (needs momentum > 0)
    weight_decay : float >= 0, default 0
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum = _checks.real("momentum value", momentum, 0.0)
        self.weight_decay = _checks.real("weight_decay value", weight_decay, 0.0)
        self.nesterov = _checks.boolean("nesterov", nesterov)
        if self.nesterov and self.momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")

    def step(self) -> None:
        K = kernels()
        for i, p in enumerate(self.params):
            velocity = self._state(i, "velocity") if self.momentum else None
            K.sgd_update(p.data, p.grad, self.lr, momentum=self.momentum, velocity=velocity,
                         weight_decay=self.weight_decay, nesterov=self.nesterov)

    def _hyper_repr(self):
        return (f", momentum={self.momentum:g}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay:g}")


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

        g = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g**2
        param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    with t the parameter's step count, from 1.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float >= 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    weight_decay : float >= 0, default 0
    """

    _decoupled = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Invalid betas: {betas!r} (expected two numbers)") from None
        self.betas = (_checks.real("beta parameter at index 0", beta1, 0.0, 1.0, high_open=True),
                      _checks.real("beta parameter at index 1", beta2, 0.0, 1.0, high_open=True))
        self.eps = _checks.real("epsilon value", eps, 0.0, low_open=True)
        self.weight_decay = _checks.real("weight_decay value", weight_decay, 0.0)

    def step(self) -> None:
        K = kernels()
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):
            m, v = self._state(i, "m"), self._state(i, "v")
            t = self.state[i]["step"] = self.state[i].get("step", 0) + 1
            K.adam_update(p.data, p.grad, m, v, t, self.lr, beta1, beta2, self.eps,
                          self.weight_decay, decoupled=self._decoupled)

    def _hyper_repr(self):
        return (f", betas=({self.betas[0]:g}, {self.betas[1]:g}), eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g}")


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: first
    ``param *= 1 - lr * weight_decay``, then the Adam step on the raw gradient.

    Same parameters as `Adam`, with ``weight_decay=1e-2`` by default.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
