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


def test_the_source_tree_without_its_core_says_so(tmp_path):
    """`python -m fastbp` run in a checkout after `pip install .` imports the source tree
    (the current folder comes first on the path), which has no compiled core: it failed as
    "cannot import name '_core' from partially initialized module 'fastbp' (most likely
    due to a circular import)". Now the error says what it is and what to do."""
    import shutil

    source = os.path.dirname(fastbp.__file__)
    shutil.copytree(source, tmp_path / "fastbp",
                    ignore=shutil.ignore_patterns("_core.*", "__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONSAFEPATH"}
    result = subprocess.run([sys.executable, "-m", "fastbp", "demo", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "fastbp's compiled core is not built in" in result.stderr, result.stderr
    assert "Run from another folder" in result.stderr and "circular" not in result.stderr


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


def test_verbose_prints_one_line_per_epoch(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)     # the plain lines (tqdm draws a bar)
    X, y = make_spirals(300, seed=0)
    model = fastbp.MLP([2, 8, 3], ["relu", "softmax"], seed=0)
    fastbp.Trainer("cce", learning_rate=0.05, epochs=3, seed=0).fit(model, X, y, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3") and "samples/s" in lines[-1]
    fastbp.Trainer("cce", learning_rate=0.05, epochs=3, seed=0).fit(model, X, y)
    assert capsys.readouterr().out == ""


def test_callbacks_must_be_callbacks():
    model = fastbp.MLP([2, 3], "identity")
    before = model.weights[0].copy()
    with pytest.raises(TypeError, match="callbacks"):
        fastbp.Trainer("mse").fit(model, np.ones((4, 2)), np.ones((4, 3)), callbacks=[print])
    assert np.array_equal(model.weights[0], before)


# ---------------------------------------------------------------- the `fastbp` command line
import csv
import json
import os

from fastbp.cli import sidecar_path

COMMANDS = ["train", "predict", "evaluate", "info", "export", "demo", "bench"]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def flowers(n=240, seed=0):
    """Three features, a text label from a linear rule (learnable), a numeric target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    names = np.array(["setosa", "versicolor", "virginica"])
    species = names[np.argmax(X @ np.array([[2.0, -1, 0], [0, 2, -1], [-1, 0, 2]]), axis=1)]
    price = X @ np.array([1.0, -2.0, 0.5]) + 3
    return X, species, price


@pytest.fixture
def flowers_csv(tmp_path):
    X, species, price = flowers()
    rows = [[*np.round(x, 5), s, round(p, 5)] for x, s, p in zip(X, species, price)]
    return write_csv(tmp_path / "flowers.csv", ["a", "b", "c", "species", "price"], rows)


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `fastbp argv...` run in this process."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    status, out, _ = run_cli(capsys, command, "--help")
    assert status == 0 and out.startswith(f"usage: fastbp {command}")
    assert "--help" in out


def test_top_level_help_lists_the_commands(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and all(command in out for command in COMMANDS)
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and fastbp.__version__ in out


def test_evaluate_never_takes_a_feature_column_as_the_target(flowers_csv, tmp_path, capsys):
    """A model trained on a, b, c -> price, evaluated on a file without price, took the
    last column (c, one of its inputs) as the target and printed a score with status 0;
    --target a was taken too. Both are refused, naming the column."""
    model_path = tmp_path / "price.fbp"
    status, _, err = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                             "species", "--hidden", "4", "--epochs", "2", "--seed", "0",
                             "-q", "--output", model_path)
    assert status == 0, err
    X, _, _ = flowers()
    features_only = write_csv(tmp_path / "new.csv", ["a", "b", "c"], np.round(X, 5).tolist())
    status, out, err = run_cli(capsys, "evaluate", model_path, features_only)
    assert status == 2 and out == ""
    assert "lacks the target column(s) 'price' the model was trained with" in err
    status, out, err = run_cli(capsys, "evaluate", model_path, flowers_csv, "--target", "a")
    assert status == 2 and out == ""
    assert "column 'a' of" in err and "one of the model's features" in err
    status, out, err = run_cli(capsys, "evaluate", model_path, flowers_csv)
    assert status == 0 and "mae" in out.lower(), err


def test_train_predict_evaluate_with_text_labels(flowers_csv, tmp_path, capsys):
    model_path = tmp_path / "iris.fbp"
    status, out, err = run_cli(capsys, "train", flowers_csv, "--target", "species", "--drop",
                               "price", "--hidden", "16", "--epochs", "40", "--seed", "0",
                               "--learning-rate", "0.1", "--output", model_path)
    assert status == 0, err
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 40 and "loss" in epoch_lines[-1]
    assert "3 classes: setosa, versicolor, virginica" in out
    assert "categorical_crossentropy" in out and f"wrote {model_path}" in out

    sidecar = json.loads(open(sidecar_path(model_path)).read())
    assert sidecar["classes"] == ["setosa", "versicolor", "virginica"]
    assert sidecar["features"] == ["a", "b", "c"] and sidecar["targets"] == ["species"]
    model = fastbp.load(model_path)
    assert model.layer_sizes == (3, 16, 3) and model.activations == ("relu", "softmax")

    # probabilities: one column per class, named by the class; the training CSV (which also
    # holds the target and the dropped column) works because the sidecar names the features
    status, _, err = run_cli(capsys, "predict", model_path, flowers_csv, "--output",
                             tmp_path / "p.csv")
    assert status == 0, err
    rows = read_rows(tmp_path / "p.csv")
    assert rows[0] == ["setosa", "versicolor", "virginica"] and len(rows) == 241
    probabilities = np.array(rows[1:], dtype=float)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    X, species, _ = flowers()
    np.testing.assert_allclose(probabilities, model.predict(np.round(X, 5)), rtol=1e-6)

    status, _, _ = run_cli(capsys, "predict", model_path, flowers_csv, "--labels", "-o",
                           tmp_path / "labels.csv")
    rows = read_rows(tmp_path / "labels.csv")
    assert status == 0 and rows[0] == ["species"]
    predicted = np.array([row[0] for row in rows[1:]])
    assert set(predicted) <= {"setosa", "versicolor", "virginica"}
    accuracy = (predicted == species).mean()
    assert accuracy > 0.85

    status, out, _ = run_cli(capsys, "evaluate", model_path, flowers_csv)
    assert status == 0
    figures = dict(line.rsplit(None, 1) for line in out.strip().splitlines())
    assert float(figures["accuracy"]) == pytest.approx(accuracy)
    assert float(figures["loss (categorical_crossentropy)"]) < 0.5
    status, out, _ = run_cli(capsys, "evaluate", model_path, flowers_csv, "--json")
    assert json.loads(out)["accuracy"] == pytest.approx(accuracy)


def test_numeric_class_labels_come_back_as_they_were(tmp_path, capsys):
    X, species, _ = flowers(150)
    codes = {"setosa": 3, "versicolor": 5, "virginica": 70}
    rows = [[*x, codes[s]] for x, s in zip(X, species)]
    data = write_csv(tmp_path / "d.csv", ["x0", "x1", "x2", "kind"], rows)
    model_path = tmp_path / "m.fbp"
    status, _, err = run_cli(capsys, "train", data, "--loss", "cce", "--epochs", "30",
                             "--learning-rate", "0.1", "--seed", "1", "-o", model_path, "-q")
    assert status == 0, err
    assert json.load(open(sidecar_path(model_path)))["classes"] == [3, 5, 70]
    status, _, _ = run_cli(capsys, "predict", model_path, data, "--labels", "-o",
                           tmp_path / "labels.npy")
    labels = np.load(tmp_path / "labels.npy")
    assert status == 0 and labels.dtype.kind == "i" and set(labels[:, 0]) <= {3, 5, 70}
    assert (labels[:, 0] == [codes[s] for s in species]).mean() > 0.8


def test_regression_with_two_outputs_npy_output_and_metrics(flowers_csv, tmp_path, capsys):
    model_path = tmp_path / "reg.fbp"
    status, out, err = run_cli(capsys, "train", flowers_csv, "--target", "price", "--target",
                               "0", "--drop", "species", "--hidden", "12,8", "--activation",
                               "tanh,gelu", "--optimizer", "adam", "--learning-rate", "0.01",
                               "--epochs", "30", "--seed", "0", "-o", model_path)
    assert status == 0, err
    assert "loss mse (auto" in out
    model = fastbp.load(model_path)
    assert model.layer_sizes == (2, 12, 8, 2)
    assert model.activations == ("tanh", "gelu", "identity")
    status, _, _ = run_cli(capsys, "predict", model_path, flowers_csv, "-o", tmp_path / "p.npy")
    predictions = np.load(tmp_path / "p.npy")
    assert status == 0 and predictions.shape == (240, 2) and predictions.dtype == np.float32
    status, out, _ = run_cli(capsys, "evaluate", model_path, flowers_csv)
    assert status == 0 and "loss (mse)" in out and "MAE" in out and "R²" in out
    status, _, err = run_cli(capsys, "predict", model_path, flowers_csv, "--labels")
    assert status == 2 and "--labels is for classification" in err


def test_integer_labels_past_2_to_the_53_stay_exact_and_numbers_print_short(tmp_path, capsys):
    """Integer labels of an NPY file were made float64: 2^53 + 1, + 2, + 3 became the classes
    ...992, ...994, ...996 (labels that do not exist; 2^53 and 2^53 + 1 one class). And
    predict --labels printed the class 3 as "3.0" beside 1.5."""
    X, species, _ = flowers(90)
    base = 2 ** 53
    y = base + 1 + (species == "versicolor") + 2 * (species == "virginica")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y.astype(np.int64))
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / "y.npy", "--loss", "cce", "--epochs", "30",
                             "--learning-rate", "0.2", "--seed", "0", "-o",
                             tmp_path / "ids.fbp", "-q")
    assert status == 0, err
    sidecar = json.loads(open(sidecar_path(tmp_path / "ids.fbp")).read())
    assert sidecar["classes"] == [base + 1, base + 2, base + 3]
    status, out, err = run_cli(capsys, "predict", tmp_path / "ids.fbp", tmp_path / "X.npy",
                               "--labels")
    assert status == 0, err
    assert set(out.splitlines()[1:]) == {str(base + 1), str(base + 2), str(base + 3)}
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "ids.fbp", tmp_path / "X.npy",
                               "--targets", tmp_path / "y.npy")
    assert status == 0 and "accuracy" in out, err
    np.save(tmp_path / "two.npy", np.array([base, base + 1] * 45, dtype=np.int64))
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / "two.npy", "--loss", "cce", "--epochs", "1", "-o",
                             tmp_path / "two.fbp", "-q")
    assert status == 0, err
    assert json.loads(open(sidecar_path(tmp_path / "two.fbp")).read())["classes"] == \
        [base, base + 1]

    grades = write_csv(tmp_path / "g.csv", ["x", "grade"],
                       [[i / 60, ["1.50", "2.50", "+3"][i % 3]] for i in range(60)])
    status, _, err = run_cli(capsys, "train", grades, "--loss", "cce", "--epochs", "1",
                             "--seed", "0", "-o", tmp_path / "g.fbp", "-q")
    assert status == 0, err
    assert json.loads(open(sidecar_path(tmp_path / "g.fbp")).read())["classes"] == [1.5, 2.5, 3]
    model = fastbp.load(tmp_path / "g.fbp")
    model.biases[-1][...] = [0, 0, 100]                 # every row predicts the class 3
    model.save(tmp_path / "g.fbp")
    status, out, err = run_cli(capsys, "predict", tmp_path / "g.fbp", grades, "--labels")
    assert status == 0 and set(out.splitlines()[1:]) == {"3"}, err


def test_npy_and_npz_inputs(tmp_path, capsys):
    X, species, _ = flowers(200)
    y = (species == "setosa").astype(np.int64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", features=X, labels=species)
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets", tmp_path / "y.npy",
                             "--loss", "bce", "--epochs", "20", "--learning-rate", "0.2",
                             "--seed", "0", "-o", tmp_path / "b.fbp", "-q")
    assert status == 0, err
    assert fastbp.load(tmp_path / "b.fbp").activations[-1] == "sigmoid"
    status, out, _ = run_cli(capsys, "evaluate", tmp_path / "b.fbp", tmp_path / "X.npy",
                             "--targets", tmp_path / "y.npy")
    assert status == 0 and "loss (binary_crossentropy)" in out and "accuracy" in out

    status, _, err = run_cli(capsys, "train", tmp_path / "d.npz", "--x-name", "features",
                             "--y-name", "labels", "--loss", "cce", "--epochs", "5",
                             "--dtype", "float64", "-o", tmp_path / "z.fbp", "-q")
    assert status == 0, err
    status, out, _ = run_cli(capsys, "predict", tmp_path / "z.fbp", tmp_path / "d.npz",
                             "--x-name", "features", "--labels")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "labels" and len(lines) == 201
    assert set(lines[1:]) <= {"setosa", "versicolor", "virginica"}
    status, out, _ = run_cli(capsys, "predict", tmp_path / "z.fbp", tmp_path / "d.npz",
                             "--x-name", "features")
    assert out.splitlines()[0] == "setosa,versicolor,virginica"


def test_binary_text_labels(tmp_path, capsys):
    X, species, _ = flowers(160)
    answer = np.where(species == "setosa", "yes", "no")
    data = write_csv(tmp_path / "b.csv", ["u", "v", "w", "answer"],
                     [[*x, a] for x, a in zip(X, answer)])
    status, _, err = run_cli(capsys, "train", data, "--loss", "bce", "--epochs", "30",
                             "--learning-rate", "0.2", "--seed", "0", "-o", tmp_path / "b.fbp",
                             "-q")
    assert status == 0, err
    assert json.load(open(tmp_path / "b.fbp.json"))["classes"] == ["no", "yes"]
    status, out, _ = run_cli(capsys, "predict", tmp_path / "b.fbp", data, "--labels")
    predicted = np.array(out.splitlines()[1:])
    assert status == 0 and (predicted == answer).mean() > 0.85


def test_hyperparameters_reach_the_model_and_runs_repeat(flowers_csv, tmp_path, capsys):
    options = ["--target", "price", "--drop", "species", "--hidden", "10,6", "--activation",
               "elu", "--dropout", "0.2,0.1", "--dtype", "float64", "--optimizer", "sgd",
               "--momentum", "0.9", "--nesterov", "--learning-rate", "0.01", "--epochs", "6",
               "--batch-size", "16", "--weight-decay", "1e-4", "--clip-norm", "5",
               "--schedule", "step:2,0.5", "--validation-split", "0.25", "--early-stopping",
               "3", "--seed", "7", "--threads", "1", "--init", "glorot"]
    status, out, err = run_cli(capsys, "train", flowers_csv, *options, "-o", tmp_path / "a.fbp")
    assert status == 0, err
    assert "60 rows held out for validation" in out and "val_loss" in out and "val_r2" in out
    status, _, _ = run_cli(capsys, "train", flowers_csv, *options, "-o", tmp_path / "b.fbp")
    assert (tmp_path / "a.fbp").read_bytes() == (tmp_path / "b.fbp").read_bytes()
    model = fastbp.load(tmp_path / "a.fbp")
    assert model.dtype == np.float64 and model.dropout == (0.2, 0.1)
    status, out, _ = run_cli(capsys, "info", tmp_path / "a.fbp")
    assert status == 0
    assert "float64" in out and "3 -> 10 -> 6 -> 1" in out and f"{model.n_params:,}" in out
    assert "elu" in out and "0.2" in out and "0.1" in out
    status, out, _ = run_cli(capsys, "info", tmp_path / "a.fbp", "--json")
    info = json.loads(out)
    assert info["parameters"] == model.n_params and info["layers"][0]["dropout"] == 0.2

    status, out, _ = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                             "species", "--no-shuffle", "--schedule", "plateau:1,0.5",
                             "--optimizer", "adam", "--epochs", "3", "-o", tmp_path / "c.fbp")
    assert status == 0


def test_early_stopping_reports_the_stop(flowers_csv, tmp_path, capsys):
    status, out, _ = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                             "species", "--learning-rate", "0", "--epochs", "20", "--no-shuffle",
                             "--early-stopping", "2", "-o", tmp_path / "m.fbp")
    assert status == 0
    # learning rate 0 and the same batches every epoch: epoch 1 sets the best loss, epochs
    # 2 and 3 give exactly the same (a new order of rows would round the mean differently)
    assert len([line for line in out.splitlines() if line.startswith("epoch")]) == 3
    assert "stopped early after epoch 3" in out and "kept the weights of epoch 1" in out


def test_a_model_saved_from_python_works_without_a_sidecar(tmp_path, capsys):
    X, species, _ = flowers(100)
    labels = np.searchsorted(["setosa", "versicolor", "virginica"], species)
    model = fastbp.MLP([3, 8, 3], ["relu", "softmax"], seed=0)
    fastbp.Trainer("cce", learning_rate=0.1, epochs=20, seed=0).fit(model, X, labels)
    model.save(tmp_path / "py.fbp")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", labels)
    status, out, _ = run_cli(capsys, "predict", tmp_path / "py.fbp", tmp_path / "X.npy",
                             "--labels")
    assert status == 0 and out.splitlines()[0] == "label"
    np.testing.assert_array_equal(np.array(out.splitlines()[1:], dtype=int),
                                  model.predict(X).argmax(axis=1))
    status, out, _ = run_cli(capsys, "evaluate", tmp_path / "py.fbp", tmp_path / "X.npy",
                             "--targets", tmp_path / "y.npy")
    assert status == 0 and "loss (categorical_crossentropy)" in out
    status, out, _ = run_cli(capsys, "info", tmp_path / "py.fbp")
    assert status == 0 and "no sidecar" in out


def test_plot_writes_a_png(flowers_csv, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status, out, err = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                               "species", "--epochs", "3", "--validation-split", "0.2",
                               "--plot", tmp_path / "curve.png", "-o", tmp_path / "m.fbp")
    assert status == 0, err
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(flowers_csv, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, out, err = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                               "species", "--plot", tmp_path / "c.png", "-o", tmp_path / "m.fbp")
    assert status == 2 and "needs matplotlib" in err and "pip install" in err
    assert not (tmp_path / "m.fbp").exists()          # refused before training


USER_MISTAKES = [
    (["train", "{missing}"], "No such file"),
    (["train", "{csv}", "--target", "colour"], "no column 'colour'"),
    (["train", "{csv}", "--target", "9"], "out of range"),
    (["train", "{csv}", "--target", "price"], "'species' holds 'virginica', not a number"),
    (["train", "{csv}", "--target", "species", "--loss", "mse"], "--loss cce"),
    (["train", "{csv}", "--target", "species", "--loss", "bce"], "needs two classes"),
    (["train", "{csv}", "--target", "species", "--loss", "nope"], "unknown loss"),
    (["train", "{csv}", "--target", "species", "--epochs", "-1"], "epochs must be >= 0"),
    (["train", "{csv}", "--target", "species", "--activation", "cosh"], "unknown activation"),
    # the trainer's own refusals, named as the options (they named learning_rate, ...)
    (["train", "{csv}", "--target", "species", "--learning-rate", "-1"],
     "error: --learning-rate must be a finite number >= 0"),
    (["train", "{csv}", "--target", "species", "--learning-rate", "1e-45"],
     "error: --learning-rate=1e-45 is too small for the model's float32"),
    (["train", "{csv}", "--target", "species", "--clip-norm", "0"],
     "error: --clip-norm must be a finite number > 0.0; got 0.0"),
    (["train", "{csv}", "--target", "species", "--weight-decay", "-1"],
     "error: --weight-decay must be a finite number >= 0"),
    (["train", "{csv}", "--target", "species", "--momentum", "1"],
     "error: --momentum must be in [0, 1)"),
    (["train", "{csv}", "--target", "price", "--drop", "species", "--class-weight",
      "balanced"], "error: --class-weight needs a classification loss"),
    (["train", "{csv}", "--target", "species", "--hidden", "8,8", "--dropout", "0.1,0.2,0.3"],
     "--dropout lists 3 values"),
    (["train", "{csv}", "--target", "species", "--dropout", "1.5"], "dropout rates"),
    (["train", "{csv}", "--target", "species", "--schedule", "exponential"], "takes 1..1"),
    (["train", "{csv}", "--target", "species", "--schedule", "warp"], "unknown schedule"),
    (["train", "{csv}", "--target", "species", "--validation-split", "1.5"], "between 0 and 1"),
    (["train", "{csv}", "--target", "species", "-o", "{tmp}/no/such/m.fbp"], "does not exist"),
    (["train", "{csv}", "--target", "species", "--format", "npy"], "not a NumPy file"),
    (["train", "{ragged}"], "line 3: 2 fields; the header has 3"),
    (["train", "{empty_cell}"], "line 2: the feature column 'x' is empty"),
    (["train", "{tmp}/data.parquet"], "--format csv, npy or npz"),
    (["train", "{npy}"], "give --targets FILE.npy"),
    (["train", "{npz}", "--y-name", "labels"], "no array 'labels'"),
    (["predict", "{csv}", "{csv}"], "not a valid fastbp model file"),
    (["predict", "{model}", "{npy}"], "gives 2 feature columns; the model takes 3"),
    (["evaluate", "{model}", "{csv}", "--target", "species"], "not trained on"),
    (["info", "{missing}"], "No such file"),
    (["export", "{missing}", "{tmp}/m.onnx"], "No such file"),
    (["export", "{model}", "{tmp}/no/folder/m.onnx"], "no/folder does not exist"),
    (["bench", "--threads", "two"], "--threads"),
    (["bench", "--builtin", "--workloads", "W9"], "knows the workloads"),
    (["demo", "--epochs", "-1"], "epochs must be >= 0"),
]


@pytest.fixture
def mistakes_setup(tmp_path, flowers_csv):
    X, species, _ = flowers(30)
    np.save(tmp_path / "X2.npy", X[:, :2])
    np.savez(tmp_path / "d.npz", X=X, y=species)
    model = fastbp.MLP([3, 3], ["softmax"])
    model.save(tmp_path / "m.fbp")
    (tmp_path / "m.fbp.json").write_text(json.dumps(
        {"format": "fastbp-cli-sidecar", "version": 1, "loss": "categorical_crossentropy",
         "features": ["a", "b", "c"], "targets": ["species"], "classes": ["x", "y", "z"],
         "outputs": ["x", "y", "z"]}))
    return {"missing": tmp_path / "missing.csv", "csv": flowers_csv, "tmp": tmp_path,
            "ragged": write_csv(tmp_path / "r.csv", ["x", "y", "z"], [[1, 2, 3], [1, 2]]),
            "empty_cell": write_csv(tmp_path / "e.csv", ["x", "y"], [["", 1]]),
            "npy": tmp_path / "X2.npy", "npz": tmp_path / "d.npz", "model": tmp_path / "m.fbp"}


@pytest.mark.parametrize("argv, message", USER_MISTAKES)
def test_user_mistakes_get_one_line_and_status_2(argv, message, mistakes_setup, capsys):
    status, _, err = run_cli(capsys, *[part.format(**mistakes_setup) for part in argv])
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastbp {argv[0]}: error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_argparse_mistakes_exit_2(capsys):
    status, _, err = run_cli(capsys, "train", "x.csv", "--hidden", "12x")
    assert status == 2 and "--hidden" in err
    status, _, err = run_cli(capsys, "nonsense")
    assert status == 2 and "invalid choice" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "x.csv", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["train", "x.csv", "--bogus"], "unrecognized arguments: --bogus"),
    (["--bogus", "info", "x"], "unrecognized arguments: --bogus"),   # fastbp's, not info's
    (["train"], "the following arguments are required: INPUT"),
    (["train", "x.csv", "--optimizer", "foo"], "argument --optimizer: invalid choice: 'foo'"),
    (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_argparse_mistakes_are_one_line_naming_the_command(argv, message, capsys):
    """argparse printed its usage block (16 lines for train) before the error; docs/cli.md
    promises one line."""
    status, out, err = run_cli(capsys, *argv)
    prog = " ".join(["fastbp", *argv[:1]]) if argv and argv[0] in COMMANDS else "fastbp"
    assert status == 2 and out == ""
    assert err.startswith(f"{prog}: error: {message}"), err
    assert err.endswith(f" (see {prog} --help)\n") and err.count("\n") == 1, err


def test_a_mistake_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastbp", "predict", str(tmp_path / "m.fbp"),
                             str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"fastbp predict: error: No such file or directory: " \
                                    f"{tmp_path / 'm.fbp'}"


def test_divergence_is_reported_with_status_1(flowers_csv, tmp_path, capsys):
    status, _, err = run_cli(capsys, "train", flowers_csv, "--target", "price", "--drop",
                             "species", "--learning-rate", "1e6", "--epochs", "3", "-q",
                             "-o", tmp_path / "m.fbp")
    assert status == 1 and "diverged" in err and "Traceback" not in err
    assert (tmp_path / "m.fbp").exists()


def test_bench_builtin_says_what_it_ran(capsys):
    status, out, _ = run_cli(capsys, "bench", "--builtin", "--duration", "0.02", "--repeats", "1",
                             "--rows", "500")
    assert status == 0 and "built-in" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("W1", "W3"))]
    assert [row[0] for row in rows] == ["W1", "W3"]
    # the rate is the sixth column (a busy machine adds a note after it: "(no window
    # reached 0.02 s: the median of all 4)", whose last word the test once parsed)
    assert all(float(row[5].replace(",", "")) > 0 for row in rows)


def test_bench_builtin_refuses_a_duration_that_is_not_finite(capsys):
    """--duration inf was a traceback (math.ceil of infinity, exit 1), nan "cannot convert
    float NaN to integer"."""
    for duration in ("inf", "nan", "-1", "0"):
        for builtin in (["--builtin"], []):     # (compare.py's warm-up never ended on inf)
            status, out, err = run_cli(capsys, "bench", *builtin, "--duration", duration,
                                       "--repeats", "1", "--workloads", "W3")
            assert status == 2 and err.startswith(
                "fastbp bench: error: --duration must be a finite number of seconds > 0"), err
            assert err.count("\n") == 1
    status, out, err = run_cli(capsys, "bench", "--builtin", "--repeats", "0")
    assert status == 2 and err == "fastbp bench: error: --repeats must be >= 1; got 0\n"
    for option in ("--json", "--png", "--peers"):      # compare.py's: ignored here before
        status, out, err = run_cli(capsys, "bench", "--builtin", option, "x")
        assert status == 2 and f"{option}: for the repository's bench/compare.py" in err, err


def test_bench_runs_the_repository_comparison(capfd, monkeypatch):
    import fastbp.cli.bench
    if fastbp.cli.bench.repository_bench() is None:
        # An installed fastbp (as in CI) has no bench/ beside it: run this checkout's.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        script = os.path.join(root, "bench", "compare.py")
        assert os.path.isfile(script)
        monkeypatch.setattr(fastbp.cli.bench, "repository_bench", lambda: script)
    status = main(["bench", "--peers", "fastbp", "--workloads", "W3", "--duration", "0.02",
                   "--repeats", "1", "--warmup", "0.02"])
    out = capfd.readouterr().out
    assert status == 0
    assert "running the repository's side-by-side comparison" in out and "--quick" in out
    assert "W3" in out and "fastbp" in out


def test_the_documentation_examples_run(tmp_path):
    """docs/cli.md's sh blocks, in order, in one bash process, in an empty folder, with
    `fastbp` and `python` meaning this interpreter."""
    import re
    import shutil
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "cli.md"), encoding="utf-8").read()
    blocks = re.findall(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 4
    prelude = ('set -euo pipefail\n'
               'python() { "$FASTBP_TEST_PYTHON" "$@"; }\n'
               'fastbp() { "$FASTBP_TEST_PYTHON" -m fastbp "$@"; }\n')
    env = dict(os.environ, FASTBP_TEST_PYTHON=sys.executable)   # the installed fastbp
    result = subprocess.run([bash, "-c", prelude + "\n".join(blocks)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "accuracy" in result.stdout and "built-in" in result.stdout
    for name in ("points.fbp", "points.fbp.json", "probabilities.csv", "labels.csv"):
        assert (tmp_path / name).is_file()


def test_messages_name_the_options_and_the_cells(tmp_path, capsys):
    """Errors named the library's parameters (n_threads, patience, step_size, batch_size)
    where the user gave --threads, --early-stopping, --schedule, --batch-size; a NaN cell
    was "X contains NaN", with no file, line or column; --activation with --hidden none was
    ignored silently."""
    data = write_csv(tmp_path / "d.csv", ["a", "b", "y"],
                     [[i, i % 7, i % 3] for i in range(50)])
    base = ["train", data, "--epochs", "1", "-q", "-o", tmp_path / "m.fbp"]
    for option, value, message in (
            ("--threads", "0", "--threads must be >= 1; got 0"),
            ("--early-stopping", "-1", "--early-stopping must be >= 0; got -1"),
            ("--batch-size", "0", "--batch-size must be >= 1; got 0"),
            ("--epochs", "-3", "--epochs must be >= 0; got -3"),
            ("--max-time", "-1", "--max-time must be a finite number of seconds >= 0; got -1.0"),
            ("--schedule", "step:0", "--schedule step:0: step_size must be >= 1; got 0")):
        status, _, err = run_cli(capsys, *base, option, value)
        assert status == 2 and err == f"fastbp train: error: {message}\n", err
    for argv, message in ((["demo", "--threads", "0"], "--threads must be >= 1; got 0"),
                          (["demo", "--batch-size", "0"], "--batch-size must be >= 1; got 0"),
                          (["demo", "--hidden", "0"], "--hidden must be >= 1; got 0")):
        status, _, err = run_cli(capsys, *argv)
        assert status == 2 and err == f"fastbp demo: error: {message}\n", err
    # --max-time 0 is Trainer(max_time=0): the first epoch runs, no later one (it was refused)
    status, _, err = run_cli(capsys, "train", data, "--epochs", "5", "-q", "--max-time", "0",
                             "-o", tmp_path / "m.fbp")
    assert status == 0, err
    status, _, err = run_cli(capsys, *base, "--batch-size", "x")       # (argparse's own)
    assert status == 2 and "argument --batch-size: invalid int value: 'x'" in err
    status, _, err = run_cli(capsys, *base, "--hidden", "none", "--activation", "tanh")
    assert status == 2 and "--hidden none gives no hidden layer" in err, err
    status, _, err = run_cli(capsys, *base, "--hidden", "none")
    assert status == 0, err
    assert fastbp.load(tmp_path / "m.fbp").layer_sizes == (2, 1)
    status, _, err = run_cli(capsys, *base, "--hidden", "3,2")
    assert status == 0 and fastbp.load(tmp_path / "m.fbp").activations == \
        ("relu", "relu", "identity"), err
    bad = write_csv(tmp_path / "n.csv", ["a", "b", "y"], [[1, 2, 1], [1, "nan", 1], [2, 3, 1]])
    status, _, err = run_cli(capsys, "predict", tmp_path / "m.fbp", bad)
    assert status == 2 and "n.csv, line 3: the feature column 'b' holds 'nan', not a " \
        "finite number" in err, err
    bad = write_csv(tmp_path / "t.csv", ["a", "b", "y"], [[1, 2, 1], [1, 2, "inf"]])
    status, _, err = run_cli(capsys, "train", bad, "--epochs", "1", "-q", "-o",
                             tmp_path / "t.fbp")
    assert status == 2 and "t.csv, line 3: the target column 'y' holds 'inf'" in err, err


def test_labels_past_2_to_the_53_match_across_csv_and_npy(tmp_path, capsys):
    """A model trained on NPY integer labels {2^53, 2^53 + 1}, evaluated on the same data as
    CSV, matched the text "...993" to the float ...992 (the other class: accuracy 0.52,
    status 0); trained on the CSV, evaluating the NPY refused 2^53 + 1 as unknown."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.where(X[:, 0] > 0, 2 ** 53, 2 ** 53 + 1).astype(np.int64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    csv_path = write_csv(tmp_path / "d.csv", ["a", "b", "y"],
                         [[a, b, int(c)] for (a, b), c in zip(X.tolist(), y)])
    fit = ["--loss", "cce", "--epochs", "40", "--learning-rate", "0.5", "--seed", "0", "-q"]
    npy_data = [tmp_path / "X.npy", "--targets", tmp_path / "y.npy"]
    csv_data = [csv_path, "--target", "y"]
    for trained_on, model in ((npy_data, "n.fbp"), (csv_data, "c.fbp")):
        status, _, err = run_cli(capsys, "train", *trained_on, *fit, "-o", tmp_path / model)
        assert status == 0, err
        accuracies = []
        for data in (npy_data, csv_data):
            status, out, err = run_cli(capsys, "evaluate", tmp_path / model, *data, "--json")
            assert status == 0, err
            accuracies.append(json.loads(out)["accuracy"])
        assert accuracies[0] == accuracies[1] > 0.9, (model, accuracies)


TARGET_CELLS = [    # (file, its target cells, extra arguments, where the message must point)
    ("t.csv", ["0", "1", "x", "1"], ["--loss", "mse"],
     "t.csv, line 4: the target column 'y' holds 'x'"),
    ("t.csv", ["0", "1", "nan", "1"], ["--loss", "mse"],
     "t.csv, line 4: the target column 'y' holds 'nan'"),
    ("t.csv", ["0", "1", "nan", "1"], ["--loss", "cce"],
     "t.csv, line 4: the target column 'y' holds 'nan'"),
    ("t.csv", ["0", "", "1", "1"], ["--loss", "cce"],
     "t.csv, line 3: the target column 'y' has no label"),
    ("d.npz", [0, 1, np.nan, 1], ["--loss", "cce"],
     "d.npz[y], row 2: the target column 'y' holds 'nan'"),
    ("x.npy", [0, 1, 1, np.inf], ["--loss", "mse", "--targets", "{tmp}/y.npy"],
     "y.npy, row 3: the target column 'y' holds 'inf'"),
]


@pytest.mark.parametrize("name, cells, extra, message", TARGET_CELLS)
def test_a_bad_target_cell_names_its_file_and_line(name, cells, extra, message, tmp_path,
                                                    capsys):
    X = np.arange(12.0).reshape(4, 3)
    if name.endswith(".csv"):
        write_csv(tmp_path / name, ["a", "b", "c", "y"], [[*x, y] for x, y in zip(X, cells)])
    elif name.endswith(".npz"):
        np.savez(tmp_path / name, X=X, y=np.array(cells))
    else:
        np.save(tmp_path / name, X)
        np.save(tmp_path / "y.npy", np.array(cells))
    argv = [part.format(tmp=tmp_path) for part in extra]
    status, _, err = run_cli(capsys, "train", tmp_path / name, *argv, "--epochs", "1",
                             "-o", tmp_path / "m.fbp")
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_names_the_line_of_a_label_the_model_was_not_trained_on(tmp_path, capsys):
    rows = [[1, 2, "a"], [3, 4, "b"], [5, 6, "a"]]
    write_csv(tmp_path / "train.csv", ["u", "v", "y"], rows)
    assert run_cli(capsys, "train", tmp_path / "train.csv", "--epochs", "1",
                   "-o", tmp_path / "m.fbp")[0] == 0
    write_csv(tmp_path / "test.csv", ["u", "v", "y"], rows + [[7, 8, "c"]])
    status, _, err = run_cli(capsys, "evaluate", tmp_path / "m.fbp", tmp_path / "test.csv")
    assert status == 2 and "test.csv, line 5: the target column 'y' holds label(s) 'c'" in err


def test_bench_builtin_says_when_its_windows_fell_short():
    """A window shorter than --duration only sizes the next; the rate is the median of
    those that lasted, and a row whose windows never all did says so (it had shown the
    last short window's rate as the median)."""
    from fastbp.cli.bench import measure_rate

    class Clock:                    # each fit takes `per_epoch[i]` a epoch, in turn
        def __init__(self, per_epoch):
            self.now, self.per_epoch, self.fits = 0.0, per_epoch, 0

        def __call__(self):
            return self.now

    def fit_with(clock, trainer):
        def fit():
            clock.now += trainer.epochs * clock.per_epoch[min(clock.fits,
                                                              len(clock.per_epoch) - 1)]
            clock.fits += 1
        return fit

    class Trainer:
        epochs = 1

    faster = [1.0 / 4 ** k for k in range(1, 13)]     # each window a quarter as long
    for per_epoch, rate, note in [
            ([0.1], 1000 / 0.1, ""),                                   # steady: 3 windows
            ([1.0, 0.1, 0.1, 0.1], 1000 / 0.1, ""),                    # faster once
            ([1.0, 1.0] + faster, 1000.0, "only 1 of 3 windows reached 1 s"),
            ([1.0] + faster, 1000 * (4 ** 6 + 4 ** 7) / 2,             # all 12 rates' median
             "no window reached 1 s: the median of all 12"),
    ]:
        clock, trainer = Clock(per_epoch), Trainer()
        got, said = measure_rate(fit_with(clock, trainer), trainer, 1000, 1.0, 3, clock)
        assert said == note and got == pytest.approx(rate)


@pytest.mark.parametrize("value, traceback", [("1", True), ("yes", True), ("0", False),
                                              ("false", False), ("off", False)])
def test_fastbp_traceback_takes_its_value(value, traceback, monkeypatch, capsys):
    """FASTBP_TRACEBACK=false (no, off) gave the traceback, as any value but "" and 0.
    With the traceback the status is still 2 (it was 1, which says "diverged")."""
    monkeypatch.setenv("FASTBP_TRACEBACK", value)
    assert main(["demo", "--epochs", "-1"]) == 2
    err = capsys.readouterr().err
    assert "epochs must be >= 0" in err
    assert ("Traceback (most recent call last)" in err) is traceback


def test_fastbp_traceback_refuses_an_unknown_value(monkeypatch, capsys):
    """FASTBP_TRACEBACK=ture (a typo) was read as off: the traceback asked for was hidden.
    It is refused in one line, as the other FASTBP_ switches refuse theirs."""
    monkeypatch.setenv("FASTBP_TRACEBACK", "ture")
    assert main(["demo", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FASTBP_TRACEBACK='ture': it must be '1' or" in err, err


def test_export_writes_the_graph_with_the_sidecars_columns_and_classes(flowers_csv, tmp_path,
                                                                     capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    status, _, err = run_cli(capsys, "train", flowers_csv, "--target", "species", "--drop",
                             "price", "--epochs", "3", "--seed", "0", "-o",
                             tmp_path / "f.fbp")
    assert status == 0, err
    status, out, err = run_cli(capsys, "export", tmp_path / "f.fbp", tmp_path / "f.onnx")
    assert status == 0 and err == "", err
    assert out.startswith(f"wrote {tmp_path / 'f.onnx'}: ONNX, input X [N, 3], output Y [N, 3]")
    graph = onnx.load(str(tmp_path / "f.onnx"))
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(metadata["features"]) == ["a", "b", "c"]
    assert json.loads(metadata["classes"]) == ["setosa", "versicolor", "virginica"]
    assert metadata["loss"] == "categorical_crossentropy"
    X, _, _ = flowers()
    session = onnxruntime.InferenceSession(str(tmp_path / "f.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(["Y"], {"X": np.round(X, 5).astype(np.float32)})[0]
    status, _, _ = run_cli(capsys, "predict", tmp_path / "f.fbp", flowers_csv, "--output",
                           tmp_path / "p.npy")
    np.testing.assert_allclose(got, np.load(tmp_path / "p.npy"), rtol=1e-5, atol=1e-6)
    # a model without a sidecar: the graph alone
    fastbp.MLP([3, 2], ["softmax"]).save(tmp_path / "bare.fbp")
    status, out, _ = run_cli(capsys, "export", tmp_path / "bare.fbp", tmp_path / "b.onnx")
    assert status == 0 and "metadata" not in out


def test_export_without_onnx_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    fastbp.MLP([3, 2], ["softmax"]).save(tmp_path / "m.fbp")
    status, _, err = run_cli(capsys, "export", tmp_path / "m.fbp", tmp_path / "m.onnx")
    assert status == 2 and err.count("\n") == 1 and 'pip install "fastbp[onnx]"' in err
    assert not (tmp_path / "m.onnx").exists()
