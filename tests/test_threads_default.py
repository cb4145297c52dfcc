"""The default thread count of a fit is measured on the machine it runs on (issue 11 item
3): n_threads=None times a few steps of the network and batch with 1..allowed threads
(row-split, the first layer split by rows, by its inputs or by the hidden units, or BLAS),
once per (layer sizes, batch size, dtype, allowed threads, CPU),
keeps the answer in memory and in a cache file, and FASTBP_THREADS pins it."""
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _cache, _core, _products, _threads

SIZES, CODES = (20, 16, 3), (0, 2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder, an empty in-memory cache, two allowed threads, no pin."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(folder))
    monkeypatch.delenv(_threads.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(_threads, "_measured", {})
    monkeypatch.setattr(_threads, "allowed_threads", lambda: 2)
    return folder


@pytest.fixture
def measurements(monkeypatch):
    """Replaces the timing with a fixed answer and counts the calls."""
    calls = []

    def measure(layer_sizes, codes, batch_size, dtype, candidates, clipping=False,
                wait=True):
        calls.append((tuple(layer_sizes), batch_size, np.dtype(dtype).name,
                      tuple(map(tuple, candidates))) + (("clipping",) if clipping else ()))
        return (2, 1, False)

    monkeypatch.setattr(_threads, "_measure", measure)
    return calls


def test_the_default_is_measured_once_and_kept_in_memory_and_on_disk(cache, measurements):
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert len(measurements) == 1
    document = json.loads((cache / _threads.CACHE_FILE).read_text())
    assert list(document["choices"].values()) == [[2, 1, 0]]
    _threads._measured.clear()            # a new process: the file answers
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert len(measurements) == 1


def test_a_default_fit_whose_measurement_cannot_start_threads_runs_on_one_unkept(
        cache, monkeypatch):
    """A process out of threads (a container's pids.max): the measurement's row-split
    candidate could not start its workers, and the default fit raised RuntimeError where
    it would have chosen one thread. Now that fit runs on one thread and nothing is kept;
    the next fit, threads available, measures."""
    real = _core.train_epoch
    out_of_threads = [True]

    def train_epoch(*arguments, **keywords):
        if out_of_threads[0] and arguments[15] > 1:          # n_workers
            raise _core.ThreadsUnavailable("could not start 2 training threads (only 1); "
                                           "the process is out of threads")
        return real(*arguments, **keywords)

    monkeypatch.setattr(_core, "train_epoch", train_epoch)
    monkeypatch.setattr(_threads, "TINY_STEP_SECONDS", 0.0)    # candidates timed
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(512, 30)).astype(np.float32), rng.integers(0, 3, 512)
    model = fastbp.MLP([30, 64, 3], ["relu", "softmax"], seed=0)
    history = fastbp.Trainer("cce", epochs=2, batch_size=32, seed=0).fit(model, X, y)
    assert history.epochs == 2 and history.threads["n_threads"] == 1
    assert len(_threads._measured) == 0 and not (cache / _threads.CACHE_FILE).exists()
    out_of_threads[0] = False
    fastbp.Trainer("cce", epochs=1, batch_size=32, seed=0).fit(model, X, y)
    assert len(_threads._measured) == 1
    # an explicit count still says so
    out_of_threads[0] = True
    monkeypatch.setenv("FASTBP_SPLIT", "rows")
    with pytest.raises(_core.ThreadsUnavailable, match="out of threads"):
        fastbp.Trainer("cce", epochs=1, batch_size=32, seed=0, n_threads=2).fit(model, X, y)


def test_each_shape_batch_dtype_and_allowance_is_measured_on_its_own(cache, measurements,
                                                                   monkeypatch):
    _threads.fit_threads(SIZES, CODES, 32, "float32")
    _threads.fit_threads(SIZES, CODES, 64, "float32")
    _threads.fit_threads(SIZES, CODES, 32, "float64")
    _threads.fit_threads((20, 17, 3), CODES, 32, "float32")
    monkeypatch.setattr(_threads, "allowed_threads", lambda: 3)
    _threads.fit_threads(SIZES, CODES, 32, "float32")
    assert len(set(measurements)) == len(measurements) == 5


def test_an_explicit_count_is_used_whole_split_by_rows_or_on_blas_as_measured(
        cache, measurements, monkeypatch):
    # rows (the first layer by rows, by its inputs or by the hidden units) or BLAS:
    # measured among exactly those, once, and cached
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2) == (2, 1, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2) == (2, 1, False)
    assert measurements == [(SIZES, 32, "float32", ((1, 2, 0), (2, 1, 0), (2, 1, 1), (2, 1, 2)))]
    # no rows for three workers: BLAS, nothing measured
    assert _threads.fit_threads(SIZES, CODES, 4, "float32", n_threads=3) == (1, 3, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=1) == (1, 1, False)
    monkeypatch.setattr(_threads, "allowed_threads", lambda: 1)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (1, 1, False)
    assert len(measurements) == 1


def test_fastbp_split_forces_rows_inputs_hidden_or_blas(cache, measurements, monkeypatch):
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "rows")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=3) == (3, 1, False)
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "inputs")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=3) == (3, 1, True)
    # fewer inputs than workers: rows alone
    assert _threads.fit_threads((2, 16, 3), CODES, 32, "float32", n_threads=3) == (3, 1, False)
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "hidden")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=3) \
        == (3, 1, _threads.BY_HIDDEN)
    # two hidden layers, or fewer hidden units than workers: rows alone
    assert _threads.fit_threads((20, 16, 8, 3), (0, 0, 2), 32, "float32", n_threads=3) \
        == (3, 1, False)
    assert _threads.fit_threads((20, 2, 3), CODES, 32, "float32", n_threads=3) == (3, 1, False)
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "blas")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=3) == (1, 3, False)
    assert measurements == []
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "columns")
    for n_threads in (3, 1, None):     # refused whatever the count, the default's included
        with pytest.raises(ValueError, match="FASTBP_SPLIT"):
            _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=n_threads)


def test_fastbp_split_leaves_the_default_that_ways_counts_only(cache, measurements,
                                                               monkeypatch):
    """The default measured every way whatever FASTBP_SPLIT said (the audit: rows, inputs,
    hidden and blas all chose the hidden split): now the way's counts, and one thread,
    under a key of their own."""
    R, I, H = _threads.BY_ROWS, _threads.BY_INPUTS, _threads.BY_HIDDEN
    expected = {"rows": ((1, 1, R), (2, 1, R)), "inputs": ((1, 1, R), (2, 1, I)),
                "hidden": ((1, 1, R), (2, 1, H)), "blas": ((1, 1, R), (1, 2, R))}
    for split, candidates in expected.items():
        monkeypatch.setenv(_threads.SPLIT_VARIABLE, split)
        _threads.fit_threads(SIZES, CODES, 32, "float32")
        assert measurements[-1][3] == candidates
    monkeypatch.delenv(_threads.SPLIT_VARIABLE)
    _threads.fit_threads(SIZES, CODES, 32, "float32")           # every way, measured again
    assert len(measurements) == 5 and len(measurements[-1][3]) == 5


def test_a_fit_that_clips_is_measured_apart_without_the_hidden_split(cache, measurements,
                                                                    monkeypatch):
    """Clipping's norm over the whole gradient takes the row split (the hidden split has
    none), and costs the row split a barrier: a clipping fit's choice is its own."""
    R, I = _threads.BY_ROWS, _threads.BY_INPUTS
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", clipping=True) == (2, 1, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", clipping=True) == (2, 1, False)
    assert measurements[1] == (SIZES, 32, "float32",
                               ((1, 1, R), (2, 1, R), (2, 1, I), (1, 2, R)), "clipping")
    assert len(measurements) == 2 and _threads._candidates(SIZES, 32, 2, clipping=True) \
        == list(measurements[1][3])
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2, clipping=True) \
        == (2, 1, False)
    assert measurements[2] == (SIZES, 32, "float32", ((1, 2, R), (2, 1, R), (2, 1, I)),
                               "clipping")
    monkeypatch.setenv(_threads.SPLIT_VARIABLE, "hidden")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=3, clipping=True) \
        == (3, 1, R)
    assert len(measurements) == 3


def test_a_step_of_microseconds_on_an_explicit_count_runs_as_one_thread_does(
        cache, monkeypatch):
    """Splitting a tiny step by rows costs more than the step (W3 ran 4x slower on two
    row workers), and BLAS threads, which do not split products that small either, cost
    the plan its own kernels (W3 on two BLAS threads: 0.73-0.82x of one thread). So such
    a fit runs the one-thread step: the same bits as n_threads=1, the choice kept."""
    monkeypatch.setattr(_threads, "TINY_STEP_SECONDS", 1.0)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2) == (1, 1, False)
    timed = []
    monkeypatch.setattr(_threads, "_measure", lambda *args, **options: timed.append(args))
    _threads._measured.clear()                 # a new process: the file answers
    assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2) == (1, 1, False)
    assert timed == []
    rng = np.random.default_rng(5)
    X = rng.standard_normal((96, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 96)
    fitted = []
    for n_threads in (1, 2):
        model = fastbp.MLP(list(SIZES), ["relu", "softmax"], dtype="float32", seed=3)
        fastbp.Trainer("cce", batch_size=32, epochs=2, seed=4, n_threads=n_threads).fit(model, X, y)
        fitted.append(model._params.copy())
    np.testing.assert_array_equal(fitted[0], fitted[1])


def test_fastbp_threads_pins_the_default_within_the_callers_limit(cache, measurements,
                                                                  monkeypatch):
    monkeypatch.setenv(_threads.THREADS_VARIABLE, "1")
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (1, 1, False)
    monkeypatch.setenv(_threads.THREADS_VARIABLE, "8")    # 2 allowed, used as measured
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert measurements == [(SIZES, 32, "float32", ((1, 2, 0), (2, 1, 0), (2, 1, 1), (2, 1, 2)))]
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv(_threads.THREADS_VARIABLE, bad)
        with pytest.raises(ValueError, match="FASTBP_THREADS"):
            _threads.fit_threads(SIZES, CODES, 32, "float32")


def test_a_cache_that_cannot_be_written_is_not_an_error(tmp_path, cache, measurements,
                                                        monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(blocker / "cache"))
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert len(measurements) == 1        # kept in memory all the same


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 0, "choices": {}}',
                                     b'{"version": 1, "choices": {"KEY": [5, 5, 0]}}',
                                     b'{"version": 1, "choices": {"KEY": [2, 1]}}',
                                     b'{"version": 1, "choices": {"KEY": "x"}}'])
def test_a_damaged_or_foreign_cache_file_is_measured_again_and_rewritten(
        cache, measurements, content):
    key = _threads._fit_key(SIZES, 32, "float32", "2")
    cache.mkdir()
    (cache / _threads.CACHE_FILE).write_bytes(content.replace(b"KEY", key.encode()))
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert len(measurements) == 1
    document = json.loads((cache / _threads.CACHE_FILE).read_text())
    assert document["choices"][key] == [2, 1, 0]


def test_the_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTBP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cache.cache_folder() == os.path.join(str(tmp_path), "fastbp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cache.cache_folder() == os.path.join(os.path.expanduser("~"), ".cache", "fastbp")


@pytest.mark.parametrize("seconds, choice", [
    ({(1, 1): 1.0, (2, 1): 0.60, (1, 2): 0.57}, (2, 1)),   # BLAS threads 5% ahead: rows
    ({(1, 1): 1.0, (2, 1): 0.70, (1, 2): 0.50}, (1, 2)),   # 40% ahead: BLAS threads
    ({(1, 1): 1.0, (1, 2): 0.90}, (1, 1)),                 # 1.11x on BLAS threads: one
    ({(1, 1): 1.0, (1, 2): 0.70}, (1, 2)),
    ({(1, 1): 1.0, (2, 1): 0.97}, (1, 1)),                 # within the margin: fewer
    ({(1, 1): 1.0, (2, 1): 0.93}, (2, 1)),                 # 1.08x: more threads
    ({(1, 1): 1.0, (2, 1): 0.60, (4, 1): 0.58}, (2, 1)),
    ({(1, 1): 1.0, (2, 1): 0.60, (4, 1): 0.40}, (4, 1)),
    # 8 BLAS threads 1.24x ahead of 4 row workers (W5 on a 16-core Xeon): taken
    ({(1, 1): 1.0, (4, 1): 0.79, (8, 1): 0.85, (1, 8): 0.63, (1, 16): 0.75}, (1, 8)),
    # the same count both ways: the faster, however close
    ({(1, 1, 0): 1.0, (2, 1, 0): 0.60, (2, 1, 1): 0.52}, (2, 1, 1)),
    ({(1, 1, 0): 1.0, (2, 1, 0): 0.59, (2, 1, 1): 0.60}, (2, 1, 0)),
])
def test_the_choice_prefers_fewer_threads_and_row_workers_over_blas_threads(seconds, choice):
    """More threads must win by THREADS_MARGIN (the default is to be within 5% of the
    best count). BLAS threads spin while they wait for each other and slow many times over
    when other work takes a core; the row workers sleep: BLAS threads count
    BLAS_THREADS_PENALTY slower."""
    assert _threads.THREADS_MARGIN == 1.05 and _threads.BLAS_THREADS_PENALTY == 1.10
    assert _threads._pick(seconds) == choice


@pytest.mark.parametrize("busy_for, waited", [(0.0, 0.01), (0.3, 0.31), (9.0, 0.51)])
def test_a_measurement_waits_for_this_process_to_go_quiet(monkeypatch, busy_for, waited):
    """Another thread of the process busy (OpenBLAS's, for about 0.1 s after a
    multi-threaded call) for `busy_for` seconds: the measurement starts when it stops, or
    after QUIET_WAIT_SECONDS (0.5). A simulated clock: each sleep of this thread moves the
    wall clock by its length and the process's CPU clock by as much while the other
    thread is busy."""
    import time
    clock = {"wall": 0.0, "cpu": 0.0}

    def sleep(seconds):
        if clock["wall"] < busy_for:
            clock["cpu"] += seconds
        clock["wall"] += seconds

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(time, "process_time", lambda: clock["cpu"])
    _threads._wait_for_a_quiet_process()
    assert clock["wall"] == pytest.approx(waited, abs=0.011)


def windows_on_a_clock(monkeypatch, seconds_of):
    """Candidates timed on a simulated clock: each window of `choice` at wall time t takes
    seconds_of(choice, t) (the window's time a step, 1 ms of wall time), each sleep moves
    the clock by its length. Returns (runs for _best_windows, the clock, the windows)."""
    import time
    clock = {"wall": 0.0}
    windows = []

    def sleep(seconds):
        clock["wall"] += seconds

    def run(choice):
        found = seconds_of(choice, clock["wall"])
        windows.append((choice, clock["wall"], found))
        clock["wall"] += 0.001
        return found

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "perf_counter", lambda: clock["wall"])
    runs = {choice: (lambda choice=choice: run(choice)) for choice in [(1, 1), (2, 1)]}
    return runs, clock, windows


def test_a_lead_of_fewer_threads_is_confirmed_over_a_second_of_rounds(monkeypatch):
    """Other work took the second core for the first 0.3 s (this machine's second core runs
    at half speed in stretches of up to about a second, unseen by the guest): five rounds
    in a row all met it, and two threads looked slower than one. More rounds, spread over
    CONFIRM_SECONDS, find the two threads' real speed."""
    def seconds_of(choice, wall):
        if choice == (1, 1):
            return 70e-6
        return 80e-6 if wall < 0.3 else 45e-6

    runs, clock, windows = windows_on_a_clock(monkeypatch, seconds_of)
    best = _threads._best_windows(runs, _threads.MEASURE_ROUNDS)
    assert best == {(1, 1): 70e-6, (2, 1): 45e-6}
    assert _threads._pick(best) == (2, 1)
    assert 0.3 <= clock["wall"] < 0.3 + 2 * _threads.CONFIRM_GAP_SECONDS   # stopped at once


def test_more_threads_in_the_lead_are_taken_without_confirmation(monkeypatch):
    runs, clock, windows = windows_on_a_clock(
        monkeypatch, lambda choice, wall: 70e-6 if choice == (1, 1) else 45e-6)
    assert _threads._pick(_threads._best_windows(runs, _threads.MEASURE_ROUNDS)) == (2, 1)
    assert len(windows) == 2 * _threads.MEASURE_ROUNDS


def test_fewer_threads_that_stay_ahead_are_chosen_after_the_confirmation(monkeypatch):
    """One thread really faster (or the other core busy the whole time): the rounds stop
    after CONFIRM_SECONDS and fewer threads are chosen."""
    runs, clock, windows = windows_on_a_clock(
        monkeypatch, lambda choice, wall: 70e-6 if choice == (1, 1) else 68e-6)
    assert _threads._pick(_threads._best_windows(runs, _threads.MEASURE_ROUNDS)) == (1, 1)
    assert _threads.CONFIRM_SECONDS <= clock["wall"] < _threads.CONFIRM_SECONDS + 0.1
    gaps = np.diff([wall for choice, wall, _ in windows if choice == (1, 1)])
    assert gaps[_threads.MEASURE_ROUNDS - 1:].min() >= _threads.CONFIRM_GAP_SECONDS


def test_the_candidates_are_one_thread_row_splits_every_way_and_blas_threads():
    R, I, H = _threads.BY_ROWS, _threads.BY_INPUTS, _threads.BY_HIDDEN
    assert _threads._candidates(SIZES, 64, 8) == [
        (1, 1, R), (2, 1, R), (2, 1, I), (2, 1, H), (4, 1, R), (4, 1, I), (4, 1, H),
        (8, 1, R), (8, 1, I), (8, 1, H), (1, 2, R), (1, 4, R), (1, 8, R)]
    assert _threads._candidates(SIZES, 64, 3) == [
        (1, 1, R), (2, 1, R), (2, 1, I), (2, 1, H), (3, 1, R), (3, 1, I), (3, 1, H),
        (1, 2, R), (1, 3, R)]
    # too few rows for 8 workers: 8 threads only on BLAS, counted once
    assert _threads._candidates(SIZES, 8, 8) == [
        (1, 1, R), (2, 1, R), (2, 1, I), (2, 1, H), (4, 1, R), (4, 1, I), (4, 1, H),
        (1, 8, R), (1, 2, R), (1, 4, R)]
    assert _threads._candidates(SIZES, 3, 2) == [(1, 1, R), (1, 2, R)]   # no rows for two
    # three inputs, three hidden units: neither of those splits for four workers
    assert _threads._candidates((3, 3, 2), 64, 4) == [
        (1, 1, R), (2, 1, R), (2, 1, I), (2, 1, H), (4, 1, R), (1, 2, R), (1, 4, R)]
    # two hidden layers: no hidden split
    assert _threads._candidates((20, 16, 8, 3), 64, 2) == [
        (1, 1, R), (2, 1, R), (2, 1, I), (1, 2, R)]


def test_the_measurement_gathers_long_windows_of_batches_in_a_new_order(monkeypatch):
    """Read in place, 39 batches a window, the batches cost a one-thread step less than a
    shuffled fit's gather does and each window paid a thread start: W1's two row workers
    timed about 1.0x of one thread on a 2-core Xeon where fits ran 1.16-1.19x."""
    from fastbp import _core
    windows = []
    real = _core.train_epoch

    def spy(plan, hyper, params, work, state, X, Y, labels, weights, order, *rest, **split):
        windows.append((X.shape[0], np.array(order)))
        return real(plan, hyper, params, work, state, X, Y, labels, weights, order, *rest,
                    **split)

    monkeypatch.setattr(_core, "train_epoch", spy)
    sizes, codes = (784, 128, 10), (0, 2)      # W1's network: a step of about 0.1 ms
    _threads._measure(sizes, codes, 32, "float32", _threads._candidates(sizes, 32, 2))
    assert windows
    for rows, order in windows:
        assert np.array_equal(np.sort(order), np.arange(rows))   # every row, once
    longest = max(rows for rows, _ in windows) // 32
    assert 39 < longest <= _threads.MEASURE_BATCHES
    assert longest * 32 * 784 * 4 <= _threads.MEASURE_BYTES


@pytest.mark.parametrize("clipping", [False, True])
def test_the_real_measurement_returns_an_allowed_candidate(clipping):
    candidates = _threads._candidates(SIZES, 16, 2, clipping)
    assert tuple(_threads._measure(SIZES, CODES, 16, "float32", candidates, clipping)) \
        in candidates


CHILD = textwrap.dedent("""
    import numpy as np, fastbp
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 20)).astype(np.float32)
    y = rng.integers(0, 3, 400)
    model = fastbp.MLP([20, 64, 3], ["relu", "softmax"], seed=1)
    fastbp.Trainer("cce", optimizer="adam", epochs=2, batch_size=64, seed=2).fit(model, X, y)
    print(fastbp._threads.allowed_threads(), model.parameter_vector().tobytes().hex())
""")


def test_the_same_seed_gives_the_same_result_on_this_machine_from_process_to_process(
        tmp_path):
    env = dict(os.environ, FASTBP_CACHE_DIR=str(tmp_path))
    for name in (_threads.THREADS_VARIABLE,) + _threads.THREAD_LIMIT_VARIABLES:
        env.pop(name, None)
    results = [subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                              text=True, timeout=300) for _ in range(2)]
    assert all(result.returncode == 0 for result in results), results[0].stderr
    assert results[0].stdout == results[1].stdout
    allowed = int(results[0].stdout.split()[0])
    # one allowed thread (a one-CPU runner) needs no measurement, so no file
    assert (tmp_path / _threads.CACHE_FILE).exists() == (allowed > 1)


@pytest.mark.parametrize("split", [_threads.BY_INPUTS, _threads.BY_HIDDEN])
def test_a_default_fit_uses_the_measured_split(cache, monkeypatch, split):
    monkeypatch.setattr(_threads, "_measure", lambda *arguments, **options: (2, 1, split))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 20)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    fits = []
    for n_threads in (None, 2):
        model = fastbp.MLP([20, 16, 3], ["relu", "softmax"], seed=1)
        fastbp.Trainer("cce", epochs=2, batch_size=32, seed=2, n_threads=n_threads).fit(
            model, X, y)
        fits.append(model.parameter_vector())
    assert np.array_equal(fits[0], fits[1])


def measured_products(monkeypatch, own_wins):
    """"auto"'s product measurements replaced by own_wins(kind, m, n, k); returns the list
    of the shapes it is asked about and the own kernels' instruction-set code."""
    from fastbp import _products
    asked = []

    def own_is_faster(kind, m, n, k, *measurement, **options):
        asked.append((kind, m, n, k))
        return own_wins(kind, m, n, k)

    monkeypatch.delenv(_products.KERNELS_VARIABLE, raising=False)
    monkeypatch.setattr(_products, "own_is_faster", own_is_faster)
    monkeypatch.setattr(_products, "_chosen", {})
    return asked, fastbp._core.KERNEL_ISAS[_products.kernel_isa()]


@pytest.mark.skipif(_products.kernel_isa() is None, reason="no own kernels in use")
@pytest.mark.parametrize("own", [False, True])
def test_the_inputs_split_chooses_its_partial_products_kernel_at_its_shape(cache,
                                                                           monkeypatch, own):
    """Split by its inputs, the first layer's forward product is each worker's partial
    product over all the batch's rows and its share of the inputs, in one call: "auto"
    measures that shape (not the worker plan's rows x all inputs) and the worker plan's
    first forward product takes the answer; a network of one layer, whose workers do run
    that product on their rows, keeps the plan's own shape."""
    asked, code = measured_products(
        monkeypatch, lambda *shape: own if shape == ("nn", 40, 16, 7) else not own)
    plan, _ = _threads.row_workspace((20, 16, 3), CODES, None, 40, 3, np.float32,
                                     split=_threads.BY_INPUTS)
    assert ("nn", 40, 16, 7) in asked and ("nn", 14, 16, 20) not in asked
    assert plan.product_isas["float32"][0][0] == (code if own else 0)
    asked.clear()
    plan, _ = _threads.row_workspace((20, 16, 3), CODES, None, 40, 3, np.float32,
                                     split=_threads.BY_ROWS)
    assert ("nn", 14, 16, 20) in asked and ("nn", 40, 16, 7) not in asked
    asked.clear()
    plan, _ = _threads.row_workspace((20, 3), (2,), None, 40, 3, np.float32,
                                     split=_threads.BY_INPUTS)
    assert ("nn", 14, 3, 20) in asked and ("nn", 40, 3, 7) not in asked


@pytest.mark.skipif(_products.kernel_isa() is None, reason="no own kernels in use")
def test_the_hidden_split_chooses_its_kernels_at_a_workers_shapes(cache, monkeypatch):
    """Split by the hidden units, a worker's products are those of the network of its
    units alone on the whole batch (20 x 6 x 3 for 16 units on 3 workers, 40 rows): those
    are the shapes "auto" measures for its worker plan."""
    asked, code = measured_products(monkeypatch, lambda kind, m, n, k: kind == "tn")
    plan, _ = _threads.row_workspace((20, 16, 3), CODES, None, 40, 3, np.float32,
                                     split=_threads.BY_HIDDEN)
    assert sorted(asked) == sorted([("nn", 40, 6, 20), ("tn", 20, 6, 40), ("nn", 40, 3, 6),
                                    ("nt", 40, 6, 3), ("tn", 6, 3, 40)])
    assert plan.product_isas["float32"] == [(0, 0, code), (0, 0, code)]


def test_a_step_too_short_to_split_is_not_timed_further(cache, monkeypatch):
    """A one-thread step of a few microseconds keeps one thread without timing the split
    candidates: three hand-offs between threads per step would cost more than it."""
    timed = []
    real_workspace = _threads.row_workspace

    def row_workspace(sizes, codes, dropout, batch_size, workers, dtype, **keywords):
        timed.append(workers)                   # one per candidate set up for timing
        return real_workspace(sizes, codes, dropout, batch_size, workers, dtype, **keywords)

    monkeypatch.setattr(_threads, "row_workspace", row_workspace)
    monkeypatch.setattr(_threads, "TINY_STEP_SECONDS", 1.0)      # every step is "tiny"
    assert _threads.fit_threads((3, 2, 1), (0, 0), 4, np.float64) == (1, 1, False)
    assert timed == [1]
    monkeypatch.setattr(_threads, "TINY_STEP_SECONDS", 0.0)      # no step is
    monkeypatch.setattr(_threads, "_measured", {})
    monkeypatch.setattr(_cache, "read_cache", lambda file_name: {})
    monkeypatch.setattr(_cache, "_read_document", lambda file_name: ({}, False))
    timed.clear()
    choice = _threads.fit_threads((3, 2, 1), (0, 0), 4, np.float64)
    # the first candidate is timed alone first (the tiny-step check), then every candidate
    assert choice[0] * choice[1] <= 2 \
        and len(timed) == 1 + len(_threads._candidates((3, 2, 1), 4, 2))


def test_an_explicit_count_times_its_row_split_before_any_blas_threads(cache, monkeypatch):
    """OpenBLAS's threads keep polling for a while after a multi-threaded call and slow the
    row workers timed after it, so an explicit count's measurement runs the one-thread
    step (the tiny-step check) and the row-split candidate before the BLAS-threads one
    (it used to start with BLAS threads, and on this 2-core machine W1 and W5 then chose
    BLAS threads at 0.6-0.9x of one thread)."""
    import contextlib
    counts = []

    @contextlib.contextmanager
    def blas_threads(count, wait=True):
        counts.append(count)                    # one per timed epoch
        yield

    monkeypatch.setattr(_threads, "blas_threads", blas_threads)
    monkeypatch.setattr(_threads, "TINY_STEP_SECONDS", 0.0)      # no step is tiny
    _threads.fit_threads((3, 2, 1), (0, 0), 8, np.float64, n_threads=2)
    assert counts[0] == 1 and 2 in counts
    assert counts.index(2) > max(i for i, count in enumerate(counts) if count == 1)


# ---- predict, evaluate and gradients passes: their default BLAS count is measured too

@pytest.fixture
def pass_measurements(monkeypatch):
    """Replaces a pass's timing with "two BLAS threads are faster, a chunk takes 1 s" and
    records what it was asked: (layer sizes, rows, backward, allowed)."""
    asked = []

    def measure(layer_sizes, activations, rows, dtype, backward, allowed):
        assert len(activations) == len(layer_sizes) - 1
        asked.append((tuple(layer_sizes), rows, backward, allowed))
        return 2, 1.0

    monkeypatch.setattr(_threads, "_measure_pass", measure)
    return asked


@pytest.fixture
def pass_counts(monkeypatch):
    """The BLAS thread counts the model's passes run under, in order."""
    import contextlib
    counts = []
    real = fastbp.model.blas_threads

    @contextlib.contextmanager
    def recording(count):
        counts.append(count)
        with real(count):
            yield

    monkeypatch.setattr(fastbp.model, "blas_threads", recording)
    return counts


def data(n_rows, width, n_classes=5):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n_rows, width)).astype(np.float32),
            rng.integers(0, n_classes, n_rows))


def test_evaluate_and_gradients_run_on_the_measured_count_measured_once(
        cache, pass_measurements, pass_counts):
    model = fastbp.MLP([30, 40, 5], ["relu", "softmax"], seed=0)
    X, y = data(300, 30)
    for _ in range(2):
        model.evaluate(X, y, "cce")
        model.gradients(X, y, "cce")
    assert pass_counts == [2, 2, 2, 2]
    # (measured at the rows' power of two, 512, and kept for every count up to it)
    assert pass_measurements == [((30, 40, 5), 512, False, 2), ((30, 40, 5), 512, True, 2)]
    document = json.loads((cache / _threads.CACHE_FILE).read_text())
    assert list(document["choices"].values()) == [[2, 1.0], [2, 1.0]]
    _threads._measured.clear()                       # a new process: the file answers
    model.evaluate(X, y, "cce")
    assert len(pass_measurements) == 2 and pass_counts[-1] == 2


@pytest.mark.parametrize("measured, sharers", [((1, 1.0), 2), ((2, 1.0), 2),
                                               ((2, 1e-6), 1), ((1, 1e-6), 1)])
def test_chunks_are_shared_unless_a_chunk_is_too_short(cache, monkeypatch, measured,
                                                      sharers):
    """predict's general path shares whole chunks among threads (each on one BLAS thread)
    whatever BLAS's threads would do, unless a chunk on one thread is shorter than
    SPLIT_MIN_SECONDS."""
    monkeypatch.setattr(_threads, "_measure_pass", lambda *arguments: measured)
    model = fastbp.MLP([30, 40, 5], ["relu", "softmax"], seed=0)
    assert model._predict_workers(3 * 2048, None, False) == sharers
    assert model._pass_threads(2048) == measured[0]
    assert model._predict_workers(2048, None, False) == 1        # one chunk: nothing to share


def test_a_sparse_pass_is_measured_on_the_layers_after_the_first(cache, pass_measurements,
                                                                 pass_counts):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = data(300, 30)
    X[X < 1] = 0
    model = fastbp.MLP([30, 40, 5], ["relu", "softmax"], seed=0)
    model.evaluate(scipy_sparse.csr_matrix(X), y, "cce")
    assert pass_measurements == [((40, 5), 512, False, 2)] and pass_counts == [2]
    single = fastbp.MLP([30, 5], ["softmax"], seed=0)    # nothing after the first layer
    single.evaluate(scipy_sparse.csr_matrix(X), y, "cce")
    # no measurement, and no BLAS count set: the pass calls no BLAS
    assert len(pass_measurements) == 1 and pass_counts == [2]


@pytest.mark.parametrize("kernels", ["blas", "own"])
def test_a_pinned_explicit_or_single_allowed_count_is_not_measured(
        cache, pass_measurements, pass_counts, monkeypatch, kernels):
    """An explicit count, a pinned one and a single allowed thread are not measured, and
    every pass runs on one thread. A pass sets BLAS's thread count only where it calls
    BLAS: a gradients pass always does; an evaluate pass whose products all run in the own
    kernels does not. FASTBP_KERNELS fixes which they run in (under "auto" a one-thread
    pass's products are timed against BLAS on the machine: either may win)."""
    monkeypatch.setenv(_products.KERNELS_VARIABLE, kernels)
    counts = [1] if kernels == "own" and _products.kernel_isa() else [1, 1, 1]
    model = fastbp.MLP([30, 40, 5], ["relu", "softmax"], seed=0)
    X, y = data(300, 30)
    model.evaluate(X, y, "cce", n_threads=1)
    monkeypatch.setenv(_threads.THREADS_VARIABLE, "1")
    model.gradients(X, y, "cce")
    monkeypatch.delenv(_threads.THREADS_VARIABLE)
    monkeypatch.setattr(_threads, "allowed_threads", lambda: 1)
    model.evaluate(X, y, "cce")
    assert pass_measurements == [] and pass_counts == counts


def test_a_slowed_pass_measurement_cuts_its_windows_short(cache, monkeypatch):
    """Two BLAS threads sharing the cores with other processes ran a pass 50 times slower
    than one thread (their OpenBLAS threads wait for each other spinning: 15.6 ms a pass of
    100-65-10 on 512 rows against 0.3 with a compiler on each core), so windows of the
    count planned from one thread's pace took 1.8 s each and the first predict of the shape
    8 s. A window now ends once it has lasted WINDOW_LIMIT times MEASURE_SECONDS (on a
    simulated clock: 0.1 ms a pass on one thread, 25 ms on two)."""
    clock, passes = [0.0], []

    def advance(seconds):
        clock[0] += seconds

    real_predict = _core.predict

    def predict(*arguments):
        real_predict(*arguments)
        count = _threads._count
        passes.append(count)
        advance(1e-4 if count == 1 else 25e-3)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", advance)
    monkeypatch.setattr(time, "process_time", lambda: 0.0)     # a quiet process
    monkeypatch.setattr(_core, "predict", predict)
    windows = []
    real_windows = _threads._best_windows

    def best_windows(runs, rounds, confirm_seconds=None):
        def counted(choice, run):
            def window():
                before = len(passes)
                seconds = run()
                windows.append((choice, len(passes) - before))
                return seconds
            return window
        return real_windows({choice: counted(choice, run) for choice, run in runs.items()},
                            rounds, confirm_seconds)

    monkeypatch.setattr(_threads, "_best_windows", best_windows)
    count, seconds = _threads._measure_pass((30, 40, 5), ("relu", "softmax"), 64, "float32",
                                            False, 2)
    assert (count, seconds) == (1, pytest.approx(1e-4))
    planned = int(_threads.MEASURE_SECONDS / 1e-4)
    assert {n for choice, n in windows if choice == (1, 1)} == {planned}
    assert {n for choice, n in windows if choice == (1, 2)} == {1}    # past the limit
    assert len(windows) >= 2 * _threads.MEASURE_ROUNDS
    # (before: 5 rounds of 100 passes on two threads, 12.5 s; now the rounds and the 0.2 s
    # of confirmation)
    assert clock[0] < _threads.MEASURE_ROUNDS * 0.035 + _threads.PASS_CONFIRM_SECONDS + 0.2


def test_a_fit_measurement_window_takes_the_steps_its_pace_fits():
    """A fit's window is one compiled call of `count` steps, which cannot be cut short: after
    a window slower than WINDOW_LIMIT times MEASURE_SECONDS the next takes as many steps
    as the last pace fits in MEASURE_SECONDS, and grows back to `count` with the pace (the
    best window decides, so a candidate slowed for a while is not judged on cut windows
    alone)."""
    counts, pace = [], [1e-4]

    def window(steps):
        counts.append(steps)
        return pace[0]

    planned = int(_threads.MEASURE_SECONDS / 1e-4)
    run = _threads._paced(window, planned)
    for seconds in (1e-4, 50e-4, 50e-4, 2e-4, 1e-6, 1e-4):
        pace[0] = seconds
        assert run() == seconds
    assert counts == [planned, planned, 2, 2, planned // 2, planned]


def test_the_real_pass_measurement(cache, monkeypatch):
    """A chunk under SPLIT_MIN_SECONDS on one thread stays there untimed; one over
    PASS_UNMEASURED_SECONDS takes every allowed thread untimed; between, one thread and
    the allowed count take turns (with the pass's shorter confirmation)."""
    windows = []
    real_windows = _threads._best_windows

    def best_windows(runs, rounds, confirm_seconds=None):
        windows.append((sorted(runs), confirm_seconds))
        return real_windows(runs, rounds, confirm_seconds)

    monkeypatch.setattr(_threads, "_best_windows", best_windows)
    sizes, names = (30, 40, 5), ("relu", "softmax")
    monkeypatch.setattr(_threads, "SPLIT_MIN_SECONDS", 1.0)       # every chunk is short
    count, seconds = _threads._measure_pass(sizes, names, 64, "float32", False, 2)
    assert count == 1 and 0 < seconds < 1.0
    monkeypatch.setattr(_threads, "SPLIT_MIN_SECONDS", 0.0)
    monkeypatch.setattr(_threads, "PASS_UNMEASURED_SECONDS", 0.0)  # every chunk is long
    assert _threads._measure_pass(sizes, names, 64, "float32", True, 2)[0] == 2
    assert windows == []
    monkeypatch.setattr(_threads, "PASS_UNMEASURED_SECONDS", 10.0)
    for backward in (False, True):
        assert _threads._measure_pass(sizes, names, 64, "float64", backward, 2)[0] in (1, 2)
    assert windows == [([(1, 1), (1, 2)], _threads.PASS_CONFIRM_SECONDS)] * 2


def test_a_pass_inside_another_never_measures_nor_waits_for_a_measurement(cache,
                                                                         monkeypatch):
    """A pass started inside another on the same thread (a fit's validation) runs under
    that pass's count: it takes the count kept for its shape, or one thread, without
    measuring and without waiting for a measurement under way in another thread (which
    may itself wait for the outer pass to end: two fits with validation on two threads
    deadlocked so)."""
    import threading

    def measure(*arguments):
        raise AssertionError("measured inside a pass")

    monkeypatch.setattr(_threads, "_measure_pass", measure)
    found = []

    def inside():
        with _threads.blas_threads(1):
            found.append(_threads.pass_threads((30, 40, 5), ("relu", "softmax"), 64,
                                               "float32", False))
            found.append(_threads.pass_threads((30, 41, 5), ("relu", "softmax"), 64,
                                               "float32", True))

    key = _threads._pass_key((30, 41, 5), 64, "float32", True, 2,
                             _threads._getenv(_threads._KERNELS_LOOKUPS))
    _threads._measured[key] = (2, 2)
    with _threads._measure_lock:                 # another thread's measurement
        thread = threading.Thread(target=inside)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "a pass inside another waited for the measurement"
    assert found == [(1, 1), (2, 2)]


def test_a_measurement_never_waits_for_other_threads_passes(cache, monkeypatch):
    """Timing a count BLAS is not on would wait for other threads' passes to end, and one
    of them may be waiting for this very call (a fit paused in a callback that predicts:
    the debug build's pass took over 50 us, so it was timed, and the test hung). Such a
    call runs on one thread unmeasured, keeps nothing, and a later call measures."""
    monkeypatch.setattr(_threads, "SPLIT_MIN_SECONDS", 0.0)        # every chunk is timed
    monkeypatch.setattr(_threads, "PASS_UNMEASURED_SECONDS", 10.0)
    monkeypatch.setattr(_threads, "CONFIRM_SECONDS", 0.0)
    with another_threads_pass(1):
        started = time.perf_counter()
        assert _threads.pass_threads((30, 40, 5), ("relu", "softmax"), 64, "float32",
                                     False) == (1, 1)
        assert time.perf_counter() - started < 30
        assert _threads._measured == {}
    blas, sharers = _threads.pass_threads((30, 40, 5), ("relu", "softmax"), 64, "float32",
                                          False)
    assert blas in (1, 2) and sharers == 2 and len(_threads._measured) == 1


def test_a_measurement_that_would_wait_for_another_threads_pass_holds_no_lock(cache):
    """A default fit's measurement times candidates on one and on two BLAS threads; while
    another thread's pass holds two, the one-thread candidate cannot run. It waits with
    _measure_lock and the cache file's lock let go (it held both, so every other thread's
    and process's first measurement waited on that other pass too), then measures."""
    chosen = []
    fitting = threading.Thread(target=lambda: chosen.append(_threads.fit_threads(
        (40, 24, 3), CODES, 16, np.float32)))
    with another_threads_pass(2):
        fitting.start()
        time.sleep(0.5)              # the measurement has found the pass in the way
        assert fitting.is_alive()
        assert _threads._measure_lock.acquire(timeout=5)
        _threads._measure_lock.release()
        started = time.monotonic()
        assert _cache.settled(_threads.CACHE_FILE, "another key", lambda kept: kept == 1,
                              lambda: 1) == 1
        assert time.monotonic() - started < 5
    fitting.join(120)
    assert len(chosen) == 1 and chosen[0] in _threads._measured.values()


def test_a_measurement_gets_in_between_passes_that_never_pause(cache):
    """Passes on another count that follow each other back to back leave no moment with
    none running: the measurement's waits between its tries are bounded, and its last try
    queues, so it gets in after the passes running when it asked (it waited for as long
    as they kept coming)."""
    def measure(wait):
        with _threads.blas_threads(2, wait=wait):
            return "measured"

    with another_threads_pass(1, back_to_back=True):     # a serving loop, say
        begun = time.monotonic()
        assert _threads.measured(threading.Lock(), lambda: None, measure) == "measured"
        assert time.monotonic() - begun < 5


def test_a_pass_measurement_never_waits_inside_for_the_product_kernels_choice(
        cache, monkeypatch):
    """A predict pass of 200 rows measured while another thread's pass holds another BLAS
    count runs on one thread unmeasured (pass_threads); the product kernels' choice its
    workspace asks for inside it does not wait either (it waited, holding
    _measure_lock, where the other pass might wait for this very call)."""
    monkeypatch.setattr(_threads, "PASS_UNMEASURED_SECONDS", 10.0)
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    monkeypatch.setattr(_products, "_measured", {})
    found = []
    with another_threads_pass(2):
        asking = threading.Thread(target=lambda: found.append(_threads.pass_threads(
            (37, 53, 5), ("relu", "softmax"), 200, "float32", False)))
        asking.start()
        asking.join(30)
        assert not asking.is_alive(), "the pass's measurement waited for the other pass"
    assert found == [(1, 1)]


@contextlib.contextmanager
def another_threads_pass(count, back_to_back=False):
    """Another thread inside a blas_threads(count) pass for the block, or back_to_back:
    in one pass of 2 ms after another, without a pause."""
    inside, release = threading.Event(), threading.Event()

    def hold():
        while True:
            with _threads.blas_threads(count):
                inside.set()
                if release.wait(0.002 if back_to_back else 60) or not back_to_back:
                    return

    other = threading.Thread(target=hold)
    other.start()
    try:
        inside.wait(60)
        yield
    finally:
        release.set()
        other.join(60)


def test_a_fit_inside_another_pass_measures_nothing_and_keeps_nothing(cache, measurements):
    """A default fit started inside another fit's pass (a callback's) runs on that pass's
    BLAS count: measuring there timed every candidate at the caller's count and kept the
    answer for good (the audit). It takes a kept choice, or one thread (an explicit count:
    its rows, the count honoured), measures nothing and writes nothing."""
    with _threads.blas_threads(2):
        assert _threads.fit_threads(SIZES, CODES, 32, "float32") == _threads.ONE_THREAD
        assert _threads.fit_threads(SIZES, CODES, 32, "float32", n_threads=2) == (2, 1, 0)
    assert measurements == [] and not (cache / _threads.CACHE_FILE).exists()
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)   # outside
    with _threads.blas_threads(2):                           # the kept choice, inside
        assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    _threads._measured.clear()                   # a new process: the file's, read unlocked
    with _threads.blas_threads(2):
        assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    assert len(measurements) == 1


def test_a_pass_is_measured_once_per_power_of_two_of_its_rows(cache, monkeypatch):
    """A service predicting every row count from 65 up paid a measurement (up to a second)
    at each new count, and kept one entry for each: the pass's count is measured at the
    rows' power of two and kept for every count up to it."""
    timed = []

    def measure(layer_sizes, activations, rows, dtype, backward, allowed):
        timed.append(rows)
        return 2, 0.01

    monkeypatch.setattr(_threads, "_measure_pass", measure)
    for rows in range(300, 520):
        assert _threads.pass_threads((30, 40, 5), ("relu", "softmax"), rows, "float32",
                                     False) == (2, 2)
    assert timed == [512, 1024] and len(_threads._measured) == 2


def test_a_kept_choice_is_taken_without_waiting_for_another_threads_measurement(
        cache, measurements):
    """A fit whose thread choice was kept already waited for _measure_lock all the same,
    behind any other thread's measurement (0.7-1.7 s a partial_fit in the audit)."""
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == (2, 1, False)
    found = []
    with _threads._measure_lock:                 # another thread measures meanwhile
        thread = threading.Thread(target=lambda: found.append(
            _threads.fit_threads(SIZES, CODES, 32, "float32")))
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "a kept choice waited for another measurement"
    assert found == [(2, 1, False)] and len(measurements) == 1


@pytest.mark.parametrize("variable, value", [("FASTBP_KERNEL_ISA", "baseline"),
                                             ("FASTBP_KERNELS", "blas"),
                                             ("OPENBLAS_CORETYPE", "Haswell")])
def test_a_choice_measured_with_other_kernels_is_measured_again(cache, measurements,
                                                                monkeypatch, variable, value):
    """The kernels that run a fit's steps are part of its choice's key: a choice timed with
    the machine's own kernels was taken under FASTBP_KERNEL_ISA=avx2 (bench/compare.py's
    AVX2 stand-in), FASTBP_KERNELS=blas or another OpenBLAS core."""
    for name in ("FASTBP_KERNEL_ISA", "FASTBP_KERNELS", "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(name, raising=False)
    _threads.fit_threads(SIZES, CODES, 32, "float32")
    monkeypatch.setenv(variable, value)
    _threads.fit_threads(SIZES, CODES, 32, "float32")
    _threads.fit_threads(SIZES, CODES, 32, "float32")
    assert len(measurements) == 2
    assert len(json.loads((cache / _threads.CACHE_FILE).read_text())["choices"]) == 2


@pytest.mark.parametrize("variable, value", [("FASTBP_KERNEL_ISA", "baseline"),
                                             ("FASTBP_KERNELS", "blas"),
                                             ("OPENBLAS_CORETYPE", "Haswell")])
def test_a_pass_choice_measured_with_other_kernels_is_measured_again(cache, monkeypatch,
                                                                     variable, value):
    """As a fit's: the thread choice of a predict, evaluate or gradients pass was kept for
    every kernel setting, so the AVX2 stand-in took the one timed with AVX-512 kernels."""
    passes = []

    def measure(layer_sizes, activations, rows, dtype, backward, allowed):
        passes.append(rows)
        return 2, 0.01

    monkeypatch.setattr(_threads, "_measure_pass", measure)
    for name in ("FASTBP_KERNEL_ISA", "FASTBP_KERNELS", "OPENBLAS_CORETYPE"):
        monkeypatch.delenv(name, raising=False)
    for _ in range(2):
        assert _threads.pass_threads((30, 40, 5), ("relu", "softmax"), 512, "float32",
                                     False) == (2, 2)
    monkeypatch.setenv(variable, value)
    for _ in range(2):
        _threads.pass_threads((30, 40, 5), ("relu", "softmax"), 512, "float32", False)
    monkeypatch.delenv(variable)
    _threads.pass_threads((30, 40, 5), ("relu", "softmax"), 512, "float32", False)
    assert passes == [512, 512]
    assert len(json.loads((cache / _threads.CACHE_FILE).read_text())["choices"]) == 2


def test_the_history_names_the_way_and_pinning_it_gives_the_same_bits(cache, monkeypatch):
    """Each way of two threads rounds differently, and which one n_threads=2 takes is
    measured: history.threads names it, and n_threads with FASTBP_SPLIT set to that name
    gives the same bits where a fresh cache measures another way (the measurement replaced
    by a fixed answer: each way in turn)."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((96, 12))
    y = rng.integers(0, 4, 96)

    def fit(n_threads=2):
        model = fastbp.MLP([12, 24, 4], ["relu", "softmax"], seed=3)
        history = fastbp.Trainer("cce", learning_rate=0.1, epochs=2, batch_size=32, seed=5,
                                 n_threads=n_threads).fit(model, X, y)
        return history.threads, model.parameter_vector()

    monkeypatch.delenv(_threads.SPLIT_VARIABLE, raising=False)
    assert fit(1)[0] == {"n_threads": 1, "split": None}
    results = {}
    for name in _threads.SPLITS:
        way = _threads.split_threads((12, 24, 4), 32, 2, _threads.ROW_SPLITS[name]) \
            if name != "blas" else (1, 2, _threads.BY_ROWS)
        monkeypatch.setattr(_threads, "_measured", {})
        monkeypatch.setattr(_threads, "_measure", lambda *args, way=way, **kw: way)
        monkeypatch.setenv("FASTBP_CACHE_DIR", str(cache / name))
        threads, measured = fit()
        assert threads == {"n_threads": 2, "split": name}
        monkeypatch.setenv(_threads.SPLIT_VARIABLE, name)
        monkeypatch.setattr(_threads, "_measure", None)     # pinned: nothing is measured
        assert fit()[1].tobytes() == measured.tobytes()
        monkeypatch.delenv(_threads.SPLIT_VARIABLE)
        results[name] = measured
    # (the ways do round differently: the record is what reproduces a run)
    assert len({vector.tobytes() for vector in results.values()}) > 1
    for vector in results.values():
        np.testing.assert_allclose(vector, results["rows"], rtol=1e-4, atol=1e-6)  # float32


def test_a_sparse_fit_names_its_count_and_no_way():
    import scipy.sparse
    X = scipy.sparse.random(64, 40, density=0.1, format="csr", random_state=1)
    y = np.arange(64) % 3
    for n_threads in (1, 2):
        model = fastbp.MLP([40, 8, 3], ["relu", "softmax"], seed=3)
        history = fastbp.Trainer("cce", optimizer="adam", epochs=1, batch_size=16,
                                 n_threads=n_threads).fit(model, X, y)
        assert history.threads == {"n_threads": n_threads, "split": None}
    assert fastbp.Trainer("cce", epochs=0).fit(model, X, y).threads is None


def test_partial_fits_of_changing_row_counts_share_a_few_plans_and_measurements(
        cache, measurements, monkeypatch):
    """A fit of fewer rows than batch_size ran (and measured its threads and kernels, and
    kept a plan) at a batch of exactly its rows: a loop of partial_fit calls of 20-255 rows
    measured again for every new count (186 in 400 calls, 0.3 s each). Its batch is the
    rows rounded up to a power of two (trainer.plan_rows): a measurement per power."""
    from fastbp import trainer as trainer_module
    products = []
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    monkeypatch.setattr(_products, "_measure",
                        lambda *args, **kwargs: products.append(args[:4]) or False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 20)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    model = fastbp.MLP(list(SIZES), ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", optimizer="adam", batch_size=256, seed=0)
    counts = range(20, 256, 5)
    for rows in counts:
        trainer.partial_fit(model, X[:rows], y[:rows])
    batches = {trainer_module.plan_rows(rows) for rows in counts}
    assert batches == {32, 64, 128, 256}
    assert sorted(call[1] for call in measurements) == sorted(batches)
    if _products.kernel_mode() == "auto" and _products.kernel_isa() is not None:
        # (and each of two row workers' halves)
        assert {m for kind, m, n, k in products if kind == "nn" and k == 20} <= \
            batches | {batch // 2 for batch in batches}
    assert [trainer_module.plan_rows(rows) for rows in (1, 2, 3, 1024, 1025, 3000)] == \
        [1, 2, 4, 1024, 2048, 3072]


def test_a_fits_validation_passes_do_not_read_the_cache_file_at_every_epoch(
        cache, monkeypatch):
    """Inside a fit, a validation pass looks its product choices up without measuring; one
    not yet measured was looked up in the whole products.json again at every epoch of
    every fit (4.3-5.3 s for a 20-epoch fit beside a 12 MB file): once per key now."""
    from fastbp import _cache
    reads = []
    read = _cache._read_document
    monkeypatch.setattr(_cache, "_read_document", lambda name: reads.append(name) or
                        read(name))
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    monkeypatch.setattr(_products, "_absent", {}, raising=False)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(600, 20)).astype(np.float32), rng.integers(0, 3, 600)
    X_val, y_val = rng.normal(size=(700, 20)).astype(np.float32), rng.integers(0, 3, 700)
    model = fastbp.MLP(list(SIZES), ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", epochs=10, batch_size=64, seed=0, n_threads=1)
    trainer.fit(model, X, y, validation_data=(X_val, y_val))
    first = len(reads)
    reads.clear()
    trainer.fit(model, X, y, validation_data=(X_val, y_val))
    assert first <= 10 and reads == []


def test_a_fit_of_fewer_rows_shares_them_evenly_among_its_row_workers(monkeypatch):
    """plan_rows sized each row worker's share from the plan's batch (130 rows on 2
    workers: 128 and 2; 1,025 rows: 1,024 and 1): the step's rows are shared evenly (65 and
    65), while the workers' product kernels are still chosen at the plan's shapes."""
    measured = []
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    monkeypatch.setattr(_products, "_measure",
                        lambda kind, m, n, k, *args, **kwargs:
                        measured.append(k if kind == "tn" else m) or False)   # (the rows)
    from fastbp import trainer as trainer_module
    for rows, workers in ((130, 2), (1025, 2), (129, 4)):
        batch = trainer_module.plan_rows(rows)
        plan, _ = _threads.row_workspace((20, 16, 3), (0, 2), [0.0, 0.0], batch, workers,
                                         np.float32, rows=rows)
        assert plan.capacity == -(-rows // workers)
        if _products.kernel_mode() == "auto" and _products.kernel_isa() is not None:
            assert set(measured) <= {-(-batch // workers)}
        measured.clear()


def test_the_measurement_trains_every_way_on_one_parameter_vector():
    """The measurement drew a parameter vector for each way it timed (in float64, then
    cast) and held them all at once: a first default fit of a 122 MiB float32 network
    peaked at 6.4x its parameters (under a memory limit the fit fitted in, a bare
    MemoryError). Now one vector, drawn in the dtype, and the data."""
    sizes, batch_size, codes = (2500, 2500, 10), 16, (0, 2)     # relu, identity
    candidates = _threads._candidates(sizes, batch_size, 2)
    assert len(candidates) >= 3
    n_bytes = 4 * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    tracemalloc.start()
    try:
        _threads._measure(sizes, codes, batch_size, "float32", candidates)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the vector, the workspace (its gradient) and a product's operands while its kernels
    # are chosen, besides the data
    assert peak < 2.6 * n_bytes + _threads.MEASURE_BYTES, f"{peak / n_bytes:.2f}x"


def test_a_measurement_without_room_trains_unmeasured_and_keeps_nothing(cache, monkeypatch):
    """A measurement whose copy of the parameters has no room: the fit trains on the
    unmeasured way (as when its threads cannot be started), and a later fit measures."""
    def no_room(*args, **kwargs):
        raise MemoryError("Unable to allocate 923. MiB")

    monkeypatch.setattr(_threads, "_measure", no_room)
    assert _threads.fit_threads(SIZES, CODES, 32, "float32") == _threads.ONE_THREAD
    assert not (cache / _threads.CACHE_FILE).exists() or not json.loads(
        (cache / _threads.CACHE_FILE).read_text()).get("choices")
    assert _threads._measured == {}
