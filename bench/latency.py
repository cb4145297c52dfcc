"""Latency of prediction on few rows: fastbp against ONNX Runtime, PyTorch and NumPy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --threads 1
        # every library on one thread
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --threads 0
        # each library's own default
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --rows 1 8 \
        --networks 20-64-64-1 --seconds 0.5
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --concurrent 8
        # one model, 8 threads: total rate
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --concurrent 8 \
        --gil measure hold release                                 # each GIL rule
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/latency.py --sparse 27 \
        --networks 100000-256-20 --rows 1 8 64 512 \
        --systems fastbp fastbp-sklearn sklearn numpy              # CSR rows, S1's width

Each system predicts the same rows with the same weights (float32, C-contiguous input):
  fastbp   model.predict(X)              fastbp-out  model.predict(X, out=buffer)
  onnxrt   ONNX Runtime on fastbp's own to_onnx file (intra-op threads: --threads)
  torch    nn.Sequential under torch.inference_mode() (if torch is installed)
  numpy    the plain NumPy chain: a = f(a @ W + b) per layer
  fastbp-sklearn, sklearn   (only when asked for, in --systems) the fitted estimator of
           fastbp.sklearn and of scikit-learn's neural_network with the same weights:
           predict_proba (784-128-10), predict (20-64-64-1), what a service serving an
           estimator or a Pipeline calls
Every call is timed on its own (perf_counter_ns); the systems take turns in rounds, so
noise from other work on the machine falls on all of them alike. At each library's default
threads (--threads 0) a pause comes before each turn (--settle), so that no library's
threads, still spinning after its turn, take a core from the next one: a service runs one
of them, not all of them in turn. Reported: the median and
the 99th percentile of the time per call, in microseconds, and each median over fastbp's
(over the first system's where --systems leaves fastbp out), and the CPU time over the wall
time of its turns (marked as bench/compare.py marks it where --threads is fixed: * fewer
cores busy than --threads, ! more).
Compare ratios within one run: absolute times move with the load on the machine.
"""
import argparse
import os
import sys
import tempfile
import time


def _limit_threads(threads):
    """Before numpy loads: one thread means one everywhere (BLAS, OpenMP)."""
    if threads > 0:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)


NETWORKS = {
    "784-128-10": ([784, 128, 10], ["relu", "softmax"]),
    "20-64-64-1": ([20, 64, 64, 1], ["relu", "relu", "identity"]),
    # S1's network (bench/sparse_input.py): for --sparse, never dense (a dense row is
    # 400 kB)
    "100000-256-20": ([100000, 256, 20], ["relu", "softmax"]),
}
DEFAULT_NETWORKS = ["784-128-10", "20-64-64-1"]
DENSE_ONLY = ("onnxrt", "torch")       # peers that take no scipy.sparse input
SYSTEMS = ("fastbp", "fastbp-out", "onnxrt", "torch", "numpy", "fastbp-sklearn", "sklearn")


def inputs(n_rows, n_columns, sparse):
    """The rows every system predicts: float32, C-contiguous; with `sparse` stored values a
    row (columns drawn at random, fixed seed), a CSR matrix of them."""
    import numpy as np
    rng = np.random.default_rng(1)
    if not sparse:
        return rng.standard_normal((n_rows, n_columns)).astype(np.float32)
    import scipy.sparse
    per_row = min(sparse, n_columns)
    columns = np.sort(np.stack([rng.choice(n_columns, per_row, replace=False)
                                for _ in range(n_rows)]), axis=1).ravel()
    values = rng.standard_normal(n_rows * per_row).astype(np.float32)
    return scipy.sparse.csr_matrix(
        (values, columns.astype(np.int32), np.arange(0, n_rows * per_row + 1, per_row,
                                                     dtype=np.int32)),
        shape=(n_rows, n_columns))


def numpy_chain(model):
    import numpy as np
    layers = list(zip(model.weights, model.biases, model.activations))

    def run(X):
        a = X
        for W, b, activation in layers:
            a = a @ W
            a += b
            if activation == "relu":
                np.maximum(a, 0, out=a)
            elif activation == "softmax":
                a -= a.max(axis=1, keepdims=True)
                np.exp(a, out=a)
                a /= a.sum(axis=1, keepdims=True)
        return a
    return run


def onnx_runner(model, threads, folder):
    import onnxruntime
    path = os.path.join(folder, "model.onnx")
    model.to_onnx(path)
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda X: session.run(None, {name: X})[0]


def torch_runner(model, threads):
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    modules = []
    for W, b, activation in zip(model.weights, model.biases, model.activations):
        linear = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
        modules.append(linear)
        if activation == "relu":
            modules.append(torch.nn.ReLU())
        elif activation == "softmax":
            modules.append(torch.nn.Softmax(dim=1))
    net = torch.nn.Sequential(*modules).eval()

    def run(X):
        with torch.inference_mode():
            return net(torch.from_numpy(X)).numpy()
    return run


def estimator_runner(model, library):
    """The network as a fitted scikit-learn-style estimator of `library` ("fastbp":
    fastbp.sklearn, "sklearn": sklearn.neural_network) with the model's weights: a softmax
    network's predict_proba, a regression's predict (as a column), as a service that
    serves an estimator or a Pipeline calls them."""
    import warnings
    import numpy as np
    if library == "fastbp":
        from fastbp.sklearn import MLPClassifier, MLPRegressor
    else:
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    sizes = model.layer_sizes
    classifier = model.activations[-1] == "softmax"
    X = np.random.default_rng(0).standard_normal((2 * sizes[-1], sizes[0])).astype(model.dtype)
    y = np.arange(len(X)) % sizes[-1] if classifier else X[:, 0]
    kind = MLPClassifier if classifier else MLPRegressor
    estimator = kind(hidden_layer_sizes=tuple(sizes[1:-1]), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # one iteration: not converged, on purpose
        estimator.fit(X, y)
    for mine, theirs in zip(estimator.coefs_ + estimator.intercepts_,
                            model.weights + model.biases):
        mine[...] = theirs
    if classifier:
        return estimator.predict_proba
    return lambda X: estimator.predict(X)[:, None]


def runners(model, n_rows, threads, folder, wanted):
    import numpy as np
    out = np.empty((n_rows, model.layer_sizes[-1]), dtype=model.dtype)
    # fastbp at its defaults: under --threads 1 the variables set above limit it to one
    made = {"fastbp": lambda: model.predict,
            "fastbp-out": lambda: (lambda X: model.predict(X, out=out)),
            "onnxrt": lambda: onnx_runner(model, threads, folder),
            "torch": lambda: torch_runner(model, threads),
            "numpy": lambda: numpy_chain(model),
            "fastbp-sklearn": lambda: estimator_runner(model, "fastbp"),
            "sklearn": lambda: estimator_runner(model, "sklearn")}
    found = {}
    for name in wanted:
        try:
            found[name] = made[name]()
        except ImportError as error:
            print(f"# {name} skipped: {error}", file=sys.stderr)
    return found


def measure(run_of, X, seconds, rounds, settle=0.0, cpu=None):
    """{name: sorted per-call times in ns}; the systems take turns, `rounds` times, with a
    pause of `settle` seconds before each turn (and before the warm-up of each system).
    `cpu`, a dict, receives {name: (CPU seconds, wall seconds) of its turns}."""
    import numpy as np
    times = {name: [] for name in run_of}
    for run in run_of.values():                 # warm up, and size a turn
        time.sleep(settle)
        run(X)
    # a turn's calls from the first system's calls over 20 ms (one call could be its
    # first on more threads, which starts them)
    time.sleep(settle)
    first, count, start = run_of[next(iter(run_of))], 0, time.perf_counter()
    while time.perf_counter() - start < 0.02:
        first(X)
        count += 1
    one = max((time.perf_counter() - start) / count, 1e-6)
    calls = int(max(20, min(20000, seconds / rounds / one)))
    for _ in range(rounds):
        for name, run in run_of.items():
            time.sleep(settle)
            record = times[name]
            clock = time.perf_counter_ns
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                begin = clock()
                run(X)
                record.append(clock() - begin)
            if cpu is not None:
                used, took = cpu.get(name, (0.0, 0.0))
                cpu[name] = (used + time.process_time() - c0, took + time.perf_counter() - t0)
    return {name: np.sort(np.array(values)) for name, values in times.items()}


def concurrent_rates(model, X, n_threads, seconds):
    """(calls/s on one thread, calls/s of n_threads threads predicting at once on the same
    model), fastbp's predict of X, about `seconds` each."""
    return concurrent_call_rates(lambda: model.predict(X), n_threads, seconds)


def python_stand_in(seconds):
    """A pure-Python function taking about `seconds` a call (it holds the GIL throughout):
    what CPython's own switching among threads costs at that length."""
    def work(n):
        total = 0
        for i in range(n):
            total += i
        return total
    n = 64
    while True:
        start = time.perf_counter()
        for _ in range(100):
            work(n)
        took = (time.perf_counter() - start) / 100
        if took >= seconds or n > 1 << 24:
            return lambda: work(n)
        n = max(n + 1, int(n * min(4.0, seconds / max(took, 1e-9))))


def concurrent_call_rates(call, n_threads, seconds):
    """(calls/s of call() on one thread, calls/s of n_threads threads calling it at once),
    about `seconds` each (the threads share out as many calls as one thread made): long
    enough to count what choices made on the calls (fastbp's GIL rule) cost while they
    are measured."""
    import threading
    for _ in range(100):
        call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            call()
        calls += 100
    alone = calls / (time.perf_counter() - start)
    calls = max(100, calls // n_threads)
    barrier = threading.Barrier(n_threads + 1)

    def serve():
        barrier.wait()
        for _ in range(calls):
            call()
    threads = [threading.Thread(target=serve) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return alone, n_threads * calls / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every library (0: each library's default)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512, 4096])
    parser.add_argument("--networks", nargs="+", default=DEFAULT_NETWORKS, choices=NETWORKS)
    parser.add_argument("--sparse", type=int, default=0, metavar="NNZ",
                        help="X as a CSR matrix of NNZ stored values a row (scipy.sparse; "
                             "onnxrt and torch, which take dense input only, are left out)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS,
                        default=["fastbp", "fastbp-out", "onnxrt", "torch", "numpy"])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="time per system per shape, about")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                        help="pause before each system's turn (default: 0.25 s with "
                             "--threads 0, else 0): at their defaults the libraries' own "
                             "threads spin for a while after a call (OpenBLAS's for up to "
                             "about 0.1 s), and would take a core from the next turn's "
                             "system and from the defaults it measures")
    parser.add_argument("--concurrent", type=int, default=0, metavar="N",
                        help="instead: fastbp's calls/s on one thread and on N threads "
                             "sharing one model")
    parser.add_argument("--gil", nargs="+", default=None, choices=("measure", "hold", "release"),
                        help="with --concurrent: compare these rules for the GIL around a "
                             "one-thread pass (FASTBP_GIL; measure: chosen on the calls, "
                             "the default), a new model for each, in turn")
    args = parser.parse_args(argv)
    for option, value, low in (("--threads", args.threads, 0), ("--rounds", args.rounds, 1),
                               ("--concurrent", args.concurrent, 0),
                               ("--sparse", args.sparse, 0), ("--rows", min(args.rows), 1)):
        if value < low:
            parser.error(f"{option} must be >= {low}; got {value}")
    if not 0 < args.seconds < float("inf"):
        parser.error(f"--seconds must be a finite number > 0; got {args.seconds}")
    if args.settle is not None and not 0 <= args.settle < float("inf"):
        parser.error(f"--settle must be a finite number >= 0; got {args.settle}")
    if args.sparse and not args.concurrent and all(name in DENSE_ONLY
                                                   for name in args.systems):
        parser.error(f"--sparse: none of --systems {' '.join(args.systems)} takes sparse "
                     f"rows ({', '.join(sorted(DENSE_ONLY))} are dense only)")
    _limit_threads(args.threads)
    settle = args.settle if args.settle is not None else (0.25 if args.threads == 0 else 0.0)

    import numpy as np
    import fastbp
    from fastbp import _core
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare import (OVERSUBSCRIBED, UNDERSUBSCRIBED, openblas_warning, oversubscribed,
                         undersubscribed)
    if openblas_warning():
        print("# " + openblas_warning())

    if args.concurrent:
        print(f"# fastbp predict, calls per second: one thread, then {args.concurrent} "
              f"threads on one model"
              + (f"; X: CSR, {args.sparse} stored values a row" if args.sparse else ""))
        for network in args.networks:
            sizes, activations = NETWORKS[network]
            for n_rows in args.rows:
                X = inputs(n_rows, sizes[0], args.sparse)
                for rule in args.gil or [None]:
                    label = ""
                    if rule is not None:
                        os.environ[_core.GIL_VARIABLE] = rule
                        label = f" | GIL: {rule}"
                    # a new model: its choices are made on these calls alone
                    model = fastbp.MLP(sizes, activations, dtype="float32", seed=0)
                    alone, together = concurrent_rates(model, X, args.concurrent, args.seconds)
                    gil = None           # the choice the calls made, where one was
                    if rule == "measure" and args.sparse:
                        gil = model._gil_choice(True, n_rows)
                    elif rule == "measure" and n_rows <= _core.PREDICTOR_ROWS \
                            and model._predictor is not None:
                        gil = model._predictor.gil_choice(n_rows)
                    if gil is not None and gil.chosen is not None:
                        label += (f" (chose {'release' if gil.chosen else 'hold'}: "
                                  f"{gil.rates[0]:.0f} against {gil.rates[1]:.0f} calls/s)")
                    print(f"{network:>11} {n_rows:5d} | 1 thread {alone:10.0f}/s | "
                          f"{args.concurrent} threads {together:10.0f}/s "
                          f"x{together / alone:4.2f}{label}", flush=True)
                # the same length of pure Python: what the interpreter's switching costs
                python_alone, python_together = concurrent_call_rates(
                    python_stand_in(1 / alone), args.concurrent, args.seconds)
                print(f"{'':>11} {'':5} | pure-Python function of the same length: "
                      f"x{python_together / python_alone:4.2f}", flush=True)
        return

    print(f"# threads: {args.threads or 'default'}; times per call in us: median (p99); "
          f"x: median / the median of fastbp (or of the first system, without it); "
          f"cpu/wall: CPU time / wall time of its turns (* under {UNDERSUBSCRIBED:g} x threads, "
          f"! over {OVERSUBSCRIBED:g} x threads)"
          + (f"; X: CSR, {args.sparse} stored values a row" if args.sparse else ""))
    with tempfile.TemporaryDirectory() as folder:
        for network in args.networks:
            sizes, activations = NETWORKS[network]
            model = fastbp.MLP(sizes, activations, dtype="float32", seed=0)
            for n_rows in args.rows:
                X = inputs(n_rows, sizes[0], args.sparse)
                wanted = [name for name in args.systems
                          if not (args.sparse and name in DENSE_ONLY)]
                run_of = runners(model, n_rows, args.threads, folder, wanted)
                reference = model.predict(X)
                for name, run in run_of.items():   # every system computes the same thing
                    np.testing.assert_allclose(run(X), reference, rtol=1e-4, atol=1e-5,
                                               err_msg=name)
                cpu = {}
                times = measure(run_of, X, args.seconds, args.rounds, settle, cpu)
                base = np.median(times["fastbp" if "fastbp" in times else next(iter(times))])
                cells = []
                for name, values in times.items():
                    median, p99 = np.median(values) / 1e3, np.percentile(values, 99) / 1e3
                    share = {"threads": args.threads, "cpu_over_wall": cpu[name][0] / cpu[name][1]}
                    share["cpu_over_wall_max"] = share["cpu_over_wall"]
                    marks = ("*" if undersubscribed(share) else "") + \
                        ("!" if oversubscribed(share) else "")
                    cells.append(f"{name} {median:8.1f} ({p99:7.1f}) x{median * 1e3 / base:4.2f}"
                                 f" cpu/wall {share['cpu_over_wall']:.2f}{marks}")
                print(f"{network:>11} {n_rows:5d} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
