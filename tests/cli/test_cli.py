"""The `nnscratch` command line: train, resume, bad arguments, evaluate, predict, info, bench.

Most tests call `nnscratch.cli.main([...])` in-process and read what it printed (capsys);
a few run the real thing in a fresh interpreter (`python -m nnscratch.cli`) for the exit
codes, and to interrupt a training run with SIGINT and resume it in another process.
Every test runs in its own empty temporary directory, with its own user cache ($XDG_CACHE_HOME,
where a run keeps its checkpoint unless --checkpoint is given), and training always uses
the bundled Fashion-MNIST sample, cut with `--limit`, so the whole file takes seconds.
"""
import contextlib
import gzip
import io
import os
import re
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

import cnn_core
import nnscratch as nn
from conftest import no_matplotlib, run_cli
from nnscratch import _png, _random, checkpoint, cli, datasets

HAVE_CNN = all(hasattr(nn, name) for name in ("Conv2d", "MaxPool2d", "BatchNorm2d"))
needs_cnn = pytest.mark.skipif(not HAVE_CNN, reason="nnscratch has no Conv2d/MaxPool2d/"
                               "BatchNorm2d yet (--model cnn needs them)")

EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+)  loss (\d+\.\d{4})  accuracy (\d\.\d{4})"
    r"(?:  val_loss (\d+\.\d{4})  val_accuracy (\d\.\d{4}))?  lr (\S+)  (\d+\.\d\d) s$")
TEST_LINE = re.compile(r"^test accuracy (\d\.\d{4})  test loss (\d+\.\d{4})  "
                       r"\((\S+) s per epoch, median of (\d+)\)$")
SAMPLE_TEST_COUNT = 1000

# Measured on this machine (cython backend, seed 0): 2 epochs on the first 2000 sample
# images reach 0.731 test accuracy with the default MLP and Adam (0.716..0.771 over seeds
# 0-4 and the three optimizers); the floor leaves room for another thread count or CPU.
ACCURACY_FLOOR_2000x2 = 0.68


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in an empty directory, with an empty cache of its own; put back the global state
    the CLI changes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    backend, threads = nn.get_backend(), nn.get_num_threads()
    state = _random.get_state()
    yield
    nn.set_backend(backend)
    nn.set_num_threads(threads)
    _random.set_state(state)


run = run_cli   # (exit status, stdout, stderr) of `nnscratch *argv`, in-process


def epoch_lines(out):
    return [m for m in map(EPOCH_LINE.match, out.splitlines()) if m]


def final_line(out):
    matches = [m for m in map(TEST_LINE.match, out.splitlines()) if m]
    assert len(matches) == 1, out
    return matches[0]


def files_in(folder):
    return sorted(os.listdir(folder))


def cached_checkpoints():
    """The checkpoints in this test's user cache (a run's, until it finishes)."""
    folder = datasets.default_cache_dir() / "checkpoints"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def cached_checkpoint(save=None):
    """Where a run with this --save (or none) in the current folder keeps its checkpoint."""
    return cli._default_checkpoint(save)


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(a_path, b_path):
    """The same weights and optimizer state, bit for bit (the run's record, with its
    timings, aside)."""
    a, b = arrays_of(a_path), arrays_of(b_path)
    assert sorted(a) == sorted(b)
    for key in a:
        if key == checkpoint.META_KEY:
            continue
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def sample_images():
    """The bundled sample's raw uint8 test images and labels."""
    with np.load(datasets.SAMPLE_PATH, allow_pickle=False) as z:
        return z["X_test"], z["y_test"]


def write_idx(path, array, gz=True):
    """An IDX file (uint8, any number of dimensions), gzipped or raw."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    raw += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An MLP trained by `nnscratch train` (2 epochs, 2000 sample images): its output,
    the saved model and the checkpoint."""
    folder = tmp_path_factory.mktemp("trained")
    cache = tmp_path_factory.mktemp("trained-cache")
    model = folder / "model.npz"
    buffer = io.StringIO()
    backend, threads = nn.get_backend(), nn.get_num_threads()
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        with contextlib.redirect_stdout(buffer):
            code = cli.main(["train", "--data", "sample", "--limit", "2000", "--epochs", "2",
                             "--no-progress", "--save", str(model)])
    finally:
        if previous is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = previous
    nn.set_backend(backend)
    nn.set_num_threads(threads)
    assert code == 0
    return {"out": buffer.getvalue(), "model": model, "folder": folder, "cache": cache}


# --- train ----------------------------------------------------------------------------------

def test_train_prints_data_model_epochs_and_test_accuracy(trained):
    out = trained["out"]
    lines = out.splitlines()
    assert lines[0].startswith("data: sample from ") and "sample shipped with nnscratch" in lines[0]
    assert "2000 training images, 1000 test images" in lines[1]
    assert lines[2].startswith("model: mlp, 235,146 parameters; Adam(lr=0.001")
    assert "batch 128; backend cython" in lines[2]
    # how many threads, and why (no --threads given: the default's reason)
    n = nn.get_num_threads()
    assert lines[2].endswith(f", {n} thread{'s' if n != 1 else ''} "
                             f"({nn.backend.thread_count_reason()})"), lines[2]
    epochs = epoch_lines(out)
    assert [(m[1], m[2]) for m in epochs] == [("1", "2"), ("2", "2")]
    assert [m[7] for m in epochs] == ["1.00e-03", "5.00e-04"]   # cosine over 2 epochs
    assert float(epochs[1][3]) < float(epochs[0][3])            # the loss goes down
    assert all(m[5] is None for m in epochs)                    # no validation asked for
    test = final_line(out)
    assert float(test[1]) >= ACCURACY_FLOOR_2000x2, out
    assert test[4] == "2"
    assert f"saved the model to {trained['model']}" in out
    # written: exactly the model, no temporary files; the checkpoint kept in the cache
    # while the run went on is gone
    assert files_in(trained["folder"]) == ["model.npz"]
    assert os.listdir(trained["cache"] / "nnscratch" / "checkpoints") == []


def test_train_saves_a_loadable_model_with_the_printed_accuracy(trained):
    model = nn.load(trained["model"])
    assert [type(layer).__name__ for layer in model] == ["Linear", "ReLU", "Linear", "ReLU",
                                                          "Linear"]
    _, (X_test, y_test) = datasets.load_sample()
    accuracy = float(np.mean(model.predict(X_test).argmax(axis=1) == y_test))
    assert f"{accuracy:.4f}" == final_line(trained["out"])[1]
    # the model file holds the training state too (what --resume needs to train more
    # epochs): the optimizer's, and the run's record
    _, state, meta = checkpoint.load_checkpoint(trained["model"])
    assert meta["epoch"] == 2 and len(meta["history"]["loss"]) == 2
    assert meta["args"]["limit"] == 2000 and meta["args"]["optimizer"] == "adam"
    assert state["type"] == "Adam" and all(e["step"] == 2 * 16 for e in state["state"])


def test_train_saves_safetensors_by_the_suffix(capsys, tmp_path):
    # --save m.safetensors: the Hugging Face format, which safetensors reads and evaluate
    # and predict load; the run's printed accuracy is the file's
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "500", "--epochs", "1",
                       "--save", str(path))
    assert code == 0 and "safetensors" in out.splitlines()[-1]
    tensors = safetensors_numpy.load_file(str(path))
    model = nn.load(path)
    assert list(tensors) == sorted(model.state_dict())
    for name, array in model.state_dict().items():
        assert np.array_equal(tensors[name], array)
    code, out, _ = run(capsys, "evaluate", str(path), "--data", "sample")
    assert code == 0
    _, (X_test, y_test) = datasets.load_sample()
    accuracy = float(np.mean(model.predict(X_test).argmax(axis=1) == y_test))
    assert f"test accuracy {accuracy:.4f}" in out


def test_train_leaves_no_checkpoint_behind(capsys, tmp_path, monkeypatch):
    # a run keeps its checkpoint in the user cache while it trains, and removes it at the end
    seen = []
    original = checkpoint.save_checkpoint

    def save(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "200", "--epochs", "2",
                       "--hidden", "16", "--no-progress")
    assert code == 0
    assert seen == [cached_checkpoint()] * 2
    assert files_in(tmp_path) == [] and cached_checkpoints() == []
    assert "saved the model" not in out
    # an explicit --checkpoint is kept
    code, _, _ = run(capsys, "train", "--data", "sample", "--limit", "200", "--epochs", "1",
                     "--hidden", "16", "--no-progress", "--checkpoint", "c.npz")
    assert code == 0 and files_in(tmp_path) == ["c.npz"] and cached_checkpoints() == []


def test_train_progress_bars_count_the_run_s_epochs(capsys, tmp_path):
    # the command fits one epoch per call: each bar still says which of all the epochs it is
    code, _, err = run(capsys, "train", "--data", "sample", "--limit", "200", "--epochs", "2",
                       "--hidden", "16")
    assert code == 0
    assert "Epoch 1/2" in err and "Epoch 2/2" in err
    assert "Epoch 1/1" not in err


def test_train_validation_split_adds_validation_metrics(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "1000", "--epochs", "2",
                       "--validation-split", "0.2", "--no-progress", "--checkpoint", "c.npz")
    assert code == 0
    assert "800 training images, 1000 test images, 200 held out for validation" in out
    epochs = epoch_lines(out)
    assert len(epochs) == 2
    for m in epochs:
        assert m[5] is not None and m[6] is not None
        assert 0.3 < float(m[6]) <= 1.0
    _, _, meta = checkpoint.load_checkpoint(tmp_path / "c.npz")
    assert len(meta["history"]["val_accuracy"]) == 2
    assert [f"{v:.4f}" for v in meta["history"]["val_accuracy"]] == [m[6] for m in epochs]


# measured (seeds 0-2): 0.69-0.78 test accuracy after 3 epochs on 2000 sample images with a
# 784-64-10 MLP, whatever the optimizer below or the backend
SMALL_RUN = ["train", "--data", "sample", "--limit", "2000", "--epochs", "3", "--hidden", "64",
             "--no-progress"]
SMALL_RUN_FLOOR = 0.62


def test_train_backend_numpy(capsys):
    code, out, _ = run(capsys, *SMALL_RUN, "--backend", "numpy")
    assert code == 0
    assert "backend numpy" in out
    numpy_accuracy = float(final_line(out)[1])
    assert numpy_accuracy >= SMALL_RUN_FLOOR, out
    code, out, _ = run(capsys, *SMALL_RUN, "--backend", "cython")
    assert "backend cython" in out
    # the same model, the same math: the NumPy twins and the compiled kernels agree
    assert abs(float(final_line(out)[1]) - numpy_accuracy) <= 0.02


@pytest.mark.parametrize("argv, shown", [
    (["--optimizer", "sgd"], "SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0)"),
    (["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0"],
     "SGD(lr=0.1, momentum=0, nesterov=False, weight_decay=0)"),
    (["--optimizer", "adam", "--weight-decay", "1e-4"], "Adam(lr=0.001, betas=(0.9, 0.999), "
                                                        "eps=1e-08, weight_decay=0.0001)"),
    (["--optimizer", "adamw"], "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, "
                               "weight_decay=0.01)"),
    (["--optimizer", "adamw", "--weight-decay", "0"], "AdamW(lr=0.001, betas=(0.9, 0.999), "
                                                      "eps=1e-08, weight_decay=0)"),
])
def test_train_optimizers(capsys, argv, shown):
    code, out, _ = run(capsys, *SMALL_RUN, *argv)
    assert code == 0
    assert shown in out
    assert float(final_line(out)[1]) >= SMALL_RUN_FLOOR, out


def test_train_constant_schedule_and_zero_epochs(capsys):
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "300", "--epochs", "3",
                       "--hidden", "16", "--schedule", "none", "--lr", "0.002",
                       "--no-progress")
    assert code == 0
    assert [m[7] for m in epoch_lines(out)] == ["2.00e-03"] * 3
    # --epochs 0 evaluates the freshly initialised model: about chance
    code, out, _ = run(capsys, "train", "--data", "sample", "--epochs", "0", "--hidden", "16",
                       "--no-progress")
    assert code == 0 and not epoch_lines(out)
    assert float(final_line(out)[1]) < 0.35


STATS_HEADER = ["layer", "type", "act_mean", "act_std", "zeros", "next", "weight_norm",
                "grad_norm", "update_ratio"]


def _stats_tables(out):
    """{epoch line: the lines of the table printed after it}."""
    tables, current = {}, None
    for line in out.splitlines():
        if EPOCH_LINE.match(line):
            current = tables.setdefault(line, [])
        elif TEST_LINE.match(line):
            current = None
        elif current is not None:
            current.append(line)
    return tables


def test_train_stats_prints_a_table_after_each_epoch_and_changes_nothing(capsys, tmp_path):
    argv = ["train", "--data", "sample", "--limit", "600", "--epochs", "2", "--hidden", "32,16",
            "--dropout", "0.2", "--optimizer", "sgd", "--no-progress"]
    code, out, _ = run(capsys, *argv, "--stats", "--save", "with.npz")
    assert code == 0
    tables = _stats_tables(out)
    assert len(tables) == 2
    for (line, table), m in zip(tables.items(), epoch_lines(out)):
        assert table[0].split() == STATS_HEADER and set(table[1]) == {"-"}
        rows = [row.split() for row in table[2:-1]]
        assert [row[:2] for row in rows] == [["0", "Linear"], ["3", "Linear"], ["6", "Linear"]]
        assert rows[0][5] == "ReLU" and rows[0][7] == "dead" and rows[2][5] == "-"
        assert all(float(row[-2]) > 0 and float(row[-1]) > 0 for row in rows)
        assert re.match(rf"loss \d+\.\d{{4}} on 256 samples; .* with lr {float(m[7]):g} ",
                        table[-1])
    code, plain, _ = run(capsys, *argv, "--save", "without.npz")
    assert code == 0 and "update_ratio" not in plain
    # the same training: every epoch's figures, the test accuracy and the weights, bit for bit
    assert [m.groups()[:7] for m in epoch_lines(out)] == \
        [m.groups()[:7] for m in epoch_lines(plain)]
    assert final_line(out).groups()[:2] == final_line(plain).groups()[:2]
    with_stats, without = nn.load(tmp_path / "with.npz"), nn.load(tmp_path / "without.npz")
    assert all(np.array_equal(a, b) for a, b in zip(with_stats.state_dict().values(),
                                                    without.state_dict().values()))


@needs_cnn
def test_train_stats_of_a_cnn_names_its_layers(capsys):
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "128", "--epochs", "1",
                       "--model", "cnn", "--no-progress", "--stats")
    assert code == 0
    (table,) = _stats_tables(out).values()
    names = [row.split()[:2] for row in table[2:-1]]
    assert names == [["0", "Conv2d"], ["1", "BatchNorm2d"], ["4", "Conv2d"],
                     ["5", "BatchNorm2d"], ["9", "Linear"], ["12", "Linear"]]
    assert "ReLU" in table[3] and "dead" in table[3]


def test_train_progress_bar_goes_to_stderr(capsys):
    code, out, err = run(capsys, "train", "--data", "sample", "--limit", "256", "--epochs", "1",
                         "--hidden", "16", "--batch-size", "64")
    assert code == 0
    assert len(epoch_lines(out)) == 1 and "batch" in err


def test_train_plot_writes_learning_curves(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "300", "--epochs", "2",
                       "--hidden", "16", "--no-progress", "--plot", "curves.png",
                       "--checkpoint", "c.npz")
    assert code == 0
    assert "learning curves: curves.png" in out
    data = (tmp_path / "curves.png").read_bytes()
    assert data.startswith(_png.SIGNATURE) and len(data) > 10_000
    from PIL import Image      # (matplotlib needs Pillow: installed with it)

    with Image.open(tmp_path / "curves.png") as image:
        assert min(image.size) > 200
    assert files_in(tmp_path) == ["c.npz", "curves.png"]



def test_train_plot_without_matplotlib_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    with no_matplotlib(monkeypatch):
        code, out, err = run(capsys, "train", "--data", "sample", "--limit", "100",
                             "--epochs", "1", "--no-progress", "--plot", "curves.png")
    assert code == 2
    assert "matplotlib" in err and 'pip install "nnscratch[plot]"' in err
    assert not epoch_lines(out)          # refused before training, not after
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("depth", [20, 32])
def test_train_resnet(capsys, tmp_path, monkeypatch, depth):
    # --model resnet<depth>: nnscratch.models.resnet, its input shape and class count taken
    # from the data; evaluate feeds it images
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "train", "--data", "sample", "--model", f"resnet{depth}",
                       "--limit", "96", "--epochs", "1", "--batch-size", "48", "--no-progress",
                       "--save", "r.npz")
    assert code == 0, out
    model = nn.load(tmp_path / "r.npz")
    expected = nn.models.resnet(depth=depth)
    assert f"model: resnet{depth}, {sum(p.size for p in expected.parameters()):,} parameters" \
        in out
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in expected]
    assert sum(isinstance(m, nn.Residual) for m in model) == (depth - 2) // 2
    code, out, _ = run(capsys, "evaluate", "r.npz", "--data", "sample")
    assert code == 0 and "test accuracy" in out


@needs_cnn
def test_train_cnn(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--data", "sample", "--model", "cnn", "--limit", "512",
                       "--epochs", "1", "--batch-size", "64", "--no-progress",
                       "--save", "cnn.npz")
    assert code == 0
    assert "model: cnn" in out and len(epoch_lines(out)) == 1
    assert float(final_line(out)[1]) >= 0.5, out     # measured 0.602 (1 or 2 threads)
    model = nn.load(tmp_path / "cnn.npz")
    assert isinstance(model[0], nn.Conv2d)
    # evaluate and predict feed it (N, 1, 28, 28) images
    code, out, _ = run(capsys, "evaluate", "cnn.npz", "--data", "sample")
    assert code == 0 and "test accuracy" in out
    images, _ = sample_images()
    _png.write_png(tmp_path / "x.png", images[0])
    code, out, _ = run(capsys, "predict", "cnn.npz", "x.png")
    assert code == 0 and out.startswith("x.png: ")


# --- resume ---------------------------------------------------------------------------------

def interrupt_at_step(monkeypatch, optimizer_class, step):
    """Raise KeyboardInterrupt (as Ctrl-C would) at the `step`-th optimizer update of fit,
    after the backward pass and before the weights change: in the fast path's update
    (`TrainStep._update`) on the compiled kernels, else in `optimizer_class.step`."""
    from nnscratch._fast.train import TrainStep

    calls = []

    def interrupting(original):
        def update_or_interrupt(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == step:
                raise KeyboardInterrupt
            return original(self, *args, **kwargs)
        return update_or_interrupt

    if nn.backend.fast_path():
        monkeypatch.setattr(TrainStep, "_update", interrupting(TrainStep._update))
    else:
        monkeypatch.setattr(optimizer_class, "step", interrupting(optimizer_class.step))


# name: (optimizer class, arguments, --limit, optimizer steps per epoch at batch size 64)
RESUME_CASES = {
    "mlp-adam": (nn.Adam, ["--hidden", "32"], 400, 7),
    "mlp-sgd-dropout-validation": (nn.SGD, ["--optimizer", "sgd", "--hidden", "32,16",
                                            "--dropout", "0.3", "--validation-split", "0.1"],
                                   400, 6),
    "mlp-adamw": (nn.AdamW, ["--optimizer", "adamw", "--hidden", "24"], 400, 7),
    "cnn": (nn.Adam, ["--model", "cnn"], 192, 3),
    # per-batch schedules (stepped to where the run stopped), augmentation (its draws per
    # seed and epoch), label smoothing
    "mlp-onecycle-augment-smoothing": (nn.SGD, ["--optimizer", "sgd", "--lr", "0.1",
                                                "--hidden", "32", "--schedule", "onecycle",
                                                "--augment", "--label-smoothing", "0.1"],
                                       400, 7),
    "resnet20-warmup-cosine-augment": (nn.SGD, ["--model", "resnet20", "--optimizer", "sgd",
                                                "--lr", "0.1", "--schedule",
                                                "warmup-cosine", "--augment"], 128, 2),
}


@pytest.mark.parametrize("case", [pytest.param(k, marks=needs_cnn if k == "cnn" else ())
                                  for k in RESUME_CASES])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(capsys, monkeypatch,
                                                                   tmp_path, case):
    optimizer_class, extra, limit, steps_per_epoch = RESUME_CASES[case]
    argv = ["train", "--data", "sample", "--limit", limit, "--epochs", "3", "--batch-size",
            "64", "--seed", "7", "--no-progress", *extra]
    code, full, _ = run(capsys, *argv, "--save", "full.npz")
    assert code == 0

    # the same run, interrupted in the middle of epoch 2
    with monkeypatch.context() as m:
        interrupt_at_step(m, optimizer_class, steps_per_epoch + 2)
        code, out, err = run(capsys, *argv, "--save", "part.npz")
    assert code == 130
    assert "--resume continues from the last finished epoch" in err
    assert len(epoch_lines(out)) == 1
    assert files_in(tmp_path) == ["full.npz"]
    assert cached_checkpoints() == [os.path.basename(cached_checkpoint("part.npz"))]
    assert checkpoint.load_checkpoint(cached_checkpoint("part.npz"))[2]["epoch"] == 1

    nn.seed(424242)   # a fresh process: the library generator is anywhere
    code, out, _ = run(capsys, *argv, "--save", "part.npz", "--resume")
    assert code == 0
    assert f"resumed from {cached_checkpoint('part.npz')}: 1 of 3 epochs done" in out
    assert "note:" not in out
    assert cached_checkpoints() == []
    # epochs 2 and 3 print what they printed in the uninterrupted run (but the time)
    strip = [m[0].rsplit("  ", 1)[0] for m in epoch_lines(out)]
    assert strip == [m[0].rsplit("  ", 1)[0] for m in epoch_lines(full)][1:]
    assert final_line(out).group(1, 2) == final_line(full).group(1, 2)
    assert_same_arrays(tmp_path / "full.npz", tmp_path / "part.npz")   # bit for bit
    full_meta = checkpoint.load_checkpoint(tmp_path / "full.npz")[2]
    part_meta = checkpoint.load_checkpoint(tmp_path / "part.npz")[2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert full_meta["history"].get(key) == part_meta["history"].get(key)


def test_per_batch_schedules_set_the_rate_of_every_step(capsys, monkeypatch, tmp_path):
    # --schedule onecycle / warmup-cosine: the rate of each optimizer step is the
    # schedule's value for that step, over epochs * steps per epoch (here 3 * 7)
    seen = []

    def recording(original):
        def step(self):          # the rate of the optimizer step just taken, then the next
            seen.append((self.optimizer.lr, self.optimizer.momentum))
            return original(self)
        return step

    for kind, make in (("onecycle", lambda opt: nn.OneCycleLR(opt, max_lr=0.1, total_steps=21,
                                                                 pct_start=0.15)),
                       ("warmup-cosine", lambda opt: nn.WarmupCosineLR(opt, warmup_steps=1,
                                                                        total_steps=21))):
        seen.clear()
        with monkeypatch.context() as m:
            for cls in (nn.OneCycleLR, nn.WarmupCosineLR):
                m.setattr(cls, "step", recording(cls.step))
            code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "400",
                               "--epochs", "3", "--batch-size", "64", "--hidden", "16",
                               "--optimizer", "sgd", "--lr", "0.1", "--schedule", kind,
                               "--no-progress")
        assert code == 0, out
        reference = nn.SGD([nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9, nesterov=True)
        schedule = make(reference)
        expected = []
        for _ in range(21):
            expected.append((reference.lr, reference.momentum))
            schedule.step()
        assert seen == expected, kind


def test_logdir_writes_the_epochs_for_tensorboard(capsys, tmp_path):
    # --logdir: TensorBoard event files holding each epoch's loss, accuracy and rate as the
    # epoch lines print them
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "300", "--epochs", "2",
                       "--hidden", "16", "--logdir", tmp_path / "runs", "--no-progress")
    assert code == 0 and "TensorBoard: " in out
    events = EventAccumulator(str(tmp_path / "runs"))
    events.Reload()
    lines = epoch_lines(out)
    for tag, column in (("epoch/loss", 3), ("epoch/accuracy", 4), ("epoch/lr", 7)):
        logged = [e.value for e in events.Scalars(tag)]
        printed = [float(m[column]) for m in lines]
        assert np.allclose(logged, printed, rtol=5e-3), (tag, logged, printed)
    assert any(t.startswith("weights/") for t in events.Tags()["histograms"])


def test_train_metrics_are_reported_per_epoch_and_for_the_test_set(capsys, tmp_path):
    # --metrics: the names of nnscratch.metrics, each epoch (and val_) and on the test set,
    # equal to scikit-learn's on the saved model's predictions; a bad name: one line, exit 2
    from sklearn.metrics import f1_score

    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "600", "--epochs", "2",
                       "--hidden", "16", "--metrics", "macro_f1,top_3_accuracy",
                       "--validation-split", "0.1", "--save", tmp_path / "m.npz",
                       "--no-progress")
    assert code == 0
    epoch_rows = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_rows) == 2
    for row in epoch_rows:
        for name in ("macro_f1", "val_macro_f1", "top_3_accuracy", "val_top_3_accuracy"):
            assert f"  {name} 0." in row, row
    model = nn.load(tmp_path / "m.npz")
    _, (X_test, y_test) = datasets.load_sample()
    expected = f1_score(y_test, model.predict(X_test).argmax(axis=1), average="macro")
    assert f"test macro_f1 {expected:.4f}  top_3_accuracy " in out
    code, _, err = run(capsys, "train", "--data", "sample", "--metrics", "f1")
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "nnscratch train: error: argument --metrics: unknown metric 'f1' (say which average")


def test_augment_crops_and_flips_but_not_digits(capsys):
    code, out, _ = run(capsys, "train", "--data", "sample", "--limit", "200", "--epochs", "1",
                       "--augment", "--no-progress")
    assert code == 0
    assert ("augment: RandomCrop(size=(28, 28), padding=2, image_shape=(1, 28, 28)), "
            "RandomHorizontalFlip(p=0.5, image_shape=(1, 28, 28))") in out
    transform = cli._augmentation("mnist", (1, 28, 28), flat=False)
    assert [type(t).__name__ for t in transform.transforms] == ["RandomCrop"]


def test_resume_in_a_fresh_process_after_sigint(tmp_path):
    """The real thing: Ctrl-C (SIGINT) to `python -m nnscratch.cli train`, then `--resume`
    in another process, gives the weights of the uninterrupted run bit for bit."""
    argv = ["train", "--data", "sample", "--limit", "1500", "--batch-size", "32", "--epochs",
            "20", "--hidden", "48", "--dropout", "0.2", "--seed", "3", "--threads", "2",
            "--no-progress"]
    # `python -m nnscratch.cli`, each epoch after the first starting 0.2 s late: the signal
    # sent when epoch 1's line arrives lands before the run ends, however busy the machine
    # (unslowed, 19 epochs of 0.02 s could end first, and the run exit 0)
    slow_start = ("import sys, time, nnscratch.cli as cli; original = cli._schedule_lr\n"
                  "def late(base_lr, epoch, epochs, schedule):\n"
                  "    if epoch >= 1: time.sleep(0.2)\n"
                  "    return original(base_lr, epoch, epochs, schedule)\n"
                  "cli._schedule_lr = late; sys.argv[0] = 'nnscratch'\n"
                  "sys.exit(cli.main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", slow_start, *argv, "--save", "part.npz",
           "--checkpoint", "part.ckpt.npz"]
    # SIGINT as a terminal's Ctrl-C finds it: a run started in the background by a
    # non-interactive shell (nohup, `&`) inherits it ignored, and Python then keeps it so
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("epoch"):     # printed once its checkpoint is written
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    done = checkpoint.load_checkpoint(tmp_path / "part.ckpt.npz")[2]["epoch"]
    assert 1 <= done < 20
    assert not (tmp_path / "part.npz").exists()
    assert [f for f in files_in(tmp_path) if f.endswith(".tmp")] == []

    result = subprocess.run([sys.executable, "-m", "nnscratch.cli", *argv, "--save",
                             "part.npz", "--checkpoint", "part.ckpt.npz", "--resume"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"resumed from part.ckpt.npz: {done} of 20 epochs done" in result.stdout

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main([*argv, "--save", str(tmp_path / "full.npz")]) == 0
    assert_same_arrays(tmp_path / "full.npz", tmp_path / "part.npz")


def test_resume_takes_the_settings_of_the_checkpoint(capsys, monkeypatch, tmp_path):
    argv = ["train", "--data", "sample", "--no-progress", "--checkpoint", "c.npz"]
    original = cli._schedule_lr

    def stop_before_epoch_2(base_lr, epoch, epochs, schedule):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(base_lr, epoch, epochs, schedule)

    with monkeypatch.context() as m:
        m.setattr(cli, "_schedule_lr", stop_before_epoch_2)
        code, _, _ = run(capsys, *argv, "--limit", "400", "--epochs", "3", "--batch-size",
                         "100", "--schedule", "none", "--hidden", "16", "--optimizer", "sgd",
                         "--lr", "0.03")
    assert code == 130
    code, out, _ = run(capsys, *argv, "--resume", "--limit", "100", "--lr", "0.5")
    assert code == 0
    for note in ("--limit 400 (not 100)", "--batch-size 100 (not 128)", "--lr 0.03 (not 0.5)",
                 "--schedule none (not cosine)", "--optimizer sgd (not adam)",
                 "--hidden [16] (not [256, 128])"):
        assert f"note: resuming with the checkpoint's {note}" in out
    assert "400 training images" in out
    assert "SGD(lr=0.03" in out
    assert [(m[1], m[2], m[7]) for m in epoch_lines(out)] == [("2", "3", "3.00e-02"),
                                                             ("3", "3", "3.00e-02")]


def test_resume_with_more_epochs_extends_a_run(capsys, tmp_path):
    # a finished run with --save: --resume --epochs 3 trains epochs 2 and 3 from its state,
    # and says so; the result is the run of 3 epochs with the same schedule-free recipe
    argv = ["train", "--data", "sample", "--limit", "300", "--batch-size", "100",
            "--hidden", "16", "--schedule", "none", "--no-progress"]
    assert run(capsys, *argv, "--epochs", "1", "--save", "short.npz")[0] == 0
    code, out, _ = run(capsys, *argv, "--epochs", "3", "--save", "short.npz", "--resume")
    assert code == 0
    assert "note: training 3 epochs, not the checkpoint's 1" in out
    assert "resumed from short.npz: 1 of 3 epochs done" in out
    assert [m[1] for m in epoch_lines(out)] == ["2", "3"]
    assert run(capsys, *argv, "--epochs", "3", "--save", "long.npz")[0] == 0
    assert_same_arrays(tmp_path / "short.npz", tmp_path / "long.npz")
    # fewer epochs than are done: the checkpoint's count, said so
    code, out, _ = run(capsys, *argv, "--epochs", "2", "--save", "long.npz", "--resume")
    assert code == 0 and "note: resuming with the checkpoint's --epochs 3 (not 2" in out


@needs_cnn
def test_resume_of_a_cnn_without_repeating_model_cnn(capsys, monkeypatch, tmp_path):
    """The checkpoint says cnn: the data must come as images although --model is not given."""
    argv = ["train", "--data", "sample", "--limit", "128", "--epochs", "2", "--batch-size",
            "64", "--no-progress", "--checkpoint", "c.npz"]
    with monkeypatch.context() as m:
        interrupt_at_step(m, nn.Adam, 3)
        assert run(capsys, *argv, "--model", "cnn")[0] == 130
    code, out, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert "note: resuming with the checkpoint's --model cnn (not mlp)" in out
    assert [m[1] for m in epoch_lines(out)] == ["2"]


def test_resume_when_every_epoch_is_done_only_evaluates(capsys, tmp_path):
    argv = ["train", "--data", "sample", "--limit", "200", "--epochs", "1", "--hidden", "16",
            "--no-progress"]
    code, first, _ = run(capsys, *argv)
    assert code == 0
    code, out, err = run(capsys, *argv, "--resume")
    assert code == 2 and "no checkpoint at" in err      # a finished run's is gone
    code, first, _ = run(capsys, *argv, "--save", "m.npz")
    code, out, _ = run(capsys, *argv, "--save", "m.npz", "--resume")
    assert code == 0
    assert "resumed from m.npz: 1 of 1 epochs done" in out
    assert not epoch_lines(out)
    assert final_line(out).group(1, 2) == final_line(first).group(1, 2)


def test_resume_without_a_checkpoint_names_the_path(capsys, tmp_path):
    os.mkdir(tmp_path / "sub")
    code, out, err = run(capsys, "train", "--data", "sample", "--resume", "--save",
                         "sub/model.npz")
    assert code == 2
    assert (f"nnscratch: error: --resume: no checkpoint at {cached_checkpoint('sub/model.npz')} "
            f"and no sub/model.npz") in err
    code, out, err = run(capsys, "train", "--data", "sample", "--resume")
    assert code == 2 and f"no checkpoint at {cached_checkpoint()}" in err
    assert files_in(tmp_path) == ["sub"]


@pytest.mark.parametrize("content", ["garbage", "model"])
def test_resume_from_a_file_that_is_no_checkpoint(capsys, tmp_path, content):
    path = tmp_path / "c.npz"
    if content == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        nn.Sequential(nn.Linear(784, 10)).save(path)
    code, _, err = run(capsys, "train", "--data", "sample", "--resume", "--checkpoint", path,
                       "--no-progress")
    assert code == 2
    assert f"--resume: {path} is not a usable nnscratch train checkpoint" in err
    assert "Traceback" not in err


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["--epochs", "2.5"], "argument --epochs: expected a whole number"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--hidden", "12,abc"], "argument --hidden: expected comma-separated layer sizes like "
                             "256,128, got '12,abc'"),
    (["--hidden", "12,0"], "argument --hidden: layer sizes must be >= 1"),
    (["--hidden", ","], "argument --hidden: layer sizes must be >= 1"),
    (["--validation-split", "1.5"], "argument --validation-split: must be in [0, 1), got 1.5"),
    (["--validation-split", "1"], "argument --validation-split: must be in [0, 1)"),
    (["--dropout", "1"], "argument --dropout: must be in [0, 1)"),
    (["--momentum", "-0.5"], "argument --momentum: must be in [0, 1)"),
    (["--data", "unknown"], "nnscratch: error: --data unknown: neither a data set (auto, "
                            "fashion-mnist, mnist, kmnist, "),
    (["--model", "rnn"], "argument --model: invalid choice: 'rnn'"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--backend", "cuda"], "argument --backend: invalid choice: 'cuda'"),
    (["--threads", "0"], "argument --threads: must be in [1, 4096], got 0"),
    (["--limit", "0"], "argument --limit: must be >= 1, got 0"),
    (["--seed", "-3"], "argument --seed: must be >= 0, got -3"),
    (["--weight-decay", "-1"], "nnscratch: error: --weight-decay must be a finite number >= 0"),
    (["--weight-decay", "nan"], "nnscratch: error: --weight-decay must be a finite number"),
    (["--limit", "1", "--validation-split", "0.5"],
     "nnscratch: error: --validation-split 0.5 of 1 training images leaves none to train on"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_train_bad_arguments(capsys, tmp_path, argv, message):
    code, out, err = run(capsys, "train", "--data", "sample", "--no-progress", "--save",
                         "m.npz", "--plot", "p.png", *argv)
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err and not epoch_lines(out)
    assert files_in(tmp_path) == []


def test_bad_command_and_no_command(capsys):
    code, _, err = run(capsys, "fly")
    assert code == 2 and "invalid choice: 'fly'" in err
    code, _, err = run(capsys)
    assert code == 2 and "required: COMMAND" in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"nnscratch {nn.__version__}"


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """No data set to be found (empty $NNSCRATCH_DATA and cache) and no download possible."""
    empty, cache = tmp_path / "empty-data", tmp_path / "empty-cache"
    empty.mkdir()
    cache.mkdir()
    monkeypatch.setenv("NNSCRATCH_DATA", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))

    def no_download(*args, **kwargs):
        raise AssertionError("the CLI tried to download")

    monkeypatch.setattr(datasets, "download_dataset", no_download)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_download)
    return empty, cache


def test_train_mnist_absent(capsys, tmp_path, no_data_anywhere):
    code, out, err = run(capsys, "train", "--data", "mnist", "--save", "m.npz",
                         "--no-progress")
    assert code == 2
    assert "nnscratch: error: mnist not found; looked in" in err
    assert str(no_data_anywhere[0]) in err and str(no_data_anywhere[1]) in err
    assert "add --download to fetch it, or use --data sample" in err
    assert out == "" and "Traceback" not in err
    assert files_in(tmp_path) == ["empty-cache", "empty-data"]
    assert all(not os.listdir(d) for d in no_data_anywhere)


def test_train_data_path_without_the_files(capsys, tmp_path):
    (tmp_path / "nodata").mkdir()
    code, _, err = run(capsys, "train", "--data", "fashion-mnist", "--data-path", "nodata",
                       "--no-progress")
    assert code == 2
    assert "nodata lacks train-images-idx3-ubyte.gz" in err
    assert files_in(tmp_path) == ["nodata"]


def test_train_data_path_with_a_damaged_file(capsys, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(20))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
    good = gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + bytes(10))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:-6])    # truncated gzip
    code, out, err = run(capsys, "train", "--data", "fashion-mnist", "--data-path", folder,
                         "--no-progress", "--save", "m.npz")
    assert code == 2
    assert "t10k-labels-idx1-ubyte.gz" in err and "Traceback" not in err
    assert files_in(tmp_path) == ["data"]


def test_train_that_diverges_is_a_clean_error(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--data", "sample", "--limit", "500", "--epochs", "2",
                         "--optimizer", "sgd", "--lr", "1e4", "--no-progress", "--save", "m.npz")
    assert code == 2
    assert "nnscratch: error: training diverged in epoch 1/2" in err
    assert "lower the learning rate" in err and "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()


def test_exit_codes_of_the_real_command():
    def nnscratch(*argv):
        return subprocess.run([sys.executable, "-m", "nnscratch.cli", *argv],
                              capture_output=True, text=True, timeout=120)

    bad = nnscratch("train", "--epochs", "-1")
    assert bad.returncode == 2
    assert "argument --epochs: must be >= 0, got -1" in bad.stderr
    assert bad.stdout == ""
    bad = nnscratch("train", "--data", "sample", "--resume", "--checkpoint",
                    os.devnull + "-missing")
    assert bad.returncode == 2 and "no checkpoint at" in bad.stderr
    ok = nnscratch("info")
    assert ok.returncode == 0 and ok.stdout.startswith("nnscratch ")
    assert nnscratch().returncode == 2


# --- evaluate -------------------------------------------------------------------------------

def parse_confusion(out):
    lines = out.splitlines()
    start = lines.index("confusion matrix (row: true class, column: predicted):")
    assert lines[start + 1].split() == [str(j) for j in range(10)]
    rows = [line.split() for line in lines[start + 2:start + 12]]
    assert [int(r[0]) for r in rows] == list(range(10))
    return np.array([[int(v) for v in r[1:]] for r in rows])


def test_evaluate_accuracy_per_class_and_confusion_matrix(capsys, trained):
    code, out, _ = run(capsys, "evaluate", trained["model"], "--data", "sample")
    assert code == 0
    assert out.startswith("data: sample from ") and "(1000 test images)" in out
    accuracy = re.search(r"^test accuracy (\d\.\d{4})$", out, re.M)[1]
    assert accuracy == final_line(trained["out"])[1]
    per_class = re.findall(r"^  (\d) (.{12}) (\d\.\d{4})  \((\d+)/(\d+)\)$", out, re.M)
    assert [int(k) for k, *_ in per_class] == list(range(10))
    assert [name.strip() for _, name, *_ in per_class] == cli.FASHION_CLASSES
    matrix = parse_confusion(out)
    assert matrix.sum() == SAMPLE_TEST_COUNT
    assert (matrix.sum(axis=1) == 100).all()            # the sample: 100 per class
    assert f"{np.trace(matrix) / SAMPLE_TEST_COUNT:.4f}" == accuracy
    for k, (_, _, acc, hits, total) in enumerate(per_class):
        assert int(hits) == matrix[k, k] and int(total) == matrix[k].sum()
        assert acc == f"{matrix[k, k] / matrix[k].sum():.4f}"
    # the same predictions as the model's own
    model = nn.load(trained["model"])
    _, (X_test, y_test) = datasets.load_sample()
    expected = nn.metrics.confusion_matrix(y_test, model.predict(X_test), 10)
    np.testing.assert_array_equal(matrix, expected)
    # precision, recall and F1 per class (recall = per-class accuracy), then macro averages
    start = out.splitlines().index("per-class precision, recall, F1:")
    rows = [line.split() for line in out.splitlines()[start + 1:start + 11]]
    assert [int(r[0]) for r in rows] == list(range(10))
    prf = np.array([[float(v) for v in r[-3:]] for r in rows])      # (10, 3)
    hits, predicted, support = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    np.testing.assert_allclose(prf[:, 0], np.where(predicted, hits / np.maximum(predicted, 1),
                                                    0), atol=5e-5)
    assert [f"{v:.4f}" for v in prf[:, 1]] == [acc for *_, acc, _, _ in per_class]
    np.testing.assert_allclose(prf[:, 2], 2 * hits / (predicted + support), atol=5e-5)
    macro = re.search(r"^macro precision (\d\.\d{4})  recall (\d\.\d{4})  F1 (\d\.\d{4})$",
                      out, re.M)
    expected = nn.metrics.precision_recall_f1(y_test, model.predict(X_test), "macro")
    assert list(macro.groups()) == [f"{v:.4f}" for v in expected]


def test_evaluate_plot_and_backend_numpy(capsys, tmp_path, trained):
    code, out, _ = run(capsys, "evaluate", trained["model"], "--data", "sample", "--plot",
                       "cm.png", "--backend", "numpy")
    assert code == 0
    assert "confusion matrix plot: cm.png" in out
    data = (tmp_path / "cm.png").read_bytes()
    assert data.startswith(_png.SIGNATURE) and len(data) > 10_000
    assert nn.get_backend() == "numpy"


def test_evaluate_reads_a_checkpoint_as_a_model(capsys, trained):
    # (the --save file of `nnscratch train` is a checkpoint too: it holds the training state)
    assert checkpoint.META_KEY in arrays_of(trained["model"])
    code, out, _ = run(capsys, "evaluate", trained["model"], "--data", "sample")
    assert code == 0
    assert re.search(r"^test accuracy (\d\.\d{4})$", out, re.M)[1] == \
        final_line(trained["out"])[1]


def test_evaluate_plot_without_matplotlib(capsys, monkeypatch, trained, tmp_path):
    with no_matplotlib(monkeypatch):
        code, out, err = run(capsys, "evaluate", trained["model"], "--data", "sample",
                             "--plot", "cm.png")
    assert code == 2 and 'pip install "nnscratch[plot]"' in err
    assert out == ""                 # refused before the work
    assert files_in(tmp_path) == []


def test_evaluate_bad_model_files(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "missing.npz", "--data", "sample")
    assert code == 2 and "nnscratch: error: no model file at missing.npz" in err
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run(capsys, "evaluate", "notes.txt", "--data", "sample")
    assert code == 2 and "nnscratch: error: notes.txt is not an nnscratch model file" in err
    images, _ = sample_images()
    _png.write_png(tmp_path / "digit.png", images[0])      # an image where a model belongs
    code, _, err = run(capsys, "evaluate", "digit.png", "--data", "sample")
    assert code == 2 and "digit.png is a PNG image, not an nnscratch model file" in err
    assert "pickle" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = run(capsys, "evaluate", "fake.npz", "--data", "sample")
    assert code == 2 and "cannot load fake.npz" in err and "damaged zip" in err


# --- predict --------------------------------------------------------------------------------

def expected_class(model_path, image):
    model = nn.load(model_path)
    proba = model.predict_proba(image.reshape(1, 784).astype(np.float32) / 255)
    return cli.FASHION_CLASSES[int(proba.argmax())], proba[0]


def test_predict_png_prints_a_class(capsys, tmp_path, trained):
    pytest.importorskip("PIL")         # predict reads image files with Pillow
    images, labels = sample_images()
    for i in (0, 1):
        _png.write_png(tmp_path / f"img{i}.png", images[i])
    code, out, _ = run(capsys, "predict", trained["model"], "img0.png", "img1.png")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        name, proba = expected_class(trained["model"], images[i])
        assert line.startswith(f"img{i}.png: {name}  ({name} {proba.max():.3f}, ")
        assert line.count(", ") == 2     # the top 3
    # a trained model gets most of the first sample images right
    code, out, _ = run(capsys, "predict", trained["model"],
                       write_idx(tmp_path / "many.idx", images[:20], gz=False))
    predicted = [line.split(": ")[1].split("  ")[0] for line in out.splitlines()]
    truth = [cli.FASHION_CLASSES[k] for k in labels[:20]]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.6


def test_predict_invert_top_and_classes(capsys, tmp_path, trained):
    pytest.importorskip("PIL")         # predict reads image files with Pillow
    images, _ = sample_images()
    _png.write_png(tmp_path / "plain.png", images[3])
    _png.write_png(tmp_path / "inverted.png", 255 - images[3])
    _, plain, err = run(capsys, "predict", trained["model"], "plain.png")
    assert err == ""                                   # nothing done to it, nothing said
    # a light background is inverted by itself, with a note; --invert forces it
    code, inverted, err = run(capsys, "predict", trained["model"], "inverted.png")
    assert code == 0
    assert inverted.replace("inverted.png", "plain.png") == plain
    assert err.startswith("nnscratch: note: inverted.png: light background (border mean ")
    code, forced, _ = run(capsys, "predict", trained["model"], "inverted.png", "--invert")
    assert code == 0 and forced == inverted
    _, wrong, err = run(capsys, "predict", trained["model"], "inverted.png", "--no-invert")
    assert wrong.replace("inverted.png", "plain.png") != plain
    assert "not inverted (--no-invert)" in err
    _, wrong, _ = run(capsys, "predict", trained["model"], "plain.png", "--invert")
    assert wrong != plain
    code, out, _ = run(capsys, "predict", trained["model"], "plain.png", "--top", "5",
                       "--classes", "mnist")
    assert code == 0
    top = out.split("(")[1].rstrip(")\n").split(", ")
    assert len(top) == 5 and all(entry.split()[0] in cli.MNIST_CLASSES for entry in top)
    probabilities = [float(entry.split()[1]) for entry in top]
    assert probabilities == sorted(probabilities, reverse=True)


def test_predict_colour_png_from_matplotlib(capsys, tmp_path, trained):
    pytest.importorskip("PIL")         # predict reads image files with Pillow
    from matplotlib.image import imsave

    images, _ = sample_images()
    imsave(tmp_path / "rgba.png", images[5], cmap="gray", vmin=0, vmax=255)
    _png.write_png(tmp_path / "grey.png", images[5])
    _, grey, _ = run(capsys, "predict", trained["model"], "grey.png")
    code, rgba, _ = run(capsys, "predict", trained["model"], "rgba.png")
    assert code == 0
    assert rgba.split(":")[1].split("(")[0] == grey.split(":")[1].split("(")[0]


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_predict_idx_file(capsys, tmp_path, trained, gz):
    images, _ = sample_images()
    path = write_idx(tmp_path / "few-idx3-ubyte", images[:25], gz=gz)
    code, out, _ = run(capsys, "predict", trained["model"], path)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 25                   # every result, not the first 20
    for i, line in enumerate(lines):
        name, _ = expected_class(trained["model"], images[i])
        assert line.startswith(f"{path}[{i}]: {name}  (")


def test_predict_bad_inputs_name_the_file(capsys, tmp_path, trained):
    pytest.importorskip("PIL")         # predict reads image files with Pillow
    model = trained["model"]
    _png.write_png(tmp_path / "small.png", np.zeros((28, 27), np.uint8))
    code, _, err = run(capsys, "predict", model, "small.png")
    assert code == 2
    assert "nnscratch: error: small.png: the model takes 28x28 images, this one is 27x28" in err

    (tmp_path / "notes.txt").write_text("hello, this is no image\n")
    code, _, err = run(capsys, "predict", model, "notes.txt")
    assert code == 2
    assert "notes.txt: neither an image (PNG, JPEG, BMP, GIF or WebP) nor an IDX file" in err

    (tmp_path / "broken.png").write_bytes(_png.SIGNATURE + b"\x00\x00")
    code, _, err = run(capsys, "predict", model, "broken.png")
    assert code == 2 and "broken.png" in err

    write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5))
    code, _, err = run(capsys, "predict", model, "labels-idx1-ubyte")
    assert code == 2
    assert "labels-idx1-ubyte: expected IDX images of shape (N, 28, 28), got (5,)" in err

    code, _, err = run(capsys, "predict", model, "missing.png")
    assert code == 2 and "no such file: missing.png" in err

    (tmp_path / "folder").mkdir()
    code, _, err = run(capsys, "predict", model, "folder")
    assert code == 2 and "folder: not a file" in err
    code, _, err = run(capsys, "predict", "nomodel.npz", "small.png")
    assert code == 2 and "no model file at nomodel.npz" in err
    assert "Traceback" not in err


# --- info, bench ----------------------------------------------------------------------------

def test_info(capsys, no_data_anywhere):
    code, out, _ = run(capsys, "info")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"nnscratch {nn.__version__} (numpy {np.__version__}, Python ")
    assert lines[1] == (f"backend: {nn.get_backend()}; threads: {nn.get_num_threads()} "
                        f"({nn.backend.thread_count_reason()})")
    used = [k for k, v in cnn_core.cpu_features().items() if v]
    assert lines[2] == "CPU features used: " + (", ".join(used) or "none")
    assert lines[3] == (f"GEMM micro-kernels: float32 {cnn_core.gemm_kernel_name(np.float32)}"
                        f", float64 {cnn_core.gemm_kernel_name(np.float64)}")
    assert "data mnist: not found locally (nnscratch train --data mnist --download)" in lines
    assert any(line.startswith("data fashion-mnist: ") for line in lines)
    assert lines[-1].startswith("data sample: sample from ") and "fashion_mnist_sample.npz" in \
        lines[-1]


def test_info_finds_data_in_nnscratch_data(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "d" / "mnist"
    folder.mkdir(parents=True)
    for name in datasets.FILES.values():
        (folder / name).write_bytes(b"")      # found by name; info does not read them
    monkeypatch.setenv("NNSCRATCH_DATA", str(tmp_path / "d"))
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert f"data mnist: mnist from {folder} ($NNSCRATCH_DATA)" in out


def test_bench_quick_gemm_table(capsys):
    code, out, _ = run(capsys, "bench", "--quick", "--only", "gemm")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"# nnscratch {nn.__version__}, ")
    peak = float(re.match(r"# measured float32 FMA peak: (\d+) GFLOP/s on \d+ threads",
                          lines[1]).group(1))
    assert peak > 0
    assert lines[3].split() == ["work", "nnscratch", "%", "peak", "numpy", "vs", "numpy",
                                "torch", "%", "peak", "vs", "torch"]
    rows = [line for line in lines if line.startswith("GEMM ") and "speed-up" not in line]
    assert len(rows) == 4
    torch_installed = "PyTorch not installed" not in lines[2]
    for row in rows:
        match = re.search(r"(\d+) GF/s +(\d+)% +\d+ GF/s +\d+\.\d\dx ", row)
        assert match, row
        # the % of peak column is the GFLOP/s over the measured peak; all three are printed
        # rounded to integers (+-0.5 each), which moves the quotient by up to this much (a
        # low peak, on a busy machine, makes it more than 1 point)
        gf = int(match.group(1))
        slack = 0.5 + 100 * 0.5 / peak + 100 * (gf + 0.5) * 0.5 / (peak * (peak - 0.5)) + 1e-9
        assert abs(int(match.group(2)) - 100 * gf / peak) <= slack, (row, peak)
        assert bool(re.search(r"GF/s +\d+% +\d+\.\d\dx$", row)) == torch_installed, row
    # and the thread-scaling row (when the machine has two threads to scale to)
    scaling = [line for line in lines if "speed-up from 1 to" in line]
    if (os.cpu_count() or 1) > 1:      # bench runs on os.cpu_count() threads by default
        assert len(scaling) == 1 and scaling[0].startswith("GEMM 1024^3"), scaling
        assert re.search(r"threads +\d+\.\d\dx ", scaling[0]), scaling[0]


def test_fma_peak_is_a_positive_rate():
    from nnscratch.backend import cnn_core_module

    gemm_module = cnn_core_module()._gemm
    one = max(gemm_module._fma_peak(reps=200_000, threads=1) for _ in range(3))
    assert 0.1 < one < 1e5         # GFLOP/s: a real CPU, not a broken timer
    with pytest.raises(ValueError, match="threads"):
        gemm_module._fma_peak(threads=0)


def test_evaluate_and_predict_with_models_made_for_other_data(capsys, tmp_path):
    pytest.importorskip("PIL")         # predict reads image files with Pillow
    images, _ = sample_images()
    _png.write_png(tmp_path / "x.png", images[0])
    nn.seed(0)
    nn.Sequential(nn.Linear(100, 10)).save(tmp_path / "small.npz")
    nn.Sequential(nn.Linear(784, 12)).save(tmp_path / "twelve.npz")
    nn.Sequential().save(tmp_path / "empty.npz")
    for argv, message in [
            (["evaluate", "small.npz", "--data", "sample"], "small.npz does not take 28x28 images"),
            (["predict", "small.npz", "x.png"],       # 100 inputs: 10x10 images
             "x.png: the model takes 10x10 images, this one is 28x28 (--resize"),
            (["evaluate", "twelve.npz", "--data", "sample"],
             "twelve.npz gives 12 class scores, sample has 10 classes"),
            (["evaluate", "empty.npz", "--data", "sample"], "empty.npz: the model has no layers"),
            (["predict", "empty.npz", "x.png"], "empty.npz: the model has no layers")]:
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert f"nnscratch: error: {message}" in err and "Traceback" not in err
    # predict names the classes of a 12-class model by number
    code, out, _ = run(capsys, "predict", "twelve.npz", "x.png", "--top", "12")
    assert code == 0
    shown = [entry.split()[0] for entry in out.split("(")[1].rstrip(")\n").split(", ")]
    assert sorted(shown, key=int) == [str(k) for k in range(12)]


def test_plot_weights_writes_the_first_layer_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nnscratch.cli import main

    target = tmp_path / "weights.png"
    main(["train", "--data", "sample", "--limit", "500", "--epochs", "1", "--no-progress",
          "--checkpoint", str(tmp_path / "c.npz"), "--plot-weights", str(target)])
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "first layer weights" in capsys.readouterr().out


def test_plot_weights_needs_an_mlp(tmp_path, capsys):
    from nnscratch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "sample", "--model", "cnn", "--epochs", "1",
              "--checkpoint", str(tmp_path / "c.npz"), "--plot-weights",
              str(tmp_path / "w.png")])
    assert exc.value.code == 2
    assert "--plot-weights" in capsys.readouterr().err


def test_explain_prints_one_training_step(capsys):
    from nnscratch.cli import main

    main(["explain", "--activation", "sigmoid", "--lr", "0.5"])
    out = capsys.readouterr().out
    for text in ("z1 = X @ W1 + b1", "forward propagation", "loss", "dL/dW1"):
        assert text in out, text


def test_lr_find_prints_a_sweep_and_trains_nothing(tmp_path, capsys):
    from nnscratch.cli import main

    ckpt = tmp_path / "c.npz"
    main(["train", "--data", "sample", "--limit", "1000", "--lr-find", "--optimizer", "sgd",
          "--no-progress", "--checkpoint", str(ckpt)])
    out = capsys.readouterr().out
    assert "too high" in out and "lr" in out
    assert "test accuracy" not in out and not ckpt.exists()


def test_bench_memory_row_reports_each_contenders_training_peak(capsys):
    from nnscratch.cli import main

    main(["bench", "--quick", "--only", "memory"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "peak memory of training" in line]
    assert [row.split(",")[0] for row in rows] == ["MLP 784-256-128-10", "ResNet-20"], out
    from nnscratch.bench import _try_torch

    # nnscratch's and the others' (the MLP's: NumPy and PyTorch; the ResNet's: PyTorch)
    others = (1, 0) if _try_torch() is None else (2, 1)
    for row, count in zip(rows, others):
        values = re.findall(r"([\d.]+) MiB", row)
        assert len(values) == 1 + count and all(float(v) > 0 for v in values), row


def test_bench_torch_twin_of_the_cli_cnn_computes_the_same():
    # the bench's PyTorch contender for `train --model cnn` must be the same network
    torch = pytest.importorskip("torch")
    from nnscratch.bench import _torch_twin
    from nnscratch.cli import build_model

    nn.seed(0)
    model = build_model("cnn")
    model.layers[1].running_mean[...] = 0.1          # eval mode uses the copied statistics
    model.layers[1].running_var[...] = 2.0
    twin = _torch_twin(torch, model).eval()
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-4)
