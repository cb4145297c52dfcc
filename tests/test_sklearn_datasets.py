"""fastbp.sklearn against sklearn.neural_network on the data sets scikit-learn ships
(issue 13): with scikit-learn's default parameters, in a StandardScaler pipeline, fastbp's
5-fold cross-validated score is no worse than scikit-learn's by more than 0.02 (accuracy)
or 0.05 (R²), for each solver. bench/sklearn_datasets.py runs the same comparison and
times it; this test runs every pair but one (below) in about 17 s on two cores.
"""
import importlib.util
import os

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

# linnerud with lbfgs is left out: 20 rows, 3 targets, 100 hidden units; L-BFGS drives the
# training loss of each fold's 16 rows to ~1e-3 and the held-out R² to -10..-200 for both
# libraries, a number set by rounding (the two paths part after ~20 iterations from the same
# start, since each library sums in its own order) and by scikit-learn's multi-output
# objective (value: mean over the outputs; gradient: of their sum), which fastbp does not
# copy (docs/sklearn.md). sgd and adam on linnerud are compared.
PAIRS = [(name, solver) for name in bench.DATASETS for solver in bench.SOLVERS
         if (name, solver) != ("linnerud", "lbfgs")]


@pytest.mark.parametrize("name, solver", PAIRS)
def test_cross_validated_score_no_worse_than_sklearns(name, solver):
    row = bench.compare(name, solver, seed=0, n_threads=1)
    assert row["within_tolerance"], row
