"""Issue 4, the trainer's features, against tests/reference.py (and torch.optim when it is
installed): activations and Huber, optimizers with weight decay and clipping, optimizer
state across fits, sample and class weights, dropout, schedules, validation and metrics,
early stopping and the time budget, Ctrl-C, progress output.

Everything is float64 and compared with the reference at rtol ~1e-9 unless it says
bit-identical. Small problems throughout: the file runs in seconds.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402
from bad_weights import BAD_SAMPLE_WEIGHTS  # noqa: E402

import fastbp  # noqa: E402
from fastbp import callbacks, losses, metrics, optimizers, schedules  # noqa: E402

NEW_ACTIVATIONS = ("elu", "softplus", "gelu", "swish")


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_model(sizes, activations, W, b, dtype="float64", dropout=0.0):
    model = fastbp.MLP(sizes, list(activations), dtype=dtype, seed=0, dropout=dropout)
    model.weights = [np.asarray(w, dtype=dtype) for w in W]
    model.biases = [np.asarray(v, dtype=dtype) for v in b]
    return model


def params(model):
    return [p.copy() for p in model.weights + model.biases]


def flat(model):
    return np.concatenate([p.ravel() for p in model.weights + model.biases])


def copies(W, b):
    return [w.copy() for w in W], [v.copy() for v in b]


def assert_params_close(actual, expected, rtol=1e-9, atol=1e-12):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def assert_params_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


def problem(sizes, activations, loss, n, seed, targets=None):
    return ref.make_problem(sizes, activations, loss, n, rng_for(seed, *sizes, *activations),
                            targets)


# ================================================================ 1. activations and Huber

ACTIVATION_NETS = ([("hidden", act) for act in NEW_ACTIVATIONS]
                   + [("output", act) for act in NEW_ACTIVATIONS])


def _net_for(place, act):
    """[4, 5, 3]: the activation on the hidden layer (identity output) or on the output
    (tanh hidden layer)."""
    return (act, "identity") if place == "hidden" else ("tanh", act)


@pytest.mark.parametrize("place,act", ACTIVATION_NETS, ids=[f"{p}-{a}" for p, a in ACTIVATION_NETS])
@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_new_activation_gradients_match_finite_differences(place, act, loss):
    acts = _net_for(place, act)
    sizes = [4, 5, 3]
    W, b, X, Y = problem(sizes, acts, "mse", 7, (place, act, loss))
    model = make_model(sizes, acts, W, b)

    # the forward pass is the reference's
    np.testing.assert_allclose(model.predict(X), ref.forward(W, b, acts, X)[-1],
                               rtol=1e-12, atol=1e-14)
    value, gW, gb = model.gradients(X, Y, loss)
    ref_value, ref_gW, ref_gb = ref.gradients(W, b, acts, X, Y, loss)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert_params_close(gW + gb, ref_gW + ref_gb, rtol=1e-9, atol=1e-13)

    # and both are the derivative of fastbp's own loss (central differences on the live
    # parameters)
    num_gW, num_gb = ref.numerical_gradients(
        model.weights, model.biases, acts, X, Y, loss,
        loss_fn=lambda: model.evaluate(X, Y, loss))
    assert_params_close(gW + gb, num_gW + num_gb, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("act", NEW_ACTIVATIONS)
def test_new_activations_values_and_derivatives_of_the_reference(act):
    """The reference itself: f' is the derivative of f (checked on a grid that includes
    large arguments on both sides), and known values."""
    z = np.concatenate([np.linspace(-6, 6, 241), [-40.0, -20.0, 20.0, 40.0]])
    h = 1e-6
    numeric = (ref.activate(act, z + h) - ref.activate(act, z - h)) / (2 * h)
    np.testing.assert_allclose(ref.activation_derivative(act, z), numeric, rtol=1e-6, atol=1e-8)
    known = {"elu": (-1.0, math.exp(-1.0) - 1.0), "softplus": (0.0, math.log(2)),
             "gelu": (1.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))),
             "swish": (1.0, 1 / (1 + math.exp(-1)))}
    x, expected = known[act]
    assert ref.activate(act, np.array([x]))[0] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("act", NEW_ACTIVATIONS)
def test_new_activations_float32_forward_and_extremes(act):
    """float32 follows the reference, and large pre-activations stay finite."""
    sizes = [3, 4, 2]
    acts = (act, act)
    rng = rng_for("f32", act)
    W, b = ref.init_parameters(sizes, rng)
    X = rng.normal(size=(6, 3)) * 3
    model = make_model(sizes, acts, W, b, dtype="float32")
    expected = ref.forward(model.weights, model.biases, acts, X.astype(np.float32))[-1]
    np.testing.assert_allclose(model.predict(X), expected, rtol=2e-5, atol=2e-6)
    big = np.array([[80.0, -80.0, 0.0], [-80.0, 80.0, 1.0]])
    identity = fastbp.MLP([3, 3], [act], dtype="float32")
    identity.weights = [np.eye(3)]
    out = identity.predict(big)
    np.testing.assert_allclose(out, ref.activate(act, big), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_value_gradient_and_finite_differences(delta):
    sizes = [4, 5, 3]
    acts = ("swish", "identity")
    W, b, X, _ = problem(sizes, acts, "mse", 9, ("huber", delta))
    model = make_model(sizes, acts, W, b)
    # errors spread on both sides of delta
    Y = model.predict(X) + rng_for("huber-y", delta).uniform(-3 * delta, 3 * delta, size=(9, 3))
    loss = losses.Huber(delta)
    ref_loss = ("huber", delta)
    errors = np.abs(model.predict(X) - Y)
    assert (errors < delta).any() and (errors > delta).any()

    # torch.nn.HuberLoss(delta=delta) written out: mean of 0.5 d^2 or delta (|d| - delta/2)
    d = model.predict(X) - Y
    torch_formula = np.mean(np.where(np.abs(d) < delta, 0.5 * d * d,
                                     delta * (np.abs(d) - 0.5 * delta)))
    assert model.evaluate(X, Y, loss) == pytest.approx(torch_formula, rel=1e-12)
    assert loss.value(Y, model.predict(X)) == pytest.approx(torch_formula, rel=1e-12)
    np.testing.assert_allclose(loss.gradient(Y, model.predict(X)),
                               np.clip(d, -delta, delta) / d.size, rtol=1e-12)

    value, gW, gb = model.gradients(X, Y, loss)
    ref_value, ref_gW, ref_gb = ref.gradients(W, b, acts, X, Y, ref_loss)
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert_params_close(gW + gb, ref_gW + ref_gb, rtol=1e-9, atol=1e-13)
    num_gW, num_gb = ref.numerical_gradients(model.weights, model.biases, acts, X, Y, ref_loss,
                                             loss_fn=lambda: model.evaluate(X, Y, loss))
    assert_params_close(gW + gb, num_gW + num_gb, rtol=1e-5, atol=1e-8)


def test_huber_name_is_delta_one():
    sizes, acts = [3, 2], ("identity",)
    W, b, X, Y = problem(sizes, acts, "mse", 5, "huber-name")
    model = make_model(sizes, acts, W, b)
    assert model.evaluate(X, Y, "huber") == model.evaluate(X, Y, losses.Huber(1.0))
    with pytest.raises(ValueError):
        losses.Huber(0.0)
    with pytest.raises(ValueError):
        losses.Huber(-1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["cce", "bce"])
def test_a_clipped_log_loss_clips_the_value_not_the_gradient(kind, dtype):
    """losses.*Crossentropy(clip=c): the value takes the probabilities clipped to
    [c, 1 - c] (scikit-learn's log_loss), with sample weights; the gradient is the exact
    loss's; saturated rows cap at -log c; clip=None is the exact loss, bit for bit."""
    rng = np.random.default_rng(3)
    n_out = 3
    activation = "softmax" if kind == "cce" else "sigmoid"
    loss_class = losses.CategoricalCrossentropy if kind == "cce" else losses.BinaryCrossentropy
    model = fastbp.MLP([4, 5, n_out], ["tanh", activation], dtype=dtype, seed=0)
    model.weights[1][...] *= 40                    # saturated outputs in some rows
    X = rng.normal(size=(30, 4)).astype(dtype)
    if kind == "cce":
        Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, 30)]
    else:
        Y = rng.integers(0, 2, size=(30, n_out)).astype(dtype)
    weights = rng.uniform(0.5, 2, 30)
    eps = float(np.finfo(dtype).eps)
    p = np.clip(model.predict(X).astype(np.float64), eps, 1 - eps)
    rows = -(Y * np.log(p)).sum(axis=1) if kind == "cce" else \
        -(Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean(axis=1)
    assert rows.max() > -np.log(1e-3)             # the test's rows do saturate
    expected = float(np.average(rows, weights=weights))
    clipped, exact = loss_class(clip=eps), loss_class()
    value, *g_clipped = model.gradients(X, Y, clipped, sample_weight=weights)
    exact_value, *g_exact = model.gradients(X, Y, exact, sample_weight=weights)
    np.testing.assert_allclose(value, expected, rtol=1e-5 if dtype == "float32" else 1e-12)
    assert exact_value > value
    for a, b in zip(g_clipped[0] + g_clipped[1], g_exact[0] + g_exact[1]):
        assert np.array_equal(a, b)
    np.testing.assert_allclose(model.evaluate(X, Y, clipped),
                               float(np.mean(rows)), rtol=1e-5 if dtype == "float32" else 1e-12)
    assert model.evaluate(X, Y, exact) == model.evaluate(X, Y, kind)
    # training reports the clipped figure and takes the exact loss's steps
    fits = []
    for loss in (clipped, exact):
        copy = fastbp.MLP([4, 5, n_out], ["tanh", activation], dtype=dtype, seed=0)
        copy.set_parameter_vector(model.parameter_vector())
        history = fastbp.Trainer(loss, learning_rate=0.01, epochs=2, batch_size=10, seed=0,
                                 n_threads=1).fit(copy, X, Y)
        fits.append((history.loss, copy.parameter_vector()))
    assert np.array_equal(fits[0][1], fits[1][1]) and fits[0][0][0] < fits[1][0][0]


def test_a_clip_is_checked():
    for clip in (0, 0.5, -1e-9, float("nan"), 2):
        with pytest.raises(ValueError, match="clip must be"):
            losses.CategoricalCrossentropy(clip=clip)
    with pytest.raises(TypeError):
        losses.BinaryCrossentropy(clip="small")
    assert repr(losses.BinaryCrossentropy(clip=0.25)) == "BinaryCrossentropy(clip=0.25)"
    assert repr(losses.CategoricalCrossentropy()) == "CategoricalCrossentropy()"
    assert losses.CategoricalCrossentropy(clip=1e-3) != losses.CategoricalCrossentropy()
    model = fastbp.MLP([2, 2], ["softmax"], seed=0)
    with pytest.raises(ValueError, match="clip=1e-50 is too small for the model's float32"):
        fastbp.Trainer(losses.CategoricalCrossentropy(clip=1e-50)).fit(
            model, np.zeros((4, 2), np.float32), [0, 1, 0, 1])


@pytest.mark.parametrize("kind, output", [("cce", "sigmoid"), ("cce", "identity"),
                                          ("bce", "softmax"), ("bce", "tanh")])
def test_a_clip_an_output_layer_would_leave_unused_is_refused(kind, output):
    """A clip applies where the output layer is the fused one (softmax with categorical,
    sigmoid with binary cross-entropy); on any other the loss took its own bound and the
    clip given went unused, unsaid. Refused by every call that takes a loss, the model
    as it was."""
    loss = (losses.CategoricalCrossentropy if kind == "cce" else losses.BinaryCrossentropy)(
        clip=1e-3)
    model = fastbp.MLP([3, 4, 2], ["tanh", output], seed=0)
    X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    Y = np.eye(2, dtype=np.float32)[[0, 1] * 4]
    before = model.parameter_vector().copy()
    trainer = fastbp.Trainer(loss, epochs=1, batch_size=4, seed=0)
    fused = "softmax" if kind == "cce" else "sigmoid"
    message = f"clip=0.001 applies where the output layer is {fused}.*this model's is {output}"
    for call in (lambda: trainer.fit(model, X, Y), lambda: trainer.partial_fit(model, X, Y),
                 lambda: model.evaluate(X, Y, loss), lambda: model.gradients(X, Y, loss)):
        with pytest.raises(ValueError, match=message):
            call()
    assert np.array_equal(model.parameter_vector(), before)
    # the same loss without a clip, and the clip on the fused output, are taken
    fastbp.Trainer(type(loss)(), epochs=1, batch_size=4, seed=0).fit(model, X, Y)
    fastbp.Trainer(loss, epochs=1, batch_size=4, seed=0).fit(
        fastbp.MLP([3, 4, 2], ["tanh", fused], seed=0), X, Y)


# ================================================================ 2. optimizers

# (fastbp optimizer, reference optimizer arguments)
OPTIMIZERS = {
    "sgd": (lambda: optimizers.SGD(0.1), dict(name="sgd", learning_rate=0.1)),
    "momentum": (lambda: optimizers.SGD(0.1, momentum=0.9),
                 dict(name="sgd", learning_rate=0.1, momentum=0.9)),
    "nesterov": (lambda: optimizers.SGD(0.05, momentum=0.8, nesterov=True),
                 dict(name="sgd", learning_rate=0.05, momentum=0.8, nesterov=True)),
    "adam": (lambda: optimizers.Adam(0.01), dict(name="adam", learning_rate=0.01)),
    "adam-custom": (lambda: optimizers.Adam(0.02, beta1=0.8, beta2=0.99, epsilon=1e-6),
                    dict(name="adam", learning_rate=0.02, beta1=0.8, beta2=0.99, epsilon=1e-6)),
    "rmsprop": (lambda: optimizers.RMSprop(0.01, alpha=0.9),
                dict(name="rmsprop", learning_rate=0.01, alpha=0.9)),
    "rmsprop-default": (lambda: optimizers.RMSprop(0.005),
                        dict(name="rmsprop", learning_rate=0.005)),
    "adagrad": (lambda: optimizers.Adagrad(0.05), dict(name="adagrad", learning_rate=0.05)),
}
DECAYS = {"no-decay": (0.0, False), "coupled": (0.1, False), "decoupled": (0.1, True)}
# (sizes, activations, loss, targets)
NETS = {
    "tanh-mse": ([5, 6, 3], ("tanh", "identity"), "mse", None),
    "gelu-cce": ([5, 6, 4, 3], ("gelu", "elu", "softmax"), "cce", "labels"),
}
CLIP = 0.05     # below every gradient norm of these problems: the clip is active


def run_both(net, opt_name, decay, clip, epochs, n, batch_size, seed):
    """The same training in fastbp and in the reference; returns both."""
    sizes, acts, loss, targets = NETS[net]
    W, b, X, Y = problem(sizes, acts, loss, n, (net, opt_name, decay, clip, seed), targets)
    weight_decay, decoupled = DECAYS[decay]
    make_fastbp, ref_args = OPTIMIZERS[opt_name]
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer(loss, optimizer=make_fastbp(), epochs=epochs, batch_size=batch_size,
                             shuffle=False, weight_decay=weight_decay,
                             decoupled_weight_decay=decoupled, clip_norm=clip)
    history = trainer.fit(model, X, Y)

    rW, rb = copies(W, b)
    optimizer = ref.make_optimizer(**ref_args, weight_decay=weight_decay,
                                   decoupled_weight_decay=decoupled, clip_norm=clip)
    state = ref.new_state()
    ref_losses = [ref.train_epoch(rW, rb, acts, X, Y, loss, optimizer, state, batch_size)
                  for _ in range(epochs)]
    if clip is not None:     # the clip was active at the first step
        _, gW, gb = ref.gradients(W, b, acts, X[:batch_size], Y[:batch_size], loss)
        assert math.sqrt(sum(np.sum(g ** 2) for g in gW + gb)) > 2 * clip
    return model, history, rW + rb, ref_losses, W + b


@pytest.mark.parametrize("clip", [None, CLIP], ids=["no-clip", "clip"])
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_one_step_equals_reference(opt_name, decay, clip):
    model, history, expected, ref_losses, start = run_both(
        "tanh-mse", opt_name, decay, clip, epochs=1, n=8, batch_size=8, seed=1)
    assert_params_close(params(model), expected, rtol=1e-10, atol=1e-14)
    assert history.loss == pytest.approx(ref_losses, rel=1e-12)
    assert max(np.abs(p - q).max() for p, q in zip(expected, start)) > 1e-4


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("clip", [None, CLIP], ids=["no-clip", "clip"])
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_several_epochs_equal_reference(opt_name, decay, clip, net):
    model, history, expected, ref_losses, start = run_both(
        net, opt_name, decay, clip, epochs=3, n=30, batch_size=8, seed=2)   # last batch: 6 rows
    assert_params_close(params(model), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-9)


def test_first_step_formulas():
    """The first step of each rule, written out from the formulas (not the reference):
    Adam and Adagrad move by lr * g / (|g| + eps'), RMSprop by lr * g / (sqrt(1-alpha)|g| + eps),
    momentum and Nesterov like SGD (b_1 = g) and Nesterov by lr (1 + mu) g."""
    sizes, acts = [4, 5, 2], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 6, "formulas")
    _, gW, gb = ref.gradients(W, b, acts, X, Y, "mse")
    g = np.concatenate([x.ravel() for x in gW + gb])
    p0 = np.concatenate([x.ravel() for x in W + b])
    lr = 0.01
    cases = [
        (optimizers.SGD(lr), p0 - lr * g),
        (optimizers.SGD(lr, momentum=0.9), p0 - lr * g),
        (optimizers.SGD(lr, momentum=0.9, nesterov=True), p0 - lr * 1.9 * g),
        (optimizers.Adam(lr), p0 - lr * g / (np.abs(g) + 1e-8)),
        (optimizers.RMSprop(lr, alpha=0.99), p0 - lr * g / (math.sqrt(0.01) * np.abs(g) + 1e-8)),
        (optimizers.Adagrad(lr), p0 - lr * g / (np.abs(g) + 1e-10)),
    ]
    for optimizer, expected in cases:
        model = make_model(sizes, acts, W, b)
        fastbp.Trainer("mse", optimizer=optimizer, batch_size=6, shuffle=False).fit(model, X, Y)
        np.testing.assert_allclose(flat(model), expected, rtol=1e-12, atol=1e-15,
                                   err_msg=repr(optimizer))


def test_optimizer_names_use_the_trainers_learning_rate():
    sizes, acts = [4, 5, 2], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 20, "names")
    for name, cls in (("sgd", optimizers.SGD), ("adam", optimizers.Adam),
                      ("rmsprop", optimizers.RMSprop), ("adagrad", optimizers.Adagrad)):
        by_name = make_model(sizes, acts, W, b)
        by_object = make_model(sizes, acts, W, b)
        fastbp.Trainer("mse", optimizer=name.upper(), learning_rate=0.003, epochs=2, batch_size=7,
                       seed=3).fit(by_name, X, Y)
        fastbp.Trainer("mse", optimizer=cls(0.003), learning_rate=99.0, epochs=2, batch_size=7,
                       seed=3).fit(by_object, X, Y)
        assert_params_equal(params(by_name), params(by_object))
    assert optimizers.Adam().learning_rate == 0.001 and optimizers.RMSprop().alpha == 0.99
    assert optimizers.Adagrad().epsilon == 1e-10 and optimizers.SGD().learning_rate == 0.01


def test_biases_never_decay(monkeypatch):
    """With a zero gradient (targets equal the outputs), weights shrink by (1 - lr wd) and
    biases stay, coupled or decoupled."""
    sizes, acts = [3, 4, 2], ("tanh", "identity")
    W, b, X, _ = problem(sizes, acts, "mse", 5, "decay")
    # The targets are the outputs of the training step's own (BLAS) products, bit for bit:
    # predict's few-row kernels sum in another order (equal only to rounding), and so may
    # the own product kernels, which "auto" picks per pass by timing (in the checked -O0
    # build, where they use no fused multiply-add, a predict on them and a fit on BLAS left
    # a gradient 1 ulp off zero: a bias moved in one CI run).
    monkeypatch.setenv("FASTBP_FEW_ROWS", "0")
    monkeypatch.setenv("FASTBP_KERNELS", "blas")
    model = make_model(sizes, acts, W, b)
    Y = model.predict(X)
    for decoupled in (False, True):
        for optimizer in (optimizers.SGD(0.1), optimizers.SGD(0.1, momentum=0.5)):
            m = make_model(sizes, acts, W, b)
            fastbp.Trainer("mse", optimizer=optimizer, weight_decay=0.5, batch_size=5,
                           shuffle=False, decoupled_weight_decay=decoupled).fit(m, X, Y)
            for w, w0 in zip(m.weights, W):
                np.testing.assert_allclose(w, w0 * (1 - 0.1 * 0.5), rtol=1e-14)
            assert_params_equal(m.biases, b)


def test_clip_is_inactive_below_the_norm():
    """A clip_norm above the gradient's norm changes nothing: the unfolded path equals
    momentum without clipping (which folds v <- mu v + g into the GEMM: same arithmetic in
    another order, so equal to rounding)."""
    sizes, acts = [4, 5, 2], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 8, "clip-inactive")
    clipped, plain = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    for model, clip in ((clipped, 1e6), (plain, None)):
        fastbp.Trainer("mse", optimizer=optimizers.SGD(0.1, momentum=0.9), clip_norm=clip,
                       batch_size=4, epochs=2, shuffle=False).fit(model, X, Y)
    assert_params_close(params(clipped), params(plain), rtol=1e-13, atol=1e-15)


def test_clip_follows_torch_just_above_the_threshold():
    """torch.nn.utils.clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)): with
    max_norm a hair above the norm (by less than 1e-6) it still scales the gradient."""
    sizes, acts = [4, 5, 2], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 8, "clip-edge")
    _, gW, gb = ref.gradients(W, b, acts, X, Y, "mse")
    norm = math.sqrt(sum(np.sum(g ** 2) for g in gW + gb))
    clip = norm + 5e-7
    model = make_model(sizes, acts, W, b)
    fastbp.Trainer("mse", optimizer=optimizers.SGD(1.0), clip_norm=clip, batch_size=8,
                   shuffle=False).fit(model, X, Y)
    rW, rb = copies(W, b)
    ref.train_epoch(rW, rb, acts, X, Y, "mse", ref.make_optimizer("sgd", 1.0, clip_norm=clip),
                    ref.new_state(), 8)
    assert_params_close(params(model), rW + rb, rtol=1e-12, atol=1e-15)


def test_optimizer_arguments_validated():
    for make in (lambda: optimizers.SGD(-0.1), lambda: optimizers.SGD(0.1, momentum=1.0),
                 lambda: optimizers.SGD(0.1, momentum=-0.5), lambda: optimizers.SGD(0.1, nesterov=True),
                 lambda: optimizers.Adam(0.1, beta1=1.0), lambda: optimizers.Adam(0.1, beta2=1.5),
                 lambda: optimizers.Adam(float("nan")), lambda: optimizers.RMSprop(0.1, alpha=1.0),
                 lambda: optimizers.Adagrad(0.1, epsilon=-1.0)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(TypeError):
        optimizers.SGD(0.1, momentum=0.5, nesterov=1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        fastbp.Trainer("mse", optimizer="lbfgs")
    with pytest.raises(TypeError):
        fastbp.Trainer("mse", optimizer=3)
    with pytest.raises(ValueError):
        fastbp.Trainer("mse", clip_norm=0)
    with pytest.raises(ValueError):
        fastbp.Trainer("mse", weight_decay=-1e-3)


def test_an_epsilon_of_0_is_refused_by_every_rule_that_divides_by_it():
    """With epsilon 0, a weight whose gradients have all been 0 (an input column that is 0
    in every row so far: MNIST's border pixels) steps by 0 / 0: the dense step made NaN and
    the epoch was rolled back as diverged, while the same data as sparse input (whose lazy
    rows skip such weights) trained. Refused, as scikit-learn refuses it, when the object
    is made and when the attribute is set later (the fit rebuilds the rule)."""
    X = np.random.default_rng(0).normal(size=(32, 3))
    X[:, 1] = 0
    for rule in (optimizers.Adam, optimizers.RMSprop, optimizers.Adagrad):
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0.0 .with 0"):
            rule(0.01, epsilon=0)
        optimizer = rule(0.01, epsilon=1e-30)
        model = fastbp.MLP([3, 4, 1], "tanh", seed=0, dtype="float64")
        history = fastbp.Trainer("mse", optimizer=optimizer, batch_size=8, epochs=2,
                                 seed=0).fit(model, X, X[:, :1])
        assert not history.diverged and np.isfinite(model.parameter_vector()).all()
        optimizer.epsilon = 0.0
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0.0 .with 0"):
            fastbp.Trainer("mse", optimizer=optimizer, seed=0).fit(model, X, X[:, :1])


# ---------------------------------------------------------------- torch.optim itself

TORCH_CASES = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad",
               "momentum-coupled-clip", "adam-coupled", "rmsprop-coupled-clip", "adagrad-coupled"]


@pytest.mark.parametrize("case", TORCH_CASES)
def test_against_torch_optim(case):
    torch = pytest.importorskip("torch")
    sizes, acts = [5, 7, 3], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 24, ("torch", case))
    base = case.split("-")[0]
    weight_decay = 0.1 if ("coupled" in case or base == "adamw") else 0.0
    clip = 0.05 if "clip" in case else None
    lr = {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.1, "adam": 0.01, "adamw": 0.01,
          "rmsprop": 0.01, "adagrad": 0.05}[base]
    fastbp_optimizer = {
        "sgd": optimizers.SGD(lr), "momentum": optimizers.SGD(lr, momentum=0.9),
        "nesterov": optimizers.SGD(lr, momentum=0.9, nesterov=True),
        "adam": optimizers.Adam(lr), "adamw": optimizers.Adam(lr),
        "rmsprop": optimizers.RMSprop(lr, alpha=0.9), "adagrad": optimizers.Adagrad(lr)}[base]
    epochs, batch_size = 2, 8
    model = make_model(sizes, acts, W, b)
    fastbp.Trainer("mse", optimizer=fastbp_optimizer, epochs=epochs, batch_size=batch_size,
                   shuffle=False, weight_decay=weight_decay, decoupled_weight_decay=base == "adamw",
                   clip_norm=clip).fit(model, X, Y)

    tW = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in W]
    tb = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in b]
    groups = [{"params": tW, "weight_decay": weight_decay}, {"params": tb, "weight_decay": 0.0}]
    opt = {"sgd": lambda: torch.optim.SGD(groups, lr=lr),
           "momentum": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9),
           "nesterov": lambda: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
           "adam": lambda: torch.optim.Adam(groups, lr=lr),
           "adamw": lambda: torch.optim.AdamW(groups, lr=lr),
           "rmsprop": lambda: torch.optim.RMSprop(groups, lr=lr, alpha=0.9),
           "adagrad": lambda: torch.optim.Adagrad(groups, lr=lr)}[base]()
    tX, tY = torch.tensor(X), torch.tensor(Y)
    for _ in range(epochs):
        for start in range(0, len(X), batch_size):
            x, y = tX[start:start + batch_size], tY[start:start + batch_size]
            out = torch.tanh(x @ tW[0] + tb[0]) @ tW[1] + tb[1]
            loss = torch.mean((out - y) ** 2)
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(tW + tb, clip)
            opt.step()
    expected = [t.detach().numpy() for t in tW + tb]
    assert_params_close(params(model), expected, rtol=1e-9, atol=1e-12)


# ================================================================ 3. optimizer state across calls

STATE_OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad"]


def _state_problem(seed):
    sizes, acts = [4, 6, 3], ("tanh", "softmax")
    W, b, X, Y = problem(sizes, acts, "cce", 26, ("state", seed), "labels")
    return sizes, acts, W, b, X, Y


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("opt_name", STATE_OPTIMIZERS)
def test_two_partial_fits_equal_two_epochs(opt_name, shuffle):
    sizes, acts, W, b, X, Y = _state_problem(1)
    make_optimizer = OPTIMIZERS[opt_name][0]
    settings = dict(optimizer=make_optimizer(), batch_size=8, shuffle=shuffle, seed=5,
                    weight_decay=0.01, clip_norm=0.5)
    online, batch = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    online_trainer = fastbp.Trainer("cce", **settings)
    first = online_trainer.partial_fit(online, X, Y)
    second = online_trainer.partial_fit(online, X, Y)
    history = fastbp.Trainer("cce", epochs=2, **settings).fit(batch, X, Y)
    assert_params_equal(params(online), params(batch))
    assert first.loss + second.loss == history.loss
    if not shuffle:
        rW, rb = copies(W, b)
        optimizer = ref.make_optimizer(**OPTIMIZERS[opt_name][1], weight_decay=0.01,
                                       clip_norm=0.5)
        state = ref.new_state()
        for _ in range(2):
            ref.train_epoch(rW, rb, acts, X, Y, "cce", optimizer, state, 8)
        assert_params_close(params(online), rW + rb)


@pytest.mark.parametrize("opt_name", STATE_OPTIMIZERS)
def test_fit_continues_from_parameters_and_state(opt_name):
    sizes, acts, W, b, X, Y = _state_problem(2)
    make_optimizer = OPTIMIZERS[opt_name][0]
    twice, once = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("cce", optimizer=make_optimizer(), epochs=1, batch_size=8, seed=1)
    h1 = trainer.fit(twice, X, Y)
    h2 = trainer.fit(twice, X, Y)
    h = fastbp.Trainer("cce", optimizer=make_optimizer(), epochs=2, batch_size=8,
                       seed=1).fit(once, X, Y)
    assert_params_equal(params(twice), params(once))
    assert h1.loss + h2.loss == h.loss


@pytest.mark.parametrize("opt_name", STATE_OPTIMIZERS)
def test_online_learning_on_new_chunks_equals_reference(opt_name):
    """partial_fit on successive chunks of new data keeps the state: the reference's
    train_epoch on each chunk with one state."""
    sizes, acts, W, b, X, Y = _state_problem(3)
    make_optimizer, ref_args = OPTIMIZERS[opt_name]
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("cce", optimizer=make_optimizer(), batch_size=5, shuffle=False)
    rW, rb = copies(W, b)
    optimizer, state = ref.make_optimizer(**ref_args), ref.new_state()
    for chunk in (slice(0, 9), slice(9, 20), slice(20, 26)):
        history = trainer.partial_fit(model, X[chunk], Y[chunk])
        ref_loss = ref.train_epoch(rW, rb, acts, X[chunk], Y[chunk], "cce", optimizer, state, 5)
        assert history.loss[0] == pytest.approx(ref_loss, rel=1e-9)
    assert_params_close(params(model), rW + rb)


@pytest.mark.parametrize("opt_name", STATE_OPTIMIZERS)
def test_reset_restarts_state_schedule_and_shuffling(opt_name):
    sizes, acts, W, b, X, Y = _state_problem(4)
    make_optimizer = OPTIMIZERS[opt_name][0]
    settings = dict(optimizer=make_optimizer(), epochs=2, batch_size=8, seed=9,
                    schedule=schedules.ExponentialDecay(0.5))
    fresh = make_model(sizes, acts, W, b)
    fresh_history = fastbp.Trainer("cce", **settings).fit(fresh, X, Y)

    trainer = fastbp.Trainer("cce", **settings)
    model = make_model(sizes, acts, W, b)
    trainer.fit(model, X, Y)
    trainer.reset()
    model.weights, model.biases = W, b
    history = trainer.fit(model, X, Y)
    assert_params_equal(params(model), params(fresh))
    assert history.history["learning_rate"] == fresh_history.history["learning_rate"]

    # without reset, the same fit continues: different parameters and learning rates
    continued = trainer.fit(model, X, Y)
    assert continued.history["learning_rate"] == [0.25 * r for r in
                                                  fresh_history.history["learning_rate"]]


def test_state_belongs_to_one_model():
    """Training another model starts a fresh optimizer state (shuffle=False: the rest of
    the trainer's state does not matter)."""
    sizes, acts, W, b, X, Y = _state_problem(5)
    trainer = fastbp.Trainer("cce", optimizer=optimizers.Adam(0.01), batch_size=8,
                             shuffle=False)
    trainer.fit(make_model(sizes, acts, W, b), X, Y)
    other = make_model(sizes, acts, W, b)
    trainer.fit(other, X, Y)
    alone = make_model(sizes, acts, W, b)
    fastbp.Trainer("cce", optimizer=optimizers.Adam(0.01), batch_size=8,
                   shuffle=False).fit(alone, X, Y)
    assert_params_equal(params(other), params(alone))


@pytest.mark.parametrize("first,second", [("momentum", "adam"), ("adagrad", "rmsprop"),
                                          ("adam", "adagrad")])
def test_changing_the_optimizer_starts_a_fresh_state(first, second):
    """Setting trainer.optimizer to another rule between fits must not feed the old rule's
    buffers (and step count) to the new one: the second fit equals a fresh optimizer
    (torch: a new optimizer object) started from the current parameters."""
    sizes, acts, W, b, X, Y = _state_problem(6)
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("cce", optimizer=OPTIMIZERS[first][0](), batch_size=8,
                             shuffle=False)
    trainer.fit(model, X, Y)
    middle = params(model)
    trainer.optimizer = OPTIMIZERS[second][0]()
    trainer.fit(model, X, Y)

    n = len(W)
    rW, rb = [p.copy() for p in middle[:n]], [p.copy() for p in middle[n:]]
    ref.train_epoch(rW, rb, acts, X, Y, "cce", ref.make_optimizer(**OPTIMIZERS[second][1]),
                    ref.new_state(), 8)
    assert_params_close(params(model), rW + rb)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("change", ["momentum", "clip_on", "clip_off", "nesterov_on",
                                    "nesterov_off"])
def test_momentums_velocity_carries_over_whatever_the_settings_change(change, sparse):
    """Plain momentum without clipping keeps mu times the velocity (the folded update),
    every other momentum setting the velocity itself. Changing only the rule's settings
    between fits (the momentum, clipping on or off, Nesterov on or off) keeps the velocity
    and the step count, as documented: the four epochs equal the documented rule
    (b = mu b + g; p -= lr b, or lr (g + mu b) with Nesterov) written in NumPy over
    model.gradients. Before, a changed momentum scaled the first step by the old one and a
    changed layout started from zero."""
    import scipy.sparse
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6)) * (rng.random((64, 6)) < 0.5)
    Y = np.sin(X[:, :2])
    settings = {"momentum": [dict(momentum=0.9), dict(momentum=0.3)],
                "clip_on": [dict(momentum=0.8), dict(momentum=0.8, clip=1e30)],
                "clip_off": [dict(momentum=0.8, clip=1e30), dict(momentum=0.8)],
                "nesterov_on": [dict(momentum=0.8), dict(momentum=0.8, nesterov=True)],
                "nesterov_off": [dict(momentum=0.8, nesterov=True), dict(momentum=0.8)]}[change]
    model = fastbp.MLP([6, 8, 2], ["tanh", "identity"], dtype="float64", seed=0)
    reference_model = fastbp.MLP.from_bytes(model.to_bytes())
    trainer = fastbp.Trainer("mse", batch_size=8, shuffle=False, n_threads=1, epochs=2)
    for part in settings:
        trainer.optimizer = optimizers.SGD(0.02, momentum=part["momentum"],
                                           nesterov=part.get("nesterov", False))
        trainer.clip_norm = part.get("clip")
        trainer.fit(model, scipy.sparse.csr_array(X) if sparse else X, Y)
    assert trainer._step == 32                 # 4 epochs of 8 batches, none restarted
    velocity = None
    for part in settings:
        mu = part["momentum"]
        for _ in range(2):
            for start in range(0, 64, 8):
                _, grad_W, grad_b = reference_model.gradients(X[start:start + 8],
                                                              Y[start:start + 8], "mse")
                grads = grad_W + grad_b
                velocity = grads if velocity is None else \
                    [mu * v + g for v, g in zip(velocity, grads)]
                steps = [g + mu * v for g, v in zip(grads, velocity)] \
                    if part.get("nesterov") else velocity
                moved = [p - 0.02 * s for p, s in
                         zip(reference_model.weights + reference_model.biases, steps)]
                reference_model.weights, reference_model.biases = moved[:2], moved[2:]
    assert_params_close(params(model), reference_model.weights + reference_model.biases)


def test_a_diverged_epoch_leaves_no_optimizer_state_behind():
    """A diverged epoch restores the parameters to the start of that epoch, and the
    optimizer state with them. Here the first epoch diverges (momentum, learning rate 1e3),
    so a second fit with a sane rate equals a fresh trainer's (a momentum buffer left with
    the diverged velocities, ~1e109, would make it diverge at once)."""
    import warnings
    rng = rng_for("diverge")
    X, Y = rng.normal(size=(40, 4)), rng.normal(size=(40, 1))
    model = fastbp.MLP([4, 8, 1], ["relu", "identity"], dtype="float64", seed=0)
    start = params(model)
    trainer = fastbp.Trainer("mse", optimizer=optimizers.SGD(1e3, momentum=0.9), epochs=3,
                             batch_size=4, shuffle=False)
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = trainer.fit(model, X, Y)
    assert history.diverged and history.epochs == 0
    assert_params_equal(params(model), start)
    trainer.optimizer = optimizers.SGD(1e-3, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = trainer.fit(model, X, Y)
    fresh = fastbp.MLP([4, 8, 1], ["relu", "identity"], dtype="float64", seed=0)
    expected = fastbp.Trainer("mse", optimizer=optimizers.SGD(1e-3, momentum=0.9), epochs=3,
                              batch_size=4, shuffle=False).fit(fresh, X, Y)
    assert not again.diverged
    assert again.loss == expected.loss
    assert_params_equal(params(model), params(fresh))


# ================================================================ 4. sample and class weights

WEIGHT_NETS = {
    "mse": ([4, 5, 2], ("tanh", "identity"), "mse", None),
    "huber": ([4, 5, 2], ("softplus", "identity"), ("huber", 0.5), None),
    "cce": ([4, 5, 3], ("swish", "softmax"), "cce", "labels"),
    "bce": ([4, 5, 2], ("tanh", "sigmoid"), "bce", None),
}


def _loss_for_fastbp(loss):
    return losses.Huber(loss[1]) if isinstance(loss, tuple) else loss


@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("net", list(WEIGHT_NETS))
def test_weighted_minibatches_equal_reference(net, opt_name):
    sizes, acts, loss, targets = WEIGHT_NETS[net]
    W, b, X, Y = problem(sizes, acts, loss, 23, ("weights", net), targets)
    w = rng_for("w", net).uniform(0.0, 3.0, size=23)
    w[[2, 7]] = 0.0
    make_optimizer, ref_args = OPTIMIZERS[opt_name]
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer(_loss_for_fastbp(loss), optimizer=make_optimizer(), epochs=3,
                             batch_size=5, shuffle=False).fit(model, X, Y, sample_weight=w)
    rW, rb = copies(W, b)
    optimizer, state = ref.make_optimizer(**ref_args), ref.new_state()
    ref_losses = [ref.train_epoch(rW, rb, acts, X, Y, loss, optimizer, state, 5,
                                  sample_weight=w) for _ in range(3)]
    assert_params_close(params(model), rW + rb)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("net", list(WEIGHT_NETS))
def test_integer_weight_equals_repeating_the_row(net, opt_name):
    """Full batch (batch_size >= rows in both runs), so both runs take the same steps on
    the same loss: sum_i k_i l_i / sum_i k_i is the mean over the repeated rows. Equal up to
    the order of the sums (not bit for bit). Shuffling only reorders rows inside the batch."""
    sizes, acts, loss, targets = WEIGHT_NETS[net]
    W, b, X, Y = problem(sizes, acts, loss, 12, ("repeat", net), targets)
    k = rng_for("k", net).integers(0, 4, size=12)
    k[0] = 3
    repeated = np.repeat(np.arange(12), k)
    make_optimizer = OPTIMIZERS[opt_name][0]
    weighted, expanded = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    fb_loss = _loss_for_fastbp(loss)
    h1 = fastbp.Trainer(fb_loss, optimizer=make_optimizer(), epochs=4, batch_size=100,
                        seed=0).fit(weighted, X, Y, sample_weight=k)
    h2 = fastbp.Trainer(fb_loss, optimizer=make_optimizer(), epochs=4, batch_size=100,
                        seed=1).fit(expanded, X[repeated], Y[repeated])
    assert_params_close(params(weighted), params(expanded), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-12)


def test_equal_weights_equal_no_weights():
    sizes, acts, loss, targets = WEIGHT_NETS["cce"]
    W, b, X, Y = problem(sizes, acts, loss, 20, "equal", targets)
    runs = {}
    for name, w in (("none", None), ("ones", np.ones(20)), ("2.5", np.full(20, 2.5)),
                    ("int", np.full(20, 7, dtype=np.int64))):
        model = make_model(sizes, acts, W, b)
        h = fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=6,
                           seed=4).fit(model, X, Y, sample_weight=w)
        runs[name] = (params(model), h.loss)
    assert_params_equal(runs["ones"][0], runs["none"][0])      # weight 1: the same arithmetic
    assert runs["ones"][1] == runs["none"][1]
    for name in ("2.5", "int"):
        assert_params_close(runs[name][0], runs["none"][0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(runs[name][1], runs["none"][1], rtol=1e-13)


def test_zero_weights_equal_dropping_the_rows():
    sizes, acts, loss, targets = WEIGHT_NETS["mse"]
    W, b, X, Y = problem(sizes, acts, loss, 15, "zeros", targets)
    w = np.ones(15)
    w[[1, 4, 5, 11]] = 0
    keep = w > 0
    weighted, dropped = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    h1 = fastbp.Trainer("mse", optimizer="rmsprop", epochs=3, batch_size=50).fit(
        weighted, X, Y, sample_weight=w)
    h2 = fastbp.Trainer("mse", optimizer="rmsprop", epochs=3, batch_size=50).fit(
        dropped, X[keep], Y[keep])
    assert_params_close(params(weighted), params(dropped), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-13)


def test_a_batch_of_zero_weights_takes_no_step():
    """A batch whose rows all weigh 0 is skipped: no step, momentum not advanced."""
    sizes, acts, loss, targets = WEIGHT_NETS["mse"]
    W, b, X, Y = problem(sizes, acts, loss, 8, "zero-batch", targets)
    w = np.array([0, 0, 1, 2, 0, 0, 3, 1.0])
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", optimizer=optimizers.SGD(0.1, momentum=0.9), epochs=2,
                             batch_size=2, shuffle=False).fit(model, X, Y, sample_weight=w)
    rW, rb = copies(W, b)
    optimizer, state = ref.make_optimizer("sgd", 0.1, momentum=0.9), ref.new_state()
    ref_losses = [ref.train_epoch(rW, rb, acts, X, Y, "mse", optimizer, state, 2,
                                  sample_weight=w) for _ in range(2)]
    assert state["t"] == 4
    assert_params_close(params(model), rW + rb)
    np.testing.assert_allclose(history.loss, ref_losses, rtol=1e-10)


@pytest.mark.parametrize("form", ["labels", "one-hot", "binary"])
def test_class_weight_dict_equals_sample_weights(form):
    if form == "binary":
        sizes, acts, loss = [4, 5, 1], ("tanh", "sigmoid"), "bce"
        W, b, X, _ = problem(sizes, acts, loss, 20, "cw-binary")
        labels = rng_for("cw").integers(0, 2, size=20)
        Y = labels.reshape(-1, 1).astype(float)
        table = {0: 0.5, 1: 3.0}
    else:
        sizes, acts, loss = [4, 5, 3], ("relu", "softmax"), "cce"
        W, b, X, labels = problem(sizes, acts, loss, 20, "cw", "labels")
        Y = labels if form == "labels" else np.eye(3)[labels]
        table = {0: 2.0, 2: 0.25}                         # class 1 keeps weight 1
    w = np.array([table.get(int(c), 1.0) for c in labels])
    by_class, by_sample = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    h1 = fastbp.Trainer(loss, optimizer="adam", epochs=2, batch_size=6, seed=2,
                        class_weight=table).fit(by_class, X, Y)
    h2 = fastbp.Trainer(loss, optimizer="adam", epochs=2, batch_size=6, seed=2).fit(
        by_sample, X, Y, sample_weight=w)
    assert_params_equal(params(by_class), params(by_sample))
    assert h1.loss == h2.loss

    # class_weight and sample_weight multiply
    both, product = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    s = np.linspace(0.5, 2.0, 20)
    fastbp.Trainer(loss, epochs=2, batch_size=6, seed=2, class_weight=table).fit(
        both, X, Y, sample_weight=s)
    fastbp.Trainer(loss, epochs=2, batch_size=6, seed=2).fit(product, X, Y, sample_weight=s * w)
    assert_params_close(params(both), params(product), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("form", ["labels", "one-hot", "binary"])
def test_balanced_class_weight_equals_sklearn(form):
    sklearn_utils = pytest.importorskip("sklearn.utils")
    rng = rng_for("balanced", form)
    if form == "binary":
        sizes, acts, loss = [4, 5, 1], ("tanh", "sigmoid"), "bce"
        labels = (rng.uniform(size=30) < 0.2).astype(int)
        Y = labels.reshape(-1, 1).astype(float)
    else:
        sizes, acts, loss = [4, 5, 3], ("tanh", "softmax"), "cce"
        labels = rng.choice(3, size=30, p=[0.6, 0.3, 0.1])
        Y = labels if form == "labels" else np.eye(3)[labels]
    W, b = ref.init_parameters(sizes, rng)
    X = rng.normal(size=(30, 4))
    classes = np.unique(labels)
    cw = sklearn_utils.compute_class_weight("balanced", classes=classes, y=labels)
    w = cw[np.searchsorted(classes, labels)]
    balanced, weighted = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    h1 = fastbp.Trainer(loss, optimizer="sgd", epochs=2, batch_size=7, seed=3,
                        class_weight="balanced").fit(balanced, X, Y)
    h2 = fastbp.Trainer(loss, optimizer="sgd", epochs=2, batch_size=7, seed=3).fit(
        weighted, X, Y, sample_weight=w)
    assert_params_close(params(balanced), params(weighted), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-13)


@pytest.mark.parametrize("bad", list(BAD_SAMPLE_WEIGHTS))
def test_bad_sample_weights_refused_model_unchanged(bad):
    sizes, acts, loss, targets = WEIGHT_NETS["cce"]
    W, b, X, Y = problem(sizes, acts, loss, 10, "bad", targets)
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("cce", optimizer="adam", batch_size=4, seed=0)
    with pytest.raises((ValueError, TypeError)):
        trainer.fit(model, X, Y, sample_weight=BAD_SAMPLE_WEIGHTS[bad](10))
    with pytest.raises((ValueError, TypeError)):
        trainer.partial_fit(model, X, Y, sample_weight=BAD_SAMPLE_WEIGHTS[bad](10))
    assert_params_equal(params(model), W + b)
    # and the trainer is as new: a fit now equals a fresh trainer's
    trainer.fit(model, X, Y)
    fresh = make_model(sizes, acts, W, b)
    fastbp.Trainer("cce", optimizer="adam", batch_size=4, seed=0).fit(fresh, X, Y)
    assert_params_equal(params(model), params(fresh))


def test_class_weight_may_name_any_output_class():
    """The classes of a categorical model are its outputs: a class_weight for class 2 of a
    3-output model is valid even when the labels at hand hold only 0 and 1."""
    sizes, acts = [4, 5, 3], ("tanh", "softmax")
    W, b, X, _ = problem(sizes, acts, "cce", 12, "cw-absent", "labels")
    labels = np.arange(12) % 2
    weighted, plain = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    fastbp.Trainer("cce", epochs=2, batch_size=4, seed=0,
                   class_weight={1: 2.0, 2: 5.0}).fit(weighted, X, labels)
    fastbp.Trainer("cce", epochs=2, batch_size=4, seed=0).fit(
        plain, X, labels, sample_weight=np.where(labels == 1, 2.0, 1.0))
    assert_params_equal(params(weighted), params(plain))


@pytest.mark.parametrize("class_weight,loss,error", [
    ({0: 0.0, 1: 0.0, 2: 0.0}, "cce", ValueError),
    ({0: -1.0}, "cce", ValueError),
    ({0: float("nan")}, "cce", ValueError),
    ({5: 1.0}, "cce", ValueError),
    ({-1: 1.0}, "cce", ValueError),
    ({0.5: 1.0}, "cce", ValueError),
    ({0: 2.0}, "mse", ValueError),
    ({0: 2.0}, "bce", ValueError),                         # several sigmoid outputs: multi-label
    ("balancd", "cce", TypeError),
    ([1.0, 2.0, 3.0], "cce", TypeError),
])
def test_bad_class_weight_refused_model_unchanged(class_weight, loss, error):
    sizes, acts = [4, 5, 3], ("tanh", "softmax")
    W, b, X, labels = problem(sizes, acts, "cce", 10, "bad-cw", "labels")
    Y = labels if loss == "cce" else np.eye(3)[labels]      # bce: three 0/1 outputs
    model = make_model(sizes, acts, W, b)
    with pytest.raises(error):
        fastbp.Trainer(loss, class_weight=class_weight).fit(model, X, Y)
    assert_params_equal(params(model), W + b)


# ================================================================ 5. dropout

def _dropout_problem():
    sizes, acts = [6, 16, 12, 3], ("relu", "tanh", "softmax")
    W, b, X, Y = problem(sizes, acts, "cce", 40, "dropout", "labels")
    return sizes, acts, W, b, X, Y


def test_predict_never_drops():
    sizes, acts, W, b, X, Y = _dropout_problem()
    model = make_model(sizes, acts, W, b, dropout=0.5)
    fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=8, seed=0).fit(model, X, Y)
    first, second = model.predict(X), model.predict(X)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, ref.forward(model.weights, model.biases, acts, X)[-1],
                               rtol=1e-12, atol=1e-15)
    # evaluate and gradients do not drop either: the same as a model without dropout
    plain = make_model(sizes, acts, model.weights, model.biases)
    assert model.evaluate(X, Y, "cce") == plain.evaluate(X, Y, "cce")
    for g, h in zip(model.gradients(X, Y, "cce")[1], plain.gradients(X, Y, "cce")[1]):
        np.testing.assert_array_equal(g, h)


def test_rate_zero_equals_no_dropout_bit_for_bit():
    sizes, acts, W, b, X, Y = _dropout_problem()
    runs = []
    for dropout in (None, 0.0, [0.0, 0.0]):
        model = make_model(sizes, acts, W, b, **({} if dropout is None else {"dropout": dropout}))
        fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=8, seed=7).fit(model, X, Y)
        runs.append(params(model))
    assert_params_equal(runs[1], runs[0])
    assert_params_equal(runs[2], runs[0])


@pytest.mark.parametrize("shuffle", [True, False])
def test_dropout_seed_reproduces_bit_for_bit(shuffle):
    sizes, acts, W, b, X, Y = _dropout_problem()

    def run(seed):
        model = make_model(sizes, acts, W, b, dropout=[0.3, 0.1])
        history = fastbp.Trainer("cce", optimizer="sgd", learning_rate=0.1, epochs=3,
                                 batch_size=8, shuffle=shuffle, seed=seed).fit(model, X, Y)
        return params(model), history.loss

    a, b_, c = run(11), run(11), run(12)
    assert_params_equal(a[0], b_[0])
    assert a[1] == b_[1]
    assert max(np.abs(p - q).max() for p, q in zip(a[0], c[0])) > 1e-6   # the masks differ
    # and dropout changed the training
    plain = make_model(sizes, acts, W, b)
    fastbp.Trainer("cce", optimizer="sgd", learning_rate=0.1, epochs=3, batch_size=8,
                   shuffle=shuffle, seed=11).fit(plain, X, Y)
    assert max(np.abs(p - q).max() for p, q in zip(a[0], params(plain))) > 1e-6


def test_dropout_partial_fits_equal_fit():
    sizes, acts, W, b, X, Y = _dropout_problem()
    online, batch = (make_model(sizes, acts, W, b, dropout=0.25) for _ in range(2))
    trainer = fastbp.Trainer("cce", optimizer="adam", batch_size=8, seed=3)
    trainer.partial_fit(online, X, Y)
    trainer.partial_fit(online, X, Y)
    fastbp.Trainer("cce", optimizer="adam", epochs=2, batch_size=8, seed=3).fit(batch, X, Y)
    assert_params_equal(params(online), params(batch))


def test_dropout_masks_rates_and_exact_update():
    """Dropout seen through one-row SGD steps, public API only.

    A network x -> identity(400) -> identity(300) -> 1 with dropout [0.2, 0.5], plain SGD
    with learning rate 1 on one row (mse), from the same parameters each time (restored
    after each step; each partial_fit draws a new dropout seed). With one row,
    dW2[i, :] = a1_i * mask1_i * delta2 is a zero row exactly where unit i of layer 1 was
    dropped, and dW3[j] = a2_j * mask2_j * delta3 is zero exactly where unit j of layer 2 was.
    The masks read from those zeros then reproduce the whole update through the reference
    (inverted dropout: kept units scaled by 1/(1-p)), and the dropped fractions are ~p.
    """
    rates = (0.2, 0.5)
    sizes, acts = [8, 400, 300, 1], ("identity", "identity", "identity")
    rng = rng_for("masks")
    W, b = ref.init_parameters(sizes, rng)
    b = [v + 0.5 for v in b]                                 # no unit's output is 0
    model = make_model(sizes, acts, W, b, dropout=list(rates))
    assert model.dropout == rates
    trainer = fastbp.Trainer("mse", optimizer=optimizers.SGD(1.0), batch_size=1, seed=0)
    start = params(model)
    dropped = [[], []]
    previous = None
    for step in range(25):
        x = rng.normal(size=(1, 8))
        y = np.array([[ref.forward(W, b, acts, x)[-1][0, 0] + 5.0]])   # far from the output
        trainer.partial_fit(model, x, y)
        after = params(model)
        model.weights, model.biases = W, b                   # restore for the next step
        delta = [a - s for a, s in zip(after, start)]
        dW1, dW2, dW3 = delta[:3]
        zero_rows = np.all(dW2 == 0, axis=1)                 # layer-1 units dropped
        zero_cols = dW3[:, 0] == 0                           # layer-2 units dropped
        # a dropped layer-1 unit also has a zero column in dW1
        np.testing.assert_array_equal(np.all(dW1 == 0, axis=0), zero_rows)
        dropped[0].append(zero_rows)
        dropped[1].append(zero_cols)
        masks = [np.where(z, 0.0, 1.0 / (1.0 - p))[None, :] for z, p in zip((zero_rows, zero_cols), rates)]
        _, gW, gb = ref.gradients(W, b, acts, x, y, "mse", masks=masks)
        assert_params_close(delta, [-g for g in gW + gb], rtol=1e-9, atol=1e-12)
        pattern = np.concatenate([zero_rows, zero_cols])
        assert previous is None or not np.array_equal(pattern, previous)   # a new mask each step
        previous = pattern
    for rate, masks in zip(rates, dropped):
        masks = np.array(masks)
        n = masks.size
        fraction = masks.mean()
        assert abs(fraction - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (rate, fraction)
        # every unit is sometimes kept, sometimes dropped, across steps (not a fixed pattern)
        per_unit = masks.mean(axis=0)
        assert 0.0 < per_unit.mean() < 1.0 and (per_unit < 1.0).all()


@pytest.mark.parametrize("dropout,error", [
    (1.0, ValueError), (1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
    (float("inf"), ValueError), ("0.5", TypeError), (True, TypeError), (None, TypeError),
    ([0.5], ValueError), ([0.1, 0.2, 0.3], ValueError), ([0.1, 1.0], ValueError),
    ([0.1, -0.2], ValueError), ([0.1, "a"], TypeError),
])
def test_bad_dropout_refused(dropout, error):
    with pytest.raises(error):
        fastbp.MLP([4, 5, 6, 2], ["relu", "relu", "softmax"], dropout=dropout)


def test_dropout_list_per_layer_and_persistence(tmp_path):
    model = fastbp.MLP([4, 5, 6, 2], ["relu", "tanh", "softmax"], dropout=[0.1, 0.4], seed=0)
    assert model.dropout == (0.1, 0.4)
    assert fastbp.MLP([4, 5, 6, 2], "relu", dropout=0.3).dropout == (0.3, 0.3)
    assert fastbp.MLP([4, 2], ["softmax"], dropout=0.3).dropout == ()      # no hidden layer
    model.save(tmp_path / "m.fbp")
    assert fastbp.load(tmp_path / "m.fbp").dropout == (0.1, 0.4)


# ================================================================ 6. schedules in the trainer

def _regression(n=30, seed="reg"):
    sizes, acts = [3, 8, 1], ("tanh", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", n, seed)
    return sizes, acts, W, b, X, Y


def test_learning_rate_follows_the_schedule_across_fits():
    sizes, acts, W, b, X, Y = _regression()
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("mse", optimizer=optimizers.SGD(0.1, momentum=0.5), epochs=3,
                             batch_size=8, shuffle=False,
                             schedule=schedules.StepDecay(step_size=2, gamma=0.5))
    h1 = trainer.fit(model, X, Y)
    h2 = trainer.fit(model, X, Y)
    h3 = trainer.partial_fit(model, X, Y)
    rates = h1.history["learning_rate"] + h2.history["learning_rate"] + h3.history["learning_rate"]
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    # every batch of an epoch used that epoch's rate: the reference with those rates
    rW, rb = copies(W, b)
    optimizer, state = ref.make_optimizer("sgd", 0.1, momentum=0.5), ref.new_state()
    ref_losses = [ref.train_epoch(rW, rb, acts, X, Y, "mse", optimizer, state, 8,
                                  learning_rate=rate) for rate in rates]
    assert_params_close(params(model), rW + rb)
    np.testing.assert_allclose(h1.loss + h2.loss + h3.loss, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("schedule,expected", [
    (schedules.ExponentialDecay(0.5), [0.2 * 0.5 ** e for e in range(5)]),
    (schedules.Cosine(4, 0.02), [0.02 + 0.18 * (1 + math.cos(math.pi * e / 4)) / 2
                                 for e in range(4)] + [0.02]),
    (schedules.InverseScaling(power=0.5, scale=2.0), [0.2 / math.sqrt(1 + 2 * e) for e in range(5)]),
    ("constant", [0.2] * 5),
    (None, [0.2] * 5),
])
def test_schedules_in_the_trainer(schedule, expected):
    sizes, acts, W, b, X, Y = _regression()
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", optimizer="adam", learning_rate=0.2, epochs=5,
                             schedule=schedule, seed=0).fit(model, X, Y)
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-14)


def _torch_plateau(values, lr, factor, patience, threshold, min_lr=0.0, cooldown=0, eps=1e-8):
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", threshold_mode="abs") as its
    documentation describes it: the learning rate used in each epoch, stepped after it."""
    rates, best, bad, cool = [], math.inf, 0, 0
    for value in values:
        rates.append(lr)
        if value < best - threshold:
            best, bad = value, 0
        else:
            bad += 1
        if cool > 0:
            cool -= 1
            bad = 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cool, bad = cooldown, 0
    return rates


def test_reduce_on_plateau_reacts_to_val_loss():
    """Validation targets opposite to the training targets: val_loss rises while training
    improves, so the rate is cut every patience + 1 epochs."""
    sizes, acts, W, b, X, Y = _regression(40)
    model = make_model(sizes, acts, W, b)
    plateau = schedules.ReduceOnPlateau(factor=0.5, patience=2)
    trainer = fastbp.Trainer("mse", optimizer="sgd", learning_rate=0.05, epochs=10, batch_size=8,
                             schedule=plateau, seed=0)
    history = trainer.fit(model, X, Y, validation_data=(X, -Y - 3.0))
    val = history.val_loss
    rates = history.history["learning_rate"]
    assert rates == _torch_plateau(val, 0.05, 0.5, 2, 1e-4)
    assert rates[-1] < 0.05                              # it did reduce

    # improving val_loss (validation = training data): no reduction
    improving = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", optimizer="sgd", learning_rate=0.05, epochs=10, batch_size=8,
                             schedule=schedules.ReduceOnPlateau(factor=0.5, patience=2),
                             seed=0).fit(improving, X, Y, validation_data=(X, Y))
    assert all(later < earlier for earlier, later in zip(history.val_loss, history.val_loss[1:]))
    assert history.history["learning_rate"] == [0.05] * 10


def test_reduce_on_plateau_without_validation_names_the_problem():
    sizes, acts, W, b, X, Y = _regression()
    model = make_model(sizes, acts, W, b)
    trainer = fastbp.Trainer("mse", epochs=3, schedule="plateau")
    with pytest.raises(ValueError, match="val_loss"):
        trainer.fit(model, X, Y)


# ================================================================ 7. validation and metrics

EPOCH_KEYS = {"loss", "learning_rate", "seconds", "samples_per_second"}


@pytest.mark.parametrize("shuffle", [True, False])
def test_validation_split_holds_out_the_last_rows_before_shuffling(shuffle):
    sizes, acts = [4, 6, 3], ("tanh", "softmax")
    W, b, X, labels = problem(sizes, acts, "cce", 40, "split", "labels")
    split, plain = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    history = fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=8, shuffle=shuffle,
                             seed=6).fit(split, X, labels, validation_split=0.25)
    # the same as training on the first 30 rows only, same seed: the split came first
    fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=8, shuffle=shuffle,
                   seed=6).fit(plain, X[:30], labels[:30])
    assert_params_equal(params(split), params(plain))
    assert history.n_samples == 30
    assert set(history.history) == EPOCH_KEYS | {"val_loss", "val_accuracy"}
    assert all(len(series) == 3 for series in history.history.values())
    assert history.val_loss[-1] == split.evaluate(X[30:], labels[30:], "cce")
    assert history.val_loss[-1] == pytest.approx(
        ref.loss_of_parameters(split.weights, split.biases, acts, X[30:], labels[30:], "cce"),
        rel=1e-12)
    predicted = split.predict(X[30:]).argmax(axis=1)
    assert history.history["val_accuracy"][-1] == np.mean(predicted == labels[30:])


def test_validation_split_with_weights_and_one_hot_targets():
    sizes, acts = [4, 6, 3], ("tanh", "softmax")
    W, b, X, labels = problem(sizes, acts, "cce", 20, "split-w", "labels")
    Y = np.eye(3)[labels]
    w = np.linspace(0.1, 2.0, 20)
    split, plain = make_model(sizes, acts, W, b), make_model(sizes, acts, W, b)
    h = fastbp.Trainer("cce", epochs=2, batch_size=4, seed=1).fit(
        split, X, Y, validation_split=0.5, sample_weight=w)
    fastbp.Trainer("cce", epochs=2, batch_size=4, seed=1).fit(
        plain, X[:10], Y[:10], sample_weight=w[:10])
    assert_params_equal(params(split), params(plain))
    assert h.val_loss[-1] == split.evaluate(X[10:], Y[10:], "cce")    # unweighted


def test_validation_data_and_regression_metrics():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    sizes, acts = [3, 8, 2], ("gelu", "identity")
    W, b, X, Y = problem(sizes, acts, "mse", 50, "val-data")
    X_val, Y_val = X[:15] + 0.1, Y[:15]

    def worst(y_true, y_pred):
        return float(np.max(np.abs(y_true - y_pred)))

    for loss, default in (("mse", ["mae", "r2"]), (losses.Huber(0.5), ["mae", "r2"]),
                          ("mae", ["mae", "r2"])):
        model = make_model(sizes, acts, W, b)
        history = fastbp.Trainer(loss, optimizer="adam", learning_rate=0.01, epochs=4,
                                 seed=0).fit(model, X, Y, validation_data=(X_val, Y_val))
        assert set(history.history) == EPOCH_KEYS | {"val_loss"} | {f"val_{m}" for m in default}
        prediction = model.predict(X_val)
        assert history.val_loss[-1] == model.evaluate(X_val, Y_val, loss)
        assert history.history["val_mae"][-1] == pytest.approx(
            sklearn_metrics.mean_absolute_error(Y_val, prediction), rel=1e-12)
        assert history.history["val_r2"][-1] == pytest.approx(
            sklearn_metrics.r2_score(Y_val, prediction), rel=1e-12)

    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", epochs=3, seed=0).fit(
        model, X, Y, validation_data=(X_val, Y_val), metrics=["mse", worst, "r2"])
    assert set(history.history) == EPOCH_KEYS | {"val_loss", "val_mse", "val_worst", "val_r2"}
    prediction = model.predict(X_val)
    assert history.history["val_worst"][-1] == worst(Y_val, prediction)
    assert history.history["val_mse"][-1] == pytest.approx(history.val_loss[-1], rel=1e-12)

    # metrics=[]: only the loss; no validation: no val_ series (and no metric is called)
    history = fastbp.Trainer("mse", epochs=2).fit(make_model(sizes, acts, W, b), X, Y,
                                                  validation_data=(X_val, Y_val), metrics=[])
    assert set(history.history) == EPOCH_KEYS | {"val_loss"}

    def boom(y_true, y_pred):
        raise AssertionError("metric called without validation data")

    history = fastbp.Trainer("mse", epochs=2).fit(make_model(sizes, acts, W, b), X, Y,
                                                  metrics=[boom])
    assert set(history.history) == EPOCH_KEYS
    assert history.val_loss == []


def test_classification_metric_and_callable_get_the_targets():
    sizes, acts = [4, 6, 3], ("tanh", "softmax")
    W, b, X, labels = problem(sizes, acts, "cce", 30, "cls", "labels")
    seen = []

    def record(y_true, y_pred):
        seen.append((np.array(y_true), np.array(y_pred)))
        return 0.5

    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("cce", epochs=2, seed=0).fit(
        model, X[:20], labels[:20], validation_data=(X[20:], labels[20:]),
        metrics=["accuracy", record])
    assert history.history["val_record"] == [0.5, 0.5]
    y_true, y_pred = seen[-1]
    assert y_true.argmax(axis=1).tolist() == labels[20:].tolist()     # one-hot rows
    np.testing.assert_array_equal(y_pred, model.predict(X[20:]))
    assert history.history["val_accuracy"][-1] == metrics.accuracy(labels[20:], y_pred)
    # binary cross-entropy: accuracy by default; several outputs: binary_accuracy
    bce = make_model([4, 6, 1], ("tanh", "sigmoid"), *ref.init_parameters([4, 6, 1], rng_for(1)))
    h = fastbp.Trainer("bce", epochs=1).fit(bce, X, (labels == 1).astype(float).reshape(-1, 1),
                                            validation_split=0.2)
    assert "val_accuracy" in h.history


@pytest.mark.parametrize("kwargs,error", [
    (dict(validation_split=1.0), ValueError), (dict(validation_split=-0.1), ValueError),
    (dict(validation_split=float("nan")), ValueError), (dict(validation_split="0.2"), TypeError),
    (dict(validation_split=1e-17), ValueError),                   # no validation row
    (dict(validation_split=0.2, validation_data="both"), ValueError),
    (dict(validation_data=([[1.0, 2.0, 3.0]],)), TypeError),
    (dict(validation_data=(np.ones((3, 2)), np.ones((3, 1)))), ValueError),   # wrong width
    (dict(validation_data=(np.ones((3, 3)), np.ones((2, 1)))), ValueError),   # rows differ
    (dict(validation_data=(np.full((3, 3), np.nan), np.ones((3, 1)))), ValueError),
    (dict(metrics=["nope"], validation_split=0.2), ValueError),
    (dict(metrics=[3], validation_split=0.2), TypeError),
])
def test_bad_validation_refused_model_unchanged(kwargs, error):
    sizes, acts, W, b, X, Y = _regression()
    model = make_model(sizes, acts, W, b)
    with pytest.raises(error):
        fastbp.Trainer("mse", epochs=2).fit(model, X, Y, **kwargs)
    assert_params_equal(params(model), W + b)


# ================================================================ 8. early stopping, time budget

def test_early_stopping_restores_the_best_epoch_in_a_real_fit():
    sizes, acts, W, b, X, Y = _regression(40, "early")
    X_val, Y_val = X, -Y - 1.0                   # val_loss falls, then rises
    model = make_model(sizes, acts, W, b)
    # a first epoch of a slow drift improves val_loss (outputs still near 0)... keep it
    # simple: find where validation is best from the history itself
    stop = callbacks.EarlyStopping(patience=3, restore_best_weights=True)
    history = fastbp.Trainer("mse", optimizer="adam", learning_rate=0.02, epochs=200,
                             batch_size=8, seed=0).fit(model, X, Y,
                                                       validation_data=(X_val, Y_val),
                                                       callbacks=[stop])
    val = history.val_loss
    assert history.stopped_early and history.epochs < 200
    best = int(np.argmin(val))
    assert stop.best_epoch == best and stop.stopped_epoch == history.epochs - 1
    assert history.epochs == best + 1 + 3
    assert model.evaluate(X_val, Y_val, "mse") == val[best]          # the best epoch's weights
    assert model.evaluate(X_val, Y_val, "mse") != val[-1]

    # without restoring: the last epoch's parameters
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", optimizer="adam", learning_rate=0.02, epochs=200,
                             batch_size=8, seed=0).fit(
        model, X, Y, validation_data=(X_val, Y_val),
        callbacks=[callbacks.EarlyStopping(patience=3, restore_best_weights=False)])
    assert model.evaluate(X_val, Y_val, "mse") == history.val_loss[-1]


def test_max_time_stops_training():
    sizes, acts, W, b, X, Y = _regression(200, "budget")
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", epochs=1000, max_time=0.0).fit(model, X, Y)
    assert history.epochs == 1 and history.stopped_early

    import time
    model = make_model(sizes, acts, W, b)
    started = time.perf_counter()
    history = fastbp.Trainer("mse", epochs=10**7, batch_size=4, max_time=0.3).fit(model, X, Y)
    elapsed = time.perf_counter() - started
    assert history.stopped_early and 1 < history.epochs < 10**7
    assert 0.3 <= elapsed < 2.0
    assert sum(history.seconds) <= elapsed
    with pytest.raises(ValueError):
        fastbp.Trainer("mse", max_time=-1.0)


def test_callback_stop_and_history():
    sizes, acts, W, b, X, Y = _regression()

    class StopAfter(callbacks.Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append((epoch, dict(logs)))
            return epoch == 2

    cb = StopAfter()
    model = make_model(sizes, acts, W, b)
    history = fastbp.Trainer("mse", epochs=10).fit(model, X, Y, validation_split=0.2,
                                                   callbacks=[cb])
    assert history.epochs == 3 and history.stopped_early and not history.interrupted
    assert [e for e, _ in cb.seen] == [0, 1, 2]
    for e, logs in cb.seen:
        for key, value in logs.items():
            assert history.history[key][e] == value
    assert history.samples_per_second[0] == pytest.approx(24 / history.seconds[0])


# ================================================================ 9. Ctrl-C

INTERRUPT_SCRIPT = textwrap.dedent(r'''
    import json, os, signal, sys, threading, time
    import numpy as np
    import fastbp

    out = sys.argv[1]
    # As in a terminal, whatever this process inherited (a background job starts with SIGINT
    # ignored, and Python then installs no handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3200, 40))
    Y = rng.normal(size=(3200, 8))
    model = fastbp.MLP([40, 128, 8], ["tanh", "identity"], dtype="float64", seed=0)
    initial = [p.copy() for p in model.weights + model.biases]
    trainer = fastbp.Trainer("mse", learning_rate=1e-3, epochs=10**6, batch_size=64,
                             shuffle=False, n_threads=1)
    sent = {}

    class Ended(fastbp.callbacks.Callback):
        ended = False

        def on_train_end(self, logs=None):
            Ended.ended = True

    def interrupt():
        sent["at"] = time.perf_counter()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Timer(0.3, interrupt)
    timer.start()
    started = time.perf_counter()
    try:
        history = trainer.fit(model, X, Y, callbacks=[Ended()])
        raised = False
    except KeyboardInterrupt:
        raised = True
    returned = time.perf_counter()
    timer.join()
    restored = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:                                   # Ctrl-C after the fit: Python's usual behaviour
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200):
            time.sleep(0.01)
        after = "nothing"
    except KeyboardInterrupt:
        after = "KeyboardInterrupt"
    final = [p.copy() for p in model.weights + model.biases]
    np.savez(out, *initial, *final)
    print(json.dumps({"raised": raised, "interrupted": history.interrupted,
                      "epochs": history.epochs, "loss": history.loss,
                      "latency": returned - sent["at"], "ran": returned - started,
                      "restored": restored, "after": after, "ended": Ended.ended}))
''')


def test_ctrl_c_stops_fit_cleanly(tmp_path):
    out = tmp_path / "params.npz"
    result = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT, str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["raised"] is False
    assert report["interrupted"] is True
    assert report["latency"] < 0.5, report            # stops at the next batch boundary
    assert report["restored"] and report["after"] == "KeyboardInterrupt"
    assert report["ended"]                            # callbacks' on_train_end still ran
    assert len(report["loss"]) == report["epochs"]

    saved = np.load(out)
    arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    initial, final = arrays[:4], arrays[4:]
    assert all(np.isfinite(p).all() for p in final)
    # consistent: the parameters are exactly those after some whole number of steps.
    # Replay the same steps one batch at a time (partial_fit on each batch's rows).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3200, 40))
    Y = rng.normal(size=(3200, 8))
    model = fastbp.MLP([40, 128, 8], ["tanh", "identity"], dtype="float64", seed=0)
    for live, value in zip(model.weights + model.biases, initial):
        live[...] = value
    trainer = fastbp.Trainer("mse", learning_rate=1e-3, batch_size=64, shuffle=False,
                             n_threads=1)
    steps_per_epoch = 3200 // 64
    lowest = report["epochs"] * steps_per_epoch
    matched = None
    for step in range(lowest + steps_per_epoch + 1):
        if step >= lowest and all(np.array_equal(p, q) for p, q in
                                  zip(model.weights + model.biases, final)):
            matched = step
            break
        start = (step % steps_per_epoch) * 64
        trainer.partial_fit(model, X[start:start + 64], Y[start:start + 64])
    assert matched is not None, "the parameters are not those of any step"


def test_fit_off_the_main_thread_leaves_sigint_alone():
    import signal
    import threading
    sizes, acts, W, b, X, Y = _regression()
    model = make_model(sizes, acts, W, b)
    handler = signal.getsignal(signal.SIGINT)
    results = []
    thread = threading.Thread(target=lambda: results.append(
        fastbp.Trainer("mse", epochs=3).fit(model, X, Y)))
    thread.start()
    thread.join()
    assert results[0].epochs == 3 and not results[0].interrupted
    assert signal.getsignal(signal.SIGINT) is handler


# ================================================================ 10. progress output

def test_verbose_output(capsys):
    sizes, acts, W, b, X, Y = _regression()
    fastbp.Trainer("mse", epochs=3).fit(make_model(sizes, acts, W, b), X, Y, verbose=0)
    fastbp.Trainer("mse").partial_fit(make_model(sizes, acts, W, b), X, Y)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""

    fastbp.Trainer("mse", epochs=3).fit(make_model(sizes, acts, W, b), X, Y, verbose=1,
                                        validation_split=0.2)
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "loss" in shown and "samples/s" in shown and "val_loss" in shown
    try:
        import tqdm  # noqa: F401
    except ImportError:                                   # plain lines, one per epoch
        lines = [line for line in captured.out.splitlines() if line.strip()]
        assert len(lines) == 3 and lines[-1].startswith("epoch 3/3")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_one_epoch_fits_keep_their_buffers_for_the_next(n_threads, monkeypatch):
    """A fit of one epoch (partial_fit) gives its workspace and the copies that undo an
    epoch back to the trainer, and the next one of the same shapes takes them (new memory
    faults page by page on its first writes: a loop of partial_fit calls paid that every
    call): the same objects, the same bits as new buffers each call, a diverged epoch
    still undone exactly; a fit of more epochs, another shape, reset() and pickling keep
    none."""
    import pickle
    monkeypatch.setenv("FASTBP_SPLIT", "rows")          # two threads: row-split workers
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 40))
    y = rng.integers(0, 3, 64)

    def fits(keep, n_fits=3):
        model = fastbp.MLP([40, 256, 3], ["relu", "softmax"], seed=0)
        trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, batch_size=16,
                                 seed=0, n_threads=n_threads)
        kept = []
        for _ in range(n_fits):
            if not keep:
                trainer._buffers = {}
            trainer.partial_fit(model, X, y)
            kept.append(dict(trainer._buffers))
        return model, trainer, kept

    model, trainer, kept = fits(True)
    kinds = {key[0] for key in kept[0]}
    assert {"workspace", "backup", "state backup"} <= kinds
    assert ("workers' workspace" in kinds) == (n_threads == 2)
    assert all(kept[-1][key] is buffer for key, buffer in kept[0].items())
    fresh_model, _, _ = fits(False)
    np.testing.assert_array_equal(model.parameter_vector(), fresh_model.parameter_vector())
    # a partial_fit that diverges (on its kept buffers) is undone exactly: weights of 1e30
    # times inputs of 1e10 overflow float32 in the first batch's forward pass
    trained = [w.copy() for w in model.weights]
    model.weights = [np.full_like(w, 1e30) for w in model.weights]
    before, state = model.parameter_vector(), trainer._state.copy()
    with pytest.warns(RuntimeWarning, match="diverged"):
        trainer.partial_fit(model, X * 1e10, y)
    np.testing.assert_array_equal(model.parameter_vector(), before)
    np.testing.assert_array_equal(trainer._state, state)
    model.weights = trained
    assert all(trainer._buffers[key] is buffer for key, buffer in kept[0].items())
    copy = pickle.loads(pickle.dumps(trainer))
    assert copy._buffers == {}
    trainer.partial_fit(model, X[:8], y[:8])       # batch 8: another workspace
    old_workspace = [buffer for key, buffer in kept[0].items() if key[0] == "workspace"]
    assert len(old_workspace) == 1 and not any(
        buffer is old_workspace[0] for buffer in trainer._buffers.values())
    assert any(key[0] == "workspace" for key in trainer._buffers)
    trainer.epochs = 2
    trainer.fit(model, X, y)
    assert trainer._buffers == {}
    trainer.partial_fit(model, X, y)
    trainer.reset()
    assert trainer._buffers == {}


def test_the_partial_fit_benchmark_runs_both_columns(capsys):
    """bench/partial_fit.py times kept and new buffers through the trainer's own switch."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "bench", "partial_fit.py")
    spec = importlib.util.spec_from_file_location("partial_fit_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--networks", "20-64-64-1", "--optimizers", "adam", "--rows", "3",
                "--pairs", "2"])
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert row[0].split() == ["20-64-64-1", "adam", "3"]
    assert float(row[1]) > 0 and float(row[2]) > 0 and float(row[3].split()[0]) > 0


# ---------------------------------------------------------------- the trainer's life (audit)

def _life_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 5))
    return X, (X[:, 0] > 0).astype(int)


def _life_model(seed=0):
    return fastbp.MLP([5, 8, 2], ["tanh", "softmax"], dtype="float64", seed=seed)


def test_a_fit_of_no_epochs_on_another_model_keeps_the_optimizer_state():
    """epochs=0 on another model replaced the state of the model being trained (its step
    count went from 8 to 0, and the continuation differed from an uninterrupted run)."""
    X, y = _life_data()
    model, other = _life_model(), _life_model(1)
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=2, batch_size=16, seed=0)
    trainer.fit(model, X, y)
    trainer.epochs = 0
    trainer.fit(other, X, y)
    trainer.epochs = 2
    trainer.fit(model, X, y)
    straight = _life_model()
    fastbp.Trainer("cce", optimizer="adam", epochs=4, batch_size=16, seed=0).fit(straight, X, y)
    assert np.array_equal(model.parameter_vector(), straight.parameter_vector())


def test_a_constant_subclass_with_rates_of_its_own_is_followed():
    class Ramp(schedules.Constant):
        def _rate(self, epoch, base):
            return base * (epoch + 1) / 5

    X, y = _life_data()
    history = fastbp.Trainer("cce", learning_rate=0.1, epochs=3, schedule=Ramp()).fit(
        _life_model(), X, y)
    assert history.history["learning_rate"] == pytest.approx([0.02, 0.04, 0.06])


def test_reset_restarts_a_schedule_objects_own_state():
    X, y = _life_data()
    plateau = schedules.ReduceOnPlateau(monitor="loss", factor=0.1, patience=0, min_delta=10.0)
    trainer = fastbp.Trainer("cce", learning_rate=0.3, epochs=4, schedule=plateau)
    first = trainer.fit(_life_model(), X, y).history["learning_rate"]
    assert plateau.n_reductions > 0
    trainer.reset()
    assert plateau.n_reductions == 0
    assert trainer.fit(_life_model(), X, y).history["learning_rate"] == first
    kept = schedules.ReduceOnPlateau(monitor="loss")
    kept.n_reductions = 2                   # a new Trainer takes the object as it is given
    fastbp.Trainer("cce", schedule=kept)
    assert kept.n_reductions == 2


def test_a_seed_set_between_fits_takes_effect():
    X, y = _life_data()

    def fit(seed, change_to=None):
        model = _life_model()
        trainer = fastbp.Trainer("cce", epochs=2, batch_size=8, seed=seed)
        if change_to is not None:
            trainer.seed = change_to
        trainer.fit(model, X, y)
        return model.parameter_vector()
    assert np.array_equal(fit(0, change_to=1), fit(1))
    assert not np.array_equal(fit(0), fit(1))


def test_every_callbacks_train_end_runs_when_one_raises():
    """EarlyStopping's restore ran after the callbacks before it: one of them raising in
    on_train_end left the model at the last epoch, not the best."""
    X, y = _life_data()
    ended = []

    class Failing(callbacks.Callback):
        def on_train_end(self, logs=None):
            ended.append("failing")
            raise KeyError("boom")

    class Flag(callbacks.Callback):
        def on_train_end(self, logs=None):
            ended.append("flag")

    with pytest.raises(KeyError, match="boom"):
        fastbp.Trainer("cce", epochs=2).fit(_life_model(), X, y, callbacks=[Failing(), Flag()])
    assert ended == ["failing", "flag"]


def test_max_time_runs_the_first_epoch_and_says_whether_it_stopped_early():
    X, y = _life_data()
    history = fastbp.Trainer("cce", epochs=3, max_time=0.0).fit(_life_model(), X, y)
    assert history.epochs == 1 and history.stopped_early
    history = fastbp.Trainer("cce", epochs=1, max_time=0.0).fit(_life_model(), X, y)
    assert history.epochs == 1 and not history.stopped_early


def test_a_plateau_monitor_the_epochs_will_not_log_is_refused_before_training():
    """ReduceOnPlateau's default val_loss without validation data: each partial_fit trained
    an epoch and then raised (the audit); EarlyStopping's check came first already."""
    X, y = _life_data()
    model = _life_model()
    before = model.parameter_vector()
    trainer = fastbp.Trainer("cce", optimizer="adam", schedule=schedules.ReduceOnPlateau())
    for call in (lambda: trainer.partial_fit(model, X, y), lambda: trainer.fit(model, X, y)):
        with pytest.raises(ValueError, match="ReduceOnPlateau monitors 'val_loss'"):
            call()
        assert np.array_equal(model.parameter_vector(), before) and trainer._step == 0


def test_a_fit_of_another_model_from_a_callback_keeps_the_step_count_with_its_state():
    """A callback of model A's fit trains model B on the same trainer: the trainer's state
    is B's from then on, and so must be its step count (A's fit wrote its own 12 steps over
    B's 4, and B's next partial_fit took Adam's bias corrections at steps 13..16)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)

    def make():
        return fastbp.MLP([5, 4, 2], ["tanh", "softmax"], dtype="float64", seed=1)

    settings = dict(optimizer="adam", learning_rate=0.01, batch_size=50, shuffle=False,
                    n_threads=1)
    trainer, A, B = fastbp.Trainer("cce", epochs=3, **settings), make(), make()

    class TrainOther(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                trainer.partial_fit(B, X, y)

    trainer.fit(A, X, y, callbacks=[TrainOther()])
    trainer.partial_fit(B, X, y)
    alone, B_alone = fastbp.Trainer("cce", **settings), make()
    alone.partial_fit(B_alone, X, y)
    alone.partial_fit(B_alone, X, y)
    np.testing.assert_array_equal(B.parameter_vector(), B_alone.parameter_vector())
    A_alone = make()
    fastbp.Trainer("cce", epochs=3, **settings).fit(A_alone, X, y)
    np.testing.assert_array_equal(A.parameter_vector(), A_alone.parameter_vector())


@pytest.mark.parametrize("chosen, key", [
    (["mae", "mean_absolute_error"], "val_mae"),
    ([lambda y, p: 1.0, lambda y, p: 2.0], "val_<lambda>"),
    (["accuracy", metrics.accuracy], "val_accuracy"),
])
def test_two_metrics_of_one_name_are_refused(chosen, key):
    """Each metric is logged as val_<name>: two of one name overwrote each other, and a
    callable named `loss` overwrote val_loss itself (which EarlyStopping watches). Refused,
    the model as it was."""
    def loss(y_true, y_pred):
        return 123.0

    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    before = model.parameter_vector().copy()
    trainer = fastbp.Trainer("cce", epochs=1, seed=0)
    for metric_list, logged in [(chosen, key), ([loss], "val_loss")]:
        with pytest.raises(ValueError, match=f"two figures would be logged as '{logged}'"):
            trainer.fit(model, X, y, validation_split=0.25, metrics=metric_list)
        np.testing.assert_array_equal(model.parameter_vector(), before)
    history = trainer.fit(model, X, y, validation_split=0.25, metrics=["mae", "accuracy"])
    assert history.val_loss[0] != 123.0 and len(history.history["val_mae"]) == 1


def test_subclasses_of_fastbps_rules_are_checked_as_the_rules_are():
    """An optimizer, schedule or loss of a class derived from one of fastbp's own is
    checked by that class's constructor as the class itself is (a subclass of Adam with a
    negative learning_rate trained uphill; a StepDecay subclass with step_size 0 ended in
    ZeroDivisionError), and an Optimizer the core does not know is refused at once (it
    raised KeyError in fit). Refused, the model as it was; valid, it trains as its base."""
    class MyAdam(optimizers.Adam):
        pass

    class MySteps(schedules.StepDecay):
        pass

    class MyHuber(losses.Huber):
        pass

    class Unknown(optimizers.Optimizer):
        code_name = "mine"

    X = np.random.default_rng(0).normal(size=(40, 3))
    Y = X[:, :2].copy()
    model = fastbp.MLP([3, 4, 2], ["tanh", "identity"], seed=0)
    before = model.parameter_vector().copy()
    bad_adam, bad_steps, bad_huber = MyAdam(), MySteps(2), MyHuber()
    bad_adam.learning_rate, bad_steps.step_size, bad_huber.parameter = -0.1, 0, -1.0
    for settings, error, message in [
            (dict(optimizer=bad_adam), ValueError, "learning_rate"),
            (dict(schedule=bad_steps), ValueError, "step_size"),
            (dict(optimizer=Unknown(0.1)), TypeError, "code_name 'mine'")]:
        with pytest.raises(error, match=message):
            fastbp.Trainer("mse", epochs=1, seed=0, **settings).fit(model, X, Y)
        np.testing.assert_array_equal(model.parameter_vector(), before)
    with pytest.raises(ValueError, match="delta"):
        fastbp.Trainer(bad_huber, epochs=1, seed=0).fit(model, X, Y)
    np.testing.assert_array_equal(model.parameter_vector(), before)
    trained = []
    for adam, steps, huber in [(MyAdam(0.01), MySteps(2), MyHuber(0.5)),
                               (optimizers.Adam(0.01), schedules.StepDecay(2), losses.Huber(0.5))]:
        copy = fastbp.MLP([3, 4, 2], ["tanh", "identity"], seed=0)
        fastbp.Trainer(huber, optimizer=adam, schedule=steps, epochs=3, seed=0).fit(copy, X, Y)
        trained.append(copy.parameter_vector())
    np.testing.assert_array_equal(*trained)


@pytest.mark.parametrize("sample_scale, class_scale", [(2.0 ** 996, 2.0 ** 996),
                                                        (2.0 ** -996, 2.0 ** -100),
                                                        (2.0 ** -996, 2.0 ** -66),
                                                        (2.0 ** -664, 2.0 ** 664)])
def test_sample_and_class_weights_of_any_scale_train_as_their_ratios(sample_scale,
                                                                    class_scale):
    """sample_weight times class_weight was formed before its power-of-two scaling: past
    float64 it was refused ("overflow float64") and below it the product lost digits
    (2^-996 x 2^-66: the parameters 1e-5 off) or was refused as summing to 0 (2^-996 x
    2^-100), while each factor alone trained exactly as at scale 1. Now each factor is
    scaled first: powers of two change no bit, and no NumPy warning."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    y = rng.integers(0, 3, 40)
    sample_weight = rng.uniform(0.5, 2.0, 40)
    class_weight = {0: 1.0, 1: 0.75, 2: 1.5}

    def fit(sample_factor, class_factor):
        model = fastbp.MLP([5, 4, 3], ["tanh", "softmax"], dtype="float64", seed=0)
        trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, batch_size=7,
                                 epochs=2, seed=0, n_threads=1, class_weight={
                                     key: value * class_factor
                                     for key, value in class_weight.items()})
        trainer.fit(model, X, y, sample_weight=sample_weight * sample_factor)
        return model.parameter_vector()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = fit(sample_scale, class_scale)
    np.testing.assert_array_equal(scaled, fit(1.0, 1.0))


@pytest.mark.parametrize("exponent, message", [
    (600, "past what float64 holds"), (530, r"span a ratio of about 1e319 between")])
def test_row_weights_past_float64_are_refused_by_name(exponent, message):
    """A row whose weights' product is 2^-1200 of the largest trained silently at weight 0
    (the product underflowed), where a smaller ratio (2^-1060: subnormal) was refused, as
    "a ratio of inf". Both are refused, saying how large the ratio is; the model as it
    was."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = np.arange(20) % 2
    sample_weight = np.ones(20)
    sample_weight[0] = 2.0 ** -exponent          # row 0: class 0
    model = fastbp.MLP([3, 4, 2], ["tanh", "softmax"], seed=0)
    before = model.parameter_vector().copy()
    trainer = fastbp.Trainer("cce", epochs=1, seed=0, n_threads=1,
                             class_weight={0: 2.0 ** -exponent, 1: 1.0})
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, X, y, sample_weight=sample_weight)
    np.testing.assert_array_equal(model.parameter_vector(), before)


@pytest.mark.parametrize("dtype, small, large", [
    ("float32", 5e-324, 1.0), ("float64", 1e-200, 1e200), ("float64", 1e-300, 1e300)])
def test_one_weight_the_scaling_flushes_to_zero_is_refused(dtype, small, large):
    """sample_weight alone of a ratio past float64: the power-of-two scaling made the
    small weights 0 before the range check looked, so they trained silently at weight 0,
    where a smaller ratio (1e-40 next to 1 in float32) is refused; the model as it was."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(dtype)
    sample_weight = np.r_[np.full(32, small), np.full(32, large)]
    model = fastbp.MLP([3, 1], ["identity"], dtype=dtype, seed=0)
    before = model.parameter_vector().copy()
    with pytest.raises(ValueError, match="past what float64 holds"):
        fastbp.Trainer("mse", epochs=1, seed=0).fit(model, X, X[:, :1],
                                                    sample_weight=sample_weight)
    np.testing.assert_array_equal(model.parameter_vector(), before)


@pytest.mark.parametrize("weights, dtype, holder, advice", [
    ([5e-324, 1.0], "float32", "float64", False),     # flushed by the scaling itself
    ([1e-310, 1.0], "float64", "the model's float64", False),
    ([1e-40, 1.0], "float32", "the model's float32", True)])
def test_the_weights_range_refusal_advises_a_float64_model_only_where_it_holds_them(
        weights, dtype, holder, advice):
    """as_row_weights (the scikit-learn estimators' path): a ratio past float64 was
    refused as more than the float32 model holds, "or use a float64 model", which refuses
    it too (and a float64 model was told to use one); a weight the power-of-two scaling
    flushed to 0 was not refused at all."""
    from fastbp._validation import as_row_weights
    with pytest.raises(ValueError, match=f"more than {holder} holds") as refused:
        as_row_weights(np.array(weights), np.dtype(dtype))
    assert str(refused.value).endswith("or use a float64 model") == advice
    if dtype == "float32":
        from fastbp.sklearn import MLPClassifier
        X = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
        with pytest.raises(ValueError, match=f"more than {holder} holds"):
            MLPClassifier(hidden_layer_sizes=(3,), max_iter=1).fit(
                X, np.arange(8) % 2, sample_weight=np.repeat(weights, 4))


def test_a_held_out_rows_weight_does_not_decide_what_the_fit_can_hold():
    """validation_split holds out the last rows, whose weights nothing reads (the
    validation loss is unweighted), yet the float32 range check of the weights counted
    them: one held-out row weighing 1e39 made the fit refuse the ratio of its weights."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30)

    def fit(weights):
        model = fastbp.MLP([4, 5, 3], ["tanh", "softmax"], seed=0, dtype="float32")
        history = fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=1).fit(
            model, X, y, sample_weight=weights, validation_split=0.3)
        return model.parameter_vector(), history.history["val_loss"]

    weights = np.linspace(0.5, 2.0, 30)
    heavy = weights.copy()
    heavy[-1] = 1e39                      # row 29: held out (rows 21..29)
    parameters, validation_loss = fit(weights)
    heavy_parameters, heavy_validation_loss = fit(heavy)
    np.testing.assert_array_equal(heavy_parameters, parameters)
    assert heavy_validation_loss == validation_loss
    heavy[:21] = 0                        # the rows left to train on weigh nothing
    with pytest.raises(ValueError, match="left to train on after validation_split sum to 0"):
        fit(heavy)


@pytest.mark.parametrize("trained_scale", [2.0 ** -66, 2.0 ** -100])
def test_held_out_weights_do_not_scale_the_trained_ones_with_class_weight(trained_scale):
    """With class_weight, sample_weight was scaled by its largest over all rows, held-out
    ones included: trained weights 2^-66 beside a held-out 2^996 became subnormal (the
    parameters 3e-6 off) or 0 (2^-100: refused as summing to 0). Each factor is now
    scaled over the rows trained on: the run of the same weights at scale 1."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, 30)

    def fit(weights):
        model = fastbp.MLP([4, 5, 3], ["tanh", "softmax"], seed=0)
        fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=1,
                       class_weight={0: 1.0, 1: 0.5, 2: 2.0}).fit(
            model, X, y, sample_weight=weights, validation_split=0.3)
        return model.parameter_vector()

    weights = np.linspace(0.5, 2.0, 30)
    heavy = weights * trained_scale
    heavy[-1] = 2.0 ** 996                # row 29: held out
    np.testing.assert_array_equal(fit(heavy), fit(weights))


def test_a_fit_on_some_rows_checks_the_weights_of_those_rows():
    """fastbp.dask's pieces (Trainer._fit_rows, documented as fit(X[rows], Y[rows])): the
    weights' range was checked over every row of X, so a float32 piece of class 0 only,
    under class_weight {0: 1, 1: 1e-39}, was refused for the other class's weight, where
    the fit of its rows alone trains (the same bits)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4)).astype(np.float32)
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    def trainer():
        return fastbp.Trainer("cce", epochs=1, seed=0, n_threads=1,
                              class_weight={0: 1.0, 1: 1e-39})

    pieces = fastbp.MLP([4, 5, 2], ["tanh", "softmax"], seed=0, dtype="float32")
    trainer()._fit_rows(pieces, X, y, rows=np.arange(10))
    alone = fastbp.MLP([4, 5, 2], ["tanh", "softmax"], seed=0, dtype="float32")
    trainer().fit(alone, X[:10], y[:10])
    np.testing.assert_array_equal(pieces.parameter_vector(), alone.parameter_vector())


def test_a_schedule_subclass_that_keeps_its_own_state_is_not_checked_as_its_base():
    """A subclass of one of fastbp's schedules that overrides its rate and keeps none of
    the base's attributes (a warm-up on ExponentialDecay) is used as it is (checking it
    by the base's constructor raised AttributeError: it has no gamma)."""
    class Warmup(schedules.ExponentialDecay):
        def __init__(self, epochs):
            self.warmup = epochs

        def _rate(self, epoch, base):
            return base * min(1.0, (epoch + 1) / self.warmup)

    X = np.random.default_rng(0).normal(size=(40, 3))
    model = fastbp.MLP([3, 2], ["identity"], seed=0)
    history = fastbp.Trainer("mse", epochs=3, seed=0, learning_rate=0.1,
                             schedule=Warmup(3)).fit(model, X, X[:, :2])
    assert history.history["learning_rate"] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])


def test_the_state_of_a_model_gone_is_let_go_as_the_next_fit_begins():
    """A trainer reused across models (folds, a search) held the optimizer state of a model
    already deleted through the next model's whole fit (kept for a refusal to put back):
    Adam's two parameter-sized rows more at the peak. It is let go as the fit begins; the
    state of a live model is still kept (test_api_hardening.py,
    test_a_fit_refused_before_its_first_step_keeps_the_trainers_state)."""
    import gc
    import weakref

    rng = np.random.default_rng(0)
    X, Y = rng.random((32, 6)), rng.random((32, 2))
    # (shuffle off: the reused trainer's generator has moved on, and rows summed in another
    # order may round differently, as the checked build's did)
    trainer = fastbp.Trainer("mse", optimizer="adam", epochs=1, seed=0, shuffle=False)
    first = fastbp.MLP([6, 8, 2], ["tanh", "identity"], seed=0)
    trainer.fit(first, X, Y)
    old_state = weakref.ref(trainer._state)
    del first
    gc.collect()
    seen = []

    class Probe(fastbp.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(old_state() is None)

    second = fastbp.MLP([6, 8, 2], ["tanh", "identity"], seed=1)
    fresh = fastbp.MLP([6, 8, 2], ["tanh", "identity"], seed=1)
    trainer.fit(second, X, Y, callbacks=[Probe()])
    assert seen == [True]
    fastbp.Trainer("mse", optimizer="adam", epochs=1, seed=0, shuffle=False).fit(fresh, X, Y)
    np.testing.assert_array_equal(second.parameter_vector(), fresh.parameter_vector())
