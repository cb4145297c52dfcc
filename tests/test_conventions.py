"""The derivatives at the kinks, as docs/contract.md states them: the places random data never
reaches (tests/test_jax_oracle.py avoids them), set up exactly here.

relu'(0) = 0, leaky_relu'(0) = 0.01, elu'(0) = 1; MAE's derivative is 0 where p = y; a
cross-entropy's clipped derivative is 0 at p = 1e-7 and p = 1 - 1e-7 themselves.
"""
import numpy as np
import pytest

import fastbp


def model_with(layer_sizes, activations, weights, biases):
    model = fastbp.MLP(layer_sizes, activations, dtype="float64", seed=0)
    model.weights = [np.array(W, dtype=np.float64) for W in weights]
    model.biases = [np.array(b, dtype=np.float64) for b in biases]
    return model


@pytest.mark.parametrize("activation,slope_at_zero", [("relu", 0.0), ("leaky_relu", 0.01),
                                                      ("elu", 1.0)])
def test_hidden_derivative_at_zero(activation, slope_at_zero):
    """Both hidden pre-activations are exactly 0 (x = 1, W = [1, 2], b = [-1, -2]), so the
    first layer's bias gradient is delta_out * W2 * f'(0)."""
    W2, b2, y = np.array([[0.75], [-1.5]]), np.array([0.25]), 2.0
    model = model_with([1, 2, 1], [activation, "identity"], [[[1.0, 2.0]], W2],
                       [[-1.0, -2.0], b2])
    _, _, grad_b = model.gradients(np.array([[1.0]]), np.array([[y]]), "mse")
    delta_out = 2.0 * (b2[0] - y)          # the output is b2: every hidden output is 0
    np.testing.assert_array_equal(grad_b[0], delta_out * W2[:, 0] * slope_at_zero)


def test_mae_derivative_is_zero_where_the_prediction_equals_the_target():
    model = model_with([1, 1], ["identity"], [[[1.0]]], [[0.0]])
    X = np.array([[0.5], [1.0]])
    Y = np.array([[0.5], [0.0]])           # row 0 exact, row 1 one above
    _, grad_W, grad_b = model.gradients(X, Y, "mae")
    assert grad_W[0][0, 0] == (0 * 0.5 + 1 * 1.0) / 2
    assert grad_b[0][0] == (0 + 1) / 2


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "binary_crossentropy"])
@pytest.mark.parametrize("edge", [1e-7, 1 - 1e-7])
def test_clipped_derivative_is_zero_at_the_clip_edges(loss, edge):
    """An identity output of exactly 1e-7 or 1 - 1e-7: the clip is active there."""
    model = model_with([2, 2], ["identity"], [np.zeros((2, 2))], [[edge, edge]])
    X = np.array([[0.3, -0.7]])
    _, grad_W, grad_b = model.gradients(X, np.array([[1.0, 0.0]]), loss)
    assert not grad_W[0].any() and not grad_b[0].any()
