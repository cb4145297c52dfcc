"""The demo and the command line."""
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.__main__ import main
from fastbp.callbacks import Callback
from fastbp.demo import make_spirals


def test_demo_prints_progress_and_learns(capsys):
    assert main(["demo", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 3
    for line in epoch_lines:
        assert "loss" in line and "test acc" in line and "samples/s" in line
    accuracy = float(out.rsplit("final test accuracy:", 1)[1])
    assert accuracy > 0.9     # chance is 1/3


def test_demo_rejects_bad_options_with_a_message(capsys):
    assert main(["demo", "--epochs", "-1"]) == 2
    assert "epochs must be >= 0" in capsys.readouterr().err


def test_console_entry_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "fastbp", "demo", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--learning-rate" in result.stdout


def test_spirals_are_balanced_and_reproducible():
    X, y = make_spirals(3000, seed=3)
    X2, y2 = make_spirals(3000, seed=3)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert X.shape == (3000, 2) and set(np.unique(y)) == {0, 1, 2}
    assert np.bincount(y).min() > 900


def test_callbacks_see_each_epoch_and_can_stop():
    class StopAfterTwo(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append((epoch, logs["loss"]))
            return epoch == 1

    X, y = make_spirals(500, seed=0)
    model = fastbp.MLP([2, 16, 3], ["relu", "softmax"], seed=0)
    callback = StopAfterTwo()
    history = fastbp.Trainer("cce", learning_rate=0.05, epochs=10, seed=0).fit(model, X, y, callbacks=[callback])
    assert history.epochs == 2 and [e for e, _ in callback.seen] == [0, 1]
    assert [loss for _, loss in callback.seen] == history.loss
    assert len(history.seconds) == 2 and all(s > 0 for s in history.samples_per_second)


def test_verbose_prints_one_line_per_epoch(capsys):
    X, y = make_spirals(300, seed=0)
    model = fastbp.MLP([2, 8, 3], ["relu", "softmax"], seed=0)
    fastbp.Trainer("cce", learning_rate=0.05, epochs=3, seed=0).fit(model, X, y, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3") and "samples/s" in lines[-1]
    fastbp.Trainer("cce", learning_rate=0.05, epochs=3, seed=0).fit(model, X, y)
    assert capsys.readouterr().out == ""


def test_callbacks_must_be_callbacks():
    model = fastbp.MLP([2, 3], "relu")
    before = model.weights[0].copy()
    with pytest.raises(TypeError, match="callbacks"):
        fastbp.Trainer("mse").fit(model, np.ones((4, 2)), np.ones((4, 3)), callbacks=[print])
    assert np.array_equal(model.weights[0], before)
