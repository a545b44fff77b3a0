"""Batch gathering: the rows of a data set that make up a mini-batch, copied side by side.

    out[i] = x[rows[i]]          (x (N, ...) -> out (len(rows), ...); np.take(x, rows, axis=0))

A shuffled epoch reads the samples in random order: each row is a separate trip to memory
(a Fashion-MNIST image is 3 KiB), and one thread waits on one row at a time. The rows are
split among the threads (each copies a contiguous run of the batch), so the trips overlap.
"""
import numpy as np

from libc.stdint cimport int64_t
from libc.string cimport memcpy
cimport numpy as cnp

from cnn_core._checks cimport output, plain, refuse_overlap
from cnn_core._parallel cimport num_threads, span_parts, run_parts, SPAN_MIN, MAX_PARTS

cnp.import_array()


cdef Py_ssize_t _copy_rows(const char *x, Py_ssize_t n_rows, const int64_t *rows, Py_ssize_t lo,
                           Py_ssize_t hi, Py_ssize_t row_bytes, char *out) noexcept nogil:
    # out rows [lo, hi) from x; returns how many indices were out of [0, n_rows) (skipped)
    cdef Py_ssize_t i, bad = 0
    cdef int64_t r
    for i in range(lo, hi):
        r = rows[i]
        if 0 <= r < n_rows:
            memcpy(out + i * row_bytes, x + r * row_bytes, row_bytes)
        else:
            bad += 1
    return bad


ctypedef struct _Gather:
    # the batch's rows in spans of `step`, a part each; each part's bad indices in its slot
    const char *x
    Py_ssize_t n_rows
    const int64_t *rows
    Py_ssize_t count
    Py_ssize_t row_bytes
    char *out
    Py_ssize_t step
    Py_ssize_t bad[MAX_PARTS]


cdef void _gather_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _Gather *j = <_Gather *> ctx
    cdef Py_ssize_t lo = t * j.step, hi = lo + j.step
    if hi > j.count:
        hi = j.count
    j.bad[t] = _copy_rows(j.x, j.n_rows, j.rows, lo, hi, j.row_bytes, j.out) if lo < hi else 0


cdef Py_ssize_t _gather(const char *x, Py_ssize_t n_rows, const int64_t *rows, Py_ssize_t count,
                        Py_ssize_t row_bytes, char *out) noexcept nogil:
    # spans of the batch per thread, at least SPAN_MIN bytes each
    cdef Py_ssize_t parts = span_parts(count * row_bytes, SPAN_MIN * 4, num_threads())
    cdef Py_ssize_t t, bad = 0
    cdef _Gather j
    if parts == 1:
        return _copy_rows(x, n_rows, rows, 0, count, row_bytes, out)
    j.x, j.n_rows, j.rows, j.count, j.row_bytes, j.out = x, n_rows, rows, count, row_bytes, out
    j.step = (count + parts - 1) // parts
    run_parts(_gather_part, &j, parts)
    for t in range(parts):
        bad += j.bad[t]
    return bad


def take_rows(x, rows, out=None):
    """The mini-batch ``x[rows]``: out[i] = x[rows[i]] (np.take(x, rows, axis=0)).

    x (N, ...) float32/float64, C-contiguous (it is never copied: a data set is large);
    rows (B,) int64 indices in [0, N); out (B, ...) of x's dtype, optional, sharing no
    memory with x or rows. An index out of range raises ValueError after the valid rows are
    copied.
    """
    x = plain(x)
    if type(x) is not np.ndarray:
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"x has dtype {x.dtype}; the kernels take float32 or float64")
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis (the samples), got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        raise ValueError("x must be C-contiguous and aligned (a data set is not copied per "
                         "batch: make it contiguous once, np.ascontiguousarray)")
    rows = plain(rows)
    if type(rows) is not np.ndarray:
        raise TypeError(f"rows must be a numpy.ndarray, got {type(rows).__name__}")
    if rows.dtype != np.int64:
        raise TypeError(f"rows must be int64, got {rows.dtype}")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    if not (rows.flags.c_contiguous and rows.flags.aligned):
        rows = np.array(rows, order="C")      # a fresh array: contiguous and aligned
    given = out
    out = output("out", out, (rows.shape[0],) + x.shape[1:], x.dtype)
    if given is not None:       # (the rows are copied by several threads)
        refuse_overlap("out", out, "x", x)
        refuse_overlap("out", out, "rows", rows)
    cdef Py_ssize_t count = rows.shape[0]
    cdef Py_ssize_t row_bytes = x.itemsize
    cdef Py_ssize_t n_rows = x.shape[0], bad = 0, d
    for d in x.shape[1:]:
        row_bytes *= d
    if count == 0 or row_bytes == 0:
        if count and n_rows == 0:
            raise ValueError(f"rows must be in [0, {n_rows}) (x has no rows)")
        if count and (rows.min() < 0 or rows.max() >= n_rows):
            raise ValueError(f"rows must be in [0, {n_rows})")
        return out if given is None else given
    cdef const int64_t[::1] r = rows
    cdef char *src = <char *> cnp.PyArray_DATA(<cnp.ndarray> x)
    cdef char *dst = <char *> cnp.PyArray_DATA(<cnp.ndarray> out)
    with nogil:
        bad = _gather(src, n_rows, &r[0], count, row_bytes, dst)
    if bad:
        raise ValueError(f"rows must be in [0, {n_rows}): {bad} are not")
    return out if given is None else given
