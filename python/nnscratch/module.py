"""`Parameter` and `Module`: the two base classes every layer is built from.

A `Parameter` is a trainable array and its gradient. A `Module` computes ``forward(x)``,
keeps what its ``backward`` needs, and ``backward(grad_out)`` returns the gradient with
respect to its input while *adding* the gradients of its parameters into ``.grad``, as
in PyTorch: call ``zero_grad()`` before each backward pass.

Scratch arrays. In training mode a module writes its outputs and input gradients into
arrays it keeps between calls (one per batch shape), so that a steady-state training
step allocates nothing: the array returned by ``forward`` / ``backward`` in training mode
is overwritten by the next call with the same batch shape. In eval mode every call returns
a fresh array, and `infer` (what ``predict`` uses) never touches any state, so it may run
from several threads at once.
"""
import numpy as np

from . import _memory

__all__ = ["Parameter", "Module"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_MAX_SCRATCH = 16   # arrays per module; more batch shapes than this and the cache restarts


def check_float_dtype(dtype, name="dtype"):
    """``np.dtype(dtype)`` when it is float32 or float64, else TypeError."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype!r}") from None
    if dtype not in _FLOATS:
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype}")
    return dtype


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype).

    ``grad`` starts at zero; backward passes add into it and ``zero_grad()`` clears it.
    The clearing is lazy: ``zero_grad()`` only marks the gradient as zero, and the next
    backward pass *writes* it instead of adding to it (a layer whose kernel can overwrite
    asks `grad_for_backward`), which saves a pass over every gradient per step; anything
    that reads ``grad`` first gets the zeros filled in. Either way ``p.grad`` always reads
    as what PyTorch's ``.grad`` would hold -- but an array taken from ``p.grad`` *before*
    ``zero_grad()`` keeps its old values until the next backward pass or ``p.grad`` read
    (read ``p.grad`` again rather than keeping the array across a ``zero_grad``).
    Both arrays are C-contiguous and keep their identity for the parameter's lifetime:
    assigning ``p.data = values`` copies `values` into the existing array (same shape
    required), so optimizers and kernels that hold the array stay valid.

    Parameters
    ----------
    data : array_like of float32 or float64
        Copied.
    """

    __slots__ = ("_data", "_grad", "_grad_zero", "_grad_finite")

    def __init__(self, data):
        data = np.asarray(data)
        check_float_dtype(data.dtype, "Parameter data")
        self._data = _memory.copy(data)    # (64-byte aligned, as the gradient)
        self._grad = _memory.zeros(data.shape, data.dtype)
        self._grad_zero = False   # True: grad is zero, its array not yet cleared
        # True / False: the backward pass that last wrote the gradient checked it, and it
        # holds no NaN/inf / holds one (fit's guard then needs no pass of its own); None:
        # not known -- set back to None whenever the gradient is handed out
        self._grad_finite = None

    @property
    def data(self):
        """The values (ndarray), updated in place by the optimizers."""
        return self._data

    @data.setter
    def data(self, values):
        values = np.asarray(values)
        if values.shape != self._data.shape:
            raise ValueError(f"Parameter has shape {self._data.shape}, got values of shape "
                             f"{values.shape}")
        np.copyto(self._data, values, casting="same_kind")

    @property
    def grad(self):
        """dL/d(data), accumulated by backward passes (ndarray of data's shape and dtype)."""
        if self._grad_zero:
            self._grad.fill(0)
            self._grad_zero = False
        self._grad_finite = None
        return self._grad

    def grad_for_backward(self):
        """``(grad, accumulate)`` for a backward pass: when `accumulate` is False the
        gradient is zero (a `zero_grad` since the last pass) and the caller must overwrite
        every element of `grad` (``=`` rather than ``+=``); when True it adds as usual."""
        self._grad_finite = None
        if self._grad_zero:
            self._grad_zero = False
            return self._grad, False
        return self._grad, True

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def size(self):
        return self._data.size

    def zero_grad(self):
        """Set the gradient to zero (lazily: see the class docstring)."""
        self._grad_zero = True
        self._grad_finite = None

    def __repr__(self):
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"


class Module:
    """Base class of layers and models.

    Subclasses implement ``forward(x)``, ``backward(grad_out, *, compute_grad_input=True)``
    and, when their shapes are known, ``output_shape(input_shape)``, ``flops(input_shape)``,
    ``get_config()``; ``infer(x)`` when eval-mode forward must differ from `forward`.
    Parameters are the attributes that hold a `Parameter`, in the order they were set.
    """

    training = True   # a new module is in training mode, as in PyTorch

    def __init__(self):
        self.training = True
        self._scratch_arrays = {}

    # --- the computation -------------------------------------------------------------

    def forward(self, x):
        """The layer's output for a batch ``x``; keeps what `backward` needs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_out, *, compute_grad_input=True):
        """Add the parameters' gradients into ``.grad``; return dL/dx (or None when
        ``compute_grad_input`` is False)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def infer(self, x):
        """Eval-mode forward that keeps no state and reuses no buffer (thread-safe).

        Used by ``predict``. The default calls `forward`; layers whose eval behaviour or
        state differ override it.
        """
        return self.forward(x)

    def __call__(self, x):
        return self.forward(x)

    # --- parameters and modes --------------------------------------------------------

    def named_parameters(self):
        """List of ``(name, Parameter)`` pairs."""
        return [(name, value) for name, value in vars(self).items()
                if isinstance(value, Parameter)]

    def parameters(self):
        """List of the module's `Parameter` objects."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        """List of ``(name, ndarray)``: state that is not trained but is saved with the
        model (e.g. a batch norm's running statistics). Empty by default."""
        return []

    def children(self):
        """Sub-modules (none for a layer)."""
        return []

    def zero_grad(self):
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        """Training mode (dropout active, scratch arrays reused); returns self."""
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        """Eval mode (dropout off, fresh output arrays); returns self."""
        return self.train(False)

    # --- shapes, cost, serialisation -------------------------------------------------

    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape (the batch axis left out).

        The default keeps the shape (element-wise layers); layers that change the shape
        override it (``fit`` checks X and y against it).
        """
        return tuple(input_shape)

    def flops(self, input_shape):
        """Floating-point operations of one sample's forward pass (0 by default)."""
        return 0

    def get_config(self):
        """The constructor arguments, JSON-serialisable (used by ``save``)."""
        return {}

    def extra_repr(self):
        """The text inside the parentheses of ``repr(self)``."""
        return ", ".join(f"{k}={v}" for k, v in self.get_config().items())

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    # --- helpers for subclasses ------------------------------------------------------

    def _scratch(self, name, shape, dtype, *reading):
        """A kept array for output `name` in training mode; None (= allocate) in eval mode,
        and when the kept array is one of `reading`, the arrays the output is computed from
        (a layer fed its own kept buffer back: it must not be written while it is read)."""
        if not self.training:
            return None
        arrays = self.__dict__.setdefault("_scratch_arrays", {})  # (subclass without __init__)
        key = (name, shape, dtype)
        array = arrays.get(key)
        if array is None:
            if len(arrays) >= _MAX_SCRATCH:
                arrays.clear()
            array = arrays[key] = _memory.empty(shape, dtype)
        for other in reading:
            if other is array:
                return None
        return array

    def _as_input(self, x, dtype=None, check=None, name="input"):
        """`x` as an ndarray of `dtype` (float32/float64) with a clear error naming the layer.

        ``check(x)``, when given, runs before any cast (it raises on a wrong shape). Real
        inputs (floats, ints, bools) of another dtype are cast: to `dtype` when given,
        else float inputs keep float32/float64 and anything else becomes float32.
        """
        if type(x) is np.ndarray and x.dtype is dtype:    # the usual case, quickly
            if check is not None:
                check(x)
            return x
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{self!r} expects a real-valued {name}, got dtype {x.dtype}")
        if check is not None:
            check(x)
        if dtype is None:
            dtype = x.dtype if x.dtype in _FLOATS else np.dtype(np.float32)
        if x.dtype != dtype:
            x = x.astype(dtype)
        return x

    def _as_grad(self, grad_out, shape, dtype):
        """The incoming gradient, checked against the forward output's shape."""
        if not isinstance(grad_out, np.ndarray):
            grad_out = np.asarray(grad_out)
        if grad_out.shape != shape:
            raise ValueError(f"{self!r}: grad_out has shape {grad_out.shape}, expected the "
                             f"forward output's shape {shape}")
        if grad_out.dtype != dtype:
            if grad_out.dtype.kind != "f":
                raise TypeError(f"{self!r}: grad_out must be a float array, got "
                                f"{grad_out.dtype}")
            grad_out = grad_out.astype(dtype)
        return grad_out

    def _saved(self, attr):
        value = getattr(self, attr, None)
        if value is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return value
