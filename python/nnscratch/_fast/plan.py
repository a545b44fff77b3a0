"""Plans: how a `Sequential` runs on the fast path.

A plan is made from the tree of modules the first time a model runs on the compiled kernels
and kept on the model; it is made again when a container's list of modules changed (checked
at every call: the children's identities). It walks into containers that
only run their modules in order (a `Sequential` inside a `Sequential`) and turns the
modules, in order, into steps (``steps.py``):

* a `Linear` directly followed by a `ReLU` is one step (the ReLU in the GEMM's write-back);
* two or more such Linear steps whose features follow on are one chain step (one kernel
  call for all of them, each way);
* a `ReLU` directly followed by a `MaxPool2d` runs after the pool (on fewer values);
* `Conv2d`, `MaxPool2d`, `AvgPool2d`, `GlobalAvgPool2d`, batch norm, the activations,
  `Dropout` and `Flatten` are one step each; an `Identity` is no step;
* a `Residual` is one step holding the steps of its two branches, made by the same rules
  (its body and shortcut walked into as containers), the sum into a kept array -- with the
  `ReLU` after it, when there is one, in the same pass; and when the step before it is a
  ReLU (or a residual step with its ReLU), the gradient sum at its input goes through that
  ReLU's mask in one pass (as a convolution after a ReLU in place writes its input
  gradient through the mask);
* any other module -- a user's layer or block, or a subclass that changes a layer's
  computation -- is a step that calls its own ``forward`` / ``backward`` / ``infer`` (a
  `Sequential` inside such a block makes its own plan when the block calls it).

Only the layers' classes decide: a layer is planned as its class when the class keeps that
class's ``forward``, ``backward`` and ``infer``, and the module holds none of them as an
instance attribute. A module with hooks holds its hooked forward, infer and backward so
(``nnscratch.module``): the plan computes it as a user's layer, by its own methods -- which
run its hooks -- and a chain is split around it (the same bits: each step makes the layer's
own kernel calls). A plan is made again when a module gets its first hook or loses its last
(`hook_changes`), so that removing the hooks gives the fused steps back.
"""
from __future__ import annotations

from operator import is_
from typing import Any

import numpy as np

from ..conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from ..layers import Dropout, Flatten, Identity, Linear, ReLU, Residual, _Activation
from ..module import hook_changes, repeated_modules
from ..norm import _BatchNorm
from .pool import BufferPool
from .steps import (ActivationStep, AvgPoolStep, BatchNormStep, ChainStep, ConvStep,
                    DropoutStep, FlattenStep, LinearStep, ModuleStep, PoolStep, ResidualStep)

__all__ = ["Plan", "Run", "plan_of", "replan", "inline", "plannable", "step_modules"]

# classes whose forward runs their sub-modules in order and nothing else: walked into
_INLINED: list[type] = []


def inline(cls):
    """Plan the modules of a `cls` (e.g. `Sequential`) as if they stood in its place."""
    _INLINED.append(cls)
    return cls


def plannable(model):
    """True when `model`'s own class is walked into (a plan can run it)."""
    return any(_keeps_methods(model, cls) for cls in _INLINED)


# the methods a step stands in for: a module whose class replaced one of them (or that
# holds one as an instance attribute) is not planned as its class. (The helpers a step calls
# -- _input, _check, _grad_of, _f, ... -- are the layer's own, overridden or not.)
_METHODS = ("forward", "backward", "infer", "__call__")
# a chain reads a Linear's input and bias itself: only for layers that keep Linear's
_CHAIN_METHODS = ("_input", "_check", "_bias")


def _keeps_methods(module, cls, names=_METHODS):
    """`module` is a `cls` computed by cls's own `names` methods."""
    kind = type(module)
    return (isinstance(module, cls)
            and all(getattr(kind, name, None) is getattr(cls, name, None) for name in names)
            and not (set(names) & module.__dict__.keys()))


def _is_relu(module):
    """A ReLU whose every method is ReLU's (a fused step computes it without calling them)."""
    return module is not None and _keeps_methods(
        module, ReLU, _METHODS + ("_input", "_check", "_grad_of", "_f", "_df"))


class Run:
    """What the steps of one pass are told.

    pool
        The plan's `BufferPool`.
    pooled
        Write outputs into the pool (training mode) rather than into fresh arrays.
    zeroed
        None, or the set of parameters whose gradient is to be read as zero but was not
        yet cleared (fit's step: ``zero_grad`` then ``backward``). A step that writes such a
        gradient overwrites it (`accumulate` answers False) instead of adding to it.
    finite
        None, or a dict in which steps whose kernel checks the gradients it writes record
        ``{parameter: all finite}`` (fit's NaN/inf guard then skips them).
    busy
        The gradients that enclosing steps (a `Residual`'s) will read again later in the
        backward pass: no step writes its gradient over them.
    masked
        None, or the gradient a step just returned already taken through the ReLU of the
        step below it (a `ResidualStep`'s or a `ConvStep`'s `below`: a ReLU's
        `ActivationStep`, or a `ResidualStep` with its ReLU): that step passes it on as it
        is.
    """

    __slots__ = ("pool", "pooled", "zeroed", "finite", "busy", "masked")

    def __init__(self, pool, pooled, zeroed=None, finite=None):
        self.pool, self.pooled, self.zeroed, self.finite = pool, pooled, zeroed, finite
        self.busy: list[Any] = []   # gradients an enclosing step has yet to read again
        self.masked: Any = None

    def take_masked(self, g):
        """True when `g` is `masked` -- the step above already took it through this step's
        ReLU, so the ReLU's backward is done -- which is then forgotten."""
        if g is not self.masked:
            return False
        self.masked = None
        return True

    def accumulate(self, weight, bias=None):
        """False when `weight` and `bias` (unless None) are both in `zeroed`: the kernel
        then writes their gradients (taken out of `zeroed`). Otherwise the zeroed one is
        cleared and True is returned: the kernel adds."""
        zeroed = self.zeroed
        if not zeroed:
            return True
        if weight in zeroed and (bias is None or bias in zeroed):
            zeroed.discard(weight)
            zeroed.discard(bias)
            return False
        self.materialize(weight, bias)
        return True

    def materialize(self, *params):
        """Clear the gradients of those of `params` that are in `zeroed`, now."""
        zeroed = self.zeroed
        if zeroed:
            for p in params:
                if p is not None and p in zeroed:
                    p.grad.fill(0)
                    zeroed.discard(p)


class Plan:
    """The steps of a model, the containers they came from, and the buffer pool."""

    __slots__ = ("steps", "containers", "repeated", "pool", "train_run", "eval_run", "top",
                 "hooks")

    def __init__(self, model):
        self.hooks = hook_changes.count     # (hooks put on or taken off since: made again)
        self.containers: list[Any] = []
        modules: list[Any] = []
        self._walk(model, modules)
        # the model's own registry and children, and whether there are nested containers
        # too: what `_fast.forward` checks inline
        self.top = self.containers[0] + (len(self.containers) > 1,)
        self.steps = _steps(modules)
        self.repeated = repeated_modules(model)
        # (a few arrays per step and batch shape: room for two batch shapes, e.g. an epoch's
        # last, smaller batch, without starting again)
        self.pool = BufferPool(limit=max(256, 16 * len(self.steps)))
        self.train_run, self.eval_run = Run(self.pool, True), Run(self.pool, False)

    def _walk(self, container, modules):
        children = tuple(container._modules.values())
        self.containers.append((container._modules, children))
        for child in children:
            self._add(child, modules)

    def _add(self, child, modules):
        if child is None or isinstance(child, Identity) and _keeps_methods(child, Identity):
            return
        if any(_keeps_methods(child, cls) for cls in _INLINED):
            self._walk(child, modules)
        elif _keeps_methods(child, Residual):
            # its two branches, each walked as a container of its own (a module swapped in
            # for its body or shortcut makes the plan again, as in any container)
            self.containers.append((child._modules, tuple(child._modules.values())))
            body: list[Any] = []
            shortcut: list[Any] = []
            self._add(child.body, body)
            self._add(child.shortcut, shortcut)
            modules.append(_Branches(child, body, shortcut))
        else:
            modules.append(child)

    def valid(self):
        """True while no container's list of modules has changed, and no module got its
        first hook or lost its last, since the plan was made."""
        if self.hooks != hook_changes.count:
            return False
        for modules, children in self.containers:
            # by identity (a module's own __eq__ is never asked)
            if len(modules) != len(children) or not all(map(is_, modules.values(), children)):
                return False
        return True

    def forward(self, x, training):
        """The model's output; in training mode into pooled arrays (overwritten by the next
        call with the same batch shape), in eval mode fresh ones."""
        if training and self.repeated:
            raise ValueError(self.repeated)
        if training and self.pool.owns(x):   # e.g. model(model(x)): its steps keep their
            x = np.array(x, copy=True)        # inputs, and may write that buffer again
        run = self.train_run if training else self.eval_run
        out = x
        for step in self.steps:
            out = step.forward(out, run)
        if training or not (out is x or out.base is not None):
            return out
        return _fresh(out, x)

    def backward(self, grad_out, compute_grad_input, run):
        """dL/d(input) through the steps in reverse (None unless `compute_grad_input`)."""
        if self.repeated:
            raise ValueError(self.repeated)
        g, steps = grad_out, self.steps
        run.masked = None
        for i in range(len(steps) - 1, -1, -1):
            g = steps[i].backward(g, compute_grad_input or i > 0, run)
        return g if compute_grad_input else None

    def infer(self, x):
        """Eval-mode output, keeping no state: fresh arrays, safe from several threads."""
        out = x
        for step in self.steps:
            out = step.infer(out)
        return _fresh(out, x)


def _fresh(out, x):
    """`out`, copied when it is `x` or a view of it (a model of reshapes only)."""
    if out is x or (out.base is not None and np.may_share_memory(out, x)):
        return np.array(out, copy=True)
    return out


def plan_of(model):
    """The model's plan, made (again) when needed."""
    plan = model.__dict__.get("_fast_plan")
    if plan is None or not plan.valid():
        plan = replan(model)
    return plan


def replan(model):
    """A new plan for `model`, kept on it (as a plain attribute, not a registered one)."""
    plan = Plan(model)
    object.__setattr__(model, "_fast_plan", plan)
    return plan


def step_modules(step):
    """The modules a step computes, in forward order (for profiles and messages)."""
    if isinstance(step, ChainStep):
        return tuple(m for pair in zip(step.linears, step.relus) for m in pair if m is not None)
    if isinstance(step, LinearStep):
        return (step.linear,) if step.relu is None else (step.linear, step.relu)
    if isinstance(step, PoolStep):
        return (step.pool,) if step.relu is None else (step.relu, step.pool)
    if isinstance(step, ResidualStep):
        return (step.module,) if step.relu is None else (step.module, step.relu)
    for attribute in ("conv", "norm", "layer", "module"):
        if hasattr(step, attribute):
            return (getattr(step, attribute),)
    return ()


class _Branches:
    """A `Residual` as the plan walks it: the modules of its body and of its shortcut."""

    __slots__ = ("module", "body", "shortcut")

    def __init__(self, module, body, shortcut):
        self.module, self.body, self.shortcut = module, body, shortcut


def _steps(modules):
    """The steps for `modules` (a flat list, in order)."""
    steps: list[Any] = []
    i = 0
    while i < len(modules):
        module = modules[i]
        following = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(module, _Branches):
            relu = following if _is_relu(following) else None
            steps.append(ResidualStep(module.module, _steps(module.body),
                                      _steps(module.shortcut), relu))
            i += 2 if relu is not None else 1
            continue
        if _keeps_methods(module, Linear):
            relu = following if _is_relu(following) else None
            steps.append(LinearStep(module, relu))
            i += 2 if relu is not None else 1
            continue
        if _is_relu(module) and following is not None and _keeps_methods(following, MaxPool2d):
            steps.append(PoolStep(following, module))
            i += 2
            continue
        if _keeps_methods(module, Conv2d):
            steps.append(ConvStep(module))
        elif _keeps_methods(module, MaxPool2d):
            steps.append(PoolStep(module))
        elif _keeps_methods(module, AvgPool2d):
            steps.append(AvgPoolStep(module, False))
        elif _keeps_methods(module, GlobalAvgPool2d):
            steps.append(AvgPoolStep(module, True))
        elif _keeps_methods(module, _BatchNorm):
            steps.append(BatchNormStep(module))
        elif _keeps_methods(module, _Activation):
            # a ReLU right after a batch norm, or after a residual sum that has no ReLU of
            # its own: over their output, which nothing else reads (a residual step's own
            # ReLU keeps its output as its mask)
            steps.append(ActivationStep(module, in_place=_is_relu(module) and bool(steps) and (
                type(steps[-1]) is BatchNormStep or
                type(steps[-1]) is ResidualStep and steps[-1].relu is None),
                relu=_is_relu(module)))
        elif _keeps_methods(module, Dropout):
            steps.append(DropoutStep(module))
        elif _keeps_methods(module, Flatten):
            steps.append(FlattenStep(module))
        else:
            steps.append(ModuleStep(module))
        i += 1
    steps = _chained(steps)
    for lower, step in zip(steps, steps[1:]):
        # a residual block right after a ReLU: the sum of its input's gradient and that
        # ReLU's backward in one pass; a convolution right after a ReLU in place: its input
        # gradient through the ReLU's mask as it is written
        if type(step) is ResidualStep and (type(lower) is ActivationStep and lower.relu or
                                           type(lower) is ResidualStep and
                                           lower.relu is not None):
            step.below = lower
        elif type(step) is ConvStep and type(lower) is ActivationStep and lower.relu and \
                lower.in_place:
            step.below = lower
    return steps


def _chained(steps):
    """`steps` with every run of two or more Linear steps whose features and dtypes follow
    on replaced by one chain step."""
    result: list[Any] = []
    run: list[Any] = []

    def flush():
        if len(run) >= 2:
            result.append(ChainStep([(step.linear, step.relu) for step in run]))
        else:
            result.extend(run)
        run.clear()

    for step in steps:
        if type(step) is LinearStep and _keeps_methods(step.linear, Linear, _CHAIN_METHODS):
            if run and (run[-1].linear.out_features != step.linear.in_features
                        or run[-1].linear.dtype != step.linear.dtype):
                flush()
            run.append(step)
            continue
        flush()
        result.append(step)
    flush()
    return result
