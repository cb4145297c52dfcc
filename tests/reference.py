"""A plain-NumPy reference MLP: the test oracle for fastbp.

Float64 throughout, written for clarity, not speed, and independent of fastbp's code.
Conventions are those of DESIGN.md ("Numerical conventions"):

- layer l: Z = A_prev @ W + b, A = f(Z); weights[l] has shape (n_in, n_out); A0 = X.
- MSE and MAE: mean over all n*k elements. CCE: -(1/n) sum_i sum_k y_ik log p_ik.
  BCE: mean over all n*k elements of -(y log p + (1-y) log(1-p)).
- softmax + CCE and sigmoid + BCE: loss from the logits (stable) and the fused delta
  (p - y) / n (CCE) or (p - y) / (n*k) (BCE). Any other pairing: the general chain rule; CCE
  and BCE then clip p to [EPS, 1 - EPS] first, with derivative 0 where the clip is active.
- CCE targets may be integer labels (1-D); they are one-hot encoded.
"""

import numpy as np

EPS = 1e-7
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softmax")
LEAKY_SLOPE = 0.01
LOSS_ALIASES = {
    "mse": "mse",
    "mae": "mae",
    "categorical_crossentropy": "categorical_crossentropy",
    "cce": "categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "bce": "binary_crossentropy",
}


def loss_name(loss):
    """The canonical name of a loss (resolves the aliases "cce" and "bce")."""
    try:
        return LOSS_ALIASES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}") from None


# ---------------------------------------------------------------- activations

def activate(name, z):
    """A = f(Z), element-wise (softmax: row-wise, shifted by the row max)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "identity":
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if name == "sigmoid":
        # stable on both sides: exp of a non-positive number only
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unknown activation {name!r}")


def activation_grad_from_output(name, a):
    """f'(Z) expressed through A = f(Z), element-wise (not defined for softmax)."""
    a = np.asarray(a, dtype=np.float64)
    if name == "identity":
        return np.ones_like(a)
    if name == "relu":
        return (a > 0).astype(np.float64)  # 0 at z = 0
    if name == "leaky_relu":
        return np.where(a > 0, 1.0, LEAKY_SLOPE)  # sign(a) = sign(z)
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    if name == "softmax":
        raise ValueError("softmax has a Jacobian, not an element-wise derivative")
    raise ValueError(f"unknown activation {name!r}")


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- forward pass

def _pre_activations_and_outputs(weights, biases, activations, X):
    A = [np.asarray(X, dtype=np.float64)]
    Z = []
    for W, b, name in zip(weights, biases, activations):
        z = A[-1] @ np.asarray(W, dtype=np.float64) + np.asarray(b, dtype=np.float64)
        Z.append(z)
        A.append(activate(name, z))
    return Z, A


def forward(weights, biases, activations, X):
    """The activations [A0 = X, A1, ..., AL] of every layer."""
    return _pre_activations_and_outputs(weights, biases, activations, X)[1]


# ---------------------------------------------------------------- losses

def prepare_targets(loss, Y, n_outputs):
    """Targets as a float64 (n, k) array; CCE integer labels are one-hot encoded."""
    Y = np.asarray(Y)
    if loss_name(loss) == "categorical_crossentropy" and Y.ndim == 1:
        return np.eye(n_outputs)[Y.astype(np.int64)]
    Y = np.asarray(Y, dtype=np.float64)
    return Y.reshape(-1, 1) if Y.ndim == 1 else Y


def _is_fused(loss, output_activation):
    loss = loss_name(loss)
    return ((loss == "categorical_crossentropy" and output_activation == "softmax")
            or (loss == "binary_crossentropy" and output_activation == "sigmoid"))


def loss_on_outputs(loss, Y, A):
    """A loss value from output activations A (general formula, CCE/BCE clipped)."""
    loss = loss_name(loss)
    Y = prepare_targets(loss, Y, np.shape(A)[1])
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    if loss == "mse":
        return np.mean((A - Y) ** 2)
    if loss == "mae":
        return np.mean(np.abs(A - Y))
    P = np.clip(A, EPS, 1.0 - EPS)
    if loss == "categorical_crossentropy":
        return -np.sum(Y * np.log(P)) / n
    return np.mean(-(Y * np.log(P) + (1.0 - Y) * np.log(1.0 - P)))


def loss_grad_on_outputs(loss, Y, A):
    """dL/dA for the general formula (CCE/BCE: derivative 0 where the clip is active)."""
    loss = loss_name(loss)
    Y = prepare_targets(loss, Y, np.shape(A)[1])
    A = np.asarray(A, dtype=np.float64)
    n, k = A.shape
    if loss == "mse":
        return 2.0 * (A - Y) / (n * k)
    if loss == "mae":
        return np.sign(A - Y) / (n * k)
    inside = (A >= EPS) & (A <= 1.0 - EPS)
    P = np.clip(A, EPS, 1.0 - EPS)
    if loss == "categorical_crossentropy":
        g = -Y / P / n
    else:
        g = (P - Y) / (P * (1.0 - P)) / (n * k)
    return np.where(inside, g, 0.0)


def loss_value(loss, A_L, Z_L, Y, output_activation):
    """The loss of a batch; from the logits Z_L for the fused pairings, else from A_L."""
    loss = loss_name(loss)
    Z_L = np.asarray(Z_L, dtype=np.float64)
    Y = prepare_targets(loss, Y, Z_L.shape[1])
    if _is_fused(loss, output_activation):
        if loss == "categorical_crossentropy":
            return -np.sum(Y * _log_softmax(Z_L)) / Z_L.shape[0]
        return np.mean(np.maximum(Z_L, 0.0) - Z_L * Y + np.log1p(np.exp(-np.abs(Z_L))))
    return loss_on_outputs(loss, Y, A_L)


def output_delta(loss, A_L, Z_L, Y, output_activation):
    """dL/dZ_L, the delta of the output layer."""
    loss = loss_name(loss)
    A_L = np.asarray(A_L, dtype=np.float64)
    n, k = A_L.shape
    Y = prepare_targets(loss, Y, k)
    if _is_fused(loss, output_activation):
        scale = n if loss == "categorical_crossentropy" else n * k
        return (A_L - Y) / scale
    g = loss_grad_on_outputs(loss, Y, A_L)
    if output_activation == "softmax":
        # full softmax Jacobian, row by row: a * (g - <g, a>)
        return A_L * (g - np.sum(g * A_L, axis=1, keepdims=True))
    return g * activation_grad_from_output(output_activation, A_L)


# ---------------------------------------------------------------- backward pass

def gradients(weights, biases, activations, X, Y, loss):
    """(loss value, grad_W list, grad_b list): the exact gradient of the batch's mean loss."""
    Z, A = _pre_activations_and_outputs(weights, biases, activations, X)
    value = loss_value(loss, A[-1], Z[-1], Y, activations[-1])
    delta = output_delta(loss, A[-1], Z[-1], Y, activations[-1])
    L = len(weights)
    grad_W, grad_b = [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        grad_W[l] = A[l].T @ delta
        grad_b[l] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ np.asarray(weights[l], dtype=np.float64).T) \
                * activation_grad_from_output(activations[l - 1], A[l])
    return float(value), grad_W, grad_b


def loss_of_parameters(weights, biases, activations, X, Y, loss):
    """The loss value alone (what the finite differences perturb)."""
    Z, A = _pre_activations_and_outputs(weights, biases, activations, X)
    return float(loss_value(loss, A[-1], Z[-1], Y, activations[-1]))


def numerical_gradients(weights, biases, activations, X, Y, loss, step=1e-6, loss_fn=None):
    """Central finite differences of the loss w.r.t. every weight and bias.

    `loss_fn()` (no arguments) evaluates the loss at the current parameters; by default the
    reference loss. The parameter arrays are perturbed in place and restored, so a caller
    may pass live arrays of another implementation together with its own `loss_fn`.
    """
    if loss_fn is None:
        def loss_fn():
            return loss_of_parameters(weights, biases, activations, X, Y, loss)

    def numeric(param):
        grad = np.zeros(param.shape, dtype=np.float64)
        for index in np.ndindex(param.shape):
            old = param[index]
            param[index] = old + step
            up = loss_fn()
            param[index] = old - step
            down = loss_fn()
            param[index] = old
            grad[index] = (up - down) / (2.0 * step)
        return grad

    return [numeric(W) for W in weights], [numeric(b) for b in biases]


# ---------------------------------------------------------------- SGD

def sgd_epoch(weights, biases, activations, X, Y, loss, learning_rate, batch_size, order=None):
    """One epoch of mini-batch SGD, in place; returns the epoch's mean loss.

    Batches are rows order[0:b], order[b:2b], ... (the last one may be smaller); each moves
    every parameter by -learning_rate * grad. The epoch loss is the mean over batches of the
    loss before that batch's update, weighted by the batch's rows.
    """
    X = np.asarray(X)
    Y = np.asarray(Y)
    n = X.shape[0]
    order = np.arange(n) if order is None else np.asarray(order)
    total = 0.0
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        value, grad_W, grad_b = gradients(weights, biases, activations, X[rows], Y[rows], loss)
        for W, gW in zip(weights, grad_W):
            W -= learning_rate * gW
        for b, gb in zip(biases, grad_b):
            b -= learning_rate * gb
        total += value * len(rows)
    return total / n


# ---------------------------------------------------------------- helpers for tests

def init_parameters(layer_sizes, rng, scale=None):
    """Random float64 weights and biases (Glorot-like scale unless given)."""
    weights, biases = [], []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        s = np.sqrt(2.0 / (n_in + n_out)) if scale is None else scale
        weights.append(rng.normal(0.0, s, size=(n_in, n_out)))
        biases.append(rng.normal(0.0, 0.1, size=n_out))
    return weights, biases


def make_problem(layer_sizes, activations, loss, n_samples, rng, targets=None):
    """(weights, biases, X, Y) on which `loss` is smooth and its gradient not trivially 0.

    targets: "labels" (CCE integer labels) or None for the default of the loss: one-hot
    rows for CCE, probabilities in (0, 1) for BCE and for MSE/MAE after sigmoid (after softmax:
    rows that sum to 1, so the errors have mixed signs), standard normal values otherwise.
    For CCE or BCE after an output that is not softmax or sigmoid, the last layer is scaled so
    that every pre-activation lies in [0.2, 0.8], where the clip is inactive. A relu output
    gets a positive bias, so that it is not dead.
    """
    loss = loss_name(loss)
    out = activations[-1]
    k = layer_sizes[-1]
    weights, biases = init_parameters(layer_sizes, rng)
    X = rng.normal(size=(n_samples, layer_sizes[0]))
    cross_entropy = loss in ("categorical_crossentropy", "binary_crossentropy")
    if cross_entropy and out not in ("softmax", "sigmoid"):
        H = forward(weights, biases, activations, X)[-2]
        weights[-1] *= 0.3 / max(np.abs(H @ weights[-1]).max(), 1e-12)
        biases[-1][:] = 0.5
    elif out == "relu":
        biases[-1] += 1.0
    if loss == "categorical_crossentropy":
        labels = rng.integers(0, k, size=n_samples)
        Y = labels if targets == "labels" else np.eye(k)[labels]
    elif out == "softmax" and loss in ("mse", "mae"):
        Y = rng.dirichlet(np.ones(k), size=n_samples)
    elif loss == "binary_crossentropy" or out == "sigmoid":
        Y = rng.uniform(0.0, 1.0, size=(n_samples, k))
    else:
        Y = rng.normal(size=(n_samples, k))
    if cross_entropy and not _is_fused(loss, out):
        A = forward(weights, biases, activations, X)[-1]
        assert np.all((A > 1e-3) & (A < 1.0 - 1e-3)), "outputs too close to the clip"
    return weights, biases, X, Y
