"""Where a multi-threaded step's time goes: samples/s of each workload at each thread count,
each way of using the threads (FASTBP_SPLIT=rows, =inputs, =hidden and =blas), alternating
in one process (hidden falls back to rows on a network of more than one hidden layer).

    CFLAGS=-DFBP_WORKER_TIMING python setup.py build_ext --inplace   # optional: phases
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/row_phases.py \\
        --workloads W2,W1 --threads 8,16 --rounds 2

Each fit trains --epochs epochs of the workload (capped at --samples rows) after a one-epoch
warm-up fit. With the timing build, each row-split epoch call also prints every worker's
microseconds a step in each phase to stderr (csrc/workers.h: gather, forward and deltas,
the wait after them, weight gradient and update, the next batch's gather, the last wait;
with FASTBP_SPLIT=inputs also the first layer's partial product and the wait after it;
with FASTBP_SPLIT=hidden the gather, the own units and partial product (H2), the wait, and
the output layer, deltas and update (H3)), so the table's figures can be split into
products, element-wise work and synchronisation.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def fit_seconds(fastbp, wl, X, y, threads, epochs, split):
    os.environ["FASTBP_SPLIT"] = split
    model = fastbp.MLP(list(wl.layer_sizes), wl.activations, dtype=wl.dtype, seed=0)

    def trainer(n_epochs):
        return fastbp.Trainer(workloads.LOSS, learning_rate=workloads.LEARNING_RATE,
                              epochs=n_epochs, batch_size=wl.batch_size, shuffle=True, seed=0,
                              n_threads=threads)

    trainer(1).fit(model, X, y)                       # warm-up (and the measured choices)
    # OpenBLAS's idle threads poll for about 0.1 s after a multi-threaded call (the last
    # fit on BLAS threads) and take the cores row workers need: wait until they sleep.
    fastbp._threads._wait_for_a_quiet_process()
    print(f"-- {wl.name} threads={threads} {split}: timed fit", file=sys.stderr, flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    trainer(epochs).fit(model, X, y)
    return time.perf_counter() - start, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W2,W1")
    ap.add_argument("--threads", default="8")
    ap.add_argument("--splits", default="rows,inputs,hidden,blas")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the splits")
    args = ap.parse_args()
    import fastbp
    import fastbp._threads  # noqa: F401  (fit_seconds waits for a quiet process with it)
    print(f"{'workload':8s} {'threads':>7s} {'split':6s} {'samples/s':>10s} {'CPU/wall':>8s}")
    for name in args.workloads.split(","):
        wl = workloads.get(name)
        wl = wl.with_samples(min(wl.n_samples, args.samples))
        X, y = workloads.make_data(wl, seed=0)
        for threads in (int(t) for t in args.threads.split(",")):
            for _ in range(args.rounds):
                for split in args.splits.split(","):
                    wall, cpu = fit_seconds(fastbp, wl, X, y, threads, args.epochs, split)
                    print(f"{wl.name:8s} {threads:7d} {split:6s} "
                          f"{args.epochs * wl.n_samples / wall:10.0f} {cpu / wall:8.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
