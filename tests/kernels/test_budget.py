"""cnn_core._budget: a cap on NumPy's allocations in one thread's context (used by
nnscratch.load while it builds a model from a file)."""
import gc
import threading

import numpy as np
import pytest

from cnn_core._budget import budget


def test_allocations_are_granted_up_to_the_budget_then_refused():
    with budget(1 << 20) as granted:
        a = np.ones(100_000)                       # 800,000 bytes
        assert 800_000 <= granted() < 1 << 20
        with pytest.raises(MemoryError):
            np.ones(100_000)                       # 800,000 more: past the budget
        b = np.ones(1000)                          # a small one still fits
        assert a.sum() == 100_000 and b.sum() == 1000
    assert np.ones(10_000_000).sum() == 10_000_000     # after the block: no cap


def test_frees_do_not_give_the_budget_back():
    with budget(1 << 20):
        for _ in range(2):
            np.ones(60_000)                        # 480,000 bytes each, freed at once
        with pytest.raises(MemoryError):
            np.ones(60_000)


def test_arrays_made_under_a_budget_outlive_it_and_are_freed_later():
    with budget(64 << 20):
        kept = [np.full(1000, i, np.float32) for i in range(50)]
    assert [int(k[0]) for k in kept] == list(range(50))
    kept[0] += 1                                   # plain memory: usable as any other
    grown = np.concatenate(kept)                   # (made outside: no cap)
    assert grown.shape == (50_000,)
    del kept
    gc.collect()


def test_other_threads_are_not_capped():
    results = []

    def other():
        results.append(np.ones(2_000_000).sum())  # 16 MB: far past the budget

    with budget(1 << 16):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with pytest.raises(MemoryError):
            np.ones(2_000_000)
    assert results == [2_000_000]


def test_a_budget_inside_a_budget_and_bad_arguments():
    with budget(1 << 20):
        with budget(1 << 10):
            with pytest.raises(MemoryError):
                np.ones(1000)
        np.ones(1000)                              # the outer one again
    for bad in (-1, 1.5, "1"):
        with pytest.raises(ValueError, match="nbytes"):
            with budget(bad):
                pass
