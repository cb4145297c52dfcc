"""ONNX export: the graph, run by onnxruntime, gives model.predict's output."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.model import ACTIVATIONS

try:
    import onnx
    import onnxruntime as ort
except ImportError:                 # the tests that need them are skipped (needs_runtime)
    onnx = ort = None

HIDDEN = [name for name in ACTIVATIONS if name != "softmax"]
OUTPUTS = list(ACTIVATIONS)
DTYPES = ["float32", "float64"]
# float32: the runtime's kernels and BLAS differ from fastbp's in the last bits;
# float64: the decomposed elu, softplus and gelu are accurate to a few ulps.
TOLERANCE = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def test_import_fastbp_does_not_import_onnx():
    code = ("import sys, fastbp, fastbp.model; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_onnx_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    model = fastbp.MLP([3, 2], "identity")
    with pytest.raises(ImportError, match=r'pip install "fastbp\[onnx\]"'):
        model.to_onnx(tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)


@pytest.fixture
def runtime():
    """Skips the test where onnx or onnxruntime is not installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


needs_runtime = pytest.mark.usefixtures("runtime")


def session(path):
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def run(path, X):
    return session(path).run(["Y"], {"X": X})[0]


def inputs(n_in, dtype, seed=0):
    """Rows spread over several scales, with exact zeros, tiny and large values."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 3.0, size=(257, n_in))
    X[0], X[1], X[2] = 0.0, 1e-9, -1e-9
    X[3], X[4] = 30.0, -30.0
    return X.astype(dtype)


def check_close(model, path, X):
    got, expected = run(path, X), model.predict(X)
    assert got.dtype == model.dtype and got.shape == expected.shape
    tolerance = TOLERANCE[model.dtype.name]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=tolerance["rtol"],
                               atol=tolerance["atol"] * scale)


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_every_hidden_activation_matches_predict(hidden, dtype, tmp_path):
    model = fastbp.MLP([5, 9, 7, 3], [hidden, hidden, "identity"], dtype=dtype, seed=1)
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    check_close(model, path, inputs(5, dtype))


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_every_output_activation_matches_predict(output, dtype, tmp_path):
    model = fastbp.MLP([4, 8, 3], ["tanh", output], dtype=dtype, seed=2)
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    check_close(model, path, inputs(4, dtype, seed=1))


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", OUTPUTS)
def test_each_activation_alone_over_its_whole_range(activation, dtype, tmp_path):
    """Identity weights: the activation itself, on -40..40, tiny values and the far negative
    tail (where float64's exp(-z) overflows and gelu's exp(-z^2) is 1e-300), with no matrix
    product in between, to 16 ulps of each output (to 128 times the smallest normal number
    below that: a subnormal intermediate may be flushed on either side) (float32's graph used ONNX Runtime's Elu, 100% off for z near 0,
    and 1 + Erf, 100% off for gelu below -5.5; float64's gelu was 4e-13 off near -37, its
    sigmoid 0 below -709.8: an absolute tolerance of 1e-6, then 1e-15, hid each)."""
    model = fastbp.MLP([4, 4], [activation], dtype=dtype)
    model.weights = [np.eye(4)]
    model.biases = [np.zeros(4)]
    far = 800 if dtype == "float64" else 110
    values = np.concatenate([np.linspace(-40, 40, 801), -np.logspace(-12, 1.5, 100),
                             np.logspace(-12, 1.5, 100), np.linspace(-far, -40, 398),
                             [0.0]])
    X = values.reshape(-1, 4).astype(dtype)
    path = tmp_path / "one.onnx"
    model.to_onnx(path)
    got, expected = run(path, X), model.predict(X)
    info = np.finfo(dtype)
    # near the subnormal range, where a subnormal intermediate (float32 swish's sigmoid
    # below -87) is kept by one side and flushed by the other: absolute
    floor = 128 * info.tiny
    normal = np.abs(expected) >= floor
    assert normal.sum() >= 450             # (relu: the positive half)
    np.testing.assert_allclose(got[normal], expected[normal], rtol=16 * info.eps, atol=0)
    np.testing.assert_allclose(got[~normal], expected[~normal], rtol=0, atol=floor)


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_trained_classifier_gives_the_same_probabilities_and_classes(dtype, tmp_path):
    from fastbp.demo import make_spirals
    X, y = make_spirals(2000, seed=0)
    model = fastbp.MLP([2, 32, 32, 3], ["gelu", "swish", "softmax"], dtype=dtype, seed=0)
    fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, epochs=15,
                   seed=0).fit(model, X, y)
    path = tmp_path / "spirals.onnx"
    model.to_onnx(path)
    X = X.astype(dtype)
    got = run(path, X)
    check_close(model, path, X)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    assert (got.argmax(axis=1) == model.predict(X).argmax(axis=1)).mean() > 0.999


@needs_runtime
def test_dropout_models_export_for_inference(tmp_path):
    model = fastbp.MLP([6, 16, 16, 2], ["relu", "elu", "sigmoid"], dropout=[0.5, 0.3], seed=3)
    X = inputs(6, "float32")
    fastbp.Trainer("bce", epochs=2, seed=0).fit(model, X, (X[:, :2] > 0).astype(float))
    path = tmp_path / "dropout.onnx"
    model.to_onnx(path)
    proto = onnx.load(os.fspath(path))
    assert not [node for node in proto.graph.node if node.op_type == "Dropout"]
    check_close(model, path, X)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["dropout"] == "[0.5, 0.3]"


@needs_runtime
def test_the_graph_is_checked_and_described(tmp_path):
    model = fastbp.MLP([3, 5, 2], ["relu", "softmax"], seed=0)
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    proto = onnx.load(os.fspath(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.producer_name == "fastbp" and proto.producer_version == fastbp.__version__
    assert [i.name for i in proto.graph.input] == ["X"]
    assert [o.name for o in proto.graph.output] == ["Y"]
    x_type = proto.graph.input[0].type.tensor_type
    assert x_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in x_type.shape.dim] == ["N", 3]
    ops = [node.op_type for node in proto.graph.node]
    assert ops == ["MatMul", "Add", "Relu", "MatMul", "Add", "Softmax"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["W1"], model.weights[0])
    np.testing.assert_array_equal(weights["b2"], model.biases[1])
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["layer_sizes"] == "[3, 5, 2]" and props["dtype"] == "float32"
    assert proto.opset_import[0].version >= 13


@needs_runtime
def test_float64_models_take_and_give_double(tmp_path):
    model = fastbp.MLP([3, 4, 1], ["gelu", "identity"], dtype="float64", seed=0)
    path = tmp_path / "double.onnx"
    model.to_onnx(path)
    proto = onnx.load(os.fspath(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert session(path).get_inputs()[0].type == "tensor(double)"


@needs_runtime
def test_to_onnx_writes_exactly_the_path_it_is_given(tmp_path):
    from fastbp.export import to_onnx
    model = fastbp.MLP([2, 3], ["relu"])
    for name in ("model.onnx", "no_extension", "model.onnx.bak"):
        path = tmp_path / name
        to_onnx(model, str(path))
        assert path.is_file()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.bak", "no_extension"]
    (tmp_path / "model.onnx").write_bytes(b"old")
    model.to_onnx(tmp_path / "model.onnx")                   # replaces an existing file
    assert onnx.load(os.fspath(tmp_path / "model.onnx")).producer_name == "fastbp"


@needs_runtime
def test_bad_arguments_are_refused(tmp_path):
    from fastbp.export import to_onnx
    with pytest.raises(TypeError, match="fastbp.MLP or a fitted fastbp.sklearn"):
        to_onnx("not a model", tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="path"):
        to_onnx(fastbp.MLP([2, 2], "identity"), 42)
    with pytest.raises(FileNotFoundError):
        to_onnx(fastbp.MLP([2, 2], "identity"), tmp_path / "missing" / "x.onnx")
    assert os.listdir(tmp_path) == []


@needs_runtime
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_model_with_parameters_not_finite_is_refused(value, tmp_path):
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    model.weights[1][2, 1] = value
    before = model.to_bytes()
    with pytest.raises(ValueError, match="not all finite"):
        model.to_onnx(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not all finite"):
        model.predict(np.ones((2, 3), np.float32))
    assert os.listdir(tmp_path) == [] and model.to_bytes() == before


@needs_runtime
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize("labels", [["no", "yes"], ["ant", "bee", "cat"], [3, 7]])
def test_a_fitted_classifier_exports_its_network_with_its_classes(labels, tmp_path):
    pytest.importorskip("sklearn")
    import json

    from fastbp.export import to_onnx
    from fastbp.sklearn import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.array(labels)[rng.integers(0, len(labels), 120)]
    estimator = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with pytest.raises(ValueError, match="not fitted"):
        to_onnx(estimator, tmp_path / "c.onnx")
    estimator.fit(X, y)
    to_onnx(estimator, tmp_path / "c.onnx")
    Subclass = type("Subclass", (MLPClassifier,), {})      # a user's subclass exports too
    to_onnx(Subclass(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y),
            tmp_path / "s.onnx")
    assert onnx.load(os.fspath(tmp_path / "s.onnx")).graph == \
        onnx.load(os.fspath(tmp_path / "c.onnx")).graph
    props = {p.key: p.value for p in onnx.load(os.fspath(tmp_path / "c.onnx")).metadata_props}
    assert json.loads(props["classes"]) == list(estimator.classes_)
    assert props["estimator"] == "MLPClassifier"
    got = run(tmp_path / "c.onnx", X.astype(estimator.model_.dtype))
    probabilities = estimator.predict_proba(X)
    if len(labels) == 2:      # one column: the probability of classes[1]
        assert got.shape == (120, 1) and "classes[1]" in props["outputs"]
        got = np.column_stack([1 - got[:, 0], got[:, 0]])
    np.testing.assert_allclose(got, probabilities, rtol=1e-12, atol=1e-14)
    predicted = np.asarray(json.loads(props["classes"]))[got.argmax(axis=1)]
    assert (predicted == estimator.predict(X)).all()


@needs_runtime
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_a_fitted_regressor_exports_its_network(tmp_path):
    pytest.importorskip("sklearn")
    from fastbp.export import to_onnx
    from fastbp.sklearn import MLPRegressor
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(80, 3)), rng.normal(size=(80, 2))
    estimator = MLPRegressor(hidden_layer_sizes=(6,), max_iter=5, random_state=0).fit(X, Y)
    to_onnx(estimator, tmp_path / "r.onnx")
    props = {p.key: p.value for p in onnx.load(os.fspath(tmp_path / "r.onnx")).metadata_props}
    assert "classes" not in props and props["estimator"] == "MLPRegressor"
    np.testing.assert_allclose(run(tmp_path / "r.onnx", X.astype(estimator.model_.dtype)),
                               estimator.predict(X), rtol=1e-12, atol=1e-14)


@needs_runtime
def test_the_model_is_unchanged_by_export(tmp_path):
    model = fastbp.MLP([3, 4, 2], ["swish", "softmax"], seed=0)
    before = model.to_bytes()
    model.to_onnx(tmp_path / "m.onnx")
    assert model.to_bytes() == before


@needs_runtime
def test_the_documentation_examples_run(tmp_path):
    """docs/onnx.md's python blocks, in order, in one namespace, in an empty folder."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "onnx.md"), encoding="utf-8").read()
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 3
    script = "\n".join(f"exec(compile({block!r}, 'docs/onnx.md block {n}', 'exec'))"
                       for n, block in enumerate(blocks, 1))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(os.listdir(tmp_path)) == ["classifier.onnx", "model.onnx"]


@needs_runtime
def test_metadata_of_ones_own_is_added_and_fastbps_is_kept(tmp_path):
    model = fastbp.MLP([3, 2], ["softmax"], seed=0)
    model.to_onnx(tmp_path / "m.onnx", metadata={"owner": "team a", "classes": '["x", "y"]'})
    props = {p.key: p.value for p in onnx.load(os.fspath(tmp_path / "m.onnx")).metadata_props}
    assert props["owner"] == "team a" and props["dtype"] == "float32"
    with pytest.raises(ValueError, match=r"may not replace fastbp's own entries: \['dtype'\]"):
        model.to_onnx(tmp_path / "n.onnx", metadata={"dtype": "float16"})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        model.to_onnx(tmp_path / "n.onnx", metadata={"version": 2})
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        model.to_onnx(tmp_path / "n.onnx", metadata=[("a", "b")])
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
