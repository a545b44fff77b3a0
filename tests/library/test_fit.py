"""fit: argument checks, History, callbacks, schedules, progress bar, NaN, convergence."""
import numpy as np
import pytest

import nnscratch as nn


def _blobs(n=300, classes=3, d=4, seed=0, spread=0.5):
    """Gaussian blobs around well separated centres: a linearly separable problem."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + rng.normal(scale=spread, size=(n, d))
    return X.astype(np.float32), y


def _model(d=4, classes=3, seed=0):
    nn.seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes))


def _fit(model, X, y, **kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    kwargs.setdefault("optimizer", nn.SGD(model.parameters(), lr=0.1))
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("batch_size", 32)
    kwargs.setdefault("progress", False)
    return model.fit(X, y, **kwargs)


def test_reaches_high_accuracy_on_a_separable_problem():
    X, y = _blobs()
    model = _model()
    history = _fit(model, X, y, optimizer=nn.Adam(model.parameters(), lr=1e-2), epochs=15,
                   seed=0)
    assert history.history["accuracy"][-1] > 0.97
    assert history.history["loss"][-1] < history.history["loss"][0]
    X_test, y_test = _blobs(n=200, seed=0)
    assert model.evaluate(X_test, y_test)["accuracy"] > 0.97   # fit's loss by default


def test_history_keys_and_validation_metrics():
    X, y = _blobs()
    model = _model()
    history = _fit(model, X, y, epochs=3, validation_split=0.2)
    assert history.epoch == [0, 1, 2]
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in history.history.values())
    # val metrics are computed in eval mode at the end of the epoch: evaluate agrees on the
    # held-out rows (stratified for class labels: validation_split_indices says which)
    _, held_out = nn.training.validation_split_indices(y, 0.2)
    assert len(held_out) == 60
    X_val, y_val = X[held_out], y[held_out]
    result = model.evaluate(X_val, y_val, loss=nn.CrossEntropyLoss())
    assert history.history["val_loss"][-1] == pytest.approx(result["loss"], rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(result["accuracy"])
    with_data = _fit(_model(), X, y, validation_data=(X_val, y_val))
    assert "val_loss" in with_data.history
    regression = nn.Sequential(nn.Linear(4, 1))
    history = _fit(regression, X, X[:, 0] + X[:, 1], loss=nn.MSELoss(),
                   optimizer=nn.SGD(regression.parameters(), lr=0.01))
    assert list(history.history) == ["loss"]


def test_loss_is_the_mean_of_batch_losses_and_last_partial_batch_is_used():
    X, y = _blobs(n=70)
    model = _model()

    class Record(nn.Callback):
        def __init__(self):
            self.batches = []

        def on_batch_end(self, batch, logs=None):
            self.batches.append((batch, logs["size"], logs["loss"]))

    record = Record()
    history = _fit(model, X, y, epochs=1, batch_size=32, callbacks=[record])
    assert [(b, s) for b, s, _ in record.batches] == [(0, 32), (1, 32), (2, 6)]
    expected = sum(s * v for _, s, v in record.batches) / 70
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-12)


def test_progress_bar_on_stderr_and_silence_without_it(capsys):
    X, y = _blobs(n=64)
    _fit(_model(), X, y, epochs=2, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    _fit(_model(), X, y, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err
    assert "loss=" in err and "accuracy=" in err


def test_progress_bar_label_of_the_callers_own(capsys):
    X, y = _blobs(n=64)
    _fit(_model(), X, y, epochs=3, initial_epoch=2, progress="Round {epoch} of {epochs}")
    assert "Round 3 of 3" in capsys.readouterr().err
    _fit(_model(), X, y, epochs=1, progress="Epoch {epoch}/10")
    assert "Epoch 1/10" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"progress must be True, False or a label.*'\{step\}'"):
        _fit(_model(), X, y, epochs=1, progress="{step}")
    with pytest.raises(TypeError, match="progress must be True, False or a str label, got int"):
        _fit(_model(), X, y, epochs=1, progress=1)


def test_bce_with_integer_labels_reports_accuracy():
    X, y = _blobs(n=200, classes=2)
    nn.seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    history = _fit(model, X, y, loss=nn.BCEWithLogitsLoss(),
                   optimizer=nn.Adam(model.parameters(), lr=0.05), epochs=10, seed=0)
    assert history.history["accuracy"][-1] > 0.95
    p = model.predict_proba(X)
    assert p.shape == (200, 1) and np.mean((p[:, 0] > 0.5) == y) > 0.95


def test_nan_loss_names_epoch_and_batch():
    X, y = _blobs(n=96)
    model = _model()
    with pytest.raises(FloatingPointError, match=r"epoch 1/3, batch \d+/3"):
        _fit(model, X * 1e30, y, optimizer=nn.SGD(model.parameters(), lr=1e10), epochs=3)


@pytest.mark.parametrize("change, exc, message", [
    (dict(y=np.zeros(10, dtype=int)), ValueError, "X and y have different lengths"),
    (dict(X=np.zeros((40, 5), np.float32)), ValueError, r"X has samples of shape \(5,\)"),
    (dict(X=np.zeros(40, np.float32)), ValueError, r"X must have shape \(N, features"),
    (dict(y=np.full(40, 3)), ValueError, r"y holds label 3, outside \[0, 3\)"),
    (dict(y=np.full(40, -1)), ValueError, r"y holds label -1"),
    (dict(y=np.zeros(40)), TypeError, "y must hold integer class labels"),
    (dict(X=np.full((40, 4), np.nan, np.float32)), ValueError, "X contains NaN"),
    (dict(X=np.full((40, 4), np.inf, np.float32)), ValueError, "X contains NaN or infinity"),
    (dict(X=np.zeros((0, 4)), y=np.zeros(0, int)), ValueError, "X is empty"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
    (dict(epochs=-1), ValueError, "epochs must be >= 0"),
    (dict(validation_split=1.0), ValueError, "validation_split"),
    (dict(validation_split=-0.1), ValueError, "validation_split"),
    (dict(validation_split=0.999), ValueError, "validation_split=0.999 leaves an empty training"),
    (dict(validation_data=(np.zeros((5, 4)),)), ValueError, "validation_data must be a pair"),
    (dict(validation_data=(np.zeros((5, 3)), np.zeros(5, int))), ValueError,
     r"validation_data\[0\] has samples"),
    (dict(validation_data=(np.zeros((5, 4)), np.zeros(4, int))), ValueError,
     r"validation_data\[0\] and validation_data\[1\] have different lengths"),
    (dict(loss="hinge"), ValueError, "Unknown loss"),
    (dict(loss=len), TypeError, "loss must be a Loss"),
    (dict(optimizer="sgd"), TypeError, "optimizer must be an Optimizer"),
    (dict(optimizer=nn.SGD(nn.Linear(2, 2).parameters(), lr=0.1)), ValueError,
     "optimizer does not hold any of the model's parameters"),
    (dict(callbacks=[print]), TypeError, "callbacks must be Callback"),
    (dict(loss=nn.MSELoss()), ValueError, r"y has shape \(40,\), expected \(40, 3\)"),
])
def test_fit_rejects_bad_arguments(change, exc, message):
    X, y = _blobs(n=40)
    model = _model()
    change, args = dict(change), dict(X=X, y=y)
    args.update({k: change.pop(k) for k in ("X", "y") if k in change})
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(exc, match=message):
        _fit(model, args["X"], args["y"], **change)
    for p, b in zip(model.parameters(), before):       # nothing was trained
        np.testing.assert_array_equal(p.data, b)


def test_fit_accepts_loss_names_int_inputs_and_zero_epochs():
    X, y = _blobs(n=40)
    model = _model()
    assert _fit(model, X, y, epochs=0).history == {}
    history = _fit(model, (X * 10).astype(np.int32), y, loss="cross_entropy")
    assert len(history.history["loss"]) == 2
    assert model.training
    model.eval()
    _fit(model, X, y)
    assert not model.training            # fit trains in training mode, then restores


def test_early_stopping_stops_and_restores_best_weights():
    X, y = _blobs(n=100)
    model = _model()

    class Scripted(nn.Callback):
        """Replace val_loss by a scripted sequence: best at epoch 1."""
        values = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]

        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = self.values[epoch]
            if epoch == 1:
                self.best = [p.data.copy() for p in self.model.parameters()]

    scripted = Scripted()
    stopper = nn.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = _fit(model, X, y, epochs=7, validation_split=0.2, callbacks=[scripted, stopper])
    assert history.epoch == [0, 1, 2, 3]             # two epochs without improvement
    assert stopper.best == 0.5 and stopper.best_epoch == 1 and stopper.stopped_epoch == 3
    for p, best in zip(model.parameters(), scripted.best):
        np.testing.assert_array_equal(p.data, best)


def test_early_stopping_min_delta_mode_and_errors():
    stopper = nn.EarlyStopping(monitor="val_accuracy", patience=0, min_delta=0.05)
    assert stopper.maximize

    class FakeModel:
        stop_training = False

        def parameters(self):
            return []

    stopper.set_model(FakeModel())
    stopper.on_train_begin({"metrics": ["loss", "val_accuracy"]})
    stopper.on_epoch_end(0, {"val_accuracy": 0.5})
    stopper.on_epoch_end(1, {"val_accuracy": 0.54})    # +0.04 < min_delta: no improvement
    assert stopper.model.stop_training and stopper.best == 0.5
    X, y = _blobs(n=40)
    with pytest.raises(ValueError, match="EarlyStopping monitors 'val_loss'"):
        _fit(_model(), X, y, callbacks=[nn.EarlyStopping()])     # no validation data
    with pytest.raises(ValueError, match="patience"):
        nn.EarlyStopping(patience=-1)


def test_schedules_are_fit_callbacks():
    X, y = _blobs(n=40)
    model = _model()
    optimizer = nn.SGD(model.parameters(), lr=0.1)
    seen = []

    class LearningRates(nn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(optimizer.lr)

    _fit(model, X, y, optimizer=optimizer, epochs=4,
         callbacks=[LearningRates(), nn.StepLR(optimizer, step_size=2, gamma=0.5)])
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.05, 0.05])
    assert optimizer.lr == pytest.approx(0.025)


def test_callback_hooks_are_called_in_order():
    X, y = _blobs(n=20)
    calls = []

    class Log(nn.Callback):
        def on_train_begin(self, logs=None):
            calls.append(("train_begin", tuple(logs["metrics"])))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch))

        def on_batch_end(self, batch, logs=None):
            calls.append(("batch_end", batch))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, tuple(logs)))

        def on_train_end(self, logs=None):
            calls.append(("train_end",))

    _fit(_model(), X, y, epochs=1, batch_size=10, callbacks=[Log()])
    assert calls == [("train_begin", ("loss", "accuracy")), ("epoch_begin", 0),
                     ("batch_end", 0), ("batch_end", 1),
                     ("epoch_end", 0, ("loss", "accuracy")), ("train_end",)]


def test_shuffle_false_visits_samples_in_order():
    X, y = _blobs(n=64)
    a, b = _model(seed=3), _model(seed=3)
    _fit(a, X, y, shuffle=False, seed=1)
    _fit(b, X, y, shuffle=False, seed=2)                 # the seed only drives shuffling
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_initial_epoch_runs_the_remaining_epochs_with_their_numbers():
    import numpy as np
    import nnscratch as nn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    nn.seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    seen = []

    class Recorder(nn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    history = model.fit(X, y, loss=nn.CrossEntropyLoss(),
                        optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=5,
                        initial_epoch=3, batch_size=16, progress=False, callbacks=[Recorder()])
    assert seen == [3, 4]
    assert len(history.history["loss"]) == 2
    with __import__("pytest").raises(ValueError, match="initial_epoch"):
        model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=nn.SGD(model.parameters(),
                  lr=0.1), epochs=1, initial_epoch=-1, batch_size=16, progress=False)


def _three_layers():
    nn.seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_non_finite_weights_are_located_by_layer():
    X, y = _blobs(n=96)
    model = _three_layers()
    model[2].weight.data[0, 0] = np.nan
    with pytest.raises(FloatingPointError,
                       match=r"epoch 1/2, batch 1/3; the weights of layer 2 \(Linear\)"):
        _fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=2)


def test_non_finite_output_is_located_by_layer():
    X, y = _blobs(n=96)
    model = _three_layers()
    model[0].weight.data[...] = 1e30      # finite weights, but the products overflow
    model[0].bias.data[...] = 1e38
    with pytest.raises(FloatingPointError, match=r"first non-finite output is that of layer "):
        _fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=1)


class _PoisonedLinear(nn.Linear):
    """A Linear whose backward leaves a NaN in its weight gradient."""

    def backward(self, grad_out, *, compute_grad_input=True):
        result = super().backward(grad_out, compute_grad_input=compute_grad_input)
        self.weight.grad[0, 0] = np.nan
        return result


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_non_finite_gradient_stops_training_naming_the_parameter(backend):
    X, y = _blobs(n=96)
    nn.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _PoisonedLinear(8, 3))
    before = model[2].weight.data.copy()
    with nn.backend.using(backend):
        with pytest.raises(FloatingPointError, match=r"gradient of layer 2 \(_PoisonedLinear\), "
                           r"parameter 2\.weight became NaN or infinite at epoch 1/1, batch 1/3"):
            _fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=1)
    np.testing.assert_array_equal(model[2].weight.data, before)   # no poisoned update


def test_check_finite_false_trains_on():
    X, y = _blobs(n=96)
    nn.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), _PoisonedLinear(8, 3))
    history = _fit(model, X, y, optimizer=nn.SGD(model.parameters(), lr=0.1), epochs=2,
                   check_finite=False)
    assert len(history.history["loss"]) == 2
    assert np.isnan(model[2].weight.data[0, 0])
