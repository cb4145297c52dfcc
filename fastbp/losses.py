"""The losses, by name or as objects that compute a value and its gradient on plain arrays.

Conventions (shared with the compiled core, which fuses them with the output layer):
- mse: mean over all elements of (p - y)^2;  mae: mean over all elements of |p - y|;
- categorical_crossentropy (cce): -(1/n) sum_i sum_k y_ik log p_ik, with one-hot rows or
  integer class labels as targets;
- binary_crossentropy (bce): mean over all elements of -(y log p + (1 - y) log(1 - p));
- huber: mean over all elements of d^2/2 where |d| <= delta, delta * (|d| - delta/2)
  elsewhere, d = p - y (Huber(delta=1.0); the name "huber" uses delta 1).
On plain arrays (and for an output activation other than softmax with CCE or sigmoid with
BCE) probabilities are clipped to [1e-7, 1 - 1e-7] before the log, and the gradient is that
of the clipped function. softmax + CCE and sigmoid + BCE are computed from the logits
inside the model: exact, stable, with the fused gradient p - y.
"""
from __future__ import annotations

import numpy as np

from fastbp import _core
from fastbp._validation import as_targets, check_in_dtype, numeric_array, one_hot, real_number

__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "CategoricalCrossentropy",
           "BinaryCrossentropy", "Huber", "get", "NAMES"]


class Loss:
    """A loss: `value(y_true, y_pred)` and `gradient(y_true, y_pred)` on plain arrays."""

    name = ""
    parameter = 1.0     # a number the loss needs (Huber's delta)

    @property
    def code(self) -> int:
        return _core.LOSS_CODES[self.name]

    def check_dtype(self, dtype) -> None:
        """Refuse a parameter that the model's dtype cannot hold (the kernel uses it there)."""
        return None

    def value(self, y_true, y_pred) -> float:
        return self._evaluate(y_true, y_pred, want_gradient=False)[0]

    def gradient(self, y_true, y_pred) -> np.ndarray:
        """d value / d y_pred, with y_pred's shape."""
        return self._evaluate(y_true, y_pred, want_gradient=True)[1]

    __call__ = value

    def _evaluate(self, y_true, y_pred, want_gradient):
        predictions = numeric_array(y_pred, "y_pred")
        shape = predictions.shape
        if predictions.ndim == 1:
            predictions = predictions.reshape(-1, 1)
        if predictions.ndim != 2 or predictions.size == 0:
            raise ValueError(f"y_pred must be a non-empty 1-D or 2-D array; got shape {shape}")
        dtype = np.float32 if predictions.dtype == np.float32 else np.float64
        # The kernel overwrites its input with the activation (identity here): work on a copy.
        outputs = np.array(predictions, dtype=dtype, order="C", copy=True)
        if not np.isfinite(outputs).all():
            raise ValueError("y_pred contains NaN or infinity")
        targets, labels = as_targets(y_true, self.name, outputs.shape[1], outputs.shape[0], dtype)
        if labels is not None:
            targets = one_hot(labels, outputs.shape[1], outputs.dtype)
        value, grad = _core.output_loss(outputs, targets, _core.ACTIVATION_CODES["identity"],
                                        self.code, self.parameter, want_gradient)
        return float(value), (grad.reshape(shape) if want_gradient else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.parameter == other.parameter

    def __hash__(self) -> int:
        return hash((type(self), self.parameter))


class MeanSquaredError(Loss):
    name = "mse"


class MeanAbsoluteError(Loss):
    name = "mae"


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"


class Huber(Loss):
    """Quadratic for errors up to `delta`, linear beyond (torch.nn.HuberLoss)."""

    name = "huber"

    def __init__(self, delta: float = 1.0):
        delta = real_number(delta, "delta")
        if delta <= 0:
            raise ValueError(f"delta must be > 0; got {delta!r}")
        self.parameter = delta

    @property
    def delta(self) -> float:
        return self.parameter

    def check_dtype(self, dtype) -> None:
        check_in_dtype(self.parameter, "delta", dtype)

    def __repr__(self) -> str:
        return f"Huber(delta={self.parameter!r})"


_BY_NAME = {cls.name: cls for cls in (MeanSquaredError, MeanAbsoluteError,
                                      CategoricalCrossentropy, BinaryCrossentropy, Huber)}
_ALIASES = {"cce": "categorical_crossentropy", "bce": "binary_crossentropy",
            "mean_squared_error": "mse", "mean_absolute_error": "mae"}
NAMES = tuple(_BY_NAME) + tuple(_ALIASES)


def get(loss) -> Loss:
    """A Loss from its name (or alias) or a Loss object."""
    if isinstance(loss, Loss):
        if loss.name not in _BY_NAME:
            raise ValueError(f"the compiled core knows the losses {', '.join(_BY_NAME)}; "
                             f"got {type(loss).__name__} named {loss.name!r}")
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a fastbp.losses.Loss; got {type(loss).__name__}")
    name = _ALIASES.get(loss.lower(), loss.lower())
    if name not in _BY_NAME:
        raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(NAMES)}")
    return _BY_NAME[name]()
