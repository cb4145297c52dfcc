"""S1, sparse input: fastbp's training throughput and peak memory on a CSR matrix.

Trains the S1 network (100000-256-20, ReLU, softmax + CCE, batch 64) on S1's data
(bench/workloads.py, make_sparse_data) with plain SGD (learning rate 0.05, the workload's
rule), SGD with momentum 0.9 and Adam (learning rate 0.001), one thread, and prints for
each: samples/s (the median of the timed epochs, after one untimed epoch), and the peak of
memory the fit allocates beyond the data and the model (tracemalloc: NumPy's allocations,
the workspace, the optimizer state, the epoch's backup), beside the sizes of the CSR data
and of the parameters. Run with the OpenBLAS variables unset, like every benchmark:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparse.py [--epochs 3]
"""
import argparse
import os
import statistics
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastbp  # noqa: E402
from fastbp import optimizers  # noqa: E402
from workloads import LOSS, S1, S1_LEARNING_RATE, make_sparse_data  # noqa: E402

RULES = {
    "sgd": lambda: optimizers.SGD(S1_LEARNING_RATE),
    "momentum": lambda: optimizers.SGD(S1_LEARNING_RATE, momentum=0.9),
    "adam": lambda: optimizers.Adam(0.001),
}


def measure(X, y, rule, epochs, seed=0):
    """(samples/s per timed epoch, peak bytes the fit allocated, final loss)."""
    model = fastbp.MLP(S1.layer_sizes, S1.activations, dtype=S1.dtype, seed=seed)
    trainer = fastbp.Trainer(LOSS, optimizer=RULES[rule](), epochs=1,
                             batch_size=S1.batch_size, seed=seed, n_threads=1)
    trainer.fit(model, X, y)   # warm up: the optimizer state exists from here on
    tracemalloc.start()
    rates, history = [], None
    for _ in range(epochs):
        history = trainer.fit(model, X, y)
        rates.append(history.samples_per_second[-1])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return rates, peak, history.loss[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--rows", type=int, default=S1.n_samples)
    args = parser.parse_args(argv)
    workload = S1.with_samples(args.rows)
    X, y = make_sparse_data(workload)
    data_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    n_params = sum(a * b + b for a, b in zip(S1.layer_sizes[:-1], S1.layer_sizes[1:]))
    print(f"S1: {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} stored values "
          f"({X.nnz / X.shape[0]:.1f} a row), CSR {data_bytes / 2**20:.1f} MiB, "
          f"parameters {n_params * 4 / 2**20:.1f} MiB (a dense X: "
          f"{X.shape[0] * X.shape[1] * 4 / 2**30:.1f} GiB); one thread, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'rule':10} {'samples/s':>12} {'epochs (samples/s)':>36} {'peak MiB':>9} "
          f"{'loss':>7}")
    for rule in args.rules.split(","):
        rates, peak, loss = measure(X, y, rule, args.epochs)
        print(f"{rule:10} {statistics.median(rates):12,.0f} "
              f"{' '.join(f'{r:,.0f}' for r in rates):>36} {peak / 2**20:9.1f} {loss:7.4f}")


if __name__ == "__main__":
    main()
