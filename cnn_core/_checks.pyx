"""Validation shared by every public kernel: each check names the argument it rejects.

Rules (docs/design.md, "The kernel contract"): arrays are numpy.ndarray of float32 or float64, one
dtype per call; inputs that are not C-contiguous are copied; `out=`/`grad=` buffers and
arrays updated in place must already be C-contiguous, writeable, of the exact shape and
dtype, because a copy would silently not be the caller's array.
"""
import math

import numpy as np
cimport numpy as cnp

cnp.import_array()

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)

# Each check first asks the C API whether the argument is already what the kernel wants --
# the usual case, a few pointer and flag tests -- and only otherwise goes the Python way,
# which copies or raises with the message. (Python attribute lookups such as x.flags cost
# about a microsecond a call: as much as a one-sample product of the last layer.)


cdef inline bint _ready(object x, int ndim):
    # a native-byte-order float32/float64 ndarray of `ndim` dimensions (any when < 0),
    # C-contiguous and aligned
    if not cnp.PyArray_Check(x):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> x
    cdef object descr = <object> cnp.PyArray_DESCR(a)
    if descr is not _F32 and descr is not _F64:
        return False
    if ndim >= 0 and cnp.PyArray_NDIM(a) != ndim:
        return False
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)


cdef inline bint _fits(object buf, tuple shape, object dtype):
    # an ndarray of exactly `shape` and `dtype`, C-contiguous, aligned and writeable
    if not cnp.PyArray_Check(buf):
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
    """x is a C-contiguous, aligned ndarray of `ndim` dimensions and exactly `dtype`."""
    return (_ready(x, ndim) and
            <object> cnp.PyArray_DESCR(<cnp.ndarray> x) is dtype)


cdef bint is_buffer(object buf, Py_ssize_t d0, Py_ssize_t d1, object dtype):
    """buf would pass check_buffer for shape (d0, d1) -- or (d0,) when d1 < 0."""
    if not cnp.PyArray_Check(buf):
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
    """x as a C-contiguous, aligned float32/float64 ndarray (copied only if it is not)."""
    if _ready(x, ndim):
        return x
    if not isinstance(x, np.ndarray):
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
    """An array written in place: exact shape and dtype, C-contiguous, writeable."""
    if _fits(buf, shape, dtype):
        return buf
    if not isinstance(buf, np.ndarray):
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
    """The caller's buffer, checked, or a new empty array."""
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
    then makes the message)."""
    if not isinstance(labels, np.ndarray):
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
