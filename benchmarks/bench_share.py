"""Speed on a shared CPU: an MLP epoch of nnscratch and of PyTorch, alone and beside other work.

    python benchmarks/bench_share.py [--trials 10] [--neighbour-trials 5] [--epochs 5]
                                     [--threads 2] [--only nnscratch]

The model is README's MLP (784-256-128-10, batch 128, SGD) on 12,800 images; an "epoch" is
one pass over them. Each situation runs the contender in a fresh process and reports its
median epoch time over its idle median (1.00 = unaffected); every situation but the first
and the last runs several trials and reports the worst (each trial ratio is listed below the
table):

  alone             the contender by itself (the idle figure, seconds)
  busy loop         beside one process spinning in `while True: pass` (trials)
  numpy matmul      beside a NumPy (OpenBLAS) float32 matmul loop on 2 threads (trials)
  torch training    beside a PyTorch process training the same MLP, 2 threads (trials)
  two at once       two processes of the contender at once, --threads each (trials)
  two at once, 1t   the same with 1 thread each (trials)
  after fork        the contender trains in its parent, then in a forked child: the
                    child's epochs (a hang is reported, after a 60 s timeout)

Every neighbour starts before the contender and runs until it ends. Nothing here is a
pass/fail test: the figures go to docs/performance.md.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
SIZES = (784, 256, 128, 10)
N, BATCH, LR = 12_800, 128, 0.05


# --- the contenders (run in a child process: python bench_share.py --worker NAME) --------

def _data():
    import numpy as np
    rng = np.random.default_rng(0)
    X = rng.random((N, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], N)
    return X, y


def _nnscratch_epochs(threads, epochs, fork):
    import nnscratch as nn
    nn.set_num_threads(threads)
    nn.seed(0)
    X, y = _data()
    layers = []
    for a, b in zip(SIZES, SIZES[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    loss_fn, opt = nn.CrossEntropyLoss(), nn.SGD(model.parameters(), lr=LR)

    def epoch():
        start = time.perf_counter()
        model.fit(X, y, loss=loss_fn, optimizer=opt, epochs=1, batch_size=BATCH,
                  shuffle=False, progress=False, check_finite=False)
        return time.perf_counter() - start
    return _run_epochs(epoch, epochs, fork)


def _torch_epochs(threads, epochs, fork):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X, y = _data()
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    layers = []
    for a, b in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    loss_fn, opt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=LR)

    def epoch():
        start = time.perf_counter()
        for i in range(0, N, BATCH):
            opt.zero_grad()
            loss_fn(model(X[i:i + BATCH]), y[i:i + BATCH]).backward()
            opt.step()
        return time.perf_counter() - start
    return _run_epochs(epoch, epochs, fork)


def _run_epochs(epoch, epochs, fork):
    epoch()                                            # warm-up
    times = [epoch() for _ in range(epochs)]
    if not fork:
        return times
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child trains on
        os.close(read)
        child = [epoch() for _ in range(epochs)]
        os.write(write, json.dumps(child).encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            data = os.read(read, 1 << 16)
            return json.loads(data) if data else None
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None                                        # the child hung


def worker(name, threads, epochs, fork):
    run = {"nnscratch": _nnscratch_epochs, "torch": _torch_epochs}[name]
    print(json.dumps(run(threads, epochs, fork)), flush=True)


# --- neighbours -----------------------------------------------------------------------

NEIGHBOURS = {
    "busy loop": [sys.executable, "-c", "while True: pass"],
    "numpy matmul": [sys.executable, "-c",
                     "import numpy as np\n"
                     "a = np.ones((1024, 1024), np.float32)\n"
                     "while True: a @ a"],
    "torch training": [sys.executable, HERE, "--worker", "torch", "--threads", "2",
                       "--epochs", "100000"],
}
NEIGHBOUR_ENV = {"numpy matmul": {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}}


def _start(cmd, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            text=True)


def _contender(name, threads, epochs, fork=False):
    return _start([sys.executable, HERE, "--worker", name, "--threads", str(threads),
                   "--epochs", str(epochs)] + (["--fork"] if fork else []))


def _result(proc, timeout=600):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if proc.returncode == 0 and lines else None


def _stop(proc):
    proc.kill()
    proc.wait()


def situations(name, threads, epochs, trials, neighbour_trials):
    """{situation: (median seconds of the worst trial, ratio over alone, trial ratios)}."""
    def median_of(times):
        return statistics.median(times) if times else None

    alone = [median_of(_result(_contender(name, threads, epochs))) for _ in range(3)]
    idle = statistics.median(alone)
    table = {"alone": (idle, 1.0, [])}
    for label, cmd in NEIGHBOURS.items():
        if label == "torch training" and not _have_torch():
            continue
        ratios, worst = [], None
        for _ in range(neighbour_trials):
            neighbour = _start(cmd, NEIGHBOUR_ENV.get(label))
            time.sleep(1.0 if label == "torch training" else 0.3)   # let it get going
            try:
                t = median_of(_result(_contender(name, threads, epochs)))
            finally:
                _stop(neighbour)
            ratios.append(t / idle if t else float("inf"))
            worst = t if worst is None or t is None or (worst and t > worst) else worst
            time.sleep(0.3)
        table[label] = (worst, max(ratios), ratios)
    for label, per in (("two at once", threads), ("two at once, 1t", 1)):
        base = idle if per == threads else statistics.median(
            [median_of(_result(_contender(name, 1, epochs))) for _ in range(3)])
        ratios, worst = [], None
        for _ in range(trials):
            procs = [_contender(name, per, epochs) for _ in range(2)]
            results = [median_of(_result(p)) for p in procs]
            for t in results:
                ratios.append(t / base if t else float("inf"))
                worst = t if worst is None or t is None or (worst and t > worst) else worst
            time.sleep(0.2)
        table[label] = (worst, max(ratios), ratios)
    child = _result(_contender(name, threads, epochs, fork=True), timeout=120)
    t = median_of(child) if child else None
    table["after fork"] = (t, t / idle if t else None, [])
    return table


def _have_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--neighbour-trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["nnscratch", "torch"])
    parser.add_argument("--worker", choices=["nnscratch", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--fork", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads, args.epochs, args.fork)

    names = [args.only] if args.only else ["nnscratch"] + (["torch"] if _have_torch() else [])
    tables = {name: situations(name, args.threads, args.epochs, args.trials,
                               args.neighbour_trials) for name in names}
    print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, {N} images; {args.threads} "
          f"threads; {os.cpu_count()} CPUs; median of {args.epochs} epochs; "
          f"{args.neighbour_trials} trials beside each neighbour, {args.trials} of two at "
          f"once (worst shown)")
    header = f"{'situation':<18}" + "".join(f"{n:>26}" for n in names)
    print(header)
    print("-" * len(header))
    for label in tables[names[0]]:
        cells = []
        for name in names:
            t, ratio, _ = tables[name].get(label, (None, None, None))
            if label == "alone":
                cells.append(f"{t:.3f} s")
            elif t is None:
                cells.append("hang / failed")
            else:
                cells.append(f"{ratio:.2f}x ({t:.3f} s)")
        print(f"{label:<18}" + "".join(f"{c:>26}" for c in cells))
    for name in names:
        for label, (_, _, ratios) in tables[name].items():
            if ratios:
                print(f"{name} {label}: trial ratios " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    sys.exit(main())
