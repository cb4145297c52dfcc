"""Online training speed: samples per second of Trainer.fit with batches of a few rows.

    python bench/online.py                                  # this checkout, kernels on/off
    python bench/online.py --builds ../other-checkout .     # before/after, in one run
    python bench/online.py --batch 1 2 4 8 --networks 20-64-64-1 784-128-10

One thread (OPENBLAS_NUM_THREADS=1, n_threads=1), plain SGD, MSE on random targets, one
epoch over --samples rows (sized for about a second at batch 1). Each measurement runs
in a fresh process with the build's folder first on PYTHONPATH, so builds of fastbp
(another checkout, or this one under FASTBP_FEW_ROWS=0: every product BLAS's) take
turns in the same run, --rounds times; reported: the best samples/s of each, and its
ratio to the first column's. Compare within one run: the machine's load moves them all.
"""
import argparse
import json
import os
import subprocess
import sys
import time

NETWORKS = {
    "20-64-64-1": ([20, 64, 64, 1], "relu"),
    "784-128-10": ([784, 128, 10], "relu"),
}


def worker(network, batch_size, dtype, samples):
    """Samples per second of one epoch (after a short warm-up fit), printed as JSON."""
    import numpy as np
    import fastbp
    sizes, activation = NETWORKS[network]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((samples, sizes[0])).astype(dtype)
    Y = rng.standard_normal((samples, sizes[-1])).astype(dtype)
    model = fastbp.MLP(sizes, activation, dtype=dtype, seed=0)
    trainer = fastbp.Trainer("mse", "sgd", learning_rate=1e-4, batch_size=batch_size,
                             epochs=1, seed=0, n_threads=1)
    trainer.fit(model, X[:1000], Y[:1000])
    start = time.perf_counter()
    trainer.fit(model, X, Y)
    seconds = time.perf_counter() - start
    print(json.dumps({"rate": samples / seconds, "file": fastbp.__file__}))


def measure(build, kernels_off, network, batch_size, dtype, samples):
    from workloads import worker_environment
    env = dict(worker_environment(os.environ), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", PYTHONPATH=os.path.abspath(build))
    if kernels_off:
        env["FASTBP_FEW_ROWS"] = "0"
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", network, str(batch_size),
         dtype, str(samples)], env=env, cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{build}: the measurement failed:\n{result.stderr}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    expected = os.path.join(os.path.abspath(build), "fastbp")
    if os.path.dirname(found["file"]) != expected:
        raise RuntimeError(f"{build}: imported {found['file']}, not {expected}")
    return found["rate"]


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        network, batch_size, dtype, samples = sys.argv[2:6]
        worker(network, int(batch_size), dtype, int(samples))
        return
    from compare import _at_least
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", nargs="+", default=[here],
                        help="checkouts of fastbp with the extension built (the last one "
                             "is also run under FASTBP_FEW_ROWS=0)")
    parser.add_argument("--batch", type=_at_least(1), nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--networks", nargs="+", default=["20-64-64-1"], choices=NETWORKS)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--samples", type=_at_least(0), default=0,
                        help="rows of an epoch (0: 400,000 for 20-64-64-1, 40,000 for "
                             "784-128-10)")
    parser.add_argument("--rounds", type=_at_least(1), default=3)
    args = parser.parse_args(argv)
    columns = [(build, False) for build in args.builds] + [(args.builds[-1], True)]
    names = [os.path.basename(os.path.abspath(build)) + (" FEW_ROWS=0" if off else "")
             for build, off in columns]
    print(f"# one thread, {args.dtype}, plain SGD, MSE; best samples/s of {args.rounds} "
          f"rounds (x: over the first column)")
    print("network      batch | " + " | ".join(f"{name:>24}" for name in names))
    for network in args.networks:
        samples = args.samples or (400_000 if network == "20-64-64-1" else 40_000)
        for batch_size in args.batch:
            best = [0.0] * len(columns)
            for _ in range(args.rounds):
                for k, (build, off) in enumerate(columns):
                    best[k] = max(best[k], measure(build, off, network, batch_size,
                                                   args.dtype, samples))
            cells = [f"{rate:>15,.0f} x{rate / best[0]:5.2f}" for rate in best]
            print(f"{network:>11} {batch_size:6d} | " + " | ".join(f"{c:>24}" for c in cells),
                  flush=True)


if __name__ == "__main__":
    main()
