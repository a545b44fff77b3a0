"""nnscratch.tensorboard (needs the tensorboard package): the event files, read back by
TensorBoard's own reader, hold History's numbers, the batch losses and learning rates, the
weight and gradient histograms and the first layer's filters; and a real TensorBoard on
127.0.0.1, opened in headless Chromium (Debian's package), shows the run's scalars."""
import html
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
import zlib

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import nnscratch as nn  # noqa: E402
from conftest import without_package  # noqa: E402
from nnscratch.callbacks import Callback  # noqa: E402
from nnscratch.tensorboard import (FILTER_PALETTE, TENSORBOARD_HINT, TensorBoard,  # noqa: E402
                                   filter_grid)

EPOCH_TAGS = ["epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy",
              "epoch/lr"]


def _data(n=300, d=784, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d), dtype=np.float32), rng.integers(0, classes, n)


def _mlp(d=784, hidden=16, classes=10):
    nn.seed(0)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class _Recorder(Callback):
    """What fit shows the callbacks: batch losses and sizes, and the lr of every step and
    at every epoch's start (listed before the schedules: the lr the step used)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.losses, self.sizes, self.lrs, self.epoch_lrs = [], [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_lrs.append(self.optimizer.lr)

    def on_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])
        self.sizes.append(logs["size"])
        self.lrs.append(self.optimizer.lr)


def _read(logdir):
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0,
                                                          "images": 0})
    events.Reload()
    return events


def _series(events, tag):
    """(steps, values) of a scalar tag."""
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def _f32(values):
    """As TensorBoard stores scalars: float32."""
    return [float(np.float32(v)) for v in values]


def _decode_png(data):
    """An 8-bit palette PNG (filter type 0 rows, as nnscratch writes) -> RGB array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8:pos + 8 + length]
        pos += 12 + length
    width, height = (int.from_bytes(chunks[b"IHDR"][i:i + 4], "big") for i in (0, 4))
    assert chunks[b"IHDR"][8:10] == bytes([8, 3])              # 8 bits, palette
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()
    palette = np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)
    return palette[rows[:, 1:]]


# --------------------------------------------------------------------------------------
# The event files, read back
# --------------------------------------------------------------------------------------

def test_event_files_hold_history_batch_losses_lrs_histograms_and_filters(tmp_path):
    X, y = _data()
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    epochs, batch_size = 3, 64                           # 5 batches an epoch, the last of 44
    steps_per_epoch = math.ceil(len(X) / batch_size)
    schedule = nn.OneCycleLR(optimizer, max_lr=0.01, epochs=epochs,
                             steps_per_epoch=steps_per_epoch)
    tb = TensorBoard(tmp_path / "run", update_freq=1, optimizer=optimizer)
    recorder = _Recorder(optimizer)
    history = model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=epochs,
                        batch_size=batch_size, validation_data=_data(100, seed=1),
                        progress=False, seed=0, callbacks=[tb, recorder, schedule])
    assert tb.path is None                               # closed by on_train_end
    files = os.listdir(tmp_path / "run")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")

    events = _read(tmp_path / "run")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        steps, values = _series(events, f"epoch/{name}")
        assert steps == history.epoch == [0, 1, 2]
        assert values == _f32(history.history[name]), name
    steps, values = _series(events, "epoch/lr")
    assert steps == [0, 1, 2] and values == _f32(recorder.epoch_lrs)
    total = epochs * steps_per_epoch
    steps, values = _series(events, "train/loss")
    assert steps == list(range(total)) and values == _f32(recorder.losses)
    steps, values = _series(events, "train/lr")
    assert steps == list(range(total)) and values == _f32(recorder.lrs)
    assert len(set(recorder.lrs)) > total // 2           # the schedule did move it

    names = [name for name, _ in model.named_parameters()]
    assert names == list(model.state_dict())             # tags are state_dict names
    tags = events.Tags()
    assert sorted(tags["histograms"]) == sorted([f"weights/{n}" for n in names]
                                                + [f"grads/{n}" for n in names])
    for name, p in model.named_parameters():
        for kind, array in (("weights", p.data), ("grads", p.grad)):
            histograms = events.Histograms(f"{kind}/{name}")
            assert [h.step for h in histograms] == [0, 1, 2]
            last = histograms[-1].histogram_value      # the end of training: now
            assert last.num == array.size and sum(last.bucket) == array.size
            assert last.min == float(array.min()) and last.max == float(array.max())
            assert math.isclose(last.sum, float(array.sum(dtype=np.float64)), rel_tol=1e-9,
                                abs_tol=1e-9)
            assert last.bucket_limit[-1] >= last.max and last.bucket_limit[0] <= last.min
    assert np.abs(model[0].weight.grad).max() > 0         # (not a run of dead ReLUs)

    assert tags["images"] == ["filters/0.weight"]
    images = events.Images("filters/0.weight")
    assert [i.step for i in images] == [0, 1, 2]
    rgb = _decode_png(images[-1].encoded_image_string)
    grid = filter_grid(model[0].weight.data)
    assert rgb.shape == (images[-1].height, images[-1].width, 3) == (4 * 29 + 1, 4 * 29 + 1, 3)
    assert (rgb == FILTER_PALETTE[grid]).all()
    # the first tile is unit 0's column as 28 x 28: red where its weight is > 0, blue < 0,
    # its largest |w| full colour
    column = model[0].weight.data[:, 0].reshape(28, 28)
    tile = rgb[1:29, 1:29].astype(int)
    assert (tile[column > 0, 0] == 255).all() and (tile[column < 0, 2] == 255).all()
    peak = np.unravel_index(np.abs(column).argmax(), column.shape)
    assert sorted(tile[peak]) == [0, 0, 255]


def test_update_freq_n_writes_the_size_weighted_mean_of_every_n_steps(tmp_path):
    X, y = _data(150)
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    recorder = _Recorder(optimizer)
    tb = TensorBoard(tmp_path, update_freq=3, histograms=False, images=False,
                     optimizer=optimizer)
    model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=2, batch_size=40,
              progress=False, seed=0, callbacks=[tb, recorder])        # 4 batches an epoch
    events = _read(tmp_path)
    steps, values = _series(events, "train/loss")
    assert steps == [2, 5]                                # windows span the epochs
    expected = []
    for start in (0, 3):
        window = range(start, start + 3)
        weighted = 0.0
        for i in window:
            weighted += recorder.losses[i] * recorder.sizes[i]
        expected.append(weighted / sum(recorder.sizes[i] for i in window))
    assert recorder.sizes[3] == 30                        # a smaller batch weighs less
    assert values == _f32(expected)
    assert _series(events, "train/lr") == ([2, 5], _f32([0.05, 0.05]))
    assert events.Tags()["histograms"] == [] and events.Tags()["images"] == []


def test_update_freq_epoch_does_only_a_count_per_batch(tmp_path, monkeypatch):
    from nnscratch import tensorboard

    X, y = _data(200)
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    writes = []
    real_write = tensorboard._EventFile._write
    phase = {"in": "?"}

    class Phase(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            phase["in"] = "batches"

        def on_epoch_end(self, epoch, logs=None):
            phase["in"] = "epoch end"

    def spy(self, value, step):
        writes.append((phase["in"], value.tag))
        real_write(self, value, step)

    monkeypatch.setattr(tensorboard._EventFile, "_write", spy)
    tb = TensorBoard(tmp_path, optimizer=optimizer)      # update_freq="epoch"
    model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=2, batch_size=16,
              progress=False, seed=0, callbacks=[Phase(), tb])
    assert tb.step == 2 * 13
    assert {when for when, _ in writes} == {"epoch end"}     # nothing while batches run
    assert not any(tag.startswith("train/") for _, tag in writes)
    # loss, accuracy, lr; weights and grads of 4 parameters; the filters
    assert len(writes) == 2 * (3 + 2 * 4 + 1)

    # and a batch costs next to nothing: 20,000 calls of on_batch_end in well under 0.1 s
    # (0.2 us each here; a write per step costs some 10 us)
    started = time.perf_counter()
    for i in range(20_000):
        tb.on_batch_end(i, {"loss": 1.0, "size": 16})
    assert time.perf_counter() - started < 0.1


def test_conv_filters_are_the_first_conv_kernels_scaled_up(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 3, 40)
    nn.seed(0)
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3))
    optimizer = nn.Adam(model.parameters(), lr=1e-2)
    model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=1, batch_size=20,
              progress=False, callbacks=[TensorBoard(tmp_path, optimizer=optimizer)])
    events = _read(tmp_path)
    assert events.Tags()["images"] == ["filters/0.weight"]
    rgb = _decode_png(events.Images("filters/0.weight")[-1].encoded_image_string)
    # 5 kernels of 3 x 3, each 9x larger (27 x 27), in a 3 x 2 grid, one pixel apart
    assert rgb.shape == (2 * 28 + 1, 3 * 28 + 1, 3)
    kernel = model[0].weight.data[0, 0]
    tile = rgb[1:28, 1:28]
    assert (tile == FILTER_PALETTE[filter_grid(kernel[None, None])[1:28, 1:28]]).all()
    assert (tile[::9, ::9][kernel > 0][:, 0] == 255).all()
    assert (rgb[-10:, -10:] == [64, 64, 64]).all()       # the empty sixth place: the ground


def test_a_first_layer_that_is_no_image_is_said_and_skipped(tmp_path):
    X, y = _data(60, d=10)
    model = _mlp(d=10)
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="no filter images"):
        model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=1, batch_size=30,
                  progress=False, callbacks=[TensorBoard(tmp_path, optimizer=optimizer)])
    events = _read(tmp_path)
    assert events.Tags()["images"] == []
    assert "weights/0.weight" in events.Tags()["histograms"]


def test_the_lr_comes_from_the_optimizer_fit_passes_or_is_said_missing(tmp_path):
    X, y = _data(60)
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.125)

    class Probe(Callback):
        def on_train_begin(self, logs=None):
            self.passed = ((logs or {}).get("optimizer") is optimizer
                           or getattr(self.model, "optimizer", None) is optimizer)

    probe = Probe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=1, batch_size=30,
                  progress=False, callbacks=[probe, TensorBoard(tmp_path / "fit")])
    said = [w for w in caught if "cannot see the optimizer" in str(w.message)]
    scalars = _read(tmp_path / "fit").Tags()["scalars"]
    if probe.passed:       # fit hands the optimizer to the callbacks: the lr is logged
        assert not said and _series(_read(tmp_path / "fit"), "epoch/lr")[1] == [0.125]
    else:                  # it does not (yet): said, not silently left out
        assert said and "epoch/lr" not in scalars

    # what fit would pass, by hand: on_train_begin's logs["optimizer"]
    tb = TensorBoard(tmp_path / "logs")
    tb.set_model(model)
    tb.on_train_begin({"metrics": ["loss"], "optimizer": optimizer})
    tb.on_epoch_begin(0)
    tb.on_epoch_end(0, {"loss": 1.5})
    tb.on_train_end()
    assert _series(_read(tmp_path / "logs"), "epoch/lr") == ([0], [0.125])


def test_one_callback_over_several_fits_continues_its_steps(tmp_path):
    # as `nnscratch train` does: one fit per epoch, with initial_epoch
    X, y = _data(100)
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    tb = TensorBoard(tmp_path, update_freq=1, histograms=False, images=False,
                     optimizer=optimizer)
    losses = []
    for epoch in range(3):
        history = model.fit(X, y, loss="cross_entropy", optimizer=optimizer,
                            epochs=epoch + 1, initial_epoch=epoch, batch_size=50,
                            progress=False, seed=epoch, callbacks=[tb])
        losses += history.history["loss"]
    assert len(os.listdir(tmp_path)) == 3                # a file per fit, none overwritten
    events = _read(tmp_path)
    assert _series(events, "epoch/loss") == ([0, 1, 2], _f32(losses))
    assert _series(events, "train/loss")[0] == list(range(6))


def test_event_file_names_sort_in_the_order_they_were_opened(tmp_path):
    # TensorBoard reads a run's files in name order: twelve in the same second or so must
    # not put a tenth before a ninth
    model = _mlp(d=4)
    tb = TensorBoard(tmp_path, histograms=False, images=False,
                     optimizer=nn.SGD(model.parameters(), lr=0.1))
    tb.set_model(model)
    paths = []
    for _ in range(12):
        tb.on_train_begin({})
        paths.append(tb.path)
        tb.on_train_end()
    assert sorted(paths) == paths and len(set(paths)) == 12
    assert all(os.path.basename(p).startswith("events.out.tfevents.") for p in paths)


def test_an_exception_leaves_the_finished_epochs_on_disk(tmp_path):
    X, y = _data(100)
    model = _mlp()
    optimizer = nn.SGD(model.parameters(), lr=0.05)

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    tb = TensorBoard(tmp_path, optimizer=optimizer)
    threads = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=5, batch_size=50,
                  progress=False, callbacks=[tb, Boom()])
    assert tb.path is not None                           # fit called no on_train_end
    events = _read(tmp_path)                             # read while still open
    assert _series(events, "epoch/loss")[0] == [0, 1]
    assert len(events.Histograms("weights/0.weight")) == 2
    # the next fit closes it (and opens its own); close() ends the writer's thread
    model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=3, initial_epoch=2,
              batch_size=50, progress=False, callbacks=[tb])
    assert tb.path is None and len(os.listdir(tmp_path)) == 2
    tb.close()                                           # twice: nothing happens
    assert threading.active_count() == threads
    with TensorBoard(tmp_path / "with") as tb2:
        tb2.set_model(model)
        tb2.on_train_begin({"optimizer": optimizer})
        assert tb2.path is not None
    assert tb2.path is None


def test_missing_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    with without_package(monkeypatch, "tensorboard"):
        with pytest.raises(ImportError, match=re.escape('pip install "nnscratch[tensorboard]"')):
            TensorBoard(tmp_path)
    assert 'pip install "nnscratch[tensorboard]"' in TENSORBOARD_HINT


@pytest.mark.parametrize("kwargs, error", [
    (dict(update_freq="sometimes"), ValueError), (dict(update_freq=0), ValueError),
    (dict(update_freq=True), TypeError), (dict(update_freq=2.5), TypeError),
    (dict(histograms="yes"), TypeError), (dict(images=1), TypeError),
    (dict(optimizer=object()), TypeError), (dict(max_filters=0), ValueError),
])
def test_bad_arguments(tmp_path, kwargs, error):
    with pytest.raises(error):
        TensorBoard(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)                      # nothing written


def test_filter_grid_and_its_colours():
    weight = np.zeros((16, 3))
    weight[0, 0], weight[1, 0], weight[2, 0] = 2.0, -1.0, -2.0
    grid = filter_grid(weight)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1)          # 3 tiles of 4 x 4: a 2 x 2 grid
    rgb = FILTER_PALETTE[grid].astype(int)
    assert list(rgb[1, 1]) == [255, 0, 0]                 # the largest +: full red
    assert list(rgb[1, 3]) == [0, 0, 255]                 # as large, -: full blue
    r, g, b = rgb[1, 2]                                   # half of it, -: half blue
    assert b == 255 and r == g and abs(r - 128) <= 2
    assert list(rgb[2, 2]) == [255, 255, 255]             # 0: white
    assert (rgb[6:, 6:] == [64, 64, 64]).all()           # no fourth tile: the ground
    assert (FILTER_PALETTE[:255].max(axis=1) == 255).all()   # no colour is the ground's
    with pytest.raises(ValueError, match="square"):
        filter_grid(np.zeros((10, 3)))
    assert filter_grid(np.ones((4, 100)), max_filters=9).shape == (3 * 3 + 1, 3 * 3 + 1)


# --------------------------------------------------------------------------------------
# The real thing: TensorBoard's server, and Chromium showing its page
# --------------------------------------------------------------------------------------

RUN = "nnscratch-run"
DEADLINE = 50.0        # seconds for the whole browser test (it takes some 10 s here)


def _chromium():
    path = shutil.which("chromium")
    if path is None:
        # listed under the suite's NOT RUN banner (conftest), never a silent skip
        pytest.skip("could not import 'chromium': this test opens TensorBoard in headless "
                    "Chromium, which is not installed (apt-get install chromium; .ci/run "
                    "installs it)")
    return path


def _stop(proc):
    """End `proc` and every process of its session (TensorBoard's data server, Chromium's
    helpers): SIGTERM, then SIGKILL after 5 s; returns once the leader is reaped."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)             # what outlived the leader
    except ProcessLookupError:
        pass


def _group_gone(pgid):
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _start_tensorboard(logdir, tmp_path, deadline):
    """TensorBoard on 127.0.0.1, a port the system picks; returns (process, port)."""
    log = tmp_path / "tensorboard.log"
    env = dict(os.environ, TMPDIR=str(tmp_path))       # (its .tensorboard-info goes there)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main",
                                 "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"TensorBoard did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _wait_for_tags(port, tags, deadline):
    """Until TensorBoard has read the run's event file (it loads in the background)."""
    seen = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags",
                                        timeout=5) as response:
                seen = response.read().decode()
            if RUN in seen and all(f'"{tag}"' in seen for tag in tags):
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"TensorBoard did not list the run's scalars in time: {seen}")


def _dump_dom(chromium, url, profile, budget_ms, timeout):
    """The page's DOM after `budget_ms` of (virtual) time, from headless Chromium."""
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run",
                             f"--user-data-dir={profile}", "--window-size=1280,2400",
                             "--run-all-compositor-stages-before-draw",
                             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        _stop(proc)
        assert _group_gone(proc.pid), "Chromium left processes behind"
    return out.decode("utf-8", "replace")


def _cards(dom):
    """{tag: text} of the scalar cards the page rendered."""
    cards = {}
    for start in re.finditer(r"<scalar-card-component\b", dom):
        end = dom.find("</scalar-card-component>", start.start())
        card = dom[start.start():end]
        title = re.search(r'<tb-truncated-path[^>]*\btitle="([^"]+)"', card)
        if title:
            text = html.unescape(re.sub(r"<[^>]+>", " ", card))
            cards[html.unescape(title.group(1))] = " ".join(text.split())
    return cards


def _shown(text):
    """(value, step) in the card's table row of the run: "<run> <smoothed> <value> <step>"."""
    number = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"
    row = re.search(re.escape(RUN) + rf" {number} {number} (\d+)\b", text)
    return (float(row.group(2)), int(row.group(3))) if row else None


def test_tensorboard_in_headless_chromium_shows_the_runs_scalars(tmp_path):
    started = time.monotonic()
    deadline = started + DEADLINE
    chromium = _chromium()
    X, y = _data(256)
    model = _mlp(hidden=32)
    optimizer = nn.SGD(model.parameters(), lr=0.05)
    recorder = _Recorder(optimizer)
    history = model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=3,
                        batch_size=64, validation_data=_data(64, seed=1), progress=False,
                        seed=0, callbacks=[TensorBoard(tmp_path / "logs" / RUN, update_freq=1,
                                                       optimizer=optimizer), recorder])
    last_step = len(recorder.losses) - 1
    expected = {f"epoch/{name}": (values[-1], 2) for name, values in history.history.items()}
    expected["epoch/lr"] = (0.05, 2)
    expected["train/loss"] = (recorder.losses[-1], last_step)
    expected["train/lr"] = (0.05, last_step)

    server, port = _start_tensorboard(tmp_path / "logs", tmp_path, deadline)
    try:
        _wait_for_tags(port, expected, deadline)
        # the Time Series page, showing the cards of the tags under epoch/ and train/
        url = (f"http://127.0.0.1:{port}/?tagFilter="
               f"{urllib.parse.quote('^(epoch|train)/', safe='')}#timeseries")
        # Chromium renders the cards a moment after their data arrives, and --dump-dom may
        # come first (one load in ten here): another load, with more time, then
        attempts, cards, dom = 0, {}, ""
        while time.monotonic() < deadline - 3 and attempts < 5:
            attempts += 1
            dom = _dump_dom(chromium, url, tmp_path / f"chromium-{attempts}",
                            budget_ms=10_000 * attempts, timeout=deadline - time.monotonic())
            cards = _cards(dom)
            if all(tag in cards and _shown(cards[tag]) for tag in expected):
                break
    finally:
        _stop(server)
        assert _group_gone(server.pid), "TensorBoard left processes behind"

    assert RUN in dom, f"the run's name is not on the page (after {attempts} loads)"
    missing = [tag for tag in expected if tag not in cards]
    assert not missing, (f"no card for {missing} after {attempts} loads; cards: {sorted(cards)}; "
                         f"page text: {html.unescape(re.sub(r'<[^>]+>', ' ', dom))[:2000]}")
    for tag, (value, step) in expected.items():
        shown = _shown(cards[tag])
        assert shown is not None, f"{tag}: no row for {RUN} in the card: {cards[tag]}"
        # the card shows the last point: its value to 4 decimals, and its step
        assert shown[1] == step, (tag, shown, cards[tag])
        assert math.isclose(shown[0], value, rel_tol=1e-3, abs_tol=1e-4), (tag, shown, value)
    assert time.monotonic() - started < DEADLINE + 15
