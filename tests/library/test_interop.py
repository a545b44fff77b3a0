"""nnscratch.interop: models to PyTorch and back, with the same outputs and the same training.

PyTorch is the oracle here: the converted model must compute what the original computes
(float32 within 1e-5, float64 within 1e-12 of the output's scale), in eval mode and, where
it is deterministic (no dropout), in training mode (batch statistics, running-stat updates);
the state_dict names must map one to one (or, from a named or custom PyTorch model, as
torch_state_dict_names says); one SGD step on the same batch must give the same weights.
ResNet-20 goes both ways, and a ResNet written as PyTorch users write it (a BasicBlock whose
forward adds the shortcut) converts through torch.fx. Unsupported modules, options and
traced operations must fail naming themselves.
"""
import collections
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn as tnn  # noqa: E402

import nnscratch as nn  # noqa: E402
from nnscratch import _random  # noqa: E402
from nnscratch import interop  # noqa: E402
from nnscratch.interop import (ConversionError, from_torch, to_torch,  # noqa: E402
                               torch_state_dict_names)

TOL = {np.float32: 1e-5, np.float64: 1e-12}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)      # (a shared machine; and a fixed reduction order)
    yield
    torch.set_num_threads(before)


def _close(got, want, dtype, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                               err_msg=what)


def _torch_out(module, X):
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


def _nn_out(model, X):
    return np.array(model(X), copy=True)      # (a training forward may return a kept buffer)


def _randomize_batchnorm(model, seed=0):
    """Non-trivial running statistics and affine parameters for every batch norm."""
    rng = np.random.default_rng(seed)
    for key, array in model.state_dict().items():
        if key.endswith("running_mean") or key.endswith(".bias"):
            array[...] = rng.normal(size=array.shape)
        elif key.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, size=array.shape)
        elif any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight.data is array
                 for m in model.modules()):
            array[...] = rng.uniform(0.5, 1.5, size=array.shape)
    return model


def _torch_randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return module


# --- nnscratch models, their inputs -----------------------------------------------------------

RECIPES = {
    "mlp": (lambda dtype: nn.models.mlp(dtype=dtype), (784,)),
    "cnn": (lambda dtype: nn.models.cnn(dropout=0.0, dtype=dtype), (1, 28, 28)),
    "cnn_dropout": (lambda dtype: nn.models.cnn(dtype=dtype), (1, 28, 28)),
    "lenet": (lambda dtype: nn.models.lenet(dtype=dtype), (1, 28, 28)),
    "resnet20": (lambda dtype: nn.models.resnet(dtype=dtype), (1, 28, 28)),
}

LAYERS = {    # one layer (in a Sequential) and the per-sample input shape
    "linear": (lambda d: nn.Linear(5, 4, dtype=d), (5,)),
    "linear_no_bias": (lambda d: nn.Linear(5, 3, bias=False, dtype=d), (5,)),
    "conv": (lambda d: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dtype=d),
             (3, 9, 8)),
    "conv_no_bias": (lambda d: nn.Conv2d(2, 3, 3, bias=False, dtype=d), (2, 6, 6)),
    "maxpool": (lambda d: nn.MaxPool2d(3, 2), (2, 9, 9)),
    "maxpool_rect": (lambda d: nn.MaxPool2d((2, 3)), (2, 6, 7)),
    "avgpool": (lambda d: nn.AvgPool2d(3, 2), (2, 9, 8)),        # overlapping, floor mode
    "avgpool_rect": (lambda d: nn.AvgPool2d((2, 3)), (2, 6, 7)),
    "avgpool_gaps": (lambda d: nn.AvgPool2d((1, 2), (2, 3)), (3, 5, 8)),
    "batchnorm1d": (lambda d: nn.BatchNorm1d(5, eps=1e-3, momentum=0.3, dtype=d), (5,)),
    "batchnorm1d_3d": (lambda d: nn.BatchNorm1d(5, dtype=d), (5, 4)),
    "batchnorm2d": (lambda d: nn.BatchNorm2d(3, dtype=d), (3, 4, 5)),
    "relu": (lambda d: nn.ReLU(), (7,)),
    "leaky_relu": (lambda d: nn.LeakyReLU(0.3), (2, 3, 3)),
    "sigmoid": (lambda d: nn.Sigmoid(), (7,)),
    "tanh": (lambda d: nn.Tanh(), (7,)),
    "softmax": (lambda d: nn.Softmax(), (6,)),
    "flatten": (lambda d: nn.Flatten(), (2, 3, 4)),
    "dropout": (lambda d: nn.Dropout(0.4), (7,)),
    "identity": (lambda d: nn.Identity(), (3, 2)),
    "nested": (lambda d: nn.Sequential(nn.Sequential(nn.Linear(4, 6, dtype=d), nn.Tanh()),
                                       nn.Linear(6, 2, dtype=d)), (4,)),
    "residual": (lambda d: nn.Residual(nn.Sequential(nn.Linear(5, 5, dtype=d), nn.Tanh(),
                                                     nn.Linear(5, 5, dtype=d))), (5,)),
    "residual_shortcut": (lambda d: nn.Residual(nn.Linear(5, 3, dtype=d),
                                                nn.Linear(5, 3, bias=False, dtype=d)), (5,)),
    "global_avg_pool": (lambda d: nn.GlobalAvgPool2d(), (3, 4, 5)),
}


def _nn_case(name, dtype, seed=0):
    nn.seed(seed)
    if name in RECIPES:
        make, shape = RECIPES[name]
        model = make(dtype)
    else:
        make, shape = LAYERS[name]
        model = nn.Sequential(make(dtype))
    X = np.random.default_rng(seed + 1).normal(size=(6,) + shape).astype(dtype)
    return _randomize_batchnorm(model, seed), X


def _deterministic_in_training(model):
    return not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def _torch_name_map(model, module):
    """nnscratch state_dict name -> torch's: the same, torch having num_batches_tracked more."""
    ours, theirs = list(model.state_dict()), list(module.state_dict())
    assert [k for k in theirs if not k.endswith("num_batches_tracked")] == ours
    return {k: k for k in ours}


def _is_linear_weight(model, key):
    owner, _, name = key.rpartition(".")
    return isinstance(dict(model.named_modules())[owner], nn.Linear) and name == "weight"


# --- nnscratch -> torch -> nnscratch ----------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("name", list(RECIPES) + list(LAYERS))
def test_nnscratch_to_torch_and_back(name, dtype):
    model, X = _nn_case(name, dtype)
    module = to_torch(model)
    assert isinstance(module, tnn.Module)
    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == TORCH_DTYPE[dtype], key

    # the names map one to one, the values are the same (Linear's weight transposed)
    ours = model.state_dict()
    theirs = module.state_dict()
    for key, theirs_key in _torch_name_map(model, module).items():
        value = theirs[theirs_key].numpy()
        if _is_linear_weight(model, key):
            value = value.T
        np.testing.assert_array_equal(value, ours[key], err_msg=key)

    # eval mode: the same outputs
    model.eval()
    module.eval()
    # (model(X), not predict: predict gives a model without weights float32 outputs)
    _close(_torch_out(module, X), _nn_out(model, X), dtype, "eval")

    # training mode (batch statistics; dropout excluded): the same outputs and running stats
    if _deterministic_in_training(model):
        model.train()
        module.train()
        _close(_torch_out(module, X), _nn_out(model, X), dtype, "train")
        for key in ours:
            if "running" in key:
                _close(module.state_dict()[key].numpy(), ours[key], dtype, key)

    # and back: the same state, the same outputs
    assert torch_state_dict_names(module) == {key: key for key in ours}
    back = from_torch(module)
    assert repr(back) == repr(model)
    assert list(back.state_dict()) == list(model.state_dict())
    for key, array in model.state_dict().items():
        _close(back.state_dict()[key], array, dtype, key)
        assert back.state_dict()[key].dtype == dtype
    back.eval()
    model.eval()
    _close(_nn_out(back, X), _nn_out(model, X), dtype, "round trip")


def test_a_round_trip_without_running_is_bit_for_bit():
    model, _ = _nn_case("cnn", np.float32)
    back = from_torch(to_torch(model))
    for key, array in model.state_dict().items():
        assert back.state_dict()[key].tobytes() == array.tobytes(), key


def test_a_bare_layer_converts_to_a_bare_layer():
    nn.seed(0)
    layer = nn.Linear(3, 2, dtype=np.float64)
    module = to_torch(layer)
    assert type(module) is tnn.Linear and module.weight.shape == (2, 3)
    np.testing.assert_array_equal(module.weight.detach().numpy(), layer.weight.data.T)
    back = from_torch(module)
    assert type(back) is nn.Linear
    np.testing.assert_array_equal(back.weight.data, layer.weight.data)


def test_modes_are_carried_module_by_module():
    model, _ = _nn_case("cnn_dropout", np.float32)
    model.train()
    model[11].eval()                              # one Dropout in eval mode
    module = to_torch(model)
    assert [m.training for m in module.children()] == [m.training for m in model]
    assert module.training and not module[11].training
    back = from_torch(module)
    assert [m.training for m in back] == [m.training for m in model]
    model.eval()
    assert not to_torch(model).training and not any(m.training for m in to_torch(model).modules())


def test_conversions_copy_and_leave_the_generators_alone():
    model, _ = _nn_case("mlp", np.float32)
    torch.manual_seed(123)
    torch_state = torch.get_rng_state()
    nn.seed(9)
    nn_state = _random.get_state()
    module = to_torch(model)
    back = from_torch(module)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert _random.get_state() == nn_state
    before = model[0].weight.data.copy()
    with torch.no_grad():
        module[0].weight.fill_(7.0)               # no memory shared in either direction
    back[0].weight.data[...] = 5.0
    np.testing.assert_array_equal(model[0].weight.data, before)
    assert (module[0].weight == 7.0).all()


# --- torch -> nnscratch -> torch --------------------------------------------------------------

def _torch_mlp():
    return tnn.Sequential(tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 128), tnn.ReLU(),
                          tnn.Linear(128, 10))


def _torch_cnn():
    return tnn.Sequential(
        tnn.Conv2d(1, 8, 3, padding=1, bias=False), tnn.BatchNorm2d(8), tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(8, 12, 3, padding="same"), tnn.BatchNorm2d(12, momentum=0.2), tnn.Tanh(),
        tnn.MaxPool2d(kernel_size=(2, 2), stride=2),
        tnn.Flatten(), tnn.Linear(12 * 7 * 7, 32), tnn.BatchNorm1d(32), tnn.LeakyReLU(0.1),
        tnn.Dropout(0.3), tnn.Linear(32, 10), tnn.Sigmoid(), tnn.Identity(),
        tnn.Sequential(tnn.Linear(10, 10), tnn.Softmax(dim=1)))


def _torch_avg_cnn():
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.Tanh(), tnn.AvgPool2d(2),
        tnn.Conv2d(6, 8, 3), tnn.ReLU(), tnn.AvgPool2d(kernel_size=(3, 2), stride=(2, 1)),
        tnn.AvgPool2d(2, stride=1, padding=0, ceil_mode=False, count_include_pad=False,
                      divisor_override=None),
        tnn.Flatten(), tnn.Linear(8 * 1 * 3, 10))


def _torch_lenet():
    return tnn.Sequential(
        tnn.Conv2d(1, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 5, stride=1, padding=0, padding_mode="zeros"), tnn.ReLU(),
        tnn.MaxPool2d(2, stride=2, padding=0, dilation=1, ceil_mode=False), tnn.Flatten(),
        tnn.Linear(32 * 4 * 4, 128), tnn.ReLU(), tnn.Linear(128, 10))


TORCH_MODELS = {"mlp": (_torch_mlp, (784,)), "cnn": (_torch_cnn, (1, 28, 28)),
                "lenet": (_torch_lenet, (1, 28, 28)), "avg_cnn": (_torch_avg_cnn, (1, 14, 14))}


@DTYPES
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_torch_to_nnscratch_and_back(name, dtype):
    make, shape = TORCH_MODELS[name]
    torch.manual_seed(0)
    module = _torch_randomize(make().to(TORCH_DTYPE[dtype]))
    X = np.random.default_rng(2).normal(size=(6,) + shape).astype(dtype)
    module.eval()
    model = from_torch(module)
    assert isinstance(model, nn.Sequential) and not model.training
    assert model.dtype == dtype
    assert list(model.state_dict()) == [k for k in module.state_dict()
                                        if not k.endswith("num_batches_tracked")]
    _close(model.predict(X), _torch_out(module, X), dtype, "eval")
    if name != "cnn":                  # (its Dropout draws differently in each library)
        module.train()
        model.train()
        _close(_nn_out(model, X), _torch_out(module, X), dtype, "train")
    back = to_torch(model)
    theirs, again = module.state_dict(), back.state_dict()
    assert list(again) == list(theirs)
    for key, tensor in theirs.items():
        if not key.endswith("num_batches_tracked"):
            _close(again[key].numpy(), tensor.numpy(), dtype, key)
    back.eval()
    module.eval()
    _close(_torch_out(back, X), _torch_out(module, X), dtype, "round trip")


# --- training carries over --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "resnet20"])
def test_sgd_steps_are_the_same_in_both(name):
    dtype = np.float64
    model, X = _nn_case(name, dtype, seed=4)
    before = {key: array.copy() for key, array in model.state_dict().items()}
    module = to_torch(model)
    y = np.random.default_rng(5).integers(0, 10, size=len(X))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch_optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    model.train()
    module.train()
    for step in range(2):           # the second step uses the momentum buffers
        loss = loss_fn(model(X), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()
        torch_optimizer.zero_grad()
        torch_loss = F.cross_entropy(module(torch.from_numpy(X)), torch.from_numpy(y))
        torch_loss.backward()
        torch_optimizer.step()
        assert abs(loss - torch_loss.item()) <= 1e-12 * max(1.0, abs(loss)), step
        theirs = module.state_dict()
        changed = 0
        for key, array in model.state_dict().items():
            value = theirs[key].numpy()
            value = value.T if _is_linear_weight(model, key) else value
            _close(array, value, dtype, f"step {step}: {key}")
            changed += not np.array_equal(array, before[key])
        assert changed > len(theirs) // 2          # the step did move the weights


# --- custom PyTorch modules, through torch.fx -------------------------------------------------

class _Custom(tnn.Module):
    """forward(x) = body(x) for a given function of (self, x)."""

    def __init__(self, body, **modules):
        super().__init__()
        self.body = body
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.body(self, x)


class MnistNet(tnn.Module):
    """PyTorch's MNIST example, its forward a chain of modules and functions."""

    def __init__(self, log_softmax=False):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 8, 3, 1)
        self.conv2 = tnn.Conv2d(8, 16, 3, 1)
        self.dropout1 = tnn.Dropout(0.25)
        self.fc1 = tnn.Linear(16 * 12 * 12, 32)
        self.fc2 = tnn.Linear(32, 10)
        self.log_softmax = log_softmax

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1) if self.log_softmax else x


class Styles(tnn.Module):
    """The other spellings of a chain: methods, view/reshape by the batch size, a block."""

    def __init__(self):
        super().__init__()
        self.block = tnn.Sequential(tnn.Conv2d(2, 3, 3, padding=1), tnn.BatchNorm2d(3))
        self.act = tnn.ReLU()
        self.fc = tnn.Linear(3 * 3 * 3, 8)
        self.head = tnn.Linear(8, 4)

    def forward(self, x):
        x = self.act(self.block(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.act(x)                              # a module without weights, twice
        x = x.view(x.size(0), -1)
        x = x.reshape(x.shape[0], -1).flatten(1)
        x = torch.sigmoid(x.relu())
        x = F.leaky_relu(self.fc(x), 0.2).tanh()
        return F.softmax(self.head(x), dim=-1)


@DTYPES
def test_a_custom_chain_converts_through_fx(dtype):
    torch.manual_seed(1)
    module = _torch_randomize(Styles().to(TORCH_DTYPE[dtype])).eval()
    model = from_torch(module)
    assert [type(m).__name__ for m in model] == [       # (fx traces through the Sequential)
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "ReLU", "Flatten", "Flatten", "Flatten",
        "ReLU", "Sigmoid", "Linear", "LeakyReLU", "Tanh", "Linear", "Softmax"]
    assert model[0].padding == 1 and model[3].stride == 2 and model[11].negative_slope == 0.2
    X = np.random.default_rng(3).normal(size=(5, 2, 6, 6)).astype(dtype)
    _close(model.predict(X), _torch_out(module, X), dtype, "eval")
    module.train()
    model.train()
    _close(_nn_out(model, X), _torch_out(module, X), dtype, "train")


@DTYPES
def test_average_pooling_functions_convert_through_fx(dtype):
    # F.avg_pool2d with PyTorch's defaults (count_include_pad either way: no padding)
    def body(s, x):
        x = F.avg_pool2d(s.conv(x), 2)
        x = F.avg_pool2d(x, kernel_size=(2, 1), stride=1, count_include_pad=False)
        return torch.flatten(F.avg_pool2d(x, 3, (1, 2), 0, False, True, None), 1)

    torch.manual_seed(4)
    module = _Custom(body, conv=tnn.Conv2d(2, 3, 3, padding=1)).to(TORCH_DTYPE[dtype])
    model = from_torch(module)
    assert [type(m).__name__ for m in model] == ["Conv2d", "AvgPool2d", "AvgPool2d",
                                                  "AvgPool2d", "Flatten"]
    assert [(m.kernel_size, m.stride) for m in model[1:4]] == [(2, 2), ((2, 1), 1),
                                                               (3, (1, 2))]
    X = np.random.default_rng(6).normal(size=(4, 2, 12, 11)).astype(dtype)
    _close(model.predict(X), _torch_out(module, X), dtype, "eval")


@pytest.mark.parametrize("body, kinds", [
    (lambda s, x: torch.softmax(s.fc(x), 1), ["Linear", "Softmax"]),
    (lambda s, x: s.fc(x).softmax(dim=-1), ["Linear", "Softmax"]),
    (lambda s, x: torch.tanh(x.sigmoid()), ["Sigmoid", "Tanh"]),
    (lambda s, x: torch.reshape(s.fc(x), (x.size(0), -1)), ["Linear", "Flatten"]),
    (lambda s, x: s.fc(x).view(x.size()[0], -1), ["Linear", "Flatten"]),
    (lambda s, x: F.relu(s.fc(x), inplace=True), ["Linear", "ReLU"]),
    (lambda s, x: x, []),
])
def test_other_spellings_of_a_chain(body, kinds):
    torch.manual_seed(3)
    module = _Custom(body, fc=tnn.Linear(4, 4).double())
    model = from_torch(module)
    assert [type(m).__name__ for m in model] == kinds
    X = np.random.default_rng(5).normal(size=(3, 4))
    _close(_nn_out(model.eval(), X), _torch_out(module, X), np.float64)


def _plus_equals(s, x):
    out = s.fc(x)
    out += x
    return out


def _nested(s, x):
    y = s.fc(x)
    z = y + F.relu(s.fc2(y))
    return z + y


def _two_blocks(s, x):
    h = x + s.fc(x)
    return h + s.fc2(h)


def _structure(model):
    """A model's layout: a list for a Sequential, ("R", body, shortcut) for a Residual."""
    if isinstance(model, nn.Sequential):
        return [_structure(m) for m in model]
    if isinstance(model, nn.Residual):
        return ("R", _structure(model.body),
                None if model.shortcut is None else _structure(model.shortcut))
    return type(model).__name__


@pytest.mark.parametrize("body, structure", [
    (lambda s, x: x + s.fc(x), [("R", ["Linear"], None)]),
    (lambda s, x: torch.add(s.fc(x), x), [("R", ["Linear"], None)]),
    (lambda s, x: s.fc(x).add(x, alpha=1).relu(), [("R", ["Linear"], None), "ReLU"]),
    (_plus_equals, [("R", ["Linear"], None)]),
    (lambda s, x: F.relu(s.fc(x)) + s.fc2(x), [("R", ["Linear", "ReLU"], ["Linear"])]),
    (lambda s, x: s.fc2(x) + F.relu(s.fc(x)), [("R", ["Linear", "ReLU"], ["Linear"])]),
    (lambda s, x: x.tanh() + x.sigmoid(), [("R", ["Tanh"], ["Sigmoid"])]),
    (lambda s, x: x + x, [("R", [], None)]),
    (_nested, ["Linear", ("R", [("R", ["Linear", "ReLU"], None)], None)]),
    (_two_blocks, [("R", ["Linear"], None), ("R", ["Linear"], None)]),
    (lambda s, x: x + s.fc(x) + s.fc2(x), [("R", [("R", ["Linear"], None)], ["Linear"])]),
])
def test_spellings_of_a_residual_addition(body, structure):
    torch.manual_seed(4)
    module = _Custom(body, fc=tnn.Linear(4, 4).double(), fc2=tnn.Linear(4, 4).double())
    model = from_torch(module)
    assert _structure(model) == structure
    X = np.random.default_rng(7).normal(size=(3, 4))
    _close(_nn_out(model.eval(), X), _torch_out(module, X), np.float64)
    # the body is the longer branch whichever side it is on: fc's weights go there
    names = torch_state_dict_names(module)
    assert list(names.values()) == list(model.state_dict())
    if body.__name__ == "<lambda>" and "fc2" in names:
        assert names["fc.weight"] == "0.body.0.weight"
        assert names["fc2.weight"] == "0.shortcut.0.weight"


@pytest.mark.parametrize("module, kinds", [
    (tnn.Sequential(tnn.Conv2d(2, 3, 3), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                    tnn.Linear(3, 2)), ["Conv2d", "GlobalAvgPool2d", "Flatten", "Linear"]),
    (tnn.Sequential(tnn.Sequential(tnn.Conv2d(2, 3, 3), tnn.AdaptiveAvgPool2d((1, 1))),
                    tnn.Flatten()), ["Sequential", "Flatten"]),
    (_Custom(lambda s, x: torch.flatten(F.adaptive_avg_pool2d(s.conv(x), 1), 1),
             conv=tnn.Conv2d(2, 3, 3)), ["Conv2d", "GlobalAvgPool2d", "Flatten"]),
    (_Custom(lambda s, x: s.conv(x).mean([-2, -1]), conv=tnn.Conv2d(2, 3, 3)),
     ["Conv2d", "GlobalAvgPool2d"]),
    (_Custom(lambda s, x: torch.mean(s.conv(x), dim=(2, 3), keepdim=True).view(x.size(0), -1),
             conv=tnn.Conv2d(2, 3, 3)), ["Conv2d", "GlobalAvgPool2d", "Flatten"]),
])
def test_global_average_pools_from_torch(module, kinds):
    # AdaptiveAvgPool2d(1) gives (N, C, 1, 1) and GlobalAvgPool2d (N, C): the Flatten that
    # follows makes them the same, and the layers keep their positions (and names)
    module = module.double()
    model = from_torch(module)
    assert [type(m).__name__ for m in model] == kinds
    assert list(model.state_dict()) == list(module.state_dict()) or isinstance(module, _Custom)
    X = np.random.default_rng(8).normal(size=(3, 2, 6, 5))
    _close(_nn_out(model, X), _torch_out(module, X), np.float64)


def test_the_mnist_example_converts_and_log_softmax_is_named():
    torch.manual_seed(2)
    module = MnistNet().eval()
    model = from_torch(tnn.Sequential(module))          # a custom module inside a Sequential
    assert [n for n, _ in model.named_parameters()][:2] == ["0.0.weight", "0.0.bias"]
    X = np.random.default_rng(4).normal(size=(3, 1, 28, 28)).astype(np.float32)
    _close(model.predict(X), _torch_out(module, X), np.float32)
    with pytest.raises(ConversionError, match="log_softmax"):
        from_torch(MnistNet(log_softmax=True))


class XPlusBody(tnn.Module):
    def __init__(self):
        super().__init__()
        self.body = tnn.Sequential(tnn.Linear(4, 4), tnn.ReLU(), tnn.Linear(4, 4))

    def forward(self, x):
        return x + self.body(x)


def test_an_addition_of_two_branches_from_one_value_is_a_residual():
    torch.manual_seed(6)
    inner = XPlusBody().double()
    for module in (inner, tnn.Sequential(tnn.Linear(4, 4).double(), inner)):
        model = from_torch(module)
        block = _last_block(model)
        assert type(block) is nn.Residual and block.shortcut is None
        assert [type(m).__name__ for m in block.body] == ["Linear", "ReLU", "Linear"]
        X = np.random.default_rng(6).normal(size=(3, 4))
        _close(_nn_out(model.eval(), X), _torch_out(module, X), np.float64)


def _last_block(model):
    while isinstance(model, nn.Sequential):
        model = model[-1]
    return model


# --- ResNets written as PyTorch users write them ---------------------------------------------

class BasicBlock(tnn.Module):
    """The basic block of the popular CIFAR ResNets (kuangliu/pytorch-cifar): the shortcut an
    empty nn.Sequential, or a 1x1 convolution and batch norm where the shape changes."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c_out)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c_out)
        self.shortcut = tnn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                           tnn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class TorchvisionBlock(tnn.Module):
    """torchvision's BasicBlock: `downsample` None or a Sequential, an in-place ReLU module
    used twice, ``out += identity``."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c_out)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                             tnn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TorchResNet(tnn.Module):
    """The CIFAR-style ResNet (6n + 2) of nnscratch.models.resnet, written in PyTorch."""

    def __init__(self, depth=20, width=16, block=BasicBlock, head="mean"):
        super().__init__()
        self.head = head
        self.conv1 = tnn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        c_in = width
        for stage in range(3):
            c_out = width * 2 ** stage
            blocks = []
            for i in range((depth - 2) // 6):
                blocks.append(block(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
            setattr(self, f"layer{stage + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(c_in, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.head == "mean":
            out = out.mean((2, 3))
        elif self.head == "avgpool":
            out = torch.flatten(self.avgpool(out), 1)
        else:
            out = F.adaptive_avg_pool2d(out, 1)
            out = out.view(out.size(0), -1)
        return self.fc(out)


def _torch_resnet(dtype, **kwargs):
    torch.manual_seed(7)
    return _torch_randomize(TorchResNet(**kwargs).to(TORCH_DTYPE[dtype]))


@DTYPES
def test_a_pytorch_resnet20_converts_through_fx(dtype):
    module = _torch_resnet(dtype)
    model = from_torch(module)
    # the layout of nnscratch's own ResNet-20, and so its state_dict names
    assert repr(model) == repr(nn.models.resnet(dtype=dtype))
    names = torch_state_dict_names(module)
    assert list(names.values()) == list(model.state_dict())
    assert set(names) == {k for k in module.state_dict() if "num_batches" not in k}
    assert names["layer1.0.conv1.weight"] == "3.body.0.weight"
    assert names["layer2.0.shortcut.1.running_var"] == "9.shortcut.1.running_var"
    assert names["fc.weight"] == "22.weight"
    ours, theirs = model.state_dict(), module.state_dict()
    for torch_name, name in names.items():
        value = theirs[torch_name].numpy()
        np.testing.assert_array_equal(ours[name], value.T if name == "22.weight" else value)

    X = np.random.default_rng(9).normal(size=(4, 1, 16, 16)).astype(dtype)
    module.eval()
    model.eval()
    _close(_nn_out(model, X), _torch_out(module, X), dtype, "eval")
    module.train()
    model.train()
    _close(_nn_out(model, X), _torch_out(module, X), dtype, "train")
    for torch_name, name in names.items():      # the running statistics moved alike
        if "running" in name:
            _close(model.state_dict()[name], module.state_dict()[torch_name].numpy(), dtype,
                   name)
    # and on to PyTorch again: nnscratch's layout, the same outputs
    back = to_torch(model).eval()
    assert isinstance(back[3], interop.TorchResidual)
    module.eval()
    _close(_torch_out(back, X), _torch_out(module, X), dtype, "back")


@pytest.mark.parametrize("block", [BasicBlock, TorchvisionBlock])
@pytest.mark.parametrize("head", ["mean", "avgpool", "functional"])
def test_pytorch_resnet_spellings_train_alike(block, head):
    # one SGD step with momentum, batch statistics, float64: the weights after it agree
    dtype = np.float64
    module = _torch_resnet(dtype, depth=8, width=4, block=block, head=head).train()
    model = from_torch(module)
    names = torch_state_dict_names(module)
    n_blocks = 3
    assert _structure(model)[:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in model][3:3 + 2 * n_blocks] == ["Residual", "ReLU"] * 3
    assert [type(m).__name__ for m in model][-3:] == (
        ["ReLU", "GlobalAvgPool2d", "Linear"] if head == "mean"
        else ["GlobalAvgPool2d", "Flatten", "Linear"])
    assert [model[i].shortcut is None for i in (3, 5, 7)] == [True, False, False]

    X = np.random.default_rng(10).normal(size=(5, 1, 12, 12))
    y = np.random.default_rng(11).integers(0, 10, size=5)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(X), y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    nn.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    torch_loss = F.cross_entropy(module(torch.from_numpy(X)), torch.from_numpy(y))
    torch_loss.backward()
    torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9).step()
    assert abs(loss - torch_loss.item()) <= 1e-12 * max(1.0, abs(loss))
    ours, theirs = model.state_dict(), module.state_dict()
    for torch_name, name in names.items():
        value = theirs[torch_name].numpy()
        _close(ours[name], value.T if torch_name == "fc.weight" else value, dtype, name)


def test_resnet20_in_pytorch_is_a_tree_of_torch_residuals():
    model = nn.models.resnet(depth=20)
    model.eval()
    model[5].train()                    # a block in training mode, carried over
    net = to_torch(model)
    blocks = [m for m in net if isinstance(m, interop.TorchResidual)]
    assert len(blocks) == 9
    assert [b.shortcut is None for b in blocks] == [True] * 3 + [False, True, True] * 2
    assert [name for name, _ in blocks[3].named_children()] == ["body", "shortcut"]
    assert isinstance(net[21], interop.TorchGlobalAvgPool2d) and not net.training
    assert net[5].training and net[5].body[0].training and not net[3].training
    assert sum(p.numel() for p in net.parameters()) == 272_186
    back = from_torch(net)
    assert back[5].training and not back[3].training and not back.training
    # torch.save pickles the whole module: the classes are found by name
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False).eval()
    X = np.random.default_rng(12).normal(size=(2, 1, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(_torch_out(again, X), _torch_out(net.eval(), X))
    with pytest.raises(AttributeError, match="no attribute 'TorchResNet'"):
        interop.TorchResNet


def test_importing_interop_does_not_import_torch(tmp_path):
    # a fresh interpreter, from a folder where the checkout's uncompiled cnn_core/ cannot
    # shadow the installed package, seeing the nnscratch and cnn_core this process sees
    import os

    import cnn_core

    roots = [os.path.dirname(os.path.dirname(m.__file__)) for m in (nn, cnn_core)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(roots)))
    code = "import sys, nnscratch.interop; assert 'torch' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- names --------------------------------------------------------------------------------

def test_a_named_sequential_gets_positional_names_and_a_name_map():
    module = tnn.Sequential(collections.OrderedDict(
        fc1=tnn.Linear(4, 8), bn=tnn.BatchNorm1d(8), act=tnn.ReLU(), fc2=tnn.Linear(8, 3)))
    model = from_torch(module)
    assert list(model.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "3.weight", "3.bias"]
    names = torch_state_dict_names(module)
    assert names == {"fc1.weight": "0.weight", "fc1.bias": "0.bias", "bn.weight": "1.weight",
                     "bn.bias": "1.bias", "bn.running_mean": "1.running_mean",
                     "bn.running_var": "1.running_var", "fc2.weight": "3.weight",
                     "fc2.bias": "3.bias"}
    # a PyTorch checkpoint loads by the map (Linear weights transposed)
    checkpoint = {k: v.numpy() for k, v in module.state_dict().items()}
    other = from_torch(tnn.Sequential(tnn.Linear(4, 8), tnn.BatchNorm1d(8), tnn.ReLU(),
                                      tnn.Linear(8, 3)))
    other.load_state_dict({name: checkpoint[k].T if k.endswith("fc1.weight")
                           or k.endswith("fc2.weight") else checkpoint[k]
                           for k, name in names.items()})
    X = np.random.default_rng(13).normal(size=(3, 4)).astype(np.float32)
    _close(_nn_out(other.eval(), X), _torch_out(module.eval(), X), np.float32)
    # positional PyTorch names are kept as they are
    assert set(torch_state_dict_names(_torch_lenet()).items()) == {
        (k, k) for k in _torch_lenet().state_dict()}
    with pytest.raises(TypeError, match="torch_state_dict_names takes a torch.nn.Module"):
        torch_state_dict_names(model)


def _shared_value(self, x):
    a = self.fc(x)
    b = self.fc2(a)
    return (b + a) + b         # b both in the inner block and beside it: fc2 twice in a tree


def _dead_code(self, x):
    self.fc2(x)
    return self.fc(x)


def _branchy(self, x):
    if x.sum() > 0:
        return self.fc(x)
    return x


@pytest.mark.parametrize("module, message", [
    (_Custom(lambda s, x: F.gelu(s.fc(x)), fc=tnn.Linear(4, 4)), "calls gelu"),
    (_Custom(lambda s, x: s.act(s.fc(x)), fc=tnn.Linear(4, 4), act=tnn.GELU()),
     "module 'act' \\(GELU\\)"),
    (_Custom(lambda s, x: s.fc(x).view(-1, 4), fc=tnn.Linear(4, 4)),
     "calls view.*not \\(x.size\\(0\\), -1\\)"),
    (_Custom(lambda s, x: torch.flatten(x), fc=tnn.Linear(4, 4)), "start_dim=0"),
    (_Custom(lambda s, x: s.fc(s.fc(x)), fc=tnn.Linear(4, 4)), "'fc' is called twice"),
    (_Custom(lambda s, x: s.fc(x) * 2, fc=tnn.Linear(4, 4)), "calls mul"),
    (_Custom(lambda s, x: x @ s.w, w=tnn.Parameter(torch.ones(4, 4))), "parameter or buffer 'w'"),
    (_Custom(lambda s, x: torch.cat([s.fc(x), x], 1), fc=tnn.Linear(4, 4)), "calls cat"),
    (_Custom(_branchy, fc=tnn.Linear(4, 4)), "symbolic_trace"),
    (_Custom(lambda s, x: F.softmax(x, dim=0)), "dim=0"),
    (_Custom(lambda s, x: F.max_pool2d(x, 2, ceil_mode=True)), "ceil_mode=True"),
    (_Custom(lambda s, x: F.avg_pool2d(x, 2, padding=1)), "call of avg_pool2d.*padding=1"),
    (_Custom(lambda s, x: F.avg_pool2d(x, 3, 1, 0, True)), "ceil_mode=True"),
    (_Custom(lambda s, x: F.avg_pool2d(x, 2, divisor_override=3)), "divisor_override=3"),
    # additions that are not a residual block's
    (_Custom(lambda s, x: s.fc(x) + 1, fc=tnn.Linear(4, 4)), "calls add.*two tensors"),
    (_Custom(lambda s, x: torch.add(x, s.fc(x), alpha=2), fc=tnn.Linear(4, 4)),
     "calls add.*alpha=1"),
    (_Custom(lambda s, x: s.fc(x) + x * 2, fc=tnn.Linear(4, 4)), "calls mul"),
    (_Custom(lambda s, x: F.gelu(s.fc(x)) + x, fc=tnn.Linear(4, 4)), "calls gelu"),
    (_Custom(lambda s, x: x + s.fc(x) + s.fc(x), fc=tnn.Linear(4, 4)), "'fc' is called twice"),
    (_Custom(_shared_value, fc=tnn.Linear(4, 4), fc2=tnn.Linear(4, 4)),
     "calls fc2 \\(traced node 'fc2'\\).*used twice"),
    (_Custom(lambda s, x: F.relu(x, inplace=True) + x), "calls relu.*in place"),
    (_Custom(lambda s, x: s.act(x) + x, act=tnn.ReLU(inplace=True)), "calls act.*in place"),
    (_Custom(lambda s, x: x.add_(s.fc(x)), fc=tnn.Linear(4, 4)), "calls add_.*in place"),
    (_Custom(_dead_code, fc=tnn.Linear(4, 4), fc2=tnn.Linear(4, 4)),
     "calls fc2.*does not reach the output"),
    (_Custom(lambda s, x: (x, s.fc(x)), fc=tnn.Linear(4, 4)), "returns tuple"),
    # global average pools that stay (N, C, 1, 1), or are not global
    (_Custom(lambda s, x: s.fc(F.adaptive_avg_pool2d(x, 1)), fc=tnn.Linear(4, 4)),
     "adaptive_avg_pool2d.*gives \\(N, C, 1, 1\\)"),
    (_Custom(lambda s, x: x.mean((2, 3), keepdim=True)), "call of mean.*\\(N, C, 1, 1\\)"),
    (_Custom(lambda s, x: x.mean(1)), "dim=1 is not supported"),
    (_Custom(lambda s, x: F.adaptive_avg_pool2d(x, 2).flatten(1)), "output_size=2"),
])
def test_custom_modules_that_are_not_chains_fail_naming_the_operation(module, message):
    with pytest.raises(ConversionError, match=message):
        from_torch(module)


def test_a_second_input_is_named():
    class TwoInputs(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc = tnn.Linear(4, 4)

        def forward(self, x, y):
            return self.fc(x)

    with pytest.raises(ConversionError, match="second input 'y'"):
        from_torch(TwoInputs())


# --- unsupported layers and options -----------------------------------------------------------

_shared_linear = tnn.Linear(2, 2)


@pytest.mark.parametrize("module, message", [
    (tnn.Sequential(tnn.Linear(4, 4), tnn.GELU()), "module '1' \\(GELU\\) is not supported"),
    (tnn.Sequential(tnn.Sequential(tnn.Linear(2, 2), tnn.Conv1d(1, 1, 1))),
     "module '0.1' \\(Conv1d\\)"),
    (tnn.Sequential(tnn.Conv2d(2, 2, 3, groups=2)), "'0' \\(Conv2d\\): groups=2"),
    (tnn.Conv2d(2, 2, 3, dilation=2), "the model \\(Conv2d\\): dilation=\\(2, 2\\)"),
    (tnn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (tnn.Conv2d(2, 2, 2, padding="same"), "padding='same'"),
    (tnn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True"),
    (tnn.MaxPool2d(3, padding=1), "padding=1"),
    (tnn.MaxPool2d(2, dilation=2), "dilation=2"),
    (tnn.AvgPool2d(2, ceil_mode=True), "\\(AvgPool2d\\): ceil_mode=True"),
    (tnn.AvgPool2d(3, padding=1), "\\(AvgPool2d\\): padding=1"),
    (tnn.AvgPool2d(3, padding=(0, 1)), "padding=\\(0, 1\\)"),
    (tnn.AvgPool2d(2, divisor_override=3), "divisor_override=3"),
    (tnn.BatchNorm2d(3, affine=False), "affine=False"),
    (tnn.BatchNorm1d(3, track_running_stats=False), "track_running_stats=False"),
    (tnn.BatchNorm1d(3, momentum=None), "momentum=None"),
    (tnn.Flatten(0), "start_dim=0"),
    (tnn.Flatten(1, 2), "end_dim=2"),
    (tnn.Softmax(dim=0), "dim=0"),
    (tnn.Linear(2, 2).half(), "dtype='float16'"),
    (tnn.Dropout(1.0), "\\(Dropout\\) cannot be converted"),
    (tnn.ModuleList([tnn.Linear(2, 2)]), "\\(ModuleList\\) is not supported"),
    (tnn.AdaptiveAvgPool2d((1, 2)), "output_size=\\(1, 2\\)"),
    (tnn.AdaptiveAvgPool2d(1), "the model \\(AdaptiveAvgPool2d\\) gives \\(N, C, 1, 1\\)"),
    (tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Linear(2, 2)),
     "module '0' \\(AdaptiveAvgPool2d\\).*when a Flatten"),
    (tnn.Sequential(*[_shared_linear] * 2), "module '1' \\(Linear\\) is module '0' again"),
])
def test_unsupported_torch_layers_and_options_are_named(module, message):
    with pytest.raises(ConversionError, match=message):
        from_torch(module)


def test_unsupported_nnscratch_layers_are_named():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(ConversionError, match="module '1.0' \\(Scale\\) has no PyTorch"):
        to_torch(nn.Sequential(nn.Linear(2, 2), nn.Sequential(Scale())))
    with pytest.raises(ConversionError, match="mixes float32.*float64"):
        to_torch(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, dtype=np.float64)))
    with pytest.raises(TypeError):
        to_torch(tnn.Linear(2, 2))
    with pytest.raises(TypeError):
        from_torch(nn.Linear(2, 2))


def test_without_torch_the_error_says_how_to_install(monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2))
    module = to_torch(model)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        to_torch(model)
    with pytest.raises(ImportError, match="pip install torch"):
        from_torch(module)
