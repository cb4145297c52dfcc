"""Learning-rate schedules: exact formulas, PyTorch's schedulers, state, validation."""
import math
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import schedules
from fastbp.schedules import (Constant, Cosine, ExponentialDecay, InverseScaling,
                              ReduceOnPlateau, Schedule, StepDecay)

BASE = 0.1


def rates(schedule, n, base=BASE, start=0):
    return [schedule.learning_rate(epoch, base) for epoch in range(start, start + n)]


# ---- hand-computed values ----

def test_constant():
    assert rates(Constant(), 5) == [BASE] * 5
    assert Constant().learning_rate(10**9, 0.25) == 0.25


def test_step_decay_by_hand():
    got = rates(StepDecay(3, gamma=0.5), 10, base=0.8)
    assert got == [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1]
    assert StepDecay(2).learning_rate(4, 1.0) == pytest.approx(0.01, rel=1e-15)


def test_exponential_decay_by_hand():
    got = rates(ExponentialDecay(0.5), 5, base=1.0)
    assert got == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert ExponentialDecay(0.9).learning_rate(3, 0.1) == pytest.approx(0.0729, rel=1e-14)
    assert ExponentialDecay(1.0).learning_rate(1000, 0.3) == 0.3


def test_inverse_scaling_by_hand():
    schedule = InverseScaling()                           # power 0.5, scale 1
    assert rates(schedule, 4, base=1.0) == pytest.approx(
        [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5], rel=1e-15)
    assert InverseScaling(power=1.0, scale=0.5).learning_rate(4, 0.3) == pytest.approx(0.1)
    assert InverseScaling(power=0.0).learning_rate(7, 0.3) == 0.3
    assert InverseScaling(power=2.0, scale=0.0).learning_rate(7, 0.3) == 0.3


def test_inverse_scaling_equals_sklearn_mlp_invscaling():
    """MLPClassifier(learning_rate="invscaling") uses lr0 / (t + 1) ** power_t in each epoch,
    t = samples seen so far: InverseScaling(power_t, scale=n_samples)."""
    lr0, power_t, n = 0.01, 0.5, 200
    schedule = InverseScaling(power=power_t, scale=n)
    for epoch in range(6):
        sklearn_rate = float(lr0) / (epoch * n + 1) ** power_t
        assert schedule.learning_rate(epoch, lr0) == pytest.approx(sklearn_rate, rel=1e-15)


def test_inverse_scaling_never_overflows():
    assert InverseScaling(power=50.0, scale=1e300).learning_rate(10**6, 1.0) == 0.0


def test_cosine_by_hand():
    schedule = Cosine(4, min_learning_rate=0.02)
    got = rates(schedule, 7, base=0.1)
    half = 0.02 + 0.08 * (1 + math.cos(math.pi / 4)) / 2
    expected = [0.1, half, 0.06, 0.02 + 0.08 * (1 + math.cos(3 * math.pi / 4)) / 2,
                0.02, 0.02, 0.02]
    assert got == pytest.approx(expected, rel=1e-15)
    assert got[0] == 0.1 and got[4:] == [0.02] * 3       # starts at lr, held at the minimum
    assert Cosine(1).learning_rate(0, 0.5) == 0.5 and Cosine(1).learning_rate(1, 0.5) == 0.0


def test_epoch_counts_over_the_trainer_lifetime():
    """The schedule is a function of the epoch number: a later fit continues the curve."""
    schedule = StepDecay(2, gamma=0.5)
    first_fit = rates(schedule, 3, base=1.0)
    second_fit = rates(schedule, 3, base=1.0, start=3)
    assert first_fit + second_fit == rates(schedule, 6, base=1.0)


def test_a_fit_that_a_schedule_past_its_end_gives_a_rate_of_0_warns():
    """A Cosine (ending at 0) set after a trainer's first fits starts at the lifetime epoch,
    past its end: every epoch ran at 0 and the fit changed nothing, unsaid. It warns now;
    after trainer.reset() the curve starts again and nothing warns."""
    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", learning_rate=0.1, epochs=3, seed=0, n_threads=1)
    trainer.fit(model, X, y)
    trainer.schedule = Cosine(3)
    before = model.parameter_vector()
    with pytest.warns(UserWarning, match="Cosine gives a learning rate of 0 for epoch 3, "
                                         "where this fit starts"):
        history = trainer.partial_fit(model, X, y)
    assert history.history["learning_rate"] == [0.0]
    assert np.array_equal(model.parameter_vector(), before)
    trainer.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = trainer.fit(model, X, y)
        trainer.schedule = Cosine(3, min_learning_rate=1e-3)    # past its end, not at 0
        trainer.partial_fit(model, X, y)
        zero = fastbp.Trainer("cce", learning_rate=0.0, epochs=2, seed=0, n_threads=1)
        for _ in range(2):      # a base rate of 0 is the caller's, whatever the schedule
            zero.fit(model, X, y)
    assert history.history["learning_rate"][0] == 0.1


# ---- ReduceOnPlateau by hand ----

def drive_plateau(schedule, values, base=1.0, monitor="val_loss"):
    """Like the trainer: the rate of each epoch, then on_epoch_end with its value."""
    used = []
    for epoch, value in enumerate(values):
        used.append(schedule.learning_rate(epoch, base))
        schedule.on_epoch_end(epoch, {"loss": 0.0, monitor: value})
    return used


def test_plateau_reduces_after_more_than_patience_bad_epochs():
    schedule = ReduceOnPlateau(factor=0.5, patience=2, min_delta=0.0)
    used = drive_plateau(schedule, [5, 4, 4, 4, 4, 4, 4, 3, 3])
    # Bad epochs 2, 3, 4: the third (> patience) reduces; the rate drops from epoch 5 on.
    assert used == [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]
    assert schedule.n_reductions == 1 and schedule.best == 3


def test_plateau_min_delta_is_absolute():
    schedule = ReduceOnPlateau(factor=0.5, patience=0, min_delta=0.1)
    used = drive_plateau(schedule, [1.0, 0.95, 0.85, 0.8])
    # 0.95 is not below 1.0 - 0.1: bad, reduce; 0.85 improves on 1.0 by 0.15; 0.8 does not.
    assert used == [1, 1, 0.5, 0.5]
    assert schedule.n_reductions == 2 and schedule.best == 0.85


def test_plateau_cooldown_and_floor():
    schedule = ReduceOnPlateau(factor=0.1, patience=0, cooldown=2, min_learning_rate=0.02)
    used = drive_plateau(schedule, [1.0] * 10)
    # epoch 1 reduces, then 2 epochs of cooldown (2, 3); epoch 4 reduces to the floor, and
    # epoch 7's reduction leaves the rate at the floor.
    assert used == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02, 0.02, 0.02], rel=1e-15)
    assert schedule.n_reductions == 3


def test_plateau_never_raises_a_rate_below_its_floor():
    schedule = ReduceOnPlateau(factor=0.5, patience=0, min_learning_rate=0.5)
    assert drive_plateau(schedule, [1, 1, 1], base=0.1) == [0.1, 0.1, 0.1]


def test_plateau_nan_is_a_bad_epoch():
    schedule = ReduceOnPlateau(factor=0.5, patience=0)
    assert drive_plateau(schedule, [1.0, float("nan"), 0.5]) == [1.0, 1.0, 0.5]


def test_plateau_max_mode_for_accuracy():
    schedule = ReduceOnPlateau(monitor="val_accuracy", factor=0.5, patience=0)
    assert schedule.mode == "max"
    used = drive_plateau(schedule, [0.5, 0.6, 0.6, 0.7], monitor="val_accuracy")
    assert used == [1, 1, 1, 0.5]


def test_plateau_missing_monitor_names_the_keys():
    schedule = ReduceOnPlateau()
    with pytest.raises(ValueError, match=r"'val_loss'.*loss, seconds, samples_per_second"):
        schedule.on_epoch_end(0, {"loss": 1.0, "seconds": 0.1, "samples_per_second": 10.0})
    ReduceOnPlateau(monitor="loss").on_epoch_end(0, {"loss": 1.0})


def test_plateau_state_persists_until_reset():
    schedule = ReduceOnPlateau(factor=0.5, patience=0)
    drive_plateau(schedule, [1, 1])
    assert schedule.learning_rate(100, 1.0) == 0.5       # the epoch number does not matter
    schedule.reset()
    assert schedule.learning_rate(100, 1.0) == 1.0
    assert schedule.best == math.inf and schedule.num_bad_epochs == 0


# ---- PyTorch ----

def torch_rates(make_scheduler, n, base=BASE, metrics=None):
    torch = pytest.importorskip("torch")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    got = []
    for epoch in range(n):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metrics is None:
            scheduler.step()
        else:
            scheduler.step(metrics[epoch])
    return got


def test_step_decay_equals_torch_steplr():
    expected = torch_rates(lambda s, o: s.StepLR(o, step_size=3, gamma=0.3), 20)
    assert rates(StepDecay(3, gamma=0.3), 20) == pytest.approx(expected, rel=1e-12)


def test_exponential_decay_equals_torch_exponentiallr():
    expected = torch_rates(lambda s, o: s.ExponentialLR(o, gamma=0.9), 40)
    assert rates(ExponentialDecay(0.9), 40) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_cosine_equals_torch_cosineannealinglr(min_lr):
    expected = torch_rates(lambda s, o: s.CosineAnnealingLR(o, T_max=10, eta_min=min_lr), 11)
    assert rates(Cosine(10, min_learning_rate=min_lr), 11) == pytest.approx(
        expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("settings", [
    dict(factor=0.5, patience=2, min_delta=0.0, cooldown=0, min_learning_rate=0.0),
    dict(factor=0.1, patience=0, min_delta=0.05, cooldown=1, min_learning_rate=1e-4),
    dict(factor=0.3, patience=1, min_delta=1e-4, cooldown=3, min_learning_rate=0.0),
    dict(factor=0.1, patience=0, min_delta=0.0, cooldown=0, min_learning_rate=0.0),  # eps floor
])
def test_plateau_equals_torch_reducelronplateau(settings):
    import random
    generator = random.Random(0)
    values = [1.0]
    for _ in range(59):                                  # noisy, mostly flat, sometimes better
        values.append(values[-1] - generator.choice([0.0, 0.0, 0.0, 0.01, 0.1]) +
                      generator.choice([0.0, 0.02]))
    expected = torch_rates(
        lambda s, o: s.ReduceLROnPlateau(
            o, mode="min", threshold_mode="abs", factor=settings["factor"],
            patience=settings["patience"], threshold=settings["min_delta"],
            cooldown=settings["cooldown"], min_lr=settings["min_learning_rate"]),
        len(values), metrics=values)
    got = drive_plateau(ReduceOnPlateau(**settings), values, base=BASE)
    assert got == expected                               # bit for bit
    assert len(set(got)) > 1


# ---- get and validation ----

def test_get():
    assert isinstance(schedules.get(None), Constant)
    assert isinstance(schedules.get("constant"), Constant)
    assert isinstance(schedules.get("CONSTANT"), Constant)
    assert isinstance(schedules.get("inverse_scaling"), InverseScaling)
    assert isinstance(schedules.get("plateau"), ReduceOnPlateau)
    assert schedules.get("plateau") is not schedules.get("plateau")    # fresh state each time
    mine = Cosine(5)
    assert schedules.get(mine) is mine


@pytest.mark.parametrize("name, hint", [("step", r"StepDecay\(step_size"),
                                        ("exponential", r"ExponentialDecay\(gamma"),
                                        ("cosine", r"Cosine\(total_epochs")])
def test_get_names_that_need_arguments(name, hint):
    with pytest.raises(ValueError, match=f"needs arguments.*{hint}"):
        schedules.get(name)


def test_get_refuses_unknown_specs():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid names: constant"):
        schedules.get("linear")
    with pytest.raises(TypeError, match="schedule must be"):
        schedules.get(0.1)
    with pytest.raises(TypeError, match="schedule must be"):
        schedules.get(StepDecay)                         # the class, not an object


@pytest.mark.parametrize("make, error, message", [
    (lambda: StepDecay(0), ValueError, "step_size must be >= 1"),
    (lambda: StepDecay(2.5), ValueError, "step_size must be a whole number"),
    (lambda: StepDecay("2"), TypeError, "step_size"),
    (lambda: StepDecay(2, gamma=0), ValueError, r"gamma must be in \(0, 1\]"),
    (lambda: StepDecay(2, gamma=1.5), ValueError, "gamma"),
    (lambda: ExponentialDecay(-0.5), ValueError, "gamma"),
    (lambda: ExponentialDecay(float("nan")), ValueError, "gamma"),
    (lambda: ExponentialDecay(None), TypeError, "gamma"),
    (lambda: InverseScaling(power=-1), ValueError, "power"),
    (lambda: InverseScaling(scale=float("inf")), ValueError, "scale"),
    (lambda: InverseScaling(power=True), TypeError, "power"),
    (lambda: Cosine(0), ValueError, "total_epochs must be >= 1"),
    (lambda: Cosine(10, min_learning_rate=-0.1), ValueError, "min_learning_rate"),
    (lambda: ReduceOnPlateau(factor=1.0), ValueError, r"factor must be in \(0, 1\)"),
    (lambda: ReduceOnPlateau(factor=0), ValueError, "factor"),
    (lambda: ReduceOnPlateau(patience=-1), ValueError, "patience"),
    (lambda: ReduceOnPlateau(min_delta=-1e-3), ValueError, "min_delta"),
    (lambda: ReduceOnPlateau(cooldown=1.5), ValueError, "cooldown"),
    (lambda: ReduceOnPlateau(min_learning_rate=-1), ValueError, "min_learning_rate"),
    (lambda: ReduceOnPlateau(monitor=""), TypeError, "monitor"),
    (lambda: ReduceOnPlateau(monitor=3), TypeError, "monitor"),
    (lambda: ReduceOnPlateau(mode="up"), ValueError, "mode must be"),
])
def test_constructors_validate(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("schedule", [Constant(), StepDecay(2), ExponentialDecay(0.9),
                                      InverseScaling(), Cosine(3), ReduceOnPlateau()])
def test_learning_rate_validates_its_arguments(schedule):
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        schedule.learning_rate(-1, 0.1)
    with pytest.raises(TypeError, match="epoch"):
        schedule.learning_rate(1.5j, 0.1)
    with pytest.raises(ValueError, match="base_learning_rate"):
        schedule.learning_rate(0, -0.1)
    with pytest.raises(ValueError, match="base_learning_rate"):
        schedule.learning_rate(0, float("inf"))
    assert isinstance(schedule.learning_rate(0, 1), float)
    assert isinstance(schedule, Schedule)
    assert type(schedule).__name__ in repr(schedule)


def test_monitor_value_must_be_a_number():
    with pytest.raises(TypeError, match="must be a number"):
        ReduceOnPlateau(monitor="loss").on_epoch_end(0, {"loss": "low"})


def test_custom_schedule_subclass():
    class Warmup(Schedule):
        def _rate(self, epoch, base):
            return base * min(1.0, (epoch + 1) / 3)

    assert rates(Warmup(), 4, base=0.3) == pytest.approx([0.1, 0.2, 0.3, 0.3])


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "0.1", True])
def test_a_rate_from_an_overridden_learning_rate_is_checked_by_the_trainer(bad):
    """A subclass that overrides learning_rate itself (the method the trainer calls) went
    round the schedule's own check: a rate of -0.5 trained by gradient ascent, "0.1" raised
    a bare TypeError. The trainer checks each rate too, naming the schedule and epoch,
    before the epoch trains."""

    class Override(schedules.Schedule):
        def learning_rate(self, epoch, base_learning_rate):
            return bad if epoch >= 1 else base_learning_rate

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    model = fastbp.MLP([3, 4, 2], ["tanh", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", epochs=3, learning_rate=0.1, schedule=Override(), seed=0)
    with pytest.raises(ValueError, match=r"Override gave the learning rate .* for epoch 1"):
        trainer.fit(model, X, y)
    assert trainer._epochs_done == 1        # (the first epoch trained; the second did not)
