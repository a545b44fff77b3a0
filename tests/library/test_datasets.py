"""nnscratch.datasets: IDX reader, search order, downloads (local server only), sample.

Downloads are tested against an http.server on 127.0.0.1 serving small synthetic
IDX files made here; no test touches the internet.
"""

import gzip
import hashlib
import http.server
import io
import os
import threading
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


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, "int32"])
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
    for name, info in datasets.DATASETS.items():
        assert set(info["checksums"]) == set(FILE_NAMES)
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
