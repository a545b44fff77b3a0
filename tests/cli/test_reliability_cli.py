"""The command line answers every user error with one line and exit status 2, never a
traceback -- checked in a fresh interpreter, as a user runs it -- and checks what it can
before it trains; a run's checkpoint lives in the user cache and goes when the run is done;
--resume reads a hand-edited checkpoint as any other input.
"""
import json
import os
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import checkpoint, cli


@pytest.fixture
def env(tmp_path):
    """The environment of a command run in `tmp_path`, with a cache of its own."""
    environ = dict(os.environ)
    environ["XDG_CACHE_HOME"] = str(tmp_path / ".cache")
    environ.pop("NNSCRATCH_DATA", None)
    return environ


def nnscratch(tmp_path, env, *argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "nnscratch.cli", *map(str, argv)],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith(("nnscratch: error: ", "nnscratch train: error: ",
                                 "nnscratch predict: error: ")), lines
    assert len([line for line in lines if "error:" in line]) == 1, lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


TRAIN = ["train", "--data", "sample", "--limit", "200", "--epochs", "1", "--hidden", "16",
         "--no-progress"]


@pytest.mark.parametrize("argv, fragments", [
    (["--threads", "100000"], ["--threads", "[1, 4096]"]),
    (["--hidden", "1000000000"], ["--hidden", "<= 1,048,576"]),
    (["--hidden", "1000000,1000000"], ["--hidden", "GiB"]),
    (["--save", "/nonexistent/m.npz"], ["--save", "no folder /nonexistent"]),
    (["--save", "."], ["--save", "is a folder"]),
    (["--plot", "/nonexistent/p.png"], ["--plot", "no folder"]),
    (["--checkpoint", "/nonexistent/c.npz"], ["--checkpoint", "no folder"]),
    (["--save", "x" * 300 + ".npz"], ["--save", "longer than"]),
])
def test_bad_train_arguments_are_refused_before_training(tmp_path, env, argv, fragments):
    result = nnscratch(tmp_path, env, *TRAIN, *argv)
    one_line_error(result, *fragments)
    assert "epoch" not in result.stdout          # refused before any training
    assert not (tmp_path / ".cache" / "nnscratch" / "checkpoints").exists()


def test_a_download_without_a_network_is_one_line(tmp_path, env):
    with socket.socket() as s:                   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["NNSCRATCH_MIRRORS"] = f"http://127.0.0.1:{port}/"
    result = nnscratch(tmp_path, env, "train", "--data", "mnist", "--download", "--epochs",
                       "1", "--no-progress")
    one_line_error(result, "could not download")


def test_predict_an_idx_file_without_images(tmp_path, env):
    nn.seed(0)
    nn.models.mlp(hidden=(8,)).save(tmp_path / "m.npz")
    (tmp_path / "empty.idx").write_bytes(struct.pack(">HBBIII", 0, 8, 3, 0, 28, 28))
    one_line_error(nnscratch(tmp_path, env, "predict", "m.npz", "empty.idx"), "no images")


@pytest.mark.parametrize("side, said", [(100000, "10,000,000,000 pixels"),
                                        (30000, "900,000,000 pixels"),
                                        (6000, "6000x6000 = 36,000,000 pixels")])
def test_predict_refuses_a_huge_png_by_its_header(tmp_path, env, monkeypatch, side, said):
    """A few kilobytes declaring a gigantic image (a decompression bomb): one line, exit
    2, at once -- with or without --resize -- and nothing decoded (in-process: Pillow's
    decoding is made to fail the test)."""
    import time

    pytest.importorskip("PIL")
    from PIL import ImageFile
    from conftest import png_with_header

    nn.seed(0)
    nn.models.mlp(hidden=(8,)).save(tmp_path / "m.npz")
    png_with_header(tmp_path / "huge.png", side, side)
    assert (tmp_path / "huge.png").stat().st_size < 10_000        # a few kilobytes
    for extra in ([], ["--resize"]):
        start = time.perf_counter()
        result = nnscratch(tmp_path, env, "predict", "m.npz", "huge.png", *extra, timeout=30)
        one_line_error(result, "huge.png: the image declares", said, "refused before decoding")
        assert time.perf_counter() - start < 20
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(SystemExit) as caught:
        cli.main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "huge.png"), "--resize"])
    assert caught.value.code == 2


def test_evaluate_an_image_instead_of_a_model(tmp_path, env):
    from nnscratch import _png

    _png.write_png(tmp_path / "pil_L.png", np.zeros((28, 28), np.uint8))
    line = one_line_error(nnscratch(tmp_path, env, "evaluate", "pil_L.png", "--data",
                                    "sample"), "not an nnscratch model file")
    assert "pickle" not in line


def test_a_run_keeps_no_checkpoint_in_the_working_folder(tmp_path, env):
    result = nnscratch(tmp_path, env, *TRAIN)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache"]
    assert os.listdir(tmp_path / ".cache" / "nnscratch" / "checkpoints") == []
    result = nnscratch(tmp_path, env, *TRAIN, "--save", "m.npz")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "m.npz"]


# --- hand-edited checkpoints ----------------------------------------------------------------

def _edited_checkpoint(tmp_path, edit_meta=None, edit_arrays=None):
    """A checkpoint of a 1-epoch run, its record (or arrays) edited."""
    path = tmp_path / "c.npz"
    argv = [*TRAIN, "--epochs", "2", "--checkpoint", str(path)]
    argv.remove("--epochs")
    argv.remove("1")
    assert cli.main(argv) == 0
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    document = json.loads(arrays[checkpoint.META_KEY].tobytes())
    if edit_meta is not None:
        edit_meta(document)
    arrays[checkpoint.META_KEY] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    if edit_arrays is not None:
        edit_arrays(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _set(*keys, value):
    def edit(document):
        node = document
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


EDITS = {
    "args as a list": _set("meta", "args", value=["mlp"]),
    "batch_size 0": _set("meta", "args", "batch_size", value=0),
    "batch_size 'x'": _set("meta", "args", "batch_size", value="x"),
    "base_lr 'abc'": _set("meta", "base_lr", value="abc"),
    "base_lr NaN": _set("meta", "base_lr", value=float("nan")),
    "base_lr negative": _set("meta", "base_lr", value=-1.0),
    "rng 2**200": _set("meta", "rng", "state", "state", value=2 ** 200),
    "rng not a dict": _set("meta", "rng", value=[1, 2]),
    "unknown model": _set("meta", "args", "model", value="transformer"),
    "unknown data": _set("meta", "args", "data", value="imagenet"),
    "epoch -1": _set("meta", "epoch", value=-1),
    "epoch 'two'": _set("meta", "epoch", value="two"),
    "epoch beyond epochs": _set("meta", "epoch", value=99),
    "epochs 2**70": _set("meta", "args", "epochs", value=2 ** 70),
    "hidden [0]": _set("meta", "args", "hidden", value=[0]),
    "hidden 'big'": _set("meta", "args", "hidden", value="big"),
    "lr 0": _set("meta", "args", "lr", value=0),
    "momentum 7": _set("meta", "args", "momentum", value=7),
    "dropout 1": _set("meta", "args", "dropout", value=1.0),
    "seed -3": _set("meta", "args", "seed", value=-3),
    "limit 0": _set("meta", "args", "limit", value=0),
    "validation_split 2": _set("meta", "args", "validation_split", value=2.0),
    "history a list": _set("meta", "history", value=[1, 2]),
    "history of strings": _set("meta", "history", value={"loss": ["x"]}),
    "optimizer scalars step -5": lambda d: [s.update(step=-5) for s in d["optimizer"]["scalars"]],
    "optimizer lr 'fast'": _set("optimizer", "lr", value="fast"),
    "optimizer type SGD": _set("optimizer", "type", value="SGD"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_resume_from_a_hand_edited_checkpoint_is_one_line(tmp_path, env, monkeypatch, edit):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    backend, threads = nn.get_backend(), nn.get_num_threads()
    try:
        path = _edited_checkpoint(tmp_path, EDITS[edit])
    finally:
        nn.set_backend(backend)
        nn.set_num_threads(threads)
    result = nnscratch(tmp_path, env, *TRAIN, "--checkpoint", path, "--resume")
    one_line_error(result, "--resume")
