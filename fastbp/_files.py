"""Writing files: the one way fastbp writes a file (model.save, ONNX export, ModelCheckpoint,
and every output of the command line: the model's sidecar, predictions, the loss plot).

`write_files([(path, content), ...])` writes each path completely or not at all:

- A regular file (or a path that does not exist yet) is written atomically: the content goes
  to a temporary file in the same folder (a name of at most 40 bytes, so any valid target
  name fits), which is flushed and fsync'd, then renamed over the target. A symbolic link is
  followed: its target is replaced. A file that is replaced keeps its permission bits, and
  its owner and group where the operating system lets this process set them; a new file
  gets 0o666 less the umask, as open() gives.
- Several paths in one call are written all or none: every temporary is written first; the
  renames come last, and if one fails those already done are undone (from a hard link to the
  previous file, or a copy where the file system has no hard links).
- A FIFO or a character device that exists (`/dev/null`, `/dev/stdout`, a named pipe) is
  written into directly, as `cat > path` would (a FIFO waits for its reader): it is never
  replaced by a regular file.
  Streams are written before the regular files are renamed into place.
- Anything else that exists and is not a regular file (a folder, a block device, a socket)
  is refused with a ValueError naming it, before anything is written.

`content` is bytes, or a function that writes to the binary stream it is given (so a large
CSV is not held in memory twice).
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat

TEMPORARY_SUFFIX = ".tmp"
_TOKEN_BYTES = 8                        # 16 hex digits: a name no other writer guesses
_DEFAULT_NAME_MAX = 255
_TEMPORARY_STEM_BYTES = 16              # of the target's name, to tell whose temporary it is


def check_target(path) -> os.stat_result | None:
    """The stat of what `path` names now (following links), None if nothing; a ValueError
    for something fastbp does not write (a folder, a block device, a socket), an OSError for a
    name the file system cannot hold or a folder that does not exist. `path`: a str, bytes
    or os.PathLike."""
    path = os.fsdecode(path)
    if not path:                   # (realpath would name the working folder)
        raise ValueError("cannot write to an empty path; give a file name")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise ValueError(f"cannot write {path}: it is a folder's name (it ends in "
                         f"{path[-1]}); give a file name")
    directory, name = os.path.split(os.path.realpath(path))
    if not name:                   # the root folder
        raise ValueError(f"cannot write {path}: it is a folder, not a regular file")
    given = os.path.dirname(path) or os.curdir
    if not os.path.isdir(given):   # as open() finds it ("missing/../x": realpath drops "..")
        raise FileNotFoundError(errno.ENOENT, f"No such file or directory (the folder "
                                f"{given} does not exist)", path)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        found = None
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        found = None
    if found is not None:
        kind = _kind(found.st_mode)
        if kind is not None:
            raise ValueError(f"cannot write {path}: it is {kind}, not a regular file")
        if not stat.S_ISREG(found.st_mode):
            return found                  # a FIFO or a character device: written into
        if _names_a_descriptor(path):
            # (save("/dev/stdout") > LOG: the new file replaced LOG, an appended log's
            # earlier lines and all the process printed after went with the old one)
            raise ValueError(f"cannot write {path}: it is an open descriptor of the regular "
                             f"file {os.path.realpath(path)}, which a write replaces by a "
                             f"new file (what else goes to it would be lost); give that "
                             f"file's own name")
    if len(os.fsencode(name)) > _name_max(directory):
        raise OSError(errno.ENAMETOOLONG, f"File name too long (more than "
                      f"{_name_max(directory)} bytes)", path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (the folder "
                                f"{directory} does not exist)", path)
    return found


def _names_a_descriptor(path: str) -> bool:
    """Whether `path` names a process's open descriptor (/dev/stdout, /dev/stderr,
    /dev/fd/N, /proc/self/fd/N, /proc/PID/fd/N) rather than a file by its name."""
    absolute = os.path.abspath(path)
    folder = os.path.dirname(absolute)
    return absolute in ("/dev/stdout", "/dev/stderr", "/dev/stdin") or folder == "/dev/fd" \
        or (folder.startswith("/proc/") and os.path.basename(folder) == "fd")


def is_stream(found: os.stat_result | None) -> bool:
    """Whether a check_target() result is written into directly (a FIFO, a character device)."""
    return found is not None and (stat.S_ISFIFO(found.st_mode) or stat.S_ISCHR(found.st_mode))


def file_key(path):
    """What identifies the file `path` names, through links: (device, inode) of an existing
    file, the resolved path of one that does not exist yet."""
    try:
        found = os.stat(path)
    except OSError:
        return ("new", os.path.realpath(path))
    return (found.st_dev, found.st_ino)


def write_file(path, content) -> None:
    """Write `content` (bytes, or a function that writes to a binary stream) to exactly
    `path`, atomically for a regular file (see the module's docstring)."""
    write_files([(path, content)])


def write_files(items) -> None:
    """Write every (path, content) of `items`, all or none (see the module's docstring)."""
    items = [(os.fsdecode(path), content) for path, content in items]
    targets = [(path, check_target(path), content) for path, content in items]
    keys = [file_key(path) for path, found, _ in targets
            if found is None or not stat.S_ISCHR(found.st_mode)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the paths {', '.join(path for path, _ in items)} name the same "
                         f"file twice; each file can be written once")
    streams = [(path, content) for path, found, content in targets if is_stream(found)]
    regular = [(os.path.realpath(path), found, content)
               for path, found, content in targets if not is_stream(found)]
    for path, content in streams:
        _write_stream(path, content)
    staged = []
    try:
        for path, found, content in regular:
            staged.append((path, _write_temporary(path, found, content)))
        _commit(staged)
    finally:
        from fastbp import _core
        _core.deferred(_remove_all, [temporary for _, temporary in staged])


def _remove_all(paths) -> None:
    for path in paths:
        _remove(path)


def _kind(mode: int) -> str | None:
    """What a file that fastbp refuses to write is, or None for one it writes."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return None
    return "a special file"


def _name_max(directory: str) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def temporary_name(path: str) -> str:
    """A hidden name beside `path`: ".NAME.<16 hex>.tmp" with NAME cut to its first 16 bytes,
    so it is at most 38 bytes long whatever the length of the target's name."""
    directory, name = os.path.split(path)
    token = secrets.token_hex(_TOKEN_BYTES)
    stem = os.fsdecode(os.fsencode(name)[:_TEMPORARY_STEM_BYTES])
    return os.path.join(directory, f".{stem}.{token}{TEMPORARY_SUFFIX}")


def _write_content(stream, content) -> None:
    if callable(content):
        content(stream)
    else:
        stream.write(content)


def _write_stream(path: str, content) -> None:
    """Into a FIFO or a character device, as it is (no temporary, no rename)."""
    handle = os.open(path, os.O_WRONLY)
    with os.fdopen(handle, "wb") as stream:
        _write_content(stream, content)


def _write_temporary(path: str, found, content) -> str:
    """A synced temporary beside `path` holding `content`, with the mode and owner of the
    file it will replace (so a private file's bytes are never readable by others)."""
    temporary = temporary_name(path)
    # 0o666 less the umask, like any file open() creates; the replaced file's mode if any
    mode = stat.S_IMODE(found.st_mode) & 0o777 if found is not None else 0o666
    from fastbp import _core
    made = []   # the temporary's descriptor and stream, once made (a Ctrl-C between
    try:        # the two left both behind: _core.deferred)
        _core.deferred(_opened_temporary, made, temporary, path, mode)
        handle, opened = made[0]
        with opened as stream:
            if found is not None:
                _keep_owner_and_mode(handle, found)
            _write_content(stream, content)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        if made:    # (a second Ctrl-C between the close and the removal left it for good)
            _core.deferred(_discard, made[0][1], temporary)
        raise
    return temporary


def _discard(stream, temporary: str) -> None:
    stream.close()
    _remove(temporary)


def _opened_temporary(made: list, temporary: str, path: str, mode: int) -> None:
    """The new file `temporary`, its (descriptor, stream) appended to `made`
    (_write_temporary)."""
    handle = _create(temporary, path, mode)
    try:
        made.append((handle, os.fdopen(handle, "wb")))
    except BaseException:
        os.close(handle)
        _remove(temporary)
        raise


def _create(temporary: str, path: str, mode: int) -> int:
    """A new file `temporary` beside `path`, open for writing; an OSError that names `path`
    (not the temporary, a name the caller never gave)."""
    try:
        return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as error:
        raise type(error)(error.errno, f"cannot write {path}: no new file can be made in "
                          f"its folder ({error.strerror})") from None


def check_output(path) -> os.stat_result | None:
    """check_target(path), and for a file to be made or replaced (not a FIFO or a device,
    written into as it is) check_room: what a caller checks before work whose end writes
    `path`."""
    found = check_target(path)
    if not is_stream(found):
        check_room(path)
    return found


def check_room(path) -> None:
    """Make and remove a temporary beside `path`: an OSError (naming `path`) now, before
    any work, where the write would fail at the end (a folder without write permission,
    a read-only file system)."""
    path = os.fsdecode(path)
    # (beside the file a link names: the write replaces that file, not the link)
    temporary = temporary_name(os.path.realpath(path))
    os.close(_create(temporary, path, 0o600))
    _remove(temporary)


def _keep_owner_and_mode(handle: int, found: os.stat_result) -> None:
    """The replaced file's owner and group where permitted (root; a group the user is in),
    then its mode (after chown, which clears the set-id bits)."""
    mine = os.fstat(handle)
    if (mine.st_uid, mine.st_gid) != (found.st_uid, found.st_gid):
        for uid, gid in ((found.st_uid, found.st_gid), (-1, found.st_gid)):
            try:
                os.fchown(handle, uid, gid)
                break
            except (OSError, AttributeError):
                continue
    os.fchmod(handle, stat.S_IMODE(found.st_mode))


def _commit(staged) -> None:
    """Rename each temporary over its target; on a failure, undo the renames done."""
    if len(staged) == 1:                  # one rename is atomic by itself
        path, temporary = staged[0]
        os.replace(temporary, path)
        return
    done = []                             # (path, backup of the previous file or None)
    try:
        for path, temporary in staged:
            backup = _backup(path)
            done.append((path, backup))
            os.replace(temporary, path)
    except BaseException:
        for path, backup in reversed(done):
            try:
                if backup is None:
                    os.unlink(path)
                else:
                    os.replace(backup, path)
            except OSError:
                pass
        raise
    finally:
        for _, backup in done:
            if backup is not None:
                _remove(backup)


def _backup(path: str) -> str | None:
    """A second name for the file at `path` (None if there is none), to restore it from."""
    if not os.path.lexists(path):
        return None
    backup = temporary_name(path)
    try:
        os.link(path, backup)
    except OSError:                       # no hard links here: a copy, mode included
        shutil.copy2(path, backup)
    return backup


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
