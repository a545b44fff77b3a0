"""nnscratch.metrics against scikit-learn, its edge cases and errors; fit(metrics=) and
evaluate(metrics=): the same figures from the outputs of the steps, and the same weights."""
import warnings

import numpy as np
import pytest

import nnscratch as nn
from conftest import textbook
from nnscratch import metrics, training

sk = pytest.importorskip("sklearn.metrics")

NAMED = ["accuracy", "top_2_accuracy", "macro_precision", "macro_recall", "macro_f1",
         "weighted_precision", "weighted_recall", "weighted_f1"]


def sklearn_prf(y_true, y_pred, C, average):
    """scikit-learn's precision, recall, F1 over the classes 0..C-1, its default
    zero_division ("warn": 0.0, with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sk.precision_recall_fscore_support(y_true, y_pred, labels=np.arange(C),
                                                  average=average)[:3]


def sklearn_named(name, y_true, scores):
    """What fit(metrics=[name]) should record, computed by scikit-learn."""
    C = scores.shape[1]
    pred = scores.argmax(axis=1)
    if name == "accuracy":
        return sk.accuracy_score(y_true, pred)
    if name.startswith("top_"):
        return sk.top_k_accuracy_score(y_true, scores, k=int(name.split("_")[1]),
                                       labels=np.arange(C))
    average, which = name.split("_")
    return sklearn_prf(y_true, pred, C, average)[["precision", "recall", "f1"].index(which)]


def random_case(rng, N, C):
    """Labels drawn from a random subset of the classes each (so some classes are absent
    from y_true, some never predicted, some from both), and continuous scores (no ties)
    whose argmax comes from another subset."""
    true_classes = rng.choice(C, size=rng.integers(1, C + 1), replace=False)
    pred_classes = rng.choice(C, size=rng.integers(1, C + 1), replace=False)
    y_true = rng.choice(true_classes, size=N)
    scores = rng.normal(size=(N, C))
    boost = rng.choice(pred_classes, size=N)
    scores[np.arange(N), boost] += rng.uniform(0, 4, size=N)   # mostly, these win
    return y_true, scores


# --- the functions against scikit-learn ---------------------------------------------------

@pytest.mark.parametrize("N", [1, 2, 7, 100, 1000])
@pytest.mark.parametrize("C", [2, 3, 10, 37])
def test_equal_to_sklearn_on_random_data(N, C):
    rng = np.random.default_rng(1000 * N + C)
    for _ in range(5):
        y_true, scores = random_case(rng, N, C)
        pred = scores.argmax(axis=1)
        labels = np.arange(C)
        assert metrics.accuracy(y_true, scores) == sk.accuracy_score(y_true, pred)
        assert metrics.accuracy(y_true, pred) == sk.accuracy_score(y_true, pred)
        np.testing.assert_array_equal(metrics.confusion_matrix(y_true, scores),
                                      sk.confusion_matrix(y_true, pred, labels=labels))
        for average in (None, "macro", "weighted"):
            ours = metrics.precision_recall_f1(y_true, scores, average)
            theirs = sklearn_prf(y_true, pred, C, average)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
            if average is not None:
                assert all(type(v) is float for v in ours)
        # labels alone, with num_classes, give the same as the scores
        for a, b in zip(metrics.precision_recall_f1(y_true, pred, num_classes=C),
                        metrics.precision_recall_f1(y_true, scores)):
            np.testing.assert_array_equal(a, b)
        if C > 2:       # (scikit-learn's binary case wants one score column)
            for k in range(1, C + 1):
                with warnings.catch_warnings():       # (k = C: "a perfect score")
                    warnings.simplefilter("ignore")
                    expected = sk.top_k_accuracy_score(y_true, scores, k=k, labels=labels)
                assert metrics.top_k_accuracy(y_true, scores, k) == expected


def test_zero_division_gives_zero_and_absent_classes_count_in_the_macro_average():
    # class 1 never predicted (no precision), class 2 absent from y_true (no recall),
    # class 3 in neither: all 0.0, as scikit-learn's default
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 0, 0])
    p, r, f1 = metrics.precision_recall_f1(y_true, y_pred, num_classes=4)
    np.testing.assert_array_equal(p, [1 / 3, 0, 0, 0])
    np.testing.assert_array_equal(r, [0.5, 0, 0, 0])
    np.testing.assert_allclose(f1, [0.4, 0, 0, 0], rtol=0, atol=1e-15)
    assert p.dtype == r.dtype == f1.dtype == np.float64 and p.shape == (4,)
    macro = metrics.precision_recall_f1(y_true, y_pred, "macro", num_classes=4)
    np.testing.assert_allclose(macro, (1 / 12, 0.125, 0.1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(macro, sklearn_prf(y_true, y_pred, 4, "macro"), atol=1e-15)
    # by default the classes are 0 .. the largest label: class 3 is not one
    assert metrics.precision_recall_f1(y_true, y_pred, "macro")[0] == pytest.approx(1 / 9)
    weighted = metrics.precision_recall_f1(y_true, y_pred, "weighted", num_classes=4)
    np.testing.assert_allclose(weighted, (1 / 6, 0.25, 0.2), rtol=0, atol=1e-15)


def test_perfect_and_worst_predictions():
    y = np.array([2, 0, 1, 1, 2])
    assert metrics.accuracy(y, y) == 1.0
    assert metrics.precision_recall_f1(y, y, "macro") == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(metrics.confusion_matrix(y, y), np.diag([1, 2, 2]))
    wrong = (y + 1) % 3
    assert metrics.accuracy(y, wrong) == 0.0
    assert metrics.precision_recall_f1(y, wrong, "weighted") == (0.0, 0.0, 0.0)


def test_ties_go_to_the_lower_class_as_argmax():
    scores = np.array([[1.0, 1.0, 0.0],       # 0 and 1 tie: 0 wins
                       [0.0, 2.0, 2.0],       # 1 and 2 tie: 1 wins
                       [5.0, 5.0, 5.0]])      # all tie: 0 wins
    assert metrics.confusion_matrix([1, 2, 0], scores, 3).tolist() == \
        [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, size=(500, 6)).astype(np.float32)   # many ties
    y = rng.integers(0, 6, size=500)
    assert metrics.top_k_accuracy(y, scores, k=1) == metrics.accuracy(y, scores)
    # against a sort by (score descending, class ascending)
    order = np.lexsort((np.broadcast_to(np.arange(6), scores.shape), -scores), axis=1)
    for k in range(1, 7):
        expected = np.mean((order[:, :k] == y[:, None]).any(axis=1))
        assert metrics.top_k_accuracy(y, scores, k) == expected
    assert metrics.top_k_accuracy(y, scores, k=6) == 1.0


def test_input_forms():
    # lists, whole floats, bools, any integer dtype, float32 and integer scores
    assert metrics.accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)
    assert metrics.accuracy(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 0], np.uint8)) == \
        pytest.approx(2 / 3)
    assert metrics.accuracy(np.array([False, True]), [0, 1]) == 1.0
    np.testing.assert_array_equal(
        metrics.confusion_matrix(np.array([1, 0], np.int8), np.array([[0, 3], [1, 2]])),
        [[0, 1], [0, 1]])
    assert metrics.top_k_accuracy([2, 0], np.array([[1, 2, 3], [3, 2, 1]], np.float32),
                                  k=1) == 1.0
    # num_classes larger than the labels: zero rows and columns
    matrix = metrics.confusion_matrix([0, 1], [1, 1], num_classes=4)
    assert matrix.shape == (4, 4) and matrix.dtype == np.int64 and matrix.sum() == 2
    # no samples: a matrix of zeros (the rates refuse, as scikit-learn)
    np.testing.assert_array_equal(metrics.confusion_matrix([], [], num_classes=3),
                                  np.zeros((3, 3)))
    assert metrics.confusion_matrix(np.zeros(0, int), np.zeros((0, 4))).shape == (4, 4)
    assert metrics.confusion_matrix([], []).shape == (0, 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: metrics.accuracy([0, 1, 2], [0, 1]), ValueError,
     "y_true and y_pred have different lengths: 3 and 2"),
    (lambda: metrics.accuracy([0, 1.5], [0, 1]), ValueError,
     r"y_true must hold integer class labels, got 1\.5 at index 1"),
    (lambda: metrics.accuracy([0, 1], [0.0, np.nan]), ValueError,
     "y_pred must hold integer class labels, got nan at index 1"),
    (lambda: metrics.accuracy(["a", "b"], [0, 1]), TypeError,
     "y_true must hold integer class labels, got dtype <U1"),
    (lambda: metrics.accuracy([0, -1], [0, 1]), ValueError, "y_true holds label -1"),
    (lambda: metrics.accuracy([[0, 1]], [0]), ValueError,
     r"y_true must be class labels of shape \(N,\), got shape \(1, 2\)"),
    (lambda: metrics.accuracy([0], np.zeros((1, 2, 2))), ValueError,
     r"y_pred must be labels \(N,\) or scores \(N, C\)"),
    (lambda: metrics.accuracy([0], np.zeros((1, 1))), ValueError,
     r"one column per class.*\(y_pred > 0\)"),
    (lambda: metrics.accuracy([0], [[np.nan, 1.0]]), ValueError, "y_pred contains NaN"),
    (lambda: metrics.accuracy([], []), ValueError, "y_true is empty"),
    (lambda: metrics.accuracy([0, 3], np.zeros((2, 3))), ValueError,
     r"y_true holds label 3, outside \[0, 3\) \(y_pred has scores for 3 classes\)"),
    (lambda: metrics.confusion_matrix([0, 5], [0, 1], num_classes=5), ValueError,
     r"y_true holds label 5, outside \[0, 5\) \(num_classes=5\)"),
    (lambda: metrics.confusion_matrix([0, 1], [0, 7], num_classes=5), ValueError,
     "y_pred holds label 7"),
    (lambda: metrics.confusion_matrix([0], np.zeros((1, 3)), num_classes=4), ValueError,
     "y_pred has scores for 3 classes, num_classes is 4"),
    (lambda: metrics.confusion_matrix([0], [0], num_classes=0), ValueError,
     "num_classes must be a positive int, got 0"),
    (lambda: metrics.confusion_matrix([0], [0], num_classes=2.0), ValueError,
     "num_classes must be a positive int"),
    (lambda: metrics.confusion_matrix([0], [10 ** 9]), ValueError,
     "the largest label is 1000000000"),
    (lambda: metrics.top_k_accuracy([0], np.zeros((1, 3)), k=0), ValueError,
     r"k must be an int in \[1, 3\] \(scores has 3 classes\), got 0"),
    (lambda: metrics.top_k_accuracy([0], np.zeros((1, 3)), k=4), ValueError,
     r"k must be an int in \[1, 3\]"),
    (lambda: metrics.top_k_accuracy([0], np.zeros((1, 3))), ValueError,     # k=5 default
     r"k must be an int in \[1, 3\].*got 5"),
    (lambda: metrics.top_k_accuracy([0], np.zeros((1, 3)), k=True), ValueError,
     "k must be an int"),
    (lambda: metrics.top_k_accuracy([0, 1], [0, 1], k=1), ValueError,
     r"scores must have shape \(N, C\), got \(2,\)"),
    (lambda: metrics.top_k_accuracy([0, 1], np.zeros((3, 4)), k=1), ValueError,
     "y_true and scores have different lengths: 2 and 3"),
    (lambda: metrics.precision_recall_f1([0], [0], "micro"), ValueError,
     "average must be None, 'macro' or 'weighted', got 'micro'"),
])
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- fit(metrics=) and evaluate(metrics=) -----------------------------------------------

def blobs(n=240, classes=4, d=5, seed=0):
    """Overlapping Gaussian blobs: a problem the model gets partly wrong."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + rng.normal(size=(n, d))
    return X, y


def mlp(d=5, classes=4, dtype=np.float32, seed=0):
    nn.seed(seed)
    return nn.Sequential(nn.Linear(d, 12, dtype=dtype), nn.ReLU(),
                         nn.Linear(12, classes, dtype=dtype))


def train(model, X, y, **kwargs):
    kwargs.setdefault("loss", nn.CrossEntropyLoss())
    kwargs.setdefault("optimizer", nn.SGD(model.parameters(), lr=0.05, momentum=0.9))
    kwargs.setdefault("epochs", 3)
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("seed", 0)
    return training.fit(model, X, y, **kwargs)


class Recorder:
    """A metric function that keeps what it is given: (y_true, outputs) of every pass."""

    def __init__(self):
        self.calls = []
        self.__name__ = "recorded"

    def __call__(self, y_true, outputs):
        self.calls.append((np.array(y_true), np.array(outputs)))
        return float(np.mean(outputs.argmax(axis=1) == y_true))


def test_fit_records_the_metrics_of_the_epochs_outputs():
    X, y = blobs()
    X_val, y_val = blobs(n=90, seed=1)
    recorder = Recorder()
    logs_seen = []

    class Logs(nn.Callback):
        def on_train_begin(self, logs=None):
            logs_seen.append(logs["metrics"])

        def on_epoch_end(self, epoch, logs=None):
            logs_seen.append(dict(logs))

    model = mlp()
    history = train(model, X, y, validation_data=(X_val, y_val), callbacks=[Logs()],
                    metrics=NAMED + [recorder, ("mean_abs_output",
                                                lambda t, out: np.abs(out).mean())])
    names = ["loss", "accuracy"] + NAMED[1:] + ["recorded", "mean_abs_output"]
    assert list(history.history) == names + [f"val_{n}" for n in names]
    assert logs_seen[0] == list(history.history)
    assert [list(logs) for logs in logs_seen[1:]] == [list(history.history)] * 3
    # per epoch: the training pass's call, then the validation pass's
    assert len(recorder.calls) == 6
    for epoch in range(3):
        (y_train, out_train), (y_v, out_val) = recorder.calls[2 * epoch: 2 * epoch + 2]
        # the function gets the samples in the order of y, with their own outputs: the
        # accuracy it computes is the one fit counts on its own, batch by batch
        np.testing.assert_array_equal(y_train, y)
        np.testing.assert_array_equal(y_v, y_val)
        assert out_train.shape == (240, 4) and out_train.dtype == np.float32
        assert history.history["recorded"][epoch] == history.history["accuracy"][epoch]
        assert history.history["val_recorded"][epoch] == history.history["val_accuracy"][epoch]
        for name in NAMED[1:]:
            assert history.history[name][epoch] == pytest.approx(
                sklearn_named(name, y, out_train), rel=0, abs=1e-12), name
            assert history.history[f"val_{name}"][epoch] == pytest.approx(
                sklearn_named(name, y_val, out_val), rel=0, abs=1e-12), name
        assert history.history["mean_abs_output"][epoch] == \
            pytest.approx(np.abs(out_train).mean(), rel=1e-6)
    # the epochs differ (the model learns): the figures are not one epoch's repeated
    assert len(set(history.history["macro_f1"])) == 3
    # the validation figures are evaluate's on the final model, which are scikit-learn's
    # on its predictions
    result = training.evaluate(model, X_val, y_val, batch_size=7, metrics=NAMED)
    scores = model.predict(X_val)
    np.testing.assert_array_equal(scores, out_val)
    assert list(result) == ["loss", "accuracy"] + NAMED[1:]
    for name in NAMED:
        assert result[name] == history.history[f"val_{name}"][-1]
        assert result[name] == pytest.approx(sklearn_named(name, y_val, scores), rel=0,
                                             abs=1e-12)


def test_training_outputs_are_those_of_the_steps():
    # one batch per epoch, in order: the epoch's outputs are the model's outputs for X
    # with the weights it had when the epoch began
    X, y = blobs(n=60)
    snapshots = []

    class Snapshot(nn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            snapshots.append({k: v.copy() for k, v in self.model.state_dict().items()})

    recorder = Recorder()
    model = mlp(dtype=np.float64)
    train(model, X, y, batch_size=60, shuffle=False, callbacks=[Snapshot()],
          metrics=[recorder])
    for state, (_, outputs) in zip(snapshots, recorder.calls):
        twin = mlp(dtype=np.float64)
        twin.load_state_dict(state)
        np.testing.assert_allclose(outputs, twin.predict(X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["fast", "textbook"])
def test_metrics_leave_training_unchanged_bit_for_bit(path):
    X, y = blobs()
    X_val, y_val = blobs(n=50, seed=3)
    runs = []
    for extra in ({}, {"metrics": NAMED + [Recorder()]}):
        model = mlp()
        if path == "textbook":
            with textbook():
                history = train(model, X, y, validation_data=(X_val, y_val), **extra)
        else:
            history = train(model, X, y, validation_data=(X_val, y_val), **extra)
        runs.append((model.state_dict(), history.history))
    (plain, plain_history), (measured, measured_history) = runs
    assert list(plain_history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    for name in plain:
        np.testing.assert_array_equal(plain[name], measured[name])
    for name, values in plain_history.items():
        assert measured_history[name] == values


def test_fit_metrics_with_a_transform_keep_outputs_and_labels_together():
    X, y = blobs()
    recorder = Recorder()
    history = train(mlp(), X, y, transform=lambda xb, rng: xb + 0.1 * rng.normal(
                    size=xb.shape), metrics=[recorder, "macro_recall"])
    assert history.history["recorded"] == history.history["accuracy"]
    for epoch, (_, outputs) in enumerate(recorder.calls):
        assert history.history["macro_recall"][epoch] == pytest.approx(
            sklearn_named("macro_recall", y, outputs), rel=0, abs=1e-12)


def test_binary_and_regression_models():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] + 0.8 * rng.normal(size=120) > 0).astype(np.int64)
    nn.seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    loss = nn.BCEWithLogitsLoss()
    names = ["accuracy", "macro_f1", "weighted_precision"]
    history = train(model, X, y, loss=loss, optimizer=nn.SGD(model.parameters(), lr=0.1),
                    metrics=names, validation_split=0.25)
    assert list(history.history) == ["loss", "accuracy", "macro_f1", "weighted_precision",
                                     "val_loss", "val_accuracy", "val_macro_f1",
                                     "val_weighted_precision"]
    _, held_out = training.validation_split_indices(y, 0.25)   # (0/1 labels: stratified)
    result = training.evaluate(model, X[held_out], y[held_out], metrics=names)
    pred = (model.predict(X[held_out])[:, 0] > 0).astype(int)
    assert result["macro_f1"] == pytest.approx(sklearn_prf(y[held_out], pred, 2, "macro")[2],
                                               abs=1e-12)
    assert result["macro_f1"] == history.history["val_macro_f1"][-1]
    with pytest.raises(ValueError, match="'top_2_accuracy' needs one output per class"):
        training.evaluate(model, X, y, metrics=["top_2_accuracy"])
    # regression: functions only
    target = X[:, :1] * 2.0
    reg = nn.Sequential(nn.Linear(3, 1))
    mae = ("mae", lambda t, out: np.abs(t - out).mean())
    history = train(reg, X, target, loss=nn.MSELoss(),
                    optimizer=nn.SGD(reg.parameters(), lr=0.05), metrics=[mae])
    assert list(history.history) == ["loss", "mae"]
    result = training.evaluate(reg, X, target, metrics=[mae])
    assert result["mae"] == pytest.approx(np.abs(target - reg.predict(X)).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="'macro_f1' needs class labels"):
        training.evaluate(reg, X, target, metrics=["macro_f1"])


def test_progress_bar_and_early_stopping_see_the_metrics(capsys):
    X, y = blobs()
    stop = nn.EarlyStopping(monitor="val_macro_f1", patience=5)
    assert stop.maximize and nn.EarlyStopping(monitor="weighted_recall").maximize
    assert not nn.EarlyStopping(monitor="val_loss").maximize
    train(mlp(), X, y, epochs=1, progress=True, validation_split=0.25,
          metrics=["macro_f1"], callbacks=[stop])
    err = capsys.readouterr().err
    assert "macro_f1=" in err and "val_macro_f1=" in err
    assert stop.best is not None


@pytest.mark.parametrize("bad, error, message", [
    ("macro_f1", TypeError, r"metrics must be a list such as \['accuracy', 'macro_f1'\]"),
    (["f1"], ValueError, "unknown metric 'f1' .*'macro_f1' or 'weighted_f1'"),
    (["top_k_accuracy"], ValueError, "write k in the name: 'top_5_accuracy'"),
    (["top_0_accuracy"], ValueError, "unknown metric 'top_0_accuracy'"),
    (["micro_f1"], ValueError, "unknown metric 'micro_f1'.*macro_recall"),
    (["top_5_accuracy"], ValueError,
     "'top_5_accuracy' needs k <= the number of classes, and the model has 4 outputs"),
    (["macro_f1", "macro_f1"], ValueError, "the name 'macro_f1' is taken"),
    ([("accuracy", np.mean)], ValueError, "the name 'accuracy' is taken"),
    ([("val_x", np.mean)], ValueError, "the name 'val_x' is taken"),
    ([lambda t, o: 0.0], ValueError, r"has no usable name; pass it as a pair \('name', fn\)"),
    ([3], TypeError, "each entry must be a metric name, a function"),
])
def test_bad_metrics_are_refused_before_training(bad, error, message):
    X, y = blobs(n=40)
    model = mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        train(model, X, y, metrics=bad)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(error, match=message):
        training.evaluate(model, X, y, loss="cross_entropy", metrics=bad)


def test_a_metric_function_must_return_a_number():
    X, y = blobs(n=40)
    with pytest.raises(TypeError, match="metric 'per_class' must return a number, got ndarray"):
        train(mlp(), X, y, epochs=1,
              metrics=[("per_class", lambda t, out: out.mean(axis=0))])


def test_the_model_methods_take_metrics():
    # Sequential.fit / evaluate pass metrics= on to nnscratch.training
    from sklearn.metrics import f1_score

    (X, y), (X_test, y_test) = nn.datasets.load_sample()
    nn.seed(0)
    model = nn.models.mlp(hidden=(16,))
    history = model.fit(X[:500], y[:500], loss=nn.CrossEntropyLoss(),
                        optimizer=nn.Adam(model.parameters()), epochs=1, batch_size=64,
                        progress=False, metrics=["macro_f1"])
    assert "macro_f1" in history.history
    result = model.evaluate(X_test, y_test, metrics=["macro_f1"])
    expected = f1_score(y_test, model.predict(X_test).argmax(axis=1), average="macro")
    assert abs(result["macro_f1"] - expected) < 1e-12
