"""Property tests: over shapes, dtypes and memory layouts, any valid input gives exactly the
run its clean (C-contiguous, model-dtype) copy gives; bad values are refused with the model
unchanged; model files round-trip, and damaged or made-up files only ever raise ValueError."""
import json
import pickle
import struct
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastbp  # noqa: E402
from fastbp.model import ACTIVATIONS  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=30)

MODEL_DTYPES = ["float32", "float64"]
INPUT_DTYPES = ["float16", "float32", "float64", ">f8", "<f4", ">f4", "int8", "int16", "int32",
                "int64", "uint8", "uint16", "bool"]
LABEL_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint32", "intp", "float32",
                "float64", ">i4"]
HIDDEN = [a for a in ACTIVATIONS if a != "softmax"]


# ---------------------------------------------------------------- layouts

def _strided_rows(a, step):
    big = np.zeros((a.shape[0] * step,) + a.shape[1:], dtype=a.dtype)
    big[::step] = a
    return big[::step]


def _strided_columns(a, step):
    big = np.zeros((a.shape[0], a.shape[1] * step), dtype=a.dtype)
    big[:, step - 1::step] = a
    return big[:, step - 1::step]


def _reversed(a):
    return np.ascontiguousarray(a[::-1])[::-1]


def _offset(a):
    buffer = np.zeros(a.size + 1, dtype=a.dtype)
    view = buffer[1:].reshape(a.shape)
    view[...] = a
    return view


def _unaligned(a):
    """Same values, C-contiguous, at an odd byte address (flags.aligned is False)."""
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


LAYOUTS = {
    "c": lambda a: a,
    "fortran": np.asfortranarray,
    "rows2": lambda a: _strided_rows(a, 2),
    "rows3": lambda a: _strided_rows(a, 3),
    "columns2": lambda a: _strided_columns(a, 2) if a.ndim == 2 else _strided_rows(a, 2),
    "reversed": _reversed,
    "offset": _offset,
    "unaligned": _unaligned,
    "list": lambda a: a.tolist(),
    "broadcast": None,  # handled in _layout: a broadcast (zero-stride) view when possible
}


def _layout(a, name, read_only):
    if name == "broadcast":
        if a.shape[0] > 0 and np.all(a == a[:1]):
            out = np.broadcast_to(a[:1], a.shape)
        else:
            out = np.asfortranarray(a)
    else:
        out = LAYOUTS[name](a)
    if read_only and isinstance(out, np.ndarray) and out.flags.writeable:
        out = out.view()
        out.setflags(write=False)
    return out


def _values(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _params(model):
    return [np.array(p, copy=True) for p in model.weights + model.biases]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        assert np.array_equal(x, y)


problems = st.fixed_dictionaries({
    "model_dtype": st.sampled_from(MODEL_DTYPES),
    "n": st.integers(1, 12),
    "n_in": st.integers(1, 5),
    "hidden": st.lists(st.integers(1, 5), min_size=0, max_size=2),
    "n_out": st.integers(1, 4),
    "hidden_activation": st.sampled_from(HIDDEN),
    "task": st.sampled_from(["mse", "mae", "bce", "cce-onehot", "cce-labels"]),
    "x_dtype": st.sampled_from(INPUT_DTYPES),
    "y_dtype": st.sampled_from(INPUT_DTYPES + LABEL_DTYPES),
    "x_layout": st.sampled_from(list(LAYOUTS)),
    "y_layout": st.sampled_from(list(LAYOUTS)),
    "x_read_only": st.booleans(),
    "y_read_only": st.booleans(),
    "batch_size": st.integers(1, 14),
    "epochs": st.integers(0, 2),
    "shuffle": st.booleans(),
    "seed": st.integers(0, 2**32 - 1),
})


def _make(problem):
    p = problem
    rng = np.random.default_rng(p["seed"])
    sizes = [p["n_in"]] + p["hidden"] + [p["n_out"]]
    output = {"mse": "identity", "mae": "tanh", "bce": "sigmoid"}.get(p["task"], "softmax")
    activations = [p["hidden_activation"]] * len(p["hidden"]) + [output]
    X = _values(rng, (p["n"], p["n_in"]), p["x_dtype"])
    if p["task"] == "cce-labels":
        label_dtype = p["y_dtype"] if p["y_dtype"] in LABEL_DTYPES else "int64"
        Y = rng.integers(0, p["n_out"], size=p["n"]).astype(label_dtype)
        clean_Y = Y.astype(np.intp)
    else:
        y_dtype = p["y_dtype"] if p["y_dtype"] in INPUT_DTYPES else "float64"
        integral = np.dtype(y_dtype).kind in "biu"
        shape = (p["n"], p["n_out"])
        if p["task"] == "cce-onehot":
            Y = np.eye(p["n_out"])[rng.integers(0, p["n_out"], size=p["n"])]
        elif p["task"] == "bce":
            Y = rng.integers(0, 2, size=shape) if integral else rng.uniform(0, 1, size=shape)
        else:
            Y = _values(rng, shape, y_dtype)
        Y = Y.astype(y_dtype)
        clean_Y = np.ascontiguousarray(Y, dtype=p["model_dtype"])
    loss = {"cce-onehot": "cce", "cce-labels": "cce"}.get(p["task"], p["task"])
    clean_X = np.ascontiguousarray(X, dtype=p["model_dtype"])
    odd_X = _layout(X, p["x_layout"], p["x_read_only"])
    odd_Y = _layout(Y, p["y_layout"], p["y_read_only"])
    return sizes, activations, loss, clean_X, clean_Y, odd_X, odd_Y


def _fit(problem, sizes, activations, loss, X, Y):
    model = fastbp.MLP(sizes, activations, dtype=problem["model_dtype"], seed=problem["seed"])
    trainer = fastbp.Trainer(loss, learning_rate=0.05, epochs=problem["epochs"],
                             batch_size=problem["batch_size"], shuffle=problem["shuffle"],
                             seed=problem["seed"])
    history = trainer.fit(model, X, Y)
    return model, history


@SETTINGS
@given(problems)
def test_any_valid_layout_and_dtype_gives_the_clean_run(problem):
    sizes, activations, loss, clean_X, clean_Y, odd_X, odd_Y = _make(problem)
    clean_model, clean_history = _fit(problem, sizes, activations, loss, clean_X, clean_Y)
    odd_model, odd_history = _fit(problem, sizes, activations, loss, odd_X, odd_Y)
    _assert_same(_params(odd_model), _params(clean_model))
    assert odd_history.loss == clean_history.loss
    out = odd_model.predict(odd_X)
    assert out.dtype == np.dtype(problem["model_dtype"])
    assert out.shape == (problem["n"], sizes[-1])
    assert np.array_equal(out, clean_model.predict(clean_X))
    v_odd, gw_odd, gb_odd = odd_model.gradients(odd_X, odd_Y, loss)
    v_clean, gw_clean, gb_clean = clean_model.gradients(clean_X, clean_Y, loss)
    assert v_odd == v_clean or (np.isnan(v_odd) and np.isnan(v_clean))
    _assert_same(gw_odd + gb_odd, gw_clean + gb_clean)


@SETTINGS
@given(problems, st.data())
def test_a_non_finite_value_anywhere_is_refused_and_changes_nothing(problem, data):
    problem = {**problem, "task": "mse", "epochs": 1}
    sizes, activations, loss, clean_X, clean_Y, _, _ = _make(problem)
    target = data.draw(st.sampled_from(["X", "Y"]))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    array = np.array(clean_X if target == "X" else clean_Y, dtype=np.float64)
    row = data.draw(st.integers(0, array.shape[0] - 1))
    col = data.draw(st.integers(0, array.shape[1] - 1))
    array[row, col] = bad
    dtype = data.draw(st.sampled_from(["float16", "float32", "float64", ">f8"]))
    array = _layout(array.astype(dtype), problem["x_layout"], problem["x_read_only"])
    X, Y = (array, clean_Y) if target == "X" else (clean_X, array)

    model = fastbp.MLP(sizes, activations, dtype=problem["model_dtype"], seed=0)
    before = _params(model)
    trainer = fastbp.Trainer(loss, learning_rate=0.1, epochs=1, batch_size=problem["batch_size"])
    with pytest.raises(ValueError, match=rf"{target} contains NaN or infinity"):
        trainer.fit(model, X, Y)
    with pytest.raises(ValueError, match=rf"{target} contains NaN or infinity"):
        model.gradients(X, Y, loss)
    if target == "X":
        with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
            model.predict(X)
    _assert_same(_params(model), before)


@SETTINGS
@given(problems, st.data())
def test_labels_out_of_range_or_not_whole_are_refused(problem, data):
    problem = {**problem, "task": "cce-labels", "epochs": 1}
    sizes, activations, loss, clean_X, labels, _, _ = _make(problem)
    n_out = sizes[-1]
    labels = labels.astype(np.float64)
    row = data.draw(st.integers(0, labels.shape[0] - 1))
    kind = data.draw(st.sampled_from(["big", "negative", "fraction"]))
    if kind == "big":
        labels[row] = data.draw(st.integers(n_out, 1000))
        message = rf"must lie in 0\.\.{n_out - 1}"
    elif kind == "negative":
        labels[row] = data.draw(st.integers(-1000, -1))
        message = rf"must lie in 0\.\.{n_out - 1}"
    else:
        labels[row] = data.draw(st.integers(0, n_out - 1)) + data.draw(st.floats(0.01, 0.99))
        message = r"must be whole numbers"
    if kind != "fraction":
        labels = labels.astype(data.draw(st.sampled_from(["int16", "int32", "int64", "float64"])))
    labels = _layout(labels, data.draw(st.sampled_from(["c", "rows2", "reversed", "list"])),
                     False)
    model = fastbp.MLP(sizes, activations, dtype=problem["model_dtype"], seed=0)
    before = _params(model)
    with pytest.raises(ValueError, match=message):
        fastbp.Trainer("cce", epochs=1).fit(model, clean_X, labels)
    with pytest.raises(ValueError, match=message):
        model.gradients(clean_X, labels, "cce")
    _assert_same(_params(model), before)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from(["rows", "columns", "3d", "1d", "empty"]),
       st.sampled_from(MODEL_DTYPES))
def test_shape_mismatches_are_refused(n, n_in, n_out, kind, dtype):
    model = fastbp.MLP([n_in, 3, n_out], ["tanh", "identity"], dtype=dtype, seed=0)
    before = _params(model)
    X = np.ones((n, n_in))
    Y = np.zeros((n, n_out))
    if kind == "rows":
        Y = np.zeros((n + 1, n_out))
        message = rf"Y has {n + 1} rows but X has {n}"
    elif kind == "columns":
        X = np.ones((n, n_in + 1))
        message = rf"X has {n_in + 1} columns"
    elif kind == "3d":
        X = np.ones((n, n_in, 1))
        message = r"X must be 2-D"
    elif kind == "1d":
        X = np.ones(n_in)
        message = r"X must be 2-D"
    else:
        X = np.ones((0, n_in))
        Y = np.zeros((0, n_out))
        message = r"X is empty"
    with pytest.raises(ValueError, match=message):
        fastbp.Trainer("mse", epochs=1).fit(model, X, Y)
    with pytest.raises(ValueError, match=message):
        model.gradients(X, Y, "mse")
    _assert_same(_params(model), before)


# ---------------------------------------------------------------- persistence

architectures = st.fixed_dictionaries({
    "sizes": st.lists(st.integers(1, 6), min_size=2, max_size=5),
    "hidden": st.sampled_from(HIDDEN),
    "output": st.sampled_from(list(ACTIVATIONS)),
    "dtype": st.sampled_from(MODEL_DTYPES),
    "init": st.sampled_from(["auto", "he", "glorot", "zeros"]),
    "seed": st.integers(0, 2**32 - 1),
})


def _model(arch):
    activations = [arch["hidden"]] * (len(arch["sizes"]) - 2) + [arch["output"]]
    model = fastbp.MLP(arch["sizes"], activations, dtype=arch["dtype"], init=arch["init"],
                       seed=arch["seed"])
    rng = np.random.default_rng(arch["seed"])
    for b in model.biases:
        b[...] = rng.normal(size=b.shape)
    return model


@SETTINGS
@given(architectures)
def test_round_trips_are_exact(tmp_path_factory, arch):
    model = _model(arch)
    path = tmp_path_factory.mktemp("rt") / "model"
    model.save(path)
    X = np.random.default_rng(arch["seed"]).normal(size=(7, arch["sizes"][0]))
    expected = model.predict(X)
    for clone in (fastbp.load(path), fastbp.MLP.from_bytes(model.to_bytes()),
                  pickle.loads(pickle.dumps(model))):
        assert clone.layer_sizes == model.layer_sizes
        assert clone.activations == model.activations
        assert clone.dtype == model.dtype
        _assert_same(_params(clone), _params(model))
        got = clone.predict(X)
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes()


@FEW
@given(architectures, st.data())
def test_any_truncation_or_flipped_byte_is_a_value_error(arch, data):
    blob = _model(arch).to_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(ValueError):
        fastbp.MLP.from_bytes(blob[:cut])
    position = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(blob)
    damaged[position] ^= mask
    with pytest.raises(ValueError):
        fastbp.MLP.from_bytes(bytes(damaged))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=3),
    max_leaves=10)

header_fields = st.fixed_dictionaries(
    {},
    optional={
        "layer_sizes": st.one_of(json_values, st.lists(st.integers(-3, 2**31 + 3), max_size=5),
                                 st.lists(st.integers(1, 4), min_size=2, max_size=4)),
        "activations": st.one_of(json_values, st.lists(st.sampled_from(
            list(ACTIVATIONS) + ["RELU", "swish", ""]), max_size=4)),
        "dtype": st.one_of(json_values, st.sampled_from(["float32", "float64", "float16",
                                                         "<f4", "object"])),
        "extra": json_values,
    })


@SETTINGS
@given(header_fields, st.binary(max_size=200), st.booleans())
@example({"layer_sizes": [1, 1], "activations": ["identity"], "dtype": []}, b"", False)
def test_made_up_files_only_ever_raise_value_error(header, params, fix_size):
    """Whatever the header says, reading a file returns a valid model or raises ValueError:
    never another exception, never a huge allocation."""
    if fix_size:   # make the parameter block the size the header asks for, when it is small
        try:
            sizes = header["layer_sizes"]
            itemsize = {"float32": 4, "float64": 8}[header["dtype"]]
            n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
            if 0 <= n * itemsize <= 4096:
                params = (params * (n * itemsize))[:n * itemsize] if params else \
                    b"\0" * (n * itemsize)
        except Exception:
            pass
    raw = json.dumps(header).encode()
    body = b"\x89FASTBP\n" + struct.pack("<II", 1, len(raw)) + raw + params
    blob = body + struct.pack("<I", zlib.crc32(body))
    try:
        model = fastbp.MLP.from_bytes(blob)
    except ValueError:
        return
    assert isinstance(model, fastbp.MLP)
    assert set(header) == {"layer_sizes", "activations", "dtype"}
    assert list(model.layer_sizes) == header["layer_sizes"]
    assert model.dtype.name == header["dtype"]
