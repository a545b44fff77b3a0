"""Where the time of one training step goes, phase by phase and layer by layer.

    python benchmarks/profile_step.py [--model mlp|cnn|lenet|resnet20] [--batch N] [--steps S]
                                       [--threads N]

See python/nnscratch/profiling.py for what it measures.
"""
import sys

from nnscratch.profiling import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
