"""`Sequential`: a stack of layers, trained with ``fit`` and used with ``predict``.

    model = Sequential(Linear(784, 128), ReLU(), Linear(128, 10))
    logits = model(X)                              # forward through every layer
    loss = loss_fn(logits, y)
    model.zero_grad()
    model.backward(loss_fn.backward())             # backward through them in reverse
    optimizer.step()

or, Keras style, ``model.fit(X, y, loss=..., optimizer=..., epochs=..., batch_size=...)``,
``model.evaluate``, ``model.predict``. ``model.summary()`` prints the layer table.
"""
import numpy as np

from . import _memory, serialization, training
from .layers import PARAMETERS_REBOUND, Flatten, Linear, MaxPool2d, ReLU
from .backend import kernels
from .module import Module

__all__ = ["Sequential"]


def _fusable(layer, layers, i):
    """A plain Linear directly followed by a plain ReLU: computed as one fused kernel."""
    return (i + 1 < len(layers) and type(layers[i + 1]) is ReLU and isinstance(layer, Linear)
            and type(layer).forward is Linear.forward and type(layer).infer is Linear.infer)


class _LinearChain:
    """Two or more plain Linear layers in a row (each maybe with its fused ReLU), computed
    by one kernel call each way (`linear_chain_forward`, `linear_chain_backward`): one
    crossing into C and one parallel region for all of them, with the bits of one
    `Linear.forward` (`ReLU.backward`, `Linear.backward`) per layer. Leaves each layer the
    state its own forward would: the Linear keeps its input, the ReLU its output; backward
    reads that state, as the layers' own backward would.

    In training mode the chain writes into arrays it keeps, one set per batch size (the
    layers' outputs; the gradients passed down), as each layer keeps its own when it runs
    alone: a training step allocates nothing. This is the per-step path of every MLP, so
    it is written to do little in Python (one sample's forward is ~5 us in all)."""

    __slots__ = ("linears", "relus", "activations", "one_backward", "_kept", "_dtype", "_k",
                 "_arrays_of")

    def __init__(self, pairs):
        self.linears = tuple(linear for linear, _ in pairs)
        self.relus = tuple(relu for _, relu in pairs)
        self.activations = tuple(None if relu is None else "relu" for relu in self.relus)
        # a Linear whose backward (or what it relies on) is its own runs it, layer by layer
        self.one_backward = all(
            type(linear).backward is Linear.backward and type(linear)._saved is Module._saved
            and type(linear)._as_grad is Module._as_grad for linear in self.linears)
        self._kept = {}     # (what, batch size) -> the kept arrays
        first = self.linears[0]
        self._dtype, self._k = first.dtype, first.in_features
        # (the PARAMETERS_REBOUND they were looked up at, the layers' weights' arrays, their
        # biases'): one tuple, replaced whole, so that threads calling at once read one
        self._arrays_of = (None, (), ())

    def _inputs(self, x):
        """The first layer's input, checked and cast as its own forward does, and the
        layers' current weights and biases."""
        if not (type(x) is np.ndarray and x.dtype is self._dtype and x.ndim == 2
                and x.shape[1] == self._k):    # (the usual input passes these quickly)
            first = self.linears[0]
            x = first._as_input(x, first.dtype, first._check)
        # a Parameter's array is the same object for its lifetime (`Parameter.data`), so the
        # arrays are looked up again only after a Linear's weight or bias was assigned
        known = self._arrays_of
        if known[0] != PARAMETERS_REBOUND[0]:
            rebound = PARAMETERS_REBOUND[0]     # (read before the layers are)
            known = self._arrays_of = (
                rebound, tuple(linear.weight.data for linear in self.linears),
                tuple(None if linear.bias is None else linear.bias.data
                      for linear in self.linears))
        return x, known[1], known[2]

    def _arrays(self, what, n, shapes, dtype, reading):
        """The kept arrays `what` for batch size n (made on first use), None for one that is
        among `reading` (an array fed back in: it must not be written while it is read)."""
        entry = self._kept.get((what, n))
        if entry is None:
            if len(self._kept) >= 16:
                self._kept.clear()
            arrays = [None if shape is None else _memory.empty(shape, dtype) for shape in shapes]
            entry = self._kept[(what, n)] = (arrays, {id(a) for a in arrays if a is not None})
        arrays, ids = entry
        for array in reading:
            if id(array) in ids:
                fed = {id(other) for other in reading}
                return [None if id(kept) in fed else kept for kept in arrays]
        return arrays

    def forward(self, x, training):
        known = self._arrays_of
        if (type(x) is np.ndarray and x.dtype is self._dtype and x.ndim == 2
                and x.shape[1] == self._k and known[0] == PARAMETERS_REBOUND[0]):
            weights, biases = known[1], known[2]    # (`_inputs`'s quick answer, inline)
        else:
            x, weights, biases = self._inputs(x)
        linears = self.linears
        outs = None
        if training:    # the kept output arrays (eval mode: fresh ones)
            n = x.shape[0]
            outs = self._arrays("out", n, [(n, linear.out_features) for linear in linears],
                                linears[0].dtype, (x,))
        results = kernels().linear_chain_forward(x, weights, biases, self.activations, outs)
        inp = x
        for linear, relu, out in zip(linears, self.relus, results):
            linear._x = inp
            if relu is not None:
                relu._kept = out        # (ReLU.keep_output: relu(z) > 0 exactly where z > 0)
            inp = out
        return inp

    def infer(self, x):
        x, weights, biases = self._inputs(x)
        return kernels().linear_chain_forward(x, weights, biases, self.activations)[-1]

    def backward(self, grad_out, compute_grad_input, check=False):
        """dL/d(the first layer's input) (None unless `compute_grad_input`), each layer's
        parameter gradients added into ``.grad`` -- by one `linear_chain_backward` call
        when the layers hold the state of one forward, else by the layers one by one.
        `check`: the kernel checks each gradient for NaN/inf as it writes it and the
        parameters keep the answer (``_grad_finite``, for fit's guard)."""
        linears, relus = self.linears, self.relus
        xs = [getattr(linear, "_x", None) for linear in linears]
        masks = [None if relu is None else getattr(relu, "_kept", None) for relu in relus]
        first, last = linears[0], linears[-1]
        n = -1 if xs[0] is None or not self.one_backward else xs[0].shape[0]
        if n >= 0:
            for x, mask, relu, linear in zip(xs, masks, relus, linears):
                if x is None or x.shape[0] != n or (relu is not None and (
                        mask is None or mask.shape != (n, linear.out_features))):
                    n = -1
                    break
        if n < 0:
            return self._backward_by_layer(grad_out, compute_grad_input)
        dtype = first.dtype
        top = last if relus[-1] is None else relus[-1]
        grad_out = top._as_grad(grad_out, (n, last.out_features), dtype)
        # g_l of each layer (the top one's only when it has a ReLU) and dL/dx: kept arrays
        # when training (none may be read by the call: grad_out, an input or a mask fed in)
        work = grad_x = None
        if first.training:
            shapes = [(n, following.in_features) for following in linears[1:]]
            shapes.append(None if relus[-1] is None else (n, last.out_features))
            shapes.append((n, first.in_features) if compute_grad_input else None)
            kept = self._arrays("grad+x" if compute_grad_input else "grad", n, shapes, dtype,
                                (grad_out, *xs, *masks))
            work, grad_x = kept[:-1], kept[-1]
        grads_w, grads_b, accumulate = [], [], []
        for linear in linears:
            # after a zero_grad the kernel overwrites the gradients (beta = 0 in the GEMM)
            grad_w, acc = linear.weight.grad_for_backward()
            grad_b = None
            if linear.bias is not None:
                grad_b, bias_acc = linear.bias.grad_for_backward()
                if bias_acc != acc:   # only one of the two was zeroed
                    (grad_w if not acc else grad_b).fill(0)
                    acc = True
            grads_w.append(grad_w)
            grads_b.append(grad_b)
            accumulate.append(acc)
        try:
            result = kernels().linear_chain_backward(
                grad_out, xs, [linear.weight.data for linear in linears], grads_w, grads_b,
                masks, grad_x, compute_grad_x=compute_grad_input, accumulate=accumulate,
                work=work, check_finite=check)
        except BaseException:
            # a rejected call leaves the gradients it found zeroed zero
            for grad_w, grad_b, acc in zip(grads_w, grads_b, accumulate):
                if not acc:
                    grad_w.fill(0)
                    if grad_b is not None:
                        grad_b.fill(0)
            raise
        if check:
            for linear, (weight_ok, bias_ok) in zip(linears, result[2]):
                linear.weight._grad_finite = weight_ok
                if linear.bias is not None:
                    linear.bias._grad_finite = bias_ok
        return result[0]

    def _backward_by_layer(self, grad, compute_grad_input):
        for i in range(len(self.linears) - 1, -1, -1):
            if self.relus[i] is not None:
                grad = self.relus[i].backward(grad)
            if i > 0 or compute_grad_input:
                grad = self.linears[i].backward(grad)
            else:
                grad = self.linears[i].backward(grad, compute_grad_input=False)
        return grad


def _chainable(pairs):
    """Consecutive plain Linear steps whose features and dtypes follow on."""
    return all(type(linear).forward is Linear.forward and type(linear).infer is Linear.infer
               and type(linear).__call__ is Module.__call__
               and type(linear).weight is Linear.weight and type(linear).bias is Linear.bias
               and type(linear)._check is Linear._check and type(linear)._as_input is
               Module._as_input and type(linear)._scratch is Module._scratch
               for linear, _ in pairs) and all(
        a.out_features == b.in_features and a.dtype == b.dtype
        for (a, _), (b, _) in zip(pairs, pairs[1:]))


def _with_chains(steps):
    """`steps` with every run of two or more chainable Linear[-ReLU] steps replaced by one
    ``(_LinearChain, None)`` step."""
    result, run = [], []

    def flush():
        if len(run) >= 2 and _chainable(run):
            result.append((_LinearChain(run), None))
        else:
            result.extend(run)
        run.clear()

    for layer, relu in steps:
        if isinstance(layer, Linear) and (not run or _chainable(run + [(layer, relu)])):
            run.append((layer, relu))
            continue
        flush()
        if isinstance(layer, Linear):
            run.append((layer, relu))
        else:
            result.append((layer, relu))
    flush()
    return result


def _repeated(layers):
    """None, or why a model in which one layer object appears twice (at any depth: nested
    Sequentials included) cannot train."""
    first = {}

    def walk(modules, path):
        for i, module in enumerate(modules):
            where = path + (i,)
            seen = first.setdefault(id(module), where)
            if seen != where:
                a, b = (".".join(map(str, p)) for p in (seen, where))
                return (f"layers {a} and {b} are the same {type(module).__name__} object: a "
                        f"layer keeps what its backward needs from its last forward, so one "
                        f"object cannot run twice in a training Sequential (eval mode is "
                        f"fine); use two layer objects")
            if type(module).children is not Module.children:
                found = walk(module.children(), where)
                if found:
                    return found
        return None

    return walk(layers, ())


def _refuse_repeated(layers):
    """ValueError (`_repeated`'s message) when one layer object appears twice in `layers`."""
    repeated = _repeated(layers)
    if repeated:
        raise ValueError(repeated)


def _order(layers):
    """The order the layers run in: their own, except that a plain ReLU directly followed
    by a plain MaxPool2d runs after it. max and ReLU commute exactly (relu(max(window)) =
    max(relu(window)), NaN included), and so do their gradients (both are zero for a
    window whose maximum is <= 0, and route to the same argmax otherwise), so the output
    and every gradient are bit for bit the same -- with the ReLU on a quarter of the
    elements (2x2 pooling). A Linear fused with its ReLU keeps its place."""
    order, i = [], 0
    while i < len(layers):
        if (type(layers[i]) is ReLU and i + 1 < len(layers) and type(layers[i + 1]) is MaxPool2d
                and not (i > 0 and _fusable(layers[i - 1], layers, i - 1))):
            order += [i + 1, i]
            i += 2
        else:
            order.append(i)
            i += 1
    return order


class _Layers(list):
    """Sequential's list of layers: a plain list that counts its changes, so that the
    model knows its run plan still holds without comparing the layers one by one on every
    call (a model's ``layers`` may also be set to any list: that one is compared)."""

    __slots__ = ("changes",)

    def __init__(self, layers=()):
        super().__init__(layers)
        self.changes = 0


def _counting(name):
    method = getattr(list, name)

    def changed(self, *args, **kwargs):
        self.changes += 1
        return method(self, *args, **kwargs)
    changed.__name__ = name
    changed.__doc__ = method.__doc__
    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
              "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(_Layers, _name, _counting(_name))
del _name


class Sequential(Module):
    """Layers applied one after the other: ``model(x) = layers[-1](...layers[0](x))``.

    A new model is in training mode (as in PyTorch); ``predict`` / ``evaluate`` always
    compute in eval mode, without changing the mode. ``model[i]`` is the i-th layer.

    Parameters
    ----------
    *layers : Module
    """

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Module instances; argument {i} is "
                                f"{type(layer).__name__}")
        self.layers = _Layers(layers)
        self.stop_training = False
        self._last_loss = None     # the loss of the last fit, evaluate's default
        self._sample_shape = None  # per-sample input shape seen last, for summary()
        # (what the plan was made for: the _Layers object and its count of changes, or the
        # ids of the layers of any other list; `_plan`)
        self._plan_cache = ((), ([], []))
        self._repeats = (None,)             # `_plan`'s verdict (None: ask `_repeated` each time)
        # set by fit while it guards against NaN/inf: a chain of layers checks the gradients
        # it writes as it writes them (see Parameter._grad_finite)
        self._check_gradients = False

    # --- the computation -------------------------------------------------------------

    def forward(self, x):
        """The output of the last layer for a batch ``x``.

        In training mode the returned array is a kept buffer, overwritten by the next
        forward with the same batch shape; in eval mode it is a fresh array.
        """
        made_for, plan = self._plan_cache      # (`_plan`'s quick answer, without the call)
        if not (made_for and made_for[0] is self.layers and made_for[1] == made_for[0].changes):
            plan = self._plan()
        steps = plan[1]
        training = self.training
        if training:
            self._refuse_repeated()
        if type(x) is not np.ndarray or x.dtype.kind not in "fc" or x.ndim < 1:
            x = self._cast(x)
        self._sample_shape = x.shape[1:]
        out = x
        for layer, relu in steps:
            if relu is not None:
                # Linear then ReLU in one pass: the ReLU is applied in the GEMM's write-back,
                # and the ReLU layer keeps relu(z) for its backward (relu(z) > 0 iff z > 0)
                out = relu.keep_output(layer.forward(out, activation="relu"))
            elif type(layer) is _LinearChain:
                out = layer.forward(out, training)
            else:
                out = layer(out)
        if not training and (out is x or (getattr(out, "base", None) is not None
                                          and np.may_share_memory(out, x))):
            out = out.copy()   # e.g. Sequential(Flatten()) in eval mode: never a view of x
        return out

    def backward(self, grad_out, *, compute_grad_input=True):
        """Back-propagate dL/d(output) through the layers in reverse; each layer adds its
        parameters' gradients into ``.grad``. Returns dL/d(input), or None when
        ``compute_grad_input`` is False (the first layer then skips that product)."""
        grad = grad_out
        steps = self._plan()[1]
        self._refuse_repeated()
        if not steps:
            return grad if compute_grad_input else None
        # the forward's steps, reversed: a fused ReLU's backward before its Linear's, a
        # chain of Linear layers in one call
        for i in range(len(steps) - 1, -1, -1):
            layer, relu = steps[i]
            wanted = compute_grad_input or i > 0
            if type(layer) is _LinearChain:
                grad = layer.backward(grad, wanted, getattr(self, "_check_gradients", False))
                continue
            if relu is not None:
                grad = relu.backward(grad)
            grad = layer.backward(grad) if wanted else layer.backward(
                grad, compute_grad_input=False)
        return grad if compute_grad_input else None

    def infer(self, x):
        """Eval-mode output, keeping no state and reusing no buffer: safe from any thread."""
        x = self._cast(x)
        out = x
        for layer, relu in self._plan()[1]:
            out = layer.infer(out) if relu is None else layer.infer(out, activation="relu")
        return out.copy() if np.may_share_memory(out, x) else out

    def _plan(self):
        """``(order, steps)`` for the layers as they are now: `order` the layer indices in
        the order they run (`_order`), `steps` one ``(layer, relu)`` per forward step, where
        `relu` is the ReLU layer fused into `layer` (`_fusable`) or None, and runs of plain
        Linear steps are one `_LinearChain` step. Made again only when the list of layers
        has changed (with `_repeated`'s verdict on it, see `_refuse_repeated`)."""
        layers = self.layers
        made_for, plan = self._plan_cache
        if type(layers) is _Layers:     # unchanged since the plan was made: nothing to compare
            if made_for and made_for[0] is layers and made_for[1] == layers.changes:
                return plan
            ids, stale = (layers, layers.changes), True
        else:
            # the same layer objects (by identity: a layer's __eq__, if it has one, is not
            # asked; the plan holds the layers, so their ids are not reused while it is kept)
            ids = tuple(map(id, layers))
            stale = ids != made_for
        if stale:
            layers = tuple(layers)
            order, steps, k = _order(layers), [], 0
            while k < len(order):
                i = order[k]
                fused = _fusable(layers[i], layers, i)
                steps.append((layers[i], layers[i + 1] if fused else None))
                k += 2 if fused else 1
            plan = (order, _with_chains(steps))
            # a layer object in two places keeps only its second input for backward: the
            # answer holds while the list does, unless a layer is a container (its own
            # layers may change: asked again each time)
            nested = any(type(layer).children is not Module.children for layer in layers)
            self._repeats = None if nested else (_repeated(layers),)
            self._plan_cache = (ids, plan)
        return plan

    def _refuse_repeated(self):
        """ValueError when one layer object appears twice in the model (training mode and
        backward: its backward would see only its last forward). After a `_plan()` call."""
        verdict = self._repeats
        if verdict is None:
            _refuse_repeated(self.layers)
        elif verdict[0]:
            raise ValueError(verdict[0])

    def _cast(self, x):
        """The input as an ndarray; non-float inputs (e.g. uint8 pixels) cast to the
        model's dtype once, here, rather than layer by layer."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind in "iub":
            dtype = self.dtype      # (looked up only when needed: it walks the parameters)
            if dtype is not None:
                x = x.astype(dtype)
        if x.ndim < 1:
            raise ValueError("Sequential expects a batch of shape (N, ...), got a scalar")
        return x

    # --- structure -------------------------------------------------------------------

    def children(self):
        return list(self.layers)

    def named_parameters(self):
        """``("<layer index>.<name>", Parameter)`` pairs, e.g. ``("0.weight", ...)``."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers)
                for name, p in layer.named_parameters()]

    def named_buffers(self):
        """``("<layer index>.<name>", ndarray)`` pairs of the layers' saved state."""
        return [(f"{i}.{name}", b) for i, layer in enumerate(self.layers)
                for name, b in layer.named_buffers()]

    @property
    def dtype(self):
        """The parameters' dtype (None for a model without parameters)."""
        params = self.parameters()
        return params[0].dtype if params else None

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def flops(self, input_shape):
        total, shape = 0, tuple(input_shape)
        for layer in self.layers:
            total += layer.flops(shape)
            shape = layer.output_shape(shape)
        return total

    def get_config(self):
        return {"layers": [{"type": type(layer).__name__, "config": layer.get_config()}
                           for layer in self.layers]}

    def __repr__(self):
        if not self.layers:
            return "Sequential()"
        lines = [f"  ({i}): " + repr(layer).replace("\n", "\n  ")
                 for i, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def summary(self, input_shape=None, print_fn=print):
        """Print and return a table: layer, output shape, parameters, FLOPs per sample.

        Parameters
        ----------
        input_shape : tuple, optional
            Shape of one sample. By default that of the last input seen, else the
            ``in_features`` of a first `Linear` layer.
        print_fn : callable or None, default print
        """
        shape = self._summary_input_shape(input_shape)
        rows = [("Layer", "Output shape", "Params", "FLOPs/sample")]
        total_params = total_flops = 0
        for i, layer in enumerate(self.layers):
            flops = layer.flops(shape)
            shape = layer.output_shape(shape)
            params = sum(p.size for p in layer.parameters())
            total_params += params
            total_flops += flops
            rows.append((f"{i}: {layer!r}", "(N, " + ", ".join(map(str, shape)) + ")",
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
        ])
        if print_fn is not None:
            print_fn(text)
        return text

    def _summary_input_shape(self, input_shape):
        if input_shape is not None:
            return tuple(int(d) for d in input_shape)
        if self._sample_shape is not None:
            return tuple(self._sample_shape)
        for layer in self.layers:
            if hasattr(layer, "in_features"):
                return (layer.in_features,)
            if isinstance(layer, Flatten):   # any sample shape flattens: unknowable
                break
        raise ValueError("summary() needs input_shape= (the shape of one sample)")

    # --- Keras-style training and inference (see nnscratch.training) ------------------

    def fit(self, X, y, *, loss, optimizer, epochs, batch_size, validation_data=None,
            validation_split=0.0, shuffle=True, seed=None, progress=True, callbacks=None,
            initial_epoch=0, check_finite=True):
        """Train with mini-batch gradient descent; see `nnscratch.training.fit`."""
        return training.fit(self, X, y, loss=loss, optimizer=optimizer, epochs=epochs,
                            batch_size=batch_size, validation_data=validation_data,
                            validation_split=validation_split, shuffle=shuffle, seed=seed,
                            progress=progress, callbacks=callbacks,
                            initial_epoch=initial_epoch, check_finite=check_finite)

    def evaluate(self, X, y, loss=None, batch_size=256):
        """``{"loss": ..., "accuracy": ...}`` in eval mode; see `nnscratch.training.evaluate`."""
        return training.evaluate(self, X, y, loss=loss, batch_size=batch_size)

    def predict(self, X, batch_size=256):
        """The model's outputs for X, in batches, in eval mode (a fresh array)."""
        return training.predict(self, X, batch_size=batch_size)

    def predict_proba(self, X, batch_size=256):
        """Class probabilities: softmax of the outputs (sigmoid for one output column)."""
        return training.predict_proba(self, X, batch_size=batch_size)

    def save(self, path):
        """Write architecture and weights to exactly `path` (plain .npz, atomic, no pickle)."""
        serialization.save(self, path)
