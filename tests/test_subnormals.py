"""Subnormal numbers in training (docs/contract.md, "Training"): a training epoch flushes
them to 0 on every thread that trains (the calling thread, the row-split, inputs-split and
hidden-split workers, the sparse row pool's helpers), FASTBP_SUBNORMALS=keep computes with
IEEE gradual underflow instead, the caller's own floating-point mode is as it was after
every fit, and nothing else changes: a fit that makes no subnormal gives the same bits
either way.

The data make them: the first row of X is the only one with nonzero inputs, so after the
first batch every row of W1 has a zero gradient and its optimizer state decays by 0.9 a
step (momentum's velocity, Adam's first moment), DECAY_STEPS steps, into the subnormal
range of the dtype (float32 below 1.2e-38, float64 below 2.2e-308)."""
import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp import _core
from mid_fit import RewriteAfterFirstEpoch

# 0.9 ** steps times a state of 1e-3..1 lies in the subnormal range: 9e-44..9e-41 for
# float32 (its smallest is 1.4e-45), 1.6e-319..1.6e-316 for float64 (4.9e-324)
DECAY_STEPS = {"float32": 875, "float64": 6900}
BATCH = 4
N_IN, N_HIDDEN = 3, 4
RULES = {
    "momentum": fastbp.optimizers.SGD(0.1, momentum=0.9),               # folded velocity
    "nesterov": fastbp.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": fastbp.optimizers.Adam(0.01),                               # first moment
}


def decaying_data(dtype, n_cols=N_IN):
    steps = DECAY_STEPS[dtype]
    X = np.zeros((steps * BATCH, n_cols), dtype=dtype)
    X[0] = np.linspace(-1.0, 1.0, n_cols) + 0.1
    y = np.arange(steps * BATCH) % 2
    return X, y


def subnormals(values):
    values = np.asarray(values)
    return int(np.count_nonzero((values != 0) & (np.abs(values) < np.finfo(values.dtype).tiny)))


def fit(X, y, dtype, rule, n_threads=1, n_in=N_IN, epochs=1):
    model = fastbp.MLP([n_in, N_HIDDEN, 2], ["tanh", "softmax"], dtype=dtype, seed=0)
    trainer = fastbp.Trainer("cce", epochs=epochs, batch_size=BATCH, shuffle=False, seed=0,
                             n_threads=n_threads, optimizer=RULES[rule])
    trainer.fit(model, X, y)
    return model, trainer


def w1_state(trainer, n_in=N_IN):
    """The optimizer state's part on W1 (its first n_in x N_HIDDEN values), each row of it."""
    return trainer._state[:, :n_in * N_HIDDEN]


def caller_keeps_subnormals(dtype="float32"):
    """IEEE arithmetic on this thread: a product in the subnormal range is not 0 (FTZ
    clear) and a subnormal operand is not read as 0 (DAZ clear)."""
    tiny = np.finfo(dtype).tiny
    product = np.array([tiny], dtype=dtype) * np.array([0.25], dtype=dtype)
    operand = np.array([tiny / 4], dtype=dtype) * np.array([4.0], dtype=dtype)
    return product[0] == tiny / 4 and operand[0] == tiny


DENSE_WAYS = {"one thread": (1, None), "rows": (2, "rows"), "inputs": (2, "inputs"),
              "hidden": (2, "hidden")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("way", sorted(DENSE_WAYS))
def test_every_dense_way_flushes_what_keep_leaves_subnormal(monkeypatch, dtype, rule, way):
    n_threads, split = DENSE_WAYS[way]
    if split:
        monkeypatch.setenv("FASTBP_SPLIT", split)
    X, y = decaying_data(dtype)
    monkeypatch.setenv(_core.SUBNORMALS_VARIABLE, "keep")
    kept_model, kept = fit(X, y, dtype, rule, n_threads)
    assert subnormals(w1_state(kept)[0]) > 0          # the data make them
    monkeypatch.delenv(_core.SUBNORMALS_VARIABLE)
    model, flushed = fit(X, y, dtype, rule, n_threads)
    assert subnormals(flushed._state) == 0
    assert not w1_state(flushed)[0].any()            # W1's first moment or velocity: 0
    assert subnormals(np.concatenate([np.ravel(p) for p in model.weights])) == 0
    assert caller_keeps_subnormals(dtype)
    # the two runs differ only where the one kept what the other flushed, by a subnormal
    tolerance = dict(rtol=1e-6 if dtype == "float32" else 1e-12, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(flushed._state, kept._state, **tolerance)
    np.testing.assert_allclose(model.parameter_vector(), kept_model.parameter_vector(),
                               **tolerance)


def decaying_sparse(dtype, n_cols, stored_zeros):
    """decaying_data as CSR over n_cols columns: the first row names every column; with
    stored_zeros the last batch names them all again with explicit zeros (a gradient of
    exactly 0: the rows are caught up, in the row pool when it runs, and step on 0)."""
    X, y = decaying_data(dtype, n_cols)
    X = scipy.sparse.csr_matrix(X)
    if stored_zeros:
        rows = [X]
        zeros = scipy.sparse.csr_matrix(
            (np.zeros(BATCH * n_cols, dtype=dtype), np.tile(np.arange(n_cols), BATCH),
             np.arange(0, BATCH * n_cols + 1, n_cols)), shape=(BATCH, n_cols))
        rows.append(zeros)
        X = scipy.sparse.vstack(rows, format="csr")
        y = np.concatenate([y, np.arange(BATCH) % 2])
    X.sort_indices()
    return X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule, every_row", [("momentum", False), ("nesterov", False),
                                             ("adam", False), ("adam", True)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_sparse_fits_flush_on_every_thread(monkeypatch, dtype, rule, every_row, n_threads):
    """Lazy rules catch the rows up at the end of the epoch (k steps at once, in double)
    and, when the last batch names them again, in the row pool's catch-up phase; Adam
    without its lazy rows steps every row at every step (the pool's every-row phase)."""
    if every_row:
        monkeypatch.setenv(_core.LAZY_ADAM_VARIABLE, "0")
    n_cols = 160   # the pool shares no fewer than 16 named rows, or 64 rows of W1, a thread
    X, y = decaying_sparse(dtype, n_cols, stored_zeros=not every_row)
    runs = {}
    for setting in ("keep", "flush"):
        monkeypatch.setenv(_core.SUBNORMALS_VARIABLE, setting)
        phases = _core.row_pool_settings()[0]
        runs[setting] = fit(X, y, dtype, rule, n_threads, n_in=n_cols)[1]
        if n_threads > 1:
            assert _core.row_pool_settings()[0] > phases   # the pool ran
    assert subnormals(w1_state(runs["keep"], n_cols)[0]) > 0
    assert subnormals(runs["flush"]._state) == 0
    assert not w1_state(runs["flush"], n_cols)[0].any()
    assert caller_keeps_subnormals(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_fit_without_subnormals_gives_the_same_bits_either_way(monkeypatch, dtype,
                                                                  n_threads):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(dtype)
    y = rng.integers(0, 2, size=64)
    results = []
    for setting in ("keep", "flush"):
        monkeypatch.setenv(_core.SUBNORMALS_VARIABLE, setting)
        model, trainer = fit(X, y, dtype, "adam", n_threads, n_in=5, epochs=3)
        results.append((model.to_bytes(), trainer._state.tobytes()))
    assert results[0] == results[1]


def test_the_callers_mode_is_restored_after_a_diverged_or_refused_epoch():
    huge = np.full((4, 2), np.finfo("float32").max / 4, dtype="float32")
    model = fastbp.MLP([2, 3, 1], ["relu", "identity"], dtype="float32", seed=0)
    with pytest.warns(RuntimeWarning, match="diverged"):
        fastbp.Trainer("mse", epochs=1, batch_size=2).fit(model, huge, np.zeros(4))
    assert caller_keeps_subnormals()
    # a label rewritten between epochs: the epoch's core finds it and stops
    X, y = decaying_data("float32")
    labels = y.astype(np.intp)
    model = fastbp.MLP([N_IN, N_HIDDEN, 2], ["tanh", "softmax"], dtype="float32", seed=0)
    with pytest.raises(ValueError, match=r"labels\[9\] = 7 is not a class"):
        fastbp.Trainer("cce", epochs=2, batch_size=BATCH).fit(
            model, X, labels, callbacks=[RewriteAfterFirstEpoch(labels, 9, 7)])
    assert caller_keeps_subnormals()


def test_an_unknown_setting_is_refused_with_the_model_unchanged(monkeypatch):
    X, y = decaying_data("float32")
    model = fastbp.MLP([N_IN, N_HIDDEN, 2], ["tanh", "softmax"], dtype="float32", seed=0)
    before = model.to_bytes()
    monkeypatch.setenv(_core.SUBNORMALS_VARIABLE, "yes")
    with pytest.raises(ValueError, match="FASTBP_SUBNORMALS='yes': it must be 'flush'"):
        fastbp.Trainer("cce", optimizer="adam", epochs=1, batch_size=BATCH).fit(model, X, y)
    assert model.to_bytes() == before
