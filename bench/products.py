"""Each product of a training step, in fastbp's own kernels and in BLAS, against the core's
FMA peak (issue 12).

For every weight layer of the chosen workloads (bench/workloads.py): the forward product
(A W, batch x n_in . n_in x n_out), the input delta (D W^T, every layer but the first) and
the weight gradient with plain SGD's update folded in (W = W - lr A^T D), one thread, in
the calls a one-thread training plan makes (BLAS's forward products cut for OpenBLAS's
small-matrix kernels where it has them: today's path). The
peak is measured in the same run: a register-only loop of independent vector FMAs
(_core.fma_peak) gives multiply-adds per second, and a chain of one-cycle integer adds
gives the core's clock, so each product's cycles per multiply-add sits beside the core's
best (1 / (lanes x FMA units)); each workload's step of products is also set against
BLAS's one-thread 2048^3 GEMM rate, measured in the same run.

    python bench/products.py                  # this CPU's best kernels, W1-W5
    python bench/products.py --isa avx2 --workloads W1 W5
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/products.py --isa avx512

--predict 784-128-10:512 20-64-64-1:2048 ... instead times the forward products of a
predict pass of that network and chunk (float32), BLAS in the calls the pass's plan makes
(docs/serving.md, Latency).
"""
import argparse
import os
import re
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402
from compare import _at_least  # noqa: E402

from fastbp import _core  # noqa: E402


def best_seconds(call, repeat, rounds):
    """Best of `rounds` timings of `repeat` calls, per call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        call(repeat)
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def measure_peak(isa, rounds=300):
    """(clock in Hz, peak float32 multiply-adds per cycle) for isa's vector width: the
    best of many short rounds (about 0.5 ms), so a round the core was shared in does not
    count."""
    n = 200_000
    lanes = {"avx2": 8, "avx512": 16}[isa]
    fma_seconds = add_seconds = float("inf")
    for _ in range(rounds):
        f, a = _core.fma_peak(isa, n)
        fma_seconds, add_seconds = min(fma_seconds, f), min(add_seconds, a)
    clock = 8 * n / add_seconds
    return clock, 10 * n * lanes / fma_seconds / clock


def products_of(workload, forward_only=False):
    """(layer, product, kind, m, n, k, chunk rows, chunk columns) for each product of a
    plain-SGD step (forward_only: of a predict pass of batch_size rows), with the calls a
    one-thread plan cuts it into (forward products for OpenBLAS's small kernels where it
    has them, gradient blocks)."""
    from fastbp._threads import small_gemm_kernels
    sizes, batch = workload.layer_sizes, workload.batch_size
    codes = [_core.ACTIVATION_CODES[name] for name in workload.activations]
    chunks = _core.Plan(list(sizes), codes, batch, None, False, small_gemm_kernels()).gemm_chunks
    for layer in range(1, len(sizes)):
        n_in, n_out = sizes[layer - 1], sizes[layer]
        (rows, columns), gradient_rows = chunks[layer - 1]
        yield layer, "forward", "nn", batch, n_out, n_in, rows, columns
        if forward_only:
            continue
        if layer > 1:
            yield layer, "delta", "nt", batch, n_in, n_out, 0, 0
        yield layer, "gradient", "tn", n_in, n_out, batch, gradient_rows, 0


def operands(kind, m, n, k, dtype, rng):
    a_shape = (k, m) if kind == "tn" else (m, k)
    b_shape = (n, k) if kind == "nt" else (k, n)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    return a, b, c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=["avx2", "avx512"], default=_core.best_kernel_isa())
    # (the dense training steps: S1 trains on its stored values, P1 predicts)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W4", "W5"],
                        choices=["W1", "W2", "W3", "W4", "W5"])
    # many short rounds, the best counting: on a shared core a long round is rarely
    # uncontended from end to end, a short one often is
    parser.add_argument("--ceiling-size", type=_at_least(1), default=2048,
                        help="the square GEMM the steps are set against (on a busy shared "
                             "machine 1024 catches uncontended rounds more often)")
    parser.add_argument("--ceiling-rounds", type=_at_least(1), default=10)
    parser.add_argument("--rounds", type=_at_least(1), default=200)
    parser.add_argument("--seconds", type=float, default=0.0005,
                        help="about this long per timing round")
    parser.add_argument("--predict", nargs="+", metavar="SIZES:ROWS",
                        help="instead of --workloads: a predict pass's forward products, "
                             "e.g. 784-128-10:512 (float32)")
    args = parser.parse_args()
    runs = [(workloads.get(name), False) for name in args.workloads]
    if args.predict:
        runs = []
        for spec in args.predict:
            if not re.fullmatch(r"[1-9][0-9]*(-[1-9][0-9]*)+:[1-9][0-9]*", spec):
                parser.error(f"--predict: {spec!r} is not SIZES:ROWS (e.g. 784-128-10:512)")
            sizes, rows = spec.split(":")
            runs.append((workloads.Workload(spec, tuple(int(size) for size in
                                                        sizes.split("-")),
                                            int(rows), int(rows), "float32", "predict"),
                         True))
    if args.isa is None:
        sys.exit("this CPU or build has no own kernels (AVX2+FMA or AVX-512 needed)")
    rng = np.random.default_rng(0)
    clock, peak32 = measure_peak(args.isa)
    print(f"isa {args.isa}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f"; clock {clock / 1e9:.2f} GHz (measured); peak {peak32:.1f} float32 / "
          f"{peak32 / 2:.1f} float64 multiply-adds per cycle (measured); "
          f"load {os.getloadavg()[0]:.2f}")
    ceiling = {}
    with threadpool_limits(1):
        for dtype in (np.float32, np.float64):   # the machine's 2048^3 GEMM rate, one thread
            size = args.ceiling_size
            a, b, c = operands("nn", size, size, size, dtype, rng)
            seconds = best_seconds(
                lambda repeat: _core.matrix_product("nn", a, b, c, 1.0, 0.0, "blas", repeat),
                1, args.ceiling_rounds)
            ceiling[np.dtype(dtype)] = size ** 3 / seconds
    print(f"BLAS {args.ceiling_size}^3 (one thread, best of {args.ceiling_rounds}): sgemm "
          f"{ceiling[np.dtype(np.float32)] / clock:.1f}, dgemm "
          f"{ceiling[np.dtype(np.float64)] / clock:.1f} multiply-adds per cycle")
    print(f"{'':3} {'layer':>5} {'product':8} {'shape m x n x k':>18} "
          f"{'kernel us':>10} {'BLAS us':>9} {'BLAS/kernel':>11} "
          f"{'cyc/MAC kernel':>14} {'BLAS':>7} {'peak':>7} {'kernel % peak':>13}")
    with threadpool_limits(1):
        for workload, forward_only in runs:
            name = workload.name
            dtype = np.dtype(workload.dtype)
            peak = peak32 if dtype == np.float32 else peak32 / 2
            totals = {"kernel": 0.0, "blas": 0.0}
            step_macs = 0
            for layer, product, kind, m, n, k, rows, columns in products_of(workload, forward_only):
                a, b, c = operands(kind, m, n, k, dtype, rng)
                alpha, beta = (-1e-3, 1.0) if kind == "tn" else (1.0, 0.0)
                macs = m * n * k
                step_macs += macs
                calls, repeats = {}, {}
                for backend in (args.isa, "blas"):
                    def call(repeat, backend=backend):
                        _core.matrix_product(kind, a, b, c, alpha, beta, backend, repeat,
                                             rows, columns)
                    calls[backend] = call
                    once = best_seconds(call, 1, 3)
                    repeats[backend] = max(1, int(args.seconds / max(once, 1e-7)))
                times = {backend: float("inf") for backend in calls}
                for _ in range(args.rounds):   # the two take turns: the same contention
                    for backend, call in calls.items():
                        times[backend] = min(times[backend],
                                             best_seconds(call, repeats[backend], 1))
                kernel, blas = times[args.isa], times["blas"]
                totals["kernel"] += kernel
                totals["blas"] += blas
                cycles = {key: value * clock / macs for key, value in times.items()}
                print(f"{name:3} {layer:>5} {product:8} {f'{m}x{n}x{k}':>18} "
                      f"{kernel * 1e6:>10.2f} {blas * 1e6:>9.2f} {blas / kernel:>11.2f} "
                      f"{cycles[args.isa]:>14.4f} {cycles['blas']:>7.4f} {1 / peak:>7.4f} "
                      f"{100 / peak / cycles[args.isa]:>12.0f}%")
            rate = ceiling[dtype] / clock
            print(f"{name:3} {'all':>5} {'step':8} {'':>18} {totals['kernel'] * 1e6:>10.2f} "
                  f"{totals['blas'] * 1e6:>9.2f} {totals['blas'] / totals['kernel']:>11.2f} "
                  f"{totals['kernel'] * clock / step_macs:>14.4f} "
                  f"{totals['blas'] * clock / step_macs:>7.4f} {1 / rate:>7.4f} "
                  f"{100 / rate / (totals['kernel'] * clock / step_macs):>12.0f}% of the "
                  f"{args.ceiling_size}^3 GEMM (BLAS alone: "
                  f"{100 / rate / (totals['blas'] * clock / step_macs):.0f}%)")


if __name__ == "__main__":
    main()
