"""Test-wide settings and helpers."""
import faulthandler
import os
import sys

import pytest

# Tests that start a Python subprocess (`python -c`, `python -m fastbp`) run it from the
# repository root; without this, Python would put that folder first on sys.path and import
# the source tree's fastbp, which has no compiled extension unless it was built in place,
# instead of the installed package the suite is testing (Python >= 3.11).
os.environ.setdefault("PYTHONSAFEPATH", "1")



@pytest.fixture(autouse=True)
def _no_hangs(request):
    """In a test module that sets HANG_SECONDS, a test still running after that long ends
    the run (stacks dumped, exit 1) instead of stalling it. Where pytest's own
    faulthandler_timeout is set (tools/sanitize.sh sets it) that dumps the stacks to the
    real stderr instead, which the test's captured output would hide."""
    seconds = getattr(request.module, "HANG_SECONDS", None)
    if seconds is None or float(request.config.getini("faulthandler_timeout") or 0) > 0:
        yield
        return
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()
