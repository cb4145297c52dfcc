"""Online learning's per-call cost: milliseconds a Trainer.partial_fit call, in a loop.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/partial_fit.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/partial_fit.py \
        --networks 784-512-512-10 --optimizers adam --rows 64 256

One thread (n_threads=1 and the BLAS limit), float32, softmax + categorical
cross-entropy on random data (a network named with one output unit trains two: softmax
needs two classes), batch 32 (or the call's rows if fewer). Each call trains
one epoch on the same `rows` rows. Two columns, calls alternating in one process: the
trainer keeping the last call's buffers for the next (the default: its workspace and the
copies that undo an epoch, docs/performance.md "One-epoch fits keep their memory"), and
new buffers at each call (`trainer._buffers = {}` before it, as every call was before).
Reported: the median milliseconds of each over --pairs pairs, and the median of the
pairs' ratios new / kept with its quartiles, and the CPU time over the wall time of all the
calls (marked * under 0.9, ! over 1.03, as bench/compare.py marks one thread). The
machine's load moves both columns, so compare within one run.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import _at_least, openblas_warning, oversubscribed, undersubscribed  # noqa: E402

NETWORKS = {
    "20-64-64-1": [20, 64, 64, 1],
    "784-128-10": [784, 128, 10],
    "784-512-512-10": [784, 512, 512, 10],
}


def measure(sizes, optimizer, rows, pairs):
    """(median ms kept, median ms new, [new / kept of each pair], CPU / wall of the calls)."""
    import fastbp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
    n_classes = max(sizes[-1], 2)
    y = rng.integers(0, n_classes, rows)
    model = fastbp.MLP(sizes[:-1] + [n_classes], ["relu"] * (len(sizes) - 2) + ["softmax"],
                       dtype="float32", seed=0)
    trainer = fastbp.Trainer("cce", optimizer=optimizer, learning_rate=1e-3, batch_size=32,
                             seed=0, n_threads=1)
    for _ in range(5):                       # thread and kernel choices, first buffers
        trainer.partial_fit(model, X, y)
    times = {"kept": [], "new": []}
    cpu = wall = 0.0
    for i in range(pairs):
        for mode in ("kept", "new") if i % 2 else ("new", "kept"):
            if mode == "new":
                trainer._buffers = {}
            cpu_start, start = time.process_time(), time.perf_counter()
            trainer.partial_fit(model, X, y)
            times[mode].append(time.perf_counter() - start)
            cpu, wall = cpu + time.process_time() - cpu_start, wall + times[mode][-1]
    ratios = [new / kept for new, kept in zip(times["new"], times["kept"])]
    return (statistics.median(times["kept"]) * 1e3, statistics.median(times["new"]) * 1e3,
            ratios, cpu / wall)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam"],
                        choices=["sgd", "adam", "rmsprop", "adagrad"])
    parser.add_argument("--rows", type=_at_least(1), nargs="+", default=[1, 64, 256])
    parser.add_argument("--pairs", type=_at_least(1), default=30)
    args = parser.parse_args(argv)
    if openblas_warning():
        print("# " + openblas_warning())
    from threadpoolctl import threadpool_limits
    print("# partial_fit, one thread, float32, batch 32: median ms a call; new / kept: "
          "median of the pairs' ratios (quartiles); CPU / wall of the calls")
    print(f"{'network':>15} {'optimizer':>9} {'rows':>5} | {'kept':>9} | {'new':>9} | "
          f"new / kept       | CPU / wall")
    with threadpool_limits(1):
        for network in args.networks:
            for optimizer in args.optimizers:
                for rows in args.rows:
                    kept, new, ratios, share = measure(NETWORKS[network], optimizer, rows,
                                                args.pairs)
                    low, high = np.percentile(ratios, [25, 75])
                    one = {"threads": 1, "cpu_over_wall": share, "cpu_over_wall_max": share}
                    marks = ("*" if undersubscribed(one) else "") + \
                        ("!" if oversubscribed(one) else "")
                    print(f"{network:>15} {optimizer:>9} {rows:5d} | {kept:9.3f} | "
                          f"{new:9.3f} | {statistics.median(ratios):.2f} "
                          f"({low:.2f}-{high:.2f}) | {share:.2f}{marks}", flush=True)


if __name__ == "__main__":
    main()
