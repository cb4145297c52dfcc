"""Test-wide settings."""
import os

# Tests that start a Python subprocess (`python -c`, `python -m fastbp`) run it from the
# repository root; without this, Python would put that folder first on sys.path and import
# the source tree's fastbp, which has no compiled extension unless it was built in place,
# instead of the installed package the suite is testing (Python >= 3.11).
os.environ.setdefault("PYTHONSAFEPATH", "1")
