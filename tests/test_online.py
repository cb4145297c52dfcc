"""Online training: the few-row kernels of a training step's backward products
(csrc/few_rows.h: fbp_few_rows_delta, fbp_few_rows_gradient) against float64 products on
every edge of their blocking, both dtypes, both vector instances; and training with
batches of 1 to 8 rows (which run every product in those kernels) against the BLAS
products of FASTBP_FEW_ROWS=0, to rounding, for every optimizer.
"""
import numpy as np
import pytest

import fastbp
from fastbp import _core, _threads, optimizers, model as model_module

LANES = {np.float32: 16, np.float64: 8}     # elements in the kernels' 64-byte vectors


def widths(lanes):
    """Widths on each edge of the column blocks (4, 2 and 1 vectors, then the last
    columns one by one) of both vector sizes: lanes is the 64-byte vector's."""
    half = lanes // 2
    edges = {1, 2}
    for width in (half, lanes):
        for k in (1, 2, 3, 4, 5, 7, 8):
            edges.update({k * width - 1, k * width, k * width + 1})
    return sorted(edges)


def sum_bound(terms, dtype):
    """|rounding error| of sums of n terms in dtype, given the float64 sum of |terms|
    over the summed axis and n."""
    magnitude, n = terms
    return 1.01 * (n + 2) * np.finfo(dtype).eps * magnitude + np.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_delta_matches_a_float64_product_on_every_edge(dtype, kernel_level):
    rng = np.random.default_rng(0)
    for n_in in (1, 2, 3, 4, 5, 7, 8, 9, 64, 130):
        for n_out in widths(LANES[dtype]):
            W = rng.standard_normal((n_in, n_out)).astype(dtype)
            for m in (1, 2, 3, 4, 5, 8, 13):
                D = rng.standard_normal((m, n_out)).astype(dtype)
                out = np.full((m, n_in), np.nan, dtype=dtype)
                _core.few_rows_delta(D, W, out)
                exact = D.astype(np.float64) @ W.T.astype(np.float64)
                bound = sum_bound((np.abs(D).astype(np.float64) @ np.abs(W).T, n_out), dtype)
                assert (np.abs(out - exact) <= bound).all(), (n_in, n_out, m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_delta_gives_each_row_the_same_bits_alone_or_in_a_batch(dtype, kernel_level):
    rng = np.random.default_rng(1)
    for n_out in (1, 10, LANES[dtype] * 5 + 3):
        W = rng.standard_normal((37, n_out)).astype(dtype)
        D = rng.standard_normal((8, n_out)).astype(dtype)
        batch = np.empty((8, 37), dtype=dtype)
        _core.few_rows_delta(D, W, batch)
        for r in range(8):
            alone = np.empty((1, 37), dtype=dtype)
            _core.few_rows_delta(D[r:r + 1], W, alone)
            assert np.array_equal(alone[0], batch[r]), (n_out, r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_rows_gradient_matches_a_float64_rank_m_update_on_every_edge(dtype, kernel_level):
    """C = beta C + alpha A[:, block]^T D, on blocks of A's columns as run_batch cuts a
    layer; beta 0 never reads C (NaN there stays out of the result)."""
    rng = np.random.default_rng(2)
    for n_out in widths(LANES[dtype]):
        for n_in, first, rows in ((1, 0, 1), (5, 0, 5), (70, 3, 64), (9, 8, 1), (40, 1, 37)):
            for m in (1, 2, 3, 4, 5, 8, 11):
                A = rng.standard_normal((m, n_in)).astype(dtype)
                D = rng.standard_normal((m, n_out)).astype(dtype)
                product = A[:, first:first + rows].T.astype(np.float64) @ D
                magnitude = np.abs(A[:, first:first + rows]).T.astype(np.float64) @ np.abs(D)
                for alpha, beta in ((1.0, 0.0), (-0.01, 1.0), (0.5, 0.999), (-2.0, 0.0)):
                    start = rng.standard_normal((rows, n_out)).astype(dtype)
                    C = np.full((rows, n_out), np.nan, dtype=dtype) if beta == 0 \
                        else start.copy()
                    _core.few_rows_gradient(C, A, D, alpha, beta, first)
                    exact = alpha * product + (beta * start.astype(np.float64) if beta else 0)
                    bound = sum_bound((abs(alpha) * magnitude + abs(beta) * np.abs(start),
                                       m + 2), dtype)
                    assert (np.abs(C - exact) <= bound).all(), (n_out, n_in, m, alpha, beta)


def test_few_rows_backward_kernels_check_their_sizes():
    D, W = np.ones((2, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match="few_rows_delta"):
        _core.few_rows_delta(D, np.ones((3, 5)), np.empty((2, 3)))
    with pytest.raises(ValueError, match="few_rows_delta"):
        _core.few_rows_delta(D, W, np.empty((2, 4)))
    with pytest.raises(ValueError, match="at least one row"):
        _core.few_rows_delta(D[:0], W, np.empty((0, 3)))
    A = np.ones((2, 3))
    with pytest.raises(ValueError, match="few_rows_gradient"):
        _core.few_rows_gradient(np.empty((3, 4)), A, np.ones((1, 4)), 1.0, 0.0)
    with pytest.raises(ValueError, match="few_rows_gradient"):
        _core.few_rows_gradient(np.empty((2, 4)), A, D, 1.0, 0.0, first_column=2)
    with pytest.raises(ValueError, match="at least one row"):
        _core.few_rows_gradient(np.empty((3, 4)), A[:0], D[:0], 1.0, 0.0)


OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.01),
    "momentum": lambda: optimizers.SGD(0.002, momentum=0.9),
    "nesterov": lambda: optimizers.SGD(0.002, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(0.001),
    "rmsprop": lambda: optimizers.RMSprop(0.001),
    "adagrad": lambda: optimizers.Adagrad(0.01),
}


def trained(kernels, dtype, batch_size, optimizer, monkeypatch, sizes=(20, 64, 64, 1),
            activations="relu", loss="mse", n_threads=1, clip_norm=None, weight_decay=0.0):
    """A model after an epoch of 24 rows (so that float32's rounding differences do not
    grow past the tolerance) under FASTBP_FEW_ROWS=kernels ("0": BLAS, "1": the
    kernels for every product of up to TRAINING_FEW_ROWS rows, None: the measured rule)."""
    if kernels is None:
        monkeypatch.delenv(model_module.FEW_ROWS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, kernels)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((24, sizes[0])).astype(dtype)
    Y = rng.standard_normal((24, sizes[-1])).astype(dtype)
    if loss == "cce":
        Y = rng.integers(0, sizes[-1], 24)
    model = fastbp.MLP(list(sizes), activations, dtype=dtype, seed=5)
    fastbp.Trainer(loss, optimizer=OPTIMIZERS[optimizer](), epochs=1, batch_size=batch_size,
                   seed=3, n_threads=n_threads, clip_norm=clip_norm,
                   weight_decay=weight_decay).fit(model, X, Y)
    return model


def assert_close(model, reference, dtype):
    tolerance = 2e-4 if dtype == "float32" else 1e-10
    for got, expected in zip(model.weights + model.biases,
                             reference.weights + reference.biases):
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_online_training_matches_the_blas_products_to_rounding(optimizer, dtype, kernel_level,
                                                               monkeypatch):
    for batch_size in range(1, 9):
        blas = trained("0", dtype, batch_size, optimizer, monkeypatch)
        for kernels in ("1", None):
            model = trained(kernels, dtype, batch_size, optimizer, monkeypatch)
            assert_close(model, blas, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_online_training_with_clipping_decay_and_other_shapes(dtype, kernel_level, monkeypatch):
    """Clipping (the gradient kept whole), weight decay, a softmax output with CCE, odd
    widths on the kernels' edges and a wide first layer whose gradient is cut in blocks."""
    cases = [dict(clip_norm=0.5), dict(weight_decay=0.01),
             dict(sizes=(7, 33, 17, 5), activations=["tanh", "gelu", "softmax"], loss="cce"),
             dict(sizes=(1000, 70, 3), activations=["relu", "identity"])]
    for case in cases:
        for batch_size in (1, 3, 8):
            blas = trained("0", dtype, batch_size, "sgd", monkeypatch, **case)
            model = trained("1", dtype, batch_size, "sgd", monkeypatch, **case)
            assert_close(model, blas, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_split_workers_take_the_few_row_kernels_too(dtype, monkeypatch):
    """Two row-split workers on batches of 4 to 8 rows (2 to 4 each)."""
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "rows")
    monkeypatch.setattr(_threads, "allowed_threads", lambda: 2)
    for optimizer in ("sgd", "adam"):
        for batch_size in (4, 5, 8):
            blas = trained("0", dtype, batch_size, optimizer, monkeypatch, n_threads=2)
            model = trained("1", dtype, batch_size, optimizer, monkeypatch, n_threads=2)
            assert_close(model, blas, dtype)


def test_online_training_is_reproducible(monkeypatch):
    """The same seed and settings give the same bits, run after run."""
    first = trained(None, "float64", 1, "sgd", monkeypatch)
    again = trained(None, "float64", 1, "sgd", monkeypatch)
    for a, b in zip(first.weights + first.biases, again.weights + again.biases):
        assert np.array_equal(a, b)


def own_products(n_layers, layers, products=(0, 1, 2)):
    """Plan product_isas with the given products (0 forward, 1 input delta, 2 weight
    gradient) of the given weight layers (1-based) in the own AVX2 kernels."""
    isas = [0] * (6 * n_layers)
    for dtype in (0, 1):
        for layer in layers:
            for product in products:
                isas[(dtype * n_layers + layer - 1) * 3 + product] = _core.KERNEL_ISAS["avx2"]
    return isas


@pytest.mark.parametrize("in_double", [False, True])
def test_step_calls_blas_follows_the_steps_products(in_double):
    """Plan.step_calls_blas: whether an epoch's steps (a full batch and the last, shorter
    one) give BLAS a forward, input-delta or weight-gradient product: not where the few-row
    kernels take the layer, not a sparse X's first layer, not a product in the own
    kernels."""
    relu, identity = _core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["identity"]

    def calls(capacity, cases, sizes=(6, 5, 4), **options):
        plan = _core.Plan(list(sizes), [relu] * (len(sizes) - 2) + [identity], capacity,
                          with_gradient=True, **options)
        return [plan.step_calls_blas(rows, batch, in_double) for rows, batch in cases]
    assert calls(8, [(1, 1), (20, 8)]) == [True, True]
    few = dict(few_rows=4, few_rows_always=True)
    # batches of up to 4 rows in the few-row kernels: 9 rows in 4s (the last of 1) none;
    # batches of 8, or a full one of 5, do
    assert calls(8, [(1, 1), (9, 4), (3, 8), (20, 8), (5, 5)], **few) == \
        [False, False, False, True, True]
    assert calls(8, [(1, 1), (20, 8)], sizes=(6, 5), sparse_input=True) == [False, False]
    assert calls(8, [(20, 8)], sparse_input=True) == [True]       # the second layer's
    if _core.best_kernel_isa() is not None:
        assert calls(8, [(20, 8)], product_isas=own_products(2, [1, 2])) == [False]
        for products in ((0,), (1,), (2,), (0, 1), (1, 2), (0, 2)):   # one left to BLAS
            assert calls(8, [(20, 8)], product_isas=own_products(2, [1, 2], products)) \
                == [True], products
        # the first layer has no input delta; a sparse one, no dense product at all
        no_first_delta = [max(a, b) for a, b in zip(own_products(2, [1], (0, 2)),
                                                    own_products(2, [2]))]
        assert calls(8, [(20, 8)], product_isas=no_first_delta) == [False]
        assert calls(8, [(20, 8)], sparse_input=True,
                     product_isas=own_products(2, [2])) == [False]
    with pytest.raises(ValueError, match="step_calls_blas"):
        calls(8, [(1, 9)])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_fit_whose_steps_call_no_blas_leaves_blas_alone_with_the_same_bits(monkeypatch,
                                                                              optimizer):
    """Batches of a few rows in the few-row kernels call no BLAS: the fit neither sets nor
    resets BLAS's thread count, and trains the bits it trained under it; a fit whose steps
    call BLAS still sets it. Its plan is made once for the model, not at each partial_fit.
    (FASTBP_KERNELS=blas: under "auto" the own product kernels, which call no BLAS either,
    may be timed faster for every product of the steps without the few-row kernels.)"""
    from fastbp import _products, trainer as trainer_module
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    entered = []
    real = trainer_module.blas_threads

    def recording(n_threads):
        entered.append(n_threads)
        return real(n_threads)
    monkeypatch.setattr(trainer_module, "blas_threads", recording)
    for kernels, calls_blas in (("1", False), ("0", True)):
        entered.clear()
        plain = trained(kernels, "float64", 4, optimizer, monkeypatch)
        assert bool(entered) == calls_blas, kernels
        with monkeypatch.context() as forced:           # the count set, as before
            forced.setattr(trainer_module._CompiledEpoch, "blas_context",
                           lambda epoch: real(epoch.n_threads))
            under_blas = trained(kernels, "float64", 4, optimizer, monkeypatch)
        for a, b in zip(plain.weights + plain.biases, under_blas.weights + under_blas.biases):
            assert np.array_equal(a, b)
    monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, "1")
    model = fastbp.MLP([20, 64, 64, 1], "relu", dtype="float64", seed=5)
    trainer = fastbp.Trainer("mse", batch_size=1, seed=3, n_threads=1)
    X = np.random.default_rng(7).standard_normal((3, 20))
    trainer.partial_fit(model, X[:1], X[:1, :1])
    made = []
    monkeypatch.setattr(model, "_workspace", lambda *arguments, **options: made.append(1))
    for row in range(1, 3):
        trainer.partial_fit(model, X[row:row + 1], X[row:row + 1, :1])
    assert made == []
