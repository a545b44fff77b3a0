"""The fast path: how `Sequential` runs when the compiled kernels are active.

The layers, `Sequential`, the losses and the optimizers are written as a textbook would
write them: one kernel call per layer each way, fresh arrays, gradients added into
``.grad``. That path runs end to end with ``nnscratch.set_backend("numpy")`` (and with
``nnscratch.backend.set_fast_path(False)`` on the compiled kernels).

With the compiled kernels, `Sequential` hands its layers to this package instead, which
computes the same numbers bit for bit (``tests/fast`` holds the two paths against each
other) with less work around the kernels:

* ``plan.py`` -- a plan of the model's module tree: fused Linear+ReLU, runs of Linear
  layers in one kernel call each way, ReLU after max pool, made once and kept;
* ``steps.py`` -- one step per layer or fused group, the layers' own kernel calls into
  kept buffers;
* ``pool.py`` -- the one buffer pool those buffers come from (a training step allocates
  nothing);
* ``train.py`` -- fit's step: no pass to zero the gradients, the NaN/inf guard inside the
  kernels, the whole optimizer update in one call.

Nothing here is needed to understand what a model computes; see docs/design.md for why its
results are the textbook path's.

Hooks (``register_forward_hook`` / ``register_full_backward_hook``): the fast path steps aside
where they are. A hooked layer is a step that runs the layer's own forward and backward (its
chain split around it); a hooked model is not `plannable`, so fit takes its textbook step.
The bits stay the same, and the plan is made again when hooks come or go.
"""
from operator import is_

from ..module import _predicting, hook_changes
from .plan import inline, plan_of, plannable, replan
from .train import TrainStep

__all__ = ["forward", "backward", "infer", "inline", "plannable", "TrainStep"]


def forward(model, x):
    """``model.forward(x)`` for a `Sequential` on the fast path."""
    # (plan_of and Plan.valid, inline: one-sample inference is a few microseconds in all)
    plan = model.__dict__.get("_fast_plan")
    if plan is None:
        plan = replan(model)
    else:
        modules, children, nested = plan.top
        if len(modules) != len(children) or not all(map(is_, modules.values(), children)) \
                or plan.hooks != hook_changes.count or (nested and not plan.valid()):
            plan = replan(model)
    if _predicting.on:      # a module's infer called this forward: eval mode, no state
        return plan.infer(x)
    return plan.forward(x, model.training)


def backward(model, grad_out, compute_grad_input):
    """``model.backward(grad_out, compute_grad_input=...)`` on the fast path (in training
    mode into kept buffers, in eval mode into fresh arrays)."""
    plan = plan_of(model)
    return plan.backward(grad_out, compute_grad_input,
                         plan.train_run if model.training else plan.eval_run)


def infer(model, x):
    """``model.infer(x)`` on the fast path: eval mode, fresh arrays, no state."""
    return plan_of(model).infer(x)
