"""S1, sparse input: fastbp and its peers, training throughput and memory on one CSR matrix.

Trains the S1 network (100000-256-20, ReLU, softmax + CCE, batch 64) on S1's data
(bench/workloads.py, make_sparse_data), one thread, with

- fastbp: plain SGD (learning rate 0.05, the workload's rule), SGD with momentum 0.9, and
  Adam (learning rate 0.001);
- PyTorch's fastest sparse path: nn.EmbeddingBag(100000, 256, mode="sum", sparse=True)
  fed the CSR arrays (indices, offsets, per_sample_weights = the stored values), a bias and
  ReLU, nn.Linear(256, 20), CrossEntropyLoss, optim.SGD (learning rate 0.05; its sparse
  gradient touches only the named rows of the table);
- scikit-learn: MLPClassifier(hidden_layer_sizes=(256,), solver="sgd",
  learning_rate_init=0.05, batch_size=64, momentum=0, alpha=0, max_iter=1) on the same CSR
  matrix (warm_start, so each fit is one more epoch).

Each system runs in a subprocess of its own (one library per process, its own peak RSS),
under threadpoolctl's limit of one BLAS thread (and torch.set_num_threads(1)), or of
`--threads` (fastbp's n_threads: under a lazy rule its threads share the rows of W1 a
batch names). A worker
trains one untimed epoch, then `--epochs` timed ones, each over a fresh row order, and
reports the median samples/s, the CPU seconds over the wall seconds of the timed epochs
(under 1 means the core was shared) and the samples per CPU second (steadier than samples/s
when it was); for fastbp also the samples/s of `--epochs` epochs in one fit (the wall time
of the whole `fit` call: what a user's fit of several epochs sees, its set-up paid once,
where the timed epochs above are one fit each); and memory: the growth of the peak RSS from after the
data were made to the end (the model, the optimizer's state and the fit's own allocations),
and for fastbp the peak under tracemalloc of one more fit, after the timed ones (its
allocations beyond the data and the model). scikit-learn, whose step costs the same on any
number of rows (about 200-600 samples/s), is timed on the first 2,000 rows of the matrix
(ROWS below; `--rows-<name>` to change). Run with the OpenBLAS variables
unset, like every benchmark:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sparse_input.py [--epochs 3]

`--columns N` draws S1's rows over N columns instead (the first layer N wide): what a
wider vocabulary costs each system. `--dtype float64` trains every system in double
precision (what fastbp's scikit-learn estimators compute in by default).
"""
import argparse
import dataclasses
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from compare import (OVERSUBSCRIBED, UNDERSUBSCRIBED, _at_least, openblas_warning,  # noqa: E402
                     oversubscribed, undersubscribed)
from workloads import LOSS, S1, S1_LEARNING_RATE, make_sparse_data  # noqa: E402

SYSTEMS = ("fastbp-sgd", "fastbp-momentum", "fastbp-adam", "torch-embeddingbag", "sklearn")
ROWS = {"sklearn": 2_000}   # the others: all of S1's 20,000


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


# ----------------------------------------------------------------------------- runners
# Each is built from (X, y, seed) and has run_epoch(), one epoch over a new row order.

class FastbpRunner:
    RULES = {
        "fastbp-sgd": lambda o: o.SGD(S1_LEARNING_RATE),
        "fastbp-momentum": lambda o: o.SGD(S1_LEARNING_RATE, momentum=0.9),
        "fastbp-adam": lambda o: o.Adam(0.001),
    }

    def __init__(self, name, X, y, seed=0, threads=1):
        import fastbp
        self.fastbp, self.X, self.y = fastbp, X, y
        self.model = fastbp.MLP((X.shape[1], *S1.layer_sizes[1:]), S1.activations,
                                dtype=X.dtype, seed=seed)
        self.trainer = fastbp.Trainer(LOSS, optimizer=self.RULES[name](fastbp.optimizers),
                                      epochs=1, batch_size=S1.batch_size, seed=seed,
                                      n_threads=threads or None)
        self.tracemalloc_peak = None

    def run_epoch(self):
        # the trainer keeps its optimizer state and draws a new row order at each fit
        history = self.trainer.fit(self.model, self.X, self.y)
        self.loss = history.loss[-1]

    def run_epochs(self, epochs):
        """`epochs` epochs in one fit."""
        self.trainer.epochs = epochs
        try:
            self.trainer.fit(self.model, self.X, self.y)
        finally:
            self.trainer.epochs = 1

    def traced_epoch(self):
        """One more epoch under tracemalloc (after the timed ones: it slows allocations)."""
        tracemalloc.start()
        try:
            self.run_epoch()
        finally:
            self.tracemalloc_peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()

    def versions(self):
        return {"fastbp": getattr(self.fastbp, "__version__", "?")}


class TorchEmbeddingBagRunner:
    """EmbeddingBag(sum, sparse) with per-sample weights + bias + ReLU + Linear, CCE, SGD.

    Each epoch permutes the CSR matrix's rows once (scipy), so that a batch is a slice of
    its arrays: indices, offsets (indptr less its first entry) and the stored values, handed
    to torch without a copy (torch.from_numpy)."""

    def __init__(self, name, X, y, seed=0, threads=1):
        import torch
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        torch.manual_seed(seed)
        n_in, n_hidden, n_out = X.shape[1], *S1.layer_sizes[1:]
        dtype = torch.from_numpy(X.data[:1]).dtype     # the data's: --dtype
        self.bag = torch.nn.EmbeddingBag(n_in, n_hidden, mode="sum", sparse=True, dtype=dtype)
        self.bias = torch.nn.Parameter(torch.zeros(n_hidden, dtype=dtype))
        self.out = torch.nn.Linear(n_hidden, n_out, dtype=dtype)
        self.opt = torch.optim.SGD([*self.bag.parameters(), self.bias,
                                    *self.out.parameters()], lr=S1_LEARNING_RATE)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.X, self.y = X, np.ascontiguousarray(y, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def run_epoch(self):
        torch = self.torch
        perm = self.rng.permutation(self.X.shape[0])
        Xp = self.X[perm]
        indices = torch.from_numpy(Xp.indices.astype(np.int64))
        indptr = Xp.indptr.astype(np.int64)
        values = torch.from_numpy(Xp.data)
        y = torch.from_numpy(self.y[perm])
        B, n = S1.batch_size, Xp.shape[0]
        total = 0.0     # the epoch's mean loss, as fastbp's history and scikit-learn report
        for start in range(0, n, B):
            stop = min(start + B, n)
            lo, hi = int(indptr[start]), int(indptr[stop])
            offsets = torch.from_numpy(indptr[start:stop] - lo)
            self.opt.zero_grad(set_to_none=True)
            hidden = torch.relu(self.bag(indices[lo:hi], offsets,
                                         per_sample_weights=values[lo:hi]) + self.bias)
            loss = self.loss_fn(self.out(hidden), y[start:stop])
            loss.backward()
            self.opt.step()
            total += float(loss) * (stop - start)
        self.loss = total / n

    def versions(self):
        return {"torch": self.torch.__version__}


class SklearnRunner:
    def __init__(self, name, X, y, seed=0, threads=1):   # threads: its BLAS's (worker)
        import sklearn
        from sklearn.neural_network import MLPClassifier
        self.sklearn = sklearn
        self.clf = MLPClassifier(hidden_layer_sizes=S1.layer_sizes[1:-1], solver="sgd",
                                 learning_rate_init=S1_LEARNING_RATE,
                                 batch_size=S1.batch_size, momentum=0.0, alpha=0.0,
                                 max_iter=1, warm_start=True, random_state=seed)
        self.X, self.y = X, y

    def run_epoch(self):
        from sklearn.exceptions import ConvergenceWarning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.X, self.y)
        self.loss = self.clf.loss_

    def versions(self):
        return {"sklearn": self.sklearn.__version__}


def make_runner(name, X, y, threads=1):
    if name.startswith("fastbp"):
        return FastbpRunner(name, X, y, threads=threads)
    if name == "torch-embeddingbag":
        return TorchEmbeddingBagRunner(name, X, y, threads=threads)
    if name == "sklearn":
        return SklearnRunner(name, X, y, threads=threads)
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")


# ----------------------------------------------------------------------------- worker

def workload(columns=None, dtype=None):
    """S1, or S1 with another number of columns (--columns: the same rows and draws over a
    wider or narrower vocabulary, the network's first layer as wide) or dtype (--dtype)."""
    chosen = S1 if columns is None else \
        dataclasses.replace(S1, layer_sizes=(columns, *S1.layer_sizes[1:]))
    return chosen if dtype is None else dataclasses.replace(chosen, dtype=dtype)


def worker(name, rows, epochs, threads=1, columns=None, dtype=None):
    """Measure one system in this process; returns a dict (printed as JSON)."""
    from threadpoolctl import threadpool_limits
    X, y = make_sparse_data(workload(columns, dtype))
    X, y = X[:rows], y[:rows]
    rows = X.shape[0]             # (at most S1's own: the rates count the rows there are)
    rss_data = _maxrss_mib()
    with threadpool_limits(limits=threads or None):
        runner = make_runner(name, X, y, threads)
        runner.run_epoch()   # untimed: the optimizer's state and every buffer exist from here
        rates, cpu, wall = [], 0.0, 0.0
        for _ in range(epochs):
            c0, t0 = time.process_time(), time.perf_counter()
            runner.run_epoch()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            rates.append(rows / dt)
            wall, cpu = wall + dt, cpu + dc
        loss = runner.loss   # after the timed epochs, whatever runs below
        one_fit = None
        if hasattr(runner, "run_epochs"):
            t0 = time.perf_counter()
            runner.run_epochs(epochs)
            one_fit = rows * epochs / (time.perf_counter() - t0)
        if hasattr(runner, "traced_epoch"):
            runner.traced_epoch()
    return {"system": name, "rows": rows, "rates": rates,
            "samples_per_s": statistics.median(rates), "cpu_over_wall": cpu / wall,
            "one_fit_samples_per_s": one_fit,
            "samples_per_cpu_s": rows * epochs / cpu,
            "rss_growth_mib": _maxrss_mib() - rss_data, "rss_data_mib": rss_data,
            "tracemalloc_peak_mib": getattr(runner, "tracemalloc_peak", None),
            "loss": float(loss), "versions": runner.versions()}


# ----------------------------------------------------------------------------- driver

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_at_least(1), default=3, help="timed epochs per system")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--threads", type=_at_least(0), default=1,
                        help="threads of every system: fastbp's n_threads (its row pool "
                             "under a lazy rule), torch.set_num_threads, the BLAS limit; "
                             "0: each library's default")
    for name in SYSTEMS:
        parser.add_argument(f"--rows-{name}", type=_at_least(1),
                            default=ROWS.get(name, S1.n_samples))
    parser.add_argument("--columns", type=_at_least(1),
                        help="S1's rows drawn over this many columns (default S1's 100,000)")
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="the data's and the models' dtype (default S1's float32)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.systems.split(",")) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; the systems: "
                     f"{', '.join(SYSTEMS)}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.epochs, args.threads,
                                args.columns, args.dtype)))
        return

    chosen = workload(args.columns, args.dtype)
    X, _ = make_sparse_data(chosen)
    data_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    n_params = sum(a * b + b for a, b in zip(chosen.layer_sizes[:-1], chosen.layer_sizes[1:]))
    print(f"S1: {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} stored values "
          f"({X.nnz / X.shape[0]:.1f} a row), CSR {data_bytes / 2**20:.1f} MiB, "
          f"parameters {n_params * X.dtype.itemsize / 2**20:.1f} MiB of {X.dtype} (a dense "
          f"X: {X.shape[0] * X.shape[1] * X.dtype.itemsize / 2**30:.1f} GiB); "
          f"{args.threads} thread(s), each "
          f"system in its own process, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}")
    del X
    if openblas_warning():
        print(openblas_warning())
    results, failed = [], []
    for name in args.systems.split(","):
        rows = getattr(args, f"rows_{name.replace('-', '_')}")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name,
                               "--rows", str(rows), "--epochs", str(args.epochs),
                               "--threads", str(args.threads),
                               *(["--columns", str(args.columns)] if args.columns else []),
                               *(["--dtype", args.dtype] if args.dtype else [])],
                              capture_output=True, text=True)
        missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", proc.stderr)
        if proc.returncode != 0 and missing and not name.startswith("fastbp"):
            # a peer that is not installed, as compare.py shows one (not a failure)
            print(f"{name}: n/a ({missing.group(1)} is not installed)")
            continue
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            failed.append(name)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next((r["samples_per_s"] for r in results if r["system"] == "fastbp-sgd"), None)
    print(f"{'system':20} {'rows':>6} {'samples/s':>11} {'fastbp SGD / it':>15} "
          f"{'cpu/wall':>8} {'per CPU s':>10} {'in one fit':>10} {'RSS growth MiB':>14} "
          f"{'tracemalloc MiB':>15} {'loss':>7}   epochs (samples/s)")
    marked = set()
    for r in results:
        # compare.py's marks: CPU time says more (!) or fewer (*) cores than --threads
        share = {"threads": args.threads, "cpu_over_wall": r["cpu_over_wall"],
                 "cpu_over_wall_max": r["cpu_over_wall"]}
        marks = ("*" if undersubscribed(share) else "") + ("!" if oversubscribed(share) else "")
        marked.update(marks)
        cpu_wall = f"{r['cpu_over_wall']:.2f}{marks}"
        ratio = f"{base / r['samples_per_s']:,.1f}x" if base else "-"
        trace, one_fit = r["tracemalloc_peak_mib"], r["one_fit_samples_per_s"]
        print(f"{r['system']:20} {r['rows']:6,} {r['samples_per_s']:11,.0f} {ratio:>15} "
              f"{cpu_wall:>8} {r['samples_per_cpu_s']:10,.0f} "
              f"{'-' if one_fit is None else f'{one_fit:,.0f}':>10} "
              f"{r['rss_growth_mib']:14.1f} "
              f"{'-' if trace is None else f'{trace:.1f}':>15} {r['loss']:7.4f}   "
              f"{' '.join(f'{x:,.0f}' for x in r['rates'])}")
    if "*" in marked:
        print(f"* CPU time under {UNDERSUBSCRIBED:g} x {args.threads} thread(s) x wall time: "
              f"fewer cores than --threads were busy (shared with other work, or fewer "
              f"threads ran)")
    if "!" in marked:
        print(f"! CPU time over {OVERSUBSCRIBED:g} x {args.threads} thread(s) x wall time: "
              f"more threads ran than --threads says")
    print("versions:", json.dumps({k: v for r in results for k, v in r["versions"].items()}),
          f"load after: {os.getloadavg()[0]:.2f}")
    if failed:
        print(f"{len(failed)} system(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
