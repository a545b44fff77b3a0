"""Models to and from PyTorch: ``to_torch(model)`` and ``from_torch(module)``.

    import nnscratch as nn
    from nnscratch.interop import from_torch, to_torch

    net = to_torch(nn.models.lenet())         # a torch.nn.Sequential, same outputs
    model = from_torch(net)                   # and back: an nnscratch Sequential

Both directions copy the weights (nothing is shared) and keep the dtype (float32 <->
torch.float32, float64 <-> torch.float64) and the training/eval mode of every module.

=====================  =========================  =========================================
nnscratch              PyTorch                    notes
=====================  =========================  =========================================
Sequential             nn.Sequential              same child names: "0.weight" <-> "0.weight"
Linear                 nn.Linear                  weight (in, out) here, (out, in) there: .T
Conv2d                 nn.Conv2d                  groups=1, dilation=1, padding_mode="zeros"
MaxPool2d              nn.MaxPool2d               padding=0, dilation=1, ceil_mode=False
BatchNorm1d / 2d       nn.BatchNorm1d / 2d        affine, track_running_stats, a momentum
ReLU, Sigmoid, Tanh    nn.ReLU, Sigmoid, Tanh
LeakyReLU              nn.LeakyReLU               negative_slope
Softmax                nn.Softmax(dim=1)          rows of (N, C)
Flatten                nn.Flatten()               start_dim=1, end_dim=-1
Dropout, Identity      nn.Dropout, nn.Identity
=====================  =========================  =========================================

The state_dict names map one to one, except that PyTorch's batch norm has one more buffer,
``num_batches_tracked`` (a counter PyTorch reads only when ``momentum=None``, which has no
counterpart here; `to_torch` leaves it at 0).

A PyTorch model written as an ``nn.Module`` subclass is traced with
``torch.fx.symbolic_trace``: when its forward is a straight chain of the modules above and
of ``torch.relu`` / ``F.relu`` / ``x.relu()`` (sigmoid, tanh, ``F.leaky_relu``, softmax over
dim 1 alike), ``F.max_pool2d``, ``torch.flatten(x, 1)`` / ``x.view(x.size(0), -1)``, it
becomes a `Sequential` of those layers in call order (its parameters are then named
``"0.weight"``, ... by position). Anything else -- a residual addition, a second input, a
module called twice with its weights, an option nnscratch lacks -- raises `ConversionError`
naming the module (dotted name and class), the option or the traced operation.

PyTorch is imported when a function is called, never by ``import nnscratch``.
"""
import collections

import numpy as np

from . import _random
from .conv import Conv2d, MaxPool2d
from .layers import Dropout, Flatten, Identity, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from .model import Sequential
from .module import Module
from .norm import BatchNorm1d, BatchNorm2d

__all__ = ["to_torch", "from_torch", "ConversionError"]


class ConversionError(NotImplementedError, ValueError):
    """A module, an option or an operation that the other library (or this converter)
    cannot express. Both a NotImplementedError and a ValueError."""


def _torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError("nnscratch.interop needs PyTorch: pip install torch") from err
    return torch


def _named(where, module):
    """How an error names a module: its dotted name in the model and its class."""
    kind = type(module).__name__
    return f"module {where!r} ({kind})" if where else f"the model ({kind})"


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


# =========================================================================================
# nnscratch -> PyTorch
# =========================================================================================

def to_torch(model):
    """A ``torch.nn.Module`` computing what `model` computes, with a copy of its weights.

    A `Sequential` becomes an ``nn.Sequential`` with the same child names, so that
    ``to_torch(model).state_dict()`` has the names of ``model.state_dict()`` (plus batch
    norms' ``num_batches_tracked``); other layers become their ``torch.nn`` counterparts
    (see the module docstring). Parameters and buffers keep their dtype, every module its
    training/eval mode. Torch's random generator is left as it was.

    Raises
    ------
    ConversionError
        For a layer without a PyTorch counterpart here (named by its dotted name and class),
        or a model mixing float32 and float64 layers (a PyTorch model computes in one).
    ImportError
        When PyTorch is not installed.
    """
    torch = _torch()
    if not isinstance(model, Module):
        raise TypeError(f"to_torch takes an nnscratch Module, got {type(model).__name__}")
    _check_one_dtype(model)
    with torch.random.fork_rng(devices=[]):    # the constructors' initial draws are thrown away
        return _to_torch(torch, model, "")


def _check_one_dtype(model):
    first = {}
    for name, array in model.state_dict().items():
        if array.dtype.kind == "f":
            first.setdefault(array.dtype, name)
    if len(first) > 1:
        (a, name_a), (b, name_b) = list(first.items())[:2]
        raise ConversionError(f"the model mixes {a} ({name_a!r}) and {b} ({name_b!r}): a "
                              f"PyTorch model computes in one dtype (give every layer the "
                              f"same dtype=)")


def _to_torch(torch, module, where):
    kind = type(module)
    if kind is Sequential:
        converted = torch.nn.Sequential(collections.OrderedDict(
            (name, _to_torch(torch, child, _join(where, name)))
            for name, child in module.named_children()))
    elif kind in _TO_TORCH:
        converted = _TO_TORCH[kind](torch, module)
    else:
        raise ConversionError(
            f"{_named(where, module)} has no PyTorch counterpart in nnscratch.interop "
            f"(supported: Sequential, {', '.join(k.__name__ for k in _TO_TORCH)})")
    converted.training = module.training
    return converted


def _tensor(torch, array):
    return torch.from_numpy(np.ascontiguousarray(array))


def _torch_dtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]


def _copy_into(torch, pairs):
    """Copy NumPy arrays into torch parameters/buffers: ``[(tensor, array), ...]``."""
    with torch.no_grad():
        for tensor, array in pairs:
            tensor.copy_(_tensor(torch, array))


def _linear_to_torch(torch, layer):
    out = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          dtype=_torch_dtype(torch, layer.dtype))
    _copy_into(torch, [(out.weight, layer.weight.data.T)] +         # (in, out) -> (out, in)
               ([(out.bias, layer.bias.data)] if layer.bias is not None else []))
    return out


def _conv_to_torch(torch, layer):
    out = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          stride=layer.stride, padding=layer.padding,
                          bias=layer.bias is not None, dtype=_torch_dtype(torch, layer.dtype))
    _copy_into(torch, [(out.weight, layer.weight.data)] +
               ([(out.bias, layer.bias.data)] if layer.bias is not None else []))
    return out


def _batchnorm_to_torch(torch, layer):
    kind = torch.nn.BatchNorm1d if isinstance(layer, BatchNorm1d) else torch.nn.BatchNorm2d
    out = kind(layer.num_features, eps=layer.eps, momentum=layer.momentum,
               dtype=_torch_dtype(torch, layer.dtype))
    _copy_into(torch, [(out.weight, layer.weight.data), (out.bias, layer.bias.data),
                       (out.running_mean, layer.running_mean),
                       (out.running_var, layer.running_var)])
    return out      # (num_batches_tracked stays 0: read only when momentum is None)


_TO_TORCH = {
    Linear: _linear_to_torch,
    Conv2d: _conv_to_torch,
    MaxPool2d: lambda torch, m: torch.nn.MaxPool2d(m.kernel_size, m.stride),
    BatchNorm1d: _batchnorm_to_torch,
    BatchNorm2d: _batchnorm_to_torch,
    ReLU: lambda torch, m: torch.nn.ReLU(),
    LeakyReLU: lambda torch, m: torch.nn.LeakyReLU(m.negative_slope),
    Sigmoid: lambda torch, m: torch.nn.Sigmoid(),
    Tanh: lambda torch, m: torch.nn.Tanh(),
    Softmax: lambda torch, m: torch.nn.Softmax(dim=1),
    Flatten: lambda torch, m: torch.nn.Flatten(),
    Dropout: lambda torch, m: torch.nn.Dropout(m.p),
    Identity: lambda torch, m: torch.nn.Identity(),
}


# =========================================================================================
# PyTorch -> nnscratch
# =========================================================================================

def from_torch(module):
    """An nnscratch model computing what the PyTorch `module` computes, with a copy of its
    weights.

    ``nn.Sequential`` becomes a `Sequential` (nested ones nested: the state_dict names are
    PyTorch's, without ``num_batches_tracked``), a supported ``torch.nn`` layer its
    nnscratch layer, and a custom ``nn.Module`` whose traced forward is a straight chain a
    `Sequential` of its steps (see the module docstring). Each module keeps its
    training/eval mode; the library generator (``nnscratch.seed``) is left as it was.

    Raises
    ------
    ConversionError
        Naming the module (dotted name and class) and the option, or the traced operation
        (e.g. ``add`` for a residual shortcut), that nnscratch cannot express.
    ImportError
        When PyTorch is not installed.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    state = _random.get_state()     # building layers draws initial weights: put them back
    try:
        return _from_torch(torch, module, "")
    finally:
        _random.set_state(state)


def _from_torch(torch, module, where):
    kind = type(module)
    if kind is torch.nn.Sequential:
        converted = Sequential(*[_from_torch(torch, child, _join(where, name))
                                 for name, child in module.named_children()])
    elif kind.__name__ in _FROM_TORCH and getattr(torch.nn, kind.__name__, None) is kind:
        converted = _FROM_TORCH[kind.__name__](torch, module, _Where(where, module))
    elif kind.__module__.startswith(("torch.nn.", "torch.ao.nn.")):
        raise ConversionError(
            f"{_named(where, module)} is not supported by from_torch (supported: Sequential, "
            f"{', '.join(_FROM_TORCH)}, and custom modules chaining them)")
    else:
        converted = _from_traced(torch, module, where)
    converted.training = module.training
    return converted


class _Where:
    """A module (or a call in its traced forward: `detail`) being converted: makes the
    errors that name it and its option."""

    def __init__(self, where, module, detail=None):
        self.name = _named(where, module) + (f", {detail}" if detail else "")

    def option(self, name, value, need):
        return ConversionError(f"{self.name}: {name}={value!r} is not supported (nnscratch "
                               f"needs {need})")

    def build(self, make, *args, **kwargs):
        """``make(*args, **kwargs)``, its argument errors as ConversionError naming the
        module."""
        try:
            return make(*args, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConversionError(f"{self.name} cannot be converted: {err}") from None


def _numpy(tensor):
    return tensor.detach().cpu().numpy()


def _float_dtype(torch, tensor, at):
    dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(tensor.dtype)
    if dtype is None:
        raise at.option("dtype", str(tensor.dtype).replace("torch.", ""), "float32 or float64")
    return dtype


def _int_or_pair(value):
    """A size as nnscratch shows it: an int for equal sides, else the pair."""
    if isinstance(value, (tuple, list)):
        return int(value[0]) if len(set(value)) == 1 else tuple(int(v) for v in value)
    return int(value)


def _linear_from_torch(torch, m, at):
    layer = at.build(Linear, m.in_features, m.out_features, bias=m.bias is not None,
                     dtype=_float_dtype(torch, m.weight, at))
    layer.weight.data = _numpy(m.weight).T                  # (out, in) -> (in, out)
    if m.bias is not None:
        layer.bias.data = _numpy(m.bias)
    return layer


def _conv_from_torch(torch, m, at):
    if m.groups != 1:
        raise at.option("groups", m.groups, "groups=1")
    if tuple(m.dilation) != (1, 1):
        raise at.option("dilation", m.dilation, "dilation=1")
    if m.padding_mode != "zeros":
        raise at.option("padding_mode", m.padding_mode, "padding_mode='zeros'")
    padding = m.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":        # (PyTorch allows it with stride 1 only)
        if any(k % 2 == 0 for k in m.kernel_size):
            raise at.option("padding", padding, "odd kernel sizes for 'same' (an even one "
                                                "pads one side more)")
        padding = tuple(k // 2 for k in m.kernel_size)
    layer = at.build(Conv2d, m.in_channels, m.out_channels, _int_or_pair(m.kernel_size),
                     stride=_int_or_pair(m.stride), padding=_int_or_pair(padding),
                     bias=m.bias is not None, dtype=_float_dtype(torch, m.weight, at))
    layer.weight.data = _numpy(m.weight)
    if m.bias is not None:
        layer.bias.data = _numpy(m.bias)
    return layer


def _maxpool(at, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False):
    for name, value, default in (("padding", padding, 0), ("dilation", dilation, 1),
                                 ("ceil_mode", ceil_mode, False),
                                 ("return_indices", return_indices, False)):
        sides = value if isinstance(value, (tuple, list)) else [value]
        if not all(v == default for v in sides):
            raise at.option(name, value, f"{name}={default!r}")
    kernel_size = _int_or_pair(kernel_size)
    # (F.max_pool2d's stride=None, or PyTorch's [] of old, means the kernel size)
    stride = kernel_size if stride is None or stride == [] else _int_or_pair(stride)
    return at.build(MaxPool2d, kernel_size, stride)


def _batchnorm_from_torch(torch, m, at):
    if not m.affine:
        raise at.option("affine", False, "affine=True (a weight and a bias)")
    if not m.track_running_stats:
        raise at.option("track_running_stats", False, "track_running_stats=True")
    if m.momentum is None:
        raise at.option("momentum", None, "a number (a cumulative average has no counterpart)")
    kind = BatchNorm1d if type(m).__name__ == "BatchNorm1d" else BatchNorm2d
    layer = at.build(kind, m.num_features, eps=m.eps, momentum=m.momentum,
                     dtype=_float_dtype(torch, m.weight, at))
    layer.weight.data = _numpy(m.weight)
    layer.bias.data = _numpy(m.bias)
    np.copyto(layer.running_mean, _numpy(m.running_mean), casting="same_kind")
    np.copyto(layer.running_var, _numpy(m.running_var), casting="same_kind")
    return layer


def _softmax(at, dim):
    if dim not in (1, -1, None):        # (None: PyTorch's implicit dim, 1 for (N, C))
        raise at.option("dim", dim, "dim=1 (the rows of (N, C))")
    return Softmax()


def _flatten(at, start_dim, end_dim):
    if start_dim != 1:
        raise at.option("start_dim", start_dim, "start_dim=1 (the batch axis kept)")
    if end_dim != -1:
        raise at.option("end_dim", end_dim, "end_dim=-1")
    return Flatten()


# torch.nn class name -> converter(torch, module, at); the class itself is checked to be
# torch.nn's (a user's class of the same name is traced instead)
_FROM_TORCH = {
    "Linear": _linear_from_torch,
    "Conv2d": _conv_from_torch,
    "MaxPool2d": lambda torch, m, at: _maxpool(at, m.kernel_size, m.stride, m.padding,
                                               m.dilation, m.ceil_mode, m.return_indices),
    "BatchNorm1d": _batchnorm_from_torch,
    "BatchNorm2d": _batchnorm_from_torch,
    "ReLU": lambda torch, m, at: ReLU(),
    "LeakyReLU": lambda torch, m, at: at.build(LeakyReLU, m.negative_slope),
    "Sigmoid": lambda torch, m, at: Sigmoid(),
    "Tanh": lambda torch, m, at: Tanh(),
    "Softmax": lambda torch, m, at: _softmax(at, m.dim),
    "Flatten": lambda torch, m, at: _flatten(at, m.start_dim, m.end_dim),
    "Dropout": lambda torch, m, at: at.build(Dropout, m.p),
    "Identity": lambda torch, m, at: Identity(),
}


# --- custom modules, through torch.fx ----------------------------------------------------

# The functions and tensor methods a traced chain may call: name -> (signature, builder).
# A signature binds the call's arguments by PyTorch's parameter names and defaults; the
# builder makes the layer from them (``input`` is the chain's tensor, checked apart).

def _sig_unary(input, inplace=False):
    return {}


def _sig_leaky_relu(input, negative_slope=0.01, inplace=False):
    return {"negative_slope": negative_slope}


def _sig_flatten(input, start_dim=0, end_dim=-1):
    return {"start_dim": start_dim, "end_dim": end_dim}


def _sig_softmax(input, dim=None, _stacklevel=3, dtype=None):      # F.softmax
    return {"dim": dim, "dtype": dtype}


def _sig_tensor_softmax(input, dim, dtype=None):          # torch.softmax, x.softmax
    return {"dim": dim, "dtype": dtype}


def _sig_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
    return {"kernel_size": kernel_size, "stride": stride, "padding": padding,
            "dilation": dilation, "ceil_mode": ceil_mode, "return_indices": return_indices}


def _sig_view(input, *shape):
    return {"shape": shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
            else shape}


def _softmax_op(at, dim, dtype):
    if dtype is not None:
        raise at.option("dtype", dtype, "dtype=None")
    return _softmax(at, dim)


_OPS = {
    "relu": (_sig_unary, lambda at: ReLU()),
    "sigmoid": (_sig_unary, lambda at: Sigmoid()),
    "tanh": (_sig_unary, lambda at: Tanh()),
    "leaky_relu": (_sig_leaky_relu, lambda at, negative_slope: at.build(LeakyReLU,
                                                                         negative_slope)),
    "flatten": (_sig_flatten, _flatten),
    "softmax": (_sig_softmax, _softmax_op),
    "tensor_softmax": (_sig_tensor_softmax, _softmax_op),
    "max_pool2d": (_sig_max_pool2d, _maxpool),
    "view": (_sig_view, None),       # (x.view(batch, -1): checked in _from_traced)
    "reshape": (_sig_view, None),
}


def _functions(torch):
    """{function object: op name} of the functions a traced chain may call."""
    F = torch.nn.functional
    return {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid",
            F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
            F.leaky_relu: "leaky_relu", torch.flatten: "flatten",
            torch.softmax: "tensor_softmax", F.softmax: "softmax", F.max_pool2d: "max_pool2d",
            torch.reshape: "reshape"}


# tensor method name -> op name
_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "flatten": "flatten",
            "softmax": "tensor_softmax", "view": "view", "reshape": "reshape"}


def _from_traced(torch, module, where):
    """The `Sequential` of the straight chain that `module`'s traced forward computes."""
    import torch.fx

    named = _named(where, module)
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as err:
        raise ConversionError(
            f"{named} is not a layer from_torch knows, and torch.fx.symbolic_trace cannot "
            f"trace its forward ({type(err).__name__}: {err})") from None
    functions = _functions(torch)
    layers, called = [], set()
    current = None          # the node holding the chain's tensor so far
    chain = set()           # it and the nodes before it (all of batch size at axis 0)
    batch = set()           # nodes holding the batch size (x.size(0), x.shape[0])
    sizes = set()           # nodes holding a shape (x.size(), x.shape)

    def fail(node, what, reason=_NO_LAYER):
        return ConversionError(f"{named}: its forward calls {what} (traced node "
                               f"{node.name!r}), which from_torch cannot convert: {reason}")

    for node in graph.nodes:
        what, args = _describe(node), list(node.args)
        if node.op == "placeholder":
            if current is not None:
                raise ConversionError(f"{named}: its forward takes a second input "
                                      f"{node.target!r}; from_torch converts one input only")
            current = node
            chain.add(node)
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise ConversionError(f"{named}: its forward returns something else than "
                                      f"the last step of a straight chain ({_NOT_A_CHAIN})")
            break
        if node.op == "get_attr":
            raise fail(node, f"the parameter or buffer {node.target!r} directly",
                       "weights are converted only inside layer modules")
        # the batch size, for x.view(x.size(0), -1): x.size(0), x.size()[0], x.shape[0] of
        # any tensor of the chain
        of_chain = bool(args) and isinstance(args[0], torch.fx.Node) and args[0] in chain \
            and not node.kwargs
        if node.op == "call_method" and node.target == "size" and of_chain \
                and args[1:] in ([], [0]):
            (batch if args[1:] == [0] else sizes).add(node)
            continue
        if node.op == "call_function" and what == "getattr" and of_chain \
                and args[1:] == ["shape"]:
            sizes.add(node)
            continue
        if node.op == "call_function" and what == "getitem" and args \
                and isinstance(args[0], torch.fx.Node) and args[0] in sizes and args[1:] == [0]:
            batch.add(node)
            continue
        # a step of the chain: its tensor input is the chain's tensor so far
        if not args or args[0] is not current or any(
                isinstance(a, torch.fx.Node) and a not in batch
                for a in args[1:] + list(node.kwargs.values())):
            raise fail(node, what, _NOT_A_CHAIN)
        if node.op == "call_module":
            sub = module.get_submodule(node.target)
            if node.target in called and any(True for _ in sub.parameters()):
                raise fail(node, what, f"module {node.target!r} is called twice: shared "
                                       f"weights, which a Sequential cannot express")
            called.add(node.target)
            if args[1:] or node.kwargs:
                raise fail(node, what, "more than one argument")
            layers.append(_from_torch(torch, sub, _join(where, node.target)))
        elif node.op in ("call_function", "call_method"):
            op = (functions if node.op == "call_function" else _METHODS).get(node.target)
            if op is None:
                raise fail(node, what)
            signature, builder = _OPS[op]
            try:
                bound = signature(*args, **node.kwargs)
            except TypeError as err:
                raise fail(node, what, str(err)) from None
            at = _Where(where, module, f"its call of {what} (traced node {node.name!r})")
            if builder is None:       # view / reshape: only (batch, -1) is a Flatten
                shape = list(bound["shape"])
                if not (len(shape) == 2 and isinstance(shape[0], torch.fx.Node)
                        and shape[0] in batch and shape[1] == -1):
                    raise fail(node, what, f"shape ({', '.join(map(str, shape))}) is not "
                                           f"(x.size(0), -1), a Flatten")
                layer = Flatten()
            else:
                layer = builder(at, **bound)
            layer.training = module.training
            layers.append(layer)
        else:
            raise fail(node, what)
        current = node
        chain.add(node)
    return Sequential(*layers)


_NO_LAYER = ("no nnscratch layer computes it (custom modules convert when their forward is a "
             "straight chain of the supported layers and functions)")
_NOT_A_CHAIN = ("it does not take just the previous step's output, and from_torch converts "
                "straight chains only (e.g. a residual shortcut's addition of two branches "
                "has no nnscratch layer here)")


def _describe(node):
    """A traced node's operation, as a user wrote it: 'add', 'relu', 'conv1' (a module)."""
    if node.op in ("call_module", "call_method"):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))
