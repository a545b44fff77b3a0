"""Step 6: the same model on the two backends -- compiled kernels and their NumPy twins.

Every kernel in `cnn_core` (Cython compiled to C) has a twin of the same name in
`cnn_core.reference` (a few lines of NumPy). `nnscratch.set_backend("numpy")` runs every
layer, loss and optimizer on the twins instead, so the same model can be run both ways:

1. one forward pass on each backend, from the same weights: the outputs agree to float32
   rounding (the two sum the products in different orders);
2. one epoch of training on each, from the same seeds: the weights agree closely, and we
   time both;
3. the matrix product alone, the kernel behind every Linear layer, in GFLOP/s.

Run:  python examples/06_backends_and_timing.py
"""
import time

import numpy as np

import nnscratch as nn
from cnn_core import reference
from nnscratch import backend

(X_train, y_train), (X_test, y_test) = nn.datasets.load_sample()
fast = backend.cnn_core_module()
print(f"compiled kernels: GEMM micro-kernel {fast.gemm_kernel_name()!r}, "
      f"{nn.get_num_threads()} threads ({backend.thread_count_reason()})")


def build():
    nn.seed(0)     # the same seed: the same initial weights on either backend
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


# --- 1. one forward pass ----------------------------------------------------------------
outputs = {}
for name in ("cython", "numpy"):
    nn.set_backend(name)
    outputs[name] = build().predict(X_test)
difference = np.abs(outputs["cython"] - outputs["numpy"]).max()
scale = np.abs(outputs["numpy"]).max()
print(f"forward pass, 1000 images: largest difference {difference:.1e} "
      f"(outputs up to {scale:.1f})")
assert difference <= 1e-5 * scale

# --- 2. one epoch of training -------------------------------------------------------------
weights, seconds = {}, {}
for name in ("cython", "numpy"):
    nn.set_backend(name)
    model = build()
    optimizer = nn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    model.fit(X_train, y_train, loss=nn.CrossEntropyLoss(), optimizer=optimizer,
              epochs=1, batch_size=64, seed=0, progress=False)
    seconds[name] = time.perf_counter() - start
    weights[name] = [p.data.copy() for p in model.parameters()]
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"{name:6s} backend: one epoch in {seconds[name]:.3f} s, test accuracy {accuracy:.3f}")
nn.set_backend("cython")
drift = max(np.abs(a - b).max() / np.abs(b).max()
            for a, b in zip(weights["cython"], weights["numpy"]))
print(f"after 78 steps the weights differ by at most {drift:.1e} of their scale")
assert drift < 1e-3
print(f"speed-up of the compiled kernels over the NumPy twins: "
      f"{seconds['numpy'] / seconds['cython']:.1f}x")

# --- 3. the matrix product alone ----------------------------------------------------------
rng = np.random.default_rng(0)
a = rng.standard_normal((256, 784)).astype(np.float32)
b = rng.standard_normal((784, 256)).astype(np.float32)
out = np.empty((256, 256), np.float32)
flops = 2 * 256 * 784 * 256
for name, module in (("cnn_core.gemm", fast), ("cnn_core.reference.gemm (NumPy @)", reference)):
    module.gemm(a, b, out)                       # warm up (packing buffers, threads)
    start, reps = time.perf_counter(), 50
    for _ in range(reps):
        module.gemm(a, b, out)
    per_call = (time.perf_counter() - start) / reps
    print(f"{name:34s} 256x784 @ 784x256: {per_call * 1e3:.3f} ms, "
          f"{flops / per_call / 1e9:.1f} GFLOP/s")
