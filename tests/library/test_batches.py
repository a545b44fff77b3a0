"""nnscratch.data: batches for hand-written loops, stratified splits, and uint8 pixels
scaled a batch at a time (to_float, Normalize, channel_stats)."""
import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import data


def rows(n, width=3):
    """X whose row i holds i (so a batch tells which rows it took), y = arange."""
    X = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
    return X, np.arange(n)


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch_size", [(103, 1), (103, 10), (103, 103), (103, 200),
                                          (100, 25), (1, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_row_once_per_pass(n, batch_size, shuffle):
    X, y = rows(n)
    b = data.batches(X, y, batch_size, shuffle=shuffle, seed=1)
    got = list(b)
    assert len(got) == len(b) == math.ceil(n / batch_size)
    sizes = [len(yb) for _, yb in got]
    assert sizes[:-1] == [batch_size] * (len(got) - 1)
    assert sizes[-1] == n - batch_size * (len(got) - 1)        # the rest, smaller
    seen = np.concatenate([yb for _, yb in got])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # each row exactly once
    np.testing.assert_array_equal(seen, b.indices)
    for xb, yb in got:                                          # X and y rows stay paired
        assert xb.shape == (len(yb), 3)
        np.testing.assert_array_equal(xb[:, 0], yb)
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(n))


def test_in_order_batches_are_views_shuffled_ones_copies():
    X, y = rows(50)
    for xb, yb in data.batches(X, y, 16, shuffle=False):
        assert np.shares_memory(xb, X) and np.shares_memory(yb, y)
    for xb, yb in data.batches(X, y, 16, seed=0):
        assert not np.shares_memory(xb, X) and not np.shares_memory(yb, y)
    assert not np.array_equal(data.batches(X, y, 16, seed=0).indices, np.arange(50))


def test_order_reproducible_by_seed():
    X, y = rows(500)
    order = lambda **kw: data.batches(X, y, 32, **kw).indices      # noqa: E731
    np.testing.assert_array_equal(order(seed=7), order(seed=7))
    assert not np.array_equal(order(seed=7), order(seed=8))
    # an int seed gives fit's first-epoch order: PCG64(seed) shuffling arange(N) int64
    expected = np.arange(500, dtype=np.int64)
    np.random.Generator(np.random.PCG64(7)).shuffle(expected)
    np.testing.assert_array_equal(order(seed=7), expected)
    # seed=None draws from the library's generator: nnscratch.seed repeats the run
    nn.seed(3)
    first, second = order(), order()
    assert not np.array_equal(first, second)            # the draws go on
    nn.seed(3)
    np.testing.assert_array_equal(order(), first)
    np.testing.assert_array_equal(order(), second)
    # one Generator for a run: its draws go on from epoch to epoch
    rng = np.random.Generator(np.random.PCG64(5))
    epochs = [order(seed=rng) for _ in range(3)]
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.random.Generator(np.random.PCG64(5))
    for got in epochs:
        replay = np.arange(500, dtype=np.int64)
        again.shuffle(replay)
        np.testing.assert_array_equal(got, replay)


def test_iterating_twice_gives_the_same_batches_and_drop_last():
    X, y = rows(45)
    b = data.batches(X, y, 10, seed=2)
    first = [yb.copy() for _, yb in b]
    second = [yb for _, yb in b]
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    d = data.batches(X, y, 10, seed=2, drop_last=True)
    got = [yb for _, yb in d]
    assert len(d) == len(got) == 4 and all(len(yb) == 10 for yb in got)
    np.testing.assert_array_equal(np.concatenate(got), b.indices[:40])
    assert "4 batches" in repr(d)


def test_images_and_any_targets():
    X = np.random.default_rng(0).integers(0, 256, size=(30, 1, 28, 28), dtype=np.uint8)
    Y = np.eye(10, dtype=np.float32)[np.arange(30) % 10]        # one-hot rows
    shapes = [(xb.shape, xb.dtype, yb.shape) for xb, yb in data.batches(X, Y, 8, seed=0)]
    assert shapes[0] == ((8, 1, 28, 28), np.uint8, (8, 10))
    assert shapes[-1] == ((6, 1, 28, 28), np.uint8, (6, 10))
    assert list(data.batches(np.zeros((0, 4)), np.zeros(0), 8)) == []
    assert len(data.batches([[1, 2], [3, 4], [5, 6]], [0, 1, 0], 2)) == 2   # lists too


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(y=np.arange(9)), ValueError, r"X and y must have the same number of rows, got 10 and 9"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(shuffle="yes"), TypeError, "shuffle must be True or False"),
    (dict(drop_last=1), TypeError, "drop_last"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=1.5), TypeError, "seed must be None, an int"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(X=np.float32(3)), ValueError, "X must be an array with one row per sample"),
])
def test_batches_argument_errors(kwargs, error, message):
    X, y = rows(10)
    args = dict(X=X, y=y, batch_size=4)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        data.batches(**args)


# ---------------------------------------------------------------------------
# stratified split
# ---------------------------------------------------------------------------

def round_half_up(n, f):
    return int((2 * n * Fraction(f) + 1) // 2)


def check_split(y, f, train, test, stratify=True):
    n = len(y)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert len(test) == round_half_up(n, f) and len(train) + len(test) == n
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)      # sorted, no repeats
    assert not np.intersect1d(train, test).size
    if stratify:
        for c in np.unique(y):
            n_c = np.sum(y == c)
            t_c = np.sum(y[test] == c)
            assert abs(t_c - n_c * f) < 1, (c, n_c, t_c, f)             # within one row


def test_stratified_split_keeps_proportions():
    y = np.repeat(np.arange(7), [5, 10, 13, 200, 1, 3, 50])
    np.random.default_rng(0).shuffle(y)
    for f in (0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 0.9):
        train, test = data.split_indices(y, f, seed=0)
        check_split(y, f, train, test)


def test_stratified_split_on_many_random_label_sets():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(1, 30))
        counts = rng.integers(1, 40, size=k)
        y = rng.permutation(np.repeat(rng.permutation(100)[:k], counts))
        f = float(rng.uniform(0.02, 0.98))
        n_test = round_half_up(len(y), f)
        if n_test in (0, len(y)):
            continue
        train, test = data.split_indices(y, f, seed=int(rng.integers(1000)))
        check_split(y, f, train, test)


def test_split_reproducible_and_random():
    y = np.arange(1000) % 4
    a = data.split_indices(y, 0.2, seed=11)
    b = data.split_indices(y, 0.2, seed=11)
    c = data.split_indices(y, 0.2, seed=12)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[1], np.arange(800, 1000))       # not simply the tail
    nn.seed(4)
    d = data.split_indices(y, 0.2)
    nn.seed(4)
    np.testing.assert_array_equal(data.split_indices(y, 0.2)[1], d[1])


def test_train_test_split_pairs_rows_and_labels():
    X, y_rows = rows(300)
    y = np.array(["cat", "dog", "bird"])[np.arange(300) % 3]    # any sortable labels
    (X_train, y_train), (X_test, y_test) = data.train_test_split(X, y, 0.25, seed=0)
    assert X_test.shape == (75, 3) and y_test.shape == (75,)
    train, test = data.split_indices(y, 0.25, seed=0)
    np.testing.assert_array_equal(X_test[:, 0], test)
    np.testing.assert_array_equal(y_test, y[test])
    np.testing.assert_array_equal(X_train[:, 0], train)
    assert {c: int(np.sum(y_test == c)) for c in ("cat", "dog", "bird")} == \
        {"cat": 25, "dog": 25, "bird": 25}


def test_unstratified_split():
    y = np.zeros((50, 2))                           # targets of any shape
    train, test = data.split_indices(y, 0.3, seed=0, stratify=False)
    check_split(y, 0.3, train, test, stratify=False)


@pytest.mark.parametrize("y,f,message", [
    (np.arange(10) % 2, 0.0, "test_fraction"),
    (np.arange(10) % 2, 1.0, "test_fraction"),
    (np.arange(10) % 2, 1.5, "test_fraction"),
    (np.arange(10) % 2, float("nan"), "test_fraction"),
    (np.arange(10) % 2, 0.01, "empty test part of 10 samples"),
    (np.arange(10) % 2, 0.99, "empty training part"),
    (np.eye(3)[np.arange(10) % 3], 0.3, r"one class label per sample.*argmax"),
])
def test_split_errors(y, f, message):
    with pytest.raises(ValueError, match=message):
        data.split_indices(y, f, seed=0)


def test_train_test_split_length_mismatch():
    with pytest.raises(ValueError, match="X and y must have the same number of rows"):
        data.train_test_split(np.zeros((10, 2)), np.zeros(9), 0.2)


# ---------------------------------------------------------------------------
# uint8 pixels, a batch at a time
# ---------------------------------------------------------------------------

def images(n=200, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, c, 8, 8), dtype=np.uint8)
    X[:, 0] //= 2                                   # channels with different statistics
    return X


def reference_stats(X4):
    per_channel = (X4.astype(np.float64) / 255).transpose(1, 0, 2, 3).reshape(X4.shape[1], -1)
    return per_channel.mean(axis=1), per_channel.std(axis=1)


def test_to_float():
    X = images()
    f = data.to_float(X)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, X.astype(np.float32) / np.float32(255))
    assert data.to_float(X, np.float64).dtype == np.float64
    assert data.to_float(f) is f                    # floats as they are
    with pytest.raises(TypeError, match="uint8 pixels"):
        data.to_float(X.astype(np.int16))
    with pytest.raises(TypeError, match="dtype"):
        data.to_float(X, np.int32)


def test_channel_stats_match_float64_reference():
    X = images()
    want_mean, want_std = reference_stats(X)
    for chunk_size in (None, 1, 7, 1000):
        mean, std = data.channel_stats(X, chunk_size=chunk_size)
        assert mean.shape == std.shape == (3,)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-13)
        np.testing.assert_allclose(std, want_std, rtol=1e-12)
    # flat rows in the loaders' order: C blocks of H*W
    mean, std = data.channel_stats(X.reshape(len(X), -1), channels=3, chunk_size=9)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-13)
    # floats in [0, 1]: the same figures (to float32 rounding)
    mean, std = data.channel_stats(data.to_float(X), chunk_size=13)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(std, want_std, rtol=1e-6)
    # one channel: everything together
    mean, std = data.channel_stats(X[:, :1].reshape(len(X), -1))
    np.testing.assert_allclose(mean, want_mean[:1], rtol=1e-13)


@pytest.mark.parametrize("shape", [(20000, 1, 28, 28), (20000, 784)])
def test_channel_stats_make_no_float_copy(shape):
    X = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)   # 15.7 MB
    for x in (X, data.to_float(X[:5000])):
        tracemalloc.start()
        try:
            data.channel_stats(x)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # chunks of 2**18 values: a few MB, whatever the size of X (a float32 copy of
        # the uint8 X would be 63 MB, a float64 one of the float X 31 MB)
        assert peak < 8 << 20, (x.dtype, peak)


def test_channel_stats_of_some_rows_equal_those_of_the_rows_copied_out():
    X = np.random.default_rng(3).integers(0, 256, size=(300, 3, 4, 4), dtype=np.uint8)
    rows = np.random.default_rng(4).permutation(300)[:170]
    for x in (X, data.to_float(X)):
        mean, std = data.channel_stats(x, rows=rows, chunk_size=7)
        want_mean, want_std = data.channel_stats(x[rows])
        np.testing.assert_allclose(mean, want_mean, rtol=1e-13)
        np.testing.assert_allclose(std, want_std, rtol=1e-13)
        assert not np.allclose(mean, data.channel_stats(x)[0], rtol=1e-9, atol=0)
    norm = data.Normalize.from_data(X, rows=rows)
    np.testing.assert_array_equal(norm.mean, data.channel_stats(X, rows=rows)[0])
    with pytest.raises(ValueError, match=r"rows holds 300, outside \[0, 300\)"):
        data.channel_stats(X, rows=[0, 300])
    with pytest.raises(ValueError, match="rows holds -1"):
        data.channel_stats(X, rows=[-1])
    with pytest.raises(TypeError, match="rows must be a 1-D array of integer row indices"):
        data.channel_stats(X, rows=[0.5])
    with pytest.raises(ValueError, match="rows empty"):
        data.channel_stats(X, rows=[])


def test_channel_stats_errors():
    with pytest.raises(ValueError, match="empty"):
        data.channel_stats(np.zeros((0, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="cannot be split into 3 channels"):
        data.channel_stats(np.zeros((5, 10), np.uint8), channels=3)
    with pytest.raises(ValueError, match="has 1 channels"):
        data.channel_stats(np.zeros((5, 1, 4, 4), np.uint8), channels=3)
    with pytest.raises(ValueError, match="NaN"):
        data.channel_stats(np.full((5, 4), np.nan))
    with pytest.raises(TypeError, match="uint8 pixels"):
        data.channel_stats(np.zeros((5, 4), np.int64))


def test_normalize_per_channel():
    X = images()
    mean, std = [0.2, 0.5, 0.4], [0.1, 0.3, 0.25]
    norm = data.Normalize(mean, std)
    before = X.copy()
    out = norm(X[:10])
    np.testing.assert_array_equal(X, before)                    # the input untouched
    want = X[:10].astype(np.float32) / np.float32(255)
    want -= np.float32(mean)[None, :, None, None]
    want /= np.float32(std)[None, :, None, None]
    assert out.dtype == np.float32 and out.shape == (10, 3, 8, 8)
    np.testing.assert_array_equal(out, want)
    # flat rows: the same numbers
    flat = norm(X[:10].reshape(10, -1))
    np.testing.assert_array_equal(flat, want.reshape(10, -1))
    # floats in [0, 1] are not divided again
    np.testing.assert_allclose(norm(data.to_float(X[:10])), want, rtol=1e-6)
    # Normalize() is to_float
    np.testing.assert_array_equal(data.Normalize()(X), data.to_float(X))
    assert data.Normalize(0.1307, 0.3081, dtype=np.float64)(X[:2]).dtype == np.float64
    assert "0.1307" in repr(data.Normalize(0.1307, 0.3081))


def test_normalize_from_data_standardises():
    X = images()
    X[:, 2] = 17                                    # a channel that never varies
    norm = data.Normalize.from_data(X)
    out = norm(X)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3))[:2], 1, rtol=1e-5)
    assert norm.std[2] == 1.0 and np.all(out[:, 2] == 0)


@pytest.mark.parametrize("args,call,message", [
    (dict(std=0.0), None, "Invalid std"),
    (dict(std=[0.2, -1.0]), None, "Invalid std"),
    (dict(mean=float("inf")), None, "Invalid mean"),
    (dict(mean=[0.1, 0.2], std=[0.3, 0.3, 0.3]), None, "one value per channel"),
    (dict(mean=[[0.1]]), None, "1-D"),
    (dict(mean=[0.1, 0.2, 0.3], std=1.0), np.zeros((2, 1, 4, 4), np.uint8), "has 1 channels"),
    (dict(mean=[0.1, 0.2, 0.3], std=1.0), np.zeros((2, 10), np.uint8), "3 channels"),
])
def test_normalize_errors(args, call, message):
    with pytest.raises(ValueError, match=message):
        data.Normalize(**args)(call if call is not None else np.zeros((1, 3), np.uint8))
