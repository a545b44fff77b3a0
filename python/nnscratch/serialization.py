"""``model.save(path)`` and ``nnscratch.load(path)``: a plain ``.npz`` file (or, for a path
ending in ``.safetensors``, a Hugging Face safetensors file), no pickle.

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

``model.save("m.safetensors")`` writes the safetensors format instead (``safetensors``
package needed to write: ``pip install "nnscratch[safetensors]"``): the tensors are the
``state_dict()`` under the same names, and the header's ``"__metadata__"`` holds the same
JSON document under ``"__architecture__"`` (a string, as safetensors wants). Any program
reads it with ``safetensors.numpy.load_file``; ``nnscratch.load`` reads it with its own
parser (no package needed), which checks the header length against the file size before
reading the header and every tensor's dtype, shape and byte range before reading any data.
A safetensors file holding only weights (no metadata) is not a model file:
``model.load_state_dict(safetensors.numpy.load_file(path))`` loads it into a model.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import time
import zipfile
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from . import _random, backend
from .module import Module, registered, registered_name

if TYPE_CHECKING:
    from .model import Sequential

__all__ = ["save", "load", "model_arrays", "write_npz", "write_bytes_atomic", "write_safetensors", "open_model_file",
           "Archive", "SafetensorsArchive", "read_model", "architecture", "build"]

FORMAT, VERSION = "nnscratch", 2
MAX_DEPTH = 64        # modules nested deeper than this in a file are refused
MAX_NESTING = 256     # and lists and modules nested deeper than this
ARCHITECTURE_KEY = "__architecture__"
EXTRA_PREFIX = "checkpoint/"   # entries a checkpoint adds; `load` reads past them
SAFETENSORS_SUFFIX = ".safetensors"


def save(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Write `model` (a Sequential) to exactly `path`, atomically: a safetensors file when
    `path` ends in ``.safetensors`` (any case), else an ``.npz``.

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike
        Used as given (no ".npz" is appended).

    Raises
    ------
    ImportError
        For a ``.safetensors`` path when the ``safetensors`` package is not installed.
    """
    if _is_safetensors_path(path):
        write_safetensors(path, model)
    else:
        write_npz(path, model_arrays(model))


def _is_safetensors_path(path):
    return os.fsdecode(os.fspath(path)).lower().endswith(SAFETENSORS_SUFFIX)


def _document(model):
    """The architecture document, as JSON text (what ``__architecture__`` holds)."""
    return json.dumps({"format": FORMAT, "version": VERSION, **architecture(model)})


def model_arrays(model: Module) -> dict[str, np.ndarray]:
    """{name: array} of everything `save` writes: the architecture and the state_dict."""
    arrays = {ARCHITECTURE_KEY: np.frombuffer(_document(model).encode("utf-8"), np.uint8)}
    arrays.update(model.state_dict())
    return arrays


def write_safetensors(path: str | os.PathLike[str], model: Module) -> None:
    """Write `model` as a safetensors file to exactly `path`, atomically: its
    ``state_dict()`` as the tensors, the architecture document as the header's
    ``__metadata__["__architecture__"]``."""
    try:
        import safetensors.numpy
    except ImportError as err:
        raise ImportError(f"saving to a {SAFETENSORS_SUFFIX} file needs the safetensors "
                          f"package: pip install \"nnscratch[safetensors]\"") from err
    metadata = {ARCHITECTURE_KEY: _document(model)}
    # (the package reads each array's memory from its data pointer: C-contiguous only)
    tensors = {name: np.ascontiguousarray(array) for name, array in model.state_dict().items()}
    data = safetensors.numpy.save(tensors, metadata=metadata)
    _write_atomically(path, lambda f: f.write(data))


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


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write {name: array} as an uncompressed .npz to exactly `path`, atomically."""
    # (a file object: np.savez appends no ".npz")
    _write_atomically(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def _write_atomically(path, write):
    """``write(f)`` into a temporary file beside `path`, fsync it, rename it to `path`: a
    crash or an exception leaves the old file (or none), never half of the new one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> str | os.PathLike[str]:
    """Write `data` (bytes) to exactly `path`, atomically: through a temporary file beside
    it, fsynced, then renamed (`_write_atomically`); returns `path`. The model
    files, the ONNX export, the plots and `nnscratch predict --out` all write so."""
    _write_atomically(path, lambda f: f.write(data))
    return path


STALE_SECONDS = 600   # a temporary file untouched this long belongs to a save that died


def _temp_stem(name):
    """The start of a temporary file's name for a save of `name`: `.<name>.`, or for a long
    name (a temporary name must fit in 255 bytes too) its first 100 characters and a hash."""
    if len(os.fsencode(name)) <= 200:
        return f".{name}."
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".{name[:100]}~{digest}."


def _remove_stale_temps(directory, name):
    """Delete what saves of `name` killed mid-write left behind (`.<name>.<hex>.tmp` older
    than STALE_SECONDS: a live concurrent save keeps its file fresh)."""
    prefix, now = _temp_stem(name), time.time()
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
        tmp = os.path.join(directory, f"{_temp_stem(name)}{secrets.token_hex(6)}.tmp")
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


def load(path: str | os.PathLike[str]) -> Any:
    """Read a model written by ``model.save``: the saved module (a `Sequential` for the
    models of this library), in training mode.

    Every member of the file is checked from the zip directory and its ``.npy`` header --
    names, shapes, dtypes, sizes, against the architecture where the layers are known --
    before the model is built or any array is decompressed, and the model is built with at
    most ``BUILD_FACTOR`` times the bytes of its weights (a layer of one's own, whose sizes
    only its constructor knows, is refused when it asks for more): a small file cannot make
    this allocate or inflate more than it honestly holds.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When the file is not a valid nnscratch model file.

    Returns
    -------
    Module
        The model (a `Sequential` for this library's models), in training mode.
    """
    with open_model_file(path) as archive:
        return read_model(archive)


def open_model_file(path: str | os.PathLike[str]) -> Archive | SafetensorsArchive:
    """The reader of the model file at `path`: a `SafetensorsArchive` for a file that starts
    as one (``{`` after the 8-byte header length: never a zip) or a name ending in
    ``.safetensors`` (unless the file is a zip), else an `Archive` (.npz)."""
    path = os.fspath(path)
    head = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(9)
    if head[8:9] == b"{" or (_is_safetensors_path(path) and head[:2] != b"PK"):
        return SafetensorsArchive(path)
    return Archive(path)


MAX_JSON = 16 << 20     # a JSON member (architecture, checkpoint record) larger is refused
_ARRAY_KINDS = "fiub"   # numbers only: never an object array


def read_npy_header(f):
    """(shape, fortran order, dtype, header length) of the ``.npy`` stream `f`, read without
    its data: ValueError for a format version NumPy does not describe (1.0 and 2.0)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(shape), fortran, np.dtype(dtype), f.tell()


class _ModelFile:
    """What the two model-file readers share (`Archive`: .npz, `SafetensorsArchive`): the
    path's checks, the error naming the file, the byte count of the arrays, the JSON
    decoding of the architecture, and use in a ``with`` statement. A subclass fills
    `headers` ({name: (shape, dtype, bytes)}) when it opens the file, and closes it."""

    headers: dict

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"No such file: {self.path!r}")
        if os.path.isdir(self.path):
            raise self.bad("it is a folder")

    def bad(self, reason):
        return ValueError(f"{self.path!r} is not a valid nnscratch model file: {reason}")

    def nbytes(self, keys=None):
        keys = self.headers if keys is None else keys
        return sum(self.headers[k][2] for k in keys)

    def _decoded(self, key, text_of):
        """json.loads(text_of()); a ValueError naming the file and `key` when reading or
        decoding fails (bad UTF-8, JSON, 5000-digit ints, nesting too deep)."""
        try:
            return json.loads(text_of())
        except (ValueError, RecursionError) as err:
            raise self.bad(f"{key!r} is not valid JSON ({err})") from None

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Archive(_ModelFile):
    """An ``.npz`` file, read member by member: the zip directory and every member's
    ``.npy`` header are checked when it is opened (no duplicate names, only ``.npy``
    members, numeric dtypes, a declared size equal to what the header's shape needs),
    and `read` decompresses one member, at most its declared size."""

    def __init__(self, path):
        super().__init__(path)
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head == b"\x89PNG":
            raise self.bad("it is a PNG image")
        if head[:2] != b"PK":
            raise self.bad("not a zip archive (an .npz file is one)")
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except Exception as err:    # (BadZipFile, NotImplementedError for a version or
            raise self.bad(f"a damaged zip archive ({err!r})") from None   # method, ...)
        try:
            self.members, self.headers = {}, {}
            for info in infos:
                self._check_member(info)
        except BaseException:
            self.zip.close()
            raise

    def _check_member(self, info):
        name = info.filename
        if not name.endswith(".npy"):
            raise self.bad(f"member {name!r} is not an .npy array")
        key = name[:-4]
        if key in self.members:
            raise self.bad(f"member {name!r} is there twice")
        try:
            with self.zip.open(info) as f:
                shape, fortran, dtype, offset = read_npy_header(f)
        except Exception as err:          # (zip, zlib, header syntax: all "damaged")
            raise self.bad(f"member {name!r} has a damaged header ({err})") from None
        if dtype.hasobject or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            raise self.bad(f"member {name!r} has dtype {dtype}, not a number type")
        size = dtype.itemsize
        for d in shape:
            size *= d
        if info.file_size != offset + size:
            raise self.bad(f"member {name!r} declares {offset + size} bytes for shape "
                           f"{shape} {dtype}, the zip directory {info.file_size}")
        self.members[key] = info
        self.headers[key] = (tuple(shape), dtype, size)

    def read(self, key):
        """The array of member `key` (its header was checked when the file was opened)."""
        try:
            with self.zip.open(self.members[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except MemoryError:
            raise self.bad(f"member {key!r} needs more memory than there is") from None
        except Exception as err:
            raise self.bad(f"member {key!r} is damaged ({err})") from None

    def json(self, key):
        """The JSON document stored as a 1-D uint8 member `key`."""
        if key not in self.headers:
            raise self.bad(f"no {key!r} entry (not written by nnscratch)")
        shape, dtype, size = self.headers[key]
        if dtype != np.uint8 or len(shape) != 1:
            raise self.bad(f"{key!r} must be a 1-D uint8 array")
        if size > MAX_JSON:
            raise self.bad(f"{key!r} is larger than {MAX_JSON} bytes")
        return self._decoded(key, lambda: self.read(key).tobytes().decode("utf-8"))

    def close(self):
        self.zip.close()


# The safetensors dtypes NumPy holds (all little-endian); others (BF16, F8_*) are refused.
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                      "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2",
                      "U8": "u1", "BOOL": "?"}
MAX_SAFETENSORS_HEADER = 100_000_000   # the safetensors library's own limit
_MAX_NDIM = 32
_WEIGHTS_ONLY = ("(weights only, not written by nnscratch's model.save: load them into a "
                 "model with model.load_state_dict(safetensors.numpy.load_file(path)))")


class SafetensorsArchive(_ModelFile):
    """A safetensors file written by ``model.save``, with the interface of `Archive`
    (``headers``, ``nbytes``, ``read``, ``json``), so that `read_model` reads it alike.

    Layout: an unsigned 64-bit little-endian header length N, N bytes of JSON ``{name:
    {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__":
    {str: str}}``, then the data, the offsets counted from its start. Opening checks N
    against the file size and `MAX_SAFETENSORS_HEADER` before reading the header, then
    every entry: a known dtype, a shape of non-negative ints whose bytes are exactly
    ``end - begin``, and byte ranges that tile the data to the end of the file (no gaps,
    no overlaps: what the safetensors library itself requires). `read` reads one tensor.
    """

    def __init__(self, path):
        super().__init__(path)
        self.file = open(self.path, "rb")
        try:
            self._read_header()
        except BaseException:
            self.file.close()
            raise

    def _read_header(self):
        size = os.fstat(self.file.fileno()).st_size
        prefix = self.file.read(8)
        if len(prefix) < 8:
            raise self.bad(f"{len(prefix)} bytes, shorter than a safetensors header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise self.bad(f"the safetensors header declares {length} bytes, the file has "
                           f"{size - 8} after the length")
        if length > MAX_SAFETENSORS_HEADER:
            raise self.bad(f"the safetensors header declares {length} bytes, more than "
                           f"{MAX_SAFETENSORS_HEADER}")
        text = self.file.read(length)
        if len(text) != length or not text.startswith(b"{"):
            raise self.bad("the safetensors header is not a JSON object")
        try:
            header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as err:   # (bad UTF-8, JSON, duplicate keys)
            raise self.bad(f"the safetensors header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise self.bad("the safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None)
        self.data_start, data_size = 8 + length, size - 8 - length
        self.headers: dict[str, Any] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        self._stored: dict[str, Any] = {}
        for name, entry in header.items():
            self._check_entry(name, entry, data_size)
        end = 0
        for name, (begin, stop) in sorted(self.offsets.items(), key=lambda item: item[1]):
            if begin != end:
                raise self.bad(f"tensor {name!r} starts at byte {begin} of the data, the "
                               f"one before it ends at {end} (a gap or an overlap)")
            end = stop
        if end != data_size:
            raise self.bad(f"the tensors end at byte {end} of the data, the file holds "
                           f"{data_size} bytes of data")
        self._check_metadata()

    def _check_entry(self, name, entry, data_size):
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise self.bad(f"tensor {name!r} is not a {{dtype, shape, data_offsets}} entry")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in SAFETENSORS_DTYPES:
            raise self.bad(f"tensor {name!r} has dtype {code!r}, which NumPy cannot hold")
        if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
                and all(type(d) is int and d >= 0 for d in shape)):
            raise self.bad(f"tensor {name!r} has shape {shape!r}, not a list of at most "
                           f"{_MAX_NDIM} non-negative ints")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int for v in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise self.bad(f"tensor {name!r} has data_offsets {offsets!r}, not a byte range "
                           f"within the {data_size} bytes of data")
        dtype = np.dtype(SAFETENSORS_DTYPES[code])
        nbytes = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise self.bad(f"tensor {name!r} declares {offsets[1] - offsets[0]} bytes for "
                           f"shape {tuple(shape)} {dtype.name} ({nbytes} bytes)")
        self.headers[name] = (tuple(shape), dtype.newbyteorder("="), nbytes)
        self.offsets[name] = tuple(offsets)
        self._stored[name] = dtype        # (as the file holds it: little-endian)

    def _check_metadata(self):
        if self.metadata is None:
            raise self.bad(f"a safetensors file without '__metadata__' {_WEIGHTS_ONLY}")
        if not (isinstance(self.metadata, dict)
                and all(isinstance(v, str) for v in self.metadata.values())):
            raise self.bad("the safetensors '__metadata__' is not a map of strings")

    def read(self, key):
        """The tensor `key` (its entry was checked when the file was opened)."""
        shape, dtype, size = self.headers[key]
        buffer = bytearray(size)
        try:
            self.file.seek(self.data_start + self.offsets[key][0])
            got = self.file.readinto(buffer)
        except OSError as err:
            raise self.bad(f"tensor {key!r} cannot be read ({err})") from None
        if got != size:
            raise self.bad(f"tensor {key!r} is cut short ({got} of {size} bytes)")
        return np.frombuffer(buffer, self._stored[key]).reshape(shape).astype(dtype, copy=False)

    def json(self, key):
        """The JSON document stored as the metadata string `key`."""
        text = self.metadata.get(key)
        if text is None:
            raise self.bad(f"no {key!r} entry in the safetensors '__metadata__' "
                           f"{_WEIGHTS_ONLY}")
        if len(text) > MAX_JSON:
            raise self.bad(f"{key!r} is larger than {MAX_JSON} characters")
        return self._decoded(key, lambda: text)

    def close(self):
        self.file.close()


def _unique_keys(pairs):
    """A JSON object's dict; ValueError for a key given twice (json.loads keeps the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} is there twice")
        result[key] = value
    return result


def read_model(archive):
    """The model stored in an open `Archive` (members under ``checkpoint/`` left alone)."""
    document = archive.json(ARCHITECTURE_KEY)
    root = _document_root(document, archive.bad)
    keys = [k for k in archive.headers
            if k != ARCHITECTURE_KEY and not k.startswith(EXTRA_PREFIX)]
    expected = _expected_state(root)
    for key in keys:
        shape = archive.headers[key][0]
        want = expected.get(key)
        if want is not None and want != shape:
            raise ValueError(f"{archive.path!r}: weight {key!r} has shape {shape}, the "
                             f"architecture needs {want}")
    missing = sorted(k for k in expected if k not in archive.headers)
    if missing:
        raise ValueError(f"{archive.path!r}: the weights do not match the architecture "
                         f"(missing {missing})")
    _check_memory(archive, keys)
    model = _build_model(root, archive.bad, BUILD_FACTOR * archive.nbytes(keys) + BUILD_SLACK)
    state = model.state_dict()
    if set(keys) != set(state):
        missing, extra = sorted(set(state) - set(keys)), sorted(set(keys) - set(state))
        raise ValueError(f"{archive.path!r}: the weights do not match the architecture "
                         f"(missing {missing}, unexpected {extra})")
    for key, target in state.items():
        shape, dtype = archive.headers[key][:2]
        if shape != target.shape or dtype != target.dtype:
            raise ValueError(f"{archive.path!r}: weight {key!r} has shape {shape} and dtype "
                             f"{dtype}, the architecture needs {target.shape} {target.dtype}")
    model.load_state_dict({key: archive.read(key) for key in state})
    return model


def _check_memory(archive, keys):
    """ValueError when the arrays declared need more memory than the machine has."""
    needed = archive.nbytes(keys)
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > available:
        raise archive.bad(f"its arrays need {needed / 2**30:.1f} GiB, this machine has "
                          f"{available / 2**30:.1f}")


def _document_root(document, bad):
    """The architecture's root module entry, in the current format (version 1 read too)."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise bad("the architecture has no 'format': 'nnscratch' entry")
    version = document.get("version")
    if version == 1:        # the first format: the layers of a Sequential
        specs = document.get("layers")
        if not isinstance(specs, list):
            raise bad("the architecture has no list of layers")
        return {"type": "Sequential", "config": {"layers": [
            {"__module__": spec} for spec in specs]}}
    if version != VERSION:
        raise bad(f"unsupported format version {version!r} (this is version {VERSION})")
    return document


def _expected_state(spec, prefix="", depth=0):
    """{state_dict name: shape} that the built-in layers of an architecture will have,
    worked out from their configs without building them (modules of other kinds are
    checked once built): so that a file declaring a layer larger than its weights is
    refused before that layer allocates anything."""
    expected: dict[str, Any] = {}
    if not isinstance(spec, dict) or depth > MAX_DEPTH:
        return expected
    kind, config = spec.get("type"), spec.get("config")
    if not isinstance(config, dict):
        return expected
    ints = {k: v for k, v in config.items() if type(v) is int}
    if kind in ("Sequential", "ModuleList"):
        items = config.get("layers" if kind == "Sequential" else "modules")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and set(item) == {"__module__"}:
                expected.update(_expected_state(item["__module__"], f"{prefix}{i}.",
                                                depth + 1))
    elif kind == "Linear" and {"in_features", "out_features"} <= ints.keys():
        expected[prefix + "weight"] = (ints["in_features"], ints["out_features"])
        if config.get("bias", True) is True:
            expected[prefix + "bias"] = (ints["out_features"],)
    elif kind == "Conv2d" and {"in_channels", "out_channels"} <= ints.keys():
        k = config.get("kernel_size")
        size = (k, k) if type(k) is int else tuple(k) if isinstance(k, list) else ()
        if len(size) == 2 and all(type(v) is int for v in size):
            expected[prefix + "weight"] = (ints["out_channels"], ints["in_channels"]) + size
            if config.get("bias", True) is True:
                expected[prefix + "bias"] = (ints["out_channels"],)
    elif kind in ("BatchNorm1d", "BatchNorm2d") and "num_features" in ints:
        for name in ("weight", "bias", "running_mean", "running_var"):
            expected[prefix + name] = (ints["num_features"],)
    return expected


# Building the model may allocate (NumPy arrays: initial weights, their float64 draws,
# gradients) at most this many times the bytes of the weights the file holds, plus the slack:
# a layer of one's own is only known by constructing it, and one whose config declares more
# than the file holds is refused as soon as its constructor asks for more (cnn_core._budget).
BUILD_FACTOR = 8
BUILD_SLACK = 1 << 20


def _build_model(root, bad, nbytes):
    """The module the architecture describes (with throw-away initial weights), built with
    at most `nbytes` of NumPy allocations."""
    state = _random.get_state()     # building layers draws initial weights: put them back
    try:
        with backend.memory_budget(nbytes):
            return build(root, bad)
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
        raise bad(f"{where} ({kind}) needs more memory than the weights in the file (or "
                  f"than there is)") from None
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
