"""Models to and from PyTorch: ``to_torch(model)`` and ``from_torch(module)``.

    import nnscratch as nn
    from nnscratch.interop import from_torch, to_torch

    net = to_torch(nn.models.resnet())        # a torch.nn.Sequential, same outputs
    model = from_torch(net)                   # and back: an nnscratch Sequential

Both directions copy the weights (nothing is shared) and keep the dtype (float32 <->
torch.float32, float64 <-> torch.float64) and the training/eval mode of every module.

=====================  =========================  =========================================
nnscratch              PyTorch                    notes
=====================  =========================  =========================================
Sequential             nn.Sequential              positional child names: "0.weight"
Residual               TorchResidual (below)      children "body" and "shortcut" (None: x)
Linear                 nn.Linear                  weight (in, out) here, (out, in) there: .T
Conv2d                 nn.Conv2d                  groups=1, dilation=1, padding_mode="zeros"
MaxPool2d              nn.MaxPool2d               padding=0, dilation=1, ceil_mode=False
AvgPool2d              nn.AvgPool2d               padding=0, ceil_mode=False,
                                                  divisor_override=None (count_include_pad
                                                  either way: there is no padding)
GlobalAvgPool2d        TorchGlobalAvgPool2d       x.mean((2, 3)); from PyTorch also
                                                  nn.AdaptiveAvgPool2d(1) when a Flatten
                                                  follows (GlobalAvgPool2d, then Flatten)
BatchNorm1d / 2d       nn.BatchNorm1d / 2d        affine, track_running_stats, a momentum
ReLU, Sigmoid, Tanh    nn.ReLU, Sigmoid, Tanh
LeakyReLU              nn.LeakyReLU               negative_slope
Softmax                nn.Softmax(dim=1)          rows of (N, C)
Flatten                nn.Flatten()               start_dim=1, end_dim=-1
Dropout, Identity      nn.Dropout, nn.Identity
=====================  =========================  =========================================

PyTorch has no residual layer and no global average pool that gives (N, C), so this module
defines two small ``torch.nn.Module`` classes for them, ``nnscratch.interop.TorchResidual``
(``body(x) + shortcut(x)``, or ``body(x) + x`` when ``shortcut`` is None) and
``TorchGlobalAvgPool2d``. They are made at first use (PyTorch is imported then, never by
``import nnscratch``) and pickle by name, so ``torch.save(net)`` / ``torch.load`` work.

`to_torch` keeps the state_dict names: one to one, except that PyTorch's batch norm has one
more buffer, ``num_batches_tracked`` (a counter PyTorch reads only when ``momentum=None``,
which has no counterpart here; `to_torch` leaves it at 0). `from_torch` names layers by
position, as nnscratch's `Sequential` does: the names are PyTorch's when its model is an
``nn.Sequential`` with positional names, and otherwise -- a named ``nn.Sequential``
(``OrderedDict(fc1=..., ...)``), a custom module -- ``torch_state_dict_names(module)``
gives ``{PyTorch name: nnscratch name}``.

A PyTorch model written as an ``nn.Module`` subclass is traced with
``torch.fx.symbolic_trace`` and read back as layers:

- a chain of steps, each taking the previous one's output: the modules above and
  ``torch.relu`` / ``F.relu`` / ``x.relu()`` (sigmoid, tanh, ``F.leaky_relu``, softmax over
  dim 1 alike), ``F.max_pool2d``, ``F.avg_pool2d``, ``torch.flatten(x, 1)`` /
  ``x.view(x.size(0), -1)``,
  ``x.mean((2, 3))`` and ``F.adaptive_avg_pool2d(x, 1)`` (a Flatten next), becomes a
  `Sequential` of those layers in call order;
- an addition ``a + b`` (``torch.add``, ``a.add(b)``, ``out += b``) whose operands are two
  such chains from one value ``v`` -- the basic block's ``relu(bn2(conv2(relu(bn1(conv1(x)))))
  + shortcut(x))``, or ``x + body(x)`` -- becomes ``Residual(body, shortcut)`` applied to
  ``v``: the body is the longer branch (the left one when they are as long), the shortcut
  the other, None when it is ``v`` itself. Branches may hold residual blocks in turn.

Anything else raises `ConversionError` naming the module (dotted name and class), the
option or the traced operation: a second input, a step reading two earlier results that is
not such an addition (``torch.cat``, ``a * b``), a value that two branches use other than
as their fork (a layer tree would hold its layers twice), a module with weights called
twice, an in-place operation on a value another branch reads, a result that does not reach
the output, an option nnscratch lacks.
"""
from __future__ import annotations

import collections
import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _random
from .conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .layers import (Dropout, Flatten, Identity, LeakyReLU, Linear, ReLU, Residual, Sigmoid,
                     Softmax, Tanh)
from .model import Sequential
from .module import Module
from .norm import BatchNorm1d, BatchNorm2d

if TYPE_CHECKING:
    import torch

__all__ = ["to_torch", "from_torch", "torch_state_dict_names", "ConversionError"]
# (and TorchResidual, TorchGlobalAvgPool2d: attributes made at first use, not in __all__, so
# that ``from nnscratch.interop import *`` does not import PyTorch)


class ConversionError(NotImplementedError, ValueError):
    """A module, an option or an operation that the other library (or this converter)
    cannot express. Both a NotImplementedError and a ValueError."""


def _torch() -> Any:
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


def _has_weights(module):
    return any(True for _ in module.parameters())


# =========================================================================================
# PyTorch modules for the nnscratch layers torch.nn lacks
# =========================================================================================

_TORCH_CLASSES: dict = {}


def _torch_classes():
    """``{"TorchResidual": class, "TorchGlobalAvgPool2d": class}``, defined at the first
    call (PyTorch is imported then)."""
    if not _TORCH_CLASSES:
        torch: Any = _torch()

        class TorchResidual(torch.nn.Module):
            """``y = body(x) + shortcut(x)``, or ``body(x) + x`` when `shortcut` is None:
            nnscratch's `Residual`, with its children's names ("body", "shortcut")."""

            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body = body
                self.add_module("shortcut", shortcut)      # (None: listed, holds no state)

            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        class TorchGlobalAvgPool2d(torch.nn.Module):
            """(N, C, H, W) -> (N, C), the mean of each plane: nnscratch's
            `GlobalAvgPool2d` (``nn.AdaptiveAvgPool2d(1)`` and ``nn.Flatten()`` in one)."""

            def forward(self, x):
                return x.mean((2, 3))

        for cls in (TorchResidual, TorchGlobalAvgPool2d):
            cls.__qualname__ = cls.__name__     # pickled as nnscratch.interop.<name>
            _TORCH_CLASSES[cls.__name__] = cls
    return _TORCH_CLASSES


def __getattr__(name):
    """``nnscratch.interop.TorchResidual`` and ``TorchGlobalAvgPool2d`` (PEP 562)."""
    if name in ("TorchResidual", "TorchGlobalAvgPool2d"):
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# =========================================================================================
# nnscratch -> PyTorch
# =========================================================================================

def to_torch(model: Module) -> torch.nn.Module:
    """A ``torch.nn.Module`` computing what `model` computes, with a copy of its weights.

    A `Sequential` becomes an ``nn.Sequential`` with the same child names, a `Residual` a
    `TorchResidual` with children "body" and "shortcut", so that
    ``to_torch(model).state_dict()`` has the names of ``model.state_dict()`` (plus batch
    norms' ``num_batches_tracked``); other layers become their ``torch.nn`` counterparts
    (see the module docstring). Torch's random generator is left as it was.

    Parameters
    ----------
    model : nnscratch.Module
        A `Sequential` or a single layer, every layer of one float dtype.

    Returns
    -------
    torch.nn.Module
        Its parameters and buffers have the model's dtype (float32 or float64) and hold
        copies of its values, Linear weights transposed to PyTorch's (out, in); every
        module has its counterpart's training/eval mode.

    Raises
    ------
    ConversionError
        For a layer without a PyTorch counterpart here (named by its dotted name and class),
        a model mixing float32 and float64 layers (a PyTorch model computes in one), or a
        Sequential with an ``input_normalization`` (``fit(normalize=...)``: torch.nn has
        no layer for it; it is refused rather than dropped, which would change every
        output).
    TypeError
        When `model` is not an nnscratch Module.
    ImportError
        When PyTorch is not installed.
    """
    torch = _torch()
    if not isinstance(model, Module):
        raise TypeError(f"to_torch takes an nnscratch Module, got {type(model).__name__}")
    normalization = getattr(model, "input_normalization", None)
    if normalization is not None:
        raise ConversionError(
            f"the model normalises its inputs ({normalization!r}, model.input_normalization), "
            f"which torch.nn has no layer for: normalise the inputs on the PyTorch side "
            f"(torchvision.transforms.Normalize(mean, std)) and convert a copy without it "
            f"(model.input_normalization = None)")
    _check_one_dtype(model)
    with torch.random.fork_rng(devices=[]):    # the constructors' initial draws are thrown away
        return _to_torch(torch, model, "")


def _check_one_dtype(model):
    first: dict[str, Any] = {}
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
    elif kind is Residual:
        shortcut = module.shortcut
        converted = _torch_classes()["TorchResidual"](
            _to_torch(torch, module.body, _join(where, "body")),
            None if shortcut is None else _to_torch(torch, shortcut, _join(where, "shortcut")))
    elif kind in _TO_TORCH:
        converted = _TO_TORCH[kind](torch, module)
    else:
        raise ConversionError(
            f"{_named(where, module)} has no PyTorch counterpart in nnscratch.interop "
            f"(supported: Sequential, Residual, {', '.join(k.__name__ for k in _TO_TORCH)})")
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
    AvgPool2d: lambda torch, m: torch.nn.AvgPool2d(m.kernel_size, m.stride),
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
    GlobalAvgPool2d: lambda torch, m: _torch_classes()["TorchGlobalAvgPool2d"](),
}


# =========================================================================================
# PyTorch -> nnscratch
# =========================================================================================

def from_torch(module: torch.nn.Module) -> Module:
    """An nnscratch model computing what the PyTorch `module` computes, with a copy of its
    weights.

    ``nn.Sequential`` becomes a `Sequential` (nested ones nested), `TorchResidual` a
    `Residual`, a supported ``torch.nn`` layer its nnscratch layer, and a custom
    ``nn.Module`` whose traced forward is a chain of those, with residual additions, a
    `Sequential` of its steps (see the module docstring). Each module keeps its
    training/eval mode; the library generator (``nnscratch.seed``) is left as it was.

    nnscratch's `Sequential` names its layers by position ("0", "1", ...), so the
    state_dict names are PyTorch's only for an ``nn.Sequential`` with positional names (and
    without ``num_batches_tracked``). For named children (an ``OrderedDict``) or a custom
    module, ``torch_state_dict_names(module)`` gives the correspondence.

    Parameters
    ----------
    module : torch.nn.Module
        Its parameters float32 or float64.

    Returns
    -------
    nnscratch.Module
        A `Sequential` (for an ``nn.Sequential`` or a custom module) or a single layer,
        holding copies of the weights and buffers, Linear weights transposed to nnscratch's
        (in, out), in the module's dtype.

    Raises
    ------
    ConversionError
        Naming the module (dotted name and class) and the option, or the traced operation
        (e.g. ``cat``, or an ``add`` that is not a residual block's), that nnscratch cannot
        express.
    TypeError
        When `module` is not a ``torch.nn.Module``.
    ImportError
        When PyTorch is not installed.
    """
    return _convert(module, "from_torch")[0]


def torch_state_dict_names(module: torch.nn.Module) -> dict[str, str]:
    """``{PyTorch state_dict name: nnscratch state_dict name}`` for ``from_torch(module)``.

    E.g. ``{"fc1.weight": "0.weight", "fc1.bias": "0.bias", "fc2.weight": "2.weight", ...}``
    for ``nn.Sequential(OrderedDict(fc1=..., act=..., fc2=...))``, or
    ``{"layer1.0.conv1.weight": "3.body.0.weight", ...}`` for a custom ResNet. Its order is
    that of the nnscratch state_dict (``list(names.values()) ==
    list(from_torch(module).state_dict())``); batch norms' ``num_batches_tracked`` has no
    entry. The values need the conversion from_torch makes: a Linear weight is transposed.

    Parameters
    ----------
    module : torch.nn.Module
        A module that `from_torch` converts.

    Returns
    -------
    dict of str to str

    Raises
    ------
    ConversionError, TypeError, ImportError
        As `from_torch`.
    """
    model, record = _convert(module, "torch_state_dict_names")
    names = {}
    for path, layer in model.named_modules():
        origin = record.origins.get(id(layer))
        if origin is not None:
            for name in layer.state_dict():
                names[_join(origin, name)] = _join(path, name)
    return names


def _convert(module, caller):
    """``(model, record)``: `module` converted, and what was noted on the way."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{caller} takes a torch.nn.Module, got {type(module).__name__}")
    state = _random.get_state()     # building layers draws initial weights: put them back
    try:
        record = _Record()
        model = _from_torch(torch, module, "", record)
        record.check_pools()
        return model, record
    finally:
        _random.set_state(state)


class _Record:
    """What a conversion notes on the way: the PyTorch module each nnscratch layer with state
    comes from (for torch_state_dict_names), and the global pools that are (N, C, 1, 1) in
    PyTorch until a Flatten follows them."""

    def __init__(self):
        self.origins = {}      # id(nnscratch layer) -> its torch module's dotted name
        self.pools = {}        # id(GlobalAvgPool2d) -> its name in an error, until flattened

    def sequence(self, layers):
        """``Sequential(*layers)``; a pool that a Flatten follows is settled."""
        for layer, after in zip(layers, layers[1:]):
            if isinstance(_first(after), Flatten):
                self.pools.pop(id(_last(layer)), None)
        return Sequential(*layers)

    def check_pools(self):
        if self.pools:
            raise ConversionError(
                f"{next(iter(self.pools.values()))} gives (N, C, 1, 1), and nnscratch's "
                f"GlobalAvgPool2d (N, C): from_torch converts it when a Flatten "
                f"(nn.Flatten(), torch.flatten(x, 1), x.view(x.size(0), -1)) comes next")


def _first(layer):
    while isinstance(layer, Sequential) and len(layer):
        layer = layer[0]
    return layer


def _last(layer):
    while isinstance(layer, Sequential) and len(layer):
        layer = layer[-1]
    return layer


def _from_torch(torch, module, where, record):
    kind, ours = type(module), _torch_classes()
    if kind is torch.nn.Sequential:
        converted = _sequential_from_torch(torch, module, where, record)
    elif kind is ours["TorchResidual"]:
        shortcut = module.shortcut
        converted = Residual(
            _from_torch(torch, module.body, _join(where, "body"), record),
            None if shortcut is None else
            _from_torch(torch, shortcut, _join(where, "shortcut"), record))
    elif kind is ours["TorchGlobalAvgPool2d"]:
        converted = GlobalAvgPool2d()
    elif kind.__name__ in _FROM_TORCH and getattr(torch.nn, kind.__name__, None) is kind:
        converted = _FROM_TORCH[kind.__name__](torch, module, _Where(where, module))
        record.origins[id(converted)] = where
        if kind.__name__ == "AdaptiveAvgPool2d":
            record.pools[id(converted)] = _named(where, module)
    elif kind.__module__.startswith(("torch.nn.", "torch.ao.nn.")):
        raise ConversionError(
            f"{_named(where, module)} is not supported by from_torch (supported: Sequential, "
            f"{', '.join(_FROM_TORCH)}, and custom modules chaining them)")
    else:
        converted = _TracedForward(torch, module, where, record).convert()
    converted.training = module.training
    return converted


def _sequential_from_torch(torch, module, where, record):
    layers: list[Module] = []
    seen: dict[int, str] = {}
    for name, child in module._modules.items():   # (named_children() skips a repeated child)
        if child is None:
            continue
        if id(child) in seen and _has_weights(child):
            raise ConversionError(
                f"{_named(_join(where, name), child)} is module {seen[id(child)]!r} again: "
                f"shared weights, which nnscratch's layers cannot express")
        seen.setdefault(id(child), _join(where, name))
        layers.append(_from_torch(torch, child, _join(where, name), record))
    return record.sequence(layers)


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


def _pool(at, kind, kernel_size, stride, options):
    """A `kind` pooling layer (MaxPool2d, AvgPool2d) from PyTorch's arguments; `options`:
    (name, value, the only value nnscratch has) triples, a pair's sides each checked."""
    for name, value, default in options:
        sides = value if isinstance(value, (tuple, list)) else [value]
        if not all(v == default for v in sides):
            raise at.option(name, value, f"{name}={default!r}")
    kernel_size = _int_or_pair(kernel_size)
    # (F.max_pool2d's stride=None, or PyTorch's [] of old, means the kernel size)
    stride = kernel_size if stride is None or stride == [] else _int_or_pair(stride)
    return at.build(kind, kernel_size, stride)


def _maxpool(at, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False):
    return _pool(at, MaxPool2d, kernel_size, stride,
                 [("padding", padding, 0), ("dilation", dilation, 1),
                  ("ceil_mode", ceil_mode, False), ("return_indices", return_indices, False)])


def _avgpool(at, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    # count_include_pad counts the padding in each window's divisor: with none, any value
    return _pool(at, AvgPool2d, kernel_size, stride,
                 [("padding", padding, 0), ("ceil_mode", ceil_mode, False),
                  ("divisor_override", divisor_override, None)])


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


def _global_pool(at, output_size):
    sides = output_size if isinstance(output_size, (tuple, list)) else [output_size]
    if not all(side == 1 for side in sides):
        raise at.option("output_size", output_size, "output_size=1 (a global average pool)")
    return GlobalAvgPool2d()


# torch.nn class name -> converter(torch, module, at); the class itself is checked to be
# torch.nn's (a user's class of the same name is traced instead)
_FROM_TORCH = {
    "Linear": _linear_from_torch,
    "Conv2d": _conv_from_torch,
    "MaxPool2d": lambda torch, m, at: _maxpool(at, m.kernel_size, m.stride, m.padding,
                                               m.dilation, m.ceil_mode, m.return_indices),
    "AvgPool2d": lambda torch, m, at: _avgpool(at, m.kernel_size, m.stride, m.padding,
                                               m.ceil_mode, m.count_include_pad,
                                               m.divisor_override),
    "AdaptiveAvgPool2d": lambda torch, m, at: _global_pool(at, m.output_size),
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

# The functions and tensor methods a traced forward may call: name -> (signature, builder).
# A signature binds the call's arguments by PyTorch's parameter names and defaults; the
# builder makes the layer from them (``input`` is the step's tensor, and ``inplace`` is
# checked apart).

def _sig_unary(input, inplace=False):
    return {"inplace": inplace}


def _sig_leaky_relu(input, negative_slope=0.01, inplace=False):
    return {"negative_slope": negative_slope, "inplace": inplace}


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


def _sig_avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                    count_include_pad=True, divisor_override=None):
    return {"kernel_size": kernel_size, "stride": stride, "padding": padding,
            "ceil_mode": ceil_mode, "count_include_pad": count_include_pad,
            "divisor_override": divisor_override}


def _sig_adaptive_avg_pool2d(input, output_size):
    return {"output_size": output_size}


def _sig_mean(input, dim=None, keepdim=False, *, dtype=None):     # torch.mean, x.mean
    return {"dim": dim, "keepdim": keepdim, "dtype": dtype}


def _sig_view(input, *shape):
    return {"shape": shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
            else shape}


def _softmax_op(at, dim, dtype):
    if dtype is not None:
        raise at.option("dtype", dtype, "dtype=None")
    return _softmax(at, dim)


def _mean_op(at, dim, keepdim, dtype):
    # over the planes of (N, C, H, W): dims (2, 3), or (-2, -1)
    if not (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim)
            and sorted(d % 4 for d in dim) == [2, 3]):
        raise at.option("dim", dim, "dim=(2, 3), the mean of each plane: a GlobalAvgPool2d")
    if dtype is not None:
        raise at.option("dtype", dtype, "dtype=None")
    return GlobalAvgPool2d()


_OPS: dict[str, Any] = {
    "relu": (_sig_unary, lambda at: ReLU()),
    "sigmoid": (_sig_unary, lambda at: Sigmoid()),
    "tanh": (_sig_unary, lambda at: Tanh()),
    "leaky_relu": (_sig_leaky_relu, lambda at, negative_slope: at.build(LeakyReLU,
                                                                         negative_slope)),
    "flatten": (_sig_flatten, _flatten),
    "softmax": (_sig_softmax, _softmax_op),
    "tensor_softmax": (_sig_tensor_softmax, _softmax_op),
    "max_pool2d": (_sig_max_pool2d, _maxpool),
    "avg_pool2d": (_sig_avg_pool2d, _avgpool),
    "adaptive_avg_pool2d": (_sig_adaptive_avg_pool2d, _global_pool),   # (N, C, 1, 1)
    "mean": (_sig_mean, _mean_op),        # (N, C, 1, 1) with keepdim=True
    "view": (_sig_view, None),       # (x.view(batch, -1): checked in _TracedForward)
    "reshape": (_sig_view, None),
}


def _functions(torch):
    """{function object: op name} of the functions a traced forward may call."""
    F = torch.nn.functional
    return {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid",
            F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
            F.leaky_relu: "leaky_relu", torch.flatten: "flatten",
            torch.softmax: "tensor_softmax", F.softmax: "softmax", F.max_pool2d: "max_pool2d",
            F.avg_pool2d: "avg_pool2d",
            F.adaptive_avg_pool2d: "adaptive_avg_pool2d", torch.mean: "mean",
            torch.reshape: "reshape"}


# tensor method name -> op name
_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "flatten": "flatten",
            "softmax": "tensor_softmax", "mean": "mean", "view": "view",
            "reshape": "reshape"}

_NO_LAYER = ("no nnscratch layer computes it (custom modules convert when their forward is a "
             "chain of the supported layers and functions, with residual additions)")
_NOT_A_CHAIN = ("it does not take just one earlier result, and from_torch converts chains of "
                "such steps and additions of two of them from one value (a residual block)")


class _TracedForward:
    """A custom module's forward, as torch.fx traces it, read back as nnscratch layers.

    Each step computes its value from one earlier value, its *source*; an addition adds
    two chains of steps that start from one value, its *fork*, and becomes a `Residual` of
    the two chains (so its source is the fork). Walking the sources back from the output
    reaches the input; ``chain(end, start)`` is the list of layers along that walk.
    """

    def __init__(self, torch, module, where, record):
        import torch.fx  # type: ignore[no-redef]  # (the same torch, with its fx)

        self.torch, self.module, self.where, self.record = torch, module, where, record
        self.named = _named(where, module)
        try:
            self.graph = torch.fx.symbolic_trace(module).graph
        except Exception as err:
            raise ConversionError(
                f"{self.named} is not a layer from_torch knows, and torch.fx.symbolic_trace "
                f"cannot trace its forward ({type(err).__name__}: {err})") from None
        self.functions = _functions(torch)
        self.batch = set()        # nodes holding the batch size: x.size(0), x.shape[0]
        self.sizes = set()        # nodes holding a shape: x.size(), x.shape
        self.forks = {}           # addition node -> the value both its branches start from
        self.converted = set()    # nodes made into layers (each may be made once)
        self.called = set()       # submodules with weights called so far

    def fail(self, node, what, reason=_NO_LAYER):
        return ConversionError(f"{self.named}: its forward calls {what} (traced node "
                               f"{node.name!r}), which from_torch cannot convert: {reason}")

    def convert(self):
        """The `Sequential` of the steps from the forward's input to its output."""
        inputs = [node for node in self.graph.nodes if node.op == "placeholder"]
        if len(inputs) != 1:
            extra = f"a second input {inputs[1].target!r}" if inputs else "no input"
            raise ConversionError(f"{self.named}: its forward takes {extra}; from_torch "
                                  f"converts one input only")
        self.input = inputs[0]
        self._find_sizes()
        (output,) = [node for node in self.graph.nodes if node.op == "output"]
        result = output.args[0]
        if not isinstance(result, self.torch.fx.Node):
            raise ConversionError(f"{self.named}: its forward returns {type(result).__name__}"
                                  f", not one tensor computed from its input")
        layers = self.chain(result, self.input)
        for node in self.graph.nodes:      # (dead code would drop its modules' weights)
            if node.op.startswith("call_") and not self._is_size(node) \
                    and node not in self.converted:
                raise self.fail(node, _describe(node), "its result does not reach the output")
        return self.record.sequence(layers)

    def _find_sizes(self):
        """The nodes that hold sizes for x.view(x.size(0), -1): x.size(0), x.size()[0],
        x.shape[0] of any tensor (all have the batch at axis 0); and get_attr's error."""
        Node = self.torch.fx.Node
        for node in self.graph.nodes:
            args = list(node.args)
            if node.op == "get_attr":
                raise self.fail(node, f"the parameter or buffer {node.target!r} directly",
                                "weights are converted only inside layer modules")
            of_tensor = bool(args) and isinstance(args[0], Node) and not self._is_size(args[0]) \
                and not node.kwargs
            if node.op == "call_method" and node.target == "size" and of_tensor \
                    and args[1:] in ([], [0]):
                (self.batch if args[1:] == [0] else self.sizes).add(node)
            elif node.op == "call_function" and _describe(node) == "getattr" and of_tensor \
                    and args[1:] == ["shape"]:
                self.sizes.add(node)
            elif node.op == "call_function" and _describe(node) == "getitem" and args \
                    and isinstance(args[0], Node) and args[0] in self.sizes and args[1:] == [0]:
                self.batch.add(node)

    def _is_size(self, node):
        return node in self.batch or node in self.sizes

    def _tensor_inputs(self, node):
        return [n for n in node.all_input_nodes if not self._is_size(n)]

    def _readers(self, node):
        return [n for n in node.users if not self._is_size(n)]

    # --- the walk back ----------------------------------------------------------------

    def source(self, node):
        """The value `node` is computed from: its one tensor input, or an addition's fork."""
        if node in self.forks:
            return self.forks[node]
        if self._is_addition(node):      # the first value on the right's walk back that is
            left, right = self._operands(node)              # also on the left's
            on_left = set(self.ancestors(left))
            self.forks[node] = next(n for n in self.ancestors(right) if n in on_left)
            return self.forks[node]
        inputs = self._tensor_inputs(node)
        if not node.op.startswith("call_") or len(inputs) != 1 or not node.args \
                or node.args[0] is not inputs[0]:
            raise self.fail(node, _describe(node), _NOT_A_CHAIN)
        return inputs[0]

    def ancestors(self, node):
        """[node, its source, its source's source, ..., the input]."""
        path = [node]
        while path[-1] is not self.input:
            path.append(self.source(path[-1]))
        return path

    def chain(self, end, start):
        """The layers computing `end` from `start` (a value on end's walk back), in order."""
        path = self.ancestors(end)
        return [self.layer(node) for node in reversed(path[:path.index(start)])]

    # --- the steps ----------------------------------------------------------------------

    def _is_addition(self, node):
        return (node.op == "call_function" and node.target in (operator.add, self.torch.add)) \
            or (node.op == "call_method" and node.target in ("add", "add_"))

    def _operands(self, node):
        """An addition's two tensors: ``a + b``, ``torch.add(a, b)``, ``a.add(b)`` with
        alpha=1."""
        args, kwargs = list(node.args), dict(node.kwargs)
        if kwargs.pop("alpha", 1) != 1 or kwargs or len(args) != 2 or not all(
                isinstance(a, self.torch.fx.Node) and not self._is_size(a) for a in args):
            raise self.fail(node, _describe(node), "an addition converts to a Residual when "
                            "it adds two tensors (alpha=1) computed from one value")
        return args

    def _check_in_place(self, node, in_place):
        # writing over a value another branch reads changes what that branch sees in
        # PyTorch (in call order), not in the converted layers
        if in_place and len(self._readers(node.args[0])) > 1:
            raise self.fail(node, _describe(node), "it overwrites its input in place, and "
                            "another branch reads that input too")

    def _mode(self, layer):
        layer.training = self.module.training
        return layer

    def layer(self, node):
        """The nnscratch layer computing `node` from its source."""
        what = _describe(node)
        if node in self.converted:
            raise self.fail(node, what, "its result is used twice, and not as the value both "
                            "sides of one addition start from: a tree of layers would hold "
                            "its steps twice, their weights no longer shared")
        self.converted.add(node)
        if node in self.forks:             # an addition: body(fork) + shortcut(fork)
            self._check_in_place(node, node.target == "add_")
            left, right = (self.chain(side, self.forks[node]) for side in self._operands(node))
            # the body: the longer branch, the left one when they are as long (or both empty)
            body, shortcut = (right, left) if not left or len(right) > len(left) \
                else (left, right)
            return self._mode(Residual(self._mode(self.record.sequence(body)),
                                       self._mode(self.record.sequence(shortcut))
                                       if shortcut else None))
        if node.op == "call_module":
            sub = self.module.get_submodule(node.target)
            if node.target in self.called:
                raise self.fail(node, what, f"module {node.target!r} is called twice: shared "
                                            f"weights, which nnscratch's layers cannot express")
            if _has_weights(sub):
                self.called.add(node.target)
            if node.args[1:] or node.kwargs:
                raise self.fail(node, what, "more than one argument")
            self._check_in_place(node, getattr(sub, "inplace", False))
            return _from_torch(self.torch, sub, _join(self.where, node.target), self.record)
        op = (self.functions if node.op == "call_function" else _METHODS).get(node.target)
        if op is None:
            raise self.fail(node, what)
        signature, builder = _OPS[op]
        try:
            bound = signature(*node.args, **node.kwargs)
        except TypeError as err:
            raise self.fail(node, what, str(err)) from None
        self._check_in_place(node, bound.pop("inplace", False))
        at = _Where(self.where, self.module, f"its call of {what} (traced node {node.name!r})")
        if builder is None:       # view / reshape: only (batch, -1) is a Flatten
            shape = list(bound["shape"])
            if not (len(shape) == 2 and isinstance(shape[0], self.torch.fx.Node)
                    and shape[0] in self.batch and shape[1] == -1):
                raise self.fail(node, what, f"shape ({', '.join(map(str, shape))}) is not "
                                            f"(x.size(0), -1), a Flatten")
            return self._mode(Flatten())
        layer = builder(at, **bound)
        if op == "adaptive_avg_pool2d" or (op == "mean" and bound["keepdim"]):
            self.record.pools[id(layer)] = at.name
        return self._mode(layer)


def _describe(node):
    """A traced node's operation, as a user wrote it: 'add', 'relu', 'conv1' (a module)."""
    if node.op in ("call_module", "call_method"):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))
