"""A small PNG reader and writer (standard library zlib + NumPy), for `nnscratch predict`.

Reads 8-bit, non-interlaced greyscale, grey+alpha, RGB and RGBA images (the kinds that
image editors and matplotlib write); anything else is a clear ValueError. Colour images are
turned to grey with the ITU-R 601 luma weights. Writes 8-bit greyscale.
"""
import os
import secrets
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}  # PNG colour type -> samples per pixel
MAX_PIXELS = 1 << 20    # larger images are refused by their header, before any decoding


def read_size(path):
    """(width, height) from a PNG file's header (its first 33 bytes): nothing decoded."""
    name = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(33)
    if not head.startswith(SIGNATURE):
        raise ValueError(f"{name}: not a PNG file (bad signature)")
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ValueError(f"{name}: a PNG file must start with its IHDR header chunk")
    (length,) = struct.unpack(">I", head[8:12])
    if length != 13:
        raise ValueError(f"{name}: PNG header chunk IHDR has {length} bytes, not 13")
    return struct.unpack(">II", head[16:24])


def _chunks(data, name):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise ValueError(f"{name}: truncated PNG chunk {kind!r}")
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"{name}: PNG chunk {kind!r} fails its CRC check")
        yield kind, body
        pos += 12 + length


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw, height, stride, bpp, name):
    # PNG scanline filters (None, Sub, Up, Average, Paeth), undone row by row
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for r in range(height):
        ftype = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype in (1, 3, 4):
            cur = line.copy()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                up = prev[i]
                if ftype == 1:
                    pred = left
                elif ftype == 3:
                    pred = (left + up) >> 1
                else:
                    pred = _paeth(left, up, prev[i - bpp] if i >= bpp else 0)
                cur[i] = (cur[i] + pred) & 0xFF
        else:
            raise ValueError(f"{name}: unknown PNG filter type {ftype} in row {r}")
        out[r] = cur
        prev = cur
    return out


def read_png(path, max_pixels=MAX_PIXELS):
    """A PNG file as a uint8 greyscale array (height, width).

    An image of more than `max_pixels` pixels is refused by its header, before its data
    is read; the image data is decompressed to at most the size the header declares.
    """
    name = os.fspath(path)
    width, height = read_size(path)
    if width * height > max_pixels:
        raise ValueError(f"{name}: a {width}x{height} image is larger than {max_pixels:,} "
                         f"pixels; refused before decoding")
    with open(path, "rb") as f:
        data = f.read()
    header, idat = None, []
    for kind, body in _chunks(data, name):
        if kind == b"IHDR":
            if len(body) != 13:
                raise ValueError(f"{name}: PNG header chunk IHDR has {len(body)} bytes, not 13")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError(f"{name}: PNG without IHDR or IDAT")
    width, height, depth, ctype, _, _, interlace = header
    if depth != 8 or ctype not in _CHANNELS or interlace != 0:
        raise ValueError(f"{name}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported "
                         f"(bit depth {depth}, colour type {ctype}, interlace {interlace})")
    channels = _CHANNELS[ctype]
    stride = width * channels
    expected = height * (stride + 1)
    try:            # (never more than the header declares: a small file cannot expand)
        raw = zlib.decompressobj().decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"{name}: corrupt PNG image data ({exc})") from None
    if len(raw) != expected:
        raise ValueError(f"{name}: PNG image data has the wrong length")
    pixels = _unfilter(raw, height, stride, channels, name).reshape(height, width, channels)
    if channels >= 3:
        rgb = pixels[..., :3].astype(np.float64)
        grey = rgb @ np.array([0.299, 0.587, 0.114])
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return pixels[..., 0].copy()


def write_png(path, image):
    """Write a uint8 greyscale array (height, width) as a PNG, atomically."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be a 2-D uint8 array, got {image.dtype} {image.shape}")
    height, width = image.shape
    rows = np.hstack([np.zeros((height, 1), np.uint8), image])  # filter type 0 per row

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    data = (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))
    return write_file_atomic(path, data)


def write_file_atomic(path, data):
    """Write bytes to exactly `path` through a temporary file in the same folder and a
    rename: a failure leaves the old file (or none) and no temporary file behind.

    The temporary file is created with mode 0o666 minus the umask, as `open` would
    (tempfile.mkstemp's 0o600 would survive the rename and hide the file from others).
    """
    folder = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
