"""Reading the command line's input (fastbp/cli/tables.py): what a crafted or unusual file
did before it was checked. A sparse header of 2**62 columns filled the memory; a CSV line
of empty cells was dropped (the predictions no longer lined up with the rows); scipy cast
a saved matrix's index arrays before fastbp saw them (float indices truncated, a DIA
offset of 2**32 wrapped to the main diagonal); a BSR with an empty block divided by zero;
float16 input warned of an overflow and let infinity through; an NPY header claiming 14.6
TiB was "not enough memory"; "1_2" was read as 12."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp.__main__ import main


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def refused(status, out, err, command, message):
    """A usage error: status 2, one line on stderr that holds `message`, nothing on stdout."""
    return status == 2 and out == "" and err.count("\n") == 1 and \
        err.startswith(f"fastbp {command}: error: ") and message in err


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.fbp"
    fastbp.MLP([2, 3, 1], ["relu", "identity"], seed=0).save(path)
    return path


def save_sparse(path, form, shape, **members):
    """An archive as scipy.sparse.save_npz writes one, with its members as given."""
    np.savez(path, format=np.array(form.encode()), shape=np.array(shape), **members)
    return path


# ------------------------------------------------------------------- 1: huge sparse widths

@pytest.mark.skipif(sys.platform != "linux", reason="limits a child's memory (RLIMIT_AS)")
def test_a_sparse_header_of_a_huge_width_is_refused_before_anything_grows_with_it(
        tmp_path, model):
    """`predict m.fbp h.npz` with a 1.3 KB CSR claiming 2**62 columns built a name for
    each column before comparing the width with the model's inputs: it grew to GBs and
    ended "not enough memory" (COO and DIA with 10**12 columns too). In a child process
    whose memory is limited, so that the old behaviour fails fast instead of filling the
    machine."""
    files = [save_sparse(tmp_path / "csr.npz", "csr", [3, 2**62], data=np.ones(3),
                         indices=np.array([0, 1, 0]), indptr=np.array([0, 1, 2, 3])),
             save_sparse(tmp_path / "coo.npz", "coo", [3, 10**12], data=np.ones(3),
                         row=np.array([0, 1, 2]), col=np.array([0, 1, 0])),
             save_sparse(tmp_path / "dia.npz", "dia", [3, 10**12], data=np.ones((1, 3)),
                         offsets=np.array([0]))]
    np.save(tmp_path / "y.npy", np.arange(3.0))
    runs = [["predict", model, path] for path in files] + \
        [["train", files[0], "--targets", tmp_path / "y.npy", "-q", "-o", tmp_path / "n.fbp"]]
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
              "from fastbp.__main__ import main\n"
              "for argv in sys.argv[1:]:\n"
              "    print(main(argv.split('|')), file=sys.stderr, flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script,
                             *("|".join(map(str, argv)) for argv in runs)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    lines = result.stderr.splitlines()
    assert result.returncode == 0 and len(lines) == 2 * len(runs), result.stderr
    for path, (message, status) in zip(files, zip(lines[0:6:2], lines[1:6:2])):
        width = "4,611,686,018,427,387,904" if path.name == "csr.npz" else "1,000,000,000,000"
        assert status == "2" and message == f"fastbp predict: error: {path} gives {width} " \
            f"feature columns; the model takes 2 inputs (leave columns out with --drop)"
    assert lines[-1] == "2" and lines[-2] == (
        f"fastbp train: error: {files[0]} gives 4,611,686,018,427,387,904 feature columns; "
        f"a model takes at most 2,147,483,647 inputs")


def test_a_sparse_file_of_the_models_width_still_predicts(tmp_path, model, capsys):
    """(The width is compared without a list of the columns; a matching one is read.)"""
    scipy.sparse.save_npz(tmp_path / "x.npz", scipy.sparse.coo_matrix(np.eye(3, 2)))
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "x.npz")
    assert status == 0 and len(out.splitlines()) == 4, err
    expected = fastbp.load(model).predict(np.eye(3, 2))
    assert np.allclose(np.array(out.split()[1:], dtype=float), expected[:, 0], rtol=1e-6)


# --------------------------------------------------------------- 2: a CSV row of empty cells

def test_a_csv_row_of_empty_cells_is_refused_not_dropped(tmp_path, model, capsys):
    """`x,y / 0.1,0.2 / , / 0.3,0.4` gave 2 predictions for 3 records, status 0 (train
    dropped the row too): a row of empty cells was taken for a blank line. It is refused
    as `,5` is; a blank line (or one of spaces only) is still skipped."""
    (tmp_path / "a.csv").write_text("x,y\n0.1,0.2\n,\n0.3,0.4\n")
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "a.csv")
    assert refused(status, out, err, "predict", f"{tmp_path / 'a.csv'}, line 3: the feature "
                   f"column 'x' is empty; fastbp needs a number in every feature cell"), err
    (tmp_path / "t.csv").write_text("x,y,label\n0.1,0.2,a\n , ,\n0.3,0.4,b\n")
    status, out, err = run_cli(capsys, "train", tmp_path / "t.csv", "-q", "-o",
                               tmp_path / "n.fbp")
    assert refused(status, out, err, "train", "line 3: the feature column 'x' is empty"), err
    (tmp_path / "b.csv").write_text("x,y\n0.1,0.2\n\n   \n0.3,0.4\n")
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "b.csv")
    assert status == 0 and len(out.splitlines()) == 3, err


# ------------------------------------------------- 3: index arrays as the file holds them

@pytest.mark.parametrize("form, shape, members, message", [
    ("dia", [3, 2], {"data": np.array([[5.0, 7.0]]), "offsets": np.array([2**32])},
     " is a malformed DIA matrix: its diagonal offsets must lie in -2..1; got values from "
     "4294967296 to 4294967296"),
    ("csr", [3, 2], {"data": np.ones(3), "indices": np.array([0.9, 1.7, 0.2]),
                     "indptr": np.array([0, 1, 2, 3])},
     ": the array 'indices' of the sparse matrix must hold integers (scipy casts it to them "
     "unchecked: 0.9 to 0); it has dtype float64"),
    ("coo", [3.0, 2.0], {"data": np.ones(3), "row": np.arange(3), "col": np.zeros(3, int)},
     ": the array 'shape' of the sparse matrix must hold integers"),
    ("csc", [3, 2], {"data": np.ones(2), "indices": np.array([0, 1], dtype=np.uint64),
                     "indptr": np.array([0, 1, 2], dtype=np.uint64) * (2**63 + 1)},
     ": the array 'indptr' of the sparse matrix holds 9223372036854775809, past "
     "9223372036854775807"),
])
def test_sparse_index_arrays_are_checked_as_the_file_holds_them(tmp_path, model, capsys,
                                                                form, shape, members,
                                                                message):
    """scipy.sparse.load_npz casts the index arrays to its index type before fastbp looked:
    a DIA offset of 2**32 became 0 in int32 (predict used the main diagonal, status 0),
    float CSR indices [0.9, 1.7, 0.2] became [0, 1, 0] and were accepted."""
    path = save_sparse(tmp_path / "x.npz", form, shape, **members)
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", f"{path}{message}"), err


def test_the_library_checks_a_dia_matrixs_offsets(tmp_path):
    """as_csr checked CSR, CSC, BSR and COO but not DIA: offsets past the matrix or not
    integers (truncated by scipy's conversion) went through."""
    model = fastbp.MLP([2, 1], ["identity"], seed=0)
    matrix = scipy.sparse.dia_matrix((np.array([[5.0, 7.0]]), [0]), shape=(3, 2))
    assert model.predict(matrix).shape == (3, 1)
    for offsets, message in (([5], "diagonal offsets must lie in -2..1; got values from 5"),
                             ([0.7], "offsets must be integers; got float64")):
        matrix.offsets = np.array(offsets)
        with pytest.raises(ValueError, match=f"X is a malformed DIA matrix: .*{message}"):
            model.predict(matrix)


# -------------------------------------------------------------------- 4: BSR block sizes

def test_a_bsr_whose_blocks_do_not_divide_its_shape_is_refused_by_name(tmp_path, model,
                                                                       capsys):
    """A BSR with a 2x0 block raised ZeroDivisionError in model.predict and Trainer.fit
    (and a traceback from the command line); one of shape 5x2 in 2x2 blocks was "a
    malformed CSR matrix"."""
    zero = scipy.sparse.bsr_matrix((np.ones((2, 2, 0)), np.array([0, 0], np.int32),
                                    np.array([0, 1, 2], np.int32)), shape=(4, 2))
    net = fastbp.MLP([2, 1], ["identity"], seed=0)
    trainer = fastbp.Trainer("mse", epochs=1)
    blocks = "X is a malformed BSR matrix: its blocks are 2x0, which must be at least 1x1 " \
             "and divide its shape 4x2"
    with pytest.raises(ValueError, match=blocks):
        net.predict(zero)
    with pytest.raises(ValueError, match=blocks):
        trainer.fit(net, zero, np.zeros(4))
    path = save_sparse(tmp_path / "b.npz", "bsr", [5, 2], data=np.ones((2, 2, 2)),
                       indices=np.array([0, 0]), indptr=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="X is a malformed BSR matrix: its blocks are 2x2, "
                                         "which must be at least 1x1 and divide its shape 5x2"):
        net.predict(scipy.sparse.load_npz(path))
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", f"{path} is a malformed BSR matrix"), err
    scipy.sparse.save_npz(path, zero)
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", "its blocks are 2x0"), err


# ---------------------------------------------------------------------- 5: float16 input

def test_float16_input_is_checked_without_an_overflow_warning(tmp_path, model, capsys):
    """Every float16 NPY printed "warning: overflow encountered in cast" (float32's limit
    is infinity in float16), and a float16 inf passed the range check, to fail in the
    library as "X contains NaN or infinity", not where. A float32 file read for a float64
    model warned the same way."""
    np.save(tmp_path / "ok.npy", np.array([[1, 2], [3, 4]], dtype=np.float16))
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "ok.npy")
    assert status == 0 and err == "" and len(out.splitlines()) == 3, err
    np.save(tmp_path / "inf.npy", np.array([[1, 2], [3, np.inf]], dtype=np.float16))
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "inf.npy")
    assert refused(status, out, err, "predict", f"{tmp_path / 'inf.npy'}: the feature array "
                   f"holds inf in row 1, column 1; every value must be a finite number"), err
    np.save(tmp_path / "f32.npy", np.ones((4, 3), dtype=np.float32))
    status, out, err = run_cli(capsys, "train", tmp_path / "f32.npy", "--target", "0",
                               "--dtype", "float64", "--epochs", "1", "-q", "-o",
                               tmp_path / "n.fbp")
    assert status == 0 and err == "", err


# ------------------------------------------------------------- 6: an NPY header that lies

def test_an_npy_header_claiming_more_than_the_file_holds_is_truncated(tmp_path, model,
                                                                      capsys):
    """A 176-byte NPY whose header claims shape (10**12, 2) reported "not enough memory
    (Unable to allocate 14.6 TiB ...)"; so did such an array in an NPZ archive."""
    path = tmp_path / "big.npy"
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (10**12, 2)})
        stream.write(bytes(48))
    assert path.stat().st_size == 176
    claim = "is truncated: its header claims an array of shape (1000000000000, 2) and " \
            "dtype float64, 16,000,000,000,000 bytes of data, and it holds 48"
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", f"{path} {claim}"), err
    archive = tmp_path / "big.npz"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("X.npy", path.read_bytes())
    status, out, err = run_cli(capsys, "predict", model, archive, "--format", "npz")
    assert refused(status, out, err, "predict", f"the array 'X' in {archive} {claim}"), err


# --------------------------------------------------------------- 7: what a CSV number is

@pytest.mark.parametrize("cell", ["1_2", "1e5_0", "١٢", "１２"])
def test_a_cell_with_an_underscore_or_beyond_ascii_is_not_a_number(tmp_path, model, capsys,
                                                                   cell):
    """Python's float() and NumPy read "1_2" as 12, "1e5_0" as 1e50 and Arabic-Indic or
    full-width digits as numbers: a CSV's numbers are ASCII without underscores."""
    (tmp_path / "a.csv").write_text(f"x,y\n0.1,0.2\n{cell},0.4\n", encoding="utf-8")
    status, out, err = run_cli(capsys, "predict", model, tmp_path / "a.csv")
    assert refused(status, out, err, "predict", f"{tmp_path / 'a.csv'}, line 3: the feature "
                   f"column 'x' holds {cell!r}, not a number"), err


def test_labels_1_0_and_10_are_two_classes(tmp_path, capsys):
    """The labels `1_0` and `10` became one class (both the number 10); a label column
    with an underscore is text, and evaluate maps such labels as text too."""
    rows = [f"{x},{x % 3},{'1_0' if x % 2 else '10'}" for x in range(12)]
    (tmp_path / "d.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    status, _, err = run_cli(capsys, "train", tmp_path / "d.csv", "--loss", "cce", "-q",
                             "--epochs", "1", "-o", tmp_path / "n.fbp")
    assert status == 0, err
    sidecar = json.loads((tmp_path / "n.fbp.json").read_text())
    assert sidecar["classes"] == ["10", "1_0"]
    status, out, err = run_cli(capsys, "evaluate", tmp_path / "n.fbp", tmp_path / "d.csv",
                               "--json")
    assert status == 0 and json.loads(out)["rows"] == 12, err
