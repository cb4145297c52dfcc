"""BLAS threads: how many a pass should use, and applying that for its duration only."""
from __future__ import annotations

import os
import threading

from threadpoolctl import ThreadpoolController

# A step below this many floating-point operations runs faster on one BLAS thread: a
# second thread costs more in synchronisation than it saves. Measured (docs/performance.md):
# W1 (2e7 flops a step) loses a quarter of its speed on two threads, W2 (5e8) gains 1.8x.
MULTITHREAD_MIN_FLOPS_PER_STEP = 1e8

_controller = None
_controller_lock = threading.Lock()


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


def blas_threads(n_threads: int):
    """A context manager limiting every loaded BLAS to n_threads.

    The controller (a scan of the loaded libraries, milliseconds) is made once; each limit
    then costs microseconds. fastbp's BLAS (scipy's) is loaded when fastbp is imported.
    """
    global _controller
    with _controller_lock:
        if _controller is None:
            _controller = ThreadpoolController()
    return _controller.limit(limits=n_threads, user_api="blas")
