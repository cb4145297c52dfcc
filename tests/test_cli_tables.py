"""Reading the command line's input (fastbp/cli/tables.py): what a crafted or unusual file
did before it was checked. A sparse header of 2**62 columns filled the memory; a CSV line
of empty cells was dropped (the predictions no longer lined up with the rows); scipy cast
a saved matrix's index arrays before fastbp saw them (float indices truncated, a DIA
offset of 2**32 wrapped to the main diagonal); a BSR with an empty block divided by zero;
float16 input warned of an overflow and let infinity through; an NPY header claiming 14.6
TiB was "not enough memory"; "1_2" was read as 12; --drop on a sparse file claiming 2**30
columns listed the others (GBs); an NPZ member whose zip directory lied about its size was
allocated as its header claimed."""
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

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


# A child's address space limited (RLIMIT_AS), so that an old behaviour fails fast instead
# of filling the machine: Linux, and not under AddressSanitizer (tools/sanitize.sh), whose
# shadow memory alone takes more address space than any such limit.
LIMITS_A_CHILDS_MEMORY = pytest.mark.skipif(
    sys.platform != "linux" or "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="limits a child's memory (RLIMIT_AS): Linux, without ASan")


def save_sparse(path, form, shape, **members):
    """An archive as scipy.sparse.save_npz writes one, with its members as given."""
    np.savez(path, format=np.array(form.encode()), shape=np.array(shape), **members)
    return path


# ------------------------------------------------------------------- 1: huge sparse widths

@LIMITS_A_CHILDS_MEMORY
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


# ---------------------------------------------------- 8: --drop on a very wide sparse file

def _limit_memory():          # (a child's: the old behaviour fails fast, not the machine)
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))


@LIMITS_A_CHILDS_MEMORY
def test_drop_on_a_very_wide_sparse_file_does_not_list_its_columns(tmp_path):
    """`train wide.npz --targets y.npy --drop 3` on a 1 KB CSR claiming 2**30 columns (a
    width a model may take) listed the 2**30 - 1 other columns before anything else: 3.6
    GB and 10 s to end "not enough memory" under a 4 GB limit, 11 GB and 34 s under 12 GB.
    The columns left out are a set of those few, the others never listed: the run gets
    to the model, whose size (2**30 inputs x 4096 units) is refused as without --drop. The
    dropped column's NaN is not read."""
    matrix = scipy.sparse.csr_matrix((np.array([1.0, np.nan, 3.0]),
                                      (np.array([0, 1, 2]), np.array([0, 3, 2**30 - 1]))),
                                     shape=(3, 2**30))
    scipy.sparse.save_npz(tmp_path / "wide.npz", matrix)
    np.save(tmp_path / "y.npy", np.arange(3.0))
    assert (tmp_path / "wide.npz").stat().st_size < 2000
    result = subprocess.run(
        [sys.executable, "-m", "fastbp", "train", tmp_path / "wide.npz", "--targets",
         tmp_path / "y.npy", "--drop", "3", "--hidden", "4096", "-q", "-o",
         tmp_path / "n.fbp"], capture_output=True, text=True, timeout=120,
        preexec_fn=_limit_memory, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("fastbp train: error: the parameters would need ") and \
        "GiB, more than this machine's" in result.stderr, result.stderr


def test_drop_and_target_select_an_arrays_columns_as_a_list_of_the_others_did(tmp_path):
    """(The columns but those left out, without their list: the same matrix, sparse or
    dense, as indexing with the list gave, and the same messages.)"""
    from types import SimpleNamespace

    from fastbp.cli.tables import Table, select_columns

    rng = np.random.default_rng(0)
    dense = rng.random((4, 9)) * (rng.random((4, 9)) < 0.5)
    for left_out in ({0}, {8}, {2, 3, 7}, {0, 1, 2, 3, 4, 5, 6, 7}):
        others = [j for j in range(9) if j not in left_out]
        wide = scipy.sparse.csr_matrix(dense)       # int64 indices, unsorted
        wide.indices, wide.indptr = wide.indices.astype(np.int64), wide.indptr.astype(np.int64)
        wide.indices[:2], wide.data[:2] = wide.indices[1::-1].copy(), wide.data[1::-1].copy()
        wide.has_sorted_indices = False
        for matrix in (dense, np.asfortranarray(dense), scipy.sparse.csr_matrix(dense),
                       scipy.sparse.csr_array(dense), wide):
            table = Table("x.npy", None, False, matrix=matrix)
            args = SimpleNamespace(drop=[str(j) for j in sorted(left_out)], target=None)
            features, _, _ = select_columns(table, args, None, want_targets=False)
            assert list(features) == others and len(features) == len(others)
            assert [features[k] for k in range(-len(others), len(others))] == others * 2
            got, expected = table.numeric(features, "feature"), matrix[:, others]
            assert type(got) is type(expected) and got.dtype == expected.dtype
            if hasattr(got, "tocsr"):
                assert np.array_equal(got.toarray(), expected.toarray())
                assert got.indices.dtype == expected.indices.dtype
            else:
                assert np.array_equal(got, expected) and got.strides == expected.strides
    table = Table("x.npy", None, False, matrix=scipy.sparse.csr_matrix(dense))
    with pytest.raises(ValueError, match="column index 9 is out of range: x.npy has 9 "
                                         "columns"):
        select_columns(table, SimpleNamespace(drop=["9"], target=None), None,
                       want_targets=False)
    with pytest.raises(ValueError, match="x.npy gives 8 feature columns; the model takes 9 "
                                         "inputs"):
        select_columns(table, SimpleNamespace(drop=["-1"], target=None), None, 9,
                       want_targets=False)


# ------------------------------------------------- 9: an NPZ member's size that lies

def handmade_zip(path, members, method, declared=None):
    """A zip written byte by byte, with zip64 sizes in its central directory: members
    {name: bytes}; declared {name: the uncompressed size its directory gives (a lie)}."""
    body, directory = b"", b""
    for name, payload in members.items():
        data = payload
        if method == zipfile.ZIP_DEFLATED:
            squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)
            data = squeeze.compress(payload) + squeeze.flush()
        crc, raw = zlib.crc32(payload), name.encode()
        size = (declared or {}).get(name, len(payload))
        extra = struct.pack("<2H2Q", 1, 16, size, len(data))
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, 45, 0, method, 0, 33, crc,
                                 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0,
                                 len(body)) + raw + extra
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, method, 0, 33, crc, len(data),
                            len(payload), len(raw), 0) + raw + data
    path.write_bytes(body + directory + struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory),
        len(body), 0))
    return path


def npy_bytes(array=None, shape=None):
    """An array as np.save writes it; or a header claiming `shape` (float64) and 64 bytes."""
    stream = io.BytesIO()
    if shape is None:
        np.save(stream, array)
        return stream.getvalue()
    np.lib.format.write_array_header_1_0(stream, {"descr": "<f8", "fortran_order": False,
                                                  "shape": shape})
    return stream.getvalue() + bytes(64)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_an_npz_member_is_checked_against_its_compressed_bytes(tmp_path, model, capsys,
                                                               method):
    """An NPZ member whose header claims shape (10**9, 10**3), 8 TB of float64, in an
    archive of a few hundred bytes whose directory says the member is 2**44 bytes: the
    header was compared with that size alone, and NumPy allocated the array before reading
    ("not enough memory (Unable to allocate 7.28 TiB ...)"); so was a sparse matrix's
    data. What the entry can hold follows from its compressed bytes. (The same archives
    without the lie are read.)"""
    good = {"X.npy": npy_bytes(np.eye(3, 2)), "y.npy": npy_bytes(np.zeros(3))}
    path = handmade_zip(tmp_path / "ok.npz", good, method)
    status, out, err = run_cli(capsys, "predict", model, path)
    assert status == 0 and len(out.splitlines()) == 4, err
    lie = {**good, "X.npy": npy_bytes(shape=(10**9, 10**3))}
    path = handmade_zip(tmp_path / "lie.npz", lie, method, {"X.npy": 2**44})
    entry = "stored, can hold at most 64" if method == zipfile.ZIP_STORED else \
        "deflated (about 1032-fold at most), can hold at most"
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", f"the array 'X' in {path} is truncated or "
                   f"damaged: its header claims an array of shape (1000000000, 1000) and "
                   f"dtype float64, 8,000,000,000,000 bytes of data, and its zip entry "
                   f"'X.npy', "), err
    assert entry in err, err

    matrix = scipy.sparse.csr_matrix(np.eye(3, 2))
    sparse = {"indices.npy": npy_bytes(matrix.indices), "indptr.npy": npy_bytes(matrix.indptr),
              "format.npy": npy_bytes(np.array(b"csr")), "shape.npy": npy_bytes(
                  np.array(matrix.shape)), "data.npy": npy_bytes(matrix.data)}
    path = handmade_zip(tmp_path / "sparse.npz", sparse, method)
    status, out, err = run_cli(capsys, "predict", model, path)
    assert status == 0 and len(out.splitlines()) == 4, err
    path = handmade_zip(tmp_path / "sparse_lie.npz",
                        {**sparse, "data.npy": npy_bytes(shape=(10**12,))}, method,
                        {"data.npy": 2**44})
    status, out, err = run_cli(capsys, "predict", model, path)
    assert refused(status, out, err, "predict", f"the array 'data' in {path} is truncated "
                   f"or damaged"), err
    assert "its zip entry 'data.npy', " in err, err


def test_a_highly_compressed_npz_member_is_still_read(tmp_path, model, capsys):
    """(Deflate packs zeros about 1030-fold: such an archive is within the bound.)"""
    np.savez_compressed(tmp_path / "z.npz", X=np.zeros((200_000, 2)), y=np.zeros(200_000))
    with zipfile.ZipFile(tmp_path / "z.npz") as zipped:
        info = zipped.getinfo("X.npy")
        assert info.file_size > 1000 * info.compress_size
    status, out, err = run_cli(capsys, "evaluate", model, tmp_path / "z.npz", "--json")
    assert status == 0 and json.loads(out)["rows"] == 200_000, err


def test_a_bad_value_is_located_by_its_column_in_the_file_when_others_are_left_out(
        tmp_path, capsys):
    """With --drop 3 (or a --target before it) a NaN in the file's column 7 was reported
    in "column 6", its place among the columns kept: the message now gives the file's
    column, for a dense and a sparse file."""
    X = np.arange(40, dtype=np.float64).reshape(4, 10)
    X[2, 7] = np.nan
    np.save(tmp_path / "x.npy", X)
    scipy.sparse.save_npz(tmp_path / "x.npz", scipy.sparse.csr_matrix(X))
    np.save(tmp_path / "y.npy", np.array([0, 1, 0, 1]))
    targets = ["--targets", str(tmp_path / "y.npy")]
    for name, extras in (("x.npy", (["--drop", "3", *targets],
                                    ["--target", "0", "--drop", "3", "--drop", "5"])),
                         ("x.npz", (["--drop", "3", *targets],
                                    ["--drop", "0", "--drop", "3", "--drop", "5", *targets]))):
        path = tmp_path / name
        for extra in extras:
            status, out, err = run_cli(capsys, "train", path, *extra, "--epochs", "1", "-q",
                                       "-o", tmp_path / "m.fbp")
            assert refused(status, out, err, "train", f"{path}: the feature array holds nan "
                           f"in row 2, column 7; every value must be a finite number"), err
