"""Steady-state training steps on the fast path allocate no arrays (tracemalloc).

fit's step gathers its batch, runs the model, the loss and the update in arrays kept in the
fast path's buffer pool: after the first steps, a step allocates nothing the size of an
array. A hand-written loop (model(x), loss, zero_grad, backward, step) keeps every array
of the model's forward and backward and of the optimizer; the textbook loss object makes
its gradient anew each call (one array of the output's size).
"""
import tracemalloc

import numpy as np
import pytest

import nnscratch as nn
from conftest import step_allocation_peaks
from nnscratch import backend

pytestmark = pytest.mark.skipif(not backend.fast_path(),
                                reason="the fast path runs on the compiled kernels")

# Python's own objects of one step (views, memoryviews, floats, small tuples: ~11 KiB at
# the peak of the ResNet's, the most steps) stay below this; every array of these steps is
# at least 16 KiB
SMALL = 12288


def _mlp():
    nn.seed(9)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 32),
                         nn.Tanh(), nn.Linear(32, 16))


def _cnn():
    nn.seed(54)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, 16))


def _resnet():
    nn.seed(21)
    return nn.Sequential(nn.models.resnet(8, in_channels=1, num_classes=16, width=4)[:-2],
                         nn.AvgPool2d(2), nn.GlobalAvgPool2d(), nn.Linear(16, 16))


CASES = {"mlp": (_mlp, (20,)), "cnn": (_cnn, (1, 12, 12)), "resnet": (_resnet, (1, 12, 12))}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hand_written_step_allocates_only_the_loss_gradient(case):
    build, sample = CASES[case]
    model = build()
    rng = np.random.default_rng(9)
    X = rng.normal(size=(256,) + sample).astype(np.float32)
    y = rng.integers(0, 16, size=256)
    peaks = step_allocation_peaks(model, nn.CrossEntropyLoss(), nn.Adam(model.parameters()),
                                  X, y)
    loss_gradient = 256 * 16 * 4
    assert max(peaks) < loss_gradient + SMALL, peaks


@pytest.mark.parametrize("case", list(CASES))
def test_steady_state_fit_batches_allocate_no_arrays(case):
    build, sample = CASES[case]
    model = build()
    rng = np.random.default_rng(11)
    X = rng.normal(size=(256 * 6,) + sample).astype(np.float32)
    y = rng.integers(0, 16, size=len(X))

    class PeakPerBatch(nn.Callback):
        def __init__(self):
            self.peaks = []
            self.before = 0

        def on_batch_end(self, batch, logs=None):
            current, peak = tracemalloc.get_traced_memory()
            if batch >= 2:
                self.peaks.append(peak - self.before)
            tracemalloc.reset_peak()
            self.before = tracemalloc.get_traced_memory()[0]

    probe = PeakPerBatch()
    tracemalloc.start()
    try:
        model.fit(X, y, loss=nn.CrossEntropyLoss(),
                  optimizer=nn.SGD(model.parameters(), lr=0.01, momentum=0.9), epochs=2,
                  batch_size=256, seed=0, progress=False, callbacks=[probe])
    finally:
        tracemalloc.stop()
    assert len(probe.peaks) == 8
    assert max(probe.peaks) < SMALL, probe.peaks
