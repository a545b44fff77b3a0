"""The thread count and what the build and CPU can do: the NumPy twin of
``cnn_core/_parallel.pyx``. NumPy decides its own threads and instructions; these keep the
API, so that code written for the compiled kernels runs on the twins unchanged."""
from cnn_core.reference import _checks

_num_threads = 1


def set_num_threads(n):
    """Remember ``n`` (>= 1) as the thread count; NumPy's own threading is unaffected."""
    global _num_threads
    _num_threads = _checks.thread_count(n)


def get_num_threads():
    """The thread count last set (1 at the start)."""
    return _num_threads


def openmp_enabled():
    """Always False: the reference runs in NumPy, not in OpenMP threads."""
    return False


def cpu_features():
    """Always empty: the reference uses no instruction set of its own."""
    return {}
