"""`linear_chain_forward`: a run of linear layers in one kernel call, and Sequential's use of it.

The kernel is held against its NumPy twin (random shapes with 1, odd and prime sizes, both
dtypes), against one `linear_forward` per layer bit for bit (every way a product is shared
out among threads: one thread, slabs, halves of k; 1 to 3 threads) and against PyTorch.
Sequential runs each run of two or more plain Linear[-ReLU] steps as one chain step; its
outputs, the state it leaves in the layers and the gradients after it are those of the
layer-by-layer forward.
"""
import textwrap

import numpy as np
import pytest

import cnn_core
import nnscratch as nn
from cnn_core import reference
from conftest import assert_close, nan_array, outputs_under_thread_limits, randn
from nnscratch.bench import _mlp
from nnscratch.explain import explain_step
from nnscratch.model import _LinearChain

BOTH = [cnn_core, reference]


def chain_args(rng, dtype, n, features, bias=True, relu=None):
    layers = len(features) - 1
    x = randn(rng, (n, features[0]), dtype)
    weights = [randn(rng, (a, b), dtype, 1 / np.sqrt(max(a, 1)))
               for a, b in zip(features, features[1:])]
    biases = [randn(rng, (b,), dtype) if (bias is True or (bias == "some" and i % 2 == 0))
              else None for i, b in enumerate(features[1:])]
    if relu is None:
        relu = [i < layers - 1 for i in range(layers)]
    activations = ["relu" if r else None for r in relu]
    return x, weights, biases, activations


def per_layer(mod, x, weights, biases, activations):
    out, results = x, []
    for w, b, act in zip(weights, biases, activations):
        out = mod.linear_forward(out, w, b, activation=act)
        results.append(out)
    return results


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 64])
@pytest.mark.parametrize("features", [[1, 1], [5, 3, 2], [784, 256, 128, 10], [31, 17, 1, 29],
                                      [2, 97, 3, 11, 5]])
@pytest.mark.parametrize("bias", [True, False, "some"])
def test_matches_twin(rng, dtype, n, features, bias):
    x, weights, biases, activations = chain_args(rng, dtype, n, features, bias)
    got = cnn_core.linear_chain_forward(x, weights, biases, activations)
    expected = reference.linear_chain_forward(x, weights, biases, activations)
    assert isinstance(got, tuple) and len(got) == len(weights)
    for g, e, k in zip(got, expected, features):
        assert_close(g, e, k=k)


# (how each product is shared out: cnn_core/_gemm.pyx, _split)
SHARED_OUT = [
    (1, [784, 256, 128, 10]),        # halves of k (row kernel), then one thread twice
    (2, [1001, 300, 170]),           # halves (row kernel), then one thread
    (3, [257, 263, 5]),              # halves, one thread
    (1, [3, 70000, 2]),              # halves, halves (k = 70000)
    (1, [2, 131082, 3]),             # slabs of the row kernel's columns (a last partial
    (3, [17, 50011, 5]),             # vector in the last slab), then halves
    (16, [784, 256, 128, 10]),       # halves by the micro-kernels, halves, one thread
    (128, [784, 256, 128, 10]),      # halves, slabs along n, slabs along m
    (37, [45, 2001, 45]),            # slabs along n, then halves
    (5, [20, 3001, 7, 3001]),        # halves, halves, one thread
    (300, [13, 40, 3]),              # one thread, slabs along m
]


@pytest.mark.parametrize("n,features", SHARED_OUT)
def test_bits_of_one_linear_forward_per_layer(rng, dtype, n, features):
    # each product is shared out among the threads as linear_forward would share it: the
    # same sums in the same order, so the same bits, whatever the thread count
    x, weights, biases, activations = chain_args(rng, dtype, n, features)
    before = cnn_core.get_num_threads()
    try:
        for threads in (1, 2, 3):
            cnn_core.set_num_threads(threads)
            expected = per_layer(cnn_core, x, weights, biases, activations)
            got = cnn_core.linear_chain_forward(x, weights, biases, activations)
            for g, e in zip(got, expected):
                assert g.dtype == e.dtype and g.shape == e.shape
                assert np.array_equal(g.view(np.uint8), e.view(np.uint8))
            if threads == 1:
                first = got
            else:
                for g, f in zip(got, first):
                    assert np.array_equal(g.view(np.uint8), f.view(np.uint8))
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_outs_written_in_place(rng, dtype, mod):
    x, weights, biases, activations = chain_args(rng, dtype, 4, [9, 7, 5, 3])
    outs = [nan_array((4, 7), dtype), None, nan_array((4, 3), dtype)]
    got = mod.linear_chain_forward(x, weights, biases, activations, outs)
    assert got[0] is outs[0] and got[2] is outs[2]
    expected = per_layer(reference, x, weights, biases, activations)
    for g, e in zip(got, expected):
        assert_close(g, e, k=9)


def test_a_smaller_team_than_asked_for(tmp_path):
    # OpenMP may give the parallel region fewer threads than asked for (here one, under
    # OMP_THREAD_LIMIT=1): that one runs every share, and the bits stay the same
    script = tmp_path / "team.py"
    script.write_text(textwrap.dedent('''
        import sys
        import numpy as np
        import cnn_core
        rng = np.random.default_rng(0)
        n, features = int(sys.argv[1]), [int(f) for f in sys.argv[2:]]
        x = rng.standard_normal((n, features[0])).astype(np.float32)
        ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(features, features[1:])]
        bs = [rng.standard_normal(b).astype(np.float32) for b in features[1:]]
        acts = ["relu"] * (len(ws) - 1) + [None]
        cnn_core.set_num_threads(3)
        out = cnn_core.linear_chain_forward(x, ws, bs, acts)[-1]
        sys.stdout.write(out.tobytes().hex())
    '''))
    for n, features in [(1, [784, 256, 10]), (128, [784, 256, 128, 10]), (300, [13, 40, 3])]:
        outputs = outputs_under_thread_limits(script, [n, *features])
        assert outputs[0] == outputs[1] and len(outputs[0]) == 2 * 4 * n * features[-1]


def test_relu_and_nan(dtype):
    # relu(z) = max(z, 0), NaN staying NaN, in every layer it is asked for (and only there)
    x = np.array([[1.0, -2.0]], dtype)
    w1 = np.array([[1.0, -1.0, 2.0], [1.0, 1.0, 0.0]], dtype)      # z1 = [-1, -3, 2]
    w2 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, np.nan]], dtype)  # z2 = [-2, NaN]
    for mod in BOTH:
        h1, h2 = mod.linear_chain_forward(x, [w1, w2], [None, None], ["relu", "relu"])
        assert h1.tolist() == [[0.0, 0.0, 2.0]]
        assert h2[0, 0] == 0 and np.isnan(h2[0, 1])
        h1, h2 = mod.linear_chain_forward(x, [w1, w2], [None, None], [None, None])
        assert h1.tolist() == [[-1.0, -3.0, 2.0]]
        assert h2[0, 0] == -1 - 2 and np.isnan(h2[0, 1])


@pytest.mark.parametrize("n,features", [(0, [3, 4, 2]), (2, [0, 4, 2]), (2, [3, 0, 2]),
                                        (2, [3, 4, 0]), (0, [0, 0])])
def test_zero_size(rng, dtype, n, features):
    # NumPy's answers: empty outputs, or bias (+ ReLU) after a layer of width 0
    x, weights, biases, activations = chain_args(rng, dtype, n, features, relu=[True] * (
        len(features) - 1))
    got = cnn_core.linear_chain_forward(x, weights, biases, activations)
    expected = reference.linear_chain_forward(x, weights, biases, activations)
    for g, e in zip(got, expected):
        assert_close(g, e)


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_bad_arguments_name_what_is_wrong(rng, mod):
    x, weights, biases, activations = chain_args(rng, np.float32, 2, [4, 3, 2])
    f = mod.linear_chain_forward
    cases = [
        (ValueError, "weights is empty", lambda: f(x, [], [], [])),
        (ValueError, "biases has 1", lambda: f(x, weights, biases[:1], activations)),
        (ValueError, "activations has 3", lambda: f(x, weights, biases, activations + [None])),
        (ValueError, "outs has 1", lambda: f(x, weights, biases, activations, [None])),
        (ValueError, r"weights\[1\] has shape \(2, 2\)",
         lambda: f(x, [weights[0], np.ones((2, 2), np.float32)], biases, activations)),
        (ValueError, r"weights\[0\] has shape \(5, 3\)",
         lambda: f(x, [np.ones((5, 3), np.float32), weights[1]], biases, activations)),
        (TypeError, r"weights\[1\] has dtype float64",
         lambda: f(x, [weights[0], weights[1].astype(np.float64)], biases, activations)),
        (ValueError, r"biases\[0\] has shape \(4,\)",
         lambda: f(x, weights, [np.ones(4, np.float32), None], activations)),
        (TypeError, r"biases\[1\] has dtype float64",
         lambda: f(x, weights, [None, np.ones(2)], activations)),
        (ValueError, r"activations\[0\] must be None or 'relu'",
         lambda: f(x, weights, biases, ["tanh", None])),
        (ValueError, r"outs\[1\] has shape \(2, 3\)",
         lambda: f(x, weights, biases, activations, [None, np.ones((2, 3), np.float32)])),
        (TypeError, "weights", lambda: f(x, 3, biases, activations)),
        (TypeError, r"weights\[0\] must be a numpy.ndarray", lambda: f(x, [[1.0], weights[1]],
                                                                      biases, activations)),
        (ValueError, "x must be 2-D", lambda: f(x[0], weights, biases, activations)),
        (TypeError, "activations must be a list or tuple", lambda: f(x, weights, biases,
                                                                     {None, "relu"})),
        (ValueError, r"activations\[1\] must be None or 'relu'",
         lambda: f(x, weights, biases, ["relu", np.array([])])),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind, match=message):
            call()


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_outs_sharing_memory_are_refused(rng, mod):
    # a buffer is written while the inputs and the other outputs are read (by several
    # threads): one that overlaps any of them would give a silent wrong answer
    x, weights, biases, activations = chain_args(rng, np.float32, 3, [3, 3, 3, 3])
    f = mod.linear_chain_forward
    buf = np.zeros((3, 3), np.float32)
    big = np.zeros(100, np.float32)
    cases = [
        ("outs\\[0\\] overlaps x", [x, None, None]),
        (r"outs\[2\] overlaps weights\[1\]", [None, None, weights[1]]),
        (r"outs\[1\] overlaps biases\[0\]", None),
        (r"outs\[0\] overlaps outs\[1\]", [buf, buf, None]),
        (r"outs\[0\] overlaps outs\[2\]", [big[:9].reshape(3, 3), None,
                                            big[5:14].reshape(3, 3)]),
    ]
    for message, outs in cases:
        if outs is None:        # a bias inside the buffer's memory
            store = np.zeros(12, np.float32)
            biases_here = [store[3:6], biases[1], biases[2]]
            with pytest.raises(ValueError, match=message):
                f(x, weights, biases_here, activations, [None, store[3:].reshape(3, 3), None])
            continue
        with pytest.raises(ValueError, match=message):
            f(x, weights, biases, activations, outs)
    # side by side in one array, not overlapping: fine
    got = f(x, weights, biases, activations, [big[:9].reshape(3, 3), big[9:18].reshape(3, 3),
                                              big[18:27].reshape(3, 3)])
    assert_close(got[2], reference.linear_chain_forward(x, weights, biases, activations)[2])


def test_a_rejected_call_writes_no_output(rng):
    # every argument is checked before any layer runs
    x, weights, biases, activations = chain_args(rng, np.float32, 2, [4, 3, 2])
    first = nan_array((2, 3), np.float32)
    for mod in BOTH:
        with pytest.raises(ValueError):
            mod.linear_chain_forward(x, weights, biases, activations,
                                     [first, np.ones((5, 5), np.float32)])
        assert np.isnan(first).all()


def test_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    x, weights, biases, activations = chain_args(rng, dtype, 3, [784, 256, 128, 10])
    got = cnn_core.linear_chain_forward(x, weights, biases, activations)[-1]
    with torch.no_grad():
        h = torch.from_numpy(x.copy())
        for w, b, act in zip(weights, biases, activations):
            h = torch.nn.functional.linear(h, torch.from_numpy(w.T.copy()), torch.from_numpy(b))
            h = torch.relu(h) if act else h
    assert_close(got, h.numpy(), k=784)


# ---------------------------------------------------------------------------------------
# Sequential

def mlp(dtype=np.float32, sizes=(784, 256, 128, 10)):
    nn.seed(3)
    return _mlp(list(sizes), dtype)     # Linear, ReLU, ..., Linear


def by_hand(model, x):
    """The layer-by-layer forward, without the chain: each Linear directly followed by a
    ReLU computed as one fused linear_forward (the ReLU keeping its output), any other
    layer by its own forward."""
    out, layers, i = x, model.layers, 0
    while i < len(layers):
        if isinstance(layers[i], nn.Linear) and i + 1 < len(layers) and \
                type(layers[i + 1]) is nn.ReLU:
            out = layers[i + 1].keep_output(layers[i].forward(out, activation="relu"))
            i += 2
        else:
            out = layers[i].forward(out)
            i += 1
    return out


def test_sequential_runs_linear_runs_as_one_chain():
    model = mlp()
    steps = model._plan()[1]
    assert len(steps) == 1 and type(steps[0][0]) is _LinearChain
    assert steps[0][0].activations == ("relu", "relu", None)
    # broken by a layer in between; a single Linear stays a plain step
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.Dropout(0.5),
                          nn.Linear(6, 2))
    kinds = [type(layer).__name__ for layer, _ in model._plan()[1]]
    assert kinds == ["_LinearChain", "Dropout", "Linear"]


def test_unchainable_layers_run_on_their_own():
    class Doubling(nn.Linear):
        def forward(self, x, *, activation=None):
            return 2 * super().forward(x, activation=activation)

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), Doubling(3, 2))
    assert all(type(layer) is not _LinearChain for layer, _ in model._plan()[1])
    x = np.ones((2, 4), np.float32)
    lin, dbl = model.layers[0], model.layers[2]
    expected = 2 * (np.maximum(x @ lin.weight.data + lin.bias.data, 0) @ dbl.weight.data
                    + dbl.bias.data)
    assert_close(model(x), expected)
    # features that do not follow on, or two dtypes: no chain, and the layer's own error
    mixed = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, dtype=np.float64))
    assert all(type(layer) is not _LinearChain for layer, _ in mixed._plan()[1])
    assert mixed(x).dtype == np.float64
    wrong = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(5, 2))
    assert all(type(layer) is not _LinearChain for layer, _ in wrong._plan()[1])
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*expects input of shape"):
        wrong(x)


@pytest.mark.parametrize("n", [1, 3, 128])
def test_sequential_chain_output_state_and_gradients(rng, dtype, n):
    model, twin = mlp(dtype), mlp(dtype)
    x = randn(rng, (n, 784), dtype)
    for training in (True, False):
        model.train(training)
        twin.train(training)
        out = model(x)
        expected = by_hand(twin, x)
        assert np.array_equal(out, expected)
        # each layer keeps what its own forward would keep
        for a, b in zip(model.layers, twin.layers):
            for attr in ("_x", "_kept"):
                if hasattr(b, attr):
                    assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
        g = randn(rng, out.shape, dtype)
        model.zero_grad()
        twin.zero_grad()
        gx = model.backward(g.copy())
        gx_twin = twin.backward(g.copy())
        assert_close(gx, gx_twin)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p.grad, q.grad)


def test_sequential_chain_buffers_and_fresh_arrays(rng):
    model = mlp()
    x = randn(rng, (4, 784), np.float32)
    model.train()
    a = model(x)
    b = model(x + 1)
    assert a is b                       # training mode: the kept buffer, as documented
    model.eval()
    c = model(x)
    d = model(x)
    assert c is not d and np.array_equal(c, d) and not np.shares_memory(c, d)
    assert np.array_equal(model.infer(x), c)
    assert np.array_equal(model.predict(x), c)


def test_sequential_chain_casts_and_checks_its_input(rng):
    model = mlp()
    x = rng.integers(0, 255, (2, 784)).astype(np.uint8)
    assert_close(model(x), by_hand(mlp(), x.astype(np.float32)))
    assert_close(model(x.astype(np.float64)), by_hand(mlp(), x.astype(np.float32)))
    with pytest.raises(ValueError, match=r"Linear\(in_features=784.*expects input of shape"):
        model(np.ones((2, 783), np.float32))


def test_sequential_chain_follows_replaced_weights(rng):
    model = mlp(sizes=(6, 5, 4))
    x = randn(rng, (3, 6), np.float32)
    model(x)
    model.layers[2].weight.data = np.zeros((5, 4), np.float32)
    assert np.array_equal(model(x), np.broadcast_to(model.layers[2].bias.data, (3, 4)))
    model.layers[2] = nn.Linear(5, 4)
    assert_close(model(x), by_hand(model, x))


def test_sequential_chain_follows_rebound_parameters(rng):
    # the chain keeps the weights' arrays between calls: a Parameter put in a layer's place
    # (not only new values copied into the old one) must be seen at once
    model = mlp(sizes=(6, 5, 4)).eval()
    x = randn(rng, (3, 6), np.float32)
    model(x)
    model.layers[0].weight = nn.Parameter(np.full((6, 5), 0.5, np.float32))
    model.layers[2].bias = None
    assert_close(model(x), by_hand(model, x))
    model.layers[2].bias = nn.Parameter(np.arange(4, dtype=np.float32))
    assert_close(model(x), by_hand(model, x))


def test_linear_parameters_cannot_be_deleted_and_an_own_weight_attribute_is_not_chained(rng):
    layer = nn.Linear(3, 2)
    with pytest.raises(AttributeError, match="cannot delete bias of Linear: assign a "
                                             r"Parameter \(or None\)"):
        del layer.bias
    assert isinstance(layer.bias, nn.Parameter)

    class Tied(nn.Linear):          # its weight read through a property: not kept by a chain
        @property
        def weight(self):
            return self.shared

        @weight.setter
        def weight(self, value):
            self.shared = value

    nn.seed(2)
    tied = Tied(5, 4)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), tied).eval()
    assert not any(type(step) is _LinearChain for step, _ in model._plan()[1])
    x = randn(rng, (3, 6), np.float32)
    model(x)
    tied.shared = nn.Parameter(np.ones((5, 4), np.float32))
    assert_close(model(x), by_hand(model, x))


@pytest.mark.parametrize("change", [
    "setitem", "setslice", "delitem", "append", "extend", "insert", "pop", "remove", "iadd",
    "imul", "clear", "sort", "reverse", "assign"])
def test_sequential_sees_every_change_to_its_list_of_layers(rng, change):
    # the run plan is kept while the list is unchanged: every way of changing it counts
    nn.seed(4)
    a, b, c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
    model = nn.Sequential(a, nn.ReLU(), b).eval()
    x = randn(rng, (2, 6), np.float32)
    model(x)
    layers = model.layers
    if change == "setitem":
        layers[2] = c
    elif change == "setslice":
        layers[1:] = [c]
    elif change == "delitem":
        del layers[1:]
    elif change == "append":
        layers.append(c)
    elif change == "extend":
        layers.extend([nn.Tanh(), c])
    elif change == "insert":
        layers.insert(0, c)
    elif change == "pop":
        layers.pop()
    elif change == "remove":
        layers.remove(b)
    elif change == "iadd":
        model.layers += [c]
    elif change == "imul":
        model.layers = [a]
        model(x)
        model.layers *= 2
    elif change == "clear":
        layers.clear()
    elif change == "sort":
        layers.sort(key=lambda layer: type(layer).__name__, reverse=True)  # ReLU first
    elif change == "reverse":
        layers.reverse()
    else:
        model.layers = [c, nn.ReLU(), a]
        model(x)
        model.layers[0] = b       # a plain list: compared layer by layer
    expected = x
    for layer in list(model):
        expected = layer.forward(expected)
    assert_close(model(x), expected)


def test_sequential_chain_without_biases_and_with_a_plain_subclass(rng, dtype):
    class Named(nn.Linear):         # a subclass that computes what Linear does: chained
        def extra_repr(self):
            return "named"

    nn.seed(5)
    model = nn.Sequential(nn.Linear(7, 5, bias=False, dtype=dtype), nn.ReLU(),
                          Named(5, 4, dtype=dtype), nn.Linear(4, 3, bias=False, dtype=dtype))
    steps = model._plan()[1]
    assert len(steps) == 1 and type(steps[0][0]) is _LinearChain
    x = randn(rng, (2, 7), dtype)
    expected = by_hand(model, x)
    assert np.array_equal(model(x), expected)


def test_a_linear_with_its_own_call_is_not_chained():
    class Traced(nn.Linear):
        calls = 0

        def __call__(self, x):
            Traced.calls += 1
            return super().__call__(x)

    model = nn.Sequential(nn.Linear(4, 3), Traced(3, 2))
    assert all(type(layer) is not _LinearChain for layer, _ in model._plan()[1])
    model(np.ones((1, 4), np.float32))
    assert Traced.calls == 1


def test_a_layer_object_twice_trains_never_silently_wrong(rng):
    # one object in two places keeps only its second input (and a ReLU its second output)
    # for backward: refused in training mode and by backward, at any depth (nested
    # Sequentials); eval mode computes as usual
    act = nn.ReLU()
    lin = nn.Linear(4, 4)
    inner = nn.Sequential(nn.Linear(4, 4))
    for model in (nn.Sequential(lin, nn.ReLU(), lin),
                  nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)),
                  nn.Sequential(lin, nn.Sequential(lin)),
                  nn.Sequential(nn.Sequential(lin, nn.ReLU()), nn.Sequential(lin)),
                  nn.Sequential(inner, nn.ReLU(), inner)):
        x = randn(rng, (3, 4), np.float32)
        model.eval()
        expected = x
        for layer in model.layers:
            expected = layer.infer(expected)
        assert_close(model(x), expected)
        assert_close(model.predict(x), expected)
        with pytest.raises(ValueError, match="same .* object"):
            model.backward(np.ones_like(expected))
        model.train()
        kept = [(layer, getattr(layer, "_x", None)) for layer in _leaves(model)]
        shape = model._sample_shape
        with pytest.raises(ValueError, match="same .* object"):
            model(x[:2])
        # refused before anything ran: no layer saw the input, the model kept its state
        assert all(getattr(layer, "_x", None) is before for layer, before in kept)
        assert model._sample_shape == shape
        once = list({id(p): p for p in model.parameters()}.values())
        values = [p.data.copy() for p in once]
        target = np.zeros((3, expected.shape[1]), np.float32)
        with pytest.raises(ValueError, match="same .* object"):
            model.fit(x, target, loss="mse", optimizer=nn.SGD(once, lr=0.1), epochs=1,
                      batch_size=3, progress=False)
        assert model._last_loss is None     # refused before fit changed anything
        assert all(np.array_equal(p.data, v) for p, v in zip(once, values))
        with pytest.raises(ValueError, match="same .* object"):
            explain_step(model, x, target, nn.MSELoss(), nn.SGD(once, lr=0.1),
                            print_fn=None)
    # a nested Sequential changed after its first use is looked at again (empty at first,
    # or not)
    for inner in (nn.Sequential(nn.Linear(4, 4)), nn.Sequential()):
        model = nn.Sequential(lin, inner)
        model(randn(rng, (3, 4), np.float32))
        inner.layers.append(lin)
        with pytest.raises(ValueError, match="same Linear object"):
            model(randn(rng, (3, 4), np.float32))


def _leaves(model):
    children = model.children()
    return [leaf for child in children for leaf in _leaves(child)] if children else [model]


def test_a_linear_applied_to_its_own_output(rng, dtype):
    # in training mode its output buffer is kept: fed back in, it must not be written while
    # it is read (a fresh array takes its place); the same for its input gradient, and for
    # a chain of layers fed its own last output
    lin = nn.Linear(5, 5, dtype=dtype)
    x = randn(rng, (3, 5), dtype)
    w, b = lin.weight.data, lin.bias.data
    y = lin(x)
    z = lin(y)
    assert_close(z, (x @ w + b) @ w + b, k=5)
    g = randn(rng, (3, 5), dtype)
    lin.zero_grad()
    gx = lin.backward(g)
    gxx = lin.backward(gx)
    assert_close(gxx, (g @ w.T) @ w.T, k=5)
    gx = lin.backward(g)            # its kept input gradient as the next forward's input
    lin(gx)
    assert_close(lin.backward(g), g @ w.T, k=5)
    model = nn.Sequential(nn.Linear(5, 5, dtype=dtype), nn.ReLU(), nn.Linear(5, 5, dtype=dtype))
    y = model(x)
    expected = model.infer(model.infer(x))
    assert_close(model(y), expected, k=5)
    # a view of a kept buffer is refused by the kernel rather than read while written
    y = lin(x)
    with pytest.raises(ValueError, match="overlaps x"):
        lin(y[:])
