"""Buffers a kernel writes that share memory with what it reads, or with each other.

Before, only the GEMM family checked: `softmax_cross_entropy(x, y, grad=x)` returned a
wrong loss (the label's logit was read after the row was overwritten), and relu, sigmoid
(on 2 threads) and softmax gave wrong values with `out` one element past their input. Now
every buffer of every kernel (`tricky_arrays.OVERLAPS`) is either allowed to be exactly the
array it is computed from -- in place, where the kernel reads each value before it writes
it: the result is then the out-of-place result, bit for bit -- or refused: a ValueError
naming the two arguments, before anything is written. A partial overlap (a view shifted by
one element, either way) is always refused. Both backends accept and refuse the same calls.

Overlaps with an index array (labels, rows, the pooling indices) or a dropout mask run in a
child process: a kernel writing into the indices it reads could write anywhere.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from tricky_arrays import (CALLS, INDEX_ARGUMENTS, OVERLAPS, get, overlapping, put,
                           shift_for)

HERE = os.path.abspath(__file__)
BACKENDS = {"cython": cnn_core, "numpy": reference}
DTYPES = {"float32": np.float32, "float64": np.float64}


def _pairs(in_place=None):
    """(kernel, buffer, other array) for every pair of OVERLAPS (in place or not)."""
    return [(kernel, buf, other) for kernel in sorted(OVERLAPS)
            for buf, other, ok in OVERLAPS[kernel] if in_place is None or ok == in_place]


def _indexed(pair):
    return pair[1] in INDEX_ARGUMENTS or pair[2] in INDEX_ARGUMENTS


FLOAT_PAIRS = [p for p in _pairs() if not _indexed(p)]
INDEX_PAIRS = [p for p in _pairs() if _indexed(p)]


def _same_layout(kernel, buf, other):
    kw = CALLS[kernel](np.float64)
    a, b = get(kw, buf), get(kw, other)
    return a.shape == b.shape and a.dtype == b.dtype


def _id(pair):
    return "-".join(pair)


def naming_both(buf, other):
    """A regex for the message "buf overlaps other" (or the other way round)."""
    b, o = re.escape(buf), re.escape(other)
    return rf"(?<![\w\[])({b} overlaps {o}|{o} overlaps {b})(?![\w\[])"


def refusal_problem(backend, kernel, buf, other, dtype, shift):
    """Call `kernel` with `buf` and `other` laid `shift` bytes apart in one piece of memory
    (0: `buf` is `other` itself). None when it is refused as it should be, else what
    happened."""
    kw = CALLS[kernel](dtype)
    if shift == 0:
        put(kw, buf, get(kw, other))
        memory = get(kw, other)
    else:
        b, o, memory = overlapping(get(kw, buf), get(kw, other), shift)
        put(kw, buf, b)
        put(kw, other, o)
    before = memory.copy()
    try:
        getattr(backend, kernel)(**kw)
    except ValueError as err:
        if not re.search(naming_both(buf, other), str(err)):
            return f"refused, but with another message: {err}"
        if not np.array_equal(memory, before, equal_nan=True):
            return "refused, but after writing"
        return None
    return "not refused"


def _shifts(kernel, buf, other, dtype):
    kw = CALLS[kernel](dtype)
    shift = shift_for(get(kw, buf), get(kw, other))
    assert shift is not None, "the arrays are too small to overlap by one element"
    return shift, -shift


# ---------------------------------------------------------------------------------------
# Shifted views: always refused

@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
@pytest.mark.parametrize("kernel,buf,other", FLOAT_PAIRS, ids=map(_id, FLOAT_PAIRS))
def test_shifted_overlap_is_refused_naming_both(backend, kernel, buf, other, dtype):
    for shift in _shifts(kernel, buf, other, dtype):
        problem = refusal_problem(backend, kernel, buf, other, dtype, shift)
        assert problem is None, f"{buf} {shift:+d} bytes from {other}: {problem}"


# ---------------------------------------------------------------------------------------
# The very same array: in place where the kernel allows it, refused elsewhere

IN_PLACE = _pairs(in_place=True)
NOT_IN_PLACE = [p for p in _pairs(in_place=False) if _same_layout(*p)]


def _run(backend, kernel, kw):
    """What a call returned and every array argument after it, as plain copies."""
    result = getattr(backend, kernel)(**kw)
    returned = result if isinstance(result, tuple) else (result,)
    return ([np.array(r, copy=True) if isinstance(r, np.ndarray) else r for r in returned],
            {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)})


@pytest.mark.parametrize("kernel,buf,other", IN_PLACE, ids=map(_id, IN_PLACE))
def test_exact_in_place_gives_the_out_of_place_result(kernel, buf, other, dtype):
    for backend in BACKENDS.values():
        returned, after = _run(backend, kernel, CALLS[kernel](dtype))
        kw = CALLS[kernel](dtype)
        array = get(kw, other)
        put(kw, buf, array)
        result = getattr(backend, kernel)(**kw)
        in_place = result if isinstance(result, tuple) else (result,)
        assert any(r is array for r in in_place), f"{backend.__name__} did not return {buf}"
        name = backend.__name__
        for got, expected in zip(in_place, returned):
            if isinstance(expected, np.ndarray):
                np.testing.assert_array_equal(got, expected, err_msg=name)
            else:
                assert got == expected, (name, got, expected)
        np.testing.assert_array_equal(array, after[buf], err_msg=f"{name}: {buf} = {other}")


def test_softmax_cross_entropy_in_place_loss_is_right(backend, rng):
    # the case: grad=x returned 2.2583 where the loss is 2.3855
    x = rng.standard_normal((16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    expected = float(np.mean(np.log(np.exp(x.astype(np.float64)).sum(axis=1))
                             - x[np.arange(16), y]))
    loss, grad = backend.softmax_cross_entropy(x, y, grad=x)
    assert grad is x
    assert loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
@pytest.mark.parametrize("kernel,buf,other", NOT_IN_PLACE, ids=map(_id, NOT_IN_PLACE))
def test_exact_alias_is_refused_where_not_in_place(backend, kernel, buf, other, dtype):
    problem = refusal_problem(backend, kernel, buf, other, dtype, 0)
    assert problem is None, f"{buf} = {other}: {problem}"


# ---------------------------------------------------------------------------------------
# What may share memory

@pytest.mark.parametrize("shift", [4, -4, 8])
def test_an_input_is_compared_as_it_is_read(shift, rng):
    # a strided input is copied before anything is written: an output over its memory is
    # fine (both backends, as for the GEMM family); over a contiguous input it is refused
    memory = rng.standard_normal(64).astype(np.float32)
    x = memory[::2][:24].reshape(4, 6)                  # every other value
    out = memory[8 + shift:32 + shift].reshape(4, 6)
    assert np.shares_memory(x, out) and not x.flags.c_contiguous
    expected = np.maximum(x, 0)
    for backend in BACKENDS.values():
        saved = memory.copy()
        with pytest.raises(ValueError, match=naming_both("out", "x")):
            backend.relu_forward(memory[:24].reshape(4, 6), out)
        assert backend.relu_forward(x, out) is out
        np.testing.assert_array_equal(out, expected)
        memory[...] = saved
    mem64 = memory.astype(np.float64)
    a = mem64[::2][:24].reshape(4, 6)
    c = mem64[24:48].reshape(4, 6)
    assert np.shares_memory(a, c)
    b = rng.standard_normal((6, 6))
    expected = a @ b
    assert cnn_core.gemm(a, b, c) is c
    np.testing.assert_allclose(c, expected, rtol=1e-12)


def test_gradients_may_share_memory_parameters_may_not(backend):
    # two parameters with one gradient array (as fit allows): it is only read
    params = [np.ones((3, 4)), np.full((3, 4), 2.0)]
    grad = np.full((3, 4), 0.5)
    velocities = [np.zeros((3, 4)), np.zeros((3, 4))]
    assert backend.sgd_step(params, [grad, grad], velocities, 0.1, momentum=0.9) == -1
    np.testing.assert_allclose(params[0], 0.95)
    np.testing.assert_allclose(params[1], 1.95)
    ms, vs = [np.zeros((3, 4)), np.zeros((3, 4))], [np.zeros((3, 4)), np.zeros((3, 4))]
    assert backend.adam_step(params, [grad, grad], ms, vs, 1, 0.1, 0.9, 0.999, 1e-8) == -1
    # one parameter twice: its two updates would race (threads) or compound
    p = np.ones((3, 4))
    with pytest.raises(ValueError, match=naming_both("params[0]", "params[1]")):
        backend.sgd_step([p, p], [grad, grad], None, 0.1)
    np.testing.assert_array_equal(p, 1.0)


# ---------------------------------------------------------------------------------------
# Index arrays and masks, in a child process

def child():
    """Every refusal of INDEX_PAIRS on both backends and dtypes: a JSON list of problems."""
    problems = []
    for name, backend in BACKENDS.items():
        for kernel, buf, other in INDEX_PAIRS:
            for dt in DTYPES.values():
                for shift in _shifts(kernel, buf, other, dt):
                    problem = refusal_problem(backend, kernel, buf, other, dt, shift)
                    if problem:
                        problems.append(f"{name} {kernel} {buf} {shift:+d} bytes from {other} "
                                        f"({np.dtype(dt)}): {problem}")
    print(json.dumps(problems))
    return 0


def test_overlaps_with_indices_and_masks_are_refused(tmp_path):
    assert INDEX_PAIRS
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, HERE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else \
        f"exit status {proc.returncode}"
    assert proc.returncode == 0, f"the child: {how}\n{proc.stderr[-4000:]}"
    problems = json.loads(proc.stdout)
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    sys.exit(child())
