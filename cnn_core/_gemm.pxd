# The GEMM (cnn_core/_gemm.pyx) as the other kernel families see it.
#
# * sgemm_serial / dgemm_serial: the single-thread GEMM on raw pointers, for families that
#   run their own threads (the convolutions).
# * For the linear layers' kernels (cnn_core/_linear.pyx), which share each product out
#   exactly as gemm_parallel would (so the same bits): the micro-kernel tables (their tile
#   shape), how a product is shared out (_Split, _split, _slab_bounds, _slab, gemm_slab,
#   gemm_parallel), the halves of k and their sum (_half_product, _sum_on_two, _sum_share,
#   _sum_halves), the duo's helper thread taking a second half (_HalfJob, _offer_half,
#   _take_half, _first_half_and_take, _halves_on_duo, _duo_own, _duo_disown, on the team of
#   src/nn_team.h through _parallel's duo_* functions),
#   and the Python wrappers' shared pieces (_check_pair, _run, _refuse_overlap).
#
# The small helpers called per tile, row or slab are `cdef inline` here: compiled into every
# module that cimports this file, not called through a pointer. The other functions are
# _gemm's, which other modules call through its C API (once per product or per layer).

cimport numpy as cnp
from cython cimport floating

from cnn_core._finite cimport all_finite_span

cdef extern from "nn_gemm_ukernel.h" nogil:
    ctypedef int (*nn_sgemm_ukr_t)(Py_ssize_t, const float *, Py_ssize_t, const float *, Py_ssize_t,
                                   float *, Py_ssize_t, float, float, const float *, int, int, int)
    ctypedef int (*nn_dgemm_ukr_t)(Py_ssize_t, const double *, Py_ssize_t, const double *,
                                   Py_ssize_t, double *, Py_ssize_t, double, double, const double *,
                                   int, int, int)
    ctypedef void (*nn_sgemm_row_t)(Py_ssize_t, Py_ssize_t, const float *, Py_ssize_t,
                                    const float *, Py_ssize_t, float *, float, float,
                                    const float *, int)
    ctypedef void (*nn_dgemm_row_t)(Py_ssize_t, Py_ssize_t, const double *, Py_ssize_t,
                                    const double *, Py_ssize_t, double *, double, double,
                                    const double *, int)
    ctypedef void (*nn_spack_b_t)(Py_ssize_t, const float *, Py_ssize_t, float *)
    ctypedef void (*nn_dpack_b_t)(Py_ssize_t, const double *, Py_ssize_t, double *)
    ctypedef void (*nn_spack_at_t)(Py_ssize_t, const float *, Py_ssize_t, float *)
    ctypedef void (*nn_dpack_at_t)(Py_ssize_t, const double *, Py_ssize_t, double *)
    ctypedef int (*nn_spack_bt_t)(Py_ssize_t, const float *, Py_ssize_t, int, float *)
    ctypedef int (*nn_dpack_bt_t)(Py_ssize_t, const double *, Py_ssize_t, int, double *)
    ctypedef struct nn_sgemm_kernel_t:
        nn_sgemm_ukr_t ukr[4]
        nn_sgemm_ukr_t ukr_half[4]
        nn_sgemm_row_t row
        nn_spack_b_t pack_b
        nn_spack_at_t pack_at
        nn_spack_bt_t pack_bt
        int mr
        int nr
        int nblock
        const char *name
    ctypedef struct nn_dgemm_kernel_t:
        nn_dgemm_ukr_t ukr[4]
        nn_dgemm_ukr_t ukr_half[4]
        nn_dgemm_row_t row
        nn_dpack_b_t pack_b
        nn_dpack_at_t pack_at
        nn_dpack_bt_t pack_bt
        int mr
        int nr
        int nblock
        const char *name
    int NN_RELU, NN_CHECK_FINITE

# The micro-kernel tables this CPU runs (float32, float64): _gemm's module variables, set at
# its import and by its test hook _set_isa. Another module reads _gemm's very variables
# (through a pointer the cimport fills in), so _set_isa switches every module's kernels.
cdef nn_sgemm_kernel_t _skernel
cdef nn_dgemm_kernel_t _dkernel

cdef enum:
    # products of at most this many rows read row-major B in place, unpacked (no copy of B:
    # the convolutions orient their products by it)
    B_IN_PLACE_MAX_M = 32
    # a product with fewer rows than this (and B not transposed): no packing, the row
    # kernel streams B. Decided on the whole product, never per thread slab, so that the
    # summation order (and so every bit) does not depend on the thread count.
    ROW_PATH_MAX_M = 4
    # how a product is shared out among the threads (_split)
    SPLIT_SERIAL = 0
    SPLIT_HALVES = 1
    SPLIT_SLABS = 2


ctypedef struct _Split:
    # how gemm_parallel shares out one product among the threads (decided by _split)
    int kind          # SPLIT_SERIAL, SPLIT_HALVES or SPLIT_SLABS
    bint row_path     # the unpacked row kernel (few rows, row-major B)
    bint split_n      # slabs of columns (else of rows)
    Py_ssize_t tile         # slabs start on multiples of this many columns (rows)
    Py_ssize_t extent       # n (m)
    Py_ssize_t parts        # slabs; the first r take q + 1 tiles, the others q
    Py_ssize_t q
    Py_ssize_t r


ctypedef struct _HalfJob:
    # the second half of a product (_half_product's arguments), for the duo's helper
    bint single       # float32 (else float64)
    const void *a
    Py_ssize_t rsa
    Py_ssize_t csa
    const void *b
    Py_ssize_t rsb
    Py_ssize_t csb
    void *part
    Py_ssize_t m
    Py_ssize_t n
    Py_ssize_t k
    bint row_path
    int status
    Py_ssize_t ticket       # the team's job (0: the team was not this caller's: it runs the half)
    bint offered      # offered, not yet taken back (_take_half)


ctypedef struct _Halves:
    # both halves of k of a product, a part each (_k_halves)
    _HalfJob job
    int status[2]


ctypedef struct _SlabJob:
    # a product in slabs, a part each (gemm_parallel); float32 or float64 behind the pointers
    const _Split *split
    bint single
    const void *a
    Py_ssize_t rsa
    Py_ssize_t csa
    const void *b
    Py_ssize_t rsb
    Py_ssize_t csb
    void *c
    Py_ssize_t ldc
    Py_ssize_t m
    Py_ssize_t n
    Py_ssize_t k
    double alpha      # (a float's value is a double's exactly)
    double beta
    const void *bias
    int relu
    int status[64]    # MAX_PARTS


ctypedef struct _SumJob:
    # the halves' sum, by rows on two threads (_sum_share)
    bint single
    const void *part
    void *c
    Py_ssize_t ldc
    Py_ssize_t m
    Py_ssize_t n
    double alpha
    double beta
    const void *bias
    int relu


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline bint _sum_on_two(Py_ssize_t m, Py_ssize_t n, int team) noexcept nogil:
    # the halves' sum is cut by rows between two threads (when it is large enough)
    return team > 1 and m * n >= 4096


cdef inline void _slab_bounds(const _Split *s, Py_ssize_t t, Py_ssize_t *start,
                              Py_ssize_t *size) noexcept nogil:
    # slab t of a SPLIT_SLABS product: columns (split_n) or rows [start, start + size) of C
    start[0] = (t * s.q + _min(t, s.r)) * s.tile
    size[0] = _min((s.q + (1 if t < s.r else 0)) * s.tile, s.extent - start[0])


cdef inline void _tile_shape(const floating *dummy, int *mr, int *nr) noexcept nogil:
    # the micro-kernel's tile for the dtype (dummy only picks the fused specialisation)
    if floating is float:
        mr[0] = _skernel.mr
        nr[0] = _skernel.nr
    else:
        mr[0] = _dkernel.mr
        nr[0] = _dkernel.nr


cdef inline bint _rows_finite(const floating *c, Py_ssize_t ldc, Py_ssize_t i0, Py_ssize_t i1,
                              Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    # rows [i0, i1), columns [j0, j1) of c hold no NaN/inf
    cdef Py_ssize_t i
    if j0 == 0 and j1 == ldc:
        return all_finite_span(c + i0 * ldc, (i1 - i0) * ldc)
    for i in range(i0, i1):
        if not all_finite_span(c + i * ldc + j0, j1 - j0):
            return False
    return True


# Single-thread GEMM on raw pointers, for other kernel families (convolution) that run their
# own threads: C (m x n) = alpha * A @ B + beta * C, element (i, p) of A at a[i*rsa + p*csa],
# (p, j) of B at b[p*rsb + j*csb], C row-major with leading dimension ldc; bias (n,) or NULL
# added per column; relu != 0 applies max(., 0). Returns -1 when out of memory.
cdef int sgemm_serial(const float *a, Py_ssize_t rsa, Py_ssize_t csa, const float *b,
                      Py_ssize_t rsb, Py_ssize_t csb, float *c, Py_ssize_t ldc, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, float alpha, float beta, const float *bias,
                      int relu) noexcept nogil
cdef int dgemm_serial(const double *a, Py_ssize_t rsa, Py_ssize_t csa, const double *b,
                      Py_ssize_t rsb, Py_ssize_t csb, double *c, Py_ssize_t ldc, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, double alpha, double beta, const double *bias,
                      int relu) noexcept nogil

# One product, or one thread's share of it, as gemm's own threads run it (_gemm.pyx says
# what each does). Fused over float / double.
cdef int gemm_slab(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                   Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                   Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta, const floating *bias,
                   int relu, bint row_path) noexcept nogil
cdef int gemm_parallel(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                       Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                       Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta,
                       const floating *bias, int relu, int threads) noexcept nogil
cdef _Split _split(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t csb, int threads, int mr,
                   int nr) noexcept nogil
cdef int _slab(const _Split *s, Py_ssize_t t, const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
               const floating *b, Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc,
               Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta,
               const floating *bias, int relu) noexcept nogil
cdef int _half_product(int h, const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                       Py_ssize_t rsb, Py_ssize_t csb, floating *part, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k, bint row_path) noexcept nogil
cdef void _sum_halves(const floating *part, floating *c, Py_ssize_t ldc, Py_ssize_t i0,
                      Py_ssize_t i1, Py_ssize_t m, Py_ssize_t n, floating alpha, floating beta,
                      const floating *bias, int relu) noexcept nogil
cdef void _sum_share(int tid, const floating *part, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                     Py_ssize_t n, floating alpha, floating beta, const floating *bias, int relu,
                     bint on_two) noexcept nogil

# The duo (src/nn_team.h's split phase): the second half of k offered to a worker, taken back.
cdef void _offer_half(_HalfJob *job, bint single, const void *a, Py_ssize_t rsa, Py_ssize_t csa,
                      const void *b, Py_ssize_t rsb, Py_ssize_t csb, void *part, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, bint row_path, bint owned=*) noexcept nogil
cdef int _take_half(_HalfJob *job) noexcept nogil
cdef int _first_half_and_take(_HalfJob *j, floating *dummy) noexcept nogil
cdef int _halves_on_duo(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                        Py_ssize_t rsb, Py_ssize_t csb, floating *part, Py_ssize_t m, Py_ssize_t n,
                        Py_ssize_t k, bint row_path) noexcept nogil
cdef int _duo_own() noexcept nogil
cdef void _duo_disown() noexcept nogil

# The Python wrappers' shared pieces: argument checks, and a checked product run
cdef _check_pair(str name_a, object a, str name_b, object b)
cdef _refuse_overlap(str name, object buf, tuple named)
cdef int _run(cnp.ndarray a, bint trans_a, cnp.ndarray b, bint trans_b, cnp.ndarray c, Py_ssize_t k,
              double alpha, double beta, object bias, int relu, bint naive) except -1
