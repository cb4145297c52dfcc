"""Bad input is refused with a message that names the problem and leaves the model unchanged;
odd-but-valid input (lists, other dtypes, Fortran order, strided views, read-only arrays,
memmaps) gives exactly the run a clean array gives; a diverging run says so.
"""
import tracemalloc
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _core
from fastbp.model import ACTIVATIONS

SIZES = [4, 6, 3]
N = 13
DTYPES = ["float32", "float64"]


# ---------------------------------------------------------------- helpers

def make_model(dtype="float32", activations=("tanh", "softmax"), sizes=SIZES, seed=0):
    return fastbp.MLP(list(sizes), list(activations), dtype=dtype, seed=seed)


def data(seed=0, n=N, n_in=SIZES[0], n_out=SIZES[-1]):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    labels = rng.integers(0, n_out, size=n)
    onehot = np.eye(n_out)[labels]
    Yreal = rng.normal(size=(n, n_out))
    Yprob = rng.uniform(0, 1, size=(n, n_out))
    return X, labels, onehot, Yreal, Yprob


def snapshot(model):
    return {
        "params": [np.array(p, copy=True) for p in model.weights + model.biases],
        "layer_sizes": model.layer_sizes,
        "activations": model.activations,
        "dtype": model.dtype,
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["layer_sizes"] == before["layer_sizes"]
    assert after["activations"] == before["activations"]
    assert after["dtype"] == before["dtype"]
    assert len(after["params"]) == len(before["params"])
    for a, b in zip(after["params"], before["params"]):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b), "a refused call changed the model's parameters"


def params_of(model):
    return [np.array(p, copy=True) for p in model.weights + model.biases]


def assert_same_params(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        assert np.array_equal(x, y)


# ---------------------------------------------------------------- bad X / Y for fit

def _with(array, index, value):
    out = np.array(array, dtype=np.float64, copy=True)
    out[index] = value
    return out


X0, LABELS0, ONEHOT0, YREAL0, YPROB0 = data()

# (id, loss, X, Y, exception type, message regex)
BAD_DATA = [
    ("X-nan", "mse", _with(X0, (3, 1), np.nan), YREAL0, ValueError, r"X contains NaN"),
    ("X-inf", "mse", _with(X0, (0, 0), np.inf), YREAL0, ValueError, r"X contains NaN or inf"),
    ("X-neginf", "cce", _with(X0, (12, 3), -np.inf), LABELS0, ValueError, r"X contains NaN"),
    ("Y-nan", "mse", X0, _with(YREAL0, (2, 2), np.nan), ValueError, r"Y contains NaN"),
    ("Y-inf-bce", "bce", X0, _with(YPROB0, (1, 0), np.inf), ValueError, r"Y contains NaN"),
    ("Y-nan-onehot", "cce", X0, _with(ONEHOT0, (1, 0), np.nan), ValueError, r"Y contains NaN"),
    ("labels-nan", "cce", X0, _with(LABELS0.astype(float), 4, np.nan), ValueError,
     r"labels\) contains NaN"),
    ("X-too-few-columns", "mse", X0[:, :3], YREAL0, ValueError, r"X has 3 columns.*has 4"),
    ("X-too-many-columns", "mse", np.hstack([X0, X0]), YREAL0, ValueError, r"X has 8 columns"),
    ("X-1d", "mse", X0[:, 0], YREAL0, ValueError, r"X must be 2-D"),
    ("X-3d", "mse", X0[None], YREAL0, ValueError, r"X must be 2-D"),
    ("X-scalar", "mse", 1.0, YREAL0, ValueError, r"X must be 2-D"),
    ("rows-mismatch", "mse", X0, YREAL0[:-1], ValueError, r"Y has 12 rows but X has 13"),
    ("rows-mismatch-labels", "cce", X0[:5], LABELS0, ValueError, r"Y has 13 rows but X has 5"),
    ("Y-wrong-columns", "mse", X0, YREAL0[:, :2], ValueError, r"Y must have shape \(n_samples, 3\)"),
    ("Y-1d-for-3-outputs", "mse", X0, YREAL0[:, 0], ValueError, r"Y must have shape"),
    ("Y-3d", "mse", X0, YREAL0[:, :, None], ValueError, r"Y must have shape"),
    ("Y-scalar", "mse", X0, 1.0, ValueError, r"Y has 0 rows but X has 13"),
    ("labels-too-big", "cce", X0, np.where(LABELS0 == 0, 3, LABELS0), ValueError,
     r"class labels\) must lie in 0\.\.2"),
    ("labels-negative", "cce", X0, np.where(LABELS0 == 0, -1, LABELS0), ValueError,
     r"class labels\) must lie in 0\.\.2"),
    ("labels-not-whole", "cce", X0, LABELS0 + 0.5 * (LABELS0 == 1), ValueError,
     r"class labels\) must be whole numbers"),
    ("labels-column-out-of-range", "cce", X0, (LABELS0 + 1)[:, None], ValueError,
     r"must lie in 0\.\.2"),
    ("bce-above-1", "bce", X0, _with(YPROB0, (5, 1), 1.5), ValueError, r"\[0, 1\]"),
    ("bce-below-0", "bce", X0, _with(YPROB0, (5, 1), -0.25), ValueError, r"\[0, 1\]"),
    ("cce-rows-not-summing-to-1", "cce", X0, ONEHOT0 * 2, ValueError, r"one-hot"),
    ("cce-negative-probabilities", "cce", X0, _with(ONEHOT0, (0, slice(None)), [1.5, -0.5, 0]),
     ValueError, r"one-hot"),
    ("X-empty", "mse", np.empty((0, 4)), np.empty((0, 3)), ValueError, r"X is empty"),
    ("X-empty-list", "mse", [], [], ValueError, r"X must be 2-D"),
    ("Y-empty", "mse", X0, np.empty((0, 3)), ValueError, r"Y has 0 rows but X has 13"),
    ("X-none", "mse", None, YREAL0, TypeError, r"X must be a numeric array"),
    ("X-string", "mse", "abc", YREAL0, TypeError, r"X must be a numeric array"),
    ("X-strings", "mse", np.full((N, 4), "a"), YREAL0, TypeError, r"X must hold numbers"),
    ("X-complex", "mse", X0 + 1j, YREAL0, TypeError, r"X must hold numbers"),
    ("X-object", "mse", np.array([[object()] * 4] * N), YREAL0, TypeError, r"X must hold numbers"),
    ("X-ragged", "mse", [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], YREAL0[:2], ValueError,
     r"X could not be read as a numeric array"),
    ("Y-none", "mse", X0, None, TypeError, r"Y must be a numeric array"),
    ("Y-strings", "mse", X0, np.full((N, 3), "a"), TypeError, r"Y must hold numbers"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_fit_refuses_bad_data_and_leaves_model_unchanged(case, dtype):
    _, loss, X, Y, error, message = case
    activations = ("tanh", "sigmoid") if loss == "bce" else ("tanh", "softmax")
    if loss == "mse":
        activations = ("tanh", "identity")
    model = make_model(dtype, activations)
    before = snapshot(model)
    trainer = fastbp.Trainer(loss, learning_rate=0.1, epochs=2, batch_size=4, seed=0)
    with pytest.raises(error, match=message):
        trainer.fit(model, X, Y)
    assert_unchanged(model, before)


def test_values_too_large_for_float32_are_refused():
    model = make_model("float32", ("tanh", "identity"))
    before = snapshot(model)
    X = _with(X0, (1, 1), 1e300)  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(or values too large"):
        fastbp.Trainer("mse", epochs=1).fit(model, X, YREAL0)
    with pytest.raises(ValueError, match=r"Y contains NaN or infinity"):
        fastbp.Trainer("mse", epochs=1).fit(model, X0, _with(YREAL0, (0, 0), -1e300))
    with pytest.raises(ValueError, match=r"too large"):
        model.predict(X)
    assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in BAD_DATA if c[0] not in ("Y-none",)],
                         ids=[c[0] for c in BAD_DATA if c[0] not in ("Y-none",)])
def test_gradients_refuse_bad_data_and_leave_model_unchanged(case, dtype):
    _, loss, X, Y, error, message = case
    activations = {"bce": ("tanh", "sigmoid"), "mse": ("tanh", "identity")}.get(
        loss, ("tanh", "softmax"))
    model = make_model(dtype, activations)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.gradients(X, Y, loss)
    assert_unchanged(model, before)


BAD_PREDICT = [
    ("nan", _with(X0, (0, 0), np.nan), ValueError, r"X contains NaN"),
    ("inf", _with(X0, (4, 2), np.inf), ValueError, r"X contains NaN or inf"),
    ("columns", X0[:, :2], ValueError, r"X has 2 columns.*has 4"),
    ("1d", X0[0], ValueError, r"X must be 2-D .*; for one sample, X.reshape\(1, -1\)"),
    ("1d-long", X0[:, 0], ValueError, r"X must be 2-D \(n_samples, 4\); got shape \(\d+,\)$"),
    ("empty", np.empty((0, 4)), ValueError, r"X is empty"),
    ("none", None, TypeError, r"X must be a numeric array"),
    ("complex", X0 * 1j, TypeError, r"X must hold numbers"),
    ("ragged", [[1, 2, 3, 4], [1]], ValueError, r"X could not be read"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BAD_PREDICT, ids=[c[0] for c in BAD_PREDICT])
def test_predict_refuses_bad_data(case, dtype):
    _, X, error, message = case
    model = make_model(dtype)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        model.predict(X)
    assert_unchanged(model, before)


def test_gradients_refuse_unknown_loss_listing_valid_names():
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; valid names: .*mse.*bce"):
        model.gradients(X0, LABELS0, "hinge")
    with pytest.raises(TypeError, match=r"loss must be a name"):
        model.gradients(X0, LABELS0, 3)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- bad trainer settings

# (attribute, value, error, message)
BAD_SETTINGS = [
    ("batch_size", 2.5, ValueError, r"batch_size must be a whole number; got 2\.5"),
    ("batch_size", float("nan"), ValueError, r"batch_size must be a whole number"),
    ("batch_size", float("inf"), ValueError, r"batch_size must be a whole number"),
    ("batch_size", "32", TypeError, r"batch_size must be a whole number"),
    ("batch_size", None, TypeError, r"batch_size must be a whole number"),
    ("batch_size", True, TypeError, r"batch_size must be a whole number"),
    ("batch_size", 0, ValueError, r"batch_size must be >= 1; got 0"),
    ("batch_size", -4, ValueError, r"batch_size must be >= 1; got -4"),
    ("batch_size", np.int64(0), ValueError, r"batch_size must be >= 1"),
    ("epochs", 1.5, ValueError, r"epochs must be a whole number; got 1\.5"),
    ("epochs", np.float64(np.nan), ValueError, r"epochs must be a whole number"),
    ("epochs", "3", TypeError, r"epochs must be a whole number"),
    ("epochs", [3], TypeError, r"epochs must be a whole number"),
    ("epochs", -1, ValueError, r"epochs must be >= 0; got -1"),
    ("learning_rate", -0.1, ValueError, r"learning_rate must be a finite number >= 0"),
    ("learning_rate", float("nan"), ValueError, r"learning_rate must be a finite number"),
    ("learning_rate", float("inf"), ValueError, r"learning_rate must be a finite number"),
    ("learning_rate", "0.1", TypeError, r"learning_rate must be a real number"),
    ("learning_rate", "0.1", TypeError, r"learning_rate must be a real number"),
    ("learning_rate", 1 + 1j, TypeError, r"learning_rate must be a real number"),
    ("loss", "hinge", ValueError, r"unknown loss 'hinge'; valid names: "),
    ("loss", None, TypeError, r"loss must be a name"),
    ("shuffle", "yes", TypeError, r"shuffle must be True or False"),
    ("seed", -1, ValueError, r"seed must be >= 0"),
    ("seed", 1.5, ValueError, r"seed must be a whole number"),
    ("n_threads", 0, ValueError, r"n_threads must be >= 1"),
]
SETTING_IDS = [f"{a}={v!r}" for a, v, _, _ in BAD_SETTINGS]
GOOD_SETTINGS = dict(loss="cce", learning_rate=0.1, epochs=2, batch_size=4, shuffle=True,
                     seed=0, n_threads=None)


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=SETTING_IDS)
def test_trainer_constructor_refuses_bad_settings(case):
    attribute, value, error, message = case
    with pytest.raises(error, match=message):
        fastbp.Trainer(**{**GOOD_SETTINGS, attribute: value})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BAD_SETTINGS, ids=SETTING_IDS)
def test_fit_refuses_settings_changed_after_construction(case, dtype):
    attribute, value, error, message = case
    trainer = fastbp.Trainer(**GOOD_SETTINGS)
    setattr(trainer, attribute, value)
    model = make_model(dtype)
    before = snapshot(model)
    with pytest.raises(error, match=message):
        trainer.fit(model, X0, LABELS0)
    assert_unchanged(model, before)


def test_fit_refuses_a_non_model():
    with pytest.raises(TypeError, match=r"model must be a fastbp\.MLP"):
        fastbp.Trainer("mse").fit("not a model", X0, YREAL0)


@pytest.mark.parametrize("value", [1, 3.0, np.int32(5), np.float64(2.0), 10**6])
def test_whole_numbers_in_other_types_are_accepted(value):
    trainer = fastbp.Trainer("cce", batch_size=value, epochs=1, seed=0)
    model = make_model()
    trainer.fit(model, X0, LABELS0)


def test_zero_epochs_and_zero_learning_rate_are_valid_and_change_nothing():
    model = make_model()
    before = snapshot(model)
    history = fastbp.Trainer("cce", epochs=0, seed=0).fit(model, X0, LABELS0)
    assert history.epochs == 0
    assert_unchanged(model, before)
    history = fastbp.Trainer("cce", learning_rate=0.0, epochs=2, seed=0).fit(model, X0, LABELS0)
    assert history.epochs == 2
    assert_unchanged(model, before)


# ---------------------------------------------------------------- names

def test_losses_get_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        fastbp.losses.get("cross_entropy")
    message = str(info.value)
    assert "cross_entropy" in message
    for name in ("mse", "mae", "categorical_crossentropy", "cce", "binary_crossentropy", "bce"):
        assert name in message
    for name in fastbp.losses.NAMES:
        assert name in message


def test_losses_get_accepts_names_aliases_and_objects():
    assert fastbp.losses.get("CCE") == fastbp.losses.CategoricalCrossentropy()
    assert fastbp.losses.get("bce") == fastbp.losses.BinaryCrossentropy()
    assert fastbp.losses.get(fastbp.losses.MeanSquaredError()) == fastbp.losses.MeanSquaredError()
    with pytest.raises(TypeError, match=r"loss must be a name"):
        fastbp.losses.get(42)

    class Custom(fastbp.losses.Loss):
        name = "hinge"

    with pytest.raises(ValueError, match=r"hinge"):
        fastbp.losses.get(Custom())


def test_loss_objects_validate_plain_arrays():
    bce = fastbp.losses.get("bce")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce.value([[2.0]], [[0.5]])
    with pytest.raises(ValueError, match=r"y_pred contains NaN"):
        bce.value([[1.0]], [[np.nan]])
    with pytest.raises(ValueError, match=r"Y has 1 rows but X has 2"):
        fastbp.losses.get("mse").value([[1.0]], [[0.5], [0.2]])
    with pytest.raises(ValueError, match=r"y_pred must be a non-empty"):
        fastbp.losses.get("mse").value([], [])


@pytest.mark.parametrize("bad", ["mish", "ReLu6", "soft_max"])
def test_unknown_activation_lists_valid_names(bad):
    with pytest.raises(ValueError) as info:
        fastbp.MLP([3, 4, 2], [bad, "softmax"])
    message = str(info.value)
    assert bad.lower() in message
    assert "valid names" in message
    for name in ACTIVATIONS:
        assert name in message


@pytest.mark.parametrize("activations", [["softmax", "identity"], ["relu", "softmax", "softmax"],
                                         "softmax"])
def test_softmax_on_a_hidden_layer_is_refused(activations):
    sizes = [3, 4, 5, 2] if len(activations) == 3 else [3, 4, 2]
    with pytest.raises(ValueError, match=r"softmax is an output activation.*hidden layer"):
        fastbp.MLP(sizes, activations)


@pytest.mark.parametrize("name", ["softmax", "relu", "Sigmoid"])
def test_a_single_name_for_a_network_without_hidden_layers_is_refused(name):
    """One name is for the hidden layers (the output layer gets identity): with none, it
    was dropped silently, and MLP([4, 3], "softmax") had an identity output. The list
    form names the output layer's; "identity" is what the output gets either way."""
    with pytest.raises(ValueError, match=r"this network has none.*\[" + repr(name)):
        fastbp.MLP([4, 3], name)
    assert fastbp.MLP([4, 3], [name]).activations == (name.lower(),)
    assert fastbp.MLP([4, 3], "identity").activations == ("identity",)
    with pytest.raises(ValueError, match="unknown activation 'bogus'"):
        fastbp.MLP([4, 3], "bogus")


@pytest.mark.parametrize("activations", [["relu"], ["relu", "relu", "identity"], []])
def test_wrong_number_of_activations_is_refused(activations):
    with pytest.raises(ValueError, match=rf"one name per weight layer \(2\).*got {len(activations)}"):
        fastbp.MLP([3, 4, 2], activations)


@pytest.mark.parametrize("activations", [None, 3, ["relu", 3], [None, "identity"]])
def test_activations_of_wrong_type_are_refused(activations):
    with pytest.raises(TypeError, match=r"activations must be a name or a list of names"):
        fastbp.MLP([3, 4, 2], activations)


@pytest.mark.parametrize("sizes, error, message", [
    ([3], ValueError, r"at least an input and an output"),
    ([], ValueError, r"at least an input and an output"),
    ([3, 0, 2], ValueError, r"every layer size must be >= 1; got 0"),
    ([3, -4, 2], ValueError, r"every layer size must be >= 1"),
    ([3, 2.5, 2], ValueError, r"every layer size must be a whole number"),
    ([3, "4", 2], TypeError, r"every layer size must be a whole number"),
    ([3, True], TypeError, r"every layer size must be a whole number"),
    ("342", TypeError, r"layer_sizes must be a sequence"),
    (5, TypeError, r"layer_sizes must be a sequence"),
    ([3, 2**31], ValueError, r"below 2\*\*31"),
])
def test_bad_layer_sizes_are_refused(sizes, error, message):
    with pytest.raises(error, match=message):
        fastbp.MLP(sizes, "relu")


@pytest.mark.parametrize("dtype, error", [("float16", ValueError), ("int32", ValueError),
                                          ("banana", TypeError), (complex, ValueError)])
def test_bad_dtype_lists_valid_ones(dtype, error):
    with pytest.raises(error, match=r"dtype must be one of float32, float64"):
        fastbp.MLP([3, 2], "identity", dtype=dtype)


def test_bad_init_and_seed_are_refused():
    with pytest.raises(ValueError, match=r"unknown init 'lecun'; valid names: auto, he, glorot"):
        fastbp.MLP([3, 2], "identity", init="lecun")
    with pytest.raises(TypeError, match=r"seed must be None or an integer"):
        fastbp.MLP([3, 2], "identity", seed="0")


def test_parameter_setters_are_all_or_nothing():
    model = make_model("float32")
    before = snapshot(model)
    good0 = np.ones_like(model.weights[0])
    with pytest.raises(ValueError, match=r"weights\[1\] contains NaN"):
        model.weights = [good0, np.full_like(model.weights[1], np.nan)]
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(6, 3\)"):
        model.weights = [good0, np.ones((3, 6))]
    with pytest.raises(ValueError, match=r"weights needs 2 arrays; got 1"):
        model.weights = [good0]
    with pytest.raises(TypeError, match=r"weights must be a list of 2 arrays"):
        model.weights = good0
    with pytest.raises(ValueError, match=r"biases\[0\] contains NaN or infinity \(or values too large"):
        model.biases = [np.full(6, 1e300), np.zeros(3)]
    assert_unchanged(model, before)


# ---------------------------------------------------------------- odd but valid inputs

def run(model_dtype, X, Y, loss="cce", shuffle=True, activations=("tanh", "softmax"), X_pred=None):
    model = make_model(model_dtype, activations)
    history = fastbp.Trainer(loss, learning_rate=0.1, epochs=3, batch_size=4, shuffle=shuffle,
                             seed=7).fit(model, X, Y)
    return params_of(model), history.loss, model.predict(X if X_pred is None else X_pred)


def _fortran(a):
    return np.asfortranarray(a)


def _strided_rows(a):
    big = np.zeros((a.shape[0] * 2, a.shape[1]), dtype=a.dtype)
    big[::2] = a
    return big[::2]


def _strided_columns(a):
    big = np.zeros((a.shape[0], a.shape[1] * 3), dtype=a.dtype)
    big[:, 1::3] = a
    return big[:, 1::3]


def _reversed(a):
    return np.ascontiguousarray(a[::-1])[::-1]


def _read_only(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def _offset_in_buffer(a):
    """A C-contiguous view that starts 1 element into its buffer."""
    buffer = np.zeros(a.size + 1, dtype=a.dtype)
    view = buffer[1:].reshape(a.shape)
    view[...] = a
    return view


LAYOUTS = {
    "list": lambda a: a.tolist(),
    "tuple-of-tuples": lambda a: tuple(map(tuple, a.tolist())),
    "fortran": _fortran,
    "strided-rows": _strided_rows,
    "strided-columns": _strided_columns,
    "negative-strides": _reversed,
    "read-only": _read_only,
    "read-only-fortran": lambda a: _read_only(np.asfortranarray(a)),
    "big-endian": _big_endian,
    "offset-view": _offset_in_buffer,
}


@pytest.mark.parametrize("model_dtype", DTYPES)
@pytest.mark.parametrize("input_dtype", ["float16", "float32", "float64", "int8", "int32",
                                         "int64", "uint8"])
@pytest.mark.parametrize("layout", ["plain"] + list(LAYOUTS))
@pytest.mark.parametrize("shuffle", [True, False])
def test_odd_inputs_give_the_same_run_as_clean_ones(model_dtype, input_dtype, layout, shuffle):
    rng = np.random.default_rng(3)
    if input_dtype.startswith(("int", "uint")):
        X = rng.integers(0, 5, size=(N, 4)).astype(input_dtype)
    else:
        X = rng.normal(size=(N, 4)).astype(input_dtype)
    Y = rng.normal(size=(N, 3)).astype(input_dtype if input_dtype.startswith("float") else "float64")
    clean_X = np.ascontiguousarray(X, dtype=model_dtype)
    clean_Y = np.ascontiguousarray(Y, dtype=model_dtype)
    odd_X = X if layout == "plain" else LAYOUTS[layout](X)
    odd_Y = Y if layout == "plain" else LAYOUTS[layout](Y)

    expected = run(model_dtype, clean_X, clean_Y, "mse", shuffle, ("tanh", "identity"))
    got = run(model_dtype, odd_X, odd_Y, "mse", shuffle, ("tanh", "identity"), X_pred=odd_X)
    assert_same_params(got[0], expected[0])
    assert got[1] == expected[1]
    assert got[2].dtype == np.dtype(model_dtype)
    assert np.array_equal(got[2], expected[2])
    # predict alone, and gradients, agree too
    model = make_model(model_dtype, ("tanh", "identity"))
    assert np.array_equal(model.predict(odd_X), model.predict(clean_X))
    v1, gw1, gb1 = model.gradients(odd_X, odd_Y, "mse")
    v2, gw2, gb2 = model.gradients(clean_X, clean_Y, "mse")
    assert v1 == v2
    assert_same_params(gw1 + gb1, gw2 + gb2)


LABEL_FORMS = {
    "int64": lambda l: l.astype(np.int64),
    "int8": lambda l: l.astype(np.int8),
    "uint8": lambda l: l.astype(np.uint8),
    "int32-read-only": lambda l: _read_only(l.astype(np.int32)),
    "float64-whole": lambda l: l.astype(np.float64),
    "float32-whole": lambda l: l.astype(np.float32),
    "list": lambda l: l.tolist(),
    "column": lambda l: l.reshape(-1, 1),
    "strided": lambda l: np.repeat(l, 2)[::2],
}


@pytest.mark.parametrize("model_dtype", DTYPES)
@pytest.mark.parametrize("form", list(LABEL_FORMS))
@pytest.mark.parametrize("shuffle", [True, False])
def test_label_forms_give_the_same_run(model_dtype, form, shuffle):
    X, labels, onehot, _, _ = data(5)
    expected = run(model_dtype, X, labels.astype(np.intp), "cce", shuffle)
    got = run(model_dtype, X, LABEL_FORMS[form](labels), "cce", shuffle)
    assert_same_params(got[0], expected[0])
    assert got[1] == expected[1]
    assert np.array_equal(got[2], expected[2])


@pytest.mark.parametrize("model_dtype", DTYPES)
def test_one_hot_and_labels_give_the_same_run(model_dtype):
    X, labels, onehot, _, _ = data(6)
    a = run(model_dtype, X, labels, "cce")
    b = run(model_dtype, X, onehot, "cce")
    c = run(model_dtype, X, onehot.astype(bool), "cce")
    assert_same_params(a[0], b[0])
    assert_same_params(b[0], c[0])


@pytest.mark.parametrize("model_dtype", DTYPES)
def test_bce_targets_as_bools_and_ints(model_dtype):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(N, 4))
    Y = rng.integers(0, 2, size=(N, 3))
    expected = run(model_dtype, X, Y.astype(model_dtype), "bce", True, ("relu", "sigmoid"))
    for form in (Y.astype(bool), Y, Y.astype(np.uint8), Y.tolist()):
        got = run(model_dtype, X, form, "bce", True, ("relu", "sigmoid"))
        assert_same_params(got[0], expected[0])


# ---------------------------------------------------------------- memmap, read-only: no copy

def _capture(monkeypatch, name):
    """Wrap _core.<name> to record the X array the compiled core is handed (for predict,
    also by the fast path of models made after this call)."""
    seen = []
    original = getattr(_core, name)
    position = {"train_epoch": 5, "predict": 3, "gradients": 5}[name]

    def wrapper(*args, **options):
        seen.append(args[position])
        return original(*args, **options)

    monkeypatch.setattr(_core, name, wrapper)
    if name == "predict":   # a few rows take predict's fast path: models built from now on
        made = _core.Predictor  # record the X their _core.Predictor computes from

        def recording_predictor(*args, **kwargs):
            predictor = made(*args, **kwargs)

            def call(X, out=None, n_threads=None):
                result = predictor(X, out, n_threads)
                if result is not None:
                    seen.append(X)
                return result
            return call
        monkeypatch.setattr(_core, "Predictor", recording_predictor)
    return seen


def _memmap(tmp_path, array, mode="r", offset=0, name="x.dat"):
    path = tmp_path / name
    with open(path, "wb") as stream:
        stream.write(b"\0" * offset)
        stream.write(np.ascontiguousarray(array).tobytes())
    return np.memmap(path, dtype=array.dtype, mode=mode, shape=array.shape, offset=offset)


@pytest.mark.parametrize("model_dtype", DTYPES)
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_memmap_in_the_model_dtype_is_not_copied(tmp_path, monkeypatch, model_dtype, mode):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(40, 4)).astype(model_dtype)
    Y = rng.normal(size=(40, 3)).astype(model_dtype)
    mX = _memmap(tmp_path, X, mode)
    mY = _memmap(tmp_path, Y, mode, name="y.dat")

    # The default thread counts are measured (on data of their own) at the first fit,
    # predict and gradients of a shape: do that before recording what the core is handed.
    fastbp.Trainer("mse", epochs=1, batch_size=8).fit(make_model(model_dtype), X, Y)
    make_model(model_dtype).predict(X)
    make_model(model_dtype).gradients(X, Y, "mse")
    seen_fit = _capture(monkeypatch, "train_epoch")
    seen_predict = _capture(monkeypatch, "predict")
    seen_grad = _capture(monkeypatch, "gradients")
    model = make_model(model_dtype, ("tanh", "identity"))
    fastbp.Trainer("mse", epochs=2, batch_size=8, seed=0).fit(model, mX, mY)
    out = model.predict(mX)
    model.gradients(mX, mY, "mse")
    assert seen_fit and seen_predict and seen_grad
    for seen in (seen_fit, seen_predict, seen_grad):
        for handed in seen:
            assert np.shares_memory(handed, mX), "the memmap was copied"

    clean = make_model(model_dtype, ("tanh", "identity"))
    fastbp.Trainer("mse", epochs=2, batch_size=8, seed=0).fit(clean, X, Y)
    assert_same_params(params_of(model), params_of(clean))
    assert np.array_equal(out, clean.predict(X))


@pytest.mark.parametrize("model_dtype", DTYPES)
def test_read_only_array_is_not_copied(monkeypatch, model_dtype):
    X = _read_only(np.random.default_rng(1).normal(size=(30, 4)).astype(model_dtype))
    # the first fit of a shape measures its default thread count on data of its own
    fastbp.Trainer("cce", epochs=1).fit(make_model(model_dtype), X.copy(), np.arange(30) % 3)
    seen_fit = _capture(monkeypatch, "train_epoch")
    seen_predict = _capture(monkeypatch, "predict")
    model = make_model(model_dtype)
    fastbp.Trainer("cce", epochs=1, seed=0).fit(model, X, np.arange(30) % 3)
    model.predict(X)
    assert all(np.shares_memory(a, X) for a in seen_fit + seen_predict)
    assert seen_fit and seen_predict


def test_memmap_fit_and_predict_allocate_far_less_than_the_data(tmp_path):
    n, width = 20000, 256     # 20 MB of float32
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, width)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    mX = _memmap(tmp_path, X)
    model = fastbp.MLP([width, 8, 3], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", epochs=1, batch_size=256, seed=0)
    # warm up caches, imports, BLAS buffers, the measured thread count of this batch size
    # and the kernel-or-BLAS choice of predict's chunks (measured on operands of their size)
    trainer.fit(model, mX[:512], labels[:512])
    model.predict(mX)
    tracemalloc.start()
    try:
        trainer.fit(model, mX, labels)
        model.predict(mX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, f"peak {peak} bytes for {X.nbytes} bytes of data: X was copied"


@pytest.mark.parametrize("model_dtype", DTYPES)
def test_memmap_that_does_not_fit_is_converted_and_gives_the_same_run(tmp_path, model_dtype):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(25, 4))
    Y = rng.normal(size=(25, 3))
    other = "float64" if model_dtype == "float32" else "float32"
    cases = {
        "other-dtype": (_memmap(tmp_path, X.astype(other)), X.astype(other)),
        "unaligned": (_memmap(tmp_path, X.astype(model_dtype), offset=1, name="u.dat"),
                      X.astype(model_dtype)),
        "fortran": (np.memmap(tmp_path / "f.dat", dtype=model_dtype, mode="w+", shape=X.shape,
                              order="F"), X.astype(model_dtype)),
    }
    cases["fortran"][0][...] = cases["fortran"][1]
    for name, (mapped, plain) in cases.items():
        got = run(model_dtype, mapped, Y, "mse", False, ("tanh", "identity"))
        expected = run(model_dtype, np.ascontiguousarray(plain, dtype=model_dtype), Y, "mse", False,
                       ("tanh", "identity"))
        assert_same_params(got[0], expected[0])
        assert np.array_equal(got[2], expected[2]), name


# ---------------------------------------------------------------- divergence

def _diverging_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4)) * 10
    Y = rng.normal(size=(50, 2)) * 1000
    return X, Y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learning_rate", [1e3, 1e10, 1e20, 1e37, 1e300])
@pytest.mark.parametrize("batch_size, epochs", [(5, 3), (50, 1), (50, 3)])
@pytest.mark.parametrize("activations", [("tanh", "identity"), ("relu", "identity"),
                                         ("identity", "identity")])
def test_diverging_training_is_never_silent(dtype, learning_rate, batch_size, epochs,
                                            activations):
    """Whatever happens, the user never gets non-finite weights without a warning."""
    X, Y = _diverging_problem()
    model = fastbp.MLP([4, 8, 2], list(activations), dtype=dtype, seed=0)
    if learning_rate > float(np.finfo(dtype).max):   # refused up front: see the learning_rate tests
        with pytest.raises(ValueError, match="learning_rate"):
            fastbp.Trainer("mse", learning_rate=learning_rate).fit(model, X, Y)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fastbp.Trainer("mse", learning_rate=learning_rate, epochs=epochs,
                                 batch_size=batch_size, seed=0).fit(model, X, Y)
    finite = all(np.isfinite(p).all() for p in params_of(model))
    said = [w for w in caught if issubclass(w.category, RuntimeWarning)
            and "diverged" in str(w.message)]
    if not finite or not all(np.isfinite(history.loss)):
        assert said, "non-finite parameters or losses without a word"
        assert history.diverged
    if said:
        assert history.diverged


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learning_rate", [1e10, 1e20, 1e37, 1e300])
@pytest.mark.parametrize("batch_size, epochs", [(5, 50), (50, 50)])
def test_diverging_training_warns_and_leaves_finite_parameters(dtype, learning_rate, batch_size,
                                                               epochs):
    X, Y = _diverging_problem()
    model = fastbp.MLP([4, 8, 2], ["tanh", "identity"], dtype=dtype, seed=0)
    if learning_rate > float(np.finfo(dtype).max):   # refused up front: see the learning_rate tests
        with pytest.raises(ValueError, match="learning_rate"):
            fastbp.Trainer("mse", learning_rate=learning_rate).fit(model, X, Y)
        return
    with pytest.warns(RuntimeWarning, match=r"diverged"):
        history = fastbp.Trainer("mse", learning_rate=learning_rate, epochs=epochs,
                                 batch_size=batch_size, seed=0).fit(model, X, Y)
    assert history.diverged
    assert all(np.isfinite(history.loss))
    for p in params_of(model):
        assert np.isfinite(p).all(), "diverged training left non-finite parameters"


def test_gradients_with_non_finite_loss_warn():
    model = fastbp.MLP([2, 2], ["identity"], dtype="float32", seed=0)
    model.weights[0][...] = 3e38          # live parameters, written in place
    with pytest.warns(RuntimeWarning, match=r"diverged"):
        value, gw, gb = model.gradients(np.full((3, 2), 1e3), np.zeros((3, 2)), "mse")
    assert not np.isfinite(value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size, epochs", [(50, 1), (50, 2), (10, 1)])
def test_a_step_that_overflows_the_parameters_leaves_finite_parameters(dtype, batch_size, epochs):
    """The loss of the batch is finite, but the update itself overflows: the run must still
    warn and must not hand back inf/NaN weights."""
    X, Y = _diverging_problem()
    model = fastbp.MLP([4, 8, 2], ["tanh", "identity"], dtype=dtype, seed=0)
    learning_rate = float(np.finfo(dtype).max) / 10
    with pytest.warns(RuntimeWarning, match=r"diverged"):
        history = fastbp.Trainer("mse", learning_rate=learning_rate, epochs=epochs,
                                 batch_size=batch_size, seed=0).fit(model, X, Y)
    assert history.diverged
    for p in params_of(model):
        assert np.isfinite(p).all(), "diverged training left non-finite parameters"


def test_learning_rate_beyond_float32_range_is_refused_or_harmless():
    """1e300 is a finite float64 but -inf as a float32 step: a float32 model must either refuse
    it up front (model unchanged) or end with finite parameters and a warning."""
    X, Y = _diverging_problem()
    model = fastbp.MLP([4, 8, 2], ["tanh", "identity"], dtype="float32", seed=0)
    before = snapshot(model)
    with pytest.raises(ValueError, match="learning_rate"):
        fastbp.Trainer("mse", learning_rate=1e300, epochs=1, batch_size=50,
                       seed=0).fit(model, X, Y)
    assert_unchanged(model, before)


@pytest.mark.parametrize("callbacks", [[object()], "abc", [lambda epoch, logs: False]])
def test_bad_callbacks_are_refused_before_training(callbacks):
    model = make_model()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"callbacks must be fastbp\.callbacks\.Callback"):
        fastbp.Trainer("cce", epochs=2, seed=0).fit(model, X0, LABELS0, callbacks=callbacks)
    assert_unchanged(model, before)


def test_pandas_nullable_numbers_are_numbers():
    """A DataFrame of pandas' nullable dtypes (Float32, Float64, Int64, boolean) is read as
    its numbers (it was refused as "an array of dtype object"); a missing value is refused
    as NaN is, and text stays refused."""
    pd = pytest.importorskip("pandas")
    model = fastbp.MLP([3, 2], ["identity"], seed=0)
    X = np.random.default_rng(0).random((4, 3))
    for kind, values in [("Float32", X.astype(np.float32)), ("Float64", X),
                         ("Int64", (X * 10).astype(int)), ("boolean", X > 0.5)]:
        frame = pd.DataFrame(values).astype(kind)
        np.testing.assert_array_equal(model.predict(frame), model.predict(values))
    Y = pd.DataFrame(X[:, :2]).astype("Float64")
    fastbp.Trainer("mse", epochs=1, seed=0).fit(model, pd.DataFrame(X).astype("Float32"), Y)
    missing = pd.DataFrame(X).astype("Float32")
    missing.iloc[1, 1] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        model.predict(missing)
    text = pd.DataFrame({"a": ["x", "y"], "b": pd.array([1, 2], dtype="Int64"), "c": [1.0, 2]})
    with pytest.raises(TypeError, match="must hold numbers"):
        model.predict(text)


def test_pandas_bool_beside_numbers_are_numbers():
    """pd.get_dummies' frames (NumPy's bool columns beside float or int ones, which
    np.asarray makes objects of) are read as their numbers, in X and in Y; so is a
    nullable frame, converted once (not through an array of one object a value)."""
    pd = pytest.importorskip("pandas")
    model = fastbp.MLP([3, 2], ["identity"], seed=0)
    X = np.random.default_rng(0).random((4, 3))
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1] > 0.5, "c": (X[:, 2] * 10).astype(int)})
    assert np.asarray(frame).dtype == object        # what the check must not go by
    np.testing.assert_array_equal(model.predict(frame),
                                  model.predict(frame.to_numpy(dtype=np.float64)))
    Y = pd.DataFrame({"y0": X[:, 0], "y1": X[:, 1] > 0.5})
    fitted = [fastbp.MLP([3, 2], ["identity"], seed=0) for _ in range(2)]
    fastbp.Trainer("mse", epochs=2, seed=0).fit(fitted[0], frame, Y)
    fastbp.Trainer("mse", epochs=2, seed=0).fit(fitted[1], frame.to_numpy(np.float64),
                                                Y.to_numpy(np.float64))
    np.testing.assert_array_equal(fitted[0].parameter_vector(), fitted[1].parameter_vector())
    only_bool = pd.DataFrame(X > 0.5)     # bool alone: np.asarray reads it as bool
    np.testing.assert_array_equal(model.predict(only_bool), model.predict(X > 0.5))


def test_a_masked_array_with_masked_values_is_refused():
    """np.asarray drops a mask: the values it hides were used as data (a sample_weight
    masked to some rows trained on every row). Refused with what to do; a mask that hides
    nothing is the array itself."""
    model = make_model()
    before = snapshot(model)
    hidden = np.ma.masked_array(X0, mask=np.zeros_like(X0, dtype=bool))
    np.testing.assert_array_equal(model.predict(hidden), model.predict(X0))
    hidden[1, 2] = np.ma.masked
    with pytest.raises(TypeError, match=r"X is a masked array with 1 masked values; fill"):
        model.predict(hidden)
    weights = np.ma.masked_array(np.ones(len(X0)), mask=np.arange(len(X0)) < 3)
    with pytest.raises(TypeError, match=r"sample_weight is a masked array with 3 masked"):
        fastbp.Trainer("cce", epochs=1, seed=0).fit(model, X0, LABELS0, sample_weight=weights)
    assert_unchanged(model, before)
    # in the model's dtype, C-contiguous: predict's own paths read an ndarray subclass as
    # it is (few rows, and past 64), and they must not read the hidden values either
    for rows in (4, 500):
        rows_in_dtype = np.ma.masked_array(np.ones((rows, X0.shape[1]), model.dtype))
        rows_in_dtype[rows - 1, 0] = np.ma.masked
        with pytest.raises(TypeError, match=r"X is a masked array with 1 masked values"):
            model.predict(rows_in_dtype)
    records = np.ma.masked_array(np.zeros(3, [("a", "f8")]), mask=[(True,), (False,), (False,)])
    with pytest.raises(TypeError, match=r"X must hold numbers"):
        model.predict(records)


def test_an_array_like_whose_conversion_fails_otherwise_is_a_value_error():
    """An __array__ that raises neither ValueError nor TypeError (torch's RuntimeError
    for a tensor that requires grad) is refused as fastbp refuses bad input."""
    class Failing:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad")

    model = make_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"X could not be read as a numeric array: "
                                         r"RuntimeError: Can't call numpy"):
        model.predict(Failing())
    with pytest.raises(ValueError, match=r"sample_weight could not be read .*RuntimeError"):
        fastbp.Trainer("cce", epochs=1, seed=0).fit(model, X0, LABELS0,
                                                   sample_weight=Failing())
    assert_unchanged(model, before)


@pytest.mark.parametrize("weights", [np.array([1.0, 2.0, 3.0]), "series"])
def test_class_weight_as_an_array_is_refused_by_its_type(weights):
    """class_weight as an ndarray (compute_class_weight's answer) or a Series failed with
    "The truth value of an array is ambiguous" (a comparison with "balanced")."""
    if isinstance(weights, str):
        weights = pytest.importorskip("pandas").Series([1.0, 2.0, 3.0])
    name = type(weights).__name__
    with pytest.raises(TypeError, match=rf"class_weight must be a dict, 'balanced' or None; "
                                        rf"got a {name} \(weights in class order: "
                                        rf"dict\(enumerate\(weights\)\)\)"):
        fastbp.Trainer("cce", class_weight=weights)
    trainer = fastbp.Trainer("cce", epochs=1, seed=0)
    trainer.class_weight = weights
    model = make_model()
    before = snapshot(model)
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        trainer.fit(model, X0, LABELS0)
    assert_unchanged(model, before)


def test_predict_out_beside_a_wide_frame_checks_its_blocks():
    """out= with a frame of many columns: the overlap check walked the columns one by one
    (0.45 s a call for 10,000); it reads pandas' blocks, and still finds an out that is a
    frame's own memory."""
    pd = pytest.importorskip("pandas")
    model = fastbp.MLP([3, 3], ["identity"], dtype="float64", seed=0)
    values = np.random.default_rng(0).random((4, 3))
    frame = pd.DataFrame(values, copy=False)
    blocks = fastbp._validation.input_arrays(frame)
    assert blocks and all(isinstance(block, np.ndarray) for block in blocks)
    # (a frame made without a copy reads the caller's array)
    assert any(np.shares_memory(block, values) for block in blocks)
    with pytest.raises(ValueError, match="out must not overlap X"):
        model.predict(frame, out=values)
    out = np.empty((4, 3))
    model.predict(frame, out=out)
    np.testing.assert_array_equal(out, model.predict(values))


def test_pandas_text_categories_and_dates_are_not_numbers():
    """Only pandas' nullable numbers are read as numbers: a frame with a text column
    (StringDtype in pandas 3), categories of digit strings or zone-aware dates is refused
    as before (not read as their codes or nanoseconds)."""
    pd = pytest.importorskip("pandas")
    model = fastbp.MLP([2, 1], ["identity"], seed=0)
    frames = [pd.DataFrame({"zip": pd.array(["02139", "10001"], dtype="string"),
                            "b": [1.0, 2.0]}),
              pd.DataFrame({"code": pd.Categorical(["1", "2"]), "b": [1.0, 2.0]}),
              pd.DataFrame({"when": pd.to_datetime(["2020-01-01", "2021-01-01"], utc=True),
                            "b": [1.0, 2.0]})]
    for frame in frames:
        with pytest.raises(TypeError, match="must hold numbers"):
            model.predict(frame)


@pytest.mark.parametrize("make", [lambda X: (row for row in X), lambda X: map(list, X),
                                  lambda X: {"a": [1.0, 2.0, 3.0]}, lambda X: {1.0, 2.0}])
def test_an_iterator_or_a_mapping_is_refused_by_its_type(make):
    """A generator, map, dict or set: np.asarray wraps it in a 0-d array of objects, and
    the refusal spoke of "an array of dtype object" the caller never made."""
    X = np.ones((4, 3))
    model = fastbp.MLP([3, 4, 1], ["relu", "identity"], seed=0)
    before = model.parameter_vector()
    name = type(make(X)).__name__
    with pytest.raises(TypeError, match=f"X must be an array of numbers .*; got a {name}$"):
        model.predict(make(X))
    with pytest.raises(TypeError, match=f"X must be an array of numbers .*; got a {name}$"):
        fastbp.Trainer("mse").fit(model, make(X), np.zeros(4))
    with pytest.raises(TypeError, match=f"Y must be an array of numbers .*; got a {name}$"):
        fastbp.Trainer("mse").fit(model, X, make(X))
    np.testing.assert_array_equal(model.parameter_vector(), before)


def test_a_frame_of_nullable_numbers_and_numeric_categories_is_read_as_numbers():
    """Each kind alone was read as numbers; together (np.asarray makes objects of the
    nullable column) the categorical column's kind refused the frame."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 3))
    frame = pd.DataFrame({"a": pd.array(base[:, 0], dtype="Float64"),
                          "b": pd.Categorical([0, 1, 2] * 2), "c": base[:, 2]})
    plain = np.column_stack([base[:, 0], [0, 1, 2] * 2, base[:, 2]])
    model = fastbp.MLP([3, 4, 1], ["tanh", "identity"], seed=0)
    np.testing.assert_array_equal(model.predict(frame), model.predict(plain))
    text = frame.assign(b=pd.Categorical(["x", "y", "z"] * 2))
    with pytest.raises(TypeError, match="X must hold numbers"):
        model.predict(text)
