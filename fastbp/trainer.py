"""The trainer: mini-batch gradient descent, one compiled call per epoch.

Python runs only between epochs: the learning-rate schedule, validation, metrics,
callbacks, progress and the time budget. Inside an epoch everything (gather, forward,
loss, backward, optimizer step, dropout) is one nogil call into fastbp._core.
"""
from __future__ import annotations

import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from fastbp import _core, losses, metrics as metrics_module, optimizers, schedules
from fastbp._threads import blas_threads, checked_thread_count, thread_count
from fastbp.callbacks import ProgressBar, checked_callbacks
from fastbp._validation import as_matrix, as_row_weights, as_targets, check_in_dtype, \
    numeric_array, one_hot, real_number, unshared, whole_number
from fastbp.model import MLP, check_allocation


def _no_model():
    """Stands for a weak reference to no model (a trainer fresh from pickle)."""
    return None


@dataclass
class History:
    """What a fit did, epoch by epoch. `history` holds every series by name: loss,
    val_loss, the metrics (val_<name>), learning_rate, seconds, samples_per_second."""
    history: dict = field(default_factory=dict)
    n_samples: int = 0                  # training rows per epoch
    diverged: bool = False              # stopped because the loss was not finite
    interrupted: bool = False           # stopped by Ctrl-C (SIGINT)
    stopped_early: bool = False         # stopped by a callback or the time budget

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
    n_threads: BLAS threads during the fit; None picks from the size of a step.

    The optimizer's state, the schedule's epoch count and the shuffling generator persist
    across fit and partial_fit calls; `reset()` starts them afresh.
    """

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
        self._checked()
        self.reset()

    def reset(self) -> None:
        """Forget the optimizer state, the schedule's epochs and the shuffling generator."""
        self._state = None          # (rows, n_params), for the model and rule in _state_key
        self._state_key = None
        self._step = 0.0
        self._epochs_done = 0
        self._rng = np.random.default_rng(self.seed)
        self._schedule = None

    def bind(self, model: MLP) -> None:
        """Keep the optimizer state for `model` (after unpickling a trainer and its model
        separately, say); the state must fit the model."""
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
        if self._state is None or self._state_key is None:
            return
        if self._state.shape[1] != model.n_params or self._state.dtype != model.dtype:
            raise ValueError(f"the optimizer state has {self._state.shape[1]} "
                             f"{self._state.dtype} parameters; the model has "
                             f"{model.n_params} {model.dtype}")
        self._state_key = (weakref.ref(model), self._state_key[1])

    def __getstate__(self) -> dict:
        # A weak reference does not pickle: keep the state and which rule it belongs to;
        # bind() attaches it to a model again.
        state = self.__dict__.copy()
        if state["_state_key"] is not None:
            state["_state_key"] = (_no_model, state["_state_key"][1])
        return state

    def __repr__(self) -> str:
        return (f"Trainer(loss={self.loss!r}, optimizer={self.optimizer!r}, "
                f"learning_rate={self.learning_rate!r}, epochs={self.epochs!r}, "
                f"batch_size={self.batch_size!r}, shuffle={self.shuffle!r}, seed={self.seed!r})")

    def _checked(self) -> dict:
        """The settings, validated (again at each fit: attributes may have changed)."""
        for name in ("shuffle", "decoupled_weight_decay"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.seed is not None:
            whole_number(self.seed, "seed", 0)
        checked_thread_count(self.n_threads)
        learning_rate = None if self.learning_rate is None else \
            real_number(self.learning_rate, "learning_rate")
        clip_norm = None if self.clip_norm is None else real_number(self.clip_norm, "clip_norm")
        if clip_norm == 0:
            raise ValueError("clip_norm must be > 0 (or None for no clipping)")
        max_time = None if self.max_time is None else real_number(self.max_time, "max_time")
        if self.class_weight is not None and self.class_weight != "balanced" \
                and not isinstance(self.class_weight, dict):
            raise TypeError(f"class_weight must be a dict, 'balanced' or None; "
                            f"got {self.class_weight!r}")
        return dict(loss=losses.get(self.loss),
                    optimizer=optimizers.get(self.optimizer, learning_rate),
                    schedule=schedules.get(self.schedule),
                    epochs=whole_number(self.epochs, "epochs", 0),
                    batch_size=whole_number(self.batch_size, "batch_size", 1),
                    weight_decay=real_number(self.weight_decay, "weight_decay"),
                    clip_norm=clip_norm, max_time=max_time)

    # ---- the public calls ----
    def fit(self, model: MLP, X, Y, validation_data=None, validation_split=0.0,
            sample_weight=None, callbacks=None, verbose: int = 0, metrics=None) -> History:
        """Train `model` in place on rows of X with targets Y; returns the History.

        Y: (n_samples, n_outputs) targets, or one class label per row for
        categorical cross-entropy. validation_data: (X_val, Y_val); or validation_split:
        the last fraction of the rows (taken before shuffling) is held out. sample_weight:
        one weight >= 0 per row (the batch loss is sum w_i l_i / sum w_i). callbacks:
        fastbp.callbacks.Callback objects. verbose=1 shows progress. metrics: names or
        callables (y_true, y_pred) evaluated on the validation data each epoch (default:
        accuracy for classification, MAE and R² for regression). Everything is checked
        before the model changes; Ctrl-C stops at the next batch and returns the history.
        """
        settings = self._checked()
        return self._train(model, X, Y, settings, settings["epochs"], validation_data,
                           validation_split, sample_weight, callbacks, verbose, metrics)

    def partial_fit(self, model: MLP, X, Y, sample_weight=None) -> History:
        """One epoch on (X, Y), keeping the optimizer state: online learning."""
        settings = self._checked()
        return self._train(model, X, Y, settings, 1, None, 0.0, sample_weight, None, 0, None)

    # ---- the loop ----
    def _train(self, model, X, Y, settings, n_epochs, validation_data, validation_split,
               sample_weight, callbacks, verbose, metrics) -> History:
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
        callbacks = checked_callbacks(callbacks)
        loss, optimizer = settings["loss"], settings["optimizer"]
        X = as_matrix(X, "X", model.dtype, model.layer_sizes[0])
        targets, labels = as_targets(Y, loss, model.layer_sizes[-1], X.shape[0], model.dtype)
        # Data that views the parameters would change under the fit's own steps: a copy.
        X, targets, labels = (unshared(array, model._params) for array in (X, targets, labels))
        weights = self._row_weights(sample_weight, targets, labels, loss, X.shape[0],
                                    model.layer_sizes[-1], model.dtype)
        X, targets, labels, weights, validation = self._split(
            model, loss, X, targets, labels, weights, validation_data, validation_split)
        metric_functions = chosen_metrics(metrics, loss, model.layer_sizes[-1]) \
            if validation is not None else []
        # Checked in float64, used in the model's dtype by the compiled loop.
        optimizer.check_dtype(model.dtype)
        loss.check_dtype(model.dtype)
        check_in_dtype(settings["weight_decay"], "weight_decay", model.dtype)
        if verbose:
            callbacks.append(ProgressBar(n_epochs))

        n_samples = X.shape[0]
        batch_size = min(settings["batch_size"], n_samples)
        core_settings = _core.Hyperparameters(
            loss.code, loss.parameter, weight_decay=settings["weight_decay"],
            decoupled_weight_decay=bool(self.decoupled_weight_decay),
            clip_norm=settings["clip_norm"] or 0.0, **optimizer.settings())
        state = self._optimizer_state(model, optimizer, core_settings.state_layout,
                                      core_settings.state_rows)
        core_settings.step = self._step
        n_threads = thread_count(model.layer_sizes, batch_size, self.n_threads)
        plan, work = model._workspace(batch_size, model._dropout, not core_settings.folded,
                                      n_threads)
        # The parameters and optimizer state at the start of the epoch, restored if it diverges.
        backup, state_backup = np.empty_like(model._params), np.empty_like(state)
        no_targets = np.empty((0, 0), dtype=model.dtype)
        targets = no_targets if targets is None else targets
        labels = np.empty(0, dtype=np.intp) if labels is None else labels
        weights = np.empty(0, dtype=model.dtype) if weights is None else weights
        in_order = np.empty(0, dtype=np.intp)
        rows = np.arange(n_samples, dtype=np.intp)
        order = np.empty_like(rows) if self.shuffle else in_order
        uses_dropout = any(model._dropout)
        schedule = self._schedule_for(settings["schedule"])
        constant_rate = isinstance(schedule, schedules.Constant)
        base_learning_rate = optimizer.learning_rate
        history = History(n_samples=n_samples)
        started_fit = time.perf_counter()

        if not model._training.acquire(blocking=False):
            raise RuntimeError("this model is being trained by another thread; train it "
                               "from one thread at a time")
        catching = threading.current_thread() is threading.main_thread()
        try:
            if catching:
                _core.catch_interrupts()
            for callback in callbacks:
                callback.set_model(model)
                callback.on_train_begin({})
            with blas_threads(n_threads):
                for epoch in range(n_epochs):
                    learning_rate = base_learning_rate if constant_rate else \
                        schedule.learning_rate(self._epochs_done, base_learning_rate)
                    core_settings.learning_rate = learning_rate
                    if self.shuffle:   # = rng.permutation(n_samples), without allocating
                        np.copyto(order, rows)
                        self._rng.shuffle(order)
                    dropout_seed = int(self._rng.integers(2**63)) if uses_dropout else 0
                    np.copyto(backup, model._params)
                    np.copyto(state_backup, state)
                    started = time.perf_counter()
                    try:
                        loss_total, weight_total, trained, status = _core.train_epoch(
                            plan, core_settings, model._params, work, state, X, targets,
                            labels, weights, order, batch_size, dropout_seed, catching)
                    except ValueError:   # labels rewritten mid-fit: the core checks each read
                        np.copyto(model._params, backup)
                        np.copyto(state, state_backup)
                        raise
                    seconds = time.perf_counter() - started
                    if status == _core.Status.DIVERGED:
                        # A non-finite loss stops the epoch early; an update that overflowed
                        # (in the parameters or the optimizer state) ends it as diverged.
                        np.copyto(model._params, backup)
                        np.copyto(state, state_backup)   # and self._step stays as it was
                        history.diverged = True
                        warnings.warn(f"training stopped in epoch {epoch + 1}: the loss diverged "
                                      f"(NaN or infinite loss or parameters); the parameters "
                                      f"and optimizer state are restored to those at the start "
                                      f"of that epoch. Try "
                                      f"a smaller learning_rate.", RuntimeWarning, stacklevel=3)
                        break
                    self._step = core_settings.step
                    if status == _core.Status.INTERRUPTED:
                        history.interrupted = True
                        break
                    self._epochs_done += 1
                    logs = {"loss": loss_total / weight_total if weight_total else float("nan"),
                            "learning_rate": learning_rate, "seconds": seconds,
                            "samples_per_second": n_samples / seconds if seconds else float("inf")}
                    if validation is not None:
                        logs.update(validation_logs(model, loss, validation, metric_functions))
                    history._record(logs)
                    schedule.on_epoch_end(self._epochs_done - 1, logs)
                    # Every callback sees the epoch (no short-circuit); any of them may stop.
                    if any([callback.on_epoch_end(epoch, logs) for callback in callbacks]):
                        history.stopped_early = True
                        break
                    if settings["max_time"] is not None and \
                            time.perf_counter() - started_fit >= settings["max_time"]:
                        history.stopped_early = True
                        break
                    if catching and _core.interrupt_requested():
                        history.interrupted = True
                        break
            for callback in callbacks:
                callback.on_train_end({})
        finally:
            # a SIGINT after the last check still counts
            if catching and _core.release_interrupts():
                history.interrupted = True
            model._training.release()
        return history

    # ---- helpers of the loop ----
    def _row_weights(self, sample_weight, targets, labels, loss, n_samples, n_classes_of_model,
                     dtype):
        """Per-row weights from sample_weight and class_weight, or None for all ones."""
        weights = None
        if sample_weight is not None:
            weights = numeric_array(sample_weight, "sample_weight")
            if weights.shape != (n_samples,):
                raise ValueError(f"sample_weight must have one weight per row, shape "
                                 f"({n_samples},); got {weights.shape}")
            weights = np.array(weights, dtype=np.float64)
            if not np.isfinite(weights).all() or weights.min() < 0:
                raise ValueError("sample_weight must be finite and >= 0")
        if self.class_weight is not None:
            n_outputs = targets.shape[1] if targets is not None else n_classes_of_model
            classes, n_classes = loss.classes_of(targets, labels, n_outputs)
            if self.class_weight == "balanced":   # n / (k * count), as scikit-learn
                counts = np.bincount(classes, minlength=n_classes).astype(np.float64)
                table = np.divide(n_samples, n_classes * counts, out=np.zeros(n_classes),
                                  where=counts > 0)
            else:
                table = np.ones(n_classes)
                for key, value in self.class_weight.items():
                    whole_number(key, "a class_weight key", 0)
                    if key >= n_classes:
                        raise ValueError(f"class_weight names class {key}; the classes are "
                                         f"0..{n_classes - 1}")
                    table[int(key)] = real_number(value, f"class_weight[{key}]")
            class_weights = table[classes]
            weights = class_weights if weights is None else weights * class_weights
        return None if weights is None else as_row_weights(weights, dtype)

    @staticmethod
    def _split(model, loss, X, targets, labels, weights, validation_data, validation_split):
        """Hold out validation rows: the given (X_val, Y_val) or the last fraction."""
        fraction = real_number(validation_split, "validation_split")
        if fraction >= 1:
            raise ValueError(f"validation_split must be in [0, 1); got {fraction!r}")
        if validation_data is not None:
            if fraction > 0:
                raise ValueError("give validation_data or validation_split, not both")
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, Y_val)")
            X_val = as_matrix(validation_data[0], "X_val", model.dtype, model.layer_sizes[0])
            return X, targets, labels, weights, (X_val, model._dense_targets(
                validation_data[1], loss, X_val.shape[0]))
        if fraction == 0:
            return X, targets, labels, weights, None
        n_train = validation_split_point(X.shape[0], fraction)
        if n_train < 1 or n_train >= X.shape[0]:
            raise ValueError(f"validation_split={fraction} leaves no rows for "
                             f"{'training' if n_train < 1 else 'validation'} out of {X.shape[0]}")
        dense = targets if labels is None else \
            one_hot(labels[n_train:], model.layer_sizes[-1], model.dtype)
        validation = (X[n_train:], dense if labels is not None else dense[n_train:])
        return (X[:n_train], None if targets is None else targets[:n_train],
                None if labels is None else labels[:n_train],
                None if weights is None else weights[:n_train], validation)

    def _optimizer_state(self, model, optimizer, layout: str, rows: int) -> np.ndarray:
        """The optimizer's state for this model, kept from earlier fits when it fits: `rows`
        parameter-sized rows, as many as the rule reads (_core.Hyperparameters.state_rows)."""
        shape = (rows, model.n_params)
        state, key = self._state, self._state_key
        if (state is None or state.shape != shape or state.dtype != model.dtype or key is None
                or key[0]() is not model or key[1] != (optimizer.code_name, layout)):
            check_allocation(shape[0] * shape[1], model.dtype, "the optimizer state")
            state = np.zeros(shape, dtype=model.dtype)
            self._step = 0.0
            self._state_key = (weakref.ref(model), (optimizer.code_name, layout))
        self._state = state
        return state

    def _schedule_for(self, schedule):
        """The schedule object, kept across fits while the setting is the same object."""
        if self._schedule is None or self._schedule[0] is not self.schedule:
            self._schedule = (self.schedule, schedule)
        return self._schedule[1]


def validation_split_point(n_rows: int, fraction: float) -> int:
    """How many rows validation_split=fraction leaves for training: the first ones, the rest
    are held out (Keras's split point). The CLI's --validation-split uses it too."""
    return int(n_rows * (1 - fraction))


def chosen_metrics(metrics, loss, n_outputs: int) -> list:
    """[(name, function)] of the metrics to compute on validation data: `metrics` (names or
    callables), or the loss's defaults (accuracy for classification, MAE and R² else)."""
    if metrics is None:
        metrics = metrics_module.default_metrics(loss.name, n_outputs)
    elif isinstance(metrics, (str, bytes)) or callable(metrics):
        metrics = [metrics]
    return [(metrics_module.name(m), metrics_module.get(m)) for m in metrics]


def validation_logs(model: MLP, loss, validation, metric_functions) -> dict:
    """val_loss and val_<metric> for checked validation arrays (X_val, dense Y_val), from
    one forward pass."""
    X_val, Y_val = validation
    value, predictions = model._evaluate(X_val, Y_val, loss)
    logs = {"val_loss": value}
    for name, function in metric_functions:
        logs[f"val_{name}"] = float(function(Y_val, predictions))
    return logs
