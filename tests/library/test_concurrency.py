"""Concurrency: the kernels release the GIL, `set_num_threads` acts on a running process,
and models can be used (and trained) from several Python threads at once.

No timing assertions. That a kernel releases the GIL is shown by what another Python
thread sees while the kernel runs: its output buffer half written. A kernel that kept the
GIL for the whole call would only ever be seen before (all NaN) or after (all written).
That a new thread count takes effect is shown by the workers it starts (the team of
src/nn_team.h, counted in /proc/self/task, in a fresh child process) and by unchanged results.

Complements tests/kernels/test_kernel_threads.py (every threaded kernel at 1, 2, 3, 5 threads;
concurrent gemm/conv calls of different sizes) and tests/library/test_model.py (four threads
predicting with one model).
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cnn_core
import nnscratch as nn
from conftest import run_in_threads

HERE = os.path.abspath(__file__)


@pytest.fixture
def one_thread():
    before = nn.get_num_threads()
    nn.set_num_threads(1)
    yield
    nn.set_num_threads(before)


def _seen_half_written(start_call, first_written, last_written, attempts=5):
    """Run `start_call()` in a thread; meanwhile ask `first_written()` and `last_written()`
    (is an early / a late element of the output written yet?) from this thread. True once
    the output was seen with its first element written and its last one not yet."""
    for _ in range(attempts):
        done = threading.Event()
        started = threading.Event()
        errors = []

        def work():
            started.set()
            try:
                start_call()
            except Exception as err:        # reported below
                errors.append(err)
            done.set()

        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        seen = False
        while not done.is_set():
            if first_written() and not last_written():
                seen = True
        worker.join()
        assert not errors, errors
        if seen:
            return True
    return False


def test_gemm_releases_the_gil(one_thread):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1500, 1500))
    b = rng.standard_normal((1500, 1500))
    out = np.empty((1500, 1500))

    def call():
        out[...] = np.nan                    # beta = 0: out is only written, row block by block
        cnn_core.gemm(a, b, out)

    assert _seen_half_written(call, lambda: not np.isnan(out[0, 0]),
                              lambda: not np.isnan(out[-1, -1]))
    np.testing.assert_allclose(out, a @ b, rtol=1e-10, atol=1e-9)


def test_conv2d_releases_the_gil(one_thread):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8, 32, 32))
    w = rng.standard_normal((16, 8, 3, 3))
    out = np.empty((64, 16, 32, 32))

    def call():
        out[...] = np.nan                    # written one sample after the other
        cnn_core.conv2d_forward(x, w, None, out, padding=1)

    assert _seen_half_written(call, lambda: not np.isnan(out[0, 0, 0, 0]),
                              lambda: not np.isnan(out[-1, -1, -1, -1]))


def test_elementwise_kernels_release_the_gil(one_thread):
    x = np.random.default_rng(2).standard_normal(4_000_000)
    out = np.empty_like(x)

    def call():
        out[...] = np.nan
        cnn_core.tanh_forward(x, out)

    assert _seen_half_written(call, lambda: not np.isnan(out[0]), lambda: not np.isnan(out[-1]))


def test_optimizer_update_releases_the_gil(one_thread):
    n = 4_000_000
    param, grad = np.empty(n), np.ones(n)
    m, v = np.zeros(n), np.zeros(n)

    def call():
        param[...] = 0.0
        m[...] = v[...] = 0.0
        cnn_core.adam_update(param, grad, m, v, 1, 1.0, 0.9, 0.999, 1e-8)

    # Adam's first step moves every element by -lr: written means -1
    assert _seen_half_written(call, lambda: param[0] != 0, lambda: param[-1] != 0)
    np.testing.assert_allclose(param, -1.0)


def test_whole_model_step_releases_the_gil(one_thread):
    n = 2_000_000
    params = [np.empty(n), np.empty(n)]
    grads = [np.ones(n), np.ones(n)]

    def call():
        for p in params:
            p[...] = 0.0
        cnn_core.sgd_step(params, grads, None, 1.0, check_finite=True)

    # the first array is written (-lr) while the last one is not yet
    assert _seen_half_written(call, lambda: params[0][0] != 0, lambda: params[1][-1] != 0)
    np.testing.assert_allclose(params[1], -1.0)


# ---------------------------------------------------------------------------------------
# set_num_threads in a running process

def _tasks():
    return len(os.listdir("/proc/self/task"))


def child_thread_counts():
    """[(kernel threads, threads of this process after a big gemm)] for 1, 2, 1, 3."""
    import cnn_core as core

    a = np.ones((600, 600), np.float32)
    counts = [(0, _tasks())]
    for n in (1, 2, 1, 3):
        core.set_num_threads(n)
        assert core.get_num_threads() == n
        core.gemm(a, a)
        counts.append((n, _tasks()))
    return counts


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_set_num_threads_takes_effect_without_a_restart(tmp_path):
    env = dict(os.environ)      # (the child imports conftest, from tests/)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(HERE)),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, HERE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    start = counts[0][1]
    # one kernel thread: the calling thread alone, no worker; two: the team starts one
    # worker, at once, in the same process; back to one: the worker stays (asleep);
    # three: one more worker
    assert [c for _, c in counts] == [start, start, start + 1, start + 1, start + 2], counts


def _cnn(dtype=np.float32):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 64, dtype=dtype), nn.Tanh(),
                         nn.Linear(64, 10, dtype=dtype))


def test_predictions_do_not_depend_on_the_thread_count():
    # the forward kernels sum every output element in one fixed order, whatever the
    # number of threads (tests/kernels/test_kernel_threads.py checks the gemm alone)
    nn.seed(4)
    model = _cnn()
    X = np.random.default_rng(4).standard_normal((70, 3, 16, 16)).astype(np.float32)
    before = nn.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 3, 1):
            nn.set_num_threads(n)
            assert nn.get_num_threads() == n
            results[n] = model.predict(X, batch_size=32)
    finally:
        nn.set_num_threads(before)
    for n, result in results.items():
        np.testing.assert_array_equal(result, results[1], err_msg=f"{n} threads")


def test_two_threads_predict_while_the_thread_count_changes():
    nn.seed(5)
    model = _cnn()
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((40, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    expected = [model.predict(x, batch_size=16) for x in inputs]
    errors = []

    def predict(i):
        try:
            for _ in range(15):
                np.testing.assert_array_equal(model.predict(inputs[i], batch_size=16),
                                              expected[i])
        except Exception as err:           # reported in the main thread
            errors.append(err)

    before = nn.get_num_threads()
    workers = [threading.Thread(target=predict, args=(i,)) for i in range(2)]
    try:
        for t in workers:
            t.start()
        n = 0
        while any(t.is_alive() for t in workers):
            nn.set_num_threads(1 + n % 3)    # between (and during) the workers' calls
            n += 1
            workers[0].join(0.001)
    finally:
        for t in workers:
            t.join()
        nn.set_num_threads(before)
    assert not errors, errors
    assert model.training                  # predict restores the mode it found


def test_two_models_train_in_two_threads_as_they_would_one_after_the_other():
    # Separate models share nothing but the kernels (and their per-thread scratch
    # buffers): training them at the same time must give the very same weights as one
    # after the other. Initial weights are drawn first, in this thread, and fit's
    # shuffling has its own seed, so the library generator is not shared by the threads.
    def setup(seed):
        nn.seed(seed)
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(),
                              nn.Linear(32, 3))
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((400, 20)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 1)
        return model, nn.Adam(model.parameters(), lr=1e-2), X, y

    def train(job, results, i):
        model, optimizer, X, y = job
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=3,
                  batch_size=16, seed=i, progress=False)
        results[i] = [p.data.copy() for p in model.parameters()]

    sequential, concurrent = {}, {}
    for i in range(2):
        train(setup(10 + i), sequential, i)
    jobs = [setup(10 + i) for i in range(2)]
    run_in_threads(lambda i: train(jobs[i], concurrent, i), 2)
    for i in range(2):
        for a, b in zip(concurrent[i], sequential[i]):
            np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    print(json.dumps(child_thread_counts()))
