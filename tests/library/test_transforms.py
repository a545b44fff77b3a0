"""nnscratch.transforms (RandomCrop, RandomHorizontalFlip, Compose) and fit(transform=...):
values against a loop over the images, draws, errors; in fit: training batches only,
reproducible from the seed, the shuffling untouched, the prefetch thread, resuming."""
import contextlib
import threading
import time

import numpy as np
import pytest

import nnscratch as nn
from conftest import textbook
from nnscratch import transforms as T
from nnscratch.checkpoint import load_checkpoint, save_checkpoint, set_optimizer_state

THREAD = "nnscratch-fit-transform"


def _images(shape, dtype=np.float32, seed=0):
    """Distinct values everywhere (so that every crop and flip is told apart)."""
    x = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) + 1
    return x.astype(dtype)


def _crop_loop(x, size, padding, tops, lefts):
    """The reference: pad each image, slice its window, one image at a time."""
    h, w = size
    out = []
    for image, top, left in zip(x, tops, lefts):
        widths = [(0, 0)] * (image.ndim - 2) + [(padding, padding)] * 2
        padded = np.pad(image, widths)
        out.append(padded[..., top:top + h, left:left + w])
    return np.stack(out) if out else np.zeros((0,) + x.shape[1:-2] + (h, w), x.dtype)


# --------------------------------------------------------------------------------------
# The transforms
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, size, padding, dtype", [
    ((40, 3, 9, 7), (5, 6), 2, np.float64),
    ((40, 1, 28, 28), 28, 2, np.float32),
    ((30, 8, 6), (5, 4), 0, np.uint8),         # (N, H, W), no padding: a crop inside
    ((10, 2, 3, 5, 5), (6, 7), 1, np.float32),  # more axes between N and (H, W)
    ((0, 1, 4, 4), 3, 1, np.float32),
])
def test_random_crop_equals_a_loop_over_the_images(shape, size, padding, dtype):
    x = _images(shape, dtype)
    before = x.copy()
    out = T.RandomCrop(size, padding=padding)(x, np.random.default_rng(7))
    # the documented draws: tops, then lefts, one per image
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(7)
    tops = rng.integers(0, shape[-2] + 2 * padding - h + 1, size=shape[0])
    lefts = rng.integers(0, shape[-1] + 2 * padding - w + 1, size=shape[0])
    expected = _crop_loop(x, (h, w), padding, tops, lefts)
    assert out.shape == shape[:-2] + (h, w) and out.dtype == x.dtype
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, before)          # the input is never written to


def test_random_crop_pads_with_zeros_and_chooses_per_image():
    x = _images((500, 1, 5, 5))
    # the whole padded image: only one window fits
    whole = T.RandomCrop(9, padding=2)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(whole, np.pad(x, [(0, 0), (0, 0), (2, 2), (2, 2)]))
    out = T.RandomCrop(5, padding=2)(x, np.random.default_rng(0))
    # each crop is one of the 25 windows of its zero-padded image (x's values are distinct
    # and non-zero: the window is found), and every window occurs among the 500 images:
    # an offset per image, not per batch
    offsets = []
    for image, crop in zip(x, out):
        padded = np.pad(image[0], 2)
        found = [(top, left) for top in range(5) for left in range(5)
                 if np.array_equal(padded[top:top + 5, left:left + 5], crop[0])]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) == 25
    assert np.count_nonzero(out == 0) == sum(25 - (5 - abs(t - 2)) * (5 - abs(l - 2))
                                             for t, l in offsets)


def test_flip_probability():
    x = _images((4000, 1, 3, 4))
    mirrored = x[..., ::-1]
    np.testing.assert_array_equal(T.RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1)(x, np.random.default_rng(0)),
                                  mirrored)
    out = T.RandomHorizontalFlip()(x, np.random.default_rng(3))
    flipped = np.all(out == mirrored, axis=(1, 2, 3))
    assert np.all(flipped | np.all(out == x, axis=(1, 2, 3)))   # each image: as is or mirrored
    assert 0.46 < flipped.mean() < 0.54                         # about half (sd 0.008)
    # the documented draw: rng.random(N) < p
    np.testing.assert_array_equal(flipped, np.random.default_rng(3).random(4000) < 0.5)
    rare = np.all(T.RandomHorizontalFlip(0.1)(x, np.random.default_rng(4)) == mirrored,
                  axis=(1, 2, 3))
    assert 0.08 < rare.mean() < 0.12


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64])
@pytest.mark.parametrize("shape", [(6, 5, 5), (6, 2, 5, 5)])
def test_shapes_and_dtypes_are_kept(dtype, shape):
    x = _images(shape, dtype)
    before = x.copy()
    for t in (T.RandomCrop(5, padding=1), T.RandomHorizontalFlip(), T.Compose([]),
              T.Compose([T.RandomCrop(5, padding=3), T.RandomHorizontalFlip(1.0)])):
        out = t(x, np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == x.dtype, t
        assert not np.shares_memory(out, x), t                  # a new array
        np.testing.assert_array_equal(x, before)


def test_flat_rows_with_image_shape():
    x = _images((12, 2, 6, 6))
    rows = x.reshape(12, -1)
    for make in (lambda s: T.RandomCrop(4, padding=1, image_shape=s),
                 lambda s: T.RandomHorizontalFlip(image_shape=s)):
        as_images = make(None)(x, np.random.default_rng(5))
        as_rows = make((2, 6, 6))(rows, np.random.default_rng(5))
        assert as_rows.shape == (12, as_images[0].size)
        np.testing.assert_array_equal(as_rows, as_images.reshape(12, -1))
    t = T.Compose([T.RandomCrop(28, padding=2, image_shape=(28, 28)),
                   T.RandomHorizontalFlip(image_shape=(28, 28))])
    assert t(np.zeros((3, 784), np.float32), np.random.default_rng(0)).shape == (3, 784)
    assert "image_shape=(28, 28)" in repr(t)


def test_compose_applies_in_order_with_one_generator():
    x = _images((50, 1, 6, 6))
    crop, flip = T.RandomCrop(4, padding=1), T.RandomHorizontalFlip()
    r = np.random.default_rng(9)
    expected = flip(crop(x, r), r)
    np.testing.assert_array_equal(T.Compose([crop, flip])(x, np.random.default_rng(9)),
                                  expected)
    calls = []

    def add_one(x, rng):
        calls.append("add_one")
        return x + 1

    def double(x, rng):
        calls.append("double")
        return x * 2

    out = T.Compose([add_one, double])(np.zeros((2, 1, 2, 2)), np.random.default_rng(0))
    assert calls == ["add_one", "double"] and np.all(out == 2)   # (0 + 1) * 2, not 0 * 2 + 1


def test_the_library_generator_by_default():
    x = _images((20, 1, 5, 5))
    nn.seed(4)
    a = T.RandomCrop(5, padding=2)(x)
    nn.seed(4)
    b = T.RandomCrop(5, padding=2)(x, None)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, exc, message", [
    (lambda: T.RandomCrop(0), ValueError, "size must be an int >= 1 or a pair"),
    (lambda: T.RandomCrop((3, 4, 5)), ValueError, "size must be"),
    (lambda: T.RandomCrop(2.5), ValueError, "size must be"),
    (lambda: T.RandomCrop(3, padding=-1), ValueError, "padding must be >= 0"),
    (lambda: T.RandomCrop(3, padding=1.5), TypeError, "padding must be an int"),
    (lambda: T.RandomCrop(3, image_shape=(784,)), ValueError, "image_shape must be"),
    (lambda: T.RandomHorizontalFlip(1.5), ValueError, "Invalid p: 1.5"),
    (lambda: T.RandomHorizontalFlip(-0.1), ValueError, "Invalid p"),
    (lambda: T.RandomHorizontalFlip(float("nan")), ValueError, "Invalid p"),
    (lambda: T.RandomHorizontalFlip("0.5"), ValueError, "Invalid p"),
    (lambda: T.Compose([T.RandomHorizontalFlip(), 3]), TypeError, r"transforms\[1\]"),
    (lambda: T.Compose(T.RandomHorizontalFlip()), TypeError, "a list of transforms"),
])
def test_bad_arguments_name_themselves(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_bad_input_at_call_time():
    x = np.zeros((4, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"size \(8, 8\) is larger than the padded image "
                                         r"\(7, 7\)"):
        T.RandomCrop(8, padding=1)(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"give image_shape=\(28, 28\)"):
        T.RandomHorizontalFlip()(np.zeros((4, 784)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"takes rows \(N, 784\), got x of shape \(4, 1, 5, 5\)"):
        T.RandomCrop(28, image_shape=(28, 28))(x, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        T.RandomCrop(5)(x, 0)


def test_cost_of_a_batch_is_small():
    """A batch of 128 28 x 28 images, crop and flip: well under a millisecond each (the
    ResNet-20 step they go with takes ~200 ms); a loop per image would not be 30x slower
    than this bound, but a per-pixel Python loop would."""
    t = T.Compose([T.RandomCrop(28, padding=2), T.RandomHorizontalFlip()])
    x, rng = _images((128, 1, 28, 28)), np.random.default_rng(0)
    times = []
    for _ in range(30):
        tick = time.perf_counter()
        t(x, rng)
        times.append(time.perf_counter() - tick)
    assert np.median(times) < 0.01


# --------------------------------------------------------------------------------------
# fit(transform=...)
# --------------------------------------------------------------------------------------

def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 1, 6, 6)).astype(np.float32)
    y = (X[:, 0, :, :3].sum(axis=(1, 2)) > X[:, 0, :, 3:].sum(axis=(1, 2))).astype(np.int64)
    return X, y


def _cnn(seed=0, dropout=True):
    nn.seed(seed)
    layers = [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten()]
    layers += [nn.Dropout(0.2)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(108, 2))


def _fit(model, X, y, optimizer=None, **kwargs):
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("batch_size", 20)
    kwargs.setdefault("progress", False)
    optimizer = optimizer or nn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, **kwargs)


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD)]


AUGMENT = T.Compose([T.RandomCrop(6, padding=1), T.RandomHorizontalFlip()])


class Recorder:
    """A transform that keeps what it is given (and changes nothing)."""

    def __init__(self):
        self.batches, self.threads = [], set()

    def __call__(self, x, rng):
        self.batches.append(x.copy())
        self.threads.add(threading.get_ident())
        return x


@pytest.mark.parametrize("path", ["fast", "textbook"])
@pytest.mark.parametrize("seed", [3, None])
def test_a_transform_that_changes_nothing_trains_as_no_transform(path, seed):
    """The batches, their order, the shuffling and the library generator (dropout) are
    those of a fit without transform, bit for bit."""
    X, y = _data()
    with contextlib.nullcontext() if path == "fast" else textbook():
        results = []
        for transform in (None, Recorder()):
            model = _cnn()
            history = _fit(model, X, y, seed=seed, transform=transform, epochs=3,
                           validation_split=0.25)
            results.append((_weights(model), history.history, nn._random.get_state()))
    (w0, h0, r0), (w1, h1, r1) = results
    assert _same(w0, w1) and h0 == h1 and r0 == r1


def test_training_batches_only():
    X, y = _data(n=90)
    X_val, y_val = _data(n=30, seed=1)
    record = Recorder()
    model = _cnn()
    _fit(model, X, y, seed=0, transform=record, epochs=2, batch_size=16,
         validation_data=(X_val, y_val))
    # every training row once per epoch, in batches of 16 (the last one smaller), in
    # the model's dtype; never a validation row
    assert [len(b) for b in record.batches] == [16] * 5 + [10] + [16] * 5 + [10]
    assert all(b.dtype == np.float32 and b.shape[1:] == (1, 6, 6) for b in record.batches)
    train_rows = {row.tobytes(): i for i, row in enumerate(X)}
    for epoch in range(2):
        seen = [train_rows[row.tobytes()] for b in record.batches[6 * epoch:6 * epoch + 6]
                for row in b]
        assert sorted(seen) == list(range(90))
    assert record.threads and threading.get_ident() not in record.threads   # a thread's
    n = len(record.batches)
    model.evaluate(X_val, y_val)
    model.predict(X)
    model.predict_proba(X_val)
    assert len(record.batches) == n
    # validation_split: the held-out rows never reach the transform
    record = Recorder()
    _fit(_cnn(), X, y, seed=0, transform=record, epochs=1, validation_split=0.2)
    seen = {row.tobytes() for b in record.batches for row in b}
    kept, _ = nn.training.validation_split_indices(y, 0.2)
    assert len(kept) == 72 and seen == {row.tobytes() for row in X[kept]}


def test_the_transform_gets_its_own_copy_of_the_batch():
    X, y = _data()
    original = X.copy()

    def scribble(x, rng):
        x[...] = 0          # into the batch it was given
        return x

    for shuffle in (False, True):
        _fit(_cnn(), X, y, shuffle=shuffle, transform=scribble, epochs=1)
        np.testing.assert_array_equal(X, original)


@pytest.mark.parametrize("path", ["fast", "textbook"])
def test_reproducible_from_the_seed(path):
    X, y = _data()
    with contextlib.nullcontext() if path == "fast" else textbook():
        runs = {}
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            model = _cnn()
            _fit(model, X, y, seed=seed, transform=AUGMENT, epochs=2)
            runs[name] = _weights(model)
        plain = _cnn()
        _fit(plain, X, y, seed=0, epochs=2)
    assert _same(runs["a"], runs["b"])
    assert not _same(runs["a"], runs["c"])
    assert not _same(runs["a"], _weights(plain))          # the transform did something
    # seed=None: reproducible from nnscratch.seed
    again = []
    for _ in range(2):
        model = _cnn()
        _fit(model, X, y, transform=AUGMENT)
        again.append(_weights(model))
    assert _same(*again)


def test_each_epoch_draws_anew():
    X, y = _data(n=20)
    record = []

    def crop(x, rng):
        out = T.RandomCrop(6, padding=2)(x, rng)
        record.append(out)
        return out

    _fit(_cnn(), X, y, seed=0, shuffle=False, transform=crop, epochs=2, batch_size=20)
    assert len(record) == 2 and not np.array_equal(record[0], record[1])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """As `nnscratch train` runs: one fit per epoch, seed = seed * 1000 + epoch, a
    checkpoint after each; stopping after epoch 2 and resuming from the checkpoint gives the
    uninterrupted run's weights."""
    X, y = _data()

    def epochs(model, optimizer, start, stop):
        for epoch in range(start, stop):
            _fit(model, X, y, optimizer, epochs=epoch + 1, initial_epoch=epoch,
                 seed=5 * 1000 + epoch, transform=AUGMENT)

    model = _cnn(dropout=False)
    optimizer = nn.Adam(model.parameters(), lr=0.01)
    epochs(model, optimizer, 0, 4)
    uninterrupted = _weights(model)

    model = _cnn(dropout=False)
    optimizer = nn.Adam(model.parameters(), lr=0.01)
    epochs(model, optimizer, 0, 2)
    save_checkpoint(tmp_path / "run.npz", model, optimizer, meta={"epoch": 2})
    del model, optimizer
    model, state, meta = load_checkpoint(tmp_path / "run.npz")
    optimizer = nn.Adam(model.parameters(), lr=0.01)
    set_optimizer_state(optimizer, state)
    epochs(model, optimizer, meta["epoch"], 4)
    assert _same(_weights(model), uninterrupted)


def test_initial_epoch_gets_that_epochs_draws():
    """fit's transform generator is a function of (seed, epoch): epochs 0-1 then a fit from
    initial_epoch=2 equal epochs 0-3 in one fit (without shuffling, whose generator runs on
    from the start of each fit)."""
    X, y = _data()
    model = _cnn(dropout=False)
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    _fit(model, X, y, optimizer, epochs=4, seed=2, shuffle=False, transform=AUGMENT)
    whole = _weights(model)
    model = _cnn(dropout=False)
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    _fit(model, X, y, optimizer, epochs=2, seed=2, shuffle=False, transform=AUGMENT)
    _fit(model, X, y, optimizer, epochs=4, initial_epoch=2, seed=2, shuffle=False,
         transform=AUGMENT)
    assert _same(_weights(model), whole)


def test_the_next_batch_is_prepared_while_a_step_runs():
    """While on_batch_end of batch b runs, the transform of batch b + 1 is called (in the
    thread) -- and not that of b + 2: one batch ahead."""
    X, y = _data(n=100)
    called = []
    events = [threading.Event() for _ in range(5)]

    def transform(x, rng):
        called.append(len(called))
        events[len(called) - 1].set()
        return x

    class Check(nn.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch + 1 < 5:
                assert events[batch + 1].wait(timeout=10), "batch b + 1 not prepared"
                time.sleep(0.02)
                assert len(called) == batch + 2

    _fit(_cnn(), X, y, epochs=1, transform=transform, callbacks=[Check()])
    assert called == [0, 1, 2, 3, 4]


def test_no_thread_is_left_behind():
    X, y = _data()
    _fit(_cnn(), X, y, seed=0, transform=AUGMENT)
    assert _threads() == []

    calls = []

    def failing(x, rng):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the third batch is cursed")
        return x

    with pytest.raises(RuntimeError, match="the third batch is cursed") as info:
        _fit(_cnn(), X, y, transform=failing)
    assert _threads() == [] and len(calls) == 3
    if hasattr(info.value, "__notes__"):
        assert "epoch 1/2, batch 3/5" in info.value.__notes__[0]

    class Interrupt(nn.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(_cnn(), X, y, transform=AUGMENT, callbacks=[Interrupt()])
    assert _threads() == []

    class Stop(nn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    history = _fit(_cnn(), X, y, transform=AUGMENT, epochs=5, callbacks=[Stop()])
    assert history.epoch == [0] and _threads() == []

    with pytest.raises(FloatingPointError):        # the step fails, not the transform
        _fit(_cnn(), X, y, transform=lambda x, rng: x * np.float32(np.inf))
    assert _threads() == []


def test_bad_transforms_in_fit():
    X, y = _data()
    with pytest.raises(TypeError, match="transform must be callable as transform"):
        _fit(_cnn(), X, y, transform="crop")
    with pytest.raises(ValueError, match="the transform must return an array of the batch's "
                                         "20 samples"):
        _fit(_cnn(), X, y, transform=lambda x, rng: x[:5])
    with pytest.raises(ValueError, match=r"the transform returned samples of shape "
                                         r"\(1, 4, 4\), which the model does not accept"):
        _fit(_cnn(), X, y, transform=T.RandomCrop(4))
    assert _threads() == []
