"""TensorBoard logging for ``fit`` (optional: `pip install "nnscratch[tensorboard]"`).

    from nnscratch.tensorboard import TensorBoard

    tb = TensorBoard("runs/mlp", update_freq=50, optimizer=optimizer)
    # then: tensorboard --logdir runs
    model.fit(X, y, loss=..., optimizer=optimizer, epochs=10, batch_size=64,
              validation_data=(X_val, y_val), callbacks=[tb])

What it writes, under the names a PyTorch user's ``SummaryWriter`` would give them::

    per step, every `update_freq` optimizer steps (none with update_freq="epoch")
        train/loss         mean of the batch losses of those steps (weighted by batch size)
        train/<name>       the same for any other number fit reports per batch
        train/lr           optimizer.lr at the step's end (before the schedules listed
                           after this callback change it: the rate the step used)
    per epoch (step = the epoch number, counting from 0 as History.epoch)
        epoch/loss, epoch/accuracy, epoch/val_loss, epoch/val_accuracy
                           every number of the epoch's logs: History.history's values
        epoch/lr           optimizer.lr when the epoch began
        weights/<name>     histogram of each parameter (names as in model.state_dict())
        grads/<name>       histogram of its gradient (the last batch's)
        filters/<name>     the first layer's weights as one image: a Conv2d's kernels, or a
                           Linear's columns as s x s images when in_features == s * s
                           (784 -> 28 x 28); white is 0, red +, blue - (`filter_grid`)

Per-step steps count the optimizer steps from 0 (continuing over the ``fit`` calls of one
callback, as ``nnscratch train`` makes one per epoch). With update_freq="epoch" a batch costs
one integer increment; an epoch, some 15 ms for a 784-256-128-10 MLP (its histograms, one
PNG, a flush), about 1% of its epoch on Fashion-MNIST.

Files: one event file per ``fit`` call in `logdir`, which is one run in TensorBoard (give
each run its own folder under a common parent, and point ``tensorboard --logdir`` at the
parent), written synchronously (no thread): flushed at the end of every epoch (and at least
every `FLUSH_SECONDS` between per-step writes), closed by ``on_train_end``. ``fit`` does not
call ``on_train_end`` when training stops with an exception: then every finished epoch is
on disk already, and the file is closed by the next ``fit`` of the callback, by ``close()``
(``with TensorBoard(...) as tb:``), when the callback is garbage-collected, or at
interpreter exit -- whichever comes first.

The learning rate comes from `optimizer`, or, when that is not given, from the optimizer
``fit`` passes to the callbacks (``on_train_begin``'s ``logs["optimizer"]``, or
``model.optimizer``); without one, no lr is logged (with a warning). List the callback
before per-batch learning-rate schedules so that ``train/lr`` is the rate each step used.
"""
import math
import numbers
import os
import socket
import struct
import time
import warnings
import weakref
import zlib

import numpy as np

from . import _checks
from .callbacks import Callback

__all__ = ["TensorBoard", "filter_grid", "FILTER_PALETTE", "require_tensorboard"]

TENSORBOARD_HINT = ('TensorBoard logging needs the tensorboard package: '
                    'pip install "nnscratch[tensorboard]" (or pip install tensorboard)')
FLUSH_SECONDS = 10       # per-step scalars reach the disk at least this often
HISTOGRAM_BINS = 64      # TensorBoard draws 30 bars, re-bucketing what it reads
GROUND = (64, 64, 64)    # filter images: the colour between the tiles
MIN_TILE = 28            # filter images: small kernels are scaled up to about this size


def require_tensorboard():
    """What the writer uses of the `tensorboard` package -- the protocol buffers of event
    files and the record framing (``RecordWriter``: length, data and their masked CRC-32C),
    as ``torch.utils.tensorboard`` uses them -- or ImportError saying how to install it."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as exc:
        raise ImportError(TENSORBOARD_HINT) from exc
    return RecordWriter, event_pb2, summary_pb2


_files_opened = 0       # this process's event files so far (numbers their names)


class _EventFile:
    """One TensorBoard event file in `logdir`, written synchronously in the calling thread.

    Its name, events.out.tfevents.<seconds>.<host>.<pid>.<n> with n zero-padded, sorts in
    the order the files were opened: TensorBoard reads a run's files in name order, and
    takes a step that goes back as a restart (it drops the later points). tensorboard's own
    ``EventFileWriter`` ends the name with an unpadded counter (a file ".10" sorts before
    ".9" of the same second) and writes from a thread of its own; neither suits a file a fit.
    """

    def __init__(self, logdir):
        global _files_opened
        RecordWriter, event_pb2, summary_pb2 = require_tensorboard()
        self._Event, self._Summary = event_pb2.Event, summary_pb2.Summary
        self._HistogramProto = summary_pb2.HistogramProto
        os.makedirs(logdir, exist_ok=True)
        _files_opened += 1
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                         f"{socket.gethostname()}.{os.getpid()}."
                                         f"{_files_opened:06d}")
        self._records = RecordWriter(open(self.path, "xb"))   # (never over another file)
        self._records.write(self._Event(wall_time=time.time(),
                                        file_version="brain.Event:2").SerializeToString())
        self.flush()

    def _write(self, value, step):
        event = self._Event(wall_time=time.time(), step=int(step),
                            summary=self._Summary(value=[value]))
        self._records.write(event.SerializeToString())

    def scalar(self, tag, value, step):
        self._write(self._Summary.Value(tag=tag, simple_value=float(value)), step)

    def histogram(self, tag, values, step):
        """`values`: a finite, non-empty array."""
        self._write(self._Summary.Value(tag=tag, histo=self._HistogramProto(
            **histogram_fields(values))), step)

    def image(self, tag, index, palette, step):
        """`index`: uint8 (height, width), into `palette`: (256, 3) RGB."""
        image = self._Summary.Image(height=index.shape[0], width=index.shape[1], colorspace=3,
                                    encoded_image_string=_png_bytes(index, palette))
        self._write(self._Summary.Value(tag=tag, image=image), step)

    def flush(self):
        self._records.flush()
        self._flushed = time.monotonic()

    def flush_if_due(self):
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def close(self):
        self._records.close()


class TensorBoard(Callback):
    """Write a run's scalars, histograms and first-layer filters for TensorBoard.

    Parameters
    ----------
    logdir : str or os.PathLike
        The run's folder (created if needed); ``tensorboard --logdir`` its parent.
    update_freq : "epoch", "batch" or int >= 1, default "epoch"
        Write ``train/*`` scalars every this many optimizer steps ("batch": every step);
        "epoch" writes only the per-epoch values.
    histograms : bool, default True
        Per epoch, ``weights/<name>`` and ``grads/<name>`` for every parameter.
    images : bool, default True
        Per epoch, ``filters/<name>``: the first Conv2d's or Linear's weights as an image.
    optimizer : Optimizer, optional
        Where ``lr`` is read (by default: the optimizer fit passes to the callbacks).
    max_filters : int >= 1, default 64
        The most kernels (or units) in the filter image.

    Attributes
    ----------
    logdir, update_freq, histograms, images, max_filters,
    step : int
        Optimizer steps seen so far, over every fit of this callback.
    path : str or None
        The event file being written (None when closed).
    """

    def __init__(self, logdir, update_freq="epoch", histograms=True, images=True,
                 optimizer=None, max_filters=64):
        require_tensorboard()           # at construction: before any training is spent
        self.logdir = os.fspath(logdir)
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch":
            if isinstance(update_freq, str):
                raise ValueError(f"update_freq must be 'epoch', 'batch' or an int >= 1, got "
                                 f"{update_freq!r}")
            update_freq = _checks.integer("update_freq", update_freq, 1)
        self.update_freq = update_freq
        self.histograms = _checks.boolean("histograms", histograms)
        self.images = _checks.boolean("images", images)
        if optimizer is not None and not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr attribute (an Optimizer such as "
                            f"SGD(...)), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.max_filters = _checks.integer("max_filters", max_filters, 1)
        self.step = 0
        self._file = None
        self._closer = None         # weakref.finalize: closes the file at exit or collection
        self._active_optimizer = None
        self._epoch_lr = None
        self._window = {}           # name -> [sum of value * size, sum of sizes]

    @property
    def path(self):
        return None if self._file is None else self._file.path

    # -- the Callback hooks --------------------------------------------------------------

    def on_train_begin(self, logs=None):
        logs = logs or {}
        self.close()                  # a file left open by a fit that raised
        self._file = _EventFile(self.logdir)
        self._closer = weakref.finalize(self, self._file.close)
        self._window = {}
        candidates = (self.optimizer, logs.get("optimizer"),
                      getattr(self.model, "optimizer", None))
        self._active_optimizer = next((opt for opt in candidates if hasattr(opt, "lr")), None)
        if self._active_optimizer is None:
            warnings.warn("TensorBoard cannot see the optimizer, so it logs no learning rate: "
                          "give it TensorBoard(..., optimizer=optimizer)", stacklevel=2)
        if self.images and _first_layer_weight(self.model) is None:
            warnings.warn("TensorBoard(images=True): the model's first layer is neither a "
                          "Conv2d nor a Linear with a square number of inputs, so no filter "
                          "images are written", stacklevel=2)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_lr = self._lr()

    def on_batch_end(self, batch, logs=None):
        self.step += 1
        if self.update_freq == "epoch" or self._file is None:
            return
        logs = logs or {}
        size = logs.get("size", 1)
        for name, value in logs.items():
            if name != "size" and _is_real(value):
                total = self._window.setdefault(name, [0.0, 0])
                total[0] += float(value) * size
                total[1] += size
        if self.step % self.update_freq == 0:
            step = self.step - 1                  # the 0-based index of this step
            for name, (weighted, count) in self._window.items():
                if count:
                    self._file.scalar(f"train/{name}", weighted / count, step)
            self._window = {}
            lr = self._lr()
            if lr is not None:
                self._file.scalar("train/lr", lr, step)
            self._file.flush_if_due()

    def on_epoch_end(self, epoch, logs=None):
        if self._file is None:
            return
        for name, value in (logs or {}).items():
            if _is_real(value):                   # (NaN and inf too: TensorBoard shows them)
                self._file.scalar(f"epoch/{name}", value, epoch)
        if self._epoch_lr is not None:
            self._file.scalar("epoch/lr", self._epoch_lr, epoch)
        if self.histograms:
            self._write_histograms(self._file, epoch)
        if self.images:
            found = _first_layer_weight(self.model)
            if found is not None:
                name, grid = found[0], filter_grid(found[1], self.max_filters)
                self._file.image(f"filters/{name}", grid, FILTER_PALETTE, epoch)
        self._file.flush()

    def on_train_end(self, logs=None):
        self.close()

    # -- the rest ---------------------------------------------------------------------

    def close(self):
        """Flush and close the event file (if open); the next fit opens a new one."""
        if self._closer is not None:
            closer, self._closer, self._file = self._closer, None, None
            closer()                                 # (calls _EventFile.close once)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _lr(self):
        opt = self._active_optimizer
        if opt is None:
            return None
        lr = opt.lr                        # (on_train_begin chose one that has it)
        return float(lr) if _is_real(lr) else None

    def _write_histograms(self, file, epoch):
        if self.model is None:
            return
        for name, p in self.model.named_parameters():
            for kind, values in (("weights", p.data), ("grads", p.grad)):
                if values is None or values.size == 0:
                    continue
                finite = np.isfinite(values)
                if not finite.all():            # (fit(check_finite=False) trains on)
                    values = values[finite]
                    if values.size == 0:
                        continue
                file.histogram(f"{kind}/{name}", values, epoch)

    def __repr__(self):
        return (f"TensorBoard(logdir={self.logdir!r}, update_freq={self.update_freq!r}, "
                f"histograms={self.histograms}, images={self.images})")


def _is_real(value):
    """A number to log: an int or float (NumPy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _first_layer_weight(model):
    """(name, weight) of the model's first Conv2d, or of its first Linear when
    in_features is a square; None when the first such layer is neither."""
    from .conv import Conv2d
    from .layers import Linear

    if model is None:
        return None
    for prefix, module in model.named_modules():
        if isinstance(module, Conv2d):
            return _dotted(prefix, "weight"), module.weight.data
        if isinstance(module, Linear):
            side = math.isqrt(module.in_features)
            if side * side != module.in_features:
                return None
            return _dotted(prefix, "weight"), module.weight.data
    return None


def _dotted(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _filter_palette():
    """256 RGB colours: index 127 + 127 t (t in [-1, 1]) is white at t = 0, turning red as t
    goes to +1 and blue as t goes to -1 (``plotting.plot_first_layer``'s colours); index 255
    is `GROUND`. No colour of the scale is GROUND: each has a channel at 255."""
    t = (np.arange(255) - 127) / 127.0
    fade = np.round(255.0 * (1.0 - np.abs(t)))
    palette = np.empty((256, 3), np.uint8)
    palette[:255, 0] = np.where(t < 0, fade, 255)     # + : (255, f, f) red
    palette[:255, 1] = fade
    palette[:255, 2] = np.where(t > 0, fade, 255)     # - : (f, f, 255) blue
    palette[255] = GROUND
    return palette


FILTER_PALETTE = _filter_palette()


def filter_grid(weight, max_filters=64):
    """A first layer's weights as one image of `FILTER_PALETTE` indices (uint8, (height,
    width)): tiles in a near-square grid on a dark grey ground, one pixel apart.

    weight (out, in, kh, kw), a Conv2d's: a tile per (output, input) channel pair, each
    kernel scaled up by a whole factor to about `MIN_TILE` pixels. weight (s * s, units), a
    Linear's: a tile per unit, its column as an s x s image. At most `max_filters` tiles.
    Each tile on its own scale: 0 is white (index 127), its largest |w| full red (+, 254) or
    full blue (-, 0). ``FILTER_PALETTE[grid]`` is the RGB image.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 4:
        kh, kw = weight.shape[2:]
        tiles = weight.reshape(-1, kh, kw)[:max_filters]
        scale = max(1, MIN_TILE // max(kh, kw))
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    elif weight.ndim == 2:
        side = math.isqrt(weight.shape[0])
        if side * side != weight.shape[0]:
            raise ValueError(f"a Linear weight needs a square number of inputs, got "
                             f"{weight.shape[0]}")
        tiles = weight[:, :max_filters].T.reshape(-1, side, side)
    else:
        raise ValueError(f"weight must be (out, in, kh, kw) or (in, out), got {weight.shape}")
    tiles = np.where(np.isfinite(tiles), tiles, 0.0)
    peak = np.abs(tiles).max(axis=(1, 2), keepdims=True)
    t = tiles / np.where(peak > 0, peak, 1.0)                       # in [-1, 1]
    index = np.round(127.0 + 127.0 * t).astype(np.uint8)            # 0 .. 254
    n, th, tw = t.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (th + 1) + 1, cols * (tw + 1) + 1), 255, np.uint8)   # GROUND
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = 1 + r * (th + 1), 1 + c * (tw + 1)
        grid[top:top + th, left:left + tw] = index[i]
    return grid


def histogram_fields(values, bins=HISTOGRAM_BINS):
    """The fields of TensorBoard's HistogramProto for a finite, non-empty array: `bins`
    equal-width buckets from min to max (as TensorFlow 2's ``tf.summary.histogram``; one
    O(n) pass, where torch's ``bins="tensorflow"`` sorts), after an empty bucket ending at
    the minimum (TensorBoard stores right edges only: that one gives the left edge)."""
    v = np.asarray(values).ravel()
    lo, hi = float(v.min()), float(v.max())
    width = (hi - lo) / bins if hi > lo else 1.0 / bins     # (all equal: one unit wide)
    index = ((v - lo) * (1.0 / width)).astype(np.intp)
    counts = np.bincount(np.minimum(index, bins - 1), minlength=bins)
    limits = lo + width * np.arange(bins + 1)        # limits[0] = lo: the empty bucket's edge
    return dict(min=lo, max=hi, num=float(v.size), sum=float(v.sum(dtype=np.float64)),
                sum_squares=float(np.square(v, dtype=np.float64).sum()),
                bucket_limit=limits.tolist(), bucket=[0.0] + counts.astype(float).tolist())


def _png_bytes(index, palette):
    """A uint8 (height, width) array of indices into `palette` ((256, 3) uint8) as the
    bytes of an 8-bit palette PNG: a byte a pixel, a third of the RGB image's, which the
    event file's pure-Python CRC-32C reads at some 0.15 us a byte."""
    height, width = index.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), index])     # filter type 0 per row

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    # colour type 3 (palette), 8 bits a pixel
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", np.ascontiguousarray(palette, np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))
