"""The trainer: mini-batch stochastic gradient descent, one compiled call per epoch."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from fastbp import _core, losses
from fastbp.callbacks import Callback, ProgressPrinter
from fastbp._validation import as_matrix, as_targets, real_number, whole_number
from fastbp.model import MLP

# A step below this many floating-point operations runs faster on one BLAS thread: a
# second thread costs more in synchronisation than it saves (see docs/performance.md).
MULTITHREAD_MIN_FLOPS_PER_STEP = 1e9


@dataclass
class History:
    """What a fit did, epoch by epoch."""
    loss: list = field(default_factory=list)        # mean training loss of each epoch
    seconds: list = field(default_factory=list)     # wall time of each epoch
    n_samples: int = 0                              # rows per epoch
    diverged: bool = False                          # stopped because the loss was not finite

    @property
    def epochs(self) -> int:
        return len(self.loss)

    @property
    def history(self) -> dict:
        return {"loss": list(self.loss), "seconds": list(self.seconds)}

    @property
    def samples_per_second(self) -> list:
        return [self.n_samples / s if s > 0 else float("inf") for s in self.seconds]


class Trainer:
    """Plain mini-batch SGD: theta -= learning_rate * gradient of the batch's mean loss.

    loss: "mse", "mae", "categorical_crossentropy" ("cce"), "binary_crossentropy" ("bce")
        or a fastbp.losses.Loss.
    learning_rate: step size (>= 0).  epochs: passes over the data (>= 0).
    batch_size: rows per step (>= 1); the last batch of an epoch may be smaller.
    shuffle: draw a new order of the rows each epoch; False walks rows 0:b, b:2b, ...
    seed: seeds the shuffling; the same seed, data and thread count give bit-identical
        parameters.
    n_threads: BLAS threads during the fit; None picks from the size of a step.
    """

    def __init__(self, loss, learning_rate=0.01, epochs=1, batch_size=32, shuffle=True,
                 seed=None, n_threads=None):
        self.loss = loss
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.n_threads = n_threads
        self._checked()

    def __repr__(self) -> str:
        return (f"Trainer(loss={self.loss!r}, learning_rate={self.learning_rate!r}, "
                f"epochs={self.epochs!r}, batch_size={self.batch_size!r}, "
                f"shuffle={self.shuffle!r}, seed={self.seed!r}, n_threads={self.n_threads!r})")

    def _checked(self) -> dict:
        """The settings, validated (again at each fit: attributes may have changed)."""
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be True or False; got {self.shuffle!r}")
        if self.seed is not None:
            whole_number(self.seed, "seed", 0)
        if self.n_threads is not None:
            whole_number(self.n_threads, "n_threads", 1)
        return dict(loss=losses.get(self.loss),
                    learning_rate=real_number(self.learning_rate, "learning_rate"),
                    epochs=whole_number(self.epochs, "epochs", 0),
                    batch_size=whole_number(self.batch_size, "batch_size", 1))

    def fit(self, model: MLP, X, Y, callbacks=None, verbose: int = 0) -> History:
        """Train `model` in place on rows of X with targets Y; returns the History.

        Y: (n_samples, n_outputs) targets, or one class label per row for
        categorical cross-entropy. callbacks: fastbp.callbacks.Callback objects, called
        after each epoch. verbose=1 prints a line per epoch. Everything is checked before
        the model changes.
        """
        settings = self._checked()
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a fastbp.MLP; got {type(model).__name__}")
        callbacks = list(callbacks or ())
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be fastbp.callbacks.Callback objects; "
                                f"got {type(callback).__name__}")
        if verbose:
            callbacks.append(ProgressPrinter(settings["epochs"]))
        loss = settings["loss"]
        X = as_matrix(X, "X", model.dtype, model.layer_sizes[0])
        targets, labels = as_targets(Y, loss.name, model.layer_sizes[-1], X.shape[0], model.dtype)
        n_samples = X.shape[0]
        batch_size = min(settings["batch_size"], n_samples)
        learning_rate = settings["learning_rate"]

        if learning_rate > float(np.finfo(model.dtype).max):
            raise ValueError(f"learning_rate {learning_rate!r} does not fit the model's "
                             f"dtype {model.dtype.name}")

        plan = _core.Plan(model.layer_sizes, model._codes, batch_size)
        work = np.empty(plan.work_size, dtype=model.dtype)
        # The parameters at the start of the epoch, restored if the epoch diverges.
        backup = np.empty_like(model._params)
        targets = np.empty((0, 0), dtype=model.dtype) if targets is None else targets
        use_labels = labels is not None
        labels = labels if use_labels else np.empty(0, dtype=np.intp)
        rng = np.random.default_rng(self.seed)
        order = np.arange(n_samples, dtype=np.intp)
        history = History(n_samples=n_samples)

        with threadpool_limits(limits=self._thread_count(model, batch_size), user_api="blas"):
            for epoch in range(settings["epochs"]):
                if self.shuffle:
                    order = rng.permutation(n_samples).astype(np.intp, copy=False)
                np.copyto(backup, model._params)
                started = time.perf_counter()
                total, trained = _core.train_epoch(
                    plan, model._params, work, X, targets, labels, order, self.shuffle,
                    use_labels, loss.code, batch_size, learning_rate)
                seconds = time.perf_counter() - started
                # A non-finite loss stops the epoch early; an update that overflowed shows
                # only in the parameters.
                if trained < n_samples or not _core.all_finite(model._params.reshape(1, -1)):
                    np.copyto(model._params, backup)
                    history.diverged = True
                    warnings.warn(f"training stopped in epoch {epoch + 1}: the loss diverged "
                                  f"(NaN or infinite loss or parameters); the parameters are "
                                  f"restored to those at the start of that epoch. Try a "
                                  f"smaller learning_rate.", RuntimeWarning, stacklevel=2)
                    break
                history.loss.append(total / n_samples)
                history.seconds.append(seconds)
                logs = {"loss": total / n_samples, "seconds": seconds,
                        "samples_per_second": n_samples / seconds if seconds > 0 else float("inf")}
                # Every callback sees the epoch (no short-circuit); any of them may stop.
                if any([callback.on_epoch_end(epoch, logs) for callback in callbacks]):
                    break
        return history

    def _thread_count(self, model: MLP, batch_size: int) -> int:
        if self.n_threads is not None:
            return int(self.n_threads)
        sizes = model.layer_sizes
        flops = 6.0 * batch_size * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        if flops < MULTITHREAD_MIN_FLOPS_PER_STEP:
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
