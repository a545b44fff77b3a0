"""GEMM: C = alpha * op(A) @ op(B) + beta * C, and how its threads share a product out.

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
number of threads. `_split` makes the choice.

On two threads or more, a product of fewer than ROW_PATH_MAX_M rows (one-sample inference)
cut so offers its second half to the team's workers (the "duo": src/nn_team.h's split phase,
through _parallel; _halves_on_duo), sums the first on the calling thread, then takes the
second back -- run by a worker, or by the caller when no worker had started it. The same
_half_product calls either way: the same bits.

`gemm_naive` is the textbook triple loop, kept as reference and fallback.

Other modules (_gemm.pxd)
-------------------------
The convolutions call the single-thread GEMM on raw pointers (sgemm_serial, dgemm_serial).
The linear layers' kernels (cnn_core/_linear.pyx) share each product out with this module's
own pieces -- _split, _slab, gemm_slab, gemm_parallel, the halves of k and their sum, the
duo hand-off -- so that a chain of layers has the bits of one gemm per layer. The small
helpers called per tile, row or slab (_ceil_div, _min, _slab_bounds, _tile_shape,
_sum_on_two, _rows_finite) are `cdef inline` in _gemm.pxd, compiled into every module that
cimports it; the micro-kernel tables _skernel / _dkernel are this module's variables,
declared there too (the others read them through a pointer, so _set_isa switches them
everywhere).
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating

from cnn_core._checks cimport (as_float_array, check_same_dtype, output, check_scalar,
                              refuse_overlap)
from cnn_core._parallel cimport (num_threads, span_parts, MAX_PARTS, part_fn, run_parts_on,
                                duo_own, duo_disown, duo_post, duo_offer, duo_finish)
from libc.stdlib cimport malloc, free

# (the kernel tables' types, NN_RELU and NN_CHECK_FINITE: _gemm.pxd)
cdef extern from "nn_gemm_ukernel.h" nogil:
    nn_sgemm_kernel_t nn_sgemm_kernel_for(int isa)
    nn_dgemm_kernel_t nn_dgemm_kernel_for(int isa)
    int nn_cpu_best_isa()
    int NN_ISA_GENERIC, NN_ISA_AVX2, NN_ISA_AVX512

cnp.import_array()

cdef extern from "nn_peak.h" nogil:
    double nn_fma_peak_loop(int isa, Py_ssize_t reps)

cdef extern from "nn_scratch.h" nogil:
    void *nn_scratch(int slot, size_t nbytes)

# Cache blocking (elements). kc x n_block of B stays in L2; n_block is the kernel table's
# `nblock`, chosen per ISA for its machines' L2 (src/nn_gemm_ukernel.h: float 240 columns,
# 960 KiB, with AVX-512 on a 2 MiB L2; 120 with AVX2 on a 512 KiB one). A Py_ssize_t kc (a whole
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
    # (B_IN_PLACE_MAX_M, the rows up to which row-major B is read in place, ROW_PATH_MAX_M,
    # the rows below which the row kernel streams B, and the SPLIT_* kinds: _gemm.pxd)
    # the halves of k (_k_halves): for products of at most this many elements of C (two
    # partial Cs of 1 MiB in float32 at most; larger ones keep the slabs, on all threads)
    HALVES_MAX_MN = 1 << 17

# (declared in _gemm.pxd)
_skernel = nn_sgemm_kernel_for(nn_cpu_best_isa())
_dkernel = nn_dgemm_kernel_for(nn_cpu_best_isa())


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return _ceil_div(a, b) * b


cdef void pack_a_mcxkc(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, Py_ssize_t mc,
                       Py_ssize_t kc, int mr, floating *dst) noexcept nogil:
    # A block (mc x kc), element (i, p) at a[i*rsa + p*csa] -> ceil(mc/MR) micro-panels,
    # each kc x MR: dst[panel*kc*MR + p*MR + i]; rows past mc are zeros.
    cdef Py_ssize_t ir_index, ir, i, p, rows
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


cdef void pack_b_kcxnc(const floating *b, Py_ssize_t rsb, Py_ssize_t csb, Py_ssize_t kc,
                       Py_ssize_t nc, int nr, floating *dst) noexcept nogil:
    # B block (kc x nc), element (p, j) at b[p*rsb + j*csb] -> ceil(nc/NR) micro-panels,
    # each kc x NR: dst[panel*kc*NR + p*NR + j]; columns past nc are zeros.
    cdef Py_ssize_t jr_index, jr, j, p, cols
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


cdef inline int _ukernel(Py_ssize_t kc, const floating *a, Py_ssize_t lda, const floating *b,
                         Py_ssize_t ldb, floating *c, Py_ssize_t ldc, floating alpha, floating beta,
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


cdef int gemm_slab(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                   Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                   Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta, const floating *bias,
                   int relu, bint row_path) noexcept nogil:
    # One thread's share: C (m x n) = alpha * A (m x k) @ B (k x n) + beta * C (+ bias, ReLU).
    # relu: the epilogue flags, NN_RELU and NN_CHECK_FINITE (see nn_gemm_ukernel.h).
    # Needs k >= 1. row_path: take the unpacked row kernel (the whole product is a few rows).
    # Returns -1 when the packing buffers cannot be allocated; 1 when NN_CHECK_FINITE was
    # asked and a value written is NaN or infinite; else 0.
    cdef int mr, nr
    cdef Py_ssize_t kc_max, nb_max
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
    cdef Py_ssize_t i, kc, nb, mb
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
    cdef Py_ssize_t ic_index, pc_index, jc_index, ir_index, jr_index
    cdef Py_ssize_t ic, pc, jc, ir, jr, mc, kcur, nc, full = 0, lda, ldb, b_full = 0
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


cdef void _sum_halves(const floating *part, floating *c, Py_ssize_t ldc, Py_ssize_t i0,
                      Py_ssize_t i1, Py_ssize_t m, Py_ssize_t n, floating alpha, floating beta,
                      const floating *bias, int relu) noexcept nogil:
    # rows [i0, i1) of c = alpha * (first + last) + beta * c (+ bias, ReLU), the two
    # partial products m x n, one after the other in `part`
    cdef Py_ssize_t i, j
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


cdef int _half_product(int h, const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                       Py_ssize_t rsb, Py_ssize_t csb, floating *part, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k, bint row_path) noexcept nogil:
    # half h (0: the first k // 2 rows of B, 1: the rest) of A @ B into its partial C
    cdef Py_ssize_t half = k // 2
    return gemm_slab(a + h * half * csa, rsa, csa, b + h * half * rsb, rsb, csb,
                     part + h * m * n, n, m, n, half if h == 0 else k - half, 1, 0, NULL, 0,
                     row_path)


cdef void _half_job(void *arg, Py_ssize_t unused) noexcept nogil:
    cdef _HalfJob *j = <_HalfJob *> arg
    if j.single:
        j.status = _half_product(1, <const float *> j.a, j.rsa, j.csa, <const float *> j.b,
                                 j.rsb, j.csb, <float *> j.part, j.m, j.n, j.k, j.row_path)
    else:
        j.status = _half_product(1, <const double *> j.a, j.rsa, j.csa, <const double *> j.b,
                                 j.rsb, j.csb, <double *> j.part, j.m, j.n, j.k, j.row_path)


cdef void _set_half_job(_HalfJob *job, bint single, const void *a, Py_ssize_t rsa, Py_ssize_t csa,
                        const void *b, Py_ssize_t rsb, Py_ssize_t csb, void *part, Py_ssize_t m,
                        Py_ssize_t n, Py_ssize_t k, bint row_path) noexcept nogil:
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


cdef void _offer_half(_HalfJob *job, bint single, const void *a, Py_ssize_t rsa, Py_ssize_t csa,
                      const void *b, Py_ssize_t rsb, Py_ssize_t csb, void *part, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, bint row_path, bint owned=False) noexcept nogil:
    # the second half of k of A @ B, into its partial C, offered to the team's workers
    # (src/nn_team.h; `owned`: the team is this caller's already, duo_own); the caller
    # does the first half, then _take_half
    _set_half_job(job, single, a, rsa, csa, b, rsb, csb, part, m, n, k, row_path)
    job.ticket = duo_post(_half_job, job) if owned else duo_offer(_half_job, job)
    job.offered = True


cdef int _take_half(_HalfJob *job) noexcept nogil:
    # the offered half done when this returns: by a worker, or here if none had started it
    duo_finish(job.ticket, _half_job, job)
    job.offered = False
    return job.status


cdef int _first_half_and_take(_HalfJob *j, floating *dummy) noexcept nogil:
    # (after _offer_half) the first half of the offered product here, then the second
    # taken back: both partial Cs in j.part. -1 if either ran out of memory.
    cdef int status = _half_product(0, <const floating *> j.a, j.rsa, j.csa,
                                    <const floating *> j.b, j.rsb, j.csb,
                                    <floating *> j.part, j.m, j.n, j.k, j.row_path)
    return -1 if _take_half(j) != 0 or status != 0 else 0


cdef int _halves_on_duo(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                        Py_ssize_t rsb, Py_ssize_t csb, floating *part, Py_ssize_t m, Py_ssize_t n,
                        Py_ssize_t k, bint row_path) noexcept nogil:
    # Both halves of k into their partial Cs, the second offered to the team's workers,
    # the first here: for the few-row products (one-sample inference), where waiting for a
    # whole job costs as much as half the product. The same _half_product calls whichever
    # thread runs the second: the same bits.
    cdef _HalfJob job
    _offer_half(&job, floating is float, a, rsa, csa, b, rsb, csb, part, m, n, k, row_path)
    return _first_half_and_take(&job, part)


cdef int _duo_own() noexcept nogil:
    # make the team this caller's (nonzero), for _offer_half(owned=True); 0 when another
    # caller owns it
    return duo_own()


cdef void _duo_disown() noexcept nogil:
    # give back a team owned with _duo_own that was offered nothing
    duo_disown()


cdef void _sum_share(int tid, const floating *part, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                     Py_ssize_t n, floating alpha, floating beta, const floating *bias, int relu,
                     bint on_two) noexcept nogil:
    # thread tid's rows of the halves' sum: all of them on thread 0, or the first half of
    # the rows on thread 0 and the rest on thread 1 (`on_two`)
    cdef Py_ssize_t rows = (m + 1) // 2
    if not on_two:
        if tid == 0:
            _sum_halves(part, c, ldc, 0, m, m, n, alpha, beta, bias, relu)
    elif tid == 0:
        _sum_halves(part, c, ldc, 0, rows, m, n, alpha, beta, bias, relu)
    elif tid == 1:
        _sum_halves(part, c, ldc, rows, m, m, n, alpha, beta, bias, relu)


cdef int _k_halves(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                   Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                   Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta, const floating *bias,
                   int relu, int threads, bint row_path) noexcept nogil:
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
    cdef _Halves job
    cdef int team = 2 if threads >= 2 else 1
    if team == 2 and row_path:
        if _halves_on_duo(a, rsa, csa, b, rsb, csb, part, m, n, k, row_path) != 0:
            return -1
    else:
        _set_half_job(&job.job, floating is float, a, rsa, csa, b, rsb, csb, part, m, n, k,
                      row_path)
        run_parts_on(_halves_part, &job, 2, team)
        if job.status[0] != 0 or job.status[1] != 0:
            return -1
    # the sum (by rows, on both threads when there are many; here after the duo)
    cdef bint on_two = _sum_on_two(m, n, team) and not row_path
    cdef _SumJob total
    if not on_two:
        _sum_share(0, part, c, ldc, m, n, alpha, beta, bias, relu, False)
    else:
        _set_sum_job(&total, part, c, ldc, m, n, alpha, beta, bias, relu)
        run_parts_on(_sum_part, &total, 2, 2)
    return 0


cdef void _halves_part(void *ctx, Py_ssize_t h) noexcept nogil:
    cdef _Halves *j = <_Halves *> ctx
    if j.job.single:
        j.status[h] = _half_product(<int> h, <const float *> j.job.a, j.job.rsa, j.job.csa,
                                    <const float *> j.job.b, j.job.rsb, j.job.csb,
                                    <float *> j.job.part, j.job.m, j.job.n, j.job.k,
                                    j.job.row_path)
    else:
        j.status[h] = _half_product(<int> h, <const double *> j.job.a, j.job.rsa, j.job.csa,
                                    <const double *> j.job.b, j.job.rsb, j.job.csb,
                                    <double *> j.job.part, j.job.m, j.job.n, j.job.k,
                                    j.job.row_path)


cdef void _set_sum_job(_SumJob *j, const floating *part, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                       Py_ssize_t n, floating alpha, floating beta, const floating *bias,
                       int relu) noexcept nogil:
    j.single = floating is float
    j.part = part
    j.c = c
    j.ldc = ldc
    j.m = m
    j.n = n
    j.alpha = alpha
    j.beta = beta
    j.bias = bias
    j.relu = relu


cdef void _sum_part(void *ctx, Py_ssize_t h) noexcept nogil:
    # half h of the rows of the halves' sum (_sum_share on two threads)
    cdef _SumJob *j = <_SumJob *> ctx
    if j.single:
        _sum_share(<int> h, <const float *> j.part, <float *> j.c, j.ldc, j.m, j.n,
                   <float> j.alpha, <float> j.beta, <const float *> j.bias, j.relu, True)
    else:
        _sum_share(<int> h, <const double *> j.part, <double *> j.c, j.ldc, j.m, j.n,
                   j.alpha, j.beta, <const double *> j.bias, j.relu, True)


cdef _Split _split(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t csb, int threads, int mr,
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


cdef int _slab(const _Split *s, Py_ssize_t t, const floating *a, Py_ssize_t rsa, Py_ssize_t csa,
               const floating *b, Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc,
               Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta,
               const floating *bias, int relu) noexcept nogil:
    # slab t of a SPLIT_SLABS product (gemm_slab on its rows or columns of C)
    cdef Py_ssize_t start, size
    _slab_bounds(s, t, &start, &size)
    if size <= 0:
        return 0
    if s.split_n:
        return gemm_slab(a, rsa, csa, b + start * csb, rsb, csb, c + start, ldc, m, size, k,
                         alpha, beta, bias + start if bias != NULL else NULL, relu,
                         s.row_path)
    return gemm_slab(a + start * rsa, rsa, csa, b, rsb, csb, c + start * ldc, ldc, size, n, k,
                     alpha, beta, bias, relu, s.row_path)


cdef int gemm_parallel(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                       Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                       Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta,
                       const floating *bias, int relu, int threads) noexcept nogil:
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
    cdef _SlabJob job
    cdef Py_ssize_t t
    job.split = &s
    job.single = floating is float
    job.a = a
    job.rsa = rsa
    job.csa = csa
    job.b = b
    job.rsb = rsb
    job.csb = csb
    job.c = c
    job.ldc = ldc
    job.m = m
    job.n = n
    job.k = k
    job.alpha = alpha
    job.beta = beta
    job.bias = bias
    job.relu = relu
    run_parts_on(_slab_part, &job, s.parts, <int> s.parts)
    for t in range(s.parts):
        if job.status[t] != 0:
            return -1
    return 0


cdef void _slab_part(void *ctx, Py_ssize_t t) noexcept nogil:
    # slab t of a product in slabs (gemm_parallel)
    cdef _SlabJob *j = <_SlabJob *> ctx
    if j.single:
        j.status[t] = _slab(j.split, t, <const float *> j.a, j.rsa, j.csa,
                            <const float *> j.b, j.rsb, j.csb, <float *> j.c, j.ldc, j.m,
                            j.n, j.k, <float> j.alpha, <float> j.beta,
                            <const float *> j.bias, j.relu)
    else:
        j.status[t] = _slab(j.split, t, <const double *> j.a, j.rsa, j.csa,
                            <const double *> j.b, j.rsb, j.csb, <double *> j.c, j.ldc, j.m,
                            j.n, j.k, j.alpha, j.beta, <const double *> j.bias, j.relu)


cdef void gemm_naive_kernel(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                            Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc,
                            Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                            floating beta) noexcept nogil:
    # c[i, j] = alpha * sum_p a[i, p] * b[p, j] + beta * c[i, j]; the textbook loop order
    cdef Py_ssize_t i, j, p
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


cdef int _run_typed(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                    Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t m, Py_ssize_t n,
                    Py_ssize_t k, double alpha, double beta, const floating *bias, int relu,
                    bint naive, int threads) noexcept nogil:
    if k == 0:       # no products to sum: NumPy's answer, beta * C (+ bias, ReLU)
        return _no_products(c, n, m, n, <floating> beta, bias, relu)
    if naive:
        gemm_naive_kernel(a, rsa, csa, b, rsb, csb, c, n, m, n, k, <floating> alpha,
                          <floating> beta)
        return 0
    return gemm_parallel(a, rsa, csa, b, rsb, csb, c, n, m, n, k, <floating> alpha,
                         <floating> beta, bias, relu, threads)


cdef int _run(cnp.ndarray a, bint trans_a, cnp.ndarray b, bint trans_b, cnp.ndarray c, Py_ssize_t k,
              double alpha, double beta, object bias, int relu, bint naive) except -1:
    # C (m x n) from op(A) (m x k) and op(B) (k x n); the strides encode the transposes.
    # The arrays were checked by the caller (C-contiguous, aligned, one float dtype): their
    # data pointers are taken as they are (no memoryview to acquire: a one-sample product
    # is over in microseconds).
    cdef Py_ssize_t m = cnp.PyArray_DIM(c, 0), n = cnp.PyArray_DIM(c, 1)
    cdef Py_ssize_t acols = cnp.PyArray_DIM(a, 1), bcols = cnp.PyArray_DIM(b, 1)
    cdef Py_ssize_t rsa = 1 if trans_a else acols, csa = acols if trans_a else 1
    cdef Py_ssize_t rsb = 1 if trans_b else bcols, csb = bcols if trans_b else 1
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
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t kb = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if k != kb:
        raise ValueError(f"b: op(a) is {m}x{k} but op(b) is {kb}x{n}; inner dimensions differ")
    alpha = check_scalar("alpha", alpha)
    beta = check_scalar("beta", beta)
    if beta != 0 and out is None:
        raise ValueError("out is required when beta != 0 (it is read)")
    c = output("out", out, (m, n), a.dtype)
    if out is not None:
        _refuse_overlap("out", c, ("a", a, "b", b))
    _run(a, trans_a, b, trans_b, c, k, alpha, beta, None, 0, naive)
    return c if out is None else out        # (the caller's object: a subclass was viewed)


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


cdef _refuse_overlap(str name, object buf, tuple named):
    # `buf` is written while the arrays in `named` (name, array-or-None pairs, flattened)
    # are read -- by several threads: one that shares memory with any of them would give a
    # silent wrong answer, so it is refused
    cdef Py_ssize_t i
    for i in range(0, len(named), 2):
        refuse_overlap(name, buf, named[i], named[i + 1])


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


cdef int sgemm_serial(const float *a, Py_ssize_t rsa, Py_ssize_t csa, const float *b,
                      Py_ssize_t rsb, Py_ssize_t csb, float *c, Py_ssize_t ldc, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, float alpha, float beta, const float *bias,
                      int relu) noexcept nogil:
    return _serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu)


cdef int dgemm_serial(const double *a, Py_ssize_t rsa, Py_ssize_t csa, const double *b,
                      Py_ssize_t rsb, Py_ssize_t csb, double *c, Py_ssize_t ldc, Py_ssize_t m,
                      Py_ssize_t n, Py_ssize_t k, double alpha, double beta, const double *bias,
                      int relu) noexcept nogil:
    return _serial(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu)


cdef int _serial(const floating *a, Py_ssize_t rsa, Py_ssize_t csa, const floating *b,
                 Py_ssize_t rsb, Py_ssize_t csb, floating *c, Py_ssize_t ldc, Py_ssize_t m,
                 Py_ssize_t n, Py_ssize_t k, floating alpha, floating beta, const floating *bias,
                 int relu) noexcept nogil:
    # the body of sgemm_serial / dgemm_serial (the .pxd exports them by type)
    if m == 0 or n == 0:
        return 0
    if k == 0:
        return _no_products(c, ldc, m, n, beta, bias, relu)
    return gemm_slab(a, rsa, csa, b, rsb, csb, c, ldc, m, n, k, alpha, beta, bias, relu,
                     m < ROW_PATH_MAX_M and csb == 1)


cdef int _no_products(floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n, floating beta,
                      const floating *bias, int relu) noexcept nogil:
    # k == 0: C = beta * C (+ bias, ReLU)
    cdef Py_ssize_t i, j
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


ctypedef struct _PeakJob:
    int isa
    Py_ssize_t reps
    double *flops


def _fma_peak(Py_ssize_t reps=10_000_000, int threads=1):
    """The measured multiply-add peak (float32 GFLOP/s) that the benchmark's "% of peak"
    divides by: `threads` threads each issue `reps` x 24 independent vector FMAs of the
    widest ISA the GEMM uses (src/nn_peak.h), with no memory traffic."""
    import time
    if threads < 1 or reps < 1:
        raise ValueError(f"threads and reps must be >= 1, got {threads}, {reps}")
    cdef _PeakJob job
    cdef int t
    job.isa = nn_cpu_best_isa()
    job.reps = reps
    job.flops = <double *> malloc(threads * sizeof(double))
    if job.flops == NULL:
        raise MemoryError()
    try:
        start = time.perf_counter()
        with nogil:
            run_parts_on(_peak_part, &job, threads, threads)
        elapsed = time.perf_counter() - start
        return sum(job.flops[t] for t in range(threads)) / elapsed / 1e9
    finally:
        free(job.flops)


cdef void _peak_part(void *ctx, Py_ssize_t t) noexcept nogil:
    cdef _PeakJob *j = <_PeakJob *> ctx
    j.flops[t] = nn_fma_peak_loop(j.isa, j.reps)
