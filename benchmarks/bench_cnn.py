"""Training speed of the CNN rows: an epoch of nnscratch against its NumPy reference backend and PyTorch.

    python benchmarks/bench_cnn.py [--quick] [--threads N]

Same as `nnscratch bench --only cnn`; see python/nnscratch/bench.py for how it measures.
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "cnn", *sys.argv[1:]]))
