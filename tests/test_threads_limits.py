"""The caller's limits win (issue 11 item 4): with n_threads=None, no fit, predict, evaluate
or gradients uses more threads than its caller allows: the CPU affinity mask, a cgroup CPU
quota, OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS, and threadpoolctl's limits
in force. An explicit n_threads is obeyed as given."""
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbp
from fastbp import _threads

# Large enough that its passes are measured (a chunk over _threads.SPLIT_MIN_SECONDS).
BIG = [256, 512, 512, 10]
ACTIVATIONS = ["relu", "relu", "softmax"]


@pytest.fixture
def recorded_counts(monkeypatch):
    """The threads fastbp's passes use, in order: the BLAS count of predict, evaluate and
    gradients; a fit's row workers times its BLAS threads."""
    counts = []
    real_blas, real_split = _threads.blas_threads, _threads.fit_threads
    fitting = []

    @contextlib.contextmanager
    def recording(n_threads):
        counts.append(n_threads * (fitting.pop() if fitting else 1))
        with real_blas(n_threads):
            yield

    def split(*arguments):
        workers, blas, way = real_split(*arguments)
        fitting.append(workers)
        return workers, blas, way

    monkeypatch.setattr(fastbp.model, "blas_threads", recording)
    monkeypatch.setattr(fastbp.trainer, "blas_threads", recording)
    monkeypatch.setattr(fastbp.trainer, "fit_threads", split)
    return counts


@pytest.fixture
def many_cpus(monkeypatch):
    """A process that seems to have 8 CPUs and no other limit, so each test sees only the
    limit it sets."""
    monkeypatch.setattr(_threads, "_cpu_count", lambda: 8)
    monkeypatch.setattr(_threads, "_cgroup_limit", lambda: None)
    monkeypatch.setattr(_threads, "_blas_setting", lambda: None)
    for name in _threads.THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # not a process that has started Dask workers (tests/test_dask.py's cluster leaves the mark)
    monkeypatch.delenv(_threads.DASK_PARENT_VARIABLE, raising=False)


def every_pass(model, n_threads=None):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, BIG[0])).astype(np.float32)
    y = rng.integers(0, BIG[-1], size=600)
    model.predict(X, n_threads=n_threads)
    model.evaluate(X, y, "cce", n_threads=n_threads)
    model.gradients(X, y, "cce", n_threads=n_threads)
    fastbp.Trainer("cce", epochs=1, batch_size=256, seed=0, n_threads=n_threads).fit(model, X, y)


def big_model():
    return fastbp.MLP(BIG, ACTIVATIONS, seed=0)


@pytest.fixture
def every_core_wins(monkeypatch, tmp_path):
    """A pass's measurement that finds every allowed thread faster (no timing), with a
    private cache; records the counts it was asked to choose between."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_threads, "_measured", {})
    asked = []

    def measure(layer_sizes, activations, rows, dtype, backward, allowed):
        asked.append(allowed)
        return allowed, 1.0

    monkeypatch.setattr(_threads, "_measure_pass", measure)
    return asked


def pass_threads():
    """The BLAS count of a default pass (its chunks shared among as many threads)."""
    blas, sharers = _threads.pass_threads(BIG, ACTIVATIONS, 256, "float32", False)
    assert blas == sharers
    return blas


def test_a_default_pass_chooses_among_every_allowed_core(many_cpus, every_core_wins):
    assert pass_threads() == 8
    assert every_core_wins == [8]


def test_affinity_limits_the_default(many_cpus, every_core_wins, monkeypatch):
    monkeypatch.setattr(_threads, "_cpu_count", lambda: 3)
    assert _threads.allowed_threads() == 3
    assert pass_threads() == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks here")
def test_the_affinity_mask_is_read_as_python_reads_it():
    """The mask is read in C on every call (_core.affinity_count): the count Python's
    os.sched_getaffinity gives, before, under and after a narrower mask set mid-process."""
    from fastbp import _core
    mask = os.sched_getaffinity(0)
    assert _core.affinity_count() == len(mask) == _threads._cpu_count()
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert _core.affinity_count() == 1 == _threads._cpu_count()
        assert _threads.allowed_threads() == 1
    finally:
        os.sched_setaffinity(0, mask)
    assert _core.affinity_count() == len(mask)


@pytest.mark.parametrize("name", _threads.THREAD_LIMIT_VARIABLES)
def test_each_environment_variable_limits_the_default(many_cpus, monkeypatch, name):
    monkeypatch.setenv(name, "2")
    assert _threads.allowed_threads() == 2
    monkeypatch.setenv(name, "5,1")      # OpenMP's nested form: the outer level counts
    assert _threads.allowed_threads() == 5
    for ignored in ("", "0", "-3", "many", " "):   # no limit, as the libraries read them
        monkeypatch.setenv(name, ignored)
        assert _threads.allowed_threads() == 8


def test_the_smallest_limit_wins(many_cpus, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.setattr(_threads, "_cgroup_limit", lambda: 5)
    assert _threads.allowed_threads() == 4
    monkeypatch.setattr(_threads, "_cpu_count", lambda: 2)
    assert _threads.allowed_threads() == 2


def test_the_ones_dask_sets_in_the_process_that_starts_its_workers_are_no_limit(
        many_cpus, monkeypatch):
    """Dask's nanny sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS to 1 in
    the process that starts worker processes, for them, and marks it with
    __DASK_PARENT_PID: there the values from fastbp's import count; in the workers (whose
    parent is another process) the 1s are their limit."""
    monkeypatch.setattr(_threads, "_IMPORT_ENVIRONMENT",
                        dict.fromkeys(_threads.THREAD_LIMIT_VARIABLES))
    for name in _threads.THREAD_LIMIT_VARIABLES:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv(_threads.DASK_PARENT_VARIABLE, str(os.getpid()))
    assert _threads.allowed_threads() == 8
    monkeypatch.setitem(_threads._IMPORT_ENVIRONMENT, "OMP_NUM_THREADS", "3")
    assert _threads.allowed_threads() == 3      # what the caller had set still counts
    monkeypatch.setenv(_threads.DASK_PARENT_VARIABLE, str(os.getppid()))   # a worker
    assert _threads.allowed_threads() == 1
    monkeypatch.delenv(_threads.DASK_PARENT_VARIABLE)
    assert _threads.allowed_threads() == 1


def test_a_cgroup_quota_limits_the_default(many_cpus, every_core_wins, monkeypatch):
    monkeypatch.setattr(_threads, "_cgroup_limit", lambda: 3)
    assert pass_threads() == 3


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_rounded_up_and_the_smallest_over_the_ancestors(tmp_path):
    membership = tmp_path / "cgroup"
    write(membership, "0::/outer/inner\n")
    root = tmp_path / "fs"
    write(root / "outer" / "inner" / "cpu.max", "250000 100000\n")   # 2.5 CPUs -> 3
    assert _threads.cgroup_cpu_limit(str(root), str(membership)) == 3
    write(root / "outer" / "cpu.max", "100000 100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(membership)) == 1
    write(root / "outer" / "cpu.max", "max 100000\n")
    write(root / "outer" / "inner" / "cpu.max", "max 100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(membership)) is None


def test_cgroup_v2_seen_from_inside_a_container(tmp_path):
    """In a cgroup namespace the process's group is the mount's root."""
    membership = tmp_path / "cgroup"
    write(membership, "0::/\n")
    write(tmp_path / "fs" / "cpu.max", "150000 100000\n")
    assert _threads.cgroup_cpu_limit(str(tmp_path / "fs"), str(membership)) == 2


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    membership = tmp_path / "cgroup"
    write(membership, "5:memory:/x\n4:cpu,cpuacct:/job\n0::/\n")
    root = tmp_path / "fs"
    write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "400000\n")
    write(root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(membership)) == 4
    write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "-1\n")
    assert _threads.cgroup_cpu_limit(str(root), str(membership)) is None


def test_unreadable_or_garbled_cgroup_files_are_no_limit(tmp_path):
    assert _threads.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "missing")) is None
    membership = tmp_path / "cgroup"
    write(membership, "garbage\n0::/g\n")
    write(tmp_path / "fs" / "g" / "cpu.max", "lots of\n")
    assert _threads.cgroup_cpu_limit(str(tmp_path / "fs"), str(membership)) is None


def test_this_machines_cgroup_files_read_without_error():
    limit = _threads.cgroup_cpu_limit()
    assert limit is None or limit >= 1


def test_threadpool_limits_in_force_limit_every_default_pass(recorded_counts):
    model = big_model()
    with threadpool_limits(limits=1, user_api="blas"):
        assert _threads.allowed_threads() == 1
        every_pass(model)
    assert recorded_counts and set(recorded_counts) == {1}


def test_an_explicit_n_threads_is_obeyed_under_a_limit(recorded_counts):
    model = big_model()
    with threadpool_limits(limits=1, user_api="blas"):
        every_pass(model, n_threads=2)
    assert recorded_counts and set(recorded_counts) == {2}


def test_the_limit_read_inside_a_running_pass_is_the_callers_not_fastbps():
    """While a pass runs on 2 BLAS threads, a default chosen on another thread still sees
    the caller's 1 (what the first pass found), not the 2 it set."""
    with threadpool_limits(limits=1, user_api="blas"):
        with _threads.blas_threads(2):
            assert _threads.allowed_threads() == 1


CHILD = textwrap.dedent("""
    import contextlib, json, sys
    import numpy as np
    import fastbp
    from fastbp import _threads
    counts = []
    real = _threads.blas_threads
    @contextlib.contextmanager
    def recording(n):
        counts.append(n)
        with real(n):
            yield
    fastbp.model.blas_threads = fastbp.trainer.blas_threads = recording
    model = fastbp.MLP(%r, ["relu", "relu", "softmax"], seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, %d)).astype(np.float32)
    y = rng.integers(0, %d, size=600)
    model.predict(X)
    model.evaluate(X, y, "cce")
    model.gradients(X, y, "cce")
    fastbp.Trainer("cce", epochs=1, batch_size=256, seed=0).fit(model, X, y)
    print(json.dumps(counts))
""" % (BIG, BIG[0], BIG[-1]))


@pytest.mark.parametrize("name", _threads.THREAD_LIMIT_VARIABLES)
def test_a_process_started_with_a_thread_variable_runs_every_default_pass_on_one_thread(name):
    env = {key: value for key, value in os.environ.items()
           if key not in _threads.THREAD_LIMIT_VARIABLES}
    env[name] = "1"
    # BLAS's products in every pass, so that each enters blas_threads (a predict whose
    # kept plan runs every product in the own kernels calls no BLAS and sets nothing)
    env["FASTBP_KERNELS"] = "blas"
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(counts) == 4 and set(counts) == {1}


FORKED_WHILE_ANOTHER_THREAD_RUNS = textwrap.dedent("""
    import os, signal, threading, warnings
    import numpy as np
    import fastbp
    from fastbp import _products, _threads
    from threadpoolctl import threadpool_info

    def blas_counts():
        return sorted(info["num_threads"] for info in threadpool_info())

    original = blas_counts()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(1000, 64)), rng.integers(0, 3, 1000)
    model = fastbp.MLP([64, 32, 3], ["relu", "softmax"], seed=0)
    expected = model.predict(X, n_threads=1)
    held = fastbp.MLP([64, 32, 3], ["relu", "softmax"], seed=0)
    entered, stop = threading.Event(), threading.Event()

    def another_thread():   # a fit's hold on a model, its pass on 2 threads, a measurement
        assert held._begin_training()
        with _threads.blas_threads(2), _products._lock:
            entered.set()
            stop.wait()
        held._end_training()

    threading.Thread(target=another_thread, daemon=True).start()
    entered.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        signal.alarm(60)             # a hang ends the child, not the test run
        status = 1
        try:
            assert blas_counts() == original, (blas_counts(), original)
            assert np.array_equal(model.predict(X, n_threads=1), expected)
            fastbp.Trainer("cce", epochs=1, n_threads=1).fit(model, X, y)
            fastbp.Trainer("cce", epochs=1, n_threads=1).fit(held, X, y)
            assert _threads._active == 0
            isa = _products.kernel_isa()          # None: no own kernels on this CPU
            assert isa is None or _products.own_is_faster("nn", 7, 9, 11, "float32",
                                                          isa) in (True, False)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    stop.set()
    print("child", status)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_fits_trains_and_predicts():
    """A process forked while another thread is in a fit (holding its model, in a pass on
    another BLAS thread count, measuring the product kernels) has only the forking thread:
    the child's passes and measurements no longer wait for the parent's (they waited for
    ever), its copy of the held model trains, and the BLAS count that pass set is put back
    in it."""
    result = subprocess.run([sys.executable, "-c", FORKED_WHILE_ANOTHER_THREAD_RUNS],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["child", "0"], \
        (result.stdout, result.stderr[-2000:])


FORKED_DURING_A_FIT_ON_BLAS_THREADS = textwrap.dedent("""
    import json, os, signal, subprocess, threading, time, warnings
    import numpy as np
    import fastbp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2048, 512)).astype(np.float32)
    y = rng.integers(0, 10, 2048)

    def fit(model):     # every step's products on 2 BLAS threads (FASTBP_SPLIT=blas)
        fastbp.Trainer("cce", epochs=8, batch_size=256, n_threads=2, seed=0).fit(model, X, y)

    def new_model():
        return fastbp.MLP([512, 1024, 1024, 10], ["relu", "relu", "softmax"], seed=0)

    def predicting():   # products on 2 BLAS threads that keep the GIL (FASTBP_GIL=hold)
        other = new_model()
        while not done.is_set():
            other.predict(X[:200], n_threads=2)

    alone = new_model()
    fit(alone)
    model, done = new_model(), threading.Event()
    thread = threading.Thread(target=lambda: (fit(model), done.set()), daemon=True)
    thread.start()
    threading.Thread(target=predicting, daemon=True).start()
    time.sleep(0.1)
    during, failed = 0, []
    for _ in range(2):  # forks without Python's fork hooks (fork() itself, in C)
        running = not done.is_set()
        status = subprocess.run(["true"], group=os.getgid()).returncode
        during += running
        if status:
            failed.append(status)
    for _ in range(4):
        running = not done.is_set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:
            signal.alarm(30)             # a hang ends the child, not the test run
            # a multi-threaded product in the child, on the BLAS the fit's ran on
            out = new_model().predict(X, n_threads=2)
            os._exit(0 if np.isfinite(out).all() else 1)
        during += running
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(status)
        time.sleep(0.05)
    thread.join(60)
    print(json.dumps({"during": during, "failed": failed, "fit hung": thread.is_alive(),
                      "same": bool(np.array_equal(model._params, alone._params))}))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_another_threads_fit_runs_on_blas_threads_hangs_neither_process():
    """OpenBLAS's fork handler stops its thread pool even while another thread's product
    runs on it: that product then hung the parent's fit for good, and the child hung in its
    first multi-threaded product (this script ran into its timeout). A fork now waits
    for the products that may run on several BLAS threads (csrc/fork_guard.h): every
    child ends, and the fit ends with the bits of the same fit without forks. Also with a
    predict on BLAS threads that keeps the GIL beside it (a wait in Python's before-fork
    hook deadlocked with it), and for a fork() made without Python's fork hooks
    (subprocess with group=)."""
    env = dict(os.environ, FASTBP_SPLIT="blas", FASTBP_KERNELS="blas", FASTBP_GIL="hold")
    result = subprocess.run([sys.executable, "-c", FORKED_DURING_A_FIT_ON_BLAS_THREADS],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome.pop("during") >= 1, outcome       # forks made while the fit ran
    assert outcome == {"failed": [], "fit hung": False, "same": True}


VALIDATION_BESIDE_A_MEASURING_FIT = textwrap.dedent("""
    import faulthandler, os, sys, threading, time
    import numpy as np
    import fastbp
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 784)).astype(np.float32)
    y = rng.integers(0, 10, 4000)
    def on_blas_threads():      # batch 9 < 2 x 5 rows: its steps' products on 5 BLAS threads
        model = fastbp.MLP([784, 256, 10], ["relu", "softmax"], seed=0)
        fastbp.Trainer("cce", epochs=3, batch_size=9, seed=0, n_threads=5).fit(
            model, X[:3000], y[:3000], validation_data=(X[3000:3300], y[3000:3300]))
    def measuring():            # a default fit of another network measures its choices
        model = fastbp.MLP([300, 100, 10], ["tanh", "softmax"], seed=0)
        fastbp.Trainer("cce", epochs=1, batch_size=32, seed=0).fit(model, X[:2000, :300],
                                                                  y[:2000])
    threads = [threading.Thread(target=on_blas_threads), threading.Thread(target=measuring)]
    threads[0].start(); time.sleep(0.05); threads[1].start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)
    print("both done")
""")


def test_a_fits_validation_beside_another_threads_measurement_does_not_deadlock(tmp_path):
    """One thread fits on BLAS threads with validation data; another starts a default fit
    of a new network, which measures its threads and product kernels. The measurement held
    the product kernels' lock while it waited for the first fit's pass to end, and that
    pass's validation asked for its product kernels under that lock: both waited for ever.
    Inside a pass a choice is now taken as kept (or BLAS), never measured or waited for."""
    env = dict(os.environ, FASTBP_CACHE_DIR=str(tmp_path))
    env.pop("FASTBP_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", VALIDATION_BESIDE_A_MEASURING_FIT],
                            env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0 and result.stdout.split() == ["both", "done"], \
        (result.stdout, result.stderr[-3000:])


@pytest.mark.parametrize("name", _threads.THREAD_LIMIT_VARIABLES)
def test_a_thread_variable_of_non_ascii_digits_is_no_limit(name, monkeypatch):
    """OMP_NUM_THREADS="²" (a digit to str.isdigit, not to int()) ended every default fit
    in "invalid literal for int()"; it is unreadable, so no limit, as "abc" is."""
    # (a process that started Dask's workers reads the values it had at import instead,
    # and has the other variables set to 1)
    for other in (_threads.DASK_PARENT_VARIABLE,) + _threads.THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(other, raising=False)
    for value in ("²", "٣", "abc", "2,1"):
        monkeypatch.setenv(name, value)
        limit = _threads._environment_limit()
        assert limit == (2 if value == "2,1" else None), (value, limit)
    monkeypatch.setenv(name, "²")
    model = fastbp.MLP([5, 8, 2], ["relu", "softmax"], seed=0)
    X = np.random.default_rng(0).random((64, 5)).astype(np.float32)
    fastbp.Trainer("cce", epochs=1, seed=0).fit(model, X, (X[:, 0] > 0.5).astype(int))


def test_fastbp_threads_of_non_ascii_digits_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(_threads.THREADS_VARIABLE, "²")
    with pytest.raises(ValueError, match=f"{_threads.THREADS_VARIABLE}='²': it must be a whole"):
        _threads.pinned_threads()


def test_a_plan_made_inside_another_pass_is_not_kept(tmp_path, monkeypatch):
    """Inside a pass (a fit's validation, a callback's predict) the product kernels not yet
    measured run on BLAS for that call; the plan made so was kept with the model, and its
    later calls outside any pass never took the measured kernels. Not kept now: made
    again outside, where its choices are measured."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    model = fastbp.MLP([20, 64, 64, 1], ["relu", "relu", "identity"], seed=0)
    X = np.random.default_rng(0).normal(size=(100, 20)).astype(np.float32)
    with _threads.blas_threads(1):
        assert _threads.inside_pass()
        inside = model.predict(X)
    assert model._kept_plans == {} and model._kept_pass_plans == {}
    # (outside, the products take what their measurement chose: the own kernels round
    # otherwise than BLAS, which ran them inside; which wins depends on the machine's load)
    np.testing.assert_allclose(model.predict(X), inside, rtol=1e-5, atol=1e-6)
    assert model._kept_plans or model._kept_pass_plans


def test_openblas_functions_are_found_by_their_affixed_names_or_not_at_all():
    """threadpoolctl before 3.2 gives no `dynlib` (its handle is private): every fit
    failed with AttributeError there. A library without it has no direct setter (None:
    threadpoolctl's own is used); one with it is searched under the affixes builds add."""
    import types

    assert _threads._openblas_function(types.SimpleNamespace(), "openblas_set_num_threads",
                                       None) is None
    library = ctypes.CDLL(None)          # the process's own symbols: no OpenBLAS names
    assert _threads._openblas_function(types.SimpleNamespace(dynlib=library),
                                       "openblas_set_num_threads", None) is None
    found = _threads._openblas_function(
        types.SimpleNamespace(dynlib=types.SimpleNamespace(
            scipy_openblas_get_num_threads64_=ctypes.CDLL(None).getpid)),
        "openblas_get_num_threads", ctypes.c_int)
    assert found is not None and found() == os.getpid()


def test_cgroup_memory_limit_v2_v1_and_none(tmp_path):
    """A container's memory limit, the smallest over the groups (v2 memory.max, v1
    memory.limit_in_bytes, whose "no limit" is its largest page count)."""
    membership = tmp_path / "cgroup"
    write(membership, "0::/outer/inner\n")
    root = tmp_path / "fs"
    write(root / "outer" / "inner" / "memory.max", "2147483648\n")
    assert _threads.cgroup_memory_limit(str(root), str(membership)) == 2**31
    write(root / "outer" / "memory.max", "1073741824\n")
    assert _threads.cgroup_memory_limit(str(root), str(membership)) == 2**30
    write(root / "outer" / "memory.max", "max\n")
    write(root / "outer" / "inner" / "memory.max", "max\n")
    assert _threads.cgroup_memory_limit(str(root), str(membership)) is None
    v1 = tmp_path / "v1"
    write(v1 / "cgroup", "4:memory:/job\n1:cpu:/\n")
    write(v1 / "fs" / "memory" / "job" / "memory.limit_in_bytes", "536870912\n")
    assert _threads.cgroup_memory_limit(str(v1 / "fs"), str(v1 / "cgroup")) == 2**29
    write(v1 / "fs" / "memory" / "job" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert _threads.cgroup_memory_limit(str(v1 / "fs"), str(v1 / "cgroup")) is None
    assert _threads.cgroup_cpu_limit(str(v1 / "fs"), str(v1 / "cgroup")) is None


def test_an_array_past_the_cgroups_memory_is_refused_before_it_is_made(monkeypatch):
    """In a container whose memory limit is below the machine's, an array past the limit
    was allocated and the kernel's OOM killer ended the process: refused by name now, the
    model unchanged."""
    from fastbp import model as model_module
    monkeypatch.setattr(model_module, "_cgroup_bytes", 64 << 20)
    with pytest.raises(ValueError, match=r"the parameters would need 76\.5 MiB, more than "
                                         r"the 64\.0 MiB of memory this process's cgroup"):
        fastbp.MLP([5000, 4000, 10], ["relu", "identity"])
    model = fastbp.MLP([20, 8, 2], ["relu", "softmax"], seed=0)    # within the limit
    before = model.parameter_vector().copy()
    X = np.random.default_rng(0).random((10, 20))
    fastbp.Trainer("cce", epochs=1, seed=0).fit(model, X, np.arange(10) % 2)
    assert not np.array_equal(before, model.parameter_vector())
