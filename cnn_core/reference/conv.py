"""2-D convolution, max and average pooling, NCHW, forward and backward: the NumPy twin of
``cnn_core/_conv.pyx`` (whose im2col + GEMM is here a sliding-window view and ``einsum``)."""
import numpy as np

from cnn_core.reference import _checks


def _windows(x, kernel_hw, stride):
    """Every (KH, KW) window of x (N, C, H, W) at the strided positions: (N, C, OH, OW, KH, KW).

    A read-only view (no copy): windows[n, c, i, j] is x[n, c, i*sh : i*sh+KH, j*sw : j*sw+KW].
    """
    view = np.lib.stride_tricks.sliding_window_view(x, kernel_hw, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


def conv2d_forward(x, w, b, out=None, *, stride=1, padding=0):
    """2-D convolution (cross-correlation, as ``torch.nn.functional.conv2d``), NCHW.

    ::

        out[n, o, i, j] = b[o] + sum_{c, p, q} w[o, c, p, q] * xpad[n, c, i*sh + p, j*sw + q]

    where ``xpad`` is x with ``padding`` zeros around each plane, and
    ``OH = (H + 2*ph - KH) // sh + 1`` (OW likewise).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (O, C, KH, KW)
        One (C, KH, KW) filter per output channel.
    b : ndarray (O,) or None
    out : ndarray (N, O, OH, OW), optional
        Shares no memory with x, w or b.
    stride : int or (int, int), >= 1
    padding : int or (int, int), >= 0

    Returns
    -------
    out : ndarray (N, O, OH, OW)
    """
    # x (N, C, H, W) * w (O, C, KH, KW) + b (O,) -> out (N, O, OH, OW)
    x, w, b, y, stride, (ph, pw) = _checks.conv2d_forward_args(x, w, b, out, stride, padding)
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = _windows(xpad, w.shape[2:], stride)                   # (N, C, OH, OW, KH, KW)
    z = np.einsum("nchwpq,ocpq->nohw", windows, w, optimize=True)  # one dot per window
    if b is not None:
        z += b[:, None, None]                                        # one bias per channel
    y[...] = z
    return _checks.given(out, y)


def conv2d_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, stride=1, padding=0,
                    compute_grad_x=True, relu_x=False):
    """Backward pass of ``conv2d_forward``: accumulate the parameter gradients, return dL/dx.

    With ``g = dL/dout`` (N, O, OH, OW): the filter ``w[o]`` receives ``g[n, o, i, j]``
    times the window it met, and that window receives ``g[n, o, i, j] * w[o]``::

        grad_w[o, c, p, q] += sum_{n, i, j} g[n, o, i, j] * xpad[n, c, i*sh + p, j*sw + q]
        grad_b[o]          += sum_{n, i, j} g[n, o, i, j]
        grad_xpad[n, c, i*sh + p, j*sw + q] += g[n, o, i, j] * w[o, c, p, q]   (all n, o, i, j, p, q)
        grad_x = grad_xpad without its padding

    Parameters
    ----------
    grad_out : ndarray (N, O, OH, OW)
    x : ndarray (N, C, H, W)
        The forward input.
    w : ndarray (O, C, KH, KW)
    grad_w : ndarray (O, C, KH, KW)
        Accumulated in place.
    grad_b : ndarray (O,) or None
        Accumulated in place; None when the layer has no bias.
    grad_x : ndarray (N, C, H, W), optional
    stride, padding : as in ``conv2d_forward``
    compute_grad_x : bool
    relu_x : bool
        x is a ReLU's output: grad_x is taken on through that ReLU, ``grad_x * (x > 0)``
        (``relu_backward(grad_x, x)``).

    No buffer (grad_w, grad_b, grad_x) shares memory with another or with what is read.

    Returns
    -------
    grad_x : ndarray (N, C, H, W), or None when ``compute_grad_x`` is false
    """
    # g (N, O, OH, OW), x (N, C, H, W), w (O, C, KH, KW) -> grad_w +=, grad_b +=, grad_x
    given = grad_x
    grad_out, x, w, grad_w, grad_b, grad_x, (sh, sw), (ph, pw) = _checks.conv2d_backward_args(
        grad_out, x, w, grad_w, grad_b, grad_x, stride, padding, compute_grad_x)
    oh, ow = grad_out.shape[2:]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = _windows(xpad, w.shape[2:], (sh, sw))
    grad_w += np.einsum("nohw,nchwpq->ocpq", grad_out, windows, optimize=True)
    if grad_b is not None:
        grad_b += grad_out.sum(axis=(0, 2, 3))
    if not compute_grad_x:
        return None
    # Kernel tap (p, q) saw the pixels xpad[:, :, p::sh, q::sw] (OH x OW of them): each gets
    # back g times that tap's weights, summed over the output channels.
    grad_xpad = np.zeros(xpad.shape, dtype=x.dtype)
    for p, q in np.ndindex(*w.shape[2:]):
        grad_xpad[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += np.einsum(
            "nohw,oc->nchw", grad_out, w[:, :, p, q], optimize=True)
    grad_x[...] = grad_xpad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    if relu_x:
        grad_x *= x > 0
    return _checks.given(given, grad_x)


def maxpool2d_forward(x, kernel_size, stride=None, out=None, indices=None):
    """2-D max pooling, NCHW, no padding, floor mode (PyTorch's defaults).

    ::

        out[n, c, i, j] = max_{p < KH, q < KW} x[n, c, i*sh + p, j*sw + q]

    with ``OH = (H - KH) // sh + 1`` (OW likewise). ``indices`` records where each maximum
    was, as the flat position ``ih * W + iw`` within its (H, W) plane (as PyTorch's
    ``return_indices``): the backward pass routes the gradient there. Ties go to the first
    maximum in row-major window order; a NaN counts as the maximum.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size : int or (int, int), >= 1
    stride : int or (int, int), >= 1; default ``kernel_size``
    out : ndarray (N, C, OH, OW), optional
    indices : ndarray (N, C, OH, OW) of int64, optional
        Neither shares memory with x or with the other.

    Returns
    -------
    out : ndarray (N, C, OH, OW)
    indices : ndarray (N, C, OH, OW), int64
    """
    # x (N, C, H, W) -> out (N, C, OH, OW), indices (N, C, OH, OW)
    x, (kh, kw), (sh, sw), y, where = _checks.maxpool_forward_args(
        x, kernel_size, stride, out, indices)
    n, c, _, w = x.shape
    oh, ow = y.shape[2:]                          # (H - KH) // sh + 1, (W - KW) // sw + 1
    windows = _windows(x, (kh, kw), (sh, sw)).reshape(n, c, oh, ow, kh * kw)
    best = np.argmax(windows, axis=-1)            # first maximum (or first NaN) per window
    y[...] = np.take_along_axis(windows, best[..., None], axis=-1)[..., 0]
    rows = np.arange(oh)[:, None] * sh + best // kw          # where in x the maximum was
    cols = np.arange(ow)[None, :] * sw + best % kw
    where[...] = rows * w + cols
    return _checks.given(out, y), _checks.given(indices, where)


def maxpool2d_backward(grad_out, indices, x_shape, out=None):
    """Backward pass of max pooling: each window's gradient goes to its maximum.

    ::

        grad_x = zeros(x_shape);  grad_x[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j]

    (added, not assigned: overlapping windows may share a maximum).

    Parameters
    ----------
    grad_out : ndarray (N, C, OH, OW)
    indices : ndarray (N, C, OH, OW), int64, from ``maxpool2d_forward``
    x_shape : tuple (N, C, H, W)
        The forward input's shape.
    out : ndarray of x_shape, optional
        Shares no memory with grad_out or indices.

    Returns
    -------
    grad_x : ndarray of x_shape
    """
    # grad_out (N, C, OH, OW), indices (N, C, OH, OW) -> grad_x (N, C, H, W)
    grad_out, indices, (n, c, h, w), grad_x = _checks.maxpool_backward_args(
        grad_out, indices, x_shape, out)
    planes = grad_x.reshape(n, c, h * w)          # a view: writing it writes grad_x
    planes[...] = 0
    batch, channel = np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]
    np.add.at(planes, (batch, channel, indices), grad_out)   # add.at: repeated indices add up
    return _checks.given(out, grad_x)


def avgpool2d_forward(x, kernel_size, stride=None, out=None):
    """2-D average pooling, NCHW, no padding, floor mode (PyTorch's defaults).

    ::

        out[n, c, i, j] = (1 / (KH*KW)) * sum_{p < KH, q < KW} x[n, c, i*sh + p, j*sw + q]

    with ``OH = (H - KH) // sh + 1`` (OW likewise): the mean of each window. (The compiled
    kernel sums each window from 0 row by row, then divides; NumPy's sum may add in
    another order: the same value to within rounding.)

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size, stride : as in ``maxpool2d_forward`` (the stride defaults to the kernel
        size)
    out : ndarray (N, C, OH, OW), optional
        Shares no memory with x.

    Returns
    -------
    out : ndarray (N, C, OH, OW)
    """
    # x (N, C, H, W) -> out (N, C, OH, OW)
    x, (kh, kw), (sh, sw), y = _checks.avgpool_forward_args(x, kernel_size, stride, out)
    windows = _windows(x, (kh, kw), (sh, sw))          # (N, C, OH, OW, KH, KW)
    y[...] = windows.sum(axis=(4, 5)) / (kh * kw)
    return _checks.given(out, y)


def avgpool2d_backward(grad_out, x_shape, kernel_size, stride=None, out=None):
    """Backward pass of average pooling: every input of a window had weight 1/(KH*KW) in
    its mean, so it gets that share of the window's gradient, from every window covering
    it::

        grad_x = zeros(x_shape)
        grad_x[n, c, i*sh + p, j*sw + q] += grad_out[n, c, i, j] / (KH*KW)
                                                          (all i, j, p < KH, q < KW)

    (added: overlapping windows, stride < kernel_size, share inputs). Inputs that no window
    covers (floor mode drops a last partial window) get 0.

    Parameters
    ----------
    grad_out : ndarray (N, C, OH, OW)
        Of the shape ``avgpool2d_forward`` gives for `x_shape`.
    x_shape : tuple (N, C, H, W)
        The forward input's shape.
    kernel_size, stride : as given to ``avgpool2d_forward``
    out : ndarray of x_shape, optional
        Shares no memory with grad_out.

    Returns
    -------
    grad_x : ndarray of x_shape
    """
    # grad_out (N, C, OH, OW) -> grad_x (N, C, H, W)
    grad_out, (kh, kw), (sh, sw), grad_x = _checks.avgpool_backward_args(
        grad_out, x_shape, kernel_size, stride, out)
    oh, ow = grad_out.shape[2:]
    share = grad_out / (kh * kw)
    grad_x[...] = 0
    if kh * kw <= oh * ow:
        # window tap (p, q) of every window: the inputs x[:, :, p::sh, q::sw] (OH x OW)
        for p, q in np.ndindex(kh, kw):
            grad_x[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += share
    else:
        # fewer windows than taps (a window over the whole plane): one window at a time
        for i, j in np.ndindex(oh, ow):
            grad_x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += share[:, :, i:i + 1, j:j + 1]
    return _checks.given(out, grad_x)
