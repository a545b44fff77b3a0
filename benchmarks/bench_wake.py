"""Waking up: the first product after an idle pause, against the next ones.

    python benchmarks/bench_wake.py [--rounds 15] [--pause 0.3] [--threads 2]

A float32 GEMM 256x1024 @ 1024x1024 by nnscratch (cnn_core.gemm), NumPy (OpenBLAS) and
PyTorch (when installed), in one process, interleaved: each round, for each contender, a
pause of `--pause` seconds (its worker threads go to sleep), the first call timed, then the
next three. Printed: GFLOP/s of the first call (median and min over the rounds) and of the
next three (median). Nothing here is a pass/fail test: the figures go to
docs/performance.md.
"""
import argparse
import statistics
import sys
import time

import numpy as np

M, K, N = 256, 1024, 1024
FLOPS = 2.0 * M * K * N


def contenders(threads):
    import cnn_core

    cnn_core.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out = {"nnscratch": lambda: cnn_core.gemm(a, b), "numpy": lambda: a @ b}
    try:
        import torch
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch"] = lambda: torch.mm(ta, tb)
    except ImportError:
        pass
    expected = a.astype(np.float64) @ b.astype(np.float64)
    for name, fn in out.items():                     # each checked before it is timed
        got = np.asarray(fn(), dtype=np.float64)
        if not np.allclose(got, expected, rtol=1e-3, atol=1e-2):
            raise SystemExit(f"{name}: wrong product")
    return out


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    fns = contenders(args.threads)
    first = {name: [] for name in fns}
    after = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            time.sleep(args.pause)
            first[name].append(timed(fn))
            after[name].extend(timed(fn) for _ in range(3))
    print(f"GEMM {M}x{K} @ {K}x{N} float32, {args.threads} threads; first call after "
          f"{args.pause} s idle / the next three; {args.rounds} rounds; GFLOP/s")
    print(f"{'':<10}{'first: median':>15}{'first: min':>12}{'next three':>12}")
    for name in fns:
        gf = [FLOPS / t / 1e9 for t in first[name]]
        nxt = [FLOPS / t / 1e9 for t in after[name]]
        print(f"{name:<10}{statistics.median(gf):>15.0f}{min(gf):>12.0f}"
              f"{statistics.median(nxt):>12.0f}")


if __name__ == "__main__":
    sys.exit(main())
