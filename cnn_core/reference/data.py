"""Batch gathering, the rows of a data set that make up a mini-batch: the NumPy twin of
``cnn_core/_data.pyx``."""
from cnn_core.reference import _checks


def take_rows(x, rows, out=None):
    """The mini-batch ``x[rows]``: ``out[i] = x[rows[i]]``.

    x (N, ...) float32/float64, C-contiguous; rows (B,) int64 in [0, N);
    out (B, ...) of x's dtype, optional, sharing no memory with x or rows.
    """
    # x (N, ...), rows (B,) -> out (B, ...)
    x, rows, batch = _checks.take_rows_args(x, rows, out)
    batch[...] = x[rows]
    return _checks.given(out, batch)
