"""MNIST-style data sets: an IDX reader, loaders, downloads and a shipped sample.

The data sets are four files in LeCun's IDX format (usually gzipped):

    train-images-idx3-ubyte.gz   uint8 (60000, 28, 28)  magic 0x00000803
    train-labels-idx1-ubyte.gz   uint8 (60000,)         magic 0x00000801
    t10k-images-idx3-ubyte.gz    uint8 (10000, 28, 28)
    t10k-labels-idx1-ubyte.gz    uint8 (10000,)

An IDX file is a big-endian header -- two zero bytes, a type code (0x08 = uint8),
the number of dimensions, then one uint32 per dimension -- followed by the values in
C order and nothing else. `read_idx` checks all of that, and the exact length.

`load_fashion_mnist()` / `load_mnist()` look for the files, in this order:

1. an explicit ``path=`` (a folder; nothing else is tried when it is given);
2. ``$NNSCRATCH_DATA``: a folder holding the files in a subfolder named after the
   data set (``fashion-mnist/`` or ``mnist/``), or directly;
3. the user cache, ``${XDG_CACHE_HOME:-~/.cache}/nnscratch/<name>/``;
4. for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist/``
   (``apt-get install dataset-fashion-mnist``);
5. otherwise a download from the data set's public mirrors into the cache, each file
   checked against its published checksum before it is moved (atomically) into place.

`find_dataset` tells where the data comes from, `load_sample` returns the small real
Fashion-MNIST sample shipped inside the package (`make_sample` rebuilds it).

`load_image_folder` reads your own images, sorted into one folder per class (it needs
Pillow, ``pip install "nnscratch[images]"``). Everything else in this module depends only
on NumPy, tqdm and the standard library.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "read_idx",
    "load_fashion_mnist",
    "load_mnist",
    "load_sample",
    "load_dataset",
    "load_image_folder",
    "find_dataset",
    "download_dataset",
    "make_sample",
    "default_cache_dir",
    "DataSource",
    "DATASETS",
    "FILES",
    "DEBIAN_FASHION_MNIST_DIR",
    "SAMPLE_PATH",
]

PathLike = Union[str, "os.PathLike[str]"]

# ---------------------------------------------------------------------------
# IDX format
# ---------------------------------------------------------------------------

# IDX type code (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_DTYPES: Dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
_GZIP_MAGIC = b"\x1f\x8b"


def _describe(source) -> str:
    """A name for `source` to put in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else repr(source)


def read_idx(source: Union[PathLike, BinaryIO]) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a NumPy array.

    Gzip is recognised by its magic bytes ``1f 8b``, not by the file name.

    Parameters
    ----------
    source : str, os.PathLike or binary file object
        The file to read.

    Returns
    -------
    numpy.ndarray
        Shape as in the header, native byte order (uint8 for the MNIST files), a
        fresh writeable array.

    Raises
    ------
    ValueError
        Naming the file: broken gzip stream, a magic number that is not IDX
        (``00 00 <type> <ndim>``), or a byte length that differs from the one the
        header promises (truncated file or trailing data).
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            raw = f.read()
    else:
        raw = source.read()
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip_idx(raw, name)
    return _parse_idx(raw, name)


MAX_IDX_BYTES = 1 << 34     # 16 GiB: far beyond any MNIST-style data set


def _gunzip_idx(raw: bytes, name: str) -> bytes:
    """The IDX bytes in a gzip stream, decompressed only as far as the IDX header says
    (plus one byte, to see trailing data): a small file cannot inflate to gigabytes."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            head = stream.read(4)
            ndim = head[3] if len(head) == 4 else 0
            head += stream.read(4 * ndim)
            size = _IDX_DTYPES[head[2]].itemsize if len(head) >= 4 and \
                head[2] in _IDX_DTYPES else 1
            for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4) \
                    if len(head) == 4 + 4 * ndim else ():
                size *= int(d)
            if size > MAX_IDX_BYTES:
                raise ValueError(f"{name}: the IDX header declares {size:,} bytes of data, "
                                 f"more than {MAX_IDX_BYTES:,}")
            return head + stream.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({e})") from None


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    # header: 0x00 0x00 <type code> <ndim>, then ndim big-endian uint32 sizes
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{name}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; "
            f"expected 00 00 <type code> <ndim>, e.g. 00000803 for uint8 images)")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{name}: truncated IDX header ({len(raw)} bytes, "
                         f"{header_len} needed for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_len + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(f"{name}: truncated IDX file: header says shape {shape} "
                         f"({expected} bytes), file has {len(raw)} bytes")
    if len(raw) > expected:
        raise ValueError(f"{name}: {len(raw) - expected} bytes of trailing data after "
                         f"the IDX array of shape {shape} ({expected} bytes expected)")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writeable copy in native order


# ---------------------------------------------------------------------------
# Data sets: files, mirrors, checksums
# ---------------------------------------------------------------------------

# role -> standard file name (gzipped; the un-gzipped name without ".gz" is accepted too)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_ROLE_MAGIC = {
    "train_images": IDX_IMAGES_MAGIC,
    "train_labels": IDX_LABELS_MAGIC,
    "test_images": IDX_IMAGES_MAGIC,
    "test_labels": IDX_LABELS_MAGIC,
}

# Checksums are of the downloaded .gz files themselves (the bytes served by the
# mirrors, before decompression); a download is accepted when it matches any one
# listed for its file.
#
# Fashion-MNIST:
#   md5    -- published by the data set's authors (Zalando Research) in the README of
#             github.com/zalandoresearch/fashion-mnist, the files their mirrors serve.
#   sha256 -- computed here from Debian's package dataset-fashion-mnist
#             (0.0~git20200523.55506a9-1). Debian re-compressed the files, so its .gz
#             bytes (and digests) differ from the upstream ones although the IDX
#             content inside is the same data; accepted so that a mirror of the
#             Debian files also verifies.
# MNIST:
#   md5    -- the MD5s of LeCun's original files, as published with the data set's
#             mirrors (and used by torchvision, TensorFlow and others).
_FASHION_MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (
        ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("sha256", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ),
    "train-labels-idx1-ubyte.gz": (
        ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        ("sha256", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ),
    "t10k-images-idx3-ubyte.gz": (
        ("md5", "bef4ecab320f06d8554ea6380940ec79"),
        ("sha256", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ),
    "t10k-labels-idx1-ubyte.gz": (
        ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        ("sha256", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    ),
}
_MNIST_CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),),
    "train-labels-idx1-ubyte.gz": (("md5", "d53e105ee54ea40749a09fcbcd1e9432"),),
    "t10k-images-idx3-ubyte.gz": (("md5", "9fb629c4189551a2d022fa330f9573f3"),),
    "t10k-labels-idx1-ubyte.gz": (("md5", "ec29112dd5afa0611ce80d1b7f02629c"),),
}

# name -> base URLs (tried in order; a file name is appended) and checksums.
# NNSCRATCH_MIRRORS (whitespace-separated base URLs) replaces the mirror list.
DATASETS: Dict[str, Dict[str, Any]] = {
    "fashion-mnist": {
        "mirrors": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "checksums": _FASHION_MNIST_CHECKSUMS,
    },
    "mnist": {
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "checksums": _MNIST_CHECKSUMS,
    },
}
_ALIASES = {
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "fashion": "fashion-mnist",
    "mnist": "mnist", "sample": "sample",
}

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "fashion_mnist_sample.npz"


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown data set {name!r}; choose from "
                         f"'fashion-mnist', 'mnist' or 'sample'")
    return _ALIASES[key]


def default_cache_dir() -> Path:
    """The user cache root: ``${XDG_CACHE_HOME:-~/.cache}/nnscratch``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "nnscratch"


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------

_ORIGINS = {
    "path": "given path",
    "env": "$NNSCRATCH_DATA",
    "cache": "user cache",
    "debian": "Debian package dataset-fashion-mnist",
    "download": "downloaded into the user cache",
    "package": "sample shipped with nnscratch",
}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a data set's files were found.

    Attributes
    ----------
    name : str
        "fashion-mnist", "mnist" or "sample".
    origin : str
        "path" (explicit argument), "env" ($NNSCRATCH_DATA), "cache", "debian",
        "download" (just downloaded into the cache) or "package" (the shipped sample).
    location : pathlib.Path
        The folder holding the four files (or the sample's .npz file).
    files : dict
        role ("train_images", "train_labels", "test_images", "test_labels") -> Path;
        empty for the sample.
    """

    name: str
    origin: str
    location: Path
    files: Dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def description(self) -> str:
        """One line for people, e.g. for the CLI to print."""
        how = _ORIGINS.get(self.origin, self.origin)
        return f"{self.name} from {self.location} ({how})"

    def __str__(self) -> str:
        return self.description


def _files_in(folder: Path) -> Optional[Dict[str, Path]]:
    """The four files in `folder` (gzipped or not), or None when any is missing."""
    found = {}
    for role, gz_name in FILES.items():
        for candidate in (folder / gz_name, folder / gz_name[:-3]):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def _search_folder(folder: Path, name: str) -> Optional[Tuple[Path, Dict[str, Path]]]:
    """Files in `folder`'s subfolder named after the data set, else directly in it.

    The subfolder comes first so that a folder holding several data sets (and the
    files of one of them at its top) still gives each its own.
    """
    for candidate in (folder / name, folder):
        files = _files_in(candidate)
        if files is not None:
            return candidate, files
    return None


def find_dataset(name: str, path: Optional[PathLike] = None, *, download: bool = False,
                 cache_dir: Optional[PathLike] = None,
                 mirrors: Optional[Sequence[str]] = None,
                 progress: bool = True) -> DataSource:
    """Find a data set's files and say where they come from.

    Parameters
    ----------
    name : str
        "fashion-mnist", "mnist" or "sample".
    path : str or os.PathLike, optional
        A folder with the four files (directly or in a subfolder named `name`).
        When given, it is the only place looked at.
    download : bool
        Download into the cache when the files are found nowhere else.
    cache_dir : str or os.PathLike, optional
        The cache root instead of `default_cache_dir()`; files go in ``<root>/<name>/``.
    mirrors : sequence of str, optional
        Base URLs to download from instead of the data set's own
        (``$NNSCRATCH_MIRRORS`` does the same).
    progress : bool
        Show a tqdm progress bar while downloading.

    Returns
    -------
    DataSource

    Raises
    ------
    FileNotFoundError
        Nothing found (and `download` is False), or `path` lacks a file.
    """
    name = _canonical_name(name)
    if name == "sample":
        return DataSource("sample", "package", SAMPLE_PATH)

    if path is not None:
        folder = Path(path)
        hit = _search_folder(folder, name)
        if hit is None:
            missing = [n for n in FILES.values()
                       if not (folder / n).is_file() and not (folder / n[:-3]).is_file()]
            raise FileNotFoundError(f"{name}: {folder} lacks {', '.join(missing)} "
                                    f"(looked in {folder} and {folder / name})")
        return DataSource(name, "path", hit[0], hit[1])

    searched = []
    env = os.environ.get("NNSCRATCH_DATA")
    if env:
        hit = _search_folder(Path(env), name)
        if hit is not None:
            return DataSource(name, "env", hit[0], hit[1])
        searched.append(f"$NNSCRATCH_DATA={env}")

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_folder = cache / name
    files = _files_in(cache_folder)
    if files is not None:
        return DataSource(name, "cache", cache_folder, files)
    searched.append(str(cache_folder))

    if name == "fashion-mnist":
        files = _files_in(DEBIAN_FASHION_MNIST_DIR)
        if files is not None:
            return DataSource(name, "debian", DEBIAN_FASHION_MNIST_DIR, files)
        searched.append(f"{DEBIAN_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")

    if not download:
        raise FileNotFoundError(f"{name} not found; looked in " + ", ".join(searched))
    folder = download_dataset(name, cache_folder, mirrors=mirrors, progress=progress)
    downloaded = _files_in(folder)
    if downloaded is None:      # (download_dataset fetched all four or raised)
        raise FileNotFoundError(f"{name}: the download to {folder} is incomplete")
    return DataSource(name, "download", folder, downloaded)


# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------

_CHUNK = 1 << 16


def _env_mirrors() -> Optional[Tuple[str, ...]]:
    value = os.environ.get("NNSCRATCH_MIRRORS", "").split()
    return tuple(value) or None


def _fetch(url: str, dest_dir: Path, file_name: str, checksums, progress: bool,
           timeout: float) -> None:
    """Download `url` to ``dest_dir/file_name``, checking size and checksum first.

    The bytes go to a temporary file in `dest_dir`, which is renamed into place
    (os.replace, atomic) only once it verified; on any failure it is removed.
    """
    from tqdm import tqdm

    digests = {algo: hashlib.new(algo) for algo, _ in checksums}
    fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out, \
                urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=file_name, disable=not progress, leave=False) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    for d in digests.values():
                        d.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received != total:
            raise ValueError(f"{url}: truncated download, {received} of {total} bytes")
        got = {algo: d.hexdigest() for algo, d in digests.items()}
        if not any(got[algo] == want.lower() for algo, want in checksums):
            expected = ", ".join(f"{a} {w}" for a, w in checksums)
            raise ValueError(f"{url}: checksum mismatch, got "
                             f"{', '.join(f'{a} {h}' for a, h in got.items())}; "
                             f"expected {expected}")
        os.replace(tmp, dest_dir / file_name)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def download_dataset(name: str, dest: Optional[PathLike] = None, *,
                     mirrors: Optional[Sequence[str]] = None,
                     checksums: Optional[Dict[str, Sequence[Tuple[str, str]]]] = None,
                     progress: bool = True, timeout: float = 60.0) -> Path:
    """Download the four files of a data set that `dest` lacks, verified.

    Each file is tried from each mirror in turn. A file is kept only when its
    length matches the server's Content-Length and its checksum matches one of the
    known ones; it then appears in `dest` atomically (temp file + os.replace).

    Parameters
    ----------
    name : str
        "fashion-mnist" or "mnist".
    dest : str or os.PathLike, optional
        Target folder, by default ``default_cache_dir() / name``; created if needed.
    mirrors : sequence of str, optional
        Base URLs, by default ``$NNSCRATCH_MIRRORS`` or ``DATASETS[name]["mirrors"]``.
    checksums : dict, optional
        file name -> ((algorithm, hex digest), ...), by default
        ``DATASETS[name]["checksums"]``.
    progress : bool
        Show a tqdm progress bar per file.
    timeout : float
        Seconds to wait for a server before giving up on that mirror.

    Returns
    -------
    pathlib.Path
        `dest`.

    Raises
    ------
    ValueError
        A file failed its checksum or length check on every mirror that served it.
    OSError
        No mirror could be reached for a file (HTTP errors such as 404 included).
    """
    name = _canonical_name(name)
    if name not in DATASETS:
        raise ValueError(f"{name!r} cannot be downloaded")
    info = DATASETS[name]
    urls: Sequence[str] = (tuple(mirrors) if mirrors is not None
                           else (_env_mirrors() or info["mirrors"]))
    sums: Dict[str, Sequence[Tuple[str, str]]] = (checksums if checksums is not None
                                                  else info["checksums"])
    dest = Path(dest) if dest is not None else default_cache_dir() / name
    dest.mkdir(parents=True, exist_ok=True)

    for file_name in FILES.values():
        if (dest / file_name).is_file():
            continue
        errors: list = []
        for base in urls:
            url = base if base.endswith("/") else base + "/"
            url += file_name
            try:
                _fetch(url, dest, file_name, sums[file_name], progress, timeout)
                break
            except ValueError as e:
                errors.append(e)
            except OSError as e:  # URLError, HTTPError (404...), refused, timeouts
                errors.append(OSError(f"{url}: {e}"))
            except http.client.HTTPException as e:  # IncompleteRead: connection cut
                errors.append(ValueError(f"{url}: broken download ({e!r})"))
        else:
            detail = "; ".join(str(e) for e in errors) or "no mirrors given"
            message = f"could not download {name} file {file_name}: {detail}"
            if any(isinstance(e, ValueError) for e in errors):
                raise ValueError(message)
            raise OSError(message)
    return dest


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _check_float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a float type (np.float32, np.float64), got {dt}")
    return dt


def _to_float(images: np.ndarray, flatten: bool, dtype: np.dtype) -> np.ndarray:
    # uint8 (N, 28, 28) -> float (N, 784) or (N, 1, 28, 28), values k / 255 in [0, 1]
    n = images.shape[0]
    shape = (n, images.shape[1] * images.shape[2]) if flatten else (n, 1) + images.shape[1:]
    out = images.reshape(shape).astype(dtype)
    out /= dtype.type(255)
    return out


def _split(images: np.ndarray, labels: np.ndarray, what: str, flatten: bool,
           dtype: np.dtype) -> Tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3:
        raise ValueError(f"{what} images must have 3 dimensions, got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{what} labels must have 1 dimension, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{what} labels must be 0..9, found {int(labels.max())}")
    return _to_float(images, flatten, dtype), labels.astype(np.int64)


def _read_role(files: Dict[str, Path], role: str) -> np.ndarray:
    path = files[role]
    with open(path, "rb") as f:
        array = read_idx(f)
    want = _ROLE_MAGIC[role]  # 0x0000 08 <ndim>: uint8 with 1 (labels) or 3 dimensions
    if array.dtype != np.uint8 or array.ndim != want & 0xFF:
        raise ValueError(f"{path}: expected magic number {want:#010x} (uint8, "
                         f"{want & 0xFF} dimensions) for {role.replace('_', ' ')}, "
                         f"got {array.dtype} with shape {array.shape}")
    return array


def load_dataset(name: Union[str, DataSource], path: Optional[PathLike] = None, *,
                 flatten: bool = True, dtype=np.float32, download: bool = True,
                 cache_dir: Optional[PathLike] = None,
                 mirrors: Optional[Sequence[str]] = None, progress: bool = True):
    """Load "fashion-mnist", "mnist" or "sample" (or a `DataSource` from `find_dataset`).

    Returns ``(X_train, y_train), (X_test, y_test)``; see `load_fashion_mnist`.
    """
    dt = _check_float_dtype(dtype)
    if isinstance(name, DataSource):
        source = name
    else:
        source = find_dataset(name, path, download=download, cache_dir=cache_dir,
                              mirrors=mirrors, progress=progress)
    if source.name == "sample":
        return _load_sample_file(source.location, flatten, dt)
    f = source.files
    train = _split(_read_role(f, "train_images"), _read_role(f, "train_labels"),
                   f"train ({f['train_images']}, {f['train_labels']})", flatten, dt)
    test = _split(_read_role(f, "test_images"), _read_role(f, "test_labels"),
                  f"test ({f['test_images']}, {f['test_labels']})", flatten, dt)
    return train, test


def load_fashion_mnist(path: Optional[PathLike] = None, *, flatten: bool = True,
                       dtype=np.float32, download: bool = True,
                       cache_dir: Optional[PathLike] = None,
                       mirrors: Optional[Sequence[str]] = None, progress: bool = True):
    """Fashion-MNIST: 60000 training and 10000 test images of 10 kinds of clothing.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder with the four IDX files (gzipped or not); when omitted, the search
        order of this module's docstring applies.
    flatten : bool
        Images as (N, 784) rows when True, else (N, 1, 28, 28) (NCHW).
    dtype : float dtype
        Pixel dtype; values are k / 255 in [0, 1].
    download : bool
        Download into the cache when the files are found nowhere else.
    cache_dir, mirrors, progress
        As in `find_dataset`.

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        Images as above, labels int64 in 0..9.

    Raises
    ------
    ValueError
        A file is not the IDX file it should be (see `read_idx`), or image and
        label counts differ.
    FileNotFoundError
        No data and `download` is False.
    """
    return load_dataset("fashion-mnist", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


def load_mnist(path: Optional[PathLike] = None, *, flatten: bool = True,
               dtype=np.float32, download: bool = True,
               cache_dir: Optional[PathLike] = None,
               mirrors: Optional[Sequence[str]] = None, progress: bool = True):
    """MNIST handwritten digits: 60000 training and 10000 test images.

    Same arguments and results as `load_fashion_mnist`.
    """
    return load_dataset("mnist", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


# ---------------------------------------------------------------------------
# Your own images: one folder per class
# ---------------------------------------------------------------------------

def load_image_folder(root: PathLike, size=(28, 28), grayscale: bool = True, *,
                      flatten: bool = True, dtype=np.float32, invert=False,
                      keep_aspect: bool = True, max_pixels: Optional[int] = None):
    """Images sorted into one folder per class, ``root/<class name>/<image>``, as arrays.

    The classes are the subfolders of `root`, sorted by name: the first is label 0. Each
    class folder is searched with its subfolders; the images in it are the files ending in
    .png, .jpg, .jpeg, .bmp, .gif or .webp (any case), sorted by path, so the order never
    depends on the file system. Hidden files and folders (a name starting with ".") and
    files with other endings are skipped. Needs Pillow (``pip install "nnscratch[images]"``).

    Every image is read by the rules of `nnscratch.images` -- the ones `nnscratch predict`
    uses: 16-bit and palette images handled, colour turned to grey (ITU-R 601 luma) unless
    `grayscale` is False, transparency composited, and images of another size fitted into
    `size` keeping their aspect ratio and padded with their background (or stretched, with
    ``keep_aspect=False``). Images are inverted only when asked: ``invert="auto"`` inverts
    those with a light border, as predict does, True all of them.

    Parameters
    ----------
    root : str or os.PathLike
        The folder holding one subfolder per class.
    size : (height, width) or int
        The size of every image returned; an int s means (s, s).
    grayscale : bool
        One grey channel, or three (RGB).
    flatten : bool
        Images as rows (N, C*H*W) when True (as `load_fashion_mnist`), else (N, C, H, W).
    dtype : float dtype
        Pixel dtype; values in [0, 1] (an 8-bit value k is k / 255).
    invert : False (default), "auto" or True
    keep_aspect : bool
    max_pixels : int, optional
        Larger images are refused by their header, before decoding
        (default `nnscratch.images.MAX_PIXELS`).

    Returns
    -------
    X : ndarray of `dtype`, (N, C*H*W) or (N, C, H, W)
    y : int64 ndarray (N,), labels 0..K-1
    class_names : list of str
        The class folder names; ``class_names[y[i]]`` is the folder of image i.

    Raises
    ------
    FileNotFoundError
        `root` is not a folder.
    ValueError
        No class folders, a class folder without images, or an image that cannot be read
        (not an image, damaged, too large): the message names the folder or the file.
    ImportError
        Pillow is not installed.
    """
    from . import images

    images.require_pillow()
    dt = _check_float_dtype(dtype)
    size = _image_size(size)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    classes = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.name)
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = _image_files(folder, images.EXTENSIONS)
        if not found:
            raise ValueError(f"{folder}: no images in the folder of class {folder.name!r} "
                             f"(files ending in {', '.join(images.EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    channels = 1 if grayscale else 3
    X = np.empty((len(files), channels) + size, dtype=dt)
    for i, path in enumerate(files):
        image, _ = images.read_image(path, size, invert=invert, grayscale=grayscale,
                                     keep_aspect=keep_aspect,
                                     max_pixels=max_pixels or images.MAX_PIXELS)
        X[i] = image.reshape((channels,) + size)
    if flatten:
        X = X.reshape(len(files), -1)
    return X, np.array(labels, dtype=np.int64), [folder.name for folder in classes]


def _image_size(size) -> Tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 1 for v in pair):
        raise ValueError(f"size must be (height, width), two ints >= 1, got {size!r}")
    return int(pair[0]), int(pair[1])


def _image_files(folder: Path, extensions) -> list:
    """The image files under `folder` (subfolders too, hidden ones not), sorted by path."""
    found = []
    for parent, subfolders, names in os.walk(folder):     # (linked folders: not followed)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(parent) / n for n in names
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


# ---------------------------------------------------------------------------
# The shipped sample
# ---------------------------------------------------------------------------

def _load_sample_file(path: Path, flatten: bool, dtype: np.dtype):
    with np.load(path, allow_pickle=False) as z:
        train = _split(z["X_train"], z["y_train"], "sample train", flatten, dtype)
        test = _split(z["X_test"], z["y_test"], "sample test", flatten, dtype)
    return train, test


def load_sample(*, flatten: bool = True, dtype=np.float32):
    """The small real Fashion-MNIST sample shipped inside the package.

    5000 training images (500 per class) and 1000 test images (100 per class),
    taken from the real data set (see ``nnscratch/data/README.md``), so that
    training works offline on a fresh machine. Same format as `load_fashion_mnist`.
    """
    return _load_sample_file(SAMPLE_PATH, flatten, _check_float_dtype(dtype))


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of each class, in original order."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    for c, p in enumerate(picks):
        if len(p) < per_class:
            raise ValueError(f"class {c} has only {len(p)} examples, {per_class} wanted")
    return np.sort(np.concatenate(picks))


def make_sample(out: Optional[PathLike] = None, *, path: Optional[PathLike] = None,
                train_per_class: int = 500, test_per_class: int = 100) -> Path:
    """Write the shipped sample from the full Fashion-MNIST data.

    Takes the first `train_per_class` training and `test_per_class` test images of
    each class (kept in their original order) and saves them, uint8, with their
    labels and their indices in the full data set, as a compressed ``.npz``
    (no pickle). The data comes from `path` or the usual search (no download).

    Returns the path written (`SAMPLE_PATH` by default).
    """
    source = find_dataset("fashion-mnist", path)
    x_train = _read_role(source.files, "train_images")
    y_train = _read_role(source.files, "train_labels")
    x_test = _read_role(source.files, "test_images")
    y_test = _read_role(source.files, "test_labels")
    i_train = _first_per_class(y_train, train_per_class)
    i_test = _first_per_class(y_test, test_per_class)
    out = Path(out) if out is not None else SAMPLE_PATH
    buf = io.BytesIO()
    np.savez_compressed(buf, X_train=x_train[i_train], y_train=y_train[i_train],
                        X_test=x_test[i_test], y_test=y_test[i_test],
                        train_index=i_train.astype(np.int32),
                        test_index=i_test.astype(np.int32))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    return out
