"""Gradients, forward pass and losses of fastbp against finite differences and tests/reference.py."""

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402
from bad_weights import BAD_SAMPLE_WEIGHTS  # noqa: E402

import fastbp  # noqa: E402
import fastbp.losses  # noqa: E402
from fastbp import _core  # noqa: E402

HIDDEN = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
OUTPUT = HIDDEN + ("softmax",)
SIZES = {1: [4, 3], 2: [4, 5, 3], 3: [4, 5, 4, 3]}
# (loss name, target format): CCE is checked with one-hot rows (under its alias) and with labels
LOSSES = [
    ("mse", None),
    ("mae", None),
    ("cce", None),
    ("categorical_crossentropy", "labels"),
    ("binary_crossentropy", None),
]
LOSS_IDS = ["mse", "mae", "cce-onehot", "cce-labels", "bce"]


def activation_chains(depths=(1, 2, 3)):
    """Every output activation after every hidden activation, each hidden one in each slot."""
    chains = []
    for depth in depths:
        if depth == 1:
            hidden_choices = [()]
        else:
            hidden_choices = [tuple(HIDDEN[(i + j) % len(HIDDEN)] for j in range(depth - 1))
                              for i in range(len(HIDDEN))]
        for hidden in hidden_choices:
            for out in OUTPUT:
                chains.append(hidden + (out,))
    return chains


CHAINS = activation_chains()
CHAIN_IDS = ["-".join(chain) for chain in CHAINS]


def rng_for(*key):
    """A generator seeded from the test's parameters (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_model(layer_sizes, activations, dtype, weights, biases):
    model = fastbp.MLP(layer_sizes, list(activations), dtype=dtype, seed=0)
    model.weights = [np.asarray(W, dtype=dtype) for W in weights]
    model.biases = [np.asarray(b, dtype=dtype) for b in biases]
    return model


def cast_targets(Y, dtype):
    """Float targets in the model's dtype; integer labels stay integers."""
    Y = np.asarray(Y)
    return Y if Y.dtype.kind in "iu" else Y.astype(dtype)


def assert_all_close(actual, desired, rtol, atol, what):
    """assert_allclose on each pair of arrays of two lists."""
    assert len(actual) == len(desired)
    for i, (a, d) in enumerate(zip(actual, desired)):
        assert np.shape(a) == np.shape(d), f"{what}[{i}]: shape {np.shape(a)} != {np.shape(d)}"
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=f"{what}[{i}]")


def largest(arrays):
    return max(float(np.max(np.abs(a))) for a in arrays)


def fd_atol(value):
    """Central differences with step 1e-6 carry a rounding error of about 1e-10 * |loss|."""
    return 1e-8 * max(1.0, abs(float(value)))


# ---------------------------------------------------------------- 1. the reference itself

@pytest.mark.parametrize("n_samples", [1, 7])
@pytest.mark.parametrize("loss, targets", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("activations", CHAINS, ids=CHAIN_IDS)
def test_reference_gradients_match_its_finite_differences(activations, loss, targets, n_samples):
    sizes = SIZES[len(activations)]
    rng = rng_for(activations, loss, targets, n_samples)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, n_samples, rng, targets)
    value, grad_W, grad_b = ref.gradients(W, b, activations, X, Y, loss)
    num_W, num_b = ref.numerical_gradients(W, b, activations, X, Y, loss)
    assert np.isfinite(value)
    assert largest(num_W + num_b) > 1e-4  # not a vacuous check
    assert_all_close(grad_W + grad_b, num_W + num_b, 1e-6, fd_atol(value), "reference gradient")


@pytest.mark.parametrize("loss, output", [("cce", "softmax"), ("bce", "sigmoid")])
def test_reference_fused_pairs_equal_the_general_chain_rule(loss, output):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(6, 4))
    A = ref.activate(output, Z)
    if loss == "cce":
        Y = np.eye(4)[rng.integers(0, 4, size=6)]
    else:
        Y = rng.uniform(size=(6, 4))
    fused_value = ref.loss_value(loss, A, Z, Y, output)
    fused_delta = ref.output_delta(loss, A, Z, Y, output)
    g = ref.loss_grad_on_outputs(loss, Y, A)
    if output == "softmax":
        general_delta = A * (g - np.sum(g * A, axis=1, keepdims=True))
    else:
        general_delta = g * A * (1.0 - A)
    np.testing.assert_allclose(fused_value, ref.loss_on_outputs(loss, Y, A), rtol=1e-12)
    np.testing.assert_allclose(fused_delta, general_delta, rtol=1e-10, atol=1e-15)
    # the fused loss stays finite where the clipped one saturates
    Z_big = np.array([[800.0, -800.0, 0.0, 1.0]])
    Y_big = np.array([[0.0, 1.0, 0.0, 0.0]]) if loss == "cce" else np.array([[0.0, 1.0, 0.5, 1.0]])
    big = ref.loss_value(loss, ref.activate(output, Z_big), Z_big, Y_big, output)
    expected = 1600.0 if loss == "cce" else None
    assert np.isfinite(big) and big > 100
    if expected is not None:
        np.testing.assert_allclose(big, expected, rtol=1e-12)


# ---------------------------------------------------------------- 2. fastbp float64 gradients

@pytest.mark.parametrize("n_samples", [1, 7])
@pytest.mark.parametrize("loss, targets", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("activations", CHAINS, ids=CHAIN_IDS)
def test_gradients_float64(activations, loss, targets, n_samples):
    sizes = SIZES[len(activations)]
    rng = rng_for(activations, loss, targets, n_samples)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, n_samples, rng, targets)
    model = make_model(sizes, activations, "float64", W, b)
    assert model.activations == tuple(activations)

    value, grad_W, grad_b = model.gradients(X, Y, loss)
    for g in grad_W + grad_b:
        assert g.dtype == np.float64
    # gradients() leaves the parameters alone
    for live, original in zip(model.weights + model.biases, W + b):
        assert np.array_equal(live, original)

    # against the reference
    ref_value, ref_W, ref_b = ref.gradients(W, b, activations, X, Y, loss)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10, atol=1e-14)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, 1e-10, 1e-12 * largest(ref_W + ref_b),
                     "gradient vs reference")

    # against central differences of fastbp's own loss, perturbing its live parameters
    num_W, num_b = ref.numerical_gradients(
        model.weights, model.biases, activations, X, Y, loss,
        loss_fn=lambda: float(model.gradients(X, Y, loss)[0]))
    assert largest(num_W + num_b) > 1e-4  # the perturbations took effect
    assert_all_close(grad_W + grad_b, num_W + num_b, 1e-6, fd_atol(value),
                     "gradient vs finite differences")
    for live, original in zip(model.weights + model.biases, W + b):
        np.testing.assert_array_equal(live, original)  # restored exactly


@pytest.mark.parametrize("loss", ["cce", "bce"])
@pytest.mark.parametrize("output", ["identity", "tanh", "softmax", "sigmoid"])
def test_gradients_float64_where_probabilities_are_clipped(loss, output):
    """Outputs at or beyond 0 and 1: the clipped loss, derivative 0 where the clip is active."""
    sizes = [3, 5, 4]
    rng = rng_for("clipped", loss, output)
    W, b = ref.init_parameters(sizes, rng)
    W[-1] *= 40.0  # outputs far outside (0, 1), or saturated at 0 and 1
    X = rng.normal(size=(8, 3))
    Y = np.eye(4)[rng.integers(0, 4, size=8)] if loss == "cce" else rng.uniform(size=(8, 4))
    activations = ("tanh", output)
    A = ref.forward(W, b, activations, X)[-1]
    fused = (loss, output) in [("cce", "softmax"), ("bce", "sigmoid")]
    if not fused:
        assert np.mean((A < ref.EPS) | (A > 1 - ref.EPS)) > 0.2  # many clipped entries
    model = make_model(sizes, activations, "float64", W, b)
    value, grad_W, grad_b = model.gradients(X, Y, loss)
    ref_value, ref_W, ref_b = ref.gradients(W, b, activations, X, Y, loss)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, 1e-9, 1e-12 * largest(ref_W + ref_b),
                     "gradient with clipping")


# ---------------------------------------------------------------- 3. float32 agrees with float64

@pytest.mark.parametrize("loss, targets", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("activations", activation_chains(depths=(2, 3)),
                         ids=["-".join(c) for c in activation_chains(depths=(2, 3))])
def test_gradients_float32_agree_with_float64(activations, loss, targets):
    sizes = SIZES[len(activations)]
    rng = rng_for("float32", activations, loss, targets)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 9, rng, targets)
    # the same float32-representable inputs for both models
    W = [w.astype(np.float32) for w in W]
    b = [v.astype(np.float32) for v in b]
    X = X.astype(np.float32)
    Y = cast_targets(Y, np.float32)
    model64 = make_model(sizes, activations, "float64", W, b)
    model32 = make_model(sizes, activations, "float32", W, b)
    assert np.dtype(model32.dtype) == np.float32
    for w in model32.weights + model32.biases:
        assert w.dtype == np.float32

    value64, grad_W64, grad_b64 = model64.gradients(X.astype(np.float64), cast_targets(Y, np.float64), loss)
    value32, grad_W32, grad_b32 = model32.gradients(X, Y, loss)
    for g in grad_W32 + grad_b32:
        assert g.dtype == np.float32
    np.testing.assert_allclose(value32, value64, rtol=1e-5, atol=1e-6)
    assert_all_close(grad_W32 + grad_b32, grad_W64 + grad_b64, 1e-4, 1e-5 * largest(grad_W64 + grad_b64),
                     "float32 vs float64")


# ---------------------------------------------------------------- 4. predict is the forward pass

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activations", CHAINS, ids=CHAIN_IDS)
def test_predict_equals_reference_forward(activations, dtype):
    sizes = SIZES[len(activations)]
    rng = rng_for("predict", activations)
    W, b = ref.init_parameters(sizes, rng, scale=0.8)
    X = rng.normal(size=(11, sizes[0]))
    if dtype == "float32":
        W = [w.astype(np.float32) for w in W]
        b = [v.astype(np.float32) for v in b]
        X = X.astype(np.float32)
    model = make_model(sizes, activations, dtype, W, b)
    out = model.predict(X)
    expected = ref.forward(W, b, activations, X)[-1]
    assert out.shape == (11, sizes[-1])
    assert out.dtype == np.dtype(dtype)
    if dtype == "float64":
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    if activations[-1] == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5 if dtype == "float32" else 1e-12)


def test_predict_is_stable_for_large_logits():
    model = make_model([2, 3], ["softmax"], "float64",
                       [np.array([[500.0, -500.0, 0.0], [0.0, 0.0, 0.0]])], [np.zeros(3)])
    out = model.predict(np.array([[2.0, 0.0], [-2.0, 0.0]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-300)
    sig = make_model([1, 1], ["sigmoid"], "float64", [np.array([[1.0]])], [np.zeros(1)])
    out = sig.predict(np.array([[800.0], [-800.0]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 0], [1.0, 0.0], atol=1e-300)


# ---------------------------------------------------------------- the loss objects

LOSS_OBJECT_CASES = [("mse", False), ("mae", False), ("categorical_crossentropy", False),
                     ("cce", True), ("binary_crossentropy", False), ("bce", False)]


def loss_arrays(name, rng, labels=False):
    n, k = 6, 4
    y_pred = rng.uniform(0.05, 0.95, size=(n, k))
    canonical = ref.loss_name(name)
    if canonical == "categorical_crossentropy":
        y_true = rng.integers(0, k, size=n)
        if not labels:
            y_true = np.eye(k)[y_true]
    elif canonical == "binary_crossentropy":
        y_true = rng.uniform(0.0, 1.0, size=(n, k))
    else:
        y_true = rng.normal(0.5, 1.0, size=(n, k))
    return y_true, y_pred


@pytest.mark.parametrize("name, labels", LOSS_OBJECT_CASES,
                         ids=[name + ("-labels" if labels else "") for name, labels in LOSS_OBJECT_CASES])
def test_loss_objects_agree_with_reference(name, labels):
    loss = fastbp.losses.get(name)
    y_true, y_pred = loss_arrays(name, rng_for("loss", name, labels), labels)
    value = loss.value(y_true, y_pred)
    grad = loss.gradient(y_true, y_pred)
    np.testing.assert_allclose(value, ref.loss_on_outputs(name, y_true, y_pred), rtol=1e-12)
    assert np.shape(grad) == y_pred.shape
    np.testing.assert_allclose(grad, ref.loss_grad_on_outputs(name, y_true, y_pred),
                               rtol=1e-10, atol=1e-15)
    # the gradient is the derivative of the value
    numeric = np.zeros_like(y_pred)
    step = 1e-6
    for index in np.ndindex(y_pred.shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (loss.value(y_true, up) - loss.value(y_true, down)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_loss_aliases_are_the_same_loss():
    rng = np.random.default_rng(5)
    y_pred = rng.uniform(0.05, 0.95, size=(5, 3))
    onehot = np.eye(3)[rng.integers(0, 3, size=5)]
    for alias, full in [("cce", "categorical_crossentropy"), ("bce", "binary_crossentropy")]:
        a, f = fastbp.losses.get(alias), fastbp.losses.get(full)
        assert a.value(onehot, y_pred) == f.value(onehot, y_pred)
        np.testing.assert_array_equal(a.gradient(onehot, y_pred), f.gradient(onehot, y_pred))


def test_cross_entropy_losses_clip_and_mae_sign_at_zero():
    y_pred = np.array([[0.0, 1.0, 0.5], [1.5, -0.2, 0.3]])
    onehot = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for name in ("cce", "bce"):
        loss = fastbp.losses.get(name)
        value = loss.value(onehot, y_pred)
        grad = loss.gradient(onehot, y_pred)
        assert np.isfinite(value)
        np.testing.assert_allclose(value, ref.loss_on_outputs(name, onehot, y_pred), rtol=1e-9)
        # clip active on every entry except the 0.5 and the 0.3: derivative 0 there
        clipped = np.ones_like(y_pred, dtype=bool)
        clipped[0, 2] = clipped[1, 2] = False
        assert np.all(grad[clipped] == 0.0)
        np.testing.assert_allclose(grad, ref.loss_grad_on_outputs(name, onehot, y_pred),
                                   rtol=1e-10, atol=1e-15)
    mae = fastbp.losses.get("mae")
    y_true = np.array([[0.5, 1.0], [2.0, -1.0]])
    y_pred = np.array([[0.5, 0.0], [3.0, -1.0]])
    np.testing.assert_allclose(mae.value(y_true, y_pred), 2.0 / 4)
    np.testing.assert_allclose(mae.gradient(y_true, y_pred), [[0.0, -0.25], [0.25, 0.0]])


# ---------------------------------------------------------------- more rows than one chunk

@pytest.mark.parametrize("loss, targets, activations", [
    ("mse", None, ("tanh", "identity")),
    ("categorical_crossentropy", "labels", ("relu", "softmax")),
    ("cce", None, ("sigmoid", "sigmoid")),
    ("bce", None, ("leaky_relu", "sigmoid")),
    ("mae", None, ("relu", "tanh")),
])
def test_gradients_and_predict_over_many_rows(loss, targets, activations):
    """Enough rows that an implementation working in chunks of rows needs several."""
    sizes = [3, 4, 2]
    rng = rng_for("many rows", loss, targets, activations)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 5000, rng, targets)
    model = make_model(sizes, activations, "float64", W, b)
    value, grad_W, grad_b = model.gradients(X, Y, loss)
    ref_value, ref_W, ref_b = ref.gradients(W, b, activations, X, Y, loss)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, 1e-9, 1e-12 * largest(ref_W + ref_b),
                     "gradient over many rows")
    np.testing.assert_allclose(model.predict(X), ref.forward(W, b, activations, X)[-1],
                               rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- sample weights

WEIGHTED_CASES = [
    ("mse", None, ("tanh", "identity")),
    ("categorical_crossentropy", "labels", ("relu", "softmax")),
    ("cce", None, ("sigmoid", "tanh", "softmax")),
    ("bce", None, ("leaky_relu", "sigmoid")),
    ("mae", None, ("tanh", "identity")),
]
WEIGHTED_IDS = ["mse", "cce-labels", "cce-onehot", "bce", "mae"]


def distinct_weights(rng, n):
    """Distinct weights >= 0 with a zero among them (a row that counts for nothing)."""
    weights = rng.uniform(0.1, 3.0, size=n)
    weights[n // 2] = 0.0
    return weights


# softmax with up to 32 classes goes 16 rows at a time through the output kernel's
# transposed block: whole blocks, a block and a rest, and 33 classes (row by row)
@pytest.mark.parametrize("n_rows, n_classes", [(16, 3), (37, 10), (35, 32), (20, 33)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_cce_blocks_of_rows_match_the_reference(n_rows, n_classes, dtype):
    """Weighted softmax + cross-entropy on batches that fill the output kernel's 16-row
    blocks and leave a rest: loss and gradients equal the float64 reference's, and each
    row's probabilities in a batch are those it gets alone."""
    sizes, activations = [4, 6, n_classes], ("tanh", "softmax")
    rng = rng_for("softmax blocks", n_rows, n_classes, dtype)
    W, b, X, Y = ref.make_problem(sizes, activations, "cce", n_rows, rng, None)
    weights = distinct_weights(rng, n_rows)
    model = make_model(sizes, activations, dtype, W, b)
    value, grad_W, grad_b = model.gradients(X.astype(dtype), Y.astype(dtype), "cce",
                                            sample_weight=weights)
    ref_value, ref_W, ref_b = ref.gradients([w.astype(dtype).astype(np.float64) for w in W],
                                            [v.astype(dtype).astype(np.float64) for v in b],
                                            activations, X.astype(dtype).astype(np.float64),
                                            Y, "cce", sample_weight=weights)
    tolerance = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(value, ref_value, rtol=tolerance, atol=tolerance)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, tolerance,
                     tolerance * largest(ref_W + ref_b), "softmax blocks vs reference")
    # the output kernel itself: each row's probabilities in a batch and alone
    logits = (3 * rng.standard_normal((n_rows, n_classes))).astype(dtype)
    together = logits.copy()
    _core.output_loss(together, Y.astype(dtype), _core.ACTIVATION_CODES["softmax"],
                      _core.LOSS_CODES["categorical_crossentropy"], 0.0, True)
    for i in range(n_rows):
        alone = logits[i:i + 1].copy()
        _core.output_loss(alone, Y[i:i + 1].astype(dtype), _core.ACTIVATION_CODES["softmax"],
                          _core.LOSS_CODES["categorical_crossentropy"], 0.0, True)
        np.testing.assert_allclose(together[i], alone[0], rtol=4 * np.finfo(dtype).eps,
                                   atol=0, err_msg=f"row {i}")


@pytest.mark.parametrize("loss, targets, activations", WEIGHTED_CASES, ids=WEIGHTED_IDS)
def test_weighted_gradients_float64(loss, targets, activations):
    """The weighted mean loss sum w_i l_i / sum w_i: its gradient equals the reference's and
    the central differences of fastbp's own weighted loss."""
    sizes = SIZES[len(activations)]
    rng = rng_for("weighted", loss, targets, activations)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 9, rng, targets)
    weights = distinct_weights(rng, 9)
    model = make_model(sizes, activations, "float64", W, b)
    value, grad_W, grad_b = model.gradients(X, Y, loss, sample_weight=weights)
    ref_value, ref_W, ref_b = ref.gradients(W, b, activations, X, Y, loss, sample_weight=weights)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10, atol=1e-14)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, 1e-10, 1e-12 * largest(ref_W + ref_b),
                     "weighted gradient vs reference")
    unweighted = model.gradients(X, Y, loss)
    assert not np.isclose(unweighted[0], value)      # the weights changed the loss
    num_W, num_b = ref.numerical_gradients(
        model.weights, model.biases, activations, X, Y, loss,
        loss_fn=lambda: float(model.gradients(X, Y, loss, sample_weight=weights)[0]))
    assert largest(num_W + num_b) > 1e-4
    assert_all_close(grad_W + grad_b, num_W + num_b, 1e-6, fd_atol(value),
                     "weighted gradient vs finite differences")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("loss, targets, activations", WEIGHTED_CASES, ids=WEIGHTED_IDS)
def test_integer_weights_equal_repeating_rows(loss, targets, activations, dtype, rtol):
    sizes = SIZES[len(activations)]
    rng = rng_for("repeat", loss, targets, activations)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 8, rng, targets)
    X, Y = X.astype(dtype), cast_targets(Y, dtype)
    counts = np.array([1, 3, 0, 2, 1, 4, 1, 2])
    model = make_model(sizes, activations, dtype, W, b)
    value, grad_W, grad_b = model.gradients(X, Y, loss, sample_weight=counts)
    rows = np.repeat(np.arange(8), counts)
    rep_value, rep_W, rep_b = model.gradients(X[rows], Y[rows], loss)
    np.testing.assert_allclose(value, rep_value, rtol=rtol)
    assert_all_close(grad_W + grad_b, rep_W + rep_b, rtol, rtol * largest(rep_W + rep_b),
                     "integer weights vs repeated rows")
    # weights of any common scale give the same result
    scaled = model.gradients(X, Y, loss, sample_weight=counts * 2.0 ** -30)
    assert scaled[0] == value
    assert_all_close(scaled[1] + scaled[2], grad_W + grad_b, 0, 0, "scaled weights")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weighted_gradients_sparse_and_dense_and_dtypes(dtype):
    """A scipy.sparse X gives the dense X's weighted gradient; float32 agrees with float64."""
    import scipy.sparse
    sizes, activations, loss = [12, 6, 3], ("relu", "softmax"), "categorical_crossentropy"
    rng = rng_for("weighted sparse", dtype)
    W, b = ref.init_parameters(sizes, rng)
    X = rng.normal(size=(40, 12)) * (rng.random((40, 12)) < 0.3)
    X = X.astype(dtype)
    y = rng.integers(0, 3, size=40)
    weights = distinct_weights(rng, 40)
    model = make_model(sizes, activations, dtype, W, b)
    dense = model.gradients(X, y, loss, sample_weight=weights)
    sparse = model.gradients(scipy.sparse.csr_matrix(X), y, loss, sample_weight=weights)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(sparse[0], dense[0], rtol=rtol)
    assert_all_close(sparse[1] + sparse[2], dense[1] + dense[2], rtol,
                     rtol * largest(dense[1] + dense[2]), "sparse vs dense, weighted")
    ref_value, ref_W, ref_b = ref.gradients(
        [np.asarray(w, np.float64) for w in model.weights],
        [np.asarray(v, np.float64) for v in model.biases], activations,
        X.astype(np.float64), np.eye(3)[y], loss, sample_weight=weights)
    np.testing.assert_allclose(dense[0], ref_value, rtol=10 * rtol)
    assert_all_close(dense[1] + dense[2], ref_W + ref_b, 10 * rtol,
                     10 * rtol * largest(ref_W + ref_b), "weighted gradient vs reference")


def test_weighted_gradients_over_many_rows():
    """Rows in several chunks: each chunk adds its weighted share of one total weight."""
    sizes, activations, loss = [3, 4, 2], ("tanh", "identity"), "mse"
    rng = rng_for("weighted many rows")
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 5000, rng)
    weights = distinct_weights(rng, 5000)
    weights[:1000] = 0.0            # the first chunk counts for nothing
    model = make_model(sizes, activations, "float64", W, b)
    value, grad_W, grad_b = model.gradients(X, Y, loss, sample_weight=weights)
    ref_value, ref_W, ref_b = ref.gradients(W, b, activations, X, Y, loss, sample_weight=weights)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10)
    assert_all_close(grad_W + grad_b, ref_W + ref_b, 1e-9, 1e-12 * largest(ref_W + ref_b),
                     "weighted gradient over many rows")


def test_weighted_gradient_is_the_fits_step():
    """One full batch of plain SGD with these sample weights moves the parameters by
    -learning_rate times gradients(sample_weight=...): the same weighted mean as a fit."""
    sizes, activations, loss = [5, 4, 3], ("tanh", "softmax"), "categorical_crossentropy"
    rng = rng_for("weighted step")
    W, b, X, y = ref.make_problem(sizes, activations, loss, 16, rng, "labels")
    weights = distinct_weights(rng, 16)
    model = make_model(sizes, activations, "float64", W, b)
    _, grad_W, grad_b = model.gradients(X, y, loss, sample_weight=weights)
    fastbp.Trainer(loss, optimizer=fastbp.optimizers.SGD(0.5), batch_size=16,
                   shuffle=False, seed=0).fit(model, X, y, sample_weight=weights)
    stepped = [p - 0.5 * g for p, g in zip(W + b, grad_W + grad_b)]
    assert_all_close(model.weights + model.biases, stepped, 1e-12, 1e-14, "fit's step")


# a float32 model also refuses weights whose ratios float32 cannot hold
BAD_GRADIENT_WEIGHTS = dict(BAD_SAMPLE_WEIGHTS, **{
    "beyond float32's range": lambda n: np.r_[1e-40, np.ones(n - 1)]})


@pytest.mark.parametrize("bad", list(BAD_GRADIENT_WEIGHTS))
def test_bad_gradient_weights_refused_model_unchanged(bad):
    import scipy.sparse
    sizes, activations, loss = [4, 5, 3], ("relu", "softmax"), "cce"
    rng = rng_for("bad weights", bad)
    W, b, X, Y = ref.make_problem(sizes, activations, loss, 10, rng)
    model = make_model(sizes, activations, "float32", W, b)
    before = [p.copy() for p in model.weights + model.biases]
    for inputs in (X, scipy.sparse.csr_matrix(X)):
        with pytest.raises((ValueError, TypeError), match="sample_weight|row weights"):
            model.gradients(inputs, Y, loss, sample_weight=BAD_GRADIENT_WEIGHTS[bad](10))
    for live, original in zip(model.weights + model.biases, before):
        np.testing.assert_array_equal(live, original)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_probability_rows_that_sum_to_nearly_1_get_the_exact_gradient_of_their_loss(output):
    """Cross-entropy rows are taken within 1e-3 of summing to 1 (rounded probabilities):
    the softmax output's fused gradient p - y was then not the gradient of the reported
    -sum y log p (1.7e-3 off). Each such row is scaled to sum to 1: the value and the
    gradient are those of the scaled rows, to finite differences."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 3))
    Y = rng.dirichlet(np.ones(3), 4)
    Y[:, 0] += np.array([9e-4, -9e-4, 0.0, 5e-4])
    model = fastbp.MLP([3, 3], [output], dtype="float64", seed=0)
    value, _, grad_b = model.gradients(X, Y, "cce")
    scaled = Y / Y.sum(axis=1, keepdims=True)
    assert value == pytest.approx(model.evaluate(X, scaled, "cce"), rel=1e-14)
    b = model.biases[0]
    numeric = np.empty_like(b)
    for j in range(b.size):
        saved = b[j]
        b[j] = saved + 1e-6
        up = model.evaluate(X, Y, "cce")
        b[j] = saved - 1e-6
        down = model.evaluate(X, Y, "cce")
        b[j] = saved
        numeric[j] = (up - down) / 2e-6
    np.testing.assert_allclose(grad_b[0], numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probability_rows_1e_3_off_as_written_are_taken_and_more_refused(dtype):
    """0.334, 0.334, 0.333 sums to 1.001 as written, 1.0000000000000112e-3 off once each
    value and the sum are rounded to binary, and it was refused where 0.333 three times
    was taken; a row off by more than 1e-3 as written still is."""
    model = fastbp.MLP([2, 3], ["softmax"], dtype=dtype, seed=0)
    X = np.ones((4, 2), dtype)
    taken = np.array([[0.334, 0.334, 0.333], [0.333, 0.333, 0.333], [0.1, 0.2, 0.701],
                      [0.3335, 0.3335, 0.334]], dtype)
    value = model.evaluate(X, taken, "cce")
    scaled = taken.astype(np.float64) / taken.sum(axis=1, dtype=np.float64, keepdims=True)
    assert value == pytest.approx(model.evaluate(X, scaled.astype(dtype), "cce"),
                                  rel=1e-6 if dtype == "float32" else 1e-14)
    for refused in ([0.3345, 0.334, 0.333], [0.332, 0.333, 0.333], [0.5, 0.5, 0.0011]):
        with pytest.raises(ValueError, match="rows that sum to 1"):
            model.evaluate(X[:1], np.array([refused], dtype), "cce")


def test_probability_rows_within_rounding_of_1_are_not_copied_and_own_checks_may_return_none():
    """Rows within k epsilons of summing to 1 (float32 probabilities, a softmax's) are
    used as they are, no copy of Y; only rows off by more are scaled, in a copy. A loss of
    the caller's whose check_targets returns None (the contract before) keeps its
    targets."""
    from fastbp._validation import as_targets
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        Y = rng.dirichlet(np.ones(10), 1000).astype(dtype)
        targets, _ = as_targets(Y, fastbp.losses.get("cce"), 10, 1000, np.dtype(dtype))
        assert targets is Y
        Y[3, 0] += 5e-4
        targets, _ = as_targets(Y, fastbp.losses.get("cce"), 10, 1000, np.dtype(dtype))
        assert targets is not Y and targets.dtype == dtype
        assert targets.sum(axis=1, dtype=np.float64)[3] == pytest.approx(1, abs=1e-6)
        np.testing.assert_array_equal(np.delete(targets, 3, 0), np.delete(Y, 3, 0))

    class Checked(fastbp.losses.MeanSquaredError):
        def check_targets(self, targets):
            super().check_targets(targets)          # returns None here, as it once did

    Y = rng.normal(size=(20, 2))
    targets, _ = as_targets(Y, Checked(), 2, 20, np.dtype(np.float64))
    assert targets is Y
    model = fastbp.MLP([3, 2], ["identity"], dtype="float64", seed=0)
    X = rng.normal(size=(20, 3))
    assert model.evaluate(X, Y, Checked()) == model.evaluate(X, Y, "mse")
