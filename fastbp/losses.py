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
from fastbp._registry import Registry
from fastbp._validation import (as_targets, check_in_dtype, numeric_array, one_hot, real_number,
                                rebuilt)

__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "CategoricalCrossentropy",
           "BinaryCrossentropy", "Huber", "get", "NAMES", "REGISTRY"]

REGISTRY = Registry("loss", " or a fastbp.losses.Loss")


def _register(cls):
    """Class decorator: the loss is known by its name and aliases (one table)."""
    REGISTRY.register(cls.name, cls, cls.aliases)
    return cls


class Loss:
    """A loss: `value(y_true, y_pred)` and `gradient(y_true, y_pred)` on plain arrays, and
    what the rest of fastbp asks of a loss (nothing else compares loss names):

    name, aliases: the canonical name (the compiled kernel's case) and other names.
    target_forms: the targets it takes, in words (for messages and the CLI).
    output_activation: the output activation it pairs with naturally (softmax + CCE and
        sigmoid + BCE use the fused, stable gradient).
    is_classification: the targets are classes (class_weight, accuracy, label encoding).
    takes_labels(shape, n_outputs), check_targets(Y): how targets are read and checked
        (check_targets returns them as the loss takes them; None: as they are).
    default_metrics(n_outputs), classes_of(...): validation metrics and class weights.
    Adding a loss: a subclass here, registered, and a case in the compiled kernel.
    """

    name = ""
    aliases = ()
    parameter = 1.0     # a number the loss needs (Huber's delta; the cross-entropies' clip)
    target_forms = ("real values",)
    output_activation = "identity"
    is_classification = False

    @property
    def code(self) -> int:
        return _core.LOSS_CODES[self.name]

    def check_dtype(self, dtype) -> None:
        """Refuse a parameter that the model's dtype cannot hold (the kernel uses it there)."""
        return None

    def check_output(self, activation: str) -> None:
        """Refuse a parameter that an output layer of `activation` would leave unused."""
        return None

    # ---- targets ----
    def takes_labels(self, shape: tuple, n_outputs: int) -> bool:
        """True if targets of this shape are class labels, one per row."""
        return False

    def check_targets(self, targets):
        """Dense (n, n_outputs) targets as the loss takes them (the same array, or one made
        from it; None is taken as the same); a ValueError for targets outside what the loss
        is defined on."""
        return targets

    # ---- what a fit reports and weighs ----
    def default_metrics(self, n_outputs=None) -> list:
        """The metrics a fit reports on validation data by default."""
        return ["mae", "r2"]

    def classes_of(self, targets, labels, n_outputs: int):
        """(class of each row, number of classes), for class_weight."""
        raise ValueError("class_weight needs a classification loss "
                         "(categorical or binary cross-entropy)")

    def n_classes(self, n_outputs: int) -> int:
        """The number of classes class_weight weighs on a model of n_outputs outputs,
        before any data is read (classes_of's refusal where it weighs none)."""
        return self.classes_of(np.zeros((0, n_outputs)), None, n_outputs)[1]

    # ---- on plain arrays ----
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
        targets, labels = as_targets(y_true, self, outputs.shape[1], outputs.shape[0], dtype)
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


@_register
class MeanSquaredError(Loss):
    name = "mse"
    aliases = ("mean_squared_error",)


@_register
class MeanAbsoluteError(Loss):
    name = "mae"
    aliases = ("mean_absolute_error",)


class _LogLoss(Loss):
    """The cross-entropies' optional clip: with clip=c the loss's value (not its gradient)
    takes each probability clipped to [c, 1 - c] first, as scikit-learn's log_loss does
    (c = the dtype's machine epsilon there: a row's loss at most -log c), where the output
    layer is the fused one (softmax with CCE, sigmoid with BCE); None: the exact loss."""

    parameter = 0.0

    def __init__(self, clip=None):
        if clip is not None:
            clip = real_number(clip, "clip")
            if not 0 < clip < 0.5:
                raise ValueError(f"clip must be in (0, 0.5) (or None); got {clip!r}")
            self.parameter = clip

    @property
    def clip(self):
        return self.parameter or None

    def check_dtype(self, dtype) -> None:
        if self.parameter:
            # (1 - clip first: it names the least clip, where the smallest normal number,
            # far below it, did not)
            one = np.dtype(dtype).type(1)
            if one - np.dtype(dtype).type(self.parameter) == one:   # the kernel's 1 - clip
                raise ValueError(f"clip={self.parameter!r} is too small for the model's "
                                 f"{np.dtype(dtype).name}: 1 - clip rounds to 1; use at least "
                                 f"{float(np.finfo(dtype).epsneg):.4g}")
            check_in_dtype(self.parameter, "clip", dtype, zero_allowed=False)

    def check_output(self, activation: str) -> None:
        # (the unfused output's loss clips at its own bound: a clip given there went unused,
        # unsaid)
        if self.parameter and activation != self.output_activation:
            raise ValueError(f"clip={self.parameter!r} applies where the output layer is "
                             f"{self.output_activation} (fused with {self.name}); this model's "
                             f"is {activation}: use clip=None, or a {self.output_activation} "
                             f"output layer")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'' if not self.parameter else f'clip={self.parameter!r}'})"


@_register
class CategoricalCrossentropy(_LogLoss):
    """-(1/n) sum_i sum_k y_ik log p_ik; targets: class labels 0..k-1 (one per row), or
    one-hot (or probability) rows that sum to 1. clip: see _LogLoss."""

    name = "categorical_crossentropy"
    aliases = ("cce",)
    target_forms = ("class labels", "one-hot rows", "probability rows")
    output_activation = "softmax"
    is_classification = True

    def takes_labels(self, shape, n_outputs):
        return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1 and n_outputs > 1)

    def check_targets(self, targets):
        """Rows that sum to 1 within 1e-3 are taken, each scaled to sum to 1 where it is
        off by more than its rounding (rounded probabilities, 0.333 three times): the
        softmax output's gradient p - y is the exact gradient of -sum y log p only for rows
        that do. A copy only then; rows within rounding of 1 as they are."""
        row_sums = targets.sum(axis=1, dtype=np.float64)
        # (1e-3 off as the values are written: 0.334, 0.334, 0.333 was refused, its sum
        # 1.0000000000000112e-3 off after the binary rounding of the three and their sum)
        within = 1e-3 + np.finfo(targets.dtype).eps + targets.shape[1] * np.finfo(np.float64).eps
        if targets.min() < 0 or not np.all(np.abs(row_sums - 1.0) <= within):
            raise ValueError("Y for categorical cross-entropy must be one-hot (or probability) "
                             "rows that sum to 1, or integer class labels, one per row")
        off = np.abs(row_sums - 1.0) > targets.shape[1] * np.finfo(targets.dtype).eps
        if not off.any():
            return targets
        scaled = targets.copy()
        scaled[off] = targets[off] / row_sums[off, None]
        return scaled

    def default_metrics(self, n_outputs=None):
        return ["accuracy"]

    def classes_of(self, targets, labels, n_outputs):
        return (labels if labels is not None else targets.argmax(axis=1)), n_outputs


@_register
class BinaryCrossentropy(_LogLoss):
    """Mean over all elements of -(y log p + (1 - y) log(1 - p)); targets in [0, 1]: 0/1
    values or probabilities, one column per independent output (multi-label). clip: see
    _LogLoss."""

    name = "binary_crossentropy"
    aliases = ("bce",)
    target_forms = ("0/1 values", "probabilities")
    output_activation = "sigmoid"
    is_classification = True

    def check_targets(self, targets):
        if targets.min() < 0 or targets.max() > 1:
            raise ValueError("Y for binary cross-entropy must lie in [0, 1]")
        return targets

    def default_metrics(self, n_outputs=None):
        # with several outputs (multi-label) the argmax of independent probabilities is no class
        return ["binary_accuracy"] if n_outputs is not None and n_outputs > 1 else ["accuracy"]

    def classes_of(self, targets, labels, n_outputs):
        if n_outputs != 1:
            raise ValueError("class_weight with binary cross-entropy needs a single output "
                             "(classes 0 and 1); give sample_weight for multi-label data")
        return (targets[:, 0] >= 0.5).astype(np.intp), 2


@_register
class Huber(Loss):
    """Quadratic for errors up to `delta`, linear beyond (torch.nn.HuberLoss)."""

    name = "huber"
    aliases = ("huber_loss",)

    def __init__(self, delta: float = 1.0):
        self.parameter = real_number(delta, "delta", above=True)

    @property
    def delta(self) -> float:
        return self.parameter

    def check_dtype(self, dtype) -> None:
        check_in_dtype(self.parameter, "delta", dtype, zero_allowed=False)

    def __repr__(self) -> str:
        return f"Huber(delta={self.parameter!r})"


NAMES = REGISTRY.names


def get(loss) -> Loss:
    """A Loss from its name (or alias) or a Loss object (of fastbp's own classes: a copy made
    through its constructor, so that a parameter changed since is checked as there)."""
    if isinstance(loss, Loss):
        if loss.name not in REGISTRY.canonical_names:
            raise ValueError(f"the compiled core knows the losses "
                             f"{', '.join(REGISTRY.canonical_names)}; got "
                             f"{type(loss).__name__} named {loss.name!r}")
        return rebuilt(loss, REGISTRY)
    return REGISTRY.lookup(loss)()
