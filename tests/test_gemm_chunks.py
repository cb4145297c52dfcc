"""Products cut for OpenBLAS's small-matrix kernels (Plan(small_gemm_chunks=True)).

Where the BLAS has those kernels (an OpenBLAS SkylakeX-family core) a one-thread fit cuts
its forward and weight-gradient products into calls of at most 10^6 multiply-adds. The
cut changes which kernel runs, not the arithmetic: every result must match the uncut
products to rounding. These tests force the cut on and off whatever the BLAS, so they run
the chunked code in CI too (where OPENBLAS_CORETYPE=Haswell turns it off by default)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _core, _threads

RELU, SOFTMAX = _core.ACTIVATION_CODES["relu"], _core.ACTIVATION_CODES["softmax"]


def chunks(sizes, batch, small=True):
    codes = [RELU] * (len(sizes) - 2) + [SOFTMAX]
    return _core.Plan(sizes, codes, batch, None, False, small).gemm_chunks


def test_chunks_fit_the_small_kernel_limit():
    # W1: forward calls of 16 rows x 64 columns (16 x 784 . 784 x 64 = 0.8e6 multiply-adds),
    # gradient rows of 240 (240 x 128 x 32); its output layer is small already
    assert chunks([784, 128, 10], 32) == [((16, 64), 240), ((32, 10), 128)]
    # W3 is small already; W2's gradients would need blocks under 16 rows; W4 is too big
    assert chunks([64, 32, 10], 16) == [((16, 32), 64), ((16, 10), 32)]
    assert chunks([784, 512, 512, 10], 128) == [((16, 64), 784), ((16, 64), 512),
                                                ((128, 10), 512)]
    assert chunks([1024, 4096, 4096, 1024], 256) == [((256, 4096), 1024),
                                                     ((256, 4096), 4096),
                                                     ((256, 1024), 4096)]
    for sizes, batch in [([784, 128, 10], 32), ([100, 170, 3], 64), ([3000, 50, 2], 8),
                         ([784, 512, 512, 10], 128), ([784, 128, 10], 2048)]:
        for ((rows, columns), gradient), n_in, n_out in zip(chunks(sizes, batch), sizes,
                                                             sizes[1:]):
            whole = (rows, columns) == (batch, n_out)
            assert whole or (rows * n_in * columns <= 10**6
                             and (columns == n_out or columns % 64 == 0))
            assert gradient == n_in or (gradient % 16 == 0
                                        and batch * n_out * gradient <= 10**6)


def test_without_the_option_every_product_is_one_call():
    assert chunks([784, 128, 10], 32, small=False) == [((32, 128), 784), ((32, 10), 128)]


@pytest.fixture
def forced(monkeypatch):
    """Run fastbp with the cut forced on or off: forced(True) / forced(False)."""
    def force(on):
        monkeypatch.setattr(fastbp.model, "small_gemm_kernels", lambda: on)
    return force


def fit(optimizer, dtype, forced_on, forced, **trainer_options):
    forced(forced_on)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 100)).astype(dtype)
    y = rng.integers(0, 3, 300)
    model = fastbp.MLP([100, 170, 3], "relu", dtype=dtype, seed=1)
    trainer = fastbp.Trainer("cce", optimizer=optimizer, learning_rate=0.01, epochs=2,
                             batch_size=64, seed=2, n_threads=1, **trainer_options)
    history = trainer.fit(model, X, y)
    return model, history


# Adam and RMSprop step by g / sqrt(v), about +-lr for any gradient near 0 whatever its size:
# two float32 runs that differ in rounding can part by a whole step in single weights, so
# those rules are compared in float64, where rounding stays far below the tolerance.
@pytest.mark.parametrize("optimizer, dtype", [
    ("sgd", "float32"), ("sgd", "float64"), ("momentum", "float32"), ("momentum", "float64"),
    ("adam", "float64"), ("rmsprop", "float64"),
])
def test_a_chunked_fit_equals_an_uncut_one(optimizer, dtype, forced):
    # [100, 170, 3] at batch 64: forward calls of 16 rows, gradient rows of 80
    assert chunks([100, 170, 3], 64)[0] == ((16, 170), 80)
    if optimizer == "momentum":
        optimizer = fastbp.optimizers.SGD(0.01, momentum=0.9)
    cut, cut_history = fit(optimizer, dtype, True, forced)
    whole, whole_history = fit(optimizer, dtype, False, forced)
    tol = 1e-4 if dtype == "float32" else 1e-11
    for a, b in zip(cut.weights + cut.biases, whole.weights + whole.biases):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    np.testing.assert_allclose(cut_history.history["loss"], whole_history.history["loss"],
                               rtol=tol)


def test_a_chunked_fit_with_clipping_and_weight_decay_equals_an_uncut_one(forced):
    options = dict(clip_norm=0.5, weight_decay=1e-3)
    cut, _ = fit("sgd", "float64", True, forced, **options)
    whole, _ = fit("sgd", "float64", False, forced, **options)
    for a, b in zip(cut.weights + cut.biases, whole.weights + whole.biases):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_chunked_predict_equals_an_uncut_one(dtype, forced):
    model = fastbp.MLP([100, 170, 3], "relu", dtype=dtype, seed=1)
    X = np.random.default_rng(0).standard_normal((64, 100)).astype(dtype)   # 64 rows: cut
    assert chunks([100, 170, 3], 64)[0][0] == (16, 170)
    forced(True)
    cut = model.predict(X)
    forced(False)
    whole = model.predict(X)
    tol = 1e-5 if dtype == "float32" else 1e-12    # outputs of order 1
    np.testing.assert_allclose(cut, whole, rtol=tol, atol=tol)


def test_the_same_run_twice_is_bit_identical_when_chunked(forced):
    a, _ = fit("sgd", "float32", True, forced)
    b, _ = fit("sgd", "float32", True, forced)
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)


def test_the_blas_fastbp_calls_is_found_among_the_loaded_libraries():
    path = _threads._scipy_blas_path()
    if path is None:
        pytest.skip("dladdr cannot name scipy's BLAS on this platform")
    listed = [info["filepath"] for info in _threads._get_controller().info()]
    assert any(os.path.samefile(path, other) for other in listed), (path, listed)


@pytest.mark.parametrize("value, expected", [("0", "False"), ("1", "True")])
def test_the_environment_variable_overrides_the_detection(value, expected):
    env = dict(os.environ, FASTBP_SMALL_GEMM=value)
    out = subprocess.run([sys.executable, "-c", "from fastbp import _threads; "
                          "print(_threads.small_gemm_kernels())"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected


def test_a_haswell_core_has_no_small_kernels():
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_SMALL_GEMM"}
    env["OPENBLAS_CORETYPE"] = "Haswell"
    out = subprocess.run([sys.executable, "-c", "from fastbp import _threads; "
                          "print(_threads.small_gemm_kernels())"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
