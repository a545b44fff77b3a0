"""Every benchmark row in one table: GEMM, MLP epochs, one-sample inference, the CNN epoch.

    python benchmarks/bench_all.py [--quick] [--threads N]

Same as `nnscratch bench`.
"""
import sys

from nnscratch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
