"""Step 8: use a trained model elsewhere -- ONNX Runtime, safetensors, scikit-learn.

A model trained with nnscratch is not locked in:

* ``nnscratch.onnx.export`` writes it as an ONNX graph (one node per layer: a Gemm per Linear),
  which ONNX Runtime -- and every tool that reads ONNX -- runs without nnscratch;
* ``model.save("m.safetensors")`` writes the Hugging Face weight format (the tensor names
  are the ``state_dict`` names), which ``safetensors.numpy.load_file`` reads;
* ``nnscratch.sklearn.NNClassifier`` is a scikit-learn estimator: it goes into a Pipeline,
  GridSearchCV, cross_val_score.

(PyTorch, both ways: examples/09_pytorch_both_ways.py.) Needs the optional packages:
pip install onnxruntime "nnscratch[onnx,safetensors,sklearn]"

Run:  python examples/08_use_elsewhere.py
"""
import os
import tempfile

import numpy as np

import nnscratch as nn

(X, y), (X_test, y_test) = nn.datasets.load_sample()
nn.seed(0)
model = nn.models.mlp(hidden=(128,))
model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.Adam(model.parameters()),
          epochs=3, batch_size=64, seed=0, progress=False)
ours = model.predict(X_test)
print(f"nnscratch MLP, test accuracy {np.mean(ours.argmax(1) == y_test):.4f}")

with tempfile.TemporaryDirectory() as folder:
    # 1. ONNX: the graph and the weights in one file; ONNX Runtime runs it
    import onnxruntime

    onnx_path = os.path.join(folder, "mlp.onnx")
    nn.onnx.export(model, onnx_path, input_shape=(784,))   # per sample: the batch is free
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": X_test})[0]
    print(f"ONNX Runtime: largest difference from nnscratch {np.abs(theirs - ours).max():.1e}")
    assert np.abs(theirs - ours).max() < 1e-5

    # 2. safetensors: the weights by state_dict name, the architecture in the metadata
    from safetensors.numpy import load_file

    st_path = os.path.join(folder, "mlp.safetensors")
    model.save(st_path)
    tensors = load_file(st_path)
    print("safetensors holds", ", ".join(f"{k} {v.shape}" for k, v in tensors.items()))
    again = nn.load(st_path)
    assert np.array_equal(again.predict(X_test), ours)
    print("nnscratch.load(.safetensors): the same predictions, bit for bit")

# 3. scikit-learn: an estimator like any other
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nnscratch.sklearn import NNClassifier

pipe = make_pipeline(StandardScaler(),
                     NNClassifier(hidden_layer_sizes=(64,), epochs=10, random_state=0))
scores = cross_val_score(pipe, X[:1500], y[:1500], cv=3)
print(f"scikit-learn cross_val_score (3 folds): {np.round(scores, 3)}")
