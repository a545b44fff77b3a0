"""Shared fixtures for the kernel tests: dtypes, tolerances, random data, both backends.

The compiled kernels (`cnn_core`) are held against their NumPy twins
(`cnn_core.reference`); the twins are held against plain NumPy math and small values
worked out by hand, so that a wrong twin fails too.
"""
import builtins
import contextlib
import math
import sys
import threading

import numpy as np
import pytest

try:
    import cnn_core
except ImportError as exc:   # e.g. `python -m pytest` from the checkout: the source folder
    raise ImportError(       # cnn_core/ (no compiled modules) shadows the installed package
        f"cannot import the compiled cnn_core ({exc}). Install first (pip install -e '.[test]'"
        f" or pip install '.[test]') and run `pytest` (not `python -m pytest`, which puts the "
        f"uncompiled checkout first on sys.path).") from None
from cnn_core import reference

DTYPES = (np.float32, np.float64)

# Per dtype: elementwise kernels and losses. float32 carries ~7 digits, float64 ~16; the
# compiled loops may round differently from NumPy (FMA, another summation order), so the
# bounds leave a few units in the last place.
TOL = {
    np.float32: dict(rtol=2e-5, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-14),
}

# A dot product of K terms of size ~1 is ~sqrt(K) in size, and its rounding error grows
# with it: the GEMM atol is this base times sqrt(K).
GEMM_ATOL = {np.float32: 4e-6, np.float64: 1e-14}
GEMM_RTOL = {np.float32: 2e-5, np.float64: 1e-12}

BACKENDS = (cnn_core, reference)
BACKEND_IDS = ("cython", "numpy")


def tol(dtype):
    """The elementwise tolerances of `dtype` (a NumPy scalar type or a dtype)."""
    return TOL[np.dtype(dtype).type]


def gemm_tol(dtype, k):
    """Tolerances of a product with inner dimension k."""
    t = np.dtype(dtype).type
    return dict(rtol=GEMM_RTOL[t], atol=GEMM_ATOL[t] * math.sqrt(max(k, 1)))


def assert_close(actual, expected, dtype=None, *, k=None, **tolerances):
    """actual == expected within the tolerances of `dtype` (of `actual` when None).

    `k` switches to GEMM tolerances for a product with inner dimension k; keyword
    arguments override rtol/atol. The dtype and shape of arrays must match exactly.
    """
    if isinstance(actual, np.ndarray):
        dtype = actual.dtype if dtype is None else dtype
        assert isinstance(expected, np.ndarray), type(expected)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    t = gemm_tol(dtype, k) if k is not None else dict(tol(dtype))
    t.update(tolerances)
    np.testing.assert_allclose(actual, expected, **t)


def sce_grad_atol(logits):
    """Absolute tolerance of a softmax-cross-entropy gradient.

    The logits themselves are only known to within eps * |z|, and the gradient moves by up
    to that much times 1/N: an algorithm that is exact for slightly perturbed logits (such
    as exp(z - logsumexp(z))) differs from exp(z - max) / sum by that amount, which for
    logits near 1e4 is far above the float64 atol.
    """
    n = max(logits.shape[0], 1)
    eps = np.finfo(logits.dtype).eps
    scale = float(np.max(np.abs(logits))) if logits.size else 0.0
    return max(tol(logits.dtype)["atol"], 4 * eps * scale / n, 1e-7 if logits.dtype == np.float32 else 0)


def randn(rng, shape, dtype, scale=1.0):
    """Standard normal values of `dtype` (times `scale`)."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def strided(rng, shape, dtype, scale=1.0):
    """A view of `shape` that is not C-contiguous (every other row and column of a larger array)."""
    big = randn(rng, tuple(2 * s + 1 for s in shape), dtype, scale)
    view = big[tuple(slice(1, None, 2) for _ in shape)]
    assert view.shape == tuple(shape)
    if view.size > 1:
        assert not view.flags.c_contiguous
    return view


def nan_array(shape, dtype):
    """A buffer full of NaN: a kernel that reads it where it should only write fails."""
    return np.full(shape, np.nan, dtype=dtype)


@contextlib.contextmanager
def without_package(monkeypatch, package):
    """Within: `import package` (or a submodule) raises ImportError, as if not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    yield


def no_matplotlib(monkeypatch):
    return without_package(monkeypatch, "matplotlib")


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `nnscratch *argv`, in-process."""
    from nnscratch import cli

    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def use_isa_or_skip(isa):
    """Run the GEMM's `isa` micro-kernels (cnn_core._gemm._set_isa; None: back to the
    default) -- or skip the test where this CPU lacks them, or NN_ISA holds them back (a run
    with NN_ISA=generic tries, on x86, the portable kernels arm64 runs)."""
    from cnn_core import _gemm
    feature = {"avx2": "avx2", "avx512": "avx512f"}.get(isa)
    if feature is not None and not cnn_core.cpu_features().get(feature):
        pytest.skip(f"this CPU has no {isa}")
    try:
        _gemm._set_isa(isa)
    except ValueError as error:
        pytest.skip(f"{isa} is held back here ({error})")


@contextlib.contextmanager
def workers_held():
    """Within: the team's workers (src/nn_team.h) claim no part of any job -- as if the OS
    had parked every one of them -- so each caller runs every part itself. Yields a
    function giving (parts the workers ran, parts of the workers' blocks the callers ran)
    since the block began; the first must stay 0."""
    from cnn_core._parallel import _team_counts, _team_hold

    _team_hold(True)
    start = _team_counts()
    try:
        yield lambda: tuple(now - was for now, was in zip(_team_counts(), start))
    finally:
        _team_hold(False)


def run_in_threads(work, count):
    """Run work(0), ..., work(count - 1) in `count` threads released together (a barrier),
    and fail with every exception they raised."""
    barrier = threading.Barrier(count)
    errors = []

    def run(i):
        try:
            barrier.wait()
            work(i)
        except Exception as err:   # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def step_allocation_peaks(model, loss_fn, optimizer, X, y, rounds=3):
    """Bytes newly allocated at the peak of each of `rounds` steady-state training steps
    (two warm-up steps first), measured with tracemalloc."""
    import tracemalloc

    def step():
        loss_fn(model(X), y)
        model.zero_grad()
        model.backward(loss_fn.backward(), compute_grad_input=False)
        optimizer.step()

    step()
    step()
    tracemalloc.start()
    try:
        peaks = []
        for _ in range(rounds):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            step()
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    return peaks


@pytest.fixture
def rng():
    return np.random.default_rng(20240501)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, 2, 3, 5], ids=lambda n: f"threads{n}")
def threads(request):
    """The kernels' thread count for the test (restored after)."""
    import cnn_core

    before = cnn_core.get_num_threads()
    cnn_core.set_num_threads(request.param)
    yield request.param
    cnn_core.set_num_threads(before)


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def backend(request):
    return request.param


@pytest.fixture(params=["cython", "numpy"])
def nn_backend(request):
    """The library's backend for the test (``nnscratch.set_backend``), restored after."""
    import nnscratch as nn

    before = nn.get_backend()
    nn.set_backend(request.param)
    yield request.param
    nn.set_backend(before)


@contextlib.contextmanager
def textbook():
    """Inside the block, models run their layers' own code (the textbook path) on the
    compiled kernels: nnscratch.backend.set_fast_path(False)."""
    from nnscratch import backend

    previous = backend.set_fast_path(False)
    try:
        yield
    finally:
        backend.set_fast_path(previous)


def png_with_header(path, width, height, filter_type=4):
    """A PNG whose header declares width x height (grey), its rows of `filter_type`:
    mostly zeros, so that it compresses to almost nothing."""
    import struct
    import zlib

    from nnscratch._png import SIGNATURE

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = bytes([filter_type]) + bytes(width)
    data = zlib.compress(row * min(height, 64), 9)
    path.write_bytes(SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                                 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def resident():
    """(bytes resident now, a function giving the peak since) of this process: Linux's
    high-water mark, reset here; elsewhere the lifetime maximum (a weaker check)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

        def status(field):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        return status("VmRSS"), lambda: status("VmHWM")
    except OSError:
        import resource
        scale = 1 if sys.platform == "darwin" else 1024

        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return peak(), peak


# the pip name of a package whose import name differs
PIP_NAMES = {"PIL": "Pillow", "sklearn": "scikit-learn"}
# what installs a missing package (pip install <name>, unless said here): a test that needs a
# program rather than a Python package skips with "could not import '<program>'" too
INSTALL = {"chromium": "apt-get install chromium (Debian's package)"}


def pytest_terminal_summary(terminalreporter):
    """Tests that did not run for want of an optional package (PyTorch, the oracle of the
    comparison tests) are listed at the end, loudly, with the command that installs it:
    never a silent skip of what README says is tested."""
    missing = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "could not import" in reason:
            name = reason.split("'")[1] if "'" in reason else reason
            module = name.split(".")[0]
            missing.setdefault(PIP_NAMES.get(module, module), []).append(report.nodeid)
    for package, nodeids in sorted(missing.items()):
        terminalreporter.write_sep("=", f"NOT RUN: {len(nodeids)} tests (or files) need "
                                        f"{package}", red=True, bold=True)
        how = INSTALL.get(package, f"pip install {package}")
        terminalreporter.write_line(f"{package} is not installed, so these tests did not run "
                                    f"(they are not passes): {how}, then pytest")
        for nodeid in nodeids[:10]:
            terminalreporter.write_line(f"  {nodeid}")
        if len(nodeids) > 10:
            terminalreporter.write_line(f"  ... and {len(nodeids) - 10} more")
