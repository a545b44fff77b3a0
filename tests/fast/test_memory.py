"""Memory: resident set size (RSS) stays flat while training and while calling kernels.

Every measurement runs in a fresh child process (this file run as a script, from a
temporary directory so that the checkout's uncompiled `cnn_core/` cannot shadow the
built one), so that pytest's own allocations and earlier tests do not blur it. RSS is read
from /proc/self/statm after each epoch (or each round of calls); the first rounds are
warm-up (layer buffers, per-thread packing buffers, allocator pools), after which growth
must stay under a bound: a leak of one batch-sized array per step would exceed it many
times over.

    python tests/fast/test_memory.py mlp|cnn|kernels|threads     # the child by hand
"""
import gc
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
MiB = 1 << 20
GROWTH_BOUND = 5 * MiB
WARMUP = 3

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="reads the RSS from /proc/self/statm (Linux)")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _train(model, X, y, X_val, y_val, epochs, batch_size):
    import nnscratch as nn

    samples = []

    class Measure(nn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.predict(X_val)                    # inference buffers too
            gc.collect()
            samples.append(rss())

    optimizer = nn.Adam(model.parameters(), lr=1e-3)
    history = model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                        batch_size=batch_size, validation_data=(X_val, y_val), seed=0,
                        progress=False, callbacks=[Measure()])
    assert len(history.history["loss"]) == epochs
    assert np.isfinite(history.history["loss"]).all()
    return samples


def child_mlp():
    import nnscratch as nn

    nn.set_num_threads(1)       # the leak is what counts; one thread is immune to a busy machine
    nn.seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 64)).astype(np.float32)
    y = (X[:, :10].argmax(axis=1)).astype(np.int64)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10))
    # 3000 / 16 = 188 steps an epoch, 3760 in all
    return _train(model, X, y, X[:500], y[:500], epochs=20, batch_size=16)


def child_cnn():
    import nnscratch as nn

    nn.set_num_threads(1)
    nn.seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((320, 1, 12, 12)).astype(np.float32)
    y = (X[:, 0, :5, 0].argmax(axis=1)).astype(np.int64)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 6 * 6, 5))
    return _train(model, X, y, X[:64], y[:64], epochs=20, batch_size=16)


def _kernel_round(cnn_core, arrays):
    """One call of every compiled kernel on ~100 KB arrays, results thrown away."""
    a, b, x4, w4, g, labels, p = arrays
    out = cnn_core.gemm(a, b, trans_b=True)
    cnn_core.linear_forward(a, b.T.copy(), b[:, 0].copy(), activation="relu")
    cnn_core.linear_backward(out, a, b.T.copy(), np.zeros((a.shape[1], b.shape[0]), a.dtype),
                             np.zeros(b.shape[0], a.dtype))
    for name in ("relu", "sigmoid", "tanh", "leaky_relu"):
        y = getattr(cnn_core, f"{name}_forward")(g)
        getattr(cnn_core, f"{name}_backward")(g, y)
    y = cnn_core.softmax_forward(out)
    cnn_core.softmax_backward(out, y)
    cnn_core.dropout_forward(g, g > 0, 2.0)
    cnn_core.dropout_backward(g, g > 0, 2.0)
    cnn_core.softmax_cross_entropy(out, labels)
    cnn_core.mse(g, g[::-1].copy())
    cnn_core.bce_with_logits(g, np.abs(np.tanh(g)))
    cnn_core.sgd_update(p, g, 0.1, momentum=0.9, velocity=np.zeros_like(p), nesterov=True)
    cnn_core.adam_update(p, g, np.zeros_like(p), np.zeros_like(p), 3, 1e-3, 0.9, 0.999, 1e-8)
    y = cnn_core.conv2d_forward(x4, w4, None, padding=1)
    cnn_core.conv2d_backward(y, x4, w4, np.zeros_like(w4), np.zeros(w4.shape[0], x4.dtype),
                             padding=1)
    pooled, idx = cnn_core.maxpool2d_forward(y, 2)
    cnn_core.maxpool2d_backward(pooled, idx, y.shape)
    c = x4.shape[1]
    bn, mean, invstd = cnn_core.batchnorm_forward(x4, np.ones(c, x4.dtype), np.zeros(c, x4.dtype),
                                                  np.zeros(c, x4.dtype), np.ones(c, x4.dtype),
                                                  training=True)
    cnn_core.batchnorm_backward(bn, x4, np.ones(c, x4.dtype), mean, invstd,
                                np.zeros(c, x4.dtype), np.zeros(c, x4.dtype))
    # and the rejected calls: an error path must not leak its half-built arrays either
    for bad in (lambda: cnn_core.gemm(a, a), lambda: cnn_core.relu_forward(labels),
                lambda: cnn_core.softmax_cross_entropy(out, labels + 1000),
                lambda: cnn_core.conv2d_forward(x4, w4[:, :1], None)):
        try:
            bad()
        except (TypeError, ValueError):
            pass


def child_kernels():
    import cnn_core

    rng = np.random.default_rng(0)
    samples = []
    # float32 on one thread, then float64 on two (the OpenMP paths; fewer rounds, as
    # a busy machine makes every parallel region slow)
    for dtype, threads, rounds in ((np.float32, 1, 15), (np.float64, 2, 5)):
        cnn_core.set_num_threads(threads)
        arrays = (rng.standard_normal((64, 200)).astype(dtype),
                  rng.standard_normal((50, 200)).astype(dtype),
                  rng.standard_normal((4, 3, 16, 16)).astype(dtype),
                  rng.standard_normal((4, 3, 3, 3)).astype(dtype),
                  rng.standard_normal((100, 130)).astype(dtype),
                  rng.integers(0, 50, size=64),
                  rng.standard_normal((100, 130)).astype(dtype))
        for _ in range(10):
            for _ in range(rounds):
                _kernel_round(cnn_core, arrays)
            gc.collect()
            samples.append(rss())
    return samples


def child_threads():
    """Kernels called from short-lived Python threads: each thread's packing/column
    scratch buffers (src/nn_scratch.h, thread-local) must be freed when the thread ends."""
    import cnn_core

    a = np.ones((512, 512), np.float32)
    x, w = np.ones((8, 16, 28, 28), np.float32), np.ones((16, 16, 3, 3), np.float32)

    def work():
        cnn_core.gemm(a, a)
        cnn_core.conv2d_forward(x, w, None, padding=1)

    samples = []
    for _ in range(10):
        for _ in range(10):
            t = threading.Thread(target=work)
            t.start()
            t.join()
        gc.collect()
        samples.append(rss())
    return samples


CHILDREN = {"mlp": child_mlp, "cnn": child_cnn, "kernels": child_kernels,
            "threads": child_threads}


def _rss_samples(tmp_path, which):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, HERE, which], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_flat(samples, what, bound=GROWTH_BOUND):
    base = samples[WARMUP - 1]
    growth = max(samples[WARMUP:]) - base
    text = ", ".join(f"{s / MiB:.1f}" for s in samples)
    assert growth < bound, (f"{what}: RSS grew {growth / MiB:.1f} MiB after warm-up "
                            f"(bound {bound / MiB:.0f}); MiB per round: {text}")


def test_rss_is_flat_over_20_epochs_of_mlp_training(tmp_path):
    samples = _rss_samples(tmp_path, "mlp")
    assert len(samples) == 20
    _assert_flat(samples, "MLP, 20 epochs")


def test_rss_is_flat_over_20_epochs_of_cnn_training(tmp_path):
    samples = _rss_samples(tmp_path, "cnn")
    assert len(samples) == 20
    _assert_flat(samples, "CNN with batch norm, 20 epochs")


def test_rss_is_flat_over_repeated_kernel_calls(tmp_path):
    # 150 + 50 rounds of every kernel; a leaked output array per call would be ~7 + 5 MB.
    # The float64 / two-thread part has new sizes and new workers: its own warm-up.
    samples = _rss_samples(tmp_path, "kernels")
    assert len(samples) == 20
    _assert_flat(samples[:10], "every kernel, float32, 1 thread, 150 rounds")
    _assert_flat(samples[10:], "every kernel, float64, 2 threads, 50 rounds")


def test_short_lived_threads_do_not_leak_their_scratch_buffers(tmp_path):
    # A leak would be ~1.5 MB per thread: ~150 MB per round of 100 threads. What remains
    # without one is glibc's per-thread malloc arenas settling (seen: up to ~6 MiB creep
    # over 10 rounds), so the bound here is 20 MiB, far below one round's leak.
    _assert_flat(_rss_samples(tmp_path, "threads"), "100 short-lived threads",
                 bound=20 * MiB)


if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]]()))
