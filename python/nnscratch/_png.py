"""A small PNG writer (standard library zlib + NumPy) and the atomic file write that the
plots, the CSV of `nnscratch predict` and the tests use.

Writes 8-bit greyscale. Reading images -- PNG and the other formats -- goes through Pillow:
see `nnscratch.images`.
"""
import os
import secrets
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
