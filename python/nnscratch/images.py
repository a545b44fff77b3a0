"""Image files as the models take them (optional: needs Pillow, `pip install "nnscratch[images]"`).

    image, info = read_image("shoe.jpg", size=(28, 28))    float32 (28, 28) in [0, 1]
    info.resized, info.inverted, info.original_size        what was done to it

`nnscratch predict` and `datasets.load_image_folder` read every image with these rules, in
this order:

1. **Header first.** The file is opened with Pillow, which reads only its header: an image
   declaring more than `max_pixels` pixels (`MAX_PIXELS`, 2**24 = 4096x4096, by default) is
   refused with `ImageTooLargeError` before any pixel is decoded, as is an image of another
   size than `size` when `resize=False` (`ImageSizeError`). Formats: PNG, JPEG, BMP, GIF (its
   first frame) and WebP; anything else is a `NotAnImageError`. The EXIF orientation of a
   photo is applied.
2. **Grey.** 8-bit grey values are kept; 16-bit grey (Pillow's "I;16" and "I") is scaled by
   255/65535 -- never clipped at 255; colour and palette images become the ITU-R 601 luma
   0.299 R + 0.587 G + 0.114 B, exactly their value when R = G = B (`grayscale=False` keeps
   the three channels instead).
3. **Transparency** (an alpha channel, or a palette's or PNG's transparent colour): the
   image is composited on black when its visible content is light -- its alpha-weighted mean
   grey above half the range -- and on white otherwise, so that a drawing on a transparent
   canvas stays visible whatever colour its transparent pixels happen to hold.
4. **Inversion.** MNIST and Fashion-MNIST are light objects on a black background. With
   ``invert="auto"`` an image whose border pixels (its outermost rows and columns) have a
   mean grey above half the range has a light background, and is inverted (255 - v);
   ``invert=True`` always inverts, ``invert=False`` never.
5. **Resize** (an image of another size than `size`, with ``resize=True``): the image is
   scaled with Pillow's Lanczos filter, keeping its aspect ratio, to fit into `size`
   (300x200 into 28x28: 28x19), and centred on a canvas of `size` filled with its
   background -- the mean of its border pixels after step 4 -- as Fashion-MNIST's own images
   were made (longest side to 28, centred). ``keep_aspect=False`` stretches instead.
6. **Scale.** Values / 255, float32 in [0, 1]: the scale of `load_fashion_mnist`, so that an
   8-bit grey image of the right size gives exactly the numbers of its IDX twin.

Sizes are (height, width), as NumPy shapes; messages say width x height, as image programs do.
"""
import dataclasses
import os
import re
import warnings
from typing import Optional, Tuple, Union

import numpy as np

IMAGES_HINT = ('reading images needs Pillow: pip install "nnscratch[images]" '
               '(or pip install Pillow)')
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF or WebP"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PIXELS = 1 << 24        # 4096x4096: a 12-megapixel photo fits, a decompression bomb not
LUMA = (0.299, 0.587, 0.114)        # ITU-R 601, as Pillow's convert("L")

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"BM", "BMP"))


class NotAnImageError(ValueError):
    """The file is not an image in a format nnscratch reads."""


class ImageTooLargeError(ValueError):
    """The header declares more pixels than allowed; nothing was decoded."""


class ImageSizeError(ValueError):
    """The image is not of the size asked for, and resizing was not allowed."""

    def __init__(self, message, size, wanted):
        super().__init__(message)
        self.size, self.wanted = size, wanted       # (width, height) each


@dataclasses.dataclass
class ImageInfo:
    """What `read_image` found and did. Sizes are (width, height)."""
    path: str
    format: str                     # "PNG", "JPEG", ...
    mode: str                       # Pillow's mode of the file: "L", "RGBA", "P", "I;16", ...
    original_size: Tuple[int, int]
    size: Tuple[int, int]           # of the returned image
    resized: bool = False
    fitted_size: Optional[Tuple[int, int]] = None     # the scaled image inside the canvas
    border_mean: float = 0.0        # mean grey of the border, in [0, 1], before inversion
    inverted: bool = False
    composited_on: Optional[str] = None      # "black" or "white" for an image with alpha


def sniff_format(head):
    """"PNG", "JPEG", "GIF", "BMP", "WEBP" or None from a file's first 12 bytes (no Pillow)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def require_pillow():
    """Import Pillow's Image module, or raise ImportError saying how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(IMAGES_HINT) from exc
    return Image


def read_image(path: Union[str, "os.PathLike[str]"], size: Optional[Tuple[int, int]] = None, *,
               resize: bool = True, invert: Union[bool, str] = "auto", grayscale: bool = True,
               keep_aspect: bool = True, max_pixels: int = MAX_PIXELS
               ) -> Tuple[np.ndarray, "ImageInfo"]:
    """Read one image file as a model input, by the rules of this module's docstring.

    Parameters
    ----------
    path : str or os.PathLike
    size : (height, width), optional
        The size wanted; None keeps the image's own.
    resize : bool
        Resize an image of another size (else `ImageSizeError`, before decoding).
    invert : "auto", True or False
    grayscale : bool
        One grey channel (H, W), or three colour channels (3, H, W).
    keep_aspect : bool
        Fit into `size` and pad with the background (True), or stretch to it.
    max_pixels : int
        Larger images are refused by their header.

    Returns
    -------
    image : float32 ndarray (H, W) or (3, H, W), values in [0, 1]
    info : ImageInfo

    Raises
    ------
    NotAnImageError, ImageTooLargeError, ImageSizeError, ValueError (damaged data)
        All subclasses of ValueError, each naming the file.
    ImportError
        Pillow is not installed (the message says how to install it).
    OSError
        The file cannot be read (missing, no permission).
    """
    Image = require_pillow()
    name = os.fspath(path)
    if invert not in ("auto", True, False):
        raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")
    with open(path, "rb") as f:
        im = _open(Image, f, name, max_pixels)
        info = ImageInfo(name, im.format, im.mode, im.size, im.size)
        wanted = None if size is None else (int(size[1]), int(size[0]))     # (w, h)
        if wanted is not None and im.size != wanted and not resize:
            raise ImageSizeError(f"{name}: the image is {_wxh(im.size)}, not {_wxh(wanted)}",
                                 im.size, wanted)
        try:
            with warnings.catch_warnings():     # a file's oddities: an error, or nothing
                warnings.simplefilter("ignore")
                im.load()
                im = _upright(im)
                values, alpha = _channels(im, grayscale)
        except MemoryError:
            raise
        except Exception as exc:    # any decoder failure on a damaged or crafted file
            raise ValueError(f"{name}: cannot decode the {info.format} image "
                             f"({_first_line(exc)})") from None
    if values is None:
        raise ValueError(f"{name}: Pillow mode {info.mode!r} is not an image mode "
                         f"nnscratch reads")
    grey = _luma(values)
    if alpha is not None and (alpha < 1).any():
        values, grey, info.composited_on = _composite(values, grey, alpha)
    info.border_mean = float(_border(grey).mean()) / 255
    info.inverted = invert is True or (invert == "auto" and info.border_mean > 0.5)
    if info.inverted:
        values = 255 - values
    if wanted is not None and values.shape[1:] != (wanted[1], wanted[0]):
        values, info.fitted_size = _resize(Image, values, wanted, keep_aspect)
        info.resized = True
    info.size = (values.shape[2], values.shape[1])
    values /= np.float32(255)
    if grayscale:
        return values[0], info
    return (np.repeat(values, 3, axis=0) if values.shape[0] == 1 else values), info


def _open(Image, f, name, max_pixels):
    """The image, its header read, nothing decoded; refused when it declares too many
    pixels (Pillow's own limit, 2 * Image.MAX_IMAGE_PIXELS, refuses the largest in open)."""
    try:
        with warnings.catch_warnings():     # (our limit is lower than Pillow's warning's)
            warnings.simplefilter("ignore")
            im = Image.open(f, formats=FORMATS)
    except Image.DecompressionBombError as exc:    # (it names the pixels, not the sides)
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found[1]):,} pixels" if found else "too many pixels"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise ImageTooLargeError(f"{name}: the image declares {declared}, more than "
                                 f"{limit:,}; refused before decoding") from None
    except Image.UnidentifiedImageError:
        f.seek(0)
        claimed = sniff_format(f.read(12))
        if claimed is not None:
            raise ValueError(f"{name}: a damaged {claimed} file (its header cannot be "
                             f"read)") from None
        raise NotAnImageError(f"{name}: not a {FORMAT_NAMES} image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:   # a damaged header
        raise ValueError(f"{name}: cannot read the image header ({_first_line(exc)})") \
            from None
    width, height = im.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: the image declares {width}x{height} = "
                                 f"{width * height:,} pixels, more than {max_pixels:,}; "
                                 f"refused before decoding")
    if width < 1 or height < 1:
        raise ValueError(f"{name}: the image is empty ({width}x{height})")
    return im


def _upright(im):
    """The image turned as its EXIF orientation tag says (photos from cameras)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im) if im.format in ("JPEG", "MPO", "WEBP", "PNG") else im


def _channels(im, grayscale):
    """(values float32 (C, H, W) in [0, 255], alpha float32 (H, W) in [0, 1] or None); C is
    1 for grey files, 3 for colour ones. (None, None) for a mode nnscratch does not read."""
    mode, info = im.mode, im.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(im)
        # 16-bit samples (Pillow gives "I" for them too): 0..65535 -> 0..255, by 257
        values = np.clip(raw, 0, 65535).astype(np.float32) / np.float32(257)
        alpha = None
        if isinstance(info.get("transparency"), int):
            alpha = (raw != info["transparency"]).astype(np.float32)
        return values[None], alpha
    has_alpha = "A" in mode or "a" in mode or "transparency" in info
    if mode in ("1", "L", "LA", "La"):
        if not has_alpha:
            return np.asarray(im.convert("L"), dtype=np.float32)[None], None
        la = np.asarray(im.convert("LA"))
        return la[..., 0].astype(np.float32)[None], la[..., 1] / np.float32(255)
    try:
        pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except ValueError:
        return None, None
    alpha = pixels[..., 3] / np.float32(255) if has_alpha else None
    if grayscale and _all_grey(pixels):     # R = G = B (a grey palette...): exactly that
        return pixels[..., 0].astype(np.float32)[None], alpha
    if grayscale:      # the luma channel by channel: no float copy of all three
        grey = pixels[..., 0] * np.float32(LUMA[0])
        grey += pixels[..., 1] * np.float32(LUMA[1])
        grey += pixels[..., 2] * np.float32(LUMA[2])
        return grey[None], alpha
    return np.moveaxis(pixels[..., :3], -1, 0).astype(np.float32), alpha


def _all_grey(pixels):
    return bool((pixels[..., 0] == pixels[..., 1]).all()
                and (pixels[..., 1] == pixels[..., 2]).all())


def _luma(values):
    """Grey (H, W) of values (C, H, W): the channel itself, or the ITU-R 601 luma."""
    if values.shape[0] == 1:
        return values[0]
    r, g, b = values
    return r * np.float32(LUMA[0]) + g * np.float32(LUMA[1]) + b * np.float32(LUMA[2])


def _composite(values, grey, alpha):
    """The image over black (light content) or white (dark content)."""
    weight = float(alpha.sum())
    light = weight == 0 or float((grey * alpha).sum()) / weight > 127.5
    background = np.float32(0 if light else 255)
    values = values * alpha + background * (1 - alpha)
    grey = grey * alpha + background * (1 - alpha)
    return values.astype(np.float32), grey.astype(np.float32), "black" if light else "white"


def _border(grey):
    """The outermost rows and columns of a (H, W) array, each pixel once."""
    if min(grey.shape) <= 2:
        return grey.ravel()
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def _resize(Image, values, wanted, keep_aspect):
    """values (C, H, W) -> (C, h, w) of wanted = (w, h); and the size of the scaled image."""
    height, width = values.shape[1:]
    if keep_aspect:
        scale = min(wanted[0] / width, wanted[1] / height)
        fitted = (max(1, min(wanted[0], round(width * scale))),
                  max(1, min(wanted[1], round(height * scale))))
    else:
        fitted = wanted
    left, top = (wanted[0] - fitted[0]) // 2, (wanted[1] - fitted[1]) // 2
    out = np.empty((values.shape[0], wanted[1], wanted[0]), np.float32)
    for c, channel in enumerate(values):
        out[c] = _border(channel).mean()        # the background, around the fitted image
        scaled = Image.fromarray(np.ascontiguousarray(channel))        # mode "F"
        scaled = scaled.resize(fitted, getattr(Image, "Resampling", Image).LANCZOS)
        out[c, top:top + fitted[1], left:left + fitted[0]] = np.asarray(scaled)
    np.clip(out, 0, 255, out=out)         # Lanczos overshoots a little at sharp edges
    return out, fitted


def _wxh(size):
    return f"{size[0]}x{size[1]}"


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]

