/* nn_scratch.h -- per-thread, 64-byte aligned scratch buffers for packing GEMM panels.
 *
 * Each thread (an OpenMP worker or a Python thread calling a kernel) keeps its own buffers in
 * thread-local storage, grown on demand (never shrunk) and reused by every later call, so a
 * training step in steady state allocates nothing and two Python threads never share a buffer.
 * The variables are `static`: every extension module that includes this header has its own
 * set, so the slots mean what that module says (_gemm: 0 = packed A, 1 = packed B;
 * _conv: 0 = im2col columns, 1 = per-thread weight-gradient partials).
 */
#ifndef NN_SCRATCH_H
#define NN_SCRATCH_H

#include <stdlib.h>

#define NN_SCRATCH_SLOTS 2
#define NN_ALIGN 64

static __thread void *nn_scratch_buf[NN_SCRATCH_SLOTS];
static __thread size_t nn_scratch_cap[NN_SCRATCH_SLOTS];

/* A buffer of at least nbytes for this thread, or NULL when memory runs out. */
static void *nn_scratch(int slot, size_t nbytes) {
    if (nbytes > nn_scratch_cap[slot]) {
        size_t cap = (nbytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
        void *p = aligned_alloc(NN_ALIGN, cap);
        if (p == NULL) return NULL;
        free(nn_scratch_buf[slot]);
        nn_scratch_buf[slot] = p;
        nn_scratch_cap[slot] = cap;
    }
    return nn_scratch_buf[slot];
}

#endif /* NN_SCRATCH_H */
