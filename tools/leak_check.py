"""Leak check of the compiled extension under LeakSanitizer (run by tools/sanitize.sh).

Runs many fit / predict / gradients / save / load / loss cycles through the sanitizer build,
then asks LeakSanitizer, while the interpreter is still alive, for every heap block that
nothing points to any more (a mid-run check: CPython's own blocks are still reachable then,
unlike at exit). With PYTHONMALLOC=malloc every Python object is a malloc block, so it is
scanned as a root. A leaked block whose allocation stack passes through fastbp's extension
fails the check; other reports (none are expected) are printed but do not fail it.

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc \
    ASAN_OPTIONS=detect_leaks=1:leak_check_at_exit=0 python tools/leak_check.py
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
import tempfile
import warnings

import numpy as np


def exercise(directory: str, rounds: int) -> None:
    import fastbp

    rng = np.random.default_rng(0)
    for round_ in range(rounds):
        for dtype in ("float32", "float64"):
            X = rng.normal(size=(67, 5)).astype(dtype)
            labels = rng.integers(0, 3, size=67)
            model = fastbp.MLP([5, 8, 7, 3], ["relu", "tanh", "softmax"], dtype=dtype,
                               seed=round_)
            trainer = fastbp.Trainer("cce", learning_rate=0.05, epochs=2, batch_size=16,
                                     seed=round_)
            trainer.fit(model, X, labels)
            fastbp.Trainer("mse", epochs=1, batch_size=8, shuffle=False).fit(
                model, X, np.eye(3)[labels])
            model.predict(X)
            model.gradients(X, labels, "cce")
            model.gradients(X, np.eye(3)[labels], "bce")
            path = os.path.join(directory, f"model-{dtype}.fbp")
            model.save(path)
            fastbp.load(path)
            fastbp.MLP.from_bytes(model.to_bytes())
            for name in ("mse", "mae", "bce", "cce"):
                loss = fastbp.losses.get(name)
                loss.value(np.eye(3)[labels], model.predict(X))
                loss.gradient(np.eye(3)[labels], model.predict(X))
            # plans of many shapes (each model and each pass allocates its plan's arrays)
            for depth in range(1, 12):
                fastbp.MLP([4] * (depth + 1), ["tanh"] * (depth - 1) + ["identity"],
                           dtype=dtype).predict(X[:depth, :4])
            # error paths: refused input, damaged files, a diverging fit
            for bad in (np.full((3, 5), np.nan), np.ones((3, 4))):
                try:
                    model.predict(bad)
                except ValueError:
                    pass
            try:
                fastbp.MLP.from_bytes(model.to_bytes()[:-1])
            except ValueError:
                pass
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fastbp.Trainer("mse", learning_rate=1e30, epochs=2, batch_size=4).fit(
                    model, X * 1e3, np.eye(3)[labels])
            core_error_paths(model, X, labels)


def core_error_paths(model, X, labels) -> None:
    """The core's refusals: plans and calls whose sizes do not fit, and an epoch that stops
    on a label rewritten mid-fit (each raises after allocating or acquiring buffers)."""
    import fastbp
    from fastbp import _core

    relu = _core.ACTIVATION_CODES["relu"]
    for arguments in (([5, 8], [relu, relu], 4), ([5, "wide", 3], [relu, relu], 4)):
        try:
            _core.Plan(*arguments)
        except (ValueError, TypeError):
            pass
    plan, work = model._workspace(8)
    try:
        _core.predict(plan, model._params, work, X, np.empty((len(X) - 1, 3), model.dtype))
    except ValueError:
        pass
    spoiled = labels.astype(np.intp)

    class SpoilLabels(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            spoiled[3] = 10**9

    # a fresh model: the one exercised may hold the huge weights of the diverging fit above
    # (its first epoch can end finite), and a fit that diverges in its first epoch stops
    # before the rewritten label is read
    fresh = fastbp.MLP(list(model.layer_sizes), list(model.activations), dtype=model.dtype,
                       seed=1)
    try:
        fastbp.Trainer("cce", epochs=3, batch_size=16).fit(fresh, X, spoiled,
                                                             callbacks=[SpoilLabels()])
    except ValueError:
        pass
    else:
        raise AssertionError("a label rewritten out of range was not refused")


def lsan_check(log_prefix: str) -> int:
    """Runs LeakSanitizer now; returns how many leak reports name the extension."""
    runtime = ctypes.CDLL(None)
    try:
        set_path = runtime.__sanitizer_set_report_path
        check = runtime.__lsan_do_recoverable_leak_check
    except AttributeError:
        print("leak_check.py: no LeakSanitizer runtime loaded (LD_PRELOAD libasan?)",
              file=sys.stderr)
        return -1
    set_path(log_prefix.encode())
    gc.collect()
    check()
    reports = []
    directory, prefix = os.path.split(log_prefix)
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix):
            with open(os.path.join(directory, name)) as stream:
                reports.append(stream.read())
    text = "\n".join(reports)
    blocks = re.split(r"\n(?=(?:Direct|Indirect) leak of )", text)
    ours = [b for b in blocks if re.match(r"(Direct|Indirect) leak", b.lstrip())
            and "_core" in b]
    others = [b for b in blocks if re.match(r"(Direct|Indirect) leak", b.lstrip())
              and "_core" not in b]
    for block in ours:
        print(block, file=sys.stderr)
    summary = re.search(r"SUMMARY: .*", text)
    print(f"leak_check.py: {len(ours)} leak report(s) through the extension, "
          f"{len(others)} elsewhere" + (f" ({summary.group(0)})" if summary else ""))
    return len(ours)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as directory:
        exercise(directory, rounds)
        found = lsan_check(os.path.join(directory, "lsan"))
    if found < 0:
        return 2
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
