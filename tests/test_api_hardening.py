"""Issue 14, the Python layer's defects and the classes behind them.

- writes into the live parameters from arrays that may view them (defect 6);
- user numbers validated in float64 and then cast to the model's dtype: sample weights,
  hyperparameters (defect 9);
- process-global settings changed by a call: the BLAS thread count (defect 10);
- callbacks that assume the model holds the last finished epoch at the end (defect 13).
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import callbacks, losses, metrics, optimizers


def regression(n_rows=200, n_in=5, n_out=2, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_in)).astype(dtype)
    Y = rng.normal(size=(n_rows, n_out)).astype(dtype)
    return X, Y


def small_model(dtype="float32", sizes=(5, 8, 2)):
    return fastbp.MLP(list(sizes), ["tanh", "identity"], dtype=dtype, seed=0)


def parameters(model):
    return [p.copy() for p in model.weights + model.biases]


# ================================================================ defect 6: aliasing writes

def test_swapping_weights_that_view_the_model_swaps_them():
    model = small_model(sizes=(4, 4, 4))
    first, second = (w.copy() for w in model.weights)
    model.weights = [model.weights[1], model.weights[0]]
    assert np.array_equal(model.weights[0], second)
    assert np.array_equal(model.weights[1], first)


def test_swapping_biases_that_view_the_model_swaps_them():
    model = small_model(sizes=(4, 4, 4))
    model.biases = [np.arange(4.0), np.arange(4.0) + 10]
    model.biases = [model.biases[1], model.biases[0]]
    assert np.array_equal(model.biases[0], np.arange(4.0) + 10)
    assert np.array_equal(model.biases[1], np.arange(4.0))


def test_the_arrays_handed_out_are_views_of_their_own():
    """weights and biases hand out new views at each call, live as before: changing one's
    flags, dtype or shape changed the model's own view, through which the setters then
    wrote (a partial write refused for a read-only view, ones written as 1e-45 through an
    int32 view; the audit)."""
    model = small_model(sizes=(4, 8, 3))
    first = model.weights[0]
    first.flags.writeable = False
    model.weights[1].dtype = np.int32
    model.biases[0].shape = (2, 4)
    model.weights = [np.ones((4, 8)), np.ones((8, 3))]
    model.biases = [np.arange(8.0), np.zeros(3)]
    assert [w.shape for w in model.weights] == [(4, 8), (8, 3)]
    assert all((w == 1).all() and w.dtype == np.float32 for w in model.weights)
    assert np.array_equal(model.biases[0], np.arange(8.0))
    live = model.weights[1]
    live[0, 0] = 5.0                                  # still live
    assert model.weights[1][0, 0] == 5.0 and np.shares_memory(live, model._params)
    assert np.array_equal(first, np.ones((4, 8)))     # the old view sees the new values


def test_overlapping_views_of_one_layer_are_read_before_written():
    model = small_model(sizes=(4, 4, 2))
    before = model.weights[0].copy()
    model.weights = [model.weights[0][::-1], model.weights[1]]     # a reversed view
    assert np.array_equal(model.weights[0], before[::-1])


def test_scikit_learn_coefs_setter_with_its_own_views():
    sk = pytest.importorskip("fastbp.sklearn")
    X, Y = regression(n_rows=60, n_in=4, n_out=4)
    estimator = sk.MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, Y)
    first, second = (w.copy() for w in estimator.coefs_)
    estimator.coefs_ = [estimator.coefs_[1], estimator.coefs_[0]]
    assert np.array_equal(estimator.coefs_[0], second)
    assert np.array_equal(estimator.coefs_[1], first)


def test_fit_on_data_that_views_the_parameters_reads_the_data_as_given():
    """X taken from the model's own weights: training changes those weights, so the fit
    must read a copy (the same run as on a copy made beforehand)."""
    model, twin = small_model(sizes=(8, 8, 8)), small_model(sizes=(8, 8, 8))
    Y = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    trainer = lambda: fastbp.Trainer("mse", learning_rate=0.1, epochs=3, batch_size=2,
                                     seed=0)
    trainer().fit(twin, twin.weights[1].copy(), Y)
    trainer().fit(model, model.weights[1], Y)
    for p, q in zip(parameters(model), parameters(twin)):
        assert np.array_equal(p, q)


# ================================================================ defect 9: dtype casts

def unweighted_run(dtype, **fit):
    X, Y = regression(dtype=dtype)
    model = small_model(dtype)
    history = fastbp.Trainer("mse", epochs=2, seed=0).fit(model, X, Y, **fit)
    return model, history


@pytest.mark.parametrize("dtype, weight", [("float32", 1e-46), ("float32", 3.4e38),
                                           ("float32", 1e39), ("float64", 1e-320),
                                           ("float64", 1e308)])
def test_a_common_weight_of_any_scale_changes_nothing(dtype, weight):
    plain, plain_history = unweighted_run(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no divergence warning, no cast overflow
        weighted, history = unweighted_run(dtype, sample_weight=np.full(200, weight))
    assert not history.diverged
    assert np.allclose(history.loss, plain_history.loss, rtol=1e-5)
    for p, q in zip(parameters(weighted), parameters(plain)):
        assert np.allclose(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_scaled_by_a_power_of_two_give_the_same_run_bit_for_bit(dtype):
    weights = np.random.default_rng(3).uniform(0.1, 3.0, size=200)
    one, one_history = unweighted_run(dtype, sample_weight=weights)
    two, two_history = unweighted_run(dtype, sample_weight=weights * 2.0**-900)
    assert one_history.loss == two_history.loss
    for p, q in zip(parameters(one), parameters(two)):
        assert np.array_equal(p, q)


def test_weights_spanning_more_than_the_dtype_holds_are_refused():
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    weights = np.ones(200)
    weights[0] = 1e-40                           # 1e-40 of the largest: not a float32 normal
    with pytest.raises(ValueError, match="sample_weight"):
        fastbp.Trainer("mse", epochs=1).fit(model, X, Y, sample_weight=weights)
    assert all(np.array_equal(p, q) for p, q in zip(parameters(model), before))
    # float64 holds that range
    fastbp.Trainer("mse", epochs=1).fit(small_model("float64"), X.astype(np.float64),
                                        Y.astype(np.float64), sample_weight=weights)


@pytest.mark.parametrize("make_trainer, name", [
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.Adam(0.01, beta2=0.99999999)), "beta2"),
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.Adam(0.01, beta1=0.999999999)), "beta1"),
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.SGD(0.01, momentum=0.99999999)),
     "momentum"),
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.RMSprop(0.01, alpha=0.99999999)),
     "alpha"),
    (lambda: fastbp.Trainer(losses.Huber(1e-50)), "delta"),
    (lambda: fastbp.Trainer(losses.Huber(1e39)), "delta"),
    (lambda: fastbp.Trainer("mse", learning_rate=1e-50), "learning_rate"),
    (lambda: fastbp.Trainer("mse", weight_decay=1e39), "weight_decay"),
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.Adam(0.01, epsilon=1e-50)), "epsilon"),
    (lambda: fastbp.Trainer("mse", optimizer=optimizers.Adam(0.01, epsilon=1e39)), "epsilon"),
])
def test_hyperparameters_the_dtype_cannot_hold_are_refused(make_trainer, name):
    """Checked in float64, used in float32: a fraction below 1 that rounds to 1, a
    positive number that rounds to 0 (or to a subnormal) or overflows is refused by name,
    before the model changes; the same number is fine for a float64 model."""
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    with pytest.raises(ValueError, match=name):
        make_trainer().fit(model, X, Y)
    assert all(np.array_equal(p, q) for p, q in zip(parameters(model), before))
    trainer = make_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a decay of 1e39 diverges in float64
        trainer.fit(small_model("float64"), X.astype(np.float64), Y.astype(np.float64))


def test_the_hyperparameter_check_rounds_as_numpy_does():
    """check_in_dtype rounds without NumPy's scalars (_validation._rounded): to nearest,
    inf past the range, subnormals kept, as a NumPy cast, at every edge of float32 and
    float64."""
    from fastbp import _validation
    f32 = np.finfo(np.float32)
    edges = [0.0, -0.0, 1.0, 0.1, 1 - 1e-9, float(1 - f32.epsneg), float(f32.max),
             float(f32.max) * (1 + 2.0 ** -25), float(f32.max) * (1 + 2.0 ** -23), 1e39,
             float(f32.tiny), float(f32.tiny) / 3, 1e-45, 1e-46, 5e-324, 1.7e308, 7, 2 ** 64]
    for value in edges + [-v for v in edges]:
        for dtype in (np.float32, np.float64):
            with np.errstate(over="ignore"):
                expected = float(dtype(value))
            assert _validation._rounded(value, np.dtype(dtype)) == expected, (value, dtype)


def test_class_weights_of_any_scale_change_nothing():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    runs = []
    for scale in (1.0, 1e-45, 3e38):
        model = fastbp.MLP([5, 8, 2], ["tanh", "softmax"], seed=0)
        history = fastbp.Trainer("cce", epochs=2, seed=0,
                                 class_weight={0: 1.0 * scale, 1: 2.0 * scale}).fit(model, X, y)
        assert not history.diverged and np.isfinite(history.loss).all()
        runs.append(parameters(model))
    for other in runs[1:]:
        for p, q in zip(runs[0], other):
            assert np.allclose(p, q, rtol=1e-4, atol=1e-6)


# ================================================================ defect 13: Ctrl-C mid-epoch

RESTORE_SCRIPT = textwrap.dedent(r'''
    import json, signal, sys, threading
    import numpy as np
    import fastbp
    from fastbp import callbacks

    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40000, 32))
    Y = rng.normal(size=(40000, 4))
    model = fastbp.MLP([32, 128, 4], ["tanh", "identity"], dtype="float64", seed=0)
    seen = {}

    class Interrupt(callbacks.Callback):
        """Keeps the parameters after epoch 0, then sends Ctrl-C during epoch 1."""
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                seen["best"] = [p.copy() for p in self.model.weights + self.model.biases]
                threading.Timer(0.05, signal.pthread_kill,
                                args=(threading.main_thread().ident, signal.SIGINT)).start()

    stopper = callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    trainer = fastbp.Trainer("mse", learning_rate=1e-3, epochs=50, batch_size=8, n_threads=1)
    history = trainer.fit(model, X, Y, callbacks=[Interrupt(), stopper])
    final = [p.copy() for p in model.weights + model.biases]
    print(json.dumps({"interrupted": history.interrupted, "epochs": history.epochs,
                      "best_epoch": stopper.best_epoch,
                      "restored": all(np.array_equal(p, q) for p, q in zip(final, seen["best"]))}))
''')


def test_early_stopping_restores_the_best_weights_after_a_mid_epoch_interrupt():
    """The last finished epoch was the best; Ctrl-C stops the next one half-way: the model
    must hold the best epoch's parameters, not those of the interrupted epoch's steps."""
    result = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["interrupted"] and report["epochs"] == 1 and report["best_epoch"] == 0, report
    assert report["restored"], report


def test_early_stopping_restores_when_the_model_changed_after_the_best_epoch():
    """Whatever changed the model after the best (last) epoch, the fit ends on the best."""
    X, Y = regression()
    model = small_model()
    stopper = callbacks.EarlyStopping(monitor="loss", patience=3)
    history = fastbp.Trainer("mse", learning_rate=0.01, epochs=2, seed=0).fit(
        model, X, Y, callbacks=[stopper])
    assert stopper.best_epoch == history.epochs - 1
    best = parameters(model)
    model.weights = [w + 1 for w in model.weights]                 # after the last epoch
    stopper.on_train_end({})
    assert all(np.array_equal(p, q) for p, q in zip(parameters(model), best))


# ================================================================ defect 10: thread counts

def thread_problem():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=3000)
    return X, y


def thread_fit(X, y):
    model = fastbp.MLP([64, 256, 256, 10], ["relu", "relu", "softmax"], seed=1)
    fastbp.Trainer("cce", learning_rate=0.05, epochs=3, batch_size=256, seed=2,
                   n_threads=2).fit(model, X, y)
    return parameters(model)


def test_a_fit_gives_the_same_bits_while_other_threads_predict():
    """fit(n_threads=2) alone, and again while another thread loops predict on one
    thread: BLAS's thread count is process-wide, and a concurrent call must not change it
    under a running fit."""
    X, y = thread_problem()
    alone = thread_fit(X, y)
    other = fastbp.MLP([64, 32, 10], ["relu", "softmax"], seed=3)
    stop = threading.Event()
    errors = []

    def predict_loop():
        try:
            while not stop.is_set():
                other.predict(X)             # a small model: one BLAS thread
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    reader = threading.Thread(target=predict_loop, daemon=True)
    reader.start()
    try:
        busy = thread_fit(X, y)
    finally:
        stop.set()
        reader.join(60)
    assert not errors, errors
    for p, q in zip(alone, busy):
        assert np.array_equal(p, q)


def test_a_fit_started_while_another_fit_holds_one_thread_runs_on_its_own_count():
    """The deterministic form: another thread's fit (n_threads=1) is between epochs, its
    BLAS limit in force, when this fit (n_threads=2) starts."""
    X, y = thread_problem()
    alone = thread_fit(X, y)
    inside = threading.Event()

    class Hold(callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            inside.set()
            threading.Event().wait(0.5)

    other = threading.Thread(target=lambda: fastbp.Trainer(
        "cce", epochs=2, n_threads=1).fit(fastbp.MLP([64, 8, 10], ["relu", "softmax"]), X, y,
                                          callbacks=[Hold()]), daemon=True)
    other.start()
    assert inside.wait(60)
    busy = thread_fit(X, y)
    other.join(60)
    for p, q in zip(alone, busy):
        assert np.array_equal(p, q)


def test_passes_with_other_thread_counts_wait_and_all_finish():
    """Passes that ask for different counts take turns (no one starves, no deadlock), and
    a pass nested in a fit (validation, a callback's predict) runs under the fit's count."""
    X, y = thread_problem()
    model = fastbp.MLP([64, 16, 10], ["relu", "softmax"], seed=0)

    class PredictInside(callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            self.model.predict(X[:10], n_threads=3)

    done = []

    def fit(n_threads):
        fastbp.Trainer("cce", epochs=2, n_threads=n_threads, seed=0).fit(
            fastbp.MLP([64, 16, 10], ["relu", "softmax"], seed=0), X, y,
            callbacks=[PredictInside()], validation_split=0.1)
        done.append(n_threads)

    threads = [threading.Thread(target=fit, args=(n,), daemon=True) for n in (1, 2, 1, 2)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        model.predict(X, n_threads=2)
    for thread in threads:
        thread.join(120)
    assert sorted(done) == [1, 1, 2, 2]


def test_dask_fit_refuses_hyperparameters_the_dtype_cannot_hold_before_any_round():
    fastbp_dask = pytest.importorskip("fastbp.dask")
    import dask.array as da
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    trainer = fastbp.Trainer("mse", optimizer=optimizers.Adam(0.01, beta2=0.99999999))
    with pytest.raises(ValueError, match="beta2"):
        fastbp_dask.fit(model, trainer, da.from_array(X, chunks=100), da.from_array(Y, chunks=100))
    assert all(np.array_equal(p, q) for p, q in zip(parameters(model), before))


# ================================================ found by an audit of the API (2026-12-06)

def classes_data(n_rows=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 3))
    return X, (X[:, 0] > 0).astype(int)


def classifier(seed=0):
    return fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=seed)


def test_training_rows_whose_weights_are_all_zero_after_the_split_are_refused():
    """The weights' sum-to-0 check applies to the rows left to train on after
    validation_split, not only to all rows (else every batch is skipped: a NaN loss)."""
    X, y = classes_data()
    model = classifier()
    before = model.parameter_vector()
    trainer = fastbp.Trainer("cce", epochs=2, seed=0, n_threads=1, optimizer="adam")
    weights = np.r_[np.zeros(30), np.ones(10)]
    with pytest.raises(ValueError, match="left to train on after validation_split sum to 0"):
        trainer.fit(model, X, y, sample_weight=weights, validation_split=0.25)
    held_out_class = np.r_[np.zeros(30, dtype=int), np.ones(10, dtype=int)]
    with pytest.raises(ValueError, match="sum to 0"):
        fastbp.Trainer("cce", epochs=1, n_threads=1, class_weight={0: 0, 1: 1}).fit(
            model, X, held_out_class, validation_split=0.25)
    assert np.array_equal(model.parameter_vector(), before)
    history = trainer.fit(model, X, y, sample_weight=np.r_[np.ones(30), np.zeros(10)],
                          validation_split=0.25)             # held-out weights 0: fine
    assert np.isfinite(history.loss).all()


def run_after(refusal):
    """Adam on model A for 2 + 2 epochs, `refusal(trainer)` in between."""
    X, y = classes_data()
    model = classifier()
    trainer = fastbp.Trainer("cce", optimizer=optimizers.Adam(0.01), epochs=2, seed=0,
                             n_threads=1)
    trainer.fit(model, X, y)
    if refusal is not None:
        refusal(trainer, X, y)
    trainer.fit(model, X, y)
    return model.parameter_vector(), trainer._step


def test_a_fit_refused_before_its_first_step_keeps_the_trainers_state(tmp_path):
    """A fit of another model that a callback refuses at its start (a checkpoint into a
    missing folder, a monitor the fit does not log) leaves the trainer's optimizer state
    and step count for the first model as they were."""
    expected, steps = run_after(None)

    def missing_folder(trainer, X, y):
        with pytest.raises(FileNotFoundError):
            trainer.fit(classifier(seed=1), X, y, callbacks=[
                callbacks.ModelCheckpoint(tmp_path / "missing" / "m.fbp")])

    def unlogged_monitor(trainer, X, y):
        with pytest.raises(ValueError, match="monitors 'val_loss', which this fit's epochs"):
            trainer.fit(classifier(seed=1), X, y, callbacks=[callbacks.EarlyStopping()])

    def parameters_that_are_not_finite(trainer, X, y):
        model = classifier(seed=1)
        model.weights[0][0, 0] = np.nan
        before = model.parameter_vector()
        with warnings.catch_warnings():
            warnings.simplefilter("error")        # (not the diverged fit's warning)
            with pytest.raises(ValueError, match="parameters are not all finite .* at the "
                                                 "start of epoch 1: there is no start"):
                trainer.fit(model, X, y)
        assert np.array_equal(model.parameter_vector(), before, equal_nan=True)

    for refusal in (missing_folder, unlogged_monitor, parameters_that_are_not_finite):
        got, got_steps = run_after(refusal)
        assert got_steps == steps and np.array_equal(got, expected)


def test_validation_targets_a_metric_of_fastbps_refuses_are_refused_before_training():
    """Class labels 0..2 as one output unit's validation targets (mean squared error takes
    them): accuracy refuses them, which it did after the first epoch had trained."""
    X, y = classes_data()
    labels = np.arange(X.shape[0]) % 3
    model = fastbp.MLP([X.shape[1], 6, 1], ["tanh", "sigmoid"], seed=1)
    trainer = fastbp.Trainer("mse", epochs=2, seed=0, n_threads=1)
    trainer.fit(model, X, y)
    before, state, step = model.parameter_vector(), trainer._state.copy(), trainer._step
    with pytest.raises(ValueError, match="y_true has one column .binary. and must hold"):
        trainer.fit(model, X, y, validation_data=(X, labels), metrics=["accuracy"])
    assert np.array_equal(model.parameter_vector(), before)
    assert np.array_equal(trainer._state, state) and trainer._step == step
    history = trainer.fit(model, X, y, validation_data=(X, y),
                          metrics=["accuracy", lambda true, predicted: 0.5])
    assert len(history.history["val_accuracy"]) == 2


def test_a_callbacks_change_of_shuffle_is_for_the_next_fit():
    """A fit reads trainer.shuffle once (as every other setting): a callback that turned
    it on failed the next epoch with NumPy's broadcast error; one that turned it off made
    the next epochs reuse the last permutation."""
    X, y = classes_data()

    class Switch(callbacks.Callback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_epoch_end(self, epoch, logs):
            self.trainer.shuffle = not self.trainer.shuffle

    for shuffle in (False, True):
        switched, model = fastbp.Trainer("cce", epochs=3, shuffle=shuffle, seed=0,
                                         n_threads=1), classifier()
        switched.fit(model, X, y, callbacks=[Switch(switched)])
        plain, expected = fastbp.Trainer("cce", epochs=3, shuffle=shuffle, seed=0,
                                         n_threads=1), classifier()
        plain.fit(expected, X, y)
        assert np.array_equal(model.parameter_vector(), expected.parameter_vector())
        assert switched.shuffle is (not shuffle)      # (3 switches: the next fit's)


@pytest.mark.parametrize("make", [
    lambda path: callbacks.EarlyStopping(),
    lambda path: callbacks.EarlyStopping(monitor="val_accuracy"),
    lambda path: callbacks.ModelCheckpoint(path),
])
def test_a_monitor_the_fit_does_not_log_is_refused_before_any_epoch(tmp_path, make):
    X, y = classes_data()
    model = classifier()
    before = model.parameter_vector()
    trainer = fastbp.Trainer("cce", learning_rate=0.1, epochs=5, seed=0, n_threads=1)
    with pytest.raises(ValueError, match="which this fit's epochs do not log \\(validation"):
        trainer.fit(model, X, y, callbacks=[make(tmp_path / "ck.fbp")])
    assert np.array_equal(model.parameter_vector(), before)
    assert trainer._epochs_done == 0 and trainer._step == 0
    assert not (tmp_path / "ck.fbp").exists()
    # with validation the same callbacks run
    trainer.fit(model, X, y, validation_split=0.25, callbacks=[make(tmp_path / "ck.fbp")])


def test_a_schedule_monitoring_validation_in_partial_fit_is_told_what_partial_fit_can_do():
    """A ReduceOnPlateau on 'val_loss' refused in partial_fit said the figure needs
    "validation_data or validation_split in fit": partial_fit takes neither. It now says
    so, and what to monitor there; the model is unchanged."""
    X, y = classes_data()
    model = classifier()
    before = model.parameter_vector()
    trainer = fastbp.Trainer("cce", learning_rate=0.1, seed=0, n_threads=1,
                             schedule=fastbp.schedules.ReduceOnPlateau(monitor="val_loss"))
    with pytest.raises(ValueError, match="partial_fit takes neither, so monitor 'loss'"):
        trainer.partial_fit(model, X, y)
    assert np.array_equal(model.parameter_vector(), before) and trainer._step == 0
    trainer.schedule = fastbp.schedules.ReduceOnPlateau(monitor="loss")
    assert len(trainer.partial_fit(model, X, y).loss) == 1


def test_every_begun_callback_ends_when_another_raises():
    """on_train_end runs however the fit ends, an exception from a callback included: the
    callbacks begun are ended (EarlyStopping puts back its best weights)."""
    X, y = classes_data(60)

    class Boom(callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:
                raise RuntimeError("boom")

    class Ended(callbacks.Callback):
        ended = 0

        def on_train_end(self, logs=None):
            self.ended += 1

    model = classifier()
    stopper = callbacks.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True,
                                      mode="max")               # the best: the first epoch
    end = Ended()
    with pytest.raises(RuntimeError, match="boom"):
        fastbp.Trainer("cce", learning_rate=0.5, epochs=10, seed=0, n_threads=1).fit(
            model, X, y, callbacks=[stopper, end, Boom()])
    assert end.ended == 1
    assert all(np.array_equal(a, b) for a, b in zip(model.weights, stopper._best_weights))


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "deepcopy_trainer"])
def test_a_copied_trainer_goes_on_with_its_state(how):
    """A trainer pickled or copied (with its model, or alone and used on the same model)
    continues its optimizer state at the next fit, as the original would: bit-identical."""
    import copy
    import pickle

    expected, steps = run_after(None)
    X, y = classes_data()
    model = classifier()
    trainer = fastbp.Trainer("cce", optimizer=optimizers.Adam(0.01), epochs=2, seed=0,
                             n_threads=1)
    trainer.fit(model, X, y)
    if how == "pickle":
        trainer, model = pickle.loads(pickle.dumps((trainer, model)))
    elif how == "deepcopy":
        trainer, model = copy.deepcopy((trainer, model))
    else:
        trainer = copy.deepcopy(trainer)
    trainer.fit(model, X, y)
    assert trainer._step == steps and np.array_equal(model.parameter_vector(), expected)
    # a model the state does not fit starts afresh, as before
    other = fastbp.MLP([3, 5, 2], ["relu", "softmax"], seed=0)
    copied = copy.deepcopy(trainer)
    copied.fit(other, X, y)
    assert copied._step == 4                  # 2 epochs of 2 batches of 32 rows: fresh


@pytest.mark.parametrize("make", [
    lambda: fastbp.Trainer("mse", learning_rate=10 ** 400),
    lambda: fastbp.Trainer("mse", weight_decay=10 ** 400),
    lambda: fastbp.MLP([3, 4, 1], "relu", dropout=10 ** 400),
    lambda: optimizers.Adam(beta1=10 ** 400),
    lambda: losses.Huber(10 ** 400),
    lambda: callbacks.EarlyStopping(min_delta=-10 ** 400),
])
def test_integers_past_float64_are_a_value_error_naming_the_argument(make):
    with pytest.raises(ValueError, match="got an integer of 40[01] digits"):
        make()


def test_a_schedules_rate_is_checked_as_a_learning_rate():
    from fastbp import schedules

    class Broken(schedules.Schedule):
        def __init__(self, rate):
            self.rate = rate

        def _rate(self, epoch, base):
            return self.rate

    X, y = classes_data()
    for rate in (-0.1, float("nan"), float("inf"), "0.1"):
        model = classifier()
        before = model.parameter_vector()
        with pytest.raises(ValueError, match=f"Broken gave the learning rate {rate!r}"):
            fastbp.Trainer("cce", epochs=2, seed=0, n_threads=1,
                           schedule=Broken(rate)).fit(model, X, y)
        assert np.array_equal(model.parameter_vector(), before)


def test_a_schedules_rate_past_the_models_float_type_is_refused_and_a_tiny_one_is_not():
    """The base learning_rate is checked against the model's dtype when the fit starts; a
    schedule's rate the same way for overflow (it diverged, and the epoch was rolled back
    with advice about the learning_rate), but not for being below the smallest normal
    number (a long decay may end there)."""
    from fastbp import schedules

    class Later(schedules.Schedule):
        def __init__(self, rate):
            self.rate = rate

        def _rate(self, epoch, base):
            return base if epoch == 0 else self.rate

    X, y = classes_data()
    model = classifier()
    trainer = fastbp.Trainer("cce", epochs=3, seed=0, n_threads=1, schedule=Later(1e39))
    with pytest.raises(ValueError, match="Later gave a learning rate for epoch 1 that the "
                       "model cannot hold: learning_rate=1e[+]39 is too large for the "
                       "model's float32"):
        trainer.fit(model, X, y)
    model64 = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0, dtype="float64")
    history = fastbp.Trainer("cce", epochs=3, seed=0, n_threads=1,
                             schedule=Later(1e39)).fit(model64, X, y)
    assert len(history.loss) == 3
    tiny = fastbp.Trainer("cce", epochs=2, seed=0, n_threads=1,
                          schedule=Later(1e-42)).fit(classifier(), X, y)
    assert tiny.history["learning_rate"] == [0.01, 1e-42]     # 0.01: the default rate


def test_a_path_that_ends_in_a_separator_names_a_folder_and_is_refused(tmp_path,
                                                                        monkeypatch, capsys):
    """model.save("models/") and predict --output results/ wrote a regular file named
    models (results), where a folder was meant."""
    from fastbp.__main__ import main

    monkeypatch.chdir(tmp_path)
    model = classifier()
    for path in ("models/", os.path.join("sub", "x") + os.sep, b"models/"):
        with pytest.raises(ValueError, match="it is a folder's name .it ends in"):
            model.save(path)
    model.save("m.fbp")
    (tmp_path / "in.csv").write_text("a,b,c\n1,2,3\n")
    assert main(["predict", "m.fbp", "in.csv", "--output", "results/"]) == 2
    assert "it is a folder's name (it ends in /)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "m.fbp"]


def test_saving_to_an_empty_path_is_refused_before_writing(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for empty in ("", b""):
        with pytest.raises(ValueError, match="empty path"):
            classifier().save(empty)
    with pytest.raises(ValueError, match="it is a folder"):
        classifier().save("/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    assert not list((tmp_path / "here").iterdir())


def test_a_model_saves_to_and_loads_from_a_bytes_path(tmp_path):
    model = classifier()
    path = os.fsencode(tmp_path / "model.fbp")
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fbp"]
    np.testing.assert_array_equal(fastbp.load(path).parameter_vector(),
                                  model.parameter_vector())


def test_validation_data_that_views_the_parameters_is_read_as_a_copy():
    """As X and Y are: a validation pair that views the model's parameters gives the
    figures a copy of it gives, not ones that follow the steps."""
    def val_losses(copy_first):
        model = fastbp.MLP([4, 4, 4], ["tanh", "identity"], seed=0, dtype="float64")
        X, Y = model.weights[0].copy(), model.weights[1].copy()
        views = (model.weights[0], model.weights[1])
        validation = tuple(v.copy() for v in views) if copy_first else views
        return fastbp.Trainer("mse", learning_rate=0.1, epochs=3, batch_size=2,
                              shuffle=False, n_threads=1).fit(
            model, X, Y, validation_data=validation).val_loss
    assert val_losses(True) == val_losses(False)


def test_seeds_and_labels_out_of_range_are_refused():
    with pytest.raises(ValueError, match="seed must be an integer >= 0; got -1"):
        fastbp.MLP([2, 1], "identity", seed=-1)
    with pytest.raises(TypeError, match="seed must be None or an integer; got True"):
        fastbp.MLP([2, 1], "identity", seed=True)
    for labels in ([0, 5], [-1, 1]):
        with pytest.raises(ValueError, match=r"must be whole numbers 0\.\.1"):
            metrics.accuracy(labels, [[1, 0], [0, 1]])
    assert metrics.accuracy([0, 1], [[0.9, 0.1], [0.2, 0.8]]) == 1.0


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "bce", "cce"])
def test_evaluate_refuses_outputs_that_overflow_as_predict_does(loss):
    """Finite inputs whose outputs overflow the dtype: predict refuses them, and so does
    evaluate (it returned NaN, or a loss computed from clipped NaN outputs)."""
    activation = {"bce": "sigmoid", "cce": "softmax"}.get(loss, "identity")
    model = fastbp.MLP([1, 2, 2], ["relu", activation], seed=0)
    model.weights = [np.array([[2.0, 2.0]]), np.array([[1.0, 1.0], [-1.0, 1.0]])]
    X = np.array([[3e38]], np.float32)
    Y = np.array([[0.0, 1.0]])
    for call in (lambda: model.predict(X), lambda: model.evaluate(X, Y, loss)):
        with pytest.raises(ValueError, match="outputs overflow float32"):
            call()
    assert np.isfinite(model.evaluate(X[:, :1] * 0 + 1, Y, loss))


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "bce", "cce"])
def test_validation_outputs_that_overflow_give_nan_figures_and_a_warning(loss):
    """A fit's validation data whose outputs overflow the dtype (which evaluate refuses):
    every validation figure of the epoch is NaN, with a warning saying why, not a NaN loss
    beside an accuracy of NaN rows (0.4 in the audit's case, and EarlyStopping acted on it)
    or an R² of 0 beside an infinite loss; training itself goes on."""
    activation = {"bce": "sigmoid", "cce": "softmax"}.get(loss, "identity")
    model = fastbp.MLP([1, 2, 2], ["relu", activation], seed=0)
    model.weights = [np.array([[2.0, 2.0]]), np.array([[1.0, 1.0], [-1.0, 1.0]])]
    X = np.linspace(0, 1, 20, dtype=np.float32)[:, None]
    Y = (np.arange(20) % 2) if loss == "cce" else np.tile([[0.0, 1.0]], (20, 1))
    X_val = np.full((5, 1), 3e38, np.float32)
    with pytest.warns(RuntimeWarning, match="validation data overflow float32") as caught:
        history = fastbp.Trainer(loss, epochs=2, learning_rate=1e-3, seed=0).fit(
            model, X, Y, validation_data=(X_val, Y[:5]))
    assert caught[0].filename == __file__            # pointed at the caller's fit
    figures = {k: v for k, v in history.history.items() if k.startswith("val_")}
    assert len(figures) >= 2 and all(np.isnan(v).all() for v in figures.values())
    assert np.isfinite(history.loss).all() and history.epochs == 2


def test_accuracy_of_nan_predictions_is_nan():
    assert np.isnan(metrics.accuracy([0, 1], [[np.nan, 1.0], [0.0, 1.0]]))
    assert np.isnan(metrics.accuracy([0, 1], [np.nan, 0.9]))
    assert np.isnan(metrics.binary_accuracy([[0, 1]], [[np.nan, 0.9]]))
    assert metrics.accuracy([0, 1], [[np.inf, 1.0], [0.0, 1.0]]) == 1.0   # inf is a score


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_evaluate_refuses_a_saturated_sigmoid_of_an_infinite_input(target):
    """A sigmoid of an infinite z is a finite 1.0, which predict returns; binary
    cross-entropy from that z is inf - inf = NaN: evaluate refuses it, never NaN."""
    model = fastbp.MLP([1, 1], ["sigmoid"], seed=0)
    model.weights = [np.array([[2.0]])]
    X = np.array([[3e38]], np.float32)
    assert model.predict(X)[0, 0] == 1.0
    with pytest.raises(ValueError, match="loss is not finite for these inputs"):
        model.evaluate(X, [[target]], "bce")


@pytest.mark.parametrize("loss, message", [
    (losses.Huber(1e-50), "delta=1e-50 is too small"),
    (losses.BinaryCrossentropy(clip=1e-46), "clip=1e-46 is too small"),
    (losses.BinaryCrossentropy(clip=1e-9), "1 - clip rounds to 1"),
    (losses.CategoricalCrossentropy(clip=2.9e-8), "1 - clip rounds to 1"),
])
def test_a_loss_parameter_the_dtype_cannot_hold_is_refused_by_every_pass(loss, message):
    """evaluate and gradients check the loss's parameter for the model's dtype as a fit
    does (they computed a loss of 0, or ignored the clip); a clip whose 1 - c rounds to 1
    would make the upper side's loss infinite."""
    model = fastbp.MLP([3, 4, 2], ["relu", "sigmoid" if "Binary" in repr(loss) else
                                   "softmax" if "Categorical" in repr(loss) else "identity"],
                       seed=0)
    X, y = classes_data()
    Y = np.eye(2)[y]
    before = model.parameter_vector()
    for call in (lambda: model.evaluate(X, Y, loss), lambda: model.gradients(X, Y, loss),
                 lambda: fastbp.Trainer(loss, n_threads=1).fit(model, X, Y)):
        with pytest.raises(ValueError, match=message):
            call()
    np.testing.assert_array_equal(model.parameter_vector(), before)
    # the same clip in float64, where 1 - c is below 1, is taken
    wide = fastbp.MLP([3, 4, 2], ["relu", "sigmoid"], dtype="float64", seed=0)
    assert np.isfinite(wide.evaluate(X, Y, losses.BinaryCrossentropy(clip=1e-9)))


def test_a_shallow_copy_of_a_trainer_shares_nothing_a_fit_changes():
    """copy.copy(trainer) gives an independent trainer, as deepcopy and pickling do: its
    fits no longer change the original's optimizer state or shuffling."""
    import copy
    X, y = classes_data(n_rows=60)
    model = classifier()
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=2, seed=0, n_threads=1)
    trainer.fit(model, X, y)
    reference_trainer, reference_model = copy.deepcopy((trainer, model))
    copied, copied_model = copy.copy(trainer), copy.deepcopy(model)
    assert copied._state is not trainer._state and copied._rng is not trainer._rng
    copied.fit(copied_model, X, y)
    trainer.fit(model, X, y)
    reference_trainer.fit(reference_model, X, y)
    np.testing.assert_array_equal(model.parameter_vector(), reference_model.parameter_vector())
    np.testing.assert_array_equal(copied_model.parameter_vector(),
                                  reference_model.parameter_vector())


@pytest.mark.parametrize("name, junk, call", [
    ("FASTBP_GIL", "holdd", "fastbp.MLP([3, 2], ['identity'])"),
    ("FASTBP_FEW_ROWS", "yes", "fastbp.MLP([3, 2], ['identity'])"),
    ("FASTBP_SUBNORMALS", "off", "fastbp.Trainer('mse').fit(fastbp.MLP([3, 2], ['identity']),"
                                 " np.ones((4, 3)), np.ones((4, 2)))"),
    ("FASTBP_SMALL_GEMM", "2", "_threads.small_gemm_kernels()"),
    # (only "0" changed their path: "off" gave the default's bits, silently)
    ("FASTBP_SPARSE_LAZY_ADAM", "off", "fastbp.MLP([3, 2], ['identity'])"),
    ("FASTBP_SPARSE_NAMED_ROWS", "false", "fastbp.MLP([3, 2], ['identity'])"),
])
def test_a_switch_variable_with_a_value_it_does_not_take_is_refused_by_name(name, junk, call):
    """Each FASTBP_* switch takes its values stripped and in any case, and refuses any
    other (a typo in FASTBP_GIL, FASTBP_FEW_ROWS or FASTBP_SMALL_GEMM did nothing,
    silently); a relative XDG_CACHE_HOME is ignored, as the XDG specification says."""
    script = ("import numpy as np, fastbp\nfrom fastbp import _threads\n"
              f"try:\n    {call}\nexcept ValueError as error:\n    print(error)\n")
    refused = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, name: junk}, timeout=120)
    assert refused.stdout.startswith(f"{name}={junk!r}: it must be"), refused.stderr[-2000:]
    taken = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, name: {"FASTBP_GIL": " Hold",
                                                     "FASTBP_SUBNORMALS": " KEEP "}.get(
                                                         name, "0 ")}, timeout=120)
    assert taken.returncode == 0 and taken.stdout == "", taken.stderr[-2000:]


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch):
    from fastbp import _cache
    monkeypatch.delenv("FASTBP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert _cache.cache_folder() == os.path.join(os.path.expanduser("~"), ".cache", "fastbp")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert _cache.cache_folder() == os.path.join("/somewhere/cache", "fastbp")


# ================================================================ attributes set after construction

def _set(obj, **attributes):
    for name, value in attributes.items():
        setattr(obj, name, value)
    return obj


@pytest.mark.parametrize("make, attributes, error", [
    (lambda: optimizers.SGD(0.1), {"learning_rate": -0.1}, ValueError),       # ascent
    (lambda: optimizers.SGD(0.1), {"learning_rate": "0.1"}, TypeError),
    (lambda: optimizers.SGD(0.1, momentum=0.5), {"momentum": -0.9}, ValueError),
    (lambda: optimizers.SGD(0.1, momentum=0.5), {"momentum": 1.0}, ValueError),
    (lambda: optimizers.SGD(0.1, momentum=0.5), {"nesterov": "yes"}, TypeError),
    (lambda: optimizers.SGD(0.1), {"nesterov": True}, ValueError),             # no momentum
    (lambda: optimizers.Adam(), {"beta2": -0.5}, ValueError),
    (lambda: optimizers.Adam(), {"epsilon": float("nan")}, ValueError),
    (lambda: optimizers.RMSprop(), {"alpha": 2.0}, ValueError),
    (lambda: optimizers.Adagrad(), {"epsilon": -1e-10}, ValueError),
])
def test_an_optimizers_attributes_changed_after_construction_are_checked_at_the_fit(
        make, attributes, error):
    """The constructor's checks apply to values set later too (the core takes them
    unchecked: a negative learning rate trained uphill, a negative momentum was plain SGD);
    the refused fit leaves the model as it was."""
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    optimizer = make()
    trainer = fastbp.Trainer("mse", optimizer=optimizer, epochs=2)
    _set(optimizer, **attributes)
    with pytest.raises(error, match=next(iter(attributes))):
        trainer.fit(model, X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(parameters(model), before))


@pytest.mark.parametrize("make, attributes, error", [
    (lambda: fastbp.schedules.StepDecay(2), {"step_size": 0}, ValueError),   # was a division by 0
    (lambda: fastbp.schedules.StepDecay(2), {"gamma": -1.0}, ValueError),    # after an epoch
    (lambda: fastbp.schedules.Cosine(5), {"total_epochs": 2.5}, ValueError),
    (lambda: fastbp.schedules.ReduceOnPlateau(monitor="loss"), {"factor": 1.5}, ValueError),
    (lambda: losses.Huber(), {"parameter": "x"}, TypeError),                  # was struct.error
    (lambda: losses.Huber(), {"parameter": -1.0}, ValueError),
    (lambda: losses.MeanSquaredError(), {}, None),
])
def test_a_schedules_or_losss_attributes_changed_after_construction_are_checked_at_the_fit(
        make, attributes, error):
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    obj = make()
    kind = "loss" if isinstance(obj, losses.Loss) else "schedule"
    trainer = fastbp.Trainer(obj if kind == "loss" else "mse", epochs=2,
                             **({"schedule": obj} if kind == "schedule" else {}))
    _set(obj, **attributes)
    if error is None:
        trainer.fit(model, X, Y)
        return
    with pytest.raises(error):
        trainer.fit(model, X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(parameters(model), before))
    if kind == "loss":                  # evaluate and gradients check it too
        with pytest.raises(error):
            model.evaluate(X, Y, obj)


def test_a_schedule_keeps_its_state_through_the_check():
    """The check builds a throwaway copy: a ReduceOnPlateau's reductions carry on."""
    schedule = fastbp.schedules.ReduceOnPlateau(monitor="loss", patience=0)
    schedule.n_reductions = 2
    assert fastbp.schedules.get(schedule) is schedule and schedule.n_reductions == 2


def test_a_tiny_huber_delta_is_not_told_to_use_0():
    with pytest.raises(ValueError, match="use a larger value"):
        small_model().evaluate(*regression(), losses.Huber(1e-50))


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.Adam(0.01, epsilon=1e-40), "epsilon=1e-40 .*; use a larger value"),
    (lambda: optimizers.RMSprop(0.01, epsilon=1e-40), "epsilon=1e-40 .*; use a larger value"),
    (lambda: optimizers.Adagrad(0.01, epsilon=1e-40), "epsilon=1e-40 .*; use a larger value"),
])
def test_settings_that_must_be_positive_are_not_told_to_use_0(make, message):
    """(The advice "use 0 or a larger value" for an epsilon, which 0 is refused for.)"""
    with pytest.raises(ValueError, match=message):
        fastbp.Trainer("mse", optimizer=make()).fit(small_model(), *regression())


def test_a_tiny_clip_is_told_the_least_clip_the_dtype_takes():
    with pytest.raises(ValueError, match=r"clip=1e-40 .* 1 - clip rounds to 1; use at least "
                                         r"5.96e-08"):
        fastbp.MLP([5, 8, 2], ["tanh", "softmax"], seed=0).evaluate(
            regression()[0], np.array([0, 1] * 100), losses.CategoricalCrossentropy(1e-40))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_momentum_below_the_dtypes_rounding_is_refused(dtype):
    """The state keeps the velocity times the momentum: with 1e-36 in float32 it is
    subnormal, flushed to 0 by the epochs, and a later fit with momentum 0.9 found no
    velocity (4.9e-3 from float64's answer). Such a momentum changes no step beyond
    rounding: refused, in both dtypes, naming the least one taken, which works."""
    X, Y = regression(dtype=dtype)
    eps = float(np.finfo(dtype).eps)
    model = small_model(dtype)
    before = model.parameter_vector()
    with pytest.raises(ValueError, match=f"momentum=1e-36 is below the model's {dtype} "
                                         f"rounding .*use 0 or at least {eps:.4g}"):
        fastbp.Trainer("mse", optimizer=optimizers.SGD(0.1, momentum=1e-36)).fit(model, X, Y)
    assert np.array_equal(model.parameter_vector(), before)
    trainer = fastbp.Trainer("mse", optimizer=optimizers.SGD(0.1, momentum=eps), epochs=2,
                             seed=0, n_threads=1)
    trainer.fit(model, X, Y)
    trainer.optimizer = optimizers.SGD(0.1, momentum=0.9)
    assert np.isfinite(trainer.fit(model, X, Y).loss).all()


def test_fit_arguments_of_the_wrong_kind_are_refused_by_name_before_training():
    X, Y = regression()
    model = small_model()
    before = parameters(model)
    for arguments, error, message in (
            ({"metrics": 3}, TypeError, "metrics must be a name, a callable"),
            ({"metrics": 3, "validation_split": 0.2}, TypeError, "metrics must be"),
            ({"verbose": "loud"}, TypeError, "verbose"),
            ({"verbose": -1}, ValueError, "verbose")):
        with pytest.raises(error, match=message):
            fastbp.Trainer("mse", epochs=2).fit(model, X, Y, **arguments)
        assert all(np.array_equal(a, b) for a, b in zip(parameters(model), before))
    fastbp.Trainer("mse", epochs=1).fit(model, X, Y, verbose=False)
    fastbp.Trainer("mse", epochs=1).fit(model, X, Y, verbose=np.bool_(False))


@pytest.mark.parametrize("answer", ["abc", np.array([1.0, 2.0]), None])
def test_a_metric_that_returns_no_number_is_named(answer):
    X, Y = regression()
    with pytest.raises(TypeError, match="the metric 'odd' returned .*must return one number"):
        def odd(y_true, y_pred):
            return answer
        fastbp.Trainer("mse", epochs=1).fit(small_model(), X, Y, validation_split=0.2,
                                            metrics=[odd])


def test_a_0d_array_dropout_is_a_rate():
    model = fastbp.MLP([4, 8, 8, 2], "relu", dropout=np.array(0.25))
    assert model.dropout == (0.25, 0.25)


def test_a_model_cannot_be_made_anew_while_it_trains():
    """A callback that re-ran MLP.__init__ on the model being trained: the fit went on with
    its plan over the new parameters, then failed on "release unlocked lock" (the audit).
    Now refused, the model as the epoch left it, and trainable after."""
    X, Y = regression()
    model = small_model()

    class Remake(callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            self.seen = parameters(self.model)
            self.model.__init__(*self.arguments)

    callback = Remake()
    for arguments in ([[5, 3, 2], ["relu", "identity"], "float64"],
                      [[5, 10 ** 6, 10 ** 5], "relu"]):   # (refused as trained, not as large)
        callback.arguments = arguments
        with pytest.raises(RuntimeError, match="being trained: it cannot be made anew"):
            fastbp.Trainer("mse", epochs=3).fit(model, X, Y, callbacks=[callback])
    assert model.layer_sizes == (5, 8, 2) and model.dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(parameters(model), callback.seen))
    assert fastbp.Trainer("mse", epochs=1).fit(model, X, Y).epochs == 1


@pytest.mark.parametrize("variable", ["FASTBP_KERNELS", "FASTBP_KERNEL_ISA",
                                      "FASTBP_SMALL_GEMM", "FASTBP_SPLIT", "FASTBP_THREADS",
                                      "FASTBP_FEW_ROWS", "FASTBP_GIL",
                                      "FASTBP_SPARSE_LAZY_ADAM", "FASTBP_SPARSE_NAMED_ROWS"])
def test_a_switch_with_a_value_it_refuses_is_an_error_when_a_model_is_made(variable,
                                                                          monkeypatch):
    """A typo in a forcing switch was taken silently by every predict of a few rows (the
    fast path reads none of the product, split or thread switches; the audit)."""
    from fastbp import _threads
    monkeypatch.setattr(_threads, "_small_gemm", None)       # (read once a process)
    monkeypatch.setenv(variable, "bogus")
    with pytest.raises(ValueError, match=variable):
        small_model()


def test_outputs_of_a_model_whose_parameters_are_not_finite_say_so():
    """Outputs that are not finite were blamed on the inputs ("overflow float32 for these
    inputs") where a NaN written into the weights (or loaded so) made them."""
    model = fastbp.MLP([5, 7, 2], "relu", seed=0)
    X = np.ones((3, 5), np.float32)
    model.predict(X)
    model.weights[0][0, 0] = np.nan
    for call in (lambda: model.predict(X), lambda: model.predict(np.ones((300, 5))),
                 lambda: model.evaluate(X, np.zeros((3, 2), np.float32), "mse")):
        with pytest.raises(ValueError, match="parameters are not all finite"):
            call()
    model.weights[0][...] = 2
    with pytest.raises(ValueError, match="outputs overflow float32 for these inputs"):
        model.predict(np.full((3, 5), 3e38, np.float32))


def test_a_callbacks_fit_of_the_model_its_fit_trains_is_refused_as_such():
    """Refused, but the message blamed another thread."""
    from fastbp.callbacks import Callback

    X, y = classes_data()
    model, trainer, seen = classifier(), fastbp.Trainer("cce", epochs=2, n_threads=1), []

    class Refit(Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                trainer.fit(model, X, y)
            except RuntimeError as error:
                seen.append(str(error))

    trainer.fit(model, X, y, callbacks=[Refit()])
    assert len(seen) == 2 and all("by a fit on this thread" in text for text in seen)
    trainer.fit(model, X, y)                            # free again afterwards


def test_a_setting_that_must_be_above_0_says_so_for_every_value_it_refuses():
    """Huber(-1), Adam(epsilon=-1e-8) and clip_norm=-1 said "must be ... >= 0" while 0 is
    refused too."""
    for make, name in ((lambda value: losses.Huber(value), "delta"),
                       (lambda value: optimizers.Adam(epsilon=value), "epsilon"),
                       (lambda value: fastbp.Trainer("mse", clip_norm=value).spec(), "clip_norm")):
        for value in (-1.0, 0.0, 0, float("nan"), 10 ** 400):
            with pytest.raises(ValueError, match=f"{name} must be a finite number > 0.0"):
                make(value)


def test_a_softmax_output_of_one_unit_is_refused_before_training():
    """Its output is 1 whatever the input: every gradient 0, a fit that changed nothing
    (the command line's --loss bce --output-activation softmax trained one, exit 0).
    Under categorical cross-entropy it is a model of one class, whose loss is 0: trained
    as before (test_robustness.py)."""
    model = fastbp.MLP([3, 4, 1], ["relu", "softmax"], seed=0)
    before = model.parameter_vector()
    X = np.ones((4, 3))
    for loss, Y in (("bce", np.array([0, 1, 0, 1.0])), ("mse", np.ones(4)),
                    ("huber", np.zeros(4))):
        with pytest.raises(ValueError, match="a softmax output layer of one unit outputs 1"):
            fastbp.Trainer(loss, epochs=1).fit(model, X, Y)
    assert np.array_equal(model.parameter_vector(), before)
    assert np.array_equal(model.predict(X), np.ones((4, 1), dtype=np.float32))
