"""GEMM and the linear layer's kernels: C = alpha * op(A) @ op(B) + beta * C.

Design (BLIS's five loops, turned to row-major C)
-------------------------------------------------
The work of C (m x n) += A (m x k) @ B (k x n) is cut into blocks that fit the caches and
handed, one MR x NR tile at a time, to a register-tile micro-kernel written in C
(src/nn_gemm_ukernel.h, chosen at run time: AVX-512, AVX2+FMA or portable)::

    loop 5  for ic in m, step M_BLOCK          rows of C
    loop 4    for pc in k, step kc               pack A[ic:, pc:] -> a_packed   (M_BLOCK x kc)
    loop 3      for jc in n, step n_block          pack B[pc:, jc:] -> b_packed (kc x n_block, L2)
    loop 2        for ir in mc, step MR              A micro-panel (kc x MR, L1)
    loop 1          for jr in n_block, step NR         B micro-panel (kc x NR, from L2)
                      micro-kernel: C[ir:ir+MR, jr:jr+NR] = alpha*acc + beta*C (+bias, ReLU)

Packing copies a block into the order the micro-kernel reads it, contiguous and 64-byte
aligned, zero-padding the edges. The transposes are free: packing reads A and B through
(row stride, column stride) pairs (whole panels of transposed A and B by code stamped per
ISA: a fixed-size copy, a 16x16 transpose in registers or gathers). Packing is
skipped where it does not pay: row-major A is read in place (MR whole rows), and so is
row-major B when the product has at most B_IN_PLACE_MAX_M rows (NR whole columns); only
the partial edge panels are then packed. Four micro-kernel variants (A, B packed or in
place) serve the four cases.

Threads: the output is cut into slabs of whole tiles, along n when n >= m and along m
otherwise, the tiles shared out as evenly as they go; each thread runs the five loops on
its slab with its own packing buffers (thread-local, reused across calls:
src/nn_scratch.h). Every element of C is summed by one thread in the same k order, so
results do not depend on the thread count. A product with few rows for its k (one sample;
a batch through a 784-input layer) is cut by k instead: two halves summed into two partial
Cs, then added (_k_halves) -- decided from the shape alone, so again the same bits on any
number of threads. `_split` makes the choice; `linear_chain_forward` runs several linear
layers in one parallel region, each thread taking the share `_split` gives it per layer.

`gemm_naive` is the textbook triple loop, kept as reference and fallback.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memchr, memset

from cnn_core._checks cimport (as_float_array, check_same_dtype, check_buffer, output,
                              check_scalar, is_ready, is_buffer)
from cnn_core._parallel cimport num_threads, span_parts, MAX_PARTS
from cnn_core._finite cimport all_finite_span

cdef extern from "nn_gemm_ukernel.h" nogil:
    ctypedef int (*nn_sgemm_ukr_t)(long, const float *, long, const float *, long, float *,
                                    long, float, float, const float *, int, int, int)
    ctypedef int (*nn_dgemm_ukr_t)(long, const double *, long, const double *, long, double *,
                                    long, double, double, const double *, int, int, int)
    ctypedef void (*nn_sgemm_row_t)(long, long, const float *, long, const float *, long,
                                    float *, float, float, const float *, int)
    ctypedef void (*nn_dgemm_row_t)(long, long, const double *, long, const double *, long,
                                    double *, double, double, const double *, int)
    ctypedef void (*nn_spack_b_t)(long, const float *, long, float *)
    ctypedef void (*nn_dpack_b_t)(long, const double *, long, double *)
    ctypedef void (*nn_spack_at_t)(long, const float *, long, float *)
    ctypedef void (*nn_dpack_at_t)(long, const double *, long, double *)
    ctypedef int (*nn_spack_bt_t)(long, const float *, long, int, float *)
    ctypedef int (*nn_dpack_bt_t)(long, const double *, long, int, double *)
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
    nn_sgemm_kernel_t nn_sgemm_kernel_for(int isa)
    nn_dgemm_kernel_t nn_dgemm_kernel_for(int isa)
    int nn_cpu_best_isa()
    int NN_ISA_GENERIC, NN_ISA_AVX2, NN_ISA_AVX512

cnp.import_array()

cdef extern from *:
    """
    /* the team of the enclosing OpenMP parallel region: its size, and a barrier for all of
       it (an orphaned barrier: it binds to whatever region the caller runs in) */
    #ifdef _OPENMP
    #include <omp.h>
    static void nn_team_barrier(void) {
    #pragma omp barrier
    }
    static int nn_team_size(void) { return omp_get_num_threads(); }
    #else
    static void nn_team_barrier(void) { }
    static int nn_team_size(void) { return 1; }
    #endif
    """
    void nn_team_barrier() nogil
    int nn_team_size() nogil

cdef extern from "nn_peak.h" nogil:
    double nn_fma_peak_loop(int isa, long reps)

cdef extern from "nn_scratch.h" nogil:
    void *nn_scratch(int slot, size_t nbytes)

cdef extern from "nn_duo.h" nogil:
    ctypedef void (*nn_duo_fn)(void *arg) noexcept nogil
    long nn_duo_offer(nn_duo_fn fn, void *arg)
    int nn_duo_own()
    void nn_duo_disown()
    long nn_duo_post(nn_duo_fn fn, void *arg)
    void nn_duo_finish(long ticket, nn_duo_fn fn, void *arg)
    void nn_duo_hold(int hold)
    long nn_duo_taken()
    long nn_duo_stolen()

# Cache blocking (elements). kc x n_block of B stays in L2; n_block is the kernel table's
# `nblock`, chosen per ISA for its machines' L2 (src/nn_gemm_ukernel.h: float 240 columns,
# 960 KiB, with AVX-512 on a 2 MiB L2; 120 with AVX2 on a 512 KiB one). A long kc (a whole
# 784- or 1024-long sum in one block) was measured best on both: each C tile is written
# once instead of once per k block, and fewer micro-kernel calls share the fixed cost of
# the write-back -- although the A micro-panel (12 x 1024 x 4 B = 48 KiB) then streams
# through L1 rather than staying in it. Measured on the AVX-512 machine, 2 threads, GFLOP/s
# at 1024^3 / 128x784x256: kc 384 -> 387 / 282, kc 1024 -> 413 / 374 (double: kc 256 -> 512,
# 189 -> 200 / 151 -> 176); on the AVX2 one (AMD Zen 2) kc 256, 384, 512 were all slower
# than 1024 at 1024^3 (138-162 against 172 GF/s) and no faster on the MLP's products.
cdef enum:
    KC_FLOAT = 1024
    KC_DOUBLE = 512
    M_BLOCK = 3072
    # below this many multiply-adds a second thread costs more than it saves
    PARALLEL_MIN_FMAS = 1 << 18
    # ... for the row kernel, which streams B from memory (one-sample inference: each
    # thread reads its half of W, from its own core's cache once warm)
    PARALLEL_MIN_FMAS_ROWS = 1 << 17
    # a product with fewer rows than this (and B not transposed): no packing, the row
    # kernel streams B. Decided on the whole product, never per thread slab, so that the
    # summation order (and so every bit) does not depend on the thread count.
    ROW_PATH_MAX_M = 4
    # (B_IN_PLACE_MAX_M, the rows up to which row-major B is read in place: _gemm.pxd)
    # the halves of k (_k_halves): for products of at most this many elements of C (two
    # partial Cs of 1 MiB in float32 at most; larger ones keep the slabs, on all threads)
    HALVES_MAX_MN = 1 << 17
    # how a product is shared out among the threads (_split)
    SPLIT_SERIAL = 0
    SPLIT_HALVES = 1
    SPLIT_SLABS = 2

cdef nn_sgemm_kernel_t _skernel = nn_sgemm_kernel_for(nn_cpu_best_isa())
cdef nn_dgemm_kernel_t _dkernel = nn_dgemm_kernel_for(nn_cpu_best_isa())


cdef inline long _ceil_div(long a, long b) noexcept nogil:
    return (a + b - 1) // b


cdef inline long _round_up(long a, long b) noexcept nogil:
    return _ceil_div(a, b) * b


cdef inline long _min(long a, long b) noexcept nogil:
    return a if a < b else b


cdef void pack_a_mcxkc(const floating *a, long rsa, long csa, long mc, long kc, int mr,
                       floating *dst) noexcept nogil:
    # A block (mc x kc), element (i, p) at a[i*rsa + p*csa] -> ceil(mc/MR) micro-panels,
    # each kc x MR: dst[panel*kc*MR + p*MR + i]; rows past mc are zeros.
    cdef long ir_index, ir, i, p, rows
    cdef floating *panel
    cdef const floating *src
    for ir_index in range(_ceil_div(mc, mr)):
        ir = ir_index * mr
        rows = _min(mr, mc - ir)
        panel = dst + ir * kc
        if csa == 1:
            for i in range(rows):
                src = a + (ir + i) * rsa
                for p in range(kc):
                    panel[p * mr + i] = src[p]
        elif rsa == 1 and rows == mr:
            # a whole panel of transposed A: the copy stamped for this CPU
            if floating is float:
                _skernel.pack_at(kc, a + ir, csa, panel)
            else:
                _dkernel.pack_at(kc, a + ir, csa, panel)
        else:
            for p in range(kc):
                src = a + p * csa + ir * rsa
                for i in range(rows):
                    panel[p * mr + i] = src[i * rsa]
        for i in range(rows, mr):
            for p in range(kc):
                panel[p * mr + i] = 0


cdef void pack_b_kcxnc(const floating *b, long rsb, long csb, long kc, long nc, int nr,
                       floating *dst) noexcept nogil:
    # B block (kc x nc), element (p, j) at b[p*rsb + j*csb] -> ceil(nc/NR) micro-panels,
    # each kc x NR: dst[panel*kc*NR + p*NR + j]; columns past nc are zeros.
    cdef long jr_index, jr, j, p, cols
    cdef floating *panel
    cdef const floating *src
    for jr_index in range(_ceil_div(nc, nr)):
        jr = jr_index * nr
        cols = _min(nr, nc - jr)
        panel = dst + jr * kc
        if csb == 1 and cols == nr:
            # a whole panel: the vector copy stamped for this CPU (nn_gemm_ukernel.h)
            if floating is float:
                _skernel.pack_b(kc, b + jr, rsb, panel)
            else:
                _dkernel.pack_b(kc, b + jr, rsb, panel)
        elif csb == 1:
            for p in range(kc):
                src = b + p * rsb + jr
                for j in range(cols):
                    panel[p * nr + j] = src[j]
                for j in range(cols, nr):
                    panel[p * nr + j] = 0
        elif rsb == 1 and (_skernel.pack_bt(kc, b + jr * csb, csb, <int> cols, panel)
                           if floating is float else
                           _dkernel.pack_bt(kc, b + jr * csb, csb, <int> cols, panel)):
            pass   # a panel of transposed B, packed by the ISA's kernel (nn_gemm_ukernel.h)
        else:
            for j in range(cols):
                src = b + (jr + j) * csb
                for p in range(kc):
                    panel[p * nr + j] = src[p * rsb]
            for j in range(cols, nr):
                for p in range(kc):
                    panel[p * nr + j] = 0


cdef inline int _ukernel(long kc, const floating *a, long lda, const floating *b, long ldb,
                         floating *c, long ldc, floating alpha, floating beta,
                         const floating *bias, int relu, int mr, int nr) noexcept nogil:
    # lda == 0: a is a packed micro-panel; else MR whole rows of row-major A, lda apart.
    # ldb == 0: b is a packed micro-panel; else NR whole columns of row-major B, rows ldb apart.
    # At most NR / 2 columns: the half-width kernel (half the multiply-adds; every element
    # is summed by the same sequence of fused multiply-adds in either, so the same bits).
    # relu: the epilogue flags (NN_RELU, NN_CHECK_FINITE); returns nonzero when asked to
    # check and a value written is NaN or infinite.
    cdef int which = (lda != 0) + 2 * (ldb != 0)
    if floating is float:
        if 2 * nr <= _skernel.nr:
            return _skernel.ukr_half[which](kc, a, lda, b, ldb, c, ldc, alpha, beta, bias,
                                            relu, mr, nr)
        return _skernel.ukr[which](kc, a, lda, b, ldb, c, ldc, alpha, beta, bias, relu, mr, nr)
    else:
        if 2 * nr <= _dkernel.nr:
            return _dkernel.ukr_half[which](kc, a, lda, b, ldb, c, ldc, alpha, beta, bias,
                                            relu, mr, nr)
        return _dkernel.ukr[which](kc, a, lda, b, ldb, c, ldc, alpha, beta, bias, relu, mr, nr)


cdef int gemm_slab(const floating *a, long rsa, long csa, const floating *b, long rsb, long csb,
                   floating *c, long ldc, long m, long n, long k, floating alpha, floating beta,
                   const floating *bias, int relu, bint row_path) noexcept nogil:
    # One thread's share: C (m x n) = alpha * A (m x k) @ B (k x n) + beta * C (+ bias, ReLU).
    # relu: the epilogue flags, NN_RELU and NN_CHECK_FINITE (see nn_gemm_ukernel.h).
    # Needs k >= 1. row_path: take the unpacked row kernel (the whole product is a few rows).
    # Returns -1 when the packing buffers cannot be allocated; 1 when NN_CHECK_FINITE was
    # asked and a value written is NaN or infinite; else 0.
    cdef int mr, nr
    cdef long kc_max, nb_max
    if floating is float:
        mr = _skernel.mr
        nr = _skernel.nr
        kc_max = KC_FLOAT
        nb_max = _skernel.nblock
    else:
        mr = _dkernel.mr
        nr = _dkernel.nr
        kc_max = KC_DOUBLE
        nb_max = _dkernel.nblock
    cdef long i, kc, nb, mb
    if row_path:
        for i in range(m):
            if floating is float:
                _skernel.row(k, n, a + i * rsa, csa, b, rsb, c + i * ldc, alpha, beta, bias,
                             relu & NN_RELU)
            else:
                _dkernel.row(k, n, a + i * rsa, csa, b, rsb, c + i * ldc, alpha, beta, bias,
                             relu & NN_RELU)
        if relu & NN_CHECK_FINITE and not _rows_finite(c, ldc, 0, m, 0, n):
            return 1
        return 0
    # balanced blocks: 2000 = 2 x 1000 rather than 1024 + 976
    kc = _ceil_div(k, _ceil_div(k, kc_max))
    nb = _round_up(_ceil_div(n, _ceil_div(n, nb_max)), nr)
    mb = _round_up(_ceil_div(m, _ceil_div(m, M_BLOCK)), mr)
    cdef floating *a_packed = <floating *> nn_scratch(0, mb * kc * sizeof(floating))
    cdef floating *b_packed = <floating *> nn_scratch(1, nb * kc * sizeof(floating))
    if a_packed == NULL or b_packed == NULL:
        return -1
    cdef long ic_index, pc_index, jc_index, ir_index, jr_index
    cdef long ic, pc, jc, ir, jr, mc, kcur, nc, full = 0, lda, ldb, b_full = 0
    cdef const floating *a_panel
    cdef const floating *b_panel
    # row-major A needs no packing: the micro-kernel broadcasts from MR rows in place
    cdef bint a_in_place = csa == 1
    # nor does row-major B when few rows of A share each of its panels (packing costs a
    # read and a write of B; in place, each use reads NR contiguous elements of a row)
    cdef bint b_in_place = csb == 1 and m <= B_IN_PLACE_MAX_M
    cdef floating beta_k
    cdef const floating *bias_k
    cdef int relu_k, bad = 0
    for ic_index in range(_ceil_div(m, mb)):  # loop 5: rows of C
        ic = ic_index * mb
        mc = _min(mb, m - ic)
        for pc_index in range(_ceil_div(k, kc)):  # loop 4: the k dimension
            pc = pc_index * kc
            kcur = _min(kc, k - pc)
            if a_in_place:
                # only a last, partial micro-panel is packed (the kernel reads MR whole rows)
                full = mc - mc % mr
                if full < mc:
                    pack_a_mcxkc(a + (ic + full) * rsa + pc, rsa, 1, mc - full, kcur, mr,
                                 a_packed)
            else:
                pack_a_mcxkc(a + ic * rsa + pc * csa, rsa, csa, mc, kcur, mr, a_packed)
            beta_k = beta if pc == 0 else 1                      # later blocks accumulate
            relu_k = relu if pc + kcur >= k else 0     # ReLU (and check) once the sum is whole
            for jc_index in range(_ceil_div(n, nb)):  # loop 3: columns of C
                jc = jc_index * nb
                nc = _min(nb, n - jc)
                if b_in_place:
                    # only a last, partial micro-panel is packed (NR whole columns are read)
                    b_full = nc - nc % nr
                    if b_full < nc:
                        pack_b_kcxnc(b + pc * rsb + jc + b_full, rsb, 1, kcur, nc - b_full, nr,
                                     b_packed)
                else:
                    pack_b_kcxnc(b + pc * rsb + jc * csb, rsb, csb, kcur, nc, nr, b_packed)
                for ir_index in range(_ceil_div(mc, mr)):  # loop 2: A micro-panels
                    ir = ir_index * mr
                    if not a_in_place:
                        a_panel = a_packed + ir * kcur
                        lda = 0
                    elif ir < full:
                        a_panel = a + (ic + ir) * rsa + pc
                        lda = rsa
                    else:
                        a_panel = a_packed
                        lda = 0
                    for jr_index in range(_ceil_div(nc, nr)):  # loop 1: B micro-panels
                        jr = jr_index * nr
                        bias_k = bias + jc + jr if (bias != NULL and pc == 0) else NULL
                        if not b_in_place:
                            b_panel = b_packed + jr * kcur
                            ldb = 0
                        elif jr < b_full:
                            b_panel = b + pc * rsb + jc + jr
                            ldb = rsb
                        else:
                            b_panel = b_packed
                            ldb = 0
                        bad |= _ukernel(kcur, a_panel, lda, b_panel, ldb,
                                        c + (ic + ir) * ldc + jc + jr, ldc, alpha, beta_k,
                                        bias_k, relu_k, <int> _min(mr, mc - ir),
                                        <int> _min(nr, nc - jr))
    return 1 if bad else 0


cdef void _sum_halves(const floating *part, floating *c, long ldc, long i0, long i1, long m,
                      long n, floating alpha, floating beta, const floating *bias,
                      int relu) noexcept nogil:
    # rows [i0, i1) of c = alpha * (first + last) + beta * c (+ bias, ReLU), the two
    # partial products m x n, one after the other in `part`
    cdef long i, j
    cdef floating r
    for i in range(i0, i1):
        for j in range(n):
            r = alpha * (part[i * n + j] + part[(m + i) * n + j])
            if beta != 0:
                r = r + beta * c[i * ldc + j]
            if bias != NULL:
                r = r + bias[j]
            if relu and r <= 0:     # (NaN stays NaN, as in the micro-kernels)
                r = 0
            c[i * ldc + j] = r


cdef int _half_product(int h, const floating *a, long rsa, long csa, const floating *b,
                       long rsb, long csb, floating *part, long m, long n, long k,
                       bint row_path) noexcept nogil:
    # half h (0: the first k // 2 rows of B, 1: the rest) of A @ B into its partial C
    cdef long half = k // 2
    return gemm_slab(a + h * half * csa, rsa, csa, b + h * half * rsb, rsb, csb,
                     part + h * m * n, n, m, n, half if h == 0 else k - half, 1, 0, NULL, 0,
                     row_path)


ctypedef struct _HalfJob:
    # the second half of a product (_half_product's arguments), for the duo's helper
    bint single       # float32 (else float64)
    const void *a
    long rsa
    long csa
    const void *b
    long rsb
    long csb
    void *part
    long m
    long n
    long k
    bint row_path
    int status
    long ticket       # the duo's ticket (0: the duo was not this caller's: it runs the half)
    bint offered      # offered, not yet taken back (_take_half)


cdef void _half_job(void *arg) noexcept nogil:
    cdef _HalfJob *j = <_HalfJob *> arg
    if j.single:
        j.status = _half_product(1, <const float *> j.a, j.rsa, j.csa, <const float *> j.b,
                                 j.rsb, j.csb, <float *> j.part, j.m, j.n, j.k, j.row_path)
    else:
        j.status = _half_product(1, <const double *> j.a, j.rsa, j.csa, <const double *> j.b,
                                 j.rsb, j.csb, <double *> j.part, j.m, j.n, j.k, j.row_path)


cdef void _offer_half(_HalfJob *job, bint single, const void *a, long rsa, long csa,
                      const void *b, long rsb, long csb, void *part, long m, long n, long k,
                      bint row_path, bint owned=False) noexcept nogil:
    # the second half of k of A @ B, into its partial C, offered to the duo's helper thread
    # (src/nn_duo.h; `owned`: the duo is this caller's already, nn_duo_own); the caller
    # does the first half, then _take_half
    job.single = single
    job.a = a
    job.rsa = rsa
    job.csa = csa
    job.b = b
    job.rsb = rsb
    job.csb = csb
    job.part = part
    job.m = m
    job.n = n
    job.k = k
    job.row_path = row_path
    job.status = 0
    job.ticket = nn_duo_post(_half_job, job) if owned else nn_duo_offer(_half_job, job)
    job.offered = True


cdef int _take_half(_HalfJob *job) noexcept nogil:
    # the offered half done when this returns: by the helper, or here if it had not started
    nn_duo_finish(job.ticket, _half_job, job)
    job.offered = False
    return job.status


cdef int _first_half_and_take(_HalfJob *j, floating *dummy) noexcept nogil:
    # (after _offer_half) the first half of the offered product here, then the second
    # taken back: both partial Cs in j.part. -1 if either ran out of memory.
    cdef int status = _half_product(0, <const floating *> j.a, j.rsa, j.csa,
                                    <const floating *> j.b, j.rsb, j.csb,
                                    <floating *> j.part, j.m, j.n, j.k, j.row_path)
    return -1 if _take_half(j) != 0 or status != 0 else 0


cdef int _halves_on_duo(const floating *a, long rsa, long csa, const floating *b, long rsb,
                        long csb, floating *part, long m, long n, long k,
                        bint row_path) noexcept nogil:
    # Both halves of k into their partial Cs, the second offered to the duo's helper, the
    # first here: for the few-row products (one-sample inference), where an OpenMP fork,
    # barrier and join cost as much as half the product. The same _half_product calls as
    # on a team, whichever thread runs the second: the same bits.
    cdef _HalfJob job
    _offer_half(&job, floating is float, a, rsa, csa, b, rsb, csb, part, m, n, k, row_path)
    return _first_half_and_take(&job, part)


def _duo_counts():
    """(jobs the duo's helper thread ran, jobs their callers took back and ran themselves):
    for tests. A call that found the duo owned by another caller offered nothing and is
    counted on neither side."""
    return nn_duo_taken(), nn_duo_stolen()


def _duo_hold(hold):
    """Tests: True keeps the duo's helper from claiming jobs (each caller then runs its
    offered half itself), False lets it claim them again."""
    nn_duo_hold(1 if hold else 0)


cdef inline bint _sum_on_two(long m, long n, int team) noexcept nogil:
    # the halves' sum is cut by rows between two threads (when it is large enough)
    return team > 1 and m * n >= 4096


cdef void _sum_share(int tid, const floating *part, floating *c, long ldc, long m, long n,
                     floating alpha, floating beta, const floating *bias, int relu,
                     bint on_two) noexcept nogil:
    # thread tid's rows of the halves' sum: all of them on thread 0, or the first half of
    # the rows on thread 0 and the rest on thread 1 (`on_two`)
    cdef long rows = (m + 1) // 2
    if not on_two:
        if tid == 0:
            _sum_halves(part, c, ldc, 0, m, m, n, alpha, beta, bias, relu)
    elif tid == 0:
        _sum_halves(part, c, ldc, 0, rows, m, n, alpha, beta, bias, relu)
    elif tid == 1:
        _sum_halves(part, c, ldc, rows, m, m, n, alpha, beta, bias, relu)


cdef int _k_halves(const floating *a, long rsa, long csa, const floating *b, long rsb,
                   long csb, floating *c, long ldc, long m, long n, long k, floating alpha,
                   floating beta, const floating *bias, int relu, int threads,
                   bint row_path) noexcept nogil:
    # A product with few rows for its k (one-sample inference; a batch of 128 through a
    # 784-input layer): the sum over k is cut in two halves, the first and the last rows
    # of B, each summed into its own partial C (a thread each when there are two), then
    #
    #     c[i, j] = alpha * (first[i, j] + last[i, j]) + beta * c[i, j]  (+ bias[j], ReLU)
    #
    # Each thread reads one contiguous block of B, whole rows: what the hardware prefetcher
    # streams fastest, and -- B being a weight matrix -- the very rows the optimizer's
    # thread updated on the same core (its half of the parameters, see _optim.pyx), still
    # in that core's cache; column slabs would read half of every row, from both cores.
    # Always two halves, whatever the thread count: the same sums, so the same bits.
    # Returns -1 when a buffer cannot be allocated.
    cdef floating *part = <floating *> nn_scratch(2, 2 * m * n * sizeof(floating))
    if part == NULL:
        return -1
    cdef long h
    cdef int status[2]
    cdef int team = 2 if threads >= 2 else 1
    if team == 2 and row_path:
        if _halves_on_duo(a, rsa, csa, b, rsb, csb, part, m, n, k, row_path) != 0:
            return -1
    else:
        for h in prange(2, nogil=True, num_threads=team, schedule="static"):
            status[h] = _half_product(<int> h, a, rsa, csa, b, rsb, csb, part, m, n, k,
                                      row_path)
        if status[0] != 0 or status[1] != 0:
            return -1
    # the sum (by rows, on both threads when there are many; here after the duo)
    cdef bint on_two = _sum_on_two(m, n, team) and not row_path
    if not on_two:
        _sum_share(0, part, c, ldc, m, n, alpha, beta, bias, relu, False)
    else:
        for h in prange(2, nogil=True, num_threads=2, schedule="static"):
            _sum_share(<int> h, part, c, ldc, m, n, alpha, beta, bias, relu, True)
    return 0


ctypedef struct _Split:
    # how gemm_parallel shares out one product among the threads (decided by _split)
    int kind          # SPLIT_SERIAL, SPLIT_HALVES or SPLIT_SLABS
    bint row_path     # the unpacked row kernel (few rows, row-major B)
    bint split_n      # slabs of columns (else of rows)
    long tile         # slabs start on multiples of this many columns (rows)
    long extent       # n (m)
    long parts        # slabs; the first r take q + 1 tiles, the others q
    long q
    long r


cdef _Split _split(long m, long n, long k, long csb, int threads, int mr,
                   int nr) noexcept nogil:
    # Cut C into `parts` slabs (along n if n >= m, else along m, at tile boundaries), or
    # sum two halves of k (_k_halves), or leave the product to one thread. Needs k >= 1.
    cdef _Split s
    s.split_n = n >= m
    s.row_path = m < ROW_PATH_MAX_M and csb == 1
    # slabs start on tile boundaries -- half tiles along n (a slab may end in a half-width
    # panel: 784 columns on 2 threads are 400 + 384, not 416 + 368); for the row kernel on
    # multiples of 128 columns, so every column is summed by the same code whatever the
    # thread count
    s.tile = (128 if s.row_path else nr // 2) if s.split_n else mr
    s.extent = n if s.split_n else m
    s.parts = span_parts(_ceil_div(s.extent, s.tile), 1, threads)
    s.kind = SPLIT_SLABS
    # (the micro-kernels' work counts whole tiles: a 10-column product costs a 32-column one)
    if (m * n * k if s.row_path else m * _round_up(n, nr) * k) < (
            PARALLEL_MIN_FMAS_ROWS if s.row_path else PARALLEL_MIN_FMAS):
        s.parts = 1
    elif k >= 2 and m * n <= HALVES_MAX_MN and (s.row_path or (csb == 1 and 4 * m <= k)):
        # (decided on the product, whatever the thread count; the two partial Cs cost
        # at most half of what B does to read, and stay small: two threads at most)
        s.kind = SPLIT_HALVES
    if s.kind == SPLIT_SLABS and s.parts <= 1:
        s.kind = SPLIT_SERIAL
        s.parts = 1
    # whole tiles per slab, shared out evenly: q each, one more for the first r slabs
    s.q = _ceil_div(s.extent, s.tile) // s.parts
    s.r = _ceil_div(s.extent, s.tile) % s.parts
    return s


cdef inline void _slab_bounds(const _Split *s, long t, long *start, long *size) noexcept nogil:
    # slab t of a SPLIT_SLABS product: columns (split_n) or rows [start, start + size) of C
    start[0] = (t * s.q + _min(t, s.r)) * s.tile
    size[0] = _min((s.q + (1 if t < s.r else 0)) * s.tile, s.extent - start[0])


cdef int _slab(const _Split *s, long t, const floating *a, long rsa, long csa,
               const floating *b, long rsb, long csb, floating *c, long ldc, long m, long n,
               long k, floating alpha, floating beta, const floating *bias,
               int relu) noexcept nogil:
    # slab t of a SPLIT_SLABS product (gemm_slab on its rows or columns of C)
    cdef long start, size
    _slab_bounds(s, t, &start, &size)
    if size <= 0:
        return 0
    if s.split_n:
        return gemm_slab(a, rsa, csa, b + start * csb, rsb, csb, c + start, ldc, m, size, k,
                         alpha, beta, bias + start if bias != NULL else NULL, relu,
                         s.row_path)
    return gemm_slab(a + start * rsa, rsa, csa, b, rsb, csb, c + start * ldc, ldc, size, n, k,
                     alpha, beta, bias, relu, s.row_path)


cdef inline void _tile_shape(const floating *dummy, int *mr, int *nr) noexcept nogil:
    # the micro-kernel's tile for the dtype (dummy only picks the fused specialisation)
    if floating is float:
        mr[0] = _skernel.mr
        nr[0] = _skernel.nr
    else:
        mr[0] = _dkernel.mr
        nr[0] = _dkernel.nr


cdef int gemm_parallel(const floating *a, long rsa, long csa, const floating *b, long rsb,
                       long csb, floating *c, long ldc, long m, long n, long k, floating alpha,
                       floating beta, const floating *bias, int relu, int threads) noexcept nogil:
    # C = alpha * A @ B + beta * C (+ bias, ReLU) on up to `threads` threads, shared out as
    # _split decides. Needs k >= 1. Returns -1 if any thread ran out of memory.
    cdef int mr, nr
    _tile_shape(c, &mr, &nr)
    cdef _Split s = _split(m, n, k, csb, threads, mr, nr)
    if s.kind == SPLIT_HALVES:
        return _k_halves(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu,
                         threads, s.row_path)
    if s.kind == SPLIT_SERIAL:
        return gemm_slab(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu,
                         s.row_path)
    cdef int status[MAX_PARTS]
    cdef long t
    cdef int failed = 0
    for t in prange(s.parts, nogil=True, num_threads=s.parts, schedule="static"):
        status[t] = _slab(&s, t, a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta,
                          bias, relu)
    for t in range(s.parts):
        if status[t] != 0:
            failed = 1
    return -1 if failed else 0


cdef void gemm_naive_kernel(const floating *a, long rsa, long csa, const floating *b, long rsb,
                            long csb, floating *c, long ldc, long m, long n, long k,
                            floating alpha, floating beta) noexcept nogil:
    # c[i, j] = alpha * sum_p a[i, p] * b[p, j] + beta * c[i, j]; the textbook loop order
    cdef long i, j, p
    cdef floating acc
    for i in range(m):
        for j in range(n):
            acc = 0
            for p in range(k):
                acc = acc + a[i * rsa + p * csa] * b[p * rsb + j * csb]
            if beta == 0:
                c[i * ldc + j] = alpha * acc
            else:
                c[i * ldc + j] = alpha * acc + beta * c[i * ldc + j]


# ---------------------------------------------------------------------------------------------
# Python wrappers: validate once, then run without the GIL.

cdef _check_pair(str name_a, object a, str name_b, object b):
    a = as_float_array(name_a, a, 2)
    b = as_float_array(name_b, b, 2)
    check_same_dtype(name_b, b, a.dtype)
    return a, b


cdef int _run_typed(const floating *a, long rsa, long csa, const floating *b, long rsb,
                    long csb, floating *c, long m, long n, long k, double alpha, double beta,
                    const floating *bias, int relu, bint naive, int threads) noexcept nogil:
    if k == 0:       # no products to sum: NumPy's answer, beta * C (+ bias, ReLU)
        return _no_products(c, n, m, n, <floating> beta, bias, relu)
    if naive:
        gemm_naive_kernel(a, rsa, csa, b, rsb, csb, c, n, m, n, k, <floating> alpha,
                          <floating> beta)
        return 0
    return gemm_parallel(a, rsa, csa, b, rsb, csb, c, n, m, n, k, <floating> alpha,
                         <floating> beta, bias, relu, threads)


cdef int _run(cnp.ndarray a, bint trans_a, cnp.ndarray b, bint trans_b, cnp.ndarray c, long k,
              double alpha, double beta, object bias, int relu, bint naive) except -1:
    # C (m x n) from op(A) (m x k) and op(B) (k x n); the strides encode the transposes.
    # The arrays were checked by the caller (C-contiguous, aligned, one float dtype): their
    # data pointers are taken as they are (no memoryview to acquire: a one-sample product
    # is over in microseconds).
    cdef long m = cnp.PyArray_DIM(c, 0), n = cnp.PyArray_DIM(c, 1)
    cdef long acols = cnp.PyArray_DIM(a, 1), bcols = cnp.PyArray_DIM(b, 1)
    cdef long rsa = 1 if trans_a else acols, csa = acols if trans_a else 1
    cdef long rsb = 1 if trans_b else bcols, csb = bcols if trans_b else 1
    cdef void *bias_ptr = NULL
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(c)
    cdef bint single = cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT32
    cdef int status = 0
    if bias is not None and cnp.PyArray_SIZE(<cnp.ndarray> bias) > 0:
        bias_ptr = cnp.PyArray_DATA(<cnp.ndarray> bias)
    if m == 0 or n == 0:
        return 0
    cdef int threads = num_threads()
    with nogil:
        if single:
            status = _run_typed(<const float *> pa, rsa, csa, <const float *> pb, rsb, csb,
                                <float *> pc, m, n, k, alpha, beta, <const float *> bias_ptr,
                                relu, naive, threads)
        else:
            status = _run_typed(<const double *> pa, rsa, csa, <const double *> pb, rsb, csb,
                                <double *> pc, m, n, k, alpha, beta, <const double *> bias_ptr,
                                relu, naive, threads)
    if status != 0:
        raise MemoryError("gemm: cannot allocate the packing buffers")
    return 0


cdef _gemm(a, b, out, bint trans_a, bint trans_b, alpha, beta, bint naive):
    a, b = _check_pair("a", a, "b", b)
    cdef long m = a.shape[1] if trans_a else a.shape[0]
    cdef long k = a.shape[0] if trans_a else a.shape[1]
    cdef long kb = b.shape[1] if trans_b else b.shape[0]
    cdef long n = b.shape[0] if trans_b else b.shape[1]
    if k != kb:
        raise ValueError(f"b: op(a) is {m}x{k} but op(b) is {kb}x{n}; inner dimensions differ")
    alpha = check_scalar("alpha", alpha)
    beta = check_scalar("beta", beta)
    if beta != 0 and out is None:
        raise ValueError("out is required when beta != 0 (it is read)")
    given = out is not None
    out = output("out", out, (m, n), a.dtype)
    if given:
        _refuse_overlap("out", out, ("a", a, "b", b))
    _run(a, trans_a, b, trans_b, out, k, alpha, beta, None, 0, naive)
    return out


def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """General matrix multiply: out = alpha * op(a) @ op(b) + beta * out.

    Parameters
    ----------
    a : ndarray (m, k), or (k, m) with trans_a
    b : ndarray (k, n), or (n, k) with trans_b
    out : ndarray (m, n), optional. Required when beta != 0. With beta == 0 its old contents
        are never read (they may be NaN).
    trans_a, trans_b : bool. op(x) = x.T when set (no copy: packing reads the transpose).
    alpha, beta : float.

    Returns
    -------
    out : ndarray (m, n), the given buffer or a new array.
    """
    return _gemm(a, b, out, trans_a, trans_b, alpha, beta, False)


def gemm_naive(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """`gemm` by the textbook triple loop: the reference and fallback. Same contract."""
    return _gemm(a, b, out, trans_a, trans_b, alpha, beta, True)


def linear_forward(x, w, b, out=None, *, activation=None):
    """Fully connected layer: out = act(x @ w + b), bias and activation fused into the
    GEMM's write-back (one pass over out).

    x (N, D) @ w (D, M) + b (M,) -> out (N, M); b may be None; activation None or "relu".
    """
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    x, w = _check_pair("x", x, "w", w)
    cdef long n = x.shape[0], d = x.shape[1], m = w.shape[1]
    if w.shape[0] != d:
        raise ValueError(f"w has shape {w.shape}; x has {d} features, so w must be ({d}, M)")
    if b is not None:
        b = as_float_array("b", b, 1)
        check_same_dtype("b", b, x.dtype)
        if b.shape[0] != m:
            raise ValueError(f"b has shape {b.shape}, expected ({m},)")
    given = out is not None
    out = output("out", out, (n, m), x.dtype)
    if given:
        _refuse_overlap("out", out, ("x", x, "w", w, "b", b))
    cdef int relu = activation == "relu"
    _run(x, False, w, False, out, d, 1.0, 0.0, b, relu, False)
    return out


# ---------------------------------------------------------------------------------------------
# A chain of linear layers in one call (Sequential's Linear[-ReLU] stacks)

ctypedef struct _Layer:
    void *w           # (k, n) row-major
    void *bias        # (n,) or NULL
    void *out         # (m, n) row-major: this layer's output, the next one's input
    long k
    long n
    int relu
    _Split split


ctypedef struct _BackLayer:
    void *x           # (m, k) row-major: the layer's forward input
    void *w           # (k, n)
    void *gw          # (k, n): grad_w (+)= x^T @ g
    void *gb          # (n,) or NULL: grad_b (+)= the column sums of g
    void *g           # (m, n): dL/dz of this layer, read
    void *gx          # (m, k) or NULL: g @ w^T -- the g of the layer below, or dL/dx
    void *mask        # (m, k) or NULL: gx[i, j] kept where mask[i, j] > 0, else 0 (a ReLU)
    long k
    long n
    bint accumulate
    _Split split_w    # x^T @ g: (k x n) = (k x m) @ (m x n)
    _Split split_x    # g @ w^T: (m x k) = (m x n) @ (n x k)
    int tid_w         # the thread of a serial dW product,
    int tid_x         # of a serial dX product,
    int tid_b         # of the column sums
    bint check        # check grad_w and grad_b for NaN/inf, each share as it is written:
    char bad_w[MAX_PARTS]   # thread t found one in its share of grad_w
    char bad_b              # ... in grad_b


cdef int _chain_share(int tid, int team, const floating *x, _Layer *layers, long nl, long m,
                      floating *part) noexcept nogil:
    # Thread `tid`'s part of every layer, in order, in one parallel region of `team`
    # threads: each product is shared out exactly as gemm_parallel would share it (so every
    # output has the bits of one linear_forward per layer), and the threads meet at a
    # barrier only where one reads what another wrote (chains of fewer than
    # ROW_PATH_MAX_M rows take the duo instead: _chain_on_duo). Returns -1 if out of
    # memory.
    cdef int status = 0, h
    cdef long l, t, k, n
    cdef bint prev_multi = False
    cdef const floating *a = x
    cdef const floating *w
    cdef const floating *bias
    cdef floating *c
    cdef _Layer *L
    for l in range(nl):
        L = &layers[l]
        k = L.k
        n = L.n
        w = <const floating *> L.w
        bias = <const floating *> L.bias
        c = <floating *> L.out
        if l > 0 and team > 1 and (prev_multi or L.split.kind != SPLIT_SERIAL):
            nn_team_barrier()       # this layer's input, or its threads, are not all ours
        if L.split.kind == SPLIT_SERIAL:
            if tid == 0 and gemm_slab(a, k, 1, w, n, 1, c, n, m, n, k, 1, 0, bias, L.relu,
                                      L.split.row_path) != 0:
                status = -1
            prev_multi = False
        elif L.split.kind == SPLIT_SLABS:
            for t in range(L.split.parts):
                if t % team == tid and _slab(&L.split, t, a, k, 1, w, n, 1, c, n, m, n, k, 1, 0,
                                             bias, L.relu) != 0:
                    status = -1
            prev_multi = True
        else:   # the halves of k, then their sum (as _k_halves)
            for h in range(2):
                if h % team == tid and _half_product(h, a, k, 1, w, n, 1, part, m, n, k,
                                                     L.split.row_path) != 0:
                    status = -1
            nn_team_barrier()
            prev_multi = _sum_on_two(m, n, team)
            _sum_share(tid, part, c, n, m, n, 1, 0, bias, L.relu, prev_multi)
        a = c
    return status


cdef int _chain_on_duo(const floating *x, _Layer *layers, long nl, long m, int threads,
                       _HalfJob *first) noexcept nogil:
    # The chain's layers in order on this thread, for few rows (m < ROW_PATH_MAX_M): each
    # product's halves of k with the duo (the first layer's second half maybe offered
    # already: `first`, by linear_chain_forward while it checked the other layers), a
    # product in slabs on an OpenMP team (gemm_parallel). A one-sample forward through
    # 784-256-128-10 offers the duo one job and takes it back once. Each product shared
    # out as _chain_share would: the same bits.
    cdef long l
    cdef int status
    cdef const floating *a = x
    cdef floating *part
    cdef _Layer *L
    for l in range(nl):
        L = &layers[l]
        if L.split.kind == SPLIT_SERIAL:
            status = gemm_slab(a, L.k, 1, <const floating *> L.w, L.n, 1, <floating *> L.out,
                               L.n, m, L.n, L.k, 1, 0, <const floating *> L.bias, L.relu,
                               L.split.row_path)
        elif L.split.kind == SPLIT_SLABS:
            status = gemm_parallel(a, L.k, 1, <const floating *> L.w, L.n, 1,
                                   <floating *> L.out, L.n, m, L.n, L.k, 1, 0,
                                   <const floating *> L.bias, L.relu, threads)
        else:
            if l == 0 and first.offered:    # (offered by linear_chain_forward's checks)
                part = <floating *> first.part
                status = _first_half_and_take(first, part)
            else:
                part = <floating *> nn_scratch(2, 2 * m * L.n * sizeof(floating))
                status = -1 if part == NULL else _halves_on_duo(
                    a, L.k, 1, <const floating *> L.w, L.n, 1, part, m, L.n, L.k,
                    L.split.row_path)
            if status == 0:
                _sum_halves(part, <floating *> L.out, L.n, 0, m, m, L.n, 1, 0,
                            <const floating *> L.bias, L.relu)
        if status != 0:
            return -1
        a = <const floating *> L.out
    return 0


cdef int _chain_run(const floating *x, _Layer *layers, long nl, long m, int threads,
                    _HalfJob *first) noexcept nogil:
    # Every layer of the chain (m >= 1 rows, every k and n >= 1; layers[l].split decided).
    # -1 if out of memory.
    cdef long l, part_size = 0
    cdef int team = 1
    if _chain_uses_duo(m, threads):
        return _chain_on_duo(x, layers, nl, m, threads, first)
    for l in range(nl):
        _count_team(&layers[l].split, m * layers[l].n, threads, &team, &part_size)
    return _on_team(team, x, layers, NULL, nl, m, part_size)


cdef inline bint _chain_uses_duo(long m, int threads) noexcept nogil:
    return threads >= 2 and m < ROW_PATH_MAX_M


cdef inline void _count_team(const _Split *s, long c_size, int threads, int *team,
                             long *part_size) noexcept nogil:
    # what a chain needs for a product of c_size elements shared out as `s`: threads, and
    # room for the two partial Cs of its halves
    if s.kind == SPLIT_HALVES:
        part_size[0] = max(part_size[0], 2 * c_size)
        team[0] = max(team[0], 2 if threads >= 2 else 1)
    elif s.kind == SPLIT_SLABS:
        team[0] = max(team[0], <int> s.parts)


cdef inline int _share(int tid, int team, const floating *x, _Layer *layers, _BackLayer *back,
                       long nl, long m, floating *part) noexcept nogil:
    if back != NULL:
        return _chain_back_share(tid, team, back, nl, m, part)
    return _chain_share(tid, team, x, layers, nl, m, part)


cdef int _on_team(int team, const floating *x, _Layer *layers, _BackLayer *back, long nl,
                  long m, long part_size) noexcept nogil:
    # The shares of a chain's forward (layers) or backward (back) on `team` threads, in one
    # parallel region (none for a team of one). -1 if out of memory.
    cdef floating *part = NULL
    cdef int tid, size
    if part_size > 0:
        part = <floating *> nn_scratch(2, part_size * sizeof(floating))
        if part == NULL:
            return -1
    if team == 1:
        return _share(0, 1, x, layers, back, nl, m, part)
    cdef int status[MAX_PARTS]
    for tid in range(team):
        status[tid] = 0
    size = 1
    with parallel(num_threads=team):
        tid = threadid()
        size = nn_team_size()       # (the team OpenMP gave, maybe fewer than asked for)
        status[tid] = _share(tid, size, x, layers, back, nl, m, part)
    for tid in range(team):
        if status[tid] != 0:
            return -1
    return 0


cdef list _W_NAMES = [f"weights[{i}]" for i in range(64)]
cdef list _B_NAMES = [f"biases[{i}]" for i in range(64)]
cdef list _OUT_NAMES = [f"outs[{i}]" for i in range(64)]


cdef inline str _item(list names, str what, Py_ssize_t i):
    return names[i] if i < 64 else f"{what}[{i}]"


cdef tuple _sequence(str name, object value):
    if isinstance(value, (tuple, list)):
        return tuple(value)
    if isinstance(value, (str, bytes, np.ndarray, dict, set, frozenset)) or not hasattr(
            value, "__iter__"):
        raise TypeError(f"{name} must be a list or tuple (one entry per layer), got "
                        f"{type(value).__name__}")
    return tuple(value)


cdef bint _overlap(object a, object b):
    # two C-contiguous arrays (or None) whose bytes overlap
    if a is None or b is None:
        return False
    cdef char *pa = <char *> cnp.PyArray_DATA(<cnp.ndarray> a)
    cdef char *pb = <char *> cnp.PyArray_DATA(<cnp.ndarray> b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(<cnp.ndarray> a)
    cdef Py_ssize_t nb = cnp.PyArray_NBYTES(<cnp.ndarray> b)
    return na > 0 and nb > 0 and pa < pb + nb and pb < pa + na


cdef object _overlap_error(str name, str other):
    return ValueError(f"{name} overlaps {other} (it is written while that is read)")


cdef _refuse_overlap(str name, object buf, tuple named):
    # `buf` is written while the arrays in `named` (name, array-or-None pairs, flattened)
    # are read -- by several threads: one that shares memory with any of them would give a
    # silent wrong answer, so it is refused
    cdef Py_ssize_t i
    for i in range(0, len(named), 2):
        if _overlap(buf, named[i + 1]):
            raise _overlap_error(name, named[i])


def linear_chain_forward(x, weights, biases, activations, outs=None):
    """Linear layers one after the other in one call:

        h_0 = x,    h_l = act_l(h_(l-1) @ weights[l-1] + biases[l-1])    (l = 1 .. L)

    x (N, D); weights[l] (D_l, D_(l+1)) with D_0 = D; biases[l] (D_(l+1),) or None;
    activations[l] None or "relu"; outs None, or one buffer (or None) per layer for h_(l+1),
    sharing no memory with x, the weights, the biases or each other.
    Returns the tuple (h_1, ..., h_L). Every h_l has the bits of
    ``linear_forward(h_(l-1), weights[l-1], biases[l-1], activation=activations[l-1])``;
    the layers run in one parallel region, the threads meeting only where one reads what
    another wrote -- or, for fewer than 4 rows (one sample) on 2 threads or more, on this
    thread with the duo's helper taking the second half of k of each product halved
    (src/nn_duo.h).
    """
    x = as_float_array("x", x, 2)
    dtype = <object> cnp.PyArray_DESCR(<cnp.ndarray> x)
    weights = _sequence("weights", weights)
    biases = _sequence("biases", biases)
    activations = _sequence("activations", activations)
    if outs is not None:
        outs = _sequence("outs", outs)
    cdef Py_ssize_t nl = len(weights), l
    if nl == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    if len(biases) != nl:
        raise ValueError(f"biases has {len(biases)} entries for {nl} weights")
    if len(activations) != nl:
        raise ValueError(f"activations has {len(activations)} entries for {nl} weights")
    if outs is not None and len(outs) != nl:
        raise ValueError(f"outs has {len(outs)} entries for {nl} weights")
    cdef long m = cnp.PyArray_DIM(<cnp.ndarray> x, 0), k = cnp.PyArray_DIM(<cnp.ndarray> x, 1), n
    cdef bint empty = m == 0 or k == 0
    cdef list keep = []          # the checked arrays (maybe copies), alive until the end
    cdef list results = []
    cdef _Layer *layers = <_Layer *> PyMem_Malloc(nl * sizeof(_Layer))
    if layers == NULL:
        raise MemoryError()
    cdef int status = 0, threads = num_threads()
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef bint single = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32
    cdef cnp.npy_intp dims[2]
    cdef int mr = _skernel.mr if single else _dkernel.mr
    cdef int nr = _skernel.nr if single else _dkernel.nr
    cdef bint duo = _chain_uses_duo(m, threads)
    cdef _HalfJob first         # the first layer's second half, offered to the duo early
    cdef void *part
    first.offered = False
    try:
        # the activations first (a str subclass's == may run Python code: before the offer)
        for l in range(nl):
            act = activations[l]
            if act is not None and not (isinstance(act, str) and act == "relu"):
                raise ValueError(f"activations[{l}] must be None or 'relu', got {act!r}")
        # (the usual arrays answered through the C API; the named checks make the messages)
        for l in range(nl):
            w = weights[l]
            if not is_ready(w, 2, dtype):
                w = as_float_array(_item(_W_NAMES, "weights", l), w, 2)
                check_same_dtype(_item(_W_NAMES, "weights", l), w, dtype)
            if cnp.PyArray_DIM(<cnp.ndarray> w, 0) != k:
                raise ValueError(f"weights[{l}] has shape {w.shape}; the input of layer {l} has "
                                 f"{k} features, so it must be ({k}, M)")
            n = cnp.PyArray_DIM(<cnp.ndarray> w, 1)
            b = biases[l]
            if b is not None:
                if not is_ready(b, 1, dtype):
                    b = as_float_array(_item(_B_NAMES, "biases", l), b, 1)
                    check_same_dtype(_item(_B_NAMES, "biases", l), b, dtype)
                if cnp.PyArray_DIM(<cnp.ndarray> b, 0) != n:
                    raise ValueError(f"biases[{l}] has shape {b.shape}, expected ({n},)")
            act = activations[l]        # (checked above)
            out = None if outs is None else outs[l]
            if out is None:         # (a new array made directly: `output`'s, without the tuple)
                dims[0] = m
                dims[1] = n
                out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32 if single else cnp.NPY_FLOAT64, 0)
            elif not is_buffer(out, m, n, dtype):
                out = output(_item(_OUT_NAMES, "outs", l), out, (m, n), dtype)
            keep.append(w)
            keep.append(b)
            results.append(out)
            layers[l].w = cnp.PyArray_DATA(w)
            layers[l].bias = cnp.PyArray_DATA(b) if b is not None and n > 0 else NULL
            layers[l].out = cnp.PyArray_DATA(out)
            layers[l].k = k
            layers[l].n = n
            layers[l].relu = act is not None
            empty = empty or n == 0
            if not empty:
                layers[l].split = _split(m, n, k, 1, threads, mr, nr)
                if (l == 0 and duo and layers[0].split.kind == SPLIT_HALVES
                        and nn_duo_own()):
                    # offered now: the helper sees it while the other layers are checked.
                    # Python code may run meanwhile (an array subclass's properties, a
                    # finalizer) and call kernels on this thread: the partial products go
                    # to scratch slot 3, which only the duo's owner uses (they cannot own
                    # it now), not to slot 2, which theirs would take
                    part = nn_scratch(3, 2 * m * n * (sizeof(float) if single else
                                                      sizeof(double)))
                    if part == NULL:
                        nn_duo_disown()
                        raise MemoryError("linear_chain_forward: cannot allocate the "
                                          "partial products")
                    _offer_half(&first, single, px, k, 1, layers[0].w, n, 1, part, m, n, k,
                                layers[0].split.row_path, True)
            k = n
        if outs is not None:
            given = []
            for l in range(nl):
                if outs[l] is not None:
                    given.append(_item(_OUT_NAMES, "outs", l))
                    given.append(results[l])
            _check_chain_overlap([x] + keep, given, False)
        if empty:
            # a dimension is zero: layer by layer (NumPy's answers: empty, or bias + ReLU)
            if first.offered:
                with nogil:
                    _take_half(&first)      # (its partial Cs unused)
            inp = x
            for l in range(nl):
                _run(inp, False, keep[2 * l], False, results[l], layers[l].k, 1.0, 0.0,
                     keep[2 * l + 1], layers[l].relu, False)
                inp = results[l]
        else:
            with nogil:
                if single:
                    status = _chain_run(<const float *> px, layers, nl, m, threads, &first)
                else:
                    status = _chain_run(<const double *> px, layers, nl, m, threads, &first)
            if status != 0:
                raise MemoryError("linear_chain_forward: cannot allocate the packing buffers")
    finally:
        if first.offered:           # (a later layer's check raised): taken back first
            with nogil:
                _take_half(&first)
        PyMem_Free(layers)
    return tuple(results)


cdef void _column_sums(const floating *g, long n, long m, floating *acc,
                       bint accumulate) noexcept nogil:
    # acc (M,) (+)= g (N, M).sum(axis=0), rows in order (a fixed summation order)
    cdef long i, j
    if not accumulate:
        for j in range(m):
            acc[j] = 0
    for i in range(n):
        for j in range(m):
            acc[j] += g[i * m + j]


cdef _add_column_sums(cnp.ndarray g, cnp.ndarray acc, bint accumulate):
    # (checked arrays of one dtype: their data pointers taken as they are)
    cdef long n = cnp.PyArray_DIM(g, 0), m = cnp.PyArray_DIM(g, 1)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pa = cnp.PyArray_DATA(acc)
    cdef bint single = cnp.PyArray_TYPE(g) == cnp.NPY_FLOAT32
    with nogil:
        if single:
            _column_sums(<const float *> pg, n, m, <float *> pa, accumulate)
        else:
            _column_sums(<const double *> pg, n, m, <double *> pa, accumulate)


def linear_backward(grad_out, x, w, grad_w, grad_b, grad_x=None, *, compute_grad_x=True,
                    accumulate=True):
    """Backward of out = x @ w + b, accumulating the parameter gradients (as PyTorch's .grad):

        grad_w (D, M) += x.T @ grad_out       grad_b (M,) += grad_out.sum(axis=0)
        grad_x (N, D)  = grad_out @ w.T       (returned; None when compute_grad_x is False)

    grad_out (N, M), x (N, D), w (D, M). grad_b may be None (no bias). accumulate=False
    overwrites grad_w and grad_b (= instead of +=: the GEMM runs with beta = 0, so a
    zero_grad needs no pass of its own; their old contents are never read).
    """
    grad_out, x = _check_pair("grad_out", grad_out, "x", x)
    w = as_float_array("w", w, 2)
    check_same_dtype("w", w, grad_out.dtype)
    dtype = grad_out.dtype
    cdef long n = grad_out.shape[0], m = grad_out.shape[1], d = w.shape[0]
    if w.shape[1] != m:
        raise ValueError(f"w has shape {w.shape}, expected (D, {m}) to match grad_out")
    if x.shape != (n, d):
        raise ValueError(f"x has shape {x.shape}, expected ({n}, {d})")
    check_buffer("grad_w", grad_w, (d, m), dtype)
    if grad_b is not None:
        check_buffer("grad_b", grad_b, (m,), dtype)
    given = compute_grad_x and grad_x is not None
    if compute_grad_x:
        grad_x = output("grad_x", grad_x, (n, d), dtype)
    _refuse_overlap("grad_w", grad_w, ("grad_out", grad_out, "x", x, "w", w, "grad_b", grad_b))
    if grad_b is not None:
        _refuse_overlap("grad_b", grad_b, ("grad_out", grad_out, "x", x, "w", w))
    if given:
        _refuse_overlap("grad_x", grad_x, ("grad_out", grad_out, "x", x, "w", w,
                                           "grad_w", grad_w, "grad_b", grad_b))
    # the arrays are checked: straight to the products (no second round of checks)
    _run(x, True, grad_out, False, grad_w, n, 1.0, 1.0 if accumulate else 0.0, None, 0, False)
    if grad_b is not None:
        _add_column_sums(grad_out, grad_b, accumulate)
    if not compute_grad_x:
        return None
    _run(grad_out, False, w, True, grad_x, m, 1.0, 0.0, None, 0, False)
    return grad_x


# ---------------------------------------------------------------------------------------------
# The backward of a chain of linear layers in one call (Sequential's Linear[-ReLU] stacks)

cdef void _relu_mask(floating *c, const floating *mask, long ld, long i0, long i1, long j0,
                     long j1) noexcept nogil:
    # rows [i0, i1), columns [j0, j1) of c (leading dimension ld): c = c where mask > 0,
    # else 0 -- ReLU's backward (relu_backward's very select, so the same bits)
    cdef long i, j
    cdef floating *row
    cdef const floating *keep
    for i in range(i0, i1):
        row = c + i * ld
        keep = mask + i * ld
        for j in range(j0, j1):
            row[j] = row[j] if keep[j] > 0 else 0


cdef int _share_product(int tid, int team, const _Split *s, int serial_tid,
                        const floating *a, long rsa, long csa, const floating *b, long rsb,
                        long csb, floating *c, long ldc, long m, long n, long k, floating beta,
                        const floating *mask, bint check, floating *part) noexcept nogil:
    # Thread tid's share of C (m x n) = A @ B + beta * C, shared out as gemm_parallel would
    # (so the same bits), then -- when mask is given -- ReLU's backward on what it wrote.
    # Every thread of the team calls this for every product (a halves product meets at a
    # barrier). With `check`, each value written is tested for NaN/inf as it is written
    # (in the micro-kernels' registers; the sum of halves and the row kernel's rows in
    # cache, by the thread that wrote them). Returns -1 if out of memory, 1 if checked and
    # a value of its share is NaN or infinite, else 0.
    cdef int status = 0, h, r, flags = NN_CHECK_FINITE if check else 0
    cdef bint bad = False
    cdef long t, start, size, rows = (m + 1) // 2
    cdef bint on_two
    if s.kind == SPLIT_SERIAL:
        if tid == serial_tid % team:
            r = gemm_slab(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, flags,
                          s.row_path)
            status = -1 if r < 0 else 0
            bad = r > 0
            if mask != NULL:
                _relu_mask(c, mask, ldc, 0, m, 0, n)
    elif s.kind == SPLIT_SLABS:
        for t in range(s.parts):
            if t % team != tid:
                continue
            r = _slab(s, t, a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, 1, beta, NULL, flags)
            if r < 0:
                status = -1
            bad = bad or r > 0
            if mask != NULL:
                _slab_bounds(s, t, &start, &size)
                if size > 0 and s.split_n:
                    _relu_mask(c, mask, ldc, 0, m, start, start + size)
                elif size > 0:
                    _relu_mask(c, mask, ldc, start, start + size, 0, n)
    else:   # the halves of k, then their sum (as _k_halves), its rows checked after it
        for h in range(2):
            if h % team == tid and _half_product(h, a, rsa, csa, b, rsb, csb, part, m, n, k,
                                                 s.row_path) != 0:
                status = -1
        nn_team_barrier()
        on_two = _sum_on_two(m, n, team)
        _sum_share(tid, part, c, ldc, m, n, 1, beta, NULL, 0, on_two)
        if (not on_two and tid == 0) or (on_two and tid < 2):
            start = 0 if not on_two or tid == 0 else rows
            size = (m if not on_two else rows) if tid == 0 else m - rows
            if mask != NULL:
                _relu_mask(c, mask, ldc, start, start + size, 0, n)
            if check and not _rows_finite(c, ldc, start, start + size, 0, n):
                bad = True
    if status < 0:
        return -1
    return 1 if bad else 0


cdef inline bint _rows_finite(const floating *c, long ldc, long i0, long i1, long j0,
                              long j1) noexcept nogil:
    # rows [i0, i1), columns [j0, j1) of c hold no NaN/inf
    cdef long i
    if j0 == 0 and j1 == ldc:
        return all_finite_span(c + i0 * ldc, (i1 - i0) * ldc)
    for i in range(i0, i1):
        if not all_finite_span(c + i * ldc + j0, j1 - j0):
            return False
    return True


cdef int _chain_back_share(int tid, int team, _BackLayer *layers, long nl, long m,
                           floating *part) noexcept nogil:
    # Thread tid's part of every layer's backward, from the last layer down, in one
    # parallel region of `team` threads. Layer l's three pieces -- dW = x^T @ g, the column
    # sums, dX = g @ w^T with the ReLU mask of the layer below -- read only g, x and w, so
    # they run side by side; the threads meet at a barrier before each layer below, which
    # reads the g the dX shares wrote. Returns -1 if out of memory.
    cdef int status = 0, r
    cdef long l
    cdef _BackLayer *L
    cdef floating beta
    for l in range(nl - 1, -1, -1):
        L = &layers[l]
        if l < nl - 1 and team > 1:
            nn_team_barrier()       # this layer's g was written by the shares of the last
        beta = 1 if L.accumulate else 0
        # grad_w (k x n) (+)= x^T (k x m) @ g (m x n)
        r = _share_product(tid, team, &L.split_w, L.tid_w, <const floating *> L.x, 1, L.k,
                           <const floating *> L.g, L.n, 1, <floating *> L.gw, L.n, L.k, L.n,
                           m, beta, NULL, L.check, part)
        if r < 0:
            status = -1
        elif r > 0:
            L.bad_w[tid] = 1
        if L.gb != NULL and tid == L.tid_b % team:
            _column_sums(<const floating *> L.g, m, L.n, <floating *> L.gb, L.accumulate)
            if L.check and not all_finite_span(<const floating *> L.gb, L.n):
                L.bad_b = 1
        # gx (m x k) = g (m x n) @ w^T (n x k), then the ReLU below (mask)
        if L.gx != NULL and _share_product(
                tid, team, &L.split_x, L.tid_x, <const floating *> L.g, L.n, 1,
                <const floating *> L.w, 1, L.n, <floating *> L.gx, L.k, m, L.k, L.n, 0,
                <const floating *> L.mask, False, part) < 0:
            status = -1
    return status


cdef int _chain_back_run(_BackLayer *layers, long nl, long m, int threads,
                         const floating *dummy) noexcept nogil:
    # Every layer's backward (m >= 1 rows, every k and n >= 1). -1 if out of memory.
    cdef int mr, nr
    _tile_shape(dummy, &mr, &nr)
    cdef long l, part_size = 0
    cdef int team = 1, serial = 0
    cdef _BackLayer *L
    for l in range(nl):
        L = &layers[l]
        L.split_w = _split(L.k, L.n, m, 1, threads, mr, nr)
        _count_team(&L.split_w, L.k * L.n, threads, &team, &part_size)
        L.split_x = _split(m, L.k, L.n, L.n, threads, mr, nr)
        if L.gx != NULL:
            _count_team(&L.split_x, m * L.k, threads, &team, &part_size)
    # the pieces one thread does (serial products, column sums) go round the team, from the
    # top layer down: in a parallel region anyway, they run side by side
    for l in range(nl - 1, -1, -1):
        L = &layers[l]
        L.tid_w = serial % team
        serial += L.split_w.kind == SPLIT_SERIAL
        L.tid_b = serial % team
        serial += L.gb != NULL
        L.tid_x = serial % team
        serial += L.gx != NULL and L.split_x.kind == SPLIT_SERIAL
    return _on_team(team, dummy, NULL, layers, nl, m, part_size)


cdef list _X_NAMES = [f"xs[{i}]" for i in range(64)]
cdef list _GW_NAMES = [f"grads_w[{i}]" for i in range(64)]
cdef list _GB_NAMES = [f"grads_b[{i}]" for i in range(64)]
cdef list _MASK_NAMES = [f"masks[{i}]" for i in range(64)]
cdef list _WORK_NAMES = [f"work[{i}]" for i in range(64)]


cdef _apply_mask(cnp.ndarray c, cnp.ndarray mask):
    # c = c where mask > 0, else 0 (two checked arrays of one shape and dtype)
    cdef long m = cnp.PyArray_DIM(c, 0), n = cnp.PyArray_DIM(c, 1)
    cdef void *pc = cnp.PyArray_DATA(c)
    cdef void *pm = cnp.PyArray_DATA(mask)
    with nogil:
        if cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT32:
            _relu_mask(<float *> pc, <const float *> pm, n, 0, m, 0, n)
        else:
            _relu_mask(<double *> pc, <const double *> pm, n, 0, m, 0, n)


def linear_chain_backward(grad_out, xs, weights, grads_w, grads_b, masks, grad_x=None, *,
                          compute_grad_x=True, accumulate=True, work=None, check_finite=False):
    """The backward of `linear_chain_forward` in one call. From the last layer down, with
    g = grad_out and each layer's ReLU undone first::

        g_l = g * (masks[l] > 0)  (masks[l] given: layer l's output went through a ReLU)
        grads_w[l] (+)= xs[l].T @ g_l      grads_b[l] (+)= g_l.sum(axis=0)
        g = g_l @ weights[l].T             (dL/d(xs[l]); for l = 0 the returned grad_x)

    grad_out (N, D_L); xs[l] (N, D_l), layer l's forward input; weights[l] (D_l, D_(l+1));
    grads_w[l] of weights[l]'s shape; grads_b[l] (D_(l+1),) or None; masks[l] None or
    (N, D_(l+1)), the array layer l's ReLU keeps (its output); work None, or one buffer
    (or None) per layer for g_l. accumulate (a bool, or one per layer) False overwrites
    grads_w[l] and grads_b[l] (= instead of +=), as in `linear_backward`.

    Returns ``(grad_x, gs)``: dL/d(xs[0]) (N, D_0), or None when compute_grad_x is False,
    and the tuple (g_0, ..., g_(L-1)) (g_(L-1) is grad_out itself when the last layer has
    no ReLU); with check_finite, ``(grad_x, gs, finite)``, finite[l] the pair (grads_w[l]
    holds no NaN/inf, grads_b[l] holds none (True when None)) -- each share of a gradient
    checked by the thread that wrote it, while it is in that core's cache (fit's guard
    against a poisoned update, without a pass of its own over the gradients). Every array
    has the bits of one `relu_backward` and `linear_backward` per layer; the layers run in
    one parallel region, each layer's dW and dX products side by side, the ReLU applied to
    each share of dX as it is written.
    """
    grad_out = as_float_array("grad_out", grad_out, 2)
    dtype = <object> cnp.PyArray_DESCR(<cnp.ndarray> grad_out)
    xs = _sequence("xs", xs)
    weights = _sequence("weights", weights)
    grads_w = _sequence("grads_w", grads_w)
    grads_b = _sequence("grads_b", grads_b)
    masks = _sequence("masks", masks)
    if work is not None:
        work = _sequence("work", work)
    cdef Py_ssize_t nl = len(weights), l
    if nl == 0:
        raise ValueError("weights is empty: the chain needs at least one layer")
    for name, seq in (("xs", xs), ("grads_w", grads_w), ("grads_b", grads_b),
                      ("masks", masks), ("work", work)):
        if seq is not None and len(seq) != nl:
            raise ValueError(f"{name} has {len(seq)} entries for {nl} weights")
    if isinstance(accumulate, (bool, np.bool_)):
        accumulate = (bool(accumulate),) * nl
    else:
        accumulate = _sequence("accumulate", accumulate)
        if len(accumulate) != nl:
            raise ValueError(f"accumulate has {len(accumulate)} entries for {nl} weights")
        for l in range(nl):
            if not isinstance(accumulate[l], (bool, np.bool_)):
                raise TypeError(f"accumulate[{l}] must be True or False, got "
                                f"{accumulate[l]!r}")
    cdef long m = cnp.PyArray_DIM(<cnp.ndarray> grad_out, 0), k, n, above = -1
    cdef bint empty = m == 0
    cdef list ins = [grad_out]       # read (maybe copies): none may overlap an output
    cdef list outs = []              # written, given by the caller: (name, array) pairs
    cdef list ws = [], xl = [], gws = [], gbs = [], mks = [], gs = []
    # (the usual arrays answered through the C API; the named checks make the messages)
    for l in range(nl):
        w = weights[l]
        if not is_ready(w, 2, dtype):
            w = as_float_array(_item(_W_NAMES, "weights", l), w, 2)
            check_same_dtype(_item(_W_NAMES, "weights", l), w, dtype)
        k = cnp.PyArray_DIM(<cnp.ndarray> w, 0)
        n = cnp.PyArray_DIM(<cnp.ndarray> w, 1)
        if l > 0 and above != k:
            raise ValueError(f"weights[{l}] has shape {w.shape}; layer {l - 1} has "
                             f"{above} outputs, so it must be ({above}, M)")
        above = n
        x = xs[l]
        if not is_ready(x, 2, dtype):
            x = as_float_array(_item(_X_NAMES, "xs", l), x, 2)
            check_same_dtype(_item(_X_NAMES, "xs", l), x, dtype)
        if cnp.PyArray_DIM(<cnp.ndarray> x, 0) != m or cnp.PyArray_DIM(<cnp.ndarray> x, 1) != k:
            raise ValueError(f"xs[{l}] has shape {x.shape}, expected ({m}, {k})")
        gw = grads_w[l]
        if not is_buffer(gw, k, n, dtype):
            check_buffer(_item(_GW_NAMES, "grads_w", l), gw, (k, n), dtype)
        gb = grads_b[l]
        if gb is not None and not is_buffer(gb, n, -1, dtype):
            check_buffer(_item(_GB_NAMES, "grads_b", l), gb, (n,), dtype)
        mk = masks[l]
        if mk is not None:
            if not is_ready(mk, 2, dtype):
                mk = as_float_array(_item(_MASK_NAMES, "masks", l), mk, 2)
                check_same_dtype(_item(_MASK_NAMES, "masks", l), mk, dtype)
            if (cnp.PyArray_DIM(<cnp.ndarray> mk, 0) != m
                    or cnp.PyArray_DIM(<cnp.ndarray> mk, 1) != n):
                raise ValueError(f"masks[{l}] has shape {mk.shape}, expected ({m}, {n})")
        ws.append(w)
        xl.append(x)
        gws.append(gw)
        gbs.append(gb)
        mks.append(mk)
        ins.append(w)
        ins.append(x)
        ins.append(mk)
        outs.append(_item(_GW_NAMES, "grads_w", l))
        outs.append(gw)
        outs.append(_item(_GB_NAMES, "grads_b", l))
        outs.append(gb)
        empty = empty or k == 0 or n == 0
    if above != cnp.PyArray_DIM(<cnp.ndarray> grad_out, 1):
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected ({m}, {above}) "
                         f"(the last layer's output)")
    # g_l: a work buffer, except the last layer's without a ReLU (grad_out itself)
    for l in range(nl):
        n = cnp.PyArray_DIM(<cnp.ndarray> ws[l], 1)
        if l == nl - 1 and mks[l] is None:
            gs.append(grad_out)
            continue
        buf = work[l] if work is not None else None
        if buf is None:
            buf = output("", None, (m, n), dtype)
        else:
            if not is_buffer(buf, m, n, dtype):
                check_buffer(_item(_WORK_NAMES, "work", l), buf, (m, n), dtype)
            outs.append(_item(_WORK_NAMES, "work", l))
            outs.append(buf)
        gs.append(buf)
    if compute_grad_x:
        k = cnp.PyArray_DIM(<cnp.ndarray> ws[0], 0)
        if grad_x is None:
            grad_x = output("grad_x", None, (m, k), dtype)
        else:
            if not is_buffer(grad_x, m, k, dtype):
                check_buffer("grad_x", grad_x, (m, k), dtype)
            outs.append("grad_x")
            outs.append(grad_x)
    else:
        grad_x = None
    _check_chain_overlap(ins, outs, True)
    if empty or nl > 64:
        _chain_back_by_layer(grad_out, xl, ws, gws, gbs, mks, gs, grad_x, accumulate)
        if not check_finite:
            return grad_x, tuple(gs)
        return grad_x, tuple(gs), tuple(
            (_finite_array(gws[l]), gbs[l] is None or _finite_array(gbs[l])) for l in range(nl))
    cdef _BackLayer *layers = <_BackLayer *> PyMem_Malloc(nl * sizeof(_BackLayer))
    if layers == NULL:
        raise MemoryError()
    cdef int status = 0, threads = num_threads()
    cdef bint single = cnp.PyArray_TYPE(grad_out) == cnp.NPY_FLOAT32
    cdef _BackLayer *L
    try:
        if mks[nl - 1] is not None:     # the last layer's ReLU: g_(L-1) before the chain
            gs[nl - 1][...] = grad_out
            _apply_mask(gs[nl - 1], mks[nl - 1])
        for l in range(nl):
            L = &layers[l]
            L.x = cnp.PyArray_DATA(<cnp.ndarray> xl[l])
            L.w = cnp.PyArray_DATA(<cnp.ndarray> ws[l])
            L.gw = cnp.PyArray_DATA(<cnp.ndarray> gws[l])
            L.gb = cnp.PyArray_DATA(<cnp.ndarray> gbs[l]) if gbs[l] is not None else NULL
            L.g = cnp.PyArray_DATA(<cnp.ndarray> gs[l])
            below = gs[l - 1] if l > 0 else grad_x
            L.gx = cnp.PyArray_DATA(<cnp.ndarray> below) if below is not None else NULL
            L.mask = (cnp.PyArray_DATA(<cnp.ndarray> mks[l - 1])
                      if l > 0 and mks[l - 1] is not None else NULL)
            L.k = ws[l].shape[0]
            L.n = ws[l].shape[1]
            L.accumulate = accumulate[l]
            L.check = bool(check_finite)
            memset(L.bad_w, 0, sizeof(L.bad_w))
            L.bad_b = 0
        with nogil:
            if single:
                status = _chain_back_run(layers, nl, m, threads, <const float *> NULL)
            else:
                status = _chain_back_run(layers, nl, m, threads, <const double *> NULL)
        if status != 0:
            raise MemoryError("linear_chain_backward: cannot allocate the packing buffers")
        if check_finite:
            finite = tuple((memchr(layers[l].bad_w, 1, sizeof(layers[l].bad_w)) == NULL,
                            layers[l].bad_b == 0) for l in range(nl))
    finally:
        PyMem_Free(layers)
    if check_finite:
        return grad_x, tuple(gs), finite
    return grad_x, tuple(gs)


cdef bint _finite_array(cnp.ndarray a):
    # a C-contiguous float32/float64 array holds no NaN/inf
    cdef void *p = cnp.PyArray_DATA(a)
    cdef long n = cnp.PyArray_SIZE(a)
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        return all_finite_span(<const float *> p, n)
    return all_finite_span(<const double *> p, n)


cdef inline void _span(object a, char **lo, char **hi) noexcept:
    # the bytes of a C-contiguous array (or None, or an empty one: none) as [lo, hi)
    if a is None or cnp.PyArray_NBYTES(<cnp.ndarray> a) == 0:
        lo[0] = hi[0] = NULL
        return
    lo[0] = <char *> cnp.PyArray_DATA(<cnp.ndarray> a)
    hi[0] = lo[0] + cnp.PyArray_NBYTES(<cnp.ndarray> a)


cdef _check_chain_overlap(list ins, list outs, bint backward):
    # every buffer a chain writes (outs: name, array pairs) shares no memory with what it
    # reads (ins) or with another buffer it writes: the byte spans compared in C, the names
    # made only for the message (_chain_input_name)
    cdef Py_ssize_t ni = len(ins), no = len(outs) // 2, i, j
    cdef char **spans = <char **> PyMem_Malloc(2 * (ni + no) * sizeof(char *))
    if spans == NULL:
        raise MemoryError()
    cdef char **ins_lo = spans
    cdef char **ins_hi = spans + ni
    cdef char **outs_lo = spans + 2 * ni
    cdef char **outs_hi = spans + 2 * ni + no
    try:
        for j in range(ni):
            _span(ins[j], &ins_lo[j], &ins_hi[j])
        for i in range(no):
            _span(outs[2 * i + 1], &outs_lo[i], &outs_hi[i])
        for i in range(no):
            if outs_lo[i] == NULL:
                continue
            for j in range(ni):
                if ins_lo[j] != NULL and outs_lo[i] < ins_hi[j] and ins_lo[j] < outs_hi[i]:
                    raise _overlap_error(outs[2 * i], _chain_input_name(j, backward))
            for j in range(no):
                if (j != i and outs_lo[j] != NULL and outs_lo[i] < outs_hi[j]
                        and outs_lo[j] < outs_hi[i]):
                    raise _overlap_error(outs[2 * i], outs[2 * j])
    finally:
        PyMem_Free(spans)


cdef str _chain_input_name(Py_ssize_t j, bint backward):
    # the name of ins[j]: linear_chain_backward's grad_out, then (weights, xs, masks) per
    # layer; linear_chain_forward's x, then (weights, biases) per layer
    if j == 0:
        return "grad_out" if backward else "x"
    if backward:
        return f"{('weights', 'xs', 'masks')[(j - 1) % 3]}[{(j - 1) // 3}]"
    return f"{('weights', 'biases')[(j - 1) % 2]}[{(j - 1) // 2}]"


cdef _chain_back_by_layer(grad_out, list xl, list ws, list gws, list gbs, list mks, list gs,
                          grad_x, tuple accumulate):
    # a dimension is zero (or very many layers): layer by layer (NumPy's answers)
    cdef Py_ssize_t nl = len(ws), l
    if mks[nl - 1] is not None:
        gs[nl - 1][...] = grad_out
        _apply_mask(gs[nl - 1], mks[nl - 1])
    for l in range(nl - 1, -1, -1):
        g = gs[l]
        _run(xl[l], True, g, False, gws[l], g.shape[0], 1.0, 1.0 if accumulate[l] else 0.0,
             None, 0, False)
        if gbs[l] is not None:
            _add_column_sums(g, gbs[l], accumulate[l])
        below = gs[l - 1] if l > 0 else grad_x
        if below is not None:
            _run(g, False, ws[l], True, below, g.shape[1], 1.0, 0.0, None, 0, False)
            if l > 0 and mks[l - 1] is not None:
                _apply_mask(below, mks[l - 1])


def gemm_kernel_name(dtype=np.float32):
    """The micro-kernel this CPU runs for `dtype`, e.g. 'avx512 12x32'."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return _skernel.name.decode()
    if dtype == np.float64:
        return _dkernel.name.decode()
    raise TypeError(f"dtype must be float32 or float64, got {dtype}")


def _set_isa(level):
    """Testing hook: run the 'generic', 'avx2' or 'avx512' micro-kernels (if the CPU has them);
    None restores the best. Not thread-safe: for tests only."""
    global _skernel, _dkernel
    levels = {"generic": NN_ISA_GENERIC, "avx2": NN_ISA_AVX2, "avx512": NN_ISA_AVX512}
    cdef int isa = nn_cpu_best_isa()
    if level is not None:
        if level not in levels:
            raise ValueError(f"level must be one of {sorted(levels)} or None, got {level!r}")
        if levels[level] > isa:
            raise ValueError(f"level {level!r}: this CPU does not support it")
        isa = levels[level]
    _skernel = nn_sgemm_kernel_for(isa)
    _dkernel = nn_dgemm_kernel_for(isa)


cdef int sgemm_serial(const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                      float *c, long ldc, long m, long n, long k, float alpha, float beta,
                      const float *bias, int relu) noexcept nogil:
    return _serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu)


cdef int dgemm_serial(const double *a, long rsa, long csa, const double *b, long rsb, long csb,
                      double *c, long ldc, long m, long n, long k, double alpha, double beta,
                      const double *bias, int relu) noexcept nogil:
    return _serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu)


cdef int _serial(const floating *a, long rsa, long csa, const floating *b, long rsb, long csb,
                 floating *c, long ldc, long m, long n, long k, floating alpha, floating beta,
                 const floating *bias, int relu) noexcept nogil:
    # the body of sgemm_serial / dgemm_serial (the .pxd exports them by type)
    if m == 0 or n == 0:
        return 0
    if k == 0:
        return _no_products(c, ldc, m, n, beta, bias, relu)
    return gemm_slab(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu,
                     m < ROW_PATH_MAX_M and csb == 1)


cdef int _no_products(floating *c, long ldc, long m, long n, floating beta,
                      const floating *bias, int relu) noexcept nogil:
    # k == 0: C = beta * C (+ bias, ReLU)
    cdef long i, j
    cdef floating v
    for i in range(m):
        for j in range(n):
            v = beta * c[i * ldc + j] if beta != 0 else 0
            if bias != NULL:
                v = v + bias[j]
            if relu and v <= 0:
                v = 0
            c[i * ldc + j] = v
    return 0


def _fma_peak(long reps=10_000_000, int threads=1):
    """The measured multiply-add peak (float32 GFLOP/s) that the benchmark's "% of peak"
    divides by: `threads` threads each issue `reps` x 24 independent vector FMAs of the
    widest ISA the GEMM uses (src/nn_peak.h), with no memory traffic."""
    import time
    if threads < 1 or reps < 1:
        raise ValueError(f"threads and reps must be >= 1, got {threads}, {reps}")
    cdef int isa = nn_cpu_best_isa()
    cdef double flops = 0
    cdef int t
    start = time.perf_counter()
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static"):
            flops += nn_fma_peak_loop(isa, reps)
    return flops / (time.perf_counter() - start) / 1e9
