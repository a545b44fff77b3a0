"""The steps a plan runs: each computes one layer (or a fused group of layers) with exactly
the kernel calls the layers themselves make, into pooled buffers.

Every step has ``forward(x, run)``, ``backward(g, need, run)`` and ``infer(x)``:

* ``forward`` checks and casts its input with the layer's own ``_input`` (the same errors,
  the same dtype), calls the layer's kernel -- writing into the pool when ``run.pooled`` --
  and leaves on each layer what that layer's own forward would leave there (``_x``,
  ``_kept``, ...), so that a layer's own ``backward`` called afterwards works as usual;
* ``backward`` returns dL/d(input) (None when ``need`` is False and the kernel can skip it)
  and adds the parameters' gradients -- or writes them, for the parameters `run` says were
  zeroed and not yet touched (see `Run.accumulate`): the same values as zeros plus the
  gradient, without a pass that writes the zeros. When a layer's state is no longer the
  one this step left (the layer ran its own forward since), it runs the layers' own
  backward instead: what the textbook path would compute;
* ``infer`` is the eval-mode output with fresh arrays and no state (``predict``).

Why the bits equal the textbook path's: each step makes the layer's own kernel calls with
the same arguments, except where a different call gives the same bits (docs/design.md
lists the cases) -- here: ``linear_forward(..., activation="relu")`` computes
relu(x @ W + b) in the GEMM's write-back, the value ``ReLU.forward`` computes from the
layer's output, and the ReLU keeps relu(z) where it would keep z (relu(z) > 0 exactly
where z > 0); a chain of Linear layers is one ``linear_chain_forward`` /
``linear_chain_backward`` call whose products are those of one ``linear_forward`` /
``linear_backward`` per layer (tested in the kernels' tests); a ReLU directly followed by
a max pool runs after the pool (max and ReLU commute exactly, and so do their gradients:
both route to the same position or to none); a convolution after a ReLU in place takes
its input gradient through the ReLU's mask as it writes it (``relu_x=True``: the select of
``relu_backward``, sample by sample); the ReLU after a residual sum is
``add(..., activation="relu")``, relu(a + b) in one pass, and the gradient sum at a
residual block's input goes through the ReLU below it in one pass too
(``relu_backward(g_body, kept, plus=g_shortcut)``: (g_body + g_shortcut) where kept > 0,
the textbook's sum then mask); and a gradient written where it was zeroed holds ``acc``
where the textbook one holds ``0 + acc``.

Layer state is written with ``layer.__dict__[name] = value``: the same attribute a
layer's ``self.name = value`` sets, without the registry check of ``Module.__setattr__``
(these are never parameters or modules).
"""
from typing import Any

import numpy as np

from .. import _random
from ..backend import kernels

__all__ = ["LinearStep", "ChainStep", "ConvStep", "PoolStep", "AvgPoolStep", "BatchNormStep",
           "ActivationStep", "DropoutStep", "FlattenStep", "ResidualStep", "ModuleStep"]


def _missing(layer):
    return RuntimeError(f"{layer!r}: backward() called before forward()")


def _kept(run, key, shape, dtype, reading=()):
    """A pooled array when the run keeps buffers, else None (the kernel allocates)."""
    return run.pool.array(key, shape, dtype, reading) if run.pooled else None


def _passing(run, shape, dtype, reading):
    """An array for a gradient on its way down -- one of the few the pool shares among the
    steps (`BufferPool.passing`), none of `reading` nor of the arrays an enclosing step
    still has to read (``run.busy``) -- when the run keeps buffers, else None."""
    return run.pool.passing(shape, dtype, reading + tuple(run.busy)) if run.pooled else None


def _own_backward(layers, g, need, run):
    """The layers' own backward, from the last: the textbook path for these layers."""
    for layer in layers:
        run.materialize(*layer._parameters.values())
    for i in range(len(layers) - 1, 0, -1):
        g = layers[i].backward(g)
    return layers[0].backward(g, compute_grad_input=need)


class LinearStep:
    """A `Linear`, and the `ReLU` after it when there is one (fused into the GEMM)."""

    __slots__ = ("linear", "relu", "x", "y")

    def __init__(self, linear, relu=None):
        self.linear, self.relu = linear, relu
        self.x: Any = None          # what the last forward took and gave
        self.y: Any = None

    def forward(self, x, run):
        lin = self.linear
        x = lin._input(x, lin.dtype, lin._check)
        out = _kept(run, (self, x.shape[0]), (x.shape[0], lin.out_features), lin.dtype, (x,))
        y = kernels().linear_forward(x, lin.weight.data, lin._bias(), out,
                                     activation=None if self.relu is None else "relu")
        self.x, self.y = x, y
        lin.__dict__["_x"] = x
        if self.relu is not None:
            self.relu.__dict__["_kept"] = y
        return y

    def _current(self):
        return (self.x is not None and self.linear.__dict__.get("_x") is self.x and
                (self.relu is None or self.relu.__dict__.get("_kept") is self.y))

    def backward(self, g, need, run):
        lin, relu = self.linear, self.relu
        if not self._current():
            return _own_backward((lin,) if relu is None else (lin, relu), g, need, run)
        x, K = self.x, kernels()
        n = x.shape[0]
        g = (lin if relu is None else relu)._grad_of(g, (n, lin.out_features), lin.dtype)
        if relu is not None:        # ReLU.backward: g * (z > 0), and z > 0 iff relu(z) > 0
            g = K.relu_backward(g, self.y, _kept(run, (self, "g", n), g.shape, g.dtype,
                                                 (g, self.y)))
        grad_x = _kept(run, (self, "x", n), x.shape, lin.dtype, (g, x)) if need else None
        accumulate = run.accumulate(lin.weight, lin.bias)
        return K.linear_backward(g, x, lin.weight.data, lin.weight.grad,
                                 None if lin.bias is None else lin.bias.grad, grad_x,
                                 compute_grad_x=need, accumulate=accumulate)

    def infer(self, x):
        lin = self.linear
        x = lin._input(x, lin.dtype, lin._check)
        return kernels().linear_forward(x, lin.weight.data, lin._bias(),
                                        activation=None if self.relu is None else "relu")


class ChainStep:
    """Two or more `Linear` layers in a row (each maybe with its ReLU): one
    ``linear_chain_forward`` / ``linear_chain_backward`` call each way, one parallel region
    for all of them, with the bits of one call per layer."""

    __slots__ = ("linears", "relus", "activations", "dtype", "features", "arrays", "x", "ys",
                 "states")

    def __init__(self, pairs):
        self.linears = tuple(linear for linear, _ in pairs)
        self.relus = tuple(relu for _, relu in pairs)
        self.activations = tuple(None if relu is None else "relu" for relu in self.relus)
        # where the layers keep their state, and which of (x, y_1, ..., y_L) goes there: a
        # Linear its input, a ReLU its output
        self.states = tuple((lin.__dict__, "_x", i) for i, lin in enumerate(self.linears)) + \
            tuple((relu.__dict__, "_kept", i + 1) for i, relu in enumerate(self.relus)
                  if relu is not None)
        self.dtype, self.features = self.linears[0].dtype, self.linears[0].in_features
        # ((layer's __dict__, weight, bias) each, weight arrays, bias arrays): one tuple,
        # replaced whole, so that threads calling at once read one consistent set
        self.arrays: Any = ((), (), ())
        self.x: Any = None          # what the last forward took and gave
        self.ys: Any = None

    def _arrays(self):
        """The layers' weight and bias arrays: looked up again only when a layer's weight or
        bias was assigned another Parameter (a Parameter keeps its array for life)."""
        arrays = self.arrays
        for state, weight, bias in arrays[0]:
            if state["weight"] is not weight or state.get("bias") is not bias:
                break
        else:
            if arrays[0]:
                return arrays[1], arrays[2]
        held = tuple((lin.__dict__, lin.weight, lin.bias) for lin in self.linears)
        arrays = (held, tuple(weight.data for _, weight, _ in held),
                  tuple(None if bias is None else bias.data for _, _, bias in held))
        self.arrays = arrays
        return arrays[1], arrays[2]

    def _input(self, x):
        if type(x) is np.ndarray and x.dtype is self.dtype and x.ndim == 2 and \
                x.shape[1] == self.features:
            return x                      # (the usual case; what the layer's _input returns)
        first = self.linears[0]
        return first._input(x, first.dtype, first._check)

    def forward(self, x, run):
        x = self._input(x)
        weights, biases = self._arrays()
        outs = None
        if run.pooled:
            n = x.shape[0]
            outs = run.pool.arrays((self, n), tuple((n, lin.out_features)
                                                    for lin in self.linears), self.dtype, (x,))
        ys = kernels().linear_chain_forward(x, weights, biases, self.activations, outs)
        self.x, self.ys = x, ys
        values = (x,) + ys
        for state, name, i in self.states:
            state[name] = values[i]
        return ys[-1]

    def _layers(self):
        return tuple(m for pair in zip(self.linears, self.relus) for m in pair if m is not None)

    def _current(self):
        """The layers hold what the last forward left, and no parameter or gradient array is
        shared between them (tied weights: the kernel writes each gradient once)."""
        if self.x is None:
            return False
        inp = self.x
        for lin, relu, y in zip(self.linears, self.relus, self.ys):
            if lin.__dict__.get("_x") is not inp or (relu is not None and
                                                     relu.__dict__.get("_kept") is not y):
                return False
            inp = y
        grads = [id(p.grad) for lin in self.linears for p in (lin.weight, lin.bias)
                 if p is not None]
        return len(set(grads)) == len(grads)

    def backward(self, g, need, run):
        if not self._current():
            return _own_backward(self._layers(), g, need, run)
        x, ys = self.x, self.ys
        n, last, dtype = x.shape[0], self.linears[-1], self.dtype
        g = (last if self.relus[-1] is None else self.relus[-1])._grad_of(
            g, (n, last.out_features), dtype)
        masks = tuple(y if relu is not None else None for y, relu in zip(ys, self.relus))
        # g_l of each layer (the top one's only when it has a ReLU), and dL/dx
        work = grad_x = None
        if run.pooled:
            shapes = tuple((n, lin.out_features) for lin in self.linears[:-1]) + (
                None if self.relus[-1] is None else (n, last.out_features),
                (n, self.features) if need else None)
            kept = run.pool.arrays((self, "g", n), shapes, dtype, (g, x) + ys)
            work, grad_x = kept[:-1], kept[-1]
        weights, _ = self._arrays()
        accumulate = [run.accumulate(lin.weight, lin.bias) for lin in self.linears]
        result = kernels().linear_chain_backward(
            g, (x,) + ys[:-1], weights, [lin.weight.grad for lin in self.linears],
            [None if lin.bias is None else lin.bias.grad for lin in self.linears], masks,
            grad_x, compute_grad_x=need, accumulate=accumulate, work=work,
            check_finite=run.finite is not None)
        if run.finite is not None:      # the kernel checked each gradient as it wrote it
            for lin, (weight_ok, bias_ok) in zip(self.linears, result[2]):
                run.finite[lin.weight] = weight_ok
                if lin.bias is not None:
                    run.finite[lin.bias] = bias_ok
        return result[0]

    def infer(self, x):
        weights, biases = self._arrays()
        return kernels().linear_chain_forward(self._input(x), weights, biases,
                                              self.activations)[-1]


class ConvStep:
    """A `Conv2d`. When the step below is a ReLU that wrote its output in place (`below`:
    the convolution's input is what the ReLU keeps), the input gradient goes through that
    ReLU's mask as the kernel writes it (``relu_x=True``) and the ReLU is told
    (``run.masked``)."""

    __slots__ = ("conv", "x", "below")

    def __init__(self, conv):
        self.conv, self.x, self.below = conv, None, None

    def forward(self, x, run):
        conv = self.conv
        x = conv._input(x, conv.dtype, conv._check)
        out = _kept(run, (self, x.shape), conv._out_shape(x.shape, conv.out_channels),
                    conv.dtype, (x,))
        self.x = conv.__dict__["_x"] = x
        return kernels().conv2d_forward(x, conv.weight.data, conv._bias(), out,
                                        stride=conv._stride, padding=conv._padding)

    def backward(self, g, need, run):
        conv, x = self.conv, self.x
        if x is None or conv.__dict__.get("_x") is not x:
            return _own_backward((conv,), g, need, run)
        g = conv._grad_of(g, conv._out_shape(x.shape, conv.out_channels), conv.dtype)
        grad_x = _passing(run, x.shape, conv.dtype, (g, x)) if need else None
        run.materialize(conv.weight, conv.bias)     # (the kernel adds into the gradients)
        relu_x = need and self.below is not None and self.below.relu_mask() is x
        grad_x = kernels().conv2d_backward(g, x, conv.weight.data, conv.weight.grad,
                                           None if conv.bias is None else conv.bias.grad,
                                           grad_x, stride=conv._stride, padding=conv._padding,
                                           compute_grad_x=need, relu_x=relu_x)
        if relu_x:
            run.masked = grad_x
        return grad_x

    def infer(self, x):
        return self.conv.infer(x)


class PoolStep:
    """A `MaxPool2d`, and a `ReLU` that came directly before it, run after it on the
    pooled (smaller) output: the same bits (see the module docstring)."""

    __slots__ = ("pool", "relu", "x", "indices", "y")

    def __init__(self, pool, relu=None):
        self.pool, self.relu = pool, relu
        self.x = self.indices = self.y = None

    def forward(self, x, run):
        layer, relu, K = self.pool, self.relu, kernels()
        if relu is not None:
            x = relu._input(x, check=relu._check)        # (what ReLU.forward takes)
        x = layer._input(x, check=layer._check)
        shape = layer._out_shape(x.shape, x.shape[1])
        out = indices = relu_out = None
        if run.pooled:
            out, relu_out = run.pool.arrays((self, x.shape), (
                shape, None if relu is None else shape), x.dtype, (x,))
            indices = run.pool.array((self, "i", x.shape), shape, np.dtype(np.int64))
        y, indices = K.maxpool2d_forward(x, layer._kernel, layer._stride, out, indices)
        if relu is not None:
            y = K.relu_forward(y, relu_out)
            relu.__dict__["_kept"] = x                   # a ReLU keeps its input
        d = layer.__dict__
        d["_x_shape"], d["_dtype"], d["_indices"] = x.shape, x.dtype, indices
        self.x, self.indices, self.y = x, indices, y
        return y

    def backward(self, g, need, run):
        layer, relu = self.pool, self.relu
        if self.x is None or layer.__dict__.get("_indices") is not self.indices or (
                relu is not None and relu.__dict__.get("_kept") is not self.x):
            return _own_backward((layer,) if relu is None else (relu, layer), g, need, run)
        K, shape, x = kernels(), self.indices.shape, self.x
        g = (layer if relu is None else relu)._grad_of(g, shape, x.dtype)
        if relu is not None:       # ReLU.backward on the pooled values
            g = K.relu_backward(g, self.y, _passing(run, shape, x.dtype, (g, self.y)))
        return K.maxpool2d_backward(g, self.indices, x.shape,
                                    _passing(run, x.shape, x.dtype, (g,)))

    def infer(self, x):
        y = self.pool.infer(x if self.relu is None else self.relu._input(x))
        return y if self.relu is None else kernels().relu_forward(y)


class AvgPoolStep:
    """An `AvgPool2d`, or a `GlobalAvgPool2d` (`global_`: one window over the whole plane,
    its (N, C, 1, 1) output seen as (N, C)): the layer's kernel calls, into pooled arrays."""

    __slots__ = ("layer", "global_", "shape")

    def __init__(self, layer, global_):
        self.layer, self.global_, self.shape = layer, global_, None

    def _window(self, x_shape):
        if self.global_:
            return tuple(x_shape[2:]), tuple(x_shape[2:])
        return self.layer._kernel, self.layer._stride

    def forward(self, x, run):
        layer = self.layer
        x = layer._input(x, check=layer._check)
        d = layer.__dict__
        self.shape = d["_x_shape"] = x.shape        # (one tuple: backward checks it is this)
        d["_dtype"] = x.dtype
        shape = x.shape[:2] + (1, 1) if self.global_ else layer._out_shape(x.shape, x.shape[1])
        y = kernels().avgpool2d_forward(x, *self._window(x.shape),
                                        _kept(run, (self, x.shape), shape, x.dtype, (x,)))
        return y.reshape(x.shape[:2]) if self.global_ else y

    def backward(self, g, need, run):
        layer, x_shape = self.layer, self.shape
        d = layer.__dict__
        if x_shape is None or d.get("_x_shape") is not x_shape:
            return _own_backward((layer,), g, need, run)
        dtype = d["_dtype"]
        if self.global_:
            g = layer._grad_of(g, x_shape[:2], dtype).reshape(x_shape[:2] + (1, 1))
        else:
            g = layer._grad_of(g, layer._out_shape(x_shape, x_shape[1]), dtype)
        if not need:
            return None
        kernel, stride = self._window(x_shape)
        return kernels().avgpool2d_backward(g, x_shape, kernel, stride,
                                            _passing(run, x_shape, dtype, (g,)))

    def infer(self, x):
        return self.layer.infer(x)


class BatchNormStep:
    """A `BatchNorm1d` / `BatchNorm2d`."""

    __slots__ = ("norm", "x", "mean")

    def __init__(self, norm):
        self.norm, self.x, self.mean = norm, None, None

    def forward(self, x, run):
        norm = self.norm
        x = norm._input(x, norm.dtype, norm._check)
        if norm.training:
            norm._check_batch(x)
        x4 = x.reshape(x.shape + (1,)) if x.ndim == 3 else x
        c, out = norm.num_features, None
        mean = invstd = None
        if run.pooled:
            out = run.pool.array((self, x4.shape), x4.shape, norm.dtype, (x4,))
            mean, invstd = run.pool.arrays((self, "s"), ((c,), (c,)), norm.dtype)
        y, mean, invstd = kernels().batchnorm_forward(
            x4, norm.weight.data, norm.bias.data, norm.running_mean, norm.running_var,
            training=norm.training, momentum=norm.momentum, eps=norm.eps, out=out,
            save_mean=mean, save_invstd=invstd)
        d = norm.__dict__
        d["_x"], d["_mean"], d["_invstd"], d["_batch_statistics"] = x, mean, invstd, \
            norm.training
        self.x, self.mean = x, mean
        return y.reshape(x.shape) if x.ndim == 3 else y

    def backward(self, g, need, run):
        norm, x = self.norm, self.x
        d = norm.__dict__
        if x is None or d.get("_x") is not x or d.get("_mean") is not self.mean:
            return _own_backward((norm,), g, need, run)
        x4 = x.reshape(x.shape + (1,)) if x.ndim == 3 else x
        g = norm._grad_of(g, x.shape, norm.dtype).reshape(x4.shape)
        grad_x = _passing(run, x4.shape, norm.dtype, (g, x4)) if need else None
        run.materialize(norm.weight, norm.bias)
        grad_x = kernels().batchnorm_backward(
            g, x4, norm.weight.data, self.mean, d["_invstd"], norm.weight.grad, norm.bias.grad,
            grad_x, training=d["_batch_statistics"], compute_grad_x=need)
        return None if grad_x is None else grad_x.reshape(x.shape)

    def infer(self, x):
        return self.norm.infer(x)


class ActivationStep:
    """An elementwise activation (``ReLU``, ``Sigmoid``, ...): the layer's own kernel pair
    (``_f`` / ``_df``), into pooled buffers -- or, for a ReLU whose input only it reads (the
    output a batch norm or a residual sum without a ReLU of its own wrote for it: the plan
    says so with `in_place`), over its input, as PyTorch's ``ReLU(inplace=True)``: the ReLU
    keeps relu(x) where it would keep x, and relu(x) > 0 exactly where x > 0, so its
    backward has the same bits."""

    __slots__ = ("layer", "kept", "in_place", "relu")

    def __init__(self, layer, in_place=False, relu=False):
        self.layer, self.kept, self.in_place = layer, None, in_place
        self.relu = relu            # a plain ReLU (a ResidualStep above may take its mask)

    def relu_mask(self):
        """What the ReLU keeps -- positive where it let the gradient through -- while the
        layer holds what this step left; else None."""
        kept = self.kept
        if self.relu and kept is not None and self.layer.__dict__.get("_kept") is kept:
            return kept
        return None

    def forward(self, x, run):
        layer = self.layer
        x = layer._input(x, check=layer._check)
        out = x if self.in_place and run.pooled else \
            _kept(run, (self, x.shape, x.dtype), x.shape, x.dtype, (x,))
        y = layer._f(kernels(), x, out)
        self.kept = layer.__dict__["_kept"] = x if layer._keeps == "input" else y
        return y

    def backward(self, g, need, run):
        layer, kept = self.layer, self.kept
        if kept is None or layer.__dict__.get("_kept") is not kept:
            return _own_backward((layer,), g, need, run)
        g = layer._grad_of(g, kept.shape, kept.dtype)
        if run.take_masked(g):      # the step above already took it through this ReLU
            return g
        return layer._df(kernels(), g, kept, _passing(run, kept.shape, kept.dtype, (g, kept)))

    def infer(self, x):
        return self.layer.infer(x)


class DropoutStep:
    """A `Dropout`: the same mask drawn from the library generator, into pooled arrays."""

    __slots__ = ("layer", "shape", "mask")

    def __init__(self, layer):
        self.layer, self.shape, self.mask = layer, None, None

    def forward(self, x, run):
        layer = self.layer
        x = layer._input(x)
        d = layer.__dict__
        self.shape = d["_shape"] = x.shape
        d["_dtype"] = x.dtype
        if not layer.training or layer.p == 0.0:
            self.mask = d["_mask"] = None
            return x
        if not run.pooled:
            mask = (_random.generator().random(x.shape, dtype=np.float32)
                    >= layer.p).view(np.uint8)
            out = None
        else:
            uniform = run.pool.array((self, "u", x.shape), x.shape, np.dtype(np.float32))
            mask = run.pool.array((self, "m", x.shape), x.shape, np.dtype(np.uint8))
            _random.generator().random(dtype=np.float32, out=uniform)   # (the same draws)
            np.greater_equal(uniform, layer.p, out=mask.view(np.bool_))
            out = run.pool.array((self, x.shape, x.dtype), x.shape, x.dtype, (x,))
        self.mask = d["_mask"] = mask
        return kernels().dropout_forward(x, mask, layer.scale, out)

    def backward(self, g, need, run):
        layer, d = self.layer, self.layer.__dict__
        if self.shape is None or d.get("_shape") is not self.shape or \
                d.get("_mask") is not self.mask:
            return _own_backward((layer,), g, need, run)
        g = layer._grad_of(g, self.shape, d["_dtype"])
        if self.mask is None:
            return g
        return kernels().dropout_backward(g, self.mask, layer.scale,
                                          _passing(run, self.shape, g.dtype, (g,)))

    def infer(self, x):
        return self.layer.infer(x)


class FlattenStep:
    """A `Flatten`: a reshape each way (the layer's own code: there is nothing to fuse)."""

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    def forward(self, x, run):
        return self.layer.forward(x)

    def backward(self, g, need, run):
        return self.layer.backward(g, compute_grad_input=need)

    def infer(self, x):
        return self.layer.infer(x)


def _add(a, b, run, key=None):
    """a + b: for one dtype and shape the kernel, into a kept array under `key` (an output)
    or, with no key, a shared gradient array; else NumPy's a + b."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return a + b
    out = _passing(run, a.shape, a.dtype, (a, b)) if key is None else \
        _kept(run, key + (a.dtype,), a.shape, a.dtype, (a, b))
    return kernels().add(a, b, out)


class ResidualStep:
    """A `Residual`: the steps of its shortcut, then of its body (the order of
    ``Residual.forward``), in this plan's run, and ``y + s`` into a kept array (the kernel
    ``add``, on every thread: the bits of the layer's own NumPy ``y + s``) -- with the
    `ReLU` that follows it, when there is one, in the same pass (``activation="relu"``).
    Backward runs each branch's steps back and adds what they return, as
    ``Residual.backward``; when the step just below is a ReLU's (or a residual step with its
    ReLU: `below`), that sum goes through the ReLU's mask in the same pass
    (``relu_backward(..., plus=)``) and the step below is told so (``run.masked``)."""

    __slots__ = ("module", "body", "shortcut", "relu", "y", "below")

    def __init__(self, module, body, shortcut, relu=None):
        self.module, self.body, self.shortcut, self.relu = module, body, shortcut, relu
        self.y: Any = None          # the ReLU's output, when there is a ReLU
        self.below: Any = None      # the step before it, when that one is a ReLU's

    def relu_mask(self):
        """The ReLU's output while the ReLU holds what this step left; else None."""
        y, relu = self.y, self.relu
        if relu is not None and y is not None and relu.__dict__.get("_kept") is y:
            return y
        return None

    def forward(self, x, run):
        s = x
        for step in self.shortcut:
            s = step.forward(s, run)
        y = x
        for step in self.body:
            y = step.forward(y, run)
        relu = self.relu
        if y.shape != s.shape:
            return self.module._sum(y, s)           # (its error naming the branches)
        if relu is None:
            return _add(y, s, run, (self, y.shape))
        if y.dtype != s.dtype:
            out = relu.forward(self.module._sum(y, s))
        else:                                       # relu(y + s) in one pass, kept in place
            out = kernels().add(y, s, _kept(run, (self, y.shape, y.dtype), y.shape, y.dtype,
                                            (y, s)), activation="relu")
            relu.__dict__["_kept"] = out            # (what an in-place ReLU keeps)
        self.y = out
        return out

    def backward(self, g, need, run):
        relu = self.relu
        if relu is not None:
            y = self.relu_mask()
            if y is None:               # the ReLU ran its own forward since: its backward
                g = relu.backward(g)
            else:
                g = relu._grad_of(g, y.shape, y.dtype)
                if not run.take_masked(g):  # (else the step above took it through the ReLU)
                    g = kernels().relu_backward(g, y, _passing(run, y.shape, y.dtype, (g, y)))
        busy = run.busy                 # g is read again by the shortcut, g_body by the sum
        busy.append(g)
        try:
            g_body = g
            for i in range(len(self.body) - 1, -1, -1):
                g_body = self.body[i].backward(g_body, need or i > 0, run)
            busy.append(g_body)
            try:
                g_short = g
                for i in range(len(self.shortcut) - 1, -1, -1):
                    g_short = self.shortcut[i].backward(g_short, need or i > 0, run)
            finally:
                busy.pop()
        finally:
            busy.pop()
        if not need:
            return None
        mask = None if self.below is None else self.below.relu_mask()
        if mask is None or not (g_body.dtype == g_short.dtype == mask.dtype and
                                g_body.shape == g_short.shape == mask.shape):
            return _add(g_body, g_short, run)
        g = kernels().relu_backward(g_body, mask, _passing(run, mask.shape, mask.dtype,
                                                           (g_body, g_short, mask)),
                                    plus=g_short)
        run.masked = g
        return g

    def infer(self, x):
        y = self.module.infer(x)
        return y if self.relu is None else self.relu.infer(y)


class ModuleStep:
    """Any other module (a user's layer or block): its own forward, backward and infer.
    Every gradient still waiting to be cleared is cleared before its backward runs (its
    code may add into any parameter's gradient, not only its own)."""

    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def forward(self, x, run):
        return self.module(x)

    def backward(self, g, need, run):
        if run.zeroed:
            run.materialize(*run.zeroed)
        if run.pooled and run.pool.owns(g):
            # a gradient array the pool shares among steps: the module's code (its hooks)
            # may keep it beyond this call, so it gets an array of its own
            g = g.copy()
        if need:
            return self.module.backward(g)
        return self.module.backward(g, compute_grad_input=False)

    def infer(self, x):
        return self.module.infer(x)
