# Thread count shared by every kernel module (set from nnscratch.set_num_threads).
cdef int num_threads() noexcept nogil
