"""Every script in examples/ runs to the end and prints what it is there to show.

Each runs as a subprocess from a temporary directory: from the repository root, the
checkout's uncompiled cnn_core/ folder would shadow the compiled package. The child sees
the same nnscratch and cnn_core as this process (their folders go first on PYTHONPATH).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cnn_core
import nnscratch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# script -> a line (part of one) its output must contain
EXPECTED = {
    "01_single_neuron.py": "single neuron: by hand == nnscratch.Linear",
    "02_two_layer_toy.py": "by hand and nnscratch agree",
    "03_gradient_check.py": "gradcheck caught the bug",
    "04_mlp_fashion_mnist.py": "test accuracy",
    "05_cnn.py": "CNN test accuracy",
    "06_backends_and_timing.py": "speed-up of the compiled kernels over the NumPy twins",
    "07_learning_rate.py": "lr = 10 diverged",
    "08_use_elsewhere.py": "scikit-learn cross_val_score (3 folds)",
    "09_pytorch_both_ways.py": "back in nnscratch: largest difference",
    "10_residual_and_augmentation.py": "ResNet-8 on 2,000 augmented images",
    "11_inside_a_model.py": "its 21 convolutions: gradient norms from",
}
# script -> the optional packages it needs, beyond the test extra (reported NOT RUN without)
NEEDS = {"09_pytorch_both_ways.py": ("torch",)}


def _env():
    env = dict(os.environ)
    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (nnscratch, cnn_core)]
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + rest))
    env.setdefault("MPLBACKEND", "Agg")
    return env


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    for package in NEEDS.get(script, ()):
        pytest.importorskip(package)
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert EXPECTED[script] in result.stdout, result.stdout
    assert list(tmp_path.iterdir()) == []          # writes no files unless asked to
