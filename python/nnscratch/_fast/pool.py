"""The fast path's one buffer pool: arrays kept from one call to the next.

A training step writes every layer output, every gradient passed down, the loss gradient
and the gathered batch into arrays it got here, so that a steady-state step allocates
nothing. Each array is asked for by a key (the step and what it holds), a shape and a dtype;
the same request gets the same array back. When the pool holds more than `limit` arrays
(many batch sizes) it starts again.

An array a call reads must not be the array it writes: a pooled output fed back as an input
would be written while it is read. `arrays` then answers None for it (the kernel allocates
a fresh one), and `owns` tells a plan that an input is one of its buffers (it copies it:
its steps keep their inputs for backward, and a later step may write that buffer).

The gradients a backward pass hands down are different: each is read by the step below
and then never again. They come from `passing`, a few arrays per shape shared by every
step -- whichever of them no array still to be read is -- rather than one per step: a
ResNet-20 step then keeps a handful of gradient arrays per feature-map size instead of
one per layer (the saved activations are the only arrays it must keep).
"""
from .. import _memory

__all__ = ["BufferPool"]


class BufferPool:
    """Aligned arrays kept by ``(key, shape, dtype)``."""

    __slots__ = ("_arrays", "_bases", "_passing", "limit")

    def __init__(self, limit=256):
        self._arrays = {}
        self._bases = set()      # ids of the memory blocks of the kept arrays
        self._passing = {}       # (shape, dtype) -> the gradient arrays of that kind
        self.limit = limit

    def arrays(self, key, shapes, dtype, reading=()):
        """A list of arrays, one per shape in `shapes` (None for a None shape), kept under
        `key`; an entry that shares its memory with an array of `reading` is None."""
        entry = self._arrays.get(key)
        if entry is None or entry[0] != shapes or entry[1] != dtype:
            if len(self._arrays) >= self.limit:
                self.clear()
            entry = (shapes, dtype, [None if shape is None else _memory.empty(shape, dtype)
                                     for shape in shapes])
            self._arrays[key] = entry
            self._bases.update(id(a.base) for a in entry[2] if a is not None)
        kept = entry[2]
        for array in reading:
            if array is None:
                continue
            base = array.base if array.base is not None else array
            for other in kept:
                if other is not None and (other is array or other.base is base):
                    return [None if (k is not None and (k is array or k.base is base)) else k
                            for k in kept]
        return kept

    def array(self, key, shape, dtype, reading=()):
        """One kept array (see `arrays`)."""
        return self.arrays(key, (shape,), dtype, reading)[0]

    def passing(self, shape, dtype, busy):
        """An array of `shape` and `dtype` for a gradient on its way down: the first of
        those kept for that kind that shares no memory with an array of `busy` (the arrays
        the call reads, and those to be read later), or a new one kept with them."""
        kind = (tuple(shape), dtype)
        arrays = self._passing.get(kind)
        if arrays is None:
            if len(self._passing) >= self.limit:
                self.clear()
            arrays = self._passing[kind] = []
        taken = {id(a if a.base is None else a.base) for a in busy if a is not None}
        for array in arrays:
            if id(array.base) not in taken:
                return array
        array = _memory.empty(shape, dtype)
        arrays.append(array)
        self._bases.add(id(array.base))
        return array

    def owns(self, array):
        """True when `array` is (a view of) one of the kept arrays."""
        base = getattr(array, "base", None)
        return base is not None and id(base) in self._bases

    def clear(self):
        self._arrays.clear()
        self._passing.clear()
        self._bases.clear()
