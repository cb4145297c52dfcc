"""pytest-benchmark suites of fastbp: `pytest bench/ --benchmark-only` (see bench/README.md).

They live under bench/, not tests/, so the normal test run (`pytest tests/`) never collects
them.  Options:

    --bench-threads N   BLAS threads for every benchmark (default 1; 0 = library default)

The throughput of every benchmark (samples/s or rows/s, from the median round) is printed at
the end of the run and stored in its extra_info (so also in --benchmark-json).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import workloads  # noqa: E402

_THROUGHPUT = []  # (benchmark name, figure, unit)


def pytest_addoption(parser):
    group = parser.getgroup("fastbp bench")
    group.addoption("--bench-threads", type=int, default=1,
                    help="BLAS threads for the fastbp benchmarks (0 = library default)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads", 1)
    if threads < 0:
        raise pytest.UsageError(f"--bench-threads must be >= 0; got {threads}")


@pytest.fixture(scope="session")
def bench_threads(request):
    return request.config.getoption("--bench-threads")


@pytest.fixture(autouse=True)
def _blas_threads(bench_threads):
    """Hold every BLAS pool of this process at --bench-threads during each benchmark.

    Per test, not per session: threadpoolctl limits only the libraries loaded when it is
    called, and scipy's own OpenBLAS (the one fastbp calls) loads with fastbp's import."""
    if not bench_threads:
        yield
        return
    from threadpoolctl import threadpool_limits
    for module in ("scipy.linalg.cython_blas", "fastbp"):  # load every BLAS first
        try:
            __import__(module)
        except ImportError:
            pass
    with threadpool_limits(limits=bench_threads):
        yield


_DATA = {}


@pytest.fixture(scope="session")
def workload_data():
    """make_data(workload) cached for the session: X, y of a Workload (any row count)."""
    def get(workload):
        key = (workload.name, workload.n_samples, workload.dtype)
        if key not in _DATA:
            _DATA[key] = workloads.make_data(workload, seed=0)
        return _DATA[key]
    return get


@pytest.fixture
def record_throughput(request):
    """Call with (benchmark, units per round, unit) after the benchmark ran."""
    def record(benchmark, units, unit="samples/s"):
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: the function ran once, untimed
            return
        median = stats.stats.median
        rate = units / median if median else float("nan")
        benchmark.extra_info[unit.replace("/", "_per_")] = rate
        _THROUGHPUT.append((request.node.name, rate, unit))
    return record


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if not _THROUGHPUT:
        return
    terminalreporter.section("fastbp throughput (from the median round)")
    width = max(len(name) for name, _, _ in _THROUGHPUT)
    for name, rate, unit in _THROUGHPUT:
        terminalreporter.write_line(f"{name.ljust(width)}  {rate:14,.0f} {unit}")
