"""Where a multi-threaded step's time goes: samples/s of each workload at each thread count,
each way of using the threads (FASTBP_SPLIT=rows, =inputs, =hidden and =blas), alternating
in one process (hidden falls back to rows on a network of more than one hidden layer).

    CFLAGS=-DFBP_WORKER_TIMING python setup.py build_ext --inplace   # optional: phases
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/row_phases.py \\
        --workloads W2,W1 --threads 8,16 --rounds 2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/row_phases.py \\
        --workloads W1,W2,W4,W5 --threads 0,1,2 --rounds 3     # the default against each

Thread count 0 is the default (n_threads=None, FASTBP_SPLIT unset: the measured choice,
shown as the count and split it ran); 1 runs once a round (there is nothing to split). A
round runs every thread count and split once, so the machine's drift falls on all of them
alike; the summary gives each one's median over the rounds and, for the default, its median
over the best fixed one's (docs/performance.md: the default is meant to be within 5%).
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
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402
from compare import _at_least  # noqa: E402


def fit_seconds(fastbp, wl, X, y, threads, epochs, split):
    """(wall, CPU seconds, History.threads) of a timed fit; threads None: the default,
    split None: FASTBP_SPLIT unset."""
    if split is None:
        os.environ.pop("FASTBP_SPLIT", None)
    else:
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
    history = trainer(epochs).fit(model, X, y)
    return time.perf_counter() - start, time.process_time() - cpu, history.threads


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W2,W1")
    ap.add_argument("--threads", default="8")
    ap.add_argument("--splits", default="rows,inputs,hidden,blas")
    ap.add_argument("--epochs", type=_at_least(1), default=2)
    ap.add_argument("--samples", type=_at_least(1), default=10_000)
    ap.add_argument("--rounds", type=_at_least(1), default=2, help="alternations of the splits")
    args = ap.parse_args()
    try:        # (refused by name here, not as a traceback after the first workload)
        thread_counts = [_at_least(0)(t) for t in args.threads.split(",")]
        for name in args.workloads.split(","):
            workloads.get(name)
    except (argparse.ArgumentTypeError, ValueError, KeyError) as error:
        ap.error(f"--threads or --workloads: {error}")
    import fastbp
    import fastbp._threads  # noqa: F401  (fit_seconds waits for a quiet process with it)
    splits = args.splits.split(",")
    print(f"{'workload':8s} {'threads':>7s} {'split':6s} {'samples/s':>10s} {'CPU/wall':>8s}")
    for name in args.workloads.split(","):
        wl = workloads.get(name)
        wl = wl.with_samples(min(wl.n_samples, args.samples))
        X, y = workloads.make_data(wl, seed=0)
        rates = {}          # (threads, split) -> samples/s of each round
        for _ in range(args.rounds):
            for threads in thread_counts:
                for split in splits if threads > 1 else [None]:
                    wall, cpu, ran = fit_seconds(fastbp, wl, X, y, threads or None,
                                                 args.epochs, split)
                    label = split or "-"
                    if threads == 0:
                        label = f"default ({ran['n_threads']} {ran['split'] or '-'})"
                    rates.setdefault((threads, split), []).append(
                        args.epochs * wl.n_samples / wall)
                    print(f"{wl.name:8s} {threads:7d} {label:6s} "
                          f"{rates[threads, split][-1]:10.0f} {cpu / wall:8.2f}", flush=True)
        summary(wl.name, rates)


def summary(name, rates):
    """Each way's median over the rounds; the default's median round against the best
    fixed way's."""
    medians = {key: statistics.median(values) for key, values in rates.items()}
    for (threads, split), value in medians.items():
        print(f"  {name} median: threads {threads} {split or '-'}: {value:.0f}")
    fixed = {key: value for key, value in medians.items() if key[0] != 0}
    if (0, None) in medians and fixed:
        best = max(fixed, key=fixed.get)
        print(f"  {name}: the default at {medians[0, None] / fixed[best]:.3f}x of the best "
              f"fixed way (threads {best[0]} {best[1] or '-'})", flush=True)


if __name__ == "__main__":
    main()
