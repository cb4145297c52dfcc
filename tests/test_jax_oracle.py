"""An independent autodiff oracle: fastbp against the same network written in JAX.

The loss values and gradients of float64 models equal jax.grad of the network written here
with jax.nn's activations and optax's losses, for every activation x loss pairing at
depths 1-3; 20 optimizer steps through fastbp.Trainer equal the same steps taken with optax,
and every rule's steps on partial and weightless batches and under a schedule, on two
threads, a CSR X and in float32 (within float32's rounding), equal optax's too.
Nothing here shares code with fastbp or with tests/reference.py: JAX differentiates what is
written, so a slip in a hand-derived derivative on either side shows.

The conventions written out below are fastbp's (docs/contract.md, "Numerical conventions"):
- a batch's loss is the mean over its rows of each row's loss: the sum over the outputs of
  -y log p for CCE, the mean over the outputs for every other loss; with sample weights w
  it is sum_i w_i l_i / sum_i w_i;
- softmax + CCE and sigmoid + BCE are computed from the logits; every other pairing applies
  the loss to the output activation, CCE and BCE clipping p to [1e-7, 1 - 1e-7] first
  (jnp.clip's derivative is 0 where the clip is active, as fastbp's is);
- Huber(delta) is optax.losses.huber_loss: d^2/2 for |d| <= delta, delta (|d| - delta/2) else.

The data are random (standard normal), so no pre-activation sits exactly on a kink (relu and
leaky_relu at 0, |d| = 0 for MAE, |d| = delta for Huber, the clip's edges): those ties have
probability zero and the derivative's value there is not compared.
"""
import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

import fastbp  # noqa: E402
from fastbp import optimizers  # noqa: E402

# Float64 in JAX for this process (JAX computes in float32 unless told); no other test
# module uses JAX.
jax.config.update("jax_enable_x64", True)

RTOL = 1e-10
CLIP = 1e-7     # the probability clip of a cross-entropy after a non-matching output

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, negative_slope=0.01),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,                                      # alpha 1
    "softplus": jax.nn.softplus,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),    # exact: z Phi(z)
    "swish": jax.nn.swish,                                  # z sigmoid(z)
    "softmax": lambda z: jax.nn.softmax(z, axis=-1),
}
HIDDEN = tuple(name for name in ACTIVATIONS if name != "softmax")
OUTPUT = tuple(ACTIVATIONS)
SIZES = {1: [4, 3], 2: [4, 5, 3], 3: [4, 5, 4, 3]}
N_ROWS = 7

# (id, fastbp loss, target kind): CCE with one-hot rows and with integer labels
LOSSES = [
    ("mse", "mse", "real"),
    ("mae", "mae", "real"),
    ("huber", "huber", "real"),
    ("huber-0.3", fastbp.losses.Huber(delta=0.3), "real"),
    ("cce-onehot", "categorical_crossentropy", "onehot"),
    ("cce-labels", "cce", "labels"),
    ("bce", "binary_crossentropy", "probabilities"),
]


def activation_chains():
    """Every output activation after every hidden activation, each hidden one in each slot
    of depths 2 and 3."""
    chains = []
    for depth in SIZES:
        hidden_choices = [()] if depth == 1 else [
            tuple(HIDDEN[(i + j) % len(HIDDEN)] for j in range(depth - 1))
            for i in range(len(HIDDEN))]
        chains += [hidden + (out,) for hidden in hidden_choices for out in OUTPUT]
    return chains


CHAINS = activation_chains()


def rng_for(*key):
    """A generator seeded from the test's parameters (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------- the network in JAX

def canonical(loss):
    """(name, Huber delta) of a fastbp loss given by name or object."""
    loss = fastbp.losses.get(loss)
    return loss.name, loss.parameter


def fused(name, output_activation):
    return (name, output_activation) in (("categorical_crossentropy", "softmax"),
                                         ("binary_crossentropy", "sigmoid"))


def pre_activations(params, activations, X):
    """The output layer's pre-activation Z_L of the network with these parameters."""
    A = X
    for l, (W, b, name) in enumerate(zip(params["W"], params["b"], activations)):
        Z = A @ W + b
        if l == len(activations) - 1:
            return Z
        A = ACTIVATIONS[name](Z)


def row_losses(loss, output_activation, Z, Y):
    """Each row's loss, from the output pre-activation Z and dense targets Y."""
    name, delta = canonical(loss)
    if fused(name, output_activation):
        if name == "categorical_crossentropy":
            return -jnp.sum(Y * jax.nn.log_softmax(Z, axis=-1), axis=1)
        return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(Z, Y), axis=1)
    A = ACTIVATIONS[output_activation](Z)
    if name == "mse":
        return jnp.mean((A - Y) ** 2, axis=1)
    if name == "mae":
        return jnp.mean(jnp.abs(A - Y), axis=1)
    if name == "huber":
        return jnp.mean(optax.losses.huber_loss(A, Y, delta=delta), axis=1)
    P = jnp.clip(A, CLIP, 1.0 - CLIP)
    if name == "categorical_crossentropy":
        return -jnp.sum(Y * jnp.log(P), axis=1)
    return jnp.mean(-(Y * jnp.log(P) + (1.0 - Y) * jnp.log(1.0 - P)), axis=1)


def batch_loss(params, activations, loss, X, Y, row_weights=None):
    rows = row_losses(loss, activations[-1], pre_activations(params, activations, X), Y)
    if row_weights is None:
        return jnp.mean(rows)
    return jnp.sum(row_weights * rows) / jnp.sum(row_weights)


def dense_targets(Y, n_outputs):
    """Targets as float64 rows (integer class labels one-hot encoded)."""
    Y = np.asarray(Y)
    return np.eye(n_outputs)[Y] if Y.dtype.kind in "iu" else Y.astype(np.float64)


def as_jax_params(weights, biases):
    return {"W": [jnp.asarray(W) for W in weights], "b": [jnp.asarray(b) for b in biases]}


# ---------------------------------------------------------------- problems

# The centre of the output pre-activations for a cross-entropy after an output that is not
# its own (softmax or sigmoid): outputs in (0, 1), away from the clip.
CROSS_ENTROPY_CENTRE = {"softplus": -0.5}   # softplus(z) < 1 needs z < log(e - 1) = 0.54


def make_problem(sizes, activations, loss, target_kind, rng, n_rows=N_ROWS):
    """(weights, biases, X, Y) with a smooth loss and a gradient that is not trivially 0."""
    name, _ = canonical(loss)
    out, k = activations[-1], sizes[-1]
    weights = [rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, n_out))
               for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(0.0, 0.1, size=n_out) for n_out in sizes[1:]]
    X = rng.normal(size=(n_rows, sizes[0]))
    if name in ("categorical_crossentropy", "binary_crossentropy") and not fused(name, out):
        # Last layer scaled so that its pre-activations lie within 0.3 of the centre.
        hidden = X
        if len(sizes) > 2:
            params = as_jax_params(weights[:-1], biases[:-1])
            hidden = np.asarray(ACTIVATIONS[activations[-2]](
                pre_activations(params, activations[:-1], X)))
        weights[-1] *= 0.3 / max(np.abs(hidden @ weights[-1]).max(), 1e-12)
        biases[-1][:] = CROSS_ENTROPY_CENTRE.get(out, 0.5)
    elif out == "relu":
        biases[-1] += 1.0        # an output layer that is not dead
    labels = rng.integers(0, k, size=n_rows)
    if target_kind == "labels":
        Y = labels
    elif target_kind == "onehot":
        Y = np.eye(k)[labels]
    elif target_kind == "probabilities" or out == "sigmoid":
        Y = rng.uniform(0.0, 1.0, size=(n_rows, k))
    elif out == "softmax":
        Y = rng.dirichlet(np.ones(k), size=n_rows)    # rows that sum to 1, errors of both signs
    else:
        Y = rng.normal(size=(n_rows, k))
    return weights, biases, X, Y


def float64_model(sizes, activations, weights, biases):
    model = fastbp.MLP(sizes, list(activations), dtype="float64", seed=0)
    model.weights = weights
    model.biases = biases
    return model


def assert_close_lists(actual, desired, what):
    """Each array within RTOL, with an absolute floor of 1e-13 of the largest entry (for the
    entries that cancel to about 0)."""
    scale = max(float(np.max(np.abs(d))) for d in desired)
    for i, (a, d) in enumerate(zip(actual, desired)):
        np.testing.assert_allclose(a, d, rtol=RTOL, atol=1e-13 * scale, err_msg=f"{what}[{i}]")


# ---------------------------------------------------------------- loss values and gradients

@pytest.mark.parametrize("loss_id,loss,target_kind", LOSSES, ids=[c[0] for c in LOSSES])
@pytest.mark.parametrize("activations", CHAINS, ids=["-".join(c) for c in CHAINS])
def test_gradients_equal_jax_grad(activations, loss_id, loss, target_kind):
    sizes = SIZES[len(activations)]
    weights, biases, X, Y = make_problem(sizes, activations, loss, target_kind,
                                         rng_for(activations, loss_id))
    model = float64_model(sizes, activations, weights, biases)

    value, grad_W, grad_b = model.gradients(X, Y, loss)

    expected_value, expected = jax.value_and_grad(batch_loss)(
        as_jax_params(weights, biases), activations, loss, X, dense_targets(Y, sizes[-1]))
    assert value == pytest.approx(float(expected_value), rel=RTOL)
    expected_W = [np.asarray(g) for g in expected["W"]]
    expected_b = [np.asarray(g) for g in expected["b"]]
    assert max(float(np.max(np.abs(g))) for g in expected_W) > 1e-6, "a trivial gradient"
    assert_close_lists(grad_W, expected_W, "grad_weights")
    assert_close_lists(grad_b, expected_b, "grad_biases")


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "binary_crossentropy"])
@pytest.mark.parametrize("output", ["identity", "relu", "tanh"])
def test_clipped_probabilities_have_the_clipped_gradient(output, loss):
    """Output pre-activations spread over 0.5 +- 2: the clip is active on many outputs and
    their derivative is 0, as jnp.clip's is."""
    sizes, activations = [4, 6, 3], ("tanh", output)
    rng = rng_for("clipped", output, loss)
    weights, biases, X, _ = make_problem(sizes, activations, "mse", "real", rng, n_rows=20)
    params = as_jax_params(weights, biases)
    Z = np.asarray(pre_activations(params, activations, X))
    weights[-1] *= 2.0 / np.abs(Z - biases[-1]).max()
    biases[-1][:] = 0.5
    Y = np.eye(3)[rng.integers(0, 3, size=20)] if loss == "categorical_crossentropy" \
        else rng.uniform(0.0, 1.0, size=(20, 3))
    model = float64_model(sizes, activations, weights, biases)
    outputs = model.predict(X)
    assert np.mean((outputs < CLIP) | (outputs > 1 - CLIP)) > 0.1, "the clip is not active"

    value, grad_W, grad_b = model.gradients(X, Y, loss)

    expected_value, expected = jax.value_and_grad(batch_loss)(
        as_jax_params(weights, biases), activations, loss, X, Y)
    assert value == pytest.approx(float(expected_value), rel=RTOL)
    assert_close_lists(grad_W, [np.asarray(g) for g in expected["W"]], "grad_weights")
    assert_close_lists(grad_b, [np.asarray(g) for g in expected["b"]], "grad_biases")


# ---------------------------------------------------------------- optimizer steps

def weights_only(params):
    """optax's mask for weight decay: fastbp decays the weights, never the biases."""
    return {"W": [True] * len(params["W"]), "b": [False] * len(params["b"])}


def torch_adagrad(learning_rate, eps):
    """torch.optim.Adagrad (accumulator from 0, eps added to the square root). optax.adagrad
    differs (eps inside the square root, an accumulator that starts at 0.1), so the torch
    rule, which fastbp follows, is written here."""
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, sums, params=None):
        sums = jax.tree.map(lambda s, g: s + g * g, sums, grads)
        return jax.tree.map(lambda g, s: -learning_rate * g / (jnp.sqrt(s) + eps),
                            grads, sums), sums

    return optax.GradientTransformation(init, update)


def torch_clip_by_global_norm(max_norm):
    """torch.nn.utils.clip_grad_norm_: every gradient times min(1, max_norm / (norm + 1e-6)).
    optax.clip_by_global_norm has no 1e-6, so torch's rule, which fastbp follows, is written
    here."""
    def update(grads, state, params=None):
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * factor, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# id: (fastbp optimizer, Trainer keywords, optax transformation). Decoupled decay: optax's
# adamw adds lr * wd * p to the update, torch.optim.AdamW (fastbp) multiplies p by
# (1 - lr wd) first: the same step. Coupled decay: g + wd p before the rule, as torch's
# weight_decay and optax.add_decayed_weights.
OPTIMIZER_CASES = {
    "sgd": (optimizers.SGD(0.1), {}, optax.sgd(0.1)),
    "momentum": (optimizers.SGD(0.05, momentum=0.9), {}, optax.sgd(0.05, momentum=0.9)),
    "nesterov": (optimizers.SGD(0.05, momentum=0.9, nesterov=True), {},
                 optax.sgd(0.05, momentum=0.9, nesterov=True)),
    # optax's Adam puts eps outside the square root of the corrected moment, as torch's
    "adam": (optimizers.Adam(0.01), {}, optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8)),
    "adamw": (optimizers.Adam(0.01, beta1=0.8, beta2=0.99, epsilon=1e-7),
              {"weight_decay": 0.1, "decoupled_weight_decay": True},
              optax.adamw(0.01, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.1, mask=weights_only)),
    # optax.rmsprop with eps outside the square root is torch's RMSprop (no momentum, not
    # centered, no bias correction)
    "rmsprop": (optimizers.RMSprop(0.01, alpha=0.9), {},
                optax.rmsprop(0.01, decay=0.9, eps=1e-8, eps_in_sqrt=False)),
    "adagrad": (optimizers.Adagrad(0.1), {}, torch_adagrad(0.1, eps=1e-10)),
    "sgd-coupled-decay": (optimizers.SGD(0.1, momentum=0.5), {"weight_decay": 0.05},
                          optax.chain(optax.add_decayed_weights(0.05, mask=weights_only),
                                      optax.sgd(0.1, momentum=0.5))),
    "adam-coupled-decay": (optimizers.Adam(0.01), {"weight_decay": 0.05},
                           optax.chain(optax.add_decayed_weights(0.05, mask=weights_only),
                                       optax.adam(0.01))),
    # the clip acts on the raw gradient, before the decay is added
    "momentum-clip": (optimizers.SGD(0.1, momentum=0.9), {"clip_norm": 0.05, "weight_decay": 0.01},
                      optax.chain(torch_clip_by_global_norm(0.05),
                                  optax.add_decayed_weights(0.01, mask=weights_only),
                                  optax.sgd(0.1, momentum=0.9))),
}

# id: (layer sizes, activations, loss, target kind, with sample weights)
TRAINING_PROBLEMS = {
    "regression": ([5, 8, 6, 3], ("tanh", "gelu", "identity"), "mse", "real", False),
    "classification-weighted": ([5, 8, 4], ("swish", "softmax"), "cce", "labels", True),
}
N_TRAIN, BATCH, EPOCHS = 40, 8, 4     # 5 batches an epoch: 20 steps


def optax_epochs(transformation, params, activations, loss, X, Y, row_weights):
    """The Trainer's epochs with shuffle=False, in JAX: batches are rows [0:b], [b:2b], ...
    Returns the parameters and each epoch's loss (the weighted mean over the rows of each
    row's loss before its batch's step)."""
    state = transformation.init(params)
    value_and_grad = jax.value_and_grad(batch_loss)
    epoch_losses = []
    for _ in range(EPOCHS):
        total = 0.0
        for start in range(0, N_TRAIN, BATCH):
            rows = slice(start, start + BATCH)
            w = None if row_weights is None else row_weights[rows]
            value, grads = value_and_grad(params, activations, loss, X[rows], Y[rows], w)
            updates, state = transformation.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            total += float(value) * (BATCH if w is None else float(np.sum(w)))
        epoch_losses.append(total / (N_TRAIN if row_weights is None else np.sum(row_weights)))
    return params, epoch_losses


@pytest.mark.parametrize("problem", TRAINING_PROBLEMS)
@pytest.mark.parametrize("case", OPTIMIZER_CASES)
def test_twenty_steps_equal_optax(case, problem):
    optimizer, keywords, transformation = OPTIMIZER_CASES[case]
    sizes, activations, loss, target_kind, weighted = TRAINING_PROBLEMS[problem]
    rng = rng_for("steps", case, problem)
    weights, biases, X, Y = make_problem(sizes, activations, loss, target_kind, rng,
                                         n_rows=N_TRAIN)
    row_weights = rng.uniform(0.2, 2.0, size=N_TRAIN) if weighted else None
    model = float64_model(sizes, activations, weights, biases)
    trainer = fastbp.Trainer(loss, optimizer=optimizer, epochs=EPOCHS, batch_size=BATCH,
                             shuffle=False, **keywords)

    history = trainer.fit(model, X, Y, sample_weight=row_weights)

    params, epoch_losses = optax_epochs(transformation, as_jax_params(weights, biases),
                                        activations, loss, X, dense_targets(Y, sizes[-1]),
                                        row_weights)
    moved = max(float(np.max(np.abs(np.asarray(W) - W0))) for W, W0 in zip(params["W"], weights))
    assert moved > 1e-3, "the steps hardly moved the weights"
    assert_close_lists(model.weights, [np.asarray(W) for W in params["W"]], "weights")
    assert_close_lists(model.biases, [np.asarray(b) for b in params["b"]], "biases")
    np.testing.assert_allclose(history.loss, epoch_losses, rtol=RTOL)


# ---------------------------------------------------------------- steps on varied data and inputs

# More rules: coupled decay with every rule, decoupled with momentum, clipping with Adam.
# Decoupled decay on SGD: torch's SGD after p *= 1 - lr wd, an update of -lr wd p.
MORE_OPTIMIZER_CASES = {
    "nesterov-coupled-decay": (optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                               {"weight_decay": 0.05},
                               optax.chain(optax.add_decayed_weights(0.05, mask=weights_only),
                                           optax.sgd(0.05, momentum=0.9, nesterov=True))),
    "momentum-decoupled-decay": (optimizers.SGD(0.1, momentum=0.5),
                                 {"weight_decay": 0.2, "decoupled_weight_decay": True},
                                 optax.chain(optax.sgd(0.1, momentum=0.5),
                                             optax.add_decayed_weights(-0.1 * 0.2,
                                                                       mask=weights_only))),
    "rmsprop-coupled-decay": (optimizers.RMSprop(0.01, alpha=0.9), {"weight_decay": 0.05},
                              optax.chain(optax.add_decayed_weights(0.05, mask=weights_only),
                                          optax.rmsprop(0.01, decay=0.9, eps=1e-8,
                                                        eps_in_sqrt=False))),
    "adagrad-coupled-decay": (optimizers.Adagrad(0.1), {"weight_decay": 0.05},
                              optax.chain(optax.add_decayed_weights(0.05, mask=weights_only),
                                          torch_adagrad(0.1, eps=1e-10))),
    "adam-clip": (optimizers.Adam(0.01), {"clip_norm": 0.05},
                  optax.chain(torch_clip_by_global_norm(0.05), optax.adam(0.01))),
}
ALL_OPTIMIZER_CASES = {**OPTIMIZER_CASES, **MORE_OPTIMIZER_CASES}

# id: (rows, batch size, the rows that weigh 0 or None (no sample weights), schedule): a
# partial last batch, and a batch whose rows all weigh 0, which takes no step (no decay, no
# momentum, Adam's step count not advanced); a rate that halves each epoch (the decoupled
# decay's with it).
DATA_CASES = {
    "partial-and-weightless-batches": (37, 8, slice(8, 16), None),
    "schedule": (37, 8, None, fastbp.schedules.StepDecay(1, gamma=0.5)),
}
# id: (dtype, n_threads, sparse X, FASTBP_SPLIT): the same fit on two threads, split by rows;
# X as a CSR matrix, whose first layer's rows step lazily where the rule allows (on the rows
# a batch names, the others caught up), on one thread and on the row pool's two; float32.
INPUT_CASES = {
    "float64-two-threads-rows": ("float64", 2, False, "rows"),
    "float64-sparse": ("float64", 1, True, None),
    "float64-sparse-two-threads": ("float64", 2, True, None),
    "float32": ("float32", 1, False, None),
}
# float32 against the float64 oracle after 20 steps: each array within this of the largest
# entry of the arrays (the rounding of 20 steps of a float32 fit, amplified where the
# adaptive rules divide by a root of a small sum).
FLOAT32_TOLERANCE = 2e-4


def optax_fit(transformation, params, activations, loss, X, Y, row_weights, batch_size,
              rates):
    """Trainer.fit with shuffle=False, in JAX, for len(rates) epochs at rates[e] / rates[0]
    of the transformation's rate (every rule's step is linear in its rate): a batch whose
    rows all weigh 0 is skipped. Returns the parameters and each epoch's loss."""
    state = transformation.init(params)
    value_and_grad = jax.jit(jax.value_and_grad(batch_loss), static_argnums=(1, 2))
    n_rows = X.shape[0]
    weights = np.ones(n_rows) if row_weights is None else row_weights
    epoch_losses = []
    for rate in rates:
        total = 0.0
        for start in range(0, n_rows, batch_size):
            rows = slice(start, start + batch_size)
            if not weights[rows].sum() > 0:
                continue
            value, grads = value_and_grad(params, activations, loss, X[rows], Y[rows],
                                          weights[rows])
            updates, state = transformation.update(grads, state, params)
            updates = jax.tree.map(lambda u: u * (rate / rates[0]), updates)
            params = optax.apply_updates(params, updates)
            total += float(value) * float(weights[rows].sum())
        epoch_losses.append(total / weights.sum())
    return params, epoch_losses


@pytest.mark.parametrize("data", DATA_CASES)
@pytest.mark.parametrize("case", ALL_OPTIMIZER_CASES)
def test_steps_equal_optax_on_varied_data_and_inputs(case, data, monkeypatch):
    """Every rule, 3 epochs of 5 batches: a partial last batch and a batch whose rows all
    weigh 0 (14 steps), or a schedule (15); each fit on two threads, on a CSR X (one thread
    and two) and in float32, against the same oracle."""
    optimizer, keywords, transformation = ALL_OPTIMIZER_CASES[case]
    n_rows, batch_size, weightless, schedule = DATA_CASES[data]
    sizes, activations, loss = [12, 8, 4], ("swish", "softmax"), "cce"
    rng = rng_for("varied", case, data)
    weights, biases, X, Y = make_problem(sizes, activations, loss, "labels", rng, n_rows=n_rows)
    X[rng.uniform(size=X.shape) > 0.2] = 0.0     # a column of W1 sits out about 1 batch in 4
    row_weights = None
    if weightless is not None:
        row_weights = rng.uniform(0.2, 2.0, size=n_rows)
        row_weights[weightless] = 0.0
    epochs = 3
    rates = [optimizer.learning_rate if schedule is None
             else schedule.learning_rate(epoch, optimizer.learning_rate)
             for epoch in range(epochs)]
    params, epoch_losses = optax_fit(transformation, as_jax_params(weights, biases),
                                     activations, loss, X, dense_targets(Y, sizes[-1]),
                                     row_weights, batch_size, rates)
    expected = [np.asarray(W) for W in params["W"]] + [np.asarray(b) for b in params["b"]]
    moved = max(float(np.max(np.abs(np.asarray(W) - W0))) for W, W0 in zip(params["W"], weights))
    assert moved > 1e-3, "the steps hardly moved the weights"
    scale = max(float(np.max(np.abs(e))) for e in expected)
    import scipy.sparse
    for kind, (dtype, n_threads, sparse, split) in INPUT_CASES.items():
        if split is None:
            monkeypatch.delenv("FASTBP_SPLIT", raising=False)
        else:
            monkeypatch.setenv("FASTBP_SPLIT", split)
        model = fastbp.MLP(sizes, list(activations), dtype=dtype, seed=0)
        model.weights = [W.astype(dtype) for W in weights]
        model.biases = [b.astype(dtype) for b in biases]
        trainer = fastbp.Trainer(loss, optimizer=optimizer, epochs=epochs,
                                 batch_size=batch_size, shuffle=False, schedule=schedule,
                                 n_threads=n_threads, **keywords)
        inputs = scipy.sparse.csr_matrix(X.astype(dtype)) if sparse else X.astype(dtype)
        history = trainer.fit(model, inputs, Y, sample_weight=row_weights)
        actual = list(model.weights) + list(model.biases)
        if dtype == "float64":
            assert_close_lists(actual, expected, kind)
            np.testing.assert_allclose(history.loss, epoch_losses, rtol=RTOL, err_msg=kind)
        else:
            for i, (a, e) in enumerate(zip(actual, expected)):
                np.testing.assert_allclose(a, e, rtol=0, atol=FLOAT32_TOLERANCE * scale,
                                           err_msg=f"{kind}[{i}]")
            np.testing.assert_allclose(history.loss, epoch_losses, rtol=FLOAT32_TOLERANCE,
                                       err_msg=kind)


def test_the_oracle_covers_every_activation_loss_and_rule_the_core_knows():
    """A new activation, loss or optimizer rule cannot escape the oracle (or the NumPy
    reference): each must be written here in JAX before the suite passes."""
    import reference
    from fastbp import _core
    assert set(ACTIVATIONS) == set(fastbp.model.ACTIVATIONS) == set(reference.ACTIVATIONS)
    covered_losses = {fastbp.losses.get(loss).name for _, loss, _ in LOSSES}
    assert covered_losses == set(_core.LOSS_CODES)
    covered_rules = {case[0].code_name for case in OPTIMIZER_CASES.values()}
    assert covered_rules == set(_core.OPTIMIZER_CODES)
