"""Optimizers: `SGD`, `Adam`, `AdamW`. Each ``step()`` is one kernel call for the whole
model (`sgd_step` / `adam_step` over the lists of parameters; one call per parameter when
the parameters mix float32 and float64).

The update rules are those of ``torch.optim`` (one step equals PyTorch's on the same
gradients); the state (momentum buffers, moment estimates, step counts) belongs to the
optimizer. ``optimizer.lr`` is a plain attribute that schedules and users may change
between steps.

    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.zero_grad(); model.backward(loss_fn.backward()); optimizer.step()
"""
import math
import numbers

import numpy as np

from . import _memory
from .backend import kernels
from .module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _check_number(value, what, low=0.0, high=math.inf, high_open=False):
    """A finite real in [low, high] (or [low, high)), else ValueError("Invalid <what>: ...")."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value) and low <= value <= high
          and not (high_open and value == high))
    if not ok:
        raise ValueError(f"Invalid {what}: {value}")
    return float(value)


class Optimizer:
    """Base class: holds the parameters and ``lr``; subclasses implement ``step``.

    Parameters
    ----------
    params : iterable of Parameter
        E.g. ``model.parameters()``.
    lr : float >= 0
    """

    def __init__(self, params, lr):
        self.lr = _check_number(lr, "learning rate")
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be Parameter objects, got "
                                f"{type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("optimizer got a parameter more than once")
        self.state = [{} for _ in self.params]
        # one whole-model kernel call can update every parameter when they share a dtype
        self._fused = len({p.dtype for p in self.params}) == 1
        # fit's checked step can be that call (with its NaN/inf check) when the class has an
        # `_update(check_finite)` (SGD, Adam) whose `step()` no subclass replaced
        owner = next((k for k in type(self).__mro__ if "_update" in vars(k)), None)
        self._update_is_step = owner is not None and type(self).step is owner.step

    def zero_grad(self):
        """Set the gradients of the optimized parameters to zero."""
        for p in self.params:
            p.zero_grad()

    def step(self):
        """Update every parameter from its ``.grad``, in place."""
        raise NotImplementedError

    def _checked_step(self):
        """fit's step: check every gradient for NaN/inf first; if one has any, update
        nothing and return the index of its parameter in ``params``, else step and return
        None. An optimizer with an ``_update(check_finite)`` (SGD, Adam) does the check and
        the update in one kernel call -- unless a subclass replaced its ``step()``, which
        must then run as written."""
        if self._update_is_step:
            return self._update(check_finite=True)
        return self._check_then_step()

    def _known_finite(self):
        """What the backward pass told of the gradients it wrote (and checked as it wrote
        them, see `Parameter`): ``(index, True)`` -- the first parameter whose gradient it
        found NaN/inf --, ``(None, True)`` -- all of them finite: no check pass needed --,
        or ``(None, False)`` when some are not known (then they are all checked)."""
        flags = [p._grad_finite for p in self.params]
        if False in flags:
            return flags.index(False), True
        return None, None not in flags

    def _check_then_step(self):
        """`_checked_step` one gradient at a time, then ``step()``."""
        K = kernels()
        for i, p in enumerate(self.params):
            if not K.all_finite(p.grad):
                return i
        self.step()
        return None

    def state_dict(self):
        """A copy of the optimizer's state: ``{"lr": float, "state": [one dict per parameter
        of its arrays ("velocity", "m", "v") and step count ("step")]}``."""
        return {"lr": self.lr,
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v)
                           for k, v in entry.items()} for entry in self.state]}

    def load_state_dict(self, state_dict):
        """Restore a `state_dict` of an optimizer of the same kind over the same parameters."""
        entries = state_dict["state"]
        if len(entries) != len(self.params):
            raise ValueError(f"state_dict holds state for {len(entries)} parameters, this "
                             f"optimizer has {len(self.params)}")
        new_state = []
        for i, (entry, p) in enumerate(zip(entries, self.params)):
            restored = {}
            for key, value in entry.items():
                if key == "step":
                    restored[key] = int(value)
                    continue
                value = np.asarray(value)
                if value.shape != p.shape:
                    raise ValueError(f"state_dict entry {i} {key!r} has shape {value.shape}, "
                                     f"the parameter {p.shape}")
                restored[key] = _memory.copy(value.astype(p.dtype, copy=False))
            new_state.append(restored)
        self.lr = _check_number(state_dict["lr"], "learning rate")
        self.state = new_state

    def _states(self, name):
        """The optimizer's arrays `name`, one per parameter (`_state`)."""
        arrays = [entry.get(name) for entry in self.state]
        if any(array is None for array in arrays):
            arrays = [self._state(i, name) for i in range(len(self.params))]
        return arrays

    def _state(self, i, name):
        """The optimizer's array `name` for parameter i: zeros on first use."""
        array = self.state[i].get(name)
        if array is None:
            array = self.state[i][name] = _memory.zeros(self.params[i].shape, self.params[i].dtype)
        return array

    def _hyper_repr(self):
        return ""

    def __repr__(self):
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

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = _check_number(momentum, "momentum value")
        self.weight_decay = _check_number(weight_decay, "weight_decay value")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")

    def step(self):
        self._update(check_finite=False)

    def _update(self, check_finite):
        K = kernels()
        if not self._fused:
            if check_finite:
                return self._check_then_step()   # checks, then calls step() (per array)
            for i, p in enumerate(self.params):
                velocity = self._state(i, "velocity") if self.momentum else None
                K.sgd_update(p.data, p.grad, self.lr, momentum=self.momentum,
                             velocity=velocity, weight_decay=self.weight_decay,
                             nesterov=self.nesterov)
            return None
        if check_finite:
            bad, known = self._known_finite()
            if bad is not None:
                return bad
            check_finite = not known
        # the whole model in one call (sgd_step: one parallel pass over every parameter)
        velocities = self._states("velocity") if self.momentum else None
        bad = K.sgd_step([p._data for p in self.params], [p.grad for p in self.params],
                         velocities, self.lr, momentum=self.momentum,
                         weight_decay=self.weight_decay, nesterov=self.nesterov,
                         check_finite=check_finite)
        return None if bad < 0 else bad

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
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Invalid betas: {betas!r} (expected two numbers)") from None
        self.betas = (_check_number(beta1, "beta parameter at index 0", high=1.0, high_open=True),
                      _check_number(beta2, "beta parameter at index 1", high=1.0, high_open=True))
        self.eps = _check_number(eps, "epsilon value")
        self.weight_decay = _check_number(weight_decay, "weight_decay value")

    def step(self):
        self._update(check_finite=False)

    def _update(self, check_finite):
        K = kernels()
        beta1, beta2 = self.betas
        steps = {entry.get("step", 0) for entry in self.state}
        if not self._fused or len(steps) != 1:
            if check_finite:
                return self._check_then_step()   # checks, then calls step() (per array)
            for i, p in enumerate(self.params):
                m, v = self._state(i, "m"), self._state(i, "v")
                t = self.state[i]["step"] = self.state[i].get("step", 0) + 1
                K.adam_update(p.data, p.grad, m, v, t, self.lr, beta1, beta2, self.eps,
                              self.weight_decay, decoupled=self._decoupled)
            return None
        if check_finite:
            bad, known = self._known_finite()
            if bad is not None:
                return bad
            check_finite = not known
        # the whole model in one call (adam_step), every parameter at the same step count
        t = steps.pop() + 1
        bad = K.adam_step([p._data for p in self.params], [p.grad for p in self.params],
                          self._states("m"), self._states("v"), t, self.lr, beta1, beta2,
                          self.eps, self.weight_decay, decoupled=self._decoupled,
                          check_finite=check_finite)
        if bad >= 0:
            return bad
        for entry in self.state:
            entry["step"] = t
        return None

    def _hyper_repr(self):
        return (f", betas=({self.betas[0]:g}, {self.betas[1]:g}), eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g}")


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: first
    ``param *= 1 - lr * weight_decay``, then the Adam step on the raw gradient.

    Same parameters as `Adam`, with ``weight_decay=1e-2`` by default.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
