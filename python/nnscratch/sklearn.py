"""scikit-learn estimators: `NNClassifier` and `NNRegressor`, multilayer perceptrons trained
by nnscratch, usable wherever scikit-learn takes an estimator::

    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from nnscratch.sklearn import NNClassifier

    pipe = make_pipeline(StandardScaler(), NNClassifier(hidden_layer_sizes=(64,)))
    search = GridSearchCV(pipe, {"nnclassifier__learning_rate": [1e-3, 1e-2]}).fit(X, y)

They follow scikit-learn's estimator rules and pass ``check_estimator``: the constructor
only stores its arguments (they are checked by ``fit``), ``fit`` learns attributes ending
in ``_`` and returns ``self``, inputs are checked with scikit-learn's own ``validate_data``.

Design
------
training
    ``model.fit`` of nnscratch, mini-batch Adam (or SGD) for at most `epochs` epochs,
    stopping early, as MLPClassifier does, when the epoch's training loss has not improved
    by `tol` for `n_iter_no_change` epochs (no validation split is held out). The defaults
    (200 epochs, batches of 200) fit a small problem in a fraction of a second. A fit whose
    loss becomes NaN or infinite stops with nnscratch's ``FloatingPointError`` (lower
    `learning_rate`), and sets no fitted attribute.
dtype
    The network is float64 from end to end (inputs are converted once). A row's prediction
    hardly depends on the other rows of the batch -- the sums of a product may be split
    differently for another number of rows, which moves the last bits (differences of
    about 1e-15) -- so predicting a subset, or the rows in another order, gives the same
    numbers to far tighter than scikit-learn's checks ask.
random_state
    Two seeds are drawn from ``check_random_state(random_state)``: one for the initial
    weights, one for the shuffling (``fit(seed=...)``). The weights are drawn from the
    library generator (``nnscratch.seed``) seeded for the construction only: its state is
    put back afterwards, so fitting an estimator never changes the draws of other code.
    With an int, two fits give the same weights bit for bit (same backend and thread
    count, as everywhere in nnscratch); with None, each fit draws its seeds from NumPy's
    global generator, as scikit-learn's estimators do. Estimators fitted in several threads
    at once take turns for the seeded construction (a lock), so they stay reproducible.
pickling
    A fitted estimator pickles (``joblib``, ``GridSearchCV(n_jobs=...)``): the network is
    stored as its architecture (the dict ``nnscratch.serialization.architecture`` gives)
    and its ``state_dict`` arrays, and rebuilt on unpickling; the training-time buffers of
    the compiled path are not stored. Model *files* (``model_.save``) never use pickle.
"""
from __future__ import annotations

import contextlib
import numbers
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import numpy.typing as npt

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:      # validate_data and __sklearn_tags__ came with 1.6
    raise ImportError(f'nnscratch.sklearn needs scikit-learn >= 1.6: pip install '
                      f'"nnscratch[sklearn]" ({err})') from None

from . import _checks, _random, serialization
from .callbacks import EarlyStopping
from .layers import Linear, ReLU, Sigmoid, Tanh
from .losses import CrossEntropyLoss, MSELoss
from .model import Sequential
from .optim import SGD, Adam, Optimizer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["NNClassifier", "NNRegressor"]

ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
OPTIMIZERS = ("adam", "sgd")
AUTO_BATCH = 200          # batch_size="auto": min(200, n_samples), as MLPClassifier
_PICKLED_MODEL = "nnscratch.sklearn pickled model"    # marks the packed form of model_


@contextlib.contextmanager
def _unchanged_on_failure(estimator):
    """Within: a fit. If it raises, the estimator is as before it: `validate_data` has
    already set n_features_in_ (and feature_names_in_) for the new X, and those go back, so
    a failed refit leaves the old network and the attributes that describe its input."""
    names = ("n_features_in_", "feature_names_in_")
    before = {name: estimator.__dict__[name] for name in names if name in estimator.__dict__}
    try:
        yield
    except BaseException:
        for name in names:
            estimator.__dict__.pop(name, None)
        estimator.__dict__.update(before)
        raise


class _NNEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, network, training loop,
    pickling. Subclasses give ``fit`` (checks X and y, then ``_fit``) and ``_loss()``."""

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,),
                 activation: str = "relu", *, epochs: int = 200, batch_size: int | str = "auto",
                 optimizer: str = "adam", learning_rate: float = 0.001,
                 weight_decay: float = 0.0001, momentum: float = 0.9, shuffle: bool = True,
                 tol: float = 0.0001, n_iter_no_change: int = 10,
                 random_state: int | np.random.RandomState | None = None,
                 verbose: bool = False) -> None:
        # scikit-learn's rule: store the arguments as given; fit checks them
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.shuffle = shuffle
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose

    # --- fit -------------------------------------------------------------------------

    def _check_params(self):
        """The constructor's arguments, checked: a dict of the values fit uses."""
        sizes: Any = self.hidden_layer_sizes        # (an int, or a sequence of them)
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, (bool, np.bool_)):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"hidden_layer_sizes must be a sequence of ints, got "
                            f"{self.hidden_layer_sizes!r}") from None
        sizes = tuple(_checks.integer(f"hidden_layer_sizes[{i}]", s, 1)
                      for i, s in enumerate(sizes))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        batch_size = self.batch_size
        if not (isinstance(batch_size, str) and batch_size == "auto"):
            batch_size = _checks.integer("batch_size", batch_size, 1)
        patience = self.n_iter_no_change
        if patience is not None:
            patience = _checks.integer("n_iter_no_change", patience, 1)
        return {
            "sizes": sizes,
            "epochs": _checks.integer("epochs", self.epochs, 1),
            "batch_size": batch_size,
            "lr": _checks.real("learning_rate", self.learning_rate, 0.0, low_open=True),
            "weight_decay": _checks.real("weight_decay", self.weight_decay, 0.0),
            "momentum": _checks.real("momentum", self.momentum, 0.0, 1.0, high_open=True),
            "shuffle": _checks.boolean("shuffle", self.shuffle),
            "tol": _checks.real("tol", self.tol, 0.0),
            "patience": patience,
            "verbose": bool(self.verbose),
        }

    def _fit(self, X, y, n_outputs, **fitted):
        """Build a new network for checked float64 X (N, D) and targets y, train it, then
        set the fitted attributes (those of `fitted` too: none is set when training
        fails). Returns self."""
        params = self._check_params()
        rng = check_random_state(self.random_state)
        init_seed, shuffle_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
        model = self._build(X.shape[1], n_outputs, params["sizes"], init_seed)
        optimizer: Optimizer
        if self.optimizer == "adam":
            optimizer = Adam(model.parameters(), lr=params["lr"],
                             weight_decay=params["weight_decay"])
        else:
            optimizer = SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"],
                            weight_decay=params["weight_decay"])
        batch_size = params["batch_size"]
        if batch_size == "auto":
            batch_size = min(AUTO_BATCH, len(X))
        callbacks = []
        if params["patience"] is not None:
            callbacks.append(EarlyStopping(monitor="loss", patience=params["patience"],
                                           min_delta=params["tol"]))
        history = model.fit(X, y, loss=self._loss(), optimizer=optimizer,
                            epochs=params["epochs"], batch_size=batch_size,
                            shuffle=params["shuffle"], seed=shuffle_seed,
                            progress=params["verbose"], callbacks=callbacks)
        for name, value in fitted.items():
            setattr(self, name, value)
        self.model_ = model
        self.loss_curve_ = [float(v) for v in history.history["loss"]]
        self.loss_ = self.loss_curve_[-1]
        self.n_iter_ = len(self.loss_curve_)
        return self

    def _build(self, n_features, n_outputs, sizes, seed):
        """``Linear -> activation`` per hidden size, then a Linear to the outputs; float64,
        initial weights drawn with the library generator seeded with `seed`."""
        activation = ACTIVATIONS[self.activation]
        init = "he" if self.activation == "relu" else "xavier"
        layers, width = [], n_features
        with _library_seed(seed):
            for size in sizes:
                layers += [Linear(width, size, dtype=np.float64, init=init), activation()]
                width = size
            layers.append(Linear(width, n_outputs, dtype=np.float64, init="xavier"))
        return Sequential(*layers)

    def _outputs(self, X):
        """The network's outputs (N, n_outputs) for X, checked as fit's X was."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.model_.predict(X)

    # --- pickling --------------------------------------------------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())   # (a copy: it may be our own __dict__)
        model = state.get("model_")
        if isinstance(model, Sequential):
            state["model_"] = {_PICKLED_MODEL: {
                "architecture": serialization.architecture(model),
                "state_dict": dict(model.state_dict())}}
        return state

    def __setstate__(self, state):
        packed = state.get("model_")
        if isinstance(packed, dict) and _PICKLED_MODEL in packed:
            state = dict(state, model_=_unpack_model(packed[_PICKLED_MODEL]))
        super().__setstate__(state)


class NNClassifier(ClassifierMixin, _NNEstimator):
    """A multilayer perceptron classifier trained with nnscratch (softmax + cross-entropy).

    ``Linear -> activation`` for each hidden layer, then a Linear layer with one output per
    class (two for a binary problem); trained with mini-batch Adam or SGD on the mean
    cross-entropy. Labels may be any values scikit-learn accepts (ints, strings, ...).

    Parameters
    ----------
    hidden_layer_sizes : sequence of int, default (100,)
        Width of each hidden layer; ``()`` gives a linear model (softmax regression).
    activation : {"relu", "tanh", "sigmoid"}, default "relu"
        The hidden layers' activation. ReLU layers start with He initialisation, the others
        with Glorot (Xavier); the output layer with Glorot.
    epochs : int >= 1, default 200
        The most passes over the training data (fewer when the loss stops improving, see
        `n_iter_no_change`).
    batch_size : int >= 1 or "auto", default "auto"
        Samples per gradient step; "auto" is ``min(200, n_samples)``. The last, smaller
        batch of an epoch is used.
    optimizer : {"adam", "sgd"}, default "adam"
        ``nnscratch.Adam`` or ``nnscratch.SGD`` (with `momentum`).
    learning_rate : float > 0, default 0.001
        Step size (suits Adam; SGD usually wants 0.01 to 0.1).
    weight_decay : float >= 0, default 0.0001
        L2 penalty added to every gradient, ``grad + weight_decay * param`` (as torch.optim;
        biases included). The role of MLPClassifier's ``alpha``.
    momentum : float in [0, 1), default 0.9
        SGD's momentum; unused by Adam.
    shuffle : bool, default True
        Shuffle the samples every epoch.
    tol : float >= 0, default 0.0001
        The least decrease of the epoch's training loss that counts as an improvement.
    n_iter_no_change : int >= 1 or None, default 10
        Stop when the training loss has not improved by `tol` for this many epochs in a
        row; None trains all `epochs`.
    random_state : int, RandomState instance or None, default None
        Seeds the initial weights and the shuffling. An int makes fit reproducible.
    verbose : bool, default False
        Show a progress bar per epoch.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
        The class labels, sorted; output j of the network is ``classes_[j]``.
    model_ : nnscratch.Sequential
        The trained network (float64; its outputs are logits). ``model_.save(path)`` writes it.
    loss_curve_ : list of float
        The mean training loss of each epoch.
    loss_ : float
        The last epoch's mean training loss.
    n_iter_ : int
        The epochs trained.
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = NNClassifier(hidden_layer_sizes=(32,), random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 3)
    """

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> Self:
        """Train a new network on X (n_samples, n_features) and labels y (n_samples,).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Invalid X, y or parameters, or fewer than 2 classes.
        FloatingPointError
            The training loss became NaN or infinite (lower `learning_rate`).
        """
        with _unchanged_on_failure(self):
            return self._fit_classifier(X, y)

    def _fit_classifier(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, got "
                             f"1 class ({classes[0]!r})")
        return self._fit(X, encoder.transform(y).astype(np.int64), len(classes),
                         classes_=classes)

    def _loss(self):
        return CrossEntropyLoss()

    def predict_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """Class probabilities (n_samples, n_classes): the softmax of the network's outputs,
        columns in the order of `classes_`; each row sums to 1."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.model_.predict_proba(X)

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """The most probable class of each sample (n_samples,), a label of `classes_`."""
        proba = self.predict_proba(X)          # (first: checks that the model is fitted)
        return self.classes_[np.argmax(proba, axis=1)]


class NNRegressor(RegressorMixin, _NNEstimator):
    """A multilayer perceptron regressor trained with nnscratch (mean squared error).

    ``Linear -> activation`` for each hidden layer, then a Linear layer with one output per
    target; trained with mini-batch Adam or SGD on the mean squared error. y may be
    (n_samples,) or (n_samples, n_targets); predictions have the same shape as the y of
    ``fit``. The targets are used as given: scale large ones (e.g. with
    ``sklearn.compose.TransformedTargetRegressor``) as you scale X.

    Parameters
    ----------
    hidden_layer_sizes, activation, epochs, batch_size, optimizer, learning_rate,
    weight_decay, momentum, shuffle, tol, n_iter_no_change, random_state, verbose
        As for `NNClassifier`; `hidden_layer_sizes` ``()`` gives linear regression.

    Attributes
    ----------
    model_ : nnscratch.Sequential
        The trained network (float64), outputs (N, n_outputs_).
    n_outputs_ : int
        The number of targets.
    loss_curve_ : list of float
        The mean training loss (mean squared error) of each epoch.
    loss_ : float
    n_iter_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)

    Examples
    --------
    >>> import numpy as np
    >>> X = np.linspace(-1, 1, 200).reshape(-1, 1)
    >>> reg = NNRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, X[:, 0] ** 2)
    >>> reg.predict(X[:3]).shape
    (3,)
    """

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> Self:
        """Train a new network on X (n_samples, n_features) and targets y (n_samples,) or
        (n_samples, n_targets).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Invalid X, y or parameters.
        FloatingPointError
            The training loss became NaN or infinite (lower `learning_rate`, scale y).
        """
        with _unchanged_on_failure(self):
            return self._fit_regressor(X, y)

    def _fit_regressor(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        single_output = y.ndim == 1
        if single_output:
            y = y.reshape(-1, 1)
        return self._fit(X, y, y.shape[1], n_outputs_=y.shape[1], _single_output=single_output)

    def _loss(self):
        return MSELoss()

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """Predicted targets: (n_samples,) when fit's y was 1-D, else (n_samples, n_targets)."""
        out = self._outputs(X)
        return out.ravel() if self._single_output else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True     # y may be 2-D (one column per target)
        return tags


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

_GENERATOR_LOCK = threading.Lock()    # estimators fitted in threads: one seeded build at a time


@contextlib.contextmanager
def _library_seed(seed=None):
    """Inside the block the library generator (``nnscratch.seed``) is seeded with `seed`
    (left as it is for None); afterwards it is back in the state it had before. Builds by
    estimators in other threads wait (layers other code builds at that moment would draw
    from the seeded generator: the library has one)."""
    with _GENERATOR_LOCK:
        state = _random.get_state()
        if seed is not None:
            _random.seed(seed)
        try:
            yield
        finally:
            _random.set_state(state)


def _unpack_model(packed):
    """The Sequential of a pickled estimator's ``{"architecture", "state_dict"}``."""
    def bad(reason):
        return ValueError(f"cannot rebuild the pickled nnscratch model: {reason}")

    with _library_seed():     # building draws throw-away initial weights: put them back
        model = serialization.build(packed["architecture"], bad)
    model.load_state_dict(packed["state_dict"])
    return model
