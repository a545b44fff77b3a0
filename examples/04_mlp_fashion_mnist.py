"""Step 4: a multi-layer perceptron on real images (Fashion-MNIST, the bundled sample).

28x28 grey images of clothes, flattened to 784 numbers in [0, 1], ten classes. The
network is the two-layer one of docs/README.md (the seed's), only wider and deeper:

    z1 = X @ W1 + b1,  a1 = ReLU(z1)       (784 -> 256)
    z2 = a1 @ W2 + b2, a2 = ReLU(z2)       (256 -> 128)
    z3 = a2 @ W3 + b3                      (128 -> 10 logits; softmax inside the loss)

trained with `fit` (mini-batches, cross-entropy, Adam). The sample shipped with the
package has 5000 training and 1000 test images, so this runs in seconds and offline; the
full data set (60000 images, `nnscratch.datasets.load_fashion_mnist()`) reaches ~89%.

Run:  python examples/04_mlp_fashion_mnist.py
"""
import time

import numpy as np

import nnscratch as nn

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]

(X_train, y_train), (X_test, y_test) = nn.datasets.load_sample()
print(f"training images {X_train.shape} {X_train.dtype}, labels {y_train.shape}; "
      f"test images {X_test.shape}")

nn.seed(0)
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(),
                      nn.Linear(256, 128), nn.ReLU(),
                      nn.Linear(128, 10))
model.summary()

start = time.perf_counter()
history = model.fit(X_train, y_train, loss=nn.CrossEntropyLoss(),
                    optimizer=nn.Adam(model.parameters(), lr=1e-3),
                    epochs=5, batch_size=64, validation_data=(X_test, y_test),
                    seed=0, progress=False)
seconds = time.perf_counter() - start
for epoch, (loss, acc, val_acc) in enumerate(zip(history.history["loss"],
                                                  history.history["accuracy"],
                                                  history.history["val_accuracy"])):
    print(f"epoch {epoch + 1}: loss {loss:.4f}  train accuracy {acc:.3f}  "
          f"test accuracy {val_acc:.3f}")
print(f"trained in {seconds:.2f} s ({len(X_train) * 5 / seconds:,.0f} images/s)")

result = model.evaluate(X_test, y_test)
print(f"test accuracy {result['accuracy']:.3f}, test loss {result['loss']:.4f}")
assert result["accuracy"] > 0.75, result

# what the model says about the first few test images
proba = model.predict_proba(X_test[:5])
for p, label in zip(proba, y_test[:5]):
    guess = int(np.argmax(p))
    print(f"    true {CLASSES[label]:12s} predicted {CLASSES[guess]:12s} ({p[guess]:.0%})")
