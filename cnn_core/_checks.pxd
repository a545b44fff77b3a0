# Argument checks shared by the public kernel wrappers (validate once, then run nogil).
cdef object as_float_array(str name, object x, int ndim=*)
cdef object check_same_dtype(str name, object x, object dtype)
cdef object check_same_shape(str name, object x, tuple shape)
cdef object check_buffer(str name, object buf, tuple shape, object dtype)
cdef object output(str name, object buf, tuple shape, object dtype)
cdef object as_labels(str name, object labels, Py_ssize_t n, Py_ssize_t n_classes, bint check_range=*)
cdef object label_range_error(str name, object labels, Py_ssize_t n_classes)
cdef double check_scalar(str name, object value, double low=*, bint low_inclusive=*, double high=*, bint high_inclusive=*) except? -1.0
