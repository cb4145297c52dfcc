# cython: language_level=3
"""The compiled core: forward, backward, optimizer steps and the epoch loop.

How the pieces fit:
- csrc/ holds the element-wise kernels (bias + activation, output loss and delta,
  dropout, optimizer rules, gathers), one C source for float and double;
- `gemm` (_blas.pxd) does every matrix product through scipy's BLAS;
- `Plan` is the network's shape and where each array lives: the parameters are one flat
  buffer (W1, b1, W2, b2, ...) and the activations, deltas, masks, gradient and batch
  copies are one flat workspace sized for `capacity` rows, so a step allocates nothing;
  how the products are cut for OpenBLAS's small-matrix kernels is _small_gemm.pxi's;
- `Hyperparameters` holds the loss, the optimizer rule and its hyperparameters, and the
  optimizer's step count;
- `run_batch` is one forward + backward pass on m rows. In training the weight-gradient
  GEMMs accumulate (beta 1) into a buffer the update empties again, so OpenBLAS never
  spends an extra pass on beta: plain SGD folds its update into them (alpha = -lr, beta =
  1 - lr * weight_decay, the target being the parameters), momentum without Nesterov adds
  the gradient to its scaled velocity, and every other rule steps each block of W while it
  is still in cache (see Update); `gradients` only writes the gradient (beta 0, then 1
  for the next chunks of rows);
- the `def` functions (train_epoch, gradients, predict, ...) are thin shims that check
  every size against the plan (a wrong call raises ValueError, whoever makes it), take
  the arrays, release the GIL once, and loop in C. Values are the Python layer's to
  validate; an index the core reads from a caller's array (labels, the batch order, a
  sparse X's indptr and column indices) is checked as it is read, since the array may
  change after validation;
- sparse X (`SparseRows`, a CSR matrix's arrays read in place): the first layer's product
  and weight gradient run on the stored values (csrc: fbp_sparse_product,
  fbp_sparse_scatter), every other layer as for dense X (`SparseBatch`, run_batch).
Benchmark-only code lives in _bench.pxi.
"""
from cython cimport floating
from libc.float cimport DBL_MAX, DBL_MIN, FLT_MAX, FLT_MIN
from libc.math cimport INFINITY, fabs, frexp, isfinite, ldexp, pow, sqrt
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.exc cimport PyErr_CheckSignals

from fastbp._blas cimport fbp_install_fork_guard, fbp_set_pass_blas_threads, gemm
from scipy.linalg.cython_blas cimport sgemm
from fastbp._kernels cimport *   # the kernels (fbp_*), each with one wrapper for both dtypes

import os
import signal
import threading

import numpy as np

# The codes the kernels switch on, by name, in code order: csrc/fastbp.h defines both.
ACTIVATION_CODES = {fbp_activation_names[code].decode(): code
                    for code in range(FBP_N_ACTIVATIONS)}
LOSS_CODES = {fbp_loss_names[code].decode(): code for code in range(FBP_N_LOSSES)}
OPTIMIZER_CODES = {fbp_optimizer_names[code].decode(): code for code in range(FBP_N_OPTIMIZERS)}
# "0": a sparse fit whose rule steps every row of W1 reads the whole gradient buffer, not
# only the rows each batch names (train_epoch)
NAMED_ROWS_VARIABLE = "FASTBP_SPARSE_NAMED_ROWS"
LAZY_ADAM_VARIABLE = "FASTBP_SPARSE_LAZY_ADAM"   # "0": Adam on sparse input steps every row
# "keep": train_epoch computes with IEEE subnormals instead of flushing them to 0
# (fbp_float_mode_enter; docs/contract.md, "Training")
SUBNORMALS_VARIABLE = "FASTBP_SUBNORMALS"
# What a sparse fit keeps for each column of X (row of W1) beside the model and its state:
# a lazy rule's four counts (train_epoch's lazy.applied, listed, touched, slot), the flags
# of the rows a batch names (named), the row log's and the trainer's moving rows': checked
# against the machine's memory before the fit starts (fastbp.trainer).
SPARSE_BYTES_PER_COLUMN = 4 * sizeof(Py_ssize_t) + 3
# The most rows a plan holds (and a batch has): the passes count a batch's rows in a C int,
# so a batch of 2**31 rows or more would wrap (to none, or a few) and train or predict
# nothing past them without a word.
MOST_BATCH_ROWS = 2**31 - 1


def environment_choice(str name, tuple choices):
    """The environment variable `name` stripped and lower-cased: "" where unset or empty,
    else one of `choices`; any other value is refused with a ValueError naming it (a switch
    that silently did nothing would hide a typo in it)."""
    value = os.environ.get(name, "").strip().lower()
    if value and value not in choices:
        raise ValueError(f"{name}={os.environ[name]!r}: it must be "
                         f"{' or '.join(repr(choice) for choice in choices)}, or unset")
    return value


def lazy_adam_rows():
    """Whether Adam on sparse input steps only the rows of W1 a batch names (LazyAdam):
    unless FASTBP_SPARSE_LAZY_ADAM is "0" ("1" or unset); ValueError for any other value."""
    return environment_choice(LAZY_ADAM_VARIABLE, ("0", "1")) != "0"


def named_rows_only():
    """Whether the every-row step of a sparse fit skips reading the gradient of the rows no
    batch named: unless FASTBP_SPARSE_NAMED_ROWS is "0" ("1" or unset); ValueError for any
    other value."""
    return environment_choice(NAMED_ROWS_VARIABLE, ("0", "1")) != "0"


def flushes_subnormals():
    """Whether training epochs flush subnormal numbers to 0: unless FASTBP_SUBNORMALS is
    "keep" ("flush", the default, or unset); ValueError for any other value."""
    return environment_choice(SUBNORMALS_VARIABLE, ("flush", "keep")) != "keep"

# train_epoch's status
cpdef enum Status:
    COMPLETED = 0
    DIVERGED = 1
    INTERRUPTED = 2


cdef struct PlanData:
    int n_layers
    Py_ssize_t capacity             # rows the workspace holds
    Py_ssize_t n_params
    Py_ssize_t work_size
    Py_ssize_t* sizes               # n_layers + 1 widths, input first
    Py_ssize_t* weight_offsets      # per weight layer, into the parameter buffer
    Py_ssize_t* bias_offsets
    Py_ssize_t* forward_chunks      # per weight layer: output columns per forward GEMM call
    Py_ssize_t* forward_row_chunks  # per weight layer: batch rows per forward GEMM call
    Py_ssize_t* gradient_chunks     # per weight layer: rows of W per weight-gradient GEMM call
    # into the workspace, indexed by layer l = 1..n_layers (-1: not kept)
    Py_ssize_t* output_offsets      # A_l = f(Z_l)
    Py_ssize_t* preactivation_offsets   # Z_l, for gelu and swish
    Py_ssize_t* dropped_offsets     # A_l * mask_l, the next layer's input under dropout
    Py_ssize_t* mask_offsets
    Py_ssize_t delta_offsets[2]     # two delta buffers, used in turn going backwards
    Py_ssize_t batch_x_offset       # gathered batch of inputs
    Py_ssize_t batch_y_offset       # gathered (or one-hot) batch of targets
    Py_ssize_t batch_weight_offset  # gathered row weights
    Py_ssize_t gradient_offset      # n_params gradient, when the update is not folded (-1)
    Py_ssize_t few_rows             # forward products of at most this many rows may use
                                    # the few-row kernels (csrc/few_rows.h), not BLAS (0: never)
    bint few_rows_always            # ... always, not only where fbp_few_rows_faster says
    bint sparse_input               # X is sparse: no batch of dense input rows is kept
    double* dropout_rates           # per weight layer: dropout applied to its output
    int* activations                # one code per weight layer
    int* product_isas               # per dtype (float, double), weight layer and product
                                    # (forward, delta, gradient): the instruction set of
                                    # the own kernel that takes it (csrc/products.h), 0: BLAS


include "_small_gemm.pxi"
include "_products.pxi"


def check_product_isas(product_isas, Py_ssize_t n_layers):
    """A Plan's product_isas as a list of 6 n_layers codes this CPU runs (None: all 0)."""
    isas = [0] * (6 * n_layers) if product_isas is None else list(product_isas)
    cdef int best_isa = fbp_best_product_isa()
    if len(isas) != 6 * n_layers or any(not 0 <= isa <= best_isa for isa in isas):
        raise ValueError(f"product_isas needs 2 x 3 x {n_layers} codes in 0..{best_isa} "
                         f"(this CPU's kernels); got {isas}")
    return isas


cdef bint valid_code(int code, dict codes):
    """True if code is one of the codes (one of the tables above)."""
    return 0 <= code < len(codes)


cdef check_loss(int loss, double loss_parameter):
    """Refuse an unknown loss code, or a parameter outside what the loss reads it as:
    Huber's delta (> 0); the cross-entropies' clip of the probabilities in the loss's value
    (0: none, else in (0, 0.5); fbp_output_layer); ignored by the other losses."""
    if not valid_code(loss, LOSS_CODES):
        raise ValueError(f"unknown loss code {loss}")
    if loss == FBP_HUBER and not loss_parameter > 0:
        raise ValueError(f"Huber's delta (the loss parameter) must be > 0; got {loss_parameter}")
    if (loss == FBP_CCE or loss == FBP_BCE) and not 0 <= loss_parameter < 0.5:
        raise ValueError(f"a cross-entropy's clip (the loss parameter) must be 0 or in "
                         f"(0, 0.5); got {loss_parameter}")


cdef class Plan:
    """The shape of a network and the layout of its parameter and workspace buffers.

    layer_sizes: the widths, input first; activations: one code per weight layer;
    capacity: the most rows a pass takes at once (0: a plan for the parameters only);
    dropout_rates: one rate per weight layer (0 for none; never the output layer);
    with_gradient: reserve room for a full gradient (optimizers other than plain SGD);
    small_gemm_chunks: cut the forward and weight-gradient products into calls small
    enough for OpenBLAS's small-matrix kernels (only where the BLAS has them, one thread);
    few_rows: forward products of at most this many rows run in the few-row kernels of
    csrc/few_rows.h instead of BLAS where those are faster (fbp_few_rows_faster), or
    always with few_rows_always (0: never; predict's plans, see fastbp/_serving.pxi);
    product_isas: which products run in fastbp's own kernels (csrc/products.h) instead of
    BLAS: 2 x n_layers x 3 instruction-set codes (KERNEL_ISAS; 0 for BLAS), float32's then
    float64's, each layer's forward, delta and gradient product (fastbp._products chooses
    them); None: BLAS for all;
    sparse_input: for sparse X (SparseRows), whose batches are read in place: the workspace
    keeps no dense batch of inputs (capacity x the input width).
    """
    cdef PlanData data
    cdef void* memory               # every array of `data`, in one allocation
    cdef readonly Py_ssize_t n_params, work_size

    @property
    def gradient_offset(self):
        """Where the workspace's gradient buffer (n_params values) starts, or -1."""
        return self.data.gradient_offset

    def __cinit__(self, layer_sizes, activations, Py_ssize_t capacity, dropout_rates=None,
                  bint with_gradient=False, bint small_gemm_chunks=False,
                  Py_ssize_t few_rows=0, bint few_rows_always=False,
                  bint sparse_input=False, product_isas=None):
        cdef Py_ssize_t n_layers = len(activations)
        cdef Py_ssize_t l, offset = 0, widest = 0
        cdef PlanData* plan = &self.data
        if n_layers < 1 or len(layer_sizes) != n_layers + 1:
            raise ValueError(f"a plan needs one activation per weight layer and one more "
                             f"width; got {len(layer_sizes)} widths, {n_layers} activations")
        if any(not 1 <= size < 2**31 for size in layer_sizes):
            raise ValueError(f"layer widths must be in [1, 2**31); got {list(layer_sizes)}")
        if any(not valid_code(code, ACTIVATION_CODES) for code in activations):
            raise ValueError(f"unknown activation code in {list(activations)}")
        rates = [0.0] * n_layers if dropout_rates is None else list(dropout_rates)
        if len(rates) != n_layers or any(not 0 <= rate < 1 for rate in rates) \
                or rates[n_layers - 1]:
            raise ValueError(f"dropout_rates needs one rate in [0, 1) per weight layer, 0 for "
                             f"the output layer; got {rates}")
        if not 0 <= capacity <= MOST_BATCH_ROWS:
            raise ValueError(f"capacity must be in [0, {MOST_BATCH_ROWS:,}] (a batch's rows "
                             f"are counted in a C int); got {capacity:,}")
        if few_rows < 0:
            raise ValueError(f"few_rows must be >= 0; got {few_rows}")
        isas = check_product_isas(product_isas, n_layers)
        # Every offset below is a Py_ssize_t: a plan whose parameters or workspace would not
        # be counted in one (sizes near 2^31 with as many rows) is refused here, in Python's
        # integers, before that arithmetic could wrap (to a negative or too small size).
        sizes = [int(size) for size in layer_sizes]
        bound = sum((sizes[l] + 1) * sizes[l + 1] for l in range(n_layers))
        bound += int(capacity) * (5 * sum(sizes) + 2 * max(sizes) + 1) + bound
        if bound >= 2**62:
            raise ValueError(f"a plan for layers {sizes} and {capacity} rows would need "
                             f"about {bound:.3g} values: more than can be counted")
        # 10 arrays of n_layers or n_layers + 1 offsets and widths, then the rates, codes,
        # and the 6 n_layers product_isas
        cdef size_t n_offsets = 5 * <size_t>(n_layers + 1) + 5 * <size_t>n_layers
        self.memory = malloc(n_offsets * sizeof(Py_ssize_t) + n_layers * sizeof(double)
                             + 7 * n_layers * sizeof(int))
        if not self.memory:
            raise MemoryError("Plan: no memory for a plan's offsets")
        cdef Py_ssize_t* slot = <Py_ssize_t*>self.memory
        plan.sizes = slot; slot += n_layers + 1
        plan.output_offsets = slot; slot += n_layers + 1
        plan.preactivation_offsets = slot; slot += n_layers + 1
        plan.dropped_offsets = slot; slot += n_layers + 1
        plan.mask_offsets = slot; slot += n_layers + 1
        plan.weight_offsets = slot; slot += n_layers
        plan.bias_offsets = slot; slot += n_layers
        plan.forward_chunks = slot; slot += n_layers
        plan.forward_row_chunks = slot; slot += n_layers
        plan.gradient_chunks = slot; slot += n_layers
        plan.dropout_rates = <double*>slot
        plan.activations = <int*>(plan.dropout_rates + n_layers)
        plan.product_isas = plan.activations + n_layers
        for l in range(6 * n_layers):
            plan.product_isas[l] = isas[l]

        plan.n_layers = <int>n_layers
        plan.capacity = capacity
        plan.few_rows = few_rows
        plan.few_rows_always = few_rows_always
        plan.sparse_input = sparse_input
        for l in range(n_layers + 1):
            plan.sizes[l] = layer_sizes[l]
        for l in range(n_layers):
            plan.activations[l] = activations[l]
            plan.dropout_rates[l] = rates[l]
            plan.weight_offsets[l] = offset
            offset += plan.sizes[l] * plan.sizes[l + 1]
            plan.forward_chunks[l] = plan.sizes[l + 1]
            plan.forward_row_chunks[l] = max(capacity, 1)
            plan.gradient_chunks[l] = plan.sizes[l]
            if small_gemm_chunks:   # W[chunk, :] += A[:, chunk]^T D (capacity rows)
                cut_forward_product(plan, l, capacity)
                plan.gradient_chunks[l] = small_gemm_chunk(capacity * plan.sizes[l + 1],
                                                           plan.sizes[l])
            plan.bias_offsets[l] = offset
            offset += plan.sizes[l + 1]
            widest = max(widest, plan.sizes[l + 1])
        plan.n_params = self.n_params = offset

        offset = 0
        for l in range(n_layers + 1):
            plan.output_offsets[l] = plan.preactivation_offsets[l] = -1
            plan.dropped_offsets[l] = plan.mask_offsets[l] = -1
        for l in range(1, n_layers + 1):
            plan.output_offsets[l] = offset
            offset += capacity * plan.sizes[l]
            if fbp_needs_preactivation(plan.activations[l - 1]):
                plan.preactivation_offsets[l] = offset
                offset += capacity * plan.sizes[l]
            if plan.dropout_rates[l - 1] > 0:
                plan.dropped_offsets[l] = offset
                offset += capacity * plan.sizes[l]
                plan.mask_offsets[l] = offset
                offset += capacity * plan.sizes[l]
        for l in range(2):
            plan.delta_offsets[l] = offset
            offset += capacity * widest
        plan.batch_x_offset = -1 if sparse_input else offset
        offset += 0 if sparse_input else capacity * plan.sizes[0]
        plan.batch_y_offset = offset
        offset += capacity * plan.sizes[n_layers]
        plan.batch_weight_offset = offset
        offset += capacity
        plan.gradient_offset = offset if with_gradient else -1
        offset += self.n_params if with_gradient else 0
        plan.work_size = self.work_size = offset

    def __dealloc__(self):
        free(self.memory)

    @property
    def capacity(self):
        return self.data.capacity

    def set_product_isas(self, product_isas):
        """Which products run in the own kernels from now on (see the class; None: BLAS
        for all). For a plan that no pass is using: fastbp._products chooses them from
        the plan's shape and gemm_chunks before the plan's first pass."""
        isas = check_product_isas(product_isas, self.data.n_layers)
        for l in range(6 * self.data.n_layers):
            self.data.product_isas[l] = isas[l]

    @property
    def product_isas(self):
        """The plan's product_isas (see the class): per dtype, per weight layer, the
        instruction-set codes of its (forward, delta, gradient) products, 0 for BLAS."""
        return {name: [tuple(self.data.product_isas[(d * self.data.n_layers + l) * 3 + p]
                             for p in range(3)) for l in range(self.data.n_layers)]
                for d, name in enumerate(("float32", "float64"))}

    def forward_calls_blas(self, Py_ssize_t n_rows, bint in_double, bint or_own=False):
        """Whether a forward pass (predict, evaluate: forward_in_chunks) over n_rows rows
        in this plan's chunks calls BLAS, in float64 or float32: whether any chunk has a
        product that forward_product gives BLAS (not a sparse X's first layer, the few-row
        kernels or the own kernels). A pass that calls none needs no BLAS thread count.
        or_own: the own kernels count too (a pass for which this is False runs the same
        kernels whatever its thread count: the own kernels are chosen per count)."""
        if n_rows < 1:
            raise ValueError(f"forward_calls_blas: n_rows is {n_rows}; it must be >= 1")
        cdef Py_ssize_t full = min(n_rows, self.data.capacity)
        cdef Py_ssize_t last = n_rows % self.data.capacity if n_rows > full else 0
        if in_double:
            return forward_blas_rows(&self.data, full, <double*>NULL, or_own) or (
                last > 0 and forward_blas_rows(&self.data, last, <double*>NULL, or_own))
        return forward_blas_rows(&self.data, full, <float*>NULL, or_own) or (
            last > 0 and forward_blas_rows(&self.data, last, <float*>NULL, or_own))

    def step_calls_blas(self, Py_ssize_t n_rows, Py_ssize_t batch_size, bint in_double):
        """Whether an epoch of training steps (train_epoch on one thread: run_batch) over
        n_rows rows in batches of batch_size calls BLAS, in float64 or float32: whether a
        step of a full batch or of the last, shorter one has a forward, input-delta or
        weight-gradient product outside a sparse X's own loops, the few-row kernels and
        the own kernels. An epoch that calls none needs no BLAS thread count."""
        if n_rows < 1 or not 1 <= batch_size <= self.data.capacity:
            raise ValueError(f"step_calls_blas: {n_rows} rows in batches of {batch_size}; "
                             f"it needs rows >= 1 and batches of 1..{self.data.capacity}")
        cdef Py_ssize_t full = min(n_rows, batch_size)
        cdef Py_ssize_t last = n_rows % batch_size if n_rows > full else 0
        if in_double:
            return step_blas_rows(&self.data, full, <double*>NULL) or (
                last > 0 and step_blas_rows(&self.data, last, <double*>NULL))
        return step_blas_rows(&self.data, full, <float*>NULL) or (
            last > 0 and step_blas_rows(&self.data, last, <float*>NULL))

    @property
    def gemm_chunks(self):
        """Per weight layer: (batch rows and output columns per forward call, W rows per
        gradient call)."""
        return [((self.data.forward_row_chunks[l], self.data.forward_chunks[l]),
                 self.data.gradient_chunks[l]) for l in range(self.data.n_layers)]

    def gradient_blocks(self, int layer, bint stepping):
        """Weight layer `layer`'s (1-based) gradient GEMM calls as run_batch makes them:
        [(offset into the parameter buffer, elements)], one per block of W's rows."""
        if not 1 <= layer <= self.data.n_layers:
            raise ValueError(f"layer must be in 1..{self.data.n_layers}; got {layer}")
        cdef Py_ssize_t n_in = self.data.sizes[layer - 1], n_out = self.data.sizes[layer]
        cdef Py_ssize_t w = self.data.weight_offsets[layer - 1], start = 0, rows
        cdef Py_ssize_t block = gradient_block_rows(&self.data, layer, stepping)
        blocks = []
        while start < n_in:
            rows = min(block, n_in - start)
            blocks.append((w + start * n_out, rows * n_out))
            start += rows
        return blocks

    def parameter_views(self, params):
        """Split a flat parameter-shaped buffer into views: (weights, biases)."""
        if len(params) != self.n_params:
            raise ValueError(f"parameter_views: {len(params)} values; the plan has "
                             f"{self.n_params} parameters")
        weights, biases = [], []
        for l in range(self.data.n_layers):
            n_in, n_out = self.data.sizes[l], self.data.sizes[l + 1]
            start = self.data.weight_offsets[l]
            weights.append(params[start:start + n_in * n_out].reshape(n_in, n_out))
            start = self.data.bias_offsets[l]
            biases.append(params[start:start + n_out])
        return weights, biases


class ThreadsUnavailable(RuntimeError):
    """A multi-threaded epoch whose threads could not be started: the process is out of
    threads (a container's pids.max, RLIMIT_NPROC)."""


# ---- sparse input ----

# Rows of W1 that a sparse batch does not name, brought up to date lazily: where the
# first layer's rule, on a row whose gradient is 0, is a linear map of the row and its
# state (momentum, decay; Adagrad and RMSprop without coupled decay), a row steps only
# when a batch names it, first catching up the steps it missed in one go (the map's k-th
# power), and every row catches up at the end of the epoch (train_epoch), so nothing
# outside an epoch ever sees a row behind. Equal to stepping every row at every step, to
# rounding. Adam's step without a gradient is not linear; it catches up by a series
# instead (LazyAdam). The adaptive rules with coupled decay step all of W1 at each step
# (sparse_weight_update).
cdef struct LazyRows:
    double a, b, c, d               # one step without a gradient: (p, u) -> (a p + b u, c p + d u)
    double e                        # ... and o -> e o
    void* coupled                   # u: momentum's velocity (W1's part), or NULL
    void* scaled                    # o: RMSprop's second moment (W1's part), or NULL
    LazyAdam* adam                  # Adam (with or without decoupled decay), or NULL
    Py_ssize_t* applied             # per row of W1: the steps of this epoch applied to it
    Py_ssize_t* listed              # per row: the step whose batch last named it (-1: none)
    Py_ssize_t* touched             # the rows of W1 the current batch names, each once
    Py_ssize_t* slot                # per row: its place in touched (where listed == steps)
    Py_ssize_t n_touched
    Py_ssize_t steps                # steps of this epoch taken so far
    const unsigned char* moving     # per row: 0 where its state is known to be all 0 (so
                                    # that the flush skips it unread), or NULL
    RowGradients* gradients         # LAYER_STEP rules: each named row's gradient made and
                                    # stepped at once (sparse_row_steps), or NULL


# A lazy rule that steps from a gradient (LAYER_STEP: Adam, Nesterov momentum, Adagrad,
# RMSprop) makes each named row's gradient from the batch's stored values in its column,
# grouped by row (a counting sort of the values read_batch_values read), and steps the row at
# once: W1's part of the gradient buffer is never used (neither zeroed nor read, so its
# pages are never touched), and a step moves a named row's weights and state, not a
# gradient row besides.
cdef struct RowGradients:
    Py_ssize_t* starts              # per slot: where its values start (n_touched + 1)
    Py_ssize_t* positions           # the batch rows, grouped by slot, in batch order
    void* values                    # their values, likewise
    void* row                       # one row's gradient (n_out values)


# Adam on a row of W1 that k steps named no batch of: with m, v its moments after step t0
# and u = sqrt(v), step s = t0 + j (j = 1..k) does p <- shrink p, then
#     p -= lr_s m beta1^j / (u beta2^(j/2) / r_s + eps)
# where lr_s = lr / (1 - beta1^s) and r_s = sqrt(1 - beta2^s) (its bias corrections), and
# shrink = 1 - lr wd (decoupled decay) or 1. With a_s = lr_s r_s (beta1 / sqrt(beta2))^j and
# b_s = r_s beta2^(-j/2), that term is (m / u) a_s / (1 + eps b_s / u) = (m / u) a_s
# sum_q (-eps b_s / u)^q, so after the k steps
#     p = shrink^k p - (m / u) sum_q (-eps 2^E / u)^q C_q,
#     C_q = sum_s shrink^(t - s) a_s (b_s / 2^E)^q,
# m = beta1^k m and v = beta2^k v, with 2^E a power of two (E >= 0) above the largest b_s,
# b_t, at most twice it. (The sums of the b_s^q themselves overflowed where beta2 is well
# below 1, b_t growing as beta2^(-k/2): 0.95 in float32, whose every epoch of a sparse fit
# was then undone as diverged. A power of two scales them without rounding.) The C_q
# depend on t0 and t only, not on the weight: they are kept for every t0 of the window
# and grow by one term a step (lazy_adam_advance, which raises E and rescales them as b_s
# grows), so a row catches up in at most 32 multiply-adds a weight in float32, 72 in float64
# (FBP_ADAM_TERMS_FLOAT, _DOUBLE; fbp_adam_catch_up, which
# also steps a row that missed only a few steps one step at a time: that costs less). The
# series is cut where the rest is below a quarter of the dtype's rounding of the step.
# A weight whose eps b_s / u may exceed the series limit (u not far above eps: a row whose
# gradients have become small, more of them as a fit goes on) takes a second series, in
# powers of u's distance from a centre u0 = kappa eps b_min (b_min = b_(t0+1), the least b_s):
#     1 / (u + eps b_s) = sum_q y^q D^q / (u0 + eps b_s)^(q+1),  y = (u0 - u) / D,
# D = u0 + eps b_min, so that each ratio D / (u0 + eps b_s) is at most 1 and the series
# converges wherever |y| < 1, whatever the spread of b_s; the step is then m sum_q y^q M_q,
#     M_q = sum_s shrink^(t - s) a_s D^q / (eps (u0 + eps b_s)^(q+1)) (kept like the C_q).
# kappa puts u = 0 at y = 0.95 of the series limit (0.55); the two series together then
# take every weight when b_max / b_min < 1.23 (k up to ~420 steps late in a fit). A weight
# neither series takes steps through its k steps one by one, with the dense rule's
# arithmetic.
# The sums run over a window of steps: every row catches up and the window starts again
# after lazy_adam_window steps (and at the end of an epoch, with the other lazy rules).
cdef Py_ssize_t lazy_adam_window = 1024
cdef double lazy_adam_series_limit = -1      # < 0: LAZY_ADAM_LIMIT
cdef bint lazy_adam_middle = True           # the second series (False: for tests)
# FBP_ADAM_TERMS_FLOAT = 32 and _DOUBLE = 72 terms of a series reach a quarter of the
# dtype's rounding (two bits more for the second series) up to this ratio
cdef double LAZY_ADAM_LIMIT = 0.55

def lazy_adam_settings(window=None, series_limit=None, middle=None):
    """Sparse Adam's (window, series_limit, middle) as they were before this call (see
    LazyAdam), setting each one given (a series_limit below 0: LAZY_ADAM_LIMIT; middle
    False: no second series): tests force every path with them."""
    global lazy_adam_window, lazy_adam_series_limit, lazy_adam_middle
    previous = (lazy_adam_window, lazy_adam_series_limit, lazy_adam_middle)
    if window is not None:
        if int(window) < 1:
            raise ValueError(f"window must be at least 1; got {window}")
        lazy_adam_window = int(window)
    if series_limit is not None:
        lazy_adam_series_limit = float(series_limit)
    if middle is not None:
        lazy_adam_middle = bool(middle)
    return previous


cdef double lazy_adam_limit() noexcept nogil:
    """The series' limit: LAZY_ADAM_LIMIT, or lazy_adam_settings' series_limit."""
    return lazy_adam_series_limit if lazy_adam_series_limit >= 0 else LAZY_ADAM_LIMIT


cdef double lazy_adam_kappa(double limit, double epsilon) noexcept nogil:
    """The second series' centre u0 / (eps b_min) for a series limit (see LazyAdam): u = 0
    at y = 0.95 limit; -1 (no second series) outside 0 < limit < 1, without an epsilon
    (its coefficients are over eps) or when turned off."""
    if not (lazy_adam_middle and 0 < limit < 1 and epsilon > 0):
        return -1
    return 0.95 * limit / (1 - 0.95 * limit)


cdef struct LazyAdam:
    double beta1, beta2, epsilon, shrink
    Py_ssize_t window               # steps before every row catches up and the sums restart
    double base_step                # Adam's t before the window's first step
    double* step_sizes              # per step s of the window (1..): lr_s
    double largest_step             # the largest |lr_s| of the window so far (flush_bound)
    double* roots                   # ... r_s
    double* decays                  # per k = 0..window: shrink^k, beta1^k, beta2^k
    double* powers                  # ... beta1^k beta2^(-k/2), beta2^(-k/2) (powers of the
                                    # rounded beta1 / sqrt(beta2) drifted k roundings from
                                    # them: 180 double epsilons of the step at beta2 = 0.5)
    double kappa                    # the second series' centre u0 / (eps b_min), or < 0: none
    double center                   # ... as u0 / D = kappa / (kappa + 1) (0 without it)
    int terms                       # of each series: FBP_ADAM_TERMS_FLOAT or _DOUBLE
    double* sums                    # per t0 (0..), adam_sums(terms) apart: beta1^j /
                                    # beta2^(j/2), beta2^(-j/2), C_0 .. C_(terms-1), D / eps,
                                    # then M_0 .. M_(terms-1), E, j = steps - t0
    void* first                     # W1's part of m
    void* second                    # W1's part of v


# An epoch of a sparse fit may have to be undone (a loss that diverged, an index rewritten
# mid-fit): the parameters and the optimizer state go back to those at the epoch's start.
# A sparse fit's W1 may be most of its memory (10^7 columns x 256 is 10 GB in float32),
# and an epoch changes only the rows its batches name (and, at its end, the rows a lazy
# rule catches up), so W1 is not copied whole at the epoch's start: each row, of W1 and
# of every row of the optimizer state, is copied into the log the first time the epoch
# is about to change it (log_row), and undone from there (RowLog.restore), but for the
# rows only the epoch's end catches up whose catch-up is proven finite: those change
# unlogged after the epoch's last check, when it can no longer be undone
# (lazy_flush_deferred). The log's
# memory is the rows an epoch changes, kept for the next epoch. Rules that move every row
# at every step (Adam without its lazy rows, Adagrad or RMSprop with coupled decay,
# clipping) log every row at the epoch's start: a whole copy, as a dense fit makes.
cdef struct RowLogData:
    Py_ssize_t n_rows               # rows of W1
    Py_ssize_t row_bytes            # one row of W1 (n_out values)
    Py_ssize_t n_arrays             # 1 + the optimizer state's rows: copies a row takes
    Py_ssize_t state_stride         # bytes from one row of the state to the next
    char* W1                        # the fit's W1 and its state's W1 part (train_epoch)
    char* state
    unsigned char* logged           # per row of W1: 1 once logged this epoch (a byte a row,
                                    # so that the check each named row takes stays in cache)
    Py_ssize_t n_logged             # rows logged this epoch
    Py_ssize_t entry_bytes          # a logged row: its index, then its n_arrays copies
    char** chunks                   # LOG_CHUNK_BYTES (at least one entry) each
    Py_ssize_t n_chunks, chunk_rows
    bint out_of_memory              # a chunk could not be allocated: the epoch stops


cdef enum:
    LOG_CHUNK_BYTES = 1 << 20


cdef inline char* log_entry(const RowLogData* log, Py_ssize_t place) noexcept nogil:
    return log.chunks[place // log.chunk_rows] + (place % log.chunk_rows) * log.entry_bytes


cdef bint log_row(RowLogData* log, Py_ssize_t row) noexcept nogil:
    """Row `row` of W1 and of the state into the log, unless already there this epoch.
    False: out of memory (log.out_of_memory set; the row is not to be changed)."""
    if log.logged[row]:
        return True
    cdef Py_ssize_t place = log.n_logged, chunk = place // log.chunk_rows, a
    cdef char** chunks
    if chunk == log.n_chunks:
        chunks = <char**>PyMem_RawRealloc(log.chunks, (chunk + 1) * sizeof(char*))
        if chunks == NULL:
            log.out_of_memory = True
            return False
        log.chunks = chunks
        chunks[chunk] = <char*>PyMem_RawMalloc(log.chunk_rows * log.entry_bytes)
        if chunks[chunk] == NULL:
            log.out_of_memory = True
            return False
        log.n_chunks += 1
    cdef char* entry = log_entry(log, place)
    (<Py_ssize_t*>entry)[0] = row
    entry += sizeof(Py_ssize_t)
    memcpy(entry, log.W1 + row * log.row_bytes, log.row_bytes)
    for a in range(1, log.n_arrays):
        memcpy(entry + a * log.row_bytes,
               log.state + (a - 1) * log.state_stride + row * log.row_bytes, log.row_bytes)
    log.logged[row] = 1
    log.n_logged += 1
    return True


cdef bint log_every_row(RowLogData* log) noexcept nogil:
    """Every row of W1 into the log (a rule that moves them all). False: out of memory."""
    cdef Py_ssize_t row
    for row in range(log.n_rows):
        if not log_row(log, row):
            return False
    return True


cdef class RowLog:
    """The undo log of W1's rows for a sparse fit's epochs (see RowLogData): made by the
    trainer for a model's W1 (n_rows x row_length, `dtype`) and an optimizer state of
    `state_rows` rows, handed to each train_epoch (which empties it at the epoch's start),
    and asked to restore when the epoch is undone."""
    cdef RowLogData data
    cdef object logged
    cdef readonly object dtype

    def __cinit__(self, Py_ssize_t n_rows, Py_ssize_t row_length, int state_rows, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64) or n_rows < 1 or row_length < 1 \
                or state_rows < 0:
            raise ValueError(f"RowLog: no log for {n_rows} x {row_length} of {self.dtype} "
                             f"with {state_rows} state rows")
        self.logged = np.zeros(n_rows, dtype=np.uint8)
        cdef unsigned char[::1] logged = self.logged
        self.data.n_rows = n_rows
        self.data.row_bytes = row_length * self.dtype.itemsize
        self.data.n_arrays = 1 + state_rows
        # rounded up to whole Py_ssize_t, so that every entry's index is aligned (a float32
        # row of odd width is not a multiple of 8 bytes)
        cdef Py_ssize_t word = sizeof(Py_ssize_t)
        self.data.entry_bytes = word * (1 + (self.data.n_arrays * self.data.row_bytes
                                             + word - 1) // word)
        self.data.logged = &logged[0]
        self.data.n_logged = self.data.n_chunks = 0
        self.data.chunks = NULL
        self.data.chunk_rows = max(1, LOG_CHUNK_BYTES // self.data.entry_bytes)
        self.data.out_of_memory = False
        self.data.W1 = self.data.state = NULL

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.data.n_chunks):
            PyMem_RawFree(self.data.chunks[i])
        PyMem_RawFree(self.data.chunks)

    @property
    def n_logged(self):
        """The rows of W1 the epoch changed (logged so far)."""
        return self.data.n_logged

    cdef RowLogData* begin(self, str caller, const PlanData* plan, void* params, void* state,
                           int state_rows, Py_ssize_t itemsize) except NULL:
        """The log emptied for an epoch of this plan's fit, on these arrays."""
        check_size(caller, "the row log's rows", self.data.n_rows, plan.sizes[0])
        check_size(caller, "the row log's row bytes", self.data.row_bytes,
                   plan.sizes[1] * itemsize)
        check_size(caller, "the row log's state rows", self.data.n_arrays - 1, state_rows)
        self.clear()
        self.data.W1 = <char*>params + plan.weight_offsets[0] * itemsize
        self.data.state = <char*>state + plan.weight_offsets[0] * itemsize if state_rows else NULL
        self.data.state_stride = plan.n_params * itemsize
        return &self.data

    def clear(self):
        """Forget the rows logged: each epoch's start (begin), and the trainer's before each
        epoch, so that an error raised before begin never restores the last epoch's rows."""
        cdef Py_ssize_t i
        for i in range(self.data.n_logged):
            self.data.logged[(<Py_ssize_t*>log_entry(&self.data, i))[0]] = 0
        self.data.n_logged = 0
        self.data.out_of_memory = False

    def restore(self, floating[::1] params, floating[:, ::1] state):
        """Every row the epoch changed back as it was at its start, in params' W1 (its first
        n_rows x row_length values) and state's (each of its rows, the same part)."""
        cdef Py_ssize_t row_length = self.data.row_bytes // sizeof(floating), i, a, row
        if sizeof(floating) != self.dtype.itemsize:
            raise TypeError(f"RowLog.restore: the log holds {self.dtype}")
        check_size("RowLog.restore", "the state's row count", state.shape[0],
                   self.data.n_arrays - 1)
        if params.shape[0] < self.data.n_rows * row_length or (
                state.shape[0] and state.shape[1] != params.shape[0]):
            raise ValueError("RowLog.restore: params and state must hold the logged W1")
        cdef char* copy
        for i in range(self.data.n_logged):
            copy = log_entry(&self.data, i)
            row = (<Py_ssize_t*>copy)[0]
            copy += sizeof(Py_ssize_t)
            memcpy(&params[row * row_length], copy, self.data.row_bytes)
            for a in range(1, self.data.n_arrays):
                memcpy(&state[a - 1, row * row_length], copy + a * self.data.row_bytes,
                       self.data.row_bytes)


# A batch of a sparse X's rows, as the kernels read it (csrc/kernels_impl.h).
cdef struct SparseBatch:
    const void* data                # the stored values, of the pass's type
    const Py_ssize_t* indices       # their columns
    const Py_ssize_t* indptr        # row r's values: data[indptr[r]:indptr[r + 1]]
    Py_ssize_t n_rows, n_cols, nnz
    const Py_ssize_t* rows          # the batch's rows (the epoch's order), or NULL:
    Py_ssize_t first                # rows first .. first + m - 1
    Py_ssize_t bad                  # -1, or the batch position of a row holding an index
                                    # out of range (nothing after the pass that found it
                                    # may be trusted: the caller raises)
    LazyRows* lazy                  # training with a lazy rule (LazyRows), or NULL
    unsigned char* named            # training with a rule that steps every row of W1 from
                                    # its gradient buffer: a flag a row, set for the rows
                                    # the batch names (the others' gradient is 0), or NULL
    RowLogData* log                 # training a sparse fit whose rows of W1 change only
                                    # where batches name them or catch up (RowLogData), or NULL
    # A training step's stored values as read_batch_values read them, once (the arrays may
    # be changing under the fit, and every later use must agree): their columns, their
    # rows in the batch and their places in data; value_columns NULL: not recorded.
    Py_ssize_t* value_columns
    Py_ssize_t* value_rows
    Py_ssize_t* value_places
    Py_ssize_t n_values, value_capacity
    RowPool* pool                   # the threads sharing the named rows' work (_row_pool.pxi),
                                    # or NULL: this thread alone


cdef class SparseRows:
    """A sparse X as the core reads it, in place: the arrays of a CSR matrix, `data` (the
    stored values, float32 or float64), `indices` (their columns) and `indptr` (row r's
    values are data[indptr[r]:indptr[r + 1]]), both np.intp, all C-contiguous; `n_columns`
    is X's width. fastbp._validation.as_sparse_rows checks them; since the caller may
    change them afterwards, the kernels check every index as they read it."""
    cdef readonly object data, indices, indptr
    cdef readonly Py_ssize_t n_rows, n_columns, nnz
    cdef readonly bint double_precision
    cdef const float[::1] data32
    cdef const double[::1] data64
    cdef const Py_ssize_t[::1] indices_view
    cdef const Py_ssize_t[::1] indptr_view

    def __cinit__(self, data, indices, indptr, Py_ssize_t n_columns):
        if n_columns < 1:
            raise ValueError(f"SparseRows: n_columns must be >= 1; got {n_columns}")
        dtype = getattr(data, "dtype", None)
        if dtype == np.float32:
            self.data32 = data
        elif dtype == np.float64:
            self.data64 = data
            self.double_precision = True
        else:
            raise TypeError(f"SparseRows: the values must be a float32 or float64 array; "
                            f"got {type(data).__name__} of {dtype}")
        self.indices_view = indices
        self.indptr_view = indptr
        self.nnz = self.indices_view.shape[0]
        n_values = self.data64.shape[0] if self.double_precision else self.data32.shape[0]
        if n_values != self.nnz:
            raise ValueError("SparseRows: data and indices must have the same length")
        if self.indptr_view.shape[0] < 1:
            raise ValueError("SparseRows: indptr needs n_rows + 1 entries")
        self.n_rows = self.indptr_view.shape[0] - 1
        self.n_columns = n_columns
        self.data, self.indices, self.indptr = data, indices, indptr

    @property
    def shape(self):
        return (self.n_rows, self.n_columns)

    def row_range(self, Py_ssize_t start, Py_ssize_t stop):
        """Rows start..stop-1, viewing the same values (indptr: a shifted copy)."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"row_range: {start}..{stop} is not within 0..{self.n_rows}")
        first, last = int(self.indptr[start]), int(self.indptr[stop])
        return SparseRows(self.data[first:last], self.indices[first:last],
                          self.indptr[start:stop + 1] - first, self.n_columns)

    cdef SparseBatch as_batch(self):
        """The whole matrix as a SparseBatch (a pass sets its rows)."""
        cdef SparseBatch batch
        batch.data = NULL
        batch.indices = NULL
        if self.nnz:
            batch.data = <const void*>&self.data64[0] if self.double_precision \
                else <const void*>&self.data32[0]
            batch.indices = &self.indices_view[0]
        batch.indptr = &self.indptr_view[0]
        batch.n_rows = self.n_rows
        batch.n_cols = self.n_columns
        batch.nnz = self.nnz
        batch.rows = NULL
        batch.first = 0
        batch.bad = -1
        batch.lazy = NULL
        batch.named = NULL
        batch.log = NULL
        batch.value_columns = batch.value_rows = batch.value_places = NULL
        batch.n_values = batch.value_capacity = 0
        batch.pool = NULL
        return batch


cdef struct HyperparameterData:
    int loss
    double loss_parameter           # Huber's delta, or a cross-entropy's clip (check_loss)
    int optimizer
    double learning_rate, weight_decay, momentum, beta1, beta2, epsilon, clip_norm
    bint nesterov, decoupled_weight_decay
    double step                     # optimizer steps taken so far (Adam's t)
    bint batch_mean_loss            # the epoch's loss as scikit-learn's (add_batch_loss)


cdef inline void add_batch_loss(const HyperparameterData* hyper, double* loss_total,
                                double* weight_total, double loss_sum, double normaliser,
                                double weight_sum, Py_ssize_t m) noexcept nogil:
    """A batch's loss into the epoch's totals, whose ratio is the epoch's loss: the
    weighted sum and the weights (sum w l / sum w over the epoch's rows), or with
    batch_mean_loss the batch's weighted mean times its rows and the rows (scikit-learn's
    MLP: sum over batches of m_b times the batch's mean, over n). The two are the same sum
    where a batch's weights add up to its rows (no sample weights), and the same bits."""
    if hyper.batch_mean_loss and weight_sum != m:
        loss_total[0] += loss_sum * normaliser / weight_sum * m
        weight_total[0] += m
    else:
        loss_total[0] += loss_sum * normaliser
        weight_total[0] += weight_sum


cdef inline bint uses_first_moment(int optimizer) noexcept nogil:
    return optimizer == FBP_MOMENTUM or optimizer == FBP_ADAM


cdef inline bint uses_second_moment(int optimizer) noexcept nogil:
    return optimizer == FBP_ADAM or optimizer == FBP_RMSPROP or optimizer == FBP_ADAGRAD


cdef class Hyperparameters:
    """What a step computes besides the network: the loss, the optimizer rule and its
    hyperparameters, and the optimizer's step count."""
    cdef HyperparameterData data

    def __init__(self, int loss, double loss_parameter=0.0, int optimizer=FBP_SGD,
                 double learning_rate=0.01, double weight_decay=0.0, double momentum=0.0,
                 bint nesterov=False, double beta1=0.9, double beta2=0.999,
                 double epsilon=1e-8, double clip_norm=0.0, bint decoupled_weight_decay=False,
                 double step=0, bint batch_mean_loss=False):
        check_loss(loss, loss_parameter)
        if not valid_code(optimizer, OPTIMIZER_CODES):
            raise ValueError(f"unknown optimizer code {optimizer}")
        self.data = HyperparameterData(
            loss=loss, loss_parameter=loss_parameter, optimizer=optimizer,
            learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum,
            beta1=beta1, beta2=beta2, epsilon=epsilon, clip_norm=clip_norm, nesterov=nesterov,
            decoupled_weight_decay=decoupled_weight_decay, step=step,
            batch_mean_loss=batch_mean_loss)

    @property
    def step(self):
        return self.data.step

    @step.setter
    def step(self, double value):
        self.data.step = value

    @property
    def learning_rate(self):
        return self.data.learning_rate

    @learning_rate.setter
    def learning_rate(self, double value):
        self.data.learning_rate = value

    @property
    def state_rows(self):
        """Parameter-sized rows of optimizer state the rule reads: the velocity (momentum),
        the first and second moments (Adam), the second moment alone (RMSprop, Adagrad)."""
        return uses_first_moment(self.data.optimizer) + uses_second_moment(self.data.optimizer)

    @property
    def state_layout(self):
        """What the optimizer state holds: the folded momentum keeps mu * velocity, every
        other rule torch's buffers; state of one layout means nothing to the other."""
        return "scaled" if self.folded and self.data.optimizer == FBP_MOMENTUM else "plain"

    @property
    def folded(self):
        """The update folds into the gradient GEMM (plain SGD, or momentum without
        Nesterov, and no clipping): no gradient buffer is needed."""
        return self.data.clip_norm == 0 and (
            self.data.optimizer == FBP_SGD
            or (self.data.optimizer == FBP_MOMENTUM and not self.data.nesterov))


cdef inline double loss_normaliser(int loss, Py_ssize_t n_cols) noexcept nogil:
    """Per-row loss terms times this is the row's share of the mean: CCE sums over the
    outputs, every other loss averages them."""
    return 1.0 if loss == FBP_CCE else 1.0 / n_cols


# ---- forward and backward on one batch ----

cdef inline floating* workspace(floating* work, Py_ssize_t offset) noexcept nogil:
    return work + offset if offset >= 0 else NULL


cdef inline const floating* layer_input(const PlanData* plan, floating* work, const floating* x,
                                        int l) noexcept nogil:
    """The input of weight layer l (1-based): A_{l-1}, after dropout when there is one."""
    if l == 1:
        return x
    if plan.dropped_offsets[l - 1] >= 0:
        return work + plan.dropped_offsets[l - 1]
    return work + plan.output_offsets[l - 1]


cdef inline bint few_rows_here(const PlanData* plan, const floating* W, Py_ssize_t m,
                              Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """True if the products of m rows with the layer W (n_in x n_out), forward or
    backward, run in the few-row kernels of csrc/few_rows.h rather than BLAS: the plan
    allows that many rows and the kernels are the faster (or always, by the plan)."""
    return m <= plan.few_rows and (plan.few_rows_always
                                   or fbp_few_rows_faster(W, m, n_in, n_out))


cdef bint forward_blas_rows(const PlanData* plan, Py_ssize_t m, const floating* like,
                            bint or_own) noexcept nogil:
    """True if forward_product gives BLAS (or_own: BLAS or the own kernels) a product of
    m rows for some layer (elements like *like: its type only)."""
    cdef int l
    for l in range(1, plan.n_layers + 1):
        if l == 1 and plan.sparse_input:        # the sparse product, fastbp's own loop
            continue
        if few_rows_here(plan, like, m, plan.sizes[l - 1], plan.sizes[l]):
            continue
        if not or_own and product_isa(plan, l, FORWARD_PRODUCT, like):
            continue
        return True
    return False


cdef bint step_blas_rows(const PlanData* plan, Py_ssize_t m,
                         const floating* like) noexcept nogil:
    """True if run_batch gives BLAS a product in a step of m rows (forward_product's rule
    for the forward products; for the input delta and the weight gradient, BLAS unless the
    few-row kernels or the own kernels take them; a sparse X's first layer has neither)."""
    cdef int l
    cdef bint sparse_first
    for l in range(1, plan.n_layers + 1):
        if few_rows_here(plan, like, m, plan.sizes[l - 1], plan.sizes[l]):
            continue
        sparse_first = l == 1 and plan.sparse_input
        if not sparse_first and (not product_isa(plan, l, FORWARD_PRODUCT, like)
                                 or not product_isa(plan, l, GRADIENT_PRODUCT, like)):
            return True
        if l > 1 and not product_isa(plan, l, DELTA_PRODUCT, like):
            return True
    return False


cdef void forward_product(const PlanData* plan, const floating* params, floating* work,
                          const floating* x, int m, int l, floating* out,
                          SparseBatch* sparse=NULL) noexcept nogil:
    """out = A_{l-1} W_l (m rows, before bias and activation), in blocks of rows and
    columns (the plan's forward chunks); for the first layer of a sparse batch, from its
    stored values (an index out of range sets sparse.bad)."""
    cdef Py_ssize_t n_in = plan.sizes[l - 1], n_out = plan.sizes[l]
    cdef Py_ssize_t chunk = plan.forward_chunks[l - 1], row_chunk = plan.forward_row_chunks[l - 1]
    cdef Py_ssize_t start, columns, row = 0, rows, bad
    cdef const floating* a_in = layer_input(plan, work, x, l)
    cdef const floating* W = params + plan.weight_offsets[l - 1]
    if l == 1 and sparse != NULL:
        bad = fbp_sparse_product(out, <const floating*>sparse.data, sparse.indices,
                                 sparse.indptr, sparse.n_rows, sparse.n_cols, sparse.nnz,
                                 sparse.rows, sparse.first, m, W, n_out)
        if bad >= 0 and sparse.bad < 0:
            sparse.bad = bad
        return
    if few_rows_here(plan, W, m, n_in, n_out):
        fbp_few_rows_product(out, a_in, W, m, n_in, n_out)   # W as it is, no packing
        return
    cdef int isa = product_isa(plan, l, FORWARD_PRODUCT, W)
    if isa:   # the own kernel, in one call (the chunks are for OpenBLAS's small kernels)
        nn_product(isa, m, <int>n_out, <int>n_in, a_in, <int>n_in, W, <int>n_out, out,
                   <int>n_out)
        return
    while row < m:
        rows = min(row_chunk, m - row)
        start = 0
        while start < n_out:
            columns = min(chunk, n_out - start)
            gemm(False, False, <int>rows, <int>columns, <int>n_in, <floating>1,
                 a_in + row * n_in, <int>n_in, W + start, <int>n_out, <floating>0,
                 out + row * n_out + start, <int>n_out)
            start += columns
        row += rows


cdef void forward_hidden(const PlanData* plan, const floating* params, floating* work,
                         const floating* x, int m, uint64_t* random_state,
                         SparseBatch* sparse=NULL) noexcept nogil:
    """A_l = f(A_{l-1} W_l + b_l) for every layer but the output, with dropout where the
    plan has it (random_state must then be given: passes without it take plans without
    dropout, which their shims check)."""
    cdef int l
    cdef Py_ssize_t n_out
    cdef floating* out
    for l in range(1, plan.n_layers):
        n_out = plan.sizes[l]
        out = work + plan.output_offsets[l]
        forward_product(plan, params, work, x, m, l, out, sparse)
        fbp_bias_activation(out, params + plan.bias_offsets[l - 1],
                            workspace(work, plan.preactivation_offsets[l]), m, n_out,
                            plan.activations[l - 1])
        if plan.dropped_offsets[l] >= 0:
            fbp_dropout(work + plan.dropped_offsets[l], work + plan.mask_offsets[l], out,
                        <Py_ssize_t>m * n_out, plan.dropout_rates[l - 1], random_state)


cdef void output_logits(const PlanData* plan, const floating* params, floating* work,
                        const floating* x, int m, floating* out,
                        SparseBatch* sparse=NULL) noexcept nogil:
    """out = A_{L-1} W_L, before the bias and the output activation."""
    forward_product(plan, params, work, x, m, plan.n_layers, out, sparse)


# Elements of W a blocked gradient GEMM + optimizer step covers at once (64 K: with the
# optimizer state, a few hundred KB, well inside L2).
cdef enum:
    STEP_BLOCK_ELEMENTS = 65536


cdef enum Update:
    GRADIENT_ONLY = 0   # target := beta * target + gradient: no step
    FOLDED_SGD = 1      # target = params: W <- (1 - lr wd) W - lr grad, in the GEMM
    FOLDED_MOMENTUM = 2 # target = mu * velocity: + grad in the GEMM (beta 1), then
                        # p -= lr v and the scaled velocity for the next step
    LAYER_STEP = 3      # target = gradient buffer, kept at 0 between steps (the rule resets
                        # what it reads) so the GEMM adds with beta 1; each block's rule runs
                        # as soon as its gradient is ready, while it is still in cache


cdef inline Py_ssize_t gradient_block_rows(const PlanData* plan, int l,
                                           bint stepping) noexcept nogil:
    """Rows of W_l (1-based) one weight-gradient GEMM covers: the plan's gradient chunk and,
    when an optimizer rule steps each block right after its GEMM, at most
    STEP_BLOCK_ELEMENTS elements."""
    cdef Py_ssize_t block = plan.gradient_chunks[l - 1]
    if stepping:
        block = min(block, max(<Py_ssize_t>1, STEP_BLOCK_ELEMENTS // plan.sizes[l]))
    return block


cdef void gradient_blocks(const HyperparameterData* hyper, int update, bint stepping, int isa,
                          bint few_rows, Py_ssize_t block, floating* params, floating* target,
                          floating* first, floating* second, Py_ssize_t offset,
                          Py_ssize_t begin, Py_ssize_t end, Py_ssize_t n_out,
                          const floating* a_in, Py_ssize_t lda, const floating* delta, int m,
                          floating alpha, floating beta, double* squares) noexcept nogil:
    """Rows [begin, end) of a weight matrix's gradient: target := beta * target + alpha
    a_in^T delta there (the matrix's rows n_out values long, its row 0 at `offset` in
    params, target, first and second; a_in's columns [begin, end), leading dimension lda;
    delta m x n_out), `block` rows a GEMM (few_rows: fbp_few_rows_gradient's kernel). With
    an optimizer rule (stepping) each block steps right after its GEMM, while it and its
    state are still in L2 (a whole layer and its state may not be); without, squares (when
    given) gains each block's sum of squares (clipping's norm)."""
    cdef Py_ssize_t start = begin, rows
    while start < end:
        rows = min(block, end - start)
        if few_rows:
            fbp_few_rows_gradient(target + offset + start * n_out, a_in + start, lda, delta,
                                  m, rows, n_out, alpha, beta)
        else:
            tn_product(isa, <int>rows, <int>n_out, m, alpha, a_in + start, <int>lda, delta,
                       <int>n_out, beta, target + offset + start * n_out, <int>n_out)
        if stepping:
            step_slice(hyper, params, target, first, second, update, offset + start * n_out,
                       rows * n_out, True)
        elif squares != NULL:
            squares[0] += fbp_sum_squares(target + offset + start * n_out, rows * n_out)
        start += rows


cdef double run_batch(const PlanData* plan, HyperparameterData* hyper, floating* params,
                      floating* target, floating* first, floating* second, floating* work,
                      const floating* x, const floating* y, const floating* row_weights, int m,
                      floating scale, int update, floating beta,
                      uint64_t* random_state, SparseBatch* sparse=NULL) noexcept nogil:
    """Forward and backward on m rows; returns the (weighted) summed loss terms.

    The gradient is `scale` times that of the summed loss terms; `update` says what
    becomes of it (see Update). For GRADIENT_ONLY, target := beta * target + gradient.
    The delta of layer l-1 is always taken before W_l changes. When the loss is not
    finite nothing is written and no step is counted. With a sparse batch (x unused), an
    index out of range sets sparse.bad and returns at once (0; the caller raises): found
    by the forward pass nothing is written, by the weight gradient the first layer may be
    part-way through its update.
    """
    cdef int L = plan.n_layers
    cdef int l
    cdef Py_ssize_t n_in, n_out, w
    cdef bint stepping = update == FOLDED_MOMENTUM or update == LAYER_STEP
    cdef bint few_rows              # this layer's backward products in the few-row kernels
    cdef floating* delta
    cdef floating* previous_delta
    cdef const floating* a_in
    cdef floating* out = work + plan.output_offsets[L]
    cdef floating alpha = 1, weight_beta = beta, bias_beta = beta

    if sparse != NULL and sparse.value_columns != NULL and not read_batch_values(
            sparse, <const floating*>sparse.data, m):
        return 0.0
    if sparse != NULL and sparse.lazy != NULL:   # the rows the forward pass reads, current
        if not lazy_list_rows(sparse.lazy, sparse, params + plan.weight_offsets[0],
                              plan.sizes[1]):
            return 0.0
    elif sparse != NULL and sparse.log != NULL:  # the rows this step may change, logged
        if not log_batch_rows(sparse.log, sparse):
            return 0.0
    forward_hidden(plan, params, work, x, m, random_state, sparse)
    output_logits(plan, params, work, x, m, out, sparse)
    if sparse != NULL and sparse.bad >= 0:
        return 0.0
    delta = work + plan.delta_offsets[L % 2]
    cdef double loss_sum = fbp_output_layer(out, params + plan.bias_offsets[L - 1],
                                            workspace(work, plan.preactivation_offsets[L]), y,
                                            row_weights, delta, m, plan.sizes[L],
                                            plan.activations[L - 1], hyper.loss,
                                            <floating>hyper.loss_parameter, scale)
    if not isfinite(loss_sum):
        return loss_sum
    if update != GRADIENT_ONLY:
        hyper.step += 1
    if update == FOLDED_SGD:
        alpha = <floating>(-hyper.learning_rate)
        weight_beta = <floating>(1.0 - hyper.learning_rate * hyper.weight_decay)
        bias_beta = 1
    elif update == FOLDED_MOMENTUM:
        weight_beta = bias_beta = 1
    elif update == LAYER_STEP:
        weight_beta = bias_beta = 1

    for l in range(L, 0, -1):
        n_in = plan.sizes[l - 1]
        n_out = plan.sizes[l]
        a_in = layer_input(plan, work, x, l)
        delta = work + plan.delta_offsets[l % 2]
        few_rows = few_rows_here(plan, params + plan.weight_offsets[l - 1], m, n_in, n_out)
        if l > 1:
            previous_delta = work + plan.delta_offsets[(l - 1) % 2]
            if few_rows:
                fbp_few_rows_delta(previous_delta, delta, params + plan.weight_offsets[l - 1],
                                   m, n_in, n_out)
            else:
                nt_product(product_isa(plan, l, DELTA_PRODUCT, params), m, <int>n_in,
                           <int>n_out, delta, <int>n_out, params + plan.weight_offsets[l - 1],
                           <int>n_out, previous_delta, <int>n_in)
            if plan.mask_offsets[l - 1] >= 0:
                fbp_multiply(previous_delta, work + plan.mask_offsets[l - 1], m * n_in)
            fbp_activation_backward(previous_delta, work + plan.output_offsets[l - 1],
                                    workspace(work, plan.preactivation_offsets[l - 1]), m, n_in,
                                    plan.activations[l - 2])
        w = plan.weight_offsets[l - 1]
        if l == 1 and sparse != NULL:
            if not sparse_weight_update(plan, hyper, params, target, first, second, update,
                                        alpha, weight_beta, delta, m, sparse):
                return 0.0
            n_in = 0    # done: no dense blocks
        gradient_blocks(hyper, update, stepping, product_isa(plan, l, GRADIENT_PRODUCT, params),
                        few_rows, gradient_block_rows(plan, l, stepping), params, target,
                        first, second, w, 0, n_in, n_out, a_in, n_in, delta, m, alpha,
                        weight_beta, NULL)
        fbp_column_sums(target + plan.bias_offsets[l - 1], delta, m, n_out, alpha, bias_beta)
        if update == FOLDED_MOMENTUM or update == LAYER_STEP:
            step_slice(hyper, params, target, first, second, update, plan.bias_offsets[l - 1],
                       n_out, False)
    return loss_sum


cdef bint sparse_weight_update(const PlanData* plan, HyperparameterData* hyper,
                              floating* params, floating* target, floating* first,
                              floating* second, int update, floating alpha, floating beta,
                              const floating* delta, int m, SparseBatch* sparse) noexcept nogil:
    """The first layer's share of run_batch for a sparse batch, as the dense GEMM and step
    do it: target's W1 := beta * W1 + alpha X^T delta, the product scattered into the rows
    of W1 the batch's columns name (nonzeros x n_out), then the rule's step.

    Plain SGD without weight decay stays on those rows. Under a lazy rule (sparse.lazy) so
    does every step: the rows the batch names (caught up by lazy_list_rows) step, the
    others wait; the lazy rules that step from a gradient (Adam, Nesterov momentum,
    Adagrad, RMSprop) make and step each named row at once (sparse_row_steps), the folded
    ones (SGD with decay, momentum) scatter into target's rows here. Adam without its lazy
    rows, and Adagrad or RMSprop with coupled decay, move every row of W1 at every step and
    take a pass over all of W1 and its state, exactly the dense rule's arithmetic
    (docs/performance.md, "Sparse input", has the costs). False: an index out of range
    (sparse.bad set), or the log out of memory (sparse_row_steps)."""
    cdef Py_ssize_t w = plan.weight_offsets[0], n_out = plan.sizes[1]
    cdef Py_ssize_t n = plan.sizes[0] * n_out, bad, i
    cdef bint stepping = update == FOLDED_MOMENTUM or update == LAYER_STEP
    cdef LazyRows* lazy = sparse.lazy
    if lazy != NULL and lazy.gradients != NULL:
        return sparse_row_steps(plan, hyper, params, first, second, update, alpha, delta, m,
                                sparse)
    if lazy != NULL:
        if beta != 1:   # plain SGD's decay of this step, on the named rows only
            for i in range(lazy.n_touched):
                fbp_scale(target + w + lazy.touched[i] * n_out, n_out, beta)
    elif beta == 0:
        memset(target + w, 0, n * sizeof(floating))
    elif beta != 1:
        fbp_scale(target + w, n, beta)
    bad = fbp_sparse_scatter(target + w, <const floating*>sparse.data, sparse.indices,
                             sparse.indptr, sparse.n_rows, sparse.n_cols, sparse.nnz,
                             sparse.rows, sparse.first, m, delta, n_out, alpha, sparse.named)
    if bad >= 0:
        sparse.bad = bad
        return False
    if lazy != NULL:
        lazy.steps += 1
        if not stepping:
            for i in range(lazy.n_touched):
                lazy.applied[lazy.touched[i]] = lazy.steps
        elif not share_rows(sparse.pool, lazy, ROWS_FOLDED_STEPS, NULL, params):
            folded_steps(plan, hyper, params, target, first, second, update, lazy, 0,
                         lazy.n_touched)
    elif stepping:   # every row; those the batch did not name without reading their 0s
        if not share_every_row(sparse.pool, plan.sizes[0], params):
            every_row_steps(plan, hyper, params, target, first, second, update, sparse.named,
                            0, plan.sizes[0])
    return True


cdef void every_row_steps(const PlanData* plan, const HyperparameterData* hyper,
                          floating* params, floating* target, floating* first,
                          floating* second, int update, unsigned char* named,
                          Py_ssize_t begin, Py_ssize_t end) noexcept nogil:
    """sparse_weight_update's step of rows begin..end-1 of W1 under a rule that moves every
    row at every step (named: a flag a row, 0 where the batch named none, or NULL)."""
    cdef Py_ssize_t n_out = plan.sizes[1]
    step_slice(hyper, params, target, first, second, update,
               plan.weight_offsets[0] + begin * n_out, (end - begin) * n_out, True,
               named + begin if named != NULL else NULL, n_out)


cdef void folded_steps(const PlanData* plan, const HyperparameterData* hyper,
                       floating* params, floating* target, floating* first,
                       floating* second, int update, LazyRows* lazy, Py_ssize_t begin,
                       Py_ssize_t end) noexcept nogil:
    """sparse_weight_update's step of the named rows lazy.touched[begin:end] under a folded
    lazy rule (SGD with decay, momentum), from the product scattered into target."""
    cdef Py_ssize_t w = plan.weight_offsets[0], n_out = plan.sizes[1], i
    for i in range(begin, min(begin + LAZY_PREFETCH_AHEAD, end)):
        prefetch_step_row(params + w, target + w, first, second, w, n_out, plan.sizes[0],
                          &lazy.touched[i])
    for i in range(begin, end):
        if i + LAZY_PREFETCH_AHEAD < end:
            prefetch_step_row(params + w, target + w, first, second, w, n_out,
                              plan.sizes[0], &lazy.touched[i + LAZY_PREFETCH_AHEAD])
        step_slice(hyper, params, target, first, second, update,
                   w + lazy.touched[i] * n_out, n_out, True)
        lazy.applied[lazy.touched[i]] = lazy.steps


cdef Py_ssize_t longest_row(SparseRows sparse):
    """The most stored values a row of the sparse X holds (at least 1), as its indptr says
    now (the fit checks every row again as it reads it)."""
    cdef const Py_ssize_t[::1] indptr = sparse.indptr_view
    cdef Py_ssize_t r, longest = 1
    for r in range(sparse.n_rows):
        longest = max(longest, indptr[r + 1] - indptr[r])
    return longest


cdef bint sparse_row_steps(const PlanData* plan, HyperparameterData* hyper, floating* params,
                           floating* first, floating* second, int update, floating alpha,
                           const floating* delta, int m, SparseBatch* sparse) noexcept nogil:
    """sparse_weight_update's lazy LAYER_STEP rules (RowGradients): each row the batch names
    gets its gradient (fbp_sparse_row_gradient) and its step at once, then the step is
    counted (and Adam's sums advance). False: the log out of memory (the Adam window's
    restart)."""
    cdef LazyRows* lazy = sparse.lazy
    cdef RowGradients* gradients = lazy.gradients
    cdef Py_ssize_t w = plan.weight_offsets[0], n_out = plan.sizes[1], n_in = plan.sizes[0]
    cdef Py_ssize_t v, t, place, slot
    cdef floating* values = <floating*>gradients.values
    cdef Py_ssize_t* starts = gradients.starts
    # the values read_batch_values read, grouped by row of W1 (its slot in lazy.touched),
    # each group in batch order
    memset(starts, 0, (lazy.n_touched + 1) * sizeof(Py_ssize_t))
    for v in range(sparse.n_values):
        starts[lazy.slot[sparse.value_columns[v]] + 1] += 1
    for t in range(lazy.n_touched):
        starts[t + 1] += starts[t]
    for v in range(sparse.n_values):
        slot = lazy.slot[sparse.value_columns[v]]
        place = starts[slot]
        starts[slot] = place + 1
        gradients.positions[place] = sparse.value_rows[v]
        values[place] = alpha * (<const floating*>sparse.data)[sparse.value_places[v]]
    # starts[t] is now where group t ends; group t starts where group t - 1 ends
    lazy.steps += 1
    if not share_rows(sparse.pool, lazy, ROWS_ROW_STEPS, delta, params):
        row_steps(plan, hyper, params, first, second, update, delta, lazy, 0, lazy.n_touched,
                  <floating*>gradients.row)
    if lazy.adam != NULL:
        lazy_adam_advance(lazy.adam, lazy.steps, hyper.learning_rate)
        if lazy.steps == lazy.adam.window:
            if not lazy_restart(lazy, params + w, n_in, n_out, hyper.step, sparse.log):
                return False
    return True


cdef void row_steps(const PlanData* plan, const HyperparameterData* hyper, floating* params,
                    floating* first, floating* second, int update, const floating* delta,
                    LazyRows* lazy, Py_ssize_t begin, Py_ssize_t end,
                    floating* row_gradient) noexcept nogil:
    """sparse_row_steps for the named rows lazy.touched[begin:end]: each one's gradient
    (into row_gradient, n_out values) and step."""
    cdef RowGradients* gradients = lazy.gradients
    cdef Py_ssize_t w = plan.weight_offsets[0], n_out = plan.sizes[1], n_in = plan.sizes[0]
    cdef floating* values = <floating*>gradients.values
    cdef Py_ssize_t* starts = gradients.starts
    cdef Py_ssize_t t, row, values_begin = starts[begin - 1] if begin > 0 else 0
    for t in range(begin, min(begin + LAZY_PREFETCH_AHEAD, end)):
        prefetch_step_row(params + w, params + w, first, second, w, n_out, n_in,
                          &lazy.touched[t])
    for t in range(begin, end):
        row = lazy.touched[t]
        if t + LAZY_PREFETCH_AHEAD < end:
            prefetch_step_row(params + w, params + w, first, second, w, n_out, n_in,
                              &lazy.touched[t + LAZY_PREFETCH_AHEAD])
        fbp_sparse_row_gradient(row_gradient, values + values_begin,
                                gradients.positions + values_begin, starts[t] - values_begin,
                                delta, n_out)
        values_begin = starts[t]
        step_values(hyper, params + w + row * n_out, row_gradient,
                    first + w + row * n_out if first else NULL,
                    second + w + row * n_out if second else NULL, update, n_out, True)
        lazy.applied[row] = lazy.steps


cdef inline void prefetch_step_row(floating* W1, floating* target, floating* first,
                                   floating* second, Py_ssize_t w, Py_ssize_t n_out,
                                   Py_ssize_t n_in, const Py_ssize_t* row) noexcept nogil:
    """Row *row of W1, of its gradient (or velocity) and of the rule's state, into cache."""
    fbp_prefetch_rows(W1, row, 1, n_out, n_in, FBP_PREFETCH_HEAD_BYTES)
    if target != W1:
        fbp_prefetch_rows(target, row, 1, n_out, n_in, FBP_PREFETCH_HEAD_BYTES)
    if first != NULL:
        fbp_prefetch_rows(first + w, row, 1, n_out, n_in, FBP_PREFETCH_HEAD_BYTES)
    if second != NULL:
        fbp_prefetch_rows(second + w, row, 1, n_out, n_in, FBP_PREFETCH_HEAD_BYTES)


cdef int update_kind(const HyperparameterData* hyper) noexcept nogil:
    """How a training step updates the parameters under these hyperparameters."""
    if hyper.clip_norm > 0:     # the norm needs the whole gradient before any step
        return GRADIENT_ONLY
    if hyper.optimizer == FBP_SGD:
        return FOLDED_SGD
    if hyper.optimizer == FBP_MOMENTUM and not hyper.nesterov:
        return FOLDED_MOMENTUM
    return LAYER_STEP


def shares_rows(Hyperparameters hyperparameters):
    """Whether a sparse fit under these hyperparameters works on W1 row by row in phases
    train_epoch's n_workers threads share (_row_pool.pxi): a lazy rule (lazy_rule) on the
    rows each batch names, or a rule that steps every row of W1 at every step from its
    gradient. Plain SGD without decay (its step is the scatter) and clipping (the norm
    takes the whole gradient) run on one thread."""
    cdef LazyRows lazy
    cdef LazyAdam adam
    cdef HyperparameterData* hyper = &hyperparameters.data
    cdef int update = update_kind(hyper)
    return rows_shared(lazy_rule(hyper, update, &lazy, <double*>NULL, <double*>NULL, 0,
                                 &adam if lazy_adam_rows() else NULL), update)


cdef inline bint rows_shared(bint lazy, int update) noexcept nogil:
    """shares_rows from a sparse fit's rule: lazy (lazy_rule), or stepping every row."""
    return lazy or update == LAYER_STEP


cdef bint lazy_rule(const HyperparameterData* hyper, int update, LazyRows* lazy,
                    floating* first, floating* second, Py_ssize_t w,
                    LazyAdam* adam) noexcept nogil:
    """Set lazy's map to the first layer's rule on a row without a gradient, where it is
    linear (see LazyRows), or lazy.adam to `adam` for Adam (see LazyAdam; adam NULL: not
    lazily); False for Adagrad or RMSprop with coupled decay, for plain SGD without decay
    (already only on the named rows) and for clipping (its norm takes the whole gradient at
    once)."""
    cdef double lr = hyper.learning_rate, decay = hyper.weight_decay, mu = hyper.momentum
    # decoupled decay: p <- shrink p before the rule, which then has no decay term
    cdef double shrink = 1 - lr * decay if hyper.decoupled_weight_decay else 1
    cdef double coupled = 0 if hyper.decoupled_weight_decay else decay
    lazy.a = lazy.d = lazy.e = 1
    lazy.b = lazy.c = 0
    lazy.coupled = lazy.scaled = NULL
    lazy.adam = NULL
    lazy.moving = NULL
    if update == FOLDED_SGD:         # p <- (1 - lr wd) p
        lazy.a = 1 - lr * decay
        return decay != 0
    if update == FOLDED_MOMENTUM:    # s = mu v: v = s + wd p'; p <- p' - lr v; s <- mu v
        lazy.a = shrink * (1 - lr * coupled)
        lazy.b = -lr
        lazy.c = mu * coupled * shrink
        lazy.d = mu
        lazy.coupled = <void*>(first + w)
        return True
    if update != LAYER_STEP:
        return False
    if hyper.optimizer == FBP_MOMENTUM:  # g = wd p'; v <- mu v + g; p <- p' - lr (g + mu v | v)
        lazy.a = shrink * (1 - lr * coupled - (lr * mu * coupled if hyper.nesterov else 0))
        lazy.b = -lr * mu * mu if hyper.nesterov else -lr * mu
        lazy.c = coupled * shrink
        lazy.d = mu
        lazy.coupled = <void*>(first + w)
        return True
    if coupled != 0:
        return False
    if hyper.optimizer == FBP_ADAGRAD:   # g = 0: the sum and p' stay
        lazy.a = shrink
        return True
    if hyper.optimizer == FBP_RMSPROP:   # g = 0: v <- alpha v, p' stays
        lazy.a = shrink
        lazy.e = hyper.beta2
        lazy.scaled = <void*>(second + w)
        return True
    if hyper.optimizer == FBP_ADAM and adam != NULL:
        # the dtype's values, as the dense rule's step takes them (step_values): its moments
        # decay by the rounded betas and its bias corrections take their powers, and the
        # roundings cancel there; the catch-up's corrections from the exact betas did not
        # (1 - beta2^t of float32's 0.999 is 1.3e-5 off at t = 1..2: float32 fits ended 10x
        # further from float64's than dense float32 fits)
        if floating is float:
            adam.beta1 = fbp_float_rounded(hyper.beta1)
            adam.beta2 = fbp_float_rounded(hyper.beta2)
            adam.epsilon = fbp_float_rounded(hyper.epsilon)
        else:
            adam.beta1, adam.beta2, adam.epsilon = hyper.beta1, hyper.beta2, hyper.epsilon
        adam.shrink = shrink
        adam.first = <void*>(first + w)
        adam.second = <void*>(second + w)
        lazy.adam = adam
        return True
    return False


cdef inline Py_ssize_t adam_sums(int terms) noexcept nogil:
    """The sums kept per t0 of the window (see LazyAdam.sums)."""
    return 2 * terms + 4


cdef inline Py_ssize_t adam_exponent(int terms) noexcept nogil:
    """Where the sums of a t0 keep their E (see LazyAdam.sums)."""
    return 2 * terms + 3


cdef bint lazy_adam_allocate(LazyAdam* adam, bint single) noexcept nogil:
    """Sums for adam.window steps of float32 (single) or float64 rows, with the series'
    terms, the second series' centre and the decays of up to a window of steps (beta1,
    beta2, epsilon and shrink set). False: no memory."""
    adam.terms = FBP_ADAM_TERMS_FLOAT if single else FBP_ADAM_TERMS_DOUBLE
    adam.kappa = lazy_adam_kappa(lazy_adam_limit(), adam.epsilon)
    adam.center = adam.kappa / (adam.kappa + 1) if adam.kappa >= 0 else 0
    cdef Py_ssize_t entries = adam.window + 1, k
    adam.sums = <double*>malloc(entries * (adam_sums(adam.terms) + 7) * sizeof(double))
    if adam.sums == NULL:
        return False
    adam.step_sizes = adam.sums + entries * adam_sums(adam.terms)
    adam.roots = adam.step_sizes + entries
    adam.decays = adam.roots + entries
    adam.powers = adam.decays + 3 * entries
    for k in range(entries):
        adam.decays[3 * k] = pow(adam.shrink, <double>k)
        adam.decays[3 * k + 1] = pow(adam.beta1, <double>k)
        adam.decays[3 * k + 2] = pow(adam.beta2, <double>k)
        adam.powers[2 * k + 1] = pow(adam.beta2, -0.5 * k)
        adam.powers[2 * k] = adam.decays[3 * k + 1] * adam.powers[2 * k + 1]
    return True


cdef void lazy_adam_start(LazyAdam* adam, double step) noexcept nogil:
    """A new window of steps, after Adam's step `step`: no sums yet."""
    adam.base_step = step
    adam.largest_step = 0
    adam.sums[0] = adam.sums[1] = 1
    memset(adam.sums + 2, 0, (adam_sums(adam.terms) - 2) * sizeof(double))


cdef void lazy_adam_advance(LazyAdam* adam, Py_ssize_t steps,
                            double learning_rate) noexcept nogil:
    """Step `steps` of the window done: every t0's sums gain its term (see LazyAdam)."""
    cdef double t = adam.base_step + steps
    cdef double root = sqrt(1 - pow(adam.beta2, t))
    cdef double scale, shift
    cdef int exponent
    cdef double step_size = learning_rate / (1 - pow(adam.beta1, t))
    cdef double term, b, a, reciprocal, ratio
    cdef double* sums
    cdef double* middle
    cdef Py_ssize_t t0
    cdef int q
    adam.step_sizes[steps] = step_size
    adam.largest_step = max(adam.largest_step, fabs(step_size))
    adam.roots[steps] = root
    for t0 in range(steps):
        sums = adam.sums + t0 * adam_sums(adam.terms)
        sums[0] = adam.powers[2 * (steps - t0)]
        sums[1] = adam.powers[2 * (steps - t0) + 1]
        a = step_size * root * sums[0]
        b = root * sums[1]
        if b > ldexp(1, <int>sums[adam_exponent(adam.terms)]):    # E raised: C_q / 2^(dE q)
            frexp(b, &exponent)
            shift = ldexp(1, <int>sums[adam_exponent(adam.terms)] - exponent)
            scale = 1
            for q in range(adam.terms):
                sums[2 + q] *= scale
                scale *= shift
            sums[adam_exponent(adam.terms)] = exponent
        term = a
        scale = ldexp(b, -<int>sums[adam_exponent(adam.terms)])       # b_s / 2^E
        for q in range(adam.terms):
            sums[2 + q] = adam.shrink * sums[2 + q] + term
            term *= scale
        if adam.kappa < 0:
            continue
        middle = sums + 2 + adam.terms          # D / eps = (kappa + 1) b_min, then M_q
        if t0 == steps - 1:                     # its first step: b_min = b
            middle[0] = (adam.kappa + 1) * b
        reciprocal = 1 / (adam.center * middle[0] + b)     # eps / (u0 + eps b_s)
        term = a * reciprocal / adam.epsilon
        ratio = middle[0] * reciprocal
        for q in range(adam.terms):
            middle[1 + q] = adam.shrink * middle[1 + q] + term
            term *= ratio
    sums = adam.sums + steps * adam_sums(adam.terms)
    sums[0] = sums[1] = 1
    memset(sums + 2, 0, (adam_sums(adam.terms) - 2) * sizeof(double))


cdef void lazy_adam_catch_up(const LazyAdam* adam, floating* W1, Py_ssize_t n_out,
                             Py_ssize_t row, Py_ssize_t t0, Py_ssize_t t) noexcept nogil:
    """Row `row` of W1 and its moments from step t0 of the window to t (see LazyAdam)."""
    cdef const double* sums = adam.sums + t0 * adam_sums(adam.terms)
    # the largest eps b_s / u of these steps is at s = t: b_s grows with s
    fbp_adam_catch_up(W1 + row * n_out, <floating*>adam.first + row * n_out,
                      <floating*>adam.second + row * n_out, n_out, sums + 2,
                      adam.step_sizes + t0, adam.roots + t0, t - t0, adam.shrink,
                      adam.beta1, adam.beta2, adam.epsilon, adam.decays + 3 * (t - t0),
                      adam.epsilon * adam.roots[t] * sums[1],
                      ldexp(adam.epsilon, <int>sums[adam_exponent(adam.terms)]),
                      lazy_adam_limit(),
                      sums + 2 + adam.terms if adam.kappa >= 0 else NULL, adam.center)


def lazy_adam_row(floating[::1] weights, floating[::1] first, floating[::1] second,
                  double base_step, Py_ssize_t t0, Py_ssize_t t, double learning_rate,
                  double beta1=0.9, double beta2=0.999, double epsilon=1e-8, double shrink=1):
    """For tests: a row of W1 and its moments, changed in place, caught up from step t0 to
    step t of a window of Adam's steps that starts after its step base_step, as a sparse
    fit's lazy rows are (LazyAdam, lazy_adam_catch_up), under lazy_adam_settings' limit."""
    cdef Py_ssize_t n = weights.shape[0], s
    if first.shape[0] != n or second.shape[0] != n or n == 0:
        raise ValueError("lazy_adam_row: weights, first and second need the same size, > 0")
    if not (0 <= t0 <= t) or base_step < 0:
        raise ValueError(f"lazy_adam_row: needs 0 <= t0 <= t and base_step >= 0; got "
                         f"t0={t0}, t={t}, base_step={base_step}")
    cdef LazyAdam adam
    adam.beta1, adam.beta2, adam.epsilon, adam.shrink = beta1, beta2, epsilon, shrink
    adam.window = t + 1
    adam.first, adam.second = <void*>&first[0], <void*>&second[0]
    if not lazy_adam_allocate(&adam, floating is float):
        raise MemoryError("lazy_adam_row: no memory for Adam's lazy rows' sums")
    lazy_adam_start(&adam, base_step)
    for s in range(1, t + 1):
        lazy_adam_advance(&adam, s, learning_rate)
    lazy_adam_catch_up(&adam, &weights[0], n, 0, t0, t)
    free(adam.sums)


cdef void lazy_catch_up(const LazyRows* lazy, floating* W1, Py_ssize_t n_out, Py_ssize_t row,
                        Py_ssize_t k) noexcept nogil:
    """Row `row` of W1, and its state, after k more steps without a gradient: the map's
    k-th power (by squaring, in double) applied once; Adam's sums (LazyAdam)."""
    if lazy.adam != NULL:
        lazy_adam_catch_up(lazy.adam, W1, n_out, row, lazy.steps - k, lazy.steps)
        return
    cdef double power[5]
    lazy_map_power(lazy, k, power)
    fbp_linear_catch_up(W1 + row * n_out,
                        <floating*>lazy.coupled + row * n_out if lazy.coupled != NULL else NULL,
                        <floating*>lazy.scaled + row * n_out if lazy.scaled != NULL else NULL,
                        n_out, power[0], power[1], power[2], power[3], power[4])


cdef void lazy_map_power(const LazyRows* lazy, Py_ssize_t k, double* power) noexcept nogil:
    """The k-th power of the linear rule's map of one step without a gradient (see
    LazyRows), by squaring in double: power[0..4] = a, b, c, d, e."""
    cdef double a = 1, b = 0, c = 0, d = 1, e = 1
    cdef double ma = lazy.a, mb = lazy.b, mc = lazy.c, md = lazy.d, me = lazy.e
    cdef double t0, t1, t2, t3
    while k:
        if k & 1:
            t0 = a * ma + b * mc
            t1 = a * mb + b * md
            t2 = c * ma + d * mc
            t3 = c * mb + d * md
            a = t0
            b = t1
            c = t2
            d = t3
            e *= me
        t0 = ma * ma + mb * mc
        t1 = ma * mb + mb * md
        t2 = mc * ma + md * mc
        t3 = mc * mb + md * md
        ma = t0
        mb = t1
        mc = t2
        md = t3
        me *= me
        k >>= 1
    power[0], power[1], power[2], power[3], power[4] = a, b, c, d, e


cdef bint lazy_list_rows(LazyRows* lazy, SparseBatch* sparse, floating* W1,
                         Py_ssize_t n_out) noexcept nogil:
    """List the rows of W1 the batch names (lazy.touched, each once; from the values
    read_batch_values read) and bring each up to date before the forward pass reads it.
    False: the log out of memory."""
    cdef Py_ssize_t i, v, column
    lazy.n_touched = 0
    for v in range(sparse.n_values):
        column = sparse.value_columns[v]
        if lazy.listed[column] != lazy.steps:
            lazy.listed[column] = lazy.steps
            lazy.slot[column] = lazy.n_touched
            lazy.touched[lazy.n_touched] = column
            lazy.n_touched += 1
    if sparse.log != NULL:
        for i in range(lazy.n_touched):
            if not log_row(sparse.log, lazy.touched[i]):
                return False
    if not share_rows(sparse.pool, lazy, ROWS_CATCH_UP, NULL, W1):
        catch_up_rows(lazy, W1, n_out, sparse.n_cols, 0, lazy.n_touched)
    return True


cdef void catch_up_rows(LazyRows* lazy, floating* W1, Py_ssize_t n_out, Py_ssize_t n_in,
                        Py_ssize_t begin, Py_ssize_t end) noexcept nogil:
    """The named rows lazy.touched[begin:end] brought up to date (lazy_list_rows)."""
    cdef Py_ssize_t i, column
    for i in range(begin, min(begin + LAZY_PREFETCH_AHEAD, end)):
        prefetch_lazy_row(lazy, W1, n_out, n_in, &lazy.touched[i])
    for i in range(begin, end):
        if i + LAZY_PREFETCH_AHEAD < end:
            prefetch_lazy_row(lazy, W1, n_out, n_in, &lazy.touched[i + LAZY_PREFETCH_AHEAD])
        column = lazy.touched[i]
        if lazy.applied[column] != lazy.steps:
            lazy_catch_up(lazy, W1, n_out, column, lazy.steps - lazy.applied[column])
            lazy.applied[column] = lazy.steps


cdef bint read_batch_values(SparseBatch* sparse, const floating* data, int m) noexcept nogil:
    """The batch's stored values (its rows' indptr spans) into sparse.value_columns,
    value_rows and value_places, each index checked as it is read (data: sparse.data, the
    pass's type). False: a row, an indptr entry or a column out of range, or more values
    than value_capacity (indptr changed since the fit sized it): sparse.bad set."""
    cdef Py_ssize_t i, k, row, begin, end, column, n = 0
    for i in range(m):
        fbp_prefetch_csr_ahead(data, sparse.indices, sparse.indptr, sparse.n_rows, sparse.nnz,
                               sparse.rows, sparse.first, i, m)
        row = sparse.rows[i] if sparse.rows != NULL else sparse.first + i
        if row < 0 or row >= sparse.n_rows:
            sparse.bad = i
            return False
        begin = sparse.indptr[row]
        end = sparse.indptr[row + 1]
        if begin < 0 or end < begin or end > sparse.nnz \
                or end - begin > sparse.value_capacity - n:
            sparse.bad = i
            return False
        for k in range(begin, end):
            column = sparse.indices[k]
            if column < 0 or column >= sparse.n_cols:
                sparse.bad = i
                return False
            sparse.value_columns[n] = column
            sparse.value_rows[n] = i
            sparse.value_places[n] = k
            n += 1
    sparse.n_values = n
    return True


cdef bint log_batch_rows(RowLogData* log, SparseBatch* sparse) noexcept nogil:
    """The rows of W1 the batch names (the values read_batch_values read) into the log
    (RowLogData). False: out of memory."""
    cdef Py_ssize_t v, column
    for v in range(sparse.n_values):
        column = sparse.value_columns[v]
        if not log.logged[column] and not log_row(log, column):
            return False
    return True


# The rows of W1 a batch names lie anywhere in W1 and its state: each is asked into cache
# this many rows before its turn, while the rows before it step (S1, one process, epochs
# alternating: Adam 82k samples/s at 1 and 4 rows, 88k at 2, 74k at 8; momentum 136k at
# 1 and 2, 133k at 4, 120k asking for each row just before it).
cdef enum:
    LAZY_PREFETCH_AHEAD = 2


cdef inline void prefetch_lazy_row(const LazyRows* lazy, floating* W1, Py_ssize_t n_out,
                                   Py_ssize_t n_in, const Py_ssize_t* row) noexcept nogil:
    """Row *row of W1 and of the state its catch-up reads, into cache."""
    cdef Py_ssize_t head = FBP_PREFETCH_HEAD_BYTES
    fbp_prefetch_rows(W1, row, 1, n_out, n_in, head)
    if lazy.adam != NULL:
        fbp_prefetch_rows(<floating*>lazy.adam.first, row, 1, n_out, n_in, head)
        fbp_prefetch_rows(<floating*>lazy.adam.second, row, 1, n_out, n_in, head)
    if lazy.coupled != NULL:
        fbp_prefetch_rows(<floating*>lazy.coupled, row, 1, n_out, n_in, head)
    if lazy.scaled != NULL:
        fbp_prefetch_rows(<floating*>lazy.scaled, row, 1, n_out, n_in, head)


cdef bint lazy_flush(LazyRows* lazy, floating* W1, Py_ssize_t n_in, Py_ssize_t n_out,
                     RowLogData* log, bint deferring=False,
                     bint* rows_finite=NULL) noexcept nogil:
    """Every row of W1 up to date: the end of an epoch. With a log, each row the catch-up
    changes is logged first; a row it would leave as it is (no decay, its state all 0) is
    skipped. deferring (with a log): a row the epoch has not logged whose catch-up
    flush_bound proves finite is left behind, for lazy_flush_deferred once the epoch is
    known to stand. rows_finite (with a log, or NULL): set to 0 if a logged row of W1 or
    of its state is not finite once up to date, each checked as the flush reaches it (in
    cache, where changes_finite would read every logged row again: 10 of S1's 220 ms an
    epoch with Adam). False: out of memory (the rows not yet logged unchanged)."""
    cdef Py_ssize_t row
    cdef Pending pending
    pending.ahead = pending.found = 0
    for row in range(n_in):
        if lazy.applied[row] != lazy.steps:
            if flush_reads(lazy, row):
                prefetch_pending(lazy, W1, n_out, n_in, &pending)
            if log != NULL and not log.logged[row]:
                if not lazy_row_moves(lazy, W1, n_out, row):
                    lazy.applied[row] = lazy.steps
                    continue
                if deferring and flush_bound(lazy, W1, n_out, row,
                                             lazy.steps - lazy.applied[row]):
                    continue
                if not log_row(log, row):
                    return False
            lazy_catch_up(lazy, W1, n_out, row, lazy.steps - lazy.applied[row])
            lazy.applied[row] = lazy.steps
        if rows_finite != NULL and log.logged[row] and rows_finite[0]:
            rows_finite[0] = logged_row_finite(log, W1, n_out, row)
    return True


cdef bint logged_row_finite(const RowLogData* log, const floating* W1, Py_ssize_t n_out,
                            Py_ssize_t row) noexcept nogil:
    """Whether row `row` of W1 (the log's) and of each array of its state the log holds
    is finite."""
    cdef Py_ssize_t a
    if not fbp_all_finite(W1 + row * n_out, n_out):
        return False
    for a in range(1, log.n_arrays):
        if not fbp_all_finite(<const floating*>(log.state + (a - 1) * log.state_stride)
                              + row * n_out, n_out):
            return False
    return True


# The end of an epoch under a lazy rule catches up every row with a state, most of them
# rows the epoch never named (a sparse partial_fit of one batch: all of them). Logged
# first, each would cost a copy of its weights and state and a second read by the
# finiteness check (changes_finite): a partial_fit of 64 rows of S1 took 32 ms with
# momentum and 40 ms with Adam, against 0.5 ms with plain SGD (17-18 and 23-24 ms now).
# So the rows not yet logged whose catch-up is proven finite from their largest values
# (flush_bound) are caught up last, unlogged, once the rest of the epoch has been checked
# finite (so that it can no longer be undone); any other row is logged and checked as
# before. The same arithmetic: the same bits. row_log_settings(defer_flush=False) logs
# them all (for tests).
cdef bint flush_deferring = True


def row_log_settings(defer_flush=None):
    """(defer_flush,) as it was before this call, setting it if given: whether the end of
    a sparse epoch catches up its unlogged rows last, unlogged, where their catch-up is
    proven finite (see lazy_flush_deferred); for tests."""
    global flush_deferring
    previous = (bool(flush_deferring),)
    if defer_flush is not None:
        flush_deferring = bool(defer_flush)
    return previous


# The largest value flush_bound lets a deferred catch-up reach: far enough below the
# dtype's largest (3.4e38, 1.8e308) that no rounding of the catch-up's arithmetic can
# carry it past.
cdef double FLUSH_LIMIT_FLOAT = 1e30
cdef double FLUSH_LIMIT_DOUBLE = 1e300


cdef bint flush_bound(const LazyRows* lazy, floating* W1, Py_ssize_t n_out, Py_ssize_t row,
                      Py_ssize_t k) noexcept nogil:
    """Whether catching row `row` up k steps leaves it and its state finite, from its
    largest magnitudes: a linear rule's row is at most |a| |p| + |b| |u| (and so on) after
    k steps; Adam's weights move at most lr_s |m| / eps a step and its moments only decay.
    False if any value is not finite (or v < 0, or eps is 0): the row is then logged and
    checked as every changed row is."""
    cdef double limit = FLUSH_LIMIT_FLOAT if floating is float else FLUSH_LIMIT_DOUBLE
    cdef int negative = 0
    cdef double weights = fbp_largest_magnitude(W1 + row * n_out, n_out, &negative), bound
    cdef double power[5]
    cdef double velocity = 0, scaled = 0, first, second
    cdef const LazyAdam* adam = lazy.adam
    if adam != NULL:
        first = fbp_largest_magnitude(<floating*>adam.first + row * n_out, n_out, &negative)
        negative = 0     # of v only
        second = fbp_largest_magnitude(<floating*>adam.second + row * n_out, n_out, &negative)
        if not (adam.epsilon > 0 and second <= limit and not negative):
            return False
        bound = max(1.0, pow(fabs(adam.shrink), <double>k)) \
            * (weights + k * adam.largest_step * first / adam.epsilon)
        return bound <= limit and first <= limit
    lazy_map_power(lazy, k, power)
    if lazy.coupled != NULL:
        velocity = fbp_largest_magnitude(<floating*>lazy.coupled + row * n_out, n_out,
                                         &negative)
    if lazy.scaled != NULL:
        scaled = fbp_largest_magnitude(<floating*>lazy.scaled + row * n_out, n_out, &negative)
    bound = max(fabs(power[0]) * weights + fabs(power[1]) * velocity,
                fabs(power[2]) * weights + fabs(power[3]) * velocity)
    return bound <= limit and fabs(power[4]) * scaled <= limit


cdef void lazy_flush_deferred(LazyRows* lazy, floating* W1, Py_ssize_t n_in,
                              Py_ssize_t n_out, unsigned char* moving) noexcept nogil:
    """The rows lazy_flush(deferring=True) left behind, caught up unlogged: the epoch's end
    once everything else it changed is known to be finite. Each is marked in moving (if
    not NULL) as a logged row is: its state may no longer be 0 (coupled decay)."""
    cdef Py_ssize_t row
    cdef Pending pending
    pending.ahead = pending.found = 0
    for row in range(n_in):
        if lazy.applied[row] != lazy.steps:   # (a row left behind moves: flush_reads)
            prefetch_pending(lazy, W1, n_out, n_in, &pending)
            lazy_catch_up(lazy, W1, n_out, row, lazy.steps - lazy.applied[row])
            lazy.applied[row] = lazy.steps
            if moving != NULL:
                moving[row] = 1


cdef inline bint flush_reads(const LazyRows* lazy, Py_ssize_t row) noexcept nogil:
    """Whether a flush reads row `row`: behind the steps, and not known to have a state
    of 0 under a rule without decay (lazy_row_moves)."""
    return lazy.applied[row] != lazy.steps and (
        lazy.moving == NULL or lazy.moving[row]
        or (lazy.adam.shrink != 1 if lazy.adam != NULL else lazy.a != 1))


cdef struct Pending:
    Py_ssize_t ahead                # the next row to look at
    Py_ssize_t found                # rows asked into cache and not yet reached


cdef inline void prefetch_pending(const LazyRows* lazy, floating* W1, Py_ssize_t n_out,
                                  Py_ssize_t n_in, Pending* pending) noexcept nogil:
    """At a row a flush catches up (applied behind the steps), the one LAZY_PREFETCH_AHEAD
    such rows on, into cache: the flush's rows lie far apart in W1 and its state (the
    sparse partial_fit of 64 rows of S1 with momentum: 27 -> 19 ms). Not the rows whose
    state lazy.moving knows to be 0, which the flush skips unread (69% of S1's)."""
    while pending.ahead < n_in and pending.found <= LAZY_PREFETCH_AHEAD:
        if flush_reads(lazy, pending.ahead):
            prefetch_lazy_row(lazy, W1, n_out, n_in, &pending.ahead)
            pending.found += 1
        pending.ahead += 1
    pending.found -= 1


cdef bint lazy_row_moves(const LazyRows* lazy, floating* W1, Py_ssize_t n_out,
                         Py_ssize_t row) noexcept nogil:
    """Whether catching row `row` up may change it or its state: not when the rule has no
    decay and the row's state (velocity, moments) is all 0, as lazy.moving may already
    say without reading it."""
    if lazy.adam != NULL:
        if lazy.adam.shrink != 1:
            return True
        if lazy.moving != NULL and not lazy.moving[row]:
            return False
        return not all_zero(<floating*>lazy.adam.first + row * n_out, n_out) \
            or not all_zero(<floating*>lazy.adam.second + row * n_out, n_out)
    if lazy.a != 1:
        return True
    if lazy.moving != NULL and not lazy.moving[row]:
        return False
    if lazy.coupled != NULL and not all_zero(<floating*>lazy.coupled + row * n_out, n_out):
        return True
    return lazy.scaled != NULL and lazy.e != 1 \
        and not all_zero(<floating*>lazy.scaled + row * n_out, n_out)


cdef inline bint all_zero(const floating* values, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        if values[j] != 0:
            return False
    return True


cdef bint lazy_restart(LazyRows* lazy, floating* W1, Py_ssize_t n_in, Py_ssize_t n_out,
                       double step, RowLogData* log) noexcept nogil:
    """Every row up to date and the count of steps from 0 again (Adam's window is full).
    False: out of memory (lazy_flush)."""
    cdef Py_ssize_t row
    if not lazy_flush(lazy, W1, n_in, n_out, log):
        return False
    for row in range(n_in):
        lazy.applied[row] = 0
        lazy.listed[row] = -1
    lazy.steps = 0
    lazy_adam_start(lazy.adam, step)
    return True


cdef inline void step_slice(const HyperparameterData* hyper, floating* params, floating* grads,
                            floating* first, floating* second, int update, Py_ssize_t offset,
                            Py_ssize_t n, bint weights, unsigned char* named=NULL,
                            Py_ssize_t row_length=0) noexcept nogil:
    """The optimizer's rule on params[offset:offset + n] from grads there (for
    FOLDED_MOMENTUM, grads is the scaled velocity the GEMM just added the gradient to).
    Weight decay applies to weights, not biases. named (not for FOLDED_MOMENTUM): a flag
    per row of row_length values, 0 where the gradient is 0 (fbp_optimizer_step)."""
    step_values(hyper, params + offset, grads + offset, first + offset if first else NULL,
                second + offset if second else NULL, update, n, weights, named, row_length)


cdef inline void step_values(const HyperparameterData* hyper, floating* params,
                             floating* grads, floating* first, floating* second, int update,
                             Py_ssize_t n, bint weights, unsigned char* named=NULL,
                             Py_ssize_t row_length=0) noexcept nogil:
    """step_slice on n values at params, their gradient at grads (left 0) and their state
    at first and second (or NULL)."""
    cdef floating weight_decay = <floating>hyper.weight_decay if weights else 0
    if weights and hyper.decoupled_weight_decay:   # p <- p (1 - lr wd), then the rule
        fbp_scale(params, n, <floating>(1.0 - hyper.learning_rate * hyper.weight_decay))
        weight_decay = 0
    if update == FOLDED_MOMENTUM:
        fbp_momentum_step(params, grads, n, <floating>hyper.learning_rate, weight_decay,
                          <floating>hyper.momentum)
    else:
        fbp_optimizer_step(params, grads, first, second, n, hyper.optimizer,
                           <floating>hyper.learning_rate, weight_decay,
                           <floating>hyper.momentum, hyper.nesterov, <floating>hyper.beta1,
                           <floating>hyper.beta2, <floating>hyper.epsilon, hyper.step, named,
                           row_length)


cdef double gradient_norm(double squares, const floating* grads, Py_ssize_t n) noexcept nogil:
    """The norm of the gradient grads[:n] whose sum of squares, summed in double, is
    `squares`. Where that sum overflowed (float64 gradients past about 1e154) the values
    are scaled by 2^(2 - E), the largest |g| being below 2^E, and summed again: read as
    infinite, the norm made clipping's factor 0, and the fit went on without a step and
    without a word. (That scale is a normal number for every finite largest, E <= 1024:
    a training epoch flushes subnormal numbers to 0.)"""
    cdef int negative = 0, exponent
    cdef double largest
    if squares == INFINITY:
        largest = fbp_largest_magnitude(grads, n, &negative)
        if isfinite(largest):
            frexp(largest, &exponent)
            return ldexp(sqrt(fbp_sum_squares_scaled(grads, n, ldexp(1.0, 2 - exponent))),
                         exponent - 2)
    return sqrt(squares)


cdef void clip_scale(const HyperparameterData* hyper, double norm, floating* x,
                     Py_ssize_t n) noexcept nogil:
    """x[:n] *= torch.nn.utils.clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)),
    norm the whole gradient's. A factor below the dtype's smallest normal number (a float32
    gradient of 1e36 clipped to 0.01; a float64 norm past about 1e307 clipped to 1) is
    applied as two normal ones: a training epoch flushes subnormal numbers to 0, and such a
    step moved nothing. (A NaN norm scales nothing: the epoch diverges.)"""
    cdef double smallest = FLT_MIN if floating is float else DBL_MIN
    cdef double part = ldexp(1.0, -64 if floating is float else -512)
    cdef double factor = hyper.clip_norm / (norm + 1e-6)
    if factor < smallest:
        fbp_scale(x, n, <floating>part)
        fbp_scale(x, n, <floating>(hyper.clip_norm / part / (norm + 1e-6)))
    elif factor < 1:
        fbp_scale(x, n, <floating>factor)


cdef void clip_and_update(const PlanData* plan, HyperparameterData* hyper, floating* params,
                          floating* grads, floating* first, floating* second) noexcept nogil:
    """One optimizer step from the whole gradient in grads, clipped by its norm first."""
    cdef int l
    clip_scale(hyper, gradient_norm(fbp_sum_squares(grads, plan.n_params), grads,
                                    plan.n_params), grads, plan.n_params)
    hyper.step += 1
    for l in range(plan.n_layers):
        step_slice(hyper, params, grads, first, second, LAYER_STEP, plan.weight_offsets[l],
                   <Py_ssize_t>plan.sizes[l] * plan.sizes[l + 1], True)
        step_slice(hyper, params, grads, first, second, LAYER_STEP, plan.bias_offsets[l],
                   plan.sizes[l + 1], False)


# ---- the Python-callable shims ----
#
# Each checks every size it is handed against the plan before it takes a pointer, so a
# wrong call raises ValueError instead of reading or writing past a buffer.

cdef int check_size(str caller, str what, Py_ssize_t got, Py_ssize_t expected) except -1:
    if got != expected:
        raise ValueError(f"{caller}: {what} is {got}; it must be {expected}")
    return 0


cdef int check_pass(str caller, const PlanData* plan, Py_ssize_t n_params,
                    Py_ssize_t work_size, Py_ssize_t n_inputs, bint with_dropout) except -1:
    """The sizes every pass shares: parameters, workspace, input width; a workspace for at
    least one row; dropout only where the pass draws masks."""
    check_size(caller, "the parameter count", n_params, plan.n_params)
    check_size(caller, "the input width (X's columns)", n_inputs, plan.sizes[0])
    if work_size < plan.work_size:
        raise ValueError(f"{caller}: the workspace holds {work_size} values; the plan needs "
                         f"{plan.work_size}")
    if plan.capacity < 1:
        raise ValueError(f"{caller}: the plan has room for no rows (capacity 0): it "
                         f"describes the parameters only")
    if not with_dropout:
        for l in range(plan.n_layers):
            if plan.dropout_rates[l] > 0:
                raise ValueError(f"{caller}: a pass without dropout needs a plan without "
                                 f"dropout")
    return 0


ctypedef fused csr_index:     # a CSR matrix's index arrays: scipy's int32, or np.intp
    int
    Py_ssize_t


cdef bint plain_csr(const floating* values, const csr_index* indices,
                    const csr_index* indptr, Py_ssize_t n_rows, Py_ssize_t n_columns,
                    Py_ssize_t nnz, Py_ssize_t* indices_out,
                    Py_ssize_t* indptr_out) noexcept nogil:
    """plain_sparse_rows's checks of the rows (indptr from 0, never decreasing, up to nnz;
    every row's columns in 0..n_columns-1 and not decreasing; finite values), with the
    index arrays widened into indices_out and indptr_out when they are not NULL."""
    cdef Py_ssize_t r, k, previous
    if indptr[0] != 0:
        return False
    for r in range(n_rows):
        if indptr[r + 1] < indptr[r] or indptr[r + 1] > nnz:
            return False
        previous = 0
        for k in range(indptr[r], indptr[r + 1]):
            if indices[k] < previous or indices[k] >= n_columns or not isfinite(values[k]):
                return False
            previous = indices[k]
    if indptr_out != NULL:
        for r in range(n_rows + 1):
            indptr_out[r] = indptr[r]
        for k in range(nnz):
            indices_out[k] = indices[k]
    return True


cdef inline bint plain_vector(object array, int type_num) noexcept:
    """array: exactly an np.ndarray, 1-D, C-contiguous, aligned, in native byte order,
    of NumPy type number type_num (read through NumPy's C API: a serving call checks
    three of them, and their Python attributes had cost a microsecond)."""
    if type(array) is not np.ndarray:
        return False
    cdef cnp.ndarray vector = <cnp.ndarray>array
    return (cnp.PyArray_NDIM(vector) == 1 and cnp.PyArray_TYPE(vector) == type_num
            and cnp.PyArray_ISCARRAY_RO(vector) and cnp.PyArray_ISNOTSWAPPED(vector))


def plain_sparse_rows(values, indices, indptr, Py_ssize_t n_rows, Py_ssize_t n_columns,
                      dtype):
    """SparseRows of a CSR matrix's arrays (n_rows rows, n_columns columns) when they need
    nothing but their int32 indices widened: values a 1-D aligned C-contiguous array of
    `dtype` (float32 or float64, a np.dtype), indices and indptr such arrays of one type,
    int32 or np.intp, all in native byte order; indptr of n_rows + 1 entries from 0,
    never decreasing, ending within both arrays; every row's columns in range and sorted
    (repeats allowed); the values finite. Else None: fastbp._validation.as_sparse_rows
    then converts, sorts or says what is wrong. The same arrays as that path makes, in
    one compiled pass."""
    cdef int value_type = dtype.num, index_type
    if value_type != cnp.NPY_FLOAT32 and value_type != cnp.NPY_FLOAT64 or n_columns < 1:
        return None
    if plain_vector(indptr, cnp.NPY_INTP):
        index_type = cnp.NPY_INTP
    elif plain_vector(indptr, cnp.NPY_INT32):
        index_type = cnp.NPY_INT32
    else:
        return None
    if not (plain_vector(values, value_type) and plain_vector(indices, index_type)) \
            or cnp.PyArray_DIM(indptr, 0) != n_rows + 1:
        return None
    cdef const void* starts = cnp.PyArray_DATA(indptr)
    cdef Py_ssize_t nnz = (<const Py_ssize_t*>starts)[n_rows] \
        if index_type == cnp.NPY_INTP else (<const int*>starts)[n_rows]
    if not 0 <= nnz <= min(cnp.PyArray_DIM(indices, 0), cnp.PyArray_DIM(values, 0)):
        return None
    if cnp.PyArray_DIM(values, 0) != nnz:
        values = values[:nnz]
    cdef const void* stored = cnp.PyArray_DATA(values)
    cdef const void* columns = cnp.PyArray_DATA(indices)
    cdef bint single = value_type == cnp.NPY_FLOAT32, plain
    cdef cnp.ndarray indices_out, indptr_out
    if index_type == cnp.NPY_INTP:
        if cnp.PyArray_DIM(indices, 0) != nnz:
            indices = indices[:nnz]
        if single:
            plain = plain_csr(<const float*>stored, <const Py_ssize_t*>columns,
                              <const Py_ssize_t*>starts, n_rows, n_columns, nnz, NULL, NULL)
        else:
            plain = plain_csr(<const double*>stored, <const Py_ssize_t*>columns,
                              <const Py_ssize_t*>starts, n_rows, n_columns, nnz, NULL, NULL)
    else:
        indices_out = cnp.PyArray_EMPTY(1, [nnz], cnp.NPY_INTP, 0)
        indptr_out = cnp.PyArray_EMPTY(1, [n_rows + 1], cnp.NPY_INTP, 0)
        if single:
            plain = plain_csr(<const float*>stored, <const int*>columns, <const int*>starts,
                              n_rows, n_columns, nnz,
                              <Py_ssize_t*>cnp.PyArray_DATA(indices_out),
                              <Py_ssize_t*>cnp.PyArray_DATA(indptr_out))
        else:
            plain = plain_csr(<const double*>stored, <const int*>columns, <const int*>starts,
                              n_rows, n_columns, nnz,
                              <Py_ssize_t*>cnp.PyArray_DATA(indices_out),
                              <Py_ssize_t*>cnp.PyArray_DATA(indptr_out))
        indices, indptr = indices_out, indptr_out
    return SparseRows(values, indices, indptr, n_columns) if plain else None


cdef SparseBatch* sparse_input(str caller, const PlanData* plan, SparseRows sparse,
                              bint double_precision, SparseBatch* batch) except? NULL:
    """The SparseBatch of a pass's X: NULL for dense X (refused by a plan for sparse X,
    which keeps no batch of dense rows), else `batch`, filled from `sparse` after checking
    its type against the pass's."""
    if sparse is None:
        if plan.sparse_input:
            raise ValueError(f"{caller}: this plan is for sparse X; X is dense")
        return NULL
    if sparse.double_precision != double_precision:
        raise ValueError(f"{caller}: X's values are "
                         f"{'float64' if sparse.double_precision else 'float32'}; the pass "
                         f"is {'float64' if double_precision else 'float32'}")
    batch[0] = sparse.as_batch()
    return batch


cdef int check_targets(str caller, const PlanData* plan, str name, Py_ssize_t n_rows,
                       Py_ssize_t n_cols, Py_ssize_t n_samples) except -1:
    """name: (n_samples, the output width)."""
    check_size(caller, f"the number of rows of {name}", n_rows, n_samples)
    check_size(caller, f"the width of {name} (the outputs)", n_cols, plan.sizes[plan.n_layers])
    return 0


def train_epoch(Plan plan, Hyperparameters hyperparameters, floating[::1] params,
                floating[::1] work, floating[:, ::1] state, const floating[:, ::1] X,
                const floating[:, ::1] Y, const Py_ssize_t[::1] labels,
                const floating[::1] row_weights, const Py_ssize_t[::1] order,
                Py_ssize_t batch_size, uint64_t random_seed, bint interruptible=False,
                Plan worker_plan=None, floating[::1] worker_work=None, int n_workers=1,
                SparseRows sparse=None, RowLog row_log=None, bint split_inputs=False,
                bint split_hidden=False, unsigned char[::1] moving_rows=None,
                bint defer_flush=True):
    """One epoch of mini-batch training in one nogil call.

    Batches are rows order[0:b], order[b:2b], ... (rows 0:b, b:2b, ... read in place when
    order is empty): the epoch trains the len(order) rows order names, which may be fewer
    than X's (Trainer._fit_rows: fastbp.dask's pieces of a chunk, without a copy). Targets
    are Y's rows, or one-hot rows of `labels` when Y is empty; rows are weighted by
    row_weights unless it is empty. state holds the optimizer's
    buffers, (hyperparameters.state_rows, n_params): the velocity, or the first and/or
    second moments, as the rule uses them. interruptible: stop at the next batch once
    SIGINT arrives (only a fit between catch_interrupts and release_interrupts, on the
    main thread). Returns (weighted loss total, weight total, rows trained, status): the
    epoch's mean loss is the ratio of the first two; status is COMPLETED, DIVERGED (the
    batch at `rows trained` had a non-finite loss, nothing was changed by it; or an update
    overflowed: the parameters or the optimizer state are no longer finite) or INTERRUPTED
    (SIGINT, at a batch boundary).

    The arrays are read in place, so they may change between the caller's checks and this
    call, or during it: every index read (order, labels) is checked as it is read, and an
    index out of range raises ValueError, the batches before it having been trained.

    n_workers > 1: each step is split by rows among that many threads (_workers.pxi),
    each with a worker_plan workspace (capacity >= batch_size / n_workers, with room for a
    gradient) in worker_work (worker_workspace_size elements); BLAS should run on one
    thread. Same results for the same n_workers; other counts agree to rounding.
    split_inputs (with n_workers > 1, dense X): the first layer's forward product is split
    by its inputs instead, each worker multiplying its columns of the batch by the rows of
    W1 it also steps, so that W1 stays with its worker (the worker workspace then also
    holds the partial products: worker_workspace_size(..., split_inputs=True)).
    split_hidden (n_workers > 1, dense X, one hidden layer, no clipping): each step is
    split by the hidden layer's units instead, each worker stepping W1's columns and W2's
    rows of its units (_hidden_split.pxi; worker_workspace_size(..., split_hidden=True)).

    sparse: X is this sparse matrix (X itself is then not read: pass an empty array of the
    dtype); n_workers > 1 then shares the rule's row-by-row work on W1 among that many
    threads (_row_pool.pxi; no worker plan; the same bits for every count; a rule for which
    shares_rows is False runs on this thread alone), and a column index or indptr entry
    out of range (checked as read) raises as an index out of range does. row_log (sparse
    X only): the rows of W1 (and of the state) this epoch changes are copied into it
    before they change (RowLog), so that the caller can undo the epoch without a copy of
    all of W1 (but for the rows only the epoch's end catches up whose catch-up is proven
    finite: those change after the epoch's last check, when it is no longer undone;
    lazy_flush_deferred); MemoryError if it cannot grow (the epoch stops; undo it).
    moving_rows (with row_log):
    a byte per row of W1, 0 where the caller knows the row's optimizer state to be all 0,
    as it is until an epoch first changes the row: the end of an epoch under a lazy rule
    then skips those rows unread (else it reads every row's state there, all of W1's, to
    find the rows to catch up); the epoch sets it to 1 for every row it logs.
    defer_flush False: the epoch's end logs every row it catches up (none left to change
    unlogged after its last check: the caller may still undo it, Trainer._epoch_check).
    """
    cdef const PlanData* plan_data = &plan.data
    cdef HyperparameterData* hyper = &hyperparameters.data
    cdef bint use_sparse = sparse is not None
    cdef Py_ssize_t n_samples = sparse.n_rows if use_sparse else X.shape[0]
    cdef Py_ssize_t n_in = plan_data.sizes[0], n_out = plan_data.sizes[plan_data.n_layers]
    cdef bint use_order = order.shape[0] > 0, use_labels = Y.shape[0] == 0
    cdef bint use_weights = row_weights.shape[0] > 0, clipping = hyper.clip_norm > 0
    cdef int update = update_kind(hyper)
    cdef int state_rows = hyperparameters.state_rows
    cdef bint flush_subnormals = flushes_subnormals()
    cdef unsigned float_mode

    caller = "train_epoch"
    check_pass(caller, plan_data, params.shape[0], work.shape[0],
               sparse.n_columns if use_sparse else X.shape[1], True)
    cdef SparseBatch batch
    cdef SparseBatch* sparse_batch = sparse_input(caller, plan_data, sparse,
                                                  sizeof(floating) == 8, &batch)
    if use_sparse and not 1 <= n_workers <= 1024:
        raise ValueError(f"train_epoch: n_workers is {n_workers}; it must be in 1..1024")
    if not 1 <= batch_size <= plan_data.capacity:
        raise ValueError(f"train_epoch: batch_size is {batch_size}; the plan has room for 1 "
                         f"to {plan_data.capacity} rows")
    if (update == LAYER_STEP or update == GRADIENT_ONLY) and plan_data.gradient_offset < 0:
        raise ValueError("train_epoch: this optimizer needs a plan with room for the gradient")
    check_size(caller, "the optimizer state's row count", state.shape[0], state_rows)
    if state_rows:
        check_size(caller, "the optimizer state's width", state.shape[1], plan_data.n_params)
    if use_labels:
        check_size(caller, "the number of labels", labels.shape[0], n_samples)
    else:
        check_targets(caller, plan_data, "Y", Y.shape[0], Y.shape[1], n_samples)
    if use_weights:
        check_size(caller, "the number of row weights", row_weights.shape[0], n_samples)

    # the rows this epoch trains; n_samples stays X's rows, which every index read is
    # checked against
    cdef Py_ssize_t n_rows = order.shape[0] if use_order else n_samples
    cdef Py_ssize_t start = 0, m, i, bad = -1
    cdef int failed_gather = 0      # which gather found an index out of range (GATHERED_*)
    cdef floating* p = &params[0]
    cdef floating* w = &work[0]
    cdef floating* batch_x = workspace(w, plan_data.batch_x_offset)   # NULL: sparse X
    cdef floating* batch_y = w + plan_data.batch_y_offset
    cdef floating* batch_weights = w + plan_data.batch_weight_offset
    cdef floating* grads = workspace(w, plan_data.gradient_offset)
    cdef floating* state_start = &state[0, 0] if state_rows else NULL
    cdef floating* first = state_start if uses_first_moment(hyper.optimizer) else NULL
    cdef floating* second = \
        &state[state_rows - 1, 0] if uses_second_moment(hyper.optimizer) else NULL
    cdef const floating* x
    cdef const floating* y
    cdef const floating* weights = NULL
    cdef const Py_ssize_t* rows
    cdef double weight_sum, loss_sum, loss_total = 0.0, weight_total = 0.0
    cdef double normaliser = loss_normaliser(hyper.loss, n_out)
    cdef floating scale
    cdef int status = COMPLETED
    cdef uint64_t random_state = random_seed | 1
    cdef floating* target = grads
    if update == FOLDED_SGD:
        target = p
    elif update == FOLDED_MOMENTUM:
        target = first
    cdef LazyRows lazy
    cdef LazyAdam adam
    adam.sums = NULL
    cdef bint use_lazy = use_sparse and lazy_rule(
        hyper, update, &lazy, first, second, plan_data.weight_offsets[0],
        &adam if lazy_adam_rows() else NULL)
    # Checked (RowLog.begin) and logged before anything is allocated here: a refusal
    # leaves nothing behind.
    cdef RowLogData* log = NULL
    if moving_rows is not None and (row_log is None or moving_rows.shape[0] != n_in):
        raise ValueError(f"train_epoch: moving_rows needs a row_log and a byte per row of "
                         f"W1 ({n_in}); got {moving_rows.shape[0]}")
    cdef unsigned char* moving = &moving_rows[0] if moving_rows is not None else NULL
    if (split_inputs or split_hidden) and use_sparse:
        raise ValueError("train_epoch: split_inputs and split_hidden need a dense X (a "
                         "sparse first layer shares its rows among the threads instead)")
    if n_workers < 1:
        raise ValueError(f"train_epoch: n_workers is {n_workers}; it must be at least 1")
    if use_sparse and row_log is not None:
        log = row_log.begin(caller, plan_data, p, state_start, state_rows, sizeof(floating))
        if use_lazy or update == FOLDED_SGD:   # rows change where batches name them
            batch.log = log
        elif not log_every_row(log):            # every row changes at every step
            raise MemoryError("train_epoch: no memory for the epoch's copy of W1")
    cdef RowGradients gradients
    cdef bint row_steps = use_lazy and update == LAYER_STEP     # sparse_row_steps
    cdef bint rows_finite, rows_checked     # the epoch's end: lazy_flush's check
    cdef Py_ssize_t* recorded = NULL    # SparseBatch's value record, then RowGradients'
    cdef Py_ssize_t capacity = 0
    lazy.gradients = NULL
    lazy.applied = NULL     # (freed on every way out: NULL unless a lazy rule's)
    if use_lazy:
        lazy.applied = <Py_ssize_t*>malloc(4 * n_in * sizeof(Py_ssize_t))
        if not lazy.applied:
            raise MemoryError(f"train_epoch: no memory for the lazy rule's step counts of "
                              f"W1's rows ({4 * sizeof(Py_ssize_t)} bytes a column of X: "
                              f"{n_in * 4 * sizeof(Py_ssize_t) / 2**30:,.2f} GiB)")
        if lazy.adam != NULL:
            adam.window = lazy_adam_window
            if not lazy_adam_allocate(&adam, floating is float):
                free(lazy.applied)
                raise MemoryError("train_epoch: no memory for Adam's lazy rows' sums")
            lazy_adam_start(&adam, hyper.step)
        lazy.listed = lazy.applied + n_in
        lazy.touched = lazy.listed + n_in
        lazy.slot = lazy.touched + n_in
        memset(lazy.applied, 0, n_in * sizeof(Py_ssize_t))
        for i in range(n_in):
            lazy.listed[i] = -1
        lazy.n_touched = lazy.steps = 0
        lazy.moving = moving
        batch.lazy = &lazy
    # a sparse step's stored values are read once, into a record (read_batch_values), where
    # a lazy rule or the log reads them again (batch is not filled for dense X)
    if use_sparse and (batch.lazy != NULL or batch.log != NULL):
        capacity = min(sparse.nnz, batch_size * longest_row(sparse))
        recorded = <Py_ssize_t*>malloc(
            (3 * capacity + (2 * capacity + 2 if row_steps else 0)) * sizeof(Py_ssize_t)
            + ((capacity + plan_data.sizes[1]) * sizeof(floating) if row_steps else 0) + 1)
        if not recorded:
            free(lazy.applied)
            free(adam.sums)
            raise MemoryError(f"train_epoch: no memory for a sparse batch's record of its "
                              f"stored values ({capacity:,} values)")
        batch.value_columns = recorded
        batch.value_rows = recorded + capacity
        batch.value_places = recorded + 2 * capacity
        batch.value_capacity = capacity
        if row_steps:
            gradients.starts = recorded + 3 * capacity
            gradients.positions = gradients.starts + capacity + 2
            gradients.values = <void*>(gradients.positions + capacity)
            gradients.row = <void*>(<floating*>gradients.values + capacity)
            lazy.gradients = &gradients
    # The rules leave the gradient buffer at 0 after each step. Where sparse_row_steps makes
    # each named row's gradient, W1's part (the first n_in x n_out values) is never used:
    # not zeroed either, so that its pages are never touched.
    cdef Py_ssize_t unused = plan_data.sizes[0] * plan_data.sizes[1] \
        if lazy.gradients != NULL else 0
    if grads:
        memset(grads + unused, 0, (plan_data.n_params - unused) * sizeof(floating))
    if n_workers > 1 and not use_sparse:
        return train_epoch_on_workers(plan_data, hyper, worker_plan, worker_work, n_workers,
                                      p, w, first, second, grads, X, Y, labels, row_weights,
                                      order, batch_size, random_seed, interruptible, update,
                                      state_rows, split_inputs, split_hidden, flush_subnormals)
    # Small batches of shuffled dense rows: each batch asks for the next one's rows of X
    # (and Y) while it trains; larger batches have many misses in flight anyway.
    cdef bint prefetching = use_order and not use_sparse \
        and batch_size * (n_in + n_out) * sizeof(floating) <= PREFETCH_BYTES
    # A sparse fit whose rule steps every row of W1 from the gradient buffer (Adam; Adagrad
    # or RMSprop with coupled decay): the rows a batch names are flagged, so that the
    # others' step need not read their zero gradient (fbp_optimizer_step).
    # FASTBP_SPARSE_NAMED_ROWS=0 reads the whole buffer instead, as before (for comparing
    # and testing: the same results to rounding).
    cdef unsigned char* named = NULL
    if use_sparse and not use_lazy and update == LAYER_STEP and named_rows_only():
        named = <unsigned char*>calloc(n_in, 1)
        if not named:
            free(lazy.applied)
            free(adam.sums)
            free(recorded)
            raise MemoryError(f"train_epoch: no memory for the flags of W1's rows a batch "
                              f"names ({n_in:,} bytes)")
        batch.named = named
    # A sparse fit on n_workers threads: they share the work on the named rows of W1 of a
    # lazy rule (_row_pool.pxi; the other rules' steps stay on this thread).
    cdef RowPoolThreads pool_threads = RowPoolThreads()
    if use_sparse and n_workers > 1 and rows_shared(use_lazy, update):
        try:
            batch.pool = pool_threads.start(n_workers, &lazy if use_lazy else NULL,
                                            plan_data, hyper, p, target, first, second,
                                            update, named, sparse.n_columns,
                                            sizeof(floating), flush_subnormals)
        except MemoryError:
            free(lazy.applied)
            free(adam.sums)
            free(recorded)
            free(named)
            raise

    with nogil:
        float_mode = fbp_float_mode_enter(flush_subnormals)
        while start < n_rows:
            if interruptible and fbp_interrupt_requested:
                status = INTERRUPTED
                break
            m = min(batch_size, n_rows - start)
            rows = &order[start] if use_order else NULL
            if use_sparse:   # read in place by the first layer
                batch.rows = rows
                batch.first = start
                x = NULL
            elif use_order:
                bad = fbp_gather_rows(batch_x, &X[0, 0], rows, m, n_in, n_samples)
                if bad >= 0:
                    failed_gather = GATHERED_X
                    break
                x = batch_x
            else:
                x = &X[start, 0]
            if use_labels:
                bad = fbp_one_hot(batch_y, &labels[0] if use_order else &labels[start], rows, m,
                                  n_out, n_samples if use_order else n_samples - start)
                if bad >= 0:
                    failed_gather = GATHERED_LABELS
                    break
                y = batch_y
            elif use_order:
                bad = fbp_gather_rows(batch_y, &Y[0, 0], rows, m, n_out, n_samples)
                if bad >= 0:
                    failed_gather = GATHERED_Y
                    break
                y = batch_y
            else:
                y = &Y[start, 0]
            if use_weights:
                if use_order:
                    bad = fbp_gather(batch_weights, &row_weights[0], rows, m, n_samples)
                    if bad >= 0:
                        failed_gather = GATHERED_WEIGHTS
                        break
                    weights = batch_weights
                else:
                    weights = &row_weights[start]
                weight_sum = 0
                for i in range(m):
                    weight_sum += weights[i]
            else:
                weight_sum = m
            if prefetching and start + m < n_rows:   # the next batch's rows, meanwhile
                i = min(batch_size, n_rows - start - m)
                fbp_prefetch_rows(&X[0, 0], &order[start + m], i, n_in, n_samples, 0)
                if not use_labels:
                    fbp_prefetch_rows(&Y[0, 0], &order[start + m], i, n_out, n_samples, 0)
            if weight_sum > 0:   # a batch whose rows all weigh 0 teaches nothing
                scale = <floating>(normaliser / weight_sum)
                loss_sum = run_batch(plan_data, hyper, p, target, first, second, w, x, y,
                                     weights, <int>m, scale, update, 1, &random_state,
                                     sparse_batch)
                if use_sparse and batch.bad >= 0:
                    bad = batch.bad
                    failed_gather = GATHERED_SPARSE
                    break
                if log != NULL and log.out_of_memory:
                    break
                if not isfinite(loss_sum):
                    status = DIVERGED
                    break
                if clipping:
                    clip_and_update(plan_data, hyper, p, grads, first, second)
                add_batch_loss(hyper, &loss_total, &weight_total, loss_sum, normaliser,
                               weight_sum, m)
            start += m
        pool_threads.stop()
        # An update can overflow with a finite loss: in the parameters, or only in the
        # optimizer's state (Adam's g^2 past FLT_MAX), where it would freeze weights silently.
        # Under a lazy rule the flush checks the logged rows of W1 as it passes them.
        rows_finite = True
        rows_checked = use_lazy and log != NULL
        if use_lazy and bad < 0 and not (log != NULL and log.out_of_memory):
            # every row of W1 up to date, but for the unlogged rows left to the end
            lazy_flush(&lazy, p + plan_data.weight_offsets[0], n_in, plan_data.sizes[1], log,
                       flush_deferring and defer_flush,
                       &rows_finite if rows_checked else NULL)
        if bad < 0 and status != DIVERGED and not (log != NULL and log.out_of_memory) \
                and not (rows_finite and changes_finite(plan_data, p, state_start, state_rows,
                                                        log, rows_checked)):
            status = DIVERGED
        if use_lazy and bad < 0 and status != DIVERGED \
                and not (log != NULL and log.out_of_memory):
            # the epoch stands: the rows left behind, proven finite, need no log
            lazy_flush_deferred(&lazy, p + plan_data.weight_offsets[0], n_in,
                                plan_data.sizes[1], moving)
        if moving != NULL:   # what the epoch changed (or its undo puts back) may be non-0
            for i in range(log.n_logged):
                moving[(<Py_ssize_t*>log_entry(log, i))[0]] = 1
        fbp_float_mode_restore(float_mode)
    free(lazy.applied)
    free(adam.sums)
    free(recorded)
    free(named)
    if bad >= 0:
        raise_bad_index(order, labels, start + bad, use_order, failed_gather, n_out, sparse)
    if log != NULL and log.out_of_memory:
        raise MemoryError(f"train_epoch: no memory to keep the rows of W1 this epoch changes "
                          f"(kept to undo it; {log.n_logged} rows kept): the epoch is "
                          f"stopped, for its caller to undo")
    return loss_total, weight_total, start, status


cdef bint changes_finite(const PlanData* plan, const floating* params, const floating* state,
                         int state_rows, const RowLogData* log,
                         bint rows_checked=False) noexcept nogil:
    """Whether what an epoch may have changed is finite: the parameters and the optimizer
    state's rows (state_rows of n_params values). With a row log (a sparse fit), a row of W1
    the log does not hold is as the epoch found it (every change to W1 and its state is
    logged first), so of W1 only the logged rows are read: a sparse epoch changes the rows
    its batches name, and a pass over all of W1 cost S1's plain SGD 9% of its epoch (a
    10^7-column W1 would cost seconds an epoch, however few rows the batches name).
    rows_checked: not even those (lazy_flush checked them)."""
    cdef Py_ssize_t n = plan.n_params, w = plan.weight_offsets[0], n_out = plan.sizes[1]
    cdef Py_ssize_t end = w + plan.sizes[0] * n_out, row
    cdef const floating* values
    cdef int a
    for a in range(state_rows + 1):
        values = params if a == 0 else state + (a - 1) * n
        if log == NULL:
            if not fbp_all_finite(values, n):
                return False
            continue
        if not (fbp_all_finite(values, w) and fbp_all_finite(values + end, n - end)):
            return False
    if log != NULL and not rows_checked:
        for row in range(plan.sizes[0]):
            if log.logged[row] and not logged_row_finite(log, params + w, n_out, row):
                return False
    return True


# The largest batch (its rows of X and Y, in bytes) whose successor train_epoch prefetches.
cdef enum:
    PREFETCH_BYTES = 65536


cdef enum Gathered:
    GATHERED_X = 1
    GATHERED_LABELS = 2
    GATHERED_Y = 3
    GATHERED_WEIGHTS = 4
    GATHERED_SPARSE = 5     # a sparse X's row: its indptr or a column index


cdef raise_bad_index(const Py_ssize_t[::1] order, const Py_ssize_t[::1] labels,
                     Py_ssize_t position, bint use_order, int failed_gather, Py_ssize_t n_out,
                     SparseRows sparse=None):
    """The ValueError for the index train_epoch found out of range at row `position` of the
    epoch (the arrays may be changing still: this names what it reads now)."""
    cdef Py_ssize_t row = order[position] if use_order else position
    if failed_gather == GATHERED_SPARSE and 0 <= row < sparse.n_rows:
        raise_bad_sparse_row(sparse, row)
    if failed_gather == GATHERED_SPARSE:
        failed_gather = GATHERED_X
    if failed_gather == GATHERED_LABELS and 0 <= row < labels.shape[0]:
        raise ValueError(f"labels[{row}] = {labels[row]} is not a class of this model "
                         f"(0..{n_out - 1}): were the labels changed after the fit checked "
                         f"them?")
    name = {GATHERED_X: "X", GATHERED_LABELS: "labels", GATHERED_Y: "Y",
            GATHERED_WEIGHTS: "row_weights"}[failed_gather]
    raise ValueError(f"row {row} (order[{position}]) is out of range for {name}")


cdef raise_bad_sparse_row(SparseRows sparse, Py_ssize_t row):
    raise ValueError(f"row {row} of the sparse X holds an index out of range (a column "
                     f"outside 0..{sparse.n_columns - 1}, or indptr outside 0..{sparse.nnz} "
                     f"or decreasing): was X changed after it was checked?")


cdef enum:
    # gradients() of a float32 model: chunks of rows added up in float32 before their sum
    # goes into float64 sums (a group's: every stored value is summed; a sparse chunk's
    # rows of W1 are cleared at each group's start and passed over at its end)
    GRADIENT_GROUP_CHUNKS = 16


def gradient_sums(Plan plan, Py_ssize_t n_samples, bint single):
    """The float64 sums gradients() allocates (n_params, else 0) for n_samples rows on this
    plan (single: a float32 model): more than GRADIENT_GROUP_CHUNKS chunks (checked against
    the machine's memory by the caller first)."""
    return plan.data.n_params if single \
        and n_samples > GRADIENT_GROUP_CHUNKS * plan.data.capacity else 0


def gradients(Plan plan, Hyperparameters hyperparameters, const floating[::1] params,
              floating[::1] grads, floating[::1] work, const floating[:, ::1] X,
              const floating[:, ::1] Y, SparseRows sparse=None,
              const floating[::1] row_weights=None):
    """grads := gradient of the mean loss over all rows of X; returns the mean loss.

    Rows go through in chunks of plan.capacity; each chunk adds its share. sparse: X is
    this sparse matrix (X itself is not read). row_weights (one >= 0 a row, not all 0):
    the weighted mean sum w_i l_i / sum w_i instead, as a fit weighs a batch's rows.
    """
    cdef const PlanData* plan_data = &plan.data
    cdef bint use_sparse = sparse is not None
    cdef bint use_weights = row_weights is not None
    cdef Py_ssize_t n_samples = sparse.n_rows if use_sparse else X.shape[0]
    cdef Py_ssize_t n_out = plan_data.sizes[plan_data.n_layers]
    check_pass("gradients", plan_data, params.shape[0], work.shape[0],
               sparse.n_columns if use_sparse else X.shape[1], False)
    cdef SparseBatch batch
    cdef SparseBatch* sparse_batch = sparse_input("gradients", plan_data, sparse,
                                                  sizeof(floating) == 8, &batch)
    check_size("gradients", "the gradient's size", grads.shape[0], plan_data.n_params)
    check_targets("gradients", plan_data, "Y", Y.shape[0], Y.shape[1], n_samples)
    if n_samples == 0:
        raise ValueError("gradients: X has no rows")
    cdef Py_ssize_t start = 0, m, i
    cdef double weight_total = n_samples
    if use_weights:
        check_size("gradients", "the number of row weights", row_weights.shape[0], n_samples)
        weight_total = 0.0
        for i in range(n_samples):
            weight_total += row_weights[i]
        if not weight_total > 0:
            raise ValueError("gradients: the row weights sum to 0")
    cdef floating scale = \
        <floating>(loss_normaliser(hyperparameters.data.loss, n_out) / weight_total)
    cdef double loss_sum, total = 0.0
    cdef floating beta
    cdef const floating* x
    cdef const floating* weights = NULL
    # float32 over more than GRADIENT_GROUP_CHUNKS chunks: each group's gradient, added up
    # in float32, is added into a float64 sum (gradient_sums). Added in float32 chunk after
    # chunk, a total stopped growing past 2^24 rows (dL/db 0.25 for 0.5 at 2^25).
    cdef double* sums = NULL
    cdef Py_ssize_t n_params = plan_data.n_params, chunk = 0
    if gradient_sums(plan, n_samples, floating is float):
        sums = <double*>calloc(n_params, sizeof(double))
        if sums == NULL:
            raise MemoryError(f"gradients: no memory for the float64 sums of the gradient "
                              f"({n_params * sizeof(double) / 2**20:,.1f} MiB)")
    with nogil:
        while start < n_samples:
            m = min(plan_data.capacity, n_samples - start)
            beta = 0 if chunk == 0 or (sums != NULL and chunk % GRADIENT_GROUP_CHUNKS == 0) \
                else 1
            batch.first = start
            if use_sparse:
                x = NULL
            else:
                x = &X[start, 0]
            if use_weights:
                weights = &row_weights[start]
            loss_sum = run_batch(plan_data, &hyperparameters.data, <floating*>&params[0],
                                 &grads[0], NULL, NULL, &work[0], x, &Y[start, 0],
                                 weights, <int>m, scale, GRADIENT_ONLY, beta, NULL,
                                 sparse_batch)
            if use_sparse and batch.bad >= 0:
                break
            chunk += 1
            total += loss_sum
            if sums != NULL and (chunk % GRADIENT_GROUP_CHUNKS == 0 or start + m == n_samples
                                 or not isfinite(loss_sum)):
                for i in range(n_params):
                    sums[i] += grads[i]
            if not isfinite(loss_sum):
                break
            start += m
        if sums != NULL:
            for i in range(n_params):
                grads[i] = <floating>sums[i]
    free(sums)
    if use_sparse and batch.bad >= 0:
        raise_bad_sparse_row(sparse, start + batch.bad)
    return total * scale


cdef inline bint predict_chunk(const PlanData* plan, const floating* params, floating* work,
                              const floating* x, int m, floating* out,
                              SparseBatch* sparse) noexcept nogil:
    """out := the network's output for m rows (x, or the sparse batch's rows); False when
    a sparse row's index is out of range (sparse.bad set; out unfinished)."""
    cdef int L = plan.n_layers
    forward_hidden(plan, params, work, x, m, NULL, sparse)
    output_logits(plan, params, work, x, m, out, sparse)
    if sparse != NULL and sparse.bad >= 0:
        return False
    fbp_bias_activation(out, params + plan.bias_offsets[L - 1],
                        workspace(work, plan.preactivation_offsets[L]), m, plan.sizes[L],
                        plan.activations[L - 1])
    return True


cdef Py_ssize_t forward_in_chunks(const PlanData* plan, const HyperparameterData* hyper,
                                  const floating* params, floating* work, const floating* X,
                                  const floating* Y, floating* out, Py_ssize_t n_samples,
                                  SparseBatch* sparse, double* loss_sum) noexcept nogil:
    """predict's and evaluate's pass, in chunks of plan.capacity rows: out := the output
    for the rows of X (NULL: the sparse batch's); with Y (else NULL), loss_sum += the
    summed loss terms. Returns the first row of the chunk where a sparse index was out of
    range (sparse.bad set), else n_samples."""
    cdef int L = plan.n_layers
    cdef Py_ssize_t start = 0, m, n_in = plan.sizes[0], n_out = plan.sizes[L]
    cdef const floating* x = NULL
    while start < n_samples:
        m = min(plan.capacity, n_samples - start)
        if sparse != NULL:
            sparse.first = start
        else:
            x = X + start * n_in
        if Y == NULL:
            if not predict_chunk(plan, params, work, x, <int>m, out + start * n_out, sparse):
                return start
        else:
            forward_hidden(plan, params, work, x, <int>m, NULL, sparse)
            output_logits(plan, params, work, x, <int>m, out + start * n_out, sparse)
            if sparse != NULL and sparse.bad >= 0:
                return start
            loss_sum[0] += fbp_output_layer(
                out + start * n_out, params + plan.bias_offsets[L - 1],
                workspace(work, plan.preactivation_offsets[L]), Y + start * n_out, NULL, NULL,
                m, n_out, plan.activations[L - 1], hyper.loss,
                <floating>hyper.loss_parameter, <floating>1)
        start += m
    return n_samples


def predict(Plan plan, const floating[::1] params, floating[::1] work,
            const floating[:, ::1] X, floating[:, ::1] out, SparseRows sparse=None,
            bint release=True):
    """out := the network's output for X, in chunks of plan.capacity rows. sparse: X is
    this sparse matrix (X itself is not read). release: let other Python threads run
    meanwhile (the GIL released; a pass of a few microseconds may be better off keeping
    it: GilChoice). Returns the pass's own time in seconds."""
    cdef const PlanData* plan_data = &plan.data
    cdef bint use_sparse = sparse is not None
    cdef Py_ssize_t n_samples = sparse.n_rows if use_sparse else X.shape[0], stopped
    check_pass("predict", plan_data, params.shape[0], work.shape[0],
               sparse.n_columns if use_sparse else X.shape[1], False)
    check_targets("predict", plan_data, "out", out.shape[0], out.shape[1], n_samples)
    cdef SparseBatch batch
    cdef SparseBatch* sparse_batch = sparse_input("predict", plan_data, sparse,
                                                  sizeof(floating) == 8, &batch)
    cdef double seconds = 0.0
    if n_samples == 0:
        return seconds
    cdef const floating* x = NULL
    if not use_sparse:   # (if/else: a conditional expression here would drop const)
        x = &X[0, 0]
    if release:
        with nogil:
            stopped = timed_forward(plan_data, &params[0], &work[0], x, &out[0, 0],
                                    n_samples, sparse_batch, &seconds)
    else:
        stopped = timed_forward(plan_data, &params[0], &work[0], x, &out[0, 0], n_samples,
                                sparse_batch, &seconds)
    if stopped < n_samples:
        raise_bad_sparse_row(sparse, stopped + batch.bad)
    return seconds


cdef Py_ssize_t timed_forward(const PlanData* plan, const floating* params, floating* work,
                              const floating* x, floating* out, Py_ssize_t n_samples,
                              SparseBatch* sparse, double* seconds) noexcept nogil:
    """predict's forward_in_chunks; *seconds := its own time (not a wait for the GIL)."""
    cdef double unused = 0.0, started = fbp_seconds()
    cdef Py_ssize_t stopped = forward_in_chunks(plan, NULL, params, work, x, NULL, out,
                                                n_samples, sparse, &unused)
    seconds[0] = fbp_seconds() - started
    return stopped


def evaluate(Plan plan, Hyperparameters hyperparameters, const floating[::1] params,
             floating[::1] work, const floating[:, ::1] X, const floating[:, ::1] Y,
             floating[:, ::1] out, SparseRows sparse=None):
    """out := the network's output for X; returns the mean loss against Y (no backward).
    sparse: X is this sparse matrix (X itself is not read)."""
    cdef const PlanData* plan_data = &plan.data
    cdef bint use_sparse = sparse is not None
    cdef Py_ssize_t n_samples = sparse.n_rows if use_sparse else X.shape[0], stopped
    check_pass("evaluate", plan_data, params.shape[0], work.shape[0],
               sparse.n_columns if use_sparse else X.shape[1], False)
    cdef SparseBatch batch
    cdef SparseBatch* sparse_batch = sparse_input("evaluate", plan_data, sparse,
                                                  sizeof(floating) == 8, &batch)
    check_targets("evaluate", plan_data, "Y", Y.shape[0], Y.shape[1], n_samples)
    check_targets("evaluate", plan_data, "out", out.shape[0], out.shape[1], n_samples)
    cdef double total = 0.0
    if n_samples == 0:
        raise ValueError("evaluate needs at least one row")
    cdef const floating* x = NULL
    if not use_sparse:   # (if/else: a conditional expression here would drop const)
        x = &X[0, 0]
    with nogil:
        stopped = forward_in_chunks(plan_data, &hyperparameters.data, &params[0], &work[0],
                                    x, &Y[0, 0], &out[0, 0], n_samples, sparse_batch, &total)
    if stopped < n_samples:
        raise_bad_sparse_row(sparse, stopped + batch.bad)
    cdef int L = plan_data.n_layers
    return total * loss_normaliser(hyperparameters.data.loss, plan_data.sizes[L]) / n_samples


def output_loss(floating[:, ::1] outputs, const floating[:, ::1] Y, int activation, int loss,
                double loss_parameter, bint want_gradient, row_weights=None):
    """The output kernel on plain arrays: outputs (pre-activation, overwritten with the
    activation) -> (mean loss, gradient of the mean loss w.r.t. the pre-activation); with
    row_weights (one a row), each row's loss terms weighted by it (the mean still over the
    rows)."""
    cdef Py_ssize_t n_rows = outputs.shape[0], n_cols = outputs.shape[1]
    if Y.shape[0] != n_rows or Y.shape[1] != n_cols:
        raise ValueError(f"outputs are {n_rows} x {n_cols} and Y is "
                         f"{Y.shape[0]} x {Y.shape[1]}: they must match")
    cdef floating[::1] weights_view
    cdef const floating* weights_ptr = NULL
    if row_weights is not None:
        weights_view = np.ascontiguousarray(row_weights, dtype=np.float32 if floating is float
                                            else np.float64)
        if weights_view.shape[0] != n_rows:
            raise ValueError(f"row_weights has {weights_view.shape[0]} values for {n_rows} "
                             f"rows")
        if n_rows:
            weights_ptr = &weights_view[0]
    if n_rows == 0 or n_cols == 0:
        raise ValueError("output_loss needs at least one row and one column")
    if not valid_code(activation, ACTIVATION_CODES):
        raise ValueError(f"unknown activation code {activation}")
    check_loss(loss, loss_parameter)
    cdef floating scale = <floating>(loss_normaliser(loss, n_cols) / n_rows)
    dtype = np.float32 if floating is float else np.float64
    grad = np.empty_like(outputs) if want_gradient else None
    cdef floating[:, ::1] grad_view = grad if want_gradient else outputs
    cdef floating* grad_ptr = &grad_view[0, 0] if want_gradient else NULL
    cdef floating[:, ::1] preactivation
    cdef floating* preactivation_ptr = NULL
    if fbp_needs_preactivation(activation):   # gelu and swish: their gradient needs z
        preactivation = np.empty_like(outputs)
        preactivation_ptr = &preactivation[0, 0]
    cdef floating[::1] bias = np.zeros(n_cols, dtype=dtype)
    cdef double total
    with nogil:
        total = fbp_output_layer(&outputs[0, 0], &bias[0], preactivation_ptr, &Y[0, 0],
                                 weights_ptr, grad_ptr, n_rows, n_cols, activation, loss,
                                 <floating>loss_parameter, scale)
    return total * scale, grad


def softmax_logf(const float[::1] x):
    """fbp_logf (csrc/fastbp.h), the log the float32 softmax's loss takes of each row's sum
    of exps, of every element of x: for tests."""
    out = np.empty(x.shape[0], dtype=np.float32)
    cdef float[::1] out_view = out
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out_view[i] = fbp_logf(x[i])
    return out


# all_finite keeps the GIL below this many values: a scan of a few microseconds, for
# which letting other Python threads run costs a hand-off of the GIL each way when they
# are waiting for it (predict's check of one sparse row's 20 outputs had made eight
# threads run at half the calls a second of one).
cdef Py_ssize_t FINITE_HOLD_GIL_VALUES = 16384


def all_finite(const floating[:, ::1] X):
    """True if X holds no NaN or infinity."""
    cdef Py_ssize_t n = X.shape[0] * X.shape[1]
    cdef bint result
    if n == 0:
        return True
    if n < FINITE_HOLD_GIL_VALUES:
        return fbp_all_finite(&X[0, 0], n)
    with nogil:
        result = fbp_all_finite(&X[0, 0], n)
    return result


# ---- fastbp.dask's averaging: the blocks' row-weighted sum and the rule's step ----

cdef enum:
    SUM_SPAN = 1024     # values summed at a time: their partial sums stay in L1


cdef struct WeightedParts:
    # sum over k of data[k] * factors[k], k in order; data[k]: float64 where doubles[k],
    # else float32
    Py_ssize_t count
    const void** data
    bint* doubles
    const double* factors


cdef void sum_span(const WeightedParts* parts, Py_ssize_t begin, Py_ssize_t size,
                   double* total) noexcept nogil:
    """total[0:size] = values begin..begin+size-1 of the weighted sum, each product and
    each addition rounded to float64 in the parts' order, as NumPy's
    p0 * f0 + p1 * f1 + ... (one array operation after another) rounds them. The parts
    are read by memcpy: Dask delivers an array it received at any byte offset, where a
    load as float or double is undefined in C (x86 loads it at full speed either way)."""
    cdef Py_ssize_t k, j
    cdef const char* data
    cdef double factor, wide
    cdef float narrow
    for k in range(parts.count):
        factor = parts.factors[k]
        if parts.doubles[k]:
            data = (<const char*>parts.data[k]) + begin * <Py_ssize_t>sizeof(double)
            if k == 0:
                for j in range(size):
                    memcpy(&wide, data + j * <Py_ssize_t>sizeof(double), sizeof(double))
                    total[j] = wide * factor
            else:
                for j in range(size):
                    memcpy(&wide, data + j * <Py_ssize_t>sizeof(double), sizeof(double))
                    total[j] = total[j] + wide * factor
        else:
            data = (<const char*>parts.data[k]) + begin * <Py_ssize_t>sizeof(float)
            if k == 0:
                for j in range(size):
                    memcpy(&narrow, data + j * <Py_ssize_t>sizeof(float), sizeof(float))
                    total[j] = <double>narrow * factor
            else:
                for j in range(size):
                    memcpy(&narrow, data + j * <Py_ssize_t>sizeof(float), sizeof(float))
                    total[j] = total[j] + <double>narrow * factor


cdef void free_weighted_parts(WeightedParts* parts) noexcept:
    free(parts.data)
    free(parts.doubles)
    parts.data, parts.doubles = NULL, NULL


cdef list weighted_parts(parts, const double[::1] factors, Py_ssize_t n,
                         WeightedParts* out):
    """Fill `out` (its data and doubles allocated here: free_weighted_parts) from `parts`,
    1-D C-contiguous float32 or float64 arrays of n values, one factor each; returns the
    arrays, which must outlive the use of `out`."""
    cdef const double[::1] wide
    cdef const float[::1] narrow
    cdef Py_ssize_t k, count = len(parts)
    if count == 0 or factors.shape[0] != count or n == 0:
        raise ValueError("the weighted sum needs one factor per part, and at least one "
                         "part of at least one value")
    arrays = [np.asarray(part) for part in parts]
    out.count, out.factors = count, &factors[0]
    out.data = <const void**>malloc(count * sizeof(void*))
    out.doubles = <bint*>malloc(count * sizeof(bint))
    if out.data == NULL or out.doubles == NULL:
        free_weighted_parts(out)
        raise MemoryError(f"the weighted sum: no memory for the list of its {count} parts")
    try:
        for k in range(count):
            if arrays[k].ndim != 1 or arrays[k].shape[0] != n:
                raise ValueError(f"the weighted sum's parts must be vectors of {n} values; "
                                 f"part {k} has shape {arrays[k].shape}")
            if arrays[k].dtype == np.float64:
                wide = arrays[k]
                out.data[k], out.doubles[k] = &wide[0], True
            elif arrays[k].dtype == np.float32:
                narrow = arrays[k]
                out.data[k], out.doubles[k] = &narrow[0], False
            else:
                raise TypeError(f"the weighted sum's parts must be float32 or float64; part "
                                f"{k} is {arrays[k].dtype}")
    except BaseException:
        free_weighted_parts(out)
        raise
    return arrays


def weighted_sum(parts, const double[::1] factors, double[::1] total):
    """total = parts[0] * factors[0] + parts[1] * factors[1] + ..., in float64, rounded as
    NumPy rounds it (fastbp.dask's partial sums: a block's parameters times its rows, or
    a partial sum times 1)."""
    cdef WeightedParts summed
    cdef Py_ssize_t n = total.shape[0], begin = 0, size
    arrays = weighted_parts(parts, factors, n, &summed)     # alive while summed is read
    try:
        with nogil:
            while begin < n:
                size = min(<Py_ssize_t>SUM_SPAN, n - begin)
                sum_span(&summed, begin, size, &total[begin])
                begin += size
    finally:
        free_weighted_parts(&summed)


def averaging_step(parts, const double[::1] factors, double rows,
                   const double[::1] weights, const double[::1] buffer,
                   const floating[::1] start, double momentum, double learning_rate,
                   double[::1] new_weights, double[::1] new_buffer, floating[::1] new_start):
    """fastbp.dask's averaging step, each value in one pass (no temporaries, the parts
    summed as weighted_sum sums them): A = (parts . factors) / rows; with block momentum
    (new_buffer not empty) D' = lr (A - S) + m D (D empty: no buffer yet), W' = W + D'
    and S' = W' + m D'; plain averaging (new_buffer empty) W' = A, S' = A. S' is rounded
    to the model's dtype. Returns False when W' or S' is not finite in that dtype (the
    outputs are then partly written)."""
    cdef Py_ssize_t n = weights.shape[0], i, j, begin = 0, size
    cdef bint stepped = new_buffer.shape[0] != 0, has_buffer = buffer.shape[0] != 0
    if (start.shape[0] != n or new_weights.shape[0] != n
            or new_start.shape[0] != n or (stepped and new_buffer.shape[0] != n)
            or (has_buffer and (not stepped or buffer.shape[0] != n)) or not rows > 0):
        raise ValueError("averaging_step: the vectors' sizes or the rows do not match")
    cdef double limit = FLT_MAX if floating is float else DBL_MAX
    cdef double average, step, value
    cdef double total[SUM_SPAN]
    cdef bint finite = True
    cdef WeightedParts summed
    arrays = weighted_parts(parts, factors, n, &summed)     # alive while summed is read
    try:
        with nogil:
            while begin < n:
                size = min(<Py_ssize_t>SUM_SPAN, n - begin)
                sum_span(&summed, begin, size, total)
                for j in range(size):
                    i = begin + j
                    average = total[j] / rows
                    if stepped:
                        step = learning_rate * (average - <double>start[i])
                        if has_buffer:
                            step = step + momentum * buffer[i]
                        if momentum == 0 and learning_rate == 1 and weights[i] == start[i]:
                            # W + (A - S) with S = W is A, without the rounding: block
                            # momentum 0 at rate 1 (one chunk; or given so) is plain averaging
                            value = average
                        else:
                            value = weights[i] + step
                        new_buffer[i] = step
                        new_weights[i] = value
                        finite = finite & (fabs(value) <= limit)
                        value = value + momentum * step
                    else:
                        value = average
                        new_weights[i] = value
                    new_start[i] = <floating>value
                    finite = finite & (fabs(value) <= limit)
                begin += size
    finally:
        free_weighted_parts(&summed)
    return finite


include "_bench.pxi"
include "_workers.pxi"
include "_hidden_split.pxi"
include "_serving.pxi"
include "_row_pool.pxi"


# ---- Ctrl-C (csrc/fastbp.h says why it is safe with fits on several threads) ----

def catch_interrupts():
    """Route SIGINT to the flag that interruptible epochs poll, around a fit on the main
    thread (the only thread Python delivers SIGINT to); pair with release_interrupts()."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("only a fit on the main thread catches SIGINT")
    if fbp_catch_interrupts() != 0:
        raise OSError("could not install the SIGINT handler")


def interrupt_requested():
    """True if SIGINT arrived since the outermost catch_interrupts() (always False off the
    main thread: no fit there is interrupted by SIGINT)."""
    cdef bint requested = fbp_interrupt_requested
    return requested and threading.current_thread() is threading.main_thread()


def release_interrupts():
    """Undo one catch_interrupts(): the outermost restores the previous SIGINT handler and
    clears the flag. True if SIGINT arrived meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("only a fit on the main thread catches SIGINT")
    return fbp_release_interrupts() == 1


# Python runs a signal's handler between the bytecodes of its main thread, so a
# KeyboardInterrupt can land between any two lines of bookkeeping and leave it half done.
# deferred() runs Python code with SIGINT held back and the bookkeeping whole: a Ctrl-C
# between blas_threads' entry and its exit left its pass counted for good (the next pass on
# another count, from any thread, waited for ever), a BLAS on the pass's count, or the
# lock held; between a temporary file's making and its stream, both left behind.
cdef unsigned long main_thread_ident = threading.main_thread().ident


def _forked():
    """In a child: its only thread is the main one; forked from another thread while a fit
    on the main thread held SIGINT, the child has no such fit, so SIGINT goes back to the
    handler the fit found (a Ctrl-C was swallowed there, and the child's next fit stopped
    at once as interrupted)."""
    global main_thread_ident
    cdef unsigned long forking = PyThread_get_thread_ident()
    if forking != main_thread_ident:
        fbp_forget_interrupts()
    main_thread_ident = forking


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)

# A fork waits for the products that may run on several BLAS threads (csrc/fork_guard.h),
# installed after scipy's BLAS (loaded by the cimport above) registered its fork handler.
fbp_install_fork_guard()


def set_pass_blas_threads(int n_threads):
    """The BLAS thread count of the passes in force (fastbp._threads' blas_threads), 0 where
    none runs: products on one thread need not hold a fork back (csrc/fork_guard.h)."""
    fbp_set_pass_blas_threads(n_threads)


def deferred(function, *arguments):
    """function(*arguments) with SIGINT held back, on the main thread (the only one where
    Python raises KeyboardInterrupt from it; elsewhere it only calls): a SIGINT meanwhile
    goes, when it returns, to the handler put back (Python's raises KeyboardInterrupt, a
    caller's own runs), as if it arrived then; within a fit (catch_interrupts), to the
    fit. So what `function` changes is changed whole or not at all, and an exception from
    the handler passes on from here, after it: a caller gives back what `function` took
    (BlasPass). A SIGINT that reached Python's handler before the holding back (its
    handler not yet run) is handled first and its exception raised after the call too
    (at the call's first line it would have skipped a pass's exit), or instead of it
    if the call raises."""
    return _deferred(function, arguments, False)


cdef object _deferred(function, tuple arguments, bint pending_first):
    """deferred(); pending_first: an exception from a handler pending before the holding
    back is raised without making the call (a pass's entry: nothing taken yet; made, it
    could wait for other threads' passes, and the Ctrl-C with it)."""
    cdef bint main = PyThread_get_thread_ident() == main_thread_ident
    cdef bint outermost
    pending = None
    if main:
        fbp_catch_interrupts()          # (should it fail, nothing is held back)
        try:
            PyErr_CheckSignals()
        except BaseException as error:
            pending = error
    try:
        if pending is not None and pending_first:
            raise pending
        result = function(*arguments)
    except BaseException:
        if pending is not None:
            raise pending               # (the call's exception as its __context__)
        raise
    finally:
        if main:
            outermost = fbp_interrupt_depth() == 1
            if fbp_release_interrupts() == 1 and outermost:
                signal.raise_signal(signal.SIGINT)
    if pending is not None:
        raise pending
    return result


cdef class BlasPass:
    """A pass's hold on the BLAS thread count (_threads.blas_threads), as a `with` block:
    enter(taken) takes it and records that in `taken`, leave(taken) gives back what
    `taken` says, each under deferred(). __enter__ and __exit__ are C, so no Python
    bytecode, where a KeyboardInterrupt lands, runs between the hold's taking and the
    block that gives it back (in a generator's `with`, one landing in contextlib's
    __enter__ after the yield left the pass counted for good); an exception as __enter__
    hands over a SIGINT held back gives the hold back first."""
    cdef object enter, leave
    cdef list taken

    def __init__(self, enter, leave):
        self.enter, self.leave, self.taken = enter, leave, []

    def __enter__(self):
        cdef Py_ssize_t before = len(self.taken)    # (an object entered on two threads)
        try:
            _deferred(self.enter, (self.taken,), True)
        except BaseException:
            if len(self.taken) > before:
                deferred(self.leave, self.taken)
            raise
        return self

    def __exit__(self, *exception):
        deferred(self.leave, self.taken)
        return False


class WaitInterrupted(BaseException):
    """A Ctrl-C ended a fit's wait for other threads' passes (hand_over_interrupt): the fit
    stops there, its history marked interrupted (Trainer._train). A BaseException,
    as KeyboardInterrupt is, so that a callback's `except Exception` does not keep it."""


# Fits on the main thread with their SIGINT handler in place (interruptible_fit): a
# Ctrl-C during a wait for other threads' passes goes to the fit, which stops there.
cdef int fits_catching = 0


def interruptible_fit(function, *arguments, **keywords):
    """function(*arguments, **keywords), a fit that returns its History, with SIGINT routed
    to the flag that interruptible epochs poll (catch_interrupts) from the call's start to
    its end, on the main thread: a SIGINT that arrived meanwhile marks the history
    interrupted. Nothing runs between installing the handler and the call, nor between
    the call and putting it back, where a KeyboardInterrupt could leave it installed;
    and no frame is added (the warnings' stacklevels count the caller's)."""
    global fits_catching
    cdef bint main = PyThread_get_thread_ident() == main_thread_ident
    cdef int requested = 0
    if main and fbp_catch_interrupts() != 0:
        raise OSError("could not install the SIGINT handler")
    if main:
        fits_catching += 1
    try:
        history = function(*arguments, **keywords)
    finally:
        if main:
            fits_catching -= 1
            requested = fbp_release_interrupts()
    if requested == 1:
        history.interrupted = True
    return history


def hand_over_interrupt(lock):
    """Within deferred(): a SIGINT held back so far goes now to the handler outside (not
    within a fit, which takes it itself), and holding back goes on after it; an exception
    that handler raises passes on (a wait for other threads' passes ends at a Ctrl-C).
    `lock`, which the caller holds, is let go while the handler runs (a handler that joins
    a thread whose pass ends under it waited for ever). Within a fit on the main thread the
    Ctrl-C is the fit's: WaitInterrupted ends the wait (the fit waited for the other
    thread's pass to end, which could be minutes, and only then stopped)."""
    if PyThread_get_thread_ident() != main_thread_ident or not fbp_interrupt_requested:
        return
    if fits_catching:
        raise WaitInterrupted
    if fbp_interrupt_depth() != 1:
        return
    fbp_release_interrupts()
    lock.release()
    try:
        signal.raise_signal(signal.SIGINT)
    finally:
        fbp_catch_interrupts()
        lock.acquire()
