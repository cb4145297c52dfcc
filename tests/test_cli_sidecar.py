"""Reading the command line's sidecar, `MODEL.json` (found by an audit, 2026-12-07): a file
nested past Python's stack, a FIFO or a device, and hand-edited content fastbp cannot use
(a name given twice, NaN or Infinity, text that is not valid Unicode, whole-number classes
no NumPy type holds) are each one line naming the sidecar and the problem, exit status 2,
for every command that reads it; predict --labels --output x.npy writes every class
exactly, never as a pickled object array; a MemoryError with no text says what happened."""
import json
import os
import threading

import numpy as np
import pytest

import fastbp
from fastbp.__main__ import main
from fastbp.cli.errors import one_line

SIDECAR = {"format": "fastbp-cli-sidecar", "version": 1, "loss": "categorical_crossentropy",
           "features": ["x"], "targets": ["t"], "classes": ["neg", "pos"],
           "outputs": ["neg", "pos"], "trained_on": "d.csv"}


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def model(tmp_path):
    """m.fbp, one input x and two softmax outputs (class 0 for x > 0, class 1 for x < 0),
    with a sidecar as train writes it, and d.csv of x = 1, -1."""
    path = tmp_path / "m.fbp"
    model = fastbp.MLP([1, 2], ["softmax"], seed=0)
    model.weights = [np.array([[4.0, -4.0]], dtype=np.float32)]
    model.save(path)
    write_sidecar(path, json.dumps(SIDECAR))
    (tmp_path / "d.csv").write_text("x,t\n1,neg\n-1,pos\n")
    return path


def write_sidecar(model_path, text):
    with open(f"{model_path}.json", "w", encoding="utf-8") as stream:
        stream.write(text)


def commands(model_path):
    data = model_path.parent / "d.csv"
    return [["info", model_path], ["info", model_path, "--json"],
            ["predict", model_path, data, "--labels"], ["evaluate", model_path, data],
            ["export", model_path, model_path.parent / "m.onnx"]]


def assert_refused(capsys, model_path, *words):
    """Every command that reads the sidecar ends with one line naming it and `words`."""
    for argv in commands(model_path):
        status, out, err = run_cli(capsys, *argv)
        assert status == 2 and out == "", (argv, err)
        assert err.startswith(f"fastbp {argv[0]}: error: {model_path}.json (the model's "
                              f"sidecar)") and err.count("\n") == 1, (argv, err)
        assert all(word in err for word in words), (argv, err)


def test_the_sidecar_train_writes_is_read(model, capsys):
    status, out, err = run_cli(capsys, "predict", model, model.parent / "d.csv", "--labels")
    assert status == 0 and out == "t\nneg\npos\n", err


def test_a_sidecar_nested_past_pythons_stack_is_a_one_line_refusal(model, capsys):
    """[[[[... 100,000 deep was a RecursionError traceback, exit 1."""
    write_sidecar(model, "[" * 100_000 + "]" * 100_000)
    assert_refused(capsys, model, "not valid JSON")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_as_the_sidecar_is_refused_without_waiting(model, capsys):
    """A named pipe as the sidecar blocked the command for good (open, then read to its
    end); a link to a device (/dev/zero) was read until memory ran out."""
    sidecar = f"{model}.json"
    os.remove(sidecar)
    os.mkfifo(sidecar)
    results = []
    reader = threading.Thread(target=lambda: results.append(main(["info", str(model)])))
    reader.start()
    reader.join(10)
    blocked = reader.is_alive()
    if blocked:                 # (a writer that comes and goes ends its wait)
        with open(sidecar, "wb"):
            pass
        reader.join()
    _, err = capsys.readouterr()
    assert not blocked and results == [2], err
    assert f"{sidecar} (the model's sidecar) is not a regular file" in err, err


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_link_to_a_device_as_the_sidecar_is_refused(model, capsys):
    # (/dev/null, not /dev/zero: read to its end, /dev/zero would take all memory)
    os.remove(f"{model}.json")
    os.symlink("/dev/null", f"{model}.json")
    assert_refused(capsys, model, "is not a regular file")


@pytest.mark.parametrize("key, value", [
    ("features", ["x", "x"]), ("targets", ["t", "t"]), ("classes", ["neg", "neg"]),
    ("classes", [1, 1.0]), ("outputs", ["neg", "neg"])])
def test_a_name_given_twice_is_refused(model, capsys, key, value):
    """features ["x", "x"] fed column x twice; classes given twice were accepted by
    predict --labels (the second could never be predicted)."""
    if key == "features":       # (a model of two inputs, as the sidecar says)
        fastbp.MLP([2, 2], ["softmax"], seed=0).save(model)
    write_sidecar(model, json.dumps({**SIDECAR, key: value}))
    assert_refused(capsys, model, f"names {value[1]!r} twice in its {key}")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("key", ["classes", "trained_on"])
def test_a_number_strict_json_has_not_is_refused(model, capsys, constant, key):
    """NaN and Infinity (and 1e999, read as infinity) were taken as names or classes, and
    info --json and export then wrote them, as no strict JSON reader takes."""
    value = f"[{constant}, 1]" if key == "classes" else constant
    write_sidecar(model, json.dumps(SIDECAR).replace(json.dumps(SIDECAR[key]), value, 1))
    assert_refused(capsys, model, f"{constant} is not a finite number")


@pytest.mark.parametrize("key", ["classes", "features", "trained_on"])
def test_text_that_is_not_valid_unicode_is_refused(model, capsys, key):
    """A lone surrogate ("\\ud800" in the JSON) passed, and info failed after printing
    part of its output."""
    document = {**SIDECAR, key: "\ud800" if key == "trained_on" else ["\ud800", "b"][
        :len(SIDECAR[key])]}
    write_sidecar(model, json.dumps(document))          # (ensure_ascii: written \ud800)
    assert_refused(capsys, model, "not valid Unicode")


@pytest.mark.parametrize("classes", [[-1, 2**64 + 1], [2**64 + 1, 2], [-(2**63) - 1, 2**63],
                                     [10**400, 1]])
def test_whole_number_classes_no_numpy_type_holds_are_refused(model, capsys, classes):
    """predict --labels --output x.npy wrote them as a pickled object array, which
    np.load(allow_pickle=False), and fastbp itself, refuse to read."""
    write_sidecar(model, json.dumps({**SIDECAR, "classes": classes}))
    assert_refused(capsys, model, "lists classes that no NumPy type holds exactly")


@pytest.mark.parametrize("classes, dtype", [
    ([1, 2**64 - 1], np.uint64),            # a uint64 target array (NumPy's mix: float64)
    ([2**63, 0], np.uint64),
    ([-1, 10**20], np.float64),             # train's classes of a float column of 1e20, -1
    ([-1, 2**64], np.float64),
    ([-(2**63), 2**63 - 1], np.int64),
    (["neg", 3], np.str_)])
def test_predict_writes_labels_to_npy_exactly_and_unpickled(model, capsys, classes, dtype):
    write_sidecar(model, json.dumps({**SIDECAR, "classes": classes}))
    output = model.parent / "labels.npy"
    status, _, err = run_cli(capsys, "predict", model, model.parent / "d.csv", "--labels",
                             "--output", output)
    assert status == 0, err
    labels = np.load(output, allow_pickle=False)
    assert labels.dtype.type is dtype, labels.dtype
    expected = [str(c) for c in classes] if dtype is np.str_ else classes
    assert labels.ravel().tolist() == expected


def test_a_memory_error_without_text_says_what_ran_out():
    """It printed "not enough memory ()": the exception, not its text, was tested."""
    assert one_line(MemoryError()) == "not enough memory (the data or model is too large)"
    assert one_line(MemoryError("128 GiB for X")) == "not enough memory (128 GiB for X)"
