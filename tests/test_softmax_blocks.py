"""The softmax + cross-entropy output kernel takes rows of up to 32 columns 16 at a time
through a block of vectors transposed by tiles in registers (csrc/softmax.h), the other
rows one by one. Each row must get the same bits either way, in every instance of the
block (64-byte vectors where the CPU has AVX-512, the 32-byte ones of AVX2 and of the
baseline, each forced through the kernel_level fixture), for every column count up to the
tiles' edges and past the 32-column limit, with weights, soft targets, underflowing exps and non-finite logits."""
import os
import sys

import numpy as np
import pytest

from fastbp import _core

SOFTMAX = _core.ACTIVATION_CODES["softmax"]
CCE = _core.LOSS_CODES["categorical_crossentropy"]
ROW_COUNTS = (16, 23, 32, 47)   # whole blocks, a block and a rest, two blocks and a rest


def batch_and_rows(z, y, weights):
    """(outputs, mean loss, gradient) of the whole batch, and of each row alone."""
    outputs = z.copy()
    mean, gradient = _core.output_loss(outputs, y, SOFTMAX, CCE, 0.0, True,
                                       row_weights=weights)
    alone = [z[i:i + 1].copy() for i in range(len(z))]
    losses = [_core.output_loss(alone[i], y[i:i + 1], SOFTMAX, CCE, 0.0, False,
                                row_weights=weights[i:i + 1])[0] for i in range(len(z))]
    return outputs, mean, gradient, np.concatenate(alone), losses


def problem(n_rows, n_cols, dtype, seed):
    rng = np.random.default_rng([n_rows, n_cols, seed])
    z = (3 * rng.standard_normal((n_rows, n_cols))).astype(dtype)
    z[1, 0] = 90            # one class far above the rest: the others' exps underflow
    z[2] = 0.5              # all equal
    z[3, 0] = -1e4          # a class whose exp is 0
    y = np.zeros((n_rows, n_cols), dtype)
    y[np.arange(n_rows), rng.integers(0, n_cols, n_rows)] = 1
    y[5] = rng.dirichlet(np.ones(n_cols)).astype(dtype)   # a soft target
    y[6] = 0                                               # no loss term
    weights = rng.uniform(0.1, 3.0, n_rows).astype(dtype)
    weights[7] = 0
    return z, y, weights


@pytest.mark.parametrize("n_cols", list(range(1, 34)) + [40])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_each_row_gets_the_bits_it_gets_alone(n_cols, dtype, kernel_level):
    for n_rows in ROW_COUNTS:
        z, y, weights = problem(n_rows, n_cols, dtype, 0)
        outputs, mean, gradient, alone, losses = batch_and_rows(z, y, weights)
        where = f"{n_rows} x {n_cols} {dtype}, kernel_level={kernel_level}"
        np.testing.assert_array_equal(outputs, alone, err_msg=where)
        # delta = scale * weight * (p - y), each product rounded in the dtype as the kernel
        # rounds it (scale = 1 / rows for cross-entropy's mean)
        scale = np.asarray(1.0 / n_rows, dtype)
        factor = (scale * weights).astype(dtype)
        np.testing.assert_array_equal(gradient, factor[:, None] * (outputs - y),
                                      err_msg=where)
        # the loss: the rows' weighted terms summed in float64 (in row order, so only the
        # association of the sums differs from the rows' own)
        assert np.isfinite(mean), where
        np.testing.assert_allclose(mean, float(scale) * sum(losses), rtol=1e-13, atol=0,
                                   err_msg=where)
        shifted = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        reference = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(outputs, reference, rtol=0,
                                   atol=4 * np.finfo(dtype).eps, err_msg=where)


@pytest.mark.parametrize("n_cols", [1, 3, 10, 16, 17, 32])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_non_finite_logit_spoils_only_its_row(n_cols, dtype, kernel_level):
    z, y, weights = problem(32, n_cols, dtype, 1)
    z[9, n_cols // 2] = np.nan
    z[20, 0] = np.inf
    if n_cols > 1:   # probability 0, and a loss term 0 x -inf: NaN
        z[25, n_cols - 1] = -np.inf
    outputs, mean, gradient, alone, _ = batch_and_rows(z, y, weights)
    np.testing.assert_array_equal(outputs, alone)
    bad = np.zeros(32, bool)
    bad[[9, 20]] = True
    assert np.isnan(outputs[bad]).all() and np.isnan(gradient[bad]).all()
    assert np.isfinite(outputs[~bad]).all() and np.isfinite(gradient[~bad]).all()
    if n_cols > 1:
        assert outputs[25, n_cols - 1] == 0
    assert np.isnan(mean)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_without_targets_the_blocks_give_the_probabilities_alone(dtype, kernel_level,
                                                                monkeypatch):
    """predict's softmax (no targets, no delta) through the same blocks: a model's
    outputs for rows in a batch and alone, the products in the few-row kernels
    (FASTBP_FEW_ROWS=1), whose bits do not depend on the batch either."""
    import fastbp
    from fastbp import model as model_module
    monkeypatch.setenv(model_module.FEW_ROWS_VARIABLE, "1")
    rng = np.random.default_rng(8)
    for n_out in (2, 5, 10, 16, 31):
        model = fastbp.MLP([6, n_out], ["softmax"], dtype=dtype, seed=1)
        X = (rng.standard_normal((37, 6)) * 4).astype(dtype)
        batch = model.predict(X)
        for r in range(len(X)):
            np.testing.assert_array_equal(model.predict(X[r:r + 1])[0], batch[r],
                                          err_msg=f"{n_out} outputs, row {r}")


def test_output_loss_checks_the_row_weights():
    z, y = np.zeros((3, 2)), np.zeros((3, 2))
    with pytest.raises(ValueError, match="row_weights has 2 values for 3 rows"):
        _core.output_loss(z, y, SOFTMAX, CCE, 0.0, True, row_weights=np.ones(2))


def test_the_softmax_log_is_within_an_ulp_of_log():
    """fbp_logf, the log of each row's sum of exps in the float32 loss (a branchless
    polynomial that vectorises, in blocks and row by row alike): within 1 ulp of the
    float64 log over every float32 exponent, densely over the sums a softmax of up to 64
    classes makes (1 to 64), and IEEE's values at 0, negatives, subnormals, inf and NaN."""
    rng = np.random.default_rng(5)
    wide = (rng.random(200_000) * 2.0 ** rng.integers(-149, 128, 200_000)).astype(np.float32)
    dense = np.arange(1, 64, 2.0 ** -10, dtype=np.float32)
    edges = np.array([np.finfo(np.float32).tiny, np.finfo(np.float32).max,
                      np.float32(1.4e-45), 1, np.sqrt(2), np.nextafter(np.sqrt(2), 2),
                      np.nextafter(np.float32(1), 0)], np.float32)
    x = np.concatenate([wide[(wide > 0) & np.isfinite(wide)], dense, edges])
    got = _core.softmax_logf(x).astype(np.float64)
    want = np.log(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    ulp[want == 0] = np.float32(1.4e-45)
    assert np.max(np.abs(got - want) / ulp) <= 1.0
    special = _core.softmax_logf(np.array([0, -0.0, -1, -np.inf, np.inf, np.nan], np.float32))
    assert special[0] == special[1] == -np.inf
    assert np.isnan(special[2]) and np.isnan(special[3]) and np.isnan(special[5])
    assert special[4] == np.inf


def test_the_output_layer_benchmark_times_every_level(monkeypatch, capsys):
    """bench/output_layer.py runs (a few calls): a column for each level this CPU runs,
    a positive time in each, and the level as it was afterwards."""
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    monkeypatch.syspath_prepend(bench)
    monkeypatch.delitem(sys.modules, "output_layer", raising=False)
    import output_layer
    before = _core.kernel_level()
    output_layer.main(["--rows", "16", "--classes", "10", "--calls", "3", "--rounds", "1"])
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert [f"{level} ns" for level in _core.kernel_levels()] == \
        [" ".join(header.split()[i:i + 2]) for i in range(3, len(header.split()), 2)]
    assert len(rows) == 2 and all(float(t) > 0 for row in rows for t in row.split()[3:])
    assert _core.kernel_level() == before
