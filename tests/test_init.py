"""The initial weights: He normal (std sqrt(2 / n_in)) and Glorot uniform (limit
sqrt(6 / (n_in + n_out))), which one init="auto" picks for each activation, zero biases.

The scales are checked on layers of about 10^6 weights, where the sample statistics are
within a fraction of a percent of the distribution's: every tolerance below is at least
6 standard errors of the statistic, and the layers' fans differ (n_in != n_out), so a scale
taken from the wrong fan is off by far more.
"""
import numpy as np
import pytest

import fastbp
from fastbp import model as model_module

SIZES = [1500, 700, 1200]          # layers of 1.05e6 and 0.84e6 weights
AUTO_HE = ("relu", "leaky_relu")   # the ReLU family starts He; every other activation Glorot


def he_std(n_in):
    return np.sqrt(2.0 / n_in)


def glorot_limit(n_in, n_out):
    return np.sqrt(6.0 / (n_in + n_out))


def assert_he_normal(W):
    W = W.astype(np.float64)
    n_in = W.shape[0]
    std, n = he_std(n_in), W.size
    assert abs(W.mean()) < 6 * std / np.sqrt(n)
    # the sample variance's relative standard error is sqrt(2 / n) (0.15% here)
    assert W.var() == pytest.approx(std ** 2, rel=6 * np.sqrt(2.0 / n))
    # normal, not uniform: 68.27% within one std, 95.45% within two, tails beyond 3
    for k, share in ((1, 0.682689), (2, 0.954500)):
        assert np.mean(np.abs(W) < k * std) == pytest.approx(
            share, abs=6 * np.sqrt(share * (1 - share) / n))
    assert np.abs(W).max() > 4 * std


def assert_glorot_uniform(W):
    n_in, n_out = W.shape
    limit, n = glorot_limit(n_in, n_out), W.size
    # drawn in float64: rounding to float32 may move a value a rounding step past the limit
    assert np.abs(W).max() <= limit * (1 + np.finfo(W.dtype).eps)
    W = W.astype(np.float64)
    assert np.abs(W).max() > limit * (1 - 20 / n)        # the edges are reached
    assert abs(W.mean()) < 6 * limit / np.sqrt(3 * n)
    # uniform: variance limit^2 / 3 (relative standard error sqrt(0.8 / n)), a flat histogram
    assert W.var() == pytest.approx(limit ** 2 / 3, rel=6 * np.sqrt(0.8 / n))
    counts, _ = np.histogram(W, bins=10, range=(-limit, limit))
    np.testing.assert_allclose(counts, n / 10, rtol=6 * np.sqrt(9 / n))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_he_normal_has_std_sqrt_2_over_fan_in(dtype):
    model = fastbp.MLP(SIZES, "tanh", dtype=dtype, init="he", seed=0)
    for W in model.weights:
        assert_he_normal(W)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_glorot_uniform_has_limit_sqrt_6_over_fan_in_plus_fan_out(dtype):
    model = fastbp.MLP(SIZES, "relu", dtype=dtype, init="glorot", seed=0)
    for W in model.weights:
        assert_glorot_uniform(W)


def test_auto_picks_by_each_layers_activation():
    """Layer by layer: He after a relu layer, Glorot after a tanh layer and before softmax."""
    model = fastbp.MLP([1200, 900, 800, 10], ["relu", "tanh", "softmax"], dtype="float64",
                       seed=1)
    assert_he_normal(model.weights[0])
    assert_glorot_uniform(model.weights[1])
    assert np.abs(model.weights[2]).max() <= glorot_limit(800, 10)


@pytest.mark.parametrize("activation", model_module.ACTIVATIONS)
def test_auto_is_he_for_the_relu_family_and_glorot_otherwise(activation):
    """init="auto" draws exactly what the explicit init draws (same seed, same draws)."""
    sizes = [30, 20, 10]
    # softmax only on the output layer, after an identity layer (Glorot as well)
    activations = ["identity", activation] if activation == "softmax" else [activation] * 2
    expected = "he" if activation in AUTO_HE else "glorot"
    auto = fastbp.MLP(sizes, activations, dtype="float64", seed=3)
    explicit = fastbp.MLP(sizes, activations, dtype="float64", init=expected, seed=3)
    other = fastbp.MLP(sizes, activations, dtype="float64",
                       init="glorot" if expected == "he" else "he", seed=3)
    for W_auto, W_explicit, W_other in zip(auto.weights, explicit.weights, other.weights):
        assert np.array_equal(W_auto, W_explicit)
        assert not np.array_equal(W_auto, W_other)


@pytest.mark.parametrize("init", ["auto", "he", "glorot", "zeros"])
def test_biases_start_at_zero_and_zeros_is_all_zero(init):
    model = fastbp.MLP([20, 15, 5], "relu", dtype="float64", init=init, seed=0)
    assert all(not b.any() for b in model.biases)
    assert all(W.any() for W in model.weights) == (init != "zeros")


def test_the_seed_decides_the_draws():
    first, again, other = (fastbp.MLP([40, 30, 5], "relu", seed=s).weights[0] for s in (7, 7, 8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("init", ["he", "glorot"])
def test_the_draws_are_one_draw_in_row_major_order_however_wide_a_layer(init):
    """The weights are drawn 2^20 values at a time (rows wider than that in pieces, so that
    building a model needs little more than its parameters: a 1 x 2^27 layer took 3x its
    size as one row of float64): the values of one draw of the whole matrix."""
    rng = np.random.default_rng(3)
    for shape in [(3, (1 << 20) + 5), (2, 1 << 21), ((1 << 20) + 3, 1), (5, 7)]:
        W = np.empty(shape)
        model_module._initialise(W, np.random.default_rng(3), "relu", init)
        rng = np.random.default_rng(3)
        want = rng.normal(0.0, he_std(shape[0]), size=shape) if init == "he" else \
            rng.uniform(-glorot_limit(*shape), glorot_limit(*shape), size=shape)
        np.testing.assert_array_equal(W, want)


def test_a_wide_layer_is_built_in_little_more_than_its_size():
    """1 x 2^25 float32 weights (128 MiB): the build's allocations beyond the parameters
    stay under 32 MiB (one row drawn at once in float64 was 256 MiB more)."""
    import tracemalloc
    tracemalloc.start()
    try:
        model = fastbp.MLP([1, 1 << 25], ["identity"], seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.weights[0].std() > 0
    assert peak - model.parameter_vector().nbytes < 32 << 20, peak


def test_a_refused_init_leaves_the_model_as_it_was(monkeypatch):
    """__init__ on a live model that is refused (a size past the memory, a bad switch in
    the environment) changed its layer sizes first (its file then did not load), or its
    parameters without its predict plan (predict gave the old model's outputs)."""
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    before, outputs = model.parameter_vector().copy(), model.predict(X)
    with pytest.raises(ValueError, match="GiB"):
        model.__init__([5, 10 ** 6, 10 ** 5], "relu")
    monkeypatch.setenv("FASTBP_KERNELS", "bogus")
    with pytest.raises(ValueError, match="FASTBP_KERNELS"):
        model.__init__([3, 4, 2], ["relu", "softmax"], seed=1)
    monkeypatch.delenv("FASTBP_KERNELS")
    assert model.layer_sizes == (3, 4, 2)
    np.testing.assert_array_equal(model.parameter_vector(), before)
    np.testing.assert_array_equal(model.predict(X), outputs)
    np.testing.assert_array_equal(fastbp.MLP.from_bytes(model.to_bytes()).predict(X), outputs)


def test_dtype_none_is_refused():
    """np.dtype(None) is float64: dtype=None made a float64 model where the default is
    float32."""
    with pytest.raises(TypeError, match="dtype must be one of"):
        fastbp.MLP([2, 2], ["identity"], dtype=None)
