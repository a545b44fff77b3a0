"""Every benchmark row in one table: GEMM, MLP epochs, one-sample inference, the CNN
epochs, the ResNet-20 epoch, peak memory.

    python benchmarks/bench_all.py [--quick] [--threads N]
                                   [--only gemm|mlp|cnn|resnet|memory|inference|all]

Same as `nnscratch bench`. `--only inference`: the one-sample inference row alone
(nnscratch, NumPy, PyTorch and ONNX Runtime, those installed; a few seconds). `--only
resnet`: the ResNet-20 epoch (batch 128, SGD Nesterov with weight decay; PyTorch on the same
network and weights) and the peak memory of its training (~1 minute).
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
