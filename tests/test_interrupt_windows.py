"""A Ctrl-C (or an exception a signal handler raises) at the worst moment of a call.

Python runs a signal's handler between two bytecodes of its main thread, so a
KeyboardInterrupt can land between any two lines of bookkeeping. The interrupt audit sent
SIGINT from another process at random gaps of 0.2-3 ms and found: the hold on a model left
taken for good (every later fit of it refused); a BLAS pass left counted, so that the next
pass on another count, from any thread, waited for ever, or a BLAS left on the pass's
count; a SystemExit from a SIGTERM handler leaving an epoch's steps uncounted or a diverged
epoch's parameters in place; a temporary file and its descriptor left by a save. Here each
window is hit on purpose: the signal is raised (signal.raise_signal, as the terminal would
send it) from inside the bookkeeping.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import fastbp
from fastbp import _core, _threads


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """Python's own SIGINT handler, whatever the test process inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt():
    signal.raise_signal(signal.SIGINT)


def _data(n_rows=64, n_inputs=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_inputs)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int)


def _pass_state():
    return _threads._active, _threads._count, _threads._saved, list(_threads._queue), \
        _threads._turns_lock.locked(), getattr(_threads._local, "depth", 0)


IDLE = (0, None, None, [], False, 0)


# ---------------------------------------------------------------- BLAS passes

class _CountingBlas:
    """A BLAS thread setter that raises SIGINT at the given calls of set()."""

    def __init__(self, interrupt_at=()):
        self.count, self.calls, self.interrupt_at = 1, 0, set(interrupt_at)

    def get(self):
        return self.count

    def set(self, count):
        self.calls += 1
        self.count = count
        if self.calls in self.interrupt_at:
            _interrupt()


@pytest.mark.parametrize("interrupt_at, where", [((1,), "entry"), ((2,), "exit"),
                                                 ((1, 2), "both")])
def test_a_ctrl_c_in_a_pass_entry_or_exit_leaves_no_pass_counted(monkeypatch, interrupt_at,
                                                                 where):
    """The entry and the exit each run whole and the KeyboardInterrupt is raised after:
    the pass is not left counted, the BLAS is back on its own count, no lock is held."""
    blas = _CountingBlas(interrupt_at)
    monkeypatch.setattr(_threads, "_setters", [(blas.get, blas.set)])
    assert _pass_state() == IDLE
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with _threads.blas_threads(2):
            ran.append(blas.count)
    assert ran == ([] if where in ("entry", "both") else [2])
    assert _pass_state() == IDLE and blas.count == 1 and blas.calls == 2
    # and the next pass, on another count, from another thread, runs at once
    done = []
    thread = threading.Thread(target=lambda: done.append(_run_pass(3, blas)))
    thread.start()
    thread.join(10)
    assert done == [3] and _pass_state() == IDLE and blas.count == 1


def _run_pass(n_threads, blas):
    with _threads.blas_threads(n_threads):
        return blas.count


@pytest.fixture
def other_threads_pass(monkeypatch):
    """A pass on 2 BLAS threads held by another thread until `release` is set, and a
    SIGINT for the main thread 0.2 s later, while it waits for that pass in the queue.
    Returns (the BLAS, the thread, release)."""
    blas = _CountingBlas()
    monkeypatch.setattr(_threads, "_setters", [(blas.get, blas.set)])
    holding, release = threading.Event(), threading.Event()

    def other():
        with _threads.blas_threads(2):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=other)
    thread.start()
    assert holding.wait(10)
    threading.Timer(0.2, lambda: signal.pthread_kill(threading.main_thread().ident,
                                                     signal.SIGINT)).start()
    yield blas, thread, release
    release.set()
    thread.join(10)


def test_a_ctrl_c_ends_a_wait_for_other_threads_passes(other_threads_pass):
    """A pass waiting for another thread's pass on another count (seconds, minutes) still
    ends at a Ctrl-C, and leaves the queue and the other pass as they were."""
    blas, thread, release = other_threads_pass
    with pytest.raises(KeyboardInterrupt):
        with _threads.blas_threads(1):
            pytest.fail("the pass ran while another count was in force")
    # (ended while the other pass still runs: not by its end)
    assert list(_threads._queue) == [] and _threads._active == 1
    release.set()
    thread.join(10)
    assert _pass_state() == IDLE and blas.count == 1


def test_a_ctrl_c_ends_a_fits_wait_for_another_threads_pass(other_threads_pass, monkeypatch):
    """A fit on the main thread whose epochs wait for another thread's pass on another
    count stops at a Ctrl-C, interrupted before its first step, the model and trainer as
    they were; it waited until the other pass ended (minutes, for another fit) and only
    then stopped: the wait saw only a SIGINT for Python's handler, not the fit's."""
    blas, thread, release = other_threads_pass
    X, y = _data(256, 40)
    model = fastbp.MLP([40, 64, 2], ["relu", "softmax"], seed=0)
    before = model.parameter_vector().copy()
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=32, seed=0,
                             n_threads=1)
    # (the epochs take a pass on one BLAS thread, whatever kernels this machine chose)
    monkeypatch.setattr(fastbp.trainer._CompiledEpoch, "blas_context",
                        lambda epoch: _threads.blas_threads(1))
    history = trainer.fit(model, X, y)
    # (ended while the other pass still runs: not by its end)
    assert thread.is_alive() and _threads._active == 1 and list(_threads._queue) == []
    assert history.interrupted and history.epochs == 0
    assert np.array_equal(model.parameter_vector(), before) and trainer._step == 0
    release.set()
    thread.join(10)
    assert _pass_state() == IDLE and blas.count == 1
    assert trainer.fit(model, X, y).epochs == 3           # and the next fit runs
    with pytest.raises(KeyboardInterrupt):                # Python's handler is back
        _interrupt()


def test_a_handler_run_while_waiting_for_a_pass_does_not_hold_the_passes_lock(
        other_threads_pass):
    """The caller's own SIGINT handler runs with the passes' lock let go: a graceful
    shutdown that stops the other thread and joins it (its pass's exit takes that lock)
    waited for ever when the handler ran under it (review)."""
    blas, thread, release = other_threads_pass
    joined = []

    def shut_down(signum, frame):
        release.set()
        thread.join(10)
        joined.append(not thread.is_alive())
        raise SystemExit("stopped")

    signal.signal(signal.SIGINT, shut_down)
    with pytest.raises(SystemExit, match="stopped"):
        with _threads.blas_threads(1):
            pytest.fail("the pass ran while another count was in force")
    assert joined == [True] and _pass_state() == IDLE and blas.count == 1


@pytest.mark.parametrize("wait", [False, True])
def test_a_ctrl_c_pending_as_a_pass_begins_is_raised_at_once(other_threads_pass, wait):
    """A SIGINT that reached Python's handler just before a pass's entry, its handler not
    yet run (kill(2) through ctypes and __enter__ with no bytecode between): the entry
    was made all the same and the KeyboardInterrupt lost with its PassesRunning
    (wait=False) or held until the other thread's pass ended (review). It is raised at
    once, nothing taken."""
    import ctypes
    import functools
    import operator
    blas, thread, release = other_threads_pass
    trip = functools.partial(ctypes.CDLL(None).kill, os.getpid(), int(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        list(map(operator.call, [trip, _threads.blas_threads(1, wait=wait).__enter__]))
    assert list(_threads._queue) == [] and _threads._active == 1
    # the fixture's SIGINT, at 0.2 s, still to come: the one raised above was the pending
    # one, not the fixture's ending a wait
    with pytest.raises(KeyboardInterrupt):
        time.sleep(5)


def test_a_pass_object_entered_on_two_threads_gives_back_only_its_own_hold():
    """An entry that fails before it counts (PassesRunning) gave back another thread's
    hold on the same object (review: no caller shares one; entries must still pair)."""
    held = _threads.blas_threads(2, wait=False)
    held.__enter__()
    queued = threading.Thread(target=lambda: _threads.blas_threads(1).__enter__(),
                              daemon=True)
    try:
        queued.start()
        deadline = time.monotonic() + 10
        while not _threads._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        failed = []

        def enter_again():
            try:
                held.__enter__()
            except _threads.PassesRunning:
                failed.append(True)

        again = threading.Thread(target=enter_again)
        again.start()
        again.join(10)
        assert failed == [True] and _threads._active == 1 and _threads._count == 2
    finally:
        held.__exit__(None, None, None)
        queued.join(10)
        # (the queued pass entered and was never left: give it back)
        _threads._leave([0])
    assert _pass_state() == IDLE


def test_a_ctrl_c_held_back_in_a_pass_inside_a_fit_goes_to_the_fit(monkeypatch):
    """Within a fit a held-back SIGINT is the fit's: it ends interrupted, no
    KeyboardInterrupt, and the passes are all left."""
    X, y = _data(256, 40)
    model = fastbp.MLP([40, 64, 2], ["relu", "softmax"], seed=0)
    blas = _CountingBlas(interrupt_at=(1,))
    monkeypatch.setattr(_threads, "_setters", [(blas.get, blas.set)])
    monkeypatch.setenv("FASTBP_SPLIT", "blas")      # the epochs on 2 BLAS threads
    history = fastbp.Trainer("cce", epochs=3, batch_size=32, seed=0, n_threads=2).fit(
        model, X, y, validation_data=(X, y))
    # (the epochs' pass is entered before the first: the fit stops before it)
    assert history.interrupted and history.epochs == 0 and blas.calls == 2
    assert _pass_state() == IDLE and blas.count == 1


# ---------------------------------------------------------------- fits

@pytest.mark.parametrize("method", ["_begin_training", "_end_training", "_data"])
def test_a_ctrl_c_anywhere_in_a_fit_ends_it_interrupted_and_the_model_free(monkeypatch,
                                                                           method):
    """From the call's start to its end SIGINT is the fit's: in the set-up (checking the
    data, taking the hold on the model) the fit stops before its first step, in its last
    bookkeeping (giving the hold back) it counts as interrupted; never a
    KeyboardInterrupt part-way, and the model is free for the next fit."""
    X, y = _data()
    model = fastbp.MLP([6, 8, 2], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=3, batch_size=16, seed=0)
    owner = fastbp.Trainer if method == "_data" else fastbp.MLP
    real = getattr(owner, method)

    def interrupted(self, *arguments, **keywords):
        if method == "_end_training":
            _interrupt()
        result = real(self, *arguments, **keywords)
        if method != "_end_training":
            _interrupt()
        return result

    monkeypatch.setattr(owner, method, interrupted)
    before = model.parameter_vector().copy()
    history = trainer.fit(model, X, y)
    monkeypatch.undo()
    assert history.interrupted
    if method == "_end_training":
        assert history.epochs == 3
    else:
        assert history.epochs == 0 and np.array_equal(model.parameter_vector(), before)
    assert not model._training.locked()
    assert fastbp.Trainer("cce", epochs=1, batch_size=16, seed=0).fit(model, X, y).epochs == 1
    # Python's handler is back: a Ctrl-C now raises
    with pytest.raises(KeyboardInterrupt):
        _interrupt()


def test_a_ctrl_c_in_the_set_up_of_partial_fit_leaves_the_trainer_as_it_was(monkeypatch):
    X, y = _data()
    model = fastbp.MLP([6, 8, 2], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", optimizer="adam", batch_size=16, seed=0)
    trainer.partial_fit(model, X, y)
    step, rng_state = trainer._step, trainer._rng.bit_generator.state
    before = model.parameter_vector().copy()
    real = fastbp.MLP._begin_training

    def interrupted(self):
        _interrupt()
        return real(self)

    monkeypatch.setattr(fastbp.MLP, "_begin_training", interrupted)
    history = trainer.partial_fit(model, X, y)
    monkeypatch.undo()
    assert history.interrupted and history.epochs == 0
    assert trainer._step == step and trainer._rng.bit_generator.state == rng_state
    assert np.array_equal(model.parameter_vector(), before)
    trainer.partial_fit(model, X, y)
    assert trainer._step == 2 * step


@pytest.mark.parametrize("diverging", [False, True])
def test_an_exception_from_a_signal_handler_as_an_epoch_returns_undoes_the_epoch(
        monkeypatch, diverging):
    """A service's SIGTERM handler that raises SystemExit runs as the compiled epoch
    returns: its steps were in the parameters and Adam's moments uncounted (the next fit
    restarted the bias correction), and a diverged epoch's parameters, not finite, stayed.
    The epoch is undone, as for any other exception there."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 6)).astype(np.float32)
    Y = X[:, :1] * 0.5
    if diverging:
        X[-16:] = 1e20
    model = fastbp.MLP([6, 8, 1], ["relu", "identity"], seed=0)
    trainer = fastbp.Trainer("mse", optimizer="adam", epochs=1, batch_size=16, seed=0,
                             shuffle=False)
    trainer.fit(model, X[:64], Y[:64])
    step, before = trainer._step, model.parameter_vector().copy()
    state = trainer._state.copy()
    real = _core.train_epoch

    def then_sigterm(*arguments, **keywords):
        result = real(*arguments, **keywords)
        raise SystemExit(0)

    monkeypatch.setattr(_core, "train_epoch", then_sigterm)
    with pytest.raises(SystemExit):
        trainer.fit(model, X, Y)
    monkeypatch.undo()
    assert trainer._step == step and np.array_equal(trainer._state, state)
    assert np.array_equal(model.parameter_vector(), before)
    if not diverging:       # the next fit is the fit that never met the signal
        again = fastbp.MLP([6, 8, 1], ["relu", "identity"], seed=0)
        other = fastbp.Trainer("mse", optimizer="adam", epochs=1, batch_size=16, seed=0,
                               shuffle=False)
        other.fit(again, X[:64], Y[:64])
        other.fit(again, X, Y)
        trainer.fit(model, X, Y)
        assert np.array_equal(model.parameter_vector(), again.parameter_vector())
        assert trainer._step == other._step


# ---------------------------------------------------------------- files

def test_a_ctrl_c_as_a_save_makes_its_temporary_leaves_neither_it_nor_its_descriptor(
        tmp_path, monkeypatch):
    from fastbp import _files
    path = tmp_path / "model.fbp"
    fastbp.MLP([3, 2], ["identity"], seed=1).save(path)
    before = path.read_bytes()
    real = _files._create

    def interrupted(*arguments):
        handle = real(*arguments)
        _interrupt()
        return handle

    monkeypatch.setattr(_files, "_create", interrupted)
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        with pytest.raises(KeyboardInterrupt):
            fastbp.MLP([3, 2], ["identity"], seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.fbp"]
    if descriptors is not None:
        assert len(os.listdir("/proc/self/fd")) == descriptors


# ---------------------------------------------------------------- a fork from another thread

def test_a_child_forked_by_another_thread_during_a_fit_gets_ctrl_c_back(tmp_path):
    """A thread forked while the main thread's fit held SIGINT: the child has no such fit,
    and kept its handler, count and flag (a Ctrl-C there was swallowed, its next fit
    stopped at once as interrupted). Its SIGINT goes back to Python's handler."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    X, y = _data()
    statuses = []

    class ForkFromAThread(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            def fork():
                pid = os.fork()
                if pid == 0:
                    try:
                        history = fastbp.Trainer("cce", epochs=1, batch_size=16, seed=0,
                                                 n_threads=1).fit(
                            fastbp.MLP([6, 8, 2], ["relu", "softmax"], seed=0), X, y)
                        if history.interrupted:
                            os._exit(3)
                        signal.raise_signal(signal.SIGINT)
                        time.sleep(1)
                        os._exit(4)
                    except KeyboardInterrupt:
                        os._exit(7)
                    finally:
                        os._exit(5)
                statuses.append(os.waitpid(pid, 0)[1])
            thread = threading.Thread(target=fork)
            thread.start()
            thread.join(60)

    fastbp.Trainer("cce", epochs=1, batch_size=16, seed=0, n_threads=1).fit(
        fastbp.MLP([6, 8, 2], ["relu", "softmax"], seed=0), X, y, callbacks=[ForkFromAThread()])
    assert [os.waitstatus_to_exitcode(status) for status in statuses] == [7]
