"""The small PNG reader/writer (nnscratch._png): round trips, every scanline filter and
colour type, files from matplotlib and Pillow, and the files it must refuse.

The test PNGs are built here by hand (zlib + struct): each row encoded with the filter
asked for, following the PNG specification, so that decoding them must give back exactly
the pixels they were made from.
"""
import os
import struct
import zlib

import numpy as np
import pytest

from nnscratch import _png
from nnscratch._png import SIGNATURE, read_png, write_png

COLOUR_TYPES = {0: 1, 4: 2, 2: 3, 6: 4}       # grey, grey+alpha, RGB, RGBA -> samples
FILTERS = {0: "none", 1: "sub", 2: "up", 3: "average", 4: "paeth"}


def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def paeth_predictor(a, b, c):
    # the specification's predictor: the neighbour closest to a + b - c, ties a, b, c
    estimate = a + b - c
    distances = [abs(estimate - a), abs(estimate - b), abs(estimate - c)]
    return (a, b, c)[distances.index(min(distances))]


def encode_rows(pixels, filters):
    """Filtered scanlines of `pixels` (height, width, samples) uint8: one filter type a row."""
    height = pixels.shape[0]
    bpp = pixels.shape[2]
    rows = pixels.reshape(height, -1).astype(int)
    out = bytearray()
    for r in range(height):
        ftype = filters[r % len(filters)]
        line, prior = rows[r], rows[r - 1] if r else np.zeros_like(rows[r])
        encoded = []
        for i, x in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            predicted = {0: 0, 1: a, 2: b, 3: (a + b) // 2, 4: paeth_predictor(a, b, c)}[ftype]
            encoded.append((x - predicted) % 256)
        out.append(ftype)
        out.extend(encoded)
    return bytes(out)


def make_png(pixels, colour_type, filters=(0,), depth=8, interlace=0, idat_parts=1,
             extra_chunks=(), ihdr=None):
    """A PNG file's bytes: IHDR, ancillary chunks, IDAT split in `idat_parts`, IEND."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width = pixels.shape[:2]
    assert pixels.shape[2] == COLOUR_TYPES.get(colour_type, pixels.shape[2])
    header = ihdr if ihdr is not None else struct.pack(
        ">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    data = zlib.compress(encode_rows(pixels, filters))
    size = -(-len(data) // idat_parts)
    parts = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    return (SIGNATURE + chunk(b"IHDR", header) + b"".join(extra_chunks)
            + b"".join(chunk(b"IDAT", p) for p in parts) + chunk(b"IEND", b""))


def luma(rgb):
    """ITU-R 601 grey of RGB samples, rounded (what read_png promises for colour images)."""
    grey = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (5, 37), (40, 3)])
def test_write_then_read_gives_the_image_back(tmp_path, rng, shape):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    assert write_png(path, image) == path
    data = path.read_bytes()
    assert data.startswith(SIGNATURE)
    back = read_png(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, image)
    assert os.listdir(tmp_path) == ["x.png"]


def test_write_png_accepts_str_paths_and_overwrites(tmp_path):
    path = str(tmp_path / "x.png")
    write_png(path, np.zeros((2, 3), np.uint8))
    write_png(path, np.full((4, 5), 200, np.uint8))
    np.testing.assert_array_equal(read_png(path), np.full((4, 5), 200, np.uint8))
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

    monkeypatch.setattr(_png.os, "replace", fail)
    with pytest.raises(OSError, match="rename refused"):
        write_png(path, np.zeros((3, 3), np.uint8))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.png"]
    np.testing.assert_array_equal(read_png(path), np.full((2, 2), 9, np.uint8))


# --- hand-made files: every filter, every colour type ---------------------------------------

@pytest.mark.parametrize("ftype", list(FILTERS), ids=list(FILTERS.values()))
@pytest.mark.parametrize("colour_type", list(COLOUR_TYPES),
                         ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_each_filter_and_colour_type(tmp_path, rng, ftype, colour_type):
    samples = COLOUR_TYPES[colour_type]
    pixels = rng.integers(0, 256, (9, 11, samples), dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(make_png(pixels, colour_type, filters=(ftype,)))
    expected = pixels[..., 0] if samples <= 2 else luma(pixels)
    np.testing.assert_array_equal(read_png(path), expected)


@pytest.mark.parametrize("colour_type", list(COLOUR_TYPES),
                         ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_grey_values_survive_every_colour_type_exactly(tmp_path, rng, colour_type):
    """R = G = B = v must read back as v, whatever the layout and the row filters."""
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    samples = COLOUR_TYPES[colour_type]
    if samples == 1:
        pixels = grey[:, :, None]
    elif samples == 2:
        pixels = np.dstack([grey, rng.integers(0, 256, grey.shape, dtype=np.uint8)])
    else:
        pixels = np.dstack([grey] * 3 + ([np.full_like(grey, 255)] if samples == 4 else []))
    path = tmp_path / "x.png"
    path.write_bytes(make_png(pixels, colour_type, filters=(4, 1, 0, 3, 2, 4, 4, 3)))
    np.testing.assert_array_equal(read_png(path), grey)


def test_mixed_filters_split_idat_and_ancillary_chunks(tmp_path, rng):
    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    extra = (chunk(b"gAMA", struct.pack(">I", 45455)),
             chunk(b"tEXt", b"Software\x00a test"), chunk(b"pHYs", bytes(9)))
    path = tmp_path / "x.png"
    path.write_bytes(make_png(pixels, 0, filters=(0, 1, 2, 3, 4), idat_parts=5,
                              extra_chunks=extra))
    np.testing.assert_array_equal(read_png(path), pixels)


def test_filters_with_extreme_values_wrap_modulo_256(tmp_path):
    # 255s next to 0s: every predictor overflows a byte somewhere
    pixels = np.tile(np.array([[0, 255], [255, 0]], np.uint8), (6, 7))
    for ftype in FILTERS:
        path = tmp_path / f"x{ftype}.png"
        path.write_bytes(make_png(np.dstack([pixels] * 3), 2, filters=(ftype,)))
        np.testing.assert_array_equal(read_png(path), luma(np.dstack([pixels] * 3)))


@pytest.mark.parametrize("colour_type", [0, 2])
def test_paeth_ties(tmp_path, rng, colour_type):
    # few distinct values: the predictor's ties (a before b before c) happen all the time
    samples = COLOUR_TYPES[colour_type]
    pixels = rng.integers(0, 4, (24, 24, samples), dtype=np.uint8) * 3
    # and the two ties by hand: (a, b, c) = (0, 6, 2) -> b, (6, 0, 2) -> a
    pixels[:2, :2, :] = np.array([[2, 6], [0, 9]])[:, :, None]
    pixels[2:4, :2, :] = np.array([[2, 0], [6, 9]])[:, :, None]
    path = tmp_path / "x.png"
    path.write_bytes(make_png(pixels, colour_type, filters=(4,)))
    expected = pixels[..., 0] if samples == 1 else luma(pixels)
    np.testing.assert_array_equal(read_png(path), expected)


def test_our_paeth_encoder_is_the_one_from_the_specification():
    # the examples worked by hand: a=left, b=up, c=up-left
    assert paeth_predictor(10, 20, 15) == 15      # estimate 15: c is exact
    assert paeth_predictor(10, 20, 10) == 20      # estimate 20
    assert paeth_predictor(20, 10, 10) == 20      # estimate 20: a
    assert paeth_predictor(5, 5, 5) == 5
    assert paeth_predictor(0, 255, 255) == 0      # estimate 0: a
    assert paeth_predictor(0, 6, 2) == 6          # estimate 4: b and c tie (2) -> b
    assert paeth_predictor(6, 0, 2) == 6          # estimate 4: a and c tie (2) -> a


# --- files from other programs --------------------------------------------------------------

def test_matplotlib_imsave_grey_and_rgb(tmp_path, rng):
    image_mod = pytest.importorskip("matplotlib.image")
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    image_mod.imsave(tmp_path / "grey.png", grey, cmap="gray", vmin=0, vmax=255)   # RGBA
    back = read_png(tmp_path / "grey.png")
    assert back.shape == (28, 28)
    assert np.abs(back.astype(int) - grey).max() <= 1

    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    image_mod.imsave(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_png(tmp_path / "rgb.png"), luma(rgb))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_pillow_files(tmp_path, rng, mode):
    Image = pytest.importorskip("PIL.Image")
    samples = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    # smooth content, so that Pillow's adaptive filtering picks several filter types
    y, x = np.mgrid[0:30, 0:40]
    base = (x * 5 + y * 3) % 256
    pixels = np.dstack([(base + 40 * k + rng.integers(0, 3, base.shape)) % 256
                        for k in range(samples)]).astype(np.uint8)
    array = pixels[..., 0] if samples == 1 else pixels
    image = Image.fromarray(array)
    assert image.mode == mode
    image.save(tmp_path / "x.png", optimize=True)
    expected = pixels[..., 0] if samples <= 2 else luma(pixels)
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), expected)


# --- files to refuse ------------------------------------------------------------------------

def _refused(tmp_path, data, match):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match) as info:
        read_png(path)
    assert str(path) in str(info.value)      # the message names the file


@pytest.fixture
def good(rng):
    return make_png(rng.integers(0, 256, (8, 8), dtype=np.uint8), 0, filters=(1, 2))


def test_bad_signature(tmp_path, good):
    _refused(tmp_path, b"\x89PNX" + good[4:], "bad signature")
    _refused(tmp_path, b"GIF89a" + bytes(40), "bad signature")
    _refused(tmp_path, b"", "bad signature")


def test_bad_crc(tmp_path, good):
    idat = good.index(b"IDAT")
    damaged = bytearray(good)
    damaged[idat + 6] ^= 0x01        # a bit of the compressed data: the CRC no longer fits
    _refused(tmp_path, bytes(damaged), "CRC")
    damaged = bytearray(good)
    damaged[len(SIGNATURE) + 8 + 13] ^= 0xFF      # IHDR's CRC itself
    _refused(tmp_path, bytes(damaged), "CRC")


def test_truncated_chunk(tmp_path, good):
    idat = good.index(b"IDAT")
    _refused(tmp_path, good[:idat + 10], "truncated")
    _refused(tmp_path, good[:len(SIGNATURE) + 12], "truncated")    # inside IHDR


def test_truncated_before_idat(tmp_path, good):
    idat = good.index(b"IDAT")
    _refused(tmp_path, good[:idat - 4], "without IHDR or IDAT")


@pytest.mark.parametrize("depth, colour_type", [(16, 0), (16, 2), (16, 6), (4, 0), (1, 0),
                                                (8, 3), (8, 5)],
                         ids=["16-bit grey", "16-bit rgb", "16-bit rgba", "4-bit", "1-bit",
                              "palette", "no such type"])
def test_unsupported_depths_and_colour_types(tmp_path, depth, colour_type):
    ihdr = struct.pack(">IIBBBBB", 4, 4, depth, colour_type, 0, 0, 0)
    data = make_png(np.zeros((4, 4 * 2), np.uint8), 0, ihdr=ihdr)
    _refused(tmp_path, data, f"bit depth {depth}, colour type {colour_type}")


def test_interlaced(tmp_path):
    data = make_png(np.zeros((4, 4), np.uint8), 0, interlace=1)
    _refused(tmp_path, data, "interlace 1")


def test_unknown_filter_type(tmp_path):
    rows = bytes([0]) + bytes(3) + bytes([5]) + bytes(3)
    data = (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    _refused(tmp_path, data, "unknown PNG filter type 5 in row 1")


def test_wrong_amount_of_image_data(tmp_path):
    for rows in (bytes(8), bytes(17)):       # a 3x3 grey image takes 3 * (1 + 3) = 12 bytes
        data = (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 3, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
        _refused(tmp_path, data, "wrong length")


def test_corrupt_compressed_data(tmp_path):
    data = (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"this is not zlib") + chunk(b"IEND", b""))
    _refused(tmp_path, data, "corrupt PNG image data")


def test_header_chunk_of_the_wrong_size(tmp_path):
    for body in (b"", bytes(12), bytes(14)):
        data = SIGNATURE + chunk(b"IHDR", body) + chunk(b"IDAT", zlib.compress(b"\0\0"))
        _refused(tmp_path, data, "IHDR")
