"""ndarray subclasses whose properties lie, given to every public kernel, in a child process.

A kernel that took a size, a stride, a dtype or a flag from an argument's Python attributes
while it computed on the argument's memory read and wrote past the end of buffers: a
subclass saying ``shape = (64, 10**7)`` of a (64, 64) array made `gemm` segfault, and so
did `take_rows` and `sgd_step`. The kernels now use the memory's own description (a
subclass is used through a base-class view of it), and so do the NumPy twins.

For every array argument of every kernel -- entries of the list arguments (weights, xs,
params, ...) and the labels, masks, indices and rows included -- and on both backends, each
lie of `tricky_arrays.lies_about` is tried: lies about the valid array itself, and the valid
array's description told by a smaller, other-typed, strided or read-only one. The call must
give exactly what it gives when that argument is the plain array behind the lies: the same
values (bit for bit) in what it returns and in every array it writes, or the same TypeError
or ValueError (naming the argument); and where it returns a given buffer, it returns the
caller's own (lying) object. An object that is no array but whose __class__ says ndarray
(isinstance believes it) is a TypeError or ValueError naming the argument.

The calls run in a child process (this file as a script) so that a crash fails the tests of
that kernel instead of killing pytest; after a crash, or a call that hangs, the child is
started again at the next kernel.

    python tests/kernels/test_lying_arrays.py [first case]    # the child, by hand
"""
import json
import os
import re
import subprocess
import sys
import traceback

import numpy as np
import pytest

from tricky_arrays import (CALLS, IMPOSTOR, Impostor, array_arguments, get, lies_about, lying,
                           put)

HERE = os.path.abspath(__file__)
BACKENDS = ("cython", "numpy")
KERNELS = sorted(CALLS)
DTYPE = np.float32           # float32 calls: a float64 lie about one reads twice its bytes
CHILD_TIMEOUT = 300


def cases():
    """(backend, kernel, argument, what the lie is) for every case, grouped by kernel."""
    found = []
    for backend in BACKENDS:
        for kernel in KERNELS:
            kw = CALLS[kernel](DTYPE)
            for arg in array_arguments(kw):
                found += [(backend, kernel, arg, what) for what, _, _ in lies_about(get(kw, arg))]
                found.append((backend, kernel, arg, IMPOSTOR))
    return found


# ---------------------------------------------------------------------------------------
# The child

def _outcome(function, kw):
    """("raised", type name, message) or ("returned", result, {argument: contents after})."""
    try:
        result = function(**kw)
    except Exception as err:
        return ("raised", type(err).__name__, str(err))
    after = {name: np.array(get(kw, name), copy=True) for name in array_arguments(kw)}
    return ("returned", result, after)


def _same(a, b):
    """Bit for bit equal results (arrays compared as plain arrays)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a == b or (a != a and b != b)


def _brief(outcome):
    # (never a repr of what a call returned: a lying array's repr believes its lies)
    return "returned" if outcome[0] == "returned" else f"raised {outcome[1]}: {outcome[2]}"


def _returned_objects(result):
    return result if isinstance(result, tuple) else (result,)


def one_case(backend, kernel, arg, what):
    """None, or what went wrong (a string)."""
    make = CALLS[kernel]
    valid = get(make(DTYPE), arg)
    if what == IMPOSTOR:          # no memory to read: an error naming the argument
        kw = make(DTYPE)
        put(kw, arg, Impostor(valid))
        got = _outcome(getattr(backend, kernel), kw)
        named = rf"(?<![\w\[]){re.escape(arg)}(?![\w\[])"
        if got[0] != "raised" or got[1] not in ("TypeError", "ValueError") or \
                not re.search(named, got[2]):
            return f"{_brief(got)}, not a TypeError or ValueError naming {arg}"
        return None
    (real,) = [m for w, m, _ in lies_about(valid) if w == what]
    (lies,) = [t for w, _, t in lies_about(valid) if w == what]
    function = getattr(backend, kernel)
    plain_kw, lying_kw = make(DTYPE), make(DTYPE)
    plain = real()
    put(plain_kw, arg, plain)
    liar = lying(real(), lies)
    put(lying_kw, arg, liar)
    expected = _outcome(function, plain_kw)
    got = _outcome(function, lying_kw)
    if got[0] != expected[0] or (got[0] == "raised" and got[1:] != expected[1:]):
        return f"{_brief(got)}; with the plain array it {_brief(expected)}"
    if got[0] == "raised":
        return None
    if not _same(got[1], expected[1]):
        return "returned other values than with the plain array"
    for name in expected[2]:
        if not _same(got[2][name], expected[2][name]):
            return f"wrote other values into {name} than with the plain array"
    # a given buffer returned is the caller's own object
    for e, g in zip(_returned_objects(expected[1]), _returned_objects(got[1])):
        if e is plain and g is not liar:
            return f"returned a view of {arg}, not the caller's object"
    return None


def child(first):
    """Run cases()[first:], printing one JSON line per case."""
    import cnn_core
    from cnn_core import reference
    from test_fuzz import _limit_address_space

    backends = {"cython": cnn_core, "numpy": reference}
    cnn_core.set_num_threads(2)
    cnn_core.gemm(np.ones((300, 300), np.float32), np.ones((300, 300), np.float32))
    _limit_address_space()             # a lie may ask for terabytes: MemoryError, not swap
    all_cases = cases()
    for i in range(first, len(all_cases)):
        backend, kernel, arg, what = all_cases[i]
        print(json.dumps(dict(i=i, started=True)), flush=True)
        try:
            problem = one_case(backends[backend], kernel, arg, what)
        except Exception:                   # the harness itself
            problem = "the test harness failed:\n" + traceback.format_exc()
        print(json.dumps(dict(i=i, problem=problem)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------
# The tests

def _run_all(tmp_dir):
    """{case index: problem or None}, running the child again after a crash or a hang
    (from the next kernel on: the crashed kernel's remaining cases are not run)."""
    all_cases = cases()
    results, first = {}, 0
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    while first < len(all_cases):
        try:
            proc = subprocess.run([sys.executable, HERE, str(first)], cwd=tmp_dir, env=env,
                                  capture_output=True, text=True, timeout=CHILD_TIMEOUT)
            out, status = proc.stdout, proc.returncode
            how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            how += f"\n{proc.stderr[-3000:]}"
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            status, how = None, "hung (timed out)"
        started = None
        for line in out.splitlines():
            record = json.loads(line)
            if "problem" in record:
                results[record["i"]] = record["problem"]
                started = None
            else:
                started = record["i"]
        if started is None:
            if status == 0:
                break
            started = max(results, default=first - 1) + 1
            if started >= len(all_cases):
                break
        results[started] = f"the child {how}"
        group = all_cases[started][:2]
        first = started + 1
        while first < len(all_cases) and all_cases[first][:2] == group:
            first += 1
    return all_cases, results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return _run_all(tmp_path_factory.mktemp("lying"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_lying_subclasses_are_read_as_the_memory_they_view(outcomes, kernel, backend):
    all_cases, results = outcomes
    mine = [i for i, case in enumerate(all_cases) if case[:2] == (backend, kernel)]
    assert mine, f"no array argument of {kernel} was tried"
    problems = [f"{all_cases[i][2]} ({all_cases[i][3]}): {results[i]}" for i in mine
                if results.get(i, "not run (after a crash)")]
    if any(i not in results for i in mine):
        problems.append(f"{sum(i not in results for i in mine)} cases not run after a crash")
    assert not problems, "\n".join(problems)


def test_the_issues_example_raises_instead_of_crashing(tmp_path):
    # "Reliability, round two": this segfaulted
    script = (
        "import numpy as np, cnn_core\n"
        "class Lying(np.ndarray):\n"
        "    @property\n"
        "    def shape(self): return (64, 10**7)\n"
        "try:\n"
        "    cnn_core.gemm(np.ones((64, 64), np.float32).view(Lying),\n"
        "                  np.ones((10**7, 8), np.float32))\n"
        "except ValueError as err:\n"
        "    print('ValueError', err)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ValueError b:"), proc.stdout


if __name__ == "__main__":
    sys.exit(child(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
