"""The compiled core against state shared between fits and inputs changed under it
(issue 14): a Ctrl-C belongs to the fit it interrupted, an index rewritten after validation
raises instead of reaching memory it should not, optimizer state that overflows counts as
divergence, and offsets past 2**31 elements are computed in 64 bits.
"""
import signal
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _core
from mid_fit import RewriteAfterFirstEpoch


# ---------------------------------------------------------------- Ctrl-C and other threads

class _InterruptAt(fastbp.callbacks.Callback):
    """Sends SIGINT to the main thread (the caller) at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


@pytest.fixture
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler, whatever the test process inherited (a background job
    starts with SIGINT ignored, and fit then leaves it alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _regression(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 5))
    return X, X @ rng.normal(size=(5, 2))


def test_interrupted_main_thread_fit_leaves_later_fits_alone(sigint_as_in_a_terminal):
    X, Y = _regression()
    interrupted = fastbp.MLP([5, 8, 2], "tanh", seed=0)
    history = fastbp.Trainer("mse", epochs=50, batch_size=8).fit(
        interrupted, X, Y, callbacks=[_InterruptAt(1)])
    assert history.interrupted and history.epochs == 2

    # A fit on a worker thread, never interrupted, trains every epoch.
    model = fastbp.MLP([5, 8, 2], "tanh", seed=0)
    before = model.weights[0].copy()
    results = []
    worker = threading.Thread(target=lambda: results.append(
        fastbp.Trainer("mse", epochs=4, batch_size=8).fit(model, X, Y)))
    worker.start()
    worker.join()
    assert results[0].epochs == 4 and not results[0].interrupted
    assert not np.array_equal(model.weights[0], before)

    # So does the next fit on the main thread.
    again = fastbp.Trainer("mse", epochs=4, batch_size=8).fit(model, X, Y)
    assert again.epochs == 4 and not again.interrupted


def test_ctrl_c_stops_the_main_fit_not_one_running_on_a_worker(sigint_as_in_a_terminal):
    X, Y = _regression()
    main_done = threading.Event()
    results = []

    class WaitForMain(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                main_done.wait(60)

    worker_model = fastbp.MLP([5, 8, 2], "tanh", seed=1)
    worker = threading.Thread(target=lambda: results.append(
        fastbp.Trainer("mse", epochs=5, batch_size=8).fit(worker_model, X, Y,
                                                          callbacks=[WaitForMain()])))
    worker.start()
    try:
        history = fastbp.Trainer("mse", epochs=50, batch_size=8).fit(
            fastbp.MLP([5, 8, 2], "tanh", seed=0), X, Y, callbacks=[_InterruptAt(0)])
    finally:
        main_done.set()
        worker.join()
    assert history.interrupted and history.epochs == 1
    assert results[0].epochs == 5 and not results[0].interrupted


SIGINT_SET_DURING_A_FIT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import fastbp

    signal.signal(signal.SIGINT, signal.default_int_handler)
    wanted = {"default": signal.SIG_DFL, "ignore": signal.SIG_IGN}[sys.argv[1]]

    class SetsSigint(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            signal.signal(signal.SIGINT, wanted)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5))
    fastbp.Trainer("mse", epochs=2, n_threads=1).fit(
        fastbp.MLP([5, 4, 2], ["tanh", "identity"], seed=0), X, X[:, :2],
        callbacks=[SetsSigint()])
    assert signal.getsignal(signal.SIGINT) == wanted
    os.kill(os.getpid(), signal.SIGINT)
    print("alive")
""")


@pytest.mark.parametrize("action", ["default", "ignore"])
def test_a_sigint_action_set_during_a_fit_is_kept_after_it(action):
    """A callback that sets SIGINT's action (signal.signal) during a fit keeps it: the end
    of the fit restored the action the fit had found, under Python's record of the new
    one, so a later Ctrl-C neither ended the process (SIG_DFL) nor was ignored quietly
    (SIG_IGN: Python printed "Signal 2 ignored due to race condition")."""
    result = subprocess.run([sys.executable, "-c", SIGINT_SET_DURING_A_FIT, action],
                            capture_output=True, text=True, timeout=120)
    if action == "default":
        assert result.returncode == -signal.SIGINT, (result.stdout, result.stderr[-2000:])
    else:
        assert result.returncode == 0 and result.stdout.strip() == "alive", \
            (result.stdout, result.stderr[-2000:])
        assert "race condition" not in result.stderr


def test_interrupt_handling_belongs_to_the_main_thread():
    errors = []

    def worker():
        for call in (_core.catch_interrupts, _core.release_interrupts):
            try:
                call()
            except RuntimeError as error:
                errors.append(str(error))
        errors.append(_core.interrupt_requested())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 3 and "main thread" in errors[0] and "main thread" in errors[1]
    assert errors[2] is False


# ---------------------------------------------------------------- inputs changed mid-fit

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("bad_label", [10**12, -1, 3, -(2**62)])
def test_labels_rewritten_between_epochs_raise(dtype, shuffle, bad_label):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    labels = rng.integers(0, 3, size=100).astype(np.intp)
    model = fastbp.MLP([4, 6, 3], ["relu", "softmax"], dtype=dtype, seed=0)
    rewrite = RewriteAfterFirstEpoch(labels, 57, bad_label)
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=16,
                             shuffle=shuffle, seed=0)
    with pytest.raises(ValueError, match=rf"labels\[57\] = {bad_label} is not a class"):
        trainer.fit(model, X, labels, callbacks=[rewrite])
    # the failed epoch left nothing behind: the parameters are those after epoch 0
    np.testing.assert_array_equal(model.parameter_vector(), rewrite.after_first)


@pytest.mark.parametrize("name, value", [("X", np.nan), ("X", 1e30), ("Y", -np.inf),
                                         ("Y", 1e30), ("weights", np.nan),
                                         ("weights", -1e30), ("weights", 0.0)])
def test_float_inputs_rewritten_between_epochs_cannot_crash(name, value):
    """Rewritten values give wrong numbers for the rest of the fit (or a divergence), and
    nothing worse."""
    rng = np.random.default_rng(1)
    arrays = {"X": rng.normal(size=(80, 4)), "Y": rng.normal(size=(80, 2)),
              "weights": rng.uniform(0.5, 1.5, size=80)}
    model = fastbp.MLP([4, 6, 2], "tanh", dtype="float64", seed=0)
    trainer = fastbp.Trainer("mse", epochs=3, batch_size=16, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = trainer.fit(model, arrays["X"], arrays["Y"], sample_weight=None
                              if name != "weights" else arrays["weights"],
                              callbacks=[RewriteAfterFirstEpoch(arrays[name], (slice(None),) if name ==
                                                  "weights" else (slice(None), 0), value)])
    assert history.epochs >= 1
    assert np.isfinite(model._params).all()


def _one_layer_fit(n_rows=10, dtype=np.float64, batch_size=4):
    """A plan, settings and arrays for calling _core.train_epoch directly."""
    model = fastbp.MLP([3, 2], ["softmax"], dtype=dtype, seed=0)
    plan, work = model._workspace(batch_size)
    settings = _core.Hyperparameters(_core.LOSS_CODES["categorical_crossentropy"])
    X = np.ones((n_rows, 3), dtype=dtype)
    return model, plan, work, settings, X


@pytest.mark.parametrize("use_order", [False, True])
def test_train_epoch_checks_indices_as_it_reads_them(use_order):
    model, plan, work, settings, X = _one_layer_fit()
    state = np.empty((0, model.n_params))
    no_targets = np.empty((0, 0))
    no_weights = np.empty(0)
    order = np.arange(10, dtype=np.intp) if use_order else np.empty(0, dtype=np.intp)
    labels = np.zeros(10, dtype=np.intp)
    labels[6] = 2
    with pytest.raises(ValueError, match=r"labels\[6\] = 2 is not a class"):
        _core.train_epoch(plan, settings, model._params, work, state, X, no_targets, labels,
                          no_weights, order, 4, 0)
    if use_order:
        labels[6] = 0
        order[9] = 10**9
        with pytest.raises(ValueError, match=r"row 1000000000 \(order\[9\]\) is out of range"):
            _core.train_epoch(plan, settings, model._params, work, state, X, no_targets,
                              labels, no_weights, order, 4, 0)
        order[9] = -3
        with pytest.raises(ValueError, match=r"row -3 \(order\[9\]\) is out of range"):
            _core.train_epoch(plan, settings, model._params, work, state, X, no_targets,
                              labels, no_weights, order, 4, 0)


# ---------------------------------------------------------------- optimizer state overflow

@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "adagrad"])
def test_optimizer_state_overflow_is_divergence(optimizer):
    """One finite outlier row makes g^2 overflow float32 in the optimizer's second moment;
    loss and parameters stay finite, so only the state shows it (weights whose moment is
    infinite would never move again)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    X[5] = 1e12
    Y = rng.normal(size=(64, 1)).astype(np.float32)
    model = fastbp.MLP([4, 8, 1], ["relu", "identity"], dtype="float32", seed=0)
    initial = model._params.copy()
    trainer = fastbp.Trainer("mse", optimizer=optimizer, learning_rate=1e-3, epochs=3,
                             batch_size=64, shuffle=False)
    with pytest.warns(RuntimeWarning, match="diverged"):
        history = trainer.fit(model, X, Y)
    assert history.diverged and history.epochs == 0
    np.testing.assert_array_equal(model._params, initial)   # restored, as for any divergence
    assert np.isfinite(trainer._state).all()


# ---------------------------------------------------------------- 64-bit offsets

def test_gradient_blocks_of_a_layer_past_two_to_the_31_weights():
    """The offsets run_batch steps the optimizer at, for a layer of 4.9e9 weights (the plan
    allocates nothing): computed in 32 bits they would wrap past 2**31."""
    n = 70000
    relu, identity = _core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["identity"]
    plan = _core.Plan([n, n, 3], [relu, identity], 32, None, True)
    assert plan.n_params == n * n + n + 3 * n + 3
    weight_starts = {1: 0, 2: n * n + n}
    for layer, n_weights in ((1, n * n), (2, 3 * n)):
        for stepping in (True, False):
            blocks = plan.gradient_blocks(layer, stepping)
            offsets = [offset for offset, _ in blocks]
            sizes = [size for _, size in blocks]
            assert offsets[0] == weight_starts[layer] and sum(sizes) == n_weights
            assert all(b == a + size for a, b, size in zip(offsets, offsets[1:], sizes))
    # stepping: blocks of at most 64 Ki elements, the last starting past 2**32
    assert plan.gradient_blocks(1, True)[-1] == ((n - 1) * n, n)
    assert plan.gradient_blocks(2, True)[1] == (n * n + n + 65535, 65535)
