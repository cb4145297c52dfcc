"""The compiled core's edges (issue 10): every entry point checks each size it is handed
against the plan and raises ValueError, whoever calls it; the optimizer state holds only
the rows the rule reads.
"""
import numpy as np
import pytest

import fastbp
from fastbp import _core

RELU, IDENTITY, SOFTMAX = (_core.ACTIVATION_CODES[name] for name in ("relu", "identity",
                                                                    "softmax"))
MSE = _core.LOSS_CODES["mse"]
SIZES = [3, 5, 2]


def _plan(capacity=4, dropout=None, with_gradient=True):
    plan = _core.Plan(SIZES, [RELU, IDENTITY], capacity, dropout, with_gradient)
    return plan, np.zeros(plan.work_size)


def _epoch_arguments(**changes):
    """Arguments of a valid train_epoch call (Adam, 10 rows, batches of 4), changed."""
    plan, work = _plan()
    hyperparameters = _core.Hyperparameters(MSE, optimizer=_core.OPTIMIZER_CODES["adam"])
    arguments = dict(plan=plan, hyperparameters=hyperparameters,
                     params=np.full(plan.n_params, 0.1), work=work,
                     state=np.zeros((2, plan.n_params)), X=np.ones((10, 3)),
                     Y=np.ones((10, 2)), labels=np.empty(0, dtype=np.intp),
                     row_weights=np.empty(0), order=np.empty(0, dtype=np.intp),
                     batch_size=4, random_seed=0)
    arguments.update(changes)
    return arguments


def _train_epoch(arguments):
    return _core.train_epoch(*arguments.values())


def test_a_valid_call_trains():
    loss_total, weight_total, rows, status = _train_epoch(_epoch_arguments())
    assert rows == 10 and status == _core.Status.COMPLETED and weight_total == 10


def test_an_order_may_name_some_of_the_rows_and_each_is_checked_as_read():
    """The epoch trains the rows its order names (a subset of X's: Trainer._fit_rows), and
    an index past X's rows stops it with the index named, after the batches before it."""
    loss_total, weight_total, rows, status = _train_epoch(
        _epoch_arguments(order=np.array([7, 2, 9, 0, 4], dtype=np.intp)))
    assert rows == 5 and weight_total == 5 and status == _core.Status.COMPLETED
    arguments = _epoch_arguments(order=np.array([7, 2, 9, 0, 10], dtype=np.intp))
    with pytest.raises(ValueError, match="10"):
        _train_epoch(arguments)


LABELS = np.zeros(10, dtype=np.intp)
BAD_EPOCHS = {
    "batch_size 0": dict(batch_size=0),
    "batch_size past the capacity": dict(batch_size=5),
    "short parameters": dict(params=np.zeros(10)),
    "short workspace": dict(work=np.zeros(3)),
    "X too narrow": dict(X=np.ones((10, 2))),
    "X too wide": dict(X=np.ones((10, 4))),
    "Y too few rows": dict(Y=np.ones((9, 2))),
    "Y too narrow": dict(Y=np.ones((10, 1))),
    "labels too few": dict(Y=np.empty((0, 0)), labels=np.zeros(9, dtype=np.intp)),
    "labels too many": dict(Y=np.empty((0, 0)), labels=np.zeros(11, dtype=np.intp)),
    "row weights too few": dict(row_weights=np.ones(9)),
    "state of one row for Adam": dict(state=np.zeros((1, 17))),
    "state too narrow": dict(state=np.zeros((2, 16))),
    "plan without a gradient": dict(zip(("plan", "work"), _plan(with_gradient=False))),
    "plan for no rows": dict(zip(("plan", "work"), _plan(capacity=0))),
}


@pytest.mark.parametrize("case", BAD_EPOCHS, ids=list(BAD_EPOCHS))
def test_train_epoch_refuses_sizes_that_do_not_fit_the_plan(case):
    arguments = _epoch_arguments(**BAD_EPOCHS[case])
    params = arguments["params"].copy()
    with pytest.raises(ValueError, match="train_epoch: "):
        _train_epoch(arguments)
    np.testing.assert_array_equal(arguments["params"], params)   # refused before any step


@pytest.mark.parametrize("rule, rows", [("sgd", 0), ("momentum", 1), ("adam", 2),
                                        ("rmsprop", 1), ("adagrad", 1)])
def test_the_state_holds_the_rows_the_rule_reads(rule, rows):
    hyperparameters = _core.Hyperparameters(MSE, optimizer=_core.OPTIMIZER_CODES[rule],
                                            momentum=0.9 if rule == "momentum" else 0.0)
    assert hyperparameters.state_rows == rows
    other = np.zeros((2 if rows != 2 else 1, 17))
    with pytest.raises(ValueError, match="optimizer state's row count"):
        _train_epoch(_epoch_arguments(hyperparameters=hyperparameters, state=other))

    optimizer = fastbp.optimizers.SGD(0.01, momentum=0.9) if rule == "momentum" else rule
    trainer = fastbp.Trainer("mse", optimizer=optimizer, learning_rate=0.01, epochs=2,
                             batch_size=4)
    model = fastbp.MLP(SIZES, ["relu", "identity"], dtype="float64", seed=0)
    history = trainer.fit(model, np.ones((10, 3)), np.ones((10, 2)))
    assert history.epochs == 2 and trainer._state.shape == (rows, model.n_params)



@pytest.mark.parametrize("rule, old_row", [("momentum", 0), ("rmsprop", 1), ("adagrad", 1)])
def test_a_trainer_pickled_with_the_old_two_row_state_resumes_where_it_was(rule, old_row):
    """Before the state was sized per rule every rule kept two rows (momentum read the
    first, RMSprop and Adagrad the second): unpickling such a trainer keeps the row read."""
    import pickle
    optimizer = fastbp.optimizers.SGD(0.05, momentum=0.9) if rule == "momentum" else rule
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(24, 3)), rng.normal(size=(24, 2))
    model = fastbp.MLP(SIZES, ["tanh", "identity"], dtype="float64", seed=0)
    trainer = fastbp.Trainer("mse", optimizer=optimizer, learning_rate=0.05, epochs=2,
                             batch_size=8, seed=0)
    trainer.fit(model, X, Y)
    pickled = pickle.loads(pickle.dumps(trainer)).__getstate__()
    two_rows = np.zeros((2, model.n_params))
    two_rows[old_row] = trainer._state[0]
    pickled["_state"] = two_rows                  # as an older fastbp pickled it
    old = fastbp.Trainer.__new__(fastbp.Trainer)
    old.__setstate__(pickled)
    resumed = fastbp.MLP.from_bytes(model.to_bytes())
    old.bind(resumed)
    old.fit(resumed, X, Y)
    trainer.fit(model, X, Y)
    for p, q in zip(resumed.weights + resumed.biases, model.weights + model.biases):
        np.testing.assert_array_equal(p, q)

@pytest.mark.parametrize("clip_norm, layout", [(None, "scaled"), (1e30, "plain")])
def test_a_trainer_pickled_when_the_key_named_the_layout_resumes_where_it_was(clip_norm,
                                                                              layout):
    """Before the state's key held its scale it named the layout ("scaled": mu times the
    velocity; "plain"): unpickling such a trainer resumes bit for bit."""
    import pickle
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(24, 3)), rng.normal(size=(24, 2))
    model = fastbp.MLP(SIZES, ["tanh", "identity"], dtype="float64", seed=0)
    trainer = fastbp.Trainer("mse", optimizer=fastbp.optimizers.SGD(0.05, momentum=0.9),
                             epochs=2, batch_size=8, seed=0, clip_norm=clip_norm)
    trainer.fit(model, X, Y)
    pickled = pickle.loads(pickle.dumps(trainer)).__getstate__()
    pickled["_state_key"] = (pickled["_state_key"][0], ("momentum", layout))   # as before
    old = fastbp.Trainer.__new__(fastbp.Trainer)
    old.__setstate__(pickled)
    resumed = fastbp.MLP.from_bytes(model.to_bytes())
    old.fit(resumed, X, Y)
    trainer.fit(model, X, Y)
    assert old._step == trainer._step == 12     # two fits of 2 epochs of 3 batches
    np.testing.assert_array_equal(resumed.parameter_vector(), model.parameter_vector())


def test_a_trainer_pickled_before_fits_kept_their_buffers_trains_on():
    """A trainer pickled before one-epoch fits gave their buffers back to it has no
    `_buffers`: unpickled, its next fits train as a fresh trainer's with the same state."""
    import pickle
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(24, 3)), rng.normal(size=(24, 2))
    model = fastbp.MLP(SIZES, ["tanh", "identity"], dtype="float64", seed=0)
    trainer = fastbp.Trainer("mse", optimizer="adam", learning_rate=0.05, batch_size=8,
                             seed=0)
    trainer.partial_fit(model, X, Y)
    pickled = pickle.loads(pickle.dumps(trainer)).__getstate__()
    del pickled["_buffers"]                       # as an older fastbp pickled it
    old = fastbp.Trainer.__new__(fastbp.Trainer)
    old.__setstate__(pickled)
    resumed = fastbp.MLP.from_bytes(model.to_bytes())
    old.bind(resumed)
    for _ in range(2):
        old.partial_fit(resumed, X, Y)
        trainer.partial_fit(model, X, Y)
    assert old._buffers
    np.testing.assert_array_equal(resumed.parameter_vector(), model.parameter_vector())


def test_passes_refuse_sizes_that_do_not_fit_the_plan():
    plan, work = _plan()
    params = np.zeros(plan.n_params)
    X, Y, out = np.ones((10, 3)), np.ones((10, 2)), np.empty((10, 2))
    hyperparameters = _core.Hyperparameters(MSE)
    dropout_plan, dropout_work = _plan(dropout=[0.5, 0.0])
    cases = [
        ("predict", lambda: _core.predict(plan, params, work, X, np.empty((9, 2)))),
        ("predict", lambda: _core.predict(plan, params, work, X, np.empty((10, 3)))),
        ("predict", lambda: _core.predict(plan, params, work, np.ones((10, 4)), out)),
        ("predict", lambda: _core.predict(plan, params[:-1], work, X, out)),
        ("predict", lambda: _core.predict(plan, params, work[:5], X, out)),
        ("predict", lambda: _core.predict(dropout_plan, params, dropout_work, X, out)),
        ("evaluate", lambda: _core.evaluate(plan, hyperparameters, params, work, X,
                                            np.ones((10, 1)), out)),
        ("evaluate", lambda: _core.evaluate(plan, hyperparameters, params, work, X, Y,
                                            np.empty((11, 2)))),
        ("gradients", lambda: _core.gradients(plan, hyperparameters, params,
                                              np.empty(plan.n_params - 1), work, X, Y)),
        ("gradients", lambda: _core.gradients(plan, hyperparameters, params,
                                              np.empty(plan.n_params), work, X, Y[:9])),
        ("gradients", lambda: _core.gradients(plan, hyperparameters, params,
                                              np.empty(plan.n_params), work, X[:0], Y[:0])),
        ("gemm_floor", lambda: _core.gemm_floor(plan, params.copy(), work, X, 5, 1)),
        ("gemm_floor", lambda: _core.gemm_floor(plan, params.copy(), work, X[:3], 4, 1)),
        ("gemm_floor", lambda: _core.gemm_floor(plan, params.copy(), work[:5], X, 4, 1)),
    ]
    for caller, call in cases:
        with pytest.raises(ValueError, match=f"^{caller}: "):
            call()


def test_output_loss_refuses_mismatched_arrays_and_codes():
    with pytest.raises(ValueError, match="must match"):
        _core.output_loss(np.zeros((3, 2)), np.zeros((3, 3)), IDENTITY, MSE, 1.0, True)
    with pytest.raises(ValueError, match="at least one row"):
        _core.output_loss(np.zeros((0, 2)), np.zeros((0, 2)), IDENTITY, MSE, 1.0, True)
    with pytest.raises(ValueError, match="unknown activation code"):
        _core.output_loss(np.zeros((3, 2)), np.zeros((3, 2)), 99, MSE, 1.0, True)
    with pytest.raises(ValueError, match="unknown loss code"):
        _core.output_loss(np.zeros((3, 2)), np.zeros((3, 2)), IDENTITY, -1, 1.0, True)


@pytest.mark.parametrize("loss, parameter, message", [
    ("huber", 0.0, "Huber's delta"), ("huber", -1.0, "Huber's delta"),
    ("huber", np.nan, "Huber's delta"),
    ("categorical_crossentropy", 0.5, "clip"), ("binary_crossentropy", 1.0, "clip"),
    ("categorical_crossentropy", -1e-9, "clip"), ("binary_crossentropy", np.nan, "clip"),
])
def test_the_core_refuses_a_loss_parameter_its_loss_cannot_read(loss, parameter, message):
    """The parameter is Huber's delta (> 0) or a cross-entropy's clip (0: none, else in
    (0, 0.5)): anything else is refused by each entry, never read as "no clip"."""
    code = _core.LOSS_CODES[loss]
    with pytest.raises(ValueError, match=message):
        _core.Hyperparameters(code, parameter)
    with pytest.raises(ValueError, match=message):
        _core.output_loss(np.zeros((3, 2)), np.full((3, 2), 0.5), SOFTMAX, code, parameter,
                          True)


@pytest.mark.parametrize("arguments, message", [
    (([3, 2], [RELU, IDENTITY], 4), "one activation per weight layer"),
    (([3], [], 4), "one activation per weight layer"),
    (([3, 0, 2], [RELU, IDENTITY], 4), "widths must be in"),
    (([3, 2**31, 2], [RELU, IDENTITY], 4), "widths must be in"),
    (([3, 5, 2], [RELU, 42], 4), "unknown activation code"),
    (([3, 5, 2], [RELU, IDENTITY], 4, [0.5]), "dropout_rates"),
    (([3, 5, 2], [RELU, IDENTITY], 4, [0.5, 0.5]), "dropout_rates"),
    (([3, 5, 2], [RELU, IDENTITY], 4, [1.0, 0.0]), "dropout_rates"),
    (([3, 5, 2], [RELU, IDENTITY], -1), "capacity"),
])
def test_plan_refuses_a_shape_the_core_cannot_run(arguments, message):
    with pytest.raises(ValueError, match=message):
        _core.Plan(*arguments)


def test_plan_and_hyperparameters_refuse_bad_indices_and_codes():
    plan, _ = _plan()
    with pytest.raises(ValueError, match="parameter_views"):
        plan.parameter_views(np.zeros(plan.n_params + 1))
    for layer in (0, 3):
        with pytest.raises(ValueError, match="layer must be in 1..2"):
            plan.gradient_blocks(layer, True)
    with pytest.raises(ValueError, match="unknown loss code"):
        _core.Hyperparameters(17)
    with pytest.raises(ValueError, match="unknown optimizer code"):
        _core.Hyperparameters(MSE, optimizer=-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [0, 1, 2, 15, 16, 17, 31, 32, 33, 100])
@pytest.mark.parametrize("n_cols", [1, 7, 256, 257, 300])
def test_column_sums_are_the_rows_summed_in_blocks_then_in_double(dtype, n_rows, n_cols):
    """fbp_column_sums (a step's bias gradient or update): the rows summed in the dtype 16
    at a time, those sums added in double, then beta target + alpha sum rounded once. A
    batch of at most 16 rows takes a path of its own (no double sums in between): the
    same bits, on every edge of both blocks (16 rows, 256 columns)."""
    from fastbp import _core
    rng = np.random.default_rng(n_rows * 1000 + n_cols)
    delta = rng.normal(size=(n_rows, n_cols)).astype(dtype)
    delta[:, 0] = -0.0                            # a sum of -0.0 (the sign of the result)
    for beta in (0.0, 1.0, 0.5):
        target = rng.normal(size=n_cols).astype(dtype)
        target[0] = -0.0
        alpha = dtype(-0.37)
        sums = np.zeros(n_cols)
        for first in range(0, n_rows, 16):
            partial = delta[first].copy()
            for row in delta[first + 1:first + 16]:
                partial += row                    # in the dtype, row after row
            sums += partial.astype(np.float64)
        if beta == 0:
            kept = np.zeros(n_cols)
        elif beta == 1:
            kept = target.astype(np.float64)
        else:
            kept = (dtype(beta) * target).astype(np.float64)
        expected = (kept + np.float64(alpha) * (0.0 + sums)).astype(dtype)
        _core.column_sums(delta, target, float(alpha), beta)
        np.testing.assert_array_equal(target.view(np.uint8), expected.view(np.uint8))
