"""nnscratch.onnx.export: the file passes onnx.checker, and ONNX Runtime computes what
``model.predict`` computes -- for the model recipes (ResNet-20 too), every built-in layer,
residual connections, float64 and any batch size -- while unknown layers and bad arguments
are clear errors and the file is written atomically."""
import os
import sys

import numpy as np
import pytest

import nnscratch as nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nnscratch import onnx as nn_onnx  # noqa: E402  (after the skips: onnx is optional)

ATOL32 = 1e-5        # float32: ONNX Runtime's kernels round differently from ours
ATOL64 = 1e-10       # float64 (slope and eps travel as float64 tensors: see the module)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _session(source):
    """An ONNX Runtime session on a file path or a ModelProto, one thread (shared CPUs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session, X):
    return session.run(None, {"input": X})[0]


def _train_a_little(model, sample_shape, steps=3, dtype=np.float32):
    """A few SGD steps (MSE against random targets) on inputs with mean 1.5 and std 2: the
    batch norms' running statistics, weights and biases move away from 0 and 1."""
    rng = _rng(42)
    X = rng.normal(1.5, 2.0, size=(8 * steps,) + tuple(sample_shape)).astype(dtype)
    target = rng.normal(size=(len(X),) + model.output_shape(sample_shape)).astype(dtype)
    model.fit(X, target, loss=nn.MSELoss(), optimizer=nn.SGD(model.parameters(), lr=0.01),
              epochs=1, batch_size=8, shuffle=False, progress=False)


def _assert_same_outputs(model, sample_shape, path, *, batches=(1, 7), atol=ATOL32,
                         dtype=np.float32, per_output_scale=False):
    """Export `model`, run the file in ONNX Runtime and compare with model.predict; returns
    the largest difference. `per_output_scale`: `atol` for outputs up to 1 in size, scaled
    with larger ones (a deep float32 network's rounding grows with its outputs)."""
    nn_onnx.export(model, path, sample_shape)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = _session(str(path))
    worst = 0.0
    for n in batches:                       # one session, several batch sizes: dynamic axis
        X = _rng(n).normal(size=(n,) + tuple(sample_shape)).astype(dtype)
        expected = model.predict(X)
        got = _run(session, X)
        assert got.dtype == expected.dtype == dtype
        assert got.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max())) if per_output_scale else 1.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol * scale)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


# --------------------------------------------------------------------------------------
# The model recipes, batch sizes 1 and 7
# --------------------------------------------------------------------------------------

RECIPES = [
    ("mlp", nn.models.mlp, (784,)),
    ("cnn", nn.models.cnn, (1, 28, 28)),      # batch norm, dropout, conv without bias
    ("lenet", nn.models.lenet, (1, 28, 28)),
    ("resnet20", nn.models.resnet, (1, 28, 28)),   # 9 residual blocks, 2 conv shortcuts
]


@pytest.mark.parametrize("build, sample_shape", [r[1:] for r in RECIPES],
                         ids=[r[0] for r in RECIPES])
def test_recipes_match_onnxruntime(tmp_path, build, sample_shape):
    nn.seed(0)
    model = build()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        _train_a_little(model, sample_shape, steps=2)     # running statistics != (0, 1)
    assert model.training          # export describes eval mode, whatever the model's mode
    # ResNet-20's outputs reach ~40 here (two steps leave eval-mode activations unnormalised)
    # and float32 spacing there is 4e-6: both engines are ~1e-5 from a float64 evaluation,
    # so the bound is 1e-5 per unit of output size (measured: 1.5e-5 at 43, i.e. 4e-7)
    deep = any(isinstance(m, nn.Residual) for m in model.modules())
    _assert_same_outputs(model, sample_shape, tmp_path / "model.onnx", per_output_scale=deep)
    assert model.training          # ... and leaves the mode alone


def test_file_is_valid_onnx_with_named_dynamic_io(tmp_path):
    nn.seed(0)
    model = nn.models.mlp()
    path = tmp_path / "mlp.onnx"
    assert nn_onnx.export(model, path, (784,)) == str(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.producer_name == "nnscratch" and proto.producer_version == nn.__version__
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", nn_onnx.OPSET)]
    assert nn_onnx.OPSET >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    dims = [(d.dim_param, d.dim_value) for d in inp.type.tensor_type.shape.dim]
    assert dims == [("batch", 0), ("", 784)]
    dims = [(d.dim_param, d.dim_value) for d in out.type.tensor_type.shape.dim]
    assert dims == [("batch", 0), ("", 10)]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the weights are the model's, under their state_dict names, in nnscratch's layout
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = model.state_dict()
    assert weights.keys() == state.keys()
    for name, array in state.items():
        np.testing.assert_array_equal(weights[name], array)


def test_to_model_proto_equals_the_file(tmp_path):
    nn.seed(0)
    model = nn.models.lenet()
    path = tmp_path / "lenet.onnx"
    nn_onnx.export(model, path, (1, 28, 28))
    assert path.read_bytes() == nn_onnx.to_model_proto(model, (1, 28, 28)).SerializeToString()


# --------------------------------------------------------------------------------------
# Every built-in layer, in a small model (batch sizes 1 and 7)
# --------------------------------------------------------------------------------------

def _conv_head(layers, sample_shape):
    """`layers` then Flatten and a Linear(., 3): a model with logits of every position."""
    features = int(np.prod(nn.Sequential(*layers).output_shape(sample_shape)))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, 3))


LAYER_CASES = {
    # name: (builder, per-sample shape, train a little first)
    "linear": (lambda: nn.Sequential(nn.Linear(5, 3)), (5,), True),     # (in, out): no .T
    "linear_no_bias": (lambda: nn.Sequential(nn.Linear(4, 6, bias=False)), (4,), False),
    "relu": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU()), (4,), False),
    "leaky_relu": (lambda: nn.Sequential(nn.LeakyReLU(0.2)), (6,), False),   # the slope
    "sigmoid": (lambda: nn.Sequential(nn.Sigmoid()), (6,), False),
    "tanh": (lambda: nn.Sequential(nn.Tanh()), (6,), False),
    "softmax": (lambda: nn.Sequential(nn.Linear(4, 5), nn.Softmax()), (4,), False),  # rows
    "identity": (lambda: nn.Sequential(nn.Identity(), nn.Linear(4, 2)), (4,), False),
    "flatten": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 2)), (2, 3, 4), False),
    "flatten_last": (lambda: nn.Sequential(nn.Flatten()), (2, 3, 4), False),
    "dropout": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(8, 2)), (6,), True),
    "conv_stride_padding": (lambda: _conv_head([nn.Conv2d(2, 3, 3, stride=2, padding=1)],
                                               (2, 7, 7)), (2, 7, 7), True),
    "conv_pairs": (lambda: _conv_head([nn.Conv2d(1, 2, (3, 2), stride=(2, 1),
                                                 padding=(1, 0))], (1, 5, 6)), (1, 5, 6), True),
    "conv_no_bias": (lambda: _conv_head([nn.Conv2d(2, 2, 4, stride=3, padding=2, bias=False)],
                                        (2, 5, 7)), (2, 5, 7), False),
    "maxpool_stride_lt_kernel": (lambda: nn.Sequential(nn.MaxPool2d(3, stride=2)), (2, 7, 8),
                                 False),
    "maxpool_stride_gt_kernel": (lambda: nn.Sequential(nn.MaxPool2d((2, 3), stride=(3, 1))),
                                 (1, 8, 7), False),
    "maxpool_default_stride": (lambda: nn.Sequential(nn.MaxPool2d(2)), (3, 6, 5), False),
    "avgpool_stride_lt_kernel": (lambda: nn.Sequential(nn.AvgPool2d(3, stride=2)), (2, 7, 8),
                                 False),
    "avgpool_stride_gt_kernel": (lambda: nn.Sequential(nn.AvgPool2d((2, 3), stride=(3, 1))),
                                 (1, 8, 7), False),
    "avgpool_default_stride": (lambda: nn.Sequential(nn.AvgPool2d(2)), (3, 6, 5), False),
    "avgpool_whole_plane": (lambda: nn.Sequential(nn.AvgPool2d((4, 6))), (3, 4, 6), False),
    "avgpool_in_a_cnn": (lambda: _conv_head([nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                                             nn.AvgPool2d(2, stride=1)], (2, 6, 5)),
                         (2, 6, 5), True),
    "batchnorm1d": (lambda: nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(),
                                          nn.Linear(4, 3)), (5,), True),
    "batchnorm1d_first": (lambda: nn.Sequential(nn.BatchNorm1d(5, eps=1e-3)), (5,), True),
    "batchnorm1d_3d": (lambda: nn.Sequential(nn.BatchNorm1d(3), nn.Flatten()), (3, 4), True),
    "batchnorm2d": (lambda: _conv_head([nn.Conv2d(2, 3, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(3, momentum=0.5), nn.ReLU()],
                                       (2, 6, 6)), (2, 6, 6), True),
    "global_avg_pool": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.GlobalAvgPool2d(),
                                              nn.Linear(3, 2)), (2, 5, 7), True),
    "global_avg_pool_alone": (lambda: nn.Sequential(nn.GlobalAvgPool2d()), (3, 4, 6), False),
    "residual_identity": (lambda: nn.Sequential(
        nn.Linear(4, 6), nn.Residual(nn.Sequential(nn.Linear(6, 6), nn.ReLU(),
                                                   nn.Linear(6, 6))),
        nn.ReLU(), nn.Linear(6, 2)), (4,), True),
    "residual_identity_conv_bn": (lambda: _conv_head([
        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2), nn.ReLU(),
                                  nn.Conv2d(2, 2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2))), nn.ReLU()], (2, 6, 6)), (2, 6, 6), True),
    "residual_conv_bn_shortcut": (lambda: _conv_head([   # stride 2 and more channels
        nn.Residual(nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(4)),
                    nn.Sequential(nn.Conv2d(2, 4, 1, stride=2, bias=False),
                                  nn.BatchNorm2d(4))),
        nn.ReLU(), nn.GlobalAvgPool2d()], (2, 7, 7)), (2, 7, 7), True),
    "residual_nested": (lambda: nn.Sequential(    # Sequential and Residual inside branches
        nn.Residual(nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.Tanh()),
                                  nn.Residual(nn.Linear(5, 5)), nn.Linear(5, 3)),
                    nn.Linear(4, 3)),             # a bare layer as the shortcut
        nn.Residual(nn.Sequential())), (4,), True),   # an empty body: y = x + x
    "single_residual": (lambda: nn.Residual(nn.Linear(4, 4)), (4,), False),
    "nested_sequential": (lambda: nn.Sequential(
        nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.Tanh(), nn.Identity())),
        nn.Sequential(), nn.Linear(6, 2)), (4,), True),
    "empty_sequential": (lambda: nn.Sequential(), (3,), False),
    "single_layer": (lambda: nn.Linear(4, 3), (4,), False),
}


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_matches_onnxruntime(tmp_path, case):
    build, sample_shape, train = LAYER_CASES[case]
    nn.seed(1)
    model = build()
    if train:
        _train_a_little(model, sample_shape)
    for norm in (m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))):
        # the running statistics moved away from (0, 1): a graph using batch statistics,
        # or ignoring the running ones, would give other numbers
        assert np.abs(norm.running_mean).min() > 1e-3
        assert np.abs(norm.running_var - 1).min() > 1e-3
    if isinstance(model, nn.Sequential):
        _assert_same_outputs(model, sample_shape, tmp_path / "m.onnx")
    else:                                  # a single layer: compare with its eval forward
        session = _session(nn_onnx.to_model_proto(model, sample_shape))
        X = _rng().normal(size=(7,) + sample_shape).astype(np.float32)
        np.testing.assert_allclose(_run(session, X), model.infer(X), rtol=0, atol=ATOL32)


def test_dropout_is_identity_even_in_training_mode(tmp_path):
    nn.seed(0)
    model = nn.Sequential(nn.Dropout(0.9))
    model.train()
    proto = nn_onnx.to_model_proto(model, (50,))
    X = _rng().normal(size=(4, 50)).astype(np.float32)
    np.testing.assert_array_equal(_run(_session(proto), X), X)
    assert model.training


def test_each_layer_is_one_named_node():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LeakyReLU(0.3),
                          nn.MaxPool2d(2, stride=1), nn.AvgPool2d((2, 1)), nn.Flatten(),
                          nn.Sequential(nn.Linear(2, 4), nn.Softmax()))
    graph = nn_onnx.to_model_proto(model, (1, 6, 4)).graph
    assert [(n.name, n.op_type) for n in graph.node] == [
        ("0", "Conv"), ("1", "BatchNormalization"), ("2", "LeakyRelu"), ("3", "MaxPool"),
        ("4", "AveragePool"), ("5", "Flatten"), ("6.0", "Gemm"), ("6.1", "Softmax")]
    attributes = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                  for n in graph.node}
    assert attributes["2"]["alpha"] == pytest.approx(0.3)
    assert attributes["3"]["strides"] == [1, 1] and attributes["3"]["kernel_shape"] == [2, 2]
    # no pads, floor mode (ceil_mode 0), so count_include_pad does not matter: the defaults
    assert attributes["4"] == {"kernel_shape": [2, 1], "strides": [2, 1]}
    assert attributes["6.1"]["axis"] == 1
    assert attributes["1"]["epsilon"] == pytest.approx(1e-5)


def test_residual_nodes_are_named_by_module():
    conv_bn = lambda c_in, c_out, k, stride: nn.Sequential(             # noqa: E731
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out))
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Residual(nn.Sequential(nn.ReLU(), nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)))),
        nn.Residual(nn.Sequential(conv_bn(2, 4, 3, 2), nn.ReLU(), conv_bn(4, 4, 3, 1)),
                    conv_bn(2, 4, 1, 2)),
        nn.GlobalAvgPool2d(), nn.Linear(4, 3))
    graph = nn_onnx.to_model_proto(model, (1, 6, 6)).graph
    assert [(n.name, n.op_type) for n in graph.node] == [
        ("0", "Conv"),
        ("1.body.0", "Relu"), ("1.body.1.0", "Conv"), ("1", "Add"),
        ("2.body.0.0", "Conv"), ("2.body.0.1", "BatchNormalization"), ("2.body.1", "Relu"),
        ("2.body.2.0", "Conv"), ("2.body.2.1", "BatchNormalization"),
        ("2.shortcut.0", "Conv"), ("2.shortcut.1", "BatchNormalization"), ("2", "Add"),
        ("3", "ReduceMean"), ("4", "Gemm")]
    nodes = {n.name: n for n in graph.node}
    assert list(nodes["1"].input) == ["1.body.1.0", "0"]              # identity: x itself
    assert list(nodes["2"].input) == ["2.body.2.1", "2.shortcut.1"]
    assert list(nodes["2.body.0.0"].input)[0] == list(nodes["2.shortcut.0"].input)[0] == "1"
    pool = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["3"].attribute}
    assert pool == {"axes": [2, 3], "keepdims": 0}
    weights = {t.name for t in graph.initializer}
    assert weights == set(model.state_dict())         # the state_dict names, nothing else


def test_residual_whose_branches_disagree_is_a_named_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Residual(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=r"layer '1' \(Residual\).*\(3,\).*identity.*\(4,\)"):
        nn_onnx.to_model_proto(model, (4,))
    model = nn.Sequential(nn.Residual(nn.Linear(4, 3), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"layer '0' \(Residual\).*the shortcut \(2,\)"):
        nn_onnx.to_model_proto(model, (4,))
    # a layer inside a branch that does not fit is named itself
    model = nn.Sequential(nn.Residual(nn.Sequential(nn.Linear(5, 4))))
    with pytest.raises(ValueError, match=r"layer '0\.body\.0' \(Linear\)"):
        nn_onnx.to_model_proto(model, (4,))


# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------

def test_float64_model_keeps_float64(tmp_path):
    f64 = np.float64
    nn.seed(2)
    model = nn.Sequential(nn.Linear(5, 8, dtype=f64), nn.BatchNorm1d(8, eps=1e-3, dtype=f64),
                          nn.LeakyReLU(0.01), nn.Dropout(0.3), nn.Linear(8, 6, dtype=f64),
                          nn.Tanh(), nn.Linear(6, 4, dtype=f64), nn.Sigmoid(),
                          nn.Linear(4, 3, dtype=f64), nn.Softmax())
    _train_a_little(model, (5,), dtype=f64)
    proto = nn_onnx.to_model_proto(model, (5,))
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    _assert_same_outputs(model, (5,), tmp_path / "f64.onnx", atol=ATOL64, dtype=f64)


def test_float64_slope_and_eps_are_exact(tmp_path):
    # 0.01 and 1e-3 are not float32 numbers. Where they matter -- large negative inputs for
    # the slope, channels of small variance for eps -- float32 attributes move these outputs
    # (up to ~1e4) by 5e-6 (the slope) and 2e-4 (eps); float64 tensors: within 1e-10
    f64 = np.float64
    nn.seed(2)
    model = nn.Sequential(nn.Linear(5, 8, dtype=f64), nn.BatchNorm1d(8, eps=1e-3, dtype=f64),
                          nn.LeakyReLU(0.01), nn.Linear(8, 3, dtype=f64))
    _train_a_little(model, (5,), dtype=f64)
    norm, leaky = model[1], model[2]
    norm.running_var[:] = _rng(3).uniform(1e-4, 1e-3, size=8)    # near-constant features
    X = 100 * _rng(4).normal(size=(7, 5))
    expected = model.predict(X)
    got = _run(_session(nn_onnx.to_model_proto(model, (5,))), X)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL64)
    # the test can tell: the constants rounded to float32 give other outputs
    leaky.negative_slope, norm.eps = float(np.float32(0.01)), float(np.float32(1e-3))
    assert np.abs(model.predict(X) - expected).max() > 1e3 * ATOL64


def test_float64_slope_and_eps_are_float64_tensors():
    def build(dtype):
        return nn.Sequential(nn.Linear(3, 4, dtype=dtype),
                             nn.BatchNorm1d(4, eps=1e-3, dtype=dtype), nn.LeakyReLU(0.01))

    nn.seed(5)
    model = build(np.float64)
    _train_a_little(model, (3,), dtype=np.float64)
    graph = nn_onnx.to_model_proto(model, (3,)).graph
    assert [(n.name, n.op_type) for n in graph.node] == [
        ("0", "Gemm"), ("1.var_plus_eps", "Add"), ("1", "BatchNormalization"), ("2", "PRelu")]
    nodes = {n.name: n for n in graph.node}
    assert list(nodes["1.var_plus_eps"].input) == ["1.running_var", "1.eps"]
    assert list(nodes["1"].input)[4] == "1.var_plus_eps"
    assert onnx.helper.get_attribute_value(nodes["1"].attribute[0]) == 0.0    # epsilon
    assert list(nodes["2"].input) == ["1", "2.negative_slope"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    assert weights.pop("1.eps") == 1e-3 and weights.pop("2.negative_slope") == 0.01  # exact
    assert weights.keys() == model.state_dict().keys()
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(weights[name], array)
    # float32 keeps one node per layer, the constants as attributes
    graph = nn_onnx.to_model_proto(build(np.float32), (3,)).graph
    assert [(n.name, n.op_type) for n in graph.node] == [
        ("0", "Gemm"), ("1", "BatchNormalization"), ("2", "LeakyRelu")]
    attributes = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                  for n in graph.node}
    assert attributes["1"]["epsilon"] == pytest.approx(1e-3)
    assert attributes["2"]["alpha"] == pytest.approx(0.01)


def test_float64_cnn_with_the_onnx_reference_evaluator():
    # ONNX Runtime's CPU provider has no float64 Conv: onnx's own evaluator runs the graph
    from onnx.reference import ReferenceEvaluator

    nn.seed(3)
    model = _conv_head([nn.Conv2d(1, 2, 3, stride=2, padding=1, dtype=np.float64),
                        nn.BatchNorm2d(2, eps=1e-3, dtype=np.float64), nn.LeakyReLU(0.01),
                        nn.MaxPool2d(2)], (1, 8, 8))
    model[-1] = nn.Linear(model[-1].in_features, 3, dtype=np.float64)
    _train_a_little(model, (1, 8, 8), dtype=np.float64)
    X = _rng().normal(size=(3, 1, 8, 8))
    got = ReferenceEvaluator(nn_onnx.to_model_proto(model, (1, 8, 8))).run(None, {"input": X})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(X), rtol=0, atol=ATOL64)


def test_float64_average_pools_with_the_onnx_reference_evaluator():
    # (ONNX Runtime's CPU provider has no float64 AveragePool either)
    from onnx.reference import ReferenceEvaluator

    nn.seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64),
                          nn.AvgPool2d(3, stride=2), nn.AvgPool2d((1, 2), stride=1),
                          nn.GlobalAvgPool2d(), nn.Linear(3, 2, dtype=np.float64))
    _train_a_little(model, (2, 9, 8), dtype=np.float64)
    X = _rng().normal(size=(3, 2, 9, 8))
    got = ReferenceEvaluator(nn_onnx.to_model_proto(model, (2, 9, 8))).run(None, {"input": X})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(X), rtol=0, atol=ATOL64)


def test_float64_resnet_with_the_onnx_reference_evaluator():
    # a ResNet-8 of width 2 (both kinds of shortcut, global pooling) in float64
    from onnx.reference import ReferenceEvaluator

    nn.seed(6)
    model = nn.models.resnet(depth=8, width=2, num_classes=3, dtype=np.float64)
    _train_a_little(model, (1, 8, 8), steps=2, dtype=np.float64)
    X = _rng().normal(size=(3, 1, 8, 8))
    evaluator = ReferenceEvaluator(nn_onnx.to_model_proto(model, (1, 8, 8)))
    got = evaluator.run(None, {"input": X})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, model.predict(X), rtol=0, atol=ATOL64)


def test_mixed_dtypes_get_a_cast():
    nn.seed(4)
    model = nn.Sequential(nn.Linear(4, 5, dtype=np.float64), nn.ReLU(), nn.Linear(5, 3))
    proto = nn_onnx.to_model_proto(model, (4,))
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Relu", "Cast", "Gemm"]
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    X = _rng().normal(size=(7, 4))
    np.testing.assert_allclose(_run(_session(proto), X), model.predict(X), rtol=0, atol=ATOL32)


def test_residual_of_mixed_dtypes_adds_as_numpy():
    # a float64 body on a float32 input: NumPy's sum is float64, so the identity is cast
    nn.seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Residual(nn.Linear(4, 4, dtype=np.float64)))
    proto = nn_onnx.to_model_proto(model, (3,))
    assert [(n.name, n.op_type) for n in proto.graph.node] == [
        ("0", "Gemm"), ("1.body.cast", "Cast"), ("1.body", "Gemm"),
        ("1.shortcut.cast", "Cast"), ("1", "Add")]
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    X = _rng().normal(size=(7, 3)).astype(np.float32)
    expected = model.infer(X)           # (predict would cast to the first layer's float32)
    got = _run(_session(proto), X)
    assert got.dtype == expected.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL32)


# --------------------------------------------------------------------------------------
# Layers export does not know
# --------------------------------------------------------------------------------------

class Scale(nn.Module):
    """A user's layer: y = 2 x."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad_out, *, compute_grad_input=True):
        return 2 * grad_out


class DoubledReLU(nn.ReLU):
    """A subclass of a built-in layer that changes what it computes."""

    def _f(self, K, x, out=None):
        return 2 * K.relu_forward(x, out)


class NamedLinear(nn.Linear):
    """A subclass that keeps Linear's computation (only the constructor differs)."""

    def __init__(self):
        super().__init__(4, 2)


def test_user_layer_is_a_named_error(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Scale()), nn.Linear(4, 2))
    path = tmp_path / "m.onnx"
    with pytest.raises(TypeError, match=r"'1\.1' \(Scale\)") as info:
        nn_onnx.export(model, path, (4,))
    assert "test_onnx.Scale" in str(info.value)         # module and class
    assert not os.listdir(tmp_path)                      # nothing written


class GatedResidual(nn.Residual):
    """A Residual that changes how the branches are added."""

    def _sum(self, y, s):
        return y + 0.5 * s


def test_subclass_changing_the_computation_is_an_error():
    with pytest.raises(TypeError, match=r"'0' \(DoubledReLU\)"):
        nn_onnx.to_model_proto(nn.Sequential(DoubledReLU()), (3,))
    with pytest.raises(TypeError, match=r"'1' \(GatedResidual\)"):
        nn_onnx.to_model_proto(nn.Sequential(nn.ReLU(), GatedResidual(nn.ReLU())), (3,))


def test_subclass_keeping_the_computation_exports():
    nn.seed(0)
    model = nn.Sequential(NamedLinear(), nn.ReLU())
    X = _rng().normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(_session(nn_onnx.to_model_proto(model, (4,))), X),
                               model.predict(X), rtol=0, atol=ATOL32)


def test_module_list_is_an_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.ModuleList([nn.ReLU()]))
    with pytest.raises(TypeError, match=r"'1' \(ModuleList\).*Sequential"):
        nn_onnx.to_model_proto(model, (3,))


# --------------------------------------------------------------------------------------
# Arguments, the file, the optional dependency
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("input_shape, error, match", [
    ("784", TypeError, "input_shape must be a tuple"),
    (None, TypeError, "input_shape must be a tuple"),
    ((), ValueError, "at least one dimension"),
    ((0,), ValueError, r"input_shape\[0\] must be >= 1"),
    ((784, -1), ValueError, r"input_shape\[1\] must be >= 1"),
    ((784.0,), TypeError, r"input_shape\[0\] must be an int"),
    ((True,), TypeError, r"input_shape\[0\] must be an int"),
    ((1, 784), ValueError, r"input_shape does not fit the model at layer '0' \(Linear\)"),
    ((783,), ValueError, "without the batch axis"),
])
def test_bad_input_shape(tmp_path, input_shape, error, match):
    model = nn.models.mlp()
    with pytest.raises(error, match=match):
        nn_onnx.export(model, tmp_path / "m.onnx", input_shape)
    assert not os.listdir(tmp_path)


def test_input_shape_forms():
    model = nn.Sequential(nn.Linear(3, 2))
    protos = [nn_onnx.to_model_proto(model, s).SerializeToString()
              for s in [(3,), [3], 3, (np.int64(3),)]]
    assert len(set(protos)) == 1


def test_bad_path_and_model(tmp_path):
    model = nn.models.mlp()
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        nn_onnx.export(model, None, (784,))
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        nn_onnx.export(model, b"m.onnx", (784,))
    with pytest.raises(ValueError, match="path must not be empty"):
        nn_onnx.export(model, "", (784,))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        nn_onnx.export(model, tmp_path, (784,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nn_onnx.export(model, tmp_path / "missing" / "m.onnx", (784,))
    with pytest.raises(TypeError, match="model must be an nnscratch Module"):
        nn_onnx.export("mlp", tmp_path / "m.onnx", (784,))
    assert os.listdir(tmp_path) == []


def _fail_halfway_through_the_bytes(monkeypatch, tmp_path, seen):
    """The disk fills up after half of the file: the writer dies in the middle."""
    from nnscratch import serialization

    def write_half_then_fail(path, data):
        def write(f):
            f.write(data[:len(data) // 2])
            f.flush()
            seen.extend(_temp_files(tmp_path))
            raise OSError(28, "No space left on device")
        serialization._write_atomically(path, write)
    monkeypatch.setattr(nn_onnx, "write_bytes_atomic", write_half_then_fail)


def _fail_at_the_rename(monkeypatch, tmp_path, seen):
    """Every byte is in the temporary file (flushed, fsynced), then the rename fails."""
    from nnscratch import serialization

    def fail(src, dst):
        seen.extend(_temp_files(tmp_path))
        raise PermissionError(13, "Permission denied", dst)
    monkeypatch.setattr(serialization.os, "replace", fail)   # (the atomic writer's rename)


def _temp_files(folder):
    """(name, size) of each file there other than model.onnx."""
    return [(name, os.path.getsize(folder / name)) for name in os.listdir(folder)
            if name != "model.onnx"]


@pytest.mark.parametrize("break_the_write", [_fail_halfway_through_the_bytes,
                                             _fail_at_the_rename])
def test_write_failing_midway_keeps_the_old_file(monkeypatch, tmp_path, break_the_write):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    seen = []                           # the temporary files there when the write failed
    break_the_write(monkeypatch, tmp_path, seen)
    with pytest.raises(OSError):
        nn_onnx.export(nn.models.lenet(), path, (1, 28, 28))
    (name, size), = seen                # it failed with new bytes on disk, mid-write ...
    assert name.startswith(".model.onnx.") and size > 1000
    assert path.read_bytes() == b"old"                 # ... and the old file, alone,
    assert os.listdir(tmp_path) == ["model.onnx"]      # is what remains


def test_write_replaces_the_file_completely(tmp_path):
    nn.seed(0)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    small = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(TypeError):                       # a refused model: nothing written
        nn_onnx.export(nn.Sequential(Scale()), path, (4,))
    assert path.read_bytes() == b"old"
    nn_onnx.export(small, str(path), (4,))               # replaces it, str path too
    assert os.listdir(tmp_path) == ["model.onnx"]         # no temporary file left
    assert onnx.load(str(path)).SerializeToString() == path.read_bytes()
    assert path.read_bytes() == nn_onnx.to_model_proto(small, (4,)).SerializeToString()


def test_missing_onnx_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)       # `import onnx` now fails
    with pytest.raises(ImportError, match=r'pip install "nnscratch\[onnx\]"'):
        nn_onnx.export(nn.models.mlp(), tmp_path / "m.onnx", (784,))
    assert not os.listdir(tmp_path)


def test_export_changes_nothing_in_the_model():
    nn.seed(0)
    model = nn.models.cnn()
    _train_a_little(model, (1, 28, 28), steps=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.eval()
    nn_onnx.to_model_proto(model, (1, 28, 28))
    assert not model.training
    after = model.state_dict()
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array)


def test_a_hooked_model_exports_as_without_the_hooks(tmp_path):
    # a forward hook (module.register_forward_hook) is not part of the computation: the
    # export is the same bytes with and without one
    model = nn.models.mlp(hidden=(16,))
    plain = nn_onnx.to_model_proto(model, (784,)).SerializeToString()
    with model[1].register_forward_hook(lambda module, inputs, output: None):
        hooked = nn_onnx.to_model_proto(model, (784,)).SerializeToString()
    assert hooked == plain
