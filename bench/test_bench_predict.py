"""pytest-benchmark: predict with the W1 network (784-128-10, ReLU hidden, identity output).

    pytest bench/test_bench_predict.py --benchmark-only

P1 of bench/README.md is 100,000 rows at once (goal: 1.5 times as fast as NumPy's
`relu(X @ W0 + b0) @ W1 + b1` chain); the 32-row case measures per-call overhead, what a
service predicting small requests pays.
"""

import pytest

import peers
import workloads

ROWS = {100_000: (10, 1), 32: (200, 50)}  # rows -> (rounds, iterations per round)


@pytest.mark.parametrize("library", ["fastbp", "numpy"])
@pytest.mark.parametrize("rows", list(ROWS))
def test_predict(benchmark, workload_data, record_throughput, bench_threads, rows, library):
    wl = workloads.PREDICT.with_samples(rows)
    X, _ = workload_data(wl)
    cls = peers.PREDICT[library]
    if library == "fastbp":
        pytest.importorskip("fastbp")
    runner = cls(wl, X, threads=bench_threads, seed=0)
    benchmark.group = f"predict W1 network, {rows} rows"
    benchmark.extra_info.update(library=library, rows=rows, threads=bench_threads)
    rounds, iterations = ROWS[rows]
    benchmark.pedantic(runner.predict, rounds=rounds, iterations=iterations, warmup_rounds=1)
    record_throughput(benchmark, rows, "rows/s")
