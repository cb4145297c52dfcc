"""The trainer: mini-batch gradient descent, one compiled call per epoch.

Python runs only between epochs: the learning-rate schedule, validation, metrics,
callbacks, progress and the time budget. Inside an epoch everything (gather, forward,
loss, backward, optimizer step, dropout) is one nogil call into fastbp._core.
"""
from __future__ import annotations

import contextlib
import copy
import numbers
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fastbp import _core, losses, metrics as metrics_module, optimizers, schedules
from fastbp._threads import BY_ROWS, blas_threads, checked_thread_count, \
    fit_threads, row_workspace, sparse_fit_threads, split_flags, threads_record
from fastbp.callbacks import ProgressBar, checked_callbacks
from fastbp._validation import as_inputs, as_row_weights, as_sample_weight, as_targets, \
    check_fits_dtype, check_in_dtype, check_verbose, dense_targets, distinct_rows, one_hot, \
    real_number, unit_scaled, unshared, whole_number
from fastbp.model import MLP, check_allocation
from fastbp._products import row_bucket


def trained_weights(factors: np.ndarray, rows=None) -> np.ndarray:
    """The row weights of a fit from their factors (_weight_factors' columns, of the rows
    left after validation_split): their product over the rows trained on (all, or `rows`;
    the others weigh 0), each factor first scaled by the power of two that puts its
    largest there near 1, as as_row_weights scales the product (a common factor changes
    nothing): 1e-300 x 1e-30 underflowed to 0 and 1e300 x 1e300 overflowed, where their
    ratios are ordinary."""
    if rows is not None:
        kept = np.zeros_like(factors)
        kept[rows] = factors[rows]
        factors = kept
    weights = unit_scaled(factors[:, 0])
    for column in range(1, factors.shape[1]):
        weights = weights * unit_scaled(factors[:, column])
    if bool(((weights == 0) & (factors > 0).all(axis=1)).any()):
        # (as_row_weights refuses a ratio the dtype cannot hold; this one float64 cannot,
        # in a factor or in a product of factors: the row trained silently at weight 0)
        raise ValueError("the row weights (sample_weight, class_weight) span a ratio past "
                         "what float64 holds (a row's weight, or the product of its "
                         "sample_weight and class_weight, is 2^1074 times smaller than the "
                         "largest, or more); set the smallest to 0")
    return weights


def plan_rows(n_samples: int) -> int:
    """The batch size of the plan of a fit of n_samples rows, no more than its batch_size
    (its step takes all the rows in one batch, shared evenly among row workers):
    n_samples rounded up to a power of two up to 1024 rows, to a multiple of 1024 beyond
    (at most 1023 rows of workspace more), the same for every batch_size >= n_samples. The
    plan and the measured choices of threads and kernels are keyed by it: a loop of
    partial_fit calls of changing row counts measured and kept them for each count (0.3 s
    a new count: 186 counts in 400 calls of 20-255 rows)."""
    rows = row_bucket(n_samples) if n_samples <= 1024 else -(-n_samples // 1024) * 1024
    return min(rows, _core.MOST_BATCH_ROWS)


def _no_model():
    """Stands for a weak reference to no model (a trainer fresh from pickle)."""
    return None


# What gives a fit validation figures, in the messages of a callback or schedule that
# monitors one the fit will not log (EpochLoop's validation_source).
FIT_VALIDATION = "validation_data or validation_split in fit"
PARTIAL_FIT_VALIDATION = ("a fit with validation_data or validation_split; partial_fit takes "
                          "neither, so monitor 'loss' there")


@dataclass
class History:
    """What a fit did, epoch by epoch. `history` holds every series by name: loss,
    val_loss, the metrics (val_<name>), learning_rate, seconds, samples_per_second."""
    history: dict = field(default_factory=dict)
    n_samples: int = 0                  # training rows per epoch
    diverged: bool = False              # stopped because the loss was not finite
    interrupted: bool = False           # stopped by Ctrl-C (SIGINT)
    stopped_early: bool = False         # stopped by a callback or the time budget
    # How the fit used its threads: {"n_threads": T, "split": S}, S the FASTBP_SPLIT value
    # that pins the way T > 1 threads share a dense fit's steps, which is measured on the
    # machine and changes the rounding (None: one thread, or a sparse X, whose bits do not
    # depend on the count); None before the first epoch runs, and from fastbp.dask.fit
    # (its history.placement gives each block's threads)
    threads: dict | None = None

    @property
    def loss(self) -> list:
        """Mean training loss of each epoch."""
        return self.history.get("loss", [])

    @property
    def val_loss(self) -> list:
        return self.history.get("val_loss", [])

    @property
    def seconds(self) -> list:
        return self.history.get("seconds", [])

    @property
    def samples_per_second(self) -> list:
        return self.history.get("samples_per_second", [])

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def _record(self, logs: dict) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


@dataclass
class FitSpec:
    """What a fit will do, checked: Trainer.spec()'s answer."""
    loss: losses.Loss
    optimizer: optimizers.Optimizer
    schedule: schedules.Schedule
    epochs: int
    batch_size: int
    weight_decay: float
    clip_norm: float | None
    max_time: float | None
    shuffle: bool       # (read once: a callback that sets trainer.shuffle sets the next fit's)

    def check_model(self, model) -> None:
        """Refuse numbers checked in float64 that the compiled loop, which uses them in the
        model's dtype, would change (overflow, flush to 0, a fraction rounded to 1), and a
        loss parameter the model's output layer would leave unused."""
        check_numbers_in_dtype(self.optimizer, self.loss, self.weight_decay, model.dtype)
        self.loss.check_output(model.activations[-1])
        if model.activations[-1] == "softmax" and model.layer_sizes[-1] == 1 \
                and self.loss.output_activation != "softmax":
            # Its output is 1 whatever its input: every gradient 0, the fit changes nothing
            # (the command line's --loss bce --output-activation softmax trained one,
            # exit 0). Under CCE, softmax's own loss, it is a model of one class, whose
            # loss is already 0.
            raise ValueError(f"a softmax output layer of one unit outputs 1 whatever its "
                             f"input, so training with {self.loss.name} cannot change it: "
                             f"give it one unit per class, or use sigmoid for one "
                             f"probability")


def check_numbers_in_dtype(optimizer, loss, weight_decay: float, dtype) -> None:
    """FitSpec.check_dtype's checks (fastbp.sklearn makes them first, to name its own
    parameters; optimizer None: none, as for its L-BFGS)."""
    if optimizer is not None:
        optimizer.check_dtype(dtype)
    loss.check_dtype(dtype)
    check_in_dtype(weight_decay, "weight_decay", dtype)


class CheckedInputs(NamedTuple):
    """A fit's X and Y, checked and converted (Trainer._check_inputs): X as the compiled
    loop reads it (dense, or a _core.SparseRows), dense targets or class labels; key: what
    they were checked against (the model's sizes and dtype, the loss)."""
    X: np.ndarray | _core.SparseRows
    targets: np.ndarray | None
    labels: np.ndarray | None
    key: tuple


def _inputs_key(model: MLP, loss) -> tuple:
    return (model.layer_sizes[0], model.layer_sizes[-1], model.dtype, loss)


def _checked_inputs(model: MLP, loss, X, Y) -> CheckedInputs:
    X = as_inputs(X, "X", model.dtype, model.layer_sizes[0])
    targets, labels = as_targets(Y, loss, model.layer_sizes[-1], X.shape[0], model.dtype)
    return CheckedInputs(X, targets, labels, _inputs_key(model, loss))


@dataclass
class _FitData:
    """A fit's checked arrays: targets (dense) or labels, row weights or None, and the
    validation pair (X_val, dense Y_val) or None. X (and X_val) may be a _core.SparseRows.
    rows: the rows of X the fit trains on (None: all of them; Trainer._fit_rows)."""
    X: np.ndarray | _core.SparseRows
    targets: np.ndarray | None
    labels: np.ndarray | None
    weights: np.ndarray | None
    validation: tuple | None
    rows: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        """The rows the fit trains on."""
        return self.X.shape[0] if self.rows is None else self.rows.shape[0]


class Trainer:
    """Mini-batch gradient descent on a fastbp.MLP.

    loss: "mse", "mae", "huber", "categorical_crossentropy" ("cce"),
        "binary_crossentropy" ("bce") or a fastbp.losses.Loss.
    optimizer: "sgd", "adam", "rmsprop", "adagrad" (with `learning_rate`) or a
        fastbp.optimizers object, which brings its own learning rate.
    learning_rate: step size (>= 0) for an optimizer given by name; None: that
        optimizer's own default (0.01 for SGD, RMSprop and Adagrad, 0.001 for Adam).
    epochs: passes over the data (>= 0).
    batch_size: rows per step (>= 1); the last batch of an epoch may be smaller.
    shuffle: draw a new order of the rows each epoch; False walks rows 0:b, b:2b, ...
    seed: seeds shuffling and dropout; a fresh trainer with the same seed, data and thread
        count gives bit-identical parameters.
    schedule: a fastbp.schedules.Schedule or name; evaluated once per epoch (a schedule's
        step is an epoch, counted over the trainer's life, across fit and partial_fit).
    weight_decay: L2 decay of the weights (not the biases); coupled (added to the gradient,
        torch's weight_decay) unless decoupled_weight_decay (AdamW's p *= 1 - lr * wd).
    clip_norm: rescale each batch's gradient to at most this L2 norm (over all parameters).
    class_weight: {class: weight} or "balanced", for classification losses; multiplies
        sample weights.
    max_time: a budget in seconds, checked after each epoch.
    n_threads: threads of the fit: T > 1 splits each step's rows among T threads (each on
        one BLAS thread; bit-identical for the same T, to rounding across T), or gives its
        products T BLAS threads, whichever runs faster here; a step of a few microseconds,
        which neither can speed up, runs on one thread (docs/performance.md). None: the
        fastest count measured on this machine for this network and batch (cached, see
        docs/performance.md; FASTBP_THREADS pins it), never more than the caller allows
        (fastbp._threads.allowed_threads()).

    The optimizer's state, the schedule's epoch count and the shuffling generator persist
    across fit and partial_fit calls; `reset()` starts them afresh.
    """

    # For a caller that wraps the trainer (fastbp.sklearn): called with the model after
    # each completed epoch; False undoes that epoch as a diverged one (parameters, state
    # and step count as before it; the fit stops) without the trainer's own warning: the
    # check's owner says why. Set only for the duration of one call.
    _epoch_check = None
    # For such a caller: False leaves the warning of a diverged epoch to it (history.diverged
    # says so), in its own terms (fastbp.sklearn: learning_rate_init, at the user's line)
    _warns_on_divergence = True

    def __init__(self, loss, optimizer="sgd", learning_rate=None, epochs=1, batch_size=32,
                 shuffle=True, seed=None, schedule=None, weight_decay=0.0,
                 decoupled_weight_decay=False, clip_norm=None, class_weight=None,
                 max_time=None, n_threads=None):
        self.loss = loss
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.decoupled_weight_decay = decoupled_weight_decay
        self.clip_norm = clip_norm
        self.class_weight = class_weight
        self.max_time = max_time
        self.n_threads = n_threads
        self.spec()
        self._forget()

    def reset(self) -> None:
        """Forget the optimizer state, the schedule's epochs (a schedule object's own state
        too: a ReduceOnPlateau's reductions) and the shuffling generator (and free the
        buffers a fit of one epoch kept for the next)."""
        if isinstance(self.schedule, schedules.Schedule):
            self.schedule.reset()
        self._forget()

    def _forget(self) -> None:
        """reset() but for a schedule object's own state: a new Trainer takes the object as
        it is given."""
        self._state = None          # (rows, n_params), for the model and rule in _state_key:
                                    # (a weak reference to the model, (rule's code_name,
                                    # what the state holds: _state_scale))
        self._moving_rows = None    # a byte per row of W1, 0 where _state's part of the row
                                    # is known to be all 0 (None: not known; _moving_rows_of)
        self._state_key = None
        self._step = 0.0
        self._epochs_done = 0
        self._rng = np.random.default_rng(self.seed)
        self._rng_seed = self.seed  # (a seed set since takes effect at the next fit: _train)
        self._schedule = None
        self._sparse_threads = {}   # _threads.SparseThreadChoice per sparse network and rule
        self._buffers = {}          # the last one-epoch fit's buffers (_take_buffer)

    def bind(self, model: MLP) -> None:
        """Keep the optimizer state for `model` (after unpickling a trainer and its model
        separately, say); the state must fit the model. A pickled or copied trainer keeps
        its state for no model until the next fit, which binds it to the model it trains
        if the state fits it (the same size, dtype and rule): bind names another one."""
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
        if self._state is None or self._state_key is None:
            return
        if self._state.shape[1] != model.n_params or self._state.dtype != model.dtype:
            raise ValueError(f"the optimizer state has {self._state.shape[1]} "
                             f"{self._state.dtype} parameters; the model has "
                             f"{model.n_params} {model.dtype}")
        self._state_key = (weakref.ref(model), self._state_key[1])
        self._moving_rows = None

    def __getstate__(self) -> dict:
        # A weak reference does not pickle: keep the state and which rule it belongs to;
        # bind() attaches it to a model again.
        state = self.__dict__.copy()
        if state["_state_key"] is not None:
            state["_state_key"] = (_no_model, state["_state_key"][1])
        state["_buffers"] = {}      # memory for the next fit, not state
        state["_moving_rows"] = None  # found again from the state
        # the sparse fits' thread choices: rates measured in this process, on this machine
        # (the bits do not depend on them; a copy measures its own)
        state["_sparse_threads"] = {}
        return state

    def __copy__(self) -> "Trainer":
        # Fits update the optimizer state, the generator and the schedule in place: a
        # shallow copy sharing them would change the original's next fit, so copy.copy is
        # deepcopy (independent, as a pickled copy is).
        return copy.deepcopy(self)

    def __setstate__(self, state: dict) -> None:
        # Trainers pickled before the state was sized by what each rule reads kept two rows
        # for every rule: keep the one that momentum (the velocity, row 0) or RMSprop and
        # Adagrad (the second moment, row 1) read, so a resumed fit goes on where it was.
        one_row = {"momentum": 0, "rmsprop": 1, "adagrad": 1}
        key, rows = state.get("_state_key"), state.get("_state")
        if key is not None and rows is not None and rows.shape[0] == 2 and key[1][0] in one_row:
            state["_state"] = np.ascontiguousarray(rows[one_row[key[1][0]]:][:1])
        # Pickled when the key named the layout: "plain" is a scale of 1, "scaled" the
        # momentum of the optimizer it was pickled with (None where that is not known:
        # taken as the next fit's).
        if key is not None and key[1][1] in ("plain", "scaled"):
            scale = 1.0 if key[1][1] == "plain" else \
                getattr(state.get("optimizer"), "momentum", None) or None
            state["_state_key"] = (key[0], (key[1][0], scale))
        state.setdefault("_buffers", {})   # pickled before fits kept their buffers
        state["_moving_rows"] = None
        rows = state.get("_state")
        if rows is not None and not (type(rows) is np.ndarray and rows.flags.writeable
                                     and rows.flags.c_contiguous and rows.flags.aligned):
            # the next fit writes it in place: a copy where it came read-only (joblib's
            # memory map of an array of 1 MB or more, as loky sends it; pickle protocol 5's
            # buffers of bytes), which every later fit refused
            state["_state"] = np.array(rows, order="C")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (f"Trainer(loss={self.loss!r}, optimizer={self.optimizer!r}, "
                f"learning_rate={self.learning_rate!r}, epochs={self.epochs!r}, "
                f"batch_size={self.batch_size!r}, shuffle={self.shuffle!r}, seed={self.seed!r})")

    def spec(self) -> "FitSpec":
        """What a fit will do, validated (again at each fit: attributes may have changed).
        fastbp.dask reads the trainer through this and arguments()."""
        for name in ("shuffle", "decoupled_weight_decay"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.seed is not None:
            whole_number(self.seed, "seed", 0)
        checked_thread_count(self.n_threads)
        learning_rate = None if self.learning_rate is None else \
            real_number(self.learning_rate, "learning_rate")
        clip_norm = None if self.clip_norm is None else real_number(
            self.clip_norm, "clip_norm", above=True, why=" (or None for no clipping)")
        max_time = None if self.max_time is None else real_number(self.max_time, "max_time")
        if self.class_weight is not None and not _balanced(self.class_weight) \
                and not isinstance(self.class_weight, dict):
            given = self.class_weight
            raise TypeError(f"class_weight must be a dict, 'balanced' or None; got "
                            + (f"{given!r}" if isinstance(given, (str, numbers.Number)) else
                               f"a {type(given).__name__} (weights in class order: "
                               f"dict(enumerate(weights)))"))
        return FitSpec(loss=losses.get(self.loss),
                       optimizer=optimizers.get(self.optimizer, learning_rate),
                       schedule=schedules.get(self.schedule),
                       epochs=whole_number(self.epochs, "epochs", 0),
                       batch_size=whole_number(self.batch_size, "batch_size", 1),
                       weight_decay=real_number(self.weight_decay, "weight_decay"),
                       clip_norm=clip_norm, max_time=max_time, shuffle=bool(self.shuffle))

    def arguments(self) -> dict:
        """The constructor's arguments, read from the attributes: Trainer(**arguments())
        is a fresh trainer with the same settings (fastbp.dask builds its blocks' so)."""
        return {name: getattr(self, name) for name in _ARGUMENTS}

    # ---- the public calls ----
    def fit(self, model: MLP, X, Y, validation_data=None, validation_split=0.0,
            sample_weight=None, callbacks=None, verbose: int = 0, metrics=None) -> History:
        """Train `model` in place on rows of X with targets Y; returns the History.

        X: (n_samples, n_inputs), dense or a scipy.sparse matrix or array (CSR read in
        place, other formats converted once; the first layer then runs on the stored
        values: docs/trainer.md, "Sparse input"). Y: (n_samples, n_outputs) targets, or
        one class label per row for categorical cross-entropy. validation_data: (X_val,
        Y_val); or validation_split: the last fraction of the rows (taken before
        shuffling) is held out. sample_weight:
        one weight >= 0 per row (the batch loss is sum w_i l_i / sum w_i). callbacks:
        fastbp.callbacks.Callback objects. verbose=1 shows progress. metrics: names or
        callables (y_true, y_pred) evaluated on the validation data each epoch (default:
        accuracy for classification, MAE and R² for regression). Everything is checked
        before the model changes; Ctrl-C stops at the next batch and returns the history.
        """
        spec = self.spec()
        return _core.interruptible_fit(self._train, model, X, Y, spec, spec.epochs,
                                       validation_data, validation_split, sample_weight,
                                       callbacks, verbose, metrics)

    def partial_fit(self, model: MLP, X, Y, sample_weight=None) -> History:
        """One epoch on (X, Y), keeping the optimizer state: online learning."""
        return _core.interruptible_fit(self._train, model, X, Y, self.spec(), 1, None, 0.0,
                                       sample_weight, None, 0, None,
                                       validation_source=PARTIAL_FIT_VALIDATION)

    def _fit_rows(self, model: MLP, X, Y, rows, checked: CheckedInputs | None = None) \
            -> History:
        """fit(model, X[rows], Y[rows]) without copying those rows (fastbp.dask's pieces
        of a chunk), the same bits: the epochs shuffle `rows` as fit shuffles the indices
        of a copy. rows: distinct row indices of X, at least one; None: all of them.
        checked: what _check_inputs made of (X, Y) for this model and loss (X, Y are then
        not read), so that a caller fitting the same rows again checks them once."""
        spec = self.spec()
        return _core.interruptible_fit(self._train, model, X, Y, spec, spec.epochs, None, 0.0,
                                       None, None, 0, None, rows=rows, checked=checked)

    def _check_inputs(self, model: MLP, X, Y) -> CheckedInputs:
        """X and Y checked and converted for fits of `model` with this trainer's loss."""
        return _checked_inputs(model, self.spec().loss, X, Y)

    # ---- the loop ----
    def _train(self, model, X, Y, spec, n_epochs, validation_data, validation_split,
               sample_weight, callbacks, verbose, metrics, rows=None, checked=None,
               validation_source=FIT_VALIDATION) -> History:
        """Check everything, set up the compiled epoch, run the shared epoch loop. Called
        through _core.interruptible_fit: the fit's own SIGINT handler is in place from the
        call's start to its end (on the main thread), so a Ctrl-C during the set-up stops
        the fit before its first step, one later at the next batch, and none raises
        KeyboardInterrupt part-way through the call's bookkeeping (one between taking the
        hold on the model and the block that gives it back left the model held for good;
        the handler was installed only once the set-up was done, up to seconds)."""
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
        callbacks = checked_callbacks(callbacks)
        data = self._data(model, spec.loss, X, Y, sample_weight, validation_data,
                          validation_split, rows, checked)
        # (checked without validation data all the same; the defaults need no check)
        metric_functions = [] if metrics is None and data.validation is None else \
            chosen_metrics(metrics, spec.loss, model.layer_sizes[-1])
        if data.validation is None:
            metric_functions = []
        check_metric_targets(metric_functions, data.validation, model.dtype)
        spec.check_model(model)
        if min(spec.batch_size, data.n_samples) > _core.MOST_BATCH_ROWS:
            raise ValueError(f"a batch has at most {_core.MOST_BATCH_ROWS:,} rows; with "
                             f"{data.n_samples:,} rows, batch_size={spec.batch_size:,} asks "
                             f"for more: give a smaller batch_size")
        check_verbose(verbose)
        if verbose:
            callbacks.append(ProgressBar(n_epochs))
        if not model._begin_training():
            if model._trained_here():
                raise RuntimeError("this model is being trained by a fit on this thread (a "
                                   "callback's fit of the model its fit trains): train it "
                                   "after that fit returns")
            raise RuntimeError("this model is being trained by another thread; train it "
                               "from one thread at a time")
        if self.seed != getattr(self, "_rng_seed", self.seed):
            # `seed` set since the generator was made: the generator of the new seed (as
            # every other setting changed between fits, it takes effect)
            self._rng, self._rng_seed = np.random.default_rng(self.seed), self.seed
        # The optimizer state the set-up may replace (another model's, another rule's):
        # put back if the fit takes no step (epochs=0, a callback's refusal in
        # on_train_begin).
        if self._state_key is not None and self._state_key[0] is not _no_model \
                and self._state_key[0]() is None:
            # the state of a model that is gone, which no fit can take up again: kept below
            # for a refusal to put back, it held the parameters' size once more (Adam's
            # twice) through this fit
            self._state = self._state_key = self._moving_rows = None
            self._step = 0.0
        kept = (self._state, self._state_key, self._step, self._moving_rows)
        loop = None
        try:
            epoch = _CompiledEpoch(self, model, spec, data)
            history = History(n_samples=data.n_samples)
            schedule = self._schedule_for(spec.schedule)
            loop = EpochLoop(model, spec.loss, schedule, spec.optimizer.learning_rate,
                             callbacks, history, data.validation, metric_functions,
                             spec.max_time, stop_requested=epoch.interrupt_requested,
                             validation_source=validation_source)
            try:
                loop.run(n_epochs, self._epochs_done, epoch.run, context=epoch.blas_context)
            finally:
                if n_epochs == 1:   # loops of one-epoch fits pay for new memory each call
                    self._buffers = epoch.buffers
                history.threads = epoch.threads_used
        except _core.WaitInterrupted:
            # a Ctrl-C while the fit waited for another thread's BLAS pass (the set-up's
            # measurements, the epochs' own pass, a callback's predict): it stops there, as
            # at a batch (it used to wait until that pass ended: minutes, for another fit)
            if loop is None or not loop.stepped:
                self._state, self._state_key, self._step, self._moving_rows = kept
            history = History(n_samples=data.n_samples) if loop is None else loop.history
            history.interrupted = True
            return history
        except BaseException:
            if loop is None or not loop.stepped:
                self._state, self._state_key, self._step, self._moving_rows = kept
            raise
        finally:
            model._end_training()
        if not loop.stepped:         # (epochs=0, or a stop before the first step)
            self._state, self._state_key, self._step, self._moving_rows = kept
        return history

    def _data(self, model, loss, X, Y, sample_weight, validation_data, validation_split,
              rows=None, checked=None):
        """The fit's arrays, checked and converted: X, targets or labels, row weights, the
        validation pair, and the rows trained on (rows: None for all). checked: X and Y
        as _check_inputs made them for this model and loss."""
        if checked is None:
            checked = _checked_inputs(model, loss, X, Y)
        elif checked.key != _inputs_key(model, loss):
            raise ValueError("these inputs were checked for another model or loss")
        X, targets, labels = checked.X, checked.targets, checked.labels
        if rows is not None:
            rows = distinct_rows(rows, X.shape[0])
        # Data that views the parameters would change under the fit's own steps: a copy.
        X, targets, labels = (unshared(array, model._params) for array in (X, targets, labels))
        factors = self._weight_factors(sample_weight, targets, labels, loss, X.shape[0],
                                       model.layer_sizes[-1], rows)
        X, targets, labels, factors, validation = self._split(
            model, loss, X, targets, labels, factors, validation_data, validation_split)
        weights = None
        if factors is not None:
            # (after the split, over the rows trained on: a held-out row's weight, which
            # nothing reads, made a float32 fit refuse the ratio of its weights)
            weights = trained_weights(factors, rows)
            if validation_split and not weights.any():
                # the rows left to train on must not all weigh 0 (every batch skipped)
                raise ValueError("the row weights (sample_weight, class_weight) of the rows "
                                 "left to train on after validation_split sum to 0")
            weights = as_row_weights(weights, model.dtype)
        return _FitData(X, targets, labels, weights, validation, rows)

    # ---- helpers of the loop ----
    def _weight_factors(self, sample_weight, targets, labels, loss, n_samples,
                        n_classes_of_model, rows=None):
        """The row weights' factors, a column each (float64, finite, >= 0; trained_weights
        forms the weights): sample_weight, class_weight's weight of each row's class; None
        for all ones. A fit on some rows balances the classes of those rows."""
        factors = []
        if sample_weight is not None:
            factors.append(as_sample_weight(sample_weight, n_samples))
        if self.class_weight is not None:
            n_outputs = targets.shape[1] if targets is not None else n_classes_of_model
            classes, n_classes = loss.classes_of(targets, labels, n_outputs)
            if _balanced(self.class_weight):   # n / (k * count), as scikit-learn
                trained = classes if rows is None else classes[rows]
                counts = np.bincount(trained, minlength=n_classes).astype(np.float64)
                table = np.divide(trained.shape[0], n_classes * counts,
                                  out=np.zeros(n_classes), where=counts > 0)
            else:
                table = class_weight_table(self.class_weight, n_classes)
            factors.append(table[classes])
        return np.column_stack(factors) if factors else None

    @staticmethod
    def _split(model, loss, X, targets, labels, weights, validation_data, validation_split):
        """Hold out validation rows: the given (X_val, Y_val) or the last fraction."""
        fraction = real_number(validation_split, "validation_split")
        if fraction >= 1:
            raise ValueError(f"validation_split must be in [0, 1); got {fraction!r}")
        if validation_data is not None:
            if fraction > 0:
                raise ValueError("give validation_data or validation_split, not both")
            return X, targets, labels, weights, validation_set(model, loss, validation_data)
        if fraction == 0:
            return X, targets, labels, weights, None
        n_train = validation_split_point(X.shape[0], fraction)
        if n_train < 1 or n_train >= X.shape[0]:
            raise ValueError(f"validation_split={fraction} leaves no rows for "
                             f"{'training' if n_train < 1 else 'validation'} out of {X.shape[0]}")
        dense = targets if labels is None else \
            one_hot(labels[n_train:], model.layer_sizes[-1], model.dtype)
        validation = (rows_of(X, n_train, X.shape[0]),
                      dense if labels is not None else dense[n_train:])
        return (rows_of(X, 0, n_train), None if targets is None else targets[:n_train],
                None if labels is None else labels[:n_train],
                None if weights is None else weights[:n_train], validation)

    def _optimizer_state(self, model, optimizer, layout: str, rows: int) -> np.ndarray:
        """The optimizer's state for this model, kept from earlier fits when it fits: `rows`
        parameter-sized rows, as many as the rule reads (_core.Hyperparameters.state_rows),
        in the fit's layout (_state_scale)."""
        shape = (rows, model.n_params)
        scale = _state_scale(optimizer, layout)
        state, key = self._state, self._state_key
        fits = state is not None and state.shape == shape and state.dtype == model.dtype \
            and key is not None and key[1][0] == optimizer.code_name
        if fits and key[0] is _no_model:
            # pickled or copied (with its model, or for it): the state goes on with the
            # model it fits, as it would have without the copy
            self.bind(model)
            key = self._state_key
        if not fits or key[0]() is not model:
            check_allocation(shape[0] * shape[1], model.dtype, "the optimizer state")
            state = np.zeros(shape, dtype=model.dtype)
            self._moving_rows = None
            self._step = 0.0
        elif key[1][1] is not None and key[1][1] != scale:
            # the same velocity held another way (momentum changed, or clipping or Nesterov
            # turned on or off): a new array, so that a fit refused before its first step
            # puts back the old one with its key
            state = state * (scale / key[1][1])
        self._state_key = (weakref.ref(model), (optimizer.code_name, scale))
        self._state = state
        return state

    def _moving_rows_of(self, model, state) -> np.ndarray:
        """The rows of W1 whose optimizer state may not be all 0, for a sparse fit's epochs
        (train_epoch's moving_rows, which they keep up to date): found in the state when
        not known (a new trainer, after a dense fit or unpickling)."""
        n_in, n_out = model.layer_sizes[0], model.layer_sizes[1]
        if self._moving_rows is None or self._moving_rows.shape[0] != n_in:
            part = state[:, :n_in * n_out].reshape(state.shape[0], n_in, n_out)
            self._moving_rows = np.zeros(n_in, dtype=np.uint8)
            for rows in part:         # one row of the state at a time: no n_in x n_out temporary
                self._moving_rows |= rows.any(axis=1)
        return self._moving_rows

    def _take_buffer(self, key, make):
        """A fit's buffer (its workspace, the copies that undo an epoch, a sparse fit's row
        log): the one the last fit of one epoch gave back under `key` if there is one, else
        make(). Memory written before is faster to write than new memory, whose first
        writes fault page by page (a partial_fit loop paid that at every call:
        docs/performance.md, "One-epoch fits keep their memory"). A fit takes its buffers
        out (dict.pop, one step under the GIL), so two fits at once never share one; on a
        miss, what the last fit left and this one cannot use is dropped before the new
        buffer is made."""
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            self._buffers.clear()
            buffer = make()
        return buffer

    def _schedule_for(self, schedule):
        """The schedule object, kept across fits while the setting is the same object."""
        if self._schedule is None or self._schedule[0] is not self.schedule:
            self._schedule = (self.schedule, schedule)
        return self._schedule[1]


def _state_scale(optimizer, layout: str) -> float:
    """What the optimizer state holds, as a factor on torch's buffers: the folded momentum
    (_core.Hyperparameters.state_layout "scaled") keeps mu times the velocity, every other
    rule and layout the buffers themselves (1)."""
    return optimizer.momentum if layout == "scaled" else 1.0


def rows_of(X, start: int, stop: int):
    """Rows start..stop-1 of a checked X, dense or sparse, without copying the values."""
    if isinstance(X, _core.SparseRows):
        return X.row_range(start, stop)
    return X[start:stop]


def validation_split_point(n_rows: int, fraction: float) -> int:
    """How many rows validation_split=fraction leaves for training: the first ones, the rest
    are held out (Keras's split point). The CLI's --validation-split uses it too."""
    return int(n_rows * (1 - fraction))


def _balanced(class_weight) -> bool:
    """Whether class_weight is "balanced" (an array or a Series compared with == is not a
    truth value)."""
    return isinstance(class_weight, str) and class_weight == "balanced"


def class_weight_table(class_weight: dict, n_classes: int) -> np.ndarray:
    """The weight of each class under a {class: weight} class_weight (classes it does not
    name weigh 1), each checked."""
    table = np.ones(n_classes)
    for key, value in class_weight.items():
        whole_number(key, "a class_weight key", 0)
        if key >= n_classes:
            raise ValueError(f"class_weight names class {key}; the classes are "
                             f"0..{n_classes - 1}")
        table[int(key)] = real_number(value, f"class_weight[{key}]")     # finite, >= 0
    return table


def chosen_metrics(metrics, loss, n_outputs: int) -> list:
    """[(name, function)] of the metrics to compute on validation data: `metrics` (names or
    callables), or the loss's defaults (accuracy for classification, MAE and R² else)."""
    if metrics is None:
        metrics = metrics_module.default_metrics(loss.name, n_outputs)
    elif isinstance(metrics, (str, bytes)) or callable(metrics):
        metrics = [metrics]
    elif not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be a name, a callable (y_true, y_pred) -> float, or a "
                        f"list of them; got {metrics!r}")
    chosen = [(metrics_module.name(m), metrics_module.get(m)) for m in metrics]
    if n_outputs > 1 and "binary_accuracy" in loss.default_metrics(n_outputs) and \
            any(function is metrics_module.accuracy for _, function in chosen):
        # (the argmax of independent probabilities is no class: Keras reads "accuracy"
        # as binary accuracy here; fastbp's default for it is binary_accuracy)
        raise ValueError(f"'accuracy' takes the argmax of a row as its class; a multi-label "
                         f"model ({loss.name} with {n_outputs} outputs) has none: use "
                         f"'binary_accuracy'")
    seen = {"loss"}                 # (val_loss is the loss's own)
    for name, _ in chosen:
        if name in seen:
            raise ValueError(f"two figures would be logged as 'val_{name}': each metric needs "
                             f"a name of its own, and not 'loss' (a callable is logged under "
                             f"its __name__: give it another)")
        seen.add(name)
    return chosen


def check_metric_targets(metric_functions, validation, dtype) -> None:
    """fastbp's own metrics refuse the validation targets they cannot score (a binary
    accuracy's labels that are not 0/1) before the first epoch, not after it: each is
    computed once on Y_val against outputs of zeros. (A caller's metric is not called on
    made-up outputs.)"""
    own = [function for _, function in metric_functions
           if function in metrics_module.REGISTRY]
    if own:
        Y_val = validation[1]
        zeros = np.broadcast_to(np.zeros((), dtype=dtype), Y_val.shape)
        for function in own:
            function(Y_val, zeros)


def validation_figures(model: MLP, loss, validation, metric_functions) -> list:
    """The validation loss, then each metric, on checked validation arrays (X_val, dense
    Y_val), from one forward pass (named val_loss, val_<metric> by EpochLoop.logged)."""
    X_val, Y_val = validation
    value, predictions = model._evaluate(X_val, Y_val, loss)
    if not _core.all_finite(predictions):
        # Outputs that overflow the dtype, which evaluate and predict refuse: no loss or
        # metric of them (an accuracy of NaN rows looked plausible); NaN, and why.
        warnings.warn(f"the model's outputs on the validation data overflow "
                      f"{model.dtype.name} (they would be infinite or NaN): the epoch's "
                      f"validation figures are NaN", RuntimeWarning, stacklevel=6)
        return [float("nan")] * (1 + len(metric_functions))
    return [value] + [_metric_value(name, function(Y_val, predictions))
                      for name, function in metric_functions]


def _metric_value(name, value) -> float:
    """A metric's answer as a float, or an error that names the metric."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the metric {name!r} returned {value!r}; a metric must return one "
                        f"number") from None


# The constructor's arguments, in order (Trainer.arguments()).
_ARGUMENTS = ("loss", "optimizer", "learning_rate", "epochs", "batch_size", "shuffle", "seed",
              "schedule", "weight_decay", "decoupled_weight_decay", "clip_norm",
              "class_weight", "max_time", "n_threads")


class _CompiledEpoch:
    """One epoch of Trainer's fit in the compiled loop: the hyperparameters, optimizer state,
    plan and workspace set up once per fit, then run() once per epoch (EpochLoop's step)."""

    def __init__(self, trainer, model, spec, data):
        self.trainer, self.model = trainer, model
        loss, optimizer = spec.loss, spec.optimizer
        n_samples = data.n_samples
        # the plan's batch (and the key of its measured choices), and the rows of a step
        self.batch_size = spec.batch_size if n_samples > spec.batch_size else \
            plan_rows(n_samples)
        self.step_rows = min(spec.batch_size, n_samples)
        hyperparameters = _core.Hyperparameters(
            loss.code, loss.parameter, weight_decay=spec.weight_decay,
            decoupled_weight_decay=bool(trainer.decoupled_weight_decay),
            clip_norm=spec.clip_norm or 0.0, **optimizer.hyperparameters(),
            # (fastbp.sklearn's trainers: the epoch's loss as scikit-learn's)
            batch_mean_loss=getattr(trainer, "_batch_mean_loss", False))
        self.state = trainer._optimizer_state(model, optimizer, hyperparameters.state_layout,
                                              hyperparameters.state_rows)
        hyperparameters.step = trainer._step
        self.hyperparameters = hyperparameters
        # n_threads: the BLAS threads of the fit; n_workers: the threads a step is split
        # among by rows (_core's _workers.pxi), each on one BLAS thread; split: the first
        # layer's product split by rows, by its inputs (_threads.BY_INPUTS) or the step by
        # the hidden units (BY_HIDDEN; not with clipping, which takes the row split). The
        # default is measured on this machine once per shape and for clipping or not
        # (_threads.fit_threads). A
        # sparse X: the threads that share the optimizer's work on the rows of W1 (_core's
        # _row_pool.pxi), by default chosen epoch by epoch (thread_choice); see
        # _threads.sparse_fit_threads.
        self.sparse = data.X if isinstance(data.X, _core.SparseRows) else None
        self.thread_choice, self.split = None, BY_ROWS
        self.threads_used = None        # (History.threads: set as each epoch starts)
        if self.sparse is not None:
            # (what the core keeps per column of X for a rule that shares rows: refused here,
            # before anything is made, not after the epoch's set-up with a bare MemoryError;
            # plain SGD keeps a byte or two, less than W1's row)
            if _core.shares_rows(hyperparameters):
                check_allocation(model.layer_sizes[0] * _core.SPARSE_BYTES_PER_COLUMN,
                                 np.uint8, "a sparse fit's bookkeeping of W1's rows")
            key = (tuple(model.layer_sizes), self.batch_size, str(model.dtype),
                   repr(optimizer), spec.weight_decay, bool(trainer.decoupled_weight_decay),
                   spec.clip_norm)
            self.n_workers, self.n_threads, self.thread_choice = sparse_fit_threads(
                trainer.n_threads, _core.shares_rows(hyperparameters),
                trainer._sparse_threads, key)
        else:
            self.n_workers, self.n_threads, self.split = fit_threads(
                model.layer_sizes, model._codes, self.batch_size, model.dtype,
                trainer.n_threads, bool(spec.clip_norm))
        self.buffers = {}       # key -> buffer, given back to the trainer at the fit's end

        def buffer(kind, shape, make=None):
            key = (kind, shape, model.dtype)
            self.buffers[key] = trainer._take_buffer(
                key, make or (lambda: np.empty(shape, dtype=model.dtype)))
            return self.buffers[key]
        self.plan = model._kept_fit_plan(self.batch_size, not hyperparameters.folded,
                                         self.n_threads, self.sparse is not None)
        # BLAS's thread count is set for the epoch only where a step calls BLAS (the
        # dense row split's workers always may): a few rows a step in the few-row kernels
        # call none, and setting it and putting it back cost more than such a step
        self.calls_blas = (self.sparse is None and self.n_workers > 1) \
            or self.plan.step_calls_blas(n_samples, self.batch_size, model.dtype == np.float64)
        self.work = buffer("workspace", self.plan.work_size)
        self.worker_plan, self.worker_work = row_workspace(
            model.layer_sizes, model._codes, model._dropout, self.batch_size,
            1 if self.sparse is not None else self.n_workers, model.dtype,
            lambda size: buffer("workers' workspace", size), self.split, hyperparameters,
            rows=self.step_rows)
        # The parameters and optimizer state at the start of the epoch, restored if it
        # diverges. A sparse fit copies W1 (the first `kept` values, most of the model) and
        # its state row by row as the epoch changes them, into a RowLog, not whole.
        kept = model.layer_sizes[0] * model.layer_sizes[1] if self.sparse is not None else 0
        log_shape = (model.layer_sizes[0], model.layer_sizes[1], hyperparameters.state_rows)
        self.row_log = None if self.sparse is None else buffer(
            "row log", log_shape, lambda: _core.RowLog(*log_shape, model.dtype))
        # Where the state of W1's rows is known to be 0, a sparse epoch's end skips them
        # unread; the epochs keep it up to date. A dense fit changes every row.
        self.moving_rows = trainer._moving_rows_of(model, self.state) \
            if self.sparse is not None and self.state.shape[0] else None
        if self.sparse is None:
            trainer._moving_rows = None
        self.backup = buffer("backup", model._params[kept:].shape)
        self.state_backup = buffer("state backup", self.state[:, kept:].shape)
        self.kept = kept
        self.X = data.X if self.sparse is None else np.empty((0, 0), dtype=model.dtype)
        self.targets = np.empty((0, 0), dtype=model.dtype) if data.targets is None \
            else data.targets
        self.labels = np.empty(0, dtype=np.intp) if data.labels is None else data.labels
        self.weights = np.empty(0, dtype=model.dtype) if data.weights is None else data.weights
        # the rows an epoch trains, in their order (order: shuffled, or empty: all of X's
        # rows in place)
        self.rows = np.arange(n_samples, dtype=np.intp) if data.rows is None else data.rows
        self.shuffle = spec.shuffle
        self.order = np.empty_like(self.rows) if self.shuffle else \
            np.empty(0, dtype=np.intp) if data.rows is None else self.rows
        self.uses_dropout = any(model._dropout)
        # Only a fit on the main thread (where Python handles signals) takes over SIGINT.
        self.catching = threading.current_thread() is threading.main_thread()

    def run(self, epoch: int, learning_rates) -> "EpochResult":
        trainer, model, state = self.trainer, self.model, self.state
        self.hyperparameters.learning_rate = learning_rates[-1]
        # The generator as it was, put back if the epoch fails (1 us: only where it draws),
        # so that a fit tried again after an error is the fit that never failed
        drawing = (self.shuffle and self.order.shape[0] > 1) or self.uses_dropout
        generator_state = trainer._rng.bit_generator.state if drawing else None
        if self.shuffle:   # = rng.permutation(n_samples), without allocating
            np.copyto(self.order, self.rows)
            if self.order.shape[0] > 1:    # (one row draws nothing: 7 us a one-row call)
                trainer._rng.shuffle(self.order)
        dropout_seed = int(trainer._rng.integers(2**63)) if self.uses_dropout else 0
        np.copyto(self.backup, model._params[self.kept:])
        np.copyto(self.state_backup, state[:, self.kept:])
        if self.row_log is not None:
            # (holding the last epoch's rows until the core begins this one: an error
            # before that must not restore them)
            self.row_log.clear()
        n_workers = self.n_workers if self.thread_choice is None else self.thread_choice.next()
        self.threads_used = threads_record(n_workers, self.n_threads,
                                           None if self.sparse is not None else self.split)
        started = time.perf_counter()
        try:
            loss_total, weight_total, trained, status = _core.train_epoch(
                self.plan, self.hyperparameters, model._params, self.work, state, self.X,
                self.targets, self.labels, self.weights, self.order, self.step_rows,
                dropout_seed, self.catching, self.worker_plan, self.worker_work,
                n_workers, self.sparse, self.row_log, **split_flags(self.split),
                moving_rows=self.moving_rows,
                # (rows changed unlogged at the end could not be undone by the check's
                # verdict)
                defer_flush=trainer._epoch_check is None)
        except BaseException:
            # labels or a sparse X rewritten mid-fit (the core checks each read), no memory
            # for the row log, threads that could not be started; an exception a signal
            # handler raised (SystemExit from a service's SIGTERM handler) when the epoch
            # returned: its steps, uncounted, are undone (a diverged epoch's with them)
            self._restore()
            if generator_state is not None:
                trainer._rng.bit_generator.state = generator_state
            raise
        seconds = time.perf_counter() - started
        if status == _core.Status.DIVERGED:
            # A non-finite loss stops the epoch early; an update that overflowed
            # (in the parameters or the optimizer state) ends it as diverged.
            self._restore()                  # and trainer._step stays as it was
            if not _core.all_finite(model._params[None, :]):
                # not the training's doing: the epoch began from them (a fit refused)
                if generator_state is not None:
                    trainer._rng.bit_generator.state = generator_state
                raise ValueError(f"the model's parameters are not all finite (NaN or "
                                 f"infinity, written into its weights or biases or loaded "
                                 f"so) at the start of epoch {epoch + 1}: there is no start "
                                 f"to train from")
            if trainer._warns_on_divergence:
                warnings.warn(f"training stopped in epoch {epoch + 1}: the loss diverged "
                              f"(NaN or infinite loss or parameters); the parameters and "
                              f"optimizer state are restored to those at the start of that "
                              f"epoch. Try a smaller learning_rate.", RuntimeWarning,
                              stacklevel=5)
            return EpochResult(diverged=True)
        if status != _core.Status.INTERRUPTED and trainer._epoch_check is not None \
                and not trainer._epoch_check(model):
            self._restore()
            return EpochResult(diverged=True)
        if trainer._state is self.state:
            # (the step count goes with the state: a fit of another model on this trainer,
            # from a callback or another thread, has made the trainer's state its own)
            trainer._step = self.hyperparameters.step
        if status == _core.Status.INTERRUPTED:
            return EpochResult(interrupted=True)
        trainer._epochs_done += 1
        if self.thread_choice is not None and seconds > 0:
            self.thread_choice.record(n_workers, trained / seconds)
        return EpochResult(loss_total / weight_total if weight_total else float("nan"),
                           seconds, len(self.rows))

    def _restore(self):
        np.copyto(self.model._params[self.kept:], self.backup)
        np.copyto(self.state[:, self.kept:], self.state_backup)
        if self.row_log is not None:
            self.row_log.restore(self.model._params, self.state)

    def interrupt_requested(self) -> bool:
        return self.catching and _core.interrupt_requested()

    def blas_context(self):
        """The epochs' BLAS thread count (blas_threads), where a step calls BLAS."""
        return blas_threads(self.n_threads) if self.calls_blas else contextlib.nullcontext()


@dataclass
class EpochResult:
    """What one step of an EpochLoop (an epoch of Trainer, a round of fastbp.dask) did.

    loss: the mean training loss to record, or None when there is nothing to record (the
    step diverged and was rolled back, or was interrupted). diverged with a loss: record
    the step, then stop (fastbp.dask: some blocks rolled their last epoch back)."""
    loss: float | None = None
    seconds: float = 0.0
    n_samples: int = 0          # rows trained (for samples_per_second)
    diverged: bool = False
    interrupted: bool = False


class EpochLoop:
    """What happens between epochs, for Trainer.fit and fastbp.dask.fit alike: the learning
    rate from the schedule, validation and metrics, the History, the schedule's and the
    callbacks' epoch ends, the time budget and every stopping rule.

    A step trains `epochs_per_step` schedule epochs (1 for Trainer; epochs_per_round for
    fastbp.dask, whose callbacks see a round as an epoch), or, with `steps_per_epoch` > 1,
    one of that many pieces of an epoch (fastbp.dask's rounds_per_epoch): `run` hands it
    the learning rate of each epoch and records the EpochResult it returns.
    `stop_requested`: polled after each step (Trainer: a Ctrl-C seen between epochs);
    `report(step, logs)`: after each recorded step (fastbp.dask's verbose lines).
    `validation_source`: what gives the fit validation figures, in the callbacks' and the
    schedule's messages when they monitor one the fit will not log.
    """

    def __init__(self, model, loss, schedule, base_learning_rate, callbacks, history,
                 validation=None, metric_functions=(), max_time=None, epochs_per_step=1,
                 stop_requested=None, report=None, steps_per_epoch=1,
                 validation_source=FIT_VALIDATION):
        self.model, self.loss, self.schedule = model, loss, schedule
        self.base_learning_rate = base_learning_rate
        self.callbacks, self.history = callbacks, history
        self.validation, self.metric_functions = validation, metric_functions
        self.max_time, self.epochs_per_step = max_time, epochs_per_step
        self.steps_per_epoch = steps_per_epoch
        self.stop_requested, self.report = stop_requested, report
        self.validation_source = validation_source
        # (the constant rate without a call a step; a subclass may give rates of its own)
        self._constant = type(schedule) is schedules.Constant
        self.stepped = False            # whether a call of run()'s step has returned

    def logged(self) -> list:
        """The figures each epoch's logs hold, in _end_of_step's order (on_train_begin's
        logs["logged"])."""
        keys = ["loss", "learning_rate", "seconds", "samples_per_second"]
        if self.validation is not None:
            keys += ["val_loss"] + [f"val_{name}" for name, _ in self.metric_functions]
        return keys

    def learning_rates(self, first_epoch: int) -> list:
        """The learning rate of each schedule epoch of a step."""
        if self._constant:
            return [self.base_learning_rate] * self.epochs_per_step
        rates = []
        for epoch in range(first_epoch, first_epoch + self.epochs_per_step):
            rate = schedules.checked_rate(
                self.schedule, epoch, self.schedule.learning_rate(epoch, self.base_learning_rate))
            try:        # (the base rate was checked so; a decay below normal numbers is fine)
                check_fits_dtype(rate, "learning_rate", self.model.dtype)
            except ValueError as error:
                raise ValueError(f"{type(self.schedule).__name__} gave a learning rate for "
                                 f"epoch {epoch} that the model cannot hold: {error}") from None
            rates.append(rate)
        return rates

    def step_rates(self, index: int, first_epoch: int = 0) -> tuple:
        """(the schedule epoch of step `index`, its learning rates), as the schedule stands
        now (fastbp.dask asks ahead for the next round; a schedule that changes at an
        epoch's end, such as ReduceOnPlateau, may then give other rates)."""
        epoch = first_epoch + index // self.steps_per_epoch * self.epochs_per_step
        return epoch, self.learning_rates(epoch)

    def run(self, n_steps: int, first_epoch: int, step, context=contextlib.nullcontext):
        """Call step(index, learning_rates) up to n_steps times under `context()`, with the
        callbacks' train begin and end around (each begun callback's end however the fit
        ends, an exception included); returns the History."""
        begun = []
        beginning = {"logged": self.logged(), "validation_source": self.validation_source}
        self.schedule.on_train_begin(dict(beginning))
        try:
            for callback in self.callbacks:
                callback.set_model(self.model)
                callback.on_train_begin(dict(beginning))
                begun.append(callback)
            with context():
                # (the budget counts the steps: not fastbp.dask's loading in the context)
                started = time.perf_counter()
                for index in range(n_steps):
                    if index == 0 and self.stop_requested is not None \
                            and self.stop_requested():
                        self.history.interrupted = True     # (a Ctrl-C in the set-up)
                        break
                    epoch, rates = self.step_rates(index, first_epoch)
                    if index == 0 and epoch > 0:
                        self._warn_if_over(epoch, rates)
                    result = step(index, rates)
                    # (after it: a step that raises has undone its epoch, so a fit whose
                    # first step raised changed nothing, and _train puts the trainer's
                    # state back; a model whose parameters are not finite is refused so)
                    self.stepped = True
                    if self._end_of_step(index, epoch, rates, result, started, n_steps):
                        break
        finally:
            # each one's end even where another's raises (EarlyStopping's restore must not
            # depend on the callbacks before it); the first exception is raised after all
            failure = None
            for callback in begun:
                try:
                    callback.on_train_end({})
                except BaseException as error:
                    failure = failure or error
            if failure is not None:
                raise failure
        return self.history

    def _warn_if_over(self, epoch, rates) -> None:
        """A fit whose first epoch one of fastbp's schedules gives a rate of 0 from a base
        rate above 0 (a Cosine ending at 0 before the fit starts: its epochs count over the
        trainer's lifetime, so a schedule set after earlier fits may be over already)
        leaves the parameters as they are: say so rather than train at 0 unsaid. (A base
        rate of 0 is the caller's; a schedule of one's own may mean a 0.)"""
        if any(rates) or not self.base_learning_rate > 0 \
                or type(self.schedule).__module__ != schedules.__name__:
            return
        warnings.warn(f"{type(self.schedule).__name__} gives a learning rate of 0 for epoch "
                      f"{epoch}, where this fit starts (a schedule's epochs count over the "
                      f"trainer's lifetime, {epoch} trained before), so the fit leaves the "
                      f"parameters as they are; trainer.reset() starts the count from 0 "
                      f"again (and forgets the optimizer state)", UserWarning, stacklevel=5)

    def _end_of_step(self, index, epoch, rates, result, started, n_steps) -> bool:
        """Record a step and apply the stopping rules; True: stop."""
        history = self.history
        if result.loss is None:
            history.diverged |= result.diverged
            history.interrupted |= result.interrupted
            return True
        figures = [result.loss, rates[-1], result.seconds,
                   result.n_samples / result.seconds if result.seconds else float("inf")]
        if self.validation is not None:
            figures += validation_figures(self.model, self.loss, self.validation,
                                          self.metric_functions)
        logs = dict(zip(self.logged(), figures, strict=True))
        history._record(logs)
        self.schedule.on_epoch_end(epoch + self.epochs_per_step - 1, logs)
        if self.report is not None:
            self.report(index, logs)
        if result.diverged:
            history.diverged = True
            return True
        # Every callback sees the epoch (no short-circuit); any of them may stop.
        if any([callback.on_epoch_end(index, logs) for callback in self.callbacks]):
            history.stopped_early = index + 1 < n_steps     # (not at the last step: none left)
            return True
        if self.max_time is not None and time.perf_counter() - started >= self.max_time \
                and index + 1 < n_steps:
            history.stopped_early = True
            return True
        if self.stop_requested is not None and self.stop_requested():
            history.interrupted = True
            return True
        return False


def validation_set(model: MLP, loss, validation_data) -> tuple:
    """validation_data=(X_val, Y_val) checked for `model`: (X_val, dense Y_val)."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError("validation_data must be a pair (X_val, Y_val)")
    X_val = as_inputs(validation_data[0], "X_val", model.dtype, model.layer_sizes[0])
    Y_val = dense_targets(validation_data[1], loss, model.layer_sizes[-1], X_val.shape[0],
                          model.dtype, "Y_val")
    # as the training data: arrays that view the parameters would change under the steps
    return unshared(X_val, model._params), unshared(Y_val, model._params)
