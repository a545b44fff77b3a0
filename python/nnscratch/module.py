"""`Parameter` and `Module`: what every layer and model is built from, as in PyTorch.

A `Parameter` is a trainable array ``data`` and its gradient ``grad``. A `Module` computes
``forward(x)``, keeps what its ``backward`` needs, and ``backward(grad_out)`` returns the
gradient with respect to its input while *adding* its parameters' gradients into their
``.grad`` (so call ``zero_grad()`` before each backward pass).

Assigning a `Parameter` or a `Module` to an attribute of a module registers it, as
PyTorch's ``nn.Module`` does, so that a block written by hand is a real part of the model::

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        def forward(self, x):
            return x + self.body(x)              # y = x + body(x)
        def backward(self, grad_out, *, compute_grad_input=True):
            return grad_out + self.body.backward(grad_out)   # dL/dx through both paths

    block = Block(8)
    [name for name, _ in block.named_parameters()]   # ['body.0.weight', 'body.0.bias', ...]

Writing your own layer -- the contract
--------------------------------------
``forward(x)``
    Returns the output for a batch ``x`` (the batch is axis 0) and keeps, on ``self``, what
    ``backward`` will need (the input, the output, a mask). It must not change ``x`` in
    place: the layer before may keep that array for its own backward (a sigmoid keeps its
    output).
``backward(grad_out, *, compute_grad_input=True)``
    ``grad_out`` is dL/d(output), of the output's shape. *Adds* dL/dp into ``p.grad`` of each
    of the module's own parameters (``p.grad += ...``: gradients accumulate until
    ``zero_grad()``), calls ``backward`` of the sub-modules it used, and returns dL/d(input)
    -- or may return None when ``compute_grad_input`` is False (the first layer of a model:
    nobody needs it).
``infer(x)`` (optional)
    The eval-mode output, keeping no state: what ``predict`` calls, possibly from several
    threads while another trains. The default runs ``forward`` with every sub-module called
    as ``module(x)`` answering with its own ``infer``; override it when your ``forward``
    keeps state or behaves differently in training mode.
``get_config()`` (needed to save the model)
    A JSON-serialisable dict of the constructor's arguments (sub-modules given to the
    constructor may be values too), such that ``type(self)(**get_config())`` builds the
    same architecture. Decorate the class with ``@nnscratch.register`` so that
    ``nnscratch.load`` can find it.
``output_shape(input_shape)``, ``flops(input_shape)`` (optional, for ``summary``)
    The per-sample output shape (batch axis left out) and the floating-point operations of
    one sample's forward pass; by default the shape is kept and 0 FLOPs are counted.

Hooks -- seeing inside a model
------------------------------
PyTorch's names and signatures::

    seen = []
    handle = model[2].register_forward_hook(lambda m, inputs, output: seen.append(output.copy()))
    model[2].register_full_backward_hook(lambda m, grad_input, grad_output: ...)
    handle.remove()                      # or: with model[2].register_forward_hook(fn): ...

A forward hook runs after every ``forward`` and every ``infer`` of its module (training
steps, ``predict``, ``evaluate``, fit's validation), as ``hook(module, inputs, output)``
with ``inputs`` the tuple of positional arguments, ``(x,)``. A full backward hook runs
after every ``backward``, as ``hook(module, grad_input, grad_output)`` with
``grad_input = (dL/dx,)`` -- ``(None,)`` when ``compute_grad_input`` was False (the first
layer in ``fit``: PyTorch's None for an input that needs no gradient) -- and
``grad_output = (dL/dy,)``. Hooks run in the order they were registered (``prepend=True``
puts one first), and fire wherever the module is run from: a container, a user's block,
``fit``, ``predict``. A hook on a container sees the container's input and output.

* A forward hook may return a replacement output when the module runs ``infer``; during
  ``forward`` a returned value is a RuntimeError, since the backward pass (there is no
  autograd) would not see the change. A backward hook may return a replacement
  ``(grad_input,)``, which is what ``backward`` then returns.
* The arrays are the model's own, not copies: a hook must not change them in place, and
  should copy what it keeps (on the fast path, in training mode, a container's output and
  the gradients it is given are buffers that the next step overwrites).
* The fast path steps aside only where hooks are: a hooked layer is computed by its own
  ``forward`` / ``backward`` (so a fused chain of Linear layers is split around it) -- the
  same bits, so a hook that only reads leaves training bit for bit as it was -- and a model
  with a hook on itself trains with fit's textbook step. Removing the last hook of a
  module gives the fast path back.
* Hooks are not state: ``state_dict``, ``save`` and model files never hold them.
  ``copy.deepcopy`` and ``copy.copy`` of a module copy its hooks (as PyTorch's deepcopy
  does), each copy with its own list: a handle removes the hook from the module it was
  registered on only. ``register_backward_hook`` (deprecated in PyTorch) is
  ``register_full_backward_hook`` with a FutureWarning.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from . import _checks, _memory

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Parameter", "Module", "ModuleSequence", "ModuleList", "register", "registered", "registered_name",
           "repeated_modules", "IncompatibleKeys", "StateDictError", "RemovableHandle"]


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype).

    ``grad`` starts at zero; a backward pass adds into it and ``zero_grad()`` sets it back
    to zero, as PyTorch's ``.grad``. ``p.grad = array`` replaces the gradient array (same
    shape and dtype, C-contiguous, writeable) and ``p.grad = None`` clears it -- to a new
    array of zeros: here a gradient is always an array, never None. ``p.data = values``
    copies `values` into the parameter's array (same shape), so that whoever holds the
    array (an optimizer's step) sees the new values.

    Parameters
    ----------
    data : array_like of float32 or float64
        Copied (into an array aligned to 64 bytes: a cache line, one AVX-512 vector).
    """

    __slots__ = ("_data", "_grad")

    def __init__(self, data: npt.ArrayLike) -> None:
        data = np.asarray(data)
        _checks.float_dtype(data.dtype, "Parameter data")
        self._data = _memory.copy(data)
        self._grad = _memory.zeros(data.shape, data.dtype)

    @property
    def data(self) -> np.ndarray:
        """The values (ndarray), updated in place by the optimizers."""
        return self._data

    @data.setter
    def data(self, values: npt.ArrayLike) -> None:
        values = np.asarray(values)
        if values.shape != self._data.shape:
            raise ValueError(f"Parameter has shape {self._data.shape}, got values of shape "
                             f"{values.shape}")
        np.copyto(self._data, values, casting="same_kind")

    @property
    def grad(self) -> np.ndarray:
        """dL/d(data), accumulated by backward passes (ndarray of data's shape and dtype)."""
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray | None) -> None:
        if value is None:
            value = _memory.zeros(self._data.shape, self._data.dtype)
        elif not isinstance(value, np.ndarray) or value.shape != self._data.shape or \
                value.dtype != self._data.dtype:
            raise ValueError(f"Parameter.grad must be None or an ndarray of shape "
                             f"{self._data.shape} and dtype {self._data.dtype}, got "
                             f"{_describe(value)}")
        elif not (value.flags.c_contiguous and value.flags.aligned and value.flags.writeable):
            raise ValueError("Parameter.grad must be a C-contiguous, aligned, writeable array "
                             "(backward passes add into it in place)")
        self._grad = value

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data`` (and of ``grad``)."""
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``data`` (and of ``grad``): float32 or float64."""
        return self._data.dtype

    @property
    def size(self) -> int:
        """The number of elements of ``data``."""
        return self._data.size

    @property
    def ndim(self) -> int:
        """The number of dimensions of ``data``."""
        return self._data.ndim

    def zero_grad(self) -> None:
        """Set the gradient to zero, in place."""
        self._grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


# While a thread predicts (`Module.infer`), every module it calls as ``module(x)`` answers
# with its eval-mode, state-free ``infer``: a flag per thread, so that another thread may
# train the same model meanwhile.
class _PredictFlag(threading.local):
    on = False


_predicting = _PredictFlag()


@contextlib.contextmanager
def predicting() -> Iterator[None]:
    """Inside the block, on this thread, ``module(x)`` calls ``module.infer(x)``."""
    previous = _predicting.on
    _predicting.on = True
    try:
        yield
    finally:
        _predicting.on = previous


# --- hooks (see the module docstring) ------------------------------------------------------
#
# A module with hooks holds, as instance attributes, a `_Hooked` stand-in for each of its
# forward, infer and backward: Python finds an instance attribute before the class's
# method, so the hooks fire whoever calls the module (Sequential, Residual, a user's block,
# fit, predict) while modules without hooks run exactly as before. The fast path plans a
# module holding such attributes as one that computes itself (``_fast/plan.py``).

class _HookChanges:
    """``count`` goes up whenever a module gets its first hook or loses its last: the fast
    path's plans, which compute some layers without calling them, are then made again."""
    count = 0


hook_changes = _HookChanges()

_HOOKED_METHODS = ("forward", "infer", "backward")


class _Running(threading.local):
    """Per thread: the modules whose hooked forward or infer is running (the default
    ``infer`` runs ``forward``: the hooks then fire once, for the infer)."""

    def __init__(self) -> None:
        self.modules: set[int] = set()


_running = _Running()


class RemovableHandle:
    """What ``register_forward_hook`` and ``register_full_backward_hook`` return.

    ``handle.remove()`` takes the hook off (again: nothing happens); as a context manager
    the hook is on for the ``with`` block only::

        with model[0].register_forward_hook(fn):
            model.predict(X)
    """

    _ids = itertools.count()

    def __init__(self, module: Module, registry: str) -> None:
        self.id = next(RemovableHandle._ids)
        self._module = weakref.ref(module)
        self._registry = registry           # "_forward_hooks" or "_backward_hooks"

    def remove(self) -> None:
        """Take the hook off its module (nothing happens the second time)."""
        module = self._module()
        if module is not None:
            module._remove_hook(self._registry, self.id)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        kind = "forward" if self._registry == "_forward_hooks" else "backward"
        return f"<RemovableHandle {self.id}: a {kind} hook of {self._module()!r}>"


class _Hooked:
    """A hooked module's forward, infer or backward: the module's own method, then its hooks.

    `original` is an instance attribute of that name the module held before (rare), called
    in place of the class's method and put back when the last hook goes.
    """

    __slots__ = ("module", "name", "original")

    def __init__(self, module, name, original=None):
        self.module, self.name, self.original = module, name, original

    def __call__(self, *args, **kwargs):
        module = self.module
        method = self.original
        if method is None:      # (looked up at each call: the class's method as it is now)
            method = getattr(type(module), self.name).__get__(module, type(module))
        if self.name == "backward":
            return _backward_with_hooks(module, method, args, kwargs)
        running, key = _running.modules, id(module)
        if key in running:      # the module's own infer called its forward: no hooks here
            return method(*args, **kwargs)
        running.add(key)
        try:
            output = method(*args, **kwargs)
        finally:
            running.discard(key)
        for hook in tuple((module.__dict__.get("_forward_hooks") or {}).values()):
            result = hook(module, args, output)
            if result is not None:
                if self.name == "forward":
                    raise RuntimeError(
                        f"the forward hook {_name(hook)} of {module!r} returned a value in "
                        f"forward: a forward hook may replace the output only in infer "
                        f"(predict, evaluate, model.infer), since the backward pass would not "
                        f"see the change; return None")
                output = result
        return output

    def __repr__(self):
        return f"<{self.name} of {self.module!r}, with hooks>"


def _backward_with_hooks(module, method, args, kwargs):
    """``method(*args, **kwargs)`` (the module's backward), then each backward hook, as
    ``hook(module, (dL/dx,), (dL/dy,))``; a hook's returned ``(grad_input,)`` replaces it."""
    grad_out = args[0] if args else kwargs.get("grad_out")
    grad_in = method(*args, **kwargs)
    for hook in tuple((module.__dict__.get("_backward_hooks") or {}).values()):
        result = hook(module, (grad_in,), (grad_out,))
        if result is None:
            continue
        if not isinstance(result, (tuple, list)) or len(result) != 1:
            raise TypeError(f"the backward hook {_name(hook)} of {module!r} returned "
                            f"{_describe(result)}: a backward hook returns None or a "
                            f"replacement (grad_input,), a tuple of one array")
        new = result[0]
        if new is not None and grad_in is not None and np.shape(new) != np.shape(grad_in):
            raise ValueError(f"the backward hook {_name(hook)} of {module!r} returned a "
                             f"grad_input of shape {np.shape(new)}, not {np.shape(grad_in)}")
        grad_in = new
    return grad_in


def _name(hook):
    return repr(getattr(hook, "__qualname__", None) or type(hook).__name__)


def _put_hooked_methods(module):
    """Give `module` its `_Hooked` forward, infer and backward (when it has none yet)."""
    d = module.__dict__
    if isinstance(d.get("forward"), _Hooked):
        return
    for name in _HOOKED_METHODS:
        d[name] = _Hooked(module, name, d.get(name))
    hook_changes.count += 1


def _without_stand_ins(attributes):
    """Take the `_Hooked` stand-ins out of a module's `attributes` dict (in place): each
    method as it was before its first hook (the class's, or an instance attribute)."""
    for name in _HOOKED_METHODS:
        stand_in = attributes.get(name)
        if isinstance(stand_in, _Hooked):
            if stand_in.original is None:
                del attributes[name]
            else:
                attributes[name] = stand_in.original
    return attributes


def _take_hooked_methods(module):
    """Take the `_Hooked` methods off `module` (its last hook went)."""
    _without_stand_ins(module.__dict__)
    hook_changes.count += 1


class Module:
    """Base class of layers and models (see the module docstring for the contract).

    Attributes holding a `Parameter`, a `Module` or (by ``register_buffer``) a buffer array
    are registered, in the order they are set: ``named_parameters()``, ``children()``,
    ``state_dict()`` and ``train()`` find them. A new module is in training mode.
    """

    training: bool = True
    # the registries, by name, in registration order (made by __init__)
    _parameters: dict[str, Parameter | None]
    _buffers: dict[str, np.ndarray | None]
    _modules: dict[str, Module | None]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        self.training = True

    # --- registration ----------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        registries = self.__dict__.get("_parameters")
        if registries is None:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before "
                                     f"Module.__init__() was called (call super().__init__() "
                                     f"first in {type(self).__name__}.__init__)")
            object.__setattr__(self, name, value)
            return
        params, modules, buffers = self._parameters, self._modules, self._buffers
        if value is not None and not isinstance(value, (Parameter, Module)):
            if name in params or name in modules:
                kind = "Parameter" if name in params else "Module"
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r} of "
                                f"{type(self).__name__}: a {kind} (or None) expected")
            if name in buffers and not isinstance(value, np.ndarray):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r}: "
                                f"an ndarray (or None) expected")
        object.__setattr__(self, name, value)     # (first: a read-only attribute raises here)
        if isinstance(value, Parameter):
            modules.pop(name, None)
            buffers.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        else:
            for registry in (params, modules, buffers):
                if name in registry:
                    registry[name] = value

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_modules", "_buffers"):
            self.__dict__.get(registry, {}).pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array: np.ndarray | None) -> None:
        """Keep `array` (e.g. a batch norm's running mean) as state that is saved with the
        model but not trained: ``state_dict`` holds it, optimizers do not see it."""
        self._check_name(name)
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"buffer {name!r} must be an ndarray or None, got "
                            f"{type(array).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register `module` under `name` (what ``self.<name> = module`` does)."""
        self._check_name(name)
        if not isinstance(module, Module) and module is not None:
            raise TypeError(f"{type(module).__name__} is not a Module")
        setattr(self, name, module)

    def _check_name(self, name):
        """A name for a buffer or a sub-module: a non-empty str without a dot, not already
        an attribute that is neither."""
        if not isinstance(name, str):
            raise TypeError(f"a module or buffer name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"a module or buffer name must be non-empty and without a dot, "
                           f"got {name!r}")
        if hasattr(self, name) and name not in self._modules and name not in self._buffers:
            raise KeyError(f"attribute {name!r} already exists")

    # --- the computation -------------------------------------------------------------

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The output for a batch ``x``; keeps what `backward` needs."""
        raise NotImplementedError(
            f"{type(self).__name__} has no forward(x): a Module subclass defines forward(x) "
            f"and backward(grad_out, *, compute_grad_input=True) (see nnscratch.Module)")

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        """Add dL/dp into each parameter's ``.grad``; return dL/dx (None allowed when
        ``compute_grad_input`` is False)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no backward(grad_out, *, compute_grad_input=True): "
            f"it must add its parameters' gradients into p.grad and return dL/d(input) "
            f"(see nnscratch.Module)")

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The eval-mode output for x, keeping no state (what ``predict`` calls).

        By default `forward`, during which every sub-module called as ``module(x)``
        answers with its own ``infer``.
        """
        with predicting():
            return self.forward(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if _predicting.on:
            return self.infer(x)
        return self.forward(x)

    # --- hooks (see the module docstring) -------------------------------------------------

    # {handle id: hook} once one is registered
    _forward_hooks: dict[int, Callable[..., Any]] | None = None
    _backward_hooks: dict[int, Callable[..., Any]] | None = None

    def register_forward_hook(self, hook: Callable[..., Any], *,
                              prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, inputs, output)`` after every ``forward`` and ``infer`` of
        this module (``inputs``: the tuple of positional arguments, ``(x,)``).

        Parameters
        ----------
        hook : callable
            Returns None -- or, when the module runs ``infer``, a replacement output.
        prepend : bool, default False
            Run this hook before those already registered (else after them).

        Returns
        -------
        RemovableHandle
            ``remove()`` takes the hook off; usable as a context manager.
        """
        return self._add_hook("_forward_hooks", hook, prepend, "register_forward_hook",
                              "hook(module, inputs, output)")

    def register_full_backward_hook(self, hook: Callable[..., Any],
                                    prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, grad_input, grad_output)`` after every ``backward`` of this
        module: ``grad_input = (dL/dx,)`` (``(None,)`` when ``compute_grad_input`` was False),
        ``grad_output = (dL/dy,)``.

        Parameters
        ----------
        hook : callable
            Returns None, or a replacement ``(grad_input,)`` that ``backward`` returns instead.
        prepend : bool, default False
            Run this hook before those already registered (else after them).

        Returns
        -------
        RemovableHandle
        """
        return self._add_hook("_backward_hooks", hook, prepend, "register_full_backward_hook",
                              "hook(module, grad_input, grad_output)")

    def register_backward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """Deprecated in PyTorch; here `register_full_backward_hook` (with a FutureWarning)."""
        warnings.warn("register_backward_hook is deprecated (as in PyTorch): use "
                      "register_full_backward_hook, which it calls", FutureWarning, stacklevel=2)
        return self.register_full_backward_hook(hook)

    def _add_hook(self, registry, hook, prepend, method, signature):
        if not callable(hook):
            raise TypeError(f"{method}: hook must be callable as {signature}, got "
                            f"{_describe(hook)}")
        handle = RemovableHandle(self, registry)
        hooks = self.__dict__.get(registry) or {}
        # (a new dict: a pass that is running its hooks goes on with the ones it started with)
        hooks = {handle.id: hook, **hooks} if prepend else {**hooks, handle.id: hook}
        self.__dict__[registry] = hooks
        _put_hooked_methods(self)
        return handle

    def _remove_hook(self, registry, key):
        hooks = self.__dict__.get(registry)
        if not hooks or key not in hooks:
            return
        self.__dict__[registry] = {k: h for k, h in hooks.items() if k != key}
        if not (self.__dict__.get("_forward_hooks") or self.__dict__.get("_backward_hooks")):
            _take_hooked_methods(self)      # the last one: the module runs as it did

    def __getstate__(self) -> dict[str, Any]:
        # copy / deepcopy / pickle: the hooks travel (as in PyTorch), their stand-ins are
        # made again for the new module by __setstate__
        return _without_stand_ins(self.__dict__.copy())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for registry in ("_forward_hooks", "_backward_hooks"):
            if registry in state:       # its own dict: a handle acts on one module only
                self.__dict__[registry] = dict(state[registry] or {})
        if self.__dict__.get("_forward_hooks") or self.__dict__.get("_backward_hooks"):
            _put_hooked_methods(self)

    def _saved(self, attr):
        """What forward kept for backward (``self.<attr>``); RuntimeError before forward."""
        value = self.__dict__.get(attr)
        if value is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return value

    def _input(self, x, dtype=None, check=None):
        """`x` as an ndarray of `dtype`, with a clear error naming the layer.

        ``check(x)`` runs before any cast (it raises on a wrong shape). Real inputs of
        another dtype (ints, bools, the other float) are cast: to `dtype` when given, else
        floats keep theirs and the rest becomes float32.
        """
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self!r} expects a real-valued input, got dtype {x.dtype}")
        if check is not None:
            check(x)
        if dtype is None:
            dtype = x.dtype if x.dtype in _checks.FLOATS else np.dtype(np.float32)
        return x.astype(dtype, copy=False)

    def _grad_of(self, grad_out, shape, dtype):
        """The incoming gradient as an ndarray of the forward output's shape and dtype."""
        grad_out = np.asarray(grad_out)
        if grad_out.shape != shape:
            raise ValueError(f"{self!r}: grad_out has shape {grad_out.shape}, expected the "
                             f"forward output's shape {shape}")
        if grad_out.dtype.kind != "f":
            raise TypeError(f"{self!r}: grad_out must be a float array, got {grad_out.dtype}")
        return grad_out.astype(dtype, copy=False)

    # --- the tree of modules -----------------------------------------------------------

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for each direct sub-module, in registration order."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        """The direct sub-modules."""
        for _, module in self.named_children():
            yield module

    def named_modules(self, memo: set[int] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` for this module (`prefix`, "" by default) and every
        sub-module, depth first; a module reachable twice is listed once unless
        `remove_duplicate` is False (`memo`: the ids already listed)."""
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self.named_children():
            yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                            remove_duplicate)

    def modules(self) -> Iterator[Module]:
        """This module and every sub-module."""
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "",
                         recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` pairs, e.g. ``("1.body.0.weight", ...)``; a parameter
        shared by two modules is listed once."""
        seen = set()
        modules: Iterable[tuple[str, Module]] = \
            self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{module_prefix}.{name}" if module_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """The `Parameter` objects (as ``named_parameters``)."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "",
                      recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """``(dotted name, ndarray)``: state saved with the model but not trained."""
        modules: Iterable[tuple[str, Module]] = \
            self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, array in module._buffers.items():
                if array is not None:
                    yield (f"{module_prefix}.{name}" if module_prefix else name), array

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """The buffer arrays (as ``named_buffers``)."""
        for _, array in self.named_buffers(recurse=recurse):
            yield array

    # --- modes and gradients -----------------------------------------------------------

    def train(self, mode: bool = True) -> Self:
        """Training mode for this module and every sub-module; returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Self:
        """Eval mode (dropout off, batch norm on its running statistics); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.zero_grad()

    # --- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """An ordered ``{name: array}`` of every parameter's data and every buffer, with
        the names of `named_parameters` (each module's parameters, then its buffers, then
        its sub-modules'). The arrays are the model's own (copy them to keep a snapshot)."""
        state: dict[str, np.ndarray] = collections.OrderedDict()
        for prefix, module in self.named_modules(remove_duplicate=False):
            dot = f"{prefix}." if prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[dot + name] = p.data
            for name, array in module._buffers.items():
                if array is not None:
                    state[dot + name] = array
        return state

    def load_state_dict(self, state_dict: Mapping[str, npt.ArrayLike | Parameter],
                        strict: bool = True) -> IncompatibleKeys:
        """Copy the arrays of `state_dict` into the parameters and buffers of the same names.

        Everything is checked before anything is copied: a key the model lacks
        (unexpected), a key of the model the dict lacks (missing) -- both errors when
        `strict` -- and an array whose shape differs (always an error) raise
        `StateDictError` (a ValueError, and a RuntimeError as in PyTorch) naming every
        such key. Values (arrays, or Parameters) are cast to the model's dtype (float64 to
        float32 and back; never a float into an integer buffer).

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, empty lists unless ``strict=False``.
        """
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        own = self.state_dict()
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        problems: list[str] = []
        values: dict[str, np.ndarray] = {}
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = np.asarray(value.data if isinstance(value, Parameter) else value)
            if value.dtype.kind not in "fiub" or not np.can_cast(value.dtype, target.dtype,
                                                                  "same_kind"):
                problems.append(f"{key!r} has dtype {value.dtype}, which does not fit the "
                                f"model's {target.dtype}")
            elif value.shape != target.shape:
                problems.append(f"size mismatch for {key!r}: the dict has shape "
                                f"{value.shape}, the model {target.shape}")
            else:
                values[key] = value
        if strict and unexpected:
            problems.insert(0, f"unexpected key(s): {', '.join(map(repr, unexpected))}")
        if strict and missing:
            problems.insert(0, f"missing key(s): {', '.join(map(repr, missing))}")
        if problems:
            raise StateDictError(f"error(s) in loading state_dict for {type(self).__name__}: "
                                 + "; ".join(problems))
        for key, value in values.items():
            np.copyto(own[key], value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # --- shapes, cost, description -----------------------------------------------------

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (the batch axis left out);
        the default keeps the shape."""
        return tuple(input_shape)

    def flops(self, input_shape: Sequence[int]) -> int:
        """Floating-point operations of one sample's forward pass (0 by default)."""
        return 0

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON values, or sub-modules), used by ``save``."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """A new module from `get_config()`'s dict (what ``nnscratch.load`` calls)."""
        return cls(**config)

    def extra_repr(self) -> str:
        """The text inside the parentheses of ``repr(self)``."""
        return ", ".join(f"{k}={v}" for k, v in self.get_config().items()
                         if not isinstance(v, (Module, list, tuple)))

    def __repr__(self) -> str:
        lines = [f"  ({name}): " + repr(module).replace("\n", "\n  ")
                 for name, module in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n" + "\n".join(lines) + "\n)"


def repeated_modules(model: Module) -> str | None:
    """None, or why `model` cannot train: one module object appears in two places of it (a
    layer keeps what its backward needs from its last forward)."""
    first: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        seen = first.setdefault(id(module), name)
        if seen != name:
            return (f"layers {seen} and {name} are the same {type(module).__name__} object: a "
                    f"layer keeps what its backward needs from its last forward, so one object "
                    f"cannot run twice in a training model (eval mode is fine); use two layer "
                    f"objects")
    return None


class ModuleSequence(Module):
    """A module whose sub-modules form a list, registered as ``"0"``, ``"1"``, ...: indexing,
    slicing, ``len``, iteration, ``append``, ``extend``, ``insert``, ``pop``, ``m[i] = module``
    and ``del m[i]``. The base of `ModuleList` and `Sequential`."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        self._set_items(modules)

    def _set_items(self, modules):
        modules = list(modules)
        for i, module in enumerate(modules):
            if not isinstance(module, Module):
                raise TypeError(f"{type(self).__name__} takes Module instances; argument {i} "
                                f"is {type(module).__name__}")
        for name in list(self._modules):
            delattr(self, name)
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def _items(self):
        return list(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items())

    def __getitem__(self, index: int | slice) -> Any:
        # (Any: a Module for an int, such as model[0], whose attributes -- model[0].weight --
        # are its own class's; a container of this kind for a slice)
        if isinstance(index, slice):
            return self._of(self._items()[index])
        return self._items()[index]

    @classmethod
    def _of(cls, modules):
        """A new container of this kind holding `modules` (what slicing returns)."""
        return cls(modules)

    def __setitem__(self, index: int, module: Module) -> None:
        items = self._items()
        items[index] = module
        self._set_items(items)

    def __delitem__(self, index: int | slice) -> None:
        items = self._items()
        del items[index]
        self._set_items(items)

    def append(self, module: Module) -> Self:
        """Add `module` at the end; returns self."""
        self._set_items(self._items() + [module])
        return self

    def extend(self, modules: Iterable[Module]) -> Self:
        """Add `modules` at the end, in order; returns self."""
        self._set_items(self._items() + list(modules))
        return self

    def insert(self, index: int, module: Module) -> None:
        """Put `module` before position `index`."""
        items = self._items()
        items.insert(index, module)
        self._set_items(items)

    def pop(self, index: int = -1) -> Module:
        """Remove and return the module at `index` (the last by default)."""
        items = self._items()
        module = items.pop(index)
        self._set_items(items)
        return module


class ModuleList(ModuleSequence):
    """A list of modules; a module that keeps its layers in a ModuleList owns their
    parameters (a plain Python list would hide them from ``parameters()``).

    It has no forward of its own: the module that holds it decides how its entries run.
    """

    def get_config(self) -> dict[str, Any]:
        return {"modules": list(self)}


class StateDictError(ValueError, RuntimeError):
    """`load_state_dict` refused a dict (PyTorch raises RuntimeError; here it is both)."""


IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


# --- the table `nnscratch.load` builds modules from ----------------------------------------

_REGISTRY: dict[str, type[Module]] = {}


def register(cls: type[Module] | None = None, *, name: str | None = None) -> Any:
    """Class decorator: let ``nnscratch.load`` rebuild saved modules of this class.

    The saved architecture names each module's class and its ``get_config()``; loading
    looks the name up here and calls ``cls(**config)``. Use it on your own layers::

        @nnscratch.register
        class Scale(nnscratch.Module):
            ...

    Parameters
    ----------
    cls : type
        The class (given when used as ``@register``; leave it out with ``name=``).
    name : str, optional
        The name in saved files (default: the class's ``__name__``). Registering another
        class under a name already taken is a ValueError.

    Returns
    -------
    type or callable
        The class itself, unchanged; or, called with ``name=`` only, the decorator.
    """
    def decorate(cls: type[Module]) -> type[Module]:
        if not (isinstance(cls, type) and issubclass(cls, Module)):
            raise TypeError(f"register takes a Module subclass, got {cls!r}")
        key = cls.__name__ if name is None else name
        if not isinstance(key, str) or not key:
            raise TypeError(f"name must be a non-empty str, got {key!r}")
        known = _REGISTRY.get(key)
        if known is not None and known is not cls and (
                known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{key!r} is already registered for {known.__module__}."
                             f"{known.__qualname__}; pass register(name=...) to save this "
                             f"class under another name")
        _REGISTRY[key] = cls
        return cls
    return decorate if cls is None else decorate(cls)


def registered(name: str) -> type[Module] | None:
    """The class registered under `name`, or None."""
    return _REGISTRY.get(name)


def registered_name(cls: type) -> str | None:
    """The name `cls` itself is registered under (not a parent class's), or None."""
    for key, known in _REGISTRY.items():
        if known is cls:
            return key
    return None


register(ModuleList)
