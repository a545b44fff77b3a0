"""Step 10: residual connections and data augmentation -- how deeper networks train.

Part 1, the gradient of a sum. Backpropagation multiplies the gradient by each layer's
local derivative on the way down; through twenty sigmoid layers (derivative at most 1/4)
it shrinks until the first layers hardly learn. A residual block computes
``y = x + body(x)``, and the derivative of a sum is the sum of the derivatives:
``dL/dx = dL/dy + body.backward(dL/dy)`` -- the first term reaches the layer below
unchanged, however small the body's part. One backward pass through each network shows
the gradient norm of every layer's weights.

Part 2, augmentation. A small residual network (`nnscratch.models.resnet`) trains on
randomly cropped and flipped copies of the training images (`nnscratch.transforms`,
given to ``fit(transform=...)``): every epoch sees slightly different images, so the
network cannot learn the training set by heart.

Run:  python examples/10_residual_and_augmentation.py
"""
import numpy as np

import nnscratch as nn
from nnscratch.transforms import Compose, RandomCrop, RandomHorizontalFlip

(X, y), (X_test, y_test) = nn.datasets.load_sample()

# --- Part 1: twenty sigmoid layers, plain and with shortcuts ------------------------------
DEPTH, WIDTH = 20, 64


def deep(residual):
    nn.seed(0)
    layers = [nn.Linear(784, WIDTH, init="xavier")]
    for _ in range(DEPTH):
        block = nn.Sequential(nn.Sigmoid(), nn.Linear(WIDTH, WIDTH, init="xavier"))
        layers.append(nn.Residual(block) if residual else block)
    return nn.Sequential(*layers, nn.Linear(WIDTH, 10, init="xavier"))


print(f"gradient norm of each layer's weights, {DEPTH} sigmoid layers, one batch:")
print("layer    plain  residual")
norms = {}
for residual in (False, True):
    model = deep(residual)
    loss = nn.CrossEntropyLoss()
    loss(model(X[:256]), y[:256])
    model.backward(loss.backward())
    norms[residual] = [float(np.linalg.norm(p.grad)) for name, p in model.named_parameters()
                       if name.endswith("weight")]
for i in (0, 1, 5, 10, 15, 20, 21):
    print(f"{i:>5}  {norms[False][i]:.1e}   {norms[True][i]:.1e}")
first_plain, first_residual = norms[False][0], norms[True][0]
print(f"first layer: the plain network's gradient is {first_residual / first_plain:.0e} times "
      f"smaller than the residual one's")
assert first_residual > 100 * first_plain

# --- Part 2: a residual network, trained on augmented images ----------------------------
augment = Compose([RandomCrop(28, padding=2), RandomHorizontalFlip()])
batch = augment(X[:4].reshape(-1, 1, 28, 28), np.random.default_rng(0))
moved = np.mean(batch != X[:4].reshape(-1, 1, 28, 28))
print(f"\naugmentation: {moved:.0%} of the pixels of 4 images changed by a crop and a flip")

nn.seed(0)
model = nn.models.resnet(depth=8, width=8)
print(f"ResNet-8, width 8: {sum(p.size for p in model.parameters()):,} parameters, "
      f"{sum(isinstance(m, nn.Residual) for m in model.modules())} residual blocks")
images, images_test = X[:2000].reshape(-1, 1, 28, 28), X_test.reshape(-1, 1, 28, 28)
optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                   weight_decay=5e-4)
epochs, steps = 4, -(-2000 // 64)
schedule = nn.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * steps, pct_start=0.15)
model.fit(images, y[:2000], loss=nn.CrossEntropyLoss(label_smoothing=0.1),
          optimizer=optimizer, epochs=epochs, batch_size=64, seed=0, transform=augment,
          callbacks=[schedule], progress=False)
accuracy = np.mean(model.predict(images_test).argmax(axis=1) == y_test)
print(f"ResNet-8 on 2,000 augmented images, {epochs} epochs: test accuracy {accuracy:.4f}")
