"""Optimizers: the rule that turns a batch's gradient g into a parameter update.

Each rule is torch.optim's (defaults included), applied to the flat parameter buffer
inside the compiled epoch loop; the state (velocities, moments) lives in the trainer and
survives across fit and partial_fit calls. With weight decay wd (Trainer(weight_decay=...),
applied to weights, not biases) g becomes g + wd * p first, unless the decay is
decoupled (AdamW: p <- p * (1 - lr * wd) before the rule). t counts steps from 1.

- SGD:                  p <- p - lr * g
- SGD with momentum mu: v <- mu * v + g;  p <- p - lr * v
  nesterov:             v <- mu * v + g;  p <- p - lr * (g + mu * v)
- Adam:                 m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
                        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
- RMSprop:              v <- alpha v + (1 - alpha) g^2;  p <- p - lr * g / (sqrt(v) + eps)
- Adagrad:              s <- s + g^2;  p <- p - lr * g / (sqrt(s) + eps)
"""
from __future__ import annotations

import numpy as np

from fastbp import _core
from fastbp._registry import Registry
from fastbp._validation import check_in_dtype, real_number, rebuilt

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "Adagrad", "get", "lookup", "NAMES", "REGISTRY"]


def _fraction(value, name: str) -> float:
    value = real_number(value, name)
    if value >= 1:
        raise ValueError(f"{name} must be in [0, 1); got {value!r}")
    return value


def _epsilon(value) -> float:
    return real_number(value, "epsilon", above=True,
                       why=" (with 0, a weight whose gradients have all been 0, of an input "
                           "that is 0 in every row so far, would step by 0 / 0)")


class Optimizer:
    """Base class: `learning_rate` and the hyperparameters the compiled rule reads."""

    code_name = ""

    def __init__(self, learning_rate: float):
        self.learning_rate = real_number(learning_rate, "learning_rate")

    # hyperparameters in [0, 1) that must not round to 1 in the model's dtype
    _fractions = ("momentum", "beta1", "beta2", "alpha")
    # hyperparameters that must be > 0 (a refusal must not suggest 0)
    _positive = ("epsilon",)

    def check_dtype(self, dtype) -> None:
        """Refuse hyperparameters that the model's dtype cannot hold: the compiled rule
        uses them in that dtype (a beta2 of 0.99999999 is 1.0 in float32)."""
        for name, value in vars(self).items():
            if isinstance(value, float):
                check_in_dtype(value, name, dtype, below_one=name in self._fractions,
                               zero_allowed=name not in self._positive)

    def hyperparameters(self) -> dict:
        """Keyword arguments for fastbp._core.Hyperparameters."""
        return {"optimizer": _core.OPTIMIZER_CODES[self.code_name],
                "learning_rate": self.learning_rate}

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False):
        super().__init__(learning_rate)
        self.momentum = _fraction(momentum, "momentum")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False; got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum > 0")
        self.nesterov = nesterov

    @property
    def code_name(self):
        return "momentum" if self.momentum > 0 else "sgd"

    def check_dtype(self, dtype) -> None:
        super().check_dtype(dtype)
        # The state keeps the velocity multiplied by the momentum (the folded step), which
        # a momentum below the dtype's rounding pushes under its normal range, where the
        # epochs flush it to 0: a later fit with a larger momentum would find no velocity.
        # Such a momentum changes a step by less than its rounding anyway.
        rounding = float(np.finfo(dtype).eps)
        if 0 < self.momentum < rounding:
            raise ValueError(f"momentum={self.momentum!r} is below the model's "
                             f"{np.dtype(dtype).name} rounding ({rounding:.4g}): it changes no "
                             f"step beyond rounding, and the velocity, kept multiplied by it, "
                             f"may underflow to 0 (a later, larger momentum would find none); "
                             f"use 0 or at least {rounding:.4g}")

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma and Ba), as torch.optim.Adam."""

    code_name = "adam"

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8):
        super().__init__(learning_rate)
        self.beta1 = _fraction(beta1, "beta1")
        self.beta2 = _fraction(beta2, "beta2")
        self.epsilon = _epsilon(epsilon)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2,
                "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop (no momentum, not centered)."""

    code_name = "rmsprop"

    def __init__(self, learning_rate: float = 0.01, alpha: float = 0.99, epsilon: float = 1e-8):
        super().__init__(learning_rate)
        self.alpha = _fraction(alpha, "alpha")
        self.epsilon = _epsilon(epsilon)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta2": self.alpha, "epsilon": self.epsilon}


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad (no learning-rate decay, accumulator from 0)."""

    code_name = "adagrad"

    def __init__(self, learning_rate: float = 0.01, epsilon: float = 1e-10):
        super().__init__(learning_rate)
        self.epsilon = _epsilon(epsilon)

    def hyperparameters(self):
        return {**super().hyperparameters(), "epsilon": self.epsilon}


REGISTRY = Registry("optimizer", " or a fastbp.optimizers.Optimizer")
for _name, _class in (("sgd", SGD), ("adam", Adam), ("rmsprop", RMSprop), ("adagrad", Adagrad)):
    REGISTRY.register(_name, _class)
NAMES = REGISTRY.names


def lookup(name: str) -> type:
    """The Optimizer class for a name."""
    return REGISTRY.lookup(name)


def get(optimizer, learning_rate: float | None = None) -> Optimizer:
    """An Optimizer from a name, with `learning_rate` (None: the optimizer's own default,
    0.01 for SGD, RMSprop and Adagrad, 0.001 for Adam), or an Optimizer object, which
    brings its own: a copy made through its constructor, so that attributes changed since
    it was made are checked as the constructor checks them (a subclass of one of fastbp's
    own: checked so, and used as it is)."""
    if isinstance(optimizer, Optimizer):
        if optimizer.code_name not in _core.OPTIMIZER_CODES:
            raise TypeError(f"the compiled core knows the optimizers {', '.join(NAMES)}: an "
                            f"Optimizer must be one of them or derive from one; got "
                            f"{type(optimizer).__name__} with code_name "
                            f"{optimizer.code_name!r}")
        return rebuilt(optimizer, REGISTRY)
    cls = REGISTRY.lookup(optimizer)
    return cls() if learning_rate is None else cls(learning_rate)
