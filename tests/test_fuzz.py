"""Fuzzing every public entry point: MLP, its parameter setters, predict, gradients, Trainer
and fit, save/load/from_bytes (arbitrary bytes and mutated valid files), fastbp.losses and the
command line. Whatever goes in, the outcome is a result or a ValueError / TypeError / OSError
with a message (SystemExit(2) from argparse for the command line), never another exception,
a crash or a hang; a refused call leaves the model exactly as it was, and finite input never
gives a NaN where the documentation promises a number.

Examples are few per test (the whole file runs in well under a minute) and derandomized, so
CI sees the same examples every run. Sizes stay small: what is fuzzed here is the checking,
not the arithmetic (tests/test_robustness.py and tests/test_limits.py cover the extremes).
"""
import contextlib
import io
import json
import math
import os
import struct
import warnings
import zlib
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis.errors import InvalidArgument
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastbp  # noqa: E402
from fastbp import losses  # noqa: E402
from fastbp.__main__ import main as cli_main  # noqa: E402
from fastbp.model import ACTIVATIONS  # noqa: E402

ALLOWED = (ValueError, TypeError, OSError)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=25)
HANG_SECONDS = 120  # tests/conftest.py ends a test running longer than this: a hang



def _event(text):
    """hypothesis.event inside a Hypothesis test (--hypothesis-show-statistics); a no-op in
    the plain tests that share attempt()."""
    try:
        event(text)
    except InvalidArgument:
        pass


def attempt(function, *args, **kwargs):
    """(result, None) or (None, error) for an allowed error; anything else propagates."""
    name = getattr(function, "__name__", "call")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = function(*args, **kwargs)
    except ALLOWED as error:
        assert str(error), f"{type(error).__name__} without a message"
        _event(f"{name}: {type(error).__name__}")
        return None, error
    _event(f"{name}: result")
    return result, None


def params_of(model):
    return model._params.copy()


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- strategies

ODD_SCALARS = [None, True, False, 0, -1, 1, 2, 3.0, 2.5, -0.0, math.nan, math.inf, -math.inf,
               1e308, 5e-324, 2**31, 2**63, -2**63, 10**100, "3", b"3", "", "relu",
               np.int64(2), np.float32(2.0), np.uint8(3), np.bool_(True), np.float64(np.nan),
               complex(1, 0), Decimal("2"), Fraction(3, 1), Fraction(1, 3), [], {}, (),
               object(), np.array(2), np.array([2]), np.array([]), slice(1)]
odd = st.sampled_from(ODD_SCALARS)
small_width = st.integers(1, 6)
names = st.sampled_from(list(ACTIVATIONS) + ["ReLU", "SIGMOID", "softmax ", "", "linear",
                                             "selu", "relu\x00", "Ω"])

NUMERIC_DTYPES = ["float16", "float32", "float64", "longdouble", ">f8", ">f4", "int8", "int32",
                  "int64", "uint8", "uint64", "bool"]
INPUT_DTYPES = NUMERIC_DTYPES + ["complex64", "complex128", "object", "U3", "S3",
                                 "datetime64[s]", "timedelta64[s]", [("a", "f4"), ("b", "f4")]]
any_float = st.floats(allow_nan=True, allow_infinity=True)
moderate_float = st.floats(-1e3, 1e3, allow_nan=False) | st.sampled_from(
    [0.0, -0.0, 5e-324, 1e-300, -1e-40, 1e-7])
# mostly plausible values, sometimes anything at all (NaN, inf, huge, tiny, -0.0)
mixed_float = st.integers(0, 15).flatmap(lambda i: any_float if i == 0 else moderate_float)


def mostly(valid, other):
    """`valid` three times out of four, else `other`."""
    return st.integers(0, 3).flatmap(lambda i: valid if i else other)


def usually(draw):
    """True three times out of four: the plausible branch of a strategy."""
    return draw(st.integers(0, 3)) > 0


@st.composite
def arrays(draw, n_rows=None, n_cols=None, elements=mixed_float, dtypes=INPUT_DTYPES):
    """Arrays of many shapes, dtypes and layouts; usually 2-D with the rows and columns
    asked for and a numeric dtype, sometimes anything."""
    if usually(draw):
        ndim = 2
        rows = n_rows if n_rows is not None else draw(st.integers(1, 5))
        cols = n_cols if n_cols is not None else draw(st.integers(1, 5))
    else:
        ndim = draw(st.sampled_from([2, 1, 0, 3]))
        rows, cols = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    shape = {0: (), 1: (rows,), 2: (rows, cols), 3: (rows, cols, 2)}[ndim]
    values = np.array(draw(st.lists(elements, min_size=int(np.prod(shape)),
                                    max_size=int(np.prod(shape)))), dtype=np.float64)
    values = values.reshape(shape)
    numeric = [d for d in dtypes if d in NUMERIC_DTYPES]
    dtype = draw(st.sampled_from(numeric if numeric and usually(draw) else dtypes))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype == "object":
            array = values.astype(object)
        elif dtype in ("U3", "S3"):
            array = values.astype(str).astype(dtype)
        elif isinstance(dtype, list):
            array = np.zeros(shape, dtype=dtype)
        elif dtype.startswith(("datetime", "timedelta")):
            array = values.astype(np.int64).astype(dtype)
        else:
            array = values.astype(dtype)
    layout = draw(st.sampled_from(["c", "f", "strided", "readonly", "list", "reversed"]))
    if layout == "f":
        array = np.asfortranarray(array)
    elif layout == "strided" and array.ndim >= 1:
        big = np.repeat(array, 2, axis=0)
        array = big[::2]
    elif layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
    elif layout == "reversed" and array.ndim >= 1:
        array = array[::-1].copy()[::-1]
    elif layout == "list" and array.dtype.kind in "biuf":
        array = array.tolist()
    return array


def finite_input(array, dtype):
    """True if `array` is numeric and finite once in the model's dtype."""
    try:
        a = np.asarray(array)
    except (ValueError, TypeError):
        return False
    if a.dtype.kind not in "biuf":
        return False
    with np.errstate(all="ignore"):
        return bool(np.isfinite(a.astype(dtype)).all())


@st.composite
def small_models(draw):
    n_layers = draw(st.integers(1, 3))
    sizes = [draw(small_width) for _ in range(n_layers + 1)]
    hidden = [draw(st.sampled_from([a for a in ACTIVATIONS if a != "softmax"]))
              for _ in range(n_layers - 1)]
    output = draw(st.sampled_from(ACTIVATIONS))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return fastbp.MLP(sizes, hidden + [output], dtype=dtype, seed=draw(st.integers(0, 9)))


# ---------------------------------------------------------------- the model constructor

@FUZZ
@given(layer_sizes=mostly(
    st.lists(small_width, min_size=2, max_size=4),
    st.one_of(st.lists(st.one_of(small_width, odd), max_size=5),
              st.tuples(small_width, small_width), odd, st.just(np.array([3, 2])),
              st.just(np.array([[3, 2]])), st.just({3: "a", 2: "b"}), st.just("34"),
              st.just(range(1, 4)))),
       activations=mostly(st.sampled_from([a for a in ACTIVATIONS if a != "softmax"]),
                          st.one_of(names, st.lists(names, max_size=4), odd)),
       dtype=mostly(st.sampled_from(["float32", "float64", np.float32, np.float64, "f4", "<f8",
                                     None, "float", "double"]),
                    st.sampled_from(["float16", "int32", "foo", 3, object, "complex128"])),
       init=mostly(st.sampled_from(["auto", "he", "glorot", "zeros"]),
                   st.sampled_from(["HE", "uniform", None, 0, "", ["he"]])),
       seed=mostly(st.none() | st.integers(0, 2**70), st.integers(-5, -1) | odd))
def test_mlp_constructor(layer_sizes, activations, dtype, init, seed):
    model, error = attempt(fastbp.MLP, layer_sizes, activations, dtype=dtype, init=init,
                           seed=seed)
    if error is not None:
        return
    assert model.dtype in (np.float32, np.float64)
    assert all(np.isfinite(w).all() for w in model.weights)
    assert all(np.isfinite(b).all() for b in model.biases)
    out = model.predict(np.ones((2, model.layer_sizes[0])))
    assert out.shape == (2, model.layer_sizes[-1]) and np.isfinite(out).all()


@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_non_native_byte_order_dtype_gives_a_working_model_or_is_refused(dtype):
    model, error = attempt(fastbp.MLP, [2, 3, 1], "tanh", dtype=dtype, seed=0)
    if error is not None:
        return
    native = fastbp.MLP([2, 3, 1], "tanh", dtype=np.dtype(dtype).newbyteorder("="), seed=0)
    X = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(model.predict(X), native.predict(X))
    fastbp.Trainer("mse", epochs=1).fit(model, X, np.ones(4))


@FUZZ
@given(model=small_models(), data=st.data())
def test_parameter_setters(model, data):
    which = data.draw(st.sampled_from(["weights", "biases"]))
    targets = getattr(model, which)
    values = []
    for target in targets:
        if usually(data.draw):
            shape = target.shape
            value = np.array(data.draw(st.lists(mixed_float, min_size=target.size,
                                                max_size=target.size))).reshape(shape)
            dtype = data.draw(st.sampled_from(NUMERIC_DTYPES))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values.append(value.astype(dtype))
        else:
            values.append(data.draw(arrays()))
    if not usually(data.draw):
        as_object = np.empty(len(values), dtype=object)
        as_object[:] = values
        values = data.draw(st.one_of(st.lists(arrays(), max_size=4), odd, st.just(as_object),
                                     st.just(tuple(values))))
    before = params_of(model)
    _, error = attempt(setattr, model, which, values)
    if error is not None:
        assert same_bits(params_of(model), before), "a refused assignment changed the model"
    assert np.isfinite(model._params).all()


# ---------------------------------------------------------------- predict and gradients

@FUZZ
@given(model=small_models(), data=st.data())
def test_predict(model, data):
    X = data.draw(arrays(n_cols=model.layer_sizes[0]))
    out, error = attempt(model.predict, X)
    if error is not None:
        return
    assert isinstance(out, np.ndarray) and out.dtype == model.dtype
    assert out.ndim == 2 and out.shape[1] == model.layer_sizes[-1]
    assert out.shape[0] == np.asarray(X).shape[0]
    if finite_input(X, model.dtype):
        assert not np.isnan(out).any()


@FUZZ
@given(model=small_models(), data=st.data())
def test_predict_of_moderate_input_is_finite(model, data):
    X = data.draw(arrays(n_cols=model.layer_sizes[0], elements=moderate_float,
                         dtypes=["float32", "float64", "int32", "uint8", "bool", "float16"]))
    out, error = attempt(model.predict, X)
    if error is None:
        assert np.isfinite(out).all()


@pytest.mark.parametrize("case", ["softmax", "relu-identity"])
def test_predict_of_overflowing_finite_input_is_refused_not_nan(case):
    if case == "softmax":   # logits of +inf: exp(inf - inf)
        model = fastbp.MLP([2, 4, 3], ["relu", "softmax"], seed=0)
    else:                   # hidden units of +inf, output weights +1 and -1: inf - inf
        model = fastbp.MLP([2, 2, 1], ["relu", "identity"], init="zeros")
        model.weights = [np.ones((2, 2)), np.array([[1.0], [-1.0]])]
    X = np.array([[3e38, 3e38], [3e38, 3e38]], np.float32)
    out, error = attempt(model.predict, X)
    assert error is not None or not np.isnan(out).any()


LOSS_NAMES = ["mse", "mae", "cce", "bce", "categorical_crossentropy", "binary_crossentropy",
              "MSE", "mean_squared_error", "hinge", "", None, 3, losses.MeanAbsoluteError()]


def _targets(model, data, n_rows, elements=mixed_float, loss=None):
    """Targets for model's outputs: values, class labels (1-D or a column), one-hot rows;
    usually of the kind `loss` wants."""
    n_out = model.layer_sizes[-1]
    fitting = {"mse": ["values"], "mae": ["values"], "bce": ["values01"],
               "cce": ["labels", "column", "one-hot"]}.get(loss)
    kinds = ["values", "values01", "labels", "column", "one-hot"]
    kind = data.draw(st.sampled_from(fitting if fitting and usually(data.draw) else kinds))
    if kind in ("values", "values01"):
        return data.draw(arrays(n_rows=n_rows, n_cols=n_out,
                                elements=elements if kind == "values" else st.floats(0, 1)))
    if kind == "column":
        return data.draw(arrays(n_rows=n_rows, n_cols=1,
                                elements=st.integers(-1, n_out).map(float)))
    labels = np.array(data.draw(st.lists(st.integers(0, n_out - 1) | st.integers(-2, n_out + 1),
                                         min_size=n_rows, max_size=n_rows)))
    if kind == "labels":
        dtype = data.draw(st.sampled_from(["int64", "int8", "uint8", "float32", "float64"]))
        return labels.astype(dtype) if labels.min() >= 0 or dtype[0] != "u" else labels
    return np.eye(n_out)[np.clip(labels, 0, n_out - 1)]


def _data(model, data, elements=mixed_float, target_elements=mixed_float, dtypes=INPUT_DTYPES,
          loss=None):
    n_rows = data.draw(st.integers(1, 6))
    X = data.draw(arrays(n_rows=n_rows, n_cols=model.layer_sizes[0], elements=elements,
                         dtypes=dtypes))
    return X, _targets(model, data, n_rows, target_elements, losses.get(loss).name[:3]
                       if isinstance(loss, str) and loss.lower() in losses.NAMES else None)


@FUZZ
@given(model=small_models(), loss=st.sampled_from(LOSS_NAMES), data=st.data())
def test_gradients(model, loss, data):
    X, Y = _data(model, data, loss=loss)
    before = params_of(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, error = attempt(model.gradients, X, Y, loss)
    assert same_bits(params_of(model), before), "gradients changed the model"
    if error is not None:
        return
    value, grad_weights, grad_biases = result
    assert isinstance(value, float)
    assert [g.shape for g in grad_weights] == [w.shape for w in model.weights]
    assert [g.shape for g in grad_biases] == [b.shape for b in model.biases]
    flat = np.concatenate([g.ravel() for g in grad_weights + grad_biases])
    if finite_input(X, model.dtype) and finite_input(Y, model.dtype) and not (
            np.isfinite(value) and np.isfinite(flat).all()):
        # a non-finite result from finite input must never be silent
        assert any(issubclass(w.category, RuntimeWarning) for w in caught), (value, flat)


@FUZZ
@given(model=small_models(), loss=st.sampled_from(["mse", "mae", "cce", "bce"]), data=st.data())
def test_gradients_of_moderate_input_are_finite(model, loss, data):
    X, Y = _data(model, data, elements=moderate_float, target_elements=st.floats(0, 1),
                 dtypes=["float32", "float64"], loss=loss)
    result, error = attempt(model.gradients, X, Y, loss)
    if error is None:
        value, grad_weights, grad_biases = result
        assert np.isfinite(value)
        assert all(np.isfinite(g).all() for g in grad_weights + grad_biases)


# ---------------------------------------------------------------- the trainer

@FUZZ
@given(loss=mostly(st.sampled_from(["mse", "mae", "cce", "bce", "CCE", losses.MeanSquaredError()]),
                  st.sampled_from(LOSS_NAMES) | odd),
       learning_rate=mostly(st.floats(0, 10) | st.just(Fraction(1, 10)), odd),
       epochs=mostly(st.integers(0, 2), st.integers(-2, 2) | st.sampled_from(
           [None, 1.0, 1.5, math.nan, math.inf, "1", True, np.int8(1), -10**30, [1]])),
       batch_size=mostly(st.integers(1, 2**70), st.integers(-2, 2**70) | odd),
       shuffle=mostly(st.booleans(), st.sampled_from([np.bool_(False), 0, 1, None, "yes"])),
       seed=mostly(st.none() | st.integers(0, 2**70), st.integers(-3, 2**70) | odd),
       n_threads=mostly(st.none() | st.integers(1, 3) | st.just(2**40),
                        st.integers(-1, 3) | odd.filter(lambda v: not (type(v) is int and v == 10**100))),
       fit_model=st.booleans())
def test_trainer_constructor_and_fit_settings(loss, learning_rate, epochs, batch_size, shuffle,
                                              seed, n_threads, fit_model):
    trainer, error = attempt(fastbp.Trainer, loss, learning_rate=learning_rate, epochs=epochs,
                             batch_size=batch_size, shuffle=shuffle, seed=seed,
                             n_threads=n_threads)
    if error is not None or not fit_model:
        return
    assert isinstance(repr(trainer), str)
    model = fastbp.MLP([3, 4, 2], ["tanh", "softmax"], seed=0)
    X = np.linspace(-1, 1, 30).reshape(10, 3)
    Y = np.eye(2)[np.arange(10) % 2]
    before = params_of(model)
    history, error = attempt(trainer.fit, model, X, Y)
    if error is not None:
        assert same_bits(params_of(model), before)
        return
    assert np.isfinite(model._params).all()
    assert all(np.isfinite(history.loss))


@FUZZ
@given(attribute=st.sampled_from(["loss", "learning_rate", "epochs", "batch_size", "shuffle",
                                  "seed", "n_threads"]),
       value=odd)
def test_trainer_attributes_changed_after_construction_are_checked_at_fit(attribute, value):
    if attribute == "epochs" and isinstance(value, (int, float, np.number)) \
            and not isinstance(value, (bool, np.bool_)) and value == value and value > 3:
        value = 2  # a valid, huge epoch count is a legitimately long run, not a hang
    trainer = fastbp.Trainer("mse", epochs=1)
    setattr(trainer, attribute, value)
    model = fastbp.MLP([2, 1], "identity", seed=0)
    before = params_of(model)
    _, error = attempt(trainer.fit, model, np.ones((4, 2)), np.ones(4))
    if error is not None:
        assert same_bits(params_of(model), before)
    assert np.isfinite(model._params).all()


@FUZZ
@given(model=small_models(), loss=st.sampled_from(["mse", "mae", "cce", "bce"]),
       batch_size=st.integers(1, 12), shuffle=st.booleans(), data=st.data())
def test_fit_with_arbitrary_data(model, loss, batch_size, shuffle, data):
    X, Y = _data(model, data, loss=loss)
    learning_rate = data.draw(st.sampled_from([0.0, 1e-3, 0.1, 10.0, 1e30]))
    trainer = fastbp.Trainer(loss, learning_rate=learning_rate, epochs=2, batch_size=batch_size,
                             shuffle=shuffle, seed=1)
    before = params_of(model)
    history, error = attempt(trainer.fit, model, X, Y)
    if error is not None:
        assert same_bits(params_of(model), before), "a refused fit changed the model"
        return
    # whatever the data did (a diverged run is rolled back), the parameters stay finite
    assert np.isfinite(model._params).all()
    assert all(np.isfinite(history.loss))
    assert history.epochs <= 2


@FEW
@given(model=small_models(), data=st.data())
def test_fit_callbacks_and_verbose_arguments(model, data):
    callbacks = data.draw(st.one_of(odd, st.lists(odd, max_size=2),
                                    st.just([fastbp.callbacks.Callback()])))
    verbose = data.draw(st.one_of(odd, st.integers(0, 2)))
    X = np.ones((5, model.layer_sizes[0]))
    Y = np.zeros((5, model.layer_sizes[-1]))
    before = params_of(model)
    with contextlib.redirect_stdout(io.StringIO()):
        _, error = attempt(fastbp.Trainer("mse", epochs=1).fit, model, X, Y,
                           callbacks=callbacks, verbose=verbose)
    if error is not None:
        assert same_bits(params_of(model), before)


@FUZZ
@given(data=st.data(), model=small_models(),
       loss=st.sampled_from(["mse", "mae", "cce", "bce", "huber"]))
def test_trainer_features_with_odd_settings(data, model, loss):
    """The newer settings (optimizer, schedule, weight decay, clipping, class and sample
    weights, validation, metrics, partial_fit, evaluate), mostly valid, sometimes odd."""
    optimizers = getattr(fastbp, "optimizers", None)
    schedules = getattr(fastbp, "schedules", None)
    option_values = {
        "optimizer": mostly(st.sampled_from(list(getattr(optimizers, "NAMES", ("sgd",)))),
                            st.sampled_from(["SGD", "lbfgs", "", None, 3])),
        "schedule": mostly(st.sampled_from([None] + [n for n in getattr(schedules, "NAMES", ())
                                                     if n == "constant"]),
                           st.sampled_from(["step", "cosine", "nope", 3, ""])),
        "weight_decay": mostly(st.floats(0, 0.1), odd),
        "decoupled_weight_decay": mostly(st.booleans(), odd),
        "clip_norm": mostly(st.none() | st.floats(1e-3, 10), odd),
        "class_weight": mostly(st.none() | st.just("balanced") if loss in ("cce", "bce")
                               else st.none(),
                               st.sampled_from([{0: 2.0}, {0: -1.0}, {9: 1.0}, "x", [1.0]])),
        "max_time": mostly(st.none() | st.floats(1, 100), odd),
    }
    kwargs = {name: data.draw(strategy) for name, strategy in option_values.items()
              if data.draw(st.booleans())}
    trainer, error = attempt(fastbp.Trainer, loss, learning_rate=0.05, epochs=2, batch_size=4,
                             seed=0, **kwargs)
    if error is not None:
        return
    X, Y = _data(model, data, loss=loss)
    n_rows = np.asarray(X).shape[0] if np.ndim(X) else 0
    fit_kwargs = {}
    if data.draw(st.booleans()):
        fit_kwargs["sample_weight"] = data.draw(mostly(
            arrays(n_rows=n_rows, n_cols=1, elements=st.floats(0, 3)).map(
                lambda a: np.ravel(a) if isinstance(a, np.ndarray) else a),
            arrays() | odd))
    if data.draw(st.booleans()):
        fit_kwargs["validation_split"] = data.draw(mostly(st.floats(0, 0.5), odd))
    elif data.draw(st.booleans()):
        fit_kwargs["validation_data"] = data.draw(mostly(st.just((X, Y)), odd))
    if data.draw(st.booleans()):
        fit_kwargs["metrics"] = data.draw(mostly(st.sampled_from([["accuracy"], ["mae"], []]),
                                                 odd | st.just(["nope"])))
    before = params_of(model)
    history, error = attempt(trainer.fit, model, X, Y, **fit_kwargs)
    if error is not None:
        assert same_bits(params_of(model), before), "a refused fit changed the model"
    else:
        assert np.isfinite(model._params).all()
        assert all(np.isfinite(history.loss))
    if hasattr(trainer, "partial_fit"):
        _, error = attempt(trainer.partial_fit, model, X, Y)
        assert np.isfinite(model._params).all()
    if hasattr(model, "evaluate"):
        value, error = attempt(model.evaluate, X, Y, loss)
        if error is None and finite_input(X, model.dtype) and finite_input(Y, model.dtype):
            assert not math.isnan(value)


# ---------------------------------------------------------------- losses on plain arrays

@FUZZ
@given(loss=st.sampled_from(["mse", "mae", "cce", "bce"]), data=st.data())
def test_losses_on_arbitrary_arrays(loss, data):
    y_pred = data.draw(arrays())
    n_cols = np.asarray(y_pred).shape[-1] if np.ndim(y_pred) >= 1 else None
    n_rows = np.asarray(y_pred).shape[0] if np.ndim(y_pred) >= 1 else None
    y_true = data.draw(arrays(n_rows=n_rows, n_cols=n_cols) | arrays(
        n_rows=n_rows, n_cols=1, elements=st.integers(-1, 3).map(float)))
    objective = losses.get(loss)
    for method in (objective.value, objective.gradient, objective):
        result, error = attempt(method, y_true, y_pred)
        if error is not None:
            continue
        finite = finite_input(y_true, np.float64) and finite_input(y_pred, np.float64)
        if method == objective.gradient:
            assert result.shape == np.shape(y_pred)
            if finite:
                assert not np.isnan(result).any()
        else:
            assert isinstance(result, float)
            if finite:
                assert not math.isnan(result)


@FUZZ
@given(loss=st.sampled_from(["mse", "mae", "cce", "bce"]), data=st.data())
def test_losses_of_moderate_values_are_finite(loss, data):
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    elements = st.floats(0, 1) if loss in ("cce", "bce") else moderate_float
    y_pred = np.array(data.draw(st.lists(elements, min_size=shape[0] * shape[1],
                                         max_size=shape[0] * shape[1]))).reshape(shape)
    y_true = np.array(data.draw(st.lists(st.floats(0, 1), min_size=y_pred.size,
                                         max_size=y_pred.size))).reshape(shape)
    if loss == "cce":
        y_true = np.eye(shape[1])[np.arange(shape[0]) % shape[1]]
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    objective = losses.get(loss)
    value = objective.value(y_true, y_pred.astype(dtype))
    gradient = objective.gradient(y_true, y_pred.astype(dtype))
    assert np.isfinite(value) and np.isfinite(gradient).all()


@FEW
@given(name=st.one_of(st.text(max_size=30), odd, st.sampled_from(losses.NAMES)))
def test_losses_get(name):
    result, error = attempt(losses.get, name)
    if error is None:
        assert isinstance(result, losses.Loss)


def test_a_loss_object_with_an_unknown_name_is_refused():
    class Hinge(losses.Loss):
        name = "hinge"
    for call in (lambda: losses.get(Hinge()),
                 lambda: fastbp.Trainer(Hinge()),
                 lambda: fastbp.MLP([2, 1], "identity").gradients(np.ones((2, 2)), np.ones(2),
                                                                   Hinge())):
        with pytest.raises(ValueError):
            call()


# ---------------------------------------------------------------- model files

def _valid_file(model):
    return model.to_bytes()


def _with_checksum(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _check_loaded(model):
    assert isinstance(model, fastbp.MLP)
    model.predict(np.zeros((1, model.layer_sizes[0])))  # may be NaN (the file's values), no crash


def _load_both_ways(data, tmp_path):
    """from_bytes(data) and load() of a file holding data agree on the outcome."""
    result, error = attempt(fastbp.MLP.from_bytes, data)
    path = tmp_path / "fuzzed.fbp"
    path.write_bytes(bytes(data))
    loaded, load_error = attempt(fastbp.load, path)
    assert (error is None) == (load_error is None), (error, load_error)
    for model in (result, loaded):
        if model is not None:
            _check_loaded(model)
    return result, error


@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"\x89FASTBP\n")
@example(data=b"\x89FASTBP\n" + struct.pack("<II", 1, 0xFFFFFFFF))
@example(data=b"\x89FASTBP\n" + struct.pack("<II", 1, 2) + b"{}")
def test_arbitrary_bytes_as_a_model_file(data, tmp_path):
    _load_both_ways(data, tmp_path)


@FUZZ
@given(model=small_models(), data=st.data())
def test_mutated_valid_files(model, data, tmp_path):
    original = bytearray(_valid_file(model))
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate",
                                          "append"]))
        at = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if kind == "flip" and mutated:
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and mutated:
            mutated[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del mutated[at:at + data.draw(st.integers(1, 8))]
        elif kind == "truncate":
            del mutated[at:]
        else:
            mutated += data.draw(st.binary(min_size=1, max_size=8))
    fix_checksum = data.draw(st.booleans())
    if fix_checksum and len(mutated) > 4:
        # past the checksum: the header and size checks alone must hold
        mutated = bytearray(_with_checksum(bytes(mutated[:-4])))
    result, error = _load_both_ways(bytes(mutated), tmp_path)
    if mutated == original:
        assert error is None


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats()
                    | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)


@FUZZ
@given(header=st.one_of(
    JSON,
    st.fixed_dictionaries({"layer_sizes": st.one_of(JSON, st.lists(st.integers(-2, 2**33),
                                                                   max_size=4)),
                           "activations": st.one_of(JSON, st.lists(names, max_size=4)),
                           "dtype": st.one_of(JSON, st.sampled_from(
                               ["float32", "float64", "float16", ">f8", "int8"]))})),
    version=st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1]),
    fill=st.sampled_from([b"", b"\x00" * 16, b"\xff" * 64]),
    fix_size=st.booleans())
def test_made_up_headers(header, version, fill, fix_size, tmp_path):
    raw = json.dumps(header, allow_nan=True).encode()
    body = b"\x89FASTBP\n" + struct.pack("<II", version, len(raw)) + raw
    if fix_size and isinstance(header, dict):
        sizes = header.get("layer_sizes")
        dtype = header.get("dtype")
        dtype = {"float32": 4, "float64": 8}.get(dtype, 4) if isinstance(dtype, str) else 4
        try:
            n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        except Exception:
            n_params = 0
        if 0 <= n_params < 10_000:
            fill = b"\x00" * (n_params * dtype)
    _load_both_ways(_with_checksum(body + fill), tmp_path)


@FEW
@given(path=st.one_of(
    st.sampled_from(["", ".", "/", "/nonexistent/dir/model.fbp", "/dev/null", "/proc/self/status",
                     "a\x00b", b"/nonexistent", "x" * 5000, "/etc", "missing.fbp"]),
    odd))
def test_load_from_odd_paths(path):
    result, error = attempt(fastbp.load, path)
    assert error is not None


@FEW
@given(name=st.one_of(st.sampled_from(["", ".", "..", "dir", "dir/", "sub/model.fbp",
                                       "a\x00b", "x" * 300, "link", "ok.fbp"]), odd))
def test_save_to_odd_paths(name, tmp_path_factory):
    directory = tmp_path_factory.mktemp("save")
    (directory / "dir").mkdir()
    os.symlink(directory / "target.fbp", directory / "link")
    model = fastbp.MLP([2, 2], "identity", seed=0)
    if isinstance(name, str):
        path = os.path.join(directory, name)
    elif isinstance(name, bytes):
        path = os.path.join(os.fsencode(directory), name)
    else:
        path = name
    _, error = attempt(model.save, path)
    if error is None:
        assert fastbp.load(path).to_bytes() == model.to_bytes()
    leftovers = [f for f in os.listdir(directory) if f.endswith(".tmp")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- the command line

OPTION_VALUES = {
    # "--epochs 0" and a learning rate that diverges at once: test_cli_runs_that_train_no_epoch
    "--epochs": ["1", "2", "-1", "x", "", "1.5", "nan", "٢", " 1"],
    "--samples": ["1", "2", "64", "0", "-1", "-10000", "-10001", "-20000", "1e3", "abc"],
    "--hidden": ["1", "4", "0", "-3", str(2**31), "three"],
    "--batch-size": ["1", "64", "100000", "0", "-1", "1.0"],
    "--learning-rate": ["0.1", "0", "-0.1", "nan", "inf", "-inf", "1e39", "1e400",
                        "0x1p-3", ""],
    "--dtype": ["float32", "float64", "float16", "", "FLOAT32"],
    "--threads": ["1", "2", "0", "-1", "64", "x"],
    "--seed": ["0", "7", "-1", str(2**70), "s"],
}


@st.composite
def argvs(draw):
    base = ["demo", "--epochs", "1", "--samples", "64", "--hidden", "4"]
    extra = []
    for option in draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=4)):
        extra += [option, draw(st.sampled_from(OPTION_VALUES[option]))]
    odd_tokens = draw(st.lists(st.sampled_from(
        ["--", "-", "--epochs", "--unknown", "demo", "extra", "-h", "--epochs=2", "--samples=",
         "\x00", "é", "--dtype=float64"]), max_size=2))
    argv = base + extra
    for token in odd_tokens:
        argv.insert(draw(st.integers(0, len(argv))), token)
    if draw(st.integers(0, 9)) == 0:
        argv = draw(st.lists(st.text(max_size=6), max_size=4))
    return argv


def run_cli(argv):
    """main(argv) -> (exit code, stdout, stderr); SystemExit from argparse is caught."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(argv=argvs())
@example(argv=["demo", "--epochs", "1", "--samples", "-20000"])
@example(argv=["demo", "--epochs", "1", "--samples", "8", "--learning-rate", "1e39"])
def test_cli_with_odd_argv(argv):
    code, out, err = run_cli(argv)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert err.strip(), "an exit code of 2 comes with a message on stderr"
    elif "-h" not in argv and argv and argv[0] == "demo":
        assert "final test accuracy" in out


@pytest.mark.parametrize("argv", [["demo", "--samples", str(10**13), "--epochs", "1"]])
def test_cli_with_a_demo_too_large_for_memory(argv):
    code, _, err = run_cli(argv)
    assert code == 2 and "error" in err


@pytest.mark.parametrize("argv", [
    ["demo", "--epochs", "0", "--samples", "8", "--hidden", "2"],
    ["demo", "--epochs", "1", "--samples", "64", "--hidden", "4", "--learning-rate", "1e30"],
])
def test_cli_runs_that_train_no_epoch(argv):
    code, out, err = run_cli(argv)
    assert code in (0, 2), err


def test_absurd_thread_counts_are_refused_or_clamped():
    model = fastbp.MLP([2, 1], "identity", seed=0)
    _, error = attempt(lambda: fastbp.Trainer("mse", n_threads=10**100).fit(
        model, np.ones((3, 2)), np.ones(3)))
    assert error is None or isinstance(error, ValueError)
