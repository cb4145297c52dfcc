"""Test-wide settings and helpers."""
import faulthandler
import functools
import importlib.metadata
import os
import re
import sys

import pytest

# Tests that start a Python subprocess (`python -c`, `python -m fastbp`) run it from the
# repository root; without this, Python would put that folder first on sys.path and import
# the source tree's fastbp, which has no compiled extension unless it was built in place,
# instead of the installed package the suite is testing (Python >= 3.11).
os.environ.setdefault("PYTHONSAFEPATH", "1")

# The measured thread choices of the fits the suite makes (fastbp._threads.fit_threads) go
# to a folder of the run's own (subprocesses inherit it), never to the user's cache: they
# are timed on a machine busy with the tests, and would be kept for the user's fits.
# (An empty FASTBP_CACHE_DIR is unset for fastbp, _cache.cache_folder: the user's cache.)
if not os.environ.get("FASTBP_CACHE_DIR"):
    import atexit
    import shutil
    import tempfile
    os.environ["FASTBP_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastbp-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FASTBP_CACHE_DIR"], ignore_errors=True)


def _kernel_levels():
    from fastbp import _core
    return _core.kernel_levels()


@pytest.fixture(params=_kernel_levels())
def kernel_level(request):
    """Each instruction-set level this CPU runs (_core.kernel_levels: AVX-512, AVX2,
    baseline), forced for the element-wise kernels, the few-row kernels and the softmax
    blocks (as FASTBP_KERNEL_ISA does), restored afterwards."""
    from fastbp import _core
    before = _core.kernel_level(request.param)
    yield request.param
    _core.kernel_level(before)


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


# ---- under CI a missing declared test dependency fails instead of skipping

def _strict_dependencies() -> bool:
    """CI=true (or 1, yes): what the `test` extra declares must be there."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()    # PEP 503


@functools.lru_cache(maxsize=None)
def _declared_test_distributions(rootpath) -> frozenset:
    """The distributions of the `test` extra: from pyproject.toml in a source checkout,
    else from the installed fastbp's metadata."""
    requirements = None
    try:
        import tomllib
        with open(os.path.join(rootpath, "pyproject.toml"), "rb") as file:
            requirements = tomllib.load(file)["project"]["optional-dependencies"]["test"]
    except (ImportError, OSError, KeyError):
        try:
            requirements = [r for r in importlib.metadata.requires("fastbp") or ()
                            if re.search(r"""extra\s*==\s*["']test["']""", r)]
        except importlib.metadata.PackageNotFoundError:
            requirements = []
    return frozenset(_normalised(re.match(r"[A-Za-z0-9._-]+", r.strip()).group())
                     for r in requirements)


@functools.lru_cache(maxsize=None)
def _distributions_of(top_level_module: str) -> frozenset:
    """The distributions that may provide a module: the installed ones that do, and the
    module's own name (a distribution that is not installed is usually named so)."""
    installed = importlib.metadata.packages_distributions().get(top_level_module, [])
    return frozenset({_normalised(top_level_module)} | {_normalised(d) for d in installed})


def _declared_dependency_skipped(report, rootpath):
    """The declared distribution whose import failed in pytest.importorskip, if the report
    is such a skip; else None."""
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return None
    found = re.search(r"could not import '([\w.]+)'", str(report.longrepr[2]))
    if found is None:
        return None
    declared = _distributions_of(found.group(1).split(".")[0]) \
        & _declared_test_distributions(str(rootpath))
    return min(declared) if declared else None


def _fail_if_declared_dependency_skipped(report, rootpath) -> None:
    if not _strict_dependencies():
        return
    distribution = _declared_dependency_skipped(report, rootpath)
    if distribution is not None:
        report.outcome = "failed"
        report.longrepr = (f"{report.longrepr[2]}\n{distribution} is a declared test dependency "
                           f"(pyproject.toml's `test` extra): under CI its tests must run, "
                           f"not skip. Install it: pip install '.[test]'")


def pytest_sessionstart(session):
    """Under CI every declared test dependency is installed (a test that would skip for
    want of one fails below; this names them all at once, before anything runs)."""
    if not _strict_dependencies():
        return
    missing = []
    for distribution in sorted(_declared_test_distributions(str(session.config.rootpath))):
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution)
    if missing:
        raise pytest.UsageError(f"CI: the declared test dependencies {', '.join(missing)} are "
                                f"not installed (pip install '.[test]')")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_declared_dependency_skipped(outcome.get_result(), item.config.rootpath)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A test module that skips itself at import (a module-level importorskip)."""
    outcome = yield
    _fail_if_declared_dependency_skipped(outcome.get_result(), collector.config.rootpath)
