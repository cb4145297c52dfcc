"""How long os.fork takes while another thread trains: fastbp's fork guard at work.

A fork waits for fastbp's products that may run on several BLAS threads to end
(csrc/fork_guard.h, docs/robustness.md): at most the product each other thread is in. This
times `--forks` forks of a child that exits at once, with no fit beside them (alone),
beside a fit on one BLAS thread (one: its products are not waited for; its thread shares
the cores) and beside a fit on 2 BLAS threads (blas: FASTBP_SPLIT=blas, every product of
its steps on 2 BLAS threads), each in its own process, and prints the median and the
longest milliseconds of os.fork in the parent. Run with the OpenBLAS variables unset, like
every benchmark:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/fork_latency.py
"""
import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare import _at_least, openblas_warning  # noqa: E402

MODES = ("alone", "one", "blas")
LAYER_SIZES = [512, 1024, 1024, 10]
BATCH_SIZE = 256


def worker(mode, n_forks):
    """The milliseconds of each fork, beside the fit `mode` says."""
    import numpy as np
    import fastbp

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2048, LAYER_SIZES[0])).astype(np.float32)
    y = rng.integers(0, LAYER_SIZES[-1], X.shape[0])
    stop = threading.Event()

    def fitting(n_threads):
        model = fastbp.MLP(LAYER_SIZES, ["relu", "relu", "softmax"], seed=0)
        while not stop.is_set():
            fastbp.Trainer("cce", epochs=1, batch_size=BATCH_SIZE, n_threads=n_threads,
                           seed=0).fit(model, X, y)

    if mode != "alone":
        threading.Thread(target=fitting, args=(2 if mode == "blas" else 1,),
                         daemon=True).start()
        time.sleep(1.0)             # past the fit's first measurements
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # fork with threads (3.12+)
        for _ in range(n_forks):
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            times.append((time.perf_counter() - started) * 1e3)
            os.waitpid(pid, 0)
            time.sleep(0.03)
    stop.set()
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=_at_least(1), default=25)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        times = worker(args.worker, args.forks)
        print(f"{statistics.median(times):.2f} {max(times):.2f}", flush=True)
        os._exit(0)                 # (the fitting thread is a daemon: no wait for its epoch)
    if openblas_warning():
        print(openblas_warning())
    print(f"os.fork in the parent, {args.forks} forks, {'-'.join(map(str, LAYER_SIZES))} "
          f"float32 on {BATCH_SIZE}-row batches beside it; load "
          f"{os.getloadavg()[0]:.2f}")
    for mode in args.modes.split(","):
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        env = dict(os.environ, FASTBP_SPLIT="blas", FASTBP_KERNELS="blas")
        result = subprocess.run([sys.executable, __file__, "--worker", mode,
                                 "--forks", str(args.forks)],
                                env=env, capture_output=True, text=True, timeout=600)
        if result.returncode:
            print(f"  {mode:>5}: failed: {result.stderr.strip()[-500:]}")
            continue
        median, longest = result.stdout.split()
        print(f"  {mode:>5}: median {median} ms, longest {longest} ms")


if __name__ == "__main__":
    main()
