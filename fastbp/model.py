"""The model: a multilayer perceptron whose parameters live in one flat buffer."""
from __future__ import annotations

import contextlib
import copy
import copyreg
import functools
import numbers
import os
import threading
import time
import warnings
import weakref

import numpy as np

from fastbp import _core, _files, _format, losses
from fastbp._products import ISA_VARIABLE, KERNELS_VARIABLE, PASS_MEASURE_MAX_MULTIPLY_ADDS, \
    PASS_OWN_MARGIN, kernel_mode, product_isas, requested_level, row_bucket
from fastbp._threads import SPLIT_VARIABLE, KeptPassThreads, blas_threads, \
    cgroup_memory_limit, checked_thread_count, forced_split, inside_pass, pass_threads, pinned_threads, \
    small_gemm_kernels
from fastbp._validation import as_inputs, as_row_weights, as_sample_weight, check_finite, \
    check_unmasked, dense_targets, input_arrays, is_sparse, numeric_array, real_number, \
    whole_number

ACTIVATIONS = tuple(_core.ACTIVATION_CODES)
RELU_FAMILY = ("relu", "leaky_relu")
INITS = ("auto", "he", "glorot", "zeros")
DTYPES = ("float32", "float64")
MAX_LAYER_WIDTH = 2**31 - 1     # the compiled core counts a layer's units in a C int
PREDICT_CHUNK_ROWS = 2048   # rows per forward pass in predict/gradients: activations stay in cache
NO_CONTEXT = contextlib.nullcontext()   # (reusable: it holds nothing)
FEW_ROWS_VARIABLE = "FASTBP_FEW_ROWS"
# The variables a predict plan's choices read (few-row and own kernels, the latter's
# instruction set): a kept plan is kept under their values (MLP._kept_plan).
PLAN_SWITCHES = tuple(os.fsencode(name) for name in
                      (FEW_ROWS_VARIABLE, KERNELS_VARIABLE, ISA_VARIABLE, SPLIT_VARIABLE))
KEPT_PLANS = 16             # predict plans past PREDICTOR_ROWS rows kept per model
MAX_CHUNK_PIECES = 4        # claims a chunk of a shared many-chunk predict pass is cut into
# The fewest rows a piece of a shared predict pass takes (whether sharing a call pays at
# all is measured on the calls: _threads.KeptPassThreads): a few kernel row blocks, so
# that a piece is never mostly hand-off.
MIN_PIECE_ROWS = 16


def few_row_kernels() -> str:
    """How predict and evaluate take the products of a pass of up to
    _core.PREDICTOR_ROWS rows, and training steps of up to _core.TRAINING_FEW_ROWS rows:
    "auto" (the few-row kernels of csrc/few_rows.h where they beat BLAS), or, for
    comparing and testing, "always" (FASTBP_FEW_ROWS=1) or "never" (FASTBP_FEW_ROWS=0:
    BLAS, as before the kernels). Read when a model is built or loaded, by each pass that
    is not on the fast path, and by each fit."""
    return {"0": "never", "1": "always"}.get(
        _core.environment_choice(FEW_ROWS_VARIABLE, ("0", "1")), "auto")


def _check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of layer widths, e.g. [784, 128, 10]; "
                        f"got {layer_sizes!r}")
    sizes = tuple(whole_number(size, "every layer size", 1) for size in layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least an input and an output width; got {sizes}")
    if max(sizes) > MAX_LAYER_WIDTH:
        raise ValueError(f"a layer width must be below 2**31; got {max(sizes)}")
    return sizes


def _check_activation_name(name: str) -> None:
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")


def _check_activations(activations, n_layers: int) -> tuple[str, ...]:
    if isinstance(activations, str):
        _check_activation_name(activations)
        if n_layers == 1 and activations.lower() != "identity":
            # a name for the hidden layers, of which there are none: it would be dropped
            # silently (MLP([4, 3], "softmax") had an identity output)
            raise ValueError(f"a single activation name is for the hidden layers, and "
                             f"this network has none; give the output layer's in a list, "
                             f"e.g. [{activations!r}]")
        names = (activations,) * (n_layers - 1) + ("identity",)
    elif hasattr(activations, "__len__") and all(isinstance(a, str) for a in activations):
        names = tuple(activations)
        if len(names) != n_layers:
            raise ValueError(f"activations needs one name per weight layer ({n_layers}) or a "
                             f"single name for the hidden layers; got {len(names)}")
    else:
        raise TypeError(f"activations must be a name or a list of names; got {activations!r}")
    names = tuple(name.lower() for name in names)
    for name in names:
        _check_activation_name(name)
    if "softmax" in names[:-1]:
        raise ValueError("softmax is an output activation; it cannot be used on a hidden layer")
    return names


def _check_dropout(dropout, n_layers: int) -> tuple[float, ...]:
    """One rate per weight layer: a single number applies to every hidden layer's output;
    a list gives one per hidden layer. The output layer never drops."""
    if isinstance(dropout, np.ndarray) and dropout.ndim == 0:
        dropout = dropout[()]                                 # a number, as NumPy's scalars
    if isinstance(dropout, (list, tuple, np.ndarray)):
        rates = [real_number(rate, "dropout") for rate in dropout]
        if len(rates) != n_layers - 1:
            raise ValueError(f"dropout needs one rate per hidden layer ({n_layers - 1}); "
                             f"got {len(rates)}")
    else:
        rates = [real_number(dropout, "dropout")] * (n_layers - 1)
    if any(rate >= 1 for rate in rates):
        raise ValueError(f"dropout rates must be in [0, 1); got {rates}")
    return tuple(rates) + (0.0,)


def check_allocation(n_elements: int, dtype: np.dtype, what: str) -> None:
    """Refuse, before allocating, an array larger than this machine's memory, or than the
    memory a cgroup (a container's limit) allows this process, where its kernel would end
    the process instead of refusing the allocation."""
    n_bytes = int(n_elements) * np.dtype(dtype).itemsize
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 2**63
    if n_bytes > memory:
        raise ValueError(f"{what} would need {_in_bytes(n_bytes)}, more than this "
                         f"machine's {_in_bytes(memory)} of memory")
    allowed = _cgroup_memory()
    if allowed is not None and n_bytes > allowed:
        raise ValueError(f"{what} would need {_in_bytes(n_bytes)}, more than the "
                         f"{_in_bytes(allowed)} of memory this process's cgroup (its "
                         f"container's limit) allows")


_cgroup_bytes = False     # _cgroup_memory(), once known (False: not read yet)


def _cgroup_memory():
    """cgroup_memory_limit() of this process, read once (a limit rarely changes in a
    process's life; a fit checks several arrays)."""
    global _cgroup_bytes
    if _cgroup_bytes is False:
        _cgroup_bytes = cgroup_memory_limit()
    return _cgroup_bytes


def _in_bytes(n_bytes: int) -> str:
    """A size for a person: GiB from 1 GiB up, else MiB."""
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def _check_dtype(dtype) -> np.dtype:
    if dtype is None:           # (NumPy's np.dtype(None) is float64, not the default)
        raise TypeError(f"dtype must be one of {', '.join(DTYPES)}; got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}") from None
    if resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {resolved.name}")
    return np.dtype(resolved.name)    # native byte order, whatever was asked


def kept_chunks(n_rows: int, capacity: int, threads: int, whole_chunks: bool) -> tuple:
    """(workers, rows a claim) for a kept predict pass (MLP._predict_kept) of n_rows rows,
    in chunks of up to `capacity` rows, on up to `threads` threads, such that every row's
    outputs are the bits of one thread, which takes chunks of `capacity` rows. When the
    plan has a product on BLAS (whole_chunks: BLAS's sums may depend on the rows of its
    call), the threads share the chunks whole. Else every product runs in fastbp's own
    kernels, whose sums for a row do not depend on the other rows, and a piece of a chunk
    runs in the chunk's kernels (_core's predict_worker): a lone chunk is cut into up to
    `threads` pieces, and each of several chunks into up to MAX_CHUNK_PIECES equal pieces
    (several claims a thread, so a thread slowed by other work takes fewer), every piece
    of at least MIN_PIECE_ROWS rows but the last of a lone chunk; the chunks' bounds stay
    bounds between pieces, and a last chunk of at most _core.PREDICTOR_ROWS rows (the
    few-row kernels, whose sums may depend on the row count) is one piece."""
    if threads <= 1:
        return 1, capacity
    chunks = -(-n_rows // capacity)
    if chunks > 1:
        last = n_rows - (chunks - 1) * capacity
        piece = capacity
        if not whole_chunks:
            for pieces in range(MAX_CHUNK_PIECES, 1, -1):
                size = capacity // pieces
                if capacity % pieces == 0 and size >= MIN_PIECE_ROWS and (
                        last <= size or last > _core.PREDICTOR_ROWS
                        and (last % size == 0 or last % size >= MIN_PIECE_ROWS)):
                    piece = size
                    break
        return max(1, min(threads, -(-n_rows // piece))), piece
    if whole_chunks or n_rows <= _core.PREDICTOR_ROWS:
        return 1, capacity
    pieces = min(threads, n_rows // MIN_PIECE_ROWS)
    if pieces < 2:
        return 1, capacity
    size = -(-n_rows // pieces)
    return -(-n_rows // size), size


# The models fits hold (MLP._begin_training), with the thread of each fit. A process forked
# while other threads fit has only the forking thread: those fits do not run in the child,
# so its copies of their models are free to train there.
_models_in_training = weakref.WeakKeyDictionary()


def _forget_other_threads_fits() -> None:
    forking_thread = threading.get_ident()
    for model, thread in list(_models_in_training.items()):
        if thread != forking_thread:
            model._training = threading.Lock()
            del _models_in_training[model]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_other_threads_fits)


class MLP:
    """A multilayer perceptron.

    layer_sizes: widths from input to output, e.g. [784, 128, 10].
    activations: one name per weight layer, or one name for every hidden layer (the output
        layer then gets "identity"; with no hidden layer, a list). Names: identity, relu,
        leaky_relu (slope 0.01), sigmoid, tanh, elu, softplus, gelu (exact), swish (SiLU),
        softmax (output layer only); fastbp.model.ACTIVATIONS lists them.
    dtype: "float32" or "float64", for the parameters and all computation.
    init: "auto" (He for the ReLU family, Glorot otherwise), "he", "glorot" or "zeros";
        biases start at zero.
    seed: seeds the initial weights.
    dropout: inverted dropout on the hidden layers' outputs during training (predict never
        drops): one rate for every hidden layer or a list with one per hidden layer.
    """

    def __init__(self, layer_sizes, activations, dtype="float32", init="auto", seed=None,
                 dropout=0.0):
        sizes = _check_layer_sizes(layer_sizes)
        names = _check_activations(activations, len(sizes) - 1)
        dtype = _check_dtype(dtype)
        rates = _check_dropout(dropout, len(sizes) - 1)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid names: {', '.join(INITS)}")
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(
                seed, (numbers.Integral, np.random.SeedSequence))):
            raise TypeError(f"seed must be None or an integer; got {seed!r}")
        if isinstance(seed, numbers.Integral) and seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        self._refuse_while_training()
        # Drawn into a new buffer before the model takes it: refused or failing, __init__
        # leaves a model as it was
        check_allocation(_format.parameter_count(sizes), dtype, "the parameters")
        plan = _core.Plan(sizes, tuple(_core.ACTIVATION_CODES[name] for name in names), 0)
        params = _format.parameter_buffer(plan.n_params, dtype, zeroed=True)
        rng = np.random.default_rng(seed)
        for weights, activation in zip(plan.parameter_views(params)[0], names):
            _initialise(weights, rng, activation, init)
        self._setup(sizes, names, dtype, params, rates)

    def _setup(self, sizes, names, dtype, params, dropout=None):
        """The model made of these parts (params: its parameter vector, used as it is when
        aligned): every check and allocation first, then every attribute, so that a refused
        or failed call leaves a model as it was."""
        self._refuse_while_training()
        codes = tuple(_core.ACTIVATION_CODES[name] for name in names)
        # The switches of predict's and a fit's paths are read here (with few_row_kernels
        # and gil_rule below), so that a value one refuses is an error when a model is
        # made, not only at the first call it applies to (a predict of a few rows reads
        # none of these; the kernels' level is set on import, see kernel_level)
        kernel_mode(), requested_level(), small_gemm_kernels(), forced_split(), pinned_threads()
        _core.lazy_adam_rows(), _core.named_rows_only()
        kernels, gil_rule = few_row_kernels(), _core.gil_rule()
        plan = _core.Plan(sizes, codes, 0)
        if params.ctypes.data % _format.PARAMETER_ALIGNMENT:
            aligned = _format.parameter_buffer(len(params), params.dtype)
            aligned[...] = params
            params = aligned
        weights, biases = plan.parameter_views(params)
        # predict's fast path for a few rows: plan and workspaces kept between calls
        predictor = None if kernels == "never" else \
            _core.Predictor(sizes, codes, params, always=kernels == "always", gil=gil_rule)
        self._layer_sizes = sizes
        self._activations = names
        self._dropout = dropout or (0.0,) * len(names)
        self._codes = codes
        self._plan = plan
        self._params = params
        self._weights, self._biases = weights, biases
        self._predictor = predictor
        # and past it, on one thread: the general path's plans, kept by chunk rows and the
        # switches they were chosen under (_kept_plan), and the forward passes' of the
        # general path (_forward_pass); new parameters or dtype, new dicts
        self._kept_plans = {}
        self._kept_pass_plans = {}
        # whether the general path's one-thread passes release the GIL, chosen on the
        # calls as the fast path's are (_core.GilChoice), per kind of call: sparse or
        # not, and rows to a power of two (eight threads on one sparse row each ran at
        # 0.4x of one thread's calls a second with the GIL released around its 3 us pass)
        self._gil_rule = gil_rule
        self._gil_choices = {}
        # Held by a fit: a second fit of the same model from another thread is refused.
        self._training = threading.Lock()

    def _refuse_while_training(self) -> None:
        """A RuntimeError while a fit holds the model (a callback's __init__ on the model
        it is given: the fit would go on with its plan over the new parameters, and end on
        a lock it no longer holds)."""
        training = self.__dict__.get("_training")
        if training is not None and training.locked():
            raise RuntimeError("this model is being trained: it cannot be made anew (by "
                               "__init__) until the fit ends")

    def _begin_training(self) -> bool:
        """Hold the model for a fit on this thread; False if a fit holds it already."""
        if not self._training.acquire(blocking=False):
            return False
        _models_in_training[self] = threading.get_ident()
        return True

    def _trained_here(self) -> bool:
        """Whether a fit on this thread holds the model."""
        return _models_in_training.get(self) == threading.get_ident()

    def _end_training(self) -> None:
        _models_in_training.pop(self, None)
        self._training.release()

    # ---- what the user reads ----
    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self._layer_sizes

    @property
    def activations(self) -> tuple[str, ...]:
        return self._activations

    @property
    def dtype(self) -> np.dtype:
        return self._params.dtype

    @property
    def dropout(self) -> tuple[float, ...]:
        """The dropout rate after each hidden layer (training only)."""
        return self._dropout[:-1]

    @property
    def n_params(self) -> int:
        return self._params.size

    @property
    def weights(self) -> list[np.ndarray]:
        """The live weight matrices, (n_in, n_out) each: writing into them changes the model.
        (New views of the parameters at each call: setting a view's shape, dtype, strides or
        flags changes that view, never the ones the model writes through.)"""
        return [weights.view() for weights in self._weights]

    @weights.setter
    def weights(self, values):
        self._assign(values, self._weights, "weights")

    @property
    def biases(self) -> list[np.ndarray]:
        """The live bias vectors, (n_out,) each (new views, as weights)."""
        return [biases.view() for biases in self._biases]

    @biases.setter
    def biases(self, values):
        self._assign(values, self._biases, "biases")

    def _assign(self, values, targets, name):
        """Copy new parameter arrays in, all or none."""
        if isinstance(values, np.ndarray) or not hasattr(values, "__len__"):
            raise TypeError(f"{name} must be a list of {len(targets)} arrays")
        if len(values) != len(targets):
            raise ValueError(f"{name} needs {len(targets)} arrays; got {len(values)}")
        checked = []
        for i, (value, target) in enumerate(zip(values, targets)):
            array = numeric_array(value, f"{name}[{i}]")
            if array.shape != target.shape:
                raise ValueError(f"{name}[{i}] must have shape {target.shape}; got {array.shape}")
            # Always a copy: a new value may view the model's own parameters
            # (model.weights = model.weights[::-1]), which the writes below would change.
            with np.errstate(over="ignore"):
                array = np.array(array, dtype=self.dtype, order="C", copy=True).reshape(1, -1)
            check_finite(array, f"{name}[{i}]")
            checked.append(array)
        for array, target in zip(checked, targets):
            target[...] = array.reshape(target.shape)

    def parameter_vector(self, dtype=None) -> np.ndarray:
        """A copy of every parameter in one flat vector (layer by layer: W then b), in
        `dtype` (default: the model's); set_parameter_vector writes one back."""
        return self._params.astype(self.dtype if dtype is None else dtype, copy=True)

    def set_parameter_vector(self, vector) -> None:
        """Write a flat vector of n_params finite values (as parameter_vector returns) into
        the parameters, converted to the model's dtype; all or nothing."""
        array = numeric_array(vector, "vector")
        if array.shape != self._params.shape:
            raise ValueError(f"vector must have shape {self._params.shape}; got {array.shape}")
        with np.errstate(over="ignore"):   # a copy: the vector may view the parameters
            array = np.array(array, dtype=self.dtype, copy=True).reshape(1, -1)
        check_finite(array, "vector")
        np.copyto(self._params, array.reshape(-1))

    def __repr__(self) -> str:
        dropout = f", dropout={list(self.dropout)}" if any(self.dropout) else ""
        return (f"MLP(layer_sizes={list(self._layer_sizes)}, "
                f"activations={list(self._activations)}, dtype={self.dtype.name!r}{dropout})")

    # ---- computing ----
    def _inputs(self, X):
        """X checked: a dense array, or a _core.SparseRows for a scipy.sparse X."""
        return as_inputs(X, "X", self.dtype, self._layer_sizes[0])

    def _chunk_rows(self, n_rows: int, sparse=False) -> int:
        """Rows a predict/gradients pass takes at once: up to 2048, and a workspace of
        at most about 64 MiB however wide the layers (a sparse X's width takes none)."""
        widths = self._layer_sizes[1:] if sparse else self._layer_sizes
        bytes_per_row = 4 * self.dtype.itemsize * sum(widths)
        return max(1, min(n_rows, PREDICT_CHUNK_ROWS, (64 << 20) // bytes_per_row))

    def _workspace(self, n_rows: int, dropout=None, with_gradient=False, n_threads=None,
                   few_rows=False, sparse=False, fixed_rows=True, copies=1,
                   allocate=True, repeated=False):
        """A plan and its workspace for up to n_rows rows a pass (chunks for predict).

        A pass known to run on one BLAS thread cuts its products into calls small enough
        for the BLAS's small-matrix kernels, where it has them (docs/performance.md).
        Products of a few rows run in the few-row kernels as few_row_kernels() says: up
        to _core.PREDICTOR_ROWS rows for forward-only passes (few_rows: predict,
        evaluate; the same as on the fast path), up to _core.TRAINING_FEW_ROWS for passes
        with a backward (training steps, gradients).
        sparse: for a sparse X (no dense batch of inputs is kept). fixed_rows: every use
        of the plan takes n_rows (a fit's batch size), so FASTBP_KERNELS=auto measures
        its shapes (fastbp._products); else the chunk follows the call's rows: a predict
        or evaluate pass of more than _core.PREDICTOR_ROWS rows takes the choice measured
        at its row_bucket (once per bucket and shape, products up to
        PASS_MEASURE_MAX_MULTIPLY_ADDS), a gradients pass stays on BLAS unless the own
        kernels are forced or it is `repeated` (run many times on the same rows: then
        measured at its row_bucket as predict's). copies: workspaces side by side (one per
        thread of predict_on_workers); allocate=False: the plan only (an empty
        workspace), for a plan kept with the model."""
        small_chunks = n_threads == 1 and small_gemm_kernels()
        kernels = few_row_kernels()
        limit = _core.PREDICTOR_ROWS if few_rows else _core.TRAINING_FEW_ROWS

        def plan_for(rows):
            return _core.Plan(self._layer_sizes, self._codes, rows, dropout, with_gradient,
                              small_chunks, 0 if kernels == "never" else limit,
                              kernels == "always", sparse_input=sparse)
        plan = plan_for(n_rows)
        # the allocation is checked before any timing of the products
        check_allocation(plan.work_size * copies, self.dtype, "the workspace")
        measured_rows = n_rows if fixed_rows else row_bucket(n_rows)
        # the bucket's own plan (offsets only): BLAS timed in the calls it would make
        like = plan if measured_rows == n_rows else plan_for(measured_rows)
        plan.set_product_isas(product_isas(
            self._layer_sizes, measured_rows, self.dtype, n_threads == 1, not few_rows,
            sparse, like.gemm_chunks,
            measure=fixed_rows or repeated or (few_rows and n_rows > _core.PREDICTOR_ROWS),
            largest=None if fixed_rows else PASS_MEASURE_MAX_MULTIPLY_ADDS,
            # a forward pass's lone chunk is shared among threads only without BLAS
            margin=PASS_OWN_MARGIN if few_rows and not fixed_rows else 1.0,
            # timed as a kept predict pass checks its inputs (on the first product): every
            # forward pass of a shape (predict's other paths, evaluate, validation) takes
            # that one choice, so they give predict's outputs bit for bit
            checks_inputs=few_rows and not fixed_rows))
        return plan, np.empty(plan.work_size * copies if allocate else 0, dtype=self.dtype)

    def _pass_plan(self, n_samples: int, backward=False, n_threads=None, sparse=False,
                   repeated=False) -> tuple:
        """(plan, workspace, BLAS threads) of a pass over n_samples rows in chunks (made
        for the call: gradients' backward pass; _forward_pass keeps the forward passes'),
        run under n_threads BLAS threads, or the count chosen for a chunk.
        sparse: X is a sparse matrix; its first layer runs in the core's own loops (no
        BLAS), so the count is chosen for the layers after it. repeated: the caller runs
        the pass many times on these rows (_gradient_pass), so a gradients pass's products
        are measured too (at the chunk's row_bucket, once per bucket and shape: the folds
        of a cross-validation share it), where a one-off one stays on BLAS."""
        rows = self._chunk_rows(n_samples, sparse)
        n_threads = checked_thread_count(n_threads)
        if n_threads is None:
            n_threads = self._pass_threads(rows, backward, sparse)
        plan, work = self._workspace(rows, n_threads=n_threads, few_rows=not backward,
                                     sparse=sparse, fixed_rows=False, repeated=repeated)
        return plan, work, n_threads

    def _core_inputs(self, X) -> tuple:
        """(dense X, SparseRows or None): the core's X arguments for a checked X."""
        if isinstance(X, _core.SparseRows):
            return np.empty((0, 0), dtype=self.dtype), X
        return X, None

    def predict(self, X, n_threads=None, out=None) -> np.ndarray:
        """The output layer's activations for the rows of X: (n_samples, n_outputs).

        n_threads: threads for the pass (rows shared among them, or BLAS's threads where
            the rows cannot be shared); None: chosen as below, within the caller's limits.
        out: a C-contiguous, writable array of shape (n_samples, n_outputs) and the model's
            dtype, not overlapping X or the parameters, to write the outputs into (and
            return); its contents are unspecified if the call raises.

        A few rows (up to 64) of a C-contiguous X of the model's dtype take a fast path:
        checked in compiled code, a plan and workspace kept with the model, products in
        the few-row kernels, no BLAS call, 8 rows or more shared among threads where
        the calls measure that it pays (docs/serving.md). Past 64 rows, the same X
        takes the general path's pass with a plan kept with the model (_predict_kept): the
        same bits without the set-up, its rows shared among threads where they can be
        without changing a bit, the default count chosen on the calls themselves. Any
        other dense X (a list, another dtype or layout) is converted first and then takes
        the same paths, with the same bits. Safe from many threads at once.
        X may be a scipy.sparse matrix or array (CSR read in place, other formats converted
        once): the first layer then runs on its stored values, never densified.
        """
        if n_threads is not None:
            n_threads = checked_thread_count(n_threads)
        checked = False
        check_unmasked(X, "X")      # (the paths below read an ndarray subclass as it is)
        if self._predictor is not None and not is_sparse(X):
            result = self._predictor(X, out, n_threads)
            if result is None and not (isinstance(X, np.ndarray) and X.ndim == 2
                                       and X.dtype == self.dtype and X.flags.c_contiguous
                                       and X.flags.aligned):
                # A list, another dtype or layout: converted (and checked) once, so that it
                # takes the path, and gives the bits, of the array it makes (out checked
                # against the caller's X first: the copy overlaps nothing)
                self._refuse_overlap(out, X)
                X, checked = self._inputs(X), True
                result = self._predictor(X, out, n_threads)
            if result is None and X.shape[0] > _core.PREDICTOR_ROWS:
                result = self._predict_kept(X, n_threads, out)
            if result is not None:
                return result
        if not checked:
            self._refuse_overlap(out, X)
            X = self._inputs(X)
        if out is None:
            out = np.empty((X.shape[0], self._layer_sizes[-1]), dtype=self.dtype)
        else:
            self._check_out(out, X)
        dense, sparse = self._core_inputs(X)
        workers = self._predict_workers(X.shape[0], n_threads, sparse is not None)
        if workers > 1:
            plan, work = self._workspace(self._chunk_rows(X.shape[0]), n_threads=1,
                                         few_rows=True, fixed_rows=False, copies=workers)
            with blas_threads(1):
                _core.predict_on_workers(plan, self._params, work, dense, out, workers)
        else:
            plan, work, context = self._forward_pass(X.shape[0], n_threads, sparse is not None)
            gil = self._gil_choice(sparse is not None, X.shape[0])
            with context:
                seconds = _core.predict(plan, self._params, work, dense, out, sparse,
                                        gil.releases())
            gil.passed(seconds)
        self._check_outputs(out)
        return out

    def _check_outputs(self, out):
        """Refuse outputs that overflowed (predict's, evaluate's) rather than return them."""
        if not _core.all_finite(out):
            if not _core.all_finite(self._params[None, :]):     # (not the inputs' fault)
                raise ValueError("the model's parameters are not all finite (NaN or "
                                 "infinity, written into its weights or biases or loaded "
                                 "so), and neither are its outputs")
            raise ValueError(f"the model's outputs overflow {self.dtype.name} for these inputs "
                             f"(they would be infinite or NaN)")

    def _predict_kept(self, X, n_threads, out):
        """predict past PREDICTOR_ROWS rows with a plan kept with the model: the general
        path's pass, bits and all, without its set-up, on one thread or shared among
        threads as kept_chunks says (or None where the general path must take the call: X
        or out refused by the Predictor; a count of threads these chunks cannot use, or
        a default above one thread for a single chunk with a product on BLAS, which the
        general path gives BLAS's threads; more than one thread under FASTBP_SPLIT=blas).
        By default the count is chosen on the calls themselves (_threads.KeptPassThreads,
        kept with the plan)."""
        n_rows = X.shape[0]
        rows = self._chunk_rows(n_rows)
        plan, calls_blas, choice = self._kept_plan(rows)
        if choice is None and n_threads != 1:
            return None        # FASTBP_SPLIT=blas: the general path's pass, on BLAS's threads
        turn = None
        if n_threads is not None:
            threads = n_threads
        elif calls_blas and n_rows <= rows:
            if self._pass_threads(rows) != 1:
                return None
            threads = 1
        else:
            threads, turn = choice.threads()
        workers, chunk_rows = kept_chunks(n_rows, rows, threads, calls_blas)
        if n_threads is not None and n_threads > 1 and workers == 1:
            return None
        started = time.perf_counter() if turn is not None else 0.0
        if calls_blas:
            with blas_threads(1):
                result = self._predictor.run(plan, X, out, workers, chunk_rows)
        else:
            result = self._predictor.run(plan, X, out, workers, chunk_rows)
        if turn is not None and result is not None:
            choice.record(turn, time.perf_counter() - started, n_rows)
        return result

    def _gil_choice(self, sparse: bool, n_rows: int):
        """The GilChoice of the general path's one-thread calls on n_rows rows, sparse or
        not: one per power of two of rows, whose passes take about as long."""
        key = (sparse, n_rows.bit_length())
        choice = self._gil_choices.get(key)
        if choice is None:
            choice = self._gil_choices.setdefault(key, _core.GilChoice(self._gil_rule))
        return choice

    def _kept_plan(self, rows: int):
        """(plan, whether it calls BLAS, its KeptPassThreads) for predict's chunks of
        `rows` rows: made as _forward_pass makes it, then kept with the model (no
        KeptPassThreads under FASTBP_SPLIT=blas: such a plan runs one thread only). The
        key holds what the plan's choices read from the environment, so changing a switch
        makes a new plan; at most KEPT_PLANS are kept (the oldest dropped first)."""
        key = (rows,) + _core.environment_values(PLAN_SWITCHES)
        kept = self._kept_plans.get(key)
        if kept is None:
            plan, _ = self._workspace(rows, n_threads=1, few_rows=True, fixed_rows=False,
                                      allocate=False)
            forward = plan.product_isas[self.dtype.name]
            # short passes: the few-row path's line (handing pieces over and asking the
            # limits cost microseconds; 20-64-64-1 gains from 256 rows, about 20 us)
            threads = None if forced_split() == "blas" else \
                KeptPassThreads(min_seconds=_core.predictor_share_min_seconds())
            kept = self._keep("_kept_plans", key,
                              (plan, not all(isas[0] for isas in forward), threads))
        return kept

    def _keep(self, name, key, kept):
        """Keep `kept` under `key` in the dict attribute `name` (_kept_plans,
        _kept_pass_plans: at most KEPT_PLANS each, the oldest dropped first); returns it.
        A plan made inside another pass (a fit's validation, a callback's predict) is not
        kept: its product kernels are those already measured, BLAS for the others
        (_products.product_isas), a choice for that call only."""
        if inside_pass():
            return kept
        plans = dict(getattr(self, name))    # a copy: other threads read the dict
        while len(plans) >= KEPT_PLANS:
            plans.pop(next(iter(plans)))
        plans[key] = kept
        setattr(self, name, plans)
        return kept

    def _forward_pass(self, n_samples: int, n_threads=None, sparse=False) -> tuple:
        """(plan, workspace, context to run it under) for a forward pass (predict,
        evaluate) over n_samples rows in chunks, on the threads _pass_plan takes. The plan
        is kept with the model (_kept_pass_plan); the context sets BLAS's thread count
        only where the pass calls BLAS (Plan.forward_calls_blas). A default pass whose
        products all run in the few-row kernels (and a sparse X's product) takes no thread
        choice: it runs the same kernels on any count. Few sparse rows through small
        layers are such a pass, and their set-up had been most of the call."""
        rows = self._chunk_rows(n_samples, sparse)
        n_threads = checked_thread_count(n_threads)
        double = self.dtype == np.float64
        plan = None
        if n_threads is None:
            plan = self._kept_pass_plan(rows, 1, sparse)
            if plan.forward_calls_blas(n_samples, double, or_own=True):
                n_threads, plan = self._pass_threads(rows, False, sparse), None
            else:
                n_threads = 1
        if plan is None:
            plan = self._kept_pass_plan(rows, n_threads, sparse)
        work = np.empty(plan.work_size, dtype=self.dtype)
        if plan.forward_calls_blas(n_samples, double):
            return plan, work, blas_threads(n_threads)
        return plan, work, NO_CONTEXT

    def _kept_fit_plan(self, batch_size: int, with_gradient: bool, n_threads: int,
                       sparse: bool):
        """The plan of a fit's epochs (Trainer's _CompiledEpoch: batches of batch_size
        rows, the model's dropout, room for a gradient or not, n_threads BLAS threads,
        sparse X or dense), made once and kept: a fit of one row made it anew at each
        partial_fit."""
        return self._kept_workspace_plan(
            ("fit", batch_size, tuple(self._dropout), with_gradient, n_threads == 1, sparse),
            batch_size, self._dropout, with_gradient, n_threads, sparse=sparse)

    def _kept_pass_plan(self, rows: int, n_threads: int, sparse: bool):
        """_forward_pass's plan for chunks of `rows` rows on n_threads BLAS threads, made
        once and kept."""
        return self._kept_workspace_plan(("pass", rows, n_threads == 1, sparse), rows,
                                         n_threads=n_threads, few_rows=True, sparse=sparse,
                                         fixed_rows=False)

    def _kept_workspace_plan(self, key: tuple, *arguments, **options):
        """The plan of _workspace(*arguments, **options), made on first use and kept in
        _kept_pass_plans under `key` (what of the arguments the plan depends on: a thread
        count only as one or more) and the switches its choices read."""
        key += (small_gemm_kernels(),) + _core.environment_values(PLAN_SWITCHES)
        plan = self._kept_pass_plans.get(key)
        if plan is None:
            plan = self._keep("_kept_pass_plans", key,
                              self._workspace(*arguments, allocate=False, **options)[0])
        return plan

    def _predict_workers(self, n_rows: int, n_threads, sparse: bool) -> int:
        """How many threads share predict's chunks (each chunk whole, on one BLAS thread;
        1: the chunks run in turn, on the pass's BLAS threads). A dense pass of at least
        two chunks on T > 1 threads splits its chunks: they are independent, so no thread
        waits on another until the end, and each runs the one-thread pass's calls (the
        same output bit for bit). FASTBP_SPLIT=blas keeps it on BLAS threads."""
        if sparse or forced_split() == "blas":
            return 1
        rows = self._chunk_rows(n_rows)
        chunks = -(-n_rows // rows)
        if chunks < 2:
            return 1
        threads = checked_thread_count(n_threads) or self._pass_threads(rows, sharing=True)
        return min(threads, chunks)

    def _pass_threads(self, rows: int, backward=False, sparse=False, sharing=False) -> int:
        """The default thread count of a pass in chunks of `rows` rows, measured on this
        network (_threads.pass_threads): its BLAS threads, or with sharing, the threads
        that may share its whole chunks. A sparse X's first layer runs in the core's own
        loops, so the layers after it decide."""
        first = 1 if sparse else 0
        if len(self._layer_sizes) - first < 2:
            return 1      # a sparse X through a single layer: no BLAS call at all
        blas, sharers = pass_threads(self._layer_sizes[first:], self._activations[first:],
                                     rows, self.dtype, backward)
        return sharers if sharing else blas

    def _check_out(self, out, X) -> None:
        """predict's out: an array it can write the outputs of X's rows into."""
        shape = (X.shape[0], self._layer_sizes[-1])
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array of shape {shape} and dtype "
                            f"{self.dtype.name}; got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape} (one row per row of X, one column "
                             f"per output); got {out.shape}")
        if out.dtype != self.dtype:
            raise TypeError(f"out must have the model's dtype {self.dtype.name}; got "
                            f"{out.dtype}")
        if not (out.flags.c_contiguous and out.flags.aligned and out.flags.writeable):
            raise ValueError("out must be C-contiguous, aligned and writable (e.g. np.empty "
                             "of the right shape and dtype)")
        if any(np.may_share_memory(out, array) for array in input_arrays(X)) \
                or np.may_share_memory(out, self._params):
            raise ValueError("out must not overlap X or the model's parameters")

    @staticmethod
    def _refuse_overlap(out, X) -> None:
        """out that overlaps the caller's X (before X is converted, where the copy would
        overlap nothing and out would write into the caller's array): refused."""
        if isinstance(out, np.ndarray) and any(np.may_share_memory(out, array)
                                               for array in input_arrays(X)):
            raise ValueError("out must not overlap X or the model's parameters")

    def evaluate(self, X, Y, loss, n_threads=None) -> float:
        """The mean loss over the rows of X (computed as training computes it); X may be
        a scipy.sparse matrix or array, as for predict."""
        loss = self._loss(loss)
        X = self._inputs(X)
        targets = self._dense_targets(Y, loss, X.shape[0])
        value, outputs = self._evaluate(X, targets, loss, n_threads)
        self._check_outputs(outputs)     # as predict: no loss of outputs that overflowed
        if not np.isfinite(value):       # (a saturated sigmoid's output of an infinite z)
            raise ValueError(f"the loss is not finite for these inputs: the model's values "
                             f"overflow {self.dtype.name} (they would be infinite or NaN)")
        return value

    def _loss(self, loss):
        """The loss named or given, its parameter checked for this model's dtype and
        output layer (as a fit checks it)."""
        loss = losses.get(loss)
        loss.check_dtype(self.dtype)
        loss.check_output(self._activations[-1])
        return loss

    def _dense_targets(self, Y, loss, n_rows):
        return dense_targets(Y, loss, self._layer_sizes[-1], n_rows, self.dtype)

    def _evaluate(self, X, targets, loss, n_threads=None):
        """(mean loss, predictions) for checked arrays."""
        out = np.empty((X.shape[0], self._layer_sizes[-1]), dtype=self.dtype)
        dense, sparse = self._core_inputs(X)
        plan, work, context = self._forward_pass(X.shape[0], n_threads, sparse is not None)
        with context:
            value = _core.evaluate(plan, _core.Hyperparameters(loss.code, loss.parameter),
                                   self._params, work, dense, targets, out, sparse)
        return float(value), out

    def gradients(self, X, Y, loss, n_threads=None, sample_weight=None):
        """One forward and one backward pass over all rows of X.

        Returns (loss_value, grad_weights, grad_biases): the mean loss and its exact
        gradient with respect to every weight matrix and bias vector. X may be a
        scipy.sparse matrix or array, as for predict. sample_weight (one finite weight
        >= 0 a row, not all 0, checked as Trainer.fit checks it): the weighted mean
        sum w_i l_i / sum w_i instead, the loss a fit with these weights descends.
        """
        run = self._gradient_pass(X, Y, loss, n_threads, sample_weight)
        grads = np.empty_like(self._params)
        value = run(grads)
        if not np.isfinite(value):
            grads.fill(np.nan)
            warnings.warn("the loss is not finite: the weights have diverged, or the "
                          "outputs overflow for these inputs; gradients are NaN",
                          RuntimeWarning, stacklevel=2)
        elif not _core.all_finite(grads.reshape(1, -1)):
            warnings.warn(f"the gradients overflow {self.dtype.name} (the loss is finite): "
                          f"some are infinite or NaN", RuntimeWarning, stacklevel=2)
        grad_weights, grad_biases = self._plan.parameter_views(grads)
        return float(value), grad_weights, grad_biases

    def _gradient_pass(self, X, Y, loss, n_threads=None, sample_weight=None,
                       repeated=False):
        """gradients' pass with its arguments checked and its plan made once: returns
        run(grads) -> the mean loss at the current parameters, its gradient written into
        grads (n_params values of the model's dtype, in parameter_vector's order).
        repeated: the caller runs it many times on these rows (the scikit-learn
        estimators' L-BFGS), which then pay the checks, the plan and the thread choice
        once, and whose products are measured at these rows' bucket (_pass_plan). run
        reads X, Y and sample_weight as they are when it runs: a caller must not change
        them."""
        loss = self._loss(loss)
        X = self._inputs(X)
        targets = self._dense_targets(Y, loss, X.shape[0])
        weights = None if sample_weight is None else \
            as_row_weights(as_sample_weight(sample_weight, X.shape[0]), self.dtype)
        dense, sparse = self._core_inputs(X)
        plan, work, n_threads = self._pass_plan(X.shape[0], True, n_threads,
                                                sparse is not None, repeated)
        check_allocation(_core.gradient_sums(plan, X.shape[0], self.dtype == np.float32),
                         np.float64, "the gradient's float64 sums")
        hyperparameters = _core.Hyperparameters(loss.code, loss.parameter)

        def run(grads) -> float:
            with blas_threads(n_threads):
                return float(_core.gradients(plan, hyperparameters, self._params, grads,
                                             work, dense, targets, sparse, weights))
        return run

    # ---- saving ----
    def save(self, path) -> None:
        """Write the model to exactly `path` (format: docs/file-format.md), atomically; a
        replaced file keeps its mode, a FIFO or character device is written into
        (fastbp/_files.py)."""
        _files.write_file(path, self._write_to)

    def to_bytes(self) -> bytes:
        return _format.encode(self._layer_sizes, self._activations, self._params, self._dropout)

    def _write_to(self, stream) -> None:
        """to_bytes's bytes written to a binary stream without a copy of the parameters."""
        _format.write(stream, self._layer_sizes, self._activations, self._params,
                      self._dropout)

    @classmethod
    def from_bytes(cls, data: bytes) -> "MLP":
        return _from_parts(*_format.decode(data), cls=cls)

    def to_onnx(self, path, metadata=None) -> None:
        """Write the model as an ONNX graph to `path` (needs the `onnx` extra); metadata:
        more metadata_props, str to str (fastbp.export.to_onnx)."""
        from fastbp.export import to_onnx
        to_onnx(self, path, metadata)

    # Copies and pickles: the model's bytes, its class (a subclass stays one) and the
    # attributes a caller or a subclass set on it (not those _setup makes: plans, caches)
    def __reduce__(self):       # (the attributes as state: set after the model is made)
        return (type(self).from_bytes, (self.to_bytes(),), self._added_attributes() or None)

    def __setstate__(self, attributes: dict) -> None:
        for name, value in attributes.items():
            object.__setattr__(self, name, value)       # (a subclass's __slots__ too)

    def __copy__(self):
        model = type(self).from_bytes(self.to_bytes())
        model.__setstate__(self._added_attributes())
        return model

    def __deepcopy__(self, memo):
        model = type(self).from_bytes(self.to_bytes())
        memo[id(self)] = model
        model.__setstate__(copy.deepcopy(self._added_attributes(), memo))
        return model

    def _added_attributes(self) -> dict:
        """The attributes a caller or a subclass set: in the instance's dict, and in a
        subclass's __slots__ (vars() alone dropped those)."""
        added = {name: value for name, value in vars(self).items()
                 if name not in _setup_attributes()}
        for name in copyreg._slotnames(type(self)):     # (as pickle finds them: mangled)
            if hasattr(self, name):
                added[name] = getattr(self, name)
        return added


@functools.cache
def _setup_attributes() -> frozenset:
    """The names of the attributes _setup makes (every model's own)."""
    return frozenset(vars(MLP([1, 1], ["identity"])))


def _from_parts(layer_sizes, activations, params, dropout, cls=None) -> MLP:
    """A model (of class `cls`, MLP by default) from decoded parts, checked as the
    constructor checks its arguments."""
    model = (cls or MLP).__new__(cls or MLP)
    sizes = _check_layer_sizes(layer_sizes)
    names = _check_activations(list(activations), len(sizes) - 1)
    rates = _check_dropout(list(dropout[:-1]), len(sizes) - 1)
    model._setup(sizes, names, _check_dtype(params.dtype), params, rates)
    return model


def load(path) -> MLP:
    """Read a model written by MLP.save, from its path (str, bytes or os.PathLike)."""
    if isinstance(path, (bytes, bytearray, memoryview)) and \
            bytes(path[:len(_format.MAGIC)]) == _format.MAGIC:
        raise TypeError("load reads a model from its path; these are a model's bytes: "
                        "fastbp.MLP.from_bytes(data) reads them")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"load reads a model from its path (str, bytes or os.PathLike); got "
                        f"a {type(path).__name__}"
                        + (" (for a file object: fastbp.MLP.from_bytes(stream.read()))"
                           if hasattr(path, "read") else ""))
    return _from_parts(*_format.read_file(path))


def _initialise(weights, rng, activation, init):
    """Fill a weight matrix in place; drawn in float64 2^20 values at a time in row-major
    order (the same values as one draw), so building a model needs little more than its
    parameters, however wide a layer."""
    n_in, n_out = weights.shape
    if init == "zeros":
        weights[...] = 0
        return
    he = init == "he" or (init == "auto" and activation in RELU_FAMILY)
    limit = np.sqrt(6.0 / (n_in + n_out))   # Glorot (Xavier) uniform
    flat = weights.view()
    flat.shape = (-1,)          # (a view of the row-major values: never a copy)
    for start in range(0, flat.size, 1 << 20):
        size = min(1 << 20, flat.size - start)
        flat[start:start + size] = rng.normal(0.0, np.sqrt(2.0 / n_in), size=size) \
            if he else rng.uniform(-limit, limit, size=size)
