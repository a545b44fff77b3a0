"""``model.save(path)`` and ``nnscratch.load(path)``: a plain ``.npz`` file, no pickle.

The file is a NumPy ``.npz`` zip holding

* ``__architecture__``: a uint8 array, the UTF-8 bytes of a JSON document
  ``{"format": "nnscratch", "version": 1, "layers": [{"type": "Linear", "config":
  {...}}, ...]}``;
* one array per parameter, named as ``model.named_parameters()`` names it
  (``"0.weight"``, ``"0.bias"``, ...), and one per saved buffer (``model.named_buffers()``,
  e.g. a batch norm's running statistics).

Anyone can read it with ``np.load(path)``. Saving writes a temporary file in the same
directory, flushes and fsyncs it, then renames it to exactly `path` (``os.replace``): a
crash leaves either the old file or the new one, never half of one. Loading uses
``allow_pickle=False`` and accepts only the layer types of ``nnscratch.layers``; anything
else — not a zip, truncated, edited, or another program's ``.npz`` — is a ``ValueError``.
"""
import json
import os
import secrets
import time

import numpy as np

from . import _random
from .layers import LAYERS

__all__ = ["save", "load", "model_arrays", "model_from_arrays", "write_npz", "read_npz"]

FORMAT, VERSION = "nnscratch", 1
ARCHITECTURE_KEY = "__architecture__"
EXTRA_PREFIX = "checkpoint/"   # entries a checkpoint adds; `load` reads past them


def save(model, path):
    """Write `model` (a Sequential) to exactly `path`, atomically.

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike
        Used as given (no ".npz" is appended).
    """
    write_npz(path, model_arrays(model))


def model_arrays(model):
    """{name: array} of everything `save` writes: the architecture, parameters, buffers."""
    document = {"format": FORMAT, "version": VERSION, **model.get_config()}
    arrays = {ARCHITECTURE_KEY: np.frombuffer(json.dumps(document).encode("utf-8"), np.uint8)}
    for name, param in model.named_parameters():
        arrays[name] = param.data
    for name, buffer in model.named_buffers():
        arrays[name] = buffer
    return arrays


def write_npz(path, arrays):
    """Write {name: array} as an uncompressed .npz to exactly `path`, atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)    # a file object: np.savez appends no ".npz"
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
    _remove_stale_temps(directory, os.path.basename(path))


STALE_SECONDS = 600   # a temporary file untouched this long belongs to a save that died


def _remove_stale_temps(directory, name):
    """Delete what saves of `name` killed mid-write left behind (`.<name>.<hex>.tmp` older
    than STALE_SECONDS: a live concurrent save keeps its file fresh)."""
    prefix, now = f".{name}.", time.time()
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(".tmp"):
            full = os.path.join(directory, entry)
            try:
                if now - os.stat(full).st_mtime > STALE_SECONDS:
                    os.unlink(full)
            except OSError:
                pass


def _create_temp(directory, name):
    """A new temporary file beside the target, mode 0o666 minus the umask as `open` gives
    (tempfile.mkstemp's 0o600 would survive the rename); (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """Read a model written by ``model.save``; returns a Sequential in training mode.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When the file is not a valid nnscratch model file.
    """
    path = os.fspath(path)
    arrays = read_npz(path)
    return model_from_arrays(path, {k: v for k, v in arrays.items()
                                    if not k.startswith(EXTRA_PREFIX)})


def read_npz(path):
    """{name: array} of an .npz file, without pickle; ValueError for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            arrays = {key: archive[key] for key in archive.files}
    except MemoryError:
        raise
    except Exception as err:
        # a damaged zip raises many kinds (BadZipFile, zlib.error, NotImplementedError for an
        # unknown compression, RuntimeError for "encrypted", tokenize errors in a bad .npy
        # header, TypeError for an .npy that is no archive): all mean "not a model file"
        raise ValueError(f"{path!r} is not a valid nnscratch model file: {err}") from None
    return arrays


def model_from_arrays(path, arrays):
    """The Sequential described by `model_arrays`-style {name: array} (read from `path`)."""
    from .model import Sequential   # model imports this module

    model = Sequential(*_build_layers(path, arrays))
    expected = {name: p.data for name, p in model.named_parameters()}
    expected.update(model.named_buffers())
    stored = {k: v for k, v in arrays.items() if k != ARCHITECTURE_KEY}
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise ValueError(f"{path!r}: the weights do not match the architecture (missing "
                         f"{missing}, unexpected {extra})")
    for name, target in expected.items():
        value = stored[name]
        if value.shape != target.shape or value.dtype != target.dtype:
            raise ValueError(f"{path!r}: weight {name!r} has shape {value.shape} and dtype "
                             f"{value.dtype}, the architecture needs {target.shape} "
                             f"{target.dtype}")
        np.copyto(target, value)
    return model


def _build_layers(path, arrays):
    """The layers the file's architecture describes (with throw-away initial weights)."""
    def bad(reason):
        return ValueError(f"{path!r} is not a valid nnscratch model file: {reason}")

    raw = arrays.get(ARCHITECTURE_KEY)
    if raw is None:
        raise bad(f"no {ARCHITECTURE_KEY!r} entry (not written by nnscratch)")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise bad(f"{ARCHITECTURE_KEY!r} must be a 1-D uint8 array")
    try:
        document = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"the architecture is not valid JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise bad("the architecture has no 'format': 'nnscratch' entry")
    if document.get("version") != VERSION:
        raise bad(f"unsupported format version {document.get('version')!r} (this is "
                  f"version {VERSION})")
    specs = document.get("layers")
    if not isinstance(specs, list):
        raise bad("the architecture has no list of layers")
    state = _random.get_state()     # building layers draws initial weights: put them back
    try:
        return [_build_layer(spec, f"layer {i}", bad) for i, spec in enumerate(specs)]
    finally:
        _random.set_state(state)


def _build_layer(spec, where, bad):
    """One layer from its {"type", "config"} entry; a nested Sequential recursively."""
    from .model import Sequential

    if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
        raise bad(f"{where} is not a layer entry: {spec!r}")
    kind, config = spec.get("type"), spec.get("config", {})
    if kind == "Sequential":
        children = config.get("layers")
        if not isinstance(children, list) or set(config) != {"layers"}:
            raise bad(f"{where} (Sequential) has a bad config")
        return Sequential(*[_build_layer(child, f"{where}.{j}", bad)
                            for j, child in enumerate(children)])
    if kind not in LAYERS:
        raise bad(f"{where} is not a known layer: {spec!r}")
    try:
        return LAYERS[kind](**config)
    except (TypeError, ValueError) as err:
        raise bad(f"{where} ({kind}) has a bad config: {err}") from None
