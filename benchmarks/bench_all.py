"""Every benchmark row in one table: GEMM, MLP epochs, one-sample inference, the CNN epoch.

    python benchmarks/bench_all.py [--quick] [--threads N]
                                   [--only gemm|mlp|cnn|memory|inference|all]

Same as `nnscratch bench`, and `--only inference`: the one-sample inference row alone
(nnscratch, NumPy, PyTorch and ONNX Runtime, those installed; a few seconds).
"""
import argparse

from nnscratch import bench
from nnscratch.cli import _threads

ONLY = ["gemm", "mlp", "cnn", "memory", "inference", "all"]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--threads", type=_threads, default=None, metavar="N")
    parser.add_argument("--only", choices=ONLY, default="all")
    args = parser.parse_args()
    bench.run(quick=args.quick, threads=args.threads, only=args.only)
