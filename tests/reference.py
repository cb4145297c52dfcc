"""A plain-NumPy reference MLP: the test oracle for fastbp.

Float64 throughout, written for clarity, not speed, and independent of fastbp's code.
Conventions are those of docs/contract.md ("Numerical conventions"):

- layer l: Z = A_prev @ W + b, A = f(Z); weights[l] has shape (n_in, n_out); A0 = X.
- MSE and MAE: mean over all n*k elements. CCE: -(1/n) sum_i sum_k y_ik log p_ik.
  BCE: mean over all n*k elements of -(y log p + (1-y) log(1-p)).
- softmax + CCE and sigmoid + BCE: loss from the logits (stable) and the fused delta
  (p - y) / n (CCE) or (p - y) / (n*k) (BCE). Any other pairing: the general chain rule; CCE
  and BCE then clip p to [EPS, 1 - EPS] first, with derivative 0 where the clip is active.
- CCE targets may be integer labels (1-D); they are one-hot encoded.
- Huber (torch.nn.HuberLoss, mean reduction): per element d^2/2 where |d| <= delta,
  delta * (|d| - delta/2) elsewhere, d = p - y; a loss is then "huber" (delta 1) or the
  pair ("huber", delta).
- Sample weights w (one >= 0 per row): the batch loss is sum_i w_i l_i / sum_i w_i, where
  l_i is row i's loss: for CCE the row's sum over the outputs, for every other loss the
  row's mean over them (so weights all 1 give the unweighted means above).
- Optimizers: the update rules as torch.optim documents them (see `optimizer_step`).
- Dropout: `masks` multiply the hidden layers' outputs (inverted dropout: entries 0 or
  1/(1-p)); the backward pass multiplies the deltas by the same masks.
"""

import math

import numpy as np

EPS = 1e-7
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softmax",
               "elu", "softplus", "gelu", "swish")
# Activations whose derivative the backward pass takes from the pre-activation Z
# (the others' from the output A, as the original reference does).
FROM_PREACTIVATION = ("elu", "softplus", "gelu", "swish")
LEAKY_SLOPE = 0.01
LOSS_ALIASES = {
    "mse": "mse",
    "mae": "mae",
    "categorical_crossentropy": "categorical_crossentropy",
    "cce": "categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "bce": "binary_crossentropy",
    "huber": "huber",
}


def loss_name(loss):
    """The canonical name of a loss (resolves the aliases "cce" and "bce"; a pair
    ("huber", delta) is "huber")."""
    if isinstance(loss, tuple):
        return loss_name(loss[0])
    try:
        return LOSS_ALIASES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}") from None


def huber_delta(loss):
    """Huber's delta: 1 for "huber", d for ("huber", d)."""
    return float(loss[1]) if isinstance(loss, tuple) else 1.0


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _gaussian_cdf(z):
    # erfc, not 1 + erf: the latter cancels in the negative tail
    return 0.5 * _erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64)


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
    if name == "elu":            # alpha = 1
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))
    if name == "softplus":       # log(1 + e^z), stable
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    if name == "gelu":           # exact: z * Phi(z)
        return z * _gaussian_cdf(z)
    if name == "swish":          # SiLU: z * sigmoid(z)
        return z * _sigmoid(z)
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(name, z):
    """f'(Z) from the pre-activation Z, element-wise (not defined for softmax)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE)
    if name == "sigmoid":
        s = _sigmoid(z)
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0)))
    if name == "softplus":
        return _sigmoid(z)
    if name == "gelu":           # Phi(z) + z phi(z)
        return _gaussian_cdf(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if name == "swish":          # s + z s (1 - s)
        s = _sigmoid(z)
        return s + z * s * (1.0 - s)
    if name == "softmax":
        raise ValueError("softmax has a Jacobian, not an element-wise derivative")
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(name, z, a):
    """f'(Z): from the output A for the original activations, from Z for the others."""
    if name in FROM_PREACTIVATION:
        return activation_derivative(name, z)
    return activation_grad_from_output(name, a)


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
    if name in FROM_PREACTIVATION:
        raise ValueError(f"{name}'s derivative needs the pre-activation: activation_derivative")
    raise ValueError(f"unknown activation {name!r}")


def _log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- forward pass

def _pre_activations_and_outputs(weights, biases, activations, X, masks=None):
    """(Z, A): pre-activations Z1..ZL and outputs A0 = X, A1..AL. With dropout `masks`
    (one per hidden layer, None for none) A_l of a hidden layer is f(Z_l) * mask_l, the
    input of the next layer."""
    A = [np.asarray(X, dtype=np.float64)]
    Z = []
    for l, (W, b, name) in enumerate(zip(weights, biases, activations)):
        z = A[-1] @ np.asarray(W, dtype=np.float64) + np.asarray(b, dtype=np.float64)
        Z.append(z)
        a = activate(name, z)
        if masks is not None and l < len(weights) - 1 and masks[l] is not None:
            a = a * masks[l]
        A.append(a)
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


def _row_shares(sample_weight, n):
    """w_i / sum_j w_j, the weight of each row's loss in the batch loss."""
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"sample_weight needs {n} weights; got shape {w.shape}")
    return w / w.sum()


def _huber(d, delta):
    size = np.abs(d)
    return np.where(size <= delta, 0.5 * d * d, delta * (size - 0.5 * delta))


def _huber_grad(d, delta):
    return np.where(np.abs(d) <= delta, d, delta * np.sign(d))


def _element_losses(loss, Y, A):
    """The per-element loss terms (CCE: -y log p, clipped) and their derivatives."""
    name = loss_name(loss)
    if name == "mse":
        return (A - Y) ** 2, 2.0 * (A - Y)
    if name == "mae":
        return np.abs(A - Y), np.sign(A - Y)
    if name == "huber":
        delta = huber_delta(loss)
        return _huber(A - Y, delta), _huber_grad(A - Y, delta)
    inside = (A >= EPS) & (A <= 1.0 - EPS)
    P = np.clip(A, EPS, 1.0 - EPS)
    if name == "categorical_crossentropy":
        return -Y * np.log(P), np.where(inside, -Y / P, 0.0)
    return (-(Y * np.log(P) + (1.0 - Y) * np.log(1.0 - P)),
            np.where(inside, (P - Y) / (P * (1.0 - P)), 0.0))


def row_losses(loss, Y, A):
    """l_i of each row: the sum over the outputs for CCE, the mean for the others."""
    name = loss_name(loss)
    A = np.asarray(A, dtype=np.float64)
    Y = prepare_targets(loss, Y, A.shape[1])
    terms = _element_losses(loss, Y, A)[0]
    return terms.sum(axis=1) if name == "categorical_crossentropy" else terms.mean(axis=1)


def loss_on_outputs(loss, Y, A, sample_weight=None):
    """A loss value from output activations A (general formula, CCE/BCE clipped)."""
    name = loss_name(loss)
    Y = prepare_targets(loss, Y, np.shape(A)[1])
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    if sample_weight is not None:
        return float(np.sum(_row_shares(sample_weight, n) * row_losses(loss, Y, A)))
    if name == "mse":
        return np.mean((A - Y) ** 2)
    if name == "mae":
        return np.mean(np.abs(A - Y))
    if name == "huber":
        return np.mean(_huber(A - Y, huber_delta(loss)))
    P = np.clip(A, EPS, 1.0 - EPS)
    if name == "categorical_crossentropy":
        return -np.sum(Y * np.log(P)) / n
    return np.mean(-(Y * np.log(P) + (1.0 - Y) * np.log(1.0 - P)))


def loss_grad_on_outputs(loss, Y, A, sample_weight=None):
    """dL/dA for the general formula (CCE/BCE: derivative 0 where the clip is active)."""
    name = loss_name(loss)
    Y = prepare_targets(loss, Y, np.shape(A)[1])
    A = np.asarray(A, dtype=np.float64)
    n, k = A.shape
    if sample_weight is not None:
        per_row = 1.0 if name == "categorical_crossentropy" else 1.0 / k
        return _row_shares(sample_weight, n)[:, None] * per_row * _element_losses(loss, Y, A)[1]
    if name == "mse":
        return 2.0 * (A - Y) / (n * k)
    if name == "mae":
        return np.sign(A - Y) / (n * k)
    if name == "huber":
        return _huber_grad(A - Y, huber_delta(loss)) / (n * k)
    inside = (A >= EPS) & (A <= 1.0 - EPS)
    P = np.clip(A, EPS, 1.0 - EPS)
    if name == "categorical_crossentropy":
        g = -Y / P / n
    else:
        g = (P - Y) / (P * (1.0 - P)) / (n * k)
    return np.where(inside, g, 0.0)


def _fused_row_losses(loss, Z_L, Y):
    if loss_name(loss) == "categorical_crossentropy":
        return -np.sum(Y * _log_softmax(Z_L), axis=1)
    return np.mean(np.maximum(Z_L, 0.0) - Z_L * Y + np.log1p(np.exp(-np.abs(Z_L))), axis=1)


def loss_value(loss, A_L, Z_L, Y, output_activation, sample_weight=None):
    """The loss of a batch; from the logits Z_L for the fused pairings, else from A_L."""
    name = loss_name(loss)
    Z_L = np.asarray(Z_L, dtype=np.float64)
    Y = prepare_targets(loss, Y, Z_L.shape[1])
    if _is_fused(name, output_activation):
        if sample_weight is not None:
            return float(np.sum(_row_shares(sample_weight, Z_L.shape[0])
                                * _fused_row_losses(name, Z_L, Y)))
        if name == "categorical_crossentropy":
            return -np.sum(Y * _log_softmax(Z_L)) / Z_L.shape[0]
        return np.mean(np.maximum(Z_L, 0.0) - Z_L * Y + np.log1p(np.exp(-np.abs(Z_L))))
    return loss_on_outputs(loss, Y, A_L, sample_weight)


def output_delta(loss, A_L, Z_L, Y, output_activation, sample_weight=None):
    """dL/dZ_L, the delta of the output layer."""
    name = loss_name(loss)
    A_L = np.asarray(A_L, dtype=np.float64)
    n, k = A_L.shape
    Y = prepare_targets(loss, Y, k)
    if _is_fused(name, output_activation):
        per_row = 1.0 if name == "categorical_crossentropy" else 1.0 / k
        if sample_weight is not None:
            return _row_shares(sample_weight, n)[:, None] * per_row * (A_L - Y)
        scale = n if name == "categorical_crossentropy" else n * k
        return (A_L - Y) / scale
    g = loss_grad_on_outputs(loss, Y, A_L, sample_weight)
    if output_activation == "softmax":
        # full softmax Jacobian, row by row: a * (g - <g, a>)
        return A_L * (g - np.sum(g * A_L, axis=1, keepdims=True))
    return g * activation_grad(output_activation, Z_L, A_L)


# ---------------------------------------------------------------- backward pass

def gradients(weights, biases, activations, X, Y, loss, sample_weight=None, masks=None):
    """(loss value, grad_W list, grad_b list): the exact gradient of the batch's mean loss
    (weighted by sample_weight; with dropout `masks`, see _pre_activations_and_outputs)."""
    Z, A = _pre_activations_and_outputs(weights, biases, activations, X, masks)
    value = loss_value(loss, A[-1], Z[-1], Y, activations[-1], sample_weight)
    delta = output_delta(loss, A[-1], Z[-1], Y, activations[-1], sample_weight)
    L = len(weights)
    grad_W, grad_b = [None] * L, [None] * L
    for l in range(L - 1, -1, -1):
        grad_W[l] = A[l].T @ delta
        grad_b[l] = delta.sum(axis=0)
        if l > 0:
            delta = delta @ np.asarray(weights[l], dtype=np.float64).T
            if masks is not None and masks[l - 1] is not None:
                delta = delta * masks[l - 1]
                undropped = activate(activations[l - 1], Z[l - 1])
            else:
                undropped = A[l]
            delta = delta * activation_grad(activations[l - 1], Z[l - 1], undropped)
    return float(value), grad_W, grad_b


def loss_of_parameters(weights, biases, activations, X, Y, loss, sample_weight=None):
    """The loss value alone (what the finite differences perturb)."""
    Z, A = _pre_activations_and_outputs(weights, biases, activations, X)
    return float(loss_value(loss, A[-1], Z[-1], Y, activations[-1], sample_weight))


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


# ---------------------------------------------------------------- optimizers (torch.optim)

def make_optimizer(name, learning_rate, momentum=0.0, nesterov=False, beta1=0.9, beta2=0.999,
                   alpha=0.99, epsilon=None, weight_decay=0.0, decoupled_weight_decay=False,
                   clip_norm=None):
    """An optimizer as a plain dict: name is "sgd" (with momentum/nesterov), "adam",
    "rmsprop" or "adagrad"; epsilon defaults to torch's (1e-8, Adagrad 1e-10).

    weight_decay applies to the weights only, never the biases (fastbp's convention; in
    torch: a parameter group for the biases with weight_decay=0). Coupled: g <- g + wd p,
    torch's weight_decay. Decoupled: p <- p (1 - lr wd) before the rule, as torch.optim.AdamW
    does. clip_norm: torch.nn.utils.clip_grad_norm_(all parameters, clip_norm) on the raw
    gradient before the step (so before weight decay is added).
    """
    if name not in ("sgd", "adam", "rmsprop", "adagrad"):
        raise ValueError(f"unknown optimizer {name!r}")
    if epsilon is None:
        epsilon = 1e-10 if name == "adagrad" else 1e-8
    return dict(name=name, learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                beta1=beta1, beta2=beta2, alpha=alpha, epsilon=epsilon,
                weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                clip_norm=clip_norm)


def new_state():
    """An optimizer's state before its first step: t = 0 and no buffers."""
    return {"t": 0, "buffers": {}}


def clip_gradients(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ (norm_type 2, in place): the norm is that of all
    gradients concatenated; each is multiplied by min(1, max_norm / (norm + 1e-6)).
    Returns the norm before clipping."""
    norm = math.sqrt(sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads))
    coefficient = min(1.0, max_norm / (norm + 1e-6))
    for g in grads:
        g *= coefficient
    return norm


def _step_parameter(p, g, buffers, optimizer, learning_rate, t, decays):
    """One parameter's step, as the torch.optim documentation writes the algorithm."""
    name = optimizer["name"]
    wd = optimizer["weight_decay"] if decays else 0.0
    lr = learning_rate
    if wd and optimizer["decoupled_weight_decay"]:
        p *= 1.0 - lr * wd                              # AdamW's decoupled decay
    elif wd:
        g = g + wd * p                                  # g_t <- g_t + lambda theta_{t-1}
    if name == "sgd":
        mu = optimizer["momentum"]
        if mu:
            b = g.copy() if t == 1 else mu * buffers["momentum"] + g      # dampening 0
            buffers["momentum"] = b
            g = g + mu * b if optimizer["nesterov"] else b
        p -= lr * g
    elif name == "adam":
        b1, b2 = optimizer["beta1"], optimizer["beta2"]
        m = b1 * buffers.get("m", 0.0) + (1.0 - b1) * g
        v = b2 * buffers.get("v", 0.0) + (1.0 - b2) * g * g
        buffers["m"], buffers["v"] = m, v
        m_hat = m / (1.0 - b1 ** t)
        v_hat = v / (1.0 - b2 ** t)
        p -= lr * m_hat / (np.sqrt(v_hat) + optimizer["epsilon"])
    elif name == "rmsprop":
        a = optimizer["alpha"]
        v = a * buffers.get("v", 0.0) + (1.0 - a) * g * g
        buffers["v"] = v
        p -= lr * g / (np.sqrt(v) + optimizer["epsilon"])
    else:                                               # adagrad, lr_decay 0, accumulator 0
        s = buffers.get("s", 0.0) + g * g
        buffers["s"] = s
        p -= lr * g / (np.sqrt(s) + optimizer["epsilon"])


def optimizer_step(weights, biases, grad_W, grad_b, optimizer, state, learning_rate=None):
    """One step on every parameter, in place: clip (optional), then each parameter's rule
    with t = state["t"] + 1 (weights decay, biases do not)."""
    learning_rate = optimizer["learning_rate"] if learning_rate is None else learning_rate
    grad_W = [np.array(g, dtype=np.float64) for g in grad_W]
    grad_b = [np.array(g, dtype=np.float64) for g in grad_b]
    if optimizer["clip_norm"] is not None:
        clip_gradients(grad_W + grad_b, optimizer["clip_norm"])
    state["t"] += 1
    for kind, params, grads in (("W", weights, grad_W), ("b", biases, grad_b)):
        for l, (p, g) in enumerate(zip(params, grads)):
            buffers = state["buffers"].setdefault((kind, l), {})
            _step_parameter(p, g, buffers, optimizer, learning_rate, state["t"], kind == "W")


def train_epoch(weights, biases, activations, X, Y, loss, optimizer, state, batch_size,
                learning_rate=None, sample_weight=None, order=None):
    """One epoch in place (shuffle=False unless `order` is given): batches order[0:b],
    order[b:2b], ...; each takes one optimizer_step. Returns the epoch's loss: the weighted
    mean over all rows of each row's loss before its batch's update.

    A batch whose rows all weigh 0 is skipped: no step (the weighted mean is 0/0; this is
    fastbp's convention).
    """
    X = np.asarray(X)
    Y = np.asarray(Y)
    n = X.shape[0]
    order = np.arange(n) if order is None else np.asarray(order)
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = weight_total = 0.0
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        batch_weight = w[rows].sum()
        if not batch_weight > 0:
            continue
        value, grad_W, grad_b = gradients(weights, biases, activations, X[rows], Y[rows], loss,
                                          None if sample_weight is None else w[rows])
        optimizer_step(weights, biases, grad_W, grad_b, optimizer, state, learning_rate)
        total += value * batch_weight
        weight_total += batch_weight
    return total / weight_total


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
