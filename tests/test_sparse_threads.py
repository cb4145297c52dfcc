"""Sparse fits on several threads (issue 11 with issue 13's sparse input): under a lazy rule
the rows of W1 a batch names are brought up to date and stepped by n_threads threads, and
under a rule that steps every row its pass over W1 is shared (_core's _row_pool.pxi). A
row's arithmetic does not depend on the thread that does it, so every thread count gives
the same bits as one thread, for every rule, both dtypes, with dropout, sample weights,
validation and an undone epoch; plain SGD without decay and clipping run on one thread; a
pool that cannot start its threads trains on the calling thread."""
import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp import _core
from test_sparse import LAZY_FITS, UNDONE_FITS, KeepStateAfterFirstEpoch, model_for


def wide_batches(n_rows=72, n_cols=900, dtype="float64", seed=3):
    """About 40 stored values a row over 900 columns: a batch of 8 names ~280 rows of W1,
    enough for three threads' chunks (the pool shares no fewer than 16 rows a thread), and
    most rows sit out steps between the batches that name them (their catch-ups run)."""
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(n_rows, n_cols, density=0.045, format="csr", random_state=rng,
                            dtype=np.float64)
    X.data = rng.uniform(-1.0, 1.0, size=X.nnz)
    X = X.astype(dtype)
    X.sort_indices()
    y = rng.integers(0, 3, size=n_rows)
    return X, y


def fit_on(threads, X, y, dtype, options, epochs=3, model_options=None, **fit_options):
    """The parameters, optimizer state and losses after a fit on `threads` threads, and
    the pool phases it ran."""
    model = model_for(X, hidden=(19,), dtype=dtype, **(model_options or {}))
    trainer = fastbp.Trainer("cce", epochs=epochs, batch_size=8, seed=0, n_threads=threads,
                             **options)
    before = _core.row_pool_settings()[0]
    history = trainer.fit(model, X, y, **fit_options)
    return (model.parameter_vector(), trainer._state.copy(), history,
            _core.row_pool_settings()[0] - before)


# The fits of UNDONE_FITS that run on one thread: plain SGD without decay (its step is the
# scatter) and clipping (the norm takes the whole gradient).
ONE_THREAD_FITS = {"sgd", "schedule", "clipped_sgd", "clipped_adam"}
# ... and those whose step passes over every row of W1 (one shared phase a step, no
# catch-up): Adagrad and RMSprop with coupled decay, Adam without its lazy rows.
EVERY_ROW_FITS = {"adagrad", "rmsprop_coupled", "adam_every_row"}


def hyperparameters(optimizer, **options):
    return _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"], **options,
                                 **optimizer.hyperparameters())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", sorted(UNDONE_FITS) + ["adam_every_row"])
def test_every_thread_count_gives_the_bits_of_one_thread(monkeypatch, dtype, fit):
    if fit == "adam_every_row":
        monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")
    options = UNDONE_FITS.get(fit, UNDONE_FITS["adam"])
    X, y = wide_batches(dtype=dtype)
    params, state, history, phases = fit_on(1, X, y, dtype, options)
    assert phases == 0
    shared = fit not in ONE_THREAD_FITS
    for threads in (2, 3):
        other_params, other_state, other_history, phases = fit_on(threads, X, y, dtype,
                                                                  options)
        np.testing.assert_array_equal(other_params, params)
        np.testing.assert_array_equal(other_state, state)
        assert other_history.loss == history.loss
        # the lazy rules share their rows: each step's catch-up, then its step (SGD with
        # decay has none: its decay is the catch-up's, its step the scatter's); the others
        # their pass over every row
        steps = 3 * -(-X.shape[0] // 8)
        per_step = 1 if fit.startswith("sgd_") or fit in EVERY_ROW_FITS else 2
        assert phases == (per_step * steps if shared else 0), (fit, threads, phases)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fit", ["adam", "nesterov_decay", "momentum_decay", "rmsprop"])
def test_dropout_sample_weights_and_validation_on_threads(dtype, fit):
    X, y = wide_batches(dtype=dtype)
    weights = np.random.default_rng(1).uniform(0.2, 2.0, size=X.shape[0])
    validation = (X[:20], y[:20])
    results = [fit_on(threads, X, y, dtype, LAZY_FITS[fit], model_options=dict(dropout=0.3),
                      sample_weight=weights, validation_data=validation)
               for threads in (1, 2)]
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    for key in ("loss", "val_loss", "val_accuracy"):
        assert results[1][2].history[key] == results[0][2].history[key]
    assert results[1][3] > 0


@pytest.mark.parametrize("fit", ["adam", "momentum_decay", "nesterov_decoupled"])
def test_an_undone_epoch_on_threads_restores_w1_and_its_state_exactly(fit):
    """As test_sparse's undone epochs, with the rows shared by two threads."""
    X, y = wide_batches()
    X.indices = X.indices.astype(np.intp)
    X.indptr = X.indptr.astype(np.intp)
    model = model_for(X, hidden=(19,))
    trainer = fastbp.Trainer("cce", epochs=3, batch_size=8, shuffle=False, seed=0,
                             n_threads=2, **LAZY_FITS[fit])
    keep = KeepStateAfterFirstEpoch(trainer, X.data, X.indptr[-2], np.nan)
    before = _core.row_pool_settings()[0]
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = trainer.fit(model, X, y, callbacks=[keep])
    assert len(history.loss) == 1
    assert _core.row_pool_settings()[0] > before
    np.testing.assert_array_equal(model.parameter_vector(), keep.after_first)
    np.testing.assert_array_equal(trainer._state, keep.state_after_first)


def test_a_pool_that_cannot_start_its_threads_trains_on_the_calling_thread():
    """pthread_create failing part way (forced: the pool starts 2 of 3 threads, then acts
    as if the third failed): the threads started stop, and the fit runs alone, unchanged."""
    X, y = wide_batches()
    reference = fit_on(1, X, y, "float64", LAZY_FITS["adam"])
    previous = _core.row_pool_settings(start_limit=2)
    try:
        result = fit_on(3, X, y, "float64", LAZY_FITS["adam"])
    finally:
        _core.row_pool_settings(start_limit=previous[1])
    np.testing.assert_array_equal(result[0], reference[0])
    np.testing.assert_array_equal(result[1], reference[1])
    assert result[3] == 0


@pytest.mark.parametrize("fit", ["adam", "rmsprop_coupled", "adam_every_row"])
def test_a_pool_whose_memory_cannot_be_had_raises_and_leaves_the_fit_undone(monkeypatch,
                                                                            fit):
    """The pool's memory refused (forced): MemoryError with a message, the model, the
    optimizer state and the trainer's generator as before, and the next fit trains as a
    fit that never failed. (A rule that steps every row, lazy or not, freed a pointer it
    had never set on that way out: a segfault under an address-space limit.)"""
    if fit == "adam_every_row":
        monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")
    options = LAZY_FITS.get(fit, LAZY_FITS["adam"])
    X, y = wide_batches()
    reference = fit_on(2, X, y, "float64", options, epochs=2)
    model = model_for(X, hidden=(19,), dtype="float64")
    trainer = fastbp.Trainer("cce", epochs=2, batch_size=8, seed=0, n_threads=2, **options)
    parameters = model.parameter_vector()
    previous = _core.row_pool_settings(start_limit=-1)
    try:
        with pytest.raises(MemoryError, match="threads sharing W1's rows"):
            trainer.fit(model, X, y)
    finally:
        _core.row_pool_settings(start_limit=previous[1])
    np.testing.assert_array_equal(model.parameter_vector(), parameters)
    assert trainer._state is None and trainer._step == 0     # (as it was: none yet)
    trainer.fit(model, X, y)
    np.testing.assert_array_equal(model.parameter_vector(), reference[0])
    np.testing.assert_array_equal(trainer._state, reference[1])


def test_which_rules_share_rows(monkeypatch):
    def rule(optimizer, **options):
        return _core.shares_rows(hyperparameters(optimizer, **options))
    SGD, Adam = fastbp.optimizers.SGD, fastbp.optimizers.Adam
    assert not rule(SGD(0.1))                       # already only on the named rows
    assert rule(SGD(0.1), weight_decay=0.1)
    assert rule(SGD(0.1, momentum=0.9))
    assert rule(SGD(0.1, momentum=0.9, nesterov=True))
    assert rule(Adam())
    assert rule(Adam(), weight_decay=0.1, decoupled_weight_decay=True)
    assert not rule(Adam(), clip_norm=1.0)         # the norm takes the whole gradient
    assert not rule(SGD(0.1, momentum=0.9), clip_norm=1.0)
    assert rule(fastbp.optimizers.RMSprop(0.01), weight_decay=0.1)   # every row, every step
    monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")
    assert rule(Adam())


def test_the_core_refuses_a_sparse_thread_count_out_of_range():
    X, y = wide_batches()
    model = model_for(X, hidden=(19,))
    plan, work = model._workspace(8, sparse=True)
    rows = _core.SparseRows(X.data, X.indices.astype(np.intp), X.indptr.astype(np.intp),
                            X.shape[1])
    state = np.zeros((2, model.n_params))
    for n_workers in (0, 1025):
        with pytest.raises(ValueError, match="n_workers"):
            _core.train_epoch(plan, hyperparameters(fastbp.optimizers.Adam()), model._params, work, state,
                              np.empty((0, 0)), np.empty((0, 0)), y.astype(np.intp),
                              np.empty(0), np.empty(0, np.intp), 8, 0, n_workers=n_workers,
                              sparse=rows)


def test_the_default_thread_count_is_chosen_on_the_fits_own_epochs(monkeypatch):
    """n_threads=None under a rule that shares rows: the first epoch on one thread, the
    second on the allowed threads, then the faster; the bits of a one-thread fit; the
    Trainer keeps the choice for its next fit of the same network and rule."""
    monkeypatch.delenv("FASTBP_THREADS", raising=False)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: 3)
    X, y = wide_batches()
    reference = fit_on(1, X, y, "float64", LAZY_FITS["adam"], epochs=4)
    phases = []

    class PoolPhases(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            phases.append(_core.row_pool_settings()[0])

    model = model_for(X, hidden=(19,))
    trainer = fastbp.Trainer("cce", epochs=4, batch_size=8, seed=0, **LAZY_FITS["adam"])
    start = _core.row_pool_settings()[0]
    trainer.fit(model, X, y, callbacks=[PoolPhases()])
    np.testing.assert_array_equal(model.parameter_vector(), reference[0])
    np.testing.assert_array_equal(trainer._state, reference[1])
    per_epoch = np.diff([start] + phases)
    steps = -(-X.shape[0] // 8)
    (choice,) = trainer._sparse_threads.values()
    assert sorted(choice.rates) == [1, 3]
    faster = max(choice.rates, key=choice.rates.get)
    assert list(per_epoch) == [0, 2 * steps] + [2 * steps if faster == 3 else 0] * 2
    trainer.fit(model, X, y)                     # the same choice, no new measurement
    assert trainer._sparse_threads == {next(iter(trainer._sparse_threads)): choice}
    assert sorted(choice.rates) == [1, 3]
    # rates of this process and machine: a pickled or copied trainer measures its own
    import copy
    import pickle
    for other in (pickle.loads(pickle.dumps(trainer)), copy.deepcopy(trainer)):
        assert other._sparse_threads == {}
    assert sorted(choice.rates) == [1, 3]


def test_a_sparse_thread_choice_takes_the_faster_count():
    choice = fastbp._threads.SparseThreadChoice(4)
    assert choice.next() == 1
    choice.record(1, 1000.0)
    assert choice.next() == 4
    choice.record(4, 1500.0)
    assert [choice.next() for _ in range(3)] == [4, 4, 4]
    choice.record(4, 10.0)                       # later epochs do not change it
    assert choice.next() == 4
    slower = fastbp._threads.SparseThreadChoice(2)
    slower.record(1, 1000.0)
    slower.record(2, 900.0)
    assert slower.next() == 1


@pytest.mark.parametrize("pinned, allowed, expected", [("2", 3, 2), ("5", 3, 3), (None, 1, 1)])
def test_the_sparse_default_obeys_fastbp_threads_and_the_callers_limit(monkeypatch, pinned,
                                                                      allowed, expected):
    if pinned is None:
        monkeypatch.delenv("FASTBP_THREADS", raising=False)
    else:
        monkeypatch.setenv("FASTBP_THREADS", pinned)
    monkeypatch.setattr(fastbp._threads, "allowed_threads", lambda: allowed)
    assert fastbp._threads.sparse_fit_threads(None, True, {}, "key") == (expected, 1, None)
    # an explicit count is the pool's; a rule that shares no rows trains on one worker
    assert fastbp._threads.sparse_fit_threads(3, True, {}, "key") == (3, 1, None)
    assert fastbp._threads.sparse_fit_threads(None, False, {}, "key") == (1, 1, None)
    assert fastbp._threads.sparse_fit_threads(2, False, {}, "key") == (1, 2, None)


@pytest.mark.parametrize("fit", ["sgd", "adam", "momentum_decay", "rmsprop"])
def test_a_sparse_fit_on_some_rows_trains_as_a_fit_on_their_copy(fit):
    """Trainer._fit_rows on a sparse X (fastbp.dask's pieces): the epoch's order names a
    subset of the CSR matrix's rows, read in place, with the bits of a fit on a copy of
    those rows, on one thread and on the row pool's three."""
    options = UNDONE_FITS[fit]
    X, y = wide_batches(dtype="float32")
    rows = np.random.default_rng(2).permutation(X.shape[0])[:45]
    for threads in (1, 3):
        results = []
        for on_rows in (True, False):
            model = model_for(X, hidden=(19,), dtype="float32")
            trainer = fastbp.Trainer("cce", epochs=3, batch_size=8, seed=0,
                                     n_threads=threads, **options)
            history = trainer._fit_rows(model, X, y, rows) if on_rows else \
                trainer.fit(model, X[rows], y[rows])
            results.append((model.parameter_vector(), trainer._state.copy(), history.loss))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
        assert results[0][2] == results[1][2]
