"""Training speed of the MLP rows: an epoch of nnscratch against its NumPy reference backend and PyTorch.

    python benchmarks/bench_mlp.py [--quick] [--threads N]

Same as `nnscratch bench --only mlp`; see python/nnscratch/bench.py for how it measures.
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "mlp", *sys.argv[1:]]))
