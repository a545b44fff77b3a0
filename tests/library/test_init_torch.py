"""init="torch": PyTorch's default initialisation of Linear and Conv2d (weight and bias
U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn from the library generator. The distribution is
checked against torch's own formulas and fan_in; the numbers cannot be equal (other
generators)."""
import math

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import init as nn_init

torch = pytest.importorskip("torch")


def _torch_bounds(torch_layer):
    """(weight bound, bias bound) as torch's reset_parameters computes them."""
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch_layer.weight)
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    return math.sqrt(3.0) * gain / math.sqrt(fan_in), 1 / math.sqrt(fan_in)


def _check_uniform(values, bound, name):
    """values look like U(-bound, bound): inside it, reaching near both ends, variance
    bound**2 / 3, half of them inside +-bound/2 (bounds ~6 standard errors wide)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    assert np.abs(v).max() <= bound, name
    assert v.max() > bound * (1 - 30 / n) and v.min() < -bound * (1 - 30 / n), name
    assert abs(v.mean()) < 6 * bound / math.sqrt(3 * n), name
    var = bound ** 2 / 3
    assert abs(v.var() / var - 1) < 6 * math.sqrt(0.8 / n), name     # var(u^2)/var^2 = 0.8
    assert abs(np.mean(np.abs(v) < bound / 2) - 0.5) < 6 * 0.5 / math.sqrt(n), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch_fan_in_and_bounds(dtype):
    # in_features != out_features: a fan_in taken from the wrong axis of nnscratch's
    # (in, out) layout would give another bound
    nn.seed(0)
    torch.manual_seed(0)
    layer = nn.Linear(400, 150, dtype=dtype, init="torch")
    theirs = torch.nn.Linear(400, 150)
    w_bound, b_bound = _torch_bounds(theirs)
    assert w_bound == pytest.approx(1 / math.sqrt(400), rel=1e-15)
    assert layer.weight.shape == (400, 150) and layer.weight.dtype == dtype
    _check_uniform(layer.weight.data, w_bound, "weight")
    _check_uniform(theirs.weight.detach().numpy(), w_bound, "torch's weight")  # the test's model
    assert layer.bias.dtype == dtype and np.abs(layer.bias.data).max() <= b_bound
    # 150 biases: loosely U(-b, b)
    assert layer.bias.data.std() == pytest.approx(b_bound / math.sqrt(3), rel=0.25)


@pytest.mark.parametrize("kernel_size", [3, (5, 2)])
def test_conv2d_matches_torch_fan_in_and_bounds(kernel_size):
    nn.seed(1)
    torch.manual_seed(1)
    layer = nn.Conv2d(24, 40, kernel_size, init="torch")
    theirs = torch.nn.Conv2d(24, 40, kernel_size)
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)
    assert fan_in == 24 * kh * kw
    w_bound, b_bound = _torch_bounds(theirs)
    assert layer.weight.shape == tuple(theirs.weight.shape)
    _check_uniform(layer.weight.data, w_bound, "weight")
    _check_uniform(theirs.weight.detach().numpy(), w_bound, "torch's weight")
    assert np.abs(layer.bias.data).max() <= b_bound
    assert layer.bias.data.std() == pytest.approx(b_bound / math.sqrt(3), rel=0.35)


def test_draws_come_from_the_library_generator_weight_then_bias():
    nn.seed(7)
    linear = nn.Linear(30, 20, dtype=np.float64, init="torch")
    conv = nn.Conv2d(3, 5, (2, 3), dtype=np.float64, init="torch")
    nn.seed(7)
    gen = nn._random.generator()
    w_bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(30))
    np.testing.assert_array_equal(linear.weight.data, gen.uniform(-w_bound, w_bound, (30, 20)))
    np.testing.assert_array_equal(linear.bias.data,
                                  gen.uniform(-1 / math.sqrt(30), 1 / math.sqrt(30), 20))
    fan_in = 3 * 2 * 3
    w_bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(fan_in))
    np.testing.assert_array_equal(conv.weight.data, gen.uniform(-w_bound, w_bound, (5, 3, 2, 3)))
    np.testing.assert_array_equal(conv.bias.data,
                                  gen.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), 5))
    # the same seed, the same layers, bit for bit
    nn.seed(7)
    again = nn.Linear(30, 20, dtype=np.float64, init="torch")
    np.testing.assert_array_equal(again.weight.data, linear.weight.data)
    np.testing.assert_array_equal(again.bias.data, linear.bias.data)


def test_without_bias_and_the_default_init_unchanged():
    nn.seed(3)
    layer = nn.Linear(10, 4, bias=False, init="torch")
    assert layer.bias is None and layer.get_config()["init"] == "torch"
    # the default ("he") draws only the weight: N(0, 2 / fan_in), bias zero
    nn.seed(3)
    linear, conv = nn.Linear(10, 4), nn.Conv2d(2, 3, 3)
    nn.seed(3)
    gen = nn._random.generator()
    np.testing.assert_array_equal(
        linear.weight.data, gen.normal(0.0, math.sqrt(2.0 / 10), (10, 4)).astype(np.float32))
    np.testing.assert_array_equal(
        conv.weight.data, gen.normal(0.0, math.sqrt(2.0 / 18), (3, 2, 3, 3)).astype(np.float32))
    assert not linear.bias.data.any() and not conv.bias.data.any()
    assert linear.init == conv.init == "he"


def test_unknown_init_names_torch_and_save_load_keeps_it(tmp_path):
    with pytest.raises(ValueError, match="'torch'"):
        nn.Linear(3, 2, init="pytorch")
    assert sorted(nn_init.INITS) == ["he", "he_uniform", "torch", "xavier", "xavier_normal"]
    nn.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, init="torch"), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3, init="torch"))
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    assert [m.init for m in (loaded[0], loaded[2])] == ["torch", "torch"]
    for p, q in zip(model.parameters(), loaded.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
