"""Issue 10, the Python layer's concepts: a loss describes itself, one name lookup for
losses, optimizers, schedules and metrics, each optimizer's own default learning rate,
one epoch loop for Trainer and fastbp.dask."""
import ast
import pathlib

import numpy as np
import pytest

import fastbp
from fastbp import losses, metrics, optimizers, schedules

PACKAGE = pathlib.Path(fastbp.__file__).parent


# ================================================================ a loss describes itself

@pytest.mark.parametrize("name, cls, activation, classification, forms", [
    ("mse", losses.MeanSquaredError, "identity", False, ("real values",)),
    ("mae", losses.MeanAbsoluteError, "identity", False, ("real values",)),
    ("huber", losses.Huber, "identity", False, ("real values",)),
    ("categorical_crossentropy", losses.CategoricalCrossentropy, "softmax", True,
     ("class labels", "one-hot rows", "probability rows")),
    ("binary_crossentropy", losses.BinaryCrossentropy, "sigmoid", True,
     ("0/1 values", "probabilities")),
])
def test_each_loss_describes_itself(name, cls, activation, classification, forms):
    loss = losses.get(name)
    assert type(loss) is cls and loss.name == name
    assert loss.output_activation == activation
    assert loss.is_classification is classification
    assert loss.target_forms == forms
    for alias in cls.aliases:
        assert type(losses.get(alias)) is cls and type(losses.get(alias.upper())) is cls


def test_one_alias_table_for_losses_and_their_metrics():
    """metrics.default_metrics took "huber_loss" while losses.get refused it."""
    for name in losses.NAMES:
        assert metrics.default_metrics(name) == losses.get(name).default_metrics()
    assert type(losses.get("huber_loss")) is losses.Huber
    assert metrics.default_metrics("bce", 3) == ["binary_accuracy"]


def test_targets_are_read_by_the_loss():
    cce, bce, mse = losses.get("cce"), losses.get("bce"), losses.get("mse")
    assert cce.takes_labels((10,), 3) and cce.takes_labels((10, 1), 3)
    assert not cce.takes_labels((10, 3), 3) and not mse.takes_labels((10,), 1)
    with pytest.raises(ValueError, match="binary cross-entropy must lie in"):
        bce.check_targets(np.array([[2.0]]))
    with pytest.raises(ValueError, match="class_weight needs a classification loss"):
        mse.classes_of(np.zeros((3, 1)), None, 1)
    classes, n_classes = bce.classes_of(np.array([[0.2], [0.7]]), None, 1)
    assert classes.tolist() == [0, 1] and n_classes == 2


def string_comparisons_with(names, path):
    """(line, text) of every == / != / in comparison of a string constant from `names`."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = [operand] + (list(operand.elts) if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [])
                for value in values:
                    if isinstance(value, ast.Constant) and value.value in names:
                        found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("module", ["_validation.py", "trainer.py", "metrics.py", "dask.py",
                                    "sklearn.py", "model.py", "callbacks.py"])
def test_no_module_compares_loss_or_optimizer_names_with_strings(module):
    names = set(losses.NAMES) | {"cce", "bce", "huber_loss"} | set(optimizers.NAMES)
    assert string_comparisons_with(names, PACKAGE / module) == []


# ================================================================ one name lookup

def test_one_lookup_for_every_kind_of_name():
    for module in (losses, optimizers, schedules, metrics):
        assert module.NAMES == module.REGISTRY.names
    assert optimizers.lookup("Adam") is optimizers.Adam
    assert metrics.get("MEAN_SQUARED_ERROR") is metrics.mse
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; valid names: sgd, adam"):
        optimizers.get("lion")
    with pytest.raises(TypeError, match="optimizer must be a name"):
        optimizers.get(3)


# ================================================================ default learning rates

@pytest.mark.parametrize("name, rate", [("sgd", 0.01), ("adam", 0.001), ("rmsprop", 0.01),
                                        ("adagrad", 0.01)])
def test_a_named_optimizer_uses_its_own_default_learning_rate(name, rate):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    Y = rng.normal(size=(64, 1))
    runs = []
    for trainer in (fastbp.Trainer("mse", optimizer=name, epochs=2, seed=0),
                    fastbp.Trainer("mse", optimizer=name, learning_rate=rate, epochs=2, seed=0)):
        model = fastbp.MLP([3, 4, 1], ["tanh", "identity"], dtype="float64", seed=0)
        trainer.fit(model, X, Y)
        runs.append(model.weights + model.biases)
    assert all(np.array_equal(p, q) for p, q in zip(*runs))
    assert optimizers.get(name).learning_rate == rate
    assert fastbp.Trainer("mse").learning_rate is None


# ================================================================ one epoch loop

class StopAt(fastbp.callbacks.Callback):
    def __init__(self, epoch):
        self.epoch, self.seen = epoch, []

    def on_epoch_end(self, epoch, logs):
        self.seen.append((epoch, sorted(logs)))
        return epoch == self.epoch


def test_trainer_and_dask_share_the_epoch_loop():
    """The same stopping rule, logs and History from Trainer.fit and fastbp.dask.fit."""
    fastbp_dask = pytest.importorskip("fastbp.dask")
    import dask
    import dask.array as da
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = rng.integers(0, 3, size=120)
    histories, callbacks = [], []
    for runner in ("trainer", "dask"):
        model = fastbp.MLP([4, 8, 3], ["relu", "softmax"], dtype="float64", seed=0)
        trainer = fastbp.Trainer("cce", learning_rate=0.05, epochs=6, seed=0,
                                 schedule=schedules.StepDecay(1, 0.5))
        stop = StopAt(2)
        if runner == "trainer":
            history = trainer.fit(model, X, y, validation_data=(X[:20], y[:20]),
                                  callbacks=[stop])
        else:
            with dask.config.set(scheduler="synchronous"):
                history = fastbp_dask.fit(model, trainer, da.from_array(X, chunks=60),
                                          da.from_array(y, chunks=60),
                                          validation_data=(X[:20], y[:20]), callbacks=[stop])
        histories.append(history)
        callbacks.append(stop)
    for history, stop in zip(histories, callbacks):
        assert history.epochs == 3 and history.stopped_early
        assert history.history["learning_rate"] == [0.05, 0.025, 0.0125]
        assert [epoch for epoch, _ in stop.seen] == [0, 1, 2]
    assert callbacks[0].seen == callbacks[1].seen              # the same logs' keys


def test_trainer_arguments_rebuild_the_trainer():
    trainer = fastbp.Trainer("mse", optimizer="adam", epochs=3, batch_size=7, seed=2,
                             clip_norm=1.5, n_threads=1)
    again = fastbp.Trainer(**trainer.arguments())
    assert again.arguments() == trainer.arguments()
    spec = trainer.spec()
    assert spec.optimizer == optimizers.Adam() and spec.epochs == 3 and spec.clip_norm == 1.5


def test_parameter_vector_round_trip_is_checked_and_copied():
    model = fastbp.MLP([3, 4, 2], ["tanh", "identity"], seed=0)
    vector = model.parameter_vector()
    assert vector.dtype == model.dtype and vector.shape == (model.n_params,)
    vector[0] += 1                                                # a copy
    assert model.parameter_vector()[0] != vector[0]
    original = model.parameter_vector()
    model.set_parameter_vector(model._params[::-1])              # a view of the parameters
    assert np.array_equal(model.parameter_vector(), original[::-1])
    before = model.parameter_vector()
    for bad, error in ((np.zeros(3), ValueError), (np.full(model.n_params, np.inf), ValueError),
                       (np.full(model.n_params, 1e39), ValueError), ("x", TypeError)):
        with pytest.raises(error):
            model.set_parameter_vector(bad)
    assert np.array_equal(model.parameter_vector(), before)
