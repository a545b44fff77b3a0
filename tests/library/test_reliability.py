"""What broke when the library was attacked and used as a newcomer would (the Python side):
each reproducer, and its relatives.

* crafted model and checkpoint files that declare more than they hold: refused from the zip
  directory and the .npy headers, before anything is allocated or decompressed;
* images refused by their header before decoding;
* optimizer arguments, and weights that an update left NaN/inf after an epoch's last step;
* fit's seed and progress label; file names at the length limit; duplicate zip members;
* the learning-rate sweep's verdicts against its own numbers.
(The command line's cases are in tests/cli/test_reliability_cli.py.)
"""
import json
import os
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _png, checkpoint
from conftest import png_with_header, resident
from nnscratch.explain import _verdicts


def _arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _small_model_file(tmp_path, name="m.npz"):
    nn.seed(0)
    path = tmp_path / name
    nn.Sequential(nn.Linear(4, 3)).save(path)
    return path


def _with_architecture(path, edit):
    arrays = _arrays(path)
    document = json.loads(arrays["__architecture__"].tobytes())
    edit(document)
    arrays["__architecture__"] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    _write(path, arrays)
    return path


def _first_layer(document):
    return document["config"]["layers"][0]["__module__"]["config"]


def _peak_while(fn):
    """(result or exception, peak bytes traced) of fn()."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------
# model files

@pytest.mark.parametrize("size", [20000, 10 ** 9])
def test_a_small_file_declaring_a_huge_layer_is_refused_before_building_it(tmp_path, size):
    path = _with_architecture(_small_model_file(tmp_path), lambda d: _first_layer(d).update(
        in_features=size, out_features=size))
    assert os.path.getsize(path) < 4096
    start = time.perf_counter()
    result, peak = _peak_while(lambda: nn.load(path))
    assert isinstance(result, ValueError), result
    assert "architecture needs" in str(result)
    assert peak < 1 << 20 and time.perf_counter() - start < 2.0, (peak,)


def test_a_highly_compressed_unknown_member_is_refused_without_decompressing(tmp_path):
    path = _small_model_file(tmp_path)
    bomb = np.zeros(256 << 20, np.uint8)               # 256 MiB of zeros: ~250 KB deflated
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, bomb)
    del bomb
    assert os.path.getsize(path) < 2 << 20
    start = time.perf_counter()
    result, peak = _peak_while(lambda: nn.load(path))
    assert isinstance(result, ValueError), result
    assert "junk" in str(result)
    assert peak < 8 << 20 and time.perf_counter() - start < 2.0, peak


def test_a_member_whose_size_disagrees_with_its_header_is_refused(tmp_path):
    path = _small_model_file(tmp_path)
    arrays = _arrays(path)
    with zipfile.ZipFile(path, "w") as z:                # the header claims 10**6 floats
        for key, value in arrays.items():
            data = np.lib.format.header_data_from_array_1_0(value)
            if key == "0.weight":
                data["shape"] = (1000, 1000)
            with z.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, data)
                f.write(value.tobytes())
    with pytest.raises(ValueError, match="declares .* bytes for shape \\(1000, 1000\\)"):
        nn.load(path)


def test_duplicate_members_are_refused(tmp_path):
    path = _small_model_file(tmp_path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("0.bias.npy", z.read("0.bias.npy"))
    with pytest.raises(ValueError, match="'0.bias.npy' is there twice"):
        nn.load(path)


def test_a_checkpoint_with_huge_or_foreign_optimizer_entries_is_refused(tmp_path):
    nn.seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(np.ones((2, 4), np.float32))
    model.backward(np.ones((2, 3), np.float32))
    opt.step()
    path = tmp_path / "c.npz"
    checkpoint.save_checkpoint(path, model, opt, meta={"epoch": 1})
    arrays = _arrays(path)
    arrays["checkpoint/optim/0/velocity"] = np.zeros((400, 3), np.float32)
    _write(path, arrays)
    with pytest.raises(ValueError, match="unexpected checkpoint entry .*shape \\(400, 3\\)"):
        checkpoint.load_checkpoint(path)
    arrays["checkpoint/optim/0/velocity"] = np.zeros((4, 3), np.float32)
    arrays["checkpoint/other"] = np.zeros(3)
    _write(path, arrays)
    with pytest.raises(ValueError, match="unexpected checkpoint entry 'checkpoint/other'"):
        checkpoint.load_checkpoint(path)


def test_a_file_name_at_the_length_limit_can_be_saved(tmp_path):
    name = "m" * 250 + ".npz"                            # 254 characters: legal
    path = tmp_path / name
    nn.Sequential(nn.Linear(2, 2)).save(path)
    assert sorted(os.listdir(tmp_path)) == [name]
    assert isinstance(nn.load(path), nn.Sequential)


def test_a_png_or_another_file_is_named_for_what_it_is(tmp_path):
    image = tmp_path / "x.png"
    _png.write_png(image, np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="it is a PNG image"):
        nn.load(image)
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        nn.load(tmp_path / "t.txt")


# --------------------------------------------------------------------------------------
# images

@pytest.mark.parametrize("size", [30000, 6000])
def test_a_huge_png_is_refused_by_its_header(tmp_path, size):
    pytest.importorskip("PIL")
    from nnscratch import images

    path = png_with_header(tmp_path / "big.png", size, size)
    # Pillow's first use imports its format plugins (~1 MB of module objects): done before
    # the measurement, which is of the refusal only
    images.read_image(png_with_header(tmp_path / "small.png", 28, 28))
    start = time.perf_counter()
    result, peak = _peak_while(lambda: images.read_image(path))
    assert isinstance(result, images.ImageTooLargeError), result
    assert "refused before decoding" in str(result) and f"{size * size:,} pixels" in str(result)
    assert peak < 1 << 20 and time.perf_counter() - start < 1.0


def test_png_data_is_decompressed_no_further_than_the_header_says(tmp_path):
    # a 10x10 header with 64 MiB of image data: the 10x10 image, not inflated in full
    pytest.importorskip("PIL")
    from nnscratch import images

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    path = tmp_path / "lying.png"
    path.write_bytes(_png.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 0, 0,
                                                                 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(64 << 20), 9)) + chunk(b"IEND", b""))
    result, peak = _peak_while(lambda: images.read_image(path))
    assert isinstance(result, tuple) and result[0].shape == (10, 10), result
    assert peak < 8 << 20


# --------------------------------------------------------------------------------------
# optimizers and fit

@pytest.mark.parametrize("make, message", [
    (lambda p: nn.Adam(p, eps=0), "epsilon"),
    (lambda p: nn.Adam(p, eps=-1e-8), "epsilon"),
    (lambda p: nn.AdamW(p, eps=0.0), "epsilon"),
    (lambda p: nn.SGD(p, lr=10 ** 400), "learning rate"),
    (lambda p: nn.SGD(p, lr=float("nan")), "learning rate"),
    (lambda p: nn.Adam(p, betas=(0.9, 1.0)), "beta"),
    (lambda p: nn.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: nn.StepLR(nn.SGD(p, lr=0.1), step_size=0), "step_size"),
    (lambda p: nn.StepLR(nn.SGD(p, lr=0.1), step_size=1, gamma=0), "gamma"),
    (lambda p: nn.CosineAnnealingLR(nn.SGD(p, lr=0.1), T_max=5, eta_min=-1), "eta_min"),
])
def test_optimizer_and_schedule_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make(nn.Linear(2, 2).parameters())


@pytest.mark.parametrize("path", ["fast", "textbook"])
def test_weights_made_infinite_by_the_last_step_stop_fit(path):
    # one step of one epoch: its gradient is finite, the update overflows the weights, and
    # there is no next batch whose loss would show it
    from conftest import textbook
    import contextlib

    nn.seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    X = np.full((8, 4), 100.0, np.float32)
    y = np.full((8, 2), 1e6, np.float32)        # a gradient of about 1e7: finite
    with contextlib.nullcontext() if path == "fast" else textbook():
        with pytest.raises(FloatingPointError, match="weights of layer 0 \\(Linear\\).*"
                                                     "epoch 1/1, batch 1/1"):
            model.fit(X, y, loss="mse", optimizer=nn.SGD(model.parameters(), lr=1e33),
                      epochs=1, batch_size=8, progress=False)


def test_fit_names_a_bad_seed_and_a_bad_progress_label():
    model = nn.Sequential(nn.Linear(2, 2))
    X, y = np.ones((4, 2), np.float32), np.zeros(4, np.int64)
    kwargs = dict(loss="cross_entropy", optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        model.fit(X, y, seed=-1, progress=False, **kwargs)
    with pytest.raises(TypeError, match="seed must be an int"):
        model.fit(X, y, seed=1.5, progress=False, **kwargs)
    for label in ("{epoch.foo}", "{epoch[0]}", "{nope}", "{"):
        with pytest.raises(ValueError, match="progress must be True, False or a label"):
            model.fit(X, y, progress=label, **kwargs)


# --------------------------------------------------------------------------------------
# the learning-rate sweep

def test_lr_find_verdicts_follow_its_own_numbers():
    # the sweep: 1e-05 ended at 1.2374, three times the best 0.3854
    rows = [(1e-5, 2.3, 1.2374), (1e-4, 2.3, 0.62), (1e-3, 2.3, 0.3854), (1e-2, 2.3, 0.45),
            (1e-1, 2.3, 1.9), (1.0, 2.3, 3.1), (10.0, 2.3, float("inf"))]
    verdicts = _verdicts(rows)
    assert verdicts == ["too low = slow", "good", "best", "good", "too high = unstable",
                        "too high = unstable (the loss went up)",
                        "too high = unstable (diverged)"]
    best_drop = 2.3 - 0.3854
    for (lr, start, final), verdict in zip(rows, verdicts):
        if verdict == "good":
            assert start - final >= 0.8 * best_drop


@nn.register
class _Wide(nn.Module):
    """A layer of one's own: its sizes are only known by constructing it."""

    def __init__(self, width=4):
        super().__init__()
        self.width = width
        self.inner = nn.Linear(width, width)

    def get_config(self):
        return {"width": self.width}

    def forward(self, x):
        return self.inner(x)

    def backward(self, grad_out):
        return self.inner.backward(grad_out)


@pytest.mark.parametrize("width", [6000, 10 ** 6])
def test_a_layer_of_ones_own_declaring_more_than_the_file_holds_is_refused(tmp_path, width):
    """The built-in layers are checked against the file's sizes before they are built; a
    layer of one's own is built, and refused as soon as it asks for more memory than the
    file's weights account for (6000: 288 MB of float64 draws; 10**6: 8 TB)."""
    nn.seed(0)
    path = tmp_path / "m.npz"
    nn.Sequential(_Wide(4)).save(path)
    _with_architecture(path, lambda d: _first_layer(d).update(width=width))
    assert os.path.getsize(path) < 4096
    start_bytes, peak = resident()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="_Wide.*needs more memory than the weights"):
        nn.load(path)
    assert peak() - start_bytes < 16 << 20 and time.perf_counter() - start < 2.0
    nn.Sequential(_Wide(4)).save(path)             # an honest file of the same layer loads
    assert isinstance(nn.load(path)[0], _Wide)
