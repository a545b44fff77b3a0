# The kernels' threads (src/nn_team.h): the thread count every kernel module reads, how the
# kernels cut their work into parts, and the team that runs the parts.

cdef enum:
    MAX_PARTS = 64         # most spans a kernel cuts its work into (sizes its partial arrays)
    SPAN_MIN = 1 << 15     # elementwise work per thread below which one thread does it all

ctypedef void (*part_fn)(void *ctx, Py_ssize_t part) noexcept nogil

cdef int num_threads() noexcept nogil

# fn(ctx, p) for every p in [0, parts), each once, on up to num_threads() threads (the
# caller one of them): whoever is awake claims the next part; the bits are the same
# whoever runs which part
cdef void run_parts(part_fn fn, void *ctx, Py_ssize_t parts) noexcept nogil
cdef void run_parts_on(part_fn fn, void *ctx, Py_ssize_t parts, int threads) noexcept nogil

# Split phase, for one part offered to a worker while the caller does other work:
#     if duo_own(): ticket = duo_post(fn, ctx)   (or ticket = duo_offer(fn, ctx): 0 if
#     ... the caller's own work ...               the team is another caller's)
#     duo_finish(ticket, fn, ctx)                 fn(ctx, 0) has run: on a worker, or here
cdef int duo_own() noexcept nogil
cdef void duo_disown() noexcept nogil
cdef Py_ssize_t duo_post(part_fn fn, void *ctx) noexcept nogil
cdef Py_ssize_t duo_offer(part_fn fn, void *ctx) noexcept nogil
cdef void duo_finish(Py_ssize_t ticket, part_fn fn, void *ctx) noexcept nogil


cdef inline Py_ssize_t span_parts(Py_ssize_t units, Py_ssize_t min_units,
                                  int threads) noexcept nogil:
    # How many spans (one per thread) to cut `units` of work into: each gets at least
    # `min_units`, there are at most `threads` and MAX_PARTS of them, and at least one.
    cdef Py_ssize_t parts = units // min_units
    if parts > threads:
        parts = threads
    if parts > MAX_PARTS:
        parts = MAX_PARTS
    return parts if parts > 1 else 1
