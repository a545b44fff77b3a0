"""Every benchmark row in one table: GEMM, MLP epochs, one-sample inference, the CNN epoch.

    python benchmarks/bench_all.py [--quick] [--threads N]
                                   [--only gemm|mlp|cnn|memory|inference|all]

Same as `nnscratch bench`. `--only inference`: the one-sample inference row alone
(nnscratch, NumPy, PyTorch and ONNX Runtime, those installed; a few seconds).
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
