"""Both backends against PyTorch: forward values, gradients by autograd, optimizer steps.

PyTorch is the outside authority on what "the same as torch" means for the losses and
optimizers (DESIGN.md). Skipped when torch is not installed.
"""
import math

import numpy as np
import pytest

from conftest import assert_close, randn, sce_grad_atol

torch = pytest.importorskip("torch")
F = torch.nn.functional


def t(a, grad=False):
    """A torch tensor sharing nothing with the array, optionally tracking gradients."""
    return torch.tensor(np.array(a), requires_grad=grad)


def to_np(x):
    return x.detach().cpu().numpy()


# ----------------------------------------------------------------------------------------
# GEMM and the linear layer
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (13, 31, 7), (64, 97, 33)])
def test_gemm(rng, dtype, backend, m, k, n, trans_a, trans_b):
    a = randn(rng, (k, m) if trans_a else (m, k), dtype)
    b = randn(rng, (n, k) if trans_b else (k, n), dtype)
    c = randn(rng, (m, n), dtype)
    ta, tb = t(a), t(b)
    expected = 1.5 * ((ta.T if trans_a else ta) @ (tb.T if trans_b else tb)) - 0.5 * t(c)
    out = c.copy()
    backend.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.5)
    assert_close(out, to_np(expected), k=k)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("n,d,m", [(1, 1, 1), (13, 31, 7), (128, 784, 256)])
def test_linear_forward_and_backward(rng, dtype, backend, n, d, m, activation):
    x, w, b = randn(rng, (n, d), dtype), randn(rng, (d, m), dtype, 0.1), randn(rng, (m,), dtype)
    g = randn(rng, (n, m), dtype)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    z = tx @ tw + tb                                   # our layout: w is (in, out)
    assert_close(to_np(z), to_np(F.linear(t(x), t(w).T, t(b))), k=d)
    y = torch.relu(z) if activation == "relu" else z
    assert_close(backend.linear_forward(x, w, b, activation=activation), to_np(y), k=d)
    z.backward(t(g))
    grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
    grad_x = backend.linear_backward(g, x, w, grad_w, grad_b)
    assert_close(grad_w, to_np(tw.grad), k=n)
    assert_close(grad_b, to_np(tb.grad), k=n)
    assert_close(grad_x, to_np(tx.grad), k=m)


# ----------------------------------------------------------------------------------------
# Activations: forward, and backward by autograd
# ----------------------------------------------------------------------------------------

TORCH_ACTIVATIONS = {
    "relu": (torch.relu, False),                 # (function, backward takes the output y)
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.01), False),
    "sigmoid": (torch.sigmoid, True),
    "tanh": (torch.tanh, True),
    "softmax": (lambda x: torch.softmax(x, dim=1), True),
}


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (31, 97), (128, 10)], ids=str)
@pytest.mark.parametrize("act", list(TORCH_ACTIVATIONS))
def test_activation(rng, dtype, backend, act, shape):
    fn, takes_y = TORCH_ACTIVATIONS[act]
    x = randn(rng, shape, dtype, scale=3.0)
    x.reshape(-1)[::7] = 0                          # relu' at 0 is 0 in torch too
    g = randn(rng, shape, dtype)
    tx = t(x, True)
    ty = fn(tx)
    ty.backward(t(g))
    y = getattr(backend, f"{act}_forward")(x)
    assert_close(y, to_np(ty))
    backward = getattr(backend, f"{act}_backward")
    grad = backward(g, y) if takes_y else backward(g, x)
    assert_close(grad, to_np(tx.grad), atol=1e-6 if dtype == np.float32 else 1e-14)


def test_sigmoid_tanh_extremes(dtype, backend):
    x = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4], dtype=dtype)
    assert_close(backend.sigmoid_forward(x), to_np(torch.sigmoid(t(x))), atol=1e-30)
    assert_close(backend.tanh_forward(x), to_np(torch.tanh(t(x))))


# ----------------------------------------------------------------------------------------
# Losses: the value and the gradient of the mean
# ----------------------------------------------------------------------------------------

def _loss_close(ours, theirs, dtype):
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    assert math.isclose(ours, theirs, rel_tol=rtol, abs_tol=rtol), (ours, theirs)


@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 3), (128, 10), (31, 97)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_cross_entropy(rng, dtype, backend, shape, scale):
    n, c = shape
    logits = randn(rng, shape, dtype, scale=scale)
    labels = rng.integers(0, c, size=n)
    tz = t(logits, True)
    tloss = F.cross_entropy(tz, torch.tensor(labels))
    tloss.backward()
    loss, grad = backend.softmax_cross_entropy(logits, labels)
    _loss_close(loss, tloss.item(), dtype)
    assert_close(grad, to_np(tz.grad), atol=sce_grad_atol(logits))


@pytest.mark.parametrize("shape", [(1,), (7, 13), (128, 10)], ids=str)
def test_mse(rng, dtype, backend, shape):
    pred, target = randn(rng, shape, dtype), randn(rng, shape, dtype)
    tp = t(pred, True)
    tloss = F.mse_loss(tp, t(target))
    tloss.backward()
    loss, grad = backend.mse(pred, target)
    _loss_close(loss, tloss.item(), dtype)
    assert_close(grad, to_np(tp.grad))


@pytest.mark.parametrize("shape", [(1,), (7, 13), (128, 10)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_bce_with_logits(rng, dtype, backend, shape, scale):
    z = randn(rng, shape, dtype, scale=scale)
    target = rng.random(shape).astype(dtype)
    tz = t(z, True)
    tloss = F.binary_cross_entropy_with_logits(tz, t(target))
    tloss.backward()
    loss, grad = backend.bce_with_logits(z, target)
    _loss_close(loss, tloss.item(), dtype)
    assert_close(grad, to_np(tz.grad), atol=1e-7 if dtype == np.float32 else 1e-15)


# ----------------------------------------------------------------------------------------
# Optimizers: five steps with a new gradient each, against torch.optim
# ----------------------------------------------------------------------------------------

N_STEPS = 5


def _grads(rng, shape, dtype):
    return [randn(rng, shape, dtype, scale=2.0 ** -i) for i in range(N_STEPS)]


def _torch_steps(opt_class, param, grads, **options):
    tp = t(param, True)
    opt = opt_class([tp], **options)
    for g in grads:
        opt.zero_grad()
        tp.grad = t(g)
        opt.step()
    return to_np(tp)


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [
    (0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0), (0.9, True, 0.0),
    (0.5, False, 0.1), (0.9, True, 1e-3),
])
def test_sgd(rng, dtype, backend, momentum, nesterov, weight_decay):
    shape = (13, 31)
    param, grads = randn(rng, shape, dtype), _grads(rng, shape, dtype)
    expected = _torch_steps(torch.optim.SGD, param, grads, lr=0.1, momentum=momentum,
                            nesterov=nesterov, weight_decay=weight_decay)
    p, velocity = param.copy(), np.zeros_like(param)
    for g in grads:
        backend.sgd_update(p, g, 0.1, momentum=momentum, velocity=velocity,
                           weight_decay=weight_decay, nesterov=nesterov)
    assert_close(p, expected)


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("lr,betas,eps,weight_decay", [
    (1e-3, (0.9, 0.999), 1e-8, 0.0),
    (1e-2, (0.8, 0.99), 1e-6, 0.1),
    (5e-2, (0.5, 0.9), 1e-8, 0.01),
])
def test_adam(rng, dtype, backend, decoupled, lr, betas, eps, weight_decay):
    shape = (7, 13)
    param, grads = randn(rng, shape, dtype), _grads(rng, shape, dtype)
    opt_class = torch.optim.AdamW if decoupled else torch.optim.Adam
    expected = _torch_steps(opt_class, param, grads, lr=lr, betas=betas, eps=eps,
                            weight_decay=weight_decay)
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    for step, g in enumerate(grads, start=1):
        backend.adam_update(p, g, m, v, step, lr, betas[0], betas[1], eps, weight_decay,
                            decoupled=decoupled)
    assert_close(p, expected)


# ----------------------------------------------------------------------------------------
# Convolution, max pooling, batch normalisation
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("xshape,wshape,stride,padding", [
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1),
    ((3, 2, 9, 8), (5, 2, 3, 2), (2, 1), (1, 0)),
    ((2, 4, 6, 6), (3, 4, 1, 1), 1, 0),
    ((8, 1, 28, 28), (8, 1, 5, 5), 2, 2),
])
def test_conv2d(rng, dtype, backend, xshape, wshape, stride, padding):
    x, w, b = randn(rng, xshape, dtype), randn(rng, wshape, dtype, 0.3), randn(rng, wshape[:1], dtype)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=padding)
    g = randn(rng, tuple(ty.shape), dtype)
    ty.backward(t(g))
    k = wshape[1] * wshape[2] * wshape[3]
    y = backend.conv2d_forward(x, w, b, stride=stride, padding=padding)
    assert_close(y, to_np(ty), k=k)
    grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
    grad_x = backend.conv2d_backward(g, x, w, grad_w, grad_b, stride=stride, padding=padding)
    k_w = g.shape[0] * g.shape[2] * g.shape[3]
    assert_close(grad_w, to_np(tw.grad), k=k_w)
    assert_close(grad_b, to_np(tb.grad), k=k_w)
    assert_close(grad_x, to_np(tx.grad), k=wshape[0] * wshape[2] * wshape[3])


@pytest.mark.parametrize("xshape,kernel_size,stride", [
    ((2, 3, 8, 8), 2, None), ((2, 3, 7, 9), 3, 2), ((1, 2, 9, 8), (3, 2), (1, 2)),
    ((4, 8, 28, 28), 2, None),
])
def test_maxpool2d(rng, dtype, backend, xshape, kernel_size, stride):
    x = randn(rng, xshape, dtype)
    tx = t(x, True)
    ty, tidx = F.max_pool2d(tx, kernel_size, stride, return_indices=True)
    g = randn(rng, tuple(ty.shape), dtype)
    ty.backward(t(g))
    out, idx = backend.maxpool2d_forward(x, kernel_size, stride)
    np.testing.assert_array_equal(out, to_np(ty))
    np.testing.assert_array_equal(idx, to_np(tidx))
    assert_close(backend.maxpool2d_backward(g, idx, x.shape), to_np(tx.grad))


@pytest.mark.parametrize("xshape,kernel_size,stride", [
    ((2, 3, 8, 8), 2, None), ((2, 3, 7, 9), 3, 2), ((1, 2, 9, 8), (3, 2), (1, 2)),
    ((3, 2, 11, 13), 3, 1), ((2, 5, 13, 3), (2, 1), 3), ((4, 8, 7, 7), 7, None),
])
def test_avgpool2d(rng, dtype, backend, xshape, kernel_size, stride):
    # torch's defaults: no padding, floor mode, the divisor KH*KW
    x = randn(rng, xshape, dtype)
    tx = t(x, True)
    ty = F.avg_pool2d(tx, kernel_size, stride)
    g = randn(rng, tuple(ty.shape), dtype)
    ty.backward(t(g))
    k = int(np.prod(np.broadcast_to(kernel_size, 2)))
    assert_close(backend.avgpool2d_forward(x, kernel_size, stride), to_np(ty), k=k)
    assert_close(backend.avgpool2d_backward(g, x.shape, kernel_size, stride), to_np(tx.grad),
                 k=k)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 6), (2, 1, 1, 3)], ids=str)
def test_batchnorm(rng, dtype, backend, shape, training):
    c = shape[1]
    x = randn(rng, shape, dtype, scale=2.0) + 1
    gamma, beta = randn(rng, (c,), dtype), randn(rng, (c,), dtype)
    running_mean, running_var = randn(rng, (c,), dtype), (rng.random(c) + 0.5).astype(dtype)
    trm, trv = t(running_mean), t(running_var)
    tx, tgamma, tbeta = t(x, True), t(gamma, True), t(beta, True)
    ty = F.batch_norm(tx, trm, trv, tgamma, tbeta, training=training, momentum=0.1, eps=1e-5)
    g = randn(rng, shape, dtype)
    ty.backward(t(g))
    rm, rv = running_mean.copy(), running_var.copy()
    out, mean, invstd = backend.batchnorm_forward(x, gamma, beta, rm, rv, training=training,
                                                  momentum=0.1, eps=1e-5)
    m = x.size // c
    assert_close(out, to_np(ty), k=m)
    assert_close(rm, to_np(trm))
    assert_close(rv, to_np(trv), k=m)
    grad_gamma, grad_beta = np.zeros_like(gamma), np.zeros_like(beta)
    grad_x = backend.batchnorm_backward(g, x, gamma, mean, invstd, grad_gamma, grad_beta,
                                        training=training)
    assert_close(grad_x, to_np(tx.grad), k=m)
    assert_close(grad_gamma, to_np(tgamma.grad), k=m)
    assert_close(grad_beta, to_np(tbeta.grad), k=m)
