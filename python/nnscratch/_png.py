"""A small PNG writer (standard library zlib + NumPy), for the tests' images and the
plots' fallback; written atomically (`nnscratch.serialization.write_bytes_atomic`).

Writes 8-bit greyscale. Reading images -- PNG and the other formats -- goes through Pillow:
see `nnscratch.images`.
"""
import struct
import zlib

import numpy as np

from .serialization import write_bytes_atomic

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
    return write_bytes_atomic(path, data)
