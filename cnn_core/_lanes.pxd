# Sums over a contiguous run of values in 8 interleaved lanes (in double): 8 independent
# chains of additions the compiler can vectorise, where one running sum would wait ~4 cycles
# on every add; then the lanes and the tail, in order -- a fixed order, so the result does
# not depend on the thread count. Shared by the convolution's bias gradient and batch norm.

from cython cimport floating

cdef enum:
    LANE_SUM = 0          # sum(v)
    LANE_SUM_SQ_DEV = 1   # sum((v - mean)^2)
    LANE_SUM_G_DEV = 2    # sum(g * (v - mean))


cdef inline double _lane_term(const floating *g, const floating *v, long j, double mean,
                              int kind) noexcept nogil:
    if kind == LANE_SUM:
        return v[j]
    if kind == LANE_SUM_SQ_DEV:
        return (v[j] - mean) * (v[j] - mean)
    return g[j] * (v[j] - mean)


cdef inline double lane_sum(const floating *g, const floating *v, long n, double mean,
                            int kind) noexcept nogil:
    # `kind` is a constant at every call site: the compiler keeps one branch
    cdef double lanes[8]
    cdef double total = 0
    cdef long i, l, n8 = n - n % 8
    for l in range(8):
        lanes[l] = 0
    for i in range(0, n8, 8):
        for l in range(8):
            lanes[l] += _lane_term(g, v, i + l, mean, kind)
    for l in range(8):
        total += lanes[l]
    for i in range(n8, n):
        total += _lane_term(g, v, i, mean, kind)
    return total
