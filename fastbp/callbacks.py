"""Callbacks: code that runs between epochs of a fit (never inside one).

A fit calls, on each callback in the order given:

    set_model(model)                 at the start, before anything else
    on_train_begin(logs)             once, before the first epoch (logs["logged"]: the
                                     names of the figures each epoch's logs will hold)
    on_epoch_end(epoch, logs)        after each epoch; returning True stops training
    on_train_end(logs)               once, however the fit ends

`logs` holds the epoch's figures: "loss", "seconds", "samples_per_second",
"learning_rate" and, when the fit validates, "val_loss" and "val_<metric>" for each
metric (e.g. "val_accuracy", "val_mae", "val_r2").
"""
from __future__ import annotations

import math
import os
import sys

from fastbp._validation import real_number, whole_number
from fastbp.metrics import _check_logged, _check_monitor, _is_improvement, _monitored_value, \
    _resolve_mode

__all__ = ["Callback", "ProgressPrinter", "ProgressBar", "EarlyStopping", "ModelCheckpoint"]


class Callback:
    """Subclass and override what you need; return True from `on_epoch_end` to stop."""

    model = None

    def set_model(self, model) -> None:
        """Called at the start of each fit with the model being trained (kept in self.model)."""
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called once before the first epoch of a fit."""
        return None

    def on_epoch_end(self, epoch: int, logs: dict):
        """Called after each epoch (numbered from 0) with that epoch's figures:
        loss, seconds, samples_per_second (and more, see the module). The model holds the
        epoch's parameters. Return True to stop training."""
        return None

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once when a fit ends, whatever ended it."""
        return None


class ProgressPrinter(Callback):
    """Prints one line per epoch: loss and training speed."""

    def __init__(self, n_epochs: int, print_function=print):
        self.n_epochs = n_epochs
        self.print_function = print_function

    def on_epoch_end(self, epoch, logs):
        width = len(str(self.n_epochs))
        self.print_function(f"epoch {epoch + 1:>{width}}/{self.n_epochs}  loss {logs['loss']:.4f}  "
                            f"{logs['samples_per_second']:,.0f} samples/s")


# Keys of the logs that ProgressBar does not show as figures.
_NOT_SHOWN = ("loss", "seconds", "samples_per_second", "learning_rate")


def _number(value) -> str:
    value = float(value)
    if value == 0 or (1e-3 <= abs(value) < 1e5) or not math.isfinite(value):
        return f"{value:.4f}"
    return f"{value:.4e}"


def _figures(logs: dict) -> list[tuple[str, str]]:
    """(name, formatted value) for the loss, then every other numeric figure in the logs'
    order (training metrics, val_loss, val_ metrics), without timings and learning rate."""
    shown = [("loss", _number(logs["loss"]))] if "loss" in logs else []
    for key, value in logs.items():
        if key in _NOT_SHOWN or isinstance(value, bool):
            continue
        try:
            shown.append((str(key), _number(value)))
        except (TypeError, ValueError):
            continue
    return shown


class ProgressBar(Callback):
    """What verbose=1 shows: progress over the epochs of a fit.

    With tqdm installed: one bar over the epochs (a bar inside an epoch would need Python in
    the compiled loop), its postfix the last epoch's loss, validation figures and samples/s;
    written to `stream` (default sys.stderr, tqdm's own default). Without tqdm (or with
    use_tqdm=False): one line per epoch, as ProgressPrinter prints, to `stream` (default
    sys.stdout):

        epoch  3/10  loss 0.4123  val_loss 0.4410  val_accuracy 0.8750  1,234,567 samples/s

    n_epochs: the epochs the fit will run (None: unknown; no total shown).
    use_tqdm: None uses tqdm when it can be imported; True requires it; False never uses it.
    The epoch shown counts from 1 in each fit.
    """

    def __init__(self, n_epochs: int | None = None, stream=None, use_tqdm: bool | None = None):
        if n_epochs is not None:
            n_epochs = whole_number(n_epochs, "n_epochs", 0)
        if use_tqdm not in (None, True, False):
            raise TypeError(f"use_tqdm must be None, True or False; got {use_tqdm!r}")
        if stream is not None and not callable(getattr(stream, "write", None)):
            raise TypeError(f"stream must be a writable text stream (with a write method); "
                            f"got {type(stream).__name__}")
        self.n_epochs = n_epochs
        self.stream = stream
        self._tqdm = None
        if use_tqdm is not False:
            try:
                from tqdm import tqdm
            except ImportError:
                if use_tqdm:
                    raise ImportError("ProgressBar(use_tqdm=True) needs tqdm: "
                                      "pip install tqdm") from None
            else:
                self._tqdm = tqdm
        self._bar = None
        self._seen = 0

    @property
    def uses_tqdm(self) -> bool:
        return self._tqdm is not None

    def on_train_begin(self, logs=None):
        self._close()
        self._seen = 0
        if self._tqdm is not None:
            self._bar = self._tqdm(total=self.n_epochs, file=self.stream, unit="epoch",
                                   desc="fit", leave=True)

    def on_epoch_end(self, epoch, logs):
        self._seen += 1
        figures = _figures(logs)
        speed = logs.get("samples_per_second")
        speed = f"{speed:,.0f} samples/s" if speed is not None else ""
        if self._tqdm is not None:
            if self._bar is None:                        # on_train_begin was not called
                self.on_train_begin()
                self._seen = 1
            postfix = ", ".join([f"{key}={value}" for key, value in figures] +
                                ([speed] if speed else []))
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)
            return None
        if self.n_epochs is None:
            counter = f"epoch {self._seen}"
        else:
            counter = f"epoch {self._seen:>{len(str(self.n_epochs))}}/{self.n_epochs}"
        parts = [counter] + [f"{key} {value}" for key, value in figures] + ([speed] if speed else [])
        print("  ".join(parts), file=self.stream if self.stream is not None else sys.stdout,
              flush=True)
        return None

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _parameters(model) -> tuple[list, list]:
    if model is None:
        raise RuntimeError("this callback needs the model: the trainer calls set_model(model) "
                           "at the start of fit (call it yourself when driving it by hand)")
    return model.weights, model.biases


class EarlyStopping(Callback):
    """Stop training when `monitor` has stopped improving.

    An epoch improves when its value beats the best so far by more than min_delta (lower
    for mode "min", higher for "max"; "auto" maximises names containing "acc" or "r2",
    such as val_accuracy and val_r2, and minimises the rest). Training stops at the end of
    the `patience`-th epoch in a row without improvement, as in Keras (patience 0 or 1:
    the first epoch that does not improve). A NaN value never improves.

    restore_best_weights: keep a copy of the parameters of the best epoch and write them
    back into the model when the fit ends, whatever ended it (later epochs, or a Ctrl-C
    half-way through the epoch after the best one, which leaves some of its steps in the
    model: the copy is written back even when the best epoch was the last one finished).
    Attributes: best (the best value), best_epoch (its epoch, None before any),
    stopped_epoch (the epoch at whose end this callback stopped training, or None), wait
    (epochs since the last improvement). All are reset at the start of each fit.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0,
                 restore_best_weights=True, mode="auto"):
        self.monitor = _check_monitor(monitor, "EarlyStopping")
        self.patience = whole_number(patience, "patience", 0)
        self.min_delta = real_number(min_delta, "min_delta")
        if not isinstance(restore_best_weights, bool):
            raise TypeError(f"restore_best_weights must be True or False; "
                            f"got {restore_best_weights!r}")
        self.restore_best_weights = restore_best_weights
        self.mode = _resolve_mode(mode, self.monitor, "EarlyStopping")
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self._best_weights = None
        self._best_biases = None

    def on_train_begin(self, logs=None):
        _check_logged(logs, self.monitor, "EarlyStopping")   # before an epoch trains
        self._reset()

    def on_epoch_end(self, epoch, logs):
        current = _monitored_value(logs, self.monitor, "EarlyStopping")
        if _is_improvement(current, self.best, self.mode, self.min_delta):
            self.best = current
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                weights, biases = _parameters(self.model)
                if self._best_weights is None:
                    self._best_weights = [w.copy() for w in weights]
                    self._best_biases = [b.copy() for b in biases]
                else:                                    # reuse the copies: no allocation
                    for saved, live in zip(self._best_weights + self._best_biases,
                                           weights + biases):
                        saved[...] = live
            return None
        self.wait += 1
        if self.wait >= self.patience:                   # wait >= 1 here
            self.stopped_epoch = epoch
            return True
        return None

    def on_train_end(self, logs=None):
        # Not only when later epochs finished: an interrupted epoch's steps, or anything
        # else that wrote the parameters after the best epoch, leaves no epoch_end behind.
        if self.restore_best_weights and self._best_weights is not None:
            weights, biases = _parameters(self.model)
            for live, saved in zip(weights + biases, self._best_weights + self._best_biases):
                live[...] = saved


class ModelCheckpoint(Callback):
    """Save the model to `path` (model.save: atomic) after an epoch.

    save_best_only=True: only when `monitor` improves on the best value seen so far
    (strictly; mode as in EarlyStopping), so the file always holds the best model.
    save_best_only=False: after every epoch (the file holds the latest model; monitor is
    then not read). The best value is kept across fits, so a second fit only overwrites
    the file with a better model. Attributes: best, best_epoch, saved_epochs (the epochs
    after which the file was written, each counted from 0 in the fit that wrote it, as
    callbacks count epochs).
    """

    def __init__(self, path, monitor="val_loss", save_best_only=True, mode="auto"):
        if not isinstance(path, (str, bytes, os.PathLike)):   # what model.save takes
            raise TypeError(f"path must be a str, bytes or os.PathLike; "
                            f"got {type(path).__name__}")
        if not os.fspath(path):
            raise ValueError("path must not be empty")
        self.path = path
        self.monitor = _check_monitor(monitor, "ModelCheckpoint")
        if not isinstance(save_best_only, bool):
            raise TypeError(f"save_best_only must be True or False; got {save_best_only!r}")
        self.save_best_only = save_best_only
        self.mode = _resolve_mode(mode, self.monitor, "ModelCheckpoint")
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.saved_epochs = []

    def on_train_begin(self, logs=None):
        # Fail before training rather than after the first epoch.
        directory = os.path.dirname(os.path.abspath(os.fsdecode(self.path)))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"ModelCheckpoint cannot write {os.fsdecode(self.path)!r}: "
                                    f"the folder {directory!r} does not exist")
        from fastbp import _files     # a folder, socket, block device or too long a name
        _files.check_output(self.path)     # (and a folder that takes no new file)
        if self.save_best_only:
            _check_logged(logs, self.monitor, "ModelCheckpoint")

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            current = _monitored_value(logs, self.monitor, "ModelCheckpoint")
            if not _is_improvement(current, self.best, self.mode, 0.0):
                return None
        if self.model is None:
            _parameters(None)                            # raises the explanation
        self.model.save(self.path)
        # only a model that is on disk counts as the best
        if self.save_best_only:
            self.best, self.best_epoch = current, epoch
        self.saved_epochs.append(epoch)
        return None


def checked_callbacks(callbacks) -> list:
    """The callbacks as a new list, each checked to be a Callback."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (Callback, str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be fastbp.callbacks.Callback objects, in a list; "
                        f"got {callbacks!r}")
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be fastbp.callbacks.Callback objects; "
                            f"got {type(callback).__name__}")
    return callbacks
