"""`linear_chain_backward`: the backward of a run of linear layers in one kernel call, and
Sequential's use of it.

The kernel is held against its NumPy twin (random shapes with 1, odd and prime sizes, both
dtypes, ReLU masks or none, accumulating or overwriting), against one `relu_backward` and
`linear_backward` per layer bit for bit (every way a product is shared out among threads:
one thread, slabs along m and n, halves of k; 1 to 3 threads; a team whose workers take
nothing) and against PyTorch's autograd. (How the fast path uses it for a Sequential:
tests/fast/test_paths.py.)
"""

import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import assert_close, nan_array, randn, use_isa_or_skip, workers_held

BOTH = [cnn_core, reference]


def chain_case(rng, dtype, n, features, relu=None, bias=True, mask_kind="inputs"):
    """(grad_out, xs, weights, grads_w, grads_b, masks) for a chain of len(features) - 1
    layers; relu[l]: layer l's output goes through a ReLU (default: all but the last).
    mask_kind "inputs": a ReLU's mask is the next layer's input (as in Sequential)."""
    layers = len(features) - 1
    if relu is None:
        relu = [l < layers - 1 for l in range(layers)]
    xs = [randn(rng, (n, f), dtype) for f in features[:-1]]
    for l in range(1, layers):          # a ReLU's output: non-negative, with zeros
        if relu[l - 1]:
            np.maximum(xs[l], 0, out=xs[l])
    weights = [randn(rng, (a, b), dtype, 1 / np.sqrt(max(a, 1)))
               for a, b in zip(features, features[1:])]
    grads_w = [randn(rng, w.shape, dtype) for w in weights]
    grads_b = [randn(rng, (b,), dtype) if (bias is True or (bias == "some" and l % 2 == 0))
               else None for l, b in enumerate(features[1:])]
    masks = []
    for l in range(layers):
        if not relu[l]:
            masks.append(None)
        elif l + 1 < layers and mask_kind == "inputs":
            masks.append(xs[l + 1])
        else:
            masks.append(np.maximum(randn(rng, (n, features[l + 1]), dtype), 0))
    grad_out = randn(rng, (n, features[-1]), dtype)
    return grad_out, xs, weights, grads_w, grads_b, masks


def per_layer(mod, grad_out, xs, weights, grads_w, grads_b, masks, compute_grad_x=True,
              accumulate=True):
    """One relu_backward and linear_backward per layer, from the last one down."""
    g, gs = grad_out, [None] * len(weights)
    acc = accumulate if isinstance(accumulate, (list, tuple)) else [accumulate] * len(weights)
    for l in range(len(weights) - 1, -1, -1):
        if masks[l] is not None:
            g = mod.relu_backward(g, masks[l])
        gs[l] = g
        g = mod.linear_backward(g, xs[l], weights[l], grads_w[l], grads_b[l],
                                compute_grad_x=compute_grad_x or l > 0, accumulate=acc[l])
    return g, gs


def copies(arrays):
    return [None if a is None else a.copy() for a in arrays]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 64])
@pytest.mark.parametrize("features", [[1, 1], [5, 3, 2], [784, 256, 128, 10], [31, 17, 1, 29],
                                      [2, 97, 3, 11, 5]])
@pytest.mark.parametrize("masks_of", ["none", "hidden", "all"])
def test_matches_twin(rng, dtype, n, features, masks_of):
    layers = len(features) - 1
    relu = {"none": [False] * layers, "hidden": None, "all": [True] * layers}[masks_of]
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, dtype, n, features, relu,
                                                                bias="some")
    results = []
    for mod in BOTH:
        gw, gb = copies(grads_w), copies(grads_b)
        grad_x, gs = mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks)
        results.append((grad_x, gs, gw, gb))
    (gx, gs, gw, gb), (rgx, rgs, rgw, rgb) = results
    assert isinstance(gs, tuple) and len(gs) == layers
    assert_close(gx, rgx, k=features[1])
    for l in range(layers):
        assert_close(gs[l], rgs[l], k=features[l + 2] if l + 2 < len(features) else 1)
        assert_close(gw[l], rgw[l], k=n)
        if gb[l] is not None:
            assert_close(gb[l], rgb[l], k=n)
    # the last layer without a ReLU: its g is grad_out itself
    assert (gs[-1] is grad_out) == (masks[-1] is None)


# (how each product is shared out: cnn_core/_gemm.pyx, _split)
SHARED_OUT = [
    (1, [784, 256, 128, 10]),        # one-sample backward: every product on one thread
    (16, [784, 256, 128, 10]),       # slabs of dW along m, of dX along n; small ones serial
    (128, [784, 256, 128, 10]),      # the MLP's training batch
    (2000, [64, 64, 32, 8]),         # a tall batch: dW by halves of k
    (300, [13, 40, 3]),              # slabs of dX along m
    (37, [45, 2001, 45]),            # slabs along n, then along m
    (5, [20, 3001, 7, 1]),           # one output: dX's B in place (row kernel), serial
]


@pytest.mark.parametrize("n,features", SHARED_OUT)
def test_bits_of_one_backward_per_layer(rng, dtype, n, features):
    # each product is shared out among the threads as linear_backward would share it, and
    # the ReLU's select is the one relu_backward does: the same bits, whatever the thread
    # count, accumulating or overwriting
    case = chain_case(rng, dtype, n, features)
    grad_out, xs, weights, grads_w, grads_b, masks = case
    before = cnn_core.get_num_threads()
    try:
        first = None
        for threads in (1, 2, 3):
            cnn_core.set_num_threads(threads)
            for accumulate in (True, False, [False, True] * len(weights)):
                accumulate = accumulate[:len(weights)] if isinstance(accumulate, list) \
                    else accumulate
                egw, egb = copies(grads_w), copies(grads_b)
                ex, egs = per_layer(cnn_core, grad_out, xs, weights, egw, egb, masks,
                                    accumulate=accumulate)
                gw, gb = copies(grads_w), copies(grads_b)
                gx, gs = cnn_core.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                                        accumulate=accumulate)
                assert same_bits(gx, ex)
                for got, expected in zip(list(gs) + gw + gb, egs + egw + egb):
                    assert (got is None) == (expected is None)
                    if got is not None:
                        assert same_bits(got, expected)
                if accumulate is True:
                    if first is None:
                        first = [gx] + gw
                    else:
                        assert all(same_bits(a, b) for a, b in zip([gx] + gw, first))
    finally:
        cnn_core.set_num_threads(before)


def test_a_team_whose_workers_take_nothing(rng):
    # a worker the OS has parked claims nothing: the caller runs every share -- the pieces
    # meant for the others too -- and the bits stay the same
    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    before = cnn_core.get_num_threads()
    cnn_core.set_num_threads(3)
    try:
        # (shapes shared out with every micro-kernel's tiles: AVX-512, AVX2, portable)
        for n, features in [(16, [784, 256, 128, 10]), (2000, [64, 64, 32, 8]),
                            (300, [13, 97, 7])]:
            xs = [np.maximum(f32(n, f), 0) for f in features[:-1]]
            ws = [f32(a, b) for a, b in zip(features, features[1:])]
            g = f32(n, features[-1])
            masks = xs[1:] + [None]

            def backward():
                gws = [np.zeros(w.shape, np.float32) for w in ws]
                gbs = [np.zeros(w.shape[1], np.float32) for w in ws]
                gx, _ = cnn_core.linear_chain_backward(g, xs, ws, gws, gbs, masks)
                return [gx] + gws + gbs
            free = backward()
            with workers_held() as counts:
                held = backward()
                ran, taken_back = counts()
            assert ran == 0 and taken_back > 0, (n, ran, taken_back)
            assert all(np.array_equal(a, b) for a, b in zip(free, held)), n
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_buffers_written_in_place_and_never_read(rng, dtype, mod):
    # work buffers and grad_x: NaN before the call (their old contents are never read);
    # with accumulate=False neither are the gradients'
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, dtype, 4, [9, 7, 5, 3],
                                                                relu=[True] * 3)
    work = [nan_array((4, 7), dtype), None, nan_array((4, 3), dtype)]
    grad_x = nan_array((4, 9), dtype)
    gw = [nan_array(w.shape, dtype) for w in weights]
    gb = [nan_array(b.shape, dtype) for b in grads_b]
    got_x, gs = mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks, grad_x,
                                          accumulate=False, work=work)
    assert got_x is grad_x and gs[0] is work[0] and gs[2] is work[2]
    zeros_w = [np.zeros_like(w) for w in weights]
    zeros_b = [np.zeros_like(b) for b in grads_b]
    ex, egs = per_layer(reference, grad_out, xs, weights, zeros_w, zeros_b, masks)
    assert_close(got_x, ex, k=7)
    for a, b in zip(list(gs) + gw + gb, egs + zeros_w + zeros_b):
        assert_close(a, b, k=9)


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_no_input_gradient(rng, dtype, mod):
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, dtype, 3, [6, 5, 4])
    gw, gb = copies(grads_w), copies(grads_b)
    got_x, gs = mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                          nan_array((3, 6), dtype), compute_grad_x=False)
    assert got_x is None
    egw, egb = copies(grads_w), copies(grads_b)
    per_layer(reference, grad_out, xs, weights, egw, egb, masks, compute_grad_x=False)
    for a, b in zip(gw + gb, egw + egb):
        assert_close(a, b, k=3)


def test_relu_select_and_nan(dtype):
    # the gradient passes where the mask is > 0 and is 0 elsewhere (NaN mask included)
    x0 = np.array([[1.0, 2.0]], dtype)
    w0 = np.eye(2, 3, dtype=dtype)
    w1 = np.ones((3, 1), dtype)
    h1 = np.array([[1.0, 0.0, np.nan]], dtype)         # layer 0's ReLU output
    g = np.array([[2.0]], dtype)
    gw = [np.zeros((2, 3), dtype), np.zeros((3, 1), dtype)]
    _, gs = cnn_core.linear_chain_backward(g, [x0, h1], [w0, w1], gw, [None, None],
                                           [h1, None])
    assert gs[0].tolist() == [[2.0, 0.0, 0.0]]
    assert gw[0].tolist() == [[2.0, 0.0, 0.0], [4.0, 0.0, 0.0]]


@pytest.mark.parametrize("n,features", [(0, [3, 4, 2]), (2, [0, 4, 2]), (2, [3, 0, 2]),
                                        (2, [3, 4, 0]), (0, [0, 0])])
@pytest.mark.parametrize("accumulate", [True, False])
def test_zero_size(rng, dtype, n, features, accumulate):
    # NumPy's answers: empty products add nothing (or overwrite with zeros)
    case = chain_case(rng, dtype, n, features, relu=[True] * (len(features) - 1))
    grad_out, xs, weights, grads_w, grads_b, masks = case
    results = []
    for mod in BOTH:
        gw, gb = copies(grads_w), copies(grads_b)
        gx, gs = mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                           accumulate=accumulate)
        results.append([gx, *gs, *gw, *gb])
    for a, b in zip(*results):
        assert_close(a, b)


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_bad_arguments_name_what_is_wrong(rng, mod):
    grad_out, xs, weights, gw, gb, masks = chain_case(rng, np.float32, 2, [4, 3, 2])
    f = mod.linear_chain_backward
    f32 = np.float32
    cases = [
        (ValueError, "weights is empty", lambda: f(grad_out, [], [], [], [], [])),
        (ValueError, "xs has 1", lambda: f(grad_out, xs[:1], weights, gw, gb, masks)),
        (ValueError, "grads_w has 3", lambda: f(grad_out, xs, weights, gw + gw[:1], gb, masks)),
        (ValueError, "grads_b has 1", lambda: f(grad_out, xs, weights, gw, gb[:1], masks)),
        (ValueError, "masks has 1", lambda: f(grad_out, xs, weights, gw, gb, masks[:1])),
        (ValueError, "work has 1", lambda: f(grad_out, xs, weights, gw, gb, masks, work=[None])),
        (ValueError, "accumulate has 1",
         lambda: f(grad_out, xs, weights, gw, gb, masks, accumulate=[True])),
        (TypeError, r"accumulate\[1\] must be True or False",
         lambda: f(grad_out, xs, weights, gw, gb, masks, accumulate=[True, 1])),
        (ValueError, r"weights\[1\] has shape \(2, 2\)",
         lambda: f(grad_out, xs, [weights[0], np.ones((2, 2), f32)], gw, gb, masks)),
        (TypeError, r"weights\[1\] has dtype float64",
         lambda: f(grad_out, xs, [weights[0], weights[1].astype(np.float64)], gw, gb, masks)),
        (ValueError, r"xs\[1\] has shape \(2, 4\)",
         lambda: f(grad_out, [xs[0], np.ones((2, 4), f32)], weights, gw, gb, masks)),
        (ValueError, r"xs\[0\] has shape \(3, 4\)",
         lambda: f(grad_out, [np.ones((3, 4), f32), xs[1]], weights, gw, gb, masks)),
        (ValueError, r"grads_w\[0\] has shape \(3, 4\)",
         lambda: f(grad_out, xs, weights, [np.ones((3, 4), f32), gw[1]], gb, masks)),
        (ValueError, r"grads_w\[1\] is read-only",
         lambda: f(grad_out, xs, weights, [gw[0], readonly(gw[1])], gb, masks)),
        (ValueError, r"grads_b\[1\] has shape \(3,\)",
         lambda: f(grad_out, xs, weights, gw, [gb[0], np.ones(3, f32)], masks)),
        (ValueError, r"masks\[0\] has shape \(2, 2\)",
         lambda: f(grad_out, xs, weights, gw, gb, [np.ones((2, 2), f32), None])),
        (TypeError, r"masks\[0\] has dtype float64",
         lambda: f(grad_out, xs, weights, gw, gb, [xs[1].astype(np.float64), None])),
        (ValueError, r"work\[0\] has shape \(2, 2\)",
         lambda: f(grad_out, xs, weights, gw, gb, masks, work=[np.ones((2, 2), f32), None])),
        (ValueError, r"grad_x has shape \(2, 3\)",
         lambda: f(grad_out, xs, weights, gw, gb, masks, np.ones((2, 3), f32))),
        (ValueError, r"grad_out has shape \(2, 3\)",
         lambda: f(np.ones((2, 3), f32), xs, weights, gw, gb, masks)),
        (ValueError, "grad_out must be 2-D", lambda: f(grad_out[0], xs, weights, gw, gb, masks)),
        (TypeError, "xs must be a list or tuple", lambda: f(grad_out, xs[0], weights, gw, gb,
                                                            masks)),
        (TypeError, r"weights\[0\] must be a numpy.ndarray",
         lambda: f(grad_out, xs, [[1.0], weights[1]], gw, gb, masks)),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind, match=message):
            call()


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_buffers_sharing_memory_are_refused(rng, mod):
    # a buffer is written while the inputs and the other outputs are read (by several
    # threads): one that overlaps any of them would give a silent wrong answer
    grad_out, xs, weights, gw, gb, masks = chain_case(rng, np.float32, 3, [3, 3, 3, 3])
    f = mod.linear_chain_backward
    big = np.zeros(100, np.float32)
    cases = [
        (r"grads_w\[0\] overlaps grad_out", dict(grads_w=[grad_out, gw[1], gw[2]])),
        (r"grads_w\[2\] overlaps weights\[1\]", dict(grads_w=[gw[0], gw[1], weights[1]])),
        # (xs[1] is masks[0] here: the mask of a ReLU is the next layer's input)
        (r"grads_w\[1\] overlaps (masks\[0\]|xs\[1\])", dict(grads_w=[gw[0], xs[1], gw[2]])),
        (r"grads_w\[0\] overlaps grads_w\[1\]", dict(grads_w=[gw[0], gw[0], gw[2]])),
        (r"grads_w\[0\] overlaps grads_b\[0\]", dict(grads_b=[gw[0][0], gb[1], gb[2]])),
        (r"work\[0\] overlaps (masks\[0\]|xs\[1\])",
         dict(work=[masks[0], None, None])),
        (r"work\[1\] overlaps grad_x", dict(work=[None, big[:9].reshape(3, 3), None],
                                            grad_x=big[5:14].reshape(3, 3))),
        (r"grad_x overlaps xs\[0\]", dict(grad_x=xs[0])),
    ]
    for message, changes in cases:
        kw = dict(grad_out=grad_out, xs=xs, weights=weights, grads_w=gw, grads_b=gb,
                  masks=masks)
        kw.update(changes)
        with pytest.raises(ValueError, match=message):
            f(**kw)


def test_a_rejected_call_writes_nothing(rng):
    # every argument is checked before any layer runs
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, np.float32, 2, [4, 3, 2])
    for mod in BOTH:
        gw, gb = copies(grads_w), copies(grads_b)
        work = [nan_array((2, 3), np.float32), None]
        with pytest.raises(ValueError):
            mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                      np.ones((5, 5), np.float32), work=work)
        assert np.isnan(work[0]).all()
        assert all(np.array_equal(a, b) for a, b in zip(gw + gb, grads_w + grads_b))


def test_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    dtype = np.float64
    n, features = 5, [784, 256, 128, 10]
    x = randn(rng, (n, 784), dtype)
    weights = [randn(rng, (a, b), dtype, 1 / np.sqrt(a)) for a, b in zip(features, features[1:])]
    biases = [randn(rng, (b,), dtype) for b in features[1:]]
    hs = cnn_core.linear_chain_forward(x, weights, biases, ["relu", "relu", None])
    grad_out = randn(rng, (n, 10), dtype)
    gw = [np.zeros_like(w) for w in weights]
    gb = [np.zeros_like(b) for b in biases]
    gx, _ = cnn_core.linear_chain_backward(grad_out, [x, hs[0], hs[1]], weights, gw, gb,
                                           [hs[0], hs[1], None])
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tw = [torch.from_numpy(w.copy()).requires_grad_() for w in weights]
    tb = [torch.from_numpy(b.copy()).requires_grad_() for b in biases]
    h = tx
    for l in range(3):
        h = h @ tw[l] + tb[l]
        h = torch.relu(h) if l < 2 else h
    h.backward(torch.from_numpy(grad_out))
    assert_close(gx, tx.grad.numpy(), k=256)
    for l in range(3):
        assert_close(gw[l], tw[l].grad.numpy(), k=n)
        assert_close(gb[l], tb[l].grad.numpy(), k=n)


# ---------------------------------------------------------------------------------------
# check_finite: each gradient checked for NaN/inf as it is written (fit's guard)

CHECKED = SHARED_OUT + [
    (40, [2, 300, 3]),               # dW of the first layer by the row kernel (2 rows)
    (7, [13, 5, 29, 3]),             # every product on one thread, edge tiles
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # (the twin's NumPy on inf/NaN)
@pytest.mark.parametrize("n,features", CHECKED)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_check_finite_finds_a_bad_value_anywhere(rng, dtype, n, features, bad):
    # an infinite or NaN input value at a random place spoils one row of that layer's
    # weight gradient (and nothing else): the check names exactly that gradient, whatever
    # tile, slab, half or thread wrote it -- overwriting (the stores-only write-back) or
    # accumulating (beta = 1), on 1 to 3 threads
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, dtype, n, features)
    before = cnn_core.get_num_threads()
    try:
        for threads in (1, 2, 3):
            cnn_core.set_num_threads(threads)
            gw, gb = copies(grads_w), copies(grads_b)
            clean = cnn_core.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                                   check_finite=True)[2]
            assert clean == ((True, True),) * len(weights)
            layer = int(rng.integers(len(weights)))
            poisoned = [x.copy() for x in xs]
            i, j = int(rng.integers(n)), int(rng.integers(features[layer]))
            poisoned[layer][i, j] = bad
            masks_here = [poisoned[l + 1] if m is xs[l + 1] else m
                          for l, m in enumerate(masks[:-1])] + [masks[-1]]
            for accumulate in (False, True):
                results = []
                for mod in BOTH:
                    gw, gb = copies(grads_w), copies(grads_b)
                    results.append(mod.linear_chain_backward(
                        grad_out, poisoned, weights, gw, gb, masks_here, accumulate=accumulate,
                        check_finite=True)[2])
                expected = tuple((l != layer, True) for l in range(len(weights)))
                assert results[0] == expected == results[1], (layer, accumulate)
    finally:
        cnn_core.set_num_threads(before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mod", BOTH, ids=["cython", "numpy"])
def test_check_finite_sees_accumulated_values(rng, dtype, mod):
    # accumulating into a gradient that already holds a NaN (or an inf in a bias): the
    # values written are checked, so that gradient is reported
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, dtype, 16,
                                                                [784, 256, 128, 10])
    for l in range(3):
        for which in ("w", "b"):
            gw, gb = copies(grads_w), copies(grads_b)
            (gw if which == "w" else gb)[l].reshape(-1)[5] = np.nan if which == "w" else np.inf
            finite = mod.linear_chain_backward(grad_out, xs, weights, gw, gb, masks,
                                               check_finite=True)[2]
            assert finite[l] == ((False, True) if which == "w" else (True, False))
            assert all(f == (True, True) for k, f in enumerate(finite) if k != l)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_check_finite_on_every_isa(rng, isa):
    grad_out, xs, weights, grads_w, grads_b, masks = chain_case(rng, np.float32, 37,
                                                                [45, 97, 45])
    xs[0][3, 7] = np.inf
    try:
        use_isa_or_skip(isa)
        finite = cnn_core.linear_chain_backward(grad_out, xs, weights, copies(grads_w),
                                                copies(grads_b), masks, check_finite=True)[2]
    finally:
        use_isa_or_skip(None)
    assert finite == ((False, True), (True, True))
