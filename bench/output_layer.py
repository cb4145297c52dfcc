"""The training output layer alone: softmax + cross-entropy with its gradient
(`_core.output_loss`, the kernel a training step calls) on `rows` x `classes` logits, one
thread, nanoseconds a call (best of --rounds rounds of --calls calls, a copy of the logits
included, as the step overwrites them), float32 and float64, at each instruction-set
level this CPU runs (`_core.kernel_level`: the 64-byte softmax blocks at AVX-512, the
32-byte ones an AVX2 CPU takes, the baseline's).

    python bench/output_layer.py [--rows 16 32 1024] [--classes 2 10 32 33]

To compare two builds, run it with each on PYTHONPATH, taking turns.
"""
import argparse
import time

import numpy as np

from compare import _at_least
from fastbp import _core

SOFTMAX = _core.ACTIVATION_CODES["softmax"]
CCE = _core.LOSS_CODES["categorical_crossentropy"]


def nanoseconds(rows, classes, dtype, calls, rounds):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    targets = np.zeros((rows, classes), dtype)
    targets[np.arange(rows), rng.integers(0, classes, rows)] = 1
    work = np.empty_like(logits)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            np.copyto(work, logits)
            _core.output_loss(work, targets, SOFTMAX, CCE, 0.0, True)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_at_least(1), nargs="+", default=[16, 32, 1024])
    parser.add_argument("--classes", type=_at_least(2), nargs="+",
                        default=[2, 3, 10, 16, 32, 33])
    parser.add_argument("--calls", type=_at_least(1), default=2000)
    parser.add_argument("--rounds", type=_at_least(1), default=7)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits
    levels = _core.kernel_levels()
    print(f"{'rows':>6} {'classes':>7} {'dtype':>8} "
          + " ".join(f"{level + ' ns':>12}" for level in levels))
    with threadpool_limits(1):
        for rows in args.rows:
            for classes in args.classes:
                for dtype in ("float32", "float64"):
                    times = []
                    for level in levels:
                        before = _core.kernel_level(level)
                        try:
                            times.append(nanoseconds(rows, classes, dtype, args.calls,
                                                     args.rounds))
                        finally:
                            _core.kernel_level(before)
                    print(f"{rows:>6} {classes:>7} {dtype:>8} "
                          + " ".join(f"{t:>12.0f}" for t in times))


if __name__ == "__main__":
    main()
