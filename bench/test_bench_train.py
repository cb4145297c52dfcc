"""pytest-benchmark: fit of one epoch on W1..W5 (bench/README.md), fastbp and the NumPy loop.

    pytest bench/test_bench_train.py --benchmark-only

A round is one `Trainer(epochs=1).fit(model, X, y)` call, per-fit overhead (validation, the
workspace) included; compare.py measures the steady state of long fits instead.  Benchmarks
are grouped by workload so fastbp and the NumPy loop sit side by side.

Row counts: W4's full 8,192 rows take ~5.6 s per epoch at 1,470
samples/s, so the suite trains W4 on its first 2,048 rows (~1.4 s a round).  W2 keeps its
60,000 rows (~1 s a round at 64,000 samples/s; a few seconds for the NumPy loop).
All the other workloads run at their full size.
"""

import pytest

import peers
import workloads
from workloads import LEARNING_RATE, LOSS

SAMPLES = {"W4": 2_048}  # reduced row counts, see the module docstring
# (rounds, iterations per round): enough rounds for a stable median, each round >= ~1 ms
ROUNDS = {"W1": (10, 1), "W2": (5, 1), "W3": (50, 20), "W4": (3, 1), "W5": (10, 1)}


def _workload(name):
    wl = workloads.WORKLOADS[name]
    return wl.with_samples(SAMPLES[name]) if name in SAMPLES else wl


@pytest.mark.parametrize("library", ["fastbp", "numpy"])
@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_fit_one_epoch(benchmark, workload_data, record_throughput, bench_threads, name,
                       library):
    wl = _workload(name)
    X, y = workload_data(wl)
    if library == "fastbp":
        fastbp = pytest.importorskip("fastbp")
        model = fastbp.MLP(list(wl.layer_sizes), wl.activations, dtype=wl.dtype, seed=0)
        trainer = fastbp.Trainer(LOSS, learning_rate=LEARNING_RATE, epochs=1,
                                 batch_size=wl.batch_size, shuffle=True, seed=0,
                                 n_threads=bench_threads or None)

        def fit_one_epoch():
            trainer.fit(model, X, y)
    else:
        runner = peers.NumpyTrain(wl, X, y, threads=bench_threads, seed=0)

        def fit_one_epoch():
            runner.run(1)

    benchmark.group = f"train {name} ({wl.n_samples} rows, batch {wl.batch_size}, {wl.dtype})"
    benchmark.extra_info.update(workload=name, library=library, n_samples=wl.n_samples,
                                layer_sizes=list(wl.layer_sizes), batch_size=wl.batch_size,
                                dtype=wl.dtype, threads=bench_threads)
    rounds, iterations = ROUNDS[name]
    benchmark.pedantic(fit_one_epoch, rounds=rounds, iterations=iterations, warmup_rounds=1)
    record_throughput(benchmark, wl.n_samples)
