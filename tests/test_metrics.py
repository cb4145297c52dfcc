"""Metrics against scikit-learn, their input forms, names and defaults."""
import numpy as np
import pytest

from fastbp import losses, metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def softmax_scores(rng, n, k):
    logits = rng.normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- accuracy ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accuracy_multiclass_labels_and_one_hot(dtype):
    rng = np.random.default_rng(0)
    scores = softmax_scores(rng, 200, 4).astype(dtype)
    labels = rng.integers(0, 4, size=200)
    expected = sklearn_metrics.accuracy_score(labels, scores.argmax(axis=1))
    assert metrics.accuracy(labels, scores) == expected
    assert metrics.accuracy(labels.reshape(-1, 1), scores) == expected
    assert metrics.accuracy(labels.astype(np.float64), scores) == expected
    assert metrics.accuracy(np.eye(4)[labels], scores) == expected
    assert metrics.accuracy(np.eye(4, dtype=np.float32)[labels], scores) == expected


def test_accuracy_binary_threshold():
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=300)
    truth = rng.integers(0, 2, size=300)
    expected = sklearn_metrics.accuracy_score(truth, (probabilities > 0.5).astype(int))
    assert metrics.accuracy(truth, probabilities) == expected
    assert metrics.accuracy(truth.reshape(-1, 1), probabilities.reshape(-1, 1)) == expected
    assert metrics.accuracy(truth.astype(np.float32), probabilities.reshape(-1, 1)) == expected
    # exactly 0.5 is class 0, like sklearn's predict (decision_function > 0)
    assert metrics.accuracy([0, 1], [0.5, 0.5]) == 0.5


def test_accuracy_values():
    assert metrics.accuracy([0, 1, 2, 1], [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0.2, 0.7, 0.1]]) == 0.75
    assert metrics.accuracy([1, 1], [[0.9], [0.1]]) == 0.5
    assert isinstance(metrics.accuracy([1], [[0.9]]), float)


def test_accuracy_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="2 rows but y_pred has 3"):
        metrics.accuracy([0, 1], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="class labels"):
        metrics.accuracy(np.zeros((3, 5)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one column"):
        metrics.accuracy(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="whole numbers"):
        metrics.accuracy([0.5, 1.0], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        metrics.accuracy(np.zeros((2, 2, 2)), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="y_pred must hold numbers"):
        metrics.accuracy([0, 1], ["a", "b"])
    with pytest.raises(TypeError, match="y_true"):
        metrics.accuracy(None, [0.1, 0.2])


def test_binary_accuracy_is_element_wise():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, size=(50, 3))
    probabilities = rng.uniform(size=(50, 3))
    expected = np.mean((probabilities > 0.5) == truth)
    assert metrics.binary_accuracy(truth, probabilities) == pytest.approx(expected, rel=1e-15)
    single = probabilities[:, :1]
    assert metrics.binary_accuracy(truth[:, 0], single) == metrics.accuracy(truth[:, 0], single)
    with pytest.raises(ValueError, match="same shape"):
        metrics.binary_accuracy(truth, probabilities[:, :2])


# ---- regression ----

@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regression_metrics_equal_sklearn(n_outputs, dtype):
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(100, n_outputs)).astype(dtype)
    prediction = (truth + rng.normal(scale=0.5, size=truth.shape)).astype(dtype)
    for ours, theirs in ((metrics.mae, sklearn_metrics.mean_absolute_error),
                         (metrics.mse, sklearn_metrics.mean_squared_error),
                         (metrics.r2, sklearn_metrics.r2_score)):
        expected = theirs(truth.astype(np.float64), prediction.astype(np.float64))
        assert ours(truth, prediction) == pytest.approx(expected, rel=1e-12)
        assert isinstance(ours(truth, prediction), float)


def test_r2_is_the_uniform_average_over_outputs():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(40, 2)) * [1.0, 100.0]      # very different scales
    prediction = truth + rng.normal(size=(40, 2))
    expected = sklearn_metrics.r2_score(truth, prediction, multioutput="uniform_average")
    assert metrics.r2(truth, prediction) == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(sklearn_metrics.r2_score(
        truth, prediction, multioutput="variance_weighted"))


def test_r2_constant_outputs_and_short_inputs_as_sklearn():
    truth = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    exact = truth.copy()
    missed = truth + [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]
    for prediction in (exact, missed):
        assert metrics.r2(truth, prediction) == sklearn_metrics.r2_score(truth, prediction)
    assert metrics.r2(truth, exact) == 1.0 and metrics.r2(truth, missed) == 0.5
    assert np.isnan(metrics.r2([1.0], [2.0]))


def test_one_column_and_flat_arrays_mix():
    truth = np.array([1.0, 2.0, 3.0])
    prediction = np.array([[1.5], [2.0], [2.0]])
    assert metrics.mae(truth, prediction) == pytest.approx(0.5)
    assert metrics.mse(truth.reshape(-1, 1), prediction.ravel()) == pytest.approx(1.25 / 3)
    with pytest.raises(ValueError, match="same shape"):
        metrics.mse(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="rows"):
        metrics.mae(np.zeros(3), np.zeros(4))


# ---- names ----

def test_get_by_name_and_alias():
    assert metrics.get("accuracy") is metrics.accuracy
    assert metrics.get("ACCURACY") is metrics.accuracy
    assert metrics.get("binary_accuracy") is metrics.binary_accuracy
    assert metrics.get("mae") is metrics.mae and metrics.get("mean_absolute_error") is metrics.mae
    assert metrics.get("mse") is metrics.mse and metrics.get("mean_squared_error") is metrics.mse
    assert metrics.get("r2") is metrics.r2


def test_get_passes_callables_through():
    def max_error(y_true, y_pred):
        return float(np.max(np.abs(np.asarray(y_true) - np.asarray(y_pred))))

    assert metrics.get(max_error) is max_error
    assert metrics.get(sklearn_metrics.r2_score) is sklearn_metrics.r2_score


def test_get_refuses_unknown_names_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown metric 'f1'; valid names: accuracy, "
                                         "binary_accuracy, mae, mse, r2"):
        metrics.get("f1")
    with pytest.raises(TypeError, match="a metric must be a name"):
        metrics.get(3)
    with pytest.raises(TypeError, match="a metric must be a name"):
        metrics.get(None)


def test_name():
    assert metrics.name("mean_absolute_error") == "mae"
    assert metrics.name("Accuracy") == "accuracy"
    assert metrics.name(metrics.r2) == "r2"
    assert metrics.name(sklearn_metrics.median_absolute_error) == "median_absolute_error"

    class Scorer:
        def __call__(self, y_true, y_pred):
            return 0.0

    assert metrics.name(Scorer()) == "Scorer"
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.name("f1")


@pytest.mark.parametrize("monitor, greater", [
    ("val_accuracy", True), ("accuracy", True), ("val_binary_accuracy", True), ("val_acc", True),
    ("val_r2", True), ("val_loss", False), ("loss", False), ("val_mae", False), ("mse", False)])
def test_greater_is_better(monitor, greater):
    assert metrics.greater_is_better(monitor) is greater


# ---- defaults ----

@pytest.mark.parametrize("loss, expected", [
    ("categorical_crossentropy", ["accuracy"]), ("cce", ["accuracy"]),
    ("binary_crossentropy", ["accuracy"]), ("bce", ["accuracy"]),
    ("mse", ["mae", "r2"]), ("mean_squared_error", ["mae", "r2"]), ("mae", ["mae", "r2"]),
    ("mean_absolute_error", ["mae", "r2"]), ("huber", ["mae", "r2"]), ("MSE", ["mae", "r2"])])
def test_default_metrics(loss, expected):
    assert metrics.default_metrics(loss) == expected
    for name in expected:
        metrics.get(name)


def test_default_metrics_of_loss_objects_and_multilabel():
    assert metrics.default_metrics(losses.get("cce")) == ["accuracy"]
    assert metrics.default_metrics(losses.get("mse")) == ["mae", "r2"]
    assert metrics.default_metrics("bce", n_outputs=1) == ["accuracy"]
    assert metrics.default_metrics("bce", n_outputs=5) == ["binary_accuracy"]
    assert metrics.default_metrics("cce", n_outputs=5) == ["accuracy"]


def test_default_metrics_refuses_unknown_losses():
    with pytest.raises(ValueError, match="no default metrics for the loss 'hinge'"):
        metrics.default_metrics("hinge")
    with pytest.raises(TypeError, match="loss must be"):
        metrics.default_metrics(3)
    with pytest.raises(ValueError, match="n_outputs"):
        metrics.default_metrics("bce", n_outputs=0)


@pytest.mark.parametrize("y_true, y_pred", [
    ([0, 1, 2, 2], [0, 2, 1, 1]),           # class labels on both sides (sklearn: 0.25)
    ([3, 5, 7], [1, 1, 1]),
    ([-1, 1], [0.2, 0.9]),                   # -1/1 labels
    ([1, np.nan, 0], [0.2, 0.7, 0.1]),       # a NaN label
    ([0, 1], [-3.0, 2.5])])                  # scores, not probabilities
def test_binary_accuracy_refuses_what_is_not_zero_one_and_probabilities(y_true, y_pred):
    """With one column y_pred is the probability of class 1 and y_true 0/1: anything else
    was compared with 0.5 all the same (labels [0, 1, 2, 2] against [0, 2, 1, 1] gave 1.0)."""
    with pytest.raises(ValueError, match="one column"):
        metrics.accuracy(y_true, y_pred)


def test_binary_accuracy_of_zero_one_targets_and_probabilities_is_sklearns():
    from sklearn.metrics import accuracy_score
    y_true, y_pred = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.6, 0.4, 0.5, 1.0])
    assert metrics.accuracy(y_true, y_pred) == accuracy_score(y_true, y_pred > 0.5) == 0.8
    assert metrics.accuracy(y_true.astype(float)[:, None], y_pred[:, None]) == 0.8


@pytest.mark.parametrize("monitor", ["val_f1", "val_auc", "precision"])
def test_mode_auto_refuses_a_monitor_whose_direction_it_cannot_tell(monitor):
    """mode='auto' minimised any name without 'acc' or 'r2': EarlyStopping on val_f1 kept
    the worst epoch's weights."""
    from fastbp.callbacks import EarlyStopping, ModelCheckpoint
    from fastbp.schedules import ReduceOnPlateau
    for make in (lambda: EarlyStopping(monitor=monitor),
                 lambda: ModelCheckpoint("unused.fbp", monitor=monitor),
                 lambda: ReduceOnPlateau(monitor=monitor)):
        with pytest.raises(ValueError, match="mode='max' or mode='min'"):
            make()
    assert EarlyStopping(monitor=monitor, mode="max") is not None
    for known in ("val_loss", "val_accuracy", "val_r2", "val_mae", "mean_squared_error"):
        EarlyStopping(monitor=known)
