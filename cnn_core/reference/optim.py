"""Optimizer updates, in place, as torch.optim's SGD and Adam(W): one parameter, or a
whole model's lists in one call, and the NaN/inf check of a gradient. The NumPy twin of
``cnn_core/_optim.pyx``."""
import math

import numpy as np

from cnn_core.reference import _checks


def sgd_update(param, grad, lr, *, momentum=0.0, velocity=None, weight_decay=0.0,
               nesterov=False):
    """One step of stochastic gradient descent, in place (``torch.optim.SGD``, dampening 0).

    ::

        d = grad + weight_decay * param
        if momentum:
            velocity = momentum * velocity + d
            d = d + momentum * velocity   if nesterov else   velocity
        param -= lr * d

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray of param's shape and dtype
        Not modified.
    lr, momentum, weight_decay : float, >= 0
    velocity : ndarray of param's shape and dtype
        The momentum buffer, zeros before the first step, owned by the caller and updated
        in place. Required when ``momentum != 0``.
    nesterov : bool
        Needs ``momentum > 0``.

    No two of param, grad and velocity may share memory.
    """
    # param (...), grad (...), velocity (...) -> param, velocity updated in place
    param, grad, lr, momentum, weight_decay, velocity = _checks.sgd_update_args(
        param, grad, lr, momentum, velocity, weight_decay, nesterov)
    d = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        velocity[...] = momentum * velocity + d
        d = d + momentum * velocity if nesterov else velocity
    param -= lr * d


def adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
                decoupled=False):
    """One Adam step, in place (``torch.optim.Adam``, or ``AdamW`` when ``decoupled``).

    ::

        if decoupled: param *= 1 - lr * weight_decay;  g = grad       (AdamW)
        else:         g = grad + weight_decay * param                   (Adam, L2)
        m = beta1 * m + (1 - beta1) * g                 first moment
        v = beta2 * v + (1 - beta2) * g * g             second moment
        bc1 = 1 - beta1**step;  bc2 = 1 - beta2**step   bias corrections
        param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    Parameters
    ----------
    param : ndarray
        Updated in place.
    grad : ndarray of param's shape and dtype
        Not modified.
    m, v : ndarray of param's shape and dtype
        The moment estimates, zeros before the first step, updated in place.
    step : int
        The number of this step, counting from 1.
    lr, eps, weight_decay : float, >= 0
    beta1, beta2 : float, in [0, 1)
    decoupled : bool
        Decoupled weight decay (AdamW) instead of an L2 term in the gradient.

    No two of param, grad, m and v may share memory.
    """
    # param (...), grad (...), m (...), v (...) -> param, m, v updated in place
    param, grad, m, v, lr, beta1, beta2, eps, weight_decay = _checks.adam_update_args(
        param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
    if decoupled:
        param *= 1 - lr * weight_decay
        g = grad
    else:
        g = grad + weight_decay * param if weight_decay != 0 else grad
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    param -= (lr / bias_correction1) * m / (np.sqrt(v) / math.sqrt(bias_correction2) + eps)


def sgd_step(params, grads, velocities, lr, *, momentum=0.0, weight_decay=0.0,
             nesterov=False, check_finite=False):
    """A whole model's SGD step: `sgd_update` on each parameter of the lists.

    ``params[i]``, ``grads[i]``, ``velocities[i]`` belong to parameter i (velocities None
    when momentum is 0). With ``check_finite`` every gradient is checked first: the index
    of the first one holding NaN/inf is returned and nothing is updated. Returns -1 after
    updating every parameter. No parameter or velocity may share memory with another array
    of the lists (gradients may share with each other).
    """
    # params[i] (...), grads[i] (...), velocities[i] (...) -> params, velocities in place
    params, grads = _checks.sgd_step_args(params, grads, velocities, momentum)
    if check_finite:
        for i, g in enumerate(grads):
            if not all_finite(g):
                return i
    for i, (p, g) in enumerate(zip(params, grads)):
        sgd_update(p, g, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                   velocity=velocities[i] if momentum else None)
    return -1


def adam_step(params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay=0.0, *,
              decoupled=False, check_finite=False):
    """A whole model's Adam (AdamW) step: `adam_update` on each parameter of the lists, all
    at the same `step`. With ``check_finite`` every gradient is checked first: the index of
    the first one holding NaN/inf is returned and nothing is updated. Returns -1 after
    updating every parameter. No parameter or moment may share memory with another array
    of the lists (gradients may share with each other).
    """
    # params[i] (...), grads[i] (...), ms[i] (...), vs[i] (...) -> params, ms, vs in place
    params, grads = _checks.adam_step_args(params, grads, ms, vs)
    if check_finite:
        for i, g in enumerate(grads):
            if not all_finite(g):
                return i
    for p, g, m, v in zip(params, grads, ms, vs):
        adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled=decoupled)
    return -1


def all_finite(x):
    """True when every element of x is finite (no NaN, no +-inf): fit's NaN/inf guard.

    x any shape, float32 or float64 -> bool.
    """
    # x (...) -> bool
    x = _checks.as_float_array("x", x)
    return bool(np.isfinite(x).all())
