"""Export a model to ONNX, for ONNX Runtime and other inference engines.

    import nnscratch as nn
    from nnscratch import onnx as nn_onnx

    model = nn.models.mlp()
    nn_onnx.export(model, "mlp.onnx", input_shape=(784,))

    import onnxruntime                                # the file runs without nnscratch
    session = onnxruntime.InferenceSession("mlp.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": X.astype(np.float32)})[0]   # == model.predict(X)

Optional: needs the ``onnx`` package, ``pip install "nnscratch[onnx]"``.

What the file holds
-------------------
An ONNX graph (opset 17) that computes what ``model.predict`` computes: the eval-mode
forward pass. Dropout is the identity, batch normalisation uses its running statistics,
and the model's training flag is neither read nor changed. The graph input is named
``"input"``, of shape ``("batch", *input_shape)`` -- the batch axis is symbolic, so any
batch size runs -- and the output ``"output"``. Each layer becomes one ONNX operator,
named after the layer's dotted name in the model (``"0"``, ``"3.1"``, ``"4.body.0"``), and
each parameter or buffer an initializer named as in ``model.state_dict()`` (``"0.weight"``,
``"1.running_mean"``)::

    Linear       Gemm(input, weight, bias)   weight is (in, out) here, so no transpose:
                                             Gemm's B is (K, N) with transB = 0
    ReLU         Relu          LeakyReLU   LeakyRelu(alpha = negative_slope)
    Sigmoid      Sigmoid       Tanh        Tanh
    Softmax      Softmax(axis = 1)         (nnscratch's softmax is over each row of (N, C))
    Flatten      Flatten(axis = 1)         Identity, Dropout   Identity
    Conv2d       Conv(kernel_shape, strides, pads = [ph, pw, ph, pw])
    MaxPool2d    MaxPool(kernel_shape, strides)       (floor mode, no padding)
    AvgPool2d    AveragePool(kernel_shape, strides)   (floor mode, no padding: each
                                                      window's mean over kh*kw inputs)
    GlobalAvgPool2d  ReduceMean(axes = [2, 3], keepdims = 0)     (N, C, H, W) -> (N, C)
    BatchNorm1d, BatchNorm2d   BatchNormalization(x, weight, bias, running_mean,
                                                  running_var, epsilon = eps)
    Sequential   its layers, one after the other (nested ones too)
    Residual     the body's nodes ("<name>.body.0", ...), the shortcut's ("<name>.shortcut.0",
                 ...; none for the identity: the input itself), then Add, named "<name>"

A Sequential with an ``input_normalization`` (``fit(normalize=...)``) starts with it, as
``predict`` applies it: Sub(input, "input_normalization.mean") then
Div(..., "input_normalization.std"), each channel's value broadcast over its pixels. The
graph takes floats, as ``predict`` takes them: uint8 pixels k are given as k / 255.

The numbers keep the model's float dtype (float32 or float64); a layer whose parameters
have another dtype than its input gets a Cast in front, as the layer itself casts its input.

float64 models and float32 attributes: ONNX stores float attributes as float32, and
LeakyReLU's slope 0.01 or batch norm's eps 1e-3 rounded to float32 (0.0099999998,
0.0010000000475) move a float64 model's outputs by up to ~1e-8 of their size -- float32
accuracy. So in float64 the two carry their constants as float64 initializers instead:

    LeakyReLU    PRelu(x, "<name>.negative_slope")        (the same formula, slope a tensor)
    BatchNorm    Add("<name>.running_var", "<name>.eps") named "<name>.var_plus_eps", then
                 BatchNormalization(..., var_plus_eps, epsilon = 0)

-- var + eps in float64, as nnscratch's kernels compute it before the square root. float32
layers keep the single LeakyRelu / BatchNormalization node. (ONNX Runtime's CPU provider
has no float64 Conv nor AveragePool: run float64 CNNs with
``onnx.reference.ReferenceEvaluator``.)
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Sequence

import numpy as np

from . import _checks
from .serialization import write_bytes_atomic
from .conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .layers import (Dropout, Flatten, Identity, LeakyReLU, Linear, ReLU, Residual, Sigmoid,
                     Softmax, Tanh)
from .model import Sequential
from .module import Module, ModuleList
from .norm import BatchNorm1d, BatchNorm2d

__all__ = ["export", "to_model_proto", "OPSET"]

OPSET = 17                            # ONNX operator set (standard domain) the graph uses
INPUT_NAME, OUTPUT_NAME = "input", "output"
BATCH_AXIS = "batch"                  # the symbolic name of the dynamic batch dimension
ONNX_HINT = 'ONNX export needs the onnx package: pip install "nnscratch[onnx]"'


def _import_onnx():
    """The `onnx` package, or ImportError saying how to install it (an optional extra)."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(ONNX_HINT) from exc
    return onnx


# --------------------------------------------------------------------------------------
# The public functions
# --------------------------------------------------------------------------------------

def export(model: Module, path: str | os.PathLike[str],
           input_shape: Sequence[int]) -> str | os.PathLike[str]:
    """Write `model` to `path` as an ONNX file computing its eval-mode forward pass.

    Parameters
    ----------
    model : Module
        A `Sequential` (Sequential and Residual containers nested in it too) or a single
        built-in layer. Every layer must be one ONNX export knows (see the module
        docstring); anything else -- a layer class of your own, for instance -- is a
        TypeError naming the layer.
    path : str or os.PathLike
        The file to write, used exactly as given (no suffix added). Written atomically:
        a temporary file in the same folder, then a rename, so a failure leaves the old
        file (or none) and no temporary file behind.
    input_shape : tuple of int
        The shape of one sample, without the batch axis: ``(784,)`` for an MLP,
        ``(1, 28, 28)`` for a CNN on MNIST. The batch axis of the graph is dynamic.

    Returns
    -------
    str
        `path`.

    Raises
    ------
    ImportError
        When the onnx package is not installed.
    TypeError
        For a `model` that is not a Module, a layer ONNX export does not know, or a
        `path` / `input_shape` of the wrong kind.
    ValueError
        For an empty `path`, a non-positive dimension, or an `input_shape` the model does
        not accept.
    FileNotFoundError, IsADirectoryError
        When `path`'s folder does not exist, or `path` is a folder.

    Examples
    --------
    >>> model = nnscratch.models.cnn()
    >>> nnscratch.onnx.export(model, "cnn.onnx", input_shape=(1, 28, 28))
    'cnn.onnx'
    """
    path = _check_path(path)
    proto = to_model_proto(model, input_shape)
    write_bytes_atomic(path, proto.SerializeToString())
    return path


def to_model_proto(model: Module, input_shape: Sequence[int]) -> Any:
    """The ONNX model `export` writes, as an ``onnx.ModelProto`` (checked by
    ``onnx.checker.check_model``); arguments and errors as for `export`.

    Useful to inspect the graph (``print(onnx.printer.to_text(proto))``) or to
    run it without a file (``onnxruntime.InferenceSession(proto.SerializeToString())``).
    """
    onnx = _import_onnx()
    from . import __version__

    if not isinstance(model, Module):
        raise TypeError(f"model must be an nnscratch Module (e.g. a Sequential), got "
                        f"{type(model).__name__}")
    input_shape = _check_input_shape(input_shape)

    # The input has the dtype of the model's parameters (the first layer with parameters
    # casts its input to it); a model without parameters takes float32.
    first = next(model.parameters(), None)
    in_dtype = np.dtype(np.float32) if first is None else first.dtype

    graph = _Graph(onnx)
    x = INPUT_NAME
    normalization = getattr(model, "input_normalization", None)
    if normalization is not None:
        x = _input_normalization(graph, normalization, input_shape, in_dtype)
    value, out_shape, out_dtype = _export_module(graph, model, "", x, input_shape, in_dtype)
    graph.name_output(value)

    helper = onnx.helper
    onnx_graph = helper.make_graph(
        graph.nodes, f"nnscratch {type(model).__name__}",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, _element_type(onnx, in_dtype),
                                              [BATCH_AXIS, *input_shape])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, _element_type(onnx, out_dtype),
                                               [BATCH_AXIS, *out_shape])],
        initializer=graph.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="nnscratch",
                              producer_version=__version__, doc_string=repr(model))
    proto.ir_version = helper.find_min_ir_version_for(opsets)   # the oldest that can hold it
    onnx.checker.check_model(proto, full_check=True)   # full: shape inference agrees too
    return proto


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------

def _check_path(path):
    """`path` as a str naming a file that can be created (its folder exists)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike of str, got {type(path).__name__}")
    if not path:
        raise ValueError("path must not be empty")
    if os.path.isdir(path):
        raise IsADirectoryError(f"path {path!r} is a folder; give the name of the .onnx file "
                                f"to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path {path!r}: folder {folder!r} does not exist")
    return path


def _check_input_shape(input_shape):
    """`input_shape` as a tuple of positive ints (a bare int is a 1-tuple)."""
    if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"input_shape must be a tuple of ints (the shape of one sample, e.g. "
                        f"(784,) or (1, 28, 28)), got {type(input_shape).__name__}")
    if len(input_shape) == 0:
        raise ValueError("input_shape must have at least one dimension (the shape of one "
                         "sample, e.g. (784,))")
    return tuple(_checks.integer(f"input_shape[{i}]", d, 1) for i, d in enumerate(input_shape))


# --------------------------------------------------------------------------------------
# The graph being built
# --------------------------------------------------------------------------------------

def _element_type(onnx, dtype):
    """The ONNX element type of a NumPy float dtype."""
    return {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}[dtype.name]


class _Graph:
    """The nodes and initializers (constant tensors) of the graph, in the order built."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes = []
        self.initializers = []

    def constant(self, name, array):
        """Add `array` as an initializer called `name`; returns the name."""
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op_type, inputs, name, doc="", **attributes):
        """Add one node computing ``op_type(*inputs)``; returns its output's name.

        The node is called `name` (`op_type` for the model's own, unnamed, layer) and so
        is its output value (ONNX keeps node and value names apart): in a viewer such as
        Netron each edge carries the layer's name.
        """
        name = name or op_type
        self.nodes.append(self.onnx.helper.make_node(
            op_type, list(inputs), [name], name=name, doc_string=doc, **attributes))
        return name

    def cast(self, value, dtype_from, dtype_to, name):
        """`value` cast to `dtype_to` (a Cast node when the dtypes differ)."""
        if dtype_from == dtype_to:
            return value
        return self.add("Cast", [value], _param(name, "cast"),
                        to=_element_type(self.onnx, dtype_to))

    def name_output(self, value):
        """Make `value` the graph output: rename it to ``"output"`` (an Identity node when
        it is the input itself, e.g. for an empty Sequential)."""
        if value == INPUT_NAME:
            self.add("Identity", [value], OUTPUT_NAME)
            return
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == value:
                    node.output[i] = OUTPUT_NAME


def _input_normalization(graph, normalization, input_shape, dtype):
    """``(input - mean) / std`` per channel -- a Sequential's input_normalization, as
    ``nnscratch.data.Normalize`` computes it in the model's dtype -- as Sub and Div nodes
    whose constants broadcast over a sample of `input_shape`: (C, 1, 1) for (C, H, W)
    images, each channel's value repeated over its block of a flat (C*L,) row."""
    mean, std = normalization.mean.astype(dtype), normalization.std.astype(dtype)
    channels = len(mean)
    if channels == 1:
        shape: tuple[int, ...] = (1,)
    elif len(input_shape) >= 2 and input_shape[0] == channels:
        shape = (channels,) + (1,) * (len(input_shape) - 1)
    elif len(input_shape) == 1 and input_shape[0] % channels == 0:
        block = input_shape[0] // channels
        mean, std, shape = np.repeat(mean, block), np.repeat(std, block), input_shape
    else:
        raise ValueError(f"the model's input_normalization has {channels} channels, which "
                         f"samples of shape {tuple(input_shape)} do not have")
    name = "input_normalization"
    centred = graph.add("Sub", [INPUT_NAME, graph.constant(f"{name}.mean",
                                                           mean.reshape(shape))],
                        f"{name}.sub")
    return graph.add("Div", [centred, graph.constant(f"{name}.std", std.reshape(shape))], name)


# --------------------------------------------------------------------------------------
# One function per layer: (graph, layer, name, x, dtype of x) -> output value name
# --------------------------------------------------------------------------------------

def _param(name, attr):
    """The state_dict name of parameter `attr` of the layer called `name`."""
    return f"{name}.{attr}" if name else attr


def _linear(graph, layer, name, x, dtype):
    # y = x @ W + b:  Gemm computes A @ B + C; W is (in, out) = Gemm's B (K, N): transB = 0
    x = graph.cast(x, dtype, layer.dtype, name)
    inputs = [x, graph.constant(_param(name, "weight"), layer.weight.data)]
    if layer.bias is not None:
        inputs.append(graph.constant(_param(name, "bias"), layer.bias.data))
    return graph.add("Gemm", inputs, name, repr(layer), transA=0, transB=0)


def _conv2d(graph, layer, name, x, dtype):
    # x (N, C, H, W) * weight (O, C, KH, KW) + bias (O,): the layouts are ONNX's already
    x = graph.cast(x, dtype, layer.dtype, name)
    inputs = [x, graph.constant(_param(name, "weight"), layer.weight.data)]
    if layer.bias is not None:
        inputs.append(graph.constant(_param(name, "bias"), layer.bias.data))
    (kh, kw), (sh, sw), (ph, pw) = layer._kernel, layer._stride, layer._padding
    return graph.add("Conv", inputs, name, repr(layer), kernel_shape=[kh, kw],
                     strides=[sh, sw], pads=[ph, pw, ph, pw])    # pads: begins, then ends


def _maxpool2d(graph, layer, name, x, dtype):
    (kh, kw), (sh, sw) = layer._kernel, layer._stride
    return graph.add("MaxPool", [x], name, repr(layer), kernel_shape=[kh, kw],
                     strides=[sh, sw])          # no pads, ceil_mode 0: floor, as nnscratch


def _avgpool2d(graph, layer, name, x, dtype):
    (kh, kw), (sh, sw) = layer._kernel, layer._stride
    return graph.add("AveragePool", [x], name, repr(layer), kernel_shape=[kh, kw],
                     strides=[sh, sw])          # no pads, ceil_mode 0: floor, as nnscratch


def _batchnorm(graph, layer, name, x, dtype):
    # eval mode: y = weight * (x - running_mean) / sqrt(running_var + eps) + bias, per
    # channel (axis 1); ONNX takes (N, C), (N, C, L) and (N, C, H, W) alike
    x = graph.cast(x, dtype, layer.dtype, name)
    inputs = [x] + [graph.constant(_param(name, attr), array) for attr, array in [
        ("weight", layer.weight.data), ("bias", layer.bias.data),
        ("running_mean", layer.running_mean), ("running_var", layer.running_var)]]
    if layer.dtype != np.float64:
        return graph.add("BatchNormalization", inputs, name, repr(layer), epsilon=layer.eps)
    # float64: the epsilon attribute is a float32 (1e-3 would become 1.00000005e-3), so
    # var + eps is added in float64 -- the sum nnscratch's kernels take the root of -- and
    # BatchNormalization adds 0
    eps = graph.constant(_param(name, "eps"), np.array(layer.eps, np.float64))
    inputs[4] = graph.add("Add", [inputs[4], eps], _param(name, "var_plus_eps"))
    return graph.add("BatchNormalization", inputs, name, repr(layer), epsilon=0.0)


def _elementwise(op_type):
    """An exporter for a layer that is one ONNX operator without parameters."""
    def export_layer(graph, layer, name, x, dtype):
        return graph.add(op_type, [x], name, repr(layer))
    return export_layer


def _leaky_relu(graph, layer, name, x, dtype):
    if dtype != np.float64:
        return graph.add("LeakyRelu", [x], name, repr(layer), alpha=layer.negative_slope)
    # float64: LeakyRelu's alpha is a float32 attribute (0.01 would become 0.0099999998);
    # PRelu is the same formula, x if x >= 0 else slope * x, with the slope a float64 tensor
    slope = graph.constant(_param(name, "negative_slope"),
                           np.array(layer.negative_slope, np.float64))
    return graph.add("PRelu", [x, slope], name, repr(layer))


def _softmax(graph, layer, name, x, dtype):
    return graph.add("Softmax", [x], name, repr(layer), axis=1)     # each row of (N, C)


def _flatten(graph, layer, name, x, dtype):
    return graph.add("Flatten", [x], name, repr(layer), axis=1)     # (N, ...) -> (N, prod)


def _global_avg_pool2d(graph, layer, name, x, dtype):
    # x (N, C, H, W) -> (N, C): the mean of each plane in one node (GlobalAveragePool would
    # keep (N, C, 1, 1) and need a Flatten, and ONNX Runtime has it in float32 only).
    # Opset 17 takes the axes as an attribute (from opset 18 on, as a second input).
    return graph.add("ReduceMean", [x], name, repr(layer), axes=[2, 3], keepdims=0)


# The layers export knows, and how. The dtype a layer computes in: its parameters' for
# the layers that cast their input (those with a `dtype`), the input's for the others.
_EXPORTERS = [
    (Linear, _linear), (Conv2d, _conv2d), (BatchNorm1d, _batchnorm), (BatchNorm2d, _batchnorm),
    (MaxPool2d, _maxpool2d), (AvgPool2d, _avgpool2d), (GlobalAvgPool2d, _global_avg_pool2d),
    (ReLU, _elementwise("Relu")), (LeakyReLU, _leaky_relu),
    (Sigmoid, _elementwise("Sigmoid")), (Tanh, _elementwise("Tanh")), (Softmax, _softmax),
    (Flatten, _flatten), (Identity, _elementwise("Identity")),
    (Dropout, _elementwise("Identity")),             # eval mode: y = x
]

# The methods that decide what a layer computes: a subclass that replaces one of them
# computes something else, which export cannot know.
_COMPUTING_METHODS = ("forward", "infer", "__call__", "_f", "_sum")


def _computes_as(module, cls):
    """`module` is a `cls` whose computation is cls's own (a subclass may change only, say,
    its constructor or its repr)."""
    from .module import _Hooked

    kind = type(module)
    # a method set on the instance replaces the computation -- unless it is a hook's
    # stand-in (``register_forward_hook``) calling the class's own method
    replaced = [m for m in _COMPUTING_METHODS if m in module.__dict__
                and not (isinstance(module.__dict__[m], _Hooked)
                         and module.__dict__[m].original is None)]
    return (isinstance(module, cls)
            and all(getattr(kind, m, None) is getattr(cls, m, None) for m in _COMPUTING_METHODS)
            and not replaced)


def _describe(module, name):
    return f"'{name}' ({type(module).__name__})" if name else f"{type(module).__name__}"


def _residual(graph, module, name, x, shape, dtype):
    # y = body(x) + shortcut(x): each branch's nodes under its dotted name ("3.body.0",
    # "3.shortcut.0"), the identity shortcut x itself; then Add, named as the Residual
    y, y_shape, y_dtype = _export_module(graph, module.body, _param(name, "body"), x, shape,
                                         dtype)
    s, s_shape, s_dtype = (x, shape, dtype) if module.shortcut is None else _export_module(
        graph, module.shortcut, _param(name, "shortcut"), x, shape, dtype)
    if y_shape != s_shape:
        branch = "the input (identity)" if module.shortcut is None else "the shortcut"
        raise ValueError(f"input_shape does not fit the model at layer "
                         f"{_describe(module, name)}: the body gives shape {y_shape} per "
                         f"sample and {branch} {s_shape}; they must agree")
    out_dtype = np.result_type(y_dtype, s_dtype)      # numpy's y + s, for mixed dtypes
    y = graph.cast(y, y_dtype, out_dtype, _param(name, "body"))
    s = graph.cast(s, s_dtype, out_dtype, _param(name, "shortcut"))
    y = graph.add("Add", [y, s], name, "Residual: body(x) + shortcut(x)")
    return y, y_shape, out_dtype


def _export_module(graph, module, name, x, shape, dtype):
    """Add the nodes computing `module` on value `x` (per-sample `shape`, `dtype`);
    returns ``(output value, its per-sample shape, its dtype)``."""
    if _computes_as(module, Sequential):
        for child_name, child in module.named_children():
            x, shape, dtype = _export_module(graph, child, _param(name, child_name), x,
                                             shape, dtype)
        return x, shape, dtype
    if _computes_as(module, Residual):
        return _residual(graph, module, name, x, shape, dtype)
    if isinstance(module, ModuleList):
        raise TypeError(f"cannot export {_describe(module, name)} to ONNX: a ModuleList has no "
                        f"forward of its own (the module holding it decides how its entries "
                        f"run); put the layers in a Sequential")
    exporter = next((fn for cls, fn in _EXPORTERS if _computes_as(module, cls)), None)
    if exporter is None:
        known = ", ".join(cls.__name__ for cls, _ in _EXPORTERS)
        raise TypeError(f"cannot export layer {_describe(module, name)} to ONNX: export knows "
                        f"the built-in layers {known} and the Sequential and Residual "
                        f"containers of them, not "
                        f"{type(module).__module__}.{type(module).__qualname__}")
    try:
        out_shape = tuple(module.output_shape(shape))
    except ValueError as exc:
        raise ValueError(f"input_shape does not fit the model at layer "
                         f"{_describe(module, name)}: {exc} (input_shape is the shape of one "
                         f"sample, without the batch axis)") from None
    out_dtype = getattr(module, "dtype", dtype)     # the layers with parameters cast to theirs
    y = exporter(graph, module, name, x, dtype)
    return y, out_shape, np.dtype(out_dtype)
