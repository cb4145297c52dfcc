"""What subnormal numbers cost a fit: epochs with FASTBP_SUBNORMALS=flush (the default:
training runs with FTZ and DAZ, docs/contract.md "Training") against =keep (IEEE gradual
underflow), each in its own process, the two alternating.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/subnormals.py [--rounds 2]

The cases, one thread, float32:

- `s1-momentum`, `s1-adam`: S1 (bench/workloads.py, make_sparse_data) with SGD 0.05 and
  momentum 0.9, or Adam 0.001, as bench/sparse_input.py trains them: the rows of W1 for
  rare columns sit out hundreds of steps while their state decays;
- `rare-momentum`, `rare-adam`: W1's network and batch (784-128-10, batch 32, 60,000 rows)
  on inputs that are 0 in most rows, as image borders and one-hot features are: input j
  is nonzero (uniform in [0.1, 1.0)) in a fraction p_j of the rows, p_j log-uniform
  from 1e-4 to 0.5; labels from a random linear teacher; SGD 0.01 with momentum 0.9, or
  Adam 0.001.

A worker trains one untimed epoch (one `fit` of one epoch: the trainer keeps its state
between fits), then `--epochs` timed ones, and reports the median seconds an epoch and
the state values left subnormal at the end (0 under flush). The table gives each
setting's median over the rounds' medians and keep / flush.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from compare import _at_least  # noqa: E402

CASES = ("s1-momentum", "s1-adam", "rare-momentum", "rare-adam")


def rare_inputs_data(n_rows=60_000, n_inputs=784, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    fraction = np.exp(rng.uniform(np.log(1e-4), np.log(0.5), size=n_inputs))
    X = (rng.random((n_rows, n_inputs)) < fraction) \
        * rng.uniform(0.1, 1.0, size=(n_rows, n_inputs))
    X = X.astype(np.float32)
    y = (X @ rng.normal(size=(n_inputs, n_classes))).argmax(axis=1)
    return X, y


def run_worker(case, epochs):
    import fastbp
    from threadpoolctl import threadpool_limits
    data, rule = case.split("-")
    if data == "s1":   # as bench/sparse_input.py trains it
        from sparse_input import FastbpRunner
        from workloads import make_sparse_data
        X, y = make_sparse_data()
        runner = FastbpRunner(f"fastbp-{rule}", X, y)
        model, trainer = runner.model, runner.trainer
    else:
        X, y = rare_inputs_data()
        optimizer = fastbp.optimizers.SGD(0.01, momentum=0.9) if rule == "momentum" \
            else fastbp.optimizers.Adam(0.001)
        model = fastbp.MLP([784, 128, 10], ["relu", "softmax"], dtype="float32", seed=0)
        trainer = fastbp.Trainer("cce", optimizer=optimizer, epochs=1, batch_size=32,
                                 seed=0, n_threads=1)
    seconds = []
    with threadpool_limits(1):
        trainer.fit(model, X, y)
        for _ in range(epochs):
            start = time.perf_counter()
            trainer.fit(model, X, y)
            seconds.append(time.perf_counter() - start)
    state = trainer._state
    subnormal = (state != 0) & (np.abs(state) < np.finfo(state.dtype).tiny)
    print(json.dumps({"seconds": statistics.median(seconds),
                      "subnormals": int(np.count_nonzero(subnormal))}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--epochs", type=_at_least(1), default=5, help="timed epochs a worker")
    parser.add_argument("--rounds", type=_at_least(1), default=2,
                        help="workers a case and setting")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.epochs)
        return
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    print(f"# one thread, float32, median seconds an epoch ({args.epochs} timed epochs a "
          f"worker, {args.rounds} workers a setting), load {os.getloadavg()[0]:.2f}")
    print(f"{'case':>14} | {'keep s':>8} {'flush s':>8} | keep / flush | subnormals left "
          f"(keep, flush)")
    for case in cases:
        results = {"keep": [], "flush": []}
        for round_ in range(args.rounds):
            for setting in ("keep", "flush") if round_ % 2 == 0 else ("flush", "keep"):
                env = dict(os.environ, FASTBP_SUBNORMALS=setting)
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                      case, "--epochs", str(args.epochs)], env=env,
                                     capture_output=True, text=True)
                if out.returncode:      # (its cause: the worker's own traceback)
                    sys.exit(f"{case} ({setting}): the worker failed:\n{out.stderr[-2000:]}")
                results[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
        keep = statistics.median(r["seconds"] for r in results["keep"])
        flush = statistics.median(r["seconds"] for r in results["flush"])
        print(f"{case:>14} | {keep:8.3f} {flush:8.3f} | {keep / flush:12.2f} | "
              f"{results['keep'][-1]['subnormals']:,}, {results['flush'][-1]['subnormals']:,}",
              flush=True)
    print(f"# load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
