"""fastbp.sklearn: MLPClassifier and MLPRegressor as scikit-learn estimators.

scikit-learn's own estimator checks, then each feature: labels and outputs, sample weights,
partial_fit, warm_start, the stopping rule, pickling, clone, Pipeline, GridSearchCV, and
step-for-step agreement with sklearn.neural_network where the settings are the same.
"""
import contextlib
import copy
import numbers
import os
import pickle
import re
import subprocess
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
import scipy.sparse

pytest.importorskip("sklearn")

from sklearn import neural_network                                  # noqa: E402
from sklearn.base import clone                                      # noqa: E402
from sklearn.datasets import load_digits, load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline                          # noqa: E402
from sklearn.preprocessing import StandardScaler                    # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp                                                       # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor              # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- scikit-learn's estimator checks ----------------------------------------------------

# The defaults (hidden_layer_sizes=(100,), max_iter=200, adam, dtype=None: float32 input
# trained in float32, anything else in float64, as scikit-learn) pass every check with no
# expected failure; so do the sgd and lbfgs solvers but for one check of lbfgs's.
CHECKED = [MLPClassifier(random_state=0), MLPRegressor(random_state=0),
           MLPClassifier(solver="sgd", random_state=0), MLPRegressor(solver="sgd", random_state=0),
           MLPClassifier(solver="lbfgs", random_state=0),
           MLPRegressor(solver="lbfgs", random_state=0)]

LBFGS_SATURATES = (
    "full-batch L-BFGS drives the check's separable multi-label data to sigmoid outputs of "
    "exactly 1.0, which the check refuses (it wants 0 < p < 1); scikit-learn's own "
    "MLPClassifier(solver='lbfgs') fails it the same way "
    "(test_sklearns_lbfgs_fails_the_same_check)")


def expected_failures(estimator):
    if isinstance(estimator, MLPClassifier) and estimator.solver == "lbfgs":
        return {"check_classifiers_multilabel_output_format_predict_proba": LBFGS_SATURATES}
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    name = getattr(check, "func", check).__name__
    if name == "check_array_api_input":
        pytest.skip("needs SCIPY_ARRAY_API=1 before scipy is imported: run in a fresh "
                    "process by test_array_api_input_check")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
    # check_classifiers_multilabel_output_format_decision_function skips itself (with that
    # reason): the estimators have no decision_function, as sklearn's MLPClassifier.


def test_sklearns_lbfgs_fails_the_same_check():
    from sklearn.utils.estimator_checks import \
        check_classifiers_multilabel_output_format_predict_proba as check
    with warnings.catch_warnings(), pytest.raises(AssertionError, match="between 0 and 1"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        check("MLPClassifier", neural_network.MLPClassifier(solver="lbfgs", random_state=0))


def test_array_api_input_check():
    """The one check that needs SCIPY_ARRAY_API=1 set before scipy is imported."""
    code = (
        "import warnings\n"
        "from sklearn.exceptions import ConvergenceWarning\n"
        "warnings.simplefilter('ignore', ConvergenceWarning)\n"
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from fastbp.sklearn import MLPClassifier, MLPRegressor\n"
        "for estimator in (MLPClassifier(random_state=0), MLPRegressor(random_state=0)):\n"
        "    check_array_api_input(type(estimator).__name__, estimator, 'numpy',\n"
        "                          check_values=True, expect_only_array_outputs=False)\n"
        "print('ok')\n")
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")


# ---- optional dependency ------------------------------------------------------------------

def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_import_fastbp_does_not_import_sklearn():
    result = run_python("import sys, fastbp\n"
                        "assert 'sklearn' not in sys.modules, 'fastbp imported sklearn'\n"
                        "print('ok')")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_without_sklearn_the_import_error_says_what_to_install():
    result = run_python("import sys\n"
                        "sys.modules['sklearn'] = None   # as if it were not installed\n"
                        "import fastbp\n"
                        "try:\n"
                        "    import fastbp.sklearn\n"
                        "except ImportError as error:\n"
                        "    print('message:', error)\n")
    assert result.returncode == 0, result.stderr
    assert 'pip install "fastbp[sklearn]"' in result.stdout


# ---- data ----------------------------------------------------------------------------------

def blobs(n=300, n_classes=3, n_features=4, seed=0):
    rng = np.random.RandomState(seed)
    centers = rng.normal(scale=3.0, size=(n_classes, n_features))
    y = np.arange(n) % n_classes
    X = centers[y] + rng.normal(size=(n, n_features))
    return X, y


def small_data(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(90, 5))
    binary = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
    multiclass = np.digitize(X[:, 0], [-0.5, 0.5])
    multilabel = np.column_stack([binary, X[:, 2] > 0, X[:, 3] > 0.3]).astype(int)
    targets = np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])
    return X, binary, multiclass, multilabel, targets


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return function(*args, **kwargs)


def parameters(estimator):
    return [a.copy() for a in estimator.coefs_ + estimator.intercepts_]


def assert_same_parameters(a, b, **tolerance):
    pa, pb = (parameters(a), parameters(b)) if not isinstance(a, list) else (a, b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        if tolerance:
            np.testing.assert_allclose(x, y, **tolerance)
        else:
            np.testing.assert_array_equal(x, y)


# ---- accuracy next to scikit-learn's MLPClassifier ----------------------------------------

@pytest.mark.parametrize("loader, hidden, max_iter, slack", [
    (load_iris, (32,), 500, 0.04), (load_digits, (64,), 60, 0.02)])
def test_accuracy_comparable_to_sklearn(loader, hidden, max_iter, slack):
    X, y = loader(return_X_y=True)

    def cv_accuracy(cls):
        pipeline = make_pipeline(StandardScaler(), cls(hidden_layer_sizes=hidden,
                                                       max_iter=max_iter, random_state=0))
        return quiet(cross_val_score, pipeline, X, y, cv=5).mean()

    ours, theirs = cv_accuracy(MLPClassifier), cv_accuracy(neural_network.MLPClassifier)
    assert ours >= theirs - slack, (ours, theirs)
    assert ours > (0.93 if loader is load_iris else 0.9)


# ---- same settings, same steps as sklearn.neural_network ----------------------------------

def fit_alongside_sklearn(fastbp_class, sklearn_class, X, y, epochs=5, sample_weight=None,
                          **settings):
    """Both estimators from the same initial parameters (scikit-learn's are overwritten
    with fastbp's after a first epoch), then `epochs` more with warm_start."""
    common = {"random_state": 0, "max_iter": 1, "shuffle": False, "tol": 0.0, **settings}
    ours = quiet(fastbp_class(dtype="float64", **common).fit, X, y, sample_weight)
    theirs = quiet(sklearn_class(**common).fit, X, y, sample_weight)
    theirs.coefs_ = [w.copy() for w in ours.coefs_]
    theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
    # and the records of that first epoch, which the stopping rule reads
    theirs.loss_curve_ = list(ours.loss_curve_)
    theirs.best_loss_ = ours.best_loss_
    theirs._no_improvement_count = ours._no_improvement_count
    for estimator in (ours, theirs):
        estimator.set_params(warm_start=True, max_iter=epochs)
        quiet(estimator.fit, X, y, sample_weight)
    return ours, theirs


SGD_SETTINGS = [
    dict(solver="sgd", momentum=0.0, alpha=0.0),
    dict(solver="sgd", alpha=0.01, batch_size=30),                        # Nesterov momentum
    dict(solver="sgd", nesterovs_momentum=False, batch_size=45, alpha=0.1),  # plain momentum
    dict(solver="sgd", momentum=0.0, learning_rate="invscaling", learning_rate_init=0.1,
         alpha=0.0),
    dict(solver="sgd", hidden_layer_sizes=(7, 4), activation="tanh", alpha=0.0,
         learning_rate_init=0.05),
    dict(solver="sgd", activation="logistic", alpha=0.001, learning_rate_init=0.05),
    # the rate divided by 5 after each 2 epochs without improvement, until it is <= 1e-6
    dict(solver="sgd", momentum=0.0, learning_rate="adaptive", learning_rate_init=0.05,
         tol=100.0, n_iter_no_change=1, alpha=0.0),
]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression",
                                  "regression_1d"])
@pytest.mark.parametrize("settings", SGD_SETTINGS)
def test_sgd_steps_equal_sklearns(task, settings):
    """alpha, batch_size, momentum, invscaling, the output layer and the loss mean what
    they mean in scikit-learn: from the same weights, the same parameters step for step."""
    X, binary, multiclass, multilabel, targets = small_data()
    y = {"binary": binary, "multiclass": multiclass, "multilabel": multilabel,
         "regression": targets, "regression_1d": targets[:, 0]}[task]
    classes = (MLPRegressor, neural_network.MLPRegressor) if task.startswith("regression") \
        else (MLPClassifier, neural_network.MLPClassifier)
    ours, theirs = fit_alongside_sklearn(*classes, X, y, epochs=30, **settings)
    assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-12)
    # loss_ is scikit-learn's; its L2 term is taken with the weights at the end of the epoch
    # (scikit-learn: before each batch), so with alpha > 0 it agrees to a few digits.
    tolerance = dict(rtol=1e-9) if settings["alpha"] == 0 else dict(rtol=1e-2)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, **tolerance)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_


def test_sample_weighted_steps_equal_sklearns():
    X, binary, _, _, targets = small_data()
    weights = np.random.RandomState(1).randint(0, 4, size=len(X)).astype(float)
    for classes, y in (((MLPClassifier, neural_network.MLPClassifier), binary),
                       ((MLPRegressor, neural_network.MLPRegressor), targets)):
        ours, theirs = fit_alongside_sklearn(*classes, X, y, sample_weight=weights,
                                             solver="sgd", alpha=0.01)
        assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-12)


def test_sample_weighted_epochs_of_several_batches_report_sklearns_loss():
    """With sample weights and several batches an epoch, scikit-learn's loss_ is the sum
    over batches of each batch's weighted mean times its rows, over the rows (not the
    epoch's weighted mean): loss_curve_, and so the epoch the fit stops at, are the same."""
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    y = X[:, 0] - X[:, 1] + 0.3 * rng.randn(40)
    weights = np.r_[np.ones(20), 3 * np.ones(20)]       # two batches of 20: weights 20, 60
    settings = dict(hidden_layer_sizes=(4,), solver="sgd", momentum=0.0, alpha=0.0,
                    random_state=0, shuffle=False, batch_size=20, learning_rate_init=0.05,
                    n_iter_no_change=3, tol=3e-4, max_iter=500)
    ours, theirs = (quiet(cls(**settings).fit, X, y, sample_weight=weights)
                    for cls in (MLPRegressor, neural_network.MLPRegressor))
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    assert_same_parameters(ours, theirs, rtol=1e-8, atol=1e-11)
    # without weights (or with weights adding up to each batch's rows) the two sums are
    # the same, and the same bits
    curves = []
    for batch_means in (False, True):
        for row_weights in (None, np.ones(40)):
            trainer = fastbp.Trainer("mse", learning_rate=0.05, epochs=3, batch_size=16,
                                     seed=0, n_threads=1)
            trainer._batch_mean_loss = batch_means
            model = fastbp.MLP([3, 4, 1], ["tanh", "identity"], dtype="float64", seed=0)
            curves.append(trainer.fit(model, X, y[:, None], sample_weight=row_weights).loss)
    assert all(curve == curves[0] for curve in curves)


def test_saturated_outputs_report_sklearns_clipped_log_loss():
    """scikit-learn clips the classifiers' probabilities to [eps, 1 - eps] in the loss's
    value: where outputs saturate, loss_curve_ (sgd, alpha=0) and L-BFGS's path, which
    reads the objective's value in its line search, are still scikit-learn's."""
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3) * 10
    y = np.digitize(X[:, 0], [-5, 5])
    settings = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=1.0,
                    momentum=0.0, alpha=0.0, max_iter=5, shuffle=False, random_state=0)
    ours, theirs = (quiet(cls(**settings).fit, X, y)
                    for cls in (MLPClassifier, neural_network.MLPClassifier))
    assert max(theirs.loss_curve_) > 20             # saturated: rows at the clip's cap
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    X = rng.randn(40, 3)
    for y in (np.digitize(X[:, 0], [-0.5, 0.5]), (X[:, 0] > 0).astype(int)):
        settings = dict(hidden_layer_sizes=(4, 3), activation="identity", solver="lbfgs",
                        max_iter=15, random_state=1)
        ours, theirs = (quiet(cls(**settings).fit, X, y)
                        for cls in (MLPClassifier, neural_network.MLPClassifier))
        assert ours.n_iter_ == theirs.n_iter_
        np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)
        assert_same_parameters(ours, theirs, rtol=1e-7, atol=1e-10)


def test_adam_steps_equal_sklearns_but_for_epsilon():
    """Adam is PyTorch's rule, which adds epsilon after the bias correction of sqrt(v)
    (scikit-learn adds it before): with a negligible epsilon the steps are the same."""
    X, binary, multiclass, multilabel, targets = small_data()
    for classes, y in (((MLPClassifier, neural_network.MLPClassifier), binary),
                       ((MLPClassifier, neural_network.MLPClassifier), multiclass),
                       ((MLPClassifier, neural_network.MLPClassifier), multilabel),
                       ((MLPRegressor, neural_network.MLPRegressor), targets)):
        ours, theirs = fit_alongside_sklearn(*classes, X, y, solver="adam", alpha=0.01,
                                             batch_size=30, learning_rate_init=0.01,
                                             epsilon=1e-30)
        assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-12)


# ---- classification: labels, outputs, probabilities ---------------------------------------

@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "eel"]), np.array([-3, 7, 10]),
                                    np.array([1.0, 2.0, 3.0]),
                                    np.array(["cat", "dog", "eel"], dtype=object)])
def test_class_labels_of_any_type(labels):
    X, y = blobs()
    y_labels = labels[y]
    clf = quiet(MLPClassifier(hidden_layer_sizes=(16,), random_state=0).fit, X, y_labels)
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    predicted = clf.predict(X)
    assert predicted.dtype == clf.classes_.dtype
    assert set(predicted) <= set(labels)
    assert clf.score(X, y_labels) > 0.95
    assert clf.out_activation_ == "softmax" and clf.n_outputs_ == 3
    assert clf.model_.activations == ("relu", "softmax")


def test_binary_uses_one_sigmoid_output():
    X, y = blobs(n_classes=2)
    y = np.array(["no", "yes"])[y]
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), random_state=0).fit, X, y)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    assert clf.model_.layer_sizes[-1] == 1 and clf.model_.activations[-1] == "sigmoid"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))
    assert clf.score(X, y) > 0.95


def test_multiclass_probabilities():
    X, y = blobs(n_classes=4)
    clf = quiet(MLPClassifier(hidden_layer_sizes=(16,), random_state=0).fit, X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), proba.argmax(axis=1))


def test_multilabel():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(400, 6))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] * X[:, 4] > 0]).astype(int)
    clf = quiet(MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit, X, Y)
    assert clf.n_outputs_ == 3 and clf.out_activation_ == "logistic"
    assert clf.model_.activations[-1] == "sigmoid"
    predicted = clf.predict(X)
    assert predicted.shape == Y.shape
    assert set(np.unique(predicted)) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    assert clf.score(X, Y) > 0.8                        # subset accuracy
    # loss_ is scikit-learn's multi-label log-loss: summed over the labels
    assert clf.loss_ == pytest.approx(clf.loss_curve_[-1])


def test_single_class_predicts_it():
    X, _ = blobs()
    clf = quiet(MLPClassifier(hidden_layer_sizes=(4,), random_state=0).fit, X,
                np.full(len(X), "only"))
    assert (clf.predict(X) == "only").all()


def test_regression_targets_are_refused_by_the_classifier():
    X, _ = blobs()
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, len(X)))


# ---- regression ----------------------------------------------------------------------------

def test_multi_output_regression():
    X, Y = make_regression(n_samples=400, n_features=8, n_targets=3, noise=1.0,
                           random_state=0)
    Y = Y / Y.std(axis=0)
    reg = quiet(MLPRegressor(hidden_layer_sizes=(32,), max_iter=400, learning_rate_init=0.01,
                             random_state=0).fit, X, Y)
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    predicted = reg.predict(X)
    assert predicted.shape == Y.shape and predicted.dtype == np.float64
    assert reg.score(X, Y) > 0.95
    one = quiet(MLPRegressor(hidden_layer_sizes=(32,), random_state=0).fit, X, Y[:, 0])
    assert one.predict(X).shape == (len(X),) and one.n_outputs_ == 1


@pytest.mark.parametrize("loss", ["squared_error", "mse", "absolute_error", "mae", "huber",
                                  fastbp.losses.Huber(delta=0.5)])
def test_regression_losses(loss):
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, size=(400, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    reg = quiet(MLPRegressor(loss=loss, hidden_layer_sizes=(32,), learning_rate_init=0.01,
                             max_iter=300, random_state=0).fit, X, y)
    assert reg.score(X, y) > 0.9


def test_squared_error_is_half_the_mean_squared_error():
    """loss_ for squared_error is scikit-learn's: mean over all elements of (p - y)^2 / 2."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(64, 3))
    Y = rng.normal(size=(64, 2))
    reg = MLPRegressor(hidden_layer_sizes=(8,), alpha=0.0, batch_size=64, max_iter=1,
                       solver="sgd", learning_rate_init=1e-12, dtype="float64",
                       random_state=0)
    quiet(reg.fit, X, Y)          # one full-batch step of 1e-12: the loss of the start
    assert reg.loss_ == pytest.approx(0.5 * np.mean((reg.predict(X) - Y) ** 2), rel=1e-9)
    mse = quiet(clone(reg).set_params(loss="mse").fit, X, Y)
    assert mse.loss_ == pytest.approx(np.mean((mse.predict(X) - Y) ** 2), rel=1e-9)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_squared_error_stays_quadratic_past_float32_in_a_float64_model(solver):
    """Errors of 1e40 (past float32's largest number) in float64: the loss and its gradient
    are scikit-learn's (the squared error was a Huber loss capped at float32's largest,
    linear beyond: loss_ 2.5e78 against 4.3e79)."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 2))
    y = X[:, 0] * 1e40
    settings = dict(hidden_layer_sizes=(3,), solver=solver, alpha=0.0, random_state=0,
                    max_iter=1 if solver == "sgd" else 5)
    if solver == "sgd":
        settings.update(learning_rate_init=1e-40, momentum=0.0, batch_size=50, shuffle=False)
    ours = quiet(MLPRegressor(dtype="float64", **settings).fit, X, y)
    theirs = quiet(neural_network.MLPRegressor(**settings).fit, X, y)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    for mine, its in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, its, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("settings, trainer_name", [
    ({"learning_rate_init": 1e-45}, "learning_rate"),
    ({"beta_2": 0.99999999}, "beta2"),
    ({"momentum": 0.999999999, "solver": "sgd"}, "momentum"),
    ({"epsilon": 1e-46}, "epsilon"),
    ({"alpha": 1e-44}, "weight_decay"),
    ({"learning_rate_init": 2e38, "solver": "sgd"}, "learning_rate")])
@pytest.mark.parametrize("incremental", [False, True])
def test_a_number_the_float32_model_cannot_hold_is_refused_by_the_estimators_name(
        settings, trainer_name, incremental):
    """Numbers the range checks pass but a float32 model cannot hold were refused by the
    trainer, naming its parameters (learning_rate, another parameter here; weight_decay
    for alpha, at the derived value): refused naming the estimator's, nothing fitted."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    Y = (rng.uniform(size=(200, 3)) > 0.5).astype(int)      # 3 outputs: the scale is 3
    estimator = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0, **settings)
    name = next(iter(settings))
    with pytest.raises(ValueError, match=rf"^{name}=.* does not fit this estimator's float32 "
                                         rf"model \({trainer_name}=") as refused:
        if incremental:
            estimator.partial_fit(X, Y, classes=[0, 1, 2])   # (the labels: Y's columns)
        else:
            estimator.fit(X, Y)
    assert "use 0" not in str(refused.value)       # (0 is no learning_rate_init here)
    assert not hasattr(estimator, "model_") and not hasattr(estimator, "n_iter_")


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_a_huber_delta_the_float32_model_cannot_hold_is_refused_as_the_loss(solver):
    """L-BFGS checked no number in the model's dtype before the compiled loss: its
    refusal named delta, where the stochastic solvers' names the loss."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    estimator = MLPRegressor(hidden_layer_sizes=(4,), solver=solver, max_iter=2,
                             loss=fastbp.losses.Huber(delta=1e-46), random_state=0)
    with pytest.raises(ValueError, match=r"^loss=Huber\(delta=1e-46\) does not fit this "
                                         r"estimator's float32 model \(delta=1e-46 is too small"):
        estimator.fit(X, X[:, 0])
    assert not hasattr(estimator, "model_")


@pytest.mark.parametrize("as_list", [False, True])
def test_a_regressors_text_targets_are_refused_as_the_trainer_refuses_them(as_list):
    """Numeric text was parsed (scikit-learn's MLPRegressor fails on it, Trainer.fit
    refuses it), and a "nan" among it was refused as a value too large for the float64
    model, 'or use dtype=float64'."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 3))
    y = rng.normal(size=30).round(3).astype(str)
    y[0] = "nan"
    with pytest.raises(TypeError, match="y must hold numbers; got an array of dtype <U"):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(X, list(y) if as_list else y)
    huge = rng.normal(size=30).astype(np.longdouble)
    huge[0] = np.longdouble("1e400")
    with pytest.raises(ValueError, match=r"too large for the model's float64 \(at most "
                                         r"1.798e\+308\); scale the targets$"):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(X, huge)


def test_unsupported_regression_losses():
    X, y = make_regression(n_samples=20, n_features=2, random_state=0)
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, y)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="hinge").fit(X, y)


# ---- sample weights ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_sample_weight_equals_repetition(cls):
    """Integer weights equal repeated rows (alpha is divided by the batch's total weight,
    as in scikit-learn): exactly in float64, to float32 rounding in float32."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 4))
    y = (X[:, 0] > 0).astype(int) if cls is MLPClassifier else X[:, 0] - X[:, 1]
    weights = rng.randint(0, 4, size=len(X))
    for dtype, tolerance in (("float64", dict(rtol=1e-10, atol=1e-12)),
                             ("float32", dict(rtol=1e-4, atol=1e-5))):
        settings = dict(hidden_layer_sizes=(8,), max_iter=50, alpha=0.01, dtype=dtype,
                        random_state=0)
        weighted = quiet(cls(**settings).fit, X, y, sample_weight=weights)
        repeated = quiet(cls(**settings).fit, np.repeat(X, weights, axis=0),
                         np.repeat(y, weights))
        assert weighted.n_iter_ == repeated.n_iter_
        method = "predict_proba" if cls is MLPClassifier else "predict"
        np.testing.assert_allclose(getattr(weighted, method)(X),
                                   getattr(repeated, method)(X), **tolerance)


def test_sample_weight_moves_the_decision():
    X, y = blobs(n_classes=2, seed=3)
    X = X + np.random.RandomState(0).normal(scale=4.0, size=X.shape)   # overlapping classes
    plain = quiet(MLPClassifier(hidden_layer_sizes=(8,), random_state=0).fit, X, y)
    favour_one = np.where(y == 1, 10.0, 1.0)
    weighted = quiet(MLPClassifier(hidden_layer_sizes=(8,), random_state=0).fit, X, y,
                     sample_weight=favour_one)
    assert (weighted.predict(X) == 1).mean() > (plain.predict(X) == 1).mean()


def test_bad_sample_weights():
    X, y = blobs()
    with pytest.raises(ValueError, match="zero"):
        MLPClassifier().fit(X, y, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="(?i)negative"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(len(X)))
    with pytest.raises(ValueError):
        MLPClassifier().fit(X, y, sample_weight=np.ones(3))


# ---- partial_fit ---------------------------------------------------------------------------

def test_partial_fit_equals_fit_epoch_for_epoch():
    """k partial_fit calls = one fit of k epochs: the optimizer's state carries over."""
    X, y = blobs()
    settings = dict(hidden_layer_sizes=(16,), random_state=0, tol=0.0, shuffle=True)
    online = MLPClassifier(**settings)
    for _ in range(4):
        online.partial_fit(X, y, classes=np.unique(y))
        assert online.n_iter_ == 1                  # as scikit-learn: this call's epochs
    batch = quiet(MLPClassifier(max_iter=4, **settings).fit, X, y)
    assert_same_parameters(online, batch)
    assert online.loss_curve_ == batch.loss_curve_
    assert online.t_ == batch.t_ == 4 * len(X)


def test_partial_fit_classes():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    labels = np.array(["a", "b", "c"])[y]
    first = y < 2                                   # the first chunk has two of three classes
    clf.partial_fit(X[first], labels[first], classes=["a", "b", "c"])
    np.testing.assert_array_equal(clf.classes_, ["a", "b", "c"])
    assert clf.n_outputs_ == 3
    for _ in range(30):
        clf.partial_fit(X, labels)
    assert clf.score(X, labels) > 0.95
    with pytest.raises(ValueError, match="not the same"):
        clf.partial_fit(X, labels, classes=["a", "b"])
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X, np.array(["a", "z"])[y % 2])


def test_partial_fit_regressor_and_sample_weight():
    X, y = make_regression(n_samples=200, n_features=4, noise=0.5, random_state=0)
    y = y / y.std()
    reg = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=0.01, random_state=0)
    for start in range(0, 200, 50):                 # data in chunks
        reg.partial_fit(X[start:start + 50], y[start:start + 50],
                        sample_weight=np.ones(50))
    for _ in range(60):
        reg.partial_fit(X, y)
    assert reg.score(X, y) > 0.9
    assert len(reg.loss_curve_) == 64


def test_partial_fit_refuses_early_stopping_and_other_shapes():
    X, y = blobs()
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])
    reg = MLPRegressor(hidden_layer_sizes=(4,)).partial_fit(X, y.astype(float))
    with pytest.raises(ValueError, match="features"):
        reg.partial_fit(X[:, :3], y)
    with pytest.raises(ValueError, match="warm_start=False"):
        reg.set_params(hidden_layer_sizes=(5,)).partial_fit(X, y)


def partial_fits(make, X, y, chunks, **first):
    """An estimator after a partial_fit on each chunk of (X, y) in turn (first: the first
    call's extra arguments), and its parameters after each call."""
    estimator, trace = make(), []
    for index, chunk in enumerate(chunks):
        estimator.partial_fit(X[chunk], y[chunk], **(first if index == 0 else {}))
        trace.append(np.concatenate([a.ravel() for a in parameters(estimator)]))
    return estimator, trace


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partial_fit_on_plain_arrays_trains_as_through_validate_data(dtype):
    """partial_fit after the first call takes a NumPy array of floats and an array of
    labels (integers or strings, each in classes_) or of numeric targets straight to the
    trainer: the same bits after every call as with lists (which take validate_data's
    path; multi-label targets always do), and validate_data is not called."""
    X, binary, multiclass, multilabel, targets = small_data()
    X = X.astype(dtype)
    chunks = [slice(0, 30), slice(30, 31), slice(31, 60), slice(60, 90)] * 2
    cases = [("binary", MLPClassifier, binary, {"classes": [0, 1]}),
             ("multiclass", MLPClassifier, multiclass, {"classes": [0, 1, 2]}),
             ("words", MLPClassifier, np.array(["cat", "dog", "eel"])[multiclass],
              {"classes": ["cat", "dog", "eel"]}),
             ("multilabel", MLPClassifier, multilabel, {"classes": [0, 1, 2]}),
             ("regression", MLPRegressor, targets[:, 0], {}),
             ("two targets", MLPRegressor, targets, {}),
             ("whole targets", MLPRegressor, np.round(targets[:, 0] * 3).astype(int), {})]
    for name, kind, y, first in cases:
        def make():
            return kind(hidden_layer_sizes=(6,), learning_rate_init=0.05, random_state=0)
        plain, plain_trace = partial_fits(make, X, y, chunks, **first)
        through = make()
        through_trace = []
        for index, chunk in enumerate(chunks):
            if index == 0:      # (a list would make a float64 model)
                through.partial_fit(X[chunk], y[chunk], **first)
            else:
                through.partial_fit(X[chunk].tolist(), y[chunk].tolist())
            through_trace.append(np.concatenate([a.ravel() for a in parameters(through)]))
        for call, (a, b) in enumerate(zip(plain_trace, through_trace)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}, call {call}")
        assert plain.loss_curve_ == through.loss_curve_ and plain.t_ == through.t_, name
        if name != "multilabel":
            with mock.patch("fastbp.sklearn.validate_data", side_effect=AssertionError):
                plain.partial_fit(X[:5], y[:5])         # no validate_data on this path


def test_partial_fit_on_a_data_frame_and_series_trains_as_through_validate_data():
    """partial_fit after the first call on a data frame of the fitted float columns and a
    pandas Series of a NumPy dtype takes them straight to the trainer, with the bits of
    validate_data's path (taken by hand here) after every call; a frame or Series it
    cannot take (other columns, labels as Python objects, NaN) gets that path's answer
    or error, with the estimator as it was."""
    pandas = pytest.importorskip("pandas")
    X, binary, multiclass, _, targets = small_data()
    frame = pandas.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    chunks = [slice(0, 30), slice(30, 31), slice(31, 60), slice(60, 90)] * 2
    base = next(c for c in MLPClassifier.__mro__ if "_plain_training_rows" in c.__dict__)
    cases = [(MLPClassifier, pandas.Series(multiclass), {"classes": [0, 1, 2]}),
             (MLPClassifier, pandas.Series(np.array(["no", "yes"])[binary]),
              {"classes": ["no", "yes"]}),                        # object labels: checked
             (MLPRegressor, pandas.Series(targets[:, 0]), {})]
    for kind, y, first in cases:
        trained = []
        for forced in (False, True):
            estimator = kind(hidden_layer_sizes=(5,), learning_rate_init=0.05, random_state=0)
            with mock.patch.object(base, "_plain_training_rows", return_value=None) \
                    if forced else contextlib.nullcontext():
                for index, chunk in enumerate(chunks):
                    estimator.partial_fit(frame.iloc[chunk], y.iloc[chunk],
                                          **(first if index == 0 else {}))
            trained.append(estimator)
        fast, slow = trained
        assert_same_parameters(fast, slow)                  # bit for bit
        assert fast.loss_curve_ == slow.loss_curve_
    regressor = fast
    with_nan = pandas.Series(np.where(binary == 1, np.nan, targets[:, 0]))
    for bad_X, bad_y, message in ((frame, with_nan, "Input y contains NaN"),
                                  (frame[frame.columns[::-1]], with_nan.fillna(0),
                                   "feature names should match")):
        before = pickle.dumps(regressor)
        with pytest.raises(ValueError, match=message):
            regressor.partial_fit(bad_X, bad_y)
        assert pickle.dumps(regressor) == before
    with mock.patch("fastbp.sklearn.validate_data", side_effect=AssertionError):
        regressor.partial_fit(frame, pandas.Series(targets[:, 0]))   # the plain path


def test_partial_fit_on_plain_arrays_refuses_what_validate_data_refuses():
    """Each refusal of a partial_fit after the first: scikit-learn's error, and the
    estimator exactly as it was."""
    X, y = blobs()
    X32 = X.astype(np.float32)
    classifier = MLPClassifier(hidden_layer_sizes=(4,), random_state=0).partial_fit(
        X32, y, classes=[0, 1, 2])
    regressor = MLPRegressor(hidden_layer_sizes=(4,), random_state=0).partial_fit(
        X32, y.astype(float))
    nan_rows = X.copy()
    nan_rows[3, 1] = np.nan
    cases = [
        (classifier, X, np.where(y == 2, 5, y), "classes not in"),
        (classifier, X, np.where(y == 2, 0.5, y), "Unknown label type"),
        (classifier, X, y.astype(str), "classes not in"),
        (classifier, nan_rows, y, "Input X contains NaN"),
        (classifier, np.full_like(X, 1e300), y, "too large for dtype\\('float32'\\)"),
        (classifier, X[:, :3], y, "X has 3 features"),
        (classifier, X, y[:-1], "inconsistent numbers of samples"),
        (regressor, X, np.where(y == 2, np.nan, y), "Input y contains NaN"),
        (regressor, X, np.where(y == 2, 1e300, y), "too large for the model's float32"),
        (regressor, nan_rows, y.astype(float), "Input X contains NaN"),
        (regressor, X, np.zeros((len(X), 0)), "0 feature"),
    ]
    for estimator, bad_X, bad_y, message in cases:
        before = pickle.dumps(estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # the casts' overflow
            with pytest.raises(ValueError, match=message):
                estimator.partial_fit(bad_X, bad_y)
        assert pickle.dumps(estimator) == before, message
    refused = "The 'random_state' parameter of MLPClassifier must be"
    with pytest.raises(ValueError, match=refused):                      # a first call
        clone(classifier).set_params(random_state="seven").partial_fit(X, y, classes=[0, 1, 2])
    classifier.set_params(random_state="seven")
    with pytest.raises(ValueError, match=refused):                      # one that goes on
        classifier.partial_fit(X, y)


# ---- warm_start ----------------------------------------------------------------------------

def test_warm_start_continues_from_the_fitted_network():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, tol=0.0, random_state=0,
                        warm_start=True)
    quiet(clf.fit, X, y)
    model, curve = clf.model_, list(clf.loss_curve_)
    quiet(clf.fit, X, y)
    assert clf.model_ is model                       # the same network, trained further
    assert len(clf.loss_curve_) == 10 and clf.loss_curve_[:5] == curve
    assert clf.loss_curve_[5] < curve[0]
    assert clf.t_ == 10 * len(X) and clf.n_iter_ == 5

    cold = clone(clf).set_params(warm_start=False)
    quiet(cold.fit, X, y)
    quiet(cold.fit, X, y)
    assert len(cold.loss_curve_) == 5                # without warm_start: starts over

    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="warm_start=False"):
        clf.set_params(activation="tanh").fit(X, y)


# ---- the stopping rule, early stopping, learning-rate schedules ---------------------------

def test_stops_when_the_training_loss_stops_improving():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), tol=100.0, n_iter_no_change=3,
                        max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf.fit(X, y)
    # scikit-learn's rule: the first epoch sets best_loss_, then n_iter_no_change + 1 epochs
    # that do not improve it by tol
    assert clf.n_iter_ == 3 + 2 and len(clf.loss_curve_) == 5
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None


def test_convergence_warning_at_max_iter():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)


def test_never_stops_with_infinite_patience():
    X, y = blobs()
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), tol=100.0, n_iter_no_change=np.inf,
                              max_iter=12, random_state=0).fit, X, y)
    assert clf.n_iter_ == 12


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_keeps_the_best_epoch(cls):
    X, y = blobs(n=400, n_classes=2, seed=5)
    X = X + np.random.RandomState(1).normal(scale=3.0, size=X.shape)   # noisy: overfits
    if cls is MLPRegressor:
        y = X[:, 0] + np.random.RandomState(2).normal(size=len(X))
    settings = dict(hidden_layer_sizes=(64,), learning_rate_init=0.01, early_stopping=True,
                    n_iter_no_change=5, max_iter=300, random_state=0)
    est = quiet(cls(**settings).fit, X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < 300
    assert est.best_validation_score_ == max(scores)
    assert est.best_loss_ is None
    best_epoch = int(np.argmax(scores)) + 1
    # the same fit stopped at the best epoch holds the parameters the estimator restored
    at_best = quiet(cls(**{**settings, "max_iter": best_epoch,
                           "n_iter_no_change": np.inf}).fit, X, y)
    assert_same_parameters(est, at_best)


def test_early_stopping_needs_a_validation_set():
    X, y = blobs(n=12)
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPClassifier(early_stopping=True, validation_fraction=0.05).fit(X, y)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_a_validation_fraction_of_numpys_float_types_is_the_fraction(cls):
    """np.float32(0.25) (a grid of float32 fractions) was refused by train_test_split's
    own check, naming its test_size; scikit-learn's MLP takes it."""
    X, y = blobs()
    settings = dict(hidden_layer_sizes=(8,), early_stopping=True, max_iter=3,
                    n_iter_no_change=100, random_state=0)
    expected = quiet(cls(**settings, validation_fraction=0.25).fit, X, y)
    for fraction in (np.float32(0.25), np.float16(0.25), np.longdouble(0.25)):
        got = quiet(cls(**settings, validation_fraction=fraction).fit, X, y)
        assert got.validation_scores_ == expected.validation_scores_
        assert_same_parameters(got, expected)


def test_adaptive_learning_rate_divides_by_five_before_stopping(capsys):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                        tol=100.0, n_iter_no_change=2, max_iter=100, verbose=True,
                        random_state=0)
    clf.fit(X, y)
    out = capsys.readouterr().out
    # 0.001 -> 2e-4 -> 4e-5 -> 8e-6 -> 1.6e-6 -> 3.2e-7, then "too small": stop. The rule
    # fires after n_iter_no_change + 2 epochs, then every n_iter_no_change + 1.
    assert out.count("Setting learning rate to") == 5
    assert "Learning rate too small. Stopping." in out
    assert clf.n_iter_ == (2 + 2) + 5 * (2 + 1)
    assert re.search(r"Iteration 1, loss = \d+\.\d{8}", out)


def test_invscaling_only_for_sgd():
    """learning_rate and power_t apply to solver='sgd' only, as in scikit-learn."""
    X, y = blobs()
    a = quiet(MLPClassifier(max_iter=5, random_state=0, learning_rate="invscaling").fit, X, y)
    b = quiet(MLPClassifier(max_iter=5, random_state=0).fit, X, y)
    assert_same_parameters(a, b)


def test_divergence_stops_the_fit_with_the_last_finite_parameters():
    X, y = blobs()
    clf = MLPRegressor(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1e4,
                       max_iter=50, random_state=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        clf.fit(X * 100, y * 100.0)
    assert clf.n_iter_ < 50
    assert all(np.isfinite(w).all() for w in clf.coefs_ + clf.intercepts_)
    # the restored parameters are finite but may be huge: predict gives finite values or
    # says that they overflow, never silent infinities
    try:
        assert np.isfinite(clf.predict(X)).all()
    except ValueError as error:
        assert "overflow" in str(error)


# ---- fastbp's own parameters ---------------------------------------------------------------

def test_per_layer_activations_dropout_dtype_threads():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation=["gelu", "logistic"],
                        dropout=[0.2, 0.1], dtype="float64", n_threads=1, max_iter=100,
                        random_state=0)
    quiet(clf.fit, X, y)
    assert clf.model_.activations == ("gelu", "sigmoid", "softmax")
    assert clf.model_.dropout == (0.2, 0.1)
    assert clf.model_.dtype == np.float64 and clf.coefs_[0].dtype == np.float64
    assert clf.n_layers_ == 4
    assert clf.score(X, y) > 0.95
    single = quiet(MLPClassifier(hidden_layer_sizes=(8, 8), activation="tanh", dropout=0.5,
                                 max_iter=5, random_state=0).fit, X, y)
    assert single.model_.activations == ("tanh", "tanh", "softmax")
    assert single.model_.dropout == (0.5, 0.5)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_dtype_follows_the_input_as_in_scikit_learn(cls):
    """dtype=None (the default): float32 input trains in float32, float64 and every other
    input (ints, lists) in float64; dtype='float32'/'float64' forces it. warm_start,
    partial_fit and predict convert later inputs to the fitted model's dtype."""
    X, y = blobs(n=60)
    y = y if cls is MLPClassifier else y.astype(float)
    settings = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    for data, dtype, expected in ((X.astype(np.float32), None, np.float32),
                                  (X, None, np.float64),
                                  (np.rint(X).astype(np.int64), None, np.float64),
                                  (X.tolist(), None, np.float64),
                                  (X, "float32", np.float32),
                                  (X.astype(np.float32), "float64", np.float64)):
        est = quiet(cls(dtype=dtype, **settings).fit, data, y)
        assert est.model_.dtype == expected, (type(data), dtype)
        assert all(w.dtype == expected for w in est.coefs_ + est.intercepts_)
        method = getattr(est, "predict_proba", est.predict)
        # outputs as scikit-learn's: float32 where the model and the input both are
        small = expected == np.float32 and getattr(data, "dtype", None) == np.float32
        assert method(data).dtype == (np.float32 if small else np.float64)
    est = quiet(cls(warm_start=True, **settings).fit, X.astype(np.float32), y)
    quiet(est.fit, X, y)                                  # float64 data, float32 model
    assert est.model_.dtype == np.float32
    est.partial_fit(X, y)
    assert est.model_.dtype == np.float32


@pytest.mark.parametrize("fit_dtype", [np.float32, np.float64])
def test_outputs_take_scikit_learns_dtype(fit_dtype):
    """predict_proba and the regressor's predict return what scikit-learn's MLP returns for
    each kind of input: its forward pass multiplies X (kept as it is when numeric) by the
    coefficients, so NumPy's promotion: float32 for a float32 model and input of at most
    float32's exact range (uint8 pixels too; they were float64 here)."""
    pandas = pytest.importorskip("pandas")
    X, y = blobs(n=40)
    inputs = {"float32": X.astype(np.float32), "float64": X, "float16": X.astype(np.float16),
              "int": np.rint(X).astype(np.int64), "list": X.tolist(),
              "list_of_bools": (X > 0).tolist(), "list_of_ints": np.rint(X).astype(int).tolist(),
              "tuple_of_bools": tuple(map(tuple, (X > 0).tolist())),
              **{kind: np.rint(np.abs(X)).astype(kind) for kind in
                 ("uint8", "int8", "int16", "uint16", "int32", "uint32", "bool")},
              "frame_uint8": pandas.DataFrame(np.rint(np.abs(X)).astype(np.uint8)),
              "frame32": pandas.DataFrame(X.astype(np.float32)),
              "frame64": pandas.DataFrame(X),
              "longdouble": X.astype(np.longdouble),
              "frame_sparse32": pandas.DataFrame(X.astype(np.float32)).astype(
                  pandas.SparseDtype(np.float32, 0.0)),
              "csr32": scipy.sparse.csr_matrix(X.astype(np.float32)),
              "csr64": scipy.sparse.csr_matrix(X)}
    settings = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    pairs = [(MLPClassifier, neural_network.MLPClassifier, y, "predict_proba"),
             (MLPRegressor, neural_network.MLPRegressor, X[:, 0], "predict")]
    for ours, theirs, targets, method in pairs:
        fitted = [quiet(cls(**settings).fit, X.astype(fit_dtype), targets)
                  for cls in (ours, theirs)]
        for name, data in inputs.items():
            got, want = (getattr(est, method)(data) for est in fitted)
            assert got.dtype == want.dtype, (ours.__name__, name)


def test_assigning_a_layer_writes_it_into_the_model():
    """est.coefs_[i] = W (and intercepts_) replaces that layer's values, as in
    scikit-learn's plain list, checked as a whole assignment is; layers cannot be added
    or removed; coefs_ pickles and copies as a plain list of arrays."""
    X, y = blobs(n=60)
    est = quiet(MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit, X, y)
    theirs = quiet(neural_network.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3,
                                                random_state=0).fit, X, y)
    for model in (est, theirs):
        model.coefs_[0] = np.arange(20.0).reshape(4, 5) / 20
        model.intercepts_[0] = np.ones(5)
        model.coefs_[-1][...] = 0.5                # (writing into the array, as before)
        model.intercepts_[1] = [0.1, 0.2, 0.3]
    for ours, reference in zip(est.coefs_ + est.intercepts_,
                               theirs.coefs_ + theirs.intercepts_):
        assert np.array_equal(ours, reference)
    np.testing.assert_allclose(est.predict_proba(X), theirs.predict_proba(X), rtol=1e-12)
    est.coefs_[0:1] = [np.full((4, 5), 2.0)]
    assert np.all(est.model_.weights[0] == 2.0)
    before = [w.copy() for w in est.coefs_]
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(4, 5\)"):
        est.coefs_[0] = np.zeros((5, 4))
    with pytest.raises(ValueError, match="contains NaN"):
        est.coefs_[1] = np.full((5, 3), np.nan)
    for change in (lambda layers: layers.append(np.zeros(3)), lambda layers: layers.pop(),
                   lambda layers: layers.__delitem__(0), lambda layers: layers.clear()):
        with pytest.raises(TypeError, match="cannot be added or removed"):
            change(est.coefs_)
    assert all(np.array_equal(a, b) for a, b in zip(before, est.coefs_))
    for copied in (pickle.loads(pickle.dumps(est.coefs_)), copy.deepcopy(est.coefs_),
                   copy.copy(est.coefs_)):
        assert type(copied) is list and len(copied) == 2
        assert all(np.array_equal(a, b) for a, b in zip(copied, before))


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_refused_sparse_fit_leaves_the_estimator_as_it_was(warm_start):
    """scikit-learn's validate_data does not look at a CSR matrix's index arrays: a fit on
    one whose column index or indptr is out of range is refused before any attribute
    changes (the weights, the kept optimizer state, n_iter_, classes_), and an estimator
    whose first fit is refused stays unfitted."""
    rng = np.random.default_rng(0)
    X = scipy.sparse.random(60, 20, density=0.2, format="csr", random_state=0)
    y = rng.integers(0, 3, size=60)
    bad_column = X.copy()
    bad_column.indices = bad_column.indices.copy()
    bad_column.indices[5] = 25
    bad_indptr = X.copy()
    bad_indptr.indptr = bad_indptr.indptr.copy()
    bad_indptr.indptr[3] = bad_indptr.indptr[5] + 1
    for cls, targets in ((MLPClassifier, y), (MLPRegressor, y.astype(float))):
        est = quiet(cls(hidden_layer_sizes=(4,), max_iter=5, random_state=0, n_threads=1,
                        warm_start=warm_start).fit, X, targets)
        state = dict(est.__dict__)
        parameters = [a.copy() for a in est.coefs_ + est.intercepts_]
        for bad, message in ((bad_column, "column indices must lie in 0..19"),
                             (bad_indptr, "indptr must have 61 entries, start at 0, never decrease")):
            for call in (est.fit, est.partial_fit):
                with pytest.raises(ValueError, match=message):
                    call(bad, targets)
            assert est.__dict__ == state
            assert all(np.array_equal(a, b) for a, b in
                       zip(parameters, est.coefs_ + est.intercepts_))
        fresh = cls(hidden_layer_sizes=(4,), max_iter=5, random_state=0, n_threads=1)
        with pytest.raises(ValueError, match="column indices"):
            fresh.fit(bad_column, targets)
        with pytest.raises(NotFittedError):
            fresh.predict(X)


def _refusals(cls, X, y):
    """(what, call) pairs that a fitted estimator must refuse: scikit-learn's checks after
    validate_data has recorded the labels and the width, and fastbp's checks of the
    hyperparameters for the model's dtype, which come after the network is made."""
    wide = np.random.default_rng(1).normal(size=(X.shape[0], 7)).astype(X.dtype)
    negative = -np.ones(X.shape[0])
    other = y + 10 if cls is MLPClassifier else y
    return [
        ("negative sample weights with new labels",
         lambda est: est.fit(X, other, sample_weight=negative)),
        ("negative sample weights with a new width",
         lambda est: est.fit(wide, y, sample_weight=negative)),
        ("a learning rate float32 cannot hold",
         lambda est: est.set_params(learning_rate_init=1e39).fit(X, y)),
        ("a learning rate float32 cannot hold, partial_fit",
         lambda est: est.set_params(learning_rate_init=1e39).partial_fit(X, y)),
        ("a beta_2 that rounds to 1 in float32",
         lambda est: est.set_params(beta_2=0.99999999).fit(X, y)),
    ]


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("warm_start", [False, True])
def test_a_refused_fit_or_partial_fit_leaves_the_estimator_as_it_was(cls, warm_start):
    """A call refused after scikit-learn's validate_data recorded classes_ or
    n_features_in_, or after a new network was made for it (a hyperparameter the float32
    model cannot hold is found by the trainer), changes nothing: the old model_ predicts
    as before with the old labels (it paired the old network with the new labels, and
    predict returned them silently), loss_curve_ and n_iter_ are kept."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60) if cls is MLPClassifier else rng.normal(size=60)
    for what, call in _refusals(cls, X, y):
        est = quiet(cls(hidden_layer_sizes=(5,), max_iter=5, random_state=0, n_threads=1,
                        warm_start=warm_start).fit, X, y)
        state, model_bytes = dict(est.__dict__), est.model_.to_bytes()
        predictions = est.predict(X)
        with pytest.raises(ValueError):
            quiet(call, est)
        est.set_params(learning_rate_init=0.001, beta_2=0.999)   # (what the call set)
        assert est.__dict__ == state, what
        assert est.model_.to_bytes() == model_bytes, what
        assert np.array_equal(est.predict(X), predictions), what


@pytest.mark.parametrize("bad", ["nan in X", "a label not in classes", "negative weights"])
def test_a_refused_first_partial_fit_leaves_the_classifier_unfitted(bad):
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.arange(30) % 3
    arguments = {"nan in X": (np.where(X > 2, np.nan, X), y, None, [0, 1, 2]),
                 "a label not in classes": (X, y, None, [0, 1]),
                 "negative weights": (X, y, -np.ones(30), [0, 1, 2])}[bad]
    est = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, n_threads=1)
    X_, y_, weights, classes = arguments
    with pytest.raises(ValueError):
        est.partial_fit(X_, y_, sample_weight=weights, classes=classes)
    assert not any(name.endswith("_") and not name.startswith("_") for name in est.__dict__)
    with pytest.raises(NotFittedError):
        est.predict(X)
    est.partial_fit(X, y, classes=[0, 1, 2])               # and a good call is taken
    assert list(est.classes_) == [0, 1, 2] and est.n_features_in_ == 4


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_fit_that_fails_after_training_keeps_what_its_steps_did_only_on_the_same_model(
        warm_start):
    """A failure after the steps (here the ConvergenceWarning raised as an error): with
    warm_start the same model_ trained, so its records say so; a fit that made a new
    network for itself leaves the estimator as it was before the call."""
    X, y = blobs(n=60)
    est = quiet(MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0,
                              n_threads=1, warm_start=warm_start).fit, X, y)
    model, curve = est.model_, list(est.loss_curve_)
    before = model.to_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            est.fit(X, y)
    assert est.model_ is model
    if warm_start:
        assert model.to_bytes() != before and est.loss_curve_[:3] == curve
        assert len(est.loss_curve_) == 6 and est.n_iter_ == 3
    else:
        assert model.to_bytes() == before and est.loss_curve_ == curve


def test_multi_label_predictions_are_sparse_where_the_labels_were():
    """Fitted on a sparse label indicator matrix, predict returns a CSR matrix, as
    scikit-learn's LabelBinarizer.inverse_transform does; dense labels, a dense array."""
    X = np.random.RandomState(0).randn(30, 3)
    labels = np.c_[X[:, 0] > 0, X[:, 1] > 0].astype(int)
    for Y in (scipy.sparse.csr_matrix(labels), labels):
        ours, theirs = (quiet(cls(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit,
                              X, Y).predict(X)
                        for cls in (MLPClassifier, neural_network.MLPClassifier))
        assert type(ours) is type(theirs)
        assert scipy.sparse.issparse(ours) == scipy.sparse.issparse(Y)
        dense = ours.toarray() if scipy.sparse.issparse(ours) else ours
        assert dense.shape == labels.shape and set(np.unique(dense)) <= {0, 1}


@pytest.mark.parametrize("solver", ["sgd", "adam", "rmsprop", "adagrad"])
def test_every_solver_learns(solver):
    X, y = blobs()
    rate = {"sgd": 0.05, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.1}[solver]
    clf = quiet(MLPClassifier(hidden_layer_sizes=(16,), solver=solver, learning_rate_init=rate,
                              max_iter=50, random_state=0).fit, X, y)
    assert clf.score(X, y) > 0.95


def test_no_hidden_layer_is_a_linear_model():
    X, y = blobs()
    clf = quiet(MLPClassifier(hidden_layer_sizes=(), max_iter=100, learning_rate_init=0.01,
                              random_state=0).fit, X, y)
    assert clf.model_.layer_sizes == (4, 3) and clf.n_layers_ == 2
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("settings, match", [
    (dict(max_fun=0), "max_fun"), (dict(solver="newton"), "solver"),
    (dict(activation="softmax"), "activation"), (dict(activation=["relu", "tanh"]), "one name"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"), (dict(alpha=-1.0), "alpha"),
    (dict(batch_size=0), "batch_size"), (dict(learning_rate="cyclic"), "learning_rate"),
    (dict(learning_rate_init=0.0), "learning_rate_init"), (dict(max_iter=0), "max_iter"),
    (dict(momentum=1.0), "momentum"), (dict(beta_1=1.0), "beta_1"),
    (dict(n_iter_no_change=0), "n_iter_no_change"), (dict(init="uniform"), "init"), (dict(dtype="float16"), "dtype"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=[0.1, 0.2]), "one rate"),
    (dict(n_threads=0), "n_threads"), (dict(shuffle="yes"), "shuffle"),
    (dict(validation_fraction=1.0), "validation_fraction")])
def test_bad_parameters_raise_at_fit(settings, match):
    X, y = blobs(n=30)
    clf = MLPClassifier(**settings)                 # __init__ and set_params never check
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


@pytest.mark.parametrize("settings", [
    dict(alpha=-1.0), dict(solver="newton"), dict(max_iter=0), dict(random_state=-1),
    dict(random_state=2**32), dict(random_state="a"),
    dict(random_state=np.random.default_rng(0))])
def test_a_bad_parameter_raises_scikit_learns_invalid_parameter_error(settings):
    """As scikit-learn's own estimators: InvalidParameterError (a ValueError and a
    TypeError) naming the parameter, random_state included; and a first partial_fit that
    refuses a parameter records no classes (the next call still needs classes=)."""
    from sklearn.utils._param_validation import InvalidParameterError
    X, y = blobs(n=30)
    name = next(iter(settings))
    for estimator in (MLPClassifier(**settings), MLPRegressor(**settings)):
        with pytest.raises(InvalidParameterError, match=f"The '{name}' parameter of "):
            estimator.fit(X, y)
        with pytest.raises(TypeError, match=name):
            estimator.fit(X, y)
    clf = MLPClassifier(**settings)
    with pytest.raises(InvalidParameterError):
        clf.partial_fit(X, y, classes=np.unique(y))
    assert not hasattr(clf, "classes_")
    clf.set_params(**MLPClassifier().get_params())
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)


def test_early_stopping_without_a_validation_share_is_refused_by_name():
    """(lbfgs ignores early_stopping, and takes it as scikit-learn's does.)"""
    from sklearn.utils._param_validation import InvalidParameterError
    X, y = blobs(n=30)
    for estimator in (MLPClassifier(early_stopping=True, validation_fraction=0.0),
                      MLPRegressor(early_stopping=True, validation_fraction=0)):
        with pytest.raises(InvalidParameterError,
                           match="'validation_fraction' parameter .* with early_stopping"):
            estimator.fit(X, y)
        assert not hasattr(estimator, "model_")
        quiet(estimator.set_params(solver="lbfgs", max_iter=5).fit, X, y)


# ---- attributes ----------------------------------------------------------------------------

def test_fitted_attributes():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=20, random_state=0)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    assert not hasattr(clf, "coefs_")
    quiet(clf.fit, X, y)
    assert clf.n_features_in_ == 4 and not hasattr(clf, "feature_names_in_")
    assert [w.shape for w in clf.coefs_] == [(4, 16), (16, 8), (8, 3)]
    assert [b.shape for b in clf.intercepts_] == [(16,), (8,), (3,)]
    assert clf.n_iter_ == len(clf.loss_curve_) == 20 and clf.t_ == 20 * len(X)
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    assert isinstance(clf.model_, fastbp.MLP)
    # coefs_ and intercepts_ are the live parameters of model_
    clf.coefs_[-1][...] = 0.0
    clf.intercepts_[-1][...] = [0.0, 5.0, 0.0]
    assert (clf.predict(X) == 1).all()
    clf.intercepts_ = [b * 0 for b in clf.intercepts_]     # assignment copies in
    np.testing.assert_allclose(clf.predict_proba(X), 1 / 3, rtol=1e-6)


def test_feature_names_from_a_dataframe():
    pandas = pytest.importorskip("pandas")
    X, y = blobs()
    frame = pandas.DataFrame(X, columns=["a", "b", "c", "d"])
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit,
                frame, y)
    np.testing.assert_array_equal(clf.feature_names_in_, ["a", "b", "c", "d"])
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


def test_verbose_prints_scikit_learns_lines(capsys):
    X, y = blobs()
    quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, verbose=True, early_stopping=True,
                        random_state=0).fit, X, y)
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Iteration 1, loss = \d+\.\d{8}", out[0])
    assert re.fullmatch(r"Validation score: \d\.\d{6}", out[1])


# ---- persistence, clone, composition -------------------------------------------------------

def test_pickle_and_deepcopy_keep_the_model_and_the_optimizer_state():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    restored = pickle.loads(pickle.dumps(clf))
    copied = copy.deepcopy(clf)
    for other in (restored, copied):
        assert other.model_ is not clf.model_
        np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
        assert other.loss_curve_ == clf.loss_curve_
    # the Adam moments and the shuffling generator came along: the next epoch is identical
    for estimator in (clf, restored, copied):
        estimator.partial_fit(X, y)
    assert_same_parameters(restored, clf)
    assert_same_parameters(copied, clf)
    fitted = quiet(MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0).fit,
                   X, y.astype(float))
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))


def test_clone_copies_the_parameters_not_the_fit():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8, 4), activation=["tanh", "relu"], alpha=0.01,
                        dropout=[0.1, 0.0], random_state=3, max_iter=10)
    quiet(clf.fit, X, y)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "model_") and not hasattr(twin, "coefs_")
    quiet(twin.fit, X, y)
    assert_same_parameters(twin, clf)              # same random_state: the same fit


def test_refit_is_reproducible_and_random_state_none_varies():
    X, y = blobs()
    a = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=7).fit, X, y)
    b = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=7).fit, X, y)
    assert_same_parameters(a, b)
    c = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5).fit, X, y)
    d = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5).fit, X, y)
    assert not np.array_equal(c.coefs_[0], d.coefs_[0])


def test_pipeline_with_standard_scaler():
    X, y = load_digits(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,),
                                                             max_iter=50, random_state=0))
    quiet(pipeline.fit, X[:1400], y[:1400])
    assert pipeline.score(X[1400:], y[1400:]) > 0.88     # scikit-learn's MLP: 0.904
    assert pipeline.predict_proba(X[1400:]).shape == (len(X) - 1400, 10)


def test_grid_search():
    X, y = load_iris(return_X_y=True)
    grid = GridSearchCV(
        make_pipeline(StandardScaler(), MLPClassifier(max_iter=300, random_state=0)),
        {"mlpclassifier__hidden_layer_sizes": [(8,), (32,)],
         "mlpclassifier__alpha": [1e-4, 1e-1]}, cv=3, n_jobs=1)
    quiet(grid.fit, X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert not np.isnan(grid.cv_results_["mean_test_score"]).any()
    assert grid.best_score_ > 0.9
    assert grid.best_estimator_[-1].hidden_layer_sizes in [(8,), (32,)]
    assert grid.score(X, y) > 0.9


def test_grid_search_regressor():
    X, y = make_regression(n_samples=150, n_features=4, noise=1.0, random_state=0)
    grid = GridSearchCV(MLPRegressor(max_iter=200, learning_rate_init=0.01, random_state=0),
                        {"hidden_layer_sizes": [(8,), (16, 8)], "loss": ["squared_error",
                                                                          "huber"]},
                        cv=3, n_jobs=1)
    quiet(grid.fit, X, y / y.std())
    assert grid.best_score_ > 0.8


# ---- prediction on plain arrays: the same answers without validate_data's cost ------------

def fitted_estimators(dtype):
    """(name, fitted estimator, its training X) for every kind of target, trained in dtype."""
    X, binary, multiclass, multilabel, targets = small_data()
    X = X.astype(dtype)
    fit = [("binary", MLPClassifier, binary), ("multiclass", MLPClassifier, multiclass),
           ("multilabel", MLPClassifier, multilabel),
           ("words", MLPClassifier, np.array(["no", "yes"])[binary]),
           ("one class", MLPClassifier, np.full(len(X), 7)),
           ("regression", MLPRegressor, targets[:, 0]), ("two targets", MLPRegressor, targets)]
    return [(name, quiet(kind(hidden_layer_sizes=(6,), max_iter=5, random_state=0).fit, X, y),
             X) for name, kind, y in fit]


def predictions(estimator, X):
    return {name: getattr(estimator, name)(X)
            for name in ("predict", "predict_proba", "predict_log_proba")
            if hasattr(estimator, name)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plain_array_is_predicted_as_through_validate_data(dtype):
    """predict and predict_proba take a NumPy array of floats with the right width, a
    list of such rows, or a CSR matrix or array of floats, straight to the model (no
    validate_data): the same values as through it (sent there by hand), for every kind of
    target, dtype and memory order; and predict's labels are
    LabelBinarizer.inverse_transform's, ties and the 0.5 boundary included. A 1-D list,
    integers, strings, ragged or complex rows take validate_data's path."""
    for name, estimator, X in fitted_estimators(dtype):
        assert estimator.model_.dtype == dtype, name
        for plain in (X, X.astype(np.float32), X.astype(np.float64), np.asfortranarray(X),
                      np.repeat(X, 2, axis=0)[::2], X[:1], X.tolist(), X[:1].tolist(),
                      X.astype(np.float32).tolist()):
            with mock.patch.object(type(estimator), "_plain_input", return_value=None):
                reference = predictions(estimator, plain)       # validate_data's path
            for method, values in predictions(estimator, plain).items():
                expected = reference[method]
                assert values.dtype == expected.dtype, (name, method)
                np.testing.assert_array_equal(values, expected, err_msg=f"{name} {method}")
        for sparse in (scipy.sparse.csr_matrix(X), scipy.sparse.csr_array(X[:3]),
                       scipy.sparse.csr_matrix(X.astype(np.float32)),
                       scipy.sparse.csr_matrix(X.astype(np.float64))):
            fast = predictions(estimator, sparse)
            with mock.patch.object(type(estimator), "_plain_input", return_value=None):
                through = predictions(estimator, sparse)        # validate_data's path
            for method, values in fast.items():
                assert values.dtype == through[method].dtype, (name, method)
                np.testing.assert_array_equal(values, through[method],
                                              err_msg=f"{name} {method} sparse")
        with mock.patch("fastbp.sklearn.validate_data", side_effect=AssertionError):
            predictions(estimator, X)                   # the fast path: no validate_data
            predictions(estimator, scipy.sparse.csr_matrix(X))
            predictions(estimator, X[:2].tolist())
        for other in (X[0].tolist(), X[:2].astype(int).tolist(), [["1", "2"]],
                      [[1.0, 2.0], [3.0]], [[1 + 2j] * X.shape[1]]):
            assert estimator._plain_input(other, estimator.model_.dtype) is None, other
        if name == "two targets" or name == "regression":
            continue
        tied = copy.deepcopy(estimator)
        tied.model_._params[...] = 0        # every output 0.5, or equal to the others
        for each in (estimator, tied):
            outputs = each.model_.predict(X)
            expected = each._label_binarizer.inverse_transform(
                outputs.ravel() if outputs.shape[1] == 1 else outputs)
            np.testing.assert_array_equal(each.predict(X), expected, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_data_frame_of_the_fitted_columns_is_predicted_as_through_validate_data(dtype):
    """An estimator fitted on a data frame takes a data frame of the same columns, in
    order, each of a NumPy float dtype, straight to the model: the same values as
    through validate_data; any other frame (columns reordered, integers, nullable or
    sparse columns, NaN) takes validate_data's path and its answer or error."""
    pandas = pytest.importorskip("pandas")
    X, _, multiclass, _, targets = small_data()
    columns = [f"x{i}" for i in range(X.shape[1])]
    frame = pandas.DataFrame(X.astype(dtype), columns=columns)
    fitted = [quiet(MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0).fit,
                    frame, multiclass),
              quiet(MLPRegressor(hidden_layer_sizes=(6,), max_iter=5, random_state=0).fit,
                    frame, targets)]
    mixed = frame.astype({"x0": np.float32, "x1": np.float64})
    with_nan = frame.copy()
    with_nan.iloc[2, 1] = np.nan
    straight = [frame, frame.iloc[:1], mixed]
    through = [frame[columns[::-1]], frame.round().astype(int), frame.astype("Float64"),
               frame.astype(pandas.SparseDtype(dtype, 0.0)), with_nan]
    for estimator in fitted:
        for case, data in enumerate(straight + through):
            def answer(forced):
                with mock.patch.object(type(estimator), "_plain_input",
                                       return_value=None) if forced else \
                        contextlib.nullcontext(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    try:
                        return predictions(estimator, data)
                    except ValueError as error:
                        return str(error)
            fast, slow = answer(False), answer(True)
            if isinstance(slow, str):
                assert fast == slow, case
                continue
            for method, values in fast.items():
                assert values.dtype == slow[method].dtype, (case, method)
                np.testing.assert_array_equal(values, slow[method], err_msg=f"{case} {method}")
        with mock.patch("fastbp.sklearn.validate_data", side_effect=AssertionError):
            for data in straight:
                predictions(estimator, data)            # no validate_data
        model_dtype = estimator.model_.dtype
        assert all(estimator._plain_input(data, model_dtype) is not None for data in straight)
        assert all(estimator._plain_input(data, model_dtype) is None for data in through[:-1])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_predicting_a_plain_array_refuses_what_validate_data_refuses():
    X, y = blobs()
    for dtype in (np.float32, np.float64):
        estimator = quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3,
                                        random_state=0).fit, X.astype(dtype), y)
        refused = [(np.full((2, 4), np.nan), "Input X contains NaN"),
                   (np.full((2, 4), np.nan).tolist(), "Input X contains NaN"),
                   (np.zeros((2, 3)).tolist(), "X has 3 features"),
                   (scipy.sparse.csr_matrix(np.full((2, 4), np.nan)), "Input X contains NaN"),
                   (scipy.sparse.csr_matrix((0, 4)), "0 sample"),
                   (scipy.sparse.csr_matrix((2, 3)), "X has 3 features"),
                   (np.full((2, 4), np.inf), "Input X contains infinity"),
                   (np.zeros((0, 4)), "0 sample"),
                   (np.zeros((2, 3)), "X has 3 features"),
                   (np.zeros(4), "Expected 2D array")]
        if dtype == np.float32:     # finite in float64, not in the model's float32
            refused.append((np.full((1, 4), 1e300), "too large for dtype\\('float32'\\)"))
        for bad, message in refused:
            for method in (estimator.predict, estimator.predict_proba):
                with pytest.raises(ValueError, match=message):
                    method(bad)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    pandas = pytest.importorskip("pandas")
    named = quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit,
                  pandas.DataFrame(X, columns=list("abcd")), y)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        named.predict(X)


def test_the_latency_benchmark_serves_both_estimators_with_the_models_weights():
    """bench/latency.py's fastbp-sklearn and sklearn systems: estimators given the model's
    weights compute its outputs (the benchmark checks every system against the model), on
    dense rows and on CSR rows (--sparse)."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "latency.py"), "--rows", "1", "3",
         "--systems", "fastbp", "fastbp-sklearn", "sklearn", "--seconds", "0.01",
         "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "fastbp-sklearn" in line]
    assert len(lines) == 4 and all(" sklearn " in line for line in lines), result.stdout
    # CSR rows (--sparse): every system that takes them, checked against the model
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "latency.py"), "--rows", "1", "3",
         "--sparse", "5", "--networks", "20-64-64-1", "784-128-10", "--systems", "fastbp",
         "fastbp-sklearn", "sklearn", "numpy", "onnxrt", "--seconds", "0.01",
         "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "fastbp-sklearn" in line]
    assert len(lines) == 4 and all(" sklearn " in line and " numpy " in line
                                   and "onnxrt" not in line for line in lines), result.stdout


# ---- small float32 properties the estimator checks were relaxed for ----------------------

def test_predictions_of_subsets_agree_in_float32():
    X, y = blobs()
    X = X.astype(np.float32)
    for est in (quiet(MLPClassifier(random_state=0, max_iter=20).fit, X, y),
                quiet(MLPRegressor(random_state=0, max_iter=20).fit, X, y.astype(float))):
        assert est.model_.dtype == np.float32
        method = getattr(est, "predict_proba", est.predict)
        whole = method(X)
        one_by_one = np.concatenate([method(row[None]) for row in X[:50]])
        np.testing.assert_allclose(one_by_one, whole[:50], rtol=1e-5, atol=1e-6)


# ---- solver="lbfgs" --------------------------------------------------------------------------

@pytest.mark.parametrize("activation, hidden", [("relu", (100,)), ("logistic", (5, 4)),
                                                ("logistic", ()), ("tanh", (7,))])
def test_same_random_state_same_start_as_sklearn(activation, hidden):
    """init='sklearn' (the default) draws scikit-learn's initial parameters from
    random_state as scikit-learn does: lbfgs then takes scikit-learn's iterates."""
    X, y = load_iris(return_X_y=True)
    settings = dict(solver="lbfgs", activation=activation, hidden_layer_sizes=hidden,
                    max_iter=5, random_state=3)
    ours = quiet(MLPClassifier(**settings).fit, X, y)
    theirs = quiet(neural_network.MLPClassifier(**settings).fit, X, y)
    assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-12)
    fastbps = quiet(MLPClassifier(init="auto", **settings).fit, X, y)      # fastbp's He/Glorot
    assert not np.allclose(fastbps.coefs_[0], theirs.coefs_[0])


def fit_lbfgs_alongside_sklearn(fastbp_class, sklearn_class, X, y, iterations,
                                sample_weight=None, **settings):
    """Both estimators from fastbp's initial parameters, then `iterations` of L-BFGS."""
    common = {"solver": "lbfgs", "random_state": 0, **settings}
    ours = fastbp_class(dtype="float64", max_iter=iterations, **common)
    quiet(ours.fit, X, y, sample_weight)
    start = quiet(fastbp_class(dtype="float64", max_iter=1, **common).fit, X, y,
                  sample_weight)
    theirs = quiet(sklearn_class(max_iter=1, **common).fit, X, y, sample_weight)
    ours = quiet(fastbp_class(dtype="float64", max_iter=1, **common).fit, X, y, sample_weight)
    for estimator in (ours, theirs):
        estimator.coefs_ = [w.copy() for w in start.model_.weights]
        estimator.intercepts_ = [b.copy() for b in start.model_.biases]
        estimator.set_params(warm_start=True, max_iter=iterations)
        quiet(estimator.fit, X, y, sample_weight)
    return ours, theirs


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression_1d"])
@pytest.mark.parametrize("settings", [dict(alpha=0.0), dict(alpha=0.1),
                                      dict(alpha=0.01, weighted=True),
                                      dict(alpha=0.01, activation="tanh",
                                           hidden_layer_sizes=(6, 5))])
def test_lbfgs_follows_sklearns_path(task, settings):
    """The same objective (loss, L2 term alpha/2 * sum W^2 / total weight) and gradient as
    scikit-learn's lbfgs: from the same weights, the same iterates and loss_."""
    settings = dict(settings)
    X, binary, multiclass, multilabel, targets = small_data()
    y = {"binary": binary, "multiclass": multiclass, "multilabel": multilabel,
         "regression_1d": targets[:, 0]}[task]
    weights = np.random.RandomState(2).randint(0, 4, size=len(X)).astype(float) \
        if settings.pop("weighted", False) else None
    classes = (MLPRegressor, neural_network.MLPRegressor) if task.startswith("regression") \
        else (MLPClassifier, neural_network.MLPClassifier)
    settings.setdefault("hidden_layer_sizes", (8,))
    ours, theirs = fit_lbfgs_alongside_sklearn(*classes, X, y, 15, weights, **settings)
    assert_same_parameters(ours, theirs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-7)
    assert ours.n_iter_ == theirs.n_iter_


def grouped_loss_and_gradient(objective, theta, sample_weight):
    """The weighted mean loss and its gradient the way lbfgs formed them before
    MLP.gradients took sample_weight: one plain-mean call per distinct weight, each
    group's result times its share of the total weight."""
    objective.model.set_parameter_vector(theta)
    total = float(sample_weight.sum())
    values, group_of_row = np.unique(sample_weight, return_inverse=True)
    value, gradient = 0.0, np.zeros_like(theta)
    for k, weight in enumerate(values):
        rows = np.flatnonzero(group_of_row == k)
        if weight > 0:
            loss, grad_W, grad_b = objective.model.gradients(objective.X[rows],
                                                             objective.Y[rows], objective.loss)
            share = weight * rows.size / total
            value += share * loss
            gradient += share * np.concatenate(
                [part.ravel() for pair in zip(grad_W, grad_b) for part in pair])
    return value, gradient


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_lbfgs_weighted_objective_equals_the_grouped_rows(monkeypatch, cls, dtype, rtol):
    """lbfgs's one weighted MLP.gradients call equals, at every point L-BFGS evaluates, the
    former objective (one call per distinct weight) to rounding; the fit then takes the
    same iterates."""
    from fastbp import sklearn as fastbp_sklearn
    X, _, multiclass, _, targets = small_data()
    y = multiclass if cls is MLPClassifier else targets
    weights = np.random.RandomState(5).uniform(0.0, 2.0, size=len(X))   # all distinct
    weights[:4] = 0.0
    one_call = fastbp_sklearn._LbfgsObjective._mean_loss_and_gradient
    differences = []

    def compared(objective, theta):
        value, gradient = one_call(objective, theta)
        old_value, old_gradient = grouped_loss_and_gradient(objective, theta, weights)
        differences.append((abs(value - old_value) / abs(old_value),
                            np.max(np.abs(gradient - old_gradient))
                            / np.max(np.abs(old_gradient))))
        return value, gradient

    settings = dict(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=10, random_state=0,
                    alpha=0.01, dtype=dtype)
    monkeypatch.setattr(fastbp_sklearn._LbfgsObjective, "_mean_loss_and_gradient", compared)
    quiet(cls(**settings).fit, X.astype(dtype), y, weights)
    assert len(differences) >= 10
    assert max(d for d, _ in differences) < rtol and max(g for _, g in differences) < 10 * rtol
    if dtype == "float64":
        new = quiet(cls(**settings).fit, X, y, weights)
        monkeypatch.setattr(fastbp_sklearn._LbfgsObjective, "_mean_loss_and_gradient",
                            lambda objective, theta: grouped_loss_and_gradient(
                                objective, theta, weights))
        old = quiet(cls(**settings).fit, X, y, weights)
        assert_same_parameters(new, old, rtol=1e-7, atol=1e-10)
        assert new.n_iter_ == old.n_iter_


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_lbfgs_checks_its_data_and_plans_its_pass_once_a_fit(monkeypatch, cls):
    """Every L-BFGS evaluation runs the one pass made at the start of the fit: the rows are
    checked, one-hot, weighed and planned once, not at each of the fit's evaluations (on
    scikit-learn's small data sets those checks had cost twice the pass)."""
    X, _, multiclass, _, targets = small_data()
    y = multiclass if cls is MLPClassifier else targets
    calls = {"inputs": 0, "plans": 0}
    inputs, plans = fastbp.MLP._inputs, fastbp.MLP._pass_plan

    def counted_inputs(model, X):
        calls["inputs"] += 1
        return inputs(model, X)

    def counted_plans(model, *args, **kwargs):
        calls["plans"] += 1
        return plans(model, *args, **kwargs)
    monkeypatch.setattr(fastbp.MLP, "_inputs", counted_inputs)
    monkeypatch.setattr(fastbp.MLP, "_pass_plan", counted_plans)
    weights = np.linspace(0.5, 1.5, len(X))
    estimator = quiet(cls(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=25,
                          random_state=0).fit, X, y, weights)
    assert estimator.n_iter_ >= 10
    assert calls == {"inputs": 1, "plans": 1}


def test_lbfgs_refuses_weights_the_dtype_cannot_hold():
    """Weights whose ratio float32 cannot hold are refused at the start of the fit (not
    read as a point that L-BFGS steps back from), and the estimator stays unfitted."""
    X, y = blobs(n=30)
    weights = np.ones(len(X))
    weights[0] = 1e-40
    clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(4,), dtype="float32")
    with pytest.raises(ValueError, match="row weights"):
        clf.fit(X, y, sample_weight=weights)
    assert not hasattr(clf, "coefs_")


def test_lbfgs_attributes_and_stopping():
    X, y = blobs()
    clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match="lbfgs"):
        clf.fit(X, y)
    assert clf.n_iter_ == 5 and clf.t_ == 0          # as scikit-learn's lbfgs
    for name in ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_"):
        assert not hasattr(clf, name), name          # the stochastic solvers' records only
    assert not hasattr(clf, "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit") as refused:
        clf.partial_fit(X, y)
    assert "stochastic" in str(refused.value.__cause__)
    # max_fun bounds the loss evaluations; a loose tol stops before max_iter
    few = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), max_fun=3, random_state=0)
    with pytest.warns(ConvergenceWarning):
        few.fit(X, y)
    assert few.n_iter_ <= 3
    converged = quiet(MLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), tol=1e-2,
                                    random_state=0).fit, X, y)
    assert converged.n_iter_ < 200 and converged.score(X, y) > 0.95
    # float32 input trains a float32 model through float64 L-BFGS
    small = quiet(MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=50,
                               random_state=0).fit, X.astype(np.float32), X[:, 0] - X[:, 1])
    assert small.model_.dtype == np.float32 and small.score(X, X[:, 0] - X[:, 1]) > 0.9


def test_lbfgs_warm_start_continues():
    X, y = blobs()
    once = quiet(MLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=4,
                               random_state=0).fit, X, y)
    start = [a.copy() for a in parameters(once)]
    quiet(once.set_params(warm_start=True).fit, X, y)
    assert not all(np.array_equal(a, b) for a, b in zip(start, parameters(once)))
    # an lbfgs fit, then adam with warm_start: the stochastic records start there
    quiet(once.set_params(solver="adam", max_iter=3).fit, X, y)
    assert len(once.loss_curve_) == 3 and once.validation_scores_ is None


# ---- the fitted attributes scikit-learn's MLP has, for each solver --------------------------

@pytest.mark.parametrize("solver", ["lbfgs", "sgd", "adam"])
@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("task", ["classifier", "regressor"])
def test_fitted_attributes_are_sklearns(solver, early_stopping, task):
    """Every public fitted attribute scikit-learn's estimator has after the same fit, ours
    has (and those it lacks, ours lacks), with the same type of value."""
    X, y = blobs(n=120)
    classes = (MLPClassifier, neural_network.MLPClassifier) if task == "classifier" \
        else (MLPRegressor, neural_network.MLPRegressor)
    y = y if task == "classifier" else y.astype(float)
    settings = dict(solver=solver, early_stopping=early_stopping, hidden_layer_sizes=(8,),
                    max_iter=15, random_state=0)
    ours, theirs = (quiet(cls(**settings).fit, X, y) for cls in classes)
    names = {name for name in vars(theirs) if name.endswith("_") and not name.startswith("_")}
    for name in names:
        mine, sklearns = getattr(ours, name), getattr(theirs, name)
        # (coefs_ and intercepts_: a list whose item assignment writes into the model)
        assert type(mine) is type(sklearns) or type(sklearns) is list and \
            isinstance(mine, list) or (
            isinstance(sklearns, (numbers.Real, np.floating)) and
            isinstance(mine, (numbers.Real, np.floating))), (name, mine, sklearns)
        if name in ("n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
            assert mine == sklearns, name
        if name == "classes_":
            np.testing.assert_array_equal(mine, sklearns)
    for absent in {"loss_curve_", "best_loss_", "validation_scores_",
                   "best_validation_score_"} - names:
        assert not hasattr(ours, absent), absent
    # scikit-learn 1.9's MLPRegressor keeps partial_fit under lbfgs (its availability test
    # is never called, unlike the classifier's); ours follows the classifier's rule for both
    assert hasattr(ours, "partial_fit") == (solver != "lbfgs")
    if task == "classifier":
        assert hasattr(theirs, "partial_fit") == (solver != "lbfgs")
    if solver == "lbfgs":
        assert ours.t_ == 0
    else:
        assert ours.t_ == ours.n_iter_ * round(len(X) * (0.9 if early_stopping else 1))
    assert hasattr(ours, "set_output") == hasattr(theirs, "set_output")


def test_set_output_in_a_pipeline_hands_dataframes_through():
    """Like scikit-learn's MLP, the estimators transform nothing (no set_output of their
    own); a pipeline's set_output(transform='pandas') hands them DataFrames, whose column
    names become feature_names_in_."""
    pandas = pytest.importorskip("pandas")
    X, y = load_iris(return_X_y=True, as_frame=True)
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,),
                                                             solver="lbfgs", random_state=0))
    pipeline.set_output(transform="pandas")
    quiet(pipeline.fit, X, y)
    mlp = pipeline[-1]
    np.testing.assert_array_equal(mlp.feature_names_in_, X.columns)
    assert mlp.model_.dtype == np.float64
    assert pipeline.score(X, y) > 0.9
    frame32 = pandas.DataFrame(X.to_numpy(np.float32), columns=X.columns)
    fitted = quiet(MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit,
                   frame32, y.astype(float))
    assert fitted.model_.dtype == np.float32               # a float32 frame stays float32
    np.testing.assert_array_equal(fitted.feature_names_in_, X.columns)


def test_parity_table_names_every_parameter_and_attribute():
    """docs/sklearn.md's parity table lists every constructor parameter of the installed
    scikit-learn's MLPClassifier and MLPRegressor, every attribute their docstrings list,
    and every parameter of fastbp's estimators."""
    with open(os.path.join(ROOT, "docs", "sklearn.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Parity with scikit-learn", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            named.update(re.findall(r"`(\w+)`", line.split("|")[1]))
    expected = set()
    for cls in (neural_network.MLPClassifier, neural_network.MLPRegressor,
                MLPClassifier, MLPRegressor):
        expected.update(cls().get_params())
    for cls in (neural_network.MLPClassifier, neural_network.MLPRegressor):
        attributes = cls.__doc__.split("Attributes\n    ----------\n", 1)[1]
        attributes = attributes.split("See Also", 1)[0]
        expected.update(re.findall(r"^    (\w+) :", attributes, re.M))
    assert len(expected) > 40
    assert not expected - named, sorted(expected - named)


def test_lbfgs_divergence_and_interruption_leave_a_usable_model(monkeypatch):
    """Data whose loss overflows: a RuntimeWarning and the parameters the fit started from
    (with warm_start, the fitted ones, unchanged). Ctrl-C: the last accepted iterate, a
    warning, as the stochastic solvers."""
    import fastbp.sklearn as module
    rng = np.random.RandomState(0)
    X = rng.normal(size=(50, 3))
    reg = quiet(MLPRegressor(solver="lbfgs", hidden_layer_sizes=(4,), max_iter=5,
                             random_state=0).fit, X, X[:, 0])
    before = reg.model_.parameter_vector()
    reg.set_params(warm_start=True)
    with pytest.warns(RuntimeWarning, match="lbfgs diverged"):
        reg.fit(X * 1e150, X[:, 0])
    np.testing.assert_array_equal(reg.model_.parameter_vector(), before)
    assert np.isfinite(reg.predict(X)).all()
    with pytest.raises(ValueError, match="too large for the model's float32"):
        MLPRegressor(solver="lbfgs", dtype="float32").fit(X, X[:, 0] * 1e100)

    calls = {"n": 0}
    evaluate = module._LbfgsObjective._mean_loss_and_gradient

    def interrupted_at_the_tenth(self, theta):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return evaluate(self, theta)

    monkeypatch.setattr(module._LbfgsObjective, "_mean_loss_and_gradient",
                        interrupted_at_the_tenth)
    clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(4,), random_state=0)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X, (X[:, 0] > 0).astype(int))
    assert 0 < clf.n_iter_ < 10 and np.isfinite(clf.loss_)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_early_stopping_same_split_and_scores_as_sklearn(task):
    """The same random_state: scikit-learn's initial parameters and its validation split
    (drawn from the same generator after them), so with shuffle=False the sgd fits and
    their validation scores are scikit-learn's."""
    X, binary, multiclass, _, targets = small_data()
    y = {"binary": binary, "multiclass": multiclass, "regression": targets[:, 0]}[task]
    classes = (MLPRegressor, neural_network.MLPRegressor) if task == "regression" \
        else (MLPClassifier, neural_network.MLPClassifier)
    settings = dict(solver="sgd", early_stopping=True, shuffle=False, max_iter=8,
                    hidden_layer_sizes=(6,), learning_rate_init=0.01, random_state=4)
    ours, theirs = (quiet(cls(**settings).fit, X, y) for cls in classes)
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-9)
    assert_same_parameters(ours, theirs, rtol=1e-9, atol=1e-12)


def test_one_class_with_early_stopping_scores_as_predict_does():
    """With one class, predict always gives it, so scikit-learn's validation accuracy is 1 at
    every epoch; fastbp compared the output with the one class's all-zero encoding (scores
    0.625, 0.75, ..., a later stop and other best parameters)."""
    X, _ = blobs(n=80)
    y = np.full(80, 7)
    settings = dict(early_stopping=True, max_iter=30, hidden_layer_sizes=(5,),
                    random_state=0, n_iter_no_change=3)
    ours, theirs = (quiet(cls(**settings).fit, X, y)
                    for cls in (MLPClassifier, neural_network.MLPClassifier))
    assert ours.validation_scores_ == theirs.validation_scores_ == [1.0] * theirs.n_iter_
    assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_multi_label_values_other_than_1_are_positive_as_in_scikit_learn(solver):
    """A multi-label indicator y of 0 and 2 (or any nonzero value) is y != 0 for both
    libraries (fastbp refused it: "Y for binary cross-entropy must lie in [0, 1]")."""
    X, _ = blobs(n=60)
    Y = (np.arange(120).reshape(60, 2) % 3 == 0).astype(np.int64)
    for make in (lambda y: y * 2, lambda y: scipy.sparse.csr_matrix(y * 3)):
        settings = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=20, random_state=0)
        scaled, plain = (quiet(MLPClassifier(**settings).fit, X, y) for y in (make(Y), Y))
        theirs = quiet(neural_network.MLPClassifier(**settings).fit, X, make(Y))
        np.testing.assert_array_equal(scaled.classes_, theirs.classes_)
        assert_same_parameters(scaled, plain, rtol=0, atol=0)


def test_predict_refuses_strings_as_scikit_learn_does():
    """scikit-learn's predict validates X as numeric: an array of numbers written as
    strings is refused (fastbp parsed them)."""
    X, y = blobs(n=60)
    ours, theirs = (quiet(cls(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit, X, y)
                    for cls in (MLPClassifier, neural_network.MLPClassifier))
    for strings in (X[:3].astype(str), X[:3].astype(str).tolist(), X[:3].astype(bytes)):
        for est in (ours, theirs):
            for method in (est.predict, est.predict_proba):
                with pytest.raises(ValueError, match="not compatible with arrays of bytes"):
                    method(strings)
    objects = X[:3].astype(str).astype(object)      # (an object array converts, as theirs)
    np.testing.assert_allclose(ours.predict_proba(objects), ours.predict_proba(X[:3]))


def test_an_iterator_for_the_layers_is_refused_not_used_up():
    """hidden_layer_sizes or activation given as an iterator was used up by the first fit:
    a second fit built a network without hidden layers, silently. Refused (scikit-learn
    wants an array-like too); any sized sequence is taken."""
    X, y = blobs(n=40)
    for settings in (dict(hidden_layer_sizes=iter((4, 3))),
                     dict(hidden_layer_sizes=(4, 3), activation=iter(["relu", "tanh"]))):
        est = MLPClassifier(max_iter=2, random_state=0, **settings)
        with pytest.raises(ValueError, match="hidden_layer_sizes|activation"):
            est.fit(X, y)
        assert not hasattr(est, "model_")
    est = quiet(MLPClassifier(hidden_layer_sizes=np.array([4, 3]), activation=("relu", "tanh"),
                              max_iter=2, random_state=0).fit, X, y)
    assert est.n_layers_ == 4


def test_a_first_epoch_that_diverges_leaves_loss_nan():
    """The epoch is rolled back (fastbp's RuntimeWarning) and none is recorded; loss_ was
    missing then (AttributeError on a fitted estimator): it is NaN."""
    X, y = blobs(n=60)
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        est.fit(X * 1e160, y)
    assert est.n_iter_ == 0 and est.loss_curve_ == [] and np.isnan(est.loss_)
    quiet(est.fit, X, y)
    assert np.isfinite(est.loss_) and est.loss_ == est.loss_curve_[-1]


def test_an_epoch_whose_l2_term_overflows_is_a_diverged_epoch():
    """The core checks the data's loss and the parameters; the L2 term is added after
    the epoch. Weights grown to 1e178 (finite) gave a loss_curve_ ending in inf, only a
    ConvergenceWarning, and a model whose predictions overflow. That epoch is now undone
    as a diverged one: a RuntimeWarning, the parameters it started from, not recorded;
    in fit and in partial_fit. (The absolute error: its loss grows as the weights do,
    where the squared error's overflows first.)"""
    rng = np.random.RandomState(0)
    X, y = rng.randn(50, 4), rng.randn(50) * 1e3
    settings = dict(solver="sgd", learning_rate_init=1e40, max_iter=5, random_state=0,
                    hidden_layer_sizes=(5,), loss="absolute_error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = MLPRegressor(**settings).fit(X, y)
    kinds = [w.category for w in caught]
    assert RuntimeWarning in kinds and ConvergenceWarning not in kinds
    assert [(w.filename, "with the L2 term it is not finite" in str(w.message))
            for w in caught if w.category is RuntimeWarning] == [(__file__, True)]
    assert est.n_iter_ == len(est.loss_curve_) == 3 and np.isfinite(est.loss_curve_).all()
    assert est.loss_ == est.loss_curve_[-1] and np.isfinite(est.predict(X)).all()
    again = MLPRegressor(**settings)
    for _ in range(3):
        again.partial_fit(X, y)
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    state, step = again._trainer._state.copy(), again._trainer._step
    with pytest.warns(RuntimeWarning, match="with the L2 term it is not finite") as caught:
        again.partial_fit(X, y)
    assert len(caught) == 1                     # the estimator's warning, not the core's too
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    assert again.loss_curve_ == est.loss_curve_
    # undone by the trainer: the momentum and the step count too, not only the parameters
    np.testing.assert_array_equal(again._trainer._state, state)
    assert again._trainer._step == step and again._trainer._epoch_check is None


@pytest.mark.parametrize("incremental", [False, True])
def test_a_diverged_epoch_is_said_once_in_the_estimators_terms(incremental):
    """A fit whose loss overflows in the core: the trainer's warning named learning_rate
    (another parameter here) and pointed into fastbp/sklearn.py. One warning, at the
    caller's line, naming learning_rate_init; the iteration not recorded."""
    rng = np.random.RandomState(0)
    X, y = rng.randn(50, 4), rng.randn(50) * 1e3
    est = MLPRegressor(solver="sgd", learning_rate_init=1e8, max_iter=5, random_state=0,
                       hidden_layer_sizes=(5,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if incremental:
            for _ in range(4):
                est.partial_fit(X, y)
        else:
            est.fit(X, y)
    assert [(w.category, w.filename) for w in caught] == [(RuntimeWarning, __file__)]
    assert re.match(r"training stopped in iteration 4: the loss diverged \(NaN or infinite "
                    r"loss or parameters\).*learning_rate_init", str(caught[0].message))
    assert len(est.loss_curve_) == 3 and np.isfinite(est.loss_curve_).all()
    assert est.n_iter_ == (0 if incremental else 3)     # (partial_fit's: this call's)


def test_multilabel_y_on_a_model_fitted_multiclass_is_refused_as_in_scikit_learn():
    """partial_fit (or a warm_start fit) of multi-label y on a model fitted on class
    labels: an indicator matrix of one label a row was trained as if its 0/1 values were
    the classes, and a true multi-label matrix got a cross-entropy message. Refused with
    scikit-learn's message; the reverse (1-D labels on a multi-label model) is taken by
    both."""
    X = np.random.RandomState(0).randn(60, 3)
    y = np.arange(60) % 3
    one_label, several = np.eye(3, dtype=int)[y], np.eye(3, dtype=int)[y]
    several[::4, 0] = 1
    for cls in (MLPClassifier, neural_network.MLPClassifier):
        for second in (one_label, several):
            est = cls(hidden_layer_sizes=(4,), random_state=0, max_iter=5)
            quiet(est.partial_fit, X, y, classes=[0, 1, 2])
            before = [w.copy() for w in est.coefs_]
            with pytest.raises(ValueError, match="not fitted with multilabel input"):
                est.partial_fit(X, second)
            assert all(np.array_equal(a, b) for a, b in zip(before, est.coefs_))
            warm = cls(hidden_layer_sizes=(4,), random_state=0, max_iter=5, warm_start=True)
            quiet(warm.fit, X, y)
            with pytest.raises(ValueError, match="not fitted with multilabel input"):
                warm.fit(X, second)
        warm = cls(hidden_layer_sizes=(4,), random_state=0, max_iter=5, warm_start=True)
        quiet(warm.fit, X, several)
        assert quiet(warm.fit, X, y).n_outputs_ == 3


def test_a_sparse_y_for_the_regressor_says_so():
    X = np.random.RandomState(0).randn(20, 3)
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2)
    with pytest.raises(TypeError, match="y must be a dense array of targets; got a scipy"):
        est.fit(X, scipy.sparse.csr_matrix(X[:, :2]))
    with pytest.raises(TypeError, match="y must be a dense array"):
        est.partial_fit(X, scipy.sparse.csr_matrix(X[:, :2]))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_an_epoch_undone_for_its_l2_term_leaves_every_row_as_it_was(solver, sparse):
    """A row of W1 that no batch names, set to 1e160 (finite; the sum of squares is not):
    the epoch is undone, and with sparse X the rows its end caught up unlogged (moved by
    the momentum, the Adam step) were left changed while the step count went back."""
    rng = np.random.default_rng(0)
    X = scipy.sparse.random(64, 20, density=0.2, random_state=1, format="csr")
    X = scipy.sparse.csr_matrix(X.multiply(np.arange(20) < 10))   # columns 10..19 unused
    y = rng.normal(size=64)
    est = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, alpha=1e-4, batch_size=16,
                       random_state=0, max_iter=3)
    data = X if sparse else X.toarray()
    quiet(est.fit, data, y)
    est.model_.weights[0][15, :] = 1e160
    before = est.model_.parameter_vector().copy()
    state, step = est._trainer._state.copy(), est._trainer._step
    with pytest.warns(RuntimeWarning, match="with the L2 term it is not finite"):
        est.partial_fit(data, y)
    np.testing.assert_array_equal(est.model_.parameter_vector(), before)
    np.testing.assert_array_equal(est._trainer._state, state)
    assert est._trainer._step == step


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_the_l2_term_is_summed_once_an_epoch(monkeypatch, sparse):
    """The epoch's L2 check and its loss record each summed every weight's square (about
    10 ms each on S1's 100000-256 layer, where a 64-row sparse partial_fit took 53-55 ms):
    the record takes the check's sum, the same number."""
    rng = np.random.default_rng(0)
    X = scipy.sparse.random(64, 20, density=0.2, random_state=1, format="csr")
    y = rng.normal(size=64)
    data = X if sparse else X.toarray()
    reference = quiet(MLPRegressor(hidden_layer_sizes=(8,), alpha=1e-3, batch_size=16,
                                   random_state=0, max_iter=3).fit, data, y)
    calls = []
    summed = MLPRegressor._l2_term

    def counted(self):
        calls.append(1)
        return summed(self)

    monkeypatch.setattr(MLPRegressor, "_l2_term", counted)
    est = quiet(MLPRegressor(hidden_layer_sizes=(8,), alpha=1e-3, batch_size=16,
                             random_state=0, max_iter=3).fit, data, y)
    assert len(calls) == 3 and est.n_iter_ == 3
    assert est.loss_curve_ == reference.loss_curve_
    quiet(est.partial_fit, data, y)
    assert len(calls) == 4


def test_multilabel_partial_fit_takes_classes_as_scikit_learn_does():
    """A multi-label y's labels are its columns: `classes` on the first call must name each
    (scikit-learn's check), and the same `classes` on every later call is accepted (it was
    ignored on the first call, then refused on the second)."""
    X, _, _, multilabel, _ = small_data()
    chunks = [slice(0, 45), slice(45, 90)]
    for classes in ([0, 1, 2], [0, 1, 2, 3, 4]):
        for cls in (MLPClassifier, neural_network.MLPClassifier):
            clf = cls(hidden_layer_sizes=(5,), random_state=0)
            for chunk in chunks:
                clf.partial_fit(X[chunk], multilabel[chunk], classes=classes)
            assert clf.predict(X).shape == multilabel.shape
        with pytest.raises(ValueError, match="not the same"):
            clf.partial_fit(X, multilabel, classes=[0, 1, 2, 3, 4, 5])
    for classes in ([0, 1], ["a", "b", "c"]):
        clf = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
        with pytest.raises(ValueError):
            neural_network.MLPClassifier().partial_fit(X, multilabel, classes=classes)
        with pytest.raises(ValueError):
            clf.partial_fit(X, multilabel, classes=classes)
        assert "classes_" not in clf.__dict__ and not hasattr(clf, "model_")
    # a fit after partial_fit takes y's classes; a later partial_fit compares with those
    clf = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    clf.partial_fit(X, multilabel, classes=[0, 1, 2, 3])
    quiet(clf.set_params(max_iter=2).fit, X, multilabel)
    clf.partial_fit(X, multilabel, classes=[0, 1, 2])


def test_early_stopping_split_refuses_what_scikit_learn_refuses():
    """Only a binary class of a single row makes the split unstratified; a stratified split
    that cannot hold every class (a training part of one row) raises scikit-learn's error,
    not a fit on one row."""
    X, y = blobs(n=20, n_classes=2)
    for cls in (MLPClassifier, neural_network.MLPClassifier):
        with pytest.raises(ValueError, match="greater or equal to the number of classes"):
            cls(early_stopping=True, validation_fraction=0.95, max_iter=5).fit(X, y)
    rare = np.where(np.arange(20) == 0, 1, 0)        # one row of class 1: cannot stratify
    clf = quiet(MLPClassifier(early_stopping=True, max_iter=3, random_state=0).fit, X, rare)
    assert clf.n_iter_ >= 1


@pytest.mark.parametrize("problem", ["nan", "inf", "complex", "no rows"])
def test_sparse_x_is_refused_with_scikit_learns_messages(problem):
    X = scipy.sparse.random(10, 4, density=0.5, format="csr", random_state=0)
    if problem == "nan":
        X.data[0] = np.nan
    elif problem == "inf":
        X.data[0] = np.inf
    elif problem == "complex":
        X = X.astype(np.complex128)
    else:
        X = X[:0]
    y = np.arange(X.shape[0]) % 2
    messages = []
    for cls in (MLPClassifier, neural_network.MLPClassifier):
        with pytest.raises(ValueError) as caught:
            cls(max_iter=1).fit(X, y)
        messages.append(str(caught.value).split("\n")[0].replace("MLPClassifier", ""))
    assert messages[0] == messages[1]


def test_fastbp_parameters_out_of_range_are_invalid_parameters():
    from sklearn.utils._param_validation import InvalidParameterError
    X, y = blobs(n=30)
    for settings in ({"n_threads": 2000}, {"dropout": np.array(0.2)},
                     {"dropout": np.array([[0.2]])}):
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, **settings)
        with pytest.raises(InvalidParameterError):
            clf.fit(X, y)
    clf = quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=1,
                              dropout=np.array([0.2])).fit, X, y)
    assert clf.n_iter_ == 1


def test_a_call_while_another_thread_trains_the_estimator_is_refused_untouched():
    """Two threads' partial_fit on one estimator: the refused call had rewritten the shared
    trainer's settings and then put back the attributes it found, undoing the other call's
    record (t_ 204,100 where its successful calls made 388,100). Refused before it reads or
    changes anything now; the estimator is free again once the call ends."""
    import threading
    from fastbp.sklearn import _as_it_was_unless_trained

    X, y = np.random.default_rng(0).random((40, 4)), np.arange(40) % 2
    estimator = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    estimator.partial_fit(X, y, classes=[0, 1])
    before = dict(estimator.__dict__)
    errors = []

    def other():
        for call in (lambda: estimator.partial_fit(X, y), lambda: estimator.fit(X, y)):
            try:
                call()
            except RuntimeError as error:
                errors.append(str(error))

    with _as_it_was_unless_trained(estimator):       # as a running call holds it
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 2 and all("being trained by another call" in e for e in errors)
    assert estimator.__dict__.keys() == before.keys()
    assert all(estimator.__dict__[key] is value for key, value in before.items())
    estimator.partial_fit(X, y)                       # free again
    assert estimator.t_ == 2 * len(X)


def test_concurrent_partial_fits_count_every_step_they_take():
    """The reviewer's race: two threads calling partial_fit; each call either trains (and
    t_ counts its rows) or is refused, and nothing is lost."""
    import threading

    X, y = np.random.default_rng(0).random((200, 4)), np.arange(200) % 2
    estimator = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    estimator.partial_fit(X, y, classes=[0, 1])
    done = []

    def calls():
        for _ in range(40):
            try:
                estimator.partial_fit(X, y)
                done.append(1)
            except RuntimeError:
                pass

    threads = [threading.Thread(target=calls) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert estimator.t_ == (1 + len(done)) * len(X)


def test_a_child_forked_while_another_thread_trains_an_estimator_can_train_it():
    """The thread that held the estimator is not in a forked child: the child's calls are
    not refused for good (the guard's fork handler)."""
    import os
    import threading
    from fastbp.sklearn import _as_it_was_unless_trained

    X, y = np.random.default_rng(0).random((40, 4)), np.arange(40) % 2
    estimator = MLPClassifier(hidden_layer_sizes=(5,), random_state=0)
    estimator.partial_fit(X, y, classes=[0, 1])
    held, release = threading.Event(), threading.Event()

    def holder():
        with _as_it_was_unless_trained(estimator):
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    pid = os.fork()
    if pid == 0:                  # the child: train it, say how it went in the exit code
        try:
            estimator.partial_fit(X, y)
            os._exit(0 if estimator.t_ == 2 * len(X) else 1)
        except BaseException:
            os._exit(2)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_masked_array_with_masked_values_is_refused_by_the_estimators():
    """scikit-learn's validate_data drops a mask, so the estimators trained on (and
    predicted from) the values it hides: refused as fastbp refuses them, the estimator
    unchanged."""
    X, y = np.random.default_rng(0).random((40, 4)), np.arange(40) % 2
    hidden = np.ma.masked_array(X.copy())
    hidden[3, 1] = np.ma.masked
    labels = np.ma.masked_array(y, mask=np.arange(40) == 5)
    estimator = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, max_iter=5)
    for call in (lambda: estimator.fit(hidden, y), lambda: estimator.fit(X, labels)):
        with pytest.raises(TypeError, match=r"(X|y) is a masked array with 1 masked"):
            call()
    assert not hasattr(estimator, "model_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
    with pytest.raises(TypeError, match=r"X is a masked array with 1 masked"):
        estimator.predict(hidden)
    regressor = MLPRegressor(hidden_layer_sizes=(5,), random_state=0, max_iter=5)
    with pytest.raises(TypeError, match=r"X is a masked array with 1 masked"):
        regressor.fit(hidden, X[:, 0])
