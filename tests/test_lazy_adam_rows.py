"""Sparse Adam's catch-up of a row of W1 (LazyAdam in fastbp/_core.pyx, fbp_adam_catch_up in
csrc/kernels_impl.h), one row at a time through _core.lazy_adam_row, against Adam's k steps
without a gradient taken one by one in extended precision.

A row that no batch named for k steps catches up by one of two series (in powers of
eps b_s / u, or of u's distance from a centre near eps b_min), or, where neither converges
fast enough, by stepping each weight through its k steps. Second moments spread over
decades around eps^2 send weights down every path."""
import numpy as np
import pytest

from fastbp import _core

EXTENDED = np.longdouble
# bounds on |caught up - reference| / |the k steps' total|, in units of the dtype's epsilon:
# the series round once at the end (float32: the coefficients are summed in double);
# float64's coefficients are sums of up to 1,000 double terms, rounded as they grow
SERIES_ULPS = {"float32": 4, "float64": 16}


@pytest.fixture
def lazy_adam():
    saved = _core.lazy_adam_settings()
    yield _core.lazy_adam_settings
    _core.lazy_adam_settings(*saved)


def reference(p, m, v, base, t0, t, lr, beta1, beta2, eps, shrink):
    """Adam's steps t0 + 1 .. t with a zero gradient, in extended precision."""
    p, m, v = (np.array(a, dtype=EXTENDED) for a in (p, m, v))
    one = EXTENDED(1)
    for s in range(t0 + 1, t + 1):
        step = EXTENDED(base + s)
        step_size = EXTENDED(lr) / (one - EXTENDED(beta1) ** step)
        root = np.sqrt(one - EXTENDED(beta2) ** step)
        m = EXTENDED(beta1) * m
        v = EXTENDED(beta2) * v
        p = EXTENDED(shrink) * p - step_size * m / (np.sqrt(v) / root + EXTENDED(eps))
    return p, m, v


def row(dtype, decades, n=1500, eps=1e-8, seed=0, weights=0.0):
    """p, m, v of n weights with sqrt(v) = eps 10^U, U uniform over `decades`, p normal
    times `weights` (0: the result is the k steps' total alone, each rounding seen)."""
    rng = np.random.default_rng(seed)
    u = eps * 10.0 ** rng.uniform(*decades, n)
    m = rng.standard_normal(n) * 1e-6
    p = rng.standard_normal(n) * weights
    return p.astype(dtype), m.astype(dtype), (u * u).astype(dtype)


def caught_up(p, m, v, *args, **options):
    p, m, v = p.copy(), m.copy(), v.copy()
    _core.lazy_adam_row(p, m, v, *args, **options)
    return p, m, v


def errors_in_eps(dtype, result, expected):
    """|result - expected| / |expected|, in the dtype's epsilons."""
    error = np.abs(result.astype(EXTENDED) - expected) / np.abs(expected)
    return (error / np.finfo(dtype).eps).astype(float)


def assert_moments_close(dtype, first, second, expected_first, expected_second, ulps):
    """m and v within `ulps` (beta^k at once, or k times), or both below the normal range
    (m decays by 0.9 a step: after ~800 steps float32 holds only subnormals)."""
    tiny = np.finfo(dtype).tiny
    for got, want in ((first, expected_first), (second, expected_second)):
        np.testing.assert_allclose(got, want.astype(float), rtol=ulps * np.finfo(dtype).eps,
                                   atol=tiny)


# (base step, t0, t): late in a fit, where b_s spreads little (both series take every
# weight in float32), and early, where it spreads widely (some weights step one by one)
# (and a row that missed 3 steps: stepped one step at a time, as the dense rule would)
WINDOWS = {"late": (5000, 0, 300), "late_short": (20000, 40, 90), "late_long": (9000, 0, 1000),
           "early": (0, 3, 300), "second_epoch": (313, 0, 313), "few": (5000, 10, 13)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("shrink", [1.0, 1 - 1e-4], ids=["adam", "adamw"])
@pytest.mark.parametrize("middle", [True, False], ids=["two_series", "one_series"])
def test_rows_catch_up_to_adams_steps(lazy_adam, dtype, window, shrink, middle):
    """Every weight, whichever path takes it, lands where Adam's k steps put it: within
    SERIES_ULPS of the steps' total where a series takes it, and as close as k rounded
    steps (the dense rule's arithmetic) where it steps one by one."""
    lazy_adam(middle=middle)
    base, t0, t = WINDOWS[window]
    p, m, v = row(dtype, (-3, 2.5))
    result, first, second = caught_up(p, m, v, base, t0, t, 1e-3, shrink=shrink)
    expected, expected_first, expected_second = reference(p, m, v, base, t0, t, 1e-3, 0.9,
                                                          0.999, 1e-8, shrink)
    errors = errors_in_eps(dtype, result, expected)
    one_by_one = (t - t0) * 0.5 + 2          # k steps' rounding, each step half an epsilon
    assert errors.max() <= one_by_one
    if middle and window in ("late", "late_short"):
        assert errors.max() <= SERIES_ULPS[dtype]     # both series take every weight
    assert_moments_close(dtype, first, second, expected_first, expected_second, one_by_one)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("window", ["late", "early"])
def test_rows_with_weights_catch_up_to_adams_steps(lazy_adam, dtype, window):
    """Weights not 0 (AdamW's shrink on them too): within the rounding of the weight and
    of the steps' total."""
    base, t0, t = WINDOWS[window]
    shrink = 1 - 1e-4
    p, m, v = row(dtype, (-3, 2.5), weights=1e-3)
    result = caught_up(p, m, v, base, t0, t, 1e-3, shrink=shrink)[0]
    expected = reference(p, m, v, base, t0, t, 1e-3, 0.9, 0.999, 1e-8, shrink)[0]
    scale = np.abs(expected) + EXTENDED(shrink) ** (t - t0) * np.abs(p.astype(EXTENDED))
    error = (np.abs(result.astype(EXTENDED) - expected) / scale).astype(float)
    assert error.max() <= ((t - t0) * 0.5 + 2) * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("window", ["late", "late_short", "second_epoch"])
def test_the_second_series_takes_the_weights_near_eps(lazy_adam, dtype, window):
    """Weights with sqrt(v) between 0.01 eps and eps (too near eps for the first series):
    the second series takes them, not one step at a time (other bits than with it turned
    off), and within SERIES_ULPS of the steps' total."""
    base, t0, t = WINDOWS[window]
    p, m, v = row(dtype, (-2, 0))
    results = {}
    for middle in (True, False):
        lazy_adam(middle=middle)
        results[middle] = caught_up(p, m, v, base, t0, t, 1e-3)[0]
    expected = reference(p, m, v, base, t0, t, 1e-3, 0.9, 0.999, 1e-8, 1.0)[0]
    assert errors_in_eps(dtype, results[True], expected).max() <= SERIES_ULPS[dtype]
    assert np.mean(results[True] != results[False]) > 0.5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_edges_of_a_row(lazy_adam, dtype):
    """v = 0 with m != 0 (the second series takes it, at 0.95 of its reach), m = 0 (no
    step), and NaN or inf in m or v (the row carries them as the dense steps do)."""
    base, t0, t = WINDOWS["late"]
    p = np.full(6, 0.25, dtype)
    m = np.array([1e-6, 0, 1e-6, np.nan, 1e-6, np.inf], dtype)
    v = np.array([0, 1e-12, 1e-12, 1e-12, np.nan, 1e-12], dtype)
    result, first, second = caught_up(p, m, v, base, t0, t, 1e-3)
    expected = reference(p, m, v, base, t0, t, 1e-3, 0.9, 0.999, 1e-8, 1.0)[0]
    np.testing.assert_allclose(result[:3], expected[:3].astype(float),
                               rtol=SERIES_ULPS[dtype] * np.finfo(dtype).eps)
    assert result[1] == p[1] and first[1] == 0
    assert np.isnan(result[3]) and np.isnan(result[4])
    assert not np.isfinite(result[5])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_tiny_eps_whose_second_series_would_overflow(lazy_adam, dtype):
    """eps so small that the second series' coefficients (lr / eps and beyond) pass what
    the dtype holds: the weights near eps step one by one instead, still Adam's steps."""
    eps = 2e-38 if dtype == "float32" else 1e-300
    base, t0, t = WINDOWS["late_short"]
    p, m, v = row(dtype, (-2, 1), n=300, eps=eps)
    m = (np.sign(m) * eps * 10.0 ** np.linspace(1, 3, m.size)).astype(dtype)   # normal
    result = caught_up(p, m, v, base, t0, t, 1.0, epsilon=eps)[0]
    expected = reference(p, m, v, base, t0, t, 1.0, 0.9, 0.999, eps, 1.0)[0]
    assert np.isfinite(result).all()
    assert errors_in_eps(dtype, result, expected).max() <= (t - t0) * 0.5 + 2


def test_lazy_adam_row_checks_its_arguments():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="same size"):
        _core.lazy_adam_row(p, np.zeros(2), np.zeros(3), 0, 0, 1, 1e-3)
    with pytest.raises(ValueError, match="t0"):
        _core.lazy_adam_row(p, np.zeros(3), np.zeros(3), 0, 2, 1, 1e-3)


# beta2 well below 1 (and beta1 above sqrt(beta2)): b_s grows as beta2^(-k/2), to 1e11
# over 1,000 steps at 0.95; the series' sums of b_s^q overflowed (in float32's cast, then
# in double), every such row came out NaN, and a sparse fit undid each epoch as diverged
LOW_BETA2 = [(0.9, 0.98), (0.9, 0.95), (0.9, 0.9), (0.9, 0.5), (0.5, 0.6)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("betas", LOW_BETA2, ids=str)
@pytest.mark.parametrize("span", [(0, 1000), (500, 1000), (990, 1023)], ids=str)
def test_a_low_beta2_catches_up_over_a_whole_window(lazy_adam, dtype, betas, span):
    """Every weight finite and where Adam's k steps put it, from sqrt(v) near eps (one
    step at a time) to far above it; weights far enough above eps b_t take the series, to
    SERIES_ULPS."""
    beta1, beta2 = betas
    t0, t = span
    widest = 1e-8 * np.sqrt(1 - beta2 ** (10 + t)) * beta2 ** (-(t - t0) / 2)   # eps b_t
    reach = np.log10(np.sqrt(np.finfo(dtype).max) / 1e-8) - 1       # sqrt(v) the dtype holds
    above = np.log10(widest / 1e-8) + 0.5                     # where the series takes them
    near = row(dtype, (-1, 2), n=750)
    far = row(dtype, (min(above, reach - 1), min(above + 3, reach)), n=750, seed=1)
    p, m, v = (np.concatenate(parts) for parts in zip(near, far))
    result = caught_up(p, m, v, 10, t0, t, 1e-3, beta1, beta2)[0]
    expected = reference(p, m, v, 10, t0, t, 1e-3, beta1, beta2, 1e-8, 1.0)[0]
    assert np.isfinite(result).all()
    errors = errors_in_eps(dtype, result, expected)
    assert errors.max() <= (t - t0) * 0.5 + 2
    series = np.sqrt(v.astype(float)) > 2 * widest / 0.55
    if above < reach - 1:
        assert series.sum() > 700
    if series.any():
        assert errors[series].max() <= SERIES_ULPS[dtype]
