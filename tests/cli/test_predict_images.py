"""`nnscratch predict` on image files of every kind: the same class as the 28x28 grey original.

A small MLP is trained here on the bundled Fashion-MNIST sample (about a second); three
test images it classifies with confidence are then written by Pillow as PNG, JPEG, BMP, GIF
and WebP files, grey, RGB, RGBA, palette and 16-bit, at 28x28 and larger, on black and on a
light background -- and predict must give each the class of its original. Then: the notes
(resized, inverted), --resize and --no-invert, every result printed, the CSV of --out
(complete, atomic), input sizes of other models, and life without Pillow.
"""
import csv
import os
import struct

import numpy as np
import pytest

import nnscratch as nn
from conftest import run_cli, without_package
from nnscratch import _random, cli, datasets

Image = pytest.importorskip("PIL.Image")
from PIL import features  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend, threads, state = nn.get_backend(), nn.get_num_threads(), _random.get_state()
    yield
    nn.set_backend(backend)
    nn.set_num_threads(threads)
    _random.set_state(state)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model file, [three 28x28 uint8 test images of different classes it is sure of])."""
    state = _random.get_state()
    nn.seed(0)
    (X, y), _ = datasets.load_sample()
    model = nn.models.mlp(hidden=(64,))
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.Adam(model.parameters(), lr=2e-3),
              epochs=3, batch_size=64, seed=0, progress=False)
    _random.set_state(state)
    with np.load(datasets.SAMPLE_PATH) as z:
        pictures, labels = z["X_test"], z["y_test"]
    proba = model.predict_proba(pictures.reshape(len(pictures), -1) / np.float32(255))
    chosen, classes = [], set()
    for i in np.argsort(-proba.max(axis=1)):
        if proba[i].argmax() == labels[i] and labels[i] not in classes:
            chosen.append(i)
            classes.add(labels[i])
        if len(chosen) == 3:
            break
    assert proba[chosen].max(axis=1).min() > 0.97
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model.save(path)
    return path, [pictures[i] for i in chosen]


run = run_cli   # (exit status, stdout, stderr) of `nnscratch *argv`


def predicted(out):
    """{file: (class name, the whole line)} of predict's output."""
    lines = out.splitlines()
    return {line.split(": ")[0]: (line.split(": ")[1].split("  ")[0], line) for line in lines}


def rgb(g):
    return np.dstack([g] * 3)


def grey_palette(g):
    p = Image.frombytes("P", g.shape[::-1], g.tobytes())
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    return p


def bigger(im, side, resample=Image.NEAREST):
    return im.resize((side, side), resample)


# name -> (Pillow image from the 28x28 grey original, extension, save options); "exact": the
# file holds the original's very pixels, so predict prints the original's very line
VARIANTS = {
    "png-L-28-exact": lambda g: (Image.fromarray(g), "png", {}),
    "png-I16-28-exact": lambda g: (Image.fromarray(g.astype(np.uint16) * 257), "png", {}),
    "png-P-28-exact": lambda g: (grey_palette(g), "png", {}),
    "png-RGBA-28-exact": lambda g: (Image.fromarray(np.dstack([rgb(g), np.full_like(g, 255)])),
                                    "png", {}),
    "png-P-56": lambda g: (bigger(grey_palette(g), 56), "png", {}),
    "png-RGB-100": lambda g: (bigger(Image.fromarray(rgb(g)), 100, Image.BICUBIC), "png", {}),
    "png-I16-84": lambda g: (bigger(Image.fromarray(g.astype(np.uint16) * 257), 84), "png",
                             {}),
    "png-ink-on-transparency-28": lambda g: (Image.fromarray(np.dstack(
        [np.full((28, 28, 3), 255, np.uint8), g])), "png", {}),
    "png-dark-ink-on-transparency-56": lambda g: (bigger(Image.fromarray(np.dstack(
        [np.zeros((28, 28, 3), np.uint8), g])), 56), "png", {}),
    "jpeg-L-28": lambda g: (Image.fromarray(g), "jpg", {"quality": 95}),
    "jpeg-RGB-84": lambda g: (bigger(Image.fromarray(rgb(g)), 84), "jpg", {"quality": 90}),
    "bmp-L-28-exact": lambda g: (Image.fromarray(g), "bmp", {}),
    "bmp-RGB-56": lambda g: (bigger(Image.fromarray(rgb(g)), 56), "bmp", {}),
    "gif-P-28-exact": lambda g: (grey_palette(g), "gif", {}),
    "gif-P-84": lambda g: (bigger(grey_palette(g), 84), "gif", {}),
    "webp-lossless-RGBA-56": lambda g: (bigger(Image.fromarray(np.dstack(
        [rgb(g), np.full_like(g, 255)])), 56), "webp", {"lossless": True}),
    "webp-RGB-28": lambda g: (Image.fromarray(rgb(g)), "webp", {"quality": 90}),
    "png-light-28-exact": lambda g: (Image.fromarray(255 - g), "png", {}),
    "jpeg-light-RGB-84": lambda g: (bigger(Image.fromarray(rgb(255 - g)), 84), "jpg",
                                    {"quality": 90}),
    "webp-light-L-56": lambda g: (bigger(Image.fromarray(255 - g), 56), "webp",
                                  {"lossless": True}),
}


def write_variant(folder, kind, pictures):
    files = []
    for k, g in enumerate(pictures):
        im, ext, options = VARIANTS[kind](g)
        path = folder / f"{kind}-{k}.{ext}"
        im.save(path, **options)
        files.append(path.name)
    return files


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_every_kind_of_file_gets_the_class_of_its_original(capsys, tmp_path, trained, kind):
    if "webp" in kind and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    model, pictures = trained
    originals = []
    for k, g in enumerate(pictures):
        Image.fromarray(g).save(tmp_path / f"original-{k}.png")
        originals.append(f"original-{k}.png")
    code, out, err = run(capsys, "predict", model, *originals)
    assert code == 0 and err == ""
    truth = predicted(out)
    files = write_variant(tmp_path, kind, pictures)
    code, out, err = run(capsys, "predict", model, *files, "--resize")
    assert code == 0, err
    got = predicted(out)
    assert list(got) == files                               # one line each, in order
    for original, file in zip(originals, files):
        assert got[file][0] == truth[original][0], (file, got[file][1], truth[original][1])
        if kind.endswith("-exact"):
            assert got[file][1].replace(file, original) == truth[original][1]
        side = int(kind.split("-")[-2] if kind.endswith("-exact") else kind.split("-")[-1])
        resized = f"nnscratch: note: {file}: resized {side}x{side} -> 28x28\n"
        assert (resized in err) == (side != 28), err
        inverted = f"nnscratch: note: {file}: light background (border mean "
        assert (inverted in err) == ("light" in kind or "dark-ink" in kind), err
    notes_per_file = (side != 28) + ("light" in kind or "dark-ink" in kind)
    assert len(err.splitlines()) == notes_per_file * len(files), err


def test_no_invert_keeps_a_light_background(capsys, tmp_path, trained):
    model, pictures = trained
    g = pictures[0]
    Image.fromarray(g).save(tmp_path / "dark.png")
    Image.fromarray(255 - g).save(tmp_path / "light.png")
    _, dark, _ = run(capsys, "predict", model, "dark.png")
    code, light, err = run(capsys, "predict", model, "light.png")
    assert code == 0 and light.replace("light.png", "dark.png") == dark
    border = f"{1 - np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]]).mean() / 255:.2f}"
    assert border > "0.50"
    assert err == (f"nnscratch: note: light.png: light background (border mean {border} > "
                   f"0.5): inverted to a light object on black, as the model was trained on "
                   f"(--no-invert keeps it as it is)\n")
    code, kept, err = run(capsys, "predict", model, "light.png", "--no-invert")
    assert code == 0 and kept.replace("light.png", "dark.png") != dark
    assert err == (f"nnscratch: note: light.png: light background (border mean {border}), "
                   f"not inverted (--no-invert)\n")
    code, _, err = run(capsys, "predict", model, "light.png", "--invert", "--no-invert")
    assert code == 2 and "not allowed with argument" in err


def test_another_size_needs_resize_and_says_what_it_did(capsys, tmp_path, trained):
    model, pictures = trained
    wide = np.zeros((200, 300), np.uint8)
    wide[:, 50:250] = np.asarray(Image.fromarray(pictures[1]).resize((200, 200)))
    Image.fromarray(wide).save(tmp_path / "wide.png")
    code, out, err = run(capsys, "predict", model, "wide.png")
    assert code == 2 and out == ""
    assert err == ("nnscratch: error: wide.png: the model takes 28x28 images, this one is "
                   "300x200 (--resize fits it in, keeping its aspect ratio)\n")
    code, out, err = run(capsys, "predict", model, "wide.png", "--resize")
    assert code == 0 and out.startswith("wide.png: ")
    assert err == ("nnscratch: note: wide.png: resized 300x200 -> 28x28 (aspect ratio kept: "
                   "scaled to 28x19, padded with the background)\n")


def write_idx(path, images):
    images = np.ascontiguousarray(images, dtype=np.uint8)
    path.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *images.shape)
                     + images.tobytes())
    return path


def test_every_result_is_printed(capsys, tmp_path, trained):
    model, pictures = trained
    with np.load(datasets.SAMPLE_PATH) as z:
        many = z["X_test"][:45]
    write_idx(tmp_path / "many-idx3-ubyte", many)
    Image.fromarray(pictures[0]).save(tmp_path / "one.png")
    code, out, _ = run(capsys, "predict", model, "one.png", "many-idx3-ubyte", "one.png")
    assert code == 0
    names = [line.split(": ")[0] for line in out.splitlines()]
    assert names == ["one.png"] + [f"many-idx3-ubyte[{i}]" for i in range(45)] + ["one.png"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_out_writes_every_result_to_a_csv_file(capsys, tmp_path, trained):
    model, pictures = trained
    with np.load(datasets.SAMPLE_PATH) as z:
        many = z["X_test"][:25]
    write_idx(tmp_path / "many-idx3-ubyte", many)
    Image.fromarray(pictures[2]).save(tmp_path / "a.png")
    Image.fromarray(rgb(255 - pictures[2])).resize((56, 56)).save(tmp_path / "b.jpg")
    code, out, err = run(capsys, "predict", model, "a.png", "many-idx3-ubyte", "b.jpg",
                         "--resize", "--out", "results.csv")
    assert code == 0
    assert out == "wrote 27 results to results.csv\n"           # no result lines
    assert "b.jpg: resized 56x56 -> 28x28" in err and "b.jpg: light background" in err
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.jpg", "many-idx3-ubyte",
                                            "results.csv"]      # no temporary file left
    rows = read_csv(tmp_path / "results.csv")
    assert rows[0] == ["file", "index", "class", "class_name", "probability"] + \
        [f"p_{k}" for k in range(10)]
    assert len(rows) == 28
    assert [(r[0], r[1]) for r in rows[1:]] == [("a.png", "")] + \
        [("many-idx3-ubyte", str(i)) for i in range(25)] + [("b.jpg", "")]
    # the numbers are the model's own for the same inputs
    proba = nn.load(model).predict_proba(many.reshape(25, -1) / np.float32(255))
    for row, p in zip(rows[2:27], proba):
        k = int(p.argmax())
        assert row[2:4] == [str(k), cli.FASHION_CLASSES[k]]
        assert float(row[4]) == pytest.approx(p[k], abs=5e-7)
        np.testing.assert_allclose([float(v) for v in row[5:]], p, rtol=0, atol=5e-7)
    # the two image files: the class their printed line gives
    _, printed, _ = run(capsys, "predict", model, "a.png", "b.jpg", "--resize")
    assert [rows[1][3], rows[27][3]] == [v[0] for v in predicted(printed).values()]


def test_out_is_written_atomically_and_checked_first(capsys, tmp_path, trained, monkeypatch):
    model, pictures = trained
    Image.fromarray(pictures[0]).save(tmp_path / "a.png")
    (tmp_path / "results.csv").write_text("old results\n")
    from nnscratch import serialization

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization.os, "replace", fail)   # (the atomic writer's rename)
    code, out, err = run(capsys, "predict", model, "a.png", "--out", "results.csv")
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and len(err.splitlines()) == 1
    assert (tmp_path / "results.csv").read_text() == "old results\n"
    assert sorted(os.listdir(tmp_path)) == ["a.png", "results.csv"]
    # a place that cannot be written is refused before any image is read
    code, out, err = run(capsys, "predict", model, "missing.png", "--out",
                         "nowhere/results.csv")
    assert code == 2 and "--out nowhere/results.csv: no folder" in err


def test_the_input_size_comes_from_the_model(capsys, tmp_path):
    nn.seed(0)
    nn.Sequential(nn.Linear(100, 10)).save(tmp_path / "ten.npz")           # 10x10 images
    nn.Sequential(nn.Linear(90, 10)).save(tmp_path / "ninety.npz")
    nn.models.cnn(image_size=32).save(tmp_path / "cnn32.npz")
    nn.models.cnn(in_channels=3).save(tmp_path / "colour.npz")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x28.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x32.png")
    code, out, err = run(capsys, "predict", "ten.npz", "x28.png", "--resize")
    assert code == 0 and "x28.png: resized 28x28 -> 10x10" in err
    code, out, err = run(capsys, "predict", "cnn32.npz", "x32.png")
    assert code == 0 and out.startswith("x32.png: ") and err == ""
    code, _, err = run(capsys, "predict", "cnn32.npz", "x28.png")
    assert code == 2 and "x28.png: the model takes 32x32 images, this one is 28x28" in err
    code, _, err = run(capsys, "predict", "ninety.npz", "x28.png")
    assert code == 2 and "ninety.npz takes 90 numbers per sample, not a square grey" in err
    code, _, err = run(capsys, "predict", "colour.npz", "x28.png")
    assert code == 2 and "colour.npz takes images of 3 channels" in err


def test_an_image_given_as_the_model_is_named(capsys, tmp_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "photo.jpg")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    code, _, err = run(capsys, "predict", "photo.jpg", "x.png")
    assert code == 2
    assert err == ("nnscratch: error: photo.jpg is a JPEG image, not an nnscratch model file "
                   "(a model is written by nnscratch train --save or model.save)\n")


def test_without_pillow_images_say_how_to_get_it_and_idx_still_works(capsys, tmp_path,
                                                                      trained, monkeypatch):
    model, pictures = trained
    Image.fromarray(pictures[0]).save(tmp_path / "a.png")
    write_idx(tmp_path / "few-idx3-ubyte", np.stack(pictures))
    (tmp_path / "notes.txt").write_text("no image")
    with without_package(monkeypatch, "PIL"):
        code, out, err = run(capsys, "predict", model, "a.png")
        assert code == 2 and out == ""
        assert err == ('nnscratch: error: a.png: reading images needs Pillow: pip install '
                       '"nnscratch[images]" (or pip install Pillow)\n')
        code, _, err = run(capsys, "predict", model, "notes.txt")
        assert code == 2 and "notes.txt: not an IDX file, and reading images needs Pillow" in err
        code, out, err = run(capsys, "predict", model, "few-idx3-ubyte")
        assert code == 0 and len(out.splitlines()) == 3 and err == ""
