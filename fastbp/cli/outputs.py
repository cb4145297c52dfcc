"""Writing a command's output files: every path is checked before any work (a folder that
exists, a file type fastbp writes, a name that fits), an output may not be an input or
another output, and the files go through fastbp._files (atomic, all or none); CSV text."""
from __future__ import annotations

import csv
import os
import stat
import sys

from fastbp import _files
from fastbp.cli.errors import UsageError, one_line


def check_writable(path: str, option: str):
    """What `path` names now (see fastbp._files.check_target); a UsageError for a path
    that cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: the folder {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder; give a file name")
    try:
        current = os.stat(path)
    except OSError:
        current = None
    for number, name in ((1, "standard output"), (2, "standard error")):
        if current is not None and stat.S_ISREG(current.st_mode) \
                and _same_file(current, number):
            # (-o /dev/stdout > FILE: the new file replaced FILE, and what the command wrote
            # to its standard output, its progress or an appended log's earlier lines,
            # went into the file it unlinked; fastbp._files refuses /dev/stdout there too,
            # this names the stream, and the file's own name as well)
            raise UsageError(f"{option} {path} is the file {name} goes to: a regular file "
                             f"is written as a new file that replaces it, and what goes to "
                             f"{name} would be lost; give that file's own name as {option} "
                             f"and no redirection")
    try:
        return _files.check_output(path)
    except ValueError as error:
        raise UsageError(f"{option} {error}") from None
    except OSError as error:
        raise UsageError(f"{option} {path}: {one_line(error)}") from None


def is_stdout(found) -> bool:
    """Whether an output (check_writable's result) is the FIFO or device standard output
    writes into: what a command says there would be mixed into the output's bytes."""
    # (a regular file is replaced by a new file: check_writable refuses stdout's own)
    return _files.is_stream(found) and _same_file(found, 1)


def _same_file(found: os.stat_result, descriptor: int) -> bool:
    try:
        return os.path.samestat(found, os.fstat(descriptor))
    except OSError:          # (closed)
        return False


def check_distinct(inputs, outputs):
    """Refuse an output that is one of the command's inputs or another of its outputs: the
    same file, through links too, not only the same name. A character device (/dev/null,
    /dev/stdout) may be named twice: writing it destroys nothing.

    inputs and outputs: (what, path) pairs; a path of None is left out."""
    seen = []
    for role, (what, path) in [("input", item) for item in inputs] + \
            [("output", item) for item in outputs]:
        if path is None or _is_character_device(path):
            continue
        key = _files.file_key(path)
        for other_what, other_path, other_key in seen:
            if key == other_key and role == "output":
                raise UsageError(f"{what} {path} is the same file as {other_what} "
                                 f"({other_path}): this command would overwrite it; choose "
                                 f"another path")
        seen.append((what, path, key))


def _is_character_device(path) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def silence_stdout() -> None:
    """Send what is still to be written to standard output to /dev/null: its reader went
    away (`fastbp predict ... | head`), and the flush at exit would fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def write_csv_bytes(stream, header, values):
    """write_csv into a binary stream, as UTF-8."""
    import io

    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    write_csv(text, header, values)
    text.flush()
    text.detach()


def write_csv(stream, header, values):
    import numpy as np

    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if array.dtype == np.float32:
            for row in array:
                writer.writerow([str(v) for v in row])
        else:
            writer.writerows(array.tolist())
    else:
        writer.writerows(row.tolist() if hasattr(row, "tolist") else row for row in array)


def short_list(values, limit=10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
