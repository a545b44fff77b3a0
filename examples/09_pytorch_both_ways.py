"""Step 9: PyTorch, both ways -- start in nnscratch, continue in PyTorch, come back.

``nnscratch.interop.to_torch(model)`` builds the same network from ``torch.nn`` layers
with the same weights (nnscratch's Linear weight is (in, out), PyTorch's (out, in): it is
transposed on the way), and the same ``state_dict`` names. ``from_torch(module)`` goes
back. Training carries over too: one SGD step in PyTorch moves the weights as one step in
nnscratch does.

Needs PyTorch: pip install torch

Run:  python examples/09_pytorch_both_ways.py
"""
import numpy as np
import torch

import nnscratch as nn
from nnscratch.interop import from_torch, to_torch

(X, y), (X_test, y_test) = nn.datasets.load_sample()
nn.seed(0)
model = nn.models.mlp(hidden=(128,))
model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(), lr=0.1),
          epochs=2, batch_size=64, seed=0, progress=False)

# nnscratch -> PyTorch: the same outputs
net = to_torch(model).eval()
print(net)
with torch.no_grad():
    theirs = net(torch.from_numpy(X_test)).numpy()
ours = model.predict(X_test)
print(f"PyTorch: largest difference from nnscratch {np.abs(theirs - ours).max():.1e}")
assert np.abs(theirs - ours).max() < 1e-5
print("state_dict names, one to one:", list(model.state_dict()) == list(net.state_dict()))
assert list(model.state_dict()) == list(net.state_dict())

# continue training in PyTorch (on a GPU, if you have one), then come back
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
net.train()
for start in range(0, 2048, 64):
    xb, yb = torch.from_numpy(X[start:start + 64]), torch.from_numpy(y[start:start + 64])
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(xb), yb.long()).backward()
    optimizer.step()
back = from_torch(net.eval())
with torch.no_grad():
    theirs = net(torch.from_numpy(X_test)).numpy()
assert np.abs(back.predict(X_test) - theirs).max() < 1e-5
print(f"back in nnscratch: largest difference {np.abs(back.predict(X_test) - theirs).max():.1e}, "
      f"test accuracy {np.mean(back.predict(X_test).argmax(1) == y_test):.4f}")
