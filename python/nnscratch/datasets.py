"""MNIST-style data sets: an IDX reader, loaders, downloads and a shipped sample.

Most of the data sets are four files in LeCun's IDX format (usually gzipped):

    train-images-idx3-ubyte.gz   uint8 (60000, 28, 28)  magic 0x00000803
    train-labels-idx1-ubyte.gz   uint8 (60000,)         magic 0x00000801
    t10k-images-idx3-ubyte.gz    uint8 (10000, 28, 28)
    t10k-labels-idx1-ubyte.gz    uint8 (10000,)

An IDX file is a big-endian header -- two zero bytes, a type code (0x08 = uint8),
the number of dimensions, then one uint32 per dimension -- followed by the values in
C order and nothing else. `read_idx` checks all of that, and the exact length.

The data sets, by the name `load_dataset` takes (each loader returns
``(X_train, y_train), (X_test, y_test)``, labels int64 0..classes-1):

    name               loader                     classes  train / test    files
    "fashion-mnist"    load_fashion_mnist()            10  60000 / 10000   four IDX .gz
    "mnist"            load_mnist()                    10  60000 / 10000   four IDX .gz
    "kmnist"           load_kmnist()                   10  60000 / 10000   four IDX .gz
    "emnist-balanced"  load_emnist("balanced")         47  112800 / 18800  NIST's gzip.zip:
    "emnist-letters"   load_emnist("letters")          26  124800 / 20800  one 562 MB download
    "emnist-digits"    load_emnist("digits")           10  240000 / 40000  for every split
    "emnist-byclass"   load_emnist("byclass")          62  697932 / 116323
    "emnist-bymerge"   load_emnist("bymerge")          47  697932 / 116323
    "emnist-mnist"     load_emnist("mnist")            10  60000 / 10000
    "k49"              load_kuzushiji49()              49  232365 / 38547  four NumPy .npz
    "sample"           load_sample()                   10  5000 / 1000     shipped with nnscratch

EMNIST's files store every image transposed (column by column); the loaders transpose them
back, so that all data sets look upright the same way. EMNIST letters are labelled 1..26 in
the files; the loaders return 0..25 (0 = "a"/"A"). `class_names(name)` gives the classes.

Pixels come as floats k / 255 in [0, 1] (``dtype=np.float32``, the default, or np.float64),
or as the stored bytes 0..255 with ``dtype=np.uint8``: a quarter of the memory, and no
float copy of the whole set (EMNIST byclass: 640 MB instead of 2.5 GB). ``model.fit``,
``evaluate`` and ``predict`` take uint8 images as they are and scale each batch to the
same floats k / 255 (bit for bit: the same training); in a loop of your own, scale each
batch as you use it (`nnscratch.data.to_float`, `nnscratch.data.Normalize`).

`load_dataset(name)` looks for the files, in this order:

1. an explicit ``path=`` (a folder; nothing else is tried when it is given);
2. ``$NNSCRATCH_DATA``: a folder holding the files in a subfolder named after the
   data set (``fashion-mnist/``, ``mnist/``, ``kmnist/``, ``emnist/``, ``k49/``), or directly;
3. the user cache, ``${XDG_CACHE_HOME:-~/.cache}/nnscratch/<subfolder>/`` (the same
   subfolder names: all EMNIST splits share ``emnist/``);
4. for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist/``
   (``apt-get install dataset-fashion-mnist``);
5. otherwise a download from the data set's public mirrors into the cache, each file
   checked against its published checksum before it is moved (atomically) into place.

For EMNIST a folder may hold NIST's ``gzip.zip`` itself (the split's four members are read
out of it, their sizes checked first) or the split's four files unpacked from it
(``emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte``, gzipped or not, also in
a ``gzip/`` subfolder).

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
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "read_idx",
    "load_fashion_mnist",
    "load_mnist",
    "load_kmnist",
    "load_emnist",
    "load_kuzushiji49",
    "class_names",
    "load_sample",
    "load_dataset",
    "load_image_folder",
    "find_dataset",
    "download_dataset",
    "make_sample",
    "default_cache_dir",
    "DataSource",
    "DATASETS",
    "DATASET_NAMES",
    "EMNIST_SPLITS",
    "FILES",
    "DEBIAN_FASHION_MNIST_DIR",
    "SAMPLE_PATH",
]

PathLike = Union[str, "os.PathLike[str]"]
# what the loaders return: (X_train, y_train), (X_test, y_test)
TrainTest = Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]

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
            raw = _read_all(f)
    else:
        raw = _read_all(source)
    return _idx_from_bytes(raw, name)


MAX_IDX_BYTES = 1 << 34     # 16 GiB: far beyond any MNIST-style data set
# Deflate turns one bit into at most 258 bytes: no gzip stream expands more than ~1032 to 1.
# A header promising more than that from the bytes at hand is refused before any memory is
# set aside for it (a truncated or forged file).
_MAX_INFLATE_RATIO = 1032
_INFLATE_CHUNK = 1 << 20    # decompressed in 1 MiB steps into the result


def _read_all(f) -> Union[bytes, bytearray]:
    """The rest of file `f`. An uncompressed real file (one with a size) is read into one
    bytearray, which the array returned by `read_idx` then uses without a second copy; a
    gzipped one as bytes, which the gzip reader takes without a copy."""
    peek = getattr(f, "peek", None)
    if peek is not None and bytes(peek(2)[:2]) == _GZIP_MAGIC:
        return f.read()
    try:
        size = os.fstat(f.fileno()).st_size - f.tell()
    except (AttributeError, OSError, ValueError):   # BytesIO, zip members, pipes
        return f.read()
    buf = bytearray(max(size, 0))
    got = f.readinto(buf) or 0
    del buf[got:]
    buf += f.read()                 # (a file that grew meanwhile)
    return buf


def _idx_from_bytes(raw, name: str) -> np.ndarray:
    if bytes(raw[:2]) == _GZIP_MAGIC:
        raw = _gunzip_idx(raw, name)
    return _parse_idx(raw, name)


def _gunzip_idx(raw, name: str) -> memoryview:
    """The IDX bytes in a gzip stream, decompressed only as far as the IDX header says
    (plus one byte, to see trailing data), into one buffer of that size: a small file
    cannot inflate to gigabytes, nor make us set gigabytes aside."""
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
            if size > _MAX_INFLATE_RATIO * len(raw) + 4096:
                raise ValueError(f"{name}: truncated or corrupt gzip data: the IDX header "
                                 f"declares {size:,} bytes, more than {len(raw):,} "
                                 f"compressed bytes can hold")
            buf = bytearray(len(head) + size + 1)
            buf[:len(head)] = head
            view = memoryview(buf)
            filled = len(head)
            while filled < len(buf):
                chunk = stream.read(min(_INFLATE_CHUNK, len(buf) - filled))
                if not chunk:
                    break
                view[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
            return view[:filled]
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({e})") from None


def _parse_idx(raw, name: str) -> np.ndarray:
    # header: 0x00 0x00 <type code> <ndim>, then ndim big-endian uint32 sizes
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{name}: not an IDX file (magic bytes {bytes(raw[:4]).hex() or 'missing'}; "
            f"expected 00 00 <type code> <ndim>, e.g. 00000803 for uint8 images)")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{name}: truncated IDX header ({len(raw)} bytes, "
                         f"{header_len} needed for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=object))
    expected = header_len + count * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(f"{name}: truncated IDX file: header says shape {shape} "
                         f"({expected} bytes), file has {len(raw)} bytes")
    if len(raw) > expected:
        raise ValueError(f"{name}: {len(raw) - expected} bytes of trailing data after "
                         f"the IDX array of shape {shape} ({expected} bytes expected)")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len).reshape(shape)
    if data.flags.writeable and dtype.isnative:
        return data     # a view of the buffer read for this call alone: no second copy
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

# Kuzushiji-MNIST (Clanuwat et al. 2018, github.com/rois-codh/kmnist; CODH serves the files).
# The authors publish no checksums; these are the files at codh.rois.ac.jp:
#   md5    -- torchvision, KMNIST.resources in torchvision/datasets/mnist.py (pytorch/vision).
#   sha256 -- tensorflow-datasets, tensorflow_datasets/url_checksums/kmnist.txt, with the
#             sizes 18165135, 29497, 3041136 and 5120 bytes.
_KMNIST_CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (
        ("md5", "bdb82020997e1d708af4cf47b453dcf7"),
        ("sha256", "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"),
    ),
    "train-labels-idx1-ubyte.gz": (
        ("md5", "e144d726b3acfaa3e44228e80efcd344"),
        ("sha256", "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"),
    ),
    "t10k-images-idx3-ubyte.gz": (
        ("md5", "5c965bf0a639b31b8f53240b1b52f4d7"),
        ("sha256", "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"),
    ),
    "t10k-labels-idx1-ubyte.gz": (
        ("md5", "7320c461ea6c1c855c0b718fb2a4b134"),
        ("sha256", "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
    ),
}

# EMNIST (Cohen, Afshar, Tapson, van Schaik 2017, arXiv:1702.05373): NIST distributes every
# split in one zip, gzip.zip (561,753,746 bytes), holding
# gzip/emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte.gz. The zip is checked
# as a whole; its members are then checked by the IDX reader (sizes, magic, length).
# We found no checksum published by the authors or NIST; these are of NIST's file:
#   md5    -- torchvision, EMNIST.md5 in torchvision/datasets/mnist.py (pytorch/vision).
#   sha256 -- tensorflow-datasets, tensorflow_datasets/url_checksums/emnist.txt.
EMNIST_ARCHIVE = "gzip.zip"
_EMNIST_CHECKSUMS = {
    EMNIST_ARCHIVE: (
        ("md5", "58c8d27c78d21e728a6bc7b3cc06412e"),
        ("sha256", "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"),
    ),
}
EMNIST_SPLITS = ("balanced", "letters", "digits", "byclass", "bymerge", "mnist")

# Kuzushiji-49 (same authors and server as Kuzushiji-MNIST): four NumPy files, each one
# array "arr_0" (np.savez_compressed). NOT from the authors, torchvision or
# tensorflow-datasets: the authors publish no checksums and neither library ships K49.
# These md5s are those of the third-party loader numpyvision (github.com/pczarnik/
# numpyvision, numpyvision/datasets/mnist.py, class K49); the same four values appear in
# other public code, but we could not compare them with the files themselves (no network).
_K49_CHECKSUMS = {
    "k49-train-imgs.npz": (("md5", "7ac088b20481cf51dcd01ceaab89d821"),),
    "k49-train-labels.npz": (("md5", "44a8e1b893f81e63ff38d73cad420f7a"),),
    "k49-test-imgs.npz": (("md5", "d352e201d846ce6b94f42c990966f374"),),
    "k49-test-labels.npz": (("md5", "4da6f7a62e67a832d5eb1bd85c5ee448"),),
}
_K49_FILES = {
    "train_images": "k49-train-imgs.npz",
    "train_labels": "k49-train-labels.npz",
    "test_images": "k49-test-imgs.npz",
    "test_labels": "k49-test-labels.npz",
}

# download name (also the folder the files live in) -> base URLs (tried in order; a file
# name is appended), the files (role -> name) and their checksums.
# NNSCRATCH_MIRRORS (whitespace-separated base URLs) replaces the mirror list.
DATASETS: Dict[str, Dict[str, Any]] = {
    "fashion-mnist": {
        "mirrors": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "files": FILES,
        "checksums": _FASHION_MNIST_CHECKSUMS,
    },
    "mnist": {
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "files": FILES,
        "checksums": _MNIST_CHECKSUMS,
    },
    "kmnist": {
        "mirrors": (
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        "files": FILES,
        "checksums": _KMNIST_CHECKSUMS,
    },
    "emnist": {
        "mirrors": (
            "https://biometrics.nist.gov/cs_links/EMNIST/",
            "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/",
        ),
        "files": {"archive": EMNIST_ARCHIVE},
        "checksums": _EMNIST_CHECKSUMS,
    },
    "k49": {
        "mirrors": (
            "https://codh.rois.ac.jp/kmnist/dataset/k49/",
            "http://codh.rois.ac.jp/kmnist/dataset/k49/",
        ),
        "files": _K49_FILES,
        "checksums": _K49_CHECKSUMS,
    },
}


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How a loadable data set is stored: `download` names its DATASETS entry and folder;
    `layout` is "idx" (four IDX files), "emnist" (gzip.zip or the split's four IDX files)
    or "npz" (four one-array .npz files)."""

    download: str
    layout: str
    num_classes: int
    split: str = ""


_EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26,
                   "digits": 10, "mnist": 10}
_KINDS: Dict[str, _Kind] = {
    "fashion-mnist": _Kind("fashion-mnist", "idx", 10),
    "mnist": _Kind("mnist", "idx", 10),
    "kmnist": _Kind("kmnist", "idx", 10),
    **{f"emnist-{split}": _Kind("emnist", "emnist", _EMNIST_CLASSES[split], split)
       for split in EMNIST_SPLITS},
    "k49": _Kind("k49", "npz", 49),
}
# the names `load_dataset` and `find_dataset` take
DATASET_NAMES = tuple(_KINDS) + ("sample",)
_ALIASES = {
    **{name: name for name in DATASET_NAMES},
    "fashionmnist": "fashion-mnist", "fashion": "fashion-mnist",
    "kuzushiji-mnist": "kmnist", "k-mnist": "kmnist",
    "emnist": "emnist-balanced",
    "kuzushiji-49": "k49", "kuzushiji49": "k49", "k-49": "k49",
}

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "fashion_mnist_sample.npz"


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(f"unknown data set {name!r}; choose from "
                         f"{', '.join(repr(n) for n in DATASET_NAMES)}")
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
        One of `DATASET_NAMES`: "fashion-mnist", "mnist", "kmnist", "emnist-<split>",
        "k49" or "sample".
    origin : str
        "path" (explicit argument), "env" ($NNSCRATCH_DATA), "cache", "debian",
        "download" (just downloaded into the cache) or "package" (the shipped sample).
    location : pathlib.Path
        The folder holding the files (or the sample's .npz file).
    files : dict
        role ("train_images", "train_labels", "test_images", "test_labels") -> Path;
        for EMNIST read out of NIST's zip, {"archive": Path of gzip.zip}; empty for the
        sample.
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


def _emnist_members(split: str) -> Dict[str, str]:
    """role -> the name of the split's file in NIST's zip (under ``gzip/``)."""
    return {"train_images": f"emnist-{split}-train-images-idx3-ubyte.gz",
            "train_labels": f"emnist-{split}-train-labels-idx1-ubyte.gz",
            "test_images": f"emnist-{split}-test-images-idx3-ubyte.gz",
            "test_labels": f"emnist-{split}-test-labels-idx1-ubyte.gz"}


def _idx_files_in(folder: Path, names: Dict[str, str]) -> Optional[Dict[str, Path]]:
    """role -> file for the gzipped IDX files `names` in `folder` (each also accepted
    without ".gz"), or None when any is missing."""
    found = {}
    for role, gz_name in names.items():
        for candidate in (folder / gz_name, folder / gz_name[:-3]):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            return None
    return found


def _files_in(folder: Path, name: str = "fashion-mnist") -> Optional[Dict[str, Path]]:
    """Data set `name`'s files in `folder`, or None when any is missing."""
    kind = _KINDS[name]
    if kind.layout == "idx":
        return _idx_files_in(folder, FILES)
    if kind.layout == "emnist":     # the split's own files first: read without the zip
        files = _idx_files_in(folder, _emnist_members(kind.split))
        if files is None and (folder / EMNIST_ARCHIVE).is_file():
            files = {"archive": folder / EMNIST_ARCHIVE}
        return files
    files = {role: folder / n for role, n in DATASETS[kind.download]["files"].items()}
    return files if all(f.is_file() for f in files.values()) else None


def _candidates(folder: Path, name: str) -> Tuple[Path, ...]:
    """Where in `folder` data set `name` may sit: its subfolder (``emnist/`` for every EMNIST
    split) first, then `folder` itself; for EMNIST also the ``gzip/`` folder its zip unpacks
    to. The subfolder comes first so that a folder holding several data sets (and the files
    of one of them at its top) still gives each its own."""
    sub = folder / _KINDS[name].download
    if _KINDS[name].layout == "emnist":
        return sub, sub / "gzip", folder, folder / "gzip"
    return sub, folder


def _search_folder(folder: Path, name: str) -> Optional[Tuple[Path, Dict[str, Path]]]:
    """The first of `_candidates` holding all of the data set's files."""
    for candidate in _candidates(folder, name):
        files = _files_in(candidate, name)
        if files is not None:
            return candidate, files
    return None


def _expected_files(folder: Path, name: str) -> str:
    """What `folder` lacks for data set `name`, for an error message."""
    kind = _KINDS[name]
    if kind.layout == "emnist":
        return (f"{EMNIST_ARCHIVE} (NIST's EMNIST zip) or the four files "
                f"emnist-{kind.split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte.gz")
    names = FILES if kind.layout == "idx" else DATASETS[kind.download]["files"]
    missing = [n for n in names.values() if not (folder / n).is_file()
               and not (kind.layout == "idx" and (folder / n[:-3]).is_file())]
    return ", ".join(missing)


def find_dataset(name: str, path: Optional[PathLike] = None, *, download: bool = False,
                 cache_dir: Optional[PathLike] = None,
                 mirrors: Optional[Sequence[str]] = None,
                 progress: bool = True) -> DataSource:
    """Find a data set's files and say where they come from.

    Parameters
    ----------
    name : str
        One of `DATASET_NAMES` ("fashion-mnist", "mnist", "kmnist", "emnist-balanced",
        "emnist-letters", "emnist-digits", "emnist-byclass", "emnist-bymerge",
        "emnist-mnist", "k49", "sample"); "_" may stand for "-", and "emnist" means
        "emnist-balanced".
    path : str or os.PathLike, optional
        A folder with the files (directly or in the data set's subfolder: ``emnist/`` for
        every EMNIST split). When given, it is the only place looked at.
    download : bool
        Download into the cache when the files are found nowhere else.
    cache_dir : str or os.PathLike, optional
        The cache root instead of `default_cache_dir()`; files go in ``<root>/<subfolder>/``.
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
    ValueError
        An unknown name.
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
            raise FileNotFoundError(
                f"{name}: {folder} lacks {_expected_files(folder, name)} (looked in "
                f"{', '.join(str(c) for c in _candidates(folder, name))})")
        return DataSource(name, "path", hit[0], hit[1])

    searched = []
    env = os.environ.get("NNSCRATCH_DATA")
    if env:
        hit = _search_folder(Path(env), name)
        if hit is not None:
            return DataSource(name, "env", hit[0], hit[1])
        searched.append(f"$NNSCRATCH_DATA={env}")

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_folder = cache / _KINDS[name].download
    files = _files_in(cache_folder, name)
    if files is not None:
        return DataSource(name, "cache", cache_folder, files)
    searched.append(str(cache_folder))

    if name == "fashion-mnist":
        files = _files_in(DEBIAN_FASHION_MNIST_DIR, name)
        if files is not None:
            return DataSource(name, "debian", DEBIAN_FASHION_MNIST_DIR, files)
        searched.append(f"{DEBIAN_FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")

    if not download:
        raise FileNotFoundError(f"{name} not found; looked in " + ", ".join(searched))
    folder = download_dataset(name, cache_folder, mirrors=mirrors, progress=progress)
    downloaded = _files_in(folder, name)
    if downloaded is None:      # (download_dataset fetched every file or raised)
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
    """Download the files of a data set that `dest` lacks, verified.

    Each file is tried from each mirror in turn. A file is kept only when its
    length matches the server's Content-Length and its checksum matches one of the
    known ones; it then appears in `dest` atomically (temp file + os.replace).

    Parameters
    ----------
    name : str
        A key of `DATASETS` ("fashion-mnist", "mnist", "kmnist", "emnist", "k49") or a
        name `find_dataset` takes: every EMNIST split downloads the one "emnist" zip.
    dest : str or os.PathLike, optional
        Target folder, by default ``default_cache_dir() / <DATASETS key>``; created if
        needed.
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
    if name not in _KINDS:
        raise ValueError(f"{name!r} cannot be downloaded")
    name = _KINDS[name].download
    info = DATASETS[name]
    urls: Sequence[str] = (tuple(mirrors) if mirrors is not None
                           else (_env_mirrors() or info["mirrors"]))
    sums: Dict[str, Sequence[Tuple[str, str]]] = (checksums if checksums is not None
                                                  else info["checksums"])
    dest = Path(dest) if dest is not None else default_cache_dir() / name
    dest.mkdir(parents=True, exist_ok=True)

    for file_name in info["files"].values():
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


def _check_pixel_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f" and dt != np.uint8:
        raise ValueError(f"dtype must be a float type (np.float32, np.float64) or np.uint8 "
                         f"(the stored pixel values 0..255), got {dt}")
    return dt


def _pixels(images: np.ndarray, flatten: bool, dtype: np.dtype) -> np.ndarray:
    # uint8 (N, H, W) -> (N, H*W) or (N, 1, H, W): floats k / 255 in [0, 1], or with
    # dtype uint8 the stored values themselves (a view: no copy)
    n = images.shape[0]
    shape = (n, images.shape[1] * images.shape[2]) if flatten else (n, 1) + images.shape[1:]
    if dtype == np.uint8:
        return np.ascontiguousarray(images).reshape(shape)
    out = images.reshape(shape).astype(dtype)
    out /= dtype.type(255)
    return out


def _check_labels(labels: np.ndarray, what: str, low: int, high: int, note: str = "") -> None:
    if labels.dtype.kind not in "ui":
        raise ValueError(f"{what} labels must be integers, got {labels.dtype}")
    if labels.size:
        smallest, largest = int(labels.min()), int(labels.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise ValueError(f"{what} labels must be {low}..{high}{note}, found {bad}")


def _upright(images: np.ndarray) -> np.ndarray:
    """EMNIST's images, stored column by column, turned upright: (N, H, W) transposed image
    by image. In place, a block of images at a time, when the array is ours (square images,
    as EMNIST's): no second copy of a 640 MB set."""
    n, h, w = images.shape
    if h != w or not images.flags.writeable or not images.flags.c_contiguous:
        return np.ascontiguousarray(images.transpose(0, 2, 1))
    step = max(1, (1 << 22) // max(1, h * w * images.itemsize))
    for i in range(0, n, step):
        block = images[i:i + step]
        block[...] = block.transpose(0, 2, 1).copy()
    return images


def _split(images: np.ndarray, labels: np.ndarray, what: str, flatten: bool,
           dtype: np.dtype, kind: Optional[_Kind] = None) -> Tuple[np.ndarray, np.ndarray]:
    # uint8 images (N, H, W) and labels (N,) as read -> the arrays a loader returns
    if images.ndim != 3:
        raise ValueError(f"{what} images must have 3 dimensions, got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{what} labels must have 1 dimension, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = 10 if kind is None else kind.num_classes
    if kind is not None and kind.split == "letters":    # stored 1..26 (a = 1): 0..25
        _check_labels(labels, what, 1, 26, " in the EMNIST letters files")
        labels = labels.astype(np.int64) - 1
    _check_labels(labels, what, 0, num_classes - 1)
    if kind is not None and kind.layout == "emnist":
        images = _upright(images)
    return _pixels(images, flatten, dtype), labels.astype(np.int64)


def _check_role(array: np.ndarray, role: str, where) -> np.ndarray:
    want = _ROLE_MAGIC[role]  # 0x0000 08 <ndim>: uint8 with 1 (labels) or 3 dimensions
    if array.dtype != np.uint8 or array.ndim != want & 0xFF:
        raise ValueError(f"{where}: expected magic number {want:#010x} (uint8, "
                         f"{want & 0xFF} dimensions) for {role.replace('_', ' ')}, "
                         f"got {array.dtype} with shape {array.shape}")
    return array


def _read_role(files: Dict[str, Path], role: str) -> np.ndarray:
    path = files[role]
    with open(path, "rb") as f:
        array = read_idx(f)
    return _check_role(array, role, path)


def _zip_member(zf: zipfile.ZipFile, name: str) -> Optional[zipfile.ZipInfo]:
    """`name` in NIST's zip: ``gzip/<name>``, else a member of that name (or without
    ".gz") in any folder of the zip."""
    infos = zf.infolist()
    for info in infos:
        if info.filename == f"gzip/{name}":
            return info
    for info in infos:
        if info.filename.rsplit("/", 1)[-1] in (name, name[:-3]):
            return info
    return None


def _open_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable {what} ({e})") from None


_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                    NotImplementedError)


def _read_archive_member(archive: Path, name: str, role: str) -> np.ndarray:
    """One IDX file of NIST's EMNIST zip. The sizes in the zip's directory are checked
    before anything is decompressed; the zip's CRC, then the IDX reader's checks, after."""
    with _open_zip(archive, "zip archive") as zf:
        info = _zip_member(zf, name)
        if info is None:
            raise ValueError(f"{archive}: no member {name} (is it NIST's EMNIST "
                             f"{EMNIST_ARCHIVE}?)")
        where = f"{archive}:{info.filename}"
        archive_size = archive.stat().st_size
        if info.compress_size > archive_size:
            raise ValueError(f"{where}: truncated zip: the member's {info.compress_size:,} "
                             f"compressed bytes do not fit in the {archive_size:,}-byte "
                             f"archive")
        if info.file_size > MAX_IDX_BYTES or \
                info.file_size > _MAX_INFLATE_RATIO * info.compress_size + 4096:
            raise ValueError(f"{where}: the zip directory declares {info.file_size:,} bytes "
                             f"from {info.compress_size:,} compressed ones; refused")
        try:
            with zf.open(info) as f:
                raw = f.read()
        except _ZIP_READ_ERRORS as e:
            raise ValueError(f"{where}: corrupt or truncated zip member ({e})") from None
    if len(raw) != info.file_size:
        raise ValueError(f"{where}: truncated zip member, {len(raw):,} of "
                         f"{info.file_size:,} bytes")
    return _check_role(_idx_from_bytes(raw, where), role, where)


def _npy_header(f, path: Path) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream `f`, read without its data."""
    from .serialization import read_npy_header

    try:
        shape, _, dtype, header_len = read_npy_header(f)
        return shape, dtype, header_len
    except _ZIP_READ_ERRORS as e:
        raise ValueError(f"{path}: not a NumPy array file ({e})") from None


def _read_npz(path: Path, role: str) -> np.ndarray:
    """The one array of a Kuzushiji-49 .npz file (np.savez_compressed: "arr_0.npy"). Its
    header -- shape and dtype -- is read first and checked against the size in the zip's
    directory, so nothing is set aside for a forged or truncated file; then
    ``np.load(path, allow_pickle=False)`` reads it."""
    with _open_zip(path, ".npz file") as zf:
        infos = zf.infolist()
        if len(infos) != 1 or not infos[0].filename.endswith(".npy"):
            raise ValueError(f"{path}: expected one array (arr_0.npy), found "
                             f"{[i.filename for i in infos]}")
        info = infos[0]
        if info.file_size > MAX_IDX_BYTES:
            raise ValueError(f"{path}: the zip directory declares {info.file_size:,} bytes; "
                             f"refused")
        try:
            member = zf.open(info)
        except _ZIP_READ_ERRORS as e:
            raise ValueError(f"{path}: corrupt .npz file ({e})") from None
        with member:
            shape, dtype, header_len = _npy_header(member, path)
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (dtype {dtype}), which only pickle "
                         f"could read; refused")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header_len + nbytes != info.file_size:
        raise ValueError(f"{path}: truncated or corrupt: the array header declares shape "
                         f"{shape} {dtype} ({nbytes:,} bytes), the file holds "
                         f"{info.file_size - header_len:,}")
    images = role.endswith("images")
    if images and (dtype != np.uint8 or len(shape) != 3):
        raise ValueError(f"{path}: expected uint8 images (N, H, W) for "
                         f"{role.replace('_', ' ')}, got {dtype} with shape {shape}")
    if not images and (dtype.kind not in "ui" or len(shape) != 1):
        raise ValueError(f"{path}: expected integer labels (N,) for "
                         f"{role.replace('_', ' ')}, got {dtype} with shape {shape}")
    try:
        with np.load(path, allow_pickle=False) as z:
            array = z[z.files[0]]
    except _ZIP_READ_ERRORS as e:
        raise ValueError(f"{path}: corrupt or truncated .npz file ({e})") from None
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _read_array(source: DataSource, kind: _Kind, role: str) -> np.ndarray:
    """The uint8 images or the labels of `role` from `source`'s files."""
    if "archive" in source.files:
        return _read_archive_member(source.files["archive"], _emnist_members(kind.split)[role],
                                    role)
    if kind.layout == "npz":
        return _read_npz(source.files[role], role)
    return _read_role(source.files, role)


def _where(source: DataSource, part: str) -> str:
    f = source.files
    if "archive" in f:
        return f"{part} ({f['archive']})"
    return f"{part} ({f[part + '_images']}, {f[part + '_labels']})"


def load_dataset(name: Union[str, DataSource], path: Optional[PathLike] = None, *,
                 flatten: bool = True, dtype: npt.DTypeLike = np.float32, download: bool = True,
                 cache_dir: Optional[PathLike] = None,
                 mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """Load a data set by name -- one of `DATASET_NAMES` (see this module's docstring) --
    or from a `DataSource` that `find_dataset` returned.

    Returns ``(X_train, y_train), (X_test, y_test)``; the arguments and results are those
    of `load_fashion_mnist`.
    """
    dt = _check_pixel_dtype(dtype)
    if isinstance(name, DataSource):
        source = name
    else:
        source = find_dataset(name, path, download=download, cache_dir=cache_dir,
                              mirrors=mirrors, progress=progress)
    if source.name == "sample":
        return _load_sample_file(source.location, flatten, dt)
    kind = _KINDS[source.name]
    # one part at a time: the training images read as uint8 are let go (once turned into
    # floats) before the test set is read
    parts = []
    for part in ("train", "test"):
        images = _read_array(source, kind, f"{part}_images")
        labels = _read_array(source, kind, f"{part}_labels")
        parts.append(_split(images, labels, _where(source, part), flatten, dt, kind))
        del images, labels
    return parts[0], parts[1]


def load_fashion_mnist(path: Optional[PathLike] = None, *, flatten: bool = True,
                       dtype: npt.DTypeLike = np.float32, download: bool = True,
                       cache_dir: Optional[PathLike] = None,
                       mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """Fashion-MNIST: 60000 training and 10000 test images of 10 kinds of clothing.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder with the four IDX files (gzipped or not); when omitted, the search
        order of this module's docstring applies.
    flatten : bool
        Images as (N, 784) rows when True, else (N, 1, 28, 28) (NCHW).
    dtype : np.float32 (default), np.float64 or np.uint8
        Pixel dtype: floats k / 255 in [0, 1]; uint8 gives the stored values 0..255
        themselves, a quarter of float32's memory (``model.fit`` / ``evaluate`` /
        ``predict`` scale each batch to the same floats; by hand,
        `nnscratch.data.to_float`).
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
        A file is not the IDX file it should be (see `read_idx`), image and label
        counts differ, or a label is out of range.
    FileNotFoundError
        No data and `download` is False.
    """
    return load_dataset("fashion-mnist", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


def load_mnist(path: Optional[PathLike] = None, *, flatten: bool = True,
               dtype: npt.DTypeLike = np.float32, download: bool = True,
               cache_dir: Optional[PathLike] = None,
               mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """MNIST handwritten digits: 60000 training and 10000 test images.

    Same arguments and results as `load_fashion_mnist`.
    """
    return load_dataset("mnist", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


def load_kmnist(path: Optional[PathLike] = None, *, flatten: bool = True,
                dtype: npt.DTypeLike = np.float32, download: bool = True,
                cache_dir: Optional[PathLike] = None,
                mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """Kuzushiji-MNIST: 60000 training and 10000 test images of 10 cursive Japanese
    hiragana (one per row of the kana table; `class_names("kmnist")`).

    Four IDX files, as MNIST's, from CODH (codh.rois.ac.jp); licence CC BY-SA 4.0:
    "KMNIST Dataset" (created by CODH), adapted from "Kuzushiji Dataset" (created by NIJL
    and others), doi:10.20676/00000341. Same arguments and results as
    `load_fashion_mnist`.
    """
    return load_dataset("kmnist", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


def load_emnist(split: str = "balanced", path: Optional[PathLike] = None, *,
                flatten: bool = True, dtype: npt.DTypeLike = np.float32, download: bool = True,
                cache_dir: Optional[PathLike] = None,
                mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """EMNIST: handwritten letters and digits from NIST Special Database 19, as 28x28
    MNIST-style images.

    ==========  =======  ===============  ==========================================
    split       classes  train / test     labels
    ==========  =======  ===============  ==========================================
    "balanced"  47       112800 / 18800   0-9, A-Z, a b d e f g h n q r t (the other
                                          lowercase letters merged with the capitals)
    "letters"   26       124800 / 20800   0..25 = a..z, upper and lower case merged
                                          (the files count from 1; we subtract 1)
    "digits"    10       240000 / 40000   0..9
    "byclass"   62       697932 / 116323  0-9, A-Z, a-z (unbalanced)
    "bymerge"   47       697932 / 116323  as "balanced" (unbalanced)
    "mnist"     10       60000 / 10000    0..9
    ==========  =======  ===============  ==========================================

    All splits come from one file, NIST's ``gzip.zip`` (562 MB), downloaded once into
    ``<cache>/emnist/``; each split's four IDX files are read out of it (or taken from a
    folder that holds them unpacked). The files store every image transposed; the images
    returned are upright, as MNIST's. `class_names(f"emnist-{split}")` names the classes.
    The larger splits are where ``dtype=np.uint8`` pays: byclass is 2.5 GB as float32,
    640 MB as uint8.

    Parameters
    ----------
    split : str
        One of `EMNIST_SPLITS`.
    path, flatten, dtype, download, cache_dir, mirrors, progress
        As in `load_fashion_mnist`.

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        As `load_fashion_mnist`, labels int64 0..classes-1.
    """
    if not isinstance(split, str) or split.strip().lower() not in EMNIST_SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, EMNIST_SPLITS))}, "
                         f"got {split!r}")
    return load_dataset(f"emnist-{split.strip().lower()}", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


def load_kuzushiji49(path: Optional[PathLike] = None, *, flatten: bool = True,
                     dtype: npt.DTypeLike = np.float32, download: bool = True,
                     cache_dir: Optional[PathLike] = None,
                     mirrors: Optional[Sequence[str]] = None, progress: bool = True) -> TrainTest:
    """Kuzushiji-49: 232365 training and 38547 test images of 48 cursive hiragana and
    the iteration mark ゝ (`class_names("k49")`); unbalanced, so the authors recommend
    balanced accuracy (the mean of the per-class recalls) on the test set.

    Four NumPy files (``k49-{train,test}-{imgs,labels}.npz``, one array each) from CODH,
    read with ``allow_pickle=False`` after their shapes and dtypes were checked; licence
    as `load_kmnist`. Same arguments and results as `load_fashion_mnist`, labels 0..48.
    """
    return load_dataset("k49", path, flatten=flatten, dtype=dtype,
                        download=download, cache_dir=cache_dir, mirrors=mirrors,
                        progress=progress)


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                    "Shirt", "Sneaker", "Bag", "Ankle boot")
_DIGITS = tuple("0123456789")
_CAPITALS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# the hiragana of Kuzushiji-MNIST and Kuzushiji-49 in label order (the authors'
# kmnist_classmap.csv and k49_classmap.csv, as torchvision and numpyvision list them)
_KMNIST_CLASSES = ("お (o)", "き (ki)", "す (su)", "つ (tsu)", "な (na)", "は (ha)",
                   "ま (ma)", "や (ya)", "れ (re)", "を (wo)")
_K49_KANA = ("あいうえお" "かきくけこ" "さしすせそ" "たちつてと" "なにぬねの"
             "はひふへほ" "まみむめも" "やゆよ" "らりるれろ" "わゐゑを" "ん" "ゝ")
_K49_ROMAJI = ("a i u e o  ka ki ku ke ko  sa shi su se so  ta chi tsu te to  "
               "na ni nu ne no  ha hi fu he ho  ma mi mu me mo  ya yu yo  "
               "ra ri ru re ro  wa wi we wo  n").split() + ["iteration mark"]
_K49_CLASSES = tuple(f"{kana} ({romaji})" for kana, romaji in zip(_K49_KANA, _K49_ROMAJI))
_CLASS_NAMES = {
    "fashion-mnist": _FASHION_CLASSES,
    "sample": _FASHION_CLASSES,
    "mnist": _DIGITS,
    "kmnist": _KMNIST_CLASSES,
    "emnist-byclass": _DIGITS + _CAPITALS + tuple("abcdefghijklmnopqrstuvwxyz"),
    "emnist-bymerge": _DIGITS + _CAPITALS + tuple("abdefghnqrt"),
    "emnist-balanced": _DIGITS + _CAPITALS + tuple("abdefghnqrt"),
    "emnist-letters": tuple("abcdefghijklmnopqrstuvwxyz"),
    "emnist-digits": _DIGITS,
    "emnist-mnist": _DIGITS,
    "k49": _K49_CLASSES,
}


def class_names(name: Union[str, DataSource]) -> List[str]:
    """The class names of a data set, in label order: ``class_names(name)[y]`` names label y.

    >>> class_names("emnist-balanced")[36]
    'a'
    """
    key = name.name if isinstance(name, DataSource) else _canonical_name(name)
    return list(_CLASS_NAMES[key])


# ---------------------------------------------------------------------------
# Your own images: one folder per class
# ---------------------------------------------------------------------------

def load_image_folder(root: PathLike, size: Union[int, Tuple[int, int]] = (28, 28),
                      grayscale: bool = True, *,
                      flatten: bool = True, dtype: npt.DTypeLike = np.float32,
                      invert: Union[bool, str] = False,
                      keep_aspect: bool = True, max_pixels: Optional[int] = None
                      ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
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


def load_sample(*, flatten: bool = True, dtype: npt.DTypeLike = np.float32) -> TrainTest:
    """The small real Fashion-MNIST sample shipped inside the package.

    5000 training images (500 per class) and 1000 test images (100 per class),
    taken from the real data set (see ``nnscratch/data/README.md``), so that
    training works offline on a fresh machine. Same format as `load_fashion_mnist`.
    """
    return _load_sample_file(SAMPLE_PATH, flatten, _check_pixel_dtype(dtype))


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
