"""The small PNG writer (nnscratch._png.write_png) and the atomic file write under it.

What it writes is read back with Pillow, an independent decoder. (Reading images is
Pillow's job in nnscratch -- see tests/library/test_images.py; the hand-written PNG decoder
is gone.)
"""
import os

import numpy as np
import pytest

from nnscratch import serialization
from nnscratch._png import SIGNATURE, write_png

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def read_back(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
        return np.asarray(im).copy()


@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (5, 37), (40, 3)])
def test_write_then_read_gives_the_image_back(tmp_path, rng, shape):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    assert write_png(path, image) == path
    assert path.read_bytes().startswith(SIGNATURE)
    back = read_back(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, image)
    assert os.listdir(tmp_path) == ["x.png"]


def test_write_png_accepts_str_paths_and_overwrites(tmp_path):
    path = str(tmp_path / "x.png")
    write_png(path, np.zeros((2, 3), np.uint8))
    write_png(path, np.full((4, 5), 200, np.uint8))
    np.testing.assert_array_equal(read_back(path), np.full((4, 5), 200, np.uint8))
    assert os.listdir(tmp_path) == ["x.png"]


@pytest.mark.parametrize("image", [np.zeros((3, 3)), np.zeros((3, 3), np.int64),
                                   np.zeros((3, 3, 3), np.uint8), np.zeros(9, np.uint8)],
                         ids=["float", "int64", "3-D", "1-D"])
def test_write_png_wants_2d_uint8(tmp_path, image):
    with pytest.raises(ValueError, match="2-D uint8"):
        write_png(tmp_path / "x.png", image)
    assert os.listdir(tmp_path) == []


def test_write_png_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_png(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o640


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    write_png(path, np.full((2, 2), 9, np.uint8))

    def fail(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(serialization.os, "replace", fail)   # (the atomic writer's rename)
    with pytest.raises(OSError, match="rename refused"):
        write_png(path, np.zeros((3, 3), np.uint8))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.png"]
    np.testing.assert_array_equal(read_back(path), np.full((2, 2), 9, np.uint8))

