"""`fastbp bench` (the repository's bench/compare.py when fastbp runs from a source
checkout, else a short built-in measurement) and `fastbp demo`."""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time

from fastbp.cli.errors import UsageError


def cmd_demo(args) -> int:
    from fastbp import demo

    demo.run(epochs=args.epochs, n_samples=args.samples, hidden=args.hidden,
             batch_size=args.batch_size, learning_rate=args.learning_rate, dtype=args.dtype,
             seed=args.seed, n_threads=args.threads)
    return 0


def repository_bench():
    """bench/compare.py of the source checkout fastbp runs from, or None."""
    import fastbp

    # (realpath: an installed package that links to a checkout runs that checkout's bench)
    root = os.path.dirname(os.path.dirname(os.path.realpath(fastbp.__file__)))
    script = os.path.join(root, "bench", "compare.py")
    needed = [script, os.path.join(root, "bench", "workloads.py"),
              os.path.join(root, "bench", "peers.py"), os.path.join(root, "pyproject.toml")]
    return script if all(os.path.isfile(path) for path in needed) else None


def cmd_bench(args) -> int:
    threads = _thread_list(args.threads)
    script = None if args.builtin else repository_bench()
    if script is None:
        given = [option for option, value in (("--json", args.json), ("--png", args.png),
                                             ("--peers", args.peers), ("--warmup", args.warmup),
                                             ("--full", args.full or None))
                 if value is not None]
        if given:           # (compare.py's options: the built-in measurement has none)
            raise UsageError(f"{', '.join(given)}: for the repository's bench/compare.py, "
                             f"which {'--builtin skips' if args.builtin else 'is not here'}")
        return _builtin_bench(args, threads)
    if args.rows is not None:
        raise UsageError("--rows is for the built-in measurement (--builtin); compare.py "
                         "runs each workload's own rows")
    command = [sys.executable, script]
    if not args.full:
        command.append("--quick")
    for option, value in (("--workloads", args.workloads), ("--peers", args.peers),
                          ("--duration", args.duration), ("--repeats", args.repeats),
                          ("--warmup", args.warmup), ("--json", args.json),
                          ("--png", args.png)):
        if value is not None:
            command += [option, str(value)]
    command += ["--threads", ",".join(map(str, threads)), "--seed", str(args.seed)]
    # bench/README.md: benchmarks run with the OpenBLAS core-type overrides unset
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    shown = " ".join(command[1:]).replace(os.path.dirname(os.path.dirname(script)) + os.sep, "")
    print(f"fastbp bench: running the repository's side-by-side comparison: {shown}\n"
          f"(each library in its own subprocess; see bench/README.md)", flush=True)
    return subprocess.run(command, env=env).returncode


def _thread_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--threads takes thread counts separated by commas; got "
                         f"{text!r}") from None
    if not values or any(value < 0 for value in values):
        raise UsageError(f"--threads takes counts >= 0 (0: the default); got {text!r}")
    return values


BUILTIN_WORKLOADS = {
    # name: (layer sizes, batch size, rows) as in bench/README.md, W1 on fewer rows
    "W1": ((784, 128, 10), 32, None),
    "W3": ((64, 32, 10), 16, 1797),
}


def _builtin_bench(args, threads) -> int:
    import numpy as np

    from fastbp.model import MLP
    from fastbp.trainer import Trainer

    names = [name.strip().upper() for name in (args.workloads or "W1,W3").split(",")
             if name.strip()]
    unknown = [name for name in names if name not in BUILTIN_WORKLOADS]
    if not names:       # ("," measured nothing and said nothing)
        raise UsageError(f"--workloads names none; give some of "
                         f"{', '.join(BUILTIN_WORKLOADS)}")
    if unknown:
        raise UsageError(f"the built-in measurement knows the workloads "
                         f"{', '.join(BUILTIN_WORKLOADS)}; got {', '.join(unknown)}")
    duration = 1.0 if args.duration is None else args.duration
    repeats = 3 if args.repeats is None else args.repeats
    why = "--builtin" if args.builtin else "no bench/compare.py next to the fastbp package"
    print(f"fastbp bench: built-in quick measurement of fastbp's training throughput ({why}): "
          f"SGD, learning rate 0.01, float32, ReLU + softmax + cross-entropy, median of "
          f"{repeats} windows of >= {duration:g} s")
    print(f"{'workload':<8}  {'layers':<12}  {'batch':>5}  {'rows':>7}  {'threads':>7}  "
          f"{'samples/s':>14}")
    rng = np.random.default_rng(args.seed)
    for name in names:
        sizes, batch, rows = BUILTIN_WORKLOADS[name]
        rows = rows or args.rows or 20_000
        teacher = rng.standard_normal((sizes[0], sizes[-1])).astype(np.float32)
        X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
        y = np.argmax(X @ teacher, axis=1)
        for count in threads:
            model = MLP(sizes, ["relu"] * (len(sizes) - 2) + ["softmax"], seed=args.seed)
            trainer = Trainer("cce", learning_rate=0.01, epochs=1, batch_size=batch,
                              seed=args.seed, n_threads=count or None)
            rate, note = measure_rate(lambda: trainer.fit(model, X, y), trainer, rows,
                                      duration, repeats)
            print(f"{name:<8}  {'-'.join(map(str, sizes)):<12}  {batch:>5}  {rows:>7,}  "
                  f"{count or 'auto':>7}  {rate:>14,.0f}{note and '  (' + note + ')'}", flush=True)
    return 0


def measure_rate(fit, trainer, rows, duration, repeats, clock=time.perf_counter):
    """(samples/s, note): the median over `repeats` windows of whole epochs, each sized
    from the last to last at least `duration`, after one epoch of warm-up; a window that
    came out shorter (the machine got faster) only sizes the next. If fewer than `repeats`
    of 4 x repeats tries reach `duration`, the median of those that did, or of every
    window when none did, and a note that says so (else the note is empty)."""
    trainer.epochs = 1
    started = clock()
    fit()                                   # warm-up, and the epoch's time
    per_epoch = max(clock() - started, 1e-6)
    reached, every = [], []
    for _ in range(4 * repeats):
        trainer.epochs = max(1, math.ceil(1.1 * duration / per_epoch))
        started = clock()
        fit()
        elapsed = max(clock() - started, 1e-9)
        per_epoch = elapsed / trainer.epochs
        every.append(trainer.epochs * rows / elapsed)
        if elapsed >= duration:
            reached.append(every[-1])
            if len(reached) == repeats:
                return statistics.median(reached), ""
    if reached:
        return statistics.median(reached), \
            f"only {len(reached)} of {repeats} windows reached {duration:g} s"
    return statistics.median(every), \
        f"no window reached {duration:g} s: the median of all {len(every)}"
