"""Serving: predict on a few rows (issue 15).

The few-row product kernels (csrc/few_rows.h) against a float64 product on every edge of
their blocking; predict's fast path (_core.Predictor) against the general path and the
BLAS path; predict(X, out=...); concurrent predictions on one model; bad input refused.
"""
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _core, _products, model as model_module
from reference import forward

HANG_SECONDS = 300
LANES = {np.float32: 16, np.float64: 8}     # elements in the kernels' 64-byte vectors


def product_bound(X, W, dtype):
    """|rounding error| of a sum of n_in products in dtype, elementwise: n_in eps |X||W|."""
    magnitude = np.abs(X.astype(np.float64)) @ np.abs(W.astype(np.float64))
    return 1.01 * W.shape[0] * np.finfo(dtype).eps * magnitude + np.finfo(dtype).tiny


def widths(lanes):
    """Output widths on each edge of the kernels' column blocks: under, at and over one
    vector, two, four, eight, and odd sizes between."""
    return sorted({1, 2, lanes - 1, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes,
                   2 * lanes + 3, 3 * lanes, 4 * lanes + 1, 6 * lanes + 5, 8 * lanes,
                   8 * lanes + 1, 9 * lanes + lanes - 1, 17 * lanes + 3})


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_product_matches_a_float64_product_on_every_edge(dtype, narrow):
    """narrow: the instance with 32-byte vectors (CPUs without AVX-512), whatever this CPU
    has; widths cover the edges of both vector sizes."""
    rng = np.random.default_rng(0)
    lanes = LANES[dtype] // 2 if narrow else LANES[dtype]
    for n_in in (1, 3, 255, 256, 257, 513):
        for n_out in widths(lanes):
            W = rng.standard_normal((n_in, n_out)).astype(dtype)
            for m in list(range(1, 17)) + [23, 64]:
                X = rng.standard_normal((m, n_in)).astype(dtype)
                out = np.full((m, n_out), np.nan, dtype=dtype)
                _core.few_rows_product(X, W, out, narrow)
                exact = X.astype(np.float64) @ W.astype(np.float64)
                error = np.abs(out - exact)
                assert (error <= product_bound(X, W, dtype)).all(), (n_in, n_out, m)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_product_gives_each_row_the_same_bits_alone_or_in_a_batch(dtype, narrow):
    """One sum over the inputs in order per element, whichever block computed it."""
    rng = np.random.default_rng(1)
    for n_out in (1, 10, LANES[dtype] * 9 + 5):
        W = rng.standard_normal((97, n_out)).astype(dtype)
        X = rng.standard_normal((19, 97)).astype(dtype)
        batch = np.empty((19, n_out), dtype=dtype)
        _core.few_rows_product(X, W, batch, narrow)
        for r in range(19):
            alone = np.empty((1, n_out), dtype=dtype)
            _core.few_rows_product(X[r:r + 1], W, alone, narrow)
            assert np.array_equal(alone[0], batch[r]), (n_out, r)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_gives_each_row_the_same_bits_alone_or_in_a_batch(dtype, monkeypatch):
    """Softmax rows of up to 32 columns go 16 at a time through a transposed block
    (csrc/kernels_impl.h), the other rows one by one: a row's outputs are the same
    either way, and equal the float64 softmax to rounding. The products are the few-row
    kernels' (FASTBP_FEW_ROWS=1), whose bits do not depend on the batch either."""
    rng = np.random.default_rng(4)
    for n_out in (1, 2, 10, 16, 17, 32, 33, 40):
        model = make([6, n_out], ["softmax"], dtype, monkeypatch, "1")
        model.biases = [rng.standard_normal(n_out).astype(dtype)]
        X = (rng.standard_normal((40, 6)) * 4).astype(dtype)
        X[3] = 0
        X[5, 0] = 60    # one output far above the others: exps that underflow
        for rows in (1, 15, 16, 17, 31, 32, 33, 40):
            batch = model.predict(X[:rows])
            for r in range(rows):
                assert np.array_equal(model.predict(X[r:r + 1])[0], batch[r]), \
                    (n_out, rows, r)
            expected = forward(model.weights, model.biases, ["softmax"], X[:rows])[-1]
            np.testing.assert_allclose(batch, expected, rtol=1e-5 if dtype == "float32"
                                       else 1e-13, atol=1e-7 if dtype == "float32" else 0)


def test_few_rows_product_checks_its_sizes():
    X, W = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="few_rows_product"):
        _core.few_rows_product(X, np.ones((4, 4), np.float32), np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="few_rows_product"):
        _core.few_rows_product(X, W, np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="at least one row"):
        _core.few_rows_product(X[:0], W, np.empty((0, 4), np.float32))


NETWORKS = [([784, 128, 10], ["relu", "softmax"]),
            ([20, 64, 64, 1], ["relu", "relu", "identity"]),
            ([7, 33, 5], ["gelu", "sigmoid"]),
            ([3, 17, 1], ["tanh", "identity"])]


def run_at_once(serve, n_threads):
    """serve(i) for i in range(n_threads), each on a thread of its own, all at once; fails
    if one of them hangs."""
    threads = [threading.Thread(target=serve, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a predicting thread hangs"


def make(sizes, activations, dtype, monkeypatch, kernels=None):
    """A model built under FASTBP_FEW_ROWS=kernels ("0", "1" or None: the measured rule)."""
    if kernels is None:
        monkeypatch.delenv(model_module.FEW_ROWS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, kernels)
    return fastbp.MLP(sizes, activations, dtype=dtype, seed=3)


@pytest.mark.parametrize("kernels", ["0", "1", None])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes,activations", NETWORKS)
def test_predict_matches_the_float64_forward_pass_on_both_paths(sizes, activations, dtype,
                                                                 kernels, monkeypatch):
    model = make(sizes, activations, dtype, monkeypatch, kernels)
    rng = np.random.default_rng(2)
    tolerance = 2e-4 if dtype == "float32" else 1e-11
    for rows in (1, 2, 5, 8, 16, 17, 64, 65):
        X = rng.standard_normal((rows, sizes[0])).astype(dtype)
        expected = forward(model.weights, model.biases, activations, X)[-1]
        np.testing.assert_allclose(model.predict(X), expected, rtol=tolerance,
                                   atol=tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_few_row_kernels_off_give_the_blas_results_bit_for_bit(dtype, monkeypatch):
    """FASTBP_FEW_ROWS=0 (and FASTBP_KERNELS=blas: no own product kernels either): every
    product by BLAS, exactly as before the kernels existed."""
    monkeypatch.setenv("FASTBP_KERNELS", "blas")
    model = make([784, 128, 10], ["relu", "softmax"], dtype, monkeypatch, "0")
    X = np.random.default_rng(4).standard_normal((8, 784)).astype(dtype)
    plan = _core.Plan(model.layer_sizes, [_core.ACTIVATION_CODES[a] for a in model.activations],
                      8)
    blas = np.empty((8, 10), dtype=dtype)
    _core.predict(plan, model._params, np.empty(plan.work_size, dtype=dtype), X, blas)
    assert np.array_equal(model.predict(X), blas)
    monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, "0")
    assert np.array_equal(model.predict(X.tolist()), blas)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_path_and_general_path_give_the_same_bits(dtype, monkeypatch):
    """An input the fast path takes (C-contiguous, model's dtype) and the same rows it
    hands on (a list, another dtype, a Fortran-ordered copy) predict the same bits."""
    model = make([20, 64, 64, 1], ["relu", "relu", "identity"], dtype, monkeypatch)
    X = np.random.default_rng(5).standard_normal((8, 20)).astype(dtype)
    fast = model.predict(X)
    assert np.array_equal(model.predict(X.tolist()), fast)
    assert np.array_equal(model.predict(np.asfortranarray(X)), fast)
    assert np.array_equal(model.predict(X, n_threads=1), fast)
    for r in range(8):   # each row alone: the same bits as in the batch
        assert np.array_equal(model.predict(X[r:r + 1]), fast[r:r + 1])


def test_fast_path_never_touches_blas_threads(monkeypatch):
    """A few rows run no BLAS product, so nothing reads or sets BLAS's thread count."""
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch)

    def refuse(n_threads):
        raise AssertionError("blas_threads was entered")
    monkeypatch.setattr(model_module, "blas_threads", refuse)
    X = np.random.default_rng(6).standard_normal((64, 784)).astype(np.float32)
    for rows in (1, 8, 64):
        model.predict(X[:rows])
    monkeypatch.setenv("FASTBP_KERNELS", "blas")
    with pytest.raises(AssertionError, match="blas_threads"):
        model.predict(np.vstack([X, X]))     # 128 rows by BLAS's products: under BLAS


@pytest.mark.parametrize("found", [1, 3])
def test_a_pass_sets_blas_threads_only_where_they_differ(monkeypatch, found):
    """A one-thread pass past the fast path (here all BLAS: FASTBP_KERNELS=blas) leaves
    a BLAS already on one thread alone: no set at the start or the end; one on 3 threads
    is set to 1 and put back. The default pass does the same with its measured count
    (one thread here, or two where this machine's timing of the pass says so: the debug
    build's passes are slow enough to be worth two)."""
    from fastbp import _threads
    calls = []
    monkeypatch.setenv("FASTBP_KERNELS", "blas")
    model = make([20, 64, 64, 1], ["relu", "relu", "identity"], "float32", monkeypatch)
    X = np.ones((200, 20), np.float32)
    default = model._pass_threads(200)   # measured first (it sets counts to time)
    monkeypatch.setattr(_threads, "_setters", [(lambda: found, calls.append)])
    for n_threads in (1, 1, None):
        model.predict(X, n_threads=n_threads)
    assert calls == ([] if found == 1 else [1, found] * 2) \
        + ([] if default == found else [default, found])


def own_forward(n_layers, layers):
    """Plan product_isas with the forward product of the given weight layers (1-based)
    in the own AVX2 kernels, for both dtypes; every other product on BLAS."""
    isas = [0] * (6 * n_layers)
    for dtype in (0, 1):
        for layer in layers:
            isas[(dtype * n_layers + layer - 1) * 3] = _core.KERNEL_ISAS["avx2"]
    return isas


@pytest.mark.parametrize("in_double", [False, True])
def test_forward_calls_blas_follows_the_forward_products_rule(in_double):
    """Plan.forward_calls_blas: whether a forward pass over n rows, in chunks of the
    plan's capacity (the last one shorter), gives BLAS any product: not a sparse X's first
    layer, not a product of few enough rows for the few-row kernels (forced here), not
    one in the own kernels (or_own: BLAS or the own kernels)."""
    relu, identity = _core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["identity"]

    def calls(capacity, rows, layer_sizes=(6, 5, 4), activations=(relu, identity),
              or_own=False, **options):
        plan = _core.Plan(list(layer_sizes), list(activations), capacity, **options)
        return [plan.forward_calls_blas(n, in_double, or_own) for n in rows]
    assert calls(4, range(1, 10)) == [True] * 9                        # BLAS throughout
    # few-row kernels up to 3 rows: chunks of 4 (and a last one of 1 to 3) from 5 rows
    assert calls(4, range(1, 10), few_rows=3, few_rows_always=True) == \
        [False, False, False, True, True, True, True, True, True]
    # chunks of 2 rows: every chunk, the last one of 1 included, in the few-row kernels
    assert calls(2, range(1, 8), few_rows=2, few_rows_always=True) == [False] * 7
    # a sparse X: its first layer is the sparse product, the second BLAS's (or the own)
    assert calls(8, [1, 20], sparse_input=True) == [True, True]
    if _core.best_kernel_isa() is not None:     # a CPU with the own kernels' AVX2
        # the own kernels take the second layer's product only: the first's is BLAS's
        assert calls(8, [1, 9], product_isas=own_forward(2, [2])) == [True, True]
        assert calls(8, [1, 9], product_isas=own_forward(2, [1, 2])) == [False, False]
        assert calls(8, [1, 20], sparse_input=True,
                     product_isas=own_forward(2, [2])) == [False, False]
        # or_own: the own kernels count as leaving the few-row kernels too
        assert calls(8, [1, 9], product_isas=own_forward(2, [1, 2]),
                     or_own=True) == [True, True]
        assert calls(4, [3, 9], few_rows=4, few_rows_always=True,
                     product_isas=own_forward(2, [1, 2]), or_own=True) == [False, False]
    assert calls(8, [1, 20], layer_sizes=(6, 5), activations=(relu,),
                 sparse_input=True) == [False, False]
    with pytest.raises(ValueError, match="n_rows"):
        calls(4, [0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_forward_pass_without_blas_products_never_touches_blas_threads(monkeypatch,
                                                                         dtype):
    """predict and evaluate of a sparse X (the general path) keep their plan with the
    model, and set BLAS's thread count only where the pass gives BLAS a product; the bits
    are those of a plan made for the call (the pass as it was)."""
    import scipy.sparse as sp
    rng = np.random.default_rng(8)
    dense = rng.standard_normal((70, 300)) * (rng.random((70, 300)) < 0.05)
    Y = np.eye(6)[rng.integers(0, 6, 70)].astype(dtype)

    def refuse(n_threads):
        raise AssertionError("blas_threads was entered")

    for few_rows, kernels, sizes, entered, counts in [
            ("1", "auto", [300, 16, 6], False, (1, 7, 64)),   # the few-row kernels
            ("0", "blas", [300, 16, 6], True, (1, 7, 70)),    # the second layer on BLAS
            ("0", "blas", [300, 6], False, (1, 7, 70)),       # the sparse product alone
            ("0", "own", [300, 16, 6], False, (1, 7, 70))]:   # the own kernels
        if kernels != "blas" and _products.kernel_isa() is None:
            continue    # (no own or few-row kernels at this level: every product is BLAS's)
        monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, few_rows)
        monkeypatch.setenv("FASTBP_KERNELS", kernels)
        model = fastbp.MLP(sizes, ["relu"] * (len(sizes) - 2) + ["softmax"], dtype=dtype,
                           seed=3)
        expected = {}
        for rows in counts:
            X = sp.csr_matrix(dense[:rows].astype(dtype))
            plan, work, n_threads = model._pass_plan(rows, n_threads=1, sparse=True)
            expected[rows] = np.empty((rows, sizes[-1]), dtype=dtype)
            with model_module.blas_threads(n_threads):
                _core.predict(plan, model._params, work, np.empty((0, 0), dtype),
                              expected[rows], model._inputs(X))
        with monkeypatch.context() as patched:
            patched.setattr(model_module, "blas_threads", refuse)
            for rows in counts:
                X = sp.csr_matrix(dense[:rows].astype(dtype))
                for call in (lambda: model.predict(X, n_threads=1),
                             lambda: model.evaluate(X, Y[:rows], "cce", n_threads=1)):
                    if entered:
                        with pytest.raises(AssertionError, match="blas_threads"):
                            call()
                    else:
                        call()
                if not entered:
                    np.testing.assert_array_equal(model.predict(X, n_threads=1),
                                                  expected[rows])
        for rows in counts:          # with BLAS's count set where it was needed
            X = sp.csr_matrix(dense[:rows].astype(dtype))
            np.testing.assert_array_equal(model.predict(X, n_threads=1), expected[rows])
        assert len(model._kept_pass_plans) == 3     # chunks of each row count, kept


def test_a_default_pass_in_the_few_row_kernels_takes_no_thread_choice(monkeypatch):
    """A sparse X's pass whose other products all run in the few-row kernels runs the
    same kernels on any thread count: the default takes no thread choice (the bits of
    n_threads=1). One with a product outside them does."""
    import scipy.sparse as sp
    X = sp.random(40, 300, density=0.05, format="csr", dtype=np.float32, random_state=2)
    for few_rows, chooses in (("1", False), ("0", True)):
        monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, few_rows)
        model = fastbp.MLP([300, 16, 6], ["relu", "softmax"], dtype="float32", seed=3)
        asked = []
        real = model._pass_threads
        monkeypatch.setattr(model, "_pass_threads",
                            lambda *arguments: asked.append(arguments) or real(*arguments))
        for rows in (1, 8, 40):
            np.testing.assert_array_equal(model.predict(X[:rows]),
                                          model.predict(X[:rows], n_threads=1))
        assert bool(asked) == chooses, few_rows


def test_predict_reads_the_live_parameters_every_call(monkeypatch):
    model = make([5, 6, 2], ["relu", "identity"], "float32", monkeypatch)
    X = np.ones((1, 5), np.float32)
    before = model.predict(X)
    model.biases = model.biases[:-1] + [model.biases[-1] + 1]   # the output layer's
    assert np.allclose(model.predict(X), before + 1)
    model.set_parameter_vector(np.zeros(model.n_params))
    assert np.array_equal(model.predict(X), np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_writes_into_out(dtype, monkeypatch):
    model = make([20, 64, 64, 1], ["relu", "relu", "identity"], dtype, monkeypatch)
    rng = np.random.default_rng(7)
    for rows in (1, 8, 64, 300):     # fast path and general path
        X = rng.standard_normal((rows, 20)).astype(dtype)
        out = np.full((rows, 1), np.nan, dtype=dtype)
        assert model.predict(X, out=out) is out
        assert np.array_equal(out, model.predict(X))
        other = np.empty((rows, 1), dtype=dtype)
        assert model.predict(X.tolist(), out=other) is other
        assert np.array_equal(other, out)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_any_dense_x_predicts_the_bits_of_the_array_it_makes(dtype, monkeypatch):
    """A list, another dtype or a Fortran-ordered X is converted first and then takes the
    path the converted array takes, so the outputs are the same bits: also where the
    general path would run BLAS's threads (forced: the measured count for a chunk says 2),
    whose products round differently from the kept pass's own kernels."""
    model = make([20, 64, 64, 1], ["relu", "relu", "identity"], dtype, monkeypatch)
    monkeypatch.setattr(fastbp.MLP, "_pass_threads", lambda self, rows, *args, **kwargs: 2)
    rng = np.random.default_rng(11)
    for rows in (1, 8, 64, 300, 2500):
        X = rng.standard_normal((rows, 20)).astype(dtype)
        expected = model.predict(X)
        other = np.float64 if dtype == "float32" else np.float32
        same = X if dtype == "float32" else X.astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(model.predict(X.tolist()), expected)
        np.testing.assert_array_equal(model.predict(np.asfortranarray(X)), expected)
        np.testing.assert_array_equal(model.predict(same.astype(other)), model.predict(same))


def test_predict_out_is_checked(monkeypatch):
    model = make([4, 8, 3], ["relu", "softmax"], "float32", monkeypatch)
    X = np.ones((2, 4), np.float32)
    cases = [
        (np.empty((3, 3), np.float32), ValueError, "shape"),
        (np.empty((2, 4), np.float32), ValueError, "shape"),
        (np.empty(6, np.float32), ValueError, "shape"),
        (np.empty((2, 3), np.float64), TypeError, "dtype float32"),
        (np.empty((2, 3), ">f4"), TypeError, "dtype float32"),
        (np.empty((3, 2), np.float32).T, ValueError, "C-contiguous"),
        ([[0.0] * 3] * 2, TypeError, "NumPy array"),
    ]
    read_only = np.empty((2, 3), np.float32)
    read_only.flags.writeable = False
    cases.append((read_only, ValueError, "writable"))
    buffer = np.zeros(2 * 3 * 4 + 1, np.uint8)
    unaligned = buffer[1:].view(np.float32).reshape(2, 3)
    cases.append((unaligned, ValueError, "aligned"))
    for out, error, words in cases:
        with pytest.raises(error, match=words):
            model.predict(X, out=out)
    shared = np.zeros(8, np.float32)               # out overlapping X
    with pytest.raises(ValueError, match="overlap"):
        model.predict(shared.reshape(2, 4), out=shared[2:].reshape(2, 3))
    params = model._params                          # out overlapping the parameters
    before = model.parameter_vector()
    with pytest.raises(ValueError, match="overlap"):
        model.predict(X, out=params[:6].reshape(2, 3))
    assert np.array_equal(model.parameter_vector(), before)


def test_out_overlapping_x_is_refused_on_the_fast_path(monkeypatch):
    model = make([3, 3], ["identity"], "float32", monkeypatch)
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(ValueError, match="overlap"):
        model.predict(X, out=X)
    assert np.array_equal(X, np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bad_input_is_refused_on_the_fast_path_as_before(dtype, monkeypatch):
    model = make([4, 8, 3], ["relu", "softmax"], dtype, monkeypatch)
    X = np.ones((2, 4), dtype)
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            model.predict(Y)
        with pytest.raises(ValueError, match="NaN or infinity"):
            model.predict(Y, out=np.empty((2, 3), dtype))
    with pytest.raises(ValueError, match="2-D"):
        model.predict(X[0])
    with pytest.raises(ValueError, match="columns"):
        model.predict(np.ones((2, 5), dtype))
    with pytest.raises(ValueError, match="no rows"):
        model.predict(np.ones((0, 4), dtype))
    with pytest.raises(ValueError, match="n_threads"):
        model.predict(X, n_threads=0)
    huge = make([2, 1], ["identity"], dtype, monkeypatch)
    huge.weights = [np.full((2, 1), np.finfo(dtype).max / 2)]
    with pytest.raises(ValueError, match="overflow"):
        huge.predict(np.full((1, 2), 4.0, dtype))


@pytest.fixture
def gil_rule(monkeypatch):
    """gil_rule(rule): models made after it pass their GIL under FASTBP_GIL=rule ("hold",
    "release"; None: chosen on the calls)."""
    def set_rule(rule):
        if rule is None:
            monkeypatch.delenv(_core.GIL_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(_core.GIL_VARIABLE, rule)
    set_rule(None)
    return set_rule


@pytest.mark.parametrize("rule", ["release", "hold", None])
@pytest.mark.parametrize("n_threads", [8, 20])   # 20: more than the pool keeps (16)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes,activations", NETWORKS[:2])
def test_eight_threads_predicting_one_row_each_get_exact_results(sizes, activations, dtype,
                                                                 n_threads, rule, gil_rule,
                                                                 monkeypatch):
    """Under each rule for the GIL, and while it is chosen (phases of 1 ms here)."""
    gil_rule(rule)
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 0.001)
    model = make(sizes, activations, dtype, monkeypatch)
    X = np.random.default_rng(8).standard_normal((n_threads, sizes[0])).astype(dtype)
    expected = [model.predict(X[i:i + 1]) for i in range(n_threads)]
    start = threading.Barrier(n_threads)
    failures = []

    def serve(i):
        try:
            out = np.empty((1, sizes[-1]), dtype)
            start.wait()
            for _ in range(300):
                if not np.array_equal(model.predict(X[i:i + 1]), expected[i]):
                    failures.append(f"thread {i}: predict differs")
                    return
                model.predict(X[i:i + 1], out=out)
                if not np.array_equal(out, expected[i]):
                    failures.append(f"thread {i}: out differs")
                    return
        except Exception as error:       # reported below, with the thread's number
            failures.append(f"thread {i}: {error!r}")

    run_at_once(serve, n_threads)
    assert failures == []
    if rule is None:
        assert sum(model._predictor.gil_choice(1).phases_begun) >= 2


def drive(choice, slower, calls=None, sleep=0.001):
    """Calls choice.releases() (each followed by passed(1 us)) until it has chosen, or
    `calls` times; a call that releases (slower=True) or keeps the GIL (False) sleeps
    `sleep` seconds, as if that rule made the calls slower. Returns the rules taken."""
    taken = []
    while calls is None and choice.chosen is None or calls is not None and len(taken) < calls:
        release = choice.releases()
        taken.append(release)
        if release == slower:
            time.sleep(sleep)
        choice.passed(1e-6)
        assert len(taken) < 1_000_000, "no choice made"
    return taken


@pytest.fixture
def quick_phases(monkeypatch):
    """GilChoice phases of 2 ms (made after this), remeasured only when a test says."""
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 0.002)
    monkeypatch.setattr(fastbp._threads, "REMEASURE_CALLS", 10**9)


@pytest.mark.parametrize("slower", [True, False])
def test_the_gil_rule_is_chosen_by_the_calls_a_second_of_each(slower, quick_phases):
    """Phases alternately releasing the GIL (first) and keeping it, MEASURE_ROUNDS each;
    the rule whose phases made more calls a second is kept (keeping it only where
    faster by MEASURE_MARGIN), and then taken by every call."""
    choice = _core.GilChoice()
    assert choice.releases() and choice.phases_begun == (0, 0)   # no pass timed yet
    choice.passed(1e-6)
    taken = drive(choice, slower)
    rounds = fastbp._threads.MEASURE_ROUNDS
    assert choice.phases_begun == (rounds, rounds)
    assert taken[0] is True and False in taken              # a phase of each, releasing first
    assert choice.chosen is (not slower) and choice.alone
    holding, releasing = choice.rates
    assert (holding > releasing) == slower and min(holding, releasing) > 0
    assert set(drive(choice, slower, calls=50)) == {not slower}
    assert choice.phases_begun == (rounds, rounds)          # nothing measured since


def test_a_tie_releases_the_gil_unless_the_process_has_one_python_thread(quick_phases,
                                                                         monkeypatch):
    """Keeping the GIL must be faster by MEASURE_MARGIN (here: never): other threads may
    wait for it; but where the calls came from one thread and no other Python thread
    exists, keeping it was faster at all is enough (a release saves nobody anything)."""
    monkeypatch.setattr(fastbp._threads, "MEASURE_MARGIN", 1e9)
    for python_threads, releases in [(1, False), (2, True)]:
        monkeypatch.setattr(threading, "active_count", lambda: python_threads)
        choice = _core.GilChoice()
        choice.passed(1e-6)
        drive(choice, True)                 # releasing is the slower rule
        assert choice.chosen is releases and choice.alone, python_threads
        holding, releasing = choice.rates
        assert holding > releasing


def test_a_pass_as_long_as_the_switch_interval_releases_the_gil_unmeasured():
    import sys
    choice = _core.GilChoice()
    choice.passed(sys.getswitchinterval())
    assert all(choice.releases() for _ in range(20))
    assert choice.phases_begun == (0, 0) and choice.chosen is None
    choice.passed(1e-6)
    choice.releases()
    assert choice.phases_begun == (0, 1)


def test_the_gil_rule_is_measured_again_after_its_calls_and_seconds(quick_phases,
                                                                    monkeypatch):
    """After REMEASURE_CALLS calls and REMEASURE_SECONDS (both), the phases start again
    (past the calls, the clock is read on every 64th call only)."""
    monkeypatch.setattr(fastbp._threads, "REMEASURE_CALLS", 5)
    monkeypatch.setattr(fastbp._threads, "REMEASURE_SECONDS", 0.05)
    choice = _core.GilChoice()
    choice.passed(1e-6)
    drive(choice, True)
    drive(choice, True, calls=20)                           # past the calls, not the time
    assert choice.chosen is False
    time.sleep(0.05)
    calls = 0
    while choice.chosen is not None and calls < 64:
        choice.releases()
        calls += 1
    assert choice.chosen is None and choice.phases_begun == (0, 1) and calls >= 1


def test_a_gil_rule_chosen_on_one_thread_is_measured_again_when_another_calls(
        quick_phases):
    """What one thread's calls found says nothing of threads calling at once; a choice
    made on the calls of several threads is kept when they alternate."""
    from concurrent.futures import ThreadPoolExecutor
    choice = _core.GilChoice()
    choice.passed(1e-6)
    drive(choice, False)
    assert choice.chosen is True and choice.alone
    with ThreadPoolExecutor(1) as other:
        other.submit(choice.releases).result()
        assert choice.chosen is None and choice.phases_begun == (0, 1)
        while choice.chosen is None:            # the calls of both threads, in turn
            for call in (choice.releases, lambda: other.submit(choice.releases).result()):
                call()
                choice.passed(1e-6)
        assert not choice.alone
        chosen, phases = choice.chosen, choice.phases_begun
        for _ in range(5):
            other.submit(choice.releases).result()
            choice.releases()
        assert choice.chosen is chosen and choice.phases_begun == phases


def test_a_pinned_gil_rule_is_taken_by_every_call(gil_rule, monkeypatch):
    """FASTBP_GIL=hold or release, read when the model is made (any other value is
    refused there, naming the variable); the same bits either way."""
    import sys
    for rule in ("hold", "release"):
        choice = _core.GilChoice(rule)
        choice.passed(sys.getswitchinterval() if rule == "hold" else 1e-6)
        assert {choice.releases() for _ in range(10)} == {rule == "release"}
        assert choice.phases_begun == (0, 0)
    with pytest.raises(ValueError, match="rule"):
        _core.GilChoice("sometimes")
    outputs = {}
    for rule in ("hold", "release", "measure"):
        gil_rule(rule)
        model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch)
        X = np.ones((1, 784), np.float32)
        outputs[rule] = [model.predict(X) for _ in range(3)]
        assert model._predictor.gil_choice(1).rule == rule
    gil_rule("sometimes")
    with pytest.raises(ValueError, match="FASTBP_GIL='sometimes'"):
        make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch)
    gil_rule(None)
    assert all(np.array_equal(a, b) for a, b in zip(outputs["hold"], outputs["release"]))
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch)
    assert model._predictor.gil_choice(5) is None          # none made before its calls
    with pytest.raises(ValueError, match="n_rows"):
        model._predictor.gil_choice(65)
    with pytest.raises(ValueError, match="n_rows"):
        model._predictor.gil_choice(0)


def waits_behind_a_python_thread(call):
    """Run `call` while another thread runs Python 2.5 x `waited` seconds a turn, until one
    call waits over `waited`: the spinner, woken by a release of the GIL, took it while a
    pass ran (it does not always wake within the pass). The caller's model releases it
    (FASTBP_GIL). Returns `waited`: 20 ms, or 10 times a call alone where that is longer
    (a pass of the tests below takes tens of microseconds, about 7 ms in the checked -O0
    build), so that a pass's own time stays far below it."""
    import sys
    alone = []
    for _ in range(5):
        started = time.perf_counter()
        call()
        alone.append(time.perf_counter() - started)
    waited = max(0.02, 10 * min(alone))
    running, stop = threading.Event(), threading.Event()

    def spin():                                 # Python code: it wants the GIL throughout
        running.set()
        while not stop.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(2.5 * waited)         # the spinner keeps the GIL this long a turn
    spinner = threading.Thread(target=spin)
    try:
        spinner.start()
        running.wait()
        for _ in range(200):
            started = time.perf_counter()
            call()
            if time.perf_counter() - started > waited:
                return waited
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)
    raise AssertionError("the spinner never took the GIL during a pass: nothing tested")


def test_a_released_pass_is_timed_without_the_wait_to_take_the_gil_back(gil_rule,
                                                                         monkeypatch):
    """A pass that released the GIL records its own time, not its wait for the GIL after
    it: with another thread running Python meanwhile that wait lasts the interpreter's
    switch interval, and counted in, it would make the pass look as long as the switch
    interval, which releases unmeasured for good."""
    gil_rule("release")
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch)
    rows = np.ones((64, 784), np.float32)      # a pass of tens of microseconds
    model.predict(rows)                         # first touch
    waited = waits_behind_a_python_thread(lambda: model.predict(rows))
    assert model._predictor.gil_choice(64).pass_seconds < waited / 2


def sparse_rows(n_rows, n_columns=5_000, per_row=27, seed=3):
    """CSR rows of per_row stored values each (columns at random, float32)."""
    import scipy.sparse
    rng = np.random.default_rng(seed)
    columns = np.sort(np.stack([rng.choice(n_columns, per_row, replace=False)
                                for _ in range(n_rows)]), axis=1).ravel()
    return scipy.sparse.csr_array(
        (rng.standard_normal(n_rows * per_row).astype(np.float32), columns,
         np.arange(0, n_rows * per_row + 1, per_row)), shape=(n_rows, n_columns))


@pytest.mark.parametrize("rule", ["hold", "release", None])
def test_the_general_path_passes_the_gil_as_its_kind_of_call_chooses(rule, gil_rule,
                                                                      quick_phases,
                                                                      monkeypatch):
    """The general path (sparse X here, and dense X past the fast path) keeps a GilChoice
    per kind of call: sparse or not, and rows to a power of two; pinned, every call takes
    the rule; measured, the first call (no pass timed) releases and then the phases
    alternate. The same bits either way."""
    gil_rule(rule)
    model = fastbp.MLP([5_000, 64, 10], ["relu", "softmax"], dtype="float32", seed=0)
    released = []
    original = _core.predict

    def recording(*args):
        released.append(args[-1])
        return original(*args)

    monkeypatch.setattr(_core, "predict", recording)
    one, many = sparse_rows(1), sparse_rows(50)
    expected = model.predict(one)
    for _ in range(30):
        assert np.array_equal(model.predict(one), expected)
    while rule is None and False not in released[1:] and len(released) < 100_000:
        assert np.array_equal(model.predict(one), expected)   # to the first phase's end
    calls = len(released)
    model.predict(many)
    model.predict(many[:40])
    kinds = model._gil_choices
    assert set(kinds) == {(True, 1), (True, 6)}             # 50 and 40 rows: one kind
    if rule is None:
        assert released[0] is True and set(released[1:calls]) == {True, False}
        assert kinds[True, 1].phases_begun[1] >= 1 and kinds[True, 6].phases_begun == (0, 1)
    else:
        assert set(released) == {rule == "release"}
    blas = make([5_000, 64, 10], ["relu", "softmax"], "float32", monkeypatch, "0")
    assert blas._predictor is None                          # dense X: the general path
    blas.predict(np.ones((3, 5_000), np.float32))
    assert released[-1] is (rule != "hold") and set(blas._gil_choices) == {(False, 2)}


def test_a_released_sparse_pass_is_timed_without_the_wait_to_take_the_gil_back(gil_rule):
    """As the fast path's: the general path's pass time is its own, measured before it
    takes the GIL back, not a wait behind a thread running Python."""
    gil_rule("release")
    model = fastbp.MLP([5_000, 64, 10], ["relu", "softmax"], dtype="float32", seed=0)
    rows = sparse_rows(400)                      # a pass of tens of microseconds
    model.predict(rows)
    waited = waits_behind_a_python_thread(lambda: model.predict(rows))
    assert model._gil_choice(True, 400).pass_seconds < waited / 2


@pytest.fixture
def share_min_seconds():
    """Sets _core.predictor_share_min_seconds for a test (read when a row count's choice
    of threads is made), restored after it."""
    before = _core.predictor_share_min_seconds()
    yield _core.predictor_share_min_seconds
    _core.predictor_share_min_seconds(before)


@pytest.fixture
def measured_at_once(monkeypatch):
    """KeptPassThreads' phases one call long, two threads allowed, nothing pinned."""
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 0.0)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: 2)


def test_the_default_count_of_a_few_row_call_is_chosen_on_its_calls(
        monkeypatch, share_min_seconds, measured_at_once):
    """Per row count from 8 rows: a first phase on one thread, then phases on the
    allowed count (the pass shared: its calls are timed there) and on one, then the
    faster is kept; every call gives the one-thread bits. Calls under 8 rows never ask."""
    share_min_seconds(0.0)
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch, "1")
    rng = np.random.default_rng(7)
    rounds = fastbp._threads.MEASURE_ROUNDS
    for rows in (8, 16, 64):
        X = rng.standard_normal((rows, 784)).astype(np.float32)
        one = model.predict(X, n_threads=1)
        for _ in range(2 * rounds + 3):
            np.testing.assert_array_equal(model.predict(X), one)
        choice = model._predictor.thread_choice(rows)
        assert choice.timed["allowed"] == rounds and choice.timed[1] >= rounds
        assert choice.chosen in (1, "allowed") and not choice.short
    X = rng.standard_normal((2 * _core.FEW_PIECE_ROWS - 1, 784)).astype(np.float32)
    for _ in range(5):
        model.predict(X)
    assert model._predictor.thread_choice(X.shape[0]) is None


def test_few_row_calls_whose_passes_are_short_stay_on_one_thread_without_asking(
        monkeypatch, share_min_seconds, measured_at_once):
    """Where the first phase's best pass took under share_min_seconds (here: every pass),
    the row count is never shared and its calls stop asking (the choice is not consulted
    again); an explicit n_threads still shares."""
    share_min_seconds(1.0)
    model = make([20, 64, 64, 1], "relu", "float32", monkeypatch, "1")
    X = np.random.default_rng(8).standard_normal((32, 20)).astype(np.float32)
    one = model.predict(X, n_threads=1)
    for _ in range(3):
        model.predict(X)
    choice = model._predictor.thread_choice(32)
    assert choice.short and not choice.timed["allowed"]
    calls_timed = choice.timed[1]
    for _ in range(10):
        np.testing.assert_array_equal(model.predict(X), one)
    assert choice.timed[1] == calls_timed and choice.chosen is None
    np.testing.assert_array_equal(model.predict(X, n_threads=2), one)


def test_a_few_row_default_respects_the_callers_limit_and_the_pin(monkeypatch,
                                                                  share_min_seconds):
    """Under threadpoolctl's limit of one thread no default call is shared (nothing is
    timed on more); FASTBP_THREADS pins the count without measuring."""
    from threadpoolctl import threadpool_limits
    monkeypatch.delenv(fastbp._threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(fastbp._threads, "TURN_SECONDS", 0.0)
    share_min_seconds(0.0)
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch, "1")
    X = np.random.default_rng(9).standard_normal((48, 784)).astype(np.float32)
    one = model.predict(X, n_threads=1)
    with threadpool_limits(1):
        for _ in range(4 * fastbp._threads.MEASURE_ROUNDS):
            np.testing.assert_array_equal(model.predict(X), one)
    choice = model._predictor.thread_choice(48)
    assert not choice.timed["allowed"]
    monkeypatch.setenv(fastbp._threads.THREADS_VARIABLE, "3")
    timed = choice.timed[1]
    for _ in range(5):
        np.testing.assert_array_equal(model.predict(X), one)
    assert choice.timed[1] == timed and not choice.timed["allowed"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x_in_any_piece_of_a_shared_few_row_call_is_refused(monkeypatch, bad):
    """The general path's message, whichever piece (thread) met it; the model is
    untouched."""
    model = make([784, 128, 10], ["relu", "softmax"], "float32", monkeypatch, "1")
    parameters = model.parameter_vector()
    for row in (0, 20, 63):
        X = np.ones((64, 784), np.float32)
        X[row, 100] = bad
        with pytest.raises(ValueError) as alone:
            model.predict(X, n_threads=1)
        with pytest.raises(ValueError) as shared:
            model.predict(X, n_threads=3)
        assert str(shared.value) == str(alone.value)
    np.testing.assert_array_equal(model.parameter_vector(), parameters)


def test_threads_sharing_few_row_calls_at_once_get_exact_results(monkeypatch):
    """Eight threads, each calling with n_threads=2 on 8-64 rows of two models: one
    call at a time holds the helpers and the kept workspaces, the others run alone or
    allocate; every result is the one-thread one."""
    cases = []
    for sizes, activations in NETWORKS[:2]:
        model = make(sizes, activations, "float32", monkeypatch, "1")
        for rows in (8, 17, 40, 64):
            X = np.random.default_rng(rows).standard_normal((rows, sizes[0]))
            X = X.astype(np.float32)
            cases.append((model, X, model.predict(X, n_threads=1)))
    failures = []
    start = threading.Barrier(8)

    def serve(seed):
        order = np.random.default_rng(seed).permutation(len(cases) * 25) % len(cases)
        start.wait()
        try:
            for case in order:
                model, X, expected = cases[case]
                if not np.array_equal(model.predict(X, n_threads=2), expected):
                    failures.append((seed, X.shape))
        except Exception as error:       # reported below, with the thread's seed
            failures.append((seed, repr(error)))

    run_at_once(serve, 8)
    assert failures == []


def test_a_hot_model_allocates_nothing_per_call():
    """docs/serving.md, "Nothing allocated per call": a call of 8 or 64 rows into `out`
    allocates nothing (no output, workspace or timing record) at n_threads None, 1 and 2.
    Each call is traced alone by tracemalloc; a workspace of this network is 4 KiB or more
    (8 rows), so a call whose peak passes 2 KiB allocated one. Once a row count has run,
    at most the one-off choices may (the measured choice of threads and the shared call's
    kept workspaces, made once), never call after call."""
    model = fastbp.MLP([784, 128, 10], ["relu", "softmax"], seed=0)
    rng = np.random.default_rng(0)
    for rows in (8, 64):
        X = rng.normal(size=(rows, 784)).astype(np.float32)
        out = np.empty((rows, 10), np.float32)
        for n_threads in (None, 1, 2):
            model.predict(X, out=out, n_threads=n_threads)
            allocating = []
            tracemalloc.start()
            try:
                for call in range(400):
                    before, _ = tracemalloc.get_traced_memory()
                    tracemalloc.reset_peak()
                    model.predict(X, out=out, n_threads=n_threads)
                    _, peak = tracemalloc.get_traced_memory()
                    if peak - before > 2048:
                        allocating.append((call, peak - before))
            finally:
                tracemalloc.stop()
            assert len(allocating) <= 2, (rows, n_threads, allocating)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_predictor_refuses_a_plan_of_another_network(dtype):
    """Predictor.run checked only a plan's parameter count and input width: [10, 4, 13] and
    [10, 9, 1] have 109 parameters each, so a plan of one (a model built again by __init__
    while another thread's predict held the old plan) wrote 13 outputs a row into rows
    of 1 (heap corruption). A plan that differs in any width or activation is refused
    (None: the general path takes the call)."""
    X = np.ones((3000, 10), dtype=dtype)
    wide = fastbp.MLP([10, 4, 13], "relu", seed=0, dtype=dtype)
    narrow = fastbp.MLP([10, 9, 1], "relu", seed=0, dtype=dtype)
    assert wide.n_params == narrow.n_params
    other_activation = fastbp.MLP([10, 9, 1], ["tanh", "identity"], seed=0, dtype=dtype)
    for other in (wide, other_activation):
        plan = other._kept_plan(2048)[0]
        assert narrow._predictor.run(plan, X) is None
    own = narrow._kept_plan(2048)[0]
    np.testing.assert_array_equal(narrow._predictor.run(own, X), narrow.predict(X))


def test_out_that_overlaps_the_callers_x_is_refused_before_x_is_converted():
    """A float64 X for a float32 model is converted first; out was checked only against
    the copy, so an out sharing memory with the caller's X was taken and wrote into it."""
    model = fastbp.MLP([4, 3, 2], "relu", seed=0)
    for rows in (5, 200):
        buffer = np.zeros(rows * 4, dtype=np.float64)
        X = buffer.reshape(rows, 4)
        X[...] = np.arange(rows * 4).reshape(rows, 4) / 7
        before = X.copy()
        out = buffer.view(np.float32)[:rows * 2].reshape(rows, 2)
        with pytest.raises(ValueError, match="out must not overlap X"):
            model.predict(X, out=out)
        np.testing.assert_array_equal(X, before)
    import scipy.sparse
    coo = scipy.sparse.coo_matrix(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="out must not overlap X"):
        model.predict(coo, out=coo.data[:6].reshape(3, 2))
    pandas = pytest.importorskip("pandas")     # a frame's columns (it was taken, and written)
    frame = pandas.DataFrame(np.arange(24, dtype=np.float32).reshape(6, 4))
    first = frame.iloc[:, 0].to_numpy(copy=False)
    assert first.strides == (4,)        # a column of its block, values one after another
    before = frame.copy()
    out = np.lib.stride_tricks.as_strided(first, (6, 2), (8, 4))   # 12 values from it
    with pytest.raises(ValueError, match="out must not overlap X"):
        model.predict(frame, out=out)
    pandas.testing.assert_frame_equal(frame, before)
