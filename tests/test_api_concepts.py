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
