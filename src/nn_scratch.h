/* nn_scratch.h -- per-thread, 64-byte aligned scratch buffers for packing GEMM panels.
 *
 * Each thread (an OpenMP worker or a Python thread calling a kernel) keeps its own buffers,
 * grown on demand (never shrunk) and reused by every later call, so a training step in
 * steady state allocates nothing and two Python threads never share a buffer. They hang
 * off a pthread key whose destructor frees them when the thread ends, so short-lived
 * threads leave nothing behind.
 * The variables are `static`: every extension module that includes this header has its own
 * set, so the slots mean what that module says (_gemm: 0 = packed A, 1 = packed B,
 * 2 = the two partial products of _k_halves; _linear: 2 = those of a chain's halves of k,
 * 3 = those of a chain's first layer while its half is offered to the duo: only the duo's
 * owner uses it, so a kernel called from Python code run in the meantime cannot take it);
 * _conv: 0 = im2col columns (or the direct path's stacked input planes, or the phase planes
 * of a stride-2 input gradient), 1 = weight-gradient
 * partials (and each sample's bias sums), 2 = grouped GEMM output or grad_out (or the direct
 * path's stacked outputs), 3 = the direct path's packed weights (the calling thread's, read
 * by every part), 4 = the direct weight gradient's accumulators; _norm: 0 = each sample's sums per channel and the
 * per-channel figures).
 */
#ifndef NN_SCRATCH_H
#define NN_SCRATCH_H

#include <pthread.h>
#include <stdlib.h>

#define NN_SCRATCH_SLOTS 5
#define NN_ALIGN 64

typedef struct {
    void *buf[NN_SCRATCH_SLOTS];
    size_t cap[NN_SCRATCH_SLOTS];
} nn_scratch_t;

static pthread_key_t nn_scratch_key;
static pthread_once_t nn_scratch_once = PTHREAD_ONCE_INIT;
static int nn_scratch_key_ok = 0;

static void nn_scratch_release(void *p) {
    nn_scratch_t *s = (nn_scratch_t *)p;
    for (int i = 0; i < NN_SCRATCH_SLOTS; ++i) free(s->buf[i]);
    free(s);
}

static void nn_scratch_make_key(void) {
    nn_scratch_key_ok = pthread_key_create(&nn_scratch_key, nn_scratch_release) == 0;
}

/* A buffer of at least nbytes for this thread, or NULL when memory runs out. */
static void *nn_scratch(int slot, size_t nbytes) {
    pthread_once(&nn_scratch_once, nn_scratch_make_key);
    if (!nn_scratch_key_ok) return NULL;
    nn_scratch_t *s = (nn_scratch_t *)pthread_getspecific(nn_scratch_key);
    if (s == NULL) {
        s = (nn_scratch_t *)calloc(1, sizeof(nn_scratch_t));
        if (s == NULL) return NULL;
        if (pthread_setspecific(nn_scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (nbytes > s->cap[slot]) {
        size_t cap = (nbytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
        void *p = aligned_alloc(NN_ALIGN, cap);
        if (p == NULL) return NULL;
        free(s->buf[slot]);
        s->buf[slot] = p;
        s->cap[slot] = cap;
    }
    return s->buf[slot];
}

#endif /* NN_SCRATCH_H */
