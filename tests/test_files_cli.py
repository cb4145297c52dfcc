"""The command line's files (issue 14, defects 2, 4, 8 and the sidecar of 13): an output is
never one of the command's inputs or another of its outputs (same file, through links too);
a FIFO or a device given as --output is written into and gets no sidecar beside it; the model
and its sidecar are written both or neither; a damaged sidecar is a message and exit 2."""
import errno
import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.__main__ import main

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TRAIN = ["--target", "species", "--hidden", "4", "--epochs", "2", "--seed", "0", "--quiet"]


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def write_flowers(path, n=60, seed=0, names=("setosa", "versicolor", "virginica")):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    species = np.array(names)[np.argmax(X @ rng.normal(size=(3, len(names))), axis=1)]
    lines = ["a,b,c,species"] + [f"{x[0]:.4f},{x[1]:.4f},{x[2]:.4f},{s}"
                                 for x, s in zip(X, species)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    return write_flowers(tmp_path / "d.csv")


@pytest.fixture
def trained(tmp_path, data, capsys):
    model = tmp_path / "m.fbp"
    status, _, err = run_cli(capsys, "train", data, *TRAIN, "--output", model)
    assert status == 0, err
    return model


def snapshot(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
            if (directory / name).is_file()}


# ---------------------------------------------------------------- outputs that are inputs

@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_where_no_file_can_be_made_is_refused_before_training(tmp_path, data,
                                                                        capsys):
    """train -o /proc/m.fbp (a folder that takes no new file, as one without write
    permission or on a read-only file system) trained every epoch and then failed, naming
    a temporary file the user never gave; refused before reading the data, naming the
    path. model.save names the path too."""
    for argv in (("train", data, *TRAIN, "--output", "/proc/m.fbp"),
                 ("train", data, *TRAIN, "--output", tmp_path / "m.fbp",
                  "--plot", "/proc/loss.png"),
                 ("predict", data, data, "--output", "/proc/p.csv")):
        status, out, err = run_cli(capsys, *argv)
        assert status == 2 and out == "", err
        assert "no new file can be made in its folder" in err and ".tmp" not in err, err
    assert not (tmp_path / "m.fbp").exists()
    # through a link: where the link names (the write goes there), not beside the link
    (tmp_path / "out.csv").symlink_to("/proc/self/out.csv")
    status, out, err = run_cli(capsys, "predict", data, data, "--output", tmp_path / "out.csv")
    assert status == 2 and "no new file can be made in its folder" in err, err
    with pytest.raises(OSError, match="cannot write /proc/m.fbp: no new file"):
        fastbp.MLP([2, 1], ["identity"]).save("/proc/m.fbp")


def test_a_model_written_through_a_link_has_its_sidecar_beside_the_file_it_names(
        tmp_path, capsys):
    """train -o link (a symbolic link to real/m.fbp) replaced real/m.fbp but wrote the
    sidecar beside the link: real/m.fbp then sat beside the old model's sidecar, and
    predict real/m.fbp --labels printed the old model's class names."""
    old = write_flowers(tmp_path / "old.csv", names=("left", "right"))
    new = write_flowers(tmp_path / "new.csv", names=("north", "south"))
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "m.fbp"
    status, _, err = run_cli(capsys, "train", old, *TRAIN, "--output", real)
    assert status == 0, err
    link = tmp_path / "m.fbp"
    link.symlink_to(real)
    status, _, err = run_cli(capsys, "train", new, *TRAIN, "--output", link)
    assert status == 0, err
    assert link.is_symlink() and not (tmp_path / "m.fbp.json").exists()
    for name in (real, link):
        status, out, err = run_cli(capsys, "predict", name, new, "--labels")
        assert status == 0, err
        assert set(out.splitlines()[1:]) <= {"north", "south"}, out
    # a sidecar an earlier fastbp wrote beside the link is still read, with a warning
    (tmp_path / "real" / "m.fbp.json").rename(tmp_path / "m.fbp.json")
    status, out, err = run_cli(capsys, "predict", link, new, "--labels")
    assert status == 0 and set(out.splitlines()[1:]) <= {"north", "south"}, out
    assert "beside the link" in err and "move it there" in err, err
    status, out, err = run_cli(capsys, "info", link)        # (it named the file not read)
    assert status == 0 and f"sidecar {tmp_path / 'm.fbp.json'}:" in out, out
    before = (tmp_path / "m.fbp.json").read_bytes()        # the sidecar read, not an output
    status, out, err = run_cli(capsys, "predict", link, new, "-o", tmp_path / "m.fbp.json")
    assert status == 2 and "same file as the model's sidecar" in err, err
    assert (tmp_path / "m.fbp.json").read_bytes() == before



def test_export_refuses_to_write_the_graph_over_its_model_or_sidecar(tmp_path, trained,
                                                                     capsys):
    """`fastbp export m.fbp m.fbp` replaced the model with its ONNX graph (exit 0; info
    then found no fastbp signature), through a link too, and `export m.fbp m.fbp.json`
    replaced the sidecar: refused before anything is read or written, as predict does."""
    (tmp_path / "graph.onnx").symlink_to(trained)
    before = snapshot(tmp_path)
    for output, what in ((trained, "MODEL"), (tmp_path / "graph.onnx", "MODEL"),
                         (tmp_path / "m.fbp.json", "the model's sidecar")):
        status, out, err = run_cli(capsys, "export", trained, output)
        assert status == 2 and out == "", err
        assert f"same file as {what}" in err and "Traceback" not in err, err
        assert snapshot(tmp_path) == before
    status, out, err = run_cli(capsys, "info", trained)
    assert status == 0, err


def test_train_refuses_to_write_the_model_over_its_training_data(tmp_path, data, capsys):
    before = snapshot(tmp_path)
    status, _, err = run_cli(capsys, "train", data, *TRAIN, "--output", data)
    assert status == 2 and "same file as INPUT" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotted"])
def test_the_same_file_is_recognised_through_links(tmp_path, data, capsys, link):
    other = tmp_path / "other.csv"
    if link == "symlink":
        other.symlink_to(data)
    elif link == "hardlink":
        os.link(data, other)
    else:
        other = tmp_path / "." / "sub" / ".." / "d.csv"
        (tmp_path / "sub").mkdir()
    before = snapshot(tmp_path)
    status, _, err = run_cli(capsys, "train", data, *TRAIN, "--output", other)
    assert status == 2 and "same file as INPUT" in err
    assert snapshot(tmp_path) == before


def test_train_refuses_the_plot_over_the_model_or_its_sidecar(tmp_path, data, trained,
                                                               capsys):
    pytest.importorskip("matplotlib")
    before = snapshot(tmp_path)
    for plot in (trained, f"{trained}.json"):
        status, _, err = run_cli(capsys, "train", data, *TRAIN, "--output", trained,
                                 "--plot", plot)
        assert status == 2 and "--plot" in err and "same file as" in err
    assert snapshot(tmp_path) == before


def test_train_refuses_the_model_over_the_targets_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "X.npy", rng.normal(size=(30, 2)))
    np.save(tmp_path / "y.npy", rng.normal(size=30))
    before = snapshot(tmp_path)
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / "y.npy", "--epochs", "1", "--quiet", "--output",
                             tmp_path / "y.npy")
    assert status == 2 and "same file as --targets" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["model", "sidecar", "input"])
def test_predict_refuses_to_write_over_its_inputs(tmp_path, data, trained, capsys, target):
    output = {"model": trained, "sidecar": f"{trained}.json", "input": data}[target]
    before = snapshot(tmp_path)
    status, _, err = run_cli(capsys, "predict", trained, data, "--output", output)
    assert status == 2 and "same file as" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(not IS_ROOT, reason="creating a device node needs root")
def test_a_character_device_may_be_named_twice(tmp_path, data, trained, capsys):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    status, _, err = run_cli(capsys, "predict", trained, data, "--output", null)
    assert status == 0, err
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    pytest.importorskip("matplotlib")
    status, out, err = run_cli(capsys, "train", data, *TRAIN, "--output", null, "--plot", null)
    assert status == 0, err
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert not os.path.exists(f"{null}.json")


# ---------------------------------------------------------------- non-regular outputs

def read_fifo_while(path, action, timeout=60):
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    try:
        result = action()
        output, _ = reader.communicate(timeout=timeout)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    return result, output


def test_train_into_a_fifo_writes_the_model_there_and_no_sidecar(tmp_path, data, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    status, received = read_fifo_while(
        fifo, lambda: main(["train", str(data), *TRAIN, "--output", str(fifo)]))
    assert status == 0, capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert fastbp.MLP.from_bytes(received).layer_sizes == (3, 4, 3)
    assert not os.path.exists(f"{fifo}.json")
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_predict_into_a_fifo_writes_the_rows_there(tmp_path, data, trained, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    status, received = read_fifo_while(
        fifo, lambda: main(["predict", str(trained), str(data), "--labels", "--output",
                            str(fifo)]))
    assert status == 0
    lines = received.decode().splitlines()
    assert lines[0] == "species" and len(lines) == 61
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_train_refuses_a_socket_as_output_before_training(tmp_path, data, capsys):
    path = tmp_path / "s.fbp"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        status, out, err = run_cli(capsys, "train", data, "--target", "species", "--output",
                                   path)
        assert status == 2 and "socket" in err and "epoch" not in out
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()


# ---------------------------------------------------------------- model and sidecar together

def test_a_model_name_of_229_to_233_bytes_gets_its_sidecar(tmp_path, capsys):
    data = write_flowers(tmp_path / "d.csv")
    for length in (229, 233):
        model = tmp_path / ("m" * (length - 4) + ".fbp")
        status, _, err = run_cli(capsys, "train", data, *TRAIN, "--output", model)
        assert status == 0, err
        sidecar = json.loads(open(f"{model}.json").read())
        assert sidecar["classes"] == ["setosa", "versicolor", "virginica"]


def test_a_name_with_no_room_for_the_sidecar_is_refused_before_training(tmp_path, data,
                                                                        capsys):
    before = snapshot(tmp_path)
    model = tmp_path / ("m" * 248 + ".fbp")              # 252 bytes; the sidecar's: 257
    status, out, err = run_cli(capsys, "train", data, "--target", "species", "--output",
                               model)
    assert status == 2 and "sidecar" in err and "too long" in err and "epoch" not in out
    assert snapshot(tmp_path) == before


def test_a_failed_sidecar_write_keeps_the_previous_model_and_sidecar(tmp_path, trained,
                                                                     capsys, monkeypatch):
    """The model and its sidecar are renamed into place last, and undone together."""
    before = snapshot(tmp_path)
    other = write_flowers(tmp_path / "other.csv", names=("x", "y", "z", "w"), seed=1)
    before[other.name] = other.read_bytes()
    real_replace = os.replace
    calls = []

    def replace(source, target):
        calls.append(os.fspath(target))
        if os.fspath(target).endswith(".fbp.json"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    status, _, err = run_cli(capsys, "train", other, *TRAIN, "--output", trained)
    monkeypatch.undo()
    assert status == 2 and "No space left" in err
    assert snapshot(tmp_path) == before
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    status, out, _ = run_cli(capsys, "predict", trained, tmp_path / "d.csv", "--labels")
    assert status == 0 and set(out.split()[1:]) <= {"setosa", "versicolor", "virginica"}


# ---------------------------------------------------------------- damaged sidecars

@pytest.mark.parametrize("classes", [["setosa"], [], "setosa", [["a"], "b", "c"],
                                     ["a", "b", "c", "d"]])
def test_a_sidecar_with_wrong_classes_is_a_message(tmp_path, data, trained, capsys, classes):
    sidecar = f"{trained}.json"
    document = json.loads(open(sidecar).read())
    document["classes"] = classes
    open(sidecar, "w").write(json.dumps(document))
    for command in (["predict", trained, data, "--labels"], ["evaluate", trained, data],
                    ["info", trained]):
        status, _, err = run_cli(capsys, *command)
        assert status == 2, (command, err)
        assert err.startswith(f"fastbp {command[0]}: error: ") and "classes" in err
        assert "Traceback" not in err


# ---- found by an audit of the command line (2026-12-06) ----

def test_a_damaged_npz_is_a_message_not_a_traceback(tmp_path, capsys):
    """A truncated archive, or one whose member fails its CRC, is exit 2 with one line
    (zipfile's BadZipFile is neither a ValueError nor an OSError), for train and predict,
    as an archive of arrays and as a save_npz matrix."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(X), compressed=False)
    np.save(tmp_path / "y.npy", y)
    status, _, err = run_cli(capsys, "train", tmp_path / "d.npz", "--loss", "cce", "--epochs",
                             "1", "--quiet", "--output", tmp_path / "m.fbp")
    assert status == 0, err
    for source in ("d.npz", "s.npz"):
        raw = (tmp_path / source).read_bytes()
        damaged = bytearray(raw)
        damaged[300:310] = b"\xff" * 10
        (tmp_path / f"crc_{source}").write_bytes(bytes(damaged))
        (tmp_path / f"cut_{source}").write_bytes(raw[:300])
        for name in (f"crc_{source}", f"cut_{source}"):
            for argv in (("predict", tmp_path / "m.fbp", tmp_path / name),
                         ("train", tmp_path / name, "--loss", "cce", "--quiet",
                          "--output", tmp_path / "n.fbp")
                         + (("--targets", tmp_path / "y.npy") if source == "s.npz" else ())):
                status, _, err = run_cli(capsys, *argv)
                assert status == 2, (name, argv[0], err)
                assert err.count("\n") == 1 and ("not a readable" in err
                                                  or "is not readable" in err), err
    assert not (tmp_path / "n.fbp").exists()
    # a compressed archive whose member's deflate stream is damaged: zlib.error (was a
    # traceback and exit 1, the status of a diverged fit)
    import zipfile

    np.savez_compressed(tmp_path / "z.npz", X=X, y=y)
    scipy.sparse.save_npz(tmp_path / "zs.npz", scipy.sparse.csr_matrix(X), compressed=True)
    for source, member in (("z.npz", "X.npy"), ("zs.npz", "data.npy")):
        raw = bytearray((tmp_path / source).read_bytes())
        info = zipfile.ZipFile(tmp_path / source).getinfo(member)
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        raw[start + 40:start + 120] = bytes(b ^ 0xFF for b in raw[start + 40:start + 120])
        (tmp_path / f"zlib_{source}").write_bytes(bytes(raw))
        for argv in (("predict", tmp_path / "m.fbp", tmp_path / f"zlib_{source}"),
                     ("train", tmp_path / f"zlib_{source}", "--loss", "cce", "--quiet",
                      "--output", tmp_path / "n.fbp")
                     + (("--targets", tmp_path / "y.npy") if source == "zs.npz" else ())):
            status, _, err = run_cli(capsys, *argv)
            assert status == 2 and err.count("\n") == 1, (source, argv[0], err)
            assert "decompressing" in err, err
    assert not (tmp_path / "n.fbp").exists()


def test_numpy_input_from_a_pipe_is_read_once(tmp_path, capsys):
    """NPY, NPZ and sparse NPZ files through a pipe (`cat X.npy | fastbp predict m.fbp
    /dev/stdin`): the signature check read the pipe's start, then np.load opened it again
    and found the rest ("No data left in file"), or waited for a writer for ever (NPZ,
    read twice); a pipe is read once."""
    import threading

    import scipy.sparse

    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    model = fastbp.MLP([3, 2], ["softmax"], seed=0)
    model.save(tmp_path / "m.fbp")
    np.save(tmp_path / "X.npy", X)
    np.savez(tmp_path / "X.npz", X=X)
    scipy.sparse.save_npz(tmp_path / "S.npz", scipy.sparse.csr_matrix(X))
    for name, file_format in (("X.npy", "npy"), ("X.npz", "npz"), ("S.npz", "npz")):
        fifo = tmp_path / f"pipe_{name}"
        os.mkfifo(fifo)
        results = []
        reader = threading.Thread(target=lambda: results.append(main(
            ["predict", str(tmp_path / "m.fbp"), str(fifo), "--format", file_format])),
            daemon=True)
        reader.start()
        with open(fifo, "wb") as stream:
            stream.write((tmp_path / name).read_bytes())
        reader.join(60)
        if reader.is_alive():       # (opening the pipe a second time waits for a writer)
            with open(fifo, "wb"):
                pass
            reader.join(10)
            pytest.fail(f"predict opened the pipe of {name} again")
        out, err = capsys.readouterr()
        assert results == [0], (name, err)
        rows = np.array([line.split(",") for line in out.splitlines()[1:]], dtype=np.float64)
        np.testing.assert_allclose(rows, model.predict(X), rtol=1e-6)


def test_info_gives_a_files_size_and_none_for_a_pipe(tmp_path, capsys):
    """info read a model through a pipe and reported "0 bytes" (os.path.getsize of a
    FIFO)."""
    import threading

    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    model.save(tmp_path / "m.fbp")
    status, out, err = run_cli(capsys, "info", tmp_path / "m.fbp", "--json")
    assert status == 0 and json.loads(out)["bytes"] == (tmp_path / "m.fbp").stat().st_size
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for argv in (["--json"], []):
        results = []
        reader = threading.Thread(target=lambda: results.append(main(
            ["info", str(fifo), *argv])), daemon=True)
        reader.start()
        with open(fifo, "wb") as stream:
            stream.write((tmp_path / "m.fbp").read_bytes())
        reader.join(60)
        out, err = capsys.readouterr()
        assert results == [0], err
        if argv:
            assert json.loads(out)["bytes"] is None
        else:
            assert "not a regular file" in out.splitlines()[0]


def test_a_sidecar_of_another_version_is_refused(tmp_path, trained, data, capsys):
    """A sidecar written by a newer fastbp (version 99) was read as this version's."""
    path = tmp_path / "m.fbp.json"
    document = json.loads(path.read_text())
    for version in (99, 0, "1", None):
        path.write_text(json.dumps({**document, "version": version}))
        status, _, err = run_cli(capsys, "predict", trained, data)
        assert status == 2 and f"is a sidecar of version {version!r}" in err, err
    path.write_text(json.dumps(document)[:-1] + ', "classes": ["x", "y", "z"]}')
    status, _, err = run_cli(capsys, "predict", trained, data)     # (JSON kept the last)
    assert status == 2 and "names 'classes' twice" in err, err
    path.write_text(json.dumps(document))
    status, out, err = run_cli(capsys, "predict", trained, data, "--output", "")
    assert status == 2 and out == "" and "empty path" in err, err       # (was stdout)
    path.write_text(json.dumps({**document, "outputs": []}))
    status, _, err = run_cli(capsys, "info", trained)
    assert status == 2 and "3 inputs and 0 outputs" in err, err


def test_a_value_that_is_not_finite_in_an_array_is_named_by_row_and_column(tmp_path, capsys):
    """NaN or infinity in an NPY, NPZ or sparse NPZ feature array was "X contains NaN",
    with no place (a CSV cell names its line and column)."""
    import scipy.sparse

    fastbp.MLP([3, 2], ["softmax"], seed=0).save(tmp_path / "m.fbp")
    X = np.ones((500, 3))
    X[321, 2] = np.nan
    np.save(tmp_path / "X.npy", X)
    np.savez(tmp_path / "X.npz", X=X)
    sparse = scipy.sparse.csr_matrix(np.ones((5, 3)))
    sparse.data[7] = -np.inf
    scipy.sparse.save_npz(tmp_path / "S.npz", sparse)
    for name, place in (("X.npy", "nan in row 321, column 2"),
                        ("X.npz", "nan in row 321, column 2"),
                        ("S.npz", "-inf in row 2, column 1")):
        status, out, err = run_cli(capsys, "predict", tmp_path / "m.fbp", tmp_path / name)
        assert status == 2 and out == "" and f"the feature array holds {place}" in err, err


def test_evaluate_json_is_strict_json(tmp_path, capsys):
    """R² of one row is NaN, which --json writes as null (JSON has no NaN)."""
    rows = ["a,b,price", "0.1,0.2,0.3", "0.4,0.1,0.9", "1,2,3"]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "one.csv").write_text("\n".join(rows[:2]) + "\n")
    status, _, err = run_cli(capsys, "train", tmp_path / "r.csv", "--hidden", "4", "--epochs",
                             "1", "--quiet", "--output", tmp_path / "reg.fbp")
    assert status == 0, err
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "reg.fbp", tmp_path / "one.csv",
                               "--json")
    assert status == 0, err

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    figures = json.loads(out, parse_constant=refuse)
    assert figures["rows"] == 1 and figures["r2"] is None and figures["loss"] >= 0


def test_labels_that_look_like_numbers_keep_their_identity(tmp_path, capsys):
    """A label column is taken as numbers only where no label is lost that way: leading
    zeros (ZIP codes) and integers past float64's exact range (IDs) stay text, written
    back as they were; plain numbers stay numbers, and two spellings of one number are
    one class (1 and 1.0 were two classes, and two outputs, as were 1.5 and 1.50)."""
    rng = np.random.default_rng(0)
    for labels, expected in ((["00501", "02134", "9007199254740993", "9007199254740992"],
                              ["00501", "02134", "9007199254740992", "9007199254740993"]),
                             (["3", "10", "-1", "7"], [-1, 3, 7, 10]),
                             (["1", "1.0", "2", "+2.00"], [1, 2]),
                             (["1.50", "1.5", "3", "3e0"], [1.5, 3])):
        lines = ["x,y,cls"] + [f"{rng.random():.3f},{rng.random():.3f},{labels[i % 4]}"
                               for i in range(40)]
        (tmp_path / "ids.csv").write_text("\n".join(lines) + "\n")
        status, _, err = run_cli(capsys, "train", tmp_path / "ids.csv", "--loss", "cce",
                                 "--hidden", "4", "--epochs", "1", "--quiet",
                                 "--output", tmp_path / "ids.fbp")
        assert status == 0, err
        sidecar = json.loads((tmp_path / "ids.fbp.json").read_text())
        assert sidecar["classes"] == expected
        status, out, err = run_cli(capsys, "predict", tmp_path / "ids.fbp",
                                   tmp_path / "ids.csv", "--labels")
        assert status == 0, err
        assert set(out.split()[1:]) <= {str(label) for label in expected}
        status, out, err = run_cli(capsys, "evaluate", tmp_path / "ids.fbp",
                                   tmp_path / "ids.csv", "--json")
        assert status == 0, err


def test_a_csv_without_any_of_the_models_feature_columns_is_refused(tmp_path, data, trained,
                                                                    capsys):
    """The sidecar names the feature columns: a file that has none of them is another
    file's columns, refused as one missing some is, not read by position."""
    (tmp_path / "other.csv").write_text("height,weight,mass\n0.5,-0.5,1\n")
    for command in ("predict", "evaluate"):
        argv = [command, trained, tmp_path / "other.csv"]
        status, _, err = run_cli(capsys, *argv + (["--target", "mass"]
                                                  if command == "evaluate" else []))
        assert status == 2 and "lacks the feature column(s) 'a', 'b', 'c'" in err, err


@pytest.mark.parametrize("argv, message", [
    (["train", "{data}", *TRAIN, "--validation-split", "-0.5", "--output", "{out}"],
     "--validation-split must be between 0 and 1"),
    (["demo", "--samples", "-5", "--epochs", "1"], "must be >= 1; got -5"),
])
def test_option_values_below_their_range_are_refused(tmp_path, data, capsys, argv, message):
    argv = [str(a).format(data=data, out=tmp_path / "m.fbp") for a in argv]
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.fbp").exists()


def test_a_model_with_number_classes_reads_the_same_numbers_written_with_leading_zeros(
        tmp_path, capsys):
    """Labels kept as text for their leading zeros still find a model's number classes
    (a model trained on 501 and 2134 evaluates a file that writes 00501 and 02134)."""
    rng = np.random.default_rng(0)
    for name, labels in (("a.csv", ["501", "2134"]), ("b.csv", ["00501", "02134"])):
        lines = ["x,cls"] + [f"{rng.random():.3f},{labels[i % 2]}" for i in range(20)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    status, _, err = run_cli(capsys, "train", tmp_path / "a.csv", "--loss", "cce", "--hidden",
                             "3", "--epochs", "1", "--quiet", "--output", tmp_path / "m.fbp")
    assert status == 0, err
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "m.fbp", tmp_path / "b.csv",
                               "--json")
    assert status == 0, err
    assert json.loads(out)["rows"] == 20


# ---- found by a third audit of the command line (2026-12-06) ----

def one_line_error(status, err, command):
    return status == 2 and err.count("\n") == 1 and \
        err.startswith(f"fastbp {command}: error: ") and "Traceback" not in err


def test_targets_with_no_columns_are_refused(tmp_path, capsys):
    """A targets array of shape (rows, 0) was an IndexError traceback in train and
    evaluate."""
    X = np.random.default_rng(0).normal(size=(30, 3))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y0.npy", np.zeros((30, 0)))
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros((30, 0)))
    fastbp.MLP([3, 2], ["softmax"], seed=0).save(tmp_path / "m.fbp")
    for argv in (("train", tmp_path / "X.npy", "--targets", tmp_path / "y0.npy"),
                 ("train", tmp_path / "d.npz"),
                 ("evaluate", tmp_path / "m.fbp", tmp_path / "X.npy", "--targets",
                  tmp_path / "y0.npy")):
        status, _, err = run_cli(capsys, *argv, *(["-q", "-o", tmp_path / "n.fbp"]
                                                  if argv[0] == "train" else []))
        assert one_line_error(status, err, argv[0]), err
        assert "have no columns (shape (30, 0))" in err, err
    assert not (tmp_path / "n.fbp").exists()


def test_an_npz_member_that_is_not_npy_data_is_named(tmp_path, capsys):
    """NumPy hands an archive's member that is not NPY data over as raw bytes: train and
    predict failed with AttributeError tracebacks ('bytes' object has no attribute
    'dtype', 'item')."""
    import zipfile

    import scipy.sparse

    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as archive:
        archive.writestr("X", b"hello")
        archive.writestr("y", b"world")
    with zipfile.ZipFile(tmp_path / "rawfmt.npz", "w") as archive:
        for name in ("format", "shape", "data"):
            archive.writestr(name, b"junk")
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(np.eye(4, 3)))
    with zipfile.ZipFile(tmp_path / "s.npz") as source, \
            zipfile.ZipFile(tmp_path / "rawdata.npz", "w") as archive:
        for name in source.namelist():          # a real sparse archive but for its data
            archive.writestr(name, b"junk" if name == "data.npy" else source.read(name))
    np.save(tmp_path / "y.npy", np.arange(4.0))
    fastbp.MLP([3, 2], ["softmax"], seed=0).save(tmp_path / "m.fbp")
    for name, member in (("raw.npz", "'X'"), ("rawfmt.npz", "'format'"),
                         ("rawdata.npz", "'data.npy'")):
        for argv in (("train", tmp_path / name, "--targets", tmp_path / "y.npy", "-q", "-o",
                      tmp_path / "n.fbp") if name == "rawdata.npz" else
                     ("train", tmp_path / name, "-q", "-o", tmp_path / "n.fbp"),
                     ("predict", tmp_path / "m.fbp", tmp_path / name)):
            status, _, err = run_cli(capsys, *argv)
            assert one_line_error(status, err, argv[0]), err
            assert f"the member {member} of {tmp_path / name} is not a NumPy array" in err, err
    assert not (tmp_path / "n.fbp").exists()


def test_train_whose_progress_reader_went_away_still_writes_the_model(tmp_path, data):
    """`fastbp train ... | head -1` exited 0 at once, with no model written: the broken pipe
    was taken as the end `predict ... | head` means. Training goes on without progress and
    writes the model; predict into a closed pipe still ends quietly with status 0."""
    def run_into_a_closed_pipe(*argv):
        read_end, write_end = os.pipe()
        os.close(read_end)              # the reader is gone before the first line
        try:
            return subprocess.run([sys.executable, "-m", "fastbp", *map(str, argv)],
                                  stdout=write_end, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        finally:
            os.close(write_end)

    result = run_into_a_closed_pipe("train", data, "--target", "species", "--hidden", "4",
                                    "--epochs", "3", "--seed", "0", "-o", tmp_path / "m.fbp")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert fastbp.load(tmp_path / "m.fbp").layer_sizes == (3, 4, 3)
    assert json.loads((tmp_path / "m.fbp.json").read_text())["targets"] == ["species"]
    result = run_into_a_closed_pipe("predict", tmp_path / "m.fbp", data)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux's /dev/stdout")
def test_a_model_written_to_stdout_gets_the_progress_on_stderr(tmp_path, data):
    """train -o /dev/stdout (a pipe) wrote its progress lines into the model's bytes."""
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", str(data), "--target",
                             "species", "--hidden", "4", "--epochs", "2", "--seed", "0",
                             "-o", "/dev/stdout"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert fastbp.MLP.from_bytes(result.stdout).layer_sizes == (3, 4, 3)
    progress = result.stderr.decode()
    assert "epoch 2/2" in progress and "wrote /dev/stdout (no sidecar" in progress, progress


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_a_file_name_that_is_not_utf8_does_not_lose_the_training(tmp_path, capsys):
    """An INPUT (or --targets) name that is not UTF-8 trained every epoch, then failed to
    write the sidecar ('utf-8' codec can't encode '\\udcff'): nothing was written. Its odd
    bytes are recorded as \\xNN; a name the sidecar cannot hold at all (a text label with a
    lone surrogate) is refused before training."""
    data = write_flowers(tmp_path / os.fsdecode(b"data\xff.csv"))
    # (not --quiet: the summary names the file on a stream that takes UTF-8 only)
    status, out, err = run_cli(capsys, "train", data, *TRAIN[:-1], "-o", tmp_path / "m.fbp")
    assert status == 0 and "data\\xff.csv" in out, err
    assert json.loads((tmp_path / "m.fbp.json").read_text(encoding="utf-8"))[
        "trained_on"] == "data\\xff.csv"
    rng = np.random.default_rng(0)
    np.save(tmp_path / "X.npy", rng.normal(size=(20, 3)))
    np.save(tmp_path / os.fsdecode(b"y\xfe.npy"), rng.normal(size=20))
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / os.fsdecode(b"y\xfe.npy"), "--hidden", "4",
                             "--epochs", "1", "-q", "-o", tmp_path / "r.fbp")
    assert status == 0, err
    sidecar = json.loads((tmp_path / "r.fbp.json").read_text(encoding="utf-8"))
    assert sidecar["targets"] == sidecar["outputs"] == ["y\\xfe"]
    status, out, err = run_cli(capsys, "predict", tmp_path / "r.fbp", tmp_path / "X.npy")
    assert status == 0 and out.splitlines()[0] == "y\\xfe", err
    np.save(tmp_path / "labels.npy", np.array(["a\udcff", "b"] * 10))
    status, out, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                               tmp_path / "labels.npy", "--loss", "cce", "--epochs", "1",
                               "-o", tmp_path / "l.fbp")
    assert one_line_error(status, err, "train") and "epoch" not in out, err
    assert "cannot record 'a\\udcff' (one of the model's classes)" in err, err
    assert not (tmp_path / "l.fbp").exists()


def test_predict_and_evaluate_refuse_to_drop_a_feature_of_the_model(tmp_path, data, trained,
                                                                     capsys):
    """--drop of a column the sidecar lists as a feature was ignored: the model still read
    it, and the command ended with status 0."""
    for command in ("predict", "evaluate"):
        status, out, err = run_cli(capsys, command, trained, data, "--drop", "b")
        assert one_line_error(status, err, command) and out == "", err
        assert "--drop b: the model was trained on this column" in err, err
    lines = data.read_text().splitlines()
    (tmp_path / "extra.csv").write_text("\n".join(
        [f"id,{lines[0]}"] + [f"{row},{line}" for row, line in enumerate(lines[1:])]) + "\n")
    status, out, err = run_cli(capsys, "predict", trained, tmp_path / "extra.csv", "--drop",
                               "id")     # a column the model does not take: left out
    assert status == 0 and len(out.splitlines()) == 61, err


def test_messages_say_what_and_where(tmp_path, capsys):
    """Bytes targets that are not ASCII were "'ascii' codec can't decode byte 0xff", with
    no file; 1e39 (a feature or a target) in a float32 model was the library's "X (Y)
    contains NaN or infinity", with no place and no word of --dtype float64; --seed -3 did not name --seed; an unclosed
    quote in the header was "a header row but no rows of data"; evaluate --help said
    --target defaults to the last column (it is the sidecar's targets)."""
    X = np.random.default_rng(0).normal(size=(20, 2))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "bad.npy", np.array([b"a", b"\xff"] * 10))
    np.save(tmp_path / "utf8.npy", np.array(["é".encode(), b"e"] * 10))
    train = ["--loss", "cce", "--hidden", "2", "--epochs", "1", "-q", "-o", tmp_path / "m.fbp"]
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / "bad.npy", *train)
    assert one_line_error(status, err, "train"), err
    assert f"{tmp_path / 'bad.npy'}, row 1: the targets are bytes, and b'\\xff' is not UTF-8" \
        in err, err
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npy", "--targets",
                             tmp_path / "utf8.npy", *train)
    assert status == 0, err         # (UTF-8 bytes are text, as in a CSV file)
    assert json.loads((tmp_path / "m.fbp.json").read_text())["classes"] == ["e", "é"]

    (tmp_path / "big.csv").write_text("x,y,t\n1,2,a\n3,1e39,b\n5,6,a\n")
    status, _, err = run_cli(capsys, "train", tmp_path / "big.csv", *train)
    assert one_line_error(status, err, "train"), err
    assert "big.csv, line 3: the feature column 'y' holds '1e39', too large for float32" in err
    assert "--dtype float64" in err
    status, _, err = run_cli(capsys, "train", tmp_path / "big.csv", *train, "--dtype",
                             "float64")
    assert status == 0, err
    (tmp_path / "big_target.csv").write_text("x,t\n1,2\n3,1e39\n")
    status, _, err = run_cli(capsys, "train", tmp_path / "big_target.csv", "--loss", "mse",
                             *train[2:])
    assert one_line_error(status, err, "train"), err
    assert "big_target.csv, line 3: the target column 't' holds '1e39', too large for " \
        "float32" in err, err
    X[7, 1] = -1e39
    np.save(tmp_path / "big.npy", X)
    fastbp.MLP([2, 2], ["softmax"], seed=0).save(tmp_path / "f32.fbp")
    status, _, err = run_cli(capsys, "predict", tmp_path / "f32.fbp", tmp_path / "big.npy")
    assert one_line_error(status, err, "predict"), err
    assert "the feature array holds -1e+39 in row 7, column 1; too large for float32" in err

    for argv in (["demo", "--seed", "-3"], ["bench", "--builtin", "--seed", "-1"]):
        status, _, err = run_cli(capsys, *argv)
        assert one_line_error(status, err, argv[0]) and "--seed must be >= 0" in err, err

    (tmp_path / "quote.csv").write_text('x,"y\n1,2\n')
    status, _, err = run_cli(capsys, "train", tmp_path / "quote.csv", *train)
    assert one_line_error(status, err, "train"), err
    assert "quote.csv, line 1: the quote that opens column 1 of the header is never " \
        "closed" in err, err

    status, out, _ = run_cli(capsys, "evaluate", "--help")
    assert status == 0 and "trained with, from its sidecar" in " ".join(out.split())


@pytest.mark.parametrize("matrix_format, drop", [("csc", []), ("csr", ["--drop", "0"])])
def test_a_sparse_npz_with_indices_past_its_shape_is_refused_not_a_crash(
        tmp_path, matrix_format, drop):
    """A crafted save_npz file whose index arrays point past its shape crashed the process
    (a segfault, status 139) in train and predict: scipy's tocsr (CSC) and its column
    selection (CSR, with --drop) read the indices unchecked. In a subprocess: the crash
    would take pytest down."""
    import scipy.sparse

    scipy.sparse.save_npz(tmp_path / "good.npz",
                          scipy.sparse.csr_matrix(np.eye(6, 4)).asformat(matrix_format))
    members = dict(np.load(tmp_path / "good.npz"))
    members["indices"] = members["indices"].copy()
    members["indices"][-1] = 40_000_000
    np.savez(tmp_path / "bad.npz", **members)
    np.save(tmp_path / "y.npy", np.arange(6.0))
    fastbp.MLP([4 - len(drop) // 2, 1], ["identity"]).save(tmp_path / "m.fbp")
    for argv in (["train", tmp_path / "bad.npz", "--targets", tmp_path / "y.npy", "--epochs",
                  "1", "-q", "-o", tmp_path / "n.fbp", *drop],
                 ["predict", tmp_path / "m.fbp", tmp_path / "bad.npz", *drop]):
        result = subprocess.run([sys.executable, "-m", "fastbp", *map(str, argv)],
                                capture_output=True, text=True, timeout=120)
        assert one_line_error(result.returncode, result.stderr, argv[0]), result.stderr
        axis = {"csr": "column", "csc": "row"}.get(matrix_format, "block-column")
        assert f"{tmp_path / 'bad.npz'} is a malformed {matrix_format.upper()} matrix: its " \
               f"{axis} indices must lie in" in result.stderr, result.stderr
    assert not (tmp_path / "n.fbp").exists()


# ---------------------------------------------------------------- found by a review (12-07)

def test_a_quote_left_open_in_a_data_row_is_refused_naming_its_line(tmp_path, trained,
                                                                      capsys):
    """The csv module reads a quote left open to the end of the file: predict wrote 4 rows
    for 100 and exited 0, train learned a class named after the rest of the file."""
    lines = ["a,b,c,species"] + [f"0.{i:02d},0.5,0.1,setosa" for i in range(100)]
    lines[4] = '0.03,0.5,0.1,"setosa'
    (tmp_path / "open.csv").write_text("\n".join(lines) + "\n")
    for argv in (("predict", trained, tmp_path / "open.csv", "-o", tmp_path / "p.csv"),
                 ("train", tmp_path / "open.csv", *TRAIN, "-o", tmp_path / "n.fbp"),
                 ("evaluate", trained, tmp_path / "open.csv")):
        status, _, err = run_cli(capsys, *argv)
        assert one_line_error(status, err, argv[0]), err
        assert "open.csv, line 5: a field runs on over several lines: a quote opened " \
               "there is never closed" in err, err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "n.fbp").exists()
    # a quoted field on one line is still a field
    lines[4] = '0.03,0.5,0.1,"setosa"'
    (tmp_path / "closed.csv").write_text("\n".join(lines) + "\n")
    status, out, err = run_cli(capsys, "predict", trained, tmp_path / "closed.csv")
    assert status == 0 and len(out.splitlines()) == 101, err


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux's /dev/stdout")
def test_an_output_that_is_the_regular_file_stdout_goes_to_is_refused(tmp_path, data):
    """train -o /dev/stdout > FILE replaced FILE by a new file: the progress went into the
    one it unlinked, and with >> an existing log was replaced by the model."""
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    for command in ("train", "export"):
        argv = ["train", str(data), *TRAIN, "-o", "/dev/stdout"] if command == "train" else \
            ["export", str(tmp_path / "m.fbp"), "/dev/stdout"]
        if command == "export":
            fastbp.MLP([3, 4, 3], ["relu", "softmax"], seed=0).save(tmp_path / "m.fbp")
        with open(log, "ab") as stdout:
            result = subprocess.run([sys.executable, "-m", "fastbp", *argv], stdout=stdout,
                                    stderr=subprocess.PIPE, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "/dev/stdout is the file standard output goes to" in result.stderr
        assert log.read_text() == "an earlier line\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux's /dev/stdout")
def test_export_to_stdout_says_what_it_wrote_on_stderr_and_a_closed_pipe_is_an_error(
        tmp_path):
    """The summary went to stdout after the graph's bytes (onnx.load: "Wire format was
    corrupt"), and a reader that went away gave status 0 with the graph cut short."""
    model = fastbp.MLP([3, 4, 3], ["relu", "softmax"], seed=0)
    model.save(tmp_path / "m.fbp")
    if _has_onnx():
        model.to_onnx(tmp_path / "file.onnx")
    result = subprocess.run([sys.executable, "-m", "fastbp", "export", str(tmp_path / "m.fbp"),
                             "/dev/stdout"], capture_output=True, timeout=120)
    if not _has_onnx():
        assert result.returncode == 2 and b"onnx" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout == (tmp_path / "file.onnx").read_bytes()
    assert b"wrote /dev/stdout: ONNX" in result.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "fastbp", "export",
                                 str(tmp_path / "m.fbp"), "/dev/stdout"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 2 and "the reader of a pipe went away before the graph " \
                                      "was all written" in result.stderr, result.stderr


def _has_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("hidden", [",", " ", "0", ""])
def test_hidden_widths_that_name_none_are_refused_only_none_means_none(tmp_path, data,
                                                                       capsys, hidden):
    """--hidden ',', ' ', '' and '0' trained a network with no hidden layer."""
    status, _, err = run_cli(capsys, "train", data, *TRAIN, "--hidden", hidden, "-o",
                             tmp_path / "n.fbp")
    assert status == 2 and "--hidden" in err and ("every width must be >= 1" in err
                                                  if hidden == "0" else "or none" in err), err
    status, _, err = run_cli(capsys, "train", data, *TRAIN, "--hidden", "none", "-o",
                             tmp_path / "n.fbp")
    assert status == 0 and fastbp.load(tmp_path / "n.fbp").layer_sizes == (3, 3), err


def test_settings_of_the_model_and_threads_are_refused_naming_the_option(tmp_path, data,
                                                                         capsys):
    for options, message in ((["--threads", "5000"], "--threads must be at most"),
                             (["--dropout", "1.5"], "--dropout rates must be in [0, 1)"),
                             (["--loss", "bce", "--output-activation", "softmax"],
                              "a softmax output layer of one unit outputs 1")):
        argv = ["train", data, "--target", "species", "--hidden", "4", "--epochs", "1",
                "-q", *options, "-o", tmp_path / "n.fbp"]
        if options[0] == "--loss":       # (one 0/1 target column: one output unit)
            argv[2:4] = ["--target", "a"]
            rng = np.random.default_rng(0)
            np.savetxt(tmp_path / "bin.csv", np.c_[rng.normal(size=(20, 3)),
                                                   rng.integers(0, 2, 20)],
                       delimiter=",", header="x,y,z,a", comments="", fmt="%g")
            argv[1] = tmp_path / "bin.csv"
        status, _, err = run_cli(capsys, *argv)
        assert one_line_error(status, err, "train") and message in err, err
        assert not (tmp_path / "n.fbp").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_info_json_of_a_model_whose_name_is_not_utf8_is_valid_utf8(tmp_path, capsys):
    path = tmp_path / os.fsdecode(b"m\xff.fbp")
    fastbp.MLP([3, 4, 3], ["relu", "softmax"], seed=0).save(path)
    status = main(["info", str(path), "--json"])
    out = capsys.readouterr().out
    assert status == 0 and json.loads(out.encode("utf-8", "surrogateescape").decode(
        "utf-8"))["path"].endswith("m\\xff.fbp"), out


def test_a_sidecar_whose_loss_is_no_loss_is_refused_naming_the_sidecar(trained, data,
                                                                       capsys):
    sidecar = json.loads((trained.parent / "m.fbp.json").read_text())
    for loss in (123, "no_such_loss", ["mse"]):
        sidecar["loss"] = loss
        (trained.parent / "m.fbp.json").write_text(json.dumps(sidecar))
        for argv in (("predict", trained, data), ("evaluate", trained, data),
                     ("info", trained)):
            status, _, err = run_cli(capsys, *argv)
            assert one_line_error(status, err, argv[0]), err
            assert "m.fbp.json (the model's sidecar): loss must be one of" in err, err


def test_a_sparse_file_whose_shape_is_0d_is_refused_naming_the_file(tmp_path, trained,
                                                                    capsys):
    import scipy.sparse
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(np.eye(4, 3)))
    with np.load(tmp_path / "s.npz") as archive:
        arrays = dict(archive)
    arrays["shape"] = np.array(3)
    np.savez(tmp_path / "shape0d.npz", **arrays)
    status, _, err = run_cli(capsys, "predict", trained, tmp_path / "shape0d.npz")
    assert one_line_error(status, err, "predict") and \
        "shape0d.npz: not a readable scipy.sparse matrix" in err, err


def test_bench_with_no_workload_named_is_refused(capsys):
    status, _, err = run_cli(capsys, "bench", "--builtin", "--workloads", ",")
    assert one_line_error(status, err, "bench") and "--workloads names none" in err, err


def test_predict_with_stdout_closed_says_so(tmp_path, trained, data):
    result = subprocess.run([sys.executable, "-m", "fastbp", "predict", str(trained),
                             str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, timeout=120, close_fds=True,
                            preexec_fn=lambda: os.close(1))
    assert result.returncode == 2, result.stderr
    assert "standard output is closed" in result.stderr, result.stderr
