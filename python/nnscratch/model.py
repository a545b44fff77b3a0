"""`Sequential`: layers applied one after the other, trained with ``fit``, used with ``predict``.

    model = Sequential(Linear(784, 128), ReLU(), Linear(128, 10))
    logits = model(X)                              # forward through every layer
    loss = loss_fn(logits, y)
    model.zero_grad()
    model.backward(loss_fn.backward())             # backward through them in reverse
    optimizer.step()

or, Keras style, ``model.fit(X, y, loss=..., optimizer=..., epochs=..., batch_size=...)``,
``model.evaluate``, ``model.predict``. ``model.summary()`` prints the layer table.

The batch methods (``fit``, ``evaluate``, ``predict``, ``predict_proba``) take uint8 X as
pixels, k / 255, and apply ``model.input_normalization`` (set by ``fit(normalize=...)``)
to each batch; ``model(x)`` is the layers alone, on inputs already prepared so.

On the compiled kernels a Sequential hands its layers to the fast path
(``nnscratch._fast``), which computes the same numbers with fused kernels and kept
buffers; the loops below are what it computes, and what runs on the NumPy backend.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

import numpy as np
import numpy.typing as npt

from . import _fast, serialization, training
from .data import Normalize
from .backend import fast_path
from .layers import Flatten
from .module import Module, ModuleSequence, register, repeated_modules

if TYPE_CHECKING:
    from .callbacks import Callback, History
    from .losses import Loss
    from .metrics import MetricSpec
    from .optim import Optimizer

__all__ = ["Sequential"]


@register
class Sequential(ModuleSequence):
    """Layers applied one after the other: ``model(x) = layers[-1](...layers[0](x))``.

    The layers are registered as ``"0"``, ``"1"``, ... (``named_parameters()`` gives
    ``"0.weight"``). ``model[i]`` is the i-th layer, ``model[a:b]`` a Sequential of some of
    them; ``append``, ``insert``, ``extend``, ``pop``, ``model[i] = layer`` and
    ``del model[i]`` change the list. A new model is in training mode (as in PyTorch);
    ``predict`` / ``evaluate`` compute in eval mode without changing the mode.

    Parameters
    ----------
    *layers : Module

    Attributes
    ----------
    input_normalization : nnscratch.data.Normalize or None
        The per-channel ``(x - mean) / std`` that ``fit``, ``evaluate``, ``predict`` and
        ``predict_proba`` apply to every batch of X (after uint8 pixels k became k / 255)
        before the first layer; None (the default) applies none. ``fit(normalize=True)``
        sets it from the training data's statistics. It is part of the model: saved with
        it (the architecture's config) and restored by ``nnscratch.load``. ``model(x)``,
        ``forward`` and ``infer`` never apply it (they compute the layers alone), nor does
        a Sequential used as a layer inside another: it belongs to the model the batch
        methods are called on.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__(layers)
        self.stop_training = False
        self._last_loss: Loss | None = None     # the loss of the last fit: evaluate's default
        # the per-sample shape of fit's/predict's X: summary's default
        self._sample_shape: tuple[int, ...] | None = None
        self._input_normalization: Normalize | None = None

    @property
    def input_normalization(self) -> Normalize | None:
        """The normalisation the batch methods apply to X (see the class docstring)."""
        return self._input_normalization

    @input_normalization.setter
    def input_normalization(self, value: Normalize | None) -> None:
        if value is not None and not isinstance(value, Normalize):
            raise TypeError(f"input_normalization must be an nnscratch.data.Normalize or "
                            f"None, got {type(value).__name__}")
        self._input_normalization = value

    # --- the computation -------------------------------------------------------------

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The output of the last layer for a batch ``x``.

        On the compiled kernels, in training mode, the returned array is a kept buffer,
        overwritten by the next forward with the same batch shape.
        """
        if fast_path():
            return _fast.forward(self, x)
        for layer in self:
            x = layer(x)
        return x

    def backward(self, grad_out: np.ndarray, *,
                 compute_grad_input: bool = True) -> np.ndarray | None:
        """Back-propagate dL/d(output) through the layers in reverse; each adds its
        parameters' gradients into ``.grad``. Returns dL/d(input), or None when
        ``compute_grad_input`` is False (the first layer then skips that product)."""
        if fast_path():
            return _fast.backward(self, grad_out, compute_grad_input)
        problem = repeated_modules(self)
        if problem:
            raise ValueError(problem)
        layers = list(self)
        for layer in reversed(layers[1:]):
            # (an array: each layer but the first is asked for its input's gradient)
            grad_out = cast(np.ndarray, layer.backward(grad_out))
        if not layers:
            return grad_out if compute_grad_input else None
        return layers[0].backward(grad_out, compute_grad_input=compute_grad_input)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode output, keeping no state: safe from several threads (``predict``)."""
        if fast_path():
            return _fast.infer(self, x)
        for layer in self:
            x = layer.infer(x)
        return x

    # --- the list of layers ------------------------------------------------------------

    @classmethod
    def _of(cls, modules):
        return Sequential(*modules)

    @property
    def layers(self) -> tuple[Module, ...]:
        """The layers, as a tuple (change them through the model: ``model.append(...)``)."""
        return cast("tuple[Module, ...]", tuple(self._modules.values()))

    @property
    def dtype(self) -> np.dtype | None:
        """The parameters' dtype (None for a model without parameters)."""
        first = next(self.parameters(), None)
        return None if first is None else first.dtype

    # --- shapes and description ----------------------------------------------------------

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(input_shape)
        for layer in self:
            shape = layer.output_shape(shape)
        return shape

    def flops(self, input_shape: Sequence[int]) -> int:
        total, shape = 0, tuple(input_shape)
        for layer in self:
            total += layer.flops(shape)
            shape = layer.output_shape(shape)
        return total

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"layers": list(self.layers)}
        norm = self._input_normalization
        if norm is not None:    # (only then: the files of other models stay as they were)
            config["input_normalization"] = {"mean": norm.mean.tolist(),
                                             "std": norm.std.tolist()}
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        if not set(config) <= {"layers", "input_normalization"} or "layers" not in config \
                or not isinstance(config["layers"], list):
            raise ValueError(f"a Sequential's config is {{'layers': [...]}} (and optionally "
                             f"'input_normalization': {{'mean': [...], 'std': [...]}}), got "
                             f"{config!r:.200}")
        model = cls(*config["layers"])
        norm = config.get("input_normalization")
        if norm is not None:
            if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
                raise ValueError(f"a Sequential's input_normalization is {{'mean': [...], "
                                 f"'std': [...]}}, got {norm!r:.200}")
            model.input_normalization = Normalize(norm["mean"], norm["std"])
        return model

    def summary(self, input_shape: Sequence[int] | None = None,
                print_fn: Callable[[str], Any] | None = print) -> str:
        """Print and return a table: layer, output shape, parameters, FLOPs per sample.

        Parameters
        ----------
        input_shape : tuple, optional
            Shape of one sample. By default that of the samples of the last ``fit``,
            ``evaluate`` or ``predict``, else the ``in_features`` of a first `Linear` layer.
        print_fn : callable or None, default print
            Called with the table's text; None prints nothing.

        Returns
        -------
        str
            The table.
        """
        shape = self._summary_input_shape(input_shape)
        rows = [("Layer", "Output shape", "Params", "FLOPs/sample")]
        total_params = total_flops = 0
        for i, layer in enumerate(self):
            flops = layer.flops(shape)
            shape = layer.output_shape(shape)
            params = sum(p.size for p in layer.parameters())    # nested ones too
            total_params += params
            total_flops += flops
            text = repr(layer).splitlines()[0] + (" ...)" if "\n" in repr(layer) else "")
            rows.append((f"{i}: {text}", "(N, " + ", ".join(map(str, shape)) + ")",
                         f"{params:,}", f"{flops:,}"))
        widths = [max(len(row[c]) for row in rows) for c in range(4)]

        def fmt(row):
            return "  ".join([row[0].ljust(widths[0])] +
                             [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])

        rule = "-" * len(fmt(rows[0]))
        dtype = self.dtype.name if self.dtype is not None else "-"
        text = "\n".join([fmt(rows[0]), rule] + [fmt(r) for r in rows[1:]] + [
            rule,
            f"Total params: {total_params:,} ({dtype})",
            f"Forward FLOPs per sample: {total_flops:,}",
        ] + ([] if self._input_normalization is None else
             [f"Input normalization: {self._input_normalization!r}"]))
        if print_fn is not None:
            print_fn(text)
        return text

    def _summary_input_shape(self, input_shape):
        if input_shape is not None:
            return tuple(int(d) for d in input_shape)
        if self._sample_shape is not None:
            return tuple(self._sample_shape)
        for layer in self:
            if hasattr(layer, "in_features"):
                return (layer.in_features,)
            if isinstance(layer, Flatten):   # any sample shape flattens: unknowable
                break
        raise ValueError("summary() needs input_shape= (the shape of one sample)")

    # --- Keras-style training and inference (see nnscratch.training) ------------------

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike, *, loss: Loss | str,
            optimizer: Optimizer, epochs: int, batch_size: int,
            validation_data: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
            validation_split: float = 0.0, shuffle: bool = True, seed: int | None = None,
            progress: bool | str = True, callbacks: Sequence[Callback] | None = None,
            initial_epoch: int = 0, check_finite: bool = True,
            transform: Callable[[np.ndarray, np.random.Generator], npt.ArrayLike] | None = None,
            metrics: Sequence[MetricSpec] | None = None,
            normalize: bool | Normalize | None = None) -> History:
        """Train with mini-batch gradient descent; see `nnscratch.training.fit`."""
        return training.fit(self, X, y, loss=loss, optimizer=optimizer, epochs=epochs,
                            batch_size=batch_size, validation_data=validation_data,
                            validation_split=validation_split, shuffle=shuffle, seed=seed,
                            progress=progress, callbacks=callbacks,
                            initial_epoch=initial_epoch, check_finite=check_finite,
                            transform=transform, metrics=metrics, normalize=normalize)

    def evaluate(self, X: npt.ArrayLike, y: npt.ArrayLike, loss: Loss | str | None = None,
                 batch_size: int = 256,
                 metrics: Sequence[MetricSpec] | None = None) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` in eval mode; see `nnscratch.training.evaluate`."""
        return training.evaluate(self, X, y, loss=loss, batch_size=batch_size,
                                 metrics=metrics)

    def predict(self, X: npt.ArrayLike, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for X, in batches, in eval mode (a fresh array)."""
        return training.predict(self, X, batch_size=batch_size)

    def predict_proba(self, X: npt.ArrayLike, batch_size: int = 256) -> np.ndarray:
        """Class probabilities: softmax of the outputs (sigmoid for one output column)."""
        return training.predict_proba(self, X, batch_size=batch_size)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write architecture and weights to exactly `path` (a plain ``.npz`` zip, or a
        safetensors file when `path` ends in ``.safetensors``; written atomically, no
        pickle); ``nnscratch.load(path)`` reads it back."""
        serialization.save(self, path)


_fast.inline(Sequential)     # a plain Sequential inside a Sequential is planned in its place
