"""fastbp._cache: processes that share a cache folder make the same measured choice.

Two processes that measured the same shape at once used to keep their own answers (each
read an empty file, measured, and wrote): the two workers of a Dask fit then ran different
kernels, and a worker restarted after a crash took the file's answer, so the "bit-identical
after a worker is killed" test failed in CI by rounding."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from fastbp import _cache

HANG_SECONDS = 120

# A process that waits until every process named in argv[3:] is ready (so they all reach
# the cache at once), then settles key argv[2] with a measurement that answers argv[1]
# after a pause, and prints the choice it got.
CHILD = textwrap.dedent("""
    import json, os, sys, time
    from fastbp import _cache
    answer, key, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    folder = os.environ["FASTBP_CACHE_DIR"]
    open(os.path.join(folder, "ready-" + answer), "w").close()
    while not all(os.path.exists(os.path.join(folder, "ready-" + name)) for name in names):
        time.sleep(0.001)
    def measure():
        time.sleep(float(os.environ.get("MEASURE_SECONDS", "0.3")))
        return answer
    print(json.dumps(_cache.settled("choices.json", key, lambda kept: isinstance(kept, str),
                                    measure)))
""")


def start(folder, answer, key, names, **env):
    return subprocess.Popen([sys.executable, "-c", CHILD, answer, key, *names],
                            env={**os.environ, "FASTBP_CACHE_DIR": str(folder), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return json.loads(out)


def kept(path):
    """The choices a cache file holds."""
    return json.loads(path.read_text())["choices"]


def test_processes_measuring_one_key_at_once_all_take_the_first_answer(tmp_path):
    names = ["a", "b", "c"]
    processes = [start(tmp_path, name, "shape", names) for name in names]
    answers = [finish(process) for process in processes]
    assert len(set(answers)) == 1, answers
    assert kept(tmp_path / "choices.json") == {"shape": answers[0]}


def test_processes_measuring_different_keys_at_once_lose_none(tmp_path):
    names = ["a", "b", "c", "d"]
    processes = [start(tmp_path, name, "key-" + name, names, MEASURE_SECONDS="0")
                 for name in names]
    assert [finish(process) for process in processes] == names
    assert kept(tmp_path / "choices.json") == {"key-" + name: name for name in names}


def test_a_process_killed_while_measuring_leaves_no_stale_lock(tmp_path):
    stuck = start(tmp_path, "stuck", "shape", ["stuck"], MEASURE_SECONDS="600")
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready-stuck").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)                     # it is inside the measurement, holding the lock
    stuck.send_signal(signal.SIGKILL)
    stuck.communicate()
    assert finish(start(tmp_path, "next", "shape", ["next"], MEASURE_SECONDS="0")) == "next"
    assert kept(tmp_path / "choices.json") == {"shape": "next"}


def test_a_kept_choice_is_not_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    calls = []
    valid = lambda choice: choice in (1, 2)     # noqa: E731
    assert _cache.settled("c.json", "k", valid, lambda: calls.append(1) or 2) == 2
    assert _cache.settled("c.json", "k", valid, lambda: calls.append(1) or 1) == 2
    assert calls == [1]
    # a value the caller no longer accepts (another version's candidates) is measured again
    assert _cache.settled("c.json", "k", lambda choice: choice == 1, lambda: 1) == 1
    assert kept(tmp_path / "c.json") == {"k": 1}


def test_another_versions_cache_is_left_as_it_is(tmp_path, monkeypatch):
    """A cache file of a newer version of the format (a newer fastbp sharing the folder)
    is not ours to read, and not ours to replace either: the choice is measured and used,
    and the file keeps the other version's choices (it was rewritten with this version's
    one key, so the newer fastbp measured everything again). A damaged file, or an older
    version's, is replaced."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    newer = json.dumps({"version": 2, "choices": {"theirs": [4, 2]}})
    (tmp_path / "c.json").write_text(newer)
    calls = []
    assert _cache.settled("c.json", "k", lambda choice: choice == 2,
                          lambda: calls.append(1) or 2) == 2
    assert calls == [1] and (tmp_path / "c.json").read_text() == newer
    for damaged in ("{", json.dumps({"version": "2", "choices": {}}), json.dumps([1]),
                    json.dumps({"version": 0, "choices": {"older": 1}})):   # (or older)
        (tmp_path / "c.json").write_text(damaged)
        assert _cache.settled("c.json", "k", lambda choice: choice == 2, lambda: 2) == 2
        assert kept(tmp_path / "c.json") == {"k": 2}


def test_a_failed_measurement_keeps_nothing_and_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))

    def fails():
        raise MemoryError

    with pytest.raises(MemoryError):
        _cache.settled("c.json", "k", lambda choice: choice is not None, fails)
    assert not (tmp_path / "c.json").exists()
    monkeypatch.setattr(_cache, "LOCK_WAIT_SECONDS", 0.0)   # a held lock would show
    assert _cache.settled("c.json", "k", lambda choice: choice is not None, lambda: 3) == 3
    assert kept(tmp_path / "c.json") == {"k": 3}


@contextlib.contextmanager
def another_process_holding_the_lock(folder):
    """A process inside a measurement of ten minutes, holding the cache's lock; killed at
    the end of the block."""
    holder = start(folder, "holder", "shape", ["holder"], MEASURE_SECONDS="600")
    try:
        deadline = time.monotonic() + 60
        while not (folder / "ready-holder").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)                 # it is inside the measurement, holding the lock
        yield
    finally:
        holder.kill()
        holder.communicate()


def test_a_lock_held_too_long_or_a_cache_that_cannot_be_written_is_no_error(
        tmp_path, monkeypatch):
    with another_process_holding_the_lock(tmp_path):
        monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(_cache, "LOCK_WAIT_SECONDS", 0.2)
        started = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"choices.json.lock was held for 0.2 s"):
            assert _cache.settled("choices.json", "shape", lambda c: isinstance(c, str),
                                  lambda: "mine") == "mine"
        assert time.monotonic() - started < 30
    # a "folder" that is a file: nothing can be locked or written, the measurement is used
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(not_a_folder))
    assert _cache.settled("c.json", "k", lambda choice: choice == 5, lambda: 5) == 5
    assert not_a_folder.read_text() == ""


# A default fit of a shape not measured yet, in a process whose cache folder another process
# has locked: says when it is about to fit, then how the fit ended.
INTERRUPTED_FIT = textwrap.dedent("""
    import time
    import numpy as np
    import fastbp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 40)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    model = fastbp.MLP([40, 96, 2], ["relu", "softmax"], seed=0)
    print("fitting", flush=True)
    history = fastbp.Trainer("cce", epochs=3, seed=0).fit(model, X, y)
    print("interrupted", history.interrupted, len(history.loss), flush=True)
""")


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals and locks")
def test_ctrl_c_while_a_fit_waits_for_another_processs_lock_is_answered_at_once(tmp_path):
    """The fit's SIGINT handler only sets a flag for the compiled loop, so a fit waiting for
    the cache's lock (held by a stopped, hung or slowly measuring process) went on waiting
    for LOCK_WAIT_SECONDS (60 s) and only then returned interrupted: the wait gives up on
    the Ctrl-C, and the fit returns interrupted after its measurement, without a warning."""
    import fcntl

    locks = []
    for name in ("threads.json.lock", "products.json.lock"):
        handle = open(tmp_path / name, "w")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        locks.append(handle)
    try:
        child = subprocess.Popen([sys.executable, "-W", "error::RuntimeWarning", "-c",
                                  INTERRUPTED_FIT],
                                 env={**os.environ, "FASTBP_CACHE_DIR": str(tmp_path)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "fitting", child.communicate()[1]
        time.sleep(1.0)                     # inside the fit, waiting for the lock
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=HANG_SECONDS)
        answered = time.monotonic() - sent
    finally:
        for handle in locks:
            handle.close()
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "True", "0"], (out, err)
    assert answered < 30, f"Ctrl-C answered after {answered:.1f} s"


def test_an_unreadable_or_odd_cache_is_measured_again_never_an_error(tmp_path, monkeypatch):
    """Whatever a cache file holds (nesting deeper than Python's stack, entries of the
    wrong types inside valid JSON), a fit measures again instead of failing: the thread
    choice's check takes only a list of whole numbers among the candidates."""
    import numpy as np

    import fastbp
    from fastbp import _threads

    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    model = fastbp.MLP([16, 64, 2], ["relu", "identity"], seed=0)
    X, Y = np.zeros((256, 16), np.float32), np.zeros((256, 2), np.float32)
    key = _threads._fit_key(model.layer_sizes, 64, model.dtype, "=2")
    documents = ["[" * 100_000, json.dumps({"version": 1, "choices": {key: [[1], 1, 0]}}),
                 json.dumps({"version": 1, "choices": {key: [{"a": 1}, 1, 0]}}),
                 json.dumps({"version": 1, "choices": {key: [True, 1, 0]}})]
    for document in documents:
        for name in ("threads.json", "products.json"):
            (tmp_path / name).write_text(document)
        _threads._measured.clear()
        fastbp.Trainer("mse", epochs=1, batch_size=64, seed=0, n_threads=2).fit(model, X, Y)
        model.predict(np.zeros((3000, 16), np.float32))
        kept = _cache.read_cache("threads.json")[key]
        assert isinstance(kept, list) and all(type(v) is int for v in kept)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="FIFOs and /dev/zero are POSIX's")
@pytest.mark.parametrize("odd", ["a FIFO", "a link to /dev/zero"])
@pytest.mark.parametrize("where", ["the cache file", "its lock"])
def test_a_cache_or_lock_path_that_is_not_a_regular_file_is_passed_over(tmp_path, odd, where):
    """A FIFO at the cache file's path blocked the first default fit for good (the open
    waits for a writer); a link to /dev/zero passed the size check (0) and its read never
    ended, taking all memory. Now neither is read or locked: the choice is measured and
    the fit goes on. In a child process, so that a hang fails the test, not the suite."""
    path = tmp_path / ("c.json" if where == "the cache file" else "c.json.lock")
    if odd == "a FIFO":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    code = textwrap.dedent(f"""
        from fastbp import _cache
        print(_cache.settled("c.json", "k", lambda choice: choice == 3, lambda: 3))
        print(_cache.settled("c.json", "k", lambda choice: choice == 3, lambda: 3))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "FASTBP_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "3"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_a_cache_or_lock_file_that_is_a_link_is_never_written_through(tmp_path, monkeypatch):
    """A link at the cache file's path made a fit replace the file it named with the cache
    (in a cache folder others can write into: any file of the user's), and a link to
    nothing made its target; the lock file was made through a link too. The choice is
    still measured and used; the links and what they name are left as they are."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "precious.txt").write_text("the user's data")
    os.symlink(tmp_path / "precious.txt", tmp_path / "cache" / "c.json")
    os.symlink(tmp_path / "nothing.json", tmp_path / "cache" / "d.json")
    os.symlink(tmp_path / "nothing.lock", tmp_path / "cache" / "c.json.lock")
    for name in ("c.json", "d.json"):
        assert _cache.settled(name, "k", lambda choice: choice == 3, lambda: 3) == 3
    assert (tmp_path / "precious.txt").read_text() == "the user's data"
    assert not (tmp_path / "nothing.json").exists() and not (tmp_path / "nothing.lock").exists()
    assert (tmp_path / "cache" / "c.json").is_symlink()
    # a folder named through a link is a folder like any other
    os.symlink(tmp_path / "real", tmp_path / "linked")
    (tmp_path / "real").mkdir()
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "linked"))
    assert _cache.settled("c.json", "k", lambda choice: choice == 3, lambda: 3) == 3
    assert kept(tmp_path / "real" / "c.json") == {"k": 3}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_child_forked_while_a_lock_is_held_does_not_keep_it(tmp_path):
    """A flock belongs to the open file, which a forked child shares: a child forked while
    a thread measured kept the lock after its parent was killed, and the next process
    waited LOCK_WAIT_SECONDS (61.8 s) and then measured unlocked."""
    code = textwrap.dedent("""
        import os, sys, time
        from fastbp import _cache
        with _cache._locked("c.json"):
            if os.fork() == 0:          # a long-lived child (a pool's worker)
                time.sleep(60)
                os._exit(0)
            print("locked", flush=True)
            time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "FASTBP_CACHE_DIR": str(tmp_path)},
                              start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "locked"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        with open(tmp_path / "c.json.lock", "r+b") as handle:
            assert _cache._lock(handle, 10.0)   # (the child lives on: it was 60 s)
            _cache._unlock(handle)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)   # (the child, in the parent's session)


def test_temporaries_of_writers_killed_mid_write_are_swept(tmp_path, monkeypatch):
    """Writers killed while they wrote left their temporaries for good (810 KB from 4 of
    20 kills of a full cache); the next write removes those older than a writer takes."""
    from fastbp._files import temporary_name
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    old, fresh, other = (temporary_name(str(tmp_path / name))
                         for name in ("c.json", "c.json", "d.json"))
    for path in (old, fresh, other):
        with open(path, "w") as file:
            file.write("{}")
    past = time.time() - 2 * _cache._TEMPORARY_AGE_SECONDS
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert _cache.settled("c.json", "k", lambda choice: choice == 3, lambda: 3) == 3
    assert not os.path.exists(old)
    assert os.path.exists(fresh) and os.path.exists(other)   # (a live writer's; d.json's)


def test_a_cache_of_more_than_a_mebibyte_is_read(tmp_path, monkeypatch):
    """A cache file past 1 MiB is read whole (a file of another fastbp's, or of deep
    networks' long keys), and a new choice is added to it; past _LARGEST_FILE nothing is
    read."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    choices = {f"key {i:06d} " + "x" * 400: i for i in range(3_000)}
    (tmp_path / "big.json").write_text(json.dumps({"version": 1, "choices": choices},
                                                  indent=1))
    assert (tmp_path / "big.json").stat().st_size > 1 << 20
    assert _cache.settled("big.json", "key 000007 " + "x" * 400, lambda kept: kept == 7,
                          lambda: pytest.fail("measured a kept choice")) == 7
    assert _cache.settled("big.json", "new", lambda kept: kept == "n", lambda: "n") == "n"
    assert len(_cache.read_cache("big.json")) == 3_001
    with open(tmp_path / "big.json", "ab") as file:     # past the largest file read: unread
        file.truncate(_cache._LARGEST_FILE + 1)
    monkeypatch.setattr(_cache, "_too_large", set())
    with pytest.warns(RuntimeWarning, match="big.json is larger than 64 MiB"):
        assert _cache.read_cache("big.json") == {}


def test_a_cache_file_keeps_the_newest_choices_this_machine_and_build_made_first(
        tmp_path, monkeypatch):
    """A service meeting ever new shapes grew its cache files without end, each new choice
    rewriting all of them. Past MOST_CHOICES the oldest go, those of another CPU or build
    (an upgrade's predecessor) first; the order kept is the order written, and a choice
    measured again (the kept one found invalid) counts as the newest."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache, "MOST_CHOICES", 6)
    mine = f"/{_cache.cpu_model()}/{_cache.build_identity()}"
    for name in ["mine 1", "other 1", "mine 2", "other 2", "mine 3", "other 3"]:
        key = name + (mine if name.startswith("mine") else "/another CPU/0123456789abcdef")
        _cache.settled("c.json", key, lambda kept: False, lambda: name)
    assert list(_cache.read_cache("c.json").values()) == [
        "mine 1", "other 1", "mine 2", "other 2", "mine 3", "other 3"]
    _cache.settled("c.json", "mine 4" + mine, lambda kept: False, lambda: "mine 4")
    _cache.settled("c.json", "mine 1" + mine, lambda kept: kept == "again",
                   lambda: "again")                             # measured again: the newest
    assert list(_cache.read_cache("c.json").values()) == [
        "mine 2", "other 2", "mine 3", "other 3", "mine 4", "again"]
    for n in range(5, 9):
        _cache.settled("c.json", f"mine {n}" + mine, lambda kept: False, lambda: f"mine {n}")
    assert list(_cache.read_cache("c.json").values()) == [
        "mine 4", "again", "mine 5", "mine 6", "mine 7", "mine 8"]
    # a key that is not this build's is kept when it is the newest
    _cache.settled("c.json", "other 4", lambda kept: False, lambda: "other 4")
    assert list(_cache.read_cache("c.json").values())[-2:] == ["mine 8", "other 4"]
    assert len(_cache.read_cache("c.json")) == 6


def test_a_lock_found_stuck_is_not_waited_for_again_by_each_key(tmp_path, monkeypatch):
    """Once a process has waited LOCK_WAIT_SECONDS for the cache's lock, its next keys (a
    fit's choice, then each pass's) try it without waiting: each would otherwise wait the
    whole time again. Once the lock is had, it is waited for again as usual."""
    with another_process_holding_the_lock(tmp_path):
        monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(_cache, "LOCK_WAIT_SECONDS", 1.0)
        waits = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for key in ("first", "second", "third"):
                started = time.monotonic()
                assert _cache.settled("choices.json", key, lambda c: isinstance(c, str),
                                      lambda: key) == key
                waits.append(time.monotonic() - started)
        assert waits[0] >= 1.0 and max(waits[1:]) < 0.5, waits
        # said once (a minute's silent wait looked like a hang)
        assert [str(w.message) for w in caught if "was held for" in str(w.message)] \
            and len(caught) == 1
    lock = os.path.join(str(tmp_path), "choices.json.lock")
    assert lock in _cache._stuck
    assert _cache.settled("choices.json", "fourth", lambda c: isinstance(c, str),
                          lambda: "fourth") == "fourth"
    assert lock not in _cache._stuck and kept(tmp_path / "choices.json")["fourth"] == "fourth"


def test_the_cpu_in_a_key_tells_apart_cpus_of_one_generic_name(monkeypatch):
    """A virtual machine's generic model name stands for CPUs of several generations: a
    cache folder shared by two of them (a home folder on a cluster) kept one's choices for
    both. The flags and the cache size are in the key too."""
    import io

    def cpu(flags, cache="2048 KB"):
        text = (f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                f"cache size\t: {cache}\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                f"model name\t: Another\n")
        monkeypatch.setattr(_cache, "open", lambda *args, **kwargs: io.StringIO(text),
                            raising=False)
        monkeypatch.setattr(_cache, "_cpu_name", None)
        return _cache.cpu_model()

    first = cpu("fpu sse2 avx2 fma")
    assert first.startswith("Intel(R) Xeon(R) Processor [") and "/" not in first
    assert cpu("fpu sse2 avx2 fma") == first
    assert cpu("fpu sse2 avx2 fma avx512f") != first
    assert cpu("fpu sse2 avx2 fma", cache="4096 KB") != first


def test_a_cache_file_too_large_to_read_is_left_as_it_is(tmp_path, monkeypatch):
    """A file over the size read_cache reads was taken as empty and replaced by one entry:
    every choice every process had kept was lost. It is left as it is (delete it to start
    afresh); the choice is measured and used."""
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache, "_LARGEST_FILE", 100)
    monkeypatch.setattr(_cache, "_too_large", set())
    large = json.dumps({"version": 1, "choices": {f"key {i}": i for i in range(50)}})
    (tmp_path / "c.json").write_text(large)
    # said once (every process measures again: the file is neither read nor added to)
    with pytest.warns(RuntimeWarning, match="c.json is larger than 0 MiB: it is neither "
                                            "read nor added to"):
        assert _cache.settled("c.json", "k", lambda choice: choice == 2, lambda: 2) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cache.settled("c.json", "j", lambda choice: choice == 3, lambda: 3) == 3
    assert (tmp_path / "c.json").read_text() == large


def test_the_cache_folder_setting(monkeypatch, tmp_path):
    """FASTBP_CACHE_DIR with ~ is under the home folder (it was a folder named "~" under
    the working folder); empty is unset (XDG_CACHE_HOME, then ~/.cache)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FASTBP_CACHE_DIR", "~/measured")
    assert _cache.cache_folder() == str(tmp_path / "measured")
    monkeypatch.setenv("FASTBP_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_folder() == str(tmp_path / "xdg" / "fastbp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cache.cache_folder() == str(tmp_path / ".cache" / "fastbp")
    # blank is unset, as every FASTBP_ variable ("\t/x\n" was a folder of that name)
    monkeypatch.setenv("FASTBP_CACHE_DIR", " \t")
    assert _cache.cache_folder() == str(tmp_path / ".cache" / "fastbp")
    monkeypatch.setenv("FASTBP_CACHE_DIR", f"\t{tmp_path / 'x'}\n")
    assert _cache.cache_folder() == str(tmp_path / "x")
    # no home: none (HOME "" was /.cache/fastbp; no HOME and no account entry, a folder
    # named "~" in the working folder), and the choices are kept in memory only
    monkeypatch.delenv("FASTBP_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    for home in ("", "/"):
        monkeypatch.setenv("HOME", home)
        assert _cache.cache_folder() is None
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)   # (no account entry)
    assert _cache.cache_folder() is None
    assert _cache.settled("c.json", "k", lambda choice: choice == 3, lambda: 3) == 3
    assert _cache.read_cache("c.json") == {} and os.listdir(tmp_path) == []
