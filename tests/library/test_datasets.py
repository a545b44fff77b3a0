"""nnscratch.datasets: IDX reader, search order, downloads (local server only), sample;
the other MNIST-style sets (Kuzushiji-MNIST, EMNIST out of NIST's zip, Kuzushiji-49 .npz).

Downloads are tested against an http.server on 127.0.0.1 serving small synthetic
files made here (IDX, NIST-style zip, .npz); no test touches the internet.
"""

import gzip
import hashlib
import http.server
import io
import os
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnscratch import datasets

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILE_NAMES = list(datasets.FILES.values())


# ---------------------------------------------------------------------------
# helpers: synthetic IDX files
# ---------------------------------------------------------------------------

def idx_bytes(array, type_code=0x08):
    """IDX encoding of `array`: 00 00 <type> <ndim>, big-endian sizes, values."""
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def make_data(n_train, n_test, seed=0):
    """Synthetic MNIST-shaped uint8 data; labels cycle through 0..9."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    x_train[0, 0, 0], x_train[0, 0, 1] = 0, 255  # both ends of the pixel range
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    y_test = (np.arange(n_test) % 10).astype(np.uint8)
    return x_train, y_train, x_test, y_test


def data_files(n_train=20, n_test=10, seed=0, gz=True):
    """file name -> bytes of the four standard files, and the arrays."""
    x_train, y_train, x_test, y_test = arrays = make_data(n_train, n_test, seed)
    raw = {
        "train-images-idx3-ubyte": idx_bytes(x_train),
        "train-labels-idx1-ubyte": idx_bytes(y_train),
        "t10k-images-idx3-ubyte": idx_bytes(x_test),
        "t10k-labels-idx1-ubyte": idx_bytes(y_test),
    }
    if gz:
        return {k + ".gz": gzip.compress(v, mtime=0) for k, v in raw.items()}, arrays
    return raw, arrays


def write_dataset(folder, n_train=20, n_test=10, seed=0, gz=True):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files, arrays = data_files(n_train, n_test, seed, gz)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return arrays


def checksums_of(files, algo="sha256"):
    return {name: ((algo, hashlib.new(algo, data).hexdigest()),) for name, data in files.items()}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real environment leaks in: cache in tmp, no env vars, no Debian folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NNSCRATCH_DATA", raising=False)
    monkeypatch.delenv("NNSCRATCH_MIRRORS", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return tmp_path


# ---------------------------------------------------------------------------
# read_idx
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip_path_and_fileobj(tmp_path, gz):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(x)
    if gz:
        data = gzip.compress(data)
    p = tmp_path / "x.idx"  # no .gz suffix: gzip is known by its magic bytes
    p.write_bytes(data)
    for source in (p, str(p), io.BytesIO(data)):
        got = datasets.read_idx(source)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, x)
    got[0, 0, 0] = 7  # a fresh, writeable array


@pytest.mark.parametrize("dtype,code", [(np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_other_types_native_order(dtype, code):
    x = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    got = datasets.read_idx(io.BytesIO(idx_bytes(x, code)))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, x)


def test_read_idx_labels_magic_801():
    data = idx_bytes(np.array([3, 1, 4], dtype=np.uint8))
    assert data[:4] == bytes.fromhex("00000801")
    np.testing.assert_array_equal(datasets.read_idx(io.BytesIO(data)), [3, 1, 4])


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_file(tmp_path, gz):
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-1]
    p = tmp_path / "short-idx3-ubyte"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=r"short-idx3-ubyte.*truncated"):
        datasets.read_idx(p)


def test_read_idx_trailing_bytes(tmp_path):
    p = tmp_path / "long-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros(10, np.uint8)) + b"\x00\x00")
    with pytest.raises(ValueError, match=r"long-idx1-ubyte.*2 bytes of trailing data"):
        datasets.read_idx(p)


@pytest.mark.parametrize("data", [
    b"",                                              # empty
    b"\x00\x00\x08",                                  # shorter than a magic number
    bytes.fromhex("00000803") + b"\x00\x00",          # header cut inside the sizes
    bytes.fromhex("01000801") + bytes(8),             # first bytes not zero
    bytes.fromhex("00000701") + bytes(8),             # unknown type code
    bytes.fromhex("00000800"),                        # zero dimensions
    b"\x89PNG\r\n\x1a\n" + bytes(64),                 # a foreign file
    b"hello, I am a text file\n",
])
def test_read_idx_rejects_foreign_and_broken_headers(tmp_path, data):
    p = tmp_path / "foreign.bin"
    p.write_bytes(data)
    with pytest.raises(ValueError, match="foreign.bin"):
        datasets.read_idx(p)


def test_read_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    p = tmp_path / "cut.gz"
    p.write_bytes(good[: len(good) // 2])   # gzip stream ends early
    with pytest.raises(ValueError, match=r"cut.gz.*gzip"):
        datasets.read_idx(p)
    bad = bytearray(good)
    bad[-8] ^= 0xFF                          # CRC no longer matches
    p.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"cut.gz.*gzip"):
        datasets.read_idx(p)


# ---------------------------------------------------------------------------
# loaders on local folders
# ---------------------------------------------------------------------------

def test_load_from_path_default_format(tmp_path):
    x_train, y_train, x_test, y_test = write_dataset(tmp_path / "d", 20, 10)
    (X, y), (Xt, yt) = datasets.load_fashion_mnist(tmp_path / "d")
    assert X.shape == (20, 784) and X.dtype == np.float32
    assert Xt.shape == (10, 784)
    assert y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(y, y_train)
    np.testing.assert_array_equal(yt, y_test)
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(X, x_train.reshape(20, 784).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(Xt, x_test.reshape(10, 784).astype(np.float32) / np.float32(255))


def test_flatten_false_and_float64(tmp_path):
    x_train, _, x_test, _ = write_dataset(tmp_path, 20, 10)
    (X, y), (Xt, yt) = datasets.load_mnist(tmp_path, flatten=False, dtype=np.float64)
    assert X.shape == (20, 1, 28, 28) and Xt.shape == (10, 1, 28, 28)
    assert X.dtype == np.float64 and Xt.dtype == np.float64 and X.flags.c_contiguous
    np.testing.assert_array_equal(X[:, 0], x_train / 255.0)
    assert y.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.int64, "int32", np.int8, np.uint16])
def test_non_float_dtype_rejected(tmp_path, dtype):
    write_dataset(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        datasets.load_mnist(tmp_path, dtype=dtype)
    with pytest.raises(ValueError, match="dtype"):
        datasets.load_sample(dtype=dtype)


def test_uncompressed_file_names_accepted(tmp_path):
    _, y_train, _, _ = write_dataset(tmp_path, 30, 10, gz=False)
    assert not list(tmp_path.glob("*.gz"))
    (_, y), _ = datasets.load_mnist(tmp_path, download=False)
    np.testing.assert_array_equal(y, y_train)


def test_image_label_count_mismatch(tmp_path):
    write_dataset(tmp_path, 20, 10)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(ValueError, match=r"20 images but 19 labels"):
        datasets.load_mnist(tmp_path)


def test_labels_file_where_images_belong(tmp_path):
    write_dataset(tmp_path, 20, 10)
    labels = (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz.*0x00000803"):
        datasets.load_mnist(tmp_path)


def test_labels_out_of_range(tmp_path):
    write_dataset(tmp_path, 20, 10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(10, 10, np.uint8))))
    with pytest.raises(ValueError, match="0..9"):
        datasets.load_mnist(tmp_path)


def test_truncated_file_in_dataset_names_it(tmp_path):
    write_dataset(tmp_path, 20, 10)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz.*truncated"):
        datasets.load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------------------
# search order
# ---------------------------------------------------------------------------

def n_train_of(source):
    return datasets.read_idx(source.files["train_labels"]).shape[0]


def test_search_order(tmp_path, monkeypatch):
    # each place holds a data set of a different size, so we can tell them apart
    explicit, env, cache, debian = (tmp_path / n for n in ("explicit", "env", "cache", "debian"))
    write_dataset(explicit, 11, 10)
    write_dataset(env / "fashion-mnist", 12, 10)
    write_dataset(cache / "nnscratch" / "fashion-mnist", 13, 10)
    write_dataset(debian, 14, 10)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", debian)
    monkeypatch.setenv("NNSCRATCH_DATA", str(env))

    def origin(**kw):
        s = datasets.find_dataset("fashion-mnist", **kw)
        return s.origin, n_train_of(s)

    assert origin(path=explicit) == ("path", 11)
    assert origin() == ("env", 12)
    monkeypatch.delenv("NNSCRATCH_DATA")
    assert origin() == ("cache", 13)
    (cache / "nnscratch" / "fashion-mnist" / FILE_NAMES[0]).unlink()  # incomplete cache
    assert origin() == ("debian", 14)
    assert datasets.load_fashion_mnist()[0][0].shape == (14, 784)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="fashion-mnist not found"):
        datasets.find_dataset("fashion-mnist")
    with pytest.raises(FileNotFoundError):
        datasets.load_fashion_mnist(download=False)


def test_env_folder_layouts(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_dataset(root / "mnist", 15, 10)
    write_dataset(root / "fashion-mnist", 16, 10)
    monkeypatch.setenv("NNSCRATCH_DATA", str(root))
    assert n_train_of(datasets.find_dataset("mnist")) == 15
    assert n_train_of(datasets.find_dataset("fashion_mnist")) == 16  # alias
    flat = tmp_path / "flat"
    write_dataset(flat, 17, 10)                                       # files directly
    monkeypatch.setenv("NNSCRATCH_DATA", str(flat))
    s = datasets.find_dataset("mnist")
    assert (s.origin, s.location, n_train_of(s)) == ("env", flat, 17)


def test_env_without_the_dataset_falls_through_to_cache(tmp_path, monkeypatch):
    write_dataset(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("NNSCRATCH_DATA", str(tmp_path / "env"))
    write_dataset(tmp_path / "cache" / "nnscratch" / "mnist", 18, 10)
    s = datasets.find_dataset("mnist")
    assert s.origin == "cache" and n_train_of(s) == 18
    assert "user cache" in s.description and "mnist" in str(s)


def test_explicit_path_missing_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    write_dataset(tmp_path / "cache" / "nnscratch" / "mnist")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz"):
        datasets.load_mnist(tmp_path / "partial")


def test_cache_dir_argument(tmp_path):
    write_dataset(tmp_path / "elsewhere" / "mnist", 19, 10)
    s = datasets.find_dataset("mnist", cache_dir=tmp_path / "elsewhere")
    assert s.origin == "cache" and n_train_of(s) == 19


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.find_dataset("cifar10")


# ---------------------------------------------------------------------------
# downloads, from a local server only
# ---------------------------------------------------------------------------

class FileServer:
    """http.server on 127.0.0.1:<free port> serving `routes` (path -> bytes).

    A route whose value is ("lie", data) announces more bytes than it sends and
    closes the connection: a download cut short.
    """

    def __init__(self):
        self.routes = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                lie = isinstance(body, tuple)
                if lie:
                    body = body[1]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) + (1000 if lie else 0)))
                self.end_headers()
                self.wfile.write(body)
                if lie:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, prefix, files):
        for name, data in files.items():
            self.routes[f"{prefix}/{name}"] = data
        return f"{self.base}{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


def cache_contents(tmp_path):
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_lands_in_cache_then_is_read_from_it(tmp_path, server, monkeypatch):
    files, (x_train, y_train, x_test, y_test) = data_files(20, 10, seed=3)
    url = server.serve("/mnist", files)
    monkeypatch.setitem(datasets.DATASETS["mnist"], "checksums", checksums_of(files, "md5"))
    (X, y), (Xt, yt) = datasets.load_mnist(mirrors=[url], progress=True)
    np.testing.assert_array_equal(y, y_train)
    np.testing.assert_array_equal(Xt, x_test.reshape(10, 784) / np.float32(255))
    cached = tmp_path / "cache" / "nnscratch" / "mnist"
    assert cache_contents(tmp_path) == sorted(f"nnscratch/mnist/{n}" for n in FILE_NAMES)
    for name, data in files.items():
        assert (cached / name).read_bytes() == data
    n_requests = len(server.requests)
    assert n_requests == 4
    s = datasets.find_dataset("mnist", mirrors=[url])
    assert (s.origin, s.location) == ("cache", cached)
    datasets.load_mnist(mirrors=[url])
    assert len(server.requests) == n_requests        # no second download


def test_find_dataset_download_reports_it(tmp_path, server, monkeypatch):
    files, _ = data_files(20, 10)
    url = server.serve("/f", files)
    monkeypatch.setitem(datasets.DATASETS["fashion-mnist"], "checksums", checksums_of(files))
    with pytest.raises(FileNotFoundError):
        datasets.find_dataset("fashion-mnist", mirrors=[url])      # download=False
    assert server.requests == []
    s = datasets.find_dataset("fashion-mnist", download=True, mirrors=[url], progress=False)
    assert s.origin == "download" and "downloaded" in s.description
    assert s.location == tmp_path / "cache" / "nnscratch" / "fashion-mnist"
    assert datasets.load_dataset(s)[0][0].shape == (20, 784)


def test_mirrors_from_env_and_fallback_after_404(tmp_path, server, monkeypatch):
    files, _ = data_files(20, 10)
    good = server.serve("/good", files)
    monkeypatch.setenv("NNSCRATCH_MIRRORS", f"{server.base}/missing/  {good}")
    monkeypatch.setitem(datasets.DATASETS["mnist"], "checksums", checksums_of(files))
    datasets.load_mnist(progress=False)
    assert sum(r.startswith("/missing/") for r in server.requests) == 4
    assert sum(r.startswith("/good/") for r in server.requests) == 4
    assert len(cache_contents(tmp_path)) == 4


def test_download_only_fetches_missing_files(tmp_path, server):
    files, _ = data_files(20, 10)
    url = server.serve("/m", files)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / FILE_NAMES[0]).write_bytes(files[FILE_NAMES[0]])
    datasets.download_dataset("mnist", dest, mirrors=[url], checksums=checksums_of(files),
                              progress=False)
    assert sorted(server.requests) == sorted(f"/m/{n}" for n in FILE_NAMES[1:])


def test_corrupt_download_rejected_and_not_cached(tmp_path, server, monkeypatch):
    files, _ = data_files(20, 10)
    checksums = checksums_of(files)
    bad = dict(files)
    flipped = bytearray(bad["train-labels-idx1-ubyte.gz"])
    flipped[20] ^= 0x01
    bad["train-labels-idx1-ubyte.gz"] = bytes(flipped)
    url = server.serve("/bad", bad)
    monkeypatch.setitem(datasets.DATASETS["mnist"], "checksums", checksums)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz.*checksum mismatch"):
        datasets.load_mnist(mirrors=[url], progress=False)
    # the good first file may stay, the corrupt one and any temp file must not
    left = cache_contents(tmp_path)
    assert left == ["nnscratch/mnist/train-images-idx3-ubyte.gz"]
    with pytest.raises(FileNotFoundError):
        datasets.find_dataset("mnist")


def test_truncated_file_fails_checksum(tmp_path, server):
    files, _ = data_files(20, 10)
    checksums = checksums_of(files)
    short = {n: d[: len(d) - 10] for n, d in files.items()}
    url = server.serve("/short", short)
    dest = tmp_path / "cache" / "d"
    with pytest.raises(ValueError, match="checksum mismatch"):
        datasets.download_dataset("mnist", dest, mirrors=[url], checksums=checksums,
                                  progress=False)
    assert cache_contents(tmp_path) == []


def test_connection_cut_short_rejected(tmp_path, server):
    files, _ = data_files(20, 10)
    url = server.serve("/cut", {n: ("lie", d) for n, d in files.items()})
    dest = tmp_path / "cache" / "d"
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        datasets.download_dataset("mnist", dest, mirrors=[url], checksums=checksums_of(files),
                                  progress=False)
    assert cache_contents(tmp_path) == []


def test_404_everywhere_is_oserror_and_nothing_cached(tmp_path, server, monkeypatch):
    monkeypatch.setitem(datasets.DATASETS["fashion-mnist"], "mirrors",
                        (f"{server.base}/a/", f"{server.base}/b"))  # with and without "/"
    with pytest.raises(OSError, match="404"):
        datasets.load_fashion_mnist(progress=False)
    assert server.requests == ["/a/train-images-idx3-ubyte.gz",
                               "/b/train-images-idx3-ubyte.gz"]
    assert cache_contents(tmp_path) == []


def test_no_download_when_disabled(server, monkeypatch):
    monkeypatch.setenv("NNSCRATCH_MIRRORS", server.base + "/")
    with pytest.raises(FileNotFoundError):
        datasets.load_mnist(download=False)
    assert server.requests == []


def test_checksum_tables_are_complete():
    assert set(datasets.DATASETS) == {"fashion-mnist", "mnist", "kmnist", "emnist", "k49"}
    for name, info in datasets.DATASETS.items():
        assert set(info["checksums"]) == set(info["files"].values())
        if name in ("fashion-mnist", "mnist", "kmnist"):
            assert set(info["files"].values()) == set(FILE_NAMES)
        assert info["mirrors"] and all(m.endswith("/") for m in info["mirrors"])
        for specs in info["checksums"].values():
            for algo, digest in specs:
                assert len(digest) == hashlib.new(algo).digest_size * 2
                int(digest, 16)


# ---------------------------------------------------------------------------
# the real data (Debian's dataset-fashion-mnist) and the shipped sample
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_fashion():
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")
    return datasets.load_fashion_mnist(DEBIAN_DIR, download=False)


def test_real_fashion_mnist(real_fashion):
    (X, y), (Xt, yt) = real_fashion
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0 and 0.2 < X.mean() < 0.4
    # Fashion-MNIST is balanced: 6000 / 1000 images per class
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yt), [1000] * 10)


def test_real_fashion_found_in_debian_dir_and_checksums_match(monkeypatch):
    if not DEBIAN_DIR.is_dir():
        pytest.skip(f"{DEBIAN_DIR} absent")
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", DEBIAN_DIR)
    s = datasets.find_dataset("fashion-mnist")
    assert s.origin == "debian" and "dataset-fashion-mnist" in s.description
    table = datasets.DATASETS["fashion-mnist"]["checksums"]
    for name in FILE_NAMES:
        digest = hashlib.sha256((DEBIAN_DIR / name).read_bytes()).hexdigest()
        assert ("sha256", digest) in table[name]


def test_sample_is_a_slice_of_the_real_data(real_fashion):
    (X, y), (Xt, yt) = real_fashion
    (S, sy), (St, sty) = datasets.load_sample()
    with np.load(datasets.SAMPLE_PATH, allow_pickle=False) as z:
        i_train, i_test = z["train_index"], z["test_index"]
    np.testing.assert_array_equal(S, X[i_train])
    np.testing.assert_array_equal(sy, y[i_train])
    np.testing.assert_array_equal(St, Xt[i_test])
    np.testing.assert_array_equal(sty, yt[i_test])


def test_sample():
    assert datasets.SAMPLE_PATH.stat().st_size < 4 * 2**20
    (X, y), (Xt, yt) = datasets.load_sample()
    assert X.shape == (5000, 784) and Xt.shape == (1000, 784)
    assert X.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [500] * 10)
    np.testing.assert_array_equal(np.bincount(yt), [100] * 10)
    (X4, _), _ = datasets.load_sample(flatten=False, dtype=np.float64)
    assert X4.shape == (5000, 1, 28, 28) and X4.dtype == np.float64
    np.testing.assert_allclose(X4.reshape(5000, 784), X, rtol=1e-7)
    s = datasets.find_dataset("sample")
    assert s.origin == "package" and s.location == datasets.SAMPLE_PATH
    (X5, _), _ = datasets.load_dataset("sample")
    np.testing.assert_array_equal(X5, X)


def test_make_sample_from_synthetic_data(tmp_path):
    _, y_train, _, y_test = write_dataset(tmp_path / "d", 40, 20)
    out = datasets.make_sample(tmp_path / "s.npz", path=tmp_path / "d",
                               train_per_class=3, test_per_class=2)
    with np.load(out, allow_pickle=False) as z:
        assert z["X_train"].shape == (30, 28, 28) and z["X_train"].dtype == np.uint8
        np.testing.assert_array_equal(z["train_index"], np.arange(30))
        np.testing.assert_array_equal(z["y_test"], y_test[:20])
    with pytest.raises(ValueError, match="class"):
        datasets.make_sample(tmp_path / "t.npz", path=tmp_path / "d", train_per_class=5)
    assert not os.path.exists(tmp_path / "t.npz")


# ---------------------------------------------------------------------------
# pixels as uint8, and reading without a second copy
# ---------------------------------------------------------------------------

def test_uint8_pixels_are_the_stored_bytes(tmp_path):
    x_train, y_train, x_test, _ = write_dataset(tmp_path, 20, 10)
    (X, y), (Xt, _) = datasets.load_mnist(tmp_path, dtype=np.uint8)
    assert X.dtype == np.uint8 and X.shape == (20, 784) and X.flags.c_contiguous
    np.testing.assert_array_equal(X, x_train.reshape(20, 784))
    np.testing.assert_array_equal(Xt, x_test.reshape(10, 784))
    assert y.dtype == np.int64
    (X4, _), _ = datasets.load_mnist(tmp_path, dtype="uint8", flatten=False)
    assert X4.shape == (20, 1, 28, 28) and X4.dtype == np.uint8
    np.testing.assert_array_equal(X4[:, 0], x_train)
    X4[0, 0, 0, 0] = 7                                  # our own array
    # scaled a batch at a time, they are the loader's floats bit for bit
    from nnscratch.data import to_float
    (F, _), _ = datasets.load_mnist(tmp_path)
    np.testing.assert_array_equal(to_float(X), F)
    (S, _), _ = datasets.load_sample()
    (S8, _), _ = datasets.load_sample(dtype=np.uint8)
    assert S8.dtype == np.uint8
    np.testing.assert_array_equal(to_float(S8), S)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_keeps_one_copy(tmp_path, gz):
    x = np.random.default_rng(0).integers(0, 256, size=(5000, 28, 28), dtype=np.uint8)
    data = idx_bytes(x)                                 # 3.9 MB
    p = tmp_path / "big-idx3-ubyte"
    p.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    on_disk = p.stat().st_size
    tracemalloc.start()
    try:
        got = datasets.read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x)
    assert got.flags.writeable
    # the bytes read (compressed ones included), the array and the inflater's 1 MiB steps:
    # not a second copy of the array (nor of the compressed bytes)
    assert peak < (on_disk if gz else 0) + x.nbytes + (3 << 20), (peak, x.nbytes)


def test_gzip_header_promising_more_than_it_can_hold_is_refused_early(tmp_path):
    header = bytes([0, 0, 8, 3]) + np.array([10_000_000, 28, 28], dtype=">u4").tobytes()
    p = tmp_path / "forged-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(header + bytes(1000)))  # claims 7.8 GB, holds 1000 bytes
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"forged-idx3-ubyte.gz.*truncated"):
            datasets.read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ---------------------------------------------------------------------------
# Kuzushiji-MNIST, EMNIST, Kuzushiji-49: helpers
# ---------------------------------------------------------------------------

CLASSES = {"balanced": 47, "letters": 26, "digits": 10, "byclass": 62, "bymerge": 47,
           "mnist": 10}


def emnist_arrays(split, n_train=12, n_test=6, seed=0):
    """Upright uint8 images and 0-based labels for one split."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    x_train[0] = 0
    x_train[0, 2, 5:20] = 255           # a horizontal stroke: vertical once transposed
    k = CLASSES[split]
    y_train = (np.arange(n_train) * 7 % k).astype(np.uint8)
    y_test = (np.arange(n_test) * 5 % k).astype(np.uint8)
    y_train[-1] = k - 1                  # the top label present
    return x_train, y_train, x_test, y_test


def emnist_members(split, arrays):
    """member name -> gzipped IDX bytes, stored as NIST stores them: each image
    transposed, letters labelled 1..26."""
    x_train, y_train, x_test, y_test = arrays
    shift = 1 if split == "letters" else 0
    out = {}
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        out[f"emnist-{split}-{part}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(x.transpose(0, 2, 1)), mtime=0)
        out[f"emnist-{split}-{part}-labels-idx1-ubyte.gz"] = gzip.compress(
            idx_bytes((y + shift).astype(np.uint8)), mtime=0)
    return out


def zip_bytes(members, prefix="gzip/", compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def emnist_zip(splits=("balanced", "letters", "digits"), **kw):
    """A small NIST gzip.zip: (zip bytes, {split: upright arrays})."""
    members, arrays = {}, {}
    for i, split in enumerate(splits):
        arrays[split] = emnist_arrays(split, seed=i, **kw)
        members.update(emnist_members(split, arrays[split]))
    return zip_bytes(members), arrays


def npz_bytes(*arrays, **named):
    buf = io.BytesIO()
    np.savez_compressed(buf, *arrays, **named)
    return buf.getvalue()


def k49_files(n_train=30, n_test=12, seed=0, label_dtype=np.uint8):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    y_train = (np.arange(n_train) * 11 % 49).astype(label_dtype)
    y_test = (np.arange(n_test) * 3 % 49).astype(label_dtype)
    y_train[0] = 48
    files = {"k49-train-imgs.npz": npz_bytes(x_train), "k49-train-labels.npz": npz_bytes(y_train),
             "k49-test-imgs.npz": npz_bytes(x_test), "k49-test-labels.npz": npz_bytes(y_test)}
    return files, (x_train, y_train, x_test, y_test)


def write_files(folder, files):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def assert_loaded(result, arrays, flat=True):
    """`result` of a loader holds `arrays` (upright uint8 images, 0-based labels)."""
    (X, y), (Xt, yt) = result
    for got, want in ((X, arrays[0]), (Xt, arrays[2])):
        n = len(want)
        assert got.shape == ((n, 784) if flat else (n, 1, 28, 28))
        assert got.dtype in (np.float32, np.uint8) and got.flags.c_contiguous
        expected = want if got.dtype == np.uint8 else want / np.float32(255)
        np.testing.assert_array_equal(got.reshape(n, 28, 28), expected)
    assert y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(y, arrays[1])
    np.testing.assert_array_equal(yt, arrays[3])


# ---------------------------------------------------------------------------
# Kuzushiji-MNIST
# ---------------------------------------------------------------------------

def test_kmnist_download_then_cache(tmp_path, server, monkeypatch):
    files, arrays = data_files(20, 10, seed=5)
    url = server.serve("/kmnist", files)
    monkeypatch.setitem(datasets.DATASETS["kmnist"], "checksums", checksums_of(files, "md5"))
    assert_loaded(datasets.load_kmnist(mirrors=[url], progress=False), arrays)
    assert cache_contents(tmp_path) == sorted(f"nnscratch/kmnist/{n}" for n in FILE_NAMES)
    assert len(server.requests) == 4
    s = datasets.find_dataset("Kuzushiji_MNIST")
    assert (s.name, s.origin) == ("kmnist", "cache")
    assert_loaded(datasets.load_dataset("kmnist", dtype=np.uint8), arrays)
    assert len(server.requests) == 4


# ---------------------------------------------------------------------------
# EMNIST: one zip for every split
# ---------------------------------------------------------------------------

def test_emnist_one_download_serves_every_split(tmp_path, server, monkeypatch):
    archive, arrays = emnist_zip()
    url = server.serve("/nist", {"gzip.zip": archive})
    monkeypatch.setitem(datasets.DATASETS["emnist"], "checksums",
                        checksums_of({"gzip.zip": archive}))
    result = datasets.load_emnist(mirrors=[url], progress=False)           # balanced
    assert_loaded(result, arrays["balanced"])
    (X, y), _ = result
    stroke = X[0].reshape(28, 28)                   # upright: the stroke is horizontal
    assert stroke[2, 5:20].min() == 1.0 and stroke[5:20, 2].max() == 0.0
    assert y.max() == 46
    letters = datasets.load_emnist("letters", mirrors=[url], dtype=np.uint8, flatten=False)
    assert_loaded(letters, arrays["letters"], flat=False)
    (X8, y8), _ = letters
    assert X8.dtype == np.uint8 and y8.min() >= 0 and y8.max() == 25     # 1..26 -> 0..25
    assert_loaded(datasets.load_dataset("emnist_digits", mirrors=[url]), arrays["digits"])
    assert server.requests == ["/nist/gzip.zip"]    # one download for all three
    assert cache_contents(tmp_path) == ["nnscratch/emnist/gzip.zip"]
    s = datasets.find_dataset("emnist-letters")
    assert s.origin == "cache" and set(s.files) == {"archive"}
    assert s.location == tmp_path / "cache" / "nnscratch" / "emnist"


def test_emnist_unpacked_files_and_layouts(tmp_path, monkeypatch):
    arrays = emnist_arrays("balanced", seed=3)
    members = emnist_members("balanced", arrays)
    # unpacked by `unzip gzip.zip`: <root>/emnist/gzip/, gzipped
    write_files(tmp_path / "a" / "emnist" / "gzip", members)
    s = datasets.find_dataset("emnist", path=tmp_path / "a")
    assert s.name == "emnist-balanced" and s.location == tmp_path / "a" / "emnist" / "gzip"
    assert set(s.files) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert_loaded(datasets.load_dataset(s), arrays)
    # un-gzipped too (as torchvision leaves them), directly in the folder
    write_files(tmp_path / "b", {n[:-3]: gzip.decompress(d) for n, d in members.items()})
    assert_loaded(datasets.load_emnist("balanced", tmp_path / "b"), arrays)
    # the zip in $NNSCRATCH_DATA/emnist/
    write_files(tmp_path / "env" / "emnist", {"gzip.zip": zip_bytes(members)})
    monkeypatch.setenv("NNSCRATCH_DATA", str(tmp_path / "env"))
    s = datasets.find_dataset("emnist-balanced")
    assert s.origin == "env" and set(s.files) == {"archive"}
    assert_loaded(datasets.load_dataset(s, dtype=np.uint8), arrays)
    with pytest.raises(FileNotFoundError, match=r"gzip.zip.*emnist-letters"):
        datasets.find_dataset("emnist-letters", path=tmp_path / "b")


def test_emnist_bad_split_and_names():
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load_emnist("capitals")
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.find_dataset("emnist-capitals")
    assert set(datasets.EMNIST_SPLITS) == set(CLASSES)


def test_emnist_zip_member_missing(tmp_path):
    archive, _ = emnist_zip(("balanced",))
    write_files(tmp_path, {"gzip.zip": archive})
    s = datasets.find_dataset("emnist-letters", path=tmp_path)   # the zip is there...
    with pytest.raises(ValueError, match=r"no member emnist-letters-train-images-idx3-ubyte"):
        datasets.load_dataset(s)                                 # ...without that split


def broken_members(kind):
    arrays = emnist_arrays("balanced")
    members = emnist_members("balanced", arrays)
    name = "emnist-balanced-train-images-idx3-ubyte.gz"
    good = members[name]
    if kind == "gzip cut":                 # the member's gzip stream ends early
        members[name] = good[: len(good) // 2]
    elif kind == "idx short":              # a whole gzip stream of a truncated IDX file
        members[name] = gzip.compress(gzip.decompress(good)[:-100])
    return members


@pytest.mark.parametrize("kind,message", [
    ("gzip cut", r"gzip.zip:gzip/emnist-balanced-train-images-idx3-ubyte.gz.*truncated"),
    ("idx short", r"gzip.zip:gzip/emnist-balanced-train-images-idx3-ubyte.gz.*truncated"),
])
def test_emnist_truncated_member_refused(tmp_path, kind, message):
    write_files(tmp_path, {"gzip.zip": zip_bytes(broken_members(kind))})
    with pytest.raises(ValueError, match=message):
        datasets.load_emnist(path=tmp_path)


def test_emnist_truncated_member_passes_its_checksum_but_not_the_reader(tmp_path, server,
                                                                        monkeypatch):
    # a zip whose published checksum is that of a damaged member: the download verifies,
    # the reader refuses the member, naming it
    archive = zip_bytes(broken_members("gzip cut"))
    url = server.serve("/nist", {"gzip.zip": archive})
    monkeypatch.setitem(datasets.DATASETS["emnist"], "checksums",
                        checksums_of({"gzip.zip": archive}, "md5"))
    with pytest.raises(ValueError, match=r"emnist-balanced-train-images-idx3-ubyte.gz.*"
                                         r"truncated"):
        datasets.load_emnist(mirrors=[url], progress=False)
    assert cache_contents(tmp_path) == ["nnscratch/emnist/gzip.zip"]


@pytest.mark.parametrize("damage", ["cut in the member", "crc", "zip cut", "not a zip"])
def test_emnist_damaged_zip_refused(tmp_path, damage):
    archive = bytearray(zip_bytes(emnist_members("balanced", emnist_arrays("balanced")),
                                  compression=zipfile.ZIP_STORED))
    first_data = 30 + len("gzip/emnist-balanced-train-images-idx3-ubyte.gz")  # after header 1
    if damage == "cut in the member":      # bytes gone from the first member's data
        archive = archive[:first_data + 100] + archive[first_data + 400:]
    elif damage == "crc":                  # one byte changed: the zip's CRC no longer holds
        archive[first_data + 200] ^= 0xFF
    elif damage == "zip cut":              # the end of the file, its directory, gone
        archive = archive[: len(archive) // 2]
    else:
        archive = b"<html>404 Not Found</html>"
    write_files(tmp_path, {"gzip.zip": bytes(archive)})
    with pytest.raises(ValueError, match="gzip.zip"):
        datasets.load_emnist(path=tmp_path)


def test_emnist_member_sizes_checked_before_decompressing(tmp_path, monkeypatch):
    write_files(tmp_path, {"gzip.zip": emnist_zip(("balanced",))[0]})
    monkeypatch.setattr(datasets, "MAX_IDX_BYTES", 1000)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    with pytest.raises(ValueError, match=r"emnist-balanced-train-images.*declares [\d,]+ bytes"):
        datasets.load_emnist(path=tmp_path)
    assert opened == []


def test_emnist_letters_label_zero_refused(tmp_path):
    arrays = list(emnist_arrays("letters"))
    members = emnist_members("letters", arrays)
    members["emnist-letters-test-labels-idx1-ubyte.gz"] = gzip.compress(
        idx_bytes(np.zeros(len(arrays[2]), np.uint8)))          # 0: not a letter
    write_files(tmp_path, {"gzip.zip": zip_bytes(members)})
    with pytest.raises(ValueError, match=r"labels must be 1..26 in the EMNIST letters files"):
        datasets.load_emnist("letters", tmp_path)


def test_emnist_label_beyond_the_split_refused(tmp_path):
    arrays = list(emnist_arrays("digits"))
    arrays[1] = arrays[1].copy()
    arrays[1][3] = 10
    write_files(tmp_path, emnist_members("digits", arrays))
    with pytest.raises(ValueError, match=r"labels must be 0..9, found 10"):
        datasets.load_emnist("digits", tmp_path)


# ---------------------------------------------------------------------------
# Kuzushiji-49
# ---------------------------------------------------------------------------

def test_k49_download_then_cache(tmp_path, server, monkeypatch):
    files, arrays = k49_files()
    url = server.serve("/k49", files)
    monkeypatch.setitem(datasets.DATASETS["k49"], "checksums", checksums_of(files, "md5"))
    assert_loaded(datasets.load_kuzushiji49(mirrors=[url], progress=False), arrays)
    assert cache_contents(tmp_path) == sorted(f"nnscratch/k49/{n}" for n in files)
    assert_loaded(datasets.load_dataset("kuzushiji-49", dtype=np.uint8, flatten=False),
                  arrays, flat=False)
    assert len(server.requests) == 4


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, ">i4"])
def test_k49_integer_label_dtypes(tmp_path, label_dtype):
    files, arrays = k49_files(label_dtype=label_dtype)
    write_files(tmp_path / "k49", files)
    assert_loaded(datasets.load_kuzushiji49(tmp_path), arrays)


def forged_npy(shape, payload=b""):
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return f.getvalue() + payload


@pytest.mark.parametrize("name,data,message", [
    ("k49-train-imgs.npz", npz_bytes(np.zeros((30, 28, 28), np.float32)),
     "expected uint8 images"),
    ("k49-train-imgs.npz", npz_bytes(np.zeros((30, 784), np.uint8)), "expected uint8 images"),
    ("k49-train-labels.npz", npz_bytes(np.zeros((30, 2), np.int64)), "expected integer labels"),
    ("k49-train-labels.npz", npz_bytes(np.zeros(30, np.float64)), "expected integer labels"),
    ("k49-train-labels.npz", npz_bytes(np.full(30, 49, np.uint8)), r"must be 0..48, found 49"),
    ("k49-train-labels.npz", npz_bytes(np.full(30, -1, np.int64)), r"must be 0..48, found -1"),
    ("k49-test-labels.npz", npz_bytes(np.zeros(11, np.uint8)), "12 images but 11 labels"),
    ("k49-test-imgs.npz", npz_bytes(np.zeros((12, 28, 28), np.uint8), np.zeros(3)), "one array"),
    ("k49-test-imgs.npz",                   # a header promising 784 MB over 99 bytes
     zip_bytes({"arr_0.npy": forged_npy((10 ** 6, 28, 28), bytes(99))}, prefix=""),
     "declares shape"),
    ("k49-test-imgs.npz", b"PK\x03\x04 not really", "not a readable .npz"),
    ("k49-test-imgs.npz", zip_bytes({"arr_0.npy": b"\x93NUMPY garbage"}, prefix=""),
     "not a NumPy array"),
])
def test_k49_bad_files_refused(tmp_path, name, data, message):
    files, _ = k49_files()
    files[name] = data
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=message) as e:
        datasets.load_kuzushiji49(tmp_path)
    if "must be 0..48" not in message and "images but" not in message:
        assert name in str(e.value)


def test_k49_pickled_objects_refused(tmp_path):
    files, _ = k49_files()
    objects = np.empty(30, dtype=object)
    objects[:] = [{"label": i} for i in range(30)]
    files["k49-train-labels.npz"] = npz_bytes(objects)     # savez pickles object arrays
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=r"k49-train-labels.npz.*pickle"):
        datasets.load_kuzushiji49(tmp_path)


def test_k49_truncated_npz_refused(tmp_path):
    files, _ = k49_files()
    data = files["k49-train-imgs.npz"]
    files["k49-train-imgs.npz"] = data[: len(data) - 40]   # the zip directory cut off
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=r"k49-train-imgs.npz"):
        datasets.load_kuzushiji49(tmp_path)


# ---------------------------------------------------------------------------
# the new sets: checksums refuse a corrupt download; tables; class names
# ---------------------------------------------------------------------------

def served(name):
    if name == "kmnist":
        return "kmnist", data_files(20, 10)[0]
    if name == "emnist-letters":
        return "emnist", {"gzip.zip": emnist_zip(("letters",))[0]}
    return "k49", k49_files()[0]


@pytest.mark.parametrize("name", ["kmnist", "emnist-letters", "k49"])
def test_corrupt_download_of_new_sets_refused(tmp_path, server, monkeypatch, name):
    folder, files = served(name)
    monkeypatch.setitem(datasets.DATASETS[folder], "checksums", checksums_of(files))
    last = list(files)[-1]
    bad = dict(files)
    flipped = bytearray(bad[last])
    flipped[len(flipped) // 2] ^= 0x01
    bad[last] = bytes(flipped)
    url = server.serve("/bad", bad)
    with pytest.raises(ValueError, match=rf"{last}.*checksum mismatch"):
        datasets.load_dataset(name, mirrors=[url], progress=False)
    left = cache_contents(tmp_path)
    assert f"nnscratch/{folder}/{last}" not in left
    assert not [p for p in left if p.endswith(".part")]
    assert len(left) == len(files) - 1                  # the good ones, kept
    with pytest.raises(FileNotFoundError):
        datasets.find_dataset(name)


def test_published_checksums_for_the_new_sets():
    # the values of torchvision / tensorflow-datasets (see the comments in datasets.py)
    kmnist = datasets.DATASETS["kmnist"]["checksums"]
    assert ("md5", "bdb82020997e1d708af4cf47b453dcf7") in kmnist["train-images-idx3-ubyte.gz"]
    assert ("sha256", "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c") \
        in kmnist["t10k-labels-idx1-ubyte.gz"]
    emnist = datasets.DATASETS["emnist"]
    assert emnist["files"] == {"archive": "gzip.zip"}
    assert ("md5", "58c8d27c78d21e728a6bc7b3cc06412e") in emnist["checksums"]["gzip.zip"]
    for info in datasets.DATASETS.values():
        for specs in info["checksums"].values():
            assert len({d for _, d in specs}) == len(specs)


def test_class_names():
    for name in datasets.DATASET_NAMES:
        names = datasets.class_names(name)
        want = 10 if name == "sample" else datasets._KINDS[name].num_classes
        assert len(names) == want == len(set(names)), name
    assert datasets.class_names("emnist")[36] == "a"
    assert datasets.class_names("emnist-letters")[0] == "a"
    assert datasets.class_names("k49")[48] == "ゝ (iteration mark)"
    assert datasets.class_names("kmnist")[0] == "お (o)"
    s = datasets.find_dataset("sample")
    assert datasets.class_names(s)[9] == "Ankle boot"
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.class_names("cifar10")
