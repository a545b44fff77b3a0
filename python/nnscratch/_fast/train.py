"""fit's training step on the fast path: the textbook step's result, with less work.

The textbook step (``nnscratch.training``) is::

    out = model(xb); value = loss(out, yb)
    model.zero_grad(); model.backward(loss.backward(), compute_grad_input=False)
    optimizer.step()

and this one computes the same numbers bit for bit, with four savings:

* the batch is gathered by the threads together into an array of the plan's buffer pool
  (``take_rows``), and the built-in losses write their gradient into one;
* ``zero_grad`` clears nothing: the backward pass *writes* the gradients it is the first to
  reach instead of adding them to zeros (``Run.zeroed``; the others are cleared after);
* the NaN/inf guard needs no pass of its own for the gradients that a chain of Linear
  layers checked as it wrote them, and checks the rest inside the optimizer's kernel call;
* `SGD`, `Adam` and `AdamW` update every parameter in one kernel call (``sgd_step`` /
  ``adam_step``: one parallel pass, each thread on the same rows every step) rather than a
  call per parameter.
"""
import math

from ..backend import kernels
from ..losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from ..optim import SGD, Adam, Optimizer
from .plan import Run, plan_of
from .pool import BufferPool

__all__ = ["TrainStep"]

# built-in losses whose forward is one kernel call: (class, kernel name)
_LOSS_KERNELS = ((CrossEntropyLoss, "softmax_cross_entropy"), (MSELoss, "mse"),
                 (BCEWithLogitsLoss, "bce_with_logits"))


_LOSS_METHODS = ("__call__", "forward", "backward", "_kernel", "_target", "_pred",
                 "_saved_grad")


def _loss_kernel(loss):
    """The kernel name of a built-in loss whose computation is its class's own (no method
    replaced by a subclass or the instance) and is the kernel alone (no label smoothing),
    else None: the step then calls the loss's forward and backward."""
    if getattr(loss, "label_smoothing", 0.0):
        return None
    for cls, name in _LOSS_KERNELS:
        if isinstance(loss, cls) and not (set(_LOSS_METHODS) & vars(loss).keys()) and all(
                getattr(type(loss), m, None) is getattr(cls, m, None) for m in _LOSS_METHODS):
            return name
    return None


class TrainStep:
    """One training step of `model` with `loss` and `optimizer` (see the module docstring).

    ``step(xb, yb)`` returns ``(out, value, bad)``: the model's output, the loss, and None --
    or, with `check_finite`, "loss" when the loss is NaN/inf (nothing updated) or the name of
    the first parameter whose gradient is (nothing updated).
    """

    def __init__(self, model, loss, optimizer, check_finite):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.check = check_finite
        # the batch and the loss's gradient: the plan's inputs, so not in the plan's own pool
        self.pool = BufferPool()
        self.loss_kernel = _loss_kernel(loss)
        named = list(model.named_parameters())
        self.params = [p for _, p in named]
        self.names = {p: name for name, p in named}
        self.fused = _fused_update(optimizer)
        optimized = set(optimizer.params) if isinstance(optimizer, Optimizer) else set()
        self.unoptimized = [(name, p) for name, p in named if p not in optimized]

    def gather(self, X, y, rows):
        """Rows `rows` of X and y, into pooled arrays (the threads copy X's together)."""
        m = len(rows)
        xb = self.pool.array(("xb", m), (m,) + X.shape[1:], X.dtype)
        yb = self.pool.array(("yb", m), (m,) + y.shape[1:], y.dtype)
        kernels().take_rows(X, rows, out=xb)
        y.take(rows, axis=0, out=yb, mode="clip")      # (rows are valid: no temporary)
        return xb, yb

    def __call__(self, xb, yb):
        plan = plan_of(self.model)
        out = plan.forward(xb, True)
        if self.loss_kernel is not None:
            grad = self.pool.array(("loss", out.shape, out.dtype), out.shape, out.dtype, (out,))
            value, grad = getattr(kernels(), self.loss_kernel)(out, yb, grad)
            value = float(value)
        else:
            value = self.loss(out, yb)
            grad = None
        if self.check and not math.isfinite(value):
            return out, value, "loss"
        # zeroed: every parameter's gradient reads as zero now -- zero_grad -- but none was
        # cleared; the backward pass writes those it reaches first, the rest are cleared after
        # (gradient arrays shared by two parameters are cleared now: both add into them)
        zeroed = set(self.params)
        grads = [id(p.grad) for p in self.params]
        if len(set(grads)) != len(grads):
            for p in self.params:
                if grads.count(id(p.grad)) > 1:
                    p.grad.fill(0)
                    zeroed.discard(p)
        run = Run(plan.pool, True, zeroed, {} if self.check else None)
        try:
            plan.backward(self.loss.backward() if grad is None else grad, False, run)
        except BaseException:
            for p in self.params:       # a failed pass leaves the gradients zeroed, as found
                p.grad.fill(0)
            raise
        for p in run.zeroed:            # parameters the backward pass did not reach
            p.grad.fill(0)
        return out, value, self._update(run.finite)

    def _update(self, finite):
        """The optimizer's step after the NaN/inf guard; the name of a bad parameter or None."""
        K = kernels()
        if self.check:
            for name, p in self.unoptimized:
                if not finite.get(p, False) and not K.all_finite(p.grad):
                    return self._first_bad(p)
        if self.fused is None:
            if self.check:
                for p in self.optimizer.params:
                    if not finite.get(p, False) and not K.all_finite(p.grad):
                        return self._first_bad(p)
            self.optimizer.step()
            return None
        bad = self.fused(self.optimizer, finite)
        return None if bad is None else self._first_bad(self.optimizer.params[bad])

    def _first_bad(self, found):
        """The name of the first parameter, in the model's order, whose gradient holds
        NaN/inf (the textbook step's answer; `found` is one of them)."""
        K = kernels()
        for p in self.params:
            if not K.all_finite(p.grad):
                return self.names[p]
        return self.names.get(found, "a parameter of the optimizer")


def _fused_update(optimizer):
    """The one-call update for an `SGD` / `Adam` / `AdamW` whose step is its class's own and
    whose parameters share one dtype, else None (then ``optimizer.step()`` runs)."""
    if not isinstance(optimizer, (SGD, Adam)) or len({p.dtype for p in optimizer.params}) != 1:
        return None
    if isinstance(optimizer, SGD) and type(optimizer).step is SGD.step:
        return _sgd_step
    if isinstance(optimizer, Adam) and type(optimizer).step is Adam.step:
        return _adam_step
    return None


def _check_flags(optimizer, finite):
    """(index of a parameter known to be bad or None, whether the kernel must check)."""
    if finite is None:
        return None, False
    flags = [finite.get(p) for p in optimizer.params]
    if False in flags:
        return flags.index(False), False
    return None, None in flags


def _sgd_step(opt, finite):
    bad, check = _check_flags(opt, finite)
    if bad is not None:
        return bad
    n = len(opt.params)
    velocities = [opt._state(i, "velocity") for i in range(n)] if opt.momentum else None
    bad = kernels().sgd_step([p.data for p in opt.params], [p.grad for p in opt.params],
                             velocities, opt.lr, momentum=opt.momentum,
                             weight_decay=opt.weight_decay, nesterov=opt.nesterov,
                             check_finite=check)
    return None if bad < 0 else bad


def _adam_step(opt, finite):
    steps = {entry.get("step", 0) for entry in opt.state}
    if len(steps) != 1:             # parameters at different step counts: one call each
        bad, check = _check_flags(opt, finite)
        if bad is not None:
            return bad
        if check:
            for i, p in enumerate(opt.params):
                if not finite.get(p, False) and not kernels().all_finite(p.grad):
                    return i
        opt.step()
        return None
    bad, check = _check_flags(opt, finite)
    if bad is not None:
        return bad
    n, t = len(opt.params), steps.pop() + 1
    beta1, beta2 = opt.betas
    bad = kernels().adam_step([p.data for p in opt.params], [p.grad for p in opt.params],
                              [opt._state(i, "m") for i in range(n)],
                              [opt._state(i, "v") for i in range(n)], t, opt.lr, beta1, beta2,
                              opt.eps, opt.weight_decay, decoupled=opt._decoupled,
                              check_finite=check)
    if bad >= 0:
        return bad
    for entry in opt.state:
        entry["step"] = t
    return None

