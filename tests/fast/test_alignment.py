"""64-byte alignment of the arrays the kernels stream: parameters, gradients, optimizer
state, kept layer buffers and fit's batches (nnscratch/_memory.py). A 64-byte vector load
from an array that starts 16 bytes into a cache line touches two lines; aligned arrays are
a measured speed-up (one-sample inference), never a change in any value."""
import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _memory


def aligned(array):
    return array.ctypes.data % 64 == 0


@pytest.mark.parametrize("shape", [(), 0, 1, 7, (3, 5), (784, 256), (0, 4), (2, 3, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_memory_arrays_are_aligned_contiguous_and_of_the_asked_shape(shape, dtype):
    expected_shape = (shape,) if isinstance(shape, int) else shape
    for array in (_memory.empty(shape, dtype), _memory.zeros(shape, dtype)):
        assert array.shape == expected_shape and array.dtype == dtype
        assert array.flags.c_contiguous and array.flags.writeable
        if array.size:
            assert aligned(array)
    assert not _memory.zeros(shape, dtype).any()
    values = np.arange(np.prod(expected_shape, dtype=int)).reshape(expected_shape).astype(dtype)
    copied = _memory.copy(values)
    np.testing.assert_array_equal(copied, values)
    assert copied.dtype == dtype and not np.may_share_memory(copied, values)
    if copied.size:
        assert aligned(copied)


def test_memory_refuses_negative_dimensions():
    with pytest.raises(ValueError, match="negative"):
        _memory.empty((2, -1), np.float32)


def test_memory_copy_of_a_strided_array():
    values = np.arange(60, dtype=np.float32).reshape(6, 10)[::2, 1::3]
    copied = _memory.copy(values)
    assert copied.flags.c_contiguous and aligned(copied)
    np.testing.assert_array_equal(copied, values)


def _model():
    nn.seed(0)
    return nn.Sequential(nn.Linear(13, 31), nn.ReLU(), nn.Linear(31, 5))


@pytest.mark.parametrize("make", [lambda p: nn.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: nn.Adam(p, lr=0.01)])
def test_parameters_gradients_state_and_batches_are_aligned(make):
    model = _model()
    rng = np.random.default_rng(0)
    X = rng.random((50, 13), dtype=np.float32)
    y = rng.integers(0, 5, 50)
    opt = make(model.parameters())
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=1, batch_size=8,
              shuffle=True, progress=False)
    for p in model.parameters():
        assert aligned(p.data) and aligned(p.grad)
    arrays = [v for entry in opt.state for v in entry.values() if isinstance(v, np.ndarray)]
    assert arrays and all(aligned(a) for a in arrays)
    from nnscratch._fast.plan import plan_of
    assert aligned(plan_of(model).steps[0].x)    # fit's gathered batch, kept by the plan
    out = model(X[:8])                           # training mode: a kept buffer
    assert aligned(out)
    # restored optimizer state is aligned too, with the same values
    state = opt.state_dict()
    opt2 = make(model.parameters())
    opt2.load_state_dict(state)
    for entry, entry2 in zip(opt.state, opt2.state):
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert aligned(entry2[key])
                np.testing.assert_array_equal(entry2[key], value)


def test_assigning_parameter_data_keeps_the_aligned_array():
    p = nn.Parameter(np.arange(12, dtype=np.float32).reshape(3, 4))
    array = p.data
    p.data = np.ones((3, 4), np.float32)
    assert p.data is array and aligned(p.data)
    np.testing.assert_array_equal(p.data, 1)
