"""Step 5: a small convolutional network on the Fashion-MNIST sample.

An MLP sees 784 unrelated numbers; a convolution slides small filters over the image, so
the same few weights look for the same pattern (an edge, a corner) everywhere:

    out[n, o, i, j] = b[o] + sum over c, p, q of W[o, c, p, q] * x[n, c, i + p, j + q]

Images stay (N, 1, 28, 28) (NCHW). The network:

    Conv2d(1, 8, 3, padding=1) -> ReLU -> MaxPool2d(2)      (1, 28, 28) -> (8, 14, 14)
    Conv2d(8, 16, 3, padding=1) -> ReLU -> MaxPool2d(2)     -> (16, 7, 7)
    Flatten -> Linear(784, 10)                              -> 10 logits

It has 7x fewer weights than the MLP of step 4 and does about as well after two epochs.
Before training, one Conv2d's forward is checked against the formula above written as
plain loops.

Run:  python examples/05_cnn.py
"""
import time

import numpy as np

import nnscratch as nn

# --- the formula, as loops, against Conv2d ---------------------------------------------------
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 6, 6))
conv = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
W, b = conv.weight.data, conv.bias.data
expected = np.zeros((2, 4, 6, 6))
for n in range(2):
    for o in range(4):
        for i in range(6):
            for j in range(6):
                expected[n, o, i, j] = b[o] + np.sum(W[o] * xpad[n, :, i:i + 3, j:j + 3])
print(f"Conv2d == the loops: largest difference {np.abs(conv(x) - expected).max():.1e}")
assert np.allclose(conv(x), expected, rtol=1e-12, atol=1e-12)

# --- train on the sample ------------------------------------------------------------------
(X_train, y_train), (X_test, y_test) = nn.datasets.load_sample(flatten=False)
print(f"images {X_train.shape} (N, C, H, W)")

nn.seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(16 * 7 * 7, 10, init="xavier"))
model.summary(input_shape=(1, 28, 28))

start = time.perf_counter()
history = model.fit(X_train, y_train, loss=nn.CrossEntropyLoss(),
                    optimizer=nn.Adam(model.parameters(), lr=3e-3),
                    epochs=2, batch_size=64, seed=0, progress=False)
seconds = time.perf_counter() - start
print(f"loss per epoch {[round(v, 4) for v in history.history['loss']]}, "
      f"{seconds:.2f} s for 2 epochs")
result = model.evaluate(X_test, y_test)
print(f"CNN test accuracy {result['accuracy']:.3f}")
assert result["accuracy"] > 0.75, result

# what the first layer's 8 filters look like (3x3 each), as signs: + or -
filters = model[0].weight.data[:, 0]
for row in range(3):
    print("    " + "   ".join("".join("+" if v > 0 else "-" for v in f[row]) for f in filters))
