"""Arguments that have fooled the kernels: ndarray subclasses whose properties lie, and
buffers that overlap what a kernel reads. Shared by test_lying_arrays.py,
test_overlapping_buffers.py and the fuzz driver (test_fuzz.py).

* `Lying`: an ndarray subclass whose Python properties (shape, strides, dtype, itemsize,
  ndim, size, nbytes, flags, len) say what it is told; its memory -- what NumPy's C code
  and the kernels' loops use -- is the truth. `lies_about(v)` lists the lies to try on an
  argument whose valid value is v. `Impostor(v)`: no array at all, but isinstance(...,
  np.ndarray) says it is one and its attributes describe v.
* `CALLS`: a valid call of every public kernel (dtype -> keyword arguments), small arrays;
  list arguments (weights, xs, params, ...) hold arrays too. Names of arguments inside
  lists are written `weights[1]` (`get`, `put`).
* `OVERLAPS`: for each kernel, the buffers it writes and the arrays each must not overlap
  (what it reads, the other buffers), and whether it may be exactly that array (in place).
  `overlapping(a, b, shift)` lays copies of two arrays into one piece of memory.
"""
import numpy as np

from test_kernel_validation import CASES, _a, _ramp


# ---------------------------------------------------------------------------------------
# Subclasses that lie

class Flags:
    """What a lying `flags` property returns: every flag set to `value`."""

    def __init__(self, value=True):
        self.c_contiguous = self.f_contiguous = self.contiguous = value
        self.aligned = self.writeable = self.owndata = value
        self.writebackifcopy = False

    def __getitem__(self, key):
        names = {"C": "c_contiguous", "F": "f_contiguous", "A": "aligned", "W": "writeable",
                 "O": "owndata", "X": "writebackifcopy", "CONTIGUOUS": "c_contiguous"}
        key = key.upper()
        return getattr(self, names.get(key, key.lower()))


class Lying(np.ndarray):
    """An ndarray whose Python properties say what its `lies` dict holds (the real value
    where it holds none). Never repr() one: NumPy's printing believes them."""

    def _told(self, name):
        lies = self.__dict__.get("lies", {})
        return lies[name] if name in lies else getattr(np.ndarray, name).__get__(self)

    shape = property(lambda self: self._told("shape"))
    strides = property(lambda self: self._told("strides"))
    dtype = property(lambda self: self._told("dtype"))
    itemsize = property(lambda self: self._told("itemsize"))
    ndim = property(lambda self: self._told("ndim"))
    size = property(lambda self: self._told("size"))
    nbytes = property(lambda self: self._told("nbytes"))
    flags = property(lambda self: self._told("flags"))

    def __len__(self):
        lies = self.__dict__.get("lies", {})
        return lies["len"] if "len" in lies else np.ndarray.__len__(self)


class Impostor:
    """Not an array, but says it is one: its __class__ is np.ndarray (isinstance believes
    it) and its attributes describe the array v."""

    def __init__(self, v):
        self.__dict__.update(description(v))

    __class__ = property(lambda self: np.ndarray)

    def __len__(self):
        return self.__dict__.get("len", 0)


IMPOSTOR = "a non-array that says it is v"


def lying(real, lies):
    """`real`'s memory as a Lying array telling `lies`."""
    v = real.view(Lying)
    v.lies = dict(lies)
    return v


def _other_dtype(dtype):
    """A dtype a kernel would read differently (another size, or another kind)."""
    return np.dtype({"f4": "f8", "f8": "f4", "i8": "i4", "i4": "i8", "u1": "f8",
                     "b1": "u1"}.get(dtype.str[1:], "f8"))


def description(v):
    """Everything a Lying array can tell, as v would tell it: a smaller, other-typed,
    strided or read-only array told this passes for v."""
    told = dict(shape=v.shape, strides=v.strides, dtype=v.dtype, itemsize=v.itemsize,
                ndim=v.ndim, size=v.size, nbytes=v.nbytes, flags=Flags())
    if v.ndim:
        told["len"] = len(v)
    return told


def lies_about(v):
    """(what, make the real array, lies) for an argument whose valid value is v. Lies told
    about v itself: the call must give what it gives on v. v's description told about
    another array: the call must give what it gives on that array (mostly a TypeError or
    ValueError naming the argument) -- reading it as v would read past its end, or write
    a read-only one."""
    other = _other_dtype(v.dtype)
    huge = tuple(10**6 + d for d in v.shape)
    copy = v.copy

    def strided():
        return np.repeat(v[..., None], 2, axis=-1)[..., 0]      # every other element

    def read_only():
        c = v.copy()
        c.setflags(write=False)
        return c

    return [
        ("an honest subclass", copy, {}),
        ("a huge shape", copy, dict(shape=huge, size=int(np.prod(huge, dtype=float)),
                                    nbytes=int(np.prod(huge, dtype=float)) * v.itemsize,
                                    len=huge[0] if huge else 0)),
        ("a one-element shape", copy, dict(shape=(1,) * v.ndim, size=1, nbytes=v.itemsize,
                                           len=1)),
        ("wild strides", copy, dict(strides=(1 << 40,) * v.ndim)),
        (f"dtype {other}", copy, dict(dtype=other, itemsize=other.itemsize)),
        ("ndim + 3, no flags", copy, dict(ndim=v.ndim + 3, flags=Flags(False))),
        ("one element told to be valid", lambda: v.reshape(-1)[:1].copy(), description(v)),
        (f"{other} told to be valid", lambda: v.astype(other), description(v)),
        ("strided, told to be valid", strided, description(v)),
        ("read-only, told to be valid", read_only, description(v)),
    ]


# ---------------------------------------------------------------------------------------
# A valid call of every public kernel

def _chain_forward(dt):
    return dict(x=_ramp(dt, 3, 4), weights=[_ramp(dt, 4, 5), _ramp(dt, 5, 2)],
                biases=[_ramp(dt, 5), None], activations=["relu", None],
                outs=[_a(dt, 3, 5), _a(dt, 3, 2)])


def _chain_backward(dt):
    xs = [_ramp(dt, 3, 4), np.maximum(_ramp(dt, 3, 5), 0)]
    return dict(grad_out=_ramp(dt, 3, 2), xs=xs, weights=[_ramp(dt, 4, 5), _ramp(dt, 5, 2)],
                grads_w=[_a(dt, 4, 5), _a(dt, 5, 2)], grads_b=[_a(dt, 5), _a(dt, 2)],
                masks=[np.maximum(_ramp(dt, 3, 5), 0), None], grad_x=_a(dt, 3, 4),
                work=[_a(dt, 3, 5), None])


def _step(dt, *states):
    kw = dict(params=[_ramp(dt, 3, 4), _ramp(dt, 5)], grads=[_a(dt, 3, 4), _ramp(dt, 5) / 2])
    kw.update({name: [_a(dt, 3, 4, value=0.25), _a(dt, 5, value=0.25)] for name in states})
    return kw


CALLS = {name: case.make for name, case in CASES.items()}
CALLS.update({
    "linear_chain_forward": _chain_forward,
    "linear_chain_backward": _chain_backward,
    "sgd_step": lambda dt: dict(_step(dt, "velocities"), lr=0.1, momentum=0.9),
    "adam_step": lambda dt: dict(_step(dt, "ms", "vs"), step=3, lr=1e-3, beta1=0.9,
                                 beta2=0.999, eps=1e-8),
    "take_rows": lambda dt: dict(x=_ramp(dt, 6, 3), rows=np.array([0, 5, 2, 2]),
                                 out=_a(dt, 4, 3)),
    "all_finite": lambda dt: dict(x=_ramp(dt, 3, 4)),
})


def get(kw, name):
    """kw's argument `name`: "x", or an entry of a list argument, "weights[1]"."""
    if name.endswith("]"):
        base, index = name[:-1].split("[")
        return kw[base][int(index)]
    return kw[name]


def put(kw, name, value):
    """Set kw's argument `name` (an entry of a list argument in a new list)."""
    if name.endswith("]"):
        base, index = name[:-1].split("[")
        kw[base] = list(kw[base])
        kw[base][int(index)] = value
    else:
        kw[name] = value


def array_arguments(kw):
    """The names of kw's array arguments, those in lists as name[i] (first and last)."""
    names = []
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            names.append(k)
        elif isinstance(v, list):
            names += [f"{k}[{i}]" for i in sorted({0, len(v) - 1})
                      if isinstance(v[i], np.ndarray)]
    return names


# ---------------------------------------------------------------------------------------
# Buffers that overlap

def _pairs(buffer, *others, in_place=()):
    return [(buffer, other, other in in_place) for other in others]


def _activation(first, second=None):
    names = (first, second) if second else (first,)
    return _pairs("out", *names, in_place=names)


# kernel -> (buffer written, an array it must not overlap, whether it may be exactly that
# array: in place)
OVERLAPS = {
    "gemm": _pairs("out", "a", "b"),
    "linear_forward": _pairs("out", "x", "w", "b"),
    "linear_backward": (_pairs("grad_w", "grad_out", "x", "w", "grad_b")
                        + _pairs("grad_b", "grad_out", "w")
                        + _pairs("grad_x", "grad_out", "x", "w", "grad_w", "grad_b")),
    "linear_chain_forward": (_pairs("outs[0]", "x", "biases[0]", "outs[1]")
                             + _pairs("outs[1]", "weights[1]", "weights[0]")),
    "linear_chain_backward": (_pairs("grads_w[0]", "grad_out", "grads_w[1]")
                              + _pairs("grads_w[1]", "xs[1]", "masks[0]")
                              + _pairs("grads_b[0]", "weights[0]", "grad_x")
                              + _pairs("work[0]", "grad_x", "xs[0]")
                              + _pairs("grad_x", "xs[0]", "grads_b[1]")),
    "relu_forward": _activation("x"),
    "add": _activation("a", "b"),
    "relu_backward": _activation("grad_out", "x"),
    "leaky_relu_forward": _activation("x"),
    "leaky_relu_backward": _activation("grad_out", "x"),
    "sigmoid_forward": _activation("x"),
    "sigmoid_backward": _activation("grad_out", "y"),
    "tanh_forward": _activation("x"),
    "tanh_backward": _activation("grad_out", "y"),
    "softmax_forward": _activation("x"),
    "softmax_backward": _activation("grad_out", "y"),
    "dropout_forward": _pairs("out", "x", "mask", in_place=("x",)),
    "dropout_backward": _pairs("out", "grad_out", "mask", in_place=("grad_out",)),
    "softmax_cross_entropy": _pairs("grad", "logits", "labels", in_place=("logits",)),
    "mse": _pairs("grad", "pred", "target", in_place=("pred", "target")),
    "bce_with_logits": _pairs("grad", "logits", "target", in_place=("logits", "target")),
    "sgd_update": _pairs("param", "grad", "velocity") + _pairs("velocity", "grad"),
    "adam_update": (_pairs("param", "grad", "m", "v") + _pairs("m", "grad", "v")
                    + _pairs("v", "grad")),
    "sgd_step": (_pairs("params[0]", "grads[0]", "grads[1]", "params[1]", "velocities[0]")
                 + _pairs("velocities[1]", "grads[0]", "velocities[0]")),
    "adam_step": (_pairs("params[1]", "grads[1]", "ms[1]", "vs[0]")
                  + _pairs("ms[0]", "grads[0]", "vs[0]") + _pairs("vs[1]", "grads[0]")),
    "conv2d_forward": _pairs("out", "x", "w", "b"),
    "conv2d_backward": (_pairs("grad_w", "grad_out", "x", "w", "grad_b")
                        + _pairs("grad_b", "grad_out", "x")
                        + _pairs("grad_x", "grad_out", "x", "w", "grad_w", "grad_b")),
    "maxpool2d_forward": _pairs("out", "x", "indices") + _pairs("indices", "x"),
    "maxpool2d_backward": _pairs("out", "grad_out", "indices"),
    "avgpool2d_forward": _pairs("out", "x"),
    "avgpool2d_backward": _pairs("out", "grad_out"),
    "batchnorm_forward": (_pairs("out", "x", "gamma", "beta", "running_mean", "save_mean",
                                 in_place=("x",))
                          + _pairs("running_mean", "x", "gamma", "running_var")
                          + _pairs("running_var", "beta", "save_invstd")
                          + _pairs("save_mean", "x", "running_mean", "save_invstd")
                          + _pairs("save_invstd", "gamma")),
    "batchnorm_backward": (_pairs("grad_x", "grad_out", "x", "gamma", "save_invstd",
                                  "grad_beta", in_place=("grad_out", "x"))
                           + _pairs("grad_gamma", "grad_out", "save_mean", "grad_beta")
                           + _pairs("grad_beta", "x", "gamma")),
    "take_rows": _pairs("out", "x", "rows"),
}
OVERLAPS["gemm_naive"] = OVERLAPS["gemm"]
INDEX_ARGUMENTS = ("labels", "mask", "indices", "rows")   # integer arrays: indices read


def overlapping(buf, other, shift):
    """Copies of the arrays `buf` and `other` in one piece of memory, `other` starting
    `shift` bytes after `buf` (before it when negative): (buf', other', the memory). The
    part they share holds other's values (buf is written first)."""
    at_buf, at_other = (0, shift) if shift >= 0 else (-shift, 0)
    size = max(at_buf + buf.nbytes, at_other + other.nbytes)
    memory = np.zeros(size // 8 + 1, np.float64).view(np.uint8)       # 8-byte aligned
    b = memory[at_buf:at_buf + buf.nbytes].view(buf.dtype).reshape(buf.shape)
    o = memory[at_other:at_other + other.nbytes].view(other.dtype).reshape(other.shape)
    b[...] = buf
    o[...] = other
    return b, o, memory


def shift_for(buf, other):
    """A shift that keeps both arrays aligned and makes them overlap (one element of the
    wider type), or None when one of them is too small to overlap at that distance."""
    shift = max(buf.itemsize, other.itemsize)
    if buf.nbytes <= shift or other.nbytes <= shift:
        return None
    return shift
