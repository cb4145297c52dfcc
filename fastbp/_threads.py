"""BLAS threads: how many a pass should use, and applying that for its duration only."""
from __future__ import annotations

import collections
import ctypes
import functools
import os
import threading
import time

import numpy as np
from threadpoolctl import ThreadpoolController

from fastbp import _core
from fastbp._cache import KeptChoices
from fastbp._products import row_bucket     # (at import: predict's call asks it each time)

MAX_THREADS = 1024

# OpenBLAS cores with small-matrix kernels (kernel/x86_64/KERNEL.SKYLAKEX and the cores
# built on it), as threadpoolctl reports them (openblas_get_corename), lower case.
SMALL_GEMM_CORES = {"skylakex", "cooperlake", "sapphirerapids"}

_controller = None       # threadpoolctl's view of the loaded BLAS libraries
_setters = None          # (get, set) of each BLAS's thread count
_small_gemm = None       # small_gemm_kernels(), once known
_saved = None            # each BLAS's own setting, while passes run, where they changed it
_active = 0              # passes running inside blas_threads
_count = None            # the BLAS thread count they run on
_queue = collections.deque()             # passes waiting for their count, in arrival order
_lock = threading.Lock()                 # guards _controller
_turns_lock = threading.Lock()   # taken directly where only reading: cheaper than _turns
_turns = threading.Condition(_turns_lock)   # guards _active, _count, _saved, _queue
_local = threading.local()               # depth: blas_threads passes open on this thread


def inside_pass() -> bool:
    """Whether this thread is inside a blas_threads pass (a fit's validation, a callback's
    predict): a choice asked for there takes what is kept, or a default, and never
    measures or waits for a measurement's lock (another thread's measurement may itself
    wait for this pass to end: a deadlock)."""
    return getattr(_local, "depth", 0) > 0


# A fit's way of using its threads is a triple (row workers, BLAS threads, split): (1, T,
# BY_ROWS) runs each step on one worker whose products use T BLAS threads; (T, 1, BY_ROWS)
# splits each step by rows among T workers on one BLAS thread each (the products of small
# and medium networks are too small to gain from BLAS threads); (T, 1, BY_INPUTS) does the
# same but splits the first layer's forward product by its inputs, each worker
# multiplying its columns of the batch by the rows of W1 it also steps, so that W1 never
# crosses between cores (on a 2-core Xeon W1 trained 1.18x faster so, W5 1.20x, W2 1.14x,
# W4 1.04x; it costs a barrier more a step, so it is measured, not assumed); (T, 1,
# BY_HIDDEN), for a network of one hidden layer, splits each step by the hidden layer's
# units instead, each worker stepping W1's columns and W2's rows of its units, so that
# neither leaves its core (_core's _hidden_split.pxi).
BY_ROWS, BY_INPUTS, BY_HIDDEN = 0, 1, 2


def split_flags(split) -> dict:
    """train_epoch's keyword arguments for a way's split."""
    return {"split_inputs": split == BY_INPUTS, "split_hidden": split == BY_HIDDEN}


def split_threads(layer_sizes, batch_size: int, n_threads: int, split=BY_ROWS,
                  clipping=False):
    """(row workers, BLAS threads, split) for a fit on n_threads threads split by rows,
    with the first layer split by its inputs (BY_INPUTS: where it has at least n_threads
    inputs) or by the hidden units (BY_HIDDEN: one hidden layer of at least n_threads
    units, and no clipping: its norm over the whole gradient takes the row split), else
    by rows; or (1, n_threads, BY_ROWS) where the batch is too small to give each worker
    rows of its own."""
    if n_threads > 1 and batch_size >= 2 * n_threads:
        if split == BY_INPUTS and layer_sizes[0] < n_threads or split == BY_HIDDEN and (
                len(layer_sizes) != 3 or layer_sizes[1] < n_threads or clipping):
            split = BY_ROWS
        return n_threads, 1, int(split)
    return 1, n_threads, BY_ROWS


def row_workspace(layer_sizes, codes, dropout, batch_size: int, n_workers: int, dtype,
                  allocate=None, split=BY_ROWS, hyperparameters=None, rows=None):
    """The plan and workspace of n_workers row-split workers (None, None for one): each
    worker holds ceil(rows / n_workers) rows (rows: the step's, batch_size unless given)
    and their deltas (and the buffers of the split's first layer; BY_HIDDEN, of the arrays
    the rule of `hyperparameters` uses, None: any rule's). Its products' kernels are chosen
    at batch_size's shapes (a fit of fewer rows than its batch size: trainer.plan_rows's,
    measured once for a few counts, while the rows are shared evenly: worker k takes rows
    from k ceil(rows / T)). allocate(size): the workspace of that many values (default: a
    new array)."""
    if n_workers <= 1:
        return None, None
    from fastbp import _core
    from fastbp.model import check_allocation, few_row_kernels
    from fastbp._products import choose_products, product_isas
    kernels = few_row_kernels()   # a worker's rows take the few-row kernels as a step's do
    rows = batch_size if rows is None else rows
    plan = _core.Plan(list(layer_sizes), list(codes), -(-rows // n_workers),
                      dropout, False, small_gemm_kernels(),
                      0 if kernels == "never" else _core.TRAINING_FEW_ROWS,
                      kernels == "always")
    size = _core.worker_workspace_size(plan, n_workers, **split_flags(split),
                                       hyperparameters=hyperparameters)
    check_allocation(size, dtype, "the workers' workspace")   # before any timing
    if split == BY_HIDDEN and len(layer_sizes) == 3:
        # Split by the hidden units, a worker's products are those of the network of its
        # units alone (n_in x its units x n_out) on the whole batch (the weight gradients
        # in blocks of rows, timed whole here): the worker plan's products are chosen at
        # those shapes, and the workers read only those (on a 2-core Xeon the fit plan's
        # W1 gradient, in 784 x 128 blocks, measured BLAS in one run and the own kernel in
        # another; at 784 x 64, the own kernel).
        units = -(-layer_sizes[1] // n_workers)
        plan.set_product_isas(product_isas((layer_sizes[0], units, layer_sizes[2]),
                                           batch_size, dtype))
    else:
        # Split by its inputs, the first layer's forward product is each worker's partial
        # one (phase B0: all the batch's rows, its share of the inputs, one call) where a
        # network has layers after it (the workers' rows then start from the summed
        # partials): its choice is measured at that shape (on a 2-core Xeon W2's 128 x
        # 512 x 392 ran 1.35x faster in the own kernel than in BLAS, where the whole 128 x
        # 512 x 784 measured BLAS in one run and the own kernel in another).
        inputs_partial = split == BY_INPUTS and len(layer_sizes) > 2
        choose_products(plan, layer_sizes, dtype, first_forward=(
            batch_size, -(-layer_sizes[0] // n_workers)) if inputs_partial else None,
            rows=-(-batch_size // n_workers))
    return plan, np.empty(size, dtype=dtype) if allocate is None else allocate(size)


# ---- the default thread count of a fit, measured on this machine ----

ONE_THREAD = (1, 1, BY_ROWS)
THREADS_VARIABLE = "FASTBP_THREADS"        # pins n_threads=None to this count
_THREADS_LOOKUP = (THREADS_VARIABLE.encode(),)
SPLIT_VARIABLE = "FASTBP_SPLIT"            # one of SPLITS: how a fit's threads are used
CACHE_FILE = "threads.json"
_measured = KeptChoices()                  # key -> the way (split_threads), this process
_measure_lock = threading.Lock()
MEASURE_ATTEMPTS = 4      # measured(): tries that let go of the locks to wait, then one more
MEASURE_WAIT_SECONDS = 0.2   # measured(): the longest wait between two tries


def fit_threads(layer_sizes, codes, batch_size: int, dtype, n_threads=None, clipping=False):
    """(row workers, BLAS threads, split) of a fit (clipping: one that clips its gradient's
    norm). An explicit n_threads (or FASTBP_THREADS, capped by allowed_threads()): that
    many threads, used as threads_of says. Else the fastest of 1..allowed_threads() threads
    (each way) measured on a few steps of this network and batch on this machine. Each
    measured choice is made once per (layer sizes, batch size, dtype, threads, clipping,
    CPU) and kept in memory and in fastbp._cache's threads.json, so the same seed gives the
    same result on this machine from then on (a choice kept by a version that knew no
    inputs split is measured again). FASTBP_SPLIT, when set, leaves the measurement the
    counts of that way only (and is read, so refused when not a way, at every fit)."""
    forced = forced_split()
    if n_threads is not None:
        return threads_of(layer_sizes, codes, batch_size, dtype, int(n_threads), clipping)
    allowed = allowed_threads()
    fixed = _unmeasured_default(allowed)
    if fixed is not None:
        return threads_of(layer_sizes, codes, batch_size, dtype, fixed, clipping)
    return _measured_choice(layer_sizes, codes, batch_size, dtype,
                            _candidates(layer_sizes, batch_size, allowed, clipping, forced),
                            str(allowed) + (f" {forced}" if forced else ""), clipping,
                            unmeasured=ONE_THREAD)


def sparse_fit_threads(n_threads, shares_rows: bool, choices: dict, key):
    """(row pool threads, BLAS threads, SparseThreadChoice or None) of a fit on a sparse X.
    A rule that shares rows (_core.shares_rows): an explicit n_threads is the pool's
    threads; the default is FASTBP_THREADS when set, one thread when the caller allows no
    more, else a SparseThreadChoice kept in `choices` under `key` (the pool's count is then
    chosen epoch by epoch); the other layers' BLAS on one thread. Other rules train on one
    worker, n_threads (1 by default) setting the BLAS threads of the layers after the
    first."""
    if not shares_rows:
        return 1, int(n_threads or 1), None
    if n_threads is not None:
        return int(n_threads), 1, None
    allowed = allowed_threads()
    fixed = _unmeasured_default(allowed)
    if fixed is not None:
        return fixed, 1, None
    choice = choices.get(key)
    if choice is None or choice.allowed != allowed:
        choice = choices[key] = SparseThreadChoice(allowed)
    return 1, 1, choice


class KeptPassThreads:
    """The default thread count of one kept predict plan (MLP._predict_kept), chosen on
    the calls themselves: their outputs do not depend on the count (each chunk is
    computed as on one thread), so no separate measurement is needed. The calls run in
    the phases of a _core.Phases, one thread its option 0 and the caller's allowed count
    option 1, every call timed (a phase's cost: the mean of its calls' seconds a row, not
    a call's best, which a rare fast call on one thread could decide: W1's 16-row call,
    best calls 15.7 against 14.4 us, typical ones 19 against 14; the best phase, past a
    phase that other work hit). A phase's calls come as the caller makes them: back to
    back, the helper threads are awake from the phase's second call on; a call now and
    then wakes them every time, and pays for it. Where the best call of the first phase
    took under min_seconds (SPLIT_MIN_SECONDS unless given) the plan stays on one thread
    for good (handing pieces to other threads has a cost of its own; the best, not the
    first, which meets cold caches). The choice is capped at each call by
    allowed_threads(); a caller's limit of one thread found while measuring is kept as a
    choice of one thread (so a call does not pay for asking the limits each time).
    FASTBP_THREADS pins it. Safe from many threads: a race only delays the choice."""
    def __init__(self, min_seconds=None):
        from fastbp import _core
        self.min_seconds = SPLIT_MIN_SECONDS if min_seconds is None else min_seconds
        self.first_best = float("inf")   # the first phase's best call, in seconds
        self.short = False      # that was under min_seconds: never shared
        self._phases = _core.Phases(False)

    # the phases' options as threads() names them: 1 (one thread) and "allowed"
    TURNS = (1, "allowed")

    @property
    def chosen(self):
        """None while measuring, else 1 or "allowed"."""
        option = self._phases.chosen
        return None if option is None else self.TURNS[option]

    @property
    def phases(self) -> dict:
        """Phases begun on each count since measuring began."""
        return dict(zip(self.TURNS, self._phases.phases_begun))

    @property
    def timed(self) -> dict:
        """Calls timed on each count since measuring began."""
        return dict(zip(self.TURNS, self._phases.calls_timed))

    def threads(self) -> tuple:
        """(threads for this call, the count to record its time under or None)."""
        pinned = pinned_threads()
        if pinned is not None:
            return min(pinned, allowed_threads()), None
        if self.short:
            return 1, None
        now = time.perf_counter()
        phases = self._phases
        if phases.chosen is not None and not phases.due(now):
            return (1 if phases.next(now) == 0 else allowed_threads()), None
        if phases.chosen is not None:
            phases.restart()
        turn_over = phases.turn_over(now)
        if phases.phase == 0 and not turn_over:     # a phase on one thread asks no limit
            return 1, self.TURNS[phases.next(now)]
        if turn_over and not phases.phases_begun[1] and self.first_best < self.min_seconds:
            self.short = True
            return 1, None
        allowed = allowed_threads()
        if allowed == 1:    # the caller's limit: one thread, kept as a measured choice
            phases.keep(0, now)                     # (asking is not free)
            return 1, None
        option = phases.next(now)
        threads = allowed if option == 1 else 1
        return threads, (None if phases.chosen is not None else self.TURNS[option])

    def record(self, turn, seconds: float, n_rows: int) -> None:
        """A call's time on the count of `turn` (as threads() returned it)."""
        option = self.TURNS.index(turn)
        self._phases.record(option, seconds / n_rows)
        if option == 0 and not self._phases.phases_begun[1]:
            self.first_best = min(self.first_best, seconds)


def _unmeasured_default(allowed: int):
    """The default thread count when nothing needs measuring: FASTBP_THREADS (capped by
    `allowed`, the caller's limit) when set, 1 when the caller allows one; else None."""
    pinned = pinned_threads()
    if pinned is not None:
        return min(pinned, allowed)
    return 1 if allowed == 1 else None


class SparseThreadChoice:
    """The default thread count of sparse fits that share rows, chosen on their own epochs.
    Their results do not depend on the count (each row of W1 is stepped the same way on any
    thread), so rather than a separate measurement (which would need the fit's data: a
    sparse step's cost is in the rows its batches name) the first epoch runs on one thread,
    the next on `allowed`, and every later one on whichever trained more samples a second.
    The Trainer keeps it for later fits of the same network, batch and rule."""

    def __init__(self, allowed: int):
        self.allowed = allowed
        self.rates = {}             # threads -> samples a second of the epoch measured

    def next(self) -> int:
        for threads in (1, self.allowed):
            if threads not in self.rates:
                return threads
        return max(self.rates, key=self.rates.get)

    def record(self, threads: int, samples_per_second: float) -> None:
        self.rates.setdefault(threads, samples_per_second)


def threads_of(layer_sizes, codes, batch_size: int, dtype, count: int, clipping=False):
    """A fit on exactly `count` threads: each step split by rows among `count` workers on
    one BLAS thread each (the first layer by rows, by its inputs, or by the hidden units of
    a network of one hidden layer), or one worker whose products use `count` BLAS threads.
    Which: FASTBP_SPLIT ("rows", "inputs", "hidden" or "blas") when set, else whichever
    runs this network and batch faster here (measured once, cached): rows win on small and
    medium layers, BLAS where the products are large. A step that ends in microseconds runs
    on one thread (ONE_THREAD): no way can use a second thread there (see _measure). A
    fit that clips is measured apart, without the hidden split (split_threads)."""
    if count == 1:                   # every way is one thread (a few us a partial_fit call)
        return ONE_THREAD
    ways = {"blas": (1, count, BY_ROWS)}
    for name, split in ROW_SPLITS.items():
        ways[name] = split_threads(layer_sizes, batch_size, count, split, clipping)
    if ways["rows"] == ways["blas"]:
        return ways["blas"]
    forced = forced_split()
    if forced is not None:
        return ways[forced]
    return _measured_choice(layer_sizes, codes, batch_size, dtype,
                            list(dict.fromkeys(ways.values())), f"={count}", clipping,
                            unmeasured=ways["rows"])


SPLITS = ("rows", "inputs", "hidden", "blas")
ROW_SPLITS = {"rows": BY_ROWS, "inputs": BY_INPUTS, "hidden": BY_HIDDEN}   # (by name)


def threads_record(n_workers: int, n_blas_threads: int, split) -> dict:
    """History.threads of an epoch on n_workers workers of n_blas_threads BLAS threads
    each: the thread count and the FASTBP_SPLIT value that pins that way (None for one
    thread, and for a sparse X's epoch, split None, whose bits do not depend on it)."""
    name = None
    if split is not None and n_workers > 1:
        name = next(name for name, code in ROW_SPLITS.items() if code == split)
    elif split is not None and n_blas_threads > 1:
        name = "blas"
    return {"n_threads": n_workers * n_blas_threads, "split": name}


def forced_split():
    """FASTBP_SPLIT as one of SPLITS, or None when unset (anything else is an error)."""
    from fastbp import _core
    return _core.environment_choice(SPLIT_VARIABLE, SPLITS) or None


def _measured_choice(layer_sizes, codes, batch_size, dtype, candidates, threads_label,
                     clipping=False, unmeasured=ONE_THREAD):
    """The measured fastest of `candidates` (cached; see fit_threads). Inside another pass
    on this thread (a fit in a callback of a fit): the choice kept (in memory or in the
    cache file, read without its lock), or `unmeasured`, never a measurement, which would
    time every candidate on that pass's BLAS count (a pass inside another runs on its
    caller's, blas_threads) and keep the answer for good."""
    from fastbp._cache import read_cache, settled
    key = _fit_key(layer_sizes, batch_size, dtype, threads_label, clipping)
    choices = {tuple(choice) for choice in candidates} | {ONE_THREAD}   # a tiny step

    def valid(kept):
        return isinstance(kept, list) and all(type(v) is int for v in kept) \
            and tuple(kept) in choices

    if inside_pass():
        found = _measured.get(key)
        if found is None:
            kept = read_cache(CACHE_FILE).get(key)
            found = tuple(kept) if valid(kept) else unmeasured
        return found

    def measure(wait):
        found = settled(CACHE_FILE, key, valid,
                        lambda: [int(value) for value in
                                 _measure(layer_sizes, codes, batch_size, dtype, candidates,
                                          clipping, wait)])
        _measured[key] = (int(found[0]), int(found[1]), int(found[2]))
        return _measured[key]
    try:
        return measured(_measure_lock, lambda: _measured.get(key), measure)
    except (_core.ThreadsUnavailable, MemoryError):
        # A candidate's threads could not be started (the process out of threads, for
        # now), or its copy of the parameters had no room: this fit takes `unmeasured`,
        # nothing is kept, a later fit measures again. (A default fit failed in its
        # measurement, where it would have chosen one thread, or trained without it.)
        return unmeasured


def measured(lock, known, measure):
    """measure(wait)'s result, made under `lock` (and the cache file's lock it takes)
    unless known() (under `lock`) has it, without waiting there for other threads'
    blas_threads passes: a measurement that waited for a pass on another BLAS count held
    both locks all the while, and every other thread's and process's first measurement
    waited with it. Where a pass is in the way (PassesRunning, with wait=False) the locks
    are let go until the passes end (or MEASURE_WAIT_SECONDS pass: passes that follow each
    other on another count may leave no gap) and it is tried again, the last time waiting
    in blas_threads' queue, which lets it in after the passes running when it asked. A
    measurement inside another on this thread (the product kernels' choice inside
    a fit's) is tried once, waiting as that one does: the outer one lets go of its locks."""
    found = known()     # (kept already: no wait for another thread's measurement)
    if found is not None:
        return found
    inside = getattr(_local, "measure_wait", None)
    for attempt in range(1 if inside is not None else MEASURE_ATTEMPTS):
        wait = inside if inside is not None else attempt == MEASURE_ATTEMPTS - 1
        with lock:
            found = known()
            if found is not None:
                return found
            _local.measure_wait = wait
            try:
                return measure(wait)
            except PassesRunning:
                if inside is not None:
                    raise
            finally:
                _local.measure_wait = inside
        _wait_for_passes_to_end(MEASURE_WAIT_SECONDS)


def pass_threads(layer_sizes, activations, rows: int, dtype, backward: bool) -> tuple:
    """(BLAS threads, sharing threads) by default for a predict, evaluate or gradients pass
    whose chunks hold `rows` rows (backward: a gradients pass). BLAS threads: 1 or
    allowed_threads(), whichever ran a chunk of this network faster on this machine.
    Sharing threads: how many may share a pass's whole chunks, each on one BLAS thread
    (predict_on_workers): allowed_threads() unless a chunk took under SPLIT_MIN_SECONDS on
    one thread (the hand-off would cost more), as a kept predict plan decides its first
    call. Both from one measurement (_measure_pass) of chunks of rows to the next power
    of two (_products.row_bucket: a service predicting every row count from 65 to 2048
    paid a measurement of up to a second at each), made once per (layer sizes, that
    bucket, dtype, kind of pass, threads, CPU) and kept as fit_threads keeps its choices;
    both FASTBP_THREADS, or 1, where nothing needs measuring (_unmeasured_default)."""
    allowed = allowed_threads()
    fixed = _unmeasured_default(allowed)
    if fixed is not None:
        return fixed, fixed
    rows = row_bucket(rows)
    key = _pass_key(tuple(layer_sizes), rows, dtype, backward, allowed,
                    _getenv(_KERNELS_LOOKUPS))
    if inside_pass():
        # Inside another pass on this thread (a fit's validation, a callback's predict):
        # this one runs under that pass's BLAS count whatever it asks (blas_threads), so
        # it takes the count kept for it, or one thread, and never measures. Measuring
        # here would time the caller's count twice, and waiting for _measure_lock here
        # could wait on a measurement in another thread that itself waits for this pass
        # to end (a deadlock two concurrent fits with validation met).
        return _measured.get(key, (1, 1))
    found = _measured.get(key)       # once measured, no lock (a one-chunk predict asks each call)
    if found is not None:
        return found
    from fastbp._cache import settled

    def valid(kept):
        return isinstance(kept, list) and len(kept) == 2 and kept[0] in (1, allowed) \
            and type(kept[0]) is int and isinstance(kept[1], float) and kept[1] >= 0 \
            and kept[1] != float("inf")     # (a hand-edited Infinity passed, changing bits)

    with _measure_lock:
        if key not in _measured:
            inside = getattr(_local, "measure_wait", None)
            _local.measure_wait = False      # the product kernels' choice within it too
            try:
                count, seconds = settled(
                    CACHE_FILE, key, valid,
                    lambda: list(_measure_pass(layer_sizes, activations, rows, dtype,
                                               backward, allowed)))
            except PassesRunning:
                # Another thread's pass holds BLAS's count (a fit, perhaps waiting in a
                # callback for this very call): this call runs on one thread unmeasured,
                # and a later one measures.
                return 1, 1
            finally:
                _local.measure_wait = inside
            _measured[key] = int(count), (allowed if seconds >= SPLIT_MIN_SECONDS else 1)
        return _measured[key]


@functools.lru_cache(maxsize=256)
def _pass_key(layer_sizes: tuple, rows: int, dtype, backward: bool, allowed: int,
              kernel_variables: tuple) -> str:
    """pass_threads' cache key, kept: a one-chunk predict asks on every call, and building
    it (the dtype's name, the CPU's, the formatting, _kernels_label) took 3.4 of the call's
    8.8 us, _kernels_label 4 more. kernel_variables: the raw values of the variables
    _kernels_label reads (_KERNELS_LOOKUPS, 0.2 us), which key the kept label."""
    kind = "gradients" if backward else "forward"
    return _cache_key(layer_sizes, rows, dtype, f"{kind} pass/{allowed}" + _kernels_label())


def pinned_threads():
    """FASTBP_THREADS as a count >= 1, or None when unset; anything else is an error (a
    pin that silently did nothing would be worse)."""
    # C's getenv (it sees os.environ's changes): a kept predict call asks on every call
    value = (_getenv(_THREADS_LOOKUP)[0] or b"").decode(errors="replace").strip()
    if not value:
        return None
    count = _ascii_count(value)
    if count is None or count < 1:
        raise ValueError(f"{THREADS_VARIABLE}={value!r}: it must be a whole number >= 1 (the "
                         f"threads a fit, predict, evaluate or gradients with n_threads=None "
                         f"uses), or unset")
    return min(count, MAX_THREADS)


def _ascii_count(text: str):
    """text's whole number when it is ASCII digits only, else None (str.isdigit takes "²",
    which int() refuses)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _fit_key(layer_sizes, batch_size, dtype, threads_label, clipping=False) -> str:
    """A fit's thread choice's cache key (_measured_choice)."""
    return _cache_key(layer_sizes, batch_size, dtype,
                      threads_label + (" clipping" if clipping else "") + _kernels_label())


# The variables _kernels_label reads (FASTBP_SMALL_GEMM once a process: small_gemm_kernels)
_KERNELS_LOOKUPS = (b"FASTBP_KERNEL_ISA", b"FASTBP_KERNELS", b"OPENBLAS_CORETYPE")


def _kernels_label() -> str:
    """What a measured thread choice (a fit's, a pass's) depends on besides the shape, the
    CPU and the build: the kernels that run it (FASTBP_KERNEL_ISA, FASTBP_KERNELS, the
    small-GEMM cut, OPENBLAS_CORETYPE). A choice timed with the machine's AVX-512 kernels
    was taken for its AVX2 stand-in (bench/compare.py --stand-in avx2)."""
    from fastbp import _products
    return (f" kernels {_products.requested_level() or 'native'}/{_products.kernel_mode()}/"
            f"{os.environ.get('OPENBLAS_CORETYPE') or 'native'}/"
            f"{'cut' if small_gemm_kernels() else 'whole'}")


def _cache_key(layer_sizes, batch_size, dtype, threads_label):
    from fastbp._cache import build_identity, cpu_model
    sizes = "-".join(str(int(size)) for size in layer_sizes)
    return (f"{sizes}/{int(batch_size)}/{np.dtype(dtype).name}/{threads_label}/{cpu_model()}/"
            f"{build_identity()}")


def _candidates(layer_sizes, batch_size, allowed, clipping=False, forced=None):
    """The ways (split_threads) to time: 1 thread; row workers 2, 4, 8, ... and `allowed`,
    each with the first layer split by rows, by its inputs and by the hidden units (not
    when clipping); then the same counts on BLAS threads (large products): everything an
    explicit count of those can run. BLAS at fewer than all threads can win: on a 16-core
    Xeon, W5 ran 180k samples/s on 8 BLAS threads, 145k on 4 row workers and 152k on 16
    BLAS threads. forced (one of SPLITS, FASTBP_SPLIT's): that way's counts only, as an
    explicit count runs them (threads_of)."""
    counts = sorted({2 ** i for i in range(1, allowed.bit_length()) if 2 ** i <= allowed}
                    | {allowed})
    ways = tuple(ROW_SPLITS.values()) if forced is None else \
        () if forced == "blas" else (ROW_SPLITS[forced],)
    found = [ONE_THREAD]
    for split in [split_threads(layer_sizes, batch_size, count, way, clipping)
                  for count in counts for way in ways] + \
            [(1, count, BY_ROWS) for count in counts if forced in (None, "blas")]:
        if split not in found:
            found.append(split)
    return found


# Each candidate is timed on MEASURE_ROUNDS windows of at least MEASURE_SECONDS (and one
# step), the candidates taking turns window by window so that a burst of other work hits
# them alike; a candidate's time is its best window: other work on the machine only ever
# slows a window, and it slows a split step (which needs every core at once) more than
# a one-thread one (W5's median windows chose 1 thread in one quiet run where 2 ran 1.4x).
MEASURE_SECONDS = 0.01
# A window is one epoch call, which starts the row workers' threads (about 0.13 ms on a
# 2-core Xeon): so short steps get windows of up to this many batches, from timing data of
# up to MEASURE_BYTES (W1: about 100 steps a window; in the 39 it had before, the thread
# start was 3 us of a 90 us step).
MEASURE_BATCHES = 256
MEASURE_BYTES = 16 << 20
MEASURE_ROUNDS = 5
# Other work can take part of a core for a second or more at a time (this project's 2-core
# KVM guest: the second core ran W1's row-split step at half speed in stretches of up to
# 1.3 s, about a tenth of the time, with no steal time to show it), so five rounds in a
# row all met it in 4 of 10 default measurements of W1 and W5, which chose one thread
# where two ran 1.6-1.75x. Such work only ever makes more threads look worse, never
# better: so while fewer threads than the most timed lead, more rounds are taken,
# CONFIRM_GAP_SECONDS apart,
# for up to CONFIRM_SECONDS (of wall time: the gaps are sleeps), and the best windows
# decide. A verdict for the most threads needs no confirmation.
CONFIRM_SECONDS = 1.0
CONFIRM_GAP_SECONDS = 0.05
# Option 0 of a Phases measurement (_serving.pxi) is kept unless option 1 is faster by
# this factor: the difference must show above the noise of timing.
MEASURE_MARGIN = 1.10
# A default thread count (a fit's, a pass's) takes fewer threads unless more are faster by
# this factor: the default is meant to be within 5% of the best count, and fewer threads
# leave the machine to other work. (It was MEASURE_MARGIN until 2026-12-04: on a 2-core
# Xeon W1's default then kept one thread where two row workers trained 1.19x faster.)
THREADS_MARGIN = 1.05
# A candidate on BLAS threads counts this much slower than it ran (see _pick).
BLAS_THREADS_PENALTY = 1.10
# A one-thread step shorter than this is not split, and nothing else is timed: a split
# step hands off between threads twice, which costs microseconds on any machine, so
# a step of a few microseconds cannot gain (and timing one would only measure noise).
# And a split step waits for its slowest worker: when other work takes a core, a worker
# waits out the scheduler's time slice (milliseconds), which a long step hardly notices and
# a short one pays many times over, while the split was measured (and kept) on an idle
# machine. A 4-100-3 float64 fit of 128-row batches (23 us a one-thread step) ran its
# split steps at 165-320 us while another process used one of the 2 cores (Zen 4 guest,
# 2026-12-07; a kept 2-worker choice made a grid search's folds 4-36x slower). So it is
# the same floor as a predict call's (SPLIT_MIN_SECONDS); it also spares such a network
# the second of confirmation rounds (CONFIRM_SECONDS) its measurement took.
TINY_STEP_SECONDS = 50e-6
# A kept predict call shorter than this on one thread is not split: handing a piece to a
# helper thread and waiting for it costs microseconds when the helper is spinning and tens
# of microseconds when it has gone to sleep (after 1 ms without work), on any machine.
SPLIT_MIN_SECONDS = 50e-6
# A kept predict plan's default count is kept for this many calls and this long before it
# is measured again (its phases then take 0.2 s or more: a few percent of the time).
REMEASURE_CALLS = 1000
REMEASURE_SECONDS = 10.0
TURN_SECONDS = 0.02     # the least time a phase of its measurement lasts


def _measure(layer_sizes, codes, batch_size, dtype, candidates, clipping=False, wait=True):
    """Times a few plain-SGD steps (clipping: with the gradient's norm taken, at a limit
    no step reaches) of this network and batch on random data with each candidate way
    (split_threads) and returns the fastest, preferring fewer threads within
    THREADS_MARGIN. A one-thread step under TINY_STEP_SECONDS ends the timing with
    ONE_THREAD, whatever the candidates: no split can gain there, and BLAS, which runs
    products that small on one thread anyway, would cost the plan its own kernels.
    wait=False: PassesRunning where a candidate would wait for other threads' passes."""
    from fastbp import _core
    from fastbp._products import choose_products
    from fastbp.model import check_allocation
    dtype = np.dtype(dtype)
    sizes = [int(size) for size in layer_sizes]
    # A fit whose workspace cannot be allocated is refused here as it would be by the fit,
    # before any timing data is made.
    check_allocation(_core.Plan(sizes, list(codes), batch_size, None, clipping).work_size, dtype,
                     "the workspace")
    rng = np.random.default_rng(0)
    # Enough batches for windows of short steps (MEASURE_BATCHES), few for large inputs:
    # random rows of up to a million values, repeated up to MEASURE_BYTES.
    batch_values = batch_size * sizes[0]
    drawn = min(64, max(4, -(-1_000_000 // batch_values)))
    n_batches = min(MEASURE_BATCHES,
                    max(drawn, MEASURE_BYTES // (batch_values * dtype.itemsize)))
    X = np.resize(rng.standard_normal((batch_size * drawn, sizes[0]), dtype),
                  (batch_size * n_batches, sizes[0]))
    Y = np.resize(0.1 * rng.standard_normal((batch_size * drawn, sizes[-1]), dtype),
                  (batch_size * n_batches, sizes[-1]))
    # Each window's batches are drawn in a new order, gathered as a shuffled fit's are: the
    # gather is work that row workers share (read in place, W1's two row workers timed
    # 0.97-1.02x of one thread where the fit ran 1.19x on a 2-core Xeon).
    orders = {}
    empty_rows, empty = np.empty(0, np.intp), np.empty(0, dtype)
    hyper = _core.Hyperparameters(_core.LOSS_CODES["mse"], learning_rate=1e-6,
                                  clip_norm=1e30 if clipping else 0.0)
    state = np.empty((0, 0), dtype)
    # One parameter vector and one workspace (its gradient is the size of the parameters)
    # for every way, the vector drawn in the dtype (the steps of 1e-6 move it by rounding
    # only), the workspace as large as the largest way's so far: a vector and a workspace
    # each, drawn in float64, held 6.4x a float32 model's parameters at once on 2 cores
    # (5 ways), more on more cores. (Ways take turns: none is running as another starts.)
    params, scratch = [], []

    def workspace(size):
        if not scratch or scratch[0].size < size:
            scratch[:] = [np.zeros(size, dtype)]
        return scratch[0][:size]

    def timer(workers, blas, split=BY_ROWS):
        """epoch(n_steps) -> seconds a step, for this way (its own plan)."""
        plan = choose_products(_core.Plan(sizes, list(codes), batch_size, None, clipping,
                                          blas == 1 and small_gemm_kernels()),
                               sizes, dtype, blas == 1)
        if not params:
            params.append(rng.standard_normal(plan.n_params, dtype))
            params[0] *= 0.05
        worker_plan, worker_work = row_workspace(sizes, codes, None, batch_size, workers,
                                                 dtype, split=split, hyperparameters=hyper)

        def epoch(n_steps):
            n_rows = n_steps * batch_size
            if n_rows not in orders:
                orders[n_rows] = rng.permutation(n_rows).astype(np.intp)
            work = workspace(plan.work_size)
            with blas_threads(blas, wait=wait):
                started = time.perf_counter()
                _core.train_epoch(plan, hyper, params[0], work, state, X[:n_rows], Y[:n_rows],
                                  empty_rows, empty, orders[n_rows], batch_size, 1, False,
                                  worker_plan, worker_work, workers, None, None,
                                  **split_flags(split))
                return (time.perf_counter() - started) / n_steps
        return epoch

    _wait_for_a_quiet_process()
    # The tiny-step check times the one-thread step whatever the candidates (an explicit
    # count's first is BLAS threads, which would leave OpenBLAS's threads polling, below).
    epoch = timer(1, 1)
    epoch(1)                                       # warm up: first touch, thread pools
    if epoch(n_batches) < TINY_STEP_SECONDS:
        return ONE_THREAD
    # OpenBLAS's idle threads keep polling for work after a multi-threaded call and take
    # the cores the row workers need (W1's row-split step: 42 us, 120 us for seconds after
    # a 2-thread BLAS call). So the candidates on one BLAS thread are timed first, those on
    # BLAS threads after them. Within a group the candidates take turns.
    best = {}
    for on_blas_threads in (False, True):
        runs, slow = {}, False          # slow: large networks, where a step shows it
        for way in candidates:
            if (way[1] > 1) != on_blas_threads:
                continue
            epoch = timer(*way)
            epoch(1)                               # warm up: first touch, thread pools
            steps = max(1, min(n_batches, int(MEASURE_SECONDS / max(epoch(1), 1e-9))))
            runs[way] = _paced(epoch, steps)
            slow = slow or steps == 1
        best.update(_best_windows(runs, 2 if slow else MEASURE_ROUNDS))
    return _pick(best)


# A pass whose chunk takes this long on one thread runs on every allowed thread without
# being timed further: its products then hold hundreds of millions of multiply-adds (at
# the 10^10 a second and more of any current core with vector units), where BLAS's
# threads pay, and timing turns of it would cost the first call seconds.
PASS_UNMEASURED_SECONDS = 0.05
# A pass's lead of one thread is confirmed for this long rather than CONFIRM_SECONDS: its
# measurement delays a user's first call of a shape (predict, evaluate, gradients), and
# a wrong count there costs that shape's passes speed only, never a result.
PASS_CONFIRM_SECONDS = 0.2


def _measure_pass(layer_sizes, activations, rows, dtype, backward, allowed) -> tuple:
    """(1 or `allowed`, seconds of a chunk on one thread): the BLAS thread count under
    which a chunk of `rows` random rows went through this network faster (predict's pass,
    or gradients' with backward), each count with the plan a pass on it makes (one
    thread's may take the own kernels), in windows taking turns as a fit's candidates do
    (_best_windows, _pick). A chunk under SPLIT_MIN_SECONDS on one thread stays there (a
    second thread's hand-offs cost microseconds on any machine); one over
    PASS_UNMEASURED_SECONDS takes `allowed`. Raises PassesRunning, keeping nothing, where
    a count it times would have to wait for other threads' passes."""
    from fastbp import _core
    from fastbp.model import MLP
    model = MLP(list(layer_sizes), list(activations), dtype=dtype, seed=0)
    sizes = model.layer_sizes
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, sizes[0])).astype(model.dtype)
    targets = np.zeros((rows, sizes[-1]), model.dtype)
    out, grads = np.empty_like(targets), np.empty_like(model._params)
    hyper = _core.Hyperparameters(_core.LOSS_CODES["mse"])

    def timer(threads):
        """window(n_passes) -> seconds a pass on `threads` BLAS threads."""
        plan, work = model._workspace(rows, n_threads=threads, few_rows=not backward,
                                      fixed_rows=False)

        def one_pass():
            if backward:
                _core.gradients(plan, hyper, model._params, grads, work, X, targets, None,
                                None)
            else:
                _core.predict(plan, model._params, work, X, out, None)

        def window(n_passes):
            # (cut short where the passes run slower than planned: WINDOW_LIMIT)
            with blas_threads(threads, wait=False):
                started = time.perf_counter()
                done, elapsed = 0, 0.0
                while done < n_passes and elapsed < WINDOW_LIMIT * MEASURE_SECONDS:
                    one_pass()
                    done += 1
                    elapsed = time.perf_counter() - started
                return elapsed / done
        return window

    _wait_for_a_quiet_process()
    one = timer(1)
    one(1)                                          # warm up: first touch
    first = one(1)
    if first < SPLIT_MIN_SECONDS:
        return 1, first
    if first > PASS_UNMEASURED_SECONDS:
        return allowed, first
    passes = max(1, int(MEASURE_SECONDS / first))
    many = timer(allowed)
    many(1)                                         # warm up: BLAS's thread pool
    runs = {(1, 1): functools.partial(one, passes), (1, allowed): functools.partial(many, passes)}
    return _pick(_best_windows(runs, MEASURE_ROUNDS, PASS_CONFIRM_SECONDS))[1], first


# A window of a measurement lasts at most about this many times MEASURE_SECONDS. Other
# work on the machine can slow a candidate far more than it slows one thread: two BLAS
# threads, whose OpenBLAS threads wait for each other spinning, ran a pass of 100-65-10 on
# 512 rows in 15.6 ms instead of 0.3 with a compiler busy on each core, and windows of a
# count planned for 10 ms took 1.8 s each: the first predict of that shape took 8 s.
WINDOW_LIMIT = 2


def _paced(window, count):
    """A run for _best_windows: window(n) -> seconds a step, called with `count` steps,
    then with as many as its last window's pace fits in MEASURE_SECONDS, never more than
    `count` (a fit's window is one compiled call, which cannot be cut short as a pass's
    window is). A count cut by a slow window grows back when the pace does: a candidate
    whose windows were cut is not judged on them alone."""
    def run():
        nonlocal paced
        seconds = window(paced)
        if seconds * paced > WINDOW_LIMIT * MEASURE_SECONDS or paced < count:
            paced = max(1, min(count, int(MEASURE_SECONDS / max(seconds, 1e-9))))
        return seconds
    paced = count
    return run


def _best_windows(runs, rounds, confirm_seconds=None):
    """{candidate: its best window} from `runs` ({(workers, BLAS threads, ...): a function
    timing one window}): `rounds` rounds, the candidates taking turns, then confirmation
    rounds while fewer threads than the most lead, for up to confirm_seconds (None:
    CONFIRM_SECONDS)."""
    if not runs:
        return {}
    times = {choice: [] for choice in runs}

    def one_round():
        for choice, run in runs.items():
            times[choice].append(run())

    for _ in range(rounds):
        one_round()
    most = max(choice[0] * choice[1] for choice in runs)
    deadline = time.perf_counter() + (CONFIRM_SECONDS if confirm_seconds is None
                                      else confirm_seconds)
    while True:
        best = {choice: min(found) for choice, found in times.items()}
        picked = _pick(best)
        if picked[0] * picked[1] == most or time.perf_counter() >= deadline:
            return best
        time.sleep(CONFIRM_GAP_SECONDS)
        one_round()


# OpenBLAS's idle threads spin for about 0.1 s after a multi-threaded call (a 2-thread
# 512 x 512 product here: a core busy for 0.1 s after it), and take a core from row workers
# timed meanwhile: W1's row-split step measured 130-170 us against 50-60 us, and the
# default chose one thread where two ran 1.57x, whenever a measurement came within 0.1 s
# of one (the previous shape's BLAS-threads candidate, numpy's own products).
QUIET_WAIT_SECONDS = 0.5     # the longest a measurement waits for that (other work may not end)
QUIET_POLL_SECONDS = 0.01


def _wait_for_passes_to_end(seconds: float):
    """Returns once no blas_threads pass runs in this process, or after `seconds`."""
    deadline = time.monotonic() + seconds
    with _turns:
        while _active and (left := deadline - time.monotonic()) > 0:
            _turns.wait(left)


def _wait_for_a_quiet_process():
    """Returns once this process uses under half a core while this thread sleeps, or after
    QUIET_WAIT_SECONDS."""
    deadline = time.perf_counter() + QUIET_WAIT_SECONDS
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        time.sleep(QUIET_POLL_SECONDS)
        busy = (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)
        if busy < 0.5 or time.perf_counter() > deadline:
            return


def _pick(seconds):
    """The choice, from each candidate's (workers, BLAS threads, ...) best time a step: the
    fewest threads within THREADS_MARGIN of the fastest, of as many the fastest. A
    candidate on BLAS threads counts BLAS_THREADS_PENALTY slower than it ran: OpenBLAS's
    threads wait for each other spinning, so when other work takes a core after the measurement
    its steps slow many times over (a grid search's fit measured on an idle core took
    3.5 s instead of 0.55 under load), where the row workers sleep in their barrier. So
    BLAS threads are chosen only where they clearly win (large products)."""
    counted = {choice: time * (BLAS_THREADS_PENALTY if choice[1] > 1 else 1)
               for choice, time in seconds.items()}
    fastest = min(counted.values())
    return min((choice[0] * choice[1], time, choice) for choice, time in counted.items()
               if time <= fastest * THREADS_MARGIN)[2]


def allowed_threads() -> int:
    """The most threads a pass may use when its caller did not say: the smallest of the
    caller's limits in force now. fastbp's own defaults (fits, predict, evaluate,
    gradients) never go past it; an explicit n_threads is obeyed as given.

    The limits: the CPU affinity mask (os.sched_getaffinity), a cgroup CPU quota
    (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us, rounded up),
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS (but not the 1s Dask sets in
    a process that starts its worker processes: _environment_limit), and the thread count of the
    BLAS scipy calls as its caller left it (threadpoolctl's threadpool_limits in force, or
    the count the BLAS read from its environment when it loaded). fastbp.dask and the
    scikit-learn estimators call this too, so a worker with one thread gets one."""
    # asked on every default predict call that may share its rows: each part is cheap
    # (under a microsecond in all)
    allowed = _cpu_count()
    for limit in (_environment_limit(), _blas_setting(), _cgroup_limit()):
        if limit is not None and limit < allowed:
            allowed = limit
    return max(1, allowed)


def _cpu_count() -> int:
    """The CPUs the affinity mask allows (all of them where there is none)."""
    count = _affinity_count()
    if count > 0:
        return count
    if _affinity is not None:
        return len(_affinity(0))
    return os.cpu_count() or 1


_affinity = getattr(os, "sched_getaffinity", None)


def _affinity_count() -> int:
    """_core.affinity_count (bound on first use, as _getenv)."""
    global _affinity_count
    from fastbp._core import affinity_count
    _affinity_count = affinity_count
    return affinity_count()


# The variables a caller sets to limit the threads of the libraries it runs; OpenMP's
# may list a count per nesting level ("4,2"): the first is the outer one.
THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# The variables as they were when fastbp was imported. Dask's nanny sets OMP_NUM_THREADS,
# OPENBLAS_NUM_THREADS and MKL_NUM_THREADS to 1 in the environment of the process that
# starts worker processes (a LocalCluster in the user's own process), so that its children
# inherit them, and marks that process with __DASK_PARENT_PID = its pid ("poisoning the
# process running the Nanny", distributed's own docs): those values are the workers'
# limit, not one the caller put on this process, whose BLAS loaded before them.
_IMPORT_ENVIRONMENT = {name: os.environ.get(name) for name in THREAD_LIMIT_VARIABLES}
DASK_PARENT_VARIABLE = "__DASK_PARENT_PID"
_LIMIT_LOOKUPS = tuple(name.encode() for name in (DASK_PARENT_VARIABLE,) + THREAD_LIMIT_VARIABLES)


def _getenv(names: tuple) -> tuple:
    """_core.environment_values (bound on first use: _core imports modules that import
    this one)."""
    global _getenv
    from fastbp._core import environment_values
    _getenv = environment_values
    return environment_values(names)


def _environment_limit():
    """The smallest positive count in THREAD_LIMIT_VARIABLES, or None (unset or unreadable
    values are no limit, as the libraries themselves treat them). In a process that has
    started Dask worker processes, the values it had when fastbp was imported."""
    global _environment_seen
    # C's getenv, which sees os.environ's changes: os.environ.get costs about 1 us a
    # name, and every default predict call asks; the values are parsed once
    raw = _getenv(_LIMIT_LOOKUPS)
    seen, limit = _environment_seen
    if raw == seen and raw[0] is None:   # (a Dask parent's limit is read afresh)
        return limit
    parent, *values = (None if value is None else value.decode(errors="replace")
                       for value in raw)
    if parent == str(os.getpid()):
        values = [_IMPORT_ENVIRONMENT[name] for name in THREAD_LIMIT_VARIABLES]
    counts = []
    for value in values:
        count = _ascii_count((value or "").split(",")[0].strip())
        if count is not None and count > 0:
            counts.append(count)
    limit = min(counts) if counts else None
    _environment_seen = raw, limit
    return limit


_environment_seen = (None, None)   # (the values last read, their limit)


def _blas_setting():
    """The thread count the caller has left on the BLAS scipy calls (all BLAS libraries
    when that one is not identified), or None when no BLAS reports one. While fastbp's own
    passes run, the count they found, not the one they set."""
    setters = _scipy_blas_setters()
    with _turns_lock:
        if _saved is None:
            counts = [get_threads() for get_threads, _ in setters]
        else:
            gets = {id(set_threads): count for set_threads, count in _saved}
            # a library left out of _saved was on the passes' count already
            counts = [gets.get(id(set_threads), _count) for _, set_threads in setters]
    least = None
    for count in counts:    # one loop, not a filter and min(): asked on every default call
        if count is not None and int(count) > 0 and (least is None or int(count) < least):
            least = int(count)
    return least


_scipy_setters = None


def _scipy_blas_setters():
    """(get, set) of the BLAS scipy.linalg.cython_blas calls, or of every BLAS if that one
    is not among threadpoolctl's."""
    global _scipy_setters
    if _scipy_setters is None:
        setters = _thread_setters()
        path = _scipy_blas_path()
        chosen = []
        if path is not None:
            libraries = [lib for lib in _get_controller().lib_controllers
                         if lib.user_api == "blas"]
            for lib, setter in zip(libraries, setters):
                try:
                    if os.path.samefile(lib.filepath, path):
                        chosen.append(setter)
                except OSError:
                    continue
        _scipy_setters = chosen or list(setters)
    return _scipy_setters


_cgroup_cpus = False     # _cgroup_limit(), once known (False: not read yet)


def _cgroup_limit():
    """cgroup_cpu_limit() of this process, read once (a quota rarely changes in a
    process's life, and reading it costs file opens on every pass)."""
    global _cgroup_cpus
    if _cgroup_cpus is False:
        _cgroup_cpus = cgroup_cpu_limit()
    return _cgroup_cpus


def cgroup_cpu_limit(root="/sys/fs/cgroup", membership="/proc/self/cgroup"):
    """The CPUs a cgroup quota allows this process (quota / period, rounded up), the
    smallest over its group and the groups above it, or None when no quota is set or the
    files cannot be read. root: where the cgroup file systems are mounted; membership:
    the process's /proc/self/cgroup (both arguments for tests)."""
    return _cgroup_least(root, membership, "cpu", ("cpu", "cpu,cpuacct"), _v2_quota,
                         _v1_quota)


def cgroup_memory_limit(root="/sys/fs/cgroup", membership="/proc/self/cgroup"):
    """The bytes a cgroup memory limit allows this process (v2 memory.max, v1
    memory.limit_in_bytes), the smallest over its group and the groups above it, or None
    (as cgroup_cpu_limit)."""
    return _cgroup_least(root, membership, "memory", ("memory",), _v2_memory, _v1_memory)


def _cgroup_least(root, membership, controller, v1_mounts, read_v2, read_v1):
    """The least limit read_v2 (cgroup v2) or read_v1 (v1's `controller`, mounted at
    root/its controllers or root/each of v1_mounts) finds for this process's groups."""
    try:
        with open(membership) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts
        if hierarchy == "0" and controllers == "":     # cgroup v2 (or hybrid's unified)
            for mount in (root, os.path.join(root, "unified")):
                limits += _group_limits(mount, group, read_v2)
        elif controller in controllers.split(","):
            for mount in (controllers,) + v1_mounts:
                limits += _group_limits(os.path.join(root, mount), group, read_v1)
    return min(limits) if limits else None


def _group_limits(mount, group, read_limit):
    """The limits in the group's folder under mount and every folder above it up to mount
    (a container often sees its own group as the mount's root)."""
    found = []
    folder = os.path.normpath(os.path.join(mount, group.lstrip("/")))
    while True:
        limit = read_limit(folder)
        if limit is not None:
            found.append(limit)
        if os.path.normpath(folder) == os.path.normpath(mount) or len(folder) <= len(mount):
            return found
        folder = os.path.dirname(folder)


def _v2_quota(folder):
    words = _read_words(os.path.join(folder, "cpu.max"))
    if words is None or len(words) < 1 or words[0] == "max":
        return None
    period = words[1] if len(words) > 1 else "100000"
    return _cpus(words[0], period)


def _v1_quota(folder):
    quota = _read_words(os.path.join(folder, "cpu.cfs_quota_us"))
    period = _read_words(os.path.join(folder, "cpu.cfs_period_us"))
    if not quota or not period:
        return None
    return _cpus(quota[0], period[0])


def _cpus(quota, period):
    try:
        quota, period = int(quota), int(period)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:       # v1 writes -1 for no quota
        return None
    return max(1, -(-quota // period))


def _v2_memory(folder):
    words = _read_words(os.path.join(folder, "memory.max"))
    return None if not words or words[0] == "max" else _bytes(words[0])


def _v1_memory(folder):
    words = _read_words(os.path.join(folder, "memory.limit_in_bytes"))
    return None if not words else _bytes(words[0])


def _bytes(word):
    """A memory limit in bytes, None for none (v1 writes its largest page count, about
    2^63, for no limit)."""
    try:
        limit = int(word)
    except ValueError:
        return None
    return limit if 0 < limit < 2**62 else None


def _read_words(path):
    try:
        with open(path) as file:
            return file.read().split()
    except OSError:
        return None


def checked_thread_count(n_threads):
    """n_threads as given by a user: None (choose) or a whole number in 1..MAX_THREADS."""
    if n_threads is None:
        return None
    from fastbp._validation import whole_number
    count = whole_number(n_threads, "n_threads", 1)
    if count > MAX_THREADS:
        raise ValueError(f"n_threads must be at most {MAX_THREADS}; got {n_threads!r}")
    return count


def _get_controller():
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
        return _controller


def small_gemm_kernels() -> bool:
    """True if the BLAS behind scipy.linalg.cython_blas (the one fastbp calls) is an OpenBLAS
    whose core has small-matrix kernels, so one-thread passes cut their products to fit
    them (_core.Plan's small_gemm_chunks). Found once per process; the environment variable
    FASTBP_SMALL_GEMM=0 or 1 overrides it (for comparing the two)."""
    global _small_gemm
    if _small_gemm is None:
        from fastbp import _core
        forced = _core.environment_choice("FASTBP_SMALL_GEMM", ("0", "1"))
        _small_gemm = forced == "1" if forced else _blas_has_small_kernels()
    return _small_gemm


def _blas_has_small_kernels() -> bool:
    path = _scipy_blas_path()
    if path is None:
        return False
    for info in _get_controller().info():
        try:
            same = os.path.samefile(info.get("filepath", ""), path)
        except OSError:
            continue
        if same:
            return (info.get("internal_api") == "openblas"
                    and str(info.get("architecture", "")).lower() in SMALL_GEMM_CORES)
    return False


def _scipy_blas_path():
    """The file of the BLAS library scipy.linalg.cython_blas calls, or None if unknown.

    dladdr of cython_blas's sgemm names scipy's extension module; a symbol lookup through
    that module's handle searches the libraries it links, and dladdr of the Fortran sgemm
    found there names the BLAS (scipy's wheels prefix its symbols with scipy_)."""
    from fastbp import _core
    module_path = _library_of(_core.blas_address())
    if module_path is None:
        return None
    try:
        module = ctypes.CDLL(module_path)
    except OSError:
        return None
    for name in ("scipy_sgemm_", "sgemm_"):
        try:
            function = getattr(module, name)
        except AttributeError:
            continue
        return _library_of(ctypes.cast(function, ctypes.c_void_p).value)
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(address: int):
    """The file of the shared library holding a function's address (dladdr), or None."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (OSError, AttributeError):   # no dladdr (Windows)
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)


class PassesRunning(Exception):
    """blas_threads(..., wait=False) would have waited for other threads' passes."""


def blas_threads(n_threads: int, wait=True):
    """Run a pass with every loaded BLAS limited to n_threads, and no other count set
    while it runs.

    The BLAS thread count is process-wide, and results depend on it (OpenBLAS splits a
    product differently), so a call's results would depend on what other threads do if
    their passes could change it: passes whose lifetimes overlap all run on one count.
    A pass that asks for the count in force joins at once; one that asks for another waits
    until the running passes end, in arrival order (later passes queue behind it, so it
    is not starved). A pass started inside another on the same thread (validation or a
    callback's predict inside a fit) runs under its caller's count, whatever it asks:
    waiting for its own caller would never end. The first pass saves each BLAS's setting
    and the last puts it back, whichever threads they run on. The libraries are found once
    (a scan, milliseconds); a limit then costs microseconds. wait=False: raise
    PassesRunning instead of waiting (a measurement must not wait on other threads'
    passes: one of them may be waiting for the call that measures).
    """
    # The entry and the exit each run whole, with SIGINT held back (a KeyboardInterrupt
    # part-way through either left the pass counted for good, and the next pass on another
    # count, from any thread, waited for ever; or a BLAS on the pass's count, or the lock
    # held), and the `with` block's own entry and exit are C: _core.BlasPass.
    return _core.BlasPass(functools.partial(_enter, n_threads, _thread_setters(), wait=wait),
                          _leave)


# How often a wait for other threads' passes looks for a Ctrl-C held back (_enter).
INTERRUPT_POLL_SECONDS = 0.05


def _enter(n_threads: int, setters, taken: list, wait=True) -> None:
    """A pass's entry (blas_threads, under _core.deferred): appends the caller's depth of
    passes to `taken` once the pass counts."""
    global _active, _saved, _count
    depth = getattr(_local, "depth", 0)
    with _turns:
        # no one waiting and the count free or ours: the queue below would let it in at
        # once with no one to wake, so it is skipped (a predict of a few hundred rows
        # pays the pass's entry on every call)
        if depth == 0 and (_queue or not (_active == 0 or _count == n_threads)):
            if not wait:
                raise PassesRunning
            ticket = object()
            _queue.append(ticket)
            try:
                while not (_queue[0] is ticket and (_active == 0 or _count == n_threads)):
                    # a wait for other threads' passes (seconds, minutes) ends at a
                    # Ctrl-C: its handler runs here, and the condition is looked at
                    # again after it (a notify while the handler ran is not missed)
                    _turns.wait(INTERRUPT_POLL_SECONDS)
                    _core.hand_over_interrupt(_turns)
            finally:   # also on KeyboardInterrupt while waiting: never block the queue
                _queue.remove(ticket)
                _turns.notify_all()      # the next in line may join the same count
        if _active == 0:   # only the libraries not on n_threads already are set (and reset)
            _saved = [(set_threads, original) for set_threads, original in
                      ((set_threads, get_threads()) for get_threads, set_threads in setters)
                      if original != n_threads]
            for set_threads, _ in _saved:
                set_threads(n_threads)
            _count = n_threads
            _core.set_pass_blas_threads(n_threads)
        _active += 1
        _local.depth = depth + 1
        taken.append(depth)


def _leave(taken: list) -> None:
    """A pass's exit (blas_threads, under _core.deferred), if its entry counted it."""
    global _active, _saved, _count
    if not taken:
        return
    with _turns:
        _local.depth = taken.pop()
        _active -= 1
        if _active == 0:
            # (unknown first, then the libraries' counts put back: a margin only, for
            # every product of fastbp's runs inside a pass: MLP._forward_pass's, a fit's
            # blas_context)
            _core.set_pass_blas_threads(0)
            for set_threads, original in _saved:
                set_threads(original)
            _saved = None
            _count = None
            _turns.notify_all()


def _thread_setters():
    """(get, set) of the thread count of each loaded BLAS, found once.

    An OpenBLAS on pthreads has one process-wide pool, and threadpoolctl lets only one
    live thread change it (a call from any other is ignored); a pass may start and end on
    any thread, so its own openblas_{get,set}_num_threads are called directly. Other
    libraries go through threadpoolctl."""
    global _setters
    if _setters is None:
        setters = []
        for lib in _get_controller().lib_controllers:
            if lib.user_api != "blas":
                continue
            if lib.internal_api == "openblas" and lib.threading_layer != "openmp":
                get_threads = _openblas_function(lib, "openblas_get_num_threads", ctypes.c_int)
                set_threads = _openblas_function(lib, "openblas_set_num_threads", None)
                if get_threads is not None and set_threads is not None:
                    setters.append((get_threads, set_threads))
                    continue
            setters.append((lambda lib=lib: lib.num_threads, lib.set_num_threads))
        _setters = setters
    return _setters


def _openblas_function(lib, name, restype):
    """OpenBLAS's `name` in lib, under the affixes builds add (scipy_..., ...64_); None
    where not found (lib's own setter is used then)."""
    dynlib = getattr(lib, "dynlib", None)     # (threadpoolctl < 3.2 has no public handle)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            function = getattr(dynlib, prefix + name + suffix, None)
            if function is not None:
                function.restype = restype
                if restype is None:
                    function.argtypes = [ctypes.c_int]
                return function
    return None


def _after_fork_in_child() -> None:
    """A forked child runs only the thread that forked: the passes the parent's other
    threads had open (and any lock one of them held at the fork) are not in it, so they
    are dropped, as if they had ended, and the locks made anew; the forking thread's own
    open passes go on. Else the child's next pass on another count would wait for ever."""
    global _lock, _turns_lock, _turns, _queue, _measure_lock, _active, _saved, _count
    _lock, _measure_lock = threading.Lock(), threading.Lock()
    _turns_lock = threading.Lock()
    _turns = threading.Condition(_turns_lock)
    _queue = collections.deque()
    _active = getattr(_local, "depth", 0)
    if _active == 0:
        for set_threads, original in _saved or ():
            set_threads(original)
        _saved = _count = None
    _core.set_pass_blas_threads(_count or 0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
