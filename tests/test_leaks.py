"""Leaks: many fit / predict / gradients / save / load cycles keep memory flat.

Two measures, each with a bound far below what a leak would add:
- the resident set size (/proc/self/statm): sees everything, the extension's own malloc
  blocks (the layout arrays of each Plan) included;
- tracemalloc: sees Python objects and NumPy's data buffers, so an array kept alive by a
  forgotten reference shows even when the allocator would hide it from the RSS.
The sanitizer run (tools/sanitize.sh sanitize) adds LeakSanitizer over the same kind of
cycles (tools/leak_check.py).
"""
import gc
import os
import pickle
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest

import fastbp
from fastbp.callbacks import Callback

MiB = 2**20


def rss():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _under_asan():
    """AddressSanitizer keeps freed memory in quarantine (256 MB by default) and pads every
    block: the RSS says nothing about leaks there (LeakSanitizer checks them instead)."""
    try:
        with open("/proc/self/maps") as stream:
            return "libasan" in stream.read()
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm") or _under_asan(),
                                reason="needs /proc/self/statm (Linux), and a process "
                                       "without AddressSanitizer's quarantine")


def growth(cycle, warmup, rounds):
    """RSS growth over `rounds` calls of cycle() after `warmup` calls."""
    for i in range(warmup):
        cycle(i)
    gc.collect()
    start = rss()
    for i in range(rounds):
        cycle(warmup + i)
    gc.collect()
    return rss() - start


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 64))           # float64: each fit converts a float32 copy
    y = rng.integers(0, 10, size=2000)
    return X, y


def full_cycle(directory, X, y):
    path = os.path.join(directory, "cycle.fbp")

    def cycle(i):
        dtype = ("float32", "float64")[i % 2]
        model = fastbp.MLP([64, 256, 10], ["relu", "softmax"], dtype=dtype, seed=i)
        history = fastbp.Trainer("cce", learning_rate=0.05, epochs=1, batch_size=64,
                                 seed=i).fit(model, X, y)
        assert np.isfinite(history.loss).all()
        model.predict(X)
        model.gradients(X[:500], y[:500], "cce")
        model.save(path)
        loaded = fastbp.load(path)
        fastbp.MLP.from_bytes(loaded.to_bytes())
        pickle.loads(pickle.dumps(loaded))
        fastbp.losses.get("mse").gradient(np.eye(10)[y[:300]], model.predict(X[:300]))
    return cycle


@needs_proc
def test_fit_predict_save_load_cycles_keep_rss_flat(tmp_path, data):
    # each cycle allocates several MiB (a converted X, outputs, workspaces, files' bytes):
    # 120 cycles churn well over 500 MiB; a leak of any per-cycle buffer would show here
    grown = growth(full_cycle(str(tmp_path), *data), warmup=20, rounds=120)
    assert grown < 24 * MiB, f"RSS grew by {grown / MiB:.1f} MiB over 120 cycles"


@needs_proc
def test_plans_of_deep_networks_are_freed():
    """Every model and every predict builds a Plan, whose layout lives in malloc'd C arrays
    (about 30 bytes per layer): 300-layer networks, 4000 Plans, ~35 MiB if never freed."""
    X = np.ones((1, 1))

    def cycle(i):
        model = fastbp.MLP([1] * 301, "identity", init="zeros")
        for _ in range(3):
            model.predict(X)

    grown = growth(cycle, warmup=100, rounds=1000)
    assert grown < 8 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


def _error_paths(i):
    model = fastbp.MLP([4, 8, 3], ["relu", "softmax"], seed=i)
    X = np.ones((50, 4))
    for bad in (np.full((50, 4), np.nan), np.ones((50, 5)), "x"):
        try:
            model.predict(bad)
        except (ValueError, TypeError):
            pass
    try:
        fastbp.MLP.from_bytes(model.to_bytes()[:-3])
    except ValueError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fastbp.Trainer("mse", learning_rate=1e30, epochs=2, batch_size=8).fit(
            model, X * 1e10, np.ones((50, 3)))

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("boom")

    try:
        fastbp.Trainer("cce", epochs=2).fit(model, X, np.zeros(50, dtype=int),
                                            callbacks=[Boom()])
    except RuntimeError:
        pass


@needs_proc
def test_error_paths_keep_rss_flat():
    grown = growth(_error_paths, warmup=30, rounds=300)
    assert grown < 8 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


def test_cycles_leave_no_python_or_numpy_allocations_behind(tmp_path, data):
    X, y = data
    cycle = full_cycle(str(tmp_path), X[:500], y[:500])
    for i in range(5):
        cycle(i)
        _error_paths(i)
    gc.collect()
    tracemalloc.start(5)
    try:
        for i in range(5, 10):
            cycle(i)
            _error_paths(i)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        for i in range(10, 40):
            cycle(i)
            _error_paths(i)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        if current - baseline >= 2 * MiB:
            snapshot = tracemalloc.take_snapshot()
            top = "\n".join(str(s) for s in snapshot.statistics("traceback")[:5])
            pytest.fail(f"{(current - baseline) / MiB:.2f} MiB still allocated:\n{top}")
    finally:
        tracemalloc.stop()


def test_models_trainers_and_histories_are_freed(data):
    """Nothing holds on to a model after its fit: its parameter buffer dies with it."""
    X, y = data
    model = fastbp.MLP([64, 32, 10], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", epochs=1)
    history = trainer.fit(model, X[:200], y[:200])
    refs = [weakref.ref(model._params), weakref.ref(model), weakref.ref(history)]
    del model, history
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]
    del trainer
    gc.collect()


def test_a_fit_that_raises_releases_the_model():
    """A callback that raises ends the fit: the model can be trained again at once."""
    model = fastbp.MLP([3, 2], ["softmax"], seed=0)
    X, y = np.ones((10, 3)), np.zeros(10, dtype=int)

    class Boom(Callback):
        def on_epoch_end(self, epoch, logs):
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fastbp.Trainer("cce", epochs=3).fit(model, X, y, callbacks=[Boom()])
    history = fastbp.Trainer("cce", epochs=1).fit(model, X, y)
    assert history.epochs == 1
