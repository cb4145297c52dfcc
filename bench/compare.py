"""Side-by-side training (and predict) throughput of fastbp and its peers.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py --quick
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py --json out.json

Each (workload, library, thread count) runs in a subprocess of its own (this script's
``--worker`` mode), so no two BLAS / OpenMP runtimes share a process.  A worker builds the data
and the model, sets its BLAS threads (threadpoolctl, torch.set_num_threads), warms up, then
times windows of whole epochs, each window at least --duration seconds long, and reports every
window's samples/s; the table shows the median of --repeats windows.  See bench/README.md.
"""

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import workloads  # noqa: E402

DEFAULT_PEERS = "fastbp,numpy,torch,sklearn"
RESULT_TAG = "@@FASTBP_BENCH_RESULT "
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# --stand-in avx2: every library of the run held to AVX2 (with FMA) on a CPU that has
# AVX-512, so that one machine stands in for an AVX2 one: OpenBLAS's Haswell kernels
# (NumPy, SciPy and so fastbp's BLAS), fastbp's kernels of every kind (_core.kernel_level),
# NumPy's own loops (its X86_V4 group and later are AVX-512), and PyTorch's (ATen's
# kernels, MKL's GEMMs, oneDNN's).
STAND_INS = {"avx2": {"OPENBLAS_CORETYPE": "Haswell", "FASTBP_KERNEL_ISA": "avx2",
                      "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
                      "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                      "ONEDNN_MAX_CPU_ISA": "AVX2"}}

# fastbp's goals as ratios to the peers, 1 thread (bench/README.md, "The goals")
GOAL_RATIOS = {
    "W1": {"torch": 3.4, "numpy": 1.5},
    "W2": {"torch": 1.6, "numpy": 1.3},
    "W3": {"torch": 80.0, "numpy": 10.0},
    "W4": {"torch": 1.4, "numpy": 1.02},
    "W5": {"torch": 3.0, "numpy": 1.3},
    "P1": {"torch": 2.0, "numpy": 1.5},
}
# bench/README.md's goals of fastbp against the machine: (the GEMM, percent of its rate)
GOAL_OF_CEILING = {"W1": ("sgemm", 80), "W2": ("sgemm", 80), "W4": ("sgemm", 90),
                   "W5": ("dgemm", 80)}
DEFAULT_DURATION = 2.0   # seconds per timed window of a goal run
SHORT_RUN = "short run: goals not judged"


def openblas_warning():
    """The warning to print where OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set (None where
    neither is): every benchmark's figures assume both unset (bench/README.md)."""
    if any(os.environ.get(v) is not None for v in OPENBLAS_VARS):
        return ("WARNING: OpenBLAS variables are set; benchmarks should run with "
                "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`")
    return None


def _maxrss_mib():
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ============================================================================= worker side

def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture",
            "threading_layer", "filepath")
    pools = [{k: d.get(k) for k in keys} for d in threadpool_info()]
    return sorted(pools, key=lambda d: (str(d["internal_api"]), str(d["filepath"])))


def _measure(run, units_per_call_unit, duration, repeats, warmup):
    """Time ``run(k)`` (k epochs, or k predict calls): warm up, calibrate k so that one call
    takes >= duration seconds, then time `repeats` such windows.  Returns
    (windows [(k, seconds, units/s)], calibration info)."""
    # warm-up, doubling k; the last warm-up call estimates the time per unit
    k, spent, calls = 1, 0.0, 0
    while True:
        t0 = time.perf_counter()
        run(k)
        dt = time.perf_counter() - t0
        spent += dt
        calls += 1
        # two calls at least, unless the first one was long (a whole epoch of W1 or W4)
        if spent >= warmup and (calls >= 2 or dt >= max(1.0, 2 * warmup)):
            break
        if spent >= warmup + 4 * duration:
            break
        if dt < warmup / 2:
            k *= 2
    per_unit = dt / k
    k = max(1, math.ceil(1.05 * duration / per_unit))
    windows, discarded = [], 0
    while len(windows) < repeats:
        c0 = time.process_time()
        t0 = time.perf_counter()
        run(k)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if dt < duration and discarded < 10:
            # too short (the estimate included warm-up effects): grow k, discard the window
            discarded += 1
            k = max(k + 1, math.ceil(k * 1.1 * duration / dt))
            continue
        # cpu_seconds / seconds well under the thread count means the CPU was shared
        windows.append({"units": k, "seconds": dt, "cpu_seconds": cpu,
                        "rate": k * units_per_call_unit / dt})
    return windows, {"warmup_seconds": spent, "warmup_calls": calls,
                     "discarded_windows": discarded}


CEILING_SIZE = 2048  # square GEMM for the machine's ceiling


def ceiling_worker(args):
    """GFLOP/s of one large square GEMM (the machine's ceiling) in float32 and float64,
    through numpy's BLAS (np.matmul) and through scipy's (scipy.linalg.blas, the library
    that scipy.linalg.cython_blas and so fastbp call: scipy ships its own OpenBLAS)."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    out = {"library": "gemm", "workload": "ceiling", "threads": args.threads, "status": "ok",
           "size": CEILING_SIZE, "gflops": {}, "windows": {}}
    limiter = threadpool_limits(limits=args.threads) if args.threads else None
    try:
        from scipy.linalg import blas as sblas
    except ImportError:
        sblas = None
    n = CEILING_SIZE
    rng = np.random.default_rng(0)
    flop = 2.0 * n ** 3
    for dtype, prefix in (("float32", "s"), ("float64", "d")):
        A = rng.standard_normal((n, n)).astype(dtype)
        B = rng.standard_normal((n, n)).astype(dtype)
        C = np.empty((n, n), dtype)
        calls = {"numpy": lambda: np.matmul(A, B, out=C)}
        if sblas is not None:
            gemm = getattr(sblas, prefix + "gemm")
            Cf = np.asfortranarray(C)
            calls["scipy"] = lambda: gemm(1.0, A.T, B.T, c=Cf, overwrite_c=True)
        for which, call in calls.items():
            windows, _ = _measure(lambda k: [call() for _ in range(k)], flop / 1e9,
                                  max(0.3, args.duration / 4), args.repeats, 0.2)
            out["gflops"][f"{prefix}gemm {which}"] = float(np.median(
                [w["rate"] for w in windows]))
            out["windows"][f"{prefix}gemm {which}"] = windows
    out["blas"] = _blas_info()
    if limiter is not None:
        limiter.unregister()
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


def worker(args):
    """Run one library on one workload; print one JSON result line tagged RESULT_TAG."""
    if args.worker == "gemm":
        return ceiling_worker(args)
    t_start = time.perf_counter()
    import numpy as np
    import peers

    wl = workloads.get(args.workload)
    if args.samples and wl.name != "P1":
        wl = wl.with_samples(min(wl.n_samples, args.samples))
    out = {"library": args.worker, "workload": wl.name, "threads": args.threads,
           "status": "ok", "pid": os.getpid(),
           "env": {v: os.environ.get(v) for v in OPENBLAS_VARS + THREAD_VARS},
           "loadavg_start": _loadavg()}
    rss = out["maxrss_mib"] = {"start": _maxrss_mib()}
    limiter = None
    try:
        predict = wl.name == "P1"
        table = peers.PREDICT if predict else peers.TRAIN
        if args.worker not in table:
            raise peers.Unavailable(f"no {'predict' if predict else 'train'} runner")
        X, y = workloads.make_data(wl, seed=args.seed)
        rss["data"] = _maxrss_mib()
        out["data_mib"] = (X.nbytes + y.nbytes) / 2**20
        if predict:
            runner = peers.PREDICT[args.worker](wl, X, threads=args.threads, seed=args.seed)
        else:
            runner = peers.TRAIN[args.worker](wl, X, y, threads=args.threads, seed=args.seed)
        rss["model"] = _maxrss_mib()
        if args.threads:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(limits=args.threads)

        if predict:
            def run(k):
                for _ in range(k):
                    runner.predict()
            units = wl.n_samples                      # rows per predict call
        else:
            run = runner.run
            units = wl.n_samples                      # samples per epoch
        windows, calib = _measure(run, units, args.duration, args.repeats, args.warmup)
        rates = sorted(w["rate"] for w in windows)
        cpu_share = sorted(w["cpu_seconds"] / w["seconds"] for w in windows)
        out.update(windows=windows, calibration=calib,
                   cpu_over_wall=float(np.median(cpu_share)),
                   cpu_over_wall_max=cpu_share[-1],
                   median=float(np.median(rates)), min=rates[0], max=rates[-1],
                   unit="rows/s" if predict else "samples/s",
                   versions=runner.versions(), blas=_blas_info())
        if args.gemm_floor and args.worker == "fastbp" and hasattr(runner, "gemm_floor"):
            try:            # (its failure is reported beside fastbp's figures, not for them)
                floor = runner.gemm_floor()      # (None: the fit's row workers have none)
                if floor is not None:
                    floor_windows, _ = _measure(floor, units, args.duration, args.repeats,
                                                args.warmup)
                    out["gemm_floor"] = float(np.median([w["rate"] for w in floor_windows]))
            except Exception as exc:
                out["gemm_floor_error"] = f"{type(exc).__name__}: {exc}"
        if hasattr(runner, "thread_choice"):
            out["thread_choice"] = list(runner.thread_choice())
        if hasattr(runner, "n_classes_seen"):
            out["n_classes_seen"] = runner.n_classes_seen
        rss["end"] = _maxrss_mib()
    except peers.Unavailable as exc:
        out.update(status="unavailable", reason=str(exc))
    except Exception as exc:  # report, do not hide: the parent prints it
        import traceback
        out.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc())
    finally:
        if limiter is not None:
            limiter.unregister()
    out["wall_seconds"] = time.perf_counter() - t_start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime   # the whole worker, all threads
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


# ============================================================================= parent side

def _lscpu_model():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info():
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_model": _lscpu_model(),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def run_worker(library, workload, threads, args):
    env = workloads.worker_environment(os.environ)
    if threads:
        for var in THREAD_VARS:
            env[var] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", library,
           "--workload", workload, "--threads", str(threads), "--duration", str(args.duration),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--seed",
           str(args.seed), "--samples", str(args.samples or 0)]
    if not args.gemm_floor:
        cmd.append("--no-gemm-floor")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.cwd,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"library": library, "workload": workload, "threads": threads,
                "status": "error", "reason": f"timed out after {args.timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            break
    else:
        result = {"library": library, "workload": workload, "threads": threads,
                  "status": "error", "reason": f"worker exited {proc.returncode} without a "
                  f"result; stderr tail: {proc.stderr[-2000:]}"}
    result["returncode"] = proc.returncode
    result["subprocess_seconds"] = time.perf_counter() - t0
    if proc.stderr.strip():
        result["stderr_tail"] = proc.stderr[-2000:]
    return result


def _fmt_rate(r):
    if r is None:
        return "n/a"
    if r >= 1e6:
        return f"{r / 1e6:.2f}M"
    if r >= 1e4:
        return f"{r / 1e3:.0f}k"
    return f"{r:,.0f}"


# CPU time over threads x wall time above this means a run used more threads than its row
# says (the margin absorbs the clocks' granularity and the interpreter's own threads).
OVERSUBSCRIBED = 1.03


def oversubscribed(res):
    """True if some timed window of the run took more CPU time than threads x wall time."""
    threads = res.get("threads") or 0
    return bool(threads) and res.get("cpu_over_wall_max", 0.0) > OVERSUBSCRIBED * threads


def fewer_threads(res):
    """True if fastbp ran a fixed-thread row on fewer threads than the row says (its rule
    for a step too short to split: fastbp._threads.threads_of)."""
    choice, threads = res.get("thread_choice"), res.get("threads") or 0
    return bool(choice and threads) and choice[0] * choice[1] < threads


# CPU time under this x threads x wall time means a run used fewer cores than its row says.
UNDERSUBSCRIBED = 0.9


def undersubscribed(res):
    """True if the run's CPU time says it used well under the cores its row says (shared
    cores, or a library that ran fewer threads); measured against the threads fastbp said it
    chose where it chose fewer (the `<` mark), at every fixed thread count."""
    threads = res.get("threads") or 0
    if fewer_threads(res):
        threads = res["thread_choice"][0] * res["thread_choice"][1]
    return bool(threads) and res.get("cpu_over_wall", threads) < UNDERSUBSCRIBED * threads


def _cell(res):
    if res is None or res.get("status") != "ok":
        return "n/a"
    spread = (res["max"] - res["min"]) / res["median"] * 100 if res["median"] else 0
    marks = ("*" if undersubscribed(res) else "") + ("!" if oversubscribed(res) else "") + \
        ("<" if fewer_threads(res) else "")
    return f"{_fmt_rate(res['median'])} ±{spread / 2:.0f}%{marks}"


def _scaling(by, wl, threads):
    """fastbp at `threads` over fastbp at 1 thread, in the same run."""
    one, many = by.get((wl, "fastbp", 1)), by.get((wl, "fastbp", threads))
    if not (one and many and one.get("status") == "ok" and many.get("status") == "ok"):
        return "n/a"
    return f"{many['median'] / one['median']:.2f}x"


def _default_vs_best(by, wl, threads_list):
    """fastbp at its default (threads 0) over its best fixed thread count, in the same run."""
    default = by.get((wl, "fastbp", 0))
    fixed = [by.get((wl, "fastbp", t)) for t in threads_list if t]
    fixed = [r for r in fixed if r and r.get("status") == "ok"]
    if not (default and default.get("status") == "ok" and fixed):
        return "n/a"
    best = max(fixed, key=lambda r: r["median"])
    text = f"{default['median'] / best['median']:.2f}x of {best['threads']}"
    if default.get("thread_choice"):   # (row workers, BLAS threads, split) it chose
        workers, blas, split = default["thread_choice"]
        way = ("rows", "inputs", "hidden")[int(split)]   # _threads.BY_ROWS, ...
        text += f" (ran {workers} {way})" if workers > 1 else f" (ran {blas} BLAS)"
    return text


def short_run(args, wl):
    """True if `wl` ran shorter than its goal run: fewer rows (--samples; P1 keeps its own)
    or windows shorter than the default --duration.  Its goals are not judged."""
    samples = getattr(args, "samples", 0)
    fewer = bool(samples) and wl != "P1" and wl in workloads.ALL and \
        samples < workloads.ALL[wl].n_samples
    return fewer or (args.duration or DEFAULT_DURATION) < DEFAULT_DURATION


def print_report(results, libraries, wl_names, threads_list, args, file=sys.stdout):
    by = {(r["workload"], r["library"], r["threads"]): r for r in results}
    p = lambda *a: print(*a, file=file)  # noqa: E731
    env_vals = {v: os.environ.get(v) for v in OPENBLAS_VARS}
    p("")
    p(f"fastbp bench/compare.py   machine: {machine_info()['cpu_model']}, "
      f"{os.cpu_count()} CPUs   duration >= {args.duration} s x {args.repeats} windows "
      f"(median; ± = half the min-max spread)")
    p("  " + "  ".join(f"{k}={v if v is not None else '<unset>'}" for k, v in env_vals.items()))
    if args.load_before:
        p(f"  load average (1 min) before {args.load_before[0]:.2f}, after "
          f"{args.load_after[0]:.2f} (includes this run's own workers)")
        if args.load_before[0] > 0.5:
            p("  WARNING: the machine was busy before the run; figures are low")
    stand_in = getattr(args, "stand_in", None)     # (a report of a run before it)
    if stand_in:
        p(f"  {stand_in.upper()} stand-in (--stand-in): "
          + " ".join(f"{k}={v}" for k, v in STAND_INS[stand_in].items()))
    elif openblas_warning():
        p("  " + openblas_warning())
    others = [lib for lib in libraries if lib != "fastbp"]
    for threads in threads_list:
        p("")
        p(f"threads = {threads or 'library default'}   (samples/s for W*, rows/s for P1)")
        floors = {wl: (by.get((wl, "fastbp", threads)) or {}).get("gemm_floor")
                  for wl in wl_names}
        show_floor = any(floors.values())
        show_scaling = "fastbp" in libraries and threads not in (0, 1) and 1 in threads_list
        show_default = ("fastbp" in libraries and threads == 0
                        and any(t for t in threads_list))
        head = ["workload"] + libraries
        if show_scaling:
            head += [f"fastbp {threads}/1"]
        if show_default:
            head += ["fastbp default/best"]
        if show_floor:
            head += ["GEMMs alone", "fastbp/GEMMs"]
        if "fastbp" in libraries:
            head += [f"fastbp/{o}" for o in others]
        rows = [head]
        for wl in wl_names:
            row = [wl] + [_cell(by.get((wl, lib, threads))) for lib in libraries]
            if show_scaling:
                row.append(_scaling(by, wl, threads))
            if show_default:
                row.append(_default_vs_best(by, wl, threads_list))
            fb = by.get((wl, "fastbp", threads))
            fb_ok = bool(fb and fb.get("status") == "ok")
            floor = floors[wl] if fb_ok else None
            if show_floor:
                row += [_fmt_rate(floor), f"{fb['median'] / floor:.0%}" if floor else "n/a"]
            if "fastbp" in libraries:
                for o in others:
                    peer = by.get((wl, o, threads))
                    if fb_ok and peer and peer.get("status") == "ok":
                        ratio = fb["median"] / peer["median"]
                        goal = GOAL_RATIOS.get(wl, {}).get(o) if threads == 1 else None
                        notes = []
                        if goal and short_run(args, wl):
                            notes.append(SHORT_RUN)
                        elif goal:
                            notes.append(f"{'ok' if ratio >= goal else 'goal'} {goal:g}x")
                        if floor:   # what fastbp would reach if only its GEMMs cost time
                            notes.append(f"bound {floor / peer['median']:.2f}x")
                        row.append(f"{ratio:.2f}x" + (f" ({', '.join(notes)})" if notes else ""))
                    else:
                        row.append("n/a")
            rows.append(row)
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        for i, r in enumerate(rows):
            p("  " + "  ".join(str(c).rjust(w) if j else str(c).ljust(w)
                               for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0:
                p("  " + "  ".join("-" * w for w in widths))
    if any(r.get("gemm_floor") for r in results):
        p("  GEMMs alone: fastbp's own matrix products of plain-SGD training, same calls, nothing")
        p("  else (_core.gemm_floor); bound = GEMMs alone / peer, the most any overhead cut can give")
    if any(undersubscribed(r) for r in results if r.get("status") == "ok"):
        p(f"  * CPU time under {UNDERSUBSCRIBED:g} x threads x wall time (with `<`: the threads "
          f"fastbp chose): fewer cores than the row says")
        p("    were busy (cores shared with other work, or a library ran fewer threads)")
    for r in results:
        if r.get("status") == "ok" and fewer_threads(r):
            workers, blas, _ = r["thread_choice"]
            p(f"  < {r['workload']} {r['library']} at {r['threads']} threads ran on "
              f"{workers * blas}: fastbp runs a step too short to split on one thread")
    if any(oversubscribed(r) for r in results if r.get("status") == "ok"):
        p(f"  ! CPU time over {OVERSUBSCRIBED:g} x threads x wall time in some window: the run "
          f"used more threads than its row says")
    p("")
    p("CPU time / wall time of the timed windows (median, max; <= threads when honest):")
    for r in results:
        if r.get("status") == "ok" and "cpu_over_wall_max" in r:
            p(f"  {r['workload']:3s} {r['library']:16s} threads={r['threads']}: "
              f"{r['cpu_over_wall']:.2f}, {r['cpu_over_wall_max']:.2f}"
              f"{'  OVER' if oversubscribed(r) else '  UNDER' if undersubscribed(r) else ''}")
    for threads, c in sorted(getattr(args, "ceilings", {}).items()):
        p("")
        if c.get("status") != "ok":
            p(f"GEMM ceiling, threads={threads}: {c.get('status')}: {c.get('reason', '')}")
            continue
        p(f"GEMM ceiling ({c['size']}^3, threads={threads or 'default'}, GFLOP/s): " +
          ", ".join(f"{k} {v:.0f}" for k, v in c["gflops"].items()))
        for name, (gemm, goal) in GOAL_OF_CEILING.items():
            ceiling = c["gflops"].get(f"{gemm} scipy") or c["gflops"].get(f"{gemm} numpy")
            fb = by.get((name, "fastbp", threads))
            if ceiling and fb and fb.get("status") == "ok":
                gf = fb["median"] * workloads.WORKLOADS[name].flops_per_sample / 1e9
                judged = f"({SHORT_RUN})" if short_run(args, name) else f"(goal >= {goal}%)"
                p(f"  {name} fastbp: {gf:.0f} GFLOP/s = {100 * gf / ceiling:.0f}% of the "
                  f"{gemm} ceiling {judged}")
    # BLAS / thread pools per library, and failures
    p("")
    p("thread pools seen by each worker (threadpoolctl.threadpool_info):")
    seen = set()
    for r in results:
        if r.get("status") != "ok":
            continue
        pools = "; ".join(
            f"{b.get('internal_api')} {b.get('version')} {b.get('architecture') or ''} "
            f"threads={b.get('num_threads')}".replace("  ", " ")
            for b in sorted(r.get("blas", []), key=lambda b: str(b.get("filepath"))))
        key = (r["library"], r["threads"], pools)
        if key in seen:
            continue
        seen.add(key)
        vers = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        p(f"  {r['library']:8s} threads={r['threads']}: {pools or 'none'}   [{vers}]")
    p("")
    p("peak memory (ru_maxrss MiB: after data / after model / end):")
    for r in results:
        m = r.get("maxrss_mib", {})
        if r.get("status") == "ok":
            p(f"  {r['workload']:3s} {r['library']:8s} t={r['threads']}: "
              f"{m.get('data', 0):7.0f} {m.get('model', 0):7.0f} {m.get('end', 0):7.0f}")
    bad = [r for r in results if r.get("status") != "ok"]
    if bad:
        p("")
        p("not measured:")
        for r in bad:
            p(f"  {r['workload']} {r['library']} threads={r['threads']}: {r['status']}: "
              f"{r.get('reason', '')}".rstrip())
            if args.verbose and r.get("traceback"):
                p(r["traceback"])
    floors = [r for r in results if r.get("gemm_floor_error")]
    if floors:
        p("")
        p("GEMMs alone not measured (the workload's own figures stand):")
        for r in floors:
            p(f"  {r['workload']} {r['library']} threads={r['threads']}: "
              f"{r['gemm_floor_error']}")


def write_png(results, libraries, wl_names, threads_list, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not importable: {path} not written", file=sys.stderr)
        return False
    by = {(r["workload"], r["library"], r["threads"]): r for r in results}
    cols = [(wl, t) for t in threads_list for wl in wl_names]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols)), 4.5))
    width = 0.8 / max(1, len(libraries))
    for i, lib in enumerate(libraries):
        xs, ys = [], []
        for j, (wl, t) in enumerate(cols):
            r = by.get((wl, lib, t))
            if r and r.get("status") == "ok":
                xs.append(j + i * width)
                ys.append(r["median"])
        ax.bar(xs, ys, width, label=lib)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))])
    ax.set_xticklabels([f"{wl}\n{t or 'default'} thr" for wl, t in cols])
    ax.set_yscale("log")
    ax.set_ylabel("samples/s (rows/s for P1), log scale")
    ax.set_title("fastbp vs peers: steady-state training throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def parent(args):
    if args.stand_in:       # the workers and the ceiling's measurement inherit them
        os.environ.update(STAND_INS[args.stand_in])
    if args.quick:
        wl_names = args.workloads or ["W1", "W3"]
        if args.duration is None:
            args.duration = 0.5
        if args.warmup is None:
            args.warmup = 0.3
    else:
        wl_names = args.workloads or list(workloads.WORKLOADS)
    if args.duration is None:
        args.duration = DEFAULT_DURATION
    if args.warmup is None:
        args.warmup = max(0.5, args.duration / 2)
    if args.predict and "P1" not in wl_names:
        wl_names = wl_names + ["P1"]
    wl_names = [workloads.get(w).name for w in wl_names]
    if args.ceiling is None:
        args.ceiling = "W4" in wl_names
    libraries = args.peers
    threads_list = args.threads
    args.cwd = HERE

    results = []
    args.load_before = _loadavg()
    if args.load_before and args.load_before[0] > 0.5:
        print(f"warning: load average {args.load_before[0]:.2f} before the run: other work on "
              f"this machine will lower every figure", file=sys.stderr)
    t0 = time.perf_counter()
    import peers
    ceilings = {}
    for threads in threads_list:
        if args.ceiling:
            print(f"[{time.perf_counter() - t0:6.1f}s] GEMM ceiling threads={threads} ...",
                  file=sys.stderr, flush=True)
            ceilings[threads] = run_worker("gemm", "ceiling", threads, args)
        for wl in wl_names:
            for lib in libraries:
                if wl == "P1" and lib not in peers.PREDICT:
                    continue
                print(f"[{time.perf_counter() - t0:6.1f}s] {wl} {lib} threads={threads} ...",
                      file=sys.stderr, flush=True)
                r = run_worker(lib, wl, threads, args)
                results.append(r)
                msg = (f"{_fmt_rate(r['median'])} {r['unit']}" if r.get("status") == "ok"
                       else f"{r['status']}: {r.get('reason', '')[:200]}")
                print(f"          -> {msg}", file=sys.stderr, flush=True)

    args.load_after = _loadavg()
    args.ceilings = ceilings
    print_report(results, libraries, wl_names, threads_list, args)

    if args.json:
        doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "command": [sys.executable] + sys.argv,
               "settings": {"workloads": wl_names, "peers": libraries,
                            "threads": threads_list, "duration": args.duration,
                            "repeats": args.repeats, "warmup": args.warmup,
                            "seed": args.seed, "quick": args.quick,
                            "samples": args.samples, "gemm_floor": args.gemm_floor,
                            "stand_in": args.stand_in},
               "machine": machine_info(),
               "loadavg_before": args.load_before, "loadavg_after": args.load_after,
               "env": {v: os.environ.get(v) for v in OPENBLAS_VARS + THREAD_VARS},
               "workloads": {w: workloads.get(w).__dict__ for w in wl_names},
               "goal_ratios": GOAL_RATIOS,
               "gemm_ceiling": ceilings,
               "results": results,
               "total_seconds": time.perf_counter() - t0}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.png:
        if write_png(results, libraries, wl_names, threads_list, args.png):
            print(f"wrote {args.png}", file=sys.stderr)
    failed = [r for r in [*results, *ceilings.values()] if r.get("status") == "error"]
    if failed:             # (a peer that is not installed is "unavailable", not a failure)
        print(f"{len(failed)} run(s) failed: see the report above", file=sys.stderr)
    return 1 if failed else 0


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def _seconds(text):
    """An argparse type: a finite number of seconds > 0 (inf made the warm-up endless)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds; got {text!r}") \
            from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _path(text):
    if not text:            # (an empty name wrote nothing, silently)
        raise argparse.ArgumentTypeError("must name a file")
    return text


def _at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
        return value
    return parse


def _names(what, known, upper=False, refused=None):
    """An argparse type: a comma list of names out of `known`, each once (a repeated name
    ran twice and the table showed its last run twice)."""
    def parse(text):
        names = [n.upper() if upper else n for n in _csv(text)]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}")
        for name in names:
            if refused and name in refused:
                raise argparse.ArgumentTypeError(f"{name}: {refused[name]}")
            if name not in known:
                raise argparse.ArgumentTypeError(
                    f"unknown {what[:-1]} {name!r}; known: {', '.join(known)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise argparse.ArgumentTypeError(f"{', '.join(twice)} given twice")
        return names
    return parse


def _thread_list(text):
    """An argparse type: a comma list of distinct thread counts >= 0 (0 = default)."""
    counts = [_at_least(0)(t) for t in _csv(text)]
    if not counts:
        raise argparse.ArgumentTypeError("expected a comma list of thread counts")
    twice = sorted({t for t in counts if counts.count(t) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, twice))} given twice")
    return counts


def main(argv=None):
    import peers
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=None,
                    type=_names("workloads", list(workloads.ALL), upper=True, refused={
                        "S1": "its peers and data are bench/sparse_input.py's"}),
                    help="comma list of W1..W5, P1 (default: W1-W5; --quick: W1,W3)")
    ap.add_argument("--threads", type=_thread_list, default=[1],
                    help="comma list of BLAS thread counts, 0 = each library's default "
                         "(default: 1)")
    ap.add_argument("--duration", type=_seconds, default=None,
                    help="minimum seconds per timed window (default 2; --quick 0.5)")
    ap.add_argument("--repeats", type=_at_least(1), default=3, help="timed windows (default 3)")
    ap.add_argument("--warmup", type=_seconds, default=None,
                    help="minimum warm-up seconds (default max(0.5, duration/2))")
    ap.add_argument("--quick", action="store_true",
                    help="W1 and W3 with 0.5 s windows: under a minute")
    ap.add_argument("--predict", action="store_true", help="add P1 (predict, 100,000 rows)")
    ap.add_argument("--peers", default=_csv(DEFAULT_PEERS),
                    type=_names("peers", list(dict(peers.TRAIN, **peers.PREDICT))),
                    help=f"comma list of libraries (default {DEFAULT_PEERS})")
    ap.add_argument("--json", type=_path, help="write all figures to this JSON file")
    ap.add_argument("--png", type=_path, help="write a bar chart (needs matplotlib)")
    ap.add_argument("--ceiling", action="store_true", default=None,
                    help="also measure the GEMM ceiling (default: when W4 is run)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    ap.add_argument("--stand-in", choices=sorted(STAND_INS), default=None,
                    help="hold every library to this instruction set (STAND_INS): an AVX2 "
                         "machine's figures on an AVX-512 one")
    ap.add_argument("--samples", type=_at_least(0), default=0,
                    help="train on at most this many rows a workload (shorter epochs for a "
                         "time-boxed run; 0 = each workload's own)")
    ap.add_argument("--no-gemm-floor", dest="gemm_floor", action="store_false",
                    help="skip the fastbp worker's GEMMs-alone timing (halves its time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=_seconds, default=900, help="seconds per worker")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
