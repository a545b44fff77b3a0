# Thread count shared by every kernel module (set from nnscratch.set_num_threads), and how
# the kernels cut their work into one contiguous span per thread.

cdef enum:
    MAX_PARTS = 64         # most spans a kernel cuts its work into (sizes its partial arrays)
    SPAN_MIN = 1 << 15     # elementwise work per thread below which one thread does it all

cdef int num_threads() noexcept nogil


cdef inline long span_parts(long units, long min_units, int threads) noexcept nogil:
    # How many spans (one per thread) to cut `units` of work into: each gets at least
    # `min_units`, there are at most `threads` and MAX_PARTS of them, and at least one.
    cdef long parts = units // min_units
    if parts > threads:
        parts = threads
    if parts > MAX_PARTS:
        parts = MAX_PARTS
    return parts if parts > 1 else 1
