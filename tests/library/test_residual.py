"""Residual connections and global average pooling: `nnscratch.Residual`,
`nnscratch.GlobalAvgPool2d` and the residual network `nnscratch.models.resnet`.

Each is checked three ways: by its formula in NumPy, by central differences in float64
(`nnscratch.gradcheck`), and against the same network in PyTorch (outputs and every
gradient), on both backends."""
import numpy as np
import pytest

import nnscratch as nn
from nnscratch import models

F64 = dict(dtype=np.float64)


def test_global_avg_pool_is_the_mean_of_each_plane(rng, nn_backend):
    x = rng.standard_normal((3, 5, 7, 4))
    pool = nn.GlobalAvgPool2d()
    y = pool(x)
    np.testing.assert_allclose(y, x.reshape(3, 5, -1).mean(axis=2), rtol=1e-14)
    g = rng.standard_normal(y.shape)
    # each input had weight 1/(H*W) in its plane's mean
    np.testing.assert_allclose(pool.backward(g), np.broadcast_to(g[:, :, None, None] / 28,
                                                                 x.shape), rtol=1e-14)
    assert pool.infer(x).dtype == np.float64 and pool(x.astype(np.float32)).dtype == np.float32
    assert pool.output_shape((5, 7, 4)) == (5,)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pool(x[0])


def _residual_model(dtype):
    body = nn.Sequential(nn.Linear(6, 6, dtype=dtype), nn.Tanh(), nn.Linear(6, 6, dtype=dtype))
    changes_shape = nn.Sequential(nn.Linear(6, 4, dtype=dtype), nn.Sigmoid(),
                                  nn.Linear(4, 3, dtype=dtype))
    return nn.Sequential(nn.Linear(5, 6, dtype=dtype), nn.Residual(body), nn.ReLU(),
                         nn.Residual(changes_shape, nn.Linear(6, 3, dtype=dtype)))


def test_residual_forward_is_body_plus_shortcut(rng, nn_backend):
    model = _residual_model(np.float64)
    x = rng.standard_normal((4, 5))
    h = model[0](x)
    y1 = model[1].body(h) + h                              # identity shortcut
    y = model[3].body(np.maximum(y1, 0)) + model[3].shortcut(np.maximum(y1, 0))
    np.testing.assert_allclose(model(x), y, rtol=1e-13)
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-13)


def test_residual_gradients_by_central_differences(rng, nn_backend):
    model = _residual_model(np.float64)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss())
    assert set(errors) == {name for name, _ in model.named_parameters()}
    assert max(errors.values()) < 1e-6, errors


def test_global_avg_pool_and_conv_residual_gradients_by_central_differences(rng, nn_backend):
    body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, **F64), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, **F64))
    model = nn.Sequential(nn.Residual(body, nn.Conv2d(3, 4, 1, stride=2, **F64)),
                          nn.GlobalAvgPool2d(), nn.Linear(4, 3, **F64))
    X, y = rng.standard_normal((2, 3, 5, 5)), rng.integers(0, 3, 2)
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss())
    assert len(errors) == 8 and max(errors.values()) < 1e-6, errors


def test_residual_shapes_must_agree():
    block = nn.Residual(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="must agree"):
        block(np.ones((2, 4)))
    with pytest.raises(ValueError, match="body gives shape"):
        block.output_shape((4,))
    with pytest.raises(TypeError, match="body must be a Module"):
        nn.Residual(lambda x: x)
    with pytest.raises(TypeError, match="shortcut must be a Module or None"):
        nn.Residual(nn.Identity(), shortcut="identity")


def _torch():
    """PyTorch (the oracle of the tests that need it: NOT RUN without it), and a residual
    block of its modules."""
    torch = pytest.importorskip("torch")

    class TorchResidual(torch.nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    return torch, TorchResidual


def _to_torch(module):
    """The same network in PyTorch, built here (independently of nnscratch.interop)."""
    torch, TorchResidual = _torch()
    tnn = torch.nn
    if isinstance(module, nn.Sequential):
        return tnn.Sequential(*[_to_torch(m) for m in module])
    if isinstance(module, nn.Residual):
        return TorchResidual(_to_torch(module.body),
                             None if module.shortcut is None else _to_torch(module.shortcut))
    if isinstance(module, nn.Conv2d):
        t = tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                       stride=module.stride, padding=module.padding,
                       bias=module.bias is not None, dtype=torch.float64)
        t.weight.data = torch.from_numpy(module.weight.data.copy())
        if module.bias is not None:
            t.bias.data = torch.from_numpy(module.bias.data.copy())
        return t
    if isinstance(module, nn.BatchNorm2d):
        t = tnn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                            dtype=torch.float64)
        t.weight.data = torch.from_numpy(module.weight.data.copy())
        t.bias.data = torch.from_numpy(module.bias.data.copy())
        return t
    if isinstance(module, nn.Linear):
        t = tnn.Linear(module.in_features, module.out_features, dtype=torch.float64)
        t.weight.data = torch.from_numpy(module.weight.data.T.copy())
        t.bias.data = torch.from_numpy(module.bias.data.copy())
        return t
    if isinstance(module, nn.GlobalAvgPool2d):
        return tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
    if isinstance(module, nn.ReLU):
        return tnn.ReLU()
    raise TypeError(type(module).__name__)


def _torch_grads(net):
    """{nnscratch parameter name: gradient}: the torch names, Linear weights transposed."""
    grads = {}
    for name, p in net.named_parameters():
        g = p.grad.numpy()
        grads[name] = g.T if g.ndim == 2 else g
    return grads


def test_resnet20_has_the_published_size():
    model = models.resnet()
    assert sum(p.size for p in model.parameters()) == 272_186
    assert model.output_shape((1, 28, 28)) == (10,)
    # 6n + 2 layers with weights: the stem, 2 per block, the classifier
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9 + 2            # + the two 1x1 shortcut convolutions
    assert [tuple(m.stride) if isinstance(m.stride, tuple) else m.stride
            for m in convs if m.kernel_size == 1] == [2, 2]
    assert sum(p.size for p in models.resnet(depth=32, width=8, num_classes=47,
                                             in_channels=3).parameters()) > 0
    for depth in (19, 21, 2, "20"):
        with pytest.raises((ValueError, TypeError), match="depth"):
            models.resnet(depth=depth)


def test_resnet20_has_pytorchs_parameter_count():
    assert sum(p.numel() for p in _to_torch(models.resnet(dtype=np.float64)).parameters()) \
        == 272_186


def test_resnet_step_equals_pytorch(rng, nn_backend):
    # a training-mode forward (batch statistics), the loss, every gradient and the running
    # statistics after it, against the same network in PyTorch, float64
    torch, _ = _torch()
    tnn = torch.nn
    nn.seed(3)
    model = models.resnet(depth=8, width=4, dtype=np.float64)
    net = _to_torch(model).train()
    X = rng.standard_normal((5, 1, 12, 12))
    y = rng.integers(0, 10, 5)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    model.zero_grad()
    loss = loss_fn(model(X), y)
    model.backward(loss_fn.backward())
    t_loss = tnn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-12
    ours = dict(model.named_parameters())
    theirs = _torch_grads(net)
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        np.testing.assert_allclose(p.grad, theirs[name], rtol=1e-9, atol=1e-12, err_msg=name)
    for name, buf in net.named_buffers():
        if "running" in name:
            np.testing.assert_allclose(model.state_dict()[name], buf.numpy(), rtol=1e-12,
                                       err_msg=name)
    # and in eval mode, the running statistics
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-10, atol=1e-12)


def test_resnet_trains_saves_and_loads(tmp_path, rng):
    nn.seed(0)
    model = models.resnet(depth=8, width=4)
    X = rng.random((64, 1, 12, 12), dtype=np.float32)
    y = (X[:, 0, :6].mean(axis=(1, 2)) > X[:, 0, 6:].mean(axis=(1, 2))).astype(np.int64)
    history = model.fit(X, y, loss=nn.CrossEntropyLoss(),
                        optimizer=nn.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        epochs=8, batch_size=16, seed=0, progress=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "resnet.npz")
    again = nn.load(tmp_path / "resnet.npz")
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    assert list(again.state_dict()) == list(model.state_dict())
