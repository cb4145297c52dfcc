"""fastbp on Dask: data-parallel training (fastbp.dask.fit) and hyperparameter search
across a cluster, on a LocalCluster of two worker processes on loopback started here."""

import contextlib
import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from unittest import mock

import numpy as np
import pytest
import scipy.sparse

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import fastbp  # noqa: E402
import fastbp.dask  # noqa: E402
from fastbp.callbacks import Callback  # noqa: E402


def dataset(n_samples, seed):
    """Four classes no linear model separates: an MLP learns them to about 96%."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, 10)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64) + 2 * (X[:, 2] + 0.5 * X[:, 3] ** 2 > 0.5)
    return X, y


X_TRAIN, Y_TRAIN = dataset(12_000, 0)
X_TEST, Y_TEST = dataset(4_000, 1)


def classifier(hidden=32):
    return fastbp.MLP([10, hidden, 4], ["relu", "softmax"], seed=0)


def accuracy(model):
    return float(np.mean(model.predict(X_TEST).argmax(axis=1) == Y_TEST))


def chunked(rows=3_000):
    """The training set as dask arrays whose chunks are recomputable from the graph."""
    return da.from_array(X_TRAIN, chunks=(rows, -1)), da.from_array(Y_TRAIN, chunks=rows)


CLUSTER_CONFIG = {
    # Room for the deliberate worker kills: a task may be on a dying worker more than once.
    "distributed.scheduler.allowed-failures": 10,
    # A killed worker's nanny starts a new one, and LocalCluster closes the nanny of a
    # worker that has not come back within this time (15 s by default): then it never
    # comes back. Under the checked build's load in CI a second worker twice did not.
    "distributed.deploy.lost-worker-timeout": "600s",
}


def start_cluster():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
    return cluster, distributed.Client(cluster)


@pytest.fixture(scope="module")
def running():
    """The module's cluster and client, {"cluster": ..., "client": ...} (cluster_client
    may replace them)."""
    with dask.config.set(CLUSTER_CONFIG):
        cluster, client = start_cluster()
        running = {"cluster": cluster, "client": client}
        try:
            yield running
        finally:
            running["client"].close()
            running["cluster"].close()


@pytest.fixture
def cluster_client(running):
    """The module's client, with both workers up (a killed one is restarted by its nanny).
    A nanny that has not brought its worker back in 120 s has failed in Dask, not in
    fastbp: the cluster is started anew, with a warning that shows what its nannies and
    scheduler said, so that a test after a kill never fails for Dask's restart."""
    try:
        running["client"].wait_for_workers(2, timeout=120)
    except TimeoutError:
        cluster = running["cluster"]
        nannies = {name: str(nanny.status) for name, nanny in cluster.workers.items()}
        scheduler_log = "\n".join(line for _, line in cluster.scheduler.get_logs())
        warnings.warn(f"test_dask: a killed worker did not come back in 120 s (nannies: "
                      f"{nannies}); starting the cluster anew. The scheduler's log:\n"
                      f"{scheduler_log[-4000:]}")
        running["client"].close()
        cluster.close()
        running["cluster"], running["client"] = start_cluster()
        running["client"].wait_for_workers(2, timeout=300)
    return running["client"]


# ---- fastbp.dask.fit ----
def test_the_driver_keeps_its_threads_after_starting_a_local_cluster(cluster_client,
                                                                      monkeypatch):
    """Starting the LocalCluster's worker processes set OMP_NUM_THREADS and the others to 1
    in this process too (Dask's nanny does, for its children); fastbp's defaults here
    still allow what they allowed before it (fastbp._threads._environment_limit)."""
    from fastbp import _threads
    assert os.environ.get("__DASK_PARENT_PID") == str(os.getpid())
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    with_cluster = _threads.allowed_threads()
    monkeypatch.delenv("__DASK_PARENT_PID")
    for name, value in _threads._IMPORT_ENVIRONMENT.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert with_cluster == _threads.allowed_threads()
    # and each worker's limit is its one thread
    assert cluster_client.run(_threads.allowed_threads) == {
        address: 1 for address in cluster_client.nthreads()}


def test_importing_fastbp_does_not_import_dask():
    code = "import sys, fastbp; assert 'dask' not in sys.modules, 'fastbp imported dask'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_dask_the_import_says_what_to_install():
    code = ("import sys; sys.modules['dask'] = None\n"
            "try:\n    import fastbp.dask\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert 'pip install "fastbp[dask]"' in result.stdout


def test_distributed_fit_matches_single_machine_accuracy(cluster_client):
    single = classifier()
    fastbp.Trainer("cce", learning_rate=0.05, epochs=20, batch_size=32, seed=0).fit(
        single, X_TRAIN, Y_TRAIN)

    model = classifier()
    trainer = fastbp.Trainer("cce", learning_rate=0.05, epochs=20, batch_size=32, seed=0)
    X, y = chunked()
    history = fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=25,
                              epochs_per_round=2, validation_data=(X_TEST, Y_TEST))
    assert history.epochs == 25 and history.n_samples == X_TRAIN.shape[0]
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert accuracy(single) > 0.93
    assert accuracy(model) >= accuracy(single) - 0.02
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy(model))


def test_fit_is_reproducible_and_independent_of_the_scheduler(cluster_client):
    """Same seed: bit-identical parameters on the cluster twice and on dask's local
    scheduler (the per-block seeds and the order of the sum do not depend on placement)."""
    X, y = chunked(2_000)
    runs = []
    for on_cluster in (True, True, False):
        model = classifier()
        trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=7, n_threads=1)
        if on_cluster:
            fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=3)
        else:   # as if no distributed client existed: dask's threaded scheduler
            with mock.patch.object(fastbp.dask, "_client_for", lambda client: None):
                fastbp.dask.fit(model, trainer, X, y, rounds=3)
        runs.append(model._params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])

    other = classifier()
    fastbp.dask.fit(other, fastbp.Trainer("cce", learning_rate=0.05, seed=8, n_threads=1),
                    X, y, client=cluster_client, rounds=3)
    assert not np.array_equal(other._params, runs[0])


def test_one_round_of_one_block_equals_a_trainer_fit(cluster_client):
    """With a single chunk, a round is exactly Trainer.fit with the block's derived seed."""
    X, y = da.from_array(X_TRAIN[:1000]), da.from_array(Y_TRAIN[:1000])
    model = classifier()
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=3, n_threads=1,
                             shuffle=False)
    fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=1, epochs_per_round=2)
    expected = classifier()
    fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, epochs=2, shuffle=False,
                   n_threads=1).fit(expected, X_TRAIN[:1000], Y_TRAIN[:1000])
    np.testing.assert_array_equal(model._params, expected._params)


def test_average_is_weighted_by_rows(cluster_client):
    """Learning rate 0 leaves every copy at the start, so the average is the start exactly;
    a round of unequal chunks is weighted by rows: check against the blocks trained alone."""
    sizes = (1500, 500)
    X = da.from_array(X_TRAIN[:2000], chunks=(sizes, -1))
    y = da.from_array(Y_TRAIN[:2000], chunks=(sizes,))
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=50, seed=5, n_threads=1,
                             shuffle=False)
    model = classifier()
    fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=1)
    copies = []
    for start, stop in ((0, 1500), (1500, 2000)):
        copy = classifier()
        fastbp.Trainer("cce", learning_rate=0.05, batch_size=50, shuffle=False,
                       n_threads=1).fit(copy, X_TRAIN[start:stop], Y_TRAIN[start:stop])
        copies.append(copy._params.astype(np.float64))
    expected = (1500 * copies[0] + 500 * copies[1]) / 2000
    np.testing.assert_allclose(model._params, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sizes", [(1000, 700, 300), (200,) * (fastbp.dask.FAN_IN + 2)],
                         ids=["3 chunks", "a tree of sums"])
@pytest.mark.parametrize("averaging", ["block_momentum", "mean"])
def test_rounds_are_the_averaging_rule_written_in_numpy(cluster_client, averaging, sizes):
    """Five rounds, each round's state, the blocks' parameters and (more chunks than
    FAN_IN) the tree's partial sums in arrays the workers hand out again (_Arrays),
    against the rule in NumPy over Trainer.fit copies: no round reads an array another
    round has reused."""
    rounds, momentum = 5, 1 - 1 / len(sizes)
    X = da.from_array(X_TRAIN[:2000], chunks=(sizes, -1))
    y = da.from_array(Y_TRAIN[:2000], chunks=(sizes,))
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=50, seed=5, n_threads=1)
    model = classifier()
    fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=rounds,
                    averaging=averaging)
    weights, buffer = classifier().parameter_vector(np.float64), None
    start = weights.astype(np.float32)
    edges = np.cumsum((0, *sizes))
    for round_index in range(rounds):
        total = np.zeros_like(weights)
        for block in range(len(sizes)):
            copy = classifier()
            copy.set_parameter_vector(start)
            seed = fastbp.dask._block_seed(5, round_index, block)
            fastbp.Trainer("cce", learning_rate=0.05, batch_size=50, seed=seed,
                           n_threads=1).fit(copy, X_TRAIN[edges[block]:edges[block + 1]],
                                            Y_TRAIN[edges[block]:edges[block + 1]])
            total += copy._params.astype(np.float64) * sizes[block]
        average = total / sum(sizes)
        if averaging == "mean":
            weights, start = average, average.astype(np.float32)
        else:
            weights, buffer, start = rule_in_numpy(weights, buffer, start, average, momentum,
                                                   1.0, np.float32)
    np.testing.assert_allclose(model._params, weights.astype(np.float32), rtol=1e-5,
                               atol=1e-6)


def test_a_workers_arrays_are_handed_out_again_only_once_nothing_else_holds_them():
    """_Arrays gives an array again only when nothing but itself holds it (not while a
    store of results, a view or a buffer being sent refers to it), keeps one list per
    shape and dtype, at most KEEP, and never gives one array to two threads at once."""
    arrays = fastbp.dask._Arrays()
    held = [arrays.empty(5, np.float64) for _ in range(4)]
    ids = [id(array) for array in held]
    assert len(set(ids)) == 4
    store, view, sent = {"result": held[0]}, held[1][1:], memoryview(held[2])
    del held            # the fourth is free again; the other three are held
    again = arrays.empty(5, np.float64)
    assert id(again) == ids[3]
    fresh = arrays.empty(5, np.float64)
    ids.append(id(fresh))
    assert ids[-1] not in ids[:-1]
    assert id(arrays.empty((5,), np.float32)) not in ids
    del store, view, sent, again, fresh
    # All five free again: handed out again, no new one made.
    assert {id(array) for array in [arrays.empty(5, np.float64) for _ in range(5)]} == \
        set(ids)
    many = [arrays.empty(3, np.float32) for _ in range(arrays.KEEP + 3)]
    assert len(arrays.made[((3,), np.dtype(np.float32))]) == arrays.KEEP
    del many
    errors = []

    def use(value):
        for _ in range(300):
            array = arrays.empty(64, np.float64)
            array[:] = value
            time.sleep(0)
            if not (array == value).all():
                errors.append(value)

    threads = [threading.Thread(target=use, args=(value,)) for value in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_two_dimensional_targets_and_regression(cluster_client):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 10)).astype(np.float32)
    T = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1).astype(np.float32)
    model = fastbp.MLP([10, 32, 2], ["tanh", "identity"], seed=0)
    trainer = fastbp.Trainer("mse", learning_rate=0.05, batch_size=32, seed=0)
    history = fastbp.dask.fit(model, trainer, da.from_array(X, chunks=(1000, 5)),
                              da.from_array(T, chunks=(500, 1)), client=cluster_client,
                              rounds=10, epochs_per_round=2)
    assert history.loss[-1] < 0.7 * history.loss[0]
    assert model.evaluate(X, T, "mse") == pytest.approx(history.loss[-1], rel=0.3)


def test_bad_arguments_are_refused_before_any_work(cluster_client):
    model, trainer = classifier(), fastbp.Trainer("cce", seed=0)
    X, y = chunked()
    with pytest.raises(TypeError, match="dask array"):
        fastbp.dask.fit(model, trainer, X_TRAIN, y, client=cluster_client)
    with pytest.raises(ValueError, match="columns"):
        fastbp.dask.fit(model, trainer, X[:, :5], y, client=cluster_client)
    with pytest.raises(ValueError, match="rows"):
        fastbp.dask.fit(model, trainer, X, y[:100], client=cluster_client)
    with pytest.raises(ValueError, match="epochs_per_round"):
        fastbp.dask.fit(model, trainer, X, y, client=cluster_client, epochs_per_round=0)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fastbp.dask.fit(model, trainer, X[X[:, 0] > 0], y[X[:, 0] > 0], client=cluster_client)
    # A bad label is found on the worker and raised here, with the trainer's message.
    bad = da.from_array(np.full(Y_TRAIN.shape, 9), chunks=3000)
    for rounds in (1, 3):
        with pytest.raises(ValueError, match="class labels"):
            fastbp.dask.fit(model, trainer, X, bad, client=cluster_client, rounds=rounds)
    np.testing.assert_array_equal(model._params, classifier()._params)
    # and leaves nothing on the cluster (a failed round's futures, and the round submitted
    # ahead, were kept alive by the error's own traceback: 7 more a failed fit)
    assert_nothing_left_on(cluster_client)


def assert_nothing_left_on(client, before=()):
    """No future left on the cluster but those in `before` (the keys of the futures there
    before the fits; the client forgets a released one soon after, not at once)."""
    deadline = time.monotonic() + 10
    while set(client.futures) - set(before) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    assert not set(client.futures) - set(before)


def test_callbacks_stop_between_rounds(cluster_client):
    """A callback stops the fit after round 2: the round submitted ahead is dropped, and the
    model is exactly that of a 2-round fit."""
    class StopAfterTwo(Callback):
        def on_epoch_end(self, epoch, logs):
            return epoch == 1

    X, y = chunked()
    model, two_rounds = classifier(), classifier()
    history = fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0), X, y,
                              client=cluster_client, rounds=10, callbacks=[StopAfterTwo()])
    assert history.epochs == 2 and history.stopped_early
    fastbp.dask.fit(two_rounds, fastbp.Trainer("cce", seed=0), X, y, client=cluster_client,
                    rounds=2)
    np.testing.assert_array_equal(model._params, two_rounds._params)


def test_a_fit_ending_while_another_workers_averaging_runs_leaves_the_users_futures(
        cluster_client):
    """The driver takes a round's result from one worker's averaging; when the other's
    still ran at the fit's end (here: the user's own task kept that worker busy), the
    tasks it read were let go of by the driver but still on the scheduler, and the fit's
    cancel of its chunks failed an assertion in the scheduler (`assert ts.who_wants`),
    which dropped the client: the user's futures made before the fit were cancelled
    ("scheduler-connection-lost") and a persisted array lost ("lost dependencies"),
    3 times in 3 runs."""
    client = cluster_client
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4_000, 784)).astype(np.float32)
    y = rng.integers(0, 10, 4_000)
    X_d = client.persist(da.from_array(X, chunks=(2_000, -1)))
    y_d = client.persist(da.from_array(y, chunks=2_000))
    mine = client.submit(sum, [1, 2, 3])
    busy = []

    class BusySecondWorker(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:      # the user's task, first on that worker before round 2
                second = sorted(client.nthreads())[1]
                busy.append(client.submit(time.sleep, 1.5, workers=[second], pure=False,
                                          priority=10))

    model = fastbp.MLP([784, 512, 512, 10], ["relu", "relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=64, seed=0)
    history = fastbp.dask.fit(model, trainer, X_d, y_d, client=client, rounds=2,
                              callbacks=[BusySecondWorker()])
    assert len(history.loss) == 2 and busy
    assert mine.result(timeout=60) == 6
    assert float(X_d.sum().compute()) == pytest.approx(float(X.sum(dtype=np.float64)),
                                                       rel=1e-5)
    assert client.submit(int, 7).result(timeout=60) == 7


def test_a_fit_never_cancels_what_it_lets_go_of(cluster_client):
    """A cancel goes on to the tasks that depend on what it cancels; after a lost worker
    some of those (of rounds submitted again) were wanted by no one, and the fit's cancels
    failed the scheduler's `assert ts.who_wants`, which dropped the client and the user's
    futures (a review's random SIGKILLs: 3 of 25 fits; 0 of 50 once the fit released its
    futures instead). So a fit cancels nothing on any way out (an early stop, the round
    ahead let go of; a lost round run again; the end) but chunks stranded with a lost
    worker, whose keys are computed again at once; and nothing stays behind."""
    client = cluster_client
    mine = client.submit(sum, [1, 2, 3])
    cancel, cancelled = client.cancel, []

    def recorded(futures, *arguments, **keywords):
        cancelled.extend(future.key for future in futures)
        return cancel(futures, *arguments, **keywords)

    with mock.patch.object(client, "cancel", recorded):
        reference, history, _ = fit_beside(client, Idle, seed=4, rounds=3, lazy=True)
        assert history.epochs == 3
        killer_model, history, killer = fit_beside(
            client, lambda rounds: Killer(client, 1, rounds), seed=4, rounds=3, lazy=True)
        assert killer.killed is not None
        assert history.epochs == 3
        early = fastbp.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
        X, y = chunked(3_000)
        history = fastbp.dask.fit(
            fastbp.MLP([10, 512, 512, 4], ["relu", "relu", "softmax"], seed=0),
            fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=4, n_threads=1),
            X, y, client=client, rounds=5, callbacks=[early])
        assert history.epochs < 5
    assert all("-data-" in str(key) for key in cancelled), cancelled
    np.testing.assert_array_equal(killer_model._params, reference._params)
    assert mine.result(timeout=60) == 6
    deadline = time.monotonic() + 30
    while client.run_on_scheduler(lambda dask_scheduler: [
            key for key in dask_scheduler.tasks if "fastbp" in str(key)]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(lambda dask_scheduler: [
        key for key in dask_scheduler.tasks if "fastbp" in str(key)]) == []


def test_data_persisted_on_another_cluster_is_refused_by_name(cluster_client):
    """X persisted through the module's client, fit given a client of another cluster: a
    KeyError from that cluster's scheduler (and its ERROR logs) before."""
    X_d, y_d = chunked()
    X_d = cluster_client.persist(X_d)
    model = classifier()
    before = model.parameter_vector().copy()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as other, \
            distributed.Client(other, set_as_default=False) as other_client:
        with pytest.raises(ValueError, match="X holds data persisted on another cluster"):
            fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0), X_d, y_d,
                            client=other_client, rounds=1)
    np.testing.assert_array_equal(model.parameter_vector(), before)


def test_a_worker_killed_mid_fit_does_not_lose_the_run(cluster_client):
    """SIGKILL one worker process while it trains a block of round 2: the scheduler re-runs
    the lost tasks (and recomputes the lost chunks from the graph) on the other worker, the
    fit completes, and its result is bit-identical to an undisturbed run."""
    reference, _, _ = fit_beside(cluster_client, None, seed=11, epochs_per_round=2)
    model, history, killer = fit_beside(
        cluster_client, lambda rounds: Killer(cluster_client, 1, rounds), seed=11,
        epochs_per_round=2)
    assert killer.killed is not None, "no worker was killed"
    assert killer.rounds_done_at_kill == 1, "the worker was not killed while round 2 ran"
    assert history.epochs == 3
    np.testing.assert_array_equal(model._params, reference._params)
    assert accuracy(model) > 0.85


def test_a_cluster_of_one_worker_survives_losing_it():
    """One worker process, SIGKILLed while it trains round 2; its nanny starts another, at
    a new address. Everything the fit had on the cluster went with it: the chunks (which
    the graph recomputes, though their tasks named the dead worker and waited for it), the
    model's copies (scattered again) and the averaging's state (the driver keeps one when
    a single worker trains). The fit completes with the bits of an undisturbed run."""
    with dask.config.set(CLUSTER_CONFIG), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        reference, _, _ = fit_beside(client, None, seed=11)
        model, history, killer = fit_beside(
            client, lambda rounds: Killer(client, 1, rounds), seed=11)
        assert killer.killed is not None, "no worker was killed"
        assert killer.rounds_done_at_kill == 1, "the worker was not killed while round 2 ran"
        assert killer.killed not in client.nthreads()       # the new worker is another
        assert history.epochs == 3
        np.testing.assert_array_equal(model._params, reference._params)


def test_a_cluster_whose_workers_never_come_back_ends_the_fit_with_lost_data(monkeypatch):
    """Every worker lost and none started again: the fit waits WORKER_WAIT_SECONDS for one,
    then raises LostDataError saying so, the model at the last completed round (it was a
    bare TimeoutError after 30 s, from re-scattering the model's copies before waiting)."""
    monkeypatch.setattr(fastbp.dask, "WORKER_WAIT_SECONDS", 3)
    X, y = chunked(3_000)
    with dask.config.set(CLUSTER_CONFIG), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        after_one = []

        class LoseEveryWorker(Callback):
            def on_epoch_end(self, epoch, logs):
                if epoch == 0:
                    after_one.append(self.model.parameter_vector())
                    cluster.scale(0)
                    for pid in pids.values():
                        os.kill(pid, signal.SIGKILL)

        model = classifier()
        started = time.perf_counter()
        with pytest.raises(fastbp.dask.LostDataError, match="none came back within 3 s"):
            fastbp.dask.fit(model, fastbp.Trainer("cce", seed=6, n_threads=1), X, y,
                            client=client, rounds=3, callbacks=[LoseEveryWorker()])
        assert time.perf_counter() - started < 25
        np.testing.assert_array_equal(model.parameter_vector(), after_one[0])


def fit_beside(client, make_thread, seed, rounds=3, lazy=False, **fit_arguments):
    """fastbp.dask.fit of a 10-512-512-4 model (wide enough that a block's round takes a
    good fraction of a second) with a Rounds callback, and make_thread(rounds) (None: no
    thread) running beside it; returns (model, history, the thread). lazy: no callback
    (the driver then takes the parameters of the last round only); the Rounds counter
    follows the rounds the driver accepts."""
    X, y = chunked(3_000)
    model = fastbp.MLP([10, 512, 512, 4], ["relu", "relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=seed, n_threads=1)
    counter = Rounds()
    accept = fastbp.dask._Averager.accept

    def counted(averager, taken):
        accepted = accept(averager, taken)
        counter.taken.append(taken.parameters is not None)
        counter.done += accepted
        return accepted

    thread = make_thread(counter) if make_thread else None
    if thread:
        thread.start()
    try:
        with mock.patch.object(fastbp.dask._Averager, "accept", counted) if lazy \
                else contextlib.nullcontext():
            history = fastbp.dask.fit(model, trainer, X, y, client=client, rounds=rounds,
                                      callbacks=[] if lazy else [counter], **fit_arguments)
    finally:
        if thread:
            thread.stop.set()
            thread.join()
    return model, history, thread


class Rounds(Callback):
    """Counts the rounds the driver has completed."""

    def __init__(self):
        self.done = 0
        self.taken = []     # (fit_beside's lazy fits) whether each round's parameters came

    def on_epoch_end(self, epoch, logs):
        self.done += 1


class Killer(threading.Thread):
    """Waits until the driver has completed `round_index` rounds and a worker is running a
    training task of round `round_index` (from 0; submitted a round ahead), then kills that
    worker's process."""

    def __init__(self, client, round_index, rounds):
        super().__init__(daemon=True)
        self.client = client
        self.marker, self.round_index = f"-r{round_index}-b", round_index
        self.rounds = rounds
        self.pids = client.run(os.getpid)
        self.stop = threading.Event()
        self.killed = self.rounds_done_at_kill = None

    def run(self):
        while not self.stop.is_set():
            if self.rounds.done < self.round_index:
                time.sleep(0.005)
                continue
            for worker, keys in self.client.processing().items():
                if any(self.marker in str(key) for key in keys):
                    time.sleep(0.05)     # inside the task
                    self.rounds_done_at_kill = self.rounds.done
                    os.kill(self.pids[worker], signal.SIGKILL)
                    self.killed = worker
                    return
            time.sleep(0.005)


def test_each_block_trains_with_its_workers_threads_on_its_own_worker(cluster_client):
    """n_threads=None: a block on a 1-thread worker trains with 1 BLAS thread (not every
    core of the machine), and two equal chunks train on the two workers, one each."""
    X, y = chunked(6_000)
    calls = []
    original = fastbp.Trainer._fit_rows

    history = fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0), X, y,
                              client=cluster_client, rounds=2)
    workers = sorted(cluster_client.nthreads())
    for trained in history.placement:
        assert sorted(trained) == [0, 1]
        assert sorted(block.worker for block in trained.values()) == workers
        assert [(block.rows, block.threads) for block in trained.values()] == [(6000, 1)] * 2
        assert all(block.seconds > 0 for block in trained.values())

    # On dask's local scheduler too (blocks run side by side on its threads): 1 thread.
    def recording_fit(trainer, *args, **kwargs):
        calls.append(trainer.n_threads)
        return original(trainer, *args, **kwargs)

    with mock.patch.object(fastbp.dask, "_client_for", lambda client: None), \
            mock.patch.object(fastbp.Trainer, "_fit_rows", recording_fit):
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0), X, y, rounds=1)
    assert calls == [1, 1]


def rule_in_numpy(weights, buffer, start, average, momentum, learning_rate, dtype):
    """Block momentum's step in float64 NumPy (buffer None: none yet): the new W, D and the
    next round's start S in `dtype`."""
    step = learning_rate * (average - start.astype(np.float64))
    if buffer is not None:
        step = step + momentum * buffer
    return weights + step, step, (weights + step + momentum * step).astype(dtype)


def weighted_terms(rng, n, dtype):
    """A round's parts as the averaging reads them: two blocks' parameters (in the model's
    dtype) with their rows, and a partial sum in float64 (factor 1); and their sum as
    NumPy makes it, one array operation after another."""
    parts = [rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype),
             rng.normal(size=n) * 5.0]
    factors = np.array([3.0, 7.0, 1.0])
    total = (parts[0].astype(np.float64) * 3.0 + parts[1].astype(np.float64) * 7.0) \
        + parts[2]
    return parts, factors, total, 15.0


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 3 * 1024 + 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_averaging_step_is_the_rule_written_in_numpy(dtype, n):
    """_core.averaging_step (the parts summed and stepped in one pass, no temporaries)
    against the rule in float64 NumPy, on every edge of its spans of values: block
    momentum with and without a buffer, and plain averaging; a result beyond the dtype
    (or NaN) is reported, and mismatched sizes and types are refused."""
    from fastbp import _core
    rng = np.random.default_rng(n)
    parts, factors, total, rows = weighted_terms(rng, n, dtype)
    momentum, learning_rate = 0.75, 1.5
    weights, buffer = rng.normal(size=n), rng.normal(size=n) * 0.1
    start = (weights + momentum * buffer).astype(dtype)
    nothing = np.empty(0)
    for old_buffer in (buffer, None):
        out = np.empty(n), np.empty(n), np.empty(n, dtype)
        assert _core.averaging_step(parts, factors, rows, weights,
                                    nothing if old_buffer is None else old_buffer, start,
                                    momentum, learning_rate, out[0], out[1], out[2])
        for mine, expected in zip(out, rule_in_numpy(weights, old_buffer, start, total / rows,
                                                      momentum, learning_rate, dtype)):
            np.testing.assert_array_equal(mine, expected)
    out = np.empty(n), np.empty(n, dtype)
    assert _core.averaging_step(parts, factors, rows, weights, nothing, start, 0.0, 1.0,
                                out[0], nothing, out[1])
    np.testing.assert_array_equal(out[0], total / rows)
    np.testing.assert_array_equal(out[1], (total / rows).astype(dtype))
    summed = np.empty(n)
    _core.weighted_sum(parts, factors, summed)
    np.testing.assert_array_equal(summed, total)
    # Dask delivers a part it received at any byte offset: read as it lies, the same sum.
    shifted = [unaligned(part) for part in parts]
    assert not any(part.flags.aligned for part in shifted)
    _core.weighted_sum(shifted, factors, summed)
    np.testing.assert_array_equal(summed, total)
    out = np.empty(n), np.empty(n, dtype)
    assert _core.averaging_step(shifted, factors, rows, weights, nothing, start, 0.0, 1.0,
                                out[0], nothing, out[1])
    np.testing.assert_array_equal(out[0], total / rows)
    for bad in (np.finfo(dtype).max * 4.0, np.nan):
        spoilt = [total.copy()]
        spoilt[0][n // 2] = bad
        assert not _core.averaging_step(spoilt, np.ones(1), 1.0, weights, buffer, start,
                                        momentum, learning_rate, np.empty(n), np.empty(n),
                                        np.empty(n, dtype))
        assert not _core.averaging_step(spoilt, np.ones(1), 1.0, weights, nothing, start, 0.0,
                                        1.0, np.empty(n), nothing, np.empty(n, dtype))
    outputs = np.empty(n), np.empty(n), np.empty(n, dtype)
    with pytest.raises(ValueError, match="vectors of"):
        _core.averaging_step([parts[0], parts[1][:-1] if n > 1 else parts[1][:0]], factors[:2],
                             rows, weights, buffer, start, momentum, learning_rate, *outputs)
    with pytest.raises(ValueError, match="one factor per part"):
        _core.averaging_step(parts, factors[:2], rows, weights, buffer, start, momentum,
                             learning_rate, *outputs)
    with pytest.raises(ValueError, match="one factor per part"):
        _core.weighted_sum([], np.empty(0), summed)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.weighted_sum([parts[0].astype(np.int64)], np.ones(1), summed)
    with pytest.raises(ValueError, match="sizes"):
        _core.averaging_step(parts, factors, rows, weights, buffer, start[:-1] if n > 1
                             else start[:0], momentum, learning_rate, *outputs)
    with pytest.raises(ValueError, match="sizes"):      # a buffer but no new one
        _core.averaging_step(parts, factors, rows, weights, buffer, start, momentum,
                             learning_rate, outputs[0], nothing, outputs[2])


def test_the_averaging_reads_a_state_and_parts_sent_at_any_byte_offset():
    """Dask delivers what it transfers at any byte offset: a round's state and the blocks'
    parameters one byte off their alignment average as aligned ones do (the state copied,
    the parts read where they lie)."""
    rng = np.random.default_rng(1)
    n, rule = 2051, fastbp.dask._Rule(0.5, 1.0)
    state = rule.begin(rng.normal(size=n), rng.normal(size=n) * 0.1, np.float32)
    parts = [{"parameters": rng.normal(size=n).astype(np.float32), "rows": rows,
              "weight": float(rows)} for rows in (7, 9)]
    expected = rule.advance(state, parts, 16)
    shifted = rule.advance(fastbp.dask._State(*(unaligned(array) for array in state)),
                           [{**part, "parameters": unaligned(part["parameters"])}
                            for part in parts], 16)
    for mine, theirs in zip(shifted, expected):
        np.testing.assert_array_equal(mine, theirs)


def test_placement_refuses_what_is_no_cluster_by_name():
    """An empty worker dict gave min()'s message, 0 threads a ZeroDivisionError, negative
    or fractional rows were placed (the audit)."""
    for rows, workers, error, message in (
            ([10], {}, ValueError, "at least one worker"),
            ([10], {"a": 0}, ValueError, "threads of worker 'a'"),
            ([-5, 10], {"a": 1}, ValueError, "rows of block 0"),
            ([2.5], {"a": 1}, ValueError, "rows of block 0"),
            ([10], {"a": "2"}, TypeError, "threads of worker 'a'")):
        with pytest.raises(error, match=message):
            fastbp.dask.placement(rows, workers)
    with pytest.raises(TypeError, match="verbose"):
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce"), *chunked(), verbose="x")


def test_placement_balances_rows_per_thread_and_follows_the_workers():
    place = fastbp.dask.placement
    # Equal chunks alternate; a worker with two threads takes twice the rows.
    assert place([100] * 4, {"a": 1, "b": 1}) == ["a", "b", "a", "b"]
    assert place([100] * 6, {"a": 2, "b": 1}).count("a") == 4
    # Unequal chunks: the largest first, each to the least loaded worker.
    assert place([500, 100, 100, 100, 100, 100], {"a": 1, "b": 1}) == \
        ["a", "b", "b", "b", "b", "b"]
    # A worker joins or leaves: the same rule over the new set.
    assert place([100] * 4, {"a": 1, "b": 1, "c": 1}) == ["a", "b", "c", "a"]
    assert place([100] * 4, {"b": 1}) == ["b"] * 4
    threads = fastbp.dask.threads_per_block
    assert threads(["a", "b"], {"a": 4, "b": 1}) == [4, 1]          # alone: all its threads
    assert threads(["a", "a", "b"], {"a": 4, "b": 1}) == [2, 2, 1]  # two at once share them
    assert threads(["a"] * 6, {"a": 4}) == [1] * 6                  # four at once: one each


def test_placement_keeps_blocks_where_their_data_is_within_the_balance():
    place = fastbp.dask.placement
    # Two chunks held the other way round from the addresses' order: each stays put.
    assert place([100, 100], {"a": 1, "b": 1}, [{"b": 800}, {"a": 800}]) == ["b", "a"]
    # The worker that holds most of a block's bytes.
    assert place([100, 100], {"a": 1, "b": 1}, [{"a": 10, "b": 800}, {}]) == ["b", "a"]
    # The balance first: four chunks all on one worker still train two on each.
    assert place([100] * 4, {"a": 1, "b": 1}, [{"a": 1}] * 4) == ["a", "a", "b", "b"]
    # Unequal chunks: within the balance's own bound (500 rows on each worker here).
    assert place([500, 100, 100, 100, 100, 100], {"a": 1, "b": 1}, [{"b": 1}] * 6) == \
        ["b", "a", "a", "a", "a", "a"]
    # Nothing held (data not computed yet): the balance alone.
    assert place([100] * 4, {"a": 1, "b": 1}, [{}] * 4) == ["a", "b", "a", "b"]


def test_chunks_train_where_the_cluster_already_holds_them(cluster_client):
    """Data in the workers' memory (scattered, or a persisted array) is trained where it
    lies: no chunk crosses to another worker to be trained, whichever way Dask put it."""
    client = cluster_client
    workers = sorted(client.nthreads())
    rows = 6_000

    def train(X, y):
        with distributed.get_task_stream(client) as stream:
            history = fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0), X, y,
                                      client=client, rounds=1)
        # Transfers to the tasks that make the chunks (a from_delayed piece, the block's
        # pair): a chunk, or a piece of it, moving. (A training task may still fetch the
        # model or the start, scattered to every worker: seen once under the checked
        # build; the averaging tasks fetch the partial sums.)
        moved = [task["key"] for task in stream.data
                 if not any(part in str(task["key"]) for part in ("-r0-b", "-advance-",
                                                                   "-take")) and
                 any(part["action"] == "transfer" for part in task["startstops"])]
        return {block: trained.worker for block, trained in history.placement[0].items()}, \
            moved

    # Each half scattered to the worker that comes second in the addresses' order for it.
    holders = [workers[1], workers[0]]
    parts = [(client.scatter(X_TRAIN[i * rows:(i + 1) * rows], workers=[holders[i]]),
              client.scatter(Y_TRAIN[i * rows:(i + 1) * rows], workers=[holders[i]]))
             for i in range(2)]
    X = da.concatenate([da.from_delayed(x, (rows, 10), X_TRAIN.dtype) for x, _ in parts])
    y = da.concatenate([da.from_delayed(y, (rows,), Y_TRAIN.dtype) for _, y in parts])
    assert train(X, y) == ({0: holders[0], 1: holders[1]}, [])

    # A persisted array, wherever Dask computed its chunks: both stay where they are, or,
    # when Dask put both on one worker, one moves (the balance: one chunk on each).
    X, y = client.persist(list(chunked(rows)))
    distributed.wait([X, y])
    where = client.who_has(X)
    held = [where[key][0] for key in sorted(map(tuple, where))]
    placed, moved = train(X, y)
    staying = [block for block in placed if placed[block] == held[block]]
    assert sorted(placed.values()) == workers
    assert len(staying) == (2 if len(set(held)) == 2 else 1) and len(moved) == 2 - len(staying)


def unaligned(array):
    """A copy of `array` one byte off its dtype's alignment."""
    raw = np.zeros(array.nbytes + 1, np.uint8)
    copy = np.frombuffer(raw.data, array.dtype, array.size, offset=1).reshape(array.shape)
    copy[...] = array
    assert not copy.flags.aligned
    return copy


def aligned_parts(pair):
    """Whether each array of a block's pair is aligned for its dtype (the fit copies one
    that is not, in every round)."""
    x, y = pair.x, pair.y
    parts = (x.data, x.indices, x.indptr) if scipy.sparse.issparse(x) else (x,)
    return all(part.flags.aligned and part.flags.c_contiguous for part in (*parts, y))


def test_a_chunk_is_aligned_where_it_is_made_and_wherever_it_is_sent(cluster_client):
    """Dask delivers a transferred array at any byte offset (and may have made a chunk
    that way), so a block's pair aligns its arrays when it is made and when it is
    unpickled on another worker: once, not a copy of the chunk in every round's fit."""
    x, y = unaligned(X_TRAIN[:100]), unaligned(Y_TRAIN[:100])
    for pair in (fastbp.dask._pair(x, y, "float32", False),
                 fastbp.dask._pair(x, y, "float64", False),
                 fastbp.dask._pair(scipy.sparse.csr_array(x), unaligned(Y_TRAIN[:100] * 1.0),
                                   "float32", True),
                 pickle.loads(pickle.dumps(fastbp.dask._Pair(x, y, [None]), protocol=5))):
        assert aligned_parts(pair)
        assert pair.kept == []          # what a round keeps stays on its worker
        np.testing.assert_array_equal(scipy.sparse.csr_array(pair.x).toarray(), x)
        np.testing.assert_array_equal(pair.y, Y_TRAIN[:100])
    first, second = sorted(cluster_client.nthreads())
    made = cluster_client.submit(fastbp.dask._pair, X_TRAIN[:1001], Y_TRAIN[:1001],
                                 "float32", False, workers=[first], pure=False)
    for worker in (first, second):
        assert cluster_client.submit(aligned_parts, made, workers=[worker],
                                     pure=False).result()


def test_chunks_are_placed_again_when_a_worker_joins():
    """A worker that joins between rounds takes half of the chunks from the next round on,
    and the result is the same as on a cluster that had both workers from the start."""
    X, y = chunked(3_000)

    def run(start_workers, add_after_first_round):
        with distributed.LocalCluster(n_workers=start_workers, threads_per_worker=1,
                                      processes=False, dashboard_address=None) as local, \
                distributed.Client(local, set_as_default=False) as client:
            class AddWorker(Callback):
                def on_epoch_end(self, epoch, logs):
                    if epoch == 0 and add_after_first_round:
                        local.scale(2)
                        client.wait_for_workers(2, timeout=30)

            model = classifier()
            history = fastbp.dask.fit(model, fastbp.Trainer("cce", seed=6, n_threads=1), X,
                                      y, client=client, rounds=3, callbacks=[AddWorker()])
            return model, [sorted({b.worker for b in trained.values()})
                           for trained in history.placement], \
                [[b.worker for b in trained.values()].count(trained[0].worker)
                 for trained in history.placement]

    model, workers, on_first = run(1, add_after_first_round=True)
    assert len(workers[0]) == 1 and len(workers[1]) == len(workers[2]) == 2
    assert on_first == [4, 2, 2]          # 4 chunks: all on one, then two on each
    reference, _, _ = run(2, add_after_first_round=False)
    np.testing.assert_array_equal(model._params, reference._params)


def test_block_momentum_is_the_default_and_mean_is_plain_averaging(cluster_client):
    """averaging="mean" writes the row-weighted average; block momentum starts each round
    from W + m D and, with one chunk (m = 0), is the average as well."""
    X, y = chunked(3_000)
    trainer = fastbp.Trainer("cce", learning_rate=0.05, seed=4, n_threads=1)
    runs = {}
    for averaging in ("mean", "block_momentum", None):
        model = classifier()
        kwargs = {} if averaging is None else {"averaging": averaging}
        fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=3, **kwargs)
        runs[averaging] = model._params.copy()
    np.testing.assert_array_equal(runs[None], runs["block_momentum"])
    assert not np.allclose(runs["mean"], runs["block_momentum"])
    one_chunk = da.from_array(X_TRAIN[:3000]), da.from_array(Y_TRAIN[:3000])
    for averaging in ("mean", "block_momentum"):
        model = classifier()
        fastbp.dask.fit(model, trainer, *one_chunk, client=cluster_client, rounds=2,
                        averaging=averaging)
        runs[averaging] = model._params.copy()
    np.testing.assert_array_equal(runs["mean"], runs["block_momentum"])
    with pytest.raises(ValueError, match="averaging"):
        fastbp.dask.fit(classifier(), trainer, X, y, client=cluster_client, averaging="avg")
    with pytest.raises(ValueError, match="block_momentum"):
        fastbp.dask.fit(classifier(), trainer, X, y, client=cluster_client, block_momentum=1)
    for option in ({"block_momentum": 0.5}, {"block_learning_rate": 2.0}):   # not silently
        with pytest.raises(ValueError, match="averaging='mean' takes neither"):
            fastbp.dask.fit(classifier(), trainer, X, y, client=cluster_client,
                            averaging="mean", **option)


def test_rounds_per_epoch_trains_each_piece_of_a_chunk_once_per_epoch(cluster_client):
    """rounds_per_epoch=3 on one chunk without shuffling: the three rounds of an epoch are
    Trainer.fit on the chunk's three consecutive thirds, one after the other (one chunk:
    the average is the copy), bit for bit; the rounds default to epochs x 3 and each takes
    its epoch's learning rate."""
    rows = 1000
    X, y = da.from_array(X_TRAIN[:rows]), da.from_array(Y_TRAIN[:rows])
    schedule = fastbp.schedules.StepDecay(step_size=1, gamma=0.5)
    trainer = fastbp.Trainer("cce", learning_rate=0.08, batch_size=32, epochs=2, seed=3,
                             n_threads=1, shuffle=False, schedule=schedule)
    model = classifier()
    history = fastbp.dask.fit(model, trainer, X, y, client=cluster_client,
                              rounds_per_epoch=3)
    assert history.epochs == 6
    assert history.history["learning_rate"] == [0.08] * 3 + [0.04] * 3
    assert [trained[0].rows for trained in history.placement] == [333, 333, 334] * 2
    expected = classifier()
    for rate in (0.08, 0.04):
        for start, stop in ((0, 333), (333, 666), (666, 1000)):
            fastbp.Trainer("cce", learning_rate=rate, batch_size=32, epochs=1, shuffle=False,
                           n_threads=1).fit(expected, X_TRAIN[start:stop], Y_TRAIN[start:stop])
    np.testing.assert_array_equal(model._params, expected._params)


def test_pieces_of_a_shuffled_epoch_cover_every_row_once_in_a_new_order():
    """With shuffle, a chunk's pieces in one epoch are a partition of its rows (every row
    trained once per epoch); the next epoch cuts another order."""
    n_rows, count = 1003, 4
    for epoch_seed in (fastbp.dask._order_seed(5, 0, 2), fastbp.dask._order_seed(5, 1, 2)):
        pieces = [fastbp.dask._piece_rows(n_rows, fastbp.dask.Piece(epoch_seed, index, count))
                  for index in range(count)]
        assert [len(piece) for piece in pieces] == [250, 251, 251, 251]
        np.testing.assert_array_equal(np.sort(np.concatenate(pieces)), np.arange(n_rows))
    first = fastbp.dask._piece_rows(n_rows, fastbp.dask.Piece(
        fastbp.dask._order_seed(5, 0, 2), 0, count))
    second = fastbp.dask._piece_rows(n_rows, fastbp.dask.Piece(
        fastbp.dask._order_seed(5, 1, 2), 0, count))
    assert not np.array_equal(np.sort(first), np.sort(second))
    assert fastbp.dask._order_seed(5, 0, 2) != fastbp.dask._order_seed(5, 0, 3)
    np.testing.assert_array_equal(
        fastbp.dask._piece_rows(n_rows, fastbp.dask.Piece(None, 1, count)), np.arange(250, 501))


def test_a_block_trains_its_piece_in_place_as_a_fit_on_a_copy_and_sends_its_parameters():
    """A block's piece of a shuffled chunk is trained where the chunk lies (Trainer._fit_rows:
    no copy of its rows) with the bits of a fit on a copy; the block sends its parameters
    in the model's dtype and _combine weights them by the rows in float64, in the tree's
    order, as the blocks did when they sent float64 sums."""
    model, rows = classifier(), 3_000
    pair = fastbp.dask._aligned_pair(X_TRAIN[:rows], Y_TRAIN[:rows])
    trainer = fastbp.Trainer("cce", learning_rate=0.08, batch_size=32, seed=3, n_threads=1)
    start = fastbp.dask._Rule(None, 1.0).begin(model.parameter_vector(np.float64), None,
                                                model.dtype)
    parts, copies = [], fastbp.dask._Copies(model.to_bytes())
    for index in range(3):
        piece = fastbp.dask.Piece(fastbp.dask._order_seed(5, 0, 0), index, 3)
        part = fastbp.dask._train_block(copies, start, trainer.arguments(), pair,
                                        11 + index, [0.08], 1, 0, piece)
        piece_rows = fastbp.dask._piece_rows(rows, piece)
        expected = classifier()
        fastbp.Trainer(**{**trainer.arguments(), "seed": 11 + index, "epochs": 1}).fit(
            expected, X_TRAIN[piece_rows], Y_TRAIN[piece_rows])
        assert part["parameters"].dtype == np.float32 and part["rows"] == len(piece_rows)
        np.testing.assert_array_equal(part["parameters"], expected._params)
        # The block keeps its checked chunk and order, the worker its copy of the model
        # and that fit's memory, for the next round (the later pieces train on them, with
        # the same bits); it sends a copy of the parameters, which the next round does
        # not touch.
        assert len(pair.kept) == 1 and len(copies.spare) == 1
        assert not np.shares_memory(part["parameters"], copies.spare[0][0]._params)
        parts.append(part)
    assert pickle.loads(pickle.dumps(copies)).spare == []      # never sent
    kept = pair.kept[0]
    with pytest.raises(ValueError, match="checked for another model"):
        trainer._fit_rows(fastbp.MLP([10, 32, 4], ["relu", "softmax"], dtype="float64"),
                          pair.x, pair.y, None, checked=kept.inputs)
    total = fastbp.dask._combine(copies, fastbp.dask._combine(copies, *parts[:2]),
                                 parts[2])
    weighted = [part["parameters"].astype(np.float64) * part["rows"] for part in parts]
    np.testing.assert_array_equal(total["sum"], (weighted[0] + weighted[1]) + weighted[2])
    assert total["rows"] == rows


def test_a_worker_keeps_model_copies_for_the_tasks_it_runs_at_once_not_per_chunk():
    """8 chunks on dask's local scheduler with 2 threads, 3 rounds: the copies of the model
    the blocks decode (with their fits' memory) are kept for the next tasks, at most as
    many as ran at once, not one per chunk (a model of many MiB times many chunks)."""
    X, y = chunked(1_500)
    kept = []
    give_back = fastbp.dask._Copies.give_back

    def recording(copies, model, buffers):
        give_back(copies, model, buffers)
        kept.append(len(copies.spare))

    with mock.patch.object(fastbp.dask, "_client_for", lambda client: None), \
            mock.patch.object(fastbp.dask._Copies, "give_back", recording), \
            dask.config.set(num_workers=2):
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                        rounds=3)
    assert len(kept) == 8 * 3 and 1 <= max(kept) <= 2


def test_rounds_per_epoch_is_reproducible_and_closer_to_one_process_per_pass(cluster_client):
    """Several averagings per pass: bit-identical on the cluster and on dask's local
    scheduler, and with 8 chunks (block momentum) a better held-out loss after the same
    passes than one averaging per pass, as the docs' measurements say."""
    X, y = chunked(1_500)          # 8 chunks
    runs, losses = [], {}
    for rounds_per_epoch, on_cluster in ((8, True), (8, False), (1, True)):
        model = classifier()
        trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, epochs=4, seed=7,
                                 n_threads=1)
        with mock.patch.object(fastbp.dask, "_client_for",
                               lambda client: client if on_cluster else None):
            history = fastbp.dask.fit(model, trainer, X, y, client=cluster_client,
                                      rounds_per_epoch=rounds_per_epoch,
                                      validation_data=(X_TEST, Y_TEST))
        assert history.epochs == 4 * rounds_per_epoch
        runs.append(model._params.copy())
        losses[rounds_per_epoch] = history.history["val_loss"][-1]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert losses[8] < 0.9 * losses[1]


def test_rounds_per_epoch_refusals_leave_the_model_as_it_was(cluster_client):
    model, trainer = classifier(), fastbp.Trainer("cce", seed=0, n_threads=1)
    X, y = chunked()
    for kwargs, message in (({"rounds_per_epoch": 0}, "rounds_per_epoch"),
                            ({"rounds_per_epoch": 1.5}, "rounds_per_epoch"),
                            ({"rounds_per_epoch": 2, "epochs_per_round": 2}, "both be above 1"),
                            ({"rounds_per_epoch": 3001}, "only 3000 rows")):
        with pytest.raises((ValueError, TypeError), match=message):
            fastbp.dask.fit(model, trainer, X, y, client=cluster_client, **kwargs)
    np.testing.assert_array_equal(model._params, classifier()._params)


def test_a_block_momentum_step_beyond_the_dtype_stops_with_the_model_kept(cluster_client):
    """A step that would overflow the model's dtype is not taken: the fit stops as
    diverged, with a warning, and the model keeps the previous round's parameters."""
    X, y = chunked(3_000)
    model = classifier()
    with pytest.warns(RuntimeWarning, match="not finite"):
        history = fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                                  client=cluster_client, rounds=3, block_learning_rate=1e300)
    assert history.diverged and history.epochs == 0
    np.testing.assert_array_equal(model._params, classifier()._params)


class HalveAfterFirstRound(Callback):
    """Changes the model between rounds 1 and 2 (parameters halved)."""

    def on_epoch_end(self, epoch, logs):
        if epoch == 0:
            self.model.set_parameter_vector(self.model.parameter_vector() * 0.5)


def test_a_round_submitted_ahead_is_redone_when_its_rates_or_model_change(cluster_client):
    """The cluster submits round r + 1 before r ends, with the rates the schedule gives then.
    A schedule that lowers the rate at a round's end (ReduceOnPlateau) and a callback that
    changes the model between rounds make it submit again: the same bits as dask's local
    scheduler (which runs one round at a time), and the change takes effect."""
    X, y = chunked(3_000)

    def run(averaging, on_cluster, callbacks):
        model = classifier()
        # min_delta 10: no round after the first counts as better, so the rate falls at
        # the end of every round from the second on
        plateau = fastbp.schedules.ReduceOnPlateau("loss", factor=0.5, patience=0,
                                                   min_delta=10.0)
        trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=5,
                                 n_threads=1, schedule=plateau)
        with mock.patch.object(fastbp.dask, "_client_for",
                               lambda client: client if on_cluster else None):
            history = fastbp.dask.fit(model, trainer, X, y, client=cluster_client if
                                      on_cluster else None, rounds=4, averaging=averaging,
                                      callbacks=callbacks)
        assert history.history["learning_rate"] == [0.05, 0.05, 0.025, 0.0125]
        return model._params.copy()

    for averaging in ("block_momentum", "mean"):
        changed = run(averaging, True, [HalveAfterFirstRound()])
        np.testing.assert_array_equal(changed, run(averaging, False, [HalveAfterFirstRound()]))
        assert not np.array_equal(changed, run(averaging, True, []))


def test_a_change_to_the_model_between_rounds_is_where_the_next_starts(cluster_client):
    """One chunk (block momentum 0: each round is a Trainer.fit of the block's seed): after
    a callback halved the model, round 2 trains from the halved parameters."""
    X, y = da.from_array(X_TRAIN[:1000]), da.from_array(Y_TRAIN[:1000])
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=3, n_threads=1,
                             shuffle=False)
    for averaging in ("block_momentum", "mean"):
        model = classifier()
        fastbp.dask.fit(model, trainer, X, y, client=cluster_client, rounds=2,
                        averaging=averaging, callbacks=[HalveAfterFirstRound()])
        expected = classifier()
        trainer.fit(expected, X_TRAIN[:1000], Y_TRAIN[:1000])
        expected.set_parameter_vector(expected.parameter_vector() * 0.5)
        trainer.fit(expected, X_TRAIN[:1000], Y_TRAIN[:1000])
        np.testing.assert_array_equal(model._params, expected._params)


@pytest.mark.parametrize("lazy", [False, True])
def test_the_state_lost_with_a_worker_is_taken_from_another_workers_copy(cluster_client,
                                                                         lazy):
    """Between rounds the averaging's state lives on the workers (each averages the round
    itself; the next round's blocks start from it there). SIGKILL one of them while round 2
    trains: the round runs again from the other worker's copy of the state, and the result
    is bit-identical (lazy: also when the driver takes only the last round's parameters)."""
    reference, _, _ = fit_beside(cluster_client, None, seed=9)
    model, history, killer = fit_beside(
        cluster_client, lambda rounds: StateKiller(cluster_client, rounds), seed=9, lazy=lazy)
    assert killer.killed is not None, "no worker held round 1's state while round 2 ran"
    assert history.epochs == 3
    np.testing.assert_array_equal(model._params, reference._params)


def test_a_state_lost_with_every_worker_that_kept_it_says_so(cluster_client):
    """Both workers killed between rounds 1 and 2: the chunks can be recomputed, but the
    averaging's state after round 1 lived only on them (the driver keeps no copy when two
    workers do): LostDataError says so, the model holds round 1's parameters, and nothing
    of the fit is left on the client."""
    pids = cluster_client.run(os.getpid)
    X, y = chunked(3_000)
    before = set(cluster_client.futures)

    class KillBothAfterFirstRound(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                self.after_first = self.model._params.copy()
                for pid in pids.values():
                    os.kill(pid, signal.SIGKILL)
                time.sleep(1.0)        # the scheduler sees the workers go

    model, killer = classifier(), KillBothAfterFirstRound()
    with pytest.raises(fastbp.dask.LostDataError, match="averaging's state after round 1"):
        fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                        client=cluster_client, rounds=3, callbacks=[killer])
    np.testing.assert_array_equal(model._params, killer.after_first)
    assert_nothing_left_on(cluster_client, before)


def test_a_state_lost_with_every_worker_leaves_nothing_on_the_client(cluster_client):
    """As above, without killing a worker (seconds of restarts): the scheduler cancels
    round 1's state, as it does a result lost with every worker that held it. The client
    does not forget such a future while anything references it, and the error each one
    raised when the fit read it holds, through its traceback, the fit's frames that
    referenced it: two cancelled futures were left on the client for good."""
    X, y = chunked(3_000)
    before = set(cluster_client.futures)

    class LoseStateAfterFirstRound(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                kept = [key for key in cluster_client.futures if "-r0-advance-" in str(key)]
                # force, from another client: the scheduler cancels the keys for every
                # client that holds them, which this fit's client then learns of by itself
                with distributed.Client(cluster_client.scheduler.address,
                                        set_as_default=False) as other:
                    other.cancel([distributed.Future(key, other) for key in kept],
                                 force=True)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and any(
                        cluster_client.futures[key].status != "cancelled" for key in kept
                        if key in cluster_client.futures):
                    time.sleep(0.01)

    with pytest.raises(fastbp.dask.LostDataError, match="averaging's state after round 1"):
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                        client=cluster_client, rounds=3,
                        callbacks=[LoseStateAfterFirstRound()])
    assert_nothing_left_on(cluster_client, before)


class StateKiller(threading.Thread):
    """Once the driver has completed round 1 and waits for round 2, kills a worker that
    holds round 1's averaged state."""

    def __init__(self, client, rounds):
        super().__init__(daemon=True)
        self.client, self.rounds = client, rounds
        self.pids = client.run(os.getpid)
        self.stop = threading.Event()
        self.killed = None

    def run(self):
        while not self.stop.is_set() and self.rounds.done < 1:
            time.sleep(0.002)
        time.sleep(0.05)           # the driver is past its checks, waiting for round 2
        holders = [worker for key, workers in self.client.who_has().items()
                   if "-r0-advance-" in str(key) for worker in workers]
        if holders and not self.stop.is_set():
            os.kill(self.pids[holders[0]], signal.SIGKILL)
            self.killed = holders[0]


@pytest.mark.parametrize("lazy", [False, True])
def test_ctrl_c_returns_the_history_at_the_last_completed_round(cluster_client, lazy):
    """SIGINT in the driver while round 2 trains: the history of round 1, marked
    interrupted, and the model exactly as after round 1 (lazy: the driver, which took no
    parameters with the round, takes them from a worker before it returns). Four epochs a
    round: the interrupter sees round 2's training before it ends even when the driver,
    sharing the cores with both workers, accepts round 1 late (one epoch a round was
    once missed in a full suite run)."""
    reference, _, _ = fit_beside(cluster_client, None, seed=2, rounds=1, epochs_per_round=4)
    model, history, sender = fit_beside(
        cluster_client, lambda rounds: Interrupter(cluster_client, 1, rounds), seed=2,
        lazy=lazy, epochs_per_round=4)
    assert sender.sent
    assert history.interrupted and history.epochs == 1
    np.testing.assert_array_equal(model._params, reference._params)


def test_the_driver_takes_the_parameters_once_when_nothing_reads_them_between_rounds(
        cluster_client):
    """No validation and no callbacks: the rounds' results carry no parameters to the
    driver (on a machine whose cores all train, its share of a round slows them), which
    takes the last round's once; the model ends as in a fit that takes them every round."""
    reference, _, _ = fit_beside(cluster_client, Idle, seed=4, lazy=False)
    with mock.patch.object(fastbp.dask._ClusterRounds, "latest_parameters", autospec=True,
                           side_effect=fastbp.dask._ClusterRounds.latest_parameters) as taken:
        model, history, counted = fit_beside(cluster_client, Idle, seed=4, lazy=True)
    assert history.epochs == 3 and counted.rounds.taken == [False] * 3
    assert taken.call_count == 1
    np.testing.assert_array_equal(model._params, reference._params)


def test_ctrl_c_while_the_fit_takes_the_last_rounds_parameters_keeps_them(cluster_client):
    """SIGINT as the driver takes the last round's parameters at the fit's end (no callback
    and no validation: the only time it takes them): fit raised KeyboardInterrupt and the
    model kept its start, whatever rounds had completed. Now the fetch and the clean-up
    finish first, and the history is marked interrupted, as Trainer.fit's."""
    reference, _, _ = fit_beside(cluster_client, Idle, seed=4, lazy=True)
    latest = fastbp.dask._ClusterRounds.latest_parameters

    def interrupted(cluster, averager):
        os.kill(os.getpid(), signal.SIGINT)      # the user's Ctrl-C, at this moment
        time.sleep(0.05)
        return latest(cluster, averager)

    with mock.patch.object(fastbp.dask._ClusterRounds, "latest_parameters", interrupted):
        model, history, _ = fit_beside(cluster_client, Idle, seed=4, lazy=True)
    assert history.interrupted and history.epochs == 3
    np.testing.assert_array_equal(model._params, reference._params)


@pytest.mark.parametrize("failing", [1, 2])
def test_a_worker_lost_while_the_fit_scatters_is_scattered_to_again(cluster_client, failing):
    """A worker killed as a fit began closed its stream mid-scatter: CommClosedError out of
    fit. The scatter (the model's copies: the first; the first round's state: the second)
    is made again, with the same result; a second failure is raised."""
    from distributed.comm.core import CommClosedError
    reference, _, _ = fit_beside(cluster_client, Idle, seed=4, rounds=2, lazy=True)
    scatter, calls = cluster_client.scatter, []

    def closing(*arguments, **keywords):
        calls.append(1)
        if len(calls) == failing:
            raise CommClosedError("in <TCP (closed) ConnectionPool.scatter>: Stream is closed")
        return scatter(*arguments, **keywords)

    with mock.patch.object(cluster_client, "scatter", closing):
        model, history, _ = fit_beside(cluster_client, Idle, seed=4, rounds=2, lazy=True)
    assert history.epochs == 2 and len(calls) == 3
    np.testing.assert_array_equal(model._params, reference._params)
    with mock.patch.object(cluster_client, "scatter",
                           mock.Mock(side_effect=CommClosedError("closed"))), \
            pytest.raises(CommClosedError):
        fit_beside(cluster_client, Idle, seed=4, rounds=2, lazy=True)


class Idle(threading.Thread):
    """fit_beside's thread that does nothing but keep the Rounds counter to look at."""

    def __init__(self, rounds):
        super().__init__(daemon=True)
        self.rounds, self.stop = rounds, threading.Event()

    def run(self):
        pass


def test_scattered_data_lost_with_a_worker_says_so(cluster_client):
    """Chunks placed with client.scatter cannot be recomputed: losing their worker raises
    LostDataError naming the chunk and what to do, not FutureCancelledError."""
    victim = sorted(cluster_client.nthreads())[0]
    pids = cluster_client.run(os.getpid)
    X_part = cluster_client.scatter(X_TRAIN[:2000], workers=[victim])
    y_part = cluster_client.scatter(Y_TRAIN[:2000], workers=[victim])
    X = da.concatenate([da.from_delayed(X_part, (2000, 10), np.float32),
                        da.from_array(X_TRAIN[2000:4000])])
    y = da.concatenate([da.from_delayed(y_part, (2000,), np.int64),
                        da.from_array(Y_TRAIN[2000:4000])])

    class KillAfterFirstRound(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                os.kill(pids[victim], signal.SIGKILL)
                time.sleep(1.0)        # the scheduler sees the worker go

    model = classifier()
    with pytest.raises(fastbp.dask.LostDataError, match=r"chunk\(s\) \[0\].*client.scatter"):
        fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                        client=cluster_client, rounds=3, callbacks=[KillAfterFirstRound()])
    assert np.isfinite(model._params).all()


def test_a_round_lost_again_while_it_runs_again_says_so(cluster_client, monkeypatch):
    """A round whose tasks are lost with a worker runs once more; lost again (a second
    worker left meanwhile) the fit raises LostDataError saying so, not Dask's bare
    CancelledError, and the model holds the last completed round's parameters. (The
    losses are made by a round whose result is cancelled each time it is waited for.)"""
    from distributed.client import CancelledError

    class Lost:
        def result(self):
            raise CancelledError("the round's result")

    submit, tries = fastbp.dask._ClusterRounds._submit, []

    def submit_lost_after_the_first_round(self, round_index, *args, **kwargs):
        submitted = submit(self, round_index, *args, **kwargs)
        if round_index == 0:
            return submitted
        tries.append(round_index)
        return submitted._replace(taken=Lost())

    class AfterFirstRound(Callback):
        def on_epoch_end(self, epoch, logs):
            self.params = self.model._params.copy()

    monkeypatch.setattr(fastbp.dask._ClusterRounds, "_submit",
                        submit_lost_after_the_first_round)
    X, y = chunked(3_000)
    model, after = classifier(), AfterFirstRound()
    with pytest.raises(fastbp.dask.LostDataError,
                       match=r"round 2 was lost with a worker twice.*completed round \(1\)"):
        fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y,
                        client=cluster_client, rounds=3, callbacks=[after])
    assert 1 in tries and tries.count(1) >= 2
    np.testing.assert_array_equal(model._params, after.params)


class Interrupter(threading.Thread):
    """Sends SIGINT to this process once the driver has completed `round_index` rounds
    (`rounds`: a Rounds callback of the fit) and a training task of round `round_index`
    runs."""

    def __init__(self, client, round_index, rounds):
        super().__init__(daemon=True)
        self.client, self.marker = client, f"-r{round_index}-b"
        self.round_index, self.rounds = round_index, rounds
        self.stop = threading.Event()
        self.sent = False

    def run(self):
        while not self.stop.is_set():
            if self.rounds.done >= self.round_index and any(
                    self.marker in str(key) for keys in self.client.processing().values()
                    for key in keys):
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGINT)
                self.sent = True
                return
            time.sleep(0.005)


# ---- hyperparameter search across the cluster ----
def _sklearn_estimators():
    pytest.importorskip("sklearn")
    import fastbp.sklearn
    return fastbp.sklearn


def test_grid_search_on_joblib_dask_backend(cluster_client):
    estimators = _sklearn_estimators()
    import joblib
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(
        estimators.MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0),
        {"learning_rate_init": [0.01, 0.05], "batch_size": [32, 64]}, cv=2, n_jobs=-1)
    with distributed.get_task_stream(cluster_client) as tasks, \
            joblib.parallel_backend("dask"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)     # 5 epochs, on purpose
        search.fit(X_TRAIN[:3000], Y_TRAIN[:3000])
    workers = {task["worker"] for task in tasks.data}
    assert len(tasks.data) >= 8 and len(workers) == 2     # 4 settings x 2 folds, both workers
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.6
    assert search.score(X_TEST, Y_TEST) > 0.6


def test_dask_ml_incremental_trains_through_partial_fit(cluster_client):
    estimators = _sklearn_estimators()
    dask_ml_wrappers = pytest.importorskip("dask_ml.wrappers")

    X, y = chunked(1_000)
    model = dask_ml_wrappers.Incremental(
        estimators.MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.05,
                                 random_state=0),
        scoring="accuracy", shuffle_blocks=False)
    for _ in range(3):        # three passes over the 12 blocks, one partial_fit per block
        model.partial_fit(X, y, classes=np.arange(4))
    assert model.score(da.from_array(X_TEST, chunks=(1000, -1)),
                       da.from_array(Y_TEST, chunks=1000)) > 0.85


# ---- found by an audit of fastbp.dask (2026-12-06) ----

def test_inputs_that_are_not_numbers_are_refused_before_the_model_changes():
    """X (dense or of sparse chunks) and Y must hold numbers, as for Trainer.fit: the
    chunks are cast to the model's dtype on the workers, which would drop a complex
    value's imaginary part or read text, so other dtypes are refused up front."""
    X, y = X_TRAIN[:1000], Y_TRAIN[:1000]
    cases = [((X + 1j).astype(np.complex64), y), (X.astype(str), y),
             (X.astype(object), y), (np.zeros((1000, 10), "datetime64[s]"), y),
             (scipy.sparse.csr_matrix(X.astype(np.complex64)), y)]
    for data, labels in cases:
        model, trainer = classifier(), fastbp.Trainer("cce", seed=0, epochs=1, n_threads=1)
        before = model.parameter_vector()
        chunks = da.from_array(data, chunks=(250, -1), asarray=not scipy.sparse.issparse(data))
        with pytest.raises(TypeError, match="X must hold numbers; got a dask array of dtype"):
            fastbp.dask.fit(model, trainer, chunks, da.from_array(labels, chunks=250),
                            rounds=1)
        assert np.array_equal(model.parameter_vector(), before)
    regressor = fastbp.MLP([10, 4, 1], ["relu", "identity"], seed=0)
    with pytest.raises(TypeError, match="Y must hold numbers"):
        fastbp.dask.fit(regressor, fastbp.Trainer("mse", seed=0, n_threads=1),
                        da.from_array(X, chunks=(250, -1)),
                        da.from_array((X[:, :1] + 1j).astype(np.complex64), chunks=(250, -1)),
                        rounds=1)


def test_a_model_that_is_not_finite_or_a_wrong_client_is_a_clear_error():
    X, y = chunked(500)
    model = classifier()
    model.weights[0][0, 0] = np.nan          # through the live arrays
    before = model.parameter_vector()
    with pytest.raises(ValueError, match="parameters are not all finite"):
        fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y, rounds=1)
    np.testing.assert_array_equal(model.parameter_vector(), before)
    model = classifier()
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X, y, rounds=1,
                        client="tcp://127.0.0.1:8786")


def test_targets_of_the_wrong_shape_are_named_by_their_whole_shape_before_any_work():
    """A (400, 3) Y for a model of 4 outputs was refused on a worker, naming one chunk's
    shape, (100, 3) (the audit); now on the driver, as Trainer.fit names it."""
    X = da.from_array(np.zeros((400, 6), np.float32), chunks=(100, -1))
    model = fastbp.MLP([6, 8, 4], ["relu", "softmax"], seed=0)
    for Y, shape in ((np.ones((400, 3), np.float32), r"\(400, 3\)"), (np.ones(400), r"\(400,\)")):
        with pytest.raises(ValueError, match="4 outputs; got shape " + shape):
            fastbp.dask.fit(model, fastbp.Trainer("mse", n_threads=1),
                            X, da.from_array(Y, chunks=100), rounds=1)


def test_a_schedules_error_ends_a_cluster_fit_after_the_same_round_as_a_local_one():
    """The cluster asks the schedule for the next round's rates before this one ends (to
    submit it ahead): a schedule failing at epoch 3 ended the fit during round 2, where the
    local scheduler completed round 3 first (the audit). Both hold 3 rounds now."""
    class FailsAtEpoch3(fastbp.schedules.Schedule):
        def _rate(self, epoch, base):
            return float("nan") if epoch >= 3 else base

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)).astype(np.float32)
    labels = ((features[:, 0] * features[:, 1] > 0) + 2 * (features[:, 2] > 0.3))
    X = da.from_array(features, chunks=(100, -1))
    y = da.from_array(labels.astype(np.int64), chunks=100)

    def fit(client, rounds, schedule=None):
        model = fastbp.MLP([6, 8, 4], ["relu", "softmax"], seed=0)
        trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=16, seed=1,
                                 n_threads=1, schedule=schedule)
        if schedule is None:
            fastbp.dask.fit(model, trainer, X, y, client=client, rounds=rounds)
        else:
            with pytest.raises(ValueError, match="for epoch 3"):
                fastbp.dask.fit(model, trainer, X, y, client=client, rounds=rounds)
        return model.parameter_vector()

    three_rounds = fit(None, 3)
    assert np.array_equal(fit(None, 5, FailsAtEpoch3()), three_rounds)
    with dask.config.set(CLUSTER_CONFIG), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert np.array_equal(fit(client, 5, FailsAtEpoch3()), three_rounds)


# ---- found by a second audit of fastbp.dask (2026-12-06) ----

def local_scheduler():
    """fastbp.dask.fit on dask's local scheduler although the module's client exists."""
    return mock.patch.object(fastbp.dask, "_client_for", lambda client: None)


def test_a_cluster_without_workers_is_refused_after_waiting_for_one(monkeypatch):
    """A cluster with no worker (yet): the fit waits WORKER_WAIT_SECONDS for a first one,
    then raises a TimeoutError that says so, the model as it was and nothing left on the
    cluster (it was a bare "No valid workers found" after 30 s, from scattering the
    model's copies before waiting, and then a wait without end)."""
    monkeypatch.setattr(fastbp.dask, "WORKER_WAIT_SECONDS", 1)
    model = classifier()
    before = model.parameter_vector()
    with distributed.LocalCluster(n_workers=0, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        started = time.perf_counter()
        with pytest.raises(TimeoutError, match="no worker, and none joined within 1 s"):
            fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), *chunked(),
                            client=client, rounds=2)
        assert time.perf_counter() - started < 20
        assert_nothing_left_on(client)
    np.testing.assert_array_equal(model.parameter_vector(), before)


SORTED_X = np.concatenate([X_TRAIN[Y_TRAIN == label][:200] for label in range(3)])
SORTED_Y = np.repeat(np.arange(3), 200)          # chunks of 200: one class each


def sorted_fit(class_weight, client=None, chunks=200, rows=600, **fit_arguments):
    """One round of averaging="mean" (no shuffling) over the first `rows` of SORTED_X in
    chunks of `chunks` rows, on the cluster or dask's local scheduler; returns (model,
    history)."""
    model = classifier()
    trainer = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=2, n_threads=1,
                             shuffle=False, class_weight=class_weight)
    X = da.from_array(SORTED_X[:rows], chunks=(chunks, -1))
    y = da.from_array(SORTED_Y[:rows], chunks)
    with local_scheduler() if client is None else contextlib.nullcontext():
        history = fastbp.dask.fit(model, trainer, X, y, client=client, averaging="mean",
                                  **{"rounds": 1, **fit_arguments})
    return model, history


def test_a_chunk_whose_rows_all_weigh_0_trains_nothing_and_counts_for_nothing(
        cluster_client):
    """class_weight {0: 0, 1: 1, 2: 3} over chunks of one class each: chunk 0 (its rows
    all weigh 0) trains nothing and weighs 0 in the average and the loss, the others
    weigh their rows' class weights (1:3), as Trainer.fit on all rows weighs them (the
    chunk made its worker raise "the row weights (sample_weight, class_weight) sum to 0");
    the same bits on the cluster."""
    class_weight = {0: 0.0, 1: 1.0, 2: 3.0}
    model, history = sorted_fit(class_weight)
    copies, losses = [], []
    for label in (1, 2):
        copy = classifier()
        trained = fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, n_threads=1,
                                 shuffle=False, class_weight=class_weight).fit(
            copy, SORTED_X[SORTED_Y == label], SORTED_Y[SORTED_Y == label])
        copies.append(copy._params.astype(np.float64))
        losses.append(trained.loss[-1])
    np.testing.assert_allclose(model._params, (copies[0] + 3 * copies[1]) / 4,
                               rtol=1e-6, atol=1e-7)
    assert history.loss[0] == pytest.approx((losses[0] + 3 * losses[1]) / 4, rel=1e-9)
    assert history.placement[0][0].seconds == 0 and history.placement[0][0].rows == 200
    on_cluster, _ = sorted_fit(class_weight, cluster_client)
    np.testing.assert_array_equal(on_cluster._params, model._params)


def test_a_piece_whose_rows_all_weigh_0_leaves_the_rounds_loss_finite():
    """rounds_per_epoch=2 without shuffling over chunks of 300 sorted rows: the first
    piece of chunk 0 holds only class 0, of weight 0. It trains nothing and weighs 0 in
    the round's loss (which was NaN); a round in which no row weighs anything leaves the
    model as it was and logs no loss (NaN)."""
    _, history = sorted_fit({0: 0.0}, chunks=300, rounds=4, rounds_per_epoch=2)
    assert np.isfinite(history.loss).all()
    # Pieces of 100 rows: round 1's are rows 0-99 (class 0) and 300-399 (class 1).
    _, history = sorted_fit({0: 0.0, 1: 0.0}, chunks=300, rounds=3, rounds_per_epoch=3)
    assert np.isnan(history.loss[0]) and np.isfinite(history.loss[1:]).all()
    model, _ = sorted_fit({0: 0.0, 1: 0.0}, chunks=300, rounds=1, rounds_per_epoch=3)
    np.testing.assert_array_equal(model._params, classifier()._params)


def test_a_fit_whose_every_chunk_weighs_0_is_refused_before_any_round(cluster_client):
    """No chunk holds a class of nonzero weight: refused before round 1, saying so, the
    model as it was and nothing left on the cluster; a class_weight that weighs every
    class 0 before any chunk is computed."""
    before = set(cluster_client.futures)
    for client in (None, cluster_client):
        model = classifier()
        with pytest.raises(ValueError, match="every chunk's rows weigh 0 under class_weight"), \
                mock.patch.object(fastbp.dask, "_train_block",
                                  side_effect=AssertionError("a round ran")):
            sorted_fit({0: 0.0, 1: 0.0}, client, rows=400, rounds=2)
        np.testing.assert_array_equal(model._params, classifier()._params)
    assert_nothing_left_on(cluster_client, before)
    with pytest.raises(ValueError, match="weighs every class 0"), local_scheduler():
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", class_weight=dict.fromkeys(
            range(4), 0)), failing_chunks(), da.from_array(Y_TRAIN[:400], chunks=200))
    with pytest.raises(ValueError, match="class_weight names class 7"), local_scheduler():
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", class_weight={7: 0}),
                        failing_chunks(), da.from_array(Y_TRAIN[:400], chunks=200))


def test_a_chunk_refused_while_its_class_weight_is_computed_leaves_nothing_on_the_client(
        cluster_client):
    """A bad label found by the tasks that weigh the chunks (a class_weight of some class 0)
    is raised with the trainer's message, and those tasks go: each error held, through
    its traceback, the driver's frames that held its future (4 errored futures stayed)."""
    before = set(cluster_client.futures)
    bad = da.from_array(np.full(400, 9), chunks=200)
    with pytest.raises(ValueError, match="class labels"):
        fastbp.dask.fit(classifier(), fastbp.Trainer("cce", class_weight={0: 0.0}),
                        da.from_array(X_TRAIN[:400], chunks=(200, -1)), bad,
                        client=cluster_client, rounds=1)
    assert_nothing_left_on(cluster_client, before)


def failing_chunks(rows=400):
    """X of `rows` rows in chunks of 200, whose computation raises: a refusal that comes
    before any chunk is computed does not see it."""
    def never():
        raise AssertionError("a chunk was computed")

    return da.concatenate([da.from_delayed(dask.delayed(never, pure=False)(), (200, 10),
                                           np.float32) for _ in range(rows // 200)])


class RefusesToBegin(Callback):
    def on_train_begin(self, logs=None):
        raise ValueError("refused in on_train_begin")


def test_settings_the_fit_refuses_are_refused_before_any_chunk_is_computed(cluster_client):
    """A schedule or callback monitoring a validation figure without validation_data, in
    fit's terms (not Trainer.fit's validation_split), and any refusal of a callback's
    on_train_begin, come before any chunk is computed (they came after every chunk was
    computed and kept, on the cluster or the local scheduler)."""
    y = da.from_array(Y_TRAIN[:400], chunks=200)
    before = set(cluster_client.futures)
    for client in (None, cluster_client):
        for schedule, callbacks, message in (
                (fastbp.schedules.ReduceOnPlateau(), None, "ReduceOnPlateau monitors "
                 "'val_loss', .* need validation_data in fastbp.dask.fit"),
                (None, [fastbp.callbacks.EarlyStopping("val_accuracy")],
                 "EarlyStopping monitors 'val_accuracy'"),
                (None, [RefusesToBegin()], "refused in on_train_begin")):
            model = classifier()
            with pytest.raises(ValueError, match=message) as refused, \
                    local_scheduler() if client is None else contextlib.nullcontext():
                fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, schedule=schedule),
                                failing_chunks(), y, client=client, callbacks=callbacks)
            assert "validation_split" not in str(refused.value)
            np.testing.assert_array_equal(model._params, classifier()._params)
    assert_nothing_left_on(cluster_client, before)


@pytest.mark.parametrize("class_weight", ["balanced", {0: 1.0}])
def test_class_weight_on_a_loss_without_classes_is_refused_before_any_chunk_is_computed(
        class_weight):
    """class_weight="balanced" with a regression loss was refused only after every chunk
    was computed (a dict was refused first)."""
    model = fastbp.MLP([10, 8, 1], ["relu", "identity"], seed=0)
    before = model.parameter_vector()
    with pytest.raises(ValueError, match="class_weight needs a classification loss"), \
            local_scheduler():
        fastbp.dask.fit(model, fastbp.Trainer("mse", seed=0, class_weight=class_weight),
                        failing_chunks(), da.from_array(np.zeros((400, 1), np.float32),
                                                        chunks=200))
    np.testing.assert_array_equal(model.parameter_vector(), before)


def test_sparse_chunks_of_y_are_refused_before_any_chunk_is_computed():
    """Y of scipy.sparse chunks reached a worker's np.asarray ("setting an array element
    with a sequence", or "must hold numbers ... object" for labels) after every chunk was
    computed; Trainer.fit says what is wrong."""
    import scipy.sparse
    Y = da.from_array(scipy.sparse.csr_matrix(np.ones((400, 1), np.float32)),
                      chunks=(200, -1), asarray=False)
    model = fastbp.MLP([10, 8, 1], ["relu", "identity"], seed=0)
    before = model.parameter_vector()
    with pytest.raises(TypeError, match="Y must be a dask array of dense chunks; got chunks "
                                        "of scipy.sparse csr_matrix"), local_scheduler():
        fastbp.dask.fit(model, fastbp.Trainer("mse", seed=0), failing_chunks(), Y)
    np.testing.assert_array_equal(model.parameter_vector(), before)


class _ForeignChunks:
    """An array library's chunks that are neither NumPy's nor scipy.sparse's (as pydata's
    sparse.COO, which a worker's np.asarray refused after every chunk was computed)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, \
            array.ndim

    def __getitem__(self, index):
        return _ForeignChunks(self.array[index])


def test_chunks_of_another_array_library_are_refused_before_any_chunk_is_computed():
    foreign = da.from_array(_ForeignChunks(X_TRAIN[:400]), chunks=(200, -1), asarray=False)
    labels = da.from_array(_ForeignChunks(Y_TRAIN[:400]), chunks=200, asarray=False)
    model = fastbp.MLP([X_TRAIN.shape[1], 8, 3], ["relu", "softmax"], seed=0)
    before = model.parameter_vector()
    for X, Y, name in ((foreign, failing_chunks(), "X"),
                       (da.from_array(X_TRAIN[:400], chunks=(200, -1)), labels, "Y")):
        with pytest.raises(TypeError, match=f"{name}'s chunks are .*_ForeignChunks; "
                                            f"fastbp.dask takes NumPy chunks"), \
                local_scheduler():
            fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0), X, Y)
    np.testing.assert_array_equal(model.parameter_vector(), before)


def test_ctrl_c_while_the_chunks_load_returns_an_empty_interrupted_history():
    """SIGINT while dask's local scheduler computes the chunks (before round 1): fit
    returns the empty history marked interrupted, the model as it was (KeyboardInterrupt
    escaped the fit)."""
    def slow(block):
        time.sleep(0.5)
        return block

    X = da.from_array(X_TRAIN[:800], chunks=(200, -1)).map_blocks(
        slow, meta=np.empty((0, 10), np.float32))
    model = classifier()
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with local_scheduler():
            history = fastbp.dask.fit(model, fastbp.Trainer("cce", seed=0, n_threads=1), X,
                                      da.from_array(Y_TRAIN[:800], chunks=200), rounds=2)
    finally:
        timer.cancel()
    assert history.interrupted and history.epochs == 0
    np.testing.assert_array_equal(model._params, classifier()._params)


def test_placement_refuses_a_malformed_held():
    """held shorter than the blocks gave an IndexError, longer was ignored, a dict gave
    KeyError 0 (the audit)."""
    place = fastbp.dask.placement
    for held, error, message in (
            ([{"a": 10}], ValueError, r"held has 1 entries; it needs one per block \(2\)"),
            ([{"a": 1}, {}, {"b": 5}], ValueError, "held has 3 entries"),
            ({"a": 10}, TypeError, "held must be a list of one"),
            ([{"a": 1}, ["a"]], TypeError, r"held\[1\] must be a dict"),
            ([{"a": -5}, {}], ValueError, r"held\[0\]\['a'\] must be >= 0")):
        with pytest.raises(error, match=message):
            place([100, 100], {"a": 1, "b": 1}, held)
    assert place([100, 100], {"a": 1, "b": 1}, ({"b": 1}, {"a": 1})) == ["b", "a"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("averaging", ["block_momentum", "mean"])
def test_one_chunk_is_trainer_fit_only_without_random_draws_or_optimizer_state(dtype,
                                                                                averaging):
    """One chunk (block momentum 0) over three rounds of one epoch: Trainer.fit's bits
    without shuffling and with plain SGD (no state to restart); with Adam, whose state
    restarts every round, not (docs/dask.md says which). In float64 too: the average of one
    block, p * rows / rows, and W + (A - W) had rounded (21-91 of 210 parameters 2e-16
    off)."""
    X, y = X_TRAIN[:1000].astype(dtype), Y_TRAIN[:1000]
    for optimizer, same in (("sgd", True), ("adam", False)):
        arguments = dict(learning_rate=0.01, batch_size=32, epochs=3, seed=3, n_threads=1,
                         shuffle=False, optimizer=optimizer)
        model = fastbp.MLP([10, 32, 4], ["relu", "softmax"], seed=0, dtype=dtype)
        expected = fastbp.MLP([10, 32, 4], ["relu", "softmax"], seed=0, dtype=dtype)
        with local_scheduler():
            fastbp.dask.fit(model, fastbp.Trainer("cce", **arguments), da.from_array(X),
                            da.from_array(y), averaging=averaging)
        fastbp.Trainer("cce", **arguments).fit(expected, X, y)
        assert np.array_equal(model._params, expected._params) == same


def test_the_time_budget_counts_rounds_not_the_chunks_loading():
    """max_time is checked after each round against the rounds' time: chunks that take
    longer to compute than the budget (loaded inside the loop since the refusals come
    first) stopped the fit after its first round."""
    def slow(block):
        time.sleep(0.4)
        return block

    X = da.from_array(X_TRAIN[:400], chunks=(200, -1)).map_blocks(
        slow, meta=np.empty((0, 10), np.float32))
    y = da.from_array(Y_TRAIN[:400], chunks=200)
    with local_scheduler():
        history = fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0, max_time=0.3),
                                  X, y, rounds=3)
    assert len(history.loss) == 3 and not history.stopped_early


def test_a_callback_of_the_users_with_a_validation_monitor_attribute_is_taken():
    """Only fastbp's own monitors refuse a validation figure the fit will not log (in
    their on_train_begin, before any chunk is computed); a callback of the user's with a
    `monitor` attribute of its own was refused by its name alone."""
    class Logger(fastbp.callbacks.Callback):
        monitor = "val_loss"

    y = da.from_array(Y_TRAIN[:400], chunks=200)
    with local_scheduler():
        history = fastbp.dask.fit(classifier(), fastbp.Trainer("cce", seed=0),
                                  da.from_array(X_TRAIN[:400], chunks=(200, -1)), y,
                                  rounds=2, callbacks=[Logger()])
    assert len(history.loss) == 2
