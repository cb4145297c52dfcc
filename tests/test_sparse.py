"""Sparse input (issue 13): X as a scipy.sparse matrix or array in predict, evaluate,
gradients and every fit gives what the same data densified give, to rounding; bad sparse
input is refused with the model unchanged; a sparse X rewritten mid-fit raises; and a fit
on a very wide CSR matrix allocates nothing like its dense form."""
import os
import pickle
import subprocess
import sys
import tracemalloc
import warnings
from unittest import mock

import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp import _core, optimizers, schedules
from mid_fit import RewriteAfterFirstEpoch

# float32 sums in another order: a few units of 1e-6 relative; float64: ~1e-15
TOLERANCE = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-9, atol=1e-11)}
# the same sums, one rounding apart in places
ROUNDING = {"float32": dict(rtol=1e-5, atol=1e-7), "float64": dict(rtol=1e-12, atol=1e-15)}


def sparse_data(n_rows=60, n_cols=40, density=0.12, n_classes=3, seed=0, dtype="float64"):
    """A CSR X with some empty rows and a dense label vector."""
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(n_rows, n_cols, density=density, format="csr", random_state=rng,
                            dtype=np.float64)
    X.data = rng.uniform(-1.5, 1.5, size=X.nnz)
    X = X.astype(dtype)
    X.data[X.indptr[5]:X.indptr[6]] = 0   # an empty row
    X.eliminate_zeros()
    X.sort_indices()
    y = rng.integers(0, n_classes, size=n_rows)
    return X, y


def model_for(X, hidden=(7,), dtype="float64", dropout=0.0, activation="tanh", n_out=3,
              output="softmax", seed=0):
    sizes = [X.shape[1], *hidden, n_out]
    return fastbp.MLP(sizes, [activation] * len(hidden) + [output], dtype=dtype, seed=seed,
                      dropout=dropout)


# ---------------------------------------------------------------- predict, evaluate, gradients

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)])
def test_predict_evaluate_gradients_equal_the_densified_data(dtype, hidden):
    X, y = sparse_data(dtype=dtype)
    model = model_for(X, hidden, dtype)
    dense = X.toarray()
    np.testing.assert_allclose(model.predict(X), model.predict(dense), **TOLERANCE[dtype])
    assert model.evaluate(X, y, "cce") == pytest.approx(model.evaluate(dense, y, "cce"),
                                                          rel=TOLERANCE[dtype]["rtol"])
    sparse_result = model.gradients(X, y, "cce")
    dense_result = model.gradients(dense, y, "cce")
    assert sparse_result[0] == pytest.approx(dense_result[0], rel=TOLERANCE[dtype]["rtol"])
    for got, expected in zip(sparse_result[1] + sparse_result[2],
                             dense_result[1] + dense_result[2]):
        np.testing.assert_allclose(got, expected, **TOLERANCE[dtype])


def test_gradients_touch_only_the_rows_of_w1_the_data_name():
    X, y = sparse_data()
    X = X[:, :30]   # columns 30.. never used
    X = scipy.sparse.hstack([X, scipy.sparse.csr_matrix((X.shape[0], 10))]).tocsr()
    model = model_for(X)
    _, grad_weights, _ = model.gradients(X, y, "cce")
    assert not grad_weights[0][30:].any()
    assert grad_weights[0][:30].any()


@pytest.mark.parametrize("chunk_rows", [1, 7, 2048])
def test_predict_in_chunks_of_rows(monkeypatch, chunk_rows):
    from fastbp import model as model_module
    monkeypatch.setattr(model_module, "PREDICT_CHUNK_ROWS", chunk_rows)
    X, y = sparse_data(n_rows=50)
    model = model_for(X)
    np.testing.assert_allclose(model.predict(X), model.predict(X.toarray()), rtol=1e-12)
    assert model.evaluate(X, y, "cce") == pytest.approx(model.evaluate(X.toarray(), y, "cce"))


@pytest.mark.parametrize("kind", ["csc", "coo", "lil", "csr_array", "coo_array"])
def test_other_formats_are_converted(kind):
    X, y = sparse_data()
    converted = {"csc": X.tocsc(), "coo": X.tocoo(), "lil": X.tolil(),
                 "csr_array": scipy.sparse.csr_array(X),
                 "coo_array": scipy.sparse.coo_array(X)}[kind]
    model = model_for(X)
    np.testing.assert_allclose(model.predict(converted), model.predict(X), rtol=1e-12)


def malformed_other_format(kind):
    """A small matrix of format `kind` whose index arrays name a row, column or block past
    its shape, or whose indptr decreases (set after construction, as a file or a caller's
    arrays can hold them): scipy's tocsr() read them unchecked and wrote out of bounds."""
    X = scipy.sparse.csr_matrix(np.eye(4, 40))
    if kind == "csc":
        bad = X.tocsc()
        bad.indices = bad.indices.copy()
        bad.indices[-1] = 5_000_000
    elif kind == "csc_indptr":
        bad = X.tocsc()
        bad.indptr = bad.indptr.copy()
        bad.indptr[2] = 4
    elif kind in ("coo_row", "coo_col", "coo_negative"):
        bad = X.tocoo()
        index = bad.row.copy() if kind != "coo_col" else bad.col.copy()
        index[-1] = -1 if kind == "coo_negative" else 5_000_000
        if kind == "coo_col":
            bad.col = index
        else:
            bad.row = index
    elif kind in ("lil_more_values", "lil_fewer_values"):
        # a row's values and column indices of different lengths: scipy sizes its arrays
        # by the indices, then writes every value (more: past the end; fewer: values
        # left as the memory held them)
        bad = X.tolil()
        if kind == "lil_more_values":
            bad.data[2].extend([5.0] * 100_000)
        else:
            bad.rows[2] = list(range(40))
    elif kind == "csr32_indptr":      # (float32: a conversion to float64 reads indptr)
        bad = X.astype(np.float32)
        bad.indptr = bad.indptr.copy()
        bad.indptr[2] = 0
    else:
        bad = X.tobsr(blocksize=(2, 2))
        bad.indices = bad.indices.copy()
        bad.indices[-1] = 1_000_000
    return X, bad


@pytest.mark.parametrize("kind", ["csc", "csc_indptr", "coo_row", "coo_col", "coo_negative",
                                  "bsr", "lil_more_values", "lil_fewer_values",
                                  "csr32_indptr"])
def test_malformed_other_formats_are_refused_before_scipy_converts_them(kind):
    """Index arrays past the shape in a CSC, COO or BSR matrix, a LIL matrix whose lists
    disagree, a CSR whose indptr decreases: a ValueError naming the format, from every
    entry point, the scikit-learn estimators' too, the model and trainer unchanged (the
    process crashed or hung in scipy's conversion to CSR, or a LIL's missing values were
    read from freed memory; the estimators' predict, score and predict_proba handed X to
    scipy unchecked: a CSC or COO crashed the process there, a decreasing indptr raised
    a C++ error)."""
    from fastbp.sklearn import MLPClassifier

    X, bad = malformed_other_format(kind)
    y = np.arange(4) % 3
    model = model_for(X)
    trainer = fastbp.Trainer("cce", epochs=1, batch_size=2, seed=0, n_threads=1)
    before = model.parameter_vector().copy()
    estimator = MLPClassifier((5,), max_iter=2, random_state=0).fit(X, y)
    fitted = estimator.model_.parameter_vector().copy()
    calls = [lambda: model.predict(bad), lambda: model.evaluate(bad, y, "cce"),
             lambda: model.gradients(bad, y, "cce"), lambda: trainer.fit(model, bad, y),
             lambda: trainer.partial_fit(model, bad, y),
             lambda: trainer.fit(model, X, y, validation_data=(bad, y)),
             lambda: estimator.predict(bad), lambda: estimator.predict_proba(bad),
             lambda: estimator.score(bad, y), lambda: estimator.partial_fit(bad, y)]
    for call in calls:
        with pytest.raises(ValueError, match=f"malformed {bad.format.upper()} matrix"):
            call()
    np.testing.assert_array_equal(model.parameter_vector(), before)
    assert trainer._step == 0
    np.testing.assert_array_equal(estimator.model_.parameter_vector(), fitted)


def test_a_sparse_matrix_of_odd_parts_is_refused_by_type_or_read_as_scipy_reads_it():
    """Arrays a caller put into a matrix by hand: a list for the stored values or an
    index array is a TypeError naming it, a COO matrix of one index array a ValueError
    (each an AttributeError or an unpacking error from deep inside before); a DIA
    matrix's int8 offsets, which scipy's conversion overflowed (OverflowError) with 200
    rows, are read as the same matrix with wider offsets."""
    X = scipy.sparse.csr_matrix(np.eye(4, 40))
    model = model_for(X)
    for part in ("data", "indices", "indptr"):
        bad = X.copy()
        setattr(bad, part, list(getattr(bad, part)))
        with pytest.raises(TypeError,
                           match=fr"X.{part} must be a 1-D array \(NumPy's\); got list"):
            model.predict(bad)
    bad = X.tocsc()
    bad.data = list(bad.data)
    with pytest.raises(TypeError, match=r"X.data must be a 1-D array \(NumPy's\); got list"):
        model.predict(bad)
    bad = scipy.sparse.coo_array(X)
    bad.coords = bad.coords[:1]
    with pytest.raises(ValueError, match="malformed COO matrix: it must have 2 index arrays"):
        model.predict(bad)
    rng = np.random.default_rng(0)
    diagonals = scipy.sparse.dia_matrix((rng.normal(size=(3, 40)), [-5, 0, 7]),
                                        shape=(200, 40))
    diagonals.offsets = diagonals.offsets.astype(np.int8)   # (the constructor widens them)
    wide = model_for(diagonals)
    dense = scipy.sparse.dia_matrix((diagonals.data, [-5, 0, 7]), shape=(200, 40)).toarray()
    np.testing.assert_allclose(wide.predict(diagonals), wide.predict(dense), rtol=1e-12)
    assert diagonals.offsets.dtype == np.int8       # (the caller's matrix as it was)


def test_unsorted_and_duplicate_indices_read_as_scipy_reads_them():
    rng = np.random.default_rng(3)
    indptr = np.array([0, 3, 3, 7])
    indices = np.array([5, 1, 5, 9, 0, 2, 0])      # unsorted, 5 and 0 twice in a row
    data = rng.normal(size=7)
    X = scipy.sparse.csr_matrix((data, indices, indptr), shape=(3, 10))
    original = (X.indices.copy(), X.data.copy())
    model = model_for(X)
    np.testing.assert_allclose(model.predict(X), model.predict(X.toarray()), rtol=1e-12)
    # the caller's matrix is left as it was
    np.testing.assert_array_equal(X.indices, original[0])
    np.testing.assert_array_equal(X.data, original[1])


def test_predict_out_and_dtype_conversion():
    X, _ = sparse_data(dtype="float64")
    model = model_for(X, dtype="float32")
    out = np.empty((X.shape[0], 3), dtype=np.float32)
    assert model.predict(X, out=out) is out
    np.testing.assert_allclose(out, model.predict(X.toarray()), **TOLERANCE["float32"])


# ---------------------------------------------------------------- fits

FITS = {
    "sgd": dict(optimizer="sgd", learning_rate=0.1),
    "sgd_decay": dict(optimizer="sgd", learning_rate=0.1, weight_decay=0.05),
    "sgd_decoupled": dict(optimizer="sgd", learning_rate=0.1, weight_decay=0.05,
                          decoupled_weight_decay=True),
    "momentum": dict(optimizer=optimizers.SGD(0.05, momentum=0.9)),
    "momentum_decay": dict(optimizer=optimizers.SGD(0.05, momentum=0.9), weight_decay=0.01),
    "nesterov": dict(optimizer=optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
    "adam": dict(optimizer="adam", learning_rate=0.01),
    "adamw": dict(optimizer="adam", learning_rate=0.01, weight_decay=0.1,
                  decoupled_weight_decay=True),
    "rmsprop": dict(optimizer="rmsprop", learning_rate=0.01),
    "adagrad": dict(optimizer="adagrad", learning_rate=0.05, weight_decay=0.01),
    "clipped_sgd": dict(optimizer="sgd", learning_rate=0.1, clip_norm=0.3),
    "clipped_adam": dict(optimizer="adam", learning_rate=0.01, clip_norm=0.3),
    "schedule": dict(optimizer="sgd", learning_rate=0.1,
                     schedule=schedules.Cosine(total_epochs=3)),
}


def fit_both(X, Y, loss="cce", dtype="float64", model_options=None, fit_options=None,
             **trainer_options):
    """The parameters after the same fit on X and on X densified (one thread each)."""
    results = []
    for data in (X, X.toarray()):
        model = model_for(X, dtype=dtype, **(model_options or {}))
        options = dict(epochs=3, batch_size=8, seed=0, n_threads=1)
        options.update(trainer_options)
        trainer = fastbp.Trainer(loss, **options)
        history = trainer.fit(model, data, Y, **(fit_options or {}))
        results.append((model.parameter_vector(), history))
    return results


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", sorted(FITS))
def test_fits_equal_the_densified_data(dtype, fit):
    X, y = sparse_data(dtype=dtype)
    (sparse_params, sparse_history), (dense_params, dense_history) = \
        fit_both(X, y, dtype=dtype, **FITS[fit])
    np.testing.assert_allclose(sparse_params, dense_params, **TOLERANCE[dtype])
    np.testing.assert_allclose(sparse_history.loss, dense_history.loss,
                               rtol=TOLERANCE[dtype]["rtol"])


LAZY_FITS = {
    "sgd_decay": dict(optimizer="sgd", learning_rate=0.1, weight_decay=0.05),
    "momentum_decay": dict(optimizer=optimizers.SGD(0.05, momentum=0.9), weight_decay=0.02),
    "momentum_decoupled": dict(optimizer=optimizers.SGD(0.05, momentum=0.8),
                               weight_decay=0.02, decoupled_weight_decay=True),
    "nesterov_decay": dict(optimizer=optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                           weight_decay=0.02),
    "nesterov_decoupled": dict(optimizer=optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                               weight_decay=0.02, decoupled_weight_decay=True),
    "rmsprop": dict(optimizer="rmsprop", learning_rate=0.01),
    "rmsprop_decoupled": dict(optimizer="rmsprop", learning_rate=0.01, weight_decay=0.1,
                              decoupled_weight_decay=True),
    "adagrad_decoupled": dict(optimizer="adagrad", learning_rate=0.05, weight_decay=0.1,
                              decoupled_weight_decay=True),
    "rmsprop_coupled": dict(optimizer="rmsprop", learning_rate=0.01, weight_decay=0.01),
    "adam": dict(optimizer="adam", learning_rate=0.01),
    "adamw": dict(optimizer="adam", learning_rate=0.01, weight_decay=0.1,
                  decoupled_weight_decay=True),
    "adam_betas": dict(optimizer=optimizers.Adam(0.02, beta1=0.5, beta2=0.9, epsilon=1e-4)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", sorted(LAZY_FITS))
def test_rows_named_rarely_catch_up_exactly(dtype, fit):
    """300 columns, about 3 a row, batches of 8: most rows of W1 sit out many steps (and
    some a whole epoch) before a batch names them again, and must then be where stepping
    them every time would have put them."""
    assert_rarely_named_rows_equal_the_densified_data(dtype, 4, LAZY_FITS[fit])


def assert_rarely_named_rows_equal_the_densified_data(dtype, epochs, fit):
    """The fit `fit` (Trainer options) on 90 rows of 300 columns, about 3 a row, in batches
    of 8, sparse and densified: the same parameters and losses within TOLERANCE."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.01, dtype=dtype, seed=5)
    (sparse_params, sparse_history), (dense_params, dense_history) = \
        fit_both(X, y, dtype=dtype, epochs=epochs, **fit)
    np.testing.assert_allclose(sparse_params, dense_params, **TOLERANCE[dtype])
    np.testing.assert_allclose(sparse_history.loss, dense_history.loss,
                               rtol=TOLERANCE[dtype]["rtol"])


@pytest.mark.parametrize("fit", [
    dict(optimizer="adam", learning_rate=0.01),
    dict(optimizer="adam", learning_rate=0.01, weight_decay=0.05),
    dict(optimizer="rmsprop", learning_rate=0.01, weight_decay=0.05),
    dict(optimizer="adagrad", learning_rate=0.05, weight_decay=0.05),
], ids=["adam", "adam_coupled", "rmsprop_coupled", "adagrad_coupled"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_no_batch_names_step_as_from_a_zero_gradient(monkeypatch, dtype, fit):
    """Rules that move every row of W1 at every step skip reading the gradient buffer on
    the rows a batch does not name (their gradient is 0): the step that reads the whole
    buffer (FASTBP_SPARSE_NAMED_ROWS=0) to rounding, and the densified data's. (Not bit for
    bit at every width: a row's loop splits into vector and scalar parts at other places
    than one loop over all of W1 does, and the compiler may contract a multiply-add into
    an FMA in one and not the other; a hidden width that is a multiple of the vector
    width gives the same bits.)"""
    monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")     # Adam too, not lazily
    X, y = sparse_data(n_rows=80, n_cols=300, density=0.02, dtype=dtype)
    results = []
    for variable in ("1", "0"):
        monkeypatch.setenv(_core.NAMED_ROWS_VARIABLE, variable)
        model = model_for(X, dtype=dtype)
        fastbp.Trainer("cce", epochs=2, batch_size=8, seed=3, **fit).fit(model, X, y)
        results.append(model.weights + model.biases)
    monkeypatch.delenv(_core.NAMED_ROWS_VARIABLE)
    dense = model_for(X, dtype=dtype)
    fastbp.Trainer("cce", epochs=2, batch_size=8, seed=3, **fit).fit(dense, X.toarray(), y)
    for named, whole, densified in zip(*results, dense.weights + dense.biases):
        np.testing.assert_allclose(named, whole, **ROUNDING[dtype])
        np.testing.assert_allclose(named, densified, **TOLERANCE[dtype])


@pytest.fixture
def lazy_adam():
    """Sets sparse Adam's window and series limit (_core.lazy_adam_settings) for a test."""
    saved = _core.lazy_adam_settings()
    yield _core.lazy_adam_settings
    _core.lazy_adam_settings(*saved)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", ["adam", "adamw"])
@pytest.mark.parametrize("window, series_limit", [(1, None), (2, None), (7, None), (None, 0.0),
                                                  (5, 0.0)],
                         ids=["window1", "window2", "window7", "step_by_step",
                              "window5_step_by_step"])
def test_lazy_adam_on_every_path_equals_the_densified_data(lazy_adam, dtype, fit, window,
                                                           series_limit):
    """Adam's rows catch up by a series over a window of steps (LazyAdam in _core.pyx):
    windows that restart every step or every few steps (batches of 8 on 90 rows: 12
    steps an epoch), and every weight stepped one step at a time (a series limit of 0,
    the path of weights whose second moment is near 0), all equal the dense fit."""
    lazy_adam(window, series_limit)
    assert_rarely_named_rows_equal_the_densified_data(dtype, 3, LAZY_FITS[fit])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lazy_adam_equals_adam_stepping_every_row_to_rounding(monkeypatch, dtype):
    """Lazily (the default) and stepping every row of W1 at every step
    (FASTBP_SPARSE_LAZY_ADAM=0): the same fit to rounding, with gradients small enough
    that eps counts in the step (values of 1e-6: the series' higher terms matter). To
    rounding in float64; float32 steps round every weight and moment at each step where
    the lazy rows round once, and three epochs of that drift pass the fit's tolerance only."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.01, dtype=dtype, seed=5)
    results = []
    for variable, data in (("1", X), ("0", X), ("1", X * 1e-6), ("0", X * 1e-6)):
        monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, variable)
        model = model_for(X, dtype=dtype)
        fastbp.Trainer("cce", optimizer=optimizers.Adam(0.01, epsilon=1e-7), epochs=3,
                       batch_size=8, seed=0, n_threads=1).fit(model, data, y)
        results.append(model.parameter_vector())
    tolerance = ROUNDING[dtype] if dtype == "float64" else TOLERANCE[dtype]
    np.testing.assert_allclose(results[0], results[1], **tolerance)
    np.testing.assert_allclose(results[2], results[3], **tolerance)
    assert not np.array_equal(results[0], results[2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("beta2", [0.98, 0.95, 0.9])
def test_lazy_adam_with_a_low_beta2_over_long_gaps_equals_the_densified_data(dtype, beta2):
    """Batches of one row over 600 rows: rows of W1 sit out hundreds of steps. With beta2
    well below 1 their catch-up's sums overflowed, each such row came out NaN, and every
    epoch was undone as diverged (the model never trained; a dense fit trains)."""
    X, y = sparse_data(n_rows=600, n_cols=300, density=0.01, dtype=dtype, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (sparse_params, sparse_history), (dense_params, dense_history) = fit_both(
            X, y, dtype=dtype, epochs=2, batch_size=1,
            optimizer=optimizers.Adam(0.003, beta2=beta2))
    assert len(sparse_history.loss) == 2 and not sparse_history.diverged
    np.testing.assert_allclose(sparse_params, dense_params, **TOLERANCE[dtype])
    np.testing.assert_allclose(sparse_history.loss, dense_history.loss,
                               rtol=TOLERANCE[dtype]["rtol"])


def test_lazy_adam_settings_are_checked(lazy_adam):
    with pytest.raises(ValueError, match="window"):
        lazy_adam(window=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fits_with_dropout_sample_weights_and_validation(dtype):
    X, y = sparse_data(dtype=dtype, n_rows=70)
    weights = np.random.default_rng(4).uniform(0, 2, size=X.shape[0])
    X_val, y_val = sparse_data(dtype=dtype, n_rows=20, seed=9)
    results = []
    for train, val in ((X, X_val), (X.toarray(), X_val.toarray())):
        model = model_for(X, hidden=(8, 6), dtype=dtype, dropout=0.3, activation="relu")
        trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, epochs=3,
                                 batch_size=16, seed=1, n_threads=1, class_weight="balanced")
        history = trainer.fit(model, train, y, sample_weight=weights,
                              validation_data=(val, y_val))
        results.append((model.parameter_vector(), history.val_loss))
    np.testing.assert_allclose(results[0][0], results[1][0], **TOLERANCE[dtype])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=TOLERANCE[dtype]["rtol"])


def test_regression_targets_validation_split_and_no_shuffle():
    X, _ = sparse_data(n_rows=50)
    Y = np.random.default_rng(2).normal(size=(50, 2))
    (sparse_params, sparse_history), (dense_params, dense_history) = fit_both(
        X, Y, loss="mse", model_options=dict(n_out=2, output="identity"),
        fit_options=dict(validation_split=0.2), shuffle=False, optimizer="rmsprop",
        learning_rate=0.01)
    np.testing.assert_allclose(sparse_params, dense_params, **TOLERANCE["float64"])
    np.testing.assert_allclose(sparse_history.val_loss, dense_history.val_loss, rtol=1e-9)
    assert sparse_history.n_samples == 40


def test_partial_fit_and_two_threads():
    X, y = sparse_data()
    results = []
    for data in (X, X.toarray()):
        model = model_for(X)
        trainer = fastbp.Trainer("cce", optimizer="adam", batch_size=8, seed=0, n_threads=1)
        trainer.partial_fit(model, data, y)
        trainer.partial_fit(model, data, y)
        results.append(model.parameter_vector())
    np.testing.assert_allclose(results[0], results[1], **TOLERANCE["float64"])
    # a sparse fit on two threads runs on one worker (the other layers' BLAS may use two)
    model = model_for(X)
    fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=2).fit(model, X, y)
    reference = model_for(X)
    fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=1).fit(reference, X, y)
    np.testing.assert_allclose(model.parameter_vector(), reference.parameter_vector(),
                               **TOLERANCE["float64"])


def test_a_csr_matrix_is_read_in_place():
    """CSR of the model's dtype with np.intp indices is not copied: the core reads it."""
    X, _ = sparse_data()
    X.indices = X.indices.astype(np.intp)
    X.indptr = X.indptr.astype(np.intp)
    model = model_for(X)
    rows = model._inputs(X)
    assert isinstance(rows, _core.SparseRows)
    assert np.shares_memory(rows.data, X.data) and np.shares_memory(rows.indices, X.indices)
    assert np.shares_memory(rows.indptr, X.indptr)


# ---------------------------------------------------------------- bad input

def malformed(kind):
    """A sparse X (4 x 10) with one defect."""
    data = np.array([1.0, 2.0, 3.0, 4.0])
    indices = np.array([0, 3, 9, 2])
    indptr = np.array([0, 2, 2, 3, 4])
    if kind == "column_too_large":
        indices = np.array([0, 3, 10, 2])
    elif kind == "negative_column":
        indices = np.array([0, -1, 9, 2])
    elif kind == "nan":
        data = np.array([1.0, np.nan, 3.0, 4.0])
    elif kind == "inf":
        data = np.array([1.0, 2.0, np.inf, 4.0])
    elif kind == "overflows_float32":
        data = np.array([1.0, 1e39, 3.0, 4.0])
    elif kind == "decreasing_indptr":
        indptr = np.array([0, 3, 2, 3, 4])
    elif kind == "indptr_past_the_end":
        indptr = np.array([0, 2, 2, 3, 5])
    elif kind == "indptr_not_from_0":
        indptr = np.array([1, 2, 2, 3, 4])
    elif kind == "indptr_overflows_int64":
        indptr = np.array([0, 2, 2, 3, 2**64 - 1], dtype=np.uint64)
    elif kind == "complex":
        data = data.astype(np.complex128)
    X = scipy.sparse.csr_matrix((4, 10))
    X.data, X.indices, X.indptr = data, indices, indptr   # past scipy's own checks
    return X


BAD = {"column_too_large": ValueError, "negative_column": ValueError, "nan": ValueError,
       "inf": ValueError, "overflows_float32": ValueError, "decreasing_indptr": ValueError,
       "indptr_past_the_end": ValueError, "indptr_not_from_0": ValueError,
       "indptr_overflows_int64": ValueError, "complex": TypeError}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("call", ["fit", "validation", "predict", "evaluate", "gradients"])
def test_bad_sparse_input_is_refused_and_the_model_unchanged(kind, call):
    X = malformed(kind)
    good = scipy.sparse.csr_matrix(np.eye(4, 10))
    y = np.array([0, 1, 2, 1])
    model = fastbp.MLP([10, 5, 3], ["relu", "softmax"], dtype="float32", seed=0)
    before = model.parameter_vector()
    trainer = fastbp.Trainer("cce", epochs=1, batch_size=2, seed=0)
    with pytest.raises(BAD[kind]):
        if call == "fit":
            trainer.fit(model, X, y)
        elif call == "validation":
            trainer.fit(model, good, y, validation_data=(X, y))
        elif call == "predict":
            model.predict(X)
        elif call == "evaluate":
            model.evaluate(X, y, "cce")
        else:
            model.gradients(X, y, "cce")
    np.testing.assert_array_equal(model.parameter_vector(), before)


@pytest.mark.parametrize("X, message", [
    (scipy.sparse.csr_matrix((0, 10)), "no rows"),
    (scipy.sparse.csr_matrix((3, 11)), "11 columns"),
    (scipy.sparse.coo_array(np.ones(10)), "2-D"),
])
def test_sparse_shapes_that_do_not_fit_are_refused(X, message):
    model = fastbp.MLP([10, 3], ["softmax"], seed=0)
    with pytest.raises(ValueError, match=message):
        model.predict(X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("target, value", [("indices", 40), ("indices", -3),
                                           ("indices", 2**62), ("indptr", 10**9),
                                           ("indptr", -5)])
def test_a_sparse_x_rewritten_between_epochs_raises(dtype, shuffle, optimizer, target, value):
    X, y = sparse_data(dtype=dtype)   # 40 columns
    X.indices = X.indices.astype(np.intp)
    X.indptr = X.indptr.astype(np.intp)
    index = 17 if target == "indices" else 30
    model = model_for(X, dtype=dtype)
    rewrite = RewriteAfterFirstEpoch(getattr(X, target), index, value)
    trainer = fastbp.Trainer("cce", optimizer=optimizer, epochs=3, batch_size=8,
                             shuffle=shuffle, seed=0)
    with pytest.raises(ValueError, match="holds an index out of range"):
        trainer.fit(model, X, y, callbacks=[rewrite])
    # the failed epoch left nothing behind
    np.testing.assert_array_equal(model.parameter_vector(), rewrite.after_first)
    # and the passes without training refuse it too
    for call in (lambda: model.predict(X), lambda: model.evaluate(X, y, "cce"),
                 lambda: model.gradients(X, y, "cce")):
        with pytest.raises(ValueError):
            call()


class KeepStateAfterFirstEpoch(RewriteAfterFirstEpoch):
    """RewriteAfterFirstEpoch that also keeps the trainer's optimizer state it saw."""

    def __init__(self, trainer, array, index, value):
        super().__init__(array, index, value)
        self.trainer, self.state_after_first = trainer, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.state_after_first = self.trainer._state.copy()
        super().on_epoch_end(epoch, logs)


UNDONE_FITS = dict(FITS, **LAZY_FITS)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", sorted(UNDONE_FITS) + ["adam_every_row"])
@pytest.mark.parametrize("failure", ["diverged", "index"])
def test_an_undone_epoch_restores_w1_and_its_state_exactly(monkeypatch, dtype, fit, failure):
    """A sparse fit copies W1's rows into its RowLog as the epoch changes them, not W1
    whole: an epoch that diverges (a value of X rewritten to NaN, read by the forward pass of
    its last batch) or meets an index out of range (rewritten likewise) gives back the
    parameters and the optimizer state of its start, bit for bit, under every rule
    (named rows, lazy catch-ups at the epoch's end, rules that log every row)."""
    if fit == "adam_every_row":
        monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")
    options = UNDONE_FITS.get(fit, UNDONE_FITS["adam"])
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, dtype=dtype, seed=5)
    X.indices = X.indices.astype(np.intp)
    X.indptr = X.indptr.astype(np.intp)
    model = model_for(X, dtype=dtype)
    trainer = fastbp.Trainer("cce", epochs=3, batch_size=8, shuffle=False, seed=0,
                             n_threads=1, **options)
    last = X.indptr[-2]                               # a value of the last row
    if failure == "diverged":
        keep = KeepStateAfterFirstEpoch(trainer, X.data, last, np.nan)
        with pytest.warns(RuntimeWarning, match="diverged"):
            history = trainer.fit(model, X, y, callbacks=[keep])
        assert len(history.loss) == 1
    else:
        keep = KeepStateAfterFirstEpoch(trainer, X.indices, last, 300)
        with pytest.raises(ValueError, match="holds an index out of range"):
            trainer.fit(model, X, y, callbacks=[keep])
    np.testing.assert_array_equal(model.parameter_vector(), keep.after_first)
    np.testing.assert_array_equal(trainer._state, keep.state_after_first)
    assert trainer._state.shape[0] == 0 or np.any(trainer._state[:, :300 * 7])


class PlantAfterFirstEpoch(fastbp.callbacks.Callback):
    """Writes inf into the trainer's optimizer state (its last row: Adam's second moment)
    at `index`, at the end of epoch 0."""

    def __init__(self, trainer, index):
        super().__init__()
        self.trainer, self.index = trainer, index

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.trainer._state[-1, self.index] = np.inf


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["named_row_state", "last_batch_row_state",
                                  "second_layer_state", "caught_up_row_state"])
def test_an_overflowed_optimizer_state_of_a_sparse_fit_is_divergence(dtype, case):
    """An update can overflow with a finite loss (Adam's g^2 past the dtype's largest: the
    weight then stops moving, silently). Planted between epochs: inf in the second moment
    of a row of W1 the next epoch names (its lazy step keeps it inf and the weights
    finite; one the last batch names is up to date when the epoch's end checks it, one
    named earlier is caught up first), of the second layer, or of a row no batch names that
    the epoch's end catches up (decoupled decay moves every row: the rows of W1 the
    end-of-epoch check reads are those the epoch changed), ends that epoch as diverged,
    undone to its start."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, dtype=dtype, seed=5)
    named = np.unique(X.indices)
    unnamed = np.setdiff1d(np.arange(300), named)
    hidden = 7
    model = model_for(X, hidden=(hidden,), dtype=dtype)
    decay = dict(weight_decay=0.01, decoupled_weight_decay=True) \
        if case == "caught_up_row_state" else {}
    trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, epochs=3,
                             batch_size=8, shuffle=False, seed=0, n_threads=1, **decay)
    last_batch = np.setdiff1d(X.indices[X.indptr[88]:], X.indices[:X.indptr[80]])
    assert last_batch.size and named[3] not in X.indices[X.indptr[88]:]
    index = {"named_row_state": named[3] * hidden + 2,
             "last_batch_row_state": last_batch[0] * hidden + 2,
             "second_layer_state": 300 * hidden + hidden + 4,
             "caught_up_row_state": unnamed[5] * hidden + 1}[case]
    keep = KeepStateAfterFirstEpoch(trainer, np.zeros(1), 0, 0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = trainer.fit(model, X, y,
                              callbacks=[keep, PlantAfterFirstEpoch(trainer, index)])
    assert len(history.loss) == 1 and history.diverged
    np.testing.assert_array_equal(model.parameter_vector(), keep.after_first)
    expected = keep.state_after_first.copy()
    expected[-1, index] = np.inf          # the epoch's start, as the callback left it
    np.testing.assert_array_equal(trainer._state, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("defer", [True, False])
def test_the_row_log_holds_only_the_rows_an_epoch_changes(dtype, defer):
    """Plain SGD changes only the rows its batches name, momentum without decay only the
    rows with a velocity, SGD with decay every row: what train_epoch logs, but for the rows
    only the epoch's end catches up, which it leaves unlogged to the very end where their
    catch-up is proven finite (defer_flush; with it off, it logs them too)."""
    X, y = sparse_data(n_rows=40, n_cols=300, density=0.01, dtype=dtype, seed=5)
    named = np.unique(X.indices).size
    logged = {}
    previous = _core.row_log_settings(defer_flush=defer)
    try:
        for name, options in [("sgd", dict(optimizer=optimizers.SGD(0.1))),
                              ("momentum", dict(optimizer=optimizers.SGD(0.1, momentum=0.9))),
                              ("decay", dict(optimizer=optimizers.SGD(0.1), weight_decay=0.01))]:
            model = model_for(X, dtype=dtype)
            trainer = fastbp.Trainer("cce", epochs=1, batch_size=8, seed=0, n_threads=1,
                                     **options)
            logged[name] = []
            for _ in range(2):                        # the second epoch starts with velocity
                trainer.fit(model, X, y)
                logged[name].append(kept_row_log(trainer)[1].n_logged)
    finally:
        _core.row_log_settings(*previous)
    assert 0 < named < 300
    assert logged["sgd"] == [named, named]
    assert logged["momentum"] == [named, named]
    assert logged["decay"] == ([named, named] if defer else [300, 300])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", sorted(set(LAZY_FITS) - {"rmsprop_coupled"}   # every row
                                        | {"momentum", "nesterov"}))        # each step
@pytest.mark.parametrize("n_threads", [1, 2])
def test_rows_left_to_the_epochs_end_unlogged_give_the_same_bits(dtype, fit, n_threads):
    """The end of an epoch catches up the rows it has not logged last, unlogged, where
    flush_bound proves their catch-up finite (row_log_settings' defer_flush): the same
    arithmetic as logging them first, so the same bits, through fits of several epochs
    and partial_fit calls (whose one batch leaves nearly every row with a state to the
    end); fewer rows logged."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, dtype=dtype, seed=5)
    runs = {}
    for defer in (False, True):
        previous = _core.row_log_settings(defer_flush=defer)
        try:
            model = model_for(X, dtype=dtype)
            trainer = fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0,
                                     n_threads=n_threads, **LAZY_FITS.get(fit, FITS.get(fit)))
            trainer.fit(model, X, y)
            logged = []
            for start in (0, 8, 40):
                trainer.partial_fit(model, X[start:start + 8], y[start:start + 8])
                logged.append(kept_row_log(trainer)[1].n_logged)
            runs[defer] = (model.parameter_vector(), trainer._state.copy(), logged)
        finally:
            _core.row_log_settings(*previous)
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    np.testing.assert_array_equal(runs[True][1], runs[False][1])
    assert all(d <= k for d, k in zip(runs[True][2], runs[False][2]))
    assert sum(runs[True][2]) < sum(runs[False][2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("planted", [np.inf, np.nan, "huge"])
@pytest.mark.parametrize("fit", ["momentum_decay", "adamw"])
@pytest.mark.parametrize("hidden, column", [(7, 1), (37, 0), (37, 33)])
def test_a_row_left_to_the_end_is_logged_unless_its_catch_up_is_proven_finite(
        dtype, planted, fit, hidden, column):
    """A row of W1 no batch of the epoch names, whose weights or state hold a value too
    large to bound (or not finite), is logged and caught up with the rows the epoch
    changed, before the finiteness check; its catch-up overflows, so the epoch ends as
    diverged and is undone: the rows left to the end (every other row: decay moves them
    all) have not been touched, and the whole model and state are as at the epoch's
    start, bit for bit. (Rows of 7 and 37 values: the bound's vector loop and its tail.)"""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, dtype=dtype, seed=5)
    unnamed = np.setdiff1d(np.arange(300), np.unique(X.indices))
    model = model_for(X, hidden=(hidden,), dtype=dtype)
    rule = {"momentum_decay": dict(optimizer=optimizers.SGD(0.05, momentum=0.9),
                                   weight_decay=0.01),
            "adamw": LAZY_FITS["adamw"]}[fit]
    trainer = fastbp.Trainer("cce", epochs=1, batch_size=8, seed=0, n_threads=1, **rule)
    trainer.fit(model, X, y)
    largest = float(np.finfo(dtype).max)
    index = unnamed[5] * hidden + column
    # a value that is not finite, or one the catch-up takes past the largest: a weight
    # and a coupled velocity both of the largest size, or Adam's first moment with no
    # second moment to divide it (m / eps)
    trainer._state[0, index] = -largest if planted == "huge" else planted
    if fit == "adamw":
        trainer._state[1, index] = 0
    else:
        model._params[index] = largest if planted == "huge" else 1.0
    before, state_before = model.parameter_vector(), trainer._state.copy()
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = trainer.fit(model, X, y)
    assert history.diverged
    np.testing.assert_array_equal(model.parameter_vector(), before)
    np.testing.assert_array_equal(trainer._state, state_before)


def kept_row_log(trainer):
    """(shape, log) of the row log the trainer keeps for its next sparse fit."""
    (shape, log), = [(key[1] + (key[2],), buffer) for key, buffer in trainer._buffers.items()
                     if key[0] == "row log"]
    return shape, log


def test_a_trainer_keeps_its_row_log_for_the_next_sparse_fit_of_the_same_shape():
    """The row log's memory is kept by the trainer from one sparse fit to the next of the
    same shape (a fit of one epoch, partial_fit: a new log's first writes fault page by
    page), with the same results as a new log each fit, an epoch of a later fit still
    undone exactly; another shape or rule state gets a new log, reset() and pickling
    drop it."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, seed=5)

    def fits(trainer, model, n_fits=3):
        for _ in range(n_fits):
            trainer.fit(model, X, y)
        return model.parameter_vector(), trainer._state.copy()

    trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, epochs=1,
                             batch_size=8, seed=0, n_threads=1)
    model = model_for(X)
    trainer.fit(model, X, y)
    log = kept_row_log(trainer)[1]
    assert 0 < log.n_logged < 300
    kept = fits(trainer, model)
    assert kept_row_log(trainer)[1] is log
    fresh_trainer = fastbp.Trainer("cce", optimizer="adam", learning_rate=0.01, epochs=1,
                                   batch_size=8, seed=0, n_threads=1)
    fresh_model = model_for(X)
    fresh_trainer.fit(fresh_model, X, y)
    for _ in range(3):
        fresh_trainer._buffers = {}                  # new buffers each fit, as before
        fresh_trainer.fit(fresh_model, X, y)
    np.testing.assert_array_equal(kept[0], fresh_model.parameter_vector())
    np.testing.assert_array_equal(kept[1], fresh_trainer._state)
    # the second epoch of a fit of two (on the kept log) diverges: undone from the log,
    # bit for bit; a fit of more than one epoch keeps nothing for the next
    bad = X.copy()
    keep = KeepStateAfterFirstEpoch(trainer, bad.data, bad.indptr[-2], np.nan)
    trainer.epochs = 2
    with pytest.warns(RuntimeWarning, match="diverged"):
        trainer.fit(model, bad, y, callbacks=[keep])
    trainer.epochs = 1
    assert trainer._buffers == {}
    np.testing.assert_array_equal(model.parameter_vector(), keep.after_first)
    np.testing.assert_array_equal(trainer._state, keep.state_after_first)
    trainer.fit(model, X, y)
    log = kept_row_log(trainer)[1]

    # two fits at once on one trainer (another model of the same shape, started from a
    # callback of the first): each has a log of its own, the first gives its back last
    class FitAnother(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert trainer._buffers == {}              # the running fit holds `log`
            trainer.fit(model_for(X, seed=1), X, y)
            self.other = kept_row_log(trainer)[1]

    another = FitAnother()
    trainer.fit(model, X, y, callbacks=[another])
    assert another.other is not log and kept_row_log(trainer)[1] is log
    # another width, another rule's state rows, another dtype: a new log of that shape
    trainer.fit(model_for(X, hidden=(5,)), X, y)
    assert kept_row_log(trainer)[0] == (300, 5, 2, np.float64)
    trainer.optimizer = optimizers.SGD(0.1, momentum=0.9)
    trainer.fit(model, X, y)
    assert kept_row_log(trainer)[0] == (300, 7, 1, np.float64)
    trainer.fit(model_for(X, dtype="float32"), X.astype(np.float32), y)
    assert kept_row_log(trainer)[0] == (300, 7, 1, np.float32)
    import pickle
    copy = pickle.loads(pickle.dumps(trainer))
    assert copy._buffers == {} and trainer._buffers != {}
    copy.fit(model_for(X), X, y)
    trainer.reset()
    assert trainer._buffers == {}


OUT_OF_MEMORY_FIT = """
import resource
import numpy as np, scipy.sparse, fastbp
X = scipy.sparse.random(400, 200_000, density=5e-4, format="csr", random_state=0,
                        dtype=np.float32)
y = np.random.default_rng(0).integers(0, 3, 400)
model = fastbp.MLP([200_000, 64, 3], ["relu", "softmax"], dtype="float32", seed=0)
trainer = fastbp.Trainer("cce", optimizer="sgd", learning_rate=0.1, epochs=1,
                         batch_size=16, seed=0, n_threads=1)
trainer.fit(model, X, y)     # everything imported and measured, the log kept holding the
trainer.weight_decay = 0.01  # named rows (a few MB); then an epoch logs every row (decay,
fastbp._core.row_log_settings(defer_flush=False)   # its end's catch-ups logged too)
before = model.parameter_vector()   # into 53 MB of log, with room for 24 MB
size = int([line for line in open("/proc/self/status")
            if line.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (24 << 20), resource.RLIM_INFINITY))
try:
    trainer.fit(model, X, y)
    raise SystemExit("no MemoryError")
except MemoryError as error:
    assert "kept to undo it" in str(error), error
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
assert np.array_equal(model.parameter_vector(), before)
trainer.fit(model, X, y)     # and the next fit trains
assert not np.array_equal(model.parameter_vector(), before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, /proc (Linux)")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan's shadow memory takes more address space than the limit")
def test_an_epoch_whose_row_log_runs_out_of_memory_is_undone():
    """The log grows as the epoch changes rows; when it cannot (here an address-space limit
    set part-way), the epoch stops before changing the row it could not keep, the trainer
    undoes it and raises MemoryError, and the model is as it was."""
    subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_FIT], check=True, timeout=300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "adagrad", "nesterov"])
def test_lazy_rules_never_touch_w1s_part_of_the_gradient_buffer(dtype, optimizer):
    """The rules that step from a gradient make each named row's gradient apart and step
    it at once (sparse_row_steps): W1's part of the workspace's gradient buffer is never
    written or read (a NaN left there changes nothing), so its pages are never touched."""
    X, y = sparse_data(n_rows=90, n_cols=300, density=0.02, dtype=dtype, seed=5)
    rows = _core.SparseRows(X.data, X.indices.astype(np.intp), X.indptr.astype(np.intp), 300)
    rule = dict(adam=dict(optimizer=_core.OPTIMIZER_CODES["adam"]),
                rmsprop=dict(optimizer=_core.OPTIMIZER_CODES["rmsprop"]),
                adagrad=dict(optimizer=_core.OPTIMIZER_CODES["adagrad"]),
                nesterov=dict(optimizer=_core.OPTIMIZER_CODES["momentum"], momentum=0.9,
                              nesterov=True))[optimizer]
    results = []
    for fill in (0.0, np.nan):
        model = model_for(X, dtype=dtype)
        plan, work = model._workspace(8, with_gradient=True, sparse=True)
        w1 = slice(plan.gradient_offset, plan.gradient_offset + 300 * 7)
        work[w1] = fill
        hyperparameters = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"],
                                                learning_rate=0.01, **rule)
        state = np.zeros((hyperparameters.state_rows, model.n_params), dtype=dtype)
        for _ in range(3):
            _core.train_epoch(plan, hyperparameters, model._params, work, state,
                              np.empty((0, 0), dtype), np.empty((0, 0), dtype),
                              y.astype(np.intp), np.empty(0, dtype),
                              np.random.default_rng(0).permutation(90).astype(np.intp), 8, 0,
                              sparse=rows)
        if np.isnan(fill):
            assert np.isnan(work[w1]).all()
        results.append((model.parameter_vector(), state.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert np.isfinite(results[1][0]).all()


def test_the_row_log_is_checked_against_the_fit():
    X, y = sparse_data(dtype="float64")
    model = model_for(X, dtype="float64")
    log = _core.RowLog(40, 7, 0, "float64")
    with pytest.raises(ValueError, match="no log"):
        _core.RowLog(40, 7, -1, "float64")
    with pytest.raises(ValueError, match="no log"):
        _core.RowLog(40, 7, 0, "int32")
    with pytest.raises(TypeError, match="holds float64"):
        log.restore(np.zeros(300, np.float32), np.zeros((0, 300), np.float32))
    with pytest.raises(ValueError, match="state's row count"):
        log.restore(model._params, np.zeros((1, model.n_params)))
    with pytest.raises(ValueError, match="must hold"):
        log.restore(np.zeros(10), np.zeros((0, 10)))
    rows = _core.SparseRows(X.data, X.indices.astype(np.intp), X.indptr.astype(np.intp), 40)
    plan, work = model._workspace(8, sparse=True)
    hyperparameters = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"])
    for wrong in (_core.RowLog(41, 7, 0, "float64"), _core.RowLog(40, 8, 0, "float64"),
                  _core.RowLog(40, 7, 1, "float64")):
        with pytest.raises(ValueError, match="row log"):
            _core.train_epoch(plan, hyperparameters, model._params, work,
                              np.zeros((0, model.n_params)), np.empty((0, 0)),
                              np.empty((0, 0)), y.astype(np.intp), np.empty(0),
                              np.empty(0, np.intp), 8, 0, sparse=rows, row_log=wrong)


def test_the_core_refuses_sparse_calls_that_do_not_fit():
    X, y = sparse_data(dtype="float32")
    model = model_for(X, dtype="float64")
    rows = _core.SparseRows(X.data, X.indices.astype(np.intp), X.indptr.astype(np.intp), 40)
    plan, work = model._workspace(8, sparse=True)
    out = np.empty((X.shape[0], 3))
    with pytest.raises(ValueError, match="float32"):
        _core.predict(plan, model._params, work, np.empty((0, 0)), out, rows)
    with pytest.raises(ValueError, match="sparse X; X is dense"):
        _core.predict(plan, model._params, work, X.toarray().astype(np.float64), out)
    with pytest.raises(ValueError, match="same length"):
        _core.SparseRows(X.data[:-1], rows.indices, rows.indptr, 40)


# ---------------------------------------------------------------- memory

def test_a_very_wide_csr_fit_allocates_far_less_than_its_dense_form(monkeypatch, tmp_path):
    # A cache folder of its own: the measured choices' cache file is read whole inside the
    # traced window, and the suite's shared one grows with every test before (an 800 KB
    # file took the peak from 2.6 to 6.2 MB; the checked build's suite once ended at 4.03)
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    n_rows, n_cols = 2_000, 1_000_000
    rng = np.random.default_rng(0)
    nnz_per_row = 10
    indices = np.sort(rng.choice(n_cols, size=(n_rows, nnz_per_row), replace=True), axis=1)
    X = scipy.sparse.csr_matrix((rng.uniform(0.1, 1, n_rows * nnz_per_row).astype(np.float32),
                                 indices.ravel(),
                                 np.arange(0, n_rows * nnz_per_row + 1, nnz_per_row)),
                                shape=(n_rows, n_cols))
    y = rng.integers(0, 2, size=n_rows)
    model = fastbp.MLP([n_cols, 4, 2], ["relu", "softmax"], dtype="float32", seed=0)
    params_bytes = model.n_params * 4
    dense_bytes = n_rows * n_cols * 4                       # 8 GB
    trainer = fastbp.Trainer("cce", epochs=1, batch_size=64, seed=0)
    tracemalloc.start()
    try:
        trainer.fit(model, X, y)
        predictions = model.predict(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert predictions.shape == (n_rows, 2)
    # the fit's own: the RowLog (a flag byte a row of W1, and the rows the epoch changed,
    # 2% of them: not a copy of W1; 2.2 MiB in all against 15.3 of parameters when
    # written), the workspace, the data checks
    assert peak < 0.25 * params_bytes, peak
    assert peak < dense_bytes / 200


def test_fits_on_sparse_input_warn_about_nothing():
    X, y = sparse_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastbp.Trainer("cce", epochs=1, batch_size=8, seed=0).fit(model_for(X), X, y)


def csr_arrays(case, dtype):
    """(values, indices, indptr, n_rows, n_columns) of a 4 x 6 CSR matrix, plain or with
    one irregularity (`case`), for plain_sparse_rows and as_sparse_rows."""
    values = np.array([1.5, -2.0, 0.25, 3.0, 4.0, -1.0], dtype=dtype)
    indices = np.array([0, 4, 2, 2, 5, 1], dtype=np.int32)
    indptr = np.array([0, 2, 2, 5, 6], dtype=np.int32)      # row 1 empty; row 2 repeats 2
    if case == "int64":
        indices, indptr = indices.astype(np.intp), indptr.astype(np.intp)
    elif case == "empty":
        values, indices, indptr = values[:0], indices[:0], np.zeros(5, np.int32)
    elif case == "stored past nnz":
        values, indices = np.append(values, 9.0).astype(dtype), np.append(indices, 3)
        indices = indices.astype(np.int32)
    elif case == "unsorted":
        indices[:2] = indices[1::-1]
    elif case == "column past the width":
        indices[3] = 6
    elif case == "negative column":
        indices[0] = -1
    elif case == "indptr from 1":
        indptr[0] = 1
    elif case == "indptr decreasing":
        indptr[2] = 1
    elif case == "indptr past the arrays":
        indptr[-1] = 7
    elif case in ("nan", "inf"):
        values[4] = np.nan if case == "nan" else np.inf
    elif case == "other value dtype":
        values = values.astype(np.float64 if dtype == np.float32 else np.float32)
    elif case == "uint32 indices":
        indices, indptr = indices.astype(np.uint32), indptr.astype(np.uint32)
    elif case == "mixed index types":
        indptr = indptr.astype(np.intp)
    elif case == "strided values":
        values = np.repeat(values, 2)[::2]
    elif case == "big-endian values":
        values = values.astype(values.dtype.newbyteorder(">"))
    elif case == "big-endian indices":
        indices, indptr = indices.astype(">i4"), indptr.astype(">i4")
    elif case == "unaligned values":
        raw = np.zeros(values.nbytes + 1, np.uint8)
        shifted = np.frombuffer(raw.data, values.dtype, values.size, offset=1)
        shifted[...] = values
        values = shifted
    return values, indices, indptr, 4, 6


PLAIN_CASES = ["plain", "int64", "empty", "stored past nnz"]
OTHER_CASES = ["unsorted", "column past the width", "negative column", "indptr from 1",
               "indptr decreasing", "indptr past the arrays", "nan", "inf",
               "other value dtype", "uint32 indices", "mixed index types", "strided values",
               "big-endian values", "big-endian indices", "unaligned values"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", PLAIN_CASES + OTHER_CASES)
def test_plain_csr_arrays_are_checked_in_one_pass_as_the_general_checks_do(monkeypatch,
                                                                           dtype, case):
    """_core.plain_sparse_rows takes the plain CSR matrices (sorted in-range columns,
    finite values of the model's dtype, int32 or np.intp indices) and gives the arrays
    as_sparse_rows's general checks give; anything else it leaves to those checks (None),
    which convert, sort or refuse it with the same error as before."""
    from fastbp import _validation
    values, indices, indptr, n_rows, n_columns = csr_arrays(case, dtype)
    plain = _core.plain_sparse_rows(values, indices, indptr, n_rows, n_columns,
                                    np.dtype(dtype))
    assert (plain is not None) == (case in PLAIN_CASES), case
    matrix = scipy.sparse.csr_matrix((n_rows, n_columns), dtype=dtype)
    matrix.data, matrix.indices, matrix.indptr = values, indices, indptr   # not checked

    def checked():
        try:
            rows = _validation.as_sparse_rows(matrix, "X", np.dtype(dtype), n_columns)
        except (ValueError, TypeError) as error:
            return type(error), str(error)
        return [(array.dtype, array.tolist()) for array in (rows.data, rows.indices,
                                                            rows.indptr)]
    fast = checked()
    monkeypatch.setattr(_core, "plain_sparse_rows", lambda *arguments: None)
    assert fast == checked(), case
    if plain is not None:
        assert [(array.dtype, array.tolist()) for array in
                (plain.data, plain.indices, plain.indptr)] == fast


@pytest.mark.parametrize("fit", ["momentum", "nesterov", "adam", "rmsprop", "adamw",
                                 "momentum_decay"])
def test_rows_whose_state_is_known_to_be_zero_are_skipped_with_the_same_bits(fit):
    """The end of a sparse epoch under a lazy rule skips, unread, the rows of W1 whose
    optimizer state the trainer knows to be all 0 (Trainer._moving_rows: rows no epoch has
    changed since the state was made; the epochs mark the rows they log): the same bits
    as reading every row's state, through fits that change the state otherwise (a dense
    fit moves every row, unpickling a trainer, bind) and fits that name other rows."""
    X, y = sparse_data(n_rows=60, n_cols=300, density=0.02, seed=5)
    other, _ = sparse_data(n_rows=60, n_cols=300, density=0.02, seed=6)
    dense = np.random.default_rng(1).normal(size=(60, 300))
    named = np.unique(X.indices)

    def run(forced):
        """The fits in turn; forced: every row's state read (moving rows all 1)."""
        model = model_for(X)
        trainer = fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=1,
                                 **FITS[fit])
        steps = [lambda t: t.fit(model, X, y), lambda t: t.fit(model, other, y),
                 lambda t: t.fit(model, dense, y), lambda t: t.fit(model, other, y),
                 lambda t: t.partial_fit(model, X, y)]
        for index, step in enumerate(steps):
            if index == 4:               # a trainer pickled apart from its model
                trainer = pickle.loads(pickle.dumps(trainer))
                trainer.bind(model)
            if forced:
                trainer._moving_rows = np.ones(300, dtype=np.uint8)
            step(trainer)
            if index == 2:                   # not known after a dense fit
                assert trainer._moving_rows is None
                continue
            state_rows = trainer._state[:, :300 * 7].reshape(-1, 300, 7).any(axis=(0, 2))
            assert np.all(trainer._moving_rows >= state_rows)
            if index == 0 and not forced:    # the rows the first fit changed: those it
                # named, or with decay every row (its epochs' ends catch them all up)
                np.testing.assert_array_equal(
                    np.flatnonzero(trainer._moving_rows),
                    np.arange(300) if FITS[fit].get("weight_decay") else named)
        return model.parameter_vector(), trainer._state.copy()

    (params, state), (forced_params, forced_state) = run(False), run(True)
    np.testing.assert_array_equal(params, forced_params)
    np.testing.assert_array_equal(state, forced_state)


def test_the_core_refuses_moving_rows_it_cannot_keep():
    """train_epoch's moving_rows must have a byte per row of W1 and come with the row log
    whose rows it marks."""
    X, y = sparse_data(n_rows=20, n_cols=30)
    model = model_for(X)
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=1, batch_size=8, n_threads=1)
    calls = []
    with mock.patch.object(_core, "train_epoch",
                           side_effect=lambda *args, **kwargs: calls.append((args, kwargs))
                           or (0.0, 1.0, 20, _core.Status.COMPLETED)):
        trainer.fit(model, X, y)
    (args, kwargs), = calls
    args = list(args)
    assert isinstance(args[17], _core.RowLog) and kwargs["moving_rows"].shape == (30,)
    for moving_rows, row_log in ((np.zeros(29, dtype=np.uint8), args[17]),
                                 (np.zeros(30, dtype=np.uint8), None)):
        args[17] = row_log
        with pytest.raises(ValueError, match="moving_rows"):
            _core.train_epoch(*args, **dict(kwargs, moving_rows=moving_rows))


def test_an_error_before_the_epoch_starts_its_log_never_restores_the_last_epochs_rows(
        monkeypatch):
    """The row log holds the last epoch's rows until the next epoch starts it afresh; an
    error raised before the core began that epoch (here: the call itself refused) had the
    trainer restore those rows, putting W1 back to the start of the epoch before, with the
    rest of the model where it was. The log is emptied before each epoch."""
    rng = np.random.default_rng(2)
    X = scipy.sparse.random(40, 300, density=0.05, format="csr", random_state=rng)
    y = rng.integers(0, 3, 40)
    model = fastbp.MLP([300, 8, 3], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=1, batch_size=8, seed=0,
                             n_threads=1)
    trainer.fit(model, X, y)
    after_first = model.parameter_vector()
    state = trainer._state.copy()

    def refused(*arguments, **options):
        raise ValueError("train_epoch: refused before it began")

    monkeypatch.setattr(fastbp.trainer._core, "train_epoch", refused)
    with pytest.raises(ValueError, match="refused before it began"):
        trainer.fit(model, X, y)
    np.testing.assert_array_equal(model.parameter_vector(), after_first)
    np.testing.assert_array_equal(trainer._state, state)


@pytest.mark.parametrize("batch_size", [20, 4])
def test_float32_lazy_adam_rows_step_as_the_dense_rule_rounds(batch_size):
    """A float32 sparse Adam fit's rows that caught up missed steps took Adam's bias
    corrections from the exact betas, where the dense rule's moments and corrections both
    take the dtype's (rounded) betas and their roundings cancel: 1 - beta2^t of float32's
    0.999 is 1.3e-5 off at t = 1, 2, and the fits ended 10x further from float64's than
    dense float32 fits (a review: 4.5e-4 against 2e-5 of max|W1|). (GCC dropped the
    rounding of the two betas' casts side by side, so they go through fbp_float_rounded.)"""
    rng = np.random.default_rng(0)
    X = scipy.sparse.random(40, 50, density=0.05, format="csr", random_state=0,
                            dtype=np.float32)
    y = rng.integers(0, 3, 40)

    def fitted(data):
        model = fastbp.MLP([50, 4, 3], ["tanh", "softmax"], dtype="float32", seed=0)
        fastbp.Trainer("cce", optimizer="adam", learning_rate=0.05, batch_size=batch_size,
                       seed=0, n_threads=1, shuffle=False).fit(model, data, y)
        return model.parameter_vector().astype(np.float64)

    # (before: 2.2e-7 and 1.2e-6 apart; the sums' order still rounds differently)
    assert np.abs(fitted(X) - fitted(X.toarray())).max() <= 1.5e-7
