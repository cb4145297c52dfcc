"""Measured defaults kept on disk ("wisdom", as FFTW calls it): the thread choices of
fastbp._threads (threads.json) and the kernel-or-BLAS choices of fastbp._products
(products.json), in cache_folder(), each key ending with the CPU's model and the build's
identity (cpu_model, build_identity).

Every process that shares the folder must make the same choice for the same key, or the
same seed gives different results in two processes (the two workers of a Dask fit, a worker
restarted after a crash, two jobs of a grid search). So `settled` measures under an
exclusive lock on the cache file (fcntl.flock; msvcrt.locking on Windows), after reading
the file again: the first process to measure a key writes it, and any process that waited
meanwhile takes that answer instead of measuring its own. Measuring one at a time also
keeps two processes from timing their candidates against each other. The lock goes with
the process that holds it (a killed process leaves no stale lock). A cache that cannot be
written or locked is no error: the choice is measured and used, and only then may two
processes differ.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import warnings

_VERSION = 1
# A cache file keeps at most this many choices, in the order they were written. Each new
# choice rewrites the whole file under its lock (8 ms for each 1,000 choices it holds, on a
# 2-core Xeon), and a process meeting ever new shapes (a search over layer sizes, a server
# of many models: some 10 choices a network) grew it without end. Past it, the choices
# written longest ago go first, those another CPU or build measured (keys that do not end
# with this one's: an upgrade leaves all of its predecessor's behind) before this one's;
# a choice dropped is measured again when it is next needed.
MOST_CHOICES = 4096
# A cache file is read whole up to this size (a choice takes about 150 bytes, more for a
# deep network's key), a larger one not at all.
_LARGEST_FILE = 64 << 20
# A measurement takes well under a second; a lock held longer than this is taken to be
# stuck (a hung file system) and the choice is measured without it.
LOCK_WAIT_SECONDS = 60.0
_LOCK_POLL_SECONDS = 0.005
_stuck = set()      # lock files this process waited LOCK_WAIT_SECONDS for: not waited again
_too_large = set()  # cache files found past _LARGEST_FILE: said once each
# Each cache file as this process last parsed it: path -> (the file's identity, its choices,
# kept as it is). Each key a process first meets is looked up in the file, and each look-up
# parsed the whole file: a restarted worker whose 20 models' 173 choices were all kept took
# 1.0 s to make their first calls at 10,000 choices a file, 17-23 s at 100,000.
_parsed = {}


class KeptChoices(dict):
    """The choices a process keeps in memory (_threads._measured, _products._measured,
    ...): at most `limit`, the oldest set dropped first. A process meeting ever new shapes
    kept about 10 choices, 5 KB, for every network it ever ran; one dropped is looked up
    again in its cache file, or measured."""

    def __init__(self, limit=MOST_CHOICES):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        if len(self) >= self.limit and key not in self:
            try:
                self.pop(next(iter(self)), None)
            except (StopIteration, RuntimeError):   # (changed by another thread meanwhile)
                pass
        super().__setitem__(key, value)


def cache_folder() -> str | None:
    """Where measured defaults are kept: $FASTBP_CACHE_DIR (stripped, ~ expanded; relative:
    under the working folder, as any path; blank: unset), else $XDG_CACHE_HOME/fastbp, else
    ~/.cache/fastbp. A relative XDG_CACHE_HOME is ignored, as the XDG specification says
    (it would name a folder under whatever the working folder is). None where there is no
    home to put it in (HOME unset with no account entry: "~" was a folder named "~" in the
    working folder; HOME empty: "/", so /.cache): the choices are then kept in memory."""
    folder = os.environ.get("FASTBP_CACHE_DIR", "").strip()
    if folder:
        return os.path.expanduser(folder)
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or home == os.path.dirname(home):   # ("~", or a root)
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "fastbp")


def _cache_path(file_name) -> str | None:
    """`file_name` in cache_folder(), or None where there is none."""
    folder = cache_folder()
    return None if folder is None else os.path.join(folder, file_name)


_cpu_name = None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string, with a
    digest of its feature flags and cache size where /proc/cpuinfo lists them: part of
    every key, so a cache folder shared by different machines keeps each one's choices (a
    virtual machine's generic name, "Intel(R) Xeon(R) Processor", stands for CPUs of
    several generations, which their flags tell apart)."""
    global _cpu_name
    if _cpu_name is None:
        found = {}
        try:
            with open("/proc/cpuinfo") as file:
                for line in file:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key in ("model name", "flags", "cache size"):
                        found.setdefault(key, value.strip())
                    elif not line.strip() and found:
                        break                           # the first processor's lines
        except OSError:
            pass
        name = found.get("model name", "")
        if not name:
            import platform
            name = platform.processor() or platform.machine()
        if "flags" in found:
            import hashlib
            features = f"{found['flags']}/{found.get('cache size', '')}".encode()
            name += f" [{hashlib.sha256(features).hexdigest()[:8]}]"
        _cpu_name = name.replace("/", " ")
    return _cpu_name


_build_name = None


def build_identity() -> str:
    """A digest of the compiled core (fastbp._core's file) and of the NumPy and SciPy whose
    BLAS its kernels are timed against: part of every key beside cpu_model(), so that a
    choice measured with other kernels or another BLAS (an upgrade, a rebuild) is measured
    again instead of kept (a rebuilt kernel for the 10 outputs of W3's last layer ran in
    316 ns against the 483 ns that had been measured and kept with its BLAS choice)."""
    global _build_name
    if _build_name is None:
        import hashlib

        import numpy
        import scipy

        from fastbp import _core
        digest = hashlib.sha256()
        try:
            with open(_core.__file__, "rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        except OSError:   # no file to read (a frozen application): the version at least
            import fastbp
            digest.update(fastbp.__version__.encode())
        digest.update(f"/numpy {numpy.__version__}/scipy {scipy.__version__}".encode())
        _build_name = digest.hexdigest()[:16]
    return _build_name


def opened_regular(path, flags):
    """The file at `path` opened with os.open's `flags`, as a binary file object, or None
    where it is not a regular file: a FIFO would block the open or the read for good, a
    link to /dev/zero would never end a read. (Opened without blocking, then checked.)"""
    descriptor = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0),
                         0o666)
    try:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            return os.fdopen(descriptor, "r+b" if flags & os.O_RDWR else "rb")
    except BaseException:
        os.close(descriptor)
        raise
    os.close(descriptor)
    return None


def read_cache(file_name) -> dict:
    """The choices kept in a cache file, or {} when it is missing, unreadable or not ours
    (not to be changed: the parse is kept for the next look-up)."""
    return _read_document(file_name)[0]


def _read_document(file_name) -> tuple:
    """(choices, kept as it is): read_cache's choices, and whether the file is to be left
    as it is: a cache of a newer version of this format (a newer fastbp sharing the
    folder), or one larger than _LARGEST_FILE (not read; delete it to start afresh)."""
    path = _cache_path(file_name)
    if path is None:
        return {}, False
    try:
        file = opened_regular(path, os.O_RDONLY)
        if file is None:
            return {}, False
        with file:
            # (the size first, then at most one byte past it, should the file grow
            # meanwhile: read(n) takes n bytes of memory whatever the file holds)
            found = os.fstat(file.fileno())
            size = found.st_size
            if size > _LARGEST_FILE:    # (left as it is: replacing it lost every choice)
                return _too_large_file(file_name)
            # a file replaced (the cache writes a new file and renames it) or changed
            # since this process parsed it is parsed again
            identity = (found.st_dev, found.st_ino, size, found.st_mtime_ns,
                        found.st_ctime_ns)
            parsed = _parsed.get(path)
            if parsed is not None and parsed[0] == identity:
                return parsed[1], parsed[2]
            content = file.read(size + 1)
        if len(content) > _LARGEST_FILE:
            return _too_large_file(file_name)
        document = json.loads(content)
    except (OSError, ValueError, RecursionError):   # (RecursionError: nested past Python's
        return {}, False                            # stack, "[[[[..." from anything else)
    if not isinstance(document, dict):
        return {}, False
    if document.get("version") != _VERSION:
        version = document.get("version")
        answer = {}, type(version) is int and version > _VERSION \
            and isinstance(document.get("choices"), dict)
    else:
        choices = document.get("choices")
        answer = (choices, False) if isinstance(choices, dict) else ({}, False)
    _parsed[path] = (identity,) + answer
    return answer


def _too_large_file(file_name) -> tuple:
    """_read_document's answer for a file past _LARGEST_FILE, said once per file: nothing
    in it is read, and nothing measured is kept (every process measures again)."""
    path = _cache_path(file_name)
    if path not in _too_large:
        _too_large.add(path)
        warnings.warn(f"fastbp's cache file {path} is larger than {_LARGEST_FILE >> 20} MiB: "
                      f"it is neither read nor added to, so every process measures its "
                      f"choices again; delete it to start afresh", RuntimeWarning,
                      stacklevel=2)
    return {}, True


def settled(file_name, key, is_valid, measure):
    """The choice kept for `key` in `file_name` if `is_valid(choice)`, else `measure()`'s,
    which is then kept (any JSON value). See the module's docstring for why under a lock.
    An exception from `measure` is passed on and nothing is kept."""
    with _locked(file_name):
        choices, foreign = _read_document(file_name)
        found = choices.get(key)
        if is_valid(found):
            return found
        found = measure()
        if not foreign:     # (a newer version's choices, or a file too large, left)
            choices = dict(choices)     # (the parse kept is the file's as read)
            choices.pop(key, None)      # (a choice found invalid: the new one is the newest)
            choices[key] = found
            _write(file_name, _pruned(choices, key))
        return found


def _pruned(choices: dict, newest) -> dict:
    """`choices` (oldest first) cut to MOST_CHOICES, keeping `newest`: the oldest of
    another CPU's or build's go first, then the oldest of this one's."""
    excess = len(choices) - MOST_CHOICES
    if excess <= 0:
        return choices
    mine = f"/{cpu_model()}/{build_identity()}"
    dropped = set()
    for only_foreign in (True, False):
        for key in choices:
            if len(dropped) == excess:
                break
            if key != newest and not (only_foreign and mine in key):
                dropped.add(key)
    return {key: choice for key, choice in choices.items() if key not in dropped}


def _write(file_name, choices) -> None:
    from fastbp._files import write_file
    # (in the order written, oldest first: what _pruned drops first)
    content = json.dumps({"version": _VERSION, "choices": choices}, indent=1).encode()
    path = _cache_path(file_name)
    if path is None:
        return
    try:
        # The cache only replaces a regular file, or makes one: write_file writes into a
        # FIFO or a device as it is, and through a link into the file it names (a link
        # in a shared cache folder made a fit overwrite any file the user could write)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:          # none yet: written
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            return
        _sweep_temporaries(path)
        write_file(path, content)
    except (OSError, ValueError):
        pass


# A writer's temporary older than this was left by a writer that died (one takes
# milliseconds): the next write of the same file removes it.
_TEMPORARY_AGE_SECONDS = 600.0


def _sweep_temporaries(path) -> None:
    """Remove what writers killed mid-write left beside `path` (their temporaries: the
    files _files.temporary_name makes for it), those older than _TEMPORARY_AGE_SECONDS.
    (Killed writers left them for good: 810 KB from 4 of 20 kills of a full cache.)"""
    from fastbp._files import TEMPORARY_SUFFIX, temporary_name
    folder = os.path.dirname(path)
    prefix = os.path.basename(temporary_name(path)).rsplit(".", 2)[0] + "."
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(TEMPORARY_SUFFIX):
                try:
                    if entry.is_file(follow_symlinks=False) and \
                            now - entry.stat(follow_symlinks=False).st_mtime > \
                            _TEMPORARY_AGE_SECONDS:
                        os.remove(entry.path)
                except OSError:
                    pass


@contextlib.contextmanager
def _locked(file_name):
    """Holds an exclusive lock on `file_name`.lock in the cache folder (created if need
    be) for the block; the block runs unlocked when the lock cannot be had."""
    path = _cache_path(file_name + ".lock")
    try:
        if path is None:
            raise FileNotFoundError
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # (not through a link: it would make the file the link names)
        handle = opened_regular(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        handle = None
    if handle is None:                  # (or not a regular file): the block runs unlocked
        yield
        return
    with handle:
        # a lock once found stuck is tried, not waited for: each key a process measures
        # (a fit's, then each pass's) would wait the whole time again
        if _lock(handle, 0.0 if path in _stuck else LOCK_WAIT_SECONDS):
            _stuck.discard(path)
            _held.add(handle)
            try:
                yield
            finally:
                _held.discard(handle)
                _unlock(handle)
        elif _interrupted():    # (the fit returns at its first batch: no wait, no warning)
            yield
        else:
            said = path in _stuck
            _stuck.add(path)            # (before the warning, which may be an error)
            if not said:                # once: a silent minute's wait looked like a hang
                warnings.warn(f"fastbp: {path} was held for {LOCK_WAIT_SECONDS:g} s by "
                              f"another process (stopped or hung?); measuring without it, "
                              f"and not waiting for it again until it is had",
                              RuntimeWarning, stacklevel=2)
            yield


def _lock(handle, patience: float) -> bool:
    """Whether an exclusive lock on `handle` was had within `patience` seconds (given up
    at once on a Ctrl-C for the fit that waits: _interrupted)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            if os.name == "nt":
                import msvcrt
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as error:
            # held by another process (Windows says so with any OSError), else the file
            # system has no locks
            if os.name != "nt" and not isinstance(error, (BlockingIOError, PermissionError)):
                return False
        if time.monotonic() > deadline or _interrupted():
            return False
        time.sleep(_LOCK_POLL_SECONDS)


def _interrupted() -> bool:
    """Whether a Ctrl-C has come for the fit on this thread. Its handler only sets the flag
    the compiled loop polls, so a fit waiting here for another process's lock answered
    Ctrl-C only after LOCK_WAIT_SECONDS."""
    from fastbp import _core
    return _core.interrupt_requested()


# The lock files this process holds a lock on (_locked). A flock belongs to the open file,
# which a forked child shares: a child forked while a thread measured kept the lock after
# that process was killed, and every other process waited LOCK_WAIT_SECONDS for it.
_held = set()


def _let_go_in_child() -> None:
    """In a forked child: its copies of the held lock files' descriptors point elsewhere
    (/dev/null; the numbers stay taken, as the objects holding them may close them), so
    that the lock lives only as long as the process that took it."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for handle in list(_held):
            os.dup2(null, handle.fileno())
    finally:
        os.close(null)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


def _unlock(handle) -> None:
    try:
        if os.name == "nt":
            import msvcrt
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
