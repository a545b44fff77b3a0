"""Step 2: the two-layer network of the seed, equation by equation, on "two moons".

The seed -- the short text this project began from, which explains a network in nine
concepts (docs/README.md) -- writes forward propagation as

    z1 = X @ W1 + b1        # linear
    a1 = ReLU(z1)           # activation
    z2 = a1 @ W2 + b2       # next layer
    output = softmax(z2)    # for classification

and training as: compute the loss (cross-entropy), backpropagate the gradients with the
chain rule, and update W = W - lr * dL/dW, b = b - lr * dL/db.

Here those lines are written out in plain NumPy, next to the same network built from
nnscratch layers, both starting from the same weights and trained on the same batches.
At the end the two sets of weights must agree to rounding (float64): the library
computes exactly those equations.

Run:  python examples/02_two_layer_toy.py
"""
import numpy as np

import nnscratch as nn


def two_moons(n, noise, rng):
    """Two interleaved half circles, n points, labels 0 (upper) and 1 (lower)."""
    t = rng.uniform(0, np.pi, n)
    upper = np.column_stack([np.cos(t[: n // 2]), np.sin(t[: n // 2])])
    lower = np.column_stack([1 - np.cos(t[n // 2:]), 0.5 - np.sin(t[n // 2:])])
    X = np.vstack([upper, lower]) + noise * rng.standard_normal((n, 2))
    y = np.array([0] * (n // 2) + [1] * (n - n // 2))
    return X, y


rng = np.random.default_rng(0)
X, y = two_moons(400, 0.1, rng)
N, hidden, classes, lr, steps = len(X), 32, 2, 0.5, 600

# --- the library's network --------------------------------------------------------------
nn.seed(0)
model = nn.Sequential(nn.Linear(2, hidden, dtype=np.float64), nn.ReLU(),
                      nn.Linear(hidden, classes, dtype=np.float64))
loss_fn = nn.CrossEntropyLoss()
optimizer = nn.SGD(model.parameters(), lr=lr)

# --- the same network by hand: start from the library's initial weights ---------------------
W1, b1 = model[0].weight.data.copy(), model[0].bias.data.copy()     # (2, 32), (32,)
W2, b2 = model[2].weight.data.copy(), model[2].bias.data.copy()     # (32, 2), (2,)


def forward_by_hand(X):
    z1 = X @ W1 + b1                                   # (N, 32)
    a1 = np.maximum(z1, 0)                             # ReLU
    z2 = a1 @ W2 + b2                                  # (N, 2), the logits
    e = np.exp(z2 - z2.max(axis=1, keepdims=True))
    output = e / e.sum(axis=1, keepdims=True)          # softmax: class probabilities
    return z1, a1, z2, output


for step in range(steps):
    # by hand: forward, loss, backward (chain rule), update
    z1, a1, z2, p = forward_by_hand(X)
    loss_hand = -np.mean(np.log(p[np.arange(N), y]))   # cross-entropy
    dz2 = p.copy()
    dz2[np.arange(N), y] -= 1
    dz2 /= N                                           # dL/dz2 = (softmax - onehot) / N
    dW2, db2 = a1.T @ dz2, dz2.sum(axis=0)             # dL/dW2, dL/db2
    da1 = dz2 @ W2.T                                   # dL/da1
    dz1 = da1 * (z1 > 0)                               # through the ReLU
    dW1, db1 = X.T @ dz1, dz1.sum(axis=0)              # dL/dW1, dL/db1
    W1 -= lr * dW1
    b1 -= lr * db1
    W2 -= lr * dW2
    b2 -= lr * db2

    # the library: the same four steps of the training loop
    logits = model(X)                                  # forward propagation
    loss_lib = loss_fn(logits, y)                      # softmax + cross-entropy
    optimizer.zero_grad()
    model.backward(loss_fn.backward())                 # backpropagation
    optimizer.step()                                   # W = W - lr * dL/dW

    if step % 100 == 0 or step == steps - 1:
        print(f"step {step:4d}   loss by hand {loss_hand:.6f}   loss nnscratch {loss_lib:.6f}")

difference = max(np.abs(W1 - model[0].weight.data).max(), np.abs(b1 - model[0].bias.data).max(),
                 np.abs(W2 - model[2].weight.data).max(), np.abs(b2 - model[2].bias.data).max())
accuracy_hand = np.mean(forward_by_hand(X)[3].argmax(axis=1) == y)
accuracy_lib = model.evaluate(X, y, loss=loss_fn)["accuracy"]
print(f"accuracy: by hand {accuracy_hand:.3f}, nnscratch {accuracy_lib:.3f}")
print(f"by hand and nnscratch agree: largest weight difference {difference:.1e}")
assert difference < 1e-9, difference
assert accuracy_lib > 0.95, accuracy_lib

# the decision regions the network learned, as text: '0' and '1' mark the predicted class,
# 'o' and 'x' some training points of class 0 and 1
xs, ys = np.linspace(-1.5, 2.5, 64), np.linspace(1.3, -0.8, 18)
grid = np.array([[u, v] for v in ys for u in xs])
rows = model.predict(grid).argmax(axis=1).reshape(len(ys), len(xs))
canvas = [["." if c == 0 else "#" for c in row] for row in rows]
for (u, v), label in zip(X[::8], y[::8]):
    i, j = int(round((1.3 - v) / 2.1 * 17)), int(round((u + 1.5) / 4.0 * 63))
    if 0 <= i < len(ys) and 0 <= j < len(xs):
        canvas[i][j] = "o" if label == 0 else "x"
print("decision regions ('.' class 0, '#' class 1; points: o class 0, x class 1):")
print("\n".join("    " + "".join(row) for row in canvas))
