"""Limits: networks and workspaces that cannot fit in memory are refused before anything is
allocated, with the size in the message; very large inputs (10^8 elements through a memmap)
train without a copy; memory for a model or a predict stays near what the result needs.
"""
import gc
import shutil
import threading
import tracemalloc

import numpy as np
import pytest

import fastbp

MiB = 2**20


class Peak:
    """Peak of traced (Python + NumPy) allocations inside the block, in bytes."""

    def __enter__(self):
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False


# ---------------------------------------------------------------- refused up front

HUGE = [
    pytest.param([10**6, 10**6, 10**6], id="3x10^6-wide"),
    pytest.param([2**31 - 1, 2**31 - 1], id="widest-pair"),
    pytest.param([10**5] * 30, id="30-layers-of-10^5"),
    pytest.param([2**31 - 1] * 4, id="offsets-overflow-int64"),
]


@pytest.mark.parametrize("sizes", HUGE)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_network_too_large_for_memory_is_refused_before_allocating(sizes, dtype):
    with Peak() as peak:
        with pytest.raises(ValueError, match="GiB"):
            fastbp.MLP(sizes, ["relu"] * (len(sizes) - 2) + ["identity"], dtype=dtype)
    assert peak.bytes < 16 * MiB, f"{peak.bytes / MiB:.0f} MiB allocated before refusing"


def test_a_fit_whose_workspace_cannot_fit_is_refused_before_training():
    """3 * 10^6 parameters (12 MB) fit; a batch of 10^5 rows of 10^6-wide activations
    (over a TiB of workspace) does not."""
    model = fastbp.MLP([1, 10**6, 1], ["relu", "identity"], init="zeros")
    before = model.to_bytes()
    X = np.ones((10**5, 1), dtype=np.float32)
    with Peak() as peak:
        with pytest.raises(ValueError, match="GiB"):
            fastbp.Trainer("mse", batch_size=10**5).fit(model, X, np.ones(10**5))
    assert peak.bytes < 64 * MiB, f"{peak.bytes / MiB:.0f} MiB allocated before refusing"
    assert model.to_bytes() == before


def test_a_gradients_call_whose_workspace_cannot_fit_is_refused_or_chunked():
    """gradients() works in chunks of rows: either the chunk fits (and it runs) or it is
    refused with the size; it never asks for the workspace of all rows at once."""
    model = fastbp.MLP([1, 10**6, 1], ["relu", "identity"], init="zeros")
    X = np.ones((4, 1), dtype=np.float32)
    value, grad_weights, _ = model.gradients(X, np.ones(4), "mse")
    assert np.isfinite(value) and grad_weights[0].shape == (1, 10**6)


def test_a_network_with_very_many_layers_works():
    model = fastbp.MLP([2] * 5001, "tanh", seed=0)
    out = model.predict(np.ones((3, 2)))
    assert out.shape == (3, 2) and np.isfinite(out).all()
    fastbp.Trainer("mse", epochs=1, batch_size=2).fit(model, np.ones((3, 2)), np.zeros((3, 2)))


# ---------------------------------------------------------------- memory near the need

def test_building_a_model_needs_little_more_than_its_parameters():
    sizes = [1000, 25_000]                   # 25 million float32 parameters: 100 MB
    with Peak() as peak:
        model = fastbp.MLP(sizes, ["identity"], seed=0)
    need = model._params.nbytes
    assert peak.bytes < 1.3 * need, f"peak {peak.bytes / MiB:.0f} MiB for {need / MiB:.0f} MiB"


def test_predict_of_a_wide_model_uses_bounded_memory():
    model = fastbp.MLP([1, 50_000, 1], ["relu", "identity"], seed=0)
    X = np.ones((4096, 1), dtype=np.float32)
    with Peak() as peak:
        out = model.predict(X)
    assert out.shape == (4096, 1)
    assert peak.bytes < 96 * MiB, f"{peak.bytes / MiB:.0f} MiB to predict 16 KB"


# ---------------------------------------------------------------- 10^8 elements, no copy

def _rss_anon():
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return None


class AnonPeak:
    """Samples the process's anonymous resident memory every 5 ms in a thread: file-backed
    pages of a memmap are not counted, a copy of it would be."""

    def __enter__(self):
        self.start = _rss_anon()
        self.peak = self.start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_anon() or 0)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon() or 0)
        return False


N_ROWS, N_COLS = 1_000_000, 100                 # 10^8 float32 elements: 400 MB
FILE_BYTES = N_ROWS * N_COLS * 4


@pytest.fixture(scope="module")
def big_memmap(tmp_path_factory):
    directory = tmp_path_factory.mktemp("memmap")
    free = shutil.disk_usage(directory).free
    if free < 2 * 2**30:
        pytest.skip(f"needs 2 GB free in {directory}; {free / 2**30:.1f} GB free")
    path = directory / "X.f32"
    X = np.memmap(path, dtype=np.float32, mode="w+", shape=(N_ROWS, N_COLS))
    labels = np.empty(N_ROWS, dtype=np.int8)
    rng = np.random.default_rng(0)
    step = 100_000
    for start in range(0, N_ROWS, step):
        block = rng.standard_normal(size=(step, N_COLS), dtype=np.float32)
        X[start:start + step] = block
        labels[start:start + step] = block[:, 0] > 0
    X.flush()
    del X
    gc.collect()
    try:
        yield np.memmap(path, dtype=np.float32, mode="r", shape=(N_ROWS, N_COLS)), labels
    finally:
        path.unlink()                            # 400 MB: not left for pytest's basetemp


def test_a_10e8_element_memmap_trains_an_epoch_without_a_copy(big_memmap):
    X, labels = big_memmap
    assert X.size == 10**8 and not X.flags.writeable
    model = fastbp.MLP([N_COLS, 16, 2], ["relu", "softmax"], seed=0)
    trainer = fastbp.Trainer("cce", learning_rate=0.05, epochs=1, batch_size=256, seed=0)
    with Peak() as peak, AnonPeak() as anon:
        history = trainer.fit(model, X, labels)
    assert history.epochs == 1 and np.isfinite(history.loss).all()
    # a copy of X would be 400 MB of traced and of anonymous memory; the row order (8 MB),
    # the labels as intp (8 MB) and the workspace are all the fit needs
    assert peak.bytes < 64 * MiB, f"{peak.bytes / MiB:.0f} MiB traced during the fit"
    if anon.start is not None:
        grown = anon.peak - anon.start
        assert grown < 100 * MiB, f"anonymous memory grew by {grown / MiB:.0f} MiB"
    accuracy = (model.predict(X[:20_000]).argmax(axis=1) == labels[:20_000]).mean()
    assert accuracy > 0.9


def test_a_sparse_fit_whose_row_bookkeeping_cannot_fit_is_refused_before_training(
        monkeypatch):
    """What a sparse fit keeps per column of X (a lazy rule's counts, flags: 35 bytes) is
    checked against the machine's memory before the fit starts (here a machine of 16 MiB):
    a fit on 10^9 columns ran its set-up for a minute and then raised a bare MemoryError."""
    import os

    import scipy.sparse
    n_columns = 10**6
    X = scipy.sparse.random(8, n_columns, density=1e-5, format="csr", random_state=0,
                            dtype=np.float32)
    model = fastbp.MLP([n_columns, 2, 2], ["relu", "softmax"], seed=0)
    before = model.to_bytes()
    trainer = fastbp.Trainer("cce", optimizer="adam", epochs=1, batch_size=4, seed=0)
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else
                        4096 if name == "SC_PHYS_PAGES" else real(name))
    with pytest.raises(ValueError, match="a sparse fit's bookkeeping of W1's rows would "
                                         r"need 33\.4 MiB, more than this machine's "
                                         r"16\.0 MiB of memory"):
        trainer.fit(model, X, np.arange(8) % 2)
    assert model.to_bytes() == before


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("X_value, gradients", [(0.0, (0.0, 0.5)), (1.0, (1.5, 1.5))])
def test_gradients_over_2_to_the_25_rows_are_exact(X_value, gradients, dtype):
    """gradients() goes through the rows in chunks: added chunk after chunk into the float32
    result (the bias's row after row), a total stopped growing past 2^24 rows: dL/db 0.25
    for 0.5 at 2^25 rows, 1.83 for 1.5 with X = 1 at 2^24; float32's groups of chunks now go
    into float64 sums (float64: every chunk into the result, as before). (X and Y of zeros
    are pages the system shares: address space, not memory.)"""
    n = 2**25
    X = np.zeros((n, 1), dtype) if X_value == 0 else np.ones((n, 1), dtype)
    model = fastbp.MLP([1, 1], ["identity"], dtype=dtype)
    model.weights, model.biases = [np.array([[0.5]])], [np.array([0.25])]
    loss, (weight_gradient,), (bias_gradient,) = model.gradients(X, np.zeros((n, 1), dtype),
                                                                 "mse")
    assert loss == pytest.approx((0.5 * X_value + 0.25) ** 2, rel=1e-6)
    assert weight_gradient[0, 0] == pytest.approx(gradients[0], rel=1e-6, abs=1e-12)
    assert bias_gradient[0] == pytest.approx(gradients[1], rel=1e-6)


def test_a_plan_whose_offsets_would_wrap_is_refused():
    """The core counts its workspace in Py_ssize_t: widths near 2^31 with as many rows gave
    work_size -4.6e18 (its arithmetic wrapped) where it is now refused."""
    from fastbp import _core
    codes = [_core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["identity"]]
    with pytest.raises(ValueError, match="more than can be counted"):
        _core.Plan([1, 2**31 - 1, 1], codes, 2**31 - 1)
    assert _core.Plan([1, 2**31 - 1, 1], codes, 1).work_size > 0


def test_a_batch_of_2_to_the_31_rows_is_refused_not_wrapped(monkeypatch):
    """The passes count a batch's rows in a C int: a full-batch fit of 2^31 rows trained
    nothing (the count wrapped negative) and one of 2^32 + 3 rows trained 3, each epoch
    reported complete. A plan holds at most 2^31 - 1 rows, plan_rows stays within it, and
    a fit whose batches would be larger is refused before it changes anything (shown here
    with the limit lowered: 2^31 rows need tens of GiB)."""
    from fastbp import _core, trainer as trainer_module
    codes = [_core.ACTIVATION_CODES["identity"]]
    with pytest.raises(ValueError, match="counted in a C int"):
        _core.Plan([1, 1], codes, 2**31)
    assert _core.Plan([1, 1], codes, 2**31 - 1).capacity == 2**31 - 1
    assert trainer_module.plan_rows(2**31 - 1) == 2**31 - 1
    assert trainer_module.plan_rows(2**31 - 1025) == 2**31 - 1024

    monkeypatch.setattr(_core, "MOST_BATCH_ROWS", 64)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3)).astype(np.float32)
    y = rng.integers(0, 2, 100)
    model = fastbp.MLP([3, 4, 2], ["relu", "softmax"], seed=0)
    before = model.parameter_vector().copy()
    for batch_size in (100, 1000, 65):
        trainer = fastbp.Trainer("categorical_crossentropy", learning_rate=0.1,
                                 batch_size=batch_size, seed=0)
        with pytest.raises(ValueError, match="at most 64 rows"):
            trainer.fit(model, X, y)
        np.testing.assert_array_equal(model.parameter_vector(), before)
        assert trainer._step == 0
    history = fastbp.Trainer("categorical_crossentropy", learning_rate=0.1, batch_size=64,
                             seed=0).fit(model, X, y)
    assert len(history.loss) == 1 and not history.interrupted
    assert not np.array_equal(model.parameter_vector(), before)


@pytest.mark.parametrize("kernels", ["own", "blas"])
@pytest.mark.parametrize("optimizer, log2_rows", [("sgd", 20), ("momentum", 21)])
def test_a_float32_step_over_a_batch_of_millions_of_rows_moves_the_bias_exactly(
        optimizer, log2_rows, kernels, monkeypatch):
    """One step of a batch of 2^20 rows: plain SGD adds each row's share of the bias's
    update to the bias itself, and added in float32 row after row none of them moved it
    (the bias stayed at 0.25); a rule that steps from the gradient summed it likewise
    (momentum: 1% off at 2^21 rows, 11% at 2^24). The rows' sum is now taken in double.
    The weight's gradient, one register's sum over the whole batch in the own kernel (1%
    off at 2^20 rows), is now added up a block of 2048 rows at a time, as BLAS's."""
    monkeypatch.setenv("FASTBP_KERNELS", kernels)
    n = 2**log2_rows
    model = fastbp.MLP([1, 1], ["identity"])
    model.weights, model.biases = [np.array([[0.5]])], [np.array([0.25])]
    rule = fastbp.optimizers.SGD(0.01, momentum=0.9 if optimizer == "momentum" else 0.0)
    fastbp.Trainer("mse", optimizer=rule, batch_size=n, epochs=1, shuffle=False,
                   n_threads=1).fit(model, np.ones((n, 1), np.float32),
                                    np.zeros((n, 1), np.float32))
    # dL/dz = 2 (w + b) = 1.5 on every row: w <- 0.5 - 0.01 * 1.5, b <- 0.25 - 0.01 * 1.5
    assert model.biases[0][0] == pytest.approx(0.235, rel=1e-6)
    assert model.weights[0][0, 0] == pytest.approx(0.485, rel=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_gradients_over_many_chunks_agree_with_float64(sparse):
    """Past 16 chunks a float32 gradients() pass adds each group of 16 chunks into float64
    sums, the last group however short: the same gradient as the float64 model's to
    float32's rounding, dense or sparse (whose chunks touch only the rows of W1 they name)."""
    import scipy.sparse
    from fastbp import _core
    rng = np.random.default_rng(5)
    model = fastbp.MLP([300, 7, 3], ["tanh", "softmax"], dtype="float64", seed=1)
    plan, _, _ = model._pass_plan(10**6, True, 1, sparse)
    n = 17 * plan.capacity + 5                     # 17 chunks: a group and a short one
    X = scipy.sparse.random(n, 300, density=0.02, format="csr", random_state=rng)
    y = rng.integers(0, 3, n)
    X = X if sparse else X.toarray()
    single = fastbp.MLP([300, 7, 3], ["tanh", "softmax"], dtype="float32")
    single.weights, single.biases = model.weights, model.biases
    assert _core.gradient_sums(single._pass_plan(n, True, 1, sparse)[0], n, True) > 0
    loss64, weights64, biases64 = model.gradients(X, y, "cce", n_threads=1)
    loss32, weights32, biases32 = single.gradients(X.astype(np.float32), y, "cce",
                                                   n_threads=1)
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    for got, expected in zip(weights32 + biases32, weights64 + biases64):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
