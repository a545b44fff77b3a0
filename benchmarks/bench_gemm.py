"""GEMM speed: nnscratch (cnn_core.gemm) against NumPy (OpenBLAS) and PyTorch, same run.

    python benchmarks/bench_gemm.py [--threads 2] [--dtype float32] [--quick]

Each shape is first checked for correctness (against float64 NumPy), then timed with the
contenders interleaved; GFLOP/s = 2 m n k / median seconds. Ratios > 1 mean nnscratch is faster.
The MLP shapes are the three products of a 784-256 layer at batch 128: forward x @ W,
backward x.T @ dZ (dW) and dZ @ W.T (dX).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved, machine_line, print_table, try_import_torch  # noqa: E402

import cnn_core  # noqa: E402

SHAPES = [  # name, m, k, n, trans_a, trans_b
    ("square 1024^3", 1024, 1024, 1024, False, False),
    ("MLP fwd 128x784 @ 784x256", 128, 784, 256, False, False),
    ("MLP dW 784x128 @ 128x256 (A^T)", 784, 128, 256, True, False),
    ("MLP dX 128x256 @ 256x784 (B^T)", 128, 256, 784, False, True),
    ("square 256^3", 256, 256, 256, False, False),
    ("batch-16 fwd 16x784 @ 784x256", 16, 784, 256, False, False),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    rounds = 3 if args.quick else 7

    cnn_core.set_num_threads(args.threads)
    torch = try_import_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits, threadpool_info
        threadpool_limits(args.threads)
        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
                         for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        blas = "unknown BLAS (install threadpoolctl to see and limit it)"

    print(f"# GEMM {dtype}, {args.threads} threads; {machine_line()}")
    print(f"# nnscratch micro-kernel: {cnn_core.gemm_kernel_name(dtype)}; NumPy {np.__version__}"
          f" with {blas}; PyTorch {torch.__version__ if torch else 'not installed'}")
    rng = np.random.default_rng(0)
    rows = []
    for name, m, k, n, ta, tb in SHAPES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
        A, B = (a.T if ta else a), (b.T if tb else b)
        out = np.empty((m, n), dtype)
        # validate before timing
        expect = A.astype(np.float64) @ B.astype(np.float64)
        got = cnn_core.gemm(a, b, out, trans_a=ta, trans_b=tb)
        tol = (1e-4 if dtype == np.float32 else 1e-12) * np.sqrt(k)
        err = np.max(np.abs(got - expect)) / max(1.0, np.max(np.abs(expect)))
        if not err < tol:
            raise SystemExit(f"{name}: nnscratch is WRONG (relative error {err:.2e})")
        contenders = {
            "nnscratch": lambda: cnn_core.gemm(a, b, out, trans_a=ta, trans_b=tb),
            "numpy": lambda: np.matmul(A, B, out=out),
        }
        if torch is not None:
            ta_, tb_, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            TA, TB = (ta_.T if ta else ta_), (tb_.T if tb else tb_)
            contenders["torch"] = lambda: torch.matmul(TA, TB, out=tout)
        secs = interleaved(contenders, rounds=rounds)
        gf = {key: 2.0 * m * n * k / s / 1e9 for key, s in secs.items()}
        row = [name, f"{gf['nnscratch']:.0f}", f"{gf['numpy']:.0f}",
               f"{gf['nnscratch'] / gf['numpy']:.2f}x"]
        if torch is not None:
            row += [f"{gf['torch']:.0f}", f"{gf['nnscratch'] / gf['torch']:.2f}x"]
        rows.append(row)
    header = ["shape", "nnscratch GF/s", "numpy GF/s", "vs numpy"]
    if torch is not None:
        header += ["torch GF/s", "vs torch"]
    print_table(header, rows)


if __name__ == "__main__":
    main()
