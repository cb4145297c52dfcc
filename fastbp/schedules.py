"""Learning-rate schedules: the learning rate of each epoch, decided between epochs.

A step of a schedule is one epoch: every batch of an epoch uses the same learning rate.
`epoch` counts from 0 over the trainer's lifetime, continuing across `fit` and
`partial_fit` calls (a second `fit` of 5 epochs after a first of 5 runs epochs 5..9).

The trainer asks `schedule.learning_rate(epoch, base_learning_rate)` before each epoch,
where base_learning_rate is the Trainer's (or the optimizer's) learning_rate, and calls
`schedule.on_epoch_end(epoch, logs)` after it with the epoch's logs ("loss", "val_loss",
...); only ReduceOnPlateau uses those. `reset()` restarts a schedule's own state.

    Constant()                      lr
    StepDecay(step_size, gamma)     lr * gamma ** (epoch // step_size)
    ExponentialDecay(gamma)         lr * gamma ** epoch
    InverseScaling(power, scale)    lr / (1 + scale * epoch) ** power
    Cosine(total_epochs, min_lr)    min_lr + (lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2,
                                    then min_lr from epoch total_epochs on
    ReduceOnPlateau(...)            lr * factor ** (number of plateaus so far), not below min_lr

They equal PyTorch's StepLR, ExponentialLR, CosineAnnealingLR and ReduceLROnPlateau (mode
"min", threshold_mode "abs") stepped once per epoch; PyTorch multiplies recursively, so
values may differ from these closed forms in the last bits.
"""
from __future__ import annotations

import math

from fastbp._registry import Registry
from fastbp._validation import real_number, rebuilt, whole_number
from fastbp.metrics import _check_logged, _check_monitor, _is_improvement, _monitored_value, \
    _resolve_mode

__all__ = ["Schedule", "Constant", "StepDecay", "ExponentialDecay", "InverseScaling",
           "Cosine", "ReduceOnPlateau", "get", "NAMES", "REGISTRY"]


def _gamma(value, name: str = "gamma") -> float:
    value = real_number(value, name)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (a decay); got {value!r}")
    return value


def checked_rate(schedule, epoch: int, rate) -> float:
    """A schedule's rate for `epoch` as a float, checked as the trainer's learning_rate is:
    a finite number >= 0, else a ValueError naming the schedule and the epoch (the trainer
    checks it too: a subclass may override learning_rate itself)."""
    try:
        return real_number(rate, "learning_rate")
    except (TypeError, ValueError):
        raise ValueError(f"{type(schedule).__name__} gave the learning rate {rate!r} for "
                         f"epoch {epoch}; a rate must be a finite number >= 0") from None


class Schedule:
    """The base class: a schedule that keeps the learning rate constant.

    Subclasses override `_rate(epoch, base_learning_rate)`; `learning_rate` checks the
    arguments and calls it. `usage`: how to construct one whose constructor needs
    arguments (get() cannot build it from its name alone).
    """

    usage = ""

    def learning_rate(self, epoch: int, base_learning_rate: float) -> float:
        """The learning rate of `epoch` (from 0, over the trainer's lifetime)."""
        epoch = whole_number(epoch, "epoch", 0)
        base_learning_rate = real_number(base_learning_rate, "base_learning_rate")
        return checked_rate(self, epoch, self._rate(epoch, base_learning_rate))

    def _rate(self, epoch: int, base: float) -> float:
        return base

    def on_train_begin(self, logs: dict) -> None:
        """Called before a fit's first epoch with logs["logged"], the figures its epochs
        will log; only ReduceOnPlateau uses it (to refuse a monitor they lack)."""
        return None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Called after each epoch with its logs; only ReduceOnPlateau uses it."""
        return None

    def reset(self) -> None:
        """Restart the schedule's own state (only ReduceOnPlateau has any)."""
        return None

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._arguments().items())
        return f"{type(self).__name__}({arguments})"

    def _arguments(self) -> dict:
        return {}


class Constant(Schedule):
    """The same learning rate every epoch."""


class StepDecay(Schedule):
    """lr * gamma ** (epoch // step_size): multiply by gamma every step_size epochs
    (PyTorch's StepLR)."""

    usage = "StepDecay(step_size, gamma=0.1)"

    def __init__(self, step_size, gamma=0.1):
        self.step_size = whole_number(step_size, "step_size", 1)
        self.gamma = _gamma(gamma)

    def _rate(self, epoch, base):
        return base * self.gamma ** (epoch // self.step_size)

    def _arguments(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """lr * gamma ** epoch: multiply by gamma every epoch (PyTorch's ExponentialLR)."""

    usage = "ExponentialDecay(gamma)"

    def __init__(self, gamma):
        self.gamma = _gamma(gamma)

    def _rate(self, epoch, base):
        return base * self.gamma ** epoch

    def _arguments(self):
        return {"gamma": self.gamma}


class InverseScaling(Schedule):
    """lr / (1 + scale * epoch) ** power.

    scikit-learn's MLPClassifier/MLPRegressor with learning_rate="invscaling" update the
    rate once per epoch as learning_rate_init / (t + 1) ** power_t, where t counts the
    training samples seen so far (epoch * n_samples): InverseScaling(power=power_t,
    scale=n_samples) gives the same sequence. Here the default scale=1 counts epochs.
    (SGDClassifier's invscaling instead updates after every sample, which a per-epoch
    schedule cannot do.)
    """

    def __init__(self, power=0.5, scale=1.0):
        self.power = real_number(power, "power")
        self.scale = real_number(scale, "scale")

    def _rate(self, epoch, base):
        try:
            return base / (1.0 + self.scale * epoch) ** self.power
        except OverflowError:                            # the denominator is beyond a float
            return 0.0

    def _arguments(self):
        return {"power": self.power, "scale": self.scale}


class Cosine(Schedule):
    """Cosine annealing from lr down to min_learning_rate over total_epochs epochs,
    then held at min_learning_rate (PyTorch's CosineAnnealingLR with T_max=total_epochs
    and eta_min=min_learning_rate, which would instead rise again after T_max):

        min_lr + (lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2
    """

    usage = "Cosine(total_epochs, min_learning_rate=0.0)"

    def __init__(self, total_epochs, min_learning_rate=0.0):
        self.total_epochs = whole_number(total_epochs, "total_epochs", 1)
        self.min_learning_rate = real_number(min_learning_rate, "min_learning_rate")

    def _rate(self, epoch, base):
        low = self.min_learning_rate
        if epoch >= self.total_epochs:
            return low
        return low + (base - low) * (1.0 + math.cos(math.pi * epoch / self.total_epochs)) / 2.0

    def _arguments(self):
        return {"total_epochs": self.total_epochs, "min_learning_rate": self.min_learning_rate}


class ReduceOnPlateau(Schedule):
    """Multiply the learning rate by `factor` when `monitor` has stopped improving.

    PyTorch's ReduceLROnPlateau(mode="min", threshold_mode="abs", threshold=min_delta),
    stepped with logs[monitor] after each epoch: an epoch improves when its value is below
    the best so far minus min_delta; after more than `patience` epochs in a row without
    improvement the rate is reduced (new = max(old * factor, min_learning_rate), skipped
    when that changes it by eps or less) and the count restarts; for `cooldown` epochs after a
    reduction no bad epochs are counted. The reduced rate applies from the next epoch.
    mode="max" (or "auto" with a monitor containing "acc" or "r2") looks for increases.

    monitor defaults to "val_loss": the fit then needs validation data; a monitor the
    fit's epochs will not log raises a ValueError naming the keys they log, before the first
    epoch trains (on_train_begin; a monitor missing from an epoch's logs all the same, at
    its end).
    The state (best value, counters, reductions) carries over across fits; reset() clears it.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4,
                 min_learning_rate=0.0, cooldown=0, mode="auto", eps=1e-8):
        self.monitor = _check_monitor(monitor, "ReduceOnPlateau")
        self.factor = real_number(factor, "factor")
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be in (0, 1) (each plateau multiplies the learning "
                             f"rate by it); got {factor!r}")
        self.patience = whole_number(patience, "patience", 0)
        self.min_delta = real_number(min_delta, "min_delta")
        self.min_learning_rate = real_number(min_learning_rate, "min_learning_rate")
        self.cooldown = whole_number(cooldown, "cooldown", 0)
        self.mode = _resolve_mode(mode, self.monitor, "ReduceOnPlateau")
        self._mode_argument = mode
        self.eps = real_number(eps, "eps")
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.n_reductions = 0          # plateaus seen: each one multiplies the rate by factor

    def on_train_begin(self, logs) -> None:
        _check_logged(logs, self.monitor, "ReduceOnPlateau")     # before an epoch trains

    def on_epoch_end(self, epoch, logs) -> None:
        current = _monitored_value(logs, self.monitor, "ReduceOnPlateau")
        if _is_improvement(current, self.best, self.mode, self.min_delta):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.n_reductions += 1
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _rate(self, epoch, base):
        # Replay the reductions as PyTorch applies them, so the values match to the bit.
        rate = base
        for _ in range(self.n_reductions):
            reduced = max(rate * self.factor, self.min_learning_rate)
            if rate - reduced <= self.eps:
                break                  # at (or below) the floor: later reductions change nothing
            rate = reduced
        return rate

    def _arguments(self):
        return {"monitor": self.monitor, "factor": self.factor, "patience": self.patience,
                "min_delta": self.min_delta, "min_learning_rate": self.min_learning_rate,
                "cooldown": self.cooldown, "mode": self._mode_argument, "eps": self.eps}


# The names `get` accepts, in one table: a schedule whose constructor needs arguments is
# named for messages only (`usage` says what to construct instead).
REGISTRY = Registry("schedule", ", or a fastbp.schedules.Schedule object")
for _name, _class in (("constant", Constant), ("step", StepDecay),
                      ("exponential", ExponentialDecay), ("inverse_scaling", InverseScaling),
                      ("cosine", Cosine), ("plateau", ReduceOnPlateau)):
    REGISTRY.register(_name, _class)
NAMES = REGISTRY.names


def get(spec) -> Schedule:
    """A Schedule from None (constant), a name, or a Schedule object (returned as is, its
    state with it; one of fastbp's own classes, or a subclass of one, is first checked as
    its constructor checks, since its attributes may have changed)."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        rebuilt(spec, REGISTRY)
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"schedule must be None, a name ({', '.join(NAMES)}) or a "
                        f"fastbp.schedules.Schedule; got {type(spec).__name__}")
    cls = REGISTRY.lookup(spec)
    if cls.usage:
        raise ValueError(f"the schedule {spec!r} needs arguments: pass "
                         f"fastbp.schedules.{cls.usage} instead of its name")
    return cls()
