"""SGD training of fastbp against tests/reference.py, seeds and determinism, and a real task."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

import fastbp  # noqa: E402

N_SAMPLES = 23  # prime: no batch size below divides it

# (layer sizes, activations, loss, target format, learning rate, batch size)
CONFIGS = [
    ([5, 8, 3], ("tanh", "softmax"), "categorical_crossentropy", "labels", 0.5, 4),
    ([5, 8, 3], ("relu", "softmax"), "cce", None, 0.5, 5),
    ([5, 8, 3], ("relu", "identity"), "mse", None, 0.05, 5),
    ([5, 6, 4, 2], ("leaky_relu", "tanh", "sigmoid"), "bce", None, 0.5, 6),
    ([5, 8, 3], ("sigmoid", "tanh"), "mae", None, 0.1, 10),
    ([5, 8, 3], ("tanh", "sigmoid"), "mse", None, 0.5, 1),
    ([4, 3], ("identity",), "mse", None, 0.05, 32),  # one batch, smaller than batch_size
]
CONFIG_IDS = [f"{'-'.join(c[1])}-{c[2]}{'-labels' if c[3] else ''}-b{c[5]}" for c in CONFIGS]


def problem(config, seed):
    sizes, activations, loss, targets, _, _ = config
    rng = np.random.default_rng(seed)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, N_SAMPLES, rng, targets)
    return W, b, X, Y


def make_model(sizes, activations, dtype, weights, biases):
    model = fastbp.MLP(sizes, list(activations), dtype=dtype, seed=0)
    model.weights = [np.asarray(W, dtype=dtype) for W in weights]
    model.biases = [np.asarray(b, dtype=dtype) for b in biases]
    return model


def params(model):
    return [np.array(p, copy=True) for p in list(model.weights) + list(model.biases)]


def assert_params_close(actual, desired, rtol, atol):
    assert len(actual) == len(desired)
    for i, (a, d) in enumerate(zip(actual, desired)):
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=f"parameter {i}")


def reference_fit(W, b, activations, X, Y, loss, learning_rate, batch_size, epochs, orders=None):
    W = [w.astype(np.float64) for w in W]
    b = [v.astype(np.float64) for v in b]
    losses = []
    for epoch in range(epochs):
        order = None if orders is None else orders[epoch]
        losses.append(ref.sgd_epoch(W, b, activations, X, Y, loss, learning_rate, batch_size, order))
    return W + b, losses


# ---------------------------------------------------------------- 5. step for step with the reference

@pytest.mark.parametrize("epochs", [1, 4])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_sgd_without_shuffle_matches_reference(config, epochs):
    sizes, activations, loss, _, learning_rate, batch_size = config
    W, b, X, Y = problem(config, seed=epochs)
    model = make_model(sizes, activations, "float64", W, b)
    trainer = fastbp.Trainer(loss, learning_rate=learning_rate, epochs=epochs,
                             batch_size=batch_size, shuffle=False)
    history = trainer.fit(model, X, Y)

    expected, expected_losses = reference_fit(W, b, activations, X, Y, loss,
                                              learning_rate, batch_size, epochs)
    assert len(history.loss) == epochs
    np.testing.assert_allclose(history.loss, expected_losses, rtol=1e-9)
    assert_params_close(params(model), expected, rtol=1e-9, atol=1e-12)
    # the parameters moved, by more than the tolerance
    assert max(np.abs(p - q).max() for p, q in zip(expected, W + b)) > 1e-3


@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[3:4], ids=CONFIG_IDS[:2] + CONFIG_IDS[3:4])
def test_sgd_successive_fits_continue_training(config):
    """Two fits of 2 epochs each equal one reference run of 4 epochs (shuffle=False)."""
    sizes, activations, loss, _, learning_rate, batch_size = config
    W, b, X, Y = problem(config, seed=11)
    model = make_model(sizes, activations, "float64", W, b)
    trainer = fastbp.Trainer(loss, learning_rate=learning_rate, epochs=2,
                             batch_size=batch_size, shuffle=False)
    first = trainer.fit(model, X, Y)
    second = trainer.fit(model, X, Y)
    expected, expected_losses = reference_fit(W, b, activations, X, Y, loss,
                                              learning_rate, batch_size, 4)
    np.testing.assert_allclose(list(first.loss) + list(second.loss), expected_losses, rtol=1e-9)
    assert_params_close(params(model), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS[:1] + CONFIGS[3:4], ids=CONFIG_IDS[:1] + CONFIG_IDS[3:4])
def test_sgd_float32_follows_reference(config):
    sizes, activations, loss, _, learning_rate, batch_size = config
    W, b, X, Y = problem(config, seed=3)
    W = [w.astype(np.float32) for w in W]
    b = [v.astype(np.float32) for v in b]
    X = X.astype(np.float32)
    Y = Y if Y.dtype.kind in "iu" else Y.astype(np.float32)
    model = make_model(sizes, activations, "float32", W, b)
    history = fastbp.Trainer(loss, learning_rate=learning_rate, epochs=3,
                             batch_size=batch_size, shuffle=False).fit(model, X, Y)
    expected, expected_losses = reference_fit(W, b, activations, X, Y, loss,
                                              learning_rate, batch_size, 3)
    for p in params(model):
        assert p.dtype == np.float32
    np.testing.assert_allclose(history.loss, expected_losses, rtol=1e-4)
    assert_params_close(params(model), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS[:1] + CONFIGS[2:4], ids=CONFIG_IDS[:1] + CONFIG_IDS[2:4])
def test_shuffle_uses_one_default_rng_permutation_per_epoch(config):
    sizes, activations, loss, _, learning_rate, batch_size = config
    W, b, X, Y = problem(config, seed=5)
    seed, epochs = 1234, 3
    model = make_model(sizes, activations, "float64", W, b)
    history = fastbp.Trainer(loss, learning_rate=learning_rate, epochs=epochs,
                             batch_size=batch_size, shuffle=True, seed=seed).fit(model, X, Y)

    rng = np.random.default_rng(seed)
    orders = [rng.permutation(N_SAMPLES) for _ in range(epochs)]
    expected, expected_losses = reference_fit(W, b, activations, X, Y, loss,
                                              learning_rate, batch_size, epochs, orders)
    np.testing.assert_allclose(history.loss, expected_losses, rtol=1e-9)
    assert_params_close(params(model), expected, rtol=1e-9, atol=1e-12)
    # and the shuffle mattered: the unshuffled run ends elsewhere
    unshuffled, _ = reference_fit(W, b, activations, X, Y, loss, learning_rate, batch_size, epochs)
    assert max(np.abs(p - q).max() for p, q in zip(expected, unshuffled)) > 1e-6


# ---------------------------------------------------------------- seeds and determinism

def seeded_run(dtype, model_seed, trainer_seed, n_threads=None, shuffle=True):
    rng = np.random.default_rng(42)
    X = rng.normal(size=(50, 6)).astype(dtype)
    y = rng.integers(0, 3, size=50)
    model = fastbp.MLP([6, 16, 3], ["relu", "softmax"], dtype=dtype, seed=model_seed)
    initial = params(model)
    history = fastbp.Trainer("cce", learning_rate=0.1, epochs=3, batch_size=8, shuffle=shuffle,
                             seed=trainer_seed, n_threads=n_threads).fit(model, X, y)
    return initial, params(model), list(history.loss)


@pytest.mark.parametrize("n_threads", [None, 1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_gives_bit_identical_parameters(dtype, n_threads):
    init_a, final_a, loss_a = seeded_run(dtype, 7, 8, n_threads)
    init_b, final_b, loss_b = seeded_run(dtype, 7, 8, n_threads)
    assert all(np.array_equal(p, q) for p, q in zip(init_a, init_b))
    assert all(np.array_equal(p, q) for p, q in zip(final_a, final_b))
    assert loss_a == loss_b
    assert not all(np.array_equal(p, q) for p, q in zip(init_a, final_a))  # it trained


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_different_seeds_give_different_parameters(dtype):
    init_a, final_a, _ = seeded_run(dtype, 7, 8)
    # another model seed: other initial weights
    init_b, _, _ = seeded_run(dtype, 9, 8)
    assert not np.array_equal(init_a[0], init_b[0])
    # the same initial weights, another trainer seed: another order, other final weights
    init_c, final_c, _ = seeded_run(dtype, 7, 10)
    assert all(np.array_equal(p, q) for p, q in zip(init_a, init_c))
    assert not np.array_equal(final_a[0], final_c[0])


def test_seed_does_not_matter_without_shuffle():
    _, final_a, loss_a = seeded_run("float64", 7, 1, shuffle=False)
    _, final_b, loss_b = seeded_run("float64", 7, 2, shuffle=False)
    assert all(np.array_equal(p, q) for p, q in zip(final_a, final_b))
    assert loss_a == loss_b


# ---------------------------------------------------------------- 6. it learns

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_learns_digits(dtype):
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0) + 1e-8
    X_train = ((X_train - mean) / std).astype(dtype)
    X_test = ((X_test - mean) / std).astype(dtype)

    # the plain-NumPy reference reaches 96.9-98.2% here over 12 seeds and two inits
    model = fastbp.MLP([64, 128, 10], ["relu", "softmax"], dtype=dtype, seed=0)
    history = fastbp.Trainer("cce", learning_rate=0.05, epochs=30, batch_size=16,
                             seed=0).fit(model, X_train, y_train)

    assert len(history.loss) == 30
    assert history.loss[-1] < 0.1 * history.loss[0]
    accuracy = np.mean(model.predict(X_test).argmax(axis=1) == y_test)
    assert accuracy >= 0.96, accuracy
