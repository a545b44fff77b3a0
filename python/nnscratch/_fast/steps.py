"""The steps a plan runs: each computes one layer (or a fused group of layers) with exactly
the kernel calls the layers themselves make, into pooled buffers.

Every step has ``forward(x, run)``, ``backward(g, need, run)`` and ``infer(x)``:

* ``forward`` checks and casts its input with the layer's own ``_input`` (the same errors,
  the same dtype), calls the layer's kernel -- writing into the pool when ``run.pooled`` --
  and keeps what its backward needs on the step (not on the layer);
* ``backward`` returns dL/d(input) (None when ``need`` is False and the kernel can skip it)
  and adds the parameters' gradients -- or writes them, for the parameters `run` says were
  zeroed and not yet touched (see `Run.accumulate`): the same values as zeros plus the
  gradient, without a pass that writes the zeros;
* ``infer`` is the eval-mode output with fresh arrays and no state (``predict``).

Why the bits equal the textbook path's: each step makes the layer's own kernel calls with
the same arguments, except where a different call gives the same bits (docs/design.md
lists the five cases) -- here: ``linear_forward(..., activation="relu")`` computes
relu(x @ W + b) in the GEMM's write-back, the value ``ReLU.forward`` computes from the
layer's output; a chain of Linear layers is one ``linear_chain_forward`` /
``linear_chain_backward`` call whose products are those of one ``linear_forward`` /
``linear_backward`` per layer (tested in the kernels' tests); a ReLU directly followed by
a max pool runs after the pool (max and ReLU commute exactly, and so do their gradients:
both route to the same position or to none); and a gradient written where it was zeroed
holds ``acc`` where the textbook one holds ``0 + acc``.
"""
import numpy as np

from .. import _random
from ..backend import kernels

__all__ = ["LinearStep", "ChainStep", "ConvStep", "PoolStep", "BatchNormStep",
           "ActivationStep", "DropoutStep", "FlattenStep", "ModuleStep"]


def _missing(layer):
    return RuntimeError(f"{layer!r}: backward() called before forward()")


class LinearStep:
    """A `Linear`, and the `ReLU` after it when there is one (fused into the GEMM)."""

    __slots__ = ("linear", "relu", "x", "y")

    def __init__(self, linear, relu=None):
        self.linear, self.relu = linear, relu
        self.x = self.y = None

    def forward(self, x, run):
        lin = self.linear
        x = lin._input(x, lin.dtype, lin._check)
        out = run.pool.array((self, x.shape[0]), (x.shape[0], lin.out_features), lin.dtype,
                             (x,)) if run.pooled else None
        y = kernels().linear_forward(x, lin.weight.data, lin._bias(), out,
                                     activation=None if self.relu is None else "relu")
        self.x, self.y = x, y
        return y

    def backward(self, g, need, run):
        lin, x, K = self.linear, self.x, kernels()
        if x is None:
            raise _missing(lin if self.relu is None else self.relu)
        n = x.shape[0]
        g = lin._grad_of(g, (n, lin.out_features), lin.dtype)
        if self.relu is not None:        # ReLU.backward: g * (z > 0), and z > 0 iff relu(z) > 0
            g = K.relu_backward(g, self.y, run.pool.array((self, "g", n), g.shape, g.dtype,
                                                          (g, self.y)))
        grad_x = run.pool.array((self, "x", n), x.shape, lin.dtype, (g, x)) if need else None
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

    __slots__ = ("linears", "relus", "activations", "dtype", "features", "held", "weights",
                 "biases", "x", "ys")

    def __init__(self, pairs):
        self.linears = tuple(linear for linear, _ in pairs)
        self.relus = tuple(relu for _, relu in pairs)
        self.activations = tuple(None if relu is None else "relu" for relu in self.relus)
        self.dtype, self.features = self.linears[0].dtype, self.linears[0].in_features
        self.held = ()          # (layer, weight, bias): the Parameters the arrays below are of
        self.weights = self.biases = ()
        self.x = self.ys = None

    def _arrays(self):
        """The layers' weight and bias arrays: looked up again only when a layer's weight or
        bias was assigned another Parameter (a Parameter keeps its array for life)."""
        for lin, weight, bias in self.held:
            if lin.weight is not weight or lin.bias is not bias:
                break
        else:
            if self.held:
                return self.weights, self.biases
        self.held = tuple((lin, lin.weight, lin.bias) for lin in self.linears)
        self.weights = tuple(weight.data for _, weight, _ in self.held)
        self.biases = tuple(None if bias is None else bias.data for _, _, bias in self.held)
        return self.weights, self.biases

    def _input(self, x):
        if type(x) is np.ndarray and x.dtype is self.dtype and x.ndim == 2 and \
                x.shape[1] == self.features:
            return x                      # (the usual case, without the layer's checks)
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
        self.ys = kernels().linear_chain_forward(x, weights, biases, self.activations, outs)
        self.x = x
        return self.ys[-1]

    def backward(self, g, need, run):
        x, ys = self.x, self.ys
        if x is None:
            raise _missing(self.linears[-1] if self.relus[-1] is None else self.relus[-1])
        n, last, dtype = x.shape[0], self.linears[-1], self.dtype
        g = last._grad_of(g, (n, last.out_features), dtype)
        masks = tuple(y if relu is not None else None for y, relu in zip(ys, self.relus))
        # g_l of each layer (the top one's only when it has a ReLU), and dL/dx
        shapes = tuple((n, lin.out_features) for lin in self.linears[:-1]) + (
            None if self.relus[-1] is None else (n, last.out_features),
            (n, self.features) if need else None)
        kept = run.pool.arrays((self, "g", n), shapes, dtype, (g, x) + ys)
        weights, _ = self._arrays()
        accumulate = [run.accumulate(lin.weight, lin.bias) for lin in self.linears]
        result = kernels().linear_chain_backward(
            g, (x,) + ys[:-1], weights, [lin.weight.grad for lin in self.linears],
            [None if lin.bias is None else lin.bias.grad for lin in self.linears], masks,
            kept[-1], compute_grad_x=need, accumulate=accumulate, work=kept[:-1],
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
    """A `Conv2d`."""

    __slots__ = ("conv", "x")

    def __init__(self, conv):
        self.conv, self.x = conv, None

    def forward(self, x, run):
        conv = self.conv
        x = conv._input(x, conv.dtype, conv._check)
        out = run.pool.array((self, x.shape), conv._out_shape(x.shape, conv.out_channels),
                             conv.dtype, (x,)) if run.pooled else None
        self.x = x
        return kernels().conv2d_forward(x, conv.weight.data, conv._bias(), out,
                                        stride=conv._stride, padding=conv._padding)

    def backward(self, g, need, run):
        conv, x = self.conv, self.x
        if x is None:
            raise _missing(conv)
        g = conv._grad_of(g, conv._out_shape(x.shape, conv.out_channels), conv.dtype)
        grad_x = run.pool.array((self, "x", x.shape), x.shape, conv.dtype, (g, x)) \
            if need else None
        run.materialize(conv.weight, conv.bias)     # (the kernel adds into the gradients)
        return kernels().conv2d_backward(g, x, conv.weight.data, conv.weight.grad,
                                         None if conv.bias is None else conv.bias.grad, grad_x,
                                         stride=conv._stride, padding=conv._padding,
                                         compute_grad_x=need)

    def infer(self, x):
        return self.conv.infer(x)


class PoolStep:
    """A `MaxPool2d`, and a `ReLU` that came directly before it, run after it on the
    pooled (smaller) output: the same bits (see the module docstring)."""

    __slots__ = ("pool", "relu", "shape", "dtype", "indices", "y")

    def __init__(self, pool, relu=None):
        self.pool, self.relu = pool, relu
        self.shape = self.indices = self.y = None

    def forward(self, x, run):
        layer, K = self.pool, kernels()
        if self.relu is not None:
            x = self.relu._input(x, check=self.relu._check)   # (what ReLU.forward takes)
        x = layer._input(x, check=layer._check)
        shape = layer._out_shape(x.shape, x.shape[1])
        out = indices = relu_out = None
        if run.pooled:
            out, relu_out = run.pool.arrays((self, x.shape), (
                shape, None if self.relu is None else shape), x.dtype, (x,))
            indices = run.pool.array((self, "i", x.shape), shape, np.dtype(np.int64))
        y, self.indices = K.maxpool2d_forward(x, layer._kernel, layer._stride, out, indices)
        if self.relu is not None:
            y = K.relu_forward(y, relu_out)
        self.shape, self.dtype, self.y = x.shape, x.dtype, y
        return y

    def backward(self, g, need, run):
        if self.shape is None:
            raise _missing(self.relu if self.relu is not None else self.pool)
        K, n_shape = kernels(), self.indices.shape
        g = self.pool._grad_of(g, n_shape, self.dtype)
        if self.relu is not None:       # ReLU.backward on the pooled values
            g = K.relu_backward(g, self.y, run.pool.array((self, "g", self.shape), n_shape,
                                                          self.dtype, (g, self.y)))
        return K.maxpool2d_backward(g, self.indices, self.shape, run.pool.array(
            (self, "x", self.shape), self.shape, self.dtype, (g,)))

    def infer(self, x):
        y = self.pool.infer(x if self.relu is None else self.relu._input(x))
        return y if self.relu is None else kernels().relu_forward(y)


class BatchNormStep:
    """A `BatchNorm1d` / `BatchNorm2d`."""

    __slots__ = ("norm", "x", "shape", "mean", "invstd", "batch_statistics")

    def __init__(self, norm):
        self.norm, self.x, self.shape = norm, None, None

    def forward(self, x, run):
        norm = self.norm
        x = norm._input(x, norm.dtype, norm._check)
        if norm.training:
            norm._check_batch(x)
        x4 = x.reshape(x.shape + (1,)) if x.ndim == 3 else x
        c, out = norm.num_features, None
        mean = invstd = None
        if run.pooled:
            out, = run.pool.arrays((self, x4.shape), (x4.shape,), norm.dtype, (x4,))
            mean, invstd = run.pool.arrays((self, "s"), ((c,), (c,)), norm.dtype)
        y, self.mean, self.invstd = kernels().batchnorm_forward(
            x4, norm.weight.data, norm.bias.data, norm.running_mean, norm.running_var,
            training=norm.training, momentum=norm.momentum, eps=norm.eps, out=out,
            save_mean=mean, save_invstd=invstd)
        self.x, self.shape, self.batch_statistics = x4, x.shape, norm.training
        return y.reshape(x.shape) if x.ndim == 3 else y

    def backward(self, g, need, run):
        norm, x4, shape = self.norm, self.x, self.shape
        if x4 is None:
            raise _missing(norm)
        g = norm._grad_of(g, shape, norm.dtype).reshape(x4.shape)
        grad_x = run.pool.array((self, "x", x4.shape), x4.shape, norm.dtype, (g, x4)) \
            if need else None
        run.materialize(norm.weight, norm.bias)
        grad_x = kernels().batchnorm_backward(
            g, x4, norm.weight.data, self.mean, self.invstd, norm.weight.grad, norm.bias.grad,
            grad_x, training=self.batch_statistics, compute_grad_x=need)
        return None if grad_x is None else grad_x.reshape(shape)

    def infer(self, x):
        return self.norm.infer(x)


class ActivationStep:
    """An elementwise activation (``ReLU``, ``Sigmoid``, ...): the layer's own kernel pair
    (``_f`` / ``_df``), into pooled buffers."""

    __slots__ = ("layer", "kept")

    def __init__(self, layer):
        self.layer, self.kept = layer, None

    def forward(self, x, run):
        layer = self.layer
        x = layer._input(x, check=layer._check)
        out = run.pool.array((self, x.shape, x.dtype), x.shape, x.dtype, (x,)) \
            if run.pooled else None
        y = layer._f(kernels(), x, out)
        self.kept = x if layer._keeps == "input" else y
        return y

    def backward(self, g, need, run):
        kept = self.kept
        if kept is None:
            raise _missing(self.layer)
        g = self.layer._grad_of(g, kept.shape, kept.dtype)
        return self.layer._df(kernels(), g, kept, run.pool.array(
            (self, "x", kept.shape, kept.dtype), kept.shape, kept.dtype, (g, kept)))

    def infer(self, x):
        return self.layer.infer(x)


class DropoutStep:
    """A `Dropout`: the same mask drawn from the library generator, into pooled arrays."""

    __slots__ = ("layer", "shape", "dtype", "mask")

    def __init__(self, layer):
        self.layer, self.shape, self.mask = layer, None, None

    def forward(self, x, run):
        layer = self.layer
        x = layer._input(x)
        self.shape, self.dtype = x.shape, x.dtype
        if not layer.training or layer.p == 0.0:
            self.mask = None
            return x
        if not run.pooled:
            self.mask = (_random.generator().random(x.shape, dtype=np.float32)
                         >= layer.p).view(np.uint8)
            return kernels().dropout_forward(x, self.mask, layer.scale)
        uniform = run.pool.array((self, "u", x.shape), x.shape, np.dtype(np.float32))
        mask = run.pool.array((self, "m", x.shape), x.shape, np.dtype(np.uint8))
        _random.generator().random(dtype=np.float32, out=uniform)   # (the same draws)
        np.greater_equal(uniform, layer.p, out=mask.view(np.bool_))
        self.mask = mask
        return kernels().dropout_forward(x, mask, layer.scale, run.pool.array(
            (self, x.shape, x.dtype), x.shape, x.dtype, (x,)))

    def backward(self, g, need, run):
        if self.shape is None:
            raise _missing(self.layer)
        g = self.layer._grad_of(g, self.shape, self.dtype)
        if self.mask is None:
            return g
        return kernels().dropout_backward(g, self.mask, self.layer.scale, run.pool.array(
            (self, "x", self.shape), self.shape, self.dtype, (g,)))

    def infer(self, x):
        return self.layer.infer(x)


class FlattenStep:
    """A `Flatten`: a reshape each way."""

    __slots__ = ("layer", "shape")

    def __init__(self, layer):
        self.layer, self.shape = layer, None

    def forward(self, x, run):
        self.shape = np.shape(x)
        return self.layer.infer(x)

    def backward(self, g, need, run):
        if self.shape is None:
            raise _missing(self.layer)
        return self.layer._unflatten(g, self.shape)

    def infer(self, x):
        return self.layer.infer(x)


class ModuleStep:
    """Any other module (a user's layer or block): its own forward, backward and infer.
    Its parameters' gradients are made zero before its backward adds into them."""

    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def forward(self, x, run):
        return self.module(x)

    def backward(self, g, need, run):
        if run.zeroed:
            run.materialize(*self.module.parameters())
        if need:
            return self.module.backward(g)
        return self.module.backward(g, compute_grad_input=False)

    def infer(self, x):
        return self.module.infer(x)
