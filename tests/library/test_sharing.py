"""Sharing the CPU: the kernels' team (src/nn_team.h) after fork, with a parked worker, under
the thread-count variables, and from several callers.

A process that forks after a multi-threaded kernel must not hang in its child: the child has
the parent's memory but none of its worker threads. Every test that forks or starts a
process runs it under a timeout, so that a hang fails the test instead of blocking the
suite. Results are compared bit for bit: for a seed and a thread count, the answer does not
depend on which thread ran which part, nor on the process.

No timing assertions: how fast the kernels are beside other work is measured by
benchmarks/bench_share.py (docs/performance.md).
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

import cnn_core
import nnscratch as nn
from cnn_core._parallel import (_team_counts, _team_hold, _team_lates, _team_slow,
                                 _team_tune, _team_workers)
from conftest import randn, run_in_threads, workers_held

TIMEOUT = 120          # seconds for a child process: a hang fails the test, never blocks

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")


def run_python(code, *args, env=None, **kwargs):
    """Run `code` with `args` in a fresh interpreter, with a timeout; its completed
    process. (From outside the checkout by default: its source folder cnn_core/ would
    shadow the installed build.)"""
    kwargs.setdefault("cwd", tempfile.gettempdir())
    # unbuffered, as a terminal shows it: a forked child that prints and then leaves with
    # os._exit (no flush) is seen whatever the caller's environment says
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def wait_for(pid, seconds=TIMEOUT):
    """The exit status of child `pid`; the child killed and the test failed if it is still
    running after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child was still running after {seconds} s (a hang)")


# --- fork -----------------------------------------------------------------------------------

def test_the_issues_fork_example_finishes():
    # verbatim: a child forked after a two-thread product runs its next one
    proc = run_python('''
        import os, signal, numpy as np, cnn_core as C
        C.set_num_threads(2)
        a = np.ones((512, 512), np.float32); C.gemm(a, a)
        if os.fork() == 0:
            signal.alarm(20); C.gemm(a, a); print("child: done"); os._exit(0)
        os.wait()
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child: done"]


EVERY_KERNEL = '''
    import numpy as np, cnn_core as C

    def every_kernel():
        """Every threaded kernel on arrays large enough to be cut into parts: its outputs."""
        rng = np.random.default_rng(7)
        f = lambda *s: rng.standard_normal(s).astype(np.float32)
        out = {}
        a, b = f(300, 400), f(400, 500)
        out["gemm"] = C.gemm(a, b)
        out["gemm_halves"] = C.gemm(f(2, 3000), f(3000, 40))
        x, w1, w2 = f(256, 784), f(784, 256) * 0.05, f(256, 10) * 0.05
        h1, h2 = C.linear_chain_forward(x, [w1, w2], [f(256), f(10)], ["relu", None])
        out["chain"] = h2
        out["one_sample"] = C.linear_chain_forward(x[:1], [w1, w2], [None, None],
                                                   ["relu", None])[1]
        loss, g = C.softmax_cross_entropy(h2, rng.integers(0, 10, 256))
        out["sce"] = g
        gws, gbs = [np.zeros_like(w1), np.zeros_like(w2)], [np.zeros(256, np.float32),
                                                            np.zeros(10, np.float32)]
        gx, _ = C.linear_chain_backward(g, [x, h1], [w1, w2], gws, gbs, [h1, None])
        out["chain_back"] = np.concatenate([gx.ravel(), gws[0].ravel(), gbs[0]])
        gw, gb = np.zeros_like(w2), np.zeros(10, np.float32)
        gh = C.linear_backward(g, h1, w2, gw, gb)
        out["linear_back"] = np.concatenate([gh.ravel(), gw.ravel(), gb])
        big = f(400, 1000)
        out["relu"] = C.relu_forward(big)
        out["tanh"] = C.tanh_backward(big, big)
        out["softmax"] = C.softmax_forward(big)
        out["mse"] = C.mse(big, big * 0.5)[1]
        out["dropout"] = C.dropout_forward(big, (rng.random(big.shape) > 0.5).astype(np.uint8), 0.5)
        imgs, k = f(64, 3, 28, 28), f(16, 3, 3, 3)
        y = C.conv2d_forward(imgs, k, f(16), padding=1)
        out["conv"] = y
        gy = f(*y.shape)
        gk, gkb = np.zeros_like(k), np.zeros(16, np.float32)
        gi = C.conv2d_backward(gy, imgs, k, gk, gkb, padding=1)
        out["conv_back"] = np.concatenate([gi.ravel(), gk.ravel(), gkb])
        p, idx = C.maxpool2d_forward(y, 2)
        out["pool"] = p
        out["pool_back"] = C.maxpool2d_backward(p, idx, y.shape)
        bn = C.batchnorm_forward(y, np.ones(16, np.float32), np.zeros(16, np.float32),
                                 np.zeros(16, np.float32), np.ones(16, np.float32),
                                 training=True)
        out["bn"] = bn[0]
        out["bn_back"] = C.batchnorm_backward(gy, y, np.ones(16, np.float32), bn[1], bn[2],
                                              np.zeros(16, np.float32), np.zeros(16, np.float32))
        params, grads = [f(784, 256), f(256)], [f(784, 256), f(256)]
        C.sgd_step(params, grads, [np.zeros_like(p) for p in params], 0.1, momentum=0.9)
        out["sgd"] = params[0]
        data = f(5000, 784)
        out["take_rows"] = C.take_rows(data, rng.integers(0, 5000, 512))
        return {name: np.asarray(v) for name, v in out.items()}
'''


def test_a_forked_child_runs_every_kernel_with_the_parents_bits(tmp_path):
    # the parent runs every kernel on 2 threads (its team exists, its workers spin or
    # sleep), forks, and the child runs them all again: no hang, the same bits; then the
    # parent, its team unaffected, runs them once more
    proc = run_python(EVERY_KERNEL + f'''
    import os, signal, sys
    from cnn_core._parallel import _team_counts
    C.set_num_threads(2)
    first = every_kernel()
    pid = os.fork()
    if pid == 0:
        signal.alarm({TIMEOUT // 2})
        again = every_kernel()
        np.savez({str(tmp_path / "child.npz")!r}, **again)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    before = _team_counts()[0]
    third = every_kernel()
    np.savez({str(tmp_path / "parent.npz")!r}, **first)
    same = all(np.array_equal(first[k], third[k]) for k in first)
    print(status, same, _team_counts()[0] > before)
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True", "True"], proc.stdout
    with np.load(tmp_path / "parent.npz") as parent, np.load(tmp_path / "child.npz") as child:
        assert sorted(parent.files) == sorted(child.files) and len(parent.files) >= 20
        for name in parent.files:
            np.testing.assert_array_equal(child[name], parent[name], err_msg=name)


def test_fork_while_another_thread_is_inside_a_kernel():
    # one Python thread keeps the team busy (it owns it for most of the time); the main
    # thread forks meanwhile: each child finds a team of its own, free, and finishes
    a = np.random.default_rng(1).standard_normal((400, 400)).astype(np.float32)
    before = cnn_core.get_num_threads()
    cnn_core.set_num_threads(2)
    try:
        expected = cnn_core.gemm(a, a)
        stop = threading.Event()

        def busy():
            while not stop.is_set():
                cnn_core.gemm(a, a)
        worker = threading.Thread(target=busy)
        worker.start()
        try:
            for _ in range(5):
                time.sleep(0.02)
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        code = 0 if all(np.array_equal(cnn_core.gemm(a, a), expected)
                                        for _ in range(3)) else 2
                    finally:
                        os._exit(code)
                status = wait_for(pid, 60)
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        finally:
            stop.set()
            worker.join()
        np.testing.assert_array_equal(cnn_core.gemm(a, a), expected)
    finally:
        cnn_core.set_num_threads(before)


POOL = '''
    import multiprocessing as mp, sys
    import numpy as np
    import nnscratch as nn

    def mlp():
        return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))

    def data():
        rng = np.random.default_rng(3)
        return rng.random((1024, 784), dtype=np.float32), rng.integers(0, 10, 1024)

    def predict(state):
        nn.set_num_threads(2)
        model = mlp()
        model.load_state_dict(state)
        return model.predict(data()[0], batch_size=256)

    def fit(state):
        nn.set_num_threads(2)
        model = mlp()
        model.load_state_dict(state)
        X, y = data()
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=2, batch_size=64, seed=5, progress=False)
        return {k: np.array(v) for k, v in model.state_dict().items()}

    if __name__ == "__main__":
        method = sys.argv[1]
        nn.set_num_threads(2)
        nn.seed(0)
        model = mlp()
        X, y = data()
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=1, batch_size=64, seed=1, progress=False)     # the parent trained
        state = {k: np.array(v) for k, v in model.state_dict().items()}
        expected_pred, expected_fit = predict(state), fit(state)
        with mp.get_context(method).Pool(2) as pool:
            preds = pool.map(predict, [state] * 4)
            fits = pool.map(fit, [state] * 2)
        ok_pred = all(np.array_equal(p, expected_pred) for p in preds)
        ok_fit = all(sorted(f) == sorted(expected_fit) and
                     all(np.array_equal(f[k], expected_fit[k]) for k in f) for f in fits)
        changed = not np.array_equal(expected_fit["0.weight"], state["0.weight"])
        print(ok_pred, ok_fit, changed, len(preds), len(fits))
'''


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_pool_predicts_and_fits_after_the_parent_trained(tmp_path, method):
    # multiprocessing.Pool(2), the fork start method (Linux's default before Python 3.14)
    # and forkserver: the workers' predictions and fits equal the parent's, bit for bit
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(POOL))
    proc = subprocess.run([sys.executable, str(script), method], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True", "4", "2"], proc.stdout


# --- a worker that does not run -------------------------------------------------------------

@pytest.mark.parametrize("threads", [2, 3], indirect=True)
def test_parked_workers_are_never_waited_for(rng, threads):
    # held workers claim nothing, as workers the OS has parked (or that sleep) would not:
    # every kernel call still finishes -- the caller runs the workers' parts too -- with
    # the bits of a free team
    code = EVERY_KERNEL.replace("import numpy as np, cnn_core as C", "")
    scope = {"np": np, "C": cnn_core}
    exec(textwrap.dedent(code), scope)
    free = scope["every_kernel"]()
    with workers_held() as counts:
        held = scope["every_kernel"]()
        ran, taken_back = counts()
    assert ran == 0 and taken_back > 0, (ran, taken_back)
    for name in free:
        np.testing.assert_array_equal(held[name], free[name], err_msg=name)


def gemm_until_late(a, b, expected, lates):
    """Call gemm (checking each answer) until `lates` more jobs have been late -- at most
    500 calls; fails if they were not."""
    start = _team_lates()
    for _ in range(500):
        np.testing.assert_array_equal(cnn_core.gemm(a, b), expected)
        if _team_lates() - start >= lates:
            return
    pytest.fail(f"{_team_lates() - start} late jobs in 500 calls, wanted {lates}")


def product_time(a, b):
    """Seconds one gemm(a, b) takes here: ~0.7 ms natively for 300x300, ~150 ms emulated
    (qemu), where a fixed nap of a few ms would never outlast the caller's own share."""
    cnn_core.gemm(a, b)
    start = time.perf_counter()
    cnn_core.gemm(a, b)
    return time.perf_counter() - start


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_a_late_worker_sends_the_caller_alone_for_a_while(rng, threads):
    # a worker parked in the middle of a part it claimed (here: napping 20 ms, or four
    # products' time where that is longer) makes its caller wait; the caller counts the job
    # late and then runs its next jobs alone (here for half a second at least, so that a
    # slow build still sees it) with the same bits; then it offers the workers jobs again
    a, b = randn(rng, (300, 300), np.float32), randn(rng, (300, 300), np.float32)
    expected = cnn_core.gemm(a, b)
    took = product_time(a, b)
    _team_tune(solo_min=max(0.5, 10 * took), solo_max=max(1.0, 20 * took))
    _team_slow(max(0.02, 4 * took))
    try:
        gemm_until_late(a, b, expected, 1)
        ran = _team_counts()[0]
        for _ in range(3):
            np.testing.assert_array_equal(cnn_core.gemm(a, b), expected)
        assert _team_counts()[0] == ran         # no job offered: the caller ran them alone
    finally:
        _team_slow(0)
        _team_tune()
        _team_hold(True)                        # (ends the caller's time alone)
        _team_hold(False)
    ran = _team_counts()[0]
    for _ in range(2000):
        np.testing.assert_array_equal(cnn_core.gemm(a, b), expected)
        if _team_counts()[0] > ran:
            break
    assert _team_counts()[0] > ran              # the workers take parts again


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_no_time_alone_when_tuned_so(rng, threads):
    # bench_share's knob: with no time alone after a late job, the next job is offered to
    # the workers at once
    a, b = randn(rng, (300, 300), np.float32), randn(rng, (300, 300), np.float32)
    expected = cnn_core.gemm(a, b)
    took = product_time(a, b)
    _team_tune(solo_min=0, solo_max=0)
    _team_slow(max(0.005, 4 * took))
    try:
        gemm_until_late(a, b, expected, 3)
        _team_slow(0)
        posted = sum(_team_counts())
        np.testing.assert_array_equal(cnn_core.gemm(a, b), expected)
        # the next job was posted: its parts ran on a worker or were taken back (by the
        # default tuning, the caller would now be alone for 8 ms or more: neither count)
        assert sum(_team_counts()) > posted
    finally:
        _team_slow(0)
        _team_tune()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity is Linux-only")
def test_a_model_trains_with_more_threads_than_cpus_to_run_them(tmp_path):
    # a process that may run on one CPU asks for four threads: the workers share that CPU
    # with the caller, which never waits for them to be scheduled (whoever runs takes the
    # parts). The weights equal those of four threads on all the CPUs: the parts are fixed
    # by the thread count, not by who runs them
    code = '''
        import os, sys, json
        import numpy as np
        import nnscratch as nn
        if sys.argv[1] == "one-cpu":
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        nn.set_num_threads(4)
        nn.seed(0)
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        rng = np.random.default_rng(2)
        X, y = rng.random((2048, 784), dtype=np.float32), rng.integers(0, 10, 2048)
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), lr=0.1),
                  epochs=2, batch_size=128, seed=1, progress=False)
        print(json.dumps([float(np.float64(v.sum())) for v in model.state_dict().values()]),
              len(os.sched_getaffinity(0)))
    '''
    results = []
    for where in ("one-cpu", "any"):
        proc = run_python(code, where, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        sums, cpus = proc.stdout.rsplit(" ", 1)
        results.append((sums, int(cpus)))
    assert results[0][1] == 1
    assert results[0][0] == results[1][0]


# --- thread counts --------------------------------------------------------------------------

def _threads_in_child(env_changes, cpus=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NNSCRATCH_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_changes)
    pin = "" if cpus is None else (
        f"import os; os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:{cpus}]))\n")
    proc = run_python(pin + '''
import json, nnscratch as nn, cnn_core
print(json.dumps([cnn_core.get_num_threads(), nn.get_num_threads(),
                  nn.backend.thread_count_reason()]))
''', env=env)
    assert proc.returncode == 0, proc.stderr
    threads, same, why = json.loads(proc.stdout)
    assert threads == same
    return threads, why


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="affinity is Linux-only")
def test_the_default_thread_count_and_what_lowers_it():
    cpus = len(os.sched_getaffinity(0))
    assert _threads_in_child({}) == (cpus, f"{cpus} CPUs this process may run on")
    # the affinity the process was given (taskset, a container's CPU set) counts, not the
    # machine's CPUs -- here set before nnscratch is imported
    assert _threads_in_child({}, cpus=1) == (1, "1 CPUs this process may run on")
    for name in ("NNSCRATCH_NUM_THREADS", "OMP_NUM_THREADS"):
        threads, why = _threads_in_child({name: "1"})
        assert threads == 1 and why.startswith(f"{name}=1 ("), why
        # a larger value does not raise the count above the CPUs there are to run on
        threads, why = _threads_in_child({name: str(cpus + 3)})
        assert threads == cpus and f"{name}={cpus + 3} asks for no fewer" in why, why
        # OpenMP's list form "outer,inner": the first is the count
        assert _threads_in_child({name: "1,4"})[0] == 1
        # a value that is not a count is ignored, as OpenMP ignores it
        assert _threads_in_child({name: "many"})[0] == cpus
    # both set: nnscratch's own variable wins
    assert _threads_in_child({"NNSCRATCH_NUM_THREADS": str(cpus), "OMP_NUM_THREADS": "1"})[0] \
        == cpus
    assert _threads_in_child({"NNSCRATCH_NUM_THREADS": "1", "OMP_NUM_THREADS": str(cpus)})[0] \
        == 1


def test_set_num_threads_says_why():
    before = nn.get_num_threads()
    try:
        nn.set_num_threads(before + 1)
        assert nn.backend.thread_count_reason() == "set_num_threads"
    finally:
        nn.set_num_threads(before)
    assert nn.backend.thread_count_reason() != "set_num_threads"


@pytest.mark.parametrize("threads", [2, 3], indirect=True)
def test_callers_in_several_threads_share_the_team(rng, threads):
    # one caller owns the team at a time; the others run their parts themselves, in order:
    # every result has the bits of a lone caller's
    a = [rng.standard_normal((257, 300 + 40 * i)).astype(np.float32) for i in range(4)]
    b = [rng.standard_normal((x.shape[1], 190)).astype(np.float32) for x in a]
    expected = [cnn_core.gemm(x, y) for x, y in zip(a, b)]

    def work(i):
        for r in range(60):
            j = (i + r) % 4
            assert np.array_equal(cnn_core.gemm(a[j], b[j]), expected[j]), (i, r)
    run_in_threads(work, 4)
    assert _team_workers() >= threads - 1
    assert _team_counts()[0] > 0


# --- where a woken worker runs --------------------------------------------------------------

WAKE = '''
    import json, os, sys, time, numpy as np, cnn_core as C
    from cnn_core._parallel import _team_moves, _team_tune
    def mask(tid):
        return os.sched_getaffinity(tid)
    def last_cpu(tid):
        stat = open(f"/proc/{os.getpid()}/task/{tid}/stat").read()
        return int(stat.rsplit(")", 1)[1].split()[36])
    def wait_until(cond, seconds=5.0):
        end = time.monotonic() + seconds
        while not cond() and time.monotonic() < end:
            time.sleep(0.001)
        return cond()
    C.set_num_threads(2)
    a = np.arange(256 * 256, dtype=np.float32).reshape(256, 256) % 7
    expected = C.gemm(a, a)
    # the worker: the thread started last (NumPy's own threads are held to one)
    worker = max(int(t) for t in os.listdir(f"/proc/{os.getpid()}/task"))
'''


def wake_code(extra, affinity=False):
    """WAKE (with the process's affinity first set to the CPUs in argv[1], when `affinity`),
    then `extra`."""
    head = textwrap.dedent(WAKE)
    if affinity:
        head = head.replace("C.set_num_threads(2)\n", "os.sched_setaffinity(0, {int(c) for c "
                            "in sys.argv[1].split(',')})\nC.set_num_threads(2)\n")
    return head + textwrap.dedent(extra)


def _cpus_here():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity is Linux's")
def test_a_sleeping_worker_wakes_off_its_callers_cpu():
    # the caller on CPU c0, its worker asleep there too (pinned to c0 for a product, then
    # free again): the next job wakes it on the other CPU -- its affinity narrowed for the
    # wake-up only -- and it sets its affinity back as the user left it; with steering
    # tuned off (steer=-1), the affinity is never touched
    cpus = _cpus_here()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to run on (the CI machine has them)")
    proc = run_python(wake_code('''
        c0, c1 = [int(c) for c in sys.argv[1:3]]
        both = {c0, c1}
        os.sched_setaffinity(0, {c0})                 # the caller's thread only
        os.sched_setaffinity(worker, {c0})
        assert np.array_equal(C.gemm(a, a), expected)
        os.sched_setaffinity(worker, both)            # free again, still on c0
        out = []
        for steer in (True, False):
            # (calm=0: steered even right after a late job, which a noisy host may give)
            _team_tune(calm=0) if steer else _team_tune(move=0, steer=-1)
            time.sleep(0.05)                          # the worker asleep (after 50 us)
            before = _team_moves()[1]
            assert np.array_equal(C.gemm(a, a), expected)
            out.append(_team_moves()[1] - before)
            if steer:
                # woken where it was allowed to run then: c1 -- and then allowed c0 again
                out.append(wait_until(lambda: last_cpu(worker) == c1))
                out.append(wait_until(lambda: mask(worker) == both))
            os.sched_setaffinity(worker, {c0})        # back on the caller's CPU
            assert np.array_equal(C.gemm(a, a), expected)
            os.sched_setaffinity(worker, both)
        out.append(mask(worker) == both)
        print(json.dumps(out))
    '''), str(cpus[0]), str(cpus[1]), env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    steered, woke_on_c1, restored, not_steered, still_both = json.loads(proc.stdout)
    assert steered == 1 and woke_on_c1 and restored, proc.stdout
    assert not_steered == 0 and still_both, proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity is Linux's")
def test_no_steering_where_the_process_has_one_cpu_and_masks_are_kept():
    # a process allowed one CPU (taskset -c 0): two threads all the same, the worker never
    # steered nor moved, every thread's affinity what it was; a process allowed several: after
    # many sleeps and wake-ups, every thread's affinity is still the process's
    cpus = _cpus_here()
    if not cpus:
        pytest.skip("no CPU affinity here")
    code = wake_code('''
        _team_tune(calm=0)                            # (steered even after a late job)
        allowed = mask(0)
        for _ in range(40):
            time.sleep(0.002)                         # asleep between the products
            assert np.array_equal(C.gemm(a, a), expected)
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
        same = wait_until(lambda: all(mask(int(t)) == allowed for t in tasks))
        print(json.dumps([list(_team_moves()), same]))
    ''', affinity=True)
    one = run_python(code, str(cpus[0]), env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert one.returncode == 0, one.stderr
    (moves, steers), same = json.loads(one.stdout)
    assert (moves, steers) == (0, 0) and same, one.stdout
    if len(cpus) >= 2:
        many = run_python(code, ",".join(map(str, cpus)),
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        assert many.returncode == 0, many.stderr
        (moves, steers), same = json.loads(many.stdout)
        assert same and steers > 0, many.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity is Linux's")
def test_no_steering_within_a_second_of_a_late_job():
    # on a busy machine (workers run late) the kernel's own placement did better: a late job
    # suspends steering for `calm` seconds (1 by default), then it resumes
    if len(_cpus_here()) < 2:
        pytest.skip("needs two CPUs to run on (the CI machine has them)")
    proc = run_python(wake_code('''
        from cnn_core._parallel import _team_lates, _team_slow
        def steered_by_a_wake_up():
            time.sleep(0.05)                          # the worker asleep
            before = _team_moves()[1]
            assert np.array_equal(C.gemm(a, a), expected)
            return _team_moves()[1] - before
        _team_tune(solo_min=0, solo_max=0, calm=60)   # (never alone: jobs are still posted)
        _team_slow(0.05)                              # a worker napping in its part: late
        for _ in range(200):
            assert np.array_equal(C.gemm(a, a), expected)
            if _team_lates():
                break
        _team_slow(0)
        out = [_team_lates() > 0, steered_by_a_wake_up()]
        _team_tune(solo_min=0, solo_max=0, calm=0)
        out.append(steered_by_a_wake_up())
        print(json.dumps(out))
    '''), env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, 0, 1], proc.stdout
