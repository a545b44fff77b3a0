"""The duo: the second half of k of a few-row product (one-sample inference) offered to the
team's workers (src/nn_team.h's split phase) while the caller sums the first -- "the
helper" below is whichever worker claims it.

Whichever thread runs that half -- a worker, or the caller when no worker has claimed it
(held, asleep, or the team owned by another caller) -- the answer has the same bits as on
one thread. The counters `duo_counts()` (jobs the helper ran, jobs their callers ran
themselves) show which path a call took, so each test can tell that it exercised the one
it is about.
"""
import os
import time

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from cnn_core._parallel import _team_counts, _team_hold, _team_tune
from conftest import assert_close, randn, run_in_threads

# few rows (the row kernel, m < 4) and enough multiply-adds for two threads: halves of k
SHAPES = [(1, 784, 256), (2, 331, 263), (3, 1009, 47), (1, 4099, 37)]


# (conftest's `threads` fixture: the kernels' thread count for the test, restored after)
two_or_three = pytest.mark.parametrize("threads", [2, 3], indirect=True)


@pytest.fixture(autouse=True)
def let_the_helper_go():
    # every call offers its half here: a caller that met a late worker (a slow build, a
    # busy machine) would otherwise run alone for a while, offering nothing, and the
    # counts below would come out short (tests/library/test_sharing.py tests that rule)
    _team_tune(solo_min=0, solo_max=0)
    yield
    _team_hold(False)
    _team_tune()


def duo_counts():
    """(offered halves a worker ran, offered halves their callers took back and ran
    themselves). A call that found the team owned by another caller offered nothing and is
    counted on neither side."""
    return _team_counts(offered=True)


def one_thread(fn):
    before = cnn_core.get_num_threads()
    cnn_core.set_num_threads(1)
    try:
        return fn()
    finally:
        cnn_core.set_num_threads(before)


def chain(rng, dtype, m, k, n):
    x = randn(rng, (m, k), dtype)
    weights = [randn(rng, (k, n), dtype, 0.1), randn(rng, (n, 29), dtype, 0.1)]
    biases = [randn(rng, (n,), dtype), None]
    return x, weights, biases, ("relu", None)


def taken_and_stolen_during(fn, calls):
    taken, stolen = duo_counts()
    for _ in range(calls):
        fn()
    now_taken, now_stolen = duo_counts()
    return now_taken - taken, now_stolen - stolen


def calls_until_the_helper_took(fn, jobs, seconds=20.0):
    """Call fn until the helper has run `jobs` halves (True), or `seconds` have passed
    (False). Not at once: another pool's threads (OpenBLAS's, after the NumPy twin's
    product) spin on the cores for about 0.1 s after each call, and while they do the
    helper hardly runs -- the callers then do their halves themselves."""
    start = duo_counts()[0]
    deadline = time.monotonic() + seconds
    while duo_counts()[0] - start < jobs:
        if time.monotonic() > deadline:
            return False
        for _ in range(50):
            fn()
    return True


@two_or_three
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_helper_takes_the_half_and_the_bits_are_one_threads(rng, dtype, threads,
                                                                 m, k, n):
    x, w, bias = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    expected = one_thread(lambda: cnn_core.linear_forward(x, w, bias, activation="relu"))
    assert_close(expected, reference.linear_forward(x, w, bias, activation="relu"), k=k)
    results = []
    assert calls_until_the_helper_took(
        lambda: results.append(cnn_core.linear_forward(x, w, bias, activation="relu")), 100)
    assert all(np.array_equal(r, expected) for r in results)


@two_or_three
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_a_held_helper_leaves_the_half_to_the_caller(rng, dtype, threads, m, k, n):
    args = chain(rng, dtype, m, k, n)
    expected = one_thread(lambda: cnn_core.linear_chain_forward(*args))
    _team_hold(True)
    results = []
    taken, stolen = taken_and_stolen_during(
        lambda: results.append(cnn_core.linear_chain_forward(*args)), 50)
    assert (taken, stolen) == (0, 50)       # one halved product per chain
    for got in results:
        assert len(got) == 2 and all(np.array_equal(g, e) for g, e in zip(got, expected))


@two_or_three
def test_the_chain_offers_each_halved_layer(rng, dtype, threads):
    # 784-256-128-10: only the first product is worth two threads (one job per call);
    # 1500-700-700-10: the first two are (two jobs per call)
    for sizes, jobs in [((784, 256, 128, 10), 1), ((1500, 700, 700, 10), 2)]:
        x = randn(rng, (1, sizes[0]), dtype)
        weights = [randn(rng, (a, b), dtype, 0.05) for a, b in zip(sizes, sizes[1:])]
        biases = [randn(rng, (b,), dtype) for b in sizes[1:]]
        acts = ("relu",) * (len(weights) - 1) + (None,)
        expected = one_thread(lambda: cnn_core.linear_chain_forward(x, weights, biases, acts))
        inp = x
        for w, b, act, e in zip(weights, biases, acts, expected):   # one layer at a time
            assert np.array_equal(cnn_core.linear_forward(inp, w, b, activation=act), e)
            inp = e
        got = []
        taken, stolen = taken_and_stolen_during(
            lambda: got.append(cnn_core.linear_chain_forward(x, weights, biases, acts)), 40)
        assert taken + stolen == 40 * jobs, sizes
        assert all(np.array_equal(g, e) for r in got for g, e in zip(r, expected))


@two_or_three
def test_an_asleep_helper_is_woken_or_its_half_done_here(rng, threads):
    # gaps of 2 ms (the helper sleeps after 50 us without a job): every call still returns
    # the right answer, each half run exactly once by one of the two threads
    x, w = randn(rng, (1, 784), np.float32), randn(rng, (784, 256), np.float32)
    expected = one_thread(lambda: cnn_core.linear_forward(x, w, None))

    def call():
        time.sleep(0.002)
        assert np.array_equal(cnn_core.linear_forward(x, w, None), expected)
    taken, stolen = taken_and_stolen_during(call, 30)
    assert taken + stolen == 30
    # and after the gaps the helper, woken, takes halves again (no wake-up lost)
    assert calls_until_the_helper_took(lambda: cnn_core.linear_forward(x, w, None), 10)


@two_or_three
def test_callers_in_several_threads_at_once(rng, dtype, threads):
    # one caller owns the duo at a time; the others run both halves themselves
    cases = [chain(rng, dtype, m, k, n) for m, k, n in SHAPES]
    expected = [one_thread(lambda args=args: cnn_core.linear_chain_forward(*args))
                for args in cases]
    taken, stolen = duo_counts()

    def work(i):
        for r in range(300):
            j = (i + r) % len(cases)
            got = cnn_core.linear_chain_forward(*cases[j])
            assert all(np.array_equal(g, e) for g, e in zip(got, expected[j])), (i, r)
    run_in_threads(work, 4)
    now_taken, now_stolen = duo_counts()
    # every call whose duo was free offered its half, and each half ran once: no more
    # jobs than calls were counted
    assert 0 < (now_taken - taken) + (now_stolen - stolen) <= 4 * 300


def test_one_thread_never_uses_the_duo(rng, dtype):
    x, w = randn(rng, (1, 784), dtype), randn(rng, (784, 256), dtype)
    assert taken_and_stolen_during(lambda: one_thread(lambda: cnn_core.linear_forward(x, w, None)),
                                   20) == (0, 0)


@two_or_three
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_a_helper_of_its_own(rng, threads):
    # the child has the parent's memory but not its helper thread: it starts its own (a
    # child that waited for the parent's would hang; the parent's test run times out)
    x, w = randn(rng, (1, 784), np.float32), randn(rng, (784, 256), np.float32)
    expected = one_thread(lambda: cnn_core.linear_forward(x, w, None))
    cnn_core.linear_forward(x, w, None)     # the parent's helper exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                            # (the child: no pytest machinery, just exit)
        code = 1
        try:
            results = []
            took = calls_until_the_helper_took(
                lambda: results.append(cnn_core.linear_forward(x, w, None)), 100)
            code = 0 if took and all(np.array_equal(r, expected) for r in results) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a one-sample product")
    answer = os.read(read, 1)
    os.close(read)
    assert answer == b"\x00" and os.WEXITSTATUS(status) == 0, (answer, status)


@two_or_three
def test_a_chain_whose_later_layer_is_refused_takes_its_offered_half_back(rng, threads):
    # the first layer's half is offered while the later layers are checked: a refused one
    # raises only after that half is taken back (run once), and the duo is free again
    x = randn(rng, (1, 784), np.float32)
    good = [randn(rng, (784, 256), np.float32), randn(rng, (256, 10), np.float32)]
    bad = [good[0], randn(rng, (255, 10), np.float32)]
    before = sum(duo_counts())
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        cnn_core.linear_chain_forward(x, bad, [None, None], ["relu", None])
    assert sum(duo_counts()) == before + 1
    expected = one_thread(lambda: cnn_core.linear_chain_forward(x, good, [None, None],
                                                                ["relu", None]))
    got = []
    assert calls_until_the_helper_took(lambda: got.append(cnn_core.linear_chain_forward(
        x, good, [None, None], ["relu", None])), 10)
    assert all(np.array_equal(g, e) for r in got for g, e in zip(r, expected))


@two_or_three
def test_a_chain_with_an_empty_later_layer_after_an_offered_half(rng, dtype, threads):
    x = randn(rng, (2, 700), dtype)
    weights = [randn(rng, (700, 300), dtype), np.zeros((300, 0), dtype)]
    biases = [randn(rng, (300,), dtype), np.zeros(0, dtype)]
    before = sum(duo_counts())
    h1, h2 = cnn_core.linear_chain_forward(x, weights, biases, ["relu", None])
    # the first layer's half offered, taken back unused when the empty layer turned up;
    # then the layers one by one, the first one's halves again on the duo
    assert sum(duo_counts()) == before + 2
    assert h2.shape == (2, 0)
    assert_close(h1, reference.linear_forward(x, weights[0], biases[0], activation="relu"),
                 k=700)


@two_or_three
def test_few_rows_through_halves_serial_and_slab_layers(rng, dtype, threads):
    # one sample: the first product in halves of k (the duo), the second on this thread,
    # the third (140000 outputs) in column slabs on the team; each layer with the
    # bits of its own linear_forward on one thread
    x = randn(rng, (1, 300), dtype)
    weights = [randn(rng, (300, 512), dtype, 0.1), randn(rng, (512, 2), dtype, 0.1),
               randn(rng, (2, 140_000), dtype)]
    biases = [randn(rng, (512,), dtype), None, randn(rng, (140_000,), dtype)]
    acts = ["relu", "relu", None]
    expected, inp = [], x
    for w, b, act in zip(weights, biases, acts):
        expected.append(one_thread(lambda: cnn_core.linear_forward(inp, w, b, activation=act)))
        assert_close(expected[-1], reference.linear_forward(inp, w, b, activation=act),
                     k=w.shape[0])
        inp = expected[-1]
    taken, stolen = taken_and_stolen_during(
        lambda: [np.testing.assert_array_equal(g, e) for g, e in zip(
            cnn_core.linear_chain_forward(x, weights, biases, acts), expected)], 20)
    assert taken + stolen == 20


class _CallsAKernelWhenAsked(np.ndarray):
    """An array whose dtype, when asked, first runs a one-sample product on this thread:
    Python code that runs while linear_chain_forward checks its later layers."""

    @property
    def dtype(self):
        time.sleep(0.001)              # (the helper has written its half by now)
        x, w = _CallsAKernelWhenAsked.inner
        cnn_core.linear_forward(x, w, None)
        return super().dtype


@two_or_three
def test_a_kernel_called_while_the_first_half_is_offered_leaves_it_alone(rng, threads):
    # the later layer's checks run Python code (a subclass's property, not C-contiguous:
    # the copying path) that calls a kernel on this thread with a larger halved product:
    # the offered half's partial products are out of its reach (a segfault or wrong bits
    # when they shared its scratch buffer)
    x = randn(rng, (1, 784), np.float32)
    w0, w1 = randn(rng, (784, 256), np.float32), randn(rng, (256, 10), np.float32)
    expected = one_thread(lambda: cnn_core.linear_chain_forward(x, [w0, w1], [None, None],
                                                                [None, None]))
    _CallsAKernelWhenAsked.inner = (randn(rng, (1, 300), np.float32),
                                    randn(rng, (300, 512), np.float32))
    sneaky = np.asfortranarray(w1).view(_CallsAKernelWhenAsked)
    for _ in range(20):
        got = cnn_core.linear_chain_forward(x, [w0, sneaky], [None, None], [None, None])
        assert all(np.array_equal(g, e) for g, e in zip(got, expected))
