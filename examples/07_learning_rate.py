"""Step 7: the learning rate -- too low = slow, too high = unstable.

Gradient descent moves every weight against its gradient, W = W - lr * dL/dW. The
learning rate lr sets the step size. `nnscratch.explain.lr_find` trains a fresh copy of
the same model (same initial weights, same batches) once per learning rate and prints
the loss each one reaches:

* too low: the loss barely moves in the time given -- slow;
* just right: the loss drops the most;
* too high: the steps overshoot the valley; the loss goes up, or explodes to infinity
  (diverges) -- unstable.

First a sweep on the Fashion-MNIST sample (an MLP, SGD, one epoch), then a linear
regression, where a learning rate above 2 / (largest curvature) makes every step
overshoot by more than the last, and the weights blow up until the loss is not a number.

Run:  python examples/07_learning_rate.py [--plot sweep.png]
"""
import math
import sys

import numpy as np

import nnscratch as nn
from nnscratch.explain import lr_find

plot = sys.argv[sys.argv.index("--plot") + 1] if "--plot" in sys.argv else None

(X, y), _ = nn.datasets.load_sample()
X, y = X[:2000], y[:2000]


def mlp():
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


results = lr_find(mlp, X, y, lrs=[1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], epochs=1,
                  batch_size=64, plot=plot)
losses = dict(results)
assert losses[0.1] < losses[1e-3] and losses[0.1] < losses[100.0]

print()
rng = np.random.default_rng(0)
Xr = rng.standard_normal((256, 3))
yr = (Xr @ np.array([2.0, -1.0, 0.5]) + 3.0).reshape(-1, 1)


def neuron():
    return nn.Sequential(nn.Linear(3, 1))


results = lr_find(neuron, Xr, yr, lrs=[1e-3, 1e-2, 1e-1, 1.0, 10.0], epochs=5,
                  batch_size=32, loss=nn.MSELoss())
assert math.isinf(dict(results)[10.0])
print("lr = 10 diverged: the loss became infinite or NaN, and fit stopped with "
      "FloatingPointError")
