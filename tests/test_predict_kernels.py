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
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp import _core, _products
from fastbp.model import MIN_PIECE_ROWS, PREDICT_CHUNK_ROWS, kept_chunks
from fastbp._threads import SPLIT_MIN_SECONDS, KeptPassThreads, small_gemm_kernels

from reference import forward

# the own kernels' instruction sets this run can use (FASTBP_KERNEL_ISA can lower the CPU's)
ISAS = {"avx512": ["avx2", "avx512"], "avx2": ["avx2"], None: []}[_products.kernel_isa()]
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
    """A new process's measurements: an empty cache folder and nothing measured yet. (The
    kernels' level stays as the run set it: ISAS was read under it, and a run forcing the
    AVX2 level had these tests mix AVX-512 products with AVX2 element-wise kernels.)"""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
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
    # the general path, on BLAS threads (a sparse X takes it: a dense one, list or array,
    # takes the kept pass)
    model.predict(scipy.sparse.csr_matrix(wide), n_threads=2)
    model.gradients(wide, np.zeros(1500, np.int64), "cce", n_threads=1)
    assert len(measured) == 6
    # two threads sharing a kept pass take the one-thread plan: its bucket measured
    model.predict(wide, n_threads=2)
    assert len(measured) == 9 and all(shape[1] == 2048 for shape in measured[6:])


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
    assert [call[6:8] for call in calls] == [
        forward for forward, _ in bucket_plan.gemm_chunks]
    # a pass takes the own kernel unless BLAS is clearly faster (it can then be shared):
    # by PASS_OWN_MARGIN on the product, or on its third of the pass
    products = [128 * n_in * n_out for n_in, n_out in zip(SIZES, SIZES[1:])]
    margin = _products.PASS_OWN_MARGIN
    assert [call[8] for call in calls] == pytest.approx(
        [max(margin, 1 + (margin - 1) * sum(products) / (3 * product))
         for product in products])


@needs_kernels
@pytest.mark.parametrize("sizes, checked", [(SIZES, [True, False, False]),
                                            ([20, 29, 5], [False, False])])
def test_a_passs_first_product_is_timed_with_the_check_it_makes(monkeypatch, fresh, sizes,
                                                               checked):
    """A kept predict pass checks X on its first product where the own kernel makes it
    and it is narrower than X, else by reading X once more (forward_kept): W1's pass ran
    30% faster on the own kernels here, while the product alone was level with BLAS, so a
    measurement of the product alone took BLAS about one time in three. That product is
    timed with its check; a fit's plan (its inputs checked once) is not."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    calls = []
    monkeypatch.setattr(_products, "own_is_faster",
                        lambda *args: calls.append(args) or False)
    model = fastbp.MLP(sizes, ["tanh"] * (len(sizes) - 2) + ["softmax"], seed=0)
    model._workspace(128, n_threads=1, few_rows=True, fixed_rows=False)
    assert [call[:4] for call in calls] == [("nn", 128, n_out, n_in)
                                            for n_in, n_out in zip(sizes, sizes[1:])]
    assert [call[10] for call in calls] == checked
    calls.clear()
    model._workspace(128, n_threads=1)
    assert calls and not any(call[10] for call in calls)


@needs_kernels
def test_a_checked_measurement_times_the_check_of_what_the_pass_checks(monkeypatch):
    """BLAS's time takes the check of its input (m x k), the own kernel's that of its
    product (m x n), once a product, as forward_kept makes them."""
    isa = _products.kernel_isa()
    checked = []
    all_finite = _core.all_finite
    monkeypatch.setattr(_core, "all_finite",
                        lambda array: checked.append(array.shape) or all_finite(array))
    _products._measure("nn", 48, 8, 40, np.float32, isa, checked=True)
    assert set(checked) == {(48, 40), (48, 8)}
    checked.clear()
    _products._measure("nn", 48, 8, 40, np.float32, isa)
    assert checked == []


@needs_kernels
def test_a_pass_takes_the_own_kernel_where_blas_is_faster_only_within_the_margin(
        monkeypatch, fresh):
    """The own kernel 3% slower than BLAS: a fit's plan takes BLAS, a predict pass's the
    own kernel (a chunk of own kernels can be shared among threads, one with a product on
    BLAS cannot); 10% slower: both take BLAS."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    for slower, own_in_pass in [(1.03, True), (1.10, False)]:
        forget_in_process(monkeypatch)
        monkeypatch.setenv("FASTBP_CACHE_DIR", str(fresh / str(slower)))
        monkeypatch.setattr(_products, "_measure",
                            lambda *args: slower < args[8] if len(args) > 8 else False)
        model = fastbp.MLP(SIZES, ACTIVATIONS, seed=0)
        fit_plan, _ = model._workspace(128, n_threads=1)
        pass_plan, _ = model._workspace(128, n_threads=1, few_rows=True, fixed_rows=False)
        assert not any(any(isas) for isas in fit_plan.product_isas["float32"])
        assert all(isas[0] for isas in pass_plan.product_isas["float32"]) == own_in_pass


# ---- predict past PREDICTOR_ROWS on one thread: plans kept with the model ----

# both sides of the few-row limit, a bucket's edges, predict's chunks and a last chunk
# on either side of the few-row limit
KEPT_ROWS = [LIMIT + 1, 127, 128, 129, 511, 513, 1025, PREDICT_CHUNK_ROWS - 1,
             PREDICT_CHUNK_ROWS, PREDICT_CHUNK_ROWS + 1, PREDICT_CHUNK_ROWS + LIMIT,
             PREDICT_CHUNK_ROWS + LIMIT + 1, 2 * PREDICT_CHUNK_ROWS + 5]
MODES = ["blas", "auto", "own"] if ISAS else ["blas"]
W1 = ([784, 128, 10], ["relu", "softmax"])


def general_path(model, X, **options):
    """predict's result by the general path (a plan and workspace made for the call)."""
    model._predict_kept = lambda *args: None   # an instance attribute hides the method
    try:
        return model.predict(X, **options)
    finally:
        del model._predict_kept


def kept_plan_count(model):
    return len(model._kept_plans)


def record_kept_plans(model):
    """The chunk rows of every kept plan predict takes on this model from now on."""
    taken, real = [], model._kept_plan
    model._kept_plan = lambda rows: taken.append(rows) or real(rows)
    return taken


@pytest.mark.parametrize("small_gemm", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kept_plans_give_the_general_paths_bits(monkeypatch, fresh, dtype, mode, small_gemm):
    """small_gemm: plans cut for OpenBLAS's small-matrix kernels, whose cuts depend on a
    chunk's exact row count (so plans are kept per chunk rows, not per bucket)."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, mode)
    monkeypatch.setattr(fastbp._threads, "_small_gemm", small_gemm)
    for sizes, activations, row_counts in [(SIZES, ACTIVATIONS, KEPT_ROWS),
                                           (*W1, [LIMIT + 1, 513, 600, 1024, 2049])]:
        model = fastbp.MLP(sizes, activations, dtype=dtype, seed=3)
        taken = record_kept_plans(model)
        for n_rows in row_counts:
            X = np.random.default_rng(n_rows).standard_normal((n_rows, sizes[0]))
            X = X.astype(dtype)
            expected = general_path(model, X, n_threads=1)
            np.testing.assert_array_equal(model.predict(X, n_threads=1), expected)
            out = np.full_like(expected, np.nan)
            assert model.predict(X, n_threads=1, out=out) is out
            np.testing.assert_array_equal(out, expected)
            assert taken[-2:] == [min(n_rows, PREDICT_CHUNK_ROWS)] * 2   # the kept path's
            # the default count gives the one-thread bits, but for one chunk with a
            # product on BLAS, which the general path may give BLAS's threads as before
            _, calls_blas, _ = model._kept_plan(min(n_rows, PREDICT_CHUNK_ROWS))
            one_chunk_on_blas = calls_blas and n_rows <= PREDICT_CHUNK_ROWS
            np.testing.assert_array_equal(
                model.predict(X), general_path(model, X) if one_chunk_on_blas else expected)


def predictions_at_once(cases, callers: int, n_threads: int) -> list:
    """`callers` threads, started together, each predicting every (model, X, expected)
    case several times in an order of its own with n_threads: the (caller, shape, dtype)
    of every result that was not the expected one (all of them must finish)."""
    failures = []
    barrier = threading.Barrier(callers)

    def serve(seed):
        order = np.random.default_rng(seed).permutation(len(cases) * 5) % len(cases)
        barrier.wait()
        for case in order:
            model, X, expected = cases[case]
            if not np.array_equal(model.predict(X, n_threads=n_threads), expected):
                failures.append((seed, X.shape, model.dtype))
    threads = [threading.Thread(target=serve, args=(seed,)) for seed in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return failures


@pytest.mark.parametrize("mode", MODES)
def test_threads_predicting_on_one_model_past_the_fast_path_get_exact_results(
        monkeypatch, fresh, mode):
    """12 threads, each predicting row counts past PREDICTOR_ROWS in its own order (both
    dtypes' models), share the kept plans: every result is the general path's."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, mode)
    cases = []
    for dtype in ("float32", "float64"):
        model = fastbp.MLP([20, 64, 64, 1], ["relu", "relu", "identity"], dtype=dtype,
                           seed=1)
        for n_rows in (LIMIT + 1, 100, 128, 300, 1024, PREDICT_CHUNK_ROWS + 7):
            X = np.random.default_rng(n_rows).standard_normal((n_rows, 20)).astype(dtype)
            cases.append((model, X, general_path(model, X, n_threads=1)))
    assert not predictions_at_once(cases, callers=12, n_threads=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_x_past_the_fast_path_is_refused_as_before(monkeypatch, dtype, bad, mode):
    """Refused with the general path's message, the model unchanged, wherever the bad
    value is: in the first or the last column (whose weights are all 0, so that the
    first layer's product meets Inf x 0), the first row or the last chunk's last, and
    whether X is checked itself (BLAS's products, a first layer wider than X) or on the
    first layer's product (the own kernels, a narrower first layer)."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, mode)
    # ReLU takes a NaN to 0: the outputs' check would not see it
    for sizes, activations in [(SIZES, ACTIVATIONS), ([9, 5, 2], ["relu", "identity"]),
                               ([5, 9, 2], ["relu", "identity"])]:
        model = fastbp.MLP(sizes, activations, dtype=dtype, seed=3)
        model.weights = [np.zeros_like(model.weights[0])] + model.weights[1:]
        parameters = model.parameter_vector()
        for n_rows in (LIMIT + 1, 2 * PREDICT_CHUNK_ROWS + 5):
            for row, column in [(0, 0), (n_rows - 1, sizes[0] - 1)]:
                X = np.ones((n_rows, sizes[0]), dtype)
                model.predict(X)                  # the plan is kept
                X[row, column] = bad
                with pytest.raises(ValueError) as general:
                    general_path(model, X)
                for out in (None, np.zeros((n_rows, sizes[-1]), dtype)):
                    with pytest.raises(ValueError) as kept:
                        model.predict(X, out=out)
                    assert str(kept.value) == str(general.value)
                    assert "finite" in str(kept.value) or "NaN" in str(kept.value)
        np.testing.assert_array_equal(model.parameter_vector(), parameters)


@needs_kernels
def test_kept_plans_follow_the_kernel_switches(monkeypatch, fresh):
    """Changing FASTBP_KERNELS or FASTBP_KERNEL_ISA between calls takes a plan made under
    the new setting (its product choices), with the general path's bits."""
    model, X, _ = model_and_rows("float32", 300)
    seen = set()
    for mode, isa in [("own", ISAS[-1]), ("blas", ISAS[-1]), ("own", ISAS[0]),
                      ("own", ISAS[-1])]:
        monkeypatch.setenv(_products.KERNELS_VARIABLE, mode)
        monkeypatch.setenv(_products.ISA_VARIABLE, isa)
        np.testing.assert_array_equal(model.predict(X), general_path(model, X))
        key = (300, None, mode.encode(), isa.encode(), None)  # rows, the switches' bytes
        plan, calls_blas, _ = model._kept_plans[key]
        code = _core.KERNEL_ISAS[isa] if mode == "own" else 0
        assert [isas[0] for isas in plan.product_isas["float32"]] == [code] * 3
        assert calls_blas == (mode == "blas")
        seen.add((mode, isa))
    assert kept_plan_count(model) == len(seen)


def test_kept_plans_read_the_live_parameters_and_a_new_model_starts_afresh():
    model, X, _ = model_and_rows("float64", 300)
    first = model.predict(X)
    model.set_parameter_vector(model.parameter_vector() * 0.5)   # written in place
    halved = model.predict(X)
    assert not np.array_equal(halved, first)
    np.testing.assert_array_equal(halved, general_path(model, X, n_threads=1))
    for other in (fastbp.MLP.from_bytes(model.to_bytes()),
                  fastbp.MLP(SIZES, ACTIVATIONS, dtype="float32", seed=3)):
        assert kept_plan_count(other) == 0   # its own parameters, its own plans
        np.testing.assert_array_equal(other.predict(X.astype(other.dtype)),
                                      general_path(other, X.astype(other.dtype)))


def test_a_model_keeps_a_bounded_number_of_plans():
    model = fastbp.MLP(SIZES, ACTIVATIONS, seed=3)
    X = np.ones((LIMIT + 3 * fastbp.model.KEPT_PLANS, SIZES[0]), np.float32)
    for n_rows in range(LIMIT + 1, X.shape[0] + 1):
        model.predict(X[:n_rows])
        assert kept_plan_count(model) <= fastbp.model.KEPT_PLANS
    assert max(key[0] for key in model._kept_plans) == X.shape[0]   # the latest kept


# ---- kept passes on several threads ----

@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shared_passes_with_the_helpers_asleep_or_late_give_the_bits_of_one(monkeypatch,
                                                                           dtype):
    """Calls a few milliseconds apart find the helpers asleep (they sleep 1 ms after their
    last job): a helper that wakes after the caller has taken every piece enters nothing,
    and the caller does not wait for it; calls back to back find them awake. Every call
    gives the one-thread bits, and none hangs. (The own kernels' passes: a chunk on BLAS
    runs on BLAS's threads, whose bits may differ from one thread's, as documented.)"""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    model = fastbp.MLP(*W1, dtype=dtype, seed=5)
    for n_rows in (3 * LIMIT, 2 * PREDICT_CHUNK_ROWS + 7):
        X = np.random.default_rng(n_rows).standard_normal((n_rows, 784)).astype(dtype)
        one = model.predict(X, n_threads=1)
        for call in range(60):
            if call % 2:
                time.sleep(0.003)
            np.testing.assert_array_equal(model.predict(X, n_threads=2 + call % 3), one)


def test_kept_chunks_give_each_row_the_kernels_of_one_thread():
    """One chunk of fastbp's own kernels is cut into up to `threads` pieces of at least
    MIN_PIECE_ROWS rows (a piece runs in its chunk's kernels, whatever its own size);
    several chunks are cut at most MAX_CHUNK_PIECES ways each, their bounds kept and a
    last chunk of at most PREDICTOR_ROWS rows (the few-row kernels) whole; a plan with a
    product on BLAS shares whole chunks."""
    capacity = PREDICT_CHUNK_ROWS
    assert kept_chunks(500, 500, 1, False) == (1, 500)
    assert kept_chunks(5000, capacity, 4, False) == (4, capacity // 4)   # 10 claims
    assert kept_chunks(5000, capacity, 2, True) == (2, capacity)
    assert kept_chunks(2 * capacity + 2 * LIMIT, capacity, 2, False) == (2, capacity // 4)
    assert kept_chunks(1000, 1000, 4, True) == (1, 1000)     # one chunk on BLAS: whole
    assert kept_chunks(LIMIT + 1, LIMIT + 1, 2, False) == (2, LIMIT // 2 + 1)
    assert kept_chunks(2 * LIMIT, 2 * LIMIT, 2, False) == (2, LIMIT)
    assert kept_chunks(2 * LIMIT, 2 * LIMIT, 64, False) == (2 * LIMIT // MIN_PIECE_ROWS,
                                                            MIN_PIECE_ROWS)
    assert kept_chunks(LIMIT, LIMIT, 2, False) == (1, LIMIT)   # few-row kernels: whole
    for n_rows in range(LIMIT + 1, 6 * LIMIT):
        for threads in range(2, 6):
            workers, rows = kept_chunks(n_rows, n_rows, threads, False)
            pieces = [min(rows, n_rows - start) for start in range(0, n_rows, rows)]
            assert len(pieces) == workers <= threads
            assert workers == 1 or min(pieces) >= MIN_PIECE_ROWS - threads, \
                (n_rows, threads, pieces)
            assert workers == min(threads, n_rows // MIN_PIECE_ROWS)
    # several chunks: their bounds stay bounds between claims, and a claim of at most
    # PREDICTOR_ROWS rows is a whole chunk (the one-thread pass's last, few-row kernels)
    # unless the chunk it lies in has more rows
    for capacity in (130, 260, 300, 512):
        for n_rows in range(capacity + 1, 4 * capacity + 3, 7):
            for threads in (2, 3, 4):
                workers, rows = kept_chunks(n_rows, capacity, threads, False)
                claims = [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]
                bounds = {start for start, _ in claims} | {n_rows}
                assert set(range(0, n_rows, capacity)) <= bounds, (capacity, n_rows, rows)
                chunk_of = {start: min(start + capacity, n_rows) - start
                            for start in range(0, n_rows, capacity)}
                for start, end in claims:
                    chunk = chunk_of[start // capacity * capacity]
                    assert chunk > LIMIT or end - start == chunk, \
                        (capacity, n_rows, threads, start, end)
                    assert end - start >= MIN_PIECE_ROWS or end - start == chunk
                assert workers == min(threads, len(claims))
                assert capacity % rows == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_kept_pass_on_several_threads_gives_the_bits_of_one(monkeypatch, fresh, dtype,
                                                             mode):
    """Any n_threads gives the one-thread bits, the rows cut into pieces (own kernels,
    one chunk) or shared by whole chunks; a count the pieces cannot use goes to the
    general path (BLAS's threads), also to rounding."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, mode)
    for sizes, activations in [(SIZES, ACTIVATIONS), W1,
                               ([20, 64, 64, 1], ["relu", "relu", "identity"])]:
        model = fastbp.MLP(sizes, activations, dtype=dtype, seed=3)
        for n_rows in (LIMIT + 1, 2 * LIMIT + 2, 2 * LIMIT + 3, 3 * LIMIT + 4, 777,
                       PREDICT_CHUNK_ROWS, 2 * PREDICT_CHUNK_ROWS + 5,
                       PREDICT_CHUNK_ROWS + 600, PREDICT_CHUNK_ROWS + 540):
            X = np.random.default_rng(n_rows).standard_normal((n_rows, sizes[0]))
            X = X.astype(dtype)
            one = model.predict(X, n_threads=1)
            for threads in (2, 3, 4):
                got = model.predict(X, n_threads=threads)
                _, calls_blas, _ = model._kept_plan(min(n_rows, PREDICT_CHUNK_ROWS))
                workers, _ = kept_chunks(n_rows, min(n_rows, PREDICT_CHUNK_ROWS), threads,
                                         calls_blas)
                if workers > 1:
                    np.testing.assert_array_equal(got, one, err_msg=f"{n_rows} {threads}")
                else:
                    np.testing.assert_allclose(got, one, rtol=TOLERANCE[dtype],
                                               atol=TOLERANCE[dtype])
            out = np.full_like(one, np.nan)
            assert model.predict(X, n_threads=3, out=out) is out
            np.testing.assert_allclose(out, one, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x_in_a_piece_of_another_thread_is_refused(monkeypatch, bad):
    """A bad value in the last piece (another thread's) or the first is refused with the
    general path's message, the model unchanged."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own" if ISAS else "blas")
    model = fastbp.MLP(*W1, dtype="float32", seed=3)
    parameters = model.parameter_vector()
    n_rows = 4 * LIMIT + 10
    for row in (0, n_rows - 1):
        X = np.ones((n_rows, 784), np.float32)
        X[row, 5] = bad
        with pytest.raises(ValueError) as general:
            general_path(model, X, n_threads=1)
        with pytest.raises(ValueError) as kept:
            model.predict(X, n_threads=4)
        assert str(kept.value) == str(general.value)
    np.testing.assert_array_equal(model.parameter_vector(), parameters)


def test_the_default_count_of_a_kept_pass_is_chosen_on_its_calls(monkeypatch):
    """The first call on one thread; a short one keeps one thread for good; else phases
    on the allowed count and on one (here one call each), then the faster (more threads
    only by the margin), capped by the caller's limit at each call, measured again after
    REMEASURE_CALLS calls; FASTBP_THREADS pins it."""
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "REMEASURE_CALLS", 20)
    monkeypatch.setattr(fastbp._threads, "REMEASURE_SECONDS", 0.0)
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 0.0)
    rounds = fastbp._threads.MEASURE_ROUNDS
    allowed = [2]
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: allowed[0])

    def run(choice, seconds_on):
        threads, turn = choice.threads()
        if turn is not None:
            choice.record(turn, seconds_on[threads], 1000)
        return threads

    short = KeptPassThreads()
    assert [run(short, {1: SPLIT_MIN_SECONDS / 2, 2: 1.0}) for _ in range(30)] == [1] * 30
    assert short.short
    for seconds_on, chosen in [({1: 1e-3, 2: 0.5e-3}, 2), ({1: 1e-3, 2: 0.95e-3}, 1)]:
        choice = KeptPassThreads()
        counts = [run(choice, seconds_on) for _ in range(2 * rounds)]
        assert counts == [1, 2] * rounds    # turns, from one
        assert [run(choice, seconds_on) for _ in range(20)] == [chosen] * 20
    # the other work went away: the next turns find two threads faster
    counts = [run(choice, {1: 1e-3, 2: 0.5e-3}) for _ in range(2 * rounds + 5)]
    assert counts == [1, 2] * rounds + [2] * 5
    allowed[0] = 1                          # a limit set after the choice: it wins
    assert choice.threads() == (1, None)
    fresh = KeptPassThreads()
    assert [run(fresh, {1: 1e-3}) for _ in range(3)] == [1, 1, 1]   # nothing to measure
    assert fresh.chosen == 1 and fresh.timed[1] == 1   # kept: the limit is not asked
    asked = []                                              # on every call
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: asked.append(1) or 1)
    assert [run(fresh, {1: 1e-3}) for _ in range(10)] == [1] * 10 and not asked
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: allowed[0])
    # a phase lasts TURN_SECONDS: every call in it on its count, timed
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 3600.0)
    allowed[0] = 2
    spaced = KeptPassThreads()
    assert run(spaced, {1: 1e-3, 2: 0.5e-3}) == 1 and spaced.timed[1]   # the first call
    assert [spaced.threads() for _ in range(3)] == [(1, 1)] * 3           # its phase
    clock = [time.perf_counter() + 3600.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    assert [run(spaced, {1: 1e-3, 2: 0.5e-3}) for _ in range(3)] == [2] * 3
    assert spaced.timed["allowed"] == 3 and spaced.chosen is None
    monkeypatch.setenv(fastbp._threads.THREADS_VARIABLE, "3")
    assert KeptPassThreads().threads() == (2, None)
    assert short.threads() == (2, None)     # pinned, even where calls are short


def test_a_kept_pass_is_judged_short_on_its_first_phases_best_call(monkeypatch):
    """A first call slowed by cold caches does not make a short pass measured: the best
    call of the first phase decides, against min_seconds where given."""
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: 2)
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    phase = fastbp._threads.TURN_SECONDS
    for min_seconds, first, then, short in [(None, 2 * SPLIT_MIN_SECONDS,
                                             SPLIT_MIN_SECONDS / 2, True),
                                            (None, 2 * SPLIT_MIN_SECONDS,
                                             1.5 * SPLIT_MIN_SECONDS, False),
                                            (1e-6, 3e-6, 2e-6, False),
                                            (1e-6, 3e-6, 0.5e-6, True)]:
        choice, counts = KeptPassThreads(min_seconds), []
        for call in range(12):
            threads, turn = choice.threads()
            counts.append(threads)
            if turn is not None:
                choice.record(turn, first if call == 0 else then, 64)
            clock[0] += phase / 4
        assert choice.short == short, (min_seconds, first, then)
        assert (2 in counts) != short


def test_the_phases_of_a_kept_pass_time_calls_as_they_come(monkeypatch):
    """Back-to-back calls: the first call of a phase on two threads wakes the helpers
    (slow), the others find them awake; the best call counts, so two threads are chosen
    where they are faster while the calls come back to back, and one where every call on
    two threads has to wake them (calls now and then)."""
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: 2)
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    rounds, phase = fastbp._threads.MEASURE_ROUNDS, fastbp._threads.TURN_SECONDS
    monkeypatch.setattr(fastbp._threads, "REMEASURE_CALLS", 5)   # read by new choices
    for gap, chosen in [(phase / 10, 2), (2 * phase, 1)]:
        choice, counts, last = KeptPassThreads(), [], None
        for _ in range(4 * rounds * max(1, round(phase / gap))):
            threads, turn = choice.threads()
            counts.append(threads)
            seconds = 1e-3 if threads == 1 else (2e-3 if last != 2 else 0.55e-3)
            if turn is not None:
                choice.record(turn, seconds, 1000)
            last = threads
            clock[0] += gap
        assert choice.chosen == (1 if chosen == 1 else "allowed"), gap
        assert counts[-1] == chosen
    # kept for REMEASURE_CALLS calls and REMEASURE_SECONDS both, then measured again
    for _ in range(20):
        assert choice.threads() == (1, None)
        clock[0] += 0.01
    clock[0] += fastbp._threads.REMEASURE_SECONDS
    assert choice.threads() == (1, 1) and choice.chosen is None


def test_a_kept_pass_is_judged_on_its_phases_means_not_on_a_rare_fast_call(monkeypatch):
    """One thread's calls mostly slow with a rare fast one, two threads' steady in
    between: the means of the phases decide (two threads); and a phase that other work
    hit (every call slow) does not, where the other phases of its count were fast."""
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: 2)
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    rounds, phase = fastbp._threads.MEASURE_ROUNDS, fastbp._threads.TURN_SECONDS
    for name, seconds_of, chosen in [
            ("rare fast call", lambda threads, call, phases: (
                (0.7e-3 if call % 10 == 3 else 1.0e-3) if threads == 1 else 0.8e-3), 2),
            ("a phase hit", lambda threads, call, phases: (
                1e-3 if threads == 1 else (5e-3 if phases["allowed"] == 2 else 0.6e-3)), 2),
            ("steady", lambda threads, call, phases: 1e-3 if threads == 1 else 0.95e-3, 1)]:
        choice, call = KeptPassThreads(), 0
        while choice.chosen is None and call < 100 * rounds:
            threads, turn = choice.threads()
            if turn is not None:
                choice.record(turn, seconds_of(threads, call, choice.phases), 1000)
            call += 1
            clock[0] += phase / 10
        assert choice.chosen == (1 if chosen == 1 else "allowed"), name
        assert min(choice.phases.values()) == rounds, name


def test_the_default_of_a_kept_pass_respects_a_threadpool_limit(monkeypatch):
    """Under threadpoolctl's limit of one thread, no call of the default splits."""
    from threadpoolctl import threadpool_limits
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    model = fastbp.MLP(*W1, dtype="float32", seed=3)
    X = np.ones((1000, 784), np.float32)
    with threadpool_limits(1):
        for _ in range(2 * fastbp._threads.MEASURE_ROUNDS + 2):
            model.predict(X)
        _, _, choice = model._kept_plan(1000)
        assert choice.threads()[0] == 1
    assert not choice.timed["allowed"]


@needs_kernels
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_sharing_kept_passes_at_once_get_exact_results(monkeypatch, fresh, threads):
    """8 threads predicting at once with n_threads > 1: one pass at a time holds the
    kept helper threads, the others run alone; every result is the one-thread one."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    cases = []
    for sizes, activations in [W1, ([20, 64, 64, 1], ["relu", "relu", "identity"])]:
        model = fastbp.MLP(sizes, activations, dtype="float32", seed=1)
        for n_rows in (2 * LIMIT + 2, 300, 1000, PREDICT_CHUNK_ROWS + 7):
            X = np.random.default_rng(n_rows).standard_normal((n_rows, sizes[0]))
            X = X.astype(np.float32)
            cases.append((model, X, model.predict(X, n_threads=1)))
    assert not predictions_at_once(cases, callers=8, n_threads=threads)


@needs_kernels
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_process_after_fork_shares_its_passes_on_threads_of_its_own(monkeypatch):
    """The kept helper threads are the parent's; a forked child (which has none of them)
    starts its own: its shared passes finish, with the one-thread bits. (The own
    kernels forced: a plan with a product on BLAS would not share one chunk.)"""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    model = fastbp.MLP(*W1, dtype="float32", seed=1)
    X = np.random.default_rng(0).standard_normal((1000, 784)).astype(np.float32)
    expected = model.predict(X, n_threads=1)
    np.testing.assert_array_equal(model.predict(X, n_threads=2), expected)  # helpers started
    with warnings.catch_warnings():   # Python 3.12+ warns of fork with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:   # the child: exit status 0 if its passes give the bits, 1 if not
        status = 1
        try:
            status = 0 if all(np.array_equal(model.predict(X, n_threads=threads), expected)
                              for threads in (2, 3, 2)) else 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + 120
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if waited[0] == 0:   # hung: never leave it behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's shared pass did not finish in 120 s")
    assert os.WIFEXITED(waited[1]) and os.WEXITSTATUS(waited[1]) == 0
    np.testing.assert_array_equal(model.predict(X, n_threads=2), expected)


def flat_gradients(model, X, Y, weights=None):
    value, grad_weights, grad_biases = model.gradients(X, Y, "cce", n_threads=1,
                                                       sample_weight=weights)
    return value, np.concatenate([part.ravel() for pair in zip(grad_weights, grad_biases)
                                  for part in pair])


@needs_kernels
@pytest.mark.parametrize("own_faster", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_repeated_gradients_pass_measures_its_bucket_and_equals_gradients(
        monkeypatch, fresh, dtype, own_faster):
    """MLP._gradient_pass(repeated=True), the scikit-learn estimators' L-BFGS objective:
    its products (forward, delta, gradient) are measured once at the chunk's bucket and
    kept for every later pass of that bucket, where a one-off gradients call measures
    nothing and stays on BLAS; each run reads the parameters as they are then and
    equals gradients() to rounding, with and without sample weights."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    measured = counted_measurements(monkeypatch, answer=own_faster)
    model, X, _ = model_and_rows(dtype, 300)
    labels = np.arange(300) % SIZES[-1]
    weights = np.random.default_rng(1).uniform(0.0, 2.0, 300)
    flat_gradients(model, X, labels)
    assert measured == []
    for sample_weight in (None, weights):
        run = model._gradient_pass(X, labels, "cce", n_threads=1,
                                   sample_weight=sample_weight, repeated=True)
        grads = np.empty(model.n_params, dtype=dtype)
        for step in range(3):
            value = run(grads)
            expected_value, expected = flat_gradients(model, X, labels, sample_weight)
            np.testing.assert_allclose(value, expected_value, rtol=TOLERANCE[dtype])
            np.testing.assert_allclose(grads, expected, rtol=50 * TOLERANCE[dtype],
                                       atol=TOLERANCE[dtype])
            model.set_parameter_vector(model.parameter_vector() - 0.1 * grads)
    # at 512 rows: every layer's forward and gradient, and the delta of the layers after
    # the first; measured once for both calls
    expected_products = [("nn", 512, n_out, n_in) for n_in, n_out in zip(SIZES, SIZES[1:])] \
        + [("tn", n_in, n_out, 512) for n_in, n_out in zip(SIZES, SIZES[1:])] \
        + [("nt", 512, n_in, n_out) for n_in, n_out in zip(SIZES[1:-1], SIZES[2:])]
    assert sorted(measured) == sorted(expected_products)
    code = _core.KERNEL_ISAS[ISAS[-1]] if own_faster else 0
    plan, _, _ = model._pass_plan(300, backward=True, n_threads=1, repeated=True)
    assert plan.product_isas[dtype] == [(code, 0, code)] + [(code, code, code)] * 2
    model._gradient_pass(X[:257], labels[:257], "cce", n_threads=1, repeated=True)
    assert len(measured) == len(expected_products)    # the same bucket: nothing new


@pytest.mark.parametrize("multiply_adds, expected", [
    (100, 1.05),                    # the whole pass: the margin itself
    (50, 1.05),                     # half of it, a product of two: 1 + 0.05 / 2 / 0.5
    (10, 1.0 + 0.05 * 100 / 20),    # a tenth: half the pass's margin over its tenth
    (1, 1.0 + 0.05 * 100 / 2),
])
def test_a_small_product_of_a_pass_has_a_wider_margin(multiply_adds, expected):
    """A pass's product takes the own kernel unless BLAS saves more than its part of the
    margin on the whole pass (or the margin on the product, whichever is larger): a plan
    with a product on BLAS cannot share a lone chunk among threads."""
    assert _products.product_margin(1.05, multiply_adds, 100, 2) == pytest.approx(expected)
    assert _products.product_margin(1.0, multiply_adds, 100, 2) == 1.0    # a fit's plans


@needs_kernels
def test_w1s_output_product_keeps_the_own_kernel_unless_blas_saves_much(monkeypatch, fresh):
    """W1's 10-column output product at 128 rows is 1.3% of the pass: measured with a
    margin of about 3.0, so OpenBLAS's small kernel beating the own one by 11% (3.2 against
    3.5 us, SkylakeX) no longer puts the plan on BLAS, and the lone chunk can be shared."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    margins = {}

    def measure(kind, m, n, k, dtype, isa, chunk_rows=0, chunk_columns=0, margin=1.0,
                wait=True, checked=False):
        margins[(kind, m, n, k)] = margin
        own, blas = (3.5, 3.2) if n == 10 else (100.0, 100.0)
        return own < margin * blas
    monkeypatch.setattr(_products, "_measure", measure)
    model = fastbp.MLP([784, 128, 10], ["relu", "softmax"])
    plan, calls_blas, _ = model._kept_plan(128)
    assert not calls_blas
    assert margins[("nn", 128, 10, 128)] == pytest.approx(
        1 + 0.05 * (128 * 128 * 784 + 128 * 10 * 128) / (2 * 128 * 10 * 128))
    assert margins[("nn", 128, 128, 784)] == pytest.approx(1.05)
