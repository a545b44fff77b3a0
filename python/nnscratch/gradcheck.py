"""``gradcheck``: compare backward's gradients with finite differences, in float64.

For every parameter element w, the central difference

    dL/dw ~= (L(w + eps) - L(w - eps)) / (2 * eps)

is set beside the gradient the model's own ``backward`` computed. A learner can use it to
check a layer they wrote; the tests use it on every layer and loss. It costs two forward
passes per parameter element: use a small model and a small batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from . import _random

if TYPE_CHECKING:
    from .losses import Loss
    from .module import Module

__all__ = ["gradcheck"]


def gradcheck(model: Module, X: npt.ArrayLike, y: npt.ArrayLike, loss: Loss, eps: float = 1e-6,
              *, check_input: bool = False) -> dict[str, float]:
    """Worst relative error between backward's gradients and central differences.

    The model stays in its mode. Before every forward pass the library generator is put
    back into the same state, so `Dropout` in training mode draws the same mask each
    time and the check stays valid. The parameters' ``.grad`` and the generator are left
    as they were found (as after one forward pass).

    Parameters
    ----------
    model : Module (e.g. Sequential) whose parameters are all float64
    X : array_like, a small batch (cast to float64)
    y : targets for `loss`
    loss : Loss
    eps : float, default 1e-6
    check_input : bool, default False
        Also compare dL/dX, under the key "input".

    Returns
    -------
    dict
        ``{parameter name: error}`` with ``error = max|analytic - numeric| /
        max(max|analytic|, max|numeric|)`` over the parameter's elements: the worst error
        relative to that gradient's scale (0.0 when both are zero).

    Raises
    ------
    ValueError
        When a parameter is not float64 (float32 differences are too coarse).
    """
    named = list(model.named_parameters())
    for name, p in named:
        if p.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 parameters; {name!r} is {p.dtype} "
                             f"(build the layers with dtype=np.float64)")
    X = np.array(X, dtype=np.float64)
    kept_grads = [p.grad.copy() for _, p in named]
    state = _random.get_state()

    def loss_at():
        _random.set_state(state)
        return loss(model(X), y)

    model.zero_grad()
    loss_at()
    state_after = _random.get_state()
    grad_input = model.backward(loss.backward(), compute_grad_input=check_input)
    analytic = {name: p.grad.copy() for name, p in named}
    if check_input:
        analytic["input"] = np.array(grad_input, dtype=np.float64)

    targets = [(name, p.data) for name, p in named]
    if check_input:
        targets.append(("input", X))
    errors = {}
    for name, values in targets:
        flat = values.reshape(-1)       # a view: the arrays are C-contiguous
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + eps
            plus = loss_at()
            flat[i] = original - eps
            minus = loss_at()
            flat[i] = original
            numeric[i] = (plus - minus) / (2.0 * eps)
        errors[name] = _relative_error(analytic[name].reshape(-1), numeric)

    for (_, p), grad in zip(named, kept_grads):
        np.copyto(p.grad, grad)
    _random.set_state(state_after)
    return errors


def _relative_error(analytic, numeric):
    scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(analytic - numeric)) / scale)
