# Single-thread GEMM on raw pointers, for other kernel families (convolution) that run their
# own threads: C (m x n) = alpha * A @ B + beta * C, element (i, p) of A at a[i*rsa + p*csa],
# (p, j) of B at b[p*rsb + j*csb], C row-major with leading dimension ldc; bias (n,) or NULL
# added per column; relu != 0 applies max(., 0). Returns -1 when out of memory.
cdef int sgemm_serial(const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                      float *c, long ldc, long m, long n, long k, float alpha, float beta,
                      const float *bias, int relu) noexcept nogil
cdef int dgemm_serial(const double *a, long rsa, long csa, const double *b, long rsb, long csb,
                      double *c, long ldc, long m, long n, long k, double alpha, double beta,
                      const double *bias, int relu) noexcept nogil

cdef enum:
    # products of at most this many rows read row-major B in place, unpacked (no copy of B:
    # the convolutions orient their products by it)
    B_IN_PLACE_MAX_M = 32
