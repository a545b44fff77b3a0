# Argument checks shared by the public kernel wrappers (validate once, then run nogil).
# Every check returns an ndarray subclass as a base-class view of it (plain): use what it
# returns, and return the caller's own object where a given buffer is returned.
cdef object plain(object x)
cdef object as_float_array(str name, object x, int ndim=*)
cdef object check_same_dtype(str name, object x, object dtype)
cdef object check_same_shape(str name, object x, tuple shape)
cdef object check_buffer(str name, object buf, tuple shape, object dtype)
cdef object output(str name, object buf, tuple shape, object dtype)
cdef object as_labels(str name, object labels, Py_ssize_t n, Py_ssize_t n_classes, bint check_range=*)
cdef object label_range_error(str name, object labels, Py_ssize_t n_classes)
cdef double check_scalar(str name, object value, double low=*, bint low_inclusive=*, double high=*, bint high_inclusive=*) except? -1.0
# The usual case of as_float_array + check_same_dtype, and of check_buffer, answered
# through NumPy's C API (no tuple, no name made): True when the checked call would accept
# the array unchanged; False means "ask the named check" (which copies or raises).
cdef bint is_ready(object x, int ndim, object dtype)
cdef bint is_buffer(object buf, Py_ssize_t d0, Py_ssize_t d1, object dtype)

# Buffers that share memory with what is read or with each other (the byte spans of
# C-contiguous arrays compared in C): how the other array is used.
cdef enum:
    READ = 0           # read while the buffer is written: no overlap at all
    WRITTEN = 1        # another buffer written: no overlap at all
    IN_PLACE = 2       # read: the buffer may be exactly it (same memory and layout), no other view
cdef bint span(object a, char **lo, char **hi) noexcept
cdef bint overlap(object a, object b)
cdef bint same_layout(object a, object b)
cdef object overlap_error(str name, str other, int how)
cdef int refuse_overlap(str name, object buf, str other, object arr, int how=*) except -1
cdef int refuse_overlaps(tuple written, tuple read) except -1
