# The NaN/inf test shared by the optimizers' check pass (fit's guard) and the backward of a
# chain of linear layers, which checks the gradients it has just written while they are in
# its cache: src/nn_finite.h (integer bit tests, AVX2 when the CPU has it).

from cython cimport floating

cdef extern from "nn_finite.h" nogil:
    int nn_all_finite_f32(const float *x, Py_ssize_t n)
    int nn_all_finite_f64(const double *x, Py_ssize_t n)


cdef inline bint all_finite_span(const floating *x, Py_ssize_t n) noexcept nogil:
    # x[0:n] holds no NaN and no infinity
    if floating is float:
        return nn_all_finite_f32(x, n) != 0
    else:
        return nn_all_finite_f64(x, n) != 0
