"""Honest benchmarks (issue 11 item 5): every bench/compare.py peer runs at its row's thread
count, the table flags a run whose CPU time exceeds threads x wall time, and --threads 1,2
gives fastbp's scaling column."""
import argparse
import contextlib
import io
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import compare
    import peers
    import workloads
    return compare, peers, workloads


def result(library, workload, threads, median, cpu_over_wall):
    return {"library": library, "workload": workload, "threads": threads, "status": "ok",
            "median": median, "min": median, "max": median, "unit": "samples/s",
            "cpu_over_wall": cpu_over_wall, "cpu_over_wall_max": cpu_over_wall,
            "versions": {}, "blas": []}


def report(compare, results, threads_list):
    args = argparse.Namespace(duration=1.0, repeats=1, load_before=None, verbose=False)
    out = io.StringIO()
    compare.print_report(results, ["fastbp", "numpy"], ["W1"], threads_list, args, file=out)
    return out.getvalue()


def test_a_run_using_more_cpu_than_its_threads_is_flagged(bench):
    compare = bench[0]
    results = [result("fastbp", "W1", 1, 100e3, 1.0), result("numpy", "W1", 1, 50e3, 1.9)]
    text = report(compare, results, [1])
    assert "50k ±0%!" in text and "100k ±0% " in text
    assert "more threads than its row says" in text
    assert "W1  numpy            threads=1: 1.90, 1.90  OVER" in text


def test_honest_runs_are_not_flagged(bench):
    compare = bench[0]
    text = report(compare, [result("fastbp", "W1", 2, 100e3, 1.99),
                            result("numpy", "W1", 2, 50e3, 1.5)], [2])
    assert "!" not in text and "OVER" not in text


def test_a_fixed_thread_row_fastbp_ran_on_fewer_threads_is_marked(bench):
    """fastbp runs a step too short to split on one thread even at n_threads=2: the row
    says 2, so the cell and a note say it ran on 1 (only the JSON had said so)."""
    compare = bench[0]
    fewer = dict(result("fastbp", "W1", 2, 100e3, 1.0), thread_choice=[1, 1, 0])
    split = dict(result("fastbp", "W1", 2, 180e3, 2.0), thread_choice=[2, 1, 0])
    text = report(compare, [fewer, result("numpy", "W1", 2, 60e3, 1.0)], [2])
    assert "100k ±0%<" in text and "< W1 fastbp at 2 threads ran on 1" in text
    text = report(compare, [split, result("numpy", "W1", 2, 60e3, 1.0)], [2])
    assert "180k ±0% " in text and "ran on" not in text
    one = dict(result("fastbp", "W1", 1, 100e3, 1.0), thread_choice=[1, 1, 0])
    text = report(compare, [one, result("numpy", "W1", 1, 60e3, 1.0)], [1])
    assert "100k ±0% " in text and "ran on" not in text


def test_the_scaling_column_is_fastbp_at_t_threads_over_fastbp_at_one(bench):
    compare = bench[0]
    results = [result("fastbp", "W1", 1, 100e3, 1.0), result("numpy", "W1", 1, 50e3, 1.0),
               result("fastbp", "W1", 2, 180e3, 2.0), result("numpy", "W1", 2, 60e3, 1.0)]
    text = report(compare, results, [1, 2])
    assert "fastbp 2/1" in text and "1.80x" in text


def test_fastbp_predict_runs_at_its_rows_thread_count(bench, monkeypatch):
    _, peers, workloads = bench
    import fastbp
    asked = []
    real = fastbp.MLP.predict

    def recording(self, X, n_threads=None):
        asked.append(n_threads)
        return real(self, X, n_threads=n_threads)

    monkeypatch.setattr(fastbp.MLP, "predict", recording)
    wl = workloads.get("P1")
    X = np.zeros((8, wl.layer_sizes[0]), dtype=wl.dtype)
    for threads, expected in ((1, 1), (2, 2), (0, None)):
        peers.FastbpPredict(wl, X, threads=threads).predict()
        assert asked[-1] == expected
