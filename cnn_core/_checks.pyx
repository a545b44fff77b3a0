"""Validation shared by every public kernel: each check names the argument it rejects.

Rules (docs/design.md, "The kernel contract"): arrays are numpy.ndarray of float32 or float64, one
dtype per call; inputs that are not C-contiguous are copied; `out=`/`grad=` buffers and
arrays updated in place must already be C-contiguous, writeable, of the exact shape and
dtype, because a copy would silently not be the caller's array.

Two more rules keep a call to the memory it was given:

* An ndarray subclass is used through a base-class view of it (`plain`): the same memory,
  with the shape, strides, dtype and flags of its C struct -- a subclass's Python
  properties (shape, strides, flags, itemsize, dtype, ndim, ...) may say anything, and a
  size read from them would send the loops past the end of the buffer. Every check below
  begins with it and returns the view (the fast tests, `is_ready` and `is_buffer`, accept
  exact ndarrays only); a kernel still returns the caller's own object where it returns a
  given buffer.
* A buffer written shares no memory with the arrays the call reads (as it reads them: an
  input that is not C-contiguous is read from a copy) or with another buffer it writes
  (`refuse_overlap`, `refuse_overlaps`: byte spans compared in C) -- except, where the
  kernel's loops read each value before they write it, exactly the array it is computed
  from (`IN_PLACE`: the same memory in the same layout). A partial overlap is refused.
"""
import math

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from *:
    """
    /* A base-class ndarray over the memory of the ndarray `a` (a subclass): PyArray_View
       takes the shape, strides, dtype and flags from a's C struct, not from a's Python
       attributes, and calls no Python code of a's class. */
    static PyObject *nn_base_view(PyObject *a) {
        return PyArray_View((PyArrayObject *) a, NULL, &PyArray_Type);
    }
    """
    object nn_base_view(object a)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)

# Each check first asks the C API whether the argument is already what the kernel wants --
# the usual case, a few pointer and flag tests -- and only otherwise goes the Python way,
# which copies or raises with the message. (Python attribute lookups such as x.flags cost
# about a microsecond a call: as much as a one-sample product of the last layer.)


cdef object plain(object x):
    """x itself, unless it is an ndarray subclass: then a base-class view of its memory.
    After it, an array is exactly np.ndarray: test with PyArray_Check or type(x) is
    np.ndarray, not isinstance (which believes a __class__ property)."""
    if cnp.PyArray_CheckExact(x) or not cnp.PyArray_Check(x):
        return x
    return nn_base_view(x)


cdef inline bint _ready(object x, int ndim):
    # a native-byte-order float32/float64 ndarray (not a subclass) of `ndim` dimensions
    # (any when < 0), C-contiguous and aligned
    if not cnp.PyArray_CheckExact(x):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> x
    cdef object descr = <object> cnp.PyArray_DESCR(a)
    if descr is not _F32 and descr is not _F64:
        return False
    if ndim >= 0 and cnp.PyArray_NDIM(a) != ndim:
        return False
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)


cdef inline bint _fits(object buf, tuple shape, object dtype):
    # an ndarray (not a subclass) of exactly `shape` and `dtype`, C-contiguous, aligned and
    # writeable
    if not cnp.PyArray_CheckExact(buf):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> buf
    if <object> cnp.PyArray_DESCR(a) is not dtype or (dtype is not _F32 and dtype is not _F64):
        return False
    cdef Py_ssize_t i, nd = len(shape)
    if cnp.PyArray_NDIM(a) != nd:
        return False
    for i in range(nd):
        if cnp.PyArray_DIM(a, i) != <Py_ssize_t> shape[i]:
            return False
    return (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISWRITEABLE(a))


cdef bint is_ready(object x, int ndim, object dtype):
    """x is a C-contiguous, aligned ndarray (not a subclass) of `ndim` dimensions and exactly
    `dtype`."""
    return (_ready(x, ndim) and
            <object> cnp.PyArray_DESCR(<cnp.ndarray> x) is dtype)


cdef bint is_buffer(object buf, Py_ssize_t d0, Py_ssize_t d1, object dtype):
    """buf would pass check_buffer for shape (d0, d1) -- or (d0,) when d1 < 0 -- and is not a
    subclass (check_buffer returns a base-class view of one)."""
    if not cnp.PyArray_CheckExact(buf):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> buf
    if <object> cnp.PyArray_DESCR(a) is not dtype or (dtype is not _F32 and dtype is not _F64):
        return False
    if d1 < 0:
        if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != d0:
            return False
    elif cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_DIM(a, 0) != d0 or cnp.PyArray_DIM(a, 1) != d1:
        return False
    return (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)
            and cnp.PyArray_ISWRITEABLE(a))


cdef object as_float_array(str name, object x, int ndim=-1):
    """x as a C-contiguous, aligned float32/float64 ndarray (copied only if it is not; a
    subclass as a base-class view)."""
    if _ready(x, ndim):
        return x
    x = plain(x)
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype}; the kernels take float32 or float64")
    if ndim >= 0 and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        x = np.array(x, order="C")          # a fresh array is contiguous and aligned
    return x


cdef object check_same_dtype(str name, object x, object dtype):
    if cnp.PyArray_Check(x) and <object> cnp.PyArray_DESCR(<cnp.ndarray> x) is dtype:
        return x
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other inputs are {np.dtype(dtype)}")
    return x


cdef object check_same_shape(str name, object x, tuple shape):
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape}")
    return x


cdef object check_buffer(str name, object buf, tuple shape, object dtype):
    """An array written in place: exact shape and dtype, C-contiguous, writeable. Returns it
    (a subclass as a base-class view of it: write through the view)."""
    if _fits(buf, shape, dtype):
        return buf
    buf = plain(buf)
    if not cnp.PyArray_Check(buf):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.shape != shape:
        raise ValueError(f"{name} has shape {buf.shape}, expected {shape}")
    if buf.dtype != dtype:
        raise ValueError(f"{name} has dtype {buf.dtype}, expected {np.dtype(dtype)}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is written in place)")
    if not buf.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype (it is written in place)")
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only (it is written in place)")
    return buf


cdef object output(str name, object buf, tuple shape, object dtype):
    """The caller's buffer, checked (a subclass as a base-class view), or a new empty array."""
    cdef cnp.npy_intp dims[8]
    cdef Py_ssize_t i, nd = len(shape)
    if buf is None:
        if (dtype is _F32 or dtype is _F64) and nd <= 8:
            for i in range(nd):
                dims[i] = shape[i]
            return cnp.PyArray_EMPTY(<int> nd, dims, cnp.NPY_FLOAT32 if dtype is _F32
                                     else cnp.NPY_FLOAT64, 0)
        return np.empty(shape, dtype=dtype)
    return check_buffer(name, buf, shape, dtype)


cdef object as_labels(str name, object labels, Py_ssize_t n, Py_ssize_t n_classes,
                      bint check_range=True):
    """Integer class labels, shape (n,), values in [0, n_classes), as a contiguous int64 array.
    check_range=False: the kernel checks the range as it reads them (label_range_error
    then makes the message; give it the labels as `plain` returns them)."""
    labels = plain(labels)
    if not cnp.PyArray_Check(labels):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {labels.shape}")
    if check_range and n > 0 and (labels.min() < 0 or labels.max() >= n_classes):
        raise label_range_error(name, labels, n_classes)
    if labels.dtype == np.int64 and labels.flags.c_contiguous and labels.flags.aligned:
        return labels
    if labels.dtype.kind == "u" and n > 0 and labels.max() > np.iinfo(np.int64).max:
        raise label_range_error(name, labels, n_classes)     # would wrap around in int64
    return np.array(labels, dtype=np.int64, order="C")


cdef object label_range_error(str name, object labels, Py_ssize_t n_classes):
    """The ValueError for labels outside [0, n_classes), naming the first offending value."""
    lo = labels.min()
    bad = lo if lo < 0 else labels.max()
    return ValueError(f"{name} must be in [0, {n_classes}), found {bad}")


cdef double check_scalar(str name, object value, double low=-math.inf, bint low_inclusive=True,
                         double high=math.inf, bint high_inclusive=True) except? -1.0:
    """A finite real number within [low, high] (or open ends), as a double."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    cdef double v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    if v < low or (v == low and not low_inclusive) or v > high or (v == high and not high_inclusive):
        lb = "[" if low_inclusive else "("
        rb = "]" if high_inclusive else ")"
        raise ValueError(f"Invalid {name}: {value} (must be in {lb}{low}, {high}{rb})")
    return v


# ---------------------------------------------------------------------------------------------
# Buffers written that share memory with what is read: a silent wrong answer (a value read
# after it was overwritten, by this thread or another), or worse where what is read is an
# index. A buffer may be exactly the array it is computed from only where the kernel says so
# (IN_PLACE: each value read before it is written, by the thread that writes it).

cdef bint span(object a, char **lo, char **hi) noexcept:
    """The bytes [lo, hi) of a C-contiguous ndarray; False for None or an empty array."""
    if a is None or cnp.PyArray_NBYTES(<cnp.ndarray> a) == 0:
        lo[0] = hi[0] = NULL
        return False
    lo[0] = <char *> cnp.PyArray_DATA(<cnp.ndarray> a)
    hi[0] = lo[0] + cnp.PyArray_NBYTES(<cnp.ndarray> a)
    return True


cdef bint overlap(object a, object b):
    """Two C-contiguous ndarrays (or None) share memory: their byte spans meet."""
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    return span(a, &alo, &ahi) and span(b, &blo, &bhi) and alo < bhi and blo < ahi


cdef bint same_layout(object a, object b):
    """Two C-contiguous ndarrays are one memory in one layout: the same first byte, element
    type and shape (in place)."""
    cdef cnp.ndarray x = <cnp.ndarray> a, y = <cnp.ndarray> b
    cdef int i
    if (cnp.PyArray_DATA(x) != cnp.PyArray_DATA(y) or cnp.PyArray_TYPE(x) != cnp.PyArray_TYPE(y)
            or cnp.PyArray_NDIM(x) != cnp.PyArray_NDIM(y)):
        return False
    for i in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIM(x, i) != cnp.PyArray_DIM(y, i):
            return False
    return True


cdef object overlap_error(str name, str other, int how):
    """The ValueError naming the buffer `name` and what it overlaps (the NumPy twins say the
    same words)."""
    if how == IN_PLACE:
        why = f"in place, {name} may be {other} itself, but no other view of its memory"
    elif how == WRITTEN:
        why = "both are written"
    else:
        why = "it is written while that is read"
    return ValueError(f"{name} overlaps {other} ({why})")


cdef int refuse_overlap(str name, object buf, str other, object arr, int how=READ) except -1:
    """buf (written) shares no memory with arr (read; or written, how = WRITTEN), except
    that with how = IN_PLACE it may be arr itself (same_layout)."""
    if overlap(buf, arr) and not (how == IN_PLACE and same_layout(buf, arr)):
        raise overlap_error(name, other, how)
    return 0


cdef int refuse_overlaps(tuple written, tuple read) except -1:
    """refuse_overlap for several buffers at once. written: (name, buffer or None, the names
    of the arrays read it may be exactly, in place) triples; read: (name, array or None)
    pairs. Each buffer is compared with every array read, then with every other buffer, in
    the order given: the first overlap found is the error (the twin searches in the same
    order)."""
    cdef Py_ssize_t nw = len(written), nr = len(read), i, j
    cdef tuple entry, other
    for i in range(nw):
        entry = written[i]
        buf = entry[1]
        if buf is None:
            continue
        for j in range(nr):
            other = read[j]
            if overlap(buf, other[1]):
                if other[0] not in entry[2]:
                    raise overlap_error(entry[0], other[0], READ)
                if not same_layout(buf, other[1]):
                    raise overlap_error(entry[0], other[0], IN_PLACE)
        for j in range(nw):
            other = written[j]
            if j != i and overlap(buf, other[1]):
                raise overlap_error(entry[0], other[0], WRITTEN)
    return 0
