"""Which products of a plan run in fastbp's own kernels (csrc/products.h) and which in BLAS.

FASTBP_KERNELS: "blas" (every product in BLAS), "own" (every product in the own kernels,
where this CPU runs them), or "auto" (the default): each product of a one-thread plan in
whichever of the two ran its exact shape faster on this machine, measured once (a few
timed calls each) and kept, like the thread counts, in products.json (fastbp._cache),
keyed by shape, dtype, instruction set, CPU model, OPENBLAS_CORETYPE and the build
(fastbp._cache.build_identity: the compiled core, NumPy's and SciPy's versions). A fit's plans
(fixed batch size) are measured at their batch; a predict or evaluate pass, whose chunk
follows the call's rows, at its chunk's row bucket (row_bucket: the next power of two, so
at most 12 row counts a shape up to predict's 2048-row chunks), and only past the few-row
kernels' PREDICTOR_ROWS; its products of more than PASS_MEASURE_MAX_MULTIPLY_ADDS stay on
BLAS unmeasured, so that the first call of a bucket pays under about 0.1 s a product.
Gradients passes, and plans whose products BLAS runs on several
threads, stay on BLAS under "auto" (the kernels run on one thread; "own" forces them
everywhere).
FASTBP_KERNEL_ISA ("avx2" or "avx512") forces the kernels' instruction set (it must be
one this CPU runs); unset, the widest; "baseline" runs every product on BLAS, as a CPU
without AVX2 does. It sets the element-wise kernels' level too (_core.kernel_level).
"""
import os
import threading

import numpy as np

from fastbp._cache import KeptChoices

KERNELS_VARIABLE = "FASTBP_KERNELS"
ISA_VARIABLE = "FASTBP_KERNEL_ISA"
CACHE_FILE = "products.json"
# Each backend is timed in MEASURE_ROUNDS windows of at least MEASURE_SECONDS, taking
# turns, and its median window counts.
MEASURE_SECONDS = 0.002
MEASURE_ROUNDS = 5
# A predict or evaluate pass measures no product larger than this (W1's 2048 x 128 x 784
# is 2**27.6): the first call of a bucket pays the measurement, 12 timed calls a backend.
PASS_MEASURE_MAX_MULTIPLY_ADDS = 1 << 28
# A predict or evaluate pass's product takes the own kernel unless BLAS ran it faster by
# more than this factor: a one-chunk pass with a product on BLAS cannot be shared among
# threads (BLAS's sums for a row may depend on the rows of its call; model.kept_chunks),
# so where the two are level within the timing's noise (W1's first product at 512 rows:
# 94-98% of the FMA peak in both) the coin flip of a measurement decided whether a
# default call could use two threads at all.
PASS_OWN_MARGIN = 1.05
_measured = KeptChoices()      # key -> True (own kernel) / False (BLAS), this process
_chosen = KeptChoices()        # product_isas' arguments -> its measured answer, this process
_absent = KeptChoices()        # (cache folder, key) a look-up without measuring did not find
_lock = threading.Lock()


def _remake_lock_in_child() -> None:
    """A forked child has only the forking thread: a measurement another thread held the
    lock for (up to the cache's LOCK_WAIT_SECONDS) is not in it (as _threads' locks)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_remake_lock_in_child)


def kernel_mode() -> str:
    """FASTBP_KERNELS: "blas", "own" or "auto" (unset); anything else is an error."""
    from fastbp import _core
    return _core.environment_choice(KERNELS_VARIABLE, ("blas", "own", "auto")) or "auto"


def requested_level():
    """FASTBP_KERNEL_ISA's level ("avx512", "avx2" or "baseline"), or None where it is
    unset; a name that is not a level, or a level above this CPU's and build's widest, is
    an error. The one reader of the variable: the kernels' level when fastbp._core loads
    (_core.kernel_level) and the product kernels' instruction set (kernel_isa)."""
    from fastbp import _core
    value = _core.environment_choice(ISA_VARIABLE, tuple(_core.KERNEL_LEVELS))
    if not value:
        return None
    if value not in _core.kernel_levels():
        raise ValueError(f"{ISA_VARIABLE}={value}: this CPU or build runs the kernels at "
                         f"{_core.kernel_levels()[0]} at most")
    return value


def kernel_isa():
    """The instruction set of the own product kernels: FASTBP_KERNEL_ISA's level, else the
    widest this CPU runs; None where that is the baseline (a CPU without AVX2, or
    FASTBP_KERNEL_ISA=baseline): every product is then BLAS."""
    from fastbp import _core
    level = requested_level() or _core.kernel_levels()[0]
    return level if level in _core.KERNEL_ISAS else None


def choose_products(plan, layer_sizes, dtype, one_thread=True, backward=True, sparse=False,
                    measure=True, first_forward=None, rows=None):
    """Sets which of a new plan's products run in the own kernels (Plan.set_product_isas),
    for its passes of up to plan.capacity rows of `dtype` (chosen at `rows` rows where
    given: a row worker's share of a fit's plan, _threads.row_workspace), its BLAS calls
    cut as plan.gemm_chunks says; the arguments as for product_isas. Returns the plan."""
    plan.set_product_isas(product_isas(layer_sizes, plan.capacity if rows is None else rows,
                                       dtype, one_thread, backward, sparse, plan.gemm_chunks,
                                       measure, first_forward=first_forward))
    return plan


def product_isas(layer_sizes, rows: int, dtype, one_thread=True, backward=True,
                 sparse=False, gemm_chunks=None, measure=True, largest=None, margin=1.0,
                 first_forward=None, checks_inputs=False):
    """A Plan's product_isas for passes of up to `rows` rows of `dtype`: see the module.
    one_thread: BLAS would run these products on one thread; backward: the plan's passes
    take the delta and gradient products too (else only forward ones are measured);
    sparse: the first layer's forward and gradient products are the core's sparse loops;
    gemm_chunks: the plan's (Plan.gemm_chunks), so BLAS is timed in the calls the plan
    makes (its forward products cut for OpenBLAS's small kernels, its gradient blocks);
    None: whole products; measure: "auto" may time these shapes (a fit's batch, or a
    predict pass's row_bucket), else it leaves them on BLAS (gradients passes, whose
    chunks follow the call's rows); largest: products of more multiply-adds stay on BLAS
    unmeasured (None: no limit); margin: the own kernel is taken unless BLAS is faster by
    more than this factor (PASS_OWN_MARGIN for predict and evaluate passes);
    first_forward: (rows, inputs) of the first layer's forward product where the plan's
    passes make it at another shape than (rows, all inputs) in one call (the row split's
    first layer split by its inputs: each worker's partial product, _threads.row_workspace);
    checks_inputs: the plan's passes check their inputs as a kept predict pass does
    (_core's forward_kept: on the first layer's product where the own kernel makes it and
    it is narrower than X, else on X), so that product is timed with its check."""
    from fastbp import _core
    sizes = [int(size) for size in layer_sizes]
    n_layers = len(sizes) - 1
    isas = [0] * (6 * n_layers)
    mode, isa = kernel_mode(), kernel_isa()
    if mode == "blas" or isa is None:
        return isas
    code = _core.KERNEL_ISAS[isa]
    if mode == "own":
        return [code] * (6 * n_layers)
    dtype = np.dtype(dtype)
    if not (one_thread and measure) or rows < 1 or dtype not in (np.float32, np.float64):
        return isas
    # kept whole: a predict pass asks again on every call, and should not pay a look-up
    # per product
    chunks = None if gemm_chunks is None else tuple(gemm_chunks)
    arguments = (tuple(sizes), rows, dtype, isa, backward, sparse, chunks, largest, margin,
                 None if first_forward is None else tuple(first_forward), checks_inputs)
    if arguments in _chosen:
        return list(_chosen[arguments])
    isas, complete = _measured_isas(*arguments)
    if complete:        # (inside a pass, a product not measured yet runs on BLAS for now)
        _chosen[arguments] = isas
    return list(isas)


def _measured_isas(sizes, rows, dtype, isa, backward, sparse, gemm_chunks, largest, margin,
                   first_forward, checks_inputs):
    """(isas, complete): product_isas under "auto", each product measured (own_is_faster),
    with its share of the margin (product_margin); inside a pass (_threads.inside_pass)
    only the products already measured, complete False if one was not."""
    from fastbp import _core
    from fastbp._threads import inside_pass
    kept_only, complete = inside_pass(), True
    n_layers = len(sizes) - 1
    isas = [0] * (6 * n_layers)
    code = _core.KERNEL_ISAS[isa]
    base = 0 if dtype == np.float32 else 3 * n_layers
    measured = []    # (index in isas, kind, m, n, k, chunk rows, chunk columns, checked)
    for layer in range(1, n_layers + 1):
        if sparse and layer == 1:
            continue   # the core's sparse loops
        n_in, n_out = sizes[layer - 1], sizes[layer]
        (forward_rows, forward_columns), gradient_rows = \
            ((0, 0), 0) if gemm_chunks is None else gemm_chunks[layer - 1]
        products = [("nn", rows, n_out, n_in, forward_rows, forward_columns)]
        if layer == 1 and first_forward is not None:
            products = [("nn", first_forward[0], n_out, first_forward[1], 0, 0)]
        if backward:   # forward, delta, gradient
            products += [("nt", rows, n_in, n_out, 0, 0),
                         ("tn", n_in, n_out, rows, gradient_rows, 0)]
        for product, (kind, m, n, k, chunk_rows, chunk_columns) in enumerate(products):
            if kind == "nt" and layer == 1:
                continue   # the first layer has no input delta
            if largest is not None and m * n * k > largest:
                continue
            # (a first layer narrower than X: the own kernel's pass checks its product,
            # BLAS's reads X once more to check it, 30% of W1's predict pass here)
            checked = checks_inputs and layer == 1 and kind == "nn" and n_out < n_in
            measured.append((base + 3 * (layer - 1) + product, kind, m, n, k, chunk_rows,
                             chunk_columns, checked))
    pass_multiply_adds = sum(m * n * k for _, _, m, n, k, _, _, _ in measured)
    for index, kind, m, n, k, chunk_rows, chunk_columns, checked in measured:
        share = product_margin(margin, m * n * k, pass_multiply_adds, len(measured))
        faster = own_is_faster(kind, m, n, k, dtype, isa, chunk_rows, chunk_columns, share,
                               kept_only, checked)
        complete = complete and faster is not None
        if faster:
            isas[index] = code
    return isas, complete


def product_margin(margin, multiply_adds, pass_multiply_adds, n_products) -> float:
    """The factor by which BLAS must beat the own kernel on one product of a pass to take
    it, for a pass's `margin` (PASS_OWN_MARGIN): the larger of that margin on the product
    itself and an equal part, a product each, of that margin on the whole pass. A pass
    whose plan calls BLAS cannot share a lone chunk among threads, so a small product
    (an output layer of 10 units is 1.3% of W1's pass) keeps the own kernel unless BLAS
    saves a noticeable part of the pass: OpenBLAS's small-matrix kernel ran W1's
    128 x 10 x 128 in 3.2 us against the own kernel's 3.5, and took the second thread
    from a 128-row predict of about 130 us. The most a one-thread pass can lose so is the
    margin on the whole pass, plus the margin on each product as before. margin 1: no
    margin."""
    if margin == 1.0 or multiply_adds == 0:
        return margin
    return max(margin, 1.0 + (margin - 1.0) * pass_multiply_adds
               / (n_products * multiply_adds))


def row_bucket(rows: int) -> int:
    """The row count at which "auto" measures a pass whose chunk follows the call's rows
    (predict, evaluate): the smallest power of two >= rows, so every chunk of 1025 to 2048
    rows takes the choice measured at 2048."""
    return 1 << max(rows - 1, 0).bit_length()


def own_is_faster(kind, m, n, k, dtype, isa, chunk_rows=0, chunk_columns=0,
                  margin=1.0, kept_only=False, checked=False) -> bool | None:
    """True if the own kernel of isa takes this product faster than one-thread BLAS here
    (or slower by less than the factor `margin`), each in the calls the plan makes
    (_core.matrix_product's chunks); measured once per shape, chunks, dtype, isa, margin,
    CPU and OpenBLAS core, and cached. kept_only: the answer kept in memory or in the
    cache file (read without its lock), None if there is none; nothing measured.
    checked: each is timed with the finiteness check its pass makes (a kept predict
    pass's first product: the own kernel's product checked, BLAS's input)."""
    from fastbp._cache import build_identity, cache_folder, cpu_model, read_cache, settled
    chunk_rows = 0 if chunk_rows >= m else chunk_rows   # 0: whole, however it is written
    chunk_columns = 0 if chunk_columns >= n else chunk_columns
    key = (f"{kind}/{m}x{n}x{k}/{chunk_rows}x{chunk_columns}/{np.dtype(dtype).name}/{isa}/"
           f"{os.environ.get('OPENBLAS_CORETYPE', '')}/{cpu_model()}/{build_identity()}")
    if margin != 1.0:
        key += f"/margin {margin:g}"
    if checked:
        key += "/checked"
    from fastbp._threads import measured
    if kept_only:
        # (the file once per key, cache folder and process: a fit's validation passes
        # asked at every epoch, reading the whole file each time; an answer another
        # process writes later is not seen here until this one measures the product)
        found = _measured.get(key)
        where = (cache_folder(), key)
        if found is None and where not in _absent:
            kept = read_cache(CACHE_FILE).get(key)
            if isinstance(kept, bool):
                found = _measured[key] = kept
            else:
                _absent[where] = True
        return found

    def measure(wait):
        try:
            _measured[key] = settled(
                CACHE_FILE, key, lambda kept: isinstance(kept, bool),
                lambda: bool(_measure(kind, m, n, k, dtype, isa, chunk_rows, chunk_columns,
                                      margin, wait, checked)))
        except MemoryError:   # no room for the operands now: BLAS, not kept on disk
            _measured[key] = False
        return _measured[key]
    return measured(_lock, lambda: _measured.get(key), measure)


def _measure(kind, m, n, k, dtype, isa, chunk_rows=0, chunk_columns=0, margin=1.0,
             wait=True, checked=False) -> bool:
    import time
    from fastbp import _core
    from fastbp._threads import blas_threads
    rng = np.random.default_rng(0)
    # (drawn in the dtype: a float64 draw cast held 3x a float32 weight matrix at once)
    a = rng.standard_normal((k, m) if kind == "tn" else (m, k), np.dtype(dtype))
    b = rng.standard_normal((n, k) if kind == "nt" else (k, n), np.dtype(dtype))
    c = np.zeros((m, n), dtype)
    alpha, beta = (-1e-3, 1.0) if kind == "tn" else (1.0, 0.0)
    times = {isa: [], "blas": []}
    repeats = {}

    def run(backend, count):
        _core.matrix_product(kind, a, b, c, alpha, beta, backend, count, chunk_rows,
                             chunk_columns)
        if checked:     # the product's check, as the pass makes it (own_is_faster)
            for _ in range(count):
                _core.all_finite(a if backend == "blas" else c)

    with blas_threads(1, wait=wait):
        for backend in times:
            started = time.perf_counter()
            run(backend, 1)
            once = time.perf_counter() - started
            repeats[backend] = max(1, int(MEASURE_SECONDS / max(once, 1e-7)))
        for _ in range(MEASURE_ROUNDS):
            for backend in times:
                started = time.perf_counter()
                run(backend, repeats[backend])
                times[backend].append((time.perf_counter() - started) / repeats[backend])
    return bool(np.median(times[isa]) < margin * np.median(times["blas"]))


