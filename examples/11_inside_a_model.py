"""Step 11: see inside a model -- per-layer statistics of one batch.

`nnscratch.inspect.layer_stats(model, X, y, loss, lr)` runs one forward and one backward
pass of a batch, as a training step would but without the update, and reports for every
layer with weights: the mean and spread of its output (and the share of dead ReLUs or
saturated sigmoids after it), the norm of its weights, the norm of their gradient, and
the update ratio lr * grad_norm / weight_norm -- how far one plain SGD step moves the
weights, relative to their size. The model is left exactly as it was.

Four models, one batch of 256 sample images each:

1. ten sigmoid layers: the gradient shrinks layer by layer on the way down, and the first
   layers hardly learn (vanishing gradients);
2. ten ReLU layers, after one epoch of SGD (recorded with `StatsRecorder`): gradients of
   the same size in every layer, and some dead units;
3. a ResNet-20: twenty layers, and the gradient reaches the first one undiminished;
4. the sigmoid network fed pixels 0..255 instead of 0..1: saturated sigmoids.

Run:  python examples/11_inside_a_model.py
"""
import numpy as np

import nnscratch as nn
from nnscratch.inspect import StatsRecorder, layer_stats

(X, y), _ = nn.datasets.load_sample()
probe_X, probe_y = X[:256], y[:256]          # the same batch for every table
loss = nn.CrossEntropyLoss()


def deep_mlp(activation, init):
    """784 -> 64 -> ... -> 64 -> 10: ten Linear layers, `activation` between them."""
    nn.seed(0)
    layers = [nn.Linear(784, 64, init=init)]
    for _ in range(8):
        layers += [activation(), nn.Linear(64, 64, init=init)]
    return nn.Sequential(*layers, activation(), nn.Linear(64, 10, init="xavier"))


def grad_norms(stats):
    return [row["grad_norm"] for row in stats]


# --- 1. ten sigmoid layers: the gradient vanishes -----------------------------------------
sigmoid_mlp = deep_mlp(nn.Sigmoid, "xavier")
before = [p.data.copy() for p in sigmoid_mlp.parameters()]
stats = layer_stats(sigmoid_mlp, probe_X, probe_y, loss, lr=0.1)
print("1. ten sigmoid layers (Glorot initialisation), lr 0.1:")
print(stats)
sigmoid = grad_norms(stats)
print(f"the first layer's gradient is {sigmoid[0] / sigmoid[-1]:.1e} times the last layer's; "
      f"between the hidden layers it shrinks {(sigmoid[-2] / sigmoid[1]) ** (1 / 7):.1f}x per "
      f"layer")
assert sigmoid[0] < 1e-3 * sigmoid[-1]
assert sum(a < b for a, b in zip(sigmoid, sigmoid[1:])) >= 8       # falls towards the input
assert all(np.array_equal(a, p.data) for a, p in zip(before, sigmoid_mlp.parameters()))

# --- 2. ten ReLU layers, one epoch of SGD, recorded as it trains --------------------------
relu_mlp = deep_mlp(nn.ReLU, "he")
optimizer = nn.SGD(relu_mlp.parameters(), lr=0.05)
recorder = StatsRecorder(probe_X, probe_y, every=20, lr=optimizer)
relu_mlp.fit(X, y, loss=loss, optimizer=optimizer, epochs=1, batch_size=64, seed=0,
             callbacks=[recorder], progress=False)
print(f"\n2. ten ReLU layers (He initialisation) after one epoch of SGD, lr 0.05 "
      f"(step {recorder.history[-1]['step']}):")
print(recorder.history[-1]["stats"])
dead = recorder.series("10", "dead_fraction")
print("dead units after layer 10, every 20 steps: "
      + " ".join(f"{d:.0%}" for d in dead))
relu = grad_norms(recorder.history[-1]["stats"])
assert max(relu) < 10 * min(relu)                      # no layer's gradient vanishes

# --- 3. a ResNet-20: the shortcuts carry the gradient down --------------------------------
nn.seed(0)
resnet = nn.models.resnet(depth=20)
stats = layer_stats(resnet, probe_X.reshape(-1, 1, 28, 28), probe_y, loss, lr=0.1)
print("\n3. ResNet-20 (He initialisation, batch norm), lr 0.1:")
print(stats)
convs = [row["grad_norm"] for row in stats if row["type"] == "Conv2d"]
print(f"its {len(convs)} convolutions: gradient norms from {min(convs):.2f} to "
      f"{max(convs):.2f}; the first is {convs[0] / convs[-1]:.2f} times the last's")
assert convs[0] > 0.1 * convs[-1] and min(convs) > 0.1 * max(convs)

# --- 4. the sigmoid network fed pixels 0..255: saturated sigmoids -------------------------
stats = layer_stats(sigmoid_mlp, probe_X * 255, probe_y, loss, lr=0.1)
print("\n4. the same ten sigmoid layers, fed pixels 0..255 instead of 0..1 (first rows):")
print("\n".join(str(stats).splitlines()[:5]))
print(f"{stats[0]['saturated_fraction']:.0%} of the first sigmoid's outputs are saturated")
assert stats[0]["saturated_fraction"] > 0.5
