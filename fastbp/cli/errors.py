"""How the command line ends: exit statuses, the user's-mistake error, one-line messages."""
from __future__ import annotations

import os

EXIT_USAGE = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A mistake in what the user asked for: reported as one line, exit status 2."""


def one_line(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        # (str: the exception itself is always true, and most MemoryErrors have no text)
        return f"not enough memory ({str(error) or 'the data or model is too large'})"
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None:
            text += f": {os.fspath(error.filename)}"
    elif isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
