"""``model.save(path)`` and ``nnscratch.load(path)``: a plain ``.npz`` file, no pickle.

The file is a NumPy ``.npz`` zip holding

* ``__architecture__``: a uint8 array, the UTF-8 bytes of a JSON document
  ``{"format": "nnscratch", "version": 2, "type": "Sequential", "config": {"layers":
  [{"type": "Linear", "config": {...}}, ...]}}``: each module's registered class name and
  its ``get_config()``, sub-modules nested the same way;
* the model's ``state_dict()``: one array per parameter and buffer, named as
  ``named_parameters()`` names them (``"0.weight"``, ``"1.body.0.bias"``,
  ``"3.running_mean"``, ...).

Anyone can read it with ``np.load(path)``. Saving writes a temporary file in the same
directory, flushes and fsyncs it, then renames it to exactly `path` (``os.replace``): a
crash leaves either the old file or the new one, never half of one. Loading uses
``allow_pickle=False`` and builds only classes registered with ``nnscratch.register``
(the built-in layers are); anything else -- not a zip, truncated, edited, another
program's ``.npz`` -- is a ``ValueError``. Files of version 1 (a list of layers) load too.
"""
import json
import os
import secrets
import time

import numpy as np

from . import _random
from .module import Module, registered, registered_name

__all__ = ["save", "load", "model_arrays", "model_from_arrays", "write_npz", "read_npz",
           "architecture", "build"]

FORMAT, VERSION = "nnscratch", 2
MAX_DEPTH = 64        # modules nested deeper than this in a file are refused
MAX_NESTING = 256     # and lists and modules nested deeper than this
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
    """{name: array} of everything `save` writes: the architecture and the state_dict."""
    document = {"format": FORMAT, "version": VERSION, **architecture(model)}
    arrays = {ARCHITECTURE_KEY: np.frombuffer(json.dumps(document).encode("utf-8"), np.uint8)}
    arrays.update(model.state_dict())
    return arrays


def architecture(module):
    """``{"type": registered name, "config": get_config()}`` of `module`, its sub-modules
    (values of the config) described the same way; ValueError for an unregistered class."""
    name = registered_name(type(module))
    if name is None:
        raise ValueError(
            f"{type(module).__name__} cannot be saved: nnscratch.load could not rebuild it. "
            f"Decorate the class with @nnscratch.register and give it get_config() (the "
            f"constructor's arguments)")
    return {"type": name, "config": _described(module.get_config(), type(module).__name__)}


def _described(value, where):
    if isinstance(value, Module):
        return {"__module__": architecture(value)}
    if isinstance(value, dict):
        return {str(k): _described(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_described(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise ValueError(f"{where}.get_config() holds a {type(value).__name__}, which a saved "
                     f"file cannot describe (JSON values and modules only)")


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
    """Read a model written by ``model.save``: the saved module (a `Sequential` for the
    models of this library), in training mode.

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
    """The model described by `model_arrays`-style {name: array} (read from `path`)."""
    def bad(reason):
        return ValueError(f"{path!r} is not a valid nnscratch model file: {reason}")

    model = _build_model(arrays, bad)
    expected = model.state_dict()
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
    model.load_state_dict(stored)
    return model


def _build_model(arrays, bad):
    """The module the file's architecture describes (with throw-away initial weights)."""
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
    version = document.get("version")
    if version == 1:        # the first format: the layers of a Sequential
        specs = document.get("layers")
        if not isinstance(specs, list):
            raise bad("the architecture has no list of layers")
        document = {"type": "Sequential", "config": {"layers": [
            {"__module__": spec} for spec in specs]}}
    elif version != VERSION:
        raise bad(f"unsupported format version {version!r} (this is version {VERSION})")
    state = _random.get_state()     # building layers draws initial weights: put them back
    try:
        return build(document, bad)
    finally:
        _random.set_state(state)


def build(spec, bad, where="the model", depth=0, nesting=0):
    """The module ``{"type": ..., "config": ...}`` describes (see `architecture`); `bad`
    makes the exception for a reason. Whatever a constructor raises is that exception."""
    if depth > MAX_DEPTH:
        raise bad(f"modules nested deeper than {MAX_DEPTH}")
    if not isinstance(spec, dict) or not isinstance(spec.get("config", {}), dict):
        raise bad(f"{where} is not a module entry: {spec!r}")
    kind, config = spec.get("type"), spec.get("config", {})
    cls = registered(kind) if isinstance(kind, str) else None
    if cls is None:
        raise bad(f"{where} is of type {kind!r}, which is not a registered module class (a "
                  f"layer of your own must be decorated with @nnscratch.register, and the "
                  f"module defining it imported before nnscratch.load)")
    arguments = {key: _built(value, bad, f"{where}.{key}", depth, nesting)
                 for key, value in config.items()}
    try:
        return cls.from_config(arguments)
    except MemoryError:
        raise bad(f"{where} ({kind}) needs more memory than there is") from None
    except Exception as err:     # (a file must not reach a user class's other exceptions)
        raise bad(f"{where} ({kind}) has a bad config: {err!r}") from None


def _built(value, bad, where, depth, nesting):
    if nesting > MAX_NESTING:
        raise bad(f"{where}: lists and modules nested deeper than {MAX_NESTING}")
    if isinstance(value, dict) and set(value) == {"__module__"}:
        return build(value["__module__"], bad, where, depth + 1, nesting + 1)
    if isinstance(value, list):
        return [_built(v, bad, f"{where}[{i}]", depth, nesting + 1)
                for i, v in enumerate(value)]
    return value
