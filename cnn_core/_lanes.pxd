# Sums over a contiguous run of values in 32 interleaved lanes (in double): independent
# chains of additions, where one running sum would wait ~4 cycles on every add; then the
# lanes and the tail, in order -- a fixed order, so the result depends neither on the
# thread count nor on the ISA (src/nn_lanes.h: a portable loop, and AVX-512 with the lanes
# in four vectors). Shared by the convolution's bias gradient and batch norm.

from cython cimport floating

cdef extern from "nn_lanes.h" nogil:
    cdef enum:
        LANE_SUM "NN_LANE_SUM"                  # sum(v)
        LANE_SUM_SQ_DEV "NN_LANE_SUM_SQ_DEV"    # sum((v - mean)^2)
        LANE_SUM_G_DEV "NN_LANE_SUM_G_DEV"      # sum(g * (v - mean))
    double nn_lane_sum_f32(const float *g, const float *v, Py_ssize_t n, double mean, int kind)
    double nn_lane_sum_f64(const double *g, const double *v, Py_ssize_t n, double mean, int kind)
    void nn_lane_sums_f32(const float *g, const float *v, Py_ssize_t n, Py_ssize_t stride,
                          const double *means, int kind, Py_ssize_t count, double *totals)


cdef inline double lane_sum(const floating *g, const floating *v, Py_ssize_t n, double mean,
                            int kind) noexcept nogil:
    # the sum of term(i) for i < n (g is read only by LANE_SUM_G_DEV)
    if floating is float:
        return nn_lane_sum_f32(g, v, n, mean, kind)
    else:
        return nn_lane_sum_f64(g, v, n, mean, kind)


cdef inline void lane_sums(const floating *g, const floating *v, Py_ssize_t n, Py_ssize_t stride,
                           const double *means, int kind, Py_ssize_t count,
                           double *totals) noexcept nogil:
    # totals[j] = lane_sum(g + j * stride, v + j * stride, n, means[j] or 0, kind), j < count
    # (means may be NULL): float32 short runs side by side (src/nn_lanes.h), the same bits
    cdef Py_ssize_t j
    if floating is float:
        nn_lane_sums_f32(g, v, n, stride, means, kind, count, totals)
    else:
        for j in range(count):
            totals[j] = nn_lane_sum_f64(g + j * stride, v + j * stride, n,
                                        means[j] if means != NULL else 0, kind)
