"""Where a step's products run (issue 12): FASTBP_KERNELS=blas|own|auto and
FASTBP_KERNEL_ISA (fastbp/_products.py), through every pass.

Training (plain SGD, momentum, Adam), the row-split workers, predict, evaluate and
gradients under the own kernels equal the same under BLAS to rounding, in both dtypes and
both instruction sets; the plans hold what the variables say; "auto" measures each shape
once and keeps it; bad values are refused. FASTBP_KERNEL_ISA also sets the level of the
element-wise kernels (_core.kernel_level). A representative slice of the training,
row-split and sparse suites also runs in a subprocess under each forcing, and at each
instruction-set level below this CPU's widest.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _cache, _core, _products
from fastbp.optimizers import SGD

ISAS = {"avx512": ["avx2", "avx512"], "avx2": ["avx2"], None: []}[_core.best_kernel_isa()]
needs_kernels = pytest.mark.skipif(not ISAS, reason="this CPU runs no own kernels")
TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


def run_all_passes(dtype, optimizer, n_threads, split=None, one_hidden_layer=False):
    """Parameters after a short fit, then predict, evaluate and gradients, on a network
    with tanh (smooth: rounding cannot flip a unit as with ReLU) and widths on and off the
    register blocks (one_hidden_layer: its first and last layers only)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((203, 37)).astype(dtype)
    y = rng.integers(0, 5, 203)
    sizes, activations = [37, 29, 70, 5], ["tanh", "tanh", "softmax"]
    if one_hidden_layer:
        sizes, activations = [37, 70, 5], ["tanh", "softmax"]
    model = fastbp.MLP(sizes, activations, dtype=dtype, seed=3)
    if optimizer == "momentum":
        optimizer = SGD(learning_rate=0.05, momentum=0.9)
    fastbp.Trainer("cce", optimizer=optimizer, learning_rate=0.05, epochs=2, batch_size=24,
                   seed=0, n_threads=n_threads).fit(model, X, y)
    weights = [np.array(w) for w in model.weights] + [np.array(b) for b in model.biases]
    predicted = model.predict(X, n_threads=1)
    evaluated = model.evaluate(X, y, "cce", n_threads=1)
    gradients = model.gradients(X[:50], y[:50], "cce", n_threads=1)
    return weights, predicted, evaluated, gradients


def assert_close(a, b, dtype):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, z in zip(a, b):
            assert_close(x, z, dtype)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_close(a[key], b[key], dtype)
    else:
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@needs_kernels
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_own_kernels_agree_with_blas_in_every_pass(monkeypatch, dtype, optimizer):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    expected = run_all_passes(dtype, optimizer, 1)
    for isa in ISAS:
        monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
        monkeypatch.setenv(_products.ISA_VARIABLE, isa)
        assert_close(run_all_passes(dtype, optimizer, 1), expected, dtype)


@needs_kernels
# inputs: a partial first product; hidden: each worker's share of the units (35 of 70)
@pytest.mark.parametrize("split", ["rows", "inputs", "hidden"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_split_workers_take_the_own_kernels(monkeypatch, dtype, split):
    one_hidden_layer = split == "hidden"
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    expected = run_all_passes(dtype, "momentum", 1, one_hidden_layer=one_hidden_layer)
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    monkeypatch.setenv("FASTBP_SPLIT", split)
    for isa in ISAS:
        monkeypatch.setenv(_products.ISA_VARIABLE, isa)
        assert_close(run_all_passes(dtype, "momentum", 2, one_hidden_layer=one_hidden_layer),
                     expected, dtype)


def test_plans_hold_what_the_variables_say(monkeypatch):
    sizes = [7, 20, 3]
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "blas")
    assert _products.product_isas(sizes, 16, "float32") == [0] * 12
    if not ISAS:
        return
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    for isa in ISAS:
        monkeypatch.setenv(_products.ISA_VARIABLE, isa)
        isas = _products.product_isas(sizes, 16, "float64")
        assert isas == [_core.KERNEL_ISAS[isa]] * 12
        plan = _core.Plan(sizes, [1, 5], 16, product_isas=isas)
        assert plan.product_isas["float32"] == [(_core.KERNEL_ISAS[isa],) * 3] * 2


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "fast")
    with pytest.raises(ValueError, match="FASTBP_KERNELS='fast': it must be"):
        _products.product_isas([3, 2], 4, "float32")
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "own")
    monkeypatch.setenv(_products.ISA_VARIABLE, "sse2")
    with pytest.raises(ValueError, match="FASTBP_KERNEL_ISA='sse2': it must be"):
        _products.product_isas([3, 2], 4, "float32")
    with pytest.raises(ValueError, match="product_isas"):
        _core.Plan([3, 2], [1], 4, product_isas=[0] * 5)
    with pytest.raises(ValueError, match="product_isas"):
        _core.Plan([3, 2], [1], 4, product_isas=[0] * 5 + [9])


def test_every_level_name_reads_the_same_everywhere(monkeypatch):
    """FASTBP_KERNEL_ISA has one reader (_products.requested_level): each level this CPU
    runs is taken as named, "baseline" puts every product on BLAS (no product kernel
    below AVX2), unset means the widest, and any other name is refused."""
    monkeypatch.delenv(_products.ISA_VARIABLE, raising=False)
    assert _products.requested_level() is None
    widest = _core.kernel_levels()[0]
    assert _products.kernel_isa() == (widest if widest in _core.KERNEL_ISAS else None)
    for level in _core.kernel_levels():
        monkeypatch.setenv(_products.ISA_VARIABLE, f" {level.upper()} ")
        assert _products.requested_level() == level
        assert _products.kernel_isa() == (level if level in _core.KERNEL_ISAS else None)
    monkeypatch.setenv(_products.ISA_VARIABLE, "baseline")
    assert _products.product_isas([3, 2], 4, "float32", measure=False) == [0] * 6
    for name in ("sse2", "avx-512", "1"):
        monkeypatch.setenv(_products.ISA_VARIABLE, name)
        with pytest.raises(ValueError, match="FASTBP_KERNEL_ISA='[^']*': it must be"):
            _products.kernel_isa()


def kept_choices(folder):
    """The choices products.json keeps in `folder`."""
    with open(os.path.join(folder, _products.CACHE_FILE)) as file:
        return json.load(file)["choices"]


@needs_kernels
def test_auto_measures_each_shape_once_and_keeps_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(_products.KERNELS_VARIABLE, "auto")
    monkeypatch.delenv(_products.ISA_VARIABLE, raising=False)
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    measured = []
    real = _products._measure

    def counting(*args):
        measured.append(args[:4])
        return real(*args)

    monkeypatch.setattr(_products, "_measure", counting)
    sizes = [9, 40, 4]
    first = _products.product_isas(sizes, 8, "float32")
    # layer 1: forward and gradient; layer 2: all three
    assert sorted(measured) == sorted([("nn", 8, 40, 9), ("tn", 9, 40, 8), ("nn", 8, 4, 40),
                                       ("nt", 8, 40, 4), ("tn", 40, 4, 8)])
    # a plan's own: its BLAS calls timed as it cuts them
    plan = _products.choose_products(_core.Plan(sizes, [1, 5], 8, small_gemm_chunks=True),
                                     sizes, "float32")
    assert plan.product_isas["float32"] == [tuple(first[0:3]), tuple(first[3:6])]
    assert len(measured) == 5                        # uncut here: the same calls
    assert first[6:] == [0] * 6                      # float64's: not measured, BLAS
    assert set(first[:6]) <= {0, _core.KERNEL_ISAS[ISAS[-1]]}
    assert first[1] == 0                             # the first layer has no delta
    assert (tmp_path / _products.CACHE_FILE).exists()
    monkeypatch.setattr(_products, "_measured", {})  # a new process: from the file
    monkeypatch.setattr(_products, "_chosen", {})
    assert _products.product_isas(sizes, 8, "float32") == first
    assert len(measured) == 5
    # another build (rebuilt kernels, another NumPy or SciPy): measured again, not judged
    # by the times of the old one; the old build's choices stay kept beside
    monkeypatch.setattr(_products, "_measured", {})
    monkeypatch.setattr(_products, "_chosen", {})
    monkeypatch.setattr(_cache, "_build_name", "another build")
    assert _products.product_isas(sizes, 8, "float32")[6:] == [0] * 6
    assert len(measured) == 10
    assert sum(key.endswith("/another build") for key in kept_choices(tmp_path)) == 5
    assert len(kept_choices(tmp_path)) == 10
    # several BLAS threads, or a gradients pass (rows follow the call's): BLAS, unmeasured
    assert _products.product_isas(sizes, 8, "float32", one_thread=False) == [0] * 12
    assert _products.product_isas(sizes, 8, "float32", measure=False) == [0] * 12
    assert len(measured) == 10


@pytest.mark.parametrize("isa", ["avx2", "baseline", "avx512", "", "sse9"])
def test_forcing_an_instruction_set_sets_the_element_wise_kernels_level_too(isa):
    """FASTBP_KERNEL_ISA is the one switch for an AVX2 (or older) machine's code: when
    fastbp._core loads it also sets the level of the element-wise kernels, the few-row
    kernels and the softmax blocks to the one it names where this CPU runs it, else the
    widest (an unknown name is refused where the product kernels read it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTBP_KERNEL_ISA=isa)
    result = subprocess.run([sys.executable, "-P", "-c",
                             "from fastbp import _core; print(_core.kernel_level())"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    levels = _core.kernel_levels()
    assert result.stdout.strip() == (isa if isa in levels else levels[0])


def test_kernel_level_refuses_a_level_this_cpu_lacks():
    before = _core.kernel_level()
    with pytest.raises(ValueError, match="kernel_level must be one of"):
        _core.kernel_level("sse9")
    assert _core.kernel_level() == before


SLICES = ["tests/test_training.py", "tests/test_threads_rows.py::"
          "test_every_optimizer_agrees_across_worker_counts_and_repeats_exactly",
          "tests/test_gradients.py"]
# ... and what runs the element-wise kernels besides: the sparse first layer and the lazy
# rules' catch-ups, every rule against JAX
LEVEL_SLICES = SLICES + ["tests/test_sparse.py", "tests/test_lazy_adam_rows.py",
                         "tests/test_jax_oracle.py"]
# Where every product runs (FASTBP_KERNELS), and each instruction-set level below this
# CPU's widest (FASTBP_KERNEL_ISA: the product kernels, the element-wise kernels, the
# few-row kernels and the softmax blocks all at that level, as on a CPU without the wider
# sets), so that each level's code runs here: (environment, test slice).
FORCINGS = {"blas": ({"FASTBP_KERNELS": "blas"}, SLICES),
            "own": ({"FASTBP_KERNELS": "own"}, SLICES),
            **{f"level-{level}": ({"FASTBP_KERNEL_ISA": level}, LEVEL_SLICES)
               for level in _core.kernel_levels()[1:]}}


@pytest.mark.parametrize("forcing", sorted(FORCINGS))
def test_training_suites_pass_under_each_forcing(forcing):
    """A representative slice of the suite (the dense fits, their gradients, every
    optimizer on every thread count; at each level also the sparse fits and every rule
    against JAX), run under each forcing."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    variables, slices = FORCINGS[forcing]
    env = dict(os.environ, **variables)
    # -P: not the source tree (cwd) on the path, the installed fastbp, as this process
    # imports it (a plain install has no compiled core in the source tree)
    result = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-x", "-p",
                             "no:cacheprovider", *slices], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
