"""The one door to the kernels: which implementation the Python layer calls.

This is the only module of ``nnscratch`` that imports ``cnn_core``. Two backends have
the same functions with the same signatures (see ``cnn_core.reference``):

* ``"cython"`` — ``cnn_core``, the compiled kernels (the default);
* ``"numpy"``  — ``cnn_core.reference``, their NumPy twins: slower, but every formula
  can be read in a few lines, and a model can be run on both and compared.

On the compiled kernels a `Sequential` also hands its layers to the fast path
(``nnscratch._fast``: fused kernels, kept buffers), which gives the same bits as the
layers' own code; ``set_fast_path(False)`` runs the layers' code on the compiled kernels
too. On the NumPy backend the layers' code always runs: the textbook path, end to end.

Layers, losses and optimizers look the backend up at every call with `kernels()`, so
`set_backend` switches every existing model at once::

    import nnscratch
    nnscratch.set_backend("numpy")
    with nnscratch.backend.using("cython"):
        ...                       # compiled kernels inside the block only
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Iterator

import cnn_core
import cnn_core.reference as _reference

__all__ = ["kernels", "set_backend", "get_backend", "using", "set_num_threads",
           "get_num_threads", "cnn_core_module", "fast_path", "set_fast_path"]

_BACKENDS = {"cython": cnn_core, "numpy": _reference}
_active = "cython"
_fast_path_allowed = True


def kernels() -> ModuleType:
    """The kernel module of the active backend (``cnn_core`` or ``cnn_core.reference``)."""
    return _BACKENDS[_active]


def cnn_core_module() -> ModuleType:
    """The compiled module ``cnn_core`` whatever the active backend: for tools that report
    on the build (``openmp_enabled``, ``cpu_features``, ``gemm_kernel_name``) or time the
    kernels themselves."""
    return cnn_core


def set_backend(name: str) -> None:
    """Run every layer, loss and optimizer on ``"cython"`` or ``"numpy"`` kernels.

    Raises
    ------
    ValueError
        For any other name.
    """
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; choose one of {sorted(_BACKENDS)}")
    _active = name


def get_backend() -> str:
    """The active backend's name, ``"cython"`` or ``"numpy"``."""
    return _active


def fast_path() -> bool:
    """True when `Sequential` hands its layers to the fast path: the compiled kernels are
    active and the fast path was not switched off."""
    return _active == "cython" and _fast_path_allowed


def set_fast_path(enabled: bool) -> bool:
    """Allow (True, the default) or forbid the fast path; returns the previous setting.

    With False, models run their layers' own code on the compiled kernels: the same
    numbers, bit for bit, more slowly (the tests compare the two).
    """
    global _fast_path_allowed
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    previous, _fast_path_allowed = _fast_path_allowed, enabled
    return previous


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Context manager: the backend `name` inside the block, the previous one after it."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def set_num_threads(n: int) -> None:
    """Number of threads the kernels use (both backends), from the next kernel call on.

    Raises
    ------
    ValueError
        When ``n < 1``.
    """
    cnn_core.set_num_threads(n)
    _reference.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the compiled kernels use."""
    return cnn_core.get_num_threads()


def thread_count_reason() -> str:
    """Why the kernels use ``get_num_threads()`` threads, in words: the CPUs this process
    may run on (its affinity), lowered by ``NNSCRATCH_NUM_THREADS`` or ``OMP_NUM_THREADS``
    when set, or ``set_num_threads``."""
    from cnn_core._parallel import thread_count_reason as reason

    return reason()


def memory_budget(nbytes: int) -> Any:
    """A context in which NumPy grants this thread at most `nbytes` in all, then raises
    ``MemoryError`` (``nnscratch.load`` builds a model from a file in one: cnn_core._budget)."""
    from cnn_core._budget import budget

    return budget(nbytes)
