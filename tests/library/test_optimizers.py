"""Optimizers and learning-rate schedules: hand computations, torch.optim, validation."""
import math

import numpy as np
import pytest

import nnscratch as nn


def _param(values, grad):
    p = nn.Parameter(np.asarray(values, dtype=np.float64))
    p.grad[...] = grad
    return p


W0 = np.array([[0.5, -1.0], [2.0, 0.25]])
G = np.array([[0.1, -0.2], [0.3, 0.4]])


def test_sgd_step_equals_hand_computation():
    p = _param(W0, G)
    nn.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, W0 - 0.1 * G, rtol=1e-15)


def test_sgd_momentum_nesterov_weight_decay_equal_hand_computation():
    lr, mu, wd = 0.1, 0.9, 0.01
    for nesterov in (False, True):
        p = _param(W0, G)
        opt = nn.SGD([p], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
        w, v = W0.copy(), np.zeros_like(W0)
        for _ in range(3):
            opt.step()
            d = G + wd * w
            v = mu * v + d
            w = w - lr * (d + mu * v if nesterov else v)
            np.testing.assert_allclose(p.data, w, rtol=1e-14)
        np.testing.assert_allclose(opt.state[0]["velocity"], v, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_adam_steps_equal_hand_computation(decoupled):
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.95, 1e-6, 0.1
    p = _param(W0, G)
    cls = nn.AdamW if decoupled else nn.Adam
    opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    w, m, v = W0.copy(), np.zeros_like(W0), np.zeros_like(W0)
    for t in range(1, 4):
        opt.step()
        if decoupled:
            w = w * (1 - lr * wd)
            g = G
        else:
            g = G + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        np.testing.assert_allclose(p.data, w, rtol=1e-13)
    assert opt.state[0]["step"] == 3


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
])
def test_steps_equal_torch_optim(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(5)]
    ours = nn.Parameter(w0)
    theirs = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = getattr(nn, name)([ours], **kwargs)
    opt_t = getattr(torch.optim, name)([theirs], **kwargs)
    for g in grads:
        ours.grad[...] = g
        theirs.grad = torch.from_numpy(g.copy())
        opt.step()
        opt_t.step()
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_parameters_are_updated_in_float32():
    p = nn.Parameter(W0.astype(np.float32))
    p.grad[...] = G
    nn.Adam([p], lr=0.1).step()
    assert p.data.dtype == np.float32
    assert not np.allclose(p.data, W0)


def test_lr_is_a_plain_attribute_read_at_each_step():
    p = _param(W0, G)
    opt = nn.SGD([p], lr=0.1)
    opt.lr = 0.0
    opt.step()
    np.testing.assert_array_equal(p.data, W0)
    opt.lr = 1.0
    opt.step()
    np.testing.assert_allclose(p.data, W0 - G)


def test_zero_grad_clears_the_optimized_gradients():
    p = _param(W0, G)
    opt = nn.SGD([p], lr=0.1)
    opt.zero_grad()
    assert not p.grad.any()


@pytest.mark.parametrize("make, message", [
    (lambda ps: nn.SGD(ps, lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda ps: nn.SGD(ps, lr=float("nan")), "Invalid learning rate"),
    (lambda ps: nn.SGD(ps, lr=0.1, momentum=-1), "Invalid momentum value: -1"),
    (lambda ps: nn.SGD(ps, lr=0.1, weight_decay=-1e-3), "Invalid weight_decay value"),
    (lambda ps: nn.SGD(ps, lr=0.1, nesterov=True), "Nesterov"),
    (lambda ps: nn.Adam(ps, lr=-1), "Invalid learning rate: -1"),
    (lambda ps: nn.Adam(ps, betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (lambda ps: nn.Adam(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (lambda ps: nn.Adam(ps, betas=0.9), "Invalid betas"),
    (lambda ps: nn.Adam(ps, eps=-1e-8), "Invalid epsilon value"),
    (lambda ps: nn.AdamW(ps, weight_decay=-0.5), "Invalid weight_decay value"),
    (lambda ps: nn.SGD([], lr=0.1), "empty parameter list"),
    (lambda ps: nn.SGD(ps + ps, lr=0.1), "more than once"),
])
def test_constructors_validate_eagerly(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(np.zeros(2))])


def test_params_must_be_parameters():
    with pytest.raises(TypeError, match="Parameter"):
        nn.SGD([np.zeros(3)], lr=0.1)
    opt = nn.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.5)
    assert repr(opt) == "SGD(lr=0.1, momentum=0.5, nesterov=False, weight_decay=0)"
    assert nn.AdamW(nn.Linear(2, 2).parameters()).weight_decay == 1e-2


def _optimizer(lr=1.0):
    return nn.SGD([nn.Parameter(np.zeros(1))], lr=lr)


def test_step_lr_schedule():
    opt = _optimizer(0.5)
    schedule = nn.StepLR(opt, step_size=2, gamma=0.1)
    lrs = []
    for _ in range(5):
        schedule.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.5, 0.05, 0.05, 0.005, 0.005])
    assert schedule.get_last_lr() == opt.lr
    with pytest.raises(ValueError, match="step_size"):
        nn.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        nn.StepLR(opt, step_size=1, gamma=-1.0)


def test_cosine_schedule():
    opt = _optimizer(1.0)
    schedule = nn.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    lrs = []
    for _ in range(4):
        schedule.step()
        lrs.append(opt.lr)
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(1, 5)]
    np.testing.assert_allclose(lrs, expected)
    assert lrs[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="T_max"):
        nn.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError, match="lr"):
        nn.StepLR(object(), step_size=1)


@pytest.mark.parametrize("ours, theirs, kwargs", [
    ("StepLR", "StepLR", dict(step_size=3, gamma=0.5)),
    ("CosineAnnealingLR", "CosineAnnealingLR", dict(T_max=7, eta_min=1e-3)),
])
def test_schedules_equal_torch(ours, theirs, kwargs):
    torch = pytest.importorskip("torch")
    opt = _optimizer(0.1)
    opt_t = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = getattr(nn, ours)(opt, **kwargs)
    schedule_t = getattr(torch.optim.lr_scheduler, theirs)(opt_t, **kwargs)
    for _ in range(10):
        opt_t.step()
        schedule.step()
        schedule_t.step()
        assert opt.lr == pytest.approx(schedule_t.get_last_lr()[0], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("make", [
    lambda ps: nn.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: nn.Adam(ps, lr=0.01),
], ids=["SGD", "Adam"])
def test_state_dict_round_trip_continues_identically(make):
    straight = _param(W0, G)
    opt = make([straight])
    opt.step()
    saved, weights = opt.state_dict(), straight.data.copy()
    opt.step()
    opt.step()                                  # the saved copy does not move with these

    resumed = _param(weights, G)
    opt2 = make([resumed])
    opt2.load_state_dict(saved)
    opt2.step()
    opt2.step()
    np.testing.assert_array_equal(resumed.data, straight.data)
    with pytest.raises(ValueError, match="state for 1 parameters, this optimizer has 2"):
        make([_param(W0, G), _param(W0, G)]).load_state_dict(saved)


def test_fit_runs_a_subclass_step_and_a_duck_typed_optimizer():
    # fit's fused check-and-update must not bypass a subclass's own step(), nor need more
    # than a step() from an optimizer that is not an nnscratch.Optimizer
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    calls = []

    class Counting(nn.SGD):
        def step(self):
            calls.append(1)
            super().step()

    class CountingAdam(nn.Adam):
        def step(self):
            calls.append(2)
            super().step()

    for cls in (Counting, CountingAdam):
        model = nn.Sequential(nn.Linear(5, 3))
        model.fit(X, y, loss="cross_entropy", optimizer=cls(model.parameters(), lr=0.1),
                  epochs=1, batch_size=16, progress=False)
    assert calls == [1] * 4 + [2] * 4

    class Plain:                      # duck-typed: a step() and nothing else
        def __init__(self, params):
            self.params = list(params)

        def step(self):
            calls.append(3)
            for p in self.params:
                p.data -= 0.1 * p.grad

    model = nn.Sequential(nn.Linear(5, 3))
    model.fit(X, y, loss="cross_entropy", optimizer=Plain(model.parameters()), epochs=1,
              batch_size=32, progress=False)
    assert calls[-2:] == [3, 3]
    # and a misaligned (but contiguous) X is accepted, as before the gather kernel
    buf = np.zeros(64 * 5 * 4 + 2, np.uint8)
    Xm = np.frombuffer(buf, np.float32, count=64 * 5, offset=2).reshape(64, 5)
    assert not Xm.flags.aligned
    model.fit(Xm, y, loss="cross_entropy", optimizer=nn.SGD(model.parameters(), lr=0.1),
              epochs=1, batch_size=32, progress=False)
