"""The kernels' threads, and what this build and CPU can do.

The threads are the library's own (src/nn_team.h): a kernel cuts its work into parts fixed
by the thread count and the shape, and the calling thread and the team's workers claim
them -- each its own first, then whatever is left -- so no thread ever waits for one the OS
has parked or put to sleep, and the bits do not depend on who ran which part.

Every kernel module cimports `num_threads()` and `run_parts()` from here, so one call to
`set_num_threads(n)` changes them all, effective at the next kernel call. The default is
the number of CPUs this process may run on (its affinity), lowered by NNSCRATCH_NUM_THREADS
or OMP_NUM_THREADS when set (`thread_count_reason()` says which).
"""
import os

cdef extern from "nn_cpu.h" nogil:
    int nn_cpu_has_avx2_fma()
    int nn_cpu_has_avx512f()

cdef extern from "nn_team.h" nogil:
    ctypedef void (*nn_team_fn)(void *ctx, Py_ssize_t part) noexcept nogil
    void nn_team_run(nn_team_fn fn, void *ctx, Py_ssize_t parts, int threads)
    int nn_team_own(int threads)
    void nn_team_disown()
    unsigned long long nn_team_post(nn_team_fn fn, void *ctx, Py_ssize_t parts, int size, int offer)
    void nn_team_finish(unsigned long long job, nn_team_fn fn, void *ctx, Py_ssize_t parts,
                        int size)
    void nn_team_hold(int hold)
    Py_ssize_t nn_team_by_workers(int offered)
    Py_ssize_t nn_team_taken_back(int offered)
    int nn_team_workers()
    int nn_team_threads()
    void nn_team_set_threads(int n)
    Py_ssize_t nn_team_lates()
    void nn_team_slow(Py_ssize_t ns)
    void nn_team_tune(Py_ssize_t late_ns, Py_ssize_t solo_min_ns, Py_ssize_t solo_max_ns,
                      Py_ssize_t spin_ns, Py_ssize_t move_ns, Py_ssize_t steer_ns, Py_ssize_t calm)
    Py_ssize_t nn_team_moves()
    Py_ssize_t nn_team_steers()
    int NN_TEAM_MAX

MAX_THREADS = 4096


def _default_threads():
    """(threads, why): the CPUs of this process's affinity, lowered by the environment."""
    try:
        cpus = len(os.sched_getaffinity(0))
        why = f"{cpus} CPUs this process may run on"
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
        why = f"{cpus} CPUs"
    threads = cpus
    for name in ("NNSCRATCH_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        try:
            wanted = int(value.split(",")[0])    # (OpenMP's "4,2": the outer level's count)
        except ValueError:
            continue                              # (as OpenMP does with a value it cannot read)
        if 1 <= wanted < threads:
            threads, why = wanted, f"{name}={value} ({why})"
        elif wanted >= threads:
            why = f"{why}; {name}={value} asks for no fewer"
        break
    return min(threads, MAX_THREADS), why


_threads_default, _reason = _default_threads()
nn_team_set_threads(_threads_default)     # (an atomic: kernels read it from any thread)


cdef int num_threads() noexcept nogil:
    return nn_team_threads()


cdef void run_parts(part_fn fn, void *ctx, Py_ssize_t parts) noexcept nogil:
    nn_team_run(fn, ctx, parts, nn_team_threads())


cdef void run_parts_on(part_fn fn, void *ctx, Py_ssize_t parts, int threads) noexcept nogil:
    nn_team_run(fn, ctx, parts, threads)


cdef int duo_own() noexcept nogil:
    return 1 if nn_team_own(2) >= 2 else 0


cdef void duo_disown() noexcept nogil:
    nn_team_disown()


cdef Py_ssize_t duo_post(part_fn fn, void *ctx) noexcept nogil:
    return <Py_ssize_t> nn_team_post(fn, ctx, 1, 2, 1)


cdef Py_ssize_t duo_offer(part_fn fn, void *ctx) noexcept nogil:
    return duo_post(fn, ctx) if duo_own() else 0


cdef void duo_finish(Py_ssize_t ticket, part_fn fn, void *ctx) noexcept nogil:
    if ticket == 0:
        fn(ctx, 0)
    else:
        nn_team_finish(<unsigned long long> ticket, fn, ctx, 1, 2)


def set_num_threads(n):
    """Use `n` threads in the kernels (effective at the next call)."""
    global _reason
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"n must be in [1, {MAX_THREADS}], got {n}")
    if n != nn_team_threads():
        _reason = "set_num_threads" if n != _threads_default else _default_threads()[1]
    nn_team_set_threads(n)


def get_num_threads():
    """The number of threads the kernels use."""
    return nn_team_threads()


def thread_count_reason():
    """Why the kernels use get_num_threads() threads: the CPUs of the process's affinity,
    an environment variable, or set_num_threads."""
    return _reason


def openmp_enabled():
    """False: the kernels' threads are the library's own (src/nn_team.h), not OpenMP's --
    kept for code written for earlier versions, whose threads were OpenMP's."""
    return False


def _team_counts(offered=False):
    """Tests: (parts the team's workers ran, parts of the workers' blocks their callers
    ran) since the start, of the jobs run in parts (or, `offered`, of the parts offered to
    a worker: a one-sample product's second half)."""
    return nn_team_by_workers(1 if offered else 0), nn_team_taken_back(1 if offered else 0)


def _team_workers():
    """Tests: the worker threads this process has started."""
    return nn_team_workers()


def _team_lates():
    """Tests and benchmarks: the jobs so far whose caller found a worker late (descheduled
    in the middle of a part) and then ran its jobs alone for a while (src/nn_team.h)."""
    return nn_team_lates()


def _team_slow(seconds):
    """Tests: a worker naps `seconds` after claiming each part (0: no nap) -- a worker the
    OS parked in the middle of a part."""
    nn_team_slow(int(seconds * 1e9))


def _team_tune(late=1e-3, solo_min=2e-3, solo_max=0.2, spin=50e-6, move=1e-3, steer=0.0, calm=1.0):
    """Benchmarks: a job is late when its caller waited `late` seconds (and longer than its
    own share took) for a worker's part; the caller then runs alone for `solo_min` seconds,
    doubling while jobs keep being late, up to `solo_max` (0: never alone). An idle worker
    spins `spin` seconds before it sleeps; a worker on its caller's CPU moves off it at most
    every `move` seconds (0: never); a caller wakes a worker asleep for at least `steer`
    seconds away from its own CPU (< 0: never); neither within `calm` seconds of a late
    job. Call it while no kernel runs."""
    nn_team_tune(int(late * 1e9), int(solo_min * 1e9), int(solo_max * 1e9), int(spin * 1e9),
                 int(move * 1e9), int(steer * 1e9), int(calm * 1e9))


def _team_moves():
    """Tests and benchmarks: (how many times a worker moved off its caller's CPU, how many
    times a caller woke a sleeping worker away from its own CPU)."""
    return nn_team_moves(), nn_team_steers()


def _team_hold(hold):
    """Tests: True keeps the workers from claiming parts (each caller runs them all)."""
    nn_team_hold(1 if hold else 0)


def cpu_features():
    """The instruction sets the kernels can use on this CPU."""
    return {"avx2": bool(nn_cpu_has_avx2_fma()), "fma": bool(nn_cpu_has_avx2_fma()),
            "avx512f": bool(nn_cpu_has_avx512f())}
