"""Two fits on two Python threads run in parallel: a fit holds no GIL.

Trains two separate W1 models (1 BLAS thread each) one after the other, then at the same
time on two threads, and prints both wall times, the CPU time beside each (CPU / wall
marked as bench/compare.py marks it: * under 0.9 x the threads, ! over 1.03 x) and the
speed-up (2.0 is perfect on 2 free cores). Run with the OpenBLAS variables unset, like
every benchmark:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/parallel_fits.py
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastbp  # noqa: E402
from compare import _at_least, openblas_warning, oversubscribed, undersubscribed  # noqa: E402
from workloads import LEARNING_RATE, LOSS, WORKLOADS, make_data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W1", type=str.upper, choices=list(WORKLOADS))
    parser.add_argument("--epochs", type=_at_least(1), default=3)
    args = parser.parse_args(argv)
    if openblas_warning():
        print(openblas_warning())
    workload = WORKLOADS[args.workload]
    X, y = make_data(workload)

    def train(results, index):
        model = fastbp.MLP(workload.layer_sizes, workload.activations, dtype=workload.dtype,
                           seed=index)
        trainer = fastbp.Trainer(LOSS, learning_rate=LEARNING_RATE, epochs=args.epochs,
                                 batch_size=workload.batch_size, seed=index, n_threads=1)
        started = time.perf_counter()
        trainer.fit(model, X, y)
        results[index] = time.perf_counter() - started

    train({}, 0)   # warm up
    sequential = {}
    cpu_started, started = time.process_time(), time.perf_counter()
    train(sequential, 0)
    train(sequential, 1)
    sequential_wall = time.perf_counter() - started
    sequential_cpu = time.process_time() - cpu_started

    parallel = {}
    threads = [threading.Thread(target=train, args=(parallel, i)) for i in range(2)]
    cpu_started, started = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parallel_wall = time.perf_counter() - started
    parallel_cpu = time.process_time() - cpu_started

    def cpu(seconds, wall, threads):
        share = {"threads": threads, "cpu_over_wall": seconds / wall,
                 "cpu_over_wall_max": seconds / wall}
        marks = ("*" if undersubscribed(share) else "") + ("!" if oversubscribed(share) else "")
        return f"CPU {seconds:6.2f} s, CPU / wall {seconds / wall:.2f}{marks} of {threads}"
    rows = 2 * args.epochs * workload.n_samples
    print(f"{args.workload}, two fits of {args.epochs} epochs, 1 BLAS thread each, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"  one after the other: {sequential_wall:6.2f} s  ({rows / sequential_wall:,.0f} "
          f"samples/s)  {cpu(sequential_cpu, sequential_wall, 1)}")
    print(f"  on two threads:      {parallel_wall:6.2f} s  ({rows / parallel_wall:,.0f} "
          f"samples/s)  {cpu(parallel_cpu, parallel_wall, 2)}")
    print(f"  speed-up: {sequential_wall / parallel_wall:.2f}x")


if __name__ == "__main__":
    main()
