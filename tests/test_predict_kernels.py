"""predict's and evaluate's products past the few-row kernels in fastbp's own kernels
(issue 15): under FASTBP_KERNELS=auto a pass of more than PREDICTOR_ROWS rows takes the
kernel-or-BLAS choice measured at its chunk's row bucket (fastbp/_products.py).

predict under blas, own (each instruction set) and auto (its measurement made to pick the
own kernels, then BLAS) equals a float64 NumPy forward pass to rounding, in both dtypes,
for row counts on both sides of the few-row limit, the register block and predict's
chunks, and repeats bit for bit; auto measures each bucket's forward products once, keeps
them in products.json, and measures nothing on a later call or in a new process.
"""
import json

import numpy as np
import pytest

import fastbp
from fastbp import _core, _products
from fastbp.model import PREDICT_CHUNK_ROWS
from fastbp._threads import small_gemm_kernels

from reference import forward

ISAS = {"avx512": ["avx2", "avx512"], "avx2": ["avx2"], None: []}[_core.best_kernel_isa()]
needs_kernels = pytest.mark.skipif(not ISAS, reason="this CPU runs no own kernels")
TOLERANCE = {"float32": 5e-5, "float64": 1e-12}
SIZES = [37, 29, 70, 5]   # widths on and off the register blocks
ACTIVATIONS = ["tanh", "tanh", "softmax"]   # smooth: rounding cannot flip a unit
LIMIT = _core.PREDICTOR_ROWS
# the few-row limit, the 6-row register block, a bucket's edges, predict's chunks
ROWS = [1, 7, LIMIT, LIMIT + 1, 127, 128, 129, 511, PREDICT_CHUNK_ROWS - 1,
        PREDICT_CHUNK_ROWS, PREDICT_CHUNK_ROWS + 1, 2 * PREDICT_CHUNK_ROWS + 5]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A new process's measurements: an empty cache folder and nothing measured yet."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(_products.ISA_VARIABLE, raising=False)
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    return tmp_path


def forget_in_process(monkeypatch):
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})


def counted_measurements(monkeypatch, answer=None):
    """The (kind, m, n, k) of every product measured from now on; answer: what each
    measurement says (True: the own kernel is faster), None: really measure."""
    measured = []
    real = _products._measure

    def measure(*args):
        measured.append(args[:4])
        return real(*args) if answer is None else answer
    monkeypatch.setattr(_products, "_measure", measure)
    return measured


def model_and_rows(dtype, n_rows):
    model = fastbp.MLP(SIZES, ACTIVATIONS, dtype=dtype, seed=3)
    X = np.random.default_rng(n_rows).standard_normal((n_rows, SIZES[0])).astype(dtype)
    expected = forward([w.astype(np.float64) for w in model.weights],
                       [b.astype(np.float64) for b in model.biases], ACTIVATIONS,
                       X.astype(np.float64))[-1]
    return model, X, expected


def predicts_to_rounding(dtype):
    for n_rows in ROWS:
        model, X, expected = model_and_rows(dtype, n_rows)
        got = model.predict(X, n_threads=1)
        np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype], err_msg=f"{n_rows} rows")
        np.testing.assert_array_equal(model.predict(X, n_threads=1), got)   # bit for bit
        if n_rows > PREDICT_CHUNK_ROWS:   # chunks shared by two threads: the same bits
            np.testing.assert_array_equal(model.predict(X, n_threads=2), got)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_on_blas_equals_the_reference(monkeypatch, dtype):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    predicts_to_rounding(dtype)


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_in_the_own_kernels_equals_the_reference(monkeypatch, dtype, isa):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    monkeypatch.setenv(_products.ISA_VARIABLE, isa)
    predicts_to_rounding(dtype)


@needs_kernels
@pytest.mark.parametrize("own_faster", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_under_auto_equals_the_reference(monkeypatch, fresh, dtype, own_faster):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    measured = counted_measurements(monkeypatch, answer=own_faster)
    predicts_to_rounding(dtype)
    assert measured   # the rows past the few-row kernels were measured
    code = _core.KERNEL_ISAS[ISAS[-1]] if own_faster else 0
    plan, _ = fastbp.MLP(SIZES, ACTIVATIONS, dtype=dtype)._workspace(
        300, n_threads=1, few_rows=True, fixed_rows=False)
    assert [isas[0] for isas in plan.product_isas[dtype]] == [code] * 3   # forward products


@needs_kernels
def test_auto_measures_each_bucket_once_and_keeps_it(monkeypatch, fresh):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    measured = counted_measurements(monkeypatch)
    model, X, _ = model_and_rows("float32", 300)
    first = model.predict(X, n_threads=1)
    # the forward products only, at the bucket of 300 rows
    forward_products = [("nn", 512, n_out, n_in) for n_in, n_out in zip(SIZES, SIZES[1:])]
    assert sorted(measured) == sorted(forward_products)
    keys = json.loads((fresh / _products.CACHE_FILE).read_text())["choices"]
    assert sorted(key.split("/")[1] for key in keys) == sorted(
        f"512x{n_out}x{n_in}" for n_in, n_out in zip(SIZES, SIZES[1:]))
    # the same bucket again, by predict or evaluate, measures nothing
    model.predict(X[:257], n_threads=1)
    model.evaluate(X, np.zeros(300, np.int64), "cce", n_threads=1)
    assert len(measured) == 3
    # nor does a new process with the same cache, whose predicts give the same bits
    forget_in_process(monkeypatch)
    np.testing.assert_array_equal(model.predict(X, n_threads=1), first)
    assert len(measured) == 3
    # the next bucket is measured once; few rows, several BLAS threads and gradients
    # passes are not measured
    model.predict(np.ones((513, SIZES[0]), np.float32), n_threads=1)
    model.predict(np.ones((1000, SIZES[0]), np.float32), n_threads=1)
    assert len(measured) == 6 and all(shape[1] == 1024 for shape in measured[3:])
    model.predict(np.ones((LIMIT, SIZES[0]), np.float32).tolist(), n_threads=1)
    model.evaluate(X[:LIMIT], np.zeros(LIMIT, np.int64), "cce", n_threads=1)
    wide = np.ones((1500, SIZES[0]), np.float32)   # a new bucket, 2048
    model.predict(wide, n_threads=2)
    model.gradients(wide, np.zeros(1500, np.int64), "cce", n_threads=1)
    assert len(measured) == 6


@needs_kernels
def test_products_past_the_measuring_limit_stay_on_blas(monkeypatch, fresh):
    """A pass's products larger than PASS_MEASURE_MAX_MULTIPLY_ADDS are not measured (the
    first call would pay for it) and stay on BLAS; a fit's plans have no such limit."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    measured = counted_measurements(monkeypatch, answer=True)
    # at the bucket of 300 rows, 512: layer 2 is 512 x 70 x 29, 1.04 million
    monkeypatch.setattr(fastbp.model, "PASS_MEASURE_MAX_MULTIPLY_ADDS", 600_000)
    model = fastbp.MLP(SIZES, ACTIVATIONS)
    plan, _ = model._workspace(300, n_threads=1, few_rows=True, fixed_rows=False)
    code = _core.KERNEL_ISAS[ISAS[-1]]
    assert [isas[0] for isas in plan.product_isas["float32"]] == [code, 0, code]
    assert sorted(measured) == [("nn", 512, 5, 70), ("nn", 512, 29, 37)]
    plan, _ = model._workspace(512, n_threads=1, few_rows=False)   # a fit's batch
    assert plan.product_isas["float32"][1][0] == code


@pytest.mark.parametrize("rows, bucket", [(1, 1), (2, 2), (3, 4), (LIMIT, LIMIT),
                                          (LIMIT + 1, 2 * LIMIT), (2 * LIMIT, 2 * LIMIT),
                                          (1023, 1024), (1024, 1024), (1025, 2048),
                                          (PREDICT_CHUNK_ROWS, PREDICT_CHUNK_ROWS)])
def test_row_bucket_edges(rows, bucket):
    assert _products.row_bucket(rows) == bucket


def test_a_predict_pass_measures_at_most_a_bucket_per_power_of_two():
    """Every row count predict's chunks can take lands in one of 12 buckets."""
    buckets = {_products.row_bucket(rows) for rows in range(1, PREDICT_CHUNK_ROWS + 1)}
    assert buckets == {2 ** i for i in range(12)}


@needs_kernels
def test_the_bucket_plan_times_blas_in_its_own_calls(monkeypatch, fresh):
    """A pass of a bucket's rows is measured with BLAS cut as that bucket's plan cuts it
    (Plan.gemm_chunks at the bucket), whatever the pass's own row count."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    calls = []
    monkeypatch.setattr(_products, "own_is_faster",
                        lambda *args: calls.append(args) or False)
    model = fastbp.MLP(SIZES, ACTIVATIONS, seed=0)
    for rows in (100, 128):
        model._workspace(rows, n_threads=1, few_rows=True, fixed_rows=False)
    assert len(calls) == 3   # 100 rows took 128's choice, asked once
    bucket_plan = _core.Plan(SIZES, model._codes, 128, None, False, small_gemm_kernels())
    assert [call[6:] for call in calls] == [
        forward for forward, _ in bucket_plan.gemm_chunks]
