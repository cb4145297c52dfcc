"""_core.gemm_floor: the matrix products of plain-SGD training alone, which bench/compare.py
times as the speed fastbp would reach if everything but BLAS were free. It must make the
same products as a training step, or that bound means nothing."""
import numpy as np
import pytest

import fastbp
from fastbp import _core


def floor_setup(sizes, dtype, batch_size, small_gemm_chunks=False):
    model = fastbp.MLP(sizes, ["relu"] * (len(sizes) - 2) + ["identity"], dtype=dtype, seed=3)
    plan = _core.Plan(model._layer_sizes, model._codes, batch_size, None, False,
                      small_gemm_chunks)
    work = np.empty(plan.work_size, dtype=dtype)
    work[:] = 1          # the output delta gemm_floor starts from: all ones
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch_size * 2, sizes[0])).astype(dtype)
    return model, plan, work, X


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes, batch, chunked", [
    ([7, 5, 3], 4, False), ([6, 9, 4, 2], 4, False), ([5, 3], 4, False),
    ([100, 170, 3], 64, True),      # products cut into small-kernel calls (test_gemm_chunks)
    ([784, 128, 10], 32, True),     # W1: forward cut in rows and columns
])
def test_one_step_makes_the_forward_and_backward_products_of_training(sizes, batch, chunked,
                                                                       dtype):
    model, plan, work, X = floor_setup(sizes, dtype, batch, chunked)
    assert any(c != ((batch, n_out), n_in) for c, n_in, n_out
               in zip(plan.gemm_chunks, sizes[:-1], sizes[1:])) == chunked
    scratch = model._params.copy()
    before = [w.copy() for w in model.weights]
    _core.gemm_floor(plan, scratch, work, X, batch, 1)

    # the same products in NumPy: activations without bias or nonlinearity, deltas without
    # derivatives, W <- W - 1e-3 * input^T delta with each delta taken before its W changes
    inputs = [X[:batch].astype(np.float64)]
    for W in before[:-1]:
        inputs.append(inputs[-1] @ W)
    delta = np.ones((batch, sizes[-1]))
    expected = [None] * len(before)
    for l in range(len(before) - 1, -1, -1):
        previous = delta @ before[l].T
        expected[l] = before[l] - 1e-3 * inputs[l].T @ delta
        delta = previous
    views, _ = plan.parameter_views(scratch)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, want in zip(views, expected):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    # the model itself is untouched: the products wrote into the scratch copy
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w, b)


def test_many_steps_wrap_around_the_rows():
    model, plan, work, X = floor_setup([8, 6, 3], "float32", 5)
    scratch = model._params.copy()
    _core.gemm_floor(plan, scratch, work, X[:7], 5, 10)    # 7 rows: each step restarts at 0
    assert np.isfinite(scratch).all()


@pytest.mark.parametrize("change", ["batch", "scratch", "rows"])
def test_mismatched_arguments_are_refused(change):
    model, plan, work, X = floor_setup([8, 6, 3], "float64", 5)
    scratch = model._params.copy()
    batch = 6 if change == "batch" else 5
    if change == "scratch":
        scratch = scratch[:-1].copy()
    if change == "rows":
        X = X[:4]
    with pytest.raises(ValueError, match="gemm_floor"):
        _core.gemm_floor(plan, scratch, work, X, batch, 1)
