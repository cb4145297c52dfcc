"""Threads: a fit holds no GIL, so fits and predicts on several Python threads run at once.

- fits of different models on different threads give exactly what they give one after another;
- predict (and gradients) of one model from many threads at once is safe and exact;
- using a model from another thread while it is being trained never corrupts memory: the
  model stays finite, the right shape and usable; a second concurrent fit of the same model
  is refused with a clear error (the model's lock) and leaves it as it was;
- concurrent fits leave the process's BLAS thread setting as they found it.
"""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastbp
from fastbp import _products
from fastbp.callbacks import Callback

N_THREADS = 4
TIMEOUT = 120
HANG_SECONDS = TIMEOUT + 60   # tests/conftest.py ends a hung test after this



def run_threads(targets):
    """Starts one thread per callable (released together by a barrier), joins them and
    re-raises the first exception any of them raised."""
    barrier = threading.Barrier(len(targets))
    results = [None] * len(targets)
    errors = []

    def runner(i, target):
        try:
            barrier.wait(timeout=TIMEOUT)
            results[i] = target()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=runner, args=(i, t), daemon=True)
               for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a thread hung"
    if errors:
        raise errors[0]
    return results


def problem(seed, n_rows=4000, n_in=24, n_out=5, dtype="float32"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_in)).astype(dtype)
    y = (np.abs(X[:, :n_out]) * np.arange(1, n_out + 1)).argmax(axis=1)
    return X, y


def make_model(seed, dtype="float32", n_in=24, n_out=5):
    return fastbp.MLP([n_in, 48, 32, n_out], ["relu", "tanh", "softmax"], dtype=dtype,
                      seed=seed)


def make_trainer(seed, **kwargs):
    settings = dict(learning_rate=0.05, epochs=4, batch_size=16, seed=seed, n_threads=1)
    settings.update(kwargs)
    return fastbp.Trainer("cce", **settings)


def set_blas_threads(n):
    """Sets BLAS's process-wide thread count from a short-lived thread: threadpoolctl (>= 3.6)
    lets one live thread at a time control OpenBLAS, and this one is gone at once."""
    thread = threading.Thread(target=lambda: threadpool_limits(limits=n, user_api="blas"))
    thread.start()
    thread.join()


def blas_threads():
    return sorted((info["filepath"], info["num_threads"]) for info in threadpool_info()
                  if info["user_api"] == "blas")


# ---------------------------------------------------------------- different models

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_threads", [1, None])
def test_fits_of_different_models_on_threads_equal_sequential_fits(dtype, n_threads):
    seeds = list(range(N_THREADS))
    data = [problem(seed, dtype=dtype) for seed in seeds]

    sequential = []
    for seed, (X, y) in zip(seeds, data):
        model = make_model(seed, dtype)
        history = make_trainer(seed, n_threads=n_threads, epochs=8).fit(model, X, y)
        sequential.append((model.to_bytes(), history.loss))

    models = [make_model(seed, dtype) for seed in seeds]

    def fit(i):
        return lambda: make_trainer(seeds[i], n_threads=n_threads, epochs=8).fit(models[i],
                                                                                  *data[i])

    histories = run_threads([fit(i) for i in range(N_THREADS)])
    for model, history, (expected_bytes, expected_loss) in zip(models, histories, sequential):
        assert model.to_bytes() == expected_bytes, "a concurrent fit changed the result"
        assert history.loss == expected_loss


def test_mixed_work_on_different_models_is_exact():
    """fit, predict, gradients, save/load at once on different models: all exact."""
    X, y = problem(0, n_rows=1500)
    base = make_model(0)

    def expected_fit():
        model = make_model(1)
        make_trainer(1).fit(model, X, y)
        return model.to_bytes()

    expected = (expected_fit(), base.predict(X), base.gradients(X, y, "cce"))
    fit_model = make_model(1)

    def fit():
        make_trainer(1).fit(fit_model, X, y)
        return fit_model.to_bytes()

    def predict():
        return [base.predict(X) for _ in range(20)]

    def gradients():
        return [base.gradients(X, y, "cce") for _ in range(10)]

    def round_trip():
        return [fastbp.MLP.from_bytes(base.to_bytes()).predict(X) for _ in range(10)]

    fitted, predictions, grads, loaded = run_threads([fit, predict, gradients, round_trip])
    assert fitted == expected[0]
    for out in predictions + loaded:
        np.testing.assert_array_equal(out, expected[1])
    for value, grad_weights, grad_biases in grads:
        assert value == expected[2][0]
        for a, b in zip(grad_weights + grad_biases, expected[2][1] + expected[2][2]):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- one model, many readers

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_of_one_model_from_many_threads_is_exact(dtype):
    model = make_model(3, dtype)
    inputs = [problem(seed, n_rows=n, dtype=dtype)[0]
              for seed, n in zip(range(8), (1, 7, 100, 2047, 2048, 2049, 5000, 333))]
    expected = [model.predict(X) for X in inputs]

    def reader(offset):
        def read():
            for round_ in range(15):
                i = (offset + round_) % len(inputs)
                np.testing.assert_array_equal(model.predict(inputs[i]), expected[i])
            return True
        return read

    assert all(run_threads([reader(i) for i in range(8)]))


def test_gradients_of_one_model_from_many_threads_are_exact():
    model = make_model(4)
    X, y = problem(4, n_rows=3000)
    expected = model.gradients(X, y, "cce")

    def reader():
        for _ in range(10):
            value, grad_weights, grad_biases = model.gradients(X, y, "cce")
            assert value == expected[0]
            for a, b in zip(grad_weights + grad_biases, expected[1] + expected[2]):
                np.testing.assert_array_equal(a, b)
        return True

    assert all(run_threads([reader for _ in range(4)]))


# ---------------------------------------------------------------- one model, a writer

def _usable(model, X):
    assert np.isfinite(model._params).all()
    assert [w.shape for w in model.weights] == [(24, 48), (48, 32), (32, 5)]
    out = model.predict(X[:10])
    assert out.shape == (10, 5) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


def test_concurrent_fits_of_the_same_model_never_corrupt_it():
    """Three threads fit one model at once: a fit that starts while another runs is refused
    by the model's lock (one that starts after the other ended trains); the model ends
    finite and usable."""
    X, y = problem(5)
    model = make_model(5)
    trainer = make_trainer(5, epochs=3)
    outcomes = []

    def fit():
        try:
            trainer.fit(model, X, y)
            outcomes.append("trained")
        except (RuntimeError, ValueError) as error:
            assert "model is being trained" in str(error)
            outcomes.append("refused")

    run_threads([fit, fit, fit])
    assert "trained" in outcomes
    _usable(model, X)


class _Pause(Callback):
    """Holds the fit between two epochs until released: a fit surely in progress."""

    def __init__(self):
        self.inside = threading.Event()
        self.release = threading.Event()

    def on_epoch_end(self, epoch, logs):
        if epoch == 0:
            self.inside.set()
            assert self.release.wait(TIMEOUT)


def _while_training(action):
    """Runs action(model, X, y) on this thread while another thread's fit of the same model
    is paused between epochs; returns (action's result or error, the fit's error)."""
    X, y = problem(6, n_rows=500)
    model = make_model(6)
    pause = _Pause()
    fit_errors = []

    def fit():
        try:
            make_trainer(6, epochs=2).fit(model, X, y, callbacks=[pause])
        except BaseException as error:  # noqa: BLE001
            fit_errors.append(error)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    try:
        assert pause.inside.wait(TIMEOUT), "the fit never reached its first epoch end"
        try:
            outcome = action(model, X, y)
        except Exception as error:  # noqa: BLE001 - inspected by the caller
            outcome = error
    finally:
        pause.release.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert not fit_errors, fit_errors
    _usable(model, X)
    return outcome


def test_a_second_fit_of_a_model_being_trained_is_refused():
    outcome = _while_training(lambda model, X, y: make_trainer(7, epochs=1).fit(model, X, y))
    assert isinstance(outcome, (RuntimeError, ValueError)), outcome
    assert "model is being trained" in str(outcome)


def test_a_refused_second_fit_leaves_the_model_as_it_was():
    def second_fit(model, X, y):
        before = model.to_bytes()
        with pytest.raises(RuntimeError, match="model is being trained"):
            make_trainer(7, epochs=1).fit(model, X, y)
        return before, model.to_bytes()

    before, after = _while_training(second_fit)
    assert after == before


def test_predict_while_the_model_is_being_trained_is_safe():
    # (on the paused fit's one BLAS thread: a predict measured faster on two would wait for
    # that fit's pass to end, which waits for this predict: docs/robustness.md; the suite
    # on a loaded machine measured so once)
    out = _while_training(lambda model, X, y: model.predict(X, n_threads=1))
    assert isinstance(out, np.ndarray) and out.shape == (500, 5) and np.isfinite(out).all()


def test_predict_and_gradients_during_free_running_fits_are_safe():
    """Readers hammer a model while two threads train it: nothing but finite numbers."""
    X, y = problem(8, n_rows=3000)
    model = make_model(8)
    stop = threading.Event()

    def trainer():
        try:
            make_trainer(8, epochs=4).fit(model, X, y)
        except (RuntimeError, ValueError) as error:  # the model's lock: the other fit runs
            assert "model is being trained" in str(error)
        return True

    def reader():
        count = 0
        while not stop.is_set() or count < 3:
            out = model.predict(X[:257])
            assert out.shape == (257, 5) and np.isfinite(out).all()
            value, grad_weights, _ = model.gradients(X[:64], y[:64], "cce")
            assert np.isfinite(value)
            count += 1
        return count

    def training():
        try:
            return run_threads([trainer, trainer])
        finally:
            stop.set()

    results = run_threads([training, reader, reader])
    assert results[1] >= 3 and results[2] >= 3
    _usable(model, X)


def test_parameter_writes_during_a_fit_are_safe():
    def write(model, X, y):
        for _ in range(20):
            model.weights = [w * 0.5 for w in model.weights]
            model.biases = [b + 0.0 for b in model.biases]
            model.weights[0][...] = 0.01
        return True

    assert _while_training(write) is True


def test_save_while_training_writes_a_valid_file(tmp_path):
    path = tmp_path / "during.fbp"
    _while_training(lambda model, X, y: model.save(path))
    loaded = fastbp.load(path)
    assert loaded.layer_sizes == (24, 48, 32, 5)


# ---------------------------------------------------------------- process-wide settings

def test_concurrent_fits_leave_the_blas_thread_setting_as_they_found_it():
    """Fit A starts, fit B starts, A ends, B ends: the overlap that loses the setting,
    forced with callbacks that hold each fit between epochs. (B saved the setting A had
    made, 1 thread, and restores it after A restored the real one.)"""
    set_blas_threads(2)
    before = blas_threads()
    if all(n == 1 for _, n in before):
        pytest.skip("BLAS runs on one thread here: nothing to restore")
    X, y = problem(10, n_rows=300)
    pauses = [_Pause(), _Pause()]
    errors = []

    def fit(i):
        try:
            make_trainer(i, epochs=2).fit(make_model(i), X, y, callbacks=[pauses[i]])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=fit, args=(i,), daemon=True) for i in (0, 1)]
    try:
        threads[0].start()
        assert pauses[0].inside.wait(TIMEOUT)
        threads[1].start()
        assert pauses[1].inside.wait(TIMEOUT)
    finally:
        pauses[0].release.set()
        threads[0].join(TIMEOUT)
        pauses[1].release.set()
        threads[1].join(TIMEOUT)
    assert not errors, errors
    after = blas_threads()
    set_blas_threads(before[0][1])
    assert after == before


@pytest.mark.parametrize("n_threads", [1, 2, None])
def test_a_single_fit_restores_the_blas_thread_setting(n_threads):
    X, y = problem(9, n_rows=500)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        make_trainer(9, epochs=1, n_threads=n_threads).fit(make_model(9), X, y)
        assert blas_threads() == before


# ---------------------------------------------------------------- who controls OpenBLAS

class ThreadProbe(Callback):
    """Records every BLAS's thread count at each epoch's end, from the fitting thread."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs):
        self.seen.append(blas_threads())


def test_a_fit_on_a_worker_thread_gets_its_limit_while_another_thread_holds_openblas(
        monkeypatch):
    """threadpoolctl lets one live thread set OpenBLAS's process-wide pool and ignores the
    others; a fit on any thread must still run on its thread count and put back what it
    found (fits in services and thread pools run off the main thread). FASTBP_KERNELS=blas:
    a fit whose products all run in the own kernels (under "auto", where they time faster)
    calls no BLAS and leaves its count alone."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    X, y = problem(0, n_rows=600)
    model = make_model(0)
    probe = ThreadProbe()
    with threadpool_limits(limits=2, user_api="blas"):   # this thread takes control
        before = blas_threads()
        worker = threading.Thread(
            target=lambda: make_trainer(0, epochs=2).fit(model, X, y, callbacks=[probe]))
        worker.start()
        worker.join()
        after = blas_threads()
    assert len(probe.seen) == 2
    assert all(n == 1 for state in probe.seen for _, n in state), probe.seen
    assert after == before


def test_passes_ending_on_other_threads_than_they_began_restore_the_setting():
    """The first of overlapping passes sets the limit and the last restores it, whichever
    threads those are."""
    set_blas_threads(2)
    before = blas_threads()
    X, y = problem(1, n_rows=2000)
    started = threading.Event()
    models = [make_model(i) for i in range(2)]

    class Signal(Callback):
        def on_epoch_end(self, epoch, logs):
            started.set()

    def long_fit():
        make_trainer(1, epochs=30).fit(models[0], X, y, callbacks=[Signal()])

    def short_fit():
        started.wait(30)
        make_trainer(2, epochs=1).fit(models[1], X[:200], y[:200])

    run_threads([long_fit, short_fit])
    assert blas_threads() == before
