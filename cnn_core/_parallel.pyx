"""Thread count for the kernels, and what this build and CPU can do.

Every kernel module cimports `num_threads()` from here, so one call to
`set_num_threads(n)` changes them all, effective at the next kernel call.
"""
cdef extern from "nn_cpu.h" nogil:
    int nn_cpu_has_avx2_fma()
    int nn_cpu_has_avx512f()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int nn_openmp_enabled(void) { return 1; }
    static int nn_omp_max_threads(void) { return omp_get_num_procs(); }
    #else
    static int nn_openmp_enabled(void) { return 0; }
    static int nn_omp_max_threads(void) { return 1; }
    #endif
    """
    int nn_openmp_enabled() nogil
    int nn_omp_max_threads() nogil

cdef int _num_threads = nn_omp_max_threads()


cdef int num_threads() noexcept nogil:
    return _num_threads


def set_num_threads(n):
    """Use `n` threads in the kernels (effective at the next call). Without OpenMP, 1."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1 or n > 4096:
        raise ValueError(f"n must be in [1, 4096], got {n}")
    _num_threads = n if nn_openmp_enabled() else 1


def get_num_threads():
    """The number of threads the kernels use."""
    return _num_threads


def openmp_enabled():
    """True when the extensions were built with OpenMP."""
    return bool(nn_openmp_enabled())


def cpu_features():
    """The instruction sets the kernels can use on this CPU."""
    return {"avx2": bool(nn_cpu_has_avx2_fma()), "fma": bool(nn_cpu_has_avx2_fma()),
            "avx512f": bool(nn_cpu_has_avx512f())}
