"""Does fastbp.dask.fit pay? Scaling and accuracy per pass on a LocalCluster here.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dask_scaling.py
        # both parts (a few minutes on 2 cores)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dask_scaling.py --part scaling
        # 1 vs 2 workers, 784-512-512-10
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dask_scaling.py --part accuracy
        # rounds to the single-process accuracy
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dask_scaling.py --part gridsearch
        # GridSearchCV: sequential vs Dask backend

scaling: 784-512-512-10 on 30,000 rows (W2's model and settings: plain SGD 0.01, batch 128,
linear-teacher data from workloads.py) in 2 chunks, `--rounds` epochs (one round each, and
again K rounds each: `--rounds-per-epoch`), on a LocalCluster of 1 and of 2 worker
processes of 1 thread each, otherwise default settings (n_threads=None,
averaging="block_momentum"); against Trainer.fit on one process with n_threads=2 for the
same epochs. Reported: wall time of the fit (the data already in the
cluster, as after loading it there, and fastbp imported on the workers), speedup over 1
worker, held-out accuracy after the same epochs, the CPU seconds of this process (the
driver, and the LocalCluster's scheduler, which runs in it) and of the workers during the
fit, the placement (rows per worker), and the
time a round spends not training (the fit's time less, in each round, its busiest worker's
seconds in the compiled loop, per round: starting the copies, scheduling, the sums, the
averaging, the driver's part where the next round does not hide it); with `--curve`, also
the held-out accuracy after every epoch of one process and of the chunks (untimed).
With `--repeats N`, N rounds of the three fits in turn (both clusters up throughout), then
the medians of the times and of each round's ratios.

accuracy: 50-128-10, 10 classes, plain SGD 0.05, batch 32, on `--accuracy-rows` rows (+ 20,000
held out). One process trains 20 epochs; fastbp.dask.fit with K = 2, 4, 8 chunks
(`--chunk-counts`) trains 25 passes over the data (1.25x the epochs; `--passes`) with each
averaging rule (`--averaging`), averaging once per pass (`rounds_per_epoch=1`) or K times
per pass (`rounds_per_epoch=K`; `--rounds-per-epoch` picks); reported: held-out accuracy
after 20 and 25 passes, the first pass after which it reaches the single process's
accuracy after 20 epochs, and the fit's wall time. Two data sets: "linear" (labels from a
random linear teacher, workloads.py) and "nonlinear" (labels from a random tanh network
with noise; still improving after 20 epochs, the harder case for averaging). The results
do not depend on the cluster (they are bit-identical on any placement); the cluster only
sets the time.

gridsearch: scikit-learn's GridSearchCV over fastbp.sklearn.MLPClassifier with two 512-wide
hidden layers (784 inputs, 10 classes, `--grid-rows` rows of W2's data, adam, 5 epochs, 4
candidates x 3 folds = 12 fits), default settings (n_threads=None): once sequential in this
process (n_jobs=None: each fit takes the measured default threads), once with n_jobs=-1 under
joblib's Dask backend on a LocalCluster of 2 worker processes x 1 thread (each fit then sees
Dask's OPENBLAS_NUM_THREADS=1 and runs on one thread), `--repeats` times in turn. Reported:
the wall time of each search split into its fits and scoring as timed inside the fits
(cv_results_, per worker), the refit on all rows and the rest (dispatch, transfers,
scheduling); the CPU seconds of this process and of the workers during the search; one fit
of a fold's rows alone on 1 thread and on the default (the most two 1-thread workers can
gain); the ratio of the times and whether both chose the same best parameters.

The machine may be shared: run it on a quiet one, and read times as such.
"""

import argparse
import importlib
import os
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def cluster(n_workers):
    import distributed
    with warnings.catch_warnings():
        # (a scheduler serves HTTP even without its dashboard, on 8787 unless another
        # cluster of this process holds it, and then says so)
        warnings.filterwarnings("ignore", message="Port 8787 is already in use")
        local = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                         processes=True, dashboard_address=None,
                                         host="127.0.0.1")
    return local, distributed.Client(local)


def rounds_per_epoch_values(args, chunks):
    """`--rounds-per-epoch` as numbers, "K" standing for the chunk count."""
    return [chunks if value == "K" else int(value) for value in args.rounds_per_epoch.split(",")]


def accuracy(model, X, y):
    return float(np.mean(model.predict(X).argmax(axis=1) == y))


def scaling(args):
    import fastbp

    work = workloads.get("W2").with_samples(args.rows + 5_000)
    X_all, y_all = workloads.make_data(work, seed=0)
    X, y, X_test, y_test = X_all[:args.rows], y_all[:args.rows], X_all[args.rows:], \
        y_all[args.rows:]

    def new_model():
        return fastbp.MLP(list(work.layer_sizes), work.activations, seed=0)

    def new_trainer(**kwargs):
        return fastbp.Trainer(workloads.LOSS, learning_rate=workloads.LEARNING_RATE,
                              batch_size=work.batch_size, seed=0, **kwargs)

    print(f"scaling: {'-'.join(map(str, work.layer_sizes))} on {args.rows:,} rows in "
          f"{args.chunks} chunks, {args.rounds} epochs, batch {work.batch_size}; "
          f"{args.repeats} round(s) of one process, then 1 and 2 workers")
    # Untimed: a fit that makes (and caches on disk, for the workers too) fastbp's one-off
    # measurement of this network's and batch's thread choice, which a fresh machine would
    # otherwise time in the single process only
    new_trainer(epochs=1, n_threads=2).fit(new_model(), X[:2_000], y[:2_000])

    def single_fit():
        model = new_model()
        cpu = time.process_time()
        started = time.perf_counter()
        new_trainer(epochs=args.rounds, n_threads=2).fit(model, X, y)
        seconds = time.perf_counter() - started
        print(f"  Trainer.fit, 1 process, n_threads=2: {seconds:6.2f} s   "
              f"accuracy {accuracy(model, X_test, y_test):.4f}   "
              f"CPU s {time.process_time() - cpu:.2f}", flush=True)
        return seconds

    rows = -(-args.rows // args.chunks)
    per_epochs = rounds_per_epoch_values(args, args.chunks)
    # Both clusters stay up for every round (an idle one costs nothing), so that each
    # round times one process and the workers minutes apart: on a shared machine a ratio
    # of times taken far apart measures the machine.
    clusters = {n_workers: ScalingCluster(n_workers, X, y, rows) for n_workers in (1, 2)}
    try:
        results = []      # per round and rounds_per_epoch: (one process, 1 worker, 2 workers)
        for repeat in range(args.repeats):
            for per_epoch in per_epochs:
                if args.repeats > 1:
                    print(f" round {repeat + 1}, rounds_per_epoch={per_epoch}:")
                else:
                    print(f"  rounds_per_epoch={per_epoch}:")
                single = single_fit()
                times = {n: clusters[n].fit(args, per_epoch, new_model, new_trainer,
                                            X_test, y_test) for n in (1, 2)}
                print(f"  speedup {times[1] / times[2]:4.2f}x; 2 workers / Trainer.fit("
                      f"n_threads=2): {times[2] / single:4.2f}x the time", flush=True)
                results.append((per_epoch, single, times[1], times[2]))
    finally:
        # newest first: each LocalCluster puts back, as it closes, the log level it found
        for each in reversed(clusters.values()):
            each.close()
    if args.repeats > 1:
        for per_epoch in per_epochs:
            mine = [r[1:] for r in results if r[0] == per_epoch]
            single, one, two = (statistics.median(column) for column in zip(*mine))
            print(f"  rounds_per_epoch={per_epoch}, medians of {args.repeats} rounds: one "
                  f"process {single:.2f} s, 1 worker {one:.2f} s, 2 workers {two:.2f} s; "
                  f"speedup {statistics.median(o / t for _, o, t in mine):4.2f}x (per-round "
                  f"ratios {', '.join(f'{o / t:.2f}' for _, o, t in mine)}); 2 workers / one "
                  f"process {statistics.median(t / s for s, _, t in mine):4.2f}x the time "
                  f"({', '.join(f'{t / s:.2f}' for s, _, t in mine)})")
    if args.curve:
        accuracy_curve(args, X, y, X_test, y_test, new_model, new_trainer, rows)


class ScalingCluster:
    """A LocalCluster of `n_workers` processes x 1 thread holding the data in chunks of
    `rows` rows, fastbp imported on its workers: what the clock leaves out."""

    def __init__(self, n_workers, X, y, rows):
        import dask.array as da
        import distributed
        self.n_workers = n_workers
        self.local, self.client = cluster(n_workers)
        self.client.wait_for_workers(n_workers)
        with warnings.catch_warnings():     # (the data goes in with the graph, untimed)
            warnings.filterwarnings("ignore", message="Sending large graph")
            self.X = self.client.persist(da.from_array(X, chunks=(rows, -1)))
            self.y = self.client.persist(da.from_array(y, chunks=rows))
        distributed.wait([self.X, self.y])
        self.client.run(importlib.import_module, "fastbp.dask")

    def fit(self, args, per_epoch, new_model, new_trainer, X_test, y_test):
        """One timed fastbp.dask.fit of a new model on the data (its line printed); its
        seconds."""
        import fastbp.dask
        model = new_model()
        cpu = _cpu_seconds()
        started = time.perf_counter()
        history = fastbp.dask.fit(model, new_trainer(epochs=args.rounds), self.X, self.y,
                                  client=self.client, rounds_per_epoch=per_epoch)
        seconds = time.perf_counter() - started
        cpu = {role: used - cpu[role] for role, used in _cpu_seconds().items()}
        # Rounds overlap on the driver (the next is submitted before one ends), so
        # the fit's time less its most loaded worker's training in each round.
        idle = (seconds - sum(max(_per_worker(trained).values())
                              for trained in history.placement)) / len(history.placement)
        rows_per_worker = _per_worker(history.placement[-1], "rows")
        print(f"  fastbp.dask.fit, {self.n_workers} worker(s) x 1 thread: {seconds:6.2f} s   "
              f"accuracy {accuracy(model, X_test, y_test):.4f}   "
              f"not training per round {idle:.3f} s   "
              f"CPU s: driver {cpu['driver']:.2f}, workers {cpu['workers']:.2f}   "
              f"rows per worker {sorted(rows_per_worker.values())}   "
              f"threads {sorted({t.threads for t in history.placement[-1].values()})}",
              flush=True)
        return seconds

    def close(self):
        self.client.close()
        self.local.close()


def accuracy_curve(args, X, y, X_test, y_test, new_model, new_trainer, rows):
    """The held-out accuracy after each epoch: one process against fastbp.dask.fit on
    `--chunks` chunks with each `--rounds-per-epoch` (untimed, on dask's local scheduler:
    the results are those of any cluster, bit for bit), and from which epoch on the gap
    stays within 0.005."""
    import dask.array as da
    import fastbp.dask

    validation = (X_test, y_test)
    single = new_trainer(epochs=args.rounds, n_threads=2).fit(
        new_model(), X, y, validation_data=validation).history["val_accuracy"]
    for per_epoch in rounds_per_epoch_values(args, args.chunks):
        spread = fastbp.dask.fit(
            new_model(), new_trainer(epochs=args.rounds), da.from_array(X, chunks=(rows, -1)),
            da.from_array(y, chunks=rows), rounds_per_epoch=per_epoch,
            validation_data=validation).history["val_accuracy"][per_epoch - 1::per_epoch]
        gaps = [a - b for a, b in zip(single, spread)]
        within = next((i + 1 for i in range(len(gaps))
                       if all(abs(g) <= 0.005 for g in gaps[i:])), None)
        print(f"  held-out accuracy after each epoch (one process / {args.chunks} chunks, "
              f"rounds_per_epoch={per_epoch} / gap):")
        for epoch, (a, b, g) in enumerate(zip(single, spread, gaps), 1):
            print(f"    {epoch:3d}  {a:.4f}  {b:.4f}  {g:+.4f}")
        print(f"  the gap stays within 0.005 from epoch {within or '-'} of {args.rounds}")


def gridsearch(args):
    import warnings

    import joblib
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV
    import fastbp.sklearn

    warnings.filterwarnings("ignore", category=ConvergenceWarning)   # 5 epochs on purpose

    work = workloads.get("W2").with_samples(args.grid_rows)
    X, y = workloads.make_data(work, seed=0)
    estimator = fastbp.sklearn.MLPClassifier(hidden_layer_sizes=(512, 512), max_iter=5,
                                             random_state=0)
    grid = {"alpha": [1e-4, 1e-3], "learning_rate_init": [1e-3, 3e-3]}
    print(f"gridsearch: 784-512-512-10 on {args.grid_rows:,} rows, 4 candidates x 3 folds, "
          f"5 epochs each, default threads; {args.repeats} round(s) of sequential, then Dask")
    fold_rows = args.grid_rows * 2 // 3

    def alone(n_threads):
        """Seconds of one fit of a fold's rows in this process (no cluster running)."""
        started = time.perf_counter()
        clone(estimator).set_params(n_threads=n_threads).fit(X[:fold_rows], y[:fold_rows])
        return time.perf_counter() - started

    clone(estimator).fit(X[:fold_rows], y[:fold_rows])   # untimed, as above (the measurement)
    ratios = []
    for repeat in range(args.repeats):
        cpu = _cpu_seconds()["driver"]
        started = time.perf_counter()
        sequential = GridSearchCV(estimator, grid, cv=3).fit(X, y)
        wall = time.perf_counter() - started
        cpu = _cpu_seconds()["driver"] - cpu
        _report_search("sequential (this process)", sequential, wall, 1)
        print(f"    CPU seconds during the search: {cpu:.2f}", flush=True)
        if repeat == 0:   # the most two 1-thread workers can gain over the default
            one, default = min(alone(1) for _ in range(3)), min(alone(None) for _ in range(3))
            print(f"  one fit of {fold_rows:,} rows alone: n_threads=1 {one:.3f} s, default "
                  f"{default:.3f} s: 2 fits side by side on 1 thread each do at most "
                  f"{2 * default / one:.2f}x the work of one on the default", flush=True)
        local, client = cluster(2)
        try:
            client.wait_for_workers(2)
            client.run(importlib.import_module, "fastbp.sklearn")
            cpu = _cpu_seconds()
            started = time.perf_counter()
            with joblib.parallel_backend("dask"):
                on_dask = GridSearchCV(estimator, grid, cv=3, n_jobs=-1).fit(X, y)
            seconds = time.perf_counter() - started
            cpu = {role: used - cpu[role] for role, used in _cpu_seconds().items()}
        finally:
            client.close()
            local.close()
        _report_search("Dask backend, 2 workers x 1 thread", on_dask, seconds, 2)
        print(f"    CPU seconds during the search: {cpu['driver'] + cpu['workers']:.2f} = this "
              f"process {cpu['driver']:.2f} (the refit, Dask's scheduler and client) + the "
              f"worker processes {cpu['workers']:.2f}", flush=True)
        ratios.append(seconds / wall)
        print(f"  Dask / sequential: {seconds / wall:4.2f}x the time; same best parameters: "
              f"{on_dask.best_params_ == sequential.best_params_}", flush=True)
    if args.repeats > 1:
        print(f"  Dask / sequential over {args.repeats} rounds: "
              f"{' '.join(f'{ratio:.2f}' for ratio in ratios)}")


def _report_search(name, search, wall, parallel):
    """wall time, and how it splits: the fits and their scoring as measured inside the fits
    (cv_results_, summed and divided among the `parallel` workers), the refit on all rows
    in this process, and the rest (dispatch, transfers, scheduling, idle workers)."""
    results = search.cv_results_
    in_fits = float(np.sum(results["mean_fit_time"]) + np.sum(results["mean_score_time"])) \
        * search.n_splits_ / parallel
    per_fit = np.median(results["mean_fit_time"])
    print(f"  {name}: {wall:6.2f} s = fits and scoring {in_fits:.2f} s per worker "
          f"(median fit {per_fit:.3f} s) + refit {search.refit_time_:.2f} s + other "
          f"{wall - in_fits - search.refit_time_:.2f} s   best {search.best_params_}",
          flush=True)


def _cpu_seconds():
    """CPU seconds used so far by this process and by its child processes (the cluster's)."""
    import psutil    # a dependency of distributed
    me = psutil.Process()
    workers = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        workers += times.user + times.system
    times = me.cpu_times()
    return {"driver": times.user + times.system, "workers": workers}


def _per_worker(trained, field="seconds"):
    totals = {}
    for block in trained.values():
        totals[block.worker] = totals.get(block.worker, 0) + getattr(block, field)
    return totals


def accuracy_data(task, n_rows):
    n_all = n_rows + 20_000
    if task == "linear":
        X, y = workloads.make_data(workloads.Workload("A", (50, 128, 10), 32, n_all,
                                                      "float32", ""), seed=0)
    else:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n_all, 50)).astype(np.float32)
        hidden = np.tanh(2 * X @ (rng.standard_normal((50, 64)) / np.sqrt(50)))
        scores = hidden @ rng.standard_normal((64, 10))
        y = np.argmax(scores + 0.3 * rng.standard_normal((n_all, 10)), axis=1)
    return X[:n_rows], y[:n_rows], X[n_rows:], y[n_rows:]


def accuracy_per_pass(args):
    import dask.array as da
    import fastbp
    import fastbp.dask

    epochs = 20
    local, client = cluster(2)
    try:
        for task in args.tasks.split(","):
            X, y, X_test, y_test = accuracy_data(task, args.accuracy_rows)

            def new_model():
                return fastbp.MLP([50, 128, 10], ["relu", "softmax"], seed=0)

            def new_trainer(**kwargs):
                return fastbp.Trainer("cce", learning_rate=0.05, batch_size=32, seed=0,
                                      **kwargs)

            model = new_model()
            started = time.perf_counter()
            history = new_trainer(epochs=epochs, n_threads=1).fit(
                model, X, y, validation_data=(X_test, y_test))
            target = history.history["val_accuracy"][-1]
            print(f"accuracy, {task} task: 50-128-10 on {args.accuracy_rows:,} rows; one "
                  f"process, {epochs} epochs: {target:.4f} "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
            for K in map(int, args.chunk_counts.split(",")):
                rows = -(-args.accuracy_rows // K)
                X_d = client.persist(da.from_array(X, chunks=(rows, -1)))
                y_d = client.persist(da.from_array(y, chunks=rows))
                for averaging in args.averaging.split(","):
                    for per_epoch in rounds_per_epoch_values(args, K):
                        model = new_model()
                        started = time.perf_counter()
                        history = fastbp.dask.fit(
                            model, new_trainer(epochs=args.passes), X_d, y_d,
                            client=client, averaging=averaging, rounds_per_epoch=per_epoch,
                            validation_data=(X_test, y_test))
                        # the held-out accuracy after each pass (its last round)
                        scores = history.history["val_accuracy"][per_epoch - 1::per_epoch]
                        reached = next((i + 1 for i, a in enumerate(scores) if a >= target),
                                       None)
                        print(f"  K={K} {averaging:14s} rounds/epoch {per_epoch}: after "
                              f"{min(epochs, args.passes)} passes "
                              f"{scores[min(epochs, args.passes) - 1]:.4f}  after "
                              f"{args.passes} {scores[-1]:.4f}  reaches {target:.4f} after "
                              f"pass {reached or '-':>2}  "
                              f"({time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        client.close()
        local.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("scaling", "accuracy", "gridsearch", "all"), default="all")
    parser.add_argument("--rows", type=int, default=30_000, help="scaling: training rows")
    parser.add_argument("--chunks", type=int, default=2, help="scaling: chunks of rows")
    parser.add_argument("--rounds", type=int, default=3, help="scaling: epochs")
    parser.add_argument("--curve", action="store_true",
                        help="scaling: also the held-out accuracy after each epoch, one "
                             "process against the chunks (untimed)")
    parser.add_argument("--accuracy-rows", type=int, default=200_000)
    parser.add_argument("--tasks", default="linear,nonlinear",
                        help="accuracy: data sets, comma-separated (linear, nonlinear)")
    parser.add_argument("--passes", type=int, default=25,
                        help="accuracy: passes over the data of each fit (one process: 20)")
    parser.add_argument("--chunk-counts", default="2,4,8",
                        help="accuracy: chunk counts K, comma-separated")
    parser.add_argument("--averaging", default="block_momentum,mean",
                        help="accuracy: averaging rules, comma-separated")
    parser.add_argument("--rounds-per-epoch", default="1,K",
                        help="rounds_per_epoch values to run, comma-separated; K: the "
                             "chunk count")
    parser.add_argument("--grid-rows", type=int, default=6_000, help="gridsearch: rows")
    parser.add_argument("--repeats", type=int, default=1,
                        help="scaling: rounds of one process, 1 worker and 2 workers; "
                             "gridsearch: rounds of sequential then Dask (medians and "
                             "per-round ratios with more than one)")
    args = parser.parse_args()
    # (refused by name here, not as a traceback minutes into a run, or run as another)
    for task in args.tasks.split(","):
        if task not in ("linear", "nonlinear"):
            parser.error(f"--tasks: unknown data set {task!r}; choose from linear, nonlinear")
    for option in ("chunks", "rounds", "repeats"):
        if getattr(args, option, 1) < 1:
            parser.error(f"--{option} must be >= 1; got {getattr(args, option)}")
    for value in args.rounds_per_epoch.split(","):
        if value != "K" and not (value.isdigit() and int(value) >= 1):
            parser.error(f"--rounds-per-epoch: {value!r} is neither a whole number >= 1 "
                         f"nor K")
    if args.part in ("scaling", "all"):
        scaling(args)
    if args.part in ("accuracy", "all"):
        accuracy_per_pass(args)
    if args.part in ("gridsearch", "all"):
        gridsearch(args)


if __name__ == "__main__":
    main()
