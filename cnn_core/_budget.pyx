"""A cap on the memory NumPy may allocate while a file is turned into a model.

``nnscratch.load`` builds the model a file describes before it reads the weights. The
built-in layers' sizes are checked against the file's declared sizes first, but a layer of
one's own is only known by constructing it: ``MyBlock(width=10**6)`` from a 2 KB file would
allocate terabytes of initial weights. ``budget(n)`` installs, for the calling thread's
context only (NumPy keeps its allocator in a context variable, NEP 49), an allocator that
grants at most `n` bytes in all -- frees are not given back, so temporaries count -- and
then answers NULL, which NumPy turns into a ``MemoryError``. Arrays made under it free
through it wherever they end up; their memory is plain ``malloc`` memory (NumPy reports it
to ``tracemalloc`` as its own -- and a refused request too, as a block at address 0).

    with budget(64 << 20) as spent:
        model = build(...)          # MemoryError past 64 MiB
    spent()                         # bytes granted
"""
from contextlib import contextmanager

from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    int _import_array() except -1

_import_array()


cdef struct Budget:
    PyDataMem_Handler handler
    size_t left                     # bytes that may still be granted
    size_t granted


cdef inline bint _take(Budget *b, size_t size) noexcept nogil:
    if size > b.left:
        return False
    b.left -= size
    b.granted += size
    return True


cdef void *_malloc(void *ctx, size_t size) noexcept nogil:
    if not _take(<Budget *>ctx, size):
        return NULL
    return malloc(size if size else 1)


cdef void *_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    if elsize != 0 and nelem > (<size_t>-1) // elsize:
        return NULL
    if not _take(<Budget *>ctx, nelem * elsize):
        return NULL
    return calloc(nelem if nelem else 1, elsize if elsize else 1)


cdef void *_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    if not _take(<Budget *>ctx, new_size):
        return NULL
    return realloc(ptr, new_size if new_size else 1)


cdef void _free(void *ctx, void *ptr, size_t size) noexcept nogil:
    free(ptr)


cdef void _release(object capsule) noexcept:
    free(PyCapsule_GetPointer(capsule, "mem_handler"))


def _handler(size_t nbytes):
    """A new NumPy memory handler granting `nbytes` in all (a capsule NumPy keeps alive as
    long as an array made by it lives)."""
    cdef Budget *b = <Budget *>malloc(sizeof(Budget))
    if b == NULL:
        raise MemoryError()
    memset(b, 0, sizeof(Budget))
    memcpy(b.handler.name, b"nnscratch_budget", 17)
    b.handler.version = 1
    b.handler.allocator.ctx = b
    b.handler.allocator.malloc = _malloc
    b.handler.allocator.calloc = _calloc
    b.handler.allocator.realloc = _realloc
    b.handler.allocator.free = _free
    b.left = nbytes
    return PyCapsule_New(<void *>b, "mem_handler", _release)


def _granted(capsule):
    return (<Budget *>PyCapsule_GetPointer(capsule, "mem_handler")).granted


@contextmanager
def budget(nbytes):
    """Within the block, NumPy allocations in this thread's context are granted `nbytes`
    bytes in all; past that they raise ``MemoryError``. Yields a function giving the bytes
    granted so far."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"budget: nbytes must be an int >= 0, got {nbytes!r}")
    capsule = _handler(min(nbytes, (<size_t>-1) >> 1))
    previous = PyDataMem_SetHandler(capsule)
    try:
        yield lambda: _granted(capsule)
    finally:
        PyDataMem_SetHandler(previous)
