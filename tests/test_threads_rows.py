"""Row-split steps (issue 11 items 1 and 2): a fit on n_threads > 1 splits each step's
rows among that many workers (fastbp/_workers.pxi), the first layer's forward product by
rows too or (FASTBP_SPLIT=inputs) by its inputs, or (FASTBP_SPLIT=hidden, a network of one
hidden layer: fastbp/_hidden_split.pxi) each step by the hidden units; every test here runs
all three ways (the fits of the hidden split on a network of one hidden layer). For a
fixed count the results are bit-identical from run to run; across counts they agree with
one thread to rounding, for every optimizer rule, with dropout, sample weights, clipping,
weight decay and both dtypes. The core checks the workers' plan and workspace against the
fit's plan."""
import os

import numpy as np
import pytest

import fastbp
from fastbp import _core, optimizers

OPTIMIZERS = {
    "sgd": lambda: optimizers.SGD(0.05),
    "momentum": lambda: optimizers.SGD(0.05, momentum=0.9),
    "nesterov": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(0.01),
    "rmsprop": lambda: optimizers.RMSprop(0.005),
    "adagrad": lambda: optimizers.Adagrad(0.05),
}
# How far results of different worker counts may drift apart after 3 epochs: the sums of
# the workers' gradients round differently (a few ulps a step, grown by training).
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


@pytest.fixture(autouse=True, params=["rows", "inputs", "hidden"])
def _split(monkeypatch, request):
    """Every fit here with n_threads > 1 splits by rows, the first layer by rows or by its
    inputs, or by the hidden units (an explicit count is otherwise used whichever way is
    measured faster for the shape, or on BLAS); fit and core_arguments follow it."""
    monkeypatch.setenv("FASTBP_SPLIT", request.param)
    return request.param


def split_inputs():
    return os.environ["FASTBP_SPLIT"] == "inputs"


def split_hidden():
    return os.environ["FASTBP_SPLIT"] == "hidden"


def data(dtype="float32", n_rows=300):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 12)).astype(dtype)
    y = (np.abs(X[:, :4]) * np.arange(1, 5)).argmax(axis=1)
    weights = rng.uniform(0.1, 3.0, size=n_rows).astype(dtype)
    return X, y, weights


def fit(n_threads, optimizer="adam", dtype="float32", dropout=0.0, weighted=False,
        batch_size=32, dense=False, **trainer_options):
    X, y, weights = data(dtype)
    loss, output, targets = "cce", "softmax", y
    if dense:   # dense targets (Y's rows gathered, not one-hot labels), another loss
        loss, output = "mse", "sigmoid"
        targets = np.eye(4, dtype=dtype)[y] * 0.8 + 0.1
    if split_hidden():   # one hidden layer, the hidden split's network
        sizes, activations = [12, 24, 4], ["relu", output]
        dropout = dropout[0] if isinstance(dropout, list) else dropout
    else:
        sizes, activations = [12, 24, 16, 4], ["relu", "tanh", output]
    model = fastbp.MLP(sizes, activations, dtype=dtype, dropout=dropout, seed=3)
    trainer = fastbp.Trainer(loss, optimizer=OPTIMIZERS[optimizer](), epochs=3,
                             batch_size=batch_size, seed=5, n_threads=n_threads,
                             **trainer_options)
    history = trainer.fit(model, X, targets, sample_weight=weights if weighted else None)
    return model.parameter_vector(), history.history["loss"]


def assert_agree(a, b, dtype="float32"):
    scale = max(1.0, float(np.abs(a).max()))
    assert np.abs(a - b).max() <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_agrees_across_worker_counts_and_repeats_exactly(optimizer):
    one, loss_one = fit(1, optimizer)
    for n_threads in (2, 3):
        first, loss_first = fit(n_threads, optimizer)
        again, loss_again = fit(n_threads, optimizer)
        assert np.array_equal(first, again) and loss_first == loss_again
        assert_agree(one, first)
        np.testing.assert_allclose(loss_first, loss_one, rtol=1e-5)


@pytest.mark.parametrize("options", [
    dict(dropout=[0.3, 0.2]),
    dict(weighted=True),
    dict(clip_norm=0.05),
    dict(weight_decay=0.01),
    dict(weight_decay=0.01, decoupled_weight_decay=True),
    dict(dtype="float64", dropout=[0.5, 0.1], weighted=True),
    dict(batch_size=7),          # rows that do not divide among the workers
    dict(batch_size=300),        # one batch, the whole data set
    dict(shuffle=False),         # rows read in place, no gather
    dict(shuffle=False, weighted=True, dense=True),
    dict(dense=True, weighted=True),
], ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_dropout_weights_clipping_and_decay_agree_and_repeat(optimizer, options):
    dtype = options.get("dtype", "float32")
    one, _ = fit(1, optimizer, **options)
    for n_threads in (2, 3):
        first, _ = fit(n_threads, optimizer, **options)
        again, _ = fit(n_threads, optimizer, **options)
        assert np.array_equal(first, again)
        assert_agree(one, first, dtype)


def test_dropout_masks_do_not_depend_on_the_worker_count():
    """A rate of 0.5 on 32 rows: were the masks drawn per worker, 1 and 2 workers would
    train different networks, not the same one to rounding."""
    one, _ = fit(1, "sgd", dropout=[0.5, 0.5])
    two, _ = fit(2, "sgd", dropout=[0.5, 0.5])
    assert_agree(one, two)


def test_a_batch_smaller_than_twice_the_workers_runs_unsplit():
    """Workers need rows of their own: a batch of 3 on 2 threads is not split (it runs
    on BLAS threads) and agrees with the 1-thread fit."""
    one, _ = fit(1, "adam", batch_size=3)
    two, _ = fit(2, "adam", batch_size=3)
    assert_agree(one, two)


def core_arguments(n_workers=2, worker_capacity=16, worker_gradient=True, extra=0):
    """train_epoch's arguments for a 2-worker epoch (or n_workers), split as the test is."""
    sizes, codes = [12, 24, 4], [_core.ACTIVATION_CODES["relu"],
                                 _core.ACTIVATION_CODES["softmax"]]
    plan = _core.Plan(sizes, codes, 32, None, True)
    worker_plan = _core.Plan(sizes, codes, worker_capacity, None, worker_gradient)
    work = np.zeros(plan.work_size, np.float32)
    worker_work = np.zeros(
        _core.worker_workspace_size(worker_plan, n_workers, split_inputs(), split_hidden())
        + extra,
        np.float32)
    params = np.random.default_rng(0).normal(size=plan.n_params).astype(np.float32) * 0.1
    X, y, _ = data(n_rows=64)
    hyper = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"], optimizer=_core.OPTIMIZER_CODES["adam"])
    state = np.zeros((hyper.state_rows, plan.n_params), np.float32)
    return [plan, hyper, params, work, state, X, np.empty((0, 0), np.float32),
            y.astype(np.intp), np.empty(0, np.float32), np.empty(0, np.intp), 32, 1, False,
            worker_plan, worker_work, n_workers, None, None, split_inputs(), split_hidden()]


def test_workers_spin_at_a_barrier_only_where_each_has_a_cpu_and_finish_either_way():
    """A waiting worker spins (waking a sleeping one costs tens of microseconds) only when
    the workers fit the CPUs the process may run on; on fewer CPUs it sleeps at once (a
    spinner would hold the core of the worker it waits for), and the fit finishes with
    the same bits."""
    import os
    allowed = os.sched_getaffinity(0)
    assert _core.barrier_spin_seconds(1) > 0
    assert _core.barrier_spin_seconds(len(allowed)) > 0
    assert _core.barrier_spin_seconds(len(allowed) + 1) == 0
    spread = fit(3, "momentum")
    os.sched_setaffinity(0, {min(allowed)})        # the workers inherit it
    try:
        assert _core.barrier_spin_seconds(2) == 0 and _core.barrier_spin_seconds(1) > 0
        crowded = fit(3, "momentum")
    finally:
        os.sched_setaffinity(0, allowed)
    np.testing.assert_array_equal(spread[0], crowded[0])


def test_a_long_spin_that_ends_asleep_makes_the_next_waits_brief_and_backs_off():
    """Threads of other processes taking the cores (which the affinity mask does not
    show) make long spins end asleep: the next 8 waits spin briefly, then 16, 32, ... up
    to 1,024 while long spins keep ending so; each long spin that meets the others in
    time takes one off the next penalty."""
    spins = _core.barrier_spins([True] * 9)
    longs = [i for i, spin in enumerate(spins) if spin]
    gaps = [b - a - 1 for a, b in zip(longs, longs[1:])]
    assert gaps == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert _core.barrier_spins([False] * 5) == [True] * 5        # never asleep: long spins
    # asleep, then 3 long spins in time: the next penalty is (8 - 3) * 2 = 10 waits
    spins = _core.barrier_spins([True, False, False, False, True, False])
    assert spins == [True] + [False] * 8 + [True] * 4 + [False] * 10 + [True]


def test_the_core_runs_the_workers_when_every_size_fits():
    arguments = core_arguments()
    loss, weight, rows, status = _core.train_epoch(*arguments)
    assert rows == 64 and weight == 64 and status == _core.Status.COMPLETED
    assert np.isfinite(loss)


@pytest.mark.parametrize("change, message", [
    (dict(worker_capacity=15), "the worker plan holds 15 rows"),
    (dict(extra=-1), "the worker workspace holds"),
    (dict(n_workers=2000), "n_workers is 2000"),
])
def test_the_core_refuses_worker_plans_and_workspaces_that_do_not_fit(change, message):
    arguments = core_arguments(**change)
    before = arguments[2].copy()
    with pytest.raises(ValueError, match=message):
        _core.train_epoch(*arguments)
    assert np.array_equal(arguments[2], before)


@pytest.mark.parametrize("n_inputs, n_threads", [(3, 3), (5, 3), (13, 3), (7, 2), (2, 2)])
def test_the_inputs_split_agrees_on_every_share_of_the_inputs(n_inputs, n_threads):
    """Workers' shares of the first layer's inputs: one input each, uneven shares, the
    rest; on one thread, shares of 2 and 3 workers, and repeated exactly."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, n_inputs)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    results = []
    for threads in (1, n_threads, n_threads):
        model = fastbp.MLP([n_inputs, 33, 2], ["tanh", "softmax"], seed=4)
        fastbp.Trainer("cce", optimizer="adam", epochs=2, batch_size=24, seed=6,
                       n_threads=threads).fit(model, X, y)
        results.append(model.parameter_vector())
    assert_agree(results[0], results[1])
    assert np.array_equal(results[1], results[2])


@pytest.mark.parametrize("n_hidden, n_threads", [(2, 2), (3, 3), (5, 3), (13, 3), (7, 2),
                                                (33, 2), (17, 4)])
def test_the_hidden_split_agrees_on_every_share_of_the_units(n_hidden, n_threads):
    """Workers' shares of the hidden units: one unit each, uneven shares, widths that are
    no whole number of vectors; batches that do not divide; on one thread, shares of 2 to
    4 workers, and repeated exactly."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 9)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    results = []
    for threads in (1, n_threads, n_threads):
        model = fastbp.MLP([9, n_hidden, 3], ["tanh", "softmax"], seed=4)
        fastbp.Trainer("cce", optimizer="adam", epochs=2, batch_size=23, seed=6,
                       n_threads=threads).fit(model, X, y)
        results.append(model.parameter_vector())
    assert_agree(results[0], results[1])
    assert np.array_equal(results[1], results[2])


@pytest.mark.parametrize("hidden, output, loss", [
    ("gelu", "softmax", "cce"),          # a hidden activation that keeps its input
    ("swish", "gelu", "mse"),            # and an output one: the output's preactivation
    ("sigmoid", "sigmoid", "bce"),
    ("leaky_relu", "identity", "huber"),
    ("elu", "tanh", "mae"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_activation_and_loss_agrees_across_worker_counts(hidden, output, loss, dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 10)).astype(dtype)
    if loss == "cce":
        targets = (X[:, :3].argmax(axis=1))
    else:
        targets = (1 / (1 + np.exp(-X[:, :3] @ rng.normal(size=(3, 3))))).astype(dtype)
    results = []
    for threads in (1, 2, 3, 3):
        model = fastbp.MLP([10, 20, 3], [hidden, output], dtype=dtype, dropout=0.1, seed=5)
        fastbp.Trainer(loss, optimizer=OPTIMIZERS["momentum"](), epochs=3, batch_size=16, seed=7,
                       n_threads=threads).fit(model, X, targets)
        results.append(model.parameter_vector())
    for result in results[1:]:
        assert_agree(results[0], result, dtype)
    assert np.array_equal(results[2], results[3])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_workers_a_step_apart_still_give_the_same_bits(optimizer):
    """Tiny steps (batches of 6 on 3 workers) with dropout and row weights, many epochs:
    the hidden split's workers run up to a step apart (one barrier a step), and a buffer
    one reads while another writes would show as results that change from run to run."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(240, 12)).astype(np.float32)
    y = (np.abs(X[:, :4]) * np.arange(1, 5)).argmax(axis=1)
    weights = rng.uniform(0.1, 3.0, size=240).astype(np.float32)
    results = []
    for threads in (1, 3, 3, 3):
        model = fastbp.MLP([12, 30, 4], ["relu", "softmax"], dropout=0.3, seed=9)
        fastbp.Trainer("cce", optimizer=OPTIMIZERS[optimizer](), epochs=8, batch_size=6,
                       seed=10, n_threads=threads).fit(model, X, y, sample_weight=weights)
        results.append(model.parameter_vector())
    assert_agree(results[0], results[1])
    assert np.array_equal(results[1], results[2]) and np.array_equal(results[1], results[3])


def test_clipping_takes_the_row_split(monkeypatch):
    """The hidden split has no norm over the whole gradient: a fit that clips, asked for
    it, runs the row split (the same bits as FASTBP_SPLIT=rows)."""
    X, y, _ = data()
    results = []
    for split in ("hidden", "rows"):
        monkeypatch.setenv("FASTBP_SPLIT", split)
        model = fastbp.MLP([12, 24, 4], ["relu", "softmax"], seed=3)
        fastbp.Trainer("cce", optimizer=OPTIMIZERS["adam"](), epochs=2, batch_size=32,
                       seed=5, n_threads=2, clip_norm=0.05).fit(model, X, y)
        results.append(model.parameter_vector())
    assert np.array_equal(results[0], results[1])


def test_the_core_refuses_a_hidden_split_it_cannot_run():
    """Two hidden layers, fewer hidden units than workers, clipping, both splits at once,
    a workspace without room for the hidden split's buffers: refused, nothing trained."""
    relu, softmax = _core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["softmax"]

    def refused(arguments, message):
        before = arguments[2].copy()
        with pytest.raises(ValueError, match=message):
            _core.train_epoch(*arguments)
        assert np.array_equal(arguments[2], before)

    arguments = core_arguments()
    arguments[18:] = False, True
    arguments[14] = np.zeros(_core.worker_workspace_size(arguments[13], 2), np.float32)
    refused(arguments, "the worker workspace holds")
    arguments = core_arguments()
    arguments[18:] = True, True
    arguments[14] = np.zeros(_core.worker_workspace_size(arguments[13], 2, True, True),
                             np.float32)
    refused(arguments, "exclude each other")
    arguments = core_arguments()
    arguments[18:] = False, True
    arguments[1] = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"],
                                         optimizer=_core.OPTIMIZER_CODES["adam"],
                                         clip_norm=1.0)
    arguments[14] = np.zeros(_core.worker_workspace_size(arguments[13], 2, False, True),
                             np.float32)
    refused(arguments, "split_hidden does not clip")
    for sizes, codes, message in [([12, 24, 8, 4], [relu, relu, softmax], "one hidden layer"),
                                  ([12, 1, 4], [relu, softmax], "as many hidden units")]:
        arguments = core_arguments()
        arguments[18:] = False, True
        arguments[0] = _core.Plan(sizes, codes, 32, None, True)
        arguments[13] = _core.Plan(sizes, codes, 16, None, True)
        arguments[2] = np.zeros(arguments[0].n_params, np.float32)
        arguments[3] = np.zeros(arguments[0].work_size, np.float32)
        arguments[4] = np.zeros((arguments[1].state_rows, arguments[0].n_params), np.float32)
        arguments[14] = np.zeros(10**5, np.float32)
        refused(arguments, message)


def test_the_hidden_split_packs_only_the_arrays_its_rule_uses():
    """Each worker packs its columns of W1 and of the arrays its rule steps: plain SGD the
    weights alone, momentum also its velocity, RMSprop the gradient buffer and its second
    moment, Adam both moments; the workspace has room for those only, and an epoch refuses
    one sized for a rule that packs fewer, with the model unchanged."""
    arguments = core_arguments()
    arguments[18:] = False, True
    worker_plan = arguments[13]

    def size(optimizer=None):
        hyper = None if optimizer is None else _core.Hyperparameters(
            _core.LOSS_CODES["categorical_crossentropy"],
            optimizer=_core.OPTIMIZER_CODES[optimizer])
        return _core.worker_workspace_size(worker_plan, 2, False, True, hyper)

    columns = 2 * 12 * 12       # two workers' 12 inputs x 12 of the 24 units
    assert size("momentum") == size("sgd") + columns
    assert size("rmsprop") == size("adagrad") == size("sgd") + 2 * columns
    assert size("adam") == size(None) == size("sgd") + 3 * columns
    assert _core.worker_workspace_size(worker_plan, 2, False, True) == size(None)
    before = arguments[2].copy()
    arguments[14] = np.zeros(size("rmsprop"), np.float32)       # arguments[1] is Adam
    with pytest.raises(ValueError, match="the worker workspace holds"):
        _core.train_epoch(*arguments)
    assert np.array_equal(arguments[2], before)
    arguments[14] = np.zeros(size("adam"), np.float32)
    _core.train_epoch(*arguments)
    assert not np.array_equal(arguments[2], before)


def test_a_diverging_batch_stops_every_split_where_one_worker_stops():
    """A learning rate that overflows: the epoch ends DIVERGED at the same batch as on one
    worker, after the same steps."""
    results = []
    for n_workers in (1, 2):
        arguments = core_arguments()
        arguments[1] = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"],
                                             learning_rate=1e30)
        arguments[4] = np.zeros((0, arguments[0].n_params), np.float32)
        arguments[15] = n_workers
        loss, weight, rows, status = _core.train_epoch(*arguments)
        assert status == _core.Status.DIVERGED
        results.append((rows, arguments[2]))
    assert results[0][0] == results[1][0]
    finite = np.isfinite(results[0][1]) & np.isfinite(results[1][1])
    assert np.array_equal(finite, np.isfinite(results[0][1]))
    assert_agree(results[0][1][finite], results[1][1][finite])


def test_the_core_refuses_an_inputs_split_it_cannot_run():
    """Fewer inputs than workers, a workspace without the partial products, a sparse X."""
    arguments = core_arguments(n_workers=3, worker_capacity=11)
    arguments[18:] = True, False
    arguments[14] = np.zeros(_core.worker_workspace_size(arguments[13], 3), np.float32)
    before = arguments[2].copy()
    with pytest.raises(ValueError, match="the worker workspace holds"):
        _core.train_epoch(*arguments)
    assert np.array_equal(arguments[2], before)
    arguments = core_arguments()
    arguments[18:] = True, False
    arguments[13] = _core.Plan([1, 24, 4], [0, 0], 16, None, True)
    arguments[0] = _core.Plan([1, 24, 4], [0, 0], 32, None, True)
    arguments[5] = np.zeros((64, 1), np.float32)
    arguments[2] = np.zeros(arguments[0].n_params, np.float32)
    arguments[4] = np.zeros((arguments[1].state_rows, arguments[0].n_params), np.float32)
    arguments[14] = np.zeros(_core.worker_workspace_size(arguments[13], 2, True), np.float32)
    with pytest.raises(ValueError, match="needs at least as many inputs as workers"):
        _core.train_epoch(*arguments)
    sparse = _core.SparseRows(np.ones(64, np.float32), np.zeros(64, np.intp),
                              np.arange(65, dtype=np.intp), 1)
    arguments[5] = np.empty((0, 0), np.float32)
    with pytest.raises(ValueError, match="split_inputs and split_hidden need a dense X"):
        _core.train_epoch(*arguments[:16], sparse, None, True)


def test_the_core_refuses_a_worker_plan_of_another_network():
    arguments = core_arguments()
    arguments[13] = _core.Plan([12, 20, 4], [0, 0], 16, None, True)
    with pytest.raises(ValueError, match="other layer widths"):
        _core.train_epoch(*arguments)
    arguments[13] = None
    with pytest.raises(ValueError, match="needs a worker plan"):
        _core.train_epoch(*arguments)


@pytest.mark.parametrize("row", [3, 20, 40, 63])   # worker 0's and worker 1's rows
def test_a_bad_label_mid_epoch_stops_the_workers_with_a_clear_error(row):
    arguments = core_arguments()
    arguments[7][row] = 99
    with pytest.raises(ValueError, match=f"labels\\[{row}\\] = 99"):
        _core.train_epoch(*arguments)


@pytest.mark.parametrize("position", [5, 17, 50])
def test_a_bad_row_index_stops_the_workers_with_a_clear_error(position):
    arguments = core_arguments()
    order = np.arange(64, dtype=np.intp)
    order[position] = 64
    arguments[9] = order
    with pytest.raises(ValueError, match=f"row 64 \\(order\\[{position}\\]\\) is out of range"):
        _core.train_epoch(*arguments)


def test_an_epoch_stopped_by_a_bad_index_trained_the_batches_before_it():
    """Rows 0-31 train, the batch of rows 32-63 holds the bad label: the parameters are
    those of one step, as the one-worker path leaves them."""
    results = []
    for n_workers in (1, 2):
        arguments = core_arguments(n_workers=max(n_workers, 2))
        arguments[15] = n_workers
        arguments[7][45] = 99
        with pytest.raises(ValueError):
            _core.train_epoch(*arguments)
        results.append(arguments[2])
    assert_agree(results[0], results[1])
    assert not np.array_equal(results[0], core_arguments()[2])


def weighted_core_arguments(n_workers, weights, order=None):
    """core_arguments with row weights (and an order), run on n_workers (1: the serial
    path)."""
    arguments = core_arguments()
    arguments[8] = np.asarray(weights, np.float32)
    if order is not None:
        arguments[9] = order
    arguments[15] = n_workers
    return arguments


@pytest.mark.parametrize("position", [5, 40])   # the first batch's gather, the second's
def test_a_bad_index_in_the_weights_gather_stops_after_the_steps_before_it(position):
    """The row weights of the next batch are gathered by worker 0 during the step before
    (phase A in phase C): an index out of range there stops the epoch with the error the
    serial path gives, after the same steps."""
    results = []
    for n_workers in (1, 2):
        order = np.arange(64, dtype=np.intp)
        order[position] = 64
        arguments = weighted_core_arguments(n_workers, np.ones(64), order)
        with pytest.raises(ValueError, match=f"row 64 \\(order\\[{position}\\]\\)"):
            _core.train_epoch(*arguments)
        results.append(arguments[2])
    assert_agree(results[0], results[1])
    trained = not np.array_equal(results[1], core_arguments()[2])
    assert trained == (position >= 32)


@pytest.mark.parametrize("zero_rows", [slice(0, 32), slice(32, 64)])
def test_batches_whose_rows_weigh_nothing_are_skipped_as_on_one_worker(zero_rows):
    """The first batch (skipped before the first barrier) or the second (skipped while
    the first step's phase C runs) weighs 0: one step is taken, the same as one worker's."""
    weights = np.random.default_rng(1).uniform(0.5, 2.0, 64)
    weights[zero_rows] = 0
    results = []
    for n_workers in (1, 2):
        arguments = weighted_core_arguments(n_workers, weights)
        loss, weight, rows, status = _core.train_epoch(*arguments)
        assert rows == 64 and status == _core.Status.COMPLETED
        assert weight == pytest.approx(weights.sum(), rel=1e-6)
        assert arguments[1].step == 1
        results.append((arguments[2], loss))
    assert_agree(results[0][0], results[1][0])
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def predict_model(dtype):
    return fastbp.MLP([20, 33, 17, 5], ["relu", "tanh", "softmax"], dtype=dtype, seed=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_rows", [2 * 2048, 3 * 2048 + 5, 5 * 2048 - 1])
def test_predict_shares_its_chunks_among_threads_with_the_same_bits(dtype, n_rows):
    """predict on 2 or 3 threads runs whole chunks on each (the last one short, fewer
    chunks than threads at times) and gives the one-thread output bit for bit."""
    model = predict_model(dtype)
    X = np.random.default_rng(4).normal(size=(n_rows, 20)).astype(dtype)
    one = model.predict(X, n_threads=1)
    for n_threads in (2, 3):
        assert model._predict_workers(n_rows, n_threads, False) == min(n_threads,
                                                                       -(-n_rows // 2048))
        assert np.array_equal(model.predict(X, n_threads=n_threads), one)
        out = np.full_like(one, np.nan)
        assert model.predict(X, n_threads=n_threads, out=out) is out
        assert np.array_equal(out, one)


def test_predict_on_blas_threads_when_forced_or_a_single_chunk(monkeypatch):
    model = predict_model("float64")
    X = np.random.default_rng(5).normal(size=(3 * 2048, 20))
    one = model.predict(X, n_threads=1)
    assert model._predict_workers(2048, 2, False) == 1      # one chunk: nothing to share
    monkeypatch.setenv("FASTBP_SPLIT", "blas")
    assert model._predict_workers(len(X), 2, False) == 1
    np.testing.assert_allclose(model.predict(X, n_threads=2), one, rtol=1e-12, atol=1e-15)
    # every dense X takes it, the kept plan's path (a C-contiguous X of the model's
    # dtype) too: it shared its chunks among fastbp's threads, BLAS at one (the audit)
    from fastbp import model as model_module
    counts = []
    real = model_module.blas_threads

    def logged(n_threads, *args, **kwargs):
        counts.append(n_threads)
        return real(n_threads, *args, **kwargs)
    monkeypatch.setattr(model_module, "blas_threads", logged)
    for data in (X, np.asfortranarray(X), X.astype(np.float32)):
        counts.clear()
        np.testing.assert_allclose(model.predict(data, n_threads=2), one, rtol=1e-6)
        assert counts == [2]
    # by default too: the kept plan has no thread choice to make (one that never settled
    # swapped between the paths for good) and leaves the call to the general path
    assert model._kept_plan(2048)[2] is None
    from fastbp import _core
    general = []
    real_predict = _core.predict

    def general_pass(*args, **kwargs):
        general.append(1)
        return real_predict(*args, **kwargs)
    monkeypatch.setattr(_core, "predict", general_pass)
    model.predict(X)                         # (its default's measurement, if not kept yet)
    general.clear()
    for _ in range(3):
        np.testing.assert_allclose(model.predict(X), one, rtol=1e-12, atol=1e-15)
    assert len(general) == 3                 # each call the general path's, however measured
    monkeypatch.delenv("FASTBP_SPLIT")
    assert model._kept_plan(2048)[2] is not None


def test_predict_workers_respect_the_callers_limit():
    """The default shares a pass's chunks among as many threads as the caller allows (a
    chunk of this network is past the size that takes more than one thread)."""
    from threadpoolctl import threadpool_limits
    from fastbp import _threads
    model = fastbp.MLP([784, 128, 10], ["relu", "identity"], seed=0)
    assert model._predict_workers(4 * 2048, None, False) == min(_threads.allowed_threads(), 4)
    with threadpool_limits(1):
        assert model._predict_workers(4 * 2048, None, False) == 1
    assert model._predict_workers(4 * 2048, 1, False) == 1


@pytest.mark.parametrize("n_workers, shrink, message", [
    (0, 0, "n_workers is 0"),
    (2, 1, "workspace"),
])
def test_the_core_refuses_predict_workers_that_do_not_fit(n_workers, shrink, message):
    model = predict_model("float32")
    plan, work = model._workspace(64, n_threads=1, copies=2)
    X = np.ones((200, 20), np.float32)
    out = np.zeros((200, 5), np.float32)
    with pytest.raises(ValueError, match=message):
        _core.predict_on_workers(plan, model._params, work[:len(work) - shrink], X, out,
                                 n_workers)
    assert not out.any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("dense", [False, True])
def test_a_fit_on_some_rows_trains_as_a_fit_on_their_copy(dtype, shuffle, dense):
    """Trainer._fit_rows (fastbp.dask's pieces of a chunk: the epoch's order names a subset
    of X's rows, read in place) gives the bits of fit on a copy of those rows, on one
    thread and split every way, with dropout, dense targets or one-hot labels (with the
    classes balanced over the rows trained)."""
    X, y, _ = data(dtype)
    targets = np.eye(4, dtype=dtype)[y] * 0.8 + 0.1 if dense else y
    rows = np.random.default_rng(7).permutation(X.shape[0])[:101]
    sizes = [12, 24, 4] if split_hidden() else [12, 24, 16, 4]
    output = "sigmoid" if dense else "softmax"
    for n_threads in (1, 2, 3):
        results = []
        for on_rows in (True, False):
            model = fastbp.MLP(sizes, ["relu"] * (len(sizes) - 2) + [output], dtype=dtype,
                               dropout=0.1, seed=3)
            trainer = fastbp.Trainer("mse" if dense else "cce", optimizer=optimizers.Adam(0.01),
                                     epochs=3, batch_size=16, seed=5, shuffle=shuffle,
                                     n_threads=n_threads,
                                     class_weight=None if dense else "balanced")
            history = trainer._fit_rows(model, X, targets, rows) if on_rows else \
                trainer.fit(model, X[rows], targets[rows])
            results.append((model.parameter_vector(), history.history["loss"],
                            history.n_samples))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        assert results[0][1:] == results[1][1:] and results[0][2] == 101


@pytest.mark.parametrize("rows, message", [
    ([], "non-empty"), ([[1, 2]], "non-empty"), ([0.0, 1.0], "integer"),
    ([0, 300], r"\[0, 300\)"), ([-1, 3], r"\[0, 300\)"), ([4, 5, 4], "repeat")])
def test_a_fit_on_rows_refuses_rows_that_are_not_distinct_indices(rows, message):
    X, y, _ = data()
    model = fastbp.MLP([12, 8, 4], ["relu", "softmax"], seed=1)
    before = model.parameter_vector()
    with pytest.raises(ValueError, match=message):
        fastbp.Trainer("cce", epochs=1, n_threads=2)._fit_rows(model, X, y, rows)
    np.testing.assert_array_equal(model.parameter_vector(), before)
