"""Step 1: one neuron, by hand and with nnscratch.

A neuron takes a weighted sum of its inputs, adds a bias, and passes the result through
an activation:

    z = x @ w + b          (the weighted sum: "a linear regression")
    a = sigmoid(z)         (the activation: a number between 0 and 1)

We compute that with plain NumPy, then with nnscratch.Linear(3, 1) holding the same
weights, and check that the two agree. Then we train the neuron alone (a linear
regression: no activation, MSE loss) and watch it find the weights that generated
the data.

Run:  python examples/01_single_neuron.py
"""
import numpy as np

import nnscratch as nn

# --- one neuron with 3 inputs, by hand ----------------------------------------------------
x = np.array([[1.0, 2.0, -1.0]])          # one sample, 3 features: shape (1, 3)
w = np.array([[0.5], [-0.25], [1.0]])     # one weight per input:  shape (3, 1)
b = np.array([0.1])                       # one bias:              shape (1,)

z_hand = x @ w + b                        # 0.5*1 - 0.25*2 + 1*(-1) + 0.1 = -0.9
a_hand = 1 / (1 + np.exp(-z_hand))
print(f"by hand:   z = x @ w + b = {z_hand[0, 0]:+.6f}   a = sigmoid(z) = {a_hand[0, 0]:.6f}")

# --- the same neuron as a layer -------------------------------------------------------------
layer = nn.Linear(3, 1, dtype=np.float64)
layer.weight.data = w                     # weight has shape (in_features, out_features)
layer.bias.data = b
z_lib = layer(x)
a_lib = nn.Sigmoid()(z_lib)
print(f"nnscratch: z = Linear(x)     = {z_lib[0, 0]:+.6f}   a = Sigmoid(z)  = {a_lib[0, 0]:.6f}")
assert np.allclose(z_lib, z_hand, rtol=1e-12) and np.allclose(a_lib, a_hand, rtol=1e-12)
print("single neuron: by hand == nnscratch.Linear")

# --- a neuron learns: linear regression with gradient descent -------------------------------
# data from y = 2 x1 - 1 x2 + 0.5 x3 + 3, plus a little noise
rng = np.random.default_rng(0)
X = rng.standard_normal((200, 3))
true_w, true_b = np.array([2.0, -1.0, 0.5]), 3.0
y = X @ true_w + true_b + 0.01 * rng.standard_normal(200)

nn.seed(0)
neuron = nn.Sequential(nn.Linear(3, 1, dtype=np.float64))
history = neuron.fit(X, y.reshape(-1, 1), loss=nn.MSELoss(),
                     optimizer=nn.SGD(neuron.parameters(), lr=0.1),
                     epochs=20, batch_size=20, seed=0, progress=False)
learned_w = neuron[0].weight.data[:, 0]
learned_b = neuron[0].bias.data[0]
print(f"loss (MSE) per epoch: {history.history['loss'][0]:.4f} -> "
      f"{history.history['loss'][-1]:.6f}")
print(f"learned w = {np.round(learned_w, 3)}, b = {learned_b:.3f}   "
      f"(true w = {true_w}, b = {true_b})")
assert np.allclose(learned_w, true_w, atol=0.01) and abs(learned_b - true_b) < 0.01
print("the neuron found the weights that generated the data")
