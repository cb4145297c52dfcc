"""Metrics: `metric(y_true, y_pred) -> float` on plain arrays, computed between epochs.

- accuracy: the fraction of rows whose predicted class is the true class. y_pred holds
  scores or probabilities: with k >= 2 columns the predicted class is the argmax of the
  row; with one column (or 1-D) it is 1 where the probability is above 0.5 (binary).
  y_true holds class labels (one per row), one-hot (or probability) rows (their argmax is
  the class), or 0/1 values for a single output (values outside [0, 1] on either side of
  a single output are refused: class labels there were compared with 0.5).
- binary_accuracy: element-wise: the fraction of all outputs where (y_pred > 0.5) equals
  (y_true > 0.5); for multi-label models (binary cross-entropy with several outputs).
  With one output it equals accuracy.
- mae, mse: mean over all elements (samples and outputs) of |y - p| and (y - p)^2.
- r2: the coefficient of determination 1 - SS_res / SS_tot of each output, averaged over
  the outputs (scikit-learn's r2_score with multioutput="uniform_average"): 1.0 for an
  output that is constant and exactly predicted, 0.0 for one that is constant and missed,
  NaN with fewer than two rows.

A NaN in y_pred makes accuracy and binary_accuracy NaN (no class can be read from it; the
other metrics are NaN then by their arithmetic).

Larger is better for accuracy, binary_accuracy and r2; smaller for mae and mse
(`greater_is_better(name)`, which callbacks use in mode "auto").
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from fastbp import losses
from fastbp._registry import Registry
from fastbp._validation import numeric_array

__all__ = ["accuracy", "binary_accuracy", "mae", "mse", "r2", "get", "name", "NAMES",
           "default_metrics", "greater_is_better"]


def _two_arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    true = numeric_array(y_true, "y_true")
    pred = numeric_array(y_pred, "y_pred")
    for array, label in ((true, "y_true"), (pred, "y_pred")):
        if array.ndim not in (1, 2):
            raise ValueError(f"{label} must be a 1-D or 2-D array; got shape {array.shape}")
        if array.shape[0] == 0:
            raise ValueError(f"{label} is empty: it has no rows")
    if true.shape[0] != pred.shape[0]:
        raise ValueError(f"y_true has {true.shape[0]} rows but y_pred has {pred.shape[0]}")
    return true, pred


def _matching_matrices(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 (n, k) matrices of the same shape (1-D becomes one column)."""
    true, pred = _two_arrays(y_true, y_pred)
    true = true.reshape(true.shape[0], -1).astype(np.float64, copy=False)
    pred = pred.reshape(pred.shape[0], -1).astype(np.float64, copy=False)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape; got {true.shape} "
                         f"and {pred.shape}")
    return true, pred


def _holds_nan(pred) -> bool:
    return pred.dtype.kind == "f" and bool(np.isnan(pred).any())


def accuracy(y_true, y_pred) -> float:
    """Fraction of rows classified correctly (see the module's docstring)."""
    true, pred = _two_arrays(y_true, y_pred)
    if _holds_nan(pred):
        return float("nan")
    n_columns = 1 if pred.ndim == 1 else pred.shape[1]
    if n_columns == 1:                                   # binary: one probability per row
        if true.ndim == 2 and true.shape[1] != 1:
            raise ValueError(f"y_pred has one column (binary) but y_true has shape "
                             f"{true.shape}; give one 0/1 value per row")
        # (class labels on both sides, [0, 2, 1] against [0, 1, 1], were each compared
        # with 0.5: no error, a wrong figure)
        for values, label, what in ((true, "y_true", "0/1 values"),
                                    (pred, "y_pred", "probabilities of class 1")):
            if not (np.all(values >= 0) and np.all(values <= 1)):
                raise ValueError(f"{label} has one column (binary) and must hold {what} in "
                                 f"[0, 1]; for class labels 0..k-1 give y_pred one column "
                                 f"per class")
        predicted = pred.reshape(-1) > 0.5
        actual = true.reshape(-1) > 0.5
        return float(np.mean(predicted == actual))
    predicted = np.argmax(pred, axis=1)
    if true.ndim == 2 and true.shape[1] == n_columns:    # one-hot (or probability) rows
        actual = np.argmax(true, axis=1)
    elif true.ndim == 1 or true.shape[1] == 1:           # class labels
        actual = true.reshape(-1)
        if actual.dtype.kind == "f" and not np.array_equal(actual, np.round(actual)) \
                or actual.size and (actual.min() < 0 or actual.max() >= n_columns):
            raise ValueError(f"y_true (class labels) must be whole numbers "
                             f"0..{n_columns - 1}, one for each of y_pred's columns")
    else:
        raise ValueError(f"y_true must be class labels (n,) or rows of {n_columns} columns "
                         f"like y_pred; got shape {true.shape}")
    return float(np.mean(predicted == actual))


def binary_accuracy(y_true, y_pred) -> float:
    """Fraction of all outputs where (y_pred > 0.5) equals (y_true > 0.5)."""
    true, pred = _matching_matrices(y_true, y_pred)
    if _holds_nan(pred):
        return float("nan")
    return float(np.mean((pred > 0.5) == (true > 0.5)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error over all elements."""
    true, pred = _matching_matrices(y_true, y_pred)
    return float(np.mean(np.abs(true - pred)))


def mse(y_true, y_pred) -> float:
    """Mean squared error over all elements."""
    true, pred = _matching_matrices(y_true, y_pred)
    return float(np.mean(np.square(true - pred)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination, averaged over the outputs (sklearn's r2_score)."""
    true, pred = _matching_matrices(y_true, y_pred)
    if true.shape[0] < 2:
        return float("nan")
    residual = np.sum(np.square(true - pred), axis=0)
    total = np.sum(np.square(true - true.mean(axis=0)), axis=0)
    scores = np.ones(true.shape[1])
    varying = total != 0
    scores[varying] = 1.0 - residual[varying] / total[varying]
    scores[~varying & (residual != 0)] = 0.0             # constant output, missed
    return float(np.mean(scores))


REGISTRY = Registry("metric", ", or any callable (y_true, y_pred) -> float")
REGISTRY.register("accuracy", accuracy)
REGISTRY.register("binary_accuracy", binary_accuracy)
REGISTRY.register("mae", mae, aliases=("mean_absolute_error",))
REGISTRY.register("mse", mse, aliases=("mean_squared_error",))
REGISTRY.register("r2", r2)
NAMES = REGISTRY.names


def get(metric):
    """The metric function for a name (or alias), or `metric` itself if it is callable."""
    if isinstance(metric, str):
        return REGISTRY.lookup(metric)
    if callable(metric):
        return metric
    raise TypeError(f"a metric must be a name ({', '.join(NAMES)}) or a callable "
                    f"(y_true, y_pred) -> float; got {type(metric).__name__}")


def name(metric) -> str:
    """The name a metric is logged under: the canonical name for a name or alias
    ("mean_absolute_error" -> "mae"), the function's __name__ for a callable (the class
    name for a callable object). The trainer logs it as "val_<name>"."""
    if isinstance(metric, str):
        return REGISTRY.canonical(metric)
    get(metric)                                          # type check
    return getattr(metric, "__name__", type(metric).__name__)


def greater_is_better(monitor: str) -> bool:
    """True for a quantity to maximise: a name (possibly "val_"-prefixed) that contains
    "acc" or "r2"; losses and errors are minimised. What mode="auto" uses (where the name
    is neither: _resolve_mode refuses it)."""
    key = monitor.lower()
    return "acc" in key or "r2" in key


def _direction_known(monitor: str) -> bool:
    """Whether mode="auto" can tell which way `monitor` improves: an accuracy or r2 (up),
    a loss or error (down); not a metric of the user's own (f1, auc: up; it was minimised,
    so EarlyStopping kept the worst epoch)."""
    key = monitor.lower()
    return greater_is_better(key) or any(word in key for word in
                                         ("loss", "mae", "mse", "error"))


def default_metrics(loss, n_outputs: int | None = None) -> list[str]:
    """The metrics reported by default for a loss (a name, alias or Loss object): the
    loss's own default_metrics.

    Classification (categorical or binary cross-entropy): ["accuracy"]; but binary
    cross-entropy with n_outputs > 1 (multi-label): ["binary_accuracy"], since the argmax
    of independent probabilities is not a class. Regression (mse, mae, huber):
    ["mae", "r2"].
    """
    if n_outputs is not None and (isinstance(n_outputs, bool)
                                  or not isinstance(n_outputs, numbers.Integral)
                                  or n_outputs < 1):
        raise ValueError(f"n_outputs must be None or a whole number >= 1; got {n_outputs!r}")
    try:
        loss = losses.get(loss)
    except ValueError:
        raise ValueError(f"no default metrics for the loss {loss!r}; known losses: "
                         f"{', '.join(losses.NAMES)}") from None
    return loss.default_metrics(n_outputs)


def _monitor_hint(monitor: str, logged,
                  source: str = "validation_data or validation_split in fit") -> str:
    """Why a validation figure may be missing: no validation in the fit (when nothing
    validation is logged; source: what gives a fit validation figures), else nothing (the
    name is wrong: the message lists the names)."""
    if monitor.startswith("val_") and not any(str(key).startswith("val_") for key in logged):
        return f" (validation figures need {source})"
    return ""


def _monitored_value(logs, monitor: str, owner: str) -> float:
    """logs[monitor] as a float, or a ValueError that says which keys the logs have."""
    if not isinstance(logs, dict) or monitor not in logs:
        keys = ", ".join(map(str, logs)) if isinstance(logs, dict) else "none"
        hint = _monitor_hint(monitor, logs if isinstance(logs, dict) else ())
        raise ValueError(f"{owner} monitors {monitor!r}, which this epoch's logs do not have"
                         f"{hint}; they have: {keys}")
    value = logs[monitor]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: logs[{monitor!r}] must be a number; got {value!r}")
    return float(value)


def _check_logged(logs, monitor: str, owner: str) -> None:
    """At a fit's start (on_train_begin): a ValueError if the figures its epochs will log
    (logs["logged"], where the fit gives them) lack `monitor`, before any epoch trains."""
    logged = logs.get("logged") if isinstance(logs, dict) else None
    if logged is not None and monitor not in logged:
        hint = _monitor_hint(monitor, logged, *([logs["validation_source"]]
                                                if "validation_source" in logs else []))
        raise ValueError(f"{owner} monitors {monitor!r}, which this fit's epochs do not log"
                         f"{hint}; they log: {', '.join(map(str, logged))}")


def _is_improvement(current: float, best: float, mode: str, min_delta: float) -> bool:
    """current beats best by more than min_delta (NaN never improves)."""
    if math.isnan(current):
        return False
    if mode == "min":
        return current < best - min_delta
    return current > best + min_delta


def _resolve_mode(mode, monitor: str, owner: str) -> str:
    """"min" or "max" from "auto", "min" or "max"."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max'; got {mode!r}")
    if mode == "auto":
        if not _direction_known(monitor):
            raise ValueError(f"{owner}: mode='auto' cannot tell whether {monitor!r} improves "
                             f"up or down (it knows losses, errors, accuracies and r2); give "
                             f"mode='max' or mode='min'")
        return "max" if greater_is_better(monitor) else "min"
    return mode


def _check_monitor(monitor, owner: str) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"{owner}: monitor must be the name of a logged figure, such as "
                        f"'val_loss' or 'loss'; got {monitor!r}")
    return monitor
