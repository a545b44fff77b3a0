"""take_rows (the mini-batch gather of fit): compiled kernel vs the NumPy twin."""
import numpy as np
import pytest

import cnn_core
from cnn_core import reference
from conftest import nan_array, randn


@pytest.mark.parametrize("shape,batch", [((1, 1), 1), ((7, 3), 5), ((13, 2, 3), 31),
                                         ((997, 784), 600), ((60, 1, 28, 28), 128)])
def test_take_rows_equals_the_twin(rng, dtype, threads, shape, batch):
    x = randn(rng, shape, dtype)
    rows = rng.integers(0, shape[0], size=batch)          # repeats allowed
    expected = reference.take_rows(x, rows)
    np.testing.assert_array_equal(expected, x[rows])
    np.testing.assert_array_equal(cnn_core.take_rows(x, rows), expected)
    out = nan_array(expected.shape, dtype)
    assert cnn_core.take_rows(x, rows, out) is out
    np.testing.assert_array_equal(out, expected)
    # a slice of an index array (as fit passes order[start:stop]) and an empty batch
    order = rng.permutation(shape[0])
    np.testing.assert_array_equal(cnn_core.take_rows(x, order[1:4]), x[order[1:4]])
    assert cnn_core.take_rows(x, rows[:0]).shape == (0,) + shape[1:]


@pytest.mark.parametrize("backend", [cnn_core, reference])
def test_take_rows_rejects_bad_input(rng, backend):
    x = randn(rng, (10, 4), np.float32)
    rows = np.arange(3)
    for bad in (np.array([0, 10]), np.array([-1, 2]), np.array([3, 2**40])):
        with pytest.raises(ValueError, match=r"rows must be in \[0, 10\)"):
            backend.take_rows(x, bad)
    with pytest.raises(TypeError, match="rows must be int64"):
        backend.take_rows(x, rows.astype(np.int32))
    with pytest.raises(ValueError, match="rows must be 1-D"):
        backend.take_rows(x, rows.reshape(3, 1))
    with pytest.raises(TypeError, match="x has dtype"):
        backend.take_rows(x.astype(np.int64), rows)
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.take_rows(x[:, ::2], rows)
    with pytest.raises(ValueError, match="out"):
        backend.take_rows(x, rows, np.empty((3, 5), np.float32))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        backend.take_rows(x.tolist(), rows)


def test_take_rows_copies_unaligned_or_strided_indices(rng):
    x = randn(rng, (9, 3), np.float64)
    raw = np.zeros(8 * 5 + 1, np.uint8)[1:].view(np.int64)     # misaligned int64 storage
    raw[...] = [4, 0, 8, 8, 1]
    assert not raw.flags.aligned
    for rows in (raw, np.arange(10)[::2]):
        for backend in (cnn_core, reference):
            np.testing.assert_array_equal(backend.take_rows(x, rows), x[np.asarray(rows)])


def test_take_rows_refuses_out_overlapping_x(rng):
    x = randn(rng, (8, 3), np.float32)
    for backend in (cnn_core, reference):
        with pytest.raises(ValueError, match="out overlaps x"):
            backend.take_rows(x, np.array([1, 0]), out=x[:2])
