"""Online learning's per-call cost: milliseconds a Trainer.partial_fit call, in a loop.

    python bench/partial_fit.py
    python bench/partial_fit.py --networks 784-512-512-10 --optimizers adam --rows 64 256

One thread (n_threads=1 and the BLAS limit), float32, softmax + categorical
cross-entropy on random data (a network named with one output unit trains two: softmax
needs two classes), batch 32 (or the call's rows if fewer). Each call trains
one epoch on the same `rows` rows. Two columns, calls alternating in one process: the
trainer keeping the last call's buffers for the next (the default: its workspace and the
copies that undo an epoch, docs/performance.md "One-epoch fits keep their memory"), and
new buffers at each call (`trainer._buffers = {}` before it, as every call was before).
Reported: the median milliseconds of each over --pairs pairs, and the median of the
pairs' ratios new / kept with its quartiles. The machine's load moves both columns, so
compare within one run.
"""
import argparse
import statistics
import time

import numpy as np

NETWORKS = {
    "20-64-64-1": [20, 64, 64, 1],
    "784-128-10": [784, 128, 10],
    "784-512-512-10": [784, 512, 512, 10],
}


def measure(sizes, optimizer, rows, pairs):
    """(median ms kept, median ms new, [new / kept of each pair])."""
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
    for i in range(pairs):
        for mode in ("kept", "new") if i % 2 else ("new", "kept"):
            if mode == "new":
                trainer._buffers = {}
            start = time.perf_counter()
            trainer.partial_fit(model, X, y)
            times[mode].append(time.perf_counter() - start)
    ratios = [new / kept for new, kept in zip(times["new"], times["kept"])]
    return (statistics.median(times["kept"]) * 1e3, statistics.median(times["new"]) * 1e3,
            ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits
    print("# partial_fit, one thread, float32, batch 32: median ms a call; new / kept: "
          "median of the pairs' ratios (quartiles)")
    print(f"{'network':>15} {'optimizer':>9} {'rows':>5} | {'kept':>9} | {'new':>9} | "
          f"new / kept")
    with threadpool_limits(1):
        for network in args.networks:
            for optimizer in args.optimizers:
                for rows in args.rows:
                    kept, new, ratios = measure(NETWORKS[network], optimizer, rows,
                                                args.pairs)
                    low, high = np.percentile(ratios, [25, 75])
                    print(f"{network:>15} {optimizer:>9} {rows:5d} | {kept:9.3f} | "
                          f"{new:9.3f} | {statistics.median(ratios):.2f} "
                          f"({low:.2f}-{high:.2f})", flush=True)


if __name__ == "__main__":
    main()
