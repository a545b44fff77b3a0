"""Step 3: check backpropagation against finite differences (nnscratch.gradcheck).

Backpropagation computes dL/dw for every weight w with the chain rule, in one backward
pass. The slow, obviously right way is to nudge each weight and watch the loss move:

    dL/dw ~= (L(w + eps) - L(w - eps)) / (2 * eps)          (central difference)

`nnscratch.gradcheck(model, X, y, loss)` does that for every parameter, in float64,
and returns the worst relative error per parameter. Correct gradients give ~1e-8 or
less; a bug gives something near 1.

We check a small network, then a layer with a deliberate bug: a ReLU whose backward
forgets to zero the gradient where the input was negative. gradcheck catches it.

Run:  python examples/03_gradient_check.py
"""
import numpy as np

import nnscratch as nn

rng = np.random.default_rng(0)
X = rng.standard_normal((8, 4))
y = rng.integers(0, 3, size=8)

nn.seed(0)
model = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), nn.Tanh(),
                      nn.Linear(5, 5, dtype=np.float64), nn.ReLU(),
                      nn.Linear(5, 3, dtype=np.float64))
errors = nn.gradcheck(model, X, y, nn.CrossEntropyLoss(), check_input=True)
print("gradcheck of Linear-Tanh-Linear-ReLU-Linear (worst relative error per parameter):")
for name, error in errors.items():
    print(f"    {name:10s} {error:.2e}")
assert max(errors.values()) < 1e-6
print("gradcheck: every gradient matches finite differences (errors < 1e-6)")


class BrokenReLU(nn.ReLU):
    """A ReLU with a bug in its backward: the gradient passes through unchanged."""

    def backward(self, grad_out, *, compute_grad_input=True):
        return grad_out              # forgot "* (x > 0)"


nn.seed(0)
broken = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), BrokenReLU(),
                       nn.Linear(5, 3, dtype=np.float64))
errors = nn.gradcheck(broken, X, y, nn.CrossEntropyLoss())
print("gradcheck of a network with a broken ReLU backward:")
for name, error in errors.items():
    print(f"    {name:10s} {error:.2e}")
worst = max(errors, key=errors.get)
assert errors[worst] > 1e-2
print(f"gradcheck caught the bug: {worst} is off by {errors[worst]:.0%} of its scale "
      f"(the layers after the ReLU are still right)")
