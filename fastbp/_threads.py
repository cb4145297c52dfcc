"""BLAS threads: how many a pass should use, and applying that for its duration only."""
from __future__ import annotations

import contextlib
import os
import threading

from threadpoolctl import ThreadpoolController

# A step below this many floating-point operations runs faster on one BLAS thread: a
# second thread costs more in synchronisation than it saves. Measured (docs/performance.md):
# W1 (2e7 flops a step) loses a quarter of its speed on two threads, W2 (5e8) gains 1.8x.
MULTITHREAD_MIN_FLOPS_PER_STEP = 1e8

MAX_THREADS = 1024

_controller = None       # threadpoolctl's view of the loaded BLAS libraries
_limiter = None          # the limit in force while passes run
_active = 0              # passes running inside blas_threads
_lock = threading.Lock()


def thread_count(layer_sizes, rows_per_step: int, n_threads=None, backward=True) -> int:
    """n_threads if given, else 1 for small steps and every available core for large ones.

    A step's matrix products cost 2 flops per weight and row forward, 4 more backward."""
    if n_threads is not None:
        return int(n_threads)
    flops_per_weight = 6.0 if backward else 2.0
    flops = flops_per_weight * rows_per_step * sum(
        a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    if flops < MULTITHREAD_MIN_FLOPS_PER_STEP:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextlib.contextmanager
def blas_threads(n_threads: int):
    """Limit every loaded BLAS to n_threads for the duration of a pass.

    Passes that overlap (fits or predicts on several Python threads) share one limit: the
    first sets it and the last puts the original setting back, so the process is left as
    it was found whatever order they end in. The controller (a scan of the loaded
    libraries, milliseconds) is made once; a limit then costs microseconds.
    """
    global _controller, _active, _limiter
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
        if _active == 0:
            _limiter = _controller.limit(limits=n_threads, user_api="blas")
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _limiter.restore_original_limits()
                _limiter = None
