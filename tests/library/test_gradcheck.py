"""nnscratch.gradcheck: small errors for correct gradients, large ones for wrong ones."""
import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _random


def _model():
    nn.seed(0)
    return nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Sigmoid(),
                         nn.Linear(4, 2, dtype=np.float64))


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)


def test_returns_one_small_error_per_parameter():
    X, y = _data()
    errors = nn.gradcheck(_model(), X, y, nn.CrossEntropyLoss())
    assert list(errors) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(e, float) and 0 <= e < 1e-6 for e in errors.values())


class _WrongReLU(nn.ReLU):
    """A ReLU whose backward forgets the mask: the kind of bug gradcheck is for."""

    def backward(self, grad_out, *, compute_grad_input=True):
        return np.array(grad_out, copy=True)


def test_detects_a_wrong_backward():
    nn.seed(1)
    model = nn.Sequential(nn.Linear(3, 6, dtype=np.float64), _WrongReLU(),
                          nn.Linear(6, 2, dtype=np.float64))
    X, y = _data()
    errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss())
    assert errors["0.weight"] > 1e-2
    assert errors["2.weight"] < 1e-6     # the layer after the bug is still right


def test_requires_float64_parameters():
    X, y = _data()
    with pytest.raises(ValueError, match="float64.*'0.weight' is float32"):
        nn.gradcheck(nn.Sequential(nn.Linear(3, 2)), X, y, nn.CrossEntropyLoss())


def test_leaves_gradients_parameters_mode_and_generator_as_found():
    model = _model().eval()
    X, y = _data()
    for p in model.parameters():
        p.grad[...] = 7.0
    weights = [p.data.copy() for p in model.parameters()]
    nn.seed(3)
    state = _random.get_state()
    nn.gradcheck(model, X, y, nn.CrossEntropyLoss())
    assert all((p.grad == 7.0).all() for p in model.parameters())
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_array_equal(p.data, w)
    assert not model.training
    assert _random.get_state() == state          # no dropout: the generator was not used


def test_input_gradient_and_custom_eps():
    X, y = _data()
    errors = nn.gradcheck(_model(), X, y, nn.CrossEntropyLoss(), eps=1e-5, check_input=True)
    assert errors["input"] < 1e-6


def test_dropout_in_training_mode_sees_one_mask():
    nn.seed(4)
    model = nn.Sequential(nn.Linear(3, 8, dtype=np.float64), nn.Dropout(0.5),
                          nn.Linear(8, 2, dtype=np.float64))
    X, y = _data()
    assert max(nn.gradcheck(model, X, y, nn.CrossEntropyLoss()).values()) < 1e-6
