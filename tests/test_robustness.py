"""Numeric robustness at the edges: logits of +/-1e4, saturated activations, all-zero inputs,
a single sample, a single feature, one output class, a batch larger than the data, float32
values near overflow. Each gives finite, correct numbers (checked against a float64
computation written out here, or against the float64 model) or a clear error.
docs/robustness.md states the behaviour of each case.
"""
import contextlib
import math
import warnings

import numpy as np
import pytest
from scipy.special import expit, logsumexp, ndtr

import fastbp
from fastbp.model import ACTIVATIONS

DTYPES = ["float32", "float64"]
RTOL = {"float32": 2e-6, "float64": 1e-12}
HIDDEN = [a for a in ACTIVATIONS if a != "softmax"]

# f(v) in float64, for the activations whose formula is fixed by the documentation
REFERENCE = {
    "identity": lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
    "sigmoid": expit,
    "tanh": np.tanh,
    "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
    "softplus": lambda v: np.logaddexp(0, v),
    "gelu": lambda v: v * ndtr(v),
    "swish": lambda v: v * expit(v),
}


def build(sizes, activations, weights, biases=None, dtype="float64"):
    model = fastbp.MLP(sizes, activations, dtype=dtype, init="zeros")
    model.weights = [np.asarray(w, dtype=np.float64) for w in weights]
    if biases is not None:
        model.biases = [np.asarray(b, dtype=np.float64) for b in biases]
    return model


def all_finite(*arrays):
    return all(np.isfinite(np.asarray(a)).all() for a in arrays)


@contextlib.contextmanager
def no_warnings():
    """A context in which any RuntimeWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


# ---------------------------------------------------------------- logits of +/-1e4

LOGITS = np.array([[1e4, -1e4, 0.0, 1e4 - 1],
                   [-1e4, -1e4, -1e4, -1e4],
                   [0.0, 1e4, -1e4, 5.0]])


def logit_model(output, dtype):
    """One weight layer whose logits, for X = the identity, are the rows of LOGITS."""
    return build([3, 4], [output], [LOGITS], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_logits_1e4_is_exact_and_finite(dtype):
    model = logit_model("softmax", dtype)
    p = model.predict(np.eye(3))
    expected = np.exp(LOGITS - logsumexp(LOGITS, axis=1, keepdims=True))
    assert all_finite(p)
    np.testing.assert_allclose(p, expected, rtol=RTOL[dtype], atol=1e-30)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("labels", [[0, 1, 2], [1, 0, 3]])   # right classes, then wrong ones
def test_softmax_cce_at_logits_1e4_is_exact(dtype, labels):
    model = logit_model("softmax", dtype)
    labels = np.array(labels)
    with no_warnings():
        value, grad_weights, grad_biases = model.gradients(np.eye(3), labels, "cce")
    expected_value = np.mean(logsumexp(LOGITS, axis=1) - LOGITS[np.arange(3), labels])
    p = np.exp(LOGITS - logsumexp(LOGITS, axis=1, keepdims=True))
    delta = (p - np.eye(4)[labels]) / 3
    assert math.isfinite(value) and all_finite(*grad_weights, *grad_biases)
    assert value == pytest.approx(expected_value, rel=RTOL[dtype], abs=1e-6)
    np.testing.assert_allclose(grad_weights[0], delta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad_biases[0], delta.sum(axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_bce_at_logits_1e4_is_exact(dtype):
    model = logit_model("sigmoid", dtype)
    Y = np.array([[1, 0, 0, 1], [1, 0, 1, 0], [0, 1, 1, 0]], dtype=float)
    with no_warnings():
        value, grad_weights, _ = model.gradients(np.eye(3), Y, "bce")
    # -(y log p + (1-y) log(1-p)) = softplus(z) - z y, exactly, from the logits
    expected_value = np.mean(np.logaddexp(0, LOGITS) - LOGITS * Y)
    assert math.isfinite(value) and all_finite(*grad_weights)
    assert value == pytest.approx(expected_value, rel=RTOL[dtype])
    np.testing.assert_allclose(grad_weights[0], (expit(LOGITS) - Y) / Y.size, rtol=1e-5,
                               atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output, loss", [("softmax", "mse"), ("softmax", "bce"),
                                          ("sigmoid", "mse"), ("sigmoid", "cce"),
                                          ("identity", "mse"), ("identity", "mae"),
                                          ("tanh", "mse")])
def test_unfused_pairings_at_logits_1e4_are_finite(dtype, output, loss):
    """Outputs of exactly 0 or 1 meet the clipped log: a finite value and gradient."""
    model = logit_model(output, dtype)
    Y = np.eye(4)[[0, 1, 2]]
    with no_warnings():
        value, grad_weights, grad_biases = model.gradients(np.eye(3), Y, loss)
    assert math.isfinite(value) and all_finite(*grad_weights, *grad_biases)
    if output == "identity" and loss == "mse":
        assert value == pytest.approx(np.mean((LOGITS - Y) ** 2), rel=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", HIDDEN)
def test_hidden_activations_at_1e4(dtype, activation):
    """Pre-activations of +/-1e4 in a hidden layer: the float64 formula's value, finite
    gradients, and a fit that stays finite."""
    pre = np.array([[1e4, -1e4], [-1e4, 1e4], [0.5, -0.5]])
    model = build([2, 2, 2], [activation, "identity"], [np.eye(2), np.eye(2)], dtype=dtype)
    out = model.predict(pre)
    assert all_finite(out)
    if activation in REFERENCE:
        np.testing.assert_allclose(out, REFERENCE[activation](pre), rtol=1e-6, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        value, grad_weights, grad_biases = model.gradients(pre, np.zeros((3, 2)), "mae")
    assert math.isfinite(value) and all_finite(*grad_weights, *grad_biases)
    reference = build([2, 2, 2], [activation, "identity"], [np.eye(2), np.eye(2)])
    _, expected_weights, _ = reference.gradients(pre, np.zeros((3, 2)), "mae")
    for got, expected in zip(grad_weights, expected_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype, lowest, rtol", [("float32", -10.0, 5e-5),
                                                  ("float64", -35.0, 1e-12)])
def test_gelu_keeps_its_relative_precision_in_the_negative_tail(dtype, lowest, rtol):
    """gelu(z) = z Phi(z) and its derivative Phi(z) + z phi(z) are tiny, not zero, for z far
    below 0, and relatively as precise there as anywhere (Phi through erfc: 1 + erf(z / sqrt 2)
    cancels to 0 or to one ulp of 1 in float32 below z = -5.5, and loses digits in float64).
    One unit a z, identity weights, so each output is one gelu and each weight gradient one
    derivative; against scipy's ndtr (the normal CDF, precise in its tails)."""
    z = np.linspace(lowest, -1.0, 37).astype(dtype).astype(np.float64)
    k = z.size
    model = build([k, k, k], ["gelu", "identity"], [np.eye(k), np.eye(k)], dtype=dtype)
    out = model.predict(z[None, :])[0].astype(np.float64)
    np.testing.assert_allclose(out, z * ndtr(z), rtol=rtol)
    # mean absolute error against 0: dL/dW1[j, j] = h_j s_j / n and dL/dW0[j, j] =
    # z_j f'(z_j) s_j / n, with s_j = sign(o_j) and n the loss's normaliser; so
    # f'(z_j) = (dL/dW0[j, j] / dL/dW1[j, j]) h_j / z_j, whatever n is.
    _, (grad_first, grad_second), _ = model.gradients(z[None, :], np.zeros((1, k)), "mae")
    derivative = (np.diag(grad_first) / np.diag(grad_second)).astype(np.float64) * out / z
    expected = ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    np.testing.assert_allclose(derivative, expected, rtol=4 * rtol)


# ---------------------------------------------------------------- saturated sigmoids

@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_hidden_sigmoids_give_zero_not_nan_gradients(dtype):
    """sigmoid(+/-60) is exactly 1 or 0 in float32 (and 1 - 1e-26 in float64): a(1-a)
    vanishes, the gradient through the unit is 0 (or tiny), never NaN."""
    X = np.array([[60.0, -60.0], [-60.0, 60.0], [60.0, 60.0]])
    model = build([2, 2, 1], ["sigmoid", "identity"], [np.eye(2), [[1.0], [-1.0]]],
                  dtype=dtype)
    Y = np.array([[0.5], [-0.5], [2.0]])
    with no_warnings():
        value, grad_weights, grad_biases = model.gradients(X, Y, "mse")
    assert math.isfinite(value) and all_finite(*grad_weights, *grad_biases)
    assert np.abs(grad_weights[0]).max() < 1e-20
    reference = build([2, 2, 1], ["sigmoid", "identity"], [np.eye(2), [[1.0], [-1.0]]])
    expected_value, expected_weights, _ = reference.gradients(X, Y, "mse")
    assert value == pytest.approx(expected_value, rel=1e-6)
    np.testing.assert_allclose(grad_weights[1], expected_weights[1], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_saturated_output_sigmoid(dtype, loss):
    X = np.array([[80.0], [-80.0]])
    model = build([1, 1], ["sigmoid"], [[[1.0]]], dtype=dtype)
    Y = np.array([[0.0], [1.0]])   # both maximally wrong
    with no_warnings():
        value, grad_weights, _ = model.gradients(X, Y, loss)
    assert math.isfinite(value) and all_finite(*grad_weights)
    if loss == "bce":   # fused: exact loss 80 per row, gradient (p - y) = +/-1
        assert value == pytest.approx(80.0, rel=1e-6)
        assert grad_weights[0][0, 0] == pytest.approx((1 * 80 + (-1) * (-80)) / 2, rel=1e-6)
    else:               # chain rule: (p - y)^2 = 1, and sigmoid' = 0 there
        assert value == pytest.approx(1.0, rel=1e-6)
        assert abs(grad_weights[0][0, 0]) < 1e-20


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_a_saturated_network_stays_finite(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)) * 100
    y = (X[:, 0] > 0).astype(float).reshape(-1, 1)
    model = fastbp.MLP([4, 8, 1], ["sigmoid", "sigmoid"], dtype=dtype, seed=0)
    with no_warnings():
        history = fastbp.Trainer("bce", learning_rate=0.5, epochs=5, batch_size=8,
                                 seed=0).fit(model, X, y)
    assert not history.diverged and all_finite(history.loss, model._params)


# ---------------------------------------------------------------- all-zero inputs

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("init", ["auto", "zeros"])
def test_all_zero_inputs(dtype, init):
    model = fastbp.MLP([5, 6, 3], ["tanh", "softmax"], dtype=dtype, init=init, seed=0)
    model.biases = [np.linspace(-1, 1, 6), np.array([0.5, 0.0, -0.5])]
    X = np.zeros((7, 5))
    hidden = np.tanh(model.biases[0].astype(np.float64))
    logits = hidden @ model.weights[1].astype(np.float64) + model.biases[1]
    expected = np.exp(logits - logsumexp(logits))
    out = model.predict(X)
    np.testing.assert_allclose(out, np.tile(expected, (7, 1)), rtol=1e-6)
    with no_warnings():
        value, grad_weights, grad_biases = model.gradients(X, np.arange(7) % 3, "cce")
    assert math.isfinite(value)
    assert not grad_weights[0].any(), "dL/dW1 = X^T delta is exactly 0 for X = 0"
    assert all_finite(*grad_weights, *grad_biases) and grad_biases[1].any()
    with no_warnings():
        fastbp.Trainer("cce", learning_rate=0.1, epochs=3, batch_size=4, seed=0).fit(
            model, X, np.arange(7) % 3)
    assert all_finite(model._params)


@pytest.mark.parametrize("loss", ["mse", "mae", "bce"])
def test_all_zero_inputs_and_targets(loss):
    model = fastbp.MLP([3, 4, 2], ["relu", "sigmoid"], init="zeros")
    with no_warnings():
        value, grad_weights, grad_biases = model.gradients(np.zeros((5, 3)), np.zeros((5, 2)),
                                                           loss)
    assert math.isfinite(value) and all_finite(*grad_weights, *grad_biases)
    if loss == "bce":
        assert value == pytest.approx(math.log(2), rel=1e-6)   # p = 0.5 everywhere


# ---------------------------------------------------------------- a single sample

@pytest.mark.parametrize("dtype", DTYPES)
def test_a_single_sample(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4))
    model = fastbp.MLP([4, 5, 3], ["relu", "softmax"], dtype=dtype, seed=1)
    reference = fastbp.MLP.from_bytes(model.to_bytes())
    reference64 = fastbp.MLP([4, 5, 3], ["relu", "softmax"], dtype="float64", init="zeros")
    reference64.weights, reference64.biases = model.weights, model.biases
    value, grad_weights, _ = model.gradients(x, [2], "cce")
    expected_value, expected_weights, _ = reference64.gradients(x, [2], "cce")
    assert value == pytest.approx(expected_value, rel=1e-5)
    for got, expected in zip(grad_weights, expected_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # a batch of 32 on one row is a batch of one row
    history = fastbp.Trainer("cce", learning_rate=0.1, epochs=3, batch_size=32, seed=0).fit(
        model, x, [2])
    fastbp.Trainer("cce", learning_rate=0.1, epochs=3, batch_size=1, seed=0).fit(
        reference, x, [2])
    assert model.to_bytes() == reference.to_bytes()
    assert len(history.loss) == 3 and all_finite(history.loss)
    assert history.loss[-1] < history.loss[0]


def test_a_single_sample_as_a_1d_array_is_refused_with_the_shape():
    model = fastbp.MLP([4, 3], "identity")
    with pytest.raises(ValueError, match=r"2-D.*\(4,\)"):
        model.predict(np.ones(4))
    assert model.predict(np.ones(4).reshape(1, -1)).shape == (1, 3)


# ---------------------------------------------------------------- a single feature

@pytest.mark.parametrize("dtype", DTYPES)
def test_a_single_feature(dtype):
    X = np.linspace(-2, 2, 50).reshape(-1, 1)
    y = X[:, 0] ** 2
    model = fastbp.MLP([1, 16, 1], ["tanh", "identity"], dtype=dtype, seed=0)
    history = fastbp.Trainer("mse", learning_rate=0.05, epochs=30, batch_size=10,
                             seed=0).fit(model, X, y)
    assert all_finite(history.loss, model._params)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert model.predict(X).shape == (50, 1)
    with pytest.raises(ValueError, match="2-D"):
        model.predict(X[:, 0])        # a 1-D column is refused: the shape is ambiguous


# ---------------------------------------------------------------- one output class

@pytest.mark.parametrize("dtype", DTYPES)
def test_a_single_softmax_output_is_always_one_and_learns_nothing(dtype):
    """softmax over one unit is the constant 1: CCE is 0, its gradient 0 (documented)."""
    X = np.random.default_rng(2).normal(size=(20, 3))
    model = fastbp.MLP([3, 4, 1], ["relu", "softmax"], dtype=dtype, seed=0)
    before = model.to_bytes()
    np.testing.assert_array_equal(model.predict(X), 1)
    value, grad_weights, grad_biases = model.gradients(X, np.zeros(20, dtype=int), "cce")
    assert value == 0 and not any(g.any() for g in grad_weights + grad_biases)
    history = fastbp.Trainer("cce", epochs=2).fit(model, X, np.zeros(20, dtype=int))
    assert history.loss == [0.0, 0.0] and model.to_bytes() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_data_of_one_class_only(dtype):
    X = np.random.default_rng(3).normal(size=(30, 3))
    model = fastbp.MLP([3, 4, 3], ["relu", "softmax"], dtype=dtype, seed=0)
    history = fastbp.Trainer("cce", learning_rate=0.5, epochs=20, batch_size=8, seed=0).fit(
        model, X, np.full(30, 2))
    assert all_finite(history.loss, model._params) and history.loss[-1] < history.loss[0]
    assert (model.predict(X).argmax(axis=1) == 2).all()


def test_a_single_sigmoid_output_for_two_classes():
    X = np.random.default_rng(4).normal(size=(40, 2))
    y = (X[:, 0] > 0).astype(float)
    model = fastbp.MLP([2, 1], ["sigmoid"], seed=0)
    history = fastbp.Trainer("bce", learning_rate=1.0, epochs=20, batch_size=8, seed=0).fit(
        model, X, y)
    assert history.loss[-1] < history.loss[0]


# ---------------------------------------------------------------- batch larger than the data

@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [11, 12, 1000, 10**9])
def test_a_batch_larger_than_the_data_is_one_batch_of_all_rows(shuffle, batch_size):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(11, 3)), rng.integers(0, 2, size=11)
    a = fastbp.MLP([3, 4, 2], ["tanh", "softmax"], seed=0)
    b = fastbp.MLP.from_bytes(a.to_bytes())
    fastbp.Trainer("cce", epochs=3, batch_size=batch_size, shuffle=shuffle, seed=0).fit(a, X, y)
    fastbp.Trainer("cce", epochs=3, batch_size=11, shuffle=shuffle, seed=0).fit(b, X, y)
    assert a.to_bytes() == b.to_bytes()


def test_a_last_batch_of_one_row():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    model = fastbp.MLP([3, 4, 1], "relu", seed=0)
    history = fastbp.Trainer("mse", epochs=2, batch_size=3, shuffle=False).fit(model, X, y)
    assert all_finite(history.loss, model._params)


# ---------------------------------------------------------------- float32 near overflow

def test_large_float32_values_match_the_float64_computation():
    """Inputs near 1e15 with weights near 1e-15: every product is in range; the float32
    results agree with float64 to float32 precision."""
    rng = np.random.default_rng(7)
    X = rng.uniform(0.5, 1.5, size=(16, 3)) * 1e15
    weights = [rng.uniform(-1, 1, size=(3, 4)) * 1e-15, rng.uniform(-1, 1, size=(4, 2))]
    Y = rng.normal(size=(16, 2))
    results = {}
    for dtype in DTYPES:
        model = build([3, 4, 2], ["tanh", "identity"], weights, dtype=dtype)
        results[dtype] = model.gradients(X, Y, "mse")
    value32, weights32, _ = results["float32"]
    value64, weights64, _ = results["float64"]
    assert value32 == pytest.approx(value64, rel=1e-5)
    for a, b in zip(weights32, weights64):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())


def test_a_float32_loss_whose_sum_overflows_float32_is_still_exact():
    """Each squared error is 1e36 (in range); their sum over 1000 rows is not, in float32,
    but the loss is summed in double: the mean is finite and right."""
    model = build([1, 1], ["identity"], [[[1.0]]], dtype="float32")
    X = np.full((1000, 1), 1e18)
    value, grad_weights, _ = model.gradients(X, np.zeros((1000, 1)), "mse")
    assert value == pytest.approx(1e36, rel=1e-5)
    assert all_finite(*grad_weights)   # 2 * 1e18 * 1e18 / 1000 = 2e33


def test_a_float32_gradient_that_overflows_is_not_silent():
    # h = 1e37 * 10 = 1e38 (in range), out = 1e-37 * h = 10, loss = 100: all finite;
    # dL/dW2 = 2 * out * h = 2e39: beyond float32
    model = build([1, 1, 1], ["identity", "identity"], [[[1e37]], [[1e-37]]], dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value, grad_weights, grad_biases = model.gradients([[10.0]], [[0.0]], "mse")
        except (ValueError, FloatingPointError):
            return
    if not all_finite(*grad_weights, *grad_biases):
        assert any(issubclass(w.category, RuntimeWarning) for w in caught)


def test_a_fit_whose_float32_update_overflows_is_rolled_back_with_a_warning():
    model = build([1, 1, 1], ["identity", "identity"], [[[1e37]], [[1e-37]]], dtype="float32")
    before = model.to_bytes()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = fastbp.Trainer("mse", learning_rate=1e-3, epochs=3, batch_size=1).fit(
            model, [[10.0]], [[0.0]])
    assert history.diverged and model.to_bytes() == before


@pytest.mark.parametrize("split", [None, "rows", "blas"])
@pytest.mark.parametrize("dtype, x_scale, error_scale, n_inputs, clip_norm", [
    ("float64", 1e150, 1e140, 3, 1.0),    # |g| ~ 2e290: its sum of squares overflows double
    ("float64", 1e157, 5e150, 3, 1.0),    # largest |g| ~ 6e307, past 2^1022
    ("float64", 1e157, 2e150, 40, 1.0),   # |g| ~ 1.4e308: the factor below DBL_MIN
    ("float32", 1e18, 1e18, 3, 0.01)])    # |g| ~ 3e36: the factor below FLT_MIN
def test_clipping_steps_by_clip_norm_along_a_gradient_however_large(
        split, dtype, x_scale, error_scale, n_inputs, clip_norm, monkeypatch):
    """A finite gradient clipped to clip_norm steps lr * clip_norm along it, on one thread
    and on two, in the epochs' flush-to-zero mode. Before: a float64 sum of squares that
    overflowed read as an infinite norm (factor 0: 40 steps moved nothing, no warning); a
    factor below the dtype's smallest normal number (a norm past clip_norm * 4.5e307 in
    float64, 1e36 clipped to 0.01 in float32) was flushed to 0; and the first fix's scale
    2^-1023 for a largest |g| past 2^1022 was flushed too (the step unclipped)."""
    rng = np.random.default_rng(0)
    # X and W of few significant bits, so that the predictions are exact in any order of
    # sums (fastbp's own kernels or BLAS, which differ from one CPU to another), and with
    # them the residuals (Sterbenz): a predict one ulp off moves a residual of 1e-10 of it
    # by 1e-6, and the reference direction with it (an AVX2 machine's kernels did)
    bits = 10 if dtype == "float32" else 20
    exponent = round(math.log2(x_scale))
    X = np.ldexp(rng.integers(2**(bits - 1), 2**bits, size=(64, n_inputs)),
                 exponent - bits).astype(dtype)
    error_scale *= x_scale / 2.0**exponent      # (the gradient as large as before)
    model = fastbp.MLP([n_inputs, 1], ["identity"], dtype=dtype, seed=0)
    model.weights = [rng.choice([-7, -3, 1, 5, 7], size=(n_inputs, 1)) / 8]
    model.biases = [np.zeros(1)]
    y = (model.predict(X) - error_scale * rng.uniform(0.5, 1.0, size=(64, 1))).astype(dtype)
    _, (weight_gradient,), (bias_gradient,) = model.gradients(X, y, "mse")
    gradient = np.concatenate([weight_gradient.ravel(), bias_gradient]).astype(np.float64)
    largest = np.abs(gradient).max()
    direction = gradient / largest / np.linalg.norm(gradient / largest)
    before = model.parameter_vector().astype(np.float64)
    if split is not None:
        monkeypatch.setenv("FASTBP_SPLIT", split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = fastbp.Trainer("mse", learning_rate=0.1, epochs=1, batch_size=64,
                                 clip_norm=clip_norm, shuffle=False,
                                 n_threads=1 if split is None else 2).fit(model, X, y)
    assert history.threads["split"] == split
    # (float32: the parameters' own rounding, about 6e-8 here, against steps of 6e-4)
    tolerance = dict(rtol=1e-3, atol=1e-6) if dtype == "float32" else dict(rtol=1e-9,
                                                                            atol=1e-12)
    np.testing.assert_allclose(model.parameter_vector() - before,
                               -0.1 * clip_norm * direction, **tolerance)


def test_a_float32_squared_error_beyond_float32_is_summed_in_double():
    value = fastbp.losses.get("mse").value(np.float32([[1e20]]), np.float32([[-1e20]]))
    assert value == pytest.approx(4e40, rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8, 64, 300])
def test_a_nan_inside_a_relu_layer_is_never_turned_into_zero(dtype, rows):
    """Huge weights times huge inputs overflow the first layer to inf, and a second layer
    of zero weights makes inf * 0 = NaN (with or without fused multiply-adds). relu keeps
    that NaN, as max(z, 0) does in NumPy and torch: predict and evaluate raise the overflow
    error (every path: 1 to 300 rows), a fit diverges and is undone. Before, relu made it 0
    and every output the output bias's softmax: a silent wrong answer."""
    big = 1e30 if dtype == "float32" else 1e300
    X = np.full((rows, 2), 1e10 if dtype == "float32" else 1e300)
    model = fastbp.MLP([2, 5, 4, 3], ["relu", "relu", "softmax"], dtype=dtype, seed=0)
    model.weights = [np.full((2, 5), big), np.zeros((5, 4)), model.weights[2]]
    with pytest.raises(ValueError, match="overflow"):
        model.predict(X)
    with pytest.raises(ValueError, match="overflow"):
        model.evaluate(X, np.zeros(rows, dtype=int), "cce")
    before = model.to_bytes()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = fastbp.Trainer("cce", epochs=2, batch_size=8).fit(
            model, X, np.zeros(rows, dtype=int))
    assert history.diverged and model.to_bytes() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_finite_inputs_diverge_cleanly_in_fit(dtype):
    big = float(np.finfo(dtype).max) / 4
    X = np.full((4, 2), big)
    model = fastbp.MLP([2, 3, 1], ["relu", "identity"], dtype=dtype, seed=0)
    before = model.to_bytes()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = fastbp.Trainer("mse", epochs=2, batch_size=2).fit(model, X, np.zeros(4))
    assert history.diverged and model.to_bytes() == before


def test_subnormal_and_negative_zero_inputs():
    X = np.array([[5e-324, -0.0], [-5e-324, 0.0], [1e-310, -1e-310]])
    for dtype in DTYPES:
        model = fastbp.MLP([2, 3, 2], ["tanh", "softmax"], dtype=dtype, seed=0)
        with no_warnings():
            out = model.predict(X)
            value, grad_weights, _ = model.gradients(X, [0, 1, 0], "cce")
        assert all_finite(out, value, *grad_weights)
        np.testing.assert_allclose(out, model.predict(np.zeros((3, 2))), rtol=1e-6)


def test_a_zero_learning_rate_changes_nothing():
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 2, size=20)
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    before = model.to_bytes()
    fastbp.Trainer("cce", learning_rate=0.0, epochs=2).fit(model, X, y)
    assert model.to_bytes() == before


# ---------------------------------------------------------------- alignment

def _unaligned(array):
    """The same values, C-contiguous, at an odd byte address (flags.aligned is False)."""
    raw = np.zeros(array.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(array.dtype).reshape(array.shape)
    view[...] = array
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


@pytest.fixture
def core_sees_only_aligned_arrays(monkeypatch):
    """Wraps every function of the compiled core: each ndarray it is handed must be aligned
    (a misaligned float load is undefined behaviour in C; UBSan reports it in the sanitize
    run, and a vectorised loop may assume the alignment)."""
    from fastbp import _core
    seen = []

    def checked(function, name):
        def call(*args, **kwargs):
            for value in list(args) + list(kwargs.values()):
                if isinstance(value, np.ndarray):
                    seen.append((name, value.flags.aligned))
            return function(*args, **kwargs)
        return call

    # (these hand their arguments, as given, back to Python: a fit's checks run inside)
    calling_back = {"interruptible_fit", "deferred"}
    for name in dir(_core):
        function = getattr(_core, name)
        if not name.startswith("_") and callable(function) and not isinstance(function, type) \
                and name not in calling_back:
            monkeypatch.setattr(_core, name, checked(function, name))
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_input_reaches_the_core_aligned(dtype, core_sees_only_aligned_arrays):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(20, 3)).astype(dtype)
    Y = rng.normal(size=(20, 2)).astype(dtype)
    model = fastbp.MLP([3, 4, 2], ["tanh", "identity"], dtype=dtype, seed=0)
    expected = model.predict(X)
    np.testing.assert_array_equal(model.predict(_unaligned(X)), expected)
    model.gradients(_unaligned(X), _unaligned(Y), "mse")
    fastbp.Trainer("mse", epochs=1, batch_size=4, shuffle=False).fit(model, _unaligned(X),
                                                                     _unaligned(Y))
    misaligned = sorted({name for name, aligned in core_sees_only_aligned_arrays
                         if not aligned})
    assert core_sees_only_aligned_arrays and not misaligned, misaligned
