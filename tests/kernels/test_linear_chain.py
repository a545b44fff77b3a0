"""`linear_chain_forward`: a run of linear layers in one kernel call.

The kernel is held against its NumPy twin (random shapes with 1, odd and prime sizes, both
dtypes), against one `linear_forward` per layer bit for bit (every way a product is shared
out among threads: one thread, slabs, halves of k; 1 to 3 threads) and against PyTorch.
(How the fast path uses it for a Sequential: tests/fast/test_paths.py.)
"""

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, workers_held

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


def test_a_team_whose_workers_take_nothing(rng):
    # a worker the OS has parked claims nothing: the caller runs every share itself -- the
    # shares meant for the workers too -- and the bits stay the same
    before = cnn_core.get_num_threads()
    cnn_core.set_num_threads(3)
    try:
        # (each product big enough to be shared out with every micro-kernel's tiles: a
        # 300x13x40 one is not, with the AVX2 or portable ones -- arm64's)
        for n, features in [(1, [784, 256, 10]), (128, [784, 256, 128, 10]), (300, [13, 97, 7])]:
            x, ws, bs, acts = chain_args(rng, np.float32, n, features)
            free = cnn_core.linear_chain_forward(x, ws, bs, acts)
            with workers_held() as counts:
                held = cnn_core.linear_chain_forward(x, ws, bs, acts)
                ran, taken_back = counts()
            assert ran == 0 and (taken_back > 0 or n == 1), (n, ran, taken_back)
            assert all(np.array_equal(a, b) for a, b in zip(free, held)), n
    finally:
        cnn_core.set_num_threads(before)


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
