"""The linear layer's kernels, ``out = act(x @ w + b)`` and its backward, one layer or a
chain of them: the NumPy twin of ``cnn_core/_linear.pyx``."""
import numpy as np

from cnn_core.reference import _checks
from cnn_core.reference.activations import relu_backward


def linear_forward(x, w, b, out=None, *, activation=None):
    """Fully connected layer, ``out = act(x @ w + b)``.

    Parameters
    ----------
    x : ndarray (N, D)
        A batch of N inputs of D features.
    w : ndarray (D, M)
        Weights, read left to right: feature d feeds output m through ``w[d, m]``.
    b : ndarray (M,) or None
        Bias, added to every row; None for a layer without bias.
    out : ndarray (N, M), optional
    activation : None or "relu"
        ``"relu"`` applies ``max(z, 0)`` in the same pass.

    Returns
    -------
    out : ndarray (N, M)
    """
    # x (N, D) @ w (D, M) + b (M,) -> out (N, M)
    x, w, b, y = _checks.linear_args(x, w, b, out, activation)
    z = x @ w
    if b is not None:
        z = z + b                              # broadcast: the same bias for every row
    y[...] = np.maximum(z, 0) if activation == "relu" else z
    return _checks.given(out, y)


def linear_chain_forward(x, weights, biases, activations, outs=None):
    """Linear layers one after the other (a stack of `linear_forward` calls)::

        h_0 = x,    h_l = act_l(h_(l-1) @ weights[l-1] + biases[l-1])    (l = 1 .. L)

    Parameters
    ----------
    x : ndarray (N, D)
    weights : sequence of L ndarrays, weights[l] (D_l, D_(l+1)) with D_0 = D
    biases : sequence of L ndarrays (D_(l+1),) or None
    activations : sequence of L entries, None or "relu"
    outs : None, or a sequence of L buffers (or None) for h_1 ... h_L, sharing no memory
        with x, the weights, the biases or each other

    Returns
    -------
    (h_1, ..., h_L) : tuple of ndarrays (N, D_(l+1))
    """
    # x (N, D_0) -> h_1 (N, D_1) -> ... -> h_L (N, D_L)
    x, layers = _checks.linear_chain_args(x, weights, biases, activations, outs)
    h, results = x, []
    for l, (w, b, activation, out) in enumerate(layers):
        h = linear_forward(h, w, b, out, activation=activation)
        results.append(_checks.given(None if outs is None else outs[l], h))
    return tuple(results)


def linear_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, compute_grad_x=True,
                    accumulate=True):
    """Backward pass of ``z = x @ w + b``: accumulate the parameter gradients, return dL/dx.

    With ``g = dL/dz``::

        grad_w += x.T @ g          (D, M)
        grad_b += g.sum(axis=0)    (M,)
        grad_x  = g @ w.T          (N, D)

    The parameter gradients are *added to* (as ``.grad`` in PyTorch), the input gradient
    is overwritten. With ``accumulate=False`` the parameter gradients are overwritten too
    (``grad_w = x.T @ g``: what a zeroed gradient plus one backward pass holds, without the
    pass that zeroes it; their old contents are never read).

    Parameters
    ----------
    grad_out : ndarray (N, M)
    x : ndarray (N, D)
        The forward input.
    w : ndarray (D, M)
    grad_w : ndarray (D, M)
        Accumulated in place.
    grad_b : ndarray (M,) or None
        Accumulated in place; None when the layer has no bias.
    grad_x : ndarray (N, D), optional
        Written in place when given.
    compute_grad_x : bool
        False for the first layer, whose input needs no gradient.
    accumulate : bool
        False: overwrite grad_w and grad_b instead of adding to them.

    Returns
    -------
    grad_x : ndarray (N, D), or None when ``compute_grad_x`` is false
    """
    # g (N, M), x (N, D), w (D, M) -> grad_w (D, M) +=, grad_b (M,) +=, grad_x (N, D)
    given = grad_x
    grad_out, x, w, grad_w, grad_b, grad_x = _checks.linear_backward_args(
        grad_out, x, w, grad_w, grad_b, grad_x, compute_grad_x)
    if not accumulate:
        grad_w[...] = 0
        if grad_b is not None:
            grad_b[...] = 0
    grad_w += x.T @ grad_out
    if grad_b is not None:
        grad_b += grad_out.sum(axis=0)
    if not compute_grad_x:
        return None
    grad_x[...] = grad_out @ w.T
    return _checks.given(given, grad_x)


def linear_chain_backward(grad_out, xs, weights, grads_w, grads_b, masks, grad_x=None, *,
                          compute_grad_x=True, accumulate=True, work=None, check_finite=False):
    """The backward of `linear_chain_forward` (a stack of `relu_backward` and
    `linear_backward` calls, from the last layer down)::

        g = grad_out
        for l = L-1, ..., 0:
            g_l = g * (masks[l] > 0)       when layer l's output went through a ReLU
            grads_w[l] += xs[l].T @ g_l    grads_b[l] += g_l.sum(axis=0)
            g = g_l @ weights[l].T         dL/d(xs[l]); for l = 0 the returned grad_x

    Parameters
    ----------
    grad_out : ndarray (N, D_L)
        dL/d(the last layer's output).
    xs : sequence of L ndarrays, xs[l] (N, D_l)
        Each layer's forward input.
    weights : sequence of L ndarrays, weights[l] (D_l, D_(l+1))
    grads_w : sequence of L buffers of the weights' shapes
        Accumulated in place.
    grads_b : sequence of L buffers (D_(l+1),) or None
        Accumulated in place.
    masks : sequence of L entries, None or an ndarray (N, D_(l+1))
        What layer l's ReLU keeps (its output); None when layer l has no ReLU.
    grad_x : ndarray (N, D_0), optional
        Written in place when given (and compute_grad_x).
    compute_grad_x : bool
        False: the first layer's input gradient is not computed (None is returned).
    accumulate : bool, or a sequence of L bools
        False (for layer l): overwrite grads_w[l] and grads_b[l] instead of adding to them.
    work : None, or a sequence of L buffers (N, D_(l+1)) (or None)
        Where g_l is written.
    check_finite : bool
        Also return, per layer, whether its gradients hold no NaN/inf.

    Returns
    -------
    (grad_x, gs) : grad_x (N, D_0) or None, and the tuple (g_0, ..., g_(L-1)); g_(L-1) is
        grad_out itself when the last layer has no ReLU.
    (grad_x, gs, finite) with check_finite: finite[l] is the pair (grads_w[l] is all finite,
        grads_b[l] is all finite or None).
    """
    # g (N, D_L) -> per layer l, from the last: grads_w[l] +=, grads_b[l] +=, g_l (N, D_(l+1));
    # then grad_x (N, D_0)
    grad_out, layers, gs, grad_x, returned = _checks.linear_chain_backward_args(
        grad_out, xs, weights, grads_w, grads_b, masks, grad_x, compute_grad_x, accumulate, work)
    g = grad_out
    for l in range(len(layers) - 1, -1, -1):
        w, x, mask, grad_w, grad_b, accumulate_l = layers[l]
        if mask is not None:
            g = relu_backward(g, mask, out=gs[l])      # the ReLU's backward first
        elif g is not gs[l]:
            gs[l][...] = g
        g = linear_backward(gs[l], x, w, grad_w, grad_b, compute_grad_x=compute_grad_x or l > 0,
                            accumulate=accumulate_l)
    if grad_x is not None:
        grad_x[...] = g
    if not check_finite:
        return returned
    finite = tuple((bool(np.isfinite(grad_w).all()),
                    grad_b is None or bool(np.isfinite(grad_b).all()))
                   for _, _, _, grad_w, grad_b, _ in layers)
    return returned + (finite,)
