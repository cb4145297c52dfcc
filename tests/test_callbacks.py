"""Callbacks driven by a fake training loop on a real fastbp.MLP: EarlyStopping,
ModelCheckpoint, ProgressBar (with and without tqdm), the base class, validation."""
import io
import math
import os
import sys
import types

import numpy as np
import pytest

import fastbp
from fastbp.callbacks import (Callback, EarlyStopping, ModelCheckpoint, ProgressBar,
                              ProgressPrinter)


def make_model(dtype="float32"):
    return fastbp.MLP([3, 5, 2], ["tanh", "softmax"], dtype=dtype, seed=0)


def parameters(model):
    return [a.copy() for a in model.weights + model.biases]


def same_bits(first, second):
    return all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(first, second))


def fake_fit(model, callbacks, values, monitor="val_loss", seed=0):
    """What the trainer does around its epochs; each 'epoch' writes new random parameters
    into the model in place and logs values[epoch] under `monitor`.
    Returns (parameters after each epoch, epochs run)."""
    rng = np.random.default_rng(seed)
    for callback in callbacks:
        callback.set_model(model)
    for callback in callbacks:
        callback.on_train_begin({})
    after_epoch = []
    for epoch, value in enumerate(values):
        for live in model.weights + model.biases:
            live[...] = rng.normal(size=live.shape)
        after_epoch.append(parameters(model))
        logs = {"loss": 1.0, "seconds": 0.01, "samples_per_second": 1000.0,
                "learning_rate": 0.01, monitor: value}
        if any([callback.on_epoch_end(epoch, logs) for callback in callbacks]):
            break
    for callback in callbacks:
        callback.on_train_end({})
    return after_epoch, len(after_epoch)


# ---- the base class ----

def test_base_callback_hooks_do_nothing():
    callback = Callback()
    assert callback.model is None
    model = make_model()
    callback.set_model(model)
    assert callback.model is model
    assert callback.on_train_begin({}) is None and callback.on_train_begin() is None
    assert callback.on_epoch_end(0, {"loss": 1.0}) is None
    assert callback.on_train_end({}) is None and callback.on_train_end() is None


def test_subclass_overriding_only_on_epoch_end_still_works():
    class Stop(Callback):
        def on_epoch_end(self, epoch, logs):
            return epoch == 2

    _, epochs = fake_fit(make_model(), [Stop()], [1.0] * 10)
    assert epochs == 3


def test_progress_printer_unchanged():
    lines = []
    printer = ProgressPrinter(12, print_function=lines.append)
    printer.on_epoch_end(2, {"loss": 0.123456, "samples_per_second": 1234567.8})
    assert lines == ["epoch  3/12  loss 0.1235  1,234,568 samples/s"]


# ---- EarlyStopping ----

@pytest.mark.parametrize("patience, values, epochs, best_epoch", [
    (0, [5, 4, 3, 3.5, 2, 1], 4, 2),          # stops at the first epoch that does not improve
    (1, [5, 4, 3, 3.5, 2, 1], 4, 2),          # as in Keras, patience 1 equals patience 0
    (2, [5, 4, 3, 3.5, 2, 1, 1, 1, 0], 8, 5),  # one bad epoch is tolerated, two end it
    (2, [5, 4, 3, 3.5, 3.6, 1], 5, 2),
    (3, [1, 2, 3, 4, 5, 6], 4, 0),
    (5, [3, 2, 1], 3, 2),                     # never stops: trains to the end
])
def test_early_stopping_epoch(patience, values, epochs, best_epoch):
    stopper = EarlyStopping(patience=patience)
    _, ran = fake_fit(make_model(), [stopper], values)
    assert ran == epochs
    assert stopper.best_epoch == best_epoch and stopper.best == values[best_epoch]
    assert stopper.stopped_epoch == (epochs - 1 if epochs < len(values) else None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_early_stopping_restores_the_best_parameters_bit_for_bit(dtype):
    model = make_model(dtype)
    stopper = EarlyStopping(patience=2)
    after_epoch, ran = fake_fit(model, [stopper], [5, 4, 3, 3.5, 3.2, 1])
    assert ran == 5 and stopper.best_epoch == 2
    assert same_bits(parameters(model), after_epoch[2])
    assert not same_bits(parameters(model), after_epoch[-1])


def test_early_stopping_restores_in_place():
    model = make_model()
    live = model.weights + model.biases
    fake_fit(model, [EarlyStopping(patience=1)], [1.0, 2.0])
    assert all(np.shares_memory(a, b) for a, b in zip(live, model.weights + model.biases))


def test_early_stopping_restores_when_training_ends_after_the_best_epoch():
    """Not stopped by this callback (the epochs ran out): still back to the best epoch."""
    model = make_model()
    stopper = EarlyStopping(patience=10)
    after_epoch, ran = fake_fit(model, [stopper], [3, 1, 2, 2.5])
    assert ran == 4 and stopper.stopped_epoch is None
    assert same_bits(parameters(model), after_epoch[1])


def test_early_stopping_leaves_the_last_epoch_when_it_is_the_best():
    model = make_model()
    after_epoch, _ = fake_fit(model, [EarlyStopping(patience=1)], [3, 2, 1])
    assert same_bits(parameters(model), after_epoch[-1])


def test_early_stopping_without_restore_keeps_the_last_parameters():
    model = make_model()
    stopper = EarlyStopping(patience=1, restore_best_weights=False)
    after_epoch, ran = fake_fit(model, [stopper], [1, 2, 3])
    assert ran == 2 and same_bits(parameters(model), after_epoch[-1])


def test_early_stopping_min_delta():
    stopper = EarlyStopping(patience=1, min_delta=0.5)
    _, ran = fake_fit(make_model(), [stopper], [3.0, 2.7, 2.0])
    assert ran == 2 and stopper.best == 3.0            # 2.7 is not 0.5 better than 3.0


def test_early_stopping_auto_mode_maximises_accuracy_and_r2():
    for monitor in ("val_accuracy", "val_r2", "accuracy"):
        stopper = EarlyStopping(monitor=monitor, patience=1)
        assert stopper.mode == "max"
        after_epoch, ran = fake_fit(make_model(), [stopper], [0.5, 0.7, 0.6, 0.9],
                                    monitor=monitor)
        assert ran == 3 and stopper.best == 0.7 and stopper.best_epoch == 1
    assert EarlyStopping(monitor="val_mae").mode == "min"
    assert EarlyStopping(monitor="val_accuracy", mode="min").mode == "min"


def test_early_stopping_nan_never_improves():
    model = make_model()
    stopper = EarlyStopping(patience=1)
    after_epoch, ran = fake_fit(model, [stopper], [1.0, math.nan, 0.5])
    assert ran == 2 and stopper.best == 1.0
    assert same_bits(parameters(model), after_epoch[0])


def test_early_stopping_state_resets_at_each_fit():
    model = make_model()
    stopper = EarlyStopping(patience=1)
    fake_fit(model, [stopper], [1.0, 2.0])
    assert stopper.stopped_epoch == 1
    after_epoch, ran = fake_fit(model, [stopper], [9.0, 8.0, 7.0], seed=1)
    assert ran == 3 and stopper.best == 7.0 and stopper.stopped_epoch is None
    assert same_bits(parameters(model), after_epoch[-1])


def test_early_stopping_missing_monitor_names_the_keys():
    stopper = EarlyStopping()
    stopper.set_model(make_model())
    stopper.on_train_begin({})
    with pytest.raises(ValueError, match=r"EarlyStopping monitors 'val_loss'.*validation_data"
                                         r".*they have: loss, seconds"):
        stopper.on_epoch_end(0, {"loss": 1.0, "seconds": 0.1})


def test_early_stopping_needs_the_model_to_restore():
    stopper = EarlyStopping()
    with pytest.raises(RuntimeError, match="set_model"):
        stopper.on_epoch_end(0, {"val_loss": 1.0})
    lenient = EarlyStopping(restore_best_weights=False, patience=0)
    assert lenient.on_epoch_end(0, {"val_loss": 1.0}) is None
    assert lenient.on_epoch_end(1, {"val_loss": 2.0}) is True


# ---- ModelCheckpoint ----

def test_checkpoint_saves_only_on_improvement(tmp_path, monkeypatch):
    path = tmp_path / "best.fbp"
    model = make_model()
    checkpoint = ModelCheckpoint(path)
    writes = []
    original = fastbp.MLP.save
    monkeypatch.setattr(fastbp.MLP, "save", lambda self, p: (writes.append(p), original(self, p)))
    after_epoch, _ = fake_fit(model, [checkpoint], [3.0, 2.0, 2.5, 2.0, 1.0, 1.5])
    assert checkpoint.saved_epochs == [0, 1, 4] and len(writes) == 3
    assert all(p == path for p in writes)
    assert checkpoint.best == 1.0 and checkpoint.best_epoch == 4
    assert same_bits(parameters(fastbp.load(path)), after_epoch[4])


def test_checkpoint_keeps_its_best_across_fits(tmp_path):
    path = tmp_path / "best.fbp"
    model = make_model()
    checkpoint = ModelCheckpoint(str(path), monitor="val_accuracy")
    assert checkpoint.mode == "max"
    first, _ = fake_fit(model, [checkpoint], [0.5, 0.8, 0.7], monitor="val_accuracy")
    fake_fit(model, [checkpoint], [0.6, 0.75], monitor="val_accuracy", seed=1)
    assert checkpoint.saved_epochs == [0, 1]
    assert same_bits(parameters(fastbp.load(path)), first[1])


def test_checkpoint_every_epoch(tmp_path):
    path = tmp_path / "latest.fbp"
    model = make_model()
    checkpoint = ModelCheckpoint(path, save_best_only=False)
    after_epoch, _ = fake_fit(model, [checkpoint], [1.0, 2.0, 3.0], monitor="other")
    assert checkpoint.saved_epochs == [0, 1, 2]
    assert same_bits(parameters(fastbp.load(path)), after_epoch[-1])


def test_checkpoint_takes_every_path_that_save_takes(tmp_path):
    model = make_model()
    for path in (tmp_path / "a.fbp", str(tmp_path / "b.fbp"), os.fsencode(tmp_path / "c.fbp")):
        checkpoint = ModelCheckpoint(path, save_best_only=False)
        after_epoch, _ = fake_fit(model, [checkpoint], [1.0, 2.0], monitor="other")
        assert same_bits(parameters(fastbp.load(path)), after_epoch[-1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fake_fit(model, [ModelCheckpoint(os.fsencode(tmp_path / "missing" / "d.fbp"))], [1.0])
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        ModelCheckpoint(3)


def test_checkpoint_with_early_stopping(tmp_path):
    path = tmp_path / "best.fbp"
    model = make_model()
    stopper = EarlyStopping(patience=1)
    after_epoch, ran = fake_fit(model, [ModelCheckpoint(path), stopper], [2.0, 1.0, 1.5, 0.1])
    assert ran == 3
    assert same_bits(parameters(fastbp.load(path)), after_epoch[1])
    assert same_bits(parameters(model), after_epoch[1])


def test_checkpoint_refuses_a_missing_folder_before_training(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "nowhere" / "model.fbp")
    checkpoint.set_model(make_model())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.on_train_begin({})


def test_checkpoint_missing_monitor():
    checkpoint = ModelCheckpoint("model.fbp")
    checkpoint.set_model(make_model())
    with pytest.raises(ValueError, match="ModelCheckpoint monitors 'val_loss'"):
        checkpoint.on_epoch_end(0, {"loss": 1.0})


# ---- ProgressBar ----

LOGS = [{"loss": 0.9, "seconds": 0.5, "samples_per_second": 123456.7, "learning_rate": 0.1,
         "val_loss": 1.25, "val_accuracy": 0.5},
        {"loss": 0.5, "seconds": 0.5, "samples_per_second": 234567.8, "learning_rate": 0.1,
         "val_loss": 0.75, "val_accuracy": 0.625}]


def drive(bar, logs_sequence=LOGS):
    bar.on_train_begin({})
    for epoch, logs in enumerate(logs_sequence):
        bar.on_epoch_end(epoch, logs)
    bar.on_train_end({})


@pytest.fixture
def no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)       # `import tqdm` now raises ImportError


@pytest.fixture
def fake_tqdm(monkeypatch):
    bars = []

    class FakeBar:
        def __init__(self, **kwargs):
            self.kwargs, self.postfixes, self.n, self.closed = kwargs, [], 0, False
            bars.append(self)

        def set_postfix_str(self, text, refresh=True):
            self.postfixes.append(text)

        def update(self, n=1):
            self.n += n

        def close(self):
            self.closed = True

    module = types.ModuleType("tqdm")
    module.tqdm = FakeBar
    monkeypatch.setitem(sys.modules, "tqdm", module)
    return bars


def test_progress_bar_plain_lines_without_tqdm(no_tqdm, capsys):
    bar = ProgressBar(10)
    assert not bar.uses_tqdm
    drive(bar)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "epoch  1/10  loss 0.9000  val_loss 1.2500  val_accuracy 0.5000  123,457 samples/s",
        "epoch  2/10  loss 0.5000  val_loss 0.7500  val_accuracy 0.6250  234,568 samples/s"]


def test_progress_bar_plain_lines_to_a_stream(no_tqdm, capsys):
    stream = io.StringIO()
    drive(ProgressBar(2, stream=stream))
    assert capsys.readouterr() == ("", "")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("epoch 2/2  loss 0.5000")


def test_progress_bar_plain_counts_each_fit_from_one(no_tqdm):
    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    drive(bar)
    bar.on_train_begin({})
    bar.on_epoch_end(7, LOGS[0])                          # the trainer's lifetime epoch 7
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 1"]


def test_progress_bar_formats_large_small_and_odd_figures(no_tqdm):
    stream = io.StringIO()
    bar = ProgressBar(1, stream=stream)
    bar.on_epoch_end(0, {"loss": 123456.0, "val_mae": 1e-6, "note": "text", "flag": True,
                         "samples_per_second": 10.0})
    assert stream.getvalue() == "epoch 1/1  loss 1.2346e+05  val_mae 1.0000e-06  10 samples/s\n"


def test_progress_bar_with_tqdm(fake_tqdm, capsys):
    bar = ProgressBar(10)
    assert bar.uses_tqdm
    drive(bar)
    assert capsys.readouterr() == ("", "")                # everything went to the bar
    assert len(fake_tqdm) == 1
    made = fake_tqdm[0]
    assert made.kwargs["total"] == 10 and made.kwargs["unit"] == "epoch"
    assert made.kwargs["file"] is None                    # tqdm's default: sys.stderr
    assert made.n == 2 and made.closed
    assert made.postfixes[-1] == ("loss=0.5000, val_loss=0.7500, val_accuracy=0.6250, "
                                  "234,568 samples/s")


def test_progress_bar_with_tqdm_one_bar_per_fit(fake_tqdm):
    stream = io.StringIO()
    bar = ProgressBar(2, stream=stream)
    drive(bar)
    drive(bar)
    assert len(fake_tqdm) == 2 and all(b.closed and b.n == 2 for b in fake_tqdm)
    assert fake_tqdm[1].kwargs["file"] is stream


def test_progress_bar_can_refuse_tqdm(fake_tqdm, capsys):
    bar = ProgressBar(2, use_tqdm=False)
    drive(bar)
    assert not fake_tqdm and len(capsys.readouterr().out.splitlines()) == 2


def test_progress_bar_requiring_tqdm_without_it(no_tqdm):
    with pytest.raises(ImportError, match="pip install tqdm"):
        ProgressBar(2, use_tqdm=True)


def test_progress_bar_with_the_real_tqdm():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = ProgressBar(2, stream=stream)
    assert bar.uses_tqdm
    drive(bar)
    text = stream.getvalue()
    assert "2/2" in text and "val_loss=0.7500" in text and "234,568 samples/s" in text


def test_progress_bar_validates():
    with pytest.raises(ValueError, match="n_epochs"):
        ProgressBar(-1)
    with pytest.raises(TypeError, match="use_tqdm"):
        ProgressBar(2, use_tqdm="yes")
    with pytest.raises(TypeError, match="stream"):
        ProgressBar(2, stream="out.txt")


# ---- argument validation ----

@pytest.mark.parametrize("make, error, message", [
    (lambda: EarlyStopping(monitor=None), TypeError, "monitor"),
    (lambda: EarlyStopping(monitor=""), TypeError, "monitor"),
    (lambda: EarlyStopping(patience=-1), ValueError, "patience"),
    (lambda: EarlyStopping(patience=1.5), ValueError, "patience"),
    (lambda: EarlyStopping(min_delta=-0.1), ValueError, "min_delta"),
    (lambda: EarlyStopping(min_delta="0"), TypeError, "min_delta"),
    (lambda: EarlyStopping(restore_best_weights=1), TypeError, "restore_best_weights"),
    (lambda: EarlyStopping(mode="maximum"), ValueError, "mode must be"),
    (lambda: ModelCheckpoint(None), TypeError, "path"),
    (lambda: ModelCheckpoint(""), ValueError, "path"),
    (lambda: ModelCheckpoint("m.fbp", monitor=1), TypeError, "monitor"),
    (lambda: ModelCheckpoint("m.fbp", save_best_only="yes"), TypeError, "save_best_only"),
    (lambda: ModelCheckpoint("m.fbp", mode=None), ValueError, "mode must be"),
])
def test_constructors_validate(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_checkpoint_in_a_folder_that_takes_no_new_file_is_refused_before_training():
    """The folder existed, so the first epoch trained and its save failed."""
    X = np.ones((8, 2), np.float32)
    model = fastbp.MLP([2, 1], ["identity"], seed=0)
    before = model.parameter_vector()
    checkpoint = ModelCheckpoint("/proc/self/m.fbp", save_best_only=False)
    with pytest.raises(OSError, match="no new file can be made"):
        fastbp.Trainer("mse", epochs=2).fit(model, X, X[:, :1], callbacks=[checkpoint])
    np.testing.assert_array_equal(model.parameter_vector(), before)


def test_a_misnamed_validation_monitor_is_not_blamed_on_missing_validation():
    """EarlyStopping("val_acc") on a fit with validation (which logs val_accuracy): the
    message lists the names, without the hint that the fit has no validation (it has);
    on a fit without validation the hint stays."""
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", epochs=2, seed=0)
    with pytest.raises(ValueError, match="val_acc") as refused:
        trainer.fit(model, X, y, validation_split=0.25,
                    callbacks=[fastbp.callbacks.EarlyStopping("val_acc")])
    assert "need validation_data" not in str(refused.value)
    assert "val_accuracy" in str(refused.value)
    with pytest.raises(ValueError, match="need validation_data or validation_split"):
        trainer.fit(model, X, y, callbacks=[fastbp.callbacks.EarlyStopping("val_acc")])
    early = fastbp.callbacks.EarlyStopping("val_acc")
    with pytest.raises(ValueError, match="val_acc") as refused:     # the logs of an epoch
        early.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5})
    assert "need validation_data" not in str(refused.value)


def test_a_stop_asked_at_the_last_epoch_is_not_an_early_stop():
    """history.stopped_early says the fit stopped before its epochs were done: a callback
    that asks to stop after the last epoch stopped nothing (max_time already said so)."""
    X = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)

    class StopAfter(Callback):
        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs):
            return epoch >= self.epoch

    for stop_at, early, epochs in ((2, False, 3), (1, True, 2)):
        history = fastbp.Trainer("cce", epochs=3, seed=0).fit(
            make_model(), X, y, callbacks=[StopAfter(stop_at)])
        assert (history.stopped_early, history.epochs) == (early, epochs)


def test_accuracy_of_a_multi_label_model_is_refused_for_binary_accuracy():
    """'accuracy' takes each row's argmax as its class; with binary cross-entropy over
    several outputs (multi-label) there is none, and Keras reads it as binary accuracy:
    refused, naming binary_accuracy, before anything trains."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3)).astype(np.float32)
    Y = (rng.random((30, 2)) > 0.5).astype(np.float32)
    model = fastbp.MLP([3, 4, 2], ["tanh", "sigmoid"], seed=0)
    before = parameters(model)
    with pytest.raises(ValueError, match="binary_accuracy"):
        fastbp.Trainer("bce", epochs=1, seed=0).fit(model, X, Y, validation_split=0.2,
                                                     metrics=["accuracy"])
    assert same_bits(parameters(model), before)
    history = fastbp.Trainer("bce", epochs=1, seed=0).fit(
        model, X, Y, validation_split=0.2, metrics=["binary_accuracy"])
    assert "val_binary_accuracy" in history.history
