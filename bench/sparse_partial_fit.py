"""Online learning on sparse input: milliseconds a Trainer.partial_fit call on S1's rows.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparse_partial_fit.py \
        [--rows 64] [--calls 40] [--optimizers sgd momentum adam]

S1's network and data (bench/workloads.py), one thread, float32, batch 64. A trainer fits
one epoch of S1 (so that about 31,000 rows of W1 have an optimizer state), then calls
partial_fit on `rows` consecutive rows at a time. Each call is an epoch of one batch,
and under momentum or Adam the epoch's end catches up every row with a state, not only
the batch's: that is the call's cost. Two columns, calls alternating in one process: the
default, where the end catches up the rows the epoch did not log last, unlogged, when
their catch-up is proven finite (docs/performance.md, "Rows left to the epoch's end"),
and every such row logged first (`_core.row_log_settings(defer_flush=False)`, as
before). Reported: the median milliseconds of each, after the first 4 calls.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sparse_input import FastbpRunner  # noqa: E402
from workloads import S1, make_sparse_data  # noqa: E402

OPTIMIZERS = ("sgd", "momentum", "adam")


def measure(optimizer_name, rows, calls):
    """(median ms deferred, median ms logged)."""
    from fastbp import _core
    X, y = make_sparse_data()
    runner = FastbpRunner(f"fastbp-{optimizer_name}", X, y)   # S1's model and rule
    model, trainer = runner.model, runner.trainer
    trainer.fit(model, X, y)
    times = {True: [], False: []}
    previous = _core.row_log_settings()
    try:
        for call in range(calls):
            start_row = (call * rows) % (X.shape[0] - rows)
            for defer in (True, False) if call % 2 else (False, True):
                _core.row_log_settings(defer_flush=defer)
                start = time.perf_counter()
                trainer.partial_fit(model, X[start_row:start_row + rows],
                                    y[start_row:start_row + rows])
                times[defer].append(time.perf_counter() - start)
    finally:
        _core.row_log_settings(*previous)
    return tuple(statistics.median(times[defer][4:]) * 1e3 for defer in (True, False))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS),
                        choices=OPTIMIZERS)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args(argv)
    if args.calls < 5:      # (the first 4 calls of each kind are left out of the median)
        parser.error(f"--calls must be at least 5; got {args.calls}")
    if not 1 <= args.rows < S1.n_samples:
        parser.error(f"--rows must be in 1..{S1.n_samples - 1:,} (a call's rows out of S1's "
                     f"{S1.n_samples:,}); got {args.rows}")
    from threadpoolctl import threadpool_limits
    print(f"# S1, partial_fit of {args.rows} rows, one thread: median ms a call "
          f"({args.calls} calls each way, alternating), load {os.getloadavg()[0]:.2f}")
    print(f"{'optimizer':>9} | {'default':>8} | {'logged':>8} | logged / default")
    with threadpool_limits(1):
        for name in args.optimizers:
            deferred, logged = measure(name, args.rows, args.calls)
            print(f"{name:>9} | {deferred:8.2f} | {logged:8.2f} | {logged / deferred:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
