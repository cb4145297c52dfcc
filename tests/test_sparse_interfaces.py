"""Sparse input (issue 13) through the other doors: the scikit-learn estimators
(accept_sparse), the command line (.npz written by scipy.sparse.save_npz) and fastbp.dask
(dask arrays of sparse chunks), each giving what the same data densified give."""
import warnings

import numpy as np
import pytest
import scipy.sparse

import fastbp
from fastbp.__main__ import main


def text_like(n_rows=120, n_cols=300, seed=0):
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(n_rows, n_cols, density=0.03, format="csr", random_state=rng,
                            dtype=np.float64)
    teacher = rng.normal(size=(n_cols, 3))
    y = np.asarray(np.argmax(X @ teacher, axis=1)).ravel()
    return X, y


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_scikit_learn_estimators_take_sparse_x(kind, solver):
    sklearn_estimators = pytest.importorskip("fastbp.sklearn")
    X, y = text_like()
    estimator_class = sklearn_estimators.MLPClassifier if kind == "classifier" \
        else sklearn_estimators.MLPRegressor
    target = y if kind == "classifier" else y.astype(float)
    results = []
    for data in (X, X.toarray()):
        estimator = estimator_class(hidden_layer_sizes=(8,), solver=solver, max_iter=5,
                                    random_state=0, n_threads=1)
        with warnings.catch_warnings():      # max_iter=5: not converged
            warnings.simplefilter("ignore", UserWarning)
            estimator.fit(data, target)
        results.append(estimator.predict(X.tocsc()) if kind == "regressor"
                       else estimator.predict_proba(X.tocsc()))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-9)


def test_scikit_learn_estimators_refuse_a_sparse_x_of_no_columns_as_scikit_learn_does():
    """A (20, 0) CSR or a 1-D sparse array: scikit-learn's messages (they were fastbp's
    internal "SparseRows: n_columns must be >= 1" and "(n_samples, 0)")."""
    sklearn_estimators = pytest.importorskip("fastbp.sklearn")
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        sklearn_estimators.MLPClassifier().fit(scipy.sparse.csr_matrix((20, 0)), y)
    with pytest.raises(ValueError, match="Expected 2D input"):
        sklearn_estimators.MLPClassifier().fit(scipy.sparse.coo_array(np.ones(20)), y)


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_reads_a_sparse_npz(tmp_path, capsys):
    X, y = text_like()
    scipy.sparse.save_npz(tmp_path / "X.npz", X.tocsc())
    np.save(tmp_path / "y.npy", y)
    model_path = tmp_path / "m.fbp"
    status, out, err = run_cli(capsys, "train", tmp_path / "X.npz", "--targets",
                               tmp_path / "y.npy", "--loss", "cce", "--hidden", "8",
                               "--epochs", "3", "--seed", "0", "--output", model_path)
    assert status == 0, err
    assert "120 rows x 300 features" in out
    model = fastbp.load(model_path)
    assert model.layer_sizes == (300, 8, 3)
    status, _, err = run_cli(capsys, "predict", model_path, tmp_path / "X.npz", "--output",
                             tmp_path / "p.npy")
    assert status == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), model.predict(X.toarray()),
                               rtol=1e-5, atol=1e-6)
    status, out, err = run_cli(capsys, "evaluate", model_path, tmp_path / "X.npz",
                               "--targets", tmp_path / "y.npy", "--json")
    assert status == 0, err
    # a sparse archive takes its targets from --targets only
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npz", "--target", "0",
                             "--output", tmp_path / "n.fbp")
    assert status != 0 and "--targets FILE.npy" in err
    status, _, err = run_cli(capsys, "train", tmp_path / "X.npz", "--output",
                             tmp_path / "n.fbp")              # no targets: no --target hint
    assert status == 2 and "give its targets with --targets FILE.npy" in err
    assert "--target INDEX" not in err


@pytest.mark.parametrize("layout", ["csr", "csc", "bsr", "coo", "dia"])
def test_the_command_line_reads_every_format_save_npz_writes(tmp_path, capsys, layout):
    """save_npz stores CSR, CSC and BSR as data/indices/indptr, COO as data/row/col and
    DIA as data/offsets: each is read as the same CSR matrix, for train and predict."""
    X, y = text_like(n_rows=40, n_cols=30)
    scipy.sparse.save_npz(tmp_path / "X.npz", X.asformat(layout))
    scipy.sparse.save_npz(tmp_path / "X_csr.npz", X)
    np.save(tmp_path / "y.npy", y)
    trained = []
    for name in ("X.npz", "X_csr.npz"):
        status, out, err = run_cli(capsys, "train", tmp_path / name, "--targets",
                                   tmp_path / "y.npy", "--loss", "cce", "--hidden", "4",
                                   "--epochs", "2", "--seed", "0", "--threads", "1",
                                   "--output", tmp_path / f"{name}.fbp")
        assert status == 0, err
        assert "40 rows x 30 features" in out
        trained.append(fastbp.load(tmp_path / f"{name}.fbp").parameter_vector())
    np.testing.assert_array_equal(trained[0], trained[1])
    status, _, err = run_cli(capsys, "predict", tmp_path / "X_csr.npz.fbp", tmp_path / "X.npz",
                             "--output", tmp_path / "p.npy")
    assert status == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"),
                               fastbp.load(tmp_path / "X_csr.npz.fbp").predict(X.toarray()),
                               rtol=1e-5, atol=1e-6)
    # an archive of arrays that happens to hold a "format" array is not taken for one
    np.savez(tmp_path / "arrays.npz", X=X.toarray(), y=y, format=np.array([1, 2]),
             shape=np.array(X.shape), data=np.zeros(3))
    status, out, err = run_cli(capsys, "train", tmp_path / "arrays.npz", "--loss", "cce",
                               "--hidden", "4", "--epochs", "1", "--seed", "0",
                               "--output", tmp_path / "a.fbp")
    assert status == 0, err


def test_only_x_may_be_sparse():
    """A sparse Y, sample_weight or parameter array is refused by name, not read as a
    0-d array of objects; a CSR matrix whose data array is not 1-D is refused as such."""
    X, y = text_like(n_rows=6, n_cols=5)
    model = fastbp.MLP([5, 4, 3], ["relu", "softmax"], seed=0)
    before = model.parameter_vector()
    Y = scipy.sparse.csr_matrix(np.eye(3)[y])
    with pytest.raises(TypeError, match="Y must be a dense array; got a scipy.sparse"):
        model.evaluate(X, Y, "cce")
    trainer = fastbp.Trainer("cce", n_threads=1, epochs=1)
    with pytest.raises(TypeError, match="sample_weight must be a dense array"):
        trainer.fit(model, X, y, sample_weight=scipy.sparse.csr_matrix(np.ones((1, 6))))
    # the validation targets by their own name (they were called Y)
    with pytest.raises(TypeError, match="Y_val must be a dense array"):
        trainer.fit(model, X, y, validation_data=(X, Y))
    with pytest.raises(ValueError, match="Y_val has 5 rows but X_val has 6"):
        trainer.fit(model, X, y, validation_data=(X, y[:5]))
    with pytest.raises(ValueError, match=r"Y_val \(class labels\) must lie in 0..2"):
        trainer.fit(model, X, y, validation_data=(X, y + 3))
    with pytest.raises(TypeError, match=r"weights\[0\] must be a dense array"):
        model.weights = [scipy.sparse.csr_matrix(np.ones((5, 4))), np.ones((4, 3))]
    np.testing.assert_array_equal(model.parameter_vector(), before)
    for values in (np.float64(1.0), np.ones((2, 2))):
        bad = scipy.sparse.csr_matrix((4, 5))
        bad.data, bad.indices, bad.indptr = values, np.array([0, 3, 4, 2]), \
            np.array([0, 2, 2, 3, 4])
        with pytest.raises(TypeError, match="X.data must be a 1-D array"):
            model.predict(bad)


def test_dask_fit_takes_sparse_chunks():
    da = pytest.importorskip("dask.array")
    from fastbp import dask as fastbp_dask
    X, y = text_like(n_rows=160)
    chunks = [X[start:start + 40] for start in range(0, 160, 40)]
    sparse_X = da.concatenate([da.from_array(chunk, chunks=chunk.shape, asarray=False)
                               for chunk in chunks], axis=0)
    dense_X = da.from_array(X.toarray(), chunks=(40, 300))
    labels = da.from_array(y, chunks=40)
    for rounds_per_epoch in (1, 3):      # 3: each chunk's epoch in pieces of its rows
        results = []
        for data in (sparse_X, dense_X):
            model = fastbp.MLP([300, 8, 3], ["relu", "softmax"], seed=0)
            trainer = fastbp.Trainer("cce", learning_rate=0.1, epochs=2, batch_size=16,
                                     seed=0, n_threads=1)
            fastbp_dask.fit(model, trainer, data, labels, rounds_per_epoch=rounds_per_epoch)
            results.append(model.parameter_vector())
        np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-6)
