"""Image files as model inputs (nnscratch.images, through Pillow) and the one-folder-per-class
loader (nnscratch.datasets.load_image_folder).

Each file is made here, with Pillow, from a 28x28 grey image of the bundled Fashion-MNIST
sample (or a drawing built from NumPy), in every format and mode nnscratch reads; what it
reads back is held against the pixels the file was made from. Then the rules: 16-bit scaled,
transparency composited, light backgrounds inverted, sizes fitted keeping the aspect ratio,
decompression bombs refused by their header before anything is decoded.
"""
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from conftest import png_with_header, without_package
from nnscratch import datasets, images

Image = pytest.importorskip("PIL.Image")
from PIL import ImageFile, features  # noqa: E402

needs_webp = pytest.mark.skipif(not features.check("webp"), reason="Pillow without WebP")
FLOAT = 2e-5       # the luma of R = G = B = v in float32 is v within this (on the 0..1 scale)


@pytest.fixture(scope="module")
def grey():
    """A 28x28 uint8 Fashion-MNIST test image: a light object on black."""
    with np.load(datasets.SAMPLE_PATH) as z:
        image = z["X_test"][0].copy()
    assert image[0].max() == 0 and image.mean() > 40      # black border, something drawn
    return image


def ring(value=200, size=28):
    """A drawing: a ring of `value` on 0, and its mask."""
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2
    mask = (np.hypot(x, y) > 5) & (np.hypot(x, y) < 10)
    return np.where(mask, value, 0).astype(np.uint8), mask


def grey_palette(image):
    p = Image.frombytes("P", image.shape[::-1], image.tobytes())
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    return p


def read(path, **kwargs):
    return images.read_image(path, **kwargs)


@pytest.fixture
def no_decoding(monkeypatch):
    """Within the test, decoding any image's pixels fails the test."""
    def load(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --- formats and modes: the pixels they were made from ----------------------------------------

LOSSLESS = {
    "png-L": lambda g: (Image.fromarray(g), "png", {}),
    "png-I16": lambda g: (Image.fromarray(g.astype(np.uint16) * 257), "png", {}),
    "png-P": lambda g: (grey_palette(g), "png", {}),
    "png-LA": lambda g: (Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA"), "png",
                         {}),
    "png-RGB": lambda g: (Image.fromarray(np.dstack([g] * 3)), "png", {}),
    "png-RGBA": lambda g: (Image.fromarray(np.dstack([g] * 3 + [np.full_like(g, 255)])),
                           "png", {}),
    "png-1bit": lambda g: (Image.fromarray(g > 127), "png", {}),
    "bmp-L": lambda g: (Image.fromarray(g), "bmp", {}),
    "bmp-RGB": lambda g: (Image.fromarray(np.dstack([g] * 3)), "bmp", {}),
    "gif-P": lambda g: (grey_palette(g), "gif", {}),
    "webp-lossless": lambda g: (Image.fromarray(np.dstack([g] * 3)), "webp",
                                {"lossless": True}),
}


@pytest.mark.parametrize("kind", list(LOSSLESS))
def test_lossless_files_give_back_their_grey_pixels(tmp_path, grey, kind):
    if kind.startswith("webp") and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    im, ext, options = LOSSLESS[kind](grey)
    path = tmp_path / f"x.{ext}"
    im.save(path, **options)
    image, info = read(path, size=(28, 28))
    expected = np.where(grey > 127, 255, 0) if kind == "png-1bit" else grey
    assert image.dtype == np.float32 and image.shape == (28, 28)
    np.testing.assert_allclose(image, expected / 255, rtol=0, atol=FLOAT)
    assert info.format == ext.upper() and not info.resized
    assert not info.inverted and info.composited_on is None


@pytest.mark.parametrize("kind", ["png-L", "png-I16", "png-P", "png-RGB", "png-RGBA",
                                  "bmp-L", "gif-P"])
def test_grey_files_equal_their_idx_twin_exactly(tmp_path, grey, kind):
    """Grey 8-bit and 16-bit files give the very numbers IDX data gives (k / 255 in
    float32), so predict on a file and on an IDX file agree bit for bit."""
    im, ext, _ = LOSSLESS[kind](grey)
    im.save(tmp_path / f"x.{ext}")
    image, _ = read(tmp_path / f"x.{ext}", size=(28, 28))
    np.testing.assert_array_equal(image, grey.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("kind, quality", [("jpeg-L", 95), ("jpeg-RGB", 90),
                                           pytest.param("webp-lossy", 90, marks=needs_webp)])
def test_lossy_files_come_close(tmp_path, grey, kind, quality):
    ext = kind.split("-")[0]
    im = Image.fromarray(grey if kind == "jpeg-L" else np.dstack([grey] * 3))
    im.save(tmp_path / f"x.{ext}", quality=quality)
    image, info = read(tmp_path / f"x.{ext}", size=(28, 28))
    difference = np.abs(image * 255 - grey)
    assert difference.mean() < 3 and difference.max() < 40, (difference.mean(),
                                                              difference.max())
    assert not info.inverted


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    # all of 0..65535 in use: clipping at 255 (Pillow's own I;16 -> L) makes most pixels white
    raw = np.linspace(0, 65535, 30 * 20).round().astype(np.uint16).reshape(20, 30)
    Image.fromarray(raw).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode in ("I;16", "I")
    image, info = read(tmp_path / "x.png", invert=False)
    np.testing.assert_allclose(image, raw / 65535, rtol=0, atol=1e-6)
    assert info.mode in ("I;16", "I") and info.size == (30, 20)
    assert 0.45 < image.mean() < 0.55


def test_colour_and_palette_images_become_their_luma(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1] = 0, 0, 0, 0          # a dark border: no inversion
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image, _ = read(tmp_path / "c.png")
    np.testing.assert_allclose(image, luma / 255, rtol=0, atol=FLOAT)

    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    colours[0] = 0
    index = rng.integers(1, 256, (12, 16), dtype=np.uint8)
    index[0], index[-1], index[:, 0], index[:, -1] = 0, 0, 0, 0
    p = Image.frombytes("P", (16, 12), index.tobytes())
    p.putpalette(colours.ravel().tolist())
    p.save(tmp_path / "p.png")
    image, info = read(tmp_path / "p.png")
    assert info.mode == "P"
    np.testing.assert_allclose(image, (colours[index] @ np.array([0.299, 0.587, 0.114])) / 255,
                               rtol=0, atol=FLOAT)


def test_grayscale_false_keeps_the_colours(tmp_path, grey):
    rgb = np.dstack([grey, grey // 2, 255 - grey])
    rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1] = 0, 0, 0, 0
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image, _ = read(tmp_path / "c.png", grayscale=False)
    assert image.shape == (3, 28, 28) and image.dtype == np.float32
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0) / np.float32(255))
    Image.fromarray(grey).save(tmp_path / "g.png")          # a grey file: three equal channels
    image, _ = read(tmp_path / "g.png", grayscale=False)
    assert image.shape == (3, 28, 28) and (image == grey / np.float32(255)).all()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20), np.uint8)
    pixels[:, :10] = 255                      # left half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6                          # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image, info = read(tmp_path / "photo.jpg", invert=False)
    assert image.shape == (20, 10) and info.size == (10, 20)
    assert image[:10].mean() > 0.9 and image[10:].mean() < 0.1    # the left half is on top


# --- transparency ---------------------------------------------------------------------------

def test_light_ink_on_transparency_is_put_on_black(tmp_path, grey):
    rng = np.random.default_rng(0)
    rgb = np.where((grey > 0)[..., None], 255, rng.integers(0, 256, (28, 28, 3))).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, grey])).save(tmp_path / "ink.png")   # alpha = the image
    image, info = read(tmp_path / "ink.png", size=(28, 28))
    assert info.composited_on == "black" and not info.inverted
    np.testing.assert_allclose(image, grey / 255, rtol=0, atol=FLOAT)


def test_dark_ink_on_transparency_is_put_on_white_then_inverted(tmp_path, grey):
    rng = np.random.default_rng(1)
    rgb = np.where((grey > 0)[..., None], 0, rng.integers(0, 256, (28, 28, 3))).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, grey])).save(tmp_path / "ink.png")
    image, info = read(tmp_path / "ink.png", size=(28, 28))
    assert info.composited_on == "white" and info.inverted and info.border_mean > 0.95
    np.testing.assert_allclose(image, grey / 255, rtol=0, atol=FLOAT)
    kept, info = read(tmp_path / "ink.png", size=(28, 28), invert=False)
    assert not info.inverted
    np.testing.assert_allclose(kept, 1 - grey / 255, rtol=0, atol=FLOAT)


def test_transparent_palette_entry_and_png_transparent_colour(tmp_path):
    drawing, mask = ring(200)
    p = grey_palette(drawing)
    palette = p.getpalette()
    palette[:3] = [255, 0, 255]               # the transparent entry's colour: never shown
    p.putpalette(palette)
    p.save(tmp_path / "p.png", transparency=0)
    p.save(tmp_path / "p.gif", transparency=0)
    Image.fromarray(drawing).save(tmp_path / "l.png", transparency=0)   # grey + tRNS
    for name in ("p.png", "p.gif", "l.png"):
        image, info = read(tmp_path / name)
        assert info.composited_on == "black", name
        np.testing.assert_allclose(image, drawing / 255, rtol=0, atol=FLOAT, err_msg=name)


def test_a_fully_transparent_image_is_black(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., :3] = 255                       # white, but wholly transparent
    Image.fromarray(rgba).save(tmp_path / "t.png")
    image, info = read(tmp_path / "t.png")
    assert info.composited_on == "black" and not info.inverted and (image == 0).all()


# --- inversion ------------------------------------------------------------------------------

def test_a_light_background_is_inverted(tmp_path, grey):
    Image.fromarray(255 - grey).save(tmp_path / "light.png")
    image, info = read(tmp_path / "light.png", size=(28, 28))
    assert info.inverted and info.border_mean > 0.95
    np.testing.assert_array_equal(image, grey / np.float32(255))      # exactly, for 8-bit
    kept, info = read(tmp_path / "light.png", invert=False)
    assert not info.inverted and info.border_mean > 0.95
    np.testing.assert_array_equal(kept, (255 - grey) / np.float32(255))
    forced, info = read(tmp_path / "light.png", invert=True)
    assert info.inverted
    np.testing.assert_array_equal(forced, image)
    Image.fromarray(grey).save(tmp_path / "dark.png")
    forced, info = read(tmp_path / "dark.png", invert=True)
    assert info.inverted and info.border_mean < 0.05                   # dark, inverted anyway
    np.testing.assert_array_equal(forced, (255 - grey) / np.float32(255))


def test_the_rule_is_the_border_mean_above_half_the_range(tmp_path):
    # left half 127, right half 128: the border's mean is exactly 127.5, half of 255
    half = np.hstack([np.full((28, 14), 127), np.full((28, 14), 128)]).astype(np.uint8)
    Image.fromarray(half).save(tmp_path / "half.png")
    _, info = read(tmp_path / "half.png")
    assert info.border_mean == 0.5 and not info.inverted
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "above.png")
    _, info = read(tmp_path / "above.png")
    assert info.border_mean > 0.5 and info.inverted
    # only the border counts: a white inside within a black frame is a light object
    framed = np.full((28, 28), 255, np.uint8)
    framed[0], framed[-1], framed[:, 0], framed[:, -1] = 0, 0, 0, 0
    Image.fromarray(framed).save(tmp_path / "framed.png")
    _, info = read(tmp_path / "framed.png")
    assert info.border_mean == 0 and not info.inverted


def test_bad_invert_value(tmp_path, grey):
    Image.fromarray(grey).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="invert must be"):
        read(tmp_path / "x.png", invert="yes")


# --- resizing -------------------------------------------------------------------------------

def framed(width, height, inside=250, border=10):
    pixels = np.full((height, width), inside, np.uint8)
    pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1] = border, border, border, border
    return pixels


@pytest.mark.parametrize("size, fitted, offset", [
    ((60, 30), (28, 14), (0, 7)), ((300, 200), (28, 19), (0, 4)),
    ((30, 60), (14, 28), (7, 0)), ((10, 10), (28, 28), (0, 0))],
    ids=["wide", "300x200", "tall", "upscaled"])
def test_resize_keeps_the_aspect_ratio_and_pads_with_the_background(tmp_path, size, fitted,
                                                                     offset):
    width, height = size
    Image.fromarray(framed(width, height)).save(tmp_path / "x.png")
    image, info = read(tmp_path / "x.png", size=(28, 28), invert=False)
    assert image.shape == (28, 28) and info.resized
    assert info.original_size == size and info.fitted_size == fitted and info.size == (28, 28)
    left, top = offset
    inside = np.zeros((28, 28), bool)
    inside[top:top + fitted[1], left:left + fitted[0]] = True
    np.testing.assert_array_equal(image[~inside], np.float32(10 / 255))   # the border's grey
    assert image[inside].mean() > 150 / 255            # the scaled picture, centred
    assert 0 <= image.min() and image.max() <= 1        # Lanczos' overshoot clipped


def test_resize_without_keeping_the_aspect_ratio_stretches(tmp_path):
    Image.fromarray(framed(60, 30)).save(tmp_path / "x.png")
    image, info = read(tmp_path / "x.png", size=(28, 28), keep_aspect=False, invert=False)
    assert info.fitted_size == (28, 28)
    assert image[1:-1, 1:-1].min() > 200 / 255      # no padding rows: the picture everywhere


def test_a_non_square_size_is_height_then_width(tmp_path, grey):
    Image.fromarray(grey).save(tmp_path / "x.png")
    image, info = read(tmp_path / "x.png", size=(14, 28))
    assert image.shape == (14, 28) and info.size == (28, 14) and info.fitted_size == (14, 14)


def test_an_upscaled_image_resizes_back_close_to_the_original(tmp_path, grey):
    Image.fromarray(grey).resize((84, 84), Image.NEAREST).save(tmp_path / "x.png")
    image, info = read(tmp_path / "x.png", size=(28, 28))
    assert info.resized and info.original_size == (84, 84) and info.fitted_size == (28, 28)
    difference = np.abs(image * 255 - grey)
    assert difference.mean() < 4 and difference.max() < 40


def test_another_size_without_resize_is_refused_before_decoding(tmp_path, grey, no_decoding):
    Image.fromarray(grey[:, :27]).save(tmp_path / "x.png")
    with pytest.raises(images.ImageSizeError, match="x.png: the image is 27x28, not 28x28") \
            as caught:
        read(tmp_path / "x.png", size=(28, 28), resize=False)
    assert caught.value.size == (27, 28) and caught.value.wanted == (28, 28)


def test_no_size_keeps_the_image_s_own(tmp_path):
    Image.fromarray(framed(31, 17)).save(tmp_path / "x.png")
    image, info = read(tmp_path / "x.png", invert=False)
    assert image.shape == (17, 31) and not info.resized


# --- files to refuse ------------------------------------------------------------------------

def _patched(data, offset, fmt, *values):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def bomb_files(tmp_path):
    """Small files whose headers declare enormous images, in four formats."""
    png_with_header(tmp_path / "bomb.png", 100000, 100000)
    small = Image.fromarray(np.zeros((8, 8), np.uint8))
    for ext in ("bmp", "gif", "jpg"):
        small.save(tmp_path / f"small.{ext}")
    bmp = (tmp_path / "small.bmp").read_bytes()
    (tmp_path / "bomb.bmp").write_bytes(_patched(bmp, 18, "<ii", 100000, 100000))
    gif = (tmp_path / "small.gif").read_bytes()
    (tmp_path / "bomb.gif").write_bytes(_patched(gif, 6, "<HH", 65535, 65535))
    jpg = (tmp_path / "small.jpg").read_bytes()
    sof = jpg.index(b"\xff\xc0")
    (tmp_path / "bomb.jpg").write_bytes(_patched(jpg, sof + 5, ">HH", 65535, 65535))
    return {"png": (100000, 100000), "bmp": (100000, 100000), "gif": (65535, 65535),
            "jpg": (65535, 65535)}


def test_decompression_bombs_are_refused_by_their_header(tmp_path, no_decoding):
    for ext, (width, height) in bomb_files(tmp_path).items():
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(images.ImageTooLargeError) as caught:
                read(tmp_path / f"bomb.{ext}", size=(28, 28))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        message = str(caught.value)
        assert message.startswith(str(tmp_path / f"bomb.{ext}")), message
        assert "refused before decoding" in message and f"{width * height:,} pixels" in message
        assert "\n" not in message
        assert peak < 1 << 20 and time.perf_counter() - start < 1.0, (ext, peak)


def test_the_pixel_limit_is_ours_below_pillow_s(tmp_path, no_decoding):
    png_with_header(tmp_path / "big.png", 6000, 6000)     # Pillow alone would decode this
    assert 6000 * 6000 > images.MAX_PIXELS and 6000 * 6000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(images.ImageTooLargeError, match="6000x6000 = 36,000,000 pixels, more "
                       f"than {images.MAX_PIXELS:,}; refused before decoding"):
        read(tmp_path / "big.png", size=(28, 28))


def test_the_pixel_limit_is_inclusive(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "x.png")
    image, _ = read(tmp_path / "x.png", max_pixels=64 * 64)
    assert image.shape == (64, 64)
    with pytest.raises(images.ImageTooLargeError, match="4,096 pixels, more than 4,095"):
        read(tmp_path / "x.png", max_pixels=64 * 64 - 1)


def test_png_data_is_decoded_no_further_than_the_header_says(tmp_path):
    # a 10x10 header with 64 MiB of image data: the 10x10 image, not 64 MiB in memory
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    path = tmp_path / "lying.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(64 << 20), 9)) + chunk(b"IEND", b""))
    tracemalloc.start()
    try:
        image, _ = read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (10, 10) and (image == 0).all()
    assert peak < 8 << 20


def test_files_that_are_not_images_are_named(tmp_path, grey):
    (tmp_path / "notes.txt").write_text("hello, no image here\n")
    with pytest.raises(images.NotAnImageError, match="notes.txt: not a PNG, JPEG, BMP, GIF or "
                       "WebP image"):
        read(tmp_path / "notes.txt")
    Image.fromarray(grey).save(tmp_path / "x.tif")          # a format nnscratch does not read
    with pytest.raises(images.NotAnImageError, match="x.tif"):
        read(tmp_path / "x.tif")
    (tmp_path / "sig.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError, match="sig.png: a damaged PNG file"):
        read(tmp_path / "sig.png")
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.png")


@pytest.mark.parametrize("ext", ["png", "jpg", "gif", "bmp"])
def test_a_truncated_file_is_an_error_naming_it(tmp_path, ext):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / f"x.{ext}")
    data = (tmp_path / f"x.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"cut.{ext}: cannot decode") as caught:
        read(tmp_path / f"cut.{ext}")
    assert not isinstance(caught.value, images.NotAnImageError)


def test_sniff_format_without_pillow():
    assert images.sniff_format(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d") == "PNG"
    assert images.sniff_format(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "JPEG"
    assert images.sniff_format(b"GIF89a\x01\x00\x01\x00") == "GIF"
    assert images.sniff_format(b"BM\x00\x00\x00\x00\x00\x00\x00\x00") == "BMP"
    assert images.sniff_format(b"RIFF\x00\x00\x00\x00WEBP") == "WEBP"
    assert images.sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert images.sniff_format(b"PK\x03\x04") is None and images.sniff_format(b"") is None


# --- without Pillow -------------------------------------------------------------------------

def test_without_pillow_the_error_says_how_to_get_it(tmp_path, grey, monkeypatch):
    Image.fromarray(grey).save(tmp_path / "x.png")
    (tmp_path / "root" / "a").mkdir(parents=True)
    Image.fromarray(grey).save(tmp_path / "root" / "a" / "x.png")
    with without_package(monkeypatch, "PIL"):
        for call in (lambda: read(tmp_path / "x.png"), images.require_pillow,
                     lambda: datasets.load_image_folder(tmp_path / "root")):
            with pytest.raises(ImportError) as caught:
                call()
            assert str(caught.value) == images.IMAGES_HINT
            assert 'pip install "nnscratch[images]"' in str(caught.value)


# --- load_image_folder ----------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path, grey):
    """root/<class>/...: three classes (made in another order than sorted), formats and
    sizes mixed, a nested folder, hidden files and folders, a text file."""
    with np.load(datasets.SAMPLE_PATH) as z:
        pictures = z["X_test"][:6]
    root = tmp_path / "root"
    layout = {
        "sneaker": [("b.png", pictures[0], "L"), ("a.jpg", pictures[1], "RGB")],
        "bag": [("z.bmp", pictures[2], "L"), ("sub/y.gif", pictures[3], "L"),
                ("x.PNG", pictures[4], "I;16")],
        "coat": [("only.webp" if features.check("webp") else "only.png", pictures[5], "RGB")],
    }
    for name, files in layout.items():
        for relative, picture, mode in files:
            path = root / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if mode == "I;16":
                im = Image.fromarray(picture.astype(np.uint16) * 257)
            elif mode == "RGB":
                im = Image.fromarray(np.dstack([picture] * 3)).resize((56, 56), Image.NEAREST)
            else:
                im = Image.fromarray(picture)
            im.save(path, **({"quality": 95} if path.suffix in (".jpg", ".webp") else {}))
    (root / "bag" / ".hidden.png").write_bytes(b"not even an image")
    (root / "bag" / "README.txt").write_text("what these are")
    (root / ".cache").mkdir()
    Image.fromarray(grey).save(root / ".cache" / "x.png")
    Image.fromarray(grey).save(root / "stray.png")          # not in a class folder
    return root, pictures


def test_load_image_folder(folder):
    root, pictures = folder
    X, y, classes = datasets.load_image_folder(root)
    assert classes == ["bag", "coat", "sneaker"]            # sorted: the first is label 0
    assert X.dtype == np.float32 and X.shape == (6, 784)    # flat, as load_fashion_mnist
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 0, 1, 2, 2]
    # within a class sorted by path: bag/sub/y.gif, bag/x.PNG, bag/z.bmp
    order = [3, 4, 2, 5, 1, 0]
    for row, k in zip(X, order):
        assert np.abs(row.reshape(28, 28) * 255 - pictures[k]).mean() < 8, k
    for k, row in ((4, X[1]), (2, X[2])):                   # 16-bit and BMP: exact
        np.testing.assert_array_equal(row, pictures[k].ravel() / np.float32(255))
    images4d, y2, classes2 = datasets.load_image_folder(root, flatten=False,
                                                        dtype=np.float64)
    assert images4d.shape == (6, 1, 28, 28) and images4d.dtype == np.float64
    assert (y2 == y).all() and classes2 == classes
    np.testing.assert_allclose(images4d.reshape(6, -1), X, rtol=0, atol=1e-7)


def test_load_image_folder_sizes_colour_and_inversion(folder):
    root, pictures = folder
    X, _, _ = datasets.load_image_folder(root, size=14, grayscale=False, flatten=False)
    assert X.shape == (6, 3, 14, 14)
    light = root / "bag" / "z.bmp"
    Image.fromarray(255 - pictures[2]).save(light)          # a light background
    X, _, _ = datasets.load_image_folder(root)
    np.testing.assert_array_equal(X[2], (255 - pictures[2]).ravel() / np.float32(255))
    X, _, _ = datasets.load_image_folder(root, invert="auto")        # predict's rule
    np.testing.assert_array_equal(X[2], pictures[2].ravel() / np.float32(255))
    X, _, _ = datasets.load_image_folder(root, size=(20, 10), keep_aspect=False)
    assert X.shape == (6, 200)


def test_load_image_folder_order_does_not_depend_on_the_file_system(folder):
    root, _ = folder
    first = datasets.load_image_folder(root)
    # the same files, created in the reverse order
    copy = root.parent / "copy"
    for path in sorted(root.rglob("*"), reverse=True):
        target = copy / path.relative_to(root)
        if path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    second = datasets.load_image_folder(copy)
    np.testing.assert_array_equal(first[0], second[0])
    assert (first[1] == second[1]).all() and first[2] == second[2]


def test_load_image_folder_errors_name_the_file_or_folder(folder, tmp_path):
    root, _ = folder
    broken = root / "coat" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    with pytest.raises(ValueError, match=f"{broken}: a damaged PNG file"):
        datasets.load_image_folder(root)
    broken.write_text("text in an image's name")
    with pytest.raises(ValueError, match=f"{broken}: not a PNG"):
        datasets.load_image_folder(root)
    broken.unlink()
    png_with_header(root / "coat" / "huge.png", 100000, 100000)
    with pytest.raises(ValueError, match="huge.png: .*refused before decoding"):
        datasets.load_image_folder(root)
    (root / "coat" / "huge.png").unlink()
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match=f"{root / 'empty'}: no images in the folder of class "
                       "'empty'"):
        datasets.load_image_folder(root)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders"):
        datasets.load_image_folder(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        datasets.load_image_folder(tmp_path / "nowhere")
    for size in [(28,), (0, 28), (28.0, 28), "28", (True, 28)]:
        with pytest.raises(ValueError, match="size must be"):
            datasets.load_image_folder(root, size=size)
    assert os.path.exists(root / "empty")
