"""GEMM speed: nnscratch (cnn_core.gemm) against NumPy (OpenBLAS) and PyTorch, same run.

    python benchmarks/bench_gemm.py [--quick] [--threads N]

Each shape is checked against float64 NumPy before it is timed; the contenders are warmed
and timed in turns (medians), with pauses between them. GFLOP/s = 2 m n k / seconds.
The MLP shapes are the three products of a 784-256 layer at batch 128: forward x @ W,
backward x.T @ dZ (dW) and dZ @ W.T (dX). Same as `nnscratch bench --only gemm`.
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "gemm", *sys.argv[1:]]))
