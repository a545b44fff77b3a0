"""Speed of nnscratch against its NumPy reference backend and PyTorch, measured in one run.

    nnscratch bench [--quick] [--threads N] [--only gemm|mlp|cnn|resnet|memory|all]
    python benchmarks/bench_all.py ...        (the same, and --only inference)

The one-sample inference row also runs the MLP in ONNX Runtime, where onnx and onnxruntime
are installed: exported by ``nnscratch.onnx`` (in memory), on the same thread count
(``intra_op_num_threads``; one inter-op thread), CPUExecutionProvider. Where either is
missing, the table has no onnxruntime column and its header line says why.

Every contender is checked for correctness before it is timed, warmed up, and timed in
turns with the others (interleaved rounds, medians), with a pause between contenders: on
2 cores OpenBLAS's and PyTorch's worker threads keep spinning for ~0.1 s after a call, and
without the pause the figures measure the fight between thread pools, not the kernels.
Ratios are "how many times faster nnscratch is" (> 1: nnscratch wins).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import numpy as np

PAUSE = 0.15


def _try_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _try_onnxruntime():
    """``(onnxruntime, None)``, or ``(None, why)`` where onnxruntime or onnx (which
    nnscratch.onnx exports with) is not importable."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        return None, f"{exc.name or exc} not installed"
    return onnxruntime, None


def machine_line():
    """CPU model, cores, Python: the machine a table was measured on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def measured_peak(threads):
    """float32 FMA GFLOP/s of `threads` threads (best of five short runs, cnn_core._gemm)."""
    from .backend import cnn_core_module

    gemm_module = cnn_core_module()._gemm
    return max(gemm_module._fma_peak(threads=threads) for _ in range(5))


def time_call(fn, *, min_time=0.05, max_reps=100_000):
    """Mean seconds per call of fn(), repeated for at least min_time."""
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def interleaved(contenders, *, rounds=5, min_time=0.05):
    """{name: median seconds per call}: each contender warmed, then `rounds` turns each."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
        time.sleep(PAUSE)
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(time_call(fn, min_time=min_time))
            time.sleep(PAUSE)
    return {name: statistics.median(s) for name, s in samples.items()}


def format_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def _ratio(ours, theirs):
    return f"{theirs / ours:.2f}x" if ours > 0 else "-"


# --- GEMM ---------------------------------------------------------------------------------

GEMM_SHAPES = [  # label, m, k, n, trans_a, trans_b
    ("GEMM 1024^3", 1024, 1024, 1024, False, False),
    ("GEMM 128x784 @ 784x256 (fwd)", 128, 784, 256, False, False),
    ("GEMM 784x128 @ 128x256 (dW)", 784, 128, 256, True, False),
    ("GEMM 128x256 @ 256x784 (dX)", 128, 256, 784, False, True),
]


def bench_gemm(rounds, torch, dtype=np.float32):
    """Rows: label, nnscratch, numpy, torch (seconds), flops."""
    from .backend import cnn_core_module

    core = cnn_core_module()
    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n, ta, tb in GEMM_SHAPES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        A, B = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((m, n), dtype)
        expect = A.astype(np.float64) @ B.astype(np.float64)
        got = core.gemm(a, b, out, trans_a=ta, trans_b=tb)
        err = np.max(np.abs(got - expect)) / max(1.0, np.max(np.abs(expect)))
        if not err < 1e-4 * np.sqrt(k):
            raise RuntimeError(f"{label}: nnscratch GEMM is wrong (relative error {err:.1e})")
        contenders = {"nnscratch": lambda: core.gemm(a, b, out, trans_a=ta, trans_b=tb),
                      "numpy": lambda: np.matmul(A, B, out=out)}
        if torch is not None:
            TA, TB, TO = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            TA, TB = (TA.T if ta else TA), (TB.T if tb else TB)
            contenders["torch"] = lambda: torch.matmul(TA, TB, out=TO)
        secs = interleaved(contenders, rounds=rounds)
        rows.append((label, secs, 2.0 * m * n * k))
    return rows


# --- MLP and CNN epochs ---------------------------------------------------------------------

def _mlp(sizes, dtype=np.float32):
    """``nnscratch.models.mlp`` with layer sizes [in, hidden..., classes]."""
    from . import models

    return models.mlp(sizes[0], sizes[1:-1], sizes[-1], dtype=dtype)


def _lenet():
    """``nnscratch.models.lenet``: conv5x5 16, pool, conv5x5 32, pool, fc128, fc10."""
    from . import models

    return models.lenet()


def _torch_twin(torch, model):
    """The same network in PyTorch, with the same initial weights."""
    layers = []
    import nnscratch as nn

    for layer in model:
        if isinstance(layer, nn.Linear):
            lin = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.weight.data.T.copy()))
                lin.bias.copy_(torch.from_numpy(layer.bias.data))  # type: ignore[union-attr]
            layers.append(lin)
        elif isinstance(layer, nn.ReLU):
            layers.append(torch.nn.ReLU())
        elif isinstance(layer, nn.Flatten):
            layers.append(torch.nn.Flatten())
        elif isinstance(layer, nn.MaxPool2d):
            layers.append(torch.nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, nn.Conv2d):
            conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                   stride=layer.stride, padding=layer.padding,
                                   bias=layer.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.weight.data))
                if layer.bias is not None:
                    conv.bias.copy_(torch.from_numpy(layer.bias.data))
            layers.append(conv)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            kind = torch.nn.BatchNorm2d if isinstance(layer, nn.BatchNorm2d) else \
                torch.nn.BatchNorm1d
            norm = kind(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            with torch.no_grad():
                norm.weight.copy_(torch.from_numpy(layer.weight.data))
                norm.bias.copy_(torch.from_numpy(layer.bias.data))
                norm.running_mean.copy_(torch.from_numpy(layer.running_mean))
                norm.running_var.copy_(torch.from_numpy(layer.running_var))
            layers.append(norm)
        elif isinstance(layer, nn.Dropout):
            layers.append(torch.nn.Dropout(layer.p))
        else:
            raise TypeError(f"no torch twin for {type(layer).__name__}")
    return torch.nn.Sequential(*layers)


def _epoch_runner(model, X, y, batch_size, lr, backend_name, **sgd):
    import nnscratch as nn

    loss = nn.CrossEntropyLoss()
    opt = nn.SGD(model.parameters(), lr=lr, momentum=0.9, **sgd)

    def run():
        with nn.backend.using(backend_name):
            model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=batch_size,
                      shuffle=True, seed=0, progress=False)
    return run


def _torch_epoch_runner(torch, tmodel, X, y, batch_size, lr, **sgd):
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(tmodel.parameters(), lr=lr, momentum=0.9, **sgd)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def run():
        perm = torch.randperm(len(tx), generator=gen)
        for start in range(0, len(tx), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(tmodel(tx[idx]), ty[idx])
            loss.backward()
            opt.step()
    return run


def _onnxruntime_session(onnxruntime, model, input_shape, threads):
    """An ONNX Runtime session running `model` (exported by nnscratch.onnx, in memory) on
    `threads` intra-op threads and one inter-op thread, on the CPU."""
    from . import onnx as nn_onnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    proto = nn_onnx.to_model_proto(model, input_shape)
    return onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def bench_training(rounds, torch, quick, which, threads=1, onnxruntime=None):
    """Rows for the MLP (and CNN) epochs and one-sample inference: label, secs, None.
    `which`: "mlp", "cnn", "resnet", "inference" (that row alone) or "all"; `onnxruntime` (the module,
    or None) adds its contender to the inference row, on `threads` threads."""
    import nnscratch as nn

    rng = np.random.default_rng(0)
    n_full = 60_000
    rows = []
    configs = []
    if which in ("mlp", "all"):
        configs += [("MLP 784-256-128-10, batch 128, epoch", [784, 256, 128, 10], 128, True),
                    ("MLP 784-1024-1024-10, batch 256, epoch", [784, 1024, 1024, 10], 256,
                     False),
                    ("MLP 784-256-128-10, batch 16, epoch", [784, 256, 128, 10], 16, True)]
    for label, sizes, batch, use_numpy in configs:
        n = 6_000 if quick else n_full
        X = rng.random((n, 784), dtype=np.float32)
        y = rng.integers(0, 10, n)
        nn.seed(0)
        model = _mlp(sizes)
        contenders = {"nnscratch": _epoch_runner(model, X, y, batch, 0.01, "cython")}
        if use_numpy:
            nn.seed(0)
            contenders["numpy"] = _epoch_runner(_mlp(sizes), X, y, batch, 0.01, "numpy")
        if torch is not None:
            contenders["torch"] = _torch_epoch_runner(torch, _torch_twin(torch, _mlp(sizes)), X,
                                                      y, batch, 0.01)
        secs = interleaved(contenders, rounds=max(1, rounds // 2), min_time=0.0)
        rows.append((label + (f" (x{n_full // n} of {n})" if n != n_full else ""),
                     {k: v * n_full / n for k, v in secs.items()}, None))
    if which in ("mlp", "inference", "all"):
        nn.seed(0)
        model = _mlp([784, 256, 128, 10])
        model.eval()
        x1 = rng.random((1, 784), dtype=np.float32)
        contenders = {"nnscratch": lambda: model(x1)}
        nn.seed(0)
        ref_model = _mlp([784, 256, 128, 10])    # the same weights, for the NumPy backend
        ref_model.eval()

        def numpy_infer():
            with nn.backend.using("numpy"):
                return ref_model(x1)
        contenders["numpy"] = numpy_infer
        if torch is not None:
            tmodel = _torch_twin(torch, model)
            tx1 = torch.from_numpy(x1)

            def torch_infer():
                with torch.no_grad():
                    return tmodel(tx1)
            contenders["torch"] = torch_infer
        if onnxruntime is not None:
            session = _onnxruntime_session(onnxruntime, model, x1.shape[1:], threads)
            feed = {session.get_inputs()[0].name: x1}
            contenders["onnxruntime"] = lambda: session.run(None, feed)[0]
        expected = np.array(model(x1))
        for name, fn in contenders.items():
            if not np.allclose(np.asarray(fn()), expected, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"one-sample inference: {name} disagrees with nnscratch")
        rows.append(("MLP 784-256-128-10, one-sample inference",
                     interleaved(contenders, rounds=rounds, min_time=0.05), None))
    if which in ("cnn", "all") and hasattr(nn, "Conv2d"):
        n = 1_280 if quick else 6_000
        n_numpy = 256 if quick else 1_024      # the NumPy twins are slow: a smaller slice
        X = rng.random((n, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, n)

        from . import models

        for label, build in [
                ("LeNet CNN (conv5x5 16, pool, conv5x5 32, pool, fc128, fc10)", _lenet),
                ("`train --model cnn` CNN (2 x conv3x3+BN+ReLU+pool, fc128, dropout)",
                 models.cnn)]:
            nn.seed(0)
            contenders = {"nnscratch": _epoch_runner(build(), X, y, 128, 0.01, "cython"),
                          "numpy": _epoch_runner(build(), X[:n_numpy], y[:n_numpy], 128, 0.01,
                                                 "numpy")}
            samples_per_epoch = {"nnscratch": n, "numpy": n_numpy}
            if torch is not None:
                contenders["torch"] = _torch_epoch_runner(torch, _torch_twin(torch, build()),
                                                          X, y, 128, 0.01)
                samples_per_epoch["torch"] = n
            secs = interleaved(contenders, rounds=max(1, rounds // 2), min_time=0.0)
            rows.append((f"{label}, batch 128, epoch (from {n} images; numpy from {n_numpy})",
                         {k: v * n_full / samples_per_epoch[k] for k, v in secs.items()}, None))
    if which in ("resnet", "all"):
        rows.append(_bench_resnet(rounds, torch, quick, rng, n_full))
    return rows


def _bench_resnet(rounds, torch, quick, rng, n_full):
    """ResNet-20 (models.resnet) with issue 20's optimizer (SGD, Nesterov momentum 0.9,
    weight decay 5e-4), batch 128, one epoch scaled from a slice of images; PyTorch's the
    same network with the same weights (interop.to_torch)."""
    import nnscratch as nn

    from . import models

    n = 512 if quick else 2_560
    n_numpy = 128 if quick else 256
    X = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n)
    sgd = dict(nesterov=True, weight_decay=5e-4)
    nn.seed(0)
    contenders = {"nnscratch": _epoch_runner(models.resnet(20), X, y, 128, 0.05, "cython",
                                             **sgd),
                  "numpy": _epoch_runner(models.resnet(20), X[:n_numpy], y[:n_numpy], 128,
                                         0.05, "numpy", **sgd)}
    samples_per_epoch = {"nnscratch": n, "numpy": n_numpy}
    if torch is not None:
        from .interop import to_torch

        nn.seed(0)
        contenders["torch"] = _torch_epoch_runner(torch, to_torch(models.resnet(20)), X, y,
                                                  128, 0.05, **sgd)
        samples_per_epoch["torch"] = n
    # all the rounds, not the three of the other epochs' rows: with three, four runs of this
    # row on the noisy host gave 0.75, 0.85, 0.89 and 1.28 times PyTorch's time
    secs = interleaved(contenders, rounds=rounds, min_time=0.0)
    return (f"ResNet-20 (272,186 parameters), SGD Nesterov, batch 128, epoch (from {n} "
            f"images; numpy from {n_numpy})",
            {k: v * n_full / samples_per_epoch[k] for k, v in secs.items()}, None)


# --- thread scaling ----------------------------------------------------------------------

def bench_scaling(rounds, torch, quick, which, threads):
    """Rows "1 -> `threads` threads": each contender's time on 1 thread / on `threads`
    (the speed-up; unit "scaling"). GEMM 1024^3 and the LeNet CNN epoch."""
    import nnscratch as nn
    from .backend import cnn_core_module

    if threads < 2:
        return []
    core = cnn_core_module()
    rng = np.random.default_rng(0)
    jobs = []
    if which in ("gemm", "all"):
        a = rng.standard_normal((1024, 1024)).astype(np.float32)
        b = rng.standard_normal((1024, 1024)).astype(np.float32)
        out = np.empty((1024, 1024), np.float32)
        contenders = {"nnscratch": lambda: core.gemm(a, b, out)}
        if torch is not None:
            ta, tb, to = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            contenders["torch"] = lambda: torch.matmul(ta, tb, out=to)
        jobs.append(("GEMM 1024^3", contenders, rounds, 0.05))
    if which in ("cnn", "all"):
        n = 640 if quick else 2_560
        X = rng.random((n, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, n)
        nn.seed(0)
        contenders = {"nnscratch": _epoch_runner(_lenet(), X, y, 128, 0.01, "cython")}
        if torch is not None:
            contenders["torch"] = _torch_epoch_runner(torch, _torch_twin(torch, _lenet()), X, y,
                                                      128, 0.01)
        jobs.append((f"LeNet CNN epoch ({n} images)", contenders, max(1, rounds // 2), 0.0))
    def set_threads(count):
        nn.set_num_threads(count)
        if torch is not None:
            torch.set_num_threads(count)

    rows = []
    for label, contenders, job_rounds, min_time in jobs:
        # the thread counts interleaved too (a round on 1 thread, then one on `threads`, ...):
        # the machine's speed drifts over a run, and a ratio of medians taken minutes
        # apart would measure the drift
        samples: dict[tuple[int, str], list[float]] = \
            {(count, name): [] for count in (1, threads) for name in contenders}
        for count in (1, threads):                  # warm each once on each count
            set_threads(count)
            for fn in contenders.values():
                fn()
                time.sleep(PAUSE)
        for _ in range(job_rounds):
            for count in (1, threads):
                set_threads(count)
                for name, fn in contenders.items():
                    samples[(count, name)].append(time_call(fn, min_time=min_time))
                    time.sleep(PAUSE)
        set_threads(threads)
        secs = {key: statistics.median(values) for key, values in samples.items()}
        rows.append((f"{label}: speed-up from 1 to {threads} threads",
                     {k: secs[(1, k)] / secs[(threads, k)] for k in contenders}, "scaling"))
    return rows


# A child process builds the model and trains one epoch, and reports how far its peak RSS
# rose above what the data and the imported libraries take: each contender in a fresh
# process, so the figure is the training run's own peak (model, optimizer state, buffers,
# temporaries).
_MEMORY_CHILD = r"""
import sys
import numpy as np

def status(key):   # kB
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

def reset_peak():  # VmHWM := VmRSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

backend, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kind = sys.argv[4] if len(sys.argv) > 4 else "mlp"
rng = np.random.default_rng(0)
X = rng.random((n, 784) if kind == "mlp" else (n, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, n)
sizes = [784, 256, 128, 10]
import nnscratch as nn
if backend == "torch":
    import torch
reset_peak()
before = status("VmRSS")
if kind == "resnet20":
    # ResNet-20, SGD Nesterov with weight decay (the same network in PyTorch: to_torch)
    nn.seed(0)
    if backend == "torch":
        from nnscratch.interop import to_torch
        torch.set_num_threads(threads)
        model = to_torch(nn.models.resnet(20))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        tx, ty = torch.from_numpy(X), torch.from_numpy(y)
        def epoch(limit):
            for start in range(0, limit, 128):
                opt.zero_grad()
                loss_fn(model(tx[start:start + 128]), ty[start:start + 128]).backward()
                opt.step()
    else:
        nn.set_backend(backend)
        nn.set_num_threads(threads)
        model = nn.models.resnet(20)
        opt = nn.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                     weight_decay=5e-4)
        def epoch(limit):
            model.fit(X[:limit], y[:limit], loss=nn.CrossEntropyLoss(), optimizer=opt,
                      epochs=1, batch_size=128, progress=False)
elif backend == "torch":
    torch.set_num_threads(threads)
    layers = []
    for i in range(3):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(X), torch.from_numpy(y)
    def epoch(limit):
        perm = torch.randperm(len(tx))[:limit]
        for start in range(0, len(perm), 128):
            idx = perm[start:start + 128]
            opt.zero_grad()
            loss_fn(model(tx[idx]), ty[idx]).backward()
            opt.step()
else:
    nn.set_backend(backend)
    nn.set_num_threads(threads)
    layers = []
    for i in range(3):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = nn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    def epoch(limit):
        model.fit(X[:limit], y[:limit], loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=1,
                  batch_size=128, progress=False)
epoch(n)
print(status("VmHWM") - before)
"""


def bench_memory(torch, quick, threads, kinds=("mlp",)):
    """Peak-memory rows: how far one epoch raises each contender's peak RSS (MiB), for the
    MLP and/or ResNet-20 (`kinds`: "mlp", "resnet20")."""
    import subprocess
    import tempfile

    import nnscratch

    env = dict(os.environ)
    # the child imports the installed package (or this one), never the source checkout
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(nnscratch.__file__)))}
    env["PYTHONPATH"] = os.pathsep.join(list(roots) + [env.get("PYTHONPATH", "")])
    rows = []
    names: tuple[str, ...]
    for kind in kinds:
        if kind == "mlp":
            n = 12_000 if quick else 60_000
            names = ("nnscratch", "numpy")
            label = f"MLP 784-256-128-10, batch 128, epoch on {n} images"
        else:   # (the NumPy twins' ResNet epoch would take minutes: not measured)
            n = 512 if quick else 2_560
            names = ("nnscratch",)
            label = f"ResNet-20, batch 128, epoch on {n} images"
        peaks = {}
        for name in names + (("torch",) if torch is not None else ()):
            backend = {"nnscratch": "cython"}.get(name, name)
            with tempfile.TemporaryDirectory() as cwd:
                result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, backend, str(n),
                                         str(threads), kind], capture_output=True, text=True,
                                        cwd=cwd, env=env, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"memory benchmark child ({name}) failed:\n{result.stderr}")
            peaks[name] = int(result.stdout.split()[-1]) / 1024.0   # kB -> MiB
        rows.append((f"{label}: peak memory of training", peaks, "MiB"))
    return rows


def run(quick=False, threads=None, only="all", out=None):
    """Measure and print the table (to `out`, default stdout); returns its rows."""
    out = out if out is not None else sys.stdout
    import nnscratch as nn

    torch = _try_torch()
    onnxruntime, no_onnxruntime = _try_onnxruntime()
    threads = threads or os.cpu_count()
    nn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(threads):   # OpenBLAS (NumPy) on the same thread count
            return _run(quick, threads, only, out, torch, onnxruntime, no_onnxruntime)
    return _run(quick, threads, only, out, torch, onnxruntime, no_onnxruntime)


def _run(quick, threads, only, out, torch, onnxruntime, no_onnxruntime):
    import nnscratch as nn

    rounds = 3 if quick else 7
    peak = measured_peak(threads)
    print(f"# nnscratch {nn.__version__}, {threads} threads; {machine_line()}", file=out)
    print(f"# measured float32 FMA peak: {peak:.0f} GFLOP/s on {threads} threads "
          f"(% peak = a GEMM's GFLOP/s / this)", file=out)
    ort = (f"ONNX Runtime {onnxruntime.__version__}" if onnxruntime else
           f"no ONNX Runtime column ({no_onnxruntime})")
    print(f"# NumPy {np.__version__}; PyTorch {torch.__version__ if torch else 'not installed'}"
          f"; {ort}; times are medians; 'x faster' = their time / ours", file=out)
    rows = []
    if only in ("gemm", "all"):
        rows += bench_gemm(rounds, torch)
    if only in ("mlp", "cnn", "resnet", "inference", "all"):
        rows += bench_training(rounds, torch, quick, only, threads, onnxruntime)
    if only in ("mlp", "resnet", "memory", "all"):
        kinds = {"mlp": ("mlp",), "resnet": ("resnet20",)}.get(only, ("mlp", "resnet20"))
        rows += bench_memory(torch, quick, threads, kinds)
    if only in ("gemm", "cnn", "all"):
        rows += bench_scaling(rounds, torch, quick, only, threads)
    with_ort = any("onnxruntime" in secs for _, secs, _ in rows)
    table = []
    for label, secs, unit in rows:
        def fmt(key):
            if key not in secs:
                return "-"
            s = secs[key]
            if unit == "MiB":
                return f"{s:.1f} MiB"
            if unit == "scaling":
                return f"{s:.2f}x"
            if unit:
                return f"{unit / s / 1e9:.0f} GF/s"
            return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s:.3f} s"

        def share(key):   # % of the measured peak, for GFLOP/s rows
            if key not in secs or unit in (None, "MiB", "scaling"):
                return "-"
            return f"{100 * unit / secs[key] / 1e9 / peak:.0f}%"
        def versus(key):
            if key not in secs or unit == "scaling":
                return "-"
            return _ratio(secs["nnscratch"], secs[key])
        table.append([label, fmt("nnscratch"), share("nnscratch"), fmt("numpy"), versus("numpy"),
                      fmt("torch"), share("torch"), versus("torch")]
                     + ([fmt("onnxruntime"), versus("onnxruntime")] if with_ort else []))
    header = ["work", "nnscratch", "% peak", "numpy", "vs numpy", "torch", "% peak", "vs torch"]
    print(format_table(header + (["onnxruntime", "vs onnxruntime"] if with_ort else []),
                       table), file=out)
    if any(unit == "MiB" for _, _, unit in rows):
        print("# memory rows: 'vs' = their peak / ours (> 1: nnscratch needs less)", file=out)
    return rows
