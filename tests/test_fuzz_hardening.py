"""Fuzzing the input families of the second hardening round (docs/robustness.md): inputs
rewritten by callbacks between epochs, output paths that are not regular files, command-line
outputs that are the command's own inputs, sample weights of every scale, and optimizer state
driven to overflow. As in tests/test_fuzz.py, whatever goes in, the outcome is a result or a
ValueError / TypeError / OSError with a message (exit code 2 with a message for the command
line), never a crash, a hang or a silently wrong model.
"""
import os
import socket
import stat
import threading
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastbp  # noqa: E402
from fastbp.__main__ import main as cli_main  # noqa: E402

ALLOWED = (ValueError, TypeError, OSError)
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
HANG_SECONDS = 120  # tests/conftest.py ends a test running longer than this: a hang


def attempt(function, *args, **kwargs):
    """(result, None) or (None, error) for an allowed error; anything else propagates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return function(*args, **kwargs), None
    except ALLOWED as error:
        assert str(error), f"{type(error).__name__} without a message"
        return None, error


def parameters(model):
    return [p.copy() for p in model.weights + model.biases]


def all_finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


def make_optimizer(name, learning_rate):
    """An optimizer by name; "momentum" is SGD with momentum 0.9."""
    if name == "momentum":
        return fastbp.optimizers.SGD(learning_rate, momentum=0.9)
    rules = {"sgd": fastbp.optimizers.SGD, "adam": fastbp.optimizers.Adam,
             "rmsprop": fastbp.optimizers.RMSprop, "adagrad": fastbp.optimizers.Adagrad}
    return rules[name](learning_rate)


def classification(n_rows=48, n_features=4, n_classes=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features)).astype(dtype)
    labels = np.ascontiguousarray(rng.integers(0, n_classes, size=n_rows), dtype=np.intp)
    return X, labels


# ---------------------------------------------------------------- inputs mutated by callbacks

ODD_VALUES = [0.0, -1.0, 1e308, -1e308, np.nan, np.inf, -np.inf, 5e-324, 2.0**31, -2.0**63]
ODD_LABELS = [-1, 3, 2**31, -2**31, 2**62, -2**63, np.iinfo(np.intp).max, 0, 2]


class Rewrite(fastbp.callbacks.Callback):
    """Rewrites entries of arrays the fit was given, in place, at the end of each epoch."""

    def __init__(self, writes):
        super().__init__()
        self.writes = writes        # [(array, flat index, value)]

    def on_epoch_end(self, epoch, logs=None):
        for array, index, value in self.writes:
            flat = array.reshape(-1)
            flat[index % flat.size] = value


@FUZZ
@given(writes=st.lists(st.tuples(st.sampled_from(["X", "Y", "weights", "X_val", "Y_val"]),
                                 st.integers(0, 10**6), st.integers(0, 99)),
                       min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]),
       optimizer=st.sampled_from(["sgd", "momentum", "adam", "rmsprop", "adagrad"]),
       targets=st.sampled_from(["labels", "one_hot"]), weighted=st.booleans(),
       validation=st.booleans(), batch_size=st.sampled_from([1, 7, 16, 48]))
@example(writes=[("Y", 0, 5)], dtype=np.float64, optimizer="sgd", targets="labels",
         weighted=False, validation=False, batch_size=16)          # label 2**62
@example(writes=[("Y", 3, 0)], dtype=np.float32, optimizer="adam", targets="labels",
         weighted=True, validation=True, batch_size=7)             # label -1
def test_inputs_rewritten_by_a_callback_between_epochs(writes, dtype, optimizer, targets,
                                                      weighted, validation, batch_size):
    X, labels = classification(dtype=dtype)
    Y = labels if targets == "labels" else np.eye(3, dtype=dtype)[labels]
    weights = np.ones(len(X), dtype=dtype) if weighted else None
    X_val, labels_val = classification(n_rows=12, dtype=dtype, seed=1)
    arrays = {"X": X, "Y": Y, "weights": weights, "X_val": X_val, "Y_val": labels_val}
    rewrites = []
    for name, index, choice in writes:
        array = arrays[name]
        if array is None:
            continue
        values = ODD_LABELS if array.dtype.kind == "i" else ODD_VALUES
        rewrites.append((array, index, values[choice % len(values)]))
    model = fastbp.MLP([4, 5, 3], ["relu", "softmax"], dtype=dtype, seed=0)
    trainer = fastbp.Trainer("cce", optimizer=make_optimizer(optimizer, 0.05), epochs=3,
                             batch_size=batch_size, seed=0)
    history, error = attempt(
        trainer.fit, model, X, Y, sample_weight=weights, callbacks=[Rewrite(rewrites)],
        validation_data=(X_val, labels_val) if validation else None)
    # Whatever was rewritten, the model is usable; a run that says it converged has
    # finite parameters, and predictions of clean data are finite.
    if error is None and not history.diverged:
        assert all_finite(parameters(model))
    if all_finite(parameters(model)):
        assert np.isfinite(model.predict(classification(n_rows=4, dtype=dtype)[0])).all()


# ---------------------------------------------------------------- non-regular output paths

def _make_target(kind, tmp_path):
    """A path of the given kind, and a function that tells it is unchanged afterwards."""
    path = str(tmp_path / "target")
    if kind == "fifo":
        os.mkfifo(path)
        drained = []
        reader = threading.Thread(target=lambda: drained.append(open(path, "rb").read()),
                                  daemon=True)
        reader.start()
        return path, lambda: stat.S_ISFIFO(os.lstat(path).st_mode), reader
    if kind == "folder":
        os.mkdir(path)
        return path, lambda: stat.S_ISDIR(os.lstat(path).st_mode), None
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        return path, lambda: stat.S_ISSOCK(os.lstat(path).st_mode) and server, None
    if kind == "dev_null":
        # A private null device where we may make one (root, as in CI), so that a regression
        # replaces a node of the test's own; elsewhere /dev/null, which only root could replace.
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            path = os.devnull
        return path, lambda: stat.S_ISCHR(os.lstat(path).st_mode), None
    if kind == "link_to_folder":
        os.mkdir(path + ".d")
        os.symlink(path + ".d", path)
        return path, lambda: os.path.islink(path) and os.path.isdir(path), None
    if kind == "missing_folder":
        missing = str(tmp_path / "no" / "such" / "folder" / "model.fbp")
        return missing, lambda: not os.path.exists(os.path.dirname(missing)), None
    # a name of the given length in bytes, up to the file system's 255
    length = int(kind.split("_")[1])
    named = str(tmp_path / ("m" * (length - 4) + ".fbp"))
    return named, lambda: True, None


TARGETS = ["fifo", "folder", "socket", "dev_null", "link_to_folder", "missing_folder",
           "name_200", "name_234", "name_250", "name_255", "name_256", "name_300"]


@settings(FUZZ, max_examples=20)
@given(kind=st.sampled_from(TARGETS),
       writer=st.sampled_from(["save", "cli_train", "checkpoint"]))
@example(kind="dev_null", writer="save")
@example(kind="fifo", writer="cli_train")
def test_writing_to_output_paths_that_are_not_regular_files(kind, writer, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("out")
    path, unchanged, reader = _make_target(kind, tmp_path)
    model = fastbp.MLP([4, 3, 2], "relu", seed=0)
    if writer == "save":
        _, error = attempt(model.save, path)
        code = 0 if error is None else 2
    elif writer == "checkpoint":
        X, labels = classification()
        checkpoint = fastbp.callbacks.ModelCheckpoint(path)
        _, error = attempt(fastbp.Trainer("cce", epochs=1, batch_size=16).fit,
                           fastbp.MLP([4, 3, 3], ["relu", "softmax"], seed=0), X, labels,
                           callbacks=[checkpoint])
        code = 0 if error is None else 2
    else:
        data = tmp_path / "d.csv"
        X, labels = classification(n_rows=20)
        np.savetxt(data, np.column_stack([X, labels]), delimiter=",", fmt="%.6g",
                   header="a,b,c,d,y", comments="")
        code = run_cli(["train", str(data), "--target", "y", "--epochs", "1",
                        "--output", path])[0]
    assert code in (0, 2)
    assert unchanged(), f"{writer} changed the {kind} at {path}"
    if kind.startswith("name_") and code == 0:
        assert fastbp.load(path).layer_sizes[0] in (4,)
    if reader is not None:
        if code != 0:               # nothing was written: release the reader
            with open(path, "wb"):
                pass
        reader.join(timeout=30)
        assert not reader.is_alive()


# ---------------------------------------------------------------- outputs equal to inputs

def run_cli(argv):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _alias(path, how, tmp_path):
    """Another name for `path`: the same string, a symlink, a hard link, a relative path."""
    if how == "same":
        return str(path)
    other = tmp_path / f"alias-{how}"
    if how == "symlink":
        os.symlink(path, other)
    elif how == "hardlink":
        os.link(path, other)
    else:
        return os.path.relpath(path)
    return str(other)


# (command, what the output names): each clash the command must refuse
CLASHES = [("train", "--output", "data"), ("train", "--plot", "data"),
           ("train", "--plot", "output"), ("train", "--plot", "sidecar"),
           ("predict", "--output", "data"), ("predict", "--output", "model"),
           ("predict", "--output", "sidecar")]


@settings(FUZZ, max_examples=20)
@given(clash=st.sampled_from(CLASHES),
       how=st.sampled_from(["same", "symlink", "hardlink", "relative"]))
def test_outputs_that_are_the_commands_own_inputs_are_refused(clash, how, tmp_path_factory,
                                                               monkeypatch):
    if "--plot" in clash:
        pytest.importorskip("matplotlib")
    tmp_path = tmp_path_factory.mktemp("cli")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.csv"
    X, labels = classification(n_rows=20)
    np.savetxt(data, np.column_stack([X, labels]), delimiter=",", fmt="%.6g",
               header="a,b,c,d,y", comments="")
    model_path = tmp_path / "m.fbp"
    assert run_cli(["train", str(data), "--target", "y", "--loss", "cce", "--epochs", "1",
                    "--output", str(model_path)])[0] == 0
    sidecar = tmp_path / "m.fbp.json"
    assert sidecar.exists()
    new_model = tmp_path / "new.fbp"
    if how == "hardlink":       # a hard link to the output must exist before the command
        new_model.write_bytes(model_path.read_bytes())
    files = [data, model_path, sidecar] + ([new_model] if new_model.exists() else [])
    before = {f: f.read_bytes() for f in files}
    command, option, named = clash
    target = {"data": data, "model": model_path, "output": new_model,
              "sidecar": new_model.with_name("new.fbp.json") if command == "train" else sidecar,
              }[named]
    if how == "hardlink" and not target.exists():
        how = "symlink"
    alias = _alias(target, how, tmp_path)
    if command == "train":
        argv = ["train", str(data), "--target", "y", "--loss", "cce", "--epochs", "1",
                "--output", str(new_model)]
        argv[-1 if option == "--output" else len(argv):] = [alias] if option == "--output" \
            else ["--plot", alias]
    else:
        argv = ["predict", str(model_path), str(data), "--output", alias]
    code, _, err = run_cli(argv)
    assert code == 2, (argv, code, err)
    assert err.strip()
    for f, content in before.items():
        assert f.read_bytes() == content, f"{argv} changed {f.name}"


# ---------------------------------------------------------------- sample weights of any scale

@FUZZ
@given(dtype=st.sampled_from(["float32", "float64"]),
       exponent=st.integers(-1074, 1023) | st.sampled_from([-1074, -1022, -149, -126, 127, 128,
                                                             1023]),
       mantissa=st.floats(1.0, 1.99), spread=st.sampled_from([1.0, 10.0, 1e6]))
@example(dtype="float32", exponent=-153, mantissa=1.0, spread=1.0)    # ~1e-46
@example(dtype="float32", exponent=128, mantissa=1.0, spread=1.0)     # 3.4e38
@example(dtype="float64", exponent=-1063, mantissa=1.0, spread=1.0)   # ~1e-320
def test_sample_weights_of_any_common_scale(dtype, exponent, mantissa, spread):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(dtype)
    Y = X @ rng.normal(size=(3, 2)).astype(dtype)
    relative = rng.uniform(1.0, spread, size=40)
    scale = np.ldexp(mantissa, exponent)
    with np.errstate(over="ignore"):
        weights = relative * scale
    if not np.isfinite(weights).all() or not (weights > 0).all():
        return                      # the scale itself is not a positive float64
    # The same weights at scale ~1 (exact: a power of two; float64 subnormals keep only
    # the bits they hold, so this is what the user's weights really are).
    reference = np.ldexp(weights, -exponent)
    runs = []
    for w in (reference, weights):
        model = fastbp.MLP([3, 4, 2], "tanh", dtype=dtype, seed=0)
        history, error = attempt(fastbp.Trainer("mse", learning_rate=0.05, epochs=2,
                                                batch_size=8, seed=0).fit,
                                 model, X, Y, sample_weight=w)
        runs.append((model, history, error))
    (plain, plain_history, plain_error), (scaled, history, error) = runs
    assert plain_error is None
    if error is not None:
        assert "sample_weight" in str(error)
        assert isinstance(error, ValueError)
        return
    # A common factor changes nothing (to rounding), and never reads as divergence.
    assert not history.diverged
    assert np.allclose(history.loss, plain_history.loss, rtol=1e-4)
    for p, q in zip(parameters(scaled), parameters(plain)):
        assert np.allclose(p, q, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- overflowing optimizer state

@FUZZ
@given(optimizer=st.sampled_from(["adam", "rmsprop", "adagrad", "momentum", "sgd"]),
       dtype=st.sampled_from(["float32", "float64"]),
       outlier=st.sampled_from([1e3, 1e10, 1e12, 1e18, 1e19, 1e30, 1e38, 1e150, 1e200, 1e300]),
       rows=st.integers(1, 3), epochs=st.integers(1, 3))
@example(optimizer="adam", dtype="float32", outlier=1e12, rows=1, epochs=2)
def test_optimizer_state_that_overflows_is_reported(optimizer, dtype, outlier, rows, epochs):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 6))
    X[:rows] *= outlier
    Y = X[:, :2] * 0.0 + rng.normal(size=(32, 2))
    with np.errstate(over="ignore"):
        if not np.isfinite(X.astype(dtype)).all():
            return                  # not representable in this dtype: refused elsewhere
    X = X.astype(dtype)
    model = fastbp.MLP([6, 8, 2], "relu", dtype=dtype, seed=0)
    trainer = fastbp.Trainer("mse", optimizer=make_optimizer(optimizer, 1e-3), epochs=epochs,
                             batch_size=8, seed=0)
    history, error = attempt(trainer.fit, model, X, Y.astype(dtype))
    if error is not None:
        return
    state = trainer._state
    if not history.diverged:
        # A run that reports no divergence has finite parameters and finite optimizer state.
        assert all_finite(parameters(model))
        assert state is None or np.isfinite(state).all(), \
            f"{optimizer} state overflowed without a divergence report"
