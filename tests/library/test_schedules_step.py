"""Schedules that step per batch: OneCycleLR and WarmupCosineLR against torch.optim, by hand,
in fit (one step per batch, on both backends and both paths) and in a user's own loop."""
import math
import warnings

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.schedules import OneCycleLR, WarmupCosineLR
from conftest import textbook

torch = pytest.importorskip("torch")
lr_scheduler = torch.optim.lr_scheduler

RTOL = 1e-12


def _param():
    return nn.Parameter(np.zeros(1))


def _pair(kind, lr=0.5):
    """The same optimizer in nnscratch and in torch (over one dummy parameter)."""
    tp = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return nn.SGD([_param()], lr=lr, momentum=0.9), torch.optim.SGD([tp], lr=lr, momentum=0.9)
    if kind == "adam":
        return nn.Adam([_param()], lr=lr), torch.optim.Adam([tp], lr=lr)
    return nn.AdamW([_param()], lr=lr), torch.optim.AdamW([tp], lr=lr)


def _momentum(opt):
    return opt.betas[0] if hasattr(opt, "betas") else opt.momentum


def _torch_momentum(opt):
    group = opt.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


def _run(ours, theirs, opt, opt_t, steps):
    """lr and momentum after creation and after each of `steps` steps, both libraries."""
    lrs, lrs_t = [opt.lr], [opt_t.param_groups[0]["lr"]]
    ms, ms_t = [_momentum(opt)], [_torch_momentum(opt_t)]
    for _ in range(steps):
        opt_t.step()                       # (torch warns when the schedule steps first)
        ours.step()
        theirs.step()
        lrs.append(opt.lr)
        lrs_t.append(opt_t.param_groups[0]["lr"])
        ms.append(_momentum(opt))
        ms_t.append(_torch_momentum(opt_t))
        assert ours.get_last_lr() == opt.lr
    return np.array(lrs), np.array(lrs_t), np.array(ms), np.array(ms_t)


ONE_CYCLE_CASES = [
    dict(max_lr=0.1, total_steps=100),
    dict(max_lr=0.3, epochs=4, steps_per_epoch=9, pct_start=0.25),
    dict(max_lr=0.05, total_steps=57, anneal_strategy="linear"),
    dict(max_lr=0.2, total_steps=80, three_phase=True),
    dict(max_lr=0.2, total_steps=31, three_phase=True, anneal_strategy="linear",
         div_factor=10.0, final_div_factor=100.0, base_momentum=0.8, max_momentum=0.9),
    dict(max_lr=1.0, total_steps=7, pct_start=0.5),
    dict(max_lr=0.1, total_steps=50, cycle_momentum=False),
]


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kwargs", ONE_CYCLE_CASES, ids=lambda kw: ",".join(map(str, kw.values())))
def test_one_cycle_equals_torch_step_by_step(kind, kwargs):
    opt, opt_t = _pair(kind)
    ours = OneCycleLR(opt, **kwargs)
    theirs = lr_scheduler.OneCycleLR(opt_t, **kwargs)
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    lrs, lrs_t, ms, ms_t = _run(ours, theirs, opt, opt_t, total)
    np.testing.assert_allclose(lrs, lrs_t, rtol=RTOL, atol=0)
    np.testing.assert_allclose(ms, ms_t, rtol=RTOL, atol=0)
    assert lrs[0] == pytest.approx(kwargs["max_lr"] / kwargs.get("div_factor", 25.0))
    assert kwargs["max_lr"] / 2 < lrs.max() <= kwargs["max_lr"]   # (the peak: maybe between steps)
    if kwargs.get("cycle_momentum", True):
        assert ms.min() < ms[0]              # the momentum did move, against the lr
    else:
        assert (ms == 0.9).all()             # SGD momentum and Adam beta1 both 0.9
    if hasattr(opt, "betas"):
        assert opt.betas[1] == 0.999         # beta2 is left alone


def test_one_cycle_by_hand_matches_the_formula():
    opt = nn.SGD([_param()], lr=123.0)       # OneCycleLR ignores the optimizer's lr
    s = OneCycleLR(opt, max_lr=1.0, total_steps=11, pct_start=0.5, div_factor=4.0,
                   final_div_factor=2.0, anneal_strategy="linear")
    # rise over steps 0..4.5 from 0.25 to 1, fall over 4.5..10 from 1 to 0.125
    assert opt.lr == 0.25 and opt.momentum == 0.95 and s.base_lr == 0.25
    assert s.get_lr(4) == pytest.approx(0.25 + 0.75 * 4 / 4.5)
    assert s.get_lr(10) == pytest.approx(0.125)
    assert s.get_momentum(10) == pytest.approx(0.95)
    assert s.interval == "batch"


def test_one_cycle_refuses_a_step_past_total_steps_and_keeps_its_state():
    opt = nn.SGD([_param()], lr=0.1, momentum=0.9)
    s = OneCycleLR(opt, max_lr=0.1, total_steps=5)
    for _ in range(5):
        s.step()
    lr, momentum = opt.lr, opt.momentum
    with pytest.raises(ValueError, match=r"stepped 6 times, beyond total_steps=5.*ceil"):
        s.step()
    assert (s.last_epoch, opt.lr, opt.momentum) == (5, lr, momentum)


def test_one_cycle_phase_of_zero_steps_counts_as_done():
    # pct_start * total_steps == 1: torch divides 0 by 0 at step 0; here the rise is done
    opt = nn.SGD([_param()], lr=0.1)
    s = OneCycleLR(opt, max_lr=0.4, total_steps=10, pct_start=0.1)
    assert opt.lr == 0.4 and s.get_lr(1) < 0.4
    s = OneCycleLR(opt, max_lr=0.4, total_steps=10, pct_start=1.0)
    assert s.get_lr(9) == pytest.approx(0.4) and s.get_lr(10) == pytest.approx(0.4 / 25 / 1e4)


class _PlainOptimizer:
    def __init__(self):
        self.lr = 0.1

    def step(self):
        pass


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_lr=0.1), ValueError, "total_steps, or epochs and steps_per_epoch"),
    (dict(max_lr=0.1, epochs=3), ValueError, "total_steps, or epochs and steps_per_epoch"),
    (dict(max_lr=0.1, total_steps=0), ValueError, "total_steps"),
    (dict(max_lr=0.1, total_steps=2.5), TypeError, "total_steps"),
    (dict(max_lr=0.1, epochs=0, steps_per_epoch=3), ValueError, "epochs"),
    (dict(max_lr=0.1, epochs=2, steps_per_epoch=-1), ValueError, "steps_per_epoch"),
    (dict(max_lr=0.1, total_steps=10, epochs=2, steps_per_epoch=4), ValueError, "disagrees"),
    (dict(max_lr=0.0, total_steps=10), ValueError, "max_lr"),
    (dict(max_lr=float("nan"), total_steps=10), ValueError, "max_lr"),
    (dict(max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (dict(max_lr=0.1, total_steps=10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (dict(max_lr=0.1, total_steps=10, div_factor=0), ValueError, "div_factor"),
    (dict(max_lr=0.1, total_steps=10, final_div_factor=-1), ValueError, "final_div_factor"),
    (dict(max_lr=0.1, total_steps=10, max_momentum=1.0), ValueError, "max_momentum"),
    (dict(max_lr=0.1, total_steps=10, base_momentum=-0.1), ValueError, "base_momentum"),
    (dict(max_lr=0.1, total_steps=10, three_phase="yes"), TypeError, "three_phase"),
    (dict(max_lr=0.1, total_steps=10, interval="step"), ValueError, "interval"),
])
def test_one_cycle_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        OneCycleLR(nn.SGD([_param()], lr=0.1), **kwargs)


def test_one_cycle_without_momentum_needs_cycle_momentum_false():
    opt = _PlainOptimizer()
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        OneCycleLR(opt, max_lr=0.1, total_steps=10)
    s = OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)
    s.step()
    assert opt.lr == s.get_lr(1) and not hasattr(opt, "momentum")
    assert s.get_momentum(1) is None


WARMUP_CASES = [(10, 100, 0.1, 0.0), (5, 50, 1 / 3, 1e-3), (200, 1000, 1e-3, 1e-5),
                (1, 2, 0.5, 0.0), (3, 4, 1.0, 0.01)]


@pytest.mark.parametrize("warmup, total, start_factor, eta_min", WARMUP_CASES)
def test_warmup_cosine_equals_torch_sequential_lr(warmup, total, start_factor, eta_min):
    opt, opt_t = _pair("sgd", lr=0.3)
    ours = WarmupCosineLR(opt, warmup, total, start_factor=start_factor, eta_min=eta_min)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # (SequentialLR's deprecation chatter, if any)
        theirs = lr_scheduler.SequentialLR(opt_t, [
            lr_scheduler.LinearLR(opt_t, start_factor, 1.0, total_iters=warmup),
            lr_scheduler.CosineAnnealingLR(opt_t, T_max=total - warmup, eta_min=eta_min),
        ], milestones=[warmup])
        lrs, lrs_t, ms, ms_t = _run(ours, theirs, opt, opt_t, total)
    np.testing.assert_allclose(lrs, lrs_t, rtol=RTOL, atol=0)
    assert (ms == 0.9).all()                # no momentum cycling here
    assert lrs[warmup] == pytest.approx(0.3, rel=1e-15) and lrs[-1] == pytest.approx(eta_min)


def test_warmup_cosine_without_warmup_equals_torch_cosine():
    opt, opt_t = _pair("adam", lr=0.01)
    ours = WarmupCosineLR(opt, 0, 40, eta_min=1e-4)
    theirs = lr_scheduler.CosineAnnealingLR(opt_t, T_max=40, eta_min=1e-4)
    lrs, lrs_t, _, _ = _run(ours, theirs, opt, opt_t, 40)
    np.testing.assert_allclose(lrs, lrs_t, rtol=RTOL, atol=0)


def test_warmup_cosine_from_zero_by_hand():
    opt = nn.SGD([_param()], lr=0.8)
    s = WarmupCosineLR(opt, warmup_steps=4, total_steps=12)   # start_factor=0 by default
    assert opt.lr == 0.0 and s.base_lr == 0.8 and s.interval == "batch"
    lrs = [opt.lr]
    for _ in range(14):
        s.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs[:5], [0.0, 0.2, 0.4, 0.6, 0.8], rtol=1e-15)
    assert lrs[8] == pytest.approx(0.4)               # half way down the cosine
    assert lrs[12:] == [0.0, 0.0, 0.0]                # at eta_min from total_steps on


@pytest.mark.parametrize("args, error, message", [
    ((-1, 10), ValueError, "warmup_steps"),
    ((10, 10), ValueError, "total_steps must be greater than warmup_steps"),
    ((0, 0), ValueError, "total_steps"),
    ((1.5, 10), TypeError, "warmup_steps"),
    ((2, 10, -0.1), ValueError, "start_factor"),
    ((2, 10, 1.5), ValueError, "start_factor"),
    ((2, 10, 0.0, -1.0), ValueError, "eta_min"),
])
def test_warmup_cosine_arguments_are_checked(args, error, message):
    with pytest.raises(error, match=message):
        WarmupCosineLR(nn.SGD([_param()], lr=0.1), *args)


def test_state_dict_resumes_the_schedule():
    opt = nn.SGD([_param()], lr=0.1, momentum=0.9)
    s = OneCycleLR(opt, max_lr=0.1, total_steps=20)
    for _ in range(7):
        s.step()
    saved = s.state_dict()
    rest = []
    for _ in range(13):
        s.step()
        rest.append((opt.lr, opt.momentum))

    opt2 = nn.SGD([_param()], lr=0.1, momentum=0.9)
    s2 = OneCycleLR(opt2, max_lr=0.1, total_steps=20)
    s2.load_state_dict(saved)
    assert (opt2.lr, opt2.momentum) == (s.get_lr(7), s.get_momentum(7))
    rest2 = []
    for _ in range(13):
        s2.step()
        rest2.append((opt2.lr, opt2.momentum))
    assert rest2 == rest


# ------------------------------------------------------------------------------------------
# in fit: one step per batch, the lr read by every optimizer step
# ------------------------------------------------------------------------------------------

def _data(n=50, d=6, classes=3):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, n)


def _model():
    nn.seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


class _LrSeen(nn.Callback):
    """Records the optimizer's lr and momentum of every batch's step (listed before the
    schedule, it sees them before the schedule moves them)."""

    def __init__(self, optimizer):
        self.optimizer, self.seen = optimizer, []

    def on_batch_end(self, batch, logs=None):
        self.seen.append((self.optimizer.lr, _momentum(self.optimizer)))


@pytest.fixture(params=["cython", "cython-textbook", "numpy"])
def path(request):
    before = nn.get_backend()
    nn.set_backend(request.param.split("-")[0])
    if request.param.endswith("textbook"):
        with textbook():
            yield request.param
    else:
        yield request.param
    nn.set_backend(before)


@pytest.mark.parametrize("make", [
    lambda opt, total: OneCycleLR(opt, max_lr=0.2, total_steps=total),
    lambda opt, total: WarmupCosineLR(opt, warmup_steps=5, total_steps=total, eta_min=1e-3),
], ids=["OneCycleLR", "WarmupCosineLR"])
def test_fit_steps_the_schedule_once_per_batch_as_a_users_loop_does(path, make):
    X, y = _data()
    epochs, batch_size = 3, 16
    total = epochs * math.ceil(len(X) / batch_size)            # 3 * 4 = 12 steps

    model = _model()
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = make(opt, total)
    seen = _LrSeen(opt)
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=epochs,
              batch_size=batch_size, shuffle=False, progress=False, callbacks=[seen, schedule])
    assert schedule.last_epoch == total
    # every step used the schedule's value for that step: lr(0), lr(1), ..., lr(total - 1)
    expected_lr = [schedule.get_lr(t) for t in range(total)]
    assert [lr for lr, _ in seen.seen] == expected_lr
    if isinstance(schedule, OneCycleLR):
        assert [m for _, m in seen.seen] == [schedule.get_momentum(t) for t in range(total)]

    # the same training by hand, PyTorch style: scheduler.step() after optimizer.step()
    manual = _model()
    opt2 = nn.SGD(manual.parameters(), lr=0.1, momentum=0.9)
    schedule2 = make(opt2, total)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            xb, yb = X[start:start + batch_size], y[start:start + batch_size]
            loss_fn(manual(xb), yb)
            manual.zero_grad()
            manual.backward(loss_fn.backward())
            opt2.step()
            schedule2.step()
    for (name, p), (_, q) in zip(model.named_parameters(), manual.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7, err_msg=name)
    assert (opt2.lr, opt2.momentum) == (opt.lr, opt.momentum)


def test_fit_epoch_and_batch_intervals():
    X, y = _data()
    model = _model()
    opt = nn.SGD(model.parameters(), lr=0.1)
    per_batch = nn.StepLR(opt, step_size=3, gamma=0.5, interval="batch")
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=2, batch_size=10,
              progress=False, callbacks=[per_batch])
    assert per_batch.last_epoch == 10 and opt.lr == pytest.approx(0.1 * 0.5 ** 3)

    opt = nn.SGD(model.parameters(), lr=0.1)
    per_epoch = WarmupCosineLR(opt, warmup_steps=2, total_steps=4, interval="epoch")
    default = nn.CosineAnnealingLR(nn.SGD(model.parameters(), lr=0.1), T_max=3)
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=3, batch_size=10,
              progress=False, callbacks=[per_epoch, default])
    assert per_epoch.last_epoch == 3 and opt.lr == per_epoch.get_lr(3)
    assert default.interval == "epoch" and default.last_epoch == 3


def test_fit_reports_a_one_cycle_too_short_for_the_run():
    X, y = _data()
    model = _model()
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = OneCycleLR(opt, max_lr=0.1, epochs=2, steps_per_epoch=4)   # 5 batches an epoch
    with pytest.raises(ValueError, match="beyond total_steps=8"):
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=2, batch_size=10,
                  progress=False, callbacks=[schedule])
