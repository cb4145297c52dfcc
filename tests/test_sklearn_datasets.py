"""fastbp.sklearn against sklearn.neural_network on the data sets scikit-learn ships
(issue 13): with scikit-learn's default parameters, in a StandardScaler pipeline, fastbp's
5-fold cross-validated score is no worse than scikit-learn's by more than 0.02 (accuracy)
or 0.05 (R²), for each solver. bench/sklearn_datasets.py runs the same comparison and
times it; this test runs every pair (one, below, over ten seeds) in about 20 s on two cores.
"""
import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "sklearn_datasets", os.path.join(ROOT, "bench", "sklearn_datasets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_module()

# linnerud with lbfgs (20 rows, 3 targets, 100 hidden units): L-BFGS drives the training
# loss of each fold's 16 rows to ~1e-3 and the held-out R² to -10..-200 in both libraries,
# a number set by rounding: the two paths part after ~20 iterations from the same start,
# each library summing in its own order, and scikit-learn's multi-output objective (value:
# mean over the outputs; gradient: of their sum) is not fastbp's (docs/sklearn.md). There
# the 0.05 cannot tell two implementations apart: scikit-learn against itself on
# OpenBLAS's Haswell and SkylakeX kernels gave -44.95 and -45.92 with seed 0 (medians over
# ten seeds -42.51 and -43.03). So that pair compares the medians over ten seeds, the
# tolerance 0.05 of scikit-learn's median's size.
PAIRS = [(name, solver) for name in bench.DATASETS for solver in bench.SOLVERS
         if (name, solver) != ("linnerud", "lbfgs")]


@pytest.mark.parametrize("name, solver", PAIRS)
def test_cross_validated_score_no_worse_than_sklearns(name, solver):
    row = bench.compare(name, solver, seed=0, n_threads=1, warm_up=False)
    assert row["within_tolerance"], row


def test_linnerud_lbfgs_median_over_seeds_no_worse_than_sklearns():
    rows = [bench.compare("linnerud", "lbfgs", seed=seed, n_threads=1, warm_up=False)
            for seed in range(10)]
    ours = float(np.median([row["fastbp"] for row in rows]))
    theirs = float(np.median([row["sklearn"] for row in rows]))
    assert ours >= theirs - bench.TOLERANCE[False] * max(1.0, abs(theirs)), (ours, theirs)
