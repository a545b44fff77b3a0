"""nnscratch.sklearn: NNClassifier and NNRegressor as scikit-learn estimators.

Every check of ``sklearn.utils.estimator_checks`` runs as its own test, with no expected
failures and no tags that relax a check; then the estimators at work: Pipeline,
GridSearchCV and cross_val_score on the digits, string labels, probabilities, a smooth
function, reproducibility, pickling, parameter checks.
"""
import copy
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from unittest import SkipTest      # (what scikit-learn's checks raise)

import numpy as np
import pytest

try:
    import sklearn
    from sklearn.utils.fixes import parse_version
except ImportError:        # (tests/conftest.py lists "could not import" skips as NOT RUN)
    pytest.skip("could not import 'scikit-learn' (pip install 'nnscratch[sklearn]')",
                allow_module_level=True)
if parse_version(sklearn.__version__) < parse_version("1.6"):
    pytest.skip(f"could not import 'scikit-learn' >= 1.6 (this is {sklearn.__version__})",
                allow_module_level=True)

from sklearn.base import clone, is_classifier, is_regressor
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

import nnscratch
from nnscratch import _random
from nnscratch.sklearn import NNClassifier, NNRegressor

ESTIMATORS = [NNClassifier(), NNRegressor()]

# A check may raise SkipTest for want of an optional package, not because of the estimator:
# pandas (check_*_data_not_an_array: the NotAnArray half has run, and passed, when the
# DataFrame half skips). Any other skip is a failure here.
ENVIRONMENT_SKIPS = {"pandas is not installed": "pandas"}


def _missing_package(reason):
    """The optional package a SkipTest reason says is missing (and is), else None."""
    for text, package in ENVIRONMENT_SKIPS.items():
        if text in reason:
            try:
                __import__(package)
            except ImportError:
                return package
    return None


@pytest.fixture
def array_api_enabled(monkeypatch):
    # check_array_api_input (NumPy namespace: dispatch on, results unchanged) needs it set
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")


# --------------------------------------------------------------------------------------
# scikit-learn's estimator checks, one test each
# --------------------------------------------------------------------------------------

@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_check(estimator, check, array_api_enabled):
    try:
        check(estimator)
    except SkipTest as skip:
        package = _missing_package(str(skip))
        if package is None:
            pytest.fail(f"the check skipped itself for NNClassifier/NNRegressor: {skip}")
        pytest.skip(f"could not import {package!r}: part of the check did not run ({skip})")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")  # (asserted on)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_check_estimator_runs_every_check_and_all_pass(estimator, array_api_enabled):
    results = check_estimator(estimator, on_fail=None)
    assert len(results) >= 50     # 55 for the classifier, 53 for the regressor (1.9)
    assert len({r["check_name"] for r in results}) >= 45
    bad = [(r["check_name"], r["status"], r["exception"]) for r in results
           if r["status"] != "passed"
           and not (r["status"] == "skipped" and _missing_package(str(r["exception"])))]
    assert bad == []
    assert all(r["expected_to_fail"] is False for r in results)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_tags_relax_no_check(estimator):
    tags = get_tags(estimator)
    assert tags.non_deterministic is False
    assert tags.requires_fit is True
    assert tags.input_tags.allow_nan is False and tags.input_tags.sparse is False
    assert tags.target_tags.required is True
    if is_classifier(estimator):
        assert tags.classifier_tags.poor_score is False
        assert tags.target_tags.multi_output is False
    else:
        assert is_regressor(estimator)
        assert tags.regressor_tags.poor_score is False
        assert tags.target_tags.multi_output is True and tags.target_tags.single_output


# --------------------------------------------------------------------------------------
# At work: digits, labels, probabilities, regression
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


def test_pipeline_cross_val_score_on_digits(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), NNClassifier(hidden_layer_sizes=(64,),
                                                        random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,)
    assert scores.mean() > 0.9, scores
    # in worker processes (the estimator travels pickled): the same folds, the same scores
    parallel = cross_val_score(pipe, X, y, cv=3, n_jobs=2)
    np.testing.assert_allclose(parallel, scores, atol=0.01)


def test_grid_search_over_a_pipeline_on_digits(digits):
    X, y = digits
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                        stratify=y)
    pipe = make_pipeline(StandardScaler(), NNClassifier(random_state=0))
    grid = {"nnclassifier__hidden_layer_sizes": [(8,), (64,)],
            "nnclassifier__learning_rate": [1e-3, 1e-2]}
    search = GridSearchCV(pipe, grid, cv=3).fit(X_train, y_train)
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_score_ > 0.9
    # a larger hidden layer beats 8 units, whatever the learning rate
    assert search.best_params_["nnclassifier__hidden_layer_sizes"] == (64,)
    assert search.score(X_test, y_test) > 0.9
    fitted = search.best_estimator_[-1]
    assert fitted.n_features_in_ == 64 and list(fitted.classes_) == list(range(10))


def _blobs(n=240, seed=0):
    X, y = make_blobs(n_samples=n, centers=3, n_features=4, cluster_std=1.0,
                      random_state=seed)
    return StandardScaler().fit_transform(X), y


def test_string_labels():
    X, y = _blobs()
    names = np.array(["setosa", "versicolor", "virginica"])
    clf = NNClassifier(hidden_layer_sizes=(16,), random_state=0).fit(X, names[y])
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert np.mean(pred == names[y]) > 0.9
    assert clf.score(X, names[y]) > 0.9


def test_non_contiguous_integer_labels_keep_their_order():
    X, y = _blobs()
    labels = np.array([100, -7, 3])
    clf = NNClassifier(hidden_layer_sizes=(16,), random_state=0).fit(X, labels[y])
    assert list(clf.classes_) == [-7, 3, 100]
    proba = clf.predict_proba(X)
    assert np.array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    # column j is the probability of classes_[j]: the true class gets the most mass
    column = np.searchsorted(clf.classes_, labels[y])
    assert np.mean(proba[np.arange(len(y)), column] > 0.5) > 0.9


def test_predict_proba_rows_are_distributions():
    X, y = _blobs()
    clf = NNClassifier(hidden_layer_sizes=(16,), random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # binary: two columns too
    binary = NNClassifier(hidden_layer_sizes=(8,), random_state=0).fit(X, y == 1)
    assert binary.predict_proba(X).shape == (len(X), 2)
    assert list(binary.classes_) == [False, True]


def test_one_class_is_refused_with_a_message():
    X, _ = _blobs(n=20)
    with pytest.raises(ValueError, match="at least 2 classes, got 1 class"):
        NNClassifier().fit(X, np.full(len(X), "only"))


def _smooth_function(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2


def test_regressor_fits_a_smooth_function():
    X, y = _smooth_function(600, 0)
    X_test, y_test = _smooth_function(300, 1)
    reg = NNRegressor(hidden_layer_sizes=(64, 64), learning_rate=0.01, random_state=0)
    reg.fit(X, y)
    assert reg.predict(X_test).shape == (300,)
    assert reg.n_outputs_ == 1
    assert reg.score(X_test, y_test) > 0.9


def test_regressor_multi_output():
    X, y = _smooth_function(600, 0)
    Y = np.column_stack([y, np.cos(X[:, 0])])
    X_test, y_test = _smooth_function(300, 1)
    Y_test = np.column_stack([y_test, np.cos(X_test[:, 0])])
    reg = NNRegressor(hidden_layer_sizes=(64, 64), learning_rate=0.01, random_state=0)
    reg.fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.predict(X_test).shape == (300, 2)
    assert reg.score(X_test, Y_test) > 0.9
    # a (n, 1) y keeps its shape; the same network as for the 1-D y
    column = clone(reg).fit(X, y.reshape(-1, 1))
    flat = clone(reg).fit(X, y)
    assert column.predict(X_test).shape == (300, 1)
    np.testing.assert_array_equal(column.predict(X_test)[:, 0], flat.predict(X_test))


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.01), ("sgd", 0.1)])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_every_optimizer_and_activation_learns(optimizer, lr, activation):
    X, y = _blobs()
    clf = NNClassifier(hidden_layer_sizes=(16,), activation=activation, optimizer=optimizer,
                       learning_rate=lr, epochs=60, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_no_hidden_layer_is_a_linear_model():
    X, y = _blobs()
    clf = NNClassifier(hidden_layer_sizes=(), learning_rate=0.01, random_state=0).fit(X, y)
    assert [type(layer).__name__ for layer in clf.model_] == ["Linear"]
    assert clf.score(X, y) > 0.9


# --------------------------------------------------------------------------------------
# Reproducibility, training attributes, pickling, parameter checks
# --------------------------------------------------------------------------------------

def test_random_state_gives_identical_predictions_twice():
    X, y = _blobs()
    first = NNClassifier(hidden_layer_sizes=(16,), epochs=30, random_state=3).fit(X, y)
    second = NNClassifier(hidden_layer_sizes=(16,), epochs=30, random_state=3).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert first.loss_curve_ == second.loss_curve_
    other = NNClassifier(hidden_layer_sizes=(16,), epochs=30, random_state=4).fit(X, y)
    assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))


def test_shuffling_follows_random_state_too():
    X, y = _blobs()
    kwargs = dict(hidden_layer_sizes=(16,), epochs=5, batch_size=16, random_state=0)
    shuffled = NNClassifier(**kwargs).fit(X, y)
    ordered = NNClassifier(shuffle=False, **kwargs).fit(X, y)
    assert shuffled.loss_curve_ != ordered.loss_curve_


def test_fits_in_threads_equal_fits_one_after_the_other():
    X, y = _blobs()

    def fit(i):
        clf = NNClassifier(hidden_layer_sizes=(16, 16, 16), epochs=10, random_state=i % 2)
        return clf.fit(X, y).predict_proba(X)

    serial = [fit(i) for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(fit, range(12)))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_fit_leaves_the_global_generators_alone():
    X, y = _blobs()
    nnscratch.seed(123)
    library_before = copy.deepcopy(_random.get_state())
    np.random.seed(5)
    numpy_before = np.random.get_state()[1].copy()
    NNClassifier(hidden_layer_sizes=(16,), epochs=5, random_state=0).fit(X, y)
    assert _random.get_state() == library_before
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_before)
    # and the estimator does not depend on the library generator's state
    nnscratch.seed(999)
    a = NNClassifier(hidden_layer_sizes=(16,), epochs=5, random_state=0).fit(X, y)
    b = NNClassifier(hidden_layer_sizes=(16,), epochs=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_training_attributes_and_early_stop():
    X, y = _blobs()
    full = NNClassifier(hidden_layer_sizes=(16,), epochs=25, n_iter_no_change=None,
                        random_state=0).fit(X, y)
    assert full.n_iter_ == 25 and len(full.loss_curve_) == 25
    assert full.loss_ == full.loss_curve_[-1] < full.loss_curve_[0]
    # a tolerance no epoch can meet: stops after n_iter_no_change epochs without improvement
    early = NNClassifier(hidden_layer_sizes=(16,), epochs=25, tol=1e3, n_iter_no_change=3,
                         random_state=0).fit(X, y)
    assert early.n_iter_ == 4 and len(early.loss_curve_) == 4
    assert isinstance(full.model_, nnscratch.Sequential)
    assert full.model_.dtype == np.float64


def test_pickle_round_trip_rebuilds_the_network():
    X, y = _blobs()
    clf = NNClassifier(hidden_layer_sizes=(16, 8), activation="tanh", epochs=20,
                       random_state=0).fit(X, y)
    expected = clf.predict_proba(X)
    data = pickle.dumps(clf)
    assert isinstance(clf.model_, nnscratch.Sequential)        # pickling changed nothing
    restored = pickle.loads(data)
    assert restored.model_ is not clf.model_
    assert [type(m).__name__ for m in restored.model_] == \
        ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    for name, array in clf.model_.state_dict().items():
        np.testing.assert_array_equal(restored.model_.state_dict()[name], array)
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))
    assert restored.get_params() == clf.get_params()
    assert restored.loss_curve_ == clf.loss_curve_
    # the training buffers of the compiled path are not in the pickle
    assert b"_fast_plan" not in data
    # deep copies too, and a copy is independent of the original
    twin = copy.deepcopy(clf)
    twin.model_.state_dict()["0.weight"][:] = 0
    np.testing.assert_array_equal(clf.predict_proba(X), expected)


def test_pickled_regressor_and_unfitted_estimators():
    X, y = _smooth_function(200, 0)
    reg = NNRegressor(hidden_layer_sizes=(16,), epochs=20, random_state=0).fit(X, y)
    restored = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(restored.predict(X), reg.predict(X))
    unfitted = pickle.loads(pickle.dumps(NNRegressor(epochs=7)))
    assert unfitted.epochs == 7
    with pytest.raises(NotFittedError):
        unfitted.predict(X)


def test_library_generator_untouched_by_unpickling():
    X, y = _blobs()
    data = pickle.dumps(NNClassifier(hidden_layer_sizes=(16,), epochs=2,
                                     random_state=0).fit(X, y))
    nnscratch.seed(7)
    before = copy.deepcopy(_random.get_state())
    pickle.loads(data)
    assert _random.get_state() == before


def test_constructor_stores_parameters_as_given():
    sizes = [32, 16]
    clf = NNClassifier(hidden_layer_sizes=sizes, activation="no such thing", epochs=-1)
    assert clf.hidden_layer_sizes is sizes and clf.activation == "no such thing"
    assert clf.get_params()["epochs"] == -1


@pytest.mark.parametrize("params, error, match", [
    ({"activation": "softplus"}, ValueError, "activation"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"hidden_layer_sizes": (10, 0)}, ValueError, r"hidden_layer_sizes\[1\]"),
    ({"hidden_layer_sizes": 3.5}, TypeError, "hidden_layer_sizes"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"batch_size": "big"}, TypeError, "batch_size"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"momentum": 1.0}, ValueError, "momentum"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
    ({"shuffle": "yes"}, TypeError, "shuffle"),
])
@pytest.mark.parametrize("Estimator", [NNClassifier, NNRegressor])
def test_bad_parameters_are_refused_by_fit(Estimator, params, error, match):
    X, y = _blobs(n=30)
    estimator = Estimator(**params)          # accepted here: scikit-learn's rule
    with pytest.raises(error, match=match):
        estimator.fit(X, y)


def test_diverging_training_raises_and_sets_nothing():
    X, y = _blobs()
    clf = NNClassifier(optimizer="sgd", learning_rate=1e8, random_state=0)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        clf.fit(X * 1e3, y)
    assert not hasattr(clf, "model_") and not hasattr(clf, "classes_")
    assert not hasattr(clf, "n_features_in_")


@pytest.mark.parametrize("Estimator", [NNClassifier, NNRegressor])
def test_a_failed_refit_leaves_the_fitted_estimator_as_it_was(Estimator):
    # validate_data sets n_features_in_ for the new X before training: a refit that fails
    # puts it back, so the old network still predicts, and data of the new width gets
    # scikit-learn's feature-count error rather than a shape error from inside the network
    X, y = _blobs()
    estimator = Estimator(epochs=3, random_state=0).fit(X, y)
    before = estimator.predict(X)
    wide = np.hstack([X, X]) * 1e3
    estimator.set_params(optimizer="sgd", learning_rate=1e8, epochs=200)
    with pytest.raises(FloatingPointError):
        estimator.fit(wide, y)
    assert estimator.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(estimator.predict(X), before)
    with pytest.raises(ValueError, match="features"):
        estimator.predict(wide)


def test_integer_hidden_layer_size_and_explicit_batch_size():
    X, y = _blobs()
    clf = NNClassifier(hidden_layer_sizes=12, batch_size=1000, epochs=3,
                       random_state=0).fit(X, y)
    assert clf.model_[0].out_features == 12
    assert clf.n_iter_ == 3


def test_dataframe_column_names_are_kept_and_checked():
    pd = pytest.importorskip("pandas")
    X, y = _smooth_function(60, 0)
    frame = pd.DataFrame(X, columns=["a", "b"])
    reg = NNRegressor(hidden_layer_sizes=(8,), epochs=3, random_state=0).fit(frame, pd.Series(y))
    assert list(reg.feature_names_in_) == ["a", "b"]
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        plain = reg.predict(X)
    np.testing.assert_array_equal(reg.predict(frame), plain)
    with pytest.raises(ValueError, match="feature names should match"):
        reg.predict(frame.rename(columns={"a": "c"}))


def test_input_errors_use_sklearn_messages():
    X, y = _blobs(n=30)
    clf = NNClassifier(hidden_layer_sizes=(4,), epochs=2, random_state=0)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.fit(bad, y)
    clf.fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but NNClassifier is expecting 4"):
        clf.predict(X[:, :3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no warning on ordinary input
        clf.predict(X)
