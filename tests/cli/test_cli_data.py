"""`nnscratch train --data`: every data set nnscratch.datasets loads (files the tests write,
read with --data-path), a folder of the user's images, the augmentation each gets, the
class names in the output, the pixels kept as uint8, and bad --data values (one line, exit
status 2)."""
import gzip
import struct

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import cli, datasets
from test_cli import _isolated, run   # noqa: F401  (an empty folder and cache per test)


def _images(n, classes, seed):
    """uint8 (n, 28, 28) images whose brightness tells the class, and labels 0..classes-1
    (every class present)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    X = rng.integers(0, 60, size=(n, 28, 28)) + (190 * y / max(1, classes - 1))[:, None, None]
    return X.astype(np.uint8), y


def _idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    raw += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


def _write(folder, name, n_train=90, n_test=30):
    """Data set `name`'s files, as its loader reads them, in `folder`; returns the uint8
    images and labels (0-based) written, upright: ((X, y), (X_test, y_test))."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = {"kmnist": 10, "mnist": 10, "fashion-mnist": 10, "k49": 49,
               "emnist-letters": 26, "emnist-balanced": 47}[name]
    parts = [_images(n_train, classes, 0), _images(n_test, classes, 1)]
    for part, (X, y) in zip(("train", "test"), parts):
        if name == "k49":
            np.savez_compressed(folder / f"k49-{part}-imgs.npz", X)
            np.savez_compressed(folder / f"k49-{part}-labels.npz", y.astype(np.uint8))
        elif name.startswith("emnist"):
            split = name.split("-")[1]
            stem = f"emnist-{split}-{part}"
            _idx(folder / f"{stem}-images-idx3-ubyte.gz", X.transpose(0, 2, 1))  # stored so
            _idx(folder / f"{stem}-labels-idx1-ubyte.gz", y + (split == "letters"))
        else:
            prefix = "train" if part == "train" else "t10k"
            _idx(folder / f"{prefix}-images-idx3-ubyte.gz", X)
            _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return parts


def _last_linear(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name, given, classes, first_class", [
    ("kmnist", "kmnist", 10, "お (o)"),
    ("k49", "kuzushiji-49", 49, "あ (a)"),
    ("emnist-letters", "emnist-letters", 26, "a"),
    ("emnist-balanced", "emnist", 47, "0"),
])
def test_train_and_evaluate_a_data_set_by_its_name(capsys, tmp_path, name, given, classes,
                                                   first_class):
    folder = tmp_path / "files"
    _write(folder, name)
    code, out, err = run(capsys, "train", "--data", given, "--data-path", folder, "--epochs",
                         "1", "--hidden", "16", "--no-progress", "--save", "m.npz")
    assert code == 0, err
    assert f"data: {name} from {folder} (given path)" in out
    assert "90 training images, 30 test images" in out
    model = nn.load("m.npz")
    assert _last_linear(model).out_features == classes          # from the data
    code, out, err = run(capsys, "evaluate", "m.npz", "--data", given, "--data-path", folder)
    assert code == 0, err
    per_class = out.split("per-class accuracy:\n")[1].splitlines()[:classes]
    assert per_class[0].split()[:2 + (" " in first_class)] == ["0", *first_class.split()]
    assert [line.split()[0] for line in per_class] == [str(k) for k in range(classes)]


def test_the_cli_trains_on_the_pixels_as_fit_does_on_the_floats(capsys, tmp_path):
    # the CLI keeps the images as uint8 (a quarter of the memory); fit takes a pixel k as
    # k / 255: the same weights, bit for bit, as a run on the loaders' floats
    folder = tmp_path / "files"
    _write(folder, "kmnist")
    code, _, err = run(capsys, "train", "--data", "kmnist", "--data-path", folder, "--epochs",
                       "1", "--hidden", "16", "--no-progress", "--save", "m.npz", "--seed", "3",
                       "--validation-split", "0.2")
    assert code == 0, err
    (X, y), (X_test, y_test) = datasets.load_kmnist(folder)
    assert X.dtype == np.float32
    nn.seed(3)
    model = cli.build_model("mlp", [16], 0.0, (1, 28, 28), 10)
    optimizer = nn.Adam(model.parameters(), lr=1e-3)
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=1,
              batch_size=128, validation_split=0.2, seed=3 * 1000, progress=False)
    saved = nn.load("m.npz")
    for a, b in zip(saved.parameters(), model.parameters()):
        assert a.data.tobytes() == b.data.tobytes()


def test_validation_split_holds_out_every_class(capsys, tmp_path):
    folder = tmp_path / "files"
    (_, y), _ = _write(folder, "kmnist", n_train=100)
    code, out, err = run(capsys, "train", "--data", "kmnist", "--data-path", folder,
                         "--epochs", "1", "--hidden", "8", "--no-progress",
                         "--validation-split", "0.2")
    assert code == 0, err
    assert "80 training images, 30 test images, 20 held out for validation" in out
    _, held_out = nn.training.validation_split_indices(y, 0.2)
    assert np.bincount(y[held_out], minlength=10).tolist() == [2] * 10


@pytest.mark.parametrize("name", datasets.DATASET_NAMES)
def test_augment_flips_clothes_but_not_digits_or_letters(name):
    transform = cli._augmentation(name, (1, 28, 28), flat=True)
    kinds = [type(t).__name__ for t in transform.transforms]
    flips = name in ("fashion-mnist", "sample")
    assert kinds == ["RandomCrop"] + (["RandomHorizontalFlip"] if flips else [])
    assert [type(t).__name__ for t in cli._augmentation("folder", (1, 28, 28), False)
            .transforms] == ["RandomCrop"]


def test_augment_on_kmnist_prints_crops_only(capsys, tmp_path):
    folder = tmp_path / "files"
    _write(folder, "kmnist")
    code, out, err = run(capsys, "train", "--data", "kmnist", "--data-path", folder,
                         "--epochs", "1", "--hidden", "8", "--no-progress", "--augment")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("augment: "))
    assert "RandomCrop" in line and "Flip" not in line


# ---------------------------------------------------------------------------
# --data FOLDER: one subfolder per class
# ---------------------------------------------------------------------------

def _image_folder(root, per_class=10, names=("cat", "dog", "fox"), seed=0):
    """PNG images, one folder per class, a class told by its brightness; dark objects on a
    light background (so read inverted, as predict reads them)."""
    pytest.importorskip("PIL")
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.full((28, 28), 255, np.uint8)
            image[6:22, 6:22] = rng.integers(0, 40, size=(16, 16)) + 70 * k
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return list(names)


def test_train_evaluate_and_predict_on_a_folder_of_images(capsys, tmp_path):
    classes = _image_folder(tmp_path / "pets")
    code, out, err = run(capsys, "train", "--data", "pets", "--epochs", "3", "--hidden", "16",
                         "--lr", "0.01", "--no-progress", "--save", "m.npz")
    assert code == 0, err
    assert "data: your images in pets (20% of each class held out for testing)" in out
    assert "24 training images, 6 test images" in out
    model = nn.load("m.npz")
    assert _last_linear(model).out_features == 3
    # evaluate holds out the same images, and names the classes by their folders
    code, out, err = run(capsys, "evaluate", "m.npz", "--data", "pets")
    assert code == 0, err
    assert "(6 test images)" in out
    per_class = out.split("per-class accuracy:\n")[1].splitlines()[:3]
    assert [line.split()[1] for line in per_class] == classes
    assert all(line.endswith("/2)") for line in per_class)        # 20% of 10 per class
    # predict names the classes the model was trained on (kept in the saved file)
    image = tmp_path / "pets" / "fox" / "000.png"
    code, out, err = run(capsys, "predict", "m.npz", image)
    assert code == 0, err
    ranked = out.split("(")[1].rstrip(")\n").split(", ")         # "cat 0.123", ...
    assert sorted(entry.split()[0] for entry in ranked) == classes


def test_a_folder_with_train_and_test_subfolders_is_that_split(capsys, tmp_path):
    _image_folder(tmp_path / "mine" / "train", per_class=6)
    _image_folder(tmp_path / "mine" / "test", per_class=2, seed=1)
    code, out, err = run(capsys, "train", "--data", "mine", "--epochs", "1", "--hidden", "8",
                         "--no-progress", "--augment")
    assert code == 0, err
    assert "data: your images in mine (its train/ and test/ subfolders)" in out
    assert "18 training images, 6 test images" in out
    assert "augment: RandomCrop" in out and "Flip" not in out
    # a folder named like a data set: ./name is the folder
    _image_folder(tmp_path / "mnist", per_class=5)
    code, out, err = run(capsys, "train", "--data", "./mnist", "--epochs", "1", "--hidden", "8",
                         "--no-progress")
    assert code == 0, err
    assert "data: your images in ./mnist" in out


@pytest.mark.parametrize("make, argv, message", [
    (None, ["--data", "nothere"],
     "nnscratch: error: --data nothere: neither a data set (auto, fashion-mnist, mnist, "
     "kmnist, emnist-balanced"),
    ("file", ["--data", "notes.txt"], "nnscratch: error: --data notes.txt: a file; give a data "
                                      "set's name or a folder"),
    ("empty", ["--data", "empty"], "nnscratch: error: --data empty: empty: no class folders"),
    ("no-images", ["--data", "classes"], "nnscratch: error: --data classes: classes/b: no "
                                         "images in the folder of class 'b'"),
    ("few", ["--data", "few"], "nnscratch: error: --data few: 2 images are too few to hold "
                               "out 20% for testing"),
    ("mismatch", ["--data", "split"], "nnscratch: error: --data split: train/ and test/ must "
                                      "hold the same class folders"),
    ("pets", ["--data", "pets", "--data-path", "pets"], "nnscratch: error: --data-path is for "
                                                        "the named data sets"),
    ("not-an-image", ["--data", "bad"], "nnscratch: error: --data bad: "),
    (None, ["--data", "kmnist"], "nnscratch: error: kmnist not found"),
])
def test_bad_data_is_one_line_and_exit_status_2(capsys, tmp_path, monkeypatch, make, argv,
                                                message):
    monkeypatch.delenv("NNSCRATCH_DATA", raising=False)     # (kmnist: found nowhere)
    if make == "file":
        (tmp_path / "notes.txt").write_text("hello")
    elif make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "no-images":
        _image_folder(tmp_path / "classes", per_class=2, names=("a",))
        (tmp_path / "classes" / "b").mkdir()
        (tmp_path / "classes" / "b" / "readme.txt").write_text("no images here")
    elif make == "few":
        _image_folder(tmp_path / "few", per_class=1, names=("a", "b"))
    elif make == "mismatch":
        _image_folder(tmp_path / "split" / "train", per_class=2, names=("a", "b"))
        _image_folder(tmp_path / "split" / "test", per_class=2, names=("a", "c"))
    elif make == "pets":
        _image_folder(tmp_path / "pets", per_class=2)
    elif make == "not-an-image":
        _image_folder(tmp_path / "bad", per_class=2, names=("a", "b"))
        (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png at all")
    code, out, err = run(capsys, "train", *argv, "--epochs", "1", "--no-progress")
    assert code == 2, (out, err)
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err and "epoch " not in out
    code, _, err = run(capsys, "evaluate", "m.npz", *argv)        # (no model: says so first)
    assert code == 2 and "Traceback" not in err


def test_resume_keeps_a_named_data_set_and_a_folder(capsys, tmp_path):
    folder = tmp_path / "files"
    _write(folder, "emnist-letters")
    argv = ["train", "--data", "emnist-letters", "--data-path", folder, "--hidden", "8",
            "--no-progress", "--checkpoint", "c.npz"]
    code, _, err = run(capsys, *argv, "--epochs", "1")
    assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", "--checkpoint", "c.npz", "--epochs", "2",
                         "--no-progress")
    assert code == 0, err
    assert "note: resuming with the checkpoint's --data emnist-letters" in out
    assert "resumed from c.npz: 1 of 2 epochs done" in out
    _image_folder(tmp_path / "pets")
    code, _, err = run(capsys, "train", "--data", "pets", "--hidden", "8", "--no-progress",
                       "--checkpoint", "p.npz", "--epochs", "1")
    assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", "--checkpoint", "p.npz", "--epochs", "2",
                         "--no-progress")
    assert code == 0, err
    assert "note: resuming with the checkpoint's --data pets" in out


def test_predict_names_classes_by_data_set_or_saved_names(capsys, tmp_path):
    model = nn.Sequential(nn.Linear(784, 26))
    model.save("plain.npz")
    X, _ = _images(1, 2, 0)
    image = tmp_path / "x.idx.gz"
    _idx(image, X)
    code, out, err = run(capsys, "predict", "plain.npz", image, "--classes", "emnist-letters")
    assert code == 0, err
    assert out.split(": ")[1].split()[0] in list("abcdefghijklmnopqrstuvwxyz")
    code, out, _ = run(capsys, "predict", "plain.npz", image)       # no names kept: numbers
    assert out.split(": ")[1].split()[0].isdigit()
    code, _, err = run(capsys, "predict", "plain.npz", image, "--classes", "letters")
    assert code == 2 and "argument --classes: invalid choice: 'letters'" in err
